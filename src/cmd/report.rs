//! `palisade report PROG JAIL ADDR`: how fail2ban, psad and other programs
//! hand an attacker to palisade (as banshare-report did).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use palisade_control::{BanRequest, Request, Response};
use palisade_model::{Net, Scope, Source, Span, Timestamp};
use palisade_wire::{Bus, Envelope, Intent, IntentOutcome, Token};

use super::Context;
use super::decide::{parse_net, parse_span};

#[derive(Debug, Args)]
#[command(
    after_help = "The report goes to this server's agent, which bans the address here at once
and reports it to the network; the hub's policy decides the network-wide ban.
Without a running agent, --hub and --token send it to the hub directly (use a
token of its own, not an agent's).

In a fail2ban action (action.d/palisade.conf, written by `palisade install`):
  actionban = palisade report fail2ban <name> <ip>
In psad.conf:
  ENABLE_EXT_BLOCK_SCRIPT_EXEC  Y;
  EXTERNAL_BLOCK_SCRIPT         /usr/local/bin/palisade report psad anything SRCIP;"
)]
pub struct ReportArgs {
    /// The reporting program (fail2ban, psad, ...)
    program: String,
    /// Its jail, rule or any discriminator
    jail: String,
    /// The attacker's address
    #[arg(value_parser = parse_net)]
    address: Net,
    /// How long [default: the agent's or hub's default]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_span)]
    span: Option<Span>,
    /// The hub to report to directly when no agent runs here
    #[arg(long, value_name = "URL", requires = "token")]
    hub: Option<String>,
    /// A token for --hub
    #[arg(
        long,
        env = "PALISADE_REPORT_TOKEN",
        hide_env_values = true,
        requires = "hub"
    )]
    token: Option<String>,
}

pub fn run(ctx: &Context, args: ReportArgs) -> Result<ExitCode> {
    for (what, v) in [("program", &args.program), ("jail", &args.jail)] {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            bail!("the {what} {v:?} must be 1 to 64 letters, digits, '-', '_' or '.'");
        }
    }
    let rule = format!("{}/{}", args.program, args.jail);
    if let Some(url) = &args.hub {
        return direct(url, args.token.as_deref().unwrap_or_default(), &args, rule);
    }
    let req = Request::Ban(BanRequest {
        targets: vec![args.address],
        span: args.span,
        reason: Some(format!("reported by {}", args.program)),
        rule: Some(rule),
        evidence: Vec::new(),
        actor: Some(args.program.clone()),
        scope: Scope::Network,
        brief: false,
        source: Source::Report,
    });
    let Response::Outcomes { summary, outcomes } = ctx.connect()?.call(&req)? else {
        bail!("unexpected answer from the agent");
    };
    for o in outcomes.iter().filter(|o| o.result.is_failure()) {
        eprintln!("palisade: {}", o.note.as_deref().unwrap_or("refused"));
    }
    Ok(if summary.failures() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Reports straight to the hub.
fn direct(url: &str, token: &str, args: &ReportArgs, rule: String) -> Result<ExitCode> {
    let token: Token = token.parse()?;
    let link = palisade_link::HubLink::new(url, &token)?;
    // Ids only have to grow for this token: milliseconds do.
    let envelope = Envelope {
        id: Timestamp::now().as_millis() * 1000,
        at: Timestamp::now(),
        intent: Intent::Ban {
            target: args.address,
            span: args.span,
            rule: Some(rule),
            reason: Some(format!("reported by {}", args.program)),
            evidence: Vec::new(),
            source: Source::Report,
            actor: Some(args.program.clone()),
            unverified: false,
            list: None,
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async { link.send(std::slice::from_ref(&envelope)).await })?;
    match results.first() {
        Some(r) if r.outcome == IntentOutcome::Refused => {
            bail!(
                "the hub refused it: {}",
                r.reason.as_deref().unwrap_or("no reason given")
            )
        }
        Some(_) => Ok(ExitCode::SUCCESS),
        None => bail!("the hub took nothing (rate limited); try again later"),
    }
}

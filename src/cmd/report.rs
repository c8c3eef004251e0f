//! `palisade report PROG JAIL ADDR`: how fail2ban, psad and other programs
//! hand an attacker to palisade (as banshare-report did).

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use palisade_control::{BanRequest, OutcomeKind, Request, Response, TargetsRequest};
use palisade_model::{Net, Scope, Source, Span, Timestamp};
use palisade_wire::{Bus, Envelope, Intent, IntentOutcome, Token};

use super::Context;
use super::decide::{Verb, failure, parse_net, parse_span, success};

#[derive(Debug, Args)]
#[command(
    after_help = "The report goes to this server's agent, which bans the address here at once
and reports it to the network; the hub's policy decides the network-wide ban.
Without a running agent, --hub and --token-file (or --token) send it to the
hub directly (use a token of its own, not an agent's).

With --withdraw, this server's ban of the address is lifted if it is the one
this program and jail reported (an operator's or another jail's ban stays);
the network's ban runs its course.

In a fail2ban action (action.d/palisade.conf, written by `palisade install`):
  actionban   = palisade report fail2ban <name> <ip> --for <bantime>
  actionunban = palisade report --withdraw fail2ban <name> <ip>
In psad.conf (psad runs it only when it auto-blocks, after its own block):
  ENABLE_AUTO_IDS               Y;
  IPTABLES_BLOCK_METHOD         Y;
  ENABLE_EXT_BLOCK_SCRIPT_EXEC  Y;
  EXTERNAL_BLOCK_SCRIPT         /usr/local/bin/palisade report psad scan SRCIP;"
)]
pub struct ReportArgs {
    /// The reporting program (fail2ban, psad, ...)
    program: String,
    /// Its jail, rule or any discriminator
    jail: String,
    /// The attacker's address
    #[arg(value_parser = parse_net)]
    address: Net,
    /// How long: 90s, 10m, 1h, forever, or whole seconds as fail2ban's
    /// <bantime> gives them (a negative number is forever)
    /// [default: the agent's or hub's default]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_report_span, allow_hyphen_values = true)]
    span: Option<Span>,
    /// Withdraw the report: lift this server's ban of the address if this
    /// program and jail made it
    #[arg(long, conflicts_with_all = ["span", "hub"])]
    withdraw: bool,
    /// The hub to report to directly when no agent runs here
    #[arg(long, value_name = "URL", requires = "credential")]
    hub: Option<String>,
    /// A token for --hub (prefer --token-file: a command line is visible to
    /// every user in `ps`)
    #[arg(
        long,
        env = "PALISADE_REPORT_TOKEN",
        hide_env_values = true,
        requires = "hub",
        group = "credential"
    )]
    token: Option<String>,
    /// A root-only file holding the token for --hub
    #[arg(long, value_name = "FILE", requires = "hub", group = "credential")]
    token_file: Option<std::path::PathBuf>,
}

pub fn run(ctx: &Context, args: ReportArgs) -> Result<ExitCode> {
    for (what, v) in [("program", &args.program), ("jail", &args.jail)] {
        if !palisade_model::name::is_plain(v) {
            bail!("the {what} {v:?} must be {}", palisade_model::name::PLAIN);
        }
    }
    let rule = format!("{}/{}", args.program, args.jail);
    if args.withdraw {
        let req = Request::Unban(TargetsRequest {
            targets: vec![args.address],
            actor: Some(args.program.clone()),
            brief: false,
            local: true,
            only_rule: Some(rule),
        });
        return send(ctx, &req, Verb::Unban, true);
    }
    if let Some(url) = &args.hub {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?,
            (None, None) => bail!("--hub needs --token-file or --token"),
        };
        return direct(url, token.trim(), &args, rule);
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
    send(ctx, &req, Verb::Ban, false)
}

/// Sends `req` to the agent and prints what became of it, like `palisade
/// ban` and `unban` do. With `missing_ok`, nothing to lift is no failure (a
/// withdrawal of a ban that expired or was never this jail's).
fn send(ctx: &Context, req: &Request, verb: Verb, missing_ok: bool) -> Result<ExitCode> {
    let Response::Outcomes { outcomes, .. } = ctx.connect()?.call(req)? else {
        bail!("unexpected answer from the agent");
    };
    let now = Timestamp::now();
    let mut failed = false;
    for o in &outcomes {
        if missing_ok && o.result == OutcomeKind::NotFound {
            println!("{}", failure(o));
        } else if o.result.is_failure() {
            failed = true;
            eprintln!("palisade: {}", failure(o));
        } else {
            println!("{}", success(verb, o, now));
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A palisade duration, or whole seconds as fail2ban passes its
/// `<bantime>` (negative: forever).
fn parse_report_span(s: &str) -> Result<Span, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n < 0 => Ok(Span::Forever),
        Ok(0) => Err("a ban of 0 seconds ends at once; give a positive length".into()),
        Ok(n) => parse_span(&format!("{n}s")),
        Err(_) => parse_span(s),
    }
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
        Some(r) => {
            let what = match r.outcome {
                IntentOutcome::Accepted => "banned on the network",
                IntentOutcome::Suppressed => "a repeat, recorded",
                IntentOutcome::Pending => "recorded, waiting for a quorum",
                _ => "recorded",
            };
            println!("reported {} to the hub: {what}", args.address);
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("the hub took nothing (rate limited); try again later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail2bans_bantime_is_understood() {
        assert_eq!(parse_report_span("600"), parse_span("10m"));
        assert_eq!(parse_report_span("-1"), Ok(Span::Forever));
        assert_eq!(parse_report_span("1h"), parse_span("1h"));
        assert!(parse_report_span("0").is_err());
        assert!(parse_report_span("1e9").is_err());
        assert!(parse_report_span("").is_err());
    }
}

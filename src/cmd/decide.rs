//! `ban`, `unban`, `allow`, `unallow`: change decisions through the agent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use palisade_control::{
    AllowRequest, BanRequest, Outcome, OutcomeKind, Request, Response, TargetsRequest,
};
use palisade_model::{Net, Scope, Source, Span, Timestamp};

use super::{Context, actor};
use crate::render;

/// Addresses given on the command line and/or in a file.
#[derive(Debug, Args)]
pub struct Targets {
    /// Addresses or networks: 198.51.100.7, 2001:db8::7, 203.0.113.0/24
    #[arg(value_name = "ADDR", value_parser = parse_net, required_unless_present = "file")]
    targets: Vec<Net>,

    /// Also read addresses from FILE, one per line (`-` for stdin; blank
    /// lines and `#` comments are skipped)
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  palisade ban 198.51.100.7 --for 1h --reason 'ssh brute force'
  palisade ban 203.0.113.0/24 --for forever
  palisade ban --file blocklist.txt --for 2d")]
pub struct BanArgs {
    #[command(flatten)]
    targets: Targets,

    /// How long: 90s, 10m, 1h, 2d, 1w, 1h30m or forever [default: the
    /// agent's default_ban, 1d unless configured]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_span)]
    span: Option<Span>,

    /// Why, shown by `palisade explain`
    #[arg(long)]
    reason: Option<String>,

    /// On a joined server: ban here only, not on the whole network
    #[arg(long)]
    local: bool,
}

#[derive(Debug, Args)]
pub struct UnbanArgs {
    #[command(flatten)]
    targets: Targets,

    /// On a joined server: unban here only, not on the whole network
    #[arg(long)]
    local: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Allowed addresses are never banned, whoever asks: a ban of a network that
contains one still lets it through. Allowing an address lifts the bans it covers.

Examples:
  palisade allow 198.51.100.0/24 --comment office
  palisade allow 2001:db8::10 --comment monitoring --for 1w"
)]
pub struct AllowArgs {
    #[command(flatten)]
    targets: Targets,

    /// Why it is allowed, shown by `palisade list` and `explain`
    #[arg(long)]
    comment: Option<String>,

    /// How long [default: forever]
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_span)]
    span: Option<Span>,

    /// On a joined server: allow here only, not on the whole network
    #[arg(long)]
    local: bool,
}

#[derive(Debug, Args)]
pub struct UnallowArgs {
    #[command(flatten)]
    targets: Targets,

    /// On a joined server: unallow here only, not on the whole network
    #[arg(long)]
    local: bool,
}

pub fn ban(ctx: &Context, args: BanArgs) -> Result<ExitCode> {
    let (targets, bad) = args.targets.collect()?;
    let req = Request::Ban(BanRequest {
        targets,
        span: args.span,
        reason: args.reason,
        rule: None,
        evidence: Vec::new(),
        actor: actor(),
        scope: scope(args.local),
        brief: false,
        source: Source::Cli,
    });
    send(ctx, req, bad)
}

/// Network-wide unless `--local` (a local-only agent keeps everything
/// local anyway).
fn scope(local: bool) -> Scope {
    if local { Scope::Local } else { Scope::Network }
}

pub fn unban(ctx: &Context, args: UnbanArgs) -> Result<ExitCode> {
    let (targets, bad) = args.targets.collect()?;
    send(
        ctx,
        Request::Unban(TargetsRequest {
            targets,
            actor: actor(),
            brief: false,
            local: args.local,
            only_rule: None,
        }),
        bad,
    )
}

pub fn allow(ctx: &Context, args: AllowArgs) -> Result<ExitCode> {
    let (targets, bad) = args.targets.collect()?;
    let req = Request::Allow(AllowRequest {
        targets,
        span: args.span,
        comment: args.comment,
        actor: actor(),
        scope: scope(args.local),
        brief: false,
    });
    send(ctx, req, bad)
}

pub fn unallow(ctx: &Context, args: UnallowArgs) -> Result<ExitCode> {
    let (targets, bad) = args.targets.collect()?;
    send(
        ctx,
        Request::Unallow(TargetsRequest {
            targets,
            actor: actor(),
            brief: false,
            local: args.local,
            only_rule: None,
        }),
        bad,
    )
}

/// Requests with more targets than this are sent brief and answered with
/// a summary plus the failures.
const DETAILED_UP_TO: usize = 20;

/// Sends a mutation and prints one line per target (a summary for bulk
/// requests). Exits non-zero if any target (or input line) did not get
/// what was asked.
fn send(ctx: &Context, mut req: Request, bad_lines: usize) -> Result<ExitCode> {
    let (count, verb) = match &mut req {
        Request::Ban(r) => (r.targets.len(), Verb::Ban),
        Request::Allow(r) => (r.targets.len(), Verb::Allow),
        Request::Unban(r) => (r.targets.len(), Verb::Unban),
        Request::Unallow(r) => (r.targets.len(), Verb::Unallow),
        _ => unreachable!("only mutations are sent here"),
    };
    if count == 0 {
        anyhow::bail!("no valid address given");
    }
    let brief = count > DETAILED_UP_TO;
    match &mut req {
        Request::Ban(r) => r.brief = brief,
        Request::Allow(r) => r.brief = brief,
        Request::Unban(r) | Request::Unallow(r) => r.brief = brief,
        _ => {}
    }
    let response = ctx.connect()?.call(&req)?;
    let Response::Outcomes { summary, outcomes } = response else {
        anyhow::bail!("unexpected answer from the agent: {response:?}");
    };
    let now = Timestamp::now();
    for o in &outcomes {
        if o.result.is_failure() {
            eprintln!("palisade: {}", failure(o));
        } else {
            println!("{}", success(verb, o, now));
        }
    }
    if brief {
        println!("{}", render::summary(&summary));
    }
    let failed = bad_lines > 0 || summary.failures() > 0;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Clone, Copy)]
pub(super) enum Verb {
    Ban,
    Unban,
    Allow,
    Unallow,
}

pub(super) fn success(verb: Verb, o: &Outcome, now: Timestamp) -> String {
    let until = render::until(o.expires, now);
    let line = match (verb, o.result) {
        (Verb::Ban, OutcomeKind::Added) => format!("banned {} {until}", o.target),
        (Verb::Ban, OutcomeKind::Extended) => format!("extended the ban of {} {until}", o.target),
        (Verb::Ban, _) => format!("{} is already banned {until}", o.target),
        (Verb::Allow, OutcomeKind::Added) => format!("allowed {} {until}", o.target),
        (Verb::Allow, OutcomeKind::Extended) => {
            format!("extended the allow of {} {until}", o.target)
        }
        (Verb::Allow, _) => format!("{} is already allowed {until}", o.target),
        (Verb::Unban, _) => format!("unbanned {}", o.target),
        (Verb::Unallow, _) => format!("removed the allow entry {}", o.target),
    };
    match &o.note {
        Some(note) => format!("{line}\n  note: {note}"),
        None => line,
    }
}

pub(super) fn failure(o: &Outcome) -> String {
    match (&o.note, o.result) {
        (Some(note), _) => note.clone(),
        (None, OutcomeKind::Refused) => format!("{}: refused", o.target),
        (None, _) => format!("{}: not found", o.target),
    }
}

impl Targets {
    /// The targets from the command line and the file, and how many file
    /// lines were invalid (each reported on stderr; the valid ones are
    /// still applied).
    fn collect(self) -> Result<(Vec<Net>, usize)> {
        let mut targets = self.targets;
        let mut bad = 0;
        if let Some(path) = self.file {
            let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
                Box::new(BufReader::new(std::io::stdin()))
            } else {
                Box::new(BufReader::new(
                    std::fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?,
                ))
            };
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                let text = line.split('#').next().unwrap_or("").trim();
                if text.is_empty() {
                    continue;
                }
                match text.parse::<Net>() {
                    Ok(n) => targets.push(n),
                    Err(e) => {
                        bad += 1;
                        if bad <= 20 {
                            eprintln!("palisade: {}:{}: {e}", path.display(), i + 1);
                        }
                    }
                }
            }
            if bad > 20 {
                eprintln!(
                    "palisade: {} more invalid lines in {}",
                    bad - 20,
                    path.display()
                );
            }
        }
        Ok((targets, bad))
    }
}

pub fn parse_net(s: &str) -> Result<Net, String> {
    s.parse()
        .map_err(|e: palisade_model::NetError| e.to_string())
}

pub fn parse_span(s: &str) -> Result<Span, String> {
    s.parse()
        .map_err(|e: palisade_model::SpanError| e.to_string())
}

//! `palisade sshguard-backend`: sshguard as a palisade detector.
//!
//! sshguard (2.4) hands its decisions to a "firewall backend" program on
//! that program's standard input, one command per line (the
//! `sshg-fw-*` scripts in `/usr/libexec/sshguard` read the same):
//!
//! ```text
//! flushonexit                      sent once at start: flush when stdin ends
//! block ADDR KIND PREFIX           ban ADDR/PREFIX (KIND is 4 or 6)
//! release ADDR KIND PREFIX         lift that ban
//! flush                            lift every ban made so far
//! ```
//!
//! ADDR is the attacker's own address; PREFIX is sshguard's subnet size
//! (`IPV4_SUBNET`/`IPV6_SUBNET`, 32 and 128 by default), so the network
//! banned is ADDR with its host bits cleared. A backend answers nothing;
//! sshguard ends it by closing its stdin and sending SIGTERM to its process
//! group. If the backend exits early, sshguard's pipeline dies with it, so
//! this one never exits on its own: a line it cannot parse is reported on
//! stderr and skipped, and an agent that cannot be reached is retried
//! while the commands wait (in order, up to a bound).
//!
//! Blocks become bans reported to the local agent with rule `sshguard`,
//! actor `sshguard` and network-wide scope (unless `--local`), so every
//! server of the network drops the address. A release or flush lifts only
//! bans that sshguard made on this node: the agent's decision for that
//! network must still carry the `sshguard` rule and this node's name, so a
//! ban an operator or another detector made meanwhile stays.
//!
//! Set it up with a wrapper script as sshguard's `BACKEND` (sshguard runs
//! `$BACKEND` without arguments):
//!
//! ```sh
//! #!/bin/sh
//! exec palisade sshguard-backend --for 1h
//! ```

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use palisade_control::{
    BanRequest, Client, ClientError, ListRequest, OutcomeKind, Request, Response, TargetsRequest,
};
use palisade_model::{Action, Decision, Net, Scope, Source, Span};

use crate::render::count;

/// Most commands kept while the agent cannot be reached; older ones are
/// dropped beyond this (with a message).
const MAX_PENDING: usize = 10_000;
/// How long pending commands may still be delivered after sshguard stops.
const FINAL_DELIVERY: Duration = Duration::from_secs(5);
/// The actor recorded on sshguard's decisions.
const ACTOR: &str = "sshguard";

#[derive(Debug, Args)]
#[command(
    after_help = "Set it as sshguard's BACKEND through a wrapper script, since sshguard runs
the backend without arguments:
  #!/bin/sh
  exec palisade sshguard-backend --for 1h

sshguard then writes `block ADDR KIND PREFIX`, `release ...`, `flush` and
`flushonexit` lines to it; blocks are banned network-wide through the local
agent, and releases lift only the bans sshguard made."
)]
pub struct SshguardArgs {
    /// How long a ban lasts (sshguard's own release lifts it earlier):
    /// 90s, 10m, 1h, 2d or forever
    #[arg(long = "for", value_name = "DURATION", default_value = "1h", value_parser = parse_span)]
    span: Span,

    /// The rule recorded on the bans (letters, digits, `.`, `_`, `-`)
    #[arg(long, default_value = "sshguard", value_parser = parse_rule)]
    rule: String,

    /// Ban on this node only instead of the whole network
    #[arg(long)]
    local: bool,

    /// Keep the bans when sshguard stops even if it asks for a flush (they
    /// then end with their duration)
    #[arg(long)]
    keep_on_exit: bool,

    /// Pause between attempts to reach an agent that is not answering
    /// (e.g. 500ms, 2s)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_pause)]
    retry: Duration,
}

fn parse_span(s: &str) -> Result<Span, String> {
    s.parse::<Span>().map_err(|e| e.to_string())
}

fn parse_pause(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms")
        && let Ok(n) = ms.parse::<u64>()
        && n > 0
    {
        return Ok(Duration::from_millis(n));
    }
    match parse_span(s)? {
        Span::For(d) => Ok(d),
        Span::Forever => Err("a pause must be a length of time, such as 500ms or 2s".into()),
    }
}

fn parse_rule(s: &str) -> Result<String, String> {
    if palisade_model::name::is_plain(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: use {}", palisade_model::name::PLAIN))
    }
}

/// One line of sshguard's backend protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Block(Net),
    Release(Net),
    Flush,
    FlushOnExit,
}

/// Parses one line (`block 198.51.100.7 4 32`); the error says why not.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["flush"] => Ok(Line::Flush),
        ["flushonexit"] => Ok(Line::FlushOnExit),
        [cmd @ ("block" | "release"), addr, kind, rest @ ..] if rest.len() <= 1 => {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IP address"))?;
            let want = match *kind {
                "4" => 32,
                "6" => 128,
                _ => return Err(format!("address kind {kind:?} is neither 4 nor 6")),
            };
            if (want == 32) != addr.is_ipv4() {
                return Err(format!("{addr} is not an IPv{kind} address"));
            }
            let prefix = match rest.first() {
                None => want,
                Some(p) => match p.parse::<u8>() {
                    Ok(p) if p >= 1 && p <= want => p,
                    _ => return Err(format!("{p:?} is not a prefix length for IPv{kind}")),
                },
            };
            let net = Net::truncating(addr, prefix);
            Ok(if *cmd == "block" {
                Line::Block(net)
            } else {
                Line::Release(net)
            })
        }
        _ => Err("expected `block ADDR KIND PREFIX`, `release ADDR KIND PREFIX`, `flush` or `flushonexit`".into()),
    }
}

/// What to ask the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Ban(Net),
    Release(Net),
    Flush,
}

enum Event {
    Line(String),
    Eof,
    Signal(i32),
}

struct Backend {
    args: SshguardArgs,
    socket: std::path::PathBuf,
    client: Option<Client>,
    node: Option<String>,
    pending: VecDeque<Op>,
    /// The last delivery failure shown, so a down agent is reported once
    /// per outage rather than once per retry.
    shown: Option<String>,
    next_try: Instant,
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("palisade sshguard-backend: {msg}");
}

/// Runs the backend until sshguard closes its stdin or stops it.
pub fn run(args: SshguardArgs, socket: &Path) -> Result<ExitCode> {
    let (tx, rx) = mpsc::channel::<Event>();
    watch_signals(tx.clone());
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lines = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match lines.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim().to_string();
                        if tx.send(Event::Line(line)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Event::Eof);
        })?;
    let mut b = Backend {
        socket: socket.to_path_buf(),
        client: None,
        node: None,
        pending: VecDeque::new(),
        shown: None,
        next_try: Instant::now(),
        args,
    };
    say(format!(
        "reporting sshguard's blocks to the agent on {} (rule {}, {} for {})",
        b.socket.display(),
        b.args.rule,
        if b.args.local {
            "this node only"
        } else {
            "the whole network"
        },
        b.args.span
    ));
    let mut flush_on_exit = false;
    let retry = b.args.retry;
    loop {
        let wait = if b.pending.is_empty() {
            Duration::from_secs(3600)
        } else {
            b.next_try.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Line(line)) if line.is_empty() => {}
            Ok(Event::Line(line)) => match parse_line(&line) {
                Ok(Line::Block(net)) => b.push(Op::Ban(net)),
                Ok(Line::Release(net)) => b.push(Op::Release(net)),
                Ok(Line::Flush) => b.push(Op::Flush),
                Ok(Line::FlushOnExit) => flush_on_exit = true,
                Err(why) => say(format!("ignoring {line:?}: {why}")),
            },
            Ok(Event::Signal(sig)) => {
                say(format!("stopping on signal {sig}"));
                break;
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        b.deliver(retry);
    }
    if flush_on_exit && !b.args.keep_on_exit {
        b.push(Op::Flush);
    }
    let deadline = Instant::now() + FINAL_DELIVERY;
    while !b.pending.is_empty() && Instant::now() < deadline {
        b.deliver(Duration::from_millis(200));
        if !b.pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if !b.pending.is_empty() {
        say(format!(
            "stopping with {} the agent never received",
            count(b.pending.len() as u64, "command", "commands")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Blocks SIGTERM and SIGINT in every thread and turns them into events,
/// so that a stop finishes the pending work (and the flush) first.
fn watch_signals(tx: mpsc::Sender<Event>) {
    // SAFETY: sigset_t is plain data; these calls only fill and apply it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: set is a valid, initialized signal set.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0
                    && tx.send(Event::Signal(sig)).is_err()
                {
                    return;
                }
            }
        });
}

impl Backend {
    fn push(&mut self, op: Op) {
        if self.pending.len() >= MAX_PENDING {
            let dropped = self.pending.pop_front();
            say(format!(
                "{MAX_PENDING} commands wait for the agent: dropping the oldest ({dropped:?})"
            ));
        }
        self.pending.push_back(op);
        self.next_try = Instant::now();
    }

    /// Sends pending commands in order until one cannot be delivered.
    fn deliver(&mut self, retry: Duration) {
        if Instant::now() < self.next_try {
            return;
        }
        while let Some(op) = self.pending.front().cloned() {
            match self.send(&op) {
                Ok(()) => {
                    self.pending.pop_front();
                    if self.shown.take().is_some() {
                        say("the agent answers again");
                    }
                }
                Err(ClientError::Agent(e)) => {
                    // The agent understood and refused: retrying would not help.
                    say(format!("the agent refused {op:?}: {e}"));
                    self.pending.pop_front();
                }
                Err(e) => {
                    self.client = None;
                    let text = e.to_string();
                    if self.shown.as_deref() != Some(text.as_str()) {
                        say(format!(
                            "{text}; keeping {} and retrying every {}",
                            count(self.pending.len() as u64, "command", "commands"),
                            describe_pause(retry)
                        ));
                        self.shown = Some(text);
                    }
                    self.next_try = Instant::now() + retry;
                    return;
                }
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            self.client = Some(Client::connect(&self.socket)?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    fn node(&mut self) -> Result<String, ClientError> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        let node = match self.client()?.call(&Request::Status { kernel: false })? {
            Response::Status(st) => st.node,
            other => return Err(unexpected(&self.socket, &other)),
        };
        self.node = Some(node.clone());
        Ok(node)
    }

    /// True if `d` is a ban sshguard made through this node.
    fn is_ours(&self, d: &Decision, node: &str) -> bool {
        d.action == Action::Ban
            && d.rule.as_deref() == Some(self.args.rule.as_str())
            && d.origin.node == node
            && d.origin.actor.as_deref() == Some(ACTOR)
    }

    fn send(&mut self, op: &Op) -> Result<(), ClientError> {
        match op {
            Op::Ban(net) => {
                let req = Request::Ban(BanRequest {
                    targets: vec![*net],
                    span: Some(self.args.span),
                    reason: Some("sshguard: attack score over its threshold".into()),
                    rule: Some(self.args.rule.clone()),
                    evidence: Vec::new(),
                    actor: Some(ACTOR.into()),
                    scope: if self.args.local {
                        Scope::Local
                    } else {
                        Scope::Network
                    },
                    brief: false,
                    source: Source::Report,
                });
                let resp = self.client()?.call(&req)?;
                if let Response::Outcomes { outcomes, .. } = resp {
                    for o in outcomes.iter().filter(|o| o.result == OutcomeKind::Refused) {
                        say(format!(
                            "{} not banned: {}",
                            o.target,
                            o.note.as_deref().unwrap_or("refused by the agent")
                        ));
                    }
                }
                Ok(())
            }
            Op::Release(net) => {
                let node = self.node()?;
                let resp = self.client()?.call(&Request::Explain { address: *net })?;
                let Response::Explanation(ex) = resp else {
                    return Err(unexpected(&self.socket, &resp));
                };
                let ours = ex
                    .banned_by
                    .iter()
                    .any(|d| d.target == *net && self.is_ours(d, &node));
                if ours { self.unban(vec![*net]) } else { Ok(()) }
            }
            Op::Flush => {
                let node = self.node()?;
                let mut ours = Vec::new();
                let req = Request::List(ListRequest {
                    action: Some(Action::Ban),
                });
                let rule = self.args.rule.clone();
                self.client()?.stream(&req, |item| {
                    if let Response::Item { decision } = item
                        && decision.rule.as_deref() == Some(rule.as_str())
                        && decision.origin.node == node
                        && decision.origin.actor.as_deref() == Some(ACTOR)
                    {
                        ours.push(decision.target);
                    }
                })?;
                if ours.is_empty() {
                    return Ok(());
                }
                say(format!(
                    "flush: lifting {} sshguard made",
                    count(ours.len() as u64, "ban", "bans")
                ));
                self.unban(ours)
            }
        }
    }

    fn unban(&mut self, targets: Vec<Net>) -> Result<(), ClientError> {
        let brief = targets.len() > 20;
        let local = self.args.local;
        self.client()?.call(&Request::Unban(TargetsRequest {
            targets,
            actor: Some(ACTOR.into()),
            brief,
            local,
            only_rule: None,
        }))?;
        Ok(())
    }
}

fn describe_pause(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        palisade_model::time::compact_duration(d)
    }
}

fn unexpected(socket: &Path, r: &Response) -> ClientError {
    ClientError::Protocol {
        path: socket.to_path_buf(),
        detail: format!("unexpected answer {r:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_sshguards_backend_protocol() {
        assert_eq!(
            parse_line("block 198.51.100.7 4 32"),
            Ok(Line::Block(net("198.51.100.7")))
        );
        assert_eq!(
            parse_line("block 198.51.100.7 4 24"),
            Ok(Line::Block(net("198.51.100.0/24"))),
            "the attacker's address with sshguard's subnet size"
        );
        assert_eq!(
            parse_line("release 2001:db8::7 6 64"),
            Ok(Line::Release(net("2001:db8::/64")))
        );
        assert_eq!(
            parse_line("block 2001:db8::7 6"),
            Ok(Line::Block(net("2001:db8::7")))
        );
        assert_eq!(parse_line("flush"), Ok(Line::Flush));
        assert_eq!(parse_line("flushonexit"), Ok(Line::FlushOnExit));
        for bad in [
            "",
            "block",
            "block 198.51.100.7",
            "block 198.51.100.7 6 32",
            "block 2001:db8::1 4 32",
            "block 198.51.100.7 4 33",
            "block 198.51.100.7 4 0",
            "block 198.51.100.7 5 32",
            "block example.com 4 32",
            "block 198.51.100.7 4 32 extra",
            "reboot",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pauses() {
        assert_eq!(parse_pause("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_pause("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_pause("forever").is_err());
        assert!(parse_pause("0ms").is_err());
        assert_eq!(describe_pause(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn rule_names_are_checked() {
        assert!(parse_rule("sshguard").is_ok());
        assert!(parse_rule("a b").is_err());
        assert!(parse_rule("").is_err());
    }
}

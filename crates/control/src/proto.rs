//! Messages on the control socket.
//!
//! Framing is one JSON object per line in each direction. A client sends one
//! [`Request`] and reads [`Response`] lines until one with `"end": true`
//! style finality ([`Response::is_final`]): most requests get exactly one
//! response; `list` streams one [`Response::Item`] per decision and then
//! [`Response::End`], so a million decisions never sit in one buffer.

pub use palisade_model::explain::{Explanation, Verdict};
use palisade_model::{Action, Decision, Net, Scope, Source, Span, Timestamp};
use serde::{Deserialize, Serialize};

/// Largest request line the agent accepts (a bulk ban of ~1M addresses fits).
pub const MAX_REQUEST_BYTES: usize = 256 << 20;

/// What a client asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Ban addresses or networks (`palisade ban`, `palisade report`).
    Ban(BanRequest),
    /// Lift bans (`palisade unban`).
    Unban(TargetsRequest),
    /// Allow addresses or networks: never banned, and existing bans lifted
    /// (`palisade allow`).
    Allow(AllowRequest),
    /// Remove allows (`palisade unallow`).
    Unallow(TargetsRequest),
    /// Stream every decision in force (`palisade list`).
    List(ListRequest),
    /// Why an address is banned, allowed or neither (`palisade explain`).
    Explain {
        /// The address or network asked about.
        address: Net,
    },
    /// The agent's health and numbers (`palisade status`).
    Status {
        /// Also read each enforcer's state back from the kernel (a full
        /// dump of large sets: slower, and it holds up decisions meanwhile).
        #[serde(default)]
        kernel: bool,
    },
    /// Pull one of the agent's configured feeds now, in the agent (its
    /// namespace, routes and environment), and apply it. Only a name
    /// travels: the URL and everything else come from the agent's own
    /// configuration.
    FeedPull {
        /// The feed's name in the agent's configuration.
        name: String,
    },
}

/// What replacing a feed's entries did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedApplied {
    /// Entries in the list.
    pub total: u64,
    /// Entries newly banned.
    pub added: u64,
    /// Entries of the previous list that are no longer in it, unbanned.
    pub removed: u64,
    /// Refused: allowed, or forbidden by the guard (too broad, loopback).
    pub refused: u64,
    /// Already banned for another reason: left as they are.
    pub kept: u64,
}

/// What pulling a feed by hand did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPulled {
    /// The feed's name in the configuration.
    pub name: String,
    /// Entries in the new list; `None` when the server said the list had
    /// not changed (the last good list was applied again).
    pub entries: Option<u64>,
    /// Lines that were not addresses or networks, skipped.
    pub malformed: u64,
    /// A few of them, with their line numbers.
    #[serde(default)]
    pub examples: Vec<String>,
    /// How long the pull took.
    pub millis: u64,
    /// What applying the list did (`None`: there was nothing to apply).
    #[serde(default)]
    pub applied: Option<FeedApplied>,
}

/// Ban one or more targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRequest {
    /// Addresses and networks to ban.
    pub targets: Vec<Net>,
    /// How long; `None` uses the agent's configured default.
    #[serde(default)]
    pub span: Option<Span>,
    /// Free text for the operator, shown by `list` and `explain`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The rule, jail or command behind the ban (defaults to `ban`).
    #[serde(default)]
    pub rule: Option<String>,
    /// Log lines or other evidence, kept with the decision.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// Who asks (user name, program).
    #[serde(default)]
    pub actor: Option<String>,
    /// This node only, or the whole network (the default).
    #[serde(default)]
    pub scope: Scope,
    /// Answer with the summary and only the targets that failed (for bulk
    /// requests, where a line per target would be noise).
    #[serde(default)]
    pub brief: bool,
    /// `cli` for operators, `report` for other programs (`palisade report`).
    #[serde(default = "cli")]
    pub source: Source,
}

fn cli() -> Source {
    Source::Cli
}

/// Allow one or more targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRequest {
    /// Addresses and networks to allow.
    pub targets: Vec<Net>,
    /// How long; `None` means forever.
    #[serde(default)]
    pub span: Option<Span>,
    /// Free text for the operator, shown by `list` and `explain`.
    #[serde(default)]
    pub comment: Option<String>,
    /// Who asks (user name, program).
    #[serde(default)]
    pub actor: Option<String>,
    /// This node only, or the whole network (the default).
    #[serde(default)]
    pub scope: Scope,
    /// See [`BanRequest::brief`].
    #[serde(default)]
    pub brief: bool,
}

/// Unban or unallow one or more targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsRequest {
    /// Addresses and networks whose ban or allow is lifted.
    pub targets: Vec<Net>,
    /// Who asks (user name, program).
    #[serde(default)]
    pub actor: Option<String>,
    /// See [`BanRequest::brief`].
    #[serde(default)]
    pub brief: bool,
    /// On a joined node: act on this node only, not the network.
    #[serde(default)]
    pub local: bool,
    /// Only a ban made by this rule is lifted (fail2ban's unban withdraws
    /// what its jail reported, not an operator's ban of the same address).
    #[serde(default)]
    pub only_rule: Option<String>,
}

/// Which decisions a `list` streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Only bans or only allows; `None` lists both.
    #[serde(default)]
    pub action: Option<Action>,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// The outcome of a ban, unban, allow or unallow: how many targets
    /// ended how, and one [`Outcome`] per target (only the failed ones for
    /// a brief request).
    Outcomes {
        /// How many targets ended each way.
        summary: Summary,
        /// One per target; only the failed ones for a brief request.
        outcomes: Vec<Outcome>,
    },
    /// One decision of a `list`; more follow until [`Response::End`].
    Item {
        /// The decision.
        decision: Decision,
    },
    /// The end of a `list`.
    End {
        /// How many items were sent.
        count: u64,
    },
    /// The answer to [`Request::Explain`].
    Explanation(Explanation),
    /// The answer to [`Request::Status`].
    Status(Box<AgentStatus>),
    /// The answer to [`Request::FeedPull`].
    FeedPulled(FeedPulled),
    /// The request failed as a whole; nothing was changed.
    Error(ControlError),
}

impl Response {
    /// True if no more responses follow this one.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Item { .. })
    }
}

/// What happened to one target of a mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The address or network, as given in the request.
    pub target: Net,
    /// How it ended.
    pub result: OutcomeKind,
    /// Details for the operator: what a refusal means, which bans an allow
    /// lifted, which network ban covers a host that was not banned itself.
    #[serde(default)]
    pub note: Option<String>,
    /// When the decision now expires (`None`: forever or not applicable).
    #[serde(default)]
    pub expires: Option<Timestamp>,
}

/// How one target of a ban, unban, allow or unallow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// A new decision was made and enforced.
    Added,
    /// An existing decision was made again; its expiry moved later.
    Extended,
    /// An existing decision was made again; nothing changed in the kernel.
    Unchanged,
    /// The decision was removed.
    Removed,
    /// There was nothing to remove.
    NotFound,
    /// The request was refused (allowlisted, protected, too broad).
    Refused,
}

/// How many targets of a request ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// New decisions.
    pub added: u64,
    /// Existing decisions whose expiry moved later.
    pub extended: u64,
    /// Existing decisions left as they were.
    pub unchanged: u64,
    /// Decisions removed.
    pub removed: u64,
    /// Removals of decisions that did not exist.
    pub not_found: u64,
    /// Targets refused (allowlisted, protected, too broad).
    pub refused: u64,
}

impl Summary {
    /// Counts one target that ended as `kind`.
    pub fn count(&mut self, kind: OutcomeKind) {
        let slot = match kind {
            OutcomeKind::Added => &mut self.added,
            OutcomeKind::Extended => &mut self.extended,
            OutcomeKind::Unchanged => &mut self.unchanged,
            OutcomeKind::Removed => &mut self.removed,
            OutcomeKind::NotFound => &mut self.not_found,
            OutcomeKind::Refused => &mut self.refused,
        };
        *slot += 1;
    }

    /// Targets that did not do what was asked (not found or refused).
    pub fn failures(&self) -> u64 {
        self.not_found + self.refused
    }
}

impl OutcomeKind {
    /// True for results that mean the request did not do what was asked.
    pub fn is_failure(self) -> bool {
        matches!(self, OutcomeKind::NotFound | OutcomeKind::Refused)
    }
}

/// The agent's health and numbers, for `palisade status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This node's name.
    pub node: String,
    /// The agent's palisade version.
    pub version: String,
    /// The agent's process id.
    pub pid: u32,
    /// When the agent started.
    pub started: Timestamp,
    /// The agent's clock when it answered.
    pub now: Timestamp,
    /// How the agent runs, e.g. `local-only`.
    pub mode: String,
    /// Directory of the agent's state (store, feed lists).
    pub state_dir: String,
    /// Path of this control socket.
    pub socket: String,
    /// Banned single addresses in force.
    pub bans: u64,
    /// Banned networks (prefixes) in force.
    pub ban_networks: u64,
    /// Allow entries in force.
    pub allows: u64,
    /// When the next decision expires (`None`: none expires).
    pub next_expiry: Option<Timestamp>,
    /// How long a ban lasts when its request names no span.
    pub default_ban: Span,
    /// One per configured enforcer.
    pub enforcers: Vec<EnforcerStatus>,
    /// Open connections of banned addresses cut since the agent started.
    pub connections_killed: u64,
    /// The network this agent is joined to (`None`: local only).
    #[serde(default)]
    pub network: Option<NetworkStatus>,
}

/// How an agent's link to the network is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// What it is joined to (`hub https://…`).
    pub bus: String,
    /// The decision stream is open now.
    pub connected: bool,
    /// The last stream number applied here.
    pub cursor: u64,
    /// The newest stream number the network has announced.
    pub latest: u64,
    /// Requests waiting in the outbox.
    pub pending: u64,
    /// Why the link last failed; cleared when it connects again.
    pub last_error: Option<String>,
    /// Why queued requests are being held back, while they are.
    #[serde(default)]
    pub held_back: Option<String>,
}

/// How one enforcer (nftables, ipset, ...) is doing, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcerStatus {
    /// The enforcer's name from the configuration.
    pub name: String,
    /// False if its last kernel change or check failed.
    pub healthy: bool,
    /// What the enforcer holds or why it is unhealthy.
    pub detail: String,
    /// Its kernel objects (sets, lists) and their elements.
    #[serde(default)]
    pub objects: Vec<EnforcerObject>,
}

/// One kernel object of an enforcer, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcerObject {
    /// E.g. `inet palisade block4`.
    pub name: String,
    /// Kernel elements palisade keeps there.
    pub expected: usize,
    /// Elements the kernel reports (`status --kernel` only).
    #[serde(default)]
    pub in_kernel: Option<usize>,
}

/// A request that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// What kind of failure, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do, for the operator.
    pub message: String,
}

/// Why a request failed as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed.
    BadRequest,
    /// The peer is not allowed to use the socket.
    Forbidden,
    /// The agent failed (store or kernel error).
    Internal,
}

impl ControlError {
    /// An error of `code` with `message` for the operator.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        let r = Request::Ban(BanRequest {
            targets: vec!["198.51.100.7".parse().unwrap()],
            span: Some("1h".parse().unwrap()),
            reason: Some("ssh".into()),
            rule: None,
            evidence: vec![],
            actor: None,
            scope: Scope::Local,
            brief: false,
            source: Source::Cli,
        });
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"op":"ban","targets":["198.51.100.7"],"span":"1h","reason":"ssh","rule":null,"evidence":[],"actor":null,"scope":"local","brief":false,"source":"cli"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        // Optional fields may be left out by hand-written clients.
        let min: Request =
            serde_json::from_str(r#"{"op":"ban","targets":["2001:db8::1"]}"#).unwrap();
        assert!(matches!(min, Request::Ban(b) if b.span.is_none() && b.scope == Scope::Network));
        let st: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(st, Request::Status { kernel: false });
    }

    #[test]
    fn bad_targets_fail_to_parse() {
        let err = serde_json::from_str::<Request>(r#"{"op":"ban","targets":["1.2.3.4/24"]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("did you mean 1.2.3.0/24"), "{err}");
    }
}

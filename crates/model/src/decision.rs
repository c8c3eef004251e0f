//! Decisions: what palisade does about an address, and why.
//!
//! A [`Decision`] bans or allows one [`Net`] until a time (or forever), and
//! keeps its provenance (who asked, which rule or command, a reason, a few
//! lines of evidence) so that `palisade explain` can answer "why?". There is
//! at most one decision per ([`Action`], [`Net`]): asking again refreshes the
//! existing one (see [`Decision::absorb`]) instead of stacking duplicates.

use std::fmt;

use crate::net::Net;
use crate::time::{Span, Timestamp};

/// Most evidence lines a decision keeps; older lines are dropped first.
pub const MAX_EVIDENCE_LINES: usize = 10;
/// Longest evidence line, reason or comment kept, in bytes.
pub const MAX_TEXT_LEN: usize = 512;
/// Longest rule, node or actor name kept, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Whether a decision blocks or protects its target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop traffic from the target.
    Ban,
    /// Never drop traffic from the target, whoever asks.
    Allow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Ban => "ban",
            Action::Allow => "allow",
        })
    }
}

/// What kind of thing asked for a decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An operator on the command line (`palisade ban`, `palisade allow`).
    Cli,
    /// The configuration file (static allowlist entries).
    Config,
    /// A palisade detector watching logs or traffic.
    Detector,
    /// Another program reporting through `palisade report` (fail2ban, psad).
    Report,
    /// An external blocklist feed.
    Feed,
    /// Policy itself (escalation, roll-up of many hosts into a network).
    Policy,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cli => "cli",
            Source::Config => "config",
            Source::Detector => "detector",
            Source::Report => "report",
            Source::Feed => "feed",
            Source::Policy => "policy",
        })
    }
}

/// Whether a decision is for this node only or for the whole network.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Enforced only by the node that made it.
    Local,
    /// Shared with every node of the network.
    #[default]
    Network,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Local => "local",
            Scope::Network => "network",
        })
    }
}

/// Who asked for a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The node (server) where the decision was made or first reported.
    pub node: String,
    /// The kind of input that asked (CLI, detector, report, feed...).
    pub source: Source,
    /// The person or program behind the source: a user name for the CLI,
    /// `fail2ban` or `psad` for reports.
    #[serde(default)]
    pub actor: Option<String>,
}

impl Origin {
    /// An origin at `node` from `source`, without an actor; the node name is
    /// cleaned with [`clean_name`].
    pub fn new(node: impl Into<String>, source: Source) -> Origin {
        Origin {
            node: clean_name(&node.into()),
            source,
            actor: None,
        }
    }

    /// The same origin naming the person or program behind it (cleaned with
    /// [`clean_name`]).
    pub fn with_actor(mut self, actor: impl Into<String>) -> Origin {
        self.actor = Some(clean_name(&actor.into()));
        self
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.actor {
            Some(actor) => write!(f, "{} via {} on {}", actor, self.source, self.node),
            None => write!(f, "{} on {}", self.source, self.node),
        }
    }
}

/// A ban or allow of one network, with its expiry and provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Ban or allow.
    pub action: Action,
    /// The address or network it applies to.
    pub target: Net,
    /// When the decision was first made.
    pub created: Timestamp,
    /// When it was last made again or extended.
    pub updated: Timestamp,
    /// When it stops applying; `None` means forever.
    pub expires: Option<Timestamp>,
    /// Who asked for it.
    pub origin: Origin,
    /// The rule, jail or command that produced it (`sshd`, `fail2ban/sshd`,
    /// `ban`).
    #[serde(default)]
    pub rule: Option<String>,
    /// Free text: why it was banned, or the comment of an allow.
    #[serde(default)]
    pub reason: Option<String>,
    /// A few log lines or facts that triggered it, newest last.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// How many times it was asked for (1 on creation).
    pub hits: u32,
    /// This node only, or the whole network.
    pub scope: Scope,
    /// When set, the decision applies only to the nodes of this group (a
    /// per-group allowlist, like diswall's per-client allow list).
    #[serde(default)]
    pub group: Option<String>,
    /// The kernel list a detector's stage named (banban's THROTTLE or
    /// BLOCKER), for enforcers with named lists such as xt_recent. Only
    /// names [`check_list_name`] accepts get in: enforcers use them as file
    /// names under `/proc`.
    #[serde(default, deserialize_with = "list_name")]
    pub list: Option<String>,
}

impl Decision {
    /// A new decision starting at `now` and lasting `span`.
    pub fn new(
        action: Action,
        target: Net,
        now: Timestamp,
        span: Span,
        origin: Origin,
    ) -> Decision {
        Decision {
            action,
            target,
            created: now,
            updated: now,
            expires: span.expiry_from(now),
            origin,
            rule: None,
            reason: None,
            evidence: Vec::new(),
            hits: 1,
            scope: Scope::default(),
            group: None,
            list: None,
        }
    }

    /// Names the kernel list; a name [`check_list_name`] refuses is
    /// dropped (callers check names where they enter, with a clear error).
    pub fn with_list(mut self, list: Option<String>) -> Decision {
        self.list = list.filter(|l| check_list_name(l).is_ok());
        self
    }

    /// Limits the decision to the nodes of `group` (`None`: every node); the
    /// name is cleaned with [`clean_name`].
    pub fn with_group(mut self, group: Option<String>) -> Decision {
        self.group = group.map(|g| clean_name(&g));
        self
    }

    /// Names the rule, jail or command that produced it (cleaned with
    /// [`clean_name`]).
    pub fn with_rule(mut self, rule: impl Into<String>) -> Decision {
        self.rule = Some(clean_name(&rule.into()));
        self
    }

    /// Sets the free-text reason (cleaned with [`clean_text`]).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Decision {
        self.reason = Some(clean_text(&reason.into()));
        self
    }

    /// Adds log lines or facts as evidence (cleaned with [`clean_text`]; only
    /// the newest [`MAX_EVIDENCE_LINES`] are kept).
    pub fn with_evidence<I, S>(mut self, lines: I) -> Decision
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.push_evidence(lines);
        self
    }

    /// Sets whether it applies to this node only or to the network.
    pub fn with_scope(mut self, scope: Scope) -> Decision {
        self.scope = scope;
        self
    }

    /// The `(action, target)` pair that identifies this decision.
    pub fn key(&self) -> (Action, Net) {
        (self.action, self.target)
    }

    /// True while the decision applies.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|e| e > now)
    }

    /// Merges a repeat of this decision (same action and target) into it.
    ///
    /// The expiry only ever grows (a repeat never shortens a ban: to shorten,
    /// unban first); the newer provenance replaces the older where it says
    /// something; evidence accumulates up to [`MAX_EVIDENCE_LINES`].
    /// Returns true if the expiry moved.
    pub fn absorb(&mut self, newer: Decision) -> bool {
        debug_assert_eq!(self.key(), newer.key());
        let old_expiry = self.expires;
        self.expires = match (self.expires, newer.expires) {
            (None, _) | (_, None) => None,
            (Some(a), Some(b)) => Some(a.max(b)),
        };
        self.updated = self.updated.max(newer.updated);
        self.hits = self.hits.saturating_add(newer.hits.max(1));
        self.origin = newer.origin;
        self.scope = newer.scope;
        if newer.rule.is_some() {
            self.rule = newer.rule;
        }
        if newer.reason.is_some() {
            self.reason = newer.reason;
        }
        if newer.list.is_some() {
            self.list = newer.list;
        }
        self.push_evidence(newer.evidence);
        self.expires != old_expiry
    }

    fn push_evidence<I, S>(&mut self, lines: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.evidence
            .extend(lines.into_iter().map(|l| clean_text(l.as_ref())));
        if self.evidence.len() > MAX_EVIDENCE_LINES {
            let excess = self.evidence.len() - MAX_EVIDENCE_LINES;
            self.evidence.drain(..excess);
        }
    }
}

/// The longest kernel list name palisade accepts (ipset's limit; xt_recent
/// allows more).
pub const MAX_LIST_NAME_LEN: usize = 31;

/// Why a kernel list name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a kernel list name: use 1 to 31 letters, digits, '-' or '_' (like THROTTLE or BLOCKER)"
)]
pub struct ListNameError(pub String);

/// Checks a kernel list name (an xt_recent list, an ipset): letters, digits,
/// `-` and `_` only, so it can never be a path, an option or an escape.
pub fn check_list_name(name: &str) -> Result<(), ListNameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LIST_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ListNameError(clean_name(name)))
    }
}

/// Deserializes an optional kernel list name, refusing what
/// [`check_list_name`] refuses: a list name arrives from the network and
/// is checked where it enters.
pub fn list_name<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v: Option<String> = serde::Deserialize::deserialize(d)?;
    if let Some(name) = &v {
        check_list_name(name).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// Makes attacker-influenced text safe to store and print: control
/// characters (terminal escapes, newlines that would forge extra log lines)
/// become `\u{..}` escapes, and the length is capped at [`MAX_TEXT_LEN`].
pub fn clean_text(s: &str) -> String {
    clean(s, MAX_TEXT_LEN)
}

/// Like [`clean_text`], capped at [`MAX_NAME_LEN`].
pub fn clean_name(s: &str) -> String {
    clean(s, MAX_NAME_LEN)
}

fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let piece = if c.is_control() && c != '\t' {
            c.escape_unicode().to_string()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn ban(at: u64, span: Span) -> Decision {
        Decision::new(
            Action::Ban,
            "198.51.100.7".parse().unwrap(),
            t(at),
            span,
            Origin::new("web1", Source::Cli).with_actor("root"),
        )
    }

    #[test]
    fn expiry_and_activity() {
        let d = ban(1000, Span::For(Duration::from_secs(60)));
        assert_eq!(d.expires, Some(t(61_000)));
        assert!(d.is_active(t(60_999)));
        assert!(!d.is_active(t(61_000)));
        assert!(ban(0, Span::Forever).is_active(t(u64::MAX)));
    }

    #[test]
    fn absorb_extends_but_never_shortens() {
        let mut d = ban(0, Span::For(Duration::from_secs(3600)));
        let moved = d.absorb(ban(1000, Span::For(Duration::from_secs(60))));
        assert!(!moved);
        assert_eq!(d.expires, Some(t(3_600_000)));
        assert_eq!(d.hits, 2);
        let moved = d.absorb(ban(3_000_000, Span::For(Duration::from_secs(3600))));
        assert!(moved);
        assert_eq!(d.expires, Some(t(6_600_000)));
        assert_eq!(d.updated, t(3_000_000));
        assert_eq!(d.created, t(0));
        assert!(d.absorb(ban(0, Span::Forever)));
        assert_eq!(d.expires, None);
        assert!(!d.absorb(ban(0, Span::For(Duration::from_secs(1)))));
        assert_eq!(d.expires, None, "forever stays forever");
    }

    #[test]
    fn absorb_keeps_newest_provenance_and_caps_evidence() {
        let mut d = ban(0, Span::Forever)
            .with_reason("first")
            .with_evidence((0..8).map(|i| format!("line {i}")));
        d.absorb(
            ban(1, Span::Forever)
                .with_rule("sshd")
                .with_evidence((8..12).map(|i| format!("line {i}"))),
        );
        assert_eq!(d.reason.as_deref(), Some("first"), "no new reason given");
        assert_eq!(d.rule.as_deref(), Some("sshd"));
        assert_eq!(d.evidence.len(), MAX_EVIDENCE_LINES);
        assert_eq!(d.evidence.first().unwrap(), "line 2");
        assert_eq!(d.evidence.last().unwrap(), "line 11");
    }

    #[test]
    fn text_is_defanged_and_capped() {
        assert_eq!(clean_text("a\nb\x1b[31mc\td"), "a\\u{a}b\\u{1b}[31mc\td");
        let long = "x".repeat(10_000);
        let c = clean_text(&long);
        assert!(c.len() <= MAX_TEXT_LEN + '…'.len_utf8());
        assert!(c.ends_with('…'));
        let c = clean_name(&"é".repeat(200));
        assert!(c.len() <= MAX_NAME_LEN + 3 && c.ends_with('…'));
    }

    #[test]
    fn json_shape() {
        let d = ban(0, Span::For(Duration::from_secs(60))).with_reason("ssh brute force");
        let v: serde_json::Value = serde_json::to_value(&d).unwrap();
        assert_eq!(v["action"], "ban");
        assert_eq!(v["target"], "198.51.100.7");
        assert_eq!(v["expires"], "1970-01-01T00:01:00.000Z");
        assert_eq!(v["origin"]["source"], "cli");
        assert_eq!(v["origin"]["actor"], "root");
        assert_eq!(v["scope"], "network");
        let back: Decision = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        let bin = postcard::to_stdvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Decision>(&bin).unwrap(), d);
    }
}

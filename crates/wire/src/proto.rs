//! The messages agents and hubs exchange, whatever carries them.
//!
//! Agents send [`Envelope`]s (an [`Intent`] numbered by the sending node, so
//! a retry after a lost answer is recognised and not applied twice) and get
//! an [`IntentResult`] for each. Hubs send the decision stream: [`StreamItem`]s
//! numbered by the hub, so an agent that reconnects asks for what came
//! after the last number it applied, or gets a full snapshot.

use palisade_model::{Action, Decision, Net, Source, Span, Timestamp};
use serde::{Deserialize, Serialize};

use crate::parts::{self, PartError};

/// What a node asks the network to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Ban an address: an operator's ban, or a report from a detector or
    /// another program (the source says which; policy treats them apart).
    Ban {
        /// The address or network to ban.
        target: Net,
        /// `None`: the policy's default for this source.
        #[serde(default)]
        span: Option<Span>,
        /// The rule, jail or command behind it (`sshd`, `fail2ban/sshd`).
        #[serde(default)]
        rule: Option<String>,
        /// Free text for the operator.
        #[serde(default)]
        reason: Option<String>,
        /// Log lines or facts that triggered it.
        #[serde(default)]
        evidence: Vec<String>,
        /// What kind of input asked (CLI, detector, report, feed).
        source: Source,
        /// The kernel list a detector's stage named (xt_recent); checked
        /// when the intent is read (see `palisade_model::decision::check_list_name`).
        #[serde(default, deserialize_with = "palisade_model::decision::list_name")]
        list: Option<String>,
        /// The person or program behind it on the node.
        #[serde(default)]
        actor: Option<String>,
        /// The detection could have been forged (a port probe: a SYN can
        /// carry any source address). The policy bans network-wide only
        /// when several nodes confirm it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unverified: bool,
    },
    /// Lift the ban of an address or network.
    Unban {
        /// The banned address or network, exactly as banned.
        target: Net,
        /// The person or program behind it on the node.
        #[serde(default)]
        actor: Option<String>,
    },
    /// Allow an address or network: never banned, existing bans lifted.
    Allow {
        /// The address or network to allow.
        target: Net,
        /// How long; `None`: forever.
        #[serde(default)]
        span: Option<Span>,
        /// Why, shown by `list` and `explain`.
        #[serde(default)]
        comment: Option<String>,
        /// Only for the nodes of this group.
        #[serde(default)]
        group: Option<String>,
        /// The person or program behind it on the node.
        #[serde(default)]
        actor: Option<String>,
    },
    /// Remove an allow entry.
    Unallow {
        /// The allowed address or network, exactly as allowed.
        target: Net,
        /// The group of a group allow entry; `None`: the global entry.
        #[serde(default)]
        group: Option<String>,
        /// The person or program behind it on the node.
        #[serde(default)]
        actor: Option<String>,
    },
}

impl Intent {
    /// The address or network the intent is about.
    pub fn target(&self) -> Net {
        match self {
            Intent::Ban { target, .. }
            | Intent::Unban { target, .. }
            | Intent::Allow { target, .. }
            | Intent::Unallow { target, .. } => *target,
        }
    }
}

/// An intent as sent: numbered by the node (increasing, never reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The node's number for the intent; a retry carries the same one.
    pub id: u64,
    /// When the node made it.
    pub at: Timestamp,
    /// What is asked.
    pub intent: Intent,
}

/// What became of one intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentResult {
    /// The [`Envelope::id`] it answers.
    pub id: u64,
    /// What the policy did.
    pub outcome: IntentOutcome,
    /// Why, for refusals and pending reports.
    #[serde(default)]
    pub reason: Option<String>,
    /// The decision's expiry where one was made.
    #[serde(default)]
    pub expires: Option<Timestamp>,
}

/// What the policy did with an intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentOutcome {
    /// A decision was made (or lifted) and streamed to every node.
    Accepted,
    /// A repeat inside the suppression window: recorded, not re-broadcast.
    Suppressed,
    /// Recorded, waiting for more nodes to report it (quorum).
    Pending,
    /// There was nothing to lift.
    NotFound,
    /// Refused: allowlisted, a palisade node, protected, too broad, or the
    /// node may not do this.
    Refused,
    /// Already received (a retry): nothing done again.
    Duplicate,
}

impl IntentOutcome {
    /// True when the sender should take its own provisional action back.
    pub fn is_refusal(self) -> bool {
        self == IntentOutcome::Refused
    }
}

/// One item of the decision stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamItem {
    /// A full snapshot follows: what the receiver had from the network is
    /// replaced by the decisions up to [`StreamItem::SnapshotEnd`].
    Snapshot {
        /// The stream position the snapshot brings the receiver to.
        seq: u64,
    },
    /// A decision made or changed (inside a snapshot: `seq` is the
    /// snapshot's).
    Put {
        /// The item's stream position.
        seq: u64,
        /// The decision as it now is.
        decision: Decision,
    },
    /// A decision lifted.
    Remove {
        /// The item's stream position.
        seq: u64,
        /// Ban or allow.
        action: Action,
        /// The decision's address or network.
        target: Net,
        /// The group of a group allow entry; `None` for everything else.
        #[serde(default)]
        group: Option<String>,
    },
    /// The end of a snapshot; the stream continues live after `seq`.
    SnapshotEnd {
        /// The position to resume from.
        seq: u64,
    },
    /// Sent when idle: the newest number, so the receiver can tell it is
    /// current and how far behind it is. Sent first on a stream that
    /// resumes behind the head: how far what it catches up goes.
    Ping {
        /// The newest stream position.
        seq: u64,
        /// The hub's clock.
        time: Timestamp,
    },
}

impl StreamItem {
    /// The stream position this item brings its receiver to. Inside a
    /// snapshot, only [`StreamItem::SnapshotEnd`]'s position may be
    /// remembered: a receiver interrupted mid-snapshot must start over.
    pub fn cursor(&self) -> Option<u64> {
        match self {
            StreamItem::Remove { seq, .. } | StreamItem::SnapshotEnd { seq } => Some(*seq),
            StreamItem::Put { seq, .. } => Some(*seq),
            StreamItem::Snapshot { .. } | StreamItem::Ping { .. } => None,
        }
    }
}

/// The protocol a node names (`Upgrade:`) to take its stream's connection
/// over from HTTP/1.1: after the hub's `101 Switching Protocols`, the
/// connection carries the stream's lines and nothing else. A hub that does
/// not know it answers `200` with the lines as the body, as before.
pub const STREAM_UPGRADE: &str = "palisade-stream";

/// A run of a snapshot's decisions in one line of the hub's stream, sent
/// in place of their [`StreamItem::Put`] lines to a receiver that asks
/// for it with `parts=`[`SnapshotPart::ENCODING`] on [`paths::STREAM`].
/// Receivers that do not ask get `Put` lines, so agents and hubs of
/// either age work together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLine {
    /// The run.
    pub part: SnapshotPart,
}

/// A run of a snapshot's decisions (see [`PartLine`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The snapshot's stream position, which each decision's `Put` would
    /// carry.
    pub seq: u64,
    /// How many decisions it holds.
    pub count: u32,
    /// The decisions as a [`parts::encode_run`] blob, in base64.
    pub data: String,
}

impl SnapshotPart {
    /// The `parts=` value that asks the hub for part lines.
    pub const ENCODING: &str = "postcard-lz4";
    /// How the hub's part lines start (it writes compact JSON): a receiver
    /// tells them from [`StreamItem`] lines by it.
    pub const LINE_START: &[u8] = b"{\"part\":";

    /// A run of `decisions` in a snapshot at `seq`.
    pub fn new(seq: u64, decisions: &[Decision]) -> SnapshotPart {
        use base64::Engine;
        SnapshotPart {
            seq,
            count: u32::try_from(decisions.len()).expect("a run fits in a line"),
            data: base64::engine::general_purpose::STANDARD.encode(parts::encode_run(decisions)),
        }
    }

    /// Appends its decisions to `into` as `Put` items; a run that does
    /// not hold the decisions it counts is refused whole.
    pub fn puts(&self, into: &mut Vec<StreamItem>) -> Result<(), PartError> {
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .map_err(|e| PartError::Unreadable(format!("not base64: {e}")))?;
        let before = into.len();
        let seq = self.seq;
        let read = parts::decode_run(
            &blob,
            |decision| Some(StreamItem::Put { seq, decision }),
            into,
        )
        .and_then(|()| {
            let got = into.len() - before;
            if got == self.count as usize {
                Ok(())
            } else {
                Err(PartError::Unreadable(format!(
                    "{got} decisions in a part counting {}",
                    self.count
                )))
            }
        });
        if read.is_err() {
            into.truncate(before);
        }
        read
    }
}

/// Sent with a join token to become a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The name the node wants (its host name by default).
    pub name: String,
}

/// The node credential the hub issues in exchange for a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The node's name, as the credential carries it.
    pub name: String,
    /// The node's group, from the join token.
    pub group: Option<String>,
    /// A `node` token (without pin: the node keeps the join token's pin).
    pub token: String,
}

/// A node's periodic sign of life, for `palisade status` at the hub and the
/// stream-lag metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The last stream number the node applied.
    pub cursor: u64,
    /// The node's palisade version.
    pub version: String,
    /// Bans the node enforces (hosts and networks).
    pub bans: u64,
}

/// Intents sent over a message bus (NATS, MQTT), where the subject or
/// topic names the sending node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusRequest {
    /// The sender's group, as configured on the node.
    #[serde(default)]
    pub group: Option<String>,
    /// The address the bus sees the sender at, so its automatic allow is in
    /// place before its first intent is decided.
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
    /// The intents, oldest first.
    pub envelopes: Vec<Envelope>,
}

/// The answer to a [`BusRequest`]: one result per intent applied (fewer
/// than sent when the node is over its rate limit), or why none was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusReply {
    /// One result per intent applied, in order.
    Results(Vec<IntentResult>),
    /// Why no intent was applied (for the node's log).
    Error(String),
}

/// A node's periodic sign of life on a message bus: its heartbeat, and the
/// address the bus sees it at (a policy worker allows it automatically
/// when it lies inside the networks configured for palisade nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBeat {
    /// The heartbeat itself.
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// The node's group, as configured on the node.
    #[serde(default)]
    pub group: Option<String>,
    /// The address the bus sees the node at.
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
}

/// Paths of the hub's HTTPS API.
pub mod paths {
    /// POST a [`JoinRequest`](super::JoinRequest) with a join token; the
    /// answer is a [`JoinResponse`](super::JoinResponse).
    pub const JOIN: &str = "/v1/join";
    /// POST [`Envelope`](super::Envelope)s; the answer is their
    /// [`IntentResult`](super::IntentResult)s.
    pub const INTENTS: &str = "/v1/intents";
    /// GET the decision stream ([`StreamItem`](super::StreamItem)s) from a
    /// cursor (`?cursor=N`); with `&parts=postcard-lz4`, a snapshot's
    /// decisions come as [`PartLine`](super::PartLine)s.
    pub const STREAM: &str = "/v1/stream";
    /// POST a [`Heartbeat`](super::Heartbeat).
    pub const HEARTBEAT: &str = "/v1/heartbeat";
    /// GET the decisions in force, as JSON.
    pub const DECISIONS: &str = "/v1/decisions";
    /// GET `/v1/explain/ADDRESS`: why an address is or is not blocked.
    pub const EXPLAIN: &str = "/v1/explain";
    /// GET active bans as plain text, one address or network per line, for
    /// scripts.
    pub const EXPORT: &str = "/v1/export.txt";
    /// GET Prometheus metrics.
    pub const METRICS: &str = "/metrics";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let e = Envelope {
            id: 7,
            at: Timestamp::from_millis(0),
            intent: Intent::Ban {
                target: "198.51.100.7".parse().unwrap(),
                span: Some("1h".parse().unwrap()),
                rule: Some("fail2ban/sshd".into()),
                reason: None,
                evidence: vec![],
                source: Source::Report,
                actor: Some("fail2ban".into()),
                list: None,
                unverified: false,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.contains(r#""intent":{"op":"ban","target":"198.51.100.7","span":"1h""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);

        let r = StreamItem::Remove {
            seq: 9,
            action: Action::Ban,
            target: "198.51.100.7".parse().unwrap(),
            group: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"remove":{"seq":9,"action":"ban","target":"198.51.100.7","group":null}}"#
        );
        assert_eq!(serde_json::from_str::<StreamItem>(&json).unwrap(), r);
        assert_eq!(r.cursor(), Some(9));
        assert_eq!(StreamItem::Snapshot { seq: 3 }.cursor(), None);
    }
}

//! What the hub keeps about tokens and nodes, stored as JSON in the store's
//! maps, and how the hub's records are laid out (JSON values, stream
//! events with their group, group allow keys).

use palisade_model::{Net, Timestamp};
use palisade_wire::{Role, TokenKind};
use serde::{Deserialize, Serialize};

/// A token as the hub stores it: never the secret, only its hash (the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The node's name (node tokens), or a label (join and read tokens).
    pub name: String,
    /// Node, join or read.
    pub kind: TokenKind,
    /// The group of the nodes it stands for.
    #[serde(default)]
    pub group: Option<String>,
    /// When it was made.
    pub created: Timestamp,
    /// When it was revoked; it no longer works.
    #[serde(default)]
    pub revoked: Option<Timestamp>,
    /// For node tokens minted by a join token: that token's name.
    #[serde(default)]
    pub joined_with: Option<String>,
    /// What its holder may do (node tokens; join tokens pass it on to the
    /// node tokens they mint).
    #[serde(default)]
    pub role: Role,
    /// Join tokens: how many more nodes it may enrol (`None`: no limit).
    #[serde(default)]
    pub uses_left: Option<u32>,
    /// Join tokens: when it stops working.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Join tokens: how many nodes it enrolled.
    #[serde(default)]
    pub used: u32,
}

impl TokenRecord {
    /// Not revoked, and (join tokens) neither used up nor expired.
    pub fn is_valid(&self) -> bool {
        self.revoked.is_none()
            && self.uses_left != Some(0)
            && self.expires.is_none_or(|e| Timestamp::now() < e)
    }
}

/// What the hub knows about a node: the policy's record (one definition
/// for the hub and the NATS workers).
pub use palisade_policy::NodeRecord;

/// A stored stream event: the group it is for (empty: every node), a
/// newline, then the JSON line sent to nodes. Catch-up can filter by group
/// without parsing the JSON.
pub fn record(group: Option<&str>, line: &[u8]) -> Vec<u8> {
    let g = group.unwrap_or("");
    let mut r = Vec::with_capacity(g.len() + 1 + line.len());
    r.extend_from_slice(g.as_bytes());
    r.push(b'\n');
    r.extend_from_slice(line);
    r
}

/// The group (if any) and JSON line of a stored stream event.
pub fn split_record(record: &[u8]) -> (Option<&str>, &[u8]) {
    match record.iter().position(|&b| b == b'\n') {
        Some(0) => (None, &record[1..]),
        Some(i) => (std::str::from_utf8(&record[..i]).ok(), &record[i + 1..]),
        None => (None, record),
    }
}

/// `GROUP NUL TARGET`: group allows sorted by group.
pub fn group_key(group: &str, target: &Net) -> String {
    format!("{group}\u{0}{target}")
}

/// A record's JSON.
pub fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("a record serializes")
}

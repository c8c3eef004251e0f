//! What the hub keeps about tokens and nodes, stored as JSON in the store's
//! maps.

use palisade_model::Timestamp;
use palisade_wire::TokenKind;
use serde::{Deserialize, Serialize};

/// A token as the hub stores it: never the secret, only its hash (the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The node's name (node tokens), or a label (join and read tokens).
    pub name: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub group: Option<String>,
    pub created: Timestamp,
    #[serde(default)]
    pub revoked: Option<Timestamp>,
    /// For node tokens minted by a join token: that token's name.
    #[serde(default)]
    pub joined_with: Option<String>,
}

impl TokenRecord {
    pub fn is_valid(&self) -> bool {
        self.revoked.is_none()
    }
}

/// What the hub knows about a node, for status, metrics and the automatic
/// allow entry of its address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    #[serde(default)]
    pub group: Option<String>,
    /// The address the node connects from (allowed automatically).
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
    /// The last stream number the node said it applied.
    #[serde(default)]
    pub cursor: u64,
    /// Bans the node said it enforces.
    #[serde(default)]
    pub bans: u64,
    /// The highest intent id applied from this node (retries are skipped).
    #[serde(default)]
    pub last_intent: u64,
    /// Intents received from this node, all outcomes.
    #[serde(default)]
    pub intents: u64,
    /// Ban reports (ban intents) received from this node, all outcomes.
    #[serde(default)]
    pub reported: u64,
}

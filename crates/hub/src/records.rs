//! What the hub keeps about tokens and nodes, stored as JSON in the store's
//! maps.

use palisade_model::Timestamp;
use palisade_wire::{Role, TokenKind};
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

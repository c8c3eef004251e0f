//! The hub's control socket: token management and status, root only, with
//! the same framing as the agent's (one JSON object per line).

use palisade_model::Timestamp;
use serde::{Deserialize, Serialize};

/// What `palisade hub …` asks the running hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HubRequest {
    /// Create a token; the answer carries it, the hub keeps only its hash.
    TokenCreate {
        name: String,
        /// `node`, `join` or `read`.
        kind: String,
        #[serde(default)]
        group: Option<String>,
        /// `reporter`, `node` (the default) or `operator`.
        #[serde(default)]
        role: Option<String>,
        /// Join tokens: how many nodes it may enrol.
        #[serde(default)]
        uses: Option<u32>,
        /// Join tokens: how long it works.
        #[serde(default)]
        expires_in: Option<palisade_model::Span>,
    },
    TokenList,
    /// Revoke every valid token with this name (and cut its streams).
    TokenRevoke {
        name: String,
    },
    Status,
    /// Create a dashboard administrator; the hub keeps only a hash of the
    /// password.
    AdminCreate {
        name: String,
        password: String,
    },
    AdminList,
    /// Delete an administrator (and end their dashboard sessions).
    AdminDelete {
        name: String,
    },
    /// Pull one of the hub's configured feeds now, in the hub, and apply
    /// it for the whole network (only a name travels; see
    /// [`crate::Request::FeedPull`]).
    FeedPull {
        name: String,
    },
}

/// What the hub answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HubResponse {
    Token { token: String, name: String },
    Tokens { tokens: Vec<TokenInfo> },
    Revoked { name: String, count: u64 },
    Status(Box<HubStatus>),
    AdminCreated { name: String },
    Admins { admins: Vec<AdminInfo> },
    AdminDeleted { name: String },
    FeedPulled(crate::proto::FeedPulled),
    Error { message: String },
}

/// A dashboard administrator as listed (never the password's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    pub name: String,
    pub created: Timestamp,
    #[serde(default)]
    pub last_login: Option<Timestamp>,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub kind: String,
    pub group: Option<String>,
    pub created: Timestamp,
    pub revoked: Option<Timestamp>,
    /// The first characters of the token's hash, to tell tokens apart.
    pub id: String,
    /// What its holder may do (join tokens: what the nodes they enrol may).
    #[serde(default)]
    pub role: String,
    /// Join tokens: nodes enrolled so far, and how many more it may enrol.
    #[serde(default)]
    pub used: u32,
    #[serde(default)]
    pub uses_left: Option<u32>,
    /// Join tokens: when it stops working.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Node tokens: the node's last contact and address, if it connected.
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub connected: bool,
}

/// The hub's health and numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubStatus {
    pub version: String,
    pub listen: String,
    pub pin: Option<String>,
    pub started: Timestamp,
    pub now: Timestamp,
    pub bans: u64,
    pub ban_networks: u64,
    pub allows: u64,
    /// The newest stream number.
    pub seq: u64,
    pub nodes: u64,
    pub connected: u64,
}

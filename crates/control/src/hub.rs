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
        /// The token's name, shown in lists and used to revoke it.
        name: String,
        /// `node`, `join` or `read`.
        kind: String,
        /// The node group its holder belongs to (node and join tokens);
        /// `None`: in no group.
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
    /// List every token (never their secrets).
    TokenList,
    /// Revoke every valid token with this name (and cut its streams).
    TokenRevoke {
        /// The name given at creation.
        name: String,
    },
    /// The hub's health and numbers ([`HubStatus`]).
    Status,
    /// Create a dashboard administrator; the hub keeps only a hash of the
    /// password.
    AdminCreate {
        /// The login name.
        name: String,
        /// The password, in clear over the root-only socket.
        password: String,
    },
    /// List the dashboard administrators.
    AdminList,
    /// Delete an administrator (and end their dashboard sessions).
    AdminDelete {
        /// The login name.
        name: String,
    },
    /// Pull one of the hub's configured feeds now, in the hub, and apply
    /// it for the whole network (only a name travels; see
    /// [`crate::Request::FeedPull`]).
    FeedPull {
        /// The feed's name in the hub's configuration.
        name: String,
    },
}

/// What the hub answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HubResponse {
    /// A token was created; this is the only time its secret is shown.
    Token {
        /// The secret to hand to the node, reporter or operator.
        token: String,
        /// The name it was created under.
        name: String,
    },
    /// Every token, as asked by [`HubRequest::TokenList`].
    Tokens {
        /// Every stored token, revoked ones included.
        tokens: Vec<TokenInfo>,
    },
    /// Tokens were revoked.
    Revoked {
        /// The name asked for.
        name: String,
        /// How many valid tokens had that name (0: nothing was revoked).
        count: u64,
    },
    /// The answer to [`HubRequest::Status`].
    Status(Box<HubStatus>),
    /// A dashboard administrator was created.
    AdminCreated {
        /// The login name.
        name: String,
    },
    /// Every dashboard administrator.
    Admins {
        /// In no particular order.
        admins: Vec<AdminInfo>,
    },
    /// A dashboard administrator was deleted.
    AdminDeleted {
        /// The login name.
        name: String,
    },
    /// A feed was pulled and its list applied.
    FeedPulled(crate::proto::FeedPulled),
    /// The request failed; nothing was changed.
    Error {
        /// What went wrong and what to do, for the operator.
        message: String,
    },
}

/// A dashboard administrator as listed (never the password's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    /// The login name.
    pub name: String,
    /// When the administrator was created.
    pub created: Timestamp,
    /// The last successful dashboard login, if any.
    #[serde(default)]
    pub last_login: Option<Timestamp>,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The name given at creation (several tokens may share one).
    pub name: String,
    /// `node`, `join` or `read`.
    pub kind: String,
    /// The node group, for node and join tokens.
    pub group: Option<String>,
    /// When it was created.
    pub created: Timestamp,
    /// When it was revoked; `None` while it is valid.
    pub revoked: Option<Timestamp>,
    /// The first characters of the token's hash, to tell tokens apart.
    pub id: String,
    /// What its holder may do (join tokens: what the nodes they enrol may).
    #[serde(default)]
    pub role: String,
    /// Join tokens: nodes enrolled so far, and how many more it may enrol.
    #[serde(default)]
    pub used: u32,
    /// `None`: no limit.
    #[serde(default)]
    pub uses_left: Option<u32>,
    /// Join tokens: when it stops working.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Node tokens: the node's last contact and address, if it connected.
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
    /// The address the node last connected from.
    #[serde(default)]
    pub address: Option<String>,
    /// True while the node holds a stream open.
    #[serde(default)]
    pub connected: bool,
}

/// The hub's health and numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubStatus {
    /// The hub's palisade version.
    pub version: String,
    /// The address the hub listens on for nodes.
    pub listen: String,
    /// The pin of the hub's TLS certificate (`sha256/…`) that nodes check;
    /// `None` without TLS.
    pub pin: Option<String>,
    /// When the hub started.
    pub started: Timestamp,
    /// The hub's clock when it answered.
    pub now: Timestamp,
    /// Banned single addresses in force.
    pub bans: u64,
    /// Banned networks (prefixes) in force.
    pub ban_networks: u64,
    /// Allow entries in force.
    pub allows: u64,
    /// The newest stream number.
    pub seq: u64,
    /// Nodes known to the hub.
    pub nodes: u64,
    /// Node streams open now.
    pub connected: u64,
}

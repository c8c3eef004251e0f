//! Why an address is, or is not, blocked: the answer `palisade explain`
//! prints, computed from a store snapshot by the agent or the hub.

use serde::{Deserialize, Serialize};

use crate::{Decision, Net, Timestamp};

/// Why an address is, or is not, blocked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The address or network asked about.
    pub address: Net,
    /// What happens to its traffic.
    pub verdict: Verdict,
    /// Allow entries covering the address, widest first.
    pub allowed_by: Vec<Decision>,
    /// Ban entries covering the address, widest first.
    pub banned_by: Vec<Decision>,
    /// Bans strictly inside the queried network (only for network queries).
    #[serde(default)]
    pub bans_inside: u64,
    /// The clock of the agent or hub that answered.
    pub now: Timestamp,
}

/// What happens to traffic from an address, in short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Traffic from the address is dropped.
    Blocked,
    /// An allow entry covers the address; no ban applies to it.
    Allowed,
    /// Neither banned nor allowed.
    Open,
}

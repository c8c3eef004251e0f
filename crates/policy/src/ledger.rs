//! What the policy reads and writes: the hub's store, a NATS worker's
//! mirror of the buckets, or plain maps in tests.

use palisade_model::{Action, Decision, Net, Timestamp};
use serde::{Deserialize, Serialize};

use crate::nodes::NodeRecord;

/// What the hub remembers about an address's past bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    /// Bans made so far (that still count).
    pub bans: u32,
    /// When the last of those bans was made; escalation forgets the count once
    /// this is older than its `forget_after`.
    pub last: Timestamp,
}

/// One node's report of an address, towards a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The reporting node's name.
    pub node: String,
    /// When it reported.
    pub at: Timestamp,
}

/// What the policy reads and writes. `put` and `remove` are broadcast to
/// the nodes; `touch` is not.
pub trait Ledger {
    /// What a failed read or write of the backing store is.
    type Error: std::error::Error;

    /// The decision with this action and target (in `group`'s namespace for
    /// group allows), active or not.
    fn get(
        &self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Self::Error>;
    /// Global allow entries covering `target`, widest first.
    fn allows_covering(&self, target: &Net) -> Result<Vec<Decision>, Self::Error>;
    /// Every global allow entry and every group's allow entries.
    fn all_allows(&self) -> Result<Vec<Decision>, Self::Error>;
    /// The bans inside `network` (not `network` itself), active or not:
    /// the members a roll-up counts.
    fn bans_within(&self, network: &Net) -> Result<Vec<Decision>, Self::Error>;
    /// Stores and broadcasts a decision.
    fn put(&mut self, d: &Decision) -> Result<(), Self::Error>;
    /// Stores a decision without broadcasting it (a suppressed repeat).
    fn touch(&mut self, d: &Decision) -> Result<(), Self::Error>;
    /// Removes and broadcasts the removal of a decision.
    fn remove(
        &mut self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Self::Error>;
    /// An address's past bans, for escalation.
    fn offender(&self, target: &Net) -> Result<Option<Offender>, Self::Error>;
    /// Records (`Some`) or forgets (`None`) an address's past bans.
    fn set_offender(&mut self, target: &Net, o: Option<Offender>) -> Result<(), Self::Error>;
    /// Reports of an address still waiting for a quorum.
    fn reports(&self, target: &Net) -> Result<Vec<Report>, Self::Error>;
    /// Replaces the reports of an address (empty: none left).
    fn set_reports(&mut self, target: &Net, r: &[Report]) -> Result<(), Self::Error>;
    /// What is known about a node (not broadcast).
    fn node(&self, name: &str) -> Result<Option<NodeRecord>, Self::Error>;
    /// Stores what is known about a node (not broadcast).
    fn set_node(&mut self, record: &NodeRecord) -> Result<(), Self::Error>;
}

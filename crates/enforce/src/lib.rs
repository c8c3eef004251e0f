//! Enforcement: making the kernel drop what palisade has banned.
//!
//! An [`Enforcer`] owns some kernel objects (for nftables: `table inet
//! palisade`) and keeps their contents equal to the decisions it is given.
//! It never touches anything it does not own. Expiry is the kernel's job:
//! elements carry their own timeouts, so bans keep expiring on time while the
//! agent is stopped.

use palisade_model::{Action, Net, Timestamp};

/// One decision as an enforcer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub action: Action,
    pub net: Net,
    /// Absolute expiry; `None` means forever. Entries already expired are
    /// ignored by `put` and `replace_all`.
    pub expires: Option<Timestamp>,
    /// Shown next to the element where the backend supports comments.
    pub comment: Option<String>,
    /// The rule or jail behind the decision, for backends that route by it.
    pub rule: Option<String>,
}

/// A change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the entry, or refresh its expiry if it is already there.
    Put(Entry),
    /// Remove the entry with this action and network, if present.
    Remove { action: Action, net: Net },
}

/// Why an enforcer could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("{0}")]
    Other(String),
}

/// A backend that puts decisions into the kernel.
pub trait Enforcer: Send {
    /// Short name for logs and `palisade status` (e.g. `nftables`).
    fn name(&self) -> &str;

    /// Creates the backend's kernel objects if needed and makes their
    /// contents exactly `entries`, in one kernel transaction where the
    /// backend supports it (so packets never see a half-loaded state).
    fn replace_all(&mut self, entries: &mut dyn Iterator<Item = Entry>)
    -> Result<(), EnforceError>;

    /// Applies `changes`, in one kernel transaction where the backend
    /// supports it.
    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError>;

    /// Removes every kernel object this backend owns.
    fn remove(&mut self) -> Result<(), EnforceError>;
}

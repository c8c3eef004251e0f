//! Enforcement: making the kernel drop what palisade has banned.
//!
//! An [`Enforcer`] owns some kernel objects and keeps their contents equal
//! to the decisions it is given. It never touches anything it does not own.
//! Expiry is the kernel's job: elements carry their own timeouts, so bans
//! keep expiring on time while the agent is stopped.
//!
//! - [`nftables::Nftables`]: the default backend. It owns `table inet
//!   palisade` (allow and block sets per family, input and forward chains)
//!   and talks raw netlink: a whole list is swapped in one transaction, and
//!   changes go in batches. Overlapping hosts and networks are kept as a
//!   disjoint partition in memory, because the kernel's interval sets reject
//!   overlaps.
//! - [`kill`]: cuts the open connections of a banned network (conntrack
//!   entries and local TCP sockets).

use palisade_model::{Action, Net, Timestamp};

pub mod kill;
pub mod nftables;
mod partition;

pub use palisade_netlink::Error as NetlinkError;

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
    /// The kernel refused a transaction; nothing of it was applied.
    #[error("{0}")]
    Kernel(#[from] NetlinkError),
    /// An incremental change failed; the backend then reloaded everything it
    /// holds in one transaction, so the kernel matches again.
    #[error("{error}; recovered by reloading the whole table from memory")]
    Recovered { error: NetlinkError },
    /// An incremental change failed and so did the full reload: the kernel
    /// may be out of date until the next successful `replace_all`.
    #[error("{error}; reloading the whole table failed too: {reload}")]
    Unrecovered {
        error: NetlinkError,
        reload: NetlinkError,
    },
    #[error("{0}")]
    Other(String),
}

impl EnforceError {
    /// True when the cause is missing privileges (not root).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            EnforceError::Kernel(e) | EnforceError::Recovered { error: e } => {
                e.is_permission_denied()
            }
            EnforceError::Unrecovered { error, .. } => error.is_permission_denied(),
            EnforceError::Other(_) => false,
        }
    }
}

/// What an enforcer holds, for `palisade status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// One line per kernel object the backend owns (e.g. set `block4`).
    pub objects: Vec<ObjectStatus>,
    /// False when the last kernel transaction failed and could not be
    /// repaired, so the kernel may lag behind.
    pub in_sync: bool,
}

/// One kernel object (a set) and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    /// E.g. `inet palisade block4`.
    pub name: String,
    /// Entries (hosts and networks) the backend was given and still holds.
    pub entries: usize,
    /// Kernel elements expected from those entries (overlaps split, equal
    /// neighbours merged).
    pub expected: usize,
    /// Elements the kernel reports, `None` if it could not be read.
    pub in_kernel: Option<usize>,
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

    /// What the backend holds and what the kernel reports. Backends that
    /// cannot read the kernel back return an empty status.
    fn status(&mut self) -> Result<Status, EnforceError> {
        Ok(Status {
            objects: Vec::new(),
            in_sync: true,
        })
    }
}

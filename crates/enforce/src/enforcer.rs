//! The [`Enforcer`] trait every backend implements, what it is given
//! ([`Entry`], [`Change`]) and what it reports ([`Status`], [`Drift`],
//! [`EnforceError`]).

use palisade_model::{Action, Net, Timestamp};

pub use palisade_netlink::Error as NetlinkError;

use crate::name::NameError;

/// One decision as an enforcer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Ban or allow.
    pub action: Action,
    /// The address or network.
    pub net: Net,
    /// Absolute expiry; `None` means forever. Entries already expired are
    /// ignored by `put` and `replace_all`.
    pub expires: Option<Timestamp>,
    /// Shown next to the element where the backend supports comments.
    pub comment: Option<String>,
    /// The rule or jail behind the decision, for backends that route by it.
    pub rule: Option<String>,
    /// The kernel list a detector's stage asked for (xt_recent's THROTTLE or
    /// BLOCKER), for backends with named lists.
    pub list: Option<String>,
}

/// A change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the entry, or refresh its expiry if it is already there.
    Put(Entry),
    /// Remove the entry with this action and network, if present.
    Remove {
        /// Ban or allow.
        action: Action,
        /// The address or network.
        net: Net,
    },
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
    Recovered {
        /// The incremental change's error.
        error: NetlinkError,
    },
    /// An incremental change failed and so did the full reload: the kernel
    /// may be out of date until the next successful `replace_all`.
    #[error("{error}; reloading the whole table failed too: {reload}")]
    Unrecovered {
        /// The incremental change's error.
        error: NetlinkError,
        /// The full reload's error.
        reload: NetlinkError,
    },
    /// The configuration cannot work (an unknown placeholder in a command
    /// template, a set type palisade cannot fill, ...).
    #[error("{0}")]
    Config(String),
    /// A configured name cannot be used where the enforcer would put it.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A kernel object the configuration names does not exist (an ipset
    /// palisade may not create, an xt_recent list no rule has made).
    #[error("{0}")]
    Missing(String),
    /// An ipset is full: these elements were not added; every other change
    /// was applied.
    #[error(
        "ipset {set} is full (maxelem {maxelem}): {failed} element(s) were not added (first: {first}); the other changes were applied. Raise maxelem (recreate the set with a larger `maxelem`, or give palisade's `maxelem` for a set it creates) or ban fewer addresses"
    )]
    SetFull {
        /// The set's name.
        set: String,
        /// The set's `maxelem`.
        maxelem: u32,
        /// How many elements were not added.
        failed: usize,
        /// The first of them.
        first: String,
    },
    /// Several independent failures (different sets or lists); everything
    /// else was applied.
    #[error("{}", join_errors(.0))]
    Several(Vec<EnforceError>),
    /// Anything else (a command that could not run or failed), with what to
    /// do in the text.
    #[error("{0}")]
    Other(String),
}

fn join_errors(errors: &[EnforceError]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    parts.join("; ")
}

impl EnforceError {
    /// One error from several: `None` for none, the error itself for one.
    pub fn from_many(mut errors: Vec<EnforceError>) -> Option<EnforceError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(EnforceError::Several(errors)),
        }
    }

    /// `Err` of [`EnforceError::from_many`], or `Ok` when there are none.
    pub fn check(errors: Vec<EnforceError>) -> Result<(), EnforceError> {
        match EnforceError::from_many(errors) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

impl EnforceError {
    /// True when the cause is missing privileges (not root).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            EnforceError::Kernel(e) | EnforceError::Recovered { error: e } => {
                e.is_permission_denied()
            }
            EnforceError::Unrecovered { error, .. } => error.is_permission_denied(),
            EnforceError::Several(v) => v.iter().any(EnforceError::is_permission_denied),
            EnforceError::Config(_)
            | EnforceError::Name(_)
            | EnforceError::Missing(_)
            | EnforceError::SetFull { .. }
            | EnforceError::Other(_) => false,
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

/// How the kernel differs from what a backend holds: elements missing from
/// the kernel and elements the kernel holds that palisade did not put there
/// (another tool, `nft flush set`, a firewall service reloaded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// One entry per object that differs.
    pub objects: Vec<ObjectDrift>,
}

/// The drift of one kernel object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDrift {
    /// E.g. `inet palisade block4`.
    pub name: String,
    /// Elements palisade holds that the kernel lacks.
    pub missing: usize,
    /// Elements the kernel holds that palisade did not put there.
    pub extra: usize,
    /// A few of the elements concerned, e.g. `missing 198.18.0.7`.
    pub examples: Vec<String>,
}

/// Elements named per object in a drift report.
pub const DRIFT_EXAMPLES: usize = 3;

/// Elements this close to their expiry are left out of drift comparisons:
/// the kernel expires them on its own clock.
pub(crate) const DRIFT_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drift {
    /// True if the kernel matches.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Elements missing or extra, over every object.
    pub fn elements(&self) -> usize {
        self.objects.iter().map(|o| o.missing + o.extra).sum()
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {} missing, {} extra", o.name, o.missing, o.extra)?;
            if !o.examples.is_empty() {
                write!(f, " ({})", o.examples.join(", "))?;
            }
        }
        Ok(())
    }
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

    /// What the backend holds; with `kernel`, also what the kernel reports
    /// (which can take a while for large sets: a full dump). Backends that
    /// cannot read the kernel back return an empty status.
    fn status(&mut self, kernel: bool) -> Result<Status, EnforceError> {
        let _ = kernel;
        Ok(Status {
            objects: Vec::new(),
            in_sync: true,
        })
    }

    /// Reads the kernel back and compares it with what the backend holds;
    /// with `repair`, then makes the kernel match again. Returns what
    /// differed (before the repair). Elements about to expire are left out
    /// of the comparison, since the kernel expires them on its own clock.
    /// Backends that cannot read the kernel back report no drift.
    fn drift(&mut self, repair: bool) -> Result<Drift, EnforceError> {
        let _ = repair;
        Ok(Drift::default())
    }
}

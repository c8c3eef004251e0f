//! Who is asking: a node's name, group and role, all taken from its
//! credential (or, on a bus, from the subject its permissions allow),
//! never from what a request says.

use palisade_wire::Role;

/// Names palisade gives its own actors; no credential may carry one, so
/// nothing a node sends can pass for the hub, the dashboard or a bridge.
pub const RESERVED_NAMES: &[&str] = &[
    "hub",
    "dashboard",
    "vallumd",
    "policy",
    "config",
    "feed",
    "cli",
    "local",
    "palisade",
];

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty, longer than 64 bytes, or has characters other than
    /// letters, digits, `-`, `_` and `.`, or
    /// is only dots.
    #[error(
        "{0:?} is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.' (not only dots)"
    )]
    Invalid(String),
    /// The name is one of [`RESERVED_NAMES`].
    #[error("{0:?} is a name palisade uses itself ({all}); choose another", all = RESERVED_NAMES.join(", "))]
    Reserved(String),
}

/// Checks a name a credential or a bus subject gives a node.
pub fn check_node_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.chars().all(|c| c == '.');
    if !ok {
        return Err(NameError::Invalid(name.chars().take(80).collect()));
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(NameError::Reserved(name.to_string()));
    }
    Ok(())
}

/// A node as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name, from its credential.
    pub name: String,
    /// The node's group, from its credential; `None`: in no group.
    pub group: Option<String>,
    /// What the node may do (report, ban, operate).
    pub role: Role,
    /// The hub itself (its CLI, its dashboard, its bridges): the actor it
    /// names is taken as given. A token holder's actor is recorded as
    /// `NODE:actor`, so no node can pass for an administrator.
    pub internal: bool,
}

impl Node {
    /// A token holder (or a bus subject) with this role.
    pub fn member(name: impl Into<String>, group: Option<String>, role: Role) -> Node {
        Node {
            name: name.into(),
            group,
            role,
            internal: false,
        }
    }

    /// One of the hub's own actors (`dashboard`, `hub`, `vallumd`).
    pub fn internal(name: impl Into<String>, role: Role) -> Node {
        Node {
            name: name.into(),
            group: None,
            role,
            internal: true,
        }
    }

    /// The actor to record: as given for the hub's own, prefixed with the
    /// node's name for everyone else.
    pub fn actor(&self, claimed: Option<&str>) -> Option<String> {
        match (self.internal, claimed) {
            (true, a) => a.map(String::from),
            (false, Some(a)) => Some(format!("{}:{a}", self.name)),
            (false, None) => None,
        }
    }
}

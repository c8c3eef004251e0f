//! Why a name from the configuration or a decision cannot go where an
//! enforcer would put it (a command's argument, an ipset, an xt_recent
//! list): each refusal says what such a name may be.

use palisade_model::decision::ListNameError;

use crate::command::MAX_RULE_LEN;

/// A name an enforcer refuses to pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A jail name that cannot be a command's argument.
    #[error(
        "{0:?} cannot be passed to a command: a jail name must be {plain}, not starting with -",
        plain = palisade_model::name::PLAIN
    )]
    Jail(String),
    /// A rule name that cannot be a command's argument.
    #[error(
        "{0:?} cannot be passed to a command: a rule name must be 1 to {MAX_RULE_LEN} of A-Z a-z 0-9 . _ - : and / between non-empty segments other than . and .., and not start with -"
    )]
    Rule(String),
    /// A name the kernel would not take for an ipset.
    #[error(
        "{0:?} is not an ipset name (1 to {max} bytes, no control characters)",
        max = palisade_netlink::ipset::MAX_NAME_LEN
    )]
    Set(String),
    /// A name that cannot be an xt_recent list.
    #[error(transparent)]
    List(#[from] ListNameError),
}

//! Enforcement: making the kernel drop what palisade has banned.
//!
//! An [`Enforcer`] owns some kernel objects and keeps their contents equal
//! to the decisions it is given. It never touches anything it does not own.
//! Expiry is the kernel's job: elements carry their own timeouts, so bans
//! keep expiring on time while the agent is stopped.
//!
//! - [`nftables::NftablesEnforcer`]: the default backend. It owns `table inet
//!   palisade` (allow and block sets per family, a prerouting chain that
//!   drops before conntrack, see `layout`)
//!   and talks raw netlink: a whole list is swapped in one transaction, and
//!   changes go in batches. Overlapping hosts and networks are kept as a
//!   disjoint partition in memory, because the kernel's interval sets reject
//!   overlaps. On `xdp_devices` it also keeps a copy of its sets in the
//!   maps of palisade's XDP drop (`xdp`, over `palisade-xdp`), which drops
//!   in the driver, and only ever what the table would.
//! - [`ipset::IpsetEnforcer`]: puts decisions into ipsets the operator made or
//!   palisade creates (`hash:ip`, `hash:net`, `bitmap:ip`; IPv4 and IPv6),
//!   for firewalls built around `-m set --match-set` (vallumd, diswall,
//!   maltrail); a whole list is replaced with `ipset swap`.
//! - [`xt_recent::XtRecentEnforcer`]: primes iptables' `recent` match lists under
//!   `/proc/net/xt_recent/` (banban's `THROTTLE` and `BLOCKER`).
//! - [`command::CommandEnforcer`]: runs a ban and an unban command per
//!   address (`fail2ban-client set {jail} banip {ip}`, `psad
//!   --fw-block-ip {ip}`), without a shell, on worker threads.
//! - [`filter`]: several enforcers at once, each with a [`filter::Filter`]
//!   of what it applies.
//! - [`config`]: [`config::EnforcerConfig`] and [`config::build`] turn
//!   `[[enforcer]]` tables of the configuration into enforcers; the only
//!   module that knows every backend. Backends import the trait
//!   (`enforcer`) and `filter`, never each other or `config`.
//! - [`kill`]: cuts the open connections of a banned network (conntrack
//!   entries and local TCP sockets).

pub mod command;
pub mod config;
mod enforcer;
pub mod filter;
mod hosts;
pub mod ipset;
mod kernel;
pub mod kill;
pub mod layout;
mod name;
pub mod nftables;
mod partition;
mod xdp;
pub mod xt_recent;

pub use config::{EXAMPLE_TOML, EnforcerConfig, build};
pub use enforcer::{
    Change, DRIFT_EXAMPLES, Drift, EnforceError, Enforcer, Entry, NetlinkError, ObjectDrift,
    ObjectStatus, Status,
};
pub use filter::{Filter, Filtered};
pub use name::NameError;

//! palisade's vocabulary, shared by every other crate.
//!
//! - [`Net`]: an IPv4 or IPv6 host or network in canonical form;
//! - [`Decision`]: a ban or allow of a [`Net`] with its expiry and provenance;
//! - [`NetMap`]: lookups of the entries that cover an address;
//! - [`Guard`]: the rules no ban may break (the allowlist always wins);
//! - [`Timestamp`] and [`Span`]: wall-clock times and ban lengths;
//! - [`name`]: the plain names of nodes, tokens, rules and jails.
//!
//! This crate does no I/O.

pub mod decision;
pub mod explain;
pub mod guard;
pub mod name;
pub mod net;
pub mod netmap;
pub mod time;

pub use decision::{Action, Decision, Origin, Scope, Source};
pub use guard::{Guard, Refusal};
pub use net::{Family, Net, NetError};
pub use netmap::NetMap;
pub use time::{Span, SpanError, Timestamp};

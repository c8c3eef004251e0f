//! The control socket: how `palisade ban`, `list`, `explain` and friends talk
//! to the agent on the same host.
//!
//! The socket is a UNIX stream socket that only root may use: the agent
//! creates it mode 0600 in a root-only directory and also checks each peer's
//! credentials (`SO_PEERCRED`). The protocol is line-delimited JSON
//! ([`proto`]); [`client`] is the blocking client the CLI uses.
//!
//! A daemon also stops on SIGTERM or SIGINT ([`signal`]).

pub mod client;
pub mod hub;
pub mod proto;
pub mod signal;
pub mod socket;

pub use client::{Client, ClientError};
pub use proto::*;

//! Minimal netfilter netlink for palisade: only what its enforcer needs,
//! encoded straight into one buffer.
//!
//! - [`msg`]: [`MsgBuf`] builds messages, attributes and nests in place (no
//!   allocation per element); [`Msgs`] and [`Attrs`] parse replies without
//!   copying.
//! - [`Socket`]: a blocking netlink socket with two exchanges, a
//!   transaction (many messages in one `sendmsg`, one ack each, failures
//!   mapped back to their message) and a dump.
//! - [`nft`]: nf_tables [`nft::Batch`]es (one atomic kernel transaction):
//!   tables, sets, base chains, `ip saddr @set accept|drop` rules and set
//!   elements through [`nft::ElemWriter`], which splits element lists so
//!   every nest stays under 64 KiB; dumps of set elements.
//! - [`ct`]: conntrack entries, listed and deleted by original tuple.
//! - [`diag`]: TCP sockets, listed and destroyed (`SOCK_DESTROY`, like
//!   `ss -K`).
//! - [`ipset`]: ipset sets (create, header, swap, destroy, test, list) and
//!   bulk element changes in an [`ipset::Batch`] (many messages in one
//!   `sendmsg`, each acked: ipset has no transactions).
//! - [`nflog`]: nfnetlink_log, a socket bound to an NFLOG group and the
//!   packets it receives (the detector's NFLOG source).
//!
//! Errors ([`Error`]) say what was being done, the errno in words, and the
//! kernel's extended-ack message.
//!
//! The socket is plain `libc` rather than `netlink-sys`: what matters here
//! is socket options (`SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` so a batch of tens
//! of MB goes out in one `sendmsg` and its acks are not dropped,
//! `NETLINK_EXT_ACK`, `NETLINK_CAP_ACK`) and draining replies with
//! `MSG_DONTWAIT`, which a wrapper would not abstract; `libc` is already a
//! workspace dependency and the socket code is a few hundred lines.
//!
//! Everything acts on the network namespace of the thread that opened the
//! socket.

pub mod ct;
pub mod diag;
mod error;
pub mod ipset;
pub mod msg;
pub mod nflog;
pub mod nft;
mod socket;

pub use error::{Error, explain};
pub use msg::{Attr, Attrs, Msg, MsgBuf, Msgs};
pub use socket::{Nack, Socket};

//! Network-namespace labs for palisade's integration tests.
//!
//! Tests that need a network build one here instead of touching the host's:
//!
//! - [`require_root_and`] gates a test on root and the tools it runs: it
//!   prints `SKIPPED <test>: <reason>` (or panics when `CI=true`), never
//!   skipping silently;
//! - [`Netns`] is a network namespace that is deleted on drop (processes left
//!   inside are killed); [`Netns::run`] runs a closure inside it, so Rust
//!   sockets opened there live in the namespace, and [`Netns::command`]
//!   prefixes a command with `ip netns exec`;
//! - [`Lab`] wires hosts together: [`Lab::new`] gives `attacker` and `victim`
//!   on a veth pair, [`LabBuilder`] gives any number of named hosts on one
//!   bridge that lives in its own "switch" namespace;
//! - probes: [`tcp_connect`], [`ping`], [`TcpServer`] (an echo server),
//!   [`Established`] (a connection that can tell whether it is still alive);
//! - [`Proc`] guards a child process: stopped (SIGTERM, then SIGKILL) and
//!   reaped on drop, with its output kept for assertion messages.
//!
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32 and no default
//! route is ever added, so nothing a test sends can leave the lab. Cleanup is
//! done by `Drop`, so it also happens when a test panics; namespaces left by
//! a killed test run (`pal-<pid>-<n>` whose pid is gone) are removed the next
//! time a lab is built.

mod lab;
mod netns;
mod probe;
mod process;
mod require;

pub use lab::{Host, Lab, LabBuilder};
pub use netns::Netns;
pub use probe::{ConnState, Established, TcpServer, free_port, ping, tcp_connect, wait_until};
pub use process::Proc;
pub use require::require_root_and;

//! palisade's detectors: find attackers in logs and traffic.
//!
//! The pieces, in the order a log line meets them:
//!
//! - [`sources`]: where lines come from (a followed file, a syslog UNIX
//!   datagram socket, a named pipe, the systemd journal, standard input, and
//!   NFLOG for port probes seen by the kernel). Each source runs on its own
//!   thread and sends [`Line`]s into a channel.
//! - [`Engine`]: the compiled rules ([`RuleConfig`]): palisade's own
//!   patterns with a `<HOST>` placeholder, and imported fail2ban filters
//!   ([`fail2ban`]). It says, for one line, which rules saw a failure from
//!   which address, which forgave an address, and which ignored the line.
//! - [`Tracker`]: counting state with bounded memory. It turns failures into
//!   [`Event::Ban`] when a stage threshold ("N within W") is reached, and
//!   good patterns into [`Event::Forgive`].
//!
//! Nothing here resolves DNS names: a fail2ban `<HOST>` that matched only a
//! name counts as no address at all.

mod backtrack;
pub mod builtin;
mod checked;
mod conditional;
pub mod config;
mod dfa;
pub mod engine;
pub mod fail2ban;
mod firstway;
pub mod host;
mod linear;
mod literals;
pub mod logfile;
mod outcomes;
mod part;
pub mod ports;
pub mod pyre;
mod scan;
mod segments;
pub mod sources;
mod split;
pub mod syslog;
pub mod tracker;
mod walk;
mod wordcmp;

/// The benchmark's log generator, for tests.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../benches/loggen/mod.rs"]
mod loggen;

pub use config::{EXAMPLE_TOML, Limits, RuleConfig, SourceConfig, StageConfig};
pub use engine::{CompileError, Engine, Hit, HitKind, RulePatternError};
pub use sources::{Line, SourceHandle, nflog_source, spawn};
pub use tracker::{Event, StageRef, Tracker, Trust};

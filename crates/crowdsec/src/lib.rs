//! CrowdSec's language: the Local API its bouncers pull
//! (`/v1/decisions/stream`, `/v1/decisions`), answered from a palisade
//! store, so every CrowdSec bouncer works with palisade unchanged.
//!
//! - [`journal`]: the bans a bouncer may see, numbered, so each bouncer's
//!   position is one stream number and no change is ever skipped;
//! - [`query`]: the bouncers' query strings, parsed strictly;
//! - [`keys`]: bouncer keys, stored as hashes;
//! - [`server`]: the HTTP endpoint (read-only for bouncers);
//! - [`usage`]: the bouncers' usage reports, counted for the agent's
//!   metrics;
//! - [`duration`]: Go's duration syntax.

pub mod duration;
pub mod journal;
pub mod keys;
pub mod query;
pub mod server;
pub mod usage;

pub use keys::{Bouncer, KeyError, Keys, Seen};
pub use server::{Api, router, serve};
pub use usage::Usage;

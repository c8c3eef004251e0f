//! What palisade agents and hubs say to each other.
//!
//! - [`proto`]: intents from nodes, results, the numbered decision stream;
//! - [`keys`]: decision keys for buses that store decisions by key (NATS
//!   KV, MQTT retained topics);
//! - [`parts`]: runs of decisions as compact blobs (postcard and LZ4),
//!   for snapshots;
//! - [`bus`]: the [`Bus`] trait every transport (hub, NATS, MQTT)
//!   implements, so agents behave the same whichever carries them;
//! - [`token`]: node credentials and join tokens, with the hub
//!   certificate's pin;
//! - [`tls`]: rustls configurations that trust exactly the pinned
//!   certificate.

pub mod bus;
pub mod keys;
pub mod parts;
pub mod proto;
pub mod tls;
pub mod token;

pub use bus::{Bus, BusError, ItemStream, batched};
pub use proto::*;
pub use token::{Role, RoleError, Token, TokenKind};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// 32 bytes from the operating system's random source.
pub fn random_bytes() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    b
}

//! The one abstraction over how agents reach the network.
//!
//! An agent does two things with the network, whatever carries them (the
//! embedded hub over HTTPS, NATS JetStream, MQTT): it sends numbered
//! [`Envelope`]s and learns what became of each, and it follows the
//! decision stream from a cursor. [`Bus`] is exactly that; every transport
//! implements it and the agent never knows which one it has.

use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;

use crate::proto::{Envelope, Heartbeat, IntentResult, StreamItem};

/// A boxed future, as [`Bus`] methods return (the trait stays object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The decision stream a [`Bus`] follows: items, or the error that ended it.
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<StreamItem, BusError>> + Send>>;

/// Why talking to the network failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The network could not be reached (or the connection dropped): try
    /// again later; nothing was lost.
    #[error("{0}")]
    Unreachable(String),
    /// The network refused this node's credentials: retrying will not help.
    #[error("{0}")]
    Unauthorized(String),
    /// Too much, too fast: retry after a pause.
    #[error("{0}")]
    RateLimited(String),
    /// The other side said something this node does not understand.
    #[error("{0}")]
    Protocol(String),
}

impl BusError {
    /// True if retrying later can succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Unauthorized(_))
    }
}

/// A node's connection to the network.
pub trait Bus: Send + Sync + 'static {
    /// What it connects to, for logs and `palisade status`
    /// (`hub https://198.18.0.1:7470`).
    fn describe(&self) -> String;

    /// Sends intents (in order) and returns one result per intent.
    fn send<'a>(
        &'a self,
        batch: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<IntentResult>, BusError>>;

    /// Follows the decision stream from after `cursor` (0: from the start,
    /// which is a snapshot). The stream ends when the connection drops.
    fn follow(&self, cursor: u64) -> BoxFuture<'_, Result<ItemStream, BusError>>;

    /// Tells the network this node is alive and how far it has read.
    fn heartbeat<'a>(&'a self, beat: &'a Heartbeat) -> BoxFuture<'a, Result<(), BusError>>;
}

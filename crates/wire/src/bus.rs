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

/// An [`ItemStream`] of items handed over in batches: a bus client's reader
/// task passes a joining node's snapshot (tens of thousands of items) in a
/// few batches, where handing over each alone cost a sixth of its reading.
pub fn batched<S>(batches: S) -> ItemStream
where
    S: Stream<Item = Result<Vec<StreamItem>, BusError>> + Send + 'static,
{
    Box::pin(Batched {
        batches: Box::pin(batches),
        batch: Vec::new().into_iter(),
    })
}

struct Batched {
    batches: Pin<Box<dyn Stream<Item = Result<Vec<StreamItem>, BusError>> + Send>>,
    batch: std::vec::IntoIter<StreamItem>,
}

impl Stream for Batched {
    type Item = Result<StreamItem, BusError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.batch.next() {
                return std::task::Poll::Ready(Some(Ok(item)));
            }
            match futures_core::ready!(self.batches.as_mut().poll_next(cx)) {
                Some(Ok(items)) => self.batch = items.into_iter(),
                Some(Err(e)) => return std::task::Poll::Ready(Some(Err(e))),
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of the given batches, ready at once.
    struct Ready(std::vec::IntoIter<Result<Vec<StreamItem>, BusError>>);

    impl Stream for Ready {
        type Item = Result<Vec<StreamItem>, BusError>;

        fn poll_next(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }

    /// Batches come out as their items in order, empty batches as nothing,
    /// and an error where it was sent.
    #[test]
    fn batches_come_out_item_by_item_in_order() {
        let ping = |seq| StreamItem::Ping {
            seq,
            time: palisade_model::Timestamp::from_millis(0),
        };
        let mut s = batched(Ready(
            vec![
                Ok(vec![ping(1), ping(2)]),
                Ok(vec![]),
                Err(BusError::Protocol("a broken line".into())),
                Ok(vec![ping(3)]),
            ]
            .into_iter(),
        ));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(item)) = s.as_mut().poll_next(&mut cx) {
            out.push(item.map_err(|e| e.to_string()));
        }
        let seq = |item: &StreamItem| match item {
            StreamItem::Ping { seq, .. } => *seq,
            _ => 0,
        };
        let got: Vec<Result<u64, String>> = out
            .iter()
            .map(|r| r.as_ref().map(seq).map_err(Clone::clone))
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], Ok(1));
        assert_eq!(got[1], Ok(2));
        assert!(
            got[2].as_ref().is_err_and(|e| e.contains("a broken line")),
            "{got:?}"
        );
        assert_eq!(got[3], Ok(3));
    }
}

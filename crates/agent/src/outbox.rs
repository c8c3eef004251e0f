//! The outbox: intents this node queued for the network, stored in the
//! same transaction as the decisions they come from, and the ids they
//! travel under. It imports nothing else of the crate: the core queues
//! records, the network task sends what is pending, and the answers
//! (`remote`) drop what the network acknowledged.

use palisade_model::Timestamp;
use palisade_store::Queue;
use palisade_wire::{Envelope, Intent};
use serde::{Deserialize, Serialize};

/// The outbox's queue in the store.
pub const OUTBOX: Queue = Queue::new("queue.outbox", "queue.outbox.next");

/// Added to outbox numbers to make intent ids, so a node whose state was
/// wiped never reuses ids the hub has seen (it would skip them as retries).
pub const ID_BASE: &str = "net.id_base";

/// An outbox record: when the intent was made, and the intent.
#[derive(Debug, Serialize, Deserialize)]
struct OutboxRecord {
    at: Timestamp,
    intent: Intent,
}

/// The stored form of an intent queued for the network, made at `at`.
pub fn outbox_record(at: Timestamp, intent: &Intent) -> Vec<u8> {
    serde_json::to_vec(&OutboxRecord {
        at,
        intent: intent.clone(),
    })
    .expect("an intent serializes")
}

/// The outbox as envelopes, oldest first, at most `limit`.
pub fn pending(
    store: &palisade_store::Store,
    limit: usize,
) -> Result<Vec<Envelope>, palisade_store::StoreError> {
    let r = store.read()?;
    let base = r.meta(ID_BASE)?;
    Ok(r.queue(OUTBOX, 0, limit)?
        .into_iter()
        .filter_map(|(seq, bytes)| {
            let rec: OutboxRecord = serde_json::from_slice(&bytes).ok()?;
            Some(Envelope {
                id: base + seq,
                at: rec.at,
                intent: rec.intent,
            })
        })
        .collect())
}

/// Gives intent ids a base larger than any a previous incarnation of this
/// node used (milliseconds since the epoch times a thousand).
pub fn ensure_id_base(store: &palisade_store::Store) -> Result<(), palisade_store::StoreError> {
    store.write(|w| {
        if w.meta(ID_BASE)? == 0 {
            w.set_meta(ID_BASE, Timestamp::now().as_millis() * 1000)?;
        }
        Ok(())
    })
}

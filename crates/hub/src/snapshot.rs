//! The snapshot a joining node starts from, encoded once and shared.
//!
//! A node that joins (or whose cursor the hub can no longer resume) is sent
//! every active decision. When a fleet joins at once, or every agent comes
//! back after the hub restarted with cursors it trimmed, encoding that list
//! per stream costs each stream the whole list in CPU and, until the stream
//! has written it, in memory: a thousand agents joining a hub of 10,000
//! decisions held 1.6 GB. So the global part of a snapshot (global allows,
//! then bans: everything but a group's own allows) is encoded once, as
//! chunks every stream sends by reference, and reused while it is current
//! or young enough that what came after it is still in the event queue
//! (each stream then sends those events after it, as any catch-up), for as
//! long as it is kept: 2 s after it was built and while streams send it.
//! Streams that start while one is being built wait for it instead of
//! building their own.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use palisade_model::{Action, Timestamp};
use palisade_store::{Reader, Store, StoreError};
use palisade_wire::{PartLine, SnapshotPart, StreamItem};

use crate::tables;

/// How long a snapshot that is no longer current is still handed out:
/// streams that start within it share it and catch up on the events
/// after it.
const REUSE_FOR: Duration = Duration::from_secs(2);
/// Bytes per chunk (a few TLS records).
const CHUNK: usize = 60 << 10;

/// Active global allows and bans, as stream lines, at one stream number.
pub(crate) struct SharedSnapshot {
    /// The stream number it reflects: the last event it includes.
    pub seq: u64,
    /// The `Put` lines, in chunks of about [`CHUNK`] bytes.
    pub chunks: Vec<Bytes>,
    /// The same decisions as part lines ([`PartLine`]), one per chunk of
    /// `Put` lines, grouped in chunks of about [`CHUNK`] bytes: a
    /// fiftieth of the bytes, and several times quicker for a node to
    /// read.
    pub parts: Vec<Bytes>,
    /// How many decisions the chunks hold.
    pub count: u64,
    built: Instant,
}

/// The latest shared snapshot, and the turns to send one.
pub(crate) struct SnapshotCache {
    /// Building one holds the lock, so that streams starting meanwhile
    /// wait for it rather than build their own. Held weakly: a snapshot
    /// lives for [`REUSE_FOR`] after it was built and while streams send
    /// it, and its memory (a million decisions are about 300 MB of lines)
    /// goes with the last of them.
    latest: tokio::sync::Mutex<Weak<SharedSnapshot>>,
    /// Streams sending a snapshot at once. Without a bound, a fleet that
    /// joins at once asks the kernel to buffer every snapshot for every
    /// connection at the same moment; past the host's TCP memory limit it
    /// slows some connections to a crawl (a thousand agents joining with
    /// 10,000 decisions: most in 10 s, the last after 80 s).
    turns: tokio::sync::Semaphore,
}

/// Streams that may send a snapshot at once.
const SENDING: usize = 32;
/// The longest a stream keeps its turn: a node that reads slowly (or not
/// at all) cannot hold up the others' joins for longer.
pub(crate) const TURN_AT_MOST: Duration = Duration::from_secs(2);

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache {
            latest: tokio::sync::Mutex::new(Weak::new()),
            turns: tokio::sync::Semaphore::new(SENDING),
        }
    }
}

impl SnapshotCache {
    /// Waits for a turn to send a snapshot; the turn ends when the permit
    /// is dropped.
    pub(crate) async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.turns
            .acquire()
            .await
            .expect("the snapshot turns are never closed")
    }

    /// A snapshot whose events after it are all still in the queue: the
    /// cached one if it is current or younger than [`REUSE_FOR`], else a
    /// new one.
    pub(crate) async fn get(
        &self,
        store: &Arc<Store>,
    ) -> Result<Arc<SharedSnapshot>, SnapshotError> {
        let mut cached = self.latest.lock().await;
        let store = store.clone();
        let previous = cached.upgrade();
        let got = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let r = store.read()?;
            let next = r.queue_next(tables::EVENTS)?;
            let oldest = r.queue_bounds(tables::EVENTS)?.map_or(next, |(o, _)| o);
            if let Some(p) = previous
                && (p.seq + 1 == next || (p.built.elapsed() < REUSE_FOR && p.seq + 1 >= oldest))
            {
                return Ok(Got::Reused(p));
            }
            build(&r, next - 1).map(Got::Built)
        })
        .await??;
        match got {
            Got::Built(s) => {
                let s = Arc::new(s);
                *cached = Arc::downgrade(&s);
                let keep = s.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REUSE_FOR).await;
                    drop(keep);
                });
                Ok(s)
            }
            Got::Reused(s) => Ok(s),
        }
    }
}

/// A snapshot built anew, or the previous one, still current enough to
/// reuse.
enum Got {
    Built(SharedSnapshot),
    Reused(Arc<SharedSnapshot>),
}

/// Why no snapshot could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task reading the store did not finish.
    #[error("reading the store for a snapshot stopped: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

/// Encodes the active global allows, then bans, at stream number `seq`.
fn build(r: &Reader, seq: u64) -> Result<SharedSnapshot, StoreError> {
    let now = Timestamp::now();
    let mut chunks = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK + 1024);
    let mut parts = PartChunks::default();
    // The decisions of the chunk being filled: a run is at most one
    // chunk's, far under what a part may hold.
    let mut run = Vec::new();
    let mut count = 0u64;
    // Allows first, so a receiver never briefly bans what is allowed.
    for d in r
        .iter(Some(Action::Allow))?
        .chain(r.iter(Some(Action::Ban))?)
    {
        let d = d?;
        if !d.is_active(now) {
            continue;
        }
        let item = StreamItem::Put { seq, decision: d };
        put_line(&mut chunk, &item);
        if let StreamItem::Put { decision, .. } = item {
            run.push(decision);
        }
        count += 1;
        if chunk.len() >= CHUNK {
            chunks.push(Bytes::from(std::mem::replace(
                &mut chunk,
                Vec::with_capacity(CHUNK + 1024),
            )));
            parts.add_run(seq, &mut run);
        }
    }
    if !chunk.is_empty() {
        chunk.shrink_to_fit();
        chunks.push(Bytes::from(chunk));
        parts.add_run(seq, &mut run);
    }
    Ok(SharedSnapshot {
        seq,
        chunks,
        parts: parts.done(),
        count,
        built: Instant::now(),
    })
}

/// Part lines, gathered into chunks of about [`CHUNK`] bytes.
#[derive(Default)]
struct PartChunks {
    done: Vec<Bytes>,
    chunk: Vec<u8>,
}

impl PartChunks {
    /// Adds the decisions of `run` as one part line, and empties it.
    fn add_run(&mut self, seq: u64, run: &mut Vec<palisade_model::Decision>) {
        let line = PartLine {
            part: SnapshotPart::new(seq, run),
        };
        run.clear();
        serde_json::to_writer(&mut self.chunk, &line).expect("a part line serializes");
        self.chunk.push(b'\n');
        if self.chunk.len() >= CHUNK {
            self.done.push(Bytes::from(std::mem::take(&mut self.chunk)));
        }
    }

    fn done(mut self) -> Vec<Bytes> {
        if !self.chunk.is_empty() {
            self.done.push(Bytes::from(self.chunk));
        }
        self.done
    }
}

/// Appends `item` as one stream line.
pub(crate) fn put_line(out: &mut Vec<u8>, item: &StreamItem) {
    serde_json::to_writer(&mut *out, item).expect("a stream item serializes");
    out.push(b'\n');
}

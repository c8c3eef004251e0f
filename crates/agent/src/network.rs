//! The agent's tasks that talk to the network, whatever carries it (any
//! [`Bus`]):
//!
//! - **follow**: reads the decision stream from the stored cursor and hands
//!   it to the worker, which applies it and stores the cursor;
//! - **send**: sends the outbox (intents made here, stored durably) in
//!   order and hands the answers to the worker, which drops what was
//!   answered;
//! - **heartbeat**: tells the network this node is alive and how far it
//!   has read.
//!
//! Every task reconnects with capped exponential backoff and jitter. While
//! the network is away, the node keeps enforcing what it has and keeps its
//! outbox; nothing is lost, nothing is applied twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use palisade_model::Timestamp;
use palisade_store::Store;
use palisade_wire::{Bus, BusError, Heartbeat, StreamItem};
use tokio::sync::{Notify, oneshot};
use tracing::{info, warn};

use crate::cursor::CURSOR;
use crate::outbox::pending;
use crate::worker::{Command, WorkerError, WorkerHandle};

/// Resolves the network's own addresses, with why they are allowed.
pub type Resolver = Arc<dyn Fn() -> Vec<(palisade_model::Net, String)> + Send + Sync>;

/// Intents sent per request.
const SEND_BATCH: usize = 500;
/// Stream items applied per worker command.
const APPLY_BATCH: usize = 10_000;
/// How long a batch inside a snapshot or a catch-up waits for the next
/// item.
const SNAPSHOT_WAIT: Duration = Duration::from_millis(100);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How long the stream waits for this node's queued intents to be sent.
const OUTBOX_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What `palisade status` shows about the network.
#[derive(Debug, Default)]
pub struct NetState {
    /// Whether the stream is connected now.
    pub connected: std::sync::atomic::AtomicBool,
    /// The newest stream position seen.
    pub latest: AtomicU64,
    /// The last error talking to the network, until it works again.
    pub last_error: Mutex<Option<String>>,
    /// Why the outbox is draining slower than it could, while it is.
    pub held_back: Mutex<Option<String>>,
    /// Woken when the stream must start over from the stored cursor (it
    /// was reset to read the network's whole state again).
    pub resync: Notify,
}

impl NetState {
    fn failed(&self, e: &BusError) {
        *self.last_error.lock().unwrap() = Some(e.to_string());
    }
}

/// Starts the network tasks on the current tokio runtime.
pub fn spawn(
    bus: Arc<dyn Bus>,
    store: Arc<Store>,
    worker: WorkerHandle,
    outbox_ready: Arc<Notify>,
    state: Arc<NetState>,
    infrastructure: Option<Resolver>,
) -> Vec<tokio::task::JoinHandle<()>> {
    info!(network = %bus.describe(), "joining the network");
    vec![
        tokio::spawn(follow(
            bus.clone(),
            store.clone(),
            worker.clone(),
            state.clone(),
            infrastructure,
        )),
        tokio::spawn(send(
            bus.clone(),
            store.clone(),
            worker,
            outbox_ready,
            state.clone(),
        )),
        tokio::spawn(heartbeat(bus, store, state)),
    ]
}

async fn follow(
    bus: Arc<dyn Bus>,
    store: Arc<Store>,
    worker: WorkerHandle,
    state: Arc<NetState>,
    infrastructure: Option<Resolver>,
) {
    let mut backoff = Backoff::new();
    // Set when the stream must start over with the network's whole state.
    let mut from_scratch = false;
    loop {
        // What this node asked for while away goes first: a replayed
        // stream must not apply what its own queued intents undo (a ban
        // then an unban made while the network was away ends unbanned,
        // with no moment of the ban in between).
        outbox_sent_first(&store).await;
        let cursor = match read_cursor(&store).await {
            Ok(_) if std::mem::take(&mut from_scratch) => 0,
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the stream cursor");
                backoff.wait().await;
                continue;
            }
        };
        match bus.follow(cursor).await {
            Ok(mut stream) => {
                info!(cursor, "following the network's decisions");
                // The hub's or brokers' addresses, looked up again on every
                // connection, stay allowed here.
                if let Some(resolve) = infrastructure.clone()
                    && let Ok(list) = tokio::task::spawn_blocking(move || resolve()).await
                    && worker.send(Command::Infrastructure(list)).is_err()
                {
                    return;
                }
                state.connected.store(true, Ordering::Relaxed);
                *state.last_error.lock().unwrap() = None;
                backoff.reset();
                // One batch is applied by the worker while the next one is
                // read: parsing and applying overlap.
                let mut applying: Option<oneshot::Receiver<Result<(), WorkerError>>> = None;
                let mut reading = Reading::new(cursor);
                loop {
                    let (batch, stopped) = tokio::select! {
                        got = gather(&mut stream, &mut reading) => got,
                        _ = state.resync.notified() => {
                            from_scratch = true;
                            (
                                Vec::new(),
                                Some(BusError::Unreachable(
                                    "starting over to read the network's whole state".into(),
                                )),
                            )
                        }
                    };
                    if let Some(e) = &stopped {
                        warn!(error = %e, "the network's stream stopped");
                        state.failed(e);
                    }
                    if let Some(rx) = applying.take() {
                        match applied(rx).await {
                            Applied::Yes => {}
                            Applied::No => break,
                            Applied::WorkerGone => return,
                        }
                    }
                    if !batch.is_empty() {
                        if let Some(StreamItem::Ping { seq, .. }) = batch.last() {
                            state.latest.store(*seq, Ordering::Relaxed);
                        }
                        if let Some(seq) = batch.iter().rev().find_map(StreamItem::cursor) {
                            state.latest.fetch_max(seq, Ordering::Relaxed);
                        }
                        tracing::debug!(items = batch.len(), "stream items received");
                        let (tx, rx) = oneshot::channel();
                        if worker.send(Command::Remote(batch, tx)).is_err() {
                            return;
                        }
                        applying = Some(rx);
                    }
                    if stopped.is_some() {
                        break;
                    }
                }
                // What was read before the stream stopped is applied before
                // the cursor is read again.
                if let Some(rx) = applying.take()
                    && let Applied::WorkerGone = applied(rx).await
                {
                    return;
                }
                state.connected.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !e.is_transient() {
                    warn!(error = %e, "the network refused this node; fix its token (retrying in a while)");
                    state.failed(&e);
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
                warn!(error = %e, "cannot reach the network; keeping what is enforced and retrying");
                state.failed(&e);
            }
        }
        backoff.wait().await;
    }
}

enum Applied {
    Yes,
    /// Not stored: reconnect and get it again.
    No,
    WorkerGone,
}

async fn applied(rx: oneshot::Receiver<Result<(), WorkerError>>) -> Applied {
    match rx.await {
        Ok(Ok(())) => Applied::Yes,
        Ok(Err(e)) => {
            warn!(error = %e, "could not apply the network's decisions; will fetch them again");
            Applied::No
        }
        Err(_) => Applied::WorkerGone,
    }
}

/// Where a stream is, for [`gather`]: whether inside a snapshot, and how
/// far what was missed goes.
struct Reading {
    /// The newest stream position received.
    at: u64,
    in_snapshot: bool,
    /// The head the stream announced first (a [`StreamItem::Ping`] ahead of
    /// the cursor), while what was missed up to it is still arriving.
    catching_up_to: Option<u64>,
    /// No item read yet on this connection.
    first: bool,
}

impl Reading {
    fn new(cursor: u64) -> Reading {
        Reading {
            at: cursor,
            in_snapshot: false,
            catching_up_to: None,
            first: true,
        }
    }

    /// Whether more of the same catch-up or snapshot is still coming.
    fn mid_way(&self) -> bool {
        self.in_snapshot || self.catching_up_to.is_some_and(|head| head > self.at)
    }

    fn saw(&mut self, item: &StreamItem) {
        match item {
            StreamItem::Snapshot { .. } => self.in_snapshot = true,
            StreamItem::SnapshotEnd { .. } => self.in_snapshot = false,
            StreamItem::Ping { seq, .. } if self.first && *seq > self.at => {
                self.catching_up_to = Some(*seq);
            }
            _ => {}
        }
        if let Some(seq) = item.cursor() {
            self.at = self.at.max(seq);
        }
        self.first = false;
    }
}

/// Reads the next batch of stream items: at least one (waiting for it),
/// then whatever has already arrived, up to [`APPLY_BATCH`]. Inside a
/// snapshot, or while catching up to the head the stream announced when
/// it opened, it waits for more (each for at most [`SNAPSHOT_WAIT`]) until
/// the batch is full or the snapshot or catch-up ends. So a large snapshot
/// is applied in few large transactions, and what was missed is applied
/// whole: a ban and its unban made while this node was away (by this node,
/// queued, or by another) never reach its kernel one at a time, with the
/// ban enforced in between. With the items, the error that stopped the
/// stream, if it stopped.
async fn gather(
    stream: &mut palisade_wire::ItemStream,
    reading: &mut Reading,
) -> (Vec<StreamItem>, Option<BusError>) {
    let mut batch = Vec::new();
    let ended = || BusError::Unreachable("the network closed the stream".into());
    while batch.len() < APPLY_BATCH {
        let next = if batch.is_empty() {
            stream.next().await
        } else if reading.mid_way() {
            match tokio::time::timeout(SNAPSHOT_WAIT, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    // The rest of the catch-up is another group's items
                    // (not sent here) or slow: stop waiting for it.
                    if !reading.in_snapshot {
                        reading.catching_up_to = None;
                    }
                    break;
                }
            }
        } else {
            match stream.next().now_or_never() {
                Some(next) => next,
                None => break,
            }
        };
        match next {
            Some(Ok(item)) => {
                reading.saw(&item);
                batch.push(item);
            }
            Some(Err(e)) => return (batch, Some(e)),
            None => return (batch, Some(ended())),
        }
    }
    (batch, None)
}

async fn send(
    bus: Arc<dyn Bus>,
    store: Arc<Store>,
    worker: WorkerHandle,
    ready: Arc<Notify>,
    state: Arc<NetState>,
) {
    let mut backoff = Backoff::new();
    loop {
        let s = store.clone();
        let batch = match tokio::task::spawn_blocking(move || pending(&s, SEND_BATCH)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the outbox");
                backoff.wait().await;
                continue;
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            // Woken when the worker queues an intent; the timeout is a
            // safety net only.
            let _ = tokio::time::timeout(Duration::from_secs(5), ready.notified()).await;
            continue;
        }
        tracing::debug!(intents = batch.len(), "sending to the network");
        match bus.send(&batch).await {
            Ok(results) => {
                tracing::debug!(answered = results.len(), "the network answered");
                let partial = results.len() < batch.len();
                *state.held_back.lock().unwrap() = partial.then(|| {
                    format!(
                        "the network's rate limit took {} of {} queued requests; the rest follow as it allows (reports are limited by [hub.rate], a node's own bans by [hub.node_rate])",
                        results.len(),
                        batch.len()
                    )
                });
                let (tx, rx) = oneshot::channel();
                if worker.send(Command::Results(results, tx)).is_err() {
                    return;
                }
                if let Ok(Ok(true)) = rx.await {
                    state.resync.notify_one();
                }
                if partial {
                    // Over the network's rate limit: the rest later.
                    backoff.wait().await;
                } else {
                    backoff.reset();
                }
            }
            Err(e) => {
                warn!(error = %e, pending = batch.len(), "cannot send to the network; the requests stay queued");
                state.failed(&e);
                backoff.wait().await;
            }
        }
    }
}

async fn heartbeat(bus: Arc<dyn Bus>, store: Arc<Store>, state: Arc<NetState>) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        if !state.connected.load(Ordering::Relaxed) {
            continue;
        }
        let s = store.clone();
        let Ok(Ok((cursor, bans))) = tokio::task::spawn_blocking(move || {
            let r = s.read()?;
            let c = r.counts()?;
            Ok::<_, palisade_store::StoreError>((r.meta(CURSOR)?, c.ban_hosts + c.ban_networks))
        })
        .await
        else {
            continue;
        };
        let beat = Heartbeat {
            cursor,
            version: env!("CARGO_PKG_VERSION").to_string(),
            bans,
        };
        if let Err(e) = bus.heartbeat(&beat).await {
            state.failed(&e);
        }
    }
}

/// Waits (up to [`OUTBOX_FIRST`]) until the send task has emptied the
/// outbox.
async fn outbox_sent_first(store: &Arc<Store>) {
    let started = tokio::time::Instant::now();
    loop {
        let s = store.clone();
        let empty = tokio::task::spawn_blocking(move || pending(&s, 1).map(|p| p.is_empty()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(true);
        if empty {
            return;
        }
        if started.elapsed() >= OUTBOX_FIRST {
            tracing::debug!("the outbox is not empty yet; following the stream anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_cursor(store: &Arc<Store>) -> Result<u64, CursorError> {
    let s = store.clone();
    Ok(tokio::task::spawn_blocking(move || s.read().and_then(|r| r.meta(CURSOR))).await??)
}

/// Why the stream cursor could not be read (the stream is then retried).
#[derive(Debug, thiserror::Error)]
enum CursorError {
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Capped exponential backoff with jitter, so many agents coming back at
/// once do not knock on the network in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    async fn wait(&mut self) {
        let jitter = 0.5 + (Timestamp::now().as_millis() % 1000) as f64 / 1000.0;
        tokio::time::sleep(self.next.mul_f64(jitter)).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Net};

    fn remove(seq: u64) -> StreamItem {
        StreamItem::Remove {
            seq,
            action: Action::Ban,
            target: "198.18.0.9".parse::<Net>().unwrap(),
            group: None,
        }
    }

    fn ping(seq: u64) -> StreamItem {
        StreamItem::Ping {
            seq,
            time: Timestamp::from_millis(0),
        }
    }

    /// A stream whose items come `gap` apart, after the first.
    fn paced(items: Vec<StreamItem>, gap: Duration) -> palisade_wire::ItemStream {
        Box::pin(
            futures_util::stream::iter(items)
                .enumerate()
                .then(move |(i, item)| async move {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    Ok(item)
                }),
        )
    }

    #[tokio::test]
    async fn what_was_missed_up_to_the_announced_head_is_one_batch() {
        let gap = SNAPSHOT_WAIT / 4;
        let mut stream = paced(vec![ping(7), remove(6), remove(7), remove(8)], gap);
        let mut reading = Reading::new(5);
        let (batch, stopped) = gather(&mut stream, &mut reading).await;
        assert!(stopped.is_none());
        // Up to the head together; what comes after it, live, on its own.
        assert_eq!(batch, vec![ping(7), remove(6), remove(7)]);
        let (batch, _) = gather(&mut stream, &mut reading).await;
        assert_eq!(batch, vec![remove(8)]);
    }

    #[tokio::test]
    async fn only_the_first_ping_announces_a_catch_up() {
        let gap = SNAPSHOT_WAIT / 4;
        // An idle ping later in the stream (its number may count another
        // group's items) does not hold live items back.
        let mut stream = paced(vec![remove(6), ping(9), remove(7)], gap);
        let mut reading = Reading::new(5);
        for expected in [remove(6), ping(9), remove(7)] {
            let (batch, _) = gather(&mut stream, &mut reading).await;
            assert_eq!(batch, vec![expected]);
        }
        // A catch-up whose last items are not for this node ends when
        // nothing more comes.
        let mut stream = paced(vec![ping(9), remove(6), remove(10)], SNAPSHOT_WAIT * 3);
        let mut reading = Reading::new(5);
        let (batch, _) = gather(&mut stream, &mut reading).await;
        assert_eq!(batch, vec![ping(9)]);
        let (batch, _) = gather(&mut stream, &mut reading).await;
        assert_eq!(batch, vec![remove(6)]);
    }
}

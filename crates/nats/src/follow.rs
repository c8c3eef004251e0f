//! How an agent follows the decisions bucket without holding any
//! JetStream state of its own:
//!
//! 1. it subscribes to the changes the server republishes (core NATS, one
//!    subscription, through the interest graph);
//! 2. a joining agent reads the snapshot (a few direct gets of the same
//!    stored messages every agent reads), an agent that was here before
//!    starts from the revision it stored;
//! 3. it reads the bucket's messages after that revision with direct gets
//!    by sequence (none when it missed nothing);
//! 4. then it applies the live changes. Each carries its stream sequence:
//!    the next one is applied, a jump means something was missed, and the
//!    bucket itself is read from the last applied revision on (the change
//!    that announced the gap is never taken on its word). After a
//!    reconnection, and when nothing came for a while, it asks the bucket
//!    whether anything came after its revision. Those waits (spread in
//!    time) never hold up the live changes: a change that arrives
//!    meanwhile is applied, and the bucket is read only if the cursor is
//!    still behind when the wait ends.
//!
//! Catch-ups are bounded per process ([`CONCURRENT_CATCH_UPS`]) and spread
//! in time after a reconnection ([`RECONNECT_SPREAD`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use palisade_model::{Decision, Timestamp};
use palisade_wire::{BusError, StreamItem, keys};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::direct::{self, StoredMsg};
use crate::{NatsOptions, jitter, snapshot, streams};

/// Catch-ups (snapshot reads and gap fills) running at once in one
/// process: a process simulating many agents, or many buses, must not send
/// the server thousands of reads at once.
pub const CONCURRENT_CATCH_UPS: usize = 16;
/// After a reconnection, the check for missed changes waits a random time
/// below this: a fleet reconnecting at once asks over a spread of time.
pub const RECONNECT_SPREAD: Duration = Duration::from_secs(3);
/// With no change and no head announcement for this long (spread), ask the
/// bucket whether a change was missed (a republished message is lost when
/// its server dies at once). A head announcement says as much for free, so
/// where workers announce and the agent may hear them, it never asks.
const PROBE_EVERY: Duration = Duration::from_secs(60);
/// An agent acts on the workers' head announcements at most this often
/// (they come every ten seconds from each worker; anyone else allowed to
/// publish there must not make agents read the bucket without pause).
const HEAD_EVERY: Duration = Duration::from_secs(5);
/// A live change announced past what the bucket's replica serves is read
/// again after this (replicas may lag the leader a little).
const LAG_WAIT: Duration = Duration::from_millis(250);

static CATCH_UPS: Semaphore = Semaphore::const_new(CONCURRENT_CATCH_UPS);

/// Reads the decisions bucket for one agent.
#[derive(Clone)]
pub(crate) struct Reader {
    pub client: async_nats::Client,
    pub options: Arc<NatsOptions>,
    pub group: Option<String>,
    /// Connections made so far by this client (a change means it
    /// reconnected).
    pub connections: Arc<AtomicU64>,
}

/// Items go to the agent in batches: a joining agent's snapshot is tens of
/// thousands of them, and handing each over alone was a sixth of its
/// reading.
type Tx = mpsc::Sender<Result<Vec<StreamItem>, BusError>>;

impl Reader {
    fn stream(&self) -> String {
        format!("KV_{}", self.options.decisions_bucket())
    }

    fn key<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix("$KV.")?
            .strip_prefix(self.options.decisions_bucket().as_str())?
            .strip_prefix('.')
    }

    /// A decision stored under `key`, checked as anything read from the
    /// network is: None when it is not for this node or does not match
    /// its key.
    fn put(&self, key: &str, seq: u64, decision: Decision) -> Option<StreamItem> {
        let (action, target, group) = keys::parse_decision_key(key)?;
        if (decision.action, decision.target, decision.group.as_deref())
            != (action, target, group.as_deref())
        {
            debug!(key, "a decision that does not match its key; skipped");
            return None;
        }
        for_node(self.group.as_deref(), seq, decision)
    }

    /// One stored message as a stream item; inside a snapshot, removals
    /// are left out.
    fn item(&self, m: &StoredMsg, in_snapshot: bool) -> Option<StreamItem> {
        let key = self.key(&m.subject)?;
        if !direct::is_removal(m.operation.as_deref()) {
            return match serde_json::from_slice::<Decision>(&m.payload) {
                Ok(d) => self.put(key, m.seq, d),
                Err(e) => {
                    debug!(key, error = %e, "an unreadable decision in the bucket; skipped");
                    None
                }
            };
        }
        if in_snapshot {
            return None;
        }
        let (action, target, group) = keys::parse_decision_key(key)?;
        if group.is_some() && group != self.group {
            return None;
        }
        Some(StreamItem::Remove {
            seq: m.seq,
            action,
            target,
            group,
        })
    }

    /// Every message of the bucket from `from` on, by direct gets.
    async fn walk(&self, from: u64) -> Result<Vec<StoredMsg>, BusError> {
        let stream = self.stream();
        let api = self.options.api_prefix();
        let filter = format!("$KV.{}.>", self.options.decisions_bucket());
        let mut out = Vec::new();
        let mut seq = from.max(1);
        while let Some(m) = direct::next(&self.client, &api, &stream, &filter, seq)
            .await
            .map_err(|e| BusError::Unreachable(e.to_string()))?
        {
            if m.seq < seq {
                return Err(BusError::Protocol(format!(
                    "asked {stream} for a message from {seq} on, got {}",
                    m.seq
                )));
            }
            seq = m.seq + 1;
            out.push(m);
        }
        Ok(out)
    }

    /// Sends what came after `cursor`; returns the new cursor. Only the
    /// reading counts against [`CONCURRENT_CATCH_UPS`], not the agent's
    /// applying.
    async fn catch_up(&self, tx: &Tx, cursor: u64) -> Result<u64, BusError> {
        let missed = {
            let _permit = CATCH_UPS.acquire().await.expect("never closed");
            self.walk(cursor + 1).await?
        };
        let mut cursor = cursor;
        let mut items = Vec::with_capacity(missed.len());
        for m in missed {
            cursor = cursor.max(m.seq);
            items.extend(self.item(&m, false));
        }
        send_all(tx, items).await?;
        Ok(cursor)
    }

    /// Sends the whole state (the snapshot, or the bucket read whole when
    /// there is no usable snapshot); returns the revision it reflects.
    async fn full_state(&self, tx: &Tx, newest: u64) -> Result<u64, BusError> {
        let permit = CATCH_UPS.acquire().await.expect("never closed");
        let read =
            snapshot::read(
                &self.client,
                &self.options,
                newest,
                |key, rev, decision| match key {
                    Some(key) => self.put(key, rev, decision),
                    None => for_node(self.group.as_deref(), rev, decision),
                },
            )
            .await;
        drop(permit);
        match read {
            Ok(Some(s)) => {
                debug!(rev = s.rev, bytes = s.bytes, "read the decisions snapshot");
                send(tx, StreamItem::Snapshot { seq: s.rev }).await?;
                send_all(tx, s.entries).await?;
                send(tx, StreamItem::SnapshotEnd { seq: s.rev }).await?;
                return Ok(s.rev);
            }
            Ok(None) => debug!("no decisions snapshot yet; reading the bucket whole"),
            Err(e) => warn!(error = %e, "reading the bucket whole instead of its snapshot"),
        }
        let all = {
            let _permit = CATCH_UPS.acquire().await.expect("never closed");
            self.walk(1).await?
        };
        let rev = all.last().map_or(0, |m| m.seq).max(newest);
        let mut items = Vec::with_capacity(all.len() + 2);
        items.push(StreamItem::Snapshot { seq: rev });
        for m in &all {
            if let Some(item) = self.item(m, true) {
                // Inside a snapshot every put carries its number.
                items.push(match item {
                    StreamItem::Put { decision, .. } => StreamItem::Put { seq: rev, decision },
                    other => other,
                });
            }
        }
        items.push(StreamItem::SnapshotEnd { seq: rev });
        send_all(tx, items).await?;
        Ok(rev)
    }

    /// Follows the bucket from after `cursor` (0: the whole state first),
    /// sending items on `tx` until the receiver is gone or reading fails.
    pub async fn follow(
        self,
        cursor: u64,
    ) -> Result<mpsc::Receiver<Result<Vec<StreamItem>, BusError>>, BusError> {
        let unreachable = |e: &dyn std::fmt::Display| BusError::Unreachable(e.to_string());
        // Subscribed first, so that nothing falls between the catch-up
        // and the live changes.
        let mut live = self
            .client
            .subscribe(format!("{}.>", self.options.changes_subject()))
            .await
            .map_err(|e| unreachable(&e))?;
        // The workers' head announcements (a node's user needs permission
        // to subscribe to them, as to the changes).
        let mut heads = self
            .client
            .subscribe(self.options.head_subject())
            .await
            .map_err(|e| unreachable(&e))?;
        let stream = self.stream();
        let state = streams::stream_state(&self.client, &self.options.api_prefix(), &stream)
            .await
            .map_err(|e| unreachable(&e))?
            .ok_or_else(|| {
                BusError::Unreachable(format!(
                    "the bucket {} does not exist yet; it is made by the first `palisade hub --join nats://…` worker",
                    self.options.decisions_bucket()
                ))
            })?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let run = async {
                // The head first, so the agent applies what it missed up
                // to there in one batch.
                if state.last_seq > cursor {
                    let head = StreamItem::Ping {
                        seq: state.last_seq,
                        time: Timestamp::now(),
                    };
                    send(&tx, head).await?;
                }
                // A cursor past the bucket's end belongs to another bucket
                // (made again since) or was never true: start over.
                let mut cursor = if cursor == 0 || cursor > state.last_seq {
                    self.full_state(&tx, state.last_seq).await?
                } else {
                    cursor
                };
                // What the bucket held when the live changes were already
                // subscribed to and the state not yet read; anything later
                // comes live. A fleet joining at once on a current snapshot
                // then reads nothing more, and no agent's live changes wait
                // behind the others' catch-ups.
                if cursor < state.last_seq {
                    cursor = self.catch_up(&tx, cursor).await?;
                }
                let mut connected = self.connections.load(Ordering::SeqCst);
                let mut probe = next_probe();
                let mut check = tokio::time::interval(Duration::from_secs(1));
                let mut head_acted = tokio::time::Instant::now();
                // A catch-up waiting for its turn in a spread (after a head
                // announcement or a reconnection): live changes go on
                // being applied meanwhile, and it reads only if the cursor
                // is still short of what it waits for.
                let mut pending: Option<Pending> = None;
                loop {
                    let due = pending.as_ref().map(|p| p.at);
                    tokio::select! {
                        m = live.next() => {
                            let Some(m) = m else {
                                return Err(BusError::Unreachable("the NATS subscription ended".into()));
                            };
                            let Some(m) = StoredMsg::from_message(&stream, &m) else {
                                debug!(subject = %m.subject, "a change without its bucket's stamp; ignored");
                                continue;
                            };
                            if m.seq <= cursor {
                                continue;
                            }
                            if m.seq == cursor + 1 {
                                cursor = m.seq;
                                if let Some(item) = self.item(&m, false) {
                                    send(&tx, item).await?;
                                }
                            } else {
                                // A gap: read the bucket itself, never the
                                // announcement.
                                cursor = self.catch_up(&tx, cursor).await?;
                                if cursor < m.seq {
                                    tokio::time::sleep(LAG_WAIT).await;
                                    cursor = self.catch_up(&tx, cursor).await?;
                                }
                                if cursor < m.seq {
                                    warn!(announced = m.seq, bucket_at = cursor, "a change was announced that the bucket does not hold; ignored");
                                }
                            }
                            probe = next_probe();
                        }
                        Some(h) = heads.next() => {
                            // A worker's word that the bucket is past us:
                            // read the bucket itself, never the number, and
                            // not more often than HEAD_EVERY (spread, as
                            // after a reconnection: a site's agents all
                            // hear it at once). The change itself usually
                            // arrives live meanwhile, and then nothing is
                            // read.
                            let head = std::str::from_utf8(&h.payload)
                                .ok()
                                .and_then(|t| t.trim().parse::<u64>().ok());
                            if head.is_some() {
                                // A forged head that stops the probes
                                // stops nothing: the workers' own heads
                                // still come, and say when it is behind.
                                probe = next_probe();
                            }
                            if let Some(head) = head.filter(|&head| head > cursor)
                                && pending.is_none()
                                && head_acted.elapsed() >= HEAD_EVERY
                            {
                                head_acted = tokio::time::Instant::now();
                                pending = Some(Pending::until(head));
                            }
                        }
                        _ = tokio::time::sleep_until(due.unwrap_or(probe)), if due.is_some() => {
                            let wanted = pending.take().map_or(0, |p| p.wanted);
                            if cursor < wanted {
                                debug!(cursor, wanted, "asking for what was missed");
                                cursor = self.catch_up(&tx, cursor).await?;
                            }
                        }
                        _ = tokio::time::sleep_until(probe) => {
                            cursor = self.catch_up(&tx, cursor).await?;
                            send(&tx, StreamItem::Ping { seq: cursor, time: Timestamp::now() }).await?;
                            probe = next_probe();
                        }
                        _ = check.tick() => {
                            let now = self.connections.load(Ordering::SeqCst);
                            if now != connected {
                                connected = now;
                                // Whatever it waited for before, it now
                                // asks the bucket whatever the cursor.
                                let mut after = Pending::until(u64::MAX);
                                if let Some(p) = &pending {
                                    after.at = after.at.min(p.at);
                                }
                                pending = Some(after);
                            }
                        }
                        _ = tx.closed() => return Ok(()),
                    }
                }
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }
}

/// A decision as a stream item for a node of `group`: None when it names
/// another group, or is a ban naming one (no key can name that).
fn for_node(group: Option<&str>, seq: u64, decision: Decision) -> Option<StreamItem> {
    let named = decision.group.as_deref();
    if named.is_some() && (named != group || !keys::may_have_group(decision.action)) {
        return None;
    }
    Some(StreamItem::Put { seq, decision })
}

/// When to check the bucket if nothing comes meanwhile.
fn next_probe() -> tokio::time::Instant {
    tokio::time::Instant::now() + jitter::spread(PROBE_EVERY)
}

/// A catch-up to make at `at` unless the cursor has reached `wanted`
/// by then.
struct Pending {
    at: tokio::time::Instant,
    wanted: u64,
}

impl Pending {
    /// Due after a random wait below [`RECONNECT_SPREAD`].
    fn until(wanted: u64) -> Pending {
        Pending {
            at: tokio::time::Instant::now() + jitter::below(RECONNECT_SPREAD),
            wanted,
        }
    }
}

/// Sends one item.
async fn send(tx: &Tx, item: StreamItem) -> Result<(), BusError> {
    send_all(tx, vec![item]).await
}

/// Sends a batch of items (nothing when it is empty); fails when the
/// receiver is gone (the agent stopped following this stream).
async fn send_all(tx: &Tx, items: Vec<StreamItem>) -> Result<(), BusError> {
    if items.is_empty() {
        return Ok(());
    }
    tx.send(Ok(items))
        .await
        .map_err(|_| BusError::Unreachable("the stream's reader is gone".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Origin, Source};

    fn decision(action: Action, group: Option<&str>) -> Decision {
        let mut d = Decision::new(
            action,
            "198.51.100.7".parse().unwrap(),
            Timestamp::now(),
            "1h".parse().unwrap(),
            Origin::new("web1", Source::Cli),
        );
        d.group = group.map(String::from);
        d
    }

    /// A snapshot part names no keys: a group's allow reaches that group's
    /// nodes only, and a ban naming a group (which a forged or broken part
    /// could hold) reaches no one.
    #[test]
    fn group_decisions_reach_their_group_only() {
        let kept = |node: Option<&str>, d: Decision| for_node(node, 1, d).is_some();
        assert!(kept(None, decision(Action::Ban, None)));
        assert!(kept(Some("dmz"), decision(Action::Ban, None)));
        assert!(kept(Some("dmz"), decision(Action::Allow, Some("dmz"))));
        assert!(!kept(Some("dmz"), decision(Action::Allow, Some("office"))));
        assert!(!kept(None, decision(Action::Allow, Some("dmz"))));
        assert!(!kept(Some("dmz"), decision(Action::Ban, Some("dmz"))));
        assert!(!kept(None, decision(Action::Ban, Some("dmz"))));
    }
}

//! A stateless policy worker: `palisade hub --join nats://…`.
//!
//! It consumes the nodes' intents and heartbeats as a member of a queue
//! group (each message goes to one worker), decides with palisade's policy
//! over a mirror of the buckets, and writes decisions with the revision it
//! read as a precondition (see [`crate::ledger`]). Everything it knows is
//! in the buckets, so workers can be started, stopped and killed at will;
//! while none runs, nodes keep their intents queued and keep enforcing.
//!
//! On servers without per-message TTL, workers also purge expired
//! decisions from the bucket (each purge is conditional on the revision,
//! so a ban extended meanwhile is never purged).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::StreamExt;
use palisade_model::{Action, Decision, Timestamp};
use palisade_policy::{Node, NodeRecord, Policy, PolicyOptions, Role, StaticAllow};
use palisade_wire::{BusReply, BusRequest, Intent, IntentOutcome, IntentResult, NodeBeat, keys};
use tracing::{debug, info, warn};

use crate::ledger::{Mirror, MirrorLedger, Writes};
use crate::{Buckets, NatsError, NatsOptions, direct, jitter, snapshot};

/// Attempts at one batch when other workers keep changing the same keys.
const ATTEMPTS: usize = 8;
/// How often expired decisions are purged and old records forgotten.
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);
/// How long a write waits for a bucket that lost its leader.
const TRANSIENT: Duration = Duration::from_secs(12);
/// A node's record is rewritten on a heartbeat at most this often.
const NODE_WRITE_EVERY: Duration = Duration::from_secs(60);

/// What a worker decides with.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The servers, and the palisade network on them.
    pub nats: NatsOptions,
    /// The policy; its `node_networks` say where a node's declared
    /// address may be allowed automatically (empty: nowhere, since on a bus
    /// a node declares its own address), its `protected` the brokers'
    /// addresses.
    pub policy: PolicyOptions,
    /// Allow entries from the configuration. Every worker should have the
    /// same.
    pub allows: Vec<StaticAllow>,
}

/// Why a batch was not written.
enum Failed {
    /// Another worker changed a key first: read again, decide again.
    Conflict(String),
    Fatal(NatsError),
}

struct Worker {
    options: WorkerOptions,
    client: async_nats::Client,
    buckets: Buckets,
    /// The newest decisions revision the bucket watch brought: the mirror
    /// holds every change up to it.
    watched: Arc<AtomicU64>,
    /// The bucket's last sequence as read for the latest snapshot check.
    bucket_at: Option<u64>,
    /// Names this worker's snapshot parts.
    writer: String,
    mirror: Arc<Mutex<Mirror>>,
    policy: Policy,
    node_writes: HashMap<String, Instant>,
}

/// Runs a worker until `stop` resolves.
pub async fn run_worker(
    options: WorkerOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), NatsError> {
    options.nats.validate()?;
    tokio::pin!(stop);
    // A cluster that is starting (or has no JetStream leader yet) is waited
    // for.
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (client, buckets) = loop {
        let opened = async {
            let client =
                crate::connect(&options.nats, "policy worker", connections.clone()).await?;
            let buckets = crate::open_buckets(&client, &options.nats, true).await?;
            Ok::<_, NatsError>((client, buckets))
        };
        match opened.await {
            Ok(c) => break c,
            Err(e) => warn!(error = %e, "cannot open the buckets yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut stop => return Ok(()),
        }
    };
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let watched = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for (kv, is_decisions) in [
        (buckets.decisions.clone(), true),
        (
            buckets
                .state
                .clone()
                .expect("workers open the state bucket"),
            false,
        ),
    ] {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        watchers.push(tokio::spawn(mirror_bucket(
            kv,
            buckets.js.clone(),
            is_decisions,
            mirror.clone(),
            ready_tx,
            connections.clone(),
            is_decisions.then(|| watched.clone()),
        )));
        ready_rx.await.map_err(|_| NatsError::WatchStopped)?;
    }
    let prefix = &options.nats.subject_prefix;
    let group = format!("{prefix}-workers");
    // One subject per role: NATS permissions on them are what grant a role.
    let mut intents = futures_util::stream::select_all(Vec::new());
    for role in Role::ALL {
        let sub = client
            .queue_subscribe(format!("{prefix}.{}.*", role.intents_word()), group.clone())
            .await
            .map_err(|e| NatsError::Subscribe {
                what: "intents",
                detail: e.to_string(),
            })?;
        intents.push(sub.map(move |m| (role, m)));
    }
    let mut beats = client
        .queue_subscribe(format!("{prefix}.beat.*"), group)
        .await
        .map_err(|e| NatsError::Subscribe {
            what: "heartbeats",
            detail: e.to_string(),
        })?;
    let (count, ttl) = {
        let m = mirror.lock().unwrap();
        (m.decisions.len(), buckets.ttl)
    };
    let mut w = Worker {
        policy: Policy::new(options.policy.clone()),
        options,
        client: client.clone(),
        buckets,
        watched,
        bucket_at: None,
        writer: format!("{:016x}", jitter::random()),
        mirror,
        node_writes: HashMap::new(),
    };
    w.static_allows().await;
    info!(
        network = %w.options.nats.describe(),
        bucket = %w.buckets.decisions_name,
        decisions = count,
        per_key_ttl = ttl,
        "palisade policy worker running"
    );
    let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
    loop {
        tokio::select! {
            Some((role, msg)) = intents.next() => w.intents(&client, role, msg).await,
            Some(msg) = beats.next() => w.beat(msg).await,
            _ = maintain.tick() => {
                w.maintain().await;
                w.snapshot().await;
                w.announce_head().await;
            }
            _ = &mut stop => break,
        }
    }
    for t in watchers {
        t.abort();
    }
    let _ = client.drain().await;
    info!("palisade policy worker stopped");
    Ok(())
}

/// Keeps the mirror of one bucket current; signals `ready` once it holds
/// everything the bucket held when it began.
async fn mirror_bucket(
    kv: Store,
    js: async_nats::jetstream::Context,
    is_decisions: bool,
    mirror: Arc<Mutex<Mirror>>,
    ready: tokio::sync::oneshot::Sender<()>,
    connections: Arc<std::sync::atomic::AtomicU64>,
    watched: Option<Arc<AtomicU64>>,
) {
    let mut ready = Some(ready);
    let stream_name = format!("KV_{}", kv.name);
    loop {
        let messages = match js.get_stream(&stream_name).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(1),
            Err(_) => 1,
        };
        if messages == 0
            && let Some(r) = ready.take()
        {
            let _ = r.send(());
        }
        let connected = connections.load(std::sync::atomic::Ordering::SeqCst);
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(bucket = %kv.name, error = %e, "cannot watch a bucket; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = if ready.is_some() {
                match tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        // Values may have expired since they were counted.
                        let empty = match js.get_stream(&stream_name).await {
                            Ok(mut s) => s.info().await.is_ok_and(|i| i.state.messages == 0),
                            Err(_) => false,
                        };
                        if empty && let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                }
            } else {
                match tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        // After a reconnection, read the bucket again: the
                        // watch's consumer may have died with its server.
                        if connections.load(std::sync::atomic::Ordering::SeqCst) != connected {
                            break;
                        }
                        continue;
                    }
                }
            };
            let Some(Ok(e)) = next else { break };
            apply_entry(&mirror, is_decisions, &e);
            if let Some(w) = &watched {
                w.fetch_max(e.revision, Ordering::SeqCst);
            }
            if e.delta == 0
                && let Some(r) = ready.take()
            {
                let _ = r.send(());
            }
        }
        warn!(bucket = %kv.name, "the bucket watch ended; watching again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn apply_entry(mirror: &Mutex<Mirror>, is_decisions: bool, e: &Entry) {
    let live = e.operation == Operation::Put;
    apply_value(mirror, is_decisions, &e.key, e.revision, live, &e.value);
}

/// Takes a key's message at revision `rev` into the mirror: its value, or
/// its removal when it is not `live` (a delete or purge marker).
fn apply_value(
    mirror: &Mutex<Mirror>,
    is_decisions: bool,
    key: &str,
    rev: u64,
    live: bool,
    value: &[u8],
) {
    let mut m = mirror.lock().unwrap();
    if is_decisions {
        let value = live
            .then(|| serde_json::from_slice::<Decision>(value).ok())
            .flatten();
        m.set_decision(key, rev, value);
    } else {
        m.set_state(key, rev, live.then(|| value.to_vec()));
    }
}

impl Worker {
    async fn intents(&mut self, client: &async_nats::Client, role: Role, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let name = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let answer = match (
            palisade_policy::check_node_name(&name),
            serde_json::from_slice::<BusRequest>(&msg.payload),
        ) {
            (Err(e), _) => BusReply::Error(e.to_string()),
            (Ok(()), Ok(req)) => {
                let node = Node::member(name.clone(), req.group.clone(), role);
                match self.decide(&node, &req).await {
                    Ok(r) => BusReply::Results(r),
                    Err(e) => {
                        warn!(node = %name, error = %e, "could not apply a node's intents");
                        BusReply::Error(e.to_string())
                    }
                }
            }
            (Ok(()), Err(e)) => BusReply::Error(format!("an unreadable request: {e}")),
        };
        let body = serde_json::to_vec(&answer).expect("a reply serializes");
        if let Err(e) = client.publish(reply, body.into()).await {
            debug!(error = %e, "could not answer a node");
        }
    }

    /// Applies one node's batch (its declared address first, so its allow
    /// is in place before its intents are decided), deciding again when
    /// another worker changed what it read.
    async fn decide(
        &mut self,
        node: &Node,
        req: &BusRequest,
    ) -> Result<Vec<IntentResult>, NatsError> {
        // Rate limits are counted once per batch, not once per attempt.
        let mut admitted = None;
        // Keys of lifts already read from the bucket's leader.
        let mut verified = HashSet::new();
        for attempt in 0..ATTEMPTS {
            let now = Timestamp::now();
            let (results, writes) = {
                let mirror = self.mirror.lock().unwrap();
                let mut ledger = MirrorLedger::new(&mirror, now);
                if let Some(addr) = req.address.filter(|_| node.role != Role::Reporter) {
                    let Ok(_) = self.policy.node_address(
                        &mut ledger,
                        &node.name,
                        node.group.as_deref(),
                        addr,
                        now,
                    );
                }
                let Ok(batch) = self.policy.apply_intents(
                    &mut ledger,
                    node,
                    &req.envelopes,
                    now,
                    &mut admitted,
                );
                (batch.results, ledger.into_writes())
            };
            if self
                .nothing_to_lift_was_stale(&req.envelopes, &results, &mut verified)
                .await
            {
                debug!(
                    attempt,
                    "a lift found nothing another worker had just written; deciding again"
                );
                continue;
            }
            match self.commit(writes, now).await {
                Ok(()) => {
                    for (env, r) in req.envelopes.iter().zip(&results) {
                        debug!(node = %node.name, intent = ?env.intent, outcome = ?r.outcome, "decided");
                    }
                    return Ok(results);
                }
                Err(Failed::Conflict(key)) => {
                    debug!(
                        key,
                        attempt, "another worker changed a key first; deciding again"
                    );
                }
                Err(Failed::Fatal(e)) => return Err(e),
            }
        }
        Err(NatsError::KeptChanging)
    }

    /// Whether an unban or unallow the policy answered "nothing to lift"
    /// lifts a decision the bucket holds after all. A decision another
    /// worker wrote a moment ago may not have reached this worker's mirror
    /// (its watch lags, or is broken for a while after a server died), and
    /// such an answer writes nothing, so no conditional write would catch
    /// the stale read: the ban would stay in the network while the node
    /// that lifted it dropped it. Each such key is read from the bucket's
    /// leader once per batch, and only for intents the rate limits
    /// admitted: a batch of lifts of nothing costs one read each, once.
    async fn nothing_to_lift_was_stale(
        &self,
        envelopes: &[palisade_wire::Envelope],
        results: &[IntentResult],
        verified: &mut HashSet<String>,
    ) -> bool {
        let mut stale = false;
        for (env, r) in envelopes.iter().zip(results) {
            if r.outcome != IntentOutcome::NotFound {
                continue;
            }
            let key = match &env.intent {
                Intent::Unban { target, .. } => keys::decision_key(Action::Ban, target, None),
                Intent::Unallow { target, group, .. } => {
                    keys::decision_key(Action::Allow, target, group.as_deref())
                }
                _ => continue,
            };
            if !verified.insert(key.clone()) {
                continue;
            }
            self.refresh(&self.buckets.decisions_name, &key).await;
            stale |= self.mirror.lock().unwrap().decision(&key).is_some();
        }
        stale
    }

    /// Writes staged changes, each conditional on the revision read.
    async fn commit(&self, writes: Writes, now: Timestamp) -> Result<(), Failed> {
        // Every write is sent before any acknowledgement is awaited (the
        // keys are distinct), decisions first: they are what nodes wait
        // for, and the batch costs about one round trip, not one per key.
        enum Value {
            Decision(Option<Box<Decision>>),
            State(Option<Vec<u8>>),
        }
        struct Pending {
            bucket: String,
            key: String,
            value: Value,
            payload: Option<Vec<u8>>,
            expected: u64,
            ttl: Option<u64>,
            ack: Option<async_nats::jetstream::context::PublishAckFuture>,
        }
        let mut pending = Vec::with_capacity(writes.decisions.len() + writes.state.len());
        for (key, value) in writes.decisions {
            let expected = self.mirror.lock().unwrap().decision_rev(&key);
            let payload = value
                .as_ref()
                .map(|d| serde_json::to_vec(d).expect("a decision serializes"));
            let ttl = value
                .as_ref()
                .and_then(|d| d.expires)
                .filter(|_| self.buckets.ttl)
                .map(|e| {
                    let ms = e.as_millis().saturating_sub(now.as_millis());
                    ms.div_ceil(1000).max(1)
                });
            pending.push(Pending {
                bucket: self.buckets.decisions_name.clone(),
                key,
                value: Value::Decision(value.map(Box::new)),
                payload,
                expected,
                ttl,
                ack: None,
            });
        }
        for (key, value) in writes.state {
            let expected = self.mirror.lock().unwrap().state_rev(&key);
            pending.push(Pending {
                bucket: self.buckets.state_name.clone(),
                key,
                payload: value.clone(),
                value: Value::State(value),
                expected,
                ttl: None,
                ack: None,
            });
        }
        for p in &mut pending {
            let (subject, headers) = write_headers(
                &p.bucket,
                &p.key,
                p.payload.is_none(),
                p.expected,
                p.ttl,
                false,
            );
            let body: bytes::Bytes = p.payload.clone().unwrap_or_default().into();
            // A send that fails is retried below, one by one.
            p.ack = self
                .buckets
                .js
                .publish_with_headers(subject, headers, body)
                .await
                .ok();
        }
        let mut conflict = None;
        for p in pending {
            let acked = match p.ack {
                Some(ack) => ack.await.map_err(|e| e.kind()),
                None => Err(PublishErrorKind::BrokenPipe),
            };
            let rev = match acked {
                Ok(a) => a.sequence,
                Err(PublishErrorKind::WrongLastSequence) => {
                    self.refresh(&p.bucket, &p.key).await;
                    conflict = Some(p.key);
                    continue;
                }
                // Anything else once more, one by one, waiting out a bucket
                // without a leader.
                Err(_) => match self
                    .write(&p.bucket, &p.key, p.payload, p.expected, p.ttl, false)
                    .await
                {
                    Ok(rev) => rev,
                    Err(Failed::Conflict(k)) => {
                        conflict = Some(k);
                        continue;
                    }
                    Err(fatal) => return Err(fatal),
                },
            };
            let mut m = self.mirror.lock().unwrap();
            match p.value {
                Value::Decision(v) => m.set_decision(&p.key, rev, v.map(|d| *d)),
                Value::State(v) => m.set_state(&p.key, rev, v),
            }
        }
        match conflict {
            Some(k) => Err(Failed::Conflict(k)),
            None => Ok(()),
        }
    }

    /// Publishes one KV operation with `expected` as the key's last
    /// revision; returns the new revision. A conflict refreshes the key.
    async fn write(
        &self,
        bucket: &str,
        key: &str,
        value: Option<Vec<u8>>,
        expected: u64,
        ttl_secs: Option<u64>,
        purge: bool,
    ) -> Result<u64, Failed> {
        let (subject, headers) =
            write_headers(bucket, key, value.is_none(), expected, ttl_secs, purge);
        let payload: bytes::Bytes = value.unwrap_or_default().into();
        let started = Instant::now();
        loop {
            let sent = self
                .buckets
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            let ack = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(a) => return Ok(a.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.refresh(bucket, key).await;
                    return Err(Failed::Conflict(key.to_string()));
                }
                // The bucket has no leader for a moment (a server died and
                // its replicas elect another): wait for it rather than
                // sending nodes away.
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::StreamNotFound
                            | PublishErrorKind::TimedOut
                            | PublishErrorKind::BrokenPipe
                    ) && started.elapsed() < TRANSIENT =>
                {
                    debug!(key, error = %e, "the bucket is not writable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Failed::Fatal(NatsError::Write {
                        key: key.to_string(),
                        bucket: bucket.to_string(),
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }

    /// Reads a key again (after a conflict, or to check a lift of
    /// nothing), from its bucket's leader: a direct get may be answered by
    /// a replica that has not stored the latest write yet.
    async fn refresh(&self, bucket: &str, key: &str) {
        let is_decisions = bucket == self.buckets.decisions_name;
        let kv = match (&self.buckets.state, is_decisions) {
            (Some(state), false) => state,
            _ => &self.buckets.decisions,
        };
        let subject = direct::kv_subject(bucket, key);
        match kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let removed =
                    direct::is_removal(m.headers.get(direct::KV_OPERATION).map(|v| v.as_str()));
                apply_value(
                    &self.mirror,
                    is_decisions,
                    key,
                    m.sequence,
                    !removed,
                    &m.payload,
                );
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                let mut m = self.mirror.lock().unwrap();
                if is_decisions {
                    m.decisions.remove(key);
                } else {
                    m.state.remove(key);
                }
            }
            Err(e) => warn!(key, error = %e, "cannot read a key again"),
        }
    }

    /// A node's heartbeat: its record, and the automatic allow of its
    /// address where the policy permits it.
    async fn beat(&mut self, msg: async_nats::Message) {
        let name = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        if palisade_policy::check_node_name(&name).is_err() {
            return;
        }
        let Ok(beat) = serde_json::from_slice::<NodeBeat>(&msg.payload) else {
            return;
        };
        for _ in 0..ATTEMPTS {
            let now = Timestamp::now();
            let writes = {
                let mirror = self.mirror.lock().unwrap();
                let mut ledger = MirrorLedger::new(&mirror, now);
                let record = palisade_policy::Ledger::node(&ledger, &name)
                    .unwrap_or_default()
                    .unwrap_or_else(|| NodeRecord::new(&name, beat.group.clone()));
                let moved = beat.address.is_some_and(|a| {
                    record.address != Some(palisade_model::net::canonical_addr(a))
                });
                let due = self
                    .node_writes
                    .get(&name)
                    .is_none_or(|t| t.elapsed() >= NODE_WRITE_EVERY);
                if !moved && !due {
                    return;
                }
                if let Some(addr) = beat.address {
                    let Ok(_) = self.policy.node_address(
                        &mut ledger,
                        &name,
                        beat.group.as_deref(),
                        addr,
                        now,
                    );
                }
                let mut record = palisade_policy::Ledger::node(&ledger, &name)
                    .unwrap_or_default()
                    .unwrap_or(record);
                record.last_seen = Some(now);
                record.cursor = beat.beat.cursor;
                record.bans = beat.beat.bans;
                record.version = Some(beat.beat.version.clone());
                record.group = beat.group.clone();
                let Ok(()) = palisade_policy::Ledger::set_node(&mut ledger, &record);
                ledger.into_writes()
            };
            match self.commit(writes, now).await {
                Ok(()) => {
                    self.node_writes.insert(name, Instant::now());
                    return;
                }
                Err(Failed::Conflict(_)) => continue,
                Err(Failed::Fatal(e)) => {
                    warn!(node = %name, error = %e, "cannot record a node's heartbeat");
                    return;
                }
            }
        }
    }

    /// Writes the configuration's allow entries and the brokers' addresses,
    /// and removes those no longer configured (every worker should have
    /// the same).
    async fn static_allows(&mut self) {
        for _ in 0..ATTEMPTS {
            let now = Timestamp::now();
            let writes = {
                let mirror = self.mirror.lock().unwrap();
                let mut ledger = MirrorLedger::new(&mirror, now);
                let Ok(()) = self
                    .policy
                    .sync_static_allows(&mut ledger, &self.options.allows, now);
                ledger.into_writes()
            };
            if writes.is_empty() {
                return;
            }
            match self.commit(writes, now).await {
                Ok(()) => return,
                Err(Failed::Conflict(_)) => continue,
                Err(Failed::Fatal(e)) => {
                    warn!(error = %e, "cannot write the configured allow entries");
                    return;
                }
            }
        }
    }

    /// Writes a new decisions snapshot when the current one is behind the
    /// bucket (or old: its parts must not age out of their stream).
    async fn snapshot(&mut self) {
        let rev = self.watched.load(Ordering::SeqCst);
        let head = match snapshot::head(&self.client, &self.options.nats).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "cannot read the decisions snapshot's head; writing a new one");
                None
            }
        };
        // A head claiming a revision the bucket has not reached is not
        // one a worker wrote: replace it (agents refuse it meanwhile).
        let bucket_at = crate::streams::stream_state(
            &self.client,
            &self.options.nats.api_prefix(),
            &format!("KV_{}", self.buckets.decisions_name),
        )
        .await
        .ok()
        .flatten()
        .map(|s| s.last_seq);
        self.bucket_at = bucket_at;
        let bucket_at = bucket_at.unwrap_or(u64::MAX);
        let now = Timestamp::now();
        let due = head.as_ref().is_none_or(|h| {
            h.rev < rev
                || h.rev > bucket_at
                || now.as_millis().saturating_sub(h.written) >= snapshot::REFRESH.as_millis() as u64
        });
        if let Some(h) = head.as_ref().filter(|h| h.rev > bucket_at) {
            warn!(
                claimed = h.rev,
                bucket_at,
                "the decisions snapshot claims a revision the bucket has not reached; writing a true one"
            );
        }
        if !due {
            return;
        }
        let mut entries: Vec<(String, Decision)> = {
            let m = self.mirror.lock().unwrap();
            m.decisions
                .iter()
                .filter_map(|(k, s)| {
                    s.value
                        .as_ref()
                        .filter(|d| d.is_active(now))
                        .map(|d| (k.clone(), d.clone()))
                })
                .collect()
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let started = Instant::now();
        match snapshot::write(
            &self.buckets.js,
            &self.options.nats,
            &self.writer,
            rev,
            entries,
        )
        .await
        {
            Ok(h) => debug!(
                rev,
                decisions = h.decisions,
                parts = h.parts,
                took_ms = started.elapsed().as_millis() as u64,
                "wrote the decisions snapshot"
            ),
            Err(e) => warn!(error = %e, "cannot write the decisions snapshot"),
        }
    }

    /// Announces the newest decisions revision this worker knows the
    /// bucket holds (its watch's, its own writes', the bucket's last
    /// sequence). A republished change can be lost without the agent's
    /// connection dropping (a leaf node's uplink was cut, the server that
    /// republished it died): an agent behind this revision then reads what
    /// it missed from the bucket within one `MAINTAIN_EVERY` instead of at
    /// its next probe.
    async fn announce_head(&self) {
        // Not only the watch's position: after a cluster server died the
        // watch may stay broken for a while (its consumer cannot be made
        // again) while writes go through, and agents that missed those
        // writes would then wait for their probe.
        // (The mirror has seen every revision the watch brought.)
        let seen = self.mirror.lock().unwrap().decisions_seen;
        let rev = seen.max(self.bucket_at.unwrap_or(0));
        if rev == 0 {
            return;
        }
        let subject = self.options.nats.head_subject();
        if let Err(e) = self.client.publish(subject, rev.to_string().into()).await {
            debug!(error = %e, "cannot announce the decisions bucket's revision");
        }
    }

    /// Purges expired decisions (conditional on their revision) and
    /// forgets stale offender and quorum records.
    async fn maintain(&mut self) {
        let now = Timestamp::now();
        let (expired, stale) = {
            let m = self.mirror.lock().unwrap();
            let expired: Vec<(String, u64)> = m
                .decisions
                .iter()
                .filter(|(_, s)| s.value.as_ref().is_some_and(|d| !d.is_active(now)))
                .map(|(k, s)| (k.clone(), s.rev))
                .collect();
            let forget = self
                .policy
                .config()
                .escalation
                .as_ref()
                .map_or(Duration::from_secs(30 * 86_400), |e| e.forget_after);
            let window = self.policy.config().quorum_window;
            let stale: Vec<(String, u64)> = m
                .state
                .iter()
                .filter(|(k, s)| {
                    let Some(v) = &s.value else { return false };
                    if k.starts_with("offender.") {
                        serde_json::from_slice::<palisade_policy::Offender>(v)
                            .is_ok_and(|o| now.since(o.last) > forget)
                    } else if k.starts_with("quorum.") {
                        serde_json::from_slice::<Vec<palisade_policy::Report>>(v)
                            .is_ok_and(|r| r.iter().all(|r| now.since(r.at) > window))
                    } else {
                        false
                    }
                })
                .map(|(k, s)| (k.clone(), s.rev))
                .collect();
            (expired, stale)
        };
        let mut purged = 0;
        for (key, rev) in expired {
            match self
                .write(&self.buckets.decisions_name, &key, None, rev, None, true)
                .await
            {
                Ok(new) => {
                    self.mirror.lock().unwrap().set_decision(&key, new, None);
                    purged += 1;
                }
                Err(Failed::Conflict(_)) => {}
                Err(Failed::Fatal(e)) => {
                    warn!(error = %e, "cannot purge expired decisions");
                    break;
                }
            }
        }
        for (key, rev) in stale {
            if let Ok(new) = self
                .write(&self.buckets.state_name, &key, None, rev, None, true)
                .await
            {
                self.mirror.lock().unwrap().set_state(&key, new, None);
            }
        }
        if purged > 0 {
            info!(purged, "purged expired decisions from the bucket");
        }
    }
}

/// The subject and headers of a conditional KV write (a removal when
/// `remove`: a delete marker, or a purge).
fn write_headers(
    bucket: &str,
    key: &str,
    remove: bool,
    expected: u64,
    ttl_secs: Option<u64>,
    purge: bool,
) -> (String, HeaderMap) {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    if let Some(t) = ttl_secs {
        headers.insert("Nats-TTL", t.to_string().as_str());
    }
    if remove {
        if purge {
            headers.insert(direct::KV_OPERATION, "PURGE");
            headers.insert("Nats-Rollup", "sub");
        } else {
            headers.insert(direct::KV_OPERATION, "DEL");
        }
    }
    (direct::kv_subject(bucket, key), headers)
}

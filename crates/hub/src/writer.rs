//! The one thread that changes the hub's decisions.
//!
//! Everything that changes decisions or node records comes here as a
//! [`Job`]. Jobs that arrive together are applied in one store transaction
//! (one fsync for many reports: group commit), then their events go to the
//! live streams in order, then each job gets its answer. So an answer
//! always means "on disk", and the stream order is the commit order.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};
use palisade_policy::{Ledger, Node, NodeRecord, Policy, Role, StaticAllow};
use palisade_store::{Store, StoreError};
use palisade_wire::{Envelope, Intent, IntentOutcome, IntentResult};
use tokio::sync::{broadcast, oneshot};
use tracing::{error, info, warn};

use crate::activity::Activity;
use crate::ledger::{LiveEvent, StoreLedger};
use crate::metrics::Metrics;
use crate::tables;

/// Most jobs applied in one transaction.
const GROUP_COMMIT: usize = 256;
/// How often expired decisions and old events are cleaned up.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);

/// Why the writer could not answer a job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    /// The writer has stopped (the hub is shutting down).
    #[error("the hub is shutting down; send this again once it is back")]
    Stopping,
    /// The store refused the transaction the job was part of; nothing of it
    /// was kept.
    #[error(
        "the hub could not store this ({0}); nothing of it was kept: check the hub's log and the disk under its state directory, then send it again"
    )]
    Store(Arc<StoreError>),
    /// The job was applied but produced no answer (a bug).
    #[error("the hub applied this but gave no answer; report this with the hub's log")]
    NoAnswer,
}

/// Where the writer answers a node's intents.
pub type IntentReply = oneshot::Sender<Result<Vec<IntentResult>, WriterError>>;

/// What an administrator asks from the dashboard.
#[derive(Debug, Clone)]
pub enum OperatorAction {
    /// Unban, allow or unallow, decided by the policy like a node's intent.
    Intent(Intent),
    /// Make an active ban last `by` longer (from now if it would already
    /// have ended), broadcast at once (like a repeated ban by hand, never
    /// suppressed).
    Extend {
        /// The banned network.
        target: Net,
        /// How much longer.
        by: Span,
    },
}

/// The node name dashboard actions are made on.
pub const DASHBOARD_NODE: &str = "dashboard";

/// Work for the writer.
pub enum Job {
    /// Intents from a node, in order; the answer has one result per intent
    /// applied (fewer than sent when the node is over its rate limit).
    Intents {
        /// Who sent them (name, group, role).
        node: Node,
        /// The intents.
        envelopes: Vec<Envelope>,
        /// Where the results go.
        reply: IntentReply,
    },
    /// A node was seen at an address: the policy allows it automatically
    /// where that is safe (pinned to its first address).
    NodeAddress {
        /// The node's name.
        name: String,
        /// Its group.
        group: Option<String>,
        /// The address it was seen at.
        address: IpAddr,
    },
    /// A node's credentials were revoked: its automatic allow goes.
    NodeGone {
        /// The node's name.
        name: String,
    },
    /// Live node status (heartbeats) to keep.
    PersistNodes(Vec<NodeRecord>),
    /// The configuration's allow entries (the hub's own addresses come
    /// from the policy's configuration).
    StaticAllows(Vec<StaticAllow>),
    /// An administrator's action from the dashboard.
    Operator {
        /// The administrator.
        actor: String,
        /// What they asked.
        action: OperatorAction,
        /// Where the result goes.
        reply: oneshot::Sender<Result<IntentResult, WriterError>>,
    },
    /// A feed's new list: it replaces the feed's entries, network-wide.
    Feed {
        /// The feed's name.
        name: String,
        /// Its new list.
        entries: palisade_feed::List,
        /// Where the counts of what changed go.
        reply: oneshot::Sender<Result<palisade_control::FeedApplied, WriterError>>,
    },
    /// The feeds still configured: the others' entries go.
    RetireFeeds(Vec<String>),
    /// Finish what came before, then stop.
    Stop,
}

/// What a job gives back once committed.
enum Done {
    Nothing,
    Intents(Vec<IntentResult>),
    Feed(palisade_control::FeedApplied),
}

/// Sends jobs to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

impl WriterHandle {
    /// Queues `job` for the writer.
    pub fn send(&self, job: Job) -> Result<(), WriterError> {
        self.tx.send(job).map_err(|_| WriterError::Stopping)
    }
}

/// What the writer is started with.
pub struct WriterOptions {
    /// The hub's store.
    pub store: Arc<Store>,
    /// The policy every intent goes through.
    pub policy: Policy,
    /// Where committed stream events go to the open streams.
    pub live: broadcast::Sender<LiveEvent>,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// Events kept for agents that reconnect; older ones mean a snapshot.
    pub events_kept: u64,
    /// The dashboard's counters of new bans.
    pub activity: Arc<Activity>,
}

/// Starts the writer thread.
pub fn spawn(setup: WriterOptions) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("palisade-hub-writer".into())
        .spawn(move || {
            let mut w = Writer { setup };
            let mut last_maintain = std::time::Instant::now();
            loop {
                match rx.recv_timeout(MAINTAIN_EVERY) {
                    Ok(first) => {
                        let mut jobs = vec![first];
                        jobs.extend(rx.try_iter().take(GROUP_COMMIT - 1));
                        let stop = jobs.iter().any(|j| matches!(j, Job::Stop));
                        jobs.retain(|j| !matches!(j, Job::Stop));
                        if !jobs.is_empty() {
                            w.apply(jobs);
                        }
                        if stop {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                if last_maintain.elapsed() >= MAINTAIN_EVERY {
                    w.maintain();
                    last_maintain = std::time::Instant::now();
                }
            }
        })
        .expect("spawn the hub writer");
    (WriterHandle { tx }, thread)
}

struct Writer {
    setup: WriterOptions,
}

impl Writer {
    fn apply(&mut self, jobs: Vec<Job>) {
        let now = Timestamp::now();
        let policy = &mut self.setup.policy;
        let metrics = &self.setup.metrics;
        let result = self.setup.store.write(|w| {
            let mut ledger = StoreLedger::new(w, now);
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                results.push(apply_job(policy, metrics, &mut ledger, job, now)?);
            }
            Ok((results, ledger.events, ledger.new_bans))
        });
        match result {
            Ok((results, events, new_bans)) => {
                tracing::debug!(jobs = results.len(), events = events.len(), "committed");
                for (rule, target) in &new_bans {
                    self.setup.activity.record(rule.as_deref(), target, now);
                }
                for e in events {
                    // No receivers is fine: nobody is connected.
                    let _ = self.setup.live.send(e);
                }
                for (job, r) in jobs.into_iter().zip(results) {
                    match (job, r) {
                        (Job::Intents { reply, .. }, Done::Intents(r)) => {
                            let _ = reply.send(Ok(r));
                        }
                        (Job::Operator { reply, .. }, Done::Intents(mut r)) => {
                            let _ = reply.send(r.pop().ok_or(WriterError::NoAnswer));
                        }
                        (Job::Feed { reply, name, .. }, Done::Feed(a)) => {
                            info!(feed = %name, total = a.total, added = a.added, removed = a.removed, refused = a.refused, kept = a.kept, "feed applied");
                            let _ = reply.send(Ok(a));
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "the hub could not store a change");
                metrics.store_errors.inc();
                let e = Arc::new(e);
                for job in jobs {
                    let why = WriterError::Store(e.clone());
                    match job {
                        Job::Intents { reply, .. } => {
                            let _ = reply.send(Err(why));
                        }
                        Job::Operator { reply, .. } => {
                            let _ = reply.send(Err(why));
                        }
                        Job::Feed { reply, .. } => {
                            let _ = reply.send(Err(why));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Prunes expired decisions (agents expire them by themselves, so no
    /// events), old stream events, and stale quorum and offender records.
    fn maintain(&mut self) {
        let now = Timestamp::now();
        let kept = self.setup.events_kept;
        let r = self.setup.store.write(|w| {
            let mut pruned = 0;
            loop {
                let gone = w.take_expired(now, 10_000)?.len();
                pruned += gone;
                if gone < 10_000 {
                    break;
                }
            }
            let next = w.queue_next(tables::EVENTS)?;
            if next > kept + 1 {
                w.drop_through(tables::EVENTS, next - kept - 1)?;
            }
            Ok(pruned)
        });
        match r {
            Ok(n) if n > 0 => info!(expired = n, "pruned expired decisions"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "hub maintenance failed"),
        }
    }
}

/// Applies one job inside the writer's transaction; intents return their
/// results.
fn apply_job(
    policy: &mut Policy,
    metrics: &Metrics,
    ledger: &mut StoreLedger<'_, '_>,
    job: &Job,
    now: Timestamp,
) -> Result<Done, StoreError> {
    Ok(match job {
        Job::Feed { name, entries, .. } => {
            Done::Feed(replace_feed(policy, ledger, name, entries, now)?)
        }
        Job::RetireFeeds(keep) => {
            retire_feeds(policy, ledger, keep, now)?;
            Done::Nothing
        }
        Job::Intents {
            node, envelopes, ..
        } => Done::Intents(intents(policy, metrics, ledger, node, envelopes, now)?),
        Job::NodeAddress {
            name,
            group,
            address,
        } => {
            policy.node_address(ledger, name, group.as_deref(), *address, now)?;
            Done::Nothing
        }
        Job::NodeGone { name } => {
            policy.node_gone(ledger, name)?;
            Done::Nothing
        }
        Job::PersistNodes(records) => {
            persist_nodes(ledger, records)?;
            Done::Nothing
        }
        Job::Operator { actor, action, .. } => {
            Done::Intents(vec![operator(policy, metrics, ledger, actor, action, now)?])
        }
        Job::StaticAllows(entries) => {
            policy.sync_static_allows(ledger, entries, now)?;
            Done::Nothing
        }
        Job::Stop => Done::Nothing,
    })
}

/// A node's intents, through the policy; counted for the metrics.
fn intents(
    policy: &mut Policy,
    metrics: &Metrics,
    ledger: &mut StoreLedger<'_, '_>,
    node: &Node,
    envelopes: &[Envelope],
    now: Timestamp,
) -> Result<Vec<IntentResult>, StoreError> {
    let batch = policy.apply_intents(ledger, node, envelopes, now, &mut None)?;
    if let Some(limit) = batch.held_back {
        metrics.rate_limited.inc();
        tracing::debug!(node = %node.name, limit, "a node is over its rate limit");
    }
    for (env, r) in envelopes
        .iter()
        .zip(&batch.results)
        .filter(|(_, r)| r.outcome != IntentOutcome::Duplicate)
    {
        metrics.intent(&env.intent, r.outcome);
    }
    Ok(batch.results)
}

/// An administrator's action: an intent decided by the policy as the
/// dashboard's node, or an extension of a ban.
fn operator(
    policy: &mut Policy,
    metrics: &Metrics,
    ledger: &mut StoreLedger<'_, '_>,
    actor: &str,
    action: &OperatorAction,
    now: Timestamp,
) -> Result<IntentResult, StoreError> {
    match action {
        OperatorAction::Intent(intent) => {
            let node = Node::internal(DASHBOARD_NODE, Role::Operator);
            let env = Envelope {
                id: 0,
                at: now,
                intent: intent.clone(),
            };
            let r = policy.decide(ledger, &node, &env, now)?;
            metrics.intent(&env.intent, r.outcome);
            Ok(r)
        }
        OperatorAction::Extend { target, by } => extend(ledger, actor, target, *by, now),
    }
}

/// Keeps the nodes' live status (last seen, cursor, bans, version, group)
/// in their stored records.
fn persist_nodes(
    ledger: &mut StoreLedger<'_, '_>,
    records: &[NodeRecord],
) -> Result<(), StoreError> {
    for live in records {
        let mut stored = ledger.node(&live.name)?.unwrap_or_else(|| live.clone());
        stored.last_seen = live.last_seen;
        stored.cursor = live.cursor;
        stored.bans = live.bans;
        stored.version = live.version.clone();
        stored.group = live.group.clone();
        ledger.set_node(&stored)?;
    }
    Ok(())
}

/// Removes the entries of every feed no longer configured (`keep` lists
/// those that are).
fn retire_feeds(
    policy: &Policy,
    ledger: &mut StoreLedger<'_, '_>,
    keep: &[String],
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut gone = std::collections::HashSet::new();
    ledger.w.each(Action::Ban, |d| {
        if let Some(name) = palisade_feed::owner(&d)
            && !keep.iter().any(|k| k == name)
        {
            gone.insert(name.to_string());
        }
        Ok(())
    })?;
    for name in gone {
        info!(feed = %name, "the feed is no longer configured; removing its entries");
        replace_feed(policy, ledger, &name, &palisade_feed::List::default(), now)?;
    }
    Ok(())
}

/// Extends an active ban by `by`, keeping who made it and noting who
/// extended it.
fn extend(
    ledger: &mut StoreLedger<'_, '_>,
    actor: &str,
    target: &Net,
    by: Span,
    now: Timestamp,
) -> Result<IntentResult, StoreError> {
    let answer = |outcome, reason: Option<String>, expires| IntentResult {
        id: 0,
        outcome,
        reason,
        expires,
    };
    let Some(mut d) = ledger
        .get(Action::Ban, target, None)?
        .filter(|d| d.is_active(now))
    else {
        return Ok(answer(
            IntentOutcome::NotFound,
            Some(format!("{target} is not banned")),
            None,
        ));
    };
    d.expires = match (d.expires, by) {
        (None, _) | (_, Span::Forever) => None,
        (Some(e), Span::For(len)) => Some(e.max(now).saturating_add(len)),
    };
    d.updated = now;
    d.hits = d.hits.saturating_add(1);
    let fact = format!("extended by {by} by {actor} on the {DASHBOARD_NODE}");
    d.evidence.push(palisade_model::decision::clean_text(&fact));
    let excess = d
        .evidence
        .len()
        .saturating_sub(palisade_model::decision::MAX_EVIDENCE_LINES);
    d.evidence.drain(..excess);
    ledger.put(&d)?;
    info!(target = %target, by = %by, admin = %actor, "ban extended from the dashboard");
    Ok(answer(IntentOutcome::Accepted, None, d.expires))
}

/// Makes `list` the feed's whole set of bans, network-wide: removes
/// what it no longer lists, adds the new entries (allow entries and the
/// guard still win; an address banned for another reason is left as it
/// is), gives an entry whose rule changed its new rule, all in the
/// writer's one transaction.
fn replace_feed(
    policy: &Policy,
    ledger: &mut StoreLedger<'_, '_>,
    name: &str,
    list: &palisade_feed::List,
    now: Timestamp,
) -> Result<palisade_control::FeedApplied, StoreError> {
    let feed_rule = palisade_feed::rule(name);
    // The feed's bans, each with whether its rule is still the list's.
    let mut current = std::collections::HashMap::new();
    ledger.w.each(Action::Ban, |d| {
        if palisade_feed::owner(&d) == Some(name) {
            let same = d.rule.as_deref() == Some(list.rule_of(&d.target, &feed_rule));
            current.insert(d.target, same);
        }
        Ok(())
    })?;
    let wanted: std::collections::HashSet<Net> = list.nets.iter().copied().collect();
    let mut applied = palisade_control::FeedApplied {
        total: wanted.len() as u64,
        ..Default::default()
    };
    for n in current.keys().filter(|n| !wanted.contains(n)) {
        ledger.remove(Action::Ban, n, None)?;
        applied.removed += 1;
    }
    for n in &wanted {
        let rule = list.rule_of(n, &feed_rule);
        if let Some(&same) = current.get(n) {
            if !same && let Some(d) = ledger.get(Action::Ban, n, None)? {
                ledger.put(&d.with_rule(rule))?;
            }
            continue;
        }
        if policy.refusal(ledger, n)?.is_some() {
            applied.refused += 1;
            continue;
        }
        if ledger
            .get(Action::Ban, n, None)?
            .is_some_and(|d| d.is_active(now))
        {
            applied.kept += 1;
            continue;
        }
        let d = Decision::new(
            Action::Ban,
            *n,
            now,
            Span::Forever,
            Origin::new("hub", Source::Feed).with_actor(name),
        )
        .with_rule(rule)
        .with_reason(format!("listed by the feed {name}"))
        .with_scope(Scope::Network);
        ledger.put(&d)?;
        applied.added += 1;
    }
    Ok(applied)
}

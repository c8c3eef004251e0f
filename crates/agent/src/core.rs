//! The agent's decision logic, free of threads and sockets.
//!
//! [`Core`] owns the store, the enforcers and the in-memory allowlist, and
//! turns requests into decisions: the guard refuses what must never be
//! banned, repeats refresh instead of duplicating, an allow shadows the bans
//! it covers (they stay, and apply again when it goes). Every mutation goes to the kernel first (protection as early as
//! possible), then to the store (durably) before it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use palisade_control::{
    AllowRequest, BanRequest, EnforcerObject, EnforcerStatus, Outcome, OutcomeKind, Summary,
    TargetsRequest,
};
use palisade_detect::{Event, Trust};
use palisade_enforce::{Change, EnforceError, Enforcer, Entry};
use palisade_model::{
    Action, Decision, Guard, Net, NetMap, Origin, Scope, Source, Span, Timestamp,
};
use palisade_store::{Store, StoreError};
use palisade_wire::Intent;
use tracing::{info, warn};

/// How many expired decisions are pruned per store transaction.
const PRUNE_BATCH: usize = 10_000;
/// How many targets of one request go into one kernel transaction and one
/// store transaction: bounds the memory a bulk request needs.
const CHUNK: usize = 10_000;
/// Requests with up to this many targets log each decision.
const LOG_EACH_UP_TO: usize = 100;

/// What the agent needs to know to make decisions.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// This node's name, recorded in every decision it makes.
    pub node: String,
    /// How long a ban lasts when the request does not say.
    pub default_ban: Span,
    /// The ranges no ban may cover (checked with the allowlist).
    pub guard: Guard,
    /// Allow entries from the configuration file (re-applied at every start).
    pub static_allows: Vec<(Net, Option<String>)>,
    /// Joined to a network: decisions of scope `network` are also sent to
    /// it (through the outbox), and its decision stream is applied here.
    pub joined: bool,
    /// Addresses of the network itself (the hub or brokers this agent
    /// joins), with why: allowed here whatever the network says, and never
    /// removable, so a ban can never cut this server off from its unban.
    pub infrastructure: Vec<(Net, String)>,
    /// The roll-up this agent applies to its own bans: only when it is
    /// not joined (the hub rolls up a network's).
    pub rollup: Option<palisade_policy::Rollup>,
}

/// An allow entry as kept in memory for the guard.
#[derive(Debug, Clone)]
pub(crate) struct AllowInfo {
    pub(crate) comment: Option<String>,
    pub(crate) source: Source,
}

/// A failure that affects a whole request.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{what} is enforced in the kernel now but could not be saved ({source}); it will be lost when the agent restarts"
    )]
    /// A change is in the kernel but not on disk.
    NotSaved {
        /// What was changed.
        what: String,
        /// Why it could not be stored.
        #[source]
        source: StoreError,
    },
}

/// One ban to make, whoever asked for it.
struct Want {
    target: Net,
    span: Span,
    /// The length asked for (`None`: the default), passed on to the network
    /// so its policy can apply its own default and escalation.
    asked: Option<Span>,
    /// The kernel list a detector stage named.
    list: Option<String>,
    source: Source,
    actor: Option<String>,
    rule: String,
    reason: Option<String>,
    evidence: Vec<String>,
    scope: Scope,
    /// The detection could have been forged (a port probe): the network
    /// bans it only when several nodes confirm it.
    unverified: bool,
}

/// The result of a mutation: how targets ended, per-target outcomes (only
/// the failed ones for a brief request), and the bans that were newly
/// enforced (so their open connections can be killed).
pub struct Applied {
    /// How many targets ended how.
    pub summary: Summary,
    /// Each target's outcome (only the failed ones for a brief request).
    pub outcomes: Vec<Outcome>,
    /// Bans newly enforced, whose open connections are cut.
    pub newly_banned: Vec<Net>,
    brief: bool,
    /// Individual decisions are logged for small requests, a summary for
    /// bulk ones.
    log_each: bool,
}

impl Applied {
    fn new(brief: bool, targets: usize) -> Applied {
        Applied {
            summary: Summary::default(),
            outcomes: Vec::new(),
            newly_banned: Vec::new(),
            brief,
            log_each: targets <= LOG_EACH_UP_TO,
        }
    }

    fn push(
        &mut self,
        target: Net,
        result: OutcomeKind,
        note: Option<String>,
        expires: Option<Timestamp>,
    ) {
        self.summary.count(result);
        if self.log_each && !result.is_failure() {
            info!(target = %target, result = ?result, expires = ?expires.map(|e| e.rfc3339()), note = note.as_deref().unwrap_or(""), "decision");
        }
        if !self.brief || result.is_failure() {
            self.outcomes.push(Outcome {
                target,
                result,
                note,
                expires,
            });
        }
    }

    fn log(&self, verb: &str) {
        if !self.log_each {
            info!(summary = ?self.summary, "{verb} in bulk");
        }
    }
}

/// The agent's decision logic: every change of its decisions goes through
/// here, on the worker thread (kernel first, then the store).
pub struct Core {
    pub(crate) store: Arc<Store>,
    pub(crate) enforcers: Vec<Box<dyn Enforcer>>,
    enforcer_errors: Vec<Option<String>>,
    /// Counted for the metrics endpoint.
    pub counters: Arc<crate::metrics::Counters>,
    pub(crate) allows: NetMap<AllowInfo>,
    pub(crate) settings: CoreOptions,
    /// Wakes the task that sends the outbox to the network.
    pub(crate) outbox_ready: Option<Arc<tokio::sync::Notify>>,
    /// A snapshot from the network being received.
    pub(crate) snapshot: Option<crate::cursor::Snapshot>,
}

impl Core {
    /// Opens the agent's state: re-applies the configuration's allowlist,
    /// prunes what expired while it was stopped, drops bans the allowlist
    /// now forbids, and makes every enforcer's kernel state match the store.
    pub fn start(
        store: Arc<Store>,
        enforcers: Vec<Box<dyn Enforcer>>,
        settings: CoreOptions,
    ) -> Result<Core, CoreError> {
        let n = enforcers.len();
        let mut core = Core {
            store,
            enforcers,
            enforcer_errors: vec![None; n],
            counters: Arc::default(),
            allows: NetMap::new(),
            settings,
            outbox_ready: None,
            snapshot: None,
        };
        core.sync_static_allows()?;
        core.sync_infrastructure_allows()?;
        let now = Timestamp::now();
        while core
            .store
            .write(|w| w.take_expired(now, PRUNE_BATCH))?
            .len()
            == PRUNE_BATCH
        {}
        core.load_allows()?;
        core.reconcile()?;
        Ok(core)
    }

    /// The agent's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Makes every enforcer's kernel state exactly what the store holds.
    pub fn reconcile(&mut self) -> Result<(), CoreError> {
        let started = std::time::Instant::now();
        let reader = self.store.read()?;
        let mut reading = std::time::Duration::ZERO;
        for i in 0..self.enforcers.len() {
            let mut failed: Option<StoreError> = None;
            let mut decisions = reader.iter(None)?;
            let mut entries = std::iter::from_fn(|| {
                let t = std::time::Instant::now();
                let next = loop {
                    match decisions.next()? {
                        Ok(d) => break entry(&d),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                };
                reading += t.elapsed();
                Some(next)
            });
            let result = self.enforcers[i].replace_all(&mut entries);
            self.record_enforcer(i, result);
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        let c = reader.counts()?;
        info!(
            bans = c.ban_hosts,
            ban_networks = c.ban_networks,
            allows = c.allows,
            seconds = started.elapsed().as_secs_f64(),
            reading_store = reading.as_secs_f64(),
            "kernel state reconciled with the store"
        );
        Ok(())
    }

    /// Bans the request's targets (kernel, then store; network-scoped ones
    /// are also queued for the network in the same transaction).
    pub fn ban(&mut self, mut req: BanRequest, now: Timestamp) -> Result<Applied, CoreError> {
        let span = req.span.unwrap_or(self.settings.default_ban);
        let targets = dedup(std::mem::take(&mut req.targets));
        let mut applied = Applied::new(req.brief, targets.len());
        let rule = req.rule.clone().unwrap_or_else(|| "ban".into());
        for chunk in targets.chunks(CHUNK) {
            let wants = chunk.iter().map(|&target| Want {
                target,
                span,
                asked: req.span,
                source: req.source,
                actor: req.actor.clone(),
                rule: rule.clone(),
                reason: req.reason.clone(),
                evidence: req.evidence.clone(),
                scope: self.scope(req.scope),
                list: None,
                unverified: false,
            });
            self.ban_wanted(wants.collect(), now, &mut applied)?;
        }
        applied.log("banned");
        Ok(applied)
    }

    /// Acts on what the detectors found: bans at the stage's length, and
    /// forgiveness (a good pattern lifts the bans that rule made for that
    /// address). Refusals (allowlisted addresses) are logged, not errors.
    pub fn detected(&mut self, events: Vec<Event>, now: Timestamp) -> Result<Applied, CoreError> {
        let mut applied = Applied::new(true, events.len());
        let mut wants = Vec::new();
        let mut forgiven = Vec::new();
        for event in events {
            match event {
                Event::Ban {
                    rule,
                    address,
                    stage,
                    span,
                    scope,
                    count,
                    evidence,
                    trust,
                } => wants.push(Want {
                    target: address,
                    span,
                    asked: Some(span),
                    source: Source::Detector,
                    actor: None,
                    reason: Some(format!("{count} failures, stage {}", stage.name)),
                    rule,
                    evidence,
                    scope: self.scope(scope),
                    list: stage.list.clone(),
                    // Banned here at once; the network bans it only when
                    // several servers saw it (a SYN can carry any source).
                    unverified: trust == Trust::Forgeable,
                }),
                Event::Forgive { rule, address } => forgiven.push((rule, address)),
            }
        }
        self.ban_wanted(wants, now, &mut applied)?;
        for o in &applied.outcomes {
            tracing::debug!(target = %o.target, note = o.note.as_deref().unwrap_or(""), "detection not acted on");
        }
        if !forgiven.is_empty() {
            let reader = self.store.read()?;
            let mut lift = Vec::new();
            let mut intents = Vec::new();
            for (rule, address) in forgiven {
                if let Some(d) = reader.get(Action::Ban, &address)?
                    && d.origin.source == Source::Detector
                    && d.rule.as_deref() == Some(rule.as_str())
                {
                    info!(target = %address, rule = %rule, "forgiven: lifting the detector's ban");
                    lift.push(address);
                    // The network lifts it too when this node's detector
                    // asked for it in the first place.
                    if d.scope == Scope::Network && d.origin.node == self.settings.node {
                        intents.push(Intent::Unban {
                            target: address,
                            actor: None,
                        });
                    }
                }
            }
            drop(reader);
            self.remove_all(Action::Ban, &lift, &intents)?;
            applied.summary.removed += lift.len() as u64;
        }
        Ok(applied)
    }

    /// Bans each wanted target unless the guard refuses it; a repeat
    /// refreshes the existing decision. One kernel and one store
    /// transaction.
    fn ban_wanted(
        &mut self,
        wants: Vec<Want>,
        now: Timestamp,
        applied: &mut Applied,
    ) -> Result<(), CoreError> {
        let mut changes = Vec::with_capacity(wants.len());
        let mut to_store: Vec<Decision> = Vec::with_capacity(wants.len());
        let mut intents = Vec::new();
        let reader = self.store.read()?;
        for want in wants {
            let target = want.target;
            if let Err(refusal) = self
                .settings
                .guard
                .check_ban(&target, &self.allows, |a| a.comment.clone())
            {
                applied.push(
                    target,
                    OutcomeKind::Refused,
                    Some(refusal.to_string()),
                    None,
                );
                continue;
            }
            if want.scope == Scope::Network {
                intents.push(Intent::Ban {
                    target,
                    span: want.asked,
                    list: want.list.clone(),
                    rule: Some(want.rule.clone()),
                    reason: want.reason.clone(),
                    evidence: want.evidence.clone(),
                    source: want.source,
                    actor: want.actor.clone(),
                    unverified: want.unverified,
                });
            }
            let mut origin = Origin::new(self.settings.node.clone(), want.source);
            if let Some(actor) = want.actor {
                origin = origin.with_actor(actor);
            }
            let mut fresh = Decision::new(Action::Ban, target, now, want.span, origin)
                .with_list(want.list)
                .with_rule(want.rule)
                .with_evidence(want.evidence)
                .with_scope(want.scope);
            if let Some(r) = want.reason {
                fresh = fresh.with_reason(r);
            }
            // Within one transaction the same target may come twice (two
            // detector stages firing together): merge into the first.
            if let Some(pending) = to_store.iter_mut().find(|d| d.target == target) {
                pending.absorb(fresh);
                continue;
            }
            let (decision, kind) = match reader.get(Action::Ban, &target)? {
                Some(mut old) if old.is_active(now) => {
                    let moved = old.absorb(fresh);
                    let kind = if moved {
                        OutcomeKind::Extended
                    } else {
                        OutcomeKind::Unchanged
                    };
                    (old, kind)
                }
                _ => (fresh, OutcomeKind::Added),
            };
            if kind != OutcomeKind::Unchanged {
                applied.newly_banned.push(target);
            }
            applied.push(target, kind, self.allowed_inside(&target), decision.expires);
            to_store.push(decision);
        }
        drop(reader);
        // A repeat is put to the kernel too: it refreshes the timeout and
        // repairs an element someone removed by hand.
        changes.extend(to_store.iter().map(|d| Change::Put(entry(d))));
        self.enforce_changes(&changes);
        self.save(
            &format!("the ban of {}", describe(&to_store)),
            &intents,
            |w| {
                for d in &to_store {
                    w.put(d)?;
                }
                Ok(())
            },
        )?;
        let rolled = self.roll_up(&applied.newly_banned, now)?;
        applied.newly_banned.extend(rolled);
        Ok(())
    }

    /// Lifts the bans of the request's targets.
    pub fn unban(&mut self, req: TargetsRequest) -> Result<Applied, CoreError> {
        let targets = dedup(req.targets);
        let mut applied = Applied::new(req.brief, targets.len());
        for chunk in targets.chunks(CHUNK) {
            let reader = self.store.read()?;
            let mut removed = Vec::new();
            let mut intents = Vec::new();
            for &target in chunk {
                if self.settings.joined && !req.local {
                    intents.push(Intent::Unban {
                        target,
                        actor: req.actor.clone(),
                    });
                }
                let found = reader.get(Action::Ban, &target)?;
                if let (Some(d), Some(only)) = (&found, &req.only_rule)
                    && d.rule.as_deref() != Some(only.as_str())
                {
                    let by = d.rule.as_deref().unwrap_or("no rule");
                    let note = format!("{target} stays banned: the ban is from {by}, not {only}");
                    applied.push(target, OutcomeKind::NotFound, Some(note), None);
                    continue;
                }
                if found.is_some() {
                    removed.push(target);
                    applied.push(target, OutcomeKind::Removed, None, None);
                    continue;
                }
                let note = match reader.covering(Action::Ban, &target)?.last() {
                    Some(d) => format!(
                        "{target} is not banned itself but is inside the ban of {}; unban {} to lift it, or allow {target} to exempt it",
                        d.target, d.target
                    ),
                    None => format!("{target} is not banned"),
                };
                applied.push(target, OutcomeKind::NotFound, Some(note), None);
            }
            drop(reader);
            self.remove_all(Action::Ban, &removed, &intents)?;
        }
        applied.log("unbanned");
        Ok(applied)
    }

    /// Allows the request's targets: they can never be banned while allowed.
    pub fn allow(&mut self, mut req: AllowRequest, now: Timestamp) -> Result<Applied, CoreError> {
        let span = req.span.unwrap_or(Span::Forever);
        let targets = dedup(std::mem::take(&mut req.targets));
        let mut applied = Applied::new(req.brief, targets.len());
        for chunk in targets.chunks(CHUNK) {
            self.allow_chunk(chunk, &req, span, now, &mut applied)?;
        }
        applied.log("allowed");
        Ok(applied)
    }

    fn allow_chunk(
        &mut self,
        targets: &[Net],
        req: &AllowRequest,
        span: Span,
        now: Timestamp,
        applied: &mut Applied,
    ) -> Result<(), CoreError> {
        let reader = self.store.read()?;
        let mut changes = Vec::new();
        let mut to_store = Vec::new();
        let mut intents = Vec::new();
        let scope = self.scope(req.scope);
        for &target in targets {
            if let Err(refusal) = self.settings.guard.check_allow(&target) {
                applied.push(
                    target,
                    OutcomeKind::Refused,
                    Some(refusal.to_string()),
                    None,
                );
                continue;
            }
            if scope == Scope::Network {
                intents.push(Intent::Allow {
                    target,
                    span: req.span,
                    comment: req.comment.clone(),
                    group: None,
                    actor: req.actor.clone(),
                });
            }
            let mut origin = Origin::new(self.settings.node.clone(), Source::Cli);
            if let Some(actor) = &req.actor {
                origin = origin.with_actor(actor.clone());
            }
            let mut fresh =
                Decision::new(Action::Allow, target, now, span, origin).with_scope(scope);
            if let Some(c) = &req.comment {
                fresh = fresh.with_reason(c.clone());
            }
            let (decision, kind) = match reader.get(Action::Allow, &target)? {
                Some(old) if old.is_active(now) && old.origin.source == Source::Config => {
                    let note = "already allowed by the configuration file".to_string();
                    applied.push(target, OutcomeKind::Unchanged, Some(note), None);
                    continue;
                }
                Some(mut old) if old.is_active(now) => {
                    let moved = old.absorb(fresh);
                    let kind = if moved {
                        OutcomeKind::Extended
                    } else {
                        OutcomeKind::Unchanged
                    };
                    (old, kind)
                }
                _ => (fresh, OutcomeKind::Added),
            };
            // The allowlist wins without destroying anything: bans inside
            // stay, shadowed (the kernel accepts allowed sources before it
            // drops banned ones), and apply again if the allow goes.
            let mut inside = reader.within(Action::Ban, &target)?.len();
            if reader.get(Action::Ban, &target)?.is_some() {
                inside += 1;
            }
            let note = (inside > 0).then(|| {
                format!(
                    "shadows {inside} ban{} it covers (they apply again if this allow goes)",
                    if inside == 1 { "" } else { "s" }
                )
            });
            changes.push(Change::Put(entry(&decision)));
            applied.push(target, kind, note, decision.expires);
            to_store.push(decision);
        }
        drop(reader);
        self.enforce_changes(&changes);
        self.save(
            &format!("the allow of {}", describe(&to_store)),
            &intents,
            |w| {
                for d in &to_store {
                    w.put(d)?;
                }
                Ok(())
            },
        )?;
        for d in &to_store {
            self.allows.insert(
                d.target,
                AllowInfo {
                    comment: d.reason.clone(),
                    source: d.origin.source,
                },
            );
        }
        Ok(())
    }

    /// Removes the allow entries of the request's targets.
    pub fn unallow(&mut self, req: TargetsRequest) -> Result<Applied, CoreError> {
        let targets = dedup(req.targets);
        let mut applied = Applied::new(req.brief, targets.len());
        for chunk in targets.chunks(CHUNK) {
            let mut removed = Vec::new();
            let mut intents = Vec::new();
            for &target in chunk {
                if self.settings.joined
                    && !req.local
                    && self
                        .allows
                        .get(&target)
                        .is_none_or(|a| !matches!(a.source, Source::Config | Source::Policy))
                {
                    intents.push(Intent::Unallow {
                        target,
                        group: None,
                        actor: req.actor.clone(),
                    });
                }
                match self.allows.get(&target) {
                    Some(info) if info.source == Source::Config => {
                        let note = format!(
                            "{target} is allowed by the configuration file; remove its [[allow]] entry there and restart the agent"
                        );
                        applied.push(target, OutcomeKind::Refused, Some(note), None);
                    }
                    Some(info) if info.source == Source::Policy => {
                        let note = format!(
                            "{target} is part of the palisade network ({}); it stays allowed",
                            info.comment
                                .as_deref()
                                .unwrap_or("a node, the hub or a broker")
                        );
                        applied.push(target, OutcomeKind::Refused, Some(note), None);
                    }
                    Some(_) => {
                        removed.push(target);
                        applied.push(target, OutcomeKind::Removed, None, None);
                    }
                    None => {
                        let note = match self.allows.most_specific(&target) {
                            Some((net, _)) => format!(
                                "{target} is not an allow entry itself but is inside the allow entry {net}"
                            ),
                            None => format!("{target} is not allowed"),
                        };
                        applied.push(target, OutcomeKind::NotFound, Some(note), None);
                    }
                }
            }
            self.remove_all(Action::Allow, &removed, &intents)?;
        }
        applied.log("unallowed");
        Ok(applied)
    }

    /// Removes decisions that have expired. The kernel has already expired
    /// their elements by itself; this keeps the store, the allowlist and the
    /// enforcers' own bookkeeping in step.
    pub fn prune(&mut self, now: Timestamp) -> Result<usize, CoreError> {
        // Most calls find nothing due: a read says so without a write
        // transaction (and its fsync).
        if self.next_expiry()?.is_none_or(|t| t > now) {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let gone = self.store.write(|w| w.take_expired(now, PRUNE_BATCH))?;
            let changes: Vec<Change> = gone
                .iter()
                .map(|d| Change::Remove {
                    action: d.action,
                    net: d.target,
                })
                .collect();
            self.enforce_changes(&changes);
            for d in &gone {
                self.forget(d.action, &d.target);
                info!(action = %d.action, target = %d.target, "expired");
            }
            total += gone.len();
            if gone.len() < PRUNE_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// Lets every enforcer do its periodic work (an ipset enforcer refreshes
    /// timeouts longer than the kernel allows; nftables forgets pieces the
    /// kernel has expired). Called when the worker is idle.
    pub fn tick(&mut self) {
        if let Err(e) = self.store.flush() {
            warn!(error = %e, "could not flush the store");
        }
        for i in 0..self.enforcers.len() {
            let result = self.enforcers[i].apply(&[]);
            self.record_enforcer(i, result);
        }
    }

    /// When the next decision expires, if any.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>, CoreError> {
        Ok(self.store.read()?.next_expiry()?)
    }

    /// Each enforcer's health and what it holds; with `kernel`, read back
    /// from the kernel and compared element by element, so any difference
    /// (and which elements) makes it unhealthy.
    pub fn enforcer_status(&mut self, kernel: bool) -> Vec<EnforcerStatus> {
        let mut out = Vec::with_capacity(self.enforcers.len());
        for (e, err) in self.enforcers.iter_mut().zip(&self.enforcer_errors) {
            let status = e.status(kernel);
            let drift = if kernel { Some(e.drift(false)) } else { None };
            let objects = match &status {
                Ok(s) => s
                    .objects
                    .iter()
                    .map(|o| EnforcerObject {
                        name: o.name.clone(),
                        expected: o.expected,
                        in_kernel: o.in_kernel,
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let (healthy, detail) = match (err, status) {
                (Some(err), _) => (false, err.clone()),
                (None, Err(read)) => (false, format!("cannot read the kernel state: {read}")),
                (None, Ok(s)) => {
                    let counts_differ = s
                        .objects
                        .iter()
                        .any(|o| o.in_kernel.is_some_and(|k| k != o.expected));
                    let summary = if s.objects.is_empty() {
                        "in sync".to_string()
                    } else {
                        s.objects
                            .iter()
                            .map(|o| match o.in_kernel {
                                Some(k) => format!(
                                    "{} {} entries ({} kernel elements expected, {k} found)",
                                    o.name, o.entries, o.expected
                                ),
                                None => format!("{} {} entries", o.name, o.entries),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    match drift {
                        Some(Ok(d)) if !d.is_empty() => (
                            false,
                            format!("the kernel differs from palisade: {d}; {summary}"),
                        ),
                        Some(Err(read)) => (
                            false,
                            format!("cannot compare with the kernel: {read}; {summary}"),
                        ),
                        _ if !s.in_sync => {
                            (false, format!("out of sync with the kernel: {summary}"))
                        }
                        _ if counts_differ => (
                            false,
                            format!("the kernel differs from palisade: {summary}"),
                        ),
                        _ => (true, summary),
                    }
                }
            };
            out.push(EnforcerStatus {
                name: e.name().to_string(),
                healthy,
                detail,
                objects,
            });
        }
        out
    }

    pub(crate) fn remove_all(
        &mut self,
        action: Action,
        targets: &[Net],
        intents: &[Intent],
    ) -> Result<(), CoreError> {
        if targets.is_empty() && intents.is_empty() {
            return Ok(());
        }
        let changes: Vec<Change> = targets
            .iter()
            .map(|n| Change::Remove { action, net: *n })
            .collect();
        self.enforce_changes(&changes);
        let what = format!("the removal of {}", describe_nets(targets));
        self.save(&what, intents, |w| {
            for n in targets {
                w.remove(action, n)?;
            }
            Ok(())
        })?;
        for n in targets {
            self.forget(action, n);
        }
        Ok(())
    }

    /// Updates in-memory state after a decision is gone from the store.
    fn forget(&mut self, action: Action, net: &Net) {
        if action == Action::Allow {
            self.allows.remove(net);
        }
    }

    /// Applies changes to every enforcer. A failing enforcer is recorded and
    /// reported by `status`, but never stops the agent or the others.
    pub(crate) fn enforce_changes(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        for i in 0..self.enforcers.len() {
            let result = self.enforcers[i].apply(changes);
            self.record_enforcer(i, result);
        }
    }

    fn record_enforcer(&mut self, i: usize, result: Result<(), EnforceError>) {
        match result {
            Ok(()) => self.enforcer_errors[i] = None,
            Err(e) => {
                warn!(enforcer = self.enforcers[i].name(), error = %e, "enforcer failed");
                self.enforcer_errors[i] = Some(e.to_string());
            }
        }
    }

    /// Commits a local change, and the intents it sends to the network, in
    /// one store transaction: a change made here is never lost on its way
    /// to the network, nor sent without being made here.
    pub(crate) fn save(
        &self,
        what: &str,
        intents: &[Intent],
        f: impl FnOnce(&mut palisade_store::Writer<'_>) -> Result<(), StoreError>,
    ) -> Result<(), CoreError> {
        let now = Timestamp::now();
        self.store
            .write(|w| {
                f(w)?;
                for intent in intents {
                    w.push(
                        crate::outbox::OUTBOX,
                        &crate::outbox::outbox_record(now, intent),
                    )?;
                }
                Ok(())
            })
            .map_err(|source| CoreError::NotSaved {
                what: what.to_string(),
                source,
            })?;
        if !intents.is_empty()
            && let Some(ready) = &self.outbox_ready
        {
            ready.notify_one();
        }
        Ok(())
    }

    /// Decisions stay on this node unless it is joined to a network.
    fn scope(&self, asked: Scope) -> Scope {
        if self.settings.joined {
            asked
        } else {
            Scope::Local
        }
    }

    /// A note for a network ban that contains allowed addresses.
    fn allowed_inside(&self, target: &Net) -> Option<String> {
        if target.is_host() {
            return None;
        }
        let inside: Vec<String> = self
            .allows
            .within(target)
            .take(5)
            .map(|(n, _)| n.to_string())
            .collect();
        (!inside.is_empty()).then(|| {
            format!(
                "allowed addresses inside it stay reachable: {}",
                inside.join(", ")
            )
        })
    }

    /// The configuration's allow entries (`[[allow]]`): local, source
    /// `config`, rewritten at every start (their comments may have changed);
    /// those no longer configured go.
    fn sync_static_allows(&mut self) -> Result<(), CoreError> {
        let wanted = self.settings.static_allows.clone();
        self.sync_own_allows(&CONFIGURED_ALLOWS, wanted)
    }

    /// The allow entries of the network's own addresses: local, source
    /// `policy`, made from the join address; those no longer joined go.
    fn sync_infrastructure_allows(&mut self) -> Result<(), CoreError> {
        let wanted = self
            .settings
            .infrastructure
            .iter()
            .map(|(net, why)| (*net, Some(why.clone())))
            .collect();
        self.sync_own_allows(&INFRASTRUCTURE_ALLOWS, wanted)
    }

    /// Makes the store's allow entries of one `kind` exactly `wanted`
    /// (network, reason): stale ones go, missing ones are made.
    fn sync_own_allows(
        &mut self,
        kind: &OwnAllows,
        wanted: Vec<(Net, Option<String>)>,
    ) -> Result<(), CoreError> {
        let now = Timestamp::now();
        let node = self.settings.node.clone();
        let wanted: HashMap<Net, Option<String>> = wanted.into_iter().collect();
        // Local scope only: the hub's `[[hub.allow]]` entries are also of
        // source config, arrive over the stream, and a resumed stream never
        // sends them again.
        let ours = |d: &Decision| {
            d.origin.source == kind.source
                && d.scope == Scope::Local
                && (kind.any_node || d.origin.node == node)
        };
        let stale: Vec<Net> = self
            .store
            .read()?
            .iter(Some(Action::Allow))?
            .filter_map(|d| d.ok())
            .filter(|d| ours(d) && !wanted.contains_key(&d.target))
            .map(|d| d.target)
            .collect();
        self.store.write(|w| {
            for n in &stale {
                w.remove(Action::Allow, n)?;
            }
            for (net, reason) in &wanted {
                let mut d = Decision::new(
                    Action::Allow,
                    *net,
                    now,
                    Span::Forever,
                    Origin::new(node.clone(), kind.source),
                )
                .with_scope(Scope::Local);
                if let Some(r) = reason {
                    d = d.with_reason(r.clone());
                }
                match (w.get(Action::Allow, net)?, kind.rewrite) {
                    (Some(old), false) if ours(&old) => continue,
                    // Rewritten, but made when it was first configured.
                    (Some(old), true) if old.origin.source == kind.source => {
                        d.created = old.created;
                    }
                    _ => {}
                }
                w.put(&d)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The network's own addresses as resolved again (each connection):
    /// new ones are allowed, kernel first; ones no longer there stop being.
    pub fn set_infrastructure(&mut self, list: Vec<(Net, String)>) -> Result<(), CoreError> {
        if list.is_empty() || list == self.settings.infrastructure {
            // An empty answer is a failed lookup: keep what holds.
            return Ok(());
        }
        let before: HashSet<Net> = self
            .settings
            .infrastructure
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let after: HashSet<Net> = list.iter().map(|(n, _)| *n).collect();
        info!(addresses = ?after, "the network's own addresses changed; allowing them here");
        self.settings.infrastructure = list;
        self.sync_infrastructure_allows()?;
        let reader = self.store.read()?;
        let mut changes = Vec::new();
        for n in after.difference(&before) {
            if let Some(d) = reader.get(Action::Allow, n)? {
                changes.push(Change::Put(entry(&d)));
            }
        }
        for n in before.difference(&after) {
            if reader.get(Action::Allow, n)?.is_none() {
                changes.push(Change::Remove {
                    action: Action::Allow,
                    net: *n,
                });
            }
        }
        drop(reader);
        self.enforce_changes(&changes);
        self.load_allows()
    }

    fn load_allows(&mut self) -> Result<(), CoreError> {
        self.allows = NetMap::new();
        for d in self.store.read()?.iter(Some(Action::Allow))? {
            let d = d?;
            self.allows.insert(
                d.target,
                AllowInfo {
                    comment: d.reason,
                    source: d.origin.source,
                },
            );
        }
        Ok(())
    }
}

/// An allow list the agent makes itself from its settings, at every start.
struct OwnAllows {
    /// The source its entries carry, which tells them from all others.
    source: Source,
    /// Whether entries of this source made under another node name are
    /// ours too (a renamed node's configuration replaces the old one's).
    any_node: bool,
    /// Whether an entry already stored is written again (its reason and
    /// `updated` move) or left as it is.
    rewrite: bool,
}

/// `[[allow]]` of the agent's configuration.
const CONFIGURED_ALLOWS: OwnAllows = OwnAllows {
    source: Source::Config,
    any_node: true,
    rewrite: true,
};

/// The network's own addresses (hub or brokers joined).
const INFRASTRUCTURE_ALLOWS: OwnAllows = OwnAllows {
    source: Source::Policy,
    any_node: false,
    rewrite: false,
};

pub(crate) fn entry(d: &Decision) -> Entry {
    Entry {
        action: d.action,
        net: d.target,
        expires: d.expires,
        comment: d.reason.clone(),
        rule: d.rule.clone(),
        list: d.list.clone(),
    }
}

fn dedup(targets: Vec<Net>) -> Vec<Net> {
    let mut seen = HashSet::new();
    targets.into_iter().filter(|t| seen.insert(*t)).collect()
}

fn describe(ds: &[Decision]) -> String {
    let nets: Vec<Net> = ds.iter().map(|d| d.target).collect();
    describe_nets(&nets)
}

fn describe_nets(nets: &[Net]) -> String {
    match nets {
        [one] => one.to_string(),
        many => format!("{} addresses", many.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_enforce::EnforceError;
    use palisade_model::explain::Verdict;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Keeps what an enforcer was told, so the tests can compare it with the
    /// store. (The real kernel is exercised by the lab tests.)
    type Told = BTreeMap<(Action, Net), Option<Timestamp>>;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Told>>);

    impl Enforcer for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn replace_all(
            &mut self,
            entries: &mut dyn Iterator<Item = Entry>,
        ) -> Result<(), EnforceError> {
            let mut m = self.0.lock().unwrap();
            m.clear();
            for e in entries {
                m.insert((e.action, e.net), e.expires);
            }
            Ok(())
        }
        fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
            let mut m = self.0.lock().unwrap();
            for c in changes {
                match c {
                    Change::Put(e) => {
                        m.insert((e.action, e.net), e.expires);
                    }
                    Change::Remove { action, net } => {
                        m.remove(&(*action, *net));
                    }
                }
            }
            Ok(())
        }
        fn remove(&mut self) -> Result<(), EnforceError> {
            self.0.lock().unwrap().clear();
            Ok(())
        }
    }

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn settings(static_allows: &[(&str, &str)]) -> CoreOptions {
        CoreOptions {
            node: "web1".into(),
            default_ban: Span::For(Duration::from_secs(3600)),
            guard: Guard::default(),
            static_allows: static_allows
                .iter()
                .map(|(net, c)| (n(net), Some(c.to_string())))
                .collect(),
            joined: false,
            infrastructure: Vec::new(),
            rollup: None,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        kernel: Recorder,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("decisions.redb");
            Fixture {
                _dir: dir,
                path,
                kernel: Recorder::default(),
            }
        }
        fn core(&self, static_allows: &[(&str, &str)]) -> Core {
            let store = Arc::new(Store::open(&self.path, &Default::default()).unwrap());
            Core::start(
                store,
                vec![Box::new(self.kernel.clone())],
                settings(static_allows),
            )
            .unwrap()
        }
        fn kernel(&self) -> Vec<String> {
            self.kernel
                .0
                .lock()
                .unwrap()
                .keys()
                .map(|(a, n)| format!("{a} {n}"))
                .collect()
        }
    }

    fn ban(targets: &[&str], span: Option<&str>) -> BanRequest {
        BanRequest {
            targets: targets.iter().map(|t| n(t)).collect(),
            span: span.map(|s| s.parse().unwrap()),
            reason: Some("test".into()),
            rule: None,
            evidence: vec!["Failed password for root from 198.51.100.7".into()],
            actor: Some("alice".into()),
            scope: Scope::Local,
            brief: false,
            source: Source::Cli,
        }
    }

    fn allow(targets: &[&str], comment: &str) -> AllowRequest {
        AllowRequest {
            targets: targets.iter().map(|t| n(t)).collect(),
            span: None,
            comment: Some(comment.into()),
            actor: None,
            scope: Scope::Local,
            brief: false,
        }
    }

    fn targets(t: &[&str]) -> TargetsRequest {
        TargetsRequest {
            targets: t.iter().map(|x| n(x)).collect(),
            actor: None,
            brief: false,
            local: false,
            only_rule: None,
        }
    }

    fn kinds(a: &Applied) -> Vec<OutcomeKind> {
        a.outcomes.iter().map(|o| o.result).collect()
    }

    #[test]
    fn ban_is_enforced_stored_and_explained() {
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let now = Timestamp::now();
        let a = core
            .ban(ban(&["198.51.100.7", "2001:db8::7"], Some("10m")), now)
            .unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Added, OutcomeKind::Added]);
        assert_eq!(a.newly_banned.len(), 2);
        assert_eq!(f.kernel(), ["ban 198.51.100.7", "ban 2001:db8::7"]);
        let e = core
            .store()
            .read()
            .unwrap()
            .explain(n("198.51.100.7"), now)
            .unwrap();
        assert_eq!(e.verdict, Verdict::Blocked);
        let d = &e.banned_by[0];
        assert_eq!(d.origin.actor.as_deref(), Some("alice"));
        assert_eq!(d.origin.node, "web1");
        assert_eq!(d.rule.as_deref(), Some("ban"));
        assert_eq!(d.evidence.len(), 1);
        assert_eq!(
            d.expires,
            Some(now.saturating_add(Duration::from_secs(600)))
        );
    }

    #[test]
    fn a_repeat_refreshes_instead_of_duplicating() {
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let t0 = Timestamp::now();
        core.ban(ban(&["198.51.100.7"], Some("10m")), t0).unwrap();
        let a = core.ban(ban(&["198.51.100.7"], Some("1h")), t0).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Extended]);
        let a = core.ban(ban(&["198.51.100.7"], Some("1m")), t0).unwrap();
        assert_eq!(
            kinds(&a),
            [OutcomeKind::Unchanged],
            "a shorter repeat never shortens"
        );
        assert!(a.newly_banned.is_empty());
        let k = f.kernel.0.lock().unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(
            k[&(Action::Ban, n("198.51.100.7"))],
            Some(t0.saturating_add(Duration::from_secs(3600))),
            "the kernel got the refreshed expiry"
        );
        drop(k);
        let d = core
            .store()
            .read()
            .unwrap()
            .get(Action::Ban, &n("198.51.100.7"))
            .unwrap()
            .unwrap();
        assert_eq!(d.hits, 3);
    }

    #[test]
    fn the_allowlist_always_wins() {
        let f = Fixture::new();
        let mut core = f.core(&[("198.18.0.0/24", "lab")]);
        let now = Timestamp::now();
        let a = core
            .ban(ban(&["198.18.0.5", "127.0.0.1", "10.0.0.0/7"], None), now)
            .unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Refused; 3]);
        assert!(
            a.outcomes[0]
                .note
                .as_deref()
                .unwrap()
                .contains("198.18.0.0/24 (lab)")
        );
        assert_eq!(f.kernel(), ["allow 198.18.0.0/24"]);

        // A network containing the allowed one may be banned; the note says
        // the allowed part stays reachable.
        let a = core.ban(ban(&["198.18.0.0/16"], None), now).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Added]);
        assert!(
            a.outcomes[0]
                .note
                .as_deref()
                .unwrap()
                .contains("stay reachable")
        );
        let e = core
            .store()
            .read()
            .unwrap()
            .explain(n("198.18.0.5"), now)
            .unwrap();
        assert_eq!(e.verdict, Verdict::Allowed);
        assert_eq!(e.banned_by.len(), 1);
        let e = core
            .store()
            .read()
            .unwrap()
            .explain(n("198.18.1.5"), now)
            .unwrap();
        assert_eq!(e.verdict, Verdict::Blocked);
    }

    #[test]
    fn an_allow_shadows_the_bans_it_covers() {
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let now = Timestamp::now();
        core.ban(
            ban(
                &[
                    "203.0.113.5",
                    "203.0.113.6",
                    "203.0.113.0/28",
                    "198.51.100.1",
                ],
                None,
            ),
            now,
        )
        .unwrap();
        let a = core
            .allow(allow(&["203.0.113.0/24"], "partner"), now)
            .unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Added]);
        assert!(
            a.outcomes[0]
                .note
                .as_deref()
                .unwrap()
                .starts_with("shadows 3 bans"),
            "{:?}",
            a.outcomes[0].note
        );
        // The bans stay, shadowed: the kernel accepts allowed sources first.
        let c = core.store().read().unwrap().counts().unwrap();
        assert_eq!((c.ban_hosts, c.ban_networks, c.allows), (3, 1, 1));
        assert!(f.kernel().contains(&"allow 203.0.113.0/24".to_string()));
        // And later bans inside it are refused.
        let a = core.ban(ban(&["203.0.113.9"], None), now).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Refused]);
        // Until it is unallowed.
        let a = core.unallow(targets(&["203.0.113.0/24"])).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Removed]);
        let a = core.ban(ban(&["203.0.113.9"], None), now).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Added]);
        // And the shadowed bans apply again.
        assert!(f.kernel().contains(&"ban 203.0.113.5".to_string()));
    }

    #[test]
    fn the_hub_this_agent_joins_stays_allowed_whatever_happens() {
        let f = Fixture::new();
        let mut settings = settings(&[]);
        settings.infrastructure = vec![(n("198.18.0.1"), "the palisade hub".into())];
        let store = Arc::new(Store::open(&f.path, &Default::default()).unwrap());
        let mut core = Core::start(store, vec![Box::new(f.kernel.clone())], settings).unwrap();
        assert!(f.kernel().contains(&"allow 198.18.0.1".to_string()));
        let a = core
            .ban(
                ban(&["198.18.0.1", "198.18.0.0/24"], None),
                Timestamp::now(),
            )
            .unwrap();
        assert_eq!(kinds(&a)[0], OutcomeKind::Refused);
        let a = core.unallow(targets(&["198.18.0.1"])).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Refused]);
        assert!(f.kernel().contains(&"allow 198.18.0.1".to_string()));
        // Nor from the network: a ban covering the hub is not applied
        // here, not even shadowed (an enforcer may have no allow entries).
        let hub = Decision::new(
            Action::Ban,
            n("198.18.0.1"),
            Timestamp::now(),
            Span::Forever,
            Origin::new("web3", Source::Cli),
        );
        core.remote(
            vec![palisade_wire::StreamItem::Put {
                seq: 1,
                decision: hub,
            }],
            Timestamp::now(),
        )
        .unwrap();
        assert!(!f.kernel().contains(&"ban 198.18.0.1".to_string()));
        // The hub moved (looked up again on a connection): the new address
        // is allowed, the old one no longer; a failed lookup changes nothing.
        core.set_infrastructure(vec![(n("198.18.0.9"), "the palisade hub".into())])
            .unwrap();
        let k = f.kernel();
        assert!(k.contains(&"allow 198.18.0.9".to_string()), "{k:?}");
        assert!(!k.contains(&"allow 198.18.0.1".to_string()), "{k:?}");
        core.set_infrastructure(Vec::new()).unwrap();
        assert!(f.kernel().contains(&"allow 198.18.0.9".to_string()));
    }

    #[test]
    fn unban_explains_what_it_could_not_do() {
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let now = Timestamp::now();
        core.ban(ban(&["203.0.113.0/24", "198.51.100.1"], None), now)
            .unwrap();
        let a = core
            .unban(targets(&["198.51.100.1", "203.0.113.9", "192.0.2.1"]))
            .unwrap();
        assert_eq!(
            kinds(&a),
            [
                OutcomeKind::Removed,
                OutcomeKind::NotFound,
                OutcomeKind::NotFound
            ]
        );
        assert!(
            a.outcomes[1]
                .note
                .as_deref()
                .unwrap()
                .contains("inside the ban of 203.0.113.0/24")
        );
        assert_eq!(
            a.outcomes[2].note.as_deref(),
            Some("192.0.2.1 is not banned")
        );
        assert_eq!(f.kernel(), ["ban 203.0.113.0/24"]);
    }

    #[test]
    fn static_allows_cannot_be_unallowed_and_follow_the_config() {
        let f = Fixture::new();
        {
            let mut core = f.core(&[("198.18.0.0/24", "lab")]);
            let a = core.unallow(targets(&["198.18.0.0/24"])).unwrap();
            assert_eq!(kinds(&a), [OutcomeKind::Refused]);
            core.ban(ban(&["192.0.2.1"], None), Timestamp::now())
                .unwrap();
        }
        // The entry leaves the config, and one arrives that covers a stored
        // ban: the ban stays, shadowed.
        let core = f.core(&[("192.0.2.0/24", "new")]);
        assert_eq!(f.kernel(), ["ban 192.0.2.1", "allow 192.0.2.0/24"]);
        let c = core.store().read().unwrap().counts().unwrap();
        assert_eq!((c.ban_hosts, c.allows), (1, 1));
    }

    #[test]
    fn restart_keeps_decisions_and_reconciles_the_kernel() {
        let f = Fixture::new();
        {
            let mut core = f.core(&[]);
            let now = Timestamp::now();
            core.ban(ban(&["198.51.100.7", "203.0.113.0/24"], Some("1h")), now)
                .unwrap();
            core.allow(allow(&["192.0.2.10"], "monitor"), now).unwrap();
        }
        // Someone (or a reboot) emptied the kernel.
        f.kernel.0.lock().unwrap().clear();
        let _core = f.core(&[]);
        assert_eq!(
            f.kernel(),
            ["ban 198.51.100.7", "ban 203.0.113.0/24", "allow 192.0.2.10"]
        );
    }

    #[test]
    fn expired_decisions_are_pruned() {
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let t0 = Timestamp::now();
        core.ban(ban(&["198.51.100.1"], Some("1m")), t0).unwrap();
        core.ban(ban(&["198.51.100.2"], Some("1h")), t0).unwrap();
        assert_eq!(
            core.next_expiry().unwrap(),
            Some(t0.saturating_add(Duration::from_secs(60)))
        );
        let later = t0.saturating_add(Duration::from_secs(61));
        assert_eq!(core.prune(later).unwrap(), 1);
        assert_eq!(f.kernel(), ["ban 198.51.100.2"]);
        // An expired ban that is asked for again starts afresh.
        let a = core.ban(ban(&["198.51.100.1"], Some("1m")), later).unwrap();
        assert_eq!(kinds(&a), [OutcomeKind::Added]);
    }

    #[test]
    fn an_unban_caught_up_with_an_expired_ban_after_it_is_not_undone() {
        use palisade_wire::StreamItem;
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let t0 = Timestamp::now();
        let x = n("198.51.100.7");
        let network_ban = |at: Timestamp, span: &str| {
            Decision::new(
                Action::Ban,
                x,
                at,
                span.parse().unwrap(),
                Origin::new("web3", Source::Cli),
            )
        };
        core.remote(
            vec![StreamItem::Put {
                seq: 1,
                decision: network_ban(t0, "1h"),
            }],
            t0,
        )
        .unwrap();
        assert_eq!(f.kernel(), ["ban 198.51.100.7"]);
        // Back after a while away: the ban was lifted, then banned again
        // for 6 s, which has expired by now.
        let now = t0.saturating_add(Duration::from_secs(60));
        core.remote(
            vec![
                StreamItem::Remove {
                    seq: 2,
                    action: Action::Ban,
                    target: x,
                    group: None,
                },
                StreamItem::Put {
                    seq: 3,
                    decision: network_ban(t0.saturating_add(Duration::from_secs(30)), "6s"),
                },
            ],
            now,
        )
        .unwrap();
        assert_eq!(f.kernel(), Vec::<String>::new());
        let reader = core.store().read().unwrap();
        assert!(
            reader.get(Action::Ban, &x).unwrap().is_none(),
            "the unbanned decision stays in the store"
        );
    }

    #[test]
    fn a_network_ban_under_an_allow_is_kept_shadowed_whatever_the_batch_order() {
        use palisade_wire::StreamItem;
        let f = Fixture::new();
        let mut core = f.core(&[]);
        let now = Timestamp::now();
        let network = |action, target: &str| {
            Decision::new(
                action,
                n(target),
                now,
                Span::Forever,
                Origin::new("web3", Source::Cli),
            )
        };
        let put = |seq, action, target| StreamItem::Put {
            seq,
            decision: network(action, target),
        };
        core.remote(vec![put(1, Action::Allow, "198.51.100.0/29")], now)
            .unwrap();
        // Caught up in one batch: a ban under the allow (kept, shadowed),
        // the allow lifted, a ban made after that. Both apply now.
        let newly = core
            .remote(
                vec![
                    put(2, Action::Ban, "198.51.100.6"),
                    StreamItem::Remove {
                        seq: 3,
                        action: Action::Allow,
                        target: n("198.51.100.0/29"),
                        group: None,
                    },
                    put(4, Action::Ban, "198.51.100.7"),
                ],
                now,
            )
            .unwrap();
        assert_eq!(newly, [n("198.51.100.6"), n("198.51.100.7")]);
        assert_eq!(f.kernel(), ["ban 198.51.100.6", "ban 198.51.100.7"]);
        let verdict = |core: &Core, addr| {
            let reader = core.store().read().unwrap();
            reader.explain(n(addr), now).unwrap().verdict
        };
        for blocked in ["198.51.100.6", "198.51.100.7"] {
            assert_eq!(verdict(&core, blocked), Verdict::Blocked, "{blocked}");
        }
        // Allowed again: the bans stay, shadowed, and a new one under the
        // allow is kept too, without cutting connections.
        core.remote(vec![put(5, Action::Allow, "198.51.100.0/29")], now)
            .unwrap();
        let newly = core
            .remote(vec![put(6, Action::Ban, "198.51.100.5")], now)
            .unwrap();
        assert!(newly.is_empty(), "{newly:?}");
        assert_eq!(verdict(&core, "198.51.100.7"), Verdict::Allowed);
        assert_eq!(
            f.kernel(),
            [
                "ban 198.51.100.5",
                "ban 198.51.100.6",
                "ban 198.51.100.7",
                "allow 198.51.100.0/29"
            ]
        );
    }

    #[test]
    fn a_lone_agent_rolls_up_its_own_bans_and_allows_inside_win() {
        let f = Fixture::new();
        let mut core = f.core(&[("203.0.113.200", "office")]);
        core.settings.rollup = Some(palisade_policy::Rollup {
            hosts: 3,
            prefix_v4: Some(24),
            ..Default::default()
        });
        let now = Timestamp::now();
        for host in ["203.0.113.1", "203.0.113.2"] {
            core.ban(ban(&[host], Some("1h")), now).unwrap();
        }
        assert!(!f.kernel().contains(&"ban 203.0.113.0/24".to_string()));
        let applied = core.ban(ban(&["203.0.113.3"], Some("1h")), now).unwrap();
        assert!(applied.newly_banned.contains(&n("203.0.113.0/24")));
        let kernel = f.kernel();
        assert!(
            kernel.contains(&"ban 203.0.113.0/24".to_string()),
            "{kernel:?}"
        );
        assert!(
            !kernel.contains(&"ban 203.0.113.1".to_string()),
            "{kernel:?}"
        );
        assert!(
            kernel.contains(&"allow 203.0.113.200".to_string()),
            "{kernel:?}"
        );
        let story = core
            .store()
            .read()
            .unwrap()
            .explain(n("203.0.113.9"), now)
            .unwrap();
        let by = &story.banned_by[0];
        assert_eq!(by.rule.as_deref(), Some(palisade_policy::rollup::RULE));
        assert_eq!(by.scope, Scope::Local);
        assert!(
            by.evidence[0].contains("203.0.113.1 (ban, cli on web1)"),
            "{:?}",
            by.evidence
        );
        assert_eq!(by.expires.unwrap().since(by.created).as_secs(), 3600);
        // Rolled up again after the first ended: twice as long.
        core.unban(targets(&["203.0.113.0/24"])).unwrap();
        for host in ["203.0.113.11", "203.0.113.12", "203.0.113.13"] {
            core.ban(ban(&[host], Some("1h")), now).unwrap();
        }
        let again = core
            .store()
            .read()
            .unwrap()
            .get(Action::Ban, &n("203.0.113.0/24"))
            .unwrap()
            .expect("rolled up again");
        assert_eq!(again.expires.unwrap().since(again.created).as_secs(), 7200);
        assert!(
            again
                .reason
                .as_deref()
                .unwrap()
                .contains("offence 2 of this network"),
            "{:?}",
            again.reason
        );
        // A network holding infrastructure is never rolled up.
        core.settings.infrastructure = vec![(n("198.51.100.1"), "the hub".into())];
        for host in ["198.51.100.2", "198.51.100.3", "198.51.100.4"] {
            core.ban(ban(&[host], Some("1h")), now).unwrap();
        }
        assert!(!f.kernel().contains(&"ban 198.51.100.0/24".to_string()));
    }
}

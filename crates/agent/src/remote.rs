//! The network's side of the core: applying the decision stream, and what
//! the network answered about this node's intents.
//!
//! Decisions from the network are applied through the same safety rules as
//! local ones and keep their provenance; this node's allowlist wins here
//! too, by shadowing (a network ban it covers is kept and enforced behind
//! the allow, and applies again when the allow goes).
//! Decisions of scope `local` are this node's own and the network never
//! touches them. The stream's cursor is stored in the same transaction as
//! the decisions it brought, so a crash can neither skip nor repeat them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use palisade_enforce::Change;
use palisade_model::{Action, Decision, Net, Scope, Source, Timestamp};
use palisade_wire::{Intent, IntentOutcome, IntentResult, StreamItem};
use tracing::{debug, info, warn};

use crate::core::{AllowInfo, Core, CoreError, entry};
use crate::cursor::{CURSOR, Snapshot};
use crate::outbox::{ID_BASE, pending};

/// The decisions a batch of stream items will store, the last one for
/// each (action, target) (found by hash: a snapshot's batches hold
/// thousands).
struct ToStore {
    list: Vec<Decision>,
    at: HashMap<(Action, Net), usize>,
}

impl ToStore {
    fn with_capacity(n: usize) -> ToStore {
        ToStore {
            list: Vec::with_capacity(n),
            at: HashMap::with_capacity(n),
        }
    }

    fn put(&mut self, d: Decision) {
        match self.at.entry((d.action, d.target)) {
            Entry::Occupied(e) => self.list[*e.get()] = d,
            Entry::Vacant(e) => {
                e.insert(self.list.len());
                self.list.push(d);
            }
        }
    }

    fn contains(&self, key: &(Action, Net)) -> bool {
        self.at.contains_key(key)
    }

    /// Takes back a pending decision (a removal later in the same batch).
    fn take(&mut self, key: &(Action, Net)) -> Option<Decision> {
        let i = self.at.remove(key)?;
        let d = self.list.remove(i);
        for at in self.at.values_mut() {
            if *at > i {
                *at -= 1;
            }
        }
        Some(d)
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Core {
    /// Applies items of the decision stream; returns the networks newly
    /// banned (to cut their connections).
    pub fn remote(
        &mut self,
        items: Vec<StreamItem>,
        now: Timestamp,
    ) -> Result<Vec<Net>, CoreError> {
        let started = std::time::Instant::now();
        let count = items.len();
        // Sized for a batch of puts: growing vectors of decisions by
        // copying showed up as a tenth of a snapshot's time.
        let mut changes = Vec::with_capacity(count);
        let mut to_store = ToStore::with_capacity(count);
        let mut to_remove: Vec<(Action, Net)> = Vec::new();
        let mut newly = Vec::new();
        let mut cursor = None;
        let mut sweep: Option<Snapshot> = None;
        let reader = self.store.read()?;
        let rows = || -> Result<u64, CoreError> {
            let c = reader.counts()?;
            Ok(c.ban_hosts + c.ban_networks + c.allows)
        };
        if let Some(s) = &mut self.snapshot
            && let Some(n) = s.only_ours
            && rows()? != n
        {
            s.only_ours = None;
        }
        for item in items {
            match item {
                StreamItem::Snapshot { seq } => {
                    info!(seq, "receiving a snapshot of the network's decisions");
                    // The allows of the network's own addresses are made at
                    // start and never replaced: a store holding only them
                    // is as good as empty.
                    let infrastructure = self.settings.infrastructure.len() as u64;
                    let empty =
                        rows()? == infrastructure && to_store.is_empty() && to_remove.is_empty();
                    self.snapshot = Some(Snapshot {
                        seq,
                        seen: (!empty).then(HashSet::new),
                        count: 0,
                        only_ours: empty.then_some(infrastructure),
                    });
                }
                StreamItem::Put { seq, decision } => {
                    let mut lookup = true;
                    match &mut self.snapshot {
                        Some(s) => {
                            s.count += 1;
                            if let Some(seen) = &mut s.seen {
                                seen.insert((decision.action, decision.target));
                            }
                            lookup = s.only_ours.is_none();
                        }
                        None => cursor = Some(seq),
                    }
                    let key = (decision.action, decision.target);
                    let kept = self.remote_put(
                        decision,
                        &reader,
                        lookup,
                        now,
                        &mut changes,
                        &mut to_store,
                        &mut newly,
                    )?;
                    // A removal earlier in this batch is superseded by a
                    // put that is kept (the store applies a batch's puts
                    // before its removals). A put that is not (expired
                    // already, as when a node catches up on a ban, its
                    // unban and a short ban since; or not for this node)
                    // leaves the removal standing, or the old decision
                    // would outlive its unban in the store.
                    if kept {
                        to_remove.retain(|k| *k != key);
                    }
                }
                StreamItem::Remove {
                    seq,
                    action,
                    target,
                    ..
                } => {
                    if self.snapshot.is_none() {
                        cursor = Some(seq);
                    }
                    // The decision may have come earlier in this very batch
                    // (an agent catching up receives a ban and its unban
                    // together): it is not in the store yet.
                    let pending = to_store.take(&(action, target));
                    let stored = reader
                        .get(action, &target)?
                        .filter(|d| d.scope == Scope::Network);
                    if stored.is_some() {
                        to_remove.push((action, target));
                    }
                    if pending.is_some() && action == Action::Ban {
                        // Lifted before it was enforced: no connection of
                        // its to cut.
                        newly.retain(|n| *n != target);
                    }
                    if stored.is_some() || pending.is_some() {
                        changes.push(Change::Remove {
                            action,
                            net: target,
                        });
                    }
                }
                StreamItem::SnapshotEnd { seq } => {
                    if let Some(s) = self.snapshot.take() {
                        if s.seq == seq {
                            sweep = Some(s);
                        } else {
                            warn!(
                                begun = s.seq,
                                ended = seq,
                                "a snapshot ended with another number than it began; ignored"
                            );
                        }
                    }
                    cursor = Some(seq);
                }
                StreamItem::Ping { .. } => {}
            }
        }
        drop(reader);
        // Network decisions the snapshot did not bring are gone from the
        // network; this node's own intents still on their way are kept.
        if let Some(s) = sweep.as_ref().filter(|s| s.seen.is_none()) {
            info!(decisions = s.count, "snapshot applied");
        } else if let Some(Snapshot {
            seen: Some(seen),
            count,
            ..
        }) = sweep
        {
            let waiting: HashSet<Net> = pending(&self.store, usize::MAX)?
                .iter()
                .map(|e| e.intent.target())
                .collect();
            let reader = self.store.read()?;
            let mut stale = 0;
            for d in reader.iter(None)? {
                let d = d?;
                let key = (d.action, d.target);
                if d.scope == Scope::Network
                    && !seen.contains(&key)
                    && !waiting.contains(&d.target)
                    && !to_store.contains(&key)
                {
                    to_remove.push(key);
                    changes.push(Change::Remove {
                        action: d.action,
                        net: d.target,
                    });
                    stale += 1;
                }
            }
            info!(decisions = count, removed_stale = stale, "snapshot applied");
        }
        if changes.is_empty() && to_store.is_empty() && to_remove.is_empty() && cursor.is_none() {
            return Ok(newly);
        }
        let decided = started.elapsed();
        self.enforce_changes(&changes);
        let enforced = started.elapsed();
        // Not flushed: after a crash, these decisions and the cursor that
        // brought them are lost together and fetched again from the network.
        self.store
            .write_lazy(|w| {
                for d in &to_store.list {
                    w.put(d)?;
                }
                for (action, net) in &to_remove {
                    w.remove(*action, net)?;
                }
                if let Some(c) = cursor {
                    w.set_meta(CURSOR, c)?;
                }
                Ok(())
            })
            .map_err(|source| CoreError::NotSaved {
                what: "decisions from the network".into(),
                source,
            })?;
        if let Some(s) = &mut self.snapshot
            && let Some(n) = &mut s.only_ours
        {
            *n += to_store.len() as u64;
        }
        debug!(
            items = count,
            decide_ms = decided.as_secs_f64() * 1e3,
            enforce_ms = (enforced - decided).as_secs_f64() * 1e3,
            store_ms = (started.elapsed() - enforced).as_secs_f64() * 1e3,
            "applied stream items"
        );
        for d in &to_store.list {
            if d.action == Action::Allow {
                self.allows.insert(
                    d.target,
                    AllowInfo {
                        comment: d.reason.clone(),
                        source: d.origin.source,
                    },
                );
            }
        }
        for (action, net) in &to_remove {
            if *action == Action::Allow {
                self.allows.remove(net);
            }
        }
        // Connections are cut only where the new ban is not shadowed.
        newly.retain(|net| self.allows.covering(net).next().is_none());
        if to_store.len() + to_remove.len() <= 20 {
            for d in &to_store.list {
                info!(action = %d.action, target = %d.target, origin = %d.origin, "from the network");
            }
            for (action, net) in &to_remove {
                info!(action = %action, target = %net, "lifted by the network");
            }
        }
        Ok(newly)
    }

    /// Applies one put of the stream through this node's guard; true when
    /// it is kept (stored and enforced).
    #[allow(clippy::too_many_arguments)]
    fn remote_put(
        &mut self,
        mut d: Decision,
        reader: &palisade_store::Reader,
        // False: nothing for this target can be in the store.
        lookup: bool,
        now: Timestamp,
        changes: &mut Vec<Change>,
        to_store: &mut ToStore,
        newly: &mut Vec<Net>,
    ) -> Result<bool, CoreError> {
        if !d.is_active(now) {
            return Ok(false);
        }
        d.scope = Scope::Network;
        if !lookup
            && d.action == Action::Allow
            && self
                .settings
                .infrastructure
                .iter()
                .any(|(n, _)| *n == d.target)
        {
            // Already allowed here, locally and for good.
            return Ok(false);
        }
        let existing = if lookup {
            reader.get(d.action, &d.target)?
        } else {
            None
        };
        if existing
            .as_ref()
            .is_some_and(|e| e.scope == Scope::Local && e.is_active(now))
        {
            // This node's own decision stays as it is.
            return Ok(false);
        }
        match d.action {
            Action::Ban => {
                // The safety rules refuse (loopback, too broad, ...); an
                // allow entry does not: the ban is kept, shadowed (the
                // kernel accepts allowed sources first), and applies again
                // if the allow goes, as everywhere else. So a ban and an
                // unallow caught up in one batch, or a snapshot bringing
                // a ban with the allow that shadows it, end as the
                // network has them whatever this node's allowlist held
                // when the batch began.
                let no_allows = palisade_model::NetMap::<()>::new();
                if let Err(refusal) = self
                    .settings
                    .guard
                    .check_ban(&d.target, &no_allows, |_| None)
                {
                    debug!(target = %d.target, reason = %refusal, "a ban from the network does not apply here");
                    return Ok(false);
                }
                // Nor does one covering the hub or a broker this node
                // joins: not even an enforcer without allow entries (a
                // command) may cut it off from the network.
                if let Some((net, why)) = self
                    .settings
                    .infrastructure
                    .iter()
                    .find(|(n, _)| n.overlaps(&d.target))
                {
                    warn!(target = %d.target, covers = %net, why = %why, "a ban from the network covers the network itself; not applied here");
                    return Ok(false);
                }
                if existing.is_none_or(|e| !e.is_active(now)) {
                    newly.push(d.target);
                }
            }
            Action::Allow => {
                // Bans inside stay, shadowed (the kernel accepts allowed
                // sources first). An allow no hub should send is refused
                // here too.
                if let Err(refusal) = self.settings.guard.check_allow(&d.target) {
                    warn!(target = %d.target, reason = %refusal, "an allow entry from the network does not apply here");
                    return Ok(false);
                }
            }
        }
        changes.push(Change::Put(entry(&d)));
        to_store.put(d);
        Ok(true)
    }

    /// What the network answered about intents sent from the outbox: they
    /// leave the outbox, and a refused one takes back what this node did
    /// on its own in the meantime.
    ///
    /// Returns true when this node lifted something on its own that the
    /// network refused to lift (an unban or unallow of what another node
    /// or the operator decided): its stream cursor is reset, so the next
    /// connection brings the whole state again and puts it back.
    pub fn results(&mut self, results: &[IntentResult]) -> Result<bool, CoreError> {
        let Some(last) = results.iter().map(|r| r.id).max() else {
            return Ok(false);
        };
        let mut resync = false;
        let sent = pending(&self.store, results.len().max(1) * 2 + 16)?;
        let mut take_back = Vec::new();
        let mut take_back_allows = Vec::new();
        let mut realign = Vec::new();
        for r in results {
            if r.outcome == IntentOutcome::Suppressed
                && let Some(Intent::Ban { target, .. }) =
                    sent.iter().find(|e| e.id == r.id).map(|e| &e.intent)
            {
                // A repeat the network recorded without broadcasting: its
                // ban keeps the expiry the answer names, and so does this
                // node's (it applied its own repeat provisionally).
                realign.push((*target, r.expires));
                continue;
            }
            if !r.outcome.is_refusal() {
                continue;
            }
            let Some(env) = sent.iter().find(|e| e.id == r.id) else {
                continue;
            };
            warn!(
                intent = ?env.intent,
                reason = r.reason.as_deref().unwrap_or("no reason given"),
                "the network refused this node's request"
            );
            if matches!(env.intent, Intent::Unban { .. } | Intent::Unallow { .. }) {
                resync = true;
            }
            if let Intent::Ban { target, source, .. } = &env.intent
                && let Some(d) = self.store.read()?.get(Action::Ban, target)?
                && d.scope == Scope::Network
                && d.origin.node == self.settings.node
                && d.origin.source == *source
                && *source != Source::Detector
            {
                // A detector's own ban protects this node whatever the
                // network decides; an operator's or a program's request
                // for the network is taken back.
                take_back.push(*target);
            }
            if let Intent::Allow {
                target,
                group: None,
                ..
            } = &env.intent
                && let Some(d) = self.store.read()?.get(Action::Allow, target)?
                && d.scope == Scope::Network
                && d.origin.node == self.settings.node
                && d.origin.source == Source::Cli
            {
                // An allow the network refused (a node may not allow for
                // everyone) is not kept here as if it were the network's.
                take_back_allows.push(*target);
            }
        }
        let base = self.store.read()?.meta(ID_BASE)?;
        let through = last.saturating_sub(base);
        // Not flushed: intents answered but still in the outbox after a
        // crash are sent again, and the network skips them by their ids.
        self.store.write_lazy(|w| {
            w.drop_through(crate::outbox::OUTBOX, through)?;
            if resync {
                w.set_meta(CURSOR, 0)?;
            }
            Ok(())
        })?;
        if resync {
            warn!(
                "this node lifted something the network keeps; reading the network's state again"
            );
        }
        if !take_back.is_empty() {
            self.remove_all(Action::Ban, &take_back, &[])?;
        }
        if !take_back_allows.is_empty() {
            self.remove_all(Action::Allow, &take_back_allows, &[])?;
        }
        self.realign(&realign)?;
        Ok(resync)
    }

    /// Sets this node's own network bans to the expiry the network holds
    /// for them (kernel, then store).
    fn realign(&mut self, bans: &[(Net, Option<Timestamp>)]) -> Result<(), CoreError> {
        let reader = self.store.read()?;
        let mut changed = Vec::new();
        for (target, expires) in bans {
            if let Some(mut d) = reader.get(Action::Ban, target)?
                && d.scope == Scope::Network
                && d.origin.node == self.settings.node
                && d.expires != *expires
            {
                d.expires = *expires;
                changed.push(d);
            }
        }
        drop(reader);
        if changed.is_empty() {
            return Ok(());
        }
        let changes: Vec<Change> = changed.iter().map(|d| Change::Put(entry(d))).collect();
        self.enforce_changes(&changes);
        self.store.write(|w| {
            for d in &changed {
                w.put(d)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

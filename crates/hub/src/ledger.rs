//! The policy's [`Ledger`] over the hub's store.
//!
//! Every change the policy broadcasts is appended to the event queue in the
//! same store transaction as the decision itself, so the stream can never
//! disagree with the decisions: an acknowledged decision and its event are
//! both on disk, or neither is.

use std::sync::Arc;

use bytes::Bytes;
use palisade_model::{Action, Decision, Net, Timestamp};
use palisade_policy::{Ledger, NodeRecord, Offender, Report};
use palisade_store::{StoreError, Writer};
use palisade_wire::StreamItem;

use crate::records::{group_key, json, record};
use crate::tables;

/// An event to hand to live stream readers once its transaction commits.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub seq: u64,
    /// Only the nodes of this group receive it.
    pub group: Option<Arc<str>>,
    /// The JSON line, newline included, exactly as stored.
    pub line: Bytes,
}

pub struct StoreLedger<'w, 'tx> {
    pub w: &'w mut Writer<'tx>,
    pub events: Vec<LiveEvent>,
    pub now: Timestamp,
    /// New bans made in this transaction: (rule, target), for the
    /// dashboard's activity counters.
    pub new_bans: Vec<(Option<String>, Net)>,
}

impl<'w, 'tx> StoreLedger<'w, 'tx> {
    pub fn new(w: &'w mut Writer<'tx>, now: Timestamp) -> Self {
        StoreLedger {
            w,
            events: Vec::new(),
            now,
            new_bans: Vec::new(),
        }
    }

    fn emit(
        &mut self,
        group: Option<&str>,
        item: impl FnOnce(u64) -> StreamItem,
    ) -> Result<(), StoreError> {
        let mut line = Vec::new();
        let seq = self.w.push_with(tables::EVENTS, |seq| {
            serde_json::to_writer(&mut line, &item(seq)).expect("a stream item serializes");
            line.push(b'\n');
            record(group, &line)
        })?;
        self.events.push(LiveEvent {
            seq,
            group: group.map(Arc::from),
            line: Bytes::from(line),
        });
        Ok(())
    }

    /// Stores a decision (in its group's namespace if it has one).
    fn store(&mut self, d: &Decision) -> Result<(), StoreError> {
        match &d.group {
            None => self.w.put(d).map(|_| ()),
            Some(g) => self
                .w
                .map_put(tables::GROUP_ALLOWS, &group_key(g, &d.target), &json(d)),
        }
    }
}

impl Ledger for StoreLedger<'_, '_> {
    type Error = StoreError;

    fn get(
        &self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, StoreError> {
        match group {
            None => self.w.get(action, target),
            Some(g) if action == Action::Allow => Ok(self
                .w
                .map_get(tables::GROUP_ALLOWS, &group_key(g, target))?
                .and_then(|b| serde_json::from_slice(&b).ok())),
            Some(_) => Ok(None),
        }
    }

    fn allows_covering(&self, target: &Net) -> Result<Vec<Decision>, StoreError> {
        let now = self.now;
        let mut out = Vec::new();
        for sup in target.supernets() {
            if let Some(d) = self.w.get(Action::Allow, &sup)?
                && d.is_active(now)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn all_allows(&self) -> Result<Vec<Decision>, StoreError> {
        let mut out = self.w.all(Action::Allow)?;
        for (_, bytes) in self.w.map_entries(tables::GROUP_ALLOWS)? {
            if let Ok(d) = serde_json::from_slice::<Decision>(&bytes) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn bans_within(&self, network: &Net) -> Result<Vec<Decision>, StoreError> {
        self.w.within(Action::Ban, network)
    }

    fn put(&mut self, d: &Decision) -> Result<(), StoreError> {
        self.store(d)?;
        if d.action == Action::Ban && d.created == d.updated {
            self.new_bans.push((d.rule.clone(), d.target));
        }
        let decision = d.clone();
        self.emit(d.group.as_deref(), |seq| StreamItem::Put { seq, decision })
    }

    fn touch(&mut self, d: &Decision) -> Result<(), StoreError> {
        self.store(d)
    }

    fn remove(
        &mut self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, StoreError> {
        let old = match group {
            None => self.w.remove(action, target)?,
            Some(g) => self
                .w
                .map_remove(tables::GROUP_ALLOWS, &group_key(g, target))?
                .and_then(|b| serde_json::from_slice(&b).ok()),
        };
        if old.is_some() {
            let (target, group_owned) = (*target, group.map(String::from));
            self.emit(group, |seq| StreamItem::Remove {
                seq,
                action,
                target,
                group: group_owned,
            })?;
        }
        Ok(old)
    }

    fn offender(&self, target: &Net) -> Result<Option<Offender>, StoreError> {
        Ok(self
            .w
            .map_get(tables::OFFENDERS, &target.to_string())?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn set_offender(&mut self, target: &Net, o: Option<Offender>) -> Result<(), StoreError> {
        match o {
            Some(o) => self
                .w
                .map_put(tables::OFFENDERS, &target.to_string(), &json(&o)),
            None => self
                .w
                .map_remove(tables::OFFENDERS, &target.to_string())
                .map(|_| ()),
        }
    }

    fn reports(&self, target: &Net) -> Result<Vec<Report>, StoreError> {
        Ok(self
            .w
            .map_get(tables::QUORUM, &target.to_string())?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    fn set_reports(&mut self, target: &Net, r: &[Report]) -> Result<(), StoreError> {
        if r.is_empty() {
            self.w
                .map_remove(tables::QUORUM, &target.to_string())
                .map(|_| ())
        } else {
            self.w
                .map_put(tables::QUORUM, &target.to_string(), &json(&r))
        }
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .w
            .map_get(tables::NODES, name)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn set_node(&mut self, record: &NodeRecord) -> Result<(), StoreError> {
        self.w.map_put(tables::NODES, &record.name, &json(record))
    }
}

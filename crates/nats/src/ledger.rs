//! The policy's [`Ledger`] over the NATS buckets.
//!
//! A worker keeps a [`Mirror`] of both buckets (kept current by watches),
//! so the policy reads from memory, including the range queries (bans
//! inside a network) a KV store cannot answer. [`MirrorLedger`] stages
//! what the policy writes; the worker then writes each changed key with
//! the revision it read as a precondition, so two workers deciding about
//! the same address at once cannot both win: the loser reads again and
//! decides again.

use std::collections::HashMap;
use std::convert::Infallible;

use palisade_model::{Action, Decision, Net, Timestamp};
use palisade_policy::{Ledger, NodeRecord, Offender, Report};
use palisade_wire::keys;

/// A key's newest revision and value (None: removed, a tombstone).
#[derive(Debug, Clone)]
pub struct Slot<T> {
    /// The key's revision in its bucket.
    pub rev: u64,
    /// Its value; `None` once removed.
    pub value: Option<T>,
}

/// What a worker knows of the buckets.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The decisions bucket, by key.
    pub decisions: HashMap<String, Slot<Decision>>,
    /// The state bucket (what the policy keeps besides decisions), by key.
    pub state: HashMap<String, Slot<Vec<u8>>>,
    /// The newest decisions revision seen, from the watch or from this
    /// worker's own acknowledged writes: the bucket holds at least that
    /// much (unlike the watch's position, it moves while the watch is
    /// broken and the writes go through).
    pub decisions_seen: u64,
}

impl Mirror {
    /// Takes a decision key's newer value (older revisions are ignored).
    pub fn set_decision(&mut self, key: &str, rev: u64, value: Option<Decision>) {
        self.decisions_seen = self.decisions_seen.max(rev);
        set(&mut self.decisions, key, rev, value)
    }

    /// Takes a state key's newer value (older revisions are ignored).
    pub fn set_state(&mut self, key: &str, rev: u64, value: Option<Vec<u8>>) {
        set(&mut self.state, key, rev, value)
    }

    /// The decision under `key`, unless removed.
    pub fn decision(&self, key: &str) -> Option<&Decision> {
        self.decisions.get(key).and_then(|s| s.value.as_ref())
    }

    /// The state record under `key`, unless removed.
    pub fn state(&self, key: &str) -> Option<&[u8]> {
        self.state.get(key).and_then(|s| s.value.as_deref())
    }

    /// The revision a write of `key` must find (0: the key never held a
    /// value, or its values are gone).
    pub fn decision_rev(&self, key: &str) -> u64 {
        self.decisions.get(key).map_or(0, |s| s.rev)
    }

    /// The revision a write of state `key` must find (0: never held a value).
    pub fn state_rev(&self, key: &str) -> u64 {
        self.state.get(key).map_or(0, |s| s.rev)
    }
}

fn set<T>(map: &mut HashMap<String, Slot<T>>, key: &str, rev: u64, value: Option<T>) {
    match map.get_mut(key) {
        Some(slot) if slot.rev > rev => {}
        Some(slot) => *slot = Slot { rev, value },
        None => {
            map.insert(key.to_string(), Slot { rev, value });
        }
    }
}

/// Key of an offender record in the state bucket.
pub fn offender_key(target: &Net) -> String {
    format!("offender.{}", keys::net_token(target))
}

/// Key of a quorum record in the state bucket.
pub fn quorum_key(target: &Net) -> String {
    format!("quorum.{}", keys::net_token(target))
}

/// Key of a node record in the state bucket.
pub fn node_key(name: &str) -> String {
    format!("node.{}", crate::subject_token(name))
}

/// The policy's view: the mirror, with what this decision has changed
/// so far laid over it.
pub struct MirrorLedger<'m> {
    mirror: &'m Mirror,
    now: Timestamp,
    decisions: HashMap<String, Option<Decision>>,
    decision_order: Vec<String>,
    state: HashMap<String, Option<Vec<u8>>>,
    state_order: Vec<String>,
}

/// Staged writes: decisions first (what every node waits for), then state.
#[derive(Debug, Default)]
pub struct Writes {
    /// Decision keys and their new values (`None`: remove).
    pub decisions: Vec<(String, Option<Decision>)>,
    /// State keys and their new values (`None`: remove).
    pub state: Vec<(String, Option<Vec<u8>>)>,
}

impl Writes {
    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.state.is_empty()
    }
}

impl<'m> MirrorLedger<'m> {
    /// A ledger over `mirror` at `now`, with nothing staged.
    pub fn new(mirror: &'m Mirror, now: Timestamp) -> Self {
        MirrorLedger {
            mirror,
            now,
            decisions: HashMap::new(),
            decision_order: Vec::new(),
            state: HashMap::new(),
            state_order: Vec::new(),
        }
    }

    fn decision(&self, key: &str) -> Option<Decision> {
        match self.decisions.get(key) {
            Some(staged) => staged.clone(),
            None => self.mirror.decision(key).cloned(),
        }
    }

    fn stage_decision(&mut self, key: String, value: Option<Decision>) {
        if !self.decisions.contains_key(&key) {
            self.decision_order.push(key.clone());
        }
        self.decisions.insert(key, value);
    }

    /// The state record under `key`: staged, else the mirror's.
    pub fn get_state(&self, key: &str) -> Option<Vec<u8>> {
        match self.state.get(key) {
            Some(staged) => staged.clone(),
            None => self.mirror.state(key).map(<[u8]>::to_vec),
        }
    }

    /// Stages a state record (`None`: remove).
    pub fn set_state(&mut self, key: String, value: Option<Vec<u8>>) {
        if !self.state.contains_key(&key) {
            self.state_order.push(key.clone());
        }
        self.state.insert(key, value);
    }

    /// Every global decision of `action` (mirror and staged).
    pub fn all(&self, action: Action) -> Vec<Decision> {
        let prefix = match action {
            Action::Ban => "ban.",
            Action::Allow => "allow.",
        };
        let mut out: Vec<Decision> = self
            .mirror
            .decisions
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && !self.decisions.contains_key(*k))
            .filter_map(|(_, s)| s.value.clone())
            .collect();
        out.extend(
            self.decisions
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .filter_map(|(_, v)| v.clone()),
        );
        out.retain(|d| d.group.is_none());
        out
    }

    /// What changed, in the order it was first changed; keys that end as
    /// they were are left out.
    pub fn into_writes(self) -> Writes {
        let mut w = Writes::default();
        for k in self.decision_order {
            let v = self.decisions.get(&k).cloned().flatten();
            if v.is_none() && self.mirror.decision(&k).is_none() {
                continue;
            }
            w.decisions.push((k, v));
        }
        for k in self.state_order {
            let v = self.state.get(&k).cloned().flatten();
            if v.as_deref() == self.mirror.state(&k) {
                continue;
            }
            w.state.push((k, v));
        }
        w
    }
}

impl Ledger for MirrorLedger<'_> {
    type Error = Infallible;

    fn get(
        &self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Infallible> {
        if group.is_some() && action == Action::Ban {
            return Ok(None);
        }
        Ok(self.decision(&keys::decision_key(action, target, group)))
    }

    fn allows_covering(&self, target: &Net) -> Result<Vec<Decision>, Infallible> {
        let mut out = Vec::new();
        for sup in target.supernets() {
            if let Some(d) = self.decision(&keys::decision_key(Action::Allow, &sup, None))
                && d.is_active(self.now)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn all_allows(&self) -> Result<Vec<Decision>, Infallible> {
        let mut out: Vec<Decision> = self
            .mirror
            .decisions
            .iter()
            .filter(|(k, _)| k.starts_with("allow") && !self.decisions.contains_key(*k))
            .filter_map(|(_, s)| s.value.clone())
            .collect();
        out.extend(
            self.decisions
                .iter()
                .filter(|(k, _)| k.starts_with("allow"))
                .filter_map(|(_, v)| v.clone()),
        );
        Ok(out)
    }

    fn bans_within(&self, network: &Net) -> Result<Vec<Decision>, Infallible> {
        // The mirror is a hash map: a scan. The policy asks only after a
        // new host ban whose network could be rolled up and is not refused.
        let mut out = self.all(Action::Ban);
        out.retain(|d| d.target != *network && network.contains(&d.target));
        Ok(out)
    }

    fn put(&mut self, d: &Decision) -> Result<(), Infallible> {
        let key = keys::decision_key(d.action, &d.target, d.group.as_deref());
        self.stage_decision(key, Some(d.clone()));
        Ok(())
    }

    fn touch(&mut self, _d: &Decision) -> Result<(), Infallible> {
        // A suppressed repeat: every write to the bucket reaches every
        // node, so it is answered, not written.
        Ok(())
    }

    fn remove(
        &mut self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Infallible> {
        let key = keys::decision_key(action, target, group);
        let old = self.decision(&key);
        if old.is_some() {
            self.stage_decision(key, None);
        }
        Ok(old)
    }

    fn offender(&self, target: &Net) -> Result<Option<Offender>, Infallible> {
        Ok(self
            .get_state(&offender_key(target))
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn set_offender(&mut self, target: &Net, o: Option<Offender>) -> Result<(), Infallible> {
        let v = o.map(|o| serde_json::to_vec(&o).expect("a record serializes"));
        self.set_state(offender_key(target), v);
        Ok(())
    }

    fn reports(&self, target: &Net) -> Result<Vec<Report>, Infallible> {
        Ok(self
            .get_state(&quorum_key(target))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    fn set_reports(&mut self, target: &Net, r: &[Report]) -> Result<(), Infallible> {
        let v = (!r.is_empty()).then(|| serde_json::to_vec(r).expect("a record serializes"));
        self.set_state(quorum_key(target), v);
        Ok(())
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, Infallible> {
        Ok(self
            .get_state(&node_key(name))
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    fn set_node(&mut self, record: &NodeRecord) -> Result<(), Infallible> {
        self.set_state(
            node_key(&record.name),
            Some(serde_json::to_vec(record).expect("a record serializes")),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Origin, Source, Span};
    use palisade_policy::{Node, Policy, PolicyOptions};
    use palisade_wire::{Envelope, Intent, IntentOutcome};

    fn ban(target: &str) -> Envelope {
        Envelope {
            id: 1,
            at: Timestamp::now(),
            intent: Intent::Ban {
                target: target.parse().unwrap(),
                span: Some("1h".parse().unwrap()),
                rule: None,
                reason: None,
                evidence: vec![],
                source: Source::Detector,
                list: None,
                actor: None,
                unverified: false,
            },
        }
    }

    #[test]
    fn the_policy_runs_over_the_mirror_and_stages_its_writes() {
        let mut mirror = Mirror::default();
        let office: Net = "198.51.100.0/24".parse().unwrap();
        let allow = Decision::new(
            Action::Allow,
            office,
            Timestamp::now(),
            Span::Forever,
            Origin::new("hub", Source::Config),
        );
        mirror.set_decision(
            &keys::decision_key(Action::Allow, &office, None),
            3,
            Some(allow),
        );
        let policy = Policy::new(PolicyOptions::default());
        let node = Node::member("web1", None, palisade_wire::Role::Node);
        let now = Timestamp::now();

        let mut l = MirrorLedger::new(&mirror, now);
        let r = policy
            .decide(&mut l, &node, &ban("198.51.100.7"), now)
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused);
        assert!(l.into_writes().is_empty());

        let mut l = MirrorLedger::new(&mirror, now);
        let r = policy
            .decide(&mut l, &node, &ban("203.0.113.7"), now)
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Accepted);
        let w = l.into_writes();
        assert_eq!(w.decisions.len(), 1);
        assert_eq!(w.decisions[0].0, "ban.203-0-113-7");
        assert_eq!(w.state.len(), 1, "the offence is recorded");
        assert_eq!(w.state[0].0, "offender.203-0-113-7");

        // Older revisions never replace newer ones.
        mirror.set_decision("ban.203-0-113-7", 9, None);
        mirror.set_decision("ban.203-0-113-7", 5, w.decisions[0].1.clone());
        assert!(mirror.decision("ban.203-0-113-7").is_none());
        assert_eq!(mirror.decision_rev("ban.203-0-113-7"), 9);
    }
}

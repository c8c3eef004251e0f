//! The bans a bouncer may see, numbered: every change gets the next stream
//! number, so a bouncer's position is one number and its next answer is
//! exactly what changed after it, each decision once, in its latest state.
//!
//! The journal is rebuilt from store snapshots (the agent's or the hub's;
//! it never writes to them): [`Journal::refresh`] compares the bans it
//! holds with a snapshot's and numbers the differences. Deletions are kept
//! as tombstones up to [`MAX_TOMBSTONES`]; a bouncer whose position is older
//! than the oldest one kept gets the whole state, as at its start-up.

use std::collections::{BTreeMap, HashMap};

use palisade_model::{Action, Decision, Net, Source, Timestamp};
use palisade_store::{Reader, StoreError};

/// Deletions remembered for bouncers that have not pulled them yet.
pub const MAX_TOMBSTONES: usize = 200_000;

/// A ban as CrowdSec's bouncers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The decision id bouncers see, unique within this process.
    pub id: u64,
    /// The banned address or network.
    pub target: Net,
    /// The origin bouncers filter on ([`origin`]).
    pub origin: String,
    /// The scenario bouncers filter on ([`scenario`]).
    pub scenario: String,
    /// When the ban ends (for a deleted one: when it was deleted or
    /// expired, whichever came first); `None` for a ban without end.
    pub until: Option<Timestamp>,
}

/// One change to send: the entry and whether it was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Bans made or changed since the reader's position.
    pub new: Vec<Entry>,
    /// Bans lifted or expired since the reader's position.
    pub deleted: Vec<Entry>,
    /// The stream number this answer brings its reader to.
    pub through: u64,
}

/// The bans as a numbered stream of changes, so each bouncer's
/// `/v1/decisions/stream` poll gets only what changed since its last one;
/// deletions are remembered (up to [`MAX_TOMBSTONES`]) until pulled.
#[derive(Debug, Default)]
pub struct Journal {
    live: HashMap<Net, (u64, Entry)>,
    /// Stream number of each live entry's latest state.
    live_by_seq: BTreeMap<u64, Net>,
    tombstones: BTreeMap<u64, Entry>,
    tombstone_of: HashMap<Net, u64>,
    /// The last stream number given out.
    seq: u64,
    next_id: u64,
    /// Positions at or below this may have missed a deletion.
    forgotten: u64,
    /// The earliest end of a live ban: past it, the snapshot is stale even
    /// if the store did not change.
    next_end: Option<Timestamp>,
}

/// The origin a CrowdSec bouncer expects for a palisade decision.
pub fn origin(d: &Decision) -> String {
    match d.origin.source {
        Source::Detector => "crowdsec".into(),
        Source::Cli => "cscli".into(),
        Source::Feed => "lists".into(),
        Source::Report => d.origin.actor.clone().unwrap_or_else(|| "report".into()),
        Source::Config | Source::Policy => "palisade".into(),
    }
}

/// The scenario a CrowdSec bouncer sees: palisade's rule; an operator's
/// ban without one reads as `cscli`'s do.
pub fn scenario(d: &Decision) -> String {
    match (&d.rule, d.origin.source) {
        (Some(rule), _) => rule.clone(),
        (None, Source::Cli) => format!(
            "manual 'ban' from '{}'",
            d.origin.actor.as_deref().unwrap_or(&d.origin.node)
        ),
        (None, source) => format!("palisade {source} ban"),
    }
}

/// The bans of a snapshot that a bouncer may enforce: active, and neither
/// inside nor around an allowed network (a bouncer has no allowlist, so a
/// range ban holding an allowed address would block it).
pub fn visible(reader: &Reader, now: Timestamp) -> Result<Vec<Decision>, StoreError> {
    let any_allow = reader.iter(Some(Action::Allow))?.next().is_some();
    let mut out = Vec::new();
    for d in reader.iter(Some(Action::Ban))? {
        let d = d?;
        if !d.is_active(now) {
            continue;
        }
        if any_allow
            && (!reader.covering(Action::Allow, &d.target)?.is_empty()
                || !reader.within(Action::Allow, &d.target)?.is_empty())
        {
            continue;
        }
        out.push(d);
    }
    Ok(out)
}

impl Journal {
    /// Numbers what changed between the bans held and `bans`.
    pub fn refresh(&mut self, bans: &[Decision], now: Timestamp) {
        let mut present: HashMap<Net, ()> = HashMap::with_capacity(bans.len());
        for d in bans {
            present.insert(d.target, ());
            let origin = origin(d);
            let scenario = scenario(d);
            let same = self.live.get(&d.target).is_some_and(|(_, e)| {
                e.until == d.expires && e.origin == origin && e.scenario == scenario
            });
            if same {
                continue;
            }
            let id = match self.live.get(&d.target) {
                Some((_, e)) => e.id,
                None => {
                    self.next_id += 1;
                    self.next_id
                }
            };
            let entry = Entry {
                id,
                target: d.target,
                origin,
                scenario,
                until: d.expires,
            };
            self.seq += 1;
            if let Some((old, _)) = self.live.insert(d.target, (self.seq, entry)) {
                self.live_by_seq.remove(&old);
            }
            self.live_by_seq.insert(self.seq, d.target);
            if let Some(t) = self.tombstone_of.remove(&d.target) {
                self.tombstones.remove(&t);
            }
        }
        let gone: Vec<Net> = self
            .live
            .keys()
            .filter(|n| !present.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            let (old, mut entry) = self.live.remove(&net).expect("listed above");
            self.live_by_seq.remove(&old);
            entry.until = Some(entry.until.map_or(now, |u| u.min(now)));
            self.seq += 1;
            self.tombstones.insert(self.seq, entry);
            self.tombstone_of.insert(net, self.seq);
        }
        while self.tombstones.len() > MAX_TOMBSTONES {
            let (seq, entry) = self.tombstones.pop_first().expect("not empty");
            self.tombstone_of.remove(&entry.target);
            self.forgotten = seq;
        }
        self.next_end = self.live.values().filter_map(|(_, e)| e.until).min();
    }

    /// The earliest end of a ban held (`None`: none ends).
    pub fn next_end(&self) -> Option<Timestamp> {
        self.next_end
    }

    /// What a reader at `position` has not seen; `None` (or a position
    /// older than the tombstones kept) gives the whole state.
    pub fn since(&self, position: Option<u64>) -> Changes {
        match position {
            Some(p) if p >= self.forgotten && p <= self.seq => Changes {
                new: self
                    .live_by_seq
                    .range(p + 1..)
                    .map(|(_, net)| self.live[net].1.clone())
                    .collect(),
                deleted: self
                    .tombstones
                    .range(p + 1..)
                    .map(|(_, e)| e.clone())
                    .collect(),
                through: self.seq,
            },
            _ => Changes {
                new: self
                    .live_by_seq
                    .values()
                    .map(|n| self.live[n].1.clone())
                    .collect(),
                deleted: Vec::new(),
                through: self.seq,
            },
        }
    }

    /// The live entries, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.live.values().map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::Origin;

    fn ban(addr: &str, until: u64) -> Decision {
        let mut d = Decision::new(
            Action::Ban,
            addr.parse().unwrap(),
            Timestamp::from_millis(1),
            palisade_model::Span::Forever,
            Origin::new("n1", Source::Cli),
        )
        .with_rule("manual");
        d.expires = Some(Timestamp::from_millis(until));
        d
    }

    #[test]
    fn a_decision_changed_between_polls_appears_once_in_its_latest_state() {
        let now = Timestamp::from_millis(10);
        let mut j = Journal::default();
        j.refresh(&[ban("198.18.0.1", 100)], now);
        let first = j.since(None);
        assert_eq!(first.new.len(), 1);
        j.refresh(&[ban("198.18.0.1", 200)], now);
        j.refresh(&[ban("198.18.0.1", 300)], now);
        let next = j.since(Some(first.through));
        assert_eq!(next.new.len(), 1);
        assert_eq!(next.new[0].until, Some(Timestamp::from_millis(300)));
        assert_eq!(next.new[0].id, first.new[0].id);
        assert!(j.since(Some(next.through)).new.is_empty());
        assert_eq!(j.next_end(), Some(Timestamp::from_millis(300)));
    }

    #[test]
    fn deletions_are_delivered_and_a_lost_position_gets_everything() {
        let now = Timestamp::from_millis(10);
        let mut j = Journal::default();
        j.refresh(&[ban("198.18.0.1", 100), ban("198.18.0.2", 100)], now);
        let p = j.since(None).through;
        j.refresh(&[ban("198.18.0.2", 100)], now);
        let c = j.since(Some(p));
        assert_eq!(c.deleted.len(), 1);
        assert_eq!(c.deleted[0].until, Some(now));
        assert!(c.new.is_empty());
        // A position from before a restart (ahead of the journal) or older
        // than the kept tombstones is answered with the whole state.
        assert_eq!(j.since(Some(p + 100)).new.len(), 1);
        j.forgotten = p + 1;
        let all = j.since(Some(p));
        assert_eq!((all.new.len(), all.deleted.len()), (1, 0));
    }
}

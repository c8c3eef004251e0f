//! Reads from one consistent snapshot ([`Reader`]).

use palisade_model::explain::{Explanation, Verdict};
use palisade_model::{Action, Decision, Net, Timestamp};
use redb::ReadableTable;

use crate::error::{Result, StoreError};
use crate::keys::{
    COUNT_ALLOWS, COUNT_BAN_HOSTS, COUNT_BAN_NETWORKS, Key, Order, Position, action_byte, decode,
};
use crate::lookup::{
    covering_in, get_in, meta_in, next_number, range_of, record, records, values, within_in,
};
use crate::tables::{DECISIONS, EXPIRY, META, Map, ORDERED, Queue};

/// Reads from one consistent snapshot (see [`Store::read`](crate::Store::read)).
pub struct Reader {
    tx: redb::ReadTransaction,
    decisions: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    expiry: redb::ReadOnlyTable<&'static [u8], ()>,
    meta: redb::ReadOnlyTable<&'static str, u64>,
    ordered: Option<redb::ReadOnlyTable<&'static [u8], ()>>,
}

impl Reader {
    /// The tables of `tx`; with `ordered`, the ordered index too.
    pub(crate) fn open(tx: redb::ReadTransaction, ordered: bool) -> Result<Reader> {
        Ok(Reader {
            decisions: tx.open_table(DECISIONS)?,
            expiry: tx.open_table(EXPIRY)?,
            meta: tx.open_table(META)?,
            ordered: if ordered {
                Some(tx.open_table(ORDERED)?)
            } else {
                None
            },
            tx,
        })
    }

    /// Decisions of `action` in `order` (newest or latest first when
    /// `descending`), starting after `after`, each with its position to
    /// continue from. Each item costs one index step and one lookup, so a
    /// page is as cheap at the millionth decision as at the first. Needs a
    /// store opened with [`Options::ordered`](crate::Options::ordered).
    pub fn ordered(
        &self,
        action: Action,
        order: Order,
        descending: bool,
        after: Option<&Position>,
    ) -> Result<impl Iterator<Item = Result<(Position, Decision)>> + '_> {
        use std::ops::Bound;
        let index = self.ordered.as_ref().ok_or_else(|| {
            StoreError::Db("this store was opened without the ordered index".into())
        })?;
        let lo = [order.byte(), action_byte(action)];
        let hi = [order.byte(), action_byte(action) + 1];
        let after = after.map(|p| p.0.as_slice());
        let (start, end) = match (descending, after) {
            (false, Some(a)) => (Bound::Excluded(a), Bound::Excluded(hi.as_slice())),
            (true, Some(a)) => (Bound::Included(lo.as_slice()), Bound::Excluded(a)),
            (_, None) => (
                Bound::Included(lo.as_slice()),
                Bound::Excluded(hi.as_slice()),
            ),
        };
        // An `after` outside this listing's range gives an empty one.
        let range = if start_after_end(&start, &end) {
            None
        } else {
            Some(index.range::<&[u8]>((start, end))?)
        };
        let iter: Box<dyn Iterator<Item = _>> = match range {
            None => Box::new(std::iter::empty()),
            Some(r) if descending => Box::new(r.rev()),
            Some(r) => Box::new(r),
        };
        Ok(iter.filter_map(move |item| {
            let key = match item {
                Ok((k, _)) => k.value().to_vec(),
                Err(e) => return Some(Err(e.into())),
            };
            match self.decisions.get(&key[10..]) {
                Ok(Some(v)) => Some(decode(v.value()).map(|d| (Position(key), d))),
                // Cannot happen within one snapshot; skip rather than fail.
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        }))
    }

    /// Whether [`Reader::ordered`] works on this store.
    pub fn is_ordered(&self) -> bool {
        self.ordered.is_some()
    }

    /// Decisions of `action` inside `net` (including `net` itself), in
    /// address order, starting after the decision for `after`: a network's
    /// bans a page at a time, however many it holds.
    pub fn inside(
        &self,
        action: Action,
        net: &Net,
        after: Option<&Net>,
    ) -> Result<impl Iterator<Item = Result<Decision>> + '_> {
        use std::ops::Bound;
        let (first, last) = net.range();
        let lo = Key::from_parts(action, net.family(), first, 0);
        let hi = Key::from_parts(action, net.family(), last, u8::MAX);
        let after = after.map(|a| Key::new(action, a));
        let start = match &after {
            Some(a) if a.as_bytes() >= lo.as_bytes() => Bound::Excluded(a.as_bytes()),
            _ => Bound::Included(lo.as_bytes()),
        };
        let end = Bound::Included(hi.as_bytes());
        let range = if start_after_end(&start, &end) {
            None
        } else {
            Some(self.decisions.range::<&[u8]>((start, end))?)
        };
        let net = *net;
        Ok(range.into_iter().flatten().filter_map(move |item| {
            let d = match item {
                Ok((_, v)) => decode(v.value()),
                Err(e) => return Some(Err(e.into())),
            };
            match d {
                Ok(d) if net.contains(&d.target) => Some(Ok(d)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// The decision of `action` for exactly `net`.
    pub fn get(&self, action: Action, net: &Net) -> Result<Option<Decision>> {
        get_in(&self.decisions, action, net)
    }

    /// Decisions of `action` whose target contains `net` (including `net`
    /// itself), widest first.
    pub fn covering(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        covering_in(&self.decisions, action, net)
    }

    /// Decisions of `action` whose target lies inside `net`, excluding `net`
    /// itself, in address order.
    pub fn within(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        within_in(&self.decisions, action, net)
    }

    /// Every decision (of one action, or all), in key order: bans before
    /// allows, IPv4 before IPv6, by address.
    pub fn iter(
        &self,
        action: Option<Action>,
    ) -> Result<impl Iterator<Item = Result<Decision>> + '_> {
        let range = match action {
            None => self.decisions.range::<&[u8]>(..)?,
            Some(a) => range_of(&self.decisions, a)?,
        };
        Ok(values(range))
    }

    /// How many decisions of each kind are stored (kept exact in every
    /// write transaction, so this never scans).
    pub fn counts(&self) -> Result<Counts> {
        let get = |name: &str| meta_in(&self.meta, name);
        Ok(Counts {
            ban_hosts: get(COUNT_BAN_HOSTS)?,
            ban_networks: get(COUNT_BAN_NETWORKS)?,
            allows: get(COUNT_ALLOWS)?,
        })
    }

    /// Why `address` is, or is not, blocked: the active allow and ban
    /// entries covering it (allow entries win), and for a network, how many
    /// bans lie inside it.
    pub fn explain(&self, address: Net, now: Timestamp) -> Result<Explanation> {
        let active = |v: Vec<Decision>| -> Vec<Decision> {
            v.into_iter().filter(|d| d.is_active(now)).collect()
        };
        let allowed_by = active(self.covering(Action::Allow, &address)?);
        let banned_by = active(self.covering(Action::Ban, &address)?);
        let bans_inside = if address.is_host() {
            0
        } else {
            self.within(Action::Ban, &address)?.len() as u64
        };
        let verdict = if !allowed_by.is_empty() {
            Verdict::Allowed
        } else if !banned_by.is_empty() {
            Verdict::Blocked
        } else {
            Verdict::Open
        };
        Ok(Explanation {
            address,
            verdict,
            allowed_by,
            banned_by,
            bans_inside,
            now,
        })
    }

    /// Up to `limit` records of `queue` numbered after `after`, in order.
    pub fn queue(&self, queue: Queue, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let Some(table) = self.queue_table(queue)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in table.range(after.saturating_add(1)..)? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The numbers of the oldest and newest records still in `queue`.
    pub fn queue_bounds(&self, queue: Queue) -> Result<Option<(u64, u64)>> {
        let Some(table) = self.queue_table(queue)? else {
            return Ok(None);
        };
        let first = table.first()?.map(|(k, _)| k.value());
        let last = table.last()?.map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    /// The number the next record of `queue` will get (1 for a new queue).
    pub fn queue_next(&self, queue: Queue) -> Result<u64> {
        next_number(&self.meta, queue)
    }

    /// The table of `queue`; `None` before its first push.
    fn queue_table(&self, queue: Queue) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>> {
        match self.tx.open_table(queue.table()) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record under `key` in `map`.
    pub fn map_get(&self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        match self.tx.open_table(map.table()) {
            Ok(table) => record(&table, key),
            // Never written: empty.
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every record of `map`, in key order.
    pub fn map_entries(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>> {
        match self.tx.open_table(map.table()) {
            Ok(table) => records(&table),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A named number (e.g. a stream cursor), 0 if never set.
    pub fn meta(&self, name: &str) -> Result<u64> {
        meta_in(&self.meta, name)
    }

    /// The earliest expiry of any stored decision.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>> {
        Ok(self.expiry.first()?.map(|(k, _)| {
            let bytes: [u8; 8] = k.value()[..8].try_into().expect("expiry key");
            Timestamp::from_millis(u64::from_be_bytes(bytes))
        }))
    }
}

/// True when a range from `start` to `end` would be empty or inverted
/// (redb refuses inverted ranges).
fn start_after_end(start: &std::ops::Bound<&[u8]>, end: &std::ops::Bound<&[u8]>) -> bool {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    match (start, end) {
        (Unbounded, _) | (_, Unbounded) => false,
        (Included(s), Included(e)) => s > e,
        (Included(s) | Excluded(s), Excluded(e)) | (Excluded(s), Included(e)) => s >= e,
    }
}

/// Numbers of stored decisions, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bans of single addresses (/32, /128).
    pub ban_hosts: u64,
    /// Bans of wider networks.
    pub ban_networks: u64,
    /// Allow entries.
    pub allows: u64,
}

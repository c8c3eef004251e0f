//! Changes inside one write transaction ([`Writer`]).

use palisade_model::{Action, Decision, Net, Timestamp};
use redb::ReadableTable;

use crate::error::Result;
use crate::keys::{
    COUNTERS, Key, Order, counter_index, decode, encode, expiry_key, expiry_upper_bound,
    ordered_key,
};
use crate::lookup::{
    covering_in, get_in, meta_in, next_number, range_of, record, records, values, within_in,
};
use crate::tables::{DECISIONS, EXPIRY, META, Map, ORDERED, Queue};

/// Changes inside one write transaction (see [`Store::write`](crate::Store::write)).
pub struct Writer<'tx> {
    tx: &'tx redb::WriteTransaction,
    decisions: redb::Table<'tx, &'static [u8], &'static [u8]>,
    expiry: redb::Table<'tx, &'static [u8], ()>,
    meta: redb::Table<'tx, &'static str, u64>,
    /// The ordered index, when kept.
    ordered: Option<redb::Table<'tx, &'static [u8], ()>>,
    /// Changes to the counts, written once when the transaction commits.
    deltas: [i64; 3],
}

impl<'tx> Writer<'tx> {
    /// The tables of `tx`; with `ordered`, the ordered index too.
    pub(crate) fn open(tx: &'tx redb::WriteTransaction, ordered: bool) -> Result<Writer<'tx>> {
        Ok(Writer {
            tx,
            decisions: tx.open_table(DECISIONS)?,
            expiry: tx.open_table(EXPIRY)?,
            meta: tx.open_table(META)?,
            ordered: if ordered {
                Some(tx.open_table(ORDERED)?)
            } else {
                None
            },
            deltas: [0; 3],
        })
    }

    /// The decision of `action` for exactly `net`.
    pub fn get(&self, action: Action, net: &Net) -> Result<Option<Decision>> {
        get_in(&self.decisions, action, net)
    }

    /// See [`Reader::covering`](crate::Reader::covering).
    pub fn covering(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        covering_in(&self.decisions, action, net)
    }

    /// See [`Reader::within`](crate::Reader::within).
    pub fn within(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        within_in(&self.decisions, action, net)
    }

    /// Every decision of `action` (for small sets such as allowlists).
    pub fn all(&self, action: Action) -> Result<Vec<Decision>> {
        let mut out = Vec::new();
        self.each(action, |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every decision of `action` in key order, one at a
    /// time (for large sets: memory stays flat).
    pub fn each(&self, action: Action, mut f: impl FnMut(Decision) -> Result<()>) -> Result<()> {
        for d in values(range_of(&self.decisions, action)?) {
            f(d?)?;
        }
        Ok(())
    }

    /// Stores `d`, replacing any decision with the same action and target.
    pub fn put(&mut self, d: &Decision) -> Result<Option<Decision>> {
        let key = Key::new(d.action, &d.target);
        let value = encode(d);
        let old = self
            .decisions
            .insert(key.as_bytes(), value.as_slice())?
            .map(|v| decode(v.value()))
            .transpose()?;
        if let Some(old) = &old
            && old.expires != d.expires
            && let Some(e) = old.expires
        {
            self.expiry.remove(expiry_key(e, &key).as_slice())?;
        }
        if let Some(e) = d.expires {
            self.expiry.insert(expiry_key(e, &key).as_slice(), ())?;
        }
        if old.is_none() {
            self.count(d.action, &d.target, 1)?;
        }
        self.reorder(old.as_ref(), Some(d))?;
        Ok(old)
    }

    /// Moves a decision's ordered-index entries from `old` to `new`.
    fn reorder(&mut self, old: Option<&Decision>, new: Option<&Decision>) -> Result<()> {
        let Some(index) = self.ordered.as_mut() else {
            return Ok(());
        };
        for order in [Order::Updated, Order::Expires] {
            let old_key = old.map(|d| ordered_key(order, d));
            let new_key = new.map(|d| ordered_key(order, d));
            if old_key == new_key {
                continue;
            }
            if let Some(k) = old_key {
                index.remove(k.as_slice())?;
            }
            if let Some(k) = new_key {
                index.insert(k.as_slice(), ())?;
            }
        }
        Ok(())
    }

    /// Appends `record` to `queue`; returns its number.
    pub fn push(&mut self, queue: Queue, record: &[u8]) -> Result<u64> {
        self.push_with(queue, |_| record.to_vec())
    }

    /// Appends the record `make` builds from its number (for records that
    /// carry their own number); returns the number.
    pub fn push_with(&mut self, queue: Queue, make: impl FnOnce(u64) -> Vec<u8>) -> Result<u64> {
        let seq = next_number(&self.meta, queue)?;
        self.tx
            .open_table(queue.table())?
            .insert(seq, make(seq).as_slice())?;
        self.meta.insert(queue.next_key(), seq + 1)?;
        Ok(seq)
    }

    /// The number the next record of `queue` will get (1 for a new queue).
    pub fn queue_next(&self, queue: Queue) -> Result<u64> {
        next_number(&self.meta, queue)
    }

    /// Removes the records of `queue` numbered `through` or lower.
    pub fn drop_through(&mut self, queue: Queue, through: u64) -> Result<()> {
        self.tx
            .open_table(queue.table())?
            .retain_in(..=through, |_, _| false)?;
        Ok(())
    }

    /// Stores `record` under `key` in `map`, replacing any old one.
    pub fn map_put(&mut self, map: Map, key: &str, record: &[u8]) -> Result<()> {
        self.tx.open_table(map.table())?.insert(key, record)?;
        Ok(())
    }

    /// The record under `key` in `map`.
    pub fn map_get(&self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        record(&self.tx.open_table(map.table())?, key)
    }

    /// Removes the record under `key` in `map`; returns it.
    pub fn map_remove(&mut self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .open_table(map.table())?
            .remove(key)?
            .map(|v| v.value().to_vec()))
    }

    /// Every record of `map`, in key order.
    pub fn map_entries(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>> {
        records(&self.tx.open_table(map.table())?)
    }

    /// A named number (e.g. a stream cursor), 0 if never set.
    pub fn meta(&self, name: &str) -> Result<u64> {
        meta_in(&self.meta, name)
    }

    /// Sets the named number `name`.
    pub fn set_meta(&mut self, name: &str, value: u64) -> Result<()> {
        self.meta.insert(name, value)?;
        Ok(())
    }

    /// Adjusts the count of decisions of this kind (stored at commit).
    fn count(&mut self, action: Action, net: &Net, delta: i64) -> Result<()> {
        self.deltas[counter_index(action, net)] += delta;
        Ok(())
    }

    /// Stores the counts' changes; called once, before the commit.
    pub(crate) fn flush_counts(&mut self) -> Result<()> {
        for (i, name) in COUNTERS.iter().enumerate() {
            if self.deltas[i] != 0 {
                let cur = meta_in(&self.meta, name)?;
                self.meta
                    .insert(*name, cur.saturating_add_signed(self.deltas[i]))?;
            }
        }
        Ok(())
    }

    /// Removes the decision with this action and target, returning it.
    pub fn remove(&mut self, action: Action, net: &Net) -> Result<Option<Decision>> {
        let key = Key::new(action, net);
        let old = self
            .decisions
            .remove(key.as_bytes())?
            .map(|v| decode(v.value()))
            .transpose()?;
        if let Some(e) = old.as_ref().and_then(|d| d.expires) {
            self.expiry.remove(expiry_key(e, &key).as_slice())?;
        }
        if old.is_some() {
            self.count(action, net, -1)?;
        }
        self.reorder(old.as_ref(), None)?;
        Ok(old)
    }

    /// Removes and returns every decision that expired at or before `now`,
    /// at most `limit` of them (call again until it returns fewer).
    pub fn take_expired(&mut self, now: Timestamp, limit: usize) -> Result<Vec<Decision>> {
        let mut keys = Vec::new();
        for item in self.expiry.range(..expiry_upper_bound(now).as_slice())? {
            let (k, _) = item?;
            keys.push(k.value().to_vec());
            if keys.len() >= limit {
                break;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            self.expiry.remove(k.as_slice())?;
            if let Some(v) = self.decisions.remove(&k[8..])? {
                out.push(decode(v.value())?);
            }
        }
        for d in &out {
            self.count(d.action, &d.target, -1)?;
            self.reorder(Some(d), None)?;
        }
        Ok(out)
    }
}

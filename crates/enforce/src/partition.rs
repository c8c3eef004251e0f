//! The entries of one kernel set and the disjoint pieces they become.
//!
//! The kernel rejects overlapping intervals, but palisade bans hosts and
//! networks that may overlap (a host inside a banned /24). A [`Partition`]
//! keeps both views:
//!
//! - `entries`: what was asked for, per network (start, prefix), with its
//!   own expiry and comment, so a piece can be recomputed when an entry
//!   goes away;
//! - `pieces`: disjoint intervals, each carrying the latest expiry of the
//!   entries that cover it (and that entry's comment), adjacent pieces with
//!   equal values merged. This is exactly what the kernel holds.
//!
//! Networks nest or are disjoint (never partly overlap), which keeps the
//! sweep that turns entries into pieces a simple stack walk.
//!
//! A change touches only the pieces around the changed network; the
//! resulting kernel operations are collected in a [`Diff`].
//!
//! Memory: one `BTreeMap` entry per network ((u32, u8) key + 16-byte value
//! for IPv4) and one per piece (u32 key + 16-byte value); comments are
//! interned, so 1M banned hosts with a handful of distinct comments cost a
//! few tens of MB.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::ops::Bound::{Excluded, Included};
use std::sync::Arc;

/// Expiry of an entry that never expires.
pub(crate) const FOREVER: u64 = u64::MAX;

/// An address as an integer: `u32` for IPv4, `u128` for IPv6.
pub(crate) trait Key: Copy + Ord + Eq + Hash + Debug + Send + Sync + 'static {
    const BITS: u8;
    const ZERO: Self;
    const MAX: Self;
    fn from_u128(v: u128) -> Self;
    fn to_u128(self) -> u128;
    fn checked_inc(self) -> Option<Self>;
    fn checked_dec(self) -> Option<Self>;
    /// Network byte order, in the first `BITS / 8` bytes of `out`.
    fn write_be(self, out: &mut [u8; 16]) -> usize;

    /// The last address of the network `start/prefix`.
    fn last(start: Self, prefix: u8) -> Self {
        let host_bits = u32::from(Self::BITS - prefix);
        let size_minus_one = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Self::from_u128(start.to_u128() | size_minus_one)
    }

    /// The network of `prefix` bits containing `addr`.
    fn truncate(addr: Self, prefix: u8) -> Self {
        let host_bits = u32::from(Self::BITS - prefix);
        let mask = if host_bits == 128 {
            0
        } else {
            !((1u128 << host_bits) - 1)
        };
        Self::from_u128(addr.to_u128() & mask)
    }
}

impl Key for u32 {
    const BITS: u8 = 32;
    const ZERO: u32 = 0;
    const MAX: u32 = u32::MAX;
    fn from_u128(v: u128) -> u32 {
        v as u32
    }
    fn to_u128(self) -> u128 {
        self.into()
    }
    fn checked_inc(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn checked_dec(self) -> Option<u32> {
        self.checked_sub(1)
    }
    fn write_be(self, out: &mut [u8; 16]) -> usize {
        out[..4].copy_from_slice(&self.to_be_bytes());
        4
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    const ZERO: u128 = 0;
    const MAX: u128 = u128::MAX;
    fn from_u128(v: u128) -> u128 {
        v
    }
    fn to_u128(self) -> u128 {
        self
    }
    fn checked_inc(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn checked_dec(self) -> Option<u128> {
        self.checked_sub(1)
    }
    fn write_be(self, out: &mut [u8; 16]) -> usize {
        *out = self.to_be_bytes();
        16
    }
}

/// An expiry (ms since the epoch, [`FOREVER`]) and an interned comment
/// (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Val {
    pub expiry: u64,
    pub comment: u32,
}

impl Val {
    pub fn alive(self, now: u64) -> bool {
        self.expiry > now
    }
}

/// One disjoint interval as the kernel holds it. The value's fields are
/// inlined so that an IPv4 piece takes 16 bytes, not 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece<K> {
    pub end: K,
    expiry: u64,
    comment: u32,
}

impl<K> Piece<K> {
    fn new(end: K, val: Val) -> Piece<K> {
        Piece {
            end,
            expiry: val.expiry,
            comment: val.comment,
        }
    }

    pub fn val(&self) -> Val {
        Val {
            expiry: self.expiry,
            comment: self.comment,
        }
    }
}

/// Interned comments with reference counts; id 0 is "no comment".
#[derive(Debug, Default)]
pub(crate) struct Comments {
    ids: HashMap<Arc<str>, u32>,
    slots: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u32>,
}

impl Comments {
    pub fn intern(&mut self, text: Option<&str>) -> u32 {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return 0;
        };
        if let Some(&id) = self.ids.get(text) {
            self.slots[id as usize - 1].as_mut().unwrap().1 += 1;
            return id;
        }
        let text: Arc<str> = Arc::from(text);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize - 1] = Some((text.clone(), 1));
                id
            }
            None => {
                self.slots.push(Some((text.clone(), 1)));
                self.slots.len() as u32
            }
        };
        self.ids.insert(text, id);
        id
    }

    pub fn release(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        let slot = &mut self.slots[id as usize - 1];
        let (text, refs) = slot.as_mut().expect("released comment exists");
        *refs -= 1;
        if *refs == 0 {
            self.ids.remove(&**text);
            *slot = None;
            self.free.push(id);
        }
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return None;
        }
        self.slots
            .get(id as usize - 1)
            .and_then(|s| s.as_ref())
            .map(|(t, _)| &**t)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Kernel operations that turn the pieces before a series of changes into
/// the pieces after it, keyed by interval: `(before, after)`.
#[derive(Debug)]
pub(crate) struct Diff<K: Key> {
    map: BTreeMap<(K, K), (Option<Val>, Option<Val>)>,
}

impl<K: Key> Default for Diff<K> {
    fn default() -> Self {
        Diff {
            map: BTreeMap::new(),
        }
    }
}

/// What to do with one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Remove the interval, which had value `before`.
    Delete {
        before: Val,
    },
    Add(Val),
    /// Same interval, new value: `before` is the value the kernel has.
    Update {
        before: Val,
        after: Val,
    },
}

impl<K: Key> Diff<K> {
    pub fn removed(&mut self, start: K, end: K, val: Val) {
        use std::collections::btree_map::Entry::*;
        match self.map.entry((start, end)) {
            Occupied(mut o) => {
                let (before, after) = o.get_mut();
                debug_assert_eq!(*after, Some(val));
                if before.is_none() {
                    o.remove();
                } else {
                    *after = None;
                }
            }
            Vacant(v) => {
                v.insert((Some(val), None));
            }
        }
    }

    pub fn added(&mut self, start: K, end: K, val: Val) {
        use std::collections::btree_map::Entry::*;
        match self.map.entry((start, end)) {
            Occupied(mut o) => {
                let (before, after) = o.get_mut();
                debug_assert!(after.is_none());
                if *before == Some(val) {
                    o.remove();
                } else {
                    *after = Some(val);
                }
            }
            Vacant(v) => {
                v.insert((None, Some(val)));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The operations, by interval.
    pub fn ops(&self) -> impl Iterator<Item = (K, K, Op)> + '_ {
        self.map.iter().map(|(&(s, e), &(before, after))| {
            let op = match (before, after) {
                (Some(b), None) => Op::Delete { before: b },
                (None, Some(a)) => Op::Add(a),
                (Some(b), Some(a)) => Op::Update {
                    before: b,
                    after: a,
                },
                (None, None) => unreachable!("empty diff entries are removed"),
            };
            (s, e, op)
        })
    }
}

/// Entries of one set and their disjoint pieces (see the module docs).
#[derive(Debug)]
pub(crate) struct Partition<K: Key> {
    entries: BTreeMap<(K, u8), Val>,
    pieces: BTreeMap<K, Piece<K>>,
    /// Number of entries per prefix length, to find covering entries with
    /// one lookup per length in use.
    prefixes: Vec<u32>,
    comments: Comments,
}

impl<K: Key> Default for Partition<K> {
    fn default() -> Self {
        Partition {
            entries: BTreeMap::new(),
            pieces: BTreeMap::new(),
            prefixes: vec![0; usize::from(K::BITS) + 1],
            comments: Comments::default(),
        }
    }
}

impl<K: Key> Partition<K> {
    /// Entries held (expired ones included until [`Partition::prune`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Pieces held, i.e. intervals expected in the kernel.
    pub fn pieces_len(&self) -> usize {
        self.pieces.len()
    }

    /// Distinct comments in use.
    #[cfg(test)]
    pub fn comments_len(&self) -> usize {
        self.comments.len()
    }

    pub fn comment(&self, id: u32) -> Option<&str> {
        self.comments.get(id)
    }

    /// The pieces in address order: (first, last, value).
    pub fn pieces(&self) -> impl Iterator<Item = (K, K, Val)> + '_ {
        self.pieces.iter().map(|(&s, p)| (s, p.end, p.val()))
    }

    /// Builds a partition from scratch (see [`Builder`]).
    #[cfg(test)]
    pub fn build<'a, I>(items: I, now: u64) -> Partition<K>
    where
        I: IntoIterator<Item = (K, u8, u64, Option<&'a str>)>,
    {
        let mut b = Builder::new(now);
        for (start, prefix, expiry, comment) in items {
            b.push(start, prefix, expiry, comment);
        }
        b.finish()
    }

    /// Adds an entry or replaces its expiry and comment.
    pub fn put(
        &mut self,
        start: K,
        prefix: u8,
        expiry: u64,
        comment: Option<&str>,
        now: u64,
        diff: &mut Diff<K>,
    ) {
        debug_assert_eq!(K::truncate(start, prefix), start, "host bits set");
        let comment = self.comments.intern(comment);
        let val = Val { expiry, comment };
        match self.entries.insert((start, prefix), val) {
            Some(old) => self.comments.release(old.comment),
            None => self.prefixes[usize::from(prefix)] += 1,
        }
        self.update_region(start, K::last(start, prefix), now, diff);
    }

    /// Removes an entry; false if it was not there.
    pub fn remove(&mut self, start: K, prefix: u8, now: u64, diff: &mut Diff<K>) -> bool {
        let Some(old) = self.entries.remove(&(start, prefix)) else {
            return false;
        };
        self.comments.release(old.comment);
        self.prefixes[usize::from(prefix)] -= 1;
        self.update_region(start, K::last(start, prefix), now, diff);
        true
    }

    /// Forgets entries that expired at `now` and pieces that expired before
    /// `pieces_before` (the kernel removed those by itself), telling `gone`
    /// each piece's first and last address.
    pub fn prune(&mut self, now: u64, pieces_before: u64, gone: &mut impl FnMut(K, K)) {
        let comments = &mut self.comments;
        let prefixes = &mut self.prefixes;
        self.entries.retain(|&(_, prefix), v| {
            let keep = v.alive(now);
            if !keep {
                comments.release(v.comment);
                prefixes[usize::from(prefix)] -= 1;
            }
            keep
        });
        self.pieces.retain(|&s, p| {
            let keep = p.val().alive(pieces_before);
            if !keep {
                gone(s, p.end);
            }
            keep
        });
    }

    /// Recomputes the pieces around `[s, e]` after the entry there changed,
    /// and records what changed in `diff`.
    fn update_region(&mut self, s: K, e: K, now: u64, diff: &mut Diff<K>) {
        // Pieces overlapping [s-1, e+1]: the neighbours are included so that
        // merges with them (or their undoing) are seen.
        let lo = s.checked_dec().unwrap_or(s);
        let hi = e.checked_inc().unwrap_or(e);
        let mut old: Vec<(K, Piece<K>)> = Vec::new();
        if let Some((&ps, p)) = self.pieces.range(..=lo).next_back()
            && p.end >= lo
        {
            old.push((ps, *p));
        }
        old.extend(
            self.pieces
                .range((Excluded(lo), Included(hi)))
                .map(|(&ps, p)| (ps, *p)),
        );
        let rs = old.first().map_or(s, |(ps, _)| (*ps).min(s));
        let re = old.last().map_or(e, |(_, p)| p.end.max(e));
        let mut new: Vec<(K, Piece<K>)> = Vec::new();
        sweep(rs, re, self.overlapping(rs, re, now), &mut new);
        // Pieces present before and after need no kernel change.
        let mut i = 0;
        let mut j = 0;
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.0 <= n.0 => {
                    self.pieces.remove(&o.0);
                    diff.removed(o.0, o.1.end, o.1.val());
                    i += 1;
                }
                (Some(o), None) => {
                    self.pieces.remove(&o.0);
                    diff.removed(o.0, o.1.end, o.1.val());
                    i += 1;
                }
                (_, Some(n)) => {
                    // Inserted after any old piece with the same start is
                    // gone (old pieces sort first on equal starts).
                    diff.added(n.0, n.1.end, n.1.val());
                    j += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        for (ps, p) in new {
            self.pieces.insert(ps, p);
        }
    }

    /// Live entries overlapping `[rs, re]` as (first, last, value), sorted
    /// by start, wider networks first.
    fn overlapping(&self, rs: K, re: K, now: u64) -> Vec<(K, K, Val)> {
        let mut out = Vec::new();
        // Entries that start before rs and contain it.
        for prefix in 0..K::BITS {
            if self.prefixes[usize::from(prefix)] == 0 {
                continue;
            }
            let start = K::truncate(rs, prefix);
            if start == rs {
                continue;
            }
            if let Some(&v) = self.entries.get(&(start, prefix)) {
                out.push((start, K::last(start, prefix), v));
            }
        }
        out.extend(
            self.entries
                .range((rs, 0)..=(re, K::BITS))
                .map(|(&(s, prefix), &v)| (s, K::last(s, prefix), v)),
        );
        out.retain(|(_, _, v)| v.alive(now));
        out
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut prev: Option<K> = None;
        for (&s, p) in &self.pieces {
            assert!(s <= p.end, "piece {s:?}..{:?} inverted", p.end);
            if let Some(pe) = prev {
                assert!(s > pe, "pieces overlap at {s:?}");
            }
            prev = Some(p.end);
        }
        let mut counts = vec![0u32; usize::from(K::BITS) + 1];
        for &(_, prefix) in self.entries.keys() {
            counts[usize::from(prefix)] += 1;
        }
        assert_eq!(counts, self.prefixes);
    }
}

/// Builds a [`Partition`] from a whole list at once: O(n log n), and the
/// maps are bulk-built from sorted input, so their nodes are full.
#[derive(Debug)]
pub(crate) struct Builder<K: Key> {
    partition: Partition<K>,
    list: Vec<((K, u8), Val)>,
    now: u64,
}

impl<K: Key> Builder<K> {
    /// Entries expiring at or before `now` will be dropped.
    pub fn new(now: u64) -> Builder<K> {
        Builder {
            partition: Partition::default(),
            list: Vec::new(),
            now,
        }
    }

    /// Adds an entry; a later duplicate of a network replaces an earlier
    /// one.
    pub fn push(&mut self, start: K, prefix: u8, expiry: u64, comment: Option<&str>) {
        debug_assert_eq!(K::truncate(start, prefix), start, "host bits set");
        if expiry <= self.now {
            return;
        }
        let comment = self.partition.comments.intern(comment);
        self.list.push(((start, prefix), Val { expiry, comment }));
    }

    pub fn finish(self) -> Partition<K> {
        let Builder {
            partition: mut p,
            mut list,
            ..
        } = self;
        // Stable: among duplicates the last one given stays last.
        list.sort_by_key(|(k, _)| *k);
        let mut deduped: Vec<((K, u8), Val)> = Vec::with_capacity(list.len());
        for item in list {
            if let Some(last) = deduped.last_mut()
                && last.0 == item.0
            {
                p.comments.release(last.1.comment);
                *last = item;
                continue;
            }
            deduped.push(item);
        }
        for ((_, prefix), _) in &deduped {
            p.prefixes[usize::from(*prefix)] += 1;
        }
        let mut pieces = Vec::new();
        sweep(
            K::ZERO,
            K::MAX,
            deduped
                .iter()
                .map(|&((s, prefix), v)| (s, K::last(s, prefix), v)),
            &mut pieces,
        );
        p.entries = deduped.into_iter().collect();
        p.pieces = pieces.into_iter().collect();
        p
    }
}

/// Turns entries (sorted by start, wider first; nested or disjoint) into
/// merged pieces clipped to `[rs, re]`, appended to `out`.
fn sweep<K: Key>(
    rs: K,
    re: K,
    items: impl IntoIterator<Item = (K, K, Val)>,
    out: &mut Vec<(K, Piece<K>)>,
) {
    let first_out = out.len();
    let emit = |out: &mut Vec<(K, Piece<K>)>, s: K, e: K, val: Val| {
        if out.len() > first_out
            && let Some((_, last)) = out.last_mut()
            && last.val() == val
            && last.end.checked_inc() == Some(s)
        {
            last.end = e;
            return;
        }
        out.push((s, Piece::new(e, val)));
    };
    // Open entries: (last address, value of the best entry covering it).
    let mut stack: Vec<(K, Val)> = Vec::new();
    // Next address not yet emitted; None once past the end.
    let mut cursor: Option<K> = Some(rs);
    for (s, e, v) in items {
        let s = s.max(rs);
        let e = e.min(re);
        if s > e {
            continue;
        }
        while let Some(&(top_end, top_val)) = stack.last() {
            if top_end >= s {
                break;
            }
            if let Some(c) = cursor
                && c <= top_end
            {
                emit(out, c, top_end, top_val);
            }
            cursor = top_end.checked_inc();
            stack.pop();
        }
        if let Some(c) = cursor
            && c < s
        {
            if let Some(&(_, top_val)) = stack.last() {
                emit(out, c, s.checked_dec().unwrap(), top_val);
            }
            cursor = Some(s);
        }
        let val = match stack.last() {
            // The latest expiry wins; on a tie, the narrower entry (its
            // comment is the more specific one).
            Some(&(_, outer)) if outer.expiry > v.expiry => outer,
            _ => v,
        };
        stack.push((e, val));
    }
    while let Some((top_end, top_val)) = stack.pop() {
        if let Some(c) = cursor
            && c <= top_end
        {
            emit(out, c, top_end, top_val);
        }
        cursor = top_end.checked_inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn net(s: &str) -> (u32, u8) {
        match s.split_once('/') {
            Some((a, p)) => (ip(a), p.parse().unwrap()),
            None => (ip(s), 32),
        }
    }

    fn show(p: &Partition<u32>) -> Vec<String> {
        p.pieces()
            .map(|(s, e, v)| {
                let exp = if v.expiry == FOREVER {
                    "forever".to_string()
                } else {
                    v.expiry.to_string()
                };
                let c = p
                    .comment(v.comment)
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                if s == e {
                    format!("{} {exp}{c}", std::net::Ipv4Addr::from(s))
                } else {
                    format!(
                        "{}-{} {exp}{c}",
                        std::net::Ipv4Addr::from(s),
                        std::net::Ipv4Addr::from(e)
                    )
                }
            })
            .collect()
    }

    fn put(p: &mut Partition<u32>, n: &str, expiry: u64, c: Option<&str>) -> Diff<u32> {
        let (s, prefix) = net(n);
        let mut d = Diff::default();
        p.put(s, prefix, expiry, c, NOW, &mut d);
        p.check_invariants();
        d
    }

    fn del(p: &mut Partition<u32>, n: &str) -> Diff<u32> {
        let (s, prefix) = net(n);
        let mut d = Diff::default();
        assert!(p.remove(s, prefix, NOW, &mut d));
        p.check_invariants();
        d
    }

    #[test]
    fn host_inside_network_splits_it() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "198.18.0.5", NOW + 2000, Some("host"));
        put(&mut p, "198.18.0.0/24", NOW + 1000, Some("net"));
        assert_eq!(
            show(&p),
            [
                "198.18.0.0-198.18.0.4 1001000 net",
                "198.18.0.5 1002000 host",
                "198.18.0.6-198.18.0.255 1001000 net"
            ]
        );
        // Unbanning the host restores the network's piece whole.
        let d = del(&mut p, "198.18.0.5");
        assert_eq!(show(&p), ["198.18.0.0-198.18.0.255 1001000 net"]);
        let ops: Vec<_> = d.ops().collect();
        assert_eq!(ops.len(), 4, "3 deletes and 1 add: {ops:?}");
    }

    #[test]
    fn equal_expiry_merges_and_forever_wins() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "198.18.0.0/24", NOW + 1000, None);
        put(&mut p, "198.18.0.5", NOW + 500, None);
        assert_eq!(
            show(&p),
            ["198.18.0.0-198.18.0.255 1001000"],
            "shorter host hidden"
        );
        put(&mut p, "198.18.0.7", FOREVER, None);
        assert_eq!(
            show(&p),
            [
                "198.18.0.0-198.18.0.6 1001000",
                "198.18.0.7 forever",
                "198.18.0.8-198.18.0.255 1001000"
            ]
        );
        // Adjacent hosts with equal values merge.
        let mut p = Partition::<u32>::default();
        for h in ["198.18.1.1", "198.18.1.3", "198.18.1.2"] {
            put(&mut p, h, NOW + 10, Some("x"));
        }
        assert_eq!(show(&p), ["198.18.1.1-198.18.1.3 1000010 x"]);
        del(&mut p, "198.18.1.2");
        assert_eq!(show(&p), ["198.18.1.1 1000010 x", "198.18.1.3 1000010 x"]);
    }

    #[test]
    fn refresh_is_an_update_of_the_same_interval() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "198.18.0.9", NOW + 10, None);
        let d = put(&mut p, "198.18.0.9", NOW + 20, None);
        let ops: Vec<_> = d.ops().collect();
        assert_eq!(ops.len(), 1);
        assert!(matches!(ops[0].2, Op::Update { .. }), "{ops:?}");
        // Putting exactly the same again changes nothing.
        assert!(put(&mut p, "198.18.0.9", NOW + 20, None).is_empty());
    }

    #[test]
    fn diff_nets_out_within_a_batch() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "198.18.0.9", NOW + 10, None);
        let mut d = Diff::default();
        let (s, _) = net("198.18.0.9");
        p.put(s, 32, NOW + 20, None, NOW, &mut d);
        p.put(s, 32, NOW + 10, None, NOW, &mut d);
        assert!(d.is_empty(), "back where it started: {:?}", d.map);
        p.remove(s, 32, NOW, &mut d);
        p.put(s, 32, NOW + 10, None, NOW, &mut d);
        assert!(d.is_empty());
        p.put(net("198.18.0.10").0, 32, NOW + 10, None, NOW, &mut d);
        let ops: Vec<_> = d.ops().collect();
        assert_eq!(ops.len(), 2, "{ops:?}"); // delete .9, add .9-.10
    }

    #[test]
    fn expired_entries_are_ignored_and_pruned() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "198.18.0.0/24", NOW + 10, Some("net"));
        let mut d = Diff::default();
        let later = NOW + 100;
        p.put(
            net("198.18.0.5").0,
            32,
            later + 10,
            Some("host"),
            later,
            &mut d,
        );
        let pieces: Vec<_> = p.pieces().collect();
        assert_eq!(pieces.len(), 1, "the expired /24 is gone: {pieces:?}");
        let ops: Vec<_> = d.ops().collect();
        assert!(
            ops.iter().any(|o| matches!(o.2, Op::Delete { .. })),
            "{ops:?}"
        );
        p.prune(later, later, &mut |_, _| {});
        assert_eq!(p.len(), 1);
        assert_eq!(p.comments_len(), 1);
        p.check_invariants();
    }

    #[test]
    fn edges_of_the_address_space() {
        let mut p = Partition::<u32>::default();
        put(&mut p, "0.0.0.0/0", NOW + 10, None);
        put(&mut p, "255.255.255.255", NOW + 20, None);
        put(&mut p, "0.0.0.0", NOW + 20, None);
        assert_eq!(
            show(&p),
            [
                "0.0.0.0 1000020",
                "0.0.0.1-255.255.255.254 1000010",
                "255.255.255.255 1000020"
            ]
        );
        del(&mut p, "0.0.0.0/0");
        assert_eq!(show(&p), ["0.0.0.0 1000020", "255.255.255.255 1000020"]);
        let mut q = Partition::<u128>::default();
        let mut d = Diff::default();
        q.put(0, 0, FOREVER, None, NOW, &mut d);
        q.put(u128::MAX, 128, FOREVER, None, NOW, &mut d);
        assert_eq!(q.pieces().collect::<Vec<_>>().len(), 1);
        q.remove(0, 0, NOW, &mut d);
        let pieces: Vec<_> = q.pieces().collect();
        assert_eq!(
            pieces,
            [(
                u128::MAX,
                u128::MAX,
                Val {
                    expiry: FOREVER,
                    comment: 0
                }
            )]
        );
    }

    #[test]
    fn build_matches_incremental_and_keeps_the_last_duplicate() {
        let items = [
            (ip("198.18.0.0"), 24, NOW + 5, Some("a")),
            (ip("198.18.0.7"), 32, NOW + 9, Some("b")),
            (ip("198.18.0.7"), 32, NOW + 7, Some("c")),
            (ip("198.18.3.0"), 24, NOW - 1, Some("expired")),
        ];
        let p = Partition::<u32>::build(items, NOW);
        p.check_invariants();
        assert_eq!(
            show(&p),
            [
                "198.18.0.0-198.18.0.6 1000005 a",
                "198.18.0.7 1000007 c",
                "198.18.0.8-198.18.0.255 1000005 a"
            ]
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p.comments_len(), 2, "b was replaced, expired never kept");
    }

    /// A tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Brute force: the value of every address of a small space, from the
    /// entries directly.
    fn model(
        entries: &BTreeMap<(u32, u8), (u64, Option<&str>)>,
        now: u64,
        space: u32,
    ) -> Vec<Option<(u64, Option<String>)>> {
        (0..space)
            .map(|a| {
                let mut best: Option<(u64, u8, Option<&str>)> = None;
                for (&(s, prefix), &(exp, c)) in entries {
                    if exp <= now || a < s || a > u32::last(s, prefix) {
                        continue;
                    }
                    let better = match best {
                        None => true,
                        Some((be, bp, _)) => exp > be || (exp == be && prefix > bp),
                    };
                    if better {
                        best = Some((exp, prefix, c));
                    }
                }
                best.map(|(e, _, c)| (e, c.map(str::to_string)))
            })
            .collect()
    }

    fn expand(p: &Partition<u32>, space: u32) -> Vec<Option<(u64, Option<String>)>> {
        let mut v = vec![None; space as usize];
        for (s, e, val) in p.pieces() {
            for a in s..=e {
                v[a as usize] = Some((val.expiry, p.comment(val.comment).map(str::to_string)));
            }
        }
        v
    }

    /// Applies a diff to a model of the kernel (a map of intervals) and
    /// checks it is consistent: deletes and updates hit existing intervals,
    /// adds never overlap.
    fn apply_to_kernel(kernel: &mut BTreeMap<u32, (u32, Val)>, d: &Diff<u32>) {
        for (s, e, op) in d.ops() {
            match op {
                Op::Delete { .. } => {
                    assert_eq!(
                        kernel.remove(&s).map(|x| x.0),
                        Some(e),
                        "delete of missing {s}-{e}"
                    );
                }
                Op::Update { before, after } => {
                    assert_eq!(
                        kernel.get(&s),
                        Some(&(e, before)),
                        "update of missing {s}-{e}"
                    );
                    kernel.insert(s, (e, after));
                }
                Op::Add(_) => {}
            }
        }
        for (s, e, op) in d.ops() {
            if let Op::Add(v) = op {
                if let Some((&ps, &(pe, _))) = kernel.range(..=e).next_back() {
                    assert!(pe < s || ps > e, "add {s}-{e} overlaps {ps}-{pe}");
                }
                kernel.insert(s, (e, v));
            }
        }
    }

    #[test]
    fn random_operations_match_brute_force() {
        const SPACE: u32 = 256;
        let comments = [None, Some("a"), Some("b")];
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut p = Partition::<u32>::default();
            let mut entries: BTreeMap<(u32, u8), (u64, Option<&str>)> = BTreeMap::new();
            let mut kernel: BTreeMap<u32, (u32, Val)> = BTreeMap::new();
            let mut now = NOW;
            for step in 0..60 {
                // Networks inside 0..256 (prefixes /24../32 of a /24).
                let prefix = 24 + rng.below(9) as u8;
                let start = u32::truncate(rng.below(u64::from(SPACE)) as u32, prefix);
                let mut d = Diff::default();
                if rng.below(3) == 0 && !entries.is_empty() {
                    let i = rng.below(entries.len() as u64) as usize;
                    let &(s, pr) = entries.keys().nth(i).unwrap();
                    entries.remove(&(s, pr));
                    assert!(p.remove(s, pr, now, &mut d));
                } else {
                    let expiry = match rng.below(5) {
                        0 => FOREVER,
                        _ => now + 1 + rng.below(4) * 10,
                    };
                    let c = comments[rng.below(3) as usize];
                    entries.insert((start, prefix), (expiry, c));
                    p.put(start, prefix, expiry, c, now, &mut d);
                }
                p.check_invariants();
                apply_to_kernel(&mut kernel, &d);
                // The kernel, after the diff, holds exactly the pieces (live
                // ones: expired pieces may linger in both until pruned).
                let want: Vec<_> = p.pieces().map(|(s, e, v)| (s, (e, v))).collect();
                let have: Vec<_> = kernel.iter().map(|(&s, &x)| (s, x)).collect();
                assert_eq!(have, want, "seed {seed} step {step}");
                let got = expand(&p, SPACE);
                let exp = model(&entries, now, SPACE);
                for a in 0..SPACE as usize {
                    let live =
                        |x: &Option<(u64, Option<String>)>| x.clone().filter(|(e, _)| *e > now);
                    let g = live(&got[a]).map(|(e, _)| e);
                    let m = exp[a].as_ref().map(|(e, _)| *e);
                    assert_eq!(g, m, "seed {seed} step {step} address {a}");
                }
                // No two adjacent live pieces share a value (fully merged),
                // when nothing expired in between.
                if rng.below(4) == 0 {
                    now += 10;
                    p.prune(now, now, &mut |_, _| {});
                    kernel.retain(|_, (_, v)| v.expiry > now);
                    entries.retain(|_, (e, _)| *e > now);
                    p.check_invariants();
                }
            }
            // Rebuilding from the entries gives the same pieces as the
            // incremental path, once expired leftovers are pruned.
            p.prune(now, now, &mut |_, _| {});
            let rebuilt = Partition::<u32>::build(
                entries.iter().map(|(&(s, pr), &(e, c))| (s, pr, e, c)),
                now,
            );
            let a: Vec<_> = expand(&p, SPACE);
            let b: Vec<_> = expand(&rebuilt, SPACE);
            assert_eq!(a, b, "seed {seed}");
        }
    }

    #[test]
    fn fully_merged_after_incremental_changes_without_expiry() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
            let mut p = Partition::<u32>::default();
            let mut live: Vec<(u32, u8)> = Vec::new();
            for _ in 0..40 {
                let prefix = 26 + rng.below(7) as u8;
                let start = u32::truncate(rng.below(256) as u32, prefix);
                let mut d = Diff::default();
                if rng.below(3) == 0 && !live.is_empty() {
                    let (s, pr) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    p.remove(s, pr, NOW, &mut d);
                } else {
                    let expiry = NOW + 1 + rng.below(3);
                    p.put(start, prefix, expiry, None, NOW, &mut d);
                    if !live.contains(&(start, prefix)) {
                        live.push((start, prefix));
                    }
                }
                let pieces: Vec<_> = p.pieces().collect();
                for w in pieces.windows(2) {
                    assert!(
                        !(w[0].1 + 1 == w[1].0 && w[0].2 == w[1].2),
                        "seed {seed}: unmerged neighbours {w:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn comments_are_shared_and_freed() {
        let mut c = Comments::default();
        let a = c.intern(Some("sshd"));
        assert_eq!(c.intern(Some("sshd")), a);
        assert_eq!(c.intern(None), 0);
        assert_eq!(c.intern(Some("")), 0);
        c.release(a);
        assert_eq!(c.get(a), Some("sshd"));
        c.release(a);
        assert_eq!(c.get(a), None);
        let b = c.intern(Some("nginx"));
        assert_eq!(b, a, "slot reused");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn memory_per_host_stays_small() {
        // Not a precise measurement: checks the per-entry layout.
        assert_eq!(std::mem::size_of::<Val>(), 16);
        assert_eq!(std::mem::size_of::<Piece<u32>>(), 16);
        assert_eq!(std::mem::size_of::<(u32, u8)>(), 8);
    }
}

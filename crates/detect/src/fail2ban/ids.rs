//! The multi-line failure ids a filter remembers (fail2ban's
//! `Utils.Cache(maxCount=100)` of `<F-MLFID>` values), each with the
//! failure merged under it so far.
//!
//! Most ids are seen on few lines: sshd's is the process id of one
//! connection, so under an attack nearly every failure line brings a new
//! id and evicts the oldest. The cache is therefore a fixed set of slots
//! whose storage is reused (an id's text is copied into the room of the
//! one it evicts), found through a small index of slot numbers by the
//! ids' hashes: caching, finding and evicting an id allocate nothing.
//!
//! The ids are chosen by whoever writes the log, so their hashes are
//! randomly seeded, and an id is only found when its text is equal: a
//! crafted id can neither take another's slot nor grow the cache.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::room;

/// Ids with a value each, at most `cap` of them; when full, caching a new
/// id evicts the one cached longest ago.
pub(crate) struct Ids<V> {
    cap: usize,
    slots: Vec<Slot<V>>,
    /// Slots whose id was forgotten.
    free: Vec<u8>,
    /// Live slots by their ids' hashes, open addressing with linear
    /// probing: a slot's number, [`EMPTY`] or [`GONE`]. Kept at most two
    /// thirds full, so that a probe always reaches an empty bucket.
    index: Vec<u8>,
    /// Buckets marked [`GONE`].
    gone: usize,
    /// Slots in the order their ids were cached, oldest first, with the
    /// number each was cached under: an entry whose slot has been forgotten
    /// or taken again since is stale, skipped by eviction and swept out
    /// before stale entries outnumber live ones.
    order: VecDeque<(u8, u64)>,
    hasher: foldhash::fast::RandomState,
    next: u64,
}

/// An id [`Ids::find`] did not find, with its hash (so that caching it
/// does not hash it again).
pub(crate) struct Absent {
    hash: u64,
}

/// An empty bucket of the index, and one whose slot was let go (a probe
/// goes on past it).
const EMPTY: u8 = u8::MAX;
const GONE: u8 = u8::MAX - 1;

struct Slot<V> {
    id: String,
    hash: u64,
    /// The number the id was cached under.
    cached: u64,
    live: bool,
    value: V,
}

impl<V: Default> Ids<V> {
    /// An empty cache of at most `cap` ids (fewer than 254).
    pub(crate) fn new(cap: usize) -> Ids<V> {
        assert!(cap > 0 && cap < usize::from(GONE));
        Ids {
            cap,
            slots: Vec::with_capacity(cap),
            free: Vec::new(),
            index: vec![EMPTY; (cap * 3).next_power_of_two()],
            gone: 0,
            order: VecDeque::with_capacity(2 * cap),
            hasher: foldhash::fast::RandomState::default(),
            next: 0,
        }
    }

    /// How many ids are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The bytes the slots' ids hold, and their values by `value_bytes`,
    /// live or not.
    #[cfg(test)]
    pub(crate) fn room_bytes(&self, value_bytes: impl Fn(&V) -> usize) -> usize {
        self.slots
            .iter()
            .map(|s| s.id.capacity() + value_bytes(&s.value))
            .sum()
    }

    /// The buckets `hash` probes, in order.
    fn probe(&self, hash: u64) -> impl Iterator<Item = usize> + use<V> {
        probe(self.index.len(), hash)
    }

    /// The slot of `id` if it is cached, else what
    /// [`insert`](Self::insert) needs to cache it.
    pub(crate) fn find(&self, id: &str) -> Result<usize, Absent> {
        let hash = self.hasher.hash_one(id);
        for b in self.probe(hash) {
            match self.index[b] {
                EMPTY => return Err(Absent { hash }),
                GONE => {}
                s => {
                    let slot = &self.slots[usize::from(s)];
                    if slot.hash == hash && slot.id == id {
                        return Ok(usize::from(s));
                    }
                }
            }
        }
        unreachable!("the index always has an empty bucket")
    }

    /// The value in slot `slot` (one [`find`](Self::find) or
    /// [`insert`](Self::insert) gave).
    pub(crate) fn get_mut(&mut self, slot: usize) -> &mut V {
        &mut self.slots[slot].value
    }

    /// Caches `id`, which [`find`](Self::find) found `absent`, with
    /// `value`; evicts the id cached longest ago if the cache is full. Its
    /// slot. `value` is swapped with what the slot held (the evicted or
    /// forgotten id's value, or `V::default()`), whose room the caller can
    /// reuse.
    pub(crate) fn insert(&mut self, id: &str, absent: Absent, value: &mut V) -> usize {
        let slot = match self.free.pop() {
            Some(s) => usize::from(s),
            None if self.slots.len() < self.cap => {
                self.slots.push(Slot {
                    id: String::new(),
                    hash: 0,
                    cached: 0,
                    live: false,
                    value: V::default(),
                });
                self.slots.len() - 1
            }
            None => {
                let oldest = self.oldest();
                self.unindex(oldest);
                oldest
            }
        };
        let hash = absent.hash;
        let bucket = self
            .probe(hash)
            .find(|&b| matches!(self.index[b], EMPTY | GONE))
            .expect("the index always has an empty bucket");
        if self.index[bucket] == GONE {
            self.gone -= 1;
        }
        self.index[bucket] = slot as u8;
        let s = &mut self.slots[slot];
        room::write(&mut s.id, id);
        s.hash = hash;
        s.cached = self.next;
        s.live = true;
        std::mem::swap(&mut s.value, value);
        if self.order.len() >= 2 * self.cap {
            let slots = &self.slots;
            self.order.retain(|&entry| current(slots, entry));
        }
        self.order.push_back((slot as u8, self.next));
        self.next += 1;
        slot
    }

    /// Forgets the id in slot `slot`. Its value stays in the slot, unread,
    /// until [`insert`](Self::insert) swaps it out.
    pub(crate) fn forget(&mut self, slot: usize) {
        if self.slots[slot].live {
            self.unindex(slot);
            self.free.push(slot as u8);
        }
    }

    /// The live slot cached longest ago (the cache is full).
    fn oldest(&mut self) -> usize {
        while let Some(entry) = self.order.pop_front() {
            if current(&self.slots, entry) {
                return usize::from(entry.0);
            }
        }
        unreachable!("a full cache has a live slot in its order")
    }

    /// Takes live slot `slot` out of the index; rebuilds the index when
    /// buckets let go would leave it more than two thirds full.
    fn unindex(&mut self, slot: usize) {
        let hash = self.slots[slot].hash;
        let bucket = self
            .probe(hash)
            .find(|&b| usize::from(self.index[b]) == slot)
            .expect("a live slot is in the index");
        self.index[bucket] = GONE;
        self.slots[slot].live = false;
        self.gone += 1;
        if self.gone > self.cap {
            self.index.fill(EMPTY);
            self.gone = 0;
            for (i, s) in self.slots.iter().enumerate().filter(|(_, s)| s.live) {
                let bucket = probe(self.index.len(), s.hash)
                    .find(|&b| self.index[b] == EMPTY)
                    .expect("the index always has an empty bucket");
                self.index[bucket] = i as u8;
            }
        }
    }
}

/// Whether an entry of [`Ids::order`] still stands for its slot's id: the
/// slot is live and was last cached under the entry's number.
fn current<V>(slots: &[Slot<V>], (slot, n): (u8, u64)) -> bool {
    let s = &slots[usize::from(slot)];
    s.live && s.cached == n
}

/// The buckets of an index of `len` (a power of two) that `hash` probes,
/// in order.
fn probe(len: usize, hash: u64) -> impl Iterator<Item = usize> {
    let mask = len - 1;
    (hash as usize & mask..).map(move |i| i & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caches `id`, which is not cached; its slot.
    fn put<V: Default>(ids: &mut Ids<V>, id: &str, mut value: V) -> usize {
        let absent = ids.find(id).expect_err("not cached");
        ids.insert(id, absent, &mut value)
    }

    #[test]
    fn the_oldest_id_is_evicted_and_a_forgotten_ones_slot_is_reused() {
        let mut ids: Ids<u32> = Ids::new(3);
        let a = put(&mut ids, "a", 1);
        let b = put(&mut ids, "b", 2);
        put(&mut ids, "c", 3);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.find("b").ok(), Some(b));
        // Full: "d" takes the slot of "a", cached first.
        assert_eq!(put(&mut ids, "d", 4), a);
        assert_eq!(ids.find("a").ok(), None);
        assert_eq!(*ids.get_mut(ids.find("d").ok().unwrap()), 4);
        // "b" forgotten: its slot is free, and the next id takes it, not
        // the oldest live one's ("c").
        ids.forget(b);
        assert_eq!((ids.len(), ids.find("b").ok()), (2, None));
        // Its value was left in the slot, and comes back to be reused.
        let (absent, mut value) = (ids.find("e").expect_err("not cached"), 5);
        assert_eq!(ids.insert("e", absent, &mut value), b);
        assert_eq!(value, 2);
        assert!(ids.find("c").is_ok());
        assert_eq!(ids.len(), 3);
    }

    /// Ids an attacker opens and closes, or crafts to look alike, neither
    /// grow the cache nor are found under another's name.
    #[test]
    fn crafted_ids_stay_within_the_cache() {
        let mut ids: Ids<usize> = Ids::new(100);
        for n in 0..50_000 {
            let id = format!("sshd[{n}]:");
            let slot = put(&mut ids, &id, n);
            if n % 2 == 0 {
                ids.forget(slot);
            }
        }
        assert_eq!(ids.len(), 100);
        assert_eq!(ids.slots.len(), 100);
        assert!(ids.order.len() <= 200 && ids.gone <= 100);
        // The 100 newest odd ids, and no other.
        for n in 0..50_000usize {
            let found = ids.find(&format!("sshd[{n}]:")).ok();
            assert_eq!(found.is_some(), n % 2 == 1 && n >= 49_800, "{n}");
            if let Some(slot) = found {
                assert_eq!(*ids.get_mut(slot), n);
            }
        }
        assert_eq!(ids.find("sshd[49999]").ok(), None);
        assert_eq!(ids.find("").ok(), None);
    }
}

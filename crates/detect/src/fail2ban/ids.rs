//! The multi-line failure ids a filter remembers (fail2ban's
//! `Utils.Cache(maxCount=100)` of `<F-MLFID>` values), each with the
//! failure merged under it so far.
//!
//! Most ids are seen on few lines: sshd's is the process id of one
//! connection, so under an attack nearly every failure line brings a new
//! id and evicts the oldest. The cache is therefore a fixed set of slots
//! whose storage is reused (an id's text is copied into the room of the
//! one it evicts), searched by the ids' hashes in one array: with at most
//! a hundred ids, a scan of that array costs about what a hash table's
//! look-up does, and inserting or evicting allocates nothing.
//!
//! The ids are chosen by whoever writes the log, so their hashes are
//! randomly seeded, and an id is only found when its text is equal: a
//! crafted id can neither take another's slot nor grow the cache.

use std::hash::BuildHasher;

/// Ids with a value each, at most `cap` of them; when full, caching a new
/// id evicts the one cached longest ago.
pub(crate) struct Ids<V> {
    cap: usize,
    /// Each slot's id's hash (stale in a free slot).
    hashes: Vec<u64>,
    /// When each slot's id was cached ([`FREE`] for a free slot).
    order: Vec<u64>,
    slots: Vec<Slot<V>>,
    hasher: foldhash::fast::RandomState,
    next: u64,
    len: usize,
}

/// The order of a free slot: after every id cached.
const FREE: u64 = u64::MAX;

struct Slot<V> {
    id: String,
    value: V,
}

impl<V: Default> Ids<V> {
    /// An empty cache of at most `cap` ids.
    pub(crate) fn new(cap: usize) -> Ids<V> {
        Ids {
            cap,
            hashes: Vec::with_capacity(cap),
            order: Vec::with_capacity(cap),
            slots: Vec::with_capacity(cap),
            hasher: foldhash::fast::RandomState::default(),
            next: 0,
            len: 0,
        }
    }

    /// How many ids are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot of `id`, if it is cached.
    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(id);
        self.hashes
            .iter()
            .enumerate()
            .filter(|&(_, &h)| h == hash)
            .map(|(i, _)| i)
            .find(|&i| self.order[i] != FREE && self.slots[i].id == id)
    }

    /// The value in slot `slot` (one [`find`](Self::find) or
    /// [`insert`](Self::insert) gave).
    pub(crate) fn get_mut(&mut self, slot: usize) -> &mut V {
        &mut self.slots[slot].value
    }

    /// Caches `id`, which is not cached, with `value`; evicts the id cached
    /// longest ago if the cache is full. Its slot.
    pub(crate) fn insert(&mut self, id: &str, value: V) -> usize {
        let slot = if self.slots.len() < self.cap {
            self.slots.push(Slot {
                id: String::new(),
                value: V::default(),
            });
            self.hashes.push(0);
            self.order.push(FREE);
            self.slots.len() - 1
        } else {
            // A free slot if there is one (its order is the greatest),
            // else the oldest id's.
            let oldest = (0..self.order.len()).min_by_key(|&i| self.order[i].wrapping_add(1));
            oldest.expect("a cache of no ids")
        };
        if self.order[slot] == FREE {
            self.len += 1;
        }
        let s = &mut self.slots[slot];
        s.id.clear();
        s.id.push_str(id);
        s.value = value;
        self.hashes[slot] = self.hasher.hash_one(id);
        self.order[slot] = self.next;
        self.next += 1;
        slot
    }

    /// Forgets the id in slot `slot`; its value.
    pub(crate) fn remove(&mut self, slot: usize) -> V {
        if self.order[slot] != FREE {
            self.order[slot] = FREE;
            self.len -= 1;
        }
        std::mem::take(&mut self.slots[slot].value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_id_is_evicted_and_a_forgotten_ones_slot_is_reused() {
        let mut ids: Ids<u32> = Ids::new(3);
        let a = ids.insert("a", 1);
        let b = ids.insert("b", 2);
        ids.insert("c", 3);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.find("b"), Some(b));
        // Full: "d" takes the slot of "a", cached first.
        assert_eq!(ids.insert("d", 4), a);
        assert_eq!(ids.find("a"), None);
        assert_eq!(*ids.get_mut(ids.find("d").unwrap()), 4);
        // "b" forgotten: its slot is free, and the next id takes it, not
        // the oldest live one's ("c").
        assert_eq!(ids.remove(b), 2);
        assert_eq!((ids.len(), ids.find("b")), (2, None));
        assert_eq!(ids.insert("e", 5), b);
        assert!(ids.find("c").is_some());
        assert_eq!(ids.len(), 3);
    }

    /// Ids an attacker opens and closes, or crafts to look alike, neither
    /// grow the cache nor are found under another's name.
    #[test]
    fn crafted_ids_stay_within_the_cache() {
        let mut ids: Ids<usize> = Ids::new(100);
        for n in 0..50_000 {
            let id = format!("sshd[{n}]:");
            let slot = ids.insert(&id, n);
            if n % 2 == 0 {
                ids.remove(slot);
            }
        }
        assert_eq!(ids.len(), 100);
        assert_eq!(ids.slots.len(), 100);
        // The 100 newest odd ids, and no other.
        for n in 0..50_000usize {
            let found = ids.find(&format!("sshd[{n}]:"));
            assert_eq!(found.is_some(), n % 2 == 1 && n >= 49_800, "{n}");
            if let Some(slot) = found {
                assert_eq!(*ids.get_mut(slot), n);
            }
        }
        assert_eq!(ids.find("sshd[49999]"), None);
        assert_eq!(ids.find(""), None);
    }
}

//! Where the [`Tracker`](super::Tracker) finds a pair's slot: a hash table
//! of slot numbers keyed by a per-tracker random hash of (rule, address).

use palisade_model::Timestamp;

/// Slot numbers by hash of (rule, address): open addressing with linear
/// probing, each entry one word (32 bits of the hash, which also places it,
/// and the slot number plus one; 0 is empty), so a lookup reads one cache
/// line before the slot. At most three quarters full (it doubles as pairs
/// arrive); removal shifts the entries after the hole back (no
/// tombstones).
pub(super) struct SlotTable {
    pub(super) entries: Vec<u64>,
    pub(super) len: usize,
}

/// Table entries for `n` pairs.
pub(super) fn table_size(n: usize) -> usize {
    (n + n / 3 + 1).next_power_of_two().max(16)
}

impl SlotTable {
    pub(super) fn with_capacity(n: usize) -> SlotTable {
        SlotTable {
            entries: vec![0; table_size(n)],
            len: 0,
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The first place to look for `hash`.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as u32 as usize & self.mask()
    }

    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch(&self.entries[self.home(hash)]);
    }

    /// The slot of the first entry with `hash`'s bits, if any: most likely
    /// the pair's, to ask the processor for before it is needed.
    #[inline]
    pub(super) fn likely(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// The slot whose entry has `hash`'s bits and for which `eq` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let (mask, tag) = (self.mask(), hash as u32);
        let mut at = self.home(hash);
        loop {
            let e = self.entries[at];
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == tag && eq(e as u32 - 1) {
                return Some(e as u32 - 1);
            }
            at = (at + 1) & mask;
        }
    }

    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        if 4 * (self.len + 1) > 3 * self.entries.len() {
            let n = 2 * self.entries.len();
            let mut bigger = Vec::with_capacity(n);
            super::pages::advise_huge(&bigger);
            bigger.resize(n, 0);
            let old = std::mem::replace(&mut self.entries, bigger);
            self.len = 0;
            for e in old.into_iter().filter(|&e| e != 0) {
                self.place(e);
            }
        }
        self.place(u64::from(hash as u32) << 32 | u64::from(slot + 1));
    }

    fn place(&mut self, e: u64) {
        let mask = self.mask();
        let mut at = (e >> 32) as usize & mask;
        while self.entries[at] != 0 {
            at = (at + 1) & mask;
        }
        self.entries[at] = e;
        self.len += 1;
    }

    pub(super) fn remove(&mut self, hash: u64, slot: u32) {
        let mask = self.mask();
        let want = u64::from(hash as u32) << 32 | u64::from(slot + 1);
        let mut hole = self.home(hash);
        loop {
            match self.entries[hole] {
                0 => return,
                e if e == want => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        let mut at = (hole + 1) & mask;
        loop {
            let e = self.entries[at];
            if e == 0 {
                break;
            }
            // Move back an entry whose home is not between the hole and it.
            let home = (e >> 32) as usize & mask;
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.entries[hole] = e;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.entries[hole] = 0;
        self.len -= 1;
    }
}

/// Hashes (rule, address) keys. Addresses are chosen by attackers, so the
/// keys are random per tracker (no precomputed collisions), mixed by
/// folded multiplications.
#[derive(Clone, Copy)]
pub(super) struct KeyHash(pub(super) [u64; 3]);

#[inline]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyHash {
    #[inline]
    pub(super) fn hash(&self, rule: u32, addr: &[u8; 16]) -> u64 {
        let x = u128::from_le_bytes(*addr);
        let (a, b) = (x as u64, (x >> 64) as u64);
        let h = folded_mul(a ^ self.0[0], b ^ self.0[1] ^ u64::from(rule));
        folded_mul(h, self.0[2])
    }
}

pub(super) fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        Timestamp::now().as_millis() ^ u64::from(std::process::id())
    }
}

/// Asks the processor to bring the cache line of `p` in (no effect on
/// other targets).
#[inline(always)]
pub(super) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; `p` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_table_finds_what_it_holds() {
        let mut t = SlotTable::with_capacity(4);
        let mut model = std::collections::HashMap::new();
        let mut r = crate::loggen::Rng::new(9);
        for step in 0..50_000u32 {
            // Few distinct hash bits: long runs, wrapping, shifts.
            let hash = r.below(64) | (r.below(4) << 40);
            let slot = r.below(300) as u32;
            match model.entry(slot) {
                std::collections::hash_map::Entry::Occupied(e) => t.remove(e.remove(), slot),
                std::collections::hash_map::Entry::Vacant(e) => {
                    t.insert(hash, slot);
                    e.insert(hash);
                }
            }
            assert_eq!(t.len, model.len(), "{step}");
            if step % 97 == 0 {
                for (&slot, &hash) in &model {
                    assert_eq!(t.find(hash, |s| s == slot), Some(slot), "{step}");
                }
                assert_eq!(t.find(12345, |_| true), None);
            }
        }
    }
}

//! The failure times of the pairs whose rule counts more failures than a
//! [`Slot`](super::slots::Slot) holds: rings in an arena of words, each
//! ring its header word followed by its times, so that reading a pair's
//! times costs one trip to memory (a map from slot to ring, then the ring's
//! own allocation, cost three).

use super::slots::{Times, ring_index};

/// Rings of failure times (milliseconds) in an arena of fixed-size chunks
/// (none is ever moved or copied to grow it), each ring at an offset: its
/// chunk, and its place in the chunk.
pub(super) struct Rings {
    chunks: Vec<Box<[u64]>>,
    /// Words used in the last chunk.
    used: usize,
    /// Offsets of freed rings, by capacity, for the next ring of that size.
    free: Vec<(usize, Vec<u32>)>,
    /// Most chunks ([`MAX_CHUNKS`], fewer in tests).
    most: usize,
}

/// Bits of an offset that give the place in a chunk; the others give the
/// chunk.
const POS_BITS: u32 = 13;
/// Words in a chunk (64 KiB, as little of a small budget as the evidence
/// log's least): the largest ring and its header fit.
const CHUNK: usize = 1 << POS_BITS;
/// Most chunks (32 GiB).
const MAX_CHUNKS: usize = 1 << (32 - POS_BITS);

/// A ring's header: where its oldest time is, how many times it holds, how
/// many of the newest are in order (for those, the n-th newest is also the
/// earliest of the n newest), and its capacity, 16 bits each.
#[derive(Clone, Copy)]
struct Header {
    head: usize,
    len: usize,
    sorted: usize,
    cap: usize,
}

impl Header {
    fn read(word: u64) -> Header {
        let field = |n: u32| ((word >> (16 * n)) & 0xffff) as usize;
        Header {
            head: field(0),
            len: field(1),
            sorted: field(2),
            cap: field(3),
        }
    }

    fn word(self) -> u64 {
        [self.head, self.len, self.sorted, self.cap]
            .iter()
            .enumerate()
            .fold(0, |w, (n, &f)| w | (f as u64) << (16 * n))
    }
}

/// Most times a ring holds (a stage counts at most 1,000 failures).
pub(super) const MAX_RING: usize = CHUNK - 1;

impl Rings {
    pub(super) fn new() -> Rings {
        Rings {
            chunks: Vec::new(),
            used: CHUNK,
            free: Vec::new(),
            most: MAX_CHUNKS,
        }
    }

    /// An arena of at most `most` chunks.
    #[cfg(test)]
    pub(super) fn at_most(most: usize) -> Rings {
        Rings {
            most,
            ..Rings::new()
        }
    }

    /// Bytes the arena holds (freed rings included: they are reused).
    pub(super) fn bytes(&self) -> usize {
        self.chunks.len() * CHUNK * 8
    }

    /// A ring's words: its header, then its times.
    #[inline]
    fn words(&self, at: u32) -> &[u64] {
        let (chunk, pos) = place(at);
        let words = &self.chunks[chunk][pos..];
        &words[..1 + Header::read(words[0]).cap]
    }

    #[inline]
    fn words_mut(&mut self, at: u32) -> &mut [u64] {
        let (chunk, pos) = place(at);
        let words = &mut self.chunks[chunk][pos..];
        let cap = Header::read(words[0]).cap;
        &mut words[..1 + cap]
    }

    /// A new ring of capacity `cap` holding `times` (oldest first, at most
    /// `cap` of them), with its newest `sorted` in order; its offset, or
    /// `None` if the arena is at its most chunks.
    pub(super) fn add(&mut self, cap: usize, times: &[u64], sorted: usize) -> Option<u32> {
        assert!((1..=MAX_RING).contains(&cap) && times.len() <= cap);
        let reused = self
            .free
            .iter_mut()
            .find(|(c, _)| *c == cap)
            .and_then(|(_, offsets)| offsets.pop());
        let at = match reused {
            Some(at) => at,
            None => {
                if self.used + 1 + cap > CHUNK {
                    if self.chunks.len() == self.most {
                        return None;
                    }
                    self.chunks.push(vec![0; CHUNK].into_boxed_slice());
                    self.used = 0;
                }
                let at = ((self.chunks.len() - 1) << POS_BITS | self.used) as u32;
                self.used += 1 + cap;
                at
            }
        };
        let (chunk, pos) = place(at);
        let words = &mut self.chunks[chunk][pos..pos + 1 + cap];
        words[0] = Header {
            head: 0,
            len: times.len(),
            sorted,
            cap,
        }
        .word();
        words[1..1 + times.len()].copy_from_slice(times);
        Some(at)
    }

    /// Frees the ring at `at` for a later one of its size.
    pub(super) fn remove(&mut self, at: u32) {
        let cap = Header::read(self.words(at)[0]).cap;
        match self.free.iter_mut().find(|(c, _)| *c == cap) {
            Some((_, offsets)) => offsets.push(at),
            None => self.free.push((cap, vec![at])),
        }
    }

    /// The ring at `at`.
    #[inline]
    pub(super) fn get(&self, at: u32) -> Ring<'_> {
        let words = self.words(at);
        Ring {
            header: Header::read(words[0]),
            times: &words[1..],
        }
    }

    /// Adds a failure time to the ring at `at`, forgetting its oldest if
    /// it is full.
    #[inline]
    pub(super) fn push(&mut self, at: u32, t: u64) {
        let newest = {
            let ring = self.get(at);
            (ring.len() > 0).then(|| ring.time(0))
        };
        let words = self.words_mut(at);
        let mut h = Header::read(words[0]);
        h.sorted = if newest.is_some_and(|n| t >= n) {
            (h.sorted + 1).min(h.cap)
        } else {
            1
        };
        let times = &mut words[1..];
        if h.len == h.cap {
            times[h.head] = t;
            h.head = ring_index(h.head, 1, h.cap);
        } else {
            times[ring_index(h.head, h.len, h.cap)] = t;
            h.len += 1;
        }
        words[0] = h.word();
    }

    /// Asks the processor for the ring at `at`, of capacity `cap` at most
    /// (its header is not read: it is what is asked for), before it is
    /// read.
    #[inline]
    pub(super) fn prefetch(&self, at: u32, cap: usize) {
        let (chunk, pos) = place(at);
        let Some(words) = self.chunks.get(chunk) else {
            return;
        };
        // A word in each cache line the ring can span: one in eight, and
        // its last (a ring need not start where a line does).
        for w in (pos..=pos + cap).step_by(8).chain([pos + cap]) {
            if let Some(w) = words.get(w) {
                super::table::prefetch(w);
            }
        }
    }
}

/// The chunk and the place in it of the ring at `at`.
#[inline]
fn place(at: u32) -> (usize, usize) {
    ((at >> POS_BITS) as usize, at as usize & (CHUNK - 1))
}

/// A ring of failure times, read newest first.
pub(super) struct Ring<'a> {
    header: Header,
    times: &'a [u64],
}

impl Times for Ring<'_> {
    fn len(&self) -> usize {
        self.header.len
    }
    fn sorted(&self) -> usize {
        self.header.sorted
    }
    #[inline]
    fn time(&self, back: usize) -> u64 {
        let h = self.header;
        self.times[ring_index(h.head, h.len - 1 - back, h.cap)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest times of a ring, newest first.
    fn newest(r: &Rings, at: u32) -> Vec<u64> {
        let ring = r.get(at);
        (0..ring.len()).map(|k| ring.time(k)).collect()
    }

    #[test]
    fn rings_keep_their_newest_times_and_are_reused() {
        let mut r = Rings::new();
        let a = r.add(3, &[1, 2], 2).unwrap();
        let b = r.add(5, &[7], 1).unwrap();
        r.push(a, 3);
        r.push(a, 4);
        assert_eq!(newest(&r, a), [4, 3, 2]);
        assert_eq!(r.get(a).sorted(), 3);
        r.push(a, 0);
        assert_eq!(newest(&r, a), [0, 4, 3]);
        assert_eq!(r.get(a).sorted(), 1);
        assert_eq!(newest(&r, b), [7]);
        r.remove(a);
        let bytes = r.bytes();
        let c = r.add(3, &[9], 1).unwrap();
        assert_eq!(c, a, "a freed ring of the same size is reused");
        assert_eq!(newest(&r, c), [9]);
        assert_eq!(r.bytes(), bytes);
        assert_eq!(newest(&r, b), [7]);
    }

    #[test]
    fn a_full_arena_refuses_rings() {
        let mut r = Rings::at_most(1);
        let rings = CHUNK / 21;
        for _ in 0..rings {
            assert!(r.add(20, &[1], 1).is_some());
        }
        assert!(r.add(20, &[1], 1).is_none());
        assert_eq!(r.bytes(), CHUNK * 8);
    }
}

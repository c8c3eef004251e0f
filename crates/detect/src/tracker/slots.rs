//! The per-pair state of the [`Tracker`](super::Tracker): one cache line
//! per (rule, attacker) pair ([`Slot`]) holding its failure times in a
//! small ring, moved to a wider ring (`rings.rs`) when the rule counts
//! more, and which stage those times reach ([`to_fire`]).

use std::net::IpAddr;

use palisade_model::Net;

/// No stage in force.
pub(super) const NONE_FIRED: u8 = u8::MAX;

/// `rule` of a free slot.
pub(super) const FREE: u16 = u16::MAX;

/// Failure times kept in the slot itself (as offsets from its base time);
/// a pair of a rule counting more moves its times to a wider ring once
/// it has more failures than that (most attackers never do).
pub(super) const INLINE_TIMES: usize = 5;

/// `Slot::flags`: the times are in a ring of `Tracker::rings` (see
/// [`Slot::ring`]).
pub(super) const WIDE: u8 = 1;
/// `Slot::flags`: a counted failure could have been forged.
pub(super) const FORGEABLE: u8 = 2;

/// Bytes of memory per pair: its slot and, at most three quarters full,
/// its entries of the hash table.
pub(super) const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// One (rule, attacker) pair being counted, in one cache line.
#[repr(C, align(64))]
pub(super) struct Slot {
    /// Failure times: a ring, in ms after `base`.
    pub(super) times: [u32; INLINE_TIMES],
    /// When the stage in force stops being in force, in seconds since the
    /// epoch rounded up (`u32::MAX`: forever).
    pub(super) until: u32,
    pub(super) base: u64,
    /// The newest evidence line's position in the evidence log, plus one
    /// (0: none).
    pub(super) evidence: u64,
    /// The counted network's address (IPv4 as IPv4-mapped IPv6).
    pub(super) addr: [u8; 16],
    /// The rule, or [`FREE`].
    pub(super) rule: u16,
    /// The highest stage in force, or [`NONE_FIRED`].
    pub(super) fired: u8,
    /// The counted network's prefix length (of its family).
    pub(super) prefix: u8,
    /// [`WIDE`], [`FORGEABLE`].
    pub(super) flags: u8,
    /// The inline times ring: index of the oldest, how many are kept, how
    /// many of the newest are in order (for those, the n-th newest is also
    /// the earliest of the n newest).
    pub(super) t_head: u8,
    pub(super) t_len: u8,
    pub(super) t_sorted: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// Read access to a ring of failure times, newest first.
pub(super) trait Times {
    fn len(&self) -> usize;
    fn sorted(&self) -> usize;
    /// The time `back` failures before the newest (0 = the newest).
    fn time(&self, back: usize) -> u64;

    /// How many of the newest failures in a row are later than `since`.
    fn recent(&self, since: u64) -> usize {
        (0..self.len())
            .take_while(|&k| self.time(k) > since)
            .count()
    }

    /// Whether the `count` newest failures are all later than `since`
    /// (`recent(since) >= count`).
    fn reached(&self, since: u64, count: usize) -> bool {
        if count == 0 {
            return true;
        }
        if count > self.len() {
            return false;
        }
        if count <= self.sorted() {
            return self.time(count - 1) > since;
        }
        (0..count).all(|k| self.time(k) > since)
    }
}

/// The stage to fire now, if any: the highest whose threshold is reached,
/// if higher than the stage in force (`fired`); and the failures within its
/// window.
pub(super) fn to_fire<T: Times>(
    times: &T,
    stages: &[crate::config::StageConfig],
    fired: Option<usize>,
    t: u64,
) -> (Option<usize>, usize) {
    let mut fire = None;
    for (n, stage) in stages.iter().enumerate() {
        let since = t.saturating_sub(stage.within.as_millis() as u64);
        if times.reached(since, stage.count as usize) {
            fire = Some(n);
        }
    }
    match fire {
        Some(n) if fired.is_none_or(|f| n > f) => {
            let since = t.saturating_sub(stages[n].within.as_millis() as u64);
            (Some(n), times.recent(since))
        }
        _ => (None, 0),
    }
}

#[inline]
pub(super) fn ring_index(head: usize, k: usize, cap: usize) -> usize {
    let i = head + k;
    if i >= cap { i - cap } else { i }
}

/// A slot's inline times, with the ring's capacity (its rule's).
pub(super) struct Inline<'a> {
    slot: &'a Slot,
    cap: usize,
}

impl Times for Inline<'_> {
    fn len(&self) -> usize {
        usize::from(self.slot.t_len)
    }
    fn sorted(&self) -> usize {
        usize::from(self.slot.t_sorted)
    }
    #[inline]
    fn time(&self, back: usize) -> u64 {
        let s = self.slot;
        let i = ring_index(
            usize::from(s.t_head),
            usize::from(s.t_len) - 1 - back,
            self.cap,
        );
        s.base + u64::from(s.times[i])
    }
}

impl Slot {
    #[inline]
    pub(super) fn is_wide(&self) -> bool {
        self.flags & WIDE != 0
    }

    #[inline]
    pub(super) fn inline(&self, cap: usize) -> Inline<'_> {
        Inline { slot: self, cap }
    }

    /// Adds a failure time to the inline ring of capacity `cap`; `false`
    /// (nothing changed) if `t` and the kept times do not fit 32-bit
    /// offsets from one base.
    #[inline]
    pub(super) fn push_time(&mut self, t: u64, cap: usize) -> bool {
        let len = usize::from(self.t_len);
        if len == 0 {
            self.base = t;
        } else if t < self.base || t - self.base > u64::from(u32::MAX) {
            let (mut lo, mut hi) = (t, t);
            for k in 0..len {
                let x = self.inline(cap).time(k);
                lo = lo.min(x);
                hi = hi.max(x);
            }
            if hi - lo > u64::from(u32::MAX) {
                return false;
            }
            let shift = (self.base - lo) as u32;
            for x in &mut self.times[..cap] {
                *x = x.wrapping_add(shift);
            }
            self.base = lo;
        }
        self.t_sorted = if len > 0 && t >= self.inline(cap).time(0) {
            (self.t_sorted + 1).min(cap as u8)
        } else {
            1
        };
        let head = usize::from(self.t_head);
        let at = if len == cap {
            self.t_head = ring_index(head, 1, cap) as u8;
            head
        } else {
            self.t_len += 1;
            ring_index(head, len, cap)
        };
        self.times[at] = (t - self.base) as u32;
        true
    }

    /// Adds a failure time to the inline ring of capacity `cap`, dropping
    /// the oldest when it is full, and every other one if the times do not
    /// fit 32-bit offsets from one base.
    pub(super) fn keep_time(&mut self, t: u64, cap: usize) {
        if !self.push_time(t, cap) {
            (self.t_head, self.t_len, self.t_sorted) = (0, 0, 0);
            self.push_time(t, cap);
        }
    }

    /// The inline times (a ring of capacity `cap`), oldest first, and how
    /// many of the newest are in order: to move them to a wider ring.
    pub(super) fn oldest_first(&self, cap: usize) -> ([u64; INLINE_TIMES], usize, usize) {
        let len = usize::from(self.t_len);
        let mut times = [0; INLINE_TIMES];
        for (k, x) in times.iter_mut().take(len).enumerate() {
            *x = self.inline(cap).time(len - 1 - k);
        }
        (times, len, usize::from(self.t_sorted))
    }

    /// The offset of the slot's ring in the tracker's [`Rings`], when it is
    /// [`WIDE`] (its inline times are then unused: the first holds it).
    ///
    /// [`Rings`]: super::rings::Rings
    #[inline]
    pub(super) fn ring(&self) -> u32 {
        self.times[0]
    }

    /// Moves the slot's times to the ring at `at`.
    pub(super) fn set_ring(&mut self, at: u32) {
        self.times[0] = at;
        self.flags |= WIDE;
    }

    /// The counted network.
    pub(super) fn net(&self) -> Net {
        let a = std::net::Ipv6Addr::from(self.addr);
        let addr = match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        };
        Net::truncating(addr, self.prefix)
    }
}

/// The 16 bytes of `addr` (IPv4 as IPv4-mapped IPv6).
#[inline]
pub(super) fn key(addr: &IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

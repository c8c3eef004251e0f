//! Counting failures per (rule, address) and firing stages.
//!
//! For each failure the tracker keeps its time (at most as many as the
//! rule's largest stage count) and the line as evidence (at most
//! [`Limits::evidence_lines`], each capped). A stage fires when the failures
//! within its window reach its count and no higher or equal stage of the
//! rule is in force for the address; a stage is in force until its ban
//! length has passed. A good pattern forgets the address and yields
//! [`Event::Forgive`].
//!
//! Memory is bounded: at most [`Limits::max_tracked`] (rule, address) pairs;
//! when full, the least recently seen pair is forgotten.
//!
//! Layout, for speed with many attackers: the pairs live in a slab whose
//! slots are reused (a forgotten pair's slot, with its buffers, serves the
//! next new pair, so steady state allocates nothing); a hash table of slot
//! numbers finds them; each slot keeps its times and its evidence lines in
//! ring buffers; the least recently seen pair is found through a queue of
//! (slot, touch) records, stale records being skipped and dropped. Whether a
//! record is stale, and where a forgotten slot's table entry is, are read
//! from a small array beside the slots (8 bytes each), not from the slots:
//! with many attackers most records are stale, and fetching a slot for each
//! was a cache miss each.

use std::collections::VecDeque;
use std::net::IpAddr;

use palisade_model::decision::clean_text;
use palisade_model::{Net, Scope, Span, Timestamp};

use crate::config::Limits;
use crate::engine::{Engine, Hit, HitKind};
use crate::sources::Line;

/// A stage of a rule, as carried in [`Event::Ban`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRef {
    /// Position in the rule's stages, ordered by count (0 = first to fire).
    pub index: usize,
    pub name: String,
    /// The xt_recent list the stage feeds, if configured.
    pub list: Option<String>,
}

/// What the agent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Ban `address` for `span` (source: detector).
    Ban {
        rule: String,
        address: Net,
        stage: StageRef,
        span: Span,
        scope: Scope,
        /// Failures counted within the stage's window.
        count: u32,
        /// The last few matched lines, oldest first, cleaned and capped.
        evidence: Vec<String>,
    },
    /// Lift the bans detectors made for `address` (a good pattern matched).
    Forgive { rule: String, address: Net },
}

/// No stage in force.
const NONE_FIRED: u16 = u16::MAX;

/// `rule` of a free slot.
const FREE: u32 = u32::MAX;

/// Failure times kept in the slot itself (as offsets from its base time);
/// rules with larger stage counts keep them in [`Wide`] rings.
const INLINE_TIMES: usize = 20;

/// `Slot::t_cap` flag: this slot's times are in `Tracker::wide`.
const WIDE: u8 = 0x80;

/// Most evidence lines kept per pair.
const MAX_LINES: usize = palisade_model::decision::MAX_EVIDENCE_LINES;

/// Longest evidence line kept before cutting (sources cut lines at 16 KiB).
const MAX_LINE_LEN: usize = 16 * 1024;

/// One (rule, address) pair being counted, in three cache lines: the times
/// and state a failure reads, then where its evidence lines are (their
/// bytes are in `Tracker::arena`, or on the heap when they outgrow it).
#[repr(C, align(64))]
struct Slot {
    /// Failure times: a ring of the rule's largest stage count, in ms after
    /// `base`.
    times: [u32; INLINE_TIMES],
    base: u64,
    /// When the stage in force stops being in force.
    until: u64,
    /// The address (IPv4 as IPv4-mapped IPv6).
    addr: [u8; 16],
    /// The rule, or [`FREE`].
    rule: u32,
    /// The highest stage in force, or [`NONE_FIRED`].
    fired: u16,
    /// The times ring: index of the oldest, how many are kept, how many of
    /// the newest are in order (for those, the n-th newest is also the
    /// earliest of the n newest), capacity (with [`WIDE`]).
    t_head: u8,
    t_len: u8,
    t_sorted: u8,
    t_cap: u8,
    /// The evidence ring (third cache line).
    ev: Ring,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 192);

/// What the eviction order needs of a slot, kept apart from it in a small
/// array (8 bytes a slot) so that looking past stale order records and
/// finding a forgotten pair's table entry do not fetch the slot itself.
#[derive(Clone, Copy)]
struct Meta {
    /// The last touch, as its order record has it (always even), or
    /// [`FREE_STAMP`].
    stamp: u32,
    /// The slot's table tag (the low 32 bits of its key's hash).
    tag: u32,
}

/// `Meta::stamp` of a free slot (odd: no order record has it).
const FREE_STAMP: u32 = 1;

/// The times of a slot whose rule counts more than [`INLINE_TIMES`]
/// failures, or whose times span more than 32 bits of milliseconds.
struct Wide {
    times: Vec<u64>,
    head: usize,
    len: usize,
    sorted: usize,
}

/// Read access to a ring of failure times, newest first.
trait Times {
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
fn to_fire<T: Times>(
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

fn ring_index(head: usize, k: usize, cap: usize) -> usize {
    let i = head + k;
    if i >= cap { i - cap } else { i }
}

impl Times for Slot {
    fn len(&self) -> usize {
        usize::from(self.t_len)
    }
    fn sorted(&self) -> usize {
        usize::from(self.t_sorted)
    }
    fn time(&self, back: usize) -> u64 {
        let cap = usize::from(self.t_cap);
        let i = ring_index(
            usize::from(self.t_head),
            usize::from(self.t_len) - 1 - back,
            cap,
        );
        self.base + u64::from(self.times[i])
    }
}

impl Times for Wide {
    fn len(&self) -> usize {
        self.len
    }
    fn sorted(&self) -> usize {
        self.sorted
    }
    fn time(&self, back: usize) -> u64 {
        self.times[ring_index(self.head, self.len - 1 - back, self.times.len())]
    }
}

impl Wide {
    fn push(&mut self, t: u64) {
        let cap = self.times.len();
        self.sorted = if self.len > 0 && t >= self.time(0) {
            (self.sorted + 1).min(cap)
        } else {
            1
        };
        if self.len == cap {
            self.times[self.head] = t;
            self.head = ring_index(self.head, 1, cap);
        } else {
            self.times[ring_index(self.head, self.len, cap)] = t;
            self.len += 1;
        }
    }
}

impl Slot {
    fn is_wide(&self) -> bool {
        self.t_cap & WIDE != 0
    }

    /// Adds a failure time; `false` (nothing changed) if `t` and the kept
    /// times do not fit 32-bit offsets from one base.
    fn push_time(&mut self, t: u64) -> bool {
        let cap = usize::from(self.t_cap);
        let len = usize::from(self.t_len);
        if len == 0 {
            self.base = t;
        } else if t < self.base || t - self.base > u64::from(u32::MAX) {
            let (mut lo, mut hi) = (t, t);
            for k in 0..len {
                let x = self.time(k);
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
        self.t_sorted = if len > 0 && t >= self.time(0) {
            (self.t_sorted + 1).min(self.t_cap)
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

    /// The times as a [`Wide`] ring of capacity `cap`.
    fn widen(&self, cap: usize) -> Wide {
        let len = usize::from(self.t_len);
        let mut times = vec![0; cap];
        for (k, x) in times.iter_mut().take(len).enumerate() {
            *x = self.time(len - 1 - k);
        }
        Wide {
            times,
            head: 0,
            len,
            sorted: usize::from(self.t_sorted),
        }
    }
}

fn key(addr: &IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

/// Evidence lines in a ring of bytes, their lengths in a ring beside it.
/// The bytes are the slot's region of the arena, or `heap` once the lines
/// to keep do not fit there.
#[derive(Default)]
struct Ring {
    heap: Option<Box<[u8]>>,
    head: u32,
    used: u32,
    /// Lengths of the kept lines, oldest at `first`.
    lens: [u16; MAX_LINES],
    first: u8,
    count: u8,
}

fn ring_read(buf: &[u8], at: usize, out: &mut [u8]) {
    let cap = buf.len();
    let first = out.len().min(cap - at);
    out[..first].copy_from_slice(&buf[at..at + first]);
    let rest = out.len() - first;
    out[first..].copy_from_slice(&buf[..rest]);
}

fn ring_write(buf: &mut [u8], at: usize, data: &[u8]) {
    let cap = buf.len();
    let first = data.len().min(cap - at);
    buf[at..at + first].copy_from_slice(&data[..first]);
    let rest = data.len() - first;
    buf[..rest].copy_from_slice(&data[first..]);
}

fn wrap(at: usize, cap: usize) -> usize {
    if at >= cap { at - cap } else { at }
}

impl Ring {
    fn clear(&mut self) {
        self.head = 0;
        self.used = 0;
        self.first = 0;
        self.count = 0;
    }

    fn len_at(&self, n: usize) -> usize {
        usize::from(self.lens[(usize::from(self.first) + n) % MAX_LINES])
    }

    /// Appends `line` (at most [`MAX_LINE_LEN`] + 3 bytes), keeping at most
    /// `max` lines (`max` <= [`MAX_LINES`]); `region` is the slot's room in
    /// the arena.
    fn push(&mut self, region: &mut [u8], line: &[u8], max: usize) {
        let mut heap = self.heap.take();
        let cap = heap.as_ref().map_or(region.len(), |h| h.len());
        if usize::from(self.count) >= max {
            let n = self.len_at(0);
            self.head = wrap(self.head as usize + n, cap) as u32;
            self.used -= n as u32;
            self.first = ((usize::from(self.first) + 1) % MAX_LINES) as u8;
            self.count -= 1;
        }
        let need = line.len();
        let used = self.used as usize;
        if used + need > cap {
            let mut bigger =
                vec![0u8; (used + need).max(cap + cap / 2).max(256)].into_boxed_slice();
            let buf: &[u8] = heap.as_deref().unwrap_or(region);
            ring_read(buf, self.head as usize, &mut bigger[..used]);
            heap = Some(bigger);
            self.head = 0;
        }
        let buf: &mut [u8] = match &mut heap {
            Some(h) => h,
            None => region,
        };
        let at = wrap(self.head as usize + used, buf.len());
        ring_write(buf, at, line);
        self.heap = heap;
        self.used += need as u32;
        self.lens[(usize::from(self.first) + usize::from(self.count)) % MAX_LINES] = need as u16;
        self.count += 1;
    }

    /// Asks the processor to fetch the room the next `len` bytes will be
    /// written to.
    fn prefetch_next(&self, region: &[u8], len: usize) {
        let buf: &[u8] = self.heap.as_deref().unwrap_or(region);
        if self.used as usize + len > buf.len() {
            return; // it will grow
        }
        let at = wrap(self.head as usize + self.used as usize, buf.len());
        let mut off = 0;
        while off < len + 64 {
            prefetch(&buf[wrap(at + off.min(len), buf.len())]);
            off += 64;
        }
    }

    /// The lines, oldest first.
    fn lines(&self, region: &[u8]) -> Vec<String> {
        let buf: &[u8] = self.heap.as_deref().unwrap_or(region);
        let mut out = Vec::with_capacity(usize::from(self.count));
        let mut at = self.head as usize;
        for n in 0..usize::from(self.count) {
            let len = self.len_at(n);
            let first = len.min(buf.len() - at);
            let mut text = Vec::with_capacity(len);
            text.extend_from_slice(&buf[at..at + first]);
            text.extend_from_slice(&buf[..len - first]);
            at = wrap(at + len, buf.len());
            // Written from whole `str`s.
            out.push(String::from_utf8(text).unwrap_or_default());
        }
        out
    }
}

/// Asks the kernel to back `v`'s buffer with huge pages where it can (the
/// slots and evidence are read at random: fewer TLB misses).
fn advise_huge<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<T>();
        let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if b > a {
            // SAFETY: advice on whole pages inside the vector's own
            // allocation; it changes how they are backed, not their contents.
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// Asks the processor to bring the cache line of `p` in (no effect on
/// other targets).
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; `p` is a valid reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Slot numbers by hash of (rule, address): open addressing with linear
/// probing, each entry one word (32 bits of the hash, which also places it,
/// and the slot number plus one; 0 is empty), so a lookup reads one cache
/// line before the slot. At most half full; removal shifts the entries
/// after the hole back (no tombstones).
struct SlotTable {
    entries: Vec<u64>,
    len: usize,
}

impl SlotTable {
    fn with_capacity(n: usize) -> SlotTable {
        SlotTable {
            entries: vec![0; (2 * n).next_power_of_two().max(16)],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The first place to look for `hash`.
    fn home(&self, hash: u64) -> usize {
        hash as u32 as usize & self.mask()
    }

    fn prefetch(&self, hash: u64) {
        prefetch(&self.entries[self.home(hash)]);
    }

    /// The slot whose entry has `hash`'s bits and for which `eq` holds.
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
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

    fn insert(&mut self, hash: u64, slot: u32) {
        if 2 * (self.len + 1) > self.entries.len() {
            let bigger = vec![0; 2 * self.entries.len()];
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

    fn remove(&mut self, hash: u64, slot: u32) {
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
struct KeyHash([u64; 3]);

fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyHash {
    fn hash(&self, rule: u32, addr: &[u8; 16]) -> u64 {
        let x = u128::from_le_bytes(*addr);
        let (a, b) = (x as u64, (x >> 64) as u64);
        let h = folded_mul(a ^ self.0[0], b ^ self.0[1] ^ u64::from(rule));
        folded_mul(h, self.0[2])
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        Timestamp::now().as_millis() ^ u64::from(std::process::id())
    }
}

/// Counting state over an [`Engine`].
pub struct Tracker {
    engine: Engine,
    limits: Limits,
    slots: Vec<Slot>,
    /// Stamp and tag of each slot.
    meta: Vec<Meta>,
    /// Evidence bytes: `region` bytes per slot, slot after slot.
    arena: Vec<u8>,
    region: usize,
    /// Times of the slots marked [`WIDE`].
    wide: std::collections::HashMap<u32, Wide>,
    free: Vec<u32>,
    /// Slot numbers, by hash of (rule, address).
    table: SlotTable,
    keys: KeyHash,
    /// (slot, stamp of the touch) per touch, oldest first; a record is
    /// stale when the slot was touched again since (or freed).
    order: VecDeque<(u32, u32)>,
    /// The stamp of the last touch (advances by 2).
    seq: u32,
    hits: Vec<Hit>,
    /// Per rule: the largest stage count, and the longest window in ms.
    max_count: Vec<usize>,
    max_window: Vec<u64>,
    /// A cleaned evidence line, when the line needs cleaning.
    line: String,
    /// The evidence line of the last failure and its slot, written into
    /// the slot's ring at the next failure (its room is prefetched in the
    /// meantime), or sooner when a stage fires or slots are released.
    staged: Vec<u8>,
    staged_slot: Option<u32>,
    evicted: u64,
}

impl Tracker {
    /// A tracker over `engine`. Evidence is capped at
    /// [`palisade_model::decision::MAX_EVIDENCE_LINES`] lines (what a
    /// decision keeps) of at most 16 KiB (what a source passes on).
    pub fn new(engine: Engine, mut limits: Limits) -> Tracker {
        limits.evidence_lines = limits.evidence_lines.min(MAX_LINES);
        limits.evidence_len = limits.evidence_len.min(MAX_LINE_LEN);
        let max_count = engine
            .rules()
            .iter()
            .map(|r| {
                r.stages
                    .iter()
                    .map(|s| s.count as usize)
                    .max()
                    .unwrap_or(1)
                    .max(1)
            })
            .collect();
        let max_window = engine
            .rules()
            .iter()
            .map(|r| {
                r.stages
                    .iter()
                    .map(|s| s.within.as_millis() as u64)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Room for evidence lines of 112 bytes on average in the arena; a slot
        // whose lines need more moves them to the heap.
        let region = (limits.evidence_lines * 112).next_multiple_of(64);
        // Reserved (not touched) up front, so that huge pages can back it.
        let reserve = limits.max_tracked.clamp(1, 1 << 16);
        let slots = Vec::with_capacity(reserve);
        let meta = Vec::with_capacity(reserve);
        let table = SlotTable::with_capacity(reserve);
        // Zeroed by the allocator from fresh pages: touched (and counted)
        // only where evidence is written.
        let arena = vec![0u8; reserve * region];
        advise_huge(&slots);
        advise_huge(&arena);
        Tracker {
            engine,
            limits,
            slots,
            meta,
            arena,
            region,
            wide: Default::default(),
            free: Vec::new(),
            table,
            keys: KeyHash([random_seed(), random_seed(), random_seed() | 1]),
            order: VecDeque::new(),
            seq: 0,
            hits: Vec::new(),
            max_count,
            max_window,
            line: String::new(),
            staged: Vec::new(),
            staged_slot: None,
            evicted: 0,
        }
    }

    /// Touches the memory reserved up front (the slots, their table and
    /// the evidence arena, for [`Limits::max_tracked`] pairs up to 65,536),
    /// so that the kernel backs it now rather than page by page as the
    /// first failures from new addresses need it. Optional: a tracker that
    /// never calls it uses memory only as pairs arrive, and pays for the
    /// pages then, once. The benchmark calls it before timing, so that every
    /// run starts from the same warm state.
    pub fn prefault(&mut self) {
        const PAGE: usize = 4096;
        for i in (0..self.arena.len()).step_by(PAGE) {
            self.arena[i] = 0;
        }
        let step = (PAGE / std::mem::size_of::<Slot>()).max(1);
        for s in self.slots.spare_capacity_mut().iter_mut().step_by(step) {
            *s = std::mem::MaybeUninit::zeroed();
        }
        for m in self.meta.spare_capacity_mut().iter_mut().step_by(PAGE / 8) {
            *m = std::mem::MaybeUninit::zeroed();
        }
        let step = PAGE / std::mem::size_of::<u64>();
        for e in self.table.entries.iter_mut().step_by(step) {
            *e = std::hint::black_box(*e);
        }
        let records = 2 * self.limits.max_tracked.max(1) + 1024 + 1;
        self.order.reserve(records.min(2 * (1 << 16) + 1024 + 1));
        std::hint::black_box(&mut self.arena);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Number of (rule, address) pairs being counted.
    pub fn tracked(&self) -> usize {
        self.table.len
    }

    /// Pairs forgotten because the tracker was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Checks `line` and counts its failures at time `now`.
    pub fn observe(&mut self, line: &Line, now: Timestamp) -> Vec<Event> {
        self.observe_text(&line.source, &line.text, now).0
    }

    /// Like [`Tracker::observe`], also returning the engine's verdicts (for
    /// dry runs that report every match).
    pub fn observe_text(
        &mut self,
        source: &str,
        text: &str,
        now: Timestamp,
    ) -> (Vec<Event>, &[Hit]) {
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.engine.check(source, text, &mut hits);
        let mut events = Vec::new();
        for hit in &hits {
            let Some(address) = hit.address else {
                continue;
            };
            match hit.kind {
                HitKind::Ignored => {}
                HitKind::Good => {
                    self.forget(hit.rule as u32, &key(&address.addr()));
                    events.push(Event::Forgive {
                        rule: self.engine.rules()[hit.rule].name.clone(),
                        address,
                    });
                }
                HitKind::Bad => {
                    if let Some(e) = self.failure(hit.rule, address, text, now) {
                        events.push(e);
                    }
                }
            }
        }
        self.hits = hits;
        (events, &self.hits)
    }

    fn find(&self, rule: u32, addr: &[u8; 16]) -> Option<u32> {
        self.find_hashed(self.keys.hash(rule, addr), rule, addr)
    }

    fn find_hashed(&self, hash: u64, rule: u32, addr: &[u8; 16]) -> Option<u32> {
        let slots = &self.slots;
        self.table.find(hash, |i| {
            let s = &slots[i as usize];
            s.rule == rule && s.addr == *addr
        })
    }

    /// Drops slot `i` from the table and frees it.
    fn release(&mut self, i: u32) {
        let m = &mut self.meta[i as usize];
        self.table.remove(u64::from(m.tag), i);
        m.stamp = FREE_STAMP;
        let s = &mut self.slots[i as usize];
        if s.is_wide() {
            self.wide.remove(&i);
        }
        s.rule = FREE;
        self.free.push(i);
    }

    /// Writes the staged evidence line into its slot's ring.
    fn flush(&mut self) {
        if let Some(i) = self.staged_slot.take() {
            let i = i as usize;
            let region = &mut self.arena[i * self.region..(i + 1) * self.region];
            self.slots[i]
                .ev
                .push(region, &self.staged, self.limits.evidence_lines);
        }
    }

    fn forget(&mut self, rule: u32, addr: &[u8; 16]) {
        self.flush();
        if let Some(i) = self.find(rule, addr) {
            self.release(i);
        }
    }

    /// A slot for a new pair, its buffers emptied.
    fn new_slot(&mut self, rule: usize, addr: [u8; 16], hash: u64) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    times: [0; INLINE_TIMES],
                    base: 0,
                    until: 0,
                    addr,
                    rule: FREE,
                    fired: NONE_FIRED,
                    t_head: 0,
                    t_len: 0,
                    t_sorted: 0,
                    t_cap: 0,
                    ev: Ring::default(),
                });
                self.meta.push(Meta {
                    stamp: FREE_STAMP,
                    tag: 0,
                });
                if self.arena.len() < self.slots.len() * self.region {
                    self.arena.resize(self.slots.len() * self.region, 0);
                }
                (self.slots.len() - 1) as u32
            }
        };
        let cap = self.max_count[rule];
        let s = &mut self.slots[i as usize];
        s.rule = rule as u32;
        s.addr = addr;
        s.fired = NONE_FIRED;
        s.until = 0;
        s.t_head = 0;
        s.t_len = 0;
        s.t_sorted = 0;
        if cap <= INLINE_TIMES {
            s.t_cap = cap as u8;
        } else {
            s.t_cap = WIDE;
            self.wide.insert(
                i,
                Wide {
                    times: vec![0; cap],
                    head: 0,
                    len: 0,
                    sorted: 0,
                },
            );
        }
        self.slots[i as usize].ev.clear();
        self.meta[i as usize].tag = hash as u32;
        self.table.insert(hash, i);
        i
    }

    fn failure(&mut self, rule: usize, address: Net, text: &str, now: Timestamp) -> Option<Event> {
        let addr = key(&address.addr());
        let t = now.as_millis();
        // Ask for the table entry before writing the last failure's
        // evidence, then for the slot.
        let hash = self.keys.hash(rule as u32, &addr);
        self.table.prefetch(hash);
        self.flush();
        let candidate = self.table.find(hash, |_| true);
        if let Some(i) = candidate {
            let slot = &self.slots[i as usize];
            prefetch(slot);
            prefetch(&slot.base);
            prefetch(&slot.ev);
        }
        // Then this failure's evidence line, while the slot comes.
        if self.limits.evidence_lines > 0 {
            let (line, more) = capped(text.trim_end(), self.limits.evidence_len, &mut self.line);
            self.staged.clear();
            self.staged.extend_from_slice(line.as_bytes());
            if more {
                self.staged.extend_from_slice("…".as_bytes());
            }
        }
        self.seq = self.seq.wrapping_add(2);
        let seq = self.seq;
        // The first slot with the hash's tag is almost always the pair's.
        let found = match candidate {
            None => None,
            Some(i)
                if self.slots[i as usize].rule == rule as u32
                    && self.slots[i as usize].addr == addr =>
            {
                Some(i)
            }
            Some(_) => self.find_hashed(hash, rule as u32, &addr),
        };
        let i = match found {
            Some(i) => i,
            None => {
                while self.table.len >= self.limits.max_tracked.max(1) {
                    self.evict_one();
                }
                self.new_slot(rule, addr, hash)
            }
        };
        let iu = i as usize;
        self.order.push_back((i, seq));
        self.meta[iu].stamp = seq;
        let s = &mut self.slots[iu];
        if !s.is_wide() && !s.push_time(t) {
            // Times more than 49 days apart: keep them in full.
            self.wide.insert(i, s.widen(usize::from(s.t_cap)));
            s.t_cap = WIDE;
        }
        if s.is_wide()
            && let Some(w) = self.wide.get_mut(&i)
        {
            w.push(t);
        }
        if s.fired != NONE_FIRED && s.until <= t {
            s.fired = NONE_FIRED;
        }
        let info = &self.engine.rules()[rule];
        let fired = (s.fired != NONE_FIRED).then_some(usize::from(s.fired));
        let (fire, count) = if s.is_wide()
            && let Some(w) = self.wide.get(&i)
        {
            to_fire(w, &info.stages, fired, t)
        } else {
            to_fire(&*s, &info.stages, fired, t)
        };
        let region = &mut self.arena[iu * self.region..(iu + 1) * self.region];
        let ring = &mut self.slots[iu].ev;
        if self.limits.evidence_lines > 0 {
            if fire.is_some() {
                ring.push(region, &self.staged, self.limits.evidence_lines);
            } else {
                ring.prefetch_next(region, self.staged.len());
                self.staged_slot = Some(i);
            }
        }
        let event = match fire {
            Some(n) => {
                let stage = &info.stages[n];
                let s = &mut self.slots[iu];
                s.until = match stage.ban {
                    Span::For(d) => t.saturating_add(d.as_millis() as u64),
                    Span::Forever => u64::MAX,
                };
                s.fired = n as u16;
                Some(Event::Ban {
                    rule: info.name.clone(),
                    address,
                    stage: StageRef {
                        index: n,
                        name: stage.name.clone(),
                        list: stage.list.clone(),
                    },
                    span: stage.ban,
                    scope: info.scope,
                    count: count as u32,
                    evidence: s
                        .ev
                        .lines(&self.arena[iu * self.region..(iu + 1) * self.region]),
                })
            }
            _ => None,
        };
        if self.order.len() > 2 * self.limits.max_tracked.max(1) + 1024 {
            self.compact();
        }
        event
    }

    fn live(&self, (i, seq): (u32, u32)) -> bool {
        self.meta[i as usize].stamp == seq
    }

    fn evict_one(&mut self) {
        while let Some(rec) = self.order.pop_front() {
            if self.live(rec) {
                self.release(rec.0);
                self.evicted += 1;
                // Drop the stale records now, and ask for the slot and
                // table entry the next eviction will likely need.
                while let Some(&rec) = self.order.front() {
                    if self.live(rec) {
                        let i = rec.0 as usize;
                        prefetch(&self.slots[i]);
                        prefetch(&self.slots[i].base);
                        prefetch(&self.slots[i].ev);
                        self.table.prefetch(u64::from(self.meta[i].tag));
                        break;
                    }
                    self.order.pop_front();
                }
                return;
            }
        }
        // The order queue lost track (cannot happen); drop anything.
        if let Some(i) = (0..self.slots.len() as u32).find(|&i| self.slots[i as usize].rule != FREE)
        {
            self.release(i);
            self.evicted += 1;
        }
    }

    /// Drops the stale records of the order queue (keeps the order).
    fn compact(&mut self) {
        let mut order = std::mem::take(&mut self.order);
        order.retain(|&rec| self.live(rec));
        self.order = order;
    }

    /// Forgets pairs with no failure inside their rule's largest window and
    /// no stage in force. Call now and then (e.g. every minute).
    pub fn prune(&mut self, now: Timestamp) {
        self.flush();
        let t = now.as_millis();
        for i in 0..self.slots.len() as u32 {
            let s = &self.slots[i as usize];
            if s.rule == FREE {
                continue;
            }
            let newest = match self.wide.get(&i) {
                Some(w) if s.is_wide() => (w.len > 0).then(|| w.time(0)),
                _ => (s.t_len > 0).then(|| s.time(0)),
            };
            let window = self.max_window[s.rule as usize];
            let recent = newest.is_some_and(|x| x + window > t);
            let in_force = s.fired != NONE_FIRED && s.until > t;
            if !(recent || in_force) {
                self.release(i);
            }
        }
        self.compact();
    }
}

/// `s` cleaned (no control characters, so no newline either) and capped at
/// `max` bytes, and whether it was cut (then `…` follows). Cleaning, when
/// needed, happens in `scratch`.
fn capped<'a>(s: &'a str, max: usize, scratch: &'a mut String) -> (&'a str, bool) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    let cut = end < s.len();
    if printable(head.as_bytes()) {
        (head, cut)
    } else {
        *scratch = clean_text(head);
        (scratch.as_str(), cut)
    }
}

/// Only printable ASCII and tabs (16 bytes at a time, written so that it
/// compiles to vector instructions).
fn printable(b: &[u8]) -> bool {
    fn bad(c: u8) -> u8 {
        // c < 0x20 or c >= 0x7f, except tab
        u8::from(c.wrapping_sub(0x20) >= 0x5f) & u8::from(c != b'\t')
    }
    fn all_good(chunk: &[u8]) -> bool {
        chunk.iter().fold(0, |acc, &c| acc | bad(c)) == 0
    }
    if b.len() < 16 {
        return b.iter().all(|&c| bad(c) == 0);
    }
    // Whole chunks, then the last 16 bytes (overlapping the last chunk).
    b.chunks_exact(16).all(all_good) && all_good(&b[b.len() - 16..])
}

#[cfg(test)]
fn cap(s: &str, max: usize) -> String {
    let mut scratch = String::new();
    let (head, cut) = capped(s, max, &mut scratch);
    let mut out = head.to_string();
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn tracker(limits: Limits) -> Tracker {
        let rule: RuleConfig = toml::from_str(
            r#"
            name = "banban"
            bad = ['^bad from <HOST>$']
            good = ['^good from <HOST>$']
            scope = "local"
            [[stages]]
            name = "throttle"
            count = 3
            within = "1m"
            ban = "3m"
            list = "THROTTLE"
            [[stages]]
            name = "block"
            count = 10
            within = "1h"
            ban = "2d"
            list = "BLOCKER"
            "#,
        )
        .unwrap();
        Tracker::new(Engine::compile(&[rule]).unwrap(), limits)
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    fn line(text: &str) -> Line {
        Line::new("test", text, Timestamp::now())
    }

    #[test]
    fn tracker_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<Tracker>();
        send::<Engine>();
    }

    #[test]
    fn stages_fire_in_order_with_evidence() {
        let mut t = tracker(Limits::default());
        let mut fired = Vec::new();
        for i in 0..12u64 {
            for e in t.observe(&line("bad from 198.51.100.7"), at(i * 5)) {
                fired.push((i, e));
            }
        }
        assert_eq!(fired.len(), 2, "{fired:?}");
        let (
            i,
            Event::Ban {
                stage,
                span,
                scope,
                evidence,
                count,
                ..
            },
        ) = &fired[0]
        else {
            panic!()
        };
        assert_eq!(*i, 2);
        assert_eq!(stage.name, "throttle");
        assert_eq!(stage.list.as_deref(), Some("THROTTLE"));
        assert_eq!(*span, "3m".parse().unwrap());
        assert_eq!(*scope, Scope::Local);
        assert_eq!(*count, 3);
        assert_eq!(evidence.len(), 3);
        let (
            i,
            Event::Ban {
                stage, evidence, ..
            },
        ) = &fired[1]
        else {
            panic!()
        };
        assert_eq!(*i, 9);
        assert_eq!(stage.index, 1);
        assert_eq!(evidence.len(), 10);
    }

    #[test]
    fn window_matters() {
        let mut t = tracker(Limits::default());
        // One failure every 40s: never 3 within a minute.
        for i in 0..9u64 {
            assert!(
                t.observe(&line("bad from 198.51.100.7"), at(i * 40))
                    .is_empty()
            );
        }
        // The 10th within the hour fires the block stage directly.
        let ev = t.observe(&line("bad from 198.51.100.7"), at(9 * 40));
        assert!(matches!(&ev[0], Event::Ban { stage, .. } if stage.name == "block"));
    }

    #[test]
    fn good_forgives_and_resets() {
        let mut t = tracker(Limits::default());
        t.observe(&line("bad from 198.51.100.7"), at(0));
        t.observe(&line("bad from 198.51.100.7"), at(1));
        let ev = t.observe(&line("good from 198.51.100.7"), at(2));
        assert_eq!(
            ev,
            vec![Event::Forgive {
                rule: "banban".into(),
                address: "198.51.100.7".parse().unwrap()
            }]
        );
        assert!(t.observe(&line("bad from 198.51.100.7"), at(3)).is_empty());
        assert!(t.observe(&line("bad from 198.51.100.7"), at(4)).is_empty());
        assert_eq!(t.observe(&line("bad from 198.51.100.7"), at(5)).len(), 1);
    }

    #[test]
    fn expired_stage_can_fire_again() {
        let mut t = tracker(Limits::default());
        for i in 0..3 {
            t.observe(&line("bad from 198.51.100.7"), at(i));
        }
        // Still in force: no repeat.
        assert!(t.observe(&line("bad from 198.51.100.7"), at(3)).is_empty());
        // After the 3m throttle ran out, three more failures throttle again.
        for i in 0..2 {
            assert!(
                t.observe(&line("bad from 198.51.100.7"), at(300 + i))
                    .is_empty()
            );
        }
        assert_eq!(t.observe(&line("bad from 198.51.100.7"), at(302)).len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = tracker(Limits {
            max_tracked: 100,
            ..Limits::default()
        });
        t.prefault();
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.observe(&line(&format!("bad from {a}")), at(u64::from(i)));
            assert!(t.tracked() <= 100);
        }
        assert_eq!(t.evicted(), 9_900);
        assert!(t.order.len() <= 2 * 100 + 1024 + 1);
        // The most recent are kept: 2 more failures of the last address ban it.
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + 9_999u32);
        t.observe(&line(&format!("bad from {a}")), at(10_000));
        assert_eq!(
            t.observe(&line(&format!("bad from {a}")), at(10_001)).len(),
            1
        );
        t.prune(at(13_600));
        assert_eq!(t.tracked(), 1, "only the address failing within the hour");
        t.prune(at(1_000_000));
        assert_eq!(t.tracked(), 0);
    }

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

    #[test]
    fn printable_is_printable_ascii_and_tabs() {
        for len in 0..40 {
            for c in 0..=255u8 {
                let mut b = vec![b'a'; len];
                if len > 0 {
                    b[len / 2] = c;
                }
                let want = b.iter().all(|&c| (0x20..0x7f).contains(&c) || c == b'\t');
                assert_eq!(printable(&b), want, "{len} {c}");
            }
        }
    }

    #[test]
    fn evidence_is_capped_and_cleaned() {
        let mut t = tracker(Limits {
            evidence_len: 40,
            ..Limits::default()
        });
        let long = format!("bad from 198.51.100.7{}", "");
        let _ = long;
        let text = "bad from 198.51.100.7";
        t.observe(&line(text), at(0));
        t.observe(&line(text), at(1));
        let ev = t.observe(&line(text), at(2));
        let Event::Ban { evidence, .. } = &ev[0] else {
            panic!()
        };
        assert_eq!(evidence[0], text);
        assert_eq!(cap("a\u{1b}[31mbcdef", 5), "a\\u{1b}[31…");
    }

    /// The counting rules written plainly (a map, queues, a scan for the
    /// least recently seen pair), to check the tracker against.
    struct Model {
        stages: Vec<crate::config::StageConfig>,
        max_count: usize,
        limits: Limits,
        entries: std::collections::HashMap<IpAddr, ModelEntry>,
        seq: u64,
    }

    struct ModelEntry {
        times: VecDeque<u64>,
        evidence: VecDeque<String>,
        fired: Option<(usize, u64)>,
        seq: u64,
    }

    impl Model {
        fn failure(
            &mut self,
            addr: IpAddr,
            text: &str,
            t: u64,
        ) -> Option<(usize, u32, Vec<String>)> {
            self.seq += 1;
            if !self.entries.contains_key(&addr) && self.entries.len() >= self.limits.max_tracked {
                let oldest = *self.entries.iter().min_by_key(|(_, e)| e.seq).unwrap().0;
                self.entries.remove(&oldest);
            }
            let e = self.entries.entry(addr).or_insert(ModelEntry {
                times: VecDeque::new(),
                evidence: VecDeque::new(),
                fired: None,
                seq: 0,
            });
            e.seq = self.seq;
            if e.times.len() >= self.max_count {
                e.times.pop_front();
            }
            e.times.push_back(t);
            if e.evidence.len() >= self.limits.evidence_lines {
                e.evidence.pop_front();
            }
            e.evidence
                .push_back(cap(text.trim_end(), self.limits.evidence_len));
            if e.fired.is_some_and(|(_, until)| until <= t) {
                e.fired = None;
            }
            let mut fire = None;
            for (i, stage) in self.stages.iter().enumerate() {
                let since = t.saturating_sub(stage.within.as_millis() as u64);
                let n = e.times.iter().rev().take_while(|&&x| x > since).count();
                if n >= stage.count as usize {
                    fire = Some((i, n));
                }
            }
            match fire {
                Some((i, n)) if e.fired.is_none_or(|(f, _)| i > f) => {
                    let until = match self.stages[i].ban {
                        Span::For(d) => t.saturating_add(d.as_millis() as u64),
                        Span::Forever => u64::MAX,
                    };
                    e.fired = Some((i, until));
                    Some((i, n as u32, e.evidence.iter().cloned().collect()))
                }
                _ => None,
            }
        }

        fn prune(&mut self, t: u64) {
            let window = self
                .stages
                .iter()
                .map(|s| s.within.as_millis() as u64)
                .max()
                .unwrap();
            self.entries.retain(|_, e| {
                e.times.back().is_some_and(|&x| x + window > t)
                    || e.fired.is_some_and(|(_, until)| until > t)
            });
        }
    }

    /// Runs random failures, successes and prunes through the tracker and
    /// the model, which must agree on every event.
    fn agree_with_model(t: &mut Tracker, limits: Limits, seed: u64, leaps: bool) {
        let mut model = Model {
            stages: t.engine().rules()[0].stages.clone(),
            max_count: t.max_count[0],
            limits,
            entries: Default::default(),
            seq: 0,
        };
        let mut r = crate::loggen::Rng::new(seed);
        let mut now = 1_700_000_000_000u64;
        let day = 86_400_000;
        for step in 0..200_000u32 {
            // Time mostly moves on, sometimes back (clock steps, old logs),
            // sometimes by months.
            now = match r.below(400) {
                0..=7 => now.saturating_sub(r.below(120_000)),
                8 if leaps => now + 60 * day,
                9 if leaps => now - 60 * day,
                _ => now + r.below(4_000),
            };
            let a = r.below(60);
            let addr: IpAddr = if a.is_multiple_of(3) {
                format!("2001:db8::{a:x}").parse().unwrap()
            } else {
                format!("198.51.100.{a}").parse().unwrap()
            };
            let at = Timestamp::from_millis(now);
            match r.below(100) {
                0 => {
                    t.observe(&line(&format!("good from {addr}")), at);
                    model.entries.remove(&addr);
                }
                1 if step % 7 == 0 => {
                    t.prune(at);
                    model.prune(now);
                }
                _ => {
                    let text = format!("bad from {addr}");
                    let got = t.observe(&line(&text), at);
                    let want = model.failure(addr, &text, now);
                    match (got.as_slice(), want) {
                        ([], None) => {}
                        (
                            [
                                Event::Ban {
                                    stage,
                                    count,
                                    evidence,
                                    ..
                                },
                            ],
                            Some((i, n, ev)),
                        ) => {
                            assert_eq!((stage.index, *count, evidence), (i, n, &ev), "step {step}");
                        }
                        (got, want) => panic!("step {step}: {got:?} vs {want:?}"),
                    }
                }
            }
            assert_eq!(t.tracked(), model.entries.len(), "step {step}");
        }
    }

    #[test]
    fn tracker_agrees_with_a_plain_model() {
        let limits = Limits {
            max_tracked: 40,
            evidence_lines: 4,
            evidence_len: 17,
        };
        agree_with_model(&mut tracker(limits), limits, 5, false);
        // Times months apart (kept in full), and a rule counting more
        // failures than a slot holds inline.
        agree_with_model(&mut tracker(limits), limits, 6, true);
        let rule: RuleConfig = toml::from_str(
            r#"
            name = "many"
            bad = ['^bad from <HOST>$']
            good = ['^good from <HOST>$']
            [[stages]]
            name = "short"
            count = 4
            within = "20s"
            ban = "1m"
            [[stages]]
            name = "long"
            count = 30
            within = "100d"
            ban = "1h"
            "#,
        )
        .unwrap();
        let mut t = Tracker::new(Engine::compile(&[rule]).unwrap(), limits);
        agree_with_model(&mut t, limits, 7, true);
    }
}

//! Counting failures per (rule, attacker) and firing stages.
//!
//! An attacker is an address, or the network a rule counts by: IPv6
//! addresses are counted per /64 by default (an attacker rotating through
//! its /64 is one attacker), IPv4 per address (optionally per /24); see
//! [`Limits::prefix_v4`], [`Limits::prefix_v6`] and the rules' own
//! `prefix_v4`/`prefix_v6`. A stage's ban then targets that network.
//!
//! For each pair the tracker keeps the failure times (at most as many as
//! the rule's largest stage count). A stage fires when the failures within
//! its window reach its count and no higher or equal stage of the rule is in
//! force for the pair; a stage is in force until its ban length has passed
//! (kept to the second, rounded up). A good pattern forgets the pair and
//! yields [`Event::Forgive`].
//!
//! Memory is bounded by a budget ([`Limits::memory`]): the pairs (64 bytes
//! each, plus their place in the hash table) and the evidence log share it,
//! and the default of 100 MB holds more than a million pairs. When the
//! budget is full, a new pair takes the place of the pair least likely to
//! reach a threshold among a few picked at random: the
//! lowest share of its next stage's count within that stage's window (a
//! pair whose highest stage is in force has nothing left to reach), the
//! longest silent on a tie. Evictions are counted ([`Tracker::evicted`]).
//!
//! Evidence (the matched lines) goes to one log of bytes shared by all
//! pairs, each line linked to the pair's previous one; a ban carries the
//! pair's last lines still in the log. The log is a fixed share of the
//! budget, so under a flood the oldest lines of slow attackers may be gone
//! when they are banned (the ban then shows fewer lines, never wrong ones).
//!
//! Each ban says whether it can be trusted ([`Trust`]): failures from a
//! rule marked `forgeable` (port probes: a SYN can carry any source
//! address) or from a source that cannot see handshakes (NFLOG) make the
//! pair's bans [`Trust::Forgeable`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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

/// Whether a detection can have been caused by forged packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// The attacker completed a handshake: a daemon's log line about an
    /// established session, or a connection to a honeyport.
    Verified,
    /// Seen in packets whose source address can be forged without a
    /// handshake (port probes from NFLOG or kernel LOG lines).
    Forgeable,
}

impl Trust {
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Verified => "verified",
            Trust::Forgeable => "forgeable",
        }
    }
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Ban `address` (a host, or the network the rule counts by) for
    /// `span` (source: detector).
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
        /// Whether the failures could have been forged.
        trust: Trust,
    },
    /// Lift the bans detectors made for `address` (a good pattern matched).
    Forgive { rule: String, address: Net },
}

/// No stage in force.
const NONE_FIRED: u8 = u8::MAX;

/// `rule` of a free slot.
const FREE: u16 = u16::MAX;

/// Most rules and stages per rule a tracker counts (slot fields are small).
pub const MAX_RULES: usize = FREE as usize;
pub const MAX_STAGES: usize = NONE_FIRED as usize;

/// Failure times kept in the slot itself (as offsets from its base time);
/// a pair of a rule counting more moves its times to a [`Wide`] ring once
/// it has more failures than that (most attackers never do).
const INLINE_TIMES: usize = 5;

/// `Slot::flags`: the times are in `Tracker::wide`.
const WIDE: u8 = 1;
/// `Slot::flags`: a counted failure could have been forged.
const FORGEABLE: u8 = 2;

/// Most evidence lines kept per pair.
const MAX_LINES: usize = palisade_model::decision::MAX_EVIDENCE_LINES;

/// Longest evidence line kept before cutting (sources cut lines at 16 KiB).
const MAX_LINE_LEN: usize = 16 * 1024;

/// Bytes of memory per pair: its slot and, at most three quarters full,
/// its entries of the hash table.
const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// Pairs looked at for each eviction.
const EVICTION_SAMPLE: usize = 8;

/// One (rule, attacker) pair being counted, in one cache line.
#[repr(C, align(64))]
struct Slot {
    /// Failure times: a ring, in ms after `base`.
    times: [u32; INLINE_TIMES],
    /// When the stage in force stops being in force, in seconds since the
    /// epoch rounded up (`u32::MAX`: forever).
    until: u32,
    base: u64,
    /// The newest evidence line's position in the evidence log, plus one
    /// (0: none).
    evidence: u64,
    /// The counted network's address (IPv4 as IPv4-mapped IPv6).
    addr: [u8; 16],
    /// The rule, or [`FREE`].
    rule: u16,
    /// The highest stage in force, or [`NONE_FIRED`].
    fired: u8,
    /// The counted network's prefix length (of its family).
    prefix: u8,
    /// [`WIDE`], [`FORGEABLE`].
    flags: u8,
    /// The inline times ring: index of the oldest, how many are kept, how
    /// many of the newest are in order (for those, the n-th newest is also
    /// the earliest of the n newest).
    t_head: u8,
    t_len: u8,
    t_sorted: u8,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// The times of a slot whose rule counts more than [`INLINE_TIMES`]
/// failures, or whose times span more than 32 bits of milliseconds.
struct Wide {
    times: Vec<u64>,
    head: usize,
    len: usize,
    sorted: usize,
}

impl Wide {
    /// Heap bytes of a ring of `cap` times, with its map entry.
    fn bytes(cap: usize) -> usize {
        cap * 8 + 64
    }
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

/// A slot's inline times, with the ring's capacity (its rule's).
struct Inline<'a> {
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
        self.flags & WIDE != 0
    }

    fn inline(&self, cap: usize) -> Inline<'_> {
        Inline { slot: self, cap }
    }

    /// Adds a failure time to the inline ring of capacity `cap`; `false`
    /// (nothing changed) if `t` and the kept times do not fit 32-bit
    /// offsets from one base.
    fn push_time(&mut self, t: u64, cap: usize) -> bool {
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

    /// The inline times (a ring of capacity `cap`) as a [`Wide`] ring of
    /// capacity `wide`.
    fn widen(&self, cap: usize, wide: usize) -> Wide {
        let len = usize::from(self.t_len);
        let mut times = vec![0; wide];
        for (k, x) in times.iter_mut().take(len).enumerate() {
            *x = self.inline(cap).time(len - 1 - k);
        }
        Wide {
            times,
            head: 0,
            len,
            sorted: usize::from(self.t_sorted),
        }
    }

    /// The counted network.
    fn net(&self) -> Net {
        let a = std::net::Ipv6Addr::from(self.addr);
        let addr = match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        };
        Net::truncating(addr, self.prefix)
    }
}

/// The 16 bytes of `addr` (IPv4 as IPv4-mapped IPv6).
fn key(addr: &IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

/// Matched lines of all pairs, in one ring of bytes. Each record is the
/// position of the pair's previous record plus one (8 bytes), the line's
/// length (2 bytes) and the line; positions count every byte ever written,
/// so a record is still there when its position is within the ring's size
/// of the end.
struct EvidenceLog {
    buf: Vec<u8>,
    written: u64,
}

const RECORD_HEAD: usize = 10;

impl EvidenceLog {
    fn new(bytes: usize) -> EvidenceLog {
        EvidenceLog {
            buf: Vec::with_capacity(bytes.max(RECORD_HEAD + MAX_LINE_LEN + 3)),
            written: 0,
        }
    }

    fn cap(&self) -> usize {
        self.buf.capacity()
    }

    fn write(&mut self, data: &[u8]) {
        let cap = self.cap();
        let at = (self.written % cap as u64) as usize;
        if self.buf.len() < cap {
            // Filling for the first time (pages are touched as needed).
            let room = cap - self.buf.len();
            let first = data.len().min(room);
            self.buf.extend_from_slice(&data[..first]);
            if first < data.len() {
                self.buf[..data.len() - first].copy_from_slice(&data[first..]);
            }
        } else {
            let first = data.len().min(cap - at);
            self.buf[at..at + first].copy_from_slice(&data[..first]);
            self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        }
        self.written += data.len() as u64;
    }

    fn read(&self, pos: u64, out: &mut [u8]) {
        let cap = self.cap();
        let at = (pos % cap as u64) as usize;
        let first = out.len().min(cap - at);
        out[..first].copy_from_slice(&self.buf[at..at + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }

    /// Appends `line` after the record at `prev` (a position plus one, or
    /// 0); returns the new record's position plus one.
    fn push(&mut self, prev: u64, line: &[u8]) -> u64 {
        let pos = self.written;
        let mut head = [0u8; RECORD_HEAD];
        head[..8].copy_from_slice(&prev.to_le_bytes());
        head[8..].copy_from_slice(&(line.len() as u16).to_le_bytes());
        self.write(&head);
        self.write(line);
        pos + 1
    }

    /// Whether the record at `pos` is still whole.
    fn holds(&self, pos: u64) -> bool {
        pos >= self.written.saturating_sub(self.cap() as u64)
    }

    /// Up to `max` lines of the chain ending at `last`, oldest first.
    fn lines(&self, mut last: u64, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        while last != 0 && out.len() < max && self.holds(last - 1) {
            let pos = last - 1;
            let mut head = [0u8; RECORD_HEAD];
            self.read(pos, &mut head);
            let prev = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            let len = usize::from(u16::from_le_bytes([head[8], head[9]]));
            let mut text = vec![0u8; len];
            self.read(pos + RECORD_HEAD as u64, &mut text);
            // Written from whole `str`s.
            out.push(String::from_utf8(text).unwrap_or_default());
            last = prev;
        }
        out.reverse();
        out
    }
}

/// Slot numbers by hash of (rule, address): open addressing with linear
/// probing, each entry one word (32 bits of the hash, which also places it,
/// and the slot number plus one; 0 is empty), so a lookup reads one cache
/// line before the slot. At most three quarters full (it doubles as pairs
/// arrive); removal shifts the entries after the hole back (no
/// tombstones).
struct SlotTable {
    entries: Vec<u64>,
    len: usize,
}

/// Table entries for `n` pairs.
fn table_size(n: usize) -> usize {
    (n + n / 3 + 1).next_power_of_two().max(16)
}

impl SlotTable {
    fn with_capacity(n: usize) -> SlotTable {
        SlotTable {
            entries: vec![0; table_size(n)],
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
        if 4 * (self.len + 1) > 3 * self.entries.len() {
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

/// What a rule counts, resolved from it and the [`Limits`].
struct RuleCounting {
    /// The largest stage count (the times kept), and the inline ring's
    /// capacity.
    max_count: usize,
    inline_cap: usize,
    /// The longest window, in ms.
    max_window: u64,
    prefix_v4: u8,
    prefix_v6: u8,
    forgeable: bool,
}

/// How many pairs fit `memory` bytes beside an evidence log of `log` bytes.
fn capacity(memory: usize, log: usize) -> usize {
    let room = memory.saturating_sub(log);
    // The table doubles: find the largest count whose slots and table fit.
    let mut n = room / SLOT_BYTES;
    while n > 0 && n * SLOT_BYTES + table_size(n) * 8 > room {
        let table = table_size(n) * 8;
        n = n.min(room.saturating_sub(table) / SLOT_BYTES);
        if n * SLOT_BYTES + table_size(n) * 8 > room {
            n = n.saturating_sub(n / 64 + 1);
        }
    }
    n.max(1)
}

/// The evidence log's share of a memory budget.
fn log_bytes(memory: usize) -> usize {
    (memory / 32).clamp(64 << 10, 64 << 20)
}

/// Counting state over an [`Engine`].
pub struct Tracker {
    engine: Engine,
    limits: Limits,
    /// Most pairs at once (from the budget and [`Limits::max_tracked`]).
    capacity: usize,
    /// Bytes the slots and [`Wide`] rings may use.
    pair_budget: usize,
    rules: Vec<RuleCounting>,
    slots: Vec<Slot>,
    /// Times of the slots marked [`WIDE`], and their bytes.
    wide: HashMap<u32, Wide>,
    wide_bytes: usize,
    free: Vec<u32>,
    /// Slot numbers, by hash of (rule, address).
    table: SlotTable,
    keys: KeyHash,
    /// The state of the generator that picks eviction candidates.
    hand: u64,
    log: EvidenceLog,
    forgeable_sources: Vec<Arc<str>>,
    hits: Vec<Hit>,
    /// A cleaned evidence line, when the line needs cleaning.
    line: String,
    staged: Vec<u8>,
    evicted: u64,
}

impl Tracker {
    /// A tracker over `engine` within `limits`. Evidence is capped at
    /// [`palisade_model::decision::MAX_EVIDENCE_LINES`] lines (what a
    /// decision keeps) of at most 16 KiB (what a source passes on).
    ///
    /// # Panics
    /// If the engine has more than [`MAX_RULES`] rules or a rule more than
    /// [`MAX_STAGES`] stages ([`Engine::compile`] refuses those).
    pub fn new(engine: Engine, mut limits: Limits) -> Tracker {
        limits.evidence_lines = limits.evidence_lines.min(MAX_LINES);
        limits.evidence_len = limits.evidence_len.min(MAX_LINE_LEN);
        assert!(engine.rules().len() <= MAX_RULES);
        let rules = engine
            .rules()
            .iter()
            .map(|r| {
                assert!(r.stages.len() <= MAX_STAGES);
                let max_count = r
                    .stages
                    .iter()
                    .map(|s| s.count as usize)
                    .max()
                    .unwrap_or(1)
                    .max(1);
                RuleCounting {
                    max_count,
                    inline_cap: max_count.min(INLINE_TIMES),
                    max_window: r
                        .stages
                        .iter()
                        .map(|s| s.within.as_millis() as u64)
                        .max()
                        .unwrap_or(0),
                    prefix_v4: r.prefix_v4.unwrap_or(limits.prefix_v4).min(32),
                    prefix_v6: r.prefix_v6.unwrap_or(limits.prefix_v6).min(128),
                    forgeable: r.forgeable,
                }
            })
            .collect();
        let log = log_bytes(limits.memory);
        let capacity = capacity(limits.memory, log)
            .min(limits.max_tracked.unwrap_or(usize::MAX))
            .max(1);
        let pair_budget = limits
            .memory
            .saturating_sub(log + table_size(capacity) * 8)
            .max(SLOT_BYTES);
        Tracker {
            engine,
            limits,
            capacity,
            pair_budget,
            rules,
            // Reserved, not touched: memory is used as pairs arrive.
            slots: Vec::with_capacity(capacity),
            wide: HashMap::new(),
            wide_bytes: 0,
            free: Vec::new(),
            table: SlotTable::with_capacity(16),
            keys: KeyHash([random_seed(), random_seed(), random_seed() | 1]),
            hand: random_seed() | 1,
            log: EvidenceLog::new(log),
            forgeable_sources: Vec::new(),
            hits: Vec::new(),
            line: String::new(),
            staged: Vec::new(),
            evicted: 0,
        }
    }

    /// Lines from these sources can be forged (NFLOG): every failure they
    /// bring makes the pair's bans [`Trust::Forgeable`].
    pub fn set_forgeable_sources(&mut self, names: impl IntoIterator<Item = String>) {
        self.forgeable_sources = names.into_iter().map(Arc::from).collect();
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Number of (rule, attacker) pairs being counted.
    pub fn tracked(&self) -> usize {
        self.table.len
    }

    /// Most pairs counted at once within the memory budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pairs forgotten because the budget was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Checks `line` and counts its failures at time `now`.
    pub fn observe(&mut self, line: &Line, now: Timestamp) -> Vec<Event> {
        let forgeable = self.forgeable_sources.contains(&line.source);
        self.observe_inner(&line.source, &line.text, now, forgeable)
            .0
    }

    /// Like [`Tracker::observe`], also returning the engine's verdicts (for
    /// dry runs that report every match).
    pub fn observe_text(
        &mut self,
        source: &str,
        text: &str,
        now: Timestamp,
    ) -> (Vec<Event>, &[Hit]) {
        let forgeable = self.forgeable_sources.iter().any(|s| **s == *source);
        self.observe_inner(source, text, now, forgeable)
    }

    fn observe_inner(
        &mut self,
        source: &str,
        text: &str,
        now: Timestamp,
        forgeable: bool,
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
                    let net = self.counted(hit.rule, address);
                    self.forget(hit.rule, &net);
                    events.push(Event::Forgive {
                        rule: self.engine.rules()[hit.rule].name.clone(),
                        address: net,
                    });
                }
                HitKind::Bad => {
                    let net = self.counted(hit.rule, address);
                    if let Some(e) = self.failure(hit.rule, net, text, now, forgeable) {
                        events.push(e);
                    }
                }
            }
        }
        self.hits = hits;
        (events, &self.hits)
    }

    /// The network `rule` counts `address` in.
    pub fn counted(&self, rule: usize, address: Net) -> Net {
        let r = &self.rules[rule];
        let prefix = match address.addr() {
            IpAddr::V4(_) => r.prefix_v4,
            IpAddr::V6(_) => r.prefix_v6,
        };
        if address.prefix() <= prefix {
            address
        } else {
            Net::truncating(address.addr(), prefix)
        }
    }

    fn hash(&self, rule: usize, net: &Net) -> u64 {
        self.keys.hash(
            rule as u32 | u32::from(net.prefix()) << 16,
            &key(&net.addr()),
        )
    }

    fn find_hashed(&self, hash: u64, rule: usize, net: &Net) -> Option<u32> {
        let (addr, prefix) = (key(&net.addr()), net.prefix());
        let slots = &self.slots;
        self.table.find(hash, |i| {
            let s = &slots[i as usize];
            usize::from(s.rule) == rule && s.addr == addr && s.prefix == prefix
        })
    }

    /// Drops slot `i` from the table and frees it.
    fn release(&mut self, i: u32) {
        let s = &self.slots[i as usize];
        let hash = self.hash(usize::from(s.rule), &s.net());
        self.table.remove(hash, i);
        let s = &mut self.slots[i as usize];
        if s.is_wide()
            && let Some(w) = self.wide.remove(&i)
        {
            self.wide_bytes -= Wide::bytes(w.times.len());
        }
        s.rule = FREE;
        s.flags = 0;
        self.free.push(i);
    }

    fn forget(&mut self, rule: usize, net: &Net) {
        if let Some(i) = self.find_hashed(self.hash(rule, net), rule, net) {
            self.release(i);
        }
    }

    /// Whether a new pair must first take an old pair's place.
    fn full(&self) -> bool {
        self.table.len >= self.capacity
            || (self.table.len + 1) * SLOT_BYTES + self.wide_bytes > self.pair_budget
    }

    /// A slot for a new pair, its buffers emptied.
    fn new_slot(&mut self, rule: usize, net: &Net, hash: u64) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    times: [0; INLINE_TIMES],
                    until: 0,
                    base: 0,
                    evidence: 0,
                    addr: [0; 16],
                    rule: FREE,
                    fired: NONE_FIRED,
                    prefix: 0,
                    flags: 0,
                    t_head: 0,
                    t_len: 0,
                    t_sorted: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[i as usize];
        s.rule = rule as u16;
        s.addr = key(&net.addr());
        s.prefix = net.prefix();
        s.fired = NONE_FIRED;
        s.flags = 0;
        s.until = 0;
        s.evidence = 0;
        s.t_head = 0;
        s.t_len = 0;
        s.t_sorted = 0;
        self.table.insert(hash, i);
        i
    }

    fn failure(
        &mut self,
        rule: usize,
        net: Net,
        text: &str,
        now: Timestamp,
        forgeable: bool,
    ) -> Option<Event> {
        let t = now.as_millis();
        let hash = self.hash(rule, &net);
        self.table.prefetch(hash);
        // This failure's evidence line, while the table entry comes.
        if self.limits.evidence_lines > 0 {
            let (line, more) = capped(text.trim_end(), self.limits.evidence_len, &mut self.line);
            self.staged.clear();
            self.staged.extend_from_slice(line.as_bytes());
            if more {
                self.staged.extend_from_slice("…".as_bytes());
            }
        }
        let i = match self.find_hashed(hash, rule, &net) {
            Some(i) => i,
            None => {
                while self.full() && self.table.len > 0 {
                    self.evict_one(t);
                }
                self.new_slot(rule, &net, hash)
            }
        };
        let iu = i as usize;
        let counting = &self.rules[rule];
        let (cap, max_count) = (counting.inline_cap, counting.max_count);
        let s = &mut self.slots[iu];
        if forgeable || counting.forgeable {
            s.flags |= FORGEABLE;
        }
        if !s.is_wide() {
            let full = usize::from(s.t_len) == cap && max_count > cap;
            if full || !s.push_time(t, cap) {
                // More failures than the slot holds, or times more than 49
                // days apart: keep them in full.
                let mut w = s.widen(cap, max_count);
                w.push(t);
                s.flags |= WIDE;
                self.wide_bytes += Wide::bytes(max_count);
                self.wide.insert(i, w);
            }
        } else if let Some(w) = self.wide.get_mut(&i) {
            w.push(t);
        }
        if s.fired != NONE_FIRED && u64::from(s.until).saturating_mul(1000) <= t {
            s.fired = NONE_FIRED;
        }
        let info = &self.engine.rules()[rule];
        let fired = (s.fired != NONE_FIRED).then_some(usize::from(s.fired));
        let (fire, count) = match self.wide.get(&i) {
            Some(w) if s.is_wide() => to_fire(w, &info.stages, fired, t),
            _ => to_fire(&s.inline(cap), &info.stages, fired, t),
        };
        if self.limits.evidence_lines > 0 {
            s.evidence = self.log.push(s.evidence, &self.staged);
        }
        let n = fire?;
        let stage = &info.stages[n];
        s.until = match stage.ban {
            Span::For(d) => {
                let end = t.saturating_add(d.as_millis() as u64);
                u32::try_from(end.div_ceil(1000)).unwrap_or(u32::MAX - 1)
            }
            Span::Forever => u32::MAX,
        };
        s.fired = n as u8;
        Some(Event::Ban {
            rule: info.name.clone(),
            address: net,
            stage: StageRef {
                index: n,
                name: stage.name.clone(),
                list: stage.list.clone(),
            },
            span: stage.ban,
            scope: info.scope,
            count: count as u32,
            evidence: self.log.lines(s.evidence, self.limits.evidence_lines),
            trust: if s.flags & FORGEABLE != 0 {
                Trust::Forgeable
            } else {
                Trust::Verified
            },
        })
    }

    /// How likely slot `i` is to reach a threshold, as a fraction (failures
    /// within the next stage's window, that stage's count), and when it
    /// last failed. A pair whose highest stage is in force scores below 0.
    fn outlook(&self, i: usize, t: u64) -> ((u64, u64), u64) {
        let s = &self.slots[i];
        let stages = &self.engine.rules()[usize::from(s.rule)].stages;
        let cap = self.rules[usize::from(s.rule)].inline_cap;
        let in_force = s.fired != NONE_FIRED && u64::from(s.until).saturating_mul(1000) > t;
        let next = if in_force {
            usize::from(s.fired) + 1
        } else {
            0
        };
        let since = stages
            .get(next)
            .map(|st| t.saturating_sub(st.within.as_millis() as u64));
        let (recent, newest) = match self.wide.get(&(i as u32)) {
            Some(w) if s.is_wide() => (
                since.map_or(0, |x| w.recent(x)),
                if w.len > 0 { w.time(0) } else { 0 },
            ),
            _ => {
                let inline = s.inline(cap);
                (
                    since.map_or(0, |x| inline.recent(x)),
                    if s.t_len > 0 { inline.time(0) } else { 0 },
                )
            }
        };
        match stages.get(next) {
            // (recent + 1) / (count + 1): grows with the failures, and
            // stays above the share of a pair with nothing left to reach.
            Some(st) => ((recent as u64 + 1, u64::from(st.count) + 1), newest),
            None => ((0, 1), newest),
        }
    }

    /// Forgets the pair least likely to reach a threshold among
    /// [`EVICTION_SAMPLE`] pairs picked at random (slots next to each other
    /// arrived together, so a sample of neighbours would be alike).
    fn evict_one(&mut self, t: u64) {
        let n = self.slots.len() as u64;
        let mut best: Option<(usize, (u64, u64), u64)> = None;
        let mut seen = 0;
        for _ in 0..4 * EVICTION_SAMPLE {
            // xorshift64: cheap, and seeded at random.
            let mut x = self.hand;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.hand = x;
            let i = ((u128::from(x) * u128::from(n)) >> 64) as usize;
            if self.slots[i].rule == FREE {
                continue;
            }
            let (share, newest) = self.outlook(i, t);
            let better = match best {
                None => true,
                // share < best share, or equal and silent for longer.
                Some((_, b, bn)) => {
                    let (l, r) = (share.0 * b.1, b.0 * share.1);
                    l < r || (l == r && newest < bn)
                }
            };
            if better {
                best = Some((i, share, newest));
            }
            seen += 1;
            if seen == EVICTION_SAMPLE {
                break;
            }
        }
        // Free slots only (cannot happen while full): any pair.
        let victim = best
            .map(|b| b.0)
            .or_else(|| (0..self.slots.len()).find(|&i| self.slots[i].rule != FREE));
        if let Some(i) = victim {
            self.release(i as u32);
            self.evicted += 1;
        }
    }

    /// Forgets pairs with no failure inside their rule's largest window and
    /// no stage in force. Call now and then (e.g. every minute).
    pub fn prune(&mut self, now: Timestamp) {
        let t = now.as_millis();
        for i in 0..self.slots.len() as u32 {
            let s = &self.slots[i as usize];
            if s.rule == FREE {
                continue;
            }
            let counting = &self.rules[usize::from(s.rule)];
            let newest = match self.wide.get(&i) {
                Some(w) if s.is_wide() => (w.len > 0).then(|| w.time(0)),
                _ => (s.t_len > 0).then(|| s.inline(counting.inline_cap).time(0)),
            };
            let recent = newest.is_some_and(|x| x + counting.max_window > t);
            let in_force = s.fired != NONE_FIRED && u64::from(s.until).saturating_mul(1000) > t;
            if !(recent || in_force) {
                self.release(i);
            }
        }
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
    use std::collections::VecDeque;

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
            max_tracked: Some(100),
            ..Limits::default()
        });
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.observe(&line(&format!("bad from {a}")), at(u64::from(i)));
            assert!(t.tracked() <= 100);
        }
        assert_eq!(t.evicted(), 9_900);
        // The newest pair is kept: 2 more failures of the last address ban it.
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

    /// The counting rules written plainly (a map, queues), to check the
    /// tracker against (with room for every pair: eviction is tested on
    /// its own).
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
                    // Kept to the second, rounded up.
                    let until = match self.stages[i].ban {
                        Span::For(d) => {
                            t.saturating_add(d.as_millis() as u64).div_ceil(1000) * 1000
                        }
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
            max_count: t.rules[0].max_count,
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
            evidence_lines: 4,
            evidence_len: 17,
            // Every address its own pair, as in the model.
            prefix_v6: 128,
            ..Limits::default()
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

    #[test]
    fn eviction_keeps_the_pairs_closest_to_a_threshold() {
        let mut t = tracker(Limits {
            max_tracked: Some(256),
            ..Limits::default()
        });
        // 16 addresses with 2 failures each (one short of the throttle).
        for i in 0..16u32 {
            let a = std::net::Ipv4Addr::from(0xc633_6400 + i);
            t.observe(&line(&format!("bad from {a}")), at(0));
            t.observe(&line(&format!("bad from {a}")), at(1));
        }
        // A flood of addresses failing once each.
        for i in 0..100_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.observe(&line(&format!("bad from {a}")), at(2));
            assert!(t.tracked() <= 256);
        }
        assert!(t.evicted() >= 100_000 - 256);
        // Each of the 16 is banned by its third failure.
        for i in 0..16u32 {
            let a = std::net::Ipv4Addr::from(0xc633_6400 + i);
            let ev = t.observe(&line(&format!("bad from {a}")), at(3));
            assert_eq!(ev.len(), 1, "{a} was evicted");
        }
    }

    #[test]
    fn memory_budget_holds_a_million_pairs() {
        let limits = Limits::default();
        let t = tracker(limits);
        assert!(t.capacity() >= 1_000_000, "{}", t.capacity());
        let log = log_bytes(limits.memory);
        assert!(t.capacity() * SLOT_BYTES + table_size(t.capacity()) * 8 + log <= limits.memory);
    }

    #[test]
    fn ipv6_attackers_count_per_64_and_are_banned_as_it() {
        let mut t = tracker(Limits::default());
        let mut bans = Vec::new();
        for i in 1..=3u32 {
            bans.extend(t.observe(
                &line(&format!("bad from 2001:db8:7:7::{i:x}")),
                at(u64::from(i)),
            ));
        }
        assert_eq!(bans.len(), 1, "{bans:?}");
        let Event::Ban { address, .. } = &bans[0] else {
            panic!()
        };
        assert_eq!(address.to_string(), "2001:db8:7:7::/64");
        // Another /64 is another attacker; IPv4 is counted per address.
        assert!(
            t.observe(&line("bad from 2001:db8:7:8::1"), at(4))
                .is_empty()
        );
        assert!(t.observe(&line("bad from 198.51.100.1"), at(4)).is_empty());
        assert!(t.observe(&line("bad from 198.51.100.2"), at(4)).is_empty());
        assert!(t.observe(&line("bad from 198.51.100.3"), at(4)).is_empty());
        // A success anywhere in the /64 forgives the /64.
        let ev = t.observe(&line("good from 2001:db8:7:7::99"), at(5));
        assert_eq!(
            ev,
            vec![Event::Forgive {
                rule: "banban".into(),
                address: "2001:db8:7:7::/64".parse().unwrap()
            }]
        );
    }

    #[test]
    fn prefixes_per_rule_and_globally() {
        let rule: RuleConfig = toml::from_str(
            r#"
            name = "per24"
            bad = ['^bad from <HOST>$']
            prefix_v4 = 24
            prefix_v6 = 128
            [[stages]]
            name = "ban"
            count = 2
            within = "1m"
            ban = "1h"
            "#,
        )
        .unwrap();
        let mut t = Tracker::new(Engine::compile(&[rule]).unwrap(), Limits::default());
        t.observe(&line("bad from 198.51.100.1"), at(0));
        let ev = t.observe(&line("bad from 198.51.100.200"), at(1));
        assert!(
            matches!(&ev[..], [Event::Ban { address, .. }] if address.to_string() == "198.51.100.0/24")
        );
        t.observe(&line("bad from 2001:db8::1"), at(0));
        assert!(t.observe(&line("bad from 2001:db8::2"), at(1)).is_empty());
        // The global default applies where the rule says nothing.
        let mut t = tracker(Limits {
            prefix_v4: 24,
            prefix_v6: 48,
            ..Limits::default()
        });
        for i in 1..=3u32 {
            t.observe(&line(&format!("bad from 2001:db8:1:{i:x}::1")), at(0));
        }
        let ev = t.observe(&line("bad from 198.51.100.1"), at(0));
        assert!(ev.is_empty());
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn forgeable_rules_and_sources_mark_their_bans() {
        let ban_trust = |t: &mut Tracker, source: &str| {
            let mut out = None;
            for i in 0..3 {
                let l = Line::new(source, "bad from 198.51.100.9", Timestamp::now());
                for e in t.observe(&l, at(i)) {
                    if let Event::Ban { trust, .. } = e {
                        out = Some(trust);
                    }
                }
            }
            out.expect("a ban")
        };
        let mut t = tracker(Limits::default());
        assert_eq!(ban_trust(&mut t, "auth"), Trust::Verified);
        let mut t = tracker(Limits::default());
        t.set_forgeable_sources(["nflog:5".to_string()]);
        assert_eq!(ban_trust(&mut t, "nflog:5"), Trust::Forgeable);
        let mut rule: RuleConfig =
            toml::from_str("name = \"probe\"\nforgeable = true\nbad = ['^bad from <HOST>$']\n[[stages]]\nname = \"b\"\ncount = 3\nwithin = \"1m\"\nban = \"1h\"\n").unwrap();
        rule.scope = Scope::Local;
        let mut t = Tracker::new(Engine::compile(&[rule]).unwrap(), Limits::default());
        assert_eq!(ban_trust(&mut t, "auth"), Trust::Forgeable);
    }
}

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
//! (slot, touch) records, stale records being skipped and dropped.

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashTable;
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
const NONE_FIRED: u32 = u32::MAX;

/// Failure times kept in the slot itself (more go to the heap).
const INLINE_TIMES: usize = 20;

/// Most evidence lines kept per pair.
const MAX_LINES: usize = palisade_model::decision::MAX_EVIDENCE_LINES;

/// One (rule, address) pair being counted. The fields used for every
/// failure come first.
struct Slot {
    /// The last touch (0: the slot is free).
    seq: u64,
    addr: IpAddr,
    rule: u32,
    /// The highest stage in force (or [`NONE_FIRED`]) and until when.
    fired: u32,
    until: u64,
    /// The failure times ring: capacity (the rule's largest stage count),
    /// index of the oldest, how many are kept.
    t_cap: u32,
    t_head: u32,
    t_len: u32,
    /// How many of the newest times are in order (oldest to newest): for
    /// those, the n-th newest is also the earliest of the n newest.
    t_sorted: u32,
    evidence: Ring,
    /// Failure times in ms (`more` when the capacity is over
    /// [`INLINE_TIMES`]).
    times: [u64; INLINE_TIMES],
    more: Box<[u64]>,
}

impl Slot {
    fn times(&self) -> &[u64] {
        if self.t_cap as usize <= INLINE_TIMES {
            &self.times[..self.t_cap as usize]
        } else {
            &self.more
        }
    }

    fn times_mut(&mut self) -> &mut [u64] {
        if self.t_cap as usize <= INLINE_TIMES {
            &mut self.times[..self.t_cap as usize]
        } else {
            &mut self.more
        }
    }

    /// The time `back` failures before the newest (0 = the newest).
    fn time(&self, back: usize) -> u64 {
        let cap = self.t_cap as usize;
        let mut i = self.t_head as usize + self.t_len as usize - 1 - back;
        if i >= cap {
            i -= cap;
        }
        self.times()[i]
    }

    fn push_time(&mut self, t: u64) {
        self.t_sorted = if self.t_len > 0 && t >= self.time(0) {
            (self.t_sorted + 1).min(self.t_cap)
        } else {
            1
        };
        let cap = self.t_cap as usize;
        let (head, len) = (self.t_head as usize, self.t_len as usize);
        if len == cap {
            self.times_mut()[head] = t;
            self.t_head = if head + 1 == cap { 0 } else { head as u32 + 1 };
        } else {
            let i = if head + len >= cap {
                head + len - cap
            } else {
                head + len
            };
            self.times_mut()[i] = t;
            self.t_len += 1;
        }
    }

    /// How many of the newest failures in a row are later than `since`.
    fn recent(&self, since: u64) -> usize {
        (0..self.t_len as usize)
            .take_while(|&k| self.time(k) > since)
            .count()
    }

    /// Whether the `count` newest failures are all later than `since`
    /// (`recent(since) >= count`).
    fn reached(&self, since: u64, count: usize) -> bool {
        if count == 0 {
            return true;
        }
        if count > self.t_len as usize {
            return false;
        }
        if count <= self.t_sorted as usize {
            return self.time(count - 1) > since;
        }
        (0..count).all(|k| self.time(k) > since)
    }
}

/// Evidence lines in a ring of bytes, their lengths in a ring beside it.
/// Grows until it holds the lines it must keep, then reuses its room.
#[derive(Default)]
struct Ring {
    buf: Vec<u8>,
    head: u32,
    used: u32,
    /// Lengths of the kept lines, oldest at `first`.
    lens: [u32; MAX_LINES],
    first: u8,
    count: u8,
}

impl Ring {
    fn clear(&mut self) {
        self.head = 0;
        self.used = 0;
        self.first = 0;
        self.count = 0;
    }

    fn read(&self, at: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        let first = out.len().min(cap - at);
        out[..first].copy_from_slice(&self.buf[at..at + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }

    fn write(&mut self, at: usize, data: &[u8]) {
        let cap = self.buf.len();
        let first = data.len().min(cap - at);
        self.buf[at..at + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.buf[..rest].copy_from_slice(&data[first..]);
    }

    fn wrap(&self, at: usize) -> usize {
        if at >= self.buf.len() {
            at - self.buf.len()
        } else {
            at
        }
    }

    fn len_at(&self, n: usize) -> usize {
        self.lens[(self.first as usize + n) % MAX_LINES] as usize
    }

    /// Appends a line made of `parts`, keeping at most `max` lines
    /// (`max` <= [`MAX_LINES`]).
    fn push(&mut self, parts: &[&[u8]], max: usize) {
        if self.count as usize >= max {
            let n = self.len_at(0);
            self.head = self.wrap(self.head as usize + n) as u32;
            self.used -= n as u32;
            self.first = ((self.first as usize + 1) % MAX_LINES) as u8;
            self.count -= 1;
        }
        let need: usize = parts.iter().map(|p| p.len()).sum();
        let used = self.used as usize;
        if used + need > self.buf.len() {
            let mut bigger = vec![0u8; (used + need).max(2 * self.buf.len()).max(256)];
            self.read(self.head as usize, &mut bigger[..used]);
            self.buf = bigger;
            self.head = 0;
        }
        let mut at = self.wrap(self.head as usize + used);
        for p in parts {
            self.write(at, p);
            at = self.wrap(at + p.len());
        }
        self.used += need as u32;
        self.lens[(self.first as usize + self.count as usize) % MAX_LINES] = need as u32;
        self.count += 1;
    }

    /// The lines, oldest first.
    fn lines(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.count as usize);
        let mut at = self.head as usize;
        for n in 0..self.count as usize {
            let len = self.len_at(n);
            let mut text = vec![0u8; len];
            self.read(at, &mut text);
            at = self.wrap(at + len);
            // Written from whole `str`s.
            out.push(String::from_utf8(text).unwrap_or_default());
        }
        out
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
    fn hash(&self, rule: u32, addr: &IpAddr) -> u64 {
        let (a, b) = match addr {
            IpAddr::V4(v) => (u64::from(u32::from(*v)) | (1 << 32), 0),
            IpAddr::V6(v) => {
                let x = u128::from(*v);
                (x as u64, (x >> 64) as u64)
            }
        };
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
    free: Vec<u32>,
    /// Slot numbers, by hash of (rule, address).
    table: HashTable<u32>,
    keys: KeyHash,
    /// (slot, low bits of the touch) per touch, oldest first; a record is
    /// stale when the slot was touched again since (or freed).
    order: VecDeque<(u32, u32)>,
    seq: u64,
    hits: Vec<Hit>,
    /// Per rule: the largest stage count, and the longest window in ms.
    max_count: Vec<usize>,
    max_window: Vec<u64>,
    /// A cleaned evidence line, when the line needs cleaning.
    line: String,
    evicted: u64,
}

impl Tracker {
    /// A tracker over `engine`. Evidence lines are capped at
    /// [`palisade_model::decision::MAX_EVIDENCE_LINES`] (what a decision
    /// keeps).
    pub fn new(engine: Engine, mut limits: Limits) -> Tracker {
        limits.evidence_lines = limits.evidence_lines.min(MAX_LINES);
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
        Tracker {
            engine,
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            table: HashTable::new(),
            keys: KeyHash([random_seed(), random_seed(), random_seed() | 1]),
            order: VecDeque::new(),
            seq: 0,
            hits: Vec::new(),
            max_count,
            max_window,
            line: String::new(),
            evicted: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Number of (rule, address) pairs being counted.
    pub fn tracked(&self) -> usize {
        self.table.len()
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
                    self.forget(hit.rule as u32, &address.addr());
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

    fn find(&self, rule: u32, addr: &IpAddr) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(self.keys.hash(rule, addr), |&i| {
                let s = &slots[i as usize];
                s.rule == rule && s.addr == *addr
            })
            .copied()
    }

    /// Drops slot `i` from the table and frees it.
    fn release(&mut self, i: u32) {
        let s = &self.slots[i as usize];
        let h = self.keys.hash(s.rule, &s.addr);
        if let Ok(e) = self.table.find_entry(h, |&x| x == i) {
            e.remove();
        }
        self.slots[i as usize].seq = 0;
        self.free.push(i);
    }

    fn forget(&mut self, rule: u32, addr: &IpAddr) {
        if let Some(i) = self.find(rule, addr) {
            self.release(i);
        }
    }

    /// A slot for a new pair, its buffers emptied.
    fn new_slot(&mut self, rule: usize, addr: IpAddr) -> u32 {
        let cap = self.max_count[rule];
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    seq: 0,
                    addr,
                    rule: 0,
                    fired: NONE_FIRED,
                    until: 0,
                    t_cap: 0,
                    t_head: 0,
                    t_len: 0,
                    t_sorted: 0,
                    evidence: Ring::default(),
                    times: [0; INLINE_TIMES],
                    more: Box::default(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[i as usize];
        s.rule = rule as u32;
        s.addr = addr;
        s.fired = NONE_FIRED;
        s.until = 0;
        if cap > INLINE_TIMES && s.more.len() != cap {
            s.more = vec![0; cap].into_boxed_slice();
        }
        s.t_cap = cap as u32;
        s.t_head = 0;
        s.t_len = 0;
        s.t_sorted = 0;
        s.evidence.clear();
        let slots = &self.slots;
        let keys = self.keys;
        self.table
            .insert_unique(keys.hash(rule as u32, &addr), i, |&x| {
                let s = &slots[x as usize];
                keys.hash(s.rule, &s.addr)
            });
        i
    }

    fn failure(&mut self, rule: usize, address: Net, text: &str, now: Timestamp) -> Option<Event> {
        let addr = address.addr();
        let t = now.as_millis();
        self.seq += 1;
        let seq = self.seq;
        let i = match self.find(rule as u32, &addr) {
            Some(i) => i,
            None => {
                while self.table.len() >= self.limits.max_tracked.max(1) {
                    self.evict_one();
                }
                self.new_slot(rule, addr)
            }
        };
        self.order.push_back((i, seq as u32));
        let s = &mut self.slots[i as usize];
        s.seq = seq;
        s.push_time(t);
        if self.limits.evidence_lines > 0 {
            let (line, more) = capped(text.trim_end(), self.limits.evidence_len, &mut self.line);
            let tail: &[u8] = if more { "…".as_bytes() } else { b"" };
            s.evidence
                .push(&[line.as_bytes(), tail], self.limits.evidence_lines);
        }
        if s.fired != NONE_FIRED && s.until <= t {
            s.fired = NONE_FIRED;
        }
        let info = &self.engine.rules()[rule];
        // The highest stage whose threshold is reached now.
        let mut fire = None;
        for (n, stage) in info.stages.iter().enumerate() {
            let since = t.saturating_sub(stage.within.as_millis() as u64);
            let count = stage.count as usize;
            if s.reached(since, count) {
                fire = Some(n);
            }
        }
        let event = match fire {
            Some(n) if s.fired == NONE_FIRED || n as u32 > s.fired => {
                let stage = &info.stages[n];
                let since = t.saturating_sub(stage.within.as_millis() as u64);
                let count = s.recent(since);
                s.until = match stage.ban {
                    Span::For(d) => t.saturating_add(d.as_millis() as u64),
                    Span::Forever => u64::MAX,
                };
                s.fired = n as u32;
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
                    evidence: s.evidence.lines(),
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
        let s = self.slots[i as usize].seq;
        s != 0 && s as u32 == seq
    }

    fn evict_one(&mut self) {
        while let Some(rec) = self.order.pop_front() {
            if self.live(rec) {
                self.release(rec.0);
                self.evicted += 1;
                return;
            }
        }
        // The order queue lost track (cannot happen); drop anything.
        if let Some(i) = (0..self.slots.len() as u32).find(|&i| self.slots[i as usize].seq != 0) {
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
        let t = now.as_millis();
        for i in 0..self.slots.len() as u32 {
            let s = &self.slots[i as usize];
            if s.seq == 0 {
                continue;
            }
            let window = self.max_window[s.rule as usize];
            let recent = s.t_len > 0 && s.time(0) + window > t;
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

/// Only printable ASCII and tabs (written without early exit, so that it
/// compiles to vector instructions).
fn printable(b: &[u8]) -> bool {
    let mut bad = false;
    for &c in b {
        bad |= (c < 0x20 && c != b'\t') | (c >= 0x7f);
    }
    !bad
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

    #[test]
    fn tracker_agrees_with_a_plain_model() {
        let limits = Limits {
            max_tracked: 40,
            evidence_lines: 4,
            evidence_len: 17,
        };
        let mut t = tracker(limits);
        let mut model = Model {
            stages: t.engine().rules()[0].stages.clone(),
            max_count: 10,
            limits,
            entries: Default::default(),
            seq: 0,
        };
        let mut r = crate::loggen::Rng::new(5);
        let mut now = 1_700_000_000_000u64;
        for step in 0..200_000u32 {
            // Time mostly moves on, sometimes back (clock steps, old logs).
            now = if r.below(50) == 0 {
                now.saturating_sub(r.below(120_000))
            } else {
                now + r.below(4_000)
            };
            let a = r.below(60);
            let addr: IpAddr = if a % 3 == 0 {
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
}

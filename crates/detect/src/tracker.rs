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

use std::net::IpAddr;
use std::sync::Arc;

use palisade_model::{Net, Scope, Span, Timestamp};

use crate::config::Limits;
use crate::engine::{Engine, Hit, HitKind};
use crate::sources::Line;

mod evidence;
mod pages;
mod rings;
mod slots;
mod table;

use evidence::{EvidenceLog, MAX_LINE_LEN, capped};
use rings::{Ring, Rings};
use slots::{
    FORGEABLE, FREE, INLINE_TIMES, Inline, NONE_FIRED, SLOT_BYTES, Slot, Times, key, to_fire,
};
use table::{KeyHash, SlotTable, random_seed, table_size};

/// A stage of a rule, as carried in [`Event::Ban`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRef {
    /// Position in the rule's stages, ordered by count (0 = first to fire).
    pub index: usize,
    /// The stage's name from the rule.
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
    /// `verified` or `forgeable`, as logged and stored.
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
        /// The rule that fired.
        rule: String,
        /// The attacker: a host, or the network the rule counts by.
        address: Net,
        /// The stage that fired.
        stage: StageRef,
        /// How long to ban.
        span: Span,
        /// This node only, or the whole network.
        scope: Scope,
        /// Failures counted within the stage's window.
        count: u32,
        /// The last few matched lines, oldest first, cleaned and capped.
        evidence: Vec<String>,
        /// Whether the failures could have been forged.
        trust: Trust,
    },
    /// Lift the bans detectors made for `address` (a good pattern matched).
    Forgive {
        /// The rule whose good pattern matched.
        rule: String,
        /// The address forgiven.
        address: Net,
    },
}

/// Most rules and stages per rule a tracker counts (slot fields are small).
pub const MAX_RULES: usize = FREE as usize;
/// Most stages a rule may have.
pub const MAX_STAGES: usize = NONE_FIRED as usize;

/// Most evidence lines kept per pair.
const MAX_LINES: usize = palisade_model::decision::MAX_EVIDENCE_LINES;

/// Pairs looked at for each eviction.
const EVICTION_SAMPLE: usize = 8;

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

/// The evidence log's share of the memory budget: none when no evidence
/// is kept, so that its share holds pairs.
fn log_bytes(limits: &Limits) -> usize {
    if limits.evidence_lines == 0 {
        return 0;
    }
    (limits.memory / 32).clamp(64 << 10, 64 << 20)
}

/// A slot's failure times, wherever they are.
enum SlotTimes<'a> {
    Inline(Inline<'a>),
    Ring(Ring<'a>),
}

impl Times for SlotTimes<'_> {
    fn len(&self) -> usize {
        match self {
            SlotTimes::Inline(t) => t.len(),
            SlotTimes::Ring(t) => t.len(),
        }
    }
    fn sorted(&self) -> usize {
        match self {
            SlotTimes::Inline(t) => t.sorted(),
            SlotTimes::Ring(t) => t.sorted(),
        }
    }
    fn time(&self, back: usize) -> u64 {
        match self {
            SlotTimes::Inline(t) => t.time(back),
            SlotTimes::Ring(t) => t.time(back),
        }
    }
}

/// A failure or a success of a line of a batch, worked out before the
/// batch is counted (see [`Tracker::observe_lines`]): the network it is
/// counted in, its hash, and the slot the pair most likely has (the first
/// with the hash's bits in the table, whose memory was asked for).
#[derive(Clone, Copy)]
struct Counted {
    net: Net,
    hash: u64,
    likely: Option<u32>,
}

/// Counting state over an [`Engine`].
pub struct Tracker {
    engine: Engine,
    limits: Limits,
    /// Most pairs at once (from the budget and [`Limits::max_tracked`]).
    capacity: usize,
    /// Bytes the slots and the rings of `rings` may use.
    pair_budget: usize,
    rules: Vec<RuleCounting>,
    slots: Vec<Slot>,
    /// Failure times of the slots whose rule counts more than they hold.
    rings: Rings,
    free: Vec<u32>,
    /// Slot numbers, by hash of (rule, address).
    table: SlotTable,
    keys: KeyHash,
    /// The state of the generator that picks eviction candidates.
    hand: u64,
    log: EvidenceLog,
    forgeable_sources: Vec<Arc<str>>,
    hits: Vec<Hit>,
    /// For [`Tracker::observe_lines`]: where each line's verdicts and
    /// pairs end, and the pair of each failure and success ([`Counted`]).
    batch_ends: Vec<(usize, usize)>,
    batch_keys: Vec<Counted>,
    /// A cleaned evidence line, when the line needs cleaning.
    line: String,
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
        let log = log_bytes(&limits);
        let capacity = capacity(limits.memory, log)
            .min(limits.max_tracked.unwrap_or(usize::MAX))
            .max(1);
        let pair_budget = limits
            .memory
            .saturating_sub(log + table_size(capacity) * 8)
            .max(SLOT_BYTES);
        // Reserved, not touched: memory is used as pairs arrive.
        let slots = Vec::with_capacity(capacity);
        pages::advise_huge(&slots);
        Tracker {
            engine,
            limits,
            capacity,
            pair_budget,
            rules,
            slots,
            rings: Rings::new(),
            free: Vec::new(),
            table: SlotTable::with_capacity(16),
            keys: KeyHash([random_seed(), random_seed(), random_seed() | 1]),
            hand: random_seed() | 1,
            log: EvidenceLog::new(log),
            forgeable_sources: Vec::new(),
            hits: Vec::new(),
            batch_ends: Vec::new(),
            batch_keys: Vec::new(),
            line: String::new(),
            evicted: 0,
        }
    }

    /// Lines from these sources can be forged (NFLOG): every failure they
    /// bring makes the pair's bans [`Trust::Forgeable`].
    pub fn set_forgeable_sources(&mut self, names: impl IntoIterator<Item = String>) {
        self.forgeable_sources = names.into_iter().map(Arc::from).collect();
    }

    /// The compiled rules.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled rules, to change them in place.
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
        self.observe_inner(&line.source, &line.text, &mut || now, forgeable)
            .0
    }

    /// Like [`Tracker::observe`], also returning the engine's verdicts (for
    /// dry runs that report every match); `now` is asked only when the line
    /// holds a failure (reading a log's times costs, and most lines need
    /// none).
    pub fn observe_text(
        &mut self,
        source: &str,
        text: &str,
        mut now: impl FnMut() -> Timestamp,
    ) -> (Vec<Event>, &[Hit]) {
        let forgeable = self.forgeable_sources.iter().any(|s| **s == *source);
        self.observe_inner(source, text, &mut now, forgeable)
    }

    /// Like [`Tracker::observe_text`] for several lines of one source at
    /// once: `each` is given each line's index, events and verdicts in
    /// order (an error stops there), and `now` a line's index when its time
    /// is needed. The same events as line by line; faster under attack,
    /// because the memory of every pair the lines count is asked for before
    /// it is read.
    pub fn observe_lines<E>(
        &mut self,
        source: &str,
        lines: &[&str],
        mut now: impl FnMut(usize) -> Timestamp,
        mut each: impl FnMut(usize, Vec<Event>, &[Hit]) -> Result<(), E>,
    ) -> Result<(), E> {
        let forgeable = self.forgeable_sources.iter().any(|s| **s == *source);
        let mut hits = std::mem::take(&mut self.hits);
        let mut ends = std::mem::take(&mut self.batch_ends);
        let mut keys = std::mem::take(&mut self.batch_keys);
        hits.clear();
        ends.clear();
        keys.clear();
        for text in lines {
            self.engine.check(source, text, &mut hits);
            ends.push((hits.len(), 0));
        }
        let mut from = 0;
        for end in &mut ends {
            for hit in &hits[from..end.0] {
                if let (HitKind::Bad | HitKind::Good, Some(address)) = (hit.kind, hit.address) {
                    let key = self.key(hit.rule, address);
                    self.table.prefetch(key.hash);
                    keys.push(key);
                }
            }
            (from, end.1) = (end.0, keys.len());
        }
        for key in &mut keys {
            key.likely = self.table.likely(key.hash);
            if let Some(i) = key.likely {
                table::prefetch(&self.slots[i as usize]);
            }
        }
        // The rings of those with many failures (the slots have come by
        // now, most of them).
        for key in &keys {
            if let Some(i) = key.likely {
                let s = &self.slots[i as usize];
                if s.is_wide() {
                    let cap = self.rules[usize::from(s.rule)].max_count;
                    self.rings.prefetch(s.ring(), cap);
                }
            }
        }
        let (mut from, mut key) = (0, 0);
        let mut done = Ok(());
        for (k, text) in lines.iter().enumerate() {
            let (to, key_to) = ends[k];
            let line = &hits[from..to];
            let events = self.count(text, line, &keys[key..key_to], &mut || now(k), forgeable);
            done = each(k, events, line);
            if done.is_err() {
                break;
            }
            (from, key) = (to, key_to);
        }
        self.hits = hits;
        self.batch_ends = ends;
        self.batch_keys = keys;
        done
    }

    fn observe_inner(
        &mut self,
        source: &str,
        text: &str,
        now: &mut dyn FnMut() -> Timestamp,
        forgeable: bool,
    ) -> (Vec<Event>, &[Hit]) {
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        self.engine.check(source, text, &mut hits);
        let events = self.count(text, &hits, &[], now, forgeable);
        self.hits = hits;
        (events, &self.hits)
    }

    /// Counts the verdicts `hits` of line `text`; `keys` are each failure
    /// and success with an address among them, in order, if they were
    /// worked out already.
    fn count(
        &mut self,
        text: &str,
        hits: &[Hit],
        keys: &[Counted],
        now: &mut dyn FnMut() -> Timestamp,
        forgeable: bool,
    ) -> Vec<Event> {
        let mut at = None;
        let mut events = Vec::new();
        let mut keys = keys.iter();
        for hit in hits {
            let Some(address) = hit.address else {
                continue;
            };
            let good = match hit.kind {
                HitKind::Ignored => continue,
                HitKind::Good => true,
                HitKind::Bad => false,
            };
            // The batch worked out the pair of each failure and success.
            let key = keys.next().copied();
            let key = key.unwrap_or_else(|| self.key(hit.rule, address));
            if good {
                events.push(self.forgive(hit.rule, key));
            } else {
                let now = *at.get_or_insert_with(&mut *now);
                if let Some(e) = self.failure(hit.rule, key, text, now, forgeable) {
                    events.push(e);
                }
            }
        }
        events
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

    /// The pair `rule` counts `address` in, with its hash.
    fn key(&self, rule: usize, address: Net) -> Counted {
        let net = self.counted(rule, address);
        Counted {
            net,
            hash: self.hash(rule, &net),
            likely: None,
        }
    }

    fn hash(&self, rule: usize, net: &Net) -> u64 {
        self.keys.hash(
            rule as u32 | u32::from(net.prefix()) << 16,
            &key(&net.addr()),
        )
    }

    fn find_hashed(&self, hash: u64, rule: usize, net: &Net) -> Option<u32> {
        self.table.find(hash, |i| self.holds(i, rule, net))
    }

    /// The slot of `key`'s pair for `rule`, if it has one: the one the
    /// batch found likely if it holds the pair now (a pair has one slot;
    /// one freed since holds no pair), else searched.
    fn find_key(&self, rule: usize, key: &Counted) -> Option<u32> {
        key.likely
            .filter(|&i| self.holds(i, rule, &key.net))
            .or_else(|| self.find_hashed(key.hash, rule, &key.net))
    }

    /// Whether slot `i` is (rule, net)'s.
    fn holds(&self, i: u32, rule: usize, net: &Net) -> bool {
        let s = &self.slots[i as usize];
        usize::from(s.rule) == rule && s.addr == key(&net.addr()) && s.prefix == net.prefix()
    }

    /// Drops slot `i` from the table and frees it.
    fn release(&mut self, i: u32) {
        let s = &self.slots[i as usize];
        let hash = self.hash(usize::from(s.rule), &s.net());
        self.table.remove(hash, i);
        let s = &mut self.slots[i as usize];
        if s.is_wide() {
            self.rings.remove(s.ring());
        }
        s.rule = FREE;
        s.flags = 0;
        self.free.push(i);
    }

    /// Whether a new pair must first take an old pair's place.
    fn full(&self) -> bool {
        self.table.len >= self.capacity
            || (self.table.len + 1) * SLOT_BYTES + self.rings.bytes() > self.pair_budget
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

    /// A good pattern matched `address` for `rule`: the pair is forgotten,
    /// and the bans its failures made are to be lifted.
    fn forgive(&mut self, rule: usize, key: Counted) -> Event {
        if let Some(i) = self.find_key(rule, &key) {
            self.release(i);
        }
        Event::Forgive {
            rule: self.engine.rules()[rule].name.clone(),
            address: key.net,
        }
    }

    /// A failure of `net` for `rule` in line `text`: counted, its line kept
    /// as evidence, and the ban of the stage it makes fire, if any.
    fn failure(
        &mut self,
        rule: usize,
        key: Counted,
        text: &str,
        now: Timestamp,
        forgeable: bool,
    ) -> Option<Event> {
        let t = now.as_millis();
        let net = key.net;
        let i = self.slot_for(rule, key, t);
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
                let (times, len, sorted) = s.oldest_first(cap);
                match self.rings.add(max_count, &times[..len], sorted) {
                    Some(at) => {
                        self.rings.push(at, t);
                        s.set_ring(at);
                    }
                    // No room for more rings (tens of GiB of them): the
                    // slot keeps the newest it holds.
                    None => s.keep_time(t, cap),
                }
            }
        } else {
            self.rings.push(s.ring(), t);
        }
        if s.fired != NONE_FIRED && u64::from(s.until).saturating_mul(1000) <= t {
            s.fired = NONE_FIRED;
        }
        let info = &self.engine.rules()[rule];
        let fired = (s.fired != NONE_FIRED).then_some(usize::from(s.fired));
        let (fire, count) = if s.is_wide() {
            to_fire(&self.rings.get(s.ring()), &info.stages, fired, t)
        } else {
            to_fire(&s.inline(cap), &info.stages, fired, t)
        };
        if self.limits.evidence_lines > 0 {
            let (line, more) = capped(text.trim_end(), self.limits.evidence_len, &mut self.line);
            s.evidence = self.log.push(s.evidence, line.as_bytes(), more);
        }
        Some(self.fire(iu, rule, fire?, net, count, t))
    }

    /// The slot of (rule, net), made (taking the place of the pair least
    /// likely to reach a threshold when the budget is full) if it is new.
    fn slot_for(&mut self, rule: usize, key: Counted, t: u64) -> u32 {
        match self.find_key(rule, &key) {
            Some(i) => i,
            None => {
                while self.full() && self.table.len > 0 {
                    self.evict_one(t);
                }
                self.new_slot(rule, &key.net, key.hash)
            }
        }
    }

    /// Stage `n` of `rule` fires at `t` for slot `i` (counting `net`),
    /// after `count` failures within its window: in force until its ban
    /// ends.
    fn fire(&mut self, i: usize, rule: usize, n: usize, net: Net, count: usize, t: u64) -> Event {
        let info = &self.engine.rules()[rule];
        let s = &mut self.slots[i];
        let stage = &info.stages[n];
        s.until = match stage.ban {
            Span::For(d) => {
                let end = t.saturating_add(d.as_millis() as u64);
                u32::try_from(end.div_ceil(1000)).unwrap_or(u32::MAX - 1)
            }
            Span::Forever => u32::MAX,
        };
        s.fired = n as u8;
        Event::Ban {
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
        }
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
        let times = self.times(s, cap);
        let recent = since.map_or(0, |x| times.recent(x));
        let newest = if times.len() > 0 { times.time(0) } else { 0 };
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

    /// The failure times of slot `s` (whose rule keeps `cap` inline).
    fn times<'a>(&'a self, s: &'a Slot, cap: usize) -> SlotTimes<'a> {
        if s.is_wide() {
            SlotTimes::Ring(self.rings.get(s.ring()))
        } else {
            SlotTimes::Inline(s.inline(cap))
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
            let newest = {
                let times = self.times(s, counting.inline_cap);
                (times.len() > 0).then(|| times.time(0))
            };
            let recent = newest.is_some_and(|x| x + counting.max_window > t);
            let in_force = s.fired != NONE_FIRED && u64::from(s.until).saturating_mul(1000) > t;
            if !(recent || in_force) {
                self.release(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::evidence::cap;
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

    /// Lines observed some at a time give the events and verdicts they give
    /// one by one, with evictions (the two trackers pick alike) and with
    /// forgiving lines, times going back and forth, and lines of no rule.
    #[test]
    fn observing_lines_at_once_is_observing_them_one_by_one() {
        let limits = Limits {
            max_tracked: Some(64),
            ..Limits::default()
        };
        let (mut one, mut many) = (tracker(limits), tracker(limits));
        many.keys = one.keys;
        many.hand = one.hand;
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut lines = Vec::new();
        let mut times = Vec::new();
        for n in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = std::net::Ipv4Addr::from(0xc633_6400 + (x % 97) as u32);
            lines.push(match (x >> 8) % 8 {
                0 => format!("good from {a}"),
                1 => format!("nothing from {a}"),
                _ => format!("bad from {a}"),
            });
            // Mostly forward, now and then back.
            times.push(at(n / 4 + (x >> 20) % 3));
        }
        let mut want = Vec::new();
        for (text, &t) in lines.iter().zip(&times) {
            let (events, hits) = one.observe_text("test", text, || t);
            want.push(format!("{events:?} {hits:?}"));
        }
        let mut got = Vec::new();
        let mut start = 0;
        while start < lines.len() {
            // Batches of 1 to 100 lines.
            let n = (1 + (start * 7919) % 100).min(lines.len() - start);
            let batch: Vec<&str> = lines[start..start + n].iter().map(String::as_str).collect();
            many.observe_lines(
                "test",
                &batch,
                |k| times[start + k],
                |_, events, hits| {
                    got.push(format!("{events:?} {hits:?}"));
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            start += n;
        }
        assert_eq!(got.len(), want.len());
        for (n, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "line {n}: {}", lines[n]);
        }
        assert_eq!(many.evicted(), one.evicted());
        assert!(one.evicted() > 0);
        for event in ["Ban", "Forgive", "BLOCKER"] {
            assert!(want.iter().any(|w| w.contains(event)), "no {event}");
        }
    }

    /// Without room for a wider ring, a pair keeps counting its newest
    /// inline failures: the stages within them still fire.
    #[test]
    fn without_room_for_rings_the_newest_failures_count() {
        let (mut full, mut room) = (tracker(Limits::default()), tracker(Limits::default()));
        full.rings = Rings::at_most(0);
        let (mut stages_full, mut stages_room) = (Vec::new(), Vec::new());
        for s in 0..12 {
            for (t, stages) in [(&mut full, &mut stages_full), (&mut room, &mut stages_room)] {
                for e in t.observe(&line("bad from 198.51.100.7"), at(s)) {
                    if let Event::Ban { stage, .. } = e {
                        stages.push(stage.name);
                    }
                }
            }
        }
        // The throttle (3 within a minute) fires either way; the block (10
        // within an hour) needs more times than a slot holds.
        assert_eq!(stages_room, ["throttle", "block"]);
        assert_eq!(stages_full, ["throttle"]);
        assert_eq!(full.rings.bytes(), 0);
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
        let log = log_bytes(&limits);
        assert!(log > 0);
        assert!(t.capacity() * SLOT_BYTES + table_size(t.capacity()) * 8 + log <= limits.memory);
        // Without evidence, the log's share holds pairs.
        let without = tracker(Limits {
            evidence_lines: 0,
            ..limits
        });
        assert_eq!(without.capacity(), capacity(limits.memory, 0));
        assert!(without.capacity() > t.capacity());
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

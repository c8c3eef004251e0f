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

use std::collections::{HashMap, VecDeque};
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

struct Entry {
    /// Failure times in ms, oldest first.
    times: VecDeque<u64>,
    /// The last evidence lines, each ending in '\n' (one allocation).
    evidence: String,
    evidence_count: usize,
    /// The highest stage in force and when it stops being in force.
    fired: Option<(usize, u64)>,
    seq: u64,
}

type Key = (u32, IpAddr);

/// A small, fast hasher for (rule, address) keys. Addresses are chosen by
/// attackers, so the seed is random per tracker (no precomputed
/// collisions); the multiply-rotate mix is FxHash's.
#[derive(Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

#[derive(Clone, Copy)]
struct KeyHash(u64);

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
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
    entries: HashMap<Key, Entry, KeyHash>,
    order: VecDeque<(Key, u64)>,
    seq: u64,
    hits: Vec<Hit>,
    /// Per rule: the largest stage count.
    max_count: Vec<usize>,
    evicted: u64,
}

impl Tracker {
    pub fn new(engine: Engine, limits: Limits) -> Tracker {
        let max_count = engine
            .rules()
            .iter()
            .map(|r| r.stages.iter().map(|s| s.count as usize).max().unwrap_or(1))
            .collect();
        Tracker {
            engine,
            limits,
            entries: HashMap::with_hasher(KeyHash(random_seed())),
            order: VecDeque::new(),
            seq: 0,
            hits: Vec::new(),
            max_count,
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
        self.entries.len()
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
                    self.entries.remove(&(hit.rule as u32, address.addr()));
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

    fn failure(&mut self, rule: usize, address: Net, text: &str, now: Timestamp) -> Option<Event> {
        let key = (rule as u32, address.addr());
        let t = now.as_millis();
        self.seq += 1;
        let seq = self.seq;
        // One hash probe in the common case (not full).
        if self.entries.len() >= self.limits.max_tracked.max(1) && !self.entries.contains_key(&key)
        {
            while self.entries.len() >= self.limits.max_tracked.max(1) {
                self.evict_one();
            }
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            times: VecDeque::new(),
            evidence: String::new(),
            evidence_count: 0,
            fired: None,
            seq,
        });
        entry.seq = seq;
        self.order.push_back((key, seq));
        if entry.times.len() >= self.max_count[rule] {
            entry.times.pop_front();
        }
        entry.times.push_back(t);
        if self.limits.evidence_lines > 0 {
            if entry.evidence_count >= self.limits.evidence_lines {
                let first = entry
                    .evidence
                    .find('\n')
                    .map_or(entry.evidence.len(), |i| i + 1);
                entry.evidence.drain(..first);
                entry.evidence_count -= 1;
            }
            push_capped(
                &mut entry.evidence,
                text.trim_end(),
                self.limits.evidence_len,
            );
            entry.evidence.push('\n');
            entry.evidence_count += 1;
        }
        if let Some((_, until)) = entry.fired
            && until <= t
        {
            entry.fired = None;
        }
        let info = &self.engine.rules()[rule];
        // The highest stage whose threshold is reached now.
        let mut fire = None;
        for (i, stage) in info.stages.iter().enumerate() {
            let since = t.saturating_sub(stage.within.as_millis() as u64);
            let n = entry.times.iter().rev().take_while(|&&x| x > since).count();
            if n >= stage.count as usize {
                fire = Some((i, n));
            }
        }
        let event = match fire {
            Some((i, n)) if entry.fired.is_none_or(|(f, _)| i > f) => {
                let stage = &info.stages[i];
                let until = match stage.ban {
                    Span::For(d) => t.saturating_add(d.as_millis() as u64),
                    Span::Forever => u64::MAX,
                };
                entry.fired = Some((i, until));
                Some(Event::Ban {
                    rule: info.name.clone(),
                    address,
                    stage: StageRef {
                        index: i,
                        name: stage.name.clone(),
                        list: stage.list.clone(),
                    },
                    span: stage.ban,
                    scope: info.scope,
                    count: n as u32,
                    evidence: entry.evidence.lines().map(String::from).collect(),
                })
            }
            _ => None,
        };
        if self.order.len() > 2 * self.limits.max_tracked.max(1) + 1024 {
            self.compact();
        }
        event
    }

    fn evict_one(&mut self) {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&key);
                self.evicted += 1;
                return;
            }
        }
        // The order queue lost track (cannot happen); drop anything.
        if let Some(&key) = self.entries.keys().next() {
            self.entries.remove(&key);
            self.evicted += 1;
        }
    }

    fn compact(&mut self) {
        let mut live: Vec<(Key, u64)> = self.entries.iter().map(|(k, e)| (*k, e.seq)).collect();
        live.sort_by_key(|&(_, s)| s);
        self.order = live.into();
    }

    /// Forgets pairs with no failure inside their rule's largest window and
    /// no stage in force. Call now and then (e.g. every minute).
    pub fn prune(&mut self, now: Timestamp) {
        let t = now.as_millis();
        let rules = self.engine.rules();
        self.entries.retain(|(rule, _), e| {
            let window = rules[*rule as usize]
                .stages
                .iter()
                .map(|s| s.within.as_millis() as u64)
                .max()
                .unwrap_or(0);
            let recent = e.times.back().is_some_and(|&x| x + window > t);
            let in_force = e.fired.is_some_and(|(_, until)| until > t);
            recent || in_force
        });
        self.compact();
    }
}

/// Appends `s`, cleaned (no control characters, so no newline either) and
/// capped at `max` bytes.
fn push_capped(out: &mut String, s: &str, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    if head
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        out.push_str(head);
    } else {
        out.push_str(&clean_text(head));
    }
    if end < s.len() {
        out.push('…');
    }
}

#[cfg(test)]
fn cap(s: &str, max: usize) -> String {
    let mut out = String::new();
    push_capped(&mut out, s, max);
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
}

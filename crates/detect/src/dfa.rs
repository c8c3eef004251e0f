//! DFA-only matching of palisade's own patterns, with the `host` group found
//! without a backtracking engine.
//!
//! The `regex` crate finds a match with a lazy DFA, then runs a
//! backtracking engine over it to fill in the groups; on a typical sshd
//! failure that second step costs several times the first. The engine
//! avoids it:
//!
//! - [`RuleDfa`]: one lazy DFA per rule over its patterns (ignore, bad,
//!   good, in that order), searched anchored at the start of the message
//!   with leftmost-first semantics. It says which of the rule's patterns
//!   matches first in that order (what asking each pattern in turn would
//!   say) and where that pattern's match ends. A pattern that is not
//!   anchored at the start gets a leading `(?s-u:.)*?`, so the anchored
//!   search finds what an unanchored one would. A table of the bytes a
//!   match can begin with skips the search for most other lines.
//! - [`HostSplit`]: a pattern whose `host` group is a part of its top-level
//!   sequence, `P (?P<host>H) S`, is split into three reverse DFAs. Given
//!   the end of the match, the starts of `S` ending there are the candidate
//!   ends of the host, the starts of `H` ending at one of those the
//!   candidate starts, and a candidate is the group only if `P` matches
//!   everything before it. Every (start, end) pair that passes is a way the
//!   pattern matches the same text, so when exactly one passes it is the
//!   span any regex engine reports: nothing is approximated. When several
//!   pass (contrived patterns or lines), the caller asks the `regex` crate.
//!   The same split places any part of a sequence (`split_at`): `split.rs`
//!   places the parts of a fail2ban failregex that hold its groups.
//!   Where `S` can read far (`(?:: .*)?$` after sshd's "Accepted ... port
//!   N") and `P` cannot, the host's start is found forwards instead: the
//!   ends of `P` from the start of the message (one, usually, before its
//!   DFA dies), and the host is the run of its bytes from there.
//!
//! Every search can fail (a cache that gives up, a quit byte for a Unicode
//! word boundary); the caller then asks the `regex` crate too.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::start;
use regex_automata::{Anchored, Input, MatchKind};
use regex_syntax::hir::{Dot, Hir, HirKind, Look, Repetition};

/// Parses a pattern the way `regex::bytes::RegexBuilder::new(p).unicode(false)`
/// does (ASCII classes, matching arbitrary bytes).
pub(crate) fn parse(pattern: &str) -> Option<Hir> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
}

/// `hir` made to find, when searched anchored at the start, what an
/// unanchored search finds: a leading lazy `(?s-u:.)*?` unless every match
/// already starts at the start of the text.
pub(crate) fn anchored_form(hir: Hir) -> Hir {
    if hir.properties().look_set_prefix().contains(Look::Start) {
        return hir;
    }
    let any = Hir::repetition(Repetition {
        min: 0,
        max: None,
        greedy: false,
        sub: Box::new(Hir::dot(Dot::AnyByte)),
    });
    Hir::concat(vec![any, hir])
}

/// The rule's patterns in one leftmost-first DFA.
pub(crate) struct RuleDfa {
    dfa: usize,
    /// Bytes a match can begin with (the DFA is not dead after them).
    first: [u64; 4],
    /// Where the search stood after the first [`MEMO_LONG`] or
    /// [`MEMO_SHORT`] bytes of recent messages (log lines of one kind start
    /// alike), in two direct-mapped tables of [`MEMO_SLOTS`]; empty for a
    /// DFA that keeps none (see [`Dfas::starting_here`]).
    memo: Box<[Memo]>,
    /// For a DFA without a memo, where its last search stood after each of
    /// its first bytes.
    trace: Option<Box<Trace>>,
}

impl std::fmt::Debug for RuleDfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Its memo is scratch space.
        f.debug_struct("RuleDfa")
            .field("dfa", &self.dfa)
            .finish_non_exhaustive()
    }
}

const MEMO_LONG: usize = 32;
const MEMO_SHORT: usize = 16;
const MEMO_SLOTS: usize = 128;

/// The search state after a message's first `len` bytes.
#[derive(Clone, Copy)]
struct Memo {
    key: [u8; MEMO_LONG],
    len: u8,
    /// The lazy DFA's cache generation the state belongs to, plus one (0:
    /// empty); a cleared cache invalidates its states.
    generation: usize,
    /// Where the search stood: its state, the last match so far (pattern,
    /// end), and whether it already ended (dead state).
    sid: LazyStateID,
    found: Option<(u32, u32)>,
    done: bool,
}

fn memo_slot(key: &[u8]) -> usize {
    let mut h = key.len() as u64;
    for chunk in key.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    (h >> 32) as usize % MEMO_SLOTS
}

/// Most bytes at the start of a search that a [`Trace`] follows.
const TRACE_LEN: usize = 48;

/// Where the last search of a DFA without a memo stood after each of its
/// first bytes. Such a DFA reads the first piece of a line (a date, a
/// prefregex's prefix), and lines that follow one another mostly begin
/// alike: a date a second later, the same host and daemon. The next search
/// resumes where its bytes part from the last one's, so it steps over the
/// bytes that differ, not over the whole piece.
struct Trace {
    /// The last search's first `len` bytes.
    bytes: [u8; TRACE_LEN],
    /// The search after `i` of them, for `i` from 0 to `len`.
    after: [Stood; TRACE_LEN + 1],
    len: usize,
    /// Whether the DFA was dead after the `len` bytes.
    done: bool,
    /// The lazy DFA's cache generation the states belong to, plus one (0:
    /// none): a cleared cache invalidates its states.
    generation: usize,
}

/// A search's state and the last match it had seen.
#[derive(Clone, Copy, Default)]
struct Stood {
    sid: LazyStateID,
    found: Option<(u32, u32)>,
}

impl Trace {
    fn new() -> Box<Trace> {
        Box::new(Trace {
            bytes: [0; TRACE_LEN],
            after: [Stood::default(); TRACE_LEN + 1],
            len: 0,
            done: false,
            generation: 0,
        })
    }

    /// The search of `hay` as it stood after the bytes it shares with the
    /// last one, and how many those are; `None` if the states are from
    /// another cache generation.
    fn resume(&self, hay: &[u8], generation: usize) -> Option<(Forward, usize)> {
        if self.generation != generation {
            return None;
        }
        let at = common_prefix(&self.bytes[..self.len], hay);
        let stood = self.after[at];
        let fwd = Forward {
            sid: stood.sid,
            found: stood.found,
            done: self.done && at == self.len,
        };
        Some((fwd, at))
    }
}

/// How many bytes `a` and `b` start with alike, eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// A forward search in progress (leftmost-first: the last match seen
/// before the DFA dies or the text ends is the match).
struct Forward {
    sid: LazyStateID,
    found: Option<(u32, u32)>,
    done: bool,
}

impl Forward {
    /// A search anchored at the start of the text.
    fn start(dfa: &DFA, cache: &mut Cache) -> Result<Forward, ()> {
        let config = start::Config::new().anchored(Anchored::Yes);
        Ok(Forward {
            sid: dfa.start_state(cache, &config).map_err(drop)?,
            found: None,
            done: false,
        })
    }

    /// Steps over `hay[from..to]`.
    fn run(
        &mut self,
        dfa: &DFA,
        cache: &mut Cache,
        hay: &[u8],
        from: usize,
        to: usize,
    ) -> Result<(), ()> {
        self.run_noting(dfa, cache, hay, from, to, |_, _| {})
            .map(drop)
    }

    /// Steps over `hay[from..]` as far as a [`Trace`] follows, writing
    /// down the bytes and where the search stood after each; returns where
    /// it stopped.
    fn run_traced(
        &mut self,
        dfa: &DFA,
        cache: &mut Cache,
        hay: &[u8],
        from: usize,
        trace: &mut Trace,
    ) -> Result<usize, ()> {
        let to = hay.len().min(TRACE_LEN);
        let at = self.run_noting(dfa, cache, hay, from, to, |at, stood| {
            trace.after[at] = stood;
        })?;
        // A whole trace's worth where the text has it (a copy of fixed
        // length, without a call): bytes past `at` are not read back.
        match hay.get(..TRACE_LEN) {
            Some(all) => trace.bytes.copy_from_slice(all),
            None => trace.bytes[from..at].copy_from_slice(&hay[from..at]),
        }
        trace.len = at;
        trace.done = self.done;
        Ok(at)
    }

    /// Steps over `hay[from..to]`, telling `note` where the search stood
    /// after each byte (after `at` bytes); returns where it stopped (`to`,
    /// or the byte after which the DFA died).
    #[inline(always)]
    fn run_noting(
        &mut self,
        dfa: &DFA,
        cache: &mut Cache,
        hay: &[u8],
        from: usize,
        to: usize,
        mut note: impl FnMut(usize, Stood),
    ) -> Result<usize, ()> {
        let hay = &hay[..to];
        let mut at = from;
        let mut sid = self.sid;
        let mut found = self.found;
        while at < hay.len() && !self.done {
            // Ordinary states, one after the other.
            if !sid.is_tagged() {
                while at < hay.len() {
                    let next = dfa.next_state_untagged(cache, sid, hay[at]);
                    if next.is_tagged() {
                        break;
                    }
                    sid = next;
                    at += 1;
                    note(at, Stood { sid, found });
                }
                if at == hay.len() {
                    break;
                }
            }
            // A match, dead, quit or not yet computed state next.
            sid = dfa.next_state(cache, sid, hay[at]).map_err(drop)?;
            if sid.is_match() {
                // Matches are reported one byte late.
                let pattern = dfa.match_pattern(cache, sid, 0).as_u32();
                found = Some((pattern, at as u32));
            } else if sid.is_dead() {
                self.done = true;
            } else if sid.is_quit() {
                return Err(());
            }
            at += 1;
            note(at, Stood { sid, found });
        }
        self.sid = sid;
        self.found = found;
        Ok(at)
    }

    /// Ends the search at the end of `hay`.
    #[inline]
    fn finish(
        mut self,
        dfa: &DFA,
        cache: &mut Cache,
        hay: &[u8],
    ) -> Result<Option<(usize, usize)>, ()> {
        if !self.done {
            self.sid = dfa.next_eoi_state(cache, self.sid).map_err(drop)?;
            if self.sid.is_match() {
                let pattern = dfa.match_pattern(cache, self.sid, 0).as_u32();
                self.found = Some((pattern, hay.len() as u32));
            }
        }
        Ok(self.found.map(|(p, e)| (p as usize, e as usize)))
    }
}

/// The three reverse DFAs of a pattern `P (?P<host>H) S`.
pub(crate) struct HostSplit {
    p: usize,
    h: usize,
    s: usize,
    /// Bytes `P` can end with (whatever follows): a candidate host after
    /// any other byte is rejected without running the DFA.
    p_last: [u64; 4],
    /// Bytes `H` can match, if none of them is in `p_last`: then the host
    /// ending at a given place starts where the run of such bytes before
    /// it starts (a later start would follow a byte `P` cannot end with).
    h_bytes: Option<[u64; 4]>,
    /// A forward DFA of `P`, and the bytes `H` can match, when none of them
    /// can begin `S` and `P` cannot read far while `S` can: then, given the
    /// only place `P` can end, the host ends where the run of its bytes
    /// from there ends.
    forward: Option<(usize, [u64; 4])>,
}

/// Whether `hir` can read far on an ordinary line: an unbounded repetition
/// of something that can match a space (`.*`, `[^:]+`), or that is not
/// simple to tell.
fn reads_far(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Repetition(r) => {
            (r.max.is_none() && byte_set(&r.sub).is_none_or(|set| has(&set, b' ')))
                || reads_far(&r.sub)
        }
        HirKind::Capture(c) => reads_far(&c.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().any(reads_far),
        _ => false,
    }
}

/// The bytes `dfa` (anchored) can begin a match with, whatever precedes.
fn first_bytes(dfa: &DFA) -> [u64; 4] {
    let mut cache = dfa.create_cache();
    let mut set = [0u64; 4];
    // The 257 look-behinds lead to a handful of start states (word byte,
    // other byte, line end, none): each is stepped once.
    let mut done: Vec<LazyStateID> = Vec::new();
    let mut clears = cache.clear_count();
    for before in (0..=255u8).map(Some).chain([None]) {
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(before);
        let Ok(start) = dfa.start_state(&mut cache, &config) else {
            return [u64::MAX; 4];
        };
        if cache.clear_count() != clears {
            // State ids from before a clear name other states now.
            clears = cache.clear_count();
            done.clear();
        }
        if done.contains(&start) {
            continue;
        }
        done.push(start);
        for b in 0..=255u8 {
            if !dfa
                .next_state(&mut cache, start, b)
                .is_ok_and(|n| n.is_dead())
            {
                set[usize::from(b >> 6)] |= 1u64 << (b & 63);
            }
        }
    }
    set
}

/// The bytes `hir` can match (`None` if that is not simple to tell).
pub(crate) fn byte_set(hir: &Hir) -> Option<[u64; 4]> {
    fn add(set: &mut [u64; 4], lo: u8, hi: u8) {
        for b in lo..=hi {
            set[usize::from(b >> 6)] |= 1u64 << (b & 63);
        }
    }
    fn walk(hir: &Hir, set: &mut [u64; 4]) -> Option<()> {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => {}
            HirKind::Literal(lit) => lit.0.iter().for_each(|&b| add(set, b, b)),
            HirKind::Class(regex_syntax::hir::Class::Bytes(c)) => {
                c.ranges().iter().for_each(|r| add(set, r.start(), r.end()));
            }
            HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => {
                for r in c.ranges() {
                    let (lo, hi) = (u32::from(r.start()), u32::from(r.end()));
                    if hi >= 0x80 {
                        return None;
                    }
                    add(set, lo as u8, hi as u8);
                }
            }
            HirKind::Repetition(r) => walk(&r.sub, set)?,
            HirKind::Capture(c) => walk(&c.sub, set)?,
            HirKind::Concat(subs) | HirKind::Alternation(subs) => {
                for sub in subs {
                    walk(sub, set)?;
                }
            }
        }
        Some(())
    }
    let mut set = [0; 4];
    walk(hir, &mut set)?;
    Some(set)
}

impl RuleDfa {
    /// The bytes a match can begin with, as four 64-bit masks.
    pub(crate) fn first(&self) -> [u64; 4] {
        self.first
    }
}

/// Whether `b` is in the 256-bit `set`.
pub(crate) fn has(set: &[u64; 4], b: u8) -> bool {
    set[usize::from(b >> 6)] & (1u64 << (b & 63)) != 0
}

/// Compiled DFAs with their caches, and scratch space for the searches.
#[derive(Default)]
pub(crate) struct Dfas {
    dfas: Vec<DFA>,
    caches: Vec<Cache>,
    /// Reverse DFAs, and forward ones reporting every match, already
    /// built, by the expression they match (the host expression is shared
    /// by every pattern; what comes before a part, by its split's two ways
    /// of placing it).
    reverse: Vec<(Hir, usize)>,
    forward: Vec<(Hir, usize)>,
    ends: Vec<usize>,
    starts: Vec<usize>,
    pairs: Vec<(usize, usize)>,
    /// A smaller lazy DFA cache than the default (tests: frequent clears).
    cache_capacity: Option<usize>,
}

/// Most candidate host ends and starts looked at before asking the `regex`
/// crate (an IPv6 address has one start per character).
const MAX_ENDS: usize = 8;
const MAX_PAIRS: usize = 96;

/// The NFA every DFA here is built from: over bytes (classes read as
/// ASCII), without groups; reversed, and shrunk, for reverse searches.
pub(crate) fn nfa_config(reverse: bool) -> thompson::Config {
    thompson::Config::new()
        .utf8(false)
        .reverse(reverse)
        .shrink(reverse)
        .which_captures(thompson::WhichCaptures::None)
}

fn dfa_config(kind: MatchKind, capacity: Option<usize>) -> regex_automata::hybrid::dfa::Config {
    let config = match capacity {
        Some(bytes) => DFA::config()
            .cache_capacity(bytes)
            .skip_cache_capacity_check(true),
        None => DFA::config(),
    };
    config
        .match_kind(kind)
        // `(?u:\b)` makes the DFA quit on non-ASCII bytes (the search then
        // fails and the caller asks the `regex` crate) instead of failing
        // to build.
        .unicode_word_boundary(true)
}

impl Dfas {
    fn add(&mut self, dfa: DFA) -> usize {
        self.caches.push(dfa.create_cache());
        self.dfas.push(dfa);
        self.dfas.len() - 1
    }

    /// A leftmost-first DFA over `hirs` (already in [`anchored_form`]), or
    /// `None` if it cannot be built.
    pub(crate) fn rule(&mut self, hirs: &[Hir]) -> Option<RuleDfa> {
        self.rule_memo(hirs, true)
    }

    /// [`rule`](Self::rule), with a memo of recent searches' first bytes
    /// if `memo` (see [`RuleDfa::memo`]).
    fn rule_memo(&mut self, hirs: &[Hir], memo: bool) -> Option<RuleDfa> {
        let nfa = thompson::Compiler::new()
            .configure(nfa_config(false))
            .build_many_from_hir(hirs)
            .ok()?;
        let dfa = DFA::builder()
            .configure(dfa_config(MatchKind::LeftmostFirst, self.cache_capacity))
            .build_from_nfa(nfa)
            .ok()?;
        let mut first = [u64::MAX; 4];
        let mut cache = dfa.create_cache();
        let config = start::Config::new().anchored(Anchored::Yes);
        if let Ok(s) = dfa.start_state(&mut cache, &config) {
            for b in 0..=255u8 {
                if dfa.next_state(&mut cache, s, b).is_ok_and(|n| n.is_dead()) {
                    first[usize::from(b >> 6)] &= !(1u64 << (b & 63));
                }
            }
        }
        let dfa = self.add(dfa);
        let slots = if memo { 2 * MEMO_SLOTS } else { 0 };
        Some(RuleDfa {
            dfa,
            first,
            trace: (!memo).then(Trace::new),
            memo: vec![
                Memo {
                    key: [0; MEMO_LONG],
                    len: 0,
                    generation: 0,
                    sid: LazyStateID::default(),
                    found: None,
                    done: false,
                };
                slots
            ]
            .into_boxed_slice(),
        })
    }

    /// A DFA of `pattern` alone, for the match that starts where the text
    /// handed to [`search`](Self::search) starts (a piece of a longer
    /// text): `None` if the pattern has a look-around (the bytes before
    /// that place are not in view) or the DFA cannot be built.
    ///
    /// It keeps no memo: such a piece (a date, a prefregex's prefix)
    /// begins where the line's bytes vary most and ends within a few of
    /// them, so remembering where a search stood after the first 16 costs
    /// more than it saves. It keeps a [`Trace`] of its last search instead.
    pub(crate) fn starting_here(&mut self, pattern: &str) -> Option<RuleDfa> {
        let hir = parse(pattern)?;
        if !hir.properties().look_set().is_empty() {
            return None;
        }
        self.rule_memo(&[hir], false)
    }

    /// A DFA of `hir`, read backwards if `reverse`.
    fn build(&self, hir: &Hir, reverse: bool, kind: MatchKind) -> Option<DFA> {
        let nfa = thompson::Compiler::new()
            .configure(nfa_config(reverse))
            .build_from_hir(hir)
            .ok()?;
        DFA::builder()
            .configure(dfa_config(kind, self.cache_capacity))
            .build_from_nfa(nfa)
            .ok()
    }

    /// A forward DFA reporting every match of `hir`, or `None` if it
    /// cannot be built.
    pub(crate) fn forward_all(&mut self, hir: &Hir) -> Option<usize> {
        if let Some((_, id)) = self.forward.iter().find(|(h, _)| h == hir) {
            return Some(*id);
        }
        let dfa = self.build(hir, false, MatchKind::All)?;
        let id = self.add(dfa);
        self.forward.push((hir.clone(), id));
        Some(id)
    }

    /// Where the only match of the forward DFA `dfa` (from
    /// [`forward_all`](Self::forward_all)) that starts at 0 and ends at `hi`
    /// or before ends; `None` if there is none or more than one, or the
    /// search failed.
    pub(crate) fn only_end(&mut self, dfa: usize, hay: &[u8], hi: usize) -> Option<usize> {
        let mut ends = std::mem::take(&mut self.ends);
        ends.clear();
        let found = fwd_ends(
            &self.dfas[dfa],
            &mut self.caches[dfa],
            hay,
            hi,
            &mut ends,
            1,
        );
        let only = match (found, ends.as_slice()) {
            (Ok(()), &[end]) => Some(end),
            _ => None,
        };
        self.ends = ends;
        only
    }

    /// Whether what follows the part of `split` matches exactly
    /// `hay[lo..hi]`; `None` if the search failed.
    pub(crate) fn after_matches(
        &mut self,
        split: &HostSplit,
        hay: &[u8],
        lo: usize,
        hi: usize,
    ) -> Option<bool> {
        rev_span(&self.dfas[split.s], &mut self.caches[split.s], hay, lo, hi).ok()
    }

    fn reverse(&mut self, hir: Hir) -> Option<usize> {
        if let Some((_, id)) = self.reverse.iter().find(|(h, _)| *h == hir) {
            return Some(*id);
        }
        let dfa = self.build(&hir, true, MatchKind::All)?;
        let id = self.add(dfa);
        self.reverse.push((hir, id));
        Some(id)
    }

    /// Splits `hir` (in [`anchored_form`]) around its top-level `host`
    /// group, if it has one.
    pub(crate) fn split(&mut self, hir: &Hir) -> Option<HostSplit> {
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        let k = parts.iter().position(
            |p| matches!(p.kind(), HirKind::Capture(c) if c.name.as_deref() == Some("host")),
        )?;
        let HirKind::Capture(host) = parts[k].kind() else {
            return None;
        };
        self.split_at(&parts[..k], &host.sub, &parts[k + 1..])
    }

    /// Splits a sequence `before inner after` so that the span of `inner`
    /// can be found in a match of it that starts at 0.
    pub(crate) fn split_at(
        &mut self,
        before: &[Hir],
        inner: &Hir,
        after: &[Hir],
    ) -> Option<HostSplit> {
        let p = self.reverse(Hir::concat(before.to_vec()))?;
        let h = self.reverse(inner.clone())?;
        let s = self.reverse(Hir::concat(after.to_vec()))?;
        // Every start state (one per byte after the end of P, or none),
        // every first byte read backwards.
        let p_last = first_bytes(&self.dfas[p]);
        let h_set = byte_set(inner);
        let h_bytes = h_set.filter(|h| (0..4).all(|k| h[k] & p_last[k] == 0));
        let (before, after) = (Hir::concat(before.to_vec()), Hir::concat(after.to_vec()));
        // Without it (a DFA that cannot be built), the reverse way serves.
        let forward = match h_set {
            Some(h) if reads_far(&after) && !reads_far(&before) => self
                .build(&after, false, MatchKind::All)
                .map(|s| first_bytes(&s))
                .filter(|s_first| (0..4).all(|k| h[k] & s_first[k] == 0))
                .and_then(|_| self.forward_all(&before))
                .map(|p_forward| (p_forward, h)),
            _ => None,
        };
        Some(HostSplit {
            p,
            h,
            s,
            p_last,
            h_bytes,
            forward,
        })
    }

    /// The first of the rule's patterns (by position in the rule) that
    /// matches `hay`, and the end of its match. `Err` if the search failed.
    pub(crate) fn search(
        &mut self,
        rule: &mut RuleDfa,
        hay: &[u8],
    ) -> Result<Option<(usize, usize)>, ()> {
        if let Some(&b) = hay.first()
            && !has(&rule.first, b)
        {
            return Ok(None);
        }
        let (dfa, cache) = (&self.dfas[rule.dfa], &mut self.caches[rule.dfa]);
        if let Some(trace) = rule.trace.as_deref_mut() {
            let generation = cache.clear_count() + 1;
            let (mut fwd, at) = match trace.resume(hay, generation) {
                Some(resumed) => resumed,
                None => {
                    let fwd = Forward::start(dfa, cache)?;
                    trace.after[0] = Stood {
                        sid: fwd.sid,
                        found: None,
                    };
                    (fwd, 0)
                }
            };
            // Until this search is written down whole, in one generation.
            trace.generation = 0;
            let at = fwd.run_traced(dfa, cache, hay, at, trace)?;
            if cache.clear_count() + 1 == generation {
                trace.generation = generation;
            }
            if at < hay.len() && !fwd.done {
                fwd.run(dfa, cache, hay, at, hay.len())?;
            }
            return fwd.finish(dfa, cache, hay);
        }
        if hay.len() < MEMO_SHORT {
            let input = Input::new(hay).anchored(Anchored::Yes);
            return match dfa.try_search_fwd(cache, &input) {
                Ok(m) => Ok(m.map(|m| (m.pattern().as_usize(), m.offset()))),
                Err(_) => Err(()),
            };
        }
        // Resume from where the search stood after this message's first 32
        // or 16 bytes, if a recent message started the same way.
        let long = hay.len() >= MEMO_LONG;
        let (ls, ss) = (
            memo_slot(&hay[..MEMO_LONG.min(hay.len())]),
            MEMO_SLOTS + memo_slot(&hay[..MEMO_SHORT]),
        );
        let current = cache.clear_count() + 1;
        let hit = |m: &Memo, len: usize| {
            m.generation == current && usize::from(m.len) == len && same_start(&m.key, hay, len)
        };
        let (mut fwd, at) = if long && hit(&rule.memo[ls], MEMO_LONG) {
            let m = &rule.memo[ls];
            (
                Forward {
                    sid: m.sid,
                    found: m.found,
                    done: m.done,
                },
                MEMO_LONG,
            )
        } else if hit(&rule.memo[ss], MEMO_SHORT) {
            let m = &rule.memo[ss];
            (
                Forward {
                    sid: m.sid,
                    found: m.found,
                    done: m.done,
                },
                MEMO_SHORT,
            )
        } else {
            let mut fwd = Forward::start(dfa, cache)?;
            fwd.run(dfa, cache, hay, 0, MEMO_SHORT)?;
            if cache.clear_count() + 1 == current {
                rule.memo[ss] = memo(hay, MEMO_SHORT, current, &fwd);
            }
            (fwd, MEMO_SHORT)
        };
        let at = if long && at == MEMO_SHORT {
            fwd.run(dfa, cache, hay, MEMO_SHORT, MEMO_LONG)?;
            if cache.clear_count() + 1 == current {
                rule.memo[ls] = memo(hay, MEMO_LONG, current, &fwd);
            }
            MEMO_LONG
        } else {
            at
        };
        fwd.run(dfa, cache, hay, at, hay.len())?;
        fwd.finish(dfa, cache, hay)
    }

    /// The span of the `host` group in the match of a split pattern that
    /// ends at `end` (the match starts at 0). `None`: ask the `regex` crate.
    pub(crate) fn host(
        &mut self,
        split: &HostSplit,
        hay: &[u8],
        end: usize,
    ) -> Option<(usize, usize)> {
        let mut ends = std::mem::take(&mut self.ends);
        let mut starts = std::mem::take(&mut self.starts);
        let mut pairs = std::mem::take(&mut self.pairs);
        let found = self.host_with(split, hay, end, &mut ends, &mut starts, &mut pairs);
        self.ends = ends;
        self.starts = starts;
        self.pairs = pairs;
        found.ok().flatten()
    }

    fn host_with(
        &mut self,
        split: &HostSplit,
        hay: &[u8],
        end: usize,
        ends: &mut Vec<usize>,
        starts: &mut Vec<usize>,
        pairs: &mut Vec<(usize, usize)>,
    ) -> Result<Option<(usize, usize)>, ()> {
        ends.clear();
        pairs.clear();
        if let Some((p, h_bytes)) = split.forward {
            // More than one end (an error past the first): the general way.
            let found = fwd_ends(&self.dfas[p], &mut self.caches[p], hay, end, ends, 1);
            if let (Ok(()), &[i]) = (found, ends.as_slice()) {
                // The only place the host can start: it ends where the run
                // of its bytes does (the next byte, if any, begins `S`).
                let j = i + hay[i..end]
                    .iter()
                    .take_while(|&&b| has(&h_bytes, b))
                    .count();
                return Ok((i < j).then_some((i, j)));
            }
            ends.clear();
        }
        let (s, h) = (split.s, split.h);
        rev_starts(&self.dfas[s], &mut self.caches[s], hay, end, ends, MAX_ENDS)?;
        if let (Some(h_bytes), &[j]) = (&split.h_bytes, ends.as_slice()) {
            // The only end: the host is the run of its bytes before it.
            let mut i = j;
            while i > 0 && has(h_bytes, hay[i - 1]) {
                i -= 1;
            }
            return Ok((i < j).then_some((i, j)));
        }
        for &j in ends.iter() {
            starts.clear();
            rev_starts(
                &self.dfas[h],
                &mut self.caches[h],
                hay,
                j,
                starts,
                MAX_PAIRS,
            )?;
            pairs.extend(starts.iter().map(|&i| (i, j)));
            if pairs.len() > MAX_PAIRS {
                return Err(());
            }
        }
        if pairs.len() <= 1 {
            // One candidate: the group must be it (the pattern matched).
            return Ok(pairs.first().copied());
        }
        // Several: `P` must match the text before the group, so the byte
        // before it must be one `P` can end with (or there is none). Of
        // those that pass, one that is not checked (the longest host,
        // usually the one) is the group if all the others fail; when one
        // alone passes, it is the group.
        pairs.retain(|&(i, _)| i == 0 || has(&split.p_last, hay[i - 1]));
        let Some(skip) = (0..pairs.len()).min_by_key(|&n| pairs[n].0) else {
            return Ok(None);
        };
        let p = split.p;
        let mut passed = None;
        for (n, &(i, j)) in pairs.iter().enumerate() {
            if n != skip && rev_whole(&self.dfas[p], &mut self.caches[p], hay, i)? {
                if passed.is_some() {
                    return Ok(None);
                }
                passed = Some((i, j));
            }
        }
        match passed {
            None => Ok(Some(pairs[skip])),
            Some(pair) => {
                if rev_whole(&self.dfas[p], &mut self.caches[p], hay, pairs[skip].0)? {
                    Ok(None)
                } else {
                    Ok(Some(pair))
                }
            }
        }
    }
}

/// `key[..len] == hay[..len]`, eight bytes at a time (`len` a multiple of
/// eight, at most the lengths of both).
fn same_start(key: &[u8; MEMO_LONG], hay: &[u8], len: usize) -> bool {
    key[..len]
        .chunks_exact(8)
        .zip(hay[..len].chunks_exact(8))
        .fold(0, |acc, (a, b)| {
            let a = u64::from_le_bytes(a.try_into().unwrap_or([0; 8]));
            let b = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            acc | (a ^ b)
        })
        == 0
}

fn memo(hay: &[u8], len: usize, generation: usize, fwd: &Forward) -> Memo {
    let mut key = [0; MEMO_LONG];
    key[..len].copy_from_slice(&hay[..len]);
    Memo {
        key,
        len: len as u8,
        generation,
        sid: fwd.sid,
        found: fwd.found,
        done: fwd.done,
    }
}

fn rev_start(dfa: &DFA, cache: &mut Cache, hay: &[u8], hi: usize) -> Result<LazyStateID, ()> {
    let config = start::Config::new()
        .anchored(Anchored::Yes)
        .look_behind(hay.get(hi).copied());
    dfa.start_state(cache, &config).map_err(drop)
}

/// Steps the reverse DFA from `sid` backwards over `hay[..*at]` through
/// ordinary states; stops at the byte leading to a match, dead, quit or not
/// yet computed state (`*at` at that byte, the state not taken), or at the
/// start of the text.
#[inline(always)]
fn rev_ordinary(
    dfa: &DFA,
    cache: &Cache,
    hay: &[u8],
    at: &mut usize,
    mut sid: LazyStateID,
) -> LazyStateID {
    if sid.is_tagged() {
        return sid;
    }
    while *at > 0 {
        let next = dfa.next_state_untagged(cache, sid, hay[*at - 1]);
        if next.is_tagged() {
            break;
        }
        sid = next;
        *at -= 1;
    }
    sid
}

/// Pushes onto `out` the end of every match of the forward DFA `dfa` that
/// starts at 0 and ends at `hi` or before (first end first). `Err` past
/// `max` matches or if the search fails.
fn fwd_ends(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    hi: usize,
    out: &mut Vec<usize>,
    max: usize,
) -> Result<(), ()> {
    let hi = hi.min(hay.len());
    let config = start::Config::new().anchored(Anchored::Yes);
    let mut sid = dfa.start_state(cache, &config).map_err(drop)?;
    let mut at = 0;
    while at <= hi {
        // Through ordinary states without the checks.
        if !sid.is_tagged() {
            while at < hi {
                let next = dfa.next_state_untagged(cache, sid, hay[at]);
                if next.is_tagged() {
                    break;
                }
                sid = next;
                at += 1;
            }
        }
        sid = match hay.get(at) {
            Some(&b) => dfa.next_state(cache, sid, b),
            None => dfa.next_eoi_state(cache, sid),
        }
        .map_err(drop)?;
        if sid.is_match() {
            // Matches are reported one byte late.
            out.push(at);
            if out.len() > max {
                return Err(());
            }
        } else if sid.is_dead() {
            return Ok(());
        } else if sid.is_quit() {
            return Err(());
        }
        at += 1;
    }
    Ok(())
}

/// Pushes onto `out` the start of every match of the reverse DFA `dfa`
/// that ends at `hi` (latest start first). `Err` past `max` matches or if
/// the search fails.
fn rev_starts(
    dfa: &DFA,
    cache: &mut Cache,
    hay: &[u8],
    hi: usize,
    out: &mut Vec<usize>,
    max: usize,
) -> Result<(), ()> {
    let mut at = hi.min(hay.len());
    let mut sid = rev_start(dfa, cache, hay, at)?;
    loop {
        sid = rev_ordinary(dfa, cache, hay, &mut at, sid);
        if at == 0 {
            break;
        }
        at -= 1;
        sid = dfa.next_state(cache, sid, hay[at]).map_err(drop)?;
        if sid.is_match() {
            // Matches are reported one byte late.
            out.push(at + 1);
            if out.len() > max {
                return Err(());
            }
        } else if sid.is_dead() {
            return Ok(());
        } else if sid.is_quit() {
            return Err(());
        }
    }
    sid = dfa.next_eoi_state(cache, sid).map_err(drop)?;
    if sid.is_match() {
        out.push(0);
    }
    Ok(())
}

/// Whether the reverse DFA `dfa` matches exactly `hay[..hi]`.
fn rev_whole(dfa: &DFA, cache: &mut Cache, hay: &[u8], hi: usize) -> Result<bool, ()> {
    rev_span(dfa, cache, hay, 0, hi)
}

/// Whether the reverse DFA `dfa` matches exactly `hay[lo..hi]` (the bytes
/// around it seen by its assertions).
fn rev_span(dfa: &DFA, cache: &mut Cache, hay: &[u8], lo: usize, hi: usize) -> Result<bool, ()> {
    let hi = hi.min(hay.len());
    let lo = lo.min(hi);
    // Read from `hi` down to `lo`: the slice starts at `lo`, so that the
    // steps stop there; the byte after `hi` is still in it.
    let from = &hay[lo..];
    let mut at = hi - lo;
    let mut sid = rev_start(dfa, cache, from, at)?;
    loop {
        sid = rev_ordinary(dfa, cache, from, &mut at, sid);
        if at == 0 {
            break;
        }
        at -= 1;
        sid = dfa.next_state(cache, sid, from[at]).map_err(drop)?;
        if sid.is_dead() {
            return Ok(false);
        } else if sid.is_quit() {
            return Err(());
        }
    }
    // The byte before `lo` (matches are reported one byte late).
    sid = match lo.checked_sub(1) {
        Some(before) => dfa.next_state(cache, sid, hay[before]),
        None => dfa.next_eoi_state(cache, sid),
    }
    .map_err(drop)?;
    Ok(sid.is_match())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host span the DFAs find, against the `regex` crate's captures,
    /// for the anchored pattern `p` on `line`.
    fn agree(p: &str, line: &str) -> Option<(usize, usize)> {
        let mut d = Dfas::default();
        let hir = anchored_form(parse(p).unwrap());
        let mut rule = d.rule(std::slice::from_ref(&hir)).unwrap();
        let split = d.split(&hir).unwrap();
        let re = regex::bytes::RegexBuilder::new(p)
            .unicode(false)
            .build()
            .unwrap();
        let want = re
            .captures(line.as_bytes())
            .and_then(|c| c.name("host").map(|m| (m.start(), m.end())));
        let got = d
            .search(&mut rule, line.as_bytes())
            .unwrap()
            .and_then(|(_, end)| d.host(&split, line.as_bytes(), end));
        if let Some(got) = got {
            assert_eq!(Some(got), want, "{p:?} on {line:?}");
        }
        got
    }

    fn all_found(p: &str, lines: &[&str]) {
        for line in lines {
            assert!(agree(p, line).is_some(), "{line}");
        }
    }

    #[test]
    fn host_spans_agree_with_captures() {
        let host = crate::host::HOST_RE;
        let p = format!(
            r"^Failed password for (?:invalid user )?.*? from {host} port \d+(?: ssh\d*)?$"
        );
        all_found(
            &p,
            &[
                "Failed password for root from 198.51.100.7 port 22 ssh2",
                "Failed password for invalid user x from 2001:db8::1 port 22 ssh2",
                "Failed password for invalid user x from [2001:db8::1] port 22 ssh2",
                "Failed password for x from 6.6.6.6 port 22 ssh2 from 198.51.100.7 port 22 ssh2",
                "Failed password for invalid user from 1.2.3.4 from 5.6.7.8 port 1",
            ],
        );
        assert!(agree(&p, "Failed password for root from x port 22 ssh2").is_none());
        // Greedy, lazy and unanchored ends. Two ways to match: ask regex.
        let p = format!(r"^a .* b {host}(?: .*)?$");
        assert_eq!(agree(&p, "a x b 1.2.3.4 b 5.6.7.8 y"), None);
        assert!(agree(&p, "a x b 1.2.3.4 y").is_some());
        let p = format!(r"^a .*? b {host}");
        assert!(agree(&p, "a x b 1.2.3.4 b 5.6.7.8 y").is_some());
        let p = format!(r"^(?:\w+ )?{host}\b");
        assert!(agree(&p, "abc 1.2.3.4 x").is_some());
        assert!(agree(&p, "1.2.3.4").is_some());
        // A host that can end in several places.
        let p = format!(r"^x {host}:?\d*$");
        assert_eq!(agree(&p, "x 2001:db8::1:80"), None, "ambiguous: ask regex");
        // Found forwards: the rest after the host can read far, what is
        // before it cannot.
        let p = format!(
            r"^Accepted (?:password|publickey) for \S+ from {host} port \d+(?: ssh\d*)?(?:: .*)?$"
        );
        let d = &mut Dfas::default();
        let hir = anchored_form(parse(&p).unwrap());
        assert!(d.split(&hir).unwrap().forward.is_some());
        all_found(
            &p,
            &[
                "Accepted publickey for deploy from 198.51.100.7 port 22 ssh2: ED25519 SHA256:x from 1.2.3.4",
                "Accepted password for a from 2001:db8::1 port 22",
                "Accepted password for a from [2001:db8::1] port 22: x",
                "Accepted password for from from 1.2.3.4 port 22",
            ],
        );
        assert!(agree(&p, "Accepted password for a from x port 22").is_none());
        // Where `P` ends in two places, the general way decides.
        let p = format!(r"^a (?:b )?(?:b )?{host} .*$");
        assert!(agree(&p, "a b 1.2.3.4 x").is_some());
        assert!(agree(&p, "a b b 1.2.3.4 x").is_some());
    }

    /// The search resumed from remembered message starts finds what a
    /// search from the start finds, also when the lazy DFA's cache is
    /// cleared all the time.
    #[test]
    fn remembered_starts_agree_with_whole_searches() {
        let host = crate::host::HOST_RE;
        let patterns = [
            format!(
                r"^Failed password for (?:invalid user )?.*? from {host} port \d+(?: ssh\d*)?$"
            ),
            r"^Failed password for root from 1\d+\.51".to_string(),
            r"^Failed password for root".to_string(),
            format!(
                r"^(?:Connection closed|Disconnected) by (?:(?:invalid|authenticating) user .*? )?{host} port \d+ \[preauth\]$"
            ),
            r"^x{0,40}$".to_string(),
        ];
        let hirs: Vec<Hir> = patterns
            .iter()
            .map(|p| anchored_form(parse(p).unwrap()))
            .collect();
        let mut text = Vec::new();
        crate::loggen::write_auth_log(&mut text, 3_000, 11).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once("]: ").map(|(_, m)| m.to_string()))
            .collect();
        lines.extend((0..60).map(|n| "x".repeat(n)));
        lines.push("Failed password for root from 198.51.100.7 port 1 ssh2".into());
        for capacity in [None, Some(1)] {
            let mut d = Dfas {
                cache_capacity: capacity,
                ..Dfas::default()
            };
            let mut rule = d.rule(&hirs).unwrap();
            for round in 0..3 {
                for l in &lines {
                    let want = whole_search(&mut d, &rule, l.as_bytes());
                    assert_eq!(
                        d.search(&mut rule, l.as_bytes()).unwrap(),
                        want,
                        "{round} {l}"
                    );
                }
            }
        }
    }

    /// What `rule`'s DFA finds searching `hay` from its start, without a
    /// memo or a trace.
    fn whole_search(d: &mut Dfas, rule: &RuleDfa, hay: &[u8]) -> Option<(usize, usize)> {
        d.dfas[rule.dfa]
            .try_search_fwd(
                &mut d.caches[rule.dfa],
                &Input::new(hay).anchored(Anchored::Yes),
            )
            .unwrap()
            .map(|m| (m.pattern().as_usize(), m.offset()))
    }

    /// A DFA without a memo (a date, a prefregex's pieces) that resumes
    /// where the last search's bytes part from the text's finds what a
    /// search from the start finds: lines alike for longer and shorter than
    /// the trace follows, that end or die where the last one did, also
    /// when the lazy DFA's cache is cleared all the time.
    #[test]
    fn traced_searches_agree_with_whole_searches() {
        let patterns = [
            r"(?:Mon |Tue )?(?:Jan|Feb) [ 0-3]\d \d\d:\d\d:\d\d(?:\.\d+)?(?: \d{4})?",
            r"\s*(?:\S+ )?(?:(?:\[\d+\])?:\s+[\[\(]?sshd(?:\(\S+\))?[\]\)]?:?\s+)?",
            r"(?:(?:error|fatal): (?:PAM: )?)?",
            r"x{0,60}y?",
        ];
        let mut text = Vec::new();
        crate::loggen::write_auth_log(&mut text, 2_000, 5).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.extend(
            text.lines()
                .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest.to_string())),
        );
        for n in [0, 1, 30, 47, 48, 49, 60, 61, 59, 48, 0, 100] {
            lines.push("x".repeat(n));
            lines.push(format!("{}y", "x".repeat(n)));
        }
        lines.extend(
            [
                "error: PAM: x",
                "error: PAM",
                "error: ",
                "fatal: x",
                "",
                "error: PAM: x",
            ]
            .map(String::from),
        );
        for capacity in [None, Some(1)] {
            let mut d = Dfas {
                cache_capacity: capacity,
                ..Dfas::default()
            };
            for p in patterns {
                let mut rule = d.starting_here(p).unwrap();
                for l in &lines {
                    let want = whole_search(&mut d, &rule, l.as_bytes());
                    assert_eq!(
                        d.search(&mut rule, l.as_bytes()).unwrap(),
                        want,
                        "{p} {l:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rule_search_is_leftmost_first_by_pattern() {
        let mut d = Dfas::default();
        let hirs: Vec<Hir> = ["a", "^ab$", "^a"]
            .iter()
            .map(|p| anchored_form(parse(p).unwrap()))
            .collect();
        let mut rule = d.rule(&hirs).unwrap();
        assert_eq!(d.search(&mut rule, b"xxa").unwrap(), Some((0, 3)));
        assert_eq!(d.search(&mut rule, b"ab").unwrap(), Some((0, 1)));
        let mut rule = d.rule(&hirs[1..]).unwrap();
        assert_eq!(d.search(&mut rule, b"ab").unwrap(), Some((0, 2)));
        assert_eq!(d.search(&mut rule, b"abc").unwrap(), Some((1, 1)));
        assert_eq!(d.search(&mut rule, b"b").unwrap(), None);
        assert_eq!(d.search(&mut rule, b"").unwrap(), None);
    }
}

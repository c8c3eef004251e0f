//! The groups of a match whose place is known, found by walking the
//! pattern's top-level parts from left to right, each taking its first way.
//!
//! A bounded backtracker over a log line with fail2ban's `<HOST>` and a
//! user name in it steps through hundreds of states, and on sshd's
//! "Failed password" line that was most of what an imported `sshd.conf`
//! spent. Most such patterns are a sequence of literals, runs of one class
//! (`.*?`, `\S+`) and small parts, whose first ways are cheap to find one
//! after the other: a literal is compared, a part is searched by an
//! anchored leftmost-first DFA (its end is where its first way ends), and a
//! run tries its ends in its own order (shortest first if lazy) until what
//! follows it matches there.
//!
//! Where bytes alone tell a part's first way, no DFA is run: a literal
//! holding groups (`(invalid user )`) is compared; a choice whose branches
//! are each a literal or a run (`(publickey)|\S+`) takes the first branch
//! that matches at all, as its DFA would; fail2ban's `<HOST>` at an IPv4
//! or IPv6 address is placed by the address's bytes, and its group read
//! from them.
//! A run whose class leaves out at most three bytes (`.`, `[^:]`) ends
//! where `memchr` finds the first of them, and its ends before a literal
//! are tried only where the literal's first byte is. An optional sequence
//! (`(?: (?:invalid|authenticating) user (\S+|.*?))?`) is placed by its
//! DFA and then walked in its place, as a pattern of its own.
//!
//! Why it is the match a backtracking search reports: that search tries
//! the first part's ways in their order and, after each, the rest of the
//! pattern; the first way of the whole is the first combination, in that
//! order, that reaches the end. Each step here takes the part's first way
//! (a run: its first end after which the next part can match at all, since
//! no earlier end can be completed), so when the walk reaches the end the
//! match is known to end at, no combination before it completes: it is the
//! first. When it does not, the walk says nothing and the caller asks the
//! backtracker, as before.
//!
//! Each step reads each byte a bounded number of times: a run followed by a
//! literal compares the literal at each end it tries, and one followed by
//! anything else tries at most [`MAX_TRIES`] ends. A crafted line costs the
//! walk time in proportion to its length, then the backtracker's.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::{Hir, HirKind, Look, Repetition};

use crate::dfa::{byte_set, has, nfa_config};
use crate::firstway::FirstWay;
use crate::host::{f2b_host_first_end, f2b_host_group};
use crate::linear::Spans;
use crate::part::{PartRe, fixed_layout, place_fixed};
use crate::wordcmp::Literal;

/// Most ends a run tries when what follows it is not a literal.
const MAX_TRIES: usize = 32;

/// The most memory each part's lazy DFA takes for its states: a part is
/// small, and a filter has dozens of them, each of which crafted lines
/// could otherwise grow to the default of 2 MiB.
const CACHE_BYTES: usize = 256 << 10;

/// A pattern as its top-level parts, to be walked (see the module docs).
pub(crate) struct Walk {
    steps: Vec<Step>,
    /// Groups of the pattern, group 0 included.
    groups: usize,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Its DFAs and their caches are scratch space.
        f.debug_struct("Walk")
            .field("steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

/// One step of a walk.
enum Step {
    /// Bytes that must come next (parts all literal), and the groups they
    /// hold, such as `(invalid user )`, at fixed distances from their ends
    /// (see [`fixed_layout`]); none for parts without groups.
    Literal {
        bytes: Literal,
        layout: Vec<(usize, usize, usize)>,
    },
    /// The end of the text, after a newline if one is left (Python's `$`
    /// as `pyre::translate` writes it outside multi-line mode).
    End,
    /// Parts without groups: their first way ends where an anchored
    /// leftmost-first DFA of them ends.
    Parts(Searched),
    /// A choice whose branches are each one group with none inside, or
    /// none: which branch its first way takes is the pattern its DFA (of
    /// the branches, in order) names.
    Choice {
        part: Searched,
        /// The groups around the choice, each spanning the branch taken.
        around: Vec<usize>,
        /// The group each branch is, if it is one.
        branches: Vec<Option<usize>>,
        /// The branches as literals and runs, when each is one: then the
        /// first that matches at all is the choice's first way, told by
        /// its bytes without the DFA.
        by_bytes: Option<Vec<Branch>>,
    },
    /// An optional sequence holding groups (`(?: user (\S+))?`), which
    /// cannot match nothing: placed as [`Step::Parts`], then walked in its
    /// place when it took part, else its groups took none.
    Optional { part: Searched, inner: Vec<Step> },
    /// A part holding groups: placed as [`Step::Parts`], its groups found
    /// in its place alone (the whole place if the part is one group with
    /// none inside).
    Groups { part: Searched, inside: Inside },
    /// A run of bytes of one class (`.*?`, `\S+`).
    Run {
        run: ClassRun,
        /// The groups around it (each spans the run).
        groups: Vec<usize>,
    },
}

/// A repetition of one class of bytes.
struct ClassRun {
    class: [u64; 4],
    /// The bytes not in the class, when there are at most three (`.`,
    /// `[^:]`): a run ends at the first of them, which `memchr` finds.
    stops: Option<Vec<u8>>,
    min: usize,
    max: usize,
    greedy: bool,
}

impl ClassRun {
    /// `sub{min,max}` (lazy unless `greedy`), if `sub` is a class or a
    /// byte.
    fn new(r: &Repetition) -> Option<ClassRun> {
        match r.sub.kind() {
            HirKind::Class(_) => {}
            HirKind::Literal(lit) if lit.0.len() == 1 => {}
            _ => return None,
        }
        let class = byte_set(&r.sub)?;
        let stops: Vec<u8> = (0..=255u8).filter(|&b| !has(&class, b)).collect();
        Some(ClassRun {
            class,
            stops: (stops.len() <= 3).then_some(stops),
            min: r.min as usize,
            max: r.max.map_or(usize::MAX, |m| m as usize),
            greedy: r.greedy,
        })
    }

    /// How many bytes from `at` (by `end`) the run can take, if at least
    /// its least.
    fn room(&self, hay: &[u8], at: usize, end: usize) -> Option<usize> {
        let text = &hay[at..end.min(at.saturating_add(self.max))];
        let stop = match self.stops.as_deref() {
            Some([]) => None,
            Some(&[a]) => memchr::memchr(a, text),
            Some(&[a, b]) => memchr::memchr2(a, b, text),
            Some(&[a, b, c]) => memchr::memchr3(a, b, c, text),
            _ => text.iter().position(|&b| !has(&self.class, b)),
        };
        let room = stop.unwrap_or(text.len());
        (room >= self.min).then_some(room)
    }
}

/// A branch of a choice told by its bytes.
enum Branch {
    Literal(Box<[u8]>),
    Run(ClassRun),
}

impl Branch {
    /// `b`, groups around it aside, if it is literal bytes or a run.
    fn new(b: &Hir) -> Option<Branch> {
        let mut inner = b;
        while let HirKind::Capture(c) = inner.kind() {
            inner = &c.sub;
        }
        match inner.kind() {
            HirKind::Repetition(r) => ClassRun::new(r).map(Branch::Run),
            _ => literal_bytes(inner).map(|bytes| Branch::Literal(bytes.into())),
        }
    }

    /// Where the branch's first way from `at` ends, by `end`, searched
    /// alone: a literal's end, a greedy run's longest, a lazy one's least.
    fn first_end(&self, hay: &[u8], at: usize, end: usize) -> Option<usize> {
        match self {
            Branch::Literal(bytes) => hay[..end]
                .get(at..)?
                .starts_with(bytes)
                .then_some(at + bytes.len()),
            Branch::Run(run) => {
                let room = run.room(hay, at, end)?;
                Some(at + if run.greedy { room } else { run.min })
            }
        }
    }
}

/// How a placed part's groups are found.
enum Inside {
    /// Each at fixed distances from the place's ends (see
    /// [`fixed_layout`]): the part is one group with none inside, say.
    Fixed(Vec<(usize, usize, usize)>),
    /// The part alone, anchored at both ends of its place.
    Alone(PartRe),
}

/// One or more patterns, searched anchored and leftmost-first (as their
/// alternation) for where the first way of matching ends.
enum Searched {
    /// Read piece by piece, each piece's way being the only one that can
    /// lead on (see `firstway.rs`): no DFA is built.
    Pieces(FirstWay),
    /// A lazy DFA, with its cache.
    Dfa(Box<LazyDfa>),
}

struct LazyDfa {
    dfa: DFA,
    cache: Cache,
}

impl Searched {
    fn new(hirs: &[Hir]) -> Option<Searched> {
        if let Some(pieces) = FirstWay::new(hirs) {
            return Some(Searched::Pieces(pieces));
        }
        let nfa = thompson::Compiler::new()
            .configure(nfa_config(false))
            .build_many_from_hir(hirs)
            .ok()?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .cache_capacity(CACHE_BYTES),
            )
            .build_from_nfa(nfa)
            .ok()?;
        Some(Searched::Dfa(Box::new(LazyDfa {
            cache: dfa.create_cache(),
            dfa,
        })))
    }

    /// Where the first way of matching from `at` ends, by `end` (the bytes
    /// around in view of assertions), and which pattern it is.
    fn first_end(&mut self, hay: &[u8], at: usize, end: usize) -> Option<(usize, usize)> {
        let (dfa, cache) = match self {
            Searched::Pieces(pieces) => return pieces.first_end(hay, at, end),
            Searched::Dfa(lazy) => (&lazy.dfa, &mut lazy.cache),
        };
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(at.checked_sub(1).map(|i| hay[i]));
        let mut sid = dfa.start_state(cache, &config).ok()?;
        // A state kept from before the cache was cleared names nothing.
        let clears = cache.clear_count();
        // The last match state and where the match it reports ends.
        let mut found = None;
        let mut i = at;
        while i < end {
            if !sid.is_tagged() {
                let next = dfa.next_state_untagged(cache, sid, hay[i]);
                if !next.is_tagged() {
                    sid = next;
                    i += 1;
                    continue;
                }
            }
            sid = dfa.next_state(cache, sid, hay[i]).ok()?;
            if sid.is_match() {
                // Matches are reported one byte late.
                found = Some((sid, i));
            } else if sid.is_dead() {
                break;
            } else if sid.is_quit() {
                return None;
            }
            i += 1;
        }
        if i == end {
            sid = match hay.get(end) {
                Some(&b) => dfa.next_state(cache, sid, b),
                None => dfa.next_eoi_state(cache, sid),
            }
            .ok()?;
            if sid.is_match() {
                found = Some((sid, end));
            }
        }
        let (sid, e) = found?;
        if cache.clear_count() != clears {
            return None;
        }
        Some((dfa.match_pattern(cache, sid, 0).as_usize(), e))
    }

    /// [`first_end`](Self::first_end), the end alone.
    fn end_of(&mut self, hay: &[u8], at: usize, end: usize) -> Option<usize> {
        self.first_end(hay, at, end).map(|(_, e)| e)
    }
}

impl Walk {
    /// `hir` (groups numbered from 1 in order, as an outcome's are) as a
    /// walk, if it is a sequence anchored at the start each of whose parts
    /// holding groups is a run, a choice of branches that are each one
    /// group or none, or a part whose groups sit at fixed distances from
    /// its ends or can be found in it alone (no look-around assertions),
    /// and no run is last or right after another.
    pub(crate) fn new(hir: &Hir) -> Option<Walk> {
        if !hir.properties().look_set_prefix().contains(Look::Start) {
            return None;
        }
        let groups = hir.properties().explicit_captures_len() + 1;
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        Some(Walk {
            steps: steps(parts, true)?,
            groups,
        })
    }

    /// Whether the walk reads less than placing the parts from the end
    /// would (see `split.rs`): that reads a lone part's text and what
    /// follows it, never what comes before it, but each further part holding
    /// groups, and each run (every end of which it must try), costs it
    /// reverse searches of their own.
    pub(crate) fn beats_placing_from_the_end(&self) -> bool {
        let holding = self
            .steps
            .iter()
            .filter(|s| match s {
                Step::Literal { layout, .. } => !layout.is_empty(),
                Step::Parts(_) => false,
                _ => true,
            })
            .count();
        holding > 1
            || self
                .steps
                .iter()
                .any(|s| matches!(s, Step::Run { .. } | Step::Choice { .. }))
    }

    /// Sets `spans` to the groups (group 0 included) of the first way of
    /// matching `hay` from its start that ends at `end`, where the
    /// pattern's first match is known to end; `None` if the walk does not
    /// reach `end` that way (the caller then asks the backtracker, and
    /// `spans` holds nothing to read). `spans` is the caller's, so that its
    /// room serves line after line.
    pub(crate) fn captures(&mut self, hay: &[u8], end: usize, spans: &mut Spans) -> Option<()> {
        spans.clear();
        spans.resize(self.groups, None);
        if walk_steps(&mut self.steps, hay, 0, end, spans)? != end {
            return None;
        }
        spans[0] = Some((0, end));
        Some(())
    }
}

/// Walks `steps` from `at`, by `end`, setting the groups they hold in
/// `spans`: where the last step's first way ends, or `None` if a step has
/// no way there.
fn walk_steps(
    steps: &mut [Step],
    hay: &[u8],
    mut at: usize,
    end: usize,
    spans: &mut Spans,
) -> Option<usize> {
    for k in 0..steps.len() {
        let (step, after) = steps[k..].split_first_mut()?;
        at = match step {
            Step::End => {
                let e = text_end(hay, at)?;
                if e > end {
                    return None;
                }
                e
            }
            Step::Literal { bytes, layout } => {
                let e = bytes.end(&hay[..end], at)?;
                place_fixed(layout, at, e, spans)?;
                e
            }
            Step::Parts(part) => part.end_of(hay, at, end)?,
            Step::Choice {
                part,
                around,
                branches,
                by_bytes,
            } => {
                let (k, e) = match by_bytes {
                    Some(by_bytes) => by_bytes
                        .iter()
                        .enumerate()
                        .find_map(|(k, b)| Some((k, b.first_end(hay, at, end)?)))?,
                    None => part.first_end(hay, at, end)?,
                };
                if let Some(g) = branches[k] {
                    spans[g] = Some((at, e));
                }
                for &g in around.iter() {
                    spans[g] = Some((at, e));
                }
                e
            }
            Step::Optional { part, inner } => {
                let e = part.end_of(hay, at, end)?;
                if e > at && walk_steps(inner, hay, at, e, spans)? != e {
                    return None;
                }
                e
            }
            Step::Groups {
                inside: Inside::Alone(re),
                ..
            } if re.is_host()
                && let Some((group, addr, e)) = f2b_host_first_end(hay, at, end) =>
            {
                re.place_host(group, (at, addr), spans);
                e
            }
            Step::Groups { part, inside } => {
                let e = part.end_of(hay, at, end)?;
                match inside {
                    Inside::Fixed(layout) => place_fixed(layout, at, e, spans)?,
                    // The DFA found where `<HOST>` matches.
                    Inside::Alone(re)
                        if re.is_host()
                            && let Some(group) = f2b_host_group(&hay[at..e], true) =>
                    {
                        re.place_host(group, (at, e), spans);
                    }
                    Inside::Alone(re) => {
                        if re.captures(hay, at, e, spans)? != e {
                            return None;
                        }
                    }
                }
                e
            }
            Step::Run { run, groups } => {
                let room = run.room(hay, at, end)?;
                let next = after.first_mut()?;
                let e = run_end(next, hay, at + run.min, at + room, end, run.greedy)?;
                for &g in groups.iter() {
                    spans[g] = Some((at, e));
                }
                e
            }
        };
    }
    Some(at)
}

/// The first end of a run, from `lo` to `hi` (shortest first unless
/// `greedy`), at which `next` matches.
fn run_end(
    next: &mut Step,
    hay: &[u8],
    lo: usize,
    hi: usize,
    end: usize,
    greedy: bool,
) -> Option<usize> {
    let nth = |n: usize| if greedy { hi - n } else { lo + n };
    let ends = hi - lo + 1;
    match next {
        Step::Literal { bytes, .. } => {
            let Some(&first) = bytes.bytes().first() else {
                return Some(nth(0));
            };
            // The ends in order where the literal's first byte is.
            let window = &hay[lo..(hi + 1).min(end)];
            let fits = |&e: &usize| bytes.end(&hay[..end], e).is_some();
            if greedy {
                memchr::memrchr_iter(first, window)
                    .map(|i| lo + i)
                    .find(fits)
            } else {
                memchr::memchr_iter(first, window)
                    .map(|i| lo + i)
                    .find(fits)
            }
        }
        Step::End => (0..ends)
            .map(nth)
            .find(|&e| text_end(hay, e).is_some_and(|t| t <= end)),
        Step::Parts(part)
        | Step::Groups { part, .. }
        | Step::Choice { part, .. }
        | Step::Optional { part, .. } => (0..ends.min(MAX_TRIES))
            .map(nth)
            .find(|&e| part.first_end(hay, e, end).is_some()),
        Step::Run { .. } => None,
    }
}

/// Where the text ends if only a newline, or nothing, is left after `at`.
fn text_end(hay: &[u8], at: usize) -> Option<usize> {
    match &hay[at..] {
        [] => Some(at),
        [b'\n'] => Some(at + 1),
        _ => None,
    }
}

/// `parts`, a sequence, as steps; `start`: they start the pattern, at the
/// start of the text. `None` unless each part holding groups is a run, a
/// choice of branches that are each one group or none, an optional
/// sequence that is itself walked, or a part whose groups sit at fixed
/// distances from its ends or can be found in it alone (no look-around
/// assertions), and no run is last or right after another.
fn steps(parts: &[Hir], start: bool) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    // Parts without groups, gathered until the next part holding some.
    let mut plain: Vec<Hir> = Vec::new();
    for part in parts {
        if part.properties().explicit_captures_len() == 0 {
            plain.push(part.clone());
            continue;
        }
        if !plain.is_empty() {
            let first = start && steps.is_empty();
            steps.push(plain_step(std::mem::take(&mut plain), first)?);
        }
        steps.push(holding_step(part)?);
    }
    if !plain.is_empty() {
        let first = start && steps.is_empty();
        steps.push(plain_step(plain, first)?);
    }
    // A run must be followed by something that can say whether it
    // matches where the run would end.
    let runs_end_well = steps
        .windows(2)
        .all(|w| !matches!((&w[0], &w[1]), (Step::Run { .. }, Step::Run { .. })));
    (runs_end_well && !matches!(steps.last(), Some(Step::Run { .. }))).then_some(steps)
}

/// Parts without groups as one step; `first`: the pattern's first, where
/// the walk starts, at the start of the text.
fn plain_step(parts: Vec<Hir>, first: bool) -> Option<Step> {
    let mut bytes = Vec::new();
    let literal = parts.iter().enumerate().all(|(n, p)| match p.kind() {
        HirKind::Literal(lit) => {
            bytes.extend_from_slice(&lit.0);
            true
        }
        HirKind::Look(Look::Start) => first && n == 0,
        _ => false,
    });
    if literal {
        return Some(Step::Literal {
            bytes: Literal::new(&bytes),
            layout: Vec::new(),
        });
    }
    if let [newline, HirKind::Look(Look::End)] = parts.iter().map(Hir::kind).collect::<Vec<_>>()[..]
        && let HirKind::Repetition(r) = newline
        && (r.min, r.max, r.greedy) == (0, Some(1), true)
        && matches!(r.sub.kind(), HirKind::Literal(l) if *l.0 == *b"\n")
    {
        return Some(Step::End);
    }
    Some(Step::Parts(Searched::new(&[Hir::concat(parts)])?))
}

/// A part holding groups as one step: a run if it is groups around a
/// repetition of one class, else a part placed by its DFA.
fn holding_step(part: &Hir) -> Option<Step> {
    let mut groups = Vec::new();
    let mut inner = part;
    while let HirKind::Capture(c) = inner.kind() {
        groups.push(c.index as usize);
        inner = &c.sub;
    }
    // A run of one byte stays a part: the part can be last, or follow a
    // run, where a run cannot.
    if let HirKind::Repetition(r) = inner.kind()
        && matches!(r.sub.kind(), HirKind::Class(_))
        && let Some(run) = ClassRun::new(r)
    {
        return Some(Step::Run { run, groups });
    }
    if let HirKind::Repetition(r) = part.kind()
        && (r.min, r.max, r.greedy) == (0, Some(1), true)
        && r.sub.properties().minimum_len().is_some_and(|len| len > 0)
        && let HirKind::Concat(parts) = r.sub.kind()
        && let Some(inner) = steps(parts, false)
    {
        return Some(Step::Optional {
            part: Searched::new(std::slice::from_ref(part))?,
            inner,
        });
    }
    if let HirKind::Alternation(alts) = inner.kind() {
        let branches: Option<Vec<Option<usize>>> = alts
            .iter()
            .map(|b| match b.kind() {
                _ if b.properties().explicit_captures_len() == 0 => Some(None),
                HirKind::Capture(c) if c.sub.properties().explicit_captures_len() == 0 => {
                    Some(Some(c.index as usize))
                }
                _ => None,
            })
            .collect();
        if let Some(branches) = branches {
            return Some(Step::Choice {
                part: Searched::new(alts)?,
                around: groups,
                branches,
                by_bytes: alts.iter().map(Branch::new).collect(),
            });
        }
    }
    let inside = match fixed_layout(part) {
        Some(layout) => match literal_bytes(part) {
            Some(bytes) => {
                return Some(Step::Literal {
                    bytes: Literal::new(&bytes),
                    layout,
                });
            }
            None => Inside::Fixed(layout),
        },
        // Searched alone, the part would not see the text after its place.
        None if !part.properties().look_set().is_empty() => return None,
        None => Inside::Alone(PartRe::new(part, true)?),
    };
    Some(Step::Groups {
        part: Searched::new(std::slice::from_ref(part))?,
        inside,
    })
}

/// The bytes `h` matches, if it is literal bytes and groups around them.
fn literal_bytes(h: &Hir) -> Option<Vec<u8>> {
    match h.kind() {
        HirKind::Empty => Some(Vec::new()),
        HirKind::Literal(lit) => Some(lit.0.to_vec()),
        HirKind::Capture(c) => literal_bytes(&c.sub),
        HirKind::Concat(subs) => subs.iter().try_fold(Vec::new(), |mut bytes, sub| {
            bytes.extend(literal_bytes(sub)?);
            Some(bytes)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::f2b_host;

    /// `p` as the `regex` crate compiles it (what the walk must agree
    /// with) and as a walk.
    fn both(p: &str) -> (regex::bytes::Regex, Walk) {
        let re = regex::bytes::RegexBuilder::new(p)
            .unicode(false)
            .build()
            .unwrap();
        let hir = crate::part::renumber(&crate::dfa::parse(p).unwrap(), &mut Vec::new());
        let walk = Walk::new(&hir).unwrap_or_else(|| panic!("{p} walks"));
        (re, walk)
    }

    /// The groups the walk finds in `t` for a match that ends at `end`.
    fn walked(walk: &mut Walk, t: &str, end: usize) -> Option<Spans> {
        let mut spans = Spans::new();
        walk.captures(t.as_bytes(), end, &mut spans)?;
        Some(spans)
    }

    /// The groups of `re`'s first match in `t`.
    fn regex_spans(re: &regex::bytes::Regex, t: &str) -> Option<Spans> {
        let c = re.captures(t.as_bytes())?;
        Some(c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
    }

    /// Patterns with every kind of step: literals, lazy and greedy runs
    /// followed by a literal or by a part, choices, parts whose groups sit
    /// at fixed distances, literals holding groups, fail2ban's `<HOST>`,
    /// optional parts, `$`.
    fn patterns() -> Vec<String> {
        let host = f2b_host();
        vec![
            format!(
                r"^Failed (?:(publickey)|\S+) for (invalid user )?(.*?) from {host}(?: port \d+)?(?: ssh\d*)?(.*)\n?\z"
            ),
            format!(r"^(?:Invalid|Illegal) user (.*?) from {host}(?: port \d+)?\s*$"),
            format!(
                r"^((Connection closed|Disconnected)) (?:by|from)(?: (?:invalid|authenticating) user (\S+|.*?))? {host}(?: port \d+)?(?: \[preauth\])?\s*$"
            ),
            format!(r"^(Accepted \w+) for (\S+) from {host}(?:\s|$)"),
            format!(r"^((Received) (disconnect)) from {host}(?: port \d+)?:\s*11:"),
            r"^user (\S+?)x(\d*)( at )([^:]+): (.*)$".to_string(),
            r"^a(b*)(b+)c".to_string(),
            r"^a(?:(b+?)|(c*)|(bd))d(.*)$".to_string(),
            r"^x(.*?)(y|yy)z".to_string(),
        ]
    }

    fn texts() -> Vec<String> {
        let mut out: Vec<String> = [
            "Failed password for invalid user admin from 198.51.100.7 port 22 ssh2",
            "Failed publickey for root from 2001:db8::7 port 22 ssh2: RSA x",
            "Failed password for invalid user a from b from 1.2.3.4 port 2 ssh2",
            "Failed none for invalid user  from 198.51.100.7 port 22 ssh2",
            "Failed password for root from ::ffff:198.51.100.7 port 22",
            "Failed password for root from host.example.org",
            "Invalid user oracle from 198.51.100.7 port 4",
            "Invalid user  from 198.51.100.7",
            "Connection closed by authenticating user root 198.51.100.7 port 5 [preauth]",
            "Disconnected from invalid user a b c 2001:db8::1 port 5 [preauth]",
            "Connection closed by 198.51.100.7 port 5 [preauth]",
            "Accepted publickey for deploy from 198.51.100.8 port 1 ssh2: ED25519",
            "Received disconnect from 198.51.100.9 port 7:11: Bye Bye [preauth]",
            "user bob42x7 at host: x: y",
            "user xx at h:",
            "abbbc",
            "abc",
            "abbd x",
            "acd",
            "ad",
            "abdd",
            "xyyz",
            "xyyyz",
        ]
        .map(String::from)
        .to_vec();
        // Each with one byte dropped, and with one doubled.
        for t in out.clone() {
            for i in (0..t.len()).step_by(3) {
                out.push(format!("{}{}", &t[..i], &t[i + 1..]));
                out.push(format!("{}{}", &t[..=i], &t[i..]));
            }
        }
        out.into_iter().map(|t| t + "\n").collect()
    }

    /// Wherever the walk answers, it gives the groups the `regex` crate
    /// gives for the pattern's first match; and it answers for most lines
    /// (not for those where a part's first way leads nowhere and a later
    /// one is the match: a user name `\S+|.*?` followed by no address).
    #[test]
    fn walked_groups_are_the_regex_crates() {
        let (mut answered, mut matched) = (0, 0);
        // Steps of the kinds told without a DFA: literals holding groups,
        // choices by bytes, optional sequences walked inside.
        let mut kinds = [0; 3];
        for p in patterns() {
            let (re, mut walk) = both(&p);
            for step in &walk.steps {
                match step {
                    Step::Literal { layout, .. } if !layout.is_empty() => kinds[0] += 1,
                    Step::Choice {
                        by_bytes: Some(_), ..
                    } => kinds[1] += 1,
                    Step::Optional { .. } => kinds[2] += 1,
                    _ => {}
                }
            }
            for t in texts() {
                let Some(want) = regex_spans(&re, &t) else {
                    continue;
                };
                let end = want[0].unwrap().1;
                matched += 1;
                if let Some(found) = walked(&mut walk, &t, end) {
                    assert_eq!(found, want, "{p} on {t:?}");
                    answered += 1;
                }
            }
        }
        assert!(
            answered * 4 > matched * 3,
            "the walk answered {answered} of {matched} matches"
        );
        // `((Received) (disconnect))` and `( at )` are compared as literals;
        // `(?:(publickey)|\S+)`, `((Connection closed|Disconnected))`,
        // `(y|yy)` and `(?:(b+?)|(c*)|(bd))` are told by bytes;
        // `(?: (?:invalid|authenticating) user (\S+|.*?))?` is walked inside.
        assert_eq!(kinds, [2, 4, 1]);
    }

    /// A crafted line (64 KiB of what a run would take, with the literal or
    /// part after it at every other place) is walked in a time in
    /// proportion to its length: a run before a literal compares it at
    /// each end, one before a part tries a bounded number of ends. What it
    /// answers is the regex crate's.
    #[test]
    fn crafted_lines_are_walked_in_linear_time() {
        for (p, t) in [
            (
                r"^a(.*?) from (\S+) (.*)$",
                format!("a{} from x y", " fro".repeat(16_000)),
            ),
            (
                r"^a(.*?)(?:\d{1,3}\.){3}(x)",
                format!("a{}1.2.3.x", "1.2.".repeat(13_000)),
            ),
            (
                r"^a(\S+) (b+)$",
                format!("a{} {}", "b".repeat(30_000), "b".repeat(30_000)),
            ),
            // A choice told by bytes, and an optional sequence walked
            // inside, over runs as long as the line.
            (
                r"^a(?:(pub)|\S+) for (.*)$",
                format!("a{} for z", "p".repeat(60_000)),
            ),
            (
                r"^a(?: (?:x|y) user (\S+|.*?))? (b+)$",
                format!("a x user {}b", "q ".repeat(30_000)),
            ),
            (
                r"^a(?: (?:x|y) user (\S+|.*?))? (b+)$",
                format!("a y user {} {}", "q".repeat(30_000), "b".repeat(30_000)),
            ),
        ] {
            let (re, mut walk) = both(p);
            let want = regex_spans(&re, &t).unwrap_or_else(|| panic!("{p} matches"));
            if let Some(found) = walked(&mut walk, &t, want[0].unwrap().1) {
                assert_eq!(found, want, "{p}");
            }
        }
    }

    /// Lines crafted to reach a new state of a part's DFA at almost every
    /// byte (after `(?:a|b)*a(?:a|b){14}` a DFA must remember the last 15
    /// letters: 32,768 states) leave the part's cache within its bound,
    /// and what the walk answers is still the regex crate's.
    #[test]
    fn crafted_lines_keep_the_caches_bounded() {
        let p = r"^x((?:a|b)*a(?:a|b){14}) (\S+)y";
        let (re, mut walk) = both(p);
        let mut seed = 7u64;
        let mut grew = 0;
        for _ in 0..200 {
            let letters: String = (0..2_000)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    if seed >> 63 == 0 { 'a' } else { 'b' }
                })
                .collect();
            let t = format!("x{letters} zy");
            let want = regex_spans(&re, &t);
            let end = want.as_ref().and_then(|w| w[0]).map_or(t.len(), |w| w.1);
            if let Some(found) = walked(&mut walk, &t, end) {
                assert_eq!(Some(found), want);
            }
            for step in &walk.steps {
                if let Step::Groups {
                    part: Searched::Dfa(lazy),
                    ..
                } = step
                {
                    let used = lazy.cache.memory_usage();
                    assert!(used <= 2 * CACHE_BYTES, "{used} bytes");
                    grew = grew.max(used);
                }
            }
        }
        assert!(
            grew > CACHE_BYTES / 2,
            "the lines reached {grew} bytes of states"
        );
    }

    #[test]
    fn not_walked() {
        let walk = |p: &str| Walk::new(&crate::dfa::parse(p).unwrap()).is_some();
        // Not anchored at the start; a run last; two runs in a row; groups
        // inside a part with a look-around assertion.
        assert!(!walk(r"a(\S+)c"));
        assert!(!walk(r"^a(\S+)"));
        assert!(!walk(r"^a(\S+)(\d*)d"));
        assert!(!walk(r"^a((b)\b|c)d"));
        assert!(walk(r"^a(\S+)c"));
        assert!(walk(r"^a(b+)"));
    }
}

//! A pattern that ends in a choice, searched as the list of its outcomes,
//! so that finding its groups costs the outcome that matched, not the ones
//! tried before it.
//!
//! A conditional rewritten away (`conditional.rs`) leaves a pattern of the
//! form `P (?:O1 R1 | O2 R2)`: the rest of the pattern after the choice is
//! copied into each outcome. sshd.conf's "Failed" failregex has four such
//! outcomes, and the one its usual line takes is the last: asked for the
//! groups, the `regex` crate's backtracking search tries the three before
//! it to their end (each reads the address, its port and the rest of the
//! line before it fails), which was most of the time sshd.conf took.
//!
//! Searched instead as the patterns `P O1 R1`, `P O2 R2`, ... in that order
//! (one leftmost-first set), a DFA names the first outcome that matches,
//! and the groups are found in that outcome's pattern alone.
//!
//! Why that is the same match, groups included, when `P` is *prefix-free*
//! (no text it matches is the start of a longer text it matches): a
//! backtracking search of `P (?:A|B)` tries each way through `P`, and
//! after each, `A` then `B` where that way ends; the set `P A | P B` tries
//! `A` after every way through `P`, then `B` after every way. A prefix-free
//! `P` ends at one place in a text, whichever way it takes, so both try the
//! same outcomes at the same place in the same order and accept the first
//! way through `P` followed by the first outcome that matches there. The
//! outcomes may be choices themselves (`O1` of sshd's is `invalid user `
//! then a choice of two); each prefix before a choice that is split must
//! be prefix-free.
//!
//! Whether a prefix is prefix-free is read off its DFA (built to report
//! every match): it is, unless from a state that has just reported a match
//! a state can be reached that reports another.

use std::collections::HashSet;

use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::nfa::thompson;
use regex_automata::util::captures::Captures;
use regex_automata::util::start;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, meta};
use regex_syntax::hir::{Hir, HirKind, Look};

use crate::backtrack::Backtrack;
use crate::linear::Spans;
use crate::part::{renumber, spread};
use crate::walk::Walk;

/// Most outcomes a pattern is split into.
const MAX_OUTCOMES: usize = 16;

/// A pattern searched as its outcomes (see the module docs); for ASCII
/// text.
#[derive(Debug)]
pub(crate) struct Outcomes {
    /// One pattern per outcome, in order.
    set: meta::Regex,
    /// For each outcome, the whole pattern's index of each of its groups
    /// (its group `j` is `maps[k][j - 1]`).
    maps: Vec<Vec<usize>>,
    /// Groups of the whole pattern, group 0 included.
    groups: usize,
    /// The outcomes' patterns, each with its own groups numbered from 1:
    /// a DFA of them can name the outcome and where its match ends (see
    /// [`Outcomes::captures_placed`]).
    hirs: Vec<Hir>,
    /// The same patterns, for the groups of a match already placed: walked
    /// part by part where they allow it (see `walk.rs`), else one
    /// backtracker each, since each search clears a visited set as large
    /// as its patterns' states times the text's length.
    walks: Vec<Option<Walk>>,
    /// The groups a walk found, in its outcome's numbering (kept for their
    /// room).
    walked: Spans,
    placed: Option<Vec<Backtrack>>,
}

impl Outcomes {
    /// `translated` as its outcomes, or `None` when it does not start at
    /// the start of the text, does not end in a choice, or a prefix before
    /// a choice is not prefix-free.
    pub(crate) fn new(translated: &str) -> Option<Outcomes> {
        let hir = crate::dfa::parse(translated)?;
        if !hir.properties().look_set_prefix().contains(Look::Start) {
            return None;
        }
        let HirKind::Concat(parts) = hir.kind() else {
            return None;
        };
        let mut outcomes = Vec::new();
        split(parts.clone(), &mut outcomes)?;
        if outcomes.len() < 2 {
            return None;
        }
        let mut maps = Vec::with_capacity(outcomes.len());
        let hirs: Vec<Hir> = outcomes
            .into_iter()
            .map(|seq| {
                let mut map = Vec::new();
                let numbered = renumber(&Hir::concat(seq), &mut map);
                maps.push(map);
                numbered
            })
            .collect();
        let set = meta::Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(
                meta::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .utf8_empty(false),
            )
            .build_many_from_hir(&hirs)
            .ok()?;
        Some(Outcomes {
            set,
            maps,
            groups: hir.properties().explicit_captures_len() + 1,
            walks: hirs.iter().map(Walk::new).collect(),
            walked: Spans::new(),
            placed: hirs
                .iter()
                .map(|h| Backtrack::new(std::slice::from_ref(h)))
                .collect(),
            hirs,
        })
    }

    /// The outcomes' patterns, in order, each with its own groups.
    pub(crate) fn hirs(&self) -> &[Hir] {
        &self.hirs
    }

    /// What [`captures_at`](Self::captures_at) finds at byte 0 of `text`
    /// (all ASCII), when a leftmost-first DFA anchored at the start, of
    /// [`hirs`](Self::hirs) among other patterns before and after them,
    /// named `outcome` and found its match to end at `end`: that is this
    /// set's match, whose groups a backtracking search of `text[..end]`
    /// finds (see `backtrack.rs`) without the set's own DFA search.
    /// The groups are set in `out`, whose room serves line after line;
    /// `None` if there is no match (`out` then holds nothing to read).
    pub(crate) fn captures_placed(
        &mut self,
        text: &str,
        outcome: usize,
        end: usize,
        out: &mut Spans,
    ) -> Option<()> {
        if let Some(walk) = self.walks.get_mut(outcome).and_then(Option::as_mut)
            && walk
                .captures(text.as_bytes(), end, &mut self.walked)
                .is_some()
        {
            out.clear();
            out.resize(self.groups, None);
            out[0] = self.walked[0];
            for (n, &g) in self.maps[outcome].iter().enumerate() {
                out[g] = self.walked[n + 1];
            }
            return Some(());
        }
        *out = match self
            .placed
            .as_mut()
            .and_then(|p| p.get_mut(outcome))
            .and_then(|p| p.captures(text.as_bytes(), 0..end, 0))
        {
            Some(caps) => whole(self.groups, &self.maps[outcome], caps),
            None => self.captures_at(text, 0)?,
        };
        Some(())
    }

    /// The whole pattern's group spans for its first match starting at
    /// byte `at` or later of `text` (all ASCII).
    pub(crate) fn captures_at(&self, text: &str, at: usize) -> Option<Spans> {
        let mut caps = self.set.create_captures();
        self.set
            .search_captures(&Input::new(text).range(at..), &mut caps);
        let outcome = caps.pattern()?.as_usize();
        Some(whole(self.groups, &self.maps[outcome], &caps))
    }
}

/// The whole pattern's spans (`groups` of them) from an outcome's match,
/// whose groups `map` gives the whole pattern's index of.
fn whole(groups: usize, map: &[usize], caps: &Captures) -> Spans {
    let mut spans: Spans = vec![None; groups];
    spans[0] = caps.get_match().map(|m| (m.start(), m.end()));
    spread(caps, map, &mut spans);
    spans
}

/// The outcomes of the sequence `seq`, pushed onto `out` in order: itself
/// if it does not end in a choice, else each branch's outcomes after the
/// rest of it, which must be prefix-free. `None` when one is not, or there
/// are too many.
fn split(mut seq: Vec<Hir>, out: &mut Vec<Vec<Hir>>) -> Option<()> {
    let branches = match seq.last().map(Hir::kind) {
        Some(HirKind::Alternation(branches)) => branches.clone(),
        _ => {
            out.push(seq);
            return (out.len() <= MAX_OUTCOMES).then_some(());
        }
    };
    seq.pop();
    if !prefix_free(&Hir::concat(seq.clone())) {
        return None;
    }
    for branch in branches {
        let mut next = seq.clone();
        match branch.kind() {
            HirKind::Concat(subs) => next.extend(subs.iter().cloned()),
            _ => next.push(branch),
        }
        split(next, out)?;
    }
    Some(())
}

/// Whether no text `hir` matches from the start of a text is the start of
/// a longer one it matches there, read off its DFA (see the module docs);
/// `false` when the DFA cannot be built small.
fn prefix_free(hir: &Hir) -> bool {
    let built = thompson::Compiler::new()
        .configure(crate::dfa::nfa_config(false))
        .build_from_hir(hir)
        .ok()
        .and_then(|nfa| {
            dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .match_kind(MatchKind::All)
                        .start_kind(StartKind::Anchored)
                        .dfa_size_limit(Some(1 << 20))
                        .determinize_size_limit(Some(1 << 20)),
                )
                .build_from_nfa(&nfa)
                .ok()
        });
    let Some(dfa) = built else {
        return false;
    };
    let Ok(start) = dfa.start_state(&start::Config::new().anchored(Anchored::Yes)) else {
        return false;
    };
    let live = |s| !dfa.is_dead_state(s) && !dfa.is_quit_state(s);
    // Every state reachable from `from`, `from` included.
    let reach = |from| {
        let mut seen = HashSet::from([from]);
        let mut todo = vec![from];
        while let Some(s) = todo.pop() {
            for b in 0..=255u8 {
                let next = dfa.next_state(s, b);
                if live(next) && seen.insert(next) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    // A state whose next step (a byte, or the end of the text) reports a
    // match: the text read so far is matched.
    let reports = |s| {
        dfa.is_match_state(dfa.next_eoi_state(s))
            || (0..=255u8).any(|b| dfa.is_match_state(dfa.next_state(s, b)))
    };
    // A match state was entered on a byte after a matched text; from there,
    // any state that reports a match again means a longer matched text.
    reach(start).into_iter().all(|s| {
        (0..=255u8)
            .map(|b| dfa.next_state(s, b))
            .filter(|&m| dfa.is_match_state(m))
            .all(|m| !reach(m).into_iter().any(reports))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(p: &str) -> bool {
        prefix_free(&crate::dfa::parse(p).unwrap())
    }

    #[test]
    fn prefix_free_patterns() {
        assert!(free(r"^Failed (?:(publickey)|\S+) for "));
        assert!(free(r"^ab|^ac"));
        assert!(free(r"^x(invalid user )"));
        assert!(!free(r"^a|^ab"));
        assert!(!free(r"^a*"));
        assert!(!free(r"^\S+"));
        assert!(!free(r"^Failed (?:\S+ )+for "));
        // What follows decides: at the end of the text nothing longer
        // follows; before a word character both `a` and `ab` match.
        assert!(free(r"^a(?:b|$)"));
        assert!(free(r"^a\b"));
        assert!(!free(r"^a\B|^ab"));
    }

    /// The outcomes give the groups the `regex` crate gives for the whole
    /// pattern, on texts that take each outcome and none.
    #[test]
    fn outcomes_find_the_groups_of_the_whole() {
        let p = r"^F (?:(pk)|\S+) for (?:(inv )(?:((\S+)) from (\S+): |((?:.)*?) from (\S+)(.*)$)|(?:((\S+)) from (\S+): |([^:]+) from (\S+)(.*)$))";
        let mut o = Outcomes::new(p).expect("splits");
        assert_eq!(o.maps.len(), 4);
        let whole = regex::bytes::RegexBuilder::new(p)
            .unicode(false)
            .build()
            .unwrap();
        for t in [
            "F pw for root from 1.2.3.4 port 22",
            "F pk for root from 1.2.3.4: RSA",
            "F pw for inv bob from 1.2.3.4: x",
            "F pw for inv bob smith from 1.2.3.4 port 2",
            "F pw for a from b from c",
            "F pw for from from",
            "G pw for root from 1.2.3.4",
            "F pw for inv : from x",
        ] {
            let want = whole.captures(t.as_bytes()).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| (m.start(), m.end())))
                    .collect::<Spans>()
            });
            assert_eq!(o.captures_at(t, 0), want, "{t:?}");
            assert_eq!(placed(&mut o, t), want, "{t:?}");
        }
    }

    /// The groups of a match the set's DFA placed, found by
    /// [`Outcomes::captures_placed`] with the outcome and end it gave.
    fn placed(o: &mut Outcomes, t: &str) -> Option<Spans> {
        let m = o.set.search(&Input::new(t).anchored(Anchored::Yes))?;
        let mut spans = Spans::new();
        o.captures_placed(t, m.pattern().as_usize(), m.end(), &mut spans)?;
        Some(spans)
    }

    /// A crafted line (64 KiB of what each outcome reads, so every one of
    /// them gets far before it fails) is answered as the whole pattern
    /// answers it: the outcomes are searched in linear time, like any
    /// `regex-automata` search, and a placed match longer than the
    /// backtracker takes is found by the set.
    #[test]
    fn crafted_lines_are_answered_as_the_whole_pattern() {
        let p = r"^F (?:(pk)|\S+) for (?:((\S+)) from (\S+): |([^:]+) from (\S+)(.*)$)";
        let mut o = Outcomes::new(p).expect("splits");
        let whole = regex::bytes::RegexBuilder::new(p)
            .unicode(false)
            .build()
            .unwrap();
        for t in [
            format!("F pw for {}", "a from b ".repeat(7_000)),
            format!("F pw for x from {}:", "y".repeat(65_000)),
            format!("F pw for {}", " from".repeat(13_000)),
        ] {
            let want = whole.captures(t.as_bytes()).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| (m.start(), m.end())))
                    .collect::<Spans>()
            });
            assert_eq!(o.captures_at(&t, 0), want, "{} bytes", t.len());
            let longer = o.placed.iter().flatten().all(|b| b.max_len() < t.len());
            assert!(longer, "the backtracker takes {} bytes", t.len());
            assert_eq!(placed(&mut o, &t), want, "{} bytes", t.len());
        }
    }

    #[test]
    fn not_split() {
        // Not anchored, no choice at the end, a prefix that is not
        // prefix-free.
        assert!(Outcomes::new(r"a(?:b|c)").is_none());
        assert!(Outcomes::new(r"^(?:b|c)d").is_none());
        assert!(Outcomes::new(r"^a+(?:b|c)").is_none());
    }
}

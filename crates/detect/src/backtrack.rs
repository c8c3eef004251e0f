//! The groups of a match whose place is already known, found by a bounded
//! backtracking search of that place alone.
//!
//! The `regex` crate finds a match's groups in two steps: a DFA search
//! for where the match lies, then a backtracking search over exactly that
//! span for its groups. Where a DFA of our own has already found the span
//! (the failregexes' first-match DFA, a split placing a part), the first
//! step is done, and this is the second alone.
//!
//! Why the span's first match is the match: the DFA's leftmost-first match
//! starts at the span's start and ends at its end, so the highest-priority
//! way of matching from that start ends there. A backtracking search of
//! the span, anchored at its start, accepts the highest-priority way that
//! ends within it, and a way of higher priority ending inside the span
//! would be one the DFA saw. The whole text stays in view, so assertions
//! at the span's ends (`$`, `\b`) see what the DFA saw.

use std::ops::Range;

use regex_automata::nfa::thompson::{self, backtrack, backtrack::BoundedBacktracker};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, PatternID};
use regex_syntax::hir::Hir;

/// Patterns searched by a bounded backtracker, with the cache and the
/// group slots it needs.
#[derive(Debug)]
pub(crate) struct Backtrack {
    re: BoundedBacktracker,
    cache: backtrack::Cache,
    caps: Captures,
}

impl Backtrack {
    /// `hirs` as patterns `0..`, over bytes (parsed with
    /// [`crate::dfa::parse`]); `None` if the NFA cannot be built.
    pub(crate) fn new(hirs: &[Hir]) -> Option<Backtrack> {
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().utf8(false))
            .build_many_from_hir(hirs)
            .ok()?;
        let re = BoundedBacktracker::builder().build_from_nfa(nfa).ok()?;
        Some(Backtrack {
            cache: re.create_cache(),
            caps: re.create_captures(),
            re,
        })
    }

    /// The groups of pattern `pattern`'s first way of matching `hay` that
    /// starts at `span.start` and ends by `span.end`; `None` if there is
    /// none, or the span is longer than the backtracker takes (its memory
    /// is bounded: the caller then asks the `regex` crate).
    pub(crate) fn captures(
        &mut self,
        hay: &[u8],
        span: Range<usize>,
        pattern: usize,
    ) -> Option<&Captures> {
        let input = Input::new(hay)
            .span(span)
            .anchored(Anchored::Pattern(PatternID::new(pattern).ok()?));
        self.re
            .try_search(&mut self.cache, &input, &mut self.caps)
            .ok()?;
        self.caps.is_match().then_some(&self.caps)
    }

    /// The longest span the backtracker takes.
    #[cfg(test)]
    pub(crate) fn max_len(&self) -> usize {
        self.re.max_haystack_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &str) -> Hir {
        crate::dfa::parse(p).unwrap()
    }

    #[test]
    fn the_span_is_searched_with_the_whole_text_in_view() {
        let mut b = Backtrack::new(&[parse(r"^a+"), parse(r"^(a+)$")]).unwrap();
        let caps = b.captures(b"aab", 0..2, 0).unwrap();
        assert_eq!(caps.get_match().map(|m| m.range()), Some(0..2));
        // `$` sees the `b` after the span.
        assert!(b.captures(b"aab", 0..2, 1).is_none());
        let caps = b.captures(b"aa", 0..2, 1).unwrap();
        assert_eq!(caps.get_group(1).map(|s| s.range()), Some(0..2));
    }

    /// The backtracker's memory is bounded: a span longer than it takes
    /// gets no answer (its callers then ask the `regex` crate).
    #[test]
    fn a_span_too_long_gets_no_answer() {
        let mut b = Backtrack::new(&[parse(r"^(\S+|.*?) (\S+)$")]).unwrap();
        let long = format!("{} x", "y".repeat(1 << 20));
        assert!(b.max_len() < long.len());
        assert!(b.captures(long.as_bytes(), 0..long.len(), 0).is_none());
        assert!(b.captures(b"y x", 0..3, 0).is_some());
    }
}

//! A prefregex's groups found with DFAs alone.
//!
//! fail2ban's prefregexes have one shape: `^`, a run of text, some named
//! groups at the top level (`<F-MLFID>`), and last `<F-CONTENT>.+</F-CONTENT>$`,
//! the rest of the line handed to the failregexes. Every line of a log is
//! matched against it, and finding its groups with a general engine (the
//! `regex` crate's bounded backtracker over a prefix of hundreds of NFA
//! states) is where imported filters spend most of their time.
//!
//! [`Segments`] cuts such a pattern at its top-level groups and matches the
//! pieces one after the other, each with an anchored DFA search that
//! reports only where the piece ends. Why this finds the very groups that
//! the whole pattern finds (Python's backtracking order, which the `regex`
//! crate reproduces as "leftmost-first"): the whole pattern's match is the
//! first combination of the pieces' paths, in the order of the pieces, for
//! which `.+$` still matches what is left. Taking each piece's first path
//! from where the previous one ended gives the first combination of all;
//! if `.+$` then matches (at least one character is left, and no line
//! break but a final one), that combination is the whole pattern's match.
//! If not, or if a piece finds no match from there (an earlier piece's
//! later path might have let it), [`Segments::captures`] says so and the
//! caller asks the whole pattern.

use crate::dfa::{Dfas, RuleDfa};
use crate::linear::{Spans, StartingAt};
use crate::scan::{Piece, count_captures, group_end, opens_capture, pieces};

/// A prefregex cut at its top-level groups (see the module docs).
#[derive(Debug)]
pub struct Segments {
    /// The pieces in order, each with the index of the group it is, if it
    /// is one.
    pieces: Vec<(Option<usize>, StartingAt)>,
    /// The pieces as patterns of their own DFAs, for ASCII text: searched
    /// without the `regex` crate's own DFA search and its cache pool (every
    /// line of a log is matched against a prefregex). Built at the first
    /// ASCII text; `Some(None)` when a piece has none (see
    /// [`Dfas::starting_here`]).
    dfas: Option<Option<Vec<RuleDfa>>>,
    /// The index of the `.+` group that takes the rest of the line.
    rest: usize,
    /// How many groups the whole pattern has, with group 0.
    groups: usize,
}

/// What comes after the last group: Python's `$` as `pyre::translate`
/// writes it outside multi-line mode.
const END: &str = r"(?:\n?\z)";

impl Segments {
    /// Cuts `translated` (a pattern `pyre::translate` wrote), or `None`
    /// when it does not have the shape: `^` first, no alternation, flag or
    /// named group outside the top-level groups, no quantifier on them,
    /// and `(?P<NAME>.+)` then `$` last.
    pub fn new(translated: &str) -> Option<Segments> {
        let body = translated.strip_prefix('^')?;
        let b = body.as_bytes();
        let mut parts = Vec::new();
        let mut groups = 1;
        let mut text_start = 0;
        let mut rest = None;
        // Pieces before this byte are inside a group already read.
        let mut skip_to = 0;
        for (i, piece) in pieces(body, 0) {
            if i < skip_to {
                continue;
            }
            match piece {
                Piece::Unclosed | Piece::Byte(b'|') => return None,
                Piece::Byte(b'(') => {
                    let end = group_end(body, i)?;
                    skip_to = end + 1;
                    let inner = &body[i..=end];
                    let named = inner.starts_with("(?") && opens_capture(inner, 0);
                    if !named {
                        // A plain or non-capturing group, or a look-around:
                        // part of the text (no one reads an unnamed group),
                        // unless it holds a named group, or sets flags for
                        // what follows (`(?i)`).
                        if inner.contains("(?P<") || inner.contains("(?<") || sets_flags(inner) {
                            return None;
                        }
                        groups += count_captures(inner);
                        continue;
                    }
                    if matches!(b.get(end + 1), Some(b'?' | b'*' | b'+' | b'{')) {
                        return None;
                    }
                    let open = inner.find('>')? + 1;
                    let group_body = &inner[open..inner.len() - 1];
                    if group_body.contains("(?P<") || group_body.contains("(?<") {
                        return None;
                    }
                    let index = groups;
                    groups += count_captures(inner);
                    let text = &body[text_start..i];
                    if !text.is_empty() {
                        parts.push((None, text));
                    }
                    if group_body == ".+" {
                        if &body[end + 1..] != END {
                            return None;
                        }
                        rest = Some(index);
                        break;
                    }
                    parts.push((Some(index), group_body));
                    text_start = end + 1;
                }
                _ => {}
            }
        }
        let rest = rest?;
        // Compiled only now that the shape is known: most patterns tried
        // (failregexes, ignoreregexes) turn out not to have it.
        let pieces = parts
            .into_iter()
            .map(|(group, piece)| Some((group, StartingAt::new(piece)?)))
            .collect::<Option<_>>()?;
        Some(Segments {
            pieces,
            dfas: None,
            rest,
            groups,
        })
    }

    /// How many groups the whole pattern has, with group 0.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Sets `caps` to the spans of the pattern's groups in `text` (with
    /// `None` for the groups no one reads; their room serves line after
    /// line), or `None` when the pieces cannot tell and the whole pattern
    /// must be asked. `dfas` holds the pieces' DFAs once built: the same
    /// one at every call. `ascii`: whether `text` is all ASCII (if not
    /// known, `false` is safe: the DFAs only read ASCII).
    pub fn captures(
        &mut self,
        dfas: &mut Dfas,
        text: &str,
        ascii: bool,
        caps: &mut Spans,
    ) -> Option<()> {
        if ascii && self.dfas.is_none() {
            self.dfas = Some(self.build_dfas(dfas));
        }
        let mut piece_dfas = match &mut self.dfas {
            Some(Some(d)) if ascii => Some(d.iter_mut()),
            _ => None,
        };
        caps.clear();
        caps.resize(self.groups, None);
        let mut at = 0;
        for (group, piece) in &self.pieces {
            let by_dfa = piece_dfas
                .as_mut()
                .and_then(Iterator::next)
                .map(|d| dfas.search(d, &text.as_bytes()[at..]));
            let end = match by_dfa {
                Some(Ok(found)) => at + found?.1,
                // No DFA, or its search failed: the `regex` crate's.
                _ => piece.end_from(text, ascii, at)?,
            };
            if let Some(g) = group {
                caps[*g] = Some((at, end));
            }
            at = end;
        }
        let rest_end = text.strip_suffix('\n').unwrap_or(text).len();
        if rest_end <= at || memchr::memchr(b'\n', &text.as_bytes()[at..rest_end]).is_some() {
            return None;
        }
        caps[self.rest] = Some((at, rest_end));
        caps[0] = Some((0, text.len()));
        Some(())
    }

    /// Each piece's DFA (see [`Segments::dfas`]).
    fn build_dfas(&self, dfas: &mut Dfas) -> Option<Vec<RuleDfa>> {
        self.pieces
            .iter()
            .map(|(_, piece)| dfas.starting_here(piece.pattern()))
            .collect()
    }
}

/// Whether `group` is a bare flag group such as `(?i)` or `(?-u)`, which
/// sets flags for the rest of the pattern, not only inside itself.
fn sets_flags(group: &str) -> bool {
    group
        .strip_prefix("(?")
        .and_then(|g| g.strip_suffix(')'))
        .is_some_and(|flags| flags.bytes().all(|c| c.is_ascii_alphabetic() || c == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyre::{Pattern, translate};

    /// What `s` finds in `text`, with DFAs of its own.
    fn caps(s: &mut Segments, text: &str, ascii: bool) -> Option<Spans> {
        let mut caps = Spans::new();
        s.captures(&mut Dfas::default(), text, ascii, &mut caps)?;
        Some(caps)
    }

    /// The pieces' answer for `text` (their DFAs' for ASCII text, checked
    /// against the `regex` crate's searches of the same pieces), and the
    /// whole pattern's groups.
    fn both(p: &str, text: &str) -> (Option<Spans>, Spans) {
        let t = translate(p, false);
        let mut s = Segments::new(&t).expect("the prefregex shape");
        let full = Pattern::compile(&t).unwrap();
        let fast = caps(&mut s, text, text.is_ascii());
        let mut by_regex = Segments::new(&t).unwrap();
        by_regex.dfas = Some(None);
        assert_eq!(
            fast,
            caps(&mut by_regex, text, text.is_ascii()),
            "{p} {text:?}"
        );
        (fast, full.captures(text).unwrap_or_default())
    }

    #[test]
    fn groups_are_the_whole_patterns() {
        let p =
            r"^(?P<mlfid>\S+ (?:\S+ )?sshd(?:\[\d+\])?: )(?:(?:error|fatal): )?(?P<content>.+)$";
        for line in [
            "host sshd[1]: Failed password\n",
            "host x sshd: error: Failed\n",
            "host sshd[12]: fatal: x",
        ] {
            let (fast, full) = both(p, line);
            assert_eq!(fast.as_ref(), Some(&full), "{line:?}");
        }
    }

    /// A piece that may match nothing, and one with a look-around (searched
    /// by the `regex` crate: its DFA would not see the byte before it).
    #[test]
    fn pieces_by_dfa_end_where_the_regex_crate_ends_them() {
        let p = r"^(?P<mlfid>(?:\S+ )?)(?:x: )?(?P<id>\b\w+ )(?P<content>.+)$";
        for line in [
            "host word rest\n",
            "word rest",
            "x: a b\n",
            "host x: a b",
            " a b\n",
        ] {
            let (fast, full) = both(p, line);
            if let Some(fast) = fast {
                assert_eq!(fast, full, "{line:?}");
            }
        }
        let mut s = Segments::new(&translate(p, false)).unwrap();
        assert!(caps(&mut s, "host word rest\n", true).is_some());
        // Built, and the look-around leaves every piece to the regex crate.
        assert!(matches!(s.dfas, Some(None)));
        // Without the look-around, by DFA: pieces that match nothing at
        // the line's start too.
        let p = r"^(?P<mlfid>(?:\S+ )?)(?:x: )?(?P<content>.+)$";
        for line in ["x: rest\n", " rest\n", "host x: a\n", "x: \n", ":x\n"] {
            let (fast, full) = both(p, line);
            if let Some(fast) = fast {
                assert_eq!(fast, full, "{line:?}");
            }
        }
        // (Its DFAs are the first `Dfas`'s: the same one each time.)
        let (mut s, mut dfas) = (
            Segments::new(&translate(p, false)).unwrap(),
            Dfas::default(),
        );
        let mut caps = Spans::new();
        s.captures(&mut dfas, " rest\n", true, &mut caps).unwrap();
        assert!(matches!(s.dfas, Some(Some(_))));
        assert_eq!((caps[1], caps[2]), (Some((0, 0)), Some((0, 5))));
        s.captures(&mut dfas, "x: rest\n", true, &mut caps).unwrap();
        assert_eq!(caps[1], Some((0, 3)));
    }

    #[test]
    fn asks_the_whole_pattern_when_the_pieces_cannot_tell() {
        // The optional part takes all there is: the whole pattern would
        // give it back to `.+`.
        let (fast, full) = both(r"^a(?: b)?(?P<content>.+)$", "a b\n");
        assert_eq!(fast, None);
        assert_eq!(full[1], Some((1, 3)));
        // No match from the first path of the piece before.
        let (fast, _) = both(r"^(?P<x>a|ab)c(?P<content>.+)$", "abcd");
        assert_eq!(fast, None);
    }

    #[test]
    fn other_shapes_are_left_to_the_whole_pattern() {
        for p in [
            r"a(?P<content>.+)$",
            r"^a|b(?P<content>.+)$",
            r"^(?i)a(?P<content>.+)$",
            r"^(?P<x>a)?(?P<content>.+)$",
            r"^(?:(?P<x>a))(?P<content>.+)$",
            r"^(a(?P<x>b))(?P<content>.+)$",
            r"^a(?P<content>x.+)$",
            r"^a(?P<content>.+)b$",
        ] {
            assert!(Segments::new(&translate(p, false)).is_none(), "{p}");
        }
    }

    /// Patterns are written by whoever writes filters: broken ones are
    /// refused, never a panic.
    #[test]
    fn broken_patterns_are_refused() {
        for p in [
            "^(",
            "^\\",
            "^(?P<a",
            "^[",
            "^[]",
            "^(?P<content>.+)",
            "^\\é(?P<content>.+)(?:\\n?\\z)",
            "^(?P<x>a)(?P<content>.+)(?:\\n?\\z)x",
            "^(?P<content>.+)(?:\\n?\\z",
            "^é[(](?P<content>.+)(?:\\n?\\z)",
        ] {
            if let Some(mut s) = Segments::new(p) {
                let mut dfas = Dfas::default();
                let mut caps = Spans::new();
                let _ = s.captures(&mut dfas, "é x (\n", false, &mut caps);
                let _ = s.captures(&mut dfas, "x (\n", true, &mut caps);
            }
        }
    }
}

//! Back references and look-aheads matched in linear time and checked
//! afterwards.
//!
//! The `regex` crate has neither back references (`(?P=sep)`, `\1`) nor
//! look-aheads (`(?!evasive)`, and the "tempered" `(?:(?! from ).)*` that
//! reads up to a word), so a pattern with one used to run on fancy-regex's
//! backtracking engine for every line. fail2ban's default date templates
//! have back references (`%ExY(?P<_sep>[-/.])%m(?P=_sep)%d ...`), so every
//! filter whose log carries such dates paid that on each line.
//!
//! [`Checked`] compiles a relaxed form instead, and checks its match:
//! - a back reference becomes a captured copy of the referenced group's
//!   pattern, whose text must equal the group's;
//! - a look-ahead becomes an empty capture (a marker), at whose position
//!   the look-ahead's pattern must match (`(?=X)`) or not (`(?!X)`);
//! - a tempered repetition `(?:(?!X).)*` (also `*?`, `+`, `+?`) becomes a
//!   captured `(?:.)*`, in whose text `X` must match nowhere.
//!
//! A match whose checks hold is accepted; the line goes to fancy-regex only
//! when one fails. Why an accepted match is the one Python would find: the
//! relaxed form takes the same paths in the same order, each step only as
//! permissive or more (a copy accepts what the reference accepts, an
//! assertion dropped accepts everything), so it accepts every path the
//! original accepts, in the same order, and more. The first path it
//! accepts, once checked valid for the original, therefore has no valid
//! path of the original before it. And a line the relaxed form does not
//! match, the original cannot match either.
//!
//! A look-ahead in a group repeated a few times (sshd.conf's
//! `(?:\w+ (?!found\b)){0,2}`) is checked at each place once the
//! repetition is written out: `X{0,2}` as `(?:X(?:X)?)?`, which tries the
//! same counts in the same order (see [`unrolled`]).
//!
//! A pattern with conditionals is first rewritten without them
//! (`conditional.rs`); the rewritten form copies some groups, and a group's
//! span is that of its copy which took part.
//!
//! Refused (left to fancy-regex): look-behinds, conditionals that cannot
//! be rewritten, atomic groups; a reference to a group not closed before
//! it; a reference or look-ahead inside a group repeated without bound or
//! more than four times (only the last repetition would be checked).

use regex_syntax::hir::Hir;

use crate::conditional::unconditional;
use crate::linear::{Linear, Spans, StartingAt};
use crate::outcomes::Outcomes;
use crate::scan::{
    Piece, count_captures, escape_or_class, group_end, opens_capture, pieces, quantifier,
    rewrite_groups,
};

/// A pattern with back references or look-aheads, run as a relaxed linear
/// pattern plus checks, with fancy-regex for the lines the checks reject.
#[derive(Debug)]
pub struct Checked {
    relaxed: Linear,
    /// What must hold of the relaxed form's match, in its numbering.
    checks: Vec<Check>,
    /// Each group of the original pattern, by index: its index in the
    /// relaxed form (its first copy's, when the pattern had conditionals;
    /// none when no copy of it is left).
    map: Vec<Option<usize>>,
    /// The other copies of groups: (original index, index in the relaxed
    /// form).
    copies: Vec<(usize, usize)>,
    /// The relaxed form searched as its outcomes, for ASCII text (a pattern
    /// whose conditionals were rewritten away ends in the choice that
    /// decided them: see `outcomes.rs`).
    outcomes: Option<Outcomes>,
    /// The groups the outcomes found, in the relaxed form's numbering
    /// (kept for their room).
    relaxed_spans: Spans,
    fancy: Box<fancy_regex::Regex>,
}

/// What must hold of a relaxed match for the original to match the same
/// way. Each names a group of the relaxed form; a check whose group took
/// no part holds (the path did not pass there).
#[derive(Debug)]
enum Check {
    /// The copy's text equals the group's (a back reference).
    Same { group: usize, copy: usize },
    /// At the marker, the pattern matches, or with `negated` does not (a
    /// look-ahead).
    Ahead {
        marker: usize,
        pattern: StartingAt,
        negated: bool,
    },
    /// The pattern starts at no character of the span (a tempered
    /// repetition).
    Nowhere { span: usize, pattern: StartingAt },
}

impl Check {
    fn holds(&self, text: &str, ascii: bool, c: &Spans) -> bool {
        match self {
            Check::Same { group, copy } => c[*copy].is_none_or(|(cs, ce)| {
                c[*group].is_some_and(|(gs, ge)| ge <= cs && text[gs..ge] == text[cs..ce])
            }),
            Check::Ahead {
                marker,
                pattern,
                negated,
            } => c[*marker]
                .is_none_or(|(at, _)| pattern.end_from(text, ascii, at).is_some() != *negated),
            // The leftmost place a match starts is the first place the
            // look-ahead would fail: one search, not one per character (a
            // crafted line of 16 KiB would make that quadratic).
            Check::Nowhere { span, pattern } => c[*span]
                .is_none_or(|(s, e)| pattern.first_start(text, ascii, s).is_none_or(|p| p >= e)),
        }
    }
}

/// A capturing group of the original pattern.
struct Group {
    name: Option<String>,
    /// Byte range of its body (inside the parentheses).
    body: (usize, usize),
    /// Where its `)` is.
    close: usize,
}

impl Checked {
    /// The relaxed form of `translated` (which `fancy` compiled), or
    /// `fancy` back when the pattern has other features the `regex` crate
    /// lacks, nothing to check, or something refused (see the module docs).
    pub fn build(
        translated: &str,
        fancy: Box<fancy_regex::Regex>,
    ) -> Result<Checked, Box<fancy_regex::Regex>> {
        let groups = fancy.captures_len();
        let unrolled = unrolled(translated);
        let translated = unrolled.as_deref().unwrap_or(translated);
        let built = match unconditional(translated) {
            Some((rewritten, copied)) => {
                relax(&rewritten, true).and_then(|(relaxed, checks, map)| {
                    // `map` is in the rewritten pattern's numbering, whose
                    // group `j` copies the original's `copied[j]`.
                    let mut first = vec![None; groups];
                    let mut copies = Vec::new();
                    for (&orig, &at) in copied.iter().zip(&map) {
                        match first.get_mut(orig)? {
                            slot @ None => *slot = Some(at),
                            Some(_) => copies.push((orig, at)),
                        }
                    }
                    Some((relaxed, checks, first, copies, true))
                })
            }
            None => relax(translated, false).map(|(relaxed, checks, map)| {
                (
                    relaxed,
                    checks,
                    map.into_iter().map(Some).collect(),
                    Vec::new(),
                    false,
                )
            }),
        };
        match built {
            Some((relaxed, checks, map, copies, rewritten)) if map.len() == groups => Ok(Checked {
                outcomes: rewritten.then(|| Outcomes::new(relaxed.as_str())).flatten(),
                relaxed_spans: Spans::new(),
                relaxed,
                checks,
                map,
                copies,
                fancy,
            }),
            _ => Err(fancy),
        }
    }

    /// Whether the relaxed form is searched as its outcomes (ASCII text).
    #[cfg(test)]
    pub(crate) fn has_outcomes(&self) -> bool {
        self.outcomes.is_some()
    }

    /// Group names in the original pattern's order.
    pub fn names(&self) -> Vec<Option<String>> {
        self.fancy
            .capture_names()
            .map(|n| n.map(String::from))
            .collect()
    }

    /// The original pattern's group spans for its first match starting at
    /// byte `at` or later.
    pub fn captures_at(&self, text: &str, at: usize) -> Option<Spans> {
        let ascii = text.is_ascii();
        let c = match &self.outcomes {
            Some(outcomes) if ascii => outcomes.captures_at(text, at)?,
            _ => self.relaxed.captures_known(text, ascii, at)?,
        };
        let mut spans = Spans::new();
        self.checked(text, ascii, at, &c, &mut spans)?;
        Some(spans)
    }

    /// The relaxed form's outcomes (see `outcomes.rs`), each a pattern
    /// with its own groups, when it is searched as them.
    pub(crate) fn outcomes(&self) -> Option<&[Hir]> {
        self.outcomes.as_ref().map(Outcomes::hirs)
    }

    /// What [`captures_at`](Self::captures_at) finds at byte 0 of `text`
    /// (all ASCII), when a leftmost-first DFA anchored at the start named
    /// `outcome` of [`outcomes`](Self::outcomes) and found its match to end
    /// at `end` (see [`Outcomes::captures_placed`]).
    /// The groups are set in `out`, whose room serves line after line;
    /// `None` if there is no match (`out` then holds nothing to read).
    pub(crate) fn captures_placed(
        &mut self,
        text: &str,
        outcome: usize,
        end: usize,
        out: &mut Spans,
    ) -> Option<()> {
        let Some(outcomes) = &mut self.outcomes else {
            *out = self.captures_at(text, 0)?;
            return Some(());
        };
        outcomes.captures_placed(text, outcome, end, &mut self.relaxed_spans)?;
        let found = self.checked(text, true, 0, &self.relaxed_spans, out);
        debug_assert_eq!(
            found.map(|()| out.clone()),
            self.captures_at(text, 0),
            "the outcome and end given are what this pattern's DFA finds"
        );
        found
    }

    /// Sets `out` to the original pattern's spans, from the relaxed form's
    /// match `c` at byte `at` or later: mapped if every check holds, else
    /// fancy-regex's; `None` if fancy-regex finds no match.
    fn checked(
        &self,
        text: &str,
        ascii: bool,
        at: usize,
        c: &Spans,
        out: &mut Spans,
    ) -> Option<()> {
        if self.checks.iter().all(|check| check.holds(text, ascii, c)) {
            out.clear();
            out.extend(self.map.iter().map(|&i| i.and_then(|i| c[i])));
            for &(orig, at) in &self.copies {
                out[orig] = out[orig].or(c[at]);
            }
            return Some(());
        }
        let c = self.fancy.captures_from_pos(text, at).ok()??;
        out.clear();
        out.extend(c.iter().map(|m| m.map(|m| (m.start(), m.end()))));
        Some(())
    }
}

/// The relaxed form of `translated` with its checks and group map (see
/// [`Checked`]); `None` if it has nothing to check, unless `unchecked_too`.
fn relax(translated: &str, unchecked_too: bool) -> Option<(Linear, Vec<Check>, Vec<usize>)> {
    let groups = capturing_groups(translated)?;
    let b = translated.as_bytes();
    let mut out = String::with_capacity(translated.len() + 32);
    let mut checks = Vec::new();
    let mut map = vec![0];
    // Groups opened so far in the relaxed form.
    let mut opened = 0;
    // Open groups around the current position: where each opened.
    let mut open: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some((target, len)) = back_reference(translated, i, &groups) {
            let g = groups.get(target.checked_sub(1)?)?;
            if g.close >= i || open.iter().any(|&o| repeated(translated, o)) {
                return None;
            }
            out.push('(');
            out.push_str(&without_captures(&translated[g.body.0..g.body.1]));
            out.push(')');
            opened += 1;
            checks.push(Check::Same {
                group: map[target],
                copy: opened,
            });
            i += len;
            continue;
        }
        let in_repetition = || open.iter().any(|&o| repeated(translated, o));
        let rest = &translated[i..];
        if rest.starts_with("(?=") || rest.starts_with("(?!") {
            let end = group_end(translated, i)?;
            if in_repetition() || quantified(b, end) {
                return None;
            }
            out.push_str("()");
            opened += 1;
            checks.push(Check::Ahead {
                marker: opened,
                pattern: StartingAt::new(&translated[i + 3..end])?,
                negated: rest.starts_with("(?!"),
            });
            i = end + 1;
            continue;
        }
        if let Some((x, quantifier, len)) = tempered(translated, i) {
            if in_repetition() {
                return None;
            }
            out.push_str("((?:.)");
            out.push_str(quantifier);
            out.push(')');
            opened += 1;
            checks.push(Check::Nowhere {
                span: opened,
                pattern: StartingAt::new(x)?,
            });
            i += len;
            continue;
        }
        if let Some(len) = escape_or_class(translated, i) {
            out.push_str(&translated[i..i + len]);
            i += len;
            continue;
        }
        match b[i] {
            b'(' => {
                if opens_capture(translated, i) {
                    opened += 1;
                    map.push(opened);
                }
                open.push(i);
            }
            b')' => {
                open.pop();
            }
            _ => {}
        }
        let len = translated[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&translated[i..i + len]);
        i += len;
    }
    if (checks.is_empty() && !unchecked_too) || map.len() != groups.len() + 1 {
        return None;
    }
    Some((Linear::build(&out).ok()?, checks, map))
}

/// Most repetitions of a group written out by [`unrolled`].
const MAX_UNROLLED: usize = 4;

/// `p` with each non-capturing group that holds a look-ahead and is
/// repeated at most [`MAX_UNROLLED`] times (`(?:X){m,n}`, greedy or lazy)
/// written out: `m` copies of `X`, then `n - m` nested optional ones,
/// `X{0,2}` as `(?:X(?:X)?)?` (`??` for a lazy one). A greedy repetition
/// tries the most copies first, the nested optionals too; a lazy one the
/// fewest, the lazy optionals too. Groups holding captures are left as
/// they are (copies would add groups). `None` if nothing was written out.
fn unrolled(p: &str) -> Option<String> {
    let mut changed = false;
    let out = rewrite_groups(p, |i, out| {
        if !p[i..].starts_with("(?:") {
            return None;
        }
        let end = group_end(p, i)?;
        let body = &p[i + 3..end];
        let (m, n, lazy, len) = bounded(p, end + 1)?;
        if n > MAX_UNROLLED
            || !(body.contains("(?=") || body.contains("(?!"))
            || count_captures(body) > 0
        {
            return None;
        }
        let q = if lazy { "??" } else { "?" };
        for _ in 0..m {
            out.push_str("(?:");
            out.push_str(body);
            out.push(')');
        }
        for _ in m..n {
            out.push_str("(?:(?:");
            out.push_str(body);
            out.push(')');
        }
        for _ in m..n {
            out.push(')');
            out.push_str(q);
        }
        changed = true;
        Some(end + 1 + len - i)
    });
    changed.then_some(out)
}

/// The bounded repetition `{m,n}` or `{m}` (maybe lazy, not possessive)
/// at `at`: its bounds, whether it is lazy, and its length.
fn bounded(p: &str, at: usize) -> Option<(usize, usize, bool, usize)> {
    let q = quantifier(p, at).filter(|q| q.braces && !q.possessive)?;
    let max = q.max.filter(|&n| q.min <= n)?;
    Some((q.min, max, q.lazy, q.len))
}

/// The capturing groups of `p` in order (group 1 first), or `None` if
/// its parentheses do not balance.
fn capturing_groups(p: &str) -> Option<Vec<Group>> {
    let mut groups = Vec::new();
    for (i, piece) in pieces(p, 0) {
        match piece {
            Piece::Unclosed => return None,
            Piece::Byte(b'(') if opens_capture(p, i) => {
                let close = group_end(p, i)?;
                let (name, body_start) = if p[i..].starts_with("(?") {
                    let end = i + p[i..].find('>')?;
                    let name_start = i + if p[i..].starts_with("(?P<") { 4 } else { 3 };
                    (Some(p[name_start..end].to_string()), end + 1)
                } else {
                    (None, i + 1)
                };
                groups.push(Group {
                    name,
                    body: (body_start, close),
                    close,
                });
            }
            _ => {}
        }
    }
    Some(groups)
}

/// A back reference at `i` (`(?P=name)` or `\N`): the group it names and
/// its length in bytes.
fn back_reference(p: &str, i: usize, groups: &[Group]) -> Option<(usize, usize)> {
    let rest = &p[i..];
    if let Some(named) = rest.strip_prefix("(?P=") {
        let end = named.find(')')?;
        let name = &named[..end];
        let index = groups
            .iter()
            .position(|g| g.name.as_deref() == Some(name))?;
        return Some((index + 1, 4 + end + 1));
    }
    let digits = rest.strip_prefix('\\')?;
    let n: String = digits.chars().take_while(char::is_ascii_digit).collect();
    if n.is_empty() || n.starts_with('0') {
        return None;
    }
    Some((n.parse().ok()?, 1 + n.len()))
}

/// Whether the group opened at `open` may match more than once (`?` is
/// no repetition: a group it follows takes part once or not at all).
fn repeated(p: &str, open: usize) -> bool {
    group_end(p, open).is_none_or(|e| matches!(p.as_bytes().get(e + 1), Some(b'*' | b'+' | b'{')))
}

/// Whether a quantifier follows the `)` at `close`.
fn quantified(b: &[u8], close: usize) -> bool {
    matches!(b.get(close + 1), Some(b'?' | b'*' | b'+' | b'{'))
}

/// A tempered repetition at `i`, `(?:(?!X).)` then `*`, `*?`, `+` or
/// `+?`: `X`, the quantifier and the whole length in bytes.
fn tempered(p: &str, i: usize) -> Option<(&str, &str, usize)> {
    let rest = &p[i..];
    if !rest.starts_with("(?:(?!") {
        return None;
    }
    let ahead_end = group_end(p, i + 3)?;
    if !p[ahead_end + 1..].starts_with(".)") {
        return None;
    }
    let after = ahead_end + 3;
    let quantifier = ["*?", "+?", "*", "+"]
        .into_iter()
        .find(|q| p[after..].starts_with(q))?;
    Some((
        &p[i + 6..ahead_end],
        quantifier,
        after + quantifier.len() - i,
    ))
}

/// `p` with every capturing group made non-capturing (a copy must not add
/// names or shift numbers).
fn without_captures(p: &str) -> String {
    rewrite_groups(p, |i, out| {
        if !opens_capture(p, i) {
            return None;
        }
        out.push_str("(?:");
        Some(match p[i..].find('>') {
            Some(e) if p[i..].starts_with("(?") => e + 1,
            _ => 1,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyre::{Pattern, translate};

    fn both(p: &str, text: &str) -> (Pattern, Option<Spans>, Option<Spans>) {
        let t = translate(p, false);
        let pat = Pattern::compile(&t).unwrap();
        let fancy = fancy_regex::Regex::new(&t).unwrap();
        let truth = fancy
            .captures(text)
            .unwrap()
            .map(|c| c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect());
        let got = pat.captures(text);
        (pat, got, truth)
    }

    #[test]
    fn checked_patterns_find_what_fancy_regex_finds() {
        for (p, texts) in [
            (
                r"^(?P<u>\S+) - (?P=u)$",
                &["bob - bob", "bob - bobby", "bob - alice", "x - x\n"][..],
            ),
            // The relaxed form's first match fails its check ("aaa", "a"):
            // fancy-regex finds the match ("aa", "aa").
            (r"^(?P<a>a+)(?P=a)$", &["aaaa", "aaa", "aa"]),
            (r"^(a|b)x\1", &["axa", "axb", "bxb"]),
            (
                r"^\d{4}(?P<_sep>[-/.])\d\d(?P=_sep)\d\d",
                &["2024-03-01", "2024/03/01", "2024-03/01"],
            ),
            (r"^(?:(?P<q>a)|b)c(?P=q)?d", &["acad", "bcd", "acd"]),
            // Look-aheads, at one place.
            (
                r"^(?!evasive)(?P<w>\w+) x",
                &["client x", "evasive x", "evasivex x"],
            ),
            (r"^a(?=b|c\d)(?P<r>.+)", &["ab", "ac1", "ac", "ad"]),
            // Tempered repetitions: a user name can not carry " from ".
            (
                r"^User (?P<user>(?:(?! from ).)*?) from (?P<host>\S+)$",
                &[
                    "User bob from 1.2.3.4",
                    "User a from b from 5.6.7.8",
                    "User  from x",
                ],
            ),
            (
                r"^x(?:(?! from ).)*$",
                &["x port 22", "x from 1.2.3.4 from", "x  from", "x fro m"],
            ),
            (r"^(?:(?!ab).)+b", &["aab", "cab", "ccb", "b"]),
            // A look-ahead in a group repeated a few times: written out.
            (
                r"^no matching (?:(?:\w+ (?!found\b)){0,2}\w+) found\.",
                &[
                    "no matching key exchange method found.",
                    "no matching cipher found.",
                    "no matching a b found found.",
                    "no matching found x found.",
                    "no matching a b c found.",
                ],
            ),
            (r"^(?:a(?!b)){1,3}?a", &["aaaa", "aab", "aa", "aaab"]),
            // A conditional, rewritten, with a tempered repetition in it.
            (
                r"^(?P<u>(?P<w>\S+)|(?:(?! from ).)*?) from (?P<h>\S+)(?(w): |(?:(?:(?! from ).)*)$)",
                &[
                    "bob from 1.2.3.4: x",
                    "a b from 1.2.3.4",
                    "a from b from c",
                    "bob from 1.2.3.4 from x",
                ],
            ),
        ] {
            for text in texts {
                let (pat, got, truth) = both(p, text);
                assert!(matches!(pat, Pattern::Checked(_)), "{p}");
                assert_eq!(got, truth, "{p} on {text:?}");
            }
        }
    }

    #[test]
    fn what_it_cannot_check_is_left_to_fancy_regex() {
        for p in [
            r"^(?:(?P<a>x)(?P=a))*$",         // a reference inside a repetition
            r"^(?:,(?!R=)\w+)*$",             // a look-ahead inside a repetition
            r"^(?P<a>x)(?<=x)(?P=a)",         // a look-behind
            r"^(?:(?P<c>i )?u(?(c)1|2))+",    // a conditional repeated
            r"^(?:(?=a)b)+c",                 // a look-ahead repeated
            r"^(?:(?:(?:a(?!b)){4}){4}){4}$", // only the outer group written out
            r"^(?:a(?!b)){5}",                // more than four times
        ] {
            let pat = Pattern::compile(&translate(p, false)).unwrap();
            assert!(pat.is_fancy(), "{p}");
        }
    }

    /// Broken patterns are refused by the compiler, never a panic.
    #[test]
    fn broken_references_are_refused() {
        for p in [
            r"(?P=",
            r"(a)\99",
            r"(a)\1(",
            r"(?P<a>[)(?P=a)",
            r"(?P<é>x)(?P=é)é",
            r"\",
        ] {
            if let Ok(pat) = Pattern::compile(p) {
                let _ = pat.captures("aa é x");
            }
        }
    }

    /// Attack: a crafted line of 16 KiB (the most a source passes on)
    /// against a tempered repetition whose look-ahead reads to the end of
    /// the line. Checked at each character, that is 16K searches of 16K
    /// each; checked as it is, one search. The line with the word the
    /// look-ahead looks for goes to fancy-regex, whose backtracking limit
    /// bounds it. The bound asserted is two orders above what it takes.
    #[test]
    fn a_long_crafted_line_is_checked_in_one_pass() {
        let pat = Pattern::compile(&translate(r"^x(?:(?!.*z).)*$", false)).unwrap();
        assert!(matches!(pat, Pattern::Checked(_)));
        let plain = format!("x{}", "a".repeat(16 << 10));
        let with_word = format!("{plain}z");
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(pat.captures(&plain).is_some());
            assert!(pat.captures(&with_word).is_none());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}

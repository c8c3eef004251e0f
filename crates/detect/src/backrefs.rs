//! Back references matched in linear time and checked afterwards.
//!
//! The `regex` crate has no back references (`(?P=sep)`, `\1`), so a
//! pattern with one used to run on fancy-regex's backtracking engine for
//! every line. fail2ban's default date templates have them
//! (`%ExY(?P<_sep>[-/.])%m(?P=_sep)%d ...`), so every filter whose log
//! carries such dates paid that on each line, and so did filters such as
//! openwebmail's and stunnel's.
//!
//! [`Checked`] compiles a relaxed form instead: each back reference is
//! replaced by a copy of the referenced group's pattern, captured. A match
//! of the relaxed form is accepted when every copy that took part matched
//! the same text as its group; the line goes to fancy-regex only when a
//! copy matched something else. Why an accepted match is the one Python
//! would find: a copy accepts every text the reference accepts (the
//! group's own text matched the group's pattern), and in the same place
//! of the same paths, so the relaxed form accepts every path the original
//! accepts, in the same order, and more. The first path it accepts, once
//! checked valid for the original, therefore has no valid path of the
//! original before it. And a line the relaxed form does not match, the
//! original cannot match either.
//!
//! Refused (left to fancy-regex): a reference to a group not closed
//! before it, and a reference inside a repeated group, where only the
//! last repetition's copy would be checked.

use crate::linear::{Linear, Spans};
use crate::scan::{class_end, group_end, opens_capture};

/// A pattern with back references, run as a relaxed linear pattern plus
/// equality checks, with fancy-regex for the lines the checks reject.
#[derive(Debug)]
pub struct Checked {
    relaxed: Linear,
    /// `(group, copy)` in the relaxed form's numbering: the copy's text
    /// must equal the group's when the copy took part.
    checks: Vec<(usize, usize)>,
    /// Each group of the original pattern, by index: its index in the
    /// relaxed form.
    map: Vec<usize>,
    fancy: Box<fancy_regex::Regex>,
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
    /// lacks, no back reference, or one refused (see the module docs).
    pub fn build(
        translated: &str,
        fancy: Box<fancy_regex::Regex>,
    ) -> Result<Checked, Box<fancy_regex::Regex>> {
        match relax(translated) {
            Some((relaxed, checks, map)) => Ok(Checked {
                relaxed,
                checks,
                map,
                fancy,
            }),
            None => Err(fancy),
        }
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
        let c = self.relaxed.captures_at(text, at)?;
        let agrees = self.checks.iter().all(|&(g, copy)| match c[copy] {
            None => true,
            Some((cs, ce)) => c[g].is_some_and(|(gs, ge)| ge <= cs && text[gs..ge] == text[cs..ce]),
        });
        if agrees {
            return Some(self.map.iter().map(|&i| c[i]).collect());
        }
        let c = self.fancy.captures_from_pos(text, at).ok()??;
        Some(c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
    }
}

/// The relaxed form of `translated` with its checks and group map (see
/// [`Checked`]).
#[allow(clippy::type_complexity)] // used once, just below
fn relax(translated: &str) -> Option<(Linear, Vec<(usize, usize)>, Vec<usize>)> {
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
            if g.close >= i || open.iter().any(|&o| repeated(b, o)) {
                return None;
            }
            out.push('(');
            out.push_str(&without_captures(&translated[g.body.0..g.body.1]));
            out.push(')');
            opened += 1;
            checks.push((map[target], opened));
            i += len;
            continue;
        }
        match b[i] {
            b'\\' => {
                let len = 1 + translated[i + 1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&translated[i..i + len]);
                i += len;
                continue;
            }
            b'[' => {
                let end = class_end(b, i)?;
                out.push_str(&translated[i..=end]);
                i = end + 1;
                continue;
            }
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
    if checks.is_empty() || map.len() != groups.len() + 1 {
        return None;
    }
    Some((Linear::build(&out).ok()?, checks, map))
}

/// The capturing groups of `p` in order (group 1 first), or `None` if
/// its parentheses do not balance.
fn capturing_groups(p: &str) -> Option<Vec<Group>> {
    let b = p.as_bytes();
    let mut groups = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => i = class_end(b, i)?,
            b'(' if opens_capture(p, i) => {
                let close = group_end(b, i)?;
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
        i += 1;
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

/// Whether the group opened at `open` is followed by a quantifier.
fn repeated(b: &[u8], open: usize) -> bool {
    group_end(b, open).is_none_or(|e| matches!(b.get(e + 1), Some(b'?' | b'*' | b'+' | b'{')))
}

/// `p` with every capturing group made non-capturing (a copy must not add
/// names or shift numbers).
fn without_captures(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let len = 1 + p[i + 1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&p[i..i + len]);
                i += len;
            }
            b'[' => {
                let end = class_end(b, i).unwrap_or(b.len() - 1);
                out.push_str(&p[i..=end]);
                i = end + 1;
            }
            b'(' if opens_capture(p, i) => {
                out.push_str("(?:");
                i += match p[i..].find('>') {
                    Some(e) if p[i..].starts_with("(?") => e + 1,
                    _ => 1,
                };
            }
            _ => {
                let len = p[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&p[i..i + len]);
                i += len;
            }
        }
    }
    out
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
    fn back_references_find_what_fancy_regex_finds() {
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
        ] {
            for text in texts {
                let (pat, got, truth) = both(p, text);
                assert!(matches!(pat, Pattern::Checked(_)), "{p}");
                assert_eq!(got, truth, "{p} on {text:?}");
            }
        }
    }

    #[test]
    fn references_it_cannot_check_are_left_to_fancy_regex() {
        for p in [
            r"^(?:(?P<a>x)(?P=a))*$", // inside a repetition
            r"^(?P<a>x)(?=y)(?P=a)",  // a look-ahead besides
        ] {
            let pat = Pattern::compile(&translate(p, false)).unwrap();
            assert!(pat.is_fancy(), "{p}");
        }
    }

    /// Broken references are refused by the compiler, never a panic.
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
}

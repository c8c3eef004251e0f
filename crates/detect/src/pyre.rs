//! Python `re` patterns (as fail2ban writes them) compiled for Rust.
//!
//! [`translate`] rewrites the places where Python's syntax means something
//! else in Rust's `regex`/`fancy-regex`:
//! - `$` outside a class: Python matches at the end *or before a final
//!   newline* (fail2ban searches `line + "\n"`), so it becomes `(?:\n?\z)`
//!   (in multi-line mode `(?m:$)`);
//! - `\Z` (Python's end of text) becomes `\z`;
//! - escaped punctuation that is an assertion in Rust (`\<`, `\>`) or not
//!   escapable there becomes the literal;
//! - `[` inside a class, and `&&`, `--`, `~~` (class set operations in
//!   Rust) are escaped;
//! - `{` that is not a repetition (`{`, `{a}`) is a literal in Python, so
//!   it is escaped; `{,n}` becomes `{0,n}`;
//! - `(?#...)` comments are dropped.
//!
//! [`Pattern::compile`] then uses the `regex` crate when it accepts the
//! result (linear time); else a checked linear form (`checked.rs`: back
//! references, look-aheads and conditionals rewritten, checked after the
//! match), and `fancy-regex` for what that refuses (look-behinds, atomic
//! groups, and the others inside repetitions). [`relax`] gives a pattern
//! that matches a superset (look-around dropped, conditionals and back
//! references widened) for a `RegexSet` prefilter.

use std::collections::HashMap;

use regex_syntax::hir::Hir;

use crate::checked::Checked;
use crate::linear::{Linear, Spans};
use crate::scan;

/// Rewrites Python regex syntax into Rust regex syntax (see module docs).
pub fn translate(p: &str, multiline: bool) -> String {
    let b: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 16);
    if multiline {
        // Python's re.MULTILINE: ^ and $ at every line.
        out.push_str("(?m)");
    }
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        let c = b[i];
        if in_class {
            match c {
                '\\' if i + 1 < b.len() => {
                    push_escape(&mut out, b[i + 1], true);
                    i += 2;
                    continue;
                }
                ']' => {
                    in_class = false;
                    out.push(']');
                }
                '[' => out.push_str("\\["),
                '&' | '-' | '~' if b.get(i + 1) == Some(&c) => {
                    out.push('\\');
                    out.push(c);
                    out.push('\\');
                    out.push(c);
                    i += 2;
                    continue;
                }
                _ => out.push(c),
            }
            i += 1;
            continue;
        }
        match c {
            '\\' if i + 1 < b.len() => {
                let n = b[i + 1];
                if n == 'Z' {
                    out.push_str("\\z");
                } else {
                    push_escape(&mut out, n, false);
                }
                i += 2;
                continue;
            }
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if b.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A leading ']' is a literal.
                if b.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            '$' => {
                out.push_str(if multiline { "$" } else { "(?:\\n?\\z)" });
            }
            '(' if b.get(i + 1) == Some(&'?') && b.get(i + 2) == Some(&'(') => {
                // Conditional on a named group: fancy-regex wants (?(<name>).
                let name: String = b[i + 3..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .collect();
                if !name.is_empty()
                    && !name.chars().all(|c| c.is_ascii_digit())
                    && b.get(i + 3 + name.chars().count()) == Some(&')')
                {
                    out.push_str(&format!("(?(<{name}>)"));
                    i += 4 + name.chars().count();
                    continue;
                }
                out.push_str("(?(");
                i += 3;
                continue;
            }
            '(' if b.get(i + 1) == Some(&'?') && b.get(i + 2) == Some(&'#') => {
                // Comment: skip to the closing parenthesis.
                while i < b.len() && b[i] != ')' {
                    i += 1;
                }
            }
            '{' => {
                let rest: String = b[i + 1..].iter().take(24).collect();
                match rest.find('}') {
                    Some(end) if is_quantifier(&rest[..end]) && i > 0 => {
                        let q = &rest[..end];
                        if let Some(m) = q.strip_prefix(',') {
                            out.push_str(&format!("{{0,{m}}}"));
                        } else {
                            out.push('{');
                            out.push_str(q);
                            out.push('}');
                        }
                        i += end + 2;
                        continue;
                    }
                    _ => out.push_str("\\{"),
                }
            }
            '}' => out.push_str("\\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

fn is_quantifier(q: &str) -> bool {
    let (a, b) = match q.split_once(',') {
        Some((a, b)) => (a, Some(b)),
        None => (q, None),
    };
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    match b {
        None => !a.is_empty() && digits(a),
        Some(b) => digits(a) && digits(b) && !(a.is_empty() && b.is_empty()),
    }
}

fn push_escape(out: &mut String, n: char, in_class: bool) {
    if n.is_ascii_alphanumeric() {
        // \d \w \s \b \A \n \t \x.. \u.. and back references \1.
        out.push('\\');
        out.push(n);
    } else if "\\.+*?()|[]{}^$#&-~".contains(n) || (in_class && n == ']') {
        out.push('\\');
        out.push(n);
    } else {
        // `\<`, `\>`, `\'`, `\/`, `\ `, `\:`... are plain literals in Python.
        out.push_str(&regex::escape(&n.to_string()));
    }
}

/// A superset of a translated pattern that the `regex` crate accepts:
/// look-around removed, conditionals made alternations, back references
/// replaced by `.*?`, atomic groups and possessive quantifiers made
/// ordinary. `None` if the result still does not parse.
pub fn relax(t: &str) -> Option<String> {
    let b: Vec<char> = t.chars().collect();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        let c = b[i];
        if in_class {
            if c == '\\' && i + 1 < b.len() {
                out.push(c);
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            if c == ']' {
                in_class = false;
            }
            out.push(c);
            i += 1;
            continue;
        }
        match c {
            '\\' if i + 1 < b.len() => {
                let n = b[i + 1];
                if n.is_ascii_digit() && n != '0' {
                    out.push_str("(?s:.*?)");
                    i += 2;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
                if n == 'k' && b.get(i + 2) == Some(&'<') {
                    while i < b.len() && b[i] != '>' {
                        i += 1;
                    }
                    out.push_str("(?s:.*?)");
                    i += 1;
                    continue;
                }
                out.push(c);
                out.push(n);
                i += 2;
                continue;
            }
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                if b.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if b.get(i) == Some(&']') {
                    out.push(']');
                    i += 1;
                }
                continue;
            }
            '(' if b.get(i + 1) == Some(&'?') => {
                let rest: String = b[i + 2..].iter().take(3).collect();
                if rest.starts_with('=')
                    || rest.starts_with('!')
                    || rest.starts_with("<=")
                    || rest.starts_with("<!")
                {
                    // Drop the whole look-around group (found in the text by
                    // its byte offset, counted back into characters).
                    let at: usize = b[..i].iter().map(|c| c.len_utf8()).sum();
                    let end = scan::group_end(t, at)?;
                    i = t[..end].chars().count() + 1;
                    // A quantifier on a look-around is meaningless; drop it.
                    while i < b.len() && "*+?".contains(b[i]) {
                        i += 1;
                    }
                    continue;
                }
                if rest.starts_with("P=") {
                    let end = b[i..].iter().position(|&x| x == ')')? + i;
                    out.push_str("(?s:.*?)");
                    i = end + 1;
                    continue;
                }
                if rest.starts_with('>') {
                    out.push_str("(?:");
                    i += 3;
                    continue;
                }
                if rest.starts_with('(') {
                    // Conditional (?(name)yes|no): either branch.
                    let close = b[i + 3..].iter().position(|&x| x == ')')? + i + 3;
                    out.push_str("(?:");
                    i = close + 1;
                    continue;
                }
                out.push(c);
                i += 1;
            }
            '*' | '+' | '?' | '}' if b.get(i + 1) == Some(&'+') => {
                out.push(c);
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Parsed, not compiled: every caller compiles it (or reads its syntax)
    // and copes with a failure, and compiling here cost a filter like
    // sshd.conf a third of its loading time.
    regex_syntax::Parser::new().parse(&out).ok().map(|_| out)
}

/// A compiled pattern: the `regex` crate when possible, else fancy-regex.
#[derive(Debug)]
pub enum Pattern {
    /// Compiled by the `regex` crate (linear time).
    Std(Box<Linear>),
    /// Back references, look-aheads and conditionals: a linear relaxed form, checked,
    /// with fancy-regex for the lines the checks reject (see `checked.rs`).
    Checked(Box<Checked>),
    /// Compiled by fancy-regex, for what `checked.rs` cannot check or
    /// rewrite (bounded backtracking).
    Fancy(Box<fancy_regex::Regex>),
}

/// Named groups of one match: name -> (start, end) or absent.
#[derive(Debug, Default, Clone)]
pub struct Groups<'t> {
    /// The text matched against.
    pub text: &'t str,
    /// Byte offset where the match starts.
    pub start: usize,
    /// Byte offset where the match ends.
    pub end: usize,
    /// Each group's index and byte span, `None` if it took no part.
    pub named: Vec<(usize, Option<(usize, usize)>)>,
}

impl Pattern {
    /// Compiles an already translated pattern.
    pub fn compile(translated: &str) -> Result<Pattern, PatternError> {
        Self::compile_with(translated, true)
    }

    /// Like [`compile`](Self::compile), but what the `regex` crate refuses
    /// goes to fancy-regex alone, unchecked: for a pattern asked only when
    /// a faster form of it could not decide, where a checked form would be
    /// one more regex to compile at start for nothing.
    pub fn compile_for_rare_use(translated: &str) -> Result<Pattern, PatternError> {
        Self::compile_with(translated, false)
    }

    fn compile_with(translated: &str, checked: bool) -> Result<Pattern, PatternError> {
        check_shape(translated)?;
        match Linear::build(translated) {
            Ok(r) => Ok(Pattern::Std(Box::new(r))),
            Err(std_err) => match fancy_regex::RegexBuilder::new(translated)
                .backtrack_limit(200_000)
                .build()
            {
                Ok(r) if !checked => Ok(Pattern::Fancy(Box::new(r))),
                Ok(r) => match Checked::build(translated, Box::new(r)) {
                    Ok(c) => Ok(Pattern::Checked(Box::new(c))),
                    Err(r) => Ok(Pattern::Fancy(r)),
                },
                Err(error) => Err(PatternError::Invalid {
                    error: Box::new(error),
                    regex: first_line(&std_err.to_string()),
                }),
            },
        }
    }

    /// True if the pattern runs on fancy-regex alone: look-behinds, or
    /// what `checked.rs` cannot check or rewrite.
    pub fn is_fancy(&self) -> bool {
        matches!(self, Pattern::Fancy(_))
    }

    /// Group names in index order (index 0 is the whole match).
    pub fn names(&self) -> Vec<Option<String>> {
        match self {
            Pattern::Std(r) => r.names(),
            Pattern::Checked(r) => r.names(),
            Pattern::Fancy(r) => r.capture_names().map(|n| n.map(String::from)).collect(),
        }
    }

    /// True if the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Std(r) => r.is_match(text),
            Pattern::Checked(r) => r.captures_at(text, 0).is_some(),
            Pattern::Fancy(r) => r.is_match(text).unwrap_or(false),
        }
    }

    /// The first match's group spans, by index.
    pub fn captures(&self, text: &str) -> Option<Spans> {
        self.captures_at(text, 0)
    }

    /// The patterns a checked pattern is searched as, one per outcome of
    /// the choice its conditionals were rewritten into (see
    /// `outcomes.rs`), each with its own groups.
    pub(crate) fn outcomes(&self) -> Option<&[Hir]> {
        match self {
            Pattern::Checked(r) => r.outcomes(),
            _ => None,
        }
    }

    /// What [`captures`](Self::captures) finds in `text` (all ASCII), when
    /// a leftmost-first DFA anchored at the start, of this pattern among
    /// others before and after it, named it and found its match to end at
    /// `end`: its groups, without a search for where the match lies (see
    /// `backtrack.rs`). The DFA's pattern is this one as written, or the
    /// `outcome`'s of its [`outcomes`](Self::outcomes); any other answer
    /// is found by [`captures`](Self::captures).
    ///
    /// The groups are set in `out`, whose room serves line after line;
    /// `None` if there is no match (`out` then holds nothing to read).
    pub(crate) fn captures_placed(
        &mut self,
        text: &str,
        outcome: Option<usize>,
        end: usize,
        out: &mut Spans,
    ) -> Option<()> {
        match (self, outcome) {
            (Pattern::Std(r), None) => *out = r.captures_placed(text, end)?,
            (Pattern::Checked(r), Some(k)) => return r.captures_placed(text, k, end, out),
            (p, _) => *out = p.captures(text)?,
        }
        Some(())
    }

    /// The group spans of the first match starting at byte `at` or later.
    pub fn captures_at(&self, text: &str, at: usize) -> Option<Spans> {
        match self {
            Pattern::Std(r) => r.captures_at(text, at),
            Pattern::Checked(r) => r.captures_at(text, at),
            Pattern::Fancy(r) => {
                let c = r.captures_from_pos(text, at).ok()??;
                Some(c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
            }
        }
    }
}

/// Why a (translated) Python pattern cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// A repetition of a repetition, which Python refuses too.
    #[error(
        "a repetition of a repetition at byte {at} (\"multiple repeat\" in Python): put the first in a group, as in (?:a+)*, or drop one"
    )]
    RepeatedRepeat {
        /// Where the second repetition starts, in the translated pattern.
        at: usize,
    },
    /// Groups nested so deep that compiling them would overflow the stack.
    #[error("groups nested deeper than {MAX_DEPTH}: flatten the pattern")]
    TooDeep,
    /// Neither regex crate takes the pattern: fancy-regex's explanation,
    /// then the `regex` crate's.
    #[error("{error} ({regex})")]
    Invalid {
        /// fancy-regex's error.
        #[source]
        error: Box<fancy_regex::Error>,
        /// The last line of the `regex` crate's error.
        regex: String,
    },
}

/// Groups nested deeper than this are refused. The regex crates compile
/// by recursion, one frame set per level: hundreds of levels overflow a
/// thread's stack and abort the process. fail2ban's filters nest a few.
const MAX_DEPTH: usize = 64;

/// Refuses what Python's `re` refuses and the regex crates would take down
/// the process with: a repetition of a repetition (`a**`, `a{2}+*`, Python's
/// "multiple repeat"; a lazy `?` or possessive `+` after one is its
/// modifier) and groups nested over 64 (`MAX_DEPTH`).
pub fn check_shape(t: &str) -> Result<(), PatternError> {
    let b = t.as_bytes();
    let mut depth = 0usize;
    // The previous item was a repetition (and its modifier, if any).
    let mut repeated = false;
    let mut modified = false;
    // Pieces before this byte belong to the item already read (the rest
    // of a counted repetition, the `?` of `(?`).
    let mut skip_to = 0;
    for (i, piece) in scan::pieces(t, 0) {
        if i < skip_to {
            continue;
        }
        let scan::Piece::Byte(c) = piece else {
            // An escape or a class: an item of its own.
            repeated = false;
            continue;
        };
        let quantifier = match c {
            b'*' | b'+' | b'?' => Some(1),
            b'{' => repetition_len(&b[i..]),
            _ => None,
        };
        if let Some(len) = quantifier {
            if repeated && !modified && (c == b'?' || c == b'+') {
                modified = true;
            } else if repeated {
                return Err(PatternError::RepeatedRepeat { at: i });
            } else {
                repeated = true;
                modified = false;
            }
            skip_to = i + len;
            continue;
        }
        repeated = false;
        match c {
            b'(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(PatternError::TooDeep);
                }
                // `(?` opens flags or a group kind: its `?` is no repetition.
                if b.get(i + 1) == Some(&b'?') {
                    skip_to = i + 2;
                }
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The length of a counted repetition (`{n}`, `{n,}`, `{n,m}`) at the start
/// of `b`, if it is one.
fn repetition_len(b: &[u8]) -> Option<usize> {
    let end = b.iter().position(|&c| c == b'}')?;
    let inner = &b[1..end];
    let ok = !inner.is_empty()
        && inner[0].is_ascii_digit()
        && inner.iter().all(|c| c.is_ascii_digit() || *c == b',')
        && inner.iter().filter(|&&c| c == b',').count() <= 1;
    ok.then_some(end + 1)
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

/// Group name -> index, for a compiled pattern.
pub fn name_index(p: &Pattern) -> HashMap<String, usize> {
    p.names()
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (n, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_python_refuses_are_refused() {
        for p in [
            "a*",
            "a*?",
            "a++",
            "a{2}?",
            "(?:a)*",
            "(?i)x",
            "(?P<x>a)?",
            "[*+]*",
            r"\**",
            r"[\]*]+",
            "a[**",
            "é*",
            "(a|b)+c{1,3}",
        ] {
            assert!(check_shape(p).is_ok(), "{p}");
        }
        for (p, at) in [
            ("a**", 2),
            ("a{2}+*", 5),
            ("a*??", 3),
            ("[a]+{2}", 4),
            (r"\d?*", 3),
        ] {
            assert!(
                matches!(check_shape(p), Err(PatternError::RepeatedRepeat { at: a }) if a == at),
                "{p}"
            );
        }
        let nested = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(check_shape(&nested(MAX_DEPTH)).is_ok());
        assert!(matches!(
            check_shape(&nested(MAX_DEPTH + 1)),
            Err(PatternError::TooDeep)
        ));
        // Parentheses in a class or escaped do not nest.
        assert!(check_shape(&format!("{}a", r"[(]\(".repeat(100))).is_ok());
    }

    #[test]
    fn translations() {
        assert_eq!(translate(r"^a$", false), r"^a(?:\n?\z)");
        assert_eq!(translate(r"^a$", true), r"(?m)^a$");
        assert_eq!(translate(r"[$]\$", false), r"[$]\$");
        assert_eq!(translate(r"a\Z", false), r"a\z");
        assert_eq!(translate(r"\<x\>", false), r"<x>");
        assert_eq!(translate(r"[[\]a-z&&]", false), r"[\[\]a-z\&\&]");
        assert_eq!(translate(r"a{2}b{,3}c{x}{", false), r"a{2}b{0,3}c\{x\}\{");
        assert_eq!(translate(r"[]a]", false), r"[\]a]");
        assert_eq!(translate(r"a(?#note)b", false), r"ab");
        assert_eq!(translate(r"\'\/\ ", false), r"'/ ");
    }

    #[test]
    fn compiles_python_features() {
        let p = Pattern::compile(&translate(r"^(?P<a>x)(?P=a)$", false)).unwrap();
        assert!(matches!(p, Pattern::Checked(_)));
        assert!(p.is_match("xx\n"));
        let p = Pattern::compile(&translate(r"^(?P<c>i )?u(?(c)1|2)$", false)).unwrap();
        assert!(p.is_match("i u1"));
        assert!(p.is_match("u2"));
        assert!(!p.is_match("u1"));
        let p = Pattern::compile(&translate(r"^foo\s+$", false)).unwrap();
        assert!(!p.is_fancy());
        assert!(
            p.is_match("foo\n"),
            "Python's $ matches before the final newline"
        );
    }

    /// Shapes that would overflow the stack of a thread (2 MiB, a debug
    /// build) are refused with an error; real filters' shapes are not.
    #[test]
    fn deep_or_stacked_patterns_are_refused_not_fatal() {
        let results = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let bad = [
                    format!("a{}", "*".repeat(1000)),
                    "a**".to_string(),
                    "a{2}{3}".to_string(),
                    "a+?*".to_string(),
                    format!("{}a{}", "(".repeat(1000), ")".repeat(1000)),
                    format!("{}a{}", "(?=".repeat(1000), ")".repeat(1000)),
                ];
                let good = [
                    format!("{}a{}", "(?:".repeat(MAX_DEPTH), ")*".repeat(MAX_DEPTH)),
                    r"a*?b+?c??d{2,3}?e*+[*+?{]{2}\*\+(?:x)?".to_string(),
                    r"^\s*(?P<user>\S+)\{1}x{,2}".to_string(),
                ];
                let bad: Vec<bool> = bad
                    .iter()
                    .map(|p| Pattern::compile(&translate(p, false)).is_err())
                    .collect();
                let good: Vec<Result<(), PatternError>> = good
                    .iter()
                    .map(|p| Pattern::compile(&translate(p, false)).map(|_| ()))
                    .collect();
                (bad, good)
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(results.0.iter().all(|&refused| refused), "{:?}", results.0);
        for r in results.1 {
            r.unwrap();
        }
    }

    #[test]
    fn relaxed_is_a_superset() {
        let t = translate(r"^(?P<a>x)(?!y)(?P=a)(?(a)b|c)(?>d)e*+$", false);
        let r = relax(&t).unwrap();
        let re = regex::Regex::new(&r).unwrap();
        assert!(re.is_match("xxbde"));
        assert!(re.is_match("xxcd"));
    }
}

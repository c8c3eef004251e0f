//! A pattern the `regex` crate runs, with its ASCII twin.

use std::sync::OnceLock;

use crate::backtrack::Backtrack;
use crate::dfa;

/// A pattern the `regex` crate compiled twice: as written, with Unicode
/// classes (Python's `re` on text is Unicode-aware), and with Unicode off,
/// for lines that are all ASCII.
///
/// Why the second is exact: on ASCII text every Unicode class (`\w`, `\S`,
/// `\d`, a negated class, `.`) matches exactly its ASCII members, `\b` sees
/// the same word characters, and case folding cannot reach the non-ASCII
/// letters it would add (the Kelvin sign, the long s) because the text holds
/// none. Why it is worth it: a Unicode `\S` or `\w` is hundreds of NFA
/// states of UTF-8 sequences, an ASCII one a single byte class, and finding
/// groups (a bounded backtracker that clears a visited set of states times
/// line length per search) costs in proportion.
#[derive(Debug)]
pub struct Linear {
    /// The translated pattern.
    pattern: Box<str>,
    /// Group names in index order.
    names: Vec<Option<String>>,
    /// Compiled at the first text that is not all ASCII (logs seldom hold
    /// one, and a Unicode class costs most of a pattern's compile time);
    /// `None` inside if it then exceeds the size limit (see
    /// [`Linear::build`]).
    unicode: OnceLock<Option<regex::Regex>>,
    /// The ASCII twin, compiled at once (it is small); `None` when Unicode
    /// cannot be turned off (a non-ASCII class).
    ascii: Option<regex::bytes::Regex>,
    /// The ASCII twin for a backtracking search of a match already placed
    /// (see [`Linear::captures_placed`]), built at the first such search;
    /// `None` inside if it cannot be.
    placed: Option<Option<Backtrack>>,
}

/// Each group's byte span, by group index; `None` when it took no part.
pub type Spans = Vec<Option<(usize, usize)>>;

impl Linear {
    /// Compiles a translated pattern (see `pyre::translate`).
    ///
    /// Only its ASCII twin is compiled now, when it has one: the pattern as
    /// written is parsed (which rejects what the `regex` crate rejects as
    /// syntax) and compiled at the first text that needs it. Were it then
    /// to exceed the size limit where its twin did not (a Unicode class
    /// repeated hundreds of times), texts that are not all ASCII would find
    /// no match, and a warning says so.
    pub fn build(translated: &str) -> Result<Linear, regex::Error> {
        let ascii = compile_ascii(translated);
        let unicode = OnceLock::new();
        let names = match &ascii {
            Some(a) if regex_syntax::Parser::new().parse(translated).is_ok() => {
                a.capture_names().map(|n| n.map(String::from)).collect()
            }
            _ => {
                let u = compile_unicode(translated)?;
                let names = u.capture_names().map(|n| n.map(String::from)).collect();
                let _ = unicode.set(Some(u));
                names
            }
        };
        Ok(Linear {
            pattern: translated.into(),
            names,
            unicode,
            ascii,
            placed: None,
        })
    }

    /// The twin for `text`: the ASCII one when `text` is ASCII (`ascii`).
    fn ascii_for(&self, ascii: bool) -> Option<&regex::bytes::Regex> {
        self.ascii.as_ref().filter(|_| ascii)
    }

    /// The pattern as written, compiled.
    fn unicode(&self) -> Option<&regex::Regex> {
        self.unicode
            .get_or_init(|| match compile_unicode(&self.pattern) {
                Ok(u) => Some(u),
                Err(error) => {
                    tracing::warn!(
                        pattern = %self.pattern,
                        %error,
                        "this pattern finds no match in lines that are not all ASCII"
                    );
                    None
                }
            })
            .as_ref()
    }

    /// The pattern as compiled.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Group names in index order (index 0 is the whole match).
    pub fn names(&self) -> Vec<Option<String>> {
        self.names.clone()
    }

    /// True if the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        match self.ascii_for(text.is_ascii()) {
            Some(a) => a.is_match(text.as_bytes()),
            None => self.unicode().is_some_and(|u| u.is_match(text)),
        }
    }

    /// The group spans of the first match starting at byte `at` or later.
    pub fn captures_at(&self, text: &str, at: usize) -> Option<Spans> {
        self.captures_known(text, text.is_ascii(), at)
    }

    /// [`captures_at`](Self::captures_at) for a caller that already knows
    /// whether `text` is all ASCII.
    pub fn captures_known(&self, text: &str, ascii: bool, at: usize) -> Option<Spans> {
        match self.ascii_for(ascii) {
            Some(a) => {
                let c = a.captures_at(text.as_bytes(), at)?;
                Some(c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
            }
            None => {
                let c = self.unicode()?.captures_at(text, at)?;
                Some(c.iter().map(|m| m.map(|m| (m.start(), m.end()))).collect())
            }
        }
    }

    /// What [`captures_at`](Self::captures_at) finds at byte 0 of `text`
    /// (all ASCII), when a leftmost-first DFA anchored at the start, of
    /// this pattern among others before and after it, named it and found
    /// its match to end at `end`: the groups come from a backtracking
    /// search of `text[..end]` alone (see `backtrack.rs`).
    pub(crate) fn captures_placed(&mut self, text: &str, end: usize) -> Option<Spans> {
        let pattern = &self.pattern;
        let placed = self
            .placed
            .get_or_insert_with(|| Backtrack::new(&[dfa::parse(pattern)?]))
            .as_mut()
            .and_then(|p| p.captures(text.as_bytes(), 0..end, 0))
            .map(|caps| {
                (0..caps.group_len())
                    .map(|g| caps.get_group(g).map(|s| (s.start, s.end)))
                    .collect::<Spans>()
            });
        match placed {
            Some(spans) => {
                debug_assert_eq!(
                    Some(&spans),
                    self.captures_known(text, true, 0).as_ref(),
                    "the end given is where this pattern's DFA finds its match to end"
                );
                Some(spans)
            }
            None => self.captures_known(text, true, 0),
        }
    }
}

/// The most memory one compiled regex may take.
const SIZE_LIMIT: usize = 32 << 20;

fn compile_unicode(translated: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(translated)
        .size_limit(SIZE_LIMIT)
        .build()
}

/// `translated` with Unicode off, or `None` if that is not allowed (a
/// non-ASCII class) or too big.
fn compile_ascii(translated: &str) -> Option<regex::bytes::Regex> {
    regex::bytes::RegexBuilder::new(&format!("(?-u){translated}"))
        .size_limit(SIZE_LIMIT)
        .build()
        .ok()
}

/// A pattern asked only where its match starts at a given position, and
/// only where that match ends (anchored DFA searches), with its ASCII twin
/// (see [`Linear`]).
#[derive(Debug)]
pub struct StartingAt {
    pattern: Box<str>,
    /// The pattern's bytes when it is plain text (a look-ahead such as
    /// `(?! from )`): compared or found with `memchr`, without a regex
    /// search's setup on every line.
    literal: Option<memchr::memmem::Finder<'static>>,
    unicode: regex_automata::meta::Regex,
    /// Compiled at the first ASCII text.
    ascii: OnceLock<Option<regex_automata::meta::Regex>>,
}

impl StartingAt {
    /// Compiles a translated pattern, or `None` if the `regex` crate
    /// cannot.
    pub fn new(translated: &str) -> Option<StartingAt> {
        let unicode = regex_automata::meta::Regex::builder()
            .build(translated)
            .ok()?;
        let literal = regex_syntax::parse(translated)
            .ok()
            .and_then(|hir| match hir.into_kind() {
                regex_syntax::hir::HirKind::Literal(lit) => {
                    Some(memchr::memmem::Finder::new(&lit.0).into_owned())
                }
                _ => None,
            });
        Some(StartingAt {
            pattern: translated.into(),
            literal,
            unicode,
            ascii: OnceLock::new(),
        })
    }

    /// The translated pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Where the first match starting exactly at byte `at` of `text` ends;
    /// `ascii` says whether `text` is all ASCII.
    pub fn end_from(&self, text: &str, ascii: bool, at: usize) -> Option<usize> {
        if let Some(lit) = &self.literal {
            let needle = lit.needle();
            return text.as_bytes()[at..]
                .starts_with(needle)
                .then_some(at + needle.len());
        }
        self.search(text, ascii, at, regex_automata::Anchored::Yes)
            .map(|m| m.end())
    }

    /// The first position from byte `at` on where a match starts (one
    /// search, linear in the text, however many positions it rules out).
    pub fn first_start(&self, text: &str, ascii: bool, at: usize) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return lit.find(&text.as_bytes()[at..]).map(|p| at + p);
        }
        self.search(text, ascii, at, regex_automata::Anchored::No)
            .map(|m| m.start())
    }

    fn search(
        &self,
        text: &str,
        ascii: bool,
        at: usize,
        anchored: regex_automata::Anchored,
    ) -> Option<regex_automata::Match> {
        let input = regex_automata::Input::new(text)
            .range(at..)
            .anchored(anchored);
        let twin = ascii.then(|| {
            self.ascii.get_or_init(|| {
                let syntax = regex_automata::util::syntax::Config::new()
                    .unicode(false)
                    .utf8(false);
                regex_automata::meta::Regex::builder()
                    .syntax(syntax)
                    .build(&self.pattern)
                    .ok()
            })
        });
        match twin.and_then(Option::as_ref) {
            Some(a) => a.search(&input),
            None => self.unicode.search(&input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_as_written_answers_texts_that_are_not_ascii() {
        let l = Linear::build(r"^user (?P<user>\w+) from (?P<host>\S+)$").unwrap();
        assert_eq!(l.names(), [None, Some("user".into()), Some("host".into())]);
        // Only the ASCII twin exists until a text needs the other.
        assert!(l.unicode.get().is_none());
        assert_eq!(
            l.captures_at("user bob from 198.51.100.7", 0),
            Some(vec![Some((0, 26)), Some((5, 8)), Some((14, 26))])
        );
        assert!(l.unicode.get().is_none());
        // `\w` takes `é` only as Unicode does.
        let t = "user josé from 198.51.100.7";
        assert_eq!(
            l.captures_at(t, 0),
            Some(vec![Some((0, t.len())), Some((5, 10)), Some((16, t.len()))])
        );
        assert!(l.is_match(t));
        assert!(l.unicode.get().is_some());
    }

    /// A match placed by a DFA has the groups the `regex` crate finds,
    /// also where the text is longer than the backtracker takes (a crafted
    /// line of 1.2 MB).
    #[test]
    fn a_placed_match_has_the_regex_crates_groups() {
        let p = r"^(?:Connection closed|Disconnected) (?:by|from)(?: user (?P<user>\S+|.*?))? (?P<host>\S+)(?: port \d+)?\s*$";
        let mut l = Linear::build(p).unwrap();
        let whole = regex::bytes::Regex::new(&format!("(?-u){p}")).unwrap();
        for t in [
            "Disconnected from user root 198.51.100.7 port 22".to_string(),
            "Disconnected from user a b 198.51.100.7".to_string(),
            "Connection closed by 198.51.100.7 port 22 ".to_string(),
            format!(
                "Disconnected from user {} 198.51.100.7",
                "x ".repeat(600_000)
            ),
        ] {
            let end = whole.find(t.as_bytes()).unwrap().end();
            let placed = l.captures_placed(&t, end);
            assert_eq!(placed, l.captures_at(&t, 0), "{} bytes", t.len());
            assert!(placed.is_some());
        }
        assert!(l.placed.as_ref().is_some_and(Option::is_some));
    }

    /// A pattern of plain text (`(?! from )`'s) is compared and found
    /// byte by byte, as the `regex` crate would: at every place of texts
    /// with it, without it, and cut short inside it.
    #[test]
    fn plain_text_is_found_as_the_regex_crate_finds_it() {
        for (p, plain) in [
            (" from ", true),
            ("é x", true),
            (r"\.x", true),
            (" (?i)from", false),
            ("a+", false),
        ] {
            let s = StartingAt::new(p).unwrap();
            assert_eq!(s.literal.is_some(), plain, "{p}");
            let re = regex_automata::meta::Regex::new(p).unwrap();
            for text in [
                "user from x from ",
                " fro",
                "é x é x",
                ".x",
                "a FROM",
                "aaa",
                "",
            ] {
                for at in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                    let input = |a| regex_automata::Input::new(text).range(at..).anchored(a);
                    let ascii = text.is_ascii();
                    assert_eq!(
                        s.end_from(text, ascii, at),
                        re.search(&input(regex_automata::Anchored::Yes))
                            .map(|m| m.end()),
                        "{p} {text:?} {at}"
                    );
                    assert_eq!(
                        s.first_start(text, ascii, at),
                        re.search(&input(regex_automata::Anchored::No))
                            .map(|m| m.start()),
                        "{p} {text:?} {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn what_the_regex_crate_rejects_as_syntax_is_rejected_at_once() {
        // A look-ahead: syntax the `regex` crate has not.
        assert!(Linear::build(r"^a(?=b)").is_err());
        // A class only Unicode has: no ASCII twin, so compiled now.
        let l = Linear::build(r"^\p{Greek}+$").unwrap();
        assert!(l.unicode.get().is_some());
        assert!(l.is_match("αβγ"));
        assert!(!l.is_match("abc"));
        // Too big as written, where the twin is small: ASCII lines are
        // still answered, the others find no match (with a warning).
        let l = Linear::build(r"^\w{5000}$").unwrap();
        assert!(l.is_match(&"a".repeat(5000)));
        assert!(!l.is_match(&"é".repeat(5000)));
        assert!(l.unicode.get().is_some_and(Option::is_none));
    }
}

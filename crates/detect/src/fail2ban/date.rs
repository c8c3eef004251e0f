//! fail2ban's date detection, which finds the timestamp in a line so it can
//! be cut out before the failregex is matched.
//!
//! The templates are built exactly as fail2ban builds them (its default
//! list, `{^LN-BEG}` anchoring, `{DATE}`, `{UNB}`, `{NONE}`, `EPOCH`,
//! `TAI64N`, strptime-like `%` directives with fail2ban's `Ex` variants,
//! word-boundary guards). Choosing among templates is simplified: the
//! template that matched last is tried first; otherwise the first
//! line-anchored match wins, else the leftmost.

use std::sync::{Arc, LazyLock, OnceLock};

use regex_automata::{Anchored, Input, meta};

use super::Error;
use crate::dfa::{Dfas, RuleDfa};
use crate::pyre::{Pattern, translate};
use crate::scan::group_end;

/// fail2ban's default date templates (`datedetector.py`).
const DEFAULT_TEMPLATES: &[&str] = &[
    r"%ExY(?P<_sep>[-/.])%m(?P=_sep)%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    r"%d(?P<_sep>[-/])%m(?P=_sep)(?:%ExY|%Exy) %k:%M:%S",
    r"%d(?P<_sep>[-/])%b(?P=_sep)%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    r"EPOCH",
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"%Exy%Exm%Exd  ?%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"^%b-%d-%Exy %k:%M:%S",
    r"%ExY%Exm%Exd(?:T|  ?)%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"TAI64N",
];

const TZ_ABBR: &str = r"[A-Z](?:[A-Z]{2,4})?";

fn directive(key: &str) -> Option<String> {
    let v = match key {
        "%" => "%".to_string(),
        "a" => r"(?P<a>mon|tue|wed|thu|fri|sat|sun)".into(),
        "A" => r"(?P<A>wednesday|thursday|saturday|tuesday|monday|friday|sunday)".into(),
        "b" => r"(?P<b>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)".into(),
        "B" => r"(?P<B>september|february|november|december|january|october|august|march|april|june|july|may)".into(),
        "d" => r"(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])".into(),
        "f" => r"(?P<f>[0-9]{1,6})".into(),
        "H" => r"(?P<H>[0-1]?\d|2[0-3])".into(),
        "I" => r"(?P<I>1[0-2]|0[1-9]|[1-9])".into(),
        "j" => r"(?P<j>36[0-6]|3[0-5]\d|[1-2]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9])".into(),
        "k" => r" ?(?P<H>[0-2]?\d)".into(),
        "l" => r" ?(?P<I>1?\d)".into(),
        "m" => r"(?P<m>0?[1-9]|1[0-2])".into(),
        "M" => r"(?P<M>[0-5]?\d)".into(),
        "p" => r"(?P<p>am|pm)".into(),
        "S" => r"(?P<S>[0-5]?\d|6[0-1])".into(),
        "u" => r"(?P<u>[1-7])".into(),
        "w" => r"(?P<w>[0-6])".into(),
        "U" => r"(?P<U>5[0-3]|[0-4]\d|\d)".into(),
        "W" => r"(?P<W>5[0-3]|[0-4]\d|\d)".into(),
        "y" => r"(?P<y>\d\d)".into(),
        "Y" => r"(?P<Y>\d{4})".into(),
        "z" => r"(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)".into(),
        "Z" => r"(?P<Z>Z|[A-Z]{3,5})".into(),
        "ExH" => r"(?P<H>[0-1]\d|2[0-3])".into(),
        "ExM" => r"(?P<M>[0-5]\d)".into(),
        "ExS" => r"(?P<S>[0-5]\d|6[0-1])".into(),
        "ExY" => r"(?P<Y>20[0-3]\d)".into(),
        "ExZ" => format!(r"(?P<Z>{TZ_ABBR})"),
        "Exd" => r"(?P<d>[1-2]\d|0[1-9]|3[0-1])".into(),
        "Exk" => r" ?(?P<H>[0-1]?\d|2[0-3])".into(),
        "Exl" => r" ?(?P<I>1[0-2]|\d)".into(),
        "Exm" => r"(?P<m>0[1-9]|1[0-2])".into(),
        "Exy" => r"(?P<y>\d{2})".into(),
        "Exz" => format!(r"(?P<z>(?:{TZ_ABBR})?[+-][01]\d(?::?\d{{2}})?|{TZ_ABBR})"),
        _ => return None,
    };
    Some(v)
}

/// Replaces `%X` directives; an error names an unknown one.
fn expand_directives(p: &str) -> Result<(String, bool), Error> {
    let mut out = String::new();
    let mut alpha = false;
    let mut rest = p;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let key3: String = rest.chars().take(3).collect();
        let key1: String = rest.chars().take(1).collect();
        if key3.len() == 3 && key3.starts_with("Ex") && directive(&key3).is_some() {
            out.push_str(&directive(&key3).unwrap());
            rest = &rest[3..];
        } else if let Some(v) = directive(&key1) {
            if "aAbBpc".contains(key1.as_str()) {
                alpha = true;
            }
            out.push_str(&v);
            rest = &rest[key1.len()..];
        } else {
            return Err(Error::DateDirective {
                directive: key1,
                pattern: p.to_string(),
            });
        }
    }
    out.push_str(rest);
    Ok((out, alpha))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wb {
    No,
    Yes,
    Start,
}

struct Template {
    name: String,
    /// The translated pattern, compiled at its first use: of fail2ban's 31
    /// default templates, a log meets one or two, and compiling them all
    /// cost each filter about 40 ms and 10 MB at start.
    translated: String,
    forms: OnceLock<Option<Forms>>,
    group: usize,
    line_begin: bool,
    /// The date can only start the line, or follow at most two non-word
    /// characters at its start (`^(?:\W{0,2})?(date)`).
    at_start: bool,
}

/// A template's compiled patterns.
struct Forms {
    fast: Option<Fast>,
    full: Pattern,
}

/// A template's fast form: without the boundary look-aheads, which are
/// checked by hand.
struct Fast {
    pattern: Pattern,
    /// For a form that is `^(?:\W{0,2})?(DATE)` and nothing more (most
    /// templates that start lines), DATE alone, searched anchored (see
    /// [`Fast::leading_date`]): one regex, or one per separator character
    /// when DATE repeats its separator with a back reference.
    leading: Option<Vec<meta::Regex>>,
    /// Their patterns, for the DFAs a [`DateDetector`] searches them with.
    leading_patterns: Vec<String>,
    /// Whether the boundary before the date, and the one after it, must be
    /// checked.
    check_begin: bool,
    check_end: bool,
}

/// The start of a line-starting template's fast form.
const LEADING: &str = r"^(?:\W{0,2})?(";

impl Fast {
    /// The match of `^(?:\W{0,2})?(DATE)` in an ASCII `line`, as (start,
    /// date's start, date's end), found without finding groups: a
    /// backtracking search takes as many of the at most two leading
    /// non-word characters as it can and then DATE's first way of
    /// matching, so the first of 2, 1, 0 leading characters after which
    /// DATE matches (anchored) is the place, and DATE's end the match's.
    ///
    /// DATE given as one regex per separator character (see
    /// [`separator_branches`]) matches where one of them does. If only one
    /// does, its match is DATE's: DATE's first way of matching uses some
    /// separator, and that one's regex has the same ways with that
    /// separator in the same order. If several do, `Err`: the groups must
    /// tell.
    fn leading_date(
        leading: &[meta::Regex],
        line: &str,
    ) -> Result<Option<(usize, usize, usize)>, ()> {
        Self::leading_date_by(leading.len(), line, |j, k| {
            let input = Input::new(line).range(k..).anchored(Anchored::Yes);
            Ok(leading[j].search(&input).map(|m| m.end()))
        })
    }

    /// [`leading_date`](Self::leading_date) with `end(j, k)`, where the
    /// match of DATE's regex `j` anchored at byte `k` ends (`Err` if the
    /// search failed).
    fn leading_date_by(
        regexes: usize,
        line: &str,
        mut end: impl FnMut(usize, usize) -> Result<Option<usize>, ()>,
    ) -> Result<Option<(usize, usize, usize)>, ()> {
        let lead = line
            .bytes()
            .take(2)
            .take_while(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .count();
        for k in (0..=lead).rev() {
            let mut found = None;
            for j in 0..regexes {
                if let Some(e) = end(j, k)? {
                    if found.is_some() {
                        return Err(());
                    }
                    found = Some(e);
                }
            }
            if let Some(e) = found {
                return Ok(Some((0, k, e)));
            }
        }
        Ok(None)
    }

    /// [`leading_date`](Self::leading_date) with DATE's regexes as the
    /// DFAs `built` of `dfas` (from [`leading_dfas`](Self::leading_dfas)).
    fn leading_date_by_dfa(
        dfas: &mut Dfas,
        built: &mut [RuleDfa],
        line: &str,
    ) -> Result<Option<(usize, usize, usize)>, ()> {
        Self::leading_date_by(built.len(), line, |j, k| {
            let found = dfas.search(&mut built[j], &line.as_bytes()[k..])?;
            Ok(found.map(|(_, e)| k + e))
        })
    }

    /// The leading DATE regexes as DFAs of `dfas` (see
    /// [`DateDetector::leading_dfas`]).
    fn leading_dfas(&self, dfas: &mut Dfas) -> Option<Vec<RuleDfa>> {
        self.leading_patterns
            .iter()
            .map(|p| dfas.starting_here(p))
            .collect()
    }
}

/// `date` with its one back reference to a group of one character of a
/// short set (`(?P<_sep>[-/.])…(?P=_sep)`, how fail2ban's templates repeat
/// a separator) written out: one pattern per character, that character in
/// place of the group and of the reference. `None` for any other shape.
fn separator_branches(date: &str) -> Option<Vec<String>> {
    let at = date.find("(?P=")?;
    let name = &date[at + 4..at + date[at..].find(')')?];
    let reference = format!("(?P={name})");
    let head = format!("(?P<{name}>[");
    let open = date.find(&head)? + head.len();
    let chars = &date[open..open + date[open..].find("])")?];
    let group = format!("{head}{chars}])");
    let simple = |c: char| c.is_ascii_punctuation() && !"\\[]^".contains(c);
    if chars.is_empty()
        || chars.len() > 4
        || !chars.chars().all(simple)
        || chars[1..].contains('-')
        || date.matches(&group).count() != 1
        || date.matches(&reference).count() != 1
        || date.matches("(?P=").count() != 1
    {
        return None;
    }
    Some(
        chars
            .chars()
            .map(|c| {
                let c = regex_syntax::escape(&c.to_string());
                date.replacen(&group, &c, 1).replacen(&reference, &c, 1)
            })
            .collect(),
    )
}

impl Template {
    fn compile(&self) -> Result<Forms, Error> {
        let translated = &self.translated;
        // Fast form: drop the leading and trailing boundary guards.
        let mut core = translated.clone();
        let mut gf = String::new();
        if core.starts_with("(?")
            && !core.starts_with("(?=")
            && !core.starts_with("(?:")
            && let Some(e) = core.find(')')
        {
            gf = core[..=e].to_string();
            core = core[e + 1..].to_string();
        }
        let sb = core.starts_with(r"(?=^|\b|\W)");
        if sb {
            core = core[r"(?=^|\b|\W)".len()..].to_string();
        }
        let translated_end = r"(?=\b|\W|(?:\n?\z))";
        let se = core.ends_with(translated_end);
        if se {
            core.truncate(core.len() - translated_end.len());
        }
        let mut leading_patterns = Vec::new();
        let leading = core
            .strip_prefix(LEADING)
            .filter(|date| {
                // A plain group, the date's, closed at the very end.
                self.group == 1
                    && !date.starts_with('?')
                    && group_end(&core, LEADING.len() - 1) == Some(core.len() - 1)
            })
            .and_then(|date| {
                let date = &date[..date.len() - 1];
                let whole = format!("{gf}{date}");
                let (patterns, res) = match meta::Regex::new(&whole) {
                    Ok(re) => (vec![whole], vec![re]),
                    Err(_) => {
                        let patterns: Vec<String> = separator_branches(date)?
                            .iter()
                            .map(|d| format!("{gf}{d}"))
                            .collect();
                        let res = patterns
                            .iter()
                            .map(|d| meta::Regex::new(d).ok())
                            .collect::<Option<_>>()?;
                        (patterns, res)
                    }
                };
                leading_patterns = patterns;
                Some(res)
            });
        // Linear (back references included, checked: see `checked.rs`), or
        // not worth trying before the full pattern.
        let fast = Pattern::compile(&format!("{gf}{core}"))
            .ok()
            .filter(|p| !p.is_fancy())
            .map(|pattern| Fast {
                pattern,
                leading,
                leading_patterns,
                check_begin: sb,
                check_end: se,
            });
        // With a fast form, the full pattern only decides the rare match the
        // boundary checks reject.
        let full = if fast.is_some() {
            Pattern::compile_for_rare_use(translated)
        } else {
            Pattern::compile(translated)
        }
        .map_err(|error| Error::Pattern {
            what: format!("date pattern {:?}", self.name),
            error,
        })?;
        Ok(Forms { fast, full })
    }

    /// The compiled patterns, compiled now if this is their first use;
    /// `None` if they do not compile (never for the defaults, which the
    /// tests compile; a filter's own templates are compiled when it loads).
    fn forms(&self) -> Option<&Forms> {
        self.forms.get_or_init(|| self.compile().ok()).as_ref()
    }

    /// Compiles the template now, for its errors.
    fn compiled(self) -> Result<Template, Error> {
        let forms = self.compile()?;
        let _ = self.forms.set(Some(forms));
        Ok(self)
    }
}

fn has_plain_group(r: &str) -> bool {
    let b = r.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'('
            && b.get(i + 1) != Some(&b'?')
            && (i == 0 || b[i - 1] != b'\\')
            && !(i >= 2 && &b[i - 2..i] == b"(?")
    })
}

/// fail2ban's `DateTemplate.setRegex`.
fn set_regex(regex: &str, wb: Wb, we: bool) -> (String, bool) {
    let mut regex = regex.trim().to_string();
    // Global flags like (?iu) move to the front.
    let mut gf = String::new();
    if let Some(s) = regex.find("(?")
        && let Some(e) = regex[s + 2..].find(')')
        && regex[s + 2..s + 2 + e]
            .chars()
            .all(|c| c.is_ascii_lowercase())
        && e > 0
    {
        gf = regex[s..s + 3 + e].to_string();
        regex.replace_range(s..s + 3 + e, "");
    }
    let no_wb_beg = {
        let r = regex.trim_start_matches('(');
        regex.starts_with('^')
            || r.starts_with("**")
            || regex.starts_with("(^")
            || regex.starts_with("(?:^")
            || r.starts_with('^')
    };
    let no_wb_end = {
        let r = regex.trim_end_matches(')');
        (regex.ends_with('$') && !regex.ends_with("\\$"))
            || regex.ends_with("$)")
            || regex.ends_with("\\b")
            || regex.ends_with("\\s")
            || r.ends_with("**")
    };
    let bound_begin = wb != Wb::No && !no_wb_beg;
    let bound_end = we && !no_wb_end;
    if !has_plain_group(&regex) {
        // ^((?:\(\?\w+\))?\^?(?:\(\?\w+\))?)(.*?)(\$?)$ -> \1(\2)\3
        let (head, body) = if let Some(b) = regex.strip_prefix('^') {
            ("^", b.to_string())
        } else {
            ("", regex.clone())
        };
        let (body, tail) = match body.strip_suffix('$') {
            Some(b) if !b.ends_with('\\') => (b.to_string(), "$"),
            _ => (body, ""),
        };
        regex = format!("{head}({body}){tail}");
    }
    let mut line_begin = false;
    if bound_begin {
        if wb == Wb::Start {
            regex = format!(r"^(?:\W{{0,2}})?{regex}");
            line_begin = true;
        } else {
            regex = format!(r"(?=^|\b|\W){regex}");
        }
    }
    if bound_end {
        regex.push_str(r"(?=\b|\W|$)");
    }
    if regex.starts_with('^') || regex.starts_with("(^") || regex.starts_with("(?:^") {
        line_begin = true;
    }
    // Remove ** markers.
    let regex = regex.replace("**", "");
    (format!("{gf}{regex}"), line_begin)
}

/// A template, not compiled yet (see [`Template::forms`]).
fn build(name: &str, regex: String, group: usize, line_begin: bool) -> Result<Template, Error> {
    let translated = translate(&regex, false);
    Ok(Template {
        name: name.to_string(),
        at_start: group == 1 && date_group_first(&translated),
        translated,
        forms: OnceLock::new(),
        group,
        line_begin,
    })
}

/// Whether a translated template is `^`, then optionally `(?:\W{0,2})?`,
/// then its first (date) group: whatever it matches starts the line or
/// follows non-word characters there.
fn date_group_first(t: &str) -> bool {
    let mut rest = t;
    // Global flags such as (?i).
    if let Some(r) = rest.strip_prefix("(?")
        && let Some(end) = r.find(')')
        && r[..end].bytes().all(|b| b.is_ascii_alphabetic())
    {
        rest = &r[end + 1..];
    }
    let Some(r) = rest.strip_prefix('^') else {
        return false;
    };
    rest = r.strip_prefix(r"(?:\W{0,2})?").unwrap_or(r);
    while let Some(r) = rest.strip_prefix('^') {
        rest = r;
    }
    rest.starts_with('(') && !rest.starts_with("(?")
}

fn epoch(pattern: Option<&str>, line_begin_only: bool, long: bool) -> Result<Template, Error> {
    let epoch_re = if long {
        r"\d{10,11}(?:\d{3}(?:\.\d{1,6}|\d{3})?)?"
    } else {
        r"\d{10,11}\b(?:\.\d{3,6})?"
    };
    if let Some(p) = pattern {
        static EPOCH: LazyLock<regex::Regex> =
            LazyLock::new(|| regex::Regex::new(r"(?i)\{L?EPOCH\}").expect("static"));
        let body = EPOCH
            .replace_all(p, format!("({epoch_re})").as_str())
            .into_owned();
        let (r, lb) = set_regex(&format!("({body})"), Wb::Yes, true);
        return build(p, r, 2, lb);
    }
    if !line_begin_only {
        let r = r"((?:^|(?P<square>(?<=^\[))|(?P<selinux>(?<=\baudit\()))%s)(?:(?(selinux)(?=:\d+\)))|(?(square)(?=\])))"
            .replace("%s", epoch_re);
        let (r, lb) = set_regex(&r, Wb::No, true);
        build("Epoch", r, 1, lb)
    } else {
        let r = format!(r"((?P<square>(?<=^\[))?{epoch_re})(?(square)(?=\]))");
        let (r, lb) = set_regex(&r, Wb::Start, true);
        build("{^LN-BEG}Epoch", r, 1, lb)
    }
}

fn tai64n(start: bool) -> Result<Template, Error> {
    let (r, lb) = set_regex(
        "(@[0-9a-f]{24})",
        if start { Wb::Start } else { Wb::No },
        true,
    );
    build(if start { "{^LN-BEG}TAI64N" } else { "TAI64N" }, r, 1, lb)
}

/// `_getPatternTemplate`.
fn pattern_template(pattern: &str) -> Result<Template, Error> {
    let key = if pattern.contains('%') {
        pattern.to_string()
    } else {
        pattern.to_uppercase()
    };
    if key.contains("EPOCH") {
        static EPOCH: LazyLock<regex::Regex> =
            LazyLock::new(|| regex::Regex::new(r"(?i)(?:^|[^\\])\{L?EPOCH\}").expect("static"));
        if EPOCH.is_match(pattern) {
            return epoch(Some(pattern), false, key.contains("LEPOCH"));
        }
        match key.as_str() {
            "EPOCH" | "{^LN-BEG}EPOCH" | "^EPOCH" => return epoch(None, key != "EPOCH", false),
            "LEPOCH" | "{^LN-BEG}LEPOCH" | "^LEPOCH" => {
                return epoch(None, key != "LEPOCH", true);
            }
            _ => {}
        }
    }
    if matches!(key.as_str(), "TAI64N" | "{^LN-BEG}TAI64N" | "^TAI64N") {
        return tai64n(key != "TAI64N");
    }
    // DatePatternRegex
    let mut p = pattern;
    let mut wb = Wb::Yes;
    let mut we = true;
    if let Some(r) = p.strip_prefix("{UNB}") {
        p = r;
        wb = Wb::No;
        we = false;
    }
    if wb != Wb::No
        && let Some(r) = p.strip_prefix("{^LN-BEG}")
    {
        p = r;
        wb = Wb::Start;
    }
    let (fmt, alpha) = expand_directives(p)?;
    let regex = if alpha { format!("(?iu){fmt}") } else { fmt };
    let (r, lb) = set_regex(&regex, wb, we);
    build(pattern, r, 1, lb)
}

fn anchored(p: &str) -> String {
    if p.starts_with("{^LN-BEG}") || p.starts_with('^') {
        p.to_string()
    } else {
        format!("{{^LN-BEG}}{p}")
    }
}

/// `DateTemplate.unboundPattern`.
fn unbound(p: &str) -> String {
    let p = p.strip_prefix("{UNB}").unwrap_or(p);
    let p = p.strip_prefix("{^LN-BEG}").unwrap_or(p);
    let p = p
        .strip_prefix(r"(?=^|\b|\W)")
        .or_else(|| p.strip_prefix(r"(^|\b|\W)"))
        .unwrap_or(p);
    p.strip_suffix(r"(?=\b|\W|$)").unwrap_or(p).to_string()
}

/// fail2ban's default templates (anchored forms first), made once and
/// shared by every filter that uses them.
fn defaults() -> Result<&'static [Arc<Template>], Error> {
    static DEFAULTS: OnceLock<Vec<Arc<Template>>> = OnceLock::new();
    if let Some(d) = DEFAULTS.get() {
        return Ok(d);
    }
    let mut first = Vec::new();
    let mut second = Vec::new();
    for d in DEFAULT_TEMPLATES {
        if !d.starts_with("{^LN-BEG}") && !d.starts_with('^') {
            first.push(Arc::new(pattern_template(&anchored(d))?));
        }
        second.push(Arc::new(pattern_template(d)?));
    }
    first.extend(second);
    Ok(DEFAULTS.get_or_init(|| first))
}

/// Finds dates the way a fail2ban filter with a given `datepattern` does.
pub struct DateDetector {
    /// The default templates are shared by every filter (see [`defaults`]).
    templates: Vec<Arc<Template>>,
    last: Option<usize>,
    /// Each template's leading DATE regexes as DFAs of this detector's, for
    /// ASCII lines (without the `regex` crate's search and cache pool on
    /// every line): built at the template's first leading search; `None`
    /// inside when one has none (see [`Dfas::starting_here`]).
    leading_dfas: Vec<Option<Option<Vec<RuleDfa>>>>,
    dfas: Dfas,
}

impl DateDetector {
    /// `datepattern` as the filter gives it (one template per line), or
    /// `None` for fail2ban's default list.
    pub fn new(datepattern: Option<&str>) -> Result<DateDetector, Error> {
        let mut templates = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut add = |t: Arc<Template>, templates: &mut Vec<Arc<Template>>| {
            if names.insert(t.name.clone()) {
                templates.push(t);
            }
        };
        // A filter's own templates are compiled now, so that a broken one
        // fails the filter's loading.
        let own = |t: Result<Template, Error>| t?.compiled().map(Arc::new);
        let lines: Vec<&str> = match datepattern {
            None => vec!["{DEFAULT}"],
            Some(d) => d
                .split('\n')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect(),
        };
        for line in lines {
            let key = if line.contains('%') {
                line.to_string()
            } else {
                line.to_uppercase()
            };
            if key == "{^LN-BEG}" || key == "{DEFAULT}" {
                for t in defaults()? {
                    if key == "{DEFAULT}" || t.line_begin {
                        add(t.clone(), &mut templates);
                    }
                }
            } else if key.contains("{DATE}") {
                for d in DEFAULT_TEMPLATES {
                    if matches!(*d, "EPOCH" | "TAI64N") {
                        continue;
                    }
                    let wrapped = line.replace("{DATE}", &unbound(d));
                    add(own(pattern_template(&wrapped))?, &mut templates);
                }
            } else if key == "{NONE}" {
                add(own(pattern_template("{UNB}^"))?, &mut templates);
            } else {
                add(own(pattern_template(line))?, &mut templates);
            }
        }
        Ok(DateDetector {
            leading_dfas: templates.iter().map(|_| None).collect(),
            templates,
            last: None,
            dfas: Dfas::default(),
        })
    }

    /// Where template `i` matches in `line`: the match's start and the
    /// date's span. The fast form answers when its match passes the
    /// boundary checks (then it is the full pattern's match: see `build`).
    fn try_template(&mut self, i: usize, line: &str, ascii: bool) -> Option<(usize, usize, usize)> {
        let t = &self.templates[i];
        if let Some(fast) = &t.forms()?.fast {
            // The match's span and the date's.
            let leading = match &fast.leading {
                Some(leading) if ascii => {
                    let dfas = &mut self.dfas;
                    let built = self.leading_dfas[i]
                        .get_or_insert_with(|| fast.leading_dfas(dfas))
                        .as_mut();
                    match built {
                        Some(built) => Fast::leading_date_by_dfa(dfas, built, line),
                        None => Fast::leading_date(leading, line),
                    }
                    .ok()
                }
                _ => None,
            };
            let ((start, end), date) = match leading {
                // The date's group ends the fast form.
                Some(found) => {
                    let (start, s, e) = found?;
                    ((start, e), (s, e))
                }
                None => {
                    let c = fast.pattern.captures(line)?;
                    (c[0]?, c.get(t.group).copied().flatten()?)
                }
            };
            if (!fast.check_begin || boundary_begin_ok(line, start))
                && (!fast.check_end || boundary_end_ok(line, end))
            {
                return Some((start, date.0, date.1));
            }
        }
        // Rare: let the full pattern decide (it may backtrack).
        self.try_full(i, line)
    }

    /// [`try_template`](Self::try_template) with the full pattern only.
    fn try_full(&self, i: usize, line: &str) -> Option<(usize, usize, usize)> {
        let t = &self.templates[i];
        let c = t.forms()?.full.captures(line)?;
        let whole = c[0]?;
        let g = c.get(t.group).copied().flatten()?;
        Some((whole.0, g.0, g.1))
    }

    /// The span of the date in `line` (possibly empty), if a template
    /// matched.
    pub fn find(&mut self, line: &str) -> Option<(usize, usize)> {
        self.find_in(line, line.is_ascii())
    }

    /// [`find`](Self::find) in a `line` known to be all ASCII, or not.
    pub(crate) fn find_in(&mut self, line: &str, ascii: bool) -> Option<(usize, usize)> {
        if let Some(i) = self.last
            && let Some((_, s, e)) = self.try_template(i, line, ascii)
        {
            return Some((s, e));
        }
        let mut best: Option<(usize, usize, usize)> = None;
        for i in 0..self.templates.len() {
            if Some(i) == self.last {
                continue;
            }
            if let Some((start, s, e)) = self.try_template(i, line, ascii) {
                if self.templates[i].line_begin {
                    best = Some((i, s, e));
                    break;
                }
                match best {
                    Some((bi, _, _))
                        if {
                            let bs = self
                                .try_template(bi, line, ascii)
                                .map(|x| x.0)
                                .unwrap_or(usize::MAX);
                            bs <= start
                        } => {}
                    _ => best = Some((i, s, e)),
                }
                if start == 0 {
                    break;
                }
            }
        }
        let (i, s, e) = best?;
        self.last = Some(i);
        Some((s, e))
    }

    /// Whether every template finds dates only at the start of a line, after
    /// at most two non-word characters: then on a line that starts with a
    /// word character, cutting the date out joins no text together.
    pub fn dates_start_lines(&self) -> bool {
        self.templates.iter().all(|t| t.at_start)
    }

    /// Names of the date templates in use, for `palisade detect` to show.
    pub fn template_names(&self) -> Vec<&str> {
        self.templates.iter().map(|t| t.name.as_str()).collect()
    }
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// `(?=^|\b|\W)` at `at`.
fn boundary_begin_ok(line: &str, at: usize) -> bool {
    if at == 0 {
        return true;
    }
    let prev = line[..at].chars().next_back();
    let next = line[at..].chars().next();
    !(is_word(prev) && is_word(next))
}

/// `(?=\b|\W|$)` at `at`.
fn boundary_end_ok(line: &str, at: usize) -> bool {
    let prev = line[..at].chars().next_back();
    let next = line[at..].chars().next();
    !(is_word(prev) && is_word(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every default template finds, through its fast form (linear, with
    /// back references checked), what its full pattern finds, on every line
    /// of fail2ban's sample logs and variants of them.
    #[test]
    fn fast_forms_agree_with_the_full_patterns() {
        let Some(texts) = crate::fail2ban::samples::texts() else {
            return;
        };
        let mut d = DateDetector::new(None).unwrap();
        let fast = d
            .templates
            .iter()
            .filter(|t| t.forms().is_some_and(|f| f.fast.is_some()))
            .count();
        assert!(
            fast >= d.templates.len() - 4,
            "{fast} of {}",
            d.templates.len()
        );
        let mut found = 0;
        for t in &texts {
            for i in 0..d.templates.len() {
                let got = d.try_template(i, t, t.is_ascii());
                found += usize::from(got.is_some());
                assert_eq!(got, d.try_full(i, t), "{} on {t:?}", d.templates[i].name);
            }
        }
        assert!(found > 10_000, "{found}");
    }

    /// The defaults are compiled at their first use, where a failure
    /// would only make a template never match: all 31 compile.
    #[test]
    fn every_default_template_compiles() {
        let d = DateDetector::new(None).unwrap();
        assert_eq!(d.template_names().len(), 14 + 17);
        for t in &d.templates {
            assert!(t.forms().is_some(), "{}", t.name);
        }
        // Shared, not made again for the next filter.
        let e = DateDetector::new(None).unwrap();
        assert!(Arc::ptr_eq(&d.templates[0], &e.templates[0]));
    }

    /// A filter's own broken template fails its loading at once.
    #[test]
    fn a_broken_own_template_is_refused() {
        assert!(DateDetector::new(Some("(?P<x>%Y")).is_err());
    }

    fn cut(d: &mut DateDetector, line: &str) -> String {
        match d.find(line) {
            Some((s, e)) => format!("{}{}", &line[..s], &line[e..]),
            None => line.to_string(),
        }
    }

    /// A line-starting template's date found without its groups is the
    /// one its fast form's groups give, whatever leads the line.
    #[test]
    fn leading_dates_as_the_groups_give_them() {
        let d = DateDetector::new(None).unwrap();
        let (mut leading, mut separators) = (0, 0);
        for (t, fast, date) in leading_forms(&d) {
            leading += 1;
            separators += usize::from(date.len() > 1);
            for lead in ["", " ", "[", "((", "(((", " [", "a", "_", "-x"] {
                for rest in [
                    "Jan  1 00:00:02 web1 sshd[1]: x",
                    "Mon Jan  1 00:00:02.123 2024 x",
                    "2024-01-01 00:00:02,5 x",
                    "01/Jan/2024:00:00:02 +0000 x",
                    "Jan 1 0:0:2",
                    "x Jan  1 00:00:02",
                    "2024/03/01 00:00:02 [error] x",
                    "2024.03.01T00:00:02.5 +0100",
                    "2024-03/01 00:00:02",
                    "1/02/2024 0:00:02",
                    "01-2-24 00:00:02",
                    "1-2/24 00:00:02",
                    "01/Jan/2024:00:00:02 +0000",
                    "01-Jan/2024 00:00:02",
                ] {
                    assert_leading_date(t, fast, date, &format!("{lead}{rest}"));
                }
            }
        }
        assert!(leading >= 5, "{leading} templates");
        assert!(separators >= 3, "{separators} templates with separators");
    }

    /// Lines an attacker shapes after the separators of the templates that
    /// repeat one (long runs of separators and digits, two separators
    /// that differ): answered as the groups answer them.
    #[test]
    fn crafted_separators_are_answered_as_the_groups_give_them() {
        let d = DateDetector::new(None).unwrap();
        let crafted = [
            format!("2024{}01 00:00:02", "/03".repeat(8 * 1024)),
            format!("2024-03/01 00:00:02{}", "-".repeat(64 * 1024)),
            format!("{}2024.03.01 00:00:02", "1.".repeat(16 * 1024)),
            format!("01/{}/2024 0:00:02", "Jan/".repeat(8 * 1024)),
        ];
        for (t, fast, date) in leading_forms(&d).filter(|(.., date)| date.len() > 1) {
            for line in &crafted {
                assert_leading_date(t, fast, date, line);
            }
        }
    }

    /// The templates of `d` with a leading form: each with its fast form
    /// and DATE's regexes.
    fn leading_forms(d: &DateDetector) -> impl Iterator<Item = (&Template, &Fast, &[meta::Regex])> {
        d.templates.iter().filter_map(|t| {
            let fast = t.forms()?.fast.as_ref()?;
            Some((&**t, fast, fast.leading.as_deref()?))
        })
    }

    /// The date found without groups on `line` is the one the fast form's
    /// groups give, and DATE's DFAs (for ASCII lines) find what its
    /// regexes find.
    fn assert_leading_date(t: &Template, fast: &Fast, date: &[meta::Regex], line: &str) {
        let want = fast.pattern.captures(line).map(|c| {
            let (s, e) = c[t.group].unwrap();
            (c[0].unwrap().0, s, e)
        });
        let shown = &line[..line.len().min(80)];
        let by_regex = Fast::leading_date(date, line);
        assert_eq!(by_regex.unwrap(), want, "{} on {shown:?}", t.name);
        let mut dfas = Dfas::default();
        let mut built = fast.leading_dfas(&mut dfas).expect("DATE's DFAs");
        let by_dfa = Fast::leading_date_by_dfa(&mut dfas, &mut built, line);
        assert_eq!(by_dfa, by_regex, "{} on {shown:?} by DFA", t.name);
    }

    #[test]
    fn line_begin_defaults() {
        let mut d = DateDetector::new(Some("{^LN-BEG}")).unwrap();
        assert_eq!(
            cut(&mut d, "Mar  3 12:00:01 web1 sshd[1]: x"),
            " web1 sshd[1]: x"
        );
        assert_eq!(cut(&mut d, "2024-03-03 12:00:01,123 web1 x"), " web1 x");
        assert_eq!(cut(&mut d, "[2024-03-03T12:00:01] x"), "[] x");
        assert_eq!(
            cut(&mut d, "web1 x Mar  3 12:00:01"),
            "web1 x Mar  3 12:00:01"
        );
    }

    #[test]
    fn defaults_search_anywhere() {
        let mut d = DateDetector::new(None).unwrap();
        assert_eq!(
            cut(
                &mut d,
                r#"1.2.3.4 - - [03/Mar/2024:12:00:01 +0000] "GET /""#
            ),
            r#"1.2.3.4 - - [] "GET /""#
        );
    }

    #[test]
    fn custom_patterns() {
        let mut d = DateDetector::new(Some(r"^%Y-%m-%d %H:%M:%S")).unwrap();
        assert_eq!(cut(&mut d, "2024-03-03 12:00:01 x"), " x");
        let mut d = DateDetector::new(Some(r"^[^\[]*\[({DATE})")).unwrap();
        assert_eq!(
            cut(&mut d, "host [03/Mar/2024:12:00:01 +0000] x"),
            "host [] x"
        );
        let mut d = DateDetector::new(Some("{^LN-BEG}Epoch")).unwrap();
        assert_eq!(cut(&mut d, "1700000000.123 x"), " x");
        let mut d = DateDetector::new(Some("{NONE}")).unwrap();
        assert_eq!(cut(&mut d, "Mar  3 12:00:01 x"), "Mar  3 12:00:01 x");
    }
}

//! fail2ban filters (`filter.d/*.conf`), read and run as fail2ban does.
//!
//! Loading ([`Filter::load`]) follows fail2ban's `FilterReader`: the INI
//! file with its includes and `.local` overrides ([`ini`]), `[Init]`
//! options and jail parameters (such as `mode`), `%(name)s` interpolation,
//! then the recursive `<tag>` substitution (`<mdre-<mode>>`,
//! `<lt_<logtype>/__prefix_line>`), then the `<HOST>` family of tags.
//!
//! Matching ([`Filter::process_line`]) follows fail2ban's `Filter.processLine`
//! and `findFailure`: the date is found ([`date`]) and cut out, the line (or
//! the last `maxlines` lines) is searched with `prefregex`, whose
//! `<F-CONTENT>` replaces the text the `failregex`es see, `ignoreregex`
//! vetoes, and multi-line failure ids (`<F-MLFID>`) carry state between
//! lines (`<F-NOFAIL>`, `<F-MLFFORGET>`, `<F-MLFGAINED>`).
//!
//! Python regex syntax is translated ([`crate::pyre`]); patterns that need
//! look-behinds, or look-aheads, back references or conditionals inside
//! repetitions (beyond a few written out) run on fancy-regex; other
//! conditionals are rewritten away (`conditional.rs`), other back
//! references and look-aheads run on a linear relaxed form checked
//! afterwards, and a `RegexSet` of relaxed
//! forms skips the failregexes that cannot match. A prefregex of the usual
//! shape is matched piece by piece (`segments.rs`).
//!
//! `<HOST>` also matches DNS names in fail2ban. palisade never resolves
//! names: a failure whose host is a name (or a `<F-ID>` that is not an
//! address) has no [`Failure::address`] and is never counted.

pub mod date;
mod fail;
mod ids;
pub mod ini;
mod room;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{LazyLock, OnceLock};

use palisade_model::Net;
use regex::Regex;

use crate::dfa::{self, Dfas, RuleDfa};
use crate::host::{f2b_host, parse_addr, r_addr, r_dns, r_ip4, r_ip6};
use crate::linear::Spans;
use crate::literals;
use crate::pyre::{Pattern, name_index, relax, translate};
use crate::segments::Segments;
use crate::split::{Found, GroupSplit};
use date::DateDetector;
use fail::{Fail, Key, Merged, Val};
use ids::Ids;
use ini::{Config, Map};

/// Why a filter could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter file or its includes could not be read or parsed.
    #[error("{0}")]
    Config(String),
    /// A regular expression of the filter is unusable (empty, or without
    /// a failure id).
    #[error("{0}")]
    Regex(String),
    /// A regular expression of the filter does not compile.
    #[error("{what}: {error}")]
    Pattern {
        /// Which expression, as written (`failregex "..."`, `date pattern
        /// "..."`).
        what: String,
        /// Why it does not compile.
        #[source]
        error: crate::pyre::PatternError,
    },
    /// A date pattern uses a `%` directive fail2ban does not have.
    #[error("unknown date directive %{directive} in {pattern:?}")]
    DateDirective {
        /// The letter after `%`.
        directive: String,
        /// The date pattern as written.
        pattern: String,
    },
}

/// A failure found by a filter in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index of the failregex that matched.
    pub regex: usize,
    /// What fail2ban would report as the host (raw address, DNS name, or
    /// failure id); `None` too from a filter that gives no hosts (see
    /// [`Filter::hosts`]).
    pub host: Option<String>,
    /// The address to count, if the host is an IP address.
    pub address: Option<Net>,
    /// Set when the match is a "no failure" helper (`<F-NOFAIL>`, or a
    /// multi-line failure not yet complete).
    pub nofail: bool,
}

/// `Regex._resolveHostTag`: `<HOST>`, `<ADDR>`, `<IP4>`, `<F-USER>` ...
pub fn resolve_tags(regex: &str, use_dns: bool) -> String {
    static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"</?[\w\-]+/?>").expect("static"));
    static CUSTOM: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^(/?)F-([A-Z0-9_\-]+)$").expect("static"));
    let mut open: BTreeSet<String> = BTreeSet::new();
    let mut skiplines = 0;
    TAG.replace_all(regex, |c: &regex::Captures| {
        let tag = &c[0];
        let tn = &tag[1..tag.len() - 1];
        match tn {
            "HOST" => {
                if use_dns {
                    f2b_host()
                } else {
                    r_addr()
                }
            }
            "SKIPLINES" => {
                skiplines += 1;
                format!(r"\n(?P<skiplines{}>(?:(?:.*\n)*?))", skiplines - 1)
            }
            "IP4" | "F-IP4/" => r_ip4(),
            "IP6" | "F-IP6/" => r_ip6(),
            "ADDR" | "F-ADDR/" => r_addr(),
            "CIDR" | "F-CIDR/" => r"(?P<cidr>\d+)".into(),
            "SUBNET" | "F-SUBNET/" => {
                format!(r"\[?(?:{}|{})(?:/(?P<cidr>\d+))?\]?", r_ip4(), r_ip6())
            }
            "DNS" | "F-DNS/" => r_dns().into(),
            "F-ID/" => r"(?P<fid>\S+)".into(),
            "F-PORT/" => r"(?P<fport>\w+)".into(),
            _ => {
                if let Some(m) = CUSTOM.captures(tn) {
                    let name = m[2].to_string();
                    if !m[1].is_empty() {
                        if open.contains(&name) {
                            return ")".into();
                        }
                        return tag.to_string();
                    }
                    open.insert(name.clone());
                    let lower = name.to_lowercase();
                    let mapped = match lower.as_str() {
                        "id" => "fid".to_string(),
                        "port" => "fport".to_string(),
                        _ => lower,
                    };
                    return format!("(?P<{mapped}>");
                }
                tag.to_string()
            }
        }
    })
    .into_owned()
}

/// Maps `((?i)x)` to `(?i:x)` as fail2ban does.
fn glob_to_local_flags(r: &str) -> String {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\((?:\?:)?(\(\?[a-z]+)\)").expect("static"));
    let re = &*RE;
    // Skip matches preceded by a backslash.
    let mut out = String::new();
    let mut last = 0;
    for m in re.captures_iter(r) {
        let whole = m.get(0).unwrap();
        if whole.start() > 0 && r.as_bytes()[whole.start() - 1] == b'\\' {
            continue;
        }
        out.push_str(&r[last..whole.start()]);
        out.push_str(&m[1]);
        out.push(':');
        last = whole.end();
    }
    out.push_str(&r[last..]);
    out
}

/// One compiled fail2ban regex.
struct Re {
    source: String,
    pat: Pattern,
    /// The group spans of the last match (kept for their room: every line
    /// is matched against a prefregex).
    caps: Spans,
    /// The prefregex shape matched piece by piece with DFAs, when it has it.
    segments: Option<Segments>,
    /// Groups found by splitting the pattern with DFAs (single-line
    /// patterns the `regex` crate runs): made at the first search of an
    /// ASCII text, since most failregexes of a filter never match; `Some(None)`
    /// when the pattern does not split (or the split gave up).
    split: Option<Option<GroupSplit>>,
    /// Whether the relaxed form the failregexes' first-match DFA runs is
    /// this pattern itself: then where that DFA's match ends is where this
    /// pattern's ends (see [`Re::search`]).
    relaxed_is_itself: bool,
    /// Named groups and their indexes.
    names: Vec<(String, usize)>,
    /// The named groups a failure is read by (a [`Key`] each), with their
    /// indexes: the only ones [`Match::groups_into`] sets.
    read: Vec<(Key, usize)>,
    /// Groups, named or not, group 0 included.
    groups: usize,
    /// The index of each `alt_` group and the [`Key`] of the group it stands
    /// in for, sorted by the `alt_` group's name.
    alts: Vec<(usize, Key)>,
}

impl Re {
    fn new(raw: &str, multiline: bool, what: &str) -> Result<Re, Error> {
        let resolved = glob_to_local_flags(&resolve_tags(raw, true));
        if resolved.trim().is_empty() {
            return Err(Error::Regex(format!("{what}: empty regex")));
        }
        let t = translate(&resolved, multiline);
        let pat = Pattern::compile(&t).map_err(|error| Error::Pattern {
            what: format!("{what} {raw:?}"),
            error,
        })?;
        let names: Vec<(String, usize)> = name_index(&pat)
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect();
        let read = names
            .iter()
            .filter_map(|(n, i)| Some((Key::read(n)?, *i)))
            .collect();
        // alt_ names merge into their base name, tuple_ names are ignored.
        let mut alts: Vec<(&str, usize, Key)> = names
            .iter()
            .filter_map(|(k, i)| {
                let rest = k.strip_prefix("alt_")?;
                Some((k.as_str(), *i, Key::read(&map_tag(strip_num_suffix(rest)))?))
            })
            .collect();
        alts.sort();
        let alts = alts.into_iter().map(|(_, i, n)| (i, n)).collect();
        let groups = pat.names().len();
        let segments = Segments::new(&t).filter(|s| s.groups() == groups);
        let split = match (&pat, &segments) {
            (Pattern::Std(_), None) if !multiline => None,
            _ => Some(None),
        };
        Ok(Re {
            // Known for failregexes once the filter relaxes them.
            relaxed_is_itself: false,
            source: t,
            pat,
            caps: Spans::new(),
            segments,
            split,
            names,
            read,
            groups,
            alts,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.names.iter().any(|(n, _)| n == name)
    }

    /// The first match in `buf`, all ASCII if `ascii` (`false` when not
    /// known). `placed` is what the failregexes'
    /// first-match DFA found, if it named this one: which of the pattern's
    /// outcomes it named, if it ran them (see [`FirstDfa`]), and where the
    /// match ends. Anchored and leftmost-first, its match of this pattern
    /// (or outcome), which no failregex before it matched, ends where this
    /// pattern's own search would end, so neither the split nor the
    /// search for groups need search for it again.
    fn search<'t>(
        &'t mut self,
        dfas: &mut Dfas,
        buf: &'t str,
        ascii: bool,
        placed: Option<(Option<usize>, usize)>,
    ) -> Option<Match<'t>> {
        // The DFA ran a relaxed form of a pattern as written: its end is
        // this pattern's only if the two are the same.
        let placed = placed.filter(|&(outcome, _)| outcome.is_some() || self.relaxed_is_itself);
        let end = placed
            .filter(|&(outcome, _)| outcome.is_none())
            .map(|(_, end)| end);
        let groups = self.groups;
        let split = match &mut self.split {
            Some(split) => split.as_mut(),
            slot @ None if ascii => slot
                .insert(GroupSplit::new(dfas, &self.source).filter(|s| s.groups() == groups))
                .as_mut(),
            None => None,
        };
        let caps = &mut self.caps;
        let split = match split {
            Some(split) if ascii => {
                let found = split.captures(dfas, buf, end, caps);
                if split.gave_up() {
                    self.split = Some(None);
                }
                found
            }
            _ => Found::Unsure,
        };
        match split {
            Found::Matched => {}
            Found::NoMatch => return None,
            Found::Unsure => {
                let by_segments = self
                    .segments
                    .as_mut()
                    .and_then(|s| s.captures(dfas, buf, ascii, caps));
                match (by_segments, placed) {
                    (Some(()), _) => {}
                    (None, Some((outcome, end))) => {
                        self.pat.captures_placed(buf, outcome, end, caps)?;
                    }
                    (None, None) => *caps = self.pat.captures(buf)?,
                }
            }
        }
        let re = &*self;
        Some(Match {
            text: buf,
            caps: &re.caps,
            re,
        })
    }
}

struct Match<'a> {
    text: &'a str,
    caps: &'a Spans,
    re: &'a Re,
}

impl Match<'_> {
    fn whole(&self) -> (usize, usize) {
        self.caps[0].expect("group 0")
    }

    /// Sets in `f` the named groups a failure is read by (a [`Key`] each;
    /// `None` when not participating), with `alt_` groups merged into
    /// theirs; the prefregex's content is not copied (see
    /// [`Match::span`]).
    fn groups_into(&self, f: &mut Fail) {
        let text = |i: usize| {
            let (s, e) = self.caps.get(i).copied().flatten()?;
            Some(&self.text[s..e])
        };
        // The keys this match has set: an `alt_` group fills its key only
        // where this match left it empty, whatever `f` held before.
        let mut mine = 0u16;
        // Names are unique within a regex.
        for &(key, i) in &self.re.read {
            if key != Key::Content {
                match text(i) {
                    Some(t) => f.set_text(key, t),
                    None => f.set_none(key),
                }
                mine |= key.bit();
            }
        }
        for &(i, key) in &self.re.alts {
            if let Some(v) = text(i)
                && !v.is_empty()
                && !(mine & key.bit() != 0 && f.get(key).is_some_and(Val::truthy))
            {
                f.set_text(key, v);
                mine |= key.bit();
            }
        }
    }

    /// Where the group read as `key` matched, if it took part.
    fn span(&self, key: Key) -> Option<(usize, usize)> {
        let &(_, i) = self.re.read.iter().find(|&&(k, _)| k == key)?;
        self.caps.get(i).copied().flatten()
    }
}

fn strip_num_suffix(s: &str) -> &str {
    match s.rfind('_') {
        Some(i) if s[i + 1..].bytes().all(|b| b.is_ascii_digit()) && i + 1 < s.len() => &s[..i],
        _ => s,
    }
}

fn map_tag(s: &str) -> String {
    match s {
        "id" => "fid".into(),
        "port" => "fport".into(),
        other => other.into(),
    }
}

/// Most multi-line failure ids a filter remembers: fail2ban's own
/// (`Utils.Cache(maxCount=100)` in its `Filter`). With it, imported
/// `sshd.conf` matches exactly the lines `fail2ban-regex` matches on the
/// benchmark's logs; with 1,000, about 2,000 more of 1M (failures of
/// connections fail2ban has already forgotten).
const MLFID_CACHE: usize = 100;

/// The failregexes a text may match, by one search of their relaxed forms
/// (see [`relax`]) together; the others are always tried. Built at its
/// first use: with the first-match DFA, most filters never need it.
struct Prefilter {
    relaxed: Vec<String>,
    /// The failregex of each relaxed form.
    in_set: Vec<usize>,
    always: Vec<usize>,
    set: OnceLock<Option<regex::RegexSet>>,
}

/// The failregexes' relaxed forms (look-arounds dropped: each matches at
/// least what its failregex matches) as the patterns of one leftmost-first
/// DFA, anchored at the start. fail2ban tries the failregexes in order and
/// takes the first that matches; the DFA's match is the relaxed form of
/// lowest index that matches, so no failregex before it can match.
///
/// A failregex searched as its outcomes (see `outcomes.rs`) is there as
/// them, in order: the DFA names the outcome too, and ends where that
/// outcome's match ends.
struct FirstDfa {
    dfa: RuleDfa,
    /// The failregex each of the DFA's patterns is, and which of its
    /// outcomes.
    names: Vec<(usize, Option<usize>)>,
}

/// A loaded fail2ban filter with its matching state.
pub struct Filter {
    prefregex: Option<Re>,
    failregex: Vec<Re>,
    ignoreregex: Vec<Re>,
    prefilter: Prefilter,
    /// The failregexes' relaxed forms in one DFA (see [`FirstDfa`]).
    first: Option<FirstDfa>,
    /// Sets of strings: every line a failregex can match holds one string
    /// of each set (single-line filters only: a multi-line filter must see
    /// every line).
    literals: Vec<literals::AnyOf>,
    maxlines: usize,
    dates: DateDetector,
    /// `dates.dates_start_lines()`.
    dates_start_lines: bool,
    /// The last lines, without their newlines, for a filter of several
    /// (`maxlines` above 1); a filter of one line keeps none.
    buffer: Vec<String>,
    /// The room of the last line's text, for the next line's (a filter of
    /// one line).
    spare: String,
    /// The DFAs and search caches of the regexes that split.
    dfas: Dfas,
    /// Failures by multi-line failure id, at most [`MLFID_CACHE`].
    ids: Ids<Fail>,
    /// The prefregex's groups of the line read, and the failure a
    /// failregex finds in it: their values are written in the room of the
    /// last line's (see `fail.rs`).
    pre: Fail,
    fail: Fail,
    /// The room of a multi-line failure id that a failregex sets (the
    /// prefregex's is read where it set it).
    mlfid: String,
    /// Give each failure's host text ([`Failure::host`]), as
    /// `fail2ban-regex` shows it; the default. The engine counts only
    /// addresses, and reads no host.
    pub hosts: bool,
    /// Evaluate every failregex (fail2ban's sample tests do); the default
    /// stops at the first, as fail2ban does in operation.
    pub check_all: bool,
}

/// What the resolved definition of a filter says (for `palisade detect`).
#[derive(Debug, Clone, Default)]
pub struct Definition {
    /// `prefregex`: what every line must match before the failregexes are
    /// tried.
    pub prefregex: Option<String>,
    /// `failregex`: patterns of a failure, with `<HOST>` where the address is.
    pub failregex: Vec<String>,
    /// `ignoreregex`: lines these match are never failures.
    pub ignoreregex: Vec<String>,
    /// `maxlines`: how many lines a multi-line failregex spans.
    pub maxlines: usize,
    /// `datepattern`: how the filter finds the time in a line, if it sets one.
    pub datepattern: Option<String>,
}

impl Filter {
    /// Loads `path` with jail parameters `opts` (e.g. `mode`).
    pub fn load(path: &Path, opts: &BTreeMap<String, String>) -> Result<Filter, Error> {
        let def = Self::definition(path, opts)?;
        Self::from_definition(&def)
    }

    /// Reads and resolves a filter's options without compiling them.
    pub fn definition(path: &Path, opts: &BTreeMap<String, String>) -> Result<Definition, Error> {
        let cfg = Config::load(path)?;
        if !cfg.has_section("Definition") {
            return Err(Error::Config(format!(
                "{} has no [Definition]",
                path.display()
            )));
        }
        // Jail options are the init options; [Init] adds its own.
        let mut init: Map = opts
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        let pvars = init.clone();
        let keys = [
            "usedns",
            "prefregex",
            "ignoreregex",
            "failregex",
            "maxlines",
            "datepattern",
            "journalmatch",
        ];
        let mut combined = Map::new();
        for k in keys {
            if let Some(v) = cfg.get("Definition", k, &pvars)? {
                combined.insert(k.to_string(), v);
            }
        }
        if cfg.has_section("Init") {
            for o in cfg.own_options("Init") {
                let v = cfg.get("Init", &o, &Map::new())?.unwrap_or_default();
                if !o.starts_with("known/") {
                    init.insert(format!("known/{o}"), v.clone());
                }
                init.entry(o).or_insert(v);
            }
        }
        for (k, v) in &init {
            combined.insert(k.clone(), v.clone());
        }
        let get_comb = |name: &str| -> Option<String> {
            cfg.get_ex("Definition", name, &pvars).ok().flatten()
        };
        let resolved = |k: &str| -> Result<Option<String>, Error> {
            match combined.get(k) {
                Some(v) => substitute(v, &combined, &get_comb).map(Some),
                None => Ok(None),
            }
        };
        let lines = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split('\n')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        let maxlines = match resolved("maxlines")? {
            Some(m) => m
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&m| m > 0)
                .ok_or_else(|| {
                    Error::Config(format!("maxlines {m:?} is not a positive integer"))
                })?,
            None => 1,
        };
        Ok(Definition {
            prefregex: resolved("prefregex")?.filter(|p| !p.trim().is_empty()),
            failregex: lines(resolved("failregex")?),
            ignoreregex: lines(resolved("ignoreregex")?),
            maxlines,
            datepattern: resolved("datepattern")?.filter(|p| !p.trim().is_empty()),
        })
    }

    /// Compiles a resolved definition.
    pub fn from_definition(def: &Definition) -> Result<Filter, Error> {
        let ml = def.maxlines > 1;
        let mut dfas = Dfas::default();
        let prefregex = def
            .prefregex
            .as_deref()
            .map(|p| Re::new(p, ml, "prefregex"))
            .transpose()?;
        let mut failregex = def
            .failregex
            .iter()
            .map(|r| Re::new(r, ml, "failregex"))
            .collect::<Result<Vec<_>, _>>()?;
        if failregex.is_empty() {
            return Err(Error::Config("the filter has no failregex".into()));
        }
        for (i, r) in failregex.iter().enumerate() {
            let has_id = ["fid", "ip4", "ip6", "dns", "mlfid"]
                .iter()
                .any(|g| r.has(g) || prefregex.as_ref().is_some_and(|p| p.has(g)));
            if !has_id {
                return Err(Error::Regex(format!(
                    "failregex {i} has no <HOST> or other failure id: {:?}",
                    def.failregex[i]
                )));
            }
        }
        let ignoreregex = def
            .ignoreregex
            .iter()
            .map(|r| Re::new(r, ml, "ignoreregex"))
            .collect::<Result<Vec<_>, _>>()?;
        // Prefilter: failregexes whose relaxed form compiles go in a set;
        // the others are always tried.
        let mut in_set = Vec::new();
        let mut always = Vec::new();
        let mut relaxed = Vec::new();
        for (i, r) in failregex.iter_mut().enumerate() {
            match relax(&r.source) {
                Some(x) => {
                    r.relaxed_is_itself = x == r.source;
                    in_set.push(i);
                    relaxed.push(x);
                }
                None => always.push(i),
            }
        }
        let mut literals = Vec::new();
        if def.maxlines <= 1 {
            // A line must hold one of the prefregex's strings (it must
            // match first), and one of some failregex's; the prefregex's are
            // often the rarer (postfix's `reject:`), so they come first.
            let pref = prefregex
                .as_ref()
                .and_then(|p| relax(&p.source))
                .and_then(|r| literals::required(&r));
            // Every failregex must have a relaxed form.
            let fail = always
                .is_empty()
                .then(|| literals::union(relaxed.iter().map(|r| literals::required(r))))
                .flatten();
            literals = [pref, fail]
                .into_iter()
                .flatten()
                .filter_map(literals::AnyOf::new)
                .collect();
        }
        // The first failregex a line can match, in one DFA search, when
        // every failregex has a relaxed form the DFAs can run.
        let first = match (always.is_empty(), def.maxlines <= 1) {
            (true, true) => first_dfa(&mut dfas, &failregex, &relaxed),
            _ => None,
        };
        let prefilter = Prefilter {
            relaxed,
            in_set,
            always,
            set: OnceLock::new(),
        };
        let dates = DateDetector::new(def.datepattern.as_deref())?;
        Ok(Filter {
            prefregex,
            failregex,
            ignoreregex,
            prefilter,
            first,
            literals,
            maxlines: def.maxlines,
            dates_start_lines: dates.dates_start_lines(),
            dates,
            buffer: Vec::new(),
            dfas,
            spare: String::new(),
            ids: Ids::new(MLFID_CACHE),
            pre: Fail::default(),
            fail: Fail::default(),
            mlfid: String::new(),
            hosts: true,
            check_all: false,
        })
    }

    /// The regexes that run on fancy-regex (a backtracking engine) because
    /// the `regex` crate cannot express them (back references, look-aheads
    /// and conditionals that `checked.rs` checks or rewrites are not
    /// listed), as `failregex 2`, `prefregex`, `ignoreregex 0`.
    pub fn fallback_regexes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.prefregex.as_ref().is_some_and(|r| r.pat.is_fancy()) {
            out.push("prefregex".to_string());
        }
        for (what, list) in [
            ("failregex", &self.failregex),
            ("ignoreregex", &self.ignoreregex),
        ] {
            for (i, r) in list.iter().enumerate() {
                if r.pat.is_fancy() {
                    out.push(format!("{what} {i}"));
                }
            }
        }
        out
    }

    /// Whether the literal prefilter rules `line` out (no failregex can
    /// match it).
    fn ruled_out(&self, line: &str) -> bool {
        self.literals.iter().any(|ac| !ac.is_match(line))
    }

    /// Processes one log line (date found and cut out first): the failures
    /// found in it.
    pub fn process_line(&mut self, line: &str) -> Vec<Failure> {
        let mut out = Vec::new();
        self.process_line_into(line, &mut out);
        out
    }

    /// [`process_line`](Self::process_line), adding the failures to `out`.
    pub fn process_line_into(&mut self, line: &str, out: &mut Vec<Failure>) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        // The literals are looked for in the line as it is, but the
        // regexes see it with its date cut out, which joins the text around
        // the date (`[` + `]LOGIN` is `[]LOGIN`): a line without them is
        // only ruled out at once when no date can be cut from inside it.
        let ruled_out = self.ruled_out(line);
        if ruled_out
            && self.dates_start_lines
            && line
                .bytes()
                .next()
                .is_none_or(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return;
        }
        let mut text = self.room(line.len());
        // Whether the line is all ASCII, and so each text cut from it.
        let ascii = line.is_ascii();
        match self.dates.find_in(line, ascii) {
            Some((s, e)) => {
                text.push_str(&line[..s]);
                text.push_str(&line[e..]);
            }
            None if ruled_out => return self.done(Some(text)),
            None => text.push_str(line),
        }
        if ruled_out && self.ruled_out(&text) {
            return self.done(Some(text));
        }
        self.find_failure(text, ascii, out)
    }

    /// An empty text with room for `len` bytes and the newline the regexes
    /// see after them: the last line's room, kept by [`Filter::done`].
    fn room(&mut self, len: usize) -> String {
        let mut text = std::mem::take(&mut self.spare);
        text.clear();
        text.reserve(len + 1);
        text
    }

    /// Keeps `text`'s room for the next line in a filter of one line (a
    /// filter of several keeps its lines in its buffer).
    fn done(&mut self, text: Option<String>) {
        if let Some(text) = text
            && self.maxlines <= 1
        {
            self.spare = text;
        }
    }

    /// Processes a line whose time is known (as fail2ban does for journal
    /// entries): nothing is cut out.
    pub fn process_line_nodate(&mut self, line: &str) -> Vec<Failure> {
        let mut out = Vec::new();
        if !self.ruled_out(line) {
            let mut text = self.room(line.len());
            text.push_str(line);
            self.find_failure(text, line.is_ascii(), &mut out);
        }
        out
    }

    fn buf(lines: &[String]) -> String {
        let mut b = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            b.push_str(line);
            b.push('\n');
        }
        b
    }

    /// `text` and its newline, as the text the regexes see when it is the
    /// only line (a filter of one line keeps no buffer: what they see is
    /// `text` alone, until the prefregex's content replaces it).
    fn alone(mut text: String) -> String {
        text.push('\n');
        text
    }

    /// `text` is a line without its newline, all ASCII if `ascii`; in a
    /// filter of one line, it may have room for its newline (see
    /// [`Filter::process_line`]).
    fn find_failure(&mut self, text: String, ascii: bool, out: &mut Vec<Failure>) {
        let single = self.maxlines <= 1;
        // Whether the texts the regexes see are all ASCII (each is the
        // line, or the buffer of lines, or a part of it).
        let mut ascii = ascii;
        let mut buf = if single {
            Some(Self::alone(text))
        } else {
            self.buffer.push(text);
            let n = self.buffer.len();
            if n > self.maxlines {
                self.buffer.drain(..n - self.maxlines);
            }
            ascii = self.buffer.iter().all(|l| l.is_ascii());
            Some(Self::buf(&self.buffer))
        };
        if !self.ignoreregex.is_empty()
            && self.ignoreregex.len() + 2 < self.failregex.len()
            && self
                .ignoreregex
                .iter()
                .any(|r| r.pat.is_match(buf.as_deref().unwrap()))
        {
            return;
        }
        self.pre.clear();
        // Where the text the failregexes see starts in `buf`.
        let mut from = 0;
        if let Some(p) = &mut self.prefregex {
            let b = buf.as_deref().unwrap();
            let Some(m) = p.search(&mut self.dfas, b, ascii, None) else {
                return self.done(buf);
            };
            m.groups_into(&mut self.pre);
            if let Some((s, e)) = m.span(Key::Content)
                && s < e
            {
                buf = if single {
                    // The content and its newline: the end of the line
                    // when the content runs to its newline (as `.+$` does),
                    // else copied in the line's own room.
                    let mut b = buf.take().unwrap();
                    if e + 1 == b.len() {
                        from = s;
                    } else {
                        b.truncate(e);
                        b.push('\n');
                        b.replace_range(..s, "");
                    }
                    Some(b)
                } else {
                    let content = b[s..e].to_string();
                    self.buffer.clear();
                    self.buffer.push(content);
                    None
                };
            }
        }
        let b = match buf {
            Some(b) => b,
            None => Self::buf(&self.buffer),
        };
        let first = match &mut self.first {
            Some(first) if !self.check_all && ascii => {
                match self.dfas.search(&mut first.dfa, &b.as_bytes()[from..]) {
                    Ok(None) => return self.done(Some(b)),
                    Ok(Some((k, end))) => Some((first.names[k], end)),
                    Err(()) => None,
                }
            }
            _ => None,
        };
        // The outcome the DFA names of the failregex it names, and where
        // their match ends, for that failregex's first search (the text is
        // the one the DFA read).
        let mut first_end = first;
        let first = first.map(|((i, _), _)| i);
        // The failregexes to try, in order. With the DFA's answer, the one
        // it names, and only if that one does not match after all (its
        // relaxed form matches more), the prefilter's after it: the one
        // it names is not put in a list.
        let (mut named, mut rest_after) = (first, first);
        let mut candidates = match first {
            Some(_) => Vec::new(),
            None => self.candidates(&b[from..]),
        };
        let mut b = Some(b);
        let mut next = 0;
        loop {
            let i = match named.take() {
                Some(i) => i,
                None => {
                    let Some(&i) = candidates.get(next) else {
                        break;
                    };
                    next += 1;
                    i
                }
            };
            if b.is_none() {
                b = Some(Self::buf(&self.buffer));
            }
            let bs = &b.as_deref().unwrap()[from..];
            let placed = first_end
                .take()
                .filter(|&((k, _), _)| k == i)
                .map(|((_, outcome), end)| (outcome, end));
            let Some(m) = self.failregex[i].search(&mut self.dfas, bs, ascii, placed) else {
                if let Some(k) = rest_after.take() {
                    candidates.extend(self.candidates(bs).into_iter().filter(|&c| c > k));
                }
                continue;
            };
            // The prefregex's groups, updated by the failregex's (the
            // prefregex's are kept for the next failregex when every one is
            // tried); all but the multi-line id, which no one reads from the
            // failure itself.
            self.fail.set_to(&self.pre, Key::Mlfid);
            m.groups_into(&mut self.fail);
            // The lines the match spans, in a buffer of several (a filter of
            // one line keeps none: its text stays what it is).
            let matched_lines = (!single).then(|| {
                let (ms, me) = m.whole();
                let end = bs[me.saturating_sub(1)..]
                    .find('\n')
                    .map_or(bs.len(), |x| me.saturating_sub(1) + x + 1);
                (
                    bs[..ms].matches('\n').count(),
                    bs[..end].matches('\n').count(),
                )
            });
            // ignoreregex on the matched text.
            if !self.ignoreregex.is_empty() {
                let ignored = match matched_lines {
                    Some((from, to)) => {
                        let ib = Self::buf(&self.buffer[from..to.min(self.buffer.len())]);
                        self.ignoreregex.iter().any(|r| r.pat.is_match(&ib))
                    }
                    None => self.ignoreregex.iter().any(|r| r.pat.is_match(bs)),
                };
                if ignored {
                    if let Some(lines) = matched_lines {
                        self.remove_matched(lines);
                        b = None;
                    }
                    if !self.check_all {
                        break;
                    }
                    continue;
                }
            }
            if let Some(lines) = matched_lines {
                self.remove_matched(lines);
                b = None;
            }
            // The multi-line id: the failregex's, if it has the group, else
            // the prefregex's.
            let mlfid = if self.fail.has(Key::Mlfid) {
                let id = self.fail.get(Key::Mlfid).and_then(Val::as_str);
                let has = id.is_some();
                if let Some(id) = id {
                    room::write(&mut self.mlfid, id);
                }
                self.fail.unset(Key::Mlfid);
                has.then_some(self.mlfid.as_str())
            } else {
                self.pre.get(Key::Mlfid).and_then(Val::as_str)
            };
            let has_mlfid = mlfid.is_some();
            let merged = match mlfid {
                Some(id) => fail::merge(&mut self.ids, id, &mut self.fail),
                None => Merged::Line,
            };
            let f = merged.fail(&mut self.ids, &mut self.fail);
            let has_host = {
                let text = |k| f.get(k).and_then(Val::as_str);
                let fid = text(Key::Fid);
                let ip = [Key::Ip4, Key::Ip6, Key::Dns].into_iter().find_map(text);
                let cidr = text(Key::Cidr).and_then(|c| c.parse::<u8>().ok());
                let host: Option<Cow<'_, str>> = match (ip, fid) {
                    (Some(ip), Some(fid)) if fid != ip => Some(fid.into()),
                    (Some(ip), _) => Some(match cidr {
                        Some(c) => with_cidr(ip, c).into(),
                        None => ip.into(),
                    }),
                    (None, Some(fid)) => Some(fid.into()),
                    (None, None) => None,
                };
                let nofail = f.get(Key::Nofail).is_some_and(Val::truthy);
                // Only ip4/ip6 groups give an address, never a DNS name.
                let is_ip = f.get(Key::Ip4).is_some_and(Val::truthy)
                    || f.get(Key::Ip6).is_some_and(Val::truthy);
                let has_host = host.is_some();
                if !nofail || self.check_all {
                    let nofail = nofail || !has_host;
                    let address = host
                        .as_deref()
                        .filter(|_| is_ip && !nofail)
                        .and_then(parse_addr);
                    out.push(Failure {
                        regex: i,
                        host: host.filter(|_| self.hosts).map(Cow::into_owned),
                        address,
                        nofail,
                    });
                }
                has_host
            };
            if !has_host && has_mlfid {
                f.insert(Key::Mlfpending, Val::Int(1));
            }
            if !self.check_all {
                break;
            }
        }
        self.done(b)
    }

    /// The failregexes that may match `b`, in order (the prefilter's).
    fn candidates(&self, b: &str) -> Vec<usize> {
        let p = &self.prefilter;
        let set = p.set.get_or_init(|| {
            regex::RegexSetBuilder::new(&p.relaxed)
                .size_limit(64 << 20)
                .dfa_size_limit(64 << 20)
                .build()
                .ok()
        });
        match set {
            Some(set) => {
                let mut c: Vec<usize> = set.matches(b).into_iter().map(|i| p.in_set[i]).collect();
                c.extend(p.always.iter().copied());
                c.sort_unstable();
                c
            }
            None => (0..self.failregex.len()).collect(),
        }
    }

    fn remove_matched(&mut self, (a, b): (usize, usize)) {
        let b = b.min(self.buffer.len());
        if a < b {
            self.buffer.drain(a..b);
        }
    }
}

/// The failregexes' first-match DFA (see [`FirstDfa`]), from each one's
/// outcomes or else its relaxed form (`relaxed[i]` is `failregex[i]`'s);
/// `None` if one does not parse or the DFA cannot be built.
fn first_dfa(dfas: &mut Dfas, failregex: &[Re], relaxed: &[String]) -> Option<FirstDfa> {
    let mut hirs = Vec::new();
    let mut names = Vec::new();
    for (i, (re, relaxed)) in failregex.iter().zip(relaxed).enumerate() {
        match re.pat.outcomes() {
            Some(outcomes) => {
                for (k, hir) in outcomes.iter().enumerate() {
                    hirs.push(dfa::anchored_form(hir.clone()));
                    names.push((i, Some(k)));
                }
            }
            None => {
                hirs.push(dfa::anchored_form(dfa::parse(relaxed)?));
                names.push((i, None));
            }
        }
    }
    Some(FirstDfa {
        dfa: dfas.rule(&hirs)?,
        names,
    })
}

fn with_cidr(ip: &str, cidr: u8) -> String {
    match ip.parse::<std::net::IpAddr>() {
        Ok(a) => {
            let max = if a.is_ipv4() { 32 } else { 128 };
            if cidr >= max {
                ip.to_string()
            } else {
                Net::truncating(a, cidr).to_string()
            }
        }
        Err(_) => ip.to_string(),
    }
}

/// fail2ban's `substituteRecursiveTags` for one value: `<name>` is replaced
/// by another option (innermost first, so `<mdre-<mode>>` works), else
/// left alone (`<HOST>`, `<F-USER>`).
fn substitute(
    value: &str,
    combined: &Map,
    get_comb: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"<([^ <>]+)>").expect("static"));
    let tag = &*TAG;
    let mut v = value.to_string();
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Passes over the value until nothing changes (a replacement can
    // complete a tag that started earlier, as in `<mdre-<mode>>`).
    for _pass in 0..64 {
        let before = v.clone();
        let mut from = 0;
        while let Some(c) = tag.captures_at(&v, from) {
            let m = c.get(0).unwrap();
            let name = c[1].to_string();
            let repl = combined.get(&name).cloned().or_else(|| get_comb(&name));
            let Some(repl) = repl else {
                from = m.end();
                continue;
            };
            let n = counts.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 200 {
                return Err(Error::Config(format!(
                    "options refer to each other in a loop (at <{name}>)"
                )));
            }
            let start = m.start();
            v = v.replace(&format!("<{name}>"), &repl);
            from = start;
        }
        if v == before {
            break;
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sshd(mode: &str) -> Filter {
        let mut o = BTreeMap::new();
        o.insert("mode".to_string(), mode.to_string());
        Filter::load(Path::new("/etc/fail2ban/filter.d/sshd.conf"), &o).unwrap()
    }

    #[test]
    fn sshd_filter_from_debian() {
        if !Path::new("/etc/fail2ban/filter.d/sshd.conf").exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "fail2ban is not installed (apt-get install fail2ban)"
            );
            println!("SKIPPED sshd_filter_from_debian: fail2ban is not installed");
            return;
        }
        let mut f = sshd("normal");
        let r = f.process_line(
            "Mar  3 12:00:01 web1 sshd[4242]: Failed password for invalid user admin from 198.51.100.7 port 52144 ssh2",
        );
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].address.unwrap().to_string(), "198.51.100.7");
        let r = f.process_line("Mar  3 12:00:01 web1 sshd[4242]: Server listening on :: port 22.");
        assert!(r.is_empty());
    }

    #[test]
    fn sshd_definition() {
        if !Path::new("/etc/fail2ban/filter.d/sshd.conf").exists() {
            return;
        }
        let d = Filter::definition(
            Path::new("/etc/fail2ban/filter.d/sshd.conf"),
            &BTreeMap::new(),
        )
        .unwrap();
        println!("{d:#?}");
        let f = Filter::from_definition(&d).unwrap();
        println!("pref: {}", f.prefregex.as_ref().unwrap().source);
    }

    /// Every shipped filter's regexes that do not run on fancy-regex alone
    /// find what fancy-regex finds with the same pattern, on every line of
    /// fail2ban's sample logs and variants of them (see
    /// `samples::texts`): prefregexes matched piece by piece (`segments.rs`),
    /// and back references and look-aheads checked after a linear match
    /// (`checked.rs`).
    #[test]
    fn linear_forms_agree_with_fancy_regex() {
        let Some(texts) = samples::texts() else {
            return;
        };
        let fancy = |source: &str| {
            fancy_regex::RegexBuilder::new(source)
                .backtrack_limit(200_000)
                .build()
                .unwrap()
        };
        let mut segmented = Vec::new();
        let mut checked = Vec::new();
        let mut split_by_dfas = Vec::new();
        let mut by_outcomes = Vec::new();
        let (mut answered, mut split_answered) = (0, 0);
        // Every filter as shipped, and sshd's aggressive mode (its extra
        // regexes hold a look-ahead in a repeated group).
        let mut filters = Vec::new();
        for entry in std::fs::read_dir(samples::FILTERS).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "conf") {
                continue;
            }
            if path.ends_with("sshd.conf") {
                let mode = BTreeMap::from([("mode".to_string(), "aggressive".to_string())]);
                filters.push((path.clone(), mode));
            }
            filters.push((path, BTreeMap::new()));
        }
        for (path, opts) in filters {
            let Ok(mut filter) = Filter::load(&path, &opts) else {
                continue;
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            // Failregexes read what the prefregex leaves of a line: the
            // texts' contents are compared too.
            let mut texts = texts.clone();
            if let Some(pre) = &filter.prefregex {
                let pre = fancy(&pre.source);
                let contents: Vec<String> = texts
                    .iter()
                    .filter_map(|t| {
                        Some(pre.captures(t).ok()??.name("content")?.as_str().to_string())
                    })
                    .collect();
                texts.extend(contents);
            }
            let regexes = filter
                .prefregex
                .iter_mut()
                .chain(&mut filter.failregex)
                .chain(&mut filter.ignoreregex);
            for re in regexes {
                // Unnamed groups are read by no one, and left out.
                let named = |caps: Spans| {
                    let mut v = vec![caps[0]];
                    v.extend(re.names.iter().map(|(_, i)| caps[*i]));
                    v
                };
                let truth = fancy(&re.source);
                let spans = |t: &str| {
                    let c = truth.captures(t).unwrap()?;
                    Some(
                        c.iter()
                            .map(|m| m.map(|m| (m.start(), m.end())))
                            .collect::<Spans>(),
                    )
                };
                if let Some(seg) = &mut re.segments {
                    segmented.push(name.clone());
                    let (mut dfas, mut fast) = (Dfas::default(), Spans::new());
                    for t in &texts {
                        if seg
                            .captures(&mut dfas, t, t.is_ascii(), &mut fast)
                            .is_some()
                        {
                            answered += 1;
                            assert_eq!(
                                Some(named(fast.clone())),
                                spans(t).map(named),
                                "{name}: {t:?} with {}",
                                re.source
                            );
                        }
                    }
                }
                let mut dfas = Dfas::default();
                let split = match (&re.pat, &re.segments, filter.maxlines) {
                    (Pattern::Std(_), None, 1) => GroupSplit::new(&mut dfas, &re.source),
                    _ => None,
                };
                if let Some(mut split) = split {
                    split_by_dfas.push(name.clone());
                    let mut got = Spans::new();
                    for t in texts.iter().filter(|t| t.is_ascii()) {
                        let truth = spans(t);
                        match split.captures(&mut dfas, t, None, &mut got) {
                            Found::Matched => {
                                split_answered += 1;
                                assert_eq!(
                                    Some(&got),
                                    truth.as_ref(),
                                    "{name}: {t:?} with {}",
                                    re.source
                                );
                            }
                            Found::NoMatch => {
                                assert_eq!(truth, None, "{name}: {t:?} with {}", re.source);
                            }
                            Found::Unsure => {}
                        }
                    }
                }
                if let Pattern::Checked(c) = &re.pat {
                    checked.push(name.clone());
                    if c.has_outcomes() {
                        by_outcomes.push(name.clone());
                    }
                    for t in &texts {
                        answered += 1;
                        assert_eq!(
                            re.pat.captures(t),
                            spans(t),
                            "{name}: {t:?} with {}",
                            re.source
                        );
                    }
                }
            }
        }
        println!(
            "segmented: {segmented:?}; checked: {checked:?}; split: {split_by_dfas:?}; \
             by outcomes: {by_outcomes:?}; {answered} answers and {split_answered} split \
             matches compared"
        );
        assert!(
            by_outcomes.iter().any(|s| s == "sshd.conf"),
            "{by_outcomes:?}"
        );
        for f in ["nginx-http-auth.conf", "postfix.conf", "apache-auth.conf"] {
            assert!(split_by_dfas.iter().any(|s| s == f), "{f} is not split");
        }
        assert!(split_answered > 500, "{split_answered}");
        for f in [
            "sshd.conf",
            "postfix.conf",
            "dovecot.conf",
            "pam-generic.conf",
        ] {
            assert!(segmented.iter().any(|s| s == f), "{f} is not segmented");
        }
        for f in [
            "openwebmail.conf",
            "stunnel.conf",
            "recidive.conf",
            "traefik-auth.conf",
            "roundcube-auth.conf",
        ] {
            assert!(checked.iter().any(|s| s == f), "{f} is not checked");
        }
        assert!(answered > 10_000, "{answered}");
    }

    /// Connections an attacker opens and closes (sshd's `Disconnected`
    /// forgets the connection's id) leave the filter's memory of ids
    /// bounded, and the oldest live id is the one evicted.
    #[test]
    fn forgotten_ids_do_not_grow_the_cache() {
        let def = Definition {
            prefregex: Some(r"^<F-MLFID>sshd\[\d+\]:</F-MLFID> <F-CONTENT>.+</F-CONTENT>$".into()),
            failregex: vec![
                r"^Failed password for \S+ from <HOST>".into(),
                r"^<F-NOFAIL><F-MLFFORGET>Disconnected</F-MLFFORGET></F-NOFAIL> from <HOST>".into(),
            ],
            ignoreregex: Vec::new(),
            maxlines: 1,
            datepattern: Some("{NONE}".into()),
        };
        let mut f = Filter::from_definition(&def).unwrap();
        for pid in 0..50_000 {
            f.process_line(&format!(
                "sshd[{pid}]: Failed password for root from 198.51.100.7"
            ));
            f.process_line(&format!("sshd[{pid}]: Disconnected from 198.51.100.7"));
        }
        assert_eq!(f.ids.len(), 0);
        // Full: each new id evicts the oldest live one.
        for pid in 0..MLFID_CACHE + 10 {
            f.process_line(&format!(
                "sshd[{pid}]: Failed password for root from 198.51.100.7"
            ));
        }
        assert_eq!(f.ids.len(), MLFID_CACHE);
        assert!(f.ids.find("sshd[9]:").is_err());
        assert!(f.ids.find("sshd[10]:").is_ok());
    }

    /// Lines crafted with long groups (a user of 16 KiB under each of the
    /// ids the filter remembers) leave no long room behind once ordinary
    /// lines follow: the values are written in the room of the last
    /// line's, which is let go when it is long (see `room.rs`).
    #[test]
    fn crafted_long_groups_leave_no_long_room() {
        let def = Definition {
            prefregex: Some(r"^<F-MLFID>sshd\[\d+\]:</F-MLFID> <F-CONTENT>.+</F-CONTENT>$".into()),
            failregex: vec![r"^Failed password for <F-USER>\S+</F-USER> from <HOST>".into()],
            ignoreregex: Vec::new(),
            maxlines: 1,
            datepattern: Some("{NONE}".into()),
        };
        let mut f = Filter::from_definition(&def).unwrap();
        let long = "u".repeat(16 << 10);
        let line = |pid: usize, user: &str| {
            format!("sshd[{pid}]: Failed password for {user} from 198.51.100.7")
        };
        let rooms = |f: &Filter| {
            f.pre.room_bytes()
                + f.fail.room_bytes()
                + f.mlfid.capacity()
                + f.ids.room_bytes(Fail::room_bytes)
        };
        for pid in 0..MLFID_CACHE + 10 {
            assert_eq!(f.process_line(&line(pid, &long)).len(), 1);
        }
        let crafted = rooms(&f);
        assert!(crafted > MLFID_CACHE * (16 << 10), "{crafted}");
        for pid in 0..2 * MLFID_CACHE {
            assert_eq!(f.process_line(&line(1_000 + pid, "root")).len(), 1);
        }
        let after = rooms(&f);
        // At most a few hundred bytes a value, not 16 KiB.
        assert!(after < 1 << 20, "{after} bytes kept");
    }

    /// The first failregex a line can match, named by one DFA search,
    /// changes nothing: every shipped filter finds the same failures with
    /// it and without it, in its own sample log (and variants) and in a
    /// seventh of the texts of all sample logs. (Where the DFA's match
    /// ends, and which outcome it named, is handed to the named failregex's
    /// split or its search for groups, which check it in a debug build.)
    #[test]
    fn first_failregex_by_dfa_changes_nothing() {
        let Some(all) = samples::texts_of(|_| true) else {
            return;
        };
        let mut with_dfa = 0;
        for entry in std::fs::read_dir(samples::FILTERS).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "conf") {
                continue;
            }
            let Ok(mut fast) = Filter::load(&path, &BTreeMap::new()) else {
                continue;
            };
            if fast.first.is_none() {
                continue;
            }
            with_dfa += 1;
            // All the texts of all the logs for each filter would take a
            // debug build minutes.
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut texts = samples::texts_of(|log| log == name).unwrap_or_default();
            texts.extend(all.iter().step_by(7).cloned());
            let mut plain = Filter::load(&path, &BTreeMap::new()).unwrap();
            plain.first = None;
            for t in &texts {
                assert_eq!(
                    fast.process_line(t),
                    plain.process_line(t),
                    "{}: {t:?}",
                    path.display()
                );
            }
        }
        assert!(with_dfa > 50, "{with_dfa} filters have the DFA");
    }

    /// The literal prefilter looks at the line as written, the regexes at
    /// the line with its date cut out: text joined around the date (`[` +
    /// `]LOGIN`) still matches, wherever the date may be found.
    #[test]
    fn literals_joined_by_the_date_cut() {
        for datepattern in [None, Some("{^LN-BEG}".to_string())] {
            let def = Definition {
                prefregex: None,
                failregex: vec![r#"^\[\]LOGIN FAILED for user: "[^"]*" from IP: <HOST>$"#.into()],
                ignoreregex: Vec::new(),
                maxlines: 1,
                datepattern: datepattern.clone(),
            };
            let mut f = Filter::from_definition(&def).unwrap();
            let r = f.process_line(
                r#"[2014-01-06 10:59:38]LOGIN FAILED for user: "x" from IP: 192.0.2.7"#,
            );
            assert_eq!(r.len(), 1, "{datepattern:?}");
            assert_eq!(r[0].address.unwrap().to_string(), "192.0.2.7");
            // Without the date, nothing is joined: no match.
            assert!(
                f.process_line("no LOGIN FAILED here from IP: 192.0.2.7")
                    .is_empty()
            );
        }
    }

    #[test]
    fn tags() {
        let r = resolve_tags("^x <F-USER>.*</F-USER> from <HOST> </F-NOPE>", false);
        assert!(r.starts_with("^x (?P<user>.*) from "), "{r}");
        assert!(r.ends_with("</F-NOPE>"), "{r}");
    }
}

/// fail2ban's sample logs, for tests that compare engines line by line.
#[cfg(test)]
pub(crate) mod samples {
    use std::path::Path;

    /// Debian's fail2ban filters.
    pub const FILTERS: &str = "/etc/fail2ban/filter.d";
    const LOGS: &str = "/usr/lib/python3/dist-packages/fail2ban/tests/files/logs";

    /// Every line of every sample log, as it is and with its first 16
    /// characters (where a date would be) cut off, each also with a final
    /// newline, with a space and a newline, cut in half, and mutated as a
    /// crafted line would be (a part repeated, a character inserted that
    /// regexes care about, non-ASCII included): `None` (and a note) when
    /// fail2ban is not installed, which fails under CI.
    pub fn texts() -> Option<Vec<String>> {
        texts_of(|_| true)
    }

    /// [`texts`] of the sample logs whose file names `keep` accepts (a
    /// filter's own log is named as the filter, without `.conf`).
    pub fn texts_of(keep: impl Fn(&str) -> bool) -> Option<Vec<String>> {
        if !Path::new(FILTERS).exists() || !Path::new(LOGS).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "fail2ban is not installed (apt-get install fail2ban)"
            );
            println!("SKIPPED: fail2ban is not installed");
            return None;
        }
        let mut texts = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for entry in std::fs::read_dir(LOGS).unwrap() {
            let path = entry.unwrap().path();
            if !path.file_name().is_some_and(|n| keep(&n.to_string_lossy())) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue; // a directory
            };
            for line in String::from_utf8_lossy(&bytes).lines() {
                if line.starts_with('#') {
                    continue;
                }
                let cut = line.char_indices().nth(16).map_or("", |(i, _)| &line[i..]);
                for t in [line, cut] {
                    let half = t
                        .char_indices()
                        .nth(t.chars().count() / 2)
                        .map_or(0, |(i, _)| i);
                    texts.push(format!("{t}\n"));
                    texts.push(t.to_string());
                    texts.push(format!("{t} \n"));
                    texts.push(format!("{}\n", &t[..half]));
                    texts.extend(mutations(t, &mut seed));
                }
            }
        }
        Some(texts)
    }

    /// Three crafted variants of `t`, from a seeded generator.
    fn mutations(t: &str, seed: &mut u64) -> Vec<String> {
        const INSERTS: [&str; 10] = [
            " ", ":", " from ", "[", "]", "=", "-", "/", "\u{e9}", "1.2.3.4",
        ];
        let mut next = |n: usize| {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (*seed >> 33) as usize % n.max(1)
        };
        let bounds: Vec<usize> = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect();
        let mut out = Vec::new();
        for _ in 0..3 {
            let a = bounds[next(bounds.len())];
            let b = bounds[next(bounds.len())];
            let (a, b) = (a.min(b), a.max(b));
            out.push(match next(3) {
                0 => format!("{}{}{}\n", &t[..b], &t[a..b], &t[b..]),
                1 => format!("{}{}{}\n", &t[..a], INSERTS[next(INSERTS.len())], &t[a..]),
                _ => format!("{}{}\n", &t[..a], &t[b..]),
            });
        }
        out
    }
}

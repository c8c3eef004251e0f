//! Compiled rules: for one line, which rules saw a failure from which
//! address, which forgave an address, which ignored the line.
//!
//! palisade's own patterns (Rust regex syntax with `<HOST>`) are matched
//! against the syslog message (see [`crate::syslog`]). Each rule's patterns
//! are compiled into one lazy DFA searched anchored at the start of the
//! message, which says which pattern matches first (ignore, then bad, then
//! good patterns, in the rule's order) and where its match ends; the
//! address is then found with reverse DFAs (the `dfa` module), exactly where
//! the `regex` crate's capture group would put it, without its backtracking
//! engine. The `regex` crate is asked only when that cannot tell (an
//! ambiguous or unusual pattern, an address that does not parse, a `port`
//! group). Lines from a program no rule names are checked by the rules
//! without a `program` only.
//!
//! fail2ban filters run their own pipeline ([`crate::fail2ban`]) on the
//! whole line.

use std::collections::HashMap;
use std::path::PathBuf;

use palisade_model::{Net, Scope};
use regex::bytes::Regex;
use regex_syntax::hir::Hir;

use crate::config::{RuleConfig, StageConfig};
use crate::dfa::{self, Dfas, HostSplit, RuleDfa};
use crate::fail2ban;
use crate::host::{HOST_RE, parse_addr};
use crate::literals;
use crate::ports::OpenPorts;
use crate::syslog;

/// The role of a pattern in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// A failure pattern (`bad`): each match counts against the address.
    Bad,
    /// A success pattern (`good`): a match forgives the address.
    Good,
    /// An ignore pattern: a matching line is not counted by the rule.
    Ignore,
}

/// Why a pattern as written in a rule cannot be used; each says what to
/// write instead.
#[derive(Debug, thiserror::Error)]
pub enum RulePatternError {
    /// A bad or good pattern without exactly one `<HOST>`.
    #[error(
        "{} pattern needs exactly one <HOST> (the attacker's address), found {found}",
        if *.kind == PatternKind::Bad { "a bad" } else { "a good" }
    )]
    HostCount {
        /// Bad or good.
        kind: PatternKind,
        /// How many `<HOST>` it has.
        found: usize,
    },
    /// A bad or good pattern that does not start with `^`.
    #[error(
        "must start with ^ (the start of the message) so the address cannot come from text an attacker controls"
    )]
    Unanchored,
    /// An unbounded repeat before `<HOST>` in a pattern that does not end
    /// with `$`.
    #[error(
        "has an unbounded repeat (*, + or {{n,}}) before <HOST>, so it must end with $: otherwise a user name or URL containing an address could supply <HOST>"
    )]
    OpenEnded,
    /// An ignore pattern with several `<HOST>`.
    #[error("has more than one <HOST>")]
    IgnoreHosts,
    /// A bad pattern of a `closed_ports_only` rule without a port group.
    #[error("closed_ports_only needs a (?P<port>\\d+) group")]
    NoPortGroup,
    /// Not a regular expression (the regex crate's explanation, on one
    /// line).
    #[error("not a valid regex: {0}")]
    Syntax(String),
    /// A regular expression too large to compile.
    #[error(transparent)]
    Regex(regex::Error),
}

/// Why rules did not compile. Each error names the rule and the pattern.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A pattern of the rule does not compile.
    #[error("rule {rule:?}: pattern {pattern:?}: {error}")]
    Pattern {
        /// The rule's name.
        rule: String,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        #[source]
        error: RulePatternError,
    },
    /// The fail2ban filter a rule names could not be loaded.
    #[error("rule {rule:?}: fail2ban filter {}: {source}", path.display())]
    Fail2ban {
        /// The rule's name.
        rule: String,
        /// The filter file.
        path: PathBuf,
        /// What is wrong with it.
        source: fail2ban::Error,
    },
    /// The rule itself is unusable: a duplicate name, no patterns, no
    /// stages, or more rules or stages than the tracker counts.
    #[error("rule {rule:?}: {message}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// What is wrong with it.
        message: String,
    },
}

/// What a rule made of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// A failure from `address`.
    Bad,
    /// A success of `address`: forgive it.
    Good,
    /// An ignore pattern matched: the rule does not count this line.
    Ignored,
}

/// One rule's verdict on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Index into [`Engine::rules`].
    pub rule: usize,
    /// What the rule made of the line.
    pub kind: HitKind,
    /// Always set for `Bad` and `Good`.
    pub address: Option<Net>,
    /// The probed port, for rules that capture `(?P<port>\d+)`.
    pub port: Option<u16>,
}

/// What the tracker needs to know about a compiled rule.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The rule's name, the rule of its bans.
    pub name: String,
    /// This node only, or the whole network.
    pub scope: Scope,
    /// The rule's thresholds, ordered by count.
    pub stages: Vec<StageConfig>,
    /// The rule's own network sizes to count by (else the tracker's).
    pub prefix_v4: Option<u8>,
    /// The rule's own IPv6 network size to count by (else the tracker's).
    pub prefix_v6: Option<u8>,
    /// Its failures can be forged (port probes).
    pub forgeable: bool,
    sources: Vec<String>,
    program: Option<String>,
    closed_ports_only: bool,
}

impl RuleInfo {
    fn program_matches(&self, program: Option<&str>) -> bool {
        match (&self.program, program) {
            (None, _) | (_, None) => true,
            (Some(want), Some(got)) => program_matches(want, got),
        }
    }
}

/// `want` matches `got` exactly, or as a prefix when it ends with `*`.
fn program_matches(want: &str, got: &str) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => want == got,
    }
}

struct NativePattern {
    rule: usize,
    kind: PatternKind,
    re: Regex,
    /// Capture group indexes.
    host: Option<usize>,
    port: Option<usize>,
    /// Reused capture slots (no allocation per match).
    locs: regex::bytes::CaptureLocations,
    /// The DFAs that find the host without `re` (patterns without a `port`
    /// group whose `host` group is at the top level).
    split: Option<HostSplit>,
}

impl NativePattern {
    /// The host text and the port text of a match, if the pattern matches.
    fn extract<'m>(&mut self, msg: &'m str) -> Option<(Option<&'m str>, Option<&'m str>)> {
        self.re.captures_read(&mut self.locs, msg.as_bytes())?;
        let locs = &self.locs;
        let get = |g: Option<usize>| g.and_then(|g| locs.get(g)).and_then(|(s, e)| msg.get(s..e));
        Some((get(self.host), get(self.port)))
    }
}

/// A rule's own patterns: indexes into `Engine::patterns` (ignore, bad,
/// good, in the rule's order) and their DFA.
struct NativeRule {
    patterns: std::ops::Range<usize>,
    dfa: Option<RuleDfa>,
    /// Strings one of which every match of the rule holds, when one of its
    /// patterns would read far into lines it does not match (the port-probe
    /// rule's `.*?IN=` reads every kernel line to its end): a message
    /// without any is not the rule's.
    needles: Option<literals::AnyOf>,
}

/// The rule's [`NativeRule::needles`]: every pattern (as its DFA searches
/// it) must require some string, and one of them must read far first.
fn needles(patterns: &[Hir]) -> Option<literals::AnyOf> {
    if !patterns.iter().any(literals::reads_far_first) {
        return None;
    }
    literals::AnyOf::new(literals::union(patterns.iter().map(literals::required_in))?)
}

/// A program seen lately and its group.
struct Recent {
    key: ShortKey,
    program: String,
    group: (usize, bool),
}

/// A program name's length and first eight bytes: comparing two is one
/// comparison of integers, and for names of at most eight bytes (`sshd`,
/// `CRON`, `kernel`) it is the whole comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
struct ShortKey {
    len: usize,
    head: u64,
}

impl ShortKey {
    #[inline]
    fn of(name: &str) -> ShortKey {
        let b = name.as_bytes();
        // Byte by byte below eight: a copy of a length not known until now
        // is a call to `memcpy`, which costs more than the whole key.
        let head = match b.first_chunk::<8>() {
            Some(head) => u64::from_le_bytes(*head),
            None => b
                .iter()
                .enumerate()
                .fold(0, |h, (i, &c)| h | u64::from(c) << (8 * i)),
        };
        ShortKey {
            len: name.len(),
            head,
        }
    }

    /// Equal keys mean equal names.
    fn exact(self) -> bool {
        self.len <= 8
    }
}

/// The rules that can apply to lines of one program.
struct Group {
    rules: Vec<usize>,
    /// Bytes a message any of them matches can begin with: most lines of
    /// other programs pass the rules without a program (web logs) with
    /// one look at their first byte.
    first: [u64; 4],
}

/// The compiled rules. Stateful (fail2ban multi-line buffers, date-template
/// choice, the open-ports cache), hence `&mut self` when checking.
pub struct Engine {
    rules: Vec<RuleInfo>,
    patterns: Vec<NativePattern>,
    /// Per rule (empty for fail2ban rules).
    native: Vec<NativeRule>,
    dfas: Dfas,
    /// One per distinct set of applicable rules, built on demand; the first
    /// holds the rules without `program` (for lines from other programs).
    groups: Vec<Group>,
    group_of_rules: HashMap<Vec<usize>, usize>,
    group_of_program: HashMap<String, (usize, bool)>,
    /// The last programs seen and their groups (a log interleaves a few
    /// programs), looked up before the map; `next_recent` is replaced next.
    recent: Vec<Recent>,
    next_recent: usize,
    /// The group of all rules (for lines without a header).
    all_group: usize,
    f2b: Vec<(usize, fail2ban::Filter)>,
    /// The failures an imported filter found in the line read (kept for
    /// its room).
    failures: Vec<fail2ban::Failure>,
    open_ports: Option<OpenPorts>,
}

const MAX_GROUPS: usize = 64;
const MAX_PROGRAMS_CACHED: usize = 4096;
/// Programs whose groups are looked up without hashing.
const RECENT_PROGRAMS: usize = 8;

impl Engine {
    /// Compiles `rules` (disabled ones are skipped). Errors name the rule and
    /// the pattern or filter that failed.
    pub fn compile(rules: &[RuleConfig]) -> Result<Engine, CompileError> {
        let mut infos = Vec::new();
        let mut patterns = Vec::new();
        let mut native = Vec::new();
        let mut dfas = Dfas::default();
        let mut f2b = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rc in rules.iter().filter(|r| r.enabled) {
            if !seen.insert(rc.name.clone()) {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: "two rules have this name; rule names must be unique".into(),
                });
            }
            let idx = infos.len();
            if rc.bad.is_empty() && rc.good.is_empty() && rc.fail2ban_filter.is_none() {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: "has no `bad` or `good` patterns and no `fail2ban_filter`".into(),
                });
            }
            if infos.len() >= crate::tracker::MAX_RULES {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: format!("too many rules: at most {}", crate::tracker::MAX_RULES),
                });
            }
            if rc.stages.len() > crate::tracker::MAX_STAGES {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: format!("too many stages: at most {}", crate::tracker::MAX_STAGES),
                });
            }
            if rc.stages.is_empty() {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: "has no stages".into(),
                });
            }
            let first = patterns.len();
            let mut hirs = Vec::new();
            for (list, kind) in [
                (&rc.ignore, PatternKind::Ignore),
                (&rc.bad, PatternKind::Bad),
                (&rc.good, PatternKind::Good),
            ] {
                for p in list {
                    let re = compile_native(p, kind).map_err(|error| CompileError::Pattern {
                        rule: rc.name.clone(),
                        pattern: p.clone(),
                        error,
                    })?;
                    let host = group_index(&re, "host");
                    let port = group_index(&re, "port");
                    if rc.closed_ports_only && kind == PatternKind::Bad && port.is_none() {
                        return Err(CompileError::Pattern {
                            rule: rc.name.clone(),
                            pattern: p.clone(),
                            error: RulePatternError::NoPortGroup,
                        });
                    }
                    let locs = re.capture_locations();
                    let hir = dfa::parse(re.as_str()).map(dfa::anchored_form);
                    let split = hir
                        .as_ref()
                        .filter(|_| kind != PatternKind::Ignore && port.is_none())
                        .and_then(|h| dfas.split(h));
                    hirs.extend(hir);
                    patterns.push(NativePattern {
                        rule: idx,
                        kind,
                        re,
                        host,
                        port,
                        locs,
                        split,
                    });
                }
            }
            let all_parsed = hirs.len() == patterns.len() - first;
            native.push(NativeRule {
                needles: if all_parsed { needles(&hirs) } else { None },
                patterns: first..patterns.len(),
                dfa: if all_parsed && !hirs.is_empty() {
                    dfas.rule(&hirs)
                } else {
                    None
                },
            });
            if let Some(path) = &rc.fail2ban_filter {
                let mut opts = rc.fail2ban_options.clone();
                if let Some(mode) = &rc.mode {
                    opts.insert("mode".into(), mode.clone());
                }
                let mut filter = fail2ban::Filter::load(path, &opts).map_err(|source| {
                    CompileError::Fail2ban {
                        rule: rc.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
                // Only addresses are counted.
                filter.hosts = false;
                f2b.push((idx, filter));
            }
            infos.push(RuleInfo {
                name: rc.name.clone(),
                scope: rc.scope,
                stages: rc.stages.clone(),
                prefix_v4: rc.prefix_v4,
                prefix_v6: rc.prefix_v6,
                forgeable: rc.forgeable,
                sources: rc.sources.clone(),
                program: rc.program.clone(),
                closed_ports_only: rc.closed_ports_only,
            });
        }
        let mut engine = Engine {
            rules: infos,
            patterns,
            native,
            dfas,
            groups: Vec::new(),
            group_of_rules: HashMap::new(),
            group_of_program: HashMap::new(),
            recent: Vec::new(),
            next_recent: 0,
            all_group: 0,
            f2b,
            failures: Vec::new(),
            open_ports: Some(OpenPorts::new()),
        };
        let no_program: Vec<usize> = (0..engine.rules.len())
            .filter(|&i| engine.rules[i].program.is_none())
            .collect();
        let all: Vec<usize> = (0..engine.rules.len()).collect();
        engine.group_for(no_program);
        engine.all_group = engine.group_for(all);
        Ok(engine)
    }

    /// The compiled rules, indexed by [`Hit::rule`].
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// The rules whose fail2ban filters run some regexes on the fallback
    /// engine (fancy-regex, backtracking), with those regexes.
    pub fn fallback_filters(&self) -> Vec<(String, Vec<String>)> {
        self.f2b
            .iter()
            .map(|(rule, f)| (self.rules[*rule].name.clone(), f.fallback_regexes()))
            .filter(|(_, regexes)| !regexes.is_empty())
            .collect()
    }

    /// Turns the open-ports check of `closed_ports_only` rules on or off
    /// (off for dry runs of logs from another machine).
    pub fn check_open_ports(&mut self, on: bool) {
        self.open_ports = on.then(OpenPorts::new);
    }

    fn group_for(&mut self, rules: Vec<usize>) -> usize {
        if let Some(&g) = self.group_of_rules.get(&rules) {
            return g;
        }
        let with_patterns: Vec<usize> = rules
            .iter()
            .copied()
            .filter(|&r| !self.native[r].patterns.is_empty())
            .collect();
        let mut first = [0u64; 4];
        for &r in &with_patterns {
            // A rule without its DFA is asked about every message.
            let mine = self.native[r]
                .dfa
                .as_ref()
                .map_or([u64::MAX; 4], RuleDfa::first);
            for (f, m) in first.iter_mut().zip(mine) {
                *f |= m;
            }
        }
        self.groups.push(Group {
            rules: with_patterns,
            first,
        });
        let g = self.groups.len() - 1;
        self.group_of_rules.insert(rules, g);
        g
    }

    /// The group of rules for lines of `program`, and whether its rules must
    /// still be matched against the program one by one (the group of all
    /// rules, used once too many groups exist).
    fn group_of(&mut self, program: Option<&str>) -> (usize, bool) {
        let Some(program) = program else {
            return (self.all_group, false);
        };
        let key = ShortKey::of(program);
        if let Some(r) = self
            .recent
            .iter()
            .find(|r| r.key == key && (key.exact() || r.program == program))
        {
            return r.group;
        }
        let g = match self.group_of_program.get(program) {
            Some(&g) => g,
            None => {
                let rules: Vec<usize> = (0..self.rules.len())
                    .filter(|&i| self.rules[i].program_matches(Some(program)))
                    .collect();
                let g =
                    if self.groups.len() < MAX_GROUPS || self.group_of_rules.contains_key(&rules) {
                        (self.group_for(rules), false)
                    } else {
                        (self.all_group, true)
                    };
                if self.group_of_program.len() < MAX_PROGRAMS_CACHED {
                    self.group_of_program.insert(program.to_string(), g);
                }
                g
            }
        };
        if self.recent.len() < RECENT_PROGRAMS {
            self.recent.push(Recent {
                key,
                program: program.to_string(),
                group: g,
            });
        } else {
            let r = &mut self.recent[self.next_recent];
            r.key = key;
            r.program.clear();
            r.program.push_str(program);
            r.group = g;
            self.next_recent = (self.next_recent + 1) % RECENT_PROGRAMS;
        }
        g
    }

    /// Checks one line from `source`, appending the verdicts to `out`: at most
    /// one per rule (an ignore beats a failure, a failure beats a success).
    pub fn check(&mut self, source: &str, line: &str, out: &mut Vec<Hit>) {
        let line = line.strip_suffix("\n").unwrap_or(line);
        let line = line.strip_suffix("\r").unwrap_or(line);
        if !self.patterns.is_empty() {
            let header = syslog::parse(line);
            let (g, filter) = self.group_of(header.program);
            let msg = header.message;
            let none_starts = msg
                .as_bytes()
                .first()
                .is_some_and(|&b| !dfa::has(&self.groups[g].first, b));
            let rules = if none_starts {
                0
            } else {
                self.groups[g].rules.len()
            };
            for n in 0..rules {
                let rule = self.groups[g].rules[n];
                let info = &self.rules[rule];
                let applies = (!filter || info.program_matches(header.program))
                    && (info.sources.is_empty() || info.sources.iter().any(|s| s == source));
                let wanted = || {
                    self.native[rule]
                        .needles
                        .as_ref()
                        .is_none_or(|n| n.is_match(msg))
                };
                if applies
                    && wanted()
                    && let Some(hit) = self.rule_hit(rule, msg)
                {
                    out.push(hit);
                }
            }
        }
        for (rule, filter) in &mut self.f2b {
            let info = &self.rules[*rule];
            if !info.sources.is_empty() && !info.sources.iter().any(|s| s == source) {
                continue;
            }
            self.failures.clear();
            filter.process_line_into(line, &mut self.failures);
            for failure in &self.failures {
                if let Some(address) = failure.address {
                    out.push(Hit {
                        rule: *rule,
                        kind: HitKind::Bad,
                        address: Some(address),
                        port: None,
                    });
                    break;
                }
            }
        }
    }

    /// The rule's verdict on `msg`: the first of its patterns that matches
    /// decides (ignore, bad and good patterns in that order), except that a
    /// bad or good pattern whose host is no address passes to the next one.
    fn rule_hit(&mut self, rule: usize, msg: &str) -> Option<Hit> {
        let range = self.native[rule].patterns.clone();
        let Some(rule_dfa) = &mut self.native[rule].dfa else {
            return self.rule_hit_slow(rule, range, msg);
        };
        let (p, end) = match self.dfas.search(rule_dfa, msg.as_bytes()) {
            Ok(Some((n, end))) => (range.start + n, end),
            Ok(None) => return None,
            Err(()) => return self.rule_hit_slow(rule, range, msg),
        };
        let pat = &self.patterns[p];
        let kind = pat.kind;
        if kind == PatternKind::Ignore {
            return Some(Hit {
                rule,
                kind: HitKind::Ignored,
                address: None,
                port: None,
            });
        }
        let host = match &pat.split {
            Some(split) => self
                .dfas
                .host(split, msg.as_bytes(), end)
                .and_then(|(s, e)| msg.get(s..e)),
            None => None,
        };
        let hit = match host {
            Some(host) => parse_addr(host).map(|address| Hit {
                rule,
                kind: if kind == PatternKind::Bad {
                    HitKind::Bad
                } else {
                    HitKind::Good
                },
                address: Some(address),
                port: None,
            }),
            None => self.pattern_hit(p, msg),
        };
        // A host that is no address: the next patterns decide.
        hit.or_else(|| self.rule_hit_slow(rule, p + 1..range.end, msg))
    }

    /// [`Engine::check`] for palisade's own patterns with the `regex` crate
    /// only (what the DFAs must agree with).
    #[cfg(test)]
    fn check_with_regex(&mut self, source: &str, line: &str, out: &mut Vec<Hit>) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let header = syslog::parse(line);
        for rule in 0..self.rules.len() {
            let info = &self.rules[rule];
            let applies = info.program_matches(header.program)
                && (info.sources.is_empty() || info.sources.iter().any(|s| s == source));
            let range = self.native[rule].patterns.clone();
            if applies && let Some(hit) = self.rule_hit_slow(rule, range, header.message) {
                out.push(hit);
            }
        }
    }

    /// [`Engine::rule_hit`] with the `regex` crate, over `patterns` of the
    /// rule.
    fn rule_hit_slow(
        &mut self,
        rule: usize,
        patterns: std::ops::Range<usize>,
        msg: &str,
    ) -> Option<Hit> {
        let mut good = None;
        for p in patterns {
            match self.patterns[p].kind {
                PatternKind::Ignore => {
                    if self.patterns[p].re.is_match(msg.as_bytes()) {
                        return Some(Hit {
                            rule,
                            kind: HitKind::Ignored,
                            address: None,
                            port: None,
                        });
                    }
                }
                PatternKind::Bad => {
                    if let Some(hit) = self.pattern_hit(p, msg) {
                        return Some(hit);
                    }
                }
                PatternKind::Good => {
                    if good.is_none() {
                        good = self.pattern_hit(p, msg);
                    }
                }
            }
        }
        good
    }

    /// The hit of bad or good pattern `p` on `msg` with the `regex` crate,
    /// if it matches with an address.
    fn pattern_hit(&mut self, p: usize, msg: &str) -> Option<Hit> {
        let rule = self.patterns[p].rule;
        let kind = self.patterns[p].kind;
        let (host, port) = self.patterns[p].extract(msg)?;
        let address = host.and_then(parse_addr)?;
        if kind == PatternKind::Good {
            return Some(Hit {
                rule,
                kind: HitKind::Good,
                address: Some(address),
                port: None,
            });
        }
        let port = port.and_then(|p| p.parse::<u16>().ok());
        if self.rules[rule].closed_ports_only
            && let Some(port) = port
            && self
                .open_ports
                .as_mut()
                .is_some_and(|ports| ports.is_open(port))
        {
            return Some(Hit {
                rule,
                kind: HitKind::Ignored,
                address: Some(address),
                port: Some(port),
            });
        }
        Some(Hit {
            rule,
            kind: HitKind::Bad,
            address: Some(address),
            port,
        })
    }
}

fn group_index(re: &Regex, name: &str) -> Option<usize> {
    re.capture_names().position(|n| n == Some(name))
}

/// Checks a pattern as written in a rule: syntax, `<HOST>` and anchoring.
pub fn check_native_pattern(p: &str, kind: PatternKind) -> Result<(), RulePatternError> {
    compile_native(p, kind).map(|_| ())
}

fn compile_native(p: &str, kind: PatternKind) -> Result<Regex, RulePatternError> {
    let hosts = p.matches("<HOST>").count();
    if kind != PatternKind::Ignore {
        if hosts != 1 {
            return Err(RulePatternError::HostCount { kind, found: hosts });
        }
        if !p.starts_with('^') {
            return Err(RulePatternError::Unanchored);
        }
        let before = &p[..p.find("<HOST>").unwrap_or(0)];
        if has_unbounded_repeat(before) && !ends_anchored(p) {
            return Err(RulePatternError::OpenEnded);
        }
    } else if hosts > 1 {
        return Err(RulePatternError::IgnoreHosts);
    }
    let expanded = p.replace("<HOST>", HOST_RE);
    // ASCII classes: \d \w \s mean ASCII digits, word characters and
    // spaces (use (?u:\w) for Unicode); much smaller automata.
    regex::bytes::RegexBuilder::new(&expanded)
        .unicode(false)
        .size_limit(10 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => RulePatternError::Syntax(s.replace('\n', " ")),
            other => RulePatternError::Regex(other),
        })
}

/// True if `s` (a regex prefix) contains `*`, `+` or `{n,}` as a quantifier.
fn has_unbounded_repeat(s: &str) -> bool {
    crate::scan::pieces(s, 0).any(|(i, piece)| match piece {
        crate::scan::Piece::Byte(b'*' | b'+') => true,
        crate::scan::Piece::Byte(b'{') => s[i..]
            .find('}')
            .is_some_and(|end| s[i + 1..i + end].ends_with(',')),
        _ => false,
    })
}

fn ends_anchored(p: &str) -> bool {
    (p.ends_with('$') && !p.ends_with("\\$")) || p.ends_with("\\z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbounded_repeats_are_found_outside_escapes_and_classes() {
        for (p, unbounded) in [
            (r"from [^ ]+ ", true),
            (r"a{3,}", true),
            (r"x*?", true),
            (r"from \S{1,15} ", false),
            (r"[*+]{2} x", false),
            (r"[]*+] x", false),
            (r"\+ \* \{1,\}", false),
            (r"(?:a|b)? c", false),
        ] {
            assert_eq!(has_unbounded_repeat(p), unbounded, "{p}");
        }
    }

    fn rule(toml_text: &str) -> RuleConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn check(engine: &mut Engine, line: &str) -> Vec<Hit> {
        let mut out = Vec::new();
        engine.check("test", line, &mut out);
        out
    }

    #[test]
    fn anchoring_rules() {
        assert!(check_native_pattern("^x <HOST>", PatternKind::Bad).is_ok());
        assert!(check_native_pattern("x <HOST>", PatternKind::Bad).is_err());
        assert!(check_native_pattern("^.* <HOST>", PatternKind::Bad).is_err());
        assert!(check_native_pattern("^.* <HOST> y$", PatternKind::Bad).is_ok());
        assert!(check_native_pattern("^\\S{2,} <HOST>", PatternKind::Bad).is_err());
        assert!(check_native_pattern("^[*+] <HOST>", PatternKind::Bad).is_ok());
        assert!(check_native_pattern("^x", PatternKind::Ignore).is_ok());
        assert!(check_native_pattern("^x", PatternKind::Good).is_err());
    }

    #[test]
    fn bad_good_ignore_and_programs() {
        let rules = vec![
            rule(
                r#"name = "ssh"
                program = "sshd"
                bad = ['^Failed password for (?:invalid user )?.*? from <HOST> port \d+ ssh2$']
                good = ['^Accepted \S+ for \S+ from <HOST> port \d+(?: .*)?$']
                ignore = ['^Failed password for backup ']"#,
            ),
            rule(
                r#"name = "any"
                bad = ['^probe from <HOST>$']"#,
            ),
        ];
        let mut e = Engine::compile(&rules).unwrap();
        let h = check(
            &mut e,
            "Mar  3 12:00:01 web1 sshd[1]: Failed password for root from 198.51.100.7 port 22 ssh2",
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, HitKind::Bad);
        assert_eq!(h[0].address.unwrap().to_string(), "198.51.100.7");
        // Other program: the sshd rule does not apply.
        let h = check(
            &mut e,
            "Mar  3 12:00:01 web1 su[1]: Failed password for root from 198.51.100.7 port 22 ssh2",
        );
        assert!(h.is_empty(), "{h:?}");
        let h = check(
            &mut e,
            "Mar  3 12:00:01 web1 sshd[1]: Failed password for backup from 198.51.100.7 port 22 ssh2",
        );
        assert_eq!(h[0].kind, HitKind::Ignored);
        let h = check(
            &mut e,
            "Mar  3 12:00:01 web1 sshd[1]: Accepted publickey for a from 2001:db8::7 port 22 ssh2",
        );
        assert_eq!(h[0].kind, HitKind::Good);
        assert_eq!(h[0].address.unwrap().to_string(), "2001:db8::7");
        let h = check(
            &mut e,
            "Mar  3 12:00:01 web1 foo[1]: probe from ::ffff:192.0.2.1",
        );
        assert_eq!(h[0].rule, 1);
        assert_eq!(h[0].address.unwrap().to_string(), "192.0.2.1");
        // No header: every rule applies.
        let h = check(&mut e, "probe from 192.0.2.1");
        assert_eq!(h.len(), 1);
        let h = check(&mut e, "probe from 999.0.2.1");
        assert!(h.is_empty());
    }

    use crate::loggen;

    /// The engine's verdicts on `line`, asserted to be the `regex` crate's.
    fn agreed(e: &mut Engine, line: &str) -> Vec<Hit> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        e.check("test", line, &mut a);
        e.check_with_regex("test", line, &mut b);
        assert_eq!(a, b, "{line}");
        a
    }

    /// The DFAs find the same verdicts and addresses as the `regex` crate's
    /// captures, on generated sshd lines, on lines whose user names and
    /// addresses are made to confuse them, and on random edits of both.
    #[test]
    fn dfas_agree_with_regex() {
        let mut rules = crate::builtin::rules();
        rules.push(rule(
            r#"name = "odd"
            program = "sshd"
            ignore = ['backup', '^Failed password for (?:invalid user )?nagios ']
            bad = [
              '^Failed \S+ for (?:invalid user )?.* from <HOST>(?: port \d+)?(?: ssh2)?$',
              '^Invalid user .* from <HOST>(?: .*)?$',
              '^(?:\w{1,9} )?<HOST>\b',
              '^x <HOST>:?\d*$',
              '^Connection closed by (?:\S+ )*<HOST> port (?P<port>\d+)(?: .*)?$',
            ]
            good = ['^Accepted \S+ for \S+ from <HOST>(?: .*)?$']"#,
        ));
        let mut e = Engine::compile(&rules).unwrap();
        e.check_open_ports(false);
        let mut text = Vec::new();
        loggen::write_auth_log(&mut text, 20_000, 7).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let users = [
            "x from 6.6.6.6 port 22 ssh2",
            "from 1.2.3.4",
            "[1.2.3.4]",
            "2001:db8::66",
            "::ffff:1.2.3.4",
            "a b c",
            "",
            "x port 1",
            "999.1.1.1",
            "y [preauth]",
            "1.2.3.4 port 5 [preauth]",
            "nagios",
            "backup",
            "invalid user z from 1:2::3",
        ];
        let addrs = [
            "198.51.100.7",
            "2001:db8:1a:2b::3f9c",
            "[2001:db8::1]",
            "::ffff:192.0.2.1",
            "999.1.2.3",
            "1.2.3",
            "host.example",
            "::",
            "0.0.0.0",
            "fe80::1:2:3:4",
        ];
        let templates: Vec<String> = lines.iter().take(400).cloned().collect();
        for (n, t) in templates.iter().enumerate() {
            let mut l = t.clone();
            for u in ["admin", "root", "deploy", "test", "oracle"] {
                l = l.replace(&format!(" {u} "), &format!(" {} ", users[n % users.len()]));
            }
            for a in addrs {
                let mut parts = l.split(' ').map(String::from).collect::<Vec<_>>();
                for w in &mut parts {
                    if w.parse::<std::net::IpAddr>().is_ok() {
                        *w = a.to_string();
                    }
                }
                lines.push(parts.join(" "));
            }
            lines.push(l);
        }
        // Random edits with the characters that matter.
        let mut r = loggen::Rng::new(99);
        let alphabet = b" .:[]0123456789abcdef";
        let words = [
            " from ",
            " port 22",
            " ssh2",
            " [preauth]",
            "1.2.3.4",
            "::1",
            " user ",
        ];
        for n in 0..30_000 {
            let mut b = lines[n % 5_000].clone().into_bytes();
            for _ in 0..1 + r.below(3) {
                let at = r.below(b.len() as u64 + 1) as usize;
                match r.below(3) {
                    0 => b.insert(at, alphabet[r.below(alphabet.len() as u64) as usize]),
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    _ => {
                        let w = words[r.below(words.len() as u64) as usize].as_bytes();
                        b.splice(at..at, w.iter().copied());
                    }
                }
            }
            lines.push(String::from_utf8(b).unwrap());
        }
        let (mut hits, mut fast) = (0, 0);
        for l in &lines {
            let a = agreed(&mut e, l);
            hits += a.len();
            fast += a.iter().filter(|h| h.address.is_some()).count();
        }
        assert!(hits > 20_000 && fast > 20_000, "{hits} {fast}");
    }

    /// A rule with a pattern that reads far first is asked only about
    /// messages holding one of its required strings, and its verdicts stay
    /// the `regex` crate's; rules anchored on a literal get no such check.
    #[test]
    fn needles_skip_only_what_cannot_match() {
        let mut rules = crate::builtin::rules();
        rules.push(rule(
            r#"name = "far"
            ignore = ['debug']
            bad = ['^.*? refused connect from <HOST>$', '^\s*blocked <HOST>$']"#,
        ));
        let mut e = Engine::compile(&rules).unwrap();
        e.check_open_ports(false);
        let named = |e: &Engine, n: &str| e.rules().iter().position(|r| r.name == n).unwrap();
        let expected = [
            ("far", true),
            ("port-probe", true),
            ("sshd", false),
            ("http-auth", false),
        ];
        for (name, has) in expected {
            let r = named(&e, name);
            assert_eq!(e.native[r].needles.is_some(), has, "{name}");
        }
        let h = "Mar  3 12:00:01 web1";
        let lines = [
            format!("{h} kernel: [572389.971485] EXT4-fs (sda1): re-mounted."),
            format!(
                "{h} kernel: [ 1.5] IN=eth0 OUT= MAC=aa SRC=198.51.100.7 DST=10.0.0.1 LEN=60 PROTO=TCP SPT=4444 DPT=23 WINDOW=1 SYN"
            ),
            format!(
                "{h} kernel: IN=eth0 OUT= SRC=198.51.100.8 DST=10.0.0.1 PROTO=UDP SPT=1 DPT=53"
            ),
            format!("{h} kernel: IN=eth0 OUT= SRC=198.51.100.8 DST=10.0.0.1 PROTO=ICMP"),
            format!("{h} app: x refused connect from 198.51.100.9"),
            format!("{h} app:   blocked 198.51.100.10"),
            format!("{h} app: debug x refused connect from 198.51.100.9"),
            format!("{h} app: refused connect"),
            format!("{h} app: blocked"),
            "x refused connect from 198.51.100.11".to_string(),
            "blocked".to_string(),
        ];
        let (mut probes, mut far) = (0, 0);
        for l in &lines {
            let a = agreed(&mut e, l);
            probes += a
                .iter()
                .filter(|h| h.rule == named(&e, "port-probe"))
                .count();
            far += a.iter().filter(|h| h.rule == named(&e, "far")).count();
        }
        assert_eq!((probes, far), (2, 4));
    }

    /// Programs told apart by the recent-programs cache: names sharing
    /// their first eight bytes, names of eight bytes or fewer, one a prefix
    /// of another.
    #[test]
    fn recent_programs_are_told_apart() {
        let mut e = Engine::compile(&[
            rule(
                r#"name = "a"
                program = "systemd-logind"
                bad = ['^x <HOST>$']"#,
            ),
            rule(
                r#"name = "b"
                program = "sshd"
                bad = ['^x <HOST>$']"#,
            ),
        ])
        .unwrap();
        let h = "Mar  3 12:00:01 web1";
        for _ in 0..3 {
            for (program, rule) in [
                ("systemd-logind", Some(0)),
                ("systemd-resolved", None),
                ("sshd", Some(1)),
                ("sshd2", None),
                ("ssh", None),
                ("systemd-", None),
            ] {
                let hits = check(&mut e, &format!("{h} {program}[1]: x 198.51.100.7"));
                assert_eq!(hits.first().map(|h| h.rule), rule, "{program}");
            }
        }
    }

    #[test]
    fn errors_name_rule_and_pattern() {
        let mut r = rule("name = \"x\"\nbad = ['^a <HOST>$']");
        r.bad.push("^(unclosed <HOST>".into());
        let err = Engine::compile(&[r]).err().unwrap().to_string();
        assert!(err.contains("rule \"x\""), "{err}");
        assert!(err.contains("^(unclosed <HOST>"), "{err}");
    }
}

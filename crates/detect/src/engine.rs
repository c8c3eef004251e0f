//! Compiled rules: for one line, which rules saw a failure from which
//! address, which forgave an address, which ignored the line.
//!
//! palisade's own patterns (Rust regex syntax with `<HOST>`) are matched
//! against the syslog message (see [`crate::syslog`]). All patterns of the
//! rules that can apply to a program are compiled into one [`RegexSet`]: a
//! line is scanned once, and capture groups are extracted only for the
//! patterns that matched. Lines from a program no rule names are checked by
//! the rules without a `program` only.
//!
//! fail2ban filters run their own pipeline ([`crate::fail2ban`]) on the
//! whole line.

use std::collections::HashMap;
use std::path::PathBuf;

use palisade_model::{Net, Scope};
use regex::bytes::{Regex, RegexSet};

use crate::config::{RuleConfig, StageConfig};
use crate::fail2ban;
use crate::host::{HOST_RE, parse_addr};
use crate::ports::OpenPorts;
use crate::syslog;

/// The role of a pattern in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    Bad,
    Good,
    Ignore,
}

/// Why rules did not compile. Each error names the rule and the pattern.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("rule {rule:?}: pattern {pattern:?}: {message}")]
    Pattern {
        rule: String,
        pattern: String,
        message: String,
    },
    #[error("rule {rule:?}: fail2ban filter {}: {source}", path.display())]
    Fail2ban {
        rule: String,
        path: PathBuf,
        source: fail2ban::Error,
    },
    #[error("rule {rule:?}: {message}")]
    Rule { rule: String, message: String },
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
    pub kind: HitKind,
    /// Always set for `Bad` and `Good`.
    pub address: Option<Net>,
    /// The probed port, for rules that capture `(?P<port>\d+)`.
    pub port: Option<u16>,
}

/// What the tracker needs to know about a compiled rule.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub name: String,
    pub scope: Scope,
    pub stages: Vec<StageConfig>,
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
    locs: std::cell::RefCell<regex::bytes::CaptureLocations>,
}

impl NativePattern {
    /// The host text and the port text of a match, if the pattern matches.
    fn extract<'m>(&self, msg: &'m str) -> Option<(Option<&'m str>, Option<&'m str>)> {
        let mut locs = self.locs.borrow_mut();
        self.re.captures_read(&mut locs, msg.as_bytes())?;
        let get = |g: Option<usize>| g.and_then(|g| locs.get(g)).and_then(|(s, e)| msg.get(s..e));
        Some((get(self.host), get(self.port)))
    }
}

/// A RegexSet over the patterns of a subset of the rules.
struct Group {
    set: RegexSet,
    /// Pattern indexes (into `Engine::patterns`), in set order.
    members: Vec<usize>,
}

/// The compiled rules. Stateful (fail2ban multi-line buffers, date-template
/// choice, the open-ports cache), hence `&mut self` when checking.
pub struct Engine {
    rules: Vec<RuleInfo>,
    patterns: Vec<NativePattern>,
    /// One per distinct set of applicable rules, built on demand; the first
    /// holds the rules without `program` (for lines from other programs).
    groups: Vec<Group>,
    group_of_rules: HashMap<Vec<usize>, usize>,
    group_of_program: HashMap<String, usize>,
    /// The group of all rules (for lines without a header).
    all_group: usize,
    f2b: Vec<(usize, fail2ban::Filter)>,
    open_ports: std::cell::RefCell<Option<OpenPorts>>,
    matched: Vec<usize>,
}

const MAX_GROUPS: usize = 64;
const MAX_PROGRAMS_CACHED: usize = 4096;

impl Engine {
    /// Compiles `rules` (disabled ones are skipped). Errors name the rule and
    /// the pattern or filter that failed.
    pub fn compile(rules: &[RuleConfig]) -> Result<Engine, CompileError> {
        let mut infos = Vec::new();
        let mut patterns = Vec::new();
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
            if rc.stages.is_empty() {
                return Err(CompileError::Rule {
                    rule: rc.name.clone(),
                    message: "has no stages".into(),
                });
            }
            for (list, kind) in [
                (&rc.ignore, PatternKind::Ignore),
                (&rc.bad, PatternKind::Bad),
                (&rc.good, PatternKind::Good),
            ] {
                for p in list {
                    let re = compile_native(p, kind).map_err(|message| CompileError::Pattern {
                        rule: rc.name.clone(),
                        pattern: p.clone(),
                        message,
                    })?;
                    let host = group_index(&re, "host");
                    let port = group_index(&re, "port");
                    if rc.closed_ports_only && kind == PatternKind::Bad && port.is_none() {
                        return Err(CompileError::Pattern {
                            rule: rc.name.clone(),
                            pattern: p.clone(),
                            message: "closed_ports_only needs a (?P<port>\\d+) group".into(),
                        });
                    }
                    let locs = std::cell::RefCell::new(re.capture_locations());
                    patterns.push(NativePattern {
                        rule: idx,
                        kind,
                        re,
                        host,
                        port,
                        locs,
                    });
                }
            }
            if let Some(path) = &rc.fail2ban_filter {
                let mut opts = rc.fail2ban_options.clone();
                if let Some(mode) = &rc.mode {
                    opts.insert("mode".into(), mode.clone());
                }
                let filter = fail2ban::Filter::load(path, &opts).map_err(|source| {
                    CompileError::Fail2ban {
                        rule: rc.name.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
                f2b.push((idx, filter));
            }
            infos.push(RuleInfo {
                name: rc.name.clone(),
                scope: rc.scope,
                stages: rc.stages.clone(),
                sources: rc.sources.clone(),
                program: rc.program.clone(),
                closed_ports_only: rc.closed_ports_only,
            });
        }
        let mut engine = Engine {
            rules: infos,
            patterns,
            groups: Vec::new(),
            group_of_rules: HashMap::new(),
            group_of_program: HashMap::new(),
            all_group: 0,
            f2b,
            open_ports: std::cell::RefCell::new(Some(OpenPorts::new())),
            matched: Vec::new(),
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

    /// Turns the open-ports check of `closed_ports_only` rules on or off
    /// (off for dry runs of logs from another machine).
    pub fn check_open_ports(&mut self, on: bool) {
        *self.open_ports.get_mut() = on.then(OpenPorts::new);
    }

    fn group_for(&mut self, rules: Vec<usize>) -> usize {
        if let Some(&g) = self.group_of_rules.get(&rules) {
            return g;
        }
        let members: Vec<usize> = (0..self.patterns.len())
            .filter(|&p| rules.contains(&self.patterns[p].rule))
            .collect();
        let set = regex::bytes::RegexSetBuilder::new(
            members.iter().map(|&p| self.patterns[p].re.as_str()),
        )
        .unicode(false)
        .size_limit(64 << 20)
        .dfa_size_limit(16 << 20)
        .build()
        .unwrap_or_else(|e| panic!("patterns compiled one by one compile as a set: {e}"));
        self.groups.push(Group { set, members });
        let g = self.groups.len() - 1;
        self.group_of_rules.insert(rules, g);
        g
    }

    fn group_of(&mut self, program: Option<&str>) -> usize {
        let Some(program) = program else {
            return self.all_group;
        };
        if let Some(&g) = self.group_of_program.get(program) {
            return g;
        }
        let rules: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].program_matches(Some(program)))
            .collect();
        let g = if self.groups.len() < MAX_GROUPS || self.group_of_rules.contains_key(&rules) {
            self.group_for(rules)
        } else {
            self.all_group
        };
        if self.group_of_program.len() < MAX_PROGRAMS_CACHED {
            self.group_of_program.insert(program.to_string(), g);
        }
        g
    }

    /// Checks one line from `source`, appending the verdicts to `out`: at most
    /// one per rule (an ignore beats a failure, a failure beats a success).
    pub fn check(&mut self, source: &str, line: &str, out: &mut Vec<Hit>) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !self.patterns.is_empty() {
            let header = syslog::parse(line);
            let g = self.group_of(header.program);
            let group = &self.groups[g];
            let msg = header.message;
            self.matched.clear();
            self.matched.extend(
                group
                    .set
                    .matches(msg.as_bytes())
                    .into_iter()
                    .map(|i| group.members[i]),
            );
            if !self.matched.is_empty() {
                self.native_hits(source, header.program, msg, out);
            }
        }
        for (rule, filter) in &mut self.f2b {
            let info = &self.rules[*rule];
            if !info.sources.is_empty() && !info.sources.iter().any(|s| s == source) {
                continue;
            }
            for failure in filter.process_line(line) {
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

    fn native_hits(&mut self, source: &str, program: Option<&str>, msg: &str, out: &mut Vec<Hit>) {
        // `matched` is in pattern order: per rule, ignore then bad then good.
        let mut i = 0;
        while i < self.matched.len() {
            let rule = self.patterns[self.matched[i]].rule;
            let end = i + self.matched[i..]
                .iter()
                .take_while(|&&p| self.patterns[p].rule == rule)
                .count();
            let info = &self.rules[rule];
            let applies = info.program_matches(program)
                && (info.sources.is_empty() || info.sources.iter().any(|s| s == source));
            if applies && let Some(hit) = self.rule_hit(rule, &self.matched[i..end], msg) {
                out.push(hit);
            }
            i = end;
        }
    }

    fn rule_hit(&self, rule: usize, matched: &[usize], msg: &str) -> Option<Hit> {
        let mut good = None;
        for &p in matched {
            let pat = &self.patterns[p];
            match pat.kind {
                PatternKind::Ignore => {
                    return Some(Hit {
                        rule,
                        kind: HitKind::Ignored,
                        address: None,
                        port: None,
                    });
                }
                PatternKind::Bad => {
                    let Some((host, port)) = pat.extract(msg) else {
                        continue;
                    };
                    let Some(address) = host.and_then(parse_addr) else {
                        continue;
                    };
                    let port = port.and_then(|p| p.parse::<u16>().ok());
                    if self.rules[rule].closed_ports_only
                        && let Some(port) = port
                        && self
                            .open_ports
                            .borrow_mut()
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
                    return Some(Hit {
                        rule,
                        kind: HitKind::Bad,
                        address: Some(address),
                        port,
                    });
                }
                PatternKind::Good => {
                    if good.is_none()
                        && let Some((Some(host), _)) = pat.extract(msg)
                        && let Some(address) = parse_addr(host)
                    {
                        good = Some(Hit {
                            rule,
                            kind: HitKind::Good,
                            address: Some(address),
                            port: None,
                        });
                    }
                }
            }
        }
        good
    }
}

fn group_index(re: &Regex, name: &str) -> Option<usize> {
    re.capture_names().position(|n| n == Some(name))
}

/// Checks a pattern as written in a rule: syntax, `<HOST>` and anchoring.
pub fn check_native_pattern(p: &str, kind: PatternKind) -> Result<(), String> {
    compile_native(p, kind).map(|_| ())
}

fn compile_native(p: &str, kind: PatternKind) -> Result<Regex, String> {
    let hosts = p.matches("<HOST>").count();
    if kind != PatternKind::Ignore {
        if hosts != 1 {
            return Err(format!(
                "{} pattern needs exactly one <HOST> (the attacker's address), found {hosts}",
                if kind == PatternKind::Bad {
                    "a bad"
                } else {
                    "a good"
                }
            ));
        }
        if !p.starts_with('^') {
            return Err(
                "must start with ^ (the start of the message) so the address cannot come from text an attacker controls"
                    .into(),
            );
        }
        let before = &p[..p.find("<HOST>").unwrap_or(0)];
        if has_unbounded_repeat(before) && !ends_anchored(p) {
            return Err(
                "has an unbounded repeat (*, + or {n,}) before <HOST>, so it must end with $: otherwise a user name or URL containing an address could supply <HOST>"
                    .into(),
            );
        }
    } else if hosts > 1 {
        return Err("has more than one <HOST>".into());
    }
    let expanded = p.replace("<HOST>", HOST_RE);
    // ASCII classes: \d \w \s mean ASCII digits, word characters and
    // spaces (use (?u:\w) for Unicode); much smaller automata.
    regex::bytes::RegexBuilder::new(&expanded)
        .unicode(false)
        .size_limit(10 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => format!("not a valid regex: {}", s.replace('\n', " ")),
            other => other.to_string(),
        })
}

/// True if `s` (a regex prefix) contains `*`, `+` or `{n,}` as a quantifier.
fn has_unbounded_repeat(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'*' | b'+' if !in_class => return true,
            b'{' if !in_class => {
                if let Some(end) = s[i..].find('}')
                    && s[i + 1..i + end].ends_with(',')
                {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn ends_anchored(p: &str) -> bool {
    (p.ends_with('$') && !p.ends_with("\\$")) || p.ends_with("\\z")
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn errors_name_rule_and_pattern() {
        let mut r = rule("name = \"x\"\nbad = ['^a <HOST>$']");
        r.bad.push("^(unclosed <HOST>".into());
        let err = Engine::compile(&[r]).err().unwrap().to_string();
        assert!(err.contains("rule \"x\""), "{err}");
        assert!(err.contains("^(unclosed <HOST>"), "{err}");
    }
}

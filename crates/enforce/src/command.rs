//! The command enforcer (banshare's client): a ban is a command run per
//! address, such as `fail2ban-client set {jail} banip {ip}` or `psad
//! --fw-block-ip {ip}`, with an unban counterpart.
//!
//! Safety first, since addresses come from attackers' traffic:
//!
//! - No shell, ever. A [`Template`] is split into arguments once, when the
//!   configuration is read (shell-like quoting applies to the template text
//!   only), and each run is an `execve` of those arguments with the
//!   placeholders filled in. A substituted value is never split, quoted or
//!   interpreted, whatever it contains.
//! - Only palisade's own canonical text reaches a command: `{ip}` and
//!   `{net}` come from a parsed [`Net`], `{duration}` and `{family}` are
//!   numbers, `{jail}` must match `[A-Za-z0-9._-]` and `{rule}` may also
//!   hold `/` and `:` (palisade's own rule names: `fail2ban/sshd`,
//!   `feed:NAME`), but neither may start with `-` (so it cannot pass as an
//!   option), `{rule}` has no empty, `.` or `..` path segment, and both are
//!   at most 64 bytes; an entry whose rule does not is refused.
//!
//! `{jail}` is the configured `jail` when there is one (the jail that
//! receives palisade's bans); otherwise the jail the decision came from:
//! the last `/` segment of its rule (`fail2ban/sshd` gives `sshd`).
//!
//! Never blocking the agent: [`CommandEnforcer::apply`] only queues work.
//! Worker threads run the commands, each with a timeout after which the
//! command (its whole process group) is killed. A failure is logged with the
//! exit status and the start of its stderr and stdout, and retried with
//! growing pauses (1 s, 2 s, 4 s, ...) up to `retries` times. A newer change
//! for the same address replaces a queued one, so the last word wins, and a
//! ban that never ran is dropped when its unban arrives.
//!
//! A removal carries no rule, so the enforcer remembers the rule each ban
//! was run with and gives its unban the same `{jail}`.
//!
//! `replace_all` cannot know what the other program holds: it runs the ban
//! command again for every active ban (unless `replay = false`), which such
//! programs treat as a refresh. Stale bans in the other program are not
//! removed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use palisade_model::{Action, Family, Net, Span, Timestamp};
use serde::{Deserialize, Deserializer};
use tracing::{error, info, warn};

use crate::enforcer::{Change, EnforceError, Enforcer, Entry, ObjectStatus, Status};
use crate::filter::Filter;
use crate::name::NameError;

/// Longest rule or jail name passed to a command.
pub const MAX_RULE_LEN: usize = 64;
/// How much of a failed command's output is logged, per stream.
const OUTPUT_LOG_BYTES: usize = 1000;
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `kind = "command"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Name in logs and `palisade status` (default `command`).
    #[serde(default)]
    pub name: Option<String>,
    /// Run for every ban, e.g. `fail2ban-client set {jail} banip {ip}`.
    pub ban: Template,
    /// Run for every unban (nothing is run without it).
    #[serde(default)]
    pub unban: Option<Template>,
    /// Run for every allow, e.g. `fail2ban-client set {jail} addignoreip
    /// {net}`.
    #[serde(default)]
    pub allow: Option<Template>,
    /// Run when an allow is lifted.
    #[serde(default)]
    pub unallow: Option<Template>,
    /// `{jail}` for every decision, and `{rule}` for decisions without a
    /// rule.
    #[serde(default, deserialize_with = "opt_jail_name")]
    pub jail: Option<String>,
    /// How long a command may run before it is killed (default 30s).
    #[serde(default = "default_timeout", deserialize_with = "finite_span")]
    pub timeout: Duration,
    /// Retries after a failure (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Commands run at once (default 1: in order).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most changes waiting to run; more are refused (default 100000).
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Run the ban command for every active ban on `replace_all` (at agent
    /// start), since palisade cannot read the other program's state.
    #[serde(default = "yes")]
    pub replay: bool,
    /// `{duration}` of a ban that never ends (default `-1`, fail2ban's
    /// "permanent").
    #[serde(default = "default_forever")]
    pub forever_duration: String,
    /// Which decisions the commands are run for.
    #[serde(default)]
    pub filter: Filter,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    3
}
fn default_workers() -> usize {
    1
}
fn default_queue_limit() -> usize {
    100_000
}
fn yes() -> bool {
    true
}
fn default_forever() -> String {
    "-1".into()
}

fn finite_span<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Span::deserialize(d)? {
        Span::For(t) => Ok(t),
        Span::Forever => Err(serde::de::Error::custom(
            "a command timeout must be a length of time, such as 30s",
        )),
    }
}

fn opt_jail_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    check_jail(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

impl CommandConfig {
    /// A configuration with defaults for everything but the ban template.
    pub fn new(ban: Template) -> CommandConfig {
        CommandConfig {
            name: None,
            ban,
            unban: None,
            allow: None,
            unallow: None,
            jail: None,
            timeout: default_timeout(),
            retries: default_retries(),
            workers: default_workers(),
            queue_limit: default_queue_limit(),
            replay: true,
            forever_duration: default_forever(),
            filter: Filter::default(),
        }
    }
}

/// A value a template can take from a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{ip}`: the address of a single-address decision.
    Ip,
    /// `{net}`: the network in CIDR form (`198.18.0.7/32` for a host).
    Net,
    /// `{jail}`: the configured `jail`, else the last `/` segment of the
    /// decision's rule.
    Jail,
    /// `{rule}`: the decision's rule, else the configured `jail`.
    Rule,
    /// `{duration}`: whole seconds left, or `forever_duration`.
    Duration,
    /// `{family}`: `4` or `6`.
    Family,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Placeholder> {
        Some(match name {
            "ip" => Placeholder::Ip,
            "net" => Placeholder::Net,
            "jail" => Placeholder::Jail,
            "rule" => Placeholder::Rule,
            "duration" => Placeholder::Duration,
            "family" => Placeholder::Family,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A command line split into arguments, with placeholders (see the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    args: Vec<Vec<Piece>>,
}

/// What a template is filled with.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    /// The decision's address or network (`{ip}`, `{net}`, `{family}`).
    pub net: Net,
    /// `{jail}`.
    pub jail: &'a str,
    /// `{rule}`.
    pub rule: &'a str,
    /// `{duration}`: whole seconds left, or the configured forever value.
    pub duration: &'a str,
}

/// Why a command template cannot be used; each message quotes the
/// template as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template ends with `\` outside quotes.
    #[error("{0:?} ends with a lone backslash")]
    LoneBackslash(String),
    /// A `{` with no `}` after it.
    #[error("{template:?}: unclosed {{{name}")]
    UnclosedPlaceholder {
        /// The template as written.
        template: String,
        /// What follows the `{`.
        name: String,
    },
    /// A placeholder palisade does not fill.
    #[error(
        "{template:?}: unknown placeholder {{{name}}}; use {{ip}}, {{net}}, {{jail}}, {{rule}}, {{duration}} or {{family}} ({{{{ and }}}} for literal braces)"
    )]
    UnknownPlaceholder {
        /// The template as written.
        template: String,
        /// The placeholder's name, between the braces.
        name: String,
    },
    /// A `}` that closes nothing.
    #[error("{0:?}: a lone }} (write }}}} for a literal brace)")]
    LoneBrace(String),
    /// A quote that is never closed.
    #[error("{0:?} has an unclosed quote")]
    UnclosedQuote(String),
    /// Nothing but whitespace.
    #[error("an empty command")]
    Empty,
    /// The first word, the program, has a placeholder in it.
    #[error("{0:?}: the program itself cannot be a placeholder")]
    PlaceholderProgram(String),
}

impl Template {
    /// Splits `source` like a POSIX shell would split words (whitespace;
    /// `'...'`; `"..."` with `\"` and `\\`; `\x` outside quotes), without
    /// any expansion, and finds the placeholders (`{ip}`, `{net}`, `{jail}`,
    /// `{rule}`, `{duration}`, `{family}`; `{{` and `}}` for literal braces).
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut args: Vec<Vec<Piece>> = Vec::new();
        let mut cur: Option<Vec<Piece>> = None;
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        #[derive(PartialEq)]
        enum Q {
            None,
            Single,
            Double,
        }
        let mut q = Q::None;
        let flush_text = |cur: &mut Option<Vec<Piece>>, text: &mut String| {
            if !text.is_empty() {
                cur.get_or_insert_with(Vec::new)
                    .push(Piece::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = chars.next() {
            match (c, &q) {
                ('\'', Q::None) => {
                    q = Q::Single;
                    cur.get_or_insert_with(Vec::new);
                }
                ('\'', Q::Single) => q = Q::None,
                ('"', Q::None) => {
                    q = Q::Double;
                    cur.get_or_insert_with(Vec::new);
                }
                ('"', Q::Double) => q = Q::None,
                ('\\', Q::None) => match chars.next() {
                    Some(n) => {
                        text.push(n);
                        cur.get_or_insert_with(Vec::new);
                    }
                    None => return Err(TemplateError::LoneBackslash(source.to_string())),
                },
                ('\\', Q::Double) => match chars.peek() {
                    Some(&n) if n == '"' || n == '\\' => {
                        text.push(n);
                        chars.next();
                    }
                    _ => text.push('\\'),
                },
                ('{', _) if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                    cur.get_or_insert_with(Vec::new);
                }
                ('}', _) if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                    cur.get_or_insert_with(Vec::new);
                }
                ('{', _) => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(n) => name.push(n),
                            None => {
                                return Err(TemplateError::UnclosedPlaceholder {
                                    template: source.to_string(),
                                    name,
                                });
                            }
                        }
                    }
                    let Some(p) = Placeholder::parse(&name) else {
                        return Err(TemplateError::UnknownPlaceholder {
                            template: source.to_string(),
                            name,
                        });
                    };
                    flush_text(&mut cur, &mut text);
                    cur.get_or_insert_with(Vec::new).push(Piece::Value(p));
                }
                ('}', _) => {
                    return Err(TemplateError::LoneBrace(source.to_string()));
                }
                (c, Q::None) if c.is_whitespace() => {
                    flush_text(&mut cur, &mut text);
                    if let Some(a) = cur.take() {
                        args.push(a);
                    }
                }
                (c, _) => {
                    text.push(c);
                    cur.get_or_insert_with(Vec::new);
                }
            }
        }
        if q != Q::None {
            return Err(TemplateError::UnclosedQuote(source.to_string()));
        }
        flush_text(&mut cur, &mut text);
        if let Some(a) = cur.take() {
            args.push(a);
        }
        match args.first() {
            None => return Err(TemplateError::Empty),
            Some(first) if first.iter().any(|p| matches!(p, Piece::Value(_))) => {
                return Err(TemplateError::PlaceholderProgram(source.to_string()));
            }
            _ => {}
        }
        Ok(Template {
            source: source.to_string(),
            args,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The program (first argument).
    pub fn program(&self) -> String {
        self.args[0]
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Value(_) => "",
            })
            .collect()
    }

    /// True if the template has placeholder `p` in any argument.
    pub fn uses(&self, p: Placeholder) -> bool {
        self.args.iter().flatten().any(|x| *x == Piece::Value(p))
    }

    /// The arguments with the placeholders filled in.
    pub fn render(&self, v: &Values<'_>) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| {
                let mut s = String::new();
                for p in arg {
                    match p {
                        Piece::Text(t) => s.push_str(t),
                        Piece::Value(Placeholder::Ip) => s.push_str(&v.net.addr().to_string()),
                        Piece::Value(Placeholder::Net) => {
                            s.push_str(&format!("{}/{}", v.net.addr(), v.net.prefix()))
                        }
                        Piece::Value(Placeholder::Jail) => s.push_str(v.jail),
                        Piece::Value(Placeholder::Rule) => s.push_str(v.rule),
                        Piece::Value(Placeholder::Duration) => s.push_str(v.duration),
                        Piece::Value(Placeholder::Family) => s.push_str(match v.net.family() {
                            Family::V4 => "4",
                            Family::V6 => "6",
                        }),
                    }
                }
                s
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a jail name before it goes into a command.
pub fn check_jail(name: &str) -> Result<(), NameError> {
    // Not an option either: a leading `-` would be read as one.
    let ok = palisade_model::name::is_plain(name)
        && name.len() <= MAX_RULE_LEN
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::Jail(name.to_string()))
    }
}

/// Checks a rule name before it goes into a command: a jail name's
/// characters plus `/` and `:`, with no empty, `.` or `..` segment between
/// slashes (so it cannot climb out of a directory a template puts it in).
pub fn check_rule(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_RULE_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':'))
        && name.split('/').all(|seg| !matches!(seg, "" | "." | ".."));
    if ok {
        Ok(())
    } else {
        Err(NameError::Rule(name.to_string()))
    }
}

/// The jail a rule names: its last `/` segment (`fail2ban/sshd` is jail
/// `sshd`, a detector's rule `sshd` too).
fn jail_of(rule: &str) -> &str {
    rule.rsplit('/').next().unwrap_or(rule)
}

type Key = (Action, Net);

/// One command to run.
#[derive(Debug, Clone)]
struct Job {
    key: Key,
    /// True for a ban or allow, false for their removal.
    put: bool,
    argv: Vec<String>,
    attempt: u32,
    not_before: Instant,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: HashSet<Key>,
    /// Keys whose last successful command put them in place.
    applied: HashSet<Key>,
    shutdown: bool,
    ran: u64,
    failed: u64,
    /// Failures given up on since the last success.
    failing: u64,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
}

/// The command enforcer (see the module docs).
#[derive(Debug)]
pub struct CommandEnforcer {
    name: String,
    config: CommandConfig,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The rule each ban or allow was put with, for its removal's
    /// `{jail}`/`{rule}` (a removal carries no rule).
    rules: HashMap<Key, String>,
    /// Decisions whose command was refused (an invalid rule name, a
    /// network for an `{ip}` template), with their expiry and why.
    refused: HashMap<Key, (Option<Timestamp>, String)>,
}

impl CommandEnforcer {
    /// Checks the programs exist and starts the worker threads.
    pub fn new(config: CommandConfig) -> Result<CommandEnforcer, EnforceError> {
        let templates = [
            Some(&config.ban),
            config.unban.as_ref(),
            config.allow.as_ref(),
            config.unallow.as_ref(),
        ];
        for t in templates.into_iter().flatten() {
            let program = t.program();
            if find_program(&program).is_none() {
                return Err(EnforceError::Config(format!(
                    "command {:?}: program {program:?} not found{}",
                    t.source(),
                    if program.contains('/') {
                        String::new()
                    } else {
                        format!(" on PATH ({})", std::env::var("PATH").unwrap_or_default())
                    }
                )));
            }
        }
        if let Some(j) = &config.jail {
            check_jail(j)?;
        }
        if config.workers == 0 {
            return Err(EnforceError::Config(
                "a command enforcer needs workers >= 1".into(),
            ));
        }
        let name = config.name.clone().unwrap_or_else(|| "command".into());
        let shared = Arc::new(Shared::default());
        let mut workers = Vec::new();
        for n in 0..config.workers {
            let shared = shared.clone();
            let (timeout, retries) = (config.timeout, config.retries);
            let label = name.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("palisade-cmd-{n}"))
                    .spawn(move || worker(&shared, &label, timeout, retries))
                    .map_err(|e| {
                        EnforceError::Other(format!("cannot start a command worker: {e}"))
                    })?,
            );
        }
        Ok(CommandEnforcer {
            name,
            config,
            shared,
            workers,
            rules: HashMap::new(),
            refused: HashMap::new(),
        })
    }

    /// Changes waiting or running.
    pub fn pending(&self) -> usize {
        let q = self.shared.queue.lock().unwrap();
        q.jobs.len() + q.running.len()
    }

    /// Waits until nothing is queued or running (for tests and shutdown);
    /// false on timeout.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue.lock().unwrap();
        while !(q.jobs.is_empty() && q.running.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .shared
                .cv
                .wait_timeout(q, left.min(Duration::from_millis(50)))
                .unwrap()
                .0;
        }
        true
    }

    /// The command line for a change, or why there is none.
    fn command_for(&mut self, c: &Change, now: Timestamp) -> Result<Option<Job>, String> {
        let (key, put, template, rule, expires) = match c {
            Change::Put(e) => {
                if e.expires.is_some_and(|t| t <= now) {
                    return Ok(None);
                }
                let t = match e.action {
                    Action::Ban => Some(&self.config.ban),
                    Action::Allow => self.config.allow.as_ref(),
                };
                ((e.action, e.net), true, t, e.rule.clone(), e.expires)
            }
            Change::Remove { action, net } => {
                let t = match action {
                    Action::Ban => self.config.unban.as_ref(),
                    Action::Allow => self.config.unallow.as_ref(),
                };
                let rule = self.rules.remove(&(*action, *net));
                ((*action, *net), false, t, rule, None)
            }
        };
        let rule = rule.as_deref();
        let Some(template) = template else {
            return Ok(None);
        };
        let net = key.1;
        if template.uses(Placeholder::Ip) && !net.is_host() {
            return Err(format!(
                "{net} is a network and the command {:?} takes single addresses ({{ip}}); use {{net}} to pass networks, or filter with hosts_only = true",
                template.source()
            ));
        }
        let verb = if put { "ban" } else { "unban" };
        let uses_jail = template.uses(Placeholder::Jail);
        let uses_rule = template.uses(Placeholder::Rule);
        if put && (uses_jail || uses_rule) {
            // Remembered for the removal, which carries no rule.
            match rule {
                Some(r) if check_rule(r).is_ok() => {
                    self.rules.insert(key, r.to_string());
                }
                _ => {
                    self.rules.remove(&key);
                }
            }
        }
        let configured = self.config.jail.as_deref();
        let jail = match configured.or(rule.map(jail_of)) {
            Some(j) if uses_jail => {
                check_jail(j).map_err(|e| format!("{verb} for {net} refused: {e}"))?;
                j
            }
            None if uses_jail => {
                return Err(format!(
                    "the command {:?} needs {{jail}} but the decision for {net} has no rule and no `jail` is configured",
                    template.source()
                ));
            }
            _ => "",
        };
        let rule = match rule.or(configured) {
            Some(r) if uses_rule => {
                check_rule(r).map_err(|e| format!("{verb} for {net} refused: {e}"))?;
                r
            }
            None if uses_rule => {
                return Err(format!(
                    "the command {:?} needs {{rule}} but the decision for {net} has no rule and no `jail` is configured",
                    template.source()
                ));
            }
            _ => "",
        };
        let duration = match expires {
            None if put => self.config.forever_duration.clone(),
            None => "0".into(),
            Some(t) => t.since(now).as_secs_f64().ceil().max(1.0).to_string(),
        };
        Ok(Some(Job {
            key,
            put,
            argv: template.render(&Values {
                net,
                jail,
                rule,
                duration: &duration,
            }),
            attempt: 0,
            not_before: Instant::now(),
        }))
    }

    /// Queues jobs; returns how many were refused because the queue is full.
    fn enqueue(&self, jobs: Vec<Job>) -> usize {
        let mut q = self.shared.queue.lock().unwrap();
        let mut dropped = 0;
        for job in jobs {
            if let Some(pos) = q.jobs.iter().position(|j| j.key == job.key) {
                let old_put = q.jobs[pos].put;
                if old_put && !job.put && !q.applied.contains(&job.key) {
                    // A ban that never ran, lifted before it did.
                    q.jobs.remove(pos);
                } else {
                    q.jobs[pos] = job;
                }
                continue;
            }
            if q.jobs.len() >= self.config.queue_limit {
                dropped += 1;
                continue;
            }
            q.jobs.push_back(job);
        }
        drop(q);
        self.shared.cv.notify_all();
        dropped
    }

    fn submit(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let now = Timestamp::now();
        let mut jobs = Vec::with_capacity(changes.len());
        let mut refused: Vec<String> = Vec::new();
        for c in changes {
            let (key, expires) = match c {
                Change::Put(e) => ((e.action, e.net), Some(e.expires)),
                Change::Remove { action, net } => ((*action, *net), None),
            };
            match self.command_for(c, now) {
                Ok(job) => {
                    self.refused.remove(&key);
                    jobs.extend(job);
                }
                Err(why) => {
                    // A refused put stays a difference between palisade and
                    // the program until the decision goes or is put again.
                    match expires {
                        Some(expires) => {
                            self.refused.insert(key, (expires, why.clone()));
                        }
                        None => {
                            self.refused.remove(&key);
                        }
                    }
                    refused.push(why);
                }
            }
        }
        let dropped = self.enqueue(jobs);
        let mut errors = Vec::new();
        if let Some(first) = refused.first() {
            warn!(enforcer = %self.name, count = refused.len(), "{first}");
            errors.push(EnforceError::Other(if refused.len() == 1 {
                first.clone()
            } else {
                format!("{first} (and {} more refused)", refused.len() - 1)
            }));
        }
        if dropped > 0 {
            errors.push(EnforceError::Other(format!(
                "{}: {dropped} change(s) dropped: {} commands are already waiting (queue_limit); the program is too slow or failing",
                self.name, self.config.queue_limit
            )));
        }
        EnforceError::check(errors)
    }
}

impl Drop for CommandEnforcer {
    fn drop(&mut self) {
        let left = {
            let mut q = self.shared.queue.lock().unwrap();
            q.shutdown = true;
            q.jobs.len()
        };
        self.shared.cv.notify_all();
        if left > 0 {
            warn!(enforcer = %self.name, "stopping with {left} command(s) not run");
        }
        // Workers finish the command they run (bounded by its timeout) on
        // their own; the agent does not wait for them.
        self.workers.clear();
    }
}

fn worker(shared: &Shared, name: &str, timeout: Duration, retries: u32) {
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if q.shutdown {
                    return;
                }
                let now = Instant::now();
                let ready = q
                    .jobs
                    .iter()
                    .position(|j| j.not_before <= now && !q.running.contains(&j.key));
                if let Some(i) = ready {
                    let job = q.jobs.remove(i).expect("index from position");
                    q.running.insert(job.key);
                    break job;
                }
                let wait = q
                    .jobs
                    .iter()
                    .map(|j| j.not_before.saturating_duration_since(now))
                    .min()
                    .unwrap_or(Duration::from_secs(3600))
                    .max(Duration::from_millis(5));
                q = shared.cv.wait_timeout(q, wait).unwrap().0;
            }
        };
        let outcome = run(&job.argv, timeout);
        let mut q = shared.queue.lock().unwrap();
        q.running.remove(&job.key);
        q.ran += 1;
        match outcome {
            Ok(()) => {
                if job.put {
                    q.applied.insert(job.key);
                } else {
                    q.applied.remove(&job.key);
                }
                q.failing = 0;
                if job.attempt > 0 {
                    info!(enforcer = name, command = %job.argv.join(" "), "succeeded on retry {}", job.attempt);
                }
            }
            Err(why) => {
                let superseded = q.jobs.iter().any(|j| j.key == job.key);
                if job.attempt < retries && !superseded && !q.shutdown {
                    let pause =
                        (Duration::from_secs(1) * 2u32.pow(job.attempt.min(6))).min(MAX_BACKOFF);
                    warn!(
                        enforcer = name,
                        command = %job.argv.join(" "),
                        "{why}; retrying in {}s ({} of {retries})",
                        pause.as_secs(),
                        job.attempt + 1
                    );
                    q.jobs.push_back(Job {
                        attempt: job.attempt + 1,
                        not_before: Instant::now() + pause,
                        ..job
                    });
                } else if !superseded {
                    error!(
                        enforcer = name,
                        command = %job.argv.join(" "),
                        "{why}; giving up after {} attempt(s)",
                        job.attempt + 1
                    );
                    q.failed += 1;
                    q.failing += 1;
                    q.last_error = Some(format!("{}: {why}", job.argv.join(" ")));
                }
            }
        }
        drop(q);
        shared.cv.notify_all();
    }
}

/// Runs `argv` (no shell) with stdin closed, waits up to `timeout`, kills
/// its process group after that. `Err` says why it failed, with the start
/// of its output.
fn run(argv: &[String], timeout: Duration) -> Result<(), String> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let out = child.stdout.take().map(capture);
    let err = child.stderr.take().map(capture);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill has no memory-safety preconditions; the
                // negative pid names the child's own process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {} failed: {e}", argv[0])),
        }
    };
    let text = |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let (stdout, stderr) = (text(out), text(err));
    let details = || {
        let mut d = String::new();
        if !stderr.trim().is_empty() {
            d.push_str(&format!("; stderr: {}", stderr.trim()));
        }
        if !stdout.trim().is_empty() {
            d.push_str(&format!("; stdout: {}", stdout.trim()));
        }
        d
    };
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{} {s}{}", argv[0], details())),
        None => Err(format!(
            "{} did not finish within {}s and was killed{}",
            argv[0],
            timeout.as_secs_f64(),
            details()
        )),
    }
}

/// Reads a stream to its end, keeping the first bytes as printable text.
fn capture(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_LOG_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let mut s: String = String::from_utf8_lossy(&kept)
            .chars()
            .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
            .collect::<String>()
            .replace('\n', " | ");
        if kept.len() >= OUTPUT_LOG_BYTES {
            s.push('…');
        }
        s
    })
}

fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = Path::new(program);
        return exec(p).then(|| p.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| exec(p))
}

impl Enforcer for CommandEnforcer {
    fn name(&self) -> &str {
        &self.name
    }

    fn replace_all(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
    ) -> Result<(), EnforceError> {
        if !self.config.replay {
            return Ok(());
        }
        let changes: Vec<Change> = entries.map(Change::Put).collect();
        self.submit(&changes)
    }

    /// Queues the commands and returns at once; refusals (invalid rule
    /// names, networks for an `{ip}` template, a full queue) are the error.
    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        self.submit(changes)
    }

    /// A command enforcer owns nothing in the kernel.
    fn remove(&mut self) -> Result<(), EnforceError> {
        Ok(())
    }

    fn status(&mut self, _kernel: bool) -> Result<Status, EnforceError> {
        let now = Timestamp::now();
        self.refused
            .retain(|_, (expires, _)| expires.is_none_or(|t| t > now));
        let q = self.shared.queue.lock().unwrap();
        let mut name = format!(
            "command {} ({} queued, {} run, {} failed",
            self.config.ban.program(),
            q.jobs.len() + q.running.len(),
            q.ran,
            q.failed
        );
        if let Some(e) = &q.last_error {
            name.push_str(&format!("; last failure: {e}"));
        }
        if let Some((_, why)) = self.refused.values().next() {
            name.push_str(&format!("; {} refused: {why}", self.refused.len()));
        }
        name.push(')');
        Ok(Status {
            objects: vec![ObjectStatus {
                name,
                entries: q.applied.len(),
                expected: q.applied.len(),
                in_kernel: None,
            }],
            in_sync: q.failing == 0 && self.refused.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Template {
        Template::parse(s).unwrap()
    }

    fn values(net: &str) -> Values<'static> {
        Values {
            net: net.parse().unwrap(),
            jail: "sshd",
            rule: "sshd",
            duration: "3600",
        }
    }

    #[test]
    fn templates_split_once_and_fill_whole_or_inside_arguments() {
        let tpl = t("fail2ban-client set {jail} banip {ip}");
        assert_eq!(
            tpl.render(&values("198.18.0.7")),
            ["fail2ban-client", "set", "sshd", "banip", "198.18.0.7"]
        );
        let tpl =
            t(r#"logger -t 'pal isade' "ban {net} for {duration}s" --ip={ip} fam{family} {{x}}"#);
        assert_eq!(
            tpl.render(&values("2001:db8::1")),
            [
                "logger",
                "-t",
                "pal isade",
                "ban 2001:db8::1/128 for 3600s",
                "--ip=2001:db8::1",
                "fam6",
                "{x}"
            ]
        );
        assert_eq!(
            t(r#"a "x\"y" b\ c ''"#).render(&values("1.2.3.4")),
            ["a", "x\"y", "b c", ""]
        );
        assert!(t("psad --fw-block-ip {ip}").uses(Placeholder::Ip));
        assert_eq!(t("/usr/bin/psad -x").program(), "/usr/bin/psad");
    }

    #[test]
    fn bad_templates_are_refused_at_config_time() {
        let e = Template::parse("fail2ban-client set {jial} banip {ip}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown placeholder {jial}"), "{e}");
        assert!(
            Template::parse("echo 'open")
                .unwrap_err()
                .to_string()
                .contains("unclosed quote")
        );
        assert!(Template::parse("").is_err());
        assert!(Template::parse("   ").is_err());
        assert!(
            Template::parse("{ip} x")
                .unwrap_err()
                .to_string()
                .contains("program")
        );
        assert!(Template::parse("echo {ip").is_err());
        assert!(Template::parse("echo }").is_err());
    }

    #[test]
    fn substituted_values_are_never_split_or_interpreted() {
        // Values are whole arguments: a rule name with spaces could not even
        // get here (check_rule), and addresses are canonical text.
        let tpl = t("echo {rule}");
        let v = Values {
            net: "198.18.0.1".parse().unwrap(),
            jail: "j",
            rule: "a b;$(x)",
            duration: "1",
        };
        assert_eq!(tpl.render(&v), ["echo", "a b;$(x)"]);
    }

    #[test]
    fn rule_names_are_checked() {
        assert!(check_rule("sshd").is_ok());
        assert!(check_rule("f2b-sshd_2.x").is_ok());
        // palisade's own rule names.
        for own in [
            "fail2ban/sshd",
            "psad/anything",
            "feed:firehol_level1",
            "ban",
        ] {
            assert!(check_rule(own).is_ok(), "{own}");
        }
        for bad in ["fail2ban/sshd", "a:b", "-x", ""] {
            assert!(check_jail(bad).is_err(), "{bad:?}");
        }
        assert_eq!(jail_of("fail2ban/sshd"), "sshd");
        assert_eq!(jail_of("sshd"), "sshd");
        for bad in [
            "../etc",
            "a/../../b",
            "/abs",
            "a//b",
            "a/",
            "./x",
            "",
            "-h",
            "sshd;reboot",
            "a b",
            "$(id)",
            "sshd\n",
            "é",
            ".",
            "..",
            &"x".repeat(65),
        ] {
            assert!(check_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_parses_with_defaults() {
        let c: CommandConfig = toml::from_str(
            "ban = 'fail2ban-client set {jail} banip {ip}'\nunban = 'fail2ban-client set {jail} unbanip {ip}'\njail = 'sshd'\ntimeout = '5s'\n",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!((c.retries, c.workers, c.replay), (3, 1, true));
        let e = toml::from_str::<CommandConfig>("ban = 'x {nope}'\n").unwrap_err();
        assert!(e.to_string().contains("unknown placeholder"), "{e}");
        let e = toml::from_str::<CommandConfig>("ban = 'x'\njail = 'a;b'\n").unwrap_err();
        assert!(e.to_string().contains("cannot be passed"), "{e}");
        let e = toml::from_str::<CommandConfig>("ban = 'x'\ntimeout = 'forever'\n").unwrap_err();
        assert!(e.to_string().contains("length of time"), "{e}");
    }

    #[test]
    fn missing_program_is_a_config_error() {
        let e = CommandEnforcer::new(CommandConfig::new(t("palisade-no-such-program {ip}")))
            .unwrap_err();
        assert!(e.to_string().contains("not found on PATH"), "{e}");
    }
}

//! `palisade detect`: try rules on a log file, like `fail2ban-regex`.
//!
//! Rules are the configured ones (`[[rule]]` in the configuration, passed in
//! by the caller), a TOML file of `[[rule]]` tables (`--rules`), the built-in
//! pack (`--builtin`, the default when nothing else is given) and fail2ban
//! filters (`--fail2ban-filter FILE[mode=aggressive]`). Thresholds are
//! simulated with the log's own timestamps where a line has one (syslog,
//! RFC 3339, web access logs), else the previous line's time. Probes of
//! ports open on this machine are not filtered out (the log may come from
//! elsewhere). The report says how fast the log was read, what each rule
//! matched, the addresses and prefixes that would be banned, how many
//! attackers the tracker forgot for lack of room, and which fail2ban
//! filters run regexes on the fallback (backtracking) engine.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use palisade_detect::{
    Engine, Event, Hit, HitKind, Limits, RuleConfig, StageRef, Tracker, Trust, builtin, syslog,
};
use palisade_model::{Net, Scope, Span, Timestamp};

/// Arguments of `palisade detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The log file to read, or `-` for standard input
    #[arg(value_name = "LOG")]
    pub log: PathBuf,

    /// Also use the built-in rules (the default when no other rules are given)
    #[arg(long)]
    pub builtin: bool,

    /// A TOML file of [[rule]] tables to use (repeatable)
    #[arg(long, value_name = "FILE")]
    pub rules: Vec<PathBuf>,

    /// A fail2ban filter to use, with optional parameters as a jail gives
    /// them: `/etc/fail2ban/filter.d/sshd.conf[mode=aggressive]` (repeatable)
    #[arg(long = "fail2ban-filter", value_name = "FILE[OPTS]")]
    pub fail2ban_filter: Vec<String>,

    /// Print every line a rule matched
    #[arg(long)]
    pub show_matches: bool,

    /// Print one JSON object per matched line (line, rule, address, kind,
    /// stage when a ban fires, with its target and trust), then one
    /// `{"summary": ...}` object, instead of the report
    #[arg(long)]
    pub json: bool,

    /// The year of syslog timestamps without one [default: this year]
    #[arg(long, value_name = "YEAR")]
    pub year: Option<i64>,
}

#[derive(Default)]
struct RuleStats {
    bad: u64,
    good: u64,
    ignored: u64,
    forgiven: u64,
    bans: u64,
}

/// A ban the log would cause (without its evidence: the report keeps
/// every one).
struct WouldBan {
    line: usize,
    rule: usize,
    address: Net,
    stage: String,
    count: u32,
    span: Span,
    scope: Scope,
    trust: Trust,
    time: Timestamp,
}

/// What `palisade detect` gathers and writes as it reads.
struct Report<'a, W> {
    names: &'a [String],
    rule_of: HashMap<&'a str, usize>,
    stats: Vec<RuleStats>,
    bans: Vec<WouldBan>,
    /// With `--json`.
    json: Option<JsonLine>,
    show_matches: bool,
    out: W,
}

impl<W: Write> Report<'_, W> {
    /// Line `lineno` (`text`, of time `time`), its verdicts and the events
    /// they made.
    fn line(
        &mut self,
        lineno: usize,
        text: &str,
        time: Timestamp,
        events: Vec<Event>,
        hits: &[Hit],
    ) -> std::io::Result<()> {
        for h in hits {
            let s = &mut self.stats[h.rule];
            match h.kind {
                HitKind::Bad => s.bad += 1,
                HitKind::Good => s.good += 1,
                HitKind::Ignored => s.ignored += 1,
            }
        }
        if let Some(json) = &mut self.json {
            for h in hits {
                let ban = events.iter().find_map(|e| match e {
                    Event::Ban {
                        rule,
                        address,
                        stage,
                        span,
                        count,
                        trust,
                        ..
                    } if *rule == self.names[h.rule]
                        && h.address.is_some_and(|a| address.contains(&a)) =>
                    {
                        Some((address, stage, span, count, trust))
                    }
                    _ => None,
                });
                json.write(&mut self.out, lineno, h, time, ban)?;
            }
        } else if self.show_matches {
            for h in hits {
                let kind = kind_name(h.kind);
                let addr = h
                    .address
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    self.out,
                    "{lineno}: {} {kind} {addr}: {}",
                    self.names[h.rule],
                    palisade_model::decision::clean_text(text)
                )?;
            }
        }
        for e in events {
            match e {
                Event::Ban {
                    rule,
                    address,
                    stage,
                    span,
                    scope,
                    count,
                    trust,
                    ..
                } => {
                    let rule = self.rule_of[rule.as_str()];
                    self.stats[rule].bans += 1;
                    self.bans.push(WouldBan {
                        line: lineno,
                        rule,
                        address,
                        stage: stage.name,
                        count,
                        span,
                        scope,
                        trust,
                        time,
                    });
                }
                Event::Forgive { rule, .. } => {
                    self.stats[self.rule_of[rule.as_str()]].forgiven += 1
                }
            }
        }
        Ok(())
    }
}

/// Runs `palisade detect` with the rules and counting limits of the
/// configuration file.
pub fn run(
    args: DetectArgs,
    rules_from_config: Vec<RuleConfig>,
    limits: Limits,
) -> anyhow::Result<ExitCode> {
    let rules = collect_rules(&args, rules_from_config)?;
    let engine = Engine::compile(&rules).context("compiling the rules")?;
    let fallback = engine.fallback_filters();
    // The report shows no evidence, so the tracker keeps none: copying
    // each failure's line and reading a ban's lines back would be work
    // nothing reads.
    let limits = Limits {
        evidence_lines: 0,
        ..limits
    };
    let mut tracker = Tracker::new(engine, limits);
    tracker.engine_mut().check_open_ports(false);

    let input: Box<dyn Read> = if args.log.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.log)
                .with_context(|| format!("cannot read {}", args.log.display()))?,
        )
    };
    let year = args.year.unwrap_or_else(syslog::current_year);
    let names: Vec<String> = tracker
        .engine()
        .rules()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let rule_of: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let out = std::io::stdout();
    let mut report = Report {
        names: &names,
        rule_of,
        stats: names.iter().map(|_| RuleStats::default()).collect(),
        bans: Vec::new(),
        json: args.json.then(|| JsonLine::new(&names)),
        show_matches: args.show_matches,
        out: std::io::BufWriter::with_capacity(1 << 16, out.lock()),
    };
    let clock = RefCell::new(BatchClock {
        clock: LineClock::new(year),
        noted: 0,
    });
    let mut lineno = 0usize;
    let started = Instant::now();
    let read = palisade_detect::logfile::for_each_batch(input, BATCH, |lines| {
        clock.borrow_mut().noted = 0;
        let now = |k: usize| clock.borrow_mut().upto(lines, k).now();
        tracker.observe_lines("detect", lines, now, |k, events, hits| {
            lineno += 1;
            if hits.is_empty() {
                return Ok(());
            }
            let time = clock.borrow_mut().upto(lines, k).now();
            report.line(lineno, lines[k], time, events, hits)
        })?;
        // The lines after the last that needed its time.
        clock.borrow_mut().upto(lines, lines.len());
        Ok::<(), std::io::Error>(())
    });
    read.with_context(|| format!("reading {}", args.log.display()))?;
    let elapsed = started.elapsed();
    let Report {
        stats,
        bans,
        mut out,
        ..
    } = report;
    let summary = Summary {
        lines: lineno,
        timed: clock.borrow().clock.timed,
        elapsed,
        names: &names,
        stats: &stats,
        bans: &bans,
        evicted: tracker.evicted(),
        capacity: tracker.capacity(),
        fallback: &fallback,
    };
    if args.json {
        summary.write_json(&mut out)?;
    } else {
        summary.write_text(&mut out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: HitKind) -> &'static str {
    match kind {
        HitKind::Bad => "bad",
        HitKind::Good => "good",
        HitKind::Ignored => "ignored",
    }
}

/// Lines read and counted at a time: enough for the tracker to ask for
/// the memory of the pairs they count well before it reads it (on the
/// benchmark's attack log, batches of 128 to 1,024 lines are counted about
/// 3% faster than batches of 64; the agent's detection thread counts up to
/// 1,024 queued lines at once).
pub(crate) const BATCH: usize = 256;

/// A [`LineClock`] told the lines of a batch as far as one is asked for.
struct BatchClock {
    clock: LineClock,
    /// Lines of the batch told so far.
    noted: usize,
}

impl BatchClock {
    /// The clock, told every line of `lines` up to line `k` (included).
    fn upto(&mut self, lines: &[&str], k: usize) -> &mut LineClock {
        let end = (k + 1).min(lines.len());
        for line in &lines[self.noted.min(end)..end] {
            self.clock.note(line);
        }
        self.noted = self.noted.max(end);
        &mut self.clock
    }
}

/// The length of a BSD syslog time without fractions (`Mar  3 12:00:00`).
const BSD_TIME: usize = 15;

/// Whether two digits are a second [`syslog::bsd_time_reads`] reads (a leap
/// second included).
fn seconds(tens: u8, ones: u8) -> bool {
    tens.is_ascii_digit() && ones.is_ascii_digit() && (tens - b'0') * 10 + (ones - b'0') <= 60
}

/// The time of each line: its own timestamp where it has one, else the
/// previous line's (the time of the run for lines before the first).
/// [`note`](Self::note) is told every line, [`now`](Self::now) asked for
/// the time of the last one when it is needed: a syslog time sure to read
/// is read then (most lines of a quiet log never need theirs).
struct LineClock {
    year: i64,
    last: Timestamp,
    /// The syslog time text `last` was read from, or with `pending`, the
    /// newer one not read yet: the lines of one second share it, and
    /// compare cheaper than they parse.
    last_text: String,
    pending: bool,
    /// Lines that had a timestamp.
    timed: u64,
}

impl LineClock {
    fn new(year: i64) -> LineClock {
        LineClock {
            year,
            last: Timestamp::now(),
            last_text: String::new(),
            pending: false,
            timed: 0,
        }
    }

    /// Takes in the next line's time, if it has one.
    fn note(&mut self, text: &str) {
        let (t, last) = (text.as_bytes(), self.last_text.as_bytes());
        let n = last.len();
        // A syslog time ends at a space: the same text then is the same time.
        // A BSD time (15 bytes, compared without a call) differs from the
        // last in its seconds alone most of the time: the line's time is
        // then as sure to read as the last's if its seconds are.
        if n == BSD_TIME && t.len() > BSD_TIME && t[BSD_TIME] == b' ' {
            let (a, b) = (t.first_chunk::<13>(), last.first_chunk::<13>());
            if a == b && t[13..15] == last[13..15] {
                self.timed += 1;
                return;
            }
            if a == b && self.year >= 1970 && seconds(t[13], t[14]) {
                self.last_text.truncate(13);
                self.last_text.push_str(&text[13..15]);
                self.pending = true;
                self.timed += 1;
                return;
            }
        } else if n > 0 && t.get(n) == Some(&b' ') && text.starts_with(&self.last_text) {
            self.timed += 1;
            return;
        }
        if let Some(t) = syslog::time(text) {
            if text.starts_with(t) && syslog::bsd_time_reads(t, self.year) {
                self.last_text.clear();
                self.last_text.push_str(t);
                self.pending = true;
                self.timed += 1;
                return;
            }
            if let Some(ts) = syslog::parse_time(t, self.year) {
                self.last = ts;
                self.last_text.clear();
                if text.starts_with(t) {
                    self.last_text.push_str(t);
                }
                self.pending = false;
                self.timed += 1;
                return;
            }
        }
        if let Some(ts) = syslog::web_time(text) {
            self.last = ts;
            self.last_text.clear();
            self.pending = false;
            self.timed += 1;
        }
    }

    /// The time of the last line noted.
    fn now(&mut self) -> Timestamp {
        if self.pending {
            self.pending = false;
            if let Some(ts) = syslog::parse_time(&self.last_text, self.year) {
                self.last = ts;
            }
        }
        self.last
    }
}

/// Writes one JSON object per matched line by hand, into one buffer per
/// line: the values are validated rule names (quoted once, at the start),
/// canonical addresses, numbers and times, and the time's text is reused
/// while it stays the same (a `serde_json::Value` per line cost half the
/// run, `write!` per field a fifth of it).
struct JsonLine {
    /// Each rule's name as a JSON string.
    names: Vec<String>,
    time: LineTime,
    buf: Vec<u8>,
}

/// The RFC 3339 text of the times of successive lines (`2026-01-01T00:00:05Z`):
/// the date is formatted when the day changes, the time of day written
/// digit by digit (formatting the whole time for each line of a log with a
/// new second on every line was a sixth of `--json`'s cost).
#[derive(Default)]
struct LineTime {
    /// The second and the day `text` is for.
    second: Option<u64>,
    day: Option<u64>,
    text: Vec<u8>,
}

impl LineTime {
    fn text(&mut self, time: Timestamp) -> &[u8] {
        let second = time.as_millis() / 1000;
        if self.second != Some(second) {
            let day = second / 86_400;
            if self.day != Some(day) {
                self.text = Timestamp::from_millis(day * 86_400_000)
                    .rfc3339()
                    .into_bytes();
                self.day = Some(day);
            }
            if self.text.len() == 20 && time <= Timestamp::RFC3339_MAX {
                let of_day = second % 86_400;
                for (at, n) in [
                    (11, of_day / 3600),
                    (14, of_day / 60 % 60),
                    (17, of_day % 60),
                ] {
                    self.text[at] = b'0' + (n / 10) as u8;
                    self.text[at + 1] = b'0' + (n % 10) as u8;
                }
            } else {
                // Past year 9999: the latest writable time, as rfc3339 writes it.
                self.text = time.rfc3339().into_bytes();
                self.day = None;
            }
            self.second = Some(second);
        }
        &self.text
    }
}

impl JsonLine {
    fn new(names: &[String]) -> JsonLine {
        JsonLine {
            names: names.iter().map(|n| json_str(n)).collect(),
            time: LineTime::default(),
            buf: Vec::with_capacity(256),
        }
    }

    fn write(
        &mut self,
        out: &mut impl Write,
        line: usize,
        hit: &Hit,
        time: Timestamp,
        ban: Option<(&Net, &StageRef, &Span, &u32, &Trust)>,
    ) -> std::io::Result<()> {
        let time = self.time.text(time);
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(b"{\"line\":");
        push_number(b, line as u64);
        b.extend_from_slice(b",\"rule\":");
        b.extend_from_slice(self.names[hit.rule].as_bytes());
        b.extend_from_slice(b",\"kind\":\"");
        b.extend_from_slice(kind_name(hit.kind).as_bytes());
        b.extend_from_slice(b"\",\"address\":");
        match hit.address {
            Some(a) => {
                b.push(b'"');
                push_net(b, &a);
                b.push(b'"');
            }
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"time\":\"");
        b.extend_from_slice(time);
        b.push(b'"');
        if let Some(p) = hit.port {
            b.extend_from_slice(b",\"port\":");
            push_number(b, u64::from(p));
        }
        if let Some((net, stage, span, count, trust)) = ban {
            write!(
                b,
                ",\"stage\":{{\"index\":{},\"name\":{},\"list\":{},\"ban\":\"{span}\",\"count\":{count},\"target\":\"{net}\",\"trust\":\"{trust}\"}}",
                stage.index,
                json_str(&stage.name),
                stage.list.as_deref().map_or("null".to_string(), json_str),
            )?;
        }
        b.extend_from_slice(b"}\n");
        out.write_all(b)
    }
}

/// `n` in decimal.
fn push_number(b: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(&digits[i..]);
}

/// An address as [`Net`]'s `Display` writes it; hosts (nearly all of
/// them) without the formatting machinery, which took a fifth of
/// `--json`'s time on a log of IPv6 attackers.
fn push_net(b: &mut Vec<u8>, net: &Net) {
    match net.addr() {
        std::net::IpAddr::V4(a) if net.is_host() => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    b.push(b'.');
                }
                push_number(b, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(a) if net.is_host() && a.to_ipv4_mapped().is_none() => {
            push_ipv6(b, &a.segments());
        }
        _ => {
            let _ = write!(b, "{net}");
        }
    }
}

/// An IPv6 address (not IPv4-mapped) as `Ipv6Addr`'s `Display` writes it
/// (RFC 5952): groups in lowercase hex without leading zeros, the first
/// longest run of two or more zero groups as `::`.
fn push_ipv6(b: &mut Vec<u8>, groups: &[u16; 8]) {
    // The first longest run of zero groups: (start, length).
    let (mut run, mut at) = ((0, 0), None);
    for (i, &g) in groups.iter().enumerate() {
        match (g, at) {
            (0, None) => at = Some(i),
            (0, Some(_)) => {}
            (_, _) => at = None,
        }
        if let Some(s) = at
            && i + 1 - s > run.1
        {
            run = (s, i + 1 - s);
        }
    }
    let push_groups = |b: &mut Vec<u8>, groups: &[u16]| {
        for (i, &g) in groups.iter().enumerate() {
            if i > 0 {
                b.push(b':');
            }
            let digits = (16 - g.leading_zeros()).div_ceil(4).max(1);
            for d in (0..digits).rev() {
                b.push(b"0123456789abcdef"[usize::from((g >> (4 * d)) & 0xf)]);
            }
        }
    };
    if run.1 > 1 {
        push_groups(b, &groups[..run.0]);
        b.extend_from_slice(b"::");
        push_groups(b, &groups[run.0 + run.1..]);
    } else {
        push_groups(b, groups);
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// What the run found, for the report and the `--json` summary object.
struct Summary<'a> {
    lines: usize,
    timed: u64,
    elapsed: Duration,
    names: &'a [String],
    stats: &'a [RuleStats],
    bans: &'a [WouldBan],
    evicted: u64,
    capacity: usize,
    fallback: &'a [(String, Vec<String>)],
}

impl Summary<'_> {
    fn rate(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Distinct targets: hosts and networks (prefixes).
    fn targets(&self) -> (usize, usize) {
        let set: std::collections::HashSet<&Net> = self.bans.iter().map(|b| &b.address).collect();
        let hosts = set.iter().filter(|n| n.is_host()).count();
        (hosts, set.len() - hosts)
    }

    fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let (hosts, prefixes) = self.targets();
        let rules: Vec<serde_json::Value> = self
            .names
            .iter()
            .zip(self.stats)
            .map(|(n, s)| {
                serde_json::json!({
                    "rule": n, "matched": s.bad, "ignored": s.ignored, "good": s.good,
                    "forgiven": s.forgiven, "bans": s.bans,
                })
            })
            .collect();
        let fallback: Vec<serde_json::Value> = self
            .fallback
            .iter()
            .map(|(rule, regexes)| serde_json::json!({"rule": rule, "regexes": regexes}))
            .collect();
        let summary = serde_json::json!({"summary": {
            "lines": self.lines,
            "timed_lines": self.timed,
            "seconds": self.elapsed.as_secs_f64(),
            "lines_per_second": self.rate().round(),
            "rules": rules,
            "bans": self.bans.len(),
            "banned_hosts": hosts,
            "banned_prefixes": prefixes,
            "evicted": self.evicted,
            "tracker_capacity": self.capacity,
            "fallback_filters": fallback,
        }});
        writeln!(out, "{summary}")
    }

    fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "Lines: {} ({} with a timestamp), {:.2} s, {:.0} lines/s",
            self.lines,
            self.timed,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        writeln!(out, "Rules:")?;
        let width = self.names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
        for (name, s) in self.names.iter().zip(self.stats) {
            writeln!(
                out,
                "  {name:<width$}  matched {:>6}  ignored {:>6}  good {:>6}  forgiven {:>6}  bans {:>6}",
                s.bad, s.ignored, s.good, s.forgiven, s.bans
            )?;
        }
        let total: u64 = self.stats.iter().map(|s| s.bad).sum();
        writeln!(out, "Matched lines: {total}")?;
        for (rule, regexes) in self.fallback {
            writeln!(
                out,
                "Fallback engine (fancy-regex, backtracking): {rule}: {}",
                regexes.join(", ")
            )?;
        }
        writeln!(
            out,
            "Evicted: {} (attackers forgotten because the tracker was full; it holds {})",
            self.evicted, self.capacity
        )?;
        if self.bans.is_empty() {
            writeln!(out, "Bans: none would be made")?;
            return Ok(());
        }
        let (hosts, prefixes) = self.targets();
        writeln!(
            out,
            "Bans that would be made: {} ({hosts} address{}, {prefixes} prefix{}):",
            self.bans.len(),
            if hosts == 1 { "" } else { "es" },
            if prefixes == 1 { "" } else { "es" },
        )?;
        for b in self.bans {
            writeln!(
                out,
                "  {:<43} {:<width$}  stage {} ({} failure{}) ban {} {} {}  at line {} ({})",
                b.address.to_string(),
                self.names[b.rule],
                b.stage,
                b.count,
                if b.count == 1 { "" } else { "s" },
                b.span,
                b.scope,
                b.trust,
                b.line,
                b.time
            )?;
        }
        Ok(())
    }
}

fn collect_rules(
    args: &DetectArgs,
    from_config: Vec<RuleConfig>,
) -> anyhow::Result<Vec<RuleConfig>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RulesFile {
        #[serde(default)]
        rule: Vec<RuleConfig>,
    }
    let mut rules = from_config;
    for path in &args.rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let f: RulesFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        rules.extend(f.rule);
    }
    for (i, spec) in args.fail2ban_filter.iter().enumerate() {
        let (path, opts) = parse_filter_spec(spec)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("filter{i}"));
        let mut rule: RuleConfig = toml::from_str(&format!(
            "name = {:?}\nfail2ban_filter = {:?}\n",
            format!("fail2ban/{stem}"),
            path.display().to_string()
        ))
        .context("building the filter rule")?;
        let mut opts = opts;
        rule.mode = opts.remove("mode");
        rule.fail2ban_options = opts;
        if rules.iter().any(|r| r.name == rule.name) {
            rule.name = format!("{}-{i}", rule.name);
        }
        rules.push(rule);
    }
    if args.builtin || rules.is_empty() {
        rules = builtin::with_builtin(rules);
    }
    Ok(rules)
}

/// `FILE`, `FILE[mode=aggressive,publickey=invalid]` or `FILE[aggressive]`.
fn parse_filter_spec(spec: &str) -> anyhow::Result<(PathBuf, BTreeMap<String, String>)> {
    let mut opts = BTreeMap::new();
    let Some(open) = spec.find('[').filter(|_| spec.ends_with(']')) else {
        return Ok((PathBuf::from(spec), opts));
    };
    let inner = &spec[open + 1..spec.len() - 1];
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) => {
                opts.insert(
                    k.trim().to_string(),
                    v.trim().trim_matches(['"', '\'']).to_string(),
                );
            }
            None if opts.is_empty() => {
                opts.insert("mode".into(), part.to_string());
            }
            None => bail!("{spec:?}: write filter options as name=value"),
        }
    }
    Ok((PathBuf::from(&spec[..open]), opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_specs() {
        let (p, o) = parse_filter_spec("/x/sshd.conf[mode=aggressive, publickey=invalid]").unwrap();
        assert_eq!(p, PathBuf::from("/x/sshd.conf"));
        assert_eq!(o["mode"], "aggressive");
        assert_eq!(o["publickey"], "invalid");
        let (_, o) = parse_filter_spec("sshd.conf[ddos]").unwrap();
        assert_eq!(o["mode"], "ddos");
        assert!(parse_filter_spec("sshd.conf").unwrap().1.is_empty());
    }

    #[test]
    fn json_numbers_and_addresses() {
        let mut b = Vec::new();
        for n in [0, 7, 10, 255, 1_000_000, u64::MAX] {
            b.clear();
            push_number(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
        }
        for a in [
            "0.0.0.0",
            "198.51.100.7",
            "255.255.255.255",
            "2001:db8::/64",
            "2001:db8::1",
            "192.0.2.0/24",
        ] {
            let net: Net = a.parse().unwrap();
            b.clear();
            push_net(&mut b, &net);
            assert_eq!(b, net.to_string().as_bytes(), "{a}");
        }
        // IPv6 hosts with runs of zero groups anywhere, of every length,
        // ties between runs, and the special addresses: as `Display`.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let groups: [u16; 8] = std::array::from_fn(|k| {
                let r = (x >> (8 * k)) as u16;
                match r % 4 {
                    0 | 1 => 0,
                    2 => r >> 12,
                    _ => r,
                }
            });
            let addr = std::net::Ipv6Addr::from(if n < 256 {
                // Each pattern of zero and nonzero groups.
                std::array::from_fn(|k| if n >> k & 1 == 1 { 0xab } else { 0 })
            } else {
                groups
            });
            for net in [Net::host(addr.into()), Net::truncating(addr.into(), 64)] {
                b.clear();
                push_net(&mut b, &net);
                assert_eq!(b, net.to_string().as_bytes(), "{addr:?}");
            }
        }
    }

    /// The time of day written into the day's text is what formatting the
    /// whole time gives, across days, years and leap days.
    #[test]
    fn line_times_are_rfc3339() {
        let mut t = LineTime::default();
        let mut ms = 1_709_164_700_000; // 2024-02-28T23:58:20Z
        for _ in 0..20_000 {
            let time = Timestamp::from_millis(ms);
            assert_eq!(t.text(time), time.rfc3339().as_bytes());
            ms += 12_345;
        }
        for ms in [
            0,
            253_402_300_799_000,
            253_402_300_800_000,
            300_000_000_000_000,
        ] {
            let time = Timestamp::from_millis(ms);
            assert_eq!(t.text(time), time.rfc3339().as_bytes(), "{ms}");
        }
    }

    #[test]
    fn times() {
        let mut clock = LineClock::new(2023);
        let t = time_of(&mut clock, "Mar  3 12:00:00 h sshd[1]: x");
        assert_eq!(t.rfc3339(), "2023-03-03T12:00:00Z");
        // The same second again, then a line without a time, then the next.
        assert_eq!(time_of(&mut clock, "Mar  3 12:00:00 h sshd[1]: y"), t);
        assert_eq!(time_of(&mut clock, "no time here"), t);
        assert_eq!(
            time_of(&mut clock, "Mar  3 12:00:00.5 h x").as_millis(),
            t.as_millis() + 500
        );
        let t = time_of(&mut clock, "Mar  3 12:00:01 h sshd[1]: z");
        assert_eq!(t.rfc3339(), "2023-03-03T12:00:01Z");
        assert_eq!(clock.timed, 4);
        // Read only when asked: a line's time not asked for is still the
        // time of the lines without one after it.
        clock.note("Mar  3 12:00:07 h cron[1]: x");
        clock.note("continued");
        assert_eq!(clock.now().rfc3339(), "2023-03-03T12:00:07Z");
        // A syslog time out of range is no time: the line's web time then,
        // else the previous time.
        let t = time_of(&mut clock, "Mar  3 29:00:00 h x");
        assert_eq!(t.rfc3339(), "2023-03-03T12:00:07Z");
        let t = time_of(
            &mut clock,
            "Mar 32 12:00:00 h x [03/Mar/2024:12:00:00 +0000]",
        );
        assert_eq!(t.rfc3339(), "2024-03-03T12:00:00Z");
        let t = time_of(&mut clock, "Mar  0 12:00:00 h x");
        assert_eq!(t.rfc3339(), "2024-03-03T12:00:00Z");
        // Seconds on in the same minute, a leap second, and seconds out of
        // range (no time: the previous one).
        let t = time_of(&mut clock, "Mar  4 12:00:00 h x");
        assert_eq!(t.rfc3339(), "2023-03-04T12:00:00Z");
        let timed = clock.timed;
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:59 h x").rfc3339(),
            "2023-03-04T12:00:59Z"
        );
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:59 h y").rfc3339(),
            "2023-03-04T12:00:59Z"
        );
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:60 h x").rfc3339(),
            "2023-03-04T12:01:00Z"
        );
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:61 h x").rfc3339(),
            "2023-03-04T12:01:00Z"
        );
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:7x h x").rfc3339(),
            "2023-03-04T12:01:00Z"
        );
        assert_eq!(
            time_of(&mut clock, "Mar  4 12:00:08.25 h x").as_millis(),
            t.as_millis() + 8_250
        );
        assert_eq!(clock.timed, timed + 4);
    }

    fn time_of(clock: &mut LineClock, text: &str) -> Timestamp {
        clock.note(text);
        clock.now()
    }
}

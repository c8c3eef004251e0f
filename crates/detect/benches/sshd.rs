//! Detection throughput, same run, same files, pinned to one core:
//! palisade against fail2ban-rs (a Rust peer) and fail2ban-regex.
//!
//! `cargo bench -p palisade-detect --bench sshd`. Environment: `LINES`
//! (default 1,000,000 per log), `RUNS` (repetitions of each palisade and
//! fail2ban-rs run, in process or not, default 3; the fastest is shown),
//! `SKIP_FAIL2BAN=1` (no fail2ban-regex), `SKIP_FAIL2BAN_RS=1` (no
//! fail2ban-rs), `KEEP_LOGS=DIR` (keep the logs).
//!
//! Three generated logs ([`loggen`]): an sshd log under attack, a quiet
//! server's syslog (2% attack lines, 28% ordinary sshd lines, 70% other
//! daemons), and nginx/postfix/dovecot logs. On each:
//!
//! - **palisade detect --json**, the CLI path users run (this binary runs
//!   it as a child process, built from `src/cmd/detect.rs` like the
//!   `palisade detect` subcommand, its output to a file): the built-in pack
//!   on the sshd logs, the imported fail2ban filters on the others; and on
//!   the sshd logs the imported fail2ban `sshd.conf` as well.
//! - **fail2ban-rs dry-run** (crates.io `fail2ban-rs` 1.5, installed by this
//!   bench with `cargo install --locked` under `target/fail2ban-rs` the
//!   first time), with jails whose patterns match the same line types as
//!   palisade's rules, and the same threshold (5 within 10 minutes).
//! - **fail2ban-regex** with the same fail2ban filters (once per filter).
//!
//! Child processes inherit the pinning; each is timed by the wall clock,
//! and its CPU time and peak memory (`ru_maxrss`) are taken from `wait4`
//! (palisade and fail2ban-rs: the fastest of `RUNS`, with the highest peak
//! of them, their runs taken in turns so that a slower spell of a shared
//! machine falls on each alike; fail2ban-regex, which takes a minute,
//! once).
//! The matches each tool counted are printed beside its time, so that the
//! comparison can be checked to be like for like. Ratios are printed at the
//! end of each log's table.
//!
//! In process, for reference: the engine alone and the built-in sshd rule
//! alone (engine and tracker, fed a batch of lines at a time as `palisade detect`
//! feeds them) on the attack log, best of `RUNS`.
//! Then, untimed, that nothing is lost under the attack: every address
//! with at least 5 failures matched by the imported `sshd.conf` (the lines
//! fail2ban-regex matches), all taken at one instant, which fail2ban with
//! that threshold would ban, is banned by the tracker with its default
//! memory budget (by its own times, no address of the 1M-line log fails
//! 5 times within 10 minutes, and `palisade detect` reports no ban).

mod loggen;

#[path = "../../../src/cmd/detect.rs"]
#[allow(dead_code, unused_imports)]
mod detect;

use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use palisade_detect::{Engine, Event, Hit, HitKind, Limits, RuleConfig, Tracker, builtin};
use palisade_model::Timestamp;

const FILTERS: &str = "/etc/fail2ban/filter.d";
/// Set in the environment of this binary run as `palisade detect`.
const CHILD: &str = "PALISADE_BENCH_DETECT";

/// The allocator the `palisade` binary runs on (src/main.rs), so that this
/// binary run as `palisade detect` runs as the subcommand does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pins this thread to the core it is running on.
fn pin_to_one_core() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Run {
    lines: u64,
    failures: u64,
    bans: u64,
    /// Pairs the tracker forgot because it was full.
    evicted: u64,
    elapsed: Duration,
    /// CPU time of this thread.
    cpu: Duration,
    /// Page faults of this thread (memory first touched during the run).
    faults: u64,
    /// Time to touch the tracker's reserved memory before the run (not
    /// counted in `elapsed`).
    startup: Option<Duration>,
}

fn thread_faults() -> u64 {
    // SAFETY: getrusage writes one rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (ru.ru_minflt + ru.ru_majflt) as u64
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Calls `f` with each line of the file, read as `palisade detect` reads
/// (`logfile`).
fn for_each_line(path: &Path, mut f: impl FnMut(&str)) {
    let file = std::fs::File::open(path).unwrap();
    palisade_detect::logfile::for_each_line(file, |line| {
        f(line);
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
}

/// Feeds the log at `path` to `tracker` as `palisade detect` does, a batch
/// of lines at a time, every line at `now`; `each` gets each line's events
/// and verdicts.
fn feed(
    tracker: &mut Tracker,
    path: &Path,
    now: Timestamp,
    mut each: impl FnMut(Vec<Event>, &[Hit]),
) {
    let file = std::fs::File::open(path).unwrap();
    palisade_detect::logfile::for_each_batch(file, detect::BATCH, |batch| {
        tracker.observe_lines(
            "bench",
            batch,
            |_| now,
            |_, events, hits| {
                each(events, hits);
                Ok::<(), std::io::Error>(())
            },
        )
    })
    .unwrap();
}

fn run_palisade(path: &Path, rules: &[RuleConfig]) -> Run {
    let engine = Engine::compile(rules).expect("rules compile");
    let mut tracker = Tracker::new(engine, Limits::default());
    let startup = None;
    let (mut lines, mut failures, mut bans) = (0u64, 0u64, 0u64);
    let now = Timestamp::now();
    let faults = thread_faults();
    let cpu = thread_cpu();
    let start = Instant::now();
    feed(&mut tracker, path, now, |events, hits| {
        lines += 1;
        failures += hits.len() as u64;
        bans += events.len() as u64;
    });
    Run {
        lines,
        failures,
        bans,
        evicted: tracker.evicted(),
        elapsed: start.elapsed(),
        cpu: thread_cpu() - cpu,
        faults: thread_faults() - faults,
        startup,
    }
}

/// The engine alone (no counting), for reference.
fn run_engine(path: &Path, rules: &[RuleConfig]) -> Run {
    let mut engine = Engine::compile(rules).expect("rules compile");
    let mut hits = Vec::new();
    let (mut lines, mut failures) = (0u64, 0u64);
    let faults = thread_faults();
    let cpu = thread_cpu();
    let start = Instant::now();
    for_each_line(path, |line| {
        lines += 1;
        hits.clear();
        engine.check("bench", line, &mut hits);
        failures += hits.len() as u64;
    });
    Run {
        lines,
        failures,
        bans: 0,
        evicted: 0,
        elapsed: start.elapsed(),
        cpu: thread_cpu() - cpu,
        faults: thread_faults() - faults,
        startup: None,
    }
}

/// Distinct addresses the rules count failures from (untimed), by family.
fn attackers(path: &Path, rules: &[RuleConfig]) -> (usize, usize) {
    let mut engine = Engine::compile(rules).expect("rules compile");
    let mut hits = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for_each_line(path, |line| {
        hits.clear();
        engine.check("bench", line, &mut hits);
        for h in &hits {
            if let (palisade_detect::HitKind::Bad, Some(a)) = (h.kind, h.address) {
                seen.insert((h.rule, a));
            }
        }
    });
    let v4 = seen.iter().filter(|(_, a)| a.addr().is_ipv4()).count();
    (v4, seen.len() - v4)
}

/// How many times each of palisade's runs and fail2ban-rs's is repeated
/// (`RUNS`, default 3): this machine's speed varies by a tenth from one
/// run to the next, more than the differences measured.
fn runs() -> usize {
    std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// Runs `run` [`runs`] times (each from scratch) and keeps the fastest;
/// every time must count the same.
fn best_of(mut run: impl FnMut() -> Run) -> (Run, f64) {
    let runs: Vec<Run> = (0..runs()).map(|_| run()).collect();
    for r in &runs[1..] {
        assert_eq!(
            (r.lines, r.failures, r.bans, r.evicted),
            (
                runs[0].lines,
                runs[0].failures,
                runs[0].bans,
                runs[0].evicted
            ),
            "runs disagree"
        );
    }
    let mut rates: Vec<f64> = runs
        .iter()
        .map(|r| r.lines as f64 / r.elapsed.as_secs_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let startup = runs.iter().filter_map(|r| r.startup).max();
    let mut best = runs.into_iter().min_by_key(|r| r.elapsed).unwrap();
    best.startup = startup;
    (best, median)
}

fn report(name: &str, (r, median): &(Run, f64)) -> f64 {
    let rate = r.lines as f64 / r.elapsed.as_secs_f64();
    let n = runs();
    println!(
        "  {name:<44} {:>9} lines {:>6.2} s {:>10.0} lines/s  (best of {n}, median {median:.0}; cpu {:.2} s, {} faults; {} hits, {} ban events, {} evicted)",
        r.lines,
        r.elapsed.as_secs_f64(),
        rate,
        r.cpu.as_secs_f64(),
        r.faults,
        r.failures,
        r.bans,
        r.evicted
    );
    if let Some(t) = r.startup {
        println!(
            "  {:<44} (tracker memory touched before the clock starts: at most {:.3} s, not counted)",
            "",
            t.as_secs_f64()
        );
    }
    rate
}

/// `palisade detect`'s arguments, for the child.
#[derive(Debug, Parser)]
struct DetectCli {
    #[command(flatten)]
    args: detect::DetectArgs,
}

/// What one child process took.
struct Measured {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
    /// Its standard output's summary: the lines that hold the figures (the
    /// last line, fail2ban-rs's and fail2ban-regex's totals). Only these
    /// are kept: the bench process stays small, since a child's peak
    /// memory as `wait4` reports it starts from what it was forked from.
    out: String,
}

/// The figure lines of a tool's output file, read as a stream.
fn figures(path: &Path) -> String {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut out = String::new();
    let mut last = String::new();
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let t = line.trim_start();
        if t.starts_with("Matches:") || t.starts_with("Would ban:") || t.starts_with("Lines:") {
            out.push_str(&line);
            out.push('\n');
        }
        last = line;
    }
    out.push_str(&last);
    out
}

/// Runs `cmd` (stdout to `out_file`) and measures it with `wait4`.
fn measure(mut cmd: Command, out_file: &Path) -> Result<Measured, String> {
    let out = std::fs::File::create(out_file).map_err(|e| e.to_string())?;
    cmd.stdout(out).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child, writing one status and one rusage.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    if r < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            err.lines().last().unwrap_or("")
        ));
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Measured {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
        out: figures(out_file),
    })
}

/// A command the bench times, with the file its output goes to and what
/// reads the counts off that output.
struct Tool {
    name: String,
    make: Box<dyn Fn() -> Command>,
    out_file: PathBuf,
    counted: fn(&Measured) -> Result<String, String>,
}

/// [`measure`] of each tool, [`runs`] times, in turns (the first tool,
/// the second, ..., then the first again), so that a slower spell of the
/// machine falls on every tool alike rather than on one: for each, the
/// fastest run, with the highest peak memory of all its runs.
fn in_turns(tools: &[Tool]) -> Vec<Result<Measured, String>> {
    let mut best: Vec<Result<Option<Measured>, String>> = tools.iter().map(|_| Ok(None)).collect();
    for _ in 0..runs() {
        for (tool, best) in tools.iter().zip(&mut best) {
            let Ok(kept) = best else {
                continue;
            };
            *best = match (measure((tool.make)(), &tool.out_file), kept.take()) {
                (Err(e), _) => Err(e),
                (Ok(m), None) => Ok(Some(m)),
                (Ok(m), Some(b)) => {
                    let max_rss_kib = b.max_rss_kib.max(m.max_rss_kib);
                    let fastest = if b.wall <= m.wall { b } else { m };
                    Ok(Some(Measured {
                        max_rss_kib,
                        ..fastest
                    }))
                }
            };
        }
    }
    best.into_iter()
        .map(|b| b.and_then(|m| m.ok_or_else(|| "not run".to_string())))
        .collect()
}

/// One row of a log's table: lines per second of wall-clock and of CPU
/// time, and memory.
struct Row {
    name: String,
    rate: f64,
    cpu_rate: f64,
    rss_mib: f64,
}

fn row(name: &str, lines: usize, m: &Measured, matched: &str) -> Row {
    let rate = lines as f64 / m.wall.as_secs_f64();
    println!(
        "  {name:<44} {:>6.2} s {:>10.0} lines/s  cpu {:>5.2} s {:>10.0} lines/s  peak {:>6.1} MiB  ({matched})",
        m.wall.as_secs_f64(),
        rate,
        m.cpu.as_secs_f64(),
        lines as f64 / m.cpu.as_secs_f64().max(1e-6),
        m.max_rss_kib as f64 / 1024.0
    );
    Row {
        name: name.to_string(),
        rate,
        cpu_rate: lines as f64 / m.cpu.as_secs_f64().max(1e-6),
        rss_mib: m.max_rss_kib as f64 / 1024.0,
    }
}

/// `palisade detect --json ARGS LOG` as a child.
fn palisade(name: &str, dir: &Path, log: &Path, args: &[&str]) -> Tool {
    let (log, args) = (
        log.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    Tool {
        name: name.to_string(),
        make: Box::new(move || {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.env(CHILD, "1").arg("--json").args(&args).arg(&log);
            cmd
        }),
        // Read after each run, so the two palisade rows can share it.
        out_file: dir.join("palisade.json"),
        counted: palisade_counted,
    }
}

/// What a `palisade detect --json` run counted, from its summary line.
fn palisade_counted(m: &Measured) -> Result<String, String> {
    let summary: serde_json::Value = m
        .out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("no summary")?;
    let s = &summary["summary"];
    let matched: Vec<String> = s["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["matched"].as_u64() > Some(0))
        .map(|r| format!("{} {}", r["rule"].as_str().unwrap_or(""), r["matched"]))
        .collect();
    let fallback = s["fallback_filters"].as_array().map_or(0, Vec::len);
    Ok(format!(
        "matched: {}; {} bans, {} evicted{}",
        matched.join(", "),
        s["bans"],
        s["evicted"],
        if fallback > 0 {
            format!("; {fallback} filters partly on fancy-regex")
        } else {
            String::new()
        }
    ))
}

/// fail2ban-rs, installed under `target/fail2ban-rs` if it is not yet.
fn fail2ban_rs() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let root = target.join("fail2ban-rs");
    let bin = root.join("bin/fail2ban-rs");
    if bin.exists() {
        return Ok(bin);
    }
    println!("installing fail2ban-rs 1.5 under {} (once)", root.display());
    let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--locked",
            "fail2ban-rs",
            "--version",
            "^1.5",
            "--root",
        ])
        .arg(&root)
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if ok && bin.exists() {
        Ok(bin)
    } else {
        Err("cargo install fail2ban-rs failed".into())
    }
}

/// A fail2ban-rs jail: its name and patterns.
type Jail<'a> = (&'a str, &'a [&'a str]);

/// `fail2ban-rs dry-run` of `log` with `jails` (5 failures within 10m).
fn fail2ban_rs_tool(bin: &Path, dir: &Path, log: &Path, jails: &[Jail]) -> Result<Tool, String> {
    let mut conf = format!(
        "[global]\nstate_file = {:?}\nsocket_path = {:?}\n",
        dir.join("f2brs.state").display().to_string(),
        dir.join("f2brs.sock").display().to_string()
    );
    for (name, patterns) in jails {
        conf.push_str(&format!(
            "\n[jail.{name}]\nenabled = true\nlog_path = {:?}\ndate_format = \"syslog\"\nfilter = [\n",
            log.display().to_string()
        ));
        for p in *patterns {
            conf.push_str(&format!("  '{p}',\n"));
        }
        conf.push_str(
            "]\nmax_retry = 5\nfind_time = \"10m\"\nban_time = \"1h\"\nbackend = \"nftables\"\n",
        );
    }
    let path = dir.join("fail2ban-rs.toml");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let (bin, log) = (bin.to_path_buf(), log.to_path_buf());
    Ok(Tool {
        name: "fail2ban-rs dry-run".to_string(),
        make: Box::new(move || {
            let mut cmd = Command::new(&bin);
            cmd.arg("--config").arg(&path).arg("dry-run").arg(&log);
            cmd
        }),
        out_file: dir.join("fail2ban-rs.out"),
        counted: fail2ban_rs_counted,
    })
}

/// What a `fail2ban-rs dry-run` counted, from its totals.
fn fail2ban_rs_counted(m: &Measured) -> Result<String, String> {
    let pick = |key: &str| -> u64 {
        m.out
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    };
    Ok(format!(
        "matched {}, would ban {}",
        pick("Matches:"),
        pick("Would ban:")
    ))
}

/// fail2ban-regex with each filter in turn, times added up.
fn run_fail2ban_regex(
    dir: &Path,
    log: &Path,
    filters: &[&str],
) -> Result<(Measured, String), String> {
    let mut total = Measured {
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
        max_rss_kib: 0,
        out: String::new(),
    };
    let mut matched = Vec::new();
    for f in filters {
        let mut cmd = Command::new("fail2ban-regex");
        cmd.arg(log)
            .arg(Path::new(FILTERS).join(format!("{f}.conf")));
        let m = measure(cmd, &dir.join("fail2ban-regex.out"))?;
        total.wall += m.wall;
        total.cpu += m.cpu;
        total.max_rss_kib = total.max_rss_kib.max(m.max_rss_kib);
        let lines = m
            .out
            .lines()
            .find(|l| l.starts_with("Lines:"))
            .unwrap_or("")
            .trim()
            .to_string();
        matched.push(format!("{f}: {lines}"));
    }
    Ok((total, matched.join("; ")))
}

/// fail2ban-rs patterns for the sshd lines palisade's built-in rule counts
/// in the generated logs.
const SSHD_JAIL: &[&str] = &[
    r"sshd\[\d+\]: Failed password for .* from <HOST> port \d+ ssh2$",
    r"sshd\[\d+\]: Invalid user .* from <HOST> port \d+$",
    r"sshd\[\d+\]: Connection closed by (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]$",
    r"sshd\[\d+\]: Connection closed by <HOST> port \d+ \[preauth\]$",
    r"sshd\[\d+\]: Disconnected from (?:invalid|authenticating) user .* <HOST> port \d+ \[preauth\]$",
    r"sshd\[\d+\]: Unable to negotiate with <HOST> port \d+: no matching",
    r"sshd\[\d+\]: banner exchange: Connection from <HOST> port \d+: invalid format$",
];

/// fail2ban-rs patterns for the failures of the nginx/postfix/dovecot log.
const NGINX_JAIL: &[&str] =
    &[r"\[error\] \d+#\d+: \*\d+ user .*: password mismatch, client: <HOST>,"];
const POSTFIX_JAIL: &[&str] = &[
    r"postfix/smtpd\[\d+\]: warning: [-._\w]+\[<HOST>\]: SASL \w+ authentication failed",
    r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+\[<HOST>\]: 554 5\.7\.1 .*Relay access denied",
];
const DOVECOT_JAIL: &[&str] =
    &[r"dovecot: \w+-login: Disconnected \(auth failed, \d+ attempts.*rip=<HOST>,"];

/// Speed ratios by wall-clock and by CPU time (on a shared machine other
/// work inflates the former), and memory ratios.
fn ratios(rows: &[Row]) {
    let find = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix));
    let palisade = || rows.iter().filter(|r| r.name.starts_with("palisade"));
    if let Some(f) = find("fail2ban-rs") {
        for p in palisade() {
            println!(
                "  ratio {}: {:.2}x fail2ban-rs's speed (cpu {:.2}x), {:.2}x its memory",
                p.name,
                p.rate / f.rate,
                p.cpu_rate / f.cpu_rate,
                p.rss_mib / f.rss_mib
            );
        }
    }
    if let Some(f) = find("fail2ban-regex") {
        for p in palisade() {
            println!(
                "  ratio {}: {:.0}x fail2ban-regex (cpu {:.0}x)",
                p.name,
                p.rate / f.rate,
                p.cpu_rate / f.cpu_rate
            );
        }
    }
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        let cli = DetectCli::parse();
        match detect::run(cli.args, Vec::new(), Limits::default()) {
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("palisade: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let lines: usize = std::env::var("LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    pin_to_one_core();
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var("KEEP_LOGS") {
        Ok(p) => {
            std::fs::create_dir_all(&p).unwrap();
            PathBuf::from(p)
        }
        Err(_) => tmp.path().to_path_buf(),
    };
    type Gen = fn(&mut BufWriter<std::fs::File>, usize, u64) -> std::io::Result<()>;
    let logs: [(&str, Gen); 3] = [
        ("attack.log", |w, n, s| loggen::write_auth_log(w, n, s)),
        ("quiet.log", |w, n, s| loggen::write_quiet_log(w, n, s)),
        ("mail-web.log", |w, n, s| {
            loggen::write_mail_web_log(w, n, s)
        }),
    ];
    for (name, generate) in logs {
        let mut w = BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
        generate(&mut w, lines, 0x5eed_0001).unwrap();
    }
    println!("generated 3 logs of {lines} lines in {}", dir.display());
    let have_f2b = Path::new(FILTERS).join("sshd.conf").exists();
    let f2b_rs = if std::env::var_os("SKIP_FAIL2BAN_RS").is_some() {
        Err("skipped".to_string())
    } else {
        fail2ban_rs()
    };
    let f2b_regex = std::env::var_os("SKIP_FAIL2BAN").is_none() && have_f2b;

    let sshd_conf = format!("{FILTERS}/sshd.conf");
    let mail_filters = ["nginx-http-auth", "postfix", "dovecot"];
    let mail_args: Vec<String> = mail_filters
        .iter()
        .flat_map(|f| {
            [
                "--fail2ban-filter".to_string(),
                format!("{FILTERS}/{f}.conf"),
            ]
        })
        .collect();
    for (log, title) in [
        ("attack.log", "sshd log under attack"),
        (
            "quiet.log",
            "quiet syslog (2% attacks, 28% ordinary sshd, 70% other daemons)",
        ),
        (
            "mail-web.log",
            "nginx, postfix and dovecot (imported fail2ban filters)",
        ),
    ] {
        let path = dir.join(log);
        println!("\n{title}: {lines} lines");
        let mut rows = Vec::new();
        let mail = log == "mail-web.log";
        let args: Vec<&str> = if mail {
            mail_args.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        let name = if mail {
            "palisade detect --json (imported filters)"
        } else {
            "palisade detect --json (built-in rules)"
        };
        let mut tools = vec![palisade(name, &dir, &path, &args)];
        if !mail && have_f2b {
            let name = "palisade detect --json (imported sshd.conf)";
            tools.push(palisade(
                name,
                &dir,
                &path,
                &["--fail2ban-filter", &sshd_conf],
            ));
        }
        match &f2b_rs {
            Ok(bin) => {
                let jails: Vec<Jail> = if mail {
                    vec![
                        ("nginx", NGINX_JAIL),
                        ("postfix", POSTFIX_JAIL),
                        ("dovecot", DOVECOT_JAIL),
                    ]
                } else {
                    vec![("sshd", SSHD_JAIL)]
                };
                match fail2ban_rs_tool(bin, &dir, &path, &jails) {
                    Ok(tool) => tools.push(tool),
                    Err(e) => println!("  fail2ban-rs: {e}"),
                }
            }
            Err(e) => println!("  fail2ban-rs: {e}"),
        }
        for (tool, m) in tools.iter().zip(in_turns(&tools)) {
            match m.and_then(|m| Ok(((tool.counted)(&m)?, m))) {
                Ok((text, m)) => rows.push(row(&tool.name, lines, &m, &text)),
                Err(e) => println!("  {}: {e}", tool.name),
            }
        }
        if f2b_regex {
            let filters: Vec<&str> = if mail {
                mail_filters.to_vec()
            } else {
                vec!["sshd"]
            };
            match run_fail2ban_regex(&dir, &path, &filters) {
                Ok((m, text)) => rows.push(row("fail2ban-regex", lines, &m, &text)),
                Err(e) => println!("  fail2ban-regex: {e}"),
            }
        } else {
            println!("  fail2ban-regex: skipped");
        }
        ratios(&rows);
    }

    let attack = dir.join("attack.log");
    let sshd: Vec<RuleConfig> = builtin::rules()
        .into_iter()
        .filter(|r| r.name == "sshd")
        .collect();
    println!("\nin process, attack log (best of RUNS):");
    report(
        "palisade engine only, sshd rule",
        &best_of(|| run_engine(&attack, &sshd)),
    );
    report(
        "palisade built-in sshd rule",
        &best_of(|| run_palisade(&attack, &sshd)),
    );
    let (v4, v6) = attackers(&attack, &sshd);
    println!(
        "  the built-in sshd rule counts failures from {} distinct addresses ({v4} IPv4, {v6} IPv6); the tracker holds {} pairs in its default budget",
        v4 + v6,
        Tracker::new(Engine::compile(&sshd).unwrap(), Limits::default()).capacity()
    );
    let (wanted, banned, evicted) = no_silent_loss(&attack);
    println!(
        "  no silent loss: {wanted} addresses have at least {THRESHOLD} failures matched by the imported sshd.conf (the lines fail2ban-regex matches), all taken at one instant; the tracker bans every one, or the network it counts it in: {banned} of {wanted} ({evicted} evicted)"
    );
    assert_eq!(
        banned, wanted,
        "an address fail2ban would ban was not banned"
    );
}

/// The first stage's count of the rule [`no_silent_loss`] counts with:
/// fail2ban's `maxretry` in Debian's jail.conf.
const THRESHOLD: u32 = 5;

/// The addresses that fail2ban, with the imported `sshd.conf` and
/// `THRESHOLD` failures within 10 minutes, bans on the log at `path` when
/// all its failures come at one instant (by the log's own times none of
/// its addresses fails that often), and how many of them the tracker, fed
/// the same way with its default memory budget, bans (its ban covers the
/// address: the address itself, or the network the rule counts it in),
/// with its evictions. Untimed.
fn no_silent_loss(path: &Path) -> (usize, usize, u64) {
    let rule: RuleConfig = toml::from_str(&format!(
        "name = \"fail2ban/sshd\"\nfail2ban_filter = \"{FILTERS}/sshd.conf\"\n\
         [[stages]]\nname = \"ban\"\ncount = {THRESHOLD}\nwithin = \"10m\"\nban = \"1h\"\n"
    ))
    .expect("the rule parses");
    let mut tracker = Tracker::new(
        Engine::compile(&[rule]).expect("sshd.conf compiles"),
        Limits::default(),
    );
    let mut failures = std::collections::HashMap::new();
    let mut bans = std::collections::HashSet::new();
    feed(&mut tracker, path, Timestamp::now(), |events, hits| {
        for hit in hits {
            if let (HitKind::Bad, Some(a)) = (hit.kind, hit.address) {
                *failures.entry(a).or_insert(0u32) += 1;
            }
        }
        for e in events {
            if let Event::Ban { address, .. } = e {
                bans.insert(address);
            }
        }
    });
    let wanted: Vec<_> = failures
        .into_iter()
        .filter(|&(_, n)| n >= THRESHOLD)
        .map(|(a, _)| a)
        .collect();
    let banned = wanted
        .iter()
        .filter(|&&a| bans.contains(&tracker.counted(0, a)))
        .count();
    (wanted.len(), banned, tracker.evicted())
}

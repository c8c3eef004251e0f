//! sshd auth.log throughput: palisade's engine (built-in sshd rule, and
//! the imported fail2ban `sshd.conf`) against `fail2ban-regex` with the same
//! filter on the same generated file, all pinned to one core.
//!
//! `cargo bench -p palisade-detect --bench sshd` (env `LINES` to change the
//! size, default 1,000,000; `SKIP_FAIL2BAN=1` to skip fail2ban-regex;
//! `ONLY=engine,builtin,pack,import` to run only some of palisade's runs;
//! `RUNS` to change how many times each of palisade's runs is repeated,
//! default 3).
//!
//! Each run reads the file itself (1 MiB reads, lines split and checked as
//! UTF-8) and feeds every line through the whole pipeline: syslog header,
//! rule matching, address extraction and parsing, then (except for the
//! engine-only run) counting with stages, evidence and bounded memory. All
//! lines are counted at one instant (the file is read as fast as it goes,
//! as after a flood or a restart), so no window runs out and every attacking
//! address competes for the tracker's room: with more distinct addresses
//! than [`Limits::max_tracked`] (printed), the least recently seen are
//! forgotten (the "evicted" figure). Each
//! of palisade's runs is repeated from scratch (new engine, new tracker) and
//! the fastest is shown with the median beside it: on a shared machine other
//! work slows some repetitions down, never speeds one up (every repetition
//! must count the same). The wall-clock time gives the rate; the thread's
//! CPU time is printed beside it, as other work on a shared machine inflates
//! the former, and so are the page faults taken during the run.
//! fail2ban-regex runs once.
//!
//! Every counting run starts equally warm: its tracker's reserved memory
//! (slots, table, evidence arena) is touched before the clock starts
//! ([`Tracker::prefault`]), and the time that took is printed on its own
//! line. An agent pays that once, over its first attacking addresses; left
//! in, it made whichever run came first look slower (touching took up to
//! 0.12 s for the first tracker of the process, about 0.01 s for later ones).

mod loggen;

use std::io::{BufWriter, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_detect::{Engine, Limits, RuleConfig, Tracker, builtin};
use palisade_model::Timestamp;

const SSHD_CONF: &str = "/etc/fail2ban/filter.d/sshd.conf";

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

/// Calls `f` with each line of the file (with its newline), read in 1 MiB
/// pieces, each piece's whole lines checked as UTF-8 at once.
fn for_each_line(path: &Path, mut f: impl FnMut(&str)) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(2 * buf.len(), 0);
        }
        let n = file.read(&mut buf[len..]).unwrap();
        if n == 0 {
            if len > 0 {
                f(std::str::from_utf8(&buf[..len]).expect("UTF-8"));
            }
            return;
        }
        len += n;
        let Some(last) = memchr::memrchr(b'\n', &buf[..len]) else {
            continue;
        };
        let text = std::str::from_utf8(&buf[..=last]).expect("UTF-8");
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &text.as_bytes()[start..]) {
            let end = start + nl + 1;
            f(&text[start..end]);
            start = end;
        }
        buf.copy_within(last + 1..len, 0);
        len -= last + 1;
    }
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
    for_each_line(path, |line| {
        lines += 1;
        let (events, hits) = tracker.observe_text("bench", line, now);
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

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `run` `RUNS` times (each from scratch) and keeps the fastest;
/// every time must count the same.
fn best_of(mut run: impl FnMut() -> Run) -> (Run, f64) {
    let n: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let runs: Vec<Run> = (0..n).map(|_| run()).collect();
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
    let n = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "{name:<36} {:>9} lines {:>6.2} s {:>10.0} lines/s  (best of {n}, median {median:.0}; cpu {:.2} s, {} faults; {} hits, {} ban events, {} evicted)",
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
            "{:<36} (tracker memory touched before the clock starts: at most {:.3} s, not counted)",
            "",
            t.as_secs_f64()
        );
    }
    rate
}

/// Whether `ONLY` (comma-separated) is unset or names `run`.
fn wanted(run: &str) -> bool {
    std::env::var("ONLY").map_or(true, |only| only.split(',').any(|r| r.trim() == run))
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let lines: usize = std::env::var("LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    pin_to_one_core();
    let dir = tempfile::tempdir().unwrap();
    // KEEP_LOG=FILE keeps the generated log there.
    let path = match std::env::var("KEEP_LOG") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => dir.path().join("auth.log"),
    };
    let t = Instant::now();
    {
        let mut w = BufWriter::new(std::fs::File::create(&path).unwrap());
        loggen::write_auth_log(&mut w, lines, 0x5eed_0001).unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "generated {lines} lines ({:.1} MB) in {:.2} s: {}",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        path.display()
    );

    let sshd: Vec<RuleConfig> = builtin::rules()
        .into_iter()
        .filter(|r| r.name == "sshd")
        .collect();
    if wanted("engine") {
        report(
            "palisade engine only, sshd rule",
            &best_of(|| run_engine(&path, &sshd)),
        );
    }
    let builtin_rate = wanted("builtin").then(|| {
        report(
            "palisade built-in sshd rule",
            &best_of(|| run_palisade(&path, &sshd)),
        )
    });
    let all_rate = wanted("pack").then(|| {
        report(
            "palisade whole built-in pack",
            &best_of(|| run_palisade(&path, &builtin::rules())),
        )
    });
    let have_f2b = Path::new(SSHD_CONF).exists();
    let mut import_rate = None;
    if have_f2b && wanted("import") {
        let rule: RuleConfig = toml::from_str(&format!(
            "name = \"f2b-sshd\"\nfail2ban_filter = \"{SSHD_CONF}\"\n"
        ))
        .unwrap();
        import_rate = Some(report(
            "palisade imported fail2ban sshd.conf",
            &best_of(|| run_palisade(&path, std::slice::from_ref(&rule))),
        ));
    }
    if wanted("builtin") {
        let (v4, v6) = attackers(&path, &sshd);
        println!(
            "the built-in sshd rule counts failures from {} distinct addresses ({v4} IPv4, {v6} IPv6); the tracker keeps {} at once",
            v4 + v6,
            Tracker::new(Engine::compile(&sshd).unwrap(), Limits::default()).capacity()
        );
    }
    let rss = peak_rss_kib();
    println!(
        "palisade peak RSS (whole bench process): {:.1} MiB",
        rss as f64 / 1024.0
    );

    if std::env::var("SKIP_FAIL2BAN").is_ok() || !have_f2b {
        println!("fail2ban-regex: skipped");
        return;
    }
    let t = Instant::now();
    let out = Command::new("fail2ban-regex")
        .arg(&path)
        .arg(SSHD_CONF)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let elapsed = t.elapsed();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let matched = text
                .lines()
                .find(|l| l.starts_with("Lines:"))
                .unwrap_or("")
                .trim()
                .to_string();
            let rate = lines as f64 / elapsed.as_secs_f64();
            println!(
                "{:<36} {:>9} lines {:>6.2} s {:>10.0} lines/s  ({matched})",
                "fail2ban-regex sshd.conf",
                lines,
                elapsed.as_secs_f64(),
                rate
            );
            let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.0}x", r / rate));
            println!(
                "ratio to fail2ban-regex: built-in {}, imported sshd.conf {}, whole pack {}",
                ratio(builtin_rate),
                ratio(import_rate),
                ratio(all_rate)
            );
        }
        Ok(o) => println!(
            "fail2ban-regex failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("fail2ban-regex not run: {e}"),
    }
}

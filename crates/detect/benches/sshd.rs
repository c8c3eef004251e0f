//! sshd auth.log throughput: palisade's engine (built-in sshd rule, and
//! the imported fail2ban `sshd.conf`) against `fail2ban-regex` with the same
//! filter on the same generated file, all pinned to one core.
//!
//! `cargo bench -p palisade-detect --bench sshd` (env `LINES` to change the
//! size, default 1,000,000; `SKIP_FAIL2BAN=1` to skip fail2ban-regex).

mod loggen;

use std::io::{BufRead, BufReader, BufWriter};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_detect::{Engine, Limits, RuleConfig, Tracker, builtin};
use palisade_model::Timestamp;

const SSHD_CONF: &str = "/etc/fail2ban/filter.d/sshd.conf";

fn pin_to_one_core() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Run {
    lines: u64,
    failures: u64,
    bans: u64,
    elapsed: Duration,
}

fn run_palisade(path: &Path, rules: &[RuleConfig]) -> Run {
    let engine = Engine::compile(rules).expect("rules compile");
    let mut tracker = Tracker::new(engine, Limits::default());
    let file = std::fs::File::open(path).unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = String::new();
    let (mut lines, mut failures, mut bans) = (0u64, 0u64, 0u64);
    let now = Timestamp::now();
    let start = Instant::now();
    loop {
        buf.clear();
        if reader.read_line(&mut buf).unwrap() == 0 {
            break;
        }
        lines += 1;
        let (events, hits) = tracker.observe_text("bench", &buf, now);
        failures += hits.len() as u64;
        bans += events.len() as u64;
    }
    Run {
        lines,
        failures,
        bans,
        elapsed: start.elapsed(),
    }
}

/// The engine alone (no counting), for reference.
fn run_engine(path: &Path, rules: &[RuleConfig]) -> Run {
    let mut engine = Engine::compile(rules).expect("rules compile");
    let file = std::fs::File::open(path).unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = String::new();
    let mut hits = Vec::new();
    let (mut lines, mut failures) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        buf.clear();
        if reader.read_line(&mut buf).unwrap() == 0 {
            break;
        }
        lines += 1;
        hits.clear();
        engine.check("bench", &buf, &mut hits);
        failures += hits.len() as u64;
    }
    Run {
        lines,
        failures,
        bans: 0,
        elapsed: start.elapsed(),
    }
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

fn report(name: &str, r: &Run) -> f64 {
    let rate = r.lines as f64 / r.elapsed.as_secs_f64();
    println!(
        "{name:<34} {:>9} lines {:>8.2} s {:>12.0} lines/s  ({} failures, {} ban events)",
        r.lines,
        r.elapsed.as_secs_f64(),
        rate,
        r.failures,
        r.bans
    );
    rate
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
    report("palisade engine only, sshd rule", &run_engine(&path, &sshd));
    if std::env::var("ONLY_ENGINE").is_ok() {
        return;
    }
    let builtin_rate = report("palisade built-in sshd rule", &run_palisade(&path, &sshd));
    let all_rate = report(
        "palisade whole built-in pack",
        &run_palisade(&path, &builtin::rules()),
    );
    let have_f2b = Path::new(SSHD_CONF).exists() && std::env::var("SKIP_IMPORT").is_err();
    let mut import_rate = None;
    if have_f2b {
        let rule: RuleConfig = toml::from_str(&format!(
            "name = \"f2b-sshd\"\nfail2ban_filter = \"{SSHD_CONF}\"\n"
        ))
        .unwrap();
        import_rate = Some(report(
            "palisade imported fail2ban sshd.conf",
            &run_palisade(&path, &[rule]),
        ));
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
                "{:<34} {:>9} lines {:>8.2} s {:>12.0} lines/s  ({matched})",
                "fail2ban-regex sshd.conf",
                lines,
                elapsed.as_secs_f64(),
                rate
            );
            println!(
                "ratio: built-in {:.0}x fail2ban-regex, imported sshd.conf {:.0}x, whole pack {:.0}x",
                builtin_rate / rate,
                import_rate.unwrap_or(0.0) / rate,
                all_rate / rate
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

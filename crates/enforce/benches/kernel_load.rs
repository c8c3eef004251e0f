//! Loading many banned IPv4 hosts into the kernel: palisade's nftables
//! enforcer (`replace_all`, raw netlink) against `nft -f` of a file with the
//! same elements in the same layout; then the cost of one more ban at that
//! size: palisade's `apply` against one `nft add element` process, and
//! against `nft add element` into an interval set of the same hosts (the
//! layout palisade does not use for hosts, because each transaction into an
//! interval set costs time proportional to the set's size).
//!
//! Run as root: `cargo bench -p palisade-enforce --bench kernel_load`.
//! Sizes can be chosen with `PALISADE_BENCH_SIZES=10000,100000`.
//!
//! Every measurement runs in a child process (so that its peak RSS,
//! `VmHWM`, belongs to that size alone) inside a fresh network namespace.
//! Hosts are every second address from 100.64.0.0 on (not adjacent, so that
//! palisade does not merge them and both sides load the same number of
//! elements), each with a one-hour timeout. The numbers only describe set
//! contents: no packet is sent anywhere.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_enforce::nftables::{NftablesEnforcer, NftablesOptions};
use palisade_enforce::{Change, Enforcer, Entry};
use palisade_lab::Netns;
use palisade_model::{Action, Net, Timestamp};

const FIRST: u32 = 0x6440_0000; // 100.64.0.0
const TIMEOUT_SECS: u64 = 3600;

fn host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FIRST + 2 * i)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let side = args[pos + 1].as_str();
        let n: u32 = args[pos + 2].parse().expect("size");
        child(side, n);
        return;
    }
    if !palisade_lab::require_root_and(&["nft"]) {
        return;
    }
    let sizes: Vec<u32> = std::env::var("PALISADE_BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().parse().expect("size"))
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    println!(
        "kernel_load: IPv4 hosts with timeouts into table inet palisade, fresh namespace each"
    );
    println!();
    println!(
        "{:>9}  {:>12}  {:>10}  {:>14}  {:>13}  {:>14}  {:>11}  {:>11}  {:>14}",
        "hosts",
        "palisade (s)",
        "nft -f (s)",
        "nft / palisade",
        "peak RSS (MB)",
        "RSS after (MB)",
        "+1 ban (ms)",
        "nft add (ms)",
        "interval (ms)"
    );
    for n in sizes {
        let ours = run_child("palisade", n);
        let theirs = run_child("nft", n);
        let interval = run_child("nft-interval", n);
        println!(
            "{:>9}  {:>12.3}  {:>10.3}  {:>13.2}x  {:>13.1}  {:>14.1}  {:>11.3}  {:>11.3}  {:>14.3}",
            n,
            ours.seconds,
            theirs.seconds,
            theirs.seconds / ours.seconds,
            ours.peak_kb as f64 / 1024.0,
            ours.rss_kb as f64 / 1024.0,
            ours.one_more_ms,
            theirs.one_more_ms,
            interval.one_more_ms,
        );
    }
    println!();
    println!(
        "peak RSS / RSS after: the palisade child process (VmHWM / VmRSS), holding the loaded state"
    );
    println!(
        "+1 ban: median of {ONE_MORE} single bans added to the loaded set (palisade: one apply; \
         nft add: one `nft add element` process, hash set; interval: the same into an interval set, \
         median of {ONE_MORE_INTERVAL})"
    );
}

/// Single bans timed after the load, per side.
const ONE_MORE: u32 = 21;
/// The same for the interval-set peer, fewer: `nft` reads the whole
/// interval set back before each change (tens of seconds at a million).
const ONE_MORE_INTERVAL: u32 = 3;

fn one_more(side: &str) -> u32 {
    if side == "nft-interval" {
        ONE_MORE_INTERVAL
    } else {
        ONE_MORE
    }
}

struct Outcome {
    seconds: f64,
    peak_kb: u64,
    rss_kb: u64,
    one_more_ms: f64,
}

fn run_child(side: &str, n: u32) -> Outcome {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args(["--child", side, &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run benchmark child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{side} {n} failed: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("no result from {side} {n}: {text}"));
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Outcome {
        seconds: field("seconds"),
        peak_kb: field("peak_kb") as u64,
        rss_kb: field("rss_kb") as u64,
        one_more_ms: field("one_more_ms"),
    }
}

fn child(side: &str, n: u32) {
    let ns = Netns::new();
    let (seconds, one_more_ms) = ns.run(|| match side {
        "palisade" => load_palisade(n),
        "nft" => load_nft(n, false),
        "nft-interval" => load_nft(n, true),
        other => panic!("unknown side {other}"),
    });
    // Every side must have loaded every host, and the extra ones.
    let in_kernel = ns.run(|| {
        let mut nft = NftablesEnforcer::new(NftablesOptions::default()).expect("netlink");
        let status = nft.status(true).expect("status");
        status
            .objects
            .iter()
            .find(|o| o.name.ends_with("block4"))
            .and_then(|o| o.in_kernel)
            .unwrap_or(0)
    });
    assert_eq!(
        in_kernel,
        (n + one_more(side)) as usize,
        "{side}: elements in the kernel"
    );
    let (peak_kb, rss_kb) = memory();
    println!(
        "RESULT seconds={seconds:.6} peak_kb={peak_kb} rss_kb={rss_kb} one_more_ms={one_more_ms:.4}"
    );
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

/// Times `replace_all` with entries generated on the fly, and keeps the
/// enforcer alive until the memory was read.
fn load_palisade(n: u32) -> (f64, f64) {
    let mut nft = NftablesEnforcer::new(NftablesOptions::default()).expect("netlink");
    let expires = Some(Timestamp::now().saturating_add(Duration::from_secs(TIMEOUT_SECS)));
    let entry = |i: u32| Entry {
        action: Action::Ban,
        net: Net::host(host(i).into()),
        expires,
        comment: None,
        rule: None,
        list: None,
    };
    let mut entries = (0..n).map(entry);
    let start = Instant::now();
    nft.replace_all(&mut entries).expect("replace_all");
    let elapsed = start.elapsed().as_secs_f64();
    let one_more = (n..n + ONE_MORE)
        .map(|i| {
            let change = [Change::Put(entry(i))];
            let start = Instant::now();
            nft.apply(&change).expect("apply");
            start.elapsed()
        })
        .collect();
    std::mem::forget(nft); // counted in RSS after, like an agent holding it
    (elapsed, median_ms(one_more))
}

/// Times `nft -f` of a file with the same layout and elements (writing the
/// file is not timed).
fn load_nft(n: u32, interval: bool) -> (f64, f64) {
    let extra = if interval {
        ONE_MORE_INTERVAL
    } else {
        ONE_MORE
    };
    let path = std::env::temp_dir().join(format!("palisade-bench-{}-{n}.nft", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        writeln!(f, "table inet palisade {{").unwrap();
        for set in [
            "allow4",
            "allow6",
            "block4",
            "block6",
            "block4_net",
            "block6_net",
        ] {
            let ty = if set.contains('4') {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            };
            let hosts = set == "block4" || set == "block6";
            let flags = if hosts && !interval {
                "timeout"
            } else {
                "interval,timeout"
            };
            writeln!(f, "  set {set} {{ type {ty}; flags {flags}; }}").unwrap();
        }
        for (chain, hook) in [("input", "input"), ("forward", "forward")] {
            writeln!(
                f,
                "  chain {chain} {{ type filter hook {hook} priority -10; policy accept; \
                 ip saddr @allow4 accept; ip6 saddr @allow6 accept; \
                 ip saddr @block4 drop; ip6 saddr @block6 drop; \
                 ip saddr @block4_net drop; ip6 saddr @block6_net drop; }}"
            )
            .unwrap();
        }
        writeln!(f, "}}").unwrap();
        write!(f, "add element inet palisade block4 {{ ").unwrap();
        for i in 0..n {
            if i > 0 {
                write!(f, ", ").unwrap();
            }
            write!(f, "{} timeout {TIMEOUT_SECS}s", host(i)).unwrap();
        }
        writeln!(f, " }}").unwrap();
    }
    let start = Instant::now();
    let status = Command::new("nft")
        .arg("-f")
        .arg(&path)
        .status()
        .expect("run nft");
    let elapsed = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).ok();
    assert!(status.success(), "nft -f failed");
    let one_more = (n..n + extra)
        .map(|i| {
            let element = format!("{{ {} timeout {TIMEOUT_SECS}s }}", host(i));
            let start = Instant::now();
            let status = Command::new("nft")
                .args(["add", "element", "inet", "palisade", "block4", &element])
                .status()
                .expect("run nft");
            let took = start.elapsed();
            assert!(status.success(), "nft add element failed");
            took
        })
        .collect();
    (elapsed, median_ms(one_more))
}

/// (VmHWM, VmRSS) of this process, in kB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

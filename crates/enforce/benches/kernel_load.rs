//! Loading many banned IPv4 hosts into the kernel: palisade's nftables
//! enforcer (`replace_all`, raw netlink) against `nft -f` of a file with the
//! same elements in the same layout.
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

use palisade_enforce::nftables::{NftConfig, Nftables};
use palisade_enforce::{Enforcer, Entry};
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
        "{:>9}  {:>13}  {:>10}  {:>17}  {:>14}  {:>15}",
        "hosts", "palisade (s)", "nft -f (s)", "nft / palisade", "peak RSS (MB)", "RSS after (MB)"
    );
    for n in sizes {
        let ours = run_child("palisade", n);
        let theirs = run_child("nft", n);
        let (t_ours, t_theirs) = (ours.seconds, theirs.seconds);
        println!(
            "{:>9}  {:>13.3}  {:>10.3}  {:>16.2}x  {:>14.1}  {:>15.1}",
            n,
            t_ours,
            t_theirs,
            t_theirs / t_ours,
            ours.peak_kb as f64 / 1024.0,
            ours.rss_kb as f64 / 1024.0,
        );
    }
    println!();
    println!(
        "peak RSS / RSS after: the palisade child process (VmHWM / VmRSS), holding the loaded state"
    );
}

struct Outcome {
    seconds: f64,
    peak_kb: u64,
    rss_kb: u64,
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
    }
}

fn child(side: &str, n: u32) {
    let ns = Netns::new();
    let seconds = ns.run(|| match side {
        "palisade" => load_palisade(n),
        "nft" => load_nft(n),
        other => panic!("unknown side {other}"),
    });
    // Both sides must have loaded every host.
    let in_kernel = ns.run(|| {
        let mut nft = Nftables::new(NftConfig::default()).expect("netlink");
        let status = nft.status().expect("status");
        status
            .objects
            .iter()
            .find(|o| o.name.ends_with("block4"))
            .and_then(|o| o.in_kernel)
            .unwrap_or(0)
    });
    assert_eq!(in_kernel, n as usize, "{side}: elements in the kernel");
    let (peak_kb, rss_kb) = memory();
    println!("RESULT seconds={seconds:.6} peak_kb={peak_kb} rss_kb={rss_kb}");
}

/// Times `replace_all` with entries generated on the fly, and keeps the
/// enforcer alive until the memory was read.
fn load_palisade(n: u32) -> f64 {
    let mut nft = Nftables::new(NftConfig::default()).expect("netlink");
    let expires = Some(Timestamp::now().saturating_add(Duration::from_secs(TIMEOUT_SECS)));
    let mut entries = (0..n).map(|i| Entry {
        action: Action::Ban,
        net: Net::host(host(i).into()),
        expires,
        comment: None,
        rule: None,
        list: None,
    });
    let start = Instant::now();
    nft.replace_all(&mut entries).expect("replace_all");
    let elapsed = start.elapsed().as_secs_f64();
    std::mem::forget(nft); // counted in RSS after, like an agent holding it
    elapsed
}

/// Times `nft -f` of a file with the same layout and elements (writing the
/// file is not timed).
fn load_nft(n: u32) -> f64 {
    let path = std::env::temp_dir().join(format!("palisade-bench-{}-{n}.nft", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        writeln!(f, "table inet palisade {{").unwrap();
        for set in ["allow4", "allow6", "block4", "block6"] {
            let ty = if set.ends_with('4') {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            };
            writeln!(f, "  set {set} {{ type {ty}; flags interval,timeout; }}").unwrap();
        }
        for (chain, hook) in [("input", "input"), ("forward", "forward")] {
            writeln!(
                f,
                "  chain {chain} {{ type filter hook {hook} priority -10; policy accept; \
                 ip saddr @allow4 accept; ip6 saddr @allow6 accept; \
                 ip saddr @block4 drop; ip6 saddr @block6 drop; }}"
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
    elapsed
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

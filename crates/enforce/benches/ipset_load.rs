//! Bulk loading banned IPv4 hosts with timeouts into a `hash:ip` ipset:
//! palisade's ipset enforcer against `ipset restore` of the same elements,
//! in the same run, each side in a fresh network namespace.
//!
//! Run as root: `cargo bench -p palisade-enforce --bench ipset_load`.
//! Sizes can be chosen with `PALISADE_BENCH_SIZES=100000,1000000`, rounds
//! (the best is kept) with `PALISADE_BENCH_ROUNDS=3`.
//!
//! Both sides start from the same empty set (`ipset create bl hash:ip
//! timeout 86400 maxelem 2000000`, diswall's block list made larger) and
//! load the same hosts (every second address from 100.64.0.0 on) with the
//! same per-element timeouts. `ipset restore` reads a file written
//! beforehand; palisade's time is `apply` of the ban changes, built
//! beforehand, and `replace_all` (which fills a temporary set and swaps it
//! in) is shown too. No packet is sent anywhere.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_enforce::ipset::{IpsetConfig, IpsetEnforcer, SetConfig};
use palisade_enforce::{Change, Enforcer, Entry};
use palisade_lab::Netns;
use palisade_model::{Action, Net, Timestamp};
use palisade_netlink::{Socket, ipset};

const FIRST: u32 = 0x6440_0000; // 100.64.0.0
const SET: &str = "bl";

fn host(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FIRST + 2 * i)
}

fn timeout_of(i: u32) -> u64 {
    3600 + u64::from(i % 1000)
}

fn fresh() -> Netns {
    let ns = Netns::new();
    ns.exec(
        "ipset",
        &[
            "create", SET, "hash:ip", "timeout", "86400", "maxelem", "2000000",
        ],
    );
    ns
}

fn elements(ns: &Netns) -> u32 {
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        ipset::header(&mut sock, SET)
            .unwrap()
            .and_then(|h| h.elements)
            .unwrap_or(0)
    })
}

fn ipset_restore(n: u32) -> Duration {
    let ns = fresh();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("restore.txt");
    let mut text = String::with_capacity(n as usize * 40);
    for i in 0..n {
        text.push_str(&format!(
            "add {SET} {} timeout {}\n",
            host(i),
            timeout_of(i)
        ));
    }
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let status = ns
        .command("ipset")
        .arg("restore")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .status()
        .expect("run ipset restore");
    let took = started.elapsed();
    assert!(status.success(), "ipset restore failed");
    assert_eq!(elements(&ns), n, "ipset restore loaded everything");
    took
}

fn palisade(n: u32, replace: bool) -> Duration {
    let ns = fresh();
    let now = Timestamp::now();
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry {
            action: Action::Ban,
            net: Net::host(host(i).into()),
            expires: Some(now.saturating_add(Duration::from_secs(timeout_of(i)))),
            comment: None,
            rule: None,
            list: None,
        })
        .collect();
    let config = IpsetConfig {
        name: None,
        sets: vec![SetConfig {
            name: SET.into(),
            action: Action::Ban,
            family: None,
            only: None,
            create: None,
        }],
        filter: Default::default(),
    };
    let took = ns.run(move || {
        let mut e = IpsetEnforcer::new(config).expect("enforcer");
        // Looks the set up, outside the timing (as an agent does at start).
        e.apply(&[]).expect("find the set");
        if replace {
            let started = Instant::now();
            e.replace_all(&mut entries.into_iter())
                .expect("replace_all");
            started.elapsed()
        } else {
            let changes: Vec<Change> = entries.into_iter().map(Change::Put).collect();
            let started = Instant::now();
            e.apply(&changes).expect("apply");
            started.elapsed()
        }
    });
    assert_eq!(elements(&ns), n, "palisade loaded everything");
    took
}

fn best(rounds: usize, mut f: impl FnMut() -> Duration) -> f64 {
    (0..rounds).map(|_| f()).min().unwrap().as_secs_f64()
}

fn main() {
    if !palisade_lab::require_root_and(&["ipset"]) {
        return;
    }
    let sizes: Vec<u32> = std::env::var("PALISADE_BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().parse().expect("size"))
                .collect()
        })
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    let rounds: usize = std::env::var("PALISADE_BENCH_ROUNDS")
        .ok()
        .map(|r| r.parse().expect("rounds"))
        .unwrap_or(3);
    let version = Command::new("ipset")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "ipset_load: IPv4 hosts with timeouts into hash:ip, fresh namespace each, best of {rounds} ({version})"
    );
    println!();
    println!(
        "{:>9}  {:>19}  {:>18}  {:>21}  {:>24}",
        "hosts",
        "ipset restore (s)",
        "palisade apply (s)",
        "apply / restore",
        "palisade replace_all (s)"
    );
    for n in sizes {
        let theirs = best(rounds, || ipset_restore(n));
        let ours = best(rounds, || palisade(n, false));
        let replace = best(rounds, || palisade(n, true));
        println!(
            "{:>9}  {:>19.3}  {:>18.3}  {:>20.2}x  {:>24.3}",
            n,
            theirs,
            ours,
            ours / theirs,
            replace
        );
    }
    println!();
    println!("target: palisade within 1.2x of ipset restore (apply / restore <= 1.20)");
}

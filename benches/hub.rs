//! Hub benchmarks, run as root:
//! `cargo bench --bench hub [-- QUICK] [propagation] [ingest] [fanout] [snapshot]`
//!
//! - propagation: a report on one agent until the element is in the kernel
//!   of every other agent, 20 agents (observed through each kernel's own
//!   nftables notifications; connection killing off unless `KILL=1`, as
//!   20 servers share this machine's CPUs);
//! - ingest: reports per second the hub accepts (policy, fsync'd);
//! - fanout: one decision to 10,000 connected stream clients;
//! - snapshot: hub memory holding 1M decisions, and the time for a joining
//!   agent to apply the full snapshot (store and kernel).
//!
//! Everything runs in lab network namespaces; nothing leaves the machine.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{HUB_CONFIG, committed, observe, row, rss};
use futures_util::StreamExt;
use palisade_control::{BanRequest, Client, Request};
use palisade_lab::{Lab, LabBuilder, require_root_and, wait_until};
use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};
use palisade_wire::{Bus, Envelope, Intent, StreamItem, Token};
use support::{Agent, Hub, cli_ban};

fn main() {
    if !require_root_and(&["nft"]) {
        return;
    }
    raise_open_files(200_000);
    let args: Vec<String> = std::env::args().collect();
    // Agents and the hub log as in production (`info`), unless `LOGS` asks
    // for their debug lines.
    if !args.iter().any(|a| a == "LOGS") {
        set_test_log("info");
    }
    let quick = args.iter().any(|a| a == "QUICK");
    let parts = ["propagation", "ingest", "fanout", "snapshot"];
    let chosen: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| args.iter().any(|a| a == p))
        .collect();
    let run = |p: &str| chosen.is_empty() || chosen.contains(&p);
    if run("propagation") {
        propagation(20, if quick { 50 } else { 300 });
    }
    if run("ingest") {
        ingest(if quick { 20_000 } else { 200_000 });
    }
    if run("fanout") {
        fanout(if quick { 2_000 } else { 10_000 });
    }
    if run("snapshot") {
        snapshot(if quick { 100_000 } else { 1_000_000 });
    }
}

/// Address number `i` of a benchmark range (every other address of
/// 100.64.0.0/10, so no two are adjacent kernel elements).
fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000u32 + 2 * i as u32)
}

fn hub_lab(agents: usize) -> (Lab, Vec<String>) {
    let names: Vec<String> = (1..=agents).map(|i| format!("web{i}")).collect();
    let lab = LabBuilder::new()
        .host("hub")
        .hosts(names.iter())
        .host("clients")
        .build();
    (lab, names)
}

fn propagation(n: usize, samples: usize) {
    let (lab, names) = hub_lab(n);
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        HUB_CONFIG,
    );
    let join = hub.token("join", "bench");
    // Without `KILL=1`, the agents do not cut connections of banned
    // addresses: each would walk its socket table after every ban, work
    // that follows the kernel update on a real server (on its own thread
    // and CPU) but here takes the two CPUs that all 20 servers share.
    let config = if std::env::args().any(|a| a == "KILL=1") {
        ""
    } else {
        "[agent]\nkill_connections = false\n"
    };
    let agents: Vec<Agent> = names
        .iter()
        .map(|name| Agent::join(lab.host(name), config, &hub.url(), &join, name))
        .collect();
    let observers: Vec<_> = names[1..]
        .iter()
        .map(|name| observe(lab.host(name)))
        .collect();
    let mut client = Client::connect(&agents[0].socket()).unwrap();
    let mut slowest = Vec::with_capacity(samples);
    let mut each = Vec::with_capacity(samples * observers.len());
    for i in 0..samples {
        let a = addr(i);
        let t0 = Instant::now();
        client
            .call(&Request::Ban(BanRequest {
                targets: vec![Net::host(a.into())],
                span: Some("1h".parse().unwrap()),
                reason: None,
                rule: Some("bench/propagation".into()),
                evidence: vec![],
                actor: Some("bench".into()),
                scope: Scope::Network,
                brief: false,
                source: Source::Report,
            }))
            .unwrap();
        let times: Vec<Duration> = observers.iter().map(|rx| committed(rx, a) - t0).collect();
        slowest.push(*times.iter().max().unwrap());
        each.extend(times);
        // Reports arrive at a realistic pace, not as one burst.
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "\npropagation over the embedded hub: {samples} reports on web1, {} other agents",
        n - 1
    );
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "p50", "p99", "max");
    row("report -> in the kernel of every other agent", &mut slowest);
    row("report -> in the kernel of one other agent", &mut each);
    // `LOGS`: the hub's and the first two agents' logs, to see where the
    // time goes.
    if std::env::args().any(|a| a == "LOGS") {
        let dir = std::env::temp_dir().join("palisade-bench-logs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hub.log"), hub.log()).unwrap();
        for (name, agent) in names.iter().zip(&agents).take(2) {
            std::fs::write(dir.join(format!("{name}.log")), agent.log()).unwrap();
        }
        println!("  logs in {}", dir.display());
    }
    drop(agents);
    drop(hub);
}

fn ingest(total: usize) {
    let (lab, _) = hub_lab(0);
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        HUB_CONFIG,
    );
    let url = hub.url();
    for (batch, clients) in [(500usize, 8usize), (1, 32)] {
        let count = if batch == 1 { total / 10 } else { total };
        let tokens: Vec<Token> = (0..clients)
            .map(|c| {
                hub.token("node", &format!("reporter-{batch}-{c}"))
                    .parse()
                    .unwrap()
            })
            .collect();
        let u = url.clone();
        let offset = if batch == 1 { total } else { 0 };
        let (elapsed, accepted) = support::in_netns(lab.host("clients").ns_name(), 2, async move {
            let accepted = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (c, token) in tokens.into_iter().enumerate() {
                let link = palisade_link::HubLink::new(&u, &token).unwrap();
                let accepted = accepted.clone();
                tasks.push(tokio::spawn(async move {
                    let mine: Vec<usize> = (c..count).step_by(clients).collect();
                    let mut id = 0u64;
                    for chunk in mine.chunks(batch) {
                        let envelopes: Vec<Envelope> = chunk
                            .iter()
                            .map(|&i| {
                                id += 1;
                                Envelope {
                                    id,
                                    at: Timestamp::now(),
                                    intent: Intent::Ban {
                                        target: Net::host(addr(offset + i).into()),
                                        span: Some("1h".parse().unwrap()),
                                        rule: Some("bench/ingest".into()),
                                        reason: None,
                                        evidence: vec![format!("bench line {i}")],
                                        source: Source::Report,
                                        actor: None,
                                        list: None,
                                        unverified: false,
                                    },
                                }
                            })
                            .collect();
                        let results = link.send(&envelopes).await.unwrap();
                        accepted.fetch_add(results.len(), Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            (start.elapsed(), accepted.load(Ordering::Relaxed))
        });
        assert_eq!(accepted, count, "every report was answered");
        println!(
            "\nhub ingest, {clients} clients, {batch} report(s) per request: {count} reports in {:.2} s = {:.0} reports/s",
            elapsed.as_secs_f64(),
            count as f64 / elapsed.as_secs_f64()
        );
    }
    let status = hub.ok(&["status"]);
    println!(
        "  hub after ingest: {}",
        status.lines().nth(2).unwrap_or("").trim()
    );
    let (now, peak) = rss(hub.proc.as_ref().unwrap().pid());
    println!("  hub RSS {now:.1} MB (peak {peak:.1} MB)");
}

fn fanout(clients: usize) {
    let (lab, _) = hub_lab(0);
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        HUB_CONFIG,
    );
    let listener: Token = hub.token("node", "listeners").parse().unwrap();
    let publisher: Token = hub.token("node", "publisher").parse().unwrap();
    let url = hub.url();
    let hub_pid = hub.proc.as_ref().unwrap().pid();
    let target = Net::host(addr(7).into());
    let idle_rss = rss(hub_pid);
    let (setup, mut latencies, hub_rss) =
        support::in_netns(lab.host("clients").ns_name(), 2, async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Instant, ()>>();
            let ready = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let link = palisade_link::HubLink::new(&url, &listener).unwrap();
            let mut opening = Vec::new();
            for _ in 0..clients {
                let link = link.clone();
                let tx = tx.clone();
                let ready = ready.clone();
                opening.push(tokio::spawn(async move {
                    let mut stream = match link.follow(0).await {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("a client could not connect: {e}");
                            let _ = tx.send(Err(()));
                            return;
                        }
                    };
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(StreamItem::SnapshotEnd { .. }) => {
                                ready.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(StreamItem::Put { decision, .. }) if decision.target == target => {
                                let _ = tx.send(Ok(Instant::now()));
                                return;
                            }
                            Ok(_) => {}
                            Err(_) => {
                                let _ = tx.send(Err(()));
                                return;
                            }
                        }
                    }
                }));
                // Pace the handshakes a little so the hub's accept queue keeps up.
                if opening.len() % 200 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            while ready.load(Ordering::Relaxed) < clients {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(
                    start.elapsed() < Duration::from_secs(300),
                    "only {} of {clients} connected",
                    ready.load(Ordering::Relaxed)
                );
            }
            let setup = start.elapsed();
            let hub_rss = rss(hub_pid);
            let pubs = palisade_link::HubLink::new(&url, &publisher).unwrap();
            let t0 = Instant::now();
            pubs.send(&[cli_ban(1, target, "1h", "bench/fanout")])
                .await
                .unwrap();
            let mut latencies = Vec::with_capacity(clients);
            for _ in 0..clients {
                match rx.recv().await {
                    Some(Ok(t)) => latencies.push(t - t0),
                    _ => panic!("a stream client failed"),
                }
            }
            (setup, latencies, hub_rss)
        });
    println!(
        "\nfan-out of one decision to {clients} stream clients (connected in {:.1} s)",
        setup.as_secs_f64()
    );
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "p50", "p99", "max");
    row("decision sent -> received by a client", &mut latencies);
    println!(
        "  hub RSS with {clients} streams open: {:.1} MB (peak {:.1} MB); {:.1} MB before: {:.1} KB per stream",
        hub_rss.0,
        hub_rss.1,
        idle_rss.0,
        (hub_rss.0 - idle_rss.0) * 1024.0 / clients as f64
    );
}

/// The log filter of the palisade processes started from now on.
fn set_test_log(filter: &str) {
    // SAFETY: called between parts, while no other thread of this process
    // reads the environment.
    unsafe { std::env::set_var("PALISADE_TEST_LOG", filter) };
}

fn snapshot(total: usize) {
    // The agent's debug lines per applied batch give the breakdown below
    // (a few lines per 10,000 decisions).
    set_test_log("info,palisade_agent=debug");
    let (lab, names) = hub_lab(1);
    let mut hub = Hub::stopped(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        HUB_CONFIG,
    );
    // Fill the hub's store directly: 1M active bans of a week.
    let t = Instant::now();
    {
        // Opened as the hub opens it, so the hub starts with its indexes built.
        let store = palisade_hub::open_store(&hub.state_dir()).unwrap();
        let now = Timestamp::now();
        for chunk in (0..total).collect::<Vec<_>>().chunks(100_000) {
            store
                .write(|w| {
                    for &i in chunk {
                        let d = Decision::new(
                            Action::Ban,
                            Net::host(addr(i).into()),
                            now,
                            Span::For(Duration::from_secs(7 * 86_400)),
                            Origin::new("seed", Source::Report),
                        )
                        .with_rule("bench/snapshot")
                        .with_scope(Scope::Network);
                        w.put(&d)?;
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    let seeded = t.elapsed();
    hub.restart();
    let pid = hub.proc.as_ref().unwrap().pid();
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss(pid);
    let join = hub.token("join", "bench");
    let started = Instant::now();
    let agent = Agent::join(lab.host(&names[0]), "", &hub.url(), &join, &names[0]);
    let want = format!("bans       {total} addresses");
    // Watch the agent's log rather than asking it: each status request
    // counts its sets, work that would hold up the snapshot. The status
    // asked afterwards is answered once the last batch is in place.
    assert!(
        wait_until(Duration::from_secs(90), || agent
            .log()
            .contains("snapshot applied")
            && agent.ok(&["status"]).contains(&want)),
        "the agent did not apply the snapshot: {}\n{}",
        agent.ok(&["status"]),
        agent
            .log()
            .lines()
            .filter(|l| !l.contains("from the network"))
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .take(16)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let applied = started.elapsed();
    let log = agent.log();
    let applied_line = log
        .lines()
        .find(|l| l.contains("snapshot applied"))
        .unwrap_or("")
        .to_string();
    let after = rss(pid);
    let agent_rss = rss(agent.proc.as_ref().unwrap().pid());
    let in_kernel = common::kernel_count(lab.host(&names[0]));
    assert_eq!(in_kernel, total, "kernel elements after the snapshot");
    println!(
        "\nhub holding {total} active decisions (seeded in {:.1} s)",
        seeded.as_secs_f64()
    );
    println!("  hub RSS idle                         {:>8.1} MB", idle.0);
    println!(
        "  hub RSS after serving the snapshot   {:>8.1} MB  (peak {:.1} MB)",
        after.0, after.1
    );
    println!(
        "  agent start -> snapshot applied      {:>8.2} s   (store and kernel: {in_kernel} elements)",
        applied.as_secs_f64()
    );
    println!(
        "  agent RSS after                      {:>8.1} MB  (peak {:.1} MB)",
        agent_rss.0, agent_rss.1
    );
    println!(
        "  agent's own account: {}",
        applied_line
            .split("snapshot applied")
            .nth(1)
            .unwrap_or("")
            .trim()
    );
    // Where the agent's time went, from its debug lines per applied batch.
    let mut sums = [0.0f64; 4];
    let mut batches = 0;
    for line in log.lines().filter(|l| l.contains("applied stream items")) {
        batches += 1;
        for (i, key) in ["items=", "decide_ms=", "enforce_ms=", "store_ms="]
            .iter()
            .enumerate()
        {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<f64>().ok())
            {
                sums[i] += v;
            }
        }
    }
    println!(
        "  agent's batches: {batches} applying {} items; decide {:.2} s, kernel {:.2} s, store {:.2} s",
        sums[0],
        sums[1] / 1e3,
        sums[2] / 1e3,
        sums[3] / 1e3
    );
}

fn raise_open_files(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit with a valid struct; root may raise the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        eprintln!("warning: cannot raise the open files limit to {n}");
    }
}

//! The fleet simulator: `AGENTS=N BUS=nats|hub SERVERS=1|3 [DECISIONS=M]
//! [NATS_SERVER=path] cargo bench --bench fleet`.
//!
//! N simulated agents in this one process, each with its own connection
//! and palisade's own bus client (the code an agent follows the network's
//! decisions with), its decisions recorded in a bitmap instead of a
//! kernel.
//!
//! - `BUS=nats`: one policy worker (palisade's own) in this process too;
//!   the nats-servers are child processes on loopback.
//! - `BUS=hub`: the embedded hub (`palisade hub`, its own store) is a child
//!   process in a lab namespace, the agents' connections come from another
//!   (as root); each agent has its own TLS connection and stream. The storm
//!   kills the hub (SIGKILL) and starts it again on the same store.
//!   `SERVERS` does not apply, and no JetStream exists (0 consumers).
//!
//! It prints:
//!
//! - the time until all N hold the full state (DECISIONS decisions, a
//!   snapshot and the changes after it);
//! - one decision to all N: p50, p99, max (from the operator's send to the
//!   agent's receipt), over a few decisions;
//! - a reconnect storm: a server is killed and started again, a decision
//!   is made at once, and the time until all N hold it;
//! - the servers' RSS and CPU time per phase, and the JetStream consumers
//!   before, during (the most seen) and after;
//! - the peer: a plain core-NATS message of a change's size to as many
//!   plain subscribers in this process (what any fan-out over this server
//!   and this client process costs), and palisade's p99 as a ratio of it;
//!
//! and ends with `fleet: AGENTS=N p99=X ms storm=Y s consumers_after=Z`,
//! Z counting the consumers beyond the policy worker's own bucket watches.
//!
//! Everything runs on loopback. The machine it runs on is usually shared:
//! pin it (`taskset -c 0,1`) and say so with the figures.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palisade_lab::Proc;
use palisade_model::Net;
use palisade_nats::{NatsBus, NatsOptions, WorkerOptions};
use palisade_wire::{Bus, Envelope, Role, StreamItem, Token};

/// The simulated fleet's decisions are addresses of 198.18.0.0/15 (data
/// only: nothing is ever sent to them).
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// How many single decisions are timed to all agents.
const PROBES: u32 = 5;
/// Most time any phase may take before the run gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `RUST_LOG=palisade_nats=debug` shows what the worker and the agents'
    // clients do.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let agents = env("AGENTS", 1000);
    let decisions = env("DECISIONS", 10_000).min(100_000) as u32;
    let servers = env("SERVERS", 1).clamp(1, 3);
    let bus = std::env::var("BUS").unwrap_or_else(|_| "nats".into());
    match bus.as_str() {
        "nats" => {}
        "hub" => return run_hub(agents, decisions),
        other => {
            eprintln!("BUS={other}: the simulator drives `nats` or `hub`");
            std::process::exit(2);
        }
    }
    let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| {
        let current = "/opt/palisade-test/venv/bin/nats-server";
        if std::path::Path::new(current).exists() {
            current.into()
        } else {
            "/usr/sbin/nats-server".into()
        }
    });
    raise_open_files(agents as u64 * 2 + 10_000);
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "fleet simulator: AGENTS={agents} BUS=nats SERVERS={servers} DECISIONS={decisions} ({version})"
    );
    let mut cluster = Cluster::start(&bin, servers);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&mut cluster, agents, decisions));
}

/// The nats-servers, on loopback ports from a per-run base.
struct Cluster {
    bin: String,
    procs: Vec<Option<Proc>>,
    dirs: Vec<tempfile::TempDir>,
    /// Client and cluster port of each server.
    ports: Vec<(u16, u16)>,
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Cluster {
    fn start(bin: &str, n: usize) -> Cluster {
        let mut c = Cluster {
            bin: bin.to_string(),
            procs: Vec::new(),
            dirs: Vec::new(),
            ports: (0..n).map(|_| (free_port(), free_port())).collect(),
        };
        for i in 0..n {
            c.dirs.push(tempfile::tempdir().unwrap());
            c.procs.push(None);
            c.spawn(i);
        }
        c
    }

    /// Servers in the cluster (all of them have their ports from the start,
    /// while they are started one by one).
    fn n(&self) -> usize {
        self.ports.len()
    }

    fn port(&self, i: usize) -> u16 {
        self.ports[i].0
    }

    fn cluster_port(&self, i: usize) -> u16 {
        self.ports[i].1
    }

    fn spawn(&mut self, i: usize) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port(i).to_string()])
            .args(["-n", &format!("n{i}"), "-js", "-sd"])
            .arg(self.dirs[i].path())
            // Monitoring off; no per-connection limits beyond the defaults.
            .args(["-m", "0"]);
        if self.n() > 1 {
            let routes: Vec<String> = (0..self.n())
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", self.cluster_port(j)))
                .collect();
            cmd.args(["--cluster_name", "fleet"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port(i)),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        let proc = Proc::spawn(cmd).expect("start nats-server");
        assert!(
            proc.wait_for_stderr("Server is ready", Duration::from_secs(20)),
            "nats-server did not start:\n{}",
            proc.describe()
        );
        self.procs[i] = Some(proc);
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            p.signal(libc::SIGKILL);
            drop(p);
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().flatten().map(|p| p.pid()).collect()
    }

    /// Total RSS of the servers, MB.
    fn rss(&self) -> f64 {
        self.pids().iter().map(|p| proc_field(*p, "VmRSS:")).sum()
    }

    /// Total CPU seconds used by the servers running now.
    fn cpu(&self) -> f64 {
        self.pids().iter().map(|p| cpu_seconds(*p)).sum()
    }

    /// CPU seconds used by server `i` (0 when it is not running).
    fn cpu_of(&self, i: usize) -> f64 {
        self.procs[i].as_ref().map_or(0.0, |p| cpu_seconds(p.pid()))
    }

    /// Highest RSS any server reached, MB.
    fn peak_rss(&self) -> f64 {
        self.pids()
            .iter()
            .map(|p| proc_field(*p, "VmHWM:"))
            .fold(0.0, f64::max)
    }

    /// Server addresses, rotated by `k` so agents spread over the servers.
    fn servers(&self, k: usize) -> Vec<String> {
        (0..self.n())
            .map(|j| format!("127.0.0.1:{}", self.port((j + k) % self.n())))
            .collect()
    }
}

fn proc_field(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn options(cluster: &Cluster, k: usize) -> NatsOptions {
    let mut o = NatsOptions::from_url("nats://127.0.0.1:4222").unwrap();
    o.servers = cluster.servers(k);
    o.bucket_prefix = "fleet".into();
    o.replicas = cluster.n();
    o
}

fn target(i: u32) -> Net {
    Net::host(Ipv4Addr::from(BASE + i).into())
}

fn ban(id: u64, i: u32) -> Envelope {
    support::cli_ban(id, target(i), "1d", "fleet")
}

/// What the simulated agents share with the run.
struct Fleet {
    decisions: u32,
    /// Agents holding the full state.
    full: AtomicUsize,
    /// The decision being timed: its index and when it was sent.
    probe: Mutex<Option<(u32, Instant)>>,
    /// How many agents hold the current probe.
    got_probe: AtomicUsize,
    latencies: Mutex<Vec<Duration>>,
}

impl Fleet {
    fn new(decisions: u32) -> Fleet {
        Fleet {
            decisions,
            full: AtomicUsize::new(0),
            probe: Mutex::new(None),
            got_probe: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
        }
    }
}

/// Waits until all `agents` hold the full state; returns how long it took.
async fn all_full(fleet: &Fleet, agents: usize) -> Duration {
    wait_for(
        "join",
        || fleet.full.load(Ordering::Relaxed) >= agents,
        || {
            format!(
                "{} of {agents} hold the full state",
                fleet.full.load(Ordering::Relaxed)
            )
        },
    )
    .await
}

/// One simulated agent: follows the bus like an agent (from its cursor,
/// again after every stop) and records what it would enforce.
async fn agent<B: Bus>(bus: B, fleet: Arc<Fleet>) {
    let words = (fleet.decisions as usize + 64 + PROBES as usize * 4).div_ceil(64);
    let mut held = vec![0u64; words];
    let mut count = 0u32;
    let mut cursor = 0u64;
    let mut full = false;
    let mut in_snapshot = false;
    let mut retry = Duration::from_millis(200);
    loop {
        let mut stream = match bus.follow(cursor).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(palisade_nats::jitter::spread(retry)).await;
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        while let Some(item) = stream.next().await {
            let Ok(item) = item else { break };
            match &item {
                StreamItem::Snapshot { .. } => {
                    in_snapshot = true;
                    held.iter_mut().for_each(|w| *w = 0);
                    count = 0;
                }
                StreamItem::SnapshotEnd { seq } => {
                    in_snapshot = false;
                    cursor = *seq;
                }
                StreamItem::Put { seq, decision } => {
                    if !in_snapshot {
                        cursor = *seq;
                    }
                    if let std::net::IpAddr::V4(addr) = decision.target.addr() {
                        let i = u32::from(addr).wrapping_sub(BASE) as usize;
                        if i / 64 < held.len() && held[i / 64] & (1 << (i % 64)) == 0 {
                            held[i / 64] |= 1 << (i % 64);
                            count += 1;
                            // Probes come after the seeded decisions: the
                            // snapshot's entries pass without the lock.
                            let probe = if i >= fleet.decisions as usize {
                                *fleet.probe.lock().unwrap()
                            } else {
                                None
                            };
                            if let Some((p, sent)) = probe
                                && p as usize == i
                            {
                                fleet.latencies.lock().unwrap().push(sent.elapsed());
                                fleet.got_probe.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                StreamItem::Remove { seq, .. } => cursor = *seq,
                StreamItem::Ping { .. } => {}
            }
            if !full && !in_snapshot && count >= fleet.decisions {
                full = true;
                fleet.full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Consumers on the decisions bucket's stream, as the server counts them.
async fn consumers(client: &async_nats::Client) -> Option<u64> {
    let info = client
        .request("$JS.API.STREAM.INFO.KV_fleet_decisions", "".into())
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&info.payload).ok()?;
    v["state"]["consumer_count"].as_u64()
}

async fn wait_for(what: &str, done: impl Fn() -> bool, progress: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    let mut last_print = Instant::now();
    while !done() {
        if start.elapsed() > PHASE_LIMIT {
            println!("  {what}: gave up after {PHASE_LIMIT:?} ({})", progress());
            return start.elapsed();
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  … {what}: {}", progress());
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn run(cluster: &mut Cluster, agents: usize, decisions: u32) {
    // The policy worker.
    let stop = Arc::new(tokio::sync::Notify::new());
    let worker = {
        let options = WorkerOptions {
            nats: options(cluster, 0),
            policy: Default::default(),
            allows: Vec::new(),
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            palisade_nats::run_worker(options, async move { stop.notified().await })
                .await
                .expect("the policy worker runs");
        })
    };
    let mut operator_options = options(cluster, 0);
    operator_options.role = Role::Operator;
    let operator = NatsBus::new(operator_options, "operator", None);
    let mut id = 0u64;
    seed(&operator, decisions, &mut id).await;
    let probe_client = async_nats::connect(format!("nats://{}", cluster.servers(0)[0]))
        .await
        .unwrap();
    // The snapshot the agents will share, once the worker has written it.
    let o = options(cluster, 0);
    let snapshot_wait = Instant::now();
    let head = loop {
        if let Ok(Some(h)) = palisade_nats::snapshot::head(&probe_client, &o).await
            && h.decisions >= decisions as u64
        {
            break h;
        }
        assert!(
            snapshot_wait.elapsed() < Duration::from_secs(60),
            "no snapshot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "  snapshot: revision {}, {} decisions in {} parts",
        head.rev, head.decisions, head.parts
    );
    let before = consumers(&probe_client).await.unwrap_or(0);
    let max_consumers = Arc::new(AtomicU64::new(before));
    let sampling = {
        let client = probe_client.clone();
        let max = max_consumers.clone();
        tokio::spawn(async move {
            loop {
                if let Some(c) = consumers(&client).await {
                    max.fetch_max(c, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // Join: all agents at once.
    let fleet = Arc::new(Fleet::new(decisions));
    let cpu0 = cluster.cpu();
    let mut tasks = Vec::with_capacity(agents);
    for k in 0..agents {
        let bus = NatsBus::new(options(cluster, k), &format!("sim{k}"), None);
        tasks.push(tokio::spawn(agent(bus, fleet.clone())));
    }
    let join = all_full(&fleet, agents).await;
    let cpu_join = cluster.cpu() - cpu0;
    println!(
        "  time to full state: {:.2} s for {agents} agents ({} decisions each); servers: {:.1} CPU s, RSS {:.0} MB (peak {:.0} MB)",
        join.as_secs_f64(),
        decisions,
        cpu_join,
        cluster.rss(),
        cluster.peak_rss()
    );

    // One decision to all, a few times.
    let p99 = time_probes(&operator, &fleet, agents, &mut id, "servers", || {
        cluster.cpu()
    })
    .await;

    // The storm: the first server (every agent's first choice rotates,
    // but with one server it is everyone's) is killed and started again,
    // and a decision is made at once.
    // CPU of the killed server is lost with it: count the others' and
    // the restarted one's.
    let cpu0 = cluster.cpu() - cluster.cpu_of(0);
    cluster.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    cluster.spawn(0);
    all_current(&operator, &fleet, agents, &mut id).await;
    let storm = restarted.elapsed();
    println!(
        "  reconnect storm: all {agents} current {:.2} s after the server restarted; servers {:.1} CPU s, RSS {:.0} MB",
        storm.as_secs_f64(),
        cluster.cpu() - cpu0,
        cluster.rss()
    );
    // What remains once the server has dropped the consumers of watches
    // made before the restart (the worker watches again after one).
    let probe_client = async_nats::connect(format!("nats://{}", cluster.servers(0)[0]))
        .await
        .unwrap();
    let settling = Instant::now();
    let mut after = consumers(&probe_client).await.unwrap_or(0);
    while after > before && settling.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = consumers(&probe_client).await.unwrap_or(after);
    }
    sampling.abort();
    println!(
        "  JetStream consumers on the decisions stream: before the agents {before} (the worker's watch), most during {}, after {after} ({:.0} s after the storm)",
        max_consumers.load(Ordering::Relaxed),
        settling.elapsed().as_secs_f64()
    );
    // The peer: the same fan-out with nothing of palisade's, a plain
    // message of a change's size to as many plain subscribers, one
    // connection each, in this same process.
    for t in tasks {
        t.abort();
    }
    stop.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut peer = peer_fanout(cluster, agents).await;
    peer.sort();
    let pq = |f: f64| peer[((peer.len() as f64 * f).ceil() as usize).clamp(1, peer.len()) - 1];
    println!(
        "  peer: a plain {PEER_BYTES}-byte core-NATS message -> {agents} plain subscribers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; palisade's p99 is {:.2}x the peer's",
        ms(pq(0.5)),
        ms(pq(0.99)),
        ms(*peer.last().unwrap()),
        ms(p99) / ms(pq(0.99)).max(0.001)
    );
    println!(
        "fleet: AGENTS={agents} p99={:.0} ms storm={:.1} s consumers_after={}",
        ms(p99),
        storm.as_secs_f64(),
        after.saturating_sub(before)
    );
}

/// Sends `envelopes` until the bus takes them (through a restart too).
async fn send_until_taken<B: Bus>(bus: &B, envelopes: &[Envelope]) {
    loop {
        match bus.send(envelopes).await {
            Ok(_) => return,
            Err(e) => {
                eprintln!("  (sending again: {e})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Bans the fleet's first `decisions` addresses, 500 per send.
async fn seed<B: Bus>(bus: &B, decisions: u32, id: &mut u64) {
    let seeded = Instant::now();
    for chunk in (0..decisions).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Envelope> = chunk
            .iter()
            .map(|i| {
                *id += 1;
                ban(*id, *i)
            })
            .collect();
        send_until_taken(bus, &batch).await;
    }
    println!(
        "  seeded {decisions} decisions in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
}

/// Times [`PROBES`] single decisions, each until every agent holds it,
/// and prints the receipts' delays after the send and what the probes cost
/// the servers (`who`, whose CPU seconds `cpu` reads); returns the p99.
async fn time_probes<B: Bus>(
    bus: &B,
    fleet: &Fleet,
    agents: usize,
    id: &mut u64,
    who: &str,
    cpu: impl Fn() -> f64,
) -> Duration {
    let cpu0 = cpu();
    for p in 0..PROBES {
        let i = fleet.decisions + p;
        fleet.got_probe.store(0, Ordering::Relaxed);
        *fleet.probe.lock().unwrap() = Some((i, Instant::now()));
        *id += 1;
        send_until_taken(bus, &[ban(*id, i)]).await;
        wait_for(
            "one decision",
            || fleet.got_probe.load(Ordering::Relaxed) >= agents,
            || format!("{} of {agents}", fleet.got_probe.load(Ordering::Relaxed)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut lat = std::mem::take(&mut *fleet.latencies.lock().unwrap());
    lat.sort();
    let p99 = quantile(&lat, 0.99);
    println!(
        "  one decision -> all {agents}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} receipts); {who} {:.2} CPU s for {PROBES} decisions",
        ms(quantile(&lat, 0.5)),
        ms(p99),
        ms(*lat.last().unwrap()),
        lat.len(),
        cpu() - cpu0
    );
    p99
}

/// The `f` quantile of sorted `samples`.
fn quantile(samples: &[Duration], f: f64) -> Duration {
    samples[((samples.len() as f64 * f).ceil() as usize).clamp(1, samples.len()) - 1]
}

/// Makes one more decision at once and waits until every agent holds it
/// (after a restart: until all are current again).
async fn all_current<B: Bus>(bus: &B, fleet: &Fleet, agents: usize, id: &mut u64) {
    let i = fleet.decisions + PROBES;
    fleet.got_probe.store(0, Ordering::Relaxed);
    *fleet.probe.lock().unwrap() = Some((i, Instant::now()));
    *id += 1;
    send_until_taken(bus, &[ban(*id, i)]).await;
    let _ = wait_for(
        "storm",
        || fleet.got_probe.load(Ordering::Relaxed) >= agents,
        || {
            format!(
                "{} of {agents} current",
                fleet.got_probe.load(Ordering::Relaxed)
            )
        },
    )
    .await;
}

/// `BUS=hub`: the same phases against the embedded hub.
fn run_hub(agents: usize, decisions: u32) {
    if !palisade_lab::require_root_and(&["ip"]) {
        return;
    }
    raise_open_files(agents as u64 * 2 + 10_000);
    let lab = palisade_lab::LabBuilder::new()
        .host("hub")
        .host("clients")
        .build();
    let listen = format!("{}:7470", lab.host("hub").v4());
    // Production logging (`info`), not the tests' debug default: a debug
    // line per streamed event would be the hub's main work here.
    if std::env::var_os("PALISADE_TEST_LOG").is_none() {
        // SAFETY: no other thread of this process runs yet.
        unsafe { std::env::set_var("PALISADE_TEST_LOG", "info") };
    }
    let hub = support::Hub::start(lab.host("hub"), &listen, common::HUB_CONFIG);
    println!(
        "fleet simulator: AGENTS={agents} BUS=hub DECISIONS={decisions} (palisade hub, embedded store)"
    );
    let clients = lab.host("clients").ns_name().to_string();
    let hub = support::in_netns(&clients, 2, hub_phases(hub, agents, decisions));
    drop(hub);
}

async fn hub_phases(mut hub: support::Hub, agents: usize, decisions: u32) -> support::Hub {
    let url = hub.url();
    let listener: Token = hub.token("node", "fleet").parse().unwrap();
    let operator: Token = hub.token("node", "operator").parse().unwrap();
    let operator = palisade_link::HubLink::new(&url, &operator).unwrap();
    let pid = |hub: &support::Hub| hub.proc.as_ref().unwrap().pid();
    let mut id = 0u64;
    seed(&operator, decisions, &mut id).await;
    let fleet = Arc::new(Fleet::new(decisions));
    let cpu0 = cpu_seconds(pid(&hub));
    let link = palisade_link::HubLink::new(&url, &listener).unwrap();
    let mut tasks = Vec::with_capacity(agents);
    for _ in 0..agents {
        tasks.push(tokio::spawn(agent(link.clone(), fleet.clone())));
    }
    let join = all_full(&fleet, agents).await;
    let (rss, peak) = common::rss(pid(&hub));
    println!(
        "  time to full state: {:.2} s for {agents} agents ({} decisions each); hub: {:.1} CPU s, RSS {rss:.0} MB (peak {peak:.0} MB)",
        join.as_secs_f64(),
        decisions,
        cpu_seconds(pid(&hub)) - cpu0,
    );
    let p99 = time_probes(&operator, &fleet, agents, &mut id, "hub", || {
        cpu_seconds(pid(&hub))
    })
    .await;
    // The storm: the hub dies without warning and starts again on its store.
    tokio::task::block_in_place(|| hub.kill9());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| hub.restart());
    let cpu0 = cpu_seconds(pid(&hub));
    all_current(&operator, &fleet, agents, &mut id).await;
    let storm = restarted.elapsed();
    let (rss, _) = common::rss(pid(&hub));
    println!(
        "  reconnect storm: all {agents} current {:.2} s after the hub restarted; hub {:.1} CPU s, RSS {rss:.0} MB",
        storm.as_secs_f64(),
        cpu_seconds(pid(&hub)) - cpu0,
    );
    for t in tasks {
        t.abort();
    }
    println!(
        "fleet: AGENTS={agents} p99={:.0} ms storm={:.1} s consumers_after=0",
        ms(p99),
        storm.as_secs_f64()
    );
    hub
}

/// About the size of a republished change (headers and a decision).
const PEER_BYTES: usize = 600;

/// One plain message to `n` plain subscribers, [`PROBES`] times: each
/// receipt's delay after the send.
async fn peer_fanout(cluster: &Cluster, n: usize) -> Vec<Duration> {
    let sent = Arc::new(Mutex::new(Instant::now()));
    let got = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n * PROBES as usize)));
    let mut clients = Vec::with_capacity(n);
    for k in 0..n {
        let server = format!("nats://{}", cluster.servers(k)[0]);
        let client = loop {
            match async_nats::connect(&server).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut sub = client.subscribe("fleet.peer").await.unwrap();
        let (sent, got, latencies) = (sent.clone(), got.clone(), latencies.clone());
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                let at = *sent.lock().unwrap();
                latencies.lock().unwrap().push(at.elapsed());
                got.fetch_add(1, Ordering::Relaxed);
            }
        });
        clients.push(client);
    }
    for c in &clients {
        let _ = c.flush().await;
    }
    let publisher = async_nats::connect(format!("nats://{}", cluster.servers(0)[0]))
        .await
        .unwrap();
    for p in 1..=PROBES as usize {
        *sent.lock().unwrap() = Instant::now();
        publisher
            .publish("fleet.peer", vec![b'x'; PEER_BYTES].into())
            .await
            .unwrap();
        let _ = publisher.flush().await;
        wait_for(
            "peer",
            || got.load(Ordering::Relaxed) >= n * p,
            || format!("{} of {n}", got.load(Ordering::Relaxed) - n * (p - 1)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::mem::take(&mut *latencies.lock().unwrap())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raise_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct; root may raise
    // the hard limit where the container lets it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur >= n {
            return;
        }
        lim.rlim_cur = n;
        lim.rlim_max = lim.rlim_max.max(n);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!("warning: cannot raise the open files limit to {n}");
        }
    }
}

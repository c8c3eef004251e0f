//! Agent benchmarks, run as root: `cargo bench --bench agent [-- QUICK] [latency|memory]`.
//!
//! 1. Ban latency: how long from a ban request until the element is in the
//!    kernel, observed independently through an nftables netlink monitor
//!    (the kernel's own notification of the committed element), and until
//!    `palisade ban` returns (the CLI as a process, and the control call).
//! 2. Agent memory and load time with 1M banned addresses: bulk load through
//!    the control socket, RSS while holding them, restart (store -> kernel).
//!
//! Each run builds its own network namespace; nothing leaves the machine.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_control::{BanRequest, Client, Request, Response};
use palisade_lab::{Netns, Proc, require_root_and};
use palisade_model::{Net, Scope};

mod common;
use common::{committed, kernel_count, observe, row, rss};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn main() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let quick = std::env::args().any(|a| a == "QUICK");
    let (samples, cli_samples, bulk) = if quick {
        (200, 50, 100_000)
    } else {
        (2000, 300, 1_000_000)
    };
    // `-- latency` or `-- memory` runs one part only.
    let only = |part: &str| {
        !std::env::args().any(|a| a == "latency" || a == "memory")
            || std::env::args().any(|a| a == part)
    };
    if only("latency") {
        latency(samples, cli_samples);
    }
    if only("memory") {
        if let Some(secs) = std::env::var("BENCH_PAUSE")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            std::thread::sleep(Duration::from_secs(secs));
        }
        memory(bulk);
    }
}

struct Agent {
    ns: Netns,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let ns = Netns::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), "").unwrap();
        let mut a = Agent {
            ns,
            proc: None,
            dir,
        };
        a.launch();
        a
    }

    fn launch(&mut self) -> Duration {
        let t = Instant::now();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns.name(),
            BIN,
            "agent",
            "--local-only",
            "--config",
        ])
        .arg(self.dir.path().join("p.toml"))
        .arg("--state-dir")
        .arg(self.dir.path().join("state"))
        .arg("--socket")
        .arg(self.socket())
        .env("PALISADE_LOG", "warn,palisade_agent=info");
        let p = Proc::spawn(cmd).unwrap();
        assert!(
            p.wait_for_stderr("palisade agent running", Duration::from_secs(300)),
            "{}",
            p.describe()
        );
        self.proc = Some(p);
        t.elapsed()
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("palisade.sock")
    }

    fn pid(&self) -> u32 {
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        self.proc.as_ref().unwrap().pid()
    }
}

fn ban_request(targets: Vec<Net>) -> Request {
    Request::Ban(BanRequest {
        targets,
        span: Some("1h".parse().unwrap()),
        reason: None,
        rule: None,
        evidence: vec![],
        actor: Some("bench".into()),
        scope: Scope::Local,
        brief: true,
        source: palisade_model::Source::Cli,
    })
}

fn latency(samples: usize, cli_samples: usize) {
    let agent = Agent::start();
    // The observer: a netlink socket in the agent's namespace subscribed to
    // nftables notifications, timestamping every committed NEWSETELEM.
    let rx = observe(&agent.ns);

    let mut client = Client::connect(&agent.socket()).unwrap();
    let mut to_kernel = Vec::with_capacity(samples);
    let mut to_reply = Vec::with_capacity(samples);
    let mut seen_first = 0;
    for i in 0..samples {
        let addr = Ipv4Addr::from(0xC633_6400u32 + 2 * i as u32); // 198.51.100.0 onward
        let t0 = Instant::now();
        let r = client
            .call(&ban_request(vec![Net::host(addr.into())]))
            .unwrap();
        let t_reply = Instant::now();
        assert!(matches!(r, Response::Outcomes { .. }));
        let t_kernel = committed(&rx, addr);
        if t_kernel <= t_reply {
            seen_first += 1;
        }
        to_kernel.push(t_kernel - t0);
        to_reply.push(t_reply - t0);
    }
    let mut cli = Vec::with_capacity(cli_samples);
    for i in 0..cli_samples {
        let addr = Ipv4Addr::from(0xCB00_7100u32 + 2 * i as u32).to_string(); // 203.0.113.0 onward
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(agent.socket())
            .args(["ban", &addr, "--for", "1h"])
            .output()
            .unwrap();
        let t1 = Instant::now();
        assert!(out.status.success());
        let t_kernel = committed(&rx, addr.parse().unwrap());
        if t_kernel <= t1 {
            seen_first += 1;
        }
        cli.push(t1 - t0);
    }
    println!(
        "\nban latency ({samples} sequential bans, one address each, agent with fsync per ban)"
    );
    println!("  {:<44} {:>9} {:>9} {:>9}", "", "p50", "p99", "max");
    row(
        "request sent -> element in kernel (observed)",
        &mut to_kernel,
    );
    row("request sent -> `ban` answered (durable)", &mut to_reply);
    row(
        &format!("`palisade ban` process, {cli_samples} runs"),
        &mut cli,
    );
    println!(
        "  the observer saw the element before the ban returned in {seen_first} of {} cases",
        samples + cli_samples
    );
    println!("  (the agent commits to the kernel before it answers; the observer timestamps");
    println!("   notifications when it wakes up, so its figures are an upper bound)");
}

fn memory(total: usize) {
    let mut agent = Agent::start();
    let idle = rss(agent.pid());
    let mut client = Client::connect(&agent.socket()).unwrap();
    let chunk = 50_000;
    let t = Instant::now();
    let mut next = 0u32;
    while (next as usize) < total {
        let n = chunk.min(total - next as usize) as u32;
        // Spread over 100.64.0.0/10 onward, every other address, so no two
        // bans are adjacent (each is its own kernel element).
        let targets = (next..next + n)
            .map(|i| Net::host(Ipv4Addr::from(0x6440_0000u32 + 2 * i).into()))
            .collect();
        match client.call(&ban_request(targets)).unwrap() {
            Response::Outcomes { summary, .. } => assert_eq!(summary.added, n as u64),
            other => panic!("{other:?}"),
        }
        next += n;
    }
    let load = t.elapsed();
    let loaded = rss(agent.pid());
    let elements = kernel_count(&agent.ns);
    assert_eq!(elements, total, "kernel elements");
    drop(client);

    agent.proc.take().unwrap().stop();
    let restart = agent.launch();
    let after = rss(agent.pid());
    let log = agent.proc.as_ref().unwrap().stderr();
    let reconciled = log
        .lines()
        .find(|l| l.contains("reconciled"))
        .map(|l| {
            l.split("reconciled")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    assert_eq!(kernel_count(&agent.ns), total);

    println!(
        "\nagent holding {total} banned addresses (in {}-address requests)",
        chunk
    );
    println!(
        "  load through the control socket      {:>8.2} s  ({:.0} bans/s, store + kernel)",
        load.as_secs_f64(),
        total as f64 / load.as_secs_f64()
    );
    println!(
        "  restart (store -> kernel, one txn)   {:>8.2} s",
        restart.as_secs_f64()
    );
    println!("  agent's own account of the restart:  {reconciled}");
    println!("  RSS idle (empty)                     {:>8.1} MB", idle.0);
    println!(
        "  RSS after loading                    {:>8.1} MB  (peak {:.1} MB)",
        loaded.0, loaded.1
    );
    println!(
        "  RSS after restart, holding them      {:>8.1} MB  (peak {:.1} MB)",
        after.0, after.1
    );
}

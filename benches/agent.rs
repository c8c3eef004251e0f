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
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palisade_control::{BanRequest, Client, Request, Response};
use palisade_lab::{Netns, Proc, require_root_and};
use palisade_model::{Net, Scope};

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
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns_name = agent.ns.name().to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{ns_name}")).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        unsafe {
            use std::os::fd::AsRawFd;
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), 0);
        }
        monitor(tx, ready_tx);
    });
    ready_rx.recv().unwrap();

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

/// When the kernel announced the element `addr`: the first notification
/// whose attributes hold the 4-byte key (an NFTA_DATA_VALUE of length 8).
/// Other notifications (the interval's end element, earlier bans) are
/// skipped.
fn committed(rx: &mpsc::Receiver<(Instant, Vec<u8>)>, addr: Ipv4Addr) -> Instant {
    let mut key = vec![8, 0, 1, 0];
    key.extend_from_slice(&addr.octets());
    loop {
        let (t, msg) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("kernel notification");
        if msg.windows(key.len()).any(|w| w == key.as_slice()) {
            return t;
        }
    }
}

fn row(label: &str, v: &mut [Duration]) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "  {:<44} {:>7.3}ms {:>7.3}ms {:>7.3}ms",
        label,
        ms(p(0.50)),
        ms(p(0.99)),
        ms(*v.last().unwrap())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Subscribes to NFNLGRP_NFTABLES and sends every NEWSETELEM notification
/// with its arrival time.
fn monitor(tx: mpsc::Sender<(Instant, Vec<u8>)>, ready: mpsc::Sender<()>) {
    const NFNLGRP_NFTABLES: libc::c_int = 7;
    const NFT_MSG_NEWSETELEM: u16 = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    // SAFETY: plain socket calls with valid arguments; the buffer outlives recv.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        );
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        assert_eq!(
            libc::bind(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&sa) as u32
            ),
            0
        );
        let g = NFNLGRP_NFTABLES;
        assert_eq!(
            libc::setsockopt(
                fd,
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                &g as *const _ as *const libc::c_void,
                4
            ),
            0
        );
        let big: libc::c_int = 64 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &big as *const _ as *const libc::c_void,
            4,
        );
        ready.send(()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            let now = Instant::now();
            if n <= 0 {
                return;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if len < 16 || off + len > n as usize {
                    break;
                }
                if ty == (NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM)
                    && tx.send((now, buf[off..off + len].to_vec())).is_err()
                {
                    return;
                }
                off += (len + 3) & !3;
            }
        }
    }
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

/// (VmRSS, VmHWM) in MB.
fn rss(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Elements in block4, counted from `nft -j` (an independent observer).
fn kernel_count(ns: &Netns) -> usize {
    let out = ns.output("nft", &["-j", "list", "set", "inet", "palisade", "block4"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("set"))
        .and_then(|s| s["elem"].as_array().map(|a| a.len()))
        .unwrap_or(0)
}

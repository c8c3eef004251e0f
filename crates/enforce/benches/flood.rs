//! A flood from banned sources against six ways of dropping it and two
//! references, in one run:
//!
//! - `prerouting`: palisade's table as it is by default (drop at raw
//!   priority, before conntrack);
//! - `xdp`: the same with `xdp_devices = ["eth0"]` (palisade's XDP drop in
//!   the victim's driver, before the kernel builds a socket buffer; its
//!   maps a copy of the same 1M bans);
//! - `ingress`: the same with `ingress_devices = ["eth0"]` (drop at the
//!   interface's ingress hook, before IP processing);
//! - `input`: the same table and sets in the earlier layout (drop in
//!   input and forward chains at -10, after conntrack);
//! - `ipset`: a `hash:ip` set and `iptables -I INPUT -m set --match-set
//!   SET src -j DROP` (CrowdSec's bouncer, diswall);
//! - `fail2ban`: a `f2b-` chain of 1,000 `-s ADDR -j REJECT
//!   --reject-with icmp-port-unreachable` rules jumped to from INPUT
//!   (fail2ban's default iptables action, all ports);
//! - `hook`: no palisade, but a chain on the same hook at the same priority
//!   as `prerouting` with one rule, `ip saddr 198.19.0.0/16 drop`: no set,
//!   no lookup. Nothing dropped on that hook can cost less, so this row
//!   splits the prerouting layout's cost into the kernel's path to the
//!   hook and palisade's rules.
//! - `floor`: no firewall at all, but an XDP program on the victim's eth0
//!   that drops every IPv4 packet from 198.19.0.0/16 by comparing two
//!   bytes, before the kernel builds anything for it. No layout can drop
//!   for less in this lab, so this row is its physical limit: what the
//!   veth and the receive path cost before any firewall runs. (It is not
//!   a layout palisade offers: it looks nothing up and never expires.
//!   `xdp` minus `floor` is what palisade's lookups cost.)
//!
//! The nftables and ipset layouts hold 1M bans (the 10,000 flood sources
//! among them); fail2ban holds 1,000 rules, so its flood comes from those
//! 1,000 addresses. The victim's own firewall tracks connections (`ct state
//! established,related accept`), as a server's does, so conntrack is on.
//!
//! The attacker namespace floods the victim over a veth with 64-byte frames
//! (TCP SYN, then UDP) from 10,000 spoofed sources in 198.19.0.0/18. By
//! default the kernel makes the flood (`FLOOD_SENDER=kernel`): an XDP
//! program run by `BPF_PROG_TEST_RUN` in live-frame mode, the kernel's
//! packet generator since pktgen (which this kernel lacks), pinned to
//! `TX_CPU` at real-time priority 1. It offers several times what any
//! layout can drop, so every layout runs flat out and the packets dropped
//! per second are what that layout can take on one core. Its frames reach
//! the victim's side of the veth as pages, around which the victim builds
//! its own socket buffers, as a NIC's driver does. One cost of the lab
//! remains: each page goes back to the generator's pool on the other core,
//! through a ring whose lock the generator takes too (for the frames the
//! full receive ring refused). It weighs most on the layouts that drop
//! fastest: `perf record -C 0` found 30% of the receive core's time in that
//! return (`page_pool_put_unrefed_netmem` and the ring's lock) with
//! `prerouting`, 10% with `input`. So the ratios between layouts understate
//! what a NIC would show, whose driver recycles its pages on its own core.
//! (Sending less than a layout can take, by dropping a share of the frames
//! in the generator, did not take that cost away and made each wake-up of
//! the receive path handle fewer packets.) `FLOOD_SENDER=packet` sends
//! from user space instead, with an AF_PACKET socket (`sendmmsg`, qdisc
//! bypass): the victim then gets buffers built on the sending core and
//! charged to its socket, and the sender, not the victim, sets the rate of
//! the cheaper layouts (see `rx busy`).
//!
//! The victim's receive path (what the softirq of a real NIC would do)
//! runs in a threaded NAPI instance pinned to `RX_CPU`, also at real-time
//! priority 1 (so that, like softirq work, it preempts ordinary tasks),
//! and that thread's CPU time is the cost of handling the flood (`ethtool`
//! turns on veth's NAPI). Like a NIC's interrupt coalescing, NAPI deferral
//! (`RX_COALESCE_US`) lets one wake-up of the receive path handle a batch
//! of packets. The victim has no route to the spoofed sources: nothing it
//! sends leaves the lab.
//!
//! Reported per layout and protocol: frames sent per second, packets the
//! victim's stack handled (and dropped: every source is banned) per second,
//! receive CPU time per million packets (= ns per packet) and its
//! ratio to the first layout listed (prerouting by default) and, when the
//! floor ran, the nanoseconds per packet above it, conntrack entries created during a
//! separate second of flood (an observer rule `ct state new counter` right
//! after conntrack, added only then so that its own cost stays out of the
//! CPU figure), and the latency of a legitimate TCP connect from an
//! address that is not banned, sampled during the flood (median, max,
//! failures). When the victim keeps up with the sender, the packets per
//! second are the sender's limit, not the layout's; the CPU figure still
//! compares the layouts.
//!
//! Run as root: `cargo bench -p palisade-enforce --bench flood`.
//! Environment: `FLOOD_SECS` (measured seconds per run, default 10),
//! `FLOOD_BANS` (default 1000000), `FLOOD_LAYOUTS` (default
//! `prerouting,xdp,ingress,input,ipset,fail2ban,hook,floor`), `FLOOD_PROTOS` (default `syn,udp`),
//! `RX_CPU` (default 0), `TX_CPU` (default 1), `RX_COALESCE_US` (NAPI
//! deferral on the victim's veth, default 50; 0 turns it off),
//! `FLOOD_REPEAT` (runs per layout and protocol, in rounds over the
//! layouts; the median run by CPU per packet is reported; default 3),
//! `FLOOD_SENDER` (`kernel` or `packet`, default `kernel`).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_enforce::nftables::{NftablesEnforcer, NftablesOptions};
use palisade_enforce::{Enforcer, Entry};
use palisade_lab::{Lab, Netns, TcpServer};
use palisade_model::{Action, Net};
use palisade_xdp::asm::{insn, op};
use palisade_xdp::sys;

/// Flood sources: 198.19.0.0 + i.
const FIRST_SOURCE: u32 = 0xC613_0000;
const SOURCES: u32 = 10_000;
/// Rules fail2ban holds.
const FAIL2BAN_RULES: u32 = 1_000;
/// Other bans: every second address from 100.64.0.0 on (as kernel_load).
const FIRST_OTHER: u32 = 0x6440_0000;
/// The closed port the flood is aimed at (discard).
const FLOOD_PORT: u16 = 9;
const FRAME_LEN: usize = 60;
const BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Prerouting,
    Xdp,
    Ingress,
    Input,
    Ipset,
    Fail2ban,
    Hook,
    Floor,
}

impl Layout {
    fn parse(s: &str) -> Layout {
        match s {
            "prerouting" => Layout::Prerouting,
            "xdp" => Layout::Xdp,
            "ingress" => Layout::Ingress,
            "input" => Layout::Input,
            "ipset" => Layout::Ipset,
            "fail2ban" => Layout::Fail2ban,
            "hook" => Layout::Hook,
            "floor" => Layout::Floor,
            _ => {
                panic!(
                    "unknown layout {s:?} (prerouting, xdp, ingress, input, ipset, fail2ban, hook, floor)"
                )
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Prerouting => "prerouting",
            Layout::Xdp => "xdp",
            Layout::Ingress => "ingress",
            Layout::Input => "input",
            Layout::Ipset => "ipset",
            Layout::Fail2ban => "fail2ban",
            Layout::Hook => "hook",
            Layout::Floor => "floor",
        }
    }

    /// How many flood sources are banned in this layout.
    fn sources(self) -> u32 {
        match self {
            Layout::Fail2ban => FAIL2BAN_RULES,
            _ => SOURCES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Syn,
    Udp,
}

struct Settings {
    secs: u64,
    bans: u32,
    rx_cpu: usize,
    /// NAPI deferral on the victim's veth, in µs (0: off).
    coalesce_us: u64,
    /// Runs per layout and protocol; the median is reported.
    repeat: usize,
    tx_cpu: usize,
    sender: Sender,
}

/// What makes the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// The kernel, from an XDP program (see [`generate`]).
    Kernel,
    /// A user-space AF_PACKET socket (see [`send`]).
    Packet,
}

struct Outcome {
    sent_per_sec: f64,
    handled_per_sec: f64,
    rx_ns_per_packet: f64,
    /// Share of the wall-clock time the receive path was busy.
    rx_busy: f64,
    conntrack_new: u64,
    connects: Vec<Duration>,
    failed: usize,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not valid"))
        })
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !palisade_lab::require_root_and(&["nft", "ipset", "iptables-restore", "iptables", "ethtool"])
    {
        return;
    }
    let settings = Settings {
        secs: env("FLOOD_SECS", 10),
        bans: env("FLOOD_BANS", 1_000_000),
        rx_cpu: env("RX_CPU", 0),
        tx_cpu: env("TX_CPU", 1),
        coalesce_us: env("RX_COALESCE_US", 50),
        repeat: env("FLOOD_REPEAT", 3).max(1),
        sender: match env("FLOOD_SENDER", "kernel".to_string()).as_str() {
            "kernel" => Sender::Kernel,
            "packet" => Sender::Packet,
            other => panic!("unknown FLOOD_SENDER {other:?} (kernel, packet)"),
        },
    };
    let layouts: Vec<Layout> = env(
        "FLOOD_LAYOUTS",
        "prerouting,xdp,ingress,input,ipset,fail2ban,hook,floor".to_string(),
    )
    .split(',')
    .map(|s| Layout::parse(s.trim()))
    .collect();
    let protos: Vec<Proto> = env("FLOOD_PROTOS", "syn,udp".to_string())
        .split(',')
        .map(|s| match s.trim() {
            "syn" => Proto::Syn,
            "udp" => Proto::Udp,
            other => panic!("unknown protocol {other:?} (syn, udp)"),
        })
        .collect();
    println!(
        "flood: 64-byte frames from {SOURCES} banned sources over veth, {} bans loaded, \
         {} s per run, median of {} runs; sender on CPU {}, victim's receive path on CPU {} \
         (threaded NAPI, {} µs deferral)",
        settings.bans,
        settings.secs,
        settings.repeat,
        settings.tx_cpu,
        settings.rx_cpu,
        settings.coalesce_us
    );
    println!();
    println!(
        "{:<4} {:<11} {:>10} {:>12} {:>8} {:>14} {:>9} {:>11} {:>12} {:>11} {:>11} {:>7}",
        "",
        "layout",
        "sent Mpps",
        "dropped Mpps",
        "rx busy",
        "rx CPU ms/Mp",
        "vs first",
        "over floor",
        "ct new in 1s",
        "connect med",
        "connect max",
        "failed"
    );
    for proto in protos {
        // Rounds over all layouts, so that whatever else the machine does
        // falls on every layout alike; each layout's median run counts.
        let mut runs: Vec<Vec<Outcome>> = layouts.iter().map(|_| Vec::new()).collect();
        for _ in 0..settings.repeat {
            for (i, &layout) in layouts.iter().enumerate() {
                runs[i].push(run(layout, proto, &settings));
            }
        }
        let medians: Vec<Outcome> = runs
            .into_iter()
            .map(|mut outcomes| {
                outcomes.sort_by(|a, b| a.rx_ns_per_packet.total_cmp(&b.rx_ns_per_packet));
                outcomes.swap_remove(outcomes.len() / 2)
            })
            .collect();
        let base = medians[0].rx_ns_per_packet;
        let floor = layouts
            .iter()
            .position(|&l| l == Layout::Floor)
            .map(|i| medians[i].rx_ns_per_packet);
        for (&layout, o) in layouts.iter().zip(medians) {
            let (med, max) = percentiles(&o.connects);
            let over_floor = match floor {
                Some(f) if layout != Layout::Floor => format!("{:.0}", o.rx_ns_per_packet - f),
                _ => "-".to_string(),
            };
            println!(
                "{:<4} {:<11} {:>10.3} {:>12.3} {:>7.0}% {:>14.1} {:>8.2}x {:>11} {:>12} {:>9.2}ms {:>9.2}ms {:>7}",
                match proto {
                    Proto::Syn => "SYN",
                    Proto::Udp => "UDP",
                },
                layout.name(),
                o.sent_per_sec / 1e6,
                o.handled_per_sec / 1e6,
                o.rx_busy * 100.0,
                o.rx_ns_per_packet,
                o.rx_ns_per_packet / base,
                over_floor,
                o.conntrack_new,
                ms(med),
                ms(max),
                o.failed,
            );
        }
    }
    println!();
    for line in [
        "sent: frames made; more than dropped: the victim's receive ring overflowed and the layout",
        "  set the rate; as many as dropped: the sender set it (rx busy then lower, and each wake-up",
        "  of the receive path shared by fewer packets).",
        "rx busy: share of the time the victim's receive path ran.",
        "rx CPU ms/Mp: CPU time of the victim's receive path per million packets handled (ns per",
        "  packet); vs first: that cost relative to the first layout listed; over floor: ns per",
        "  packet above the floor's (what the layout itself costs), when the floor ran.",
        "ct new: packets that got a conntrack entry (observer `ct state new counter` after conntrack).",
    ] {
        println!("{line}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentiles(samples: &[Duration]) -> (Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    match s.len() {
        0 => (Duration::ZERO, Duration::ZERO),
        n => (s[n / 2], s[n - 1]),
    }
}

/// One layout against one flood, in a fresh lab.
fn run(layout: Layout, proto: Proto, settings: &Settings) -> Outcome {
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let napi = prepare_victim(attacker, victim, settings.rx_cpu, settings.coalesce_us);
    let _enforcer = install(layout, victim, settings.bans);
    let server = TcpServer::start(victim, 0);
    let legit = SocketAddr::new(victim.v4().into(), server.port());
    let macs = Macs {
        from: mac(attacker),
        to: mac(victim),
    };
    let frames = frames(proto, layout.sources(), macs, victim.v4());
    let template = generator_template(proto, macs, victim.v4());
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| match settings.sender {
            Sender::Packet => send(attacker, settings.tx_cpu, &frames, &stop, &sent),
            Sender::Kernel => generate(
                attacker,
                settings.tx_cpu,
                &template,
                layout.sources(),
                &stop,
                &sent,
            ),
        });
        std::thread::sleep(Duration::from_secs(1)); // warm up
        // The sender and the receive path keep both cores busy at
        // real-time priority; the measuring thread (and the connects it
        // starts, which inherit this) runs above them, so that neither its
        // readings nor the legitimate connections wait for a time slice.
        schedule(0, libc::SCHED_FIFO, 2);
        let sent0 = sent.load(Ordering::Relaxed);
        let (rx0, rx_ns0) = receive_counters(victim, napi);
        let start = Instant::now();
        let mut connects = Vec::new();
        let mut failed = 0;
        while start.elapsed() < Duration::from_secs(settings.secs) {
            let t = Instant::now();
            match attacker.run(|| TcpStream::connect_timeout(&legit, Duration::from_secs(3))) {
                Ok(_) => connects.push(t.elapsed()),
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let secs = start.elapsed().as_secs_f64();
        let sent_n = sent.load(Ordering::Relaxed) - sent0;
        let (rx1, rx_ns1) = receive_counters(victim, napi);
        let (handled, rx_ns) = (rx1 - rx0, rx_ns1 - rx_ns0);
        let conntrack_new = count_conntrack_new(victim);
        stop.store(true, Ordering::Relaxed);
        schedule(0, libc::SCHED_OTHER, 0);
        Outcome {
            sent_per_sec: sent_n as f64 / secs,
            handled_per_sec: handled as f64 / secs,
            rx_ns_per_packet: rx_ns as f64 / handled.max(1) as f64,
            rx_busy: rx_ns as f64 / 1e9 / secs,
            conntrack_new,
            connects,
            failed,
        }
    })
}

/// No reverse-path filter (the sources are spoofed), a host firewall that
/// tracks connections, and the receive path in a NAPI thread of its own
/// pinned to `rx_cpu`; returns that thread's pid.
///
/// veth hands packets to a NAPI instance (instead of the sending core's
/// backlog) when the receiving side has GRO on and the sending side no
/// TSO; a threaded NAPI instance runs as a kernel thread, whose CPU time is
/// then exactly the cost of receiving and dropping the flood, whatever else
/// runs on that core.
fn prepare_victim(attacker: &Netns, victim: &Netns, rx_cpu: usize, coalesce_us: u64) -> i32 {
    victim.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
        ],
    );
    victim.exec(
        "nft",
        &["add table inet host
           add chain inet host input { type filter hook input priority 0; policy accept; }
           add rule inet host input ct state established,related accept"],
    );
    attacker.exec("ethtool", &["-K", "eth0", "tso", "off"]);
    victim.exec("ethtool", &["-K", "eth0", "gro", "on"]);
    let before = napi_threads();
    victim.exec("sh", &["-c", "echo 1 > /sys/class/net/eth0/threaded"]);
    // A NIC coalesces its interrupts (ethtool's rx-usecs): under a flood
    // one wake-up of the receive path handles a batch of packets. veth has
    // no interrupts to coalesce; NAPI's deferral (a timer instead of an
    // immediate reschedule when a poll ends) is the kernel's software
    // equivalent. Without it each wake-up's fixed cost is shared by a few
    // packets only, and that cost, the same in every layout, would hide
    // the differences between them.
    if coalesce_us > 0 {
        let settings = format!(
            "echo 1000 > /sys/class/net/eth0/napi_defer_hard_irqs && \
             echo {} > /sys/class/net/eth0/gro_flush_timeout",
            coalesce_us * 1000
        );
        victim.exec("sh", &["-c", &settings]);
    }
    let new: Vec<i32> = napi_threads()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let [pid] = new[..] else {
        panic!("expected one new NAPI thread for the victim's eth0, found {new:?}");
    };
    pin(pid, rx_cpu);
    // Softirq work preempts ordinary tasks; so does this thread.
    realtime(pid);
    pid
}

/// Runs thread `pid` (0: the calling thread) at the lowest real-time
/// priority, ahead of every ordinary task on its core (the kernel's
/// real-time throttling still leaves those 5%).
fn realtime(pid: i32) {
    schedule(pid, libc::SCHED_FIFO, 1);
}

/// Sets thread `pid`'s (0: the calling thread's) scheduling policy.
fn schedule(pid: i32, policy: libc::c_int, priority: libc::c_int) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: param is a valid sched_param for the call's duration.
    let rc = unsafe { libc::sched_setscheduler(pid, policy, &param) };
    assert_eq!(
        rc,
        0,
        "real-time priority: {}",
        std::io::Error::last_os_error()
    );
}

/// Pids of the kernel's `napi/eth0-*` threads.
fn napi_threads() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("napi/eth0-"))
        })
        .collect()
}

/// Time thread `pid` has run so far, in ns (the scheduler's own account,
/// `/proc/PID/schedstat`: exact, not sampled at clock ticks).
fn cpu_ns(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .expect("thread schedstat")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("run time")
}

fn source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_SOURCE + i)
}

/// The flood's sources, then other hosts up to `total`.
fn banned(total: u32) -> impl Iterator<Item = Ipv4Addr> {
    (0..total).map(|i| {
        if i < SOURCES {
            source(i)
        } else {
            Ipv4Addr::from(FIRST_OTHER + 2 * (i - SOURCES))
        }
    })
}

/// Sets a layout up; what it returns must live as long as the flood (an
/// XDP program ends with its link, palisade's with its enforcer).
fn install(layout: Layout, victim: &Netns, bans: u32) -> Option<Box<dyn std::any::Any>> {
    match layout {
        Layout::Prerouting | Layout::Xdp | Layout::Ingress | Layout::Input => {
            let eth0 = || vec!["eth0".to_string()];
            let config = NftablesOptions {
                ingress_devices: match layout {
                    Layout::Ingress => eth0(),
                    _ => Vec::new(),
                },
                xdp_devices: match layout {
                    Layout::Xdp => eth0(),
                    _ => Vec::new(),
                },
                ..NftablesOptions::default()
            };
            // Made and loaded in the victim's namespace, as the agent does
            // in its own (the XDP drop attaches to the interfaces there).
            let nft = victim.run(|| {
                let mut nft = NftablesEnforcer::new(config).expect("netlink");
                let mut entries = banned(bans).map(|a| Entry {
                    action: Action::Ban,
                    net: Net::host(a.into()),
                    expires: None,
                    comment: None,
                    rule: None,
                    list: None,
                });
                nft.replace_all(&mut entries).expect("load the bans");
                nft
            });
            if layout == Layout::Input {
                let rules = "ip saddr @allow4 accept; ip6 saddr @allow6 accept; \
                             ip saddr @block4 drop; ip6 saddr @block6 drop; \
                             ip saddr @block4_net drop; ip6 saddr @block6_net drop;";
                victim.exec(
                    "nft",
                    &[&format!(
                        "delete chain inet palisade prerouting
                         add chain inet palisade input {{ type filter hook input priority -10; policy accept; {rules} }}
                         add chain inet palisade forward {{ type filter hook forward priority -10; policy accept; {rules} }}"
                    )],
                );
            }
            return Some(Box::new(nft));
        }
        Layout::Ipset => {
            let mut script = format!(
                "create bench hash:ip family inet hashsize {} maxelem {} timeout 0\n",
                (bans / 4).next_power_of_two().max(1024),
                bans.max(65536) * 2
            );
            for a in banned(bans) {
                script.push_str(&format!("add bench {a}\n"));
            }
            feed(victim, "ipset", &["restore"], &script);
            victim.exec(
                "iptables",
                &[
                    "-I",
                    "INPUT",
                    "-m",
                    "set",
                    "--match-set",
                    "bench",
                    "src",
                    "-j",
                    "DROP",
                ],
            );
        }
        Layout::Fail2ban => {
            // fail2ban inserts each ban at the top of its chain.
            let mut script = String::from("*filter\n:f2b-bench - [0:0]\n-A INPUT -j f2b-bench\n");
            for i in (0..FAIL2BAN_RULES).rev() {
                script.push_str(&format!(
                    "-A f2b-bench -s {}/32 -j REJECT --reject-with icmp-port-unreachable\n",
                    source(i)
                ));
            }
            script.push_str("-A f2b-bench -j RETURN\nCOMMIT\n");
            feed(victim, "iptables-restore", &["--noflush"], &script);
        }
        Layout::Hook => {
            victim.exec(
                "nft",
                &[&format!(
                    "add table inet bare
                     add chain inet bare prerouting {{ type filter hook prerouting priority {}; }}
                     add rule inet bare prerouting ip saddr 198.19.0.0/16 drop",
                    NftablesOptions::default().prerouting_priority
                )],
            );
        }
        Layout::Floor => return Some(Box::new(attach_floor_xdp(victim))),
    }
    None
}

/// Loads the `floor` XDP program and attaches it to the victim's eth0 in
/// native mode (veth runs it in its NAPI poll, before any skb processing),
/// for as long as the returned link lives. The program, by instruction:
///
/// ```text
///  0 r2 = ctx->data             1 r3 = ctx->data_end
///  2 r4 = r2                    3 r4 += 34 (Ethernet + IPv4 header)
///  4 if r4 > r3 goto pass       5 r5 = ethertype (u16 at 12)
///  6 if r5 != IPv4 goto pass    7 r5 = source address (u32 at 26)
///  8 r5 &= 0xffff (198.19.)     9 if r5 != 198.19. goto pass
/// 10 r0 = XDP_DROP             11 exit
/// 12 pass: r0 = XDP_PASS       13 exit
/// ```
fn attach_floor_xdp(victim: &Netns) -> OwnedFd {
    use op::*;
    // Network-order fields read as little-endian words.
    const IPV4: i32 = 0x0008;
    const FROM_198_19: i32 = 0x13c6;
    let program: Vec<u8> = [
        insn(LDX_W, 2, 1, 0, 0),
        insn(LDX_W, 3, 1, 4, 0),
        insn(MOV_X, 4, 2, 0, 0),
        insn(ADD_K, 4, 0, 0, 34),
        insn(JGT_X, 4, 3, 7, 0),
        insn(LDX_H, 5, 2, 12, 0),
        insn(JNE_K, 5, 0, 5, IPV4),
        insn(LDX_W, 5, 2, 26, 0),
        insn(AND_K, 5, 0, 0, 0xffff),
        insn(JNE_K, 5, 0, 2, FROM_198_19),
        insn(MOV_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV_K, 0, 0, 0, 2),
        insn(EXIT, 0, 0, 0, 0),
    ]
    .concat();
    let prog = load_xdp(&program, "the floor XDP program");
    victim.run(|| {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        sys::link_create_xdp(&prog, ifindex).expect("attaching the floor XDP program to eth0")
    })
}

/// Loads an XDP program (`program`: eBPF instructions, see [`insn`]); the
/// verifier's log is in the panic message if it refuses it.
fn load_xdp(program: &[u8], what: &str) -> OwnedFd {
    sys::prog_load_xdp(program, "palisade_bench")
        .unwrap_or_else(|(error, log)| panic!("loading {what}: {error}; verifier: {log}"))
}

/// Runs `program args` in `ns` with `input` on its stdin.
fn feed(ns: &Netns, program: &str, args: &[&str], input: &str) {
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

fn mac(ns: &Netns) -> [u8; 6] {
    let text = ns.exec("cat", &["/sys/class/net/eth0/address"]);
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).expect("MAC address");
    }
    m
}

/// One 60-byte frame (64 on the wire with the FCS) per source.
fn frames(proto: Proto, sources: u32, macs: Macs, to: Ipv4Addr) -> Vec<u8> {
    let mut all = Vec::with_capacity(sources as usize * FRAME_LEN);
    for i in 0..sources {
        let fields = Fields {
            source: source(i),
            id: i as u16,
            sport: 1024 + (i % 60_000) as u16,
            seq: i.wrapping_mul(2_654_435_761),
        };
        all.extend_from_slice(&frame(proto, fields, macs, to));
    }
    all
}

/// The source MAC address (the attacker's) and the destination's.
#[derive(Clone, Copy)]
struct Macs {
    from: [u8; 6],
    to: [u8; 6],
}

/// What differs between the flood's frames.
#[derive(Clone, Copy)]
struct Fields {
    source: Ipv4Addr,
    id: u16,
    sport: u16,
    seq: u32,
}

/// One frame with valid IPv4 (and TCP) checksums.
fn frame(proto: Proto, fields: Fields, macs: Macs, to: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&macs.to);
    f[6..12].copy_from_slice(&macs.from);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (proto_num, l4_len) = match proto {
        Proto::Syn => (6u8, 20usize),
        Proto::Udp => (17u8, FRAME_LEN - 14 - 20),
    };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&fields.id.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto_num;
    ip[12..16].copy_from_slice(&fields.source.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let c = checksum(&[ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut f[34..34 + l4_len];
    l4[0..2].copy_from_slice(&fields.sport.to_be_bytes());
    l4[2..4].copy_from_slice(&FLOOD_PORT.to_be_bytes());
    match proto {
        Proto::Udp => {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            // checksum 0: none (IPv4)
        }
        Proto::Syn => {
            l4[4..8].copy_from_slice(&fields.seq.to_be_bytes());
            l4[12] = 0x50; // data offset 5
            l4[13] = 0x02; // SYN
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&fields.source.octets());
            pseudo[4..8].copy_from_slice(&to.octets());
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
            let c = checksum(&[&pseudo, l4]);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
    }
    f
}

/// The frame the kernel's generator starts from: source 198.19.0.0, IP
/// identification and source port 0xffff. [`generator_program`] turns it
/// into the frame of source `i` by adding `i` to the source address and
/// taking it from both the identification and the source port: the sums
/// behind the IPv4 and TCP checksums stay the same (the address is in
/// both, the identification only in the first, the port only in the
/// second), so the checksums stay valid and conntrack, which checks them,
/// treats these frames like any others.
fn generator_template(proto: Proto, macs: Macs, to: Ipv4Addr) -> [u8; FRAME_LEN] {
    let fields = Fields {
        source: source(0),
        id: 0xffff,
        sport: 0xffff,
        seq: 2_654_435_761,
    };
    frame(proto, fields, macs, to)
}

/// The XDP program that makes the flood in the kernel (see [`generate`]),
/// by instruction:
///
/// ```text
///  0 r6 = ctx                   1 r0 = random()
///  2 w0 %= sources (i)          3 r2 = ctx->data
///  4 r3 = ctx->data_end         5 r4 = r2
///  6 r4 += 36 (to the port)     7 if r4 > r3 goto drop
///  8 r5 = r0                    9 r5 = htons(r5)
/// 10 source address's low half = r5
/// 11 r5 = 0xffff               12 r5 -= r0
/// 13 r5 = htons(r5)            14 identification = r5
/// 15 source port = r5          16 r0 = XDP_TX
/// 17 exit                      18 drop: r0 = XDP_DROP
/// 19 exit
/// ```
fn generator_program(sources: u32) -> Vec<u8> {
    use op::*;
    const GET_PRANDOM_U32: i32 = 7;
    const XDP_DROP: i32 = 1;
    const XDP_TX: i32 = 3;
    assert!(sources > 0 && sources <= 0xffff - 1024);
    [
        insn(MOV_X, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
        insn(MOD32_K, 0, 0, 0, sources as i32),
        insn(LDX_W, 2, 6, 0, 0),
        insn(LDX_W, 3, 6, 4, 0),
        insn(MOV_X, 4, 2, 0, 0),
        insn(ADD_K, 4, 0, 0, 36),
        insn(JGT_X, 4, 3, 10, 0),
        insn(MOV_X, 5, 0, 0, 0),
        insn(TO_BE, 5, 0, 0, 16),
        insn(STX_H, 2, 5, 28, 0),
        insn(MOV_K, 5, 0, 0, 0xffff),
        insn(SUB_X, 5, 0, 0, 0),
        insn(TO_BE, 5, 0, 0, 16),
        insn(STX_H, 2, 5, 18, 0),
        insn(STX_H, 2, 5, 34, 0),
        insn(MOV_K, 0, 0, 0, XDP_TX),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV_K, 0, 0, 0, XDP_DROP),
        insn(EXIT, 0, 0, 0, 0),
    ]
    .concat()
}

/// Floods from `ns`'s eth0 with the kernel's own packet generator until
/// `stop`: [`generator_program`] run by `BPF_PROG_TEST_RUN` in live-frame
/// mode, which builds each frame from `template` in a page of its own,
/// lets the program make it the frame of a random source, and sends it
/// out of eth0 with `XDP_TX` (veth's `ndo_xdp_xmit`). The victim's side
/// then builds its own socket buffer around the page, as a NIC's driver
/// does; frames its receive ring has no room for are dropped there, so the
/// receive path runs flat out in every layout.
fn generate(
    ns: &Netns,
    cpu: usize,
    template: &[u8; FRAME_LEN],
    sources: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
    /// Frames per system call (a few milliseconds' worth).
    const REPEAT: u32 = 1 << 20;
    let program = generator_program(sources);
    ns.run(|| {
        pin(0, cpu);
        realtime(0);
        let prog = load_xdp(&program, "the flood generator");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert!(ifindex > 0, "no eth0 in the attacker's namespace");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, FRAME_LEN as u32, 0, ifindex, 0, 0];
        // union bpf_attr, BPF_PROG_TEST_RUN: prog_fd, retval, data_size_in,
        // data_size_out, data_in, data_out, repeat, duration, ctx_size_in,
        // ctx_size_out, ctx_in, ctx_out, flags, cpu, batch_size.
        let mut attr = [0u8; 80];
        attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&(FRAME_LEN as u32).to_ne_bytes());
        attr[16..24].copy_from_slice(&(template.as_ptr() as u64).to_ne_bytes());
        attr[32..36].copy_from_slice(&REPEAT.to_ne_bytes());
        attr[40..44].copy_from_slice(&(std::mem::size_of_val(&ctx) as u32).to_ne_bytes());
        attr[48..56].copy_from_slice(&(ctx.as_ptr() as u64).to_ne_bytes());
        attr[64..68].copy_from_slice(&BPF_F_TEST_XDP_LIVE_FRAMES.to_ne_bytes());
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: attr is a valid bpf_attr for BPF_PROG_TEST_RUN whose
            // pointers (template, ctx) outlive the call.
            let rc = unsafe {
                libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr.as_ptr(), attr.len())
            };
            assert_eq!(
                rc,
                0,
                "running the flood generator: {} (live frames need Linux 5.18 or later; \
                 FLOOD_SENDER=packet sends from user space instead)",
                std::io::Error::last_os_error()
            );
            sent.fetch_add(u64::from(REPEAT), Ordering::Relaxed);
        }
    });
}

/// The Internet checksum of the concatenated parts (each of even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for w in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `frames` round and round from `ns`'s eth0 until `stop`.
fn send(ns: &Netns, cpu: usize, frames: &[u8], stop: &AtomicBool, sent: &AtomicU64) {
    ns.run(|| {
        pin(0, cpu);
        // The flood's rate must not depend on what else runs on this core.
        realtime(0);
        // SAFETY: plain socket calls on a socket this function owns; the
        // structures passed live across each call.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            sll.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let count = frames.len() / FRAME_LEN;
            let mut iovs: Vec<libc::iovec> = (0..count)
                .map(|i| libc::iovec {
                    iov_base: frames[i * FRAME_LEN..].as_ptr() as *mut _,
                    iov_len: FRAME_LEN,
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    let mut m: libc::mmsghdr = std::mem::zeroed();
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = BATCH.min(count - next);
                let r = libc::sendmmsg(fd, msgs[next..].as_mut_ptr(), n as u32, 0);
                if r > 0 {
                    sent.fetch_add(r as u64, Ordering::Relaxed);
                    next = (next + r as usize) % count;
                }
            }
            libc::close(fd);
        }
    });
}

/// Pins thread `pid` (0: the calling thread) to `cpu`.
fn pin(pid: i32, cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Packets the victim's eth0 took in (each then went through its stack).
/// Packets the victim's eth0 has received and its receive path's CPU
/// time so far, read together (within microseconds, from a thread in the
/// victim's namespace, so both cover the same stretch of the flood).
fn receive_counters(victim: &Netns, napi: i32) -> (u64, u64) {
    victim.run(|| {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
        let cpu = cpu_ns(napi);
        let packets = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .and_then(|counters| counters.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .expect("eth0's received packets in /proc/net/dev");
        (packets, cpu)
    })
}

/// Packets that got a conntrack entry during one second of the flood,
/// counted right after conntrack.
fn count_conntrack_new(victim: &Netns) -> u64 {
    victim.exec(
        "nft",
        &["add table inet observe
           add chain inet observe tracked { type filter hook prerouting priority -150; }
           add rule inet observe tracked ip saddr 198.19.0.0/16 ct state new counter"],
    );
    std::thread::sleep(Duration::from_secs(1));
    let out = victim.exec("nft", &["list", "chain", "inet", "observe", "tracked"]);
    victim.exec("nft", &["delete", "table", "inet", "observe"]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("counter")
}

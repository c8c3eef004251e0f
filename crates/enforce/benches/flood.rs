//! A flood from banned sources against four ways of dropping it, in one run:
//!
//! - `prerouting`: palisade's table as it is now (drop at raw priority,
//!   before conntrack);
//! - `ingress`: the same with `ingress_devices = ["eth0"]` (drop at the
//!   interface's ingress hook, before IP processing);
//! - `input`: the same table and sets in the earlier layout (drop in
//!   input and forward chains at -10, after conntrack);
//! - `ipset`: a `hash:ip` set and `iptables -I INPUT -m set --match-set
//!   SET src -j DROP` (CrowdSec's bouncer, diswall);
//! - `fail2ban`: a `f2b-` chain of 1,000 `-s ADDR -j REJECT
//!   --reject-with icmp-port-unreachable` rules jumped to from INPUT
//!   (fail2ban's default iptables action, all ports).
//!
//! The nftables and ipset layouts hold 1M bans (the 10,000 flood sources
//! among them); fail2ban holds 1,000 rules, so its flood comes from those
//! 1,000 addresses. The victim's own firewall tracks connections (`ct state
//! established,related accept`), as a server's does, so conntrack is on.
//!
//! The attacker namespace sends 64-byte frames (TCP SYN, then UDP) from
//! 10,000 spoofed sources in 198.19.0.0/18 over a veth with an AF_PACKET
//! socket (`sendmmsg`, qdisc bypass), pinned to `TX_CPU` at real-time
//! priority 1 (so the flood's rate does not depend on other work on that
//! core). The victim's receive path (what the softirq of a real NIC would
//! do) runs in a threaded NAPI instance pinned to `RX_CPU`, also at
//! real-time priority 1 (so that, like softirq work, it preempts ordinary
//! tasks), and that thread's CPU time is the cost of handling the flood
//! (`ethtool` turns on veth's NAPI). Like a NIC's interrupt coalescing,
//! NAPI deferral (`RX_COALESCE_US`) lets one wake-up of the receive path
//! handle a batch of packets. The victim has no route to the spoofed
//! sources: nothing it sends leaves the lab.
//!
//! Reported per layout and protocol: frames sent per second, packets the
//! victim's stack handled (and dropped: every source is banned) per second,
//! receive CPU time per million packets (= ns per packet) and its
//! ratio to the first layout listed (prerouting by default), conntrack entries created during a
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
//! `prerouting,ingress,input,ipset,fail2ban`), `FLOOD_PROTOS` (default `syn,udp`),
//! `RX_CPU` (default 0), `TX_CPU` (default 1), `RX_COALESCE_US` (NAPI
//! deferral on the victim's veth, default 50; 0 turns it off),
//! `FLOOD_REPEAT` (runs per layout and protocol, in rounds over the
//! layouts; the median run by CPU per packet is reported; default 3).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_enforce::nftables::{NftablesEnforcer, NftablesOptions};
use palisade_enforce::{Enforcer, Entry};
use palisade_lab::{Lab, Netns, TcpServer};
use palisade_model::{Action, Net};

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
    Ingress,
    Input,
    Ipset,
    Fail2ban,
}

impl Layout {
    fn parse(s: &str) -> Layout {
        match s {
            "prerouting" => Layout::Prerouting,
            "ingress" => Layout::Ingress,
            "input" => Layout::Input,
            "ipset" => Layout::Ipset,
            "fail2ban" => Layout::Fail2ban,
            _ => panic!("unknown layout {s:?} (prerouting, ingress, input, ipset, fail2ban)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Prerouting => "prerouting",
            Layout::Ingress => "ingress",
            Layout::Input => "input",
            Layout::Ipset => "ipset",
            Layout::Fail2ban => "fail2ban",
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
    };
    let layouts: Vec<Layout> = env(
        "FLOOD_LAYOUTS",
        "prerouting,ingress,input,ipset,fail2ban".to_string(),
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
        "{:<4} {:<11} {:>10} {:>12} {:>8} {:>14} {:>9} {:>12} {:>11} {:>11} {:>7}",
        "",
        "layout",
        "sent Mpps",
        "dropped Mpps",
        "rx busy",
        "rx CPU ms/Mp",
        "vs first",
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
        let mut baseline = None;
        for (&layout, mut outcomes) in layouts.iter().zip(runs) {
            outcomes.sort_by(|a, b| a.rx_ns_per_packet.total_cmp(&b.rx_ns_per_packet));
            let o = outcomes.swap_remove(outcomes.len() / 2);
            let base = *baseline.get_or_insert(o.rx_ns_per_packet);
            let (med, max) = percentiles(&o.connects);
            println!(
                "{:<4} {:<11} {:>10.3} {:>12.3} {:>7.0}% {:>14.1} {:>8.2}x {:>12} {:>9.2}ms {:>9.2}ms {:>7}",
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
                o.conntrack_new,
                ms(med),
                ms(max),
                o.failed,
            );
        }
    }
    println!();
    for line in [
        "rx busy: share of the time the victim's receive path ran; below 100% the sender set the",
        "  rate, and each wake-up of the receive path is shared by fewer packets.",
        "rx CPU ms/Mp: CPU time of the victim's receive path per million packets handled (ns per",
        "  packet); vs first: that cost relative to the first layout listed.",
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
    install(layout, victim, settings.bans);
    let server = TcpServer::start(victim, 0);
    let legit = SocketAddr::new(victim.v4().into(), server.port());
    let frames = frames(
        proto,
        layout.sources(),
        mac(attacker),
        mac(victim),
        victim.v4(),
    );
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| send(attacker, settings.tx_cpu, &frames, &stop, &sent));
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

fn install(layout: Layout, victim: &Netns, bans: u32) {
    match layout {
        Layout::Prerouting | Layout::Ingress | Layout::Input => {
            let config = NftablesOptions {
                ingress_devices: match layout {
                    Layout::Ingress => vec!["eth0".to_string()],
                    _ => Vec::new(),
                },
                ..NftablesOptions::default()
            };
            let mut nft = victim.run(|| NftablesEnforcer::new(config).expect("netlink"));
            let mut entries = banned(bans).map(|a| Entry {
                action: Action::Ban,
                net: Net::host(a.into()),
                expires: None,
                comment: None,
                rule: None,
                list: None,
            });
            nft.replace_all(&mut entries).expect("load the bans");
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
    }
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
fn frames(proto: Proto, sources: u32, src_mac: [u8; 6], dst_mac: [u8; 6], to: Ipv4Addr) -> Vec<u8> {
    let mut all = Vec::with_capacity(sources as usize * FRAME_LEN);
    for i in 0..sources {
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let (proto_num, l4_len) = match proto {
            Proto::Syn => (6u8, 20usize),
            Proto::Udp => (17u8, FRAME_LEN - 14 - 20),
        };
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = proto_num;
        ip[12..16].copy_from_slice(&source(i).octets());
        ip[16..20].copy_from_slice(&to.octets());
        let c = checksum(&[ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let sport = 1024 + (i % 60_000) as u16;
        let l4 = &mut f[34..34 + l4_len];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&FLOOD_PORT.to_be_bytes());
        match proto {
            Proto::Udp => {
                l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                // checksum 0: none (IPv4)
            }
            Proto::Syn => {
                l4[4..8].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
                l4[12] = 0x50; // data offset 5
                l4[13] = 0x02; // SYN
                l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                let mut pseudo = [0u8; 12];
                pseudo[0..4].copy_from_slice(&source(i).octets());
                pseudo[4..8].copy_from_slice(&to.octets());
                pseudo[9] = 6;
                pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
                let c = checksum(&[&pseudo, l4]);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
        }
        all.extend_from_slice(&f);
    }
    all
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

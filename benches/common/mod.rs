//! Shared by the benchmarks: an independent observer of the kernel (the
//! nftables netlink notifications of committed set elements), percentile
//! rows, process memory, the hub's configuration for benchmarks.

#![allow(dead_code)] // each benchmark uses a different subset

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use palisade_lab::Netns;

/// The allocator the `palisade` binary runs on (src/main.rs), so that code
/// run in a benchmark's own process is measured as the binary runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Starts an observer in `ns`: every committed NEWSETELEM notification is
/// sent with its arrival time. Returns once it is subscribed.
pub fn observe(ns: &Netns) -> mpsc::Receiver<(Instant, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let name = ns.name().to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        unsafe {
            use std::os::fd::AsRawFd;
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), 0);
        }
        monitor(tx, ready_tx);
    });
    ready_rx.recv().unwrap();
    rx
}

/// When the kernel announced the element `addr`: the first notification
/// whose attributes hold the 4-byte key (an NFTA_DATA_VALUE of length 8).
/// Other notifications (the interval's end element, earlier bans) are
/// skipped.
pub fn committed(rx: &mpsc::Receiver<(Instant, Vec<u8>)>, addr: Ipv4Addr) -> Instant {
    committed_before(rx, addr, Instant::now() + Duration::from_secs(5))
        .expect("kernel notification")
}

/// Like [`committed`], or `None` once `deadline` has passed.
pub fn committed_before(
    rx: &mpsc::Receiver<(Instant, Vec<u8>)>,
    addr: Ipv4Addr,
    deadline: Instant,
) -> Option<Instant> {
    let mut key = vec![8, 0, 1, 0];
    key.extend_from_slice(&addr.octets());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (t, msg) = rx.recv_timeout(left).ok()?;
        if msg.windows(key.len()).any(|w| w == key.as_slice()) {
            return Some(t);
        }
    }
}

pub fn row(label: &str, v: &mut [Duration]) {
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

pub fn ms(d: Duration) -> f64 {
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
        // Wakes up now and then to see whether anyone still listens: a
        // subscribed socket left behind makes the kernel build a
        // notification for every element of later bulk loads.
        let wake = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &wake as *const _ as *const libc::c_void,
            std::mem::size_of_val(&wake) as u32,
        );
        ready.send(()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            let now = Instant::now();
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                // An empty message matches no element; it fails once the
                // receiver is gone.
                if tx.send((now, Vec::new())).is_err() {
                    libc::close(fd);
                    return;
                }
                continue;
            }
            if n <= 0 {
                libc::close(fd);
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

/// (VmRSS, VmHWM) in MB.
pub fn rss(pid: u32) -> (f64, f64) {
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
pub fn kernel_count(ns: &Netns) -> usize {
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

/// The hub's configuration for benchmarks: rate limits and connection caps
/// out of the way (the fan-out and the fleet open tens of thousands of
/// streams from one client), so that they measure the hub, not its brakes.
pub const HUB_CONFIG: &str = "[hub]\nmax_connections = 40000\nmax_connections_per_client = 40000\n\
                              [hub.rate]\nper_second = 1000000000.0\nburst = 1000000000\n";

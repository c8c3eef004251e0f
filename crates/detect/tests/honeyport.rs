//! Honeyports in a lab: the victim listens on a decoy port; a connection
//! from the attacker becomes a verified ban of the attacker's address (its
//! /64 for IPv6), while SYNs with a forged source address (sent from a raw
//! socket) reach the victim's kernel but never produce a line.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use palisade_detect::sources::honeyport;
use palisade_detect::{Engine, Event, Limits, Line, Tracker, Trust, builtin};
use palisade_lab::{Lab, tcp_connect, wait_until};
use palisade_model::{Net, Timestamp};

const PORT: u16 = 2323;
/// A lab address no host has.
const FORGED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);

#[test]
fn a_completed_handshake_is_a_verified_ban_and_a_forged_syn_is_nothing() {
    if !palisade_lab::require_root_and(&["ss"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let (tx, rx) = unbounded::<Line>();
    let src = victim
        .netns()
        .run(|| honeyport::spawn("honeyport", "::".parse().unwrap(), &[PORT], 100, tx))
        .expect("listening on the honeyport");

    // Forged SYNs: the victim's kernel gets them (a half-open connection
    // waits for an ACK that never comes), the honeyport sees nothing.
    let to = SocketAddrV4::new(victim.v4(), PORT);
    attacker.netns().run(|| {
        for sport in 40_000..40_003 {
            send_syn(FORGED, sport, to).expect("sending a raw SYN");
        }
    });
    assert!(
        wait_until(Duration::from_secs(3), || victim
            .netns()
            .exec("ss", &["-Htn", "state", "syn-recv"])
            .contains(&FORGED.to_string())),
        "the forged SYN did not reach the victim: {}",
        victim.netns().exec("ss", &["-Htn", "state", "syn-recv"])
    );
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "a forged SYN produced a line"
    );

    // Real connections, over IPv4 (accepted as ::ffff:… on the dual-stack
    // socket) and IPv6.
    for ipv6 in [false, true] {
        let to = SocketAddr::new(victim.addr(ipv6), PORT);
        assert!(tcp_connect(attacker.netns(), to, Duration::from_secs(2)));
    }
    let lines = receive(&rx, 2);
    src.stop().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| !l.text.contains(&FORGED.to_string())));

    let engine = Engine::compile(&builtin::rules()).unwrap();
    let mut tracker = Tracker::new(engine, Limits::default());
    let mut bans = Vec::new();
    for l in &lines {
        for e in tracker.observe(l, Timestamp::now()) {
            if let Event::Ban {
                rule,
                address,
                trust,
                ..
            } = e
            {
                assert_eq!(rule, "honeyport");
                assert_eq!(trust, Trust::Verified);
                bans.push(address.to_string());
            }
        }
    }
    bans.sort();
    let mut want = vec![
        attacker.v4().to_string(),
        Net::truncating(attacker.v6().into(), 64).to_string(),
    ];
    want.sort();
    assert_eq!(bans, want);
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, _rx) = unbounded::<Line>();
    let err = honeyport::spawn("honeyport", "127.0.0.1".parse().unwrap(), &[port], 10, tx)
        .err()
        .expect("the port is taken");
    assert!(format!("{err:#}").contains("cannot listen"), "{err:#}");
}

fn receive(rx: &Receiver<Line>, n: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while out.len() < n && Instant::now() < end {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            out.push(l);
        }
    }
    // Anything more within a moment is a bug too.
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        out.push(l);
    }
    out
}

/// Sends one TCP SYN from `src:sport` to `to` through a raw socket (the
/// IPv4 header written here, so the source can be any address).
fn send_syn(src: Ipv4Addr, sport: u16, to: SocketAddrV4) -> std::io::Result<()> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4; // header length: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut packet = ip.to_vec();
    packet.extend_from_slice(&tcp);

    // SAFETY: a raw socket is created, used with a valid sockaddr_in and a
    // buffer of the given length, and closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as _;
        addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let n = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as _,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n < 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

//! palisade-netlink against the real kernel, each test in its own network
//! namespace (root only; see palisade-lab).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_lab::{ConnState, Established, Lab, Netns, TcpServer, require_root_and};
use palisade_netlink::nft::{
    self, AddrType, Batch, ChainSpec, ElemOp, ElemWriter, Hook, SetSpec, Verdict, family, set_flags,
};
use palisade_netlink::{Socket, ct, diag};

const TABLE: &str = "t";

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fn spec(name: &str, id: u32, key: AddrType) -> SetSpec<'_> {
    SetSpec {
        name,
        id,
        key,
        flags: set_flags::INTERVAL | set_flags::TIMEOUT,
        gc_interval_ms: None,
    }
}

/// Builds `table inet t` with sets b4/b6, an input chain and two rules.
fn build_table(sock: &mut Socket, elements: impl FnOnce(&mut Batch, &SetSpec, &SetSpec)) {
    let mut b = Batch::new();
    nft::new_table(&mut b, family::INET, TABLE);
    let (id4, id6) = (b.new_set_id(), b.new_set_id());
    let (b4, b6) = (spec("b4", id4, AddrType::V4), spec("b6", id6, AddrType::V6));
    nft::new_set(&mut b, family::INET, TABLE, &b4);
    nft::new_set(&mut b, family::INET, TABLE, &b6);
    nft::new_chain(
        &mut b,
        family::INET,
        TABLE,
        &ChainSpec {
            name: "input",
            hook: Hook::Input,
            priority: -10,
            policy: Verdict::Accept,
            device: None,
        },
    );
    nft::new_saddr_rule(&mut b, TABLE, "input", &b4, Verdict::Drop);
    nft::new_saddr_rule(&mut b, TABLE, "input", &b6, Verdict::Accept);
    elements(&mut b, &b4, &b6);
    b.send(sock).expect("build table");
}

#[test]
fn table_prints_like_the_hand_written_one() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ours = Netns::new();
    ours.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        build_table(&mut sock, |b, b4, b6| {
            let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, TABLE, b4.name, Some(b4.id));
            w.push_interval(&v4("198.18.0.5"), &v4("198.18.0.5"), None, Some("sshd"));
            w.push_interval(&v4("198.18.1.0"), &v4("198.18.1.255"), None, None);
            w.finish();
            let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, TABLE, b6.name, Some(b6.id));
            w.push_interval(
                &v6("2001:db8::7"),
                &v6("2001:db8::7"),
                None,
                Some("a comment"),
            );
            w.finish();
        });
    });
    let theirs = Netns::new();
    let script = r#"
table inet t {
    set b4 { type ipv4_addr; flags interval,timeout; elements = { 198.18.0.5 comment "sshd", 198.18.1.0/24 } }
    set b6 { type ipv6_addr; flags interval,timeout; elements = { 2001:db8::7 comment "a comment" } }
    chain input { type filter hook input priority -10; policy accept; ip saddr @b4 drop; ip6 saddr @b6 accept; }
}
"#;
    let path = std::env::temp_dir().join(format!("palisade-netlink-{}.nft", std::process::id()));
    std::fs::write(&path, script).unwrap();
    theirs.exec("nft", &["-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let a = ours.exec("nft", &["list", "ruleset"]);
    let b = theirs.exec("nft", &["list", "ruleset"]);
    assert_eq!(a, b);
    assert!(a.contains("ip saddr @b4 drop"), "{a}");
    assert!(a.contains("198.18.0.5 comment \"sshd\""), "{a}");
}

#[test]
fn elements_round_trip_with_timeouts_and_refresh() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        assert!(!nft::table_exists(&mut sock, family::INET, TABLE).unwrap());
        build_table(&mut sock, |b, b4, _| {
            let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, TABLE, b4.name, Some(b4.id));
            w.push_interval(
                &v4("198.18.0.9"),
                &v4("198.18.0.9"),
                Some(60_000),
                Some("x"),
            );
            w.finish();
        });
        assert!(nft::table_exists(&mut sock, family::INET, TABLE).unwrap());
        let read = |sock: &mut Socket| {
            let mut v = Vec::new();
            nft::dump_set_elems(sock, family::INET, TABLE, "b4", |e| {
                v.push((
                    e.addr().unwrap(),
                    e.is_interval_end(),
                    e.timeout_ms,
                    e.expires_ms,
                    e.comment.map(str::to_string),
                ));
            })
            .unwrap();
            v.sort_by_key(|x| x.0);
            v
        };
        let got = read(&mut sock);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "198.18.0.9".parse::<IpAddr>().unwrap());
        assert!(!got[0].1);
        assert_eq!(got[0].2, Some(60_000));
        assert!(got[0].3.unwrap() <= 60_000 && got[0].3.unwrap() > 50_000);
        assert_eq!(got[0].4.as_deref(), Some("x"));
        assert_eq!(got[1].0, "198.18.0.10".parse::<IpAddr>().unwrap());
        assert!(got[1].1);
        // Adding it again with a longer timeout refreshes it (6.10+), and a
        // shorter one shortens it.
        for timeout in [600_000, 30_000] {
            let mut b = Batch::new();
            let mut w = ElemWriter::new(&mut b, ElemOp::Add, family::INET, TABLE, "b4", None);
            w.push_interval(
                &v4("198.18.0.9"),
                &v4("198.18.0.9"),
                Some(timeout),
                Some("x"),
            );
            w.finish();
            b.send(&mut sock).unwrap();
            let got = read(&mut sock);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].2, Some(timeout), "{got:?}");
            assert!(got[0].3.unwrap() <= timeout && got[0].3.unwrap() > timeout - 5_000);
        }
    });
}

#[test]
fn errors_name_the_message_and_element() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        // No such set.
        let mut b = Batch::new();
        let mut w = ElemWriter::new(&mut b, ElemOp::Add, family::INET, TABLE, "nope", None);
        w.push_interval(&v4("198.18.0.1"), &v4("198.18.0.1"), None, None);
        w.finish();
        let e = b.send(&mut sock).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
        assert!(e.to_string().starts_with("NEWSETELEM inet t nope"), "{e}");
        build_table(&mut sock, |_, _, _| {});
        // An interval overlapping an existing one is refused, and the error
        // points at the element; nothing of the batch is applied.
        let mut b = Batch::new();
        let mut w = ElemWriter::new(&mut b, ElemOp::Add, family::INET, TABLE, "b4", None);
        w.push_interval(&v4("198.18.0.0"), &v4("198.18.0.255"), None, None);
        w.finish();
        b.send(&mut sock).unwrap();
        let mut b = Batch::new();
        let mut w = ElemWriter::new(&mut b, ElemOp::Add, family::INET, TABLE, "b4", None);
        w.push_interval(&v4("198.18.7.1"), &v4("198.18.7.1"), None, None);
        w.push_interval(&v4("198.18.0.16"), &v4("198.18.0.31"), None, None);
        w.finish();
        let e = b.send(&mut sock).unwrap_err();
        eprintln!("overlap error: {e}");
        assert_eq!(e.errno(), libc::EEXIST, "{e}");
        assert!(
            e.to_string()
                .contains("NEWSETELEM inet t b4, element 198.18.0."),
            "{e}"
        );
        let mut n = 0;
        nft::dump_set_elems(&mut sock, family::INET, TABLE, "b4", |_| n += 1).unwrap();
        assert_eq!(n, 2, "the failed batch left nothing behind");
        // DELSETELEM of a missing element fails, DESTROYSETELEM does not.
        for (op, ok) in [(ElemOp::Delete, false), (ElemOp::Destroy, true)] {
            let mut b = Batch::new();
            let mut w = ElemWriter::new(&mut b, op, family::INET, TABLE, "b4", None);
            w.push_interval(&v4("198.18.9.9"), &v4("198.18.9.9"), None, None);
            w.finish();
            let r = b.send(&mut sock);
            assert_eq!(r.is_ok(), ok, "{op:?}: {r:?}");
        }
    });
}

#[test]
fn a_large_batch_goes_through_in_one_transaction() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let n = 200_000u32;
        let started = std::time::Instant::now();
        build_table(&mut sock, |b, b4, _| {
            let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, TABLE, b4.name, Some(b4.id));
            for i in 0..n {
                let a = (0xc612_0000u32 + 2 * i).to_be_bytes();
                w.push_interval(&a, &a, Some(3_600_000), None);
            }
            w.finish();
            assert!(b.messages() > 100);
            assert!(b.len() > 8_000_000, "{} bytes", b.len());
        });
        let elapsed = started.elapsed();
        let mut count = 0;
        nft::dump_set_elems(&mut sock, family::INET, TABLE, "b4", |_| count += 1).unwrap();
        eprintln!("{n} intervals loaded in {elapsed:?}");
        assert_eq!(count, 2 * n as usize, "loaded in {elapsed:?}");
    });
}

#[test]
fn conntrack_entries_are_listed_and_deleted() {
    if !require_root_and(&["nft", "ping"]) {
        return;
    }
    let lab = Lab::new();
    let victim = lab.victim();
    // Conntrack only tracks a namespace once something uses it.
    victim.exec("nft", &["add table inet track; add chain inet track c { type filter hook input priority 0; ct state established accept; }"]);
    let server = TcpServer::start(victim, 0);
    let to = SocketAddr::new(victim.v4().into(), server.port());
    let mut conn = Established::open(lab.attacker(), to).unwrap();
    let to6 = SocketAddr::new(victim.v6().into(), server.port());
    let _conn6 = Established::open(lab.attacker(), to6).unwrap();
    victim.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let entries = ct::dump(&mut sock, ct::AF_INET).unwrap();
        let ours: Vec<_> = entries
            .iter()
            .filter(|e| {
                e.src == IpAddr::from(lab.attacker().v4()) && e.dport == Some(server.port())
            })
            .cloned()
            .collect();
        assert_eq!(ours.len(), 1, "{entries:?}");
        assert_eq!(ours[0].proto, 6);
        let entries6 = ct::dump(&mut sock, ct::AF_INET6).unwrap();
        assert!(
            entries6
                .iter()
                .any(|e| e.src == IpAddr::from(lab.attacker().v6())),
            "{entries6:?}"
        );
        assert!(entries6.iter().all(|e| e.src.is_ipv6()));
        assert_eq!(ct::delete(&mut sock, &ours).unwrap(), 1);
        // Deleting again is not an error: it is already gone.
        assert_eq!(ct::delete(&mut sock, &ours).unwrap(), 0);
        let after = ct::dump(&mut sock, ct::AF_INET).unwrap();
        assert!(
            !after
                .iter()
                .any(|e| e.src == IpAddr::from(lab.attacker().v4())
                    && e.dport == Some(server.port()))
        );
    });
    // The connection itself survives a conntrack delete (a new entry is
    // picked up mid-stream).
    assert!(conn.is_alive());
}

#[test]
fn tcp_sockets_are_listed_and_destroyed() {
    if !require_root_and(&[]) {
        return;
    }
    let lab = Lab::new();
    let victim = lab.victim();
    let server = TcpServer::start(victim, 0);
    let to = SocketAddr::new(victim.v4().into(), server.port());
    let mut conn = Established::open(lab.attacker(), to).unwrap();
    let to6 = SocketAddr::new(victim.v6().into(), server.port());
    let mut conn6 = Established::open(lab.attacker(), to6).unwrap();
    let attacker4 = IpAddr::from(lab.attacker().v4());
    let attacker6 = IpAddr::from(lab.attacker().v6());
    victim.run(|| {
        let mut sock = Socket::sock_diag().unwrap();
        // The server is dual-stack, so both connections are IPv6 sockets,
        // the IPv4 one with a mapped address.
        let socks =
            diag::dump_tcp(&mut sock, libc::AF_INET6 as u8, diag::CONNECTED_STATES).unwrap();
        let v4: Vec<_> = socks
            .iter()
            .filter(|s| s.remote_ip() == attacker4)
            .cloned()
            .collect();
        assert_eq!(v4.len(), 1, "{socks:?}");
        assert_eq!(v4[0].state, diag::state::ESTABLISHED);
        assert_eq!(v4[0].local.port(), server.port());
        let listening =
            diag::dump_tcp(&mut sock, libc::AF_INET6 as u8, 1 << diag::state::LISTEN).unwrap();
        assert!(listening.iter().any(|s| s.local.port() == server.port()));
        assert_eq!(diag::destroy(&mut sock, &v4).unwrap(), 1);
        assert_eq!(diag::destroy(&mut sock, &v4).unwrap(), 0, "already gone");
    });
    assert_eq!(conn.check(Duration::from_secs(2)), ConnState::Reset);
    assert!(conn6.is_alive(), "the other connection is untouched");
    victim.run(|| {
        let mut sock = Socket::sock_diag().unwrap();
        let socks =
            diag::dump_tcp(&mut sock, libc::AF_INET6 as u8, diag::CONNECTED_STATES).unwrap();
        let v6: Vec<_> = socks
            .into_iter()
            .filter(|s| s.remote_ip() == attacker6)
            .collect();
        assert_eq!(diag::destroy(&mut sock, &v6).unwrap(), 1);
    });
    assert_eq!(conn6.check(Duration::from_secs(2)), ConnState::Reset);
}

//! palisade-netlink's ipset messages against the real kernel, each test in
//! its own network namespace (ipset sets are per namespace). Root only;
//! the `ipset` tool serves as an independent observer.

use std::net::IpAddr;

use palisade_lab::{Netns, require_root_and};
use palisade_netlink::Socket;
use palisade_netlink::ipset::{
    self, Batch, CreateSpec, Elem, MAX_TIMEOUT_SECS, NFPROTO_IPV4, NFPROTO_IPV6, Op, cadt_flags,
    err,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(name: &str, type_name: &str, family: u8) -> CreateSpec {
    CreateSpec {
        name: name.into(),
        type_name: type_name.into(),
        family,
        ..Default::default()
    }
}

#[test]
fn created_set_looks_like_the_ipset_tools() {
    if !require_root_and(&["ipset"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let (max, min) = ipset::protocol_version(&mut sock).unwrap();
        assert!(max >= 7 && min <= 7, "protocol {min}..{max}");
        let (_, rev) = ipset::type_revisions(&mut sock, "hash:ip", NFPROTO_IPV4).unwrap();
        assert!(rev >= 4);
        let bad = ipset::type_revisions(&mut sock, "hash:nonsense", NFPROTO_IPV4).unwrap_err();
        assert!(bad.to_string().contains("IPSET_ERR_FIND_TYPE"), "{bad}");
        // diswall's block list.
        let s = CreateSpec {
            timeout: Some(86_400),
            maxelem: Some(1_000_000),
            hashsize: Some(32_768),
            ..spec("diswall-bl", "hash:ip", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &s, true).unwrap();
        ipset::create(&mut sock, &s, true).expect("-exist: creating it again is fine");
        let again = ipset::create(&mut sock, &s, false).unwrap_err();
        assert_eq!(again.errno(), libc::EEXIST, "{again}");
        // diswall's allow list.
        let wl = CreateSpec {
            cadt_flags: cadt_flags::WITH_COMMENT,
            ..spec("diswall-wl", "hash:net", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &wl, true).unwrap();
        let h = ipset::header(&mut sock, "diswall-bl").unwrap().unwrap();
        assert_eq!(h.type_name, "hash:ip");
        assert_eq!(h.family, NFPROTO_IPV4);
        assert_eq!(h.timeout, Some(86_400));
        assert_eq!(h.maxelem, Some(1_000_000));
        assert_eq!(h.hashsize, Some(32_768));
        assert_eq!(h.elements, Some(0));
        assert!(!h.has_comment());
        let h = ipset::header(&mut sock, "diswall-wl").unwrap().unwrap();
        assert!(h.has_comment() && !h.has_timeout());
        assert_eq!(ipset::header(&mut sock, "nope").unwrap(), None);
    });
    let out = ns.exec("ipset", &["list", "-t", "diswall-bl"]);
    assert!(out.contains("Type: hash:ip"), "{out}");
    assert!(
        out.contains("family inet hashsize 32768 maxelem 1000000 timeout 86400"),
        "{out}"
    );
    let out = ns.exec("ipset", &["list", "-t", "diswall-wl"]);
    assert!(
        out.contains("Type: hash:net") && out.contains("comment"),
        "{out}"
    );
}

#[test]
fn bulk_add_refresh_and_delete() {
    if !require_root_and(&["ipset"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let s = CreateSpec {
            timeout: Some(600),
            cadt_flags: cadt_flags::WITH_COMMENT,
            ..spec("b4", "hash:ip", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &s, false).unwrap();
        ipset::create(
            &mut sock,
            &CreateSpec {
                timeout: Some(0),
                ..spec("n6", "hash:net", NFPROTO_IPV6)
            },
            false,
        )
        .unwrap();
        let mut b = Batch::new();
        for i in 0..10_000u32 {
            let addr = IpAddr::V4((0xc612_0000 + i).into()); // 198.18.x.y
            b.push(
                Op::Add,
                "b4",
                &Elem {
                    addr,
                    cidr: None,
                    timeout: Some(100 + i % 50),
                    comment: Some("sshd"),
                },
            );
        }
        b.push(
            Op::Add,
            "n6",
            &Elem {
                addr: ip("2001:db8:1::"),
                cidr: Some(48),
                timeout: Some(0),
                comment: None,
            },
        );
        assert!(b.send(&mut sock).unwrap().is_empty());
        assert!(b.is_empty());
        let h = ipset::header(&mut sock, "b4").unwrap().unwrap();
        assert_eq!(h.elements, Some(10_000));
        assert!(ipset::test(&mut sock, "b4", ip("198.18.0.9"), None).unwrap());
        assert!(!ipset::test(&mut sock, "b4", ip("198.19.0.9"), None).unwrap());
        assert!(ipset::test(&mut sock, "n6", ip("2001:db8:1::5"), None).unwrap());
        // A repeated add refreshes the timeout (-exist) and the comment.
        b.push(
            Op::Add,
            "b4",
            &Elem {
                addr: ip("198.18.0.9"),
                cidr: None,
                timeout: Some(5000),
                comment: Some("again"),
            },
        );
        // Deleting something absent is no error (-exist).
        b.push(Op::Del, "b4", &Elem::addr(ip("198.18.0.10")));
        b.push(Op::Del, "b4", &Elem::addr(ip("203.0.113.1")));
        assert!(b.send(&mut sock).unwrap().is_empty());
        let members = ipset::members(&mut sock, "b4").unwrap();
        assert_eq!(members.len(), 9_999);
        let m = members.iter().find(|m| m.addr == ip("198.18.0.9")).unwrap();
        assert!(m.timeout.unwrap() > 4000, "{m:?}");
        assert_eq!(m.comment.as_deref(), Some("again"));
        let n = &ipset::members(&mut sock, "n6").unwrap()[0];
        assert_eq!(
            (n.to_string(), n.timeout),
            ("2001:db8:1::/48".into(), Some(0))
        );
    });
    let out = ns.exec("ipset", &["list", "b4"]);
    assert!(
        out.contains("198.18.0.9 timeout") && out.contains("comment \"again\""),
        "{}",
        &out[..500.min(out.len())]
    );
}

#[test]
fn timeouts_above_the_maximum_are_capped_by_the_kernel() {
    if !require_root_and(&["ipset"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let s = CreateSpec {
            timeout: Some(60),
            ..spec("t", "hash:ip", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &s, false).unwrap();
        let mut b = Batch::new();
        b.push(
            Op::Add,
            "t",
            &Elem {
                addr: ip("198.18.0.1"),
                cidr: None,
                timeout: Some(u32::MAX),
                comment: None,
            },
        );
        assert!(b.send(&mut sock).unwrap().is_empty());
        let m = &ipset::members(&mut sock, "t").unwrap()[0];
        let t = m.timeout.unwrap();
        assert!(t <= MAX_TIMEOUT_SECS && t > MAX_TIMEOUT_SECS - 5, "{t}");
    });
}

#[test]
fn failures_name_each_element_and_the_rest_is_applied() {
    if !require_root_and(&["ipset"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let full = CreateSpec {
            maxelem: Some(4),
            hashsize: Some(64),
            ..spec("small", "hash:ip", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &full, false).unwrap();
        let bm = CreateSpec {
            range: Some((ip("198.18.0.0"), ip("198.18.0.255"))),
            ..spec("bm", "bitmap:ip", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &bm, false).unwrap();
        let mut b = Batch::new();
        for i in 1..=10u8 {
            b.push(Op::Add, "small", &Elem::addr(IpAddr::from([198, 18, 1, i])));
        }
        b.push(Op::Add, "bm", &Elem::addr(ip("198.18.0.7")));
        b.push(Op::Add, "bm", &Elem::addr(ip("198.18.9.9")));
        b.push(Op::Add, "bm", &Elem::addr(ip("198.18.0.8")));
        b.push(
            Op::Add,
            "bm",
            &Elem {
                addr: ip("198.18.0.64"),
                cidr: Some(30),
                timeout: None,
                comment: None,
            },
        );
        let failures = b.send(&mut sock).unwrap();
        let small: Vec<_> = failures.iter().filter(|f| f.set == "small").collect();
        assert_eq!(small.len(), 6, "{failures:?}");
        assert!(
            small
                .iter()
                .all(|f| f.code == err::HASH_FULL && f.op == Op::Add)
        );
        let bm: Vec<_> = failures.iter().filter(|f| f.set == "bm").collect();
        assert_eq!(bm.len(), 1, "{failures:?}");
        assert_eq!(
            (bm[0].target(), bm[0].code),
            ("198.18.9.9".into(), err::BITMAP_RANGE)
        );
        let members = ipset::members(&mut sock, "bm").unwrap();
        let mut got: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "198.18.0.64",
                "198.18.0.65",
                "198.18.0.66",
                "198.18.0.67",
                "198.18.0.7",
                "198.18.0.8"
            ]
        );
        let h = ipset::header(&mut sock, "bm").unwrap().unwrap();
        assert_eq!(h.range, Some((ip("198.18.0.0"), ip("198.18.0.255"))));
        assert_eq!(
            ipset::header(&mut sock, "small").unwrap().unwrap().elements,
            Some(4)
        );
        // Deletes still work on a full set.
        b.push(Op::Del, "small", &Elem::addr(ip("198.18.1.1")));
        assert!(b.send(&mut sock).unwrap().is_empty());
        assert_eq!(
            ipset::header(&mut sock, "small").unwrap().unwrap().elements,
            Some(3)
        );
    });
}

#[test]
fn swap_exchanges_contents_under_the_names() {
    if !require_root_and(&["ipset", "iptables"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let s = CreateSpec {
            timeout: Some(0),
            ..spec("live", "hash:net", NFPROTO_IPV4)
        };
        ipset::create(&mut sock, &s, false).unwrap();
        let mut b = Batch::new();
        b.push(Op::Add, "live", &Elem::addr(ip("198.18.0.1")));
        b.send(&mut sock).unwrap();
    });
    // A rule refers to the set, as an operator's firewall would.
    ns.exec(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-m",
            "set",
            "--match-set",
            "live",
            "src",
            "-j",
            "DROP",
        ],
    );
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        let h = ipset::header(&mut sock, "live").unwrap().unwrap();
        assert_eq!(h.references, Some(1));
        ipset::create(&mut sock, &CreateSpec::like(&h, "live-tmp"), false).unwrap();
        let mut b = Batch::new();
        b.push(Op::Add, "live-tmp", &Elem::addr(ip("198.18.0.2")));
        b.send(&mut sock).unwrap();
        ipset::swap(&mut sock, "live", "live-tmp").unwrap();
        let busy = ipset::destroy(&mut sock, "live").unwrap_err();
        assert!(busy.to_string().contains("an iptables rule"), "{busy}");
        ipset::destroy(&mut sock, "live-tmp").unwrap();
        let m = ipset::members(&mut sock, "live").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].addr, ip("198.18.0.2"));
        assert_eq!(
            ipset::header(&mut sock, "live")
                .unwrap()
                .unwrap()
                .references,
            Some(1)
        );
        let e = ipset::destroy(&mut sock, "live-tmp").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        ipset::flush(&mut sock, "live").unwrap();
        assert!(ipset::members(&mut sock, "live").unwrap().is_empty());
    });
}

#[test]
fn ipv6_hash_ip_takes_addresses_only() {
    if !require_root_and(&["ipset"]) {
        return;
    }
    let ns = Netns::new();
    ns.run(|| {
        let mut sock = Socket::netfilter().unwrap();
        ipset::create(
            &mut sock,
            &CreateSpec {
                timeout: Some(60),
                ..spec("h6", "hash:ip", NFPROTO_IPV6)
            },
            false,
        )
        .unwrap();
        let mut b = Batch::new();
        b.push(Op::Add, "h6", &Elem::addr(ip("2001:db8::7")));
        b.push(
            Op::Add,
            "h6",
            &Elem {
                addr: ip("2001:db8:1::"),
                cidr: Some(64),
                timeout: None,
                comment: None,
            },
        );
        b.push(Op::Add, "h6", &Elem::addr(ip("198.18.0.1")));
        let f = b.send(&mut sock).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(ipset::test(&mut sock, "h6", ip("2001:db8::7"), None).unwrap());
    });
}

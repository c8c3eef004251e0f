//! Where the nftables enforcer drops: before connection tracking and DNAT
//! (the prerouting chain), optionally at an interface's ingress or in its
//! driver (the XDP drop), and the
//! upgrade from the earlier input/forward layout without a gap. Real
//! kernel, real traffic, lab namespaces; root only.
//!
//! Observers are independent of palisade: counters in tables of their own
//! (`nft -j list chain`) placed before and after palisade's chains, and
//! `conntrack -L`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use palisade_enforce::nftables::{NftablesEnforcer, NftablesOptions};
use palisade_enforce::{Change, Enforcer, Entry};
use palisade_lab::{
    Lab, LabBuilder, Netns, Proc, TcpServer, ping, require_root_and, tcp_connect, wait_until,
};
use palisade_model::{Action, Net};
use serde_json::Value;

/// Runs `program ARGS` here (not in a lab namespace), which must succeed;
/// returns its output.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `ip ARGS` (split at spaces), which must succeed.
fn ip(args: &str) {
    run("ip", &args.split(' ').collect::<Vec<_>>());
}

/// A decision without expiry.
fn decision(action: Action, net: &str) -> Entry {
    Entry {
        action,
        net: net.parse().unwrap(),
        expires: None,
        comment: None,
        rule: None,
        list: None,
    }
}

/// An enforcer for `ns` that loaded `entries`, both in `ns` (as the agent
/// does: an XDP drop attaches to the interfaces of its namespace).
fn load(ns: &Netns, config: NftablesOptions, entries: Vec<Entry>) -> NftablesEnforcer {
    ns.run(|| {
        let mut nft = NftablesEnforcer::new(config).expect("open netlink");
        nft.replace_all(&mut entries.into_iter())
            .expect("replace_all");
        nft
    })
}

/// Packets counted by the first counter of `chain` in `table inet TABLE`.
fn counted(ns: &Netns, table: &str, chain: &str) -> u64 {
    let out = ns.exec("nft", &["-j", "list", "chain", "inet", table, chain]);
    let v: Value = serde_json::from_str(&out).expect("nft -j output");
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .find_map(|e| e.get("counter").map(|c| c["packets"].as_u64().unwrap()))
        .expect("a counter")
}

/// Counters for the packets of `source` in `table inet observe`: `early`
/// before everything (priority -400), `tracked` right after conntrack when
/// it made an entry (`ct state new`, -150), `passed` after palisade's input
/// chain (input, 100). The host table also tracks connections, as the
/// firewall of a typical server does, so conntrack is on.
fn observe(ns: &Netns, source: IpAddr) {
    let ip = if source.is_ipv4() { "ip" } else { "ip6" };
    ns.exec(
        "nft",
        &[&format!(
            "add table inet observe
             add chain inet observe early {{ type filter hook prerouting priority -400; }}
             add rule inet observe early {ip} saddr {source} counter
             add chain inet observe tracked {{ type filter hook prerouting priority -150; }}
             add rule inet observe tracked {ip} saddr {source} ct state new counter
             add chain inet observe passed {{ type filter hook input priority 100; }}
             add rule inet observe passed {ip} saddr {source} counter
             add chain inet observe host {{ type filter hook input priority 0; }}
             add rule inet observe host ct state established,related accept"
        )],
    );
}

/// Sends UDP datagrams from `from` to `to` until `stop`; returns how many.
fn flood(from: &Netns, to: SocketAddr, stop: &AtomicBool, sent: &AtomicU64) {
    from.run(|| {
        let sock = UdpSocket::bind(SocketAddr::new(
            if to.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            },
            0,
        ))
        .unwrap();
        let mut port = 1024u16;
        while !stop.load(Ordering::Relaxed) {
            // A new source port each time: each datagram is a new flow,
            // which conntrack would have to track.
            port = port.wrapping_add(1).max(1024);
            let to = SocketAddr::new(to.ip(), port);
            if sock.send_to(b"flood", to).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

#[test]
fn a_banned_flood_never_reaches_conntrack() {
    if !require_root_and(&["nft", "conntrack"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let source = IpAddr::from(attacker.v4());
    observe(victim, source);
    let server = TcpServer::start(victim, 0);
    let to = SocketAddr::new(victim.v4().into(), server.port());
    let mut nft = load(
        victim,
        NftablesOptions::default(),
        vec![decision(Action::Ban, &source.to_string())],
    );
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| flood(attacker, to, &stop, &sent));
        for _ in 0..5 {
            assert!(!tcp_connect(attacker, to, Duration::from_millis(200)));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    let arrived = counted(victim, "observe", "early");
    assert!(arrived > 1000, "the flood arrived: {arrived} packets");
    assert_eq!(
        counted(victim, "observe", "tracked"),
        0,
        "conntrack entries"
    );
    assert_eq!(counted(victim, "observe", "passed"), 0);
    let listed = victim.exec("conntrack", &["-L", "-s", &source.to_string()]);
    assert!(listed.trim().is_empty(), "{listed}");
    // The observers see the same traffic once the ban is lifted.
    nft.apply(&[Change::Remove {
        action: Action::Ban,
        net: Net::host(source),
    }])
    .unwrap();
    assert!(tcp_connect(attacker, to, Duration::from_secs(1)));
    assert!(counted(victim, "observe", "tracked") >= 1);
    assert!(counted(victim, "observe", "passed") >= 1);
}

/// The table of earlier versions: the same sets, chains on the input and
/// forward hooks.
fn old_layout(banned: &str) -> String {
    let rules = "ip saddr @allow4 accept; ip6 saddr @allow6 accept; \
                 ip saddr @block4 drop; ip6 saddr @block6 drop; \
                 ip saddr @block4_net drop; ip6 saddr @block6_net drop;";
    format!(
        "table inet palisade
         delete table inet palisade
         table inet palisade {{
           set allow4 {{ type ipv4_addr; flags interval,timeout; }}
           set allow6 {{ type ipv6_addr; flags interval,timeout; }}
           set block4 {{ type ipv4_addr; flags timeout; elements = {{ {banned} }} }}
           set block6 {{ type ipv6_addr; flags timeout; }}
           set block4_net {{ type ipv4_addr; flags interval,timeout; }}
           set block6_net {{ type ipv6_addr; flags interval,timeout; }}
           chain input {{ type filter hook input priority -10; policy accept; {rules} }}
           chain forward {{ type filter hook forward priority -10; policy accept; {rules} }}
         }}"
    )
}

#[test]
fn upgrading_from_the_input_layout_leaves_no_gap() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let source = IpAddr::from(attacker.v4());
    observe(victim, source);
    let to = SocketAddr::new(victim.v4().into(), 9);
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let switches = 30;
    // The old layout, as an agent of an earlier version left it...
    let old = old_layout(&source.to_string());
    victim.exec("nft", &[&old]);
    // The kernel's own account of the chain changes, for the first switch.
    let mut monitor = Proc::spawn({
        let mut c = victim.command("nft");
        c.args(["monitor", "chains"]);
        c
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::thread::scope(|s| {
        s.spawn(|| flood(attacker, to, &stop, &sent));
        for round in 0..switches {
            if round == 1 {
                // Bridged: the old chains' copies came with prerouting and
                // went once it was active.
                let changes = monitor.stdout();
                for line in [
                    "add chain inet palisade upgrade_input",
                    "add chain inet palisade upgrade_forward",
                    "delete chain inet palisade upgrade_input",
                    "delete chain inet palisade upgrade_forward",
                ] {
                    assert!(changes.contains(line), "{line}: {changes}");
                }
                monitor.stop();
            }
            if round > 0 {
                victim.exec("nft", &[&old]);
            }
            let before = counted(victim, "observe", "early");
            // ...and the start of this one, under the flood.
            let nft = load(
                victim,
                NftablesOptions::default(),
                vec![decision(Action::Ban, &source.to_string())],
            );
            drop(nft);
            assert!(
                wait_until(Duration::from_secs(2), || counted(
                    victim, "observe", "early"
                ) > before),
                "the flood goes on during the switch"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let arrived = counted(victim, "observe", "early");
    assert!(arrived > 1000, "{arrived}");
    assert_eq!(
        counted(victim, "observe", "passed"),
        0,
        "no banned packet passed in {switches} switches ({arrived} packets arrived)"
    );
    let chains = victim.exec("nft", &["list", "table", "inet", "palisade"]);
    assert!(
        chains.contains("hook prerouting") && !chains.contains("hook input"),
        "{chains}"
    );
}

#[test]
fn ingress_chains_drop_before_prerouting_on_named_interfaces() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let source = IpAddr::from(attacker.v6());
    observe(victim, source);
    // An interface only the victim's namespace has: the enforcer looks
    // interfaces up where its table lives, whichever thread loads it.
    ip(&format!(
        "-n {} link add palx0 type veth peer name palx1",
        victim.ns_name()
    ));
    let config = NftablesOptions {
        ingress_devices: vec!["eth0".into(), "absent0".into(), "palx0".into()],
        ..NftablesOptions::default()
    };
    let mut nft = load(
        victim,
        config,
        vec![decision(Action::Ban, &source.to_string())],
    );
    let chain = victim.exec(
        "nft",
        &["list", "chain", "inet", "palisade", "ingress_eth0"],
    );
    assert!(
        chain.contains("type filter hook ingress device \"eth0\" priority -500; policy accept;")
            && chain.contains("ip6 saddr @block6 drop"),
        "{chain}"
    );
    // A missing interface is left out; the rest of the table is there.
    let table = victim.exec("nft", &["list", "table", "inet", "palisade"]);
    assert!(
        !table.contains("absent0")
            && table.contains("chain ingress_palx0")
            && table.contains("chain prerouting"),
        "{table}"
    );
    assert!(!ping(attacker, victim.v6().into()));
    assert_eq!(
        counted(victim, "observe", "early"),
        0,
        "dropped at the interface, before any prerouting chain"
    );
    nft.apply(&[Change::Remove {
        action: Action::Ban,
        net: Net::host(source),
    }])
    .unwrap();
    // Neighbour discovery from the banned address was dropped too, so the
    // first echo may wait for it to recover.
    assert!(wait_until(Duration::from_secs(5), || ping(
        attacker,
        victim.v6().into()
    )));
    assert!(counted(victim, "observe", "early") >= 1);
}

/// Whether `dev` in `ns` runs an XDP program, as `ip link` reports it.
fn runs_xdp(ns: &Netns, dev: &str) -> bool {
    ns.exec("ip", &["-d", "link", "show", "dev", dev])
        .contains("prog/xdp")
}

/// The id of the map called `name` of the XDP program on `dev` in `ns`.
fn xdp_map(ns: &Netns, dev: &str, name: &str) -> String {
    let link = ns.exec("ip", &["-d", "link", "show", "dev", dev]);
    let prog = link
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no XDP program on {dev}: {link}"));
    let bpftool = |args: &[&str]| -> Value {
        let json = run("bpftool", &[&["--json"], args].concat());
        serde_json::from_slice(&json).unwrap()
    };
    let info = bpftool(&["prog", "show", "id", prog]);
    info["map_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .find(|id| bpftool(&["map", "show", "id", id])["name"] == name)
        .unwrap_or_else(|| panic!("no map {name} in {info}"))
}

#[test]
fn the_xdp_drop_drops_banned_sources_before_the_kernel_sees_them_and_never_more_than_the_table() {
    if !require_root_and(&["nft", "ping", "bpftool"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let (a4, a6) = (IpAddr::from(attacker.v4()), IpAddr::from(attacker.v6()));
    let to4: IpAddr = victim.v4().into();
    let to6: IpAddr = victim.v6().into();
    observe(victim, a4);
    let config = NftablesOptions {
        xdp_devices: vec!["eth0".into(), "absent0".into()],
        ..NftablesOptions::default()
    };
    let mut nft = load(victim, config, vec![decision(Action::Ban, &a4.to_string())]);
    assert!(
        runs_xdp(victim, "eth0"),
        "attached to eth0; the missing interface is left out"
    );
    // The table holds the ban too: it is the authority, XDP a copy.
    let table = victim.exec("nft", &["list", "set", "inet", "palisade", "block4"]);
    assert!(table.contains(&a4.to_string()), "{table}");
    assert!(!ping(attacker, to4));
    assert_eq!(
        counted(victim, "observe", "early"),
        0,
        "dropped in the driver, before any hook of the kernel's stack"
    );
    assert!(
        nft.drift(false).unwrap().is_empty(),
        "the maps agree with the table"
    );

    // Another root tool writes a ban the table does not hold into the
    // drop's map, and tries to detach the drop: the drift check names the
    // element and its repair removes it; the detach is refused.
    let map = xdp_map(victim, "eth0", "pal_host4");
    let forever = ["255"; 8];
    let mut args = vec![
        "map", "update", "id", &map, "key", "198", "19", "0", "99", "value",
    ];
    args.extend(forever);
    run("bpftool", &args);
    let drift = nft.drift(true).unwrap();
    assert_eq!(
        drift.to_string(),
        "xdp host4: 0 missing, 1 extra (extra 198.19.0.99)"
    );
    assert!(nft.drift(false).unwrap().is_empty(), "repaired");
    let off = victim.output("ip", &["link", "set", "dev", "eth0", "xdp", "off"]);
    assert!(!off.status.success() && runs_xdp(victim, "eth0"));
    assert!(!ping(attacker, to4), "still dropped after the repair");

    // More bans than the maps have room for (they start with 4,096 per
    // family): a full map is loaded again with more room, and the drift
    // check finds every ban there.
    let many: Vec<Change> = (0..6000u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0xC613_8000 + i);
            Change::Put(decision(Action::Ban, &a.to_string()))
        })
        .collect();
    nft.apply(&many).unwrap();
    assert!(
        nft.drift(false).unwrap().is_empty(),
        "all 6,001 bans in the maps"
    );
    let lifted: Vec<Change> = many
        .iter()
        .map(|c| match c {
            Change::Put(e) => Change::Remove {
                action: e.action,
                net: e.net,
            },
            Change::Remove { .. } => unreachable!(),
        })
        .collect();
    nft.apply(&lifted).unwrap();
    assert!(nft.drift(false).unwrap().is_empty());

    let host4 = Net::host(a4);
    let put = |action, net: Net, expires| {
        Change::Put(Entry {
            expires,
            ..decision(action, &net.to_string())
        })
    };
    // An allow wins at once, and its removal brings the drop back.
    nft.apply(&[put(Action::Allow, host4, None)]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || ping(attacker, to4)));
    nft.apply(&[Change::Remove {
        action: Action::Allow,
        net: host4,
    }])
    .unwrap();
    assert!(!ping(attacker, to4));
    // An unban passes at once.
    nft.apply(&[Change::Remove {
        action: Action::Ban,
        net: host4,
    }])
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || ping(attacker, to4)));
    // A ban that ends: its deadline in the map is not later than the
    // table's (the drift check says so), and it ends in both.
    let soon = palisade_model::Timestamp::now().saturating_add(Duration::from_secs(6));
    nft.apply(&[put(Action::Ban, host4, Some(soon))]).unwrap();
    assert!(!ping(attacker, to4));
    assert!(nft.drift(false).unwrap().is_empty());
    assert!(
        wait_until(Duration::from_secs(12), || ping(attacker, to4)),
        "the ban ended"
    );

    // IPv6 attackers by their /64, in the trie of networks.
    let net6 = Net::truncating(a6, 64);
    assert!(ping(attacker, to6));
    nft.apply(&[put(Action::Ban, net6, None)]).unwrap();
    assert!(!ping(attacker, to6));
    assert!(nft.drift(false).unwrap().is_empty());
    // A full load keeps the drop and its contents; run where the agent runs
    // it (in the namespace the enforcer was made for), it also tries the
    // missing interface again, and one that appeared gets the drop too.
    ip(&format!(
        "-n {} link add absent0 type veth peer name absent1",
        victim.ns_name()
    ));
    victim.run(|| {
        nft.replace_all(&mut vec![decision(Action::Ban, &net6.to_string())].into_iter())
            .unwrap()
    });
    assert!(runs_xdp(victim, "eth0") && runs_xdp(victim, "absent0"));
    assert!(!ping(attacker, to6));
    assert!(
        ping(attacker, to4),
        "only what the full load holds is dropped"
    );

    // Removing the table removes the drop first; the next full load
    // attaches it again. The drop ends with the enforcer (the agent's
    // process): nothing of palisade stays in the driver.
    nft.remove().unwrap();
    assert!(!runs_xdp(victim, "eth0"));
    assert!(wait_until(Duration::from_secs(5), || ping(attacker, to6)));
    victim
        .run(|| nft.replace_all(&mut vec![decision(Action::Ban, &net6.to_string())].into_iter()))
        .unwrap();
    assert!(runs_xdp(victim, "eth0") && !ping(attacker, to6));
    drop(nft);
    assert!(!runs_xdp(victim, "eth0"));
}

#[test]
fn a_dnat_published_container_port_is_closed_to_banned_sources_only() {
    if !require_root_and(&["nft"]) {
        return;
    }
    // Clients on one LAN with the server (198.18.0.1-4); behind the server a
    // "container" namespace on its own bridge-like link (198.19.0.0/24),
    // published the way Docker does it: DNAT in a table of its own, then
    // forwarded.
    let lab = LabBuilder::new()
        .hosts(["banned", "allowed", "other", "server"])
        .build();
    let server = lab.host("server");
    let container = Netns::new();
    let (host, ctr) = (server.ns_name(), container.name());
    for args in [
        format!("link add ctr0 netns {host} type veth peer name eth0 netns {ctr}"),
        format!("-n {host} addr add 198.19.0.1/24 dev ctr0"),
        format!("-n {host} link set ctr0 up"),
        format!("-n {ctr} addr add 198.19.0.2/24 dev eth0"),
        format!("-n {ctr} link set eth0 up"),
        format!("-n {ctr} route add default via 198.19.0.1"),
    ] {
        ip(&args);
    }
    server
        .run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
        .expect("enable forwarding in the server's namespace");
    server.exec(
        "nft",
        &["add table ip docker
           add chain ip docker prerouting { type nat hook prerouting priority dstnat; }
           add rule ip docker prerouting tcp dport 8080 dnat to 198.19.0.2:80"],
    );
    let app = TcpServer::start(&container, 80);
    let published = SocketAddr::new(server.v4().into(), 8080);
    let t = Duration::from_millis(800);
    for h in ["banned", "allowed", "other"] {
        assert!(tcp_connect(lab.host(h), published, t), "{h} before any ban");
    }
    let (banned, allowed) = (lab.host("banned").v4(), lab.host("allowed").v4());
    assert_eq!(
        banned.to_string(),
        "198.18.0.1",
        "hosts are numbered in order"
    );
    let _nft = load(
        server,
        NftablesOptions::default(),
        vec![
            // The banned host's network, and the allowed host itself.
            decision(Action::Ban, "198.18.0.0/31"),
            decision(Action::Ban, &allowed.to_string()),
            decision(Action::Allow, &allowed.to_string()),
        ],
    );
    // The container accepts in the background: wait for the three above.
    assert!(wait_until(Duration::from_secs(2), || app.accepted() == 3));
    assert!(
        !tcp_connect(lab.host("banned"), published, t),
        "banned source reached the container"
    );
    assert!(
        tcp_connect(lab.host("allowed"), published, t),
        "allowed wins"
    );
    assert!(tcp_connect(lab.host("other"), published, t), "not banned");
    assert!(wait_until(Duration::from_secs(2), || app.accepted() == 5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(app.accepted(), 5, "only the allowed and the other host");
    // The host's own services are closed to the banned source too.
    let own = TcpServer::start(server, 0);
    let own_addr = SocketAddr::new(server.v4().into(), own.port());
    assert!(!tcp_connect(lab.host("banned"), own_addr, t));
    assert!(tcp_connect(lab.host("other"), own_addr, t));
}

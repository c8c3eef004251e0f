//! The nftables enforcer against the real kernel. Every test builds its own
//! network namespaces (palisade-lab), so kernel state never leaks between
//! tests or onto the host. Root only.
//!
//! `nft -j list table` serves as an independent observer of what the
//! kernel holds.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_enforce::kill::kill_connections;
use palisade_enforce::nftables::{NftablesEnforcer, NftablesOptions, RefreshMode, SetName};
use palisade_enforce::{Change, EnforceError, Enforcer, Entry};
use palisade_lab::{
    ConnState, Established, Lab, LabBuilder, Netns, TcpServer, ping, require_root_and, tcp_connect,
    wait_until,
};
use palisade_model::{Action, Net, Timestamp};
use serde_json::Value;

fn net(s: &str) -> Net {
    s.parse().unwrap()
}

fn entry(action: Action, n: &str, lasts: Option<Duration>, comment: Option<&str>) -> Entry {
    Entry {
        action,
        net: net(n),
        expires: lasts.map(|d| Timestamp::now().saturating_add(d)),
        comment: comment.map(str::to_string),
        rule: None,
        list: None,
    }
}

fn ban(n: &str, lasts: Option<Duration>) -> Change {
    Change::Put(entry(Action::Ban, n, lasts, None))
}

fn unban(n: &str) -> Change {
    Change::Remove {
        action: Action::Ban,
        net: net(n),
    }
}

fn secs(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}

fn enforcer(ns: &Netns) -> NftablesEnforcer {
    ns.run(|| NftablesEnforcer::new(NftablesOptions::default()).expect("open netlink"))
}

fn load(nft: &mut NftablesEnforcer, entries: Vec<Entry>) {
    nft.replace_all(&mut entries.into_iter())
        .expect("replace_all");
}

/// `nft -j list table inet NAME`, as JSON objects.
fn nft_json(ns: &Netns, table: &str) -> Vec<Value> {
    let out = ns.exec("nft", &["-j", "list", "table", "inet", table]);
    let v: Value = serde_json::from_str(&out).expect("nft -j output");
    v["nftables"].as_array().unwrap().clone()
}

/// Elements of a set as `nft -j` gives them: the value, and the object
/// with timeout, expires and comment (`Null` for an element without).
fn nft_set_elems(ns: &Netns, table: &str, set: &str) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for obj in nft_json(ns, table) {
        let Some(s) = obj.get("set") else { continue };
        if s["name"] != set {
            continue;
        }
        for e in s["elem"].as_array().cloned().unwrap_or_default() {
            out.push(match e.get("elem") {
                Some(inner) => (inner["val"].clone(), inner.clone()),
                None => (e.clone(), Value::Null),
            });
        }
    }
    out
}

/// Elements of a set as nft shows them: "a", "a/len" or "a-b", with the
/// timeout (s) and comment.
fn nft_elements(ns: &Netns, table: &str, set: &str) -> Vec<(String, Option<u64>, Option<String>)> {
    nft_set_elems(ns, table, set)
        .into_iter()
        .map(|(val, e)| {
            (
                show_val(&val),
                e["timeout"].as_u64(),
                e["comment"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn show_val(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_string();
    }
    if let Some(p) = v.get("prefix") {
        return format!("{}/{}", p["addr"].as_str().unwrap(), p["len"]);
    }
    if let Some(r) = v.get("range") {
        return format!("{}-{}", r[0].as_str().unwrap(), r[1].as_str().unwrap());
    }
    panic!("unexpected element {v}")
}

fn names(elems: &[(String, Option<u64>, Option<String>)]) -> Vec<String> {
    let mut v: Vec<String> = elems.iter().map(|e| e.0.clone()).collect();
    v.sort();
    v
}

#[test]
fn layout_matches_the_specification() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(
        &mut nft,
        vec![
            entry(Action::Ban, "198.18.0.7", None, Some("sshd")),
            entry(Action::Ban, "198.18.1.0/24", None, None),
            entry(Action::Ban, "2001:db8::66", None, None),
            entry(Action::Allow, "198.18.2.0/24", None, Some("office")),
            entry(Action::Allow, "2001:db8:1::/48", None, None),
        ],
    );
    let text = ns.exec("nft", &["list", "table", "inet", "palisade"]);
    let want = r#"table inet palisade {
	set allow4 {
		type ipv4_addr
		flags interval,timeout
		gc-interval 30s
		elements = { 198.18.2.0/24 comment "office" }
	}

	set allow6 {
		type ipv6_addr
		flags interval,timeout
		gc-interval 30s
		elements = { 2001:db8:1::/48 }
	}

	set block4 {
		type ipv4_addr
		flags timeout
		gc-interval 30s
		elements = { 198.18.0.7 comment "sshd" }
	}

	set block6 {
		type ipv6_addr
		flags timeout
		gc-interval 30s
		elements = { 2001:db8::66 }
	}

	set block4_net {
		type ipv4_addr
		flags interval,timeout
		gc-interval 30s
		elements = { 198.18.1.0/24 }
	}

	set block6_net {
		type ipv6_addr
		flags interval,timeout
		gc-interval 30s
	}

	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip saddr @allow4 accept
		ip6 saddr @allow6 accept
		ip saddr @block4 drop
		ip6 saddr @block6 drop
		ip saddr @block4_net drop
		ip6 saddr @block6_net drop
	}
}
"#;
    assert_eq!(text, want);
    // The same through the JSON view: chain hooks, priorities, policies.
    let json = nft_json(&ns, "palisade");
    let chains: Vec<&Value> = json.iter().filter_map(|o| o.get("chain")).collect();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0]["type"], "filter");
    assert_eq!(chains[0]["hook"], "prerouting");
    assert_eq!(chains[0]["prio"], -300);
    assert_eq!(chains[0]["policy"], "accept");
    let rules = json.iter().filter(|o| o.get("rule").is_some()).count();
    assert_eq!(rules, 6);
    // A configured table name and priorities are honoured.
    let ns2 = Netns::new();
    let mut other = ns2.run(|| {
        NftablesEnforcer::new(NftablesOptions {
            table: "pal2".into(),
            priority: 5,
            prerouting_priority: -350,
            probe_log_group: Some(7405),
            ..NftablesOptions::default()
        })
        .unwrap()
    });
    load(&mut other, vec![]);
    let prio = |hook: &str| {
        nft_json(&ns2, "pal2")
            .iter()
            .filter_map(|o| o.get("chain"))
            .find(|c| c["hook"] == hook)
            .map(|c| c["prio"].clone())
    };
    assert_eq!(prio("prerouting"), Some(Value::from(-350)));
    assert_eq!(prio("input"), Some(Value::from(5)));
}

#[test]
fn probe_logging_rules_read_back_as_written() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = ns.run(|| {
        NftablesEnforcer::new(NftablesOptions {
            probe_log_group: Some(7405),
            ..NftablesOptions::default()
        })
        .unwrap()
    });
    load(&mut nft, vec![]);
    let input = ns.exec("nft", &["list", "chain", "inet", "palisade", "input"]);
    let prerouting = ns.exec("nft", &["list", "chain", "inet", "palisade", "prerouting"]);
    let rules: Vec<&str> = input
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("saddr") || l.contains("log group") || l.contains("hook"))
        .collect();
    // After conntrack (the UDP rule needs `ct state new`): allowed sources
    // are accepted, then the two logging rules, in that order. Banned
    // sources never get here, prerouting dropped them.
    assert_eq!(
        rules,
        [
            "type filter hook input priority filter - 10; policy accept;",
            "ip saddr @allow4 accept",
            "ip6 saddr @allow6 accept",
            "iifname != \"lo\" tcp flags syn / fin,syn,rst,ack limit rate 200/second burst 400 packets log group 7405",
            "iifname != \"lo\" meta l4proto udp ct state new limit rate 200/second burst 400 packets log group 7405",
        ],
        "{input}"
    );
    assert!(
        !prerouting.contains("log group") && prerouting.contains("@block4 drop"),
        "prerouting drops and does not log: {prerouting}"
    );
}

#[test]
fn ban_blocks_tcp_and_ping_in_both_families_and_unban_restores() {
    if !require_root_and(&["nft", "ping"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let server = TcpServer::start(victim, 0);
    let to4 = SocketAddr::new(victim.v4().into(), server.port());
    let to6 = SocketAddr::new(victim.v6().into(), server.port());
    let t = Duration::from_millis(700);
    let mut nft = enforcer(victim);
    load(&mut nft, vec![]);
    assert!(ping(attacker, victim.v4().into()) && tcp_connect(attacker, to4, t));

    let a4 = attacker.v4().to_string();
    let a6 = attacker.v6().to_string();
    nft.apply(&[ban(&a4, secs(600))]).unwrap();
    assert!(!ping(attacker, victim.v4().into()), "v4 ping blocked");
    assert!(!tcp_connect(attacker, to4, t), "v4 tcp blocked");
    assert!(ping(attacker, victim.v6().into()), "v6 still open");
    assert!(tcp_connect(attacker, to6, t));

    nft.apply(&[ban(&a6, None)]).unwrap();
    assert!(!ping(attacker, victim.v6().into()), "v6 ping blocked");
    assert!(!tcp_connect(attacker, to6, t), "v6 tcp blocked");

    nft.apply(&[unban(&a4), unban(&a6)]).unwrap();
    assert!(ping(attacker, victim.v4().into()));
    assert!(ping(attacker, victim.v6().into()));
    assert!(tcp_connect(attacker, to4, t) && tcp_connect(attacker, to6, t));
    assert!(nft_elements(victim, "palisade", "block4").is_empty());
}

#[test]
fn refreshed_ban_gets_the_new_timeout_in_both_modes() {
    if !require_root_and(&["nft"]) {
        return;
    }
    for mode in [RefreshMode::Update, RefreshMode::Replace] {
        let ns = Netns::new();
        let mut nft = enforcer(&ns);
        nft.set_refresh_mode(mode);
        load(&mut nft, vec![]);
        nft.apply(&[ban("198.18.0.9", secs(60))]).unwrap();
        // The timeout is what is left of the ban when it is applied: the
        // time from making the ban to applying it comes off (a loaded
        // machine read 59).
        let t = nft_elements(&ns, "palisade", "block4")[0].1.unwrap();
        assert!(t <= 60 && t + 2 >= 60, "{mode:?}: timeout {t}, want 60");
        for (lasts, want) in [(600, 600), (30, 30)] {
            nft.apply(&[ban("198.18.0.9", secs(lasts))]).unwrap();
            let elems = nft_elements(&ns, "palisade", "block4");
            assert_eq!(elems.len(), 1, "{mode:?}: {elems:?}");
            let t = elems[0].1.unwrap();
            assert!(
                t <= want && t + 2 >= want,
                "{mode:?}: timeout {t}, want {want}"
            );
            let k = nft.kernel_intervals(SetName::Block4).unwrap();
            let left = k[0].expires_in.unwrap().as_secs();
            assert!(left <= want && left + 2 >= want, "{mode:?}: {left}s left");
        }
        // From a timeout to forever and back.
        nft.apply(&[ban("198.18.0.9", None)]).unwrap();
        let elems = nft_elements(&ns, "palisade", "block4");
        assert_eq!(elems[0].1, None, "{mode:?}: forever has no timeout");
        nft.apply(&[ban("198.18.0.9", secs(90))]).unwrap();
        let elems = nft_elements(&ns, "palisade", "block4");
        assert_eq!(elems.len(), 1);
        assert!(
            elems[0].1.is_some_and(|t| (88..=90).contains(&t)),
            "{elems:?}"
        );
    }
}

/// Seconds until the kernel expires each element of `set`, as `nft` shows
/// them (`expires`), by element.
fn nft_expires(ns: &Netns, table: &str, set: &str) -> Vec<(String, Option<u64>)> {
    nft_set_elems(ns, table, set)
        .into_iter()
        .map(|(val, e)| (show_val(&val), e["expires"].as_u64()))
        .collect()
}

/// A repeat of a ban with the same length must move the kernel's expiry:
/// on 6.10+ an in-place update that only carries a timeout equal to the
/// element's old one leaves the expiry where it was.
#[test]
fn a_repeated_ban_of_the_same_length_moves_the_kernel_expiry_in_both_modes() {
    if !require_root_and(&["nft"]) {
        return;
    }
    for mode in [RefreshMode::Update, RefreshMode::Replace] {
        let ns = Netns::new();
        let mut nft = enforcer(&ns);
        nft.set_refresh_mode(mode);
        load(&mut nft, vec![]);
        let (host, network) = ("198.18.0.9", "198.18.4.0/24");
        nft.apply(&[ban(host, secs(20)), ban(network, secs(20))])
            .unwrap();
        std::thread::sleep(Duration::from_millis(3100));
        nft.apply(&[ban(host, secs(20)), ban(network, secs(20))])
            .unwrap();
        for set in ["block4", "block4_net"] {
            let elems = nft_expires(&ns, "palisade", set);
            assert_eq!(elems.len(), 1, "{mode:?} {set}: {elems:?}");
            let left = elems[0].1.expect("an expiry");
            assert!(
                left >= 19,
                "{mode:?} {set}: the repeat did not move the expiry ({left}s left)"
            );
        }
    }
}

/// Elements removed or added behind palisade's back are found, named and
/// put right; so is a table deleted whole.
#[test]
fn drift_behind_palisades_back_is_found_and_repaired() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(
        &mut nft,
        vec![
            entry(Action::Ban, "198.18.0.7", secs(600), None),
            entry(Action::Ban, "198.18.0.8", None, None),
            entry(Action::Ban, "198.18.1.0/24", secs(600), None),
            entry(Action::Allow, "198.18.2.0/24", None, None),
        ],
    );
    assert!(nft.drift(false).unwrap().is_empty());
    ns.exec("nft", &["flush", "set", "inet", "palisade", "block4"]);
    ns.exec(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "palisade",
            "block4_net",
            "{ 198.18.9.0/24 }",
        ],
    );
    let drift = nft.drift(false).unwrap();
    let text = drift.to_string();
    assert_eq!(drift.elements(), 3, "{text}");
    assert!(
        text.contains(
            "inet palisade block4: 2 missing, 0 extra (missing 198.18.0.7, missing 198.18.0.8)"
        ) && text.contains(
            "inet palisade block4_net: 0 missing, 1 extra (extra 198.18.9.0-198.18.9.255)"
        ),
        "{text}"
    );
    // Without `repair`, nothing changes.
    assert!(nft_elements(&ns, "palisade", "block4").is_empty());
    assert_eq!(nft.drift(true).unwrap(), drift);
    assert!(nft.drift(false).unwrap().is_empty());
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.7", "198.18.0.8"]
    );
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4_net")),
        ["198.18.1.0/24"]
    );
    ns.exec("nft", &["delete", "table", "inet", "palisade"]);
    assert_eq!(nft.drift(true).unwrap().elements(), 4);
    assert!(nft.drift(false).unwrap().is_empty());
    assert_eq!(nft_elements(&ns, "palisade", "allow4").len(), 1);
}

#[test]
fn the_kernel_expires_bans_without_palisade_running() {
    if !require_root_and(&["nft", "ping"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    {
        let mut nft = enforcer(victim);
        load(&mut nft, vec![]);
        nft.apply(&[
            ban(&attacker.v4().to_string(), Some(Duration::from_secs(2))),
            ban(&attacker.v6().to_string(), Some(Duration::from_secs(2))),
        ])
        .unwrap();
        assert!(!ping(attacker, victim.v4().into()));
        // The enforcer (and its socket) is dropped: nothing of palisade
        // runs from here on. The kernel sweeps expired elements out only
        // every 30 s (gc-interval); what follows sees the ban expire long
        // before that, on the packet path and in a listing.
    }
    assert!(
        wait_until(Duration::from_secs(5), || ping(
            attacker,
            victim.v4().into()
        )),
        "traffic flows again once the kernel expired the ban"
    );
    assert!(ping(attacker, victim.v6().into()));
    assert!(nft_elements(victim, "palisade", "block4").is_empty());
    assert!(nft_elements(victim, "palisade", "block6").is_empty());
}

#[test]
fn network_ban_lets_an_allowed_host_through() {
    if !require_root_and(&["nft", "ping"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["victim", "friend", "foe"]).build();
    let (victim, friend, foe) = (lab.host("victim"), lab.host("friend"), lab.host("foe"));
    let mut nft = enforcer(victim);
    load(&mut nft, vec![]);
    nft.apply(&[
        ban("198.18.0.0/24", secs(600)),
        ban("2001:db8::/64", secs(600)),
        Change::Put(entry(
            Action::Allow,
            &friend.v4().to_string(),
            None,
            Some("friend"),
        )),
        Change::Put(entry(
            Action::Allow,
            &friend.v6().to_string(),
            None,
            Some("friend"),
        )),
    ])
    .unwrap();
    assert!(
        ping(friend, victim.v4().into()),
        "allowed host inside a banned /24"
    );
    assert!(
        ping(friend, victim.v6().into()),
        "allowed host inside a banned /64"
    );
    assert!(!ping(foe, victim.v4().into()), "its neighbour is blocked");
    assert!(!ping(foe, victim.v6().into()));
    // Removing the allow entry blocks the friend too.
    nft.apply(&[Change::Remove {
        action: Action::Allow,
        net: net(&friend.v4().to_string()),
    }])
    .unwrap();
    assert!(!ping(friend, victim.v4().into()));
}

/// The kernel's intervals must equal the enforcer's expected pieces. A
/// dump can miss elements of a hash set while the kernel resizes its table
/// (each part of a dump skips by count what the earlier parts sent, and a
/// resize can send some twice, so the count alone can look right), as it
/// does after many additions: a dump whose ranges differ is taken again,
/// up to five times.
fn assert_kernel_matches(nft: &mut NftablesEnforcer, set: SetName) -> Vec<String> {
    let expected = nft.expected(set);
    let ranges = |v: &[palisade_enforce::nftables::Interval]| -> Vec<_> {
        v.iter().map(|i| (i.first, i.last)).collect()
    };
    let mut kernel = nft.kernel_intervals(set).unwrap();
    for _ in 0..4 {
        if ranges(&kernel) == ranges(&expected) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        kernel = nft.kernel_intervals(set).unwrap();
    }
    let show = |v: &[palisade_enforce::nftables::Interval]| -> Vec<String> {
        v.iter()
            .map(|i| {
                let range = if i.first == i.last {
                    i.first.to_string()
                } else {
                    format!("{}-{}", i.first, i.last)
                };
                format!("{range} {}", i.comment.as_deref().unwrap_or("-"))
            })
            .collect()
    };
    let (k, e) = (show(&kernel), show(&expected));
    if k != e {
        let only_k: Vec<_> = k.iter().filter(|x| !e.contains(x)).collect();
        let only_e: Vec<_> = e.iter().filter(|x| !k.contains(x)).collect();
        panic!("kernel and memory differ: only in kernel {only_k:?}, only in memory {only_e:?}");
    }
    for (k, e) in kernel.iter().zip(&expected) {
        match (k.expires_in, e.expires_in) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                let d = a.as_millis().abs_diff(b.as_millis());
                assert!(d < 3000, "{k:?} vs {e:?}");
            }
            _ => panic!("timeout mismatch: {k:?} vs {e:?}"),
        }
    }
    show(&kernel)
}

#[test]
fn overlapping_hosts_and_networks_across_adds_and_removes() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(&mut nft, vec![]);
    let put = |n: &str, s: u64, c: &str| Change::Put(entry(Action::Ban, n, secs(s), Some(c)));
    nft.apply(&[put("198.18.0.5", 2000, "host")]).unwrap();
    nft.apply(&[put("198.18.0.0/24", 1000, "net")]).unwrap();
    // Hosts and networks live in different sets: each keeps its own expiry.
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4),
        ["198.18.0.5 host"]
    );
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4Net),
        ["198.18.0.0-198.18.0.255 net"]
    );
    let host = nft.kernel_intervals(SetName::Block4).unwrap();
    assert!(
        host[0].expires_in.unwrap() > Duration::from_secs(1900),
        "host keeps its longer ban"
    );
    let net = nft.kernel_intervals(SetName::Block4Net).unwrap();
    assert!(net[0].expires_in.unwrap() < Duration::from_secs(1001));
    // Unban the host: the /24 stays.
    nft.apply(&[unban("198.18.0.5")]).unwrap();
    assert!(assert_kernel_matches(&mut nft, SetName::Block4).is_empty());
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4Net),
        ["198.18.0.0-198.18.0.255 net"]
    );
    // A short and a forever host inside it.
    nft.apply(&[put("198.18.0.9", 10, "short"), ban("198.18.0.10", None)])
        .unwrap();
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4),
        ["198.18.0.9 short", "198.18.0.10 -"]
    );
    // Unban the network: hosts stay.
    nft.apply(&[unban("198.18.0.0/24")]).unwrap();
    assert!(assert_kernel_matches(&mut nft, SetName::Block4Net).is_empty());
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4),
        ["198.18.0.9 short", "198.18.0.10 -"]
    );
    // Overlapping networks become disjoint pieces with the latest expiry.
    nft.apply(&[
        put("198.18.0.0/23", 3000, "wide"),
        put("198.18.0.0/16", 100, "wider"),
    ])
    .unwrap();
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4Net),
        [
            "198.18.0.0-198.18.1.255 wide",
            "198.18.2.0-198.18.255.255 wider"
        ]
    );
    nft.apply(&[unban("198.18.0.0/23"), unban("198.18.0.10")])
        .unwrap();
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4Net),
        ["198.18.0.0-198.18.255.255 wider"]
    );
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block4),
        ["198.18.0.9 short"]
    );
    // IPv6 the same way.
    nft.apply(&[
        put("2001:db8::/64", 100, "net6"),
        put("2001:db8::5", 200, "host6"),
    ])
    .unwrap();
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block6),
        ["2001:db8::5 host6"]
    );
    assert_eq!(
        assert_kernel_matches(&mut nft, SetName::Block6Net),
        ["2001:db8::-2001:db8::ffff:ffff:ffff:ffff net6"]
    );
}

#[test]
fn many_random_changes_keep_kernel_and_memory_equal() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    // Start from 2000 hosts, then change things in batches.
    let initial: Vec<Entry> = (0..2000u32)
        .map(|i| {
            entry(
                Action::Ban,
                &format!("198.18.{}.{}", i / 200, (i % 200) + 1),
                secs(600 + u64::from(i % 7)),
                Some("init"),
            )
        })
        .collect();
    load(&mut nft, initial);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for _ in 0..30 {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let third = rnd(12);
            let n = match rnd(4) {
                0 => format!("198.18.{third}.0/24"),
                1 => format!("198.18.{third}.{}/28", rnd(16) * 16),
                _ => format!("198.18.{third}.{}", rnd(256)),
            };
            let c = if rnd(2) == 0 {
                unban(&n)
            } else {
                let lasts = if rnd(5) == 0 {
                    None
                } else {
                    secs(100 + rnd(5) * 100)
                };
                ban(&n, lasts)
            };
            batch.push(c);
        }
        nft.apply(&batch).unwrap();
        assert_kernel_matches(&mut nft, SetName::Block4);
        assert_kernel_matches(&mut nft, SetName::Block4Net);
    }
}

#[test]
fn replace_all_drops_stale_elements_and_foreign_rules() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(&mut nft, vec![entry(Action::Ban, "198.18.0.1", None, None)]);
    // Someone adds to palisade's table behind its back.
    ns.exec("nft", &["add element inet palisade block4 { 198.18.9.9 }; add rule inet palisade prerouting tcp dport 22 accept; add element inet palisade allow6 { 2001:db8::99 }"]);
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.1", "198.18.9.9"]
    );
    load(
        &mut nft,
        vec![
            entry(Action::Ban, "198.18.0.2", secs(3600), None),
            entry(Action::Ban, "198.18.0.2", secs(3600), None), // duplicates are harmless
            entry(Action::Ban, "198.18.7.0/24", None, None),
            entry(Action::Allow, "198.18.7.7", None, None),
        ],
    );
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.2"]
    );
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4_net")),
        ["198.18.7.0/24"]
    );
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "allow4")),
        ["198.18.7.7"]
    );
    assert!(nft_elements(&ns, "palisade", "allow6").is_empty());
    let text = ns.exec("nft", &["list", "chain", "inet", "palisade", "prerouting"]);
    assert!(!text.contains("dport 22"), "{text}");
    let rules = nft_json(&ns, "palisade")
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count();
    assert_eq!(rules, 6);
    // Entries already expired are skipped.
    load(
        &mut nft,
        vec![Entry {
            action: Action::Ban,
            net: net("198.18.0.3"),
            expires: Some(Timestamp::from_millis(1000)),
            comment: None,
            rule: None,
            list: None,
        }],
    );
    assert!(nft_elements(&ns, "palisade", "block4").is_empty());
}

#[test]
fn other_tables_are_never_touched() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    ns.exec("nft", &["add table inet other; add set inet other s { type ipv4_addr; elements = { 198.18.3.3 } }; add chain inet other c { type filter hook input priority 0; policy accept; }; add rule inet other c ip saddr @s drop"]);
    let before = ns.exec("nft", &["list", "table", "inet", "other"]);
    let mut nft = enforcer(&ns);
    load(&mut nft, vec![entry(Action::Ban, "198.18.0.1", None, None)]);
    nft.apply(&[ban("198.18.0.2", secs(60))]).unwrap();
    nft.remove().unwrap();
    assert_eq!(ns.exec("nft", &["list", "table", "inet", "other"]), before);
    let tables = ns.exec("nft", &["list", "tables"]);
    assert_eq!(tables.trim(), "table inet other");
    // Removing again (no table) is no error.
    nft.remove().unwrap();
}

#[test]
fn removing_an_element_the_kernel_already_expired_does_not_fail() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(&mut nft, vec![]);
    nft.apply(&[
        ban("198.18.0.1", Some(Duration::from_millis(1200))),
        ban("198.18.0.0/24", Some(Duration::from_millis(1200))),
        ban("198.18.5.5", secs(600)),
    ])
    .unwrap();
    assert!(wait_until(Duration::from_secs(4), || {
        nft_elements(&ns, "palisade", "block4").len() == 1
            && nft_elements(&ns, "palisade", "block4_net").is_empty()
    }));
    // Both removals target pieces the kernel dropped already; a Put in the
    // same batch must still go through.
    nft.apply(&[
        unban("198.18.0.1"),
        unban("198.18.0.0/24"),
        ban("198.18.6.6", secs(60)),
    ])
    .unwrap();
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.5.5", "198.18.6.6"]
    );
    // A host banned again after its old ban expired comes back.
    nft.apply(&[ban("198.18.0.1", secs(60))]).unwrap();
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.1", "198.18.5.5", "198.18.6.6"]
    );
    assert!(nft_elements(&ns, "palisade", "block4_net").is_empty());
}

#[test]
fn a_failed_transaction_is_repaired_by_a_full_reload() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(&mut nft, vec![entry(Action::Ban, "198.18.0.1", None, None)]);
    // Someone deletes our set: the next incremental change fails...
    ns.exec(
        "nft",
        &["flush chain inet palisade prerouting; delete set inet palisade block4"],
    );
    let err = nft.apply(&[ban("198.18.0.2", secs(60))]).unwrap_err();
    assert!(matches!(err, EnforceError::Recovered { .. }), "{err}");
    assert!(err.to_string().contains("block4"), "{err}");
    // ...and the table is whole again, with both bans.
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.1", "198.18.0.2"]
    );
    let rules = nft_json(&ns, "palisade")
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count();
    assert_eq!(rules, 6);
    let status = nft.status(true).unwrap();
    assert!(status.in_sync);
}

#[test]
fn apply_before_any_load_creates_the_table() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    nft.apply(&[ban("198.18.0.1", secs(60))]).unwrap();
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.1"]
    );
    nft.apply(&[ban("198.18.0.2", secs(60))]).unwrap();
    assert_eq!(
        names(&nft_elements(&ns, "palisade", "block4")),
        ["198.18.0.1", "198.18.0.2"]
    );
}

#[test]
fn status_reports_what_the_kernel_holds() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut nft = enforcer(&ns);
    load(
        &mut nft,
        vec![
            entry(Action::Ban, "198.18.0.5", None, None),
            entry(Action::Ban, "198.18.0.0/24", None, None),
            entry(Action::Ban, "198.18.1.1", secs(60), None),
            entry(Action::Allow, "2001:db8::1", None, None),
        ],
    );
    let status = nft.status(true).unwrap();
    assert!(status.in_sync);
    let block4 = status
        .objects
        .iter()
        .find(|o| o.name == "inet palisade block4")
        .unwrap();
    assert_eq!(
        (block4.entries, block4.expected, block4.in_kernel),
        (2, 2, Some(2)),
        "hosts, one element each"
    );
    let block4_net = status
        .objects
        .iter()
        .find(|o| o.name == "inet palisade block4_net")
        .unwrap();
    assert_eq!(
        (
            block4_net.entries,
            block4_net.expected,
            block4_net.in_kernel
        ),
        (1, 1, Some(1))
    );
    let allow6 = status
        .objects
        .iter()
        .find(|o| o.name == "inet palisade allow6")
        .unwrap();
    assert_eq!((allow6.entries, allow6.in_kernel), (1, Some(1)));
    nft.remove().unwrap();
    let status = nft.status(true).unwrap();
    assert!(status.objects.iter().all(|o| o.in_kernel == Some(0)));
}

#[test]
fn kill_cuts_an_established_connection_and_its_conntrack_entry() {
    if !require_root_and(&["nft", "conntrack"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    // A typical host firewall that tracks connections, so conntrack is on.
    victim.exec("nft", &["add table inet host; add chain inet host in { type filter hook input priority 0; policy accept; ct state established,related accept; }"]);
    let server = TcpServer::start(victim, 0);
    for addr in [IpAddr::from(victim.v4()), victim.v6().into()] {
        let attacker_ip = if addr.is_ipv4() {
            IpAddr::from(attacker.v4())
        } else {
            attacker.v6().into()
        };
        let to = SocketAddr::new(addr, server.port());
        let mut conn = Established::open(attacker, to).unwrap();
        let mut bystander_ok = Established::open(attacker, to).unwrap();
        let ct_family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        let conntrack = |ns: &Netns| {
            ns.output(
                "conntrack",
                &["-L", "-f", ct_family, "-s", &attacker_ip.to_string()],
            )
        };
        let listed = conntrack(victim);
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains(&server.port().to_string()),
            "conntrack has the connection"
        );
        let mut nft = enforcer(victim);
        load(&mut nft, vec![]);
        nft.apply(&[ban(&attacker_ip.to_string(), secs(600))])
            .unwrap();
        // The ban alone leaves the connection hanging, not closed.
        assert_eq!(
            bystander_ok.check(Duration::from_millis(300)),
            ConnState::Silent
        );
        let report = victim
            .run(|| kill_connections(&Net::host(attacker_ip)))
            .unwrap();
        assert_eq!(report.sockets, 2, "{report:?}");
        assert!(report.conntrack >= 1, "{report:?}");
        assert_eq!(conn.check(Duration::from_secs(2)), ConnState::Reset);
        let listed = conntrack(victim);
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            !text.contains(&format!("dport={}", server.port())),
            "conntrack entry gone: {text}"
        );
        nft.apply(&[unban(&attacker_ip.to_string())]).unwrap();
        // New connections work again after the unban.
        assert!(tcp_connect(attacker, to, Duration::from_secs(1)));
    }
}

#[test]
fn kill_leaves_other_addresses_alone() {
    if !require_root_and(&[]) {
        return;
    }
    let lab = Lab::new();
    let server = TcpServer::start(lab.victim(), 0);
    let to = SocketAddr::new(lab.victim().v4().into(), server.port());
    let mut conn = Established::open(lab.attacker(), to).unwrap();
    let report = lab
        .victim()
        .run(|| kill_connections(&net("198.18.0.128/25")))
        .unwrap();
    assert_eq!(report.sockets, 0);
    assert!(conn.is_alive());
    let report = lab
        .victim()
        .run(|| kill_connections(&net("198.18.0.0/30")))
        .unwrap();
    assert_eq!(report.sockets, 1);
    assert_eq!(conn.check(Duration::from_secs(2)), ConnState::Reset);
}

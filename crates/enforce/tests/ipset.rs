//! The ipset enforcer against the real kernel, with real traffic: every
//! test builds its own lab (network namespaces), adds an iptables rule that
//! matches the set as an operator's firewall would (`-m set --match-set NAME
//! src -j DROP`), and checks what the attacker can reach. The `ipset` tool
//! is the independent observer of the sets. Root only.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_enforce::ipset::{CreateConfig, IpsetConfig, IpsetEnforcer, SetConfig, SetType};
use palisade_enforce::{Change, EnforceError, Enforcer, Entry, filter::FamilyName};
use palisade_lab::{Lab, Netns, TcpServer, require_root_and, tcp_connect};
use palisade_model::{Action, Net, Timestamp};
use palisade_netlink::{Socket, ipset};

const TOOLS: &[&str] = &["ipset", "iptables", "ip6tables"];
const PORT: u16 = 8080;

fn net(s: &str) -> Net {
    s.parse().unwrap()
}

fn entry(action: Action, n: &str, lasts: Option<Duration>) -> Entry {
    Entry {
        action,
        net: net(n),
        expires: lasts.map(|d| Timestamp::now().saturating_add(d)),
        comment: None,
        rule: None,
        list: None,
    }
}

fn ban(n: &str, lasts: Option<Duration>) -> Change {
    Change::Put(entry(Action::Ban, n, lasts))
}

fn unban(n: &str) -> Change {
    Change::Remove {
        action: Action::Ban,
        net: net(n),
    }
}

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

fn set(name: &str, action: Action) -> SetConfig {
    SetConfig {
        name: name.into(),
        action,
        family: None,
        only: None,
        create: None,
    }
}

fn create(t: SetType) -> CreateConfig {
    CreateConfig {
        set_type: t,
        timeout: Some(0),
        maxelem: None,
        hashsize: None,
        comment: false,
        range: None,
        netmask: None,
    }
}

fn enforcer(ns: &Netns, sets: Vec<SetConfig>) -> IpsetEnforcer {
    ns.run(|| {
        IpsetEnforcer::new(IpsetConfig {
            name: None,
            sets,
            filter: Default::default(),
        })
        .expect("enforcer")
    })
}

fn apply(ns: &Netns, e: &mut IpsetEnforcer, changes: &[Change]) -> Result<(), EnforceError> {
    ns.run(|| e.apply(changes))
}

fn reachable(from: &Netns, to: IpAddr) -> bool {
    tcp_connect(from, SocketAddr::new(to, PORT), Duration::from_millis(700))
}

/// `ipset list NAME` elements as text (first word of each member line).
fn members(ns: &Netns, name: &str) -> Vec<String> {
    let out = ns.exec("ipset", &["list", name]);
    let mut v: Vec<String> = out
        .split("Members:\n")
        .nth(1)
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// The timeout `ipset list` shows for one element.
fn timeout_of(ns: &Netns, name: &str, element: &str) -> Option<u64> {
    let out = ns.exec("ipset", &["list", name]);
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(element))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "timeout")?;
            w.get(i + 1)?.parse().ok()
        })
}

fn drop_rule(ns: &Netns, ipv6: bool, name: &str) {
    let tool = if ipv6 { "ip6tables" } else { "iptables" };
    ns.exec(
        tool,
        &[
            "-A",
            "INPUT",
            "-m",
            "set",
            "--match-set",
            name,
            "src",
            "-j",
            "DROP",
        ],
    );
}

/// Bans the attacker into one set of the given kind and checks that real
/// traffic stops, then flows again after the unban.
fn blocks_and_unblocks(
    lab: &Lab,
    ipv6: bool,
    name: &str,
    make: &[&str],
    target: &str,
    cfg: SetConfig,
) {
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let mut args = vec!["create", name];
    args.extend_from_slice(make);
    victim.exec("ipset", &args);
    drop_rule(victim, ipv6, name);
    let to = victim.addr(ipv6);
    assert!(reachable(attacker, to), "{name}: open before the ban");
    let mut e = enforcer(victim, vec![cfg]);
    apply(victim, &mut e, &[ban(target, HOUR)]).expect("ban");
    assert!(
        !reachable(attacker, to),
        "{name}: the ban must drop traffic"
    );
    assert!(!members(victim, name).is_empty());
    apply(victim, &mut e, &[unban(target)]).expect("unban");
    assert!(
        reachable(attacker, to),
        "{name}: open again after the unban"
    );
    assert!(
        members(victim, name).is_empty(),
        "{:?}",
        members(victim, name)
    );
}

#[test]
fn every_set_type_drops_real_traffic() {
    if !require_root_and(TOOLS) {
        return;
    }
    let lab = Lab::new();
    let _server = TcpServer::start(lab.victim(), PORT);
    let a4 = lab.attacker().v4().to_string();
    let a6 = lab.attacker().v6().to_string();
    blocks_and_unblocks(
        &lab,
        false,
        "hip4",
        &["hash:ip", "timeout", "600"],
        &a4,
        set("hip4", Action::Ban),
    );
    blocks_and_unblocks(
        &lab,
        false,
        "hnet4",
        &["hash:net", "timeout", "600"],
        "198.18.0.0/24",
        set("hnet4", Action::Ban),
    );
    blocks_and_unblocks(
        &lab,
        false,
        "bip4",
        &["bitmap:ip", "range", "198.18.0.0/24", "timeout", "600"],
        &a4,
        set("bip4", Action::Ban),
    );
    // vallumd's "bitmap:net": a bitmap:ip that holds /28 networks.
    blocks_and_unblocks(
        &lab,
        false,
        "bnet4",
        &["bitmap:ip", "range", "198.18.0.0/16", "netmask", "28"],
        "198.18.0.0/28",
        set("bnet4", Action::Ban),
    );
    blocks_and_unblocks(
        &lab,
        true,
        "hip6",
        &["hash:ip", "family", "inet6", "timeout", "600"],
        &a6,
        set("hip6", Action::Ban),
    );
    blocks_and_unblocks(
        &lab,
        true,
        "hnet6",
        &["hash:net", "family", "inet6"],
        "2001:db8::/64",
        set("hnet6", Action::Ban),
    );
}

#[test]
fn sets_are_adapted_to_what_they_can_hold() {
    if !require_root_and(TOOLS) {
        return;
    }
    let ns = Netns::new();
    // diswall's lists, made by palisade, plus a hash:net for networks.
    let mut bl = set("diswall-bl", Action::Ban);
    bl.create = Some(CreateConfig {
        timeout: Some(86_400),
        maxelem: Some(1_000_000),
        hashsize: Some(32_768),
        ..create(SetType::HashIp)
    });
    let mut nets = set("pal-nets", Action::Ban);
    nets.only = Some(palisade_enforce::ipset::Only::Networks);
    nets.create = Some(create(SetType::HashNet));
    let mut wl = set("diswall-wl", Action::Allow);
    wl.create = Some(CreateConfig {
        timeout: None,
        comment: true,
        ..create(SetType::HashNet)
    });
    let mut bl6 = set("bl6", Action::Ban);
    bl6.family = Some(FamilyName::Ipv6);
    bl6.create = Some(create(SetType::HashIp));
    let mut e = enforcer(&ns, vec![bl, nets, wl, bl6]);
    let mut allow = entry(Action::Allow, "198.51.100.0/24", None);
    allow.comment = Some("office".into());
    apply(
        &ns,
        &mut e,
        &[
            ban("198.18.0.7", HOUR),
            ban("203.0.113.0/24", HOUR),
            ban("2001:db8::66", HOUR),
            ban("2001:db8:1::/48", HOUR),
            Change::Put(allow),
        ],
    )
    .expect("apply");
    assert_eq!(members(&ns, "diswall-bl"), ["198.18.0.7"]);
    assert_eq!(members(&ns, "pal-nets"), ["203.0.113.0/24"]);
    assert_eq!(members(&ns, "bl6"), ["2001:db8::66"]);
    let wl = ns.exec("ipset", &["list", "diswall-wl"]);
    assert!(wl.contains("198.51.100.0/24 comment \"office\""), "{wl}");
    let header = ns.exec("ipset", &["list", "-t", "diswall-bl"]);
    assert!(
        header.contains("family inet hashsize 32768 maxelem 1000000 timeout 86400"),
        "{header}"
    );
    // Timeouts: the decision's, refreshed by a repeat; forever is 0;
    // longer than ipset's maximum is capped.
    let t = timeout_of(&ns, "diswall-bl", "198.18.0.7").unwrap();
    assert!((3590..=3600).contains(&t), "{t}");
    apply(
        &ns,
        &mut e,
        &[ban("198.18.0.7", Some(Duration::from_secs(7200)))],
    )
    .unwrap();
    let t = timeout_of(&ns, "diswall-bl", "198.18.0.7").unwrap();
    assert!(t > 7100, "a repeated ban refreshes the timeout: {t}");
    apply(
        &ns,
        &mut e,
        &[
            ban("198.18.0.8", None),
            ban("198.18.0.9", Some(Duration::from_secs(60 * 86_400))),
        ],
    )
    .unwrap();
    assert_eq!(timeout_of(&ns, "diswall-bl", "198.18.0.8"), Some(0));
    let t = timeout_of(&ns, "diswall-bl", "198.18.0.9").unwrap();
    assert!(
        t <= u64::from(ipset::MAX_TIMEOUT_SECS) && t > u64::from(ipset::MAX_TIMEOUT_SECS) - 10,
        "{t}"
    );
    // A set palisade did not create is left alone by remove(); its own
    // sets are destroyed.
    ns.exec("ipset", &["create", "operators", "hash:ip"]);
    let mut mine = enforcer(&ns, vec![set("operators", Action::Ban)]);
    ns.run(|| mine.remove()).unwrap();
    ns.run(|| e.remove()).unwrap();
    let left = ns.exec("ipset", &["list", "-n"]);
    assert_eq!(left.trim(), "operators");
}

#[test]
fn a_missing_set_is_explained() {
    if !require_root_and(TOOLS) {
        return;
    }
    let ns = Netns::new();
    let mut e = enforcer(&ns, vec![set("nothere", Action::Ban)]);
    let err = apply(&ns, &mut e, &[ban("198.18.0.1", HOUR)]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ipset nothere does not exist") && msg.contains("ipset create nothere"),
        "{msg}"
    );
    // Created by the operator later: the next change finds it.
    ns.exec("ipset", &["create", "nothere", "hash:ip"]);
    apply(&ns, &mut e, &[ban("198.18.0.1", HOUR)]).unwrap();
    assert_eq!(members(&ns, "nothere"), ["198.18.0.1"]);
    // A set of the wrong family is refused with a clear message.
    ns.exec("ipset", &["create", "six", "hash:ip", "family", "inet6"]);
    let mut cfg = set("six", Action::Ban);
    cfg.family = Some(FamilyName::Ipv4);
    let mut e = enforcer(&ns, vec![cfg]);
    let err = apply(&ns, &mut e, &[]).unwrap_err().to_string();
    assert!(
        err.contains("inet6 set but is configured for Ipv4"),
        "{err}"
    );
    // Destroying a set still referenced by a rule says what to do.
    let mut cfg = set("owned", Action::Ban);
    cfg.create = Some(create(SetType::HashIp));
    let mut e = enforcer(&ns, vec![cfg]);
    apply(&ns, &mut e, &[]).unwrap();
    drop_rule(&ns, false, "owned");
    let err = ns.run(|| e.remove()).unwrap_err().to_string();
    assert!(err.contains("remove the rule first"), "{err}");
}

#[test]
fn a_full_set_is_reported_and_everything_else_applies() {
    if !require_root_and(TOOLS) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    victim.exec(
        "ipset",
        &["create", "small", "hash:ip", "maxelem", "4", "timeout", "0"],
    );
    victim.exec("ipset", &["create", "nets", "hash:net"]);
    drop_rule(victim, false, "small");
    drop_rule(victim, false, "nets");
    let mut only_nets = set("nets", Action::Ban);
    only_nets.only = Some(palisade_enforce::ipset::Only::Networks);
    let mut e = enforcer(victim, vec![set("small", Action::Ban), only_nets]);
    let mut changes: Vec<Change> = (1..=4)
        .map(|i| ban(&format!("203.0.113.{i}"), HOUR))
        .collect();
    apply(victim, &mut e, &changes).expect("four fit");
    changes = (5..=9)
        .map(|i| ban(&format!("203.0.113.{i}"), HOUR))
        .collect();
    changes.push(unban("203.0.113.1"));
    changes.push(ban("198.18.0.0/30", HOUR));
    let err = apply(victim, &mut e, &changes).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EnforceError::SetFull { .. }), "{msg}");
    assert!(
        msg.contains("ipset small is full (maxelem 4)") && msg.contains("Raise maxelem"),
        "{msg}"
    );
    // The removal freed one place, which the first new ban took; the other
    // set got its network, and the attacker inside it is blocked.
    let m = members(victim, "small");
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(!m.contains(&"203.0.113.1".to_string()));
    assert_eq!(members(victim, "nets"), ["198.18.0.0/30"]);
    assert!(!reachable(attacker, victim.v4().into()));
    // And the enforcer keeps working.
    apply(victim, &mut e, &[unban("198.18.0.0/30")]).unwrap();
    assert!(reachable(attacker, victim.v4().into()));
}

#[test]
fn bitmap_sets_keep_overlapping_bans_and_report_out_of_range() {
    if !require_root_and(TOOLS) {
        return;
    }
    let ns = Netns::new();
    ns.exec(
        "ipset",
        &[
            "create",
            "bm",
            "bitmap:ip",
            "range",
            "198.18.0.0/24",
            "timeout",
            "0",
        ],
    );
    let mut e = enforcer(&ns, vec![set("bm", Action::Ban)]);
    apply(
        &ns,
        &mut e,
        &[
            ban("198.18.0.5", HOUR),
            ban("198.18.0.4/30", Some(Duration::from_secs(60))),
            ban("198.19.0.1", HOUR),
        ],
    )
    .expect("out of range is reported, not fatal");
    assert_eq!(
        members(&ns, "bm"),
        ["198.18.0.4", "198.18.0.5", "198.18.0.6", "198.18.0.7"]
    );
    // The host keeps its own, longer timeout under the network's.
    let t = timeout_of(&ns, "bm", "198.18.0.5").unwrap();
    assert!(t > 3500, "{t}");
    // Unbanning the network keeps the host banned inside it.
    apply(&ns, &mut e, &[unban("198.18.0.4/30")]).unwrap();
    assert_eq!(members(&ns, "bm"), ["198.18.0.5"]);
    let st = ns.run(|| e.status(true)).unwrap();
    assert!(st.objects[0].name.contains("1 entries skipped"), "{st:?}");
    // A whole new list goes in through a swapped bitmap of the same range.
    let list = vec![
        entry(Action::Ban, "198.18.0.9", HOUR),
        entry(Action::Ban, "198.18.0.16/31", None),
    ];
    ns.run(|| e.replace_all(&mut list.into_iter())).unwrap();
    assert_eq!(
        members(&ns, "bm"),
        ["198.18.0.16", "198.18.0.17", "198.18.0.9"]
    );
    let header = ns.exec("ipset", &["list", "-t", "bm"]);
    assert!(header.contains("range 198.18.0.0-198.18.0.255"), "{header}");
    assert_eq!(ns.exec("ipset", &["list", "-n"]).trim(), "bm");
}

#[test]
fn replace_all_swaps_with_no_moment_without_the_bans() {
    if !require_root_and(TOOLS) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    victim.exec(
        "ipset",
        &["create", "bl", "hash:ip", "timeout", "0", "comment"],
    );
    drop_rule(victim, false, "bl");
    victim.exec("ipset", &["add", "bl", "203.0.113.99"]);
    let me = attacker.v4().to_string();
    let mut e = enforcer(victim, vec![set("bl", Action::Ban)]);
    let load = |e: &mut IpsetEnforcer, extra: u32| {
        let mut entries = vec![entry(Action::Ban, &me, HOUR)];
        for i in 0..5000u32 {
            entries.push(entry(
                Action::Ban,
                &IpAddr::from((0xc633_0000u32 + i + extra).to_be_bytes()).to_string(),
                HOUR,
            ));
        }
        victim
            .run(|| e.replace_all(&mut entries.into_iter()))
            .expect("replace_all");
    };
    load(&mut e, 0);
    let m = members(victim, "bl");
    assert_eq!(m.len(), 5001);
    assert!(
        !m.contains(&"203.0.113.99".to_string()),
        "stale element gone"
    );
    assert!(!reachable(attacker, victim.v4().into()));
    // Another thread asks the kernel, as fast as it can, whether the
    // attacker is in the set while the whole list is replaced again and
    // again.
    let stop = AtomicBool::new(false);
    let (checks, misses) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let attacker_ip: IpAddr = attacker.v4().into();
    std::thread::scope(|s| {
        s.spawn(|| {
            victim.run(|| {
                let mut sock = Socket::netfilter().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match ipset::test(&mut sock, "bl", attacker_ip, None) {
                        Ok(true) => {}
                        _ => {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        for round in 1..=10 {
            load(&mut e, round * 7);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (checks, misses) = (checks.into_inner(), misses.into_inner());
    assert!(checks > 100, "the checker ran only {checks} times");
    assert_eq!(
        misses, 0,
        "{misses} of {checks} checks saw the attacker missing"
    );
    assert!(!reachable(attacker, victim.v4().into()));
    // No temporary set is left behind, and the rule still uses `bl`.
    assert_eq!(victim.exec("ipset", &["list", "-n"]).trim(), "bl");
    let rules = victim.exec("iptables", &["-S", "INPUT"]);
    assert!(rules.contains("--match-set bl src"), "{rules}");
}

/// Elements removed or added behind palisade's back, or the whole set
/// destroyed: `drift` names what differs, a repair puts it right, and
/// `status` counts differ meanwhile. A set the operator made keeps other
/// tools' elements.
#[test]
fn drift_behind_palisades_back_is_found_and_repaired() {
    if !require_root_and(TOOLS) {
        return;
    }
    let ns = Netns::new();
    let mut owned = set("pal_net", Action::Ban);
    owned.create = Some(create(SetType::HashNet));
    ns.exec("ipset", &["create", "ops_ip", "hash:ip", "timeout", "0"]);
    let mut e = enforcer(&ns, vec![owned, set("ops_ip", Action::Ban)]);
    let bans = [
        ban("198.18.0.7", HOUR),
        ban("198.18.1.0/24", None),
        ban("198.18.0.9", HOUR),
    ];
    apply(&ns, &mut e, &bans).unwrap();
    let drift = |e: &mut IpsetEnforcer, repair| ns.run(|| e.drift(repair)).unwrap().to_string();
    assert_eq!(drift(&mut e, false), "");

    ns.exec("ipset", &["flush", "pal_net"]);
    ns.exec("ipset", &["add", "pal_net", "198.18.99.0/24"]);
    ns.exec("ipset", &["del", "ops_ip", "198.18.0.9"]);
    ns.exec("ipset", &["add", "ops_ip", "198.18.99.9"]);
    let status = ns.run(|| e.status(true)).unwrap();
    let counts: Vec<(usize, Option<usize>)> = status
        .objects
        .iter()
        .map(|o| (o.expected, o.in_kernel))
        .collect();
    assert_eq!(counts, [(3, Some(1)), (2, Some(2))], "{status:?}");
    assert_eq!(
        drift(&mut e, false),
        "ipset pal_net: 3 missing, 1 extra (missing 198.18.0.7, missing 198.18.0.9, missing 198.18.1.0/24); \
         ipset ops_ip: 1 missing, 0 extra (missing 198.18.0.9)"
    );
    assert_ne!(drift(&mut e, true), "");
    assert_eq!(drift(&mut e, false), "");
    assert_eq!(
        members(&ns, "pal_net"),
        ["198.18.0.7", "198.18.0.9", "198.18.1.0/24"]
    );
    assert_eq!(
        members(&ns, "ops_ip"),
        ["198.18.0.7", "198.18.0.9", "198.18.99.9"],
        "the operator's own element stays in the operator's set"
    );

    // Destroyed: made again, with everything in it.
    ns.exec("ipset", &["destroy", "pal_net"]);
    assert!(drift(&mut e, true).starts_with("ipset pal_net: 3 missing, 0 extra"));
    assert_eq!(
        members(&ns, "pal_net"),
        ["198.18.0.7", "198.18.0.9", "198.18.1.0/24"]
    );
    assert_eq!(drift(&mut e, false), "");
}

//! The xt_recent enforcer against the real kernel with real traffic, set up
//! like banban's README: a brief THROTTLE list and a long BLOCKER list, each
//! checked by an iptables rule (`-m recent --name L --rcheck --seconds N -j
//! DROP`, and the same with ip6tables). Root only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_enforce::xt_recent::{Route, XtRecentConfig, XtRecentEnforcer, read_ip_list_tot};
use palisade_enforce::{Change, Enforcer, Entry};
use palisade_lab::{Lab, Netns, TcpServer, require_root_and, tcp_connect, wait_until};
use palisade_model::{Action, Net, Timestamp};

const TOOLS: &[&str] = &["iptables", "ip6tables"];
const PORT: u16 = 8080;
const THROTTLE_SECONDS: u64 = 3;

fn ban(n: &str, rule: &str) -> Change {
    Change::Put(Entry {
        action: Action::Ban,
        net: n.parse().unwrap(),
        expires: Some(Timestamp::now().saturating_add(Duration::from_secs(3600))),
        comment: None,
        rule: Some(rule.into()),
        list: None,
    })
}

fn unban(n: &str) -> Change {
    Change::Remove {
        action: Action::Ban,
        net: n.parse().unwrap(),
    }
}

fn config() -> XtRecentConfig {
    XtRecentConfig {
        name: None,
        default_list: Some("BLOCKER".into()),
        routes: vec![Route {
            rule: "*-throttle".into(),
            list: "THROTTLE".into(),
        }],
        also_unblock: vec![],
        proc_dir: None,
        filter: Default::default(),
    }
}

fn rules(ns: &Netns) {
    for tool in ["iptables", "ip6tables"] {
        let throttle = THROTTLE_SECONDS.to_string();
        ns.exec(
            tool,
            &[
                "-A",
                "INPUT",
                "-m",
                "recent",
                "--name",
                "THROTTLE",
                "--rcheck",
                "--seconds",
                &throttle,
                "-j",
                "DROP",
            ],
        );
        ns.exec(
            tool,
            &[
                "-A",
                "INPUT",
                "-m",
                "recent",
                "--name",
                "BLOCKER",
                "--rcheck",
                "--seconds",
                "172800",
                "-j",
                "DROP",
            ],
        );
    }
}

fn list(ns: &Netns, name: &str) -> String {
    ns.run(|| std::fs::read_to_string(format!("/proc/thread-self/net/xt_recent/{name}")))
        .unwrap_or_default()
}

fn reachable(from: &Netns, to: IpAddr) -> bool {
    tcp_connect(from, SocketAddr::new(to, PORT), Duration::from_millis(700))
}

#[test]
fn throttle_then_block_then_unblock_from_every_list() {
    if !require_root_and(TOOLS) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    rules(victim);
    let mut x = victim.run(|| XtRecentEnforcer::new(config())).unwrap();
    let me4 = attacker.v4().to_string();
    let me6 = attacker.v6().to_string();
    let to4: IpAddr = victim.v4().into();
    assert!(reachable(attacker, to4));

    // A brief throttle: dropped at once, open again after --seconds.
    victim
        .run(|| x.apply(&[ban(&me4, "sshd-throttle")]))
        .unwrap();
    assert!(list(victim, "THROTTLE").contains(&format!("src={me4} ")));
    assert!(!reachable(attacker, to4), "throttled");
    assert!(
        wait_until(Duration::from_secs(THROTTLE_SECONDS + 3), || reachable(
            attacker, to4
        )),
        "the throttle ends with the rule's --seconds"
    );

    // Then the long block, on top of a fresh throttle.
    victim
        .run(|| x.apply(&[ban(&me4, "sshd-throttle"), ban(&me4, "sshd")]))
        .unwrap();
    assert!(list(victim, "BLOCKER").contains(&format!("src={me4} ")));
    std::thread::sleep(Duration::from_secs(THROTTLE_SECONDS + 1));
    assert!(
        !reachable(attacker, to4),
        "still blocked after the throttle time"
    );

    // An unblock removes the address from every list.
    victim.run(|| x.apply(&[unban(&me4)])).unwrap();
    assert!(!list(victim, "BLOCKER").contains(&me4));
    assert!(!list(victim, "THROTTLE").contains(&me4));
    assert!(reachable(attacker, to4));

    // IPv6 goes to the same lists, checked by ip6tables.
    let to6: IpAddr = victim.v6().into();
    assert!(reachable(attacker, to6));
    victim.run(|| x.apply(&[ban(&me6, "sshd")])).unwrap();
    assert!(!reachable(attacker, to6));
    victim.run(|| x.apply(&[unban(&me6)])).unwrap();
    assert!(reachable(attacker, to6));

    // replace_all keeps what stays and drops the rest, without emptying.
    victim
        .run(|| x.apply(&[ban("203.0.113.7", "sshd")]))
        .unwrap();
    let entries = vec![Entry {
        action: Action::Ban,
        net: me4.parse().unwrap(),
        expires: None,
        comment: None,
        rule: Some("sshd".into()),
        list: None,
    }];
    victim
        .run(|| x.replace_all(&mut entries.into_iter()))
        .unwrap();
    let blocker = list(victim, "BLOCKER");
    assert!(
        blocker.contains(&me4) && !blocker.contains("203.0.113.7"),
        "{blocker}"
    );
    assert!(!reachable(attacker, to4));
}

#[test]
fn missing_lists_networks_and_the_list_size_limit_are_explained() {
    if !require_root_and(TOOLS) {
        return;
    }
    let ns = Netns::new();
    // No rule names the lists yet.
    let mut x = ns.run(|| XtRecentEnforcer::new(config())).unwrap();
    let err = ns
        .run(|| x.apply(&[ban("198.18.0.9", "sshd")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("xt_recent list BLOCKER does not exist") && err.contains("add the rule first"),
        "{err}"
    );
    let drift = ns.run(|| x.drift(true)).unwrap().to_string();
    assert_eq!(
        drift,
        "xt_recent BLOCKER (missing: no iptables rule names it): 1 missing, 0 extra (missing 198.18.0.9)"
    );
    assert!(!ns.run(|| x.status(true)).unwrap().in_sync);
    rules(&ns);
    // Once the rule exists, the drift check writes the ban it kept; an
    // address the rule itself added is no drift.
    ns.run(|| x.drift(true)).unwrap();
    assert!(list(&ns, "BLOCKER").contains("src=198.18.0.9 "));
    ns.run(|| std::fs::write("/proc/thread-self/net/xt_recent/BLOCKER", "+198.18.0.77"))
        .unwrap();
    assert!(ns.run(|| x.drift(false)).unwrap().is_empty());
    ns.run(|| std::fs::write("/proc/thread-self/net/xt_recent/BLOCKER", "-198.18.0.9"))
        .unwrap();
    assert_eq!(ns.run(|| x.drift(true)).unwrap().elements(), 1);
    assert!(list(&ns, "BLOCKER").contains("src=198.18.0.9 "));
    assert!(ns.run(|| x.status(true)).unwrap().in_sync);
    // Networks cannot go into a recent list: skipped, not an error.
    ns.run(|| x.apply(&[ban("198.18.0.9", "sshd"), ban("198.18.1.0/24", "sshd")]))
        .unwrap();
    assert!(list(&ns, "BLOCKER").contains("src=198.18.0.9 "));
    assert!(!list(&ns, "BLOCKER").contains("198.18.1.0"));

    // The kernel keeps ip_list_tot addresses per list; palisade knows the
    // limit and says when its bans do not fit.
    let limit = read_ip_list_tot().expect("xt_recent's ip_list_tot");
    assert_eq!(x.ip_list_tot(), Some(limit));
    let many: Vec<Entry> = (0..(limit as u32 + 20))
        .map(|i| Entry {
            action: Action::Ban,
            net: Net::host(IpAddr::from((0xcb00_7100u32 + i).to_be_bytes())),
            expires: None,
            comment: None,
            rule: Some("sshd".into()),
            list: None,
        })
        .collect();
    ns.run(|| x.replace_all(&mut many.into_iter())).unwrap();
    let st = ns.run(|| x.status(true)).unwrap();
    assert!(!st.in_sync, "{st:?}");
    let blocker = st
        .objects
        .iter()
        .find(|o| o.name.starts_with("xt_recent BLOCKER"))
        .unwrap();
    assert!(
        blocker
            .name
            .contains(&format!("ip_list_tot {limit}: 20 bans do not fit")),
        "{blocker:?}"
    );
    assert_eq!(blocker.in_kernel, Some(limit));
    assert_eq!(blocker.entries, limit + 20);
}

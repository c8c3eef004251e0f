//! The roll-up at the hub: thresholds, the window, escalation, allows,
//! limits, and what a node's credential can and cannot make of it.

use super::*;
use crate::Rollup;

/// IPv4 /24 and IPv6 /64 roll-ups of 5 hosts within 10 minutes.
fn rolling() -> PolicyOptions {
    PolicyOptions {
        rollup: Rollup {
            hosts: 5,
            window: Duration::from_secs(600),
            prefix_v4: Some(24),
            prefix_v6: Some(64),
        },
        ..PolicyOptions::default()
    }
}

/// A reporter's report of `target` (no quorum configured: it bans).
fn reported(p: &Policy, l: &mut Memory, id: u64, target: &str, now: Timestamp) -> IntentResult {
    p.decide(
        l,
        &member("web1", None, Role::Reporter),
        &report(id, target, Source::Report, Some("1h")),
        now,
    )
    .unwrap()
}

fn banned(l: &Memory, target: &str) -> Option<Decision> {
    l.get(Action::Ban, &n(target), None).unwrap()
}

#[test]
fn enough_hosts_of_a_network_become_one_network_ban_listing_them() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    for i in 1..=4u64 {
        let r = reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(i));
        assert_eq!(r.outcome, IntentOutcome::Accepted);
    }
    assert!(banned(&l, "203.0.113.0/24").is_none(), "4 of 5: not yet");
    let r = reported(&p, &mut l, 5, "203.0.113.5", at(5));
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    assert!(
        r.reason
            .unwrap()
            .contains("rolled up into a ban of 203.0.113.0/24")
    );
    let net = banned(&l, "203.0.113.0/24").expect("the /24 is banned");
    assert_eq!(net.origin.source, Source::Policy);
    assert_eq!(net.origin.node, HUB_NODE);
    assert_eq!(net.rule.as_deref(), Some(crate::rollup::RULE));
    assert_eq!(net.scope, Scope::Network);
    let evidence = net.evidence.join("\n");
    for i in 1..=5 {
        assert!(
            evidence.contains(&format!("203.0.113.{i} (sshd, report on web1)")),
            "{evidence}"
        );
    }
    assert!(
        net.reason
            .unwrap()
            .contains("5 hosts of 203.0.113.0/24 banned within 10m")
    );
    // The members are replaced, and every node hears of it.
    for i in 1..=5 {
        assert!(banned(&l, &format!("203.0.113.{i}")).is_none());
        assert!(l.broadcast.contains(&format!("remove ban 203.0.113.{i}")));
    }
    assert!(l.broadcast.contains(&"put ban 203.0.113.0/24".to_string()));
    // IPv6: the /64.
    for i in 1..=5u64 {
        reported(&p, &mut l, 10 + i, &format!("2001:db8:7::{i}"), at(i));
    }
    assert!(banned(&l, "2001:db8:7::/64").is_some());
}

#[test]
fn ipv4_is_off_and_ipv6_on_by_default() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    for i in 1..=12u64 {
        reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(i));
        reported(&p, &mut l, 100 + i, &format!("2001:db8:7::{i:x}"), at(i));
    }
    assert!(banned(&l, "203.0.113.0/24").is_none());
    assert_eq!(
        banned(&l, "203.0.113.12").unwrap().target,
        n("203.0.113.12")
    );
    let net = banned(&l, "2001:db8:7::/64").expect("IPv6 rolls up by default");
    assert!(
        net.reason
            .unwrap()
            .starts_with("10 hosts of 2001:db8:7::/64")
    );
    // Hosts banned after the roll-up stay as they are (the network
    // already covers them).
    assert!(banned(&l, "2001:db8:7::c").is_some());
}

#[test]
fn only_bans_within_the_window_count_and_distinct_hosts_only() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    // Four hosts long ago (still banned: their bans last a day).
    for i in 1..=4u64 {
        p.decide(
            &mut l,
            &node("web1"),
            &report(i, &format!("203.0.113.{i}"), Source::Report, Some("1d")),
            at(i),
        )
        .unwrap();
    }
    // The same host again and again, inside the window: one host.
    for k in 0..5u64 {
        reported(&p, &mut l, 10 + k, "203.0.113.9", at(3600 + k * 100));
    }
    assert!(banned(&l, "203.0.113.0/24").is_none());
    // Four fresh hosts and the one above: five within the window.
    for i in 20..24u64 {
        reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(4000 + i));
    }
    let net = banned(&l, "203.0.113.0/24").expect("five hosts within the window");
    // The old ones were not members: not listed, and still banned.
    assert!(!net.evidence.join(" ").contains("203.0.113.1 "));
    assert!(banned(&l, "203.0.113.1").is_some());
}

#[test]
fn a_network_rolled_up_again_gets_a_longer_ban() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    let mut lengths = Vec::new();
    for round in 0..3u64 {
        let start = round * 3 * 86_400;
        for i in 1..=5u64 {
            reported(
                &p,
                &mut l,
                round * 10 + i,
                &format!("203.0.113.{i}"),
                at(start + i),
            );
        }
        let net = banned(&l, "203.0.113.0/24").expect("rolled up");
        lengths.push(net.expires.unwrap().since(net.created).as_secs() / 86_400);
        if round == 1 {
            assert!(
                net.reason
                    .as_deref()
                    .unwrap()
                    .contains("offence 2 of this network"),
                "{:?}",
                net.reason
            );
        }
        // Let it run out: the next round starts from nothing banned.
        l.decisions.retain(|_, d| d.action != Action::Ban);
    }
    assert_eq!(lengths, [1, 2, 4]);
}

#[test]
fn members_that_outlast_the_network_ban_stay() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    p.decide(
        &mut l,
        &node("admin"),
        &report(1, "203.0.113.1", Source::Cli, Some("forever")),
        at(0),
    )
    .unwrap();
    for i in 2..=5u64 {
        reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(i));
    }
    assert!(banned(&l, "203.0.113.0/24").is_some());
    assert!(
        banned(&l, "203.0.113.1").is_some(),
        "a forever ban is not shortened"
    );
    assert!(banned(&l, "203.0.113.2").is_none());
}

#[test]
fn allowed_hosts_inside_stay_allowed_and_covering_allows_forbid_the_roll_up() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    // An allowed host inside: the network is banned, the allow stays and
    // wins (the kernel accepts allowed sources first).
    p.decide(
        &mut l,
        &node("admin"),
        &allow(1, "203.0.113.200", None),
        at(0),
    )
    .unwrap();
    for i in 1..=5u64 {
        reported(&p, &mut l, 10 + i, &format!("203.0.113.{i}"), at(i));
    }
    assert!(banned(&l, "203.0.113.0/24").is_some());
    assert!(
        l.get(Action::Allow, &n("203.0.113.200"), None)
            .unwrap()
            .is_some()
    );
    // An allow covering the whole network: no roll-up, the hosts stay.
    p.decide(
        &mut l,
        &node("admin"),
        &allow(2, "198.51.100.0/24", None),
        at(0),
    )
    .unwrap();
    p.decide(
        &mut l,
        &node("admin"),
        &allow(3, "192.0.2.0/23", None),
        at(0),
    )
    .unwrap();
    for i in 1..=6u64 {
        // Refused: each host is allowed.
        let r = reported(&p, &mut l, 20 + i, &format!("198.51.100.{i}"), at(i));
        assert_eq!(r.outcome, IntentOutcome::Refused);
    }
    assert!(banned(&l, "198.51.100.0/24").is_none());
    assert!(banned(&l, "192.0.2.0/24").is_none());
}

#[test]
fn the_hub_is_never_inside_a_roll_up() {
    let p = Policy::new(PolicyOptions {
        protected: vec![(n("198.18.0.1"), "palisade hub".into())],
        ..rolling()
    });
    let mut l = Memory::default();
    // A reporter floods distinct fake hosts of the hub's /24.
    for i in 2..=60u64 {
        let r = reported(&p, &mut l, i, &format!("198.18.0.{i}"), at(i));
        assert_eq!(r.outcome, IntentOutcome::Accepted);
    }
    assert!(banned(&l, "198.18.0.0/24").is_none());
    assert!(
        banned(&l, "198.18.0.60").is_some(),
        "the hosts themselves stay banned"
    );
}

#[test]
fn a_roll_up_is_never_wider_than_the_hubs_limits_or_the_guard() {
    // A /16 roll-up where nodes may ban at most /24: never made.
    let p = Policy::new(PolicyOptions {
        rollup: Rollup {
            prefix_v4: Some(16),
            ..rolling().rollup
        },
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    for i in 1..=20u64 {
        reported(&p, &mut l, i, &format!("203.0.{i}.1"), at(i));
    }
    assert!(banned(&l, "203.0.0.0/16").is_none());
    // The guard's widest ban holds too.
    let p = Policy::new(PolicyOptions {
        guard: palisade_model::Guard::new(28, 64),
        ..rolling()
    });
    let mut l = Memory::default();
    for i in 1..=20u64 {
        reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(i));
    }
    assert!(banned(&l, "203.0.113.0/24").is_none());
    assert!(banned(&l, "203.0.113.20").is_some());
}

#[test]
fn a_node_cannot_name_the_wider_network_itself_nor_forge_a_roll_up() {
    let p = Policy::new(rolling());
    let mut l = Memory::default();
    let web = member("web1", None, Role::Node);
    // Wider than [hub.limits]: refused, whatever it calls itself.
    for source in [Source::Cli, Source::Report, Source::Policy] {
        let mut e = report(1, "203.0.0.0/16", source, None);
        if let Intent::Ban { rule, .. } = &mut e.intent {
            *rule = Some(crate::rollup::RULE.into());
        }
        let r = p.decide(&mut l, &web, &e, at(0)).unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{source}");
    }
    assert!(l.broadcast.is_empty());
    // The hub's own roll-ups count nothing towards another: a node cannot
    // claim the policy's source to make them.
    let e = report(2, "203.0.113.0/25", Source::Policy, None);
    assert_eq!(
        p.decide(&mut l, &web, &e, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
    // Pending reports (a quorum not yet reached) are not bans: no roll-up.
    let p = Policy::new(PolicyOptions {
        quorum: [(Source::Report, 2)].into(),
        ..rolling()
    });
    let mut l = Memory::default();
    for i in 1..=20u64 {
        let r = reported(&p, &mut l, i, &format!("203.0.113.{i}"), at(i));
        assert_eq!(r.outcome, IntentOutcome::Pending);
    }
    assert!(banned(&l, "203.0.113.0/24").is_none());
}

#[test]
fn a_48_rolls_up_the_64s_a_detector_banned() {
    let p = Policy::new(PolicyOptions {
        rollup: Rollup {
            prefix_v6: Some(48),
            ..rolling().rollup
        },
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    for i in 1..=5u64 {
        let r = p
            .decide(
                &mut l,
                &member("web1", None, Role::Node),
                &report(
                    i,
                    &format!("2001:db8:5:{i:x}::/64"),
                    Source::Detector,
                    Some("1h"),
                ),
                at(i),
            )
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Accepted);
    }
    let net = banned(&l, "2001:db8:5::/48").expect("the /48 is rolled up");
    assert!(
        net.reason
            .as_deref()
            .unwrap()
            .starts_with("5 hosts and networks of 2001:db8:5::/48"),
        "{:?}",
        net.reason
    );
    assert!(banned(&l, "2001:db8:5:1::/64").is_none());
}

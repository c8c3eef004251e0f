use super::*;
use std::collections::BTreeMap;
use std::convert::Infallible;

/// The ledger as plain maps, recording what would be broadcast.
#[derive(Default)]
struct Memory {
    decisions: BTreeMap<(Action, Net, Option<String>), Decision>,
    nodes: BTreeMap<String, NodeRecord>,
    offenders: BTreeMap<Net, Offender>,
    reports: BTreeMap<Net, Vec<Report>>,
    broadcast: Vec<String>,
}

impl Ledger for Memory {
    type Error = Infallible;
    fn get(
        &self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Infallible> {
        Ok(self
            .decisions
            .get(&(action, *target, group.map(String::from)))
            .cloned())
    }
    fn allows_covering(&self, target: &Net) -> Result<Vec<Decision>, Infallible> {
        Ok(self
            .decisions
            .values()
            .filter(|d| d.action == Action::Allow && d.group.is_none() && d.target.contains(target))
            .cloned()
            .collect())
    }
    fn all_allows(&self) -> Result<Vec<Decision>, Infallible> {
        Ok(self
            .decisions
            .values()
            .filter(|d| d.action == Action::Allow)
            .cloned()
            .collect())
    }
    fn bans_within(&self, network: &Net) -> Result<Vec<Decision>, Infallible> {
        Ok(self
            .decisions
            .values()
            .filter(|d| {
                d.action == Action::Ban
                    && d.group.is_none()
                    && d.target != *network
                    && network.contains(&d.target)
            })
            .cloned()
            .collect())
    }
    fn put(&mut self, d: &Decision) -> Result<(), Infallible> {
        self.broadcast
            .push(format!("put {} {}", d.action, d.target));
        self.decisions
            .insert((d.action, d.target, d.group.clone()), d.clone());
        Ok(())
    }
    fn touch(&mut self, d: &Decision) -> Result<(), Infallible> {
        self.decisions
            .insert((d.action, d.target, d.group.clone()), d.clone());
        Ok(())
    }
    fn remove(
        &mut self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Infallible> {
        let old = self
            .decisions
            .remove(&(action, *target, group.map(String::from)));
        if old.is_some() {
            self.broadcast.push(format!("remove {action} {target}"));
        }
        Ok(old)
    }
    fn offender(&self, target: &Net) -> Result<Option<Offender>, Infallible> {
        Ok(self.offenders.get(target).copied())
    }
    fn set_offender(&mut self, target: &Net, o: Option<Offender>) -> Result<(), Infallible> {
        match o {
            Some(o) => self.offenders.insert(*target, o),
            None => self.offenders.remove(target),
        };
        Ok(())
    }
    fn reports(&self, target: &Net) -> Result<Vec<Report>, Infallible> {
        Ok(self.reports.get(target).cloned().unwrap_or_default())
    }
    fn set_reports(&mut self, target: &Net, r: &[Report]) -> Result<(), Infallible> {
        self.reports.insert(*target, r.to_vec());
        Ok(())
    }
    fn node(&self, name: &str) -> Result<Option<NodeRecord>, Infallible> {
        Ok(self.nodes.get(name).cloned())
    }
    fn set_node(&mut self, record: &NodeRecord) -> Result<(), Infallible> {
        self.nodes.insert(record.name.clone(), record.clone());
        Ok(())
    }
}

fn n(s: &str) -> Net {
    s.parse().unwrap()
}

/// An operator's credential: everything the guard permits.
fn node(name: &str) -> Node {
    Node::member(name, None, Role::Operator)
}

fn member(name: &str, group: Option<&str>, role: Role) -> Node {
    Node::member(name, group.map(String::from), role)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + secs * 1000)
}

fn report(id: u64, target: &str, source: Source, span: Option<&str>) -> Envelope {
    Envelope {
        id,
        at: at(0),
        intent: Intent::Ban {
            target: n(target),
            span: span.map(|s| s.parse().unwrap()),
            rule: Some("sshd".into()),
            reason: None,
            evidence: vec![format!("evidence {id}")],
            source,
            actor: None,
            list: None,
            unverified: false,
        },
    }
}

fn allow(id: u64, target: &str, group: Option<&str>) -> Envelope {
    Envelope {
        id,
        at: at(0),
        intent: Intent::Allow {
            target: n(target),
            span: None,
            comment: Some("office".into()),
            group: group.map(String::from),
            actor: None,
        },
    }
}

fn lasting(r: &IntentResult, from: Timestamp) -> u64 {
    r.expires.unwrap().since(from).as_secs()
}

#[test]
fn a_report_becomes_a_broadcast_decision_with_its_provenance() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(1, "198.51.100.7", Source::Detector, Some("1h")),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    assert_eq!(lasting(&r, at(0)), 3600);
    assert_eq!(l.broadcast, ["put ban 198.51.100.7"]);
    let d = l
        .get(Action::Ban, &n("198.51.100.7"), None)
        .unwrap()
        .unwrap();
    assert_eq!(d.origin.node, "web1");
    assert_eq!(d.origin.source, Source::Detector);
    assert_eq!(d.rule.as_deref(), Some("sshd"));
    assert_eq!(d.evidence, ["evidence 1"]);
    assert_eq!(d.scope, Scope::Network);
}

#[test]
fn allowlists_and_node_addresses_always_win() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    p.decide(
        &mut l,
        &node("admin"),
        &allow(1, "198.51.100.0/24", None),
        at(0),
    )
    .unwrap();
    // A palisade node's own address, allowed by the hub itself.
    let mut nodeallow = Decision::new(
        Action::Allow,
        n("203.0.113.10"),
        at(0),
        Span::Forever,
        Origin::new("web2", Source::Policy),
    );
    nodeallow.reason = Some("palisade node web2".into());
    l.put(&nodeallow).unwrap();
    l.broadcast.clear();
    for (target, expect) in [
        (
            "198.51.100.7",
            "allowed by the allow entry 198.51.100.0/24 (office)",
        ),
        ("203.0.113.10", "(palisade node web2)"),
        ("127.0.0.1", "loopback"),
        ("16.0.0.0/4", "wider than /8"),
    ] {
        let r = p
            .decide(
                &mut l,
                &node("web1"),
                &report(2, target, Source::Cli, None),
                at(0),
            )
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{target}");
        assert!(
            r.reason.as_deref().unwrap().contains(expect),
            "{target}: {:?}",
            r.reason
        );
    }
    assert!(l.broadcast.is_empty(), "nothing refused is broadcast");
    // A node's auto-allow cannot be removed like an operator's.
    let un = Envelope {
        id: 3,
        at: at(0),
        intent: Intent::Unallow {
            target: n("203.0.113.10"),
            group: None,
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &node("web1"), &un, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
}

#[test]
fn an_allow_shadows_the_bans_it_covers_and_they_return_when_it_goes() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    for (i, t) in ["198.51.100.7", "198.51.100.8", "203.0.113.1"]
        .iter()
        .enumerate()
    {
        p.decide(
            &mut l,
            &node("web1"),
            &report(i as u64, t, Source::Cli, None),
            at(0),
        )
        .unwrap();
    }
    l.broadcast.clear();
    p.decide(
        &mut l,
        &node("admin"),
        &allow(10, "198.51.100.0/24", None),
        at(0),
    )
    .unwrap();
    assert_eq!(
        l.broadcast,
        ["put allow 198.51.100.0/24"],
        "the bans inside stay, shadowed"
    );
    assert!(
        l.get(Action::Ban, &n("198.51.100.7"), None)
            .unwrap()
            .is_some()
    );
    // A new ban inside is refused while the allow holds...
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(11, "198.51.100.9", Source::Cli, None),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Refused);
    // ...and once it goes, the shadowed bans apply again.
    let un = Envelope {
        id: 12,
        at: at(0),
        intent: Intent::Unallow {
            target: n("198.51.100.0/24"),
            group: None,
            actor: None,
        },
    };
    l.broadcast.clear();
    p.decide(&mut l, &node("admin"), &un, at(0)).unwrap();
    assert_eq!(l.broadcast, ["remove allow 198.51.100.0/24"]);
    assert!(
        l.get(Action::Ban, &n("198.51.100.8"), None)
            .unwrap()
            .is_some()
    );
}

#[test]
fn repeats_inside_the_window_are_suppressed_then_extend() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let t = "198.51.100.7";
    p.decide(
        &mut l,
        &node("web1"),
        &report(1, t, Source::Detector, Some("1h")),
        at(0),
    )
    .unwrap();
    l.broadcast.clear();
    let r = p
        .decide(
            &mut l,
            &node("web2"),
            &report(2, t, Source::Detector, Some("1h")),
            at(60),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Suppressed);
    assert!(l.broadcast.is_empty(), "not re-broadcast within 5 minutes");
    let d = l.get(Action::Ban, &n(t), None).unwrap().unwrap();
    assert_eq!(d.hits, 2, "but recorded");
    assert_eq!(d.evidence, ["evidence 1", "evidence 2"]);
    let r = p
        .decide(
            &mut l,
            &node("web2"),
            &report(3, t, Source::Detector, Some("1h")),
            at(400),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    assert_eq!(
        l.broadcast,
        ["put ban 198.51.100.7"],
        "after the window, an update is broadcast"
    );
    assert_eq!(lasting(&r, at(400)), 3600, "extended from now");
}

#[test]
fn a_ban_by_hand_repeated_inside_the_window_extends_at_once() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let t = "198.51.100.7";
    for (who, source) in [("admin", Source::Cli), ("web1", Source::Detector)] {
        l.decisions.clear();
        p.decide(
            &mut l,
            &node(who),
            &report(1, t, source, Some("20s")),
            at(0),
        )
        .unwrap();
        l.broadcast.clear();
        // Ten seconds later, a longer ban by hand: the operator is told
        // "extended", so every kernel must hold the new expiry.
        let r = p
            .decide(
                &mut l,
                &node(who),
                &report(2, t, Source::Cli, Some("1h")),
                at(10),
            )
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Accepted, "after a {source} ban");
        assert_eq!(
            l.broadcast,
            ["put ban 198.51.100.7"],
            "after a {source} ban"
        );
        assert_eq!(lasting(&r, at(10)), 3600, "after a {source} ban");
    }
    // An automatic repeat of a ban by hand is still only recorded.
    let r = p
        .decide(
            &mut l,
            &node("web2"),
            &report(3, t, Source::Report, Some("2h")),
            at(20),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Suppressed);
}

#[test]
fn repeat_offenders_get_longer_bans_up_to_the_cap() {
    let config = PolicyOptions {
        escalation: Some(Escalation {
            factor: 2.0,
            max: Duration::from_secs(6 * 3600),
            forget_after: Duration::from_secs(30 * 86_400),
        }),
        ..PolicyOptions::default()
    };
    let p = Policy::new(config);
    let mut l = Memory::default();
    let t = "198.51.100.7";
    let mut lengths = Vec::new();
    for i in 0..5u64 {
        let now = at(i * 86_400);
        let r = p
            .decide(
                &mut l,
                &node("web1"),
                &report(i, t, Source::Report, Some("1h")),
                now,
            )
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Accepted);
        lengths.push(lasting(&r, now) / 3600);
    }
    assert_eq!(lengths, [1, 2, 4, 6, 6]);
    let d = l.get(Action::Ban, &n(t), None).unwrap().unwrap();
    assert!(
        d.reason
            .as_deref()
            .unwrap()
            .contains("offence 5 of this address"),
        "{:?}",
        d.reason
    );
    // An operator's unban forgets the history; operators' own bans never escalate.
    let un = Envelope {
        id: 9,
        at: at(0),
        intent: Intent::Unban {
            target: n(t),
            actor: None,
        },
    };
    p.decide(&mut l, &node("admin"), &un, at(5 * 86_400))
        .unwrap();
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(10, t, Source::Detector, Some("1h")),
            at(6 * 86_400),
        )
        .unwrap();
    assert_eq!(lasting(&r, at(6 * 86_400)), 3600);
    let r = p
        .decide(
            &mut l,
            &node("admin"),
            &report(11, "203.0.113.9", Source::Cli, Some("2h")),
            at(0),
        )
        .unwrap();
    assert_eq!(lasting(&r, at(0)), 7200);
}

#[test]
fn a_quorum_waits_for_distinct_nodes() {
    let mut config = PolicyOptions::default();
    config.quorum.insert(Source::Detector, 2);
    let p = Policy::new(config);
    let mut l = Memory::default();
    let t = "198.51.100.7";
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(1, t, Source::Detector, None),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Pending);
    assert!(r.reason.as_deref().unwrap().contains("1 of 2 nodes"));
    // The same node again does not count twice.
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(2, t, Source::Detector, None),
            at(10),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Pending);
    assert!(l.broadcast.is_empty());
    // A report too old does not count.
    let r = p
        .decide(
            &mut l,
            &node("web2"),
            &report(3, t, Source::Detector, None),
            at(10 + 3700),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Pending);
    let r = p
        .decide(
            &mut l,
            &node("web3"),
            &report(4, t, Source::Detector, None),
            at(10 + 3710),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    assert_eq!(l.broadcast, ["put ban 198.51.100.7"]);
    // Operators never wait for a quorum.
    let r = p
        .decide(
            &mut l,
            &node("web1"),
            &report(5, "203.0.113.1", Source::Cli, None),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
}

#[test]
fn rate_limits_are_per_node_and_spare_operators() {
    let p = &mut Policy::new(PolicyOptions {
        rate: RateLimit {
            per_second: 0.0001,
            burst: 3,
        },
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    let batch: Vec<Envelope> = (1..=5)
        .map(|i| report(i, &format!("198.51.100.{i}"), Source::Detector, None))
        .collect();
    let web1 = member("web1", None, Role::Node);
    let r = p
        .apply_intents(&mut l, &web1, &batch, at(0), &mut None)
        .unwrap();
    assert_eq!(r.results.len(), 3);
    assert_eq!(r.held_back, Some("rate"));
    let web2 = member("web2", None, Role::Node);
    let r = p
        .apply_intents(&mut l, &web2, &batch, at(0), &mut None)
        .unwrap();
    assert_eq!(r.results.len(), 3, "another node has its own bucket");
    // A node's own bans by hand draw from node_rate: a `ban --file` on a
    // node drains at bulk speed.
    let by_hand: Vec<Envelope> = (10..=200)
        .map(|i| report(i, &format!("203.0.113.{}", i % 250), Source::Cli, None))
        .collect();
    let r = p
        .apply_intents(&mut l, &web1, &by_hand, at(0), &mut None)
        .unwrap();
    assert_eq!(r.results.len(), by_hand.len());
    // Retries are recognised, not applied again or counted.
    let r = p
        .apply_intents(&mut l, &web1, &by_hand[..3], at(0), &mut None)
        .unwrap();
    assert!(
        r.results
            .iter()
            .all(|r| r.outcome == IntentOutcome::Duplicate)
    );
}

#[test]
fn unban_and_unallow_report_what_was_not_there() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let un = Envelope {
        id: 1,
        at: at(0),
        intent: Intent::Unban {
            target: n("198.51.100.7"),
            actor: None,
        },
    };
    let r = p.decide(&mut l, &node("web1"), &un, at(0)).unwrap();
    assert_eq!(r.outcome, IntentOutcome::NotFound);
    let ua = Envelope {
        id: 2,
        at: at(0),
        intent: Intent::Unallow {
            target: n("198.51.100.7"),
            group: None,
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &node("web1"), &ua, at(0)).unwrap().outcome,
        IntentOutcome::NotFound
    );
}

fn ban_by(
    id: u64,
    target: &str,
    source: Source,
    span: Option<&str>,
    actor: Option<&str>,
) -> Envelope {
    let mut e = report(id, target, source, span);
    if let Intent::Ban { actor: a, .. } = &mut e.intent {
        *a = actor.map(String::from);
    }
    e
}

#[test]
fn the_credential_decides_what_a_request_may_claim() {
    let p = Policy::new(PolicyOptions {
        quorum: [(Source::Report, 2), (Source::Detector, 2)].into(),
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    let thief = member("web1", None, Role::Node);
    // Claiming the hub's own sources is refused outright.
    for s in [Source::Policy, Source::Config, Source::Feed] {
        let r = p
            .decide(&mut l, &thief, &report(1, "198.51.100.7", s, None), at(0))
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{s}");
    }
    // A reporter's `cli` is a report: it waits for the quorum.
    let reporter = member("f2b", None, Role::Reporter);
    let r = p
        .decide(
            &mut l,
            &reporter,
            &report(2, "198.51.100.8", Source::Cli, None),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Pending);
    // The actor names the node, so nobody passes for an administrator.
    p.decide(
        &mut l,
        &thief,
        &ban_by(3, "198.51.100.9", Source::Cli, Some("1h"), Some("alice")),
        at(0),
    )
    .unwrap();
    let d = l
        .get(Action::Ban, &n("198.51.100.9"), None)
        .unwrap()
        .unwrap();
    assert_eq!(d.origin.actor.as_deref(), Some("web1:alice"));
    assert_eq!(d.origin.node, "web1");
    // The hub's own actors are taken as given.
    let dash = Node::internal("dashboard", Role::Operator);
    p.decide(
        &mut l,
        &dash,
        &ban_by(0, "198.51.100.10", Source::Cli, None, Some("alice")),
        at(0),
    )
    .unwrap();
    let d = l
        .get(Action::Ban, &n("198.51.100.10"), None)
        .unwrap()
        .unwrap();
    assert_eq!(d.origin.actor.as_deref(), Some("alice"));
}

#[test]
fn a_node_bans_hosts_within_limits_and_lifts_only_its_own() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let web1 = member("web1", Some("dmz"), Role::Node);
    let web2 = member("web2", Some("dmz"), Role::Node);
    let r = p
        .decide(
            &mut l,
            &web1,
            &report(1, "198.51.0.0/16", Source::Cli, None),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Refused, "wider than /24");
    let r = p
        .decide(
            &mut l,
            &web1,
            &report(2, "198.51.100.7", Source::Cli, Some("forever")),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    assert_eq!(
        lasting(&r, at(0)),
        7 * 86_400,
        "forever is shortened to the node limit"
    );
    assert!(r.reason.unwrap().contains("shortened"));
    let un = Envelope {
        id: 3,
        at: at(0),
        intent: Intent::Unban {
            target: n("198.51.100.7"),
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &web2, &un, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
    assert_eq!(
        p.decide(&mut l, &web1, &un, at(0)).unwrap().outcome,
        IntentOutcome::Accepted
    );
    // An operator's ban is not a node's to lift.
    p.decide(
        &mut l,
        &node("admin"),
        &report(4, "203.0.0.0/16", Source::Cli, None),
        at(0),
    )
    .unwrap();
    let un = Envelope {
        id: 5,
        at: at(0),
        intent: Intent::Unban {
            target: n("203.0.0.0/16"),
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &web1, &un, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
    let reporter = member("f2b", None, Role::Reporter);
    assert_eq!(
        p.decide(&mut l, &reporter, &un, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
}

#[test]
fn only_operators_change_the_networks_allowlist() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let web1 = member("web1", Some("dmz"), Role::Node);
    for (i, (target, group)) in [
        ("0.0.0.0/0", None),
        ("198.51.100.0/24", None),
        ("198.51.100.0/24", Some("web")),
    ]
    .iter()
    .enumerate()
    {
        let r = p
            .decide(&mut l, &web1, &allow(i as u64 + 1, target, *group), at(0))
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{target} {group:?}");
    }
    let r = p
        .decide(
            &mut l,
            &web1,
            &allow(9, "198.51.100.0/24", Some("dmz")),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted, "its own group");
    let reporter = member("f2b", Some("dmz"), Role::Reporter);
    let r = p
        .decide(
            &mut l,
            &reporter,
            &allow(10, "198.51.100.0/24", Some("dmz")),
            at(0),
        )
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Refused);
    // Even an operator cannot open everything at once.
    for t in ["0.0.0.0/0", "::/0"] {
        let r = p
            .decide(&mut l, &node("admin"), &allow(11, t, None), at(0))
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{t}");
    }
    // The operator's allow is not a node's to remove.
    p.decide(
        &mut l,
        &node("admin"),
        &allow(12, "192.0.2.0/24", None),
        at(0),
    )
    .unwrap();
    let ua = Envelope {
        id: 13,
        at: at(0),
        intent: Intent::Unallow {
            target: n("192.0.2.0/24"),
            group: None,
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &web1, &ua, at(0)).unwrap().outcome,
        IntentOutcome::Refused
    );
}

#[test]
fn the_hub_and_brokers_are_never_banned_and_allowed_everywhere() {
    let p = Policy::new(PolicyOptions {
        protected: vec![(n("198.18.0.1"), "palisade hub".into())],
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    for t in ["198.18.0.1", "198.18.0.0/24", "198.18.0.0/16"] {
        let r = p
            .decide(
                &mut l,
                &node("admin"),
                &report(1, t, Source::Cli, None),
                at(0),
            )
            .unwrap();
        assert_eq!(r.outcome, IntentOutcome::Refused, "{t}");
        assert!(r.reason.unwrap().contains("hub"));
    }
    p.sync_static_allows(&mut l, &[], at(0)).unwrap();
    let d = l
        .get(Action::Allow, &n("198.18.0.1"), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.origin.source, d.origin.node.as_str()),
        (Source::Policy, HUB_NODE)
    );
    let ua = Envelope {
        id: 2,
        at: at(0),
        intent: Intent::Unallow {
            target: n("198.18.0.1"),
            group: None,
            actor: None,
        },
    };
    assert_eq!(
        p.decide(&mut l, &node("admin"), &ua, at(0))
            .unwrap()
            .outcome,
        IntentOutcome::Refused
    );
    // Gone from the configuration: gone from the allowlist.
    let p2 = Policy::new(PolicyOptions::default());
    p2.sync_static_allows(&mut l, &[], at(0)).unwrap();
    assert!(
        l.get(Action::Allow, &n("198.18.0.1"), None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn configured_allows_shadow_bans_instead_of_deleting_them() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    p.decide(
        &mut l,
        &node("admin"),
        &report(1, "198.51.100.7", Source::Cli, None),
        at(0),
    )
    .unwrap();
    let office = StaticAllow {
        target: n("198.51.100.0/24"),
        comment: Some("office".into()),
        group: None,
    };
    p.sync_static_allows(&mut l, &[office], at(0)).unwrap();
    assert!(
        l.get(Action::Ban, &n("198.51.100.7"), None)
            .unwrap()
            .is_some()
    );
    p.sync_static_allows(&mut l, &[], at(0)).unwrap();
    assert!(
        l.get(Action::Allow, &n("198.51.100.0/24"), None)
            .unwrap()
            .is_none()
    );
    assert!(
        l.get(Action::Ban, &n("198.51.100.7"), None)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_nodes_allow_is_pinned_to_its_first_address() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    assert_eq!(
        p.node_address(&mut l, "web1", None, ip("198.18.0.11"), at(0))
            .unwrap(),
        NodeAddress::Pinned
    );
    assert!(
        l.get(Action::Allow, &n("198.18.0.11"), None)
            .unwrap()
            .is_some()
    );
    // A thief using web1's token from elsewhere moves nothing.
    let r = p
        .node_address(&mut l, "web1", None, ip("203.0.113.66"), at(0))
        .unwrap();
    assert!(matches!(r, NodeAddress::Refused(_)));
    assert!(
        l.get(Action::Allow, &n("203.0.113.66"), None)
            .unwrap()
            .is_none()
    );
    assert!(
        l.get(Action::Allow, &n("198.18.0.11"), None)
            .unwrap()
            .is_some()
    );
    // Revoked: the allow and the pin go; a new credential pins anew.
    p.node_gone(&mut l, "web1").unwrap();
    assert!(
        l.get(Action::Allow, &n("198.18.0.11"), None)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        p.node_address(&mut l, "web1", None, ip("198.18.0.12"), at(0))
            .unwrap(),
        NodeAddress::Pinned
    );
    // Inside node_networks a node may move; outside it is never allowed.
    let p = Policy::new(PolicyOptions {
        node_networks: vec![n("198.18.0.0/24")],
        ..PolicyOptions::default()
    });
    let r = p
        .node_address(&mut l, "web1", None, ip("198.18.0.13"), at(0))
        .unwrap();
    assert_eq!(
        r,
        NodeAddress::Moved {
            from: ip("198.18.0.12")
        }
    );
    assert!(
        l.get(Action::Allow, &n("198.18.0.12"), None)
            .unwrap()
            .is_none()
    );
    let r = p
        .node_address(&mut l, "web2", None, ip("203.0.113.5"), at(0))
        .unwrap();
    assert!(matches!(r, NodeAddress::Refused(_)));
}

#[test]
fn forgeable_detections_need_several_servers_and_the_ban_names_them() {
    let p = Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let probe = |id| {
        let mut e = report(id, "198.51.100.7", Source::Detector, None);
        if let Intent::Ban { unverified, .. } = &mut e.intent {
            *unverified = true;
        }
        e
    };
    let r = p
        .decide(&mut l, &member("web1", None, Role::Node), &probe(1), at(0))
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Pending);
    let r = p
        .decide(&mut l, &member("web1", None, Role::Node), &probe(2), at(1))
        .unwrap();
    assert_eq!(
        r.outcome,
        IntentOutcome::Pending,
        "the same server twice is one"
    );
    let r = p
        .decide(&mut l, &member("web2", None, Role::Node), &probe(3), at(2))
        .unwrap();
    assert_eq!(r.outcome, IntentOutcome::Accepted);
    let d = l
        .get(Action::Ban, &n("198.51.100.7"), None)
        .unwrap()
        .unwrap();
    assert!(
        d.evidence
            .iter()
            .any(|e| e.contains("web1") && e.contains("web2")),
        "{:?}",
        d.evidence
    );
}

#[test]
fn reserved_and_odd_names_are_refused() {
    for bad in ["dashboard", "Hub", "vallumd", "..", ".", "a/b", ""] {
        assert!(check_node_name(bad).is_err(), "{bad}");
    }
    assert!(check_node_name("web1.example").is_ok());
}

#[test]
fn a_revoked_node_starts_its_numbering_over() {
    let p = &mut Policy::new(PolicyOptions::default());
    let mut l = Memory::default();
    let web1 = member("web1", None, Role::Node);
    // A thief with web1's token sends a huge id...
    p.apply_intents(
        &mut l,
        &web1,
        &[report(u64::MAX - 1, "198.51.100.7", Source::Cli, None)],
        at(0),
        &mut None,
    )
    .unwrap();
    let r = p
        .apply_intents(
            &mut l,
            &web1,
            &[report(5, "198.51.100.8", Source::Cli, None)],
            at(0),
            &mut None,
        )
        .unwrap();
    assert_eq!(r.results[0].outcome, IntentOutcome::Duplicate);
    // ...until the operator revokes the token: the new one is heard.
    p.node_gone(&mut l, "web1").unwrap();
    let r = p
        .apply_intents(
            &mut l,
            &web1,
            &[report(5, "198.51.100.8", Source::Cli, None)],
            at(0),
            &mut None,
        )
        .unwrap();
    assert_eq!(r.results[0].outcome, IntentOutcome::Accepted);
}

#[test]
fn the_hubs_own_reporters_are_rate_limited_too() {
    let p = &mut Policy::new(PolicyOptions {
        rate: RateLimit {
            per_second: 0.0001,
            burst: 2,
        },
        ..PolicyOptions::default()
    });
    let mut l = Memory::default();
    let vallumd = Node::internal("vallumd", Role::Reporter);
    let batch: Vec<Envelope> = (1..=4)
        .map(|i| report(i, &format!("198.51.100.{i}"), Source::Report, None))
        .collect();
    let r = p
        .apply_intents(&mut l, &vallumd, &batch, at(0), &mut None)
        .unwrap();
    assert_eq!(r.results.len(), 2);
    let dash = Node::internal("dashboard", Role::Operator);
    let r = p
        .apply_intents(&mut l, &dash, &batch, at(0), &mut None)
        .unwrap();
    assert_eq!(r.results.len(), 4, "operators are not limited");
}

mod rollup;

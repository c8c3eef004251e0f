use super::*;
use std::collections::BTreeMap;
use std::convert::Infallible;

/// The ledger as plain maps, recording what would be broadcast.
#[derive(Default)]
struct Memory {
    decisions: BTreeMap<(Action, Net, Option<String>), Decision>,
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
    fn bans_within(&self, target: &Net) -> Result<Vec<Decision>, Infallible> {
        Ok(self
            .decisions
            .values()
            .filter(|d| {
                d.action == Action::Ban && target.contains(&d.target) && d.target != *target
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
}

fn n(s: &str) -> Net {
    s.parse().unwrap()
}

fn node(name: &str) -> Node {
    Node {
        name: name.into(),
        group: None,
    }
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
    let p = Policy::new(PolicyConfig::default());
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
    let p = Policy::new(PolicyConfig::default());
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
fn an_allow_lifts_the_bans_it_covers_but_a_group_allow_does_not() {
    let p = Policy::new(PolicyConfig::default());
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
        &allow(9, "203.0.113.0/24", Some("dmz")),
        at(0),
    )
    .unwrap();
    assert_eq!(
        l.broadcast,
        ["put allow 203.0.113.0/24"],
        "a group allow leaves the global ban alone"
    );
    l.broadcast.clear();
    p.decide(
        &mut l,
        &node("admin"),
        &allow(10, "198.51.100.0/24", None),
        at(0),
    )
    .unwrap();
    l.broadcast.sort();
    assert_eq!(
        l.broadcast,
        [
            "put allow 198.51.100.0/24",
            "remove ban 198.51.100.7",
            "remove ban 198.51.100.8"
        ]
    );
}

#[test]
fn repeats_inside_the_window_are_suppressed_then_extend() {
    let p = Policy::new(PolicyConfig::default());
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
fn repeat_offenders_get_longer_bans_up_to_the_cap() {
    let config = PolicyConfig {
        escalation: Some(Escalation {
            factor: 2.0,
            max: Duration::from_secs(6 * 3600),
            forget_after: Duration::from_secs(30 * 86_400),
        }),
        ..PolicyConfig::default()
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
    let mut config = PolicyConfig::default();
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
fn rate_limits_are_per_node() {
    let p = &mut Policy::new(PolicyConfig {
        rate: RateLimit {
            per_second: 0.0001,
            burst: 3,
        },
        ..PolicyConfig::default()
    });
    assert!((0..3).all(|_| p.admit("web1")));
    assert!(!p.admit("web1"));
    assert!(p.admit("web2"), "another node has its own bucket");
}

#[test]
fn unban_and_unallow_report_what_was_not_there() {
    let p = Policy::new(PolicyConfig::default());
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

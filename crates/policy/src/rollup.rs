//! The roll-up: when enough distinct hosts of one network are banned
//! within a window, the network is banned whole, in their place.
//!
//! The rule is pure and shared: the hub's policy applies it to the bans it
//! makes ([`Policy::roll_up`](crate::Policy)), and an agent that is not
//! joined to a network applies it to its own (through [`Rollup::network_of`],
//! [`Rollup::members`] and [`Rollup::network_ban`]), so both count, name and
//! explain a roll-up the same way.
//!
//! Members are the active bans inside the network (hosts, or narrower
//! networks: a detector's /64 bans count towards a /48) made within the
//! window by a detector, a report or by hand; feeds and the
//! configuration keep their own lists, and decisions of the policy itself
//! (an earlier roll-up) never count. The network ban is the policy's own
//! (source `policy`, rule [`RULE`]); it lists its members in its evidence
//! and replaces the member bans whose time it covers. Members that outlast
//! it (a longer ban by hand) stay, so nothing is ever shortened.

use std::time::Duration;

use palisade_model::net::Family;
use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};

/// The rule a rolled-up network ban carries.
pub const RULE: &str = "rollup";

/// The longest evidence line a roll-up writes (the model keeps 512
/// characters of a line).
const EVIDENCE_LINE: usize = 480;

/// When many banned hosts of one network become one network ban
/// (`[rollup]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    /// Distinct banned hosts of one network that ban it whole.
    pub hosts: u32,
    /// Member bans count when they were made within this long.
    pub window: Duration,
    /// The network an IPv4 host belongs to, as a prefix length; `None`:
    /// IPv4 hosts are never rolled up.
    pub prefix_v4: Option<u8>,
    /// The same for IPv6 (a /64 by default: one subscriber's network).
    pub prefix_v6: Option<u8>,
}

impl Default for Rollup {
    fn default() -> Self {
        Rollup {
            hosts: 10,
            window: Duration::from_secs(3600),
            prefix_v4: None,
            prefix_v6: Some(64),
        }
    }
}

impl Rollup {
    /// The network a ban of `host` (a host, or a narrower network) would
    /// be rolled up into: `None` when it is not narrower than the roll-up's
    /// network or its family is not rolled up.
    pub fn network_of(&self, host: &Net) -> Option<Net> {
        let prefix = match host.family() {
            Family::V4 => self.prefix_v4?,
            Family::V6 => self.prefix_v6?,
        };
        (prefix < host.prefix()).then(|| Net::truncating(host.addr(), prefix))
    }

    /// Whether `d` counts towards a roll-up at `now`.
    pub fn counts(&self, d: &Decision, now: Timestamp) -> bool {
        d.action == Action::Ban
            && d.group.is_none()
            && self.network_of(&d.target).is_some()
            && d.is_active(now)
            && now.since(d.created) < self.window
            && matches!(
                d.origin.source,
                Source::Detector | Source::Report | Source::Cli
            )
    }

    /// The members of a roll-up among `bans` (the bans inside one
    /// network), when there are enough of them; else `None`.
    pub fn members<'a>(
        &self,
        bans: impl IntoIterator<Item = &'a Decision>,
        now: Timestamp,
    ) -> Option<Vec<&'a Decision>> {
        let mut members: Vec<&Decision> =
            bans.into_iter().filter(|d| self.counts(d, now)).collect();
        members.sort_by_key(|d| d.target);
        members.dedup_by_key(|d| d.target);
        (members.len() as u64 >= u64::from(self.hosts.max(1))).then_some(members)
    }

    /// The network ban that replaces `members`, made by `node` at `now`
    /// for `span`: rule [`RULE`], a reason naming the rule's settings, and
    /// the members (address, rule, who) in its evidence.
    pub fn network_ban(
        &self,
        network: Net,
        members: &[&Decision],
        node: &str,
        span: Span,
        now: Timestamp,
    ) -> Decision {
        let what = if members.iter().all(|m| m.target.is_host()) {
            "hosts"
        } else {
            "hosts and networks"
        };
        let reason = format!(
            "{} {what} of {network} banned within {} (roll-up: [rollup] hosts = {}, {} = {})",
            members.len(),
            palisade_model::time::compact_duration(self.window),
            self.hosts,
            match network.family() {
                Family::V4 => "ipv4_prefix",
                Family::V6 => "ipv6_prefix",
            },
            network.prefix()
        );
        Decision::new(
            Action::Ban,
            network,
            now,
            span,
            Origin::new(node, Source::Policy),
        )
        .with_rule(RULE)
        .with_reason(reason)
        .with_scope(Scope::Network)
        .with_evidence(evidence(members))
    }

    /// Whether the network ban `network` replaces `member`: its time is
    /// covered (a member that outlasts it stays).
    pub fn replaces(network: &Decision, member: &Decision) -> bool {
        match (network.expires, member.expires) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(n), Some(m)) => m <= n,
        }
    }
}

/// Says in `ban`'s reason that it was escalated, when it lasts longer than
/// `base`: the network's `offence`-th roll-up.
pub fn note_escalation(ban: &mut Decision, offence: u32, base: Span) {
    let lasting = ban
        .expires
        .map_or(Span::Forever, |e| Span::For(e.since(ban.created)));
    if lasting != base {
        ban.reason = ban.reason.take().map(|r| {
            format!("{r}; offence {offence} of this network: {base} escalated to {lasting}")
        });
    }
}

/// Evidence lines listing the members, each `address (rule, by)`, packed
/// into lines the model keeps whole; the last line says how many did not
/// fit.
fn evidence(members: &[&Decision]) -> Vec<String> {
    let max_lines = palisade_model::decision::MAX_EVIDENCE_LINES;
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::from("members:");
    let mut listed = 0;
    for m in members {
        let item = format!(
            " {} ({}, {} on {})",
            m.target,
            m.rule.as_deref().unwrap_or("ban"),
            m.origin.source,
            m.origin.node
        );
        if current.len() + item.len() > EVIDENCE_LINE {
            if lines.len() + 2 >= max_lines {
                break;
            }
            lines.push(std::mem::replace(&mut current, String::from("members:")));
        }
        current.push_str(&item);
        listed += 1;
    }
    lines.push(current);
    if listed < members.len() {
        lines.push(format!("and {} more members", members.len() - listed));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: &str, source: Source, at: Timestamp) -> Decision {
        Decision::new(
            Action::Ban,
            target.parse().unwrap(),
            at,
            Span::For(Duration::from_secs(3600)),
            Origin::new("web1", source),
        )
        .with_rule("sshd")
    }

    #[test]
    fn a_host_belongs_to_its_network_only_when_its_family_is_rolled_up() {
        let r = Rollup::default();
        assert_eq!(r.network_of(&"192.0.2.7".parse().unwrap()), None);
        assert_eq!(
            r.network_of(&"2001:db8:1::7".parse().unwrap()),
            Some("2001:db8:1::/64".parse().unwrap())
        );
        assert_eq!(r.network_of(&"2001:db8:1::/64".parse().unwrap()), None);
        let site = Rollup {
            prefix_v6: Some(48),
            ..Rollup::default()
        };
        assert_eq!(
            site.network_of(&"2001:db8:1:2::/64".parse().unwrap()),
            Some("2001:db8:1::/48".parse().unwrap())
        );
        let v4 = Rollup {
            prefix_v4: Some(24),
            ..Rollup::default()
        };
        assert_eq!(
            v4.network_of(&"192.0.2.7".parse().unwrap()),
            Some("192.0.2.0/24".parse().unwrap())
        );
    }

    #[test]
    fn only_recent_active_narrower_bans_by_detectors_reports_and_hand_count() {
        let r = Rollup::default();
        let now = Timestamp::from_millis(10_000_000);
        let old = Timestamp::from_millis(10_000_000 - 3_600_001);
        assert!(r.counts(&ban("2001:db8::1", Source::Detector, now), now));
        assert!(r.counts(&ban("2001:db8::1", Source::Report, now), now));
        assert!(r.counts(&ban("2001:db8::1", Source::Cli, now), now));
        assert!(!r.counts(&ban("2001:db8::1", Source::Feed, now), now));
        assert!(!r.counts(&ban("2001:db8::1", Source::Policy, now), now));
        // A narrower network counts; the roll-up's own width does not.
        assert!(r.counts(&ban("2001:db8::/120", Source::Cli, now), now));
        assert!(!r.counts(&ban("2001:db8::/64", Source::Cli, now), now));
        // Made before the window.
        let mut stale = ban("2001:db8::1", Source::Report, old);
        stale.expires = None;
        assert!(!r.counts(&stale, now));
    }

    #[test]
    fn members_are_distinct_hosts_and_need_the_threshold() {
        let r = Rollup {
            hosts: 3,
            ..Rollup::default()
        };
        let now = Timestamp::from_millis(1_000_000);
        let bans: Vec<Decision> = ["2001:db8::1", "2001:db8::2"]
            .iter()
            .map(|a| ban(a, Source::Report, now))
            .collect();
        assert!(r.members(&bans, now).is_none());
        let mut more = bans.clone();
        more.push(ban("2001:db8::3", Source::Detector, now));
        assert_eq!(r.members(&more, now).unwrap().len(), 3);
    }

    #[test]
    fn the_network_ban_lists_its_members_within_the_evidence_limits() {
        let r = Rollup::default();
        let now = Timestamp::from_millis(1_000_000);
        let bans: Vec<Decision> = (1..=300)
            .map(|i| ban(&format!("2001:db8::{i:x}"), Source::Report, now))
            .collect();
        let members: Vec<&Decision> = bans.iter().collect();
        let d = r.network_ban(
            "2001:db8::/64".parse().unwrap(),
            &members,
            "hub",
            Span::For(Duration::from_secs(60)),
            now,
        );
        assert_eq!(d.rule.as_deref(), Some(RULE));
        assert_eq!(d.origin.source, Source::Policy);
        assert!(d.evidence.len() <= palisade_model::decision::MAX_EVIDENCE_LINES);
        assert!(d.evidence.iter().all(|l| l.len() <= EVIDENCE_LINE));
        assert!(d.evidence[0].starts_with("members: 2001:db8::1 (sshd, report on web1)"));
        assert!(d.evidence.last().unwrap().ends_with("more members"));
        assert!(d.reason.unwrap().starts_with("300 hosts of 2001:db8::/64"));
    }
}

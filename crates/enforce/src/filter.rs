//! Several enforcers at once, each applying only part of the decisions.
//!
//! An agent may drive nftables for everything, a fail2ban jail for the bans
//! of one rule, and an ipset that another firewall reads: each
//! `[[enforcer]]` table of the configuration becomes one enforcer
//! ([`crate::config`]), wrapped in [`Filtered`] when its `filter` says it
//! takes only some entries.
//!
//! A [`Filter`] looks at what an [`Entry`] carries: its action (ban or
//! allow), its family, host or network, and its rule (glob patterns such as
//! `sshd*`). A `Remove` carries only action and network, so a filter on
//! rules remembers which networks it let through and passes only their
//! removals: an unban never reaches a command enforcer that never banned
//! the address.

use std::collections::HashSet;

use palisade_model::{Action, Family, Net};
use serde::Deserialize;

use crate::enforcer::{Change, Drift, EnforceError, Enforcer, Entry, Status};

/// An address family as the configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    /// `ipv4`.
    Ipv4,
    /// `ipv6`.
    Ipv6,
}

impl FamilyName {
    /// The model's family for this name.
    pub fn family(self) -> Family {
        match self {
            FamilyName::Ipv4 => Family::V4,
            FamilyName::Ipv6 => Family::V6,
        }
    }
}

/// What an enforcer applies. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// `ban`, `allow` or both (default both).
    pub actions: Vec<Action>,
    /// `ipv4`, `ipv6` or both (default both).
    pub families: Vec<FamilyName>,
    /// Only single addresses (/32, /128), no networks.
    pub hosts_only: bool,
    /// Glob patterns (`*`, `?`) on the rule or jail behind a decision, e.g.
    /// `["sshd*", "postfix"]`; decisions without a rule match `""` only
    /// (so `"*"` takes them too).
    pub rules: Vec<String>,
    /// Rule patterns to leave out, checked after `rules`.
    pub exclude_rules: Vec<String>,
}

impl Filter {
    /// True when the filter lets everything through.
    pub fn is_all(&self) -> bool {
        self.actions.is_empty()
            && self.families.is_empty()
            && !self.hosts_only
            && self.rules.is_empty()
            && self.exclude_rules.is_empty()
    }

    /// True when the filter looks at rules, which removals do not carry.
    pub fn uses_rules(&self) -> bool {
        !self.rules.is_empty() || !self.exclude_rules.is_empty()
    }

    /// Whether an entry with this action and network could pass (everything
    /// but the rule).
    pub fn matches_net(&self, action: Action, net: &Net) -> bool {
        (self.actions.is_empty() || self.actions.contains(&action))
            && (self.families.is_empty()
                || self.families.iter().any(|f| f.family() == net.family()))
            && (!self.hosts_only || net.is_host())
    }

    /// Whether a rule name (or no rule) passes.
    pub fn matches_rule(&self, rule: Option<&str>) -> bool {
        let r = rule.unwrap_or("");
        (self.rules.is_empty() || self.rules.iter().any(|p| glob(p, r)))
            && !self.exclude_rules.iter().any(|p| glob(p, r))
    }

    /// True if the decision `e` goes to the enforcer.
    pub fn matches(&self, e: &Entry) -> bool {
        self.matches_net(e.action, &e.net) && self.matches_rule(e.rule.as_deref())
    }
}

/// `*` matches any run of characters, `?` one character; everything else
/// itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An enforcer that receives only what its [`Filter`] passes.
pub struct Filtered<E: Enforcer> {
    inner: E,
    filter: Filter,
    /// With a filter on rules: the (action, network) pairs let through, so
    /// their removals (which carry no rule) pass too.
    passed: HashSet<(Action, Net)>,
}

impl<E: Enforcer> Filtered<E> {
    /// `inner`, given only what `filter` lets through.
    pub fn new(inner: E, filter: Filter) -> Filtered<E> {
        Filtered {
            inner,
            filter,
            passed: HashSet::new(),
        }
    }

    /// The wrapped enforcer.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The wrapped enforcer, to change it.
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

    /// The filter in front of it.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    fn passes_put(&mut self, e: &Entry) -> bool {
        if !self.filter.matches(e) {
            return false;
        }
        if self.filter.uses_rules() {
            self.passed.insert((e.action, e.net));
        }
        true
    }

    fn passes_remove(&mut self, action: Action, net: &Net) -> bool {
        if !self.filter.matches_net(action, net) {
            return false;
        }
        !self.filter.uses_rules() || self.passed.remove(&(action, *net))
    }
}

impl<E: Enforcer> Enforcer for Filtered<E> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn replace_all(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
    ) -> Result<(), EnforceError> {
        self.passed.clear();
        let mut pass = entries.filter(|e| self.filter.matches(e)).inspect(|e| {
            if self.filter.uses_rules() {
                self.passed.insert((e.action, e.net));
            }
        });
        // The closure above borrows self.filter and self.passed; the inner
        // enforcer is a different field.
        self.inner.replace_all(&mut pass)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let mut kept = Vec::with_capacity(changes.len());
        for c in changes {
            let pass = match c {
                Change::Put(e) => self.passes_put(e),
                Change::Remove { action, net } => self.passes_remove(*action, net),
            };
            if pass {
                kept.push(c.clone());
            }
        }
        self.inner.apply(&kept)
    }

    fn remove(&mut self) -> Result<(), EnforceError> {
        self.passed.clear();
        self.inner.remove()
    }

    fn status(&mut self, kernel: bool) -> Result<Status, EnforceError> {
        self.inner.status(kernel)
    }

    fn drift(&mut self, repair: bool) -> Result<Drift, EnforceError> {
        self.inner.drift(repair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: Action, net: &str, rule: Option<&str>) -> Entry {
        Entry {
            action,
            net: net.parse().unwrap(),
            expires: None,
            comment: None,
            rule: rule.map(str::to_string),
            list: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob("sshd*", "sshd-password"));
        assert!(glob("sshd*", "sshd"));
        assert!(!glob("sshd*", "postfix"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*-throttle", "sshd-throttle"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
    }

    #[test]
    fn filter_by_action_family_hosts_and_rule() {
        let f = Filter {
            actions: vec![Action::Ban],
            families: vec![FamilyName::Ipv4],
            hosts_only: true,
            rules: vec!["sshd*".into()],
            exclude_rules: vec!["sshd-noisy".into()],
        };
        assert!(f.matches(&entry(Action::Ban, "198.18.0.1", Some("sshd"))));
        assert!(!f.matches(&entry(Action::Allow, "198.18.0.1", Some("sshd"))));
        assert!(!f.matches(&entry(Action::Ban, "2001:db8::1", Some("sshd"))));
        assert!(!f.matches(&entry(Action::Ban, "198.18.0.0/24", Some("sshd"))));
        assert!(!f.matches(&entry(Action::Ban, "198.18.0.1", None)));
        assert!(!f.matches(&entry(Action::Ban, "198.18.0.1", Some("sshd-noisy"))));
        assert!(Filter::default().is_all());
        let star = Filter {
            rules: vec!["*".into()],
            ..Filter::default()
        };
        assert!(star.matches(&entry(Action::Ban, "198.18.0.1", None)));
    }

    /// Records what reaches it.
    #[derive(Default)]
    struct Rec(Vec<String>);

    impl Enforcer for Rec {
        fn name(&self) -> &str {
            "rec"
        }
        fn replace_all(
            &mut self,
            entries: &mut dyn Iterator<Item = Entry>,
        ) -> Result<(), EnforceError> {
            self.0.clear();
            for e in entries {
                self.0.push(format!("all {}", e.net));
            }
            Ok(())
        }
        fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
            for c in changes {
                self.0.push(match c {
                    Change::Put(e) => format!("put {}", e.net),
                    Change::Remove { net, .. } => format!("remove {net}"),
                });
            }
            Ok(())
        }
        fn remove(&mut self) -> Result<(), EnforceError> {
            Ok(())
        }
    }

    #[test]
    fn filtered_passes_removals_only_of_what_it_let_through() {
        let f = Filter {
            rules: vec!["sshd".into()],
            ..Filter::default()
        };
        let mut e = Filtered::new(Rec::default(), f);
        e.replace_all(
            &mut vec![
                entry(Action::Ban, "198.18.0.1", Some("sshd")),
                entry(Action::Ban, "198.18.0.2", Some("web")),
            ]
            .into_iter(),
        )
        .unwrap();
        e.apply(&[
            Change::Put(entry(Action::Ban, "198.18.0.3", Some("sshd"))),
            Change::Put(entry(Action::Ban, "198.18.0.4", None)),
            Change::Remove {
                action: Action::Ban,
                net: "198.18.0.1".parse().unwrap(),
            },
            Change::Remove {
                action: Action::Ban,
                net: "198.18.0.2".parse().unwrap(),
            },
            Change::Remove {
                action: Action::Ban,
                net: "198.18.0.4".parse().unwrap(),
            },
        ])
        .unwrap();
        assert_eq!(
            e.inner().0,
            ["all 198.18.0.1", "put 198.18.0.3", "remove 198.18.0.1"]
        );
    }
}

//! Several enforcers at once, each applying only part of the decisions.
//!
//! An agent may drive nftables for everything, a fail2ban jail for the bans
//! of one rule, and an ipset that another firewall reads: each
//! `[[enforcer]]` table of the configuration ([`EnforcerConfig`]) becomes one
//! enforcer ([`build`]), wrapped in [`Filtered`] when its `filter` says it
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

use crate::command::{CommandConfig, CommandEnforcer};
use crate::ipset::{IpsetConfig, IpsetEnforcer};
use crate::layout::{CONNTRACK_PRIORITY, valid_interface_name};
use crate::nftables::{NftConfig, Nftables};
use crate::xt_recent::{XtRecent, XtRecentConfig};
use crate::{Change, EnforceError, Enforcer, Entry, Status};

/// An address family as the configuration spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    Ipv4,
    Ipv6,
}

impl FamilyName {
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
    pub fn new(inner: E, filter: Filter) -> Filtered<E> {
        Filtered {
            inner,
            filter,
            passed: HashSet::new(),
        }
    }

    pub fn inner(&self) -> &E {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }

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
}

/// One `[[enforcer]]` table of the configuration; `kind` selects the
/// variant. See [`EXAMPLE_TOML`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EnforcerConfig {
    /// palisade's own nftables table (the default enforcer).
    Nftables(NftablesConfig),
    /// ipsets read by the operator's iptables rules.
    Ipset(IpsetConfig),
    /// iptables `recent` match lists.
    XtRecent(XtRecentConfig),
    /// A ban and an unban command per address.
    Command(CommandConfig),
}

impl EnforcerConfig {
    /// The filter of whichever kind this is.
    pub fn filter(&self) -> &Filter {
        match self {
            EnforcerConfig::Nftables(c) => &c.filter,
            EnforcerConfig::Ipset(c) => &c.filter,
            EnforcerConfig::XtRecent(c) => &c.filter,
            EnforcerConfig::Command(c) => &c.filter,
        }
    }
}

/// `kind = "nftables"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NftablesConfig {
    /// The `inet` table palisade owns.
    #[serde(deserialize_with = "nft_name")]
    pub table: String,
    /// Priority of its input chain (port-probe logging only).
    pub priority: i32,
    /// Priority of its prerouting chain, where banned sources are dropped;
    /// must be below conntrack's -200 (default -300, `raw`).
    #[serde(deserialize_with = "before_conntrack")]
    pub prerouting_priority: i32,
    /// Interfaces that also drop banned sources in an ingress chain.
    #[serde(deserialize_with = "interface_names")]
    pub ingress_devices: Vec<String>,
    pub filter: Filter,
    /// Set by the agent, not the operator: the NFLOG group of a configured
    /// port-probe source, reported to by the table's input chain.
    #[serde(skip)]
    pub probe_log_group: Option<u16>,
}

/// nftables object names: a letter, then letters, digits, `_` or `.`.
fn nft_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a valid nftables table name (a letter, then letters, digits, '_' or '.', at most 64)"
        )))
    }
}

/// A prerouting priority at or after conntrack's would let every banned
/// packet cost a conntrack entry again: refused.
fn before_conntrack<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let p = i32::deserialize(d)?;
    if p < CONNTRACK_PRIORITY {
        Ok(p)
    } else {
        Err(serde::de::Error::custom(format!(
            "prerouting_priority {p} runs after connection tracking ({CONNTRACK_PRIORITY}): \
             use -300 (raw) or another value below {CONNTRACK_PRIORITY}"
        )))
    }
}

/// Most ingress chains one table gets.
const MAX_INGRESS_DEVICES: usize = 64;

fn interface_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.len() > MAX_INGRESS_DEVICES {
        return Err(serde::de::Error::custom(format!(
            "{} ingress_devices: at most {MAX_INGRESS_DEVICES}",
            names.len()
        )));
    }
    let mut seen = HashSet::new();
    for n in &names {
        if !valid_interface_name(n) {
            return Err(serde::de::Error::custom(format!(
                "{n:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"
            )));
        }
        if !seen.insert(n) {
            return Err(serde::de::Error::custom(format!(
                "interface {n:?} is listed twice in ingress_devices"
            )));
        }
    }
    Ok(names)
}

impl Default for NftablesConfig {
    fn default() -> Self {
        let d = NftConfig::default();
        NftablesConfig {
            table: d.table,
            priority: d.priority,
            prerouting_priority: d.prerouting_priority,
            ingress_devices: d.ingress_devices,
            filter: Filter::default(),
            probe_log_group: None,
        }
    }
}

/// Builds the enforcer an `[[enforcer]]` table describes, for the network
/// namespace of the calling thread, wrapped in [`Filtered`] if its filter
/// does not take everything. Kernel objects are checked (and created where
/// the configuration allows) on the first `replace_all`.
pub fn build(config: &EnforcerConfig) -> Result<Box<dyn Enforcer>, EnforceError> {
    fn boxed<E: Enforcer + 'static>(e: E, f: &Filter) -> Box<dyn Enforcer> {
        if f.is_all() {
            Box::new(e)
        } else {
            Box::new(Filtered::new(e, f.clone()))
        }
    }
    Ok(match config {
        EnforcerConfig::Nftables(c) => boxed(
            Nftables::new(NftConfig {
                table: c.table.clone(),
                priority: c.priority,
                prerouting_priority: c.prerouting_priority,
                ingress_devices: c.ingress_devices.clone(),
                probe_log_group: c.probe_log_group,
            })?,
            &c.filter,
        ),
        EnforcerConfig::Ipset(c) => boxed(IpsetEnforcer::new(c.clone())?, &c.filter),
        EnforcerConfig::XtRecent(c) => boxed(XtRecent::new(c.clone())?, &c.filter),
        EnforcerConfig::Command(c) => boxed(CommandEnforcer::new(c.clone())?, &c.filter),
    })
}

/// Commented examples of `[[enforcer]]` tables, for the configuration
/// template.
pub const EXAMPLE_TOML: &str = r#"
# Enforcers: where decisions go. Without any [[enforcer]], palisade uses its
# own nftables table. Several may run at once, each with a `filter` saying
# what it applies (actions, families, hosts_only, rules, exclude_rules).

[[enforcer]]
kind = "nftables"
table = "palisade"
# Banned sources are dropped in a prerouting chain before connection
# tracking and DNAT (priority -300, raw); the input chain at `priority` only
# logs port probes. Interfaces listed here also drop banned sources at
# their ingress, the earliest point nftables offers.
prerouting_priority = -300
ingress_devices = []
priority = -10

# ipsets for firewalls built on `-m set --match-set NAME src -j DROP`
# (vallumd, diswall, maltrail). Existing sets are used as they are (type,
# family, timeout and comment support are read from the kernel); with a
# `create` table palisade creates a missing set and owns it (`palisade agent
# --remove-rules` destroys it). A hash:ip set takes single addresses only:
# give networks a hash:net set. bitmap:ip takes addresses in its range
# (with `netmask`, networks of that size; ipset has no "bitmap:net").
[[enforcer]]
kind = "ipset"
[[enforcer.set]]
name = "diswall-bl"
action = "ban"
family = "ipv4"
create = { type = "hash:ip", timeout = 86400, maxelem = 1000000, hashsize = 32768 }
[[enforcer.set]]
name = "palisade-bl-net"
action = "ban"
family = "ipv4"
only = "networks"
create = { type = "hash:net", timeout = 86400 }
[[enforcer.set]]
name = "diswall-wl"
action = "allow"
family = "ipv4"
create = { type = "hash:net", comment = true }

# xt_recent lists for rules like
#   iptables -A INPUT -m recent --name THROTTLE --rcheck --seconds 180 -j DROP
#   iptables -A INPUT -m recent --name BLOCKER --rcheck --seconds 172800 -j DROP
# A ban goes to the list of the first route whose rule pattern matches,
# else to `default_list`; an unban removes the address from every list.
[[enforcer]]
kind = "xt-recent"
default_list = "BLOCKER"
routes = [ { rule = "sshd-throttle", list = "THROTTLE" } ]
filter = { actions = ["ban"], hosts_only = true }

# A command per ban and unban, run without a shell. Placeholders: {ip}
# (single addresses only), {net} (CIDR), {jail} and {rule} (the decision's
# rule, else `jail`), {duration} (seconds left; `forever_duration`, -1 by
# default, for permanent bans), {family} (4 or 6). Commands run on worker
# threads with a timeout, failures are retried and logged with their output.
[[enforcer]]
kind = "command"
name = "fail2ban-sshd"
ban = "fail2ban-client set {jail} banip {ip}"
unban = "fail2ban-client set {jail} unbanip {ip}"
jail = "sshd"
timeout = "30s"
retries = 3
filter = { actions = ["ban"], hosts_only = true, rules = ["sshd*"] }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::Timestamp;

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
        let _ = Timestamp::now();
    }

    #[test]
    fn example_config_parses() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            enforcer: Vec<EnforcerConfig>,
        }
        let doc: Doc = toml::from_str(EXAMPLE_TOML).expect("EXAMPLE_TOML parses");
        assert_eq!(doc.enforcer.len(), 4);
        assert!(matches!(&doc.enforcer[0], EnforcerConfig::Nftables(c) if c.table == "palisade"));
        let EnforcerConfig::Ipset(ipset) = &doc.enforcer[1] else {
            panic!("ipset expected")
        };
        assert_eq!(ipset.sets.len(), 3);
        assert!(doc.enforcer[3].filter().hosts_only);
        // Unknown keys are errors, also inside a variant.
        let bad = toml::from_str::<Doc>("[[enforcer]]\nkind = \"nftables\"\ntabel = \"x\"\n");
        assert!(bad.is_err());
        let bad = toml::from_str::<Doc>("[[enforcer]]\nkind = \"iptables\"\n");
        assert!(bad.unwrap_err().to_string().contains("unknown variant"));
    }

    #[test]
    fn ingress_devices_and_prerouting_priority_are_read() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            enforcer: Vec<EnforcerConfig>,
        }
        let parse = |body: &str| {
            toml::from_str::<Doc>(&format!("[[enforcer]]\nkind = \"nftables\"\n{body}"))
                .map(|d| match d.enforcer.into_iter().next() {
                    Some(EnforcerConfig::Nftables(c)) => c,
                    other => panic!("nftables expected: {other:?}"),
                })
                .map_err(|e| e.to_string())
        };
        let c = parse("ingress_devices = [\"eth0\", \"br-1a2b3c\"]\nprerouting_priority = -350\n")
            .unwrap();
        assert_eq!(c.ingress_devices, ["eth0", "br-1a2b3c"]);
        assert_eq!(c.prerouting_priority, -350);
        let d = parse("").unwrap();
        assert_eq!((d.prerouting_priority, d.ingress_devices.len()), (-300, 0));
    }

    #[test]
    fn hostile_ingress_devices_and_late_priorities_are_refused() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            #[allow(dead_code)]
            enforcer: Vec<EnforcerConfig>,
        }
        let err = |body: &str| {
            toml::from_str::<Doc>(&format!("[[enforcer]]\nkind = \"nftables\"\n{body}"))
                .unwrap_err()
                .to_string()
        };
        for name in [
            "\"\"",
            "\"..\"",
            "\"eth0/../x\"",
            "\"eth0 drop\"",
            "\"eth0\\n\"",
            "\"a-name-longer-than-15\"",
        ] {
            let e = err(&format!("ingress_devices = [{name}]\n"));
            assert!(e.contains("not a valid interface name"), "{name}: {e}");
        }
        let e = err("ingress_devices = [\"eth0\", \"eth0\"]\n");
        assert!(e.contains("listed twice"), "{e}");
        let many: Vec<String> = (0..65).map(|i| format!("\"e{i}\"")).collect();
        let e = err(&format!("ingress_devices = [{}]\n", many.join(",")));
        assert!(e.contains("at most 64"), "{e}");
        // After conntrack, or after DNAT: refused, with the value to use.
        for p in ["-200", "-10", "0", "2147483647"] {
            let e = err(&format!("prerouting_priority = {p}\n"));
            assert!(e.contains("use -300 (raw)"), "{p}: {e}");
        }
    }
}

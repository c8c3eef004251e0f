//! The `[[enforcer]]` tables of the configuration: what each says
//! ([`EnforcerConfig`], checked as it is read) and the enforcer it becomes
//! ([`build`]). The only module that knows every backend.

use std::collections::HashSet;

use serde::Deserialize;

use crate::command::{CommandConfig, CommandEnforcer};
use crate::enforcer::{EnforceError, Enforcer};
use crate::filter::{Filter, Filtered};
use crate::ipset::{IpsetConfig, IpsetEnforcer};
use crate::layout::{CONNTRACK_PRIORITY, NftablesOptions, valid_interface_name};
use crate::nftables::NftablesEnforcer;
use crate::xt_recent::{XtRecentConfig, XtRecentEnforcer};

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
    #[serde(deserialize_with = "ingress_devices")]
    pub ingress_devices: Vec<String>,
    /// Interfaces that also run palisade's XDP drop (before the kernel
    /// builds a socket buffer; a copy of the table's sets).
    #[serde(deserialize_with = "xdp_devices")]
    pub xdp_devices: Vec<String>,
    /// Which decisions the table receives.
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

/// Most interfaces one list (`ingress_devices`, `xdp_devices`) names.
const MAX_DEVICES: usize = 64;

fn ingress_devices<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    interface_names(d, "ingress_devices")
}

fn xdp_devices<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    interface_names(d, "xdp_devices")
}

fn interface_names<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.len() > MAX_DEVICES {
        return Err(serde::de::Error::custom(format!(
            "{} {key}: at most {MAX_DEVICES}",
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
                "interface {n:?} is listed twice in {key}"
            )));
        }
    }
    Ok(names)
}

impl Default for NftablesConfig {
    fn default() -> Self {
        let d = NftablesOptions::default();
        NftablesConfig {
            table: d.table,
            priority: d.priority,
            prerouting_priority: d.prerouting_priority,
            ingress_devices: d.ingress_devices,
            xdp_devices: d.xdp_devices,
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
            NftablesEnforcer::new(NftablesOptions {
                table: c.table.clone(),
                priority: c.priority,
                prerouting_priority: c.prerouting_priority,
                ingress_devices: c.ingress_devices.clone(),
                xdp_devices: c.xdp_devices.clone(),
                probe_log_group: c.probe_log_group,
            })?,
            &c.filter,
        ),
        EnforcerConfig::Ipset(c) => boxed(IpsetEnforcer::new(c.clone())?, &c.filter),
        EnforcerConfig::XtRecent(c) => boxed(XtRecentEnforcer::new(c.clone())?, &c.filter),
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
# logs port probes. Interfaces in `ingress_devices` also drop banned
# sources at their ingress, the earliest point nftables offers. Interfaces
# in `xdp_devices` run palisade's XDP drop: banned sources are dropped in
# the driver, before the kernel spends anything on them (the cheapest drop
# under a flood; Linux 5.9+; the table still decides everything, the drop
# only ever drops what the table would).
prerouting_priority = -300
ingress_devices = []
xdp_devices = []
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
# (single addresses only), {net} (CIDR), {jail} (`jail` when set, else the
# jail the decision came from: `fail2ban/sshd` gives `sshd`), {rule} (the
# decision's rule, such as `ban`, `sshd` or `fail2ban/sshd`, else `jail`),
# {duration} (seconds left; `forever_duration`, -1 by
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
        let c = parse("ingress_devices = [\"eth0\", \"br-1a2b3c\"]\nprerouting_priority = -350\nxdp_devices = [\"eth1\"]\n")
            .unwrap();
        assert_eq!(c.ingress_devices, ["eth0", "br-1a2b3c"]);
        assert_eq!(c.xdp_devices, ["eth1"]);
        assert_eq!(c.prerouting_priority, -350);
        let d = parse("").unwrap();
        assert_eq!((d.prerouting_priority, d.ingress_devices.len()), (-300, 0));
        assert!(d.xdp_devices.is_empty());
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
            for key in ["ingress_devices", "xdp_devices"] {
                let e = err(&format!("{key} = [{name}]\n"));
                assert!(e.contains("not a valid interface name"), "{name}: {e}");
            }
        }
        let e = err("ingress_devices = [\"eth0\", \"eth0\"]\n");
        assert!(e.contains("listed twice in ingress_devices"), "{e}");
        let e = err("xdp_devices = [\"eth0\", \"eth0\"]\n");
        assert!(e.contains("listed twice in xdp_devices"), "{e}");
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

//! The chains of palisade's nftables table: where in the packet path its
//! sets are consulted.
//!
//! ```text
//! chain prerouting { type filter hook prerouting priority raw; policy accept;
//!                    ip saddr @allow4 accept;   ip6 saddr @allow6 accept;
//!                    ip saddr @block4 drop;     ip6 saddr @block6 drop;
//!                    ip saddr @block4_net drop; ip6 saddr @block6_net drop; }
//! chain ingress_eth0 { type filter hook ingress device "eth0" priority -500;
//!                      policy accept; (the same rules) }      # ingress_devices
//! chain input { type filter hook input priority -10; policy accept;
//!               ip saddr @allow4 accept; ip6 saddr @allow6 accept;
//!               (the two port-probe logging rules) }            # probe logging
//! ```
//!
//! Why prerouting at raw priority (-300): it runs before connection
//! tracking (-200) and before destination NAT (-100). A banned packet is
//! dropped before the kernel looks it up in the conntrack table or
//! allocates an entry for it, which is where a flood's cost goes on a
//! server whose firewall tracks connections; and it is dropped whatever
//! happens to it next: delivered locally, forwarded, or DNAT'ed to a
//! container's published port (the forward path Docker uses). One chain
//! therefore replaces the input and forward chains of earlier versions.
//!
//! Why an input chain remains when port probes are logged: the UDP probe
//! rule matches `ct state new`, which only exists after conntrack, and
//! probes are reported only for packets addressed to this host. Banned
//! sources never reach it (prerouting dropped them); allowed ones are
//! accepted before the logging rules, so they are never reported.
//!
//! Why ingress chains are optional: they attach to named interfaces (the
//! earliest hook nftables offers, before IP processing and before the
//! prerouting chain), so they only make sense where the operator knows
//! which interfaces face the attackers. Prerouting still covers every
//! interface. An interface absent when the table is built is left out
//! with a warning instead of failing the whole transaction (which would
//! leave the host unprotected).
//!
//! Every chain is created in the same transaction as the table, so the
//! table is replaced without a moment in which neither the old nor the new
//! chains drop (see `NftablesEnforcer::reload`). A table in the earlier layout
//! (drops in input and forward chains) needs one more step: a packet that
//! crosses prerouting just before the transaction commits (the new chain
//! is not active yet) and reaches input just after it (the old chain is
//! empty by then) would meet no drop rule at all. So the transaction that
//! upgrades also builds `upgrade_input` and `upgrade_forward`, copies of
//! the old chains that catch such a packet, and a second, small
//! transaction deletes them once the prerouting chain is active.

use palisade_netlink::Socket;
use palisade_netlink::nft::{self, Batch, ChainSpec, Hook, SetSpec, Verdict, family};

use crate::enforcer::NetlinkError;
use crate::kernel::kernel_version;

/// Where the enforcer puts its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftablesOptions {
    /// Name of the `inet` table palisade owns (default `palisade`).
    pub table: String,
    /// Priority of the input chain that logs port probes (default -10,
    /// before the usual `filter` chains at 0).
    pub priority: i32,
    /// Priority of the prerouting chain that accepts allowed sources and
    /// drops banned ones (default -300, `raw`: before conntrack and DNAT).
    pub prerouting_priority: i32,
    /// Interfaces that also get an ingress chain with the same rules, the
    /// earliest drop nftables offers.
    pub ingress_devices: Vec<String>,
    /// Interfaces that also get palisade's XDP drop, which drops banned
    /// sources in the driver before the kernel builds a socket buffer (a
    /// copy of the sets, see `xdp.rs`).
    pub xdp_devices: Vec<String>,
    /// When set, an input chain reports connection attempts (TCP SYN, new
    /// UDP flows; not from loopback, not from allowed or banned sources) to
    /// this NFLOG group, for port-probe detection.
    pub probe_log_group: Option<u16>,
}

impl Default for NftablesOptions {
    fn default() -> Self {
        NftablesOptions {
            table: "palisade".to_string(),
            priority: -10,
            prerouting_priority: -300,
            ingress_devices: Vec::new(),
            xdp_devices: Vec::new(),
            probe_log_group: None,
        }
    }
}

/// Most connection attempts per second reported to the probe NFLOG group.
const PROBE_LOG_PER_SECOND: u32 = 200;

/// Priority of the ingress chains: before ingress chains at the usual 0.
pub const INGRESS_PRIORITY: i32 = -500;

/// Conntrack's priority (`NF_IP_PRI_CONNTRACK`): the prerouting chain must
/// run before it to spare the kernel the lookup and the allocation.
pub const CONNTRACK_PRIORITY: i32 = -200;

/// A chain only the earlier layout has.
const OLD_LAYOUT_CHAIN: &str = "forward";

/// The chains that keep the earlier layout's drops while it is replaced.
const UPGRADE_CHAINS: [(&str, Hook); 2] = [
    ("upgrade_input", Hook::Input),
    ("upgrade_forward", Hook::Forward),
];

/// Whether `table` is in the earlier layout. When the kernel cannot say,
/// the answer is yes: the extra chains cost a second transaction, a gap
/// would cost protection.
pub fn holds_old_layout(sock: &mut Socket, table: &str) -> bool {
    nft::chain_exists(sock, family::INET, table, OLD_LAYOUT_CHAIN).unwrap_or(true)
}

/// Deletes the chains [`add_chains`] added for an upgrade, once the
/// transaction that added them committed.
pub fn finish_upgrade(sock: &mut Socket, table: &str) -> Result<(), NetlinkError> {
    let mut b = Batch::new();
    for (chain, _) in UPGRADE_CHAINS {
        nft::del_chain(&mut b, family::INET, table, chain);
    }
    b.send(sock)
}

/// Adds the chains and their rules to a batch that creates `table` with
/// the sets of `sets`, each with what its rule does to a source it holds
/// (in rule order); with `upgrading`, also the chains
/// that bridge the switch from the earlier layout.
pub fn add_chains(
    b: &mut Batch,
    sock: &Socket,
    config: &NftablesOptions,
    sets: &[(Verdict, SetSpec<'_>)],
    upgrading: bool,
) {
    let table = config.table.as_str();
    let filter = |b: &mut Batch, name: &str, hook: Hook, priority: i32, device: Option<&str>| {
        nft::new_chain(
            b,
            family::INET,
            table,
            &ChainSpec {
                name,
                hook,
                priority,
                policy: Verdict::Accept,
                device,
            },
        );
    };
    let decide = |b: &mut Batch, chain: &str| {
        for (verdict, spec) in sets {
            nft::new_saddr_rule(b, table, chain, spec, *verdict);
        }
    };
    filter(
        b,
        "prerouting",
        Hook::Prerouting,
        config.prerouting_priority,
        None,
    );
    decide(b, "prerouting");
    for device in present(sock, &config.ingress_devices) {
        let chain = ingress_chain_name(device);
        filter(b, &chain, Hook::Ingress, INGRESS_PRIORITY, Some(device));
        decide(b, &chain);
    }
    if upgrading {
        for (chain, hook) in UPGRADE_CHAINS {
            filter(b, chain, hook, config.priority, None);
            decide(b, chain);
        }
    }
    if let Some(group) = config.probe_log_group {
        filter(b, "input", Hook::Input, config.priority, None);
        for (verdict, spec) in sets.iter().filter(|(v, _)| *v == Verdict::Accept) {
            nft::new_saddr_rule(b, table, "input", spec, *verdict);
        }
        nft::new_probe_log_rules(b, table, "input", group, PROBE_LOG_PER_SECOND);
    }
}

/// The chain that drops at the ingress of `device`.
pub fn ingress_chain_name(device: &str) -> String {
    format!("ingress_{device}")
}

/// The configured interfaces that exist now in the socket's namespace;
/// the kernel refuses an ingress chain on a missing one, and with it the
/// whole transaction. None before Linux 5.10, which has no inet ingress
/// hook (the same failure).
fn present<'a>(sock: &'a Socket, devices: &'a [String]) -> impl Iterator<Item = &'a str> {
    let supported = kernel_version().is_none_or(|v| v >= (5, 10));
    if !supported && !devices.is_empty() {
        tracing::warn!(
            "ingress_devices needs Linux 5.10 or newer: no ingress chains \
             (the prerouting chain still drops banned traffic)"
        );
    }
    devices
        .iter()
        .map(String::as_str)
        .filter(move |_| supported)
        .filter(|d| {
            let exists = sock.interface_index(d).is_some();
            if !exists {
                tracing::warn!(
                    device = d,
                    "no such interface: its ingress chain is left out until the next full load \
                     (the prerouting chain still drops banned traffic arriving on it)"
                );
            }
            exists
        })
}

/// Checks an interface name the way the kernel does (`dev_valid_name`):
/// 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_like_the_kernel_does() {
        for ok in ["eth0", "enp3s0f1", "br-1a2b3c4d5e6f", "wg.0", "veth@x"] {
            assert!(valid_interface_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "eth 0",
            "eth0\n",
            "eth0\0",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_interface_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn missing_interfaces_are_left_out() {
        let sock = Socket::netfilter().unwrap();
        let devices = vec!["lo".to_string(), "pal-absent-0".to_string()];
        assert_eq!(present(&sock, &devices).collect::<Vec<_>>(), ["lo"]);
    }
}

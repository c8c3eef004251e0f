//! What the network remembers about each node, and the automatic allow of
//! a node's address.
//!
//! A node's address is allowed network-wide (so no report can cut a
//! palisade server off), which makes that allow valuable to a thief: it is
//! therefore pinned to the first address a node is seen at. It moves only
//! inside `node_networks` (where the operator said palisade servers live),
//! or when an operator revokes the node's credential and issues a new one.

use std::net::IpAddr;

use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{Ledger, Policy};

/// What the hub (or the workers) know about a node, for status, metrics,
/// deduplication of retried intents and the automatic allow of its
/// address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name, from its credential.
    pub name: String,
    /// The node's group, from its credential; `None`: in no group.
    #[serde(default)]
    pub group: Option<String>,
    /// The address the node's automatic allow is pinned to.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// The palisade version the node last announced.
    #[serde(default)]
    pub version: Option<String>,
    /// When the node was last heard from.
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
    /// The last stream number the node said it applied.
    #[serde(default)]
    pub cursor: u64,
    /// Bans the node said it enforces.
    #[serde(default)]
    pub bans: u64,
    /// The highest intent id applied from this node (retries are skipped).
    #[serde(default)]
    pub last_intent: u64,
    /// Intents received from this node, all outcomes.
    #[serde(default)]
    pub intents: u64,
    /// Ban reports (ban intents) received from this node, all outcomes.
    #[serde(default)]
    pub reported: u64,
}

impl NodeRecord {
    /// A record of a node seen for the first time.
    pub fn new(name: &str, group: Option<String>) -> NodeRecord {
        NodeRecord {
            name: name.to_string(),
            group,
            ..NodeRecord::default()
        }
    }
}

/// What became of a node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    /// Already its pinned address (or loopback, which is never banned).
    Unchanged,
    /// Its first address: allowed and pinned.
    Pinned,
    /// Moved inside `node_networks`: the old allow went, the new one came.
    Moved {
        /// The address the allow was pinned to before.
        from: IpAddr,
    },
    /// Not allowed: why (logged; the node keeps working, its address is
    /// just not protected).
    Refused(String),
}

impl Policy {
    /// A node was seen at `address` (the peer address of its connection,
    /// or the address a bus reports for it). Allows it network-wide when
    /// that is safe; see the module docs.
    pub fn node_address<L: Ledger>(
        &self,
        ledger: &mut L,
        name: &str,
        group: Option<&str>,
        address: IpAddr,
        now: Timestamp,
    ) -> Result<NodeAddress, L::Error> {
        let address = palisade_model::net::canonical_addr(address);
        if address.is_loopback() {
            return Ok(NodeAddress::Unchanged);
        }
        let mut record = ledger
            .node(name)?
            .unwrap_or_else(|| NodeRecord::new(name, group.map(String::from)));
        let networks = &self.config().node_networks;
        let inside = networks.iter().any(|n| n.contains_addr(address));
        if !networks.is_empty() && !inside {
            let why = format!(
                "{address} is outside [hub] node_networks, so it is not allowed automatically"
            );
            warn!(node = %name, address = %address, "{why}");
            return Ok(NodeAddress::Refused(why));
        }
        let outcome = match record.address {
            Some(old) if old == address => NodeAddress::Unchanged,
            None => NodeAddress::Pinned,
            Some(old) if inside => NodeAddress::Moved { from: old },
            Some(old) => {
                let why = format!(
                    "node {name} is pinned to {old}; a request from {address} does not move its allow (revoke its token and create a new one, or list where nodes live in [hub] node_networks)"
                );
                warn!(node = %name, address = %address, pinned = %old, "a node's credential was used from another address; its allow stays where it was");
                return Ok(NodeAddress::Refused(why));
            }
        };
        if let NodeAddress::Moved { from } = outcome {
            self.drop_node_allow(ledger, name, from)?;
            info!(node = %name, from = %from, to = %address, "a node moved inside node_networks; its allow moved with it");
        }
        let target = Net::host(address);
        let existing = ledger.get(Action::Allow, &target, None)?;
        let ours = existing
            .as_ref()
            .is_some_and(|d| d.origin.source == Source::Policy && d.origin.node == name);
        // An operator's own allow of the address is left as it is.
        let operator_allow = existing
            .as_ref()
            .is_some_and(|d| d.origin.source != Source::Policy && d.is_active(now));
        if !ours && !operator_allow {
            let d = Decision::new(
                Action::Allow,
                target,
                now,
                Span::Forever,
                Origin::new(name, Source::Policy),
            )
            .with_reason(format!("palisade node {name}"))
            .with_scope(Scope::Network);
            ledger.put(&d)?;
            if outcome == NodeAddress::Pinned {
                info!(node = %name, address = %address, "allowed a palisade node's address");
            }
        }
        record.address = Some(address);
        ledger.set_node(&record)?;
        Ok(outcome)
    }

    /// A node's credential was revoked: its automatic allow goes, and its
    /// pin with it (a new credential pins anew). Its intent numbering
    /// starts over too, so a thief who sent a huge intent id with the old
    /// credential cannot mute the node's new one.
    pub fn node_gone<L: Ledger>(&self, ledger: &mut L, name: &str) -> Result<(), L::Error> {
        let Some(mut record) = ledger.node(name)? else {
            return Ok(());
        };
        record.last_intent = 0;
        if let Some(addr) = record.address.take() {
            self.drop_node_allow(ledger, name, addr)?;
            info!(node = %name, address = %addr, "removed the allow of a revoked node's address");
        }
        ledger.set_node(&record)
    }

    fn drop_node_allow<L: Ledger>(
        &self,
        ledger: &mut L,
        name: &str,
        address: IpAddr,
    ) -> Result<(), L::Error> {
        let target = Net::host(address);
        if let Some(d) = ledger.get(Action::Allow, &target, None)?
            && d.origin.source == Source::Policy
            && d.origin.node == name
        {
            ledger.remove(Action::Allow, &target, None)?;
        }
        Ok(())
    }
}

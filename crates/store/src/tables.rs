//! The redb tables of a store: decisions, their indexes, named numbers,
//! [`Queue`]s and [`Map`]s.

use redb::TableDefinition;

pub(crate) const DECISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("decisions");
pub(crate) const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("queue.outbox");
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("queue.events");
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.tokens");
pub(crate) const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("map.nodes");
pub(crate) const OFFENDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.offenders");
pub(crate) const QUORUM: TableDefinition<&str, &[u8]> = TableDefinition::new("map.quorum");
pub(crate) const GROUP_ALLOWS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("map.group_allows");
pub(crate) const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.admins");
/// `[order][action][time, 8 bytes BE][decision key]`, see [`Order`].
pub(crate) const ORDERED: TableDefinition<&[u8], ()> = TableDefinition::new("index.ordered");
/// Meta key set while [`ORDERED`] is kept (its layout version).
pub(crate) const ORDERED_META: &str = "index.ordered";
pub(crate) const ORDERED_VERSION: u64 = 1;

/// An append-only sequence of opaque records, numbered from 1. Numbers are
/// never reused, also after the oldest records are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// The agent's reports and requests waiting for the hub.
    Outbox,
    /// The hub's stream of decision events.
    Events,
}

impl Queue {
    pub(crate) fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Queue::Outbox => OUTBOX,
            Queue::Events => EVENTS,
        }
    }

    pub(crate) fn next_key(self) -> &'static str {
        match self {
            Queue::Outbox => "queue.outbox.next",
            Queue::Events => "queue.events.next",
        }
    }
}

/// A small named table of opaque records keyed by text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// Hub: join tokens and node credentials, by token id.
    Tokens,
    /// Hub: what is known about each node (address, last seen, cursor).
    Nodes,
    /// Hub: past bans of an address, for escalation.
    Offenders,
    /// Hub: distinct reporters of an address, for quorums.
    Quorum,
    /// Hub: allow entries that apply to one group of nodes only.
    GroupAllows,
    /// Hub: the dashboard's administrators (password hashes), by name.
    Admins,
}

impl Map {
    pub(crate) fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Map::Tokens => TOKENS,
            Map::Nodes => NODES,
            Map::Offenders => OFFENDERS,
            Map::Quorum => QUORUM,
            Map::GroupAllows => GROUP_ALLOWS,
            Map::Admins => ADMINS,
        }
    }
}

//! The hub's tables in its store, named here: the store offers maps and
//! queues and knows none by name. The names are the tables' in existing
//! stores, so they never change.

use palisade_store::{Map, Queue};

/// The stream of decision events, numbered: what agents follow.
pub const EVENTS: Queue = Queue::new("queue.events", "queue.events.next");

/// Join tokens and node credentials, by token id ([`TokenRecord`](crate::records::TokenRecord)).
pub const TOKENS: Map = Map::new("map.tokens");
/// What is known about each node: address, last seen, cursor
/// (`palisade_policy::NodeRecord`), by name.
pub const NODES: Map = Map::new("map.nodes");
/// Past bans of an address, for escalation.
pub const OFFENDERS: Map = Map::new("map.offenders");
/// Distinct reporters of an address, for quorums.
pub const QUORUM: Map = Map::new("map.quorum");
/// Allow entries that apply to one group of nodes only.
pub const GROUP_ALLOWS: Map = Map::new("map.group_allows");
/// The dashboard's administrators (password hashes), by name.
pub const ADMINS: Map = Map::new("map.admins");

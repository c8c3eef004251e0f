//! Where this node stands in the network's decision stream: the stored
//! cursor, and the snapshot being received. Shared by the core (which
//! holds the snapshot between batches), the stream's application
//! (`remote`), the network task and the control server; it imports nothing
//! else of the crate.

use std::collections::HashSet;

use palisade_model::{Action, Net};

/// Where the stream position is kept (store meta).
pub const CURSOR: &str = "net.cursor";

/// A snapshot being received: what it has brought so far.
pub(crate) struct Snapshot {
    pub(crate) seq: u64,
    /// Decisions it brought, to find the stale ones afterwards; `None` when
    /// the store was empty as it began: then nothing can be stale (every
    /// network decision stored since came from this snapshot).
    pub(crate) seen: Option<HashSet<(Action, Net)>>,
    /// Puts it brought.
    pub(crate) count: u64,
    /// While the store holds nothing but what this snapshot brought: how
    /// many rows that is. A joining node's store starts empty, so its
    /// snapshot needs no lookups and no sweep. Anything else in the store
    /// makes the row count differ, and the snapshot goes the careful way.
    pub(crate) only_ours: Option<u64>,
}

//! The redb tables of a store: decisions, their indexes, named numbers,
//! [`Queue`]s, and the [`Map`]s its users name.

use redb::TableDefinition;

pub(crate) const DECISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("decisions");
pub(crate) const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `[order][action][time, 8 bytes BE][decision key]`, see [`Order`].
pub(crate) const ORDERED: TableDefinition<&[u8], ()> = TableDefinition::new("index.ordered");
/// Meta key set while [`ORDERED`] is kept (its layout version).
pub(crate) const ORDERED_META: &str = "index.ordered";
pub(crate) const ORDERED_VERSION: u64 = 1;

/// An append-only sequence of opaque records, numbered from 1. Numbers are
/// never reused, also after the oldest records are removed. Named by its
/// user like a [`Map`]: `const OUTBOX: Queue = Queue::new("queue.outbox",
/// "queue.outbox.next");`, the redb table and the meta key holding the next
/// number (the table's name and `.next`; both checked when the constant is
/// built). A queue is created by its first push; until then it is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    name: &'static str,
    next: &'static str,
}

impl Queue {
    /// A queue stored in the redb table `name` (`queue.` and the queue's
    /// name), its next number in the meta key `next` (`name` and `.next`).
    pub const fn new(name: &'static str, next: &'static str) -> Queue {
        assert!(
            starts_with(name, "queue.") && name.len() > 6,
            "a queue's table name starts with `queue.`"
        );
        assert!(
            starts_with(next, name)
                && next.len() == name.len() + 5
                && starts_with(next.split_at(name.len()).1, ".next"),
            "a queue's next number is kept under its name and `.next`"
        );
        Queue { name, next }
    }

    /// The redb table's name.
    pub const fn name(self) -> &'static str {
        self.name
    }

    pub(crate) fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    pub(crate) fn next_key(self) -> &'static str {
        self.next
    }
}

/// A small named table of opaque records keyed by text, named by its user
/// (the store knows no map by name): `const TOKENS: Map =
/// Map::new("map.tokens");`. The name is the redb table's, so it must stay
/// the same across versions; it must start with `map.`, which keeps maps
/// clear of the store's own tables (checked when the constant is built).
/// A map is created by its first write; until then it reads as empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Map {
    name: &'static str,
}

impl Map {
    /// A map stored in the redb table `name` (`map.` and the map's name).
    pub const fn new(name: &'static str) -> Map {
        assert!(
            starts_with(name, "map.") && name.len() > 4,
            "a map's table name starts with `map.`"
        );
        Map { name }
    }

    /// The redb table's name.
    pub const fn name(self) -> &'static str {
        self.name
    }

    pub(crate) fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

/// `text` starts with `prefix` (usable in constants).
const fn starts_with(text: &str, prefix: &str) -> bool {
    let (t, p) = (text.as_bytes(), prefix.as_bytes());
    if t.len() < p.len() {
        return false;
    }
    let mut i = 0;
    while i < p.len() {
        if t[i] != p[i] {
            return false;
        }
        i += 1;
    }
    true
}

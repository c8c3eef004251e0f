//! palisade's crash-safe embedded store of decisions.
//!
//! One [redb] file holds every active decision, indexed two ways:
//! - by `(action, network)`, ordered by family, address, then prefix, so
//!   "which entries cover this address?" is one point lookup per prefix
//!   length and "which entries lie inside this network?" is one range scan;
//! - by expiry, so pruning reads only what has expired.
//!
//! Nothing is kept in memory beyond redb's page cache (bounded by
//! [`Options::cache_bytes`]), which is what lets an agent hold a million
//! decisions in little RSS. Every write is one transaction, committed with
//! fsync before it returns: a decision acknowledged is a decision kept.
//!
//! Beside decisions, the same transactions can touch [`Queue`]s (append-only
//! sequences: the agent's outbox of reports for the hub, the hub's stream of
//! decision events) and [`Map`]s (small named tables: tokens, offender
//! history), so that a decision and what follows from it commit together.
//!
//! A store opened with [`Options::ordered`] also keeps decisions ordered by
//! last update and by expiry ([`Reader::ordered`]): what the hub's dashboard
//! pages through with a million decisions, one short range scan per page.

use std::path::{Path, PathBuf};

use palisade_model::explain::{Explanation, Verdict};
use palisade_model::{Action, Decision, Family, Net, Timestamp};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const DECISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("decisions");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("queue.outbox");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("queue.events");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.tokens");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("map.nodes");
const OFFENDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.offenders");
const QUORUM: TableDefinition<&str, &[u8]> = TableDefinition::new("map.quorum");
const GROUP_ALLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.group_allows");
const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.admins");
/// `[order][action][time, 8 bytes BE][decision key]`, see [`Order`].
const ORDERED: TableDefinition<&[u8], ()> = TableDefinition::new("index.ordered");
/// Meta key set while [`ORDERED`] is kept (its layout version).
const ORDERED_META: &str = "index.ordered";
const ORDERED_VERSION: u64 = 1;

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
    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Queue::Outbox => OUTBOX,
            Queue::Events => EVENTS,
        }
    }

    fn next_key(self) -> &'static str {
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
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
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

/// Version of the encoding of stored values. Bump it, and teach
/// [`decode`] the old one, whenever [`Decision`] changes shape: postcard is
/// not self-describing, so an old value cannot be read with a new layout.
const FORMAT: u8 = 1;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state database {path} is in use by another process; is another palisade agent running with the same --state-dir?"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the state database {path} was written by a newer palisade (format {found}, this one reads up to {FORMAT}); upgrade palisade"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error(
        "cannot keep {path} private (mode 0600 for a database, 0700 for its directory): {source}"
    )]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database error: {0}")]
    Db(String),
    #[error("a stored decision could not be decoded (format {format}): {reason}")]
    Corrupt { format: u8, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Memory for redb's page cache. Small is fine: the working set of an
    /// agent is the recent writes and the expiry index head.
    pub cache_bytes: usize,
    /// Keep decisions ordered by last update and by expiry as well
    /// ([`Reader::ordered`]); two more index entries per decision. The hub
    /// keeps them for its dashboard; agents do not need them. Turning it on
    /// builds the index from the stored decisions once; turning it off drops
    /// it.
    pub ordered: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 16 << 20,
            ordered: false,
        }
    }
}

/// The orders [`Reader::ordered`] lists decisions in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    /// By [`Decision::updated`]: when it was made or last extended.
    Updated,
    /// By [`Decision::expires`]; decisions that never expire come last.
    Expires,
}

impl Order {
    fn byte(self) -> u8 {
        match self {
            Order::Updated => 1,
            Order::Expires => 2,
        }
    }

    fn time(self, d: &Decision) -> u64 {
        match self {
            Order::Updated => d.updated.as_millis(),
            Order::Expires => d.expires.map_or(u64::MAX, |e| e.as_millis()),
        }
    }
}

/// A place in an ordered listing, to continue after it (keyset paging: a
/// page costs the same wherever it is). Printable as hex for URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position(Vec<u8>);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Position {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Position> {
        let bad = || StoreError::Db(format!("{s:?} is not a listing position"));
        if !s.len().is_multiple_of(2) || s.len() > 80 {
            return Err(bad());
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>>>()
            .map(Position)
    }
}

fn ordered_key(order: Order, d: &Decision) -> Vec<u8> {
    let key = Key::new(d.action, &d.target);
    let mut k = Vec::with_capacity(10 + key.len);
    k.push(order.byte());
    k.push(action_byte(d.action));
    k.extend_from_slice(&order.time(d).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The decision store. Cheap to share behind an `Arc`; writes are serialised
/// by redb (one writer at a time), reads run concurrently with writes.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    ordered: bool,
    /// Write transactions committed since it was opened (see
    /// [`Store::commits`]).
    commits: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, options: &Options) -> Result<Store> {
        create_private_file(path)?;
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_path_buf(),
                },
                source => StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            ordered: options.ordered,
            commits: std::sync::atomic::AtomicU64::new(0),
        };
        store.init()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions were committed since the store was
    /// opened: a reader that derives state from snapshots reads again only
    /// when this moved (or time made a decision expire).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Makes `path` a directory only root reads (mode 0700), creating it and its
/// parents if needed: a state directory holds token hashes, administrators'
/// password hashes and credentials. An existing directory that others may
/// read is made private and said so.
pub fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let private = |source| StoreError::Private {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(private)?;
    }
    restrict(path, 0o700).map_err(private)
}

/// Creates the database file 0600 if it is missing (redb initializes an
/// empty file), and makes an existing one 0600: never readable by others,
/// whatever the umask or an older palisade left.
fn create_private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let private = |source| StoreError::Private {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            restrict(path, 0o600).map_err(private)
        }
        Err(e) => Err(private(e)),
    }
}

/// Sets `path`'s permission bits to `mode` if they allow more.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let now = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if now & !mode != 0 {
        tracing::warn!(
            "{} was mode {now:04o}, readable by others; made {mode:04o}",
            path.display()
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl Store {
    fn init(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(DECISIONS)?;
            tx.open_table(EXPIRY)?;
            for q in [Queue::Outbox, Queue::Events] {
                tx.open_table(q.table())?;
            }
            for m in [
                Map::Tokens,
                Map::Nodes,
                Map::Offenders,
                Map::Quorum,
                Map::GroupAllows,
                Map::Admins,
            ] {
                tx.open_table(m.table())?;
            }
            let mut meta = tx.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                Some(f) if f > u64::from(FORMAT) => {
                    return Err(StoreError::TooNew {
                        path: self.path.clone(),
                        found: f,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("format", u64::from(FORMAT))?;
                }
            }
            let kept = meta.get(ORDERED_META)?.map(|v| v.value());
            if kept != self.ordered.then_some(ORDERED_VERSION) {
                // Build the ordered index from scratch, or drop it so that it
                // cannot go stale while not kept.
                let mut index = tx.open_table(ORDERED)?;
                index.retain(|_, _| false)?;
                if self.ordered {
                    let decisions = tx.open_table(DECISIONS)?;
                    for item in decisions.iter()? {
                        let d = decode(item?.1.value())?;
                        for order in [Order::Updated, Order::Expires] {
                            index.insert(ordered_key(order, &d).as_slice(), ())?;
                        }
                    }
                    meta.insert(ORDERED_META, ORDERED_VERSION)?;
                } else {
                    meta.remove(ORDERED_META)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` in one write transaction and commits it durably. If `f`
    /// fails, nothing it did is kept.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Like [`Store::write`], atomic but not flushed to disk: after a crash
    /// the store is back at an earlier consistent state (this commit and
    /// the lazy ones before it lost together), until the next durable
    /// commit or [`Store::flush`] keeps them. For what can be fetched
    /// again, such as decisions from the network with their cursor.
    pub fn write_lazy<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.write_with(redb::Durability::None, f)
    }

    /// Makes every earlier lazy commit durable.
    pub fn flush(&self) -> Result<()> {
        self.write(|_| Ok(()))
    }

    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability)
            .map_err(|e| StoreError::Db(e.to_string()))?;
        let out = {
            let mut w = Writer {
                tx: &tx,
                decisions: tx.open_table(DECISIONS)?,
                expiry: tx.open_table(EXPIRY)?,
                meta: tx.open_table(META)?,
                ordered: if self.ordered {
                    Some(tx.open_table(ORDERED)?)
                } else {
                    None
                },
                deltas: [0; 3],
            };
            let out = f(&mut w)?;
            w.flush_counts()?;
            out
        };
        tx.commit()?;
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(out)
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<Reader> {
        let tx = self.db.begin_read()?;
        Ok(Reader {
            decisions: tx.open_table(DECISIONS)?,
            expiry: tx.open_table(EXPIRY)?,
            meta: tx.open_table(META)?,
            ordered: if self.ordered {
                Some(tx.open_table(ORDERED)?)
            } else {
                None
            },
            tx,
        })
    }
}

/// Changes inside one write transaction (see [`Store::write`]).
pub struct Writer<'tx> {
    tx: &'tx redb::WriteTransaction,
    decisions: redb::Table<'tx, &'static [u8], &'static [u8]>,
    expiry: redb::Table<'tx, &'static [u8], ()>,
    meta: redb::Table<'tx, &'static str, u64>,
    /// The ordered index, when kept.
    ordered: Option<redb::Table<'tx, &'static [u8], ()>>,
    /// Changes to the counts, written once when the transaction commits.
    deltas: [i64; 3],
}

impl Writer<'_> {
    pub fn get(&self, action: Action, net: &Net) -> Result<Option<Decision>> {
        get_in(&self.decisions, action, net)
    }

    /// See [`Reader::covering`].
    pub fn covering(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        covering_in(&self.decisions, action, net)
    }

    /// See [`Reader::within`].
    pub fn within(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        within_in(&self.decisions, action, net)
    }

    /// Every decision of `action` (for small sets such as allowlists).
    pub fn all(&self, action: Action) -> Result<Vec<Decision>> {
        let mut out = Vec::new();
        self.each(action, |d| {
            out.push(d);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every decision of `action` in key order, one at a
    /// time (for large sets: memory stays flat).
    pub fn each(&self, action: Action, mut f: impl FnMut(Decision) -> Result<()>) -> Result<()> {
        let lo = [action_byte(action)];
        let hi = [action_byte(action) + 1];
        for item in self.decisions.range(lo.as_slice()..hi.as_slice())? {
            f(decode(item?.1.value())?)?;
        }
        Ok(())
    }

    /// Stores `d`, replacing any decision with the same action and target.
    pub fn put(&mut self, d: &Decision) -> Result<Option<Decision>> {
        let key = Key::new(d.action, &d.target);
        let value = encode(d);
        let old = self
            .decisions
            .insert(key.as_bytes(), value.as_slice())?
            .map(|v| decode(v.value()))
            .transpose()?;
        if let Some(old) = &old
            && old.expires != d.expires
            && let Some(e) = old.expires
        {
            self.expiry.remove(expiry_key(e, &key).as_slice())?;
        }
        if let Some(e) = d.expires {
            self.expiry.insert(expiry_key(e, &key).as_slice(), ())?;
        }
        if old.is_none() {
            self.count(d.action, &d.target, 1)?;
        }
        self.reorder(old.as_ref(), Some(d))?;
        Ok(old)
    }

    /// Moves a decision's ordered-index entries from `old` to `new`.
    fn reorder(&mut self, old: Option<&Decision>, new: Option<&Decision>) -> Result<()> {
        let Some(index) = self.ordered.as_mut() else {
            return Ok(());
        };
        for order in [Order::Updated, Order::Expires] {
            let old_key = old.map(|d| ordered_key(order, d));
            let new_key = new.map(|d| ordered_key(order, d));
            if old_key == new_key {
                continue;
            }
            if let Some(k) = old_key {
                index.remove(k.as_slice())?;
            }
            if let Some(k) = new_key {
                index.insert(k.as_slice(), ())?;
            }
        }
        Ok(())
    }

    /// Appends `record` to `queue`; returns its number.
    pub fn push(&mut self, queue: Queue, record: &[u8]) -> Result<u64> {
        self.push_with(queue, |_| record.to_vec())
    }

    /// Appends the record `make` builds from its number (for records that
    /// carry their own number); returns the number.
    pub fn push_with(&mut self, queue: Queue, make: impl FnOnce(u64) -> Vec<u8>) -> Result<u64> {
        let seq = self.meta.get(queue.next_key())?.map_or(1, |v| v.value());
        self.tx
            .open_table(queue.table())?
            .insert(seq, make(seq).as_slice())?;
        self.meta.insert(queue.next_key(), seq + 1)?;
        Ok(seq)
    }

    /// Removes the records of `queue` numbered `through` or lower.
    pub fn drop_through(&mut self, queue: Queue, through: u64) -> Result<()> {
        self.tx
            .open_table(queue.table())?
            .retain_in(..=through, |_, _| false)?;
        Ok(())
    }

    /// Stores `record` under `key` in `map`, replacing any old one.
    pub fn map_put(&mut self, map: Map, key: &str, record: &[u8]) -> Result<()> {
        self.tx.open_table(map.table())?.insert(key, record)?;
        Ok(())
    }

    pub fn map_get(&self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .open_table(map.table())?
            .get(key)?
            .map(|v| v.value().to_vec()))
    }

    pub fn map_remove(&mut self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .open_table(map.table())?
            .remove(key)?
            .map(|v| v.value().to_vec()))
    }

    /// Every record of `map`, in key order.
    pub fn map_entries(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>> {
        records(&self.tx.open_table(map.table())?)
    }

    /// A named number (e.g. a stream cursor), 0 if never set.
    pub fn meta(&self, name: &str) -> Result<u64> {
        Ok(self.meta.get(name)?.map_or(0, |v| v.value()))
    }

    pub fn set_meta(&mut self, name: &str, value: u64) -> Result<()> {
        self.meta.insert(name, value)?;
        Ok(())
    }

    /// Adjusts the count of decisions of this kind (stored at commit).
    fn count(&mut self, action: Action, net: &Net, delta: i64) -> Result<()> {
        self.deltas[counter_index(action, net)] += delta;
        Ok(())
    }

    fn flush_counts(&mut self) -> Result<()> {
        for (i, name) in COUNTERS.iter().enumerate() {
            if self.deltas[i] != 0 {
                let cur = self.meta.get(*name)?.map_or(0, |v| v.value());
                self.meta
                    .insert(*name, cur.saturating_add_signed(self.deltas[i]))?;
            }
        }
        Ok(())
    }

    /// Removes the decision with this action and target, returning it.
    pub fn remove(&mut self, action: Action, net: &Net) -> Result<Option<Decision>> {
        let key = Key::new(action, net);
        let old = self
            .decisions
            .remove(key.as_bytes())?
            .map(|v| decode(v.value()))
            .transpose()?;
        if let Some(e) = old.as_ref().and_then(|d| d.expires) {
            self.expiry.remove(expiry_key(e, &key).as_slice())?;
        }
        if old.is_some() {
            self.count(action, net, -1)?;
        }
        self.reorder(old.as_ref(), None)?;
        Ok(old)
    }

    /// Removes and returns every decision that expired at or before `now`,
    /// at most `limit` of them (call again until it returns fewer).
    pub fn take_expired(&mut self, now: Timestamp, limit: usize) -> Result<Vec<Decision>> {
        let mut keys = Vec::new();
        for item in self.expiry.range(..expiry_upper_bound(now).as_slice())? {
            let (k, _) = item?;
            keys.push(k.value().to_vec());
            if keys.len() >= limit {
                break;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            self.expiry.remove(k.as_slice())?;
            if let Some(v) = self.decisions.remove(&k[8..])? {
                out.push(decode(v.value())?);
            }
        }
        for d in &out {
            self.count(d.action, &d.target, -1)?;
            self.reorder(Some(d), None)?;
        }
        Ok(out)
    }
}

/// Reads from one consistent snapshot (see [`Store::read`]).
pub struct Reader {
    tx: redb::ReadTransaction,
    decisions: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    expiry: redb::ReadOnlyTable<&'static [u8], ()>,
    meta: redb::ReadOnlyTable<&'static str, u64>,
    ordered: Option<redb::ReadOnlyTable<&'static [u8], ()>>,
}

impl Reader {
    /// Decisions of `action` in `order` (newest or latest first when
    /// `descending`), starting after `after`, each with its position to
    /// continue from. Each item costs one index step and one lookup, so a
    /// page is as cheap at the millionth decision as at the first. Needs a
    /// store opened with [`Options::ordered`].
    pub fn ordered(
        &self,
        action: Action,
        order: Order,
        descending: bool,
        after: Option<&Position>,
    ) -> Result<impl Iterator<Item = Result<(Position, Decision)>> + '_> {
        use std::ops::Bound;
        let index = self.ordered.as_ref().ok_or_else(|| {
            StoreError::Db("this store was opened without the ordered index".into())
        })?;
        let lo = [order.byte(), action_byte(action)];
        let hi = [order.byte(), action_byte(action) + 1];
        let after = after.map(|p| p.0.as_slice());
        let (start, end) = match (descending, after) {
            (false, Some(a)) => (Bound::Excluded(a), Bound::Excluded(hi.as_slice())),
            (true, Some(a)) => (Bound::Included(lo.as_slice()), Bound::Excluded(a)),
            (_, None) => (
                Bound::Included(lo.as_slice()),
                Bound::Excluded(hi.as_slice()),
            ),
        };
        // An `after` outside this listing's range gives an empty one.
        let range = if start_after_end(&start, &end) {
            None
        } else {
            Some(index.range::<&[u8]>((start, end))?)
        };
        let iter: Box<dyn Iterator<Item = _>> = match range {
            None => Box::new(std::iter::empty()),
            Some(r) if descending => Box::new(r.rev()),
            Some(r) => Box::new(r),
        };
        Ok(iter.filter_map(move |item| {
            let key = match item {
                Ok((k, _)) => k.value().to_vec(),
                Err(e) => return Some(Err(e.into())),
            };
            match self.decisions.get(&key[10..]) {
                Ok(Some(v)) => Some(decode(v.value()).map(|d| (Position(key), d))),
                // Cannot happen within one snapshot; skip rather than fail.
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        }))
    }

    /// Whether [`Reader::ordered`] works on this store.
    pub fn is_ordered(&self) -> bool {
        self.ordered.is_some()
    }

    /// Decisions of `action` inside `net` (including `net` itself), in
    /// address order, starting after the decision for `after`: a network's
    /// bans a page at a time, however many it holds.
    pub fn inside(
        &self,
        action: Action,
        net: &Net,
        after: Option<&Net>,
    ) -> Result<impl Iterator<Item = Result<Decision>> + '_> {
        use std::ops::Bound;
        let (first, last) = net.range();
        let lo = Key::from_parts(action, net.family(), first, 0);
        let hi = Key::from_parts(action, net.family(), last, u8::MAX);
        let after = after.map(|a| Key::new(action, a));
        let start = match &after {
            Some(a) if a.as_bytes() >= lo.as_bytes() => Bound::Excluded(a.as_bytes()),
            _ => Bound::Included(lo.as_bytes()),
        };
        let end = Bound::Included(hi.as_bytes());
        let range = if start_after_end(&start, &end) {
            None
        } else {
            Some(self.decisions.range::<&[u8]>((start, end))?)
        };
        let net = *net;
        Ok(range.into_iter().flatten().filter_map(move |item| {
            let d = match item {
                Ok((_, v)) => decode(v.value()),
                Err(e) => return Some(Err(e.into())),
            };
            match d {
                Ok(d) if net.contains(&d.target) => Some(Ok(d)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    pub fn get(&self, action: Action, net: &Net) -> Result<Option<Decision>> {
        get_in(&self.decisions, action, net)
    }

    /// Decisions of `action` whose target contains `net` (including `net`
    /// itself), widest first.
    pub fn covering(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        covering_in(&self.decisions, action, net)
    }

    /// Decisions of `action` whose target lies inside `net`, excluding `net`
    /// itself, in address order.
    pub fn within(&self, action: Action, net: &Net) -> Result<Vec<Decision>> {
        within_in(&self.decisions, action, net)
    }

    /// Every decision (of one action, or all), in key order: bans before
    /// allows, IPv4 before IPv6, by address.
    pub fn iter(
        &self,
        action: Option<Action>,
    ) -> Result<impl Iterator<Item = Result<Decision>> + '_> {
        let range = match action {
            None => self.decisions.range::<&[u8]>(..)?,
            Some(a) => {
                let lo = [action_byte(a)];
                let hi = [action_byte(a) + 1];
                self.decisions.range(lo.as_slice()..hi.as_slice())?
            }
        };
        Ok(range.map(|item| {
            let (_, v) = item?;
            decode(v.value())
        }))
    }

    /// How many decisions of each kind are stored (kept exact in every
    /// write transaction, so this never scans).
    pub fn counts(&self) -> Result<Counts> {
        let get = |name: &str| -> Result<u64> { Ok(self.meta.get(name)?.map_or(0, |v| v.value())) };
        Ok(Counts {
            ban_hosts: get(COUNT_BAN_HOSTS)?,
            ban_networks: get(COUNT_BAN_NETWORKS)?,
            allows: get(COUNT_ALLOWS)?,
        })
    }

    /// Why `address` is, or is not, blocked: the active allow and ban
    /// entries covering it (allow entries win), and for a network, how many
    /// bans lie inside it.
    pub fn explain(&self, address: Net, now: Timestamp) -> Result<Explanation> {
        let active = |v: Vec<Decision>| -> Vec<Decision> {
            v.into_iter().filter(|d| d.is_active(now)).collect()
        };
        let allowed_by = active(self.covering(Action::Allow, &address)?);
        let banned_by = active(self.covering(Action::Ban, &address)?);
        let bans_inside = if address.is_host() {
            0
        } else {
            self.within(Action::Ban, &address)?.len() as u64
        };
        let verdict = if !allowed_by.is_empty() {
            Verdict::Allowed
        } else if !banned_by.is_empty() {
            Verdict::Blocked
        } else {
            Verdict::Open
        };
        Ok(Explanation {
            address,
            verdict,
            allowed_by,
            banned_by,
            bans_inside,
            now,
        })
    }

    /// Up to `limit` records of `queue` numbered after `after`, in order.
    pub fn queue(&self, queue: Queue, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let table = self.tx.open_table(queue.table())?;
        let mut out = Vec::new();
        for item in table.range(after.saturating_add(1)..)? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The numbers of the oldest and newest records still in `queue`.
    pub fn queue_bounds(&self, queue: Queue) -> Result<Option<(u64, u64)>> {
        let table = self.tx.open_table(queue.table())?;
        let first = table.first()?.map(|(k, _)| k.value());
        let last = table.last()?.map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    /// The number the next record of `queue` will get (1 for a new queue).
    pub fn queue_next(&self, queue: Queue) -> Result<u64> {
        Ok(self.meta.get(queue.next_key())?.map_or(1, |v| v.value()))
    }

    pub fn map_get(&self, map: Map, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .open_table(map.table())?
            .get(key)?
            .map(|v| v.value().to_vec()))
    }

    /// Every record of `map`, in key order.
    pub fn map_entries(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>> {
        records(&self.tx.open_table(map.table())?)
    }

    /// A named number (e.g. a stream cursor), 0 if never set.
    pub fn meta(&self, name: &str) -> Result<u64> {
        Ok(self.meta.get(name)?.map_or(0, |v| v.value()))
    }

    /// The earliest expiry of any stored decision.
    pub fn next_expiry(&self) -> Result<Option<Timestamp>> {
        Ok(self.expiry.first()?.map(|(k, _)| {
            let bytes: [u8; 8] = k.value()[..8].try_into().expect("expiry key");
            Timestamp::from_millis(u64::from_be_bytes(bytes))
        }))
    }
}

/// True when a range from `start` to `end` would be empty or inverted
/// (redb refuses inverted ranges).
fn start_after_end(start: &std::ops::Bound<&[u8]>, end: &std::ops::Bound<&[u8]>) -> bool {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    match (start, end) {
        (Unbounded, _) | (_, Unbounded) => false,
        (Included(s), Included(e)) => s > e,
        (Included(s) | Excluded(s), Excluded(e)) | (Excluded(s), Included(e)) => s >= e,
    }
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Option<Decision>> {
    table
        .get(Key::new(action, net).as_bytes())?
        .map(|v| decode(v.value()))
        .transpose()
}

fn covering_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Vec<Decision>> {
    let mut out = Vec::new();
    for sup in net.supernets() {
        if let Some(d) = get_in(table, action, &sup)? {
            out.push(d);
        }
    }
    Ok(out)
}

fn within_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    action: Action,
    net: &Net,
) -> Result<Vec<Decision>> {
    let (first, last) = net.range();
    let lo = Key::from_parts(action, net.family(), first, 0);
    let hi = Key::from_parts(action, net.family(), last, u8::MAX);
    let mut out = Vec::new();
    for item in table.range(lo.as_bytes()..=hi.as_bytes())? {
        let (_, v) = item?;
        let d = decode(v.value())?;
        if d.target != *net && net.contains(&d.target) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Numbers of stored decisions, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ban_hosts: u64,
    pub ban_networks: u64,
    pub allows: u64,
}

const COUNT_BAN_HOSTS: &str = "count.ban.hosts";
const COUNT_BAN_NETWORKS: &str = "count.ban.networks";
const COUNT_ALLOWS: &str = "count.allows";
/// In the order of [`counter_index`].
const COUNTERS: [&str; 3] = [COUNT_BAN_HOSTS, COUNT_BAN_NETWORKS, COUNT_ALLOWS];

fn counter_index(action: Action, net: &Net) -> usize {
    match (action, net.is_host()) {
        (Action::Ban, true) => 0,
        (Action::Ban, false) => 1,
        (Action::Allow, _) => 2,
    }
}

/// `[action][family][address, 4 or 16 bytes, big-endian][prefix]`: sorts by
/// action, family, address, then wider networks first.
struct Key {
    buf: [u8; 19],
    len: usize,
}

impl Key {
    fn new(action: Action, net: &Net) -> Key {
        Key::from_parts(action, net.family(), net.range().0, net.prefix())
    }

    fn from_parts(action: Action, family: Family, addr: u128, prefix: u8) -> Key {
        let mut buf = [0u8; 19];
        buf[0] = action_byte(action);
        let len = match family {
            Family::V4 => {
                buf[1] = 4;
                buf[2..6].copy_from_slice(&(addr as u32).to_be_bytes());
                buf[6] = prefix;
                7
            }
            Family::V6 => {
                buf[1] = 6;
                buf[2..18].copy_from_slice(&addr.to_be_bytes());
                buf[18] = prefix;
                19
            }
        };
        Key { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn action_byte(a: Action) -> u8 {
    match a {
        Action::Ban => 1,
        Action::Allow => 2,
    }
}

fn expiry_key(at: Timestamp, key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len);
    k.extend_from_slice(&at.as_millis().to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Sorts after every expiry key at or before `now`.
fn expiry_upper_bound(now: Timestamp) -> Vec<u8> {
    let mut k = now.as_millis().to_be_bytes().to_vec();
    k.push(u8::MAX);
    k
}

/// Every record of a map table, in key order (for writers and readers).
fn records(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(out)
}

fn encode(d: &Decision) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serialising a plain struct into a Vec cannot fail.
    out.extend(postcard::to_stdvec(d).expect("postcard encodes a Decision"));
    out
}

fn decode(bytes: &[u8]) -> Result<Decision> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt {
            format: FORMAT,
            reason: e.to_string(),
        }),
        Some((&other, _)) => Err(StoreError::Corrupt {
            format: other,
            reason: "unknown format".into(),
        }),
        None => Err(StoreError::Corrupt {
            format: 0,
            reason: "empty value".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Origin, Source, Span};
    use std::time::Duration;

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    fn ban(s: &str, at: u64, secs: Option<u64>) -> Decision {
        let span = secs.map_or(Span::Forever, |s| Span::For(Duration::from_secs(s)));
        Decision::new(
            Action::Ban,
            n(s),
            Timestamp::from_millis(at),
            span,
            Origin::new("test", Source::Cli),
        )
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("state.redb"), &Options::default()).unwrap()
    }

    #[test]
    fn databases_and_their_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let tmp = tempfile::tempdir().unwrap();
        // A directory made 0755 and a database made 0644 by an older
        // palisade or a careless umask are made private at start.
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let path = dir.join("state.redb");
        drop(Store::open(&path, &Options::default()).unwrap());
        assert_eq!(mode(&path), 0o600, "a new database");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&path, &Options::default()).unwrap();
        assert_eq!(mode(&path), 0o600, "an existing database");
        assert_eq!(s.read().unwrap().counts().unwrap(), Default::default());
        let fresh = tmp.path().join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn put_get_remove_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            s.write(|w| {
                w.put(&ban("198.51.100.7", 0, Some(60)))?;
                w.put(&ban("203.0.113.0/24", 0, None).with_reason("scanner"))?;
                w.put(&ban("2001:db8::1", 0, Some(10)))?;
                Ok(())
            })
            .unwrap();
            let removed = s
                .write(|w| w.remove(Action::Ban, &n("2001:db8::1")))
                .unwrap();
            assert!(removed.is_some());
        }
        let s = open(&dir);
        let r = s.read().unwrap();
        let got = r.get(Action::Ban, &n("203.0.113.0/24")).unwrap().unwrap();
        assert_eq!(got.reason.as_deref(), Some("scanner"));
        assert!(r.get(Action::Ban, &n("2001:db8::1")).unwrap().is_none());
        assert!(r.get(Action::Allow, &n("198.51.100.7")).unwrap().is_none());
        assert_eq!(r.iter(None).unwrap().count(), 2);
        assert_eq!(
            r.next_expiry().unwrap(),
            Some(Timestamp::from_millis(60_000))
        );
    }

    #[test]
    fn a_second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(&dir);
        let err = Store::open(&dir.path().join("state.redb"), &Options::default())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--state-dir"));
    }

    #[test]
    fn covering_and_within() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            for t in [
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.1.2.3",
                "10.2.0.1",
                "11.0.0.1",
                "2001:db8::/32",
                "2001:db8::5",
            ] {
                w.put(&ban(t, 0, None))?;
            }
            Ok(())
        })
        .unwrap();
        let r = s.read().unwrap();
        let cov: Vec<String> = r
            .covering(Action::Ban, &n("10.1.2.3"))
            .unwrap()
            .iter()
            .map(|d| d.target.to_string())
            .collect();
        assert_eq!(cov, ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3"]);
        let inside: Vec<String> = r
            .within(Action::Ban, &n("10.0.0.0/8"))
            .unwrap()
            .iter()
            .map(|d| d.target.to_string())
            .collect();
        assert_eq!(inside, ["10.1.0.0/16", "10.1.2.3", "10.2.0.1"]);
        let inside6 = r.within(Action::Ban, &n("2001:db8::/32")).unwrap();
        assert_eq!(inside6.len(), 1);
        assert!(
            r.within(Action::Allow, &n("10.0.0.0/8"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn expiry_index_follows_updates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            w.put(&ban("198.51.100.1", 0, Some(10)))?;
            w.put(&ban("198.51.100.2", 0, Some(20)))?;
            w.put(&ban("198.51.100.3", 0, None))?;
            // Extending .1 must move its expiry-index entry, not duplicate it.
            w.put(&ban("198.51.100.1", 0, Some(30)))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            s.read().unwrap().next_expiry().unwrap(),
            Some(Timestamp::from_millis(20_000))
        );
        let gone = s
            .write(|w| w.take_expired(Timestamp::from_millis(25_000), 100))
            .unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].target, n("198.51.100.2"));
        let gone = s
            .write(|w| w.take_expired(Timestamp::from_millis(30_000), 100))
            .unwrap();
        assert_eq!(gone.len(), 1, "expiry exactly at now counts as expired");
        let r = s.read().unwrap();
        assert_eq!(r.next_expiry().unwrap(), None);
        assert_eq!(r.iter(Some(Action::Ban)).unwrap().count(), 1);
        assert_eq!(r.counts().unwrap().ban_hosts, 1);
    }

    #[test]
    fn queues_number_records_forever_and_drop_what_was_handled() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let seqs = s
            .write(|w| {
                Ok([
                    w.push(Queue::Outbox, b"a")?,
                    w.push(Queue::Outbox, b"b")?,
                    w.push(Queue::Outbox, b"c")?,
                ])
            })
            .unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        s.write(|w| w.drop_through(Queue::Outbox, 2)).unwrap();
        let r = s.read().unwrap();
        assert_eq!(
            r.queue(Queue::Outbox, 0, 10).unwrap(),
            vec![(3, b"c".to_vec())]
        );
        assert_eq!(r.queue_bounds(Queue::Outbox).unwrap(), Some((3, 3)));
        drop(r);
        s.write(|w| w.drop_through(Queue::Outbox, 3)).unwrap();
        // Numbers are not reused once the queue is empty.
        assert_eq!(s.write(|w| w.push(Queue::Outbox, b"d")).unwrap(), 4);
        let r = s.read().unwrap();
        assert_eq!(r.queue_next(Queue::Outbox).unwrap(), 5);
        assert_eq!(r.queue(Queue::Outbox, 3, 10).unwrap().len(), 1);
        assert!(r.queue(Queue::Events, 0, 10).unwrap().is_empty());
    }

    #[test]
    fn maps_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            w.map_put(Map::Tokens, "b", b"2")?;
            w.map_put(Map::Tokens, "a", b"1")?;
            w.set_meta("hub.cursor", 42)?;
            assert_eq!(w.map_get(Map::Tokens, "a")?, Some(b"1".to_vec()));
            Ok(())
        })
        .unwrap();
        let r = s.read().unwrap();
        let all: Vec<String> = r
            .map_entries(Map::Tokens)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(r.meta("hub.cursor").unwrap(), 42);
        assert_eq!(r.meta("never.set").unwrap(), 0);
        drop(r);
        s.write(|w| w.map_remove(Map::Tokens, "a").map(|_| ()))
            .unwrap();
        assert!(
            s.read()
                .unwrap()
                .map_get(Map::Tokens, "a")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn counts_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            w.put(&ban("198.51.100.1", 0, None))?;
            w.put(&ban("198.51.100.1", 0, Some(5)))?; // replace: no new count
            w.put(&ban("198.51.100.0/24", 0, None))?;
            let mut a = ban("198.18.0.0/24", 0, None);
            a.action = Action::Allow;
            w.put(&a)?;
            w.remove(Action::Ban, &n("203.0.113.9"))?; // absent: no change
            Ok(())
        })
        .unwrap();
        let c = s.read().unwrap().counts().unwrap();
        assert_eq!(
            c,
            Counts {
                ban_hosts: 1,
                ban_networks: 1,
                allows: 1
            }
        );
        s.write(|w| w.take_expired(Timestamp::from_millis(10_000), 10))
            .unwrap();
        s.write(|w| w.remove(Action::Ban, &n("198.51.100.0/24")))
            .unwrap();
        let c = s.read().unwrap().counts().unwrap();
        assert_eq!(
            c,
            Counts {
                ban_hosts: 0,
                ban_networks: 0,
                allows: 1
            }
        );
    }

    #[test]
    fn lazy_writes_are_seen_at_once_and_kept_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            s.write_lazy(|w| w.put(&ban("198.51.100.1", 0, None)).map(|_| ()))
                .unwrap();
            assert!(
                s.read()
                    .unwrap()
                    .get(Action::Ban, &n("198.51.100.1"))
                    .unwrap()
                    .is_some()
            );
            s.flush().unwrap();
        }
        let s = open(&dir);
        assert!(
            s.read()
                .unwrap()
                .get(Action::Ban, &n("198.51.100.1"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn failed_write_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let res: Result<()> = s.write(|w| {
            w.put(&ban("198.51.100.1", 0, None))?;
            Err(StoreError::Db("boom".into()))
        });
        assert!(res.is_err());
        assert!(s.read().unwrap().iter(None).unwrap().next().is_none());
    }

    #[test]
    fn ordered_index_pages_by_update_and_expiry_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            // Written without the index: it is built when first asked for.
            let s = Store::open(&path, &Options::default()).unwrap();
            s.write(|w| {
                w.put(&ban("198.51.100.1", 3_000, Some(100)))?;
                w.put(&ban("198.51.100.2", 1_000, None))?;
                Ok(())
            })
            .unwrap();
            assert!(!s.read().unwrap().is_ordered());
        }
        let opts = Options {
            ordered: true,
            ..Options::default()
        };
        let s = Store::open(&path, &opts).unwrap();
        s.write(|w| {
            w.put(&ban("198.51.100.3", 2_000, Some(10)))?;
            w.put(&ban("2001:db8::9", 4_000, Some(1)))?;
            let mut a = ban("198.18.0.0/24", 9_000, None);
            a.action = Action::Allow;
            w.put(&a)?;
            Ok(())
        })
        .unwrap();
        let list = |order, desc, after: Option<&Position>| -> Vec<(Position, String)> {
            let r = s.read().unwrap();
            r.ordered(Action::Ban, order, desc, after)
                .unwrap()
                .map(|i| i.map(|(p, d)| (p, d.target.to_string())).unwrap())
                .collect()
        };
        let names = |v: &[(Position, String)]| v.iter().map(|x| x.1.clone()).collect::<Vec<_>>();
        let newest = list(Order::Updated, true, None);
        assert_eq!(
            names(&newest),
            [
                "2001:db8::9",
                "198.51.100.1",
                "198.51.100.3",
                "198.51.100.2"
            ]
        );
        // Keyset paging: continue after the second entry, either way.
        let p = newest[1].0.to_string().parse::<Position>().unwrap();
        assert_eq!(
            names(&list(Order::Updated, true, Some(&p))),
            ["198.51.100.3", "198.51.100.2"]
        );
        assert_eq!(
            names(&list(Order::Updated, false, Some(&p))),
            ["2001:db8::9"]
        );
        // By expiry: soonest first, forever last.
        assert_eq!(
            names(&list(Order::Expires, false, None)),
            [
                "2001:db8::9",
                "198.51.100.3",
                "198.51.100.1",
                "198.51.100.2"
            ]
        );
        // Changes move entries; removals and expiry drop them.
        s.write(|w| {
            w.put(&ban("198.51.100.2", 5_000, Some(1)))?;
            w.remove(Action::Ban, &n("198.51.100.1"))?;
            w.take_expired(Timestamp::from_millis(5_000), 10)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            names(&list(Order::Updated, true, None)),
            ["198.51.100.2", "198.51.100.3"]
        );
        assert_eq!(
            names(&list(Order::Expires, false, None)),
            ["198.51.100.2", "198.51.100.3"]
        );
        let r = s.read().unwrap();
        let allows: Vec<_> = r
            .ordered(Action::Allow, Order::Expires, false, None)
            .unwrap()
            .collect();
        assert_eq!(allows.len(), 1);
        assert!("zz".parse::<Position>().is_err());
        drop(r);
        drop(s);
        // Opened without it again: the index is dropped, not left stale.
        let s = Store::open(&path, &Options::default()).unwrap();
        s.write(|w| w.remove(Action::Ban, &n("198.51.100.3")).map(|_| ()))
            .unwrap();
        drop(s);
        let s = Store::open(&path, &opts).unwrap();
        let r = s.read().unwrap();
        assert_eq!(
            r.ordered(Action::Ban, Order::Updated, true, None)
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn inside_pages_through_a_network_in_address_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            for t in [
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.1.2.3",
                "10.2.0.1",
                "11.0.0.1",
            ] {
                w.put(&ban(t, 0, None))?;
            }
            Ok(())
        })
        .unwrap();
        let r = s.read().unwrap();
        let inside = |net: &str, after: Option<&str>| -> Vec<String> {
            let after = after.map(n);
            r.inside(Action::Ban, &n(net), after.as_ref())
                .unwrap()
                .map(|d| d.unwrap().target.to_string())
                .collect()
        };
        assert_eq!(
            inside("10.0.0.0/8", None),
            ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "10.2.0.1"]
        );
        assert_eq!(
            inside("10.0.0.0/8", Some("10.1.0.0/16")),
            ["10.1.2.3", "10.2.0.1"]
        );
        assert_eq!(inside("10.0.0.0/8", Some("10.2.0.1")), Vec::<String>::new());
        assert_eq!(inside("10.1.2.3", None), ["10.1.2.3"]);
    }

    #[test]
    fn iter_filters_by_action_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.write(|w| {
            w.put(&ban("2001:db8::1", 0, None))?;
            w.put(&ban("198.51.100.9", 0, None))?;
            let mut a = ban("198.18.0.0/24", 0, None);
            a.action = Action::Allow;
            w.put(&a)?;
            Ok(())
        })
        .unwrap();
        let r = s.read().unwrap();
        let bans: Vec<String> = r
            .iter(Some(Action::Ban))
            .unwrap()
            .map(|d| d.unwrap().target.to_string())
            .collect();
        assert_eq!(bans, ["198.51.100.9", "2001:db8::1"]);
        assert_eq!(r.iter(Some(Action::Allow)).unwrap().count(), 1);
    }
}

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
//! sequences) and [`Map`]s (small tables of records by text key), so that a
//! decision and what follows from it commit together. The store knows none
//! of them by name: its users name their own (the agent its outbox of
//! intents for the network, the hub its stream of decision events, its
//! tokens and offender history).
//!
//! A store opened with [`Options::ordered`] also keeps decisions ordered by
//! last update and by expiry ([`Reader::ordered`]): what the hub's dashboard
//! pages through with a million decisions, one short range scan per page.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable};

mod error;
mod keys;
mod lookup;
mod read;
mod tables;
mod write;

pub use error::{Result, StoreError};
pub use keys::{Order, Position};
pub use read::{Counts, Reader};
pub use tables::{Map, Queue};
pub use write::Writer;

use keys::{FORMAT, decode, ordered_key};
use tables::{DECISIONS, EXPIRY, META, ORDERED, ORDERED_META, ORDERED_VERSION};

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

    /// The database file.
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
            let mut meta = tx.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                Some(f) if f > u64::from(FORMAT) => {
                    return Err(StoreError::TooNew {
                        path: self.path.clone(),
                        found: f,
                        newest: FORMAT,
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
            let mut w = Writer::open(&tx, self.ordered)?;
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
        Reader::open(self.db.begin_read()?, self.ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Decision, Net, Timestamp};
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
                    w.push(OUTBOX, b"a")?,
                    w.push(OUTBOX, b"b")?,
                    w.push(OUTBOX, b"c")?,
                ])
            })
            .unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        s.write(|w| w.drop_through(OUTBOX, 2)).unwrap();
        let r = s.read().unwrap();
        assert_eq!(r.queue(OUTBOX, 0, 10).unwrap(), vec![(3, b"c".to_vec())]);
        assert_eq!(r.queue_bounds(OUTBOX).unwrap(), Some((3, 3)));
        drop(r);
        s.write(|w| w.drop_through(OUTBOX, 3)).unwrap();
        // Numbers are not reused once the queue is empty.
        assert_eq!(s.write(|w| w.push(OUTBOX, b"d")).unwrap(), 4);
        let r = s.read().unwrap();
        assert_eq!(r.queue_next(OUTBOX).unwrap(), 5);
        assert_eq!(r.queue(OUTBOX, 3, 10).unwrap().len(), 1);
        assert!(r.queue(EVENTS, 0, 10).unwrap().is_empty());
    }

    /// A map and queues as users of the store name them.
    const NAMES: Map = Map::new("map.names");
    const OUTBOX: Queue = Queue::new("queue.outbox", "queue.outbox.next");
    const EVENTS: Queue = Queue::new("queue.events", "queue.events.next");

    #[test]
    fn maps_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        // Never written: reads as empty.
        assert!(s.read().unwrap().map_entries(NAMES).unwrap().is_empty());
        assert!(s.read().unwrap().map_get(NAMES, "a").unwrap().is_none());
        s.write(|w| {
            w.map_put(NAMES, "b", b"2")?;
            w.map_put(NAMES, "a", b"1")?;
            w.set_meta("hub.cursor", 42)?;
            assert_eq!(w.map_get(NAMES, "a")?, Some(b"1".to_vec()));
            Ok(())
        })
        .unwrap();
        let r = s.read().unwrap();
        let all: Vec<String> = r
            .map_entries(NAMES)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(r.meta("hub.cursor").unwrap(), 42);
        assert_eq!(r.meta("never.set").unwrap(), 0);
        drop(r);
        s.write(|w| w.map_remove(NAMES, "a").map(|_| ())).unwrap();
        assert!(s.read().unwrap().map_get(NAMES, "a").unwrap().is_none());
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

//! What one client may hold of the hub, so that no flood takes it from the
//! agents: open connections (globally and per client) and the LRU table the
//! login limit keeps its buckets in.
//!
//! A client is counted by its IPv4 address, or by its IPv6 /64: one host
//! commonly has a whole /64, so counting IPv6 addresses one by one would
//! give an attacker 2^64 clients.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The key a client is counted by: its IPv4 address (also when written as
/// IPv4-mapped IPv6), or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !u128::from(u64::MAX))),
        },
    }
}

/// Caps on open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Connections open at once, from everyone.
    pub total: usize,
    /// Connections open at once from one client (see [`client_key`]).
    pub per_client: usize,
}

/// Descriptors kept for everything but client connections (the store,
/// control socket, feeds, logs).
const RESERVED_FILES: usize = 256;

impl ConnectionCaps {
    /// These caps, with the total lowered to what this process may open:
    /// its soft limit of open files is raised to the hard one first (a
    /// unit's `LimitNOFILE`; systemd's default soft limit is 1024).
    pub fn within_open_files(self) -> ConnectionCaps {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit with a valid rlimit.
        let files = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return self;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
            lim.rlim_cur
        };
        let usable = usize::try_from(files)
            .unwrap_or(usize::MAX)
            .saturating_sub(RESERVED_FILES)
            .max(16);
        ConnectionCaps {
            total: self.total.min(usable),
            per_client: self.per_client.min(self.total.min(usable)),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The hub's limit is reached.
    #[error("the hub has {0} connections open, its limit (max_connections)")]
    Full(usize),
    /// This client's limit is reached.
    #[error("this client has {0} connections open, its limit (max_connections_per_client)")]
    Client(usize),
}

/// Counts open connections against [`ConnectionCaps`].
pub struct Connections {
    caps: ConnectionCaps,
    total: Arc<Semaphore>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    key: IpAddr,
    connections: Arc<Connections>,
}

impl Connections {
    /// Counts connections against `caps`.
    pub fn new(caps: ConnectionCaps) -> Arc<Connections> {
        Arc::new(Connections {
            caps,
            total: Arc::new(Semaphore::new(caps.total)),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The limits.
    pub fn caps(&self) -> ConnectionCaps {
        self.caps
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full(self.caps.total))?;
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap();
        let n = open.entry(key).or_insert(0);
        if *n >= self.caps.per_client {
            return Err(Refused::Client(*n));
        }
        *n += 1;
        Ok(Admitted {
            _permit: permit,
            key,
            connections: self.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.caps.total - self.total.available_permits()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A map of at most `capacity` entries that forgets the least recently
/// used when full (a tenth of them at once, so a flood of new keys costs
/// amortized constant time), instead of forgetting everything.
pub struct Lru<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Lru<K, V> {
        Lru {
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// Inserts or replaces `key`'s value, marking it used at `now`.
    pub fn put(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict();
        }
        self.entries.insert(key, (value, now));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self) {
        let mut used: Vec<Instant> = self.entries.values().map(|(_, t)| *t).collect();
        let n = (self.capacity / 10).max(1).min(used.len());
        let (_, cut, _) = used.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut over = n;
        // Entries used at exactly the cut may be more than needed: stop at n.
        self.entries.retain(|_, (_, t)| {
            if *t <= cut && over > 0 {
                over -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clients_are_ipv4_addresses_or_ipv6_64s() {
        assert_eq!(client_key(ip("198.18.0.7")), ip("198.18.0.7"));
        assert_eq!(client_key(ip("::ffff:198.18.0.7")), ip("198.18.0.7"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn connections_are_capped_globally_and_per_client() {
        let c = Connections::new(ConnectionCaps {
            total: 4,
            per_client: 2,
        });
        let a1 = c.admit(ip("2001:db8::1")).unwrap();
        let _a2 = c.admit(ip("2001:db8::2")).unwrap();
        // The same /64: one client.
        assert_eq!(c.admit(ip("2001:db8::3")).err(), Some(Refused::Client(2)));
        let _b = c.admit(ip("198.18.0.1")).unwrap();
        let _d = c.admit(ip("198.18.0.2")).unwrap();
        assert_eq!(c.open(), 4);
        assert_eq!(c.admit(ip("198.18.0.3")).err(), Some(Refused::Full(4)));
        drop(a1);
        assert_eq!(c.open(), 3);
        let _a3 = c.admit(ip("2001:db8::3")).unwrap();
    }

    #[test]
    fn the_lru_forgets_the_least_recently_used() {
        let t0 = Instant::now();
        let mut m = Lru::new(10);
        for i in 0..10u32 {
            m.put(i, i, t0 + Duration::from_secs(u64::from(i)));
        }
        // 0 is used again: 1 is now the oldest.
        m.put(0, 0, t0 + Duration::from_secs(100));
        m.put(10, 10, t0 + Duration::from_secs(101));
        assert_eq!(m.len(), 10);
        assert!(m.get(&0).is_some() && m.get(&1).is_none() && m.get(&10).is_some());
        for i in 11..10_000u32 {
            m.put(i, i, t0 + Duration::from_secs(u64::from(i) + 100));
        }
        assert!(m.len() <= 10);
        assert!(m.get(&9_999).is_some());
    }
}

//! How decisions are laid out in the tables: the keys of the decisions
//! table and of its indexes, the counters kept in `meta`, and the encoding
//! of a stored decision.

use palisade_model::{Action, Decision, Family, Net, Timestamp};

use crate::error::{Result, StoreError};

/// `[action][family][address, 4 or 16 bytes, big-endian][prefix]`: sorts by
/// action, family, address, then wider networks first.
pub(crate) struct Key {
    buf: [u8; 19],
    pub(crate) len: usize,
}

impl Key {
    pub(crate) fn new(action: Action, net: &Net) -> Key {
        Key::from_parts(action, net.family(), net.range().0, net.prefix())
    }

    pub(crate) fn from_parts(action: Action, family: Family, addr: u128, prefix: u8) -> Key {
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

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn action_byte(a: Action) -> u8 {
    match a {
        Action::Ban => 1,
        Action::Allow => 2,
    }
}

pub(crate) fn expiry_key(at: Timestamp, key: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len);
    k.extend_from_slice(&at.as_millis().to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Sorts after every expiry key at or before `now`.
pub(crate) fn expiry_upper_bound(now: Timestamp) -> Vec<u8> {
    let mut k = now.as_millis().to_be_bytes().to_vec();
    k.push(u8::MAX);
    k
}

/// The orders [`Reader::ordered`](crate::Reader::ordered) lists decisions in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Order {
    /// By [`Decision::updated`]: when it was made or last extended.
    Updated,
    /// By [`Decision::expires`]; decisions that never expire come last.
    Expires,
}

impl Order {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Order::Updated => 1,
            Order::Expires => 2,
        }
    }

    pub(crate) fn time(self, d: &Decision) -> u64 {
        match self {
            Order::Updated => d.updated.as_millis(),
            Order::Expires => d.expires.map_or(u64::MAX, |e| e.as_millis()),
        }
    }
}

/// A place in an ordered listing, to continue after it (keyset paging: a
/// page costs the same wherever it is). Printable as hex for URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position(pub(crate) Vec<u8>);

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

/// The ordered index's key of `d` in `order`.
pub(crate) fn ordered_key(order: Order, d: &Decision) -> Vec<u8> {
    let key = Key::new(d.action, &d.target);
    let mut k = Vec::with_capacity(10 + key.len);
    k.push(order.byte());
    k.push(action_byte(d.action));
    k.extend_from_slice(&order.time(d).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) const COUNT_BAN_HOSTS: &str = "count.ban.hosts";
pub(crate) const COUNT_BAN_NETWORKS: &str = "count.ban.networks";
pub(crate) const COUNT_ALLOWS: &str = "count.allows";
/// In the order of [`counter_index`].
pub(crate) const COUNTERS: [&str; 3] = [COUNT_BAN_HOSTS, COUNT_BAN_NETWORKS, COUNT_ALLOWS];

pub(crate) fn counter_index(action: Action, net: &Net) -> usize {
    match (action, net.is_host()) {
        (Action::Ban, true) => 0,
        (Action::Ban, false) => 1,
        (Action::Allow, _) => 2,
    }
}

/// Version of the encoding of stored values. Bump it, and teach
/// [`decode`] the old one, whenever [`Decision`] changes shape: postcard is
/// not self-describing, so an old value cannot be read with a new layout.
pub(crate) const FORMAT: u8 = 1;

pub(crate) fn encode(d: &Decision) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serialising a plain struct into a Vec cannot fail.
    out.extend(postcard::to_stdvec(d).expect("postcard encodes a Decision"));
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Decision> {
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

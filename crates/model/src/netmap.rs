//! A map keyed by [`Net`] that answers "which entries cover this address?".
//!
//! Lookups walk the prefix lengths that actually occur in the map (at most 33
//! for IPv4, 129 for IPv6) and do one hash lookup for each, so a covering
//! query costs a handful of hash probes whatever the map's size. That is the
//! shape of allowlists: thousands of entries, checked on every ban.

use std::collections::HashMap;

use crate::net::{Family, Net};

/// Entries keyed by network, with covering and containment queries.
#[derive(Debug, Clone)]
pub struct NetMap<V> {
    entries: HashMap<Net, V>,
    /// How many entries use each prefix length, per family, so lookups skip
    /// lengths that are absent.
    lengths_v4: [u32; 33],
    lengths_v6: [u32; 129],
}

impl<V> Default for NetMap<V> {
    fn default() -> Self {
        NetMap {
            entries: HashMap::new(),
            lengths_v4: [0; 33],
            lengths_v6: [0; 129],
        }
    }
}

impl<V> NetMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of networks in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the map holds no network.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores `value` for `net`, returning the value it replaces.
    pub fn insert(&mut self, net: Net, value: V) -> Option<V> {
        let old = self.entries.insert(net, value);
        if old.is_none() {
            self.lengths_mut(net.family())[net.prefix() as usize] += 1;
        }
        old
    }

    /// Removes `net` (exactly that network, not the ones inside it), returning
    /// its value.
    pub fn remove(&mut self, net: &Net) -> Option<V> {
        let old = self.entries.remove(net);
        if old.is_some() {
            self.lengths_mut(net.family())[net.prefix() as usize] -= 1;
        }
        old
    }

    /// The value stored for exactly `net`.
    pub fn get(&self, net: &Net) -> Option<&V> {
        self.entries.get(net)
    }

    /// The value stored for exactly `net`, to change it.
    pub fn get_mut(&mut self, net: &Net) -> Option<&mut V> {
        self.entries.get_mut(net)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Net, &V)> {
        self.entries.iter()
    }

    /// Entries whose network contains `net` (including `net` itself), from
    /// the widest to the narrowest.
    pub fn covering(&self, net: &Net) -> impl Iterator<Item = (Net, &V)> + '_ {
        let lengths = self.lengths(net.family());
        let (addr, prefix) = (net.addr(), net.prefix());
        // Lengths checked before a supernet is built: with no entries (the
        // usual allowlist holds a few), a lookup costs next to nothing.
        (0..=prefix)
            .filter(move |&p| lengths[p as usize] > 0)
            .map(move |p| Net::truncating(addr, p))
            .filter_map(move |s| self.entries.get(&s).map(|v| (s, v)))
    }

    /// The narrowest entry that contains `net`, if any.
    pub fn most_specific(&self, net: &Net) -> Option<(Net, &V)> {
        self.covering(net).last()
    }

    /// Entries strictly inside `net` (narrower than it). Scans the map; meant
    /// for occasional operations such as "an allow of a /24 lifts the bans
    /// inside it".
    pub fn within(&self, net: &Net) -> impl Iterator<Item = (Net, &V)> + '_ {
        let net = *net;
        self.entries
            .iter()
            .filter(move |(k, _)| net.contains(k) && **k != net)
            .map(|(k, v)| (*k, v))
    }

    fn lengths(&self, family: Family) -> &[u32] {
        match family {
            Family::V4 => &self.lengths_v4,
            Family::V6 => &self.lengths_v6,
        }
    }

    fn lengths_mut(&mut self, family: Family) -> &mut [u32] {
        match family {
            Family::V4 => &mut self.lengths_v4,
            Family::V6 => &mut self.lengths_v6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    #[test]
    fn covering_finds_every_enclosing_entry() {
        let mut m = NetMap::new();
        m.insert(n("10.0.0.0/8"), "eight");
        m.insert(n("10.1.0.0/16"), "sixteen");
        m.insert(n("10.1.2.3"), "host");
        m.insert(n("2001:db8::/32"), "v6");
        let hits: Vec<_> = m.covering(&n("10.1.2.3")).map(|(_, v)| *v).collect();
        assert_eq!(hits, ["eight", "sixteen", "host"]);
        assert_eq!(m.most_specific(&n("10.1.9.9")).unwrap().1, &"sixteen");
        assert!(m.most_specific(&n("11.0.0.1")).is_none());
        assert_eq!(m.most_specific(&n("2001:db8:1::5")).unwrap().1, &"v6");
        assert!(m.most_specific(&n("2001:db9::1")).is_none());
    }

    #[test]
    fn within_lists_narrower_entries_only() {
        let mut m = NetMap::new();
        m.insert(n("10.0.0.0/8"), 1);
        m.insert(n("10.1.0.0/16"), 2);
        m.insert(n("10.1.2.3"), 3);
        m.insert(n("11.0.0.1"), 4);
        let mut inside: Vec<_> = m.within(&n("10.0.0.0/8")).map(|(_, v)| *v).collect();
        inside.sort();
        assert_eq!(inside, [2, 3]);
    }

    #[test]
    fn removal_keeps_length_counts_right() {
        let mut m = NetMap::new();
        m.insert(n("10.0.0.0/8"), ());
        m.insert(n("10.0.0.0/8"), ());
        assert_eq!(m.len(), 1);
        m.remove(&n("10.0.0.0/8"));
        m.remove(&n("10.0.0.0/8"));
        assert!(m.is_empty());
        assert!(m.covering(&n("10.0.0.1")).next().is_none());
        m.insert(n("10.0.0.0/8"), ());
        assert!(m.covering(&n("10.0.0.1")).next().is_some());
    }
}

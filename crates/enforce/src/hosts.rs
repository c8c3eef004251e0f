//! The banned hosts of one family, as the kernel's hash set holds them.
//!
//! Single addresses need no partition: they never overlap one another, and
//! a host inside a banned network lives in a different kernel set (see
//! `nftables.rs`). Each host is one element whose timeout is its own
//! expiry, so a change is one element operation whatever the set's size.
//!
//! Memory: one `BTreeMap` entry per host (the address and a 16-byte value);
//! comments are interned as in a partition. Address order keeps listings
//! and comparisons with a kernel dump simple.

use std::collections::BTreeMap;

use crate::partition::{Comments, Diff, Key, Val};

#[derive(Debug)]
pub(crate) struct Hosts<K: Key> {
    map: BTreeMap<K, Val>,
    comments: Comments,
}

impl<K: Key> Default for Hosts<K> {
    fn default() -> Self {
        Hosts {
            map: BTreeMap::new(),
            comments: Comments::default(),
        }
    }
}

impl<K: Key> Hosts<K> {
    /// Hosts held (expired ones included until [`Hosts::prune`]).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn comment(&self, id: u32) -> Option<&str> {
        self.comments.get(id)
    }

    /// A host's expiry and comment, expired or not.
    pub fn get(&self, addr: K) -> Option<Val> {
        self.map.get(&addr).copied()
    }

    /// The hosts in address order.
    pub fn iter(&self) -> impl Iterator<Item = (K, Val)> + '_ {
        self.map.iter().map(|(&k, &v)| (k, v))
    }

    /// Adds a host or replaces its expiry and comment.
    pub fn put(&mut self, addr: K, expiry: u64, comment: Option<&str>, diff: &mut Diff<K>) {
        let val = Val {
            expiry,
            comment: self.comments.intern(comment),
        };
        if let Some(old) = self.map.insert(addr, val) {
            self.comments.release(old.comment);
            diff.removed(addr, addr, old);
        }
        diff.added(addr, addr, val);
    }

    /// Removes a host; false if it was not there.
    pub fn remove(&mut self, addr: K, diff: &mut Diff<K>) -> bool {
        let Some(old) = self.map.remove(&addr) else {
            return false;
        };
        self.comments.release(old.comment);
        diff.removed(addr, addr, old);
        true
    }

    /// Forgets hosts that expired before `before` (the kernel removed them
    /// by itself), telling `gone` each one.
    pub fn prune(&mut self, before: u64, gone: &mut impl FnMut(K)) {
        let comments = &mut self.comments;
        self.map.retain(|&k, v| {
            let keep = v.alive(before);
            if !keep {
                gone(k);
                comments.release(v.comment);
            }
            keep
        });
    }

    /// Builds the set from scratch; among duplicates the last one given
    /// wins, and hosts already expired at `now` are left out.
    pub fn build(items: impl IntoIterator<Item = (K, u64, Option<String>)>, now: u64) -> Hosts<K> {
        let mut hosts = Hosts::default();
        let mut list: Vec<(K, Val)> = Vec::new();
        for (addr, expiry, comment) in items {
            if expiry <= now {
                continue;
            }
            let comment = hosts.comments.intern(comment.as_deref());
            list.push((addr, Val { expiry, comment }));
        }
        // Stable: among duplicates the last one given stays last.
        list.sort_by_key(|(k, _)| *k);
        let mut deduped: Vec<(K, Val)> = Vec::with_capacity(list.len());
        for item in list {
            if let Some(last) = deduped.last_mut()
                && last.0 == item.0
            {
                hosts.comments.release(last.1.comment);
                *last = item;
                continue;
            }
            deduped.push(item);
        }
        hosts.map = deduped.into_iter().collect();
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::Op;

    fn ops(d: &Diff<u32>) -> Vec<(u32, Op)> {
        d.ops()
            .map(|(s, e, op)| {
                assert_eq!(s, e, "hosts are single elements");
                (s, op)
            })
            .collect()
    }

    #[test]
    fn put_refresh_remove() {
        let mut h = Hosts::<u32>::default();
        let mut d = Diff::default();
        h.put(7, 100, Some("ssh"), &mut d);
        h.put(3, 200, None, &mut d);
        assert_eq!(h.len(), 2);
        let got = ops(&d);
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            (
                3,
                Op::Add(Val {
                    expiry: 200,
                    comment: 0
                })
            )
        ));
        assert!(matches!(got[1], (7, Op::Add(Val { expiry: 100, .. }))));

        let mut d = Diff::default();
        h.put(7, 300, Some("ssh"), &mut d);
        let got = ops(&d);
        assert!(
            matches!(got[..], [(7, Op::Update { before, after })] if before.expiry == 100 && after.expiry == 300),
            "{got:?}"
        );

        let mut d = Diff::default();
        assert!(h.remove(7, &mut d));
        assert!(!h.remove(7, &mut d));
        assert!(matches!(ops(&d)[..], [(7, Op::Delete { .. })]));
        assert_eq!(h.comments.get(1), None, "the comment was released");
    }

    #[test]
    fn a_put_undone_in_the_same_diff_leaves_nothing() {
        let mut h = Hosts::<u32>::default();
        let mut d = Diff::default();
        h.put(9, 100, None, &mut d);
        h.remove(9, &mut d);
        assert!(d.is_empty());
    }

    #[test]
    fn build_dedups_and_prune_forgets() {
        let h = Hosts::<u32>::build(
            [
                (5, 100, Some("a".to_string())),
                (1, 50, None),
                (5, 400, Some("b".to_string())),
                (2, 10, None),
            ],
            20,
        );
        let all: Vec<_> = h.iter().map(|(k, v)| (k, v.expiry)).collect();
        assert_eq!(all, [(1, 50), (5, 400)]);
        assert_eq!(h.comment(h.iter().nth(1).unwrap().1.comment), Some("b"));
        let mut h = h;
        h.prune(60, &mut |_| {});
        assert_eq!(h.len(), 1);
    }
}

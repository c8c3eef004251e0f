//! The nftables enforcer: palisade's own table, driven over raw netlink.
//!
//! Kernel layout (table name and priorities configurable; the chains are
//! built by `layout.rs`, which says why they sit where they do):
//!
//! ```text
//! table inet palisade {
//!   set allow4     { type ipv4_addr; flags interval,timeout; }
//!   set allow6     { type ipv6_addr; flags interval,timeout; }
//!   set block4     { type ipv4_addr; flags timeout; }           # banned hosts
//!   set block6     { type ipv6_addr; flags timeout; }
//!   set block4_net { type ipv4_addr; flags interval,timeout; }  # banned networks
//!   set block6_net { type ipv6_addr; flags interval,timeout; }
//!   (every set: gc-interval 30s)
//!   chain prerouting { type filter hook prerouting priority raw; policy accept;
//!                      ip saddr @allow4 accept;     ip6 saddr @allow6 accept;
//!                      ip saddr @block4 drop;       ip6 saddr @block6 drop;
//!                      ip saddr @block4_net drop;   ip6 saddr @block6_net drop; }
//!   chain ingress_DEV { type filter hook ingress device DEV priority -500; (same) }
//!   chain input { type filter hook input priority -10;      # with probe logging
//!                 allowed sources accepted, then the probe logging rules }
//! }
//! ```
//!
//! With `xdp_devices`, the sets are also copied into the maps of an XDP
//! program on those interfaces (see `xdp.rs` for how the copy stays a
//! subset of the table).
//!
//! Why banned hosts and banned networks live in different sets: every
//! transaction that touches an interval set costs time proportional to the
//! set's size (measured on 6.18: 127 added elements take 20 ms in a set of
//! 100k intervals and 95 ms at 300k, about 0.3 µs per element held), while
//! the same change to a hash set takes about 0.1 ms at any size. Bans are
//! overwhelmingly single hosts and arrive one by one, so hosts go to hash
//! sets; networks (few, and possibly overlapping hosts) go to interval sets.
//! Allowlists are small and hold networks, so they stay interval sets.
//!
//! Each interval set is mirrored in memory by a partition (see
//! `partition.rs`): overlapping entries become disjoint pieces carrying the
//! latest expiry of the entries covering them, so the kernel expires exactly
//! what should expire even while palisade is stopped. Each host set is
//! mirrored by a map of hosts (see `hosts.rs`), one element per host with
//! its own timeout.
//!
//! - [`NftablesEnforcer::replace_all`](Enforcer::replace_all) rebuilds the table in
//!   one transaction (`NEWTABLE`, `DELTABLE`, `NEWTABLE`, sets, chains,
//!   rules, elements): packets see the old table or the new one, never an
//!   empty one, and nothing stale survives. This is also how a table in the
//!   earlier layout (input and forward chains) is upgraded at start, with
//!   two chains bridging the switch (see `layout.rs`).
//! - [`NftablesEnforcer::apply`](Enforcer::apply) sends only the elements that
//!   changed, in one transaction: `DESTROYSETELEM` for elements that went
//!   away (missing elements are no error), `NEWSETELEM` for new ones, and
//!   for a refreshed element either `NEWSETELEM` on the existing element
//!   carrying both timeout and expiration (kernel 6.10+ updates them; a
//!   timeout alone equal to the old one would not move the expiry) or `DESTROYSETELEM` + `NEWSETELEM`
//!   (older kernels, changes to or from "forever", new comments). The mode
//!   is chosen from the kernel version (`uname`). Elements that already
//!   expired are left to the kernel, never deleted (see `encode_diff`). If
//!   a transaction fails, the whole table is reloaded from memory and the
//!   error reported.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use palisade_model::{Action, Family, Net, Timestamp};
use palisade_netlink::Socket;
use palisade_netlink::nft::{
    self, AddrType, Batch, ElemOp, ElemWriter, SetSpec, Verdict, family, set_flags,
};

use crate::enforcer::{
    Change, DRIFT_EXAMPLES, DRIFT_SETTLE, Drift, EnforceError, Enforcer, Entry, NetlinkError,
    ObjectDrift, ObjectStatus, Status,
};
use crate::hosts::Hosts;
use crate::kernel::kernel_version;
use crate::layout;
use crate::partition::{Builder, Diff, FOREVER, Key, Op, Partition, Val};
use crate::xdp::{Expected, Mirror, Plan};

/// Longest timeout given to the kernel (about 100 years); the kernel
/// rejects timeouts that overflow its clock with ERANGE.
const MAX_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// How often the kernel sweeps expired elements out of palisade's sets
/// (`gc-interval`). Each sweep of a hash set walks every element: at the
/// kernel's default of once a second, a million bans cost about 4% of a
/// core all the time (measured on 6.18), and during a flood the sweep
/// competes with the receive path for its core. Expired elements never
/// match while they wait (the kernel checks each element's expiry on
/// lookup), so a longer interval only frees their memory later.
const GC_INTERVAL_MS: u32 = 30_000;
/// How often expired entries are dropped from memory.
const PRUNE_EVERY_MS: u64 = 60_000;
/// Elements are forgotten this long after their expiry, so that an element
/// the kernel expires a little late is still deleted explicitly if replaced.
const PRUNE_GRACE_MS: u64 = 10_000;

pub use crate::layout::NftablesOptions;

/// How an element whose expiry changed is refreshed in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// `NEWSETELEM` on the existing element updates its timeout (6.10+).
    Update,
    /// `DESTROYSETELEM` then `NEWSETELEM`, in the same transaction.
    Replace,
}

/// One of the six sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetName {
    /// Allowed IPv4 addresses and networks (an interval set).
    Allow4,
    /// Allowed IPv6 addresses and networks (an interval set).
    Allow6,
    /// Banned IPv4 hosts (a hash set).
    Block4,
    /// Banned IPv6 hosts (a hash set).
    Block6,
    /// Banned IPv4 networks (an interval set).
    Block4Net,
    /// Banned IPv6 networks (an interval set).
    Block6Net,
}

/// What a set holds, whatever the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allow,
    Block,
    BlockNet,
}

impl SetName {
    /// In the order of the chain's rules.
    pub const ALL: [SetName; 6] = [
        SetName::Allow4,
        SetName::Allow6,
        SetName::Block4,
        SetName::Block6,
        SetName::Block4Net,
        SetName::Block6Net,
    ];

    /// The set's name in the table (`allow4`, `block4net`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SetName::Allow4 => "allow4",
            SetName::Allow6 => "allow6",
            SetName::Block4 => "block4",
            SetName::Block6 => "block6",
            SetName::Block4Net => "block4_net",
            SetName::Block6Net => "block6_net",
        }
    }

    /// The set holding an entry of this action for this network.
    pub fn of(action: Action, net: &Net) -> SetName {
        let host = net.prefix() == net.family().bits();
        SetName::new(
            match (action, host) {
                (Action::Allow, _) => Kind::Allow,
                (Action::Ban, true) => Kind::Block,
                (Action::Ban, false) => Kind::BlockNet,
            },
            net.family(),
        )
    }

    fn new(kind: Kind, family: Family) -> SetName {
        match (kind, family) {
            (Kind::Allow, Family::V4) => SetName::Allow4,
            (Kind::Allow, Family::V6) => SetName::Allow6,
            (Kind::Block, Family::V4) => SetName::Block4,
            (Kind::Block, Family::V6) => SetName::Block6,
            (Kind::BlockNet, Family::V4) => SetName::Block4Net,
            (Kind::BlockNet, Family::V6) => SetName::Block6Net,
        }
    }

    fn kind(self) -> Kind {
        match self {
            SetName::Allow4 | SetName::Allow6 => Kind::Allow,
            SetName::Block4 | SetName::Block6 => Kind::Block,
            SetName::Block4Net | SetName::Block6Net => Kind::BlockNet,
        }
    }

    fn family(self) -> Family {
        match self {
            SetName::Allow4 | SetName::Block4 | SetName::Block4Net => Family::V4,
            _ => Family::V6,
        }
    }

    /// True for interval sets, false for the hash sets of hosts.
    pub fn is_interval(self) -> bool {
        self.kind() != Kind::Block
    }

    fn addr_type(self) -> AddrType {
        match self.family() {
            Family::V4 => AddrType::V4,
            Family::V6 => AddrType::V6,
        }
    }

    fn flags(self) -> u32 {
        if self.is_interval() {
            set_flags::INTERVAL | set_flags::TIMEOUT
        } else {
            set_flags::TIMEOUT
        }
    }

    pub(crate) fn verdict(self) -> Verdict {
        match self.kind() {
            Kind::Allow => Verdict::Accept,
            Kind::Block | Kind::BlockNet => Verdict::Drop,
        }
    }
}

/// An interval of a set, as the kernel or the enforcer holds it (a host is
/// an interval whose first and last address are the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// First address of the interval.
    pub first: IpAddr,
    /// Last address of the interval (the same as `first` for a host).
    pub last: IpAddr,
    /// Time left; `None` for elements without a timeout.
    pub expires_in: Option<Duration>,
    /// The element's comment, if it has one.
    pub comment: Option<String>,
}

/// The three sets of one family, in memory.
#[derive(Debug)]
struct Sets<K: Key> {
    allow: Partition<K>,
    block: Hosts<K>,
    block_net: Partition<K>,
}

impl<K: Key> Default for Sets<K> {
    fn default() -> Self {
        Sets {
            allow: Partition::default(),
            block: Hosts::default(),
            block_net: Partition::default(),
        }
    }
}

/// The kernel operations for the three sets of one family.
#[derive(Debug)]
struct Diffs<K: Key> {
    allow: Diff<K>,
    block: Diff<K>,
    block_net: Diff<K>,
}

impl<K: Key> Default for Diffs<K> {
    fn default() -> Self {
        Diffs {
            allow: Diff::default(),
            block: Diff::default(),
            block_net: Diff::default(),
        }
    }
}

impl<K: Key> Diffs<K> {
    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty() && self.block_net.is_empty()
    }

    /// What these operations do to the XDP drop's copy.
    fn plan(&self, now: u64, plan: &mut Plan) {
        let bits = K::BITS;
        for (diff, ban) in [
            (&self.allow, false),
            (&self.block, true),
            (&self.block_net, true),
        ] {
            for (s, e, op) in diff.ops() {
                let (before, after) = match op {
                    Op::Add(a) => (None, Some(a.expiry)),
                    Op::Update { before, after } => (Some(before.expiry), Some(after.expiry)),
                    Op::Delete { before } => (Some(before.expiry), None),
                };
                plan.change(ban, (s.to_u128(), e.to_u128(), bits), before, after, now);
            }
        }
    }

    fn of(&self, kind: Kind) -> &Diff<K> {
        match kind {
            Kind::Allow => &self.allow,
            Kind::Block => &self.block,
            Kind::BlockNet => &self.block_net,
        }
    }
}

impl<K: Key> Sets<K> {
    fn elements_len(&self) -> usize {
        self.allow.pieces_len() + self.block.len() + self.block_net.pieces_len()
    }

    fn put(
        &mut self,
        kind: Kind,
        net: &Net,
        expiry: u64,
        c: Option<&str>,
        now: u64,
        d: &mut Diffs<K>,
    ) {
        let start = K::from_u128(net.range().0);
        let prefix = net.prefix();
        match kind {
            Kind::Allow => self.allow.put(start, prefix, expiry, c, now, &mut d.allow),
            Kind::Block => self.block.put(start, expiry, c, &mut d.block),
            Kind::BlockNet => self
                .block_net
                .put(start, prefix, expiry, c, now, &mut d.block_net),
        }
    }

    fn remove(&mut self, kind: Kind, net: &Net, now: u64, d: &mut Diffs<K>) {
        let start = K::from_u128(net.range().0);
        let prefix = net.prefix();
        match kind {
            Kind::Allow => self.allow.remove(start, prefix, now, &mut d.allow),
            Kind::Block => self.block.remove(start, &mut d.block),
            Kind::BlockNet => self.block_net.remove(start, prefix, now, &mut d.block_net),
        };
    }

    /// Forgets what expired; what the kernel forgot goes to `plan` too.
    fn prune(&mut self, now: u64, before: u64, plan: &mut Option<Plan>) {
        let bits = K::BITS;
        let mut gone = |ban: bool, s: K, e: K| {
            if let Some(p) = plan.as_mut() {
                p.change(ban, (s.to_u128(), e.to_u128(), bits), Some(0), None, now);
            }
        };
        self.allow.prune(now, before, &mut |s, e| gone(false, s, e));
        self.block.prune(before, &mut |k| gone(true, k, k));
        self.block_net
            .prune(now, before, &mut |s, e| gone(true, s, e));
    }

    /// Every live element of the interval sets (allows and banned
    /// networks), as changes from nothing.
    fn plan_intervals(&self, now: u64, plan: &mut Plan) {
        let bits = K::BITS;
        for (s, e, v) in self.allow.pieces().filter(|(_, _, v)| v.alive(now)) {
            plan.change(
                false,
                (s.to_u128(), e.to_u128(), bits),
                None,
                Some(v.expiry),
                now,
            );
        }
        for (s, e, v) in self.block_net.pieces().filter(|(_, _, v)| v.alive(now)) {
            plan.change(
                true,
                (s.to_u128(), e.to_u128(), bits),
                None,
                Some(v.expiry),
                now,
            );
        }
    }

    /// How the XDP drop's maps of this family differ from these sets.
    fn xdp_drift(&self, xdp: &Mirror, now: u64) -> Result<Vec<ObjectDrift>, EnforceError> {
        let mut rest = Plan::default();
        self.plan_intervals(now, &mut rest);
        let host = |a: u128| {
            self.block
                .get(K::from_u128(a))
                .filter(|v| v.alive(now))
                .map(|v| v.expiry)
        };
        let mut hosts = self
            .block
            .iter()
            .filter(|(_, v)| v.alive(now))
            .map(|(_, v)| v.expiry);
        xdp.drift(
            Expected {
                bits: K::BITS,
                host: &host,
                hosts: &mut hosts,
                rest,
            },
            now,
        )
        .map_err(|e| EnforceError::Other(e.to_string()))
    }

    /// The live elements of one set, as intervals.
    fn intervals(&self, kind: Kind, now: u64) -> Vec<Interval> {
        let interval = |s: K, e: K, v: Val, comment: Option<&str>| Interval {
            first: key_to_addr::<K>(s),
            last: key_to_addr::<K>(e),
            expires_in: (v.expiry != FOREVER).then(|| Duration::from_millis(v.expiry - now)),
            comment: comment.map(str::to_string),
        };
        match kind {
            Kind::Block => self
                .block
                .iter()
                .filter(|(_, v)| v.alive(now))
                .map(|(a, v)| interval(a, a, v, self.block.comment(v.comment)))
                .collect(),
            Kind::Allow | Kind::BlockNet => {
                let p = self.partition(kind);
                p.pieces()
                    .filter(|(_, _, v)| v.alive(now))
                    .map(|(s, e, v)| interval(s, e, v, p.comment(v.comment)))
                    .collect()
            }
        }
    }

    fn partition(&self, kind: Kind) -> &Partition<K> {
        match kind {
            Kind::Allow => &self.allow,
            _ => &self.block_net,
        }
    }

    /// (entries held, live elements expected in the kernel) of one set.
    fn counts(&self, kind: Kind, now: u64) -> (usize, usize) {
        match kind {
            Kind::Block => {
                let live = self.block.iter().filter(|(_, v)| v.alive(now)).count();
                (self.block.len(), live)
            }
            _ => {
                let p = self.partition(kind);
                let live = p.pieces().filter(|(_, _, v)| v.alive(now)).count();
                (p.len(), live)
            }
        }
    }

    /// Writes every live element of one set.
    fn write(&self, kind: Kind, w: &mut ElemWriter<'_, '_>, now: u64) {
        let mut a = [0u8; 16];
        match kind {
            Kind::Block => {
                for (addr, v) in self.block.iter().filter(|(_, v)| v.alive(now)) {
                    let n = addr.write_be(&mut a);
                    w.push(
                        &a[..n],
                        0,
                        timeout(v.expiry, now),
                        self.block.comment(v.comment),
                    );
                }
            }
            _ => {
                let p = self.partition(kind);
                let mut z = [0u8; 16];
                for (s, e, v) in p.pieces().filter(|(_, _, v)| v.alive(now)) {
                    let n = s.write_be(&mut a);
                    e.write_be(&mut z);
                    w.push_interval(
                        &a[..n],
                        &z[..n],
                        timeout(v.expiry, now),
                        p.comment(v.comment),
                    );
                }
            }
        }
    }

    fn comment(&self, kind: Kind, id: u32) -> Option<&str> {
        match kind {
            Kind::Block => self.block.comment(id),
            _ => self.partition(kind).comment(id),
        }
    }
}

/// Sorts entries into the sets of one family, for a full load.
struct SetsBuilder<K: Key> {
    allow: Builder<K>,
    block: Vec<(K, u64, Option<String>)>,
    block_net: Builder<K>,
}

impl<K: Key> SetsBuilder<K> {
    fn new(now: u64) -> Self {
        SetsBuilder {
            allow: Builder::new(now),
            block: Vec::new(),
            block_net: Builder::new(now),
        }
    }

    fn push(&mut self, kind: Kind, e: Entry) {
        let expiry = e.expires.map_or(FOREVER, Timestamp::as_millis);
        let start = K::from_u128(e.net.range().0);
        let prefix = e.net.prefix();
        match kind {
            Kind::Allow => self.allow.push(start, prefix, expiry, e.comment.as_deref()),
            Kind::Block => self.block.push((start, expiry, e.comment)),
            Kind::BlockNet => self
                .block_net
                .push(start, prefix, expiry, e.comment.as_deref()),
        }
    }

    fn finish(self, now: u64) -> Sets<K> {
        Sets {
            allow: self.allow.finish(),
            block: Hosts::build(self.block, now),
            block_net: self.block_net.finish(),
        }
    }
}

/// The nftables enforcer (see the module docs).
#[derive(Debug)]
pub struct NftablesEnforcer {
    config: NftablesOptions,
    sock: Socket,
    v4: Sets<u32>,
    v6: Sets<u128>,
    refresh: RefreshMode,
    delete_op: ElemOp,
    /// False until a full load succeeded, and after a failure that could
    /// not be repaired: the next change then reloads everything.
    in_sync: bool,
    next_prune: u64,
    /// The XDP drop's copy of the sets, on `xdp_devices`.
    xdp: Mirror,
}

impl NftablesEnforcer {
    /// An enforcer for the network namespace of the calling thread. Nothing
    /// is sent to the kernel until the first `replace_all` or `apply`.
    pub fn new(config: NftablesOptions) -> Result<NftablesEnforcer, EnforceError> {
        let sock = Socket::netfilter()?;
        let version = kernel_version();
        // NFT_MSG_DESTROYSETELEM exists since 6.3, element timeout updates
        // since 6.10. Unknown versions are assumed recent.
        let at_least = |maj: u32, min: u32| version.is_none_or(|v| v >= (maj, min));
        Ok(NftablesEnforcer {
            sock,
            v4: Sets::default(),
            v6: Sets::default(),
            refresh: if at_least(6, 10) {
                RefreshMode::Update
            } else {
                RefreshMode::Replace
            },
            delete_op: if at_least(6, 3) {
                ElemOp::Destroy
            } else {
                ElemOp::Delete
            },
            in_sync: false,
            next_prune: 0,
            xdp: Mirror::new(config.xdp_devices.clone()),
            config,
        })
    }

    /// Where the enforcer puts its objects.
    pub fn config(&self) -> &NftablesOptions {
        &self.config
    }

    /// How refreshed expiries are written to the kernel.
    pub fn refresh_mode(&self) -> RefreshMode {
        self.refresh
    }

    /// Overrides the refresh mode chosen from the kernel version.
    pub fn set_refresh_mode(&mut self, mode: RefreshMode) {
        self.refresh = mode;
    }

    /// The intervals palisade expects in a set (its in-memory elements),
    /// expired ones left out.
    pub fn expected(&self, set: SetName) -> Vec<Interval> {
        let now = now_ms();
        match set.family() {
            Family::V4 => self.v4.intervals(set.kind(), now),
            Family::V6 => self.v6.intervals(set.kind(), now),
        }
    }

    /// The intervals the kernel holds in a set, in address order.
    pub fn kernel_intervals(&mut self, set: SetName) -> Result<Vec<Interval>, EnforceError> {
        let mut raw: Vec<(u128, bool, Option<u64>, Option<String>)> = Vec::new();
        let mut attempt = 0;
        loop {
            raw.clear();
            let r = nft::dump_set_elems(
                &mut self.sock,
                family::INET,
                &self.config.table,
                set.as_str(),
                |e| {
                    let key = e.key.map_or(0, key_to_u128);
                    raw.push((
                        key,
                        e.is_interval_end(),
                        e.expires_ms,
                        e.comment.map(str::to_string),
                    ));
                },
            );
            match r {
                Ok(()) => break,
                Err(e) if e.errno() == libc::EINTR && attempt < 3 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
        // End elements sort before start elements with the same key: that
        // key closes one interval and opens the next.
        raw.sort_by_key(|(k, end, ..)| (*k, !*end));
        if !set.is_interval() {
            // A dump taken while the kernel resizes a hash set can send an
            // element twice (and miss another): a host is listed once.
            raw.dedup_by_key(|(k, ..)| *k);
        }
        let max = match set.addr_type() {
            AddrType::V4 => u128::from(u32::MAX),
            AddrType::V6 => u128::MAX,
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let (start, is_end, expires, comment) = raw[i].clone();
            i += 1;
            if is_end {
                continue; // a stray end element (e.g. nft's leading one)
            }
            let last = if !set.is_interval() {
                start
            } else {
                match raw.get(i) {
                    Some((k, true, ..)) => {
                        i += 1;
                        k - 1
                    }
                    _ => max,
                }
            };
            out.push(Interval {
                first: addr_of(set, start),
                last: addr_of(set, last),
                expires_in: expires.map(Duration::from_millis),
                comment,
            });
        }
        Ok(out)
    }

    fn clear(&mut self) {
        self.v4 = Sets::default();
        self.v6 = Sets::default();
    }

    fn maybe_prune(&mut self, now: u64) {
        if now < self.next_prune {
            return;
        }
        self.next_prune = now + PRUNE_EVERY_MS;
        let before = now.saturating_sub(PRUNE_GRACE_MS);
        let mut plan = self.xdp.is_active().then(Plan::default);
        self.v4.prune(now, before, &mut plan);
        self.v6.prune(now, before, &mut plan);
        if let Some(plan) = &mut plan {
            self.xdp.both(plan);
        }
    }

    /// Sends the whole table in one transaction.
    fn reload(&mut self, now: u64) -> Result<(), NetlinkError> {
        let elements = self.v4.elements_len() + self.v6.elements_len();
        let mut b = Batch::with_capacity(4096 + elements * 56);
        let table = self.config.table.as_str();
        let upgrading = layout::holds_old_layout(&mut self.sock, table);
        // The XDP drop drops nothing from here until the table is in.
        self.xdp
            .start_load([self.v4.block.len(), self.v6.block.len()]);
        // Create it so that the delete cannot fail, delete it with whatever
        // is in it (stale elements, foreign rules), and build it anew.
        nft::new_table(&mut b, family::INET, table);
        nft::del_table(&mut b, family::INET, table);
        nft::new_table(&mut b, family::INET, table);
        let mut specs = Vec::with_capacity(SetName::ALL.len());
        for set in SetName::ALL {
            let spec = SetSpec {
                name: set.as_str(),
                id: b.new_set_id(),
                key: set.addr_type(),
                flags: set.flags(),
                gc_interval_ms: Some(GC_INTERVAL_MS),
            };
            nft::new_set(&mut b, family::INET, table, &spec);
            specs.push((set, spec));
        }
        let rules: Vec<(Verdict, SetSpec<'_>)> = specs
            .iter()
            .map(|(set, spec)| (set.verdict(), *spec))
            .collect();
        layout::add_chains(&mut b, &self.sock, &self.config, &rules, upgrading);
        for (set, spec) in &specs {
            let mut w = ElemWriter::new(
                &mut b,
                ElemOp::Add,
                family::INET,
                table,
                spec.name,
                Some(spec.id),
            );
            match set.family() {
                Family::V4 => self.v4.write(set.kind(), &mut w, now),
                Family::V6 => self.v6.write(set.kind(), &mut w, now),
            }
            w.finish();
        }
        let mut result = b.send(&mut self.sock);
        if upgrading && result.is_ok() {
            result = layout::finish_upgrade(&mut self.sock, &self.config.table);
        }
        self.in_sync = result.is_ok();
        if result.is_ok() {
            self.fill_xdp(now);
        }
        result
    }

    /// Puts every live element into the XDP drop's (empty) maps, allows
    /// first.
    fn fill_xdp(&mut self, now: u64) {
        if !self.xdp.is_active() {
            return;
        }
        // Allows first (the plan's first phase), then banned networks and
        // hosts; the hosts, nearly all of it, streamed in batches.
        let mut plan = Plan::default();
        self.v4.plan_intervals(now, &mut plan);
        self.v6.plan_intervals(now, &mut plan);
        self.xdp.both(&mut plan);
        let live = move |(k, v): (u32, Val)| v.alive(now).then(|| (k.to_u128(), v.expiry));
        self.xdp
            .fill_hosts(32, self.v4.block.iter().filter_map(live), now);
        let live = move |(k, v): (u128, Val)| v.alive(now).then_some((k, v.expiry));
        self.xdp
            .fill_hosts(128, self.v6.block.iter().filter_map(live), now);
    }

    fn encode_diffs(&self, d4: &Diffs<u32>, d6: &Diffs<u128>, now: u64) -> Batch {
        let mut b = Batch::new();
        for set in SetName::ALL {
            let kind = set.kind();
            match set.family() {
                Family::V4 => self.encode_diff(&mut b, set, d4.of(kind), &self.v4, now),
                Family::V6 => self.encode_diff(&mut b, set, d6.of(kind), &self.v6, now),
            }
        }
        b
    }

    /// Adds the operations of one set's diff to `b`.
    fn encode_diff<K: Key>(
        &self,
        b: &mut Batch,
        set: SetName,
        diff: &Diff<K>,
        sets: &Sets<K>,
        now: u64,
    ) {
        if diff.is_empty() {
            return;
        }
        let table = self.config.table.as_str();
        let kind = set.kind();
        // An element that expired (by our clock) is left to the kernel,
        // never deleted: the kernel's expiry is never earlier than ours, and
        // deleting the elements of an interval whose start already expired
        // is unsafe. The rbtree backend skips an expired start element on
        // delete but removes its end element, and the garbage collector then
        // pairs the orphaned start with the end element of another interval
        // (seen on 6.18). The kernel removes expired elements by itself, and
        // drops expired elements that overlap a new one.
        let expired = |v: Val| !v.alive(now);
        // An element's timeout can be updated in place only if it has one
        // and keeps one; the kernel keeps the old comment on such an update,
        // so a new comment needs a replacement too.
        let in_place = |before: Val, after: Val| {
            self.refresh == RefreshMode::Update
                && before.expiry != FOREVER
                && after.expiry != FOREVER
                && before.comment == after.comment
        };
        let push = |w: &mut ElemWriter<'_, '_>, s: K, e: K, t: Option<u64>, c: Option<&str>| {
            let (mut a, mut z) = ([0u8; 16], [0u8; 16]);
            let n = s.write_be(&mut a);
            if set.is_interval() {
                e.write_be(&mut z);
                w.push_interval(&a[..n], &z[..n], t, c);
            } else {
                w.push(&a[..n], 0, t, c);
            }
        };
        {
            let mut w = ElemWriter::new(b, self.delete_op, family::INET, table, set.as_str(), None);
            for (s, e, op) in diff.ops() {
                let delete = match op {
                    Op::Delete { before } => !expired(before),
                    Op::Update { before, after } => !expired(before) && !in_place(before, after),
                    Op::Add(_) => false,
                };
                if delete {
                    push(&mut w, s, e, None, None);
                }
            }
        }
        // The expiration goes with the timeout so that an in-place update
        // always moves the expiry (see `ElemWriter::expiring`).
        let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, table, set.as_str(), None);
        if self.refresh == RefreshMode::Update {
            w = w.expiring();
        }
        for (s, e, op) in diff.ops() {
            let val = match op {
                Op::Add(v) => v,
                Op::Update { after, .. } => after,
                Op::Delete { .. } => continue,
            };
            if !expired(val) {
                push(
                    &mut w,
                    s,
                    e,
                    timeout(val.expiry, now),
                    sets.comment(kind, val.comment),
                );
            }
        }
    }

    fn count_kernel(&mut self, set: SetName) -> Option<usize> {
        for _ in 0..3 {
            let mut n = 0;
            let r = nft::dump_set_elems(
                &mut self.sock,
                family::INET,
                &self.config.table,
                set.as_str(),
                |e| {
                    if !e.is_interval_end() {
                        n += 1;
                    }
                },
            );
            match r {
                Ok(()) => return Some(n),
                Err(e) if e.is_not_found() => return Some(0),
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

impl Enforcer for NftablesEnforcer {
    fn name(&self) -> &str {
        "nftables"
    }

    fn replace_all(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
    ) -> Result<(), EnforceError> {
        let now = now_ms();
        // The old state goes first: memory holds the desired state, and the
        // peak stays at one copy of it plus the batch.
        self.clear();
        let mut v4 = SetsBuilder::<u32>::new(now);
        let mut v6 = SetsBuilder::<u128>::new(now);
        for e in entries {
            let kind = SetName::of(e.action, &e.net).kind();
            match e.net.family() {
                Family::V4 => v4.push(kind, e),
                Family::V6 => v6.push(kind, e),
            }
        }
        self.v4 = v4.finish(now);
        self.v6 = v6.finish(now);
        self.next_prune = now + PRUNE_EVERY_MS;
        let result = self.reload(now_ms());
        release_free_memory();
        Ok(result?)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let now = now_ms();
        self.maybe_prune(now);
        let mut d4 = Diffs::<u32>::default();
        let mut d6 = Diffs::<u128>::default();
        for c in changes {
            let (action, net) = match c {
                Change::Put(e) => (e.action, &e.net),
                Change::Remove { action, net } => (*action, net),
            };
            let kind = SetName::of(action, net).kind();
            match c {
                Change::Put(e) => {
                    let expiry = e.expires.map_or(FOREVER, Timestamp::as_millis);
                    if expiry <= now {
                        continue;
                    }
                    let comment = e.comment.as_deref();
                    match net.family() {
                        Family::V4 => self.v4.put(kind, net, expiry, comment, now, &mut d4),
                        Family::V6 => self.v6.put(kind, net, expiry, comment, now, &mut d6),
                    }
                }
                Change::Remove { .. } => match net.family() {
                    Family::V4 => self.v4.remove(kind, net, now, &mut d4),
                    Family::V6 => self.v6.remove(kind, net, now, &mut d6),
                },
            }
        }
        if !self.in_sync {
            return Ok(self.reload(now)?);
        }
        if d4.is_empty() && d6.is_empty() {
            return Ok(());
        }
        let batch = self.encode_diffs(&d4, &d6, now);
        let mut plan = Plan::default();
        if self.xdp.is_active() {
            d4.plan(now, &mut plan);
            d6.plan(now, &mut plan);
            self.xdp.first(&mut plan);
        }
        match batch.send(&mut self.sock) {
            Ok(()) => {
                self.xdp.then(&mut plan);
                if self.xdp.wants_room() {
                    self.xdp
                        .start_load([self.v4.block.len(), self.v6.block.len()]);
                    self.fill_xdp(now);
                }
                Ok(())
            }
            Err(error) => match self.reload(now_ms()) {
                Ok(()) => Err(EnforceError::Recovered { error }),
                Err(reload) => Err(EnforceError::Unrecovered { error, reload }),
            },
        }
    }

    fn remove(&mut self) -> Result<(), EnforceError> {
        // The drop goes first: it must never drop what the table does not.
        self.xdp.remove();
        let mut b = Batch::new();
        nft::new_table(&mut b, family::INET, &self.config.table);
        nft::del_table(&mut b, family::INET, &self.config.table);
        b.send(&mut self.sock)?;
        self.clear();
        self.in_sync = false;
        Ok(())
    }

    /// Compares every set's elements (their ranges) with the kernel's; a
    /// repair reloads the whole table in one transaction, which also puts
    /// back a table or chains deleted behind palisade's back.
    fn drift(&mut self, repair: bool) -> Result<Drift, EnforceError> {
        let mut drift = Drift::default();
        let now = now_ms();
        for set in SetName::ALL {
            let name = format!("inet {} {}", self.config.table, set.as_str());
            if set.kind() == Kind::Block {
                // Host sets hold nearly every ban (a million, maybe): the
                // dump is checked against memory as it streams.
                let table = self.config.table.clone();
                let found = match set.family() {
                    Family::V4 => host_drift(&mut self.sock, &table, set, &self.v4.block, now),
                    Family::V6 => host_drift(&mut self.sock, &table, set, &self.v6.block, now),
                };
                if let Some(d) = found? {
                    drift.objects.push(ObjectDrift { name, ..d });
                }
                continue;
            }
            let want = self.expected(set);
            let have = match self.kernel_intervals(set) {
                Ok(v) => v,
                Err(EnforceError::Kernel(e)) if e.is_not_found() => Vec::new(),
                Err(e) => return Err(e),
            };
            if let Some(d) = compare_elements(name, &want, &have) {
                drift.objects.push(d);
            }
        }
        if self.xdp.is_active() {
            drift.objects.extend(self.v4.xdp_drift(&self.xdp, now)?);
            drift.objects.extend(self.v6.xdp_drift(&self.xdp, now)?);
        }
        drift.objects.extend(self.xdp.detached());
        if repair && !drift.is_empty() {
            self.reload(now_ms())?;
        }
        Ok(drift)
    }

    fn status(&mut self, kernel: bool) -> Result<Status, EnforceError> {
        let now = now_ms();
        let mut objects = Vec::new();
        for set in SetName::ALL {
            let (entries, expected) = match set.family() {
                Family::V4 => self.v4.counts(set.kind(), now),
                Family::V6 => self.v6.counts(set.kind(), now),
            };
            objects.push(ObjectStatus {
                name: format!("inet {} {}", self.config.table, set.as_str()),
                entries,
                expected,
                in_kernel: if kernel { self.count_kernel(set) } else { None },
            });
        }
        Ok(Status {
            objects,
            in_sync: self.in_sync,
        })
    }
}

/// Dumps a set's elements (key, time left) into `each`, retrying when the
/// kernel interrupts the dump (the set changed meanwhile): `start` is called
/// before every attempt, so the caller can start over. A missing table or
/// set is an empty set.
fn dump_elems<S: FnMut(), E: FnMut(u128, Option<u64>)>(
    sock: &mut Socket,
    table: &str,
    set: SetName,
    mut start: S,
    mut each: E,
) -> Result<(), EnforceError> {
    let mut attempt = 0;
    loop {
        start();
        let r = nft::dump_set_elems(sock, family::INET, table, set.as_str(), |e| {
            if !e.is_interval_end() {
                each(e.key.map_or(0, key_to_u128), e.expires_ms);
            }
        });
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if e.errno() == libc::EINTR && attempt < 3 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The drift of a host set, compared as the kernel's dump streams (memory
/// stays flat whatever the set's size); the missing hosts are named from a
/// second dump, only when there are any.
fn host_drift<K: Key>(
    sock: &mut Socket,
    table: &str,
    set: SetName,
    hosts: &Hosts<K>,
    now: u64,
) -> Result<Option<ObjectDrift>, EnforceError> {
    let settle = DRIFT_SETTLE.as_millis() as u64;
    let settled = |v: Val| v.expiry == FOREVER || v.expiry > now + settle;
    let counts = std::cell::RefCell::new((0usize, 0usize, Vec::new()));
    dump_elems(
        sock,
        table,
        set,
        || *counts.borrow_mut() = (0, 0, Vec::new()),
        |key, expires| {
            let (matched, extra, examples) = &mut *counts.borrow_mut();
            match hosts.get(K::from_u128(key)) {
                Some(v) if v.alive(now) => *matched += usize::from(settled(v)),
                _ if expires.is_some_and(|t| t <= settle) => {}
                _ => {
                    *extra += 1;
                    if examples.len() < DRIFT_EXAMPLES {
                        examples.push(format!("extra {}", addr_of(set, key)));
                    }
                }
            }
        },
    )?;
    let (matched, extra, mut examples) = counts.into_inner();
    let expected = hosts
        .iter()
        .filter(|&(_, v)| v.alive(now) && settled(v))
        .count();
    let mut missing = expected.saturating_sub(matched);
    if missing == 0 && extra == 0 {
        return Ok(None);
    }
    if missing > 0 {
        // Looked at again: a dump can miss elements while the kernel
        // resizes the set's hash table (each part of a dump skips the
        // elements the earlier parts sent by count), so only what this
        // second dump lacks too is missing.
        let present = std::cell::RefCell::new(HashSet::new());
        dump_elems(
            sock,
            table,
            set,
            || present.borrow_mut().clear(),
            |key, _| {
                present.borrow_mut().insert(key);
            },
        )?;
        let present = present.into_inner();
        let absent: Vec<K> = hosts
            .iter()
            .filter(|&(k, v)| v.alive(now) && settled(v) && !present.contains(&k.to_u128()))
            .map(|(k, _)| k)
            .collect();
        missing = missing.min(absent.len());
        if missing == 0 && extra == 0 {
            return Ok(None);
        }
        let named = absent
            .iter()
            .take(DRIFT_EXAMPLES)
            .map(|&k| format!("missing {}", key_to_addr(k)));
        examples.splice(0..0, named);
        examples.truncate(DRIFT_EXAMPLES);
    }
    Ok(Some(ObjectDrift {
        name: String::new(),
        missing,
        extra,
        examples,
    }))
}

/// The drift of one set: ranges expected and not in the kernel, and ranges
/// in the kernel and not expected (`None` if they agree).
fn compare_elements(name: String, want: &[Interval], have: &[Interval]) -> Option<ObjectDrift> {
    let settled = |i: &&Interval| i.expires_in.is_none_or(|t| t > DRIFT_SETTLE);
    let range = |i: &Interval| (i.first, i.last);
    let show = |i: &Interval| {
        if i.first == i.last {
            i.first.to_string()
        } else {
            format!("{}-{}", i.first, i.last)
        }
    };
    let want_set: HashSet<(IpAddr, IpAddr)> = want.iter().map(range).collect();
    let have_set: HashSet<(IpAddr, IpAddr)> = have.iter().map(range).collect();
    let missing: Vec<&Interval> = want
        .iter()
        .filter(settled)
        .filter(|i| !have_set.contains(&range(i)))
        .collect();
    let extra: Vec<&Interval> = have
        .iter()
        .filter(settled)
        .filter(|i| !want_set.contains(&range(i)))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    let examples = missing
        .iter()
        .map(|i| format!("missing {}", show(i)))
        .chain(extra.iter().map(|i| format!("extra {}", show(i))))
        .take(DRIFT_EXAMPLES)
        .collect();
    Some(ObjectDrift {
        name,
        missing: missing.len(),
        extra: extra.len(),
        examples,
    })
}

fn timeout(expiry: u64, now: u64) -> Option<u64> {
    if expiry == FOREVER {
        None
    } else {
        Some(expiry.saturating_sub(now).clamp(1, MAX_TIMEOUT_MS))
    }
}

fn key_to_addr<K: Key>(k: K) -> IpAddr {
    if K::BITS == 32 {
        IpAddr::V4(Ipv4Addr::from(k.to_u128() as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.to_u128()))
    }
}

fn key_to_u128(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x))
}

fn addr_of(set: SetName, v: u128) -> IpAddr {
    match set.addr_type() {
        AddrType::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        AddrType::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// Hands memory freed by a large load (the sorted entry lists, the batch
/// buffer) back to the system, so the agent's resident size reflects what it
/// holds rather than its peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_never_zero_and_bounded() {
        assert_eq!(timeout(FOREVER, 5), None);
        assert_eq!(timeout(1005, 1000), Some(5));
        assert_eq!(timeout(1000, 1000), Some(1));
        assert_eq!(timeout(u64::MAX - 1, 0), Some(MAX_TIMEOUT_MS));
    }
}

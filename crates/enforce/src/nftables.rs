//! The nftables enforcer: palisade's own table, driven over raw netlink.
//!
//! Kernel layout (table name and priority configurable):
//!
//! ```text
//! table inet palisade {
//!   set allow4 { type ipv4_addr; flags interval,timeout; }
//!   set allow6 { type ipv6_addr; flags interval,timeout; }
//!   set block4 { type ipv4_addr; flags interval,timeout; }
//!   set block6 { type ipv6_addr; flags interval,timeout; }
//!   chain input   { type filter hook input   priority -10; policy accept;
//!                   ip saddr @allow4 accept; ip6 saddr @allow6 accept;
//!                   ip saddr @block4 drop;   ip6 saddr @block6 drop; }
//!   chain forward { type filter hook forward priority -10; policy accept; (same) }
//! }
//! ```
//!
//! Each set is mirrored in memory by a partition (see `partition.rs`):
//! overlapping entries become disjoint pieces carrying the latest expiry
//! of the entries covering them, so the kernel expires exactly what should
//! expire even while palisade is stopped.
//!
//! - [`Nftables::replace_all`](Enforcer::replace_all) rebuilds the table in
//!   one transaction (`NEWTABLE`, `DELTABLE`, `NEWTABLE`, sets, chains,
//!   rules, elements): packets see the old table or the new one, never an
//!   empty one, and nothing stale survives.
//! - [`Nftables::apply`](Enforcer::apply) sends only the pieces that
//!   changed, in one transaction: `DESTROYSETELEM` for pieces that went away
//!   (missing elements are no error), `NEWSETELEM` for new ones, and for a
//!   refreshed piece either `NEWSETELEM` on the existing element (kernel
//!   6.10+ updates its timeout) or `DESTROYSETELEM` + `NEWSETELEM` (older
//!   kernels, changes to or from "forever", new comments). The mode is
//!   chosen from the kernel version (`uname`). Pieces that already expired
//!   are left to the kernel, never deleted (see `encode_diff`). If a
//!   transaction fails, the whole table is reloaded from memory and the
//!   error reported.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use palisade_model::{Action, Family, Net, Timestamp};
use palisade_netlink::Socket;
use palisade_netlink::nft::{
    self, AddrType, Batch, ChainSpec, ElemOp, ElemWriter, Hook, SetSpec, Verdict, family, set_flags,
};

use crate::partition::{Builder, Diff, FOREVER, Key, Op, Partition, Val};
use crate::{Change, EnforceError, Enforcer, Entry, NetlinkError, ObjectStatus, Status};

/// Longest timeout given to the kernel (about 100 years); the kernel
/// rejects timeouts that overflow its clock with ERANGE.
const MAX_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// How often expired entries are dropped from memory.
const PRUNE_EVERY_MS: u64 = 60_000;
/// Pieces are forgotten this long after their expiry, so that a piece the
/// kernel expires a little late is still deleted explicitly if replaced.
const PRUNE_GRACE_MS: u64 = 10_000;

/// Most connection attempts per second reported to the probe NFLOG group.
const PROBE_LOG_PER_SECOND: u32 = 200;

/// Where the enforcer puts its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftConfig {
    /// Name of the `inet` table palisade owns (default `palisade`).
    pub table: String,
    /// Priority of the input and forward chains (default -10, before the
    /// usual `filter` chains at 0).
    pub priority: i32,
    /// When set, the input chain also reports connection attempts (TCP SYN,
    /// new UDP flows; not from loopback, not from allowed or banned
    /// sources) to this NFLOG group, for port-probe detection.
    pub probe_log_group: Option<u16>,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "palisade".to_string(),
            priority: -10,
            probe_log_group: None,
        }
    }
}

/// How a piece whose expiry changed is refreshed in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// `NEWSETELEM` on the existing element updates its timeout (6.10+).
    Update,
    /// `DESTROYSETELEM` then `NEWSETELEM`, in the same transaction.
    Replace,
}

/// One of the four sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetName {
    Allow4,
    Allow6,
    Block4,
    Block6,
}

impl SetName {
    pub const ALL: [SetName; 4] = [
        SetName::Allow4,
        SetName::Allow6,
        SetName::Block4,
        SetName::Block6,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SetName::Allow4 => "allow4",
            SetName::Allow6 => "allow6",
            SetName::Block4 => "block4",
            SetName::Block6 => "block6",
        }
    }

    /// The set holding entries of this action and family.
    pub fn of(action: Action, family: Family) -> SetName {
        match (action, family) {
            (Action::Allow, Family::V4) => SetName::Allow4,
            (Action::Allow, Family::V6) => SetName::Allow6,
            (Action::Ban, Family::V4) => SetName::Block4,
            (Action::Ban, Family::V6) => SetName::Block6,
        }
    }

    fn addr_type(self) -> AddrType {
        match self {
            SetName::Allow4 | SetName::Block4 => AddrType::V4,
            SetName::Allow6 | SetName::Block6 => AddrType::V6,
        }
    }
}

/// An interval of a set, as the kernel or the enforcer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub first: IpAddr,
    pub last: IpAddr,
    /// Time left; `None` for elements without a timeout.
    pub expires_in: Option<Duration>,
    pub comment: Option<String>,
}

/// The nftables enforcer (see the module docs).
#[derive(Debug)]
pub struct Nftables {
    config: NftConfig,
    sock: Socket,
    allow4: Partition<u32>,
    allow6: Partition<u128>,
    block4: Partition<u32>,
    block6: Partition<u128>,
    refresh: RefreshMode,
    delete_op: ElemOp,
    /// False until a full load succeeded, and after a failure that could
    /// not be repaired: the next change then reloads everything.
    in_sync: bool,
    next_prune: u64,
}

impl Nftables {
    /// An enforcer for the network namespace of the calling thread. Nothing
    /// is sent to the kernel until the first `replace_all` or `apply`.
    pub fn new(config: NftConfig) -> Result<Nftables, EnforceError> {
        let sock = Socket::netfilter()?;
        let version = kernel_version();
        // NFT_MSG_DESTROYSETELEM exists since 6.3, element timeout updates
        // since 6.10. Unknown versions are assumed recent.
        let at_least = |maj: u32, min: u32| version.is_none_or(|v| v >= (maj, min));
        Ok(Nftables {
            config,
            sock,
            allow4: Partition::default(),
            allow6: Partition::default(),
            block4: Partition::default(),
            block6: Partition::default(),
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
        })
    }

    pub fn config(&self) -> &NftConfig {
        &self.config
    }

    pub fn refresh_mode(&self) -> RefreshMode {
        self.refresh
    }

    /// Overrides the refresh mode chosen from the kernel version.
    pub fn set_refresh_mode(&mut self, mode: RefreshMode) {
        self.refresh = mode;
    }

    /// The intervals palisade expects in a set (its in-memory pieces),
    /// expired ones left out.
    pub fn expected(&self, set: SetName) -> Vec<Interval> {
        let now = now_ms();
        match set {
            SetName::Allow4 => intervals_of(&self.allow4, now),
            SetName::Allow6 => intervals_of(&self.allow6, now),
            SetName::Block4 => intervals_of(&self.block4, now),
            SetName::Block6 => intervals_of(&self.block6, now),
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
            let last = match raw.get(i) {
                Some((k, true, ..)) => {
                    i += 1;
                    k - 1
                }
                _ => max,
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
        self.allow4 = Partition::default();
        self.allow6 = Partition::default();
        self.block4 = Partition::default();
        self.block6 = Partition::default();
    }

    fn maybe_prune(&mut self, now: u64) {
        if now < self.next_prune {
            return;
        }
        self.next_prune = now + PRUNE_EVERY_MS;
        let before = now.saturating_sub(PRUNE_GRACE_MS);
        self.allow4.prune(now, before);
        self.allow6.prune(now, before);
        self.block4.prune(now, before);
        self.block6.prune(now, before);
    }

    /// Sends the whole table in one transaction.
    fn reload(&mut self, now: u64) -> Result<(), NetlinkError> {
        let pieces = self.allow4.pieces_len()
            + self.allow6.pieces_len()
            + self.block4.pieces_len()
            + self.block6.pieces_len();
        let mut b = Batch::with_capacity(4096 + pieces * 56);
        let table = self.config.table.as_str();
        // Create it so that the delete cannot fail, delete it with whatever
        // is in it (stale elements, foreign rules), and build it anew.
        nft::new_table(&mut b, family::INET, table);
        nft::del_table(&mut b, family::INET, table);
        nft::new_table(&mut b, family::INET, table);
        let mut specs = Vec::with_capacity(4);
        for set in SetName::ALL {
            let spec = SetSpec {
                name: set.as_str(),
                id: b.new_set_id(),
                key: set.addr_type(),
                flags: set_flags::INTERVAL | set_flags::TIMEOUT,
            };
            nft::new_set(&mut b, family::INET, table, &spec);
            specs.push(spec);
        }
        for (chain, hook) in [("input", Hook::Input), ("forward", Hook::Forward)] {
            nft::new_chain(
                &mut b,
                family::INET,
                table,
                &ChainSpec {
                    name: chain,
                    hook,
                    priority: self.config.priority,
                    policy: Verdict::Accept,
                },
            );
            for spec in &specs {
                let verdict = if spec.name.starts_with("allow") {
                    Verdict::Accept
                } else {
                    Verdict::Drop
                };
                nft::new_saddr_rule(&mut b, table, chain, spec, verdict);
            }
            if let (Hook::Input, Some(group)) = (hook, self.config.probe_log_group) {
                nft::new_probe_log_rules(&mut b, table, chain, group, PROBE_LOG_PER_SECOND);
            }
        }
        for spec in &specs {
            let mut w = ElemWriter::new(
                &mut b,
                ElemOp::Add,
                family::INET,
                table,
                spec.name,
                Some(spec.id),
            );
            match spec.name {
                "allow4" => write_pieces(&mut w, &self.allow4, now),
                "allow6" => write_pieces(&mut w, &self.allow6, now),
                "block4" => write_pieces(&mut w, &self.block4, now),
                _ => write_pieces(&mut w, &self.block6, now),
            }
            w.finish();
        }
        let result = b.send(&mut self.sock);
        self.in_sync = result.is_ok();
        result
    }

    fn put(&mut self, e: &Entry, now: u64, diffs: &mut Diffs) {
        let expiry = e.expires.map_or(FOREVER, Timestamp::as_millis);
        if expiry <= now {
            return;
        }
        let (start, _) = e.net.range();
        let prefix = e.net.prefix();
        let c = e.comment.as_deref();
        match SetName::of(e.action, e.net.family()) {
            SetName::Allow4 => {
                self.allow4
                    .put(start as u32, prefix, expiry, c, now, &mut diffs.allow4)
            }
            SetName::Allow6 => self
                .allow6
                .put(start, prefix, expiry, c, now, &mut diffs.allow6),
            SetName::Block4 => {
                self.block4
                    .put(start as u32, prefix, expiry, c, now, &mut diffs.block4)
            }
            SetName::Block6 => self
                .block6
                .put(start, prefix, expiry, c, now, &mut diffs.block6),
        }
    }

    fn remove_entry(&mut self, action: Action, net: &Net, now: u64, diffs: &mut Diffs) {
        let (start, _) = net.range();
        let prefix = net.prefix();
        match SetName::of(action, net.family()) {
            SetName::Allow4 => {
                self.allow4
                    .remove(start as u32, prefix, now, &mut diffs.allow4);
            }
            SetName::Allow6 => {
                self.allow6.remove(start, prefix, now, &mut diffs.allow6);
            }
            SetName::Block4 => {
                self.block4
                    .remove(start as u32, prefix, now, &mut diffs.block4);
            }
            SetName::Block6 => {
                self.block6.remove(start, prefix, now, &mut diffs.block6);
            }
        }
    }

    fn encode_diffs(&self, diffs: &Diffs, now: u64) -> Batch {
        let mut b = Batch::new();
        let table = self.config.table.as_str();
        encode_diff(
            &mut b,
            table,
            SetName::Allow4,
            &diffs.allow4,
            &self.allow4,
            self.refresh,
            self.delete_op,
            now,
        );
        encode_diff(
            &mut b,
            table,
            SetName::Allow6,
            &diffs.allow6,
            &self.allow6,
            self.refresh,
            self.delete_op,
            now,
        );
        encode_diff(
            &mut b,
            table,
            SetName::Block4,
            &diffs.block4,
            &self.block4,
            self.refresh,
            self.delete_op,
            now,
        );
        encode_diff(
            &mut b,
            table,
            SetName::Block6,
            &diffs.block6,
            &self.block6,
            self.refresh,
            self.delete_op,
            now,
        );
        b
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

#[derive(Default)]
struct Diffs {
    allow4: Diff<u32>,
    allow6: Diff<u128>,
    block4: Diff<u32>,
    block6: Diff<u128>,
}

impl Diffs {
    fn is_empty(&self) -> bool {
        self.allow4.is_empty()
            && self.allow6.is_empty()
            && self.block4.is_empty()
            && self.block6.is_empty()
    }
}

impl Enforcer for Nftables {
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
        let mut allow4 = Builder::<u32>::new(now);
        let mut allow6 = Builder::<u128>::new(now);
        let mut block4 = Builder::<u32>::new(now);
        let mut block6 = Builder::<u128>::new(now);
        for e in entries {
            let expiry = e.expires.map_or(FOREVER, Timestamp::as_millis);
            let (start, _) = e.net.range();
            let prefix = e.net.prefix();
            let c = e.comment.as_deref();
            match SetName::of(e.action, e.net.family()) {
                SetName::Allow4 => allow4.push(start as u32, prefix, expiry, c),
                SetName::Allow6 => allow6.push(start, prefix, expiry, c),
                SetName::Block4 => block4.push(start as u32, prefix, expiry, c),
                SetName::Block6 => block6.push(start, prefix, expiry, c),
            }
        }
        self.allow4 = allow4.finish();
        self.allow6 = allow6.finish();
        self.block4 = block4.finish();
        self.block6 = block6.finish();
        self.next_prune = now + PRUNE_EVERY_MS;
        let result = self.reload(now_ms());
        release_free_memory();
        Ok(result?)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let now = now_ms();
        self.maybe_prune(now);
        let mut diffs = Diffs::default();
        for c in changes {
            match c {
                Change::Put(e) => self.put(e, now, &mut diffs),
                Change::Remove { action, net } => self.remove_entry(*action, net, now, &mut diffs),
            }
        }
        if !self.in_sync {
            return Ok(self.reload(now)?);
        }
        if diffs.is_empty() {
            return Ok(());
        }
        let batch = self.encode_diffs(&diffs, now);
        match batch.send(&mut self.sock) {
            Ok(()) => Ok(()),
            Err(error) => match self.reload(now_ms()) {
                Ok(()) => Err(EnforceError::Recovered { error }),
                Err(reload) => Err(EnforceError::Unrecovered { error, reload }),
            },
        }
    }

    fn remove(&mut self) -> Result<(), EnforceError> {
        let mut b = Batch::new();
        nft::new_table(&mut b, family::INET, &self.config.table);
        nft::del_table(&mut b, family::INET, &self.config.table);
        b.send(&mut self.sock)?;
        self.clear();
        self.in_sync = false;
        Ok(())
    }

    fn status(&mut self) -> Result<Status, EnforceError> {
        let now = now_ms();
        let mut objects = Vec::new();
        for set in SetName::ALL {
            let (entries, expected) = match set {
                SetName::Allow4 => counts(&self.allow4, now),
                SetName::Allow6 => counts(&self.allow6, now),
                SetName::Block4 => counts(&self.block4, now),
                SetName::Block6 => counts(&self.block6, now),
            };
            objects.push(ObjectStatus {
                name: format!("inet {} {}", self.config.table, set.as_str()),
                entries,
                expected,
                in_kernel: self.count_kernel(set),
            });
        }
        Ok(Status {
            objects,
            in_sync: self.in_sync,
        })
    }
}

fn counts<K: Key>(p: &Partition<K>, now: u64) -> (usize, usize) {
    let live = p.pieces().filter(|(_, _, v)| v.expiry > now).count();
    (p.len(), live)
}

fn timeout(expiry: u64, now: u64) -> Option<u64> {
    if expiry == FOREVER {
        None
    } else {
        Some(expiry.saturating_sub(now).clamp(1, MAX_TIMEOUT_MS))
    }
}

fn write_pieces<K: Key>(w: &mut ElemWriter<'_, '_>, p: &Partition<K>, now: u64) {
    let (mut a, mut z) = ([0u8; 16], [0u8; 16]);
    for (s, e, v) in p.pieces() {
        if v.expiry <= now {
            continue;
        }
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

#[allow(clippy::too_many_arguments)]
fn encode_diff<K: Key>(
    b: &mut Batch,
    table: &str,
    set: SetName,
    diff: &Diff<K>,
    p: &Partition<K>,
    refresh: RefreshMode,
    delete_op: ElemOp,
    now: u64,
) {
    if diff.is_empty() {
        return;
    }
    // A piece that expired (by our clock) is left to the kernel, never
    // deleted: the kernel's expiry is never earlier than ours, and deleting
    // the elements of an interval whose start already expired is unsafe.
    // The rbtree backend skips an expired start element on delete but
    // removes its end element, and the garbage collector then pairs the
    // orphaned start with the end element of another interval (seen on
    // 6.18). The kernel removes expired intervals whole by itself, and drops
    // expired elements that overlap a new one.
    let expired = |v: Val| v.expiry <= now;
    // An element's timeout can be updated in place only if it has one and
    // keeps one; the kernel keeps the old comment on such an update, so a
    // new comment needs a replacement too.
    let in_place = |before: Val, after: Val| {
        refresh == RefreshMode::Update
            && before.expiry != FOREVER
            && after.expiry != FOREVER
            && before.comment == after.comment
    };
    let (mut a, mut z) = ([0u8; 16], [0u8; 16]);
    {
        let mut w = ElemWriter::new(b, delete_op, family::INET, table, set.as_str(), None);
        for (s, e, op) in diff.ops() {
            let delete = match op {
                Op::Delete { before } => !expired(before),
                Op::Update { before, after } => !expired(before) && !in_place(before, after),
                Op::Add(_) => false,
            };
            if delete {
                let n = s.write_be(&mut a);
                e.write_be(&mut z);
                w.push_interval(&a[..n], &z[..n], None, None);
            }
        }
    }
    let mut w = ElemWriter::new(b, ElemOp::Add, family::INET, table, set.as_str(), None);
    for (s, e, op) in diff.ops() {
        let val = match op {
            Op::Add(v) => v,
            Op::Update { after, .. } => after,
            Op::Delete { .. } => continue,
        };
        if expired(val) {
            continue;
        }
        let n = s.write_be(&mut a);
        e.write_be(&mut z);
        w.push_interval(
            &a[..n],
            &z[..n],
            timeout(val.expiry, now),
            p.comment(val.comment),
        );
    }
}

fn intervals_of<K: Key>(p: &Partition<K>, now: u64) -> Vec<Interval> {
    p.pieces()
        .filter(|(_, _, v)| v.expiry > now)
        .map(|(s, e, v)| Interval {
            first: key_to_addr::<K>(s),
            last: key_to_addr::<K>(e),
            expires_in: (v.expiry != FOREVER).then(|| Duration::from_millis(v.expiry - now)),
            comment: p.comment(v.comment).map(str::to_string),
        })
        .collect()
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

/// (major, minor) of the running kernel, from `uname`.
pub fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let release: String = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    parse_version(&release)
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_version("6.1"), Some((6, 1)));
        assert_eq!(parse_version("garbage"), None);
        assert!(kernel_version().is_some());
    }

    #[test]
    fn timeouts_are_never_zero_and_bounded() {
        assert_eq!(timeout(FOREVER, 5), None);
        assert_eq!(timeout(1005, 1000), Some(5));
        assert_eq!(timeout(1000, 1000), Some(1));
        assert_eq!(timeout(u64::MAX - 1, 0), Some(MAX_TIMEOUT_MS));
    }
}

//! The nftables enforcer's XDP drop (`xdp_devices`): a copy of its sets
//! that drops banned sources in the driver, before the kernel builds a
//! socket buffer (see `palisade-xdp`).
//!
//! The copy is kept a subset of the table, so that XDP never drops what
//! the table would let through:
//! - what makes the drop drop less (a ban removed or ending, an allow
//!   added) goes to the maps before the table's transaction;
//! - what makes it drop more (a ban added, an allow removed) goes after
//!   the transaction committed;
//! - a ban's deadline is [`MARGIN_MS`] earlier than the table's, and a ban
//!   with less than that left is not copied;
//! - a full load starts by switching to empty maps and fills them once the
//!   table is in (allows first);
//! - if a step that makes it drop less fails, the drop is detached: the
//!   table alone drops until the next full load attaches it again;
//! - the drift check reads the maps back ([`Mirror::drift`]): an element
//!   the table does not hold, or holds for less time, is drift, and the
//!   repair (a full load) puts the maps right.
//!
//! Interval elements (networks, merged or split by the partition) are put
//! into the tries as the prefixes that cover them exactly. Allows are kept
//! without a deadline (an allow the table expired only makes XDP pass
//! traffic the table then judges) until the partition forgets them.

use std::collections::HashSet;
use std::net::IpAddr;

use palisade_xdp::{FOREVER, List, Room, XdpDrop, XdpError, boot_ns};

use crate::enforcer::{DRIFT_EXAMPLES, DRIFT_SETTLE, ObjectDrift};

/// How much earlier than the table's a ban ends in the maps: the table's
/// timeout and the maps' deadline are computed a moment apart, from two
/// clocks.
pub const MARGIN_MS: u64 = 1_000;

/// Least room for banned hosts per family: what the maps start with.
const MIN_ROOM: u32 = 4096;
/// Most room for banned hosts per family (64M: 1 GiB of buckets); more
/// are dropped by the table only.
const MAX_ROOM: u32 = 1 << 26;

/// Room for twice `hosts` banned hosts: the buckets cost 16 bytes per
/// entry of room up front, so the room follows what the table holds, and
/// grows when a map fills (see [`Mirror::wants_room`]).
fn room_for(hosts: usize) -> u32 {
    let want = u32::try_from(hosts.saturating_mul(2)).unwrap_or(MAX_ROOM);
    want.max(MIN_ROOM).next_power_of_two().min(MAX_ROOM)
}

/// Banned hosts per batch call.
const HOST_BATCH: usize = 4096;

/// Banned hosts of one family on their way into the maps, put
/// [`HOST_BATCH`] at a time.
#[derive(Default)]
struct HostBatch {
    addrs: Vec<u8>,
    deadlines: Vec<u64>,
}

impl HostBatch {
    fn push(&mut self, d: &XdpDrop, host: &Prefix, deadline: u64) -> Result<(), XdpError> {
        self.addrs.extend_from_slice(host.addr());
        self.deadlines.push(deadline);
        if self.deadlines.len() == HOST_BATCH {
            self.flush(d)?;
        }
        Ok(())
    }

    fn flush(&mut self, d: &XdpDrop) -> Result<(), XdpError> {
        let result = d.put_hosts(&self.addrs, &self.deadlines);
        self.addrs.clear();
        self.deadlines.clear();
        result.map_err(|(_, e)| e)
    }
}

/// One prefix of an element: its address (network order) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Prefix {
    addr: [u8; 16],
    bytes: u8,
    len: u8,
}

impl Prefix {
    fn new(addr: u128, bits: u8, len: u8) -> Prefix {
        let mut a = [0u8; 16];
        let bytes = bits / 8;
        if bits == 32 {
            a[..4].copy_from_slice(&(addr as u32).to_be_bytes());
        } else {
            a = addr.to_be_bytes();
        }
        Prefix {
            addr: a,
            bytes,
            len,
        }
    }

    fn addr(&self) -> &[u8] {
        &self.addr[..usize::from(self.bytes)]
    }

    fn is_host(&self) -> bool {
        self.len == self.bytes * 8
    }
}

/// The prefixes that cover `[start, end]` exactly, in an address space of
/// `bits` bits, largest first from the start.
fn prefixes(mut start: u128, end: u128, bits: u8, mut each: impl FnMut(u128, u8)) {
    let mask = |host: u32| {
        if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        }
    };
    loop {
        let mut host = if start == 0 {
            u32::from(bits)
        } else {
            start.trailing_zeros().min(u32::from(bits))
        };
        while host > 0 && (start | mask(host)) > end {
            host -= 1;
        }
        let last = start | mask(host);
        each(start, bits - host as u8);
        if last >= end {
            return;
        }
        start = last + 1;
    }
}

/// What one batch of changes does to the maps, in its two phases.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Before the table's transaction: puts of allows, deletes of bans.
    first: Vec<(List, Prefix, Option<u64>)>,
    /// After it: puts of bans, deletes of allows.
    then: Vec<(List, Prefix, Option<u64>)>,
}

impl Plan {
    /// One element of the table changed: `[start, end]` in a space of
    /// `bits`, its expiry (ms since the epoch, `u64::MAX` forever) before
    /// and after (`None`: absent), with `now` in ms.
    pub fn change(
        &mut self,
        ban: bool,
        (start, end, bits): (u128, u128, u8),
        before: Option<u64>,
        after: Option<u64>,
        now: u64,
    ) {
        if ban {
            match after.and_then(|e| deadline(e, now)) {
                Some(d) => prefixes(start, end, bits, |a, l| {
                    self.then
                        .push((List::Ban, Prefix::new(a, bits, l), Some(d)))
                }),
                None if before.is_some() => prefixes(start, end, bits, |a, l| {
                    self.first.push((List::Ban, Prefix::new(a, bits, l), None))
                }),
                None => {}
            }
        } else if after.is_some() {
            prefixes(start, end, bits, |a, l| {
                self.first
                    .push((List::Allow, Prefix::new(a, bits, l), Some(FOREVER)))
            });
        } else if before.is_some() {
            prefixes(start, end, bits, |a, l| {
                self.then.push((List::Allow, Prefix::new(a, bits, l), None))
            });
        }
    }

    /// Leaves out the deletes of allow prefixes this plan puts again (an
    /// allow split or merged keeps some of its prefixes: deleting them
    /// after the put would open a gap).
    fn settle(&mut self) {
        let put: HashSet<Prefix> = self
            .first
            .iter()
            .filter(|(l, _, d)| *l == List::Allow && d.is_some())
            .map(|(_, p, _)| *p)
            .collect();
        if !put.is_empty() {
            self.then
                .retain(|(l, p, d)| !(*l == List::Allow && d.is_none() && put.contains(p)));
        }
    }
}

/// A ban's deadline in the maps for an expiry in ms since the epoch, or
/// `None` if less than [`MARGIN_MS`] is left.
fn deadline(expiry: u64, now: u64) -> Option<u64> {
    if expiry == u64::MAX {
        return Some(FOREVER);
    }
    let left = expiry.checked_sub(now)?.checked_sub(MARGIN_MS)?;
    (left > 0).then(|| boot_ns().saturating_add(left.saturating_mul(1_000_000)))
}

/// The drop, if configured and attached.
#[derive(Debug)]
pub(crate) struct Mirror {
    devices: Vec<String>,
    drop: Option<XdpDrop>,
    /// The network namespace the enforcer was made for: interfaces are
    /// looked up in the calling thread's, so they are attached only there.
    netns: Option<u64>,
    /// The maps' room for banned hosts.
    room: Room,
    /// A map of banned hosts was full.
    full: bool,
    /// Detached after a change failed: the drift check reports it, so
    /// that its repair (a full load) attaches again.
    failed: bool,
}

impl Mirror {
    /// A drop for `devices` in the calling thread's network namespace,
    /// attached at the first full load (so that building an enforcer, as
    /// `palisade agent --remove-rules` does, attaches nothing).
    pub fn new(devices: Vec<String>) -> Mirror {
        Mirror {
            devices,
            drop: None,
            netns: netns(),
            room: Room {
                hosts4: MIN_ROOM,
                hosts6: MIN_ROOM,
            },
            full: false,
            failed: false,
        }
    }

    /// Detaches the drop (the table is going away); a later full load
    /// attaches it again.
    pub fn remove(&mut self) {
        self.drop = None;
        self.failed = false;
    }

    pub fn is_active(&self) -> bool {
        self.drop.is_some()
    }

    /// Starts a full load of `hosts` banned hosts per family (and the
    /// rest): empty maps with room for them on every interface, attaching
    /// first if needed (again after a failure, or to interfaces that were
    /// missing) when this runs in the namespace the enforcer was made for.
    pub fn start_load(&mut self, hosts: [usize; 2]) {
        if self.devices.is_empty() {
            return;
        }
        self.full = false;
        self.room = Room {
            hosts4: room_for(hosts[0]),
            hosts6: room_for(hosts[1]),
        };
        let here = netns() == self.netns;
        match &mut self.drop {
            Some(d) => {
                if let Err(e) = d.reset(self.room) {
                    self.detach(&e);
                    return;
                }
                if here && d.devices().count() < self.devices.len() {
                    for e in d.attach_more(&self.devices) {
                        tracing::warn!("{e}");
                    }
                }
            }
            None if here => self.attach(),
            None => {}
        }
    }

    fn attach(&mut self) {
        self.failed = false;
        match XdpDrop::attach(&self.devices, self.room) {
            Ok((d, errors)) => {
                for e in errors {
                    tracing::warn!("{e}");
                }
                let on: Vec<&str> = d.devices().collect();
                if !on.is_empty() {
                    tracing::info!(devices = ?on, "XDP drop attached");
                }
                self.drop = (!on.is_empty()).then_some(d);
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.drop = None;
            }
        }
    }

    /// The first phase of `plan`, before the table's transaction.
    pub fn first(&mut self, plan: &mut Plan) {
        plan.settle();
        let steps = std::mem::take(&mut plan.first);
        if let Err(e) = self.run(&steps) {
            self.detach(&e);
        }
    }

    /// The second phase, once the table's transaction committed.
    pub fn then(&mut self, plan: &mut Plan) {
        let steps = std::mem::take(&mut plan.then);
        if let Err(e) = self.run(&steps) {
            self.not_put(e);
        }
    }

    /// A ban could not be put: the table drops it alone until the maps
    /// are loaded again (with more room, if that was the cause).
    fn not_put(&mut self, e: XdpError) {
        match e {
            XdpError::Full { map } => {
                tracing::info!(
                    map,
                    "an XDP drop map is full; loading the maps again with more room"
                );
                self.full = true;
            }
            e => tracing::warn!("{e}; the nftables table still drops it"),
        }
    }

    /// Puts the banned hosts of a full load into the (empty) maps, in
    /// batches as `hosts` streams them: each address (a number of `bits`
    /// bits) and its expiry in ms since the epoch.
    pub fn fill_hosts(&mut self, bits: u8, hosts: impl Iterator<Item = (u128, u64)>, now: u64) {
        let Some(d) = &self.drop else { return };
        let mut batch = HostBatch::default();
        let result = hosts
            .filter_map(|(a, expiry)| Some((Prefix::new(a, bits, bits), deadline(expiry, now)?)))
            .try_for_each(|(p, dl)| batch.push(d, &p, dl))
            .and_then(|()| batch.flush(d));
        if let Err(e) = result {
            self.not_put(e);
        }
    }

    /// True once after a map of banned hosts was full: the caller then
    /// loads the maps again ([`Mirror::start_load`]), with room for twice
    /// what the table holds.
    pub fn wants_room(&mut self) -> bool {
        std::mem::take(&mut self.full) && self.room.hosts4.max(self.room.hosts6) < MAX_ROOM
    }

    /// Both phases at once, for what no transaction separates (elements
    /// forgotten after they expired).
    pub fn both(&mut self, plan: &mut Plan) {
        self.first(plan);
        self.then(plan);
    }

    fn run(&self, steps: &[(List, Prefix, Option<u64>)]) -> Result<(), XdpError> {
        let Some(d) = &self.drop else { return Ok(()) };
        // Banned hosts, most of a full load, go in batches per family.
        let mut hosts: [HostBatch; 2] = Default::default();
        for (list, p, deadline) in steps {
            match (list, deadline) {
                (List::Ban, Some(dl)) if p.is_host() => {
                    hosts[usize::from(p.bytes == 16)].push(d, p, *dl)?
                }
                (_, Some(dl)) => d.put(*list, p.addr(), p.len, *dl)?,
                (_, None) => d.delete(*list, p.addr(), p.len)?,
            }
        }
        hosts.iter_mut().try_for_each(|h| h.flush(d))
    }

    fn detach(&mut self, e: &XdpError) {
        tracing::error!(
            "{e}; the XDP drop is detached until the next full load (the nftables table still drops banned traffic)"
        );
        self.drop = None;
        self.failed = true;
    }

    /// Drift of the drop itself: detached after a failure.
    pub fn detached(&self) -> Option<ObjectDrift> {
        self.failed.then(|| ObjectDrift {
            name: "xdp".to_string(),
            missing: self.devices.len(),
            extra: 0,
            examples: vec!["detached after an error".to_string()],
        })
    }
}

/// What the maps of one family should hold, for [`Mirror::drift`].
pub(crate) struct Expected<'a> {
    /// 32 or 128.
    pub bits: u8,
    /// The table's expiry (ms since the epoch) of a banned host it holds
    /// alive.
    pub host: &'a dyn Fn(u128) -> Option<u64>,
    /// The expiries of the banned hosts the table holds alive.
    pub hosts: &'a mut dyn Iterator<Item = u64>,
    /// The allows and banned networks, as [`Plan::change`]s from nothing.
    pub rest: Plan,
}

/// How the maps of one list differ from what they should hold.
#[derive(Default)]
struct Tally {
    missing: usize,
    extra: usize,
    examples: Vec<String>,
}

impl Tally {
    fn note(&mut self, what: &str, addr: IpAddr, len: u8, host: bool) {
        if self.examples.len() < DRIFT_EXAMPLES {
            self.examples.push(if host {
                format!("{what} {addr}")
            } else {
                format!("{what} {addr}/{len}")
            });
        }
    }

    fn into_drift(self, name: String) -> Option<ObjectDrift> {
        (self.missing + self.extra > 0).then_some(ObjectDrift {
            name,
            missing: self.missing,
            extra: self.extra,
            examples: self.examples,
        })
    }
}

fn addr_of(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
    }
}

fn to_u128(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b))
}

impl Mirror {
    /// Reads the maps of one family back and compares them with the table:
    /// an element the table does not hold, or holds for less time, is
    /// extra (the drop would drop what the table lets through); one it
    /// should hold and does not is missing. Elements this close to their
    /// end ([`DRIFT_SETTLE`], and the margin) are left out, as the kernel
    /// ends them on its own clock.
    pub fn drift(&self, e: Expected<'_>, now: u64) -> Result<Vec<ObjectDrift>, XdpError> {
        let Some(d) = &self.drop else {
            return Ok(Vec::new());
        };
        let settle_ms = DRIFT_SETTLE.as_millis() as u64;
        let boot = boot_ns();
        let settled_ns = boot + settle_ms * 1_000_000;
        let family = if e.bits == 32 { "4" } else { "6" };
        let v6 = e.bits == 128;

        // Banned hosts: streamed from the map, looked up in the table.
        let mut hosts = Tally::default();
        let mut nets_seen: HashSet<Prefix> = HashSet::new();
        let mut nets = Tally::default();
        let mut matched = 0usize;
        d.read(List::Ban, v6, |addr, len, dl| {
            if dl <= settled_ns {
                return;
            }
            if len != e.bits {
                nets_seen.insert(Prefix::new(to_u128(addr), e.bits, len));
                return;
            }
            match (e.host)(to_u128(addr)) {
                Some(exp)
                    if deadline(exp, now)
                        .is_some_and(|own| dl <= own.saturating_add(settle_ms * 1_000_000)) =>
                {
                    matched += usize::from(exp == u64::MAX || exp > now + MARGIN_MS + settle_ms);
                }
                _ => {
                    hosts.extra += 1;
                    hosts.note("extra", addr_of(addr), len, true);
                }
            }
        })?;
        let expected = e
            .hosts
            .filter(|&exp| exp == u64::MAX || exp > now + MARGIN_MS + settle_ms)
            .count();
        hosts.missing = expected.saturating_sub(matched);
        if hosts.missing > 0 && hosts.examples.len() < DRIFT_EXAMPLES {
            hosts.examples.push(format!("{} missing", hosts.missing));
        }

        // Allows and banned networks: few, compared as sets of prefixes.
        let mut want_nets = HashSet::new();
        let mut want_allows = HashSet::new();
        for (list, p, dl) in e.rest.first.iter().chain(&e.rest.then) {
            match list {
                List::Allow => {
                    want_allows.insert(*p);
                }
                List::Ban if dl.is_some_and(|dl| dl > settled_ns) => {
                    want_nets.insert(*p);
                }
                List::Ban => {}
            }
        }
        let mut allows_seen = HashSet::new();
        d.read(List::Allow, v6, |addr, len, _| {
            allows_seen.insert(Prefix::new(to_u128(addr), e.bits, len));
        })?;
        let mut allows = Tally::default();
        for (want, seen, tally) in [
            (&want_nets, &nets_seen, &mut nets),
            (&want_allows, &allows_seen, &mut allows),
        ] {
            for p in want.difference(seen) {
                tally.missing += 1;
                tally.note("missing", addr_of(p.addr()), p.len, false);
            }
            for p in seen.difference(want) {
                tally.extra += 1;
                tally.note("extra", addr_of(p.addr()), p.len, false);
            }
        }
        Ok([
            hosts.into_drift(format!("xdp host{family}")),
            nets.into_drift(format!("xdp net{family}")),
            allows.into_drift(format!("xdp allow{family}")),
        ]
        .into_iter()
        .flatten()
        .collect())
    }
}

/// The calling thread's network namespace (its inode).
fn netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(start: u128, end: u128, bits: u8) -> Vec<(u128, u8)> {
        let mut v = Vec::new();
        prefixes(start, end, bits, |a, l| v.push((a, l)));
        v
    }

    #[test]
    fn ranges_become_the_prefixes_that_cover_them_exactly() {
        assert_eq!(all(7, 7, 32), [(7, 32)]);
        assert_eq!(all(0, u128::from(u32::MAX), 32), [(0, 0)]);
        assert_eq!(all(0, u128::MAX, 128), [(0, 0)]);
        // 10.0.0.1 - 10.0.0.6: .1/32 .2/31 .4/31 .6/32
        let base = 0x0a00_0000;
        assert_eq!(
            all(base + 1, base + 6, 32),
            [
                (base + 1, 32),
                (base + 2, 31),
                (base + 4, 31),
                (base + 6, 32)
            ]
        );
        // The top of the space.
        assert_eq!(all(u128::MAX - 1, u128::MAX, 128), [(u128::MAX - 1, 127)]);
        assert_eq!(
            all(u128::from(u32::MAX) - 2, u128::from(u32::MAX), 32),
            [
                (u128::from(u32::MAX) - 2, 32),
                (u128::from(u32::MAX) - 1, 31)
            ]
        );
    }

    #[test]
    fn a_plan_drops_less_first_and_more_after_the_table() {
        let now = 1_000_000;
        let mut p = Plan::default();
        let host = |a: u128| (a, a, 32u8);
        p.change(true, host(1), None, Some(u64::MAX), now); // new ban
        p.change(true, host(2), Some(u64::MAX), None, now); // ban removed
        p.change(true, host(3), Some(u64::MAX), Some(now + 500), now); // ending within the margin
        // An allow next to an older one: the two merge, and the older
        // piece's prefix, put again, is not deleted.
        p.change(false, (8, 23, 32), None, Some(u64::MAX), now);
        p.change(false, (8, 15, 32), Some(u64::MAX), None, now);
        p.change(false, (16, 16, 32), Some(u64::MAX), None, now); // allow removed
        p.settle();
        let first: Vec<(List, u8, bool)> = p
            .first
            .iter()
            .map(|(l, x, d)| (*l, x.len, d.is_some()))
            .collect();
        assert_eq!(
            first,
            [
                (List::Ban, 32, false),
                (List::Ban, 32, false),
                (List::Allow, 29, true),
                (List::Allow, 29, true)
            ]
        );
        let then: Vec<(List, u8, bool)> = p
            .then
            .iter()
            .map(|(l, x, d)| (*l, x.len, d.is_some()))
            .collect();
        assert_eq!(then, [(List::Ban, 32, true), (List::Allow, 32, false)]);
    }
}

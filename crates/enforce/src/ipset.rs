//! The ipset enforcer: decisions as elements of ipsets that the operator's
//! iptables rules match (`-m set --match-set NAME src -j DROP`), the way
//! vallumd, diswall and maltrail's cron job fill them.
//!
//! Each configured set receives one action (bans or allows) of one family.
//! A set that exists is used as it is: its type, family, timeout and
//! comment support are read from the kernel, and entries are adapted:
//!
//! | type | takes | what else happens |
//! |---|---|---|
//! | `hash:net` | hosts and networks (not /0) | |
//! | `hash:ip` | single addresses (with `netmask N`: /N networks) | networks are skipped with a warning: give them a `hash:net` set (`only = "networks"`) |
//! | `bitmap:ip` | IPv4 addresses and networks inside its `range` (with `netmask N`: networks of /N or wider) | out of range is skipped with a warning; overlaps are tracked so an unban of a network keeps the hosts banned inside it |
//!
//! There is no `bitmap:net` type in the kernel (vallumd's README lists one):
//! `bitmap:ip` with `netmask` is the set that holds networks in a range.
//!
//! Timeouts: in a set with timeout support an element gets the seconds
//! left of its decision (0 for "forever"); a ban that lasts longer than
//! ipset's longest timeout ([`MAX_TIMEOUT_SECS`], about 24.8 days, the
//! kernel caps larger values) gets that, with a logged note, and is refreshed
//! by every later `apply` once half of it has run out. A set without
//! timeout support keeps elements until the agent removes them at expiry.
//! A repeated ban is an `ADD` with `-exist` semantics, which refreshes the
//! timeout and comment.
//!
//! Changes go to the kernel as one [`ipset::Batch`] (many messages in one
//! `sendmsg`; see its docs: ipset has no transactions). A full set
//! (`maxelem` reached) is reported as [`EnforceError::SetFull`] after every
//! other change was applied, and the enforcer keeps working.
//!
//! [`replace_all`](Enforcer::replace_all) fills a temporary set of the same
//! type and options and swaps it with the live one (`ipset swap`), then
//! destroys the temporary: packets see the old contents or the new, never an
//! empty set (unlike a flush and refill).
//!
//! Ownership: a set with a `create` table is palisade's: palisade creates it
//! when it is missing and `remove` destroys it. A set without one belongs
//! to the operator and is never created or destroyed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use palisade_model::{Action, Family, Net, Timestamp};
use palisade_netlink::Socket;
use palisade_netlink::ipset::{
    self, Batch, CreateSpec, Elem, Failure, Header, NFPROTO_IPV4, NFPROTO_IPV6, Op, cadt_flags, err,
};
use serde::{Deserialize, Deserializer};
use tracing::{info, warn};

use crate::enforcer::{
    Change, DRIFT_EXAMPLES, DRIFT_SETTLE, Drift, EnforceError, Enforcer, Entry, ObjectDrift,
    ObjectStatus, Status,
};
use crate::filter::{FamilyName, Filter};
use crate::name::NameError;

pub use palisade_netlink::ipset::MAX_TIMEOUT_SECS;

/// A batch is sent whenever it grows past this many bytes, so a load of
/// millions of entries never holds them all encoded at once.
const FLUSH_BYTES: usize = 8 << 20;
const FOREVER: u64 = u64::MAX;

/// `kind = "ipset"`: the sets to fill.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpsetConfig {
    /// Name in logs and `palisade status` (default `ipset`).
    #[serde(default)]
    pub name: Option<String>,
    /// `[[enforcer.set]]` tables.
    #[serde(rename = "set")]
    pub sets: Vec<SetConfig>,
    /// Which decisions the sets receive.
    #[serde(default)]
    pub filter: Filter,
}

/// One set and what it receives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// The set's name (at most 31 bytes).
    #[serde(deserialize_with = "set_name")]
    pub name: String,
    /// `ban` or `allow`: which decisions go into it.
    pub action: Action,
    /// `ipv4` or `ipv6`. For an existing set, the kernel's family is used
    /// and must match if given; a set palisade creates is IPv4 by default.
    #[serde(default)]
    pub family: Option<FamilyName>,
    /// `hosts` or `networks`: take only those (e.g. networks into a
    /// `hash:net` set next to a `hash:ip` one).
    #[serde(default)]
    pub only: Option<Only>,
    /// Create the set when it is missing, with these options; palisade then
    /// owns it (`remove` destroys it).
    #[serde(default)]
    pub create: Option<CreateConfig>,
}

/// Which decisions a set takes by size: single addresses or networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Only {
    /// Single addresses only (/32, /128).
    Hosts,
    /// Networks only.
    Networks,
}

/// How palisade creates a set (`ipset create -exist NAME TYPE ...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    /// `hash:ip`, `hash:net` or `bitmap:ip`.
    #[serde(rename = "type")]
    pub set_type: SetType,
    /// Enables timeouts; the number is the set's default in seconds (0:
    /// forever). palisade gives every element its own timeout anyway.
    #[serde(default)]
    pub timeout: Option<u32>,
    /// `maxelem`: most elements the set holds (the kernel's default 65536).
    #[serde(default)]
    pub maxelem: Option<u32>,
    /// `hashsize`: initial hash table size, in buckets (hash types).
    #[serde(default)]
    pub hashsize: Option<u32>,
    /// Keep the decision's reason as the element's comment.
    #[serde(default)]
    pub comment: bool,
    /// The range of a `bitmap:ip` set (at most 65536 addresses), e.g.
    /// `198.18.0.0/16`.
    #[serde(default)]
    pub range: Option<Net>,
    /// `hash:ip`/`bitmap:ip` holding networks of this prefix length.
    #[serde(default)]
    pub netmask: Option<u8>,
}

/// The set types palisade fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetType {
    /// `hash:ip`: single addresses (or `netmask`-sized networks).
    HashIp,
    /// `hash:net`: networks of any prefix length.
    HashNet,
    /// `bitmap:ip`: addresses of one IPv4 range of at most 65536.
    BitmapIp,
}

impl SetType {
    /// The type's name as ipset spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashNet => "hash:net",
            SetType::BitmapIp => "bitmap:ip",
        }
    }

    fn parse(s: &str) -> Result<SetType, SetTypeError> {
        match s {
            "hash:ip" => Ok(SetType::HashIp),
            "hash:net" => Ok(SetType::HashNet),
            "bitmap:ip" => Ok(SetType::BitmapIp),
            "bitmap:net" => Err(SetTypeError::BitmapNet),
            other => Err(SetTypeError::Unsupported(other.to_string())),
        }
    }
}

/// Why a configured set type cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SetTypeError {
    /// `bitmap:net`, which people expect but the kernel does not have.
    #[error(
        "there is no bitmap:net set type in the kernel: use \"bitmap:ip\" with a `range` and a `netmask` (it then holds networks of that size), or \"hash:net\""
    )]
    BitmapNet,
    /// A type palisade does not fill (`list:set`, `hash:ip,port`, ...).
    #[error(
        "palisade cannot fill ipsets of type {0:?}: use \"hash:ip\", \"hash:net\" or \"bitmap:ip\""
    )]
    Unsupported(String),
}

impl<'de> Deserialize<'de> for SetType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SetType, D::Error> {
        let s = String::deserialize(d)?;
        SetType::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn set_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_set_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn check_set_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > ipset::MAX_NAME_LEN || s.chars().any(|c| c.is_control()) {
        return Err(NameError::Set(s.to_string()));
    }
    Ok(())
}

/// What an entry's expiry and comment become in a set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Val {
    expiry: u64,
    comment: Option<String>,
}

/// One configured set and what palisade knows about it.
#[derive(Debug)]
struct SetState {
    cfg: SetConfig,
    /// The kernel's view, once the set was found or created.
    header: Option<Header>,
    /// For bitmap sets: every entry put there, so that overlapping entries
    /// can be restored when one of them goes.
    held: Option<BTreeMap<Net, Val>>,
    /// For hash sets: every element put there, to compare with the
    /// kernel's (drift) and to put back what went missing.
    put: HashMap<Net, Val>,
    /// Entries whose timeout was capped: true expiry, when last refreshed.
    capped: HashMap<Net, (Val, u64)>,
    warned_no_timeout: bool,
    skipped: u64,
}

impl SetState {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn family(&self) -> Option<Family> {
        match &self.header {
            Some(h) if h.family == NFPROTO_IPV6 => Some(Family::V6),
            Some(_) => Some(Family::V4),
            None => self.cfg.family.map(FamilyName::family),
        }
    }

    fn type_name(&self) -> &str {
        self.header.as_ref().map_or("?", |h| h.type_name.as_str())
    }

    /// Whether this set is for entries of this action and family at all.
    fn routes(&self, action: Action, net: &Net) -> bool {
        self.cfg.action == action && self.family().is_none_or(|f| f == net.family())
    }

    /// Why the set cannot hold `net`, if it cannot.
    fn refuses(&self, net: &Net) -> Option<String> {
        let h = self.header.as_ref()?;
        match self.cfg.only {
            Some(Only::Hosts) if !net.is_host() => return Some(String::new()),
            Some(Only::Networks) if net.is_host() => return Some(String::new()),
            _ => {}
        }
        let bits = net.family().bits();
        let netmask = h.netmask.unwrap_or(bits);
        match h.type_name.as_str() {
            "hash:net" if net.prefix() == 0 => Some("hash:net cannot hold /0".into()),
            "hash:net" => None,
            "hash:ip" if net.prefix() == netmask => None,
            "hash:ip" if netmask == bits => Some(format!(
                "it is hash:ip and holds single addresses: add a hash:net set with only = \"networks\" for {net}"
            )),
            "hash:ip" => Some(format!("it holds /{netmask} networks only")),
            "bitmap:ip" if net.prefix() > netmask => Some(format!(
                "it holds /{netmask} networks: {net} would widen to its whole /{netmask}"
            )),
            "bitmap:ip" => {
                let (first, last) = net.range();
                let (lo, hi) = h.range.map(|(a, b)| (u128_of(a), u128_of(b)))?;
                if first < lo || last > hi {
                    Some(format!(
                        "{net} is outside its range {}-{}",
                        h.range.unwrap().0,
                        h.range.unwrap().1
                    ))
                } else {
                    None
                }
            }
            other => Some(format!("palisade cannot fill sets of type {other}")),
        }
    }

    /// The element for `net` with this value.
    fn elem<'a>(&self, net: &Net, val: Option<&'a Val>, now: u64) -> (Elem<'a>, bool) {
        let h = self.header.as_ref().expect("resolved");
        let cidr = match h.type_name.as_str() {
            "hash:net" => Some(net.prefix()),
            "bitmap:ip" if !net.is_host() => Some(net.prefix()),
            _ => None,
        };
        let mut capped = false;
        let timeout = match val {
            Some(v) if h.has_timeout() => Some(if v.expiry == FOREVER {
                0
            } else {
                let secs = v.expiry.saturating_sub(now).div_ceil(1000).max(1);
                if secs > u64::from(MAX_TIMEOUT_SECS) {
                    capped = true;
                    MAX_TIMEOUT_SECS
                } else {
                    secs as u32
                }
            }),
            _ => None,
        };
        let comment = match val {
            Some(v) if h.has_comment() => v.comment.as_deref(),
            _ => None,
        };
        (
            Elem {
                addr: net.addr(),
                cidr,
                timeout,
                comment,
            },
            capped,
        )
    }
}

fn u128_of(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// Entries skipped for a set during one call, reported together.
#[derive(Default)]
struct Skips {
    by_set: BTreeMap<usize, (u64, Net, String)>,
    capped: u64,
}

impl Skips {
    fn add(&mut self, set: usize, net: Net, why: String) {
        let e = self.by_set.entry(set).or_insert((0, net, why));
        e.0 += 1;
    }

    fn log(&self, sets: &mut [SetState]) {
        for (&i, (n, first, why)) in &self.by_set {
            if why.is_empty() {
                continue; // `only` sends it elsewhere: nothing to report
            }
            let s = &mut sets[i];
            s.skipped += n;
            warn!(
                set = s.name(),
                count = n,
                first = %first,
                "ipset {} ({}) cannot hold {n} entr{} (first {first}): {why}; skipped",
                s.name(),
                s.type_name(),
                if *n == 1 { "y" } else { "ies" },
            );
        }
        if self.capped > 0 {
            info!(
                count = self.capped,
                "{} ban(s) last longer than ipset's longest timeout ({MAX_TIMEOUT_SECS} s, about 24.8 days): their elements get that timeout, and palisade refreshes them while it runs",
                self.capped
            );
        }
    }
}

/// The ipset enforcer (see the module docs).
#[derive(Debug)]
pub struct IpsetEnforcer {
    name: String,
    sock: Socket,
    sets: Vec<SetState>,
    in_sync: bool,
}

impl IpsetEnforcer {
    /// An enforcer for the network namespace of the calling thread. Sets
    /// are looked up (and created) on the first `replace_all` or `apply`.
    pub fn new(config: IpsetConfig) -> Result<IpsetEnforcer, EnforceError> {
        if config.sets.is_empty() {
            return Err(EnforceError::Config(
                "an ipset enforcer needs at least one [[enforcer.set]]".into(),
            ));
        }
        for s in &config.sets {
            check_set_name(&s.name)?;
            if let Some(c) = &s.create {
                check_create(s, c)?;
            }
        }
        let sock = Socket::netfilter()?;
        Ok(IpsetEnforcer {
            name: config.name.unwrap_or_else(|| "ipset".into()),
            sock,
            sets: config
                .sets
                .into_iter()
                .map(|cfg| SetState {
                    cfg,
                    header: None,
                    held: None,
                    put: HashMap::new(),
                    capped: HashMap::new(),
                    warned_no_timeout: false,
                    skipped: 0,
                })
                .collect(),
            in_sync: false,
        })
    }

    /// The kernel's header of a configured set (after it was resolved).
    pub fn header(&self, set: &str) -> Option<&Header> {
        self.sets
            .iter()
            .find(|s| s.name() == set)
            .and_then(|s| s.header.as_ref())
    }

    /// Finds (or creates) the set; errors say what to do.
    fn resolve(&mut self, i: usize) -> Result<bool, EnforceError> {
        if self.sets[i].header.is_some() {
            return Ok(false);
        }
        let s = &self.sets[i];
        let name = s.cfg.name.clone();
        let mut created = false;
        let header = match ipset::header(&mut self.sock, &name)? {
            Some(h) => {
                if let Some(c) = &s.cfg.create
                    && h.type_name != c.set_type.as_str()
                {
                    warn!(
                        set = %name,
                        "ipset {name} exists as {} rather than {} as configured: palisade uses it as it is",
                        h.type_name,
                        c.set_type.as_str()
                    );
                }
                h
            }
            None => match &s.cfg.create {
                None => {
                    return Err(EnforceError::Missing(format!(
                        "ipset {name} does not exist in this network namespace; create it (e.g. `ipset create {name} hash:ip timeout 86400`) or give the set a `create` table so palisade creates it"
                    )));
                }
                Some(c) => {
                    let spec = create_spec(&s.cfg, c);
                    ipset::create(&mut self.sock, &spec, true)?;
                    info!(set = %name, "created ipset {name} ({})", c.set_type.as_str());
                    created = true;
                    ipset::header(&mut self.sock, &name)?.ok_or_else(|| {
                        EnforceError::Missing(format!("ipset {name} vanished right after creation"))
                    })?
                }
            },
        };
        let family = if header.family == NFPROTO_IPV6 {
            FamilyName::Ipv6
        } else {
            FamilyName::Ipv4
        };
        if let Some(want) = s.cfg.family
            && want != family
        {
            return Err(EnforceError::Config(format!(
                "ipset {name} is a {} set but is configured for {want:?}",
                header.family_name()
            )));
        }
        if SetType::parse(&header.type_name).is_err() {
            return Err(EnforceError::Config(format!(
                "ipset {name} is of type {}, which palisade cannot fill: use a hash:ip, hash:net or bitmap:ip set",
                header.type_name
            )));
        }
        let s = &mut self.sets[i];
        if !header.has_timeout() && !s.warned_no_timeout {
            s.warned_no_timeout = true;
            info!(
                set = %name,
                "ipset {name} has no timeout support: its elements stay until palisade removes them when their decision expires (while the agent runs)"
            );
        }
        s.held = header.is_bitmap().then(BTreeMap::new);
        s.header = Some(header);
        Ok(created)
    }

    /// Forgets what is known about a set (it vanished), so the next call
    /// looks it up (or creates it) again.
    fn forget(&mut self, set: &str) {
        if let Some(s) = self.sets.iter_mut().find(|s| s.name() == set) {
            s.header = None;
            s.held = None;
            s.capped.clear();
        }
    }

    /// Queues the elements of one put or removal for set `i`.
    fn queue(&mut self, i: usize, change: &Change, now: u64, batch: &mut Batch, skips: &mut Skips) {
        let s = &mut self.sets[i];
        let (net, val) = match change {
            Change::Put(e) => (e.net, Some(val_of(e))),
            Change::Remove { net, .. } => (*net, None),
        };
        if let Some(why) = s.refuses(&net) {
            if val.is_some() {
                skips.add(i, net, why);
            }
            return;
        }
        if let Some(v) = &val
            && v.expiry <= now
        {
            return;
        }
        match s.held.as_mut() {
            None => {
                // hash sets: one element per entry, no overlaps to mind.
                s.capped.remove(&net);
                let (elem, capped) = s.elem(&net, val.as_ref(), now);
                match &val {
                    Some(v) => {
                        if capped {
                            skips.capped += 1;
                            s.capped.insert(net, (v.clone(), now));
                        }
                        batch.push(Op::Add, &s.cfg.name, &elem);
                        s.put.insert(net, v.clone());
                    }
                    None => {
                        batch.push(
                            Op::Del,
                            &s.cfg.name,
                            &Elem::addr(elem.addr).with_cidr(elem.cidr),
                        );
                        s.put.remove(&net);
                    }
                }
            }
            Some(held) => {
                // bitmap sets: an address's bit carries one timeout, the
                // longest of the entries covering it; a removal clears the
                // whole range. So after any change, the other entries that
                // overlap it are put again, longest-lived last.
                let floor = match &val {
                    Some(v) => {
                        held.insert(net, v.clone());
                        v.expiry
                    }
                    None => {
                        held.remove(&net);
                        0
                    }
                };
                let mut again: Vec<(Net, Val)> = overlapping(held, &net)
                    .filter(|(n, v)| *n != net && v.expiry > floor && v.expiry > now)
                    .collect();
                again.sort_by_key(|(_, v)| v.expiry);
                let name = s.cfg.name.clone();
                match &val {
                    Some(v) => {
                        let (elem, _) = s.elem(&net, Some(v), now);
                        batch.push(Op::Add, &name, &elem);
                    }
                    None => {
                        let (elem, _) = s.elem(&net, None, now);
                        batch.push(Op::Del, &name, &elem);
                    }
                }
                for (n, v) in &again {
                    let (elem, _) = s.elem(n, Some(v), now);
                    batch.push(Op::Add, &name, &elem);
                }
            }
        }
    }

    /// Puts entries whose timeout was capped again once half of it ran out.
    fn refresh_capped(&mut self, now: u64, batch: &mut Batch) {
        let half = u64::from(MAX_TIMEOUT_SECS) * 500;
        for s in &mut self.sets {
            if s.header.is_none() {
                continue;
            }
            let due: Vec<Net> = s
                .capped
                .iter()
                .filter(|(_, (_, at))| now.saturating_sub(*at) >= half)
                .map(|(n, _)| *n)
                .collect();
            for net in due {
                let (v, _) = s.capped.remove(&net).expect("just listed");
                if v.expiry <= now {
                    continue;
                }
                let (elem, capped) = s.elem(&net, Some(&v), now);
                batch.push(Op::Add, &s.cfg.name, &elem);
                if capped {
                    s.capped.insert(net, (v, now));
                }
            }
        }
    }

    /// Sends the batch and turns refused elements into errors.
    fn send(
        &mut self,
        batch: &mut Batch,
        errors: &mut Vec<EnforceError>,
    ) -> Result<(), EnforceError> {
        let failures = batch.send(&mut self.sock)?;
        self.report(failures, errors);
        Ok(())
    }

    fn report(&mut self, failures: Vec<Failure>, errors: &mut Vec<EnforceError>) {
        let mut full: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut missing: Vec<String> = Vec::new();
        for f in failures {
            let type_name = self
                .sets
                .iter()
                .find(|s| s.name() == f.set)
                .map(|s| s.type_name().to_string());
            match f.code {
                err::HASH_FULL => {
                    let e = full.entry(f.set.clone()).or_insert((0, f.target()));
                    e.0 += 1;
                }
                libc::ENOENT => {
                    if !missing.contains(&f.set) {
                        missing.push(f.set.clone());
                    }
                }
                code => errors.push(EnforceError::Other(format!(
                    "ipset {}: {} {} failed: {}",
                    f.set,
                    f.op.as_str(),
                    f.target(),
                    ipset::explain(code, type_name.as_deref())
                ))),
            }
        }
        for (set, (failed, first)) in full {
            let maxelem = self
                .header(&set)
                .and_then(|h| h.maxelem)
                .unwrap_or_default();
            errors.push(EnforceError::SetFull {
                set,
                maxelem,
                failed,
                first,
            });
        }
        for set in missing {
            self.forget(&set);
            errors.push(EnforceError::Missing(format!(
                "ipset {set} disappeared (someone destroyed it); palisade looks for it again on the next change, and recreates it if it may"
            )));
        }
    }

    fn replace_set_contents(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
        errors: &mut Vec<EnforceError>,
    ) -> Result<(), EnforceError> {
        let now = now_ms();
        // Where each set's elements go: straight into a set that was just
        // created (empty), else into a temporary set swapped in at the end.
        let mut target: Vec<Option<String>> = vec![None; self.sets.len()];
        let mut swap: Vec<Option<String>> = vec![None; self.sets.len()];
        for i in 0..self.sets.len() {
            let created = match self.resolve(i) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let s = &mut self.sets[i];
            s.capped.clear();
            s.put.clear();
            if let Some(h) = s.held.as_mut() {
                h.clear();
            }
            if created {
                target[i] = Some(s.cfg.name.clone());
                continue;
            }
            let tmp = temp_name(i);
            let spec = CreateSpec::like(s.header.as_ref().expect("resolved"), &tmp);
            let name = s.cfg.name.clone();
            let made = ipset::destroy_if_exists(&mut self.sock, &tmp)
                .and_then(|()| ipset::create(&mut self.sock, &spec, false));
            match made {
                Ok(()) => {
                    target[i] = Some(tmp.clone());
                    swap[i] = Some(tmp);
                }
                Err(e) => errors.push(EnforceError::Other(format!(
                    "cannot make a temporary copy of ipset {name} to replace its contents atomically: {e}"
                ))),
            }
        }
        let mut batch = Batch::with_capacity(1 << 20);
        let mut skips = Skips::default();
        // Bitmap entries are written last, longest-lived last (see queue).
        let mut bitmap: Vec<(usize, Net, Val)> = Vec::new();
        for e in entries {
            let v = val_of(&e);
            if v.expiry <= now {
                continue;
            }
            for (i, to) in target.iter().enumerate() {
                let Some(to) = to else { continue };
                let s = &mut self.sets[i];
                if !s.routes(e.action, &e.net) {
                    continue;
                }
                if let Some(why) = s.refuses(&e.net) {
                    skips.add(i, e.net, why);
                    continue;
                }
                if let Some(held) = s.held.as_mut() {
                    held.insert(e.net, v.clone());
                    bitmap.push((i, e.net, v.clone()));
                    continue;
                }
                let (elem, capped) = s.elem(&e.net, Some(&v), now);
                if capped {
                    skips.capped += 1;
                    s.capped.insert(e.net, (v.clone(), now));
                }
                batch.push(Op::Add, to, &elem);
                s.put.insert(e.net, v.clone());
            }
            if batch.len() >= FLUSH_BYTES {
                self.send(&mut batch, errors)?;
            }
        }
        bitmap.sort_by_key(|(_, _, v)| v.expiry);
        for (i, net, v) in &bitmap {
            let (elem, _) = self.sets[*i].elem(net, Some(v), now);
            batch.push(Op::Add, target[*i].as_ref().expect("target"), &elem);
        }
        drop(bitmap);
        self.send(&mut batch, errors)?;
        skips.log(&mut self.sets);
        for (i, tmp) in swap.iter_mut().enumerate() {
            let Some(tmp) = tmp.take() else { continue };
            let name = self.sets[i].cfg.name.clone();
            let swapped = ipset::swap(&mut self.sock, &name, &tmp);
            if let Err(e) = ipset::destroy(&mut self.sock, &tmp)
                && swapped.is_ok()
            {
                warn!(set = %tmp, error = %e, "cannot destroy the temporary ipset {tmp}");
            }
            if let Err(e) = swapped {
                errors.push(EnforceError::Other(format!(
                    "replacing the contents of ipset {name} failed, its old contents stay: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// Entries of `held` that share addresses with `net`.
fn overlapping<'a>(
    held: &'a BTreeMap<Net, Val>,
    net: &Net,
) -> impl Iterator<Item = (Net, Val)> + 'a {
    // Wider ones contain it: one lookup per shorter prefix.
    let wider: Vec<(Net, Val)> = net
        .supernets()
        .filter(|n| n != net)
        .filter_map(|n| held.get(&n).map(|v| (n, v.clone())))
        .collect();
    // It and narrower ones sort from it on, up to its last address.
    let (_, last) = net.range();
    let (family, outer) = (net.family(), *net);
    let inside = held
        .range(outer..)
        .take_while(move |(n, _)| n.family() == family && n.range().0 <= last)
        .filter(move |(n, _)| outer.contains(n))
        .map(|(n, v)| (*n, v.clone()));
    wider.into_iter().chain(inside)
}

fn val_of(e: &Entry) -> Val {
    Val {
        expiry: e.expires.map_or(FOREVER, Timestamp::as_millis),
        comment: e.comment.clone(),
    }
}

fn check_create(s: &SetConfig, c: &CreateConfig) -> Result<(), EnforceError> {
    let v6 = s.family == Some(FamilyName::Ipv6);
    let bad = |m: String| Err(EnforceError::Config(format!("ipset {}: {m}", s.name)));
    match c.set_type {
        SetType::BitmapIp => {
            if v6 {
                return bad("bitmap:ip sets are IPv4 only".into());
            }
            let Some(r) = c.range else {
                return bad(
                    "a bitmap:ip set needs a `range`, e.g. range = \"198.18.0.0/16\"".into(),
                );
            };
            if r.family() != Family::V4 || r.prefix() < 16 {
                return bad(format!(
                    "range {r} is too large for a bitmap:ip set (at most 65536 addresses, a /16)"
                ));
            }
        }
        _ if c.range.is_some() => return bad("only bitmap:ip sets have a range".into()),
        _ => {}
    }
    if let Some(n) = c.netmask {
        let max = if v6 { 128 } else { 32 };
        if n == 0 || n > max || c.set_type == SetType::HashNet {
            return bad(format!("netmask {n} is not valid for this set"));
        }
    }
    Ok(())
}

fn create_spec(s: &SetConfig, c: &CreateConfig) -> CreateSpec {
    let family = match s.family {
        Some(FamilyName::Ipv6) => NFPROTO_IPV6,
        _ => NFPROTO_IPV4,
    };
    CreateSpec {
        name: s.name.clone(),
        type_name: c.set_type.as_str().to_string(),
        family,
        revision: None,
        timeout: c.timeout,
        maxelem: c.maxelem,
        hashsize: c.hashsize,
        bucketsize: None,
        netmask: c.netmask,
        range: c.range.map(|r| {
            let (a, b) = r.range();
            (
                Net::addr_from_u128(Family::V4, a),
                Net::addr_from_u128(Family::V4, b),
            )
        }),
        cadt_flags: if c.comment {
            cadt_flags::WITH_COMMENT
        } else {
            0
        },
    }
}

/// A name for the temporary set of a swap: unique per process and set.
fn temp_name(i: usize) -> String {
    format!("pal-swap-{}-{i}", std::process::id())
}

trait WithCidr {
    fn with_cidr(self, cidr: Option<u8>) -> Self;
}

impl WithCidr for Elem<'_> {
    fn with_cidr(mut self, cidr: Option<u8>) -> Self {
        self.cidr = cidr;
        self
    }
}

impl Enforcer for IpsetEnforcer {
    fn name(&self) -> &str {
        &self.name
    }

    fn replace_all(
        &mut self,
        entries: &mut dyn Iterator<Item = Entry>,
    ) -> Result<(), EnforceError> {
        let mut errors = Vec::new();
        let result = self.replace_set_contents(entries, &mut errors);
        self.in_sync = result.is_ok() && errors.is_empty();
        result?;
        EnforceError::check(errors)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), EnforceError> {
        let now = now_ms();
        let mut errors = Vec::new();
        let mut usable = vec![false; self.sets.len()];
        for (i, ok) in usable.iter_mut().enumerate() {
            match self.resolve(i) {
                Ok(_) => *ok = true,
                Err(e) => errors.push(e),
            }
        }
        let mut batch = Batch::new();
        let mut skips = Skips::default();
        self.refresh_capped(now, &mut batch);
        for c in changes {
            let (action, net) = match c {
                Change::Put(e) => (e.action, e.net),
                Change::Remove { action, net } => (*action, *net),
            };
            for (i, &ok) in usable.iter().enumerate() {
                if ok && self.sets[i].routes(action, &net) {
                    self.queue(i, c, now, &mut batch, &mut skips);
                }
            }
            if batch.len() >= FLUSH_BYTES {
                self.send(&mut batch, &mut errors)?;
            }
        }
        self.send(&mut batch, &mut errors)?;
        skips.log(&mut self.sets);
        self.in_sync = errors.is_empty();
        EnforceError::check(errors)
    }

    fn remove(&mut self) -> Result<(), EnforceError> {
        let mut errors = Vec::new();
        for s in &mut self.sets {
            let name = s.cfg.name.clone();
            if s.cfg.create.is_none() {
                info!(set = %name, "ipset {name} is the operator's (no `create` table): left in place");
                continue;
            }
            match ipset::destroy_if_exists(&mut self.sock, &name) {
                Ok(()) => {
                    s.header = None;
                    s.held = None;
                    s.capped.clear();
                }
                Err(e) if e.errno() == libc::EBUSY => errors.push(EnforceError::Other(format!(
                    "ipset {name} is still used by an iptables rule (or a list set): remove the rule first (e.g. `iptables -D INPUT -m set --match-set {name} src -j DROP`), then try again"
                ))),
                Err(e) => errors.push(e.into()),
            }
        }
        self.in_sync = false;
        EnforceError::check(errors)
    }

    /// Compares every hash set's elements with what palisade put there; a
    /// repair adds the missing ones (recreating a set destroyed behind
    /// palisade's back when it may) and, in sets palisade created, deletes
    /// the others. Bitmap sets
    /// hold addresses, not entries, and are compared by count in
    /// [`Enforcer::status`].
    fn drift(&mut self, repair: bool) -> Result<Drift, EnforceError> {
        let now = now_ms();
        let settle = DRIFT_SETTLE.as_millis() as u64;
        let mut drift = Drift::default();
        let mut batch = Batch::new();
        let mut errors = Vec::new();
        for i in 0..self.sets.len() {
            let s = &self.sets[i];
            // Bitmap sets fill `held`, never `put`; a set never found
            // holds nothing of palisade's yet.
            if s.held.is_some() || s.put.is_empty() && s.header.is_none() {
                continue;
            }
            let name = s.cfg.name.clone();
            let members = match ipset::members(&mut self.sock, &name) {
                Ok(m) => m,
                Err(e) if e.errno() == libc::ENOENT => {
                    self.forget(&name);
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            let s = &self.sets[i];
            // Elements about to expire are left out of what counts as
            // extra: the kernel expires them on its own clock.
            let kernel: Vec<(Net, bool)> = members
                .iter()
                .filter_map(|m| {
                    let full = if m.addr.is_ipv4() { 32 } else { 128 };
                    let settled = m
                        .timeout
                        .is_none_or(|t| t == 0 || u64::from(t) * 1000 > settle);
                    Net::new(m.addr, m.cidr.unwrap_or(full))
                        .ok()
                        .map(|n| (n, settled))
                })
                .collect();
            let have: HashSet<Net> = kernel.iter().map(|(n, _)| *n).collect();
            // A set the operator made (no `create` table) may hold other
            // tools' elements too: only what is missing counts there.
            let owned = s.cfg.create.is_some();
            let extra: Vec<Net> = kernel
                .iter()
                .filter(|(n, settled)| owned && *settled && !s.put.contains_key(n))
                .map(|(n, _)| *n)
                .collect();
            let mut missing: Vec<(Net, Val)> = s
                .put
                .iter()
                .filter(|(n, v)| {
                    (v.expiry == FOREVER || v.expiry > now + settle) && !have.contains(n)
                })
                .map(|(n, v)| (*n, v.clone()))
                .collect();
            if missing.is_empty() && extra.is_empty() {
                continue;
            }
            missing.sort_by_key(|(n, _)| *n);
            drift.objects.push(ObjectDrift {
                name: format!("ipset {name}"),
                missing: missing.len(),
                extra: extra.len(),
                examples: missing
                    .iter()
                    .map(|(n, _)| format!("missing {n}"))
                    .chain(extra.iter().map(|n| format!("extra {n}")))
                    .take(DRIFT_EXAMPLES)
                    .collect(),
            });
            if !repair {
                continue;
            }
            // A set destroyed behind palisade's back is looked up (or
            // created) again first.
            if let Err(e) = self.resolve(i) {
                errors.push(e);
                continue;
            }
            let s = &self.sets[i];
            for (net, v) in &missing {
                let (elem, _) = s.elem(net, Some(v), now);
                batch.push(Op::Add, &name, &elem);
            }
            for net in &extra {
                let (elem, _) = s.elem(net, None, now);
                batch.push(Op::Del, &name, &elem);
            }
        }
        if repair && !drift.is_empty() {
            self.send(&mut batch, &mut errors)?;
            self.in_sync = errors.is_empty();
            EnforceError::check(errors)?;
        }
        Ok(drift)
    }

    fn status(&mut self, _kernel: bool) -> Result<Status, EnforceError> {
        let now = now_ms();
        let mut batch = Batch::new();
        self.refresh_capped(now, &mut batch);
        let mut errors = Vec::new();
        self.send(&mut batch, &mut errors)?;
        let mut objects = Vec::new();
        for s in &self.sets {
            let header = ipset::header(&mut self.sock, &s.cfg.name).ok().flatten();
            let in_kernel = header.as_ref().and_then(|h| h.elements).map(|n| n as usize);
            let name = match &header {
                Some(h) => {
                    let mut d =
                        format!("ipset {} ({} {}", s.cfg.name, h.type_name, h.family_name());
                    if let Some(t) = h.timeout {
                        d.push_str(&format!(", timeout {t}"));
                    }
                    if let Some(m) = h.maxelem {
                        d.push_str(&format!(", maxelem {m}"));
                    }
                    if s.skipped > 0 {
                        d.push_str(&format!(", {} entries skipped", s.skipped));
                    }
                    d.push(')');
                    d
                }
                None => format!("ipset {} (missing)", s.cfg.name),
            };
            let expected = match &s.held {
                Some(h) => h.values().filter(|v| v.expiry > now).count(),
                None => s.put.values().filter(|v| v.expiry > now).count(),
            };
            objects.push(ObjectStatus {
                name,
                entries: expected,
                expected,
                in_kernel,
            });
        }
        Ok(Status {
            objects,
            in_sync: self.in_sync && errors.is_empty(),
        })
    }
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_net_is_explained() {
        let e = SetType::parse("bitmap:net").unwrap_err().to_string();
        assert!(e.contains("no bitmap:net") && e.contains("netmask"), "{e}");
        assert!(
            SetType::parse("list:set")
                .unwrap_err()
                .to_string()
                .contains("hash:ip")
        );
    }

    #[test]
    fn overlapping_finds_wider_and_narrower_entries() {
        let mut held = BTreeMap::new();
        let v = Val {
            expiry: 1,
            comment: None,
        };
        for n in [
            "198.18.0.0/16",
            "198.18.1.0/24",
            "198.18.1.7",
            "198.18.2.1",
            "198.19.0.1",
        ] {
            held.insert(n.parse::<Net>().unwrap(), v.clone());
        }
        let mut got: Vec<String> = overlapping(&held, &"198.18.1.0/24".parse().unwrap())
            .map(|(n, _)| n.to_string())
            .collect();
        got.sort();
        assert_eq!(got, ["198.18.0.0/16", "198.18.1.0/24", "198.18.1.7"]);
        let got: Vec<String> = overlapping(&held, &"198.18.2.1".parse().unwrap())
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(got, ["198.18.0.0/16", "198.18.2.1"]);
    }

    #[test]
    fn create_options_are_checked() {
        let set = |t: &str, range: Option<&str>| SetConfig {
            name: "x".into(),
            action: Action::Ban,
            family: None,
            only: None,
            create: Some(CreateConfig {
                set_type: SetType::parse(t).unwrap(),
                timeout: None,
                maxelem: None,
                hashsize: None,
                comment: false,
                range: range.map(|r| r.parse().unwrap()),
                netmask: None,
            }),
        };
        let s = set("bitmap:ip", None);
        assert!(check_create(&s, s.create.as_ref().unwrap()).is_err());
        let s = set("bitmap:ip", Some("10.0.0.0/8"));
        let e = check_create(&s, s.create.as_ref().unwrap()).unwrap_err();
        assert!(e.to_string().contains("65536"), "{e}");
        let s = set("bitmap:ip", Some("198.18.0.0/16"));
        assert!(check_create(&s, s.create.as_ref().unwrap()).is_ok());
        let s = set("hash:ip", Some("198.18.0.0/16"));
        assert!(check_create(&s, s.create.as_ref().unwrap()).is_err());
        assert!(check_set_name(&"x".repeat(32)).is_err());
        assert!(check_set_name("diswall-bl").is_ok());
    }
}

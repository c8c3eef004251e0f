//! ipset over netlink (`NFNL_SUBSYS_IPSET`, protocol version 7): sets are
//! created, inspected, swapped and destroyed, and elements added and deleted
//! in bulk.
//!
//! Message layouts follow what the `ipset` tool 7.x sends (checked with
//! `strace` of `ipset create`, `add -exist`, `list -t` and `restore`):
//!
//! - every request carries `IPSET_ATTR_PROTOCOL` (7) and, except
//!   `PROTOCOL`/`TYPE`, the set name;
//! - 32-bit values (timeouts, maxelem, hashsize, flags) are big endian with
//!   `NLA_F_NET_BYTEORDER` set, which the kernel checks;
//! - an address is a nest `IPSET_ATTR_IP { IPSET_ATTR_IPADDR_IPV4|IPV6 }`;
//! - "`-exist`" is not an attribute: the kernel treats a request without
//!   `NLM_F_EXCL` as `-exist` (an `ADD` of an element that is there
//!   refreshes its timeout and comment, a `DEL` of a missing element is no
//!   error, a `CREATE` of an identical set is no error).
//!
//! # What "one batch" means for ipset
//!
//! ipset has no transactions: nothing like nf_tables' `BATCH_BEGIN`/`END`
//! makes many changes atomic. A [`Batch`] is many `ADD`/`DEL` messages sent
//! with one `sendmsg`; each message holds many elements (an `IPSET_ATTR_ADT`
//! nest of `IPSET_ATTR_DATA` containers, as `ipset restore` sends them) and
//! is acknowledged on its own. The kernel applies the elements of a message
//! in order and stops at the first one that fails; the other messages are
//! applied regardless. [`Batch::send`] then retries the elements of a failed
//! message one per message (harmless, since adds and deletes are
//! idempotent with `-exist` semantics) so that every failing element is
//! known exactly, and everything that can be applied is.
//!
//! Atomic replacement of a whole set is done with `SWAP` (see [`swap`]):
//! fill a temporary set of the same type, swap it with the live one (the
//! kernel exchanges them under their names in one step, and `iptables`
//! rules follow the name), destroy the temporary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::msg::{
    Attrs, MsgBuf, MsgStart, Msgs, NFGENMSG_LEN, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, Nest,
};
use crate::socket::Socket;

/// nfnetlink subsystem of ipset.
pub const NFNL_SUBSYS_IPSET: u16 = 6;
/// The protocol version palisade speaks (the kernel accepts 6 and 7).
pub const PROTOCOL: u8 = 7;
/// Longest set name, in bytes (`IPSET_MAXNAMELEN` is 32 with the NUL).
pub const MAX_NAME_LEN: usize = 31;
/// Longest comment the kernel keeps, in bytes (`IPSET_MAX_COMMENT_SIZE`).
pub const MAX_COMMENT_LEN: usize = 255;
/// Longest element timeout, in seconds: the kernel silently caps larger
/// values at `(UINT_MAX >> 1) / MSEC_PER_SEC` (`IPSET_MAX_TIMEOUT`, see
/// `ip_set_timeout_uget`), about 24.8 days, so that it fits in jiffies.
pub const MAX_TIMEOUT_SECS: u32 = (u32::MAX >> 1) / 1000;
/// Upper bound for the elements of one `ADD`/`DEL` message (the
/// `IPSET_ATTR_ADT` nest must stay below 64 KiB).
const MAX_ADT_NEST: usize = 32 * 1024;

/// Commands (`enum ipset_cmd`).
pub mod cmd {
    /// `IPSET_CMD_PROTOCOL`: asks for the protocol versions the kernel speaks.
    pub const PROTOCOL: u8 = 1;
    /// `IPSET_CMD_CREATE`: creates a set.
    pub const CREATE: u8 = 2;
    /// `IPSET_CMD_DESTROY`: destroys a set.
    pub const DESTROY: u8 = 3;
    /// `IPSET_CMD_FLUSH`: removes every element of a set.
    pub const FLUSH: u8 = 4;
    /// `IPSET_CMD_RENAME`: renames a set.
    pub const RENAME: u8 = 5;
    /// `IPSET_CMD_SWAP`: exchanges two sets under their names.
    pub const SWAP: u8 = 6;
    /// `IPSET_CMD_LIST`: dumps sets with their elements (or only headers).
    pub const LIST: u8 = 7;
    /// `IPSET_CMD_SAVE`: dumps sets in `ipset save` form.
    pub const SAVE: u8 = 8;
    /// `IPSET_CMD_ADD`: adds elements.
    pub const ADD: u8 = 9;
    /// `IPSET_CMD_DEL`: deletes elements.
    pub const DEL: u8 = 10;
    /// `IPSET_CMD_TEST`: tests whether an element is in a set.
    pub const TEST: u8 = 11;
    /// `IPSET_CMD_HEADER`: reads the header of one set.
    pub const HEADER: u8 = 12;
    /// `IPSET_CMD_TYPE`: asks for the revisions of a set type.
    pub const TYPE: u8 = 13;
}

/// Attribute numbers (uapi `linux/netfilter/ipset/ip_set.h`).
pub mod attr {
    // Command level.
    /// `IPSET_ATTR_PROTOCOL`: protocol version, in every request (u8).
    pub const PROTOCOL: u16 = 1;
    /// `IPSET_ATTR_SETNAME`: the set's name (string).
    pub const SETNAME: u16 = 2;
    /// `IPSET_ATTR_TYPENAME`: set type such as `hash:ip` (string; create and
    /// type requests).
    pub const TYPENAME: u16 = 3;
    /// `IPSET_ATTR_SETNAME2`: the second set of a swap or the new name of a
    /// rename (same number as [`TYPENAME`]).
    pub const SETNAME2: u16 = 3;
    /// `IPSET_ATTR_REVISION`: set type revision (u8).
    pub const REVISION: u16 = 4;
    /// `IPSET_ATTR_FAMILY`: `NFPROTO_IPV4` or `NFPROTO_IPV6` (u8).
    pub const FAMILY: u16 = 5;
    /// `IPSET_ATTR_FLAGS`: command flags such as "list headers only" (u32, big
    /// endian).
    pub const FLAGS: u16 = 6;
    /// `IPSET_ATTR_DATA`: nest of a set's create options, or of one element.
    pub const DATA: u16 = 7;
    /// `IPSET_ATTR_ADT`: nest of many [`DATA`] elements in one add or delete.
    pub const ADT: u16 = 8;
    /// `IPSET_ATTR_LINENO`: restore line number, which the kernel requires
    /// beside an [`ADT`] nest (u32, big endian).
    pub const LINENO: u16 = 9;
    /// `IPSET_ATTR_PROTOCOL_MIN`: oldest protocol version the kernel speaks
    /// (u8).
    pub const PROTOCOL_MIN: u16 = 10;
    /// `IPSET_ATTR_REVISION_MIN`: oldest revision of a set type (same number as
    /// [`PROTOCOL_MIN`]).
    pub const REVISION_MIN: u16 = 10;
    /// `IPSET_ATTR_INDEX`: a set's index in the kernel's table.
    pub const INDEX: u16 = 11;
    // CADT (inside DATA).
    /// `IPSET_ATTR_IP`: nest holding an element's address, or the first address
    /// of a bitmap set's range.
    pub const IP: u16 = 1;
    /// `IPSET_ATTR_IP_TO`: nest holding the last address of a range.
    pub const IP_TO: u16 = 2;
    /// `IPSET_ATTR_CIDR`: prefix length of an element (u8).
    pub const CIDR: u16 = 3;
    /// `IPSET_ATTR_TIMEOUT`: timeout in seconds (u32, big endian; 0: never
    /// expires).
    pub const TIMEOUT: u16 = 6;
    /// `IPSET_ATTR_CADT_FLAGS`: a set's element extensions, [`cadt_flags`](super::cadt_flags)
    /// bits (u32, big endian).
    pub const CADT_FLAGS: u16 = 8;
    // Create only.
    /// `IPSET_ATTR_INITVAL`: hash seed of a hash set.
    pub const INITVAL: u16 = 17;
    /// `IPSET_ATTR_HASHSIZE`: initial hash table size, in buckets (u32, big
    /// endian).
    pub const HASHSIZE: u16 = 18;
    /// `IPSET_ATTR_MAXELEM`: most elements the set holds (u32, big endian).
    pub const MAXELEM: u16 = 19;
    /// `IPSET_ATTR_NETMASK`: prefix length every address is masked to (u8).
    pub const NETMASK: u16 = 20;
    /// `IPSET_ATTR_BUCKETSIZE`: most elements per hash bucket (u8).
    pub const BUCKETSIZE: u16 = 21;
    /// `IPSET_ATTR_RESIZE`: growth step of a hash set, in percent (obsolete).
    pub const RESIZE: u16 = 22;
    /// `IPSET_ATTR_SIZE`: size of a list set.
    pub const SIZE: u16 = 23;
    /// `IPSET_ATTR_ELEMENTS`: elements in the set (u32, big endian; in list
    /// replies).
    pub const ELEMENTS: u16 = 24;
    /// `IPSET_ATTR_REFERENCES`: how many rules and list sets use the set (u32,
    /// big endian; in list replies).
    pub const REFERENCES: u16 = 25;
    /// `IPSET_ATTR_MEMSIZE`: kernel memory the set takes, in bytes (u32, big
    /// endian; in list replies).
    pub const MEMSIZE: u16 = 26;
    // ADT only.
    /// `IPSET_ATTR_COMMENT`: an element's comment (string, at most
    /// [`MAX_COMMENT_LEN`](super::MAX_COMMENT_LEN) bytes; same number as
    /// [`MEMSIZE`], which only appears in set headers).
    pub const COMMENT: u16 = 26;
    // Inside IP / IP_TO.
    /// `IPSET_ATTR_IPADDR_IPV4`: four address bytes, network order.
    pub const IPADDR_IPV4: u16 = 1;
    /// `IPSET_ATTR_IPADDR_IPV6`: sixteen address bytes, network order.
    pub const IPADDR_IPV6: u16 = 2;
}

/// ipset's own error codes, returned where an errno would be.
pub mod err {
    /// `IPSET_ERR_PROTOCOL`: the kernel does not speak the message's protocol
    /// version or could not parse it.
    pub const PROTOCOL: i32 = 4097;
    /// `IPSET_ERR_FIND_TYPE`: no such set type (its `ip_set_*` module is not
    /// loaded or not built).
    pub const FIND_TYPE: i32 = 4098;
    /// `IPSET_ERR_MAX_SETS`: the kernel's limit of sets is reached.
    pub const MAX_SETS: i32 = 4099;
    /// `IPSET_ERR_BUSY`: the set is in use by a rule or a list set.
    pub const BUSY: i32 = 4100;
    /// `IPSET_ERR_EXIST_SETNAME2`: the new name of a rename is taken.
    pub const EXIST_SETNAME2: i32 = 4101;
    /// `IPSET_ERR_TYPE_MISMATCH`: the two sets of a swap have incompatible
    /// types.
    pub const TYPE_MISMATCH: i32 = 4102;
    /// `IPSET_ERR_EXIST`: the set or element exists (create or add with
    /// `NLM_F_EXCL`) or is missing (delete, test).
    pub const EXIST: i32 = 4103;
    /// `IPSET_ERR_INVALID_CIDR`: the prefix length is not valid for the set.
    pub const INVALID_CIDR: i32 = 4104;
    /// `IPSET_ERR_INVALID_NETMASK`: the netmask is not valid.
    pub const INVALID_NETMASK: i32 = 4105;
    /// `IPSET_ERR_INVALID_FAMILY`: the address family is not the set's.
    pub const INVALID_FAMILY: i32 = 4106;
    /// `IPSET_ERR_TIMEOUT`: a timeout was given for a set without timeout
    /// support.
    pub const TIMEOUT: i32 = 4107;
    /// `IPSET_ERR_REFERENCED`: the set is still referenced and cannot be
    /// destroyed.
    pub const REFERENCED: i32 = 4108;
    /// `IPSET_ERR_IPADDR_IPV4`: an IPv4 address was expected.
    pub const IPADDR_IPV4: i32 = 4109;
    /// `IPSET_ERR_IPADDR_IPV6`: an IPv6 address was expected.
    pub const IPADDR_IPV6: i32 = 4110;
    /// `IPSET_ERR_COUNTER`: counters were given for a set without counter
    /// support.
    pub const COUNTER: i32 = 4111;
    /// `IPSET_ERR_COMMENT`: a comment was given for a set without comment
    /// support.
    pub const COMMENT: i32 = 4112;
    /// `IPSET_ERR_INVALID_MARKMASK`: the markmask is not valid.
    pub const INVALID_MARKMASK: i32 = 4113;
    /// `IPSET_ERR_SKBINFO`: skbinfo was given for a set without skbinfo
    /// support.
    pub const SKBINFO: i32 = 4114;
    /// First type-specific code: its meaning depends on the set type.
    pub const TYPE_SPECIFIC: i32 = 4352;
    /// hash types: the set holds `maxelem` elements.
    pub const HASH_FULL: i32 = 4352;
    /// hash types (`IPSET_ERR_HASH_ELEM`): the element cannot be stored in
    /// this hash type.
    pub const HASH_ELEM: i32 = 4353;
    /// hash types (`IPSET_ERR_HASH_RANGE_UNSUPPORTED`): the type takes no
    /// ranges or networks.
    pub const HASH_RANGE_UNSUPPORTED: i32 = 4356;
    /// hash types (`IPSET_ERR_HASH_RANGE`): the range is invalid.
    pub const HASH_RANGE: i32 = 4357;
    /// bitmap types: the address is outside the set's range.
    pub const BITMAP_RANGE: i32 = 4352;
    /// bitmap types (`IPSET_ERR_BITMAP_RANGE_SIZE`): the range is too large
    /// for a bitmap.
    pub const BITMAP_RANGE_SIZE: i32 = 4353;
}

/// Command-level flags (`IPSET_ATTR_FLAGS`).
const IPSET_FLAG_LIST_HEADER: u32 = 1 << 2;

/// Element extension flags of a set (`IPSET_ATTR_CADT_FLAGS` at create).
pub mod cadt_flags {
    /// `IPSET_FLAG_WITH_COUNTERS`: elements carry packet and byte counters.
    pub const WITH_COUNTERS: u32 = 1 << 3;
    /// `IPSET_FLAG_WITH_COMMENT`: elements carry a comment.
    pub const WITH_COMMENT: u32 = 1 << 4;
    /// `IPSET_FLAG_WITH_FORCEADD`: a full set evicts a random element instead
    /// of refusing an add.
    pub const WITH_FORCEADD: u32 = 1 << 5;
    /// `IPSET_FLAG_WITH_SKBINFO`: elements carry mark, priority and queue.
    pub const WITH_SKBINFO: u32 = 1 << 6;
}
/// `NFPROTO_IPV4`: the family of an IPv4 set.
/// `NFPROTO_IPV4` / `NFPROTO_IPV6`: the family of a set.
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`: the family of an IPv6 set.
pub const NFPROTO_IPV6: u8 = 10;

/// What the kernel says about a set (`ipset list -t`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The set's name.
    pub name: String,
    /// `hash:ip`, `hash:net`, `bitmap:ip`, ...
    pub type_name: String,
    /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`].
    pub family: u8,
    /// Type revision the set was created with.
    pub revision: u8,
    /// Default timeout in seconds, if the set supports timeouts (0: elements
    /// without an explicit timeout never expire).
    pub timeout: Option<u32>,
    /// Most elements the set holds (hash types).
    pub maxelem: Option<u32>,
    /// Initial hash table size, in buckets (hash types).
    pub hashsize: Option<u32>,
    /// Most elements per hash bucket (hash types, revisions that have it).
    pub bucketsize: Option<u8>,
    /// Prefix length every address is masked to, if the set has a netmask.
    pub netmask: Option<u8>,
    /// First and last address of a bitmap set.
    pub range: Option<(IpAddr, IpAddr)>,
    /// [`cadt_flags`] bits: comment, counters, skbinfo, forceadd.
    pub cadt_flags: u32,
    /// Elements in the set (expired ones not yet collected included).
    pub elements: Option<u32>,
    /// How many iptables rules and list sets use the set.
    pub references: Option<u32>,
    /// Kernel memory the set takes, in bytes.
    pub memsize: Option<u32>,
}

impl Header {
    /// True if the set supports element timeouts (created with `timeout`).
    pub fn has_timeout(&self) -> bool {
        self.timeout.is_some()
    }

    /// True if elements carry a comment (created with `comment`).
    pub fn has_comment(&self) -> bool {
        self.cadt_flags & cadt_flags::WITH_COMMENT != 0
    }

    /// True for an IPv6 (`inet6`) set.
    pub fn is_ipv6(&self) -> bool {
        self.family == NFPROTO_IPV6
    }

    /// True for a `bitmap:*` set, whose elements must lie in its `range`.
    pub fn is_bitmap(&self) -> bool {
        self.type_name.starts_with("bitmap:")
    }

    /// `inet` or `inet6`, as `ipset` prints it.
    pub fn family_name(&self) -> &'static str {
        family_name(self.family)
    }
}

/// `inet` or `inet6` for an `NFPROTO_*` value.
pub fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_IPV4 => "inet",
        NFPROTO_IPV6 => "inet6",
        _ => "?",
    }
}

/// A set to create (`ipset create NAME TYPE family F ...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// Name of the set, at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// Set type, such as `hash:ip` or `hash:net`.
    pub type_name: String,
    /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`].
    pub family: u8,
    /// Type revision; `None` asks the kernel for the newest it has.
    pub revision: Option<u8>,
    /// `timeout N`: enables timeouts; elements added without one get N
    /// seconds (0: forever).
    pub timeout: Option<u32>,
    /// `maxelem N`: most elements the set holds; `None` keeps the kernel's
    /// default (65536).
    pub maxelem: Option<u32>,
    /// `hashsize N`: initial hash table size, in buckets; `None` keeps the
    /// kernel's default (1024).
    pub hashsize: Option<u32>,
    /// `bucketsize N`: most elements per hash bucket; `None` keeps the
    /// kernel's default.
    pub bucketsize: Option<u8>,
    /// `netmask N`: prefix length every address is masked to.
    pub netmask: Option<u8>,
    /// `range FIRST-LAST` of a bitmap set.
    pub range: Option<(IpAddr, IpAddr)>,
    /// [`cadt_flags`] bits (`comment`, `counters`, ...).
    pub cadt_flags: u32,
}

impl CreateSpec {
    /// A spec that recreates `h`'s type and options under another name (for
    /// the temporary set of a swap).
    pub fn like(h: &Header, name: &str) -> CreateSpec {
        CreateSpec {
            name: name.to_string(),
            type_name: h.type_name.clone(),
            family: h.family,
            revision: Some(h.revision),
            timeout: h.timeout,
            maxelem: h.maxelem,
            hashsize: h.hashsize,
            bucketsize: h.bucketsize,
            netmask: h.netmask,
            range: h.range,
            cadt_flags: h.cadt_flags,
        }
    }
}

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Add the element (`ipset add -exist`).
    Add,
    /// Delete the element (`ipset del -exist`).
    Del,
}

impl Op {
    fn cmd(self) -> u8 {
        match self {
            Op::Add => cmd::ADD,
            Op::Del => cmd::DEL,
        }
    }

    /// `add` or `del`, as `ipset` spells the command.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
        }
    }
}

/// One element: an address with an optional prefix (`hash:net`, or a range
/// in `hash:ip`/`bitmap:ip`), timeout and comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elem<'a> {
    /// The address (the network address for a prefix).
    pub addr: IpAddr,
    /// Prefix length; `None` for a single address.
    pub cidr: Option<u8>,
    /// Seconds (0: never expires); `None` leaves it to the set's default.
    /// Must be `None` for sets without timeout support. Values above
    /// [`MAX_TIMEOUT_SECS`] are capped by the kernel.
    pub timeout: Option<u32>,
    /// Cut to [`MAX_COMMENT_LEN`] bytes; only for sets with `comment`.
    pub comment: Option<&'a str>,
}

impl Elem<'_> {
    /// A single address without timeout or comment.
    pub fn addr(addr: IpAddr) -> Elem<'static> {
        Elem {
            addr,
            cidr: None,
            timeout: None,
            comment: None,
        }
    }
}

/// An element of a set as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address (the network address for a prefix).
    pub addr: IpAddr,
    /// Prefix length, for a network element of a `hash:net` set.
    pub cidr: Option<u8>,
    /// Seconds left; `None` without timeout, `Some(0)` for "never".
    pub timeout: Option<u32>,
    /// The element's comment, in sets with `comment`.
    pub comment: Option<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cidr {
            Some(c) => write!(f, "{}/{c}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An element the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether it was an add or a delete.
    pub op: Op,
    /// The set it was meant for.
    pub set: String,
    /// The element's address.
    pub addr: IpAddr,
    /// The element's prefix length, if it was a network.
    pub cidr: Option<u8>,
    /// A positive errno or ipset error code ([`err`]).
    pub code: i32,
}

impl Failure {
    /// `198.18.0.7` or `198.18.1.0/24`.
    pub fn target(&self) -> String {
        match self.cidr {
            Some(c) => format!("{}/{c}", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// Starts a request message with `PROTOCOL` and, if given, the set name.
fn begin(buf: &mut MsgBuf, command: u8, flags: u16, seq: u32, set: Option<&str>) -> MsgStart {
    let m = buf.begin((NFNL_SUBSYS_IPSET << 8) | command as u16, flags, seq);
    buf.nfgenmsg(NFPROTO_IPV4, 0);
    buf.put_u8(attr::PROTOCOL, PROTOCOL);
    if let Some(s) = set {
        buf.put_str(attr::SETNAME, s);
    }
    m
}

fn put_u32_net(buf: &mut MsgBuf, ty: u16, v: u32) {
    buf.put_u32_be(ty | NLA_F_NET_BYTEORDER, v);
}

fn put_ip(buf: &mut MsgBuf, ty: u16, addr: IpAddr) {
    let n = buf.nest(ty);
    match addr {
        IpAddr::V4(a) => buf.put((attr::IPADDR_IPV4) | NLA_F_NET_BYTEORDER, &a.octets()),
        IpAddr::V6(a) => buf.put((attr::IPADDR_IPV6) | NLA_F_NET_BYTEORDER, &a.octets()),
    }
    buf.nest_end(n);
}

fn parse_ip(a: &crate::msg::Attr<'_>) -> Option<IpAddr> {
    a.attrs().find_map(|inner| match inner.ty {
        attr::IPADDR_IPV4 => <[u8; 4]>::try_from(inner.data)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        attr::IPADDR_IPV6 => <[u8; 16]>::try_from(inner.data)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Encoded size of an element's `DATA` container.
fn elem_len(e: &Elem<'_>) -> usize {
    let ip = if e.addr.is_ipv4() { 4 + 8 } else { 4 + 20 };
    4 + ip
        + if e.cidr.is_some() { 8 } else { 0 }
        + if e.timeout.is_some() { 8 } else { 0 }
        + e.comment.map_or(0, |c| {
            crate::msg::align(4 + truncate(c, MAX_COMMENT_LEN).len() + 1)
        })
}

fn put_elem(buf: &mut MsgBuf, e: &Elem<'_>) {
    let d = buf.nest(attr::DATA);
    put_ip(buf, attr::IP, e.addr);
    if let Some(c) = e.cidr {
        buf.put_u8(attr::CIDR, c);
    }
    if let Some(t) = e.timeout {
        put_u32_net(buf, attr::TIMEOUT, t);
    }
    if let Some(c) = e.comment {
        buf.put_str(attr::COMMENT, truncate(c, MAX_COMMENT_LEN));
    }
    buf.nest_end(d);
}

/// Sends one request that is answered by an ack (or an error).
fn request(
    sock: &mut Socket,
    buf: MsgBuf,
    seq: u32,
    what: impl Fn() -> String,
) -> Result<(), Error> {
    let nacks = sock.transact(buf.as_bytes(), seq, 1)?;
    match nacks.into_iter().next() {
        None => Ok(()),
        Some(n) => Err(error(what(), n.errno, None).with_kernel_message(n.message)),
    }
}

/// Sends a request answered by one message (`PROTOCOL`, `TYPE`): with
/// `NLM_F_ACK` the kernel follows it with an ack, which ends the exchange
/// like a dump's `NLMSG_DONE`.
fn single_reply<T>(
    sock: &mut Socket,
    buf: &MsgBuf,
    seq: u32,
    what: &str,
    mut parse: impl FnMut(Attrs<'_>) -> Option<T>,
) -> Result<T, Error> {
    let mut found = None;
    sock.dump(buf.as_bytes(), seq, |msg| {
        if found.is_none() {
            found = parse(msg.attrs(NFGENMSG_LEN));
        }
        Ok(())
    })
    .map_err(|e| error(what.to_string(), e.errno(), None))?;
    found.ok_or_else(|| Error::new(format!("{what}: the kernel sent no answer"), libc::EPROTO))
}

/// The protocol version of the kernel's ipset (`ipset version`); errors
/// with `EPROTONOSUPPORT`-like codes when ipset is not available.
pub fn protocol_version(sock: &mut Socket) -> Result<(u8, u8), Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(64);
    let m = begin(
        &mut buf,
        cmd::PROTOCOL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        None,
    );
    buf.end(m);
    single_reply(
        sock,
        &buf,
        seq,
        "asking the kernel for its ipset protocol",
        |a| {
            let max = a.get(attr::PROTOCOL)?.u8()?;
            let min = a
                .get(attr::PROTOCOL_MIN)
                .and_then(|x| x.u8())
                .unwrap_or(max);
            Some((max, min))
        },
    )
}

/// The revisions (min, max) of a set type the kernel has, e.g. `hash:ip`
/// for IPv4; `FIND_TYPE` error if the type is unknown (module missing).
pub fn type_revisions(sock: &mut Socket, type_name: &str, family: u8) -> Result<(u8, u8), Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(64);
    let m = begin(&mut buf, cmd::TYPE, NLM_F_REQUEST | NLM_F_ACK, seq, None);
    buf.put_str(attr::TYPENAME, type_name);
    buf.put_u8(attr::FAMILY, family);
    buf.end(m);
    single_reply(
        sock,
        &buf,
        seq,
        &format!(
            "looking up ipset type {type_name} ({})",
            family_name(family)
        ),
        |a| {
            let max = a.get(attr::REVISION)?.u8()?;
            let min = a.get(attr::REVISION_MIN).and_then(|x| x.u8()).unwrap_or(0);
            Some((min, max))
        },
    )
}

/// The header of a set (type, family, timeout, maxelem, element count...),
/// or `None` if there is no set of that name.
pub fn header(sock: &mut Socket, name: &str) -> Result<Option<Header>, Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(96);
    let m = begin(
        &mut buf,
        cmd::LIST,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        Some(name),
    );
    put_u32_net(&mut buf, attr::FLAGS, IPSET_FLAG_LIST_HEADER);
    buf.end(m);
    let mut found: Option<Header> = None;
    let r = sock.dump(buf.as_bytes(), seq, |msg| {
        if found.is_none() {
            found = Some(parse_header(msg.attrs(NFGENMSG_LEN)));
        }
        Ok(())
    });
    match r {
        Ok(()) => Ok(found),
        Err(e) if e.errno() == libc::ENOENT => Ok(None),
        Err(e) => Err(error(
            format!("reading the header of ipset {name}"),
            e.errno(),
            None,
        )),
    }
}

fn parse_header(a: Attrs<'_>) -> Header {
    let mut h = Header::default();
    for x in a {
        match x.ty {
            attr::SETNAME => h.name = x.str().unwrap_or_default().to_string(),
            attr::TYPENAME => h.type_name = x.str().unwrap_or_default().to_string(),
            attr::FAMILY => h.family = x.u8().unwrap_or(0),
            attr::REVISION => h.revision = x.u8().unwrap_or(0),
            attr::DATA => {
                let mut first = None;
                let mut last = None;
                for d in x.attrs() {
                    match d.ty {
                        attr::TIMEOUT => h.timeout = d.u32_be(),
                        attr::MAXELEM => h.maxelem = d.u32_be(),
                        attr::HASHSIZE => h.hashsize = d.u32_be(),
                        attr::BUCKETSIZE => h.bucketsize = d.u8(),
                        attr::NETMASK => h.netmask = d.u8(),
                        attr::CADT_FLAGS => h.cadt_flags = d.u32_be().unwrap_or(0),
                        attr::ELEMENTS => h.elements = d.u32_be(),
                        attr::REFERENCES => h.references = d.u32_be(),
                        attr::MEMSIZE => h.memsize = d.u32_be(),
                        attr::IP => first = parse_ip(&d),
                        attr::IP_TO => last = parse_ip(&d),
                        _ => {}
                    }
                }
                if let (Some(a), Some(b)) = (first, last) {
                    h.range = Some((a, b));
                }
            }
            _ => {}
        }
    }
    h
}

/// Creates a set. With `exist`, an identical set of that name is no error
/// (`ipset create -exist`); a different one is (`EXIST_SETNAME2`-style).
pub fn create(sock: &mut Socket, spec: &CreateSpec, exist: bool) -> Result<(), Error> {
    let revision = match spec.revision {
        Some(r) => r,
        None => type_revisions(sock, &spec.type_name, spec.family)?.1,
    };
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(256);
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | if exist { 0 } else { NLM_F_EXCL };
    let m = begin(&mut buf, cmd::CREATE, flags, seq, Some(&spec.name));
    buf.put_str(attr::TYPENAME, &spec.type_name);
    buf.put_u8(attr::REVISION, revision);
    buf.put_u8(attr::FAMILY, spec.family);
    let d = buf.nest(attr::DATA);
    if let Some((first, last)) = spec.range {
        put_ip(&mut buf, attr::IP, first);
        put_ip(&mut buf, attr::IP_TO, last);
    }
    if let Some(t) = spec.timeout {
        put_u32_net(&mut buf, attr::TIMEOUT, t.min(MAX_TIMEOUT_SECS));
    }
    if spec.cadt_flags != 0 {
        put_u32_net(&mut buf, attr::CADT_FLAGS, spec.cadt_flags);
    }
    if let Some(h) = spec.hashsize {
        put_u32_net(&mut buf, attr::HASHSIZE, h);
    }
    if let Some(mx) = spec.maxelem {
        put_u32_net(&mut buf, attr::MAXELEM, mx);
    }
    if let Some(n) = spec.netmask {
        buf.put_u8(attr::NETMASK, n);
    }
    if let Some(b) = spec.bucketsize {
        buf.put_u8(attr::BUCKETSIZE, b);
    }
    buf.nest_end(d);
    buf.end(m);
    request(sock, buf, seq, || {
        format!(
            "creating ipset {} {} family {}",
            spec.name,
            spec.type_name,
            family_name(spec.family)
        )
    })
}

fn simple(
    sock: &mut Socket,
    command: u8,
    flags: u16,
    set: &str,
    second: Option<&str>,
    what: String,
) -> Result<(), Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(96);
    let m = begin(
        &mut buf,
        command,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        seq,
        Some(set),
    );
    if let Some(s) = second {
        buf.put_str(attr::SETNAME2, s);
    }
    buf.end(m);
    request(sock, buf, seq, || what.clone())
}

/// Destroys a set; `EBUSY` if an iptables rule still uses it, `ENOENT` if
/// there is none.
pub fn destroy(sock: &mut Socket, name: &str) -> Result<(), Error> {
    let what = format!("destroying ipset {name}");
    simple(sock, cmd::DESTROY, NLM_F_EXCL, name, None, what)
}

/// Destroys a set if it exists (`ipset destroy -exist`).
pub fn destroy_if_exists(sock: &mut Socket, name: &str) -> Result<(), Error> {
    let what = format!("destroying ipset {name}");
    match simple(sock, cmd::DESTROY, NLM_F_EXCL, name, None, what) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

/// Exchanges the contents (and types) of two sets of compatible types in
/// one step: rules that match set `a` by name see `b`'s old elements from
/// then on.
pub fn swap(sock: &mut Socket, a: &str, b: &str) -> Result<(), Error> {
    simple(
        sock,
        cmd::SWAP,
        0,
        a,
        Some(b),
        format!("swapping ipsets {a} and {b}"),
    )
}

/// Removes every element of a set.
pub fn flush(sock: &mut Socket, name: &str) -> Result<(), Error> {
    simple(
        sock,
        cmd::FLUSH,
        0,
        name,
        None,
        format!("flushing ipset {name}"),
    )
}

/// True if `addr` (with `cidr` for `hash:net`) is in the set (`ipset test`).
pub fn test(sock: &mut Socket, set: &str, addr: IpAddr, cidr: Option<u8>) -> Result<bool, Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(96);
    let m = begin(
        &mut buf,
        cmd::TEST,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        Some(set),
    );
    let e = Elem {
        addr,
        cidr,
        timeout: None,
        comment: None,
    };
    put_elem(&mut buf, &e);
    buf.end(m);
    let nacks = sock.transact(buf.as_bytes(), seq, 1)?;
    match nacks.first() {
        None => Ok(true),
        Some(n) if n.errno == err::EXIST => Ok(false),
        Some(n) => Err(error(
            format!("testing {addr} in ipset {set}"),
            n.errno,
            None,
        )),
    }
}

/// Every element of a set (`ipset list`).
pub fn members(sock: &mut Socket, name: &str) -> Result<Vec<Member>, Error> {
    let seq = sock.take_seqs(1);
    let mut buf = MsgBuf::with_capacity(96);
    let m = begin(
        &mut buf,
        cmd::LIST,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        Some(name),
    );
    buf.end(m);
    let mut out = Vec::new();
    sock.dump(buf.as_bytes(), seq, |msg| {
        if let Some(adt) = msg.attrs(NFGENMSG_LEN).get(attr::ADT) {
            for data in adt.attrs() {
                let mut member = Member {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    cidr: None,
                    timeout: None,
                    comment: None,
                };
                let mut ok = false;
                for a in data.attrs() {
                    match a.ty {
                        attr::IP => {
                            if let Some(ip) = parse_ip(&a) {
                                member.addr = ip;
                                ok = true;
                            }
                        }
                        attr::CIDR => member.cidr = a.u8(),
                        attr::TIMEOUT => member.timeout = a.u32_be(),
                        attr::COMMENT => member.comment = a.str().map(str::to_string),
                        _ => {}
                    }
                }
                if ok {
                    out.push(member);
                }
            }
        }
        Ok(())
    })
    .map_err(|e| error(format!("listing ipset {name}"), e.errno(), None))?;
    Ok(out)
}

/// Many element additions and deletions, sent with one `sendmsg` (see the
/// module docs for what that guarantees).
#[derive(Debug)]
pub struct Batch {
    buf: MsgBuf,
    /// Offset of every message in `buf`.
    offsets: Vec<u32>,
    /// The message being filled: its start, its ADT nest, op and set.
    open: Option<Open>,
    elements: usize,
}

#[derive(Debug, Clone)]
struct Open {
    m: MsgStart,
    adt: Nest,
    op: Op,
    set: String,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    /// An empty batch with a 4 KiB buffer.
    pub fn new() -> Batch {
        Batch::with_capacity(4096)
    }

    /// An empty batch whose buffer starts with room for `bytes` bytes (it grows
    /// as needed).
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch {
            buf: MsgBuf::with_capacity(bytes),
            offsets: Vec::new(),
            open: None,
            elements: 0,
        }
    }

    /// Elements queued.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Encoded size so far, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no element is queued.
    pub fn is_empty(&self) -> bool {
        self.elements == 0
    }

    /// Queues an add (`-exist`: refreshes the timeout and comment of an
    /// element that is there) or a delete (`-exist`: a missing element is
    /// no error) of `e` in `set`.
    pub fn push(&mut self, op: Op, set: &str, e: &Elem<'_>) {
        let len = elem_len(e);
        let reuse = matches!(&self.open, Some(o) if o.op == op && o.set == set
            && self.buf.nest_len(o.adt) + len <= MAX_ADT_NEST);
        if !reuse {
            self.close();
            let start = self.buf.len();
            self.offsets.push(start as u32);
            // Sequence numbers are patched in on send.
            let m = begin(
                &mut self.buf,
                op.cmd(),
                NLM_F_REQUEST | NLM_F_ACK,
                0,
                Some(set),
            );
            // The kernel insists on a LINENO with ADT containers; with 0
            // (and no per-element line numbers) a failure is reported as a
            // plain error ack.
            put_u32_net(&mut self.buf, attr::LINENO, 0);
            let adt = self.buf.nest(attr::ADT);
            self.open = Some(Open {
                m,
                adt,
                op,
                set: set.to_string(),
            });
        }
        put_elem(&mut self.buf, e);
        self.elements += 1;
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            self.buf.nest_end(o.adt);
            self.buf.end(o.m);
        }
    }

    /// Sends everything queued and empties the batch. Returns the elements
    /// the kernel refused (everything else was applied); an `Err` means the
    /// exchange itself failed (socket error), and the batch is left as it
    /// was.
    pub fn send(&mut self, sock: &mut Socket) -> Result<Vec<Failure>, Error> {
        self.close();
        if self.offsets.is_empty() {
            return Ok(Vec::new());
        }
        let count = self.offsets.len() as u32;
        let base = sock.take_seqs(count);
        for (i, off) in self.offsets.iter().enumerate() {
            set_seq(self.buf.bytes_mut(), *off as usize, base + i as u32);
        }
        let nacks = sock.transact(self.buf.as_bytes(), base, count)?;
        let mut failures = Vec::new();
        for n in nacks {
            let idx = n.seq.wrapping_sub(base) as usize;
            let Some(&off) = self.offsets.get(idx) else {
                return Err(error("ipset batch".into(), n.errno, None));
            };
            // The kernel stopped at the failing element of this message:
            // send its elements one by one to apply the rest and learn
            // exactly which ones fail.
            let bytes = &self.buf.as_bytes()[off as usize..];
            let msg = Msgs::new(bytes).next().expect("a message we built");
            failures.extend(retry_singly(sock, &msg)?);
        }
        self.buf.clear();
        self.offsets.clear();
        self.elements = 0;
        Ok(failures)
    }
}

fn set_seq(bytes: &mut [u8], msg_offset: usize, seq: u32) {
    bytes[msg_offset + 8..msg_offset + 12].copy_from_slice(&seq.to_ne_bytes());
}

/// Resends the elements of a failed multi-element message one per message.
fn retry_singly(sock: &mut Socket, msg: &crate::msg::Msg<'_>) -> Result<Vec<Failure>, Error> {
    let command = (msg.ty & 0xff) as u8;
    let op = if command == cmd::DEL {
        Op::Del
    } else {
        Op::Add
    };
    let attrs = msg.attrs(NFGENMSG_LEN);
    let set = attrs
        .get(attr::SETNAME)
        .and_then(|a| a.str())
        .unwrap_or_default()
        .to_string();
    let Some(adt) = attrs.get(attr::ADT) else {
        return Ok(Vec::new());
    };
    let datas: Vec<&[u8]> = adt.attrs().map(|d| d.data).collect();
    let base = sock.take_seqs(datas.len() as u32);
    let mut buf = MsgBuf::with_capacity(datas.len() * 96);
    for (i, data) in datas.iter().enumerate() {
        let m = begin(
            &mut buf,
            command,
            NLM_F_REQUEST | NLM_F_ACK,
            base + i as u32,
            Some(&set),
        );
        let d = buf.nest(attr::DATA);
        buf.extend_padded(data);
        buf.nest_end(d);
        buf.end(m);
    }
    let nacks = sock.transact(buf.as_bytes(), base, datas.len() as u32)?;
    let mut out = Vec::new();
    for n in nacks {
        let idx = n.seq.wrapping_sub(base) as usize;
        let Some(data) = datas.get(idx) else { continue };
        let mut addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let mut cidr = None;
        for a in Attrs::new(data) {
            match a.ty {
                attr::IP => addr = parse_ip(&a).unwrap_or(addr),
                attr::CIDR => cidr = a.u8(),
                _ => {}
            }
        }
        out.push(Failure {
            op,
            set: set.clone(),
            addr,
            cidr,
            code: n.errno,
        });
    }
    Ok(out)
}

/// An [`Error`] for an ipset failure: ipset's own codes (4096 and up) are
/// explained in the context and mapped to the closest errno.
fn error(context: String, code: i32, type_name: Option<&str>) -> Error {
    if code < err::PROTOCOL - 1 {
        return Error::new(context, code);
    }
    let errno = match code {
        err::EXIST | err::EXIST_SETNAME2 => libc::EEXIST,
        err::FIND_TYPE => libc::EOPNOTSUPP,
        err::BUSY | err::REFERENCED => libc::EBUSY,
        err::MAX_SETS => libc::ENOSPC,
        c if c >= err::TYPE_SPECIFIC => libc::ERANGE,
        _ => libc::EINVAL,
    };
    Error::new(format!("{context}: {}", explain(code, type_name)), errno)
}

/// What an errno or ipset error code means, for a set of type `type_name`
/// (type-specific codes differ between hash and bitmap types).
pub fn explain(code: i32, type_name: Option<&str>) -> String {
    let bitmap = type_name.is_some_and(|t| t.starts_with("bitmap:"));
    let text = match code {
        err::PROTOCOL => "the kernel rejected the message (IPSET_ERR_PROTOCOL)",
        err::FIND_TYPE => {
            "the kernel has no such set type (IPSET_ERR_FIND_TYPE): is the ip_set_* module available?"
        }
        err::MAX_SETS => "the kernel's limit of sets is reached (IPSET_ERR_MAX_SETS)",
        err::BUSY => {
            "the set is in use: an iptables rule or a list set refers to it (IPSET_ERR_BUSY)"
        }
        err::EXIST_SETNAME2 => "a set with the second name exists (IPSET_ERR_EXIST_SETNAME2)",
        err::TYPE_MISMATCH => "the sets' types differ (IPSET_ERR_TYPE_MISMATCH)",
        err::EXIST => "the element or set already exists, or is missing (IPSET_ERR_EXIST)",
        err::INVALID_CIDR => "the prefix length is not valid for this set (IPSET_ERR_INVALID_CIDR)",
        err::INVALID_NETMASK => "invalid netmask (IPSET_ERR_INVALID_NETMASK)",
        err::INVALID_FAMILY => "wrong address family for this set (IPSET_ERR_INVALID_FAMILY)",
        err::TIMEOUT => "the set has no timeout support (IPSET_ERR_TIMEOUT)",
        err::REFERENCED => {
            "the set is still used by an iptables rule or a list set (IPSET_ERR_REFERENCED)"
        }
        err::IPADDR_IPV4 => "an IPv4 address was expected (IPSET_ERR_IPADDR_IPV4)",
        err::IPADDR_IPV6 => "an IPv6 address was expected (IPSET_ERR_IPADDR_IPV6)",
        err::COMMENT => "the set has no comment support (IPSET_ERR_COMMENT)",
        err::BITMAP_RANGE if bitmap => {
            "the address is outside the set's range (IPSET_ERR_BITMAP_RANGE)"
        }
        err::BITMAP_RANGE_SIZE if bitmap => "the range is too large (IPSET_ERR_BITMAP_RANGE_SIZE)",
        err::HASH_FULL => "the set is full: it holds maxelem elements (IPSET_ERR_HASH_FULL)",
        err::HASH_ELEM => "the element cannot be added to this hash (IPSET_ERR_HASH_ELEM)",
        err::HASH_RANGE_UNSUPPORTED => {
            "this set type takes no ranges or networks (IPSET_ERR_HASH_RANGE_UNSUPPORTED)"
        }
        err::HASH_RANGE => "invalid range (IPSET_ERR_HASH_RANGE)",
        c if c < 4096 => return crate::error::explain(c),
        c => return format!("ipset error {c}"),
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_timeout_is_the_kernels() {
        assert_eq!(MAX_TIMEOUT_SECS, 2_147_483);
    }

    #[test]
    fn add_with_timeout_and_comment_matches_ipset_restore_bytes() {
        // `ipset add -exist foo 1.2.3.4 timeout 100 comment hi`, as an ADT
        // container (the DATA bytes strace shows, without per-element
        // LINENO).
        let mut b = Batch::new();
        b.push(
            Op::Add,
            "foo",
            &Elem {
                addr: "1.2.3.4".parse().unwrap(),
                cidr: None,
                timeout: Some(100),
                comment: Some("hi"),
            },
        );
        b.close();
        let msg = Msgs::new(b.buf.as_bytes()).next().unwrap();
        assert_eq!(msg.ty, (6 << 8) | 9);
        assert_eq!(
            msg.flags,
            NLM_F_REQUEST | NLM_F_ACK,
            "no NLM_F_EXCL: -exist"
        );
        let attrs = msg.attrs(NFGENMSG_LEN);
        assert_eq!(attrs.get(attr::PROTOCOL).unwrap().u8(), Some(7));
        assert_eq!(attrs.get(attr::SETNAME).unwrap().str(), Some("foo"));
        let adt = attrs.get(attr::ADT).unwrap();
        assert!(adt.nested);
        let data: Vec<_> = adt.attrs().collect();
        assert_eq!(data.len(), 1);
        // From strace: IP{IPADDR_IPV4 1.2.3.4}, TIMEOUT 100, COMMENT "hi".
        let want: &[u8] = b"\x0c\x00\x01\x80\x08\x00\x01\x40\x01\x02\x03\x04\x08\x00\x06\x40\x00\x00\x00\x64\x07\x00\x1a\x00\x68\x69\x00\x00";
        assert_eq!(data[0].data, want);
        assert_eq!(
            elem_len(&Elem {
                addr: "1.2.3.4".parse().unwrap(),
                cidr: None,
                timeout: Some(100),
                comment: Some("hi"),
            }),
            4 + want.len()
        );
    }

    #[test]
    fn messages_split_by_set_op_and_size() {
        let mut b = Batch::new();
        let e = Elem {
            addr: "2001:db8::1".parse().unwrap(),
            cidr: Some(64),
            timeout: Some(1),
            comment: None,
        };
        for _ in 0..3000 {
            b.push(Op::Add, "a", &e);
        }
        b.push(Op::Del, "a", &e);
        b.push(Op::Del, "b", &e);
        b.close();
        let msgs: Vec<_> = Msgs::new(b.buf.as_bytes()).collect();
        assert!(msgs.len() >= 4, "{}", msgs.len());
        let mut total = 0;
        for m in &msgs {
            let adt = m.attrs(NFGENMSG_LEN).get(attr::ADT).unwrap();
            assert!(adt.data.len() <= MAX_ADT_NEST);
            total += adt.attrs().count();
        }
        assert_eq!(total, 3002);
        assert_eq!(b.elements(), 3002);
    }

    #[test]
    fn ipset_codes_are_explained() {
        assert!(explain(err::HASH_FULL, Some("hash:ip")).contains("full"));
        assert!(explain(err::BITMAP_RANGE, Some("bitmap:ip")).contains("outside"));
        assert!(explain(err::REFERENCED, None).contains("iptables"));
        let e = error("adding to x".into(), err::HASH_FULL, Some("hash:ip"));
        assert_eq!(e.errno(), libc::ERANGE);
        assert!(e.to_string().contains("IPSET_ERR_HASH_FULL"), "{e}");
        assert_eq!(error("x".into(), libc::ENOENT, None).errno(), libc::ENOENT);
    }
}

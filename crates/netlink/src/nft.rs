//! nf_tables: batches of table, set, chain, rule and set element messages,
//! and dumps of set elements.
//!
//! Message layouts follow what `nft` 1.0.x sends (checked with
//! `nft --debug=mnl`), so `nft list ruleset` prints what palisade creates
//! exactly like the hand-written equivalent: sets carry nft's key byte-order
//! userdata, elements carry comments in nft's userdata TLV format, and
//! `ip saddr @set drop` is `meta nfproto` + `cmp` + `payload` + `lookup` +
//! `immediate`.

use std::net::IpAddr;

use crate::error::Error;
use crate::msg::{
    Attrs, Msg, MsgBuf, MsgStart, Msgs, NFGENMSG_LEN, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_REQUEST, Nest, ip_from_bytes,
};
use crate::socket::Socket;

/// nfnetlink subsystem of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Message type that opens a batch (one nf_tables transaction).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
/// Message type that closes a batch; the kernel commits on it.
pub const NFNL_MSG_BATCH_END: u16 = 17;

/// nf_tables message types (uapi `enum nf_tables_msg_types`, kernel 6.x;
/// the `DESTROY*` messages exist since 6.3).
pub mod msg {
    /// `NFT_MSG_NEWTABLE`: creates a table (no error if it exists without
    /// `NLM_F_EXCL`).
    pub const NEWTABLE: u8 = 0;
    /// `NFT_MSG_GETTABLE`: reads or dumps tables.
    pub const GETTABLE: u8 = 1;
    /// `NFT_MSG_DELTABLE`: deletes a table and everything in it.
    pub const DELTABLE: u8 = 2;
    /// `NFT_MSG_NEWCHAIN`: creates a chain.
    pub const NEWCHAIN: u8 = 3;
    /// `NFT_MSG_GETCHAIN`: reads or dumps chains.
    pub const GETCHAIN: u8 = 4;
    /// `NFT_MSG_DELCHAIN`: deletes a chain.
    pub const DELCHAIN: u8 = 5;
    /// `NFT_MSG_NEWRULE`: adds a rule.
    pub const NEWRULE: u8 = 6;
    /// `NFT_MSG_NEWSET`: creates a set.
    pub const NEWSET: u8 = 9;
    /// `NFT_MSG_NEWSETELEM`: adds set elements.
    pub const NEWSETELEM: u8 = 12;
    /// `NFT_MSG_GETSETELEM`: dumps a set's elements.
    pub const GETSETELEM: u8 = 13;
    /// `NFT_MSG_DELSETELEM`: deletes set elements (`ENOENT` for a missing one).
    pub const DELSETELEM: u8 = 14;
    /// `NFT_MSG_DESTROYTABLE`: deletes a table if it exists (Linux 6.3 and
    /// later).
    pub const DESTROYTABLE: u8 = 26;
    /// `NFT_MSG_DESTROYSETELEM`: deletes set elements, a missing one being no
    /// error (Linux 6.3 and later).
    pub const DESTROYSETELEM: u8 = 30;
}

/// Netfilter protocol families (`NFPROTO_*`), used as the nfgenmsg family.
pub mod family {
    /// `NFPROTO_INET`: tables that see IPv4 and IPv6 alike.
    pub const INET: u8 = 1;
    /// `NFPROTO_IPV4`: `ip` tables.
    pub const IPV4: u8 = 2;
    /// `NFPROTO_IPV6`: `ip6` tables.
    pub const IPV6: u8 = 10;
}

/// Set flags (`enum nft_set_flags`).
pub mod set_flags {
    /// `NFT_SET_INTERVAL`: elements are ranges (prefixes); every range is two
    /// elements, its start and its end with [`ELEM_INTERVAL_END`](super::ELEM_INTERVAL_END).
    pub const INTERVAL: u32 = 0x4;
    /// `NFT_SET_TIMEOUT`: elements may carry a timeout and expire.
    pub const TIMEOUT: u32 = 0x10;
}

/// `NFT_SET_ELEM_INTERVAL_END`: the element closes the interval before it.
pub const ELEM_INTERVAL_END: u32 = 0x1;

/// Netfilter verdicts for chain policies and rule actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `NF_DROP`: discard the packet.
    Drop,
    /// `NF_ACCEPT`: let the packet through (to the next chain or hook).
    Accept,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
        }
    }
}

/// Netfilter hooks of the inet family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING`: every incoming packet, before the routing
    /// decision.
    Prerouting,
    /// `NF_INET_LOCAL_IN`: packets for this host.
    Input,
    /// `NF_INET_FORWARD`: packets routed through this host.
    Forward,
    /// `NF_INET_LOCAL_OUT`: packets this host sends.
    Output,
    /// `NF_INET_POST_ROUTING`: every outgoing packet, after routing.
    Postrouting,
    /// The per-device ingress hook (inet family since Linux 5.10), before
    /// any IP processing; a chain on it names its device.
    Ingress,
}

impl Hook {
    fn num(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
            Hook::Ingress => 5,
        }
    }
}

/// Key type of an address set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// `ipv4_addr` (nft data type 7, 4 bytes).
    V4,
    /// `ipv6_addr` (nft data type 8, 16 bytes).
    V6,
}

impl AddrType {
    /// Length of a key in bytes: 4 for IPv4, 16 for IPv6.
    pub fn key_len(self) -> usize {
        match self {
            AddrType::V4 => 4,
            AddrType::V6 => 16,
        }
    }

    fn nft_type(self) -> u32 {
        match self {
            AddrType::V4 => 7,
            AddrType::V6 => 8,
        }
    }
}

// Attribute numbers (uapi nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_HOOK_DEV: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_GC_INTERVAL: u16 = 12;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

/// nftables userdata TLV types (libnftnl `udata.h`).
const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
/// nftables' `BYTEORDER_BIG_ENDIAN`.
const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// Longest comment stored with an element, in bytes (nft's userdata TLV
/// length is one byte, NUL included).
pub const MAX_COMMENT_LEN: usize = 200;

/// Upper bound for one `NFTA_SET_ELEM_LIST_ELEMENTS` nest. `nla_len` is a
/// u16, so a nest must stay below 64 KiB; a little headroom is kept.
pub const MAX_ELEMENTS_NEST: usize = 64_000;

/// One nf_tables transaction: `BATCH_BEGIN`, messages, `BATCH_END`, sent
/// with one `sendmsg` and applied by the kernel atomically (all or
/// nothing).
///
/// Every message carries `NLM_F_ACK`, so the kernel reports each failure;
/// [`Batch::send`] maps failures back to the message (and, where the kernel
/// points at an attribute, the set element) that caused them.
#[derive(Debug)]
pub struct Batch {
    buf: MsgBuf,
    first_seq: u32,
    next_seq: u32,
    /// Offset in `buf` of each message, indexed by `seq - first_seq - 1`.
    offsets: Vec<u32>,
    set_ids: u32,
}

impl Batch {
    /// An empty batch. Sequence numbers are taken from `sock` on send.
    pub fn new() -> Batch {
        Batch::with_capacity(4096)
    }

    /// An empty batch with room for `bytes` of messages.
    pub fn with_capacity(bytes: usize) -> Batch {
        let mut b = Batch {
            buf: MsgBuf::with_capacity(bytes + 64),
            first_seq: 0,
            next_seq: 1,
            offsets: Vec::new(),
            set_ids: 0,
        };
        let m = b.buf.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0);
        b.buf.nfgenmsg(0, NFNL_SUBSYS_NFTABLES);
        b.buf.end(m);
        b
    }

    /// Number of nf_tables messages (batch header and trailer excluded).
    pub fn messages(&self) -> usize {
        self.offsets.len()
    }

    /// Encoded size so far, in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if the batch holds no nf_tables message yet.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// A fresh id for a set created in this batch (`NFTA_SET_ID`), so that
    /// rules and elements of the same batch can refer to it.
    pub fn new_set_id(&mut self) -> u32 {
        self.set_ids += 1;
        self.set_ids
    }

    /// Starts an nf_tables message (`NLM_F_REQUEST | NLM_F_ACK | flags`).
    /// Sequence numbers are relative until [`Batch::send`] rebases them.
    pub fn begin(&mut self, ty: u8, family: u8, flags: u16) -> MsgStart {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.offsets.push(self.buf.len() as u32);
        let m = self.buf.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | ty as u16,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
        );
        self.buf.nfgenmsg(family, 0);
        m
    }

    /// The message buffer, to add attributes to the current message.
    pub fn buf(&mut self) -> &mut MsgBuf {
        &mut self.buf
    }

    /// Ends the message started with [`Batch::begin`], setting its length.
    pub fn end(&mut self, m: MsgStart) {
        self.buf.end(m);
    }

    /// Sends the batch as one transaction on `sock` and waits for the
    /// kernel's verdict. On failure the error names the first failing
    /// message (and element); the kernel has then applied nothing.
    pub fn send(mut self, sock: &mut Socket) -> Result<(), Error> {
        if self.offsets.is_empty() {
            return Ok(());
        }
        let count = self.offsets.len() as u32;
        // Two more for the batch header and trailer.
        let base = sock.take_seqs(count + 2);
        self.first_seq = base;
        let m = self
            .buf
            .begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, base + count + 1);
        self.buf.nfgenmsg(0, NFNL_SUBSYS_NFTABLES);
        self.buf.end(m);
        let bytes = self.buf_bytes_mut();
        set_seq(bytes, 0, base);
        let offsets = std::mem::take(&mut self.offsets);
        for (i, off) in offsets.iter().enumerate() {
            set_seq(self.buf_bytes_mut(), *off as usize, base + 1 + i as u32);
        }
        self.offsets = offsets;
        let mut nacks = sock.transact(self.buf.as_bytes(), base + 1, count)?;
        if nacks.is_empty() {
            return Ok(());
        }
        nacks.sort_by_key(|n| n.seq.wrapping_sub(base));
        let first = &nacks[0];
        let context = self.describe(first.seq, first.attr_offset);
        Err(Error::new(context, first.errno)
            .with_kernel_message(first.message.clone())
            .with_more(nacks.len() - 1))
    }

    fn buf_bytes_mut(&mut self) -> &mut [u8] {
        // MsgBuf exposes no mutable view publicly; patching sequence numbers
        // in place is this module's business only.
        self.buf.bytes_mut()
    }

    /// "NEWSETELEM inet palisade block4, element 198.18.0.5" for the message
    /// with sequence `seq`.
    fn describe(&self, seq: u32, attr_offset: Option<u32>) -> String {
        let idx = seq.wrapping_sub(self.first_seq + 1) as usize;
        let Some(&off) = self.offsets.get(idx) else {
            return "nf_tables transaction".to_string();
        };
        let bytes = &self.buf.as_bytes()[off as usize..];
        let Some(msg) = Msgs::new(bytes).next() else {
            return "nf_tables message".to_string();
        };
        describe_msg(&msg, attr_offset.map(|o| o as usize))
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

fn set_seq(bytes: &mut [u8], msg_offset: usize, seq: u32) {
    bytes[msg_offset + 8..msg_offset + 12].copy_from_slice(&seq.to_ne_bytes());
}

fn type_name(ty: u8) -> &'static str {
    match ty {
        msg::NEWTABLE => "NEWTABLE",
        msg::GETTABLE => "GETTABLE",
        msg::DELTABLE => "DELTABLE",
        msg::NEWCHAIN => "NEWCHAIN",
        msg::NEWRULE => "NEWRULE",
        msg::NEWSET => "NEWSET",
        msg::NEWSETELEM => "NEWSETELEM",
        msg::GETSETELEM => "GETSETELEM",
        msg::DELSETELEM => "DELSETELEM",
        msg::DESTROYTABLE => "DESTROYTABLE",
        msg::DESTROYSETELEM => "DESTROYSETELEM",
        _ => "nf_tables message",
    }
}

fn family_name(f: u8) -> &'static str {
    match f {
        family::INET => "inet",
        family::IPV4 => "ip",
        family::IPV6 => "ip6",
        _ => "?",
    }
}

/// Describes an nf_tables message for an error: its type, table, object,
/// and the set element that contains `bad_offset` (an offset from the start
/// of the message, as in a netlink extended ack).
fn describe_msg(msg: &Msg<'_>, bad_offset: Option<usize>) -> String {
    let ty = (msg.ty & 0xff) as u8;
    let mut s = format!("{} {}", type_name(ty), family_name(msg.nfgen_family()));
    let attrs = msg.attrs(NFGENMSG_LEN);
    // Table name is attribute 1 in every object type palisade sends.
    if let Some(t) = attrs.get(1).and_then(|a| a.str()) {
        s.push(' ');
        s.push_str(t);
    }
    let object = match ty {
        msg::NEWCHAIN => attrs.get(NFTA_CHAIN_NAME),
        msg::NEWRULE => attrs.get(NFTA_RULE_CHAIN),
        msg::NEWSET | msg::NEWSETELEM | msg::DELSETELEM | msg::DESTROYSETELEM => {
            attrs.get(NFTA_SET_NAME)
        }
        _ => None,
    };
    if let Some(o) = object.and_then(|a| a.str()) {
        s.push(' ');
        s.push_str(o);
    }
    if let (Some(bad), Some(list)) = (bad_offset, attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS)) {
        // Offsets in `attrs` are relative to the attributes' start, which
        // is the nlmsghdr plus the nfgenmsg.
        let attrs_start = crate::msg::NLMSG_HDRLEN + NFGENMSG_LEN;
        let list_data_start = attrs_start + list.offset + crate::msg::NLA_HDRLEN;
        for elem in list.attrs() {
            let start = list_data_start + elem.offset;
            let end = start + crate::msg::NLA_HDRLEN + elem.data.len();
            if (start..end).contains(&bad) {
                let el = parse_elem(elem.data);
                match el.key.and_then(ip_from_bytes) {
                    Some(ip) => s.push_str(&format!(", element {ip}")),
                    None => s.push_str(", element ?"),
                }
                if el.flags & ELEM_INTERVAL_END != 0 {
                    s.push_str(" (interval end)");
                }
                break;
            }
        }
    }
    s
}

/// Adds `NEWTABLE` (creates the table, or does nothing if it exists).
pub fn new_table(b: &mut Batch, family: u8, table: &str) {
    let m = b.begin(msg::NEWTABLE, family, NLM_F_CREATE);
    b.buf().put_str(NFTA_TABLE_NAME, table);
    b.buf().put_u32_be(NFTA_TABLE_FLAGS, 0);
    b.end(m);
}

/// Adds `DELTABLE` (deletes the table with everything in it; fails with
/// ENOENT if it does not exist, so precede it with [`new_table`] for "delete
/// if present" on any kernel).
pub fn del_table(b: &mut Batch, family: u8, table: &str) {
    let m = b.begin(msg::DELTABLE, family, 0);
    b.buf().put_str(NFTA_TABLE_NAME, table);
    b.end(m);
}

/// An address set.
#[derive(Debug, Clone, Copy)]
pub struct SetSpec<'a> {
    /// The set's name, unique in its table.
    pub name: &'a str,
    /// From [`Batch::new_set_id`].
    pub id: u32,
    /// Key type: IPv4 or IPv6 addresses.
    pub key: AddrType,
    /// [`set_flags`] bits.
    pub flags: u32,
    /// How often, in milliseconds, the kernel sweeps expired elements out
    /// of a set with [`set_flags::TIMEOUT`] (`NFTA_SET_GC_INTERVAL`; `nft`'s
    /// `gc-interval`). `None` leaves the kernel's default of one second.
    /// Expired elements never match in between; the sweep only frees them.
    pub gc_interval_ms: Option<u32>,
}

/// Adds `NEWSET`, as `nft` sends it for `set NAME { type ipv4_addr; flags
/// interval,timeout; }` (including the key byte-order userdata that makes
/// `nft list` print addresses), with `gc-interval` when the spec has one.
pub fn new_set(b: &mut Batch, family: u8, table: &str, set: &SetSpec<'_>) {
    let m = b.begin(msg::NEWSET, family, NLM_F_CREATE);
    let buf = b.buf();
    buf.put_str(NFTA_SET_TABLE, table);
    buf.put_str(NFTA_SET_NAME, set.name);
    buf.put_u32_be(NFTA_SET_FLAGS, set.flags);
    buf.put_u32_be(NFTA_SET_KEY_TYPE, set.key.nft_type());
    buf.put_u32_be(NFTA_SET_KEY_LEN, set.key.key_len() as u32);
    buf.put_u32_be(NFTA_SET_ID, set.id);
    if let Some(ms) = set.gc_interval_ms {
        buf.put_u32_be(NFTA_SET_GC_INTERVAL, ms);
    }
    let mut udata = [0u8; 6];
    udata[0] = NFTNL_UDATA_SET_KEYBYTEORDER;
    udata[1] = 4;
    udata[2..].copy_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
    buf.put(NFTA_SET_USERDATA, &udata);
    b.end(m);
}

/// A base chain of type `filter`.
#[derive(Debug, Clone, Copy)]
pub struct ChainSpec<'a> {
    /// The chain's name, unique in its table.
    pub name: &'a str,
    /// The hook the chain is attached to.
    pub hook: Hook,
    /// Priority among the chains of the same hook: lower runs first (`filter`
    /// is 0, `raw` -300).
    pub priority: i32,
    /// What happens to a packet that no rule of the chain decided on.
    pub policy: Verdict,
    /// The interface of an [`Hook::Ingress`] chain; `None` for the others.
    pub device: Option<&'a str>,
}

/// Adds `NEWCHAIN` for a base filter chain.
pub fn new_chain(b: &mut Batch, family: u8, table: &str, chain: &ChainSpec<'_>) {
    let m = b.begin(msg::NEWCHAIN, family, NLM_F_CREATE);
    let buf = b.buf();
    buf.put_str(NFTA_CHAIN_TABLE, table);
    buf.put_str(NFTA_CHAIN_NAME, chain.name);
    buf.put_str(NFTA_CHAIN_TYPE, "filter");
    buf.put_u32_be(NFTA_CHAIN_POLICY, chain.policy.code());
    let hook = buf.nest(NFTA_CHAIN_HOOK);
    buf.put_u32_be(NFTA_HOOK_HOOKNUM, chain.hook.num());
    buf.put_u32_be(NFTA_HOOK_PRIORITY, chain.priority as u32);
    if let Some(device) = chain.device {
        buf.put_str(NFTA_HOOK_DEV, device);
    }
    buf.nest_end(hook);
    b.end(m);
}

/// Adds `NEWRULE` appending `ip saddr @SET VERDICT` (or `ip6 saddr`, by the
/// set's key type) to `chain` of an inet table.
pub fn new_saddr_rule(
    b: &mut Batch,
    table: &str,
    chain: &str,
    set: &SetSpec<'_>,
    verdict: Verdict,
) {
    let m = b.begin(msg::NEWRULE, family::INET, NLM_F_CREATE | NLM_F_APPEND);
    let buf = b.buf();
    buf.put_str(NFTA_RULE_TABLE, table);
    buf.put_str(NFTA_RULE_CHAIN, chain);
    let exprs = buf.nest(NFTA_RULE_EXPRESSIONS);
    let (nfproto, offset) = match set.key {
        AddrType::V4 => (family::IPV4, 12), // iphdr.saddr
        AddrType::V6 => (family::IPV6, 8),  // ipv6hdr.saddr
    };
    // meta load nfproto => reg 1
    let e = expr_begin(buf, "meta");
    buf.put_u32_be(NFTA_META_KEY, NFT_META_NFPROTO);
    buf.put_u32_be(NFTA_META_DREG, NFT_REG_1);
    expr_end(buf, e);
    // cmp eq reg 1 <nfproto>
    let e = expr_begin(buf, "cmp");
    buf.put_u32_be(NFTA_CMP_SREG, NFT_REG_1);
    buf.put_u32_be(NFTA_CMP_OP, 0); // NFT_CMP_EQ
    let d = buf.nest(NFTA_CMP_DATA);
    buf.put(NFTA_DATA_VALUE, &[nfproto]);
    buf.nest_end(d);
    expr_end(buf, e);
    // payload load <len>b @ network header + <offset> => reg 1
    let e = expr_begin(buf, "payload");
    buf.put_u32_be(NFTA_PAYLOAD_DREG, NFT_REG_1);
    buf.put_u32_be(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
    buf.put_u32_be(NFTA_PAYLOAD_OFFSET, offset);
    buf.put_u32_be(NFTA_PAYLOAD_LEN, set.key.key_len() as u32);
    expr_end(buf, e);
    // lookup reg 1 set <name>
    let e = expr_begin(buf, "lookup");
    buf.put_u32_be(NFTA_LOOKUP_SREG, NFT_REG_1);
    buf.put_str(NFTA_LOOKUP_SET, set.name);
    buf.put_u32_be(NFTA_LOOKUP_SET_ID, set.id);
    expr_end(buf, e);
    // immediate reg 0 <verdict>
    let e = expr_begin(buf, "immediate");
    buf.put_u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
    let d = buf.nest(NFTA_IMMEDIATE_DATA);
    let v = buf.nest(NFTA_DATA_VERDICT);
    buf.put_u32_be(NFTA_VERDICT_CODE, verdict.code());
    buf.nest_end(v);
    buf.nest_end(d);
    expr_end(buf, e);
    buf.nest_end(exprs);
    b.end(m);
}

/// Adds the two rules that report connection attempts to NFLOG `group` for
/// port-probe detection, appended to `chain` of an inet table:
///
/// ```text
/// iifname != "lo" tcp flags syn / fin,syn,rst,ack limit rate R/second burst 2R packets log group G
/// iifname != "lo" meta l4proto udp ct state new limit rate R/second burst 2R packets log group G
/// ```
///
/// The expressions are the ones `nft` itself emits for these rules, so
/// `nft list` prints them exactly as written above. The limit bounds what a
/// flood can cost; userspace decides which ports count (open ones never do).
pub fn new_probe_log_rules(b: &mut Batch, table: &str, chain: &str, group: u16, per_second: u32) {
    const NFT_META_IIFNAME: u32 = 6;
    const NFT_META_L4PROTO: u32 = 16;
    const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
    const NFT_CT_STATE: u32 = 0;
    const NFT_CT_STATE_NEW: u32 = 8;
    const NFT_CMP_EQ: u32 = 0;
    const NFT_CMP_NEQ: u32 = 1;
    const NFTA_BITWISE_SREG: u16 = 1;
    const NFTA_BITWISE_DREG: u16 = 2;
    const NFTA_BITWISE_LEN: u16 = 3;
    const NFTA_BITWISE_MASK: u16 = 4;
    const NFTA_BITWISE_XOR: u16 = 5;
    const NFTA_CT_DREG: u16 = 1;
    const NFTA_CT_KEY: u16 = 2;
    const NFTA_LIMIT_RATE: u16 = 1;
    const NFTA_LIMIT_UNIT: u16 = 2;
    const NFTA_LIMIT_BURST: u16 = 3;
    const NFTA_LIMIT_TYPE: u16 = 4;
    const NFTA_LIMIT_FLAGS: u16 = 5;
    const NFTA_LOG_GROUP: u16 = 1;
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn meta(buf: &mut MsgBuf, key: u32) {
        let e = expr_begin(buf, "meta");
        buf.put_u32_be(NFTA_META_KEY, key);
        buf.put_u32_be(NFTA_META_DREG, NFT_REG_1);
        expr_end(buf, e);
    }
    fn cmp(buf: &mut MsgBuf, op: u32, data: &[u8]) {
        let e = expr_begin(buf, "cmp");
        buf.put_u32_be(NFTA_CMP_SREG, NFT_REG_1);
        buf.put_u32_be(NFTA_CMP_OP, op);
        let d = buf.nest(NFTA_CMP_DATA);
        buf.put(NFTA_DATA_VALUE, data);
        buf.nest_end(d);
        expr_end(buf, e);
    }
    fn bitwise(buf: &mut MsgBuf, mask: &[u8]) {
        let e = expr_begin(buf, "bitwise");
        buf.put_u32_be(NFTA_BITWISE_SREG, NFT_REG_1);
        buf.put_u32_be(NFTA_BITWISE_DREG, NFT_REG_1);
        buf.put_u32_be(NFTA_BITWISE_LEN, mask.len() as u32);
        let m = buf.nest(NFTA_BITWISE_MASK);
        buf.put(NFTA_DATA_VALUE, mask);
        buf.nest_end(m);
        let x = buf.nest(NFTA_BITWISE_XOR);
        buf.put(NFTA_DATA_VALUE, &vec![0u8; mask.len()]);
        buf.nest_end(x);
        expr_end(buf, e);
    }

    for proto in [TCP, UDP] {
        let m = b.begin(msg::NEWRULE, family::INET, NLM_F_CREATE | NLM_F_APPEND);
        let buf = b.buf();
        buf.put_str(NFTA_RULE_TABLE, table);
        buf.put_str(NFTA_RULE_CHAIN, chain);
        let exprs = buf.nest(NFTA_RULE_EXPRESSIONS);
        // iifname != "lo"
        meta(buf, NFT_META_IIFNAME);
        let mut lo = [0u8; 16];
        lo[..2].copy_from_slice(b"lo");
        cmp(buf, NFT_CMP_NEQ, &lo);
        // meta l4proto PROTO
        meta(buf, NFT_META_L4PROTO);
        cmp(buf, NFT_CMP_EQ, &[proto]);
        if proto == TCP {
            // tcp flags & (fin|syn|rst|ack) == syn
            let e = expr_begin(buf, "payload");
            buf.put_u32_be(NFTA_PAYLOAD_DREG, NFT_REG_1);
            buf.put_u32_be(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
            buf.put_u32_be(NFTA_PAYLOAD_OFFSET, 13);
            buf.put_u32_be(NFTA_PAYLOAD_LEN, 1);
            expr_end(buf, e);
            bitwise(buf, &[0x17]);
            cmp(buf, NFT_CMP_EQ, &[0x02]);
        } else {
            // ct state new (the state is a host-endian bit mask)
            let e = expr_begin(buf, "ct");
            buf.put_u32_be(NFTA_CT_KEY, NFT_CT_STATE);
            buf.put_u32_be(NFTA_CT_DREG, NFT_REG_1);
            expr_end(buf, e);
            bitwise(buf, &NFT_CT_STATE_NEW.to_ne_bytes());
            cmp(buf, NFT_CMP_NEQ, &0u32.to_ne_bytes());
        }
        let e = expr_begin(buf, "limit");
        buf.put_u64_be(NFTA_LIMIT_RATE, u64::from(per_second));
        buf.put_u64_be(NFTA_LIMIT_UNIT, 1);
        buf.put_u32_be(NFTA_LIMIT_BURST, per_second.saturating_mul(2));
        buf.put_u32_be(NFTA_LIMIT_TYPE, 0); // packets
        buf.put_u32_be(NFTA_LIMIT_FLAGS, 0);
        expr_end(buf, e);
        let e = expr_begin(buf, "log");
        buf.put_u16_be(NFTA_LOG_GROUP, group);
        expr_end(buf, e);
        buf.nest_end(exprs);
        b.end(m);
    }
}

/// Opens `NFTA_LIST_ELEM { NFTA_EXPR_NAME name, NFTA_EXPR_DATA { ... } }`.
fn expr_begin(buf: &mut MsgBuf, name: &str) -> (Nest, Nest) {
    let elem = buf.nest(NFTA_LIST_ELEM);
    buf.put_str(NFTA_EXPR_NAME, name);
    let data = buf.nest(NFTA_EXPR_DATA);
    (elem, data)
}

fn expr_end(buf: &mut MsgBuf, (elem, data): (Nest, Nest)) {
    buf.nest_end(data);
    buf.nest_end(elem);
}

/// What to do with set elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    /// `NEWSETELEM` without `NLM_F_EXCL`: adds, or (kernel 6.10+) refreshes
    /// the timeout of an element that exists.
    Add,
    /// `DELSETELEM`: fails with ENOENT if the element is missing.
    Delete,
    /// `DESTROYSETELEM` (kernel 6.3+): deletes, ignoring missing elements.
    Destroy,
}

impl ElemOp {
    fn msg_type(self) -> u8 {
        match self {
            ElemOp::Add => msg::NEWSETELEM,
            ElemOp::Delete => msg::DELSETELEM,
            ElemOp::Destroy => msg::DESTROYSETELEM,
        }
    }
}

/// Writes set elements straight into a batch, starting a new
/// `NEWSETELEM`/`DELSETELEM`/`DESTROYSETELEM` message whenever the element
/// list nest would reach 64 KiB. All messages stay in the same batch, so the
/// kernel applies them as one transaction.
#[derive(Debug)]
pub struct ElemWriter<'b, 's> {
    batch: &'b mut Batch,
    op: ElemOp,
    family: u8,
    table: &'s str,
    set: &'s str,
    set_id: Option<u32>,
    open: Option<(MsgStart, Nest)>,
    written: usize,
    /// Also send each timeout as the element's expiration.
    expiring: bool,
}

impl<'b, 's> ElemWriter<'b, 's> {
    /// Elements of `set` in `table`; pass `set_id` when the set is created
    /// in the same batch.
    pub fn new(
        batch: &'b mut Batch,
        op: ElemOp,
        family: u8,
        table: &'s str,
        set: &'s str,
        set_id: Option<u32>,
    ) -> ElemWriter<'b, 's> {
        ElemWriter {
            batch,
            op,
            family,
            table,
            set,
            set_id,
            open: None,
            written: 0,
            expiring: false,
        }
    }

    /// Also sends each element's timeout as its expiration, so that adding
    /// an element that exists moves its expiry. Kernels 6.10+ update an
    /// existing element's timeout in place, but only when the timeout
    /// differs from the element's old one: a repeat of the same length
    /// would otherwise leave the expiry where it was (seen on 6.18).
    pub fn expiring(mut self) -> Self {
        self.expiring = true;
        self
    }

    /// Number of elements written.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Makes sure an element of `elem_len` bytes fits in the open list,
    /// starting a new message if needed.
    fn room_for(&mut self, elem_len: usize) {
        if let Some((m, nest)) = self.open {
            if self.batch.buf.nest_len(nest) + elem_len <= MAX_ELEMENTS_NEST {
                return;
            }
            self.batch.buf.nest_end(nest);
            self.batch.end(m);
        }
        let m = self.batch.begin(self.op.msg_type(), self.family, 0);
        let buf = &mut self.batch.buf;
        buf.put_str(NFTA_SET_ELEM_LIST_TABLE, self.table);
        buf.put_str(NFTA_SET_ELEM_LIST_SET, self.set);
        if let Some(id) = self.set_id {
            buf.put_u32_be(NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        let nest = buf.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        self.open = Some((m, nest));
    }

    /// Writes one element: `key` (network byte order), `flags`
    /// ([`ELEM_INTERVAL_END`]), a timeout in milliseconds (`None`: no
    /// timeout; must not be `Some(0)`, which the kernel reads as "none"), and
    /// a comment (cut to [`MAX_COMMENT_LEN`] bytes).
    pub fn push(&mut self, key: &[u8], flags: u32, timeout_ms: Option<u64>, comment: Option<&str>) {
        debug_assert!(timeout_ms != Some(0), "a zero timeout means no timeout");
        let comment = comment.map(|c| truncate(c, MAX_COMMENT_LEN));
        let elem_len = 4
            + 8 + crate::msg::align(key.len()) // KEY { DATA_VALUE }
            + if flags != 0 { 8 } else { 0 }
            + match (timeout_ms, self.expiring) {
                (None, _) => 0,
                (Some(_), false) => 12,
                (Some(_), true) => 24,
            }
            + comment.map_or(0, |c| 4 + crate::msg::align(3 + c.len()));
        self.room_for(elem_len);
        let buf = &mut self.batch.buf;
        let elem = buf.nest(NFTA_LIST_ELEM);
        if let Some(t) = timeout_ms {
            buf.put_u64_be(NFTA_SET_ELEM_TIMEOUT, t);
            if self.expiring {
                buf.put_u64_be(NFTA_SET_ELEM_EXPIRATION, t);
            }
        }
        if flags != 0 {
            buf.put_u32_be(NFTA_SET_ELEM_FLAGS, flags);
        }
        let k = buf.nest(NFTA_SET_ELEM_KEY);
        buf.put(NFTA_DATA_VALUE, key);
        buf.nest_end(k);
        if let Some(c) = comment {
            put_comment(buf, c);
        }
        buf.nest_end(elem);
        self.written += 1;
    }

    /// Writes the interval `[start, end]` (both inclusive) the way `nft`
    /// does: a start element, then an end element keyed `end + 1` with
    /// [`ELEM_INTERVAL_END`]; no end element when `end` is the last address
    /// (the interval then runs to the end of the address space). Timeout and
    /// comment go on the start element.
    pub fn push_interval(
        &mut self,
        start: &[u8],
        end: &[u8],
        timeout_ms: Option<u64>,
        comment: Option<&str>,
    ) {
        debug_assert_eq!(start.len(), end.len());
        self.push(start, 0, timeout_ms, comment);
        let mut after = [0u8; 16];
        let after = &mut after[..end.len()];
        after.copy_from_slice(end);
        if increment(after) {
            self.push(after, ELEM_INTERVAL_END, None, None);
        }
    }

    /// Closes the last message. Also done on drop.
    pub fn finish(mut self) -> usize {
        self.close();
        self.written
    }

    fn close(&mut self) {
        if let Some((m, nest)) = self.open.take() {
            self.batch.buf.nest_end(nest);
            self.batch.end(m);
        }
    }
}

impl Drop for ElemWriter<'_, '_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Adds 1 to a big-endian number in place; false if it overflowed.
fn increment(bytes: &mut [u8]) -> bool {
    for b in bytes.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return true;
        }
    }
    false
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

/// `NFTA_SET_ELEM_USERDATA` with one comment TLV, as `nft` writes it.
fn put_comment(buf: &mut MsgBuf, comment: &str) {
    let mut udata = [0u8; 2 + MAX_COMMENT_LEN + 1];
    let len = comment.len() + 1;
    udata[0] = NFTNL_UDATA_SET_ELEM_COMMENT;
    udata[1] = len as u8;
    udata[2..2 + comment.len()].copy_from_slice(comment.as_bytes());
    buf.put(NFTA_SET_ELEM_USERDATA, &udata[..2 + len]);
}

/// A set element as the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElemRef<'a> {
    /// The key bytes (an address, network order), if the element has one.
    pub key: Option<&'a [u8]>,
    /// `NFT_SET_ELEM_*` flags, such as [`ELEM_INTERVAL_END`].
    pub flags: u32,
    /// The timeout it was given, in ms.
    pub timeout_ms: Option<u64>,
    /// Time left before it expires, in ms.
    pub expires_ms: Option<u64>,
    /// The comment stored in the element's userdata, if any.
    pub comment: Option<&'a str>,
}

impl ElemRef<'_> {
    /// True if the element closes an interval rather than opening one.
    pub fn is_interval_end(&self) -> bool {
        self.flags & ELEM_INTERVAL_END != 0
    }

    /// The key as an address, for 4- and 16-byte keys.
    pub fn addr(&self) -> Option<IpAddr> {
        self.key.and_then(ip_from_bytes)
    }
}

fn parse_elem(data: &[u8]) -> ElemRef<'_> {
    let mut e = ElemRef::default();
    for a in Attrs::new(data) {
        match a.ty {
            NFTA_SET_ELEM_KEY => e.key = a.attrs().get(NFTA_DATA_VALUE).map(|v| v.data),
            NFTA_SET_ELEM_FLAGS => e.flags = a.u32_be().unwrap_or(0),
            NFTA_SET_ELEM_TIMEOUT => e.timeout_ms = a.u64_be(),
            NFTA_SET_ELEM_EXPIRATION => e.expires_ms = a.u64_be(),
            NFTA_SET_ELEM_USERDATA => e.comment = parse_comment(a.data),
            _ => {}
        }
    }
    e
}

fn parse_comment(udata: &[u8]) -> Option<&str> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_SET_ELEM_COMMENT {
            let value = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(value).ok();
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Calls `each` for every element of a set, in the kernel's order (for
/// interval sets: start and end elements, highest key first).
///
/// If the set changes while it is read, the kernel flags the dump as
/// inconsistent and this returns an `EINTR` error after `each` has seen a
/// possibly incomplete list: start over then.
pub fn dump_set_elems<F>(
    sock: &mut Socket,
    family: u8,
    table: &str,
    set: &str,
    mut each: F,
) -> Result<(), Error>
where
    F: FnMut(&ElemRef<'_>),
{
    let mut req = MsgBuf::with_capacity(128);
    let seq = sock.take_seqs(1);
    let m = req.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | msg::GETSETELEM as u16,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    req.nfgenmsg(family, 0);
    req.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    req.put_str(NFTA_SET_ELEM_LIST_SET, set);
    req.end(m);
    sock.dump(req.as_bytes(), seq, |msg| {
        if let Some(list) = msg.attrs(NFGENMSG_LEN).get(NFTA_SET_ELEM_LIST_ELEMENTS) {
            for el in list.attrs() {
                each(&parse_elem(el.data));
            }
        }
        Ok(())
    })
    .map_err(|e| {
        Error::new(
            format!(
                "listing elements of set {} {table} {set}",
                family_name(family)
            ),
            e.errno(),
        )
        .with_kernel_message(e.kernel_message().map(str::to_string))
    })
}

/// Whether `table` exists (`GETTABLE`).
pub fn table_exists(sock: &mut Socket, family: u8, table: &str) -> Result<bool, Error> {
    exists(
        sock,
        msg::GETTABLE,
        family,
        &[(NFTA_TABLE_NAME, table)],
        &format!("table {} {table}", family_name(family)),
    )
}

/// Whether `chain` exists in `table` (`GETCHAIN`).
pub fn chain_exists(
    sock: &mut Socket,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<bool, Error> {
    exists(
        sock,
        msg::GETCHAIN,
        family,
        &[(NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, chain)],
        &format!("chain {} {table} {chain}", family_name(family)),
    )
}

/// Sends one `GET*` request for an object named by `attrs`: found, or
/// ENOENT (a missing table answers ENOENT for its chains too).
fn exists(
    sock: &mut Socket,
    ty: u8,
    family: u8,
    attrs: &[(u16, &str)],
    what: &str,
) -> Result<bool, Error> {
    let mut req = MsgBuf::with_capacity(128);
    let seq = sock.take_seqs(1);
    let m = req.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | ty as u16,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    req.nfgenmsg(family, 0);
    for (attr, value) in attrs {
        req.put_str(*attr, value);
    }
    req.end(m);
    let nacks = sock.transact(req.as_bytes(), seq, 1)?;
    match nacks.first() {
        None => Ok(true),
        Some(n) if n.errno == libc::ENOENT => Ok(false),
        Some(n) => Err(Error::new(format!("looking up {what}"), n.errno)
            .with_kernel_message(n.message.clone())),
    }
}

/// Adds `DELCHAIN` (deletes the chain with its rules; fails with ENOENT if
/// it does not exist).
pub fn del_chain(b: &mut Batch, family: u8, table: &str, chain: &str) {
    let m = b.begin(msg::DELCHAIN, family, 0);
    b.buf().put_str(NFTA_CHAIN_TABLE, table);
    b.buf().put_str(NFTA_CHAIN_NAME, chain);
    b.end(m);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements_of(batch: &Batch) -> Vec<(u16, usize, usize)> {
        // (message type, nest length, elements in it)
        Msgs::new(batch.buf.as_bytes())
            .filter(|m| m.ty >> 8 == NFNL_SUBSYS_NFTABLES)
            .filter_map(|m| {
                let list = m.attrs(NFGENMSG_LEN).get(NFTA_SET_ELEM_LIST_ELEMENTS)?;
                Some((m.ty & 0xff, list.data.len() + 4, list.attrs().count()))
            })
            .collect()
    }

    #[test]
    fn element_lists_are_split_below_64k_in_one_batch() {
        let mut b = Batch::new();
        let mut w = ElemWriter::new(
            &mut b,
            ElemOp::Add,
            family::INET,
            "palisade",
            "block4",
            None,
        );
        for i in 0..100_000u32 {
            let a = (0xc612_0000u32 + 2 * i).to_be_bytes();
            w.push_interval(&a, &a, Some(3_600_000), Some("sshd"));
        }
        assert_eq!(w.finish(), 200_000);
        let lists = elements_of(&b);
        assert!(lists.len() > 100, "{} messages", lists.len());
        assert!(
            lists
                .iter()
                .all(|(ty, len, _)| *ty == msg::NEWSETELEM as u16 && *len <= MAX_ELEMENTS_NEST)
        );
        assert_eq!(lists.iter().map(|l| l.2).sum::<usize>(), 200_000);
        assert_eq!(b.messages(), lists.len());
        // Nests are filled: all but the last are within one element of the
        // limit.
        assert!(
            lists[..lists.len() - 1]
                .iter()
                .all(|l| l.1 > MAX_ELEMENTS_NEST - 100)
        );
    }

    #[test]
    fn interval_element_golden_bytes() {
        // nft add element inet palisade block4 { 198.18.0.9 timeout 1h
        // comment "hi" }, as `nft --debug=mnl` shows it (attributes of the
        // element list only).
        let mut b = Batch::new();
        let mut w = ElemWriter::new(
            &mut b,
            ElemOp::Add,
            family::INET,
            "palisade",
            "block4",
            Some(1),
        );
        w.push_interval(
            &[198, 18, 0, 9],
            &[198, 18, 0, 9],
            Some(3_600_000),
            Some("hi"),
        );
        w.finish();
        let m = Msgs::new(b.buf.as_bytes()).nth(1).unwrap();
        assert_eq!(m.ty, 0x0a0c);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let list = m
            .attrs(NFGENMSG_LEN)
            .get(NFTA_SET_ELEM_LIST_ELEMENTS)
            .unwrap();
        let mut want: Vec<u8> = Vec::new();
        let mut put = |len: u16, ty: u16, data: &[u8]| {
            want.extend_from_slice(&len.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
            want.extend_from_slice(data);
        };
        put(40, 0x8001, &[]);
        put(12, 4, &3_600_000u64.to_be_bytes());
        put(12, 0x8001, &[]);
        put(8, 1, &[0xc6, 0x12, 0x00, 0x09]);
        put(9, 6, &[0x00, 0x03, b'h', b'i', 0x00, 0, 0, 0]);
        put(24, 0x8001, &[]);
        put(8, 3, &[0, 0, 0, 1]);
        put(12, 0x8001, &[]);
        put(8, 1, &[0xc6, 0x12, 0x00, 0x0a]);
        assert_eq!(list.data, &want[..]);
    }

    #[test]
    fn rule_matches_nft_encoding() {
        let mut b = Batch::new();
        let set = SetSpec {
            name: "block4",
            id: 1,
            key: AddrType::V4,
            flags: set_flags::INTERVAL | set_flags::TIMEOUT,
            gc_interval_ms: None,
        };
        new_saddr_rule(&mut b, "palisade", "input", &set, Verdict::Drop);
        let m = Msgs::new(b.buf.as_bytes()).nth(1).unwrap();
        assert_eq!(m.ty, 0x0a06);
        // Same length as nft's message for `ip saddr @block4 drop`.
        assert_eq!(m.payload.len() + 16, 280);
        let exprs = m.attrs(NFGENMSG_LEN).get(NFTA_RULE_EXPRESSIONS).unwrap();
        let names: Vec<&str> = exprs
            .attrs()
            .map(|e| e.attrs().get(NFTA_EXPR_NAME).unwrap().str().unwrap())
            .collect();
        assert_eq!(names, ["meta", "cmp", "payload", "lookup", "immediate"]);
    }

    #[test]
    fn set_matches_nft_encoding() {
        let mut b = Batch::new();
        let set = SetSpec {
            name: "block4",
            id: 1,
            key: AddrType::V4,
            flags: set_flags::INTERVAL | set_flags::TIMEOUT,
            gc_interval_ms: None,
        };
        new_set(&mut b, family::INET, "palisade", &set);
        let m = Msgs::new(b.buf.as_bytes()).nth(1).unwrap();
        assert_eq!(m.payload.len() + 16, 92, "nft sends 92 bytes");
        let a = m.attrs(NFGENMSG_LEN);
        assert_eq!(a.get(NFTA_SET_FLAGS).unwrap().u32_be(), Some(0x14));
        assert_eq!(a.get(NFTA_SET_KEY_TYPE).unwrap().u32_be(), Some(7));
        assert_eq!(a.get(NFTA_SET_USERDATA).unwrap().data, &[0, 4, 2, 0, 0, 0]);
        assert!(a.get(NFTA_SET_GC_INTERVAL).is_none());
        // With an interval: 8 bytes more, as nft sends `gc-interval 30s`.
        let mut b = Batch::new();
        let swept = SetSpec {
            gc_interval_ms: Some(30_000),
            ..set
        };
        new_set(&mut b, family::INET, "palisade", &swept);
        let m = Msgs::new(b.buf.as_bytes()).nth(1).unwrap();
        assert_eq!(m.payload.len() + 16, 100);
        let a = m.attrs(NFGENMSG_LEN);
        assert_eq!(a.get(NFTA_SET_GC_INTERVAL).unwrap().u32_be(), Some(30_000));
    }

    #[test]
    fn error_description_points_at_the_element() {
        let mut b = Batch::new();
        {
            let mut w = ElemWriter::new(
                &mut b,
                ElemOp::Add,
                family::INET,
                "palisade",
                "block4",
                None,
            );
            w.push_interval(&[198, 18, 0, 1], &[198, 18, 0, 1], None, None);
            w.push_interval(&[198, 18, 0, 5], &[198, 18, 0, 5], None, None);
        }
        b.first_seq = 100;
        let m = Msgs::new(&b.buf.as_bytes()[b.offsets[0] as usize..])
            .next()
            .unwrap();
        let list = m
            .attrs(NFGENMSG_LEN)
            .get(NFTA_SET_ELEM_LIST_ELEMENTS)
            .unwrap();
        let third = list.attrs().nth(2).unwrap();
        let off = 16 + 4 + list.offset + 4 + third.offset + 6;
        assert_eq!(
            b.describe(101, Some(off as u32)),
            "NEWSETELEM inet palisade block4, element 198.18.0.5"
        );
        let fourth = list.attrs().nth(3).unwrap();
        let off = 16 + 4 + list.offset + 4 + fourth.offset;
        assert_eq!(
            b.describe(101, Some(off as u32)),
            "NEWSETELEM inet palisade block4, element 198.18.0.6 (interval end)"
        );
        assert_eq!(b.describe(101, None), "NEWSETELEM inet palisade block4");
        assert_eq!(b.describe(100, None), "nf_tables transaction");
    }

    #[test]
    fn increments_and_top_of_range() {
        let mut a = [0, 0, 0, 255];
        assert!(increment(&mut a));
        assert_eq!(a, [0, 0, 1, 0]);
        let mut a = [255; 4];
        assert!(!increment(&mut a));
        let mut b = Batch::new();
        let mut w = ElemWriter::new(&mut b, ElemOp::Add, family::INET, "t", "s", None);
        w.push_interval(&[255, 0, 0, 0], &[255, 255, 255, 255], None, None);
        assert_eq!(w.finish(), 1, "no end element past the last address");
    }

    #[test]
    fn comments_are_cut_and_parsed_back() {
        let long = "é".repeat(300);
        let mut buf = MsgBuf::new();
        put_comment(&mut buf, truncate(&long, MAX_COMMENT_LEN));
        let a = Attrs::new(buf.as_bytes()).next().unwrap();
        let c = parse_comment(a.data).unwrap();
        assert_eq!(c.len(), MAX_COMMENT_LEN);
        assert!(long.starts_with(c));
    }
}

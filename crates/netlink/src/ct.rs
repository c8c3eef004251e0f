//! Conntrack (ctnetlink): list entries and delete them by original tuple.

use std::net::IpAddr;

use crate::error::Error;
use crate::msg::{Attrs, MsgBuf, NFGENMSG_LEN, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::socket::Socket;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Address families as ctnetlink takes them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u8 = libc::AF_INET as u8;
/// `AF_INET6`: the IPv6 family (see [`AF_INET`]).
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

/// One conntrack entry, by its original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub proto: u8,
    /// Source address of the original direction (the connection's initiator).
    pub src: IpAddr,
    /// Destination address of the original direction.
    pub dst: IpAddr,
    /// Ports, for protocols that have them.
    pub sport: Option<u16>,
    /// Destination port of the original direction, for protocols that have
    /// ports.
    pub dport: Option<u16>,
    /// Conntrack zone (`CTA_ZONE`), if the entry is in a zone other than the
    /// default.
    pub zone: Option<u16>,
    /// The original tuple as the kernel sent it, echoed back on delete so
    /// that every protocol's identifying fields (ICMP ids too) match.
    tuple: Vec<u8>,
}

/// Lists the conntrack entries of one family (`AF_INET` or `AF_INET6`).
pub fn dump(sock: &mut Socket, family: u8) -> Result<Vec<CtEntry>, Error> {
    let mut attempt = 0;
    loop {
        let mut req = MsgBuf::with_capacity(32);
        let seq = sock.take_seqs(1);
        let m = req.begin(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        req.nfgenmsg(family, 0);
        req.end(m);
        let mut entries = Vec::new();
        let result = sock.dump(req.as_bytes(), seq, |msg| {
            if let Some(e) = parse_entry(msg.nfgen_family(), msg.attrs(NFGENMSG_LEN)) {
                entries.push(e);
            }
            Ok(())
        });
        match result {
            Ok(()) => return Ok(entries),
            Err(e) if e.errno() == libc::EINTR && attempt < 3 => attempt += 1,
            Err(e) => {
                return Err(Error::new("listing conntrack entries", e.errno())
                    .with_kernel_message(e.kernel_message().map(str::to_string)));
            }
        }
    }
}

fn parse_entry(family: u8, attrs: Attrs<'_>) -> Option<CtEntry> {
    let tuple = attrs.get(CTA_TUPLE_ORIG)?;
    let ip = tuple.attrs().get(CTA_TUPLE_IP)?;
    let (mut src, mut dst) = (None, None);
    for a in ip.attrs() {
        match a.ty {
            CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = a.ip(),
            CTA_IP_V4_DST | CTA_IP_V6_DST => dst = a.ip(),
            _ => {}
        }
    }
    let proto = tuple.attrs().get(CTA_TUPLE_PROTO)?;
    let pa = proto.attrs();
    Some(CtEntry {
        family,
        proto: pa.get(CTA_PROTO_NUM)?.u8()?,
        src: src?,
        dst: dst?,
        sport: pa.get(CTA_PROTO_SRC_PORT).and_then(|a| a.u16_be()),
        dport: pa.get(CTA_PROTO_DST_PORT).and_then(|a| a.u16_be()),
        zone: attrs.get(CTA_ZONE).and_then(|a| a.u16_be()),
        tuple: tuple.data.to_vec(),
    })
}

/// Deletes entries (all in one `sendmsg`); entries that vanished meanwhile
/// are not an error. Returns how many were deleted.
pub fn delete(sock: &mut Socket, entries: &[CtEntry]) -> Result<usize, Error> {
    if entries.is_empty() {
        return Ok(0);
    }
    let mut req = MsgBuf::with_capacity(entries.len() * 96);
    let first = sock.take_seqs(entries.len() as u32);
    for (i, e) in entries.iter().enumerate() {
        let m = req.begin(
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            first + i as u32,
        );
        req.nfgenmsg(e.family, 0);
        let n = req.nest(CTA_TUPLE_ORIG);
        req.extend_padded(&e.tuple);
        req.nest_end(n);
        if let Some(z) = e.zone {
            req.put_u16_be(CTA_ZONE, z);
        }
        req.end(m);
    }
    let nacks = sock.transact(req.as_bytes(), first, entries.len() as u32)?;
    let mut gone = 0;
    for n in &nacks {
        if n.errno == libc::ENOENT {
            gone += 1;
            continue;
        }
        let idx = n.seq.wrapping_sub(first) as usize;
        let what = entries
            .get(idx)
            .map(|e| {
                format!(
                    "deleting conntrack entry {} -> {} (protocol {})",
                    e.src, e.dst, e.proto
                )
            })
            .unwrap_or_else(|| "deleting conntrack entries".to_string());
        return Err(Error::new(what, n.errno).with_kernel_message(n.message.clone()));
    }
    Ok(entries.len() - gone)
}

//! Building and parsing netlink messages and attributes.
//!
//! [`MsgBuf`] appends messages to one growing byte buffer: headers,
//! attributes and nests are written in place (lengths patched when a message
//! or nest ends), so encoding many elements costs no allocation beyond the
//! buffer itself. [`Msgs`] and [`Attrs`] iterate over received bytes without
//! copying.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// Size of `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;

/// Header flag: a request (set on everything sent to the kernel).
pub const NLM_F_REQUEST: u16 = 0x1;
/// Header flag: one part of a multipart reply, ended by [`NLMSG_DONE`].
pub const NLM_F_MULTI: u16 = 0x2;
/// Header flag: ask for an ack (an [`NLMSG_ERROR`] with errno 0) on success
/// too.
pub const NLM_F_ACK: u16 = 0x4;
/// Header flag on dump replies: the dump was interrupted by a change and
/// is inconsistent; repeat it.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Header flag of get requests: from the root (all objects).
pub const NLM_F_ROOT: u16 = 0x100;
/// Header flag of get requests: all objects that match.
pub const NLM_F_MATCH: u16 = 0x200;
/// Header flags of a dump request: every object ([`NLM_F_ROOT`] |
/// [`NLM_F_MATCH`]).
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// Header flag of new requests: replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Header flag of new requests: fail with `EEXIST` if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Header flag of new requests: create the object if it is missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Header flag of new requests: add at the end of a list.
pub const NLM_F_APPEND: u16 = 0x800;
/// In an error message: extended ack TLVs follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// Message type: no operation (ignored).
pub const NLMSG_NOOP: u16 = 1;
/// Message type: an error or, with errno 0, an ack.
pub const NLMSG_ERROR: u16 = 2;
/// Message type: the end of a multipart (dump) reply.
pub const NLMSG_DONE: u16 = 3;

/// Attribute type flag: the payload is nested attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type flag: the payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// Mask that removes [`NLA_F_NESTED`] and [`NLA_F_NET_BYTEORDER`] from an
/// attribute type.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Rounds up to the 4-byte netlink alignment.
#[inline]
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Where a message started; pass it to [`MsgBuf::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a message must be ended with MsgBuf::end"]
pub struct MsgStart(usize);

impl MsgStart {
    /// Offset of the message's header in the buffer.
    pub fn offset(self) -> usize {
        self.0
    }
}

/// Where a nested attribute started; pass it to [`MsgBuf::nest_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a nest must be ended with MsgBuf::nest_end"]
pub struct Nest(usize);

impl Nest {
    /// Offset of the nest's attribute header in the buffer.
    pub fn offset(self) -> usize {
        self.0
    }
}

/// A buffer of netlink messages, built in place.
#[derive(Debug, Clone, Default)]
pub struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    /// An empty buffer.
    pub fn new() -> MsgBuf {
        MsgBuf::default()
    }

    /// An empty buffer with room for `bytes` bytes before it grows.
    pub fn with_capacity(bytes: usize) -> MsgBuf {
        MsgBuf {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Everything written so far, ready for `sendmsg`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Empties the buffer, keeping its allocation for the next batch.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Reserves room for at least `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Starts a message: writes a `nlmsghdr` whose length is set by
    /// [`MsgBuf::end`]. The port id is 0 (the kernel fills in ours).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> MsgStart {
        debug_assert_eq!(self.buf.len() % 4, 0);
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        MsgStart(start)
    }

    /// Writes a `nfgenmsg` (family, version 0, resource id in big endian).
    pub fn nfgenmsg(&mut self, family: u8, res_id: u16) {
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Appends a fixed header (such as `inet_diag_req_v2`), padded to 4.
    pub fn extend_padded(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    /// Ends a message: patches `nlmsg_len`.
    pub fn end(&mut self, m: MsgStart) {
        let len = (self.buf.len() - m.0) as u32;
        self.buf[m.0..m.0 + 4].copy_from_slice(&len.to_ne_bytes());
    }

    #[inline]
    fn pad(&mut self) {
        let padded = align(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// Appends an attribute with a raw payload.
    ///
    /// # Panics
    /// If the payload is longer than an attribute can hold (65531 bytes).
    #[inline]
    pub fn put(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        assert!(len <= u16::MAX as usize, "netlink attribute too long");
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// Appends an attribute holding one byte.
    #[inline]
    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }

    /// Appends an attribute holding a 16-bit value in network byte order.
    #[inline]
    pub fn put_u16_be(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Appends an attribute holding a 32-bit value in network byte order.
    #[inline]
    pub fn put_u32_be(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Appends an attribute holding a 64-bit value in network byte order.
    #[inline]
    pub fn put_u64_be(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Appends a NUL-terminated string attribute.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let len = NLA_HDRLEN + s.len() + 1;
        assert!(len <= u16::MAX as usize, "netlink attribute too long");
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Opens a nested attribute (the `NLA_F_NESTED` flag is set).
    #[inline]
    pub fn nest(&mut self, ty: u16) -> Nest {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Nest(start)
    }

    /// Closes a nested attribute and returns its length.
    ///
    /// # Panics
    /// If the nest grew beyond 65535 bytes, which `nla_len` (a `u16`) cannot
    /// express: callers that write long lists split them (see
    /// [`MsgBuf::nest_len`]).
    #[inline]
    pub fn nest_end(&mut self, n: Nest) -> usize {
        let len = self.buf.len() - n.0;
        assert!(
            len <= u16::MAX as usize,
            "netlink nest of {len} bytes exceeds the 65535-byte attribute limit"
        );
        self.buf[n.0..n.0 + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        len
    }

    /// Bytes written so far in an open nest, header included.
    #[inline]
    pub fn nest_len(&self, n: Nest) -> usize {
        self.buf.len() - n.0
    }

    /// The bytes, for patching headers in place.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Drops everything written after `offset` (to undo a partial write).
    pub fn truncate(&mut self, offset: usize) {
        self.buf.truncate(offset);
    }
}

/// One received netlink message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// Message type (for nfnetlink: subsystem << 8 | command).
    pub ty: u16,
    /// Header flags (`NLM_F_*`).
    pub flags: u16,
    /// Sequence number, which matches a reply to its request.
    pub seq: u32,
    /// Port id of the sender (0 for the kernel).
    pub pid: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// The attributes after a fixed header of `header_len` bytes (4 for
    /// nfnetlink's `nfgenmsg`).
    pub fn attrs(&self, header_len: usize) -> Attrs<'a> {
        Attrs::new(self.payload.get(align(header_len)..).unwrap_or(&[]))
    }

    /// The `nfgenmsg` family byte, for nfnetlink messages.
    pub fn nfgen_family(&self) -> u8 {
        self.payload.first().copied().unwrap_or(0)
    }
}

/// Iterates over the messages of a received datagram (or a built buffer).
/// Stops at the first malformed header.
#[derive(Debug, Clone)]
pub struct Msgs<'a> {
    data: &'a [u8],
}

impl<'a> Msgs<'a> {
    /// Iterates over the messages in `data`.
    pub fn new(data: &'a [u8]) -> Msgs<'a> {
        Msgs { data }
    }
}

impl<'a> Iterator for Msgs<'a> {
    type Item = Msg<'a>;

    fn next(&mut self) -> Option<Msg<'a>> {
        if self.data.len() < NLMSG_HDRLEN {
            return None;
        }
        let d = self.data;
        let len = u32::from_ne_bytes(d[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > d.len() {
            self.data = &[];
            return None;
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([d[4], d[5]]),
            flags: u16::from_ne_bytes([d[6], d[7]]),
            seq: u32::from_ne_bytes(d[8..12].try_into().unwrap()),
            pid: u32::from_ne_bytes(d[12..16].try_into().unwrap()),
            payload: &d[NLMSG_HDRLEN..len],
        };
        self.data = d.get(align(len)..).unwrap_or(&[]);
        Some(msg)
    }
}

/// One attribute: its type (flags masked off) and payload.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    /// Attribute type, with [`NLA_F_NESTED`] and [`NLA_F_NET_BYTEORDER`]
    /// masked off.
    pub ty: u16,
    /// True if [`NLA_F_NESTED`] was set: the payload is attributes.
    pub nested: bool,
    /// The payload, without padding.
    pub data: &'a [u8],
    /// Offset of the attribute header from the start of the slice that
    /// [`Attrs`] was created on.
    pub offset: usize,
}

impl<'a> Attr<'a> {
    /// The payload as nested attributes.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.data)
    }

    /// The first payload byte, or `None` if the payload is empty.
    pub fn u8(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// A 16-bit payload in network byte order (ports, for example).
    pub fn u16_be(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.data.get(..2)?.try_into().ok()?))
    }

    /// A 16-bit payload in host byte order.
    pub fn u16_ne(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.data.get(..2)?.try_into().ok()?))
    }

    /// A 32-bit payload in network byte order (most nf_tables and ipset
    /// values).
    pub fn u32_be(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.data.get(..4)?.try_into().ok()?))
    }

    /// A 32-bit payload in host byte order.
    pub fn u32_ne(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.data.get(..4)?.try_into().ok()?))
    }

    /// A 64-bit payload in network byte order (nf_tables handles, for
    /// example).
    pub fn u64_be(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.data.get(..8)?.try_into().ok()?))
    }

    /// A string payload without its NUL terminator (lossy on bad UTF-8 is
    /// not needed here: kernel names are ASCII; invalid UTF-8 gives `None`).
    pub fn str(&self) -> Option<&'a str> {
        let d = self.data;
        let d = match d.iter().position(|&b| b == 0) {
            Some(nul) => &d[..nul],
            None => d,
        };
        std::str::from_utf8(d).ok()
    }

    /// A 4- or 16-byte address payload.
    pub fn ip(&self) -> Option<IpAddr> {
        ip_from_bytes(self.data)
    }
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address from network-order bytes.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// Iterates over attributes. Stops at the first malformed one.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Attrs<'a> {
    /// Iterates over the attributes in `data` (a payload after its fixed
    /// header, or a nest's payload).
    pub fn new(data: &'a [u8]) -> Attrs<'a> {
        Attrs { data, pos: 0 }
    }

    /// The first attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<Attr<'a>> {
        self.clone().find(|a| a.ty == ty)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let rest = self.data.get(self.pos..)?;
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let raw_ty = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < NLA_HDRLEN || len > rest.len() {
            self.pos = self.data.len();
            return None;
        }
        let attr = Attr {
            ty: raw_ty & NLA_TYPE_MASK,
            nested: raw_ty & NLA_F_NESTED != 0,
            data: &rest[NLA_HDRLEN..len],
            offset: self.pos,
        };
        self.pos += align(len);
        Some(attr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_with_nested_attributes_golden_bytes() {
        let mut b = MsgBuf::new();
        let m = b.begin(0x0a00, NLM_F_REQUEST | NLM_F_ACK, 7);
        b.nfgenmsg(1, 0);
        b.put_str(1, "palisade");
        let n = b.nest(4);
        b.put_u32_be(1, 1);
        b.put_u32_be(2, (-10i32) as u32);
        assert_eq!(b.nest_end(n), 20);
        b.end(m);
        let mut want = Vec::new();
        want.extend_from_slice(&56u32.to_ne_bytes());
        want.extend_from_slice(&0x0a00u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&13u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"palisade\0\0\0\0");
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&(4u16 | NLA_F_NESTED).to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xf6]);
        assert_eq!(b.as_bytes(), &want[..]);
    }

    #[test]
    fn round_trip_through_parsers() {
        let mut b = MsgBuf::new();
        for seq in 1..=3 {
            let m = b.begin(0x0a0c, NLM_F_REQUEST, seq);
            b.nfgenmsg(2, 0);
            b.put_str(2, "block4");
            let n = b.nest(3);
            b.put_u64_be(4, 3_600_000);
            b.put(1, &[198, 18, 0, seq as u8]);
            b.nest_end(n);
            b.end(m);
        }
        let msgs: Vec<Msg> = Msgs::new(b.as_bytes()).collect();
        assert_eq!(msgs.len(), 3);
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.ty, 0x0a0c);
            assert_eq!(m.seq, i as u32 + 1);
            assert_eq!(m.nfgen_family(), 2);
            let attrs = m.attrs(NFGENMSG_LEN);
            assert_eq!(attrs.get(2).unwrap().str(), Some("block4"));
            let nest = attrs.get(3).unwrap();
            assert!(nest.nested);
            let inner: Vec<Attr> = nest.attrs().collect();
            assert_eq!(inner[0].u64_be(), Some(3_600_000));
            assert_eq!(
                inner[1].ip(),
                Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, i as u8 + 1)))
            );
        }
    }

    #[test]
    fn parsers_stop_at_garbage() {
        assert_eq!(Msgs::new(&[1, 2, 3]).count(), 0);
        let mut bad = vec![0u8; 20];
        bad[0] = 200; // length beyond the buffer
        assert_eq!(Msgs::new(&bad).count(), 0);
        // An attribute claiming more bytes than there are.
        let attrs = [0xff, 0x00, 0x01, 0x00, 1, 2, 3, 4];
        assert_eq!(Attrs::new(&attrs).count(), 0);
        // An attribute shorter than its header.
        let attrs = [0x02, 0x00, 0x01, 0x00];
        assert_eq!(Attrs::new(&attrs).count(), 0);
    }

    #[test]
    #[should_panic(expected = "65535-byte attribute limit")]
    fn oversized_nest_is_refused() {
        let mut b = MsgBuf::new();
        let n = b.nest(3);
        for _ in 0..2000 {
            b.put(1, &[0u8; 32]);
        }
        b.nest_end(n);
    }
}

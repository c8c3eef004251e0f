//! NFLOG (nfnetlink_log): packets the kernel logs with `log group N`.
//!
//! The source binds a netlink socket to the group (copying the first 128
//! bytes of each packet, one message per packet), parses the IPv4 or IPv6
//! header and the TCP/UDP ports from `NFULA_PAYLOAD`, and sends a line in
//! the kernel `LOG` target's format:
//!
//! `NFLOG PREFIX IN=eth0 OUT= SRC=198.51.100.7 DST=192.0.2.1 PROTO=TCP SPT=40000 DPT=23`
//!
//! so the built-in `port-probe` rule (which also reads real `LOG` lines
//! from syslog) counts it, skipping ports that are open right now.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::{Line, SourceHandle, stopped};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;

/// What the source learned from one logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `TCP`, `UDP`, or the protocol number.
    pub proto: String,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub prefix: String,
    pub indev: Option<String>,
}

impl Packet {
    /// The `LOG`-style line for this packet.
    pub fn line(&self) -> String {
        let mut s = String::from("NFLOG ");
        if !self.prefix.is_empty() {
            s.push_str(&self.prefix);
            s.push(' ');
        }
        s.push_str(&format!(
            "IN={} OUT= SRC={} DST={} PROTO={}",
            self.indev.as_deref().unwrap_or(""),
            self.src,
            self.dst,
            self.proto
        ));
        if let (Some(sp), Some(dp)) = (self.sport, self.dport) {
            s.push_str(&format!(" SPT={sp} DPT={dp}"));
        }
        s
    }
}

pub fn spawn(group: u16, name: &str, tx: Sender<Line>) -> anyhow::Result<SourceHandle> {
    let sock = NflogSocket::bind(group)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; 256 * 1024];
            while !stopped(&flag) {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tracing::warn!(
                            "NFLOG group {group}: packets dropped (receive buffer full)"
                        );
                        continue;
                    }
                    Err(e) => return Err(e).context("receiving from NFLOG"),
                };
                let received = Timestamp::now();
                for p in parse_messages(&buf[..n]) {
                    let line = Line {
                        source: src.clone(),
                        text: p.line(),
                        received,
                    };
                    if tx.send(line).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })?;
    Ok(SourceHandle::new(name.into(), stop, thread))
}

/// A netlink socket bound to one NFLOG group.
pub struct NflogSocket {
    fd: OwnedFd,
    group: u16,
}

impl NflogSocket {
    /// Binds to `group` in the current network namespace.
    pub fn bind(group: u16) -> anyhow::Result<NflogSocket> {
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a netfilter netlink socket");
        }
        // SAFETY: fd is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("binding the netlink socket");
        }
        let bytes: i32 = 4 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: pointer to an int of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&bytes as *const i32).cast(),
                    4,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: pointer to a timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let s = NflogSocket { fd, group };
        // Unbind first in case a previous palisade left the group bound to a
        // dead socket (harmless if not bound).
        let _ = s.config(&[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_UNBIND])]);
        s.config(&[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])])
            .with_context(|| {
                format!(
                    "binding NFLOG group {group} (needs CAP_NET_ADMIN and the nfnetlink_log module; another program may hold the group)"
                )
            })?;
        let mut mode = 128u32.to_be_bytes().to_vec();
        mode.push(NFULNL_COPY_PACKET);
        mode.push(0);
        s.config(&[
            (NFULA_CFG_MODE, mode),
            (NFULA_CFG_QTHRESH, 1u32.to_be_bytes().to_vec()),
            (NFULA_CFG_TIMEOUT, 1u32.to_be_bytes().to_vec()),
        ])
        .context("configuring the NFLOG copy mode")?;
        Ok(s)
    }

    fn config(&self, attrs: &[(u16, Vec<u8>)]) -> anyhow::Result<()> {
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(&[0u8; 16]); // nlmsghdr, filled below
        msg.push(libc::AF_UNSPEC as u8); // nfgenmsg.family
        msg.push(0); // version
        msg.extend_from_slice(&self.group.to_be_bytes()); // res_id
        for (ty, data) in attrs {
            let len = 4 + data.len();
            msg.extend_from_slice(&(len as u16).to_ne_bytes());
            msg.extend_from_slice(&ty.to_ne_bytes());
            msg.extend_from_slice(data);
            while msg.len() % 4 != 0 {
                msg.push(0);
            }
        }
        let len = msg.len() as u32;
        let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&ty.to_ne_bytes());
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the given lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("sending an NFLOG config message");
        }
        // Wait for the ack (skipping any packet messages).
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..50 {
            let n = match self.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            let mut off = 0;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if mlen < 16 || off + mlen > n {
                    break;
                }
                if mty == libc::NLMSG_ERROR as u16 && mlen >= 20 {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    if err == 0 {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-err).into());
                }
                off += (mlen + 3) & !3;
            }
        }
        bail!("no answer from the kernel to an NFLOG config message")
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// Parses the NFLOG packet messages in one netlink datagram.
pub fn parse_messages(buf: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if mlen < 16 || off + mlen > buf.len() {
            break;
        }
        if mty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
            && mlen >= 20
            && let Some(p) = parse_packet(&buf[off + 20..off + mlen])
        {
            out.push(p);
        }
        off += (mlen + 3) & !3;
    }
    out
}

fn parse_packet(attrs: &[u8]) -> Option<Packet> {
    let mut payload = None;
    let mut prefix = String::new();
    let mut indev = None;
    let mut off = 0;
    while off + 4 <= attrs.len() {
        let alen = u16::from_ne_bytes([attrs[off], attrs[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[off + 2], attrs[off + 3]]) & 0x3fff;
        if alen < 4 || off + alen > attrs.len() {
            break;
        }
        let data = &attrs[off + 4..off + alen];
        match aty {
            NFULA_PAYLOAD => payload = Some(data),
            NFULA_PREFIX => {
                let d = data.split(|&b| b == 0).next().unwrap_or(&[]);
                prefix = String::from_utf8_lossy(d)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
                    .trim()
                    .to_string();
            }
            NFULA_IFINDEX_INDEV if data.len() == 4 => {
                let idx = u32::from_be_bytes(data.try_into().ok()?);
                indev = Some(ifname(idx));
            }
            NFULA_PACKET_HDR => {}
            _ => {}
        }
        off += (alen + 3) & !3;
    }
    let (src, dst, proto, l4) = parse_ip(payload?)?;
    let (proto_name, sport, dport) = match proto {
        6 if l4.len() >= 4 => ("TCP".to_string(), Some(be16(l4, 0)), Some(be16(l4, 2))),
        17 if l4.len() >= 4 => ("UDP".to_string(), Some(be16(l4, 0)), Some(be16(l4, 2))),
        132 if l4.len() >= 4 => ("SCTP".to_string(), Some(be16(l4, 0)), Some(be16(l4, 2))),
        1 => ("ICMP".into(), None, None),
        58 => ("ICMPv6".into(), None, None),
        n => (n.to_string(), None, None),
    };
    Some(Packet {
        src,
        dst,
        proto: proto_name,
        sport,
        dport,
        prefix,
        indev,
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Source, destination, L4 protocol and the L4 bytes of an IP packet.
pub fn parse_ip(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag_off = be16(p, 6) & 0x1fff;
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let l4 = if frag_off == 0 { p.get(ihl..)? } else { &[] };
            Some((src.into(), dst.into(), p[9], l4))
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
            let mut next = p[6];
            let mut off = 40;
            // Skip extension headers: hop-by-hop, routing, destination
            // options; a non-first fragment has no ports.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = p.get(off..off + 2)?;
                        next = h[0];
                        off += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = p.get(off..off + 8)?;
                        next = h[0];
                        let frag = be16(h, 2) >> 3;
                        off += 8;
                        if frag != 0 {
                            return Some((src.into(), dst.into(), next, &[]));
                        }
                    }
                    _ => break,
                }
            }
            Some((src.into(), dst.into(), next, p.get(off..).unwrap_or(&[])))
        }
        _ => None,
    }
}

fn ifname(idx: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
    if p.is_null() {
        return idx.to_string();
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    fn nlmsg(payload: &[u8], prefix: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut push = |ty: u16, data: &[u8]| {
            attrs.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            attrs.extend_from_slice(&ty.to_ne_bytes());
            attrs.extend_from_slice(data);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        };
        push(NFULA_PACKET_HDR, &[8, 0, 1, 0]);
        let mut pre = prefix.as_bytes().to_vec();
        pre.push(0);
        push(NFULA_PREFIX, &pre);
        push(NFULA_PAYLOAD, payload);
        let mut m = Vec::new();
        let len = 20 + attrs.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0, 5]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_ipv4_tcp() {
        let msg = nlmsg(&tcp4([198, 51, 100, 7], [192, 0, 2, 1], 40000, 23), "probe");
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let ps = parse_messages(&two);
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[0].line(),
            "NFLOG probe IN= OUT= SRC=198.51.100.7 DST=192.0.2.1 PROTO=TCP SPT=40000 DPT=23"
        );
    }

    #[test]
    fn parses_ipv6_udp_with_extension_header() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]); // hop-by-hop -> UDP
        p.extend_from_slice(&5353u16.to_be_bytes());
        p.extend_from_slice(&161u16.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        let (src, _, proto, l4) = parse_ip(&p).unwrap();
        assert_eq!(src.to_string(), "2001:db8::7");
        assert_eq!(proto, 17);
        assert_eq!(be16(l4, 2), 161);
    }

    #[test]
    fn truncated_input_is_no_packet() {
        assert!(parse_ip(&[0x45, 0, 0]).is_none());
        assert!(parse_messages(&[1, 2, 3]).is_empty());
    }
}

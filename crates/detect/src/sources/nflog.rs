//! NFLOG (nfnetlink_log): packets the kernel logs with `log group N`.
//!
//! The source binds a netlink socket to the group
//! ([`palisade_netlink::nflog`]: the first 128 bytes of each packet, one
//! message per packet), parses the IPv4 or IPv6 header and the TCP/UDP
//! ports of each logged packet, and sends a line in the kernel `LOG`
//! target's format:
//!
//! `NFLOG PREFIX IN=eth0 OUT= SRC=198.51.100.7 DST=192.0.2.1 PROTO=TCP SPT=40000 DPT=23`
//!
//! so the built-in `port-probe` rule (which also reads real `LOG` lines
//! from syslog) counts it, skipping ports that are open right now.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use crossbeam_channel::Sender;
use palisade_model::Timestamp;
use palisade_netlink::nflog::{LoggedPacket, NflogSocket, packets};

use super::{Line, SourceHandle, stopped};

/// What the source learned from one logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet's source address: the suspected prober.
    pub src: IpAddr,
    /// The packet's destination address.
    pub dst: IpAddr,
    /// `TCP`, `UDP`, or the protocol number.
    pub proto: String,
    /// Source port, for TCP and UDP.
    pub sport: Option<u16>,
    /// Destination port (the probed one), for TCP and UDP.
    pub dport: Option<u16>,
    /// The logging rule's prefix (`log prefix`), empty if it has none.
    pub prefix: String,
    /// The interface the packet came in on, if the kernel said.
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

/// Binds NFLOG group `group` and turns each logged packet into a
/// `LOG`-style line sent to `tx`, on a thread of its own.
pub fn spawn(group: u16, name: &str, tx: Sender<Line>) -> anyhow::Result<SourceHandle> {
    let mut sock = NflogSocket::bind(group)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            while !stopped(&flag) {
                let datagram = match sock.recv() {
                    Ok(Some(d)) => d,
                    Ok(None) => continue,
                    Err(e) if e.errno() == libc::ENOBUFS => {
                        tracing::warn!(
                            "NFLOG group {group}: packets dropped (receive buffer full)"
                        );
                        continue;
                    }
                    Err(e) => return Err(e).context("receiving from NFLOG"),
                };
                let received = Timestamp::now();
                for p in packets(datagram).filter_map(|p| parse_packet(&p)) {
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

/// What a logged packet says, or `None` when its payload is no IP packet.
fn parse_packet(logged: &LoggedPacket<'_>) -> Option<Packet> {
    // The prefix is the rule author's text: printable characters only, so
    // it cannot start another line or field.
    let prefix = String::from_utf8_lossy(logged.prefix)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string();
    let indev = logged.indev.map(ifname);
    let (src, dst, proto, l4) = parse_ip(logged.payload)?;
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

    #[test]
    fn parses_ipv4_tcp() {
        let payload = tcp4([198, 51, 100, 7], [192, 0, 2, 1], 40000, 23);
        let logged = LoggedPacket {
            payload: &payload,
            prefix: b"probe\n",
            indev: None,
        };
        assert_eq!(
            parse_packet(&logged).unwrap().line(),
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
        let logged = LoggedPacket {
            payload: &[0x45, 0, 0],
            prefix: b"",
            indev: None,
        };
        assert!(parse_packet(&logged).is_none());
    }
}

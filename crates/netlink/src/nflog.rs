//! nfnetlink_log (NFLOG): binding a log group and reading the packets the
//! kernel logs to it with `log group N`.
//!
//! [`NflogSocket::bind`] binds a `NETLINK_NETFILTER` socket to one group,
//! copying the first 128 bytes of each packet, one message per packet;
//! [`packets`] reads the logged packets of a received datagram. What a
//! packet means is the caller's business (palisade's detector parses its IP
//! header).

use std::time::Duration;

use crate::error::Error;
use crate::msg::{MsgBuf, Msgs, NFGENMSG_LEN, NLM_F_ACK, NLM_F_REQUEST};
use crate::socket::Socket;

/// nfnetlink subsystem of nfnetlink_log.
pub const NFNL_SUBSYS_ULOG: u16 = 4;
/// Message type of a logged packet (kernel to user).
pub const NFULNL_MSG_PACKET: u16 = 0;
/// Message type of a configuration request (bind, unbind, copy mode).
pub const NFULNL_MSG_CONFIG: u16 = 1;
/// Configuration attribute: a command ([`NFULNL_CFG_CMD_BIND`] or
/// [`NFULNL_CFG_CMD_UNBIND`]).
pub const NFULA_CFG_CMD: u16 = 1;
/// Configuration attribute: copy mode and how many bytes of each packet to
/// copy.
pub const NFULA_CFG_MODE: u16 = 2;
/// Configuration attribute: how long the kernel may hold packets to batch
/// them, in hundredths of a second.
pub const NFULA_CFG_TIMEOUT: u16 = 4;
/// Configuration attribute: how many packets the kernel may batch into one
/// datagram.
pub const NFULA_CFG_QTHRESH: u16 = 5;
/// Configuration command: bind the socket to the group.
pub const NFULNL_CFG_CMD_BIND: u8 = 1;
/// Configuration command: unbind the group.
pub const NFULNL_CFG_CMD_UNBIND: u8 = 2;
/// Copy mode: copy (the start of) the packet itself.
pub const NFULNL_COPY_PACKET: u8 = 2;
/// Packet attribute: hardware protocol (ethertype) and hook.
pub const NFULA_PACKET_HDR: u16 = 1;
/// Packet attribute: index of the interface the packet came in on.
pub const NFULA_IFINDEX_INDEV: u16 = 4;
/// Packet attribute: the copied bytes of the packet, from its IP header on.
pub const NFULA_PAYLOAD: u16 = 9;
/// Packet attribute: the rule's `log prefix`, NUL-terminated.
pub const NFULA_PREFIX: u16 = 10;

/// How many bytes of each packet the kernel copies: enough for IPv4 or
/// IPv6 headers, a few extension headers and the ports.
const COPY_BYTES: u32 = 128;
/// The socket's receive buffer: a burst of logged packets waits here while
/// the reader is busy.
const RECEIVE_BUFFER: i32 = 4 << 20;
/// How long [`NflogSocket::recv`] waits, so that its reader can notice a
/// stop request.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

/// One packet the kernel logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedPacket<'a> {
    /// The packet from its network header on (at most 128 bytes).
    pub payload: &'a [u8],
    /// The rule's `prefix`, up to its NUL, as the kernel has it (not
    /// checked: any bytes the rule's author wrote).
    pub prefix: &'a [u8],
    /// The index of the interface the packet came in on.
    pub indev: Option<u32>,
}

/// The logged packets in one datagram from an NFLOG socket; messages that
/// are not packets, or packets without a payload, are skipped, and reading
/// stops at the first malformed message.
pub fn packets(datagram: &[u8]) -> impl Iterator<Item = LoggedPacket<'_>> {
    Msgs::new(datagram)
        .filter(|m| m.ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
        .filter(|m| m.payload.len() >= NFGENMSG_LEN)
        .filter_map(|m| {
            let mut payload = None;
            let mut prefix: &[u8] = &[];
            let mut indev = None;
            for a in m.attrs(NFGENMSG_LEN) {
                match a.ty {
                    NFULA_PAYLOAD => payload = Some(a.data),
                    NFULA_PREFIX => {
                        prefix = a.data.split(|&b| b == 0).next().unwrap_or(&[]);
                    }
                    NFULA_IFINDEX_INDEV if a.data.len() == 4 => indev = a.u32_be(),
                    _ => {}
                }
            }
            Some(LoggedPacket {
                payload: payload?,
                prefix,
                indev,
            })
        })
}

/// A netlink socket bound to one NFLOG group, in the network namespace of
/// the thread that bound it.
#[derive(Debug)]
pub struct NflogSocket {
    socket: Socket,
    group: u16,
}

impl NflogSocket {
    /// Binds to `group`: the kernel then sends this socket the first 128
    /// bytes of every packet a `log group N` rule logs, each at once.
    pub fn bind(group: u16) -> Result<NflogSocket, Error> {
        let mut socket = Socket::netfilter()?;
        socket.force_rcvbuf(RECEIVE_BUFFER);
        socket.set_receive_timeout(RECEIVE_TIMEOUT)?;
        let mut s = NflogSocket { socket, group };
        // Unbind first in case a previous palisade left the group bound to a
        // dead socket (harmless if not bound).
        let _ = s.config(&[(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_UNBIND])]);
        s.config(&[(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND])])
            .map_err(|e| {
                e.with_context(format!(
                    "binding NFLOG group {group} (needs CAP_NET_ADMIN and the nfnetlink_log module; another program may hold the group)"
                ))
            })?;
        let mut mode = COPY_BYTES.to_be_bytes().to_vec();
        mode.push(NFULNL_COPY_PACKET);
        mode.push(0);
        s.config(&[
            (NFULA_CFG_MODE, &mode),
            (NFULA_CFG_QTHRESH, &1u32.to_be_bytes()),
            (NFULA_CFG_TIMEOUT, &1u32.to_be_bytes()),
        ])
        .map_err(|e| e.with_context("configuring the NFLOG copy mode"))?;
        Ok(s)
    }

    /// Sends one configuration message for the group and waits for the
    /// kernel's answer (nfnetlink answers inside `sendmsg`).
    fn config(&mut self, attrs: &[(u16, &[u8])]) -> Result<(), Error> {
        let seq = self.socket.take_seqs(1);
        let mut buf = MsgBuf::with_capacity(64);
        let m = buf.begin(
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        );
        buf.nfgenmsg(libc::AF_UNSPEC as u8, self.group);
        for (ty, data) in attrs {
            buf.put(*ty, data);
        }
        buf.end(m);
        match self.socket.transact(buf.as_bytes(), seq, 1)?.first() {
            None => Ok(()),
            Some(nack) => Err(Error::new("NFLOG configuration", nack.errno)
                .with_kernel_message(nack.message.clone())),
        }
    }

    /// Waits for the next datagram (at most 200 ms): `Ok(None)` when none
    /// came. An `ENOBUFS` error means the kernel dropped packets because the
    /// receive buffer was full; the socket remains usable.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, Error> {
        self.socket.recv_datagram()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NFLOG packet message as the kernel sends it.
    fn packet_message(payload: &[u8], prefix: &str, indev: Option<u32>) -> Vec<u8> {
        let mut b = MsgBuf::new();
        let m = b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0);
        b.nfgenmsg(libc::AF_INET as u8, 5);
        b.put(NFULA_PACKET_HDR, &[8, 0, 1, 0]);
        let mut pre = prefix.as_bytes().to_vec();
        pre.push(0);
        b.put(NFULA_PREFIX, &pre);
        if let Some(i) = indev {
            b.put(NFULA_IFINDEX_INDEV, &i.to_be_bytes());
        }
        b.put(NFULA_PAYLOAD, payload);
        b.end(m);
        b.as_bytes().to_vec()
    }

    #[test]
    fn reads_every_packet_of_a_datagram() {
        let mut two = packet_message(&[0x45, 1, 2], "probe", Some(3));
        two.extend_from_slice(&packet_message(&[0x60], "", None));
        let ps: Vec<_> = packets(&two).collect();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].payload, [0x45, 1, 2]);
        assert_eq!(ps[0].prefix, b"probe");
        assert_eq!(ps[0].indev, Some(3));
        assert_eq!((ps[1].prefix, ps[1].indev), (&b""[..], None));
    }

    #[test]
    fn malformed_datagrams_give_no_packets() {
        assert_eq!(packets(&[1, 2, 3]).count(), 0);
        let mut m = packet_message(&[0x45], "x", None);
        // A length past the end of the datagram.
        m[0] = 0xff;
        assert_eq!(packets(&m).count(), 0);
        // A packet without a payload is skipped.
        let mut b = MsgBuf::new();
        let s = b.begin((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0);
        b.nfgenmsg(2, 5);
        b.put(NFULA_PREFIX, b"x\0");
        b.end(s);
        assert_eq!(packets(b.as_bytes()).count(), 0);
    }
}

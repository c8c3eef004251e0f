//! sock_diag: list TCP sockets and destroy them (like `ss -K`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::Error;
use crate::msg::{MsgBuf, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::socket::Socket;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;
const SOCKID_LEN: usize = 48;
const DIAG_MSG_LEN: usize = 72;

/// TCP states (`TCP_ESTABLISHED` = 1 ... `TCP_NEW_SYN_RECV` = 12).
pub mod state {
    /// `TCP_ESTABLISHED`: the connection is open both ways.
    pub const ESTABLISHED: u8 = 1;
    /// `TCP_SYN_SENT`: a connect is waiting for the peer's SYN-ACK.
    pub const SYN_SENT: u8 = 2;
    /// `TCP_SYN_RECV`: a SYN was answered, the handshake's last ACK is awaited.
    pub const SYN_RECV: u8 = 3;
    /// `TCP_FIN_WAIT1`: closed locally, the FIN not yet acknowledged.
    pub const FIN_WAIT1: u8 = 4;
    /// `TCP_FIN_WAIT2`: closed locally and acknowledged, waiting for the peer's
    /// FIN.
    pub const FIN_WAIT2: u8 = 5;
    /// `TCP_TIME_WAIT`: closed both ways, lingering to absorb late segments.
    pub const TIME_WAIT: u8 = 6;
    /// `TCP_CLOSE`: not connected.
    pub const CLOSE: u8 = 7;
    /// `TCP_CLOSE_WAIT`: the peer closed, the local side has not yet.
    pub const CLOSE_WAIT: u8 = 8;
    /// `TCP_LAST_ACK`: both closed, waiting for the ACK of the local FIN.
    pub const LAST_ACK: u8 = 9;
    /// `TCP_LISTEN`: a listening socket.
    pub const LISTEN: u8 = 10;
    /// `TCP_CLOSING`: both sides sent FIN at once.
    pub const CLOSING: u8 = 11;
    /// `TCP_NEW_SYN_RECV`: a request socket for a SYN not yet accepted.
    pub const NEW_SYN_RECV: u8 = 12;
}

/// States of sockets that talk to a peer: every state except listening,
/// closed and time-wait (the set `ss -K` acts on by default).
pub const CONNECTED_STATES: u32 = (1 << state::ESTABLISHED)
    | (1 << state::SYN_SENT)
    | (1 << state::SYN_RECV)
    | (1 << state::FIN_WAIT1)
    | (1 << state::FIN_WAIT2)
    | (1 << state::CLOSE_WAIT)
    | (1 << state::LAST_ACK)
    | (1 << state::CLOSING)
    | (1 << state::NEW_SYN_RECV);

/// One TCP socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// `AF_INET` or `AF_INET6` (an IPv6 socket may carry IPv4-mapped
    /// addresses).
    pub family: u8,
    /// TCP state, one of the [`state`] values.
    pub state: u8,
    /// Local address and port.
    pub local: SocketAddr,
    /// Peer address and port (IPv4-mapped for an IPv4 peer of an IPv6 socket;
    /// [`TcpSocket::remote_ip`] unmaps it).
    pub remote: SocketAddr,
    /// Inode of the socket (as in `/proc/PID/fd`), 0 for sockets without one
    /// (time-wait and request sockets).
    pub inode: u32,
    /// `inet_diag_sockid` as reported (cookie included), for destroying.
    id: [u8; SOCKID_LEN],
}

impl TcpSocket {
    /// The remote address with IPv4-mapped IPv6 turned into IPv4.
    pub fn remote_ip(&self) -> IpAddr {
        canonical(self.remote.ip())
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn request(
    buf: &mut MsgBuf,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    id: &[u8; SOCKID_LEN],
) {
    let m = buf.begin(ty, flags, seq);
    let mut req = [0u8; 8 + SOCKID_LEN];
    req[0] = family;
    req[1] = IPPROTO_TCP;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req[8..].copy_from_slice(id);
    buf.extend_padded(&req);
    buf.end(m);
}

/// Lists TCP sockets of `family` (`AF_INET` or `AF_INET6`) whose state is
/// in the `states` bit mask (see [`CONNECTED_STATES`]).
pub fn dump_tcp(sock: &mut Socket, family: u8, states: u32) -> Result<Vec<TcpSocket>, Error> {
    let mut req = MsgBuf::with_capacity(80);
    let seq = sock.take_seqs(1);
    request(
        &mut req,
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        states,
        &[0; SOCKID_LEN],
    );
    let mut out = Vec::new();
    sock.dump(req.as_bytes(), seq, |msg| {
        if let Some(s) = parse(msg.payload) {
            out.push(s);
        }
        Ok(())
    })
    .map_err(|e| {
        Error::new("listing TCP sockets", e.errno())
            .with_kernel_message(e.kernel_message().map(str::to_string))
    })?;
    Ok(out)
}

fn parse(p: &[u8]) -> Option<TcpSocket> {
    if p.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = p[0];
    let id: [u8; SOCKID_LEN] = p[4..4 + SOCKID_LEN].try_into().ok()?;
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match family as i32 {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&b[..4]).ok()?,
            ))),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&b[..16]).ok()?,
            ))),
            _ => None,
        }
    };
    Some(TcpSocket {
        family,
        state: p[1],
        local: SocketAddr::new(addr(&id[4..20])?, sport),
        remote: SocketAddr::new(addr(&id[20..36])?, dport),
        inode: u32::from_ne_bytes(p[68..72].try_into().ok()?),
        id,
    })
}

/// Destroys sockets (`SOCK_DESTROY`, all in one `sendmsg`): the kernel
/// aborts each connection, sending a reset to the peer, and the owning
/// process sees `ECONNABORTED`. Sockets that vanished meanwhile are not an
/// error. Returns how many were destroyed.
pub fn destroy(sock: &mut Socket, sockets: &[TcpSocket]) -> Result<usize, Error> {
    if sockets.is_empty() {
        return Ok(0);
    }
    let mut req = MsgBuf::with_capacity(sockets.len() * 80);
    let first = sock.take_seqs(sockets.len() as u32);
    for (i, s) in sockets.iter().enumerate() {
        request(
            &mut req,
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            first + i as u32,
            s.family,
            u32::MAX,
            &s.id,
        );
    }
    let nacks = sock.transact(req.as_bytes(), first, sockets.len() as u32)?;
    let mut gone = 0;
    for n in &nacks {
        if n.errno == libc::ENOENT {
            gone += 1;
            continue;
        }
        let idx = n.seq.wrapping_sub(first) as usize;
        let what = sockets
            .get(idx)
            .map(|s| format!("destroying TCP socket {} -> {}", s.local, s.remote))
            .unwrap_or_else(|| "destroying TCP sockets".to_string());
        return Err(Error::new(what, n.errno).with_kernel_message(n.message.clone()));
    }
    Ok(sockets.len() - gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_v4_mapped_socket() {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = libc::AF_INET6 as u8;
        p[1] = state::ESTABLISHED;
        p[4..6].copy_from_slice(&8080u16.to_be_bytes());
        p[6..8].copy_from_slice(&40000u16.to_be_bytes());
        let local: Ipv6Addr = "::ffff:198.18.0.2".parse().unwrap();
        let remote: Ipv6Addr = "::ffff:198.18.0.1".parse().unwrap();
        p[8..24].copy_from_slice(&local.octets());
        p[24..40].copy_from_slice(&remote.octets());
        p[68..72].copy_from_slice(&1234u32.to_ne_bytes());
        let s = parse(&p).unwrap();
        assert_eq!(s.local.port(), 8080);
        assert_eq!(s.remote.port(), 40000);
        assert_eq!(s.remote_ip(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.inode, 1234);
        let mut buf = MsgBuf::new();
        request(
            &mut buf,
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            s.family,
            u32::MAX,
            &s.id,
        );
        assert_eq!(buf.len(), 16 + 56);
        assert_eq!(&buf.as_bytes()[16 + 8..16 + 56], &p[4..52]);
    }
}

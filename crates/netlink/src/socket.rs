//! A blocking netlink socket with the two exchanges palisade needs:
//! a transaction (send many messages at once, collect one ack per message)
//! and a dump (send one request, read replies until `NLMSG_DONE`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Error;
use crate::msg::{
    Attrs, Msg, Msgs, NLM_F_ACK_TLVS, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN,
};

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// Receive buffer: the kernel never builds dump datagrams above 32 KiB, and
/// acks are capped (`NETLINK_CAP_ACK`), so this always suffices.
const RECV_BUF: usize = 256 * 1024;
/// Estimated kernel memory per queued ack (skb overhead included).
const ACK_TRUESIZE: usize = 2048;
/// How long a dump waits for the next reply before giving up.
const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One failed message of a transaction, as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// Sequence number of the failed message.
    pub seq: u32,
    /// Positive errno.
    pub errno: i32,
    /// Extended ack message.
    pub message: Option<String>,
    /// Offset of the offending attribute from the start of the failed
    /// message (its `nlmsghdr`), when the kernel pointed at one.
    pub attr_offset: Option<u32>,
}

/// A netlink socket of one protocol (`NETLINK_NETFILTER`,
/// `NETLINK_SOCK_DIAG`), in the network namespace of the thread that opened
/// it.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    sndbuf: usize,
    rcvbuf: usize,
}

impl Socket {
    /// Opens and binds a socket; extended acks are enabled and acks carry
    /// only the header of the failed message (`NETLINK_CAP_ACK`), so a
    /// failed 64 KiB message does not come back whole.
    pub fn open(protocol: i32) -> Result<Socket, Error> {
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(Error::last_os(format!(
                "opening netlink socket (protocol {protocol})"
            )));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("binding netlink socket"));
        }
        let mut s = Socket {
            fd,
            buf: vec![0; RECV_BUF],
            seq: initial_seq(),
            sndbuf: 0,
            rcvbuf: 0,
        };
        // Both are optional niceties: older kernels without them still work.
        let _ = s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        s.sndbuf = s.getsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) as usize;
        s.rcvbuf = s.getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) as usize;
        Ok(s)
    }

    /// A `NETLINK_NETFILTER` socket (nf_tables, conntrack).
    pub fn netfilter() -> Result<Socket, Error> {
        Socket::open(libc::NETLINK_NETFILTER)
    }

    /// A `NETLINK_SOCK_DIAG` socket.
    pub fn sock_diag() -> Result<Socket, Error> {
        Socket::open(libc::NETLINK_SOCK_DIAG)
    }

    /// The index of interface `name` in the socket's network namespace
    /// (which may differ from the calling thread's), or `None` if there is
    /// no such interface. `SIOCGIFINDEX` on any socket answers for the
    /// socket's namespace.
    pub fn interface_index(&self, name: &str) -> Option<u32> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return None;
        }
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: req is a valid ifreq with a NUL-terminated name; the
        // kernel writes the index into it.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
        if rc != 0 {
            return None;
        }
        // SAFETY: on success the kernel filled ifru_ifindex.
        Some(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub fn take_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n.max(1));
        if self.seq < first {
            // Wrapped: restart low, away from 0 (which means "none").
            self.seq = 1;
            return self.take_seqs(n);
        }
        first
    }

    fn setsockopt(&self, level: i32, name: i32, value: i32) -> Result<(), Error> {
        // SAFETY: value is a valid int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os(format!("setsockopt({level}, {name})")));
        }
        Ok(())
    }

    fn getsockopt(&self, level: i32, name: i32) -> Result<i32, Error> {
        let mut value: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as u32;
        // SAFETY: value and len are valid for writes of the given size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &mut value as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::last_os(format!("getsockopt({level}, {name})")));
        }
        Ok(value)
    }

    /// Grows the send buffer (`SO_SNDBUFFORCE`, root only) so that `len`
    /// bytes go out in one `sendmsg`: netlink refuses a datagram larger than
    /// the send buffer.
    fn ensure_sndbuf(&mut self, len: usize) -> Result<(), Error> {
        let want = len + 64 * 1024;
        if self.sndbuf >= want {
            return Ok(());
        }
        let v = i32::try_from(want / 2 + 1)
            .map_err(|_| Error::new("batch too large", libc::EMSGSIZE))?;
        // The kernel doubles the value for its bookkeeping.
        self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v)
            .or_else(|_| self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, v))?;
        self.sndbuf = self.getsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF)? as usize;
        Ok(())
    }

    /// Sets the receive buffer to `bytes` (doubled by the kernel), past the
    /// system's limit where allowed (`SO_RCVBUFFORCE`, root only).
    pub(crate) fn force_rcvbuf(&mut self, bytes: i32) {
        let _ = self
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .or_else(|_| self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes));
        self.rcvbuf = self
            .getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF)
            .unwrap_or(0) as usize;
    }

    /// How long a blocking receive waits for a datagram.
    pub(crate) fn set_receive_timeout(&self, timeout: std::time::Duration) -> Result<(), Error> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os("setting the netlink receive timeout"));
        }
        Ok(())
    }

    /// Waits for the next datagram, up to the receive timeout: `Ok(None)`
    /// when none came.
    pub(crate) fn recv_datagram(&mut self) -> Result<Option<&[u8]>, Error> {
        match self.recv(false) {
            Ok(Some(n)) => Ok(Some(&self.buf[..n])),
            Ok(None) => Ok(None),
            Err(e) if e.errno() == libc::EAGAIN => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Grows the receive buffer so that `acks` acks fit without loss.
    fn ensure_rcvbuf(&mut self, acks: usize) {
        let want = acks * ACK_TRUESIZE + 256 * 1024;
        if self.rcvbuf >= want {
            return;
        }
        self.force_rcvbuf(i32::try_from(want / 2 + 1).unwrap_or(i32::MAX / 2));
    }

    /// Sends `data` (one or more messages) in one `sendmsg`.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.ensure_sndbuf(data.len())?;
        // SAFETY: sockaddr_nl is plain data; zeroed is valid (kernel, pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        loop {
            // SAFETY: data and addr are valid for the given lengths.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    0,
                    &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = Error::last_os(format!("sending {} bytes of netlink messages", data.len()));
            if err.errno() != libc::EINTR {
                return Err(err);
            }
        }
    }

    /// Receives one datagram. `Ok(None)` when `nonblocking` and nothing is
    /// queued.
    fn recv(&mut self, nonblocking: bool) -> Result<Option<usize>, Error> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: buf is valid for writes of its length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    flags,
                )
            };
            if rc >= 0 {
                return Ok(Some(rc as usize));
            }
            let err = Error::last_os("receiving netlink replies");
            match err.errno() {
                libc::EINTR => continue,
                libc::EAGAIN if nonblocking => return Ok(None),
                _ => return Err(err),
            }
        }
    }

    /// Sends messages carrying sequence numbers `first_seq ..
    /// first_seq + count`, each with `NLM_F_ACK`, and collects the kernel's
    /// answers. Returns the failures (empty when everything was acked).
    ///
    /// The kernel processes a netlink request inside `sendmsg`, so every
    /// answer is queued when it returns; they are read until the queue is
    /// empty. An answer for a sequence number outside the range (such as an
    /// nf_tables batch header) is reported too.
    pub fn transact(
        &mut self,
        data: &[u8],
        first_seq: u32,
        count: u32,
    ) -> Result<Vec<Nack>, Error> {
        self.ensure_rcvbuf(count as usize + 2);
        self.send(data)?;
        let mut acked = 0u32;
        let mut nacks = Vec::new();
        while let Some(n) = self.recv(true)? {
            for msg in Msgs::new(&self.buf[..n]) {
                if msg.ty != NLMSG_ERROR {
                    continue;
                }
                let (errno, nack) = parse_error(&msg);
                if errno == 0 {
                    if msg.seq.wrapping_sub(first_seq) < count {
                        acked += 1;
                    }
                } else {
                    nacks.push(nack);
                }
            }
        }
        let answered = acked as usize + nacks.len();
        if nacks.is_empty() && answered < count as usize {
            return Err(Error::new(
                format!("the kernel answered {answered} of {count} netlink messages"),
                libc::ENOBUFS,
            ));
        }
        Ok(nacks)
    }

    /// Sends a dump request (`data`, one message with sequence `seq` and
    /// `NLM_F_DUMP`) and calls `each` for every reply until `NLMSG_DONE`.
    ///
    /// If the kernel flags the dump as interrupted (the table changed while
    /// it was read, `NLM_F_DUMP_INTR`), the whole dump is read and an
    /// `EINTR` error is returned so the caller can retry.
    pub fn dump<F>(&mut self, data: &[u8], seq: u32, mut each: F) -> Result<(), Error>
    where
        F: FnMut(&Msg<'_>) -> Result<(), Error>,
    {
        let _ = self.set_receive_timeout(DUMP_TIMEOUT);
        self.send(data)?;
        let mut interrupted = false;
        let mut failure: Option<Error> = None;
        loop {
            let n = self.recv(false)?.unwrap_or(0);
            let mut done = false;
            for msg in Msgs::new(&self.buf[..n]) {
                if msg.seq != seq {
                    continue;
                }
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.ty {
                    NLMSG_DONE => {
                        let err = msg
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if err < 0 && failure.is_none() {
                            failure = Some(Error::new("dump", -err));
                        }
                        done = true;
                    }
                    NLMSG_ERROR => {
                        let (errno, nack) = parse_error(&msg);
                        if errno != 0 {
                            return Err(
                                Error::new("dump request", errno).with_kernel_message(nack.message)
                            );
                        }
                        done = true;
                    }
                    _ => {
                        if failure.is_none()
                            && let Err(e) = each(&msg)
                        {
                            failure = Some(e);
                        }
                    }
                }
            }
            if done {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if interrupted {
            return Err(Error::new("dump", libc::EINTR));
        }
        Ok(())
    }
}

/// The errno (positive, 0 for an ack) and details of an `NLMSG_ERROR`.
fn parse_error(msg: &Msg<'_>) -> (i32, Nack) {
    let p = msg.payload;
    let errno = p
        .get(..4)
        .map(|b| -i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(libc::EIO);
    let mut nack = Nack {
        seq: msg.seq,
        errno,
        message: None,
        attr_offset: None,
    };
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the failed message's header follows the
        // errno; otherwise the whole message, whose length its header says.
        let orig_len = p
            .get(4..8)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize)
            .unwrap_or(0);
        let capped = msg.flags & 0x100 != 0; // NLM_F_CAPPED
        let skip = 4 + if capped {
            NLMSG_HDRLEN
        } else {
            crate::msg::align(orig_len)
        };
        for a in Attrs::new(p.get(skip..).unwrap_or(&[])) {
            match a.ty {
                NLMSGERR_ATTR_MSG => nack.message = a.str().map(str::to_string),
                NLMSGERR_ATTR_OFFS => nack.attr_offset = a.u32_ne(),
                _ => {}
            }
        }
    }
    (errno, nack)
}

/// A starting sequence number that differs between processes and sockets,
/// so stale replies of an earlier socket are never mistaken for ours.
fn initial_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1 << 20, Ordering::Relaxed);
    (t ^ n ^ std::process::id().rotate_left(16)) & 0x7fff_ffff | 1
}

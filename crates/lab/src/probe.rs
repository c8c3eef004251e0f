use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// True if a TCP connection from `from` to `to` is established within
/// `timeout`.
pub fn tcp_connect(from: &Netns, to: SocketAddr, timeout: Duration) -> bool {
    from.run(|| TcpStream::connect_timeout(&to, timeout).is_ok())
}

/// True if one ICMP echo from `from` to `addr` is answered within 1 s
/// (the `ping` binary; IPv4 and IPv6).
pub fn ping(from: &Netns, addr: IpAddr) -> bool {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    from.command("ping")
        .args([family, "-n", "-q", "-c", "1", "-W", "1", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `cond` every 20 ms until it is true (returns true) or `timeout`
/// passes (returns false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1 in the calling thread's namespace (for
/// servers a test starts on loopback). Another process may take it before
/// the caller binds it, which is unlikely enough for tests.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// A TCP echo server inside a namespace, stopped on drop.
///
/// Every accepted connection gets its own thread that echoes what it reads.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpServer {
    /// Listens on `[::]:port` in `ns` (dual-stack: IPv4 clients show up as
    /// IPv4-mapped addresses); port 0 picks a free one.
    pub fn start(ns: &Netns, port: u16) -> TcpServer {
        TcpServer::bind(ns, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
    }

    /// Listens on `addr` in `ns`.
    ///
    /// # Panics
    /// If the address cannot be bound.
    pub fn bind(ns: &Netns, addr: SocketAddr) -> TcpServer {
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("cannot listen on {addr} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let (stop, accepted, conns) = (stop.clone(), accepted.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let stop = stop.clone();
                            let h = std::thread::spawn(move || echo(stream, &stop));
                            conns.lock().unwrap().push(h);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        TcpServer {
            addr,
            stop,
            accepted,
            acceptor: Some(acceptor),
            conns,
        }
    }

    /// The port the listener got.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the server listens on (possibly `[::]`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for h in conns {
            let _ = h.join();
        }
    }
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// What [`Established::check`] found out about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The echo came back.
    Alive,
    /// The peer reset the connection (RST), or the socket was aborted.
    Reset,
    /// The peer closed the connection (EOF).
    Closed,
    /// No answer within the timeout (packets dropped somewhere).
    Silent,
}

/// A TCP connection to an echo server ([`TcpServer`]) that can tell whether
/// it is still alive, to prove that a ban cuts established connections.
#[derive(Debug)]
pub struct Established {
    stream: TcpStream,
    seq: u64,
    pending: Vec<u8>,
}

impl Established {
    /// Connects from `from` to `to` and checks that the echo works.
    pub fn open(from: &Netns, to: SocketAddr) -> io::Result<Established> {
        let stream = from.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))?;
        stream.set_nodelay(true)?;
        let mut conn = Established {
            stream,
            seq: 0,
            pending: Vec::new(),
        };
        match conn.check(Duration::from_secs(2)) {
            ConnState::Alive => Ok(conn),
            other => Err(io::Error::other(format!(
                "connected to {to}, but the echo check says {other:?}"
            ))),
        }
    }

    /// The local (client) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// The remote (server) address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.stream.peer_addr().expect("peer_addr")
    }

    /// Sends a probe and waits up to `timeout` for its echo.
    pub fn check(&mut self, timeout: Duration) -> ConnState {
        self.seq += 1;
        let token = format!("probe-{}\n", self.seq);
        if let Err(e) = self.stream.write_all(token.as_bytes()) {
            return classify(&e);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1024];
        loop {
            // Echoes of earlier probes that timed out may arrive first.
            if self.pending.ends_with(token.as_bytes()) {
                self.pending.clear();
                return ConnState::Alive;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ConnState::Silent;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) => return ConnState::Closed,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return ConnState::Silent;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return classify(&e),
            }
        }
    }

    /// `check` with a 1 s timeout == [`ConnState::Alive`].
    pub fn is_alive(&mut self) -> bool {
        self.check(Duration::from_secs(1)) == ConnState::Alive
    }
}

fn classify(e: &io::Error) -> ConnState {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ConnState::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnState::Silent,
        _ => ConnState::Reset,
    }
}

//! Which ports are open right now in this network namespace: listening TCP
//! sockets and bound UDP sockets, read from `/proc/net/{tcp,tcp6,udp,udp6}`.
//!
//! A probe of an open port is never counted as a port probe: the service is
//! there to be reached. The tables are re-read at most once a second, and
//! only when a probe needs checking, so a quiet server pays nothing.

use std::time::{Duration, Instant};

/// A cached view of the open ports (TCP and UDP together: a probe line
/// names the protocol, but a port open in either is treated as open).
#[derive(Debug)]
pub struct OpenPorts {
    open: Box<[u64; 1024]>,
    read_at: Option<Instant>,
    max_age: Duration,
    root: std::path::PathBuf,
}

impl Default for OpenPorts {
    fn default() -> Self {
        OpenPorts::new()
    }
}

impl OpenPorts {
    /// The tables of the calling thread's network namespace
    /// (`/proc/thread-self/net`, so a thread that joined another namespace
    /// sees that namespace's sockets).
    pub fn new() -> OpenPorts {
        if std::path::Path::new("/proc/thread-self/net/tcp").exists() {
            OpenPorts::with_root("/proc/thread-self/net")
        } else {
            OpenPorts::with_root("/proc/net")
        }
    }

    /// Reads the tables under `root` (for tests).
    pub fn with_root(root: impl Into<std::path::PathBuf>) -> OpenPorts {
        OpenPorts {
            open: Box::new([0; 1024]),
            read_at: None,
            max_age: Duration::from_secs(1),
            root: root.into(),
        }
    }

    /// True if something listens on (TCP) or is bound to (UDP) `port`.
    pub fn is_open(&mut self, port: u16) -> bool {
        if self.read_at.is_none_or(|t| t.elapsed() >= self.max_age) {
            self.refresh();
        }
        self.open[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    /// Re-reads the tables now.
    pub fn refresh(&mut self) {
        self.open.fill(0);
        for (file, state) in [("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")] {
            let Ok(text) = std::fs::read_to_string(self.root.join(file)) else {
                continue;
            };
            for port in parse_table(&text, state) {
                self.open[usize::from(port) / 64] |= 1 << (port % 64);
            }
        }
        self.read_at = Some(Instant::now());
    }
}

/// Local ports of the rows of a `/proc/net/{tcp,udp}*` table in `state`
/// (`0A` is TCP LISTEN, `07` is UDP unconnected/bound).
fn parse_table<'a>(text: &'a str, state: &'a str) -> impl Iterator<Item = u16> + 'a {
    text.lines().skip(1).filter_map(move |row| {
        let mut f = row.split_whitespace();
        let _sl = f.next()?;
        let local = f.next()?;
        let _remote = f.next()?;
        let st = f.next()?;
        if st != state {
            return None;
        }
        let port_hex = local.rsplit(':').next()?;
        u16::from_str_radix(port_hex, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        let ports: Vec<u16> = parse_table(tcp, "0A").collect();
        assert_eq!(ports, vec![22]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), tcp).unwrap();
        std::fs::write(
            dir.path().join("udp6"),
            "  sl  local_address\n 0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 0\n",
        )
        .unwrap();
        let mut open = OpenPorts::with_root(dir.path());
        assert!(open.is_open(22));
        assert!(open.is_open(53));
        assert!(!open.is_open(8080), "established, not listening");
        assert!(!open.is_open(23));
    }

    #[test]
    fn reads_this_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut open = OpenPorts::new();
        assert!(open.is_open(port));
        drop(l);
        open.refresh();
        assert!(!open.is_open(port));
    }
}

//! Honeyports: decoy TCP ports palisade listens on itself.
//!
//! Nothing legitimate connects to a port nothing serves, so a peer that
//! completes a TCP handshake there is probing, and it cannot have forged its
//! address: the handshake needs the SYN-ACK sent to that address. (A SYN
//! with a forged source never completes one, so the kernel never hands it
//! to `accept`.) Each accepted connection becomes one line,
//!
//! `palisade-honeyport: handshake from 198.51.100.7 to port 2323`
//!
//! which the built-in `honeyport` rule counts (for the source named
//! `honeyport`); its bans are verified. The connection is closed at once:
//! nothing the peer sends is ever read. Accepts are bounded per second
//! (beyond that, connections wait in the kernel's backlog, and the kernel
//! drops what does not fit), so a flood costs a bounded amount of work. An
//! IPv4 peer accepted on a dual-stack socket (`::ffff:a.b.c.d`) is written
//! as its IPv4 address.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::{Line, SourceHandle, stopped};

/// How long the thread waits for connections before checking whether it
/// must stop.
const POLL_MS: i32 = 200;

/// The line for a completed handshake from `peer` to `port`.
pub fn line(peer: IpAddr, port: u16) -> String {
    format!(
        "palisade-honeyport: handshake from {} to port {port}",
        peer.to_canonical()
    )
}

/// Listens on `ports` of `bind` and sends a line per accepted connection,
/// at most `per_second` a second.
pub fn spawn(
    name: &str,
    bind: IpAddr,
    ports: &[u16],
    per_second: u32,
    tx: Sender<Line>,
) -> anyhow::Result<SourceHandle> {
    if ports.is_empty() {
        anyhow::bail!("a honeyport source needs at least one port in `ports`");
    }
    let listeners = ports
        .iter()
        .map(|&p| {
            let addr = SocketAddr::new(bind, p);
            let l = TcpListener::bind(addr).with_context(|| {
                format!("cannot listen on {addr} (is something else using the port?)")
            })?;
            l.set_nonblocking(true)?;
            Ok((l, p))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let per_second = per_second.max(1);
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut fds: Vec<libc::pollfd> = listeners
                .iter()
                .map(|(l, _)| libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let mut budget = Budget::new(per_second);
            while !stopped(&flag) {
                if !budget.available() {
                    std::thread::sleep(budget.wait());
                    continue;
                }
                // SAFETY: `fds` is a valid array of pollfd of that length,
                // whose descriptors the listeners keep open.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, POLL_MS) };
                if n <= 0 {
                    continue;
                }
                for (k, (listener, port)) in listeners.iter().enumerate() {
                    if fds[k].revents == 0 {
                        continue;
                    }
                    fds[k].revents = 0;
                    while budget.available() {
                        match listener.accept() {
                            // Dropping the stream closes it unread.
                            Ok((stream, peer)) => {
                                drop(stream);
                                budget.take();
                                let text = line(peer.ip(), *port);
                                if tx.send(Line::new(&src, text, Timestamp::now())).is_err() {
                                    return Ok(());
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            // A connection reset before it was accepted, or
                            // out of descriptors for a moment: not fatal.
                            Err(e) => {
                                tracing::debug!(port, "honeyport accept: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Ok(())
        })?;
    Ok(SourceHandle::new(name.to_string(), stop, thread))
}

/// Accepts allowed in the current second.
struct Budget {
    per_second: u32,
    used: u32,
    since: Instant,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        Budget {
            per_second,
            used: 0,
            since: Instant::now(),
        }
    }

    fn refresh(&mut self) {
        if self.since.elapsed() >= Duration::from_secs(1) {
            self.since = Instant::now();
            self.used = 0;
        }
    }

    fn available(&mut self) -> bool {
        self.refresh();
        self.used < self.per_second
    }

    fn take(&mut self) {
        self.used += 1;
    }

    /// Until the next second starts.
    fn wait(&self) -> Duration {
        Duration::from_secs(1)
            .saturating_sub(self.since.elapsed())
            .min(Duration::from_millis(POLL_MS as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_peers_are_written_as_ipv4() {
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(
            line(mapped, 23),
            "palisade-honeyport: handshake from 198.51.100.7 to port 23"
        );
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert!(line(v6, 23).contains("from 2001:db8::7 "));
    }

    #[test]
    fn budget_bounds_accepts_per_second() {
        let mut b = Budget::new(3);
        for _ in 0..3 {
            assert!(b.available());
            b.take();
        }
        assert!(!b.available());
        assert!(b.wait() <= Duration::from_millis(POLL_MS as u64));
    }
}

#[cfg(test)]
mod rule_tests {
    use crate::{Engine, HitKind, builtin};

    #[test]
    fn the_builtin_rule_counts_honeyport_lines_of_the_honeyport_source_only() {
        let mut e = Engine::compile(&builtin::rules()).unwrap();
        let mut out = Vec::new();
        let text = super::line("2001:db8::7".parse().unwrap(), 2323);
        e.check("honeyport", &text, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(e.rules()[out[0].rule].name, "honeyport");
        assert_eq!(out[0].kind, HitKind::Bad);
        assert_eq!(out[0].address.unwrap().to_string(), "2001:db8::7");
        // The same text in another source's log counts nothing.
        out.clear();
        e.check("auth", &text, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}

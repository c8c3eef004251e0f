//! Cutting the open connections of a banned network.
//!
//! A ban drops new packets, but a connection that is already established
//! would stall rather than end, and a conntrack entry in `ESTABLISHED` may
//! let its packets through rulesets that accept established traffic before
//! palisade's chain sees them. [`kill_connections`] therefore
//!
//! 1. destroys local TCP sockets whose remote address is in the network
//!    (sock_diag `SOCK_DESTROY`, like `ss -K dst NET`): the kernel aborts
//!    them and sends a reset to the peer;
//! 2. deletes conntrack entries whose original source or destination is in
//!    the network.
//!
//! It acts on the network namespace of the thread that created the
//! [`Killer`].

use palisade_model::{Family, Net, NetMap};
use palisade_netlink::{Socket, ct, diag};

use crate::enforcer::EnforceError;

/// What [`Killer::kill`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KillReport {
    /// TCP sockets destroyed.
    pub sockets: usize,
    /// Conntrack entries deleted.
    pub conntrack: usize,
}

impl KillReport {
    /// Sockets and conntrack entries removed.
    pub fn total(&self) -> usize {
        self.sockets + self.conntrack
    }
}

/// Holds the two netlink sockets, so a killer thread opens them once.
#[derive(Debug)]
pub struct Killer {
    diag: Socket,
    ct: Socket,
}

impl Killer {
    /// Opens the sock_diag and conntrack sockets in the calling thread's
    /// network namespace (needs `CAP_NET_ADMIN`).
    pub fn new() -> Result<Killer, EnforceError> {
        Ok(Killer {
            diag: Socket::sock_diag()?,
            ct: Socket::netfilter()?,
        })
    }

    /// Kills the connections of `net` (see the module docs). Both steps are
    /// tried even if the first fails; the first error is returned.
    pub fn kill(&mut self, net: &Net) -> Result<KillReport, EnforceError> {
        self.kill_all(std::slice::from_ref(net))
    }

    /// Kills the connections of every network in `nets` with one socket dump
    /// and one conntrack dump per family, however many networks there are
    /// (a bulk ban of a million addresses must not dump a million times).
    pub fn kill_all(&mut self, nets: &[Net]) -> Result<KillReport, EnforceError> {
        // Built on the first connection to check: a bulk ban (a joining
        // node's snapshot) on a quiet host has few or none, and hosts go in
        // a hash set, far cheaper to fill than the network map.
        let targets = std::cell::OnceCell::new();
        let hit = |addr: std::net::IpAddr| {
            let (hosts, networks) = targets.get_or_init(|| {
                let mut hosts = std::collections::HashSet::new();
                let mut networks = NetMap::new();
                for n in nets {
                    if n.is_host() {
                        hosts.insert(n.addr());
                    } else {
                        networks.insert(*n, ());
                    }
                }
                (hosts, networks)
            });
            // Through the model, so a mapped IPv6 address is its IPv4 one.
            let host = Net::host(addr);
            hosts.contains(&host.addr()) || networks.covering(&host).next().is_some()
        };
        let has = |f: Family| nets.iter().any(|n| n.family() == f);
        let mut report = KillReport::default();
        let sockets = self.kill_sockets(has(Family::V4), has(Family::V6), &hit);
        let conntrack = self.kill_conntrack(has(Family::V4), has(Family::V6), &hit);
        report.sockets = sockets?;
        report.conntrack = conntrack?;
        Ok(report)
    }

    fn kill_sockets(
        &mut self,
        v4: bool,
        v6: bool,
        hit: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Result<usize, EnforceError> {
        // IPv4 peers of dual-stack sockets show up in the IPv6 dump with
        // mapped addresses (the model maps them back to IPv4), so IPv4
        // networks look at both dumps.
        let mut families = Vec::new();
        if v4 {
            families.push(libc::AF_INET);
        }
        if v4 || v6 {
            families.push(libc::AF_INET6);
        }
        let mut killed = 0;
        for f in families {
            let victims: Vec<diag::TcpSocket> =
                diag::dump_tcp(&mut self.diag, f as u8, diag::CONNECTED_STATES)?
                    .into_iter()
                    .filter(|s| hit(s.remote_ip()))
                    .collect();
            killed += diag::destroy(&mut self.diag, &victims)?;
        }
        Ok(killed)
    }

    fn kill_conntrack(
        &mut self,
        v4: bool,
        v6: bool,
        hit: &dyn Fn(std::net::IpAddr) -> bool,
    ) -> Result<usize, EnforceError> {
        // The kernel keeps one conntrack table for all namespaces and a dump
        // walks all of it (milliseconds on a busy host, for every ban); a
        // namespace that tracks nothing has nothing to cut.
        if tracked_here() == Some(0) {
            return Ok(0);
        }
        let mut killed = 0;
        for (wanted, family) in [(v4, ct::AF_INET), (v6, ct::AF_INET6)] {
            if !wanted {
                continue;
            }
            let victims: Vec<ct::CtEntry> = ct::dump(&mut self.ct, family)?
                .into_iter()
                .filter(|e| hit(e.src) || hit(e.dst))
                .collect();
            killed += ct::delete(&mut self.ct, &victims)?;
        }
        Ok(killed)
    }
}

/// How many connections conntrack tracks in this thread's network
/// namespace (`None` when that cannot be read: conntrack not loaded, or
/// an older kernel; the dump then decides).
fn tracked_here() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Kills the connections of `net` in the calling thread's network
/// namespace (see the module docs).
pub fn kill_connections(net: &Net) -> Result<KillReport, EnforceError> {
    Killer::new()?.kill(net)
}

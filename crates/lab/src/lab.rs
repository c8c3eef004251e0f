use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

use crate::netns::{Netns, ip};

/// Most hosts a lab can hold: they share one /24 and one /64.
const MAX_HOSTS: usize = 250;

/// One host of a [`Lab`]: a namespace with an `eth0` and one IPv4 and one
/// IPv6 address. Dereferences to its [`Netns`], so probes take `&host`.
#[derive(Debug)]
pub struct Host {
    name: String,
    netns: Netns,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Host {
    /// The name given to the builder (`attacker`, `victim`, `hub`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn ns_name(&self) -> &str {
        self.netns.name()
    }

    /// The IPv4 address of `eth0` (from 198.18.0.0/24).
    pub fn v4(&self) -> Ipv4Addr {
        self.v4
    }

    /// The IPv6 address of `eth0` (from 2001:db8::/64).
    pub fn v6(&self) -> Ipv6Addr {
        self.v6
    }

    /// `v4` or `v6` as an [`IpAddr`].
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 { self.v6.into() } else { self.v4.into() }
    }
}

impl Deref for Host {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.netns
    }
}

/// Hosts in network namespaces, linked so that they reach each other and
/// nothing else. Everything is deleted on drop.
///
/// Host number `i` (counting from 1 in the order they were added) gets
/// `198.18.0.i/24` and `2001:db8::i/64` on `eth0`; IPv6 addresses are added
/// with `nodad`, so they are usable at once. No default route is set.
#[derive(Debug)]
pub struct Lab {
    hosts: Vec<Host>,
    /// Holds the bridge when hosts hang off a switch; dropped last.
    switch: Option<Netns>,
}

impl Lab {
    /// `attacker` (198.18.0.1, 2001:db8::1) and `victim` (198.18.0.2,
    /// 2001:db8::2), joined by a veth pair.
    pub fn new() -> Lab {
        let attacker = new_host("attacker", 1);
        let victim = new_host("victim", 2);
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            attacker.ns_name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            victim.ns_name(),
        ]);
        configure(&attacker);
        configure(&victim);
        wait_ipv6_ready(&attacker);
        wait_ipv6_ready(&victim);
        Lab {
            hosts: vec![attacker, victim],
            switch: None,
        }
    }

    /// `n` hosts named `host1` .. `hostN` on one bridge.
    pub fn with_hosts(n: usize) -> Lab {
        let mut b = LabBuilder::new();
        for i in 1..=n {
            b = b.host(&format!("host{i}"));
        }
        b.build()
    }

    /// The host named `attacker`.
    pub fn attacker(&self) -> &Host {
        self.host("attacker")
    }

    /// The host named `victim`.
    pub fn victim(&self) -> &Host {
        self.host("victim")
    }

    /// The host with this name.
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("this lab has no host named {name:?}"))
    }

    /// All hosts, in the order they were added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The namespace holding the bridge, for labs built on a switch.
    pub fn switch(&self) -> Option<&Netns> {
        self.switch.as_ref()
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts first, so that the bridge's ports disappear with them.
        self.hosts.clear();
        self.switch.take();
    }
}

/// Builds a [`Lab`] of named hosts on one bridge (`br0` in a separate
/// "switch" namespace), e.g. a hub and three agents:
///
/// ```no_run
/// let lab = palisade_lab::LabBuilder::new()
///     .hosts(["hub", "agent1", "agent2", "agent3"])
///     .build();
/// let hub_addr = lab.host("hub").v4();
/// ```
#[derive(Debug, Default)]
pub struct LabBuilder {
    names: Vec<String>,
}

impl LabBuilder {
    /// A builder with no host yet.
    pub fn new() -> LabBuilder {
        LabBuilder::default()
    }

    /// Adds a host; names must be unique.
    pub fn host(mut self, name: &str) -> LabBuilder {
        assert!(
            !self.names.iter().any(|n| n == name),
            "duplicate host name {name:?}"
        );
        self.names.push(name.to_string());
        self
    }

    /// Adds several hosts, in order; names must be unique.
    pub fn hosts<I, S>(mut self, names: I) -> LabBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for n in names {
            self = self.host(n.as_ref());
        }
        self
    }

    /// Creates the namespaces, the bridge and the links.
    ///
    /// # Panics
    /// With more than 250 hosts, or if an `ip` command fails.
    pub fn build(self) -> Lab {
        assert!(
            self.names.len() <= MAX_HOSTS,
            "a lab holds at most {MAX_HOSTS} hosts"
        );
        let switch = Netns::new();
        // A switch filters nothing: with br_netfilter in the kernel, every
        // frame the bridge forwards would also pass the switch namespace's
        // IP hooks (about a fifth of the kernel's work per packet in a
        // benchmark of 10,000 streams).
        for table in ["iptables", "ip6tables", "arptables"] {
            let knob = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
            if std::path::Path::new(&knob).exists() {
                switch.exec("sh", &["-c", &format!("echo 0 > {knob}")]);
            }
        }
        ip(&["-n", switch.name(), "link", "add", "br0", "type", "bridge"]);
        // No IGMP/MLD snooping: neighbour discovery must reach every port at
        // once, without waiting for the bridge to learn listeners.
        ip(&[
            "-n",
            switch.name(),
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", switch.name(), "link", "set", "br0", "up"]);
        let mut hosts = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let host = new_host(name, i + 1);
            let port = format!("p{}", i + 1);
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                host.ns_name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                switch.name(),
            ]);
            ip(&[
                "-n",
                switch.name(),
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            configure(&host);
            hosts.push(host);
        }
        for host in &hosts {
            wait_ipv6_ready(host);
        }
        Lab {
            hosts,
            switch: Some(switch),
        }
    }
}

fn new_host(name: &str, index: usize) -> Host {
    assert!((1..=MAX_HOSTS).contains(&index));
    Host {
        name: name.to_string(),
        netns: Netns::new(),
        v4: Ipv4Addr::new(198, 18, 0, index as u8),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, index as u16),
    }
}

/// Addresses `eth0` (which must already be in the host's namespace) and
/// brings it up.
fn configure(host: &Host) {
    let ns = host.ns_name();
    let v4 = format!("{}/24", host.v4);
    let v6 = format!("{}/64", host.v6);
    ip(&["-n", ns, "addr", "add", &v4, "dev", "eth0"]);
    ip(&["-n", ns, "addr", "add", &v6, "dev", "eth0", "nodad"]);
    // The link-local address the kernel adds at `up` would otherwise go
    // through duplicate address detection and change state a second later:
    // programs that watch for network changes (Chromium aborts its page
    // loads with ERR_NETWORK_CHANGED) would see the lab change under them.
    host.run(|| std::fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"))
        .unwrap_or_else(|e| panic!("cannot turn off IPv6 DAD on {}: {e}", host.name));
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
}

/// Waits until IPv6 works on the host's `eth0`: its link-local address
/// is there and final (not tentative), so the lab's addresses no longer
/// change.
///
/// The kernel configures IPv6 on a link (multicast routes, which neighbour
/// discovery needs, and the link-local address) only once the carrier is
/// seen as up, and that event can lag up to a second behind `link set up`
/// when many links change at once. Until then neighbour solicitations are
/// dropped, so the first IPv6 pings of a fresh lab would fail.
fn wait_ipv6_ready(host: &Host) {
    /// `IFA_F_TENTATIVE` in `if_inet6`'s flags column.
    const TENTATIVE: u32 = 0x40;
    let ready = || {
        host.run(|| std::fs::read_to_string("/proc/thread-self/net/if_inet6"))
            .is_ok_and(|s| {
                s.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() == 6
                        && f[5] == "eth0"
                        && f[0].starts_with("fe80")
                        && u32::from_str_radix(f[4], 16).is_ok_and(|flags| flags & TENTATIVE == 0)
                })
            })
    };
    assert!(
        crate::probe::wait_until(std::time::Duration::from_secs(5), ready),
        "IPv6 did not come up on eth0 of {} within 5 s",
        host.name
    );
}

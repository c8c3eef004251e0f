//! Networks as attackers, end to end: a hub and three agents on lab hosts,
//! real kernels, real traffic from an attacker holding many addresses of
//! one network. Twenty banned IPv4 hosts of one /24 roll up into the /24
//! on every agent (an allowed host inside still gets through, a host never
//! banned is now blocked, `explain` lists the members); an IPv6 attacker
//! rotating through fifty addresses of its /64 is banned as the /64 on
//! every agent (counted per /64 by the detector that saw it); an agent on
//! its own rolls up its own bans with the same rule.

mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use palisade_lab::{Host, Lab, LabBuilder, TcpServer, require_root_and, wait_until};
use support::{Agent, Hub, kernel_blocks};

const PORT: u16 = 8080;
const SPREAD: Duration = Duration::from_secs(15);
const WEBS: [&str; 3] = ["web1", "web2", "web3"];
/// The attacker's IPv4 network (outside the lab's own 198.18.0.0/24, where
/// the hub lives).
const V4_NET: &str = "198.18.1.0/24";
/// The attacker's IPv6 network (outside the lab's own 2001:db8::/64).
const V6_NET: &str = "2001:db8:1::/64";

fn v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, i))
}

fn v6(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i))
}

/// hub 198.18.0.1, web1..3 .2-.4, attacker .5 holding `addrs` too.
struct Net {
    lab: Lab,
    hub: Hub,
    agents: Vec<Agent>,
    _servers: Vec<TcpServer>,
}

impl Net {
    fn start(hub_config: &str, agent_configs: [&str; 3], addrs: &[IpAddr]) -> Net {
        let lab = LabBuilder::new()
            .hosts(["hub", "web1", "web2", "web3", "attacker"])
            .build();
        let attacker = lab.host("attacker");
        for a in addrs {
            let with_len = match a {
                IpAddr::V4(_) => format!("{a}/24"),
                IpAddr::V6(_) => format!("{a}/64"),
            };
            attacker.exec("ip", &["addr", "add", &with_len, "dev", "eth0", "nodad"]);
        }
        let webs: Vec<(&str, &str)> = WEBS.into_iter().zip(agent_configs).collect();
        let (hub, agents, servers) = support::hub_and_agents(&lab, hub_config, &webs, PORT, |h| {
            // The attacker's networks are on the same link.
            h.exec("ip", &["route", "add", V4_NET, "dev", "eth0"]);
            h.exec("ip", &["-6", "route", "add", V6_NET, "dev", "eth0"]);
        });
        Net {
            lab,
            hub,
            agents,
            _servers: servers,
        }
    }

    fn webs(&self) -> Vec<&Host> {
        WEBS.iter().map(|n| self.lab.host(n)).collect()
    }

    /// Whether the attacker, from its address `from`, reaches web `i`.
    fn reaches(&self, from: IpAddr, i: usize) -> bool {
        let web = self.webs()[i];
        let to = match from {
            IpAddr::V4(_) => SocketAddr::new(web.v4().into(), PORT),
            IpAddr::V6(_) => SocketAddr::new(web.v6().into(), PORT),
        };
        connect_from(self.lab.host("attacker"), from, to)
    }

    /// Waits until `element` ("a", "a/len") is in every agent's block set.
    fn wait_blocked_everywhere(&self, element: &str, what: &str) {
        assert!(
            wait_until(SPREAD, || self
                .webs()
                .iter()
                .all(|h| kernel_blocks(h, element))),
            "{what} did not reach every agent\n{}",
            self.logs()
        );
    }

    fn reaches_all(&self, from: IpAddr) -> bool {
        (0..3).all(|i| self.reaches(from, i))
    }

    fn reaches_none(&self, from: IpAddr) -> bool {
        (0..3).all(|i| !self.reaches(from, i))
    }

    fn logs(&self) -> String {
        let mut s = format!("--- hub ---\n{}\n", self.hub.log());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", WEBS[i], a.log()));
        }
        s
    }
}

/// A TCP connection from `host`, bound to its address `from`, to `to`.
fn connect_from(host: &Host, from: IpAddr, to: SocketAddr) -> bool {
    host.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let socket = match from {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .expect("a socket");
            socket.bind(SocketAddr::new(from, 0)).expect("bind");
            matches!(
                tokio::time::timeout(Duration::from_millis(600), socket.connect(to)).await,
                Ok(Ok(_))
            )
        })
    })
}

#[test]
fn twenty_banned_hosts_of_a_24_roll_up_into_the_24_on_every_agent() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let allowed = v4(50);
    let never_banned = v4(100);
    let members: Vec<IpAddr> = (1..=20).map(v4).collect();
    let mut addrs = members.clone();
    addrs.extend([allowed, never_banned]);
    let hub_config = format!(
        "[rollup]\nhosts = 20\nwindow = \"10m\"\nipv4 = true\n\
         [[hub.allow]]\nnet = \"{allowed}\"\ncomment = \"partner inside the attacker's /24\"\n"
    );
    let net = Net::start(&hub_config, [""; 3], &addrs);
    assert!(
        wait_until(SPREAD, || net.reaches_all(never_banned)),
        "the lab's extra network does not work\n{}",
        net.logs()
    );
    // 19 hosts reported by the three servers (fail2ban's action): banned
    // one by one, no roll-up yet.
    for (k, host) in members[..19].iter().enumerate() {
        let out = net.agents[k % 3].cli(&["report", "fail2ban", "sshd", &host.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = members[18].to_string();
    net.wait_blocked_everywhere(&last, "the reports");
    assert!(net.reaches_all(never_banned), "19 hosts: not yet rolled up");
    // The twentieth.
    net.agents[0].ok(&["report", "fail2ban", "sshd", &members[19].to_string()]);
    net.wait_blocked_everywhere(V4_NET, "the /24");
    // The members are replaced by the network ban.
    assert!(
        wait_until(SPREAD, || net
            .webs()
            .iter()
            .all(|h| !kernel_blocks(h, &members[0].to_string()))),
        "the member bans are still in the kernels\n{}",
        net.logs()
    );
    // Real traffic: a host of the /24 never banned is blocked now, the
    // members are, and the allowed host still gets through, everywhere.
    assert!(net.reaches_none(never_banned), "{}", net.logs());
    assert!(net.reaches_none(members[3]));
    assert!(
        net.reaches_all(allowed),
        "an allowed host inside lost access"
    );
    // Every node tells the story: the rule, and the members.
    for agent in &net.agents {
        let story = agent.ok(&["explain", &never_banned.to_string()]);
        assert!(story.contains("BLOCKED"), "{story}");
        assert!(story.contains("rule     rollup"), "{story}");
        assert!(story.contains("policy on hub"), "{story}");
        assert!(
            story.contains("20 hosts of 198.18.1.0/24 banned within 10m"),
            "{story}"
        );
        for m in &members {
            assert!(
                story.contains(&format!("{m} (fail2ban/sshd, report on web")),
                "{m} missing: {story}"
            );
        }
        let story = agent.ok(&["explain", &allowed.to_string()]);
        assert!(story.contains("ALLOWED"), "{story}");
    }
}

/// A sshd failure line from `addr`.
fn sshd_failure(addr: &IpAddr, i: usize) -> String {
    format!(
        "Nov 21 10:00:{:02} web1 sshd[{}]: Failed password for invalid user admin{i} from {addr} port {} ssh2",
        i % 60,
        1000 + i,
        40000 + i
    )
}

#[test]
fn an_ipv6_attacker_rotating_through_its_64_is_banned_as_the_64_on_every_agent() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let rotation: Vec<IpAddr> = (1..=50).map(v6).collect();
    let next = v6(0x99);
    let mut addrs = rotation.clone();
    addrs.push(next);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let web1 = format!(
        "[[source]]\nkind = \"file\"\nname = \"auth\"\npath = {:?}\nstart = \"beginning\"\n",
        log.display().to_string()
    );
    let net = Net::start("", [&web1, "", ""], &addrs);
    assert!(
        wait_until(SPREAD, || net.reaches_all(next)),
        "the lab's extra network does not work\n{}",
        net.logs()
    );
    // Each address fails once, as an attacker rotating through its /64
    // does: no single address comes near a threshold.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for (i, a) in rotation.iter().enumerate() {
        writeln!(f, "{}", sshd_failure(a, i)).unwrap();
    }
    drop(f);
    net.wait_blocked_everywhere(V6_NET, "the /64");
    // An address of the /64 it has not used yet is blocked everywhere.
    assert!(net.reaches_none(next), "{}", net.logs());
    for agent in &net.agents {
        let story = agent.ok(&["explain", &next.to_string()]);
        assert!(
            story.contains("BLOCKED") && story.contains(V6_NET),
            "{story}"
        );
    }
}

#[test]
fn an_agent_on_its_own_rolls_up_its_bans_with_the_same_rule() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let allowed = v4(50);
    let never_banned = v4(100);
    let members: Vec<IpAddr> = (1..=5).map(v4).collect();
    for a in members.iter().chain([&allowed, &never_banned]) {
        attacker.exec("ip", &["addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    victim.exec("ip", &["route", "add", V4_NET, "dev", "eth0"]);
    let _server = TcpServer::start(victim, PORT);
    let agent = Agent::start(
        victim,
        "[rollup]\nhosts = 5\nwindow = \"10m\"\nipv4 = true\n[[allow]]\nnet = \"198.18.1.50\"\ncomment = \"partner\"\n",
    );
    let to = SocketAddr::new(victim.v4().into(), PORT);
    assert!(connect_from(attacker, never_banned, to));
    for m in &members[..4] {
        agent.ok(&["ban", &m.to_string(), "--for", "1h"]);
    }
    assert!(!kernel_blocks(victim, V4_NET), "4 of 5: not yet");
    agent.ok(&["ban", &members[4].to_string(), "--for", "1h"]);
    assert!(kernel_blocks(victim, V4_NET), "{}", agent.log());
    assert!(!kernel_blocks(victim, &members[0].to_string()));
    assert!(!connect_from(attacker, never_banned, to));
    assert!(
        connect_from(attacker, allowed, to),
        "the allowed host inside lost access"
    );
    let story = agent.ok(&["explain", &never_banned.to_string()]);
    assert!(
        story.contains("rule     rollup")
            && story.contains("5 hosts of 198.18.1.0/24 banned within 10m")
            && story.contains("this server only"),
        "{story}"
    );
    for m in &members {
        assert!(
            story.contains(&format!("{m} (ban, cli on ")),
            "{m}: {story}"
        );
    }
}

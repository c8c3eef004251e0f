//! Tests of the lab itself, against the real kernel (root only).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade_lab::{
    ConnState, Established, Lab, LabBuilder, Netns, Proc, TcpServer, ping, require_root_and,
    tcp_connect,
};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn two_hosts_ping_both_families() {
    if !require_root_and(&["ping"]) {
        return;
    }
    let lab = Lab::new();
    let (a, v) = (lab.attacker(), lab.victim());
    assert_eq!(a.v4().to_string(), "198.18.0.1");
    assert_eq!(v.v6().to_string(), "2001:db8::2");
    assert!(ping(a, v.v4().into()), "attacker -> victim v4");
    assert!(ping(a, v.v6().into()), "attacker -> victim v6");
    assert!(ping(v, a.v4().into()), "victim -> attacker v4");
    assert!(ping(v, a.v6().into()), "victim -> attacker v6");
    // Nothing is routed out of the lab.
    assert!(!ping(a, "198.19.0.1".parse().unwrap()));
    let routes = a.exec("ip", &["route", "show", "default"]);
    assert!(
        routes.trim().is_empty(),
        "unexpected default route: {routes}"
    );
}

#[test]
fn namespaces_are_gone_after_drop_even_with_processes_inside() {
    if !require_root_and(&["sleep"]) {
        return;
    }
    let lab = Lab::new();
    let names: Vec<String> = lab
        .hosts()
        .iter()
        .map(|h| h.ns_name().to_string())
        .collect();
    let mut child = lab.victim().command("sleep").arg("600").spawn().unwrap();
    assert!(palisade_lab::wait_until(Duration::from_secs(2), || lab
        .victim()
        .pids()
        .contains(&(child.id() as i32))));
    for n in &names {
        assert!(netns_exists(n), "{n} should exist");
        assert!(n.starts_with(&format!("pal-{}-", std::process::id())));
    }
    drop(lab);
    for n in &names {
        assert!(!netns_exists(n), "{n} should be deleted");
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep inside the namespace was killed");
}

#[test]
fn namespaces_are_deleted_on_panic() {
    if !require_root_and(&[]) {
        return;
    }
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new();
        name = ns.name().to_string();
        panic!("test failure inside a lab");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!netns_exists(&name));
}

#[test]
fn run_puts_sockets_in_the_namespace() {
    if !require_root_and(&[]) {
        return;
    }
    let ns = Netns::new();
    let root_ifaces = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let ns_ifaces = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(ns_ifaces.contains("lo:"));
    assert_ne!(root_ifaces, ns_ifaces);
    // A loopback listener inside is not reachable from outside.
    let server = TcpServer::bind(&ns, "127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr();
    assert!(tcp_connect(&ns, addr, Duration::from_secs(1)));
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ns.run(|| panic!("boom"))));
    assert!(panicked.is_err(), "panics propagate out of run");
}

#[test]
fn tcp_and_established_connections() {
    if !require_root_and(&[]) {
        return;
    }
    let lab = Lab::new();
    let server = TcpServer::start(lab.victim(), 0);
    for ip in [IpAddr::from(lab.victim().v4()), lab.victim().v6().into()] {
        let to = SocketAddr::new(ip, server.port());
        assert!(
            tcp_connect(lab.attacker(), to, Duration::from_secs(2)),
            "{to}"
        );
        let mut conn = Established::open(lab.attacker(), to).unwrap();
        assert!(conn.is_alive());
        assert_eq!(conn.check(Duration::from_millis(500)), ConnState::Alive);
    }
    assert!(server.accepted() >= 4);
    // A closed port refuses.
    let closed = SocketAddr::new(lab.victim().v4().into(), 1);
    assert!(!tcp_connect(lab.attacker(), closed, Duration::from_secs(1)));
    // Dropping the server closes its connections.
    let to = SocketAddr::new(lab.victim().v4().into(), server.port());
    let mut conn = Established::open(lab.attacker(), to).unwrap();
    drop(server);
    let state = conn.check(Duration::from_secs(1));
    assert!(
        matches!(state, ConnState::Closed | ConnState::Reset),
        "{state:?}"
    );
}

#[test]
fn bridge_lab_with_named_hosts() {
    if !require_root_and(&["ping"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["hub", "a1", "a2", "a3"]).build();
    assert_eq!(lab.hosts().len(), 4);
    let hub = lab.host("hub");
    assert_eq!(hub.v4().to_string(), "198.18.0.1");
    assert_eq!(lab.host("a3").v6().to_string(), "2001:db8::4");
    for h in &lab.hosts()[1..] {
        assert!(ping(h, hub.v4().into()), "{} -> hub v4", h.name());
        assert!(ping(h, hub.v6().into()), "{} -> hub v6", h.name());
    }
    assert!(ping(lab.host("a1"), lab.host("a3").v4().into()));
    // The switch hands frames on without passing them to netfilter.
    let knob = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if Path::new(knob).exists() {
        assert_eq!(lab.switch().unwrap().exec("cat", &[knob]).trim(), "0");
    }
    let switch = lab.switch().unwrap().name().to_string();
    drop(lab);
    assert!(!netns_exists(&switch));
}

#[test]
fn proc_guard_stops_and_keeps_output() {
    if !require_root_and(&["sh"]) {
        return;
    }
    let ns = Netns::new();
    let mut cmd = ns.command("sh");
    cmd.args(["-c", "echo ready >&2; echo out; exec sleep 600"]);
    let mut p = Proc::spawn(cmd).unwrap();
    assert!(
        p.wait_for_stderr("ready", Duration::from_secs(5)),
        "{}",
        p.describe()
    );
    assert!(p.wait_for_stdout("out", Duration::from_secs(5)));
    assert!(p.try_wait().is_none());
    let pid = p.pid();
    let status = p.stop();
    assert!(!status.success());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            // Reaped: the pid may have been reused, but not by our sleep.
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !cmdline.contains("sleep")
        }
    );
    // A process that ignores SIGTERM is killed after the grace period.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; echo armed >&2; while :; do sleep 0.1; done",
    ]);
    let mut p = Proc::spawn(cmd).unwrap();
    assert!(p.wait_for_stderr("armed", Duration::from_secs(5)));
    let status = p.stop();
    assert!(!status.success());
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !require_root_and(&[]) {
        return;
    }
    // Pids never exceed 2^22 on Linux, so this one cannot be alive.
    let stale = "pal-9999999-0";
    let status = Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert!(status.success());
    let mine = Netns::new();
    Netns::remove_stale();
    assert!(!netns_exists(stale), "{stale} should have been removed");
    assert!(netns_exists(mine.name()), "live namespaces are kept");
}

#[test]
fn twenty_hosts_reach_the_first() {
    if !require_root_and(&["ping"]) {
        return;
    }
    let lab = Lab::with_hosts(20);
    assert_eq!(lab.hosts().len(), 20);
    assert_eq!(lab.host("host20").v4().to_string(), "198.18.0.20");
    let first = lab.host("host1");
    for h in &lab.hosts()[1..] {
        assert!(ping(h, first.v6().into()), "{} -> host1", h.name());
    }
}

//! Detection inside the agent, end to end: log lines and kernel-reported
//! port probes become bans in the kernel, through the same guard as every
//! other ban.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_lab::{Lab, LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use support::Agent;

const PORT: u16 = 8080;

fn append(path: &std::path::Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn sshd_failure(addr: &str, i: usize) -> String {
    format!(
        "Nov 21 10:00:{:02} web1 sshd[{}]: Failed password for invalid user admin{i} from {addr} port {} ssh2",
        i % 60,
        1000 + i,
        40000 + i
    )
}

fn config_following(log: &std::path::Path, extra: &str) -> String {
    format!(
        "[[source]]\nkind = \"file\"\nname = \"auth\"\npath = {:?}\nstart = \"beginning\"\n{extra}",
        log.display().to_string()
    )
}

#[test]
fn failed_logins_in_a_followed_log_ban_the_attacker_and_a_good_login_forgives() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    // A banban-style rule with a brief throttle after 3 failures and a long
    // block after 6, plus a good pattern.
    let rule = r#"
[[rule]]
name = "ssh-staged"
program = "sshd"
bad = ['^Failed password for (?:invalid user )?.*? from <HOST> port \d+ ssh2$']
good = ['^Accepted password for \S+ from <HOST> port \d+ ssh2$']
[[rule.stages]]
name = "throttle"
count = 3
within = "10m"
ban = "2m"
[[rule.stages]]
name = "block"
count = 6
within = "1h"
ban = "2d"
"#;
    let agent = Agent::start(victim, &config_following(&log, rule));
    let me = attacker.v4().to_string();
    let target = SocketAddr::new(victim.v4().into(), PORT);
    assert!(tcp_connect(attacker, target, Duration::from_secs(1)));

    append(
        &log,
        &(0..2).map(|i| sshd_failure(&me, i)).collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !agent.ok(&["list"]).contains(&me),
        "two failures are below every stage"
    );

    append(&log, &[sshd_failure(&me, 2)]);
    assert!(
        wait_until(Duration::from_secs(5), || agent.ok(&["list"]).contains(&me)),
        "the third failure should throttle\n{}",
        agent.log()
    );
    let story = agent.ok(&["explain", &me]);
    assert!(
        story.contains("BLOCKED") && story.contains("rule     ssh-staged"),
        "{story}"
    );
    assert!(
        story.contains("stage throttle") && story.contains("(in 1m5"),
        "{story}"
    );
    assert!(story.contains("by       detector on "), "{story}");
    assert!(
        story.contains("Failed password for invalid user admin2"),
        "evidence: {story}"
    );
    assert!(
        !tcp_connect(attacker, target, Duration::from_millis(800)),
        "enforced in the kernel"
    );

    append(
        &log,
        &(3..6).map(|i| sshd_failure(&me, i)).collect::<Vec<_>>(),
    );
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .ok(&["explain", &me])
            .contains("stage block")),
        "the sixth failure should block for longer: {}",
        agent.ok(&["explain", &me])
    );
    assert!(agent.ok(&["explain", &me]).contains("(in 1d23h59m"));

    // banban: a good pattern unblocks the address.
    append(
        &log,
        &[format!(
            "Nov 21 10:01:00 web1 sshd[2000]: Accepted password for alice from {me} port 50000 ssh2"
        )],
    );
    assert!(
        wait_until(Duration::from_secs(5), || !agent
            .ok(&["list"])
            .contains(&me)),
        "a successful login should lift the detector's ban\n{}",
        agent.log()
    );
    assert!(tcp_connect(attacker, target, Duration::from_secs(1)));
}

#[test]
fn detectors_never_ban_an_allowed_address_nor_get_it_from_injected_text() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let victim = lab.victim();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let cfg = config_following(
        &log,
        "[[allow]]\nnet = \"198.51.100.0/24\"\ncomment = \"office\"\n",
    );
    let agent = Agent::start(victim, &cfg);
    // The office fails to log in many times: never banned.
    append(
        &log,
        &(0..10)
            .map(|i| sshd_failure("198.51.100.20", i))
            .collect::<Vec<_>>(),
    );
    // An attacker puts an innocent address into the user name (CVE-2013-2178
    // style); only the real peer may be counted.
    let injected: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "Nov 21 10:02:{i:02} web1 sshd[3{i}00]: Failed password for invalid user x from 192.0.2.77 port 22 ssh2 from 203.0.113.5 port {} ssh2",
                41000 + i
            )
        })
        .collect();
    append(&log, &injected);
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .ok(&["list"])
            .contains("203.0.113.5")),
        "the real peer is banned\n{}",
        agent.log()
    );
    let list = agent.ok(&["list"]);
    assert!(
        !list.contains("198.51.100.20"),
        "allowed addresses are never banned: {list}"
    );
    assert!(
        !list.contains("192.0.2.77"),
        "the injected address is not banned: {list}"
    );
}

#[test]
fn a_port_probe_from_the_attacker_gets_it_banned_on_the_victim() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["victim", "prober", "user"])
        .build();
    let (victim, prober, user) = (lab.host("victim"), lab.host("prober"), lab.host("user"));
    let _server = TcpServer::start(victim, PORT);
    let agent = Agent::start(
        victim,
        "[[source]]\nkind = \"nflog\"\nname = \"probes\"\ngroup = 7405\n",
    );
    let rules = support::nft(victim, &["list", "chain", "inet", "palisade", "input"]);
    assert!(rules.contains("log group 7405"), "{rules}");

    // A user of the open port is never counted, however often it connects.
    for _ in 0..10 {
        assert!(tcp_connect(
            user,
            SocketAddr::new(victim.v4().into(), PORT),
            Duration::from_secs(1)
        ));
    }
    // The prober knocks on closed ports (the kernel answers with resets).
    for port in [21u16, 23, 25, 3306, 5432] {
        tcp_connect(
            prober,
            SocketAddr::new(victim.v4().into(), port),
            Duration::from_millis(300),
        );
    }
    let prober_addr = prober.v4().to_string();
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .ok(&["list"])
            .contains(&prober_addr)),
        "the prober was not banned\n{}",
        agent.log()
    );
    let story = agent.ok(&["explain", &prober_addr]);
    assert!(story.contains("rule     port-probe"), "{story}");
    assert!(!tcp_connect(
        prober,
        SocketAddr::new(victim.v4().into(), PORT),
        Duration::from_millis(800)
    ));
    assert!(
        !agent.ok(&["list"]).contains(&user.v4().to_string()),
        "the user of the open port stays"
    );
    assert!(tcp_connect(
        user,
        SocketAddr::new(victim.v4().into(), PORT),
        Duration::from_secs(1)
    ));
}

#[test]
fn a_connection_to_a_honeyport_gets_the_peer_banned() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["victim", "prober"]).build();
    let (victim, prober) = (lab.host("victim"), lab.host("prober"));
    let _server = TcpServer::start(victim, PORT);
    let agent = Agent::start(victim, "[[source]]\nkind = \"honeyport\"\nports = [2323]\n");
    assert!(
        wait_until(Duration::from_secs(5), || tcp_connect(
            prober,
            SocketAddr::new(victim.v6().into(), 2323),
            Duration::from_millis(500)
        )),
        "the honeyport did not answer\n{}",
        agent.log()
    );
    // Counted per /64: the ban is the prober's network.
    let net = palisade_model::Net::truncating(prober.v6().into(), 64).to_string();
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .ok(&["list"])
            .contains(&net)),
        "the prober was not banned\n{}",
        agent.log()
    );
    let story = agent.ok(&["explain", &prober.v6().to_string()]);
    assert!(story.contains("rule     honeyport"), "{story}");
    assert!(!tcp_connect(
        prober,
        SocketAddr::new(victim.v6().into(), PORT),
        Duration::from_millis(800)
    ));
}

#[test]
fn a_crafted_line_over_64_kib_bans_nobody_but_the_real_client() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let victim = lab.victim();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let rule = r#"
[[rule]]
name = "anchored"
bad = ['^<HOST> bad request$']
[[rule.stages]]
name = "ban"
count = 1
within = "10m"
ban = "1h"
"#;
    let agent = Agent::start(victim, &config_following(&log, rule));
    // One line of 65 KiB whose text past 64 KiB reads like a line of its
    // own naming an innocent address: a reader that splits long lines
    // would start a "line" there, and the anchored rule would ban it.
    let head = "198.18.9.9 sent a very long user agent: ";
    let mut crafted = String::from(head);
    crafted.push_str(&"A".repeat(64 * 1024 - head.len()));
    crafted.push_str("203.0.113.99 bad request");
    assert!(crafted.len() > 64 * 1024);
    append(&log, &[crafted, "198.51.100.44 bad request".to_string()]);
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .ok(&["list"])
            .contains("198.51.100.44")),
        "the real client is banned\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let list = agent.ok(&["list"]);
    assert!(
        !list.contains("203.0.113.99") && !list.contains("198.18.9.9"),
        "only the real client: {list}"
    );
}

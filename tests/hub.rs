//! The hub and its agents end to end: a hub and three agents on their own
//! lab hosts, real kernels, real traffic.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_lab::{Lab, LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use support::{Agent, Hub};

const PORT: u16 = 8080;
const SPREAD: Duration = Duration::from_secs(10);

/// hub 198.18.0.1, web1..3 .2-.4, attacker .5 (IPv6 ::1..::5).
struct Net {
    lab: Lab,
    hub: Hub,
    agents: Vec<Agent>,
    _servers: Vec<TcpServer>,
}

impl Net {
    fn start() -> Net {
        Net::start_with("", "")
    }

    fn start_with(hub_config: &str, agent_config: &str) -> Net {
        let lab = LabBuilder::new()
            .hosts(["hub", "web1", "web2", "web3", "attacker"])
            .build();
        let webs = ["web1", "web2", "web3"].map(|name| (name, agent_config));
        let (hub, agents, servers) = support::hub_and_agents(&lab, hub_config, &webs, PORT, |_| {});
        Net {
            lab,
            hub,
            agents,
            _servers: servers,
        }
    }

    fn attacker(&self) -> String {
        self.lab.host("attacker").v4().to_string()
    }

    fn web(&self, i: usize) -> &palisade_lab::Host {
        self.lab.host(["web1", "web2", "web3"][i])
    }

    /// Whether the attacker reaches web `i` over TCP.
    fn reaches(&self, i: usize) -> bool {
        let to = SocketAddr::new(IpAddr::V4(self.web(i).v4()), PORT);
        tcp_connect(self.lab.host("attacker"), to, Duration::from_millis(600))
    }

    /// Runs `palisade ARGS...` on web `i`, inside its namespace (traffic
    /// must stay in the lab).
    fn palisade(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.web(i)
            .command(support::BIN)
            .args(args)
            .env_remove("PALISADE_CONFIG")
            .output()
            .expect("run palisade")
    }

    fn all_block(&self) -> bool {
        (0..3).all(|i| !self.reaches(i))
    }

    fn none_block(&self) -> bool {
        (0..3).all(|i| self.reaches(i))
    }
}

#[test]
fn a_ban_on_one_agent_reaches_the_others_and_an_unban_opens_everywhere() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    assert!(net.none_block());
    net.agents[0].ok(&[
        "ban",
        &attacker,
        "--for",
        "1h",
        "--reason",
        "ssh brute force",
    ]);
    assert!(
        wait_until(SPREAD, || net.all_block()),
        "the ban did not reach every server\nweb2: {}\nhub: {}",
        net.agents[1].log(),
        net.hub.log()
    );
    // Every node can tell the whole story.
    let story = net.agents[2].ok(&["explain", &attacker]);
    assert!(
        story.contains("BLOCKED") && story.contains("via cli on web1"),
        "{story}"
    );
    assert!(story.contains("reason   ssh brute force"), "{story}");

    // A node lifts its own ban (another node's unban would be refused:
    // only an operator lifts what others decided).
    net.agents[0].ok(&["unban", &attacker]);
    assert!(
        wait_until(SPREAD, || net.none_block()),
        "the unban did not reach every server"
    );
    for a in &net.agents {
        assert!(!a.ok(&["list"]).contains(&attacker));
    }
}

#[test]
fn a_report_from_another_program_bans_everywhere() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    let out = net.agents[2].cli(&["report", "fail2ban", "sshd", &attacker]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(SPREAD, || net.all_block()));
    let story = net.agents[0].ok(&["explain", &attacker]);
    assert!(
        story.contains("rule     fail2ban/sshd") && story.contains("fail2ban via report on web3"),
        "{story}"
    );
}

#[test]
fn agents_catch_up_after_downtime_and_reports_wait_for_the_hub() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let mut net = Net::start();
    let attacker = net.attacker();

    // web3 is down while web1 bans: it catches up when it returns.
    net.agents[2].stop();
    net.agents[0].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(wait_until(SPREAD, || !net.reaches(1)));
    assert!(net.reaches(2), "web3 is down and does not know yet");
    net.agents[2].restart();
    assert!(
        wait_until(SPREAD, || !net.reaches(2)),
        "web3 did not catch up:\n{}",
        net.agents[2].log()
    );
    net.agents[0].ok(&["unban", &attacker]);
    assert!(wait_until(SPREAD, || net.none_block()));

    // The hub is down: bans still protect the node that made them, are
    // queued durably, and spread once the hub is back.
    net.hub.stop();
    net.agents[0].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(!net.reaches(0), "the ban protects its own server at once");
    assert!(net.reaches(1), "the others do not know yet");
    let status = net.agents[0].ok(&["status"]);
    assert!(
        status.contains("NOT CONNECTED") && status.contains("1 request queued"),
        "{status}"
    );
    // Even across a restart of the agent itself.
    net.agents[0].stop();
    net.agents[0].restart();
    net.hub.restart();
    assert!(
        wait_until(Duration::from_secs(40), || net.all_block()),
        "the queued ban did not spread:\n{}",
        net.agents[0].log()
    );
}

#[test]
fn the_hub_killed_with_sigkill_loses_no_decision_it_acknowledged() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let mut net = Net::start();
    let reporter = net.hub.token("node", "reporter");
    // Each report returns once the hub has committed it.
    let targets: Vec<String> = (1..=20).map(|i| format!("203.0.113.{i}")).collect();
    for t in &targets {
        let out = net.palisade(
            0,
            &[
                "report",
                "--hub",
                &net.hub.url(),
                "--token",
                &reporter,
                "psad",
                "anything",
                t,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    net.hub.kill9();
    net.hub.restart();
    let listed = net.hub.ok(&["status"]);
    assert!(listed.contains("20 banned addresses"), "{listed}");
    assert!(
        wait_until(SPREAD, || {
            let l = net.agents[1].ok(&["list"]);
            targets.iter().all(|t| l.contains(&format!("{t} ")))
        }),
        "web2 did not get every acknowledged decision"
    );
}

#[test]
fn a_nodes_own_address_can_not_be_banned_through_the_hub() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let web2 = net.web(1).v4().to_string();
    // web1 knows web2 is a palisade node (the hub allowed its address).
    let out = net.agents[0].cli(&["ban", &web2]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("palisade node web2"), "{err}");
    // A program reporting straight to the hub is refused too.
    let reporter = net.hub.token("node", "reporter");
    let out = net.palisade(
        0,
        &[
            "report",
            "--hub",
            &net.hub.url(),
            "--token",
            &reporter,
            "psad",
            "x",
            &web2,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("palisade node web2"));
    // And web2 stays reachable from web3.
    let to = SocketAddr::new(IpAddr::V4(net.web(1).v4()), PORT);
    assert!(tcp_connect(net.web(2), to, Duration::from_secs(1)));
}

#[test]
fn bad_and_revoked_tokens_are_refused() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    // A token the hub never issued (right pin, unknown secret).
    let real = net.hub.token("node", "real");
    let mut parts: Vec<&str> = real.split('.').collect();
    parts[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let fake = parts.join(".");
    let out = net.palisade(
        0,
        &[
            "report",
            "--hub",
            &net.hub.url(),
            "--token",
            &fake,
            "psad",
            "x",
            "203.0.113.9",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not known to this hub"), "{err}");
    // A token of another hub: its pin does not match this hub's certificate.
    let mut parts: Vec<&str> = real.split('.').collect();
    parts[3] = "BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let other = parts.join(".");
    let out = net.palisade(
        0,
        &[
            "report",
            "--hub",
            &net.hub.url(),
            "--token",
            &other,
            "psad",
            "x",
            "203.0.113.9",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the one pinned in the token"), "{err}");

    // A revoked node is cut off: its stream ends and its requests fail.
    net.hub.ok(&["token", "revoke", "web3"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = net.agents[2].ok(&["status"]);
            s.contains("NOT CONNECTED") && s.contains("revoked")
        }),
        "web3 was not cut off: {}",
        net.agents[2].ok(&["status"])
    );
    let list = net.hub.ok(&["token", "list"]);
    // The join token the three servers used says so.
    assert!(
        list.lines()
            .any(|l| l.starts_with("lab ") && l.contains(" join ") && l.contains("3 joined")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("web3") && l.contains("revoked")),
        "{list}"
    );
    // Its address is no longer protected as a node's.
    let web3 = net.web(2).v4().to_string();
    assert!(wait_until(SPREAD, || !net.agents[0]
        .ok(&["list"])
        .contains(&web3)));
}

#[test]
fn the_export_lists_bans_one_per_line_for_read_tokens() {
    if !require_root_and(&["nft", "curl"]) {
        return;
    }
    let net = Net::start();
    net.agents[0].ok(&["ban", "203.0.113.7", "--for", "1h"]);
    net.agents[0].ok(&["ban", "198.51.100.0/24", "--for", "1h"]);
    let read = net.hub.token("read", "maltrail-cron");
    let cert = net.hub.dir.path().join("state").join("hub.crt");
    let get = |path: &str, token: &str| {
        let out = net
            .web(0)
            .command("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&cert)
            .args([
                "--resolve",
                &format!("palisade-hub:7470:{}", net.lab.host("hub").v4()),
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://palisade-hub:7470{path}"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(wait_until(SPREAD, || get("/v1/export.txt", &read)
        .1
        .contains("198.51.100.0/24")));
    let (ok, text) = get("/v1/export.txt", &read);
    assert!(ok);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["198.51.100.0/24", "203.0.113.7"]);
    let (ok, json) = get("/v1/decisions?action=ban", &read);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (ok, metrics) = get("/metrics", &read);
    assert!(ok);
    assert!(
        metrics.contains("palisade_hub_connected_agents 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_hub_intents_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
    // A node's lag is shown once its heartbeat (every 10 s) says where it
    // is, never the whole stream before that: caught up, it is about 0.
    let sample = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            metrics = get("/metrics", &read).1;
            sample(&metrics, "palisade_hub_stream_lag{node=\"web1\"}").is_some()
        }),
        "{metrics}"
    );
    let seq = sample(&metrics, "palisade_hub_stream_seq").unwrap();
    assert!(seq >= 4, "{metrics}");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("palisade_hub_stream_lag{"))
    {
        let lag: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(lag < seq && lag <= 2, "{line} (stream at {seq})");
    }
    // Without a token, or with a read token where a node's is needed: refused.
    let (ok, body) = get("/v1/export.txt", "nothing");
    assert!(!ok && body.contains("not known to this hub"), "{body}");
    let (ok, _) = get("/v1/stream", &read);
    assert!(!ok, "a read token cannot follow the stream");
}

#[test]
fn a_real_fail2ban_with_the_shipped_action_bans_network_wide() {
    if !require_root_and(&["nft", "fail2ban-server", "fail2ban-client"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    let dir = tempfile::tempdir().unwrap();
    // The action `palisade install` ships, pointed at this build and agent.
    let root = dir.path().join("root");
    let out = std::process::Command::new(support::BIN)
        .args(["install", "--fail2ban", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped =
        std::fs::read_to_string(root.join("etc/fail2ban/action.d/palisade.conf")).unwrap();
    assert!(shipped.contains("actionban = /usr/local/bin/palisade report fail2ban <name> <ip>"));
    let conf = dir.path().join("fail2ban");
    std::fs::create_dir_all(conf.join("action.d")).unwrap();
    std::fs::create_dir_all(conf.join("filter.d")).unwrap();
    std::fs::write(
        conf.join("action.d/palisade.conf"),
        shipped.replace(
            "/usr/local/bin/palisade",
            &format!(
                "{} --socket {}",
                support::BIN,
                net.agents[0].socket().display()
            ),
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("filter.d/lab.conf"),
        "[Definition]\nfailregex = ^login failed from <HOST>$\ndatepattern = {NONE}\n",
    )
    .unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let sock = dir.path().join("f2b.sock");
    std::fs::write(
        conf.join("fail2ban.conf"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = STDERR\nsocket = {}\npidfile = {}\ndbfile = :memory:\n",
            sock.display(),
            dir.path().join("f2b.pid").display()
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("jail.conf"),
        format!(
            "[lab]\nenabled = true\nfilter = lab\nlogpath = {}\nbackend = polling\nmaxretry = 2\nfindtime = 600\nbantime = 600\naction = palisade\n",
            log.display()
        ),
    )
    .unwrap();
    let mut server = net.web(0).command("fail2ban-server");
    server
        .args(["-f", "-x", "-c"])
        .arg(&conf)
        .args(["-s"])
        .arg(&sock);
    let f2b = palisade_lab::Proc::spawn(server).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || net
            .web(0)
            .output("fail2ban-client", &["-s", sock.to_str().unwrap(), "ping"])
            .status
            .success()),
        "fail2ban did not start:\n{}",
        f2b.describe()
    );
    std::thread::sleep(Duration::from_secs(1));
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for _ in 0..3 {
        writeln!(f, "login failed from {attacker}").unwrap();
    }
    drop(f);
    assert!(
        wait_until(Duration::from_secs(30), || net.all_block()),
        "fail2ban's ban did not reach the network\nfail2ban:\n{}\nweb1:\n{}",
        f2b.describe(),
        net.agents[0].log()
    );
    let story = net.agents[2].ok(&["explain", &attacker]);
    assert!(story.contains("rule     fail2ban/lab"), "{story}");
    // The ban lasts the jail's bantime (600 s), not the default day.
    for agent in &net.agents {
        let story = agent.ok(&["explain", &attacker]);
        assert!(
            story.contains("(in 9m") || story.contains("(in 10m"),
            "{story}"
        );
    }
    // fail2ban's unban withdraws what its jail reported on this server;
    // the network's ban elsewhere runs its course.
    let unban = net.web(0).output(
        "fail2ban-client",
        &[
            "-s",
            sock.to_str().unwrap(),
            "set",
            "lab",
            "unbanip",
            &attacker,
        ],
    );
    assert!(unban.status.success(), "{unban:?}");
    assert!(
        wait_until(Duration::from_secs(10), || net.reaches(0)),
        "fail2ban's unban did not lift web1's ban\nweb1:\n{}",
        net.agents[0].log()
    );
    assert!(!net.reaches(1) && !net.reaches(2));
}

/// An agent catching up receives a ban and its unban, or an unban and a new
/// ban, in one batch: the last word wins, in the store as in the kernel
/// (found by the model-based test, tests/model.rs).
#[test]
fn bans_and_unbans_made_while_an_agent_was_down_reach_it_in_order() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let mut net = Net::start();
    net.agents[2].stop();
    net.agents[0].ok(&["ban", "198.19.5.0/24", "--for", "forever"]);
    net.agents[0].ok(&["unban", "198.19.5.0/24"]);
    // And a ban, its unban and a new ban of the same network.
    net.agents[0].ok(&["ban", "198.19.6.0/24", "--for", "1h"]);
    net.agents[0].ok(&["unban", "198.19.6.0/24"]);
    net.agents[0].ok(&["ban", "198.19.6.0/24", "--for", "forever"]);
    // All of it is at the hub (web2 has the last) before web3 starts:
    // arriving live, one by one, it would be applied one by one.
    assert!(wait_until(SPREAD, || net.agents[1]
        .ok(&["explain", "198.19.6.8"])
        .contains("forever")));
    net.agents[2].restart();
    let caught_up = wait_until(SPREAD, || {
        let out = net.agents[2].cli(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
            let n = &v["network"];
            n["connected"] == true && n["cursor"].as_u64() >= n["latest"].as_u64()
        })
    });
    assert!(caught_up, "{}", net.agents[2].log());
    std::thread::sleep(Duration::from_millis(500));
    let story = net.agents[2].ok(&["explain", "198.19.5.8"]);
    assert!(story.contains("not blocked"), "{story}");
    let story = net.agents[2].ok(&["explain", "198.19.6.8"]);
    assert!(
        story.contains("BLOCKED") && story.contains("forever"),
        "{story}"
    );
    assert!(
        support::kernel_elements(net.web(2)).contains(&"block4_net: 198.19.6.0/24".to_string())
    );
    assert!(
        !support::kernel_elements(net.web(2))
            .iter()
            .any(|e| e.contains("198.19.5.0/24")),
        "the unbanned network stayed in web3's kernel"
    );
    // What it missed came as one batch: the ban and its unban cancelled
    // there, and web3 never enforced the ban on its own.
    let log = net.agents[2].log();
    assert!(
        !log.contains("from the network action=ban target=198.19.5.0/24"),
        "{log}"
    );
}

#[test]
fn group_allows_apply_to_their_group_only() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["hub", "web1", "web2", "web3", "attacker"])
        .build();
    let attacker = lab.host("attacker").v4().to_string();
    let hub_config = format!(
        "[[hub.allow]]\nnet = \"{attacker}\"\ncomment = \"partner\"\ngroup = \"partners\"\n\n[[hub.allow]]\nnet = \"198.18.250.0/24\"\ncomment = \"office\"\n"
    );
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        &hub_config,
    );
    let plain = hub.token("join", "plain");
    let partner = hub
        .ok(&[
            "token",
            "create",
            "--kind",
            "join",
            "--group",
            "partners",
            "partner-servers",
        ])
        .trim()
        .to_string();
    let mut servers = Vec::new();
    let mut agents = Vec::new();
    for (name, token) in [("web1", &partner), ("web2", &plain), ("web3", &plain)] {
        servers.push(TcpServer::start(lab.host(name), PORT));
        agents.push(Agent::join(lab.host(name), "", &hub.url(), token, name));
    }
    let reaches = |name: &str| {
        let to = SocketAddr::new(IpAddr::V4(lab.host(name).v4()), PORT);
        tcp_connect(lab.host("attacker"), to, Duration::from_millis(600))
    };
    agents[2].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(wait_until(SPREAD, || !reaches("web2") && !reaches("web3")));
    assert!(reaches("web1"), "the partners' group allow wins on web1");
    let story = agents[0].ok(&["explain", &attacker]);
    assert!(
        story.contains("ALLOWED") && story.contains("comment  partner"),
        "{story}"
    );
    // The hub's allows survive an agent's restart (its resumed stream does
    // not send them again): the group's on web1, the global one on web2.
    for agent in &mut agents[..2] {
        agent.stop();
        agent.restart();
    }
    assert!(reaches("web1"), "the group allow is gone after a restart");
    let story = agents[0].ok(&["explain", &attacker]);
    assert!(story.contains("ALLOWED"), "{story}");
    let story = agents[1].ok(&["explain", "198.18.250.9"]);
    assert!(
        story.contains("ALLOWED") && story.contains("office"),
        "{story}"
    );
}

#[test]
fn a_quorum_waits_for_enough_distinct_nodes() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start_with("[hub.quorum]\nreport = 2\n", "");
    let attacker = net.attacker();
    net.agents[0].ok(&["report", "fail2ban", "sshd", &attacker]);
    // The reporting node protects itself at once; the network waits.
    assert!(!net.reaches(0));
    std::thread::sleep(Duration::from_secs(2));
    assert!(net.reaches(2), "one report is not a quorum of two");
    net.agents[1].ok(&["report", "fail2ban", "sshd", &attacker]);
    assert!(
        wait_until(SPREAD, || !net.reaches(2)),
        "two nodes reported: web3 should drop it"
    );
}

#[test]
fn palisade_up_prints_the_command_that_joins_another_server() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["main", "second", "attacker"])
        .build();
    let (main, second) = (lab.host("main"), lab.host("second"));
    let dir = tempfile::tempdir().unwrap();
    let up = support::Up::start(main, dir.path(), "main");
    let printed = up.proc.stdout();
    let line = printed
        .lines()
        .find(|l| l.trim_start().starts_with("palisade agent --join"))
        .expect("a join command");
    // The token is put in a root-only file by the shell's own echo, never
    // on a command line (`ps` shows those to every user).
    let save = printed
        .lines()
        .find(|l| l.trim_start().starts_with("(umask 077;"))
        .expect("a command that keeps the token in a file");
    let token = up.token.as_str();
    assert!(
        line.contains(&format!(
            "--token-file {}",
            save.split_whitespace()
                .last()
                .unwrap()
                .trim_end_matches(')')
        )),
        "{line}\n{save}"
    );
    assert!(!line.contains(token), "{line}");
    // The printed address is this server's address in the lab.
    assert!(
        line.contains(&format!("https://{}:7470", main.v4())),
        "{line}"
    );
    let _s1 = TcpServer::start(main, PORT);
    let _s2 = TcpServer::start(second, PORT);
    let other = Agent::join(second, "", &up.url, token, "second");
    let main_sock = support::Up::socket(dir.path());
    assert!(wait_until(Duration::from_secs(10), || support::cli(
        &main_sock,
        &["status"]
    )
    .status
    .success()));
    let attacker = lab.host("attacker").v4().to_string();
    let out = support::cli(&main_sock, &["ban", &attacker, "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reaches = |h: &palisade_lab::Host| {
        tcp_connect(
            lab.host("attacker"),
            SocketAddr::new(IpAddr::V4(h.v4()), PORT),
            Duration::from_millis(600),
        )
    };
    assert!(
        wait_until(SPREAD, || !reaches(main) && !reaches(second)),
        "{}",
        other.log()
    );
}

#[test]
fn install_writes_a_hardened_unit_and_the_fail2ban_action() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/fail2ban")).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["install", "--role", "up", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("EXTERNAL_BLOCK_SCRIPT")
            && stdout.contains("systemctl enable --now palisade"),
        "{stdout}"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/palisade.service")).unwrap();
    for hardening in [
        "ExecStart=/usr/local/bin/palisade up",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ] {
        assert!(unit.contains(hardening), "unit lacks {hardening}");
    }
    assert!(root.join("usr/local/bin/palisade").exists());
    let config = std::fs::read_to_string(root.join("etc/palisade/palisade.toml")).unwrap();
    assert!(config.contains("[agent]"));
    // A second run keeps the operator's configuration.
    std::fs::write(root.join("etc/palisade/palisade.toml"), "# mine\n").unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["install", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/palisade/palisade.toml")).unwrap(),
        "# mine\n"
    );
    if which("systemd-analyze") {
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--root"])
            .arg(root)
            .arg(root.join("etc/systemd/system/palisade.service"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Invalid"),
            "systemd-analyze: {err}"
        );
    }
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The expiry of `target`'s ban on agent `i`, as its store holds it.
fn expiry_on(agent: &Agent, target: &str) -> Option<String> {
    let json = agent.ok(&["list", "--json", "--bans"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()?
        .iter()
        .find(|d| d["target"].as_str() == Some(target))
        .map(|d| d["expires"].to_string())
}

#[test]
fn a_suppressed_repeat_leaves_the_reporter_with_the_networks_expiry() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    let report = |span| ["report", "fail2ban", "sshd", &attacker, "--for", span];
    net.agents[0].ok(&report("1h"));
    assert!(wait_until(SPREAD, || expiry_on(&net.agents[1], &attacker).is_some()));
    // A longer repeated report inside the suppression window: recorded by
    // the hub, not broadcast, so the reporter must not keep its own longer
    // ban. (A ban by hand is never suppressed: it extends everywhere.)
    net.agents[0].ok(&report("3h"));
    let network = expiry_on(&net.agents[1], &attacker);
    assert!(
        wait_until(SPREAD, || expiry_on(&net.agents[0], &attacker) == network),
        "web1 {:?} and web2 {network:?} disagree\n{}",
        expiry_on(&net.agents[0], &attacker),
        net.agents[0].log()
    );
}

#[test]
fn a_nodes_own_bans_drain_at_bulk_speed_while_reports_are_rate_limited() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start_with("[hub.rate]\nper_second = 0.01\nburst = 2\n", "");
    // 300 bans by hand on web1: its own actions draw from node_rate.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("list.txt");
    let list: Vec<String> = (0..300)
        .map(|i| format!("203.0.{}.{}", 113 + i / 250, 1 + i % 250))
        .collect();
    std::fs::write(&file, list.join("\n")).unwrap();
    net.agents[0].ok(&["ban", "--file", file.to_str().unwrap(), "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || net.agents[1]
            .ok(&["list", "--bans"])
            .matches("203.0.")
            .count()
            >= 300),
        "web2 did not get web1's 300 bans"
    );
    // Reports past the burst are held back, and status says so.
    for i in 1..=5 {
        net.agents[2].ok(&["report", "fail2ban", "sshd", &format!("198.51.100.{i}")]);
    }
    assert!(
        wait_until(SPREAD, || net.agents[2]
            .ok(&["status"])
            .contains("held back")),
        "{}",
        net.agents[2].ok(&["status"])
    );
}

#[test]
fn a_node_can_not_lift_another_nodes_ban_and_its_own_kernel_follows_the_network() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    net.agents[0].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || net.all_block()),
        "the ban did not spread"
    );
    // web2 lifts it on its own; the hub refuses to lift web1's ban for
    // everyone, and web2 reads the network's state again: blocked again.
    let _ = net.agents[1].cli(&["unban", &attacker]);
    assert!(
        wait_until(SPREAD, || net.agents[1].log().contains("refused")),
        "{}",
        net.agents[1].log()
    );
    assert!(
        wait_until(SPREAD, || !net.reaches(1)
            && !net.reaches(0)
            && !net.reaches(2)),
        "web2 kept its own unban of a ban the network keeps\n{}",
        net.agents[1].log()
    );
}

#[test]
fn what_a_node_queued_while_the_hub_was_away_goes_before_what_it_missed() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let mut net = Net::start();
    let attacker = net.attacker();
    // While the hub is away, web1 bans the attacker and then lifts the ban.
    net.hub.stop();
    net.agents[0].ok(&["ban", &attacker, "--for", "1h"]);
    net.agents[0].ok(&["unban", &attacker]);
    assert!(net.reaches(0));
    net.hub.restart();
    // web1 sends both before it applies the stream they changed: it never
    // blocks the attacker again, and nobody ends up blocking.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        assert!(
            net.reaches(0),
            "web1 applied its own replayed ban\n{}",
            net.agents[0].log()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        wait_until(SPREAD, || net.agents[0]
            .ok(&["status"])
            .contains(" 0 requests queued")),
        "{}",
        net.agents[0].ok(&["status"])
    );
    assert!(
        wait_until(SPREAD, || net.none_block()),
        "a server kept the ban"
    );
    // Not even for a moment too short for a ping to meet: the stream's
    // ban and unban were applied together.
    let log = net.agents[0].log();
    assert!(
        !log.contains(&format!("from the network action=ban target={attacker}")),
        "web1 enforced the replayed ban on its own\n{log}"
    );
}

#[test]
fn a_nodes_allow_for_the_whole_network_is_refused_and_taken_back() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let net = Net::start();
    let attacker = net.attacker();
    let _ = net.agents[1].cli(&["allow", &attacker, "--comment", "mine"]);
    assert!(
        wait_until(SPREAD, || !net.agents[1]
            .ok(&["list", "--allows"])
            .contains(&attacker)),
        "web2 kept an allow the network refused\n{}",
        net.agents[1].log()
    );
    for i in [0, 2] {
        assert!(!net.agents[i].ok(&["list", "--allows"]).contains(&attacker));
    }
    // On this server alone it may.
    net.agents[1].ok(&["allow", &attacker, "--local"]);
    assert!(net.agents[1].ok(&["list", "--allows"]).contains(&attacker));
}

/// A ban of `target` for an hour, as `palisade ban` sends it.
fn ban_envelope(id: u64, target: std::net::Ipv4Addr) -> palisade_wire::Envelope {
    support::cli_ban(id, palisade_model::Net::host(target.into()), "1h", "test")
}

/// A lab of a hub (started with `config`) and a host for nodes; the hub
/// listens on the address returned.
fn hub_and_nodes(config: &str) -> (Lab, Hub, SocketAddr) {
    let lab = LabBuilder::new().host("hub").host("nodes").build();
    let listen = format!("{}:7470", lab.host("hub").v4());
    let hub = Hub::start(lab.host("hub"), &listen, config);
    (lab, hub, listen.parse().unwrap())
}

/// Follows the hub's stream from the start until the snapshot and what
/// followed it hold `want` bans (or 20 s pass); returns the banned
/// targets and the snapshot's stream number.
async fn join_and_count(
    link: palisade_link::HubLink,
    want: usize,
) -> (std::collections::HashSet<palisade_model::Net>, u64) {
    use futures_util::StreamExt;
    use palisade_wire::{Bus, StreamItem};
    let mut held = std::collections::HashSet::new();
    let mut snapshot_seq = 0;
    let mut stream = link.follow(0).await.expect("the stream opens");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held.len() < want {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        match item.expect("a stream item") {
            StreamItem::Snapshot { seq } => snapshot_seq = seq,
            StreamItem::Put { decision, .. } if decision.action == palisade_model::Action::Ban => {
                held.insert(decision.target);
            }
            StreamItem::Put { .. } => {}
            StreamItem::Remove { .. }
            | StreamItem::SnapshotEnd { .. }
            | StreamItem::Ping { .. } => {}
        }
    }
    (held, snapshot_seq)
}

#[test]
fn nodes_joining_together_share_one_snapshot_and_miss_nothing_made_after_it() {
    if !require_root_and(&["ip"]) {
        return;
    }
    let (lab, hub, _) = hub_and_nodes("");
    let url = hub.url();
    let node: palisade_wire::Token = hub.token("node", "web").parse().unwrap();
    let operator: palisade_wire::Token = hub.token("node", "operator").parse().unwrap();
    let nodes = lab.host("nodes").ns_name().to_string();
    support::in_netns(&nodes, 2, async move {
        use palisade_wire::Bus;
        let operator = palisade_link::HubLink::new(&url, &operator).unwrap();
        let batch: Vec<_> = (0..500u32)
            .map(|i| ban_envelope(u64::from(i) + 1, std::net::Ipv4Addr::from(0xC612_1000 + i)))
            .collect();
        operator.send(&batch).await.expect("the hub takes the bans");
        // Twenty nodes join at once: each gets every ban, from one snapshot.
        let link = palisade_link::HubLink::new(&url, &node).unwrap();
        let joins: Vec<_> = (0..20)
            .map(|_| tokio::spawn(join_and_count(link.clone(), 500)))
            .collect();
        let mut seqs = std::collections::HashSet::new();
        for j in joins {
            let (held, seq) = j.await.unwrap();
            assert_eq!(held.len(), 500, "a node that joined with the others");
            seqs.insert(seq);
        }
        assert_eq!(seqs.len(), 1, "one snapshot for all: {seqs:?}");
        // A ban made now, and a node joining at once: the shared snapshot
        // may be the one before it, and the ban must follow it without
        // waiting for any later change.
        operator
            .send(&[ban_envelope(501, std::net::Ipv4Addr::new(198, 19, 0, 1))])
            .await
            .expect("the hub takes the ban");
        let first = *seqs.iter().next().unwrap();
        let (held, seq) = join_and_count(link.clone(), 501).await;
        // Built well under REUSE_FOR (2 s) ago, the shared snapshot is
        // still handed out: the ban comes after it, as a catch-up.
        assert_eq!(seq, first, "the snapshot the others shared");
        assert_eq!(held.len(), 501, "the node that joined after the ban");
        assert!(held.contains(&palisade_model::Net::host(
            std::net::Ipv4Addr::new(198, 19, 0, 1).into()
        )));
    });
    drop(hub);
}

/// Reads a stream as far as its snapshot's end with curl, as `token`,
/// with `query` after the cursor; returns what it holds (allows and bans
/// by target) and how many part lines carried it.
fn snapshot_with_curl(
    hub: &Hub,
    ns: &palisade_lab::Host,
    token: &str,
    query: &str,
) -> (std::collections::BTreeSet<(String, String)>, usize) {
    use palisade_wire::{PartLine, SnapshotPart, StreamItem};
    let cert = hub.dir.path().join("state").join("hub.crt");
    let (addr, port) = hub.listen.split_once(':').unwrap();
    let out = ns
        .command("curl")
        .args(["-sS", "-N", "--max-time", "3", "--cacert"])
        .arg(&cert)
        .args(["--resolve", &format!("palisade-hub:{port}:{addr}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!(
            "https://palisade-hub:{port}/v1/stream?cursor=0{query}"
        ))
        .output()
        .unwrap();
    let mut items = Vec::new();
    let mut part_lines = 0;
    for line in out.stdout.split(|b| *b == b'\n') {
        if line.starts_with(SnapshotPart::LINE_START) {
            let line: PartLine = serde_json::from_slice(line).expect("a part line");
            line.part.puts(&mut items).expect("a readable part");
            part_lines += 1;
        } else if !line.is_empty() {
            items.push(serde_json::from_slice(line).expect("a stream line"));
        }
        if matches!(items.last(), Some(StreamItem::SnapshotEnd { .. })) {
            break;
        }
    }
    assert!(
        matches!(items.last(), Some(StreamItem::SnapshotEnd { .. })),
        "the snapshot ended ({query}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = items
        .iter()
        .filter_map(|item| match item {
            StreamItem::Put { decision, .. } => Some((
                format!("{:?}", decision.action),
                decision.target.to_string(),
            )),
            _ => None,
        })
        .collect();
    (held, part_lines)
}

/// A node that asks for part lines (this version's) and one that does not
/// (an older one, or one asking for an encoding this hub does not know)
/// read the same snapshot: the group's allows, the global allows (the
/// configured ones and the nodes' own addresses), every ban.
#[test]
fn nodes_of_either_version_read_the_same_snapshot() {
    if !require_root_and(&["ip", "curl"]) {
        return;
    }
    let (lab, hub, _) = hub_and_nodes(
        "[[hub.allow]]\nnet = \"198.18.250.7\"\ngroup = \"partners\"\n\n[[hub.allow]]\nnet = \"198.18.251.0/24\"\n",
    );
    let partner = hub
        .ok(&[
            "token", "create", "--kind", "node", "--group", "partners", "p1",
        ])
        .trim()
        .to_string();
    let operator: palisade_wire::Token = hub.token("node", "operator").parse().unwrap();
    let url = hub.url();
    support::in_netns(lab.host("nodes").ns_name(), 1, async move {
        use palisade_wire::Bus;
        let operator = palisade_link::HubLink::new(&url, &operator).unwrap();
        for start in (0..3000u32).step_by(500) {
            let batch: Vec<_> = (start..start + 500)
                .map(|i| ban_envelope(u64::from(i) + 1, std::net::Ipv4Addr::from(0xC612_2000 + i)))
                .collect();
            operator.send(&batch).await.expect("the hub takes the bans");
        }
    });
    let nodes = lab.host("nodes");
    let (new, parts) = snapshot_with_curl(&hub, nodes, &partner, "&parts=postcard-lz4");
    let (old, none) = snapshot_with_curl(&hub, nodes, &partner, "");
    let (later, unknown) = snapshot_with_curl(&hub, nodes, &partner, "&parts=zstd-9");
    let bans = |held: &std::collections::BTreeSet<(String, String)>| {
        held.iter().filter(|(action, _)| action == "Ban").count()
    };
    assert_eq!(bans(&new), 3000);
    assert!(new.contains(&("Allow".into(), "198.18.250.7".into())));
    assert!(new.contains(&("Allow".into(), "198.18.251.0/24".into())));
    assert_eq!(new, old);
    assert_eq!(new, later);
    assert!(parts > 0, "the bans came as part lines");
    assert_eq!(
        (none, unknown),
        (0, 0),
        "only a node that asks gets part lines"
    );
    // A node of no group does not get the group's allow, in parts either.
    let plain = hub.token("node", "plain");
    let (held, _) = snapshot_with_curl(&hub, nodes, &plain, "&parts=postcard-lz4");
    assert_eq!(bans(&held), 3000);
    assert!(held.contains(&("Allow".into(), "198.18.251.0/24".into())));
    assert!(!held.contains(&("Allow".into(), "198.18.250.7".into())));
}

/// The query that asks for part lines.
const PARTS: &str = "&parts=postcard-lz4";

/// Opens a TLS connection to the hub at `addr` and asks for the stream
/// with `bearer`, taking the connection over, with `query` after the
/// cursor; returns the connection and the answer's status, or None when
/// the hub refused the connection.
async fn raw_stream(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    bearer: &str,
    query: &str,
) -> Option<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, u16)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = palisade_wire::tls::client_config(pin).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("palisade-hub").unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let ask = format!(
        "GET /v1/stream?cursor=0{query} HTTP/1.1\r\nHost: palisade-hub\r\nAuthorization: Bearer {bearer}\r\nConnection: upgrade\r\nUpgrade: palisade-stream\r\n\r\n"
    );
    s.write_all(ask.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
    Some((s, status))
}

/// Attack: only a node's token takes a connection over for a stream; a
/// node's stream that took its connection over from HTTP is still one of
/// the node's connections (the hub's cap per client holds,
/// and a closed stream gives its place back), and a node that sends
/// anything on it (it has nothing to say there) loses that stream only.
#[test]
fn taken_over_streams_count_as_connections_and_end_on_anything_sent() {
    if !require_root_and(&["ip"]) {
        return;
    }
    let (lab, hub, addr) = hub_and_nodes("[hub]\nmax_connections_per_client = 4\n");
    let token: palisade_wire::Token = hub.token("node", "web").parse().unwrap();
    let read: palisade_wire::Token = hub.token("read", "stolen").parse().unwrap();
    support::in_netns(lab.host("nodes").ns_name(), 1, async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bearer = token.bearer();
        // A read token (or none) cannot take a connection over for a
        // stream either: it is refused before any upgrade.
        for other in [read.bearer(), "nothing".to_string()] {
            let (_, status) = raw_stream(addr, token.pin, &other, PARTS)
                .await
                .expect("an answer");
            assert!(status == 401 || status == 403, "{status}");
        }
        let mut open = Vec::new();
        for _ in 0..4 {
            let (mut s, status) = raw_stream(addr, token.pin, &bearer, PARTS)
                .await
                .expect("a stream within the cap");
            assert_eq!(status, 101);
            let mut lines = [0u8; 64];
            let n = s.read(&mut lines).await.unwrap();
            assert!(n > 0 && lines.starts_with(b"{\""), "stream lines follow");
            open.push(s);
        }
        assert!(
            raw_stream(addr, token.pin, &bearer, PARTS).await.is_none(),
            "a fifth connection while four streams are open"
        );
        // Anything sent on a stream ends it, and only it.
        let mut talker = open.pop().unwrap();
        talker.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut sink = vec![0u8; 64 * 1024];
            loop {
                match talker.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the hub ended the stream it was sent bytes on"
        );
        // Its place is free again; the other three still stream (pings).
        let mut again = None;
        for _ in 0..50 {
            again = raw_stream(addr, token.pin, &bearer, PARTS).await;
            if again.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(again.map(|(_, status)| status), Some(101));
        for s in &mut open {
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "a stream still open");
        }
    });
    drop(hub);
}

/// Attack: nodes that open the stream and never read it. Each holds one
/// of the hub's turns to send a snapshot for at most two seconds, so a
/// node joining after forty of them still gets the whole state at once.
#[test]
fn nodes_that_stop_reading_their_snapshot_do_not_hold_up_others_joining() {
    if !require_root_and(&["ip"]) {
        return;
    }
    const BANS: u32 = 40_000;
    let (lab, hub, addr) = hub_and_nodes("[hub]\nmax_connections_per_client = 100\n");
    let url = hub.url();
    let node: palisade_wire::Token = hub.token("node", "web").parse().unwrap();
    let stalled: palisade_wire::Token = hub.token("node", "stalled").parse().unwrap();
    let operator: palisade_wire::Token = hub.token("node", "operator").parse().unwrap();
    let nodes = lab.host("nodes").ns_name().to_string();
    support::in_netns(&nodes, 2, async move {
        use palisade_wire::Bus;
        let operator = palisade_link::HubLink::new(&url, &operator).unwrap();
        for start in (0..BANS).step_by(500) {
            let batch: Vec<_> = (start..start + 500)
                .map(|i| ban_envelope(u64::from(i) + 1, std::net::Ipv4Addr::from(0x6440_0000 + i)))
                .collect();
            operator.send(&batch).await.expect("the hub takes the bans");
        }
        // Forty streams (more than there are turns) opened and never read:
        // the snapshot (about 12 MB each) stops in their connections.
        // They ask for `Put` lines, as older nodes do: part lines would be
        // small enough for the kernel to take whole at once.
        let bearer = stalled.bearer();
        let mut unread = Vec::new();
        for _ in 0..40 {
            let (s, status) = raw_stream(addr, stalled.pin, &bearer, "")
                .await
                .expect("the stream opens");
            assert_eq!(status, 101);
            unread.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        let link = palisade_link::HubLink::new(&url, &node).unwrap();
        let (held, _) = join_and_count(link, BANS as usize).await;
        assert_eq!(
            held.len(),
            BANS as usize,
            "the node joining after the stalled ones"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "joining took {:?}",
            started.elapsed()
        );
        drop(unread);
    });
    drop(hub);
}

#[test]
fn a_hub_stopped_right_after_start_stops_cleanly() {
    if !require_root_and(&["ip"]) {
        return;
    }
    let lab = LabBuilder::new().host("hub").build();
    let listen = format!("{}:7470", lab.host("hub").v4());
    let mut hub = Hub::start(lab.host("hub"), &listen, "");
    hub.stop();
    // A stop between the hub's start and its first wait for the signal
    // took the default action before its handlers were installed early:
    // no clean exit, its control socket left behind.
    for _ in 0..30 {
        hub.restart();
        hub.stop();
        assert!(!hub.dir.path().join("hub.sock").exists());
    }
}

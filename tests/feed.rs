//! External blocklists: pulled over HTTP from a server in the lab, with
//! conditional requests, malformed lines reported, atomic replacement, the
//! last good list kept when the feed breaks; on a local agent and on a hub
//! for the whole network.

mod support;

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_lab::{Host, LabBuilder, Netns, require_root_and, wait_until};
use support::{Agent, FeedServer, Hub, kernel_blocks, kernel_elements};

const V1: &str = "\
# FireHOL-style header
# 198.51.100.0/24 is ours
; Spamhaus-style comment
198.51.100.7
203.0.113.0/24
1.10.16.0/20 ; SBL256894
not-an-address
192.0.2.5
2001:db8:bad::/48
";

const V2: &str = "\
203.0.113.0/24
1.10.16.0/20 ; SBL256894
198.51.100.9
2001:db8:bad::/48
";

/// Runs `palisade feed ARGS` for `agent` in `outside`, a network namespace
/// with no route anywhere: whatever is pulled, the agent pulled it in its
/// own namespace (the control socket is a file, reached from anywhere).
fn feed_cli(outside: &Netns, agent: &Agent, args: &[&str]) -> Output {
    outside
        .command(support::BIN)
        .arg("--config")
        .arg(agent.config_path())
        .arg("--socket")
        .arg(agent.socket())
        .arg("feed")
        .args(args)
        .arg("--state-dir")
        .arg(agent.state_dir())
        .arg("--hub-socket")
        .arg(agent.dir.path().join("no-hub.sock"))
        .env_remove("PALISADE_CONFIG")
        .output()
        .expect("run palisade feed")
}

/// True if `outside` has no way to `addr` (checked there, where there is
/// no route: no packet leaves).
fn unreachable_from(outside: &Netns, addr: SocketAddr) -> bool {
    outside
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENETUNREACH))
}

/// Sends one raw line to a control socket and returns the answer line.
fn raw_request(socket: &std::path::Path, line: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    writeln!(stream, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer
}

/// Runs [`pull_in_a_process_of_its_own`] (this test binary again) in
/// `host`'s namespace, and returns its output and its peak RSS in kB.
fn pull_peak(host: &Host, url: &str, dir: &std::path::Path) -> (Output, u64) {
    let out = host
        .command(std::env::current_exe().unwrap().to_str().unwrap())
        .args([
            "--exact",
            "pull_in_a_process_of_its_own",
            "--ignored",
            "--nocapture",
        ])
        .env("PALISADE_TEST_FEED_URL", url)
        .env("PALISADE_TEST_FEED_DIR", dir)
        .output()
        .expect("run the pull");
    let peak = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("peak kB: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX);
    (out, peak)
}

/// One pull of the feed at `PALISADE_TEST_FEED_URL` into
/// `PALISADE_TEST_FEED_DIR`, with the configuration's default limits: the
/// code an agent or hub runs, alone in a process so that its peak memory
/// can be measured ([`pull_peak`]).
#[test]
#[ignore = "run by a_million_line_feed_is_read_with_bounded_memory"]
fn pull_in_a_process_of_its_own() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("PALISADE_TEST_FEED_URL"),
        std::env::var("PALISADE_TEST_FEED_DIR"),
    ) else {
        return;
    };
    let config = palisade_config::Config::parse(
        &format!("[[feed]]\nname = \"big\"\nurl = \"{url}\"\n"),
        std::path::Path::new("feed.toml"),
    )
    .unwrap();
    let feed = palisade_feed::Feed {
        name: "big".into(),
        url,
        max_entries: config.feed[0].max_entries,
        max_bytes: config.feed[0].max_bytes,
        deadline: config.feed[0].timeout,
        allow_non_public: false,
        crowdsec_key: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(palisade_feed::pull(
        &feed,
        std::path::Path::new(&dir),
        |_| {},
    )) {
        Ok(palisade_feed::Pulled::Updated { entries, .. }) => {
            println!("{} entries pulled", entries.len())
        }
        other => panic!("{other:?}"),
    }
    // This process's own high-water mark (a process's memory is new at
    // exec, so nothing of the test that started it counts).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    println!("peak kB: {peak}");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn has(host: &Host, element: &str) -> bool {
    kernel_blocks(host, element)
}

#[test]
fn a_local_agent_pulls_feeds_conditionally_atomically_and_keeps_the_last_good_list() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["feeds", "web1"]).build();
    let outside = Netns::new();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let mut server = FeedServer::start(lab.host("feeds"), addr);
    server.set(V1);
    let config = format!(
        "[[allow]]\nnet = \"192.0.2.0/24\"\ncomment = \"partners\"\n[[feed]]\nname = \"lvl1\"\nurl = \"http://{addr}/lvl1.netset\"\nevery = \"1h\"\n"
    );
    let host = lab.host("web1");
    let agent = Agent::start(host, &config);

    // Pulled at start: entries in the kernel, the allowed one refused.
    assert!(
        wait_until(Duration::from_secs(15), || has(host, "203.0.113.0/24")),
        "the feed was not applied at start:\n{}",
        agent.log()
    );
    for e in ["198.51.100.7", "1.10.16.0/20", "2001:db8:bad::/48"] {
        assert!(has(host, e), "{e} missing: {:?}", kernel_elements(host));
    }
    assert!(!has(host, "192.0.2.5"), "an allowed address was banned");
    let story = agent.ok(&["explain", "198.51.100.7"]);
    assert!(story.contains("feed:lvl1"), "{story}");
    let list = feed_cli(&outside, &agent, &["list"]);
    assert!(
        text(&list).contains("1 malformed line skipped"),
        "{}",
        text(&list)
    );

    // By hand, from a namespace that cannot reach the feed server: the
    // running agent pulls, conditionally, and the server answers 304.
    assert!(unreachable_from(&outside, addr));
    let out = feed_cli(&outside, &agent, &["pull", "lvl1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not modified"), "{}", text(&out));
    assert_eq!(server.last_status(), Some(304));

    // Only the agent's own feeds, by name: an unknown name is refused, and
    // a URL slipped into the request is not what the agent pulls.
    let out = feed_cli(&outside, &agent, &["pull", "../../etc/shadow"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no feed is named \"../../etc/shadow\" here; configured: lvl1"),
        "{}",
        text(&out)
    );
    let asked = server.state.lock().unwrap().requests.len();
    let elsewhere = SocketAddr::new(lab.host("feeds").v4().into(), 8001);
    let other = FeedServer::start(lab.host("feeds"), elsewhere);
    other.set("198.51.100.66\n");
    let answer = raw_request(
        &agent.socket(),
        &format!(r#"{{"op":"feed_pull","name":"lvl1","url":"http://{elsewhere}/x"}}"#),
    );
    assert!(answer.contains("\"feed_pulled\""), "{answer}");
    assert!(other.state.lock().unwrap().requests.is_empty());
    assert_eq!(server.state.lock().unwrap().requests.len(), asked + 1);
    assert!(!has(host, "198.51.100.66"));

    // A new list replaces the feed's entries at once: a watcher never sees
    // the feed's lasting entries gone.
    server.set(V2);
    let gap = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (gap, stop) = (gap.clone(), stop.clone());
        let ns = host.ns_name().to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "nft",
                        "list",
                        "set",
                        "inet",
                        "palisade",
                        "block4_net",
                    ])
                    .output()
                    .unwrap();
                let s = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && !s.contains("203.0.113.0/24") {
                    gap.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let out = feed_cli(&outside, &agent, &["pull", "lvl1"]);
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("4 entries pulled"), "{shown}");
    assert!(shown.contains("1 added, 1 removed"), "{shown}");
    assert!(
        !gap.load(Ordering::SeqCst),
        "the feed's entries were briefly gone"
    );
    assert!(has(host, "198.51.100.9") && !has(host, "198.51.100.7"));

    // A malformed line is reported, the rest applied.
    server.set(format!("{V2}999.1.2.3\n198.51.100.11\n"));
    let out = feed_cli(&outside, &agent, &["pull", "lvl1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("line 5: \"999.1.2.3\""),
        "{}",
        text(&out)
    );
    assert!(has(host, "198.51.100.11"));

    // A broken feed keeps the last good list and says why.
    server.fail(true);
    let out = feed_cli(&outside, &agent, &["pull", "lvl1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("500"), "{}", text(&out));
    assert!(
        text(&out).contains("last good list (5 entries"),
        "{}",
        text(&out)
    );
    assert!(has(host, "198.51.100.11") && has(host, "203.0.113.0/24"));

    // So does an unreachable one.
    server.stop();
    let out = feed_cli(&outside, &agent, &["pull", "lvl1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));
    assert!(has(host, "198.51.100.11") && has(host, "203.0.113.0/24"));
    let list = text(&feed_cli(&outside, &agent, &["list"]));
    assert!(
        list.contains("LAST PULL FAILED") && list.contains("5 entries"),
        "{list}"
    );

    // A feed removed from the configuration takes its entries with it.
    drop(agent);
    let agent = Agent::start(host, "");
    assert!(
        wait_until(Duration::from_secs(10), || !agent
            .ok(&["list"])
            .contains("203.0.113.0/24")),
        "{}",
        agent.log()
    );
}

#[test]
fn a_hub_pulls_feeds_for_the_whole_network() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["hub", "feeds", "web1", "web2"])
        .build();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let server = FeedServer::start(lab.host("feeds"), addr);
    server.set("198.51.100.7\n203.0.113.0/24\n198.18.0.3\n");
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        &format!("[[feed]]\nname = \"drop\"\nurl = \"http://{addr}/drop.txt\"\nevery = \"1h\"\n"),
    );
    let join = hub.token("join", "lab");
    let agents: Vec<Agent> = ["web1", "web2"]
        .iter()
        .map(|n| Agent::join(lab.host(n), "", &hub.url(), &join, n))
        .collect();
    for (i, name) in ["web1", "web2"].iter().enumerate() {
        let host = lab.host(name);
        assert!(
            wait_until(Duration::from_secs(15), || has(host, "203.0.113.0/24")
                && has(host, "198.51.100.7")),
            "{name} did not get the hub's feed:\n{}\nhub:\n{}",
            agents[i].log(),
            hub.log()
        );
    }
    // web1's own address (198.18.0.3) is a node's: allowed everywhere, so
    // the feed's entry for it (made before web1 joined) is only shadowed.
    assert!(
        wait_until(Duration::from_secs(10), || agents[1]
            .ok(&["explain", "198.18.0.3"])
            .contains("ALLOWED")),
        "{}",
        agents[1].ok(&["explain", "198.18.0.3"])
    );
    assert!(
        kernel_elements(lab.host("web2"))
            .iter()
            .any(|e| e.starts_with("allow") && e.ends_with(": 198.18.0.3")),
        "{:?}",
        kernel_elements(lab.host("web2"))
    );
    let story = agents[1].ok(&["explain", "198.51.100.7"]);
    assert!(story.contains("drop via feed on hub"), "{story}");

    // By hand, from a namespace that cannot reach the feed server: the hub
    // pulls, and the new entry reaches every agent.
    server.set("198.51.100.7\n203.0.113.0/24\n198.18.0.3\n198.51.100.9\n");
    let outside = Netns::new();
    assert!(unreachable_from(&outside, addr));
    let pull = |name: &str| {
        outside
            .command(support::BIN)
            .arg("--config")
            .arg(hub.dir.path().join("palisade.toml"))
            .args(["feed", "pull", name])
            .args(hub.place())
            .env_remove("PALISADE_CONFIG")
            .output()
            .expect("run palisade feed pull")
    };
    let out = pull("drop");
    assert!(out.status.success(), "{}\n{}", text(&out), hub.log());
    let shown = text(&out);
    assert!(
        shown.contains("drop: 3 entries pulled") && shown.contains("applied by the hub"),
        "{shown}"
    );
    for name in ["web1", "web2"] {
        assert!(
            wait_until(Duration::from_secs(10), || has(
                lab.host(name),
                "198.51.100.9"
            )),
            "{name} did not get the pulled entry"
        );
    }
    let out = pull("nope");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no feed is named \"nope\" here; configured: drop"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_hostile_feed_bans_no_private_range_and_is_cut_off() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["feeds", "web1"]).build();
    let outside = Netns::new();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let server = FeedServer::start(lab.host("feeds"), addr);
    server.set("10.1.2.3\n172.16.0.0/12\n100.64.0.1\nfd00::1\n198.51.100.7\n");
    let host = lab.host("web1");
    let config = format!(
        "[[feed]]\nname = \"bad\"\nurl = \"http://{addr}/bad.txt\"\nevery = \"1w\"\nmax_bytes = 1000000\ntimeout = \"3s\"\n"
    );
    let agent = Agent::start(host, &config);
    // Private, CGNAT and unique-local entries are refused and reported; the
    // public one is applied. (The agent pulls at start; a pull by hand
    // after it hears "not modified".)
    assert!(
        wait_until(Duration::from_secs(15), || has(host, "198.51.100.7")),
        "{}",
        agent.log()
    );
    let out = feed_cli(&outside, &agent, &["pull", "bad"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = std::fs::read_to_string(agent.state_dir().join("feeds/bad.json")).unwrap();
    assert!(
        state.contains("not the public internet") && state.contains("allow_non_public"),
        "{state}"
    );
    for e in ["10.1.2.3", "172.16.0.0/12", "100.64.0.1", "fd00::1"] {
        assert!(!has(host, e), "{e} was banned");
    }

    // An endless body is cut off at max_bytes; the last good list stays.
    server.set("198.51.100.8\n");
    server.endless(Some(Duration::ZERO));
    let out = feed_cli(&outside, &agent, &["pull", "bad"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("sent more than 1000000 bytes"),
        "{}",
        text(&out)
    );
    assert!(has(host, "198.51.100.7") && !has(host, "198.51.100.8"));

    // A body trickled a line at a time is cut off at the deadline.
    server.endless(Some(Duration::from_millis(100)));
    let started = std::time::Instant::now();
    let out = feed_cli(&outside, &agent, &["pull", "bad"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("took longer than 3s"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(has(host, "198.51.100.7") && !has(host, "198.51.100.8"));
}

#[test]
fn a_million_line_feed_is_read_with_bounded_memory() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["feeds", "web1"]).build();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let server = FeedServer::start(lab.host("feeds"), addr);
    let mut body = String::with_capacity(16 << 20);
    body.push_str("# a million hosts\n");
    for i in 0..1_000_000u32 {
        // Public space (the feed guard refuses CGNAT and private ranges).
        let a = std::net::Ipv4Addr::from(0x5000_0000u32 + 2 * i);
        body.push_str(&a.to_string());
        body.push('\n');
    }
    let size = body.len();
    server.set(body);
    let dir = tempfile::tempdir().unwrap();
    let (out, peak_kb) = pull_peak(
        lab.host("web1"),
        &format!("http://{addr}/big.ipset"),
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1000000 entries pulled"),
        "{}",
        text(&out)
    );
    let kept = std::fs::read_to_string(dir.path().join("big.list")).unwrap();
    assert_eq!(kept.lines().count(), 1_000_000);
    // The text is read as it streams: the pull's peak memory is about the
    // entries (16 bytes each, sorted in place), not a copy of the body.
    assert!(
        peak_kb < 80_000,
        "a pull of {size} bytes peaked at {peak_kb} kB"
    );
}

/// A feed that fails at start (its server is not up yet, as at boot before
/// the network), then answers with an error, is retried within seconds,
/// not at the next `every` (an hour here), and applied once it works.
#[test]
fn a_failed_pull_is_retried_long_before_every() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["feeds", "web1"]).build();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let config =
        format!("[[feed]]\nname = \"late\"\nurl = \"http://{addr}/late.txt\"\nevery = \"1h\"\n");
    let host = lab.host("web1");
    let agent = Agent::start(host, &config);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("the feed failed; its last good list stays")),
        "{}",
        agent.log()
    );
    // The server comes up, failing: the first retry (10 s) meets a 500.
    let server = FeedServer::start(lab.host("feeds"), addr);
    server.set(V2);
    server.fail(true);
    assert!(
        wait_until(Duration::from_secs(15), || server.last_status()
            == Some(500)),
        "the unreachable feed was not retried:\n{}",
        agent.log()
    );
    // Then it works: the next retry (20 s later) applies the list.
    server.fail(false);
    assert!(
        wait_until(Duration::from_secs(30), || has(host, "203.0.113.0/24")),
        "the failing feed was not retried:\n{}",
        agent.log()
    );
}

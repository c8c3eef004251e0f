//! Port probes seen by the kernel: a lab victim logs new inbound TCP SYNs
//! to NFLOG group N (a throwaway `table inet palisade_probe_test`), the
//! nflog source turns each into a LOG-style line, and the built-in
//! `port-probe` rule bans the attacker after its threshold. Probes of a
//! port that is open (a listening socket in the victim) never count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use palisade_detect::{
    Engine, Event, HitKind, Limits, Line, Tracker, Trust, builtin, nflog_source,
};
use palisade_lab::{Lab, TcpServer, tcp_connect};
use palisade_model::{Net, Timestamp};

const GROUP: u16 = 7;

#[test]
fn probes_of_closed_ports_ban_the_attacker() {
    if !palisade_lab::require_root_and(&["nft"]) {
        return;
    }
    let lab = Lab::new();
    let victim = lab.victim();
    let attacker = lab.attacker();
    let ruleset = format!(
        "table inet palisade_probe_test {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  tcp flags syn ct state new log prefix \"probe\" group {GROUP}\n }}\n}}\n"
    );
    let out = victim
        .netns()
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(ruleset.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(out.success(), "nft -f failed");

    let server = TcpServer::start(victim.netns(), 0);
    let open_port = server.port();
    let closed_port = if open_port == 23 { 24 } else { 23 };

    let (tx, rx) = unbounded::<Line>();
    let src = victim
        .netns()
        .run(|| nflog_source(GROUP, "nflog", tx))
        .expect("binding the NFLOG group");

    let probe = |ipv6: bool, port: u16| {
        let to = SocketAddr::new(victim.addr(ipv6), port);
        tcp_connect(attacker.netns(), to, Duration::from_millis(500))
    };
    for _ in 0..5 {
        assert!(probe(false, open_port), "the open port answers");
    }
    for _ in 0..3 {
        assert!(!probe(false, closed_port));
        assert!(!probe(true, closed_port));
    }

    // The tracker runs in the victim's namespace, where the open port is.
    let (events, probes, ignored) = victim.netns().run(|| {
        let engine = Engine::compile(&builtin::rules()).unwrap();
        let mut tracker = Tracker::new(engine, Limits::default());
        let mut events = Vec::new();
        let (mut probes, mut ignored) = (0, 0);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && events.len() < 2 {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let (ev, hits) = tracker.observe_text(&line.source, &line.text, Timestamp::now);
            let hits = hits.to_vec();
            for h in hits {
                if tracker.engine().rules()[h.rule].name == "port-probe" {
                    match h.kind {
                        HitKind::Bad => probes += 1,
                        HitKind::Ignored => ignored += 1,
                        HitKind::Good => {}
                    }
                }
            }
            events.extend(ev);
        }
        (events, probes, ignored)
    });
    src.stop().unwrap();
    drop(server);

    assert_eq!(
        ignored, 5,
        "the 5 connections to the open port were logged but not counted"
    );
    assert_eq!(probes, 6, "3 IPv4 and 3 IPv6 probes of the closed port");
    let banned: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Ban {
                rule,
                address,
                trust,
                ..
            } => {
                // A SYN can carry any source address.
                assert_eq!(*trust, Trust::Forgeable);
                Some((rule.clone(), address.to_string()))
            }
            _ => None,
        })
        .collect();
    // IPv6 attackers are counted, and banned, per /64.
    let v6_net = Net::truncating(attacker.v6().into(), 64).to_string();
    assert!(
        banned.contains(&("port-probe".into(), attacker.v4().to_string())),
        "{banned:?}"
    );
    assert!(
        banned.contains(&("port-probe".into(), v6_net)),
        "{banned:?}"
    );
}

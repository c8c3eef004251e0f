//! Propagation over the three buses, run as root:
//! `cargo bench --bench buses [-- QUICK] [-- AGENTS=20] [-- SAMPLES=200]`.
//!
//! For each bus (the embedded hub over HTTPS, NATS JetStream, an MQTT
//! broker with the hub bridged to it), 20 agents run on their own lab
//! hosts; one of them reports an address (as `palisade report` does), and
//! the time until the element is in the kernel of every other agent is
//! observed through each namespace's nftables netlink notifications
//! (NFNLGRP_NFTABLES, NEWSETELEM matched by the key's bytes), as
//! benches/agent.rs does. Reports are sent one at a time; the table shows
//! p50/p99 of "the last agent has it", and of single agents.
//!
//! NATS runs as one server with a single-replica bucket and one policy
//! worker (the current nats-server from scripts/test's virtualenv, else
//! Debian's); MQTT is Debian's mosquitto.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{committed_before, ms, observe};
use palisade_control::{BanRequest, Client, Request, Response};
use palisade_lab::{Lab, LabBuilder, require_root_and};
use palisade_model::{Net, Scope, Source};
use support::{Agent, BusHub, Hub, Mosquitto, NatsServer};

/// What each agent is given: no connection killing, so only propagation
/// is measured.
const AGENT_CONFIG: &str =
    "[agent]\nkill_connections = false\n[hub.rate]\nper_second = 1000.0\nburst = 100000\n";

fn main() {
    let nats_bin = support::nats_servers()
        .into_iter()
        .rev()
        .map(|(_, b)| b)
        .find(|b| std::path::Path::new(b).exists())
        .unwrap_or_else(|| "/usr/sbin/nats-server".into());
    if !require_root_and(&["nft", "mosquitto", &nats_bin]) {
        return;
    }
    let arg = |name: &str, default: usize| {
        std::env::args()
            .find_map(|a| {
                a.strip_prefix(&format!("{name}="))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(default)
    };
    let quick = std::env::args().any(|a| a == "QUICK");
    let agents = arg("AGENTS", 20);
    let samples = arg("SAMPLES", if quick { 50 } else { 200 });
    let mut rows = Vec::new();
    // `ONLY=mqtt` measures one bus (the table then has that row only).
    let only = std::env::args().find_map(|a| a.strip_prefix("ONLY=").map(String::from));
    for (i, bus) in ["hub", "nats", "mqtt"].iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != *bus) {
            continue;
        }
        eprintln!("{bus}: starting {agents} agents");
        let r = run(bus, &nats_bin, agents, samples, i as u32);
        rows.push((*bus, r));
    }
    println!(
        "\npropagation: a report on one agent -> the element in the kernel of every other agent"
    );
    println!("({agents} agents on their own lab hosts, {samples} reports one at a time)");
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "bus", "p50 all", "p99 all", "max all", "p50 each", "p99 each"
    );
    let hub_p50 = rows
        .iter()
        .find(|(b, _)| *b == "hub")
        .map(|(_, r)| r.all_p50());
    for (bus, r) in &mut rows {
        let label = match *bus {
            "hub" => "embedded hub (HTTPS stream)".to_string(),
            "nats" => "NATS JetStream (KV watch, 1 worker)".to_string(),
            _ => "MQTT, mosquitto (retained, bridge)".to_string(),
        };
        println!(
            "  {:<34} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>10.2}ms {:>10.2}ms",
            label,
            ms(r.all_p(0.50)),
            ms(r.all_p(0.99)),
            ms(*r.all.iter().max().unwrap()),
            ms(r.each_p(0.50)),
            ms(r.each_p(0.99)),
        );
        if r.lost > 0 {
            println!(
                "    {} report(s) did not reach every agent within 5 s",
                r.lost
            );
        }
    }
    if let Some(hub_p50) = hub_p50 {
        for (bus, r) in rows.iter().filter(|(b, _)| *b != "hub") {
            println!(
                "  {bus}: p50 {:.2}x the embedded hub's",
                ms(r.all_p50()) / ms(hub_p50)
            );
        }
    }
}

struct Figures {
    /// Per report: until the last agent had it.
    all: Vec<Duration>,
    /// Per report and agent.
    each: Vec<Duration>,
    lost: usize,
}

impl Figures {
    fn all_p(&mut self, q: f64) -> Duration {
        pct(&mut self.all, q)
    }
    fn all_p50(&self) -> Duration {
        let mut v = self.all.clone();
        pct(&mut v, 0.5)
    }
    fn each_p(&mut self, q: f64) -> Duration {
        pct(&mut self.each, q)
    }
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Keeps whatever runs the bus alive for the run.
#[allow(dead_code)]
enum Carrier {
    Hub(Hub),
    Nats(NatsServer, BusHub),
    Mqtt(Mosquitto, BusHub),
}

fn run(bus: &str, nats_bin: &str, n: usize, samples: usize, salt: u32) -> Figures {
    let mut names = vec!["bus".to_string()];
    names.extend((1..=n).map(|i| format!("a{i}")));
    let lab: Lab = LabBuilder::new().hosts(&names).build();
    let addr = lab.host("bus").v4().to_string();
    let (carrier, url, token) = match bus {
        "hub" => {
            let hub = Hub::start(lab.host("bus"), &format!("{addr}:7470"), AGENT_CONFIG);
            let join = hub.token("join", "bench");
            let url = hub.url();
            (Carrier::Hub(hub), url, Some(join))
        }
        "nats" => {
            let server = NatsServer::start(nats_bin, lab.host("bus"), "n1", &addr, &[]);
            let url = format!("nats://{addr}:4222");
            let worker = BusHub::nats_worker(lab.host("bus"), &url, AGENT_CONFIG);
            (Carrier::Nats(server, worker), url, None)
        }
        _ => {
            let broker = Mosquitto::start(lab.host("bus"), &addr, &[]);
            let url = format!("mqtt://{addr}:1883");
            let hub =
                BusHub::mqtt_hub(lab.host("bus"), &url, &format!("{addr}:7470"), AGENT_CONFIG);
            (Carrier::Mqtt(broker, hub), url, None)
        }
    };
    let agents: Vec<Agent> = names[1..]
        .iter()
        .map(|name| match &token {
            Some(t) => Agent::join(lab.host(name), AGENT_CONFIG, &url, t, name),
            None => Agent::join_bus(lab.host(name), AGENT_CONFIG, &url, name),
        })
        .collect();
    // Observers in every agent's namespace but the reporter's.
    let mut observers = Vec::new();
    for name in &names[2..] {
        observers.push(observe(lab.host(name)));
    }
    let mut client = Client::connect(&agents[0].socket()).unwrap();
    let mut figures = Figures {
        all: Vec::new(),
        each: Vec::new(),
        lost: 0,
    };
    // A few reports first, so connections are warm.
    for i in 0..(samples + 10) {
        let a = Ipv4Addr::from(0x6440_0000u32 + salt * 0x10_0000 + 2 * i as u32);
        let t0 = Instant::now();
        let r = client
            .call(&Request::Ban(BanRequest {
                targets: vec![Net::host(a.into())],
                span: Some("1h".parse().unwrap()),
                reason: None,
                rule: Some("bench".into()),
                evidence: vec![],
                actor: Some("bench".into()),
                scope: Scope::Network,
                brief: true,
                source: Source::Report,
            }))
            .unwrap();
        assert!(matches!(r, Response::Outcomes { .. }), "{r:?}");
        let mut last = Duration::ZERO;
        let mut each = Vec::with_capacity(observers.len());
        let mut lost = false;
        for rx in &observers {
            match committed_before(rx, a, t0 + Duration::from_secs(5)) {
                Some(t) => {
                    let d = t.saturating_duration_since(t0);
                    each.push(d);
                    last = last.max(d);
                }
                None => lost = true,
            }
        }
        if i < 10 {
            continue;
        }
        if lost {
            figures.lost += 1;
            continue;
        }
        figures.all.push(last);
        figures.each.extend(each);
    }
    drop(client);
    if std::env::args().any(|a| a == "LOGS") {
        eprintln!("--- reporter ---\n{}", agents[0].log());
        eprintln!("--- a2 ---\n{}", agents[1].log());
    }
    drop(agents);
    drop(carrier);
    figures
}

//! A model-based test: seeded random sequences of what operators, servers
//! and the outside world do to a hub and three agents in a lab (bans of
//! the same and other lengths, unbans, allows, unallows, reports under a
//! quorum, expiry, restarts of an agent or the hub, an agent down while the
//! others act, sets flushed behind palisade's back). After each sequence
//! settles, every agent's kernel sets, its store (through `explain`) and
//! real traffic are checked against a small model of what should hold.
//!
//! CI runs the fixed seeds of [`CI_SEEDS`]. A longer run (10,200
//! operations; labs are independent, so shards run side by side):
//!
//!     for s in 5000 5075 5150 5225; do
//!       PALISADE_MODEL_SHRINK=0 PALISADE_MODEL_LOGS=/tmp/model-logs \
//!       PALISADE_MODEL_SEEDS=$s..$((s+75)) PALISADE_MODEL_OPS=34 CI=true \
//!         cargo test --test model random -- --nocapture > shard.$s 2>&1 &
//!     done; wait
//!
//! A failing case prints its seed and the shortest sequence found that
//! still fails (each candidate replayed on a fresh lab); with
//! `PALISADE_MODEL_SHRINK=0` every seed runs and failures are listed at
//! the end. `PALISADE_MODEL_LOGS=DIR` keeps every process's log and the
//! timeline of a failing case in `DIR/seed-SEED`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use palisade_lab::{Lab, LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use palisade_model::Net;
use support::{Agent, Hub, kernel_elements};

const CI_SEEDS: [u64; 3] = [11, 12, 13];
const CI_OPS: usize = 14;
const PORT: u16 = 8080;
/// Longest wait for the network to settle or the kernel to be repaired.
const SETTLE: Duration = Duration::from_secs(25);
/// Expiries this close to a check are not judged (clocks, propagation).
const MARGIN: Duration = Duration::from_secs(3);
/// Most replays spent looking for a shorter failing sequence.
const SHRINK_BUDGET: usize = 30;

/// What an allow does to the bans it covers. Current main deletes them;
/// the trust work makes an allow shadow them (they stay, and come back when
/// the allow goes). Checks look at traffic and `explain`'s verdict, so only
/// what happens after an unallow depends on this.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AllowEffect {
    DeletesCoveredBans,
    ShadowsCoveredBans,
}

/// An allow shadows the bans it covers (they stay, and apply again when it
/// goes); `PALISADE_MODEL_ALLOW=delete` checks the older behaviour.
fn allow_effect() -> AllowEffect {
    match std::env::var("PALISADE_MODEL_ALLOW").as_deref() {
        Ok("shadow") => AllowEffect::ShadowsCoveredBans,
        Ok("delete") => AllowEffect::DeletesCoveredBans,
        _ => AllowEffect::ShadowsCoveredBans,
    }
}

/// The hub's policy for the lab: a quorum of two for reports, no
/// escalation and no suppression window, so ban lengths are what was asked
/// (suppression of repeats is the policy's business, tested there).
const HUB_CONFIG: &str = "[hub]\nsuppress_window = \"1s\"\n\n[hub.escalation]\nenabled = false\n\n[hub.quorum]\nreport = 2\n";

/// Ban targets (the attacker host carries real traffic; the others are
/// checked in the kernel and with `explain`).
const BAN_TARGETS: [&str; 4] = ["attacker", "198.19.5.7", "198.19.5.8", "198.19.5.0/24"];
/// Allow targets: a host, and a network covering 198.19.5.7 but not .8.
const ALLOW_TARGETS: [&str; 3] = ["attacker", "198.19.5.7", "198.19.5.0/29"];
/// Reported by the agents (fail2ban), quorum 2.
const REPORTED: &str = "198.19.6.9";
/// Addresses whose verdict is checked on every agent.
const PROBES: [&str; 6] = [
    "attacker",
    "198.19.5.7",
    "198.19.5.8",
    "198.19.5.9",
    "198.19.5.3",
    REPORTED,
];
/// Ban lengths, in seconds (`None`: forever).
const LENGTHS: [Option<u64>; 4] = [Some(6), Some(12), Some(3600), None];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// An operator's ban (the hub's own CLI where it has one).
    OperatorBan {
        target: usize,
        secs: Option<u64>,
    },
    /// A server's ban through its agent.
    NodeBan {
        agent: usize,
        target: usize,
        secs: Option<u64>,
    },
    OperatorUnban {
        target: usize,
    },
    OperatorAllow {
        target: usize,
    },
    OperatorUnallow {
        target: usize,
    },
    /// `palisade report fail2ban sshd REPORTED` on an agent.
    Report {
        agent: usize,
    },
    Wait {
        secs: u64,
    },
    RestartAgent {
        agent: usize,
    },
    RestartHub,
    AgentDown {
        agent: usize,
    },
    AgentUp {
        agent: usize,
    },
    /// `nft flush set inet palisade SET` behind palisade's back.
    Flush {
        agent: usize,
        set: &'static str,
    },
}

/// A small deterministic generator (splitmix64): no dependency, the same
/// sequence for a seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A sequence of `len` operations for `seed`, valid in order (no action
/// on an agent that is down; at most one agent down at a time).
fn generate(seed: u64, len: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut down: Option<usize> = None;
    let mut ops = Vec::with_capacity(len);
    while ops.len() < len {
        let up = |rng: &mut Rng| loop {
            let a = rng.below(3);
            if Some(a) != down {
                return a;
            }
        };
        let op = match rng.below(100) {
            0..=19 => Op::OperatorBan {
                target: rng.below(BAN_TARGETS.len()),
                secs: LENGTHS[rng.below(LENGTHS.len())],
            },
            20..=31 => Op::NodeBan {
                agent: up(&mut rng),
                target: rng.below(BAN_TARGETS.len()),
                secs: LENGTHS[rng.below(LENGTHS.len())],
            },
            32..=41 => Op::OperatorUnban {
                target: rng.below(BAN_TARGETS.len()),
            },
            42..=50 => Op::OperatorAllow {
                target: rng.below(ALLOW_TARGETS.len()),
            },
            51..=59 => Op::OperatorUnallow {
                target: rng.below(ALLOW_TARGETS.len()),
            },
            60..=67 => Op::Report {
                agent: up(&mut rng),
            },
            68..=74 => Op::Wait {
                secs: 2 + rng.below(6) as u64,
            },
            75..=79 => Op::RestartAgent {
                agent: up(&mut rng),
            },
            80..=82 => Op::RestartHub,
            83..=88 => match down {
                Some(a) => {
                    down = None;
                    Op::AgentUp { agent: a }
                }
                None => {
                    let a = rng.below(3);
                    down = Some(a);
                    Op::AgentDown { agent: a }
                }
            },
            _ => Op::Flush {
                agent: up(&mut rng),
                set: if rng.below(2) == 0 {
                    "block4"
                } else {
                    "allow4"
                },
            },
        };
        ops.push(op);
    }
    ops
}

/// Drops operations made invalid by a removal (an action on an agent that
/// is down, an `AgentUp` of an agent that is up), for shrinking.
fn well_formed(ops: &[Op]) -> Vec<Op> {
    let mut down: Option<usize> = None;
    let mut out = Vec::new();
    for op in ops {
        let agent = match op {
            Op::NodeBan { agent, .. }
            | Op::Report { agent }
            | Op::RestartAgent { agent }
            | Op::Flush { agent, .. } => Some(*agent),
            _ => None,
        };
        if agent.is_some() && agent == down {
            continue;
        }
        match op {
            Op::AgentDown { agent } if down.is_none() => down = Some(*agent),
            Op::AgentDown { .. } => continue,
            Op::AgentUp { agent } if down == Some(*agent) => down = None,
            Op::AgentUp { .. } => continue,
            _ => {}
        }
        out.push(op.clone());
    }
    out
}

/// When a ban ends (`None`: forever).
type Expiry = Option<Instant>;

fn later(a: Expiry, b: Expiry) -> Expiry {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    }
}

/// What should hold, network-wide.
#[derive(Default)]
struct Model {
    bans: BTreeMap<Net, Expiry>,
    allows: BTreeSet<Net>,
    /// Agents that reported [`REPORTED`]; each blocks it from its own
    /// report on, everyone once two distinct agents did.
    reporters: BTreeSet<usize>,
}

impl Model {
    fn allowed(&self, n: &Net) -> bool {
        self.allows.iter().any(|a| a.contains(n))
    }

    fn ban(&mut self, target: Net, secs: Option<u64>, now: Instant) {
        if self.allowed(&target) {
            return; // the allowlist wins: refused
        }
        let until = secs.map(|s| now + Duration::from_secs(s));
        let e = self.bans.entry(target).or_insert(until);
        *e = later(*e, until);
    }

    fn allow(&mut self, target: Net) {
        self.allows.insert(target);
        if allow_effect() == AllowEffect::DeletesCoveredBans {
            self.bans.retain(|b, _| !target.contains(b));
        }
    }

    fn expire(&mut self, now: Instant) {
        self.bans.retain(|_, e| e.is_none_or(|t| t > now));
    }

    /// The verdict for `addr` on agent `agent`, or `None` if an expiry too
    /// close to now makes it uncertain.
    fn verdict(&self, addr: &Net, agent: usize, now: Instant) -> Option<&'static str> {
        if self.allowed(addr) {
            return Some("allowed");
        }
        let mut blocked = false;
        for (b, e) in &self.bans {
            if !b.contains(addr) {
                continue;
            }
            match e {
                None => blocked = true,
                Some(t) if *t > now + MARGIN => blocked = true,
                Some(t) if *t + MARGIN > now => return None,
                Some(_) => {}
            }
        }
        if addr.to_string() == REPORTED
            && (self.reporters.len() >= 2 || self.reporters.contains(&agent))
        {
            blocked = true;
        }
        Some(if blocked { "blocked" } else { "open" })
    }
}

/// A hub and three agents, each agent serving TCP for reachability checks.
struct World {
    lab: Lab,
    hub: Hub,
    agents: Vec<Agent>,
    up: [bool; 3],
    /// Whether the hub's CLI takes operator actions (`palisade hub ban`);
    /// otherwise an agent's CLI stands in for the operator.
    hub_acts: bool,
    _servers: Vec<TcpServer>,
    /// What each process logged before it was stopped (agents, then the
    /// hub), and the operations with when they began: written out for a
    /// failing case when `PALISADE_MODEL_LOGS` names a directory.
    earlier_logs: [String; 4],
    timeline: Vec<String>,
    started: Instant,
}

impl World {
    fn start() -> World {
        let lab = LabBuilder::new()
            .hosts(["hub", "web1", "web2", "web3", "attacker"])
            .build();
        let hub = Hub::start(
            lab.host("hub"),
            &format!("{}:7470", lab.host("hub").v4()),
            HUB_CONFIG,
        );
        // The agents act for the operator too (the model's operator
        // actions go through the first agent up), so they join as operators.
        let join = hub
            .ok(&[
                "token", "create", "--kind", "join", "--role", "operator", "lab",
            ])
            .trim()
            .to_string();
        let mut agents = Vec::new();
        let mut servers = Vec::new();
        for name in ["web1", "web2", "web3"] {
            let host = lab.host(name);
            servers.push(TcpServer::start(host, PORT));
            agents.push(Agent::join(host, "", &hub.url(), &join, name));
        }
        let hub_acts = std::process::Command::new(support::BIN)
            .args(["hub", "ban", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        World {
            lab,
            hub,
            agents,
            up: [true; 3],
            hub_acts,
            _servers: servers,
            earlier_logs: Default::default(),
            timeline: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Stops agent `a`, keeping what it logged.
    fn stop_agent(&mut self, a: usize) {
        self.earlier_logs[a].push_str(&self.agents[a].log());
        self.earlier_logs[a].push_str("--- stopped ---\n");
        self.agents[a].stop();
    }

    /// Writes every process's log and the timeline of operations to
    /// `dir/NAME.log`, for a failing case.
    fn write_logs(&self, dir: &std::path::Path, why: &str) {
        std::fs::create_dir_all(dir).expect("create the log directory");
        for (a, agent) in self.agents.iter().enumerate() {
            let text = format!("{}{}", self.earlier_logs[a], agent.log());
            std::fs::write(dir.join(format!("web{}.log", a + 1)), text).expect("write a log");
        }
        let hub = format!("{}{}", self.earlier_logs[3], self.hub.log());
        std::fs::write(dir.join("hub.log"), hub).expect("write a log");
        let ops = format!(
            "{}\n{:.1?} {why}\n",
            self.timeline.join("\n"),
            self.started.elapsed()
        );
        std::fs::write(dir.join("ops.log"), ops).expect("write a log");
        println!("logs of the failing case in {}", dir.display());
    }

    fn attacker(&self) -> String {
        self.lab.host("attacker").v4().to_string()
    }

    fn net(&self, name: &str) -> Net {
        let text = if name == "attacker" {
            self.attacker()
        } else {
            name.to_string()
        };
        text.parse().unwrap()
    }

    /// An operator's action: through the hub's control socket when its CLI
    /// has the command, else (current main) through the first agent up.
    fn operator(&self, args: &[&str]) -> Result<String, String> {
        let out = if self.hub_acts {
            let mut full = vec!["--config".to_string()];
            full.push(
                self.hub
                    .dir
                    .path()
                    .join("palisade.toml")
                    .display()
                    .to_string(),
            );
            full.push("hub".into());
            full.extend(args.iter().map(|a| a.to_string()));
            full.extend(self.hub.place());
            std::process::Command::new(support::BIN)
                .args(&full)
                .output()
                .unwrap()
        } else {
            let a = (0..3).find(|&i| self.up[i]).expect("an agent is up");
            self.agents[a].cli(args)
        };
        outcome(out)
    }

    fn node(&self, agent: usize, args: &[&str]) -> Result<String, String> {
        outcome(self.agents[agent].cli(args))
    }

    /// Waits until every running agent is connected, has sent its outbox
    /// and applied the same stream position.
    fn quiet(&self) -> Result<(), String> {
        let mut last = String::new();
        let ok = wait_until(SETTLE, || {
            let mut cursors = BTreeSet::new();
            for (i, a) in self.agents.iter().enumerate() {
                if !self.up[i] {
                    continue;
                }
                let out = a.cli(&["status", "--json"]);
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    last = format!("web{}: no status", i + 1);
                    return false;
                };
                let n = &v["network"];
                let (cursor, latest) = (n["cursor"].as_u64(), n["latest"].as_u64());
                if n["connected"] != true || n["pending"] != 0 || cursor < latest {
                    last = format!("web{}: {n}", i + 1);
                    return false;
                }
                cursors.insert(cursor);
            }
            last = format!("stream positions {cursors:?}");
            cursors.len() == 1
        });
        if ok {
            Ok(())
        } else {
            Err(format!("the network did not settle: {last}"))
        }
    }

    fn apply(&mut self, op: &Op, model: &mut Model) -> Result<(), String> {
        let now = Instant::now();
        self.timeline
            .push(format!("{:.1?} {op:?}", now.duration_since(self.started)));
        let len = |secs: &Option<u64>| secs.map_or("forever".to_string(), |s| format!("{s}s"));
        match op {
            Op::OperatorBan { target, secs } => {
                let t = self.net(BAN_TARGETS[*target]).to_string();
                // A refusal (an allow covers it) is an answer, not a failure.
                let _ = self.operator(&["ban", &t, "--for", &len(secs)]);
                model.ban(t.parse().unwrap(), *secs, now);
            }
            Op::NodeBan {
                agent,
                target,
                secs,
            } => {
                let t = self.net(BAN_TARGETS[*target]).to_string();
                let _ = self.node(*agent, &["ban", &t, "--for", &len(secs)]);
                model.ban(t.parse().unwrap(), *secs, now);
            }
            Op::OperatorUnban { target } => {
                let t = self.net(BAN_TARGETS[*target]);
                let _ = self.operator(&["unban", &t.to_string()]);
                model.bans.remove(&t);
            }
            Op::OperatorAllow { target } => {
                let t = self.net(ALLOW_TARGETS[*target]);
                self.operator(&["allow", &t.to_string(), "--comment", "model"])?;
                model.allow(t);
            }
            Op::OperatorUnallow { target } => {
                let t = self.net(ALLOW_TARGETS[*target]);
                let _ = self.operator(&["unallow", &t.to_string()]);
                model.allows.remove(&t);
            }
            Op::Report { agent } => {
                self.node(
                    *agent,
                    &["report", "fail2ban", "sshd", REPORTED, "--for", "1h"],
                )?;
                model.reporters.insert(*agent);
            }
            Op::Wait { secs } => std::thread::sleep(Duration::from_secs(*secs)),
            Op::RestartAgent { agent } => {
                self.stop_agent(*agent);
                self.agents[*agent].restart();
            }
            Op::RestartHub => {
                self.earlier_logs[3].push_str(&self.hub.log());
                self.earlier_logs[3].push_str("--- stopped ---\n");
                self.hub.stop();
                self.hub.restart();
            }
            Op::AgentDown { agent } => {
                self.stop_agent(*agent);
                self.up[*agent] = false;
            }
            Op::AgentUp { agent } => {
                self.agents[*agent].restart();
                self.up[*agent] = true;
            }
            Op::Flush { agent, set } => {
                let host = self.lab.host(["web1", "web2", "web3"][*agent]);
                host.exec("nft", &["flush", "set", "inet", "palisade", set]);
            }
        }
        // Operators act one after another: each action reaches everyone
        // before the next (a quiet network), except while the hub is the
        // thing being restarted or an agent is down.
        if !matches!(op, Op::Wait { .. } | Op::Flush { .. }) {
            self.quiet()?;
        }
        Ok(())
    }

    /// Checks every agent against the model, retrying until the deadline
    /// (repairs of flushed sets take a few seconds).
    fn check(&self, model: &mut Model) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(12);
        loop {
            let now = Instant::now();
            model.expire(now);
            match self.check_once(model, now) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn check_once(&self, model: &Model, now: Instant) -> Result<(), String> {
        for (i, agent) in self.agents.iter().enumerate() {
            let web = format!("web{}", i + 1);
            let host = self.lab.host(&web);
            let elements = kernel_elements(host);
            for probe in PROBES {
                let addr = self.net(probe);
                let Some(want) = model.verdict(&addr, i, now) else {
                    continue;
                };
                let out = agent.cli(&["explain", "--json", &addr.to_string()]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("{web}: explain {addr}: {e}"))?;
                let got = v["verdict"].as_str().unwrap_or("?");
                if got != want {
                    return Err(format!(
                        "{web}: explain {addr} says {got}, the model {want}"
                    ));
                }
                // The kernel agrees: an element for it in a block set when
                // blocked; when open, no block element covers it.
                let in_block = elements.iter().any(|e| {
                    e.starts_with("block")
                        && e.split_once(": ")
                            .and_then(|(_, n)| kernel_net(n))
                            .is_some_and(|n| n.contains(&addr))
                });
                match want {
                    "blocked" if !in_block => {
                        return Err(format!(
                            "{web}: {addr} is blocked for palisade but not in the kernel: {elements:?}"
                        ));
                    }
                    "open" if in_block => {
                        return Err(format!(
                            "{web}: {addr} is open for palisade but the kernel blocks it: {elements:?}"
                        ));
                    }
                    "allowed" => {
                        let in_allow = elements.iter().any(|e| {
                            e.starts_with("allow")
                                && e.split_once(": ")
                                    .and_then(|(_, n)| kernel_net(n))
                                    .is_some_and(|n| n.contains(&addr))
                        });
                        if !in_allow {
                            return Err(format!(
                                "{web}: {addr} is allowed for palisade but not in the kernel: {elements:?}"
                            ));
                        }
                    }
                    _ => {}
                }
                if probe == "attacker" {
                    let to = SocketAddr::new(IpAddr::V4(host.v4()), PORT);
                    let reaches =
                        tcp_connect(self.lab.host("attacker"), to, Duration::from_millis(600));
                    if reaches != (want != "blocked") {
                        return Err(format!(
                            "{web}: the attacker {} while palisade says {want}",
                            if reaches { "connects" } else { "is dropped" }
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A kernel element as `kernel_elements` prints it ("a", "a/len", "a-b"),
/// as a network when it is one (ranges are left out).
fn kernel_net(text: &str) -> Option<Net> {
    text.parse().ok()
}

fn outcome(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `ops` on a fresh lab; the first divergence from the model. With
/// `PALISADE_MODEL_LOGS=DIR`, a failing case leaves its logs in
/// `DIR/seed-SEED` (the last failing replay of a seed wins).
fn run_case(seed: u64, ops: &[Op]) -> Result<(), String> {
    let mut world = World::start();
    let result = run_in(&mut world, ops);
    if let (Err(why), Ok(dir)) = (&result, std::env::var("PALISADE_MODEL_LOGS")) {
        world.write_logs(
            &std::path::Path::new(&dir).join(format!("seed-{seed}")),
            why,
        );
    }
    result
}

fn run_in(world: &mut World, ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        world
            .apply(op, &mut model)
            .map_err(|e| format!("op {i} {op:?}: {e}"))?;
    }
    for a in 0..3 {
        if !world.up[a] {
            world.apply(&Op::AgentUp { agent: a }, &mut model)?;
        }
    }
    world.quiet()?;
    world.check(&mut model)
}

/// The shortest failing sequence found by removing operations one at a
/// time (each candidate replayed on a fresh lab), and how it fails.
fn shrink(seed: u64, ops: Vec<Op>, error: String) -> (Vec<Op>, String) {
    let (mut best, mut why) = (ops, error);
    let mut budget = SHRINK_BUDGET;
    let mut i = best.len();
    while i > 0 && budget > 0 {
        i -= 1;
        let mut candidate = best.clone();
        candidate.remove(i);
        let candidate = well_formed(&candidate);
        budget -= 1;
        if let Err(e) = run_case(seed, &candidate) {
            (best, why) = (candidate, e);
            i = i.min(best.len());
        }
    }
    (best, why)
}

fn seeds() -> Vec<u64> {
    match std::env::var("PALISADE_MODEL_SEEDS") {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => (a.parse().unwrap()..b.parse().unwrap()).collect(),
            None => s.split(',').map(|x| x.trim().parse().unwrap()).collect(),
        },
        Err(_) => CI_SEEDS.to_vec(),
    }
}

#[test]
fn random_sequences_keep_every_kernel_equal_to_the_model() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let len = std::env::var("PALISADE_MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_OPS);
    // PALISADE_MODEL_SHRINK=0 (long runs): every seed runs, failures are
    // listed at the end without looking for shorter sequences.
    let shrinking = std::env::var("PALISADE_MODEL_SHRINK").as_deref() != Ok("0");
    let started = Instant::now();
    let mut total = 0;
    let mut failed = Vec::new();
    for seed in seeds() {
        let ops = well_formed(&generate(seed, len));
        total += ops.len();
        match run_case(seed, &ops) {
            Ok(()) => println!("seed {seed}: {} ops agree with the model", ops.len()),
            Err(e) if !shrinking => {
                println!("seed {seed}: DIVERGED: {e}");
                failed.push(seed);
            }
            Err(e) => {
                let (shortest, why) = shrink(seed, ops, e);
                panic!(
                    "seed {seed} diverged from the model\nshortest failing sequence ({} ops), which fails with: {why}\n{}",
                    shortest.len(),
                    shortest
                        .iter()
                        .map(|o| format!("  {o:?}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
    println!(
        "{total} operations over {} seeds in {:.0?}; diverged: {failed:?}",
        seeds().len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "seeds that diverged: {failed:?}");
}

#[test]
fn sequences_are_reproducible_and_well_formed() {
    assert_eq!(generate(7, 30), generate(7, 30));
    assert_ne!(generate(7, 30), generate(8, 30));
    let ops = generate(7, 200);
    assert_eq!(well_formed(&ops), ops, "generated sequences are valid");
    let broken = vec![
        Op::AgentDown { agent: 1 },
        Op::Report { agent: 1 },
        Op::AgentUp { agent: 2 },
        Op::AgentUp { agent: 1 },
    ];
    assert_eq!(
        well_formed(&broken),
        vec![Op::AgentDown { agent: 1 }, Op::AgentUp { agent: 1 }]
    );
}

//! Trust: no single server, credential, report or forged packet can hurt
//! the network. Each test builds a network (a hub or a bus, three agents,
//! an attacker host), lets the attacker try what a stolen credential,
//! forged packets or a hostile feed allow, and checks that the other
//! servers' kernels did not change and that a legitimate ban still travels
//! afterwards. SECURITY.md names the promise each test shows.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_lab::{
    Host, Lab, LabBuilder, Netns, TcpServer, require_root_and, tcp_connect, wait_until,
};
use palisade_model::Timestamp;
use support::{Agent, BusHub, FeedServer, Hub, Mosquitto, NatsServer, Up, kernel_elements};

const PORT: u16 = 8080;
const SPREAD: Duration = Duration::from_secs(15);
const WEBS: [&str; 3] = ["web1", "web2", "web3"];
/// The xt_recent list the agents' second enforcer writes to.
const LIST: &str = "BLOCKER";

// ---------------------------------------------------------------------------
// What an attacker sends, and what came of it.

/// The answer to one forged intent, whatever carried it.
#[derive(Debug)]
struct Verdict {
    /// `accepted`, `refused`, `pending`, ... for one intent; `error` when
    /// the whole request was turned away (a 4xx, a bus error reply).
    outcome: String,
    /// Why, for refusals; the error, for requests turned away.
    reason: Option<String>,
    /// The raw answer, for messages.
    detail: String,
    /// The decision's expiry, where one was made.
    expires: Option<Timestamp>,
}

impl Verdict {
    /// From a list of per-intent results (the hub's JSON answer, or a bus
    /// reply's `results`).
    fn from_results(results: &serde_json::Value, detail: String) -> Verdict {
        let first = &results[0];
        Verdict {
            outcome: first["outcome"].as_str().unwrap_or("error").to_string(),
            reason: first["reason"].as_str().map(String::from),
            expires: first["expires"]
                .as_str()
                .and_then(|t| serde_json::from_value(serde_json::json!(t)).ok()),
            detail,
        }
    }

    fn error(detail: String) -> Verdict {
        Verdict {
            outcome: "error".into(),
            reason: Some(detail.clone()),
            detail,
            expires: None,
        }
    }

    /// From a bus reply: `{"results":[...]}` or `{"error":"..."}`.
    fn from_bus_reply(text: &str) -> Verdict {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v["results"].is_array() && !v["results"].as_array().unwrap().is_empty() => {
                Verdict::from_results(&v["results"], text.to_string())
            }
            _ => Verdict::error(text.to_string()),
        }
    }
}

/// Somewhere forged intents can be sent as one node: the hub's API with
/// a stolen token, or a bus's intents subject or topic.
trait Channel {
    fn send(&self, intent: &str) -> Verdict;
}

/// Node-numbered ids, far above what the real nodes use in these tests.
static NEXT_ID: AtomicU64 = AtomicU64::new(1_000_000);

fn envelope(intent: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    format!(
        r#"{{"id":{id},"at":"{}","intent":{intent}}}"#,
        Timestamp::now()
    )
}

/// A bus request (NATS, MQTT) holding one intent.
fn bus_request(intent: &str) -> String {
    format!(r#"{{"group":null,"envelopes":[{}]}}"#, envelope(intent))
}

fn ban(target: &str, source: &str, extra: &str) -> String {
    format!(r#"{{"op":"ban","target":"{target}","span":"1h","source":"{source}"{extra}}}"#)
}

fn op(op: &str, target: &str, extra: &str) -> String {
    format!(r#"{{"op":"{op}","target":"{target}"{extra}}}"#)
}

fn assert_refused(what: &str, v: &Verdict) {
    assert!(
        v.outcome == "refused",
        "{what}: expected a refusal, got {:?}: {}",
        v.outcome,
        v.detail
    );
    assert!(
        v.reason.as_ref().is_some_and(|r| !r.trim().is_empty()),
        "{what}: a refusal says why: {}",
        v.detail
    );
}

/// Refused one way or the other: by the policy, or where the request
/// entered (an unreadable request), with an error that says so.
fn assert_turned_away(what: &str, v: &Verdict) {
    assert!(
        v.outcome == "refused" || v.outcome == "error",
        "{what}: expected a refusal, got {:?}: {}",
        v.outcome,
        v.detail
    );
    assert!(
        v.reason.as_ref().is_some_and(|r| r.contains("list")),
        "{what}: the answer does not say the list is wrong: {}",
        v.detail
    );
}

/// The hub's HTTPS API, reached with curl from `from` (the attacker's
/// namespace), pinned to the hub's certificate, as README's export example.
struct Api<'a> {
    from: &'a Host,
    cert: PathBuf,
    hub: String,
    token: String,
}

impl<'a> Api<'a> {
    fn new(from: &'a Host, hub: &Hub, hub_addr: &str, token: &str) -> Api<'a> {
        Api {
            from,
            cert: hub.state_dir().join("hub.crt"),
            hub: hub_addr.to_string(),
            token: token.to_string(),
        }
    }

    /// (HTTP status, body) of a request; `body` makes it a POST.
    fn request(&self, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = self.from.command("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.cert)
            .args(["--resolve", &format!("palisade-hub:7470:{}", self.hub)])
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("https://palisade-hub:7470{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            status.trim().parse().unwrap_or(0),
            format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }
}

impl Channel for Api<'_> {
    fn send(&self, intent: &str) -> Verdict {
        let (status, body) = self.request("/v1/intents", Some(&format!("[{}]", envelope(intent))));
        let detail = format!("HTTP {status}: {body}");
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if status == 200 && v.as_array().is_some_and(|a| !a.is_empty()) => {
                Verdict::from_results(&v, detail)
            }
            _ => Verdict::error(detail),
        }
    }
}

/// A node's intents subject on NATS, published to by the attacker with the
/// stolen node's NATS credentials (the lab's server needs none).
struct NatsIntents<'a> {
    from: &'a Host,
    server: String,
    subject: String,
}

impl Channel for NatsIntents<'_> {
    fn send(&self, intent: &str) -> Verdict {
        let body = bus_request(intent);
        let (server, subject) = (self.server.clone(), self.subject.clone());
        let reply = self.from.run(move || {
            nats_runtime().block_on(async move {
                let client = async_nats::connect(server)
                    .await
                    .map_err(|e| e.to_string())?;
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request(subject, body.into()),
                )
                .await
                .map_err(|_| "no answer within 10 s".to_string())?
                .map_err(|e| e.to_string())?;
                Ok::<_, String>(String::from_utf8_lossy(&answer.payload).into_owned())
            })
        });
        match reply {
            Ok(text) => Verdict::from_bus_reply(&text),
            Err(e) => Verdict::error(format!("no reply: {e}")),
        }
    }
}

fn nats_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes `body` on a NATS subject from `from`.
fn nats_publish(from: &Host, server: &str, subject: &str, body: String) {
    let (server, subject) = (server.to_string(), subject.to_string());
    from.run(move || {
        nats_runtime().block_on(async move {
            let client = async_nats::connect(server).await.expect("connect to NATS");
            client.publish(subject, body.into()).await.expect("publish");
            client.flush().await.expect("flush");
        })
    });
}

/// A node's intents topic on an MQTT broker, asked with `mosquitto_rr`
/// (MQTT 5 request/response) from the attacker's namespace.
struct MqttIntents<'a> {
    from: &'a Host,
    broker: String,
    topic: String,
}

impl Channel for MqttIntents<'_> {
    fn send(&self, intent: &str) -> Verdict {
        let out = self.from.output(
            "mosquitto_rr",
            &[
                "-h",
                &self.broker,
                "-t",
                &self.topic,
                "-e",
                "attacker/replies",
                "-m",
                &bus_request(intent),
                "-W",
                "10",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text.is_empty() {
            return Verdict::error(format!(
                "no reply: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Verdict::from_bus_reply(&text)
    }
}

// ---------------------------------------------------------------------------
// Observing the network.

/// Every element of each agent's `table inet palisade`.
fn kernels(hosts: &[&Host]) -> Vec<BTreeSet<String>> {
    hosts
        .iter()
        .map(|h| kernel_elements(h).into_iter().collect())
        .collect()
}

fn has_ban(host: &Host, element: &str) -> bool {
    kernel_elements(host)
        .iter()
        .any(|e| e.starts_with("block") && e.ends_with(&format!(": {element}")))
}

/// Bans `marker` on `from` (a legitimate operator's ban), waits until it is
/// in every kernel of `hosts` (the stream is ordered: whatever the attacks
/// changed has arrived too), and checks that nothing else changed since
/// `before`, but for `also[i]` on host `i`.
fn marker_travels_and_nothing_else_changed(
    from: &Agent,
    hosts: &[&Host],
    before: &[BTreeSet<String>],
    marker: &str,
    also: &[Vec<String>],
    logs: &dyn Fn() -> String,
) {
    from.ok(&["ban", marker, "--for", "1h", "--reason", "legitimate"]);
    assert!(
        wait_until(SPREAD, || hosts.iter().all(|h| has_ban(h, marker))),
        "a legitimate ban did not travel after the attacks\n{}",
        logs()
    );
    let after = kernels(hosts);
    for (i, h) in hosts.iter().enumerate() {
        let mut expected = before[i].clone();
        expected.insert(format!("block4: {marker}"));
        expected.extend(also.get(i).into_iter().flatten().cloned());
        let gained: Vec<&String> = after[i].difference(&expected).collect();
        let lost: Vec<&String> = expected.difference(&after[i]).collect();
        assert!(
            gained.is_empty() && lost.is_empty(),
            "the attacks changed {}'s kernel: gained {gained:?}, lost {lost:?}\n{}",
            h.name(),
            logs()
        );
    }
}

fn explain(agent: &Agent, addr: &str) -> String {
    agent.ok(&["explain", addr])
}

fn assert_allowed(agent: &Agent, addr: &str, what: &str) {
    let story = explain(agent, addr);
    assert!(story.contains("ALLOWED"), "{what}: {story}");
}

fn assert_not_allowed(agent: &Agent, addr: &str, what: &str) {
    let story = explain(agent, addr);
    assert!(!story.contains("ALLOWED"), "{what}: {story}");
}

fn reaches(from: &Host, to: &Host) -> bool {
    tcp_connect(
        from,
        SocketAddr::new(IpAddr::V4(to.v4()), PORT),
        Duration::from_millis(600),
    )
}

// ---------------------------------------------------------------------------
// The list attack (issue item 1): a file outside the kernel's lists.

/// A file with known content, and list names that try to reach it from
/// `/proc/thread-self/net/xt_recent/`.
struct Canary {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

const CANARY_TEXT: &str = "untouched\n";

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("canary");
        std::fs::write(&path, CANARY_TEXT).unwrap();
        Canary { _dir: dir, path }
    }

    /// Hostile list names: up and out to the canary, the issue's short
    /// form, one character too long, and characters outside the set.
    fn names(&self) -> Vec<String> {
        let relative = self.path.strip_prefix("/").unwrap().display().to_string();
        vec![
            format!("{}{relative}", "../".repeat(12)),
            "../../etc/x".into(),
            "A".repeat(32),
            "BLOCK ER".into(),
            "BLOCKER\\n".into(),
        ]
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            CANARY_TEXT,
            "a decision's list wrote into a file outside xt_recent"
        );
    }
}

/// Adds the iptables rule that makes the xt_recent list exist.
fn xt_recent_rule(host: &Host) {
    host.exec(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-m",
            "recent",
            "--name",
            LIST,
            "--rcheck",
            "--seconds",
            "172800",
            "-j",
            "DROP",
        ],
    );
}

/// An agent configuration with palisade's table and an xt_recent enforcer.
const WITH_XT_RECENT: &str = "[[enforcer]]\nkind = \"nftables\"\n[[enforcer]]\nkind = \"xt-recent\"\ndefault_list = \"BLOCKER\"\nfilter = { actions = [\"ban\"], hosts_only = true }\n";

fn xt_recent_list(host: &Host) -> String {
    host.run(|| std::fs::read_to_string(format!("/proc/thread-self/net/xt_recent/{LIST}")))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The attacks a stolen node credential allows, on any channel.

/// What the attacks aim at in one network.
struct Aims<'a> {
    /// Addresses that hold the network together (the hub's, the brokers').
    infrastructure: Vec<Ipv4Addr>,
    /// Another node's address.
    other_node: Ipv4Addr,
    /// A ban another node made.
    others_ban: &'a str,
    attacker: Ipv4Addr,
    canary: &'a Canary,
}

/// The target of the `i`th list attack.
fn listed_target(i: usize) -> String {
    format!("203.0.113.{}", 60 + i)
}

/// Items 1, 2, 3 and 5 of the issue as a node holding a stolen credential
/// (no group): each is refused and, with the list attack, nothing is
/// written anywhere.
fn stolen_node_attacks(ch: &dyn Channel, aims: &Aims) {
    // 1: the xt_recent list is a name, never a path. (A distinct target
    // each, so that no attempt is a mere repeat of another.)
    for (i, name) in aims.canary.names().iter().enumerate() {
        let json = serde_json::to_string(name).unwrap();
        let v = ch.send(&ban(
            &listed_target(i),
            "detector",
            &format!(r#","rule":"sshd","list":{json}"#),
        ));
        assert_turned_away(&format!("a ban with list {name:?}"), &v);
    }
    aims.canary.assert_untouched();

    // 2: a node never lifts another's ban, never allows (globally, or for
    // a group not its own).
    assert_refused(
        "unbanning another node's ban",
        &ch.send(&op("unban", aims.others_ban, "")),
    );
    assert_refused(
        "unallowing another node's address",
        &ch.send(&op("unallow", &aims.other_node.to_string(), "")),
    );
    let attacker = aims.attacker.to_string();
    for target in ["0.0.0.0/0", "::/0", "198.18.0.0/15", &attacker] {
        assert_refused(
            &format!("allow {target}"),
            &ch.send(&op("allow", target, "")),
        );
    }
    assert_refused(
        "an allow for another group",
        &ch.send(&op("allow", &attacker, r#","group":"partners""#)),
    );

    // 3: the network's own infrastructure, and networks covering it.
    for addr in &aims.infrastructure {
        let o = addr.octets();
        for target in [
            addr.to_string(),
            format!("{}.{}.{}.0/24", o[0], o[1], o[2]),
            format!("{}.{}.{}.{}/30", o[0], o[1], o[2], o[3] & !3),
        ] {
            assert_refused(
                &format!("banning {target} (covers {addr})"),
                &ch.send(&ban(&target, "cli", "")),
            );
        }
    }
    assert_refused(
        "banning another node's address",
        &ch.send(&ban(&aims.other_node.to_string(), "report", "")),
    );
    // Wider than a node may ban (node_widest_v4 = 24).
    assert_refused(
        "a /16 from a node",
        &ch.send(&ban("203.0.0.0/16", "cli", "")),
    );

    // 5: sources only palisade itself uses.
    for source in ["policy", "config", "feed"] {
        assert_refused(
            &format!("a ban claiming source {source}"),
            &ch.send(&ban("203.0.113.67", source, "")),
        );
    }
}

// ---------------------------------------------------------------------------
// Networks.

/// hub 198.18.0.1, web1..3 .2-.4, attacker .5, innocent .6 (and scanner .7
/// where asked), with an echo server on every web host.
struct HubNet {
    lab: Lab,
    hub: Hub,
    agents: Vec<Agent>,
    _tcp: Vec<TcpServer>,
}

impl HubNet {
    fn start(hub_config: &str, agent_configs: [&str; 3], xt_recent: bool) -> HubNet {
        let lab = LabBuilder::new()
            .hosts([
                "hub", "web1", "web2", "web3", "attacker", "innocent", "scanner",
            ])
            .build();
        let webs: Vec<(&str, &str)> = WEBS.into_iter().zip(agent_configs).collect();
        let (hub, agents, tcp) = support::hub_and_agents(&lab, hub_config, &webs, PORT, |host| {
            if xt_recent {
                xt_recent_rule(host);
            }
        });
        HubNet {
            lab,
            hub,
            agents,
            _tcp: tcp,
        }
    }

    fn host(&self, name: &str) -> &Host {
        self.lab.host(name)
    }

    fn addr(&self, name: &str) -> String {
        self.host(name).v4().to_string()
    }

    fn webs(&self) -> Vec<&Host> {
        WEBS.iter().map(|n| self.host(n)).collect()
    }

    /// web1's node credential as the agent keeps it: what a thief takes.
    fn stolen_token(&self) -> String {
        std::fs::read_to_string(self.agents[0].state_dir().join("node.token"))
            .expect("web1 keeps its node token")
            .trim()
            .to_string()
    }

    fn api(&self, token: &str) -> Api<'_> {
        Api::new(self.host("attacker"), &self.hub, &self.addr("hub"), token)
    }

    fn logs(&self) -> String {
        let mut s = format!("--- hub ---\n{}\n", self.hub.log());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", WEBS[i], a.log()));
        }
        s
    }

    /// A marker ban from web2 reaches everyone: the network has settled.
    fn settle(&self, marker: &str) {
        self.agents[1].ok(&["ban", marker, "--for", "1h"]);
        assert!(
            wait_until(SPREAD, || self.webs().iter().all(|h| has_ban(h, marker))),
            "the network did not settle\n{}",
            self.logs()
        );
    }
}

/// A new token: `palisade hub token create ARGS`.
fn token(hub: &Hub, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend(args);
    hub.ok(&all).trim().to_string()
}

/// `palisade hub ARGS` against `hub`, successful or not.
fn hub_cli(hub: &Hub, args: &[&str]) -> Output {
    Command::new(support::BIN)
        .arg("--config")
        .arg(hub.dir.path().join("palisade.toml"))
        .arg("hub")
        .args(args)
        .args(hub.place())
        .output()
        .expect("run palisade hub")
}

/// The hub's active decisions (`/v1/decisions`), with a read token.
fn hub_decisions(api: &Api, action: &str) -> Vec<serde_json::Value> {
    let (status, body) = api.request(&format!("/v1/decisions?action={action}"), None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The tests.

/// Items 1, 2, 3, 5, 6 (actor) and 7 through the hub's HTTPS API with
/// web1's stolen node token; reporter, read and operator credentials;
/// allows that shadow bans instead of destroying them.
#[test]
fn a_stolen_node_token_can_not_turn_the_hub_against_the_network() {
    if !require_root_and(&["nft", "curl", "iptables"]) {
        return;
    }
    let net = HubNet::start(
        "[hub.quorum]\nreport = 2\n[[hub.allow]]\nnet = \"192.0.2.0/24\"\ncomment = \"office\"\n",
        [WITH_XT_RECENT; 3],
        true,
    );
    let webs = net.webs();
    let attacker = net.addr("attacker");
    let canary = Canary::new();
    // What the network holds before the attack: a ban web2 made, an
    // operator's allow, the configured allow, the nodes' own allows.
    let operator = token(&net.hub, &["--role", "operator", "ops"]);
    let ops = Api::new(net.host("hub"), &net.hub, &net.addr("hub"), &operator);
    let v = ops.send(&op("allow", "198.51.100.0/24", r#","comment":"partner""#));
    assert_eq!(v.outcome, "accepted", "{}", v.detail);
    net.agents[1].ok(&["ban", "203.0.113.20", "--for", "1h"]);
    // A reporter (a cron job on web3) reports through the API.
    let reporter = token(&net.hub, &["--role", "reporter", "fail2ban-cron"]);
    let cron = Api::new(net.host("web3"), &net.hub, &net.addr("hub"), &reporter);
    let v = cron.send(&ban("203.0.113.32", "report", ""));
    assert_eq!(v.outcome, "pending", "a reporter's report: {}", v.detail);
    net.settle("203.0.113.1");
    assert!(
        wait_until(SPREAD, || webs
            .iter()
            .all(|h| xt_recent_list(h).contains("203.0.113.20"))),
        "web2's ban is not in every {LIST} list\n{}",
        net.logs()
    );
    let lists_before: Vec<String> = webs.iter().map(|h| xt_recent_list(h)).collect();
    let before = kernels(&webs);

    let thief = net.api(&net.stolen_token());
    stolen_node_attacks(
        &thief,
        &Aims {
            infrastructure: vec![net.host("hub").v4()],
            other_node: net.host("web2").v4(),
            others_ban: "203.0.113.20",
            attacker: net.host("attacker").v4(),
            canary: &canary,
        },
    );
    // 2: the operator's and the configuration's allows stay.
    for target in ["198.51.100.0/24", "192.0.2.0/24"] {
        assert_refused(
            &format!("unallowing {target}"),
            &thief.send(&op("unallow", target, "")),
        );
    }
    // 5: a reporter's claimed `cli` is a report, and waits for the quorum.
    // (The reporter's token was in use on web3 before it was stolen.)
    let rep = net.api(&reporter);
    let v = rep.send(&ban("203.0.113.30", "cli", ""));
    assert_eq!(v.outcome, "pending", "a reporter's cli ban: {}", v.detail);
    assert_refused(
        "a reporter's unban",
        &rep.send(&op("unban", "203.0.113.20", "")),
    );
    assert_refused("a reporter's allow", &rep.send(&op("allow", &attacker, "")));
    // A read token sends nothing.
    let read = net.hub.token("read", "export");
    let (status, body) = net.api(&read).request(
        "/v1/intents",
        Some(&format!("[{}]", envelope(&ban("203.0.113.31", "cli", "")))),
    );
    assert_eq!(status, 403, "a read token sent intents: {body}");

    marker_travels_and_nothing_else_changed(
        &net.agents[1],
        &webs,
        &before,
        "203.0.113.2",
        &[],
        &|| net.logs(),
    );
    canary.assert_untouched();
    for (i, h) in webs.iter().enumerate() {
        let list = xt_recent_list(h);
        assert!(
            list.contains("203.0.113.2 ") || list.contains("src=203.0.113.2 "),
            "{}: the marker is in {LIST}: {list}",
            h.name()
        );
        let old: Vec<&str> = lists_before[i]
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for src in old {
            assert!(list.contains(src), "{}: {src} left {LIST}", h.name());
        }
        for i in 0..canary.names().len() {
            assert!(!list.contains(&listed_target(i)), "{}: {list}", h.name());
        }
    }

    // 7: web1's allow stayed at web1's address, though its token was used
    // from the attacker's.
    let web1 = net.addr("web1");
    assert_allowed(&net.agents[2], &web1, "web1's own allow");
    assert!(
        explain(&net.agents[2], &web1).contains("web1"),
        "{}",
        explain(&net.agents[2], &web1)
    );
    assert_not_allowed(&net.agents[2], &attacker, "the thief's address");

    // 6: what a node does is recorded as the node's, whatever it claims.
    let v = thief.send(&ban(
        "203.0.113.40",
        "cli",
        r#","actor":"dashboard","reason":"admin action""#,
    ));
    assert_eq!(v.outcome, "accepted", "a node's host ban: {}", v.detail);
    let read_api = net.api(&read);
    let bans = hub_decisions(&read_api, "ban");
    let forged = bans
        .iter()
        .find(|d| d["target"] == "203.0.113.40")
        .unwrap_or_else(|| panic!("the node's ban is listed: {bans:?}"));
    assert_eq!(forged["origin"]["node"], "web1", "{forged}");
    assert_eq!(forged["origin"]["actor"], "web1:dashboard", "{forged}");
    // A node lifts the bans it made itself (and only those: above).
    let v = thief.send(&op("unban", "203.0.113.40", ""));
    assert_eq!(
        v.outcome, "accepted",
        "a node's unban of its own ban: {}",
        v.detail
    );
    // Longer than node_longest_ban (7d): refused, or cut to the limit.
    for (target, span) in [("203.0.113.41", "30d"), ("203.0.113.42", "forever")] {
        let v = thief.send(&format!(
            r#"{{"op":"ban","target":"{target}","span":"{span}","source":"cli"}}"#
        ));
        let limit = Timestamp::now().saturating_add(Duration::from_secs(7 * 86400 + 60));
        assert!(
            v.outcome == "refused"
                || (v.outcome == "accepted" && v.expires.is_some_and(|e| e <= limit)),
            "a node's ban for {span}: {}",
            v.detail
        );
    }

    // Allows shadow bans: the operator allows a network holding web2's
    // ban, and revoking the allow brings the ban back everywhere.
    let v = ops.send(&op("allow", "203.0.113.0/24", r#","comment":"partner""#));
    assert_eq!(v.outcome, "accepted", "{}", v.detail);
    assert!(
        wait_until(SPREAD, || webs.iter().all(|h| {
            kernel_elements(h)
                .iter()
                .any(|e| e == "allow4: 203.0.113.0/24")
        })),
        "the operator's allow did not travel\n{}",
        net.logs()
    );
    let v = ops.send(&op("unallow", "203.0.113.0/24", ""));
    assert_eq!(v.outcome, "accepted", "{}", v.detail);
    assert!(
        wait_until(SPREAD, || webs.iter().all(|h| has_ban(h, "203.0.113.20"))),
        "the shadowed ban did not come back when the allow went\n{}",
        net.logs()
    );
    // Allow width is limited like ban width, for operators too.
    for target in ["0.0.0.0/0", "::/0", "10.0.0.0/7"] {
        assert_refused(
            &format!("an operator's allow of {target}"),
            &ops.send(&op("allow", target, "")),
        );
    }

    // A legitimate ban of the attacker still travels, and holds.
    net.agents[1].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || webs
            .iter()
            .all(|h| !reaches(net.host("attacker"), h))),
        "the ban of the attacker did not reach every server\n{}",
        net.logs()
    );
}

/// The roll-up (issue 15) through stolen node and reporter tokens: a
/// network ban named `rollup` or claiming the policy's source is refused
/// like any too-wide ban; distinct fake hosts flooded into the hub's /24
/// or into a network an allow entry covers never roll up; where a flood
/// does roll a network up, the ban is the hub's own and an allowed host
/// inside stays allowed.
#[test]
fn a_stolen_token_can_not_steer_the_roll_up() {
    if !require_root_and(&["nft", "curl"]) {
        return;
    }
    let net = HubNet::start(
        "[rollup]\nhosts = 5\nwindow = \"10m\"\nipv4 = true\n\
         [[hub.allow]]\nnet = \"192.0.2.0/24\"\ncomment = \"office\"\n\
         [[hub.allow]]\nnet = \"203.0.113.200\"\ncomment = \"partner\"\n",
        [""; 3],
        false,
    );
    let webs = net.webs();
    net.settle("203.0.113.250");
    let thief = net.api(&net.stolen_token());
    let reporter = token(&net.hub, &["--role", "reporter", "fail2ban-cron"]);
    let rep = net.api(&reporter);

    // Naming the wider network itself: refused, whatever it claims.
    for (target, source) in [
        ("198.51.0.0/16", "cli"),
        ("198.51.0.0/16", "report"),
        ("198.51.100.0/24", "policy"),
    ] {
        assert_refused(
            &format!("a {source} ban of {target} named rollup"),
            &thief.send(&ban(target, source, r#","rule":"rollup""#)),
        );
    }
    // Fake hosts of the hub's /24: each host is the node's to ban, the
    // network never.
    for i in 100..130 {
        let v = rep.send(&ban(
            &format!("198.18.0.{i}"),
            "report",
            r#","rule":"sshd""#,
        ));
        assert_eq!(v.outcome, "accepted", "{}", v.detail);
    }
    // Fake hosts of a network an allow entry covers: refused one by one.
    for i in 1..=10 {
        assert_refused(
            "a host of an allowed network",
            &thief.send(&ban(&format!("192.0.2.{i}"), "report", "")),
        );
    }
    // Hosts of a network with an allowed host inside: rolled up by the hub.
    for i in 1..=5 {
        let v = thief.send(&ban(
            &format!("203.0.113.{i}"),
            "report",
            r#","rule":"sshd""#,
        ));
        assert_eq!(v.outcome, "accepted", "{}", v.detail);
    }
    assert!(
        wait_until(SPREAD, || webs.iter().all(|h| has_ban(h, "203.0.113.0/24"))),
        "the hub did not roll up 203.0.113.0/24\n{}",
        net.logs()
    );
    net.settle("203.0.113.251");
    for h in &webs {
        for wide in [
            "198.18.0.0/24",
            "192.0.2.0/24",
            "198.51.0.0/16",
            "198.51.100.0/24",
        ] {
            assert!(
                !has_ban(h, wide),
                "{}: {wide} is banned\n{}",
                h.name(),
                net.logs()
            );
        }
        assert!(
            has_ban(h, "198.18.0.129"),
            "{}: the node's host bans hold",
            h.name()
        );
        assert!(
            reaches(net.host("innocent"), h),
            "{}: the hub's /24 is open",
            h.name()
        );
    }
    for agent in &net.agents {
        assert_allowed(
            agent,
            "203.0.113.200",
            "the partner inside the rolled-up /24",
        );
        assert!(explain(agent, "198.18.0.1").contains("ALLOWED"));
    }
    let read = net.hub.token("read", "export");
    let bans = hub_decisions(&net.api(&read), "ban");
    let rolled: Vec<&serde_json::Value> = bans.iter().filter(|d| d["rule"] == "rollup").collect();
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_eq!(rolled[0]["target"], "203.0.113.0/24");
    assert_eq!(rolled[0]["origin"]["source"], "policy", "{}", rolled[0]);
    assert_eq!(rolled[0]["origin"]["node"], "hub", "{}", rolled[0]);
}

/// Item 6: join tokens mint no reserved names, count their uses and
/// expire; a token's role passes to the nodes it mints; reserved names are
/// refused when tokens are made.
#[test]
fn join_tokens_are_limited_and_reserved_names_refused() {
    if !require_root_and(&["nft", "curl"]) {
        return;
    }
    let lab = LabBuilder::new().hosts(["hub", "web1", "attacker"]).build();
    let hub_addr = lab.host("hub").v4().to_string();
    let hub = Hub::start(lab.host("hub"), &format!("{hub_addr}:7470"), "");
    for name in [
        "hub",
        "dashboard",
        "vallumd",
        "policy",
        "config",
        "feed",
        "cli",
        "local",
        "palisade",
    ] {
        let out = hub_cli(&hub, &["token", "create", name]);
        assert!(
            !out.status.success(),
            "a token named {name} was made: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }

    // A single-use token joins one server; taken later, it mints nothing.
    let once = token(&hub, &["--kind", "join", "--uses", "1", "web1-once"]);
    let _tcp = TcpServer::start(lab.host("web1"), PORT);
    let web1 = Agent::join(lab.host("web1"), "", &hub.url(), &once, "web1");
    let join = |token: &str, name: &str| {
        Api::new(lab.host("attacker"), &hub, &hub_addr, token)
            .request("/v1/join", Some(&format!(r#"{{"name":"{name}"}}"#)))
    };
    let (status, body) = join(&once, "thief");
    assert!(status >= 400, "a used-up join token minted: {body}");

    // Reserved names are refused to a join token that would otherwise mint.
    let many = hub.token("join", "many");
    for name in ["dashboard", "hub", "vallumd", "policy", "palisade"] {
        let (status, body) = join(&many, name);
        assert!(
            status >= 400,
            "a join token minted a node named {name}: {body}"
        );
    }
    // An expired join token is refused.
    let brief = token(&hub, &["--kind", "join", "--expires", "1s", "brief"]);
    std::thread::sleep(Duration::from_millis(2500));
    let (status, body) = join(&brief, "late");
    assert!(status >= 400, "an expired join token minted: {body}");

    // A reporter join token mints reporters.
    let reporters = token(&hub, &["--kind", "join", "--role", "reporter", "reporters"]);
    let (status, body) = join(&reporters, "sensor1");
    assert_eq!(status, 200, "{body}");
    let minted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sensor = Api::new(
        lab.host("attacker"),
        &hub,
        &hub_addr,
        minted["token"].as_str().unwrap(),
    );
    assert_refused(
        "a minted reporter's allow",
        &sensor.send(&op("allow", "203.0.113.0/24", "")),
    );
    let v = sensor.send(&ban("203.0.113.9", "report", ""));
    assert_eq!(v.outcome, "accepted", "a reporter's report: {}", v.detail);
    assert!(
        wait_until(SPREAD, || has_ban(lab.host("web1"), "203.0.113.9")),
        "the report did not reach web1\n{}",
        web1.log()
    );
}

/// Item 3 through a feed: a hostile blocklist names the hub, networks
/// around it, the nodes and the whole Internet; only its honest entries
/// are applied. The hub listens on 0.0.0.0, so its host's addresses are
/// what it protects.
#[test]
fn a_hostile_feed_can_not_ban_the_hub_or_the_nodes() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["hub", "feeds", "web1", "web2"])
        .build();
    let hub_addr = lab.host("hub").v4().to_string();
    let web1_addr = lab.host("web1").v4().to_string();
    let addr = SocketAddr::new(lab.host("feeds").v4().into(), 8000);
    let server = FeedServer::start(lab.host("feeds"), addr);
    server.set(format!(
        "{hub_addr}\n198.18.0.0/24\n198.18.0.0/16\n198.0.0.0/8\n0.0.0.0/0\n::/0\n{web1_addr}\n203.0.113.9\n"
    ));
    let hub = Hub::start(
        lab.host("hub"),
        "0.0.0.0:7470",
        &format!(
            "[[feed]]\nname = \"hostile\"\nurl = \"http://{addr}/drop.txt\"\nevery = \"1h\"\n"
        ),
    );
    let url = format!("https://{hub_addr}:7470");
    let join = hub.token("join", "lab");
    let _tcp: Vec<TcpServer> = ["web1", "web2"]
        .iter()
        .map(|n| TcpServer::start(lab.host(n), PORT))
        .collect();
    let agents: Vec<Agent> = ["web1", "web2"]
        .iter()
        .map(|n| Agent::join(lab.host(n), "", &url, &join, n))
        .collect();
    let hosts = [lab.host("web1"), lab.host("web2")];
    let logs = || {
        format!(
            "hub:\n{}\nweb1:\n{}\nweb2:\n{}",
            hub.log(),
            agents[0].log(),
            agents[1].log()
        )
    };
    assert!(
        wait_until(SPREAD, || hosts.iter().all(|h| has_ban(h, "203.0.113.9"))),
        "the feed's honest entry did not travel\n{}",
        logs()
    );
    // The hub's address and the networks around it were refused. web1's
    // address was banned before web1 joined: that ban is only shadowed by
    // web1's allow, and web1 stays reachable.
    let shadowed = format!("block4: {web1_addr}");
    for h in &hosts {
        for e in kernel_elements(h) {
            assert!(
                !e.starts_with("block") || e == "block4: 203.0.113.9" || e == shadowed,
                "{}: the feed banned {e}\n{}",
                h.name(),
                logs()
            );
        }
    }
    assert_allowed(&agents[1], &web1_addr, "web1's address on web2");
    assert!(reaches(lab.host("web2"), lab.host("web1")), "{}", logs());
    for a in &agents {
        assert!(a.ok(&["status"]).contains(": connected"), "{}", logs());
    }
    // And bans still travel.
    agents[0].ok(&["ban", "203.0.113.10", "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || has_ban(lab.host("web2"), "203.0.113.10")),
        "{}",
        logs()
    );
}

/// Item 3 with `palisade up`: the hub's host is protected like any node's,
/// from the other nodes and from a thief holding their token.
#[test]
fn palisade_up_protects_its_own_host() {
    if !require_root_and(&["nft", "curl"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["main", "second", "attacker"])
        .build();
    let (main, second) = (lab.host("main"), lab.host("second"));
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(main, dir.path(), "main");
    let _s1 = TcpServer::start(main, PORT);
    let _s2 = TcpServer::start(second, PORT);
    let other = Agent::join(second, "", &up.url, &up.token, "second");
    let main_addr = main.v4().to_string();
    let logs = || format!("up:\n{}\nsecond:\n{}", up.proc.describe(), other.log());

    // The node asks through its agent, and a thief with its token asks
    // the hub directly: both are refused.
    let _ = other.cli(&["ban", &main_addr, "--for", "1h"]);
    let stolen = std::fs::read_to_string(other.state_dir().join("node.token"))
        .unwrap()
        .trim()
        .to_string();
    let thief = Api {
        from: lab.host("attacker"),
        cert: Up::hub_cert(dir.path()),
        hub: main_addr.clone(),
        token: stolen,
    };
    assert_refused(
        "banning the hub's host",
        &thief.send(&ban(&main_addr, "cli", "")),
    );
    // The operator (the agent inside `palisade up`) still bans, and the ban
    // travels; the hub's host stayed reachable all along.
    let out = support::cli(
        &Up::socket(dir.path()),
        &["ban", "203.0.113.9", "--for", "1h"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(SPREAD, || has_ban(second, "203.0.113.9")),
        "{}",
        logs()
    );
    assert!(!has_ban(second, &main_addr), "{}", logs());
    assert!(reaches(second, main), "{}", logs());
    assert!(other.ok(&["status"]).contains(": connected"), "{}", logs());
}

/// The hub's host (or broker) is allowed on an agent before anything else
/// happens, and an operator on the agent can not lift that allow.
fn assert_infrastructure_allowed(agent: &Agent, addr: &str) {
    assert_allowed(agent, addr, "the address the agent joins");
    let _ = agent.cli(&["unallow", addr]);
    assert_allowed(
        agent,
        addr,
        "the allow of the address the agent joins, after unallow",
    );
}

/// Item 4: forged SYNs (any source address) to a port-probed server ban
/// only there; the hub and nodes are never banned, even there; a honeyport
/// counts only completed handshakes, and real probes seen by two servers
/// still ban network-wide.
#[test]
fn forged_port_probes_stay_on_the_server_that_saw_them() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let probed = "[[source]]\nkind = \"nflog\"\ngroup = 7405\n";
    let decoys = "[[source]]\nkind = \"honeyport\"\nports = [2222, 2323]\n";
    let net = HubNet::start("", [probed, probed, decoys], false);
    let webs = net.webs();
    net.settle("203.0.113.1");
    let before = kernels(&webs);
    let (innocent, web2) = (net.host("innocent").v4(), net.host("web2").v4());
    let closed = [21u16, 23, 25, 110, 3306, 5432];

    // The attacker forges SYNs from an innocent host, the hub and another
    // node, to web1's closed ports and to web3's honeyports.
    for source in [innocent, net.host("hub").v4(), web2] {
        for _ in 0..3 {
            forge_syns(net.host("attacker"), source, net.host("web1").v4(), &closed);
            forge_syns(
                net.host("attacker"),
                source,
                net.host("web3").v4(),
                &[2222, 2323],
            );
        }
    }
    let innocent_s = innocent.to_string();
    assert!(
        wait_until(SPREAD, || has_ban(net.host("web1"), &innocent_s)),
        "web1 did not act on the probes it saw\n{}",
        net.agents[0].log()
    );
    marker_travels_and_nothing_else_changed(
        &net.agents[1],
        &webs,
        &before,
        "203.0.113.2",
        &[vec![format!("block4: {innocent_s}")]],
        &|| net.logs(),
    );
    assert!(reaches(net.host("innocent"), net.host("web2")));
    assert!(reaches(net.host("innocent"), net.host("web3")));
    assert!(net.agents[0].ok(&["status"]).contains(": connected"));

    // A honeyport's completed handshakes are real: network-wide.
    let scanner = net.host("scanner");
    let scanner_s = scanner.v4().to_string();
    assert!(
        wait_until(SPREAD, || {
            for port in [2222u16, 2323] {
                tcp_connect(
                    scanner,
                    SocketAddr::new(net.host("web3").v4().into(), port),
                    Duration::from_millis(300),
                );
            }
            has_ban(net.host("web1"), &scanner_s) && has_ban(net.host("web2"), &scanner_s)
        }),
        "a honeyport's connections did not ban network-wide\n{}",
        net.logs()
    );
    // Real probes seen by two servers (quorum_unverified = 2): network-wide.
    for web in ["web1", "web2"] {
        for port in closed {
            tcp_connect(
                net.host("attacker"),
                SocketAddr::new(net.host(web).v4().into(), port),
                Duration::from_millis(300),
            );
        }
    }
    assert!(
        wait_until(SPREAD, || !reaches(net.host("attacker"), net.host("web3"))),
        "probes confirmed by two servers did not reach web3\n{}",
        net.logs()
    );
    for a in &net.agents {
        assert_infrastructure_allowed(a, &net.addr("hub"));
    }
}

/// Sends one forged TCP SYN per port from `from`'s namespace: an IPv4
/// packet built by hand on a raw socket, with `source` as its sender.
fn forge_syns(from: &Netns, source: Ipv4Addr, dest: Ipv4Addr, ports: &[u16]) {
    let packets: Vec<Vec<u8>> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| syn_packet(source, dest, 40000 + i as u16, *p))
        .collect();
    from.run(move || {
        // SAFETY: a raw socket owned here, closed below; sendto reads the
        // packet and the address for their given lengths.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_addr.s_addr = u32::from(dest).to_be();
            for p in &packets {
                let sent = libc::sendto(
                    fd,
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                    0,
                    &to as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                assert_eq!(
                    sent,
                    p.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    });
}

/// An IPv4 header and a TCP header with only SYN set, checksums included.
fn syn_packet(source: Ipv4Addr, dest: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 40, // version 4, 20-byte header, total length 40
        0x12, 0x34, 0x40, 0, // id, don't fragment
        64, 6, 0, 0, // TTL, TCP, checksum (below)
    ];
    ip.extend(source.octets());
    ip.extend(dest.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut tcp = Vec::with_capacity(20);
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(0x1000_0000u32.wrapping_add(u32::from(dport)).to_be_bytes()); // seq
    tcp.extend(0u32.to_be_bytes()); // ack
    tcp.extend([0x50, 0x02]); // 20-byte header, SYN
    tcp.extend(64240u16.to_be_bytes()); // window
    tcp.extend([0, 0, 0, 0]); // checksum (below), urgent pointer
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend(source.octets());
    pseudo.extend(dest.octets());
    pseudo.extend([0, 6, 0, 20]);
    pseudo.extend(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ip.extend(tcp);
    ip
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The bus tests' network: a broker host, web1..3 (xt_recent lists), an
/// attacker; `node_networks` holds exactly the web hosts.
struct BusNet {
    lab: Lab,
    agents: Vec<Agent>,
    _tcp: Vec<TcpServer>,
}

impl BusNet {
    fn lab() -> Lab {
        LabBuilder::new()
            .hosts(["broker", "hub", "web1", "web2", "web3", "attacker", "web4"])
            .build()
    }

    fn config(lab: &Lab, extra: &str) -> String {
        format!(
            "{extra}[hub]\nnode_networks = [\"{}/32\", \"{}/32\", \"{}/32\", \"{}/32\"]\n",
            lab.host("web1").v4(),
            lab.host("web2").v4(),
            lab.host("web3").v4(),
            lab.host("web4").v4()
        )
    }

    fn join(lab: Lab, url: &str, config: &str) -> BusNet {
        let mut agents = Vec::new();
        let mut tcp = Vec::new();
        for name in WEBS {
            let host = lab.host(name);
            xt_recent_rule(host);
            tcp.push(TcpServer::start(host, PORT));
            agents.push(Agent::join_bus(
                host,
                &format!("{WITH_XT_RECENT}{config}"),
                url,
                name,
            ));
        }
        BusNet {
            lab,
            agents,
            _tcp: tcp,
        }
    }

    fn webs(&self) -> Vec<&Host> {
        WEBS.iter().map(|n| self.lab.host(n)).collect()
    }

    fn addr(&self, name: &str) -> String {
        self.lab.host(name).v4().to_string()
    }

    /// The log of the palisade process that decides (`what`), then the
    /// agents'.
    fn logs(&self, what: &str, log: &str) -> String {
        let mut s = format!("--- {what} ---\n{log}\n");
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", WEBS[i], a.log()));
        }
        s
    }

    /// The nodes' automatic allows are in every kernel, and a marker ban
    /// from web2 reached everyone.
    fn settle(&self, logs: &dyn Fn() -> String) {
        for name in WEBS {
            let addr = self.addr(name);
            assert!(
                wait_until(Duration::from_secs(30), || self
                    .agents
                    .iter()
                    .all(|a| a.ok(&["explain", &addr]).contains("ALLOWED"))),
                "{name}'s address was not allowed automatically\n{}",
                logs()
            );
        }
        self.agents[1].ok(&["ban", "203.0.113.20", "--for", "1h"]);
        assert!(
            wait_until(SPREAD, || self
                .webs()
                .iter()
                .all(|h| has_ban(h, "203.0.113.20"))),
            "the network did not settle\n{}",
            logs()
        );
    }

    /// The stolen-credential attacks on `ch`, then `more` (the attacks
    /// particular to a bus); then a legitimate ban travels, nothing else
    /// changed, and the attacker's declared address was not allowed.
    fn attacked(
        &self,
        ch: &dyn Channel,
        infrastructure: Vec<Ipv4Addr>,
        more: &dyn Fn(),
        logs: &dyn Fn() -> String,
    ) {
        let webs = self.webs();
        let before = kernels(&webs);
        let canary = Canary::new();
        stolen_node_attacks(
            ch,
            &Aims {
                infrastructure,
                other_node: self.lab.host("web2").v4(),
                others_ban: "203.0.113.20",
                attacker: self.lab.host("attacker").v4(),
                canary: &canary,
            },
        );
        more();
        marker_travels_and_nothing_else_changed(
            &self.agents[1],
            &webs,
            &before,
            "203.0.113.2",
            &[],
            logs,
        );
        canary.assert_untouched();
        for h in &webs {
            let list = xt_recent_list(h);
            for i in 0..canary.names().len() {
                assert!(!list.contains(&listed_target(i)), "{}: {list}", h.name());
            }
        }
        let attacker = self.addr("attacker");
        for a in &self.agents {
            assert_not_allowed(a, &attacker, "the thief's declared address");
        }
        self.agents[1].ok(&["ban", &attacker, "--for", "1h"]);
        assert!(
            wait_until(SPREAD, || webs
                .iter()
                .all(|h| !reaches(self.lab.host("attacker"), h))),
            "the ban of the attacker did not travel\n{}",
            logs()
        );
    }
}

impl BusNet {
    /// Item 7 on a bus: a node that joins is allowed before its first
    /// intent is accepted (so nobody can ban it in between). web4 bans as
    /// soon as it starts; when that ban reaches web1, web1 must already
    /// know web4's address as a node's. (Without this, the allow comes
    /// with web4's first heartbeat, seconds later.)
    fn joining_node_is_allowed_before_its_first_intent(
        &self,
        url: &str,
        config: &str,
        logs: &dyn Fn() -> String,
    ) {
        let host = self.lab.host("web4");
        let web4 = Agent::start_bus(host, config, url, "web4");
        web4.ok(&["ban", "203.0.113.99", "--for", "1h"]);
        assert!(
            wait_until(SPREAD, || has_ban(self.lab.host("web1"), "203.0.113.99")),
            "web4's first ban did not travel\nweb4:\n{}\n{}",
            web4.log(),
            logs()
        );
        let addr = host.v4().to_string();
        assert!(
            wait_until(Duration::from_millis(500), || explain(
                &self.agents[0],
                &addr
            )
            .contains("ALLOWED")),
            "web4's first intent was accepted before its address was allowed: {}",
            explain(&self.agents[0], &addr)
        );
    }
}

/// A node's beat declaring the attacker's address as the node's.
fn forged_beat(address: &str) -> String {
    format!(r#"{{"cursor":0,"version":"0.1.0","bans":0,"group":null,"address":"{address}"}}"#)
}

/// Items 1, 2, 3, 5 and 7 on NATS: forged bodies on `palisade.intents.web1`
/// and a forged beat on `palisade.beat.web1`.
#[test]
fn forged_intents_on_nats_are_refused() {
    if !require_root_and(&["nft", "iptables", "/usr/sbin/nats-server"]) {
        return;
    }
    let lab = BusNet::lab();
    let broker = lab.host("broker").v4();
    let _server = NatsServer::start(
        "/usr/sbin/nats-server",
        lab.host("broker"),
        "broker",
        &broker.to_string(),
        &[],
    );
    let url = format!("nats://{broker}:4222");
    let config = BusNet::config(&lab, "");
    let worker = BusHub::nats_worker(lab.host("hub"), &url, &config);
    let net = BusNet::join(lab, &url, &config);
    let logs = || net.logs("worker", &worker.log());
    net.settle(&logs);
    let attacker = net.lab.host("attacker");
    let beat = || {
        nats_publish(
            attacker,
            &url,
            "palisade.beat.web1",
            forged_beat(&attacker.v4().to_string()),
        )
    };
    let ch = NatsIntents {
        from: attacker,
        server: url.clone(),
        subject: "palisade.intents.web1".into(),
    };
    net.attacked(&ch, vec![broker], &beat, &logs);
    net.joining_node_is_allowed_before_its_first_intent(&url, &config, &logs);
    for a in &net.agents {
        assert_infrastructure_allowed(a, &broker.to_string());
    }
}

/// Items 1, 2, 3, 5 and 7 on MQTT: forged bodies on `palisade/intents/web1`,
/// a forged beat, and vallumd messages naming the broker and the hub.
#[test]
fn forged_intents_on_mqtt_are_refused() {
    if !require_root_and(&[
        "nft",
        "iptables",
        "mosquitto",
        "mosquitto_rr",
        "mosquitto_pub",
    ]) {
        return;
    }
    let lab = BusNet::lab();
    let broker = lab.host("broker").v4();
    let hub_addr = lab.host("hub").v4();
    let _broker = Mosquitto::start(lab.host("broker"), &broker.to_string(), &[]);
    let url = format!("mqtt://{broker}:1883");
    let config = BusNet::config(&lab, "[mqtt]\nvallumd_topic = \"vallumd\"\n");
    let hub = BusHub::mqtt_hub(lab.host("hub"), &url, &format!("{hub_addr}:7470"), &config);
    let net = BusNet::join(lab, &url, &config);
    let logs = || net.logs("hub", &hub.log());
    net.settle(&logs);
    let attacker = net.lab.host("attacker");
    let publish = |topic: &str, message: &str| {
        let out = attacker.output(
            "mosquitto_pub",
            &["-h", &broker.to_string(), "-t", topic, "-m", message],
        );
        assert!(out.status.success(), "{out:?}");
    };
    let more = || {
        publish(
            "palisade/beat/web1",
            &forged_beat(&attacker.v4().to_string()),
        );
        // vallumd's topic takes bare addresses: never the broker's or the
        // hub's.
        for target in [
            broker.to_string(),
            hub_addr.to_string(),
            "198.18.0.0/24".into(),
        ] {
            publish("vallumd", &target);
        }
    };
    let ch = MqttIntents {
        from: attacker,
        broker: broker.to_string(),
        topic: "palisade/intents/web1".into(),
    };
    net.attacked(&ch, vec![broker, hub_addr], &more, &logs);
    net.joining_node_is_allowed_before_its_first_intent(&url, &config, &logs);
    for a in &net.agents {
        assert_infrastructure_allowed(a, &broker.to_string());
    }
}

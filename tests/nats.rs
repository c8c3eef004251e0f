//! palisade on NATS JetStream: a 3-server cluster with R3 buckets, two
//! stateless policy workers and agents on their own lab hosts, with
//! Debian's nats-server (2.9: workers purge expired decisions) and a
//! current one (per-key TTL).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_lab::{Lab, LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use support::{Agent, BusHub, NatsServer};

const PORT: u16 = 8080;
const SPREAD: Duration = Duration::from_secs(15);
/// After a server is killed, a 2.9 cluster may take a while to serve new
/// watches (its JetStream leaders move).
const AFTER_KILL: Duration = Duration::from_secs(60);
/// One cluster at a time: two would share two cores with the agents.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const WEBS: [&str; 3] = ["web1", "web2", "web3"];
const CLUSTER: [&str; 3] = ["n1", "n2", "n3"];

/// A 3-server cluster with R3 buckets, two policy workers on two of its
/// servers' hosts, and hosts for agents (`webs`, each serving a TCP port
/// to probe bans with) and for whatever else a test needs.
struct Net {
    lab: Lab,
    servers: Vec<NatsServer>,
    /// Leaf-node servers, for the tests that have them.
    leaves: Vec<NatsServer>,
    workers: Vec<BusHub>,
    /// Agents, in the order of `webs` (the first `agents.len()` of them).
    agents: Vec<Agent>,
    webs: Vec<&'static str>,
    /// The cluster's URL (the workers' join URL).
    url: String,
    config: String,
    _tcp: Vec<TcpServer>,
}

impl Net {
    /// The cluster test's net: agents on web1 and web2 joined to the
    /// cluster itself (web3 joins later).
    fn start(bin: &str) -> Net {
        let mut net = Net::cluster(bin, &["attacker", "attacker2"], &WEBS, "");
        for name in &WEBS[..2] {
            let agent = Agent::join_bus(net.lab.host(name), &net.config, &net.url, name);
            net.agents.push(agent);
        }
        net
    }

    /// The cluster, its workers and the lab's hosts, with no agent yet;
    /// `conf` is a configuration file each cluster server reads besides
    /// its flags.
    fn cluster(bin: &str, others: &[&str], webs: &[&'static str], conf: &str) -> Net {
        let lab = LabBuilder::new()
            .hosts(CLUSTER.iter().chain(others).chain(webs))
            .build();
        let addrs: Vec<String> = CLUSTER
            .iter()
            .map(|h| lab.host(h).v4().to_string())
            .collect();
        let mut servers = Vec::new();
        for (i, h) in CLUSTER.iter().enumerate() {
            let peers: Vec<String> = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .collect();
            servers.push(NatsServer::start_with(
                bin,
                lab.host(h),
                h,
                &addrs[i],
                &peers,
                conf,
            ));
        }
        let url = format!(
            "nats://{}",
            addrs
                .iter()
                .map(|a| format!("{a}:4222"))
                .collect::<Vec<_>>()
                .join(",")
        );
        // Two workers, on two of the servers' hosts; the nodes' addresses
        // are allowed automatically.
        let networks: Vec<String> = webs
            .iter()
            .map(|w| format!("\"{}/32\"", lab.host(w).v4()))
            .collect();
        let config = format!(
            "[nats]\nreplicas = 3\nbucket_prefix = \"lab\"\n[hub]\nnode_networks = [{}]\n",
            networks.join(", ")
        );
        let workers = vec![
            BusHub::nats_worker(lab.host("n1"), &url, &config),
            BusHub::nats_worker(lab.host("n2"), &url, &config),
        ];
        let tcp = webs
            .iter()
            .map(|w| TcpServer::start(lab.host(w), PORT))
            .collect();
        Net {
            lab,
            servers,
            leaves: Vec::new(),
            workers,
            agents: Vec::new(),
            webs: webs.to_vec(),
            url,
            config,
            _tcp: tcp,
        }
    }

    fn reaches(&self, from: &str, web: usize) -> bool {
        let to = SocketAddr::new(IpAddr::V4(self.lab.host(self.webs[web]).v4()), PORT);
        tcp_connect(self.lab.host(from), to, Duration::from_millis(600))
    }

    /// True when every agent in `webs` (indices) blocks `attacker`.
    fn blocked_at(&self, attacker: &str, webs: &[usize]) -> bool {
        webs.iter().all(|&i| !self.reaches(attacker, i))
    }

    fn addr(&self, host: &str) -> String {
        self.lab.host(host).v4().to_string()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, w) in self.workers.iter().enumerate() {
            s.push_str(&format!("--- worker {i} ---\n{}\n", w.log()));
        }
        for (i, l) in self.leaves.iter().enumerate() {
            if let Some(p) = &l.proc {
                s.push_str(&format!("--- leaf node {i} ---\n{}\n", p.describe()));
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", self.webs[i], a.log()));
        }
        s
    }
}

fn cluster_flow(flavour: &str, bin: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = Net::start(bin);
    let attacker = net.addr("attacker");
    let attacker2 = net.addr("attacker2");

    // A ban on web1 reaches web2 through the bucket.
    net.agents[0].ok(&[
        "ban",
        &attacker,
        "--for",
        "1h",
        "--reason",
        "ssh brute force",
    ]);
    assert!(
        wait_until(SPREAD, || !net.reaches("attacker", 0)
            && !net.reaches("attacker", 1)),
        "[{flavour}] the ban did not reach every agent\n{}",
        net.logs()
    );
    let story = net.agents[1].ok(&["explain", &attacker]);
    assert!(story.contains("via cli on web1"), "{story}");

    // One server is killed: bans keep flowing.
    net.servers[0].kill9();
    net.agents[1].ok(&["report", "fail2ban", "sshd", &attacker2]);
    assert!(
        wait_until(AFTER_KILL, || !net.reaches("attacker2", 0)
            && !net.reaches("attacker2", 1)),
        "[{flavour}] with a server down, the report did not reach every agent\n{}",
        net.logs()
    );

    // An agent started late gets the full state.
    let late = Agent::join_bus(net.lab.host("web3"), &net.config, &net.url, "web3");
    net.agents.push(late);
    assert!(
        wait_until(AFTER_KILL, || !net.reaches("attacker", 2)
            && !net.reaches("attacker2", 2)),
        "[{flavour}] the late agent did not get the full state\n{}",
        net.logs()
    );

    // An unban opens everywhere; a node's own address cannot be banned.
    // A node lifts its own ban (another node's unban would be refused:
    // only an operator lifts what others decided).
    net.agents[0].ok(&["unban", &attacker]);
    assert!(
        wait_until(AFTER_KILL, || (0..3).all(|i| net.reaches("attacker", i))),
        "[{flavour}] the unban did not reach every agent\n{}",
        net.logs()
    );
    let web2 = net.addr("web2");
    assert!(
        wait_until(AFTER_KILL, || net.agents[0].ok(&["list"]).contains(&web2)),
        "[{flavour}] web2's address was not allowed automatically\n{}",
        net.logs()
    );
    let out = net.agents[0].cli(&["ban", &web2, "--for", "1h"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("palisade node web2"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        net.reaches("web1", 1),
        "[{flavour}] a node's address was banned"
    );

    // Reported IPv6 hosts of one /64 roll up into the /64 (on by default,
    // at ten): decided by a worker's policy, written to the bucket, on
    // every agent. (A worker's mirror may lag a report behind another
    // worker's write, so reports go on until the /64 is there.)
    let rolled =
        |net: &Net| (0..3).all(|i| net.agents[i].ok(&["list"]).contains("2001:db8:66::/64"));
    for i in 1..=30 {
        net.agents[1].ok(&["report", "fail2ban", "sshd", &format!("2001:db8:66::{i:x}")]);
        if i >= 10 && wait_until(Duration::from_secs(1), || rolled(&net)) {
            break;
        }
    }
    assert!(
        wait_until(AFTER_KILL, || rolled(&net)),
        "[{flavour}] the /64 was not rolled up on every agent\n{}",
        net.logs()
    );
    // Which reported hosts are members depends on which bans the deciding
    // worker's mirror held at that moment (reports go to either worker,
    // and a mirror may lag the other worker's writes after a server was
    // killed); that there are members, and what they were banned for,
    // does not.
    let story = net.agents[2].ok(&["explain", "2001:db8:66::99"]);
    assert!(
        story.contains("rule     rollup")
            && story.contains("members: 2001:db8:66::")
            && story.contains("(fail2ban/sshd, report on web2)"),
        "{story}"
    );

    // Expiry: a short ban leaves every kernel, and the bucket.
    net.agents[0].ok(&["ban", "203.0.113.9", "--for", "3s"]);
    assert!(wait_until(AFTER_KILL, || net.agents[2]
        .ok(&["list"])
        .contains("203.0.113.9")));
    assert!(
        wait_until(Duration::from_secs(30), || {
            !net.agents[2].ok(&["list"]).contains("203.0.113.9")
                && bucket_lacks(&net, "ban.203-0-113-9")
        }),
        "[{flavour}] the expired ban stayed\n{}",
        net.logs()
    );

    // What an agent missed while it was stopped comes as one batch: a ban
    // and its unban made meanwhile cancel there, never enforced one at a
    // time.
    net.agents[2].stop();
    net.agents[0].ok(&["ban", "198.19.7.0/24", "--for", "1h"]);
    net.agents[0].ok(&["unban", "198.19.7.0/24"]);
    net.agents[0].ok(&["ban", "198.19.8.0/24", "--for", "1h"]);
    // All three are in the bucket (web2 has the last) before web3 starts:
    // arriving live, one by one, they would be applied one by one.
    assert!(
        wait_until(AFTER_KILL, || net.agents[1]
            .ok(&["list"])
            .contains("198.19.8.0/24")),
        "[{flavour}] the bans did not spread\n{}",
        net.logs()
    );
    net.agents[2].restart();
    assert!(
        wait_until(AFTER_KILL, || net.agents[2]
            .ok(&["list"])
            .contains("198.19.8.0/24")),
        "[{flavour}] the restarted agent did not catch up\n{}",
        net.logs()
    );
    let log = net.agents[2].log();
    assert!(
        !log.contains("from the network action=ban target=198.19.7.0/24"),
        "[{flavour}] the restarted agent enforced a ban lifted while it was away\n{log}"
    );
}

/// True when the decisions bucket has no live value for `key` (expired by
/// its TTL, or purged by a worker).
fn bucket_lacks(net: &Net, key: &str) -> bool {
    // n1 was killed: ask n2.
    let server = format!("nats://{}:4222", net.addr("n2"));
    let key = key.to_string();
    net.lab.host("n2").run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok(client) = async_nats::connect(server).await else {
                return false;
            };
            let js = async_nats::jetstream::new(client);
            let Ok(kv) = js.get_key_value("lab_decisions").await else {
                return false;
            };
            match kv.entry(key).await {
                Ok(None) => true,
                Ok(Some(e)) => e.operation != async_nats::jetstream::kv::Operation::Put,
                Err(_) => false,
            }
        })
    })
}

#[test]
fn a_nats_cluster_carries_bans_with_debians_server() {
    if !require_root_and(&["nft", "/usr/sbin/nats-server"]) {
        return;
    }
    cluster_flow("debian", "/usr/sbin/nats-server");
}

#[test]
fn a_nats_cluster_carries_bans_with_a_current_server() {
    let bin = support::nats_servers()[1].1.clone();
    if !require_root_and(&["nft", &bin]) {
        return;
    }
    cluster_flow("current", &bin);
}

/// The agents of the leaf-node test: two sites, each behind its own leaf
/// node (`west3` joins late).
const SITE_WEBS: [&str; 5] = ["east1", "east2", "west1", "west2", "west3"];
const EAST: [usize; 2] = [0, 1];
const WEST: [usize; 2] = [2, 3];
const LEAVES: [&str; 2] = ["leaf-east", "leaf-west"];
/// Leaf connections are pinged often, so that a cut uplink is noticed in
/// seconds on both ends (until the cluster's end notices, it refuses the
/// leaf node's new connection as a duplicate). The default, two minutes
/// twice, would make the test wait minutes.
const LEAF_PINGS: &str = "ping_interval: \"2s\"\nping_max: 3\n";
/// An agent that stayed connected to its leaf node while the leaf node's
/// uplink was cut learns of what it missed from the workers' next head
/// announcement once the uplink is back (the leaf node reconnects within
/// seconds; heads come every 10 s; agents wait up to 3 s more, spread).
const CATCH_UP: Duration = Duration::from_secs(40);
/// Drops a leaf node's traffic to and from the cluster (its uplink), in
/// the leaf node's namespace; the agents of its site still reach it.
const UPLINK_CUT: &str = "lab_uplink_cut";
/// The cluster's JetStream domain: a leaf node's clients address the
/// cluster's JetStream as `$JS.<domain>.API.…` (a server passes plain
/// `$JS.API.…` requests over a leaf connection only when both share a
/// system account).
const DOMAIN: &str = "lab-cluster";

/// The leaf-node layout: agents of a site connect to their site's leaf
/// node only; leaf nodes (no JetStream of their own) connect to a 3-server
/// cluster holding the R3 buckets, where the workers run. The agents'
/// JetStream requests (stream info, direct gets), addressed to the
/// cluster's domain (`jetstream_domain`), and the republished changes
/// cross the leaf connection; agents have the permissions
/// `agent_permissions` lists, given on the leaf nodes.
fn leaf_flow(flavour: &str, bin: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let attackers = [
        "attacker",
        "attacker2",
        "attacker3",
        "attacker4",
        "attacker5",
    ];
    let others: Vec<&str> = LEAVES.iter().chain(&attackers).copied().collect();
    let mut net = Net::cluster(
        bin,
        &others,
        &SITE_WEBS,
        &format!("{LEAF_PINGS}leafnodes {{ port: 7422 }}\njetstream {{ domain: {DOMAIN} }}\n"),
    );
    // Both leaf nodes try the cluster's servers in order (no_randomize),
    // so that killing n1 below takes both uplinks down; deployments let
    // the order be random.
    let remotes: Vec<String> = CLUSTER
        .iter()
        .map(|h| format!("\"nats-leaf://{}:7422\"", net.addr(h)))
        .collect();
    for leaf in LEAVES {
        let conf = format!(
            "server_name: {leaf}\nlisten: \"{}:4222\"\n{LEAF_PINGS}authorization {{ users = [ {{ user: agent, password: ag3nt, {} }} ] }}\nleafnodes {{ remotes = [ {{ urls: [{}], no_randomize: true }} ] }}\n",
            net.addr(leaf),
            agent_permissions("lab_decisions", &format!("$JS.{DOMAIN}.API")),
            remotes.join(", ")
        );
        let server = NatsServer::without_jetstream(bin, net.lab.host(leaf), &conf);
        net.leaves.push(server);
    }
    // The agents name the cluster's domain; the workers, on the cluster,
    // need not.
    let site_config = net.config.replacen(
        "[nats]\n",
        &format!("[nats]\njetstream_domain = \"{DOMAIN}\"\n"),
        1,
    );
    let site_url = |net: &Net, web: usize| {
        let leaf = if web < 2 { LEAVES[0] } else { LEAVES[1] };
        format!("nats://agent:ag3nt@{}:4222", net.addr(leaf))
    };
    for web in EAST.iter().chain(&WEST) {
        let name = SITE_WEBS[*web];
        let url = site_url(&net, *web);
        let agent = Agent::join_bus(net.lab.host(name), &site_config, &url, name);
        net.agents.push(agent);
    }
    let both_sites: Vec<usize> = EAST.iter().chain(&WEST).copied().collect();
    let attacker: Vec<String> = attackers.iter().map(|a| net.addr(a)).collect();

    // A ban made at one site reaches the agents of both.
    net.agents[0].ok(&["ban", &attacker[0], "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || net.blocked_at("attacker", &both_sites)),
        "[{flavour}] the ban did not reach both sites\n{}",
        net.logs()
    );
    let story = net.agents[2].ok(&["explain", &attacker[0]]);
    assert!(story.contains("via cli on east1"), "{story}");

    // The cluster server both leaf nodes are connected to is killed: they
    // connect to another, and bans keep arriving at both sites.
    net.servers[0].kill9();
    net.agents[3].ok(&["report", "fail2ban", "sshd", &attacker[1]]);
    assert!(
        wait_until(AFTER_KILL, || net.blocked_at("attacker2", &both_sites)),
        "[{flavour}] with a cluster server down, the report did not reach both sites\n{}",
        net.logs()
    );

    // The east site's uplink is cut while the west site bans: the east
    // agents cannot hear of it.
    cut_uplink(&net, LEAVES[0], true);
    std::thread::sleep(Duration::from_secs(10));
    net.agents[2].ok(&["ban", &attacker[2], "--for", "1h"]);
    net.agents[3].ok(&["report", "fail2ban", "sshd", &attacker[3]]);
    assert!(
        wait_until(AFTER_KILL, || net.blocked_at("attacker3", &WEST)
            && net.blocked_at("attacker4", &WEST)),
        "[{flavour}] with the east uplink cut, the west site did not get its bans\n{}",
        net.logs()
    );
    assert!(
        EAST.iter()
            .all(|&i| net.reaches("attacker3", i) && net.reaches("attacker4", i)),
        "[{flavour}] the east site heard of bans through a cut uplink\n{}",
        net.logs()
    );

    // The uplink is back: the east agents catch up on what they missed,
    // with no new change to tell them, and live bans arrive again.
    cut_uplink(&net, LEAVES[0], false);
    assert!(
        wait_until(CATCH_UP, || net.blocked_at("attacker3", &EAST)
            && net.blocked_at("attacker4", &EAST)),
        "[{flavour}] the east site did not catch up after its uplink came back\n{}",
        net.logs()
    );
    net.agents[1].ok(&["ban", &attacker[4], "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || net.blocked_at("attacker5", &both_sites)),
        "[{flavour}] after the uplink came back, a live ban did not reach both sites\n{}",
        net.logs()
    );

    // An agent joining a site late gets the full state through its leaf
    // node.
    let url = site_url(&net, 4);
    let late = Agent::join_bus(net.lab.host(SITE_WEBS[4]), &site_config, &url, SITE_WEBS[4]);
    net.agents.push(late);
    assert!(
        wait_until(AFTER_KILL, || attackers
            .iter()
            .all(|a| net.blocked_at(a, &[4]))),
        "[{flavour}] the late agent did not get the full state\n{}",
        net.logs()
    );
}

/// Cuts (or restores) `leaf`'s traffic to and from the cluster's servers,
/// in the leaf node's own namespace: packets are dropped, as on a failed
/// WAN link, so the connection dies by its pings.
fn cut_uplink(net: &Net, leaf: &str, cut: bool) {
    let host = net.lab.host(leaf);
    if !cut {
        host.exec("nft", &["delete", "table", "inet", UPLINK_CUT]);
        return;
    }
    let cluster: Vec<String> = CLUSTER.iter().map(|h| net.addr(h)).collect();
    let set = cluster.join(", ");
    let rules = format!(
        "table inet {UPLINK_CUT} {{\n  chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n  chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n}}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cut.nft");
    std::fs::write(&file, rules).unwrap();
    host.exec("nft", &["-f", &file.display().to_string()]);
}

#[test]
fn leaf_nodes_carry_bans_to_their_sites_with_debians_server() {
    if !require_root_and(&["nft", "/usr/sbin/nats-server"]) {
        return;
    }
    leaf_flow("debian", "/usr/sbin/nats-server");
}

#[test]
fn leaf_nodes_carry_bans_to_their_sites_with_a_current_server() {
    let bin = support::nats_servers()[1].1.clone();
    if !require_root_and(&["nft", &bin]) {
        return;
    }
    leaf_flow("current", &bin);
}

#[test]
fn nats_with_tls_a_password_and_an_nkey() {
    if !require_root_and(&["nft", "openssl", "/usr/sbin/nats-server"]) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LabBuilder::new()
        .hosts(["nats", "web1", "web2", "attacker"])
        .build();
    let ip = lab.host("nats").v4().to_string();
    let (certs, ca, cert, key) = support::lab_certificates(&ip);
    let nkey = nkeys::KeyPair::new_user();
    let seed_file = certs.path().join("web1.nk");
    std::fs::write(&seed_file, nkey.seed().unwrap()).unwrap();
    let _server = NatsServer::with_config(
        "/usr/sbin/nats-server",
        lab.host("nats"),
        &format!(
            "listen: \"{ip}:4222\"\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ users = [ {{ user: palisade, password: s3cret }}, {{ nkey: {} }} ] }}\n",
            cert.display(),
            key.display(),
            nkey.public_key()
        ),
    );
    let url = format!("tls://{ip}:4222");
    let password = format!(
        "[nats]\nuser = \"palisade\"\npassword = \"s3cret\"\nca = \"{}\"\n",
        ca.display()
    );
    let with_nkey = format!(
        "[nats]\nnkey_seed_file = \"{}\"\nca = \"{}\"\n",
        seed_file.display(),
        ca.display()
    );
    let worker = BusHub::nats_worker(lab.host("nats"), &url, &password);
    let _tcp: Vec<TcpServer> = ["web1", "web2"]
        .iter()
        .map(|h| TcpServer::start(lab.host(h), PORT))
        .collect();
    let web1 = Agent::join_bus(lab.host("web1"), &with_nkey, &url, "web1");
    // The password in the address this time.
    let web2 = Agent::join_bus(
        lab.host("web2"),
        &format!("[nats]\nca = \"{}\"\n", ca.display()),
        &format!("tls://palisade:s3cret@{ip}:4222"),
        "web2",
    );
    let attacker = lab.host("attacker").v4().to_string();
    web1.ok(&["ban", &attacker, "--for", "1h"]);
    let to = SocketAddr::new(IpAddr::V4(lab.host("web2").v4()), PORT);
    assert!(
        wait_until(SPREAD, || !tcp_connect(
            lab.host("attacker"),
            to,
            Duration::from_millis(600)
        )),
        "the ban did not cross TLS\nworker:\n{}\nweb1:\n{}\nweb2:\n{}",
        worker.log(),
        web1.log(),
        web2.log()
    );
    // Without the CA, the server's certificate is not trusted.
    let stranger = Agent::start_bus(lab.host("attacker"), "", &url, "stranger");
    std::thread::sleep(Duration::from_secs(3));
    assert!(stranger.ok(&["status"]).contains("NOT CONNECTED"));
}

/// What an agent's NATS user needs, as a nats-server `permissions` block:
/// it may ask the workers, read the decisions bucket and its snapshot with
/// direct gets and hear the changes and the workers' heads; nothing else.
/// `api` is the JetStream API prefix the agents use (`$JS.API`, or
/// `$JS.<domain>.API` with `jetstream_domain`).
fn agent_permissions(bucket: &str, api: &str) -> String {
    format!(
        "permissions: {{ publish: {{ allow: [\"palisade.intents.*\", \"palisade.beat.*\", \"{api}.STREAM.INFO.KV_{bucket}\", \"{api}.DIRECT.GET.KV_{bucket}\", \"{api}.DIRECT.GET.SNAP_{bucket}\"] }}, subscribe: {{ allow: [\"palisade.changes.>\", \"palisade.head\", \"_INBOX.>\"] }} }}"
    )
}

/// A message to publish: subject, headers, body.
type Forged = (String, Vec<(&'static str, String)>, String);

/// Publishes `body` with `headers` on `subject` as NATS user `user`, from
/// `from`; true when the server accepted the connection (a publish the
/// user may not make is dropped by the server, which says so only to the
/// publisher).
fn forge(
    from: &palisade_lab::Host,
    server: &str,
    (user, password): (&str, &str),
    messages: Vec<Forged>,
) {
    let server = format!("nats://{server}:4222");
    let (user, password) = (user.to_string(), password.to_string());
    from.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::ConnectOptions::with_user_and_password(user, password)
                .connect(server)
                .await
                .expect("connect to NATS");
            for (subject, headers, body) in messages {
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in headers {
                    h.insert(k, v.as_str());
                }
                let _ = client.publish_with_headers(subject, h, body.into()).await;
            }
            let _ = client.flush().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
    });
}

/// A forged decision change in the republished form: what an agent would
/// apply if it trusted the fan-out subject.
fn forged_change(bucket: &str, key: &str, seq: u64, delete: bool, body: String) -> Forged {
    let mut headers = vec![
        ("Nats-Stream", format!("KV_{bucket}")),
        ("Nats-Subject", format!("$KV.{bucket}.{key}")),
        ("Nats-Sequence", seq.to_string()),
        ("Nats-Last-Sequence", seq.saturating_sub(1).to_string()),
    ];
    if delete {
        headers.push(("KV-Operation", "DEL".into()));
    }
    (format!("palisade.changes.{key}"), headers, body)
}

/// The fan-out subject and the snapshot accept nothing from a client:
/// agents' NATS users may not publish there (the server republishes the
/// changes itself; no user needs to), and what a careless deployment lets
/// through is checked against the bucket: a change announced past the
/// bucket's end is read from the bucket instead of believed, as is a
/// workers' head announcement, and a snapshot claiming a revision the
/// bucket has not reached is refused.
/// Neither forged bans nor forged unbans change what any agent enforces,
/// a real ban still arrives afterwards, and a late agent gets the true
/// state.
#[test]
fn forged_changes_snapshots_and_sequences_change_nothing() {
    if !require_root_and(&["nft", "/usr/sbin/nats-server"]) {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LabBuilder::new()
        .hosts([
            "nats",
            "web1",
            "web2",
            "web3",
            "attacker",
            "attacker2",
            "mallory",
        ])
        .build();
    let ip = lab.host("nats").v4().to_string();
    let bucket = "lab_decisions";
    let agent_permissions = agent_permissions(bucket, "$JS.API");
    // A node user written before the workers announced their head: it may
    // not follow `palisade.head`, and its agent still follows the changes.
    let older_permissions = agent_permissions.replace(", \"palisade.head\"", "");
    assert_ne!(older_permissions, agent_permissions);
    let _server = NatsServer::with_config(
        "/usr/sbin/nats-server",
        lab.host("nats"),
        &format!(
            "listen: \"{ip}:4222\"\nauthorization {{ users = [ {{ user: worker, password: w0rker, permissions: {{ publish: {{ deny: [\"palisade.changes.>\"] }} }} }}, {{ user: agent, password: ag3nt, {agent_permissions} }}, {{ user: older, password: 0lder, {older_permissions} }}, {{ user: careless, password: c4reless }} ] }}\n"
        ),
    );
    let config = format!(
        "[nats]\nbucket_prefix = \"lab\"\n[hub]\nnode_networks = [\"{}/32\", \"{}/32\", \"{}/32\"]\n",
        lab.host("web1").v4(),
        lab.host("web2").v4(),
        lab.host("web3").v4()
    );
    let worker = BusHub::nats_worker(
        lab.host("nats"),
        &format!("nats://worker:w0rker@{ip}:4222"),
        &config,
    );
    let url = format!("nats://agent:ag3nt@{ip}:4222");
    let _tcp: Vec<TcpServer> = WEBS
        .iter()
        .map(|h| TcpServer::start(lab.host(h), PORT))
        .collect();
    let mut agents = vec![
        Agent::join_bus(lab.host("web1"), &config, &url, "web1"),
        Agent::join_bus(lab.host("web2"), &config, &url, "web2"),
    ];
    let reaches = |from: &str, web: usize| {
        let to = SocketAddr::new(IpAddr::V4(lab.host(WEBS[web]).v4()), PORT);
        tcp_connect(lab.host(from), to, Duration::from_millis(600))
    };
    let logs = |agents: &[Agent]| {
        let mut s = format!("--- worker ---\n{}\n", worker.log());
        for (i, a) in agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", WEBS[i], a.log()));
        }
        s
    };
    let attacker = lab.host("attacker").v4().to_string();
    agents[0].ok(&["ban", &attacker, "--for", "1h"]);
    assert!(
        wait_until(SPREAD, || !reaches("attacker", 1)),
        "the real ban did not arrive\n{}",
        logs(&agents)
    );

    // Forgeries: a ban of web1's own address, and an unban of the real
    // ban, at every sequence an agent could be expecting; a snapshot
    // holding the forged ban.
    let web1 = lab.host("web1").v4();
    // A well-formed decision, so that only the checks on where it came
    // from can stop it.
    let forged_ban = |target: &str| {
        let d = palisade_model::Decision::new(
            palisade_model::Action::Ban,
            target.parse().unwrap(),
            palisade_model::Timestamp::now(),
            "1h".parse().unwrap(),
            palisade_model::Origin::new("web1", palisade_model::Source::Cli),
        );
        serde_json::to_string(&d).unwrap()
    };
    let ban_key = |addr: &str| format!("ban.{}", addr.replace('.', "-"));
    let mut forgeries = Vec::new();
    for seq in 1..=40 {
        forgeries.push(forged_change(
            bucket,
            &ban_key(&web1.to_string()),
            seq,
            false,
            forged_ban(&web1.to_string()),
        ));
        forgeries.push(forged_change(
            bucket,
            &ban_key(&attacker),
            seq,
            true,
            String::new(),
        ));
    }
    let head = serde_json::json!({
        "rev": 1_000_000_000u64, "writer": "evil", "parts": 1, "decisions": 1,
        "written": 4_000_000_000_000u64,
    })
    .to_string();
    let part = serde_json::json!({
        "rev": 1_000_000_000u64, "writer": "evil", "index": 0,
        "entries": [[ban_key(&web1.to_string()), serde_json::from_str::<serde_json::Value>(&forged_ban(&web1.to_string())).unwrap()]],
    })
    .to_string();
    let snapshot = vec![
        ("palisade.snapshot.part.evil.0".to_string(), vec![], part),
        ("palisade.snapshot.head".to_string(), vec![], head),
    ];
    // Head announcements far past the bucket's end, and one that is no
    // number: an agent reads the bucket (and finds nothing) or ignores it.
    let heads = vec![
        (
            "palisade.head".to_string(),
            vec![],
            "1000000002".to_string(),
        ),
        (
            "palisade.head".to_string(),
            vec![],
            "all of them".to_string(),
        ),
    ];
    // With a node's stolen credentials: the server drops all of it.
    let mut all = forgeries.clone();
    all.extend(snapshot.clone());
    all.extend(heads.clone());
    forge(lab.host("mallory"), &ip, ("agent", "ag3nt"), all);
    // Where a deployment let a client publish there anyway: a change
    // announced far past the bucket's end, and the snapshot.
    let mut lies = vec![forged_change(
        bucket,
        &ban_key(&web1.to_string()),
        1_000_000_000,
        false,
        forged_ban(&web1.to_string()),
    )];
    lies.push(forged_change(
        bucket,
        &ban_key(&attacker),
        1_000_000_001,
        true,
        String::new(),
    ));
    lies.extend(snapshot);
    lies.extend(heads.clone());
    forge(lab.host("mallory"), &ip, ("careless", "c4reless"), lies);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        reaches("web1", 1) && !reaches("attacker", 1) && !reaches("attacker", 0),
        "a forgery changed what an agent enforces\n{}",
        logs(&agents)
    );

    // A real ban still arrives: no agent's position was moved by a lie.
    // And at once: a forged head makes an agent wait (up to 3 s, spread)
    // before it reads the bucket, but it never holds up the live changes
    // meanwhile. Forged again once agents act on heads again (at most
    // every 5 s), just before the ban.
    std::thread::sleep(Duration::from_secs(3));
    forge(lab.host("mallory"), &ip, ("careless", "c4reless"), heads);
    let attacker2 = lab.host("attacker2").v4().to_string();
    agents[0].ok(&["ban", &attacker2, "--for", "1h"]);
    assert!(
        wait_until(Duration::from_millis(1500), || !reaches("attacker2", 1)),
        "a real ban was held up after forged heads\n{}",
        logs(&agents)
    );
    // A late agent joins past the forged snapshot with the true state (as
    // a node user that may not follow the workers' head).
    agents.push(Agent::join_bus(
        lab.host("web3"),
        &config,
        &format!("nats://older:0lder@{ip}:4222"),
        "web3",
    ));
    assert!(
        wait_until(SPREAD, || !reaches("attacker", 2)
            && !reaches("attacker2", 2)),
        "the late agent did not get the true state\n{}",
        logs(&agents)
    );
    assert!(
        reaches("web1", 2),
        "the late agent took the forged snapshot\n{}",
        logs(&agents)
    );
    // The worker replaces the lying snapshot with a true one.
    assert!(
        wait_until(SPREAD, || worker
            .log()
            .contains("claims a revision the bucket has not reached")),
        "the forged snapshot was not noticed\n{}",
        logs(&agents)
    );
    // Live changes reach the agent whose user may not follow the head.
    agents[0].ok(&["unban", &attacker2]);
    assert!(
        wait_until(SPREAD, || reaches("attacker2", 2)),
        "a live change did not reach the agent without the head permission\n{}",
        logs(&agents)
    );
}

//! palisade on an MQTT broker (mosquitto): retained decisions for late
//! subscribers, message expiry, reports through the hub, and vallumd's
//! bare-address topic.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_lab::{Lab, LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use support::{Agent, BusHub, Mosquitto};

const PORT: u16 = 8080;
const SPREAD: Duration = Duration::from_secs(15);
const WEBS: [&str; 3] = ["web1", "web2", "web3"];

struct Net {
    lab: Lab,
    _broker: Mosquitto,
    hub: BusHub,
    agents: Vec<Agent>,
    _tcp: Vec<TcpServer>,
}

impl Net {
    fn reaches(&self, from: &str, web: usize) -> bool {
        let to = SocketAddr::new(IpAddr::V4(self.lab.host(WEBS[web]).v4()), PORT);
        tcp_connect(self.lab.host(from), to, Duration::from_millis(600))
    }

    fn addr(&self, host: &str) -> String {
        self.lab.host(host).v4().to_string()
    }

    fn logs(&self) -> String {
        let mut s = format!("--- hub ---\n{}\n", self.hub.log());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- {} ---\n{}\n", WEBS[i], a.log()));
        }
        s
    }

    /// The retained decision topics the broker holds.
    fn retained(&self) -> String {
        let broker = self.addr("broker");
        let out = self.lab.host("broker").output(
            "mosquitto_sub",
            &[
                "-h",
                &broker,
                "-u",
                "palisade",
                "-P",
                "s3cret",
                "-t",
                "palisade/decisions/#",
                "--retained-only",
                "-W",
                "2",
                "-v",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn an_mqtt_broker_carries_bans_retained_state_expiry_and_vallumd_topics() {
    if !require_root_and(&[
        "nft",
        "mosquitto",
        "mosquitto_pub",
        "mosquitto_sub",
        "mosquitto_passwd",
    ]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts([
            "broker",
            "hub",
            "web1",
            "web2",
            "web3",
            "attacker",
            "attacker2",
        ])
        .build();
    let broker_addr = lab.host("broker").v4().to_string();
    let broker = Mosquitto::start(lab.host("broker"), &broker_addr, &[("palisade", "s3cret")]);
    let url = format!("mqtt://palisade:s3cret@{broker_addr}:1883");
    let config = format!(
        "[mqtt]\nvallumd_topic = \"vallumd\"\nvallumd_ban = \"2h\"\n[hub]\nnode_networks = [\"{}/32\", \"{}/32\", \"{}/32\"]\n",
        lab.host("web1").v4(),
        lab.host("web2").v4(),
        lab.host("web3").v4()
    );
    let hub = BusHub::mqtt_hub(
        lab.host("hub"),
        &url,
        &format!("{}:7470", lab.host("hub").v4()),
        &config,
    );
    let mut tcp = Vec::new();
    let mut agents = Vec::new();
    for name in &WEBS[..2] {
        tcp.push(TcpServer::start(lab.host(name), PORT));
        agents.push(Agent::join_bus(lab.host(name), &config, &url, name));
    }
    tcp.push(TcpServer::start(lab.host("web3"), PORT));
    let mut net = Net {
        lab,
        _broker: broker,
        hub,
        agents,
        _tcp: tcp,
    };
    let attacker = net.addr("attacker");
    let attacker2 = net.addr("attacker2");

    // A ban on web1 reaches web2 through the hub and the broker.
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
        "the ban did not reach every agent\n{}",
        net.logs()
    );
    let story = net.agents[1].ok(&["explain", &attacker]);
    assert!(story.contains("via cli on web1"), "{story}");
    assert!(
        net.retained()
            .contains("palisade/decisions/ban.198-18-0-6 {"),
        "{}",
        net.retained()
    );

    // vallumd style: a bare address on the topic bans it everywhere.
    let out = net.lab.host("broker").output(
        "mosquitto_pub",
        &[
            "-h",
            &broker_addr,
            "-u",
            "palisade",
            "-P",
            "s3cret",
            "-t",
            "vallumd",
            "-m",
            &attacker2,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(SPREAD, || !net.reaches("attacker2", 0)
            && !net.reaches("attacker2", 1)),
        "the vallumd message did not ban everywhere\n{}",
        net.logs()
    );
    let story = net.agents[0].ok(&["explain", &attacker2]);
    assert!(story.contains("vallumd"), "{story}");

    // A late subscriber gets the retained state.
    net.agents
        .push(Agent::join_bus(net.lab.host("web3"), &config, &url, "web3"));
    assert!(
        wait_until(SPREAD, || !net.reaches("attacker", 2)
            && !net.reaches("attacker2", 2)),
        "the late agent did not get the retained state\n{}",
        net.logs()
    );

    // An unban clears the retained message and opens everywhere.
    // A node lifts its own ban (another node's unban would be refused:
    // only an operator lifts what others decided).
    net.agents[0].ok(&["unban", &attacker]);
    assert!(
        wait_until(SPREAD, || (0..3).all(|i| net.reaches("attacker", i))),
        "the unban did not reach every agent\n{}",
        net.logs()
    );
    assert!(
        !net.retained().contains("ban.198-18-0-6 "),
        "{}",
        net.retained()
    );

    // Nodes' declared addresses are allowed (they lie in node_networks).
    let web2 = net.addr("web2");
    assert!(
        wait_until(Duration::from_secs(30), || net.agents[0]
            .ok(&["list"])
            .contains(&web2)),
        "web2's address was not allowed\n{}",
        net.logs()
    );

    // Expiry: the broker drops the retained message when the ban expires.
    net.agents[0].ok(&["ban", "203.0.113.9", "--for", "3s"]);
    assert!(wait_until(SPREAD, || net
        .retained()
        .contains("ban.203-0-113-9 ")));
    assert!(wait_until(SPREAD, || net.agents[2]
        .ok(&["list"])
        .contains("203.0.113.9")));
    assert!(
        wait_until(Duration::from_secs(20), || !net
            .retained()
            .contains("ban.203-0-113-9 ")
            && !net.agents[2].ok(&["list"]).contains("203.0.113.9")),
        "the expired ban stayed\n{}",
        net.retained()
    );

    // A wrong password is refused.
    let bad = format!("mqtt://palisade:wrong@{broker_addr}:1883");
    net.agents.pop().unwrap().stop();
    let late = Agent::start_bus(net.lab.host("web3"), "", &bad, "web3-bad");
    std::thread::sleep(Duration::from_secs(3));
    let status = late.ok(&["status"]);
    assert!(status.contains("NOT CONNECTED"), "{status}");
}

#[test]
fn mqtts_with_a_private_ca() {
    if !require_root_and(&["nft", "mosquitto", "mosquitto_passwd", "openssl"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["broker", "hub", "web1", "web2", "attacker"])
        .build();
    let ip = lab.host("broker").v4().to_string();
    let (certs, ca, cert, key) = support::lab_certificates(&ip);
    let passwords = certs.path().join("passwords");
    let out = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["palisade", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _ = std::process::Command::new("chmod")
        .args(["a+r"])
        .arg(&passwords)
        .status();
    let _broker = Mosquitto::with_config(
        lab.host("broker"),
        &format!(
            "listener 8883 {ip}\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\npersistence false\nset_tcp_nodelay true\n",
            ca.display(),
            cert.display(),
            key.display(),
            passwords.display()
        ),
    );
    let url = format!("mqtts://{ip}:8883");
    let config = format!(
        "[mqtt]\nusername = \"palisade\"\npassword = \"s3cret\"\nca = \"{}\"\n",
        ca.display()
    );
    let hub = BusHub::mqtt_hub(
        lab.host("hub"),
        &url,
        &format!("{}:7470", lab.host("hub").v4()),
        &config,
    );
    let _tcp: Vec<TcpServer> = ["web1", "web2"]
        .iter()
        .map(|h| TcpServer::start(lab.host(h), PORT))
        .collect();
    let web1 = Agent::join_bus(lab.host("web1"), &config, &url, "web1");
    let web2 = Agent::join_bus(lab.host("web2"), &config, &url, "web2");
    let attacker = lab.host("attacker").v4().to_string();
    web1.ok(&["ban", &attacker, "--for", "1h"]);
    let to = SocketAddr::new(IpAddr::V4(lab.host("web2").v4()), PORT);
    assert!(
        wait_until(SPREAD, || !tcp_connect(
            lab.host("attacker"),
            to,
            Duration::from_millis(600)
        )),
        "the ban did not cross TLS\nhub:\n{}\nweb1:\n{}\nweb2:\n{}",
        hub.log(),
        web1.log(),
        web2.log()
    );
}

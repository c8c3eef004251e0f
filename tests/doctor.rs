//! `palisade doctor` on a healthy agent and on broken ones, in a lab: each
//! problem is named, and the exit status says whether anything needs fixing.

mod support;

use std::process::Output;

use palisade_lab::{Lab, Netns, require_root_and};
use support::{Agent, BIN, Hub};

const CONFIG: &str = "[detect]\ndetect_sources = false\n";

/// `palisade doctor --json` in `ns`, with the agent's paths.
fn doctor(
    ns: &Netns,
    config: &std::path::Path,
    agent: Option<&Agent>,
) -> (Output, serde_json::Value) {
    let mut cmd = ns.command(BIN);
    cmd.arg("--config").arg(config);
    if let Some(a) = agent {
        cmd.arg("--socket")
            .arg(a.socket())
            .arg("doctor")
            .arg("--state-dir")
            .arg(a.state_dir());
    } else {
        cmd.arg("doctor");
    }
    let out = cmd
        .arg("--json")
        .env_remove("PALISADE_CONFIG")
        .output()
        .expect("run palisade doctor");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// The check named `name`: (status, message).
fn check(report: &serde_json::Value, name: &str) -> (String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"));
    (
        c["status"].as_str().unwrap().to_string(),
        c["message"].as_str().unwrap().to_string(),
    )
}

fn secure(agent: &Agent) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_healthy_agent_passes_and_a_missing_table_or_a_foreign_drop_first_is_named() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let lab = Lab::new();
    let host = lab.victim();
    let mut agent = Agent::start(host, CONFIG);
    secure(&agent);

    let (out, report) = doctor(host, &agent.config_path(), Some(&agent));
    assert_eq!(out.status.code(), Some(0), "a healthy agent: {report:#}");
    assert_eq!(report["healthy"], true);
    assert_eq!(check(&report, "agent").0, "ok");
    assert_eq!(check(&report, "table").0, "ok");
    let (status, message) = check(&report, "probe");
    assert_eq!(status, "ok", "{message}");

    // Another table drops SSH before palisade's chains see it.
    support::nft_load(
        host,
        "table ip foreign {\n chain early {\n  type filter hook prerouting priority -400; policy accept;\n  tcp dport 22 drop\n }\n}\n",
    );
    let (out, report) = doctor(host, &agent.config_path(), Some(&agent));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let (status, message) = check(&report, "firewall");
    assert_eq!(status, "warn");
    assert!(
        message.contains("table ip foreign chain early (hook prerouting, priority -400)")
            && message.contains("before palisade"),
        "{message}"
    );
    support::nft(host, &["delete", "table", "ip", "foreign"]);

    // The agent stopped and its table removed behind its back.
    agent.stop();
    support::nft(host, &["delete", "table", "inet", "palisade"]);
    let (out, report) = doctor(host, &agent.config_path(), Some(&agent));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let (status, message) = check(&report, "table");
    assert_eq!(status, "fail");
    assert!(
        message.contains("table inet palisade is not in the kernel"),
        "{message}"
    );
    assert_eq!(check(&report, "agent").0, "fail");
}

#[test]
fn an_unreachable_hub_and_a_pin_mismatch_are_named() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let lab = Lab::with_hosts(2);
    let (hub_host, node) = (&lab.hosts()[0], &lab.hosts()[1]);
    let listen = format!("{}:7470", hub_host.v4());
    let hub = Hub::start(hub_host, &listen, "");
    let token = hub.token("node", "web1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    let write = |url: &str, token: &str| {
        std::fs::write(
            &config,
            format!("{CONFIG}[agent]\njoin = \"{url}\"\ntoken = \"{token}\"\n"),
        )
        .unwrap();
    };

    write(&format!("https://{listen}"), &token);
    let (_, report) = doctor(node, &config, None);
    let (status, message) = check(&report, "network");
    assert_eq!(status, "ok", "the right hub and pin: {message}");
    assert!(
        message.contains("matches the pin") && message.contains("clocks agree"),
        "{message}"
    );

    // A token whose pin is another certificate's.
    let mut wrong: palisade_wire::Token = token.parse().unwrap();
    wrong.pin = Some([7; 32]);
    write(&format!("https://{listen}"), &wrong.to_string());
    let (out, report) = doctor(node, &config, None);
    assert_eq!(out.status.code(), Some(1));
    let (status, message) = check(&report, "network");
    assert_eq!(status, "fail");
    assert!(
        message.contains("not the one pinned in the token"),
        "{message}"
    );

    // Nothing listens there.
    write(&format!("https://{}:7471", hub_host.v4()), &token);
    let (out, report) = doctor(node, &config, None);
    assert_eq!(out.status.code(), Some(1));
    let (status, message) = check(&report, "network");
    assert_eq!(status, "fail");
    assert!(message.contains("is unreachable"), "{message}");
}

/// `xdp_devices`: each interface's XDP hook is named: palisade's drop
/// running, an interface that does not exist, and (once the agent stopped)
/// the drop not attached.
#[test]
fn the_xdp_drop_is_checked_on_each_interface() {
    if !require_root_and(&["nft", "ip"]) {
        return;
    }
    let lab = Lab::new();
    let host = lab.victim();
    let config = format!(
        "{CONFIG}[[enforcer]]\nkind = \"nftables\"\nxdp_devices = [\"eth0\", \"absent0\"]\n"
    );
    let mut agent = Agent::start(host, &config);
    secure(&agent);
    let (out, report) = doctor(host, &agent.config_path(), Some(&agent));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let (status, message) = check(&report, "xdp");
    assert_eq!(status, "warn");
    assert_eq!(
        message,
        "eth0: palisade's XDP drop runs; absent0: no such interface"
    );
    agent.stop();
    let (_, report) = doctor(host, &agent.config_path(), Some(&agent));
    let (status, message) = check(&report, "xdp");
    assert_eq!(status, "warn");
    assert!(
        message.starts_with("eth0: palisade's XDP drop is not attached"),
        "{message}"
    );
}

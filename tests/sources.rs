//! Protection out of the box: an agent with no configuration finds the
//! server's auth log and bans a brute force written to it.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use palisade_lab::{Lab, Proc, TcpServer, require_root_and, tcp_connect, wait_until};
use support::BIN;

const PORT: u16 = 8080;

#[test]
fn an_agent_without_configuration_follows_the_auth_log_and_bans_a_brute_force() {
    if !require_root_and(&["nft", "unshare", "mount"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    // The victim's own /var/log (with an sshd-style auth.log) and an empty
    // /etc/palisade, bind-mounted in a mount namespace of the agent's own:
    // the agent looks at the real paths, and finds no configuration.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let etc = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let socket = state.path().join("palisade.sock");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        victim.ns_name(),
        "unshare",
        "--mount",
        "--propagation",
        "private",
    ])
    .args(["sh", "-c"])
    .arg(
        "mount --bind \"$1\" /var/log && \
             if [ -d /etc/palisade ]; then mount --bind \"$2\" /etc/palisade; fi && \
             exec \"$3\" agent --local-only-unless-joined --state-dir \"$4\" --socket \"$5\"",
    )
    .arg("sh")
    .arg(logs.path())
    .arg(etc.path())
    .arg(BIN)
    .arg(state.path().join("state"))
    .arg(&socket)
    .env("PALISADE_LOG", support::log_filter("info"))
    .env_remove("PALISADE_CONFIG")
    .env_remove("PALISADE_JOIN")
    .env_remove("PALISADE_TOKEN");
    let mut agent = Proc::spawn(cmd).expect("start the agent");
    assert!(
        agent.wait_for_stderr("palisade agent running", Duration::from_secs(20)),
        "the agent did not start:\n{}",
        agent.describe()
    );
    let log_text = agent.stderr();
    assert!(
        log_text.contains("protecting this server on its own"),
        "{log_text}"
    );
    assert!(
        log_text.contains("found on this server (file:/var/log/auth.log for sshd), rules sshd,"),
        "the start-up output names the found source and the rules:\n{log_text}"
    );

    let me = attacker.v4().to_string();
    let target = SocketAddr::new(victim.v4().into(), PORT);
    assert!(tcp_connect(attacker, target, Duration::from_secs(1)));
    // A found log is followed from its end (its history is not judged):
    // keep failing until the agent, once it is at the end, has seen five.
    let listed = || String::from_utf8_lossy(&support::cli(&socket, &["list"]).stdout).contains(&me);
    let mut i = 0;
    let banned = wait_until(Duration::from_secs(15), || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(
            f,
            "Dec  4 19:00:{:02} victim sshd[{}]: Failed password for invalid user admin{i} from {me} port {} ssh2",
            i % 60,
            4000 + i,
            50000 + i
        )
        .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
        listed()
    });
    assert!(
        banned,
        "the brute force in the found auth.log was not banned:\n{}",
        agent.describe()
    );
    let story =
        String::from_utf8_lossy(&support::cli(&socket, &["explain", &me]).stdout).into_owned();
    assert!(story.contains("rule     sshd"), "{story}");
    assert!(
        !tcp_connect(attacker, target, Duration::from_millis(800)),
        "the ban is in the kernel"
    );
    let status = agent.stop();
    assert!(status.success(), "{}", agent.describe());
}

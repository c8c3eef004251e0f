//! sshguard as a palisade detector: sshguard itself (Debian's package) runs
//! with `palisade sshguard-backend` as its BACKEND, reads a log the test
//! writes failed sshd logins into, and its blocks become bans in a real
//! agent running in a lab namespace (checked with `palisade list`, the
//! kernel, and real traffic). The backend alone is also driven line by line
//! to show it survives a missing agent and bad input.

mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_lab::{Lab, Netns, Proc, TcpServer, require_root_and, tcp_connect, wait_until};
use support::{Agent, BIN, kernel_elements};

const PORT: u16 = 2222;
const SSHGUARD: &str = "/usr/sbin/sshguard";

fn reachable(from: &Netns, to: IpAddr) -> bool {
    tcp_connect(from, SocketAddr::new(to, PORT), Duration::from_millis(700))
}

fn listed(agent: &Agent, addr: &str) -> bool {
    agent
        .ok(&["list", "--bans"])
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(addr))
}

/// The wrapper sshguard runs as its BACKEND (it passes no arguments).
fn backend_script(dir: &Path, socket: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("sshg-fw-palisade");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec {BIN} --socket {} sshguard-backend --for 1h --retry 200ms {extra}\n",
            socket.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Starts Debian's `sshguard` in `ns` with its configuration file replaced
/// (in a private mount namespace) by `conf`, in its own process group:
/// sshguard ends with `kill 0`, which must not reach the test.
fn start_sshguard(ns: &Netns, conf: &Path) -> Proc {
    let mut cmd = ns.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/sshguard/sshguard.conf && exec {SSHGUARD}",
            conf.display()
        ))
        .process_group(0);
    Proc::spawn(cmd).expect("start sshguard")
}

fn failed_logins(log: &Path, from: &str, n: usize) {
    let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    for i in 0..n {
        writeln!(
            f,
            "Nov 21 10:00:0{} victim sshd[4242]: Failed password for root from {from} port {} ssh2",
            i % 10,
            40000 + i
        )
        .unwrap();
    }
}

#[test]
fn sshguard_blocks_become_bans_in_the_agent_and_its_release_and_flush_lift_them() {
    if !require_root_and(&[SSHGUARD, "nft", "unshare", "mount"]) {
        return;
    }
    let lab = Lab::new();
    let (attacker, victim) = (lab.attacker(), lab.victim());
    let _server = TcpServer::start(victim, PORT);
    let agent = Agent::start(victim, "");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(dir.path().join("whitelist"), "").unwrap();
    let backend = backend_script(dir.path(), &agent.socket(), "");
    let conf = dir.path().join("sshguard.conf");
    std::fs::write(
        &conf,
        format!(
            "BACKEND=\"{}\"\nFILES=\"{}\"\nTHRESHOLD=30\nBLOCK_TIME=4\nDETECTION_TIME=1800\nWHITELIST_FILE={}\n",
            backend.display(),
            log.display(),
            dir.path().join("whitelist").display()
        ),
    )
    .unwrap();
    let me = attacker.v4().to_string();
    let to: IpAddr = victim.v4().into();
    assert!(reachable(attacker, to));

    let mut sshguard = start_sshguard(victim, &conf);
    // sshguard tails the log from its end once it runs: keep failing until
    // it notices.
    let banned = wait_until(Duration::from_secs(30), || {
        failed_logins(&log, &me, 1);
        std::thread::sleep(Duration::from_millis(300));
        listed(&agent, &me)
    });
    assert!(
        banned,
        "sshguard's block did not reach the agent\n{}\nagent log:\n{}",
        sshguard.describe(),
        agent.log()
    );
    let list = agent.ok(&["list", "--bans", "--json"]);
    assert!(
        list.contains("\"rule\": \"sshguard\"") || list.contains("\"rule\":\"sshguard\""),
        "{list}"
    );
    // sshguard's blocks are reported (source report, actor sshguard); this
    // agent is local-only, so it keeps them here (a joined agent sends them
    // to the network, like every report: see tests/hub.rs).
    assert!(
        list.contains("\"source\":\"report\",\"actor\":\"sshguard\""),
        "{list}"
    );
    assert!(list.contains("\"scope\":\"local\""), "{list}");
    assert!(
        kernel_elements(victim).contains(&format!("block4: {me}")),
        "{:?}",
        kernel_elements(victim)
    );
    assert!(!reachable(attacker, to), "the attacker is dropped");

    // sshguard releases its block after BLOCK_TIME: the ban goes too.
    assert!(
        wait_until(Duration::from_secs(30), || !listed(&agent, &me)),
        "sshguard's release did not lift the ban\n{}",
        sshguard.describe()
    );
    assert!(reachable(attacker, to));

    // Blocked again, then sshguard stops: it asked for flushonexit, so the
    // ban is lifted on its way out.
    let again = wait_until(Duration::from_secs(30), || {
        failed_logins(&log, &me, 1);
        std::thread::sleep(Duration::from_millis(300));
        listed(&agent, &me)
    });
    assert!(again, "second block\n{}", sshguard.describe());
    // An operator's own ban of another address is not sshguard's to lift.
    agent.ok(&["ban", "203.0.113.9", "--for", "1h"]);
    sshguard.signal(libc::SIGTERM);
    assert!(sshguard.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || !listed(&agent, &me)),
        "flush on exit\n{}",
        sshguard.describe()
    );
    assert!(listed(&agent, "203.0.113.9"));
    let out = sshguard.stderr();
    assert!(
        out.contains("palisade sshguard-backend: reporting sshguard's blocks"),
        "{out}"
    );
}

/// The backend with a pipe on its stdin, like sshguard's blocker.
struct Backend {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Backend {
    fn start(socket: &Path, dir: &Path) -> Backend {
        let stderr = dir.join("backend.err");
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["sshguard-backend", "--for", "1h", "--retry", "200ms"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the backend");
        Backend { child, stderr }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_backend_outlives_a_missing_agent_and_bad_lines() {
    if !require_root_and(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let mut agent = Agent::start(&ns, "");
    agent.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut b = Backend::start(&agent.socket(), dir.path());
    b.send("flushonexit");
    b.send("block 198.18.0.77 4 32");
    b.send("this is not sshguard");
    b.send("block 2001:db8::5 6 64");
    assert!(
        wait_until(Duration::from_secs(5), || b.stderr().contains("retrying")),
        "{}",
        b.stderr()
    );
    assert!(b.alive(), "a missing agent must not end the backend");
    let err = b.stderr();
    assert!(
        err.contains("not running") || err.contains("no palisade agent"),
        "{err}"
    );
    assert!(err.contains("ignoring \"this is not sshguard\""), "{err}");

    agent.restart();
    assert!(
        wait_until(Duration::from_secs(10), || listed(&agent, "198.18.0.77")
            && listed(&agent, "2001:db8::/64")),
        "the queued blocks arrive once the agent is back: {}\n{}",
        agent.ok(&["list"]),
        b.stderr()
    );
    assert!(b.stderr().contains("the agent answers again"));

    // A release lifts only what sshguard banned.
    agent.ok(&["ban", "198.18.0.88", "--for", "1h"]);
    b.send("release 198.18.0.88 4 32");
    b.send("release 198.18.0.77 4 32");
    assert!(wait_until(Duration::from_secs(10), || !listed(
        &agent,
        "198.18.0.77"
    )));
    assert!(listed(&agent, "198.18.0.88"), "the operator's ban stays");

    // End of input: flushonexit lifts the rest of sshguard's bans.
    drop(b.child.stdin.take());
    let status = wait_until(Duration::from_secs(10), || !b.alive());
    assert!(status, "the backend ends with its input");
    assert!(b.child.wait().unwrap().success());
    assert!(!listed(&agent, "2001:db8::/64"), "{}", agent.ok(&["list"]));
    assert!(listed(&agent, "198.18.0.88"));
}

//! psad, the real daemon, hooked in as the README says: a port scan from a
//! lab host is logged by iptables on web1, psad's auto-IDS reaches its
//! danger level and runs `palisade report psad ...` as its external block
//! script, and the ban reaches the other servers. psad runs that script
//! only after adding its own iptables block, so `IPTABLES_BLOCK_METHOD`
//! stays `Y`.
//!
//! iptables' LOG target logs from a network namespace only with
//! `net.netfilter.nf_log_all_netns = 1` (set for the test, restored after);
//! the kernel's messages are copied from /dev/kmsg to the file psad reads,
//! as syslog would.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_lab::{LabBuilder, TcpServer, require_root_and, tcp_connect, wait_until};
use support::{Agent, Hub};

const PORT: u16 = 8080;
const NF_LOG_ALL_NETNS: &str = "/proc/sys/net/netfilter/nf_log_all_netns";

/// Restores a sysctl when dropped.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).expect("read sysctl");
        std::fs::write(path, value).expect("write sysctl");
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// The psad daemon, stopped (by the pid it wrote) when dropped.
struct Psad {
    pid_file: std::path::PathBuf,
}

impl Drop for Psad {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: a plain kill(2) of the psad daemon this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// psad.conf as shipped, with the settings the README names and paths
/// inside `dir`.
fn psad_config(dir: &std::path::Path, log: &std::path::Path, script: &str) -> String {
    let shipped = std::fs::read_to_string("/etc/psad/psad.conf").expect("psad.conf");
    let set = [
        // The README's settings.
        ("ENABLE_AUTO_IDS", "Y".to_string()),
        ("AUTO_IDS_DANGER_LEVEL", "1".into()),
        // psad runs the external script only after its own iptables block
        // succeeded (and refuses auto-IDS without a block method).
        ("IPTABLES_BLOCK_METHOD", "Y".into()),
        ("ENABLE_EXT_BLOCK_SCRIPT_EXEC", "Y".into()),
        ("EXTERNAL_BLOCK_SCRIPT", script.into()),
        // The lab's.
        ("HOSTNAME", "web1".into()),
        ("IPT_SYSLOG_FILE", log.display().to_string()),
        ("ENABLE_SYSLOG_FILE", "Y".into()),
        ("ALERTING_METHODS", "noemail".into()),
        ("ENABLE_WHOIS_LOOKUPS", "N".into()),
        ("ENABLE_DNS_LOOKUPS", "N".into()),
        ("ENABLE_FW_LOGGING_CHECK", "N".into()),
        ("ENABLE_SIG_MSG_SYSLOG", "N".into()),
        ("CHECK_INTERVAL", "1".into()),
        ("PSAD_DIR", dir.join("log").display().to_string()),
        ("PSAD_RUN_DIR", dir.join("run").display().to_string()),
        ("PSAD_FIFO_DIR", dir.join("fifo").display().to_string()),
    ];
    let mut out = String::new();
    for line in shipped.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        match set.iter().find(|(k, _)| *k == key) {
            Some((k, v)) => out.push_str(&format!("{k}    {v};\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Copies the kernel's iptables LOG messages to `log` in syslog's format
/// until `stop` is set.
fn forward_kernel_log(log: std::path::PathBuf, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let kmsg = std::fs::File::open("/dev/kmsg").expect("/dev/kmsg");
        // Only what the kernel logs from now on.
        // SAFETY: lseek on a file descriptor this thread owns.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::lseek(kmsg.as_raw_fd(), 0, libc::SEEK_END);
        }
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        for line in BufReader::new(kmsg).lines() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(line) = line else { continue };
            let Some((_, text)) = line.split_once(';') else {
                continue;
            };
            if text.contains("IN=") && text.contains("SRC=") {
                let _ = writeln!(out, "Dec  4 12:00:00 web1 kernel: {text}");
            }
        }
    });
}

#[test]
fn a_scan_seen_by_psad_bans_the_scanner_on_every_server() {
    if !require_root_and(&["nft", "iptables", "psad"]) {
        return;
    }
    let lab = LabBuilder::new()
        .hosts(["hub", "web1", "web2", "attacker"])
        .build();
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        "",
    );
    let join = hub.token("join", "lab");
    let mut agents = Vec::new();
    let mut servers = Vec::new();
    for name in ["web1", "web2"] {
        servers.push(TcpServer::start(lab.host(name), PORT));
        agents.push(Agent::join(lab.host(name), "", &hub.url(), &join, name));
    }
    let (web1, attacker) = (lab.host("web1"), lab.host("attacker"));
    let scanner = attacker.v4().to_string();

    // web1's firewall logs and drops what is not its service.
    let _logging = Sysctl::set(NF_LOG_ALL_NETNS, "1");
    for args in [
        &[
            "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT",
        ][..],
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "-j",
            "LOG",
            "--log-prefix",
            "DROP ",
        ],
        &["-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"],
    ] {
        web1.exec("iptables", args);
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["log", "run", "fifo"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let log = dir.path().join("messages");
    std::fs::write(&log, "").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    forward_kernel_log(log.clone(), stop.clone());
    // The README's line, with this build and this agent's socket.
    let script = format!(
        "{} --socket {} report psad scan SRCIP",
        support::BIN,
        agents[0].socket().display()
    );
    let conf = dir.path().join("psad.conf");
    std::fs::write(&conf, psad_config(dir.path(), &log, &script)).unwrap();
    // psad forks a daemon that keeps its parent's output open: its output
    // goes to a file, not to a pipe this test would wait on.
    let psad_out = dir.path().join("psad.out");
    let status = web1
        .command("psad")
        .args(["-c", conf.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&psad_out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("psad.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "psad did not start: {}",
        std::fs::read_to_string(dir.path().join("psad.err")).unwrap_or_default()
    );
    let _psad = Psad {
        pid_file: dir.path().join("run/psad.pid"),
    };

    let reaches = |name: &str| {
        let to = SocketAddr::new(IpAddr::V4(lab.host(name).v4()), PORT);
        tcp_connect(attacker, to, Duration::from_millis(600))
    };
    assert!(reaches("web1") && reaches("web2"));
    // The scan: SYNs to twenty closed ports.
    for port in 20..40 {
        let to = SocketAddr::new(IpAddr::V4(web1.v4()), port);
        tcp_connect(attacker, to, Duration::from_millis(100));
    }
    let banned = wait_until(Duration::from_secs(40), || !reaches("web2"));
    stop.store(true, Ordering::Relaxed);
    assert!(
        banned,
        "psad's block did not reach web2\npsad log: {}\nkernel log copy:\n{}\nweb1:\n{}",
        std::fs::read_to_string(dir.path().join("log/auto_blocked_iptables")).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default(),
        agents[0].log()
    );
    assert!(!reaches("web1"));
    let story = agents[1].ok(&["explain", &scanner]);
    assert!(story.contains("rule     psad/scan"), "{story}");
}

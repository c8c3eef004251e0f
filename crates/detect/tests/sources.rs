//! Every source with real writers: a file rotated by rename and truncated
//! while a writer appends numbered lines (each line seen exactly once, also
//! across a restart), a real rsyslog (imuxsock -> omuxsock and ompipe) and
//! a real syslog-ng (unix-dgram -> unix-dgram) on private sockets fed by
//! `logger`, a named pipe reopened by its writer, and the systemd journal
//! through a private systemd-journald written with `systemd-cat`.
//!
//! Tests that need a tool or root print `SKIPPED <test>: <reason>`, and
//! fail instead when CI=true.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use palisade_detect::config::StartAt;
use palisade_detect::{Engine, Event, Limits, Line, SourceConfig, Tracker, builtin, spawn};
use palisade_lab::Proc;
use palisade_model::Timestamp;

fn file_source(path: &Path, start: StartAt) -> SourceConfig {
    SourceConfig::File {
        name: Some("file".into()),
        path: path.to_path_buf(),
        start,
    }
}

/// Receives until `pred` says done or `timeout` passes.
fn collect(
    rx: &Receiver<Line>,
    timeout: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut got = Vec::new();
    while !done(&got) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(l) => got.push(l.text),
            Err(_) => continue,
        }
    }
    got
}

/// Asserts `got` holds each of `want` exactly once (in any order).
fn exactly_once(got: &[String], want: impl IntoIterator<Item = String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for g in got {
        *counts.entry(g.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut n = 0;
    for w in want {
        n += 1;
        match counts.remove(w.as_str()) {
            Some(1) => {}
            Some(c) => panic!("{w:?} seen {c} times"),
            None => missing.push(w),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {n} lines missing, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        counts.is_empty(),
        "unexpected lines: {:?}",
        counts.keys().take(5).collect::<Vec<_>>()
    );
}

fn open_append(p: &Path) -> fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
}

#[test]
fn file_rotated_by_rename_while_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let state = dir.path().join("state");
    fs::write(&log, "").unwrap();
    let (tx, rx) = unbounded();
    let src = spawn(&file_source(&log, StartAt::Beginning), &state, tx).unwrap();
    const N: usize = 20_000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut f = open_append(&log);
            let mut rotated_at = None;
            for i in 0..N {
                writeln!(
                    f,
                    "line {i:06} Failed password for root from 198.51.100.7 port 22 ssh2"
                )
                .unwrap();
                if i % 5000 == 2500 {
                    // logrotate `create`: rename, new file; the daemon keeps
                    // writing to the old file until it reopens (HUP).
                    let n = i / 5000;
                    fs::rename(&log, log.with_extension(format!("log.{n}"))).unwrap();
                    fs::write(&log, "").unwrap();
                    rotated_at = Some(i);
                }
                if rotated_at.is_some_and(|r| i == r + 300) {
                    f = open_append(&log);
                    rotated_at = None;
                }
                // ~2 s in all: rotations are further apart than the
                // follower's poll interval, as real rotations are.
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    writer.join().unwrap();
    let got = collect(&rx, Duration::from_secs(30), |g| g.len() >= N);
    std::thread::sleep(Duration::from_millis(300));
    let mut got = got;
    got.extend(rx.try_iter().map(|l| l.text));
    exactly_once(
        &got,
        (0..N).map(|i| {
            format!("line {i:06} Failed password for root from 198.51.100.7 port 22 ssh2")
        }),
    );
    src.stop().unwrap();
}

#[test]
fn file_truncated_while_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    fs::write(&log, "").unwrap();
    let (tx, rx) = unbounded();
    let src = spawn(&file_source(&log, StartAt::Beginning), &state, tx).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut got = Vec::new();
    let mut f = open_append(&log);
    let mut want = Vec::new();
    let mut i = 0;
    for round in 0..6 {
        // A writer burst...
        for _ in 0..(500 + round * 300) {
            let l = format!("t {i:06} round {round}");
            writeln!(f, "{l}").unwrap();
            want.push(l);
            i += 1;
        }
        // ...then copytruncate: once the follower has the content (what
        // logrotate copied), the file is cut to zero while the writer keeps
        // its O_APPEND handle and immediately writes more than was there
        // before, so a size check alone would not notice.
        let n = want.len();
        got.extend(collect(&rx, Duration::from_secs(20), |g| {
            got_len(&got, g) >= n
        }));
        seen.store(got.len(), Ordering::SeqCst);
        f.set_len(0).unwrap();
    }
    for _ in 0..3000 {
        let l = format!("t {i:06} after");
        writeln!(f, "{l}").unwrap();
        want.push(l);
        i += 1;
    }
    let n = want.len();
    got.extend(collect(&rx, Duration::from_secs(20), |g| {
        got_len(&got, g) >= n
    }));
    std::thread::sleep(Duration::from_millis(300));
    got.extend(rx.try_iter().map(|l| l.text));
    exactly_once(&got, want);
    src.stop().unwrap();
}

fn got_len(before: &[String], now: &[String]) -> usize {
    before.len() + now.len()
}

#[test]
fn file_position_survives_restart_and_rotation_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("auth.log");
    let state = dir.path().join("state");
    let mut f = open_append(&log);
    for i in 0..100 {
        writeln!(f, "old {i}").unwrap();
    }
    // First start: from the end (only new lines).
    let (tx, rx) = unbounded();
    let src = spawn(&file_source(&log, StartAt::End), &state, tx).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..100 {
        writeln!(f, "a {i}").unwrap();
    }
    let got = collect(&rx, Duration::from_secs(10), |g| g.len() >= 100);
    exactly_once(&got, (0..100).map(|i| format!("a {i}")));
    src.stop().unwrap();
    // While stopped: more lines, a rotation, lines in the new file.
    for i in 0..100 {
        writeln!(f, "b {i}").unwrap();
    }
    fs::rename(&log, dir.path().join("auth.log.1")).unwrap();
    let mut g = open_append(&log);
    for i in 0..50 {
        writeln!(g, "c {i}").unwrap();
    }
    let (tx, rx) = unbounded();
    let src = spawn(&file_source(&log, StartAt::End), &state, tx).unwrap();
    let got = collect(&rx, Duration::from_secs(10), |g| g.len() >= 150);
    std::thread::sleep(Duration::from_millis(300));
    let mut got = got;
    got.extend(rx.try_iter().map(|l| l.text));
    exactly_once(
        &got,
        (0..100)
            .map(|i| format!("b {i}"))
            .chain((0..50).map(|i| format!("c {i}"))),
    );
    src.stop().unwrap();
}

#[test]
fn file_that_appears_later_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("later.log");
    let (tx, rx) = unbounded();
    let src = spawn(&file_source(&log, StartAt::End), &dir.path().join("s"), tx).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut f = open_append(&log);
    for i in 0..10 {
        writeln!(f, "x {i}").unwrap();
    }
    let got = collect(&rx, Duration::from_secs(10), |g| g.len() >= 10);
    exactly_once(&got, (0..10).map(|i| format!("x {i}")));
    src.stop().unwrap();
}

#[test]
fn fifo_writer_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("kern.pipe");
    let (tx, rx) = unbounded();
    let src = spawn(
        &SourceConfig::Fifo {
            name: None,
            path: pipe.clone(),
        },
        &dir.path().join("s"),
        tx,
    )
    .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(&pipe).unwrap().file_type().is_fifo());
    // ompipe-style: open, write a batch, close; several times.
    for batch in 0..5 {
        let mut w = OpenOptions::new().write(true).open(&pipe).unwrap();
        for i in 0..100 {
            writeln!(w, "batch {batch} line {i}").unwrap();
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = collect(&rx, Duration::from_secs(10), |g| g.len() >= 500);
    exactly_once(
        &got,
        (0..5).flat_map(|b| (0..100).map(move |i| format!("batch {b} line {i}"))),
    );
    src.stop().unwrap();
}

fn builtin_tracker() -> Tracker {
    let mut e = Engine::compile(&builtin::rules()).unwrap();
    e.check_open_ports(false);
    Tracker::new(e, Limits::default())
}

/// Feeds `lines` through the built-in rules; returns the banned addresses.
fn bans(lines: &[String]) -> Vec<String> {
    let mut t = builtin_tracker();
    let mut out = Vec::new();
    for l in lines {
        for e in t.observe(
            &Line::new("t", l.clone(), Timestamp::now()),
            Timestamp::now(),
        ) {
            if let Event::Ban { address, .. } = e {
                out.push(address.to_string());
            }
        }
    }
    out
}

fn logger_lines(sock: &Path, tag: &str, lines: &[String]) {
    let mut child = Command::new("logger")
        .arg("-u")
        .arg(sock)
        .args(["-t", tag])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let stdin = child.stdin.as_mut().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

fn sshd_failures(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Failed password for invalid user u{i} from 198.51.100.{} port {} ssh2",
                10 + i % 3,
                40000 + i
            )
        })
        .collect()
}

fn wait_for_socket(p: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn rsyslog_omuxsock_and_ompipe() {
    if !palisade_lab::require_root_and(&["rsyslogd", "logger"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let (in_sock, out_sock, pipe) = (
        t.join("in.sock"),
        t.join("out.sock"),
        t.join("rsyslog.pipe"),
    );
    fs::create_dir(t.join("work")).unwrap();
    let (tx, rx) = unbounded();
    let sock_src = spawn(
        &SourceConfig::SyslogSocket {
            name: Some("rsyslog".into()),
            path: out_sock.clone(),
            group: None,
        },
        &t.join("state"),
        tx.clone(),
    )
    .unwrap();
    let (ptx, prx) = unbounded();
    let pipe_src = spawn(
        &SourceConfig::Fifo {
            name: Some("ompipe".into()),
            path: pipe.clone(),
        },
        &t.join("state"),
        ptx,
    )
    .unwrap();
    let conf = t.join("rsyslog.conf");
    fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{in_sock}")
module(load="omuxsock")
$OMUxSockSocket {out_sock}
*.* :omuxsock:;RSYSLOG_TraditionalFileFormat
*.* action(type="ompipe" pipe="{pipe}" template="RSYSLOG_TraditionalFileFormat")
"#,
            work = t.join("work").display(),
            in_sock = in_sock.display(),
            out_sock = out_sock.display(),
            pipe = pipe.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("rsyslogd");
    cmd.arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(t.join("rsyslogd.pid"));
    let daemon = Proc::spawn(cmd).unwrap();
    assert!(
        wait_for_socket(&in_sock, Duration::from_secs(10)),
        "rsyslogd did not create its socket: {}",
        daemon.stderr()
    );
    let lines = sshd_failures(200);
    logger_lines(&in_sock, "sshd", &lines);
    let got = collect(&rx, Duration::from_secs(20), |g| g.len() >= 200);
    let piped = collect(&prx, Duration::from_secs(20), |g| g.len() >= 200);
    drop(daemon);
    assert_eq!(got.len(), 200, "via omuxsock: {:?}", got.last());
    assert_eq!(piped.len(), 200, "via ompipe: {:?}", piped.last());
    // The traditional format: "Mmm dd hh:mm:ss host sshd: message".
    for (g, want) in got.iter().zip(&lines) {
        let h = palisade_detect::syslog::parse(g);
        assert_eq!(h.program, Some("sshd"), "{g}");
        assert_eq!(h.message, want, "{g}");
    }
    let banned = bans(&got);
    assert!(banned.contains(&"198.51.100.10".to_string()), "{banned:?}");
    assert_eq!(bans(&piped), banned);
    sock_src.stop().unwrap();
    pipe_src.stop().unwrap();
    assert!(!out_sock.exists());
}

fn syslog_ng() -> Option<(PathBuf, Option<PathBuf>)> {
    if let Ok(p) = std::env::var("PALISADE_SYSLOG_NG") {
        let p = PathBuf::from(p);
        let lib = p.parent()?.parent()?.join("lib/syslog-ng");
        return Some((p, lib.is_dir().then_some(lib)));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("syslog-ng").is_file() {
            return Some((dir.join("syslog-ng"), None));
        }
    }
    // Debian's rsyslog and syslog-ng-core packages conflict; the test
    // scripts unpack syslog-ng-core here when rsyslog is installed.
    let opt = PathBuf::from("/opt/syslog-ng/usr/sbin/syslog-ng");
    opt.is_file()
        .then(|| (opt, Some(PathBuf::from("/opt/syslog-ng/usr/lib/syslog-ng"))))
}

#[test]
fn syslog_ng_unix_dgram() {
    let Some((bin, lib)) = syslog_ng() else {
        // require_root_and reports (or fails under CI=true).
        palisade_lab::require_root_and(&["syslog-ng"]);
        return;
    };
    if !palisade_lab::require_root_and(&[bin.to_str().unwrap(), "logger"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let (in_sock, out_sock) = (t.join("ng-in.sock"), t.join("ng-out.sock"));
    let (tx, rx) = unbounded();
    // banban's recommended destination; palisade creates the socket first.
    let src = spawn(
        &SourceConfig::SyslogSocket {
            name: Some("syslog-ng".into()),
            path: out_sock.clone(),
            group: None,
        },
        &t.join("state"),
        tx,
    )
    .unwrap();
    let conf = t.join("syslog-ng.conf");
    fs::write(
        &conf,
        format!(
            r#"@version: 3.38
options {{ keep-hostname(yes); use-dns(no); }};
source s_test {{ unix-dgram("{in_sock}"); }};
destination d_palisade {{ unix-dgram("{out_sock}" flags(no_multi_line) template("$DATE $HOST $MSGHDR$MESSAGE\n")); }};
log {{ source(s_test); destination(d_palisade); }};
"#,
            in_sock = in_sock.display(),
            out_sock = out_sock.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("-F")
        .arg("--no-caps")
        .arg("-f")
        .arg(&conf)
        .arg("-R")
        .arg(t.join("persist"))
        .arg("-p")
        .arg(t.join("syslog-ng.pid"))
        .arg("-c")
        .arg(t.join("syslog-ng.ctl"));
    if let Some(lib) = &lib {
        cmd.arg(format!("--module-path={}", lib.join("3.38").display()))
            .env("LD_LIBRARY_PATH", lib);
    }
    let daemon = Proc::spawn(cmd).unwrap();
    assert!(
        wait_for_socket(&in_sock, Duration::from_secs(10)),
        "syslog-ng did not create its socket: {}",
        daemon.stderr()
    );
    let lines = sshd_failures(200);
    logger_lines(&in_sock, "sshd", &lines);
    let got = collect(&rx, Duration::from_secs(20), |g| g.len() >= 200);
    let err = daemon.stderr();
    drop(daemon);
    assert_eq!(got.len(), 200, "{:?} {err}", got.last());
    for (g, want) in got.iter().zip(&lines) {
        let h = palisade_detect::syslog::parse(g);
        assert_eq!(h.program, Some("sshd"), "{g}");
        assert_eq!(h.message, want, "{g}");
    }
    assert!(bans(&got).contains(&"198.51.100.11".to_string()));
    src.stop().unwrap();
}

#[test]
fn journal_via_private_journald_and_systemd_cat() {
    let journald = "/lib/systemd/systemd-journald";
    if !palisade_lab::require_root_and(&[
        journald,
        "journalctl",
        "systemd-cat",
        "unshare",
        "nsenter",
        "mount",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let (run, store) = (t.join("run-systemd"), t.join("journal"));
    fs::create_dir_all(&run).unwrap();
    fs::create_dir_all(&store).unwrap();
    // A journald of our own in a private mount namespace: its sockets and
    // its journal files are bind mounts of our temporary directories, so
    // nothing of the machine's journal (if any) is touched.
    let created_log_dir = !Path::new("/run/log/journal").exists();
    fs::create_dir_all("/run/log/journal").unwrap();
    fs::create_dir_all("/run/systemd").unwrap();
    let script = format!(
        "mount --bind {run} /run/systemd && mount --bind {store} /run/log/journal && mkdir -p /run/systemd/journal && exec {journald}",
        run = run.display(),
        store = store.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let daemon = Proc::spawn(cmd).unwrap();
    let ready = wait_for_socket(&run.join("journal/stdout"), Duration::from_secs(10));
    if !ready {
        let why = format!("systemd-journald did not start here: {}", daemon.stderr());
        drop(daemon);
        if created_log_dir {
            let _ = fs::remove_dir("/run/log/journal");
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        println!("SKIPPED journal_via_private_journald_and_systemd_cat: {why}");
        return;
    }
    let write = |lines: &[String]| {
        let mut child = Command::new("nsenter")
            .args([
                "-t",
                &daemon.pid().to_string(),
                "-m",
                "systemd-cat",
                "-t",
                "sshd",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let stdin = child.stdin.as_mut().unwrap();
            for l in lines {
                writeln!(stdin, "{l}").unwrap();
            }
        }
        assert!(child.wait().unwrap().success());
    };
    // journald keeps its files in a directory named by the machine id;
    // `journalctl --follow --directory` must be given that directory.
    let end = Instant::now() + Duration::from_secs(10);
    let machine_dir = loop {
        let sub = fs::read_dir(&store)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir());
        match sub {
            Some(d) => break d,
            None if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("journald created no journal directory: {}", daemon.stderr()),
        }
    };
    let source = SourceConfig::Journal {
        name: Some("journal".into()),
        units: vec![],
        matches: vec!["SYSLOG_IDENTIFIER=sshd".into()],
        journalctl: "journalctl".into(),
        directory: Some(machine_dir),
    };
    let state = t.join("state");
    let (tx, rx) = unbounded();
    let src = spawn(&source, &state, tx).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let first = sshd_failures(50);
    write(&first);
    let got = collect(&rx, Duration::from_secs(20), |g| g.len() >= 50);
    src.stop().unwrap();
    // While stopped: more entries; the cursor resumes exactly after.
    let second: Vec<String> = (0..30)
        .map(|i| format!("Invalid user later{i} from 198.51.100.99 port {i}"))
        .collect();
    write(&second);
    let (tx, rx) = unbounded();
    let src = spawn(&source, &state, tx).unwrap();
    let again = collect(&rx, Duration::from_secs(20), |g| g.len() >= 30);
    std::thread::sleep(Duration::from_millis(500));
    let mut again = again;
    again.extend(rx.try_iter().map(|l| l.text));
    src.stop().unwrap();
    drop(daemon);
    if created_log_dir {
        let _ = fs::remove_dir("/run/log/journal");
    }
    let msgs = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|l| {
                let h = palisade_detect::syslog::parse(l);
                assert_eq!(h.program, Some("sshd"), "{l}");
                h.message.to_string()
            })
            .collect()
    };
    exactly_once(&msgs(&got), first.iter().cloned());
    exactly_once(&msgs(&again), second.iter().cloned());
    assert!(bans(&got).contains(&"198.51.100.10".to_string()));
}

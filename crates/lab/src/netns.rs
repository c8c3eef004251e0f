use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace this crate creates is named `pal-<pid>-<n>`.
const PREFIX: &str = "pal-";

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A network namespace with a unique name and loopback up, deleted on drop.
///
/// Dropping it first kills every process still inside (`ip netns pids`),
/// since a namespace lives on as long as a process uses it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `pal-<pid>-<n>` and brings its loopback up.
    ///
    /// The first call in a process also deletes `pal-<pid>-*` namespaces
    /// whose process is gone (leftovers of killed test runs).
    ///
    /// # Panics
    /// If `ip netns add` fails (not root, no `ip`): labs are test fixtures,
    /// and a test cannot go on without its network.
    pub fn new() -> Netns {
        SWEEP.call_once(remove_stale);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that has first joined this namespace, and
    /// returns its result (a panic in `f` is propagated).
    ///
    /// Sockets opened in `f`, threads it spawns and commands it starts all
    /// live in the namespace; a socket keeps its namespace after `f` returns.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                // SAFETY: setns only reads the fd, which `file` keeps open for
                // the duration of the call; it affects this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!("setns({path}) failed: {}", std::io::Error::last_os_error());
                }
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`). `ip` execs the program, so the
    /// child's pid is the program's.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` in the namespace and returns its stdout.
    ///
    /// # Panics
    /// If it cannot be started or exits unsuccessfully; the message has its
    /// stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name));
        check(&format!("{program} {}", args.join(" ")), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Netns::exec`], but returns the whole output, successful or not.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Deletes `pal-<pid>-*` namespaces whose creating process is gone.
    /// [`Netns::new`] does this once per process by itself.
    pub fn remove_stale() {
        remove_stale();
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_of(&self.name)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn pids_of(name: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn delete(name: &str) {
    let me = std::process::id() as i32;
    for pid in pids_of(name) {
        if pid != me {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let out = Command::new("ip").args(["netns", "del", name]).output();
    if let Ok(out) = out
        && !out.status.success()
    {
        eprintln!(
            "palisade-lab: ip netns del {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Deletes `pal-<pid>-*` namespaces whose creating process no longer exists.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("palisade-lab: removing stale namespace {name}");
            delete(&name);
        }
    }
}

/// Runs `ip args...`, panicking with its stderr if it fails.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    check(&format!("ip {}", args.join(" ")), &out);
}

fn check(what: &str, out: &Output) {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

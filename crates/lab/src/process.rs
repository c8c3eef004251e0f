use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::probe::wait_until;

/// How long [`Proc::stop`] waits after SIGTERM before sending SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// A child process that is stopped and reaped on drop.
///
/// Its stdout and stderr are read into buffers as they arrive, so a test can
/// wait for a line ("listening on ...") and put the output into assertion
/// messages.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    what: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(mut cmd: Command) -> io::Result<Proc> {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {what}: {e}")))?;
        let stdout: Arc<Mutex<Vec<u8>>> = Arc::default();
        let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, stderr.clone()));
        }
        Ok(Proc {
            child,
            what,
            stdout,
            stderr,
            readers,
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `needle`; false on timeout.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().contains(needle))
    }

    /// Waits until stderr contains `needle`; false on timeout.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after 3 s) and reaps it.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(GRACE) {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait for killed child");
        self.status = Some(s);
        s
    }

    /// A description for assertion messages: the command and its stderr.
    pub fn describe(&self) -> String {
        format!("{}\n--- stderr ---\n{}", self.what, self.stderr())
    }
}

/// Lines of a process's stderr shown when a test fails while it runs.
const TAIL_ON_FAILURE: usize = 40;

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        // A failing test says what its daemons said last: CI keeps only the
        // test's output, and the cause is often in theirs.
        if std::thread::panicking() {
            let err = self.stderr();
            let lines: Vec<&str> = err.lines().collect();
            let tail = &lines[lines.len().saturating_sub(TAIL_ON_FAILURE)..];
            eprintln!(
                "--- last {} lines of stderr of {} ---\n{}",
                tail.len(),
                self.what,
                tail.join("\n")
            );
        }
        // The readers end when the pipes close; they are not joined, since a
        // grandchild that inherited the pipes could keep them open.
        self.readers.clear();
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

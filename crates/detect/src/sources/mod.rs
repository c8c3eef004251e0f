//! Where lines come from. Each source runs on its own thread and sends
//! [`Line`]s into a channel until it is stopped ([`SourceHandle::stop`]) or
//! the receiver is gone.
//!
//! | kind | module | notes |
//! |---|---|---|
//! | file | [`file`](mod@file) | `tail -F`: rotation by rename or truncation, late files, position saved under the state directory |
//! | syslog-socket | [`socket`] | UNIX datagram socket, mode 0600 (0660 with a group), several lines per datagram |
//! | fifo | [`fifo`] | created if absent, reopened on EOF |
//! | journal | [`journal`] | `journalctl -f -o json` (argv, no shell), resumed by cursor |
//! | stdin | [`stdin`] | until EOF |
//! | nflog | [`nflog`] | kernel NFLOG group; packets become LOG-style lines (forgeable) |
//! | honeyport | [`honeyport`] | decoy TCP ports; each completed handshake becomes a line (verified) |

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use crate::config::SourceConfig;

pub mod fifo;
pub mod file;
pub mod honeyport;
pub mod journal;
mod lines;
pub mod nflog;
pub mod socket;
mod state;
pub mod stdin;

/// One log line (without its line terminator) from a named source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The name of the source it came from.
    pub source: Arc<str>,
    /// The line, at most [`MAX_LINE`] bytes.
    pub text: String,
    /// When palisade read it.
    pub received: Timestamp,
}

impl Line {
    /// A line from `source`, read at `received`.
    pub fn new(source: &str, text: impl Into<String>, received: Timestamp) -> Line {
        Line {
            source: source.into(),
            text: text.into(),
            received,
        }
    }
}

/// Longest line a source passes on; longer lines are cut (at a character
/// boundary). Keeps one attacker-controlled line from costing much.
pub const MAX_LINE: usize = 16 * 1024;

/// A running source. Dropping the handle stops the source (and waits for
/// its thread).
pub struct SourceHandle {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    on_stop: Option<Box<dyn FnOnce() + Send>>,
    detached: bool,
}

impl SourceHandle {
    fn new(
        name: String,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<anyhow::Result<()>>,
    ) -> SourceHandle {
        SourceHandle {
            name,
            stop,
            thread: Some(thread),
            on_stop: None,
            detached: false,
        }
    }

    /// Stopping does not wait for the thread (it blocks in a read).
    fn detached(mut self) -> SourceHandle {
        self.detached = true;
        self
    }

    fn with_on_stop(mut self, f: impl FnOnce() + Send + 'static) -> SourceHandle {
        self.on_stop = Some(Box::new(f));
        self
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while the source's thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the source and returns how its thread ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(f) = self.on_stop.take() {
            f();
        }
        match self.thread.take() {
            Some(t) if self.detached && !t.is_finished() => Ok(()),
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("source {} panicked", self.name))?,
            None => Ok(()),
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::warn!(source = %self.name, "source ended with an error: {e:#}");
        }
    }
}

/// Starts `source`, sending its lines to `tx`. `state_dir` holds positions
/// and cursors (created if missing). Errors that prevent the start (a socket
/// path that cannot be bound, a missing journalctl) are returned here;
/// later errors end the thread and are returned by [`SourceHandle::stop`].
pub fn spawn(
    source: &SourceConfig,
    state_dir: &Path,
    tx: Sender<Line>,
) -> anyhow::Result<SourceHandle> {
    let name = source.name();
    match source {
        SourceConfig::File { path, start, .. } => file::spawn(&name, path, *start, state_dir, tx),
        SourceConfig::SyslogSocket { path, group, .. } => {
            socket::spawn(&name, path, group.as_deref(), tx)
        }
        SourceConfig::Fifo { path, .. } => fifo::spawn(&name, path, tx),
        SourceConfig::Journal {
            units,
            matches,
            journalctl,
            directory,
            ..
        } => journal::spawn(
            &name,
            &journal::Options {
                units: units.clone(),
                matches: matches.clone(),
                journalctl: journalctl.clone(),
                directory: directory.clone(),
            },
            state_dir,
            tx,
        ),
        SourceConfig::Stdin { .. } => stdin::spawn(&name, tx),
        SourceConfig::Nflog { group, .. } => nflog_source(*group, &name, tx),
        SourceConfig::Honeyport {
            ports,
            bind,
            max_per_second,
            ..
        } => honeyport::spawn(&name, *bind, ports, *max_per_second, tx),
    }
}

/// Listens on NFLOG group `group` (the kernel's `log group N`) and sends one
/// LOG-style line per packet (`SRC=… DST=… PROTO=TCP SPT=… DPT=…`), which
/// the built-in `port-probe` rule counts. Needs CAP_NET_ADMIN; acts in the
/// network namespace of the calling thread.
pub fn nflog_source(group: u16, name: &str, tx: Sender<Line>) -> anyhow::Result<SourceHandle> {
    nflog::spawn(group, name, tx)
}

/// Cuts `s` to [`MAX_LINE`] bytes at a character boundary.
pub(crate) fn cap_line(mut s: String) -> String {
    let end = crate::logfile::cap(&s).len();
    s.truncate(end);
    s
}

/// Lossy UTF-8 of one line's bytes, without `\r\n`/`\n`, capped.
pub(crate) fn line_from_bytes(b: &[u8]) -> String {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    let b = b.strip_suffix(b"\r").unwrap_or(b);
    let b = &b[..b.len().min(MAX_LINE)];
    cap_line(String::from_utf8_lossy(b).into_owned())
}

pub(crate) fn stopped(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

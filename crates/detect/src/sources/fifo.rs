//! A named pipe (rsyslog `ompipe`, diswall's iptables log pipe).
//!
//! Created with mode 0600 if absent; an existing path must be a FIFO. The
//! source holds a write end of its own, so the pipe never reports EOF when
//! the writer (a syslog daemon being restarted) closes it, and writers never
//! block or fail with "no reader" while palisade runs. Reads wait with
//! `poll` so the source stops promptly.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::lines::LineSplitter;
use super::{Line, SourceHandle, stopped};

/// Starts reading the named pipe at `path` (created if absent) on a thread
/// of its own, sending each line to `tx`.
pub fn spawn(name: &str, path: &Path, tx: Sender<Line>) -> anyhow::Result<SourceHandle> {
    create(path)?;
    let (reader, writer) = open(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let path = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut reader = reader;
            let mut _writer = writer;
            let mut buf = vec![0u8; 64 * 1024];
            let mut lines = LineSplitter::default();
            while !stopped(&flag) {
                if !readable(&reader, 200) {
                    continue;
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => {
                        // Cannot happen while we hold a writer; reopen anyway.
                        (reader, _writer) = open(&path)?;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e).context("reading the pipe"),
                };
                let pushed = lines.push(&buf[..n], &mut |text| {
                    text.is_empty()
                        || tx
                            .send(Line {
                                source: src.clone(),
                                text,
                                received: Timestamp::now(),
                            })
                            .is_ok()
                });
                if pushed.closed {
                    return Ok(());
                }
            }
            Ok(())
        })?;
    Ok(SourceHandle::new(name.into(), stop, thread))
}

fn create(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_fifo() => Ok(()),
        Ok(_) => bail!("{} exists and is not a named pipe", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir)?;
            }
            let c = CString::new(path.as_os_str().as_bytes())?;
            // SAFETY: valid NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("mkfifo {}", path.display()));
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

fn open(path: &Path) -> anyhow::Result<(File, File)> {
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let writer = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    Ok((reader, writer))
}

fn readable(f: &File, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

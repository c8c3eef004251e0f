//! A UNIX datagram socket for syslog daemons (rsyslog `omuxsock`,
//! syslog-ng `unix-dgram`).
//!
//! The socket is bound in a fresh 0700 directory next to the configured
//! path, given its mode (0600, or 0660 and the group when one is
//! configured), then renamed into place: no other user can ever connect to
//! it with looser permissions, and a stale socket left by a crash is
//! replaced. A live socket of another process, or a path that is not a
//! socket, is an error. The socket is removed when the source stops.
//!
//! A datagram may hold one line or several, with or without a trailing
//! newline (and NULs some senders append); each non-empty line is passed
//! on.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::{Line, SourceHandle, line_from_bytes, stopped};

/// Creates a syslog datagram socket at `path` (mode 0600, or 0660 for
/// `group`) and sends each message to `tx`, on a thread of its own.
pub fn spawn(
    name: &str,
    path: &Path,
    group: Option<&str>,
    tx: Sender<Line>,
) -> anyhow::Result<SourceHandle> {
    let sock = bind(path, group)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    set_rcvbuf(&sock, 4 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopped(&flag) {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e).context("receiving from the syslog socket"),
                };
                let received = Timestamp::now();
                for part in buf[..n].split(|&b| b == b'\n') {
                    let part = trim_nul(part);
                    if part.is_empty() {
                        continue;
                    }
                    let text = line_from_bytes(part);
                    let line = Line {
                        source: src.clone(),
                        text,
                        received,
                    };
                    if tx.send(line).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })?;
    let cleanup = path.to_path_buf();
    Ok(
        SourceHandle::new(name.into(), stop, thread).with_on_stop(move || {
            let _ = fs::remove_file(&cleanup);
        }),
    )
}

fn trim_nul(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|&c| c != 0 && c != b'\r')
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Binds the socket safely at `path` (see the module docs).
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixDatagram> {
    let gid = group.map(group_id).transpose()?;
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            // Live if something accepts a connection or datagram on it.
            let live_stream = UnixStream::connect(path).is_ok();
            let live_dgram = UnixDatagram::unbound()
                .and_then(|s| s.connect(path))
                .is_ok();
            if live_stream || live_dgram {
                bail!(
                    "{} is in use by another process; stop it or choose another path",
                    path.display()
                );
            }
            // Stale: replaced by the rename below.
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; palisade will not replace it",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let private = tempdir_in(dir)?;
    let tmp = private.join("sock");
    let result = (|| -> anyhow::Result<UnixDatagram> {
        let sock =
            UnixDatagram::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        if let Some(gid) = gid {
            chown(&tmp, gid)?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(sock)
    })();
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(&private);
    result
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    for i in 0..100u32 {
        let p = dir.join(format!(".palisade-sock-{}-{i}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!("cannot create a private directory in {}", dir.display())
}

use std::os::unix::fs::DirBuilderExt;

fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = fs::read_to_string("/etc/group").context("reading /etc/group")?;
    for line in text.lines() {
        let mut f = line.split(':');
        if f.next() == Some(name) {
            let _pw = f.next();
            if let Some(Ok(gid)) = f.next().map(str::parse) {
                return Ok(gid);
            }
        }
    }
    bail!("group {name:?} not found in /etc/group")
}

fn chown(path: &Path, gid: u32) -> anyhow::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; -1 keeps the owner.
    let rc = unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setting group {gid} on {}", path.display()));
    }
    Ok(())
}

fn set_rcvbuf(sock: &UnixDatagram, bytes: i32) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a pointer to an int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_with_several_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (tx, rx) = crossbeam_channel::unbounded();
        let h = spawn("sock", &path, None, tx).unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let c = UnixDatagram::unbound().unwrap();
        c.send_to(b"one\n", &path).unwrap();
        c.send_to(b"two\nthree", &path).unwrap();
        c.send_to(b"four\n\n\0", &path).unwrap();
        let got: Vec<String> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap().text)
            .collect();
        assert_eq!(got, ["one", "two", "three", "four"]);
        h.stop().unwrap();
        assert!(!path.exists(), "socket removed on stop");
    }

    #[test]
    fn stale_socket_replaced_live_refused_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixDatagram::bind(&path).unwrap()); // stale
        let live = bind(&path, None).unwrap();
        let err = bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);
        fs::remove_file(&path).unwrap();
        fs::write(&path, "x").unwrap();
        let err = bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
    }

    #[test]
    fn group_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let _s = bind(&path, Some("0")).unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o660);
        assert!(bind(&dir.path().join("h.sock"), Some("no-such-group-x")).is_err());
    }
}

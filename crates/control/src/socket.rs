//! Creating a root-only control socket, shared by the agent and the hub.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Creates a UNIX stream socket only root can use: its directory is made
/// mode 0700 if palisade has to create it, the socket itself is mode 0600.
/// A stale socket left by a crashed process is replaced; a live one (another
/// process still listening) is an error naming `what` listens there.
pub fn bind_root_only(path: &Path, what: &str) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another palisade {what} is already listening on {}; stop it, or give this one its own --socket and --state-dir",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Connecting needs write permission on the socket, so the moment between
    // bind and chmod never lets anyone but root in.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// True if a peer with this uid may use a control socket: root, or the user
/// the server itself runs as.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// The refusal sent to anyone else.
pub fn refusal(uid: u32) -> String {
    format!(
        "the palisade control socket is root-only and uid {uid} is not root; run this command as root (e.g. with sudo)"
    )
}

//! The subcommands. Each module parses its own arguments and prints its own
//! output; they share [`Context`] for the config file and control socket.

pub mod addresses;
pub mod agent;
pub mod bouncer;
pub mod bus;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod detect;
pub mod doctor;
pub mod feed;
pub mod hub;
pub mod hubbus;
pub mod install;
pub mod report;
pub mod show;
pub mod sources;
pub mod sshguard;
pub mod up;

use std::path::{Path, PathBuf};

/// Where the printed join commands keep a server's token: in a root-only
/// file, so it never shows in `ps` or the shell's history of commands run.
pub const JOIN_TOKEN_FILE: &str = "/etc/palisade/join.token";

use anyhow::Result;
use palisade_config::Config;
use palisade_control::Client;

/// Global options, resolved lazily: only commands that need the
/// configuration read it.
pub struct Context {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

impl Context {
    /// Loads the configuration. A file named with --config or
    /// PALISADE_CONFIG must exist; the default one may be absent.
    pub fn load_config(&self) -> Result<Config> {
        let (path, required) = match &self.config {
            Some(p) => (p.as_path(), true),
            None => (Path::new(palisade_config::DEFAULT_PATH), false),
        };
        Ok(Config::load(path, required)?)
    }

    /// The control socket: --socket / PALISADE_SOCKET, else the config's.
    pub fn socket_path(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => Ok(self.load_config()?.agent.socket),
        }
    }

    pub fn connect(&self) -> Result<Client> {
        Ok(Client::connect(&self.socket_path()?)?)
    }
}

/// The user behind this command, recorded as the actor of its decisions:
/// the sudo caller if there is one, else the user this process runs as.
pub fn actor() -> Option<String> {
    if let Some(user) = std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()) {
        return Some(user);
    }
    // SAFETY: getuid cannot fail; getpwuid returns null or a pointer to a
    // static record that stays valid until the next getpw* call, and this
    // runs before the CLI starts any thread.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return Some(format!("uid {uid}"));
        }
        Some(
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

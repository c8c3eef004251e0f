//! What the commands that run palisade (`agent`, `hub`, `up`) share: their
//! logging, the root check, the node's name, the exit on a configuration
//! that cannot work, a feed's settings; and the options several commands
//! repeat, as groups each command flattens into its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use palisade_config::{Config, FeedConfig};
use palisade_feed::Feed;

/// `--state-dir`: the agent's state directory.
#[derive(Debug, Args, Clone, Default)]
pub struct StateDirArg {
    /// The agent's state directory [default: from the config, else /var/lib/palisade]
    #[arg(long, env = "PALISADE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    /// The directory given, else the configuration's.
    pub fn resolve(&self, config: &Config) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| config.agent.state_dir.clone())
    }
}

/// `--node-name`: this server's name in decisions.
#[derive(Debug, Args, Clone, Default)]
pub struct NodeNameArg {
    /// This server's name in decisions [default: from the config, else the host name]
    #[arg(long, env = "PALISADE_NODE", value_name = "NAME")]
    pub node_name: Option<String>,
}

impl NodeNameArg {
    /// The name given, else the configuration's, else the host name.
    pub fn resolve(&self, config: &Config) -> String {
        self.node_name
            .clone()
            .or_else(|| config.node.name.clone())
            .unwrap_or_else(host_name)
    }
}

/// `--log`: what the process logs.
#[derive(Debug, Args, Clone)]
pub struct LogArg {
    /// Log filter, e.g. `info`, `debug`, `palisade_agent=debug`
    #[arg(
        long,
        env = "PALISADE_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,
}

impl LogArg {
    /// Logs to standard error through the filter given.
    pub fn init(&self) -> Result<()> {
        use std::io::IsTerminal;
        // Colours only on a terminal: the journal and log files get plain text.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(&self.log)?)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init();
        Ok(())
    }
}

/// Refuses to go on unless this process runs as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "palisade must run as root: it changes the kernel's firewall and owns root-only control sockets"
        );
    }
    Ok(())
}

/// The kernel's host name (of this UTS namespace).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Says why the configuration cannot work and gives the exit status that
/// tells systemd not to restart (a restart would not fix it).
pub fn config_error(e: anyhow::Error) -> ExitCode {
    eprintln!("palisade: {e:#}");
    ExitCode::from(super::install::EX_CONFIG)
}

/// A `[[feed]]` table as the feed puller takes it (the agent's own feeds
/// and the hub's alike).
pub fn feed(config: &FeedConfig) -> Feed {
    Feed {
        name: config.name.clone(),
        url: config.url.clone(),
        max_entries: config.max_entries,
        max_bytes: config.max_bytes,
        deadline: config.timeout,
        allow_non_public: config.allow_non_public,
        crowdsec_key: match config.kind {
            palisade_config::FeedKind::Crowdsec => config.api_key.clone(),
            palisade_config::FeedKind::List => None,
        },
    }
}

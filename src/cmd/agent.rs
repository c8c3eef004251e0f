//! `palisade agent`: run the agent in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use palisade_agent::{AgentOptions, Settings};
use palisade_config::Config;
use palisade_enforce::Enforcer;

use super::Context;

#[derive(Debug, Args)]
#[command(
    after_help = "Every path is a flag, an environment variable and a config key, so several
agents can run on one machine (for example one per network namespace):
  --state-dir / PALISADE_STATE_DIR / [agent] state_dir
  --socket    / PALISADE_SOCKET    / [agent] socket
  --config    / PALISADE_CONFIG

When the agent stops, its bans stay in the kernel and expire on time by
themselves; the next start reconciles the kernel with its stored decisions.

Examples:
  palisade agent --local-only
  palisade agent --remove-rules"
)]
pub struct AgentArgs {
    /// Protect this server on its own, without joining a network of agents
    #[arg(long)]
    local_only: bool,

    /// Remove palisade's nftables table from the kernel and exit (stored
    /// decisions are kept; the next start puts them back)
    #[arg(long)]
    remove_rules: bool,

    /// Where decisions are stored [default: from the config, else /var/lib/palisade]
    #[arg(long, env = "PALISADE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// This server's name in decisions [default: from the config, else the host name]
    #[arg(long, env = "PALISADE_NODE", value_name = "NAME")]
    node_name: Option<String>,

    /// Log filter, e.g. `info`, `debug`, `palisade_agent=debug`
    #[arg(
        long,
        env = "PALISADE_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
}

pub fn run(ctx: &Context, args: AgentArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .init();
    let config = ctx.load_config()?;
    if args.remove_rules {
        let mut nft = nftables(&config)?;
        nft.remove()?;
        println!(
            "removed table inet {} (stored decisions are kept)",
            config.nftables.table
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.local_only || config.agent.local_only) {
        bail!(
            "this agent has no network to join: run it with --local-only (or set local_only = true in [agent]) to protect this server on its own"
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the agent must run as root: it changes the kernel's firewall and owns a root-only control socket"
        );
    }
    let node = match args.node_name.or(config.node.name.clone()) {
        Some(n) => n,
        None => host_name(),
    };
    let settings = Settings {
        node,
        default_ban: config.agent.default_ban,
        guard: config.guard(),
        static_allows: config
            .allow
            .iter()
            .map(|a| (a.net, a.comment.clone()))
            .collect(),
    };
    let kill: Option<palisade_agent::KillFn> = config.agent.kill_connections.then(|| {
        // Opened on first use, on the killer's own thread, and kept.
        let mut killer: Option<palisade_enforce::kill::Killer> = None;
        Box::new(move |nets: &[palisade_model::Net]| {
            let k = match &mut killer {
                Some(k) => k,
                None => {
                    killer.insert(palisade_enforce::kill::Killer::new().map_err(|e| e.to_string())?)
                }
            };
            k.kill_all(nets)
                .map(|r| r.total() as u64)
                .map_err(|e| e.to_string())
        }) as palisade_agent::KillFn
    });
    let rules = if config.detect.builtin {
        palisade_detect::builtin::with_builtin(config.rule.clone())
    } else {
        config.rule.clone()
    };
    let detect = palisade_agent::DetectOptions {
        rules,
        sources: config.source.clone(),
        limits: palisade_detect::Limits {
            max_tracked: config.detect.max_tracked,
            ..Default::default()
        },
    };
    let options = AgentOptions {
        settings,
        state_dir: args.state_dir.unwrap_or(config.agent.state_dir.clone()),
        socket: ctx.socket.clone().unwrap_or(config.agent.socket.clone()),
        mode: "local-only".into(),
        kill,
        detect,
    };
    let enforcers: Vec<Box<dyn Enforcer>> = vec![Box::new(nftables(&config)?)];
    palisade_agent::run(options, enforcers)?;
    Ok(ExitCode::SUCCESS)
}

fn nftables(config: &Config) -> Result<palisade_enforce::nftables::Nftables> {
    Ok(palisade_enforce::nftables::Nftables::new(
        palisade_enforce::nftables::NftConfig {
            table: config.nftables.table.clone(),
            priority: config.nftables.priority,
            // An NFLOG source means port-probe detection: palisade's own
            // table reports connection attempts to that group.
            probe_log_group: config.source.iter().find_map(|s| match s {
                palisade_detect::SourceConfig::Nflog { group, .. } => Some(*group),
                _ => None,
            }),
        },
    )?)
}

/// The kernel's host name (of this UTS namespace).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

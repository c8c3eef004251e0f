//! `palisade agent`: run the agent in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use palisade_agent::{AgentOptions, CoreOptions};
use palisade_config::Config;
use palisade_enforce::Enforcer;
use palisade_wire::{Bus, Token, TokenKind};

use super::Context;
use super::daemon::{LogArg, NodeNameArg, StateDirArg, config_error, require_root};

#[derive(Debug, Args)]
#[command(
    after_help = "Every path is a flag, an environment variable and a config key, so several
agents can run on one machine (for example one per network namespace):
  --state-dir / PALISADE_STATE_DIR / [agent] state_dir
  --socket    / PALISADE_SOCKET    / [agent] socket
  --config    / PALISADE_CONFIG

When the agent stops, its bans stay in the kernel and expire on time by
themselves; the next start reconciles the kernel with its stored decisions.
A joined agent keeps enforcing what it has while the hub is away, queues
what it reports, and catches up when the hub is back.

Examples:
  palisade agent --local-only
  palisade agent --join https://198.51.100.1:7470 --token-file /etc/palisade/join.token
  palisade agent --join nats://nats1:4222,nats2:4222,nats3:4222
  palisade agent --join nats://leaf1:4222  (a site's leaf node; [nats] jetstream_domain
                                            names the cluster's JetStream domain)
  palisade agent --join mqtt://broker.example.com:1883
  palisade agent --remove-rules",
    mut_arg("state_dir", |a| a.help("Where decisions are stored [default: from the config, else /var/lib/palisade]"))
)]
pub struct AgentArgs {
    /// Protect this server on its own, without joining a network of agents
    #[arg(long, conflicts_with = "join")]
    local_only: bool,

    /// Join the network configured in [agent] if there is one, else protect
    /// this server on its own (what the systemd unit runs, so a fresh
    /// install protects at once)
    #[arg(long, conflicts_with_all = ["join", "local_only"])]
    local_only_unless_joined: bool,

    /// The network to join: https://HUB:PORT (a palisade hub, with --token-file),
    /// nats://HOST:PORT[,HOST:PORT…] (NATS JetStream) or mqtt://HOST:PORT
    /// (an MQTT broker) [default: [agent] join]
    #[arg(long, env = "PALISADE_JOIN", value_name = "URL")]
    join: Option<String>,

    /// The token `palisade hub token create` printed (prefer --token-file:
    /// a command line is visible to every user in `ps`) [default: [agent]
    /// token or token_file]
    #[arg(
        long,
        env = "PALISADE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,

    /// A root-only file holding the token [default: [agent] token_file]
    #[arg(long, env = "PALISADE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Remove palisade's nftables table from the kernel and exit (stored
    /// decisions are kept; the next start puts them back)
    #[arg(long)]
    remove_rules: bool,

    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    node_name: NodeNameArg,

    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address,
    /// e.g. 127.0.0.1:9477; off by default)
    #[arg(long, env = "PALISADE_METRICS", value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    #[command(flatten)]
    log: LogArg,
}

pub fn run(ctx: &Context, args: AgentArgs) -> Result<ExitCode> {
    args.log.init()?;
    let config = match ctx.load_config() {
        Ok(c) => c,
        Err(e) => return Ok(config_error(e)),
    };
    if args.remove_rules {
        for mut e in enforcers(&config)? {
            e.remove()?;
            println!(
                "{}: removed what palisade put in the kernel (stored decisions are kept)",
                e.name()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    require_root()?;
    let state_dir = args.state_dir.resolve(&config);
    let node = args.node_name.resolve(&config);
    let join = args.join.clone().or(config.agent.join.clone());
    // The hub or brokers this agent joins: allowed here, whatever the
    // network says, so it can never be cut off from the unban.
    let infrastructure = join.clone().map(|url| {
        Arc::new(move || {
            super::addresses::protected(
                &super::addresses::url_addresses(&url),
                "the palisade network this server joins (its hub or brokers)",
            )
        }) as palisade_agent::Resolver
    });
    let network: Option<Arc<dyn Bus>> = match join {
        None if args.local_only || config.agent.local_only => None,
        None if args.local_only_unless_joined => {
            tracing::info!(
                "no network to join in the configuration ([agent] join and token): protecting this server on its own; set them and restart to join a network"
            );
            None
        }
        None => {
            return Ok(config_error(anyhow::anyhow!(
                "this agent has no network to join: run it with --join https://HUB:PORT --token-file FILE (a token from `palisade hub token create`), or with --local-only (or local_only = true in [agent]) to protect this server on its own"
            )));
        }
        Some(url) => Some(match super::bus::kind(&url)? {
            super::bus::Kind::Hub => {
                let token = token_from(&args.token, args.token_file.as_deref(), &config)?;
                Arc::new(link(&url, token, &state_dir, &node)?) as Arc<dyn Bus>
            }
            super::bus::Kind::Nats => Arc::new(palisade_nats::NatsBus::new(
                super::bus::nats_options(&url, &config)?,
                &node,
                config.node.group.clone(),
            )),
            super::bus::Kind::Mqtt => Arc::new(palisade_mqtt::MqttBus::new(
                super::bus::mqtt_options(&url, &config)?,
                &node,
                config.node.group.clone(),
            )),
        }),
    };
    let socket = ctx.socket.clone().unwrap_or(config.agent.socket.clone());
    let (mut options, enforcers) =
        agent_options(&config, node, state_dir, socket, network, infrastructure)?;
    // No hub runs in this process: the agent pulls the feeds itself.
    options.feeds = agent_feeds(&config)?;
    options.metrics = args.metrics;
    palisade_agent::run(options, enforcers)?;
    Ok(ExitCode::SUCCESS)
}

/// Everything the agent needs, from the configuration.
pub fn agent_options(
    config: &Config,
    node: String,
    state_dir: PathBuf,
    socket: PathBuf,
    network: Option<Arc<dyn Bus>>,
    infrastructure: Option<palisade_agent::Resolver>,
) -> Result<(AgentOptions, Vec<Box<dyn Enforcer>>)> {
    let mode = match &network {
        Some(bus) => format!("joined to {}", bus.describe()),
        None => "local-only".into(),
    };
    let settings = CoreOptions {
        node,
        default_ban: config.agent.default_ban,
        guard: config.guard(),
        static_allows: config
            .allow
            .iter()
            .map(|a| (a.net, a.comment.clone()))
            .collect(),
        joined: network.is_some(),
        infrastructure: infrastructure.as_ref().map(|r| r()).unwrap_or_default(),
        rollup: network.is_none().then(|| config.rollup.rollup()),
    };
    let kill: Option<palisade_agent::KillFn> = config.agent.kill_connections.then(|| {
        // Opened on first use, on the killer's own thread, and kept.
        let mut killer: Option<palisade_enforce::kill::Killer> = None;
        Box::new(move |nets: &[palisade_model::Net]| {
            let k = match &mut killer {
                Some(k) => k,
                None => killer.insert(palisade_enforce::kill::Killer::new()?),
            };
            k.kill_all(nets).map(|r| r.total() as u64)
        }) as palisade_agent::KillFn
    });
    let (origin, found) = super::sources::for_agent(config);
    tracing::info!(
        "{}",
        super::sources::summary(origin, &found, &super::sources::rule_names(config))
    );
    let detect = palisade_agent::DetectOptions {
        rules: super::sources::rules(config),
        sources: found.into_iter().map(|f| f.source).collect(),
        limits: config.detect.limits(),
    };
    let (services, metrics_sources) = match crowdsec_endpoint(config, &state_dir)? {
        Some((service, usage)) => (vec![service], vec![usage]),
        None => (Vec::new(), Vec::new()),
    };
    let options = AgentOptions {
        settings,
        socket,
        mode,
        kill,
        detect,
        services,
        metrics_sources,
        state_dir,
        network,
        feeds: Vec::new(),
        metrics: None,
        infrastructure,
    };
    Ok((options, enforcers(config)?))
}

/// CrowdSec's bouncer API, when `[crowdsec] listen` is set: bound now, so
/// a taken port stops the start with a clear error, served once the store
/// is open; with the metrics of the bouncers' usage reports.
fn crowdsec_endpoint(
    config: &Config,
    state_dir: &Path,
) -> Result<Option<(palisade_agent::StoreService, palisade_agent::MetricsSource)>> {
    let Some(addr) = config.crowdsec.listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("[crowdsec] listen: cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let keys = palisade_crowdsec::Keys::new(state_dir);
    let usage = Arc::new(palisade_crowdsec::Usage::default());
    let metrics = usage.clone();
    let service: palisade_agent::StoreService = Box::new(move |store| {
        let api = palisade_crowdsec::Api::with_usage(store, keys, usage);
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                tracing::info!(%addr, "answering CrowdSec bouncers");
                tokio::spawn(palisade_crowdsec::serve(listener, api));
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot serve CrowdSec bouncers"),
        }
    });
    Ok(Some((service, Arc::new(move || metrics.render()))))
}

/// The configured feeds, for an agent that pulls them itself.
pub fn agent_feeds(config: &Config) -> Result<Vec<palisade_agent::feeds::Scheduled>> {
    config
        .feed
        .iter()
        .map(|f| {
            Ok(palisade_agent::feeds::Scheduled {
                feed: super::daemon::feed(f),
                every: f
                    .every()
                    .duration()
                    .with_context(|| format!("[[feed]] {}: every cannot be forever", f.name))?,
            })
        })
        .collect()
}

/// The token from the flags (`--token`, `--token-file`), the config or the
/// config's token file.
fn token_from(flag: &Option<String>, file_flag: Option<&Path>, config: &Config) -> Result<Token> {
    let read = |file: &Path| {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file {}", file.display()))
    };
    let text = match (
        flag,
        file_flag,
        &config.agent.token,
        &config.agent.token_file,
    ) {
        (Some(t), _, _, _) => t.clone(),
        (None, Some(file), _, _) => read(file)?,
        (None, None, Some(t), _) => t.clone(),
        (None, None, None, Some(file)) => read(file)?,
        (None, None, None, None) => bail!(
            "joining a hub needs a token: --token-file FILE (or [agent] token_file); create one on the hub with `palisade hub token create NAME`"
        ),
    };
    Ok(text.trim().parse()?)
}

/// The link to the hub at `url`, exchanging a join token for this node's
/// own credential on first contact (kept in the state directory, so later
/// starts use it).
pub fn link(
    url: &str,
    token: Token,
    state_dir: &Path,
    node: &str,
) -> Result<palisade_link::HubLink> {
    let kept = state_dir.join("node.token");
    if token.kind == TokenKind::Read {
        bail!(
            "a read token cannot join: create a node or join token with `palisade hub token create`"
        );
    }
    if token.kind == TokenKind::Node {
        return Ok(palisade_link::HubLink::new(url, &token)?);
    }
    if let Ok(text) = std::fs::read_to_string(&kept)
        && let Ok(mine) = text.trim().parse::<Token>()
    {
        return Ok(palisade_link::HubLink::new(
            url,
            &Token {
                pin: token.pin,
                ..mine
            },
        )?);
    }
    let joiner = palisade_link::HubLink::new(url, &token)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime
        .block_on(joiner.join(node))
        .with_context(|| format!("joining the hub at {url} as {node:?}"))?;
    let mine: Token = answer.token.parse()?;
    std::fs::create_dir_all(state_dir)?;
    palisade_hub::identity::write_private(&kept, mine.to_string().as_bytes())?;
    tracing::info!(node = %answer.name, group = ?answer.group, "joined the hub; this node's credential is kept in {}", kept.display());
    Ok(palisade_link::HubLink::new(
        url,
        &Token {
            pin: token.pin,
            ..mine
        },
    )?)
}

/// The configured enforcers (palisade's nftables table when none is).
fn enforcers(config: &Config) -> Result<Vec<Box<dyn Enforcer>>> {
    config
        .enforcers()
        .iter()
        .map(|e| {
            palisade_enforce::build(e)
                .map_err(|err| anyhow::anyhow!("[[enforcer]] {}: {err}", kind(e)))
        })
        .collect()
}

fn kind(e: &palisade_enforce::EnforcerConfig) -> &'static str {
    use palisade_enforce::EnforcerConfig::*;
    match e {
        Nftables(_) => "nftables",
        Ipset(_) => "ipset",
        XtRecent(_) => "xt-recent",
        Command(_) => "command",
    }
}

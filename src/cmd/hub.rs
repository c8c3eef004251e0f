//! `palisade hub`: run the hub, and manage its tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use palisade_config::Config;
use palisade_control::hub::{HubRequest, HubResponse};
use palisade_control::{Client, ClientError};
use palisade_hub::HubOptions;
use palisade_model::Source;
use palisade_policy::{Escalation, PolicyOptions, RateLimit};

use super::Context;
use super::daemon::LogArg;
use crate::render;

#[derive(Debug, Args)]
#[command(
    after_help = "Run without a subcommand, the hub serves in the foreground. Agents join it with
  palisade agent --join https://HUB:7470 --token-file FILE
where FILE (root only) holds a token from `palisade hub token create NAME`.

Examples:
  palisade hub --listen 0.0.0.0:7470
  palisade hub token create web1
  palisade hub token create --kind join --group dmz dmz-servers
  palisade hub token list
  palisade hub token revoke web1
  palisade hub admin create alice      # a dashboard login: https://HUB:7470/dashboard/",
    mut_arg("log", |a| a.help("Log filter, e.g. `info`, `debug`, `palisade_hub=debug`"))
)]
pub struct HubArgs {
    #[command(subcommand)]
    command: Option<HubCommand>,

    /// Run on a bus: nats://HOST:PORT[,…] runs a stateless policy worker
    /// (instead of an HTTPS hub; start several), mqtt://HOST:PORT bridges
    /// this hub to an MQTT broker [default: [hub] join]
    #[arg(long, env = "PALISADE_HUB_JOIN", value_name = "URL")]
    join: Option<String>,

    #[command(flatten)]
    log: LogArg,

    #[command(flatten)]
    place: HubPlace,
}

/// Where the hub lives (also used by `palisade up`).
#[derive(Debug, Args, Clone, Default)]
pub struct HubPlace {
    /// Address and port agents connect to [default: from the config, else 0.0.0.0:7470]
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub listen: Option<SocketAddr>,

    /// The hub's state directory [default: from the config, else /var/lib/palisade/hub]
    #[arg(
        long = "hub-state-dir",
        env = "PALISADE_HUB_STATE_DIR",
        value_name = "DIR",
        global = true
    )]
    pub hub_state_dir: Option<PathBuf>,

    /// The hub's root-only control socket [default: from the config, else /run/palisade/hub.sock]
    #[arg(
        long = "hub-socket",
        env = "PALISADE_HUB_SOCKET",
        value_name = "PATH",
        global = true
    )]
    pub hub_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Create, list or revoke tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create, list or delete the web dashboard's administrators
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show whether the hub runs and what it holds
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (it is shown once; the hub keeps only a hash)
    Create {
        /// The node's name (node tokens) or a label (join and read tokens)
        name: String,
        /// node: one server's credential; join: lets servers join (each gets
        /// its own credential); read: export, listing and metrics only
        #[arg(long, default_value = "node", value_parser = ["node", "join", "read"])]
        kind: String,
        /// The group of the node(s): group allow entries apply to them
        #[arg(long)]
        group: Option<String>,
        /// What its holder (or, for a join token, each node it enrols) may
        /// do: reporter (reports only, always subject to quorum and rate
        /// limits), node (reports, and host bans within [hub.limits]; never
        /// allows for the whole network, never lifts others' decisions), or
        /// operator (everything the guard permits)
        #[arg(long, default_value = "node", value_parser = ["reporter", "node", "operator"])]
        role: String,
        /// Join tokens: how many servers it may enrol (default: any number
        /// until revoked)
        #[arg(long)]
        uses: Option<u32>,
        /// Join tokens: how long it works, like 1h or 2d (default: until
        /// revoked)
        #[arg(long)]
        expires: Option<palisade_model::Span>,
    },
    /// List tokens (never the secrets)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke every token with this name; its streams are cut and a node's
    /// automatic allow entry is removed
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an administrator of the web dashboard (https://HUB:PORT/dashboard/);
    /// asks for the password twice, or reads one line from standard input
    Create {
        name: String,
        /// Read the password from standard input (one line) instead of asking
        #[arg(long)]
        password_stdin: bool,
    },
    /// List administrators (never their passwords)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete an administrator; their dashboard sessions end at once
    Delete { name: String },
}

pub fn run(ctx: &Context, args: HubArgs) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    // Options are accepted before or after a subcommand (`palisade hub
    // --config F token create`); only --join means nothing to one.
    if args.command.is_some() && args.join.is_some() {
        bail!("--join runs the hub on a bus; it has no meaning with a subcommand");
    }
    match args.command {
        None => {
            args.log.init()?;
            let options = options(&config, &args.place)?;
            match args.join.clone().or(config.hub.join.clone()) {
                None => palisade_hub::run(options)?,
                Some(url) => match super::bus::kind(&url)? {
                    super::bus::Kind::Nats => nats_worker(&config, &url, options)?,
                    super::bus::Kind::Mqtt => mqtt_hub(&config, &url, options)?,
                    super::bus::Kind::Hub => {
                        bail!("a hub does not join another hub: --join takes nats://… or mqtt://…")
                    }
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(HubCommand::Token(t)) => token(&config, &args.place, t),
        Some(HubCommand::Admin(a)) => admin(&config, &args.place, a),
        Some(HubCommand::Status { json }) => {
            let socket = args
                .place
                .hub_socket
                .clone()
                .unwrap_or(config.hub.socket.clone());
            match ask(&socket, &HubRequest::Status) {
                Ok(HubResponse::Status(s)) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        print!("{}", render::hub_status(&s));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Ok(other) => bail!("unexpected answer from the hub: {other:?}"),
                Err(e) => Err(hub_error(e, &socket)),
            }
        }
    }
}

/// `palisade hub --join nats://…`: a stateless policy worker.
fn nats_worker(config: &Config, url: &str, options: HubOptions) -> Result<()> {
    if !config.feed.is_empty() {
        tracing::warn!(
            "policy workers do not pull feeds (several would race); on a NATS bus each agent pulls the [[feed]]s of its own configuration"
        );
    }
    // A worker has no listener of its own: what it protects is the
    // brokers, never the host it happens to run on.
    let mut policy = options.policy;
    policy.protected = super::addresses::protected(
        &super::addresses::url_addresses(url),
        "a NATS server of the palisade network",
    );
    let worker = palisade_nats::WorkerOptions {
        nats: super::bus::nats_options(url, config)?,
        policy,
        allows: options.allows,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palisade-worker")
        .build()?;
    runtime
        .block_on(async {
            // Before the worker connects or says it runs.
            let stop = palisade_control::signal::shutdown();
            palisade_nats::run_worker(worker, stop).await
        })
        .map_err(anyhow::Error::msg)
}

/// `palisade hub --join mqtt://…`: the hub, bridged to an MQTT broker.
fn mqtt_hub(config: &Config, url: &str, mut options: HubOptions) -> Result<()> {
    // The broker carries every node's reports: never banned, allowed on
    // every node (the URL may come from --join rather than [hub] join).
    options.policy.protected.extend(super::addresses::protected(
        &super::addresses::url_addresses(url),
        "a broker of the palisade network",
    ));
    options.policy.protected.sort();
    options.policy.protected.dedup();
    let bridge = palisade_mqtt::BridgeOptions {
        mqtt: super::bus::mqtt_options(url, config)?,
        vallumd_topic: config.mqtt.vallumd_topic.clone(),
        vallumd_ban: config.mqtt.vallumd_ban,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palisade-hub")
        .build()?;
    runtime.block_on(async {
        // Before the hub listens or says it runs.
        let stop = palisade_control::signal::shutdown();
        let hub = palisade_hub::start(options).await?;
        let decider = std::sync::Arc::new(super::hubbus::HubDecider {
            hub: hub.hub.clone(),
        });
        let task = tokio::spawn(palisade_mqtt::run_bridge(bridge, decider));
        stop.await;
        task.abort();
        hub.stop().await;
        Ok(())
    })
}

/// What the hub never bans and every node allows: its own addresses, and
/// the broker's when it is bridged to one.
fn protected_addresses(
    config: &Config,
    listen: std::net::SocketAddr,
) -> Vec<(palisade_model::Net, String)> {
    use super::addresses::{hub_addresses, protected, url_addresses};
    let h = &config.hub;
    let mut out = protected(
        &hub_addresses(listen, &h.names, h.public_url.as_deref()),
        "the palisade hub",
    );
    if let Some(url) = &h.join {
        out.extend(protected(
            &url_addresses(url),
            "a broker of the palisade network",
        ));
    }
    out
}

/// The hub's options from the configuration and flags.
pub fn options(config: &Config, place: &HubPlace) -> Result<HubOptions> {
    let h = &config.hub;
    let certificate = match (&h.certificate, &h.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("[hub] needs both `certificate` and `key`, or neither"),
    };
    let mut quorum = std::collections::BTreeMap::new();
    for (source, k) in &h.quorum {
        let s = match source.as_str() {
            "detector" => Source::Detector,
            "report" => Source::Report,
            "feed" => Source::Feed,
            other => bail!(
                "[hub.quorum] {other:?} is not a source that can need a quorum: use detector, report or feed"
            ),
        };
        quorum.insert(s, *k);
    }
    let listen = place.listen.unwrap_or(h.listen);
    let span = |s: palisade_model::Span, what: &str| -> Result<std::time::Duration> {
        s.duration()
            .with_context(|| format!("[hub] {what} cannot be forever"))
    };
    Ok(HubOptions {
        state_dir: place.hub_state_dir.clone().unwrap_or(h.state_dir.clone()),
        listen,
        socket: place.hub_socket.clone().unwrap_or(h.socket.clone()),
        certificate,
        names: h.names.clone(),
        policy: PolicyOptions {
            default_ban: h.default_ban,
            suppress_window: span(h.suppress_window, "suppress_window")?,
            escalation: h
                .escalation
                .enabled
                .then(|| -> Result<Escalation> {
                    Ok(Escalation {
                        factor: h.escalation.factor,
                        max: span(h.escalation.max, "escalation.max")?,
                        forget_after: span(h.escalation.forget_after, "escalation.forget_after")?,
                    })
                })
                .transpose()?,
            quorum,
            quorum_window: span(h.quorum_window, "quorum_window")?,
            quorum_unverified: h.quorum_unverified.max(1),
            rate: RateLimit {
                per_second: h.rate.per_second,
                burst: h.rate.burst,
            },
            node_rate: RateLimit {
                per_second: h.node_rate.per_second,
                burst: h.node_rate.burst,
            },
            limits: palisade_policy::NodeLimits {
                longest_ban: span(h.limits.node_longest_ban, "limits.node_longest_ban")?,
                widest_v4: h.limits.node_widest_v4,
                widest_v6: h.limits.node_widest_v6,
            },
            guard: config.guard(),
            protected: protected_addresses(config, listen),
            node_networks: h.node_networks.clone(),
            rollup: config.rollup.rollup(),
        },
        allows: h
            .allow
            .iter()
            .map(|a| palisade_policy::StaticAllow {
                target: a.net,
                comment: a.comment.clone(),
                group: a.group.clone(),
            })
            .collect(),
        events_kept: h.events_kept.max(1),
        connections: palisade_hub::limits::ConnectionCaps {
            total: h.max_connections.max(1),
            per_client: h.max_connections_per_client.max(1),
        },
        feeds: config
            .feed
            .iter()
            .map(|f| -> Result<_> {
                let every = f
                    .every()
                    .duration()
                    .with_context(|| format!("[[feed]] {}: every cannot be forever", f.name))?;
                Ok((super::daemon::feed(f), every))
            })
            .collect::<Result<_>>()?,
    })
}

fn token(config: &Config, place: &HubPlace, cmd: TokenCommand) -> Result<ExitCode> {
    let socket = place
        .hub_socket
        .clone()
        .unwrap_or(config.hub.socket.clone());
    let request = match &cmd {
        TokenCommand::Create { name, .. } if !palisade_model::name::is_plain(name) => {
            bail!(
                "{name:?} is not a valid token name ({})",
                palisade_model::name::PLAIN
            )
        }
        TokenCommand::Create {
            name,
            kind,
            group,
            role,
            uses,
            expires,
        } => HubRequest::TokenCreate {
            name: name.clone(),
            kind: kind.clone(),
            group: group.clone(),
            role: Some(role.clone()),
            uses: *uses,
            expires_in: *expires,
        },
        TokenCommand::List { .. } => HubRequest::TokenList,
        TokenCommand::Revoke { name } => HubRequest::TokenRevoke { name: name.clone() },
    };
    let answer = ask_or_offline(config, place, &socket, &request)?;
    match answer {
        HubResponse::Token { token, name } => {
            // The secret goes to stdout once (so scripts can take it); the
            // advice on stderr never repeats it.
            println!("{token}");
            let read = matches!(&cmd, TokenCommand::Create { kind, .. } if kind == "read");
            if read {
                eprintln!(
                    "the read token {name:?} is shown only this once; it reads /v1/export.txt, /v1/decisions and /metrics (header `Authorization: Bearer TOKEN`) and cannot join"
                );
            } else {
                let file = super::JOIN_TOKEN_FILE;
                eprintln!(
                    "the token for {name:?} is shown only this once. On the server that joins, as root, keep it in a root-only file and join:\n  (umask 077; mkdir -p /etc/palisade; cat > {file})   # paste the token, then Ctrl-D\n  palisade agent --join https://HUB:PORT --token-file {file}"
                );
            }
        }
        HubResponse::Tokens { tokens } => {
            if matches!(cmd, TokenCommand::List { json: true }) {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print!("{}", render::tokens(&tokens));
            }
        }
        HubResponse::Revoked { name, count } => println!(
            "revoked {} named {name}",
            render::count(count, "token", "tokens")
        ),
        HubResponse::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the hub: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running hub, or works on its store when it is stopped.
fn ask_or_offline(
    config: &Config,
    place: &HubPlace,
    socket: &std::path::Path,
    request: &HubRequest,
) -> Result<HubResponse> {
    match ask(socket, request) {
        Ok(a) => Ok(a),
        Err(ClientError::NotRunning { .. } | ClientError::Stale { .. }) => {
            offline(config, place, request)
        }
        Err(e) => Err(hub_error(e, socket)),
    }
}

fn admin(config: &Config, place: &HubPlace, cmd: AdminCommand) -> Result<ExitCode> {
    let socket = place
        .hub_socket
        .clone()
        .unwrap_or(config.hub.socket.clone());
    let request = match &cmd {
        AdminCommand::Create {
            name,
            password_stdin,
        } => {
            palisade_hub::tokens::check_name(name)?;
            let password = if *password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                line.trim_end_matches(['\n', '\r']).to_string()
            } else {
                let first = prompt_password(&format!("password for {name}: "))?;
                palisade_hub::dashboard::admins::check_password(&first)?;
                let again = prompt_password("the same password again: ")?;
                if first != again {
                    bail!("the two passwords differ; nothing was created");
                }
                first
            };
            palisade_hub::dashboard::admins::check_password(&password)?;
            HubRequest::AdminCreate {
                name: name.clone(),
                password,
            }
        }
        AdminCommand::List { .. } => HubRequest::AdminList,
        AdminCommand::Delete { name } => HubRequest::AdminDelete { name: name.clone() },
    };
    match ask_or_offline(config, place, &socket, &request)? {
        HubResponse::AdminCreated { name } => {
            println!("created dashboard administrator {name}");
            eprintln!("log in at https://HUB:PORT/dashboard/ (the hub's address and port)");
        }
        HubResponse::Admins { admins } => {
            if matches!(cmd, AdminCommand::List { json: true }) {
                println!("{}", serde_json::to_string_pretty(&admins)?);
            } else {
                print!("{}", render::admins(&admins));
            }
        }
        HubResponse::AdminDeleted { name } => println!("deleted dashboard administrator {name}"),
        HubResponse::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the hub: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a password from the terminal without echoing it.
fn prompt_password(prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("no terminal to ask for the password: use --password-stdin");
    }
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!("cannot read the terminal's settings: use --password-stdin");
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; the settings are restored below.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // SAFETY: restores what tcgetattr returned.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Token operations on the hub's store while the hub is stopped.
fn offline(config: &Config, place: &HubPlace, request: &HubRequest) -> Result<HubResponse> {
    let options = options(config, place)?;
    let store = palisade_hub::open_store(&options.state_dir)?;
    let err = |e: &dyn std::fmt::Display| HubResponse::Error {
        message: e.to_string(),
    };
    Ok(match request {
        HubRequest::TokenCreate { .. } => {
            // Make the hub's certificate now if it has none, so the token
            // carries its pin.
            let identity = palisade_hub::identity::ensure(
                &options.state_dir,
                options.certificate.clone(),
                &options.names,
            )?;
            let made = palisade_hub::tokens::create_requested(&store, request, identity.pin)
                .expect("a token creation");
            match made {
                Ok((t, r)) => HubResponse::Token {
                    token: t.to_string(),
                    name: r.name,
                },
                Err(e) => err(&e),
            }
        }
        HubRequest::Status | HubRequest::FeedPull { .. } => {
            bail!("the hub is not running")
        }
        HubRequest::TokenList => HubResponse::Tokens {
            tokens: palisade_hub::tokens::list(&store)?,
        },
        HubRequest::TokenRevoke { name } => match palisade_hub::tokens::revoke(&store, name) {
            Ok(ids) => HubResponse::Revoked {
                name: name.clone(),
                count: ids.len() as u64,
            },
            Err(e) => err(&e),
        },
        HubRequest::AdminCreate { name, password } => {
            match palisade_hub::dashboard::admins::create(&store, name, password) {
                Ok(r) => HubResponse::AdminCreated { name: r.name },
                Err(e) => err(&e),
            }
        }
        HubRequest::AdminList => HubResponse::Admins {
            admins: palisade_hub::dashboard::admins::list(&store)?,
        },
        HubRequest::AdminDelete { name } => {
            match palisade_hub::dashboard::admins::delete(&store, name) {
                Ok(()) => HubResponse::AdminDeleted { name: name.clone() },
                Err(e) => err(&e),
            }
        }
    })
}

pub fn ask(socket: &std::path::Path, request: &HubRequest) -> Result<HubResponse, ClientError> {
    Client::connect(socket)?.request(request)
}

fn hub_error(e: ClientError, socket: &std::path::Path) -> anyhow::Error {
    match e {
        ClientError::NotRunning { .. } | ClientError::Stale { .. } => anyhow::anyhow!(
            "the palisade hub is not running (no control socket at {}); start it with `palisade hub` or `palisade up`",
            socket.display()
        ),
        other => other.into(),
    }
}

//! `palisade up`: the hub and an agent in one process on this server, the
//! first thing a newcomer runs. It prints the command that joins another
//! server.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use palisade_wire::{Token, TokenKind};

use super::Context;
use super::daemon::{LogArg, NodeNameArg, StateDirArg, config_error, require_root};
use super::hub::HubPlace;

#[derive(Debug, Args)]
#[command(
    after_help = "palisade up runs the hub (with its embedded store) and this server's agent,
joined to it, in the foreground. It prints the command that joins another
server; the join token it contains stays valid until revoked
(`palisade hub token revoke join`), and each server that uses it gets its
own credential.

Examples:
  palisade up
  palisade up --listen 198.51.100.1:7470

With [hub] join = \"mqtt://BROKER:1883\" in the configuration, the hub also takes
reports from that MQTT broker and publishes its decisions there.",
    mut_arg("state_dir", |a| a.help("Where this server's agent stores its decisions [default: from the config, else /var/lib/palisade]")),
    mut_arg("node_name", |a| a.help("This server's name [default: from the config, else the host name]"))
)]
pub struct UpArgs {
    #[command(flatten)]
    place: HubPlace,

    #[command(flatten)]
    state_dir: StateDirArg,

    #[command(flatten)]
    node_name: NodeNameArg,

    #[command(flatten)]
    log: LogArg,
}

/// What the hub thread hands to the agent once it listens.
struct Ready {
    listen: SocketAddr,
    local: Token,
    join: Token,
}

pub fn run(ctx: &Context, args: UpArgs) -> Result<ExitCode> {
    args.log.init()?;
    require_root()?;
    let config = match ctx.load_config() {
        Ok(c) => c,
        Err(e) => return Ok(config_error(e)),
    };
    let hub_options = super::hub::options(&config, &args.place)?;
    // With `[hub] join = "mqtt://…"` the hub is bridged to the broker too;
    // a NATS network has no embedded hub to run.
    let bridge = match &config.hub.join {
        None => None,
        Some(url) => match super::bus::kind(url)? {
            super::bus::Kind::Mqtt => Some(palisade_mqtt::BridgeOptions {
                mqtt: super::bus::mqtt_options(url, &config)?,
                vallumd_topic: config.mqtt.vallumd_topic.clone(),
                vallumd_ban: config.mqtt.vallumd_ban,
            }),
            _ => anyhow::bail!(
                "palisade up runs the embedded hub; on a NATS bus run policy workers (`palisade hub --join {url}`) and agents (`palisade agent --join {url}`) instead"
            ),
        },
    };
    let node = args.node_name.resolve(&config);

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready>>();
    let hub_dir = hub_options.state_dir.clone();
    let local_name = node.clone();
    let hub_thread = std::thread::Builder::new()
        .name("palisade-hub".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("palisade-hub")
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                // Before the hub listens or says it runs.
                let stop = palisade_control::signal::shutdown();
                let hub = match palisade_hub::start(hub_options).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let tokens = (|| -> Result<(Token, Token)> {
                    let store = &hub.hub.store;
                    let local = palisade_hub::kept_token(
                        store,
                        &hub_dir.join("local-agent.token"),
                        &local_name,
                        TokenKind::Node,
                        hub.pin(),
                    )?;
                    let join = palisade_hub::kept_token(
                        store,
                        &hub_dir.join("join.token"),
                        "join",
                        TokenKind::Join,
                        hub.pin(),
                    )?;
                    hub.hub.reload_tokens()?;
                    Ok((local, join))
                })();
                match tokens {
                    Ok((local, join)) => {
                        let _ = ready_tx.send(Ok(Ready {
                            listen: hub.listen(),
                            local,
                            join,
                        }));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        hub.stop().await;
                        return;
                    }
                }
                let bridged = bridge.map(|b| {
                    let decider = Arc::new(super::hubbus::HubDecider {
                        hub: hub.hub.clone(),
                    });
                    tokio::spawn(palisade_mqtt::run_bridge(b, decider))
                });
                stop.await;
                if let Some(t) = bridged {
                    t.abort();
                }
                hub.stop().await;
            });
        })?;
    let ready = ready_rx
        .recv()
        .map_err(|_| anyhow!("the hub stopped while starting"))?
        .context("starting the hub")?;

    let local_url = format!("https://{}", loopback_for(ready.listen));
    let public = config
        .hub
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", public_for(ready.listen)));
    println!(
        "palisade is up on this server: the hub listens on {}, and this server's agent ({node}) has joined it.",
        ready.listen
    );
    println!("To protect another server too, run this there as root:");
    println!();
    // The token goes into a root-only file, never onto a command line.
    let file = super::JOIN_TOKEN_FILE;
    // `echo` is the shell's own: no process shows the token in `ps`.
    println!(
        "  (umask 077; mkdir -p /etc/palisade; echo {} > {file})",
        ready.join
    );
    println!("  palisade agent --join {public} --token-file {file}");
    println!();
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let link = palisade_link::HubLink::new(&local_url, &ready.local)?;
    let state_dir = args.state_dir.resolve(&config);
    let socket = ctx.socket.clone().unwrap_or(config.agent.socket.clone());
    let (listen, names, public_url) = (
        ready.listen,
        config.hub.names.clone(),
        config.hub.public_url.clone(),
    );
    let infrastructure: palisade_agent::Resolver = Arc::new(move || {
        super::addresses::protected(
            &super::addresses::hub_addresses(listen, &names, public_url.as_deref()),
            "the palisade hub on this server",
        )
    });
    let (options, enforcers) = super::agent::agent_options(
        &config,
        node,
        state_dir,
        socket,
        Some(Arc::new(link)),
        Some(infrastructure),
    )?;
    let result = palisade_agent::run(options, enforcers);
    // The agent stopped on a signal, which also stops the hub.
    let _ = hub_thread.join();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The address the local agent uses to reach a hub listening on `listen`.
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() && listen.is_ipv4() => {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), listen.port())
        }
        ip if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), listen.port())
        }
        _ => listen,
    }
}

/// The address other servers probably reach the hub at: the listen address
/// if it is specific, else this host's first non-loopback address.
fn public_for(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        super::addresses::host_addresses()
            .into_iter()
            .find(|a| {
                !a.is_loopback()
                    && !super::addresses::is_link_local(a)
                    && a.is_ipv4() == listen.is_ipv4()
            })
            .unwrap_or(listen.ip())
    } else {
        listen.ip()
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

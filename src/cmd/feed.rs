//! `palisade feed`: pull a blocklist now (with progress), or show the
//! feeds' state.
//!
//! Feeds run where the hub runs when this host runs one (bans for the
//! whole network), else on the agent (bans for this server only). A pull
//! by hand keeps the list in that process's state directory and asks it
//! to apply it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use palisade_config::{Config, FeedConfig};
use palisade_control::hub::{HubRequest, HubResponse};
use palisade_control::{Client, ClientError, FeedApplied, Request, Response};
use palisade_feed::{Feed, Progress, Pulled};
use palisade_model::Timestamp;

use super::Context;
use super::hub::HubPlace;

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Pull a feed now and apply it (the running hub's, else the agent's)
    Pull {
        /// The feed's name, from a [[feed]] table of the configuration
        name: String,
        #[command(flatten)]
        place: Place,
    },
    /// Show the configured feeds: entries, last pull, last error
    List {
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct Place {
    #[command(flatten)]
    hub: HubPlace,
    /// The agent's state directory [default: from the config, else /var/lib/palisade]
    #[arg(long, env = "PALISADE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Where feeds live on this host: the hub's place when a hub runs here,
/// else the agent's.
enum Target {
    Hub { dir: PathBuf, socket: PathBuf },
    Agent { dir: PathBuf, socket: PathBuf },
}

impl Target {
    fn find(ctx: &Context, config: &Config, place: &Place) -> Result<Target> {
        let hub_socket = place
            .hub
            .hub_socket
            .clone()
            .unwrap_or(config.hub.socket.clone());
        if hub_socket.exists() {
            let state = place
                .hub
                .hub_state_dir
                .clone()
                .unwrap_or(config.hub.state_dir.clone());
            return Ok(Target::Hub {
                dir: palisade_feed::dir(&state),
                socket: hub_socket,
            });
        }
        let state = place
            .state_dir
            .clone()
            .unwrap_or(config.agent.state_dir.clone());
        Ok(Target::Agent {
            dir: palisade_feed::dir(&state),
            socket: ctx.socket.clone().unwrap_or(config.agent.socket.clone()),
        })
    }

    fn dir(&self) -> &PathBuf {
        match self {
            Target::Hub { dir, .. } | Target::Agent { dir, .. } => dir,
        }
    }

    fn who(&self) -> &'static str {
        match self {
            Target::Hub { .. } => "the hub (for the whole network)",
            Target::Agent { .. } => "this server's agent",
        }
    }

    /// Asks the running hub or agent to apply the feed's last good list.
    fn load(&self, name: &str) -> Result<Option<FeedApplied>, anyhow::Error> {
        match self {
            Target::Hub { socket, .. } => {
                match super::hub::ask(
                    socket,
                    &HubRequest::FeedLoad {
                        name: name.to_string(),
                    },
                ) {
                    Ok(HubResponse::Feed(a)) => Ok(Some(a)),
                    Ok(HubResponse::Error { message }) => Err(anyhow!(message)),
                    Ok(other) => Err(anyhow!("unexpected answer from the hub: {other:?}")),
                    Err(ClientError::NotRunning { .. } | ClientError::Stale { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Target::Agent { socket, .. } => {
                let mut client = match Client::connect(socket) {
                    Ok(c) => c,
                    Err(ClientError::NotRunning { .. } | ClientError::Stale { .. }) => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                };
                match client.call(&Request::FeedLoad {
                    name: name.to_string(),
                })? {
                    Response::Feed(a) => Ok(Some(a)),
                    other => Err(anyhow!("unexpected answer from the agent: {other:?}")),
                }
            }
        }
    }
}

fn configured<'c>(config: &'c Config, name: &str) -> Result<&'c FeedConfig> {
    config.feed.iter().find(|f| f.name == name).ok_or_else(|| {
        let known: Vec<&str> = config.feed.iter().map(|f| f.name.as_str()).collect();
        if known.is_empty() {
            anyhow!("no feed is configured: add a [[feed]] table with name and url")
        } else {
            anyhow!(
                "no feed is named {name:?}; configured: {}",
                known.join(", ")
            )
        }
    })
}

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

pub fn run(ctx: &Context, cmd: FeedCommand) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    match cmd {
        FeedCommand::Pull { name, place } => pull(ctx, &config, &name, &place),
        FeedCommand::List { place, json } => list(ctx, &config, &place, json),
    }
}

fn pull(ctx: &Context, config: &Config, name: &str, place: &Place) -> Result<ExitCode> {
    let fc = configured(config, name)?;
    let target = Target::find(ctx, config, place)?;
    let feed = feed(fc);
    let bar = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_draw = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(palisade_feed::pull(&feed, target.dir(), |p: &Progress| {
        if bar && last_draw.elapsed().as_millis() >= 100 {
            last_draw = Instant::now();
            draw(name, p);
        }
    }));
    if bar {
        eprint!("\r\x1b[2K");
    }
    match result {
        Ok(Pulled::NotModified) => {
            println!("{name}: not modified since the last pull");
        }
        Ok(Pulled::Updated {
            entries,
            malformed,
            examples,
        }) => {
            println!(
                "{name}: {} entries pulled in {:.1}s",
                entries.len(),
                started.elapsed().as_secs_f64()
            );
            if malformed > 0 {
                println!("  {malformed} line(s) were not addresses or networks and were skipped:");
                for e in examples {
                    println!("    {e}");
                }
            }
        }
        Err(e) => {
            palisade_feed::record_error(target.dir(), &feed, &e.to_string());
            let st = palisade_feed::state(target.dir(), name);
            let kept = match st.fetched {
                Some(t) => format!(
                    "its last good list ({} entries, pulled {}) stays",
                    st.entries,
                    palisade_model::time::relative(t, Timestamp::now())
                ),
                None => "there is no earlier list".to_string(),
            };
            bail!("the feed {name} failed: {e}; {kept}");
        }
    }
    match target.load(name)? {
        Some(a) => println!(
            "applied by {}: {} added, {} removed, {} refused (allowed or protected), {} already banned otherwise; {} in all",
            target.who(),
            a.added,
            a.removed,
            a.refused,
            a.kept,
            a.total
        ),
        None => println!(
            "{} is not running; the list is kept and applied when it starts",
            target.who()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn draw(name: &str, p: &Progress) {
    let mb = p.bytes as f64 / 1e6;
    let line = match p.total {
        Some(t) if t > 0 => {
            let pct = (p.bytes as f64 / t as f64 * 100.0).min(100.0);
            let filled = (pct / 5.0) as usize;
            format!(
                "{name} [{}{}] {pct:5.1}%  {mb:.1} MB  {} lines  {} entries",
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                p.lines,
                p.entries
            )
        }
        _ => format!(
            "{name}  {mb:.1} MB  {} lines  {} entries",
            p.lines, p.entries
        ),
    };
    eprint!("\r\x1b[2K{line}");
    let _ = std::io::stderr().flush();
}

fn list(ctx: &Context, config: &Config, place: &Place, json: bool) -> Result<ExitCode> {
    let target = Target::find(ctx, config, place)?;
    let states: Vec<(String, String, palisade_feed::FeedState)> = config
        .feed
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                f.url.clone(),
                palisade_feed::state(target.dir(), &f.name),
            )
        })
        .collect();
    if json {
        let v: Vec<serde_json::Value> = states
            .iter()
            .map(|(n, u, s)| serde_json::json!({ "name": n, "url": u, "state": s }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if states.is_empty() {
        println!("no feed is configured ([[feed]] tables)");
        return Ok(ExitCode::SUCCESS);
    }
    let now = Timestamp::now();
    println!("feeds, run by {}:", target.who());
    for (name, url, s) in states {
        let fetched = s
            .fetched
            .map(|t| palisade_model::time::relative(t, now))
            .unwrap_or_else(|| "never".into());
        println!("  {name}  {url}");
        println!("    {} entries, pulled {fetched}", s.entries);
        if s.malformed > 0 {
            println!("    {} malformed line(s) skipped", s.malformed);
        }
        if let Some(e) = s.last_error {
            println!("    LAST PULL FAILED: {e} (the last good list stays)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

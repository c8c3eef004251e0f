//! `palisade feed`: have the running hub or agent pull a blocklist now,
//! or show the feeds' state.
//!
//! Feeds run where the hub runs when this host runs one (bans for the
//! whole network), else on the agent (bans for this server only). A pull
//! by hand is done by that process, not by the CLI: the download uses the
//! daemon's network namespace, routes and environment, and the feed must
//! be one of the daemon's own configuration (only its name is sent).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use palisade_config::Config;
use palisade_control::hub::{HubRequest, HubResponse};
use palisade_control::{Client, ClientError, FeedPulled, Request, Response};
use palisade_model::Timestamp;

use super::Context;
use super::daemon::StateDirArg;
use super::hub::HubPlace;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum FeedCommand {
    /// Have the running hub (else the agent) pull one of its feeds now and apply it
    Pull {
        /// The feed's name, from a [[feed]] table of the hub's or agent's configuration
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
    #[command(flatten)]
    state_dir: StateDirArg,
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
        let state = place.state_dir.resolve(config);
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

    /// Asks the running hub or agent to pull the feed now and apply it.
    fn pull(&self, name: &str) -> Result<FeedPulled> {
        let not_running = || {
            anyhow!(
                "{} is not running, so nothing pulled the feed {name}; it pulls its feeds when it starts",
                self.who()
            )
        };
        let request_name = name.to_string();
        match self {
            Target::Hub { socket, .. } => {
                match super::hub::ask(socket, &HubRequest::FeedPull { name: request_name }) {
                    Ok(HubResponse::FeedPulled(p)) => Ok(p),
                    Ok(HubResponse::Error { message }) => Err(anyhow!(message)),
                    Ok(other) => Err(anyhow!("unexpected answer from the hub: {other:?}")),
                    Err(ClientError::NotRunning { .. } | ClientError::Stale { .. }) => {
                        Err(not_running())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Target::Agent { socket, .. } => {
                let mut client = match Client::connect(socket) {
                    Ok(c) => c,
                    Err(ClientError::NotRunning { .. } | ClientError::Stale { .. }) => {
                        return Err(not_running());
                    }
                    Err(e) => return Err(e.into()),
                };
                match client.call(&Request::FeedPull { name: request_name }) {
                    Ok(Response::FeedPulled(p)) => Ok(p),
                    Ok(other) => Err(anyhow!("unexpected answer from the agent: {other:?}")),
                    Err(ClientError::Agent(e)) => Err(anyhow!(e.message)),
                    Err(e) => Err(e.into()),
                }
            }
        }
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
    let target = Target::find(ctx, config, place)?;
    if std::io::stderr().is_terminal() {
        eprintln!("asking {} to pull {name} now…", target.who());
    }
    let pulled = target.pull(name)?;
    print!("{}", show_pulled(&pulled, target.who()));
    Ok(ExitCode::SUCCESS)
}

/// What a pull by hand did, for the operator.
fn show_pulled(p: &FeedPulled, who: &str) -> String {
    let mut out = String::new();
    let seconds = p.millis as f64 / 1000.0;
    match p.entries {
        None => out.push_str(&format!(
            "{}: not modified since the last pull ({seconds:.1}s)\n",
            p.name
        )),
        Some(n) => out.push_str(&format!(
            "{}: {} pulled in {seconds:.1}s\n",
            p.name,
            render::count(n, "entry", "entries")
        )),
    }
    if p.malformed > 0 {
        out.push_str(&format!(
            "  {} skipped (neither an address nor a network):\n",
            render::count(p.malformed, "line", "lines")
        ));
        for e in &p.examples {
            out.push_str(&format!("    {e}\n"));
        }
    }
    if let Some(a) = p.applied {
        out.push_str(&format!(
            "applied by {who}: {} added, {} removed, {} refused (allowed or protected), {} already banned otherwise; {} in all\n",
            a.added, a.removed, a.refused, a.kept, a.total
        ));
    }
    out
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
        println!(
            "    {}, pulled {fetched}",
            render::count(s.entries, "entry", "entries")
        );
        if s.malformed > 0 {
            println!(
                "    {} skipped",
                render::count(s.malformed, "malformed line", "malformed lines")
            );
        }
        if let Some(e) = s.last_error {
            println!("    LAST PULL FAILED: {e} (the last good list stays)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_control::FeedApplied;

    #[test]
    fn a_pull_by_hand_is_told_in_words_that_agree_with_its_counts() {
        let one = FeedPulled {
            name: "lvl1".into(),
            entries: Some(1),
            malformed: 1,
            examples: vec!["line 2: \"x\": not an address".into()],
            millis: 1500,
            applied: Some(FeedApplied {
                total: 1,
                added: 1,
                ..FeedApplied::default()
            }),
        };
        assert_eq!(
            show_pulled(&one, "this server's agent"),
            "lvl1: 1 entry pulled in 1.5s\n  1 line skipped (neither an address nor a network):\n    line 2: \"x\": not an address\napplied by this server's agent: 1 added, 0 removed, 0 refused (allowed or protected), 0 already banned otherwise; 1 in all\n"
        );
        let many = FeedPulled {
            entries: Some(3),
            malformed: 2,
            examples: vec![],
            applied: None,
            ..one.clone()
        };
        assert!(show_pulled(&many, "x").starts_with("lvl1: 3 entries pulled"));
        assert!(show_pulled(&many, "x").contains("  2 lines skipped"));
        let same = FeedPulled {
            entries: None,
            malformed: 0,
            ..many
        };
        assert_eq!(
            show_pulled(&same, "x"),
            "lvl1: not modified since the last pull (1.5s)\n"
        );
    }
}

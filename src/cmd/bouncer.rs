//! `palisade bouncer`: keys for CrowdSec bouncers that pull this agent's
//! decisions (`[crowdsec] listen`). A key is printed once; the agent keeps
//! only its hash, and a running agent picks up changes within a second.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use palisade_crowdsec::Keys;

use super::Context;
use super::daemon::StateDirArg;

#[derive(Debug, Subcommand)]
pub enum BouncerCommand {
    /// Make a key for a CrowdSec bouncer; it is printed once, only its hash is kept
    Add {
        /// A name for the bouncer (letters, digits, '.', '_', '-')
        name: String,
        #[command(flatten)]
        place: Place,
    },
    /// Show the bouncers: last pull, address, usage reports and version as they reported them
    List {
        #[command(flatten)]
        place: Place,
    },
    /// Remove a bouncer; its key stops working at once
    Delete {
        name: String,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Debug, Args)]
pub struct Place {
    #[command(flatten)]
    state_dir: StateDirArg,
}

impl Place {
    fn keys(&self, ctx: &Context) -> Result<Keys> {
        // The configuration is read only when no directory is given.
        let dir = match &self.state_dir.state_dir {
            Some(d) => d.clone(),
            None => self.state_dir.resolve(&ctx.load_config()?),
        };
        Ok(Keys::new(&dir))
    }
}

pub fn run(ctx: &Context, cmd: BouncerCommand) -> Result<ExitCode> {
    match cmd {
        BouncerCommand::Add { name, place } => {
            let key = place.keys(ctx)?.add(&name)?;
            eprintln!(
                "bouncer {name:?} added; its API key (shown only now, put it in the bouncer's api_key):"
            );
            println!("{key}");
        }
        BouncerCommand::List { place } => {
            let keys = place.keys(ctx)?;
            let seen = keys.seen()?;
            println!(
                "{:<24} {:<22} {:<22} {:<16} {:>7} VERSION",
                "NAME", "CREATED", "LAST PULL", "ADDRESS", "REPORTS"
            );
            for b in keys.list()? {
                let s = seen.get(&b.name).cloned().unwrap_or_default();
                println!(
                    "{:<24} {:<22} {:<22} {:<16} {:>7} {}",
                    b.name,
                    b.created.rfc3339(),
                    s.last_pull.map_or("never".into(), |t| t.rfc3339()),
                    s.address.as_deref().unwrap_or("-"),
                    s.usage_reports,
                    s.version.as_deref().unwrap_or("-"),
                );
            }
        }
        BouncerCommand::Delete { name, place } => {
            place.keys(ctx)?.delete(&name)?;
            println!("bouncer {name:?} deleted; its key no longer works");
        }
    }
    Ok(ExitCode::SUCCESS)
}

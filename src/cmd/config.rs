//! `config init` and `config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use palisade_config::{Config, DEFAULT_PATH, TEMPLATE};

use super::Context;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented configuration with every key at its default
    #[command(after_help = "Example:\n  palisade config init > /etc/palisade/palisade.toml")]
    Init,
    /// Check a configuration file; errors name their line and column
    Check {
        /// The file to check [default: --config, else /etc/palisade/palisade.toml]
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Init => {
            print!("{TEMPLATE}");
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => {
            let path = file
                .or_else(|| ctx.config.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
            match Config::load(&path, true) {
                Ok(c) => {
                    println!("{}: ok", path.display());
                    println!(
                        "  state_dir {}, socket {}, default ban {}, {} static allow entr{}, nftables table inet {}",
                        c.agent.state_dir.display(),
                        c.agent.socket.display(),
                        c.agent.default_ban,
                        c.allow.len(),
                        if c.allow.len() == 1 { "y" } else { "ies" },
                        c.nftables.table
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

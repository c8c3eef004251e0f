//! `config init` and `config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use palisade_config::{Config, DEFAULT_PATH};

use super::Context;
use crate::render::count;

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
            print!("{}", palisade_config::template());
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => {
            let path = file
                .or_else(|| ctx.config.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
            let checked = match std::fs::read_to_string(&path) {
                Ok(text) => Config::check(&text, &path),
                // Unreadable: the same error as every command gives.
                Err(_) => Config::load(&path, true).map_err(|e| vec![e]),
            };
            match checked {
                Ok(c) => {
                    println!("{}: ok", path.display());
                    println!(
                        "  state_dir {}, socket {}, default ban {}, {}, {}",
                        c.agent.state_dir.display(),
                        c.agent.socket.display(),
                        c.agent.default_ban,
                        count(
                            c.allow.len() as u64,
                            "static allow entry",
                            "static allow entries"
                        ),
                        count(c.enforcers().len() as u64, "enforcer", "enforcers")
                    );
                    // Rules are only fully checked (fail2ban filters read,
                    // patterns compiled) by compiling them.
                    let rules = if c.detect.builtin {
                        palisade_detect::builtin::with_builtin(c.rule.clone())
                    } else {
                        c.rule.clone()
                    };
                    if let Err(e) = palisade_detect::Engine::compile(&rules) {
                        eprintln!("{}: {e}", path.display());
                        return Ok(ExitCode::FAILURE);
                    }
                    println!(
                        "  detection: {}, {}",
                        count(c.source.len() as u64, "source", "sources"),
                        count(
                            rules.iter().filter(|r| r.enabled).count() as u64,
                            "rule",
                            "rules"
                        )
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    if errors.len() > 1 {
                        eprintln!("{}", count(errors.len() as u64, "error", "errors"));
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

//! `config init` and `config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use palisade_config::{Config, DEFAULT_PATH};

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
            print!("{}", palisade_config::template());
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
                        "  state_dir {}, socket {}, default ban {}, {} static allow entr{}, {} enforcer(s)",
                        c.agent.state_dir.display(),
                        c.agent.socket.display(),
                        c.agent.default_ban,
                        c.allow.len(),
                        if c.allow.len() == 1 { "y" } else { "ies" },
                        c.enforcers().len()
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
                        "  detection: {} source{}, {} rule{}",
                        c.source.len(),
                        if c.source.len() == 1 { "" } else { "s" },
                        rules.iter().filter(|r| r.enabled).count(),
                        if rules.len() == 1 { "" } else { "s" }
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

//! `palisade`: one binary for the agent and every command that talks to it.

// The doc comments of the clap definitions are the commands' help text,
// written for a terminal (`[agent] join` names a configuration table,
// `<bantime>` an argument), not rustdoc markup.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cmd;
mod render;

// glibc's malloc spends up to 40% of a busy agent's CPU on the short strings
// of decisions (a joining agent decodes a whole snapshot of them); mimalloc
// halves the time 10,000 simulated agents take to join (docs/capacity.md).
// Without transparent huge pages (`no_thp`): with them, 10,000 idle hub
// streams held 367 MB where glibc held 258 MB; without, 264 MB. An agent
// holding a million bans takes about a quarter more memory than on glibc.
// The benchmarks declare the same allocator, so they measure this binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A distributed firewall: every server drops what one server sees.
///
/// Start with `palisade up` on one server: it runs the hub and this server's
/// agent, and prints the command that joins other servers. Or run
/// `palisade agent --local-only` to protect one server on its own. Then ban,
/// allow and explain addresses with the commands below; they talk to the
/// agent over its control socket, which only root may use.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, max_term_width = 100)]
struct Cli {
    /// Configuration file [default: /etc/palisade/palisade.toml, if present]
    #[arg(long, global = true, env = "PALISADE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The agent's control socket, for the commands that talk to the agent
    /// (the hub's is --hub-socket) [default: from the config, else
    /// /run/palisade/palisade.sock]
    #[arg(long, global = true, env = "PALISADE_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub and this server's agent in one process: start here
    Up(cmd::up::UpArgs),
    /// Run the agent on this server, in the foreground
    Agent(cmd::agent::AgentArgs),
    /// Run the hub that agents join, or manage its tokens
    Hub(cmd::hub::HubArgs),
    /// Ban addresses or networks: drop their traffic and cut their connections
    Ban(cmd::decide::BanArgs),
    /// Lift bans
    Unban(cmd::decide::UnbanArgs),
    /// Never ban these addresses or networks, whoever asks
    Allow(cmd::decide::AllowArgs),
    /// Remove allow entries
    Unallow(cmd::decide::UnallowArgs),
    /// List the active bans and allows
    List(cmd::show::ListArgs),
    /// Tell whether an address is blocked, by which entry, since when and why
    Explain(cmd::show::ExplainArgs),
    /// Show whether the agent runs and what it holds
    Status(cmd::show::StatusArgs),
    /// Try detection rules on a log file, like fail2ban-regex (nothing is banned)
    Detect(cmd::detect::DetectArgs),
    /// Hand an attacker to palisade from fail2ban, psad or any program
    Report(cmd::report::ReportArgs),
    /// Be sshguard's firewall backend: its blocks become bans shared with the network
    SshguardBackend(cmd::sshguard::SshguardArgs),
    /// Install the binary, a hardened systemd unit, the manual, completions and the fail2ban action
    Install(cmd::install::InstallArgs),
    /// List the log sources the agent reads: configured, or found on this server
    Sources(cmd::sources::SourcesArgs),
    /// Check what this server needs to run palisade, and say what to fix
    Doctor(cmd::doctor::DoctorArgs),
    /// Pull external blocklists now, or show their state
    #[command(subcommand)]
    Feed(cmd::feed::FeedCommand),
    /// Keys for CrowdSec bouncers that pull this agent's decisions ([crowdsec] listen)
    #[command(subcommand)]
    Bouncer(cmd::bouncer::BouncerCommand),
    /// Print the default configuration, or check a configuration file
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = cmd::Context {
        config: cli.config,
        socket: cli.socket,
    };
    let result = match cli.command {
        Command::Up(a) => cmd::up::run(&ctx, a),
        Command::Agent(a) => cmd::agent::run(&ctx, a),
        Command::Hub(a) => cmd::hub::run(&ctx, a),
        Command::Report(a) => cmd::report::run(&ctx, a),
        Command::SshguardBackend(a) => ctx
            .socket_path()
            .and_then(|socket| cmd::sshguard::run(a, &socket)),
        Command::Install(a) => cmd::install::run(&ctx, a, <Cli as clap::CommandFactory>::command()),
        Command::Sources(a) => cmd::sources::run(&ctx, a),
        Command::Doctor(a) => cmd::doctor::run(&ctx, a),
        Command::Ban(a) => cmd::decide::ban(&ctx, a),
        Command::Unban(a) => cmd::decide::unban(&ctx, a),
        Command::Allow(a) => cmd::decide::allow(&ctx, a),
        Command::Unallow(a) => cmd::decide::unallow(&ctx, a),
        Command::List(a) => cmd::show::list(&ctx, a),
        Command::Explain(a) => cmd::show::explain(&ctx, a),
        Command::Status(a) => cmd::show::status(&ctx, a),
        Command::Detect(a) => ctx
            .load_config()
            .and_then(|c| cmd::detect::run(a, c.rule, c.detect.limits())),
        Command::Config(c) => cmd::config::run(&ctx, c),
        Command::Feed(c) => cmd::feed::run(&ctx, c),
        Command::Bouncer(c) => cmd::bouncer::run(&ctx, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

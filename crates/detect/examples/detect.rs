//! `palisade detect` as a standalone binary, built from the same source
//! file as the subcommand (`src/cmd/detect.rs` of the `palisade` package):
//!
//! `cargo run -p palisade-detect --example detect -- --fail2ban-filter /etc/fail2ban/filter.d/sshd.conf /var/log/auth.log`

#[path = "../../../src/cmd/detect.rs"]
mod detect;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "palisade-detect")]
struct Cli {
    #[command(flatten)]
    args: detect::DetectArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match detect::run(cli.args, Vec::new(), palisade_detect::Limits::default()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

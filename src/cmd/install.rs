//! `palisade install`: the binary, a hardened systemd unit, the fail2ban
//! action, and the configuration file if there is none.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};

use super::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// This server's agent only (joins a hub, or --local-only in the config)
    Agent,
    /// Hub and agent on this server (`palisade up`)
    Up,
    /// The hub only
    Hub,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Writes (never overwriting a configuration you already have):
  /usr/local/bin/palisade                     this binary
  /etc/systemd/system/palisade.service        a hardened unit for the chosen role
  /etc/palisade/palisade.toml                 the commented default, if absent
  /etc/fail2ban/action.d/palisade.conf        when fail2ban is installed
and prints how to hook psad in. Then:
  systemctl daemon-reload && systemctl enable --now palisade"
)]
pub struct InstallArgs {
    /// What the service runs
    #[arg(long, value_enum, default_value = "agent")]
    role: Role,
    /// Install under this directory instead of / (to inspect, or to build an image)
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Also write the fail2ban action when fail2ban does not seem installed
    #[arg(long)]
    fail2ban: bool,
}

const FAIL2BAN_ACTION: &str = "\
# palisade: share fail2ban's bans with every server of the palisade network.
# Written by `palisade install`. Use it in a jail next to your usual action:
#   action = %(action_)s
#            palisade
# Every ban is reported to this server's palisade agent, which bans the
# address here at once and reports it to the network; the hub's policy
# decides the network-wide ban (length, repeat offenders, quorum).

[Definition]
actionstart =
actionstop =
actioncheck =
# The ban lasts the jail's bantime (the hub's policy may lengthen it for a
# repeat offender). fail2ban's unban (bantime over, or `fail2ban-client set
# JAIL unbanip IP`) lifts this server's ban if it is the one this jail
# reported; an operator's ban stays, and the network's ban runs its course.
actionban = /usr/local/bin/palisade report fail2ban <name> <ip> --for <bantime>
actionunban = /usr/local/bin/palisade report --withdraw fail2ban <name> <ip>

[Init]
";

const PSAD: &str = "\
psad: report its blocks to palisade with, in /etc/psad/psad.conf,
  ENABLE_AUTO_IDS               Y;
  AUTO_IDS_DANGER_LEVEL         3;
  IPTABLES_BLOCK_METHOD         Y;
  ENABLE_EXT_BLOCK_SCRIPT_EXEC  Y;
  EXTERNAL_BLOCK_SCRIPT         /usr/local/bin/palisade report psad scan SRCIP;
then `systemctl restart psad` (psad runs the script only when it auto-blocks,
after its own iptables block, for IPv4 scanners).";

/// A systemd unit for `role`, hardened: palisade needs CAP_NET_ADMIN (the
/// firewall, conntrack, socket diag) and to read logs, nothing more.
pub fn unit(role: Role) -> String {
    let (what, exec) = match role {
        Role::Agent => ("agent", "/usr/local/bin/palisade agent"),
        Role::Up => ("hub and agent", "/usr/local/bin/palisade up"),
        Role::Hub => ("hub", "/usr/local/bin/palisade hub"),
    };
    format!(
        "\
[Unit]
Description=palisade distributed firewall ({what})
Documentation=man:palisade(8)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec}
Restart=on-failure
RestartSec=2s
# Bans stay in the kernel while palisade is stopped; stopping is quick.
TimeoutStopSec=20s

RuntimeDirectory=palisade
RuntimeDirectoryMode=0700
StateDirectory=palisade
StateDirectoryMode=0700
ConfigurationDirectory=palisade

# Firewall, conntrack and socket kills need CAP_NET_ADMIN; reading logs
# needs CAP_DAC_READ_SEARCH; a syslog socket for a group needs CAP_CHOWN.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/palisade /run/palisade
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077

[Install]
WantedBy=multi-user.target
"
    )
}

pub fn run(_ctx: &Context, args: InstallArgs) -> Result<ExitCode> {
    let root = &args.root;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut done = Vec::new();

    let bin = at("/usr/local/bin/palisade");
    let me = std::env::current_exe().context("finding this binary")?;
    if std::fs::canonicalize(&me).ok() != std::fs::canonicalize(&bin).ok() {
        write_file(&bin, &std::fs::read(&me)?, 0o755)?;
        done.push(format!("installed {}", bin.display()));
    }

    let unit_path = at("/etc/systemd/system/palisade.service");
    write_file(&unit_path, unit(args.role).as_bytes(), 0o644)?;
    done.push(format!("wrote {} ({:?})", unit_path.display(), args.role));

    let config = at(palisade_config::DEFAULT_PATH);
    if config.exists() {
        done.push(format!("kept your {}", config.display()));
    } else {
        write_file(&config, palisade_config::template().as_bytes(), 0o600)?;
        done.push(format!(
            "wrote {} (every option, commented)",
            config.display()
        ));
    }

    let f2b = at("/etc/fail2ban");
    if f2b.is_dir() || args.fail2ban {
        let action = at("/etc/fail2ban/action.d/palisade.conf");
        write_file(&action, FAIL2BAN_ACTION.as_bytes(), 0o644)?;
        done.push(format!(
            "wrote {} (add `palisade` to a jail's actions)",
            action.display()
        ));
    }

    for line in &done {
        println!("{line}");
    }
    println!();
    println!("{PSAD}");
    println!();
    println!(
        "Next: edit {} (for an agent: [agent] join and token), then",
        palisade_config::DEFAULT_PATH
    );
    println!("  systemctl daemon-reload && systemctl enable --now palisade");
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write beside and rename, so a running binary or a unit is never half written.
    let tmp = path.with_extension("palisade-new");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

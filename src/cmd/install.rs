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
  /usr/local/share/man/man8/palisade*.8       the manual, one page per command
  /usr/local/share/{bash-completion,zsh,fish}/…  shell completions
and prints how to hook psad in. Then:
  systemctl daemon-reload && systemctl enable --now palisade

With --package, lays out the Debian package's files under --root instead:
the binary in /usr/bin, a unit for every role in /lib/systemd/system
(palisade, palisade-hub, palisade-up), the manual and completions under
/usr/share, the default configuration and the fail2ban action."
)]
pub struct InstallArgs {
    /// What the service runs
    #[arg(long, value_enum, default_value = "agent", conflicts_with = "package")]
    role: Role,
    /// Install under this directory instead of / (to inspect, or to build an image)
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Also write the fail2ban action when fail2ban does not seem installed
    #[arg(long)]
    fail2ban: bool,
    /// Lay out a distribution package's files under --root (see below)
    #[arg(long)]
    package: bool,
}

/// Where things go: a local install from the binary, or a distribution
/// package.
struct Layout {
    bin: &'static str,
    units: &'static str,
    man8: &'static str,
    bash: &'static str,
    zsh: &'static str,
    fish: &'static str,
}

const LOCAL: Layout = Layout {
    bin: "/usr/local/bin/palisade",
    units: "/etc/systemd/system",
    man8: "/usr/local/share/man/man8",
    bash: "/usr/local/share/bash-completion/completions/palisade",
    zsh: "/usr/local/share/zsh/site-functions/_palisade",
    fish: "/usr/local/share/fish/vendor_completions.d/palisade.fish",
};

const PACKAGE: Layout = Layout {
    bin: "/usr/bin/palisade",
    units: "/lib/systemd/system",
    man8: "/usr/share/man/man8",
    bash: "/usr/share/bash-completion/completions/palisade",
    zsh: "/usr/share/zsh/vendor-completions/_palisade",
    fish: "/usr/share/fish/vendor_completions.d/palisade.fish",
};

/// The fail2ban action, calling palisade at `bin`.
fn fail2ban_action(bin: &str) -> String {
    format!(
        "\
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
actionban = {bin} report fail2ban <name> <ip>
# Network bans expire by the hub's policy, not with this jail.
actionunban =

[Init]
"
    )
}

/// How to hook psad in, calling palisade at `bin`.
fn psad(bin: &str) -> String {
    format!(
        "\
psad: report its blocks to palisade by adding to /etc/psad/psad.conf
  ENABLE_EXT_BLOCK_SCRIPT_EXEC  Y;
  EXTERNAL_BLOCK_SCRIPT         {bin} report psad anything SRCIP;
then `systemctl restart psad`."
    )
}

/// Exit status of `palisade agent`, `up` and `hub` when their configuration
/// cannot work (sysexits' EX_CONFIG): the units do not restart on it, since
/// a restart cannot fix it.
pub const EX_CONFIG: u8 = 78;

/// The unit's file name for `role` in a package (a local install has one
/// unit, `palisade.service`, for the role chosen).
fn unit_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "palisade.service",
        Role::Hub => "palisade-hub.service",
        Role::Up => "palisade-up.service",
    }
}

/// A systemd unit for `role` running palisade at `bin`, hardened: palisade
/// needs CAP_NET_ADMIN (the firewall, conntrack, socket diag) and to read
/// logs, nothing more. `packaged`: the package ships a unit for every role,
/// and `palisade-up` (hub and agent) excludes the other two.
pub fn unit(role: Role, bin: &str, packaged: bool) -> String {
    let (what, exec) = match role {
        // With no network configured the agent protects this server on its
        // own rather than failing: a fresh install is protected at once.
        Role::Agent => ("agent", format!("{bin} agent --local-only-unless-joined")),
        Role::Up => ("hub and agent", format!("{bin} up")),
        Role::Hub => ("hub", format!("{bin} hub")),
    };
    let conflicts = if packaged && role == Role::Up {
        "Conflicts=palisade.service palisade-hub.service\n"
    } else {
        ""
    };
    let man = match role {
        Role::Agent => "man:palisade-agent(8)",
        Role::Up => "man:palisade-up(8)",
        Role::Hub => "man:palisade-hub(8)",
    };
    format!(
        "\
[Unit]
Description=palisade distributed firewall ({what})
Documentation=man:palisade(8) {man}
After=network-online.target
Wants=network-online.target
{conflicts}
[Service]
Type=simple
ExecStart={exec}
Restart=on-failure
RestartSec=2s
# A configuration that cannot work exits with EX_CONFIG and says why in the
# journal; restarting would not help.
RestartPreventExitStatus={EX_CONFIG}
# Bans stay in the kernel while palisade is stopped; stopping is quick.
TimeoutStopSec=20s
# The hub keeps a stream (a socket) per joined server.
LimitNOFILE=65536

RuntimeDirectory=palisade
RuntimeDirectoryMode=0700
# The agent and the hub share /run/palisade: one stopping keeps the other's socket.
RuntimeDirectoryPreserve=yes
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

/// The manual pages, `palisade.8` and one per subcommand
/// (`palisade-hub-token-create.8`), as (file name, roff text).
pub fn man_pages(cli: clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, out)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .section("8")
            .manual("palisade manual")
            .source(format!("palisade {}", env!("CARGO_PKG_VERSION")));
        let mut text = Vec::new();
        man.render(&mut text)?;
        out.push((man.get_filename(), text));
        Ok(())
    }
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let mut out = Vec::new();
    walk(cli, &mut out)?;
    out.sort();
    Ok(out)
}

/// The completion script of `shell` for `cli`.
pub fn completion(cli: &clap::Command, shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli.clone(), "palisade", &mut out);
    out
}

pub fn run(_ctx: &Context, args: InstallArgs, cli: clap::Command) -> Result<ExitCode> {
    let root = &args.root;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let layout = if args.package { &PACKAGE } else { &LOCAL };
    let mut done = Vec::new();

    let bin = at(layout.bin);
    let me = std::env::current_exe().context("finding this binary")?;
    if std::fs::canonicalize(&me).ok() != std::fs::canonicalize(&bin).ok() {
        write_file(&bin, &std::fs::read(&me)?, 0o755)?;
        done.push(format!("installed {}", bin.display()));
    }

    let roles: &[Role] = if args.package {
        &[Role::Agent, Role::Hub, Role::Up]
    } else {
        std::slice::from_ref(&args.role)
    };
    for &role in roles {
        let name = if args.package {
            unit_name(role)
        } else {
            "palisade.service"
        };
        let unit_path = at(layout.units).join(name);
        write_file(
            &unit_path,
            unit(role, layout.bin, args.package).as_bytes(),
            0o644,
        )?;
        done.push(format!("wrote {} ({role:?})", unit_path.display()));
    }

    let config = at(palisade_config::DEFAULT_PATH);
    if config.exists() && !args.package {
        done.push(format!("kept your {}", config.display()));
    } else {
        write_file(&config, palisade_config::template().as_bytes(), 0o600)?;
        done.push(format!(
            "wrote {} (every option, commented)",
            config.display()
        ));
    }

    let f2b = at("/etc/fail2ban");
    if f2b.is_dir() || args.fail2ban || args.package {
        let action = at("/etc/fail2ban/action.d/palisade.conf");
        write_file(&action, fail2ban_action(layout.bin).as_bytes(), 0o644)?;
        done.push(format!(
            "wrote {} (add `palisade` to a jail's actions)",
            action.display()
        ));
    }

    let pages = man_pages(cli.clone())?;
    for (name, text) in &pages {
        write_file(&at(layout.man8).join(name), text, 0o644)?;
    }
    done.push(format!(
        "wrote {} manual pages to {} (man palisade)",
        pages.len(),
        at(layout.man8).display()
    ));
    use clap_complete::Shell;
    for (shell, path) in [
        (Shell::Bash, layout.bash),
        (Shell::Zsh, layout.zsh),
        (Shell::Fish, layout.fish),
    ] {
        write_file(&at(path), &completion(&cli, shell), 0o644)?;
        done.push(format!("wrote {} ({shell} completion)", at(path).display()));
    }

    for line in &done {
        println!("{line}");
    }
    if args.package {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!("{}", psad(layout.bin));
    println!();
    println!(
        "Next: edit {} (for an agent: [agent] join and token; without them it protects this server on its own), then",
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

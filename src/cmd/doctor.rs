//! `palisade doctor`: checks what a palisade server needs and says what to
//! fix. Every check reads; the only thing it changes is the ban probe's own
//! pair of network namespaces, removed afterwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use clap::Args;
use palisade_config::Config;
use palisade_control::proto::{Request, Response};
use palisade_detect::SourceConfig;
use palisade_enforce::EnforcerConfig;
use serde::Serialize;
use serde_json::Value;

use super::Context;
use super::daemon::StateDirArg;

#[derive(Debug, Args)]
#[command(
    after_help = "Checks, in order: root, the configuration, the state directory, the
running agent and its enforcers, palisade's nftables table, other firewalls
and where their chains sit relative to palisade's (a drop before palisade's
chain overrides its allowlist), the XDP drop on each of `xdp_devices`, kernel support for the configured enforcers
(ipset, xt_recent's ip_list_tot), the hub or bus (reachable, certificate
matching the token's pin, clock skew), the log sources (readable), and that
a ban really drops traffic (a probe between two network namespaces of its
own, removed afterwards; --no-probe skips it).

Exit status: 0 when every check passed, 1 when something needs fixing."
)]
pub struct DoctorArgs {
    /// One JSON object: every check with its status, message and fix
    #[arg(long)]
    json: bool,
    /// Skip the ban probe (it creates two network namespaces for a second)
    #[arg(long)]
    no_probe: bool,
    #[command(flatten)]
    state_dir: StateDirArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Skip,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Level,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn ok(name: &'static str, message: impl Into<String>) -> Check {
    Check {
        name,
        status: Level::Ok,
        message: message.into(),
        fix: None,
    }
}

fn skip(name: &'static str, message: impl Into<String>) -> Check {
    Check {
        status: Level::Skip,
        ..ok(name, message)
    }
}

fn bad(
    level: Level,
    name: &'static str,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        status: level,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

pub fn run(ctx: &Context, args: DoctorArgs) -> Result<ExitCode> {
    let mut checks = Vec::new();
    let root = is_root();
    checks.push(if root {
        ok("root", "running as root")
    } else {
        bad(
            Level::Fail,
            "root",
            "not running as root: the kernel, the control socket and the state cannot be read",
            "run `sudo palisade doctor`",
        )
    });
    let config = match ctx.load_config() {
        Ok(c) => {
            checks.push(ok("config", "the configuration is valid"));
            c
        }
        Err(e) => {
            checks.push(bad(
                Level::Fail,
                "config",
                format!("{e:#}"),
                "fix the configuration (`palisade config check` points at the line)",
            ));
            Config::default()
        }
    };
    let state_dir = args.state_dir.resolve(&config);
    checks.push(check_state_dir(&state_dir));
    let socket = ctx.socket.clone().unwrap_or(config.agent.socket.clone());
    checks.push(check_agent(&socket));
    let ruleset = nft_ruleset();
    for e in config.enforcers() {
        match &e {
            EnforcerConfig::Nftables(c) => {
                checks.push(check_table(&ruleset, &c.table));
                checks.push(check_hooks(&ruleset, &c.table));
                if !c.xdp_devices.is_empty() {
                    checks.push(check_xdp(&c.xdp_devices));
                }
            }
            EnforcerConfig::Ipset(_) => checks.push(check_ipset()),
            EnforcerConfig::XtRecent(_) => checks.push(check_xt_recent()),
            EnforcerConfig::Command(_) => {}
        }
    }
    checks.push(check_network(&config));
    let (_, sources) = super::sources::for_agent(&config);
    if sources.is_empty() {
        checks.push(skip("sources", "no log sources: detection is off"));
    }
    for f in &sources {
        checks.push(check_source(&f.source));
    }
    checks.push(if args.no_probe {
        skip("probe", "skipped (--no-probe)")
    } else if !root {
        skip("probe", "needs root")
    } else {
        match probe() {
            Ok(m) => ok("probe", m),
            Err(e) => bad(
                Level::Fail,
                "probe",
                format!("{e:#}"),
                "see that the kernel has nf_tables with set timeouts (modprobe nf_tables) and that `ip netns` works",
            ),
        }
    });

    let healthy = checks
        .iter()
        .all(|c| matches!(c.status, Level::Ok | Level::Skip));
    if args.json {
        let out = serde_json::json!({ "healthy": healthy, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            let mark = match c.status {
                Level::Ok => "ok  ",
                Level::Skip => "skip",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{mark} {:<10} {}", c.name, c.message);
            if let Some(fix) = &c.fix {
                println!("     {:<10} fix: {fix}", "");
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn check_state_dir(dir: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => skip(
            "state",
            format!(
                "{} does not exist yet (the agent creates it)",
                dir.display()
            ),
        ),
        Err(e) => bad(
            Level::Fail,
            "state",
            format!("cannot read {}: {e}", dir.display()),
            "run as root",
        ),
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => bad(
            Level::Fail,
            "state",
            format!(
                "{} is owned by uid {} with mode {:o}: someone other than root can change palisade's decisions",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            format!("chown root: {0} && chmod 700 {0}", dir.display()),
        ),
        Ok(m) => ok(
            "state",
            format!(
                "{} belongs to root (mode {:o})",
                dir.display(),
                m.mode() & 0o7777
            ),
        ),
    }
}

fn check_agent(socket: &Path) -> Check {
    let status = palisade_control::Client::connect(socket)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|mut c| {
            c.call(&Request::Status { kernel: false })
                .map_err(|e| anyhow!("{e}"))
        });
    match status {
        Ok(Response::Status(s)) => {
            let sick: Vec<String> = s
                .enforcers
                .iter()
                .filter(|e| !e.healthy)
                .map(|e| format!("{}: {}", e.name, e.detail))
                .collect();
            if sick.is_empty() {
                ok(
                    "agent",
                    format!(
                        "running ({}, {}, {})",
                        s.mode,
                        crate::render::count(s.bans + s.ban_networks, "ban", "bans"),
                        crate::render::count(s.allows, "allow", "allows")
                    ),
                )
            } else {
                bad(
                    Level::Fail,
                    "agent",
                    format!("running, but an enforcer is unhealthy: {}", sick.join("; ")),
                    "see the agent's log (journalctl -u palisade)",
                )
            }
        }
        Ok(other) => bad(
            Level::Fail,
            "agent",
            format!("unexpected answer from the agent: {other:?}"),
            "restart the agent",
        ),
        Err(e) => bad(
            Level::Fail,
            "agent",
            format!("the agent does not answer on {}: {e}", socket.display()),
            "start it: systemctl start palisade (or palisade agent --local-only)",
        ),
    }
}

/// The kernel's ruleset as `nft -j` prints it, or why it cannot be read.
fn nft_ruleset() -> Result<Value> {
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run nft: {e} (apt install nftables)"))?;
    if !out.status.success() {
        bail!(
            "nft list ruleset failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The ruleset's objects of one kind (`table`, `chain`, `rule`).
fn objects<'a>(ruleset: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

fn check_table(ruleset: &Result<Value>, table: &str) -> Check {
    let ruleset = match ruleset {
        Ok(r) => r,
        Err(e) => return bad(Level::Fail, "table", format!("{e:#}"), "install nftables"),
    };
    let found = objects(ruleset, "table").any(|t| t["family"] == "inet" && t["name"] == table);
    if found {
        ok("table", format!("table inet {table} is in the kernel"))
    } else {
        bad(
            Level::Fail,
            "table",
            format!(
                "table inet {table} is not in the kernel: nothing palisade decided is enforced"
            ),
            "start the agent (systemctl restart palisade); it puts the table back from its store",
        )
    }
}

/// A base chain on a hook a packet from outside passes: where it sits on
/// the packet's way in.
struct BaseChain {
    family: String,
    table: String,
    name: String,
    hook: String,
    prio: i64,
}

impl BaseChain {
    /// Ingress, then prerouting, then input or forward.
    fn stage(&self) -> u8 {
        match self.hook.as_str() {
            "ingress" => 0,
            "prerouting" => 1,
            _ => 2,
        }
    }

    /// Whether one packet can meet both chains: input and forward are
    /// different ways, everything before them is on both.
    fn same_way(&self, other: &BaseChain) -> bool {
        !(self.stage() == 2 && other.stage() == 2 && self.hook != other.hook)
    }

    /// Whether a packet meets this chain before `other` (on the same way).
    fn before(&self, other: &BaseChain) -> bool {
        (self.stage(), self.prio) < (other.stage(), other.prio)
    }
}

fn base_chains(ruleset: &Value) -> Vec<BaseChain> {
    objects(ruleset, "chain")
        .filter_map(|c| {
            let hook = c["hook"].as_str()?;
            let family = c["family"].as_str()?;
            let on_the_way_in = matches!(hook, "ingress" | "prerouting" | "input" | "forward")
                && matches!(family, "ip" | "ip6" | "inet" | "netdev");
            on_the_way_in.then(|| BaseChain {
                family: family.to_string(),
                table: c["table"].as_str().unwrap_or_default().to_string(),
                name: c["name"].as_str().unwrap_or_default().to_string(),
                hook: hook.to_string(),
                prio: c["prio"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}

/// Whether a chain drops or rejects anything (a rule or its policy).
fn drops(ruleset: &Value, c: &BaseChain) -> bool {
    let policy = objects(ruleset, "chain").any(|x| {
        x["family"] == *c.family
            && x["table"] == *c.table
            && x["name"] == *c.name
            && x["policy"] == "drop"
    });
    policy
        || objects(ruleset, "rule").any(|r| {
            r["family"] == *c.family
                && r["table"] == *c.table
                && r["chain"] == *c.name
                && r["expr"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|x| x.get("drop").is_some() || x.get("reject").is_some())
                })
        })
}

/// Other firewalls' base chains on the way in, where they sit relative to
/// palisade's, and whether one drops traffic before palisade's chains see
/// it (then palisade's allowlist cannot save what it drops).
fn check_hooks(ruleset: &Result<Value>, table: &str) -> Check {
    let Ok(ruleset) = ruleset else {
        return skip("firewall", "the ruleset cannot be read");
    };
    let (ours, theirs): (Vec<BaseChain>, Vec<BaseChain>) = base_chains(ruleset)
        .into_iter()
        .partition(|c| c.family == "inet" && c.table == table);
    if ours.is_empty() {
        return skip(
            "firewall",
            format!("table inet {table} has no chains to compare with"),
        );
    }
    let describe = |c: &BaseChain| {
        format!(
            "table {} {} chain {} (hook {}, priority {}{})",
            c.family,
            c.table,
            c.name,
            c.hook,
            c.prio,
            manager(ruleset, &c.family, &c.table)
                .map(|m| format!(", {m}"))
                .unwrap_or_default()
        )
    };
    let first: Vec<String> = ours
        .iter()
        .map(|c| format!("{} {}", c.hook, c.prio))
        .collect();
    let mut before_dropping = Vec::new();
    let mut others = Vec::new();
    for c in &theirs {
        // palisade's chains on this packet's way (input and forward are
        // different ways).
        let on_its_way: Vec<&BaseChain> = ours.iter().filter(|p| c.same_way(p)).collect();
        if !on_its_way.is_empty() && on_its_way.iter().all(|p| c.before(p)) && drops(ruleset, c) {
            before_dropping.push(describe(c));
        } else {
            others.push(describe(c));
        }
    }
    if !before_dropping.is_empty() {
        return bad(
            Level::Warn,
            "firewall",
            format!(
                "{} drops traffic before palisade's chains ({}): what palisade allows can be dropped there",
                before_dropping.join("; "),
                first.join(", ")
            ),
            "move those drop rules after palisade's chains (a later hook or a higher priority), or give palisade's chains an earlier priority in its [[enforcer]]",
        );
    }
    if others.is_empty() {
        ok("firewall", "no other firewall on the way in")
    } else {
        ok(
            "firewall",
            format!(
                "palisade's chains ({}) come first; also there: {}",
                first.join(", "),
                others.join("; ")
            ),
        )
    }
}

/// The firewall manager behind a table, by the names it gives its table or
/// chains (ufw and docker add their chains to iptables' `filter` table).
fn manager(ruleset: &Value, family: &str, table: &str) -> Option<&'static str> {
    let chains: Vec<&str> = objects(ruleset, "chain")
        .filter(|c| c["family"] == family && c["table"] == table)
        .filter_map(|c| c["name"].as_str())
        .collect();
    let has = |prefix: &str| chains.iter().any(|c| c.starts_with(prefix));
    if table == "firewalld" {
        Some("firewalld")
    } else if has("ufw") {
        Some("ufw")
    } else if has("DOCKER") {
        Some("docker")
    } else if table == "filter" && has("INPUT") {
        Some("iptables")
    } else {
        None
    }
}

/// The set types the ipset enforcer uses, with timeouts, created in a
/// throwaway network namespace (ipsets belong to one), gone when it exits.
fn check_ipset() -> Check {
    let script = "ipset create t1 hash:ip timeout 1 && ipset create t2 hash:net timeout 1 && \
                  ipset create t3 hash:net family inet6 timeout 1";
    match Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => ok(
            "ipset",
            "the kernel has hash:ip and hash:net sets with timeouts",
        ),
        Ok(o) => bad(
            Level::Fail,
            "ipset",
            format!(
                "the kernel refuses palisade's ipset types: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "modprobe ip_set_hash_ip ip_set_hash_net (and apt install ipset)",
        ),
        Err(e) => bad(
            Level::Fail,
            "ipset",
            format!("cannot run unshare: {e}"),
            "apt install util-linux",
        ),
    }
}

fn check_xt_recent() -> Check {
    let path = "/sys/module/xt_recent/parameters/ip_list_tot";
    match std::fs::read_to_string(path).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(n)) if n >= 10_000 => ok(
            "xt_recent",
            format!("recent lists hold up to {n} addresses"),
        ),
        Ok(Ok(n)) => bad(
            Level::Warn,
            "xt_recent",
            format!(
                "recent lists hold at most {n} addresses (ip_list_tot): older bans are pushed out"
            ),
            "echo 'options xt_recent ip_list_tot=65536' > /etc/modprobe.d/xt_recent.conf, then reload xt_recent",
        ),
        _ => bad(
            Level::Fail,
            "xt_recent",
            "xt_recent is not loaded".to_string(),
            "add the iptables rule with -m recent (it loads the module)",
        ),
    }
}

/// The program name palisade's XDP drop is loaded with (`palisade-xdp`).
const XDP_PROGRAM: &str = "palisade_drop";

/// What runs on the XDP hook of each of `xdp_devices`, as `ip link` says:
/// palisade's drop (the agent attaches it at start and it ends with the
/// agent), nothing, another program, or no such interface.
fn check_xdp(devices: &[String]) -> Check {
    let mut lines = Vec::new();
    let mut all_ok = true;
    for d in devices {
        let out = std::process::Command::new("ip")
            .args(["-d", "link", "show", "dev", d])
            .output();
        let text = match &out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
            _ => {
                all_ok = false;
                lines.push(format!("{d}: no such interface"));
                continue;
            }
        };
        let program = text.split("prog/xdp ").nth(1).map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[0] == "name")
                .map_or("an unnamed program", |w| w[1])
                .to_string()
        });
        match program {
            Some(p) if p == XDP_PROGRAM => lines.push(format!("{d}: palisade's XDP drop runs")),
            Some(p) => {
                all_ok = false;
                lines.push(format!(
                    "{d}: another XDP program runs ({p}), so palisade's cannot"
                ));
            }
            None => {
                all_ok = false;
                lines.push(format!("{d}: palisade's XDP drop is not attached"));
            }
        }
    }
    let message = lines.join("; ");
    if all_ok {
        ok("xdp", message)
    } else {
        bad(
            Level::Warn,
            "xdp",
            message,
            "the agent attaches its XDP drop at start and logs why it cannot (no such interface, no XDP in the driver, another program); the nftables table still drops banned traffic there",
        )
    }
}

/// The configured network: reachable, and for a hub its certificate and
/// clock.
fn check_network(config: &Config) -> Check {
    let Some(url) = &config.agent.join else {
        return skip("network", "no network joined (local-only)");
    };
    let kind = match super::bus::kind(url) {
        Ok(k) => k,
        Err(e) => return bad(Level::Fail, "network", format!("{e:#}"), "fix [agent] join"),
    };
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split([',', '/']).next().unwrap_or(rest);
    let hostport = hostport
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(hostport);
    let default_port = match kind {
        super::bus::Kind::Hub => 7470,
        super::bus::Kind::Nats => 4222,
        super::bus::Kind::Mqtt => 1883,
    };
    let addr = match resolve(hostport, default_port) {
        Ok(a) => a,
        Err(e) => {
            return bad(
                Level::Fail,
                "network",
                format!("{url}: {e:#}"),
                "fix [agent] join",
            );
        }
    };
    let tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            return bad(
                Level::Fail,
                "network",
                format!("{url} is unreachable: {e}"),
                "see that the hub runs and that the firewall between lets this server reach its port",
            );
        }
    };
    if kind != super::bus::Kind::Hub {
        return ok("network", format!("{url} is reachable"));
    }
    let token = match config.agent.token.clone().map(Ok).or_else(|| {
        config
            .agent
            .token_file
            .as_ref()
            .map(std::fs::read_to_string)
    }) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return bad(
                Level::Fail,
                "network",
                format!("cannot read the token file: {e}"),
                "fix [agent] token_file",
            );
        }
        None => {
            return bad(
                Level::Fail,
                "network",
                "no token to join the hub with",
                "set [agent] token or token_file",
            );
        }
    };
    let token: palisade_wire::Token = match token.trim().parse() {
        Ok(t) => t,
        Err(e) => {
            return bad(
                Level::Fail,
                "network",
                format!("{e}"),
                "use the token `palisade hub token create` printed",
            );
        }
    };
    match hub_date(tcp, hostport, token.pin) {
        Err(e) => bad(
            Level::Fail,
            "network",
            format!("{url}: {e:#}"),
            "use a token from this hub (`palisade hub token create`), or see who answers at that address",
        ),
        Ok(None) => ok(
            "network",
            format!("{url} is reachable and its certificate matches the pin"),
        ),
        Ok(Some(skew)) if skew.abs() > 10 => bad(
            Level::Warn,
            "network",
            format!(
                "{url} is reachable and its certificate matches the pin, but its clock differs from this server's by {skew} s: ban expiries are off by as much"
            ),
            "run NTP on both (systemd-timesyncd or chrony)",
        ),
        Ok(Some(skew)) => ok(
            "network",
            format!(
                "{url} is reachable, its certificate matches the pin, clocks agree within {} s",
                skew.abs()
            ),
        ),
    }
}

fn resolve(hostport: &str, default_port: u16) -> Result<SocketAddr> {
    let bare = hostport.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if hostport.parse::<SocketAddr>().is_ok() || hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    with_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{hostport} has no address"))
}

/// A TLS handshake with the hub trusting exactly the pinned certificate,
/// then one request, to read the hub's clock: its skew in seconds (hub
/// minus here), if it sent a Date.
fn hub_date(mut tcp: TcpStream, hostport: &str, pin: Option<[u8; 32]>) -> Result<Option<i64>> {
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(3)))?;
    let config = palisade_wire::tls::client_config(pin)?;
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| anyhow!("{host} is not a host name"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let date = String::from_utf8_lossy(&head).lines().find_map(|l| {
        l.strip_prefix("date: ")
            .or_else(|| l.strip_prefix("Date: "))
            .map(str::to_string)
    });
    Ok(date.and_then(|d| http_date(&d)).map(|t| t - now))
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

fn check_source(source: &SourceConfig) -> Check {
    let name = source.name();
    match source {
        SourceConfig::File { path, .. } => match std::fs::File::open(path) {
            Ok(_) => ok("sources", format!("{name} is readable")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bad(
                Level::Warn,
                "sources",
                format!(
                    "{name}: {} does not exist (it is followed once it appears)",
                    path.display()
                ),
                "check the path, or that the program logs there",
            ),
            Err(e) => bad(
                Level::Fail,
                "sources",
                format!("{name}: {e}"),
                "run the agent as root",
            ),
        },
        SourceConfig::Journal {
            journalctl,
            directory,
            ..
        } => {
            let mut cmd = Command::new(journalctl);
            cmd.args(["-n", "0", "-q"]).stdin(Stdio::null());
            if let Some(d) = directory {
                cmd.arg("-D").arg(d);
            }
            match cmd.output() {
                Ok(o) if o.status.success() => {
                    ok("sources", format!("{name}: the journal is readable"))
                }
                Ok(o) => bad(
                    Level::Fail,
                    "sources",
                    format!(
                        "{name}: journalctl fails: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    "see that systemd-journald runs",
                ),
                Err(e) => bad(
                    Level::Fail,
                    "sources",
                    format!("{name}: cannot run {}: {e}", journalctl.display()),
                    "install systemd",
                ),
            }
        }
        _ => skip(
            "sources",
            format!("{name}: created by the agent when it starts"),
        ),
    }
}

/// A ban in palisade's own table really drops traffic: two namespaces of
/// the doctor's own joined by a veth pair, a listener in one, palisade's
/// nftables enforcer banning the other, a connection attempt before and
/// after. The namespaces (and with them the table) are removed afterwards.
fn probe() -> Result<String> {
    let pid = std::process::id();
    let pair = Namespaces::create(pid)?;
    let (a, b) = (&pair.names[0], &pair.names[1]);
    let server: SocketAddr = "198.18.254.2:7499".parse()?;
    let client: palisade_model::Net = "198.18.254.1".parse()?;
    let listener = in_netns(b, move || std::net::TcpListener::bind(server))??;
    let connect = || {
        in_netns(a, move || {
            TcpStream::connect_timeout(&server, Duration::from_millis(700)).is_ok()
        })
    };
    // A new veth pair carries traffic only once the kernel has handled its
    // carrier coming up, which a busy machine does up to a second later
    // (a fresh-clone run under load failed its only 700 ms attempt): a few
    // attempts before calling the pair broken.
    let mut reachable = false;
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        if connect()? {
            reachable = true;
            break;
        }
    }
    if !reachable {
        bail!("the probe could not connect even before the ban (veth between its namespaces)");
    }
    in_netns(b, move || -> Result<()> {
        let mut nft = palisade_enforce::build(&EnforcerConfig::Nftables(Default::default()))?;
        let ban = palisade_enforce::Entry {
            action: palisade_model::Action::Ban,
            net: client,
            expires: Some(palisade_model::Timestamp::now().saturating_add(Duration::from_secs(60))),
            comment: Some("palisade doctor".into()),
            rule: None,
            list: None,
        };
        nft.replace_all(&mut std::iter::once(ban))?;
        Ok(())
    })??;
    let dropped = !connect()?;
    drop(listener);
    if dropped {
        Ok(
            "a timed ban in palisade's table dropped the probe's traffic (namespaces removed)"
                .into(),
        )
    } else {
        bail!("the probe's connection went through after palisade banned its address")
    }
}

/// The probe's two namespaces; dropping removes them.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(pid: u32) -> Result<Namespaces> {
        let ns = Namespaces {
            names: vec![
                format!("palisade-doctor-{pid}-a"),
                format!("palisade-doctor-{pid}-b"),
            ],
        };
        let (a, b) = (&ns.names[0], &ns.names[1]);
        let (va, vb) = (format!("pdoc{pid}a"), format!("pdoc{pid}b"));
        for args in [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
            ],
            vec!["-n", a, "addr", "add", "198.18.254.1/30", "dev", &va],
            vec!["-n", b, "addr", "add", "198.18.254.2/30", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
        ] {
            let out = Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread of its own inside the named network namespace
/// (sockets it creates stay in that namespace).
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(Path::new("/run/netns").join(name))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd changes only this thread's
        // network namespace; the thread ends after `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow!("the probe's thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(chains: &[(&str, &str, &str, &str, i64, bool)]) -> Result<Value> {
        let mut all = Vec::new();
        for (family, table, name, hook, prio, drop) in chains {
            all.push(
                serde_json::json!({"chain": {"family": family, "table": table, "name": name,
                "hook": hook, "prio": prio, "policy": "accept"}}),
            );
            if *drop {
                all.push(
                    serde_json::json!({"rule": {"family": family, "table": table, "chain": name,
                    "expr": [{"match": {}}, {"drop": null}]}}),
                );
            }
        }
        Ok(serde_json::json!({ "nftables": all }))
    }

    #[test]
    fn a_drop_is_named_only_where_packets_meet_it_before_palisades_chains() {
        // palisade dropping in prerouting (raw), with an input chain too.
        let ours = [
            ("inet", "palisade", "prerouting", "prerouting", -300, true),
            ("inet", "palisade", "input", "input", -10, false),
        ];
        let with = |theirs: (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            i64,
            bool,
        )| {
            let mut all = ours.to_vec();
            all.push(theirs);
            check_hooks(&ruleset(&all), "palisade")
        };
        let early = with(("ip", "foreign", "early", "prerouting", -400, true));
        assert_eq!(early.status, Level::Warn, "{}", early.message);
        assert!(
            early.message.contains("table ip foreign chain early"),
            "{}",
            early.message
        );
        for later in [
            ("ip", "filter", "INPUT", "input", -100, true),
            ("ip", "foreign", "late", "prerouting", -150, true),
            ("inet", "firewalld", "filter_INPUT", "input", 10, true),
        ] {
            let c = with(later);
            assert_eq!(c.status, Level::Ok, "{}", c.message);
        }
        let harmless = with(("ip", "nat", "PREROUTING", "prerouting", -400, false));
        assert_eq!(harmless.status, Level::Ok, "{}", harmless.message);
        // palisade only on input and forward: a forward drop is on another way.
        let old = [
            ("inet", "palisade", "input", "input", -10, true),
            ("ip", "filter", "FORWARD", "forward", -100, true),
        ];
        assert_eq!(check_hooks(&ruleset(&old), "palisade").status, Level::Ok);
    }

    #[test]
    fn http_dates_are_read() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date("Fri, 04 Dec 2026 19:00:00 GMT"),
            Some(1_796_410_800)
        );
        // What a hostile server may send instead.
        for bad in [
            "yesterday",
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
            "Sun, x Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37:12 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad:?}");
        }
    }
}

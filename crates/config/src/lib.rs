//! palisade's configuration: one TOML file, every key optional and
//! documented in [`TEMPLATE`] (what `palisade config init` prints).
//!
//! Values are validated while parsing (addresses, durations, ranges), so
//! every mistake is reported with the line and column where it is, in the
//! `path:line:column: message` form editors understand. Unknown keys are
//! errors too: a misspelt key silently ignored is a firewall rule silently
//! missing.

use std::fmt;
use std::path::{Path, PathBuf};

mod narrow;

use palisade_detect::{RuleConfig, SourceConfig};
use palisade_enforce::EnforcerConfig;
use palisade_model::{Net, Span};
use serde::{Deserialize, Deserializer};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/palisade/palisade.toml";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/palisade";
/// The default control socket.
pub const DEFAULT_SOCKET: &str = "/run/palisade/palisade.sock";

/// The commented default configuration without the detection examples; see
/// [`template`] for the whole file `palisade config init` prints.
pub const TEMPLATE: &str = include_str!("template.toml");

/// The commented default configuration: [`TEMPLATE`] followed by the
/// detection examples, commented out. Every key it sets is at its default,
/// so a copy of it behaves exactly like no file at all.
pub fn template() -> String {
    let mut out = String::from(TEMPLATE);
    for example in [
        palisade_enforce::EXAMPLE_TOML,
        palisade_detect::EXAMPLE_TOML,
    ] {
        for line in example.trim_start_matches('\n').lines() {
            if line.is_empty() || line.starts_with('#') {
                out.push_str(line);
            } else {
                out.push_str("# ");
                out.push_str(line);
            }
            out.push('\n');
        }
    }
    out
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This server's name and group (`[node]`).
    pub node: NodeConfig,
    /// How the agent runs and where it joins (`[agent]`).
    pub agent: AgentConfig,
    /// The widest bans and allow entries accepted (`[guard]`).
    pub guard: GuardConfig,
    /// Static allowlist: never banned, whoever asks.
    pub allow: Vec<AllowEntry>,
    /// Where decisions go (`[[enforcer]]`); none means palisade's own
    /// nftables table.
    pub enforcer: Vec<EnforcerConfig>,
    /// Detection limits and built-in rules (`[detect]`).
    pub detect: DetectConfig,
    /// The hub, for the server that runs one (`[hub]`).
    pub hub: HubConfig,
    /// Where log lines come from (`[[source]]`).
    pub source: Vec<SourceConfig>,
    /// Detection rules (`[[rule]]`), besides or replacing the built-in ones.
    pub rule: Vec<RuleConfig>,
    /// The NATS bus (`nats://` and `tls://` join addresses).
    pub nats: NatsConfig,
    /// The MQTT bus (`mqtt://` and `mqtts://` join addresses).
    pub mqtt: MqttConfig,
    /// CrowdSec's bouncer API on this agent (`[crowdsec]`).
    pub crowdsec: CrowdsecConfig,
    /// External blocklists pulled over HTTP(S) (`[[feed]]`).
    pub feed: Vec<FeedConfig>,
    /// Many banned hosts of one network ban the network (`[rollup]`): on
    /// the hub, and on an agent that is not joined to one.
    pub rollup: RollupConfig,
}

/// When many banned hosts of one network become one network ban.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// Distinct banned hosts of one network that ban it whole.
    #[serde(deserialize_with = "rollup_hosts")]
    pub hosts: u32,
    /// Member bans count when made within this long.
    #[serde(deserialize_with = "rollup_window")]
    pub window: std::time::Duration,
    /// Roll up IPv4 hosts (off by default: one /24 often holds unrelated
    /// customers).
    pub ipv4: bool,
    /// Prefix length of the IPv4 network hosts are rolled up into (default
    /// 24).
    #[serde(deserialize_with = "rollup_prefix_v4")]
    pub ipv4_prefix: u8,
    /// Roll up IPv6 hosts (on by default: a /64 is one subscriber).
    pub ipv6: bool,
    /// Prefix length of the IPv6 network hosts are rolled up into (default
    /// 64; 48 rolls up a site).
    #[serde(deserialize_with = "rollup_prefix_v6")]
    pub ipv6_prefix: u8,
}

impl Default for RollupConfig {
    fn default() -> Self {
        let r = palisade_policy::Rollup::default();
        RollupConfig {
            hosts: r.hosts,
            window: r.window,
            ipv4: r.prefix_v4.is_some(),
            ipv4_prefix: r.prefix_v4.unwrap_or(24),
            ipv6: r.prefix_v6.is_some(),
            ipv6_prefix: r.prefix_v6.unwrap_or(64),
        }
    }
}

impl RollupConfig {
    /// The policy's rule from these settings.
    pub fn rollup(&self) -> palisade_policy::Rollup {
        palisade_policy::Rollup {
            hosts: self.hosts,
            window: self.window,
            prefix_v4: self.ipv4.then_some(self.ipv4_prefix),
            prefix_v6: self.ipv6.then_some(self.ipv6_prefix),
        }
    }

    /// A roll-up is a ban like any other: no wider than `[guard]` permits
    /// and than a node may ban (`[hub.limits]`). The key at fault and why.
    fn check_widths(
        &self,
        guard: &GuardConfig,
        limits: &LimitsConfig,
    ) -> Vec<(&'static str, String)> {
        let mut wrong = Vec::new();
        let families = [
            (
                self.ipv4,
                "ipv4_prefix",
                self.ipv4_prefix,
                guard.min_prefix_v4,
                "min_prefix_v4",
                limits.node_widest_v4,
                "node_widest_v4",
            ),
            (
                self.ipv6,
                "ipv6_prefix",
                self.ipv6_prefix,
                guard.min_prefix_v6,
                "min_prefix_v6",
                limits.node_widest_v6,
                "node_widest_v6",
            ),
        ];
        for (on, key, prefix, guard_min, guard_key, widest, widest_key) in families {
            if !on {
                continue;
            }
            if prefix < guard_min {
                wrong.push((key, format!(
                    "a roll-up into a /{prefix} is wider than [guard] {guard_key} = {guard_min} permits; use {guard_min} or more"
                )));
            } else if prefix < widest {
                wrong.push((key, format!(
                    "a roll-up into a /{prefix} is wider than [hub.limits] {widest_key} = {widest} lets a node's reports reach; use {widest} or more"
                )));
            }
        }
        wrong
    }
}

fn rollup_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    u32::try_from(v)
        .ok()
        .filter(|h| (2..=1_000_000).contains(h))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "hosts must be between 2 and 1000000 (distinct banned hosts that ban their network), not {v}"
            ))
        })
}

fn rollup_window<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    Span::deserialize(d)?
        .duration()
        .filter(|w| !w.is_zero())
        .ok_or_else(|| {
            serde::de::Error::custom(
                "the roll-up window must be a length of time such as \"1h\" (not forever, not zero)",
            )
        })
}

fn rollup_prefix_v4<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    rollup_prefix(d, 8, 31)
}

fn rollup_prefix_v6<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    rollup_prefix(d, 16, 127)
}

/// A roll-up's network: wider than a host, not absurdly wide.
fn rollup_prefix<'de, D: Deserializer<'de>>(d: D, min: u8, max: u8) -> Result<u8, D::Error> {
    let v = i64::deserialize(d)?;
    u8::try_from(v)
        .ok()
        .filter(|p| (min..=max).contains(p))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "a roll-up's prefix length must be between {min} and {max}, not {v}"
            ))
        })
}

/// CrowdSec's Local API for its bouncers, answered by the agent.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdsecConfig {
    /// Where to answer bouncers (plain HTTP); off when unset.
    pub listen: Option<std::net::SocketAddr>,
}

/// Credentials, TLS and names on a NATS server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// User name, with `password` (or in the `nats://user:password@host`
    /// address).
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// A token the server accepts instead of user and password.
    pub token: Option<String>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (JWT and seed), as `nsc` makes them.
    pub creds: Option<PathBuf>,
    /// CA certificates to trust (PEM) instead of the system's; implies TLS.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients.
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// First token of every subject (`PREFIX.intents.NODE`, `PREFIX.beat.NODE`),
    /// so several palisade networks can share one NATS account.
    #[serde(deserialize_with = "bus_name")]
    pub subject_prefix: String,
    /// The role this node's intents are decided with (`reporter`, `node`
    /// or `operator`): the subject names it, so NATS permissions grant it.
    pub role: palisade_wire::Role,
    /// Start of every bucket name (`PREFIX_decisions`, `PREFIX_state`).
    #[serde(deserialize_with = "bus_name")]
    pub bucket_prefix: String,
    /// Replicas of the buckets the first worker creates.
    pub replicas: usize,
    /// The JetStream domain of the cluster holding the buckets, for nodes
    /// joined through a leaf node with no JetStream of its own (the
    /// cluster's `jetstream { domain: … }`).
    #[serde(deserialize_with = "optional_bus_name")]
    pub jetstream_domain: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            creds: None,
            ca: None,
            client_cert: None,
            client_key: None,
            subject_prefix: "palisade".into(),
            role: palisade_wire::Role::Node,
            bucket_prefix: "palisade".into(),
            replicas: 1,
            jetstream_domain: None,
        }
    }
}

/// Credentials, TLS and topics on an MQTT broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// User name, with `password` or `password_file` (or in the
    /// `mqtt://user:password@host` address).
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// A file holding the password, kept out of the configuration.
    pub password_file: Option<PathBuf>,
    /// CA certificates to trust (PEM) for `mqtts://` instead of the system's.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for brokers that verify clients.
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// First level of every topic palisade uses.
    #[serde(deserialize_with = "topic_prefix")]
    pub topic_prefix: String,
    /// The role this node's intents are decided with (`reporter`, `node`
    /// or `operator`): the topic names it, so broker ACLs grant it.
    pub role: palisade_wire::Role,
    /// A topic on which every message is a bare address to ban network-wide
    /// (as vallumd read them: `mosquitto_pub -t vallumd -m 192.0.2.7`).
    #[serde(deserialize_with = "optional_topic")]
    pub vallumd_topic: Option<String>,
    /// How long such an address is banned.
    pub vallumd_ban: Span,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            username: None,
            password: None,
            password_file: None,
            ca: None,
            client_cert: None,
            client_key: None,
            topic_prefix: "palisade".into(),
            role: palisade_wire::Role::Node,
            vallumd_topic: None,
            vallumd_ban: Span::For(std::time::Duration::from_secs(3600)),
        }
    }
}

/// An external blocklist pulled over HTTP(S).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The feed's name: the rule of its bans (`feed/NAME`) and the argument of
    /// `palisade feed pull`.
    #[serde(deserialize_with = "feed_name")]
    pub name: String,
    /// `http://` or `https://`.
    #[serde(deserialize_with = "feed_url")]
    pub url: String,
    /// How often to pull it; see [`FeedConfig::every`] for the default.
    #[serde(default)]
    pub every: Option<Span>,
    /// The most entries taken from it (a list that grows past this is
    /// refused and the last good one kept).
    #[serde(default = "default_feed_max")]
    pub max_entries: usize,
    /// The most bytes read from one answer (an endless list is cut off).
    #[serde(default = "default_feed_max_bytes")]
    pub max_bytes: u64,
    /// The longest one pull may take, from the request to the last byte.
    #[serde(default = "default_feed_timeout", deserialize_with = "finite_duration")]
    pub timeout: std::time::Duration,
    /// Take entries in private, CGNAT, unique-local and other non-public
    /// ranges (refused by default: a third party's list naming them is
    /// wrong or hostile).
    #[serde(default)]
    pub allow_non_public: bool,
    /// `list` (one address or network per line) or `crowdsec` (a CrowdSec
    /// Local API's decision stream, `url` its base address).
    #[serde(default)]
    pub kind: FeedKind,
    /// The bouncer key for a `crowdsec` feed (`cscli bouncers add NAME`).
    pub api_key: Option<String>,
}

/// Generous for real lists (two million entries of FireHOL's format are
/// about 32 MB), bounded for an endless one.
fn default_feed_max_bytes() -> u64 {
    128 << 20
}

fn default_feed_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10 * 60)
}

fn finite_duration<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    Span::deserialize(d)?
        .duration()
        .ok_or_else(|| serde::de::Error::custom("a time limit cannot be forever"))
}

impl FeedConfig {
    /// A `crowdsec` feed needs its key, which goes into a request header:
    /// visible ASCII only. A list feed has no key.
    fn check_kind(&self) -> Result<(), FeedKeyError> {
        let feed = self.name.clone();
        match (self.kind, &self.api_key) {
            (FeedKind::Crowdsec, None) => Err(FeedKeyError::Missing { feed }),
            (FeedKind::Crowdsec, Some(k))
                if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Err(FeedKeyError::Unusable { feed })
            }
            (FeedKind::List, Some(_)) => Err(FeedKeyError::NotCrowdsec { feed }),
            _ => Ok(()),
        }
    }
}

/// A feed's `api_key` that does not fit its `kind`.
#[derive(Debug, thiserror::Error)]
enum FeedKeyError {
    #[error(
        "[[feed]] {feed}: a crowdsec feed needs api_key (make one on the LAPI with `cscli bouncers add palisade`)"
    )]
    Missing { feed: String },
    #[error("[[feed]] {feed}: api_key must be 1 to 128 visible ASCII characters")]
    Unusable { feed: String },
    #[error("[[feed]] {feed}: api_key is only for kind = \"crowdsec\"")]
    NotCrowdsec { feed: String },
}

/// What a feed's address serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// Plain text, one address or network per line (`#` comments allowed).
    #[default]
    List,
    /// A CrowdSec Local API's decision stream, read as a bouncer.
    Crowdsec,
}

impl FeedConfig {
    /// How often to pull: as configured, else hourly for a list and every
    /// 10 s for a CrowdSec LAPI (its bouncers' own default poll).
    pub fn every(&self) -> Span {
        self.every
            .unwrap_or(Span::For(std::time::Duration::from_secs(match self.kind {
                FeedKind::List => 3600,
                FeedKind::Crowdsec => 10,
            })))
    }
}

fn default_feed_max() -> usize {
    2_000_000
}

/// Detection on this agent (`[detect]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Use the built-in rule pack (a `[[rule]]` with the same name as a
    /// built-in rule replaces it).
    pub builtin: bool,
    /// With no `[[source]]` configured, follow the logs of the services the
    /// built-in rules know that are found on this server.
    pub detect_sources: bool,
    /// Memory for counting failures (bytes, or a string such as "100MB" or
    /// "1GiB"). The default, 100 MB, counts more than a million attackers;
    /// beyond the budget those least likely to reach a threshold are
    /// forgotten first.
    #[serde(deserialize_with = "byte_size")]
    pub memory: usize,
    /// At most this many attackers counted at once, whatever `memory`
    /// allows.
    pub max_tracked: Option<usize>,
    /// IPv4 attackers are counted (and banned) per network of this many
    /// bits: 32 (per address, the default) or, say, 24.
    #[serde(deserialize_with = "counted_prefix_v4")]
    pub prefix_v4: u8,
    /// IPv6 attackers are counted (and banned) per network of this many
    /// bits: 64 by default (an attacker rotating through its /64 is one).
    #[serde(deserialize_with = "counted_prefix_v6")]
    pub prefix_v6: u8,
}

impl Default for DetectConfig {
    fn default() -> Self {
        let limits = palisade_detect::Limits::default();
        DetectConfig {
            builtin: true,
            detect_sources: true,
            memory: limits.memory,
            max_tracked: None,
            prefix_v4: limits.prefix_v4,
            prefix_v6: limits.prefix_v6,
        }
    }
}

impl DetectConfig {
    /// The tracker's limits from these settings.
    pub fn limits(&self) -> palisade_detect::Limits {
        palisade_detect::Limits {
            memory: self.memory,
            max_tracked: self.max_tracked,
            prefix_v4: self.prefix_v4,
            prefix_v6: self.prefix_v6,
            ..Default::default()
        }
    }
}

fn counted_prefix_v4<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    palisade_detect::config::de_prefix(d, 8, 32)
}

fn counted_prefix_v6<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    palisade_detect::config::de_prefix(d, 16, 128)
}

/// A size in bytes: a number, or a string with a unit (B, KB, MB, GB,
/// KiB, MiB, GiB); at least 1 MB.
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let bytes = match Size::deserialize(d)? {
        Size::Bytes(n) => n,
        Size::Text(t) => parse_byte_size(&t).map_err(D::Error::custom)?,
    };
    if bytes < 1_000_000 {
        return Err(D::Error::custom(format!(
            "{bytes} bytes is too little: give at least 1MB"
        )));
    }
    usize::try_from(bytes).map_err(|_| D::Error::custom("too large for this machine"))
}

/// A size the configuration cannot read.
#[derive(Debug, thiserror::Error)]
enum ByteSizeError {
    #[error("{0:?}: write a size such as \"100MB\" or \"1GiB\"")]
    NotASize(String),
    #[error("{text:?}: unknown unit {unit:?} (use B, KB, MB, GB, KiB, MiB or GiB)")]
    Unit { text: String, unit: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
}

fn parse_byte_size(t: &str) -> Result<u64, ByteSizeError> {
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ByteSizeError::NotASize(t.to_string()))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(ByteSizeError::Unit {
                text: t.to_string(),
                unit: other.to_string(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ByteSizeError::TooLarge(t.to_string()))
}

/// This server's identity (`[node]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This server's name in decisions and logs; the host name if unset.
    #[serde(deserialize_with = "node_name")]
    pub name: Option<String>,
    /// This server's group on a NATS or MQTT bus (the hub gets it from the
    /// token): group allow entries apply to it.
    #[serde(deserialize_with = "group_name")]
    pub group: Option<String>,
}

/// The agent (`[agent]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps its decisions (a crash-safe database).
    pub state_dir: PathBuf,
    /// The root-only control socket `palisade ban`, `list`, `status` use.
    pub socket: PathBuf,
    /// Protect this server on its own, without joining a network
    /// (`palisade agent --local-only`).
    pub local_only: bool,
    /// How long `palisade ban` bans when no length is given (default one day).
    pub default_ban: Span,
    /// When an address is banned, also cut its open connections (conntrack
    /// entries and local TCP sockets).
    pub kill_connections: bool,
    /// The network to join: `https://host:port` (a hub), `nats://…`,
    /// `mqtt://…`.
    #[serde(deserialize_with = "any_join_url")]
    pub join: Option<String>,
    /// The token to join with (or `token_file`).
    pub token: Option<String>,
    /// A file holding the token, kept out of the configuration.
    pub token_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            local_only: false,
            default_ban: Span::For(std::time::Duration::from_secs(86_400)),
            kill_connections: true,
            join: None,
            token: None,
            token_file: None,
        }
    }
}

/// The hub (`palisade hub`, `palisade up`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Where agents connect (HTTPS); default `0.0.0.0:7470`.
    pub listen: std::net::SocketAddr,
    /// Where the hub keeps its store, certificate and feed lists.
    pub state_dir: PathBuf,
    /// The hub's root-only control socket (`palisade hub token …`).
    pub socket: PathBuf,
    /// An operator's certificate and key (PEM) instead of the hub's own.
    pub certificate: Option<PathBuf>,
    /// The private key (PEM) of `certificate`.
    pub key: Option<PathBuf>,
    /// Names and addresses to put in the hub's own certificate.
    pub names: Vec<String>,
    /// The address other servers reach the hub at, for the join command
    /// `palisade up` prints (default: this host's first public address).
    #[serde(deserialize_with = "join_url")]
    pub public_url: Option<String>,
    /// Stream events kept for agents that reconnect; one that missed more
    /// gets a full snapshot.
    pub events_kept: u64,
    /// How long a ban lasts when the report does not say.
    pub default_ban: Span,
    /// An automatic repeat (detection, report, feed) of an active ban
    /// within this long is recorded, not broadcast again (banshare's 5
    /// minutes); a ban by hand always extends at once.
    pub suppress_window: Span,
    /// Longer bans for repeat offenders (`[hub.escalation]`).
    pub escalation: EscalationConfig,
    /// Distinct nodes that must report an address before it is banned, per
    /// source (`detector`, `report`, `feed`). Operators' bans never wait.
    pub quorum: std::collections::BTreeMap<String, u32>,
    /// How long reports count towards a quorum (default one hour).
    pub quorum_window: Span,
    /// Distinct nodes that must report a detection that could be forged
    /// (a port probe) before it bans network-wide.
    pub quorum_unverified: u32,
    /// Per-node limit on reports.
    pub rate: RateConfig,
    /// Per-node limit on what a node does by hand.
    pub node_rate: RateConfig,
    /// What a node credential may ban.
    pub limits: LimitsConfig,
    /// Allow entries for the whole network, or one group (`group = "dmz"`).
    pub allow: Vec<HubAllowEntry>,
    /// Run as a policy worker on this bus (`nats://…`, `mqtt://…`) instead
    /// of (NATS) or besides (MQTT) serving agents over HTTPS.
    #[serde(deserialize_with = "bus_url")]
    pub join: Option<String>,
    /// On a NATS or MQTT bus, where palisade nodes live: the address a node
    /// declares is allowed automatically only inside these networks.
    pub node_networks: Vec<Net>,
    /// HTTPS connections open at once, from everyone (also bounded by the
    /// limit of open files).
    pub max_connections: usize,
    /// HTTPS connections open at once from one client: an IPv4 address, or
    /// an IPv6 /64.
    pub max_connections_per_client: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: "0.0.0.0:7470".parse().expect("a valid address"),
            state_dir: "/var/lib/palisade/hub".into(),
            socket: "/run/palisade/hub.sock".into(),
            certificate: None,
            key: None,
            names: Vec::new(),
            public_url: None,
            events_kept: 1_000_000,
            default_ban: Span::For(std::time::Duration::from_secs(86_400)),
            suppress_window: Span::For(std::time::Duration::from_secs(300)),
            escalation: EscalationConfig::default(),
            quorum: Default::default(),
            quorum_window: Span::For(std::time::Duration::from_secs(3600)),
            quorum_unverified: 2,
            rate: RateConfig::default(),
            node_rate: RateConfig {
                per_second: 1000.0,
                burst: 100_000,
            },
            limits: LimitsConfig::default(),
            allow: Vec::new(),
            join: None,
            node_networks: Vec::new(),
            max_connections: 8192,
            max_connections_per_client: 64,
        }
    }
}

/// Longer bans for repeat offenders (fail2ban's `bantime.increment`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Off: every ban lasts what it asks.
    pub enabled: bool,
    /// Each new ban of an address lasts this many times the previous one
    /// (default 2).
    pub factor: f64,
    /// The longest an escalated ban lasts (default 30 days).
    pub max: Span,
    /// Past bans older than this no longer count (default 30 days).
    pub forget_after: Span,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            enabled: true,
            factor: 2.0,
            max: Span::For(std::time::Duration::from_secs(30 * 86_400)),
            forget_after: Span::For(std::time::Duration::from_secs(30 * 86_400)),
        }
    }
}

/// A per-node token bucket (`[hub.rate]`, `[hub.node_rate]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// Sustained rate, in requests per second.
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate (the bucket's size).
    pub burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            per_second: 50.0,
            burst: 1000,
        }
    }
}

/// What a node credential may ban (`[hub.limits]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bans by a node credential are shortened to this (default 7 days).
    pub node_longest_ban: Span,
    /// Shortest prefix length of an IPv4 ban by a node credential (default
    /// 24); wider networks are refused.
    #[serde(deserialize_with = "prefix_v4")]
    pub node_widest_v4: u8,
    /// Shortest prefix length of an IPv6 ban by a node credential (default
    /// 48); wider networks are refused.
    #[serde(deserialize_with = "prefix_v6")]
    pub node_widest_v6: u8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            node_longest_ban: Span::For(std::time::Duration::from_secs(7 * 86_400)),
            node_widest_v4: 24,
            node_widest_v6: 48,
        }
    }
}

/// One `[[hub.allow]]` entry: never banned anywhere, or in one group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubAllowEntry {
    /// The address or network allowed.
    pub net: Net,
    /// Why, shown by `list` and `explain`.
    #[serde(default)]
    pub comment: Option<String>,
    /// The node group it applies to; unset: every node.
    #[serde(default, deserialize_with = "group_name")]
    pub group: Option<String>,
}

/// The widest networks a ban or allow entry may cover (`[guard]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Shortest prefix length of an IPv4 ban (default 8: `10.0.0.0/7` is
    /// refused).
    #[serde(deserialize_with = "prefix_v4")]
    pub min_prefix_v4: u8,
    /// Shortest prefix length of an IPv6 ban (default 16).
    #[serde(deserialize_with = "prefix_v6")]
    pub min_prefix_v6: u8,
    /// The widest allow entries (an allow of 0.0.0.0/0 would open every
    /// firewall of the network at once).
    #[serde(deserialize_with = "prefix_v4")]
    pub allow_min_prefix_v4: u8,
    /// Shortest prefix length of an IPv6 allow entry (default 16).
    #[serde(deserialize_with = "prefix_v6")]
    pub allow_min_prefix_v6: u8,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let g = palisade_model::Guard::default();
        GuardConfig {
            min_prefix_v4: g.min_prefix_v4,
            min_prefix_v6: g.min_prefix_v6,
            allow_min_prefix_v4: g.allow_min_prefix_v4,
            allow_min_prefix_v6: g.allow_min_prefix_v6,
        }
    }
}

/// One static allowlist entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The address or network allowed.
    pub net: Net,
    /// Why, shown by `list` and `explain`.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// 1-based line and column, when the error has a place.
    pub line: Option<usize>,
    /// 1-based column, with `line`.
    pub column: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The offending line, for display under the message.
    pub excerpt: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}", shorten(&self.message, MESSAGE_CHARS))?;
        if let (Some(text), Some(c)) = (&self.excerpt, self.column) {
            let (shown, caret) = window(text, c.saturating_sub(1), EXCERPT_CHARS);
            write!(f, "\n    {shown}\n    {}^", " ".repeat(caret))?;
        }
        Ok(())
    }
}

/// The most of a message shown (a parser quotes the offending value, which
/// may be a whole long line).
const MESSAGE_CHARS: usize = 300;
/// The most of the offending line shown under the message.
const EXCERPT_CHARS: usize = 100;

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

/// At most `max` characters of `line` around character `at`, and where
/// `at` is in what is shown.
fn window(line: &str, at: usize, max: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= max {
        return (line.to_string(), at);
    }
    let start = at
        .saturating_sub(max / 2)
        .min(chars.len().saturating_sub(max));
    let end = (start + max).min(chars.len());
    let mut shown = String::new();
    let mut caret = at - start.min(at);
    if start > 0 {
        shown.push('…');
        caret += 1;
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    (shown, caret)
}

impl Config {
    /// Parses configuration text; `path` is only used in error messages.
    /// The error is the first in the file ([`Config::check`] has them all).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::check(text, path).map_err(|mut all| all.remove(0))
    }

    /// Parses configuration text, or says everything wrong with it that
    /// can be found, in the order of the file, each at its line and column
    /// (never empty on error).
    pub fn check(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let error = |found: narrow::Found| {
            let (line, column, excerpt) = match found.span {
                Some(span) => {
                    let (l, c, t) = locate(text, span.start);
                    (Some(l), Some(c), Some(t))
                }
                None => (None, None, None),
            };
            ConfigError {
                path: path.to_path_buf(),
                line,
                column,
                message: found.message,
                excerpt,
            }
        };
        let config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(first) => {
                let mut all = narrow::errors::<Config>(text);
                if all.is_empty() {
                    all.push(first.into());
                }
                return Err(all.into_iter().map(error).collect());
            }
        };
        let mut wrong: Vec<ConfigError> = config
            .feed
            .iter()
            .enumerate()
            .filter_map(|(i, feed)| {
                let message = feed.check_kind().err()?.to_string();
                Some(error(narrow::Found {
                    message,
                    span: narrow::element_span(text, "feed", i),
                }))
            })
            .collect();
        // Only a [rollup] the file writes is checked: with the defaults, a
        // guard narrower than a /64 simply never lets the roll-up happen
        // (the policy checks every network ban), and an older file keeps
        // loading.
        let written = narrow::key_span(text, &["rollup"]).is_some();
        for (key, message) in config
            .rollup
            .check_widths(&config.guard, &config.hub.limits)
            .into_iter()
            .filter(|_| written)
        {
            wrong.push(error(narrow::Found {
                message,
                span: narrow::key_span(text, &["rollup", key])
                    .or_else(|| narrow::key_span(text, &["rollup"])),
            }));
        }
        if wrong.is_empty() {
            Ok(config)
        } else {
            Err(wrong)
        }
    }

    /// Loads `path`. When `required` is false a missing file means "all
    /// defaults" (the agent runs without any configuration file); when true
    /// (the operator named the file) it is an error.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(e) => Err(ConfigError {
                path: path.to_path_buf(),
                line: None,
                column: None,
                message: format!("cannot read the configuration file: {e}"),
                excerpt: None,
            }),
        }
    }

    /// The enforcers to run: the configured ones, else palisade's own
    /// nftables table. The nftables ones report connection attempts to the
    /// NFLOG group of a port-probe source, if one is configured.
    pub fn enforcers(&self) -> Vec<EnforcerConfig> {
        let mut all = if self.enforcer.is_empty() {
            vec![EnforcerConfig::Nftables(Default::default())]
        } else {
            self.enforcer.clone()
        };
        let group = self.source.iter().find_map(|s| match s {
            SourceConfig::Nflog { group, .. } => Some(*group),
            _ => None,
        });
        for e in &mut all {
            if let EnforcerConfig::Nftables(n) = e {
                n.probe_log_group = group;
            }
        }
        all
    }

    /// The guard built from `[guard]`.
    pub fn guard(&self) -> palisade_model::Guard {
        palisade_model::Guard::new(self.guard.min_prefix_v4, self.guard.min_prefix_v6)
            .with_allow_limits(
                self.guard.allow_min_prefix_v4,
                self.guard.allow_min_prefix_v6,
            )
    }
}

/// 1-based line and column (in characters) of byte `offset`, and that line.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("").to_string();
    (line, column, line_text)
}

fn prefix_v4<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_in(d, 32)
}

fn prefix_v6<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_in(d, 128)
}

fn prefix_in<'de, D: Deserializer<'de>>(d: D, max: u8) -> Result<u8, D::Error> {
    let v = i64::deserialize(d)?;
    u8::try_from(v).ok().filter(|p| *p <= max).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "a prefix length must be between 0 and {max}, not {v}"
        ))
    })
}

fn join_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = s
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
    if ok {
        Ok(Some(s))
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a hub address: use https://HOST:PORT"
        )))
    }
}

/// The schemes a node can join: the hub, NATS, MQTT.
pub const JOIN_SCHEMES: [&str; 5] = ["https://", "nats://", "tls://", "mqtt://", "mqtts://"];

fn any_join_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    url_with(d, &JOIN_SCHEMES)
}

fn bus_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    url_with(d, &JOIN_SCHEMES[1..])
}

fn url_with<'de, D: Deserializer<'de>>(d: D, schemes: &[&str]) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let ok = schemes.iter().any(|p| {
        s.strip_prefix(p)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if ok {
        Ok(Some(s))
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a usable address: use {}HOST:PORT",
            schemes.join("HOST:PORT or ")
        )))
    }
}

fn feed_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    url_with(d, &["http://", "https://"]).map(|u| u.unwrap_or_default())
}

fn feed_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if ok {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a valid feed name (1 to 64 letters, digits, '-' or '_')"
        )))
    }
}

fn bus_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} may hold only letters, digits, '-' and '_'"
        )))
    }
}

fn optional_bus_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    bus_name(d).map(Some)
}

fn topic_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if valid_topic(&s) && !s.contains('/') {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a topic prefix: one topic level, without '+', '#' or '/'"
        )))
    }
}

fn optional_topic<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if valid_topic(&s) {
        Ok(Some(s))
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not an MQTT topic name (no '+' or '#', not empty)"
        )))
    }
}

fn valid_topic(s: &str) -> bool {
    !s.is_empty() && !s.contains(['+', '#', '\0']) && !s.starts_with('$')
}

fn group_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    node_name(d)
}

fn node_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if palisade_model::name::is_plain(&s) {
        Ok(Some(s))
    } else {
        Err(serde::de::Error::custom(format!(
            "{s:?} is not a valid node name ({})",
            palisade_model::name::PLAIN
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/palisade/palisade.toml"))
    }

    /// A huge line or value in the file is shown cut, around the error.
    #[test]
    fn errors_in_long_lines_are_shown_cut() {
        let text = format!("[agent]\nlocal_only = \"{}\"\n", "x".repeat(10_000));
        let e = Config::parse(&text, Path::new("p.toml")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.len() < 1_000, "{} bytes", shown.len());
        assert!(shown.starts_with("p.toml:2:"), "{shown}");
        assert!(shown.contains('…'), "{shown}");
        assert_eq!(window("abcdef", 2, 100), ("abcdef".to_string(), 2));
        let long: String = ('a'..='z').cycle().take(1000).collect();
        let (w, caret) = window(&long, 500, 10);
        assert_eq!(w.chars().nth(caret), long.chars().nth(500));
        let (w, caret) = window(&long, 3, 10);
        assert_eq!(w.chars().nth(caret), long.chars().nth(3));
        let (w, caret) = window(&long, 998, 10);
        assert_eq!(w.chars().nth(caret), long.chars().nth(998));
    }

    #[test]
    fn template_is_valid_and_equals_the_defaults() {
        assert_eq!(parse(&template()).unwrap(), Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_detection_example_parses_inside_the_config() {
        let c = parse(palisade_detect::EXAMPLE_TOML).unwrap();
        assert!(!c.source.is_empty() && !c.rule.is_empty());
        // Commented out in the template, each of its lines is there.
        let t = template();
        for line in palisade_detect::EXAMPLE_TOML
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(t.contains(&format!("# {line}")), "{line}");
        }
    }

    #[test]
    fn detect_memory_and_prefixes() {
        let c = parse("[detect]\nmemory = \"1GiB\"\nprefix_v4 = 24\nprefix_v6 = 48\n").unwrap();
        let l = c.detect.limits();
        assert_eq!((l.memory, l.prefix_v4, l.prefix_v6), (1 << 30, 24, 48));
        assert_eq!(
            parse("[detect]\nmemory = 5000000\n").unwrap().detect.memory,
            5_000_000
        );
        for bad in [
            "memory = \"100 parsecs\"",
            "memory = \"lots\"",
            "memory = 1000",
            "prefix_v6 = 129",
            "prefix_v4 = 4",
        ] {
            let err = parse(&format!("[detect]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(":2:"), "{bad}: {err}");
        }
        assert_eq!(
            Config::default().detect.limits(),
            palisade_detect::Limits::default()
        );
    }

    #[test]
    fn template_documents_every_key() {
        // Each key of each section appears in the template, commented or not.
        for key in [
            "[node]",
            "name",
            "[agent]",
            "state_dir",
            "socket",
            "local_only",
            "default_ban",
            "kill_connections",
            "join",
            "token",
            "token_file",
            "[guard]",
            "min_prefix_v4",
            "min_prefix_v6",
            "[[allow]]",
            "net",
            "comment",
            "[[enforcer]]",
            "table",
            "priority",
            "[detect]",
            "builtin",
            "memory",
            "max_tracked",
            "prefix_v4",
            "prefix_v6",
            "[[source]]",
            "[[rule]]",
            "[hub]",
            "listen",
            "certificate",
            "key",
            "names",
            "public_url",
            "events_kept",
            "suppress_window",
            "[hub.escalation]",
            "factor",
            "max",
            "forget_after",
            "[hub.quorum]",
            "quorum_window",
            "[hub.rate]",
            "per_second",
            "burst",
            "[[hub.allow]]",
            "group",
            "node_networks",
            "max_connections",
            "max_connections_per_client",
            "[nats]",
            "user",
            "password",
            "nkey_seed_file",
            "creds",
            "ca",
            "client_cert",
            "client_key",
            "subject_prefix",
            "bucket_prefix",
            "replicas",
            "jetstream_domain",
            "[mqtt]",
            "username",
            "password_file",
            "topic_prefix",
            "vallumd_topic",
            "vallumd_ban",
            "[[feed]]",
            "url",
            "every",
            "max_entries",
            "max_bytes",
            "timeout",
            "allow_non_public",
            "[rollup]",
            "hosts",
            "window",
            "ipv4_prefix",
            "ipv6_prefix",
        ] {
            assert!(template().contains(key), "template lacks {key}");
        }
    }

    #[test]
    fn rollup_keys_are_checked_each_at_its_place() {
        let c = parse("[rollup]\nhosts = 20\nwindow = \"10m\"\nipv4 = true\nipv6_prefix = 48\n")
            .unwrap();
        let r = c.rollup.rollup();
        assert_eq!(
            (r.hosts, r.window, r.prefix_v4, r.prefix_v6),
            (20, std::time::Duration::from_secs(600), Some(24), Some(48))
        );
        assert_eq!(
            Config::default().rollup.rollup(),
            palisade_policy::Rollup::default()
        );
        let text = "[rollup]\nhosts = 1\nwindow = \"forever\"\nipv4_prefix = 32\nipv6_prefix = 8\n";
        let errors = Config::check(text, Path::new(DEFAULT_PATH)).unwrap_err();
        let places: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line.unwrap(), e.message.as_str()))
            .collect();
        assert_eq!(places.len(), 4, "{places:?}");
        assert!(
            places[0].0 == 2 && places[0].1.contains("between 2 and"),
            "{places:?}"
        );
        assert!(
            places[1].0 == 3 && places[1].1.contains("not forever"),
            "{places:?}"
        );
        assert!(
            places[2].0 == 4 && places[2].1.contains("between 8 and 31"),
            "{places:?}"
        );
        assert!(
            places[3].0 == 5 && places[3].1.contains("between 16 and 127"),
            "{places:?}"
        );
        // Wider than a node may ban, or than the guard permits: refused at
        // the key, naming the limit.
        let text = "[hub.limits]\nnode_widest_v4 = 24\n[rollup]\nipv4 = true\nipv4_prefix = 16\n";
        let errors = Config::check(text, Path::new(DEFAULT_PATH)).unwrap_err();
        assert_eq!((errors[0].line, errors[0].column), (Some(5), Some(15)));
        assert!(
            errors[0].message.contains("node_widest_v4 = 24"),
            "{}",
            errors[0]
        );
        let text = "[guard]\nmin_prefix_v6 = 72\n[rollup]\nhosts = 5\n";
        let errors = Config::check(text, Path::new(DEFAULT_PATH)).unwrap_err();
        assert!(
            errors[0].message.contains("min_prefix_v6 = 72"),
            "{}",
            errors[0]
        );
        assert_eq!(
            errors[0].line,
            Some(3),
            "at the [rollup] table when the key is not written"
        );
        // Not written: an older file keeps loading.
        parse("[guard]\nmin_prefix_v6 = 72\n").unwrap();
        // Off: its width does not matter.
        parse("[rollup]\nipv4 = false\nipv4_prefix = 16\n").unwrap();
    }

    #[test]
    fn reads_a_full_file() {
        let c = parse(
            r#"
[node]
name = "web1"
[agent]
state_dir = "/tmp/x"
local_only = true
default_ban = "2h"
[[allow]]
net = "198.18.0.0/24"
comment = "office"
[[allow]]
net = "::ffff:192.0.2.1"
[[enforcer]]
kind = "nftables"
table = "pal"
priority = -150
[[source]]
kind = "nflog"
group = 9
"#,
        )
        .unwrap();
        assert_eq!(c.node.name.as_deref(), Some("web1"));
        assert!(c.agent.local_only);
        assert_eq!(c.agent.default_ban.to_string(), "2h");
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.allow[1].net.to_string(), "192.0.2.1");
        let e = c.enforcers();
        assert!(
            matches!(&e[0], EnforcerConfig::Nftables(n) if n.table == "pal" && n.probe_log_group == Some(9))
        );
        assert_eq!(c.agent.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let err = parse("[agent]\nlocal_only = true\ndefault_ban = \"60\"\n").unwrap_err();
        assert_eq!((err.line, err.column), (Some(3), Some(15)));
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/palisade/palisade.toml:3:15: "),
            "{shown}"
        );
        assert!(shown.contains("is not a duration"), "{shown}");
        assert!(shown.contains("default_ban = \"60\""), "{shown}");

        let err = parse("[[allow]]\nnet = \"1.2.3.4/24\"\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.message.contains("did you mean 1.2.3.0/24"),
            "{}",
            err.message
        );

        let err = parse("[agent]\nsocket_path = \"/x\"\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.message.contains("unknown field `socket_path`"),
            "{}",
            err.message
        );

        let err = parse("[guard]\nmin_prefix_v4 = 40\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("between 0 and 32"), "{}", err.message);

        let err = parse("[[enforcer]]\nkind = \"nftables\"\ntabel = \"x\"\n").unwrap_err();
        assert!(
            err.message.contains("unknown field `tabel`"),
            "{}",
            err.message
        );

        let err = parse("[agent\n").unwrap_err();
        assert_eq!(err.line, Some(1));
    }

    /// Inside a table whose `kind` says what it is, serde loses the place
    /// of a mistake; the check finds it again, and finds every mistake of
    /// the file, not only the first.
    #[test]
    fn every_error_is_reported_at_its_value() {
        let text = "\
[agent]
default_ban = \"xx\"
[[enforcer]]
kind = \"command\"
ban = [\"x\"]
family = 3
[[enforcer]]
kind = \"nftables\"
[enforcer.filter]
actions = [\"bogus\"]
[[enforcer]]
kind = \"bogus\"
[[feed]]
name = \"x\"
url = \"https://example.org/\"
kind = \"bogus\"
[detect]
prefix_v4 = 99
";
        let errors = Config::check(text, Path::new(DEFAULT_PATH)).unwrap_err();
        let places: Vec<(usize, usize, &str)> = errors
            .iter()
            .map(|e| (e.line.unwrap(), e.column.unwrap(), e.message.as_str()))
            .collect();
        let expected = [
            (2, 15, "is not a duration"),
            (5, 7, "invalid type: sequence, expected a string"),
            (6, 10, "unknown field `family`"),
            (10, 11, "unknown variant `bogus`, expected `ban` or `allow`"),
            (12, 8, "unknown variant `bogus`, expected one of `nftables`"),
            (
                16,
                8,
                "unknown variant `bogus`, expected `list` or `crowdsec`",
            ),
            (18, 13, "prefix length 99 out of range"),
        ];
        assert_eq!(places.len(), expected.len(), "{places:?}");
        for ((line, column, message), (l, c, m)) in places.iter().zip(expected) {
            assert_eq!((*line, *column), (l, c), "{message}");
            assert!(message.contains(m), "{message} lacks {m}");
        }
        // `parse` gives the first.
        assert_eq!(parse(text).unwrap_err(), errors[0]);
        // A mistake only the whole file has is still reported.
        let err = parse("[[feed]]\nname = \"cs\"\nurl = \"http://h/\"\nkind = \"crowdsec\"\n")
            .unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(err.message.contains("api_key"), "{}", err.message);
    }

    #[test]
    fn buses_and_feeds() {
        let c = parse(
            r#"
[node]
group = "dmz"
[agent]
join = "nats://a:4222,b:4222"
[hub]
join = "mqtt://broker:1883"
node_networks = ["198.18.0.0/24"]
[nats]
creds = "/etc/palisade/nats.creds"
bucket_prefix = "lab_2"
jetstream_domain = "hub"
[mqtt]
vallumd_topic = "vallumd"
vallumd_ban = "2h"
[[feed]]
name = "drop"
url = "https://example.org/drop.txt"
every = "30m"
"#,
        )
        .unwrap();
        assert_eq!(c.node.group.as_deref(), Some("dmz"));
        assert_eq!(c.agent.join.as_deref(), Some("nats://a:4222,b:4222"));
        assert_eq!(c.hub.join.as_deref(), Some("mqtt://broker:1883"));
        assert_eq!(c.nats.bucket_prefix, "lab_2");
        assert_eq!(c.nats.jetstream_domain.as_deref(), Some("hub"));
        assert_eq!(c.mqtt.vallumd_topic.as_deref(), Some("vallumd"));
        assert_eq!(c.feed[0].every().to_string(), "30m");
        assert_eq!(c.feed[0].max_entries, 2_000_000);
        let parse = |t: &str| Config::parse(t, Path::new("t.toml"));
        let cs = "[[feed]]\nname = \"cs\"\nurl = \"http://127.0.0.1:8080\"\nkind = \"crowdsec\"\n";
        assert!(parse(cs).unwrap_err().message.contains("needs api_key"));
        assert!(parse(&format!("{cs}api_key = \"a\\r\\nX: y\"\n")).is_err());
        let ok = parse(&format!("{cs}api_key = \"abc\"\n")).unwrap();
        assert_eq!(ok.feed[0].kind, FeedKind::Crowdsec);
        assert_eq!(ok.feed[0].every().to_string(), "10s");
        for bad in [
            "[hub]\njoin = \"https://h:1\"\n",
            "[nats]\nbucket_prefix = \"a.b\"\n",
            "[nats]\njetstream_domain = \"a.b\"\n",
            "[mqtt]\ntopic_prefix = \"a/#\"\n",
            "[[feed]]\nname = \"x y\"\nurl = \"https://h/\"\n",
            "[[feed]]\nname = \"x\"\nurl = \"ftp://h/\"\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_file_is_defaults_only_when_optional() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert_eq!(Config::load(&p, false).unwrap(), Config::default());
        let err = Config::load(&p, true).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read the configuration file")
        );
    }
}

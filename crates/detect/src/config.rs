//! What the operator writes: `[[rule]]` and `[[source]]` tables.
//!
//! Every type here deserializes with `deny_unknown_fields` and validates as
//! it goes (names, counts, durations, and the syntax and anchoring of every
//! pattern), so an embedding TOML parser reports mistakes with the line and
//! column of the offending value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use palisade_model::{Scope, Span};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::engine::{PatternKind, check_native_pattern};

/// One detection rule: palisade patterns, or a fail2ban filter file, plus
/// the thresholds that turn matches into bans.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in decisions (`palisade explain` shows it).
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// A disabled rule is parsed and checked but never compiled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Only lines from these sources (by source name); empty means all.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Only syslog lines from this program (the tag before `[pid]:`, e.g.
    /// `sshd`). Lines without a recognizable syslog header are not filtered.
    /// Patterns of a rule are matched against the message after the header.
    #[serde(default)]
    pub program: Option<String>,
    /// Failure patterns (Rust regex syntax, with ASCII `\d`, `\w`, `\s`;
    /// `(?u:\w)` for Unicode) with one `<HOST>` placeholder.
    /// Each must start with `^` (the start of the message), and must end
    /// with `$` if anything unbounded (`*`, `+`, `{n,}`) comes before
    /// `<HOST>`, so text the attacker controls cannot supply the address.
    #[serde(default, deserialize_with = "de_bad_patterns")]
    pub bad: Vec<String>,
    /// Patterns of success: the address is forgiven (counts reset, bans by
    /// detectors lifted). Same syntax and anchoring as `bad`.
    #[serde(default, deserialize_with = "de_good_patterns")]
    pub good: Vec<String>,
    /// Lines matching any of these are never counted by this rule.
    #[serde(default, deserialize_with = "de_ignore_patterns")]
    pub ignore: Vec<String>,
    /// A fail2ban filter file (`/etc/fail2ban/filter.d/sshd.conf`) used
    /// instead of, or besides, `bad`/`good`/`ignore`.
    #[serde(default)]
    pub fail2ban_filter: Option<PathBuf>,
    /// The fail2ban filter's `mode` (e.g. `aggressive` for sshd), as a jail's
    /// `filter = sshd[mode=aggressive]` would pass it.
    #[serde(default)]
    pub mode: Option<String>,
    /// Further fail2ban filter parameters (`[Init]` overrides), e.g.
    /// `{ publickey = "invalid" }`.
    #[serde(default)]
    pub fail2ban_options: BTreeMap<String, String>,
    /// Only count probes of ports nobody listens on right now (for rules
    /// whose patterns capture `(?P<port>\d+)`, such as `port-probe`).
    #[serde(default)]
    pub closed_ports_only: bool,
    /// Count IPv4 attackers per network of this many bits (default: the
    /// `[detect]` setting, 32: per address; 24 counts and bans a /24).
    #[serde(default, deserialize_with = "de_prefix_v4")]
    pub prefix_v4: Option<u8>,
    /// Count IPv6 attackers per network of this many bits (default: the
    /// `[detect]` setting, 64: an attacker rotating through its /64 is one).
    #[serde(default, deserialize_with = "de_prefix_v6")]
    pub prefix_v6: Option<u8>,
    /// The rule counts packets whose source can be forged without a
    /// handshake (port probes): its bans are marked forgeable.
    #[serde(default)]
    pub forgeable: bool,
    /// Share bans with the network (default) or act on this node only.
    #[serde(default)]
    pub scope: Scope,
    /// Thresholds, e.g. a brief throttle after 3 and a long block after 10.
    #[serde(default = "default_stages", deserialize_with = "de_stages")]
    pub stages: Vec<StageConfig>,
}

/// One threshold of a rule: `count` failures within `within` ban for `ban`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage's name (`throttle`, `block`), shown in decisions; 1 to 64
    /// letters, digits and `- _ . / :`.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// Failures from one attacker that fire the stage, 1 to 1000.
    #[serde(deserialize_with = "de_count")]
    pub count: u32,
    /// The window the failures are counted in (never forever).
    #[serde(deserialize_with = "de_window")]
    pub within: Duration,
    /// How long the attacker is banned when the stage fires.
    pub ban: Span,
    /// For the xt_recent enforcer: the `/proc/net/xt_recent` list this stage
    /// feeds (banban's `THROTTLE`, `BLOCKER`).
    #[serde(default)]
    pub list: Option<String>,
}

/// Where lines come from. `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file followed like `tail -F`; the read position survives restarts.
    File {
        /// The source's name in decisions and logs; `file:PATH` if unset.
        #[serde(default)]
        name: Option<String>,
        /// The file to follow.
        path: PathBuf,
        /// Where to start the first time (no saved position): `end`
        /// (default, only new lines) or `beginning`.
        #[serde(default)]
        start: StartAt,
    },
    /// A UNIX datagram socket that syslog daemons write to (rsyslog
    /// `omuxsock`, syslog-ng `unix-dgram`). Created mode 0600, or 0660 with
    /// `group`.
    SyslogSocket {
        /// The source's name in decisions and logs; `syslog:PATH` if unset.
        #[serde(default)]
        name: Option<String>,
        /// Where to create the socket.
        path: PathBuf,
        /// A group allowed to write to the socket (mode 0660).
        #[serde(default)]
        group: Option<String>,
    },
    /// A named pipe (rsyslog `ompipe`, diswall); created if absent.
    Fifo {
        /// The source's name in decisions and logs; `fifo:PATH` if unset.
        #[serde(default)]
        name: Option<String>,
        /// The pipe's path.
        path: PathBuf,
    },
    /// The systemd journal through `journalctl -f -o json`, resumed by
    /// cursor.
    Journal {
        /// The source's name in decisions and logs; `journal` or
        /// `journal:UNITS` if unset.
        #[serde(default)]
        name: Option<String>,
        /// Only these units (`journalctl -u`); empty means all.
        #[serde(default)]
        units: Vec<String>,
        /// Extra journal matches such as `_COMM=sshd` or `SYSLOG_FACILITY=4`.
        #[serde(default)]
        matches: Vec<String>,
        /// The journalctl binary.
        #[serde(default = "default_journalctl")]
        journalctl: PathBuf,
        /// Read a journal directory instead of the system journal.
        #[serde(default)]
        directory: Option<PathBuf>,
    },
    /// Standard input, line by line.
    Stdin {
        /// The source's name in decisions and logs; `stdin` if unset.
        #[serde(default)]
        name: Option<String>,
    },
    /// Packets the kernel logs to an NFLOG group (`log group N`), turned into
    /// LOG-style lines for the `port-probe` rule.
    Nflog {
        /// The source's name in decisions and logs; `nflog:GROUP` if unset.
        #[serde(default)]
        name: Option<String>,
        /// The NFLOG group the firewall's `log group N` rules log to.
        group: u16,
    },
    /// Decoy TCP ports palisade listens on: a peer that completes a
    /// handshake there is a verified prober (the built-in `honeyport` rule
    /// counts the lines of the source named `honeyport`, the default name).
    Honeyport {
        /// The source's name in decisions and logs; `honeyport` if unset.
        #[serde(default)]
        name: Option<String>,
        /// The ports (nothing else may listen on them).
        #[serde(deserialize_with = "de_ports")]
        ports: Vec<u16>,
        /// The address to listen on; `::` (the default) takes IPv4 too.
        #[serde(default = "default_honeyport_bind")]
        bind: std::net::IpAddr,
        /// Most connections accepted a second (the rest wait in the
        /// kernel's backlog).
        #[serde(default = "default_honeyport_rate")]
        max_per_second: u32,
    },
}

fn default_honeyport_bind() -> std::net::IpAddr {
    std::net::Ipv6Addr::UNSPECIFIED.into()
}

fn default_honeyport_rate() -> u32 {
    100
}

fn de_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let ports = Vec::<u16>::deserialize(d)?;
    if ports.is_empty() || ports.len() > 64 {
        return Err(D::Error::custom("give 1 to 64 decoy ports"));
    }
    if ports.contains(&0) {
        return Err(D::Error::custom("port 0 is not a port to listen on"));
    }
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ports.len() {
        return Err(D::Error::custom("a port is listed twice"));
    }
    Ok(ports)
}

/// Where a file source starts reading when it has no saved position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From the start of the file: lines already there are counted too.
    Beginning,
    /// From the end: only lines written from now on (the default).
    #[default]
    End,
}

impl SourceConfig {
    /// Whether the source's lines can be caused by forged packets (it sees
    /// packets, not sessions): NFLOG.
    pub fn forgeable(&self) -> bool {
        matches!(self, SourceConfig::Nflog { .. })
    }

    /// The source's name: the configured one, or `kind:path`.
    pub fn name(&self) -> String {
        match self {
            SourceConfig::File { name, path, .. } => name
                .clone()
                .unwrap_or_else(|| format!("file:{}", path.display())),
            SourceConfig::SyslogSocket { name, path, .. } => name
                .clone()
                .unwrap_or_else(|| format!("syslog:{}", path.display())),
            SourceConfig::Fifo { name, path } => name
                .clone()
                .unwrap_or_else(|| format!("fifo:{}", path.display())),
            SourceConfig::Journal { name, units, .. } => name.clone().unwrap_or_else(|| {
                if units.is_empty() {
                    "journal".into()
                } else {
                    format!("journal:{}", units.join(","))
                }
            }),
            SourceConfig::Stdin { name } => name.clone().unwrap_or_else(|| "stdin".into()),
            SourceConfig::Nflog { name, group } => {
                name.clone().unwrap_or_else(|| format!("nflog:{group}"))
            }
            SourceConfig::Honeyport { name, .. } => {
                name.clone().unwrap_or_else(|| "honeyport".into())
            }
        }
    }
}

/// Memory bounds and counting defaults of a [`crate::Tracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the counting state may use (pairs and evidence); attackers
    /// choose how many addresses appear. The default, 100 MB, counts more
    /// than a million (rule, attacker) pairs.
    pub memory: usize,
    /// At most this many pairs, whatever the memory allows.
    pub max_tracked: Option<usize>,
    /// Default network sizes attackers are counted by (a rule may set its
    /// own): IPv4 per address, IPv6 per /64.
    pub prefix_v4: u8,
    /// Default network size attackers are counted by for IPv6 (per /64).
    pub prefix_v6: u8,
    /// Evidence lines kept per address (at most
    /// [`palisade_model::decision::MAX_EVIDENCE_LINES`]; with none, the
    /// evidence log's share of `memory` holds pairs instead).
    pub evidence_lines: usize,
    /// Longest evidence line kept, in bytes.
    pub evidence_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: DEFAULT_MEMORY,
            max_tracked: None,
            prefix_v4: 32,
            prefix_v6: 64,
            evidence_lines: palisade_model::decision::MAX_EVIDENCE_LINES,
            evidence_len: 300,
        }
    }
}

/// The default memory budget of the counting state: 100 MB.
pub const DEFAULT_MEMORY: usize = 100_000_000;

fn de_prefix_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    de_prefix(d, 8, 32).map(Some)
}

fn de_prefix_v6<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    de_prefix(d, 16, 128).map(Some)
}

/// A prefix length of `min` to `max` bits.
pub fn de_prefix<'de, D: Deserializer<'de>>(d: D, min: u8, max: u8) -> Result<u8, D::Error> {
    let n = i64::deserialize(d)?;
    if !(i64::from(min)..=i64::from(max)).contains(&n) {
        return Err(D::Error::custom(format!(
            "prefix length {n} out of range: use {min} to {max} bits"
        )));
    }
    Ok(n as u8)
}

fn yes() -> bool {
    true
}

fn default_journalctl() -> PathBuf {
    PathBuf::from("journalctl")
}

/// Five failures within ten minutes ban for an hour (fail2ban's defaults
/// are 5 in 10m for 10m; palisade bans longer since the ban is shared).
pub fn default_stages() -> Vec<StageConfig> {
    vec![StageConfig {
        name: "ban".into(),
        count: 5,
        within: Duration::from_secs(600),
        ban: Span::For(Duration::from_secs(3600)),
        list: None,
    }]
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > 64 {
        return Err(D::Error::custom(format!(
            "{s:?}: a name must be 1 to 64 characters"
        )));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
    {
        return Err(D::Error::custom(format!(
            "{s:?}: a name may contain only letters, digits and - _ . / :"
        )));
    }
    Ok(s)
}

fn de_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    if !(1..=1000).contains(&n) {
        return Err(D::Error::custom(format!(
            "count {n} out of range: use 1 to 1000 failures"
        )));
    }
    Ok(n as u32)
}

fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Span::deserialize(d)? {
        Span::For(w) => Ok(w),
        Span::Forever => Err(D::Error::custom(
            "a counting window cannot be forever: use a duration such as 10m or 1d",
        )),
    }
}

fn de_stages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StageConfig>, D::Error> {
    let mut stages = Vec::<StageConfig>::deserialize(d)?;
    if stages.is_empty() {
        return Err(D::Error::custom(
            "a rule needs at least one stage (or leave `stages` out for the default: 5 within 10m ban 1h)",
        ));
    }
    stages.sort_by_key(|s| s.count);
    for w in stages.windows(2) {
        if w[0].count == w[1].count {
            return Err(D::Error::custom(format!(
                "stages {:?} and {:?} both fire at count {}: give each stage its own count",
                w[0].name, w[1].name, w[0].count
            )));
        }
    }
    Ok(stages)
}

fn de_patterns<'de, D: Deserializer<'de>>(
    d: D,
    kind: PatternKind,
) -> Result<Vec<String>, D::Error> {
    let pats = Vec::<String>::deserialize(d)?;
    for p in &pats {
        check_native_pattern(p, kind).map_err(D::Error::custom)?;
    }
    Ok(pats)
}

fn de_bad_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    de_patterns(d, PatternKind::Bad)
}

fn de_good_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    de_patterns(d, PatternKind::Good)
}

fn de_ignore_patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    de_patterns(d, PatternKind::Ignore)
}

/// A commented example of `[[rule]]` and `[[source]]` tables, ready to be
/// appended to palisade's configuration template. It parses.
pub const EXAMPLE_TOML: &str = r#"
# ---------------------------------------------------------------------------
# Detection: sources of log lines and the rules that find attackers in them.
# The built-in rule pack (sshd, postfix, dovecot, nginx/apache, port probes)
# is used when no [[rule]] is configured. Try rules on a log file with
# `palisade detect --config FILE /var/log/auth.log`.
# ---------------------------------------------------------------------------

# A log file, followed like `tail -F` (rotation by rename or truncation is
# handled; the read position is kept in the state directory).
[[source]]
kind = "file"
name = "auth"
path = "/var/log/auth.log"
# start = "end"           # first run: "end" (default) or "beginning"

# A UNIX datagram socket for syslog (rsyslog omuxsock, syslog-ng unix-dgram).
# palisade creates it with mode 0600 (0660 with `group`).
# [[source]]
# kind = "syslog-socket"
# path = "/run/palisade/syslog.sock"
# group = "adm"

# A named pipe (rsyslog ompipe); created if absent.
# [[source]]
# kind = "fifo"
# path = "/run/palisade/kernel.pipe"

# The systemd journal (journalctl -f -o json), resumed by cursor.
# [[source]]
# kind = "journal"
# units = ["ssh.service"]

# Kernel NFLOG group for port probes (palisade adds `log group N` itself).
# Bans from it are forgeable (a SYN can carry any source address).
# [[source]]
# kind = "nflog"
# group = 5

# Decoy TCP ports palisade listens on: a peer completing a handshake there is
# banned by the built-in `honeyport` rule, and the ban is verified.
# [[source]]
# kind = "honeyport"
# ports = [23, 2323, 3389]
# bind = "::"             # "::" also takes IPv4
# max_per_second = 100    # accepts a second; the rest wait in the backlog

# A rule with palisade patterns: `<HOST>` is the attacker's address. Patterns
# are matched against the syslog message (after "host prog[pid]: "), must
# start with ^, and must end with $ when something unbounded precedes <HOST>.
[[rule]]
name = "sshd-password"
program = "sshd"
bad = [
  '^Failed password for (?:invalid user )?.*? from <HOST> port \d+ ssh2$',
]
good = ['^Accepted (?:password|publickey) for \S+ from <HOST> port \d+ ssh2(?:: .*)?$']
ignore = []
scope = "network"          # or "local": act on this node only
# banban-style stages: a brief throttle after 3 failures, a long block after 10
[[rule.stages]]
name = "throttle"
count = 3
within = "10m"
ban = "3m"
list = "THROTTLE"          # xt_recent list, for the xt_recent enforcer
[[rule.stages]]
name = "block"
count = 10
within = "1h"
ban = "2d"
list = "BLOCKER"

# A rule from a fail2ban filter file (with an optional mode).
# [[rule]]
# name = "f2b-sshd"
# fail2ban_filter = "/etc/fail2ban/filter.d/sshd.conf"
# mode = "aggressive"
# [[rule.stages]]
# name = "ban"
# count = 5
# within = "10m"
# ban = "1h"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        rule: Vec<RuleConfig>,
        #[serde(default)]
        source: Vec<SourceConfig>,
    }

    fn parse(s: &str) -> Result<Doc, String> {
        toml::from_str::<Doc>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn example_parses() {
        let doc = parse(EXAMPLE_TOML).unwrap();
        assert_eq!(doc.rule.len(), 1);
        assert_eq!(doc.rule[0].stages.len(), 2);
        assert_eq!(doc.rule[0].stages[0].list.as_deref(), Some("THROTTLE"));
        assert_eq!(doc.source.len(), 1);
        assert_eq!(doc.source[0].name(), "auth");
    }

    #[test]
    fn errors_point_at_the_value() {
        let err = parse("[[rule]]\nname = \"x\"\nbad = ['Failed from <HOST>']\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("must start with ^"), "{err}");
        let err =
            parse("[[rule]]\nname = \"x\"\nbad = ['^Failed .* from <HOST> port']\n").unwrap_err();
        assert!(err.contains("end with $"), "{err}");
        let err = parse("[[rule]]\nname = \"x\"\nbad = ['^Failed (from <HOST>$']\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[[rule]]\nname = \"x\"\nbad = ['^Failed from$']\n").unwrap_err();
        assert!(err.contains("<HOST>"), "{err}");
        let err = parse("[[rule]]\nname = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse(
            "[[rule]]\nname = \"x\"\n[[rule.stages]]\nname='a'\ncount=0\nwithin='1m'\nban='1h'\n",
        )
        .unwrap_err();
        assert!(err.contains("line 5"), "{err}");
        let err = parse(
            "[[rule]]\nname = \"x\"\n[[rule.stages]]\nname='a'\ncount=3\nwithin='forever'\nban='1h'\n",
        )
        .unwrap_err();
        assert!(err.contains("forever"), "{err}");
        let err = parse("[[source]]\nkind = \"file\"\npath = \"/x\"\nport = 3\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse("[[source]]\nkind = \"carrier-pigeon\"\n").unwrap_err();
        assert!(err.contains("carrier-pigeon"), "{err}");
    }

    #[test]
    fn honeyport_sources() {
        let doc = parse("[[source]]\nkind = \"honeyport\"\nports = [23, 2323]\n").unwrap();
        assert_eq!(doc.source[0].name(), "honeyport");
        assert!(!doc.source[0].forgeable());
        let SourceConfig::Honeyport {
            bind,
            max_per_second,
            ..
        } = &doc.source[0]
        else {
            panic!()
        };
        assert_eq!((bind.to_string().as_str(), *max_per_second), ("::", 100));
        // (Source tables are tagged by `kind`, so errors point at the table.)
        for (bad, says) in [
            ("ports = []", "1 to 64"),
            ("ports = [0]", "port 0"),
            ("ports = [23, 23]", "twice"),
            ("ports = [70000]", "70000"),
            ("ports = [23]\nbind = \"nowhere\"", "address"),
        ] {
            let err = parse(&format!("[[source]]\nkind = \"honeyport\"\n{bad}\n")).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let doc = parse("[[source]]\nkind = \"nflog\"\ngroup = 5\n").unwrap();
        assert!(doc.source[0].forgeable());
    }

    #[test]
    fn defaults() {
        let doc = parse("[[rule]]\nname = \"x\"\nbad = ['^x <HOST>$']\n").unwrap();
        let r = &doc.rule[0];
        assert!(r.enabled);
        assert_eq!(r.scope, Scope::Network);
        assert_eq!(r.stages, default_stages());
    }
}

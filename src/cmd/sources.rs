//! The log sources the agent reads: the configured `[[source]]`s, or, when
//! none is configured, those found on this server for the services the
//! built-in rules know (`palisade sources` lists them).
//!
//! Finding looks only at well-known paths (the Debian and Red Hat layouts)
//! and never reads a log: a file that exists is followed from its end, a
//! service that logs only to the journal is read through `journalctl` with a
//! match on the program, which the journal sets itself (a sender cannot
//! claim to be sshd).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use palisade_config::Config;
use palisade_detect::SourceConfig;
use serde::Serialize;

use super::Context;

#[derive(Debug, Args)]
#[command(
    after_help = "With no [[source]] in the configuration, the agent finds the logs of the
services the built-in rules know: sshd (/var/log/auth.log, /var/log/secure,
else the journal), postfix and dovecot (/var/log/mail.log, /var/log/maillog,
/var/log/dovecot.log, else the journal), nginx and apache (their access and
error logs), where those programs are installed. Configured sources replace
the found ones; `detect_sources = false` in [detect] turns finding off."
)]
pub struct SourcesArgs {
    /// One JSON object: the sources, where they come from, and the rules
    #[arg(long)]
    json: bool,
}

/// Where the agent's sources come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `[[source]]` in the configuration.
    Configured,
    /// Found on this server (none configured).
    Detected,
    /// None configured and finding is off (`detect_sources = false`).
    Off,
}

/// One source the agent reads, and the services whose logs it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub source: SourceConfig,
    /// The services it was found for (empty for a configured source).
    pub services: Vec<&'static str>,
}

/// The sources the agent reads with `config`, found under `/`.
pub fn for_agent(config: &Config) -> (Origin, Vec<Found>) {
    resolve(config, Path::new("/"))
}

fn resolve(config: &Config, root: &Path) -> (Origin, Vec<Found>) {
    if !config.source.is_empty() {
        let configured = config
            .source
            .iter()
            .map(|s| Found {
                source: s.clone(),
                services: Vec::new(),
            })
            .collect();
        return (Origin::Configured, configured);
    }
    if !config.detect.detect_sources {
        return (Origin::Off, Vec::new());
    }
    (Origin::Detected, discover(root))
}

/// A service the built-in rules know, and where it logs.
struct Service {
    name: &'static str,
    /// Its programs; the service counts as installed if one exists.
    programs: &'static [&'static str],
    /// Its log files count even where none of its programs is installed.
    any_file_counts: bool,
    /// Its log files, every one that exists is followed.
    files: &'static [&'static str],
    /// Journal matches used when none of its files exists.
    journal: &'static [&'static str],
}

const SERVICES: &[Service] = &[
    Service {
        name: "sshd",
        programs: &["/usr/sbin/sshd"],
        // An auth log is written by the syslog daemon whether or not sshd
        // is installed yet; following it costs nothing.
        any_file_counts: true,
        files: &["/var/log/auth.log", "/var/log/secure"],
        journal: &["_COMM=sshd", "_COMM=sshd-session"],
    },
    Service {
        name: "postfix",
        programs: &["/usr/sbin/postfix"],
        any_file_counts: false,
        files: &["/var/log/mail.log", "/var/log/maillog"],
        journal: &[
            "_SYSTEMD_UNIT=postfix@-.service",
            "_SYSTEMD_UNIT=postfix.service",
        ],
    },
    Service {
        name: "dovecot",
        programs: &["/usr/sbin/dovecot"],
        any_file_counts: false,
        files: &[
            "/var/log/dovecot.log",
            "/var/log/mail.log",
            "/var/log/maillog",
        ],
        journal: &["_SYSTEMD_UNIT=dovecot.service"],
    },
    Service {
        name: "nginx",
        programs: &["/usr/sbin/nginx"],
        any_file_counts: false,
        files: &["/var/log/nginx/access.log", "/var/log/nginx/error.log"],
        journal: &[],
    },
    Service {
        name: "apache",
        programs: &["/usr/sbin/apache2", "/usr/sbin/httpd"],
        any_file_counts: false,
        files: &[
            "/var/log/apache2/access.log",
            "/var/log/apache2/error.log",
            "/var/log/httpd/access_log",
            "/var/log/httpd/error_log",
        ],
        journal: &[],
    },
];

/// The journal can be read here: journald runs (or keeps its files) and
/// journalctl is installed.
fn has_journal(root: &Path) -> bool {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    (at("/run/systemd/journal/socket").exists() || at("/var/log/journal").is_dir())
        && (at("/usr/bin/journalctl").exists() || at("/bin/journalctl").exists())
}

/// The sources of the services found under `root` (`/` on a server), each
/// source once, with every service it carries.
pub fn discover(root: &Path) -> Vec<Found> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let journal = has_journal(root);
    let mut found: Vec<Found> = Vec::new();
    let mut add = |source: SourceConfig, service: &'static str| match found
        .iter_mut()
        .find(|f| f.source == source)
    {
        Some(f) => f.services.push(service),
        None => found.push(Found {
            source,
            services: vec![service],
        }),
    };
    for service in SERVICES {
        let installed = service.programs.iter().any(|p| at(p).exists());
        let files: Vec<&str> = service
            .files
            .iter()
            .copied()
            .filter(|f| at(f).is_file() && (installed || service.any_file_counts))
            .collect();
        // dovecot logs either to its own file or with postfix in the mail
        // log: its own file, where it exists, is the whole story.
        let files = match (service.name, files.first()) {
            ("dovecot", Some(&own)) if own.ends_with("dovecot.log") => vec![own],
            _ => files,
        };
        if !files.is_empty() {
            for f in files {
                add(file_source(f), service.name);
            }
        } else if installed && journal && !service.journal.is_empty() {
            add(journal_source(service), service.name);
        }
    }
    found
}

fn file_source(path: &str) -> SourceConfig {
    SourceConfig::File {
        name: None,
        path: PathBuf::from(path),
        start: Default::default(),
    }
}

fn journal_source(service: &Service) -> SourceConfig {
    SourceConfig::Journal {
        name: Some(format!("journal:{}", service.name)),
        units: Vec::new(),
        matches: service.journal.iter().map(|m| m.to_string()).collect(),
        journalctl: "journalctl".into(),
        directory: None,
    }
}

/// The detection rules: the configured ones, with the built-in pack merged
/// in unless `[detect] builtin = false`.
pub fn rules(config: &Config) -> Vec<palisade_detect::RuleConfig> {
    if config.detect.builtin {
        palisade_detect::builtin::with_builtin(config.rule.clone())
    } else {
        config.rule.clone()
    }
}

/// The enabled rules' names, built-in ones merged in.
pub fn rule_names(config: &Config) -> Vec<String> {
    rules(config)
        .into_iter()
        .filter(|r| r.enabled)
        .map(|r| r.name)
        .collect()
}

/// One line for the agent's start-up output: which sources and rules are on.
pub fn summary(origin: Origin, found: &[Found], rules: &[String]) -> String {
    match origin {
        Origin::Off => "no log sources configured and detect_sources = false: detection is off".into(),
        _ if found.is_empty() => "no log sources configured and none found on this server (sshd, postfix, dovecot, nginx, apache): detection is off; add a [[source]]".into(),
        _ => format!(
            "detection on: {} {} ({}), rules {}",
            crate::render::count(found.len() as u64, "source", "sources"),
            match origin {
                Origin::Configured => "configured",
                _ => "found on this server",
            },
            found
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join(", "),
            rules.join(", ")
        ),
    }
}

fn describe(f: &Found) -> String {
    if f.services.is_empty() {
        f.source.name()
    } else {
        format!("{} for {}", f.source.name(), f.services.join("+"))
    }
}

#[derive(Serialize)]
struct Listing<'a> {
    origin: Origin,
    sources: Vec<SourceJson<'a>>,
    rules: &'a [String],
}

#[derive(Serialize)]
struct SourceJson<'a> {
    name: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a Path>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    matches: &'a [String],
    services: &'a [&'static str],
}

fn to_json(f: &Found) -> SourceJson<'_> {
    let (kind, path, matches): (_, Option<&Path>, &[String]) = match &f.source {
        SourceConfig::File { path, .. } => ("file", Some(path), &[]),
        SourceConfig::SyslogSocket { path, .. } => ("syslog-socket", Some(path), &[]),
        SourceConfig::Fifo { path, .. } => ("fifo", Some(path), &[]),
        SourceConfig::Journal { matches, .. } => ("journal", None, matches),
        SourceConfig::Stdin { .. } => ("stdin", None, &[]),
        SourceConfig::Nflog { .. } => ("nflog", None, &[]),
        SourceConfig::Honeyport { .. } => ("honeyport", None, &[]),
    };
    SourceJson {
        name: f.source.name(),
        kind,
        path,
        matches,
        services: &f.services,
    }
}

pub fn run(ctx: &Context, args: SourcesArgs) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let (origin, found) = for_agent(&config);
    let rules = rule_names(&config);
    if args.json {
        let listing = Listing {
            origin,
            sources: found.iter().map(to_json).collect(),
            rules: &rules,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    match origin {
        Origin::Configured => println!("configured sources ([[source]] in the configuration):"),
        Origin::Detected => println!("found on this server (no [[source]] configured):"),
        Origin::Off => {
            println!("none: no [[source]] configured and detect_sources = false");
            return Ok(ExitCode::SUCCESS);
        }
    }
    if found.is_empty() {
        println!("  none (add a [[source]] to the configuration)");
    }
    for f in &found {
        println!("  {}", describe(f));
    }
    println!("rules: {}", rules.join(", "));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        dir
    }

    fn names(found: &[Found]) -> Vec<String> {
        found.iter().map(describe).collect()
    }

    #[test]
    fn an_auth_log_is_followed_for_sshd() {
        let root = tree(&[
            "/var/log/auth.log",
            "/usr/bin/journalctl",
            "/run/systemd/journal/socket",
        ]);
        assert_eq!(
            names(&discover(root.path())),
            ["file:/var/log/auth.log for sshd"]
        );
    }

    #[test]
    fn without_an_auth_log_sshd_is_read_from_the_journal() {
        let root = tree(&[
            "/usr/sbin/sshd",
            "/usr/bin/journalctl",
            "/run/systemd/journal/socket",
        ]);
        let found = discover(root.path());
        assert_eq!(names(&found), ["journal:sshd for sshd"]);
        let SourceConfig::Journal { matches, .. } = &found[0].source else {
            panic!("not a journal source: {found:?}");
        };
        assert!(
            matches.iter().all(|m| m.starts_with("_COMM=")),
            "{matches:?}"
        );
    }

    #[test]
    fn services_not_installed_are_not_followed() {
        let root = tree(&["/var/log/nginx/access.log", "/var/log/mail.log"]);
        assert!(discover(root.path()).is_empty());
    }

    #[test]
    fn a_shared_mail_log_is_one_source_for_both_services() {
        let root = tree(&[
            "/usr/sbin/postfix",
            "/usr/sbin/dovecot",
            "/var/log/mail.log",
            "/usr/sbin/nginx",
            "/var/log/nginx/access.log",
            "/var/log/nginx/error.log",
        ]);
        assert_eq!(
            names(&discover(root.path())),
            [
                "file:/var/log/mail.log for postfix+dovecot",
                "file:/var/log/nginx/access.log for nginx",
                "file:/var/log/nginx/error.log for nginx",
            ]
        );
    }

    #[test]
    fn configured_sources_replace_found_ones_and_finding_can_be_off() {
        let root = tree(&["/var/log/auth.log"]);
        let config = Config::parse(
            "[[source]]\nkind = \"file\"\npath = \"/srv/app.log\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let (origin, found) = resolve(&config, root.path());
        assert_eq!(origin, Origin::Configured);
        assert_eq!(names(&found), ["file:/srv/app.log"]);
        let off = Config::parse("[detect]\ndetect_sources = false\n", Path::new("t.toml")).unwrap();
        assert_eq!(resolve(&off, root.path()), (Origin::Off, Vec::new()));
        let (origin, found) = resolve(&Config::default(), root.path());
        assert_eq!((origin, found.len()), (Origin::Detected, 1));
    }
}

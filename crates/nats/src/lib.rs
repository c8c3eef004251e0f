//! palisade over NATS JetStream.
//!
//! - A replicated KV bucket, `<bucket_prefix>_decisions`, holds the current
//!   decisions, one key per decision (`palisade_wire::keys`), the value the
//!   decision's JSON. Its stream republishes every change on
//!   `<subject_prefix>.changes.<key>`, stamped with the revision; agents
//!   ([`NatsBus`], [`follow`]) read a [`snapshot`] the workers keep, then
//!   the changes after it with direct gets ([`direct`]), then the
//!   republished changes, with no JetStream consumer of their own; an
//!   agent that reconnects asks for what came after the revision it
//!   stored.
//! - Nodes send intents as requests on `<subject_prefix>.intents.<node>`
//!   and heartbeats on `<subject_prefix>.beat.<node>`. Stateless policy
//!   workers ([`worker`], `palisade hub --join nats://…`) consume them as a
//!   queue group, apply palisade's policy against the buckets (a
//!   [`ledger::MirrorLedger`]) and write the decisions; any number of them
//!   can run, and any of them can stop.
//! - `<bucket_prefix>_state` holds what the policy remembers besides
//!   decisions: repeat offenders, quorum reports, nodes (the last intent
//!   applied from each, so retries are recognised).
//!
//! Expiry: on servers with per-message TTL (2.11 and newer) each decision
//! is written with a TTL matching its expiry; on older ones (Debian's
//! 2.9) workers purge expired keys. Agents ignore expired values either
//! way, and the kernel expires bans by itself.
//!
//! The streams are created by workers with plain JetStream API requests
//! holding exactly the settings wanted ([`streams`]), which every server
//! since 2.9 understands.

pub mod bus;
pub mod direct;
mod error;
pub mod follow;
pub mod jitter;
pub mod ledger;
pub mod snapshot;
pub mod streams;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;

pub use bus::NatsBus;
pub use error::{NatsError, OptionsError};
pub use palisade_wire::tls::TlsOptions;
pub use worker::{WorkerOptions, run_worker};

/// How a node or worker reaches NATS, and which palisade network on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsOptions {
    /// `host:port` of each server to try.
    pub servers: Vec<String>,
    /// How to authenticate.
    pub auth: Auth,
    /// TLS (the `tls://` scheme, or a CA or client certificate configured).
    pub tls: Option<TlsOptions>,
    /// First token of every subject palisade uses (`palisade`).
    pub subject_prefix: String,
    /// Start of every bucket name (`palisade` gives `palisade_decisions`).
    pub bucket_prefix: String,
    /// Replicas of the buckets a worker creates (1 for a single server, 3
    /// for a cluster).
    pub replicas: usize,
    /// The role this node's intents are decided with: the subject they go
    /// to names it (`PREFIX.intents.NODE` for a node, `PREFIX.reports.NODE`
    /// for a reporter, `PREFIX.operator.NODE` for an operator), so NATS
    /// permissions on those subjects are what grant a role.
    pub role: palisade_wire::Role,
    /// The JetStream domain holding the buckets, for clients of a server
    /// in another domain or with no JetStream of its own (a site's leaf
    /// node): their JetStream requests then go to `$JS.<domain>.API.…`,
    /// which the cluster answers across the leaf connection. None: the
    /// connected server's own JetStream (`$JS.API.…`).
    pub jetstream_domain: Option<String>,
}

/// How a client authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An nkey seed (`SU…`).
    Nkey(String),
    /// A `.creds` file (JWT and nkey seed).
    Creds(PathBuf),
}

impl NatsOptions {
    /// Options from a join URL: `nats://[user:password@]host:port[,host:port…]`
    /// or `tls://…`; prefixes default to `palisade`.
    pub fn from_url(url: &str) -> Result<NatsOptions, OptionsError> {
        let bad = || OptionsError::BadUrl(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("nats://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("tls://") {
            (true, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((cred, hosts)) => {
                let auth = match cred.split_once(':') {
                    Some((u, p)) => Auth::UserPassword {
                        user: u.to_string(),
                        password: p.to_string(),
                    },
                    None => Auth::Token(cred.to_string()),
                };
                (auth, hosts)
            }
            None => (Auth::None, rest),
        };
        let servers: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        if servers.is_empty()
            || servers
                .iter()
                .any(|s| s.contains('/') || s.contains(char::is_whitespace))
        {
            return Err(bad());
        }
        Ok(NatsOptions {
            servers,
            auth,
            tls: tls.then(TlsOptions::default),
            subject_prefix: "palisade".into(),
            bucket_prefix: "palisade".into(),
            replicas: 1,
            role: palisade_wire::Role::Node,
            jetstream_domain: None,
        })
    }

    /// Checks the prefixes (they become subject tokens and bucket names).
    pub fn validate(&self) -> Result<(), OptionsError> {
        for (what, value) in [
            ("the subject prefix", &self.subject_prefix),
            ("the bucket prefix", &self.bucket_prefix),
        ] {
            if value.is_empty()
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(OptionsError::BadName {
                    what,
                    value: value.clone(),
                });
            }
        }
        if let Some(domain) = &self.jetstream_domain
            && (domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(OptionsError::BadName {
                what: "the JetStream domain",
                value: domain.clone(),
            });
        }
        Ok(())
    }

    /// The prefix of the JetStream API subjects: `$JS.API`, or
    /// `$JS.<domain>.API` with a JetStream domain.
    pub fn api_prefix(&self) -> String {
        match &self.jetstream_domain {
            Some(domain) => format!("$JS.{domain}.API"),
            None => "$JS.API".into(),
        }
    }

    /// The decisions bucket's name.
    pub fn decisions_bucket(&self) -> String {
        format!("{}_decisions", self.bucket_prefix)
    }

    /// The state bucket's name.
    pub fn state_bucket(&self) -> String {
        format!("{}_state", self.bucket_prefix)
    }

    /// Where the server republishes every change of the decisions bucket
    /// (`<subject_prefix>.changes.<key>`): agents subscribe to it. Only
    /// the server publishes there; no user needs to.
    pub fn changes_subject(&self) -> String {
        format!("{}.changes", self.subject_prefix)
    }

    /// Where workers announce the bucket revision they have seen
    /// (`<subject_prefix>.head`): an agent behind it asks the bucket for
    /// what it missed at once, rather than at its next probe. Agents
    /// subscribe to it; only workers publish there.
    pub fn head_subject(&self) -> String {
        format!("{}.head", self.subject_prefix)
    }

    /// The stream holding the decisions snapshot ([`snapshot`]).
    pub fn snapshot_stream(&self) -> String {
        format!("SNAP_{}", self.decisions_bucket())
    }

    /// The subjects of the snapshot stream (`<subject_prefix>.snapshot.…`).
    pub fn snapshot_subject(&self) -> String {
        format!("{}.snapshot", self.subject_prefix)
    }

    /// The subject this node's intents go to (it names the role).
    pub fn intents_subject(&self, node: &str) -> String {
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            self.role.intents_word(),
            subject_token(node)
        )
    }

    /// The subject of this node's heartbeats.
    pub fn beat_subject(&self, node: &str) -> String {
        format!("{}.beat.{}", self.subject_prefix, subject_token(node))
    }

    /// What logs and `palisade status` show.
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("nats {scheme}://{}", self.servers.join(","))
    }

    /// The URLs handed to the client.
    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        self.servers
            .iter()
            .map(|s| format!("{scheme}://{s}"))
            .collect()
    }
}

/// A node name as one subject token (dots would add tokens).
pub fn subject_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Connects to NATS. `name` identifies the connection in the server's
/// monitoring; `connections` counts each (re)connection, so watches can
/// start again after one (a consumer on a server that died may never
/// deliver again).
pub async fn connect(
    options: &NatsOptions,
    name: &str,
    connections: Arc<AtomicU64>,
) -> Result<async_nats::Client, NatsError> {
    let mut co = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let connections = connections.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    connections.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .name(format!("palisade {name}"))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(15)))
        .ping_interval(Duration::from_secs(10))
        .retain_servers_order()
        // Reconnect quickly (bans must keep flowing when a server dies),
        // but spread: a fleet reconnecting to a restarted server at once
        // would meet it all in the same instant.
        .reconnect_delay_callback(|attempts| {
            jitter::spread(Duration::from_millis((50u64 << attempts.min(6)).min(2_000)))
        });
    co = match &options.auth {
        Auth::None => co,
        Auth::UserPassword { user, password } => {
            co.user_and_password(user.clone(), password.clone())
        }
        Auth::Token(t) => co.token(t.clone()),
        Auth::Nkey(seed) => co.nkey(seed.clone()),
        Auth::Creds(path) => {
            co.credentials_file(path)
                .await
                .map_err(|e| NatsError::Credentials {
                    path: path.clone(),
                    detail: e.to_string(),
                })?
        }
    };
    if let Some(tls) = &options.tls {
        let config = tls.client_config()?;
        co = co.require_tls(true).tls_client_config(config);
    }
    co.connect(options.urls())
        .await
        .map_err(|e| NatsError::Connect {
            servers: options.describe(),
            detail: e.to_string(),
        })
}

/// The buckets of one palisade network, opened.
#[derive(Clone)]
pub struct Buckets {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The decisions bucket.
    pub decisions: jetstream::kv::Store,
    /// Opened by workers only.
    pub state: Option<jetstream::kv::Store>,
    /// The decisions bucket's name.
    pub decisions_name: String,
    /// The state bucket's name.
    pub state_name: String,
    /// The server keeps per-message TTLs (2.11+) and the decisions bucket
    /// was made for them.
    pub ttl: bool,
}

/// True for servers with per-message TTL (2.11 and newer).
pub fn server_has_ttl(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (2, 11)
}

/// Opens the buckets; with `create`, makes them first when missing (workers
/// do, nodes do not).
pub async fn open_buckets(
    client: &async_nats::Client,
    options: &NatsOptions,
    create: bool,
) -> Result<Buckets, NatsError> {
    let decisions_name = options.decisions_bucket();
    let state_name = options.state_bucket();
    if create {
        let ttl = server_has_ttl(&client.server_info().version);
        let changes = options.changes_subject();
        let api = options.api_prefix();
        streams::ensure_bucket(
            client,
            &api,
            &decisions_name,
            options.replicas,
            ttl,
            Some(&changes),
        )
        .await?;
        streams::ensure_bucket(client, &api, &state_name, options.replicas, false, None).await?;
        streams::ensure_snapshot_stream(client, options).await?;
    }
    let js = match &options.jetstream_domain {
        Some(domain) => jetstream::with_domain(client.clone(), domain),
        None => jetstream::new(client.clone()),
    };
    let open = |name: String| {
        let js = js.clone();
        async move {
            js.get_key_value(name.clone())
                .await
                .map_err(|e| NatsError::Bucket {
                    bucket: name,
                    detail: e.to_string(),
                })
        }
    };
    let decisions = open(decisions_name.clone()).await?;
    // Nodes read decisions only.
    let (state, ttl) = if create {
        let state = open(state_name.clone()).await?;
        let ttl = js
            .get_stream(format!("KV_{decisions_name}"))
            .await
            .map(|s| s.cached_info().config.allow_message_ttl)
            .unwrap_or(false);
        (Some(state), ttl)
    } else {
        (None, false)
    };
    Ok(Buckets {
        js,
        decisions,
        state,
        decisions_name,
        state_name,
        ttl,
    })
}

/// A shared, lazily made connection: nodes are built before any runtime
/// runs, and must start (and enforce) while NATS is away.
#[derive(Clone)]
pub(crate) struct Lazy {
    options: Arc<NatsOptions>,
    name: String,
    cell: Arc<tokio::sync::Mutex<Option<(async_nats::Client, Buckets)>>>,
    pub(crate) connections: Arc<AtomicU64>,
}

impl Lazy {
    pub(crate) fn new(options: NatsOptions, name: &str) -> Lazy {
        Lazy {
            options: Arc::new(options),
            name: name.to_string(),
            cell: Arc::default(),
            connections: Arc::default(),
        }
    }

    pub(crate) fn options(&self) -> &NatsOptions {
        &self.options
    }

    pub(crate) fn shared_options(&self) -> Arc<NatsOptions> {
        self.options.clone()
    }

    pub(crate) async fn get(&self) -> Result<(async_nats::Client, Buckets), NatsError> {
        let mut cell = self.cell.lock().await;
        if let Some(c) = &*cell {
            return Ok(c.clone());
        }
        let client = connect(&self.options, &self.name, self.connections.clone()).await?;
        let buckets = open_buckets(&client, &self.options, false).await?;
        *cell = Some((client.clone(), buckets.clone()));
        Ok((client, buckets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = NatsOptions::from_url("nats://a:4222,b:4223").unwrap();
        assert_eq!(o.servers, ["a:4222", "b:4223"]);
        assert_eq!(o.auth, Auth::None);
        assert!(o.tls.is_none());
        let o = NatsOptions::from_url("tls://u:p@h:4222").unwrap();
        assert_eq!(
            o.auth,
            Auth::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
        assert!(o.tls.is_some());
        assert_eq!(o.describe(), "nats tls://h:4222");
        for bad in ["https://h:1", "nats://", "nats://h:1/x"] {
            assert!(NatsOptions::from_url(bad).is_err(), "{bad}");
        }
        assert_eq!(o.intents_subject("web.1"), "palisade.intents.web_1");
        assert_eq!(o.api_prefix(), "$JS.API");
        let mut o = o;
        o.jetstream_domain = Some("hub".into());
        assert_eq!(o.api_prefix(), "$JS.hub.API");
        assert!(o.validate().is_ok());
        o.jetstream_domain = Some("a.b".into());
        assert!(o.validate().is_err());
        assert!(server_has_ttl("2.11.0") && server_has_ttl("2.15.1"));
        assert!(!server_has_ttl("2.9.10") && !server_has_ttl("2.10.22"));
    }
}

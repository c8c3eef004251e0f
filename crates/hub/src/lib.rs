//! The palisade hub: one process with an embedded crash-safe store that
//! nodes join over HTTPS.
//!
//! Nodes send intents (bans, reports, unbans, allows); the [`writer`]
//! applies the hub's policy (`palisade-policy`) and commits each decision
//! together with its stream event; `api` streams the events to every
//! connected node with a resume cursor, or a snapshot when the cursor is
//! too old. The hub's certificate is made on first start and pinned by
//! tokens ([`identity`]); tokens are kept hashed ([`tokens`]).
//!
//! Module map (the public ones are what the binary uses; the rest are the
//! crate's own; imports point one way: `api` builds the router from its
//! routes and `dashboard`'s, both take `Peer` from `server`, and `state`
//! holds the dashboard's share without knowing its routes):
//! - `state`: what handlers share (token cache, live node status);
//! - `ledger`: the policy's view of the store, with events; [`records`]:
//!   how the hub's records are laid out;
//! - [`writer`]: the single writer with group commit;
//! - `api` and `server`: HTTPS routes and the TLS accept loop (`server`
//!   gives each request its `Peer`);
//! - [`limits`]: connection caps and the client key (IPv4 address or
//!   IPv6 /64) floods are counted by;
//! - `admin`: the root-only control socket for `palisade hub …`;
//! - `metrics`: Prometheus counters; `activity`: new bans per minute, for
//!   the dashboard's chart;
//! - [`dashboard`]: the web dashboard (sessions, pages, live activity).

// Handlers return ready HTTP responses as their errors.
#![allow(clippy::result_large_err)]

mod activity;
pub(crate) mod admin;
pub(crate) mod api;
pub mod dashboard;
pub mod identity;
pub(crate) mod ledger;
pub mod limits;
pub(crate) mod metrics;
pub mod records;
pub(crate) mod server;
mod snapshot;
pub(crate) mod state;
pub mod tables;
pub mod tokens;
mod upgraded;
pub mod writer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use palisade_policy::{Policy, PolicyOptions};
use palisade_store::{Options, Store};
use palisade_wire::{Token, TokenKind};
use tokio::net::TcpListener;
use tracing::info;

pub use state::Hub;

/// The hub's store file, inside its state directory.
pub const STORE_FILE: &str = "hub.redb";
/// Capacity of the live event channel; a stream that falls further behind
/// reads from the store instead.
const LIVE_CHANNEL: usize = 16_384;
/// How often live node status (heartbeats) is written to the store.
const PERSIST_NODES_EVERY: Duration = Duration::from_secs(30);

/// Where the hub lives and how it decides.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Where the hub keeps its store, certificate and feeds.
    pub state_dir: PathBuf,
    /// Where agents connect (HTTPS).
    pub listen: SocketAddr,
    /// The root-only control socket.
    pub socket: PathBuf,
    /// An operator's certificate and key (PEM) instead of the hub's own.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Extra names and addresses for the hub's own certificate.
    pub names: Vec<String>,
    /// How the policy decides.
    pub policy: PolicyOptions,
    /// Allow entries from the configuration.
    pub allows: Vec<palisade_policy::StaticAllow>,
    /// Stream events kept for nodes that reconnect.
    pub events_kept: u64,
    /// Feeds the hub pulls for the whole network: (feed, how often).
    pub feeds: Vec<(palisade_feed::Feed, Duration)>,
    /// Connections open at once, in all and per client.
    pub connections: limits::ConnectionCaps,
}

/// A hub running on the current tokio runtime.
pub struct RunningHub {
    /// The hub's shared state.
    pub hub: Arc<Hub>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
}

impl RunningHub {
    /// The address it listens at.
    pub fn listen(&self) -> SocketAddr {
        self.hub.listen
    }

    /// Its certificate's pin (`None` for an operator's certificate).
    pub fn pin(&self) -> Option<[u8; 32]> {
        self.hub.pin
    }

    /// Stops accepting, ends every stream, and waits for the writer to
    /// finish what it was given.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
        // Connections still open hold the hub's state; the writer is told to
        // stop rather than waiting for them to let go.
        let _ = self.hub.writer.send(writer::Job::Stop);
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        info!("palisade hub stopped");
    }
}

/// Opens the hub's store (for token commands while the hub is stopped).
pub fn open_store(state_dir: &Path) -> Result<Store> {
    palisade_store::private_dir(state_dir)?;
    Ok(Store::open(
        &state_dir.join(STORE_FILE),
        &Options {
            // The dashboard pages through decisions by time and expiry.
            ordered: true,
            ..Options::default()
        },
    )?)
}

/// Starts the hub on the current tokio runtime.
pub async fn start(options: HubOptions) -> Result<RunningHub> {
    let store = Arc::new(open_store(&options.state_dir)?);
    let identity = identity::ensure(
        &options.state_dir,
        options.certificate.clone(),
        &options.names,
    )?;
    let tls = Arc::new(palisade_wire::tls::server_config(
        &identity.cert,
        &identity.key,
    )?);
    let listener = TcpListener::bind(options.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (in use, or not an address of this host?)",
            options.listen
        )
    })?;
    let listen = listener.local_addr()?;
    let admin_socket = palisade_control::socket::bind_root_only(&options.socket, "hub")
        .with_context(|| {
            format!(
                "cannot create the hub's control socket {}",
                options.socket.display()
            )
        })?;
    let admin_socket = tokio::net::UnixListener::from_std(admin_socket)?;

    let metrics = Arc::new(metrics::Metrics::default());
    let (live, _) = tokio::sync::broadcast::channel(LIVE_CHANNEL);
    let activity = Arc::new(activity::Activity::default());
    let (writer_handle, writer_thread) = writer::spawn(writer::WriterOptions {
        store: store.clone(),
        policy: Policy::new(options.policy.clone()),
        live: live.clone(),
        metrics: metrics.clone(),
        events_kept: options.events_kept,
        activity: activity.clone(),
    });
    writer_handle
        .send(writer::Job::StaticAllows(options.allows.clone()))
        .map_err(anyhow::Error::msg)?;
    let hub = Arc::new(Hub::new(
        store,
        identity.pin,
        listen,
        live,
        writer_handle,
        metrics,
        activity,
        options.state_dir.clone(),
    )?);

    let caps = options.connections.within_open_files();
    if caps != options.connections {
        tracing::warn!(
            "connections capped at {} in all, {} per client: the limit of open files (LimitNOFILE) allows no more",
            caps.total,
            caps.per_client
        );
    }
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(server::serve(
        listener,
        tls,
        api::router(hub.clone()),
        limits::Connections::new(caps),
    )));
    let keep = options.feeds.iter().map(|(f, _)| f.name.clone()).collect();
    let _ = hub.writer.send(writer::Job::RetireFeeds(keep));
    let h = hub.clone();
    let feeds = palisade_feed::spawn_all(
        options.feeds.clone(),
        palisade_feed::dir(&options.state_dir),
        move |name, entries| {
            let h = h.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                h.writer.send(writer::Job::Feed {
                    name,
                    entries,
                    reply: tx,
                })?;
                rx.await.unwrap_or(Err(writer::WriterError::Stopping))
            }
        },
    );
    tasks.push(tokio::spawn(admin::serve(
        admin_socket,
        hub.clone(),
        Arc::new(feeds),
    )));
    let h = hub.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(PERSIST_NODES_EVERY);
        loop {
            every.tick().await;
            let dirty = h.take_dirty_nodes();
            if !dirty.is_empty() {
                let _ = h.writer.send(writer::Job::PersistNodes(dirty));
            }
        }
    }));
    info!(
        listen = %listen,
        pin = ?identity.pin.as_ref().map(palisade_wire::token::show_pin),
        state = %options.state_dir.display(),
        "palisade hub running"
    );
    Ok(RunningHub {
        hub,
        tasks,
        writer: Some(writer_thread),
        socket: options.socket.clone(),
    })
}

/// A token kept in a root-only file of the state directory, made on first
/// use: how `palisade up` keeps the credential of its own agent and the
/// join token it prints.
pub fn kept_token(
    store: &Store,
    file: &Path,
    name: &str,
    kind: TokenKind,
    pin: Option<[u8; 32]>,
) -> Result<Token> {
    if let Ok(text) = std::fs::read_to_string(file)
        && let Ok(token) = text.trim().parse::<Token>()
    {
        let id = token.id();
        if tokens::all(store)?
            .iter()
            .any(|(i, r)| *i == id && r.is_valid())
        {
            if kind == TokenKind::Node {
                // Made before credentials had roles: the hub's own agent
                // acts for the operator.
                tokens::set_role(store, &id, palisade_wire::Role::Operator)?;
            }
            return Ok(Token { pin, ..token });
        }
    }
    // Missing or revoked: make a new one, under a free name.
    let mut candidate = name.to_string();
    let mut n = 1;
    let token = loop {
        // The hub's own agent (`palisade up`) acts for the operator.
        let spec = tokens::NewToken {
            role: palisade_wire::Role::Operator,
            ..tokens::NewToken::new(candidate.clone(), kind)
        };
        match tokens::create(store, spec, pin) {
            Ok((t, _)) => break t,
            Err(tokens::TokenError::Taken(_)) => {
                n += 1;
                candidate = format!("{name}-{n}");
            }
            // A host named like one of palisade's own actors (`hub`).
            Err(tokens::TokenError::BadName(palisade_policy::NameError::Reserved(_))) if n == 1 => {
                n += 1;
                candidate = format!("{name}-{n}");
            }
            Err(e) => return Err(e.into()),
        }
    };
    identity::write_private(file, token.to_string().as_bytes())?;
    Ok(token)
}

/// Runs the hub in the foreground until SIGINT or SIGTERM.
pub fn run(options: HubOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palisade-hub")
        .build()?;
    runtime.block_on(async {
        // Before the hub listens or says it runs (see the function).
        let stop = palisade_control::signal::shutdown();
        let hub = start(options).await?;
        stop.await;
        hub.stop().await;
        Ok(())
    })
}

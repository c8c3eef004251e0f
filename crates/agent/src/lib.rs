//! The palisade agent: one per server.
//!
//! It keeps the server's decisions in a crash-safe store, enforces them in
//! the kernel through one or more [`Enforcer`]s, kills the open connections
//! of what it bans, and answers the CLI on a root-only control socket.
//!
//! Threads, and why:
//! - the **worker** ([`worker`]) is the only writer: every ban, unban,
//!   allow, unallow and expiry runs there in order ([`core::Core`]);
//! - the **killer** ([`killer`]) cuts connections without delaying bans;
//! - the **control server** ([`control`]) runs on a small tokio runtime and
//!   serves reads (list, explain, status) from store snapshots.
//!
//! When the agent stops, the kernel keeps every ban and expires each on
//! time by itself; the next start reconciles the kernel with the store.

pub mod control;
pub mod core;
pub mod cursor;
pub mod detection;
pub mod drift;
pub mod feeds;
pub mod killer;
pub mod metrics;
pub mod network;
pub mod outbox;
pub mod remote;
mod rollup;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use palisade_enforce::Enforcer;
use palisade_store::{Options, Store};
use tracing::info;

pub use crate::core::CoreOptions;
pub use crate::detection::DetectOptions;
pub use crate::killer::KillFn;
pub use crate::network::Resolver;

/// Where the agent lives and how it behaves.
pub struct AgentOptions {
    /// How the core decides.
    pub settings: CoreOptions,
    /// Where decisions are stored.
    pub state_dir: PathBuf,
    /// The root-only control socket.
    pub socket: PathBuf,
    /// Shown by `palisade status` (e.g. `local-only`).
    pub mode: String,
    /// Cuts open connections of new bans; `None` disables killing.
    pub kill: Option<KillFn>,
    /// What detection reads and how.
    pub detect: DetectOptions,
    /// The network to join (`CoreOptions::joined` must be true); `None` for a
    /// local-only agent.
    pub network: Option<std::sync::Arc<dyn palisade_wire::Bus>>,
    /// Feeds this agent pulls itself (bans for this node only); empty when
    /// a hub in the same process pulls them for the network.
    pub feeds: Vec<feeds::Scheduled>,
    /// Where to serve Prometheus metrics (a loopback address); `None`: off.
    pub metrics: Option<std::net::SocketAddr>,
    /// Looks up the network's own addresses (the hub or brokers joined)
    /// again; called on every connection, so they stay allowed here when
    /// their addresses change. `None`: only those in the settings.
    pub infrastructure: Option<Resolver>,
    /// Services that read the agent's decisions (never write them), such as
    /// CrowdSec's bouncer API; started on the agent's runtime.
    pub services: Vec<StoreService>,
    /// Metrics of those services, served after the agent's own.
    pub metrics_sources: Vec<MetricsSource>,
}

/// Renders a service's metrics (Prometheus exposition text) at each scrape.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A service started with the agent's store once it is open; it runs on
/// the agent's tokio runtime (it may `tokio::spawn`) and must only read.
pub type StoreService = Box<dyn FnOnce(Arc<Store>) + Send>;

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    /// The core could not start.
    #[error(transparent)]
    Core(#[from] crate::core::CoreError),
    /// The control socket could not be created.
    #[error("cannot create the control socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
    /// Detection could not start.
    #[error(transparent)]
    Detect(#[from] crate::detection::DetectError),
    /// Metrics could not be served.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The async runtime could not start.
    #[error("{0}")]
    Runtime(std::io::Error),
}

/// The file inside the state directory that holds the decisions.
pub const STORE_FILE: &str = "decisions.redb";

/// Runs the agent in the foreground until SIGINT or SIGTERM.
pub fn run(options: AgentOptions, enforcers: Vec<Box<dyn Enforcer>>) -> Result<(), AgentError> {
    let started = palisade_model::Timestamp::now();
    palisade_store::private_dir(&options.state_dir)?;
    let store = Arc::new(Store::open(
        &options.state_dir.join(STORE_FILE),
        &Options::default(),
    )?);
    let names: Vec<String> = enforcers.iter().map(|e| e.name().to_string()).collect();
    let identity = control::Identity {
        node: options.settings.node.clone(),
        mode: options.mode.clone(),
        state_dir: options.state_dir.clone(),
        socket: options.socket.clone(),
        started,
        default_ban: options.settings.default_ban,
    };
    if options.network.is_some() {
        outbox::ensure_id_base(&store)?;
    }
    let mut core = core::Core::start(store.clone(), enforcers, options.settings)?;
    let counters = core.counters.clone();
    let outbox_ready = Arc::new(tokio::sync::Notify::new());
    core.outbox_ready = Some(outbox_ready.clone());
    let net_state = Arc::new(network::NetState::default());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("palisade-control")
        .build()
        .map_err(AgentError::Runtime)?;

    let killed = Arc::new(AtomicU64::new(0));
    let (kill_tx, killer) = match options.kill {
        Some(kill) => {
            let (tx, handle) = killer::spawn(kill, killed.clone());
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let (worker, worker_thread) = worker::spawn(core, kill_tx);
    let detection =
        detection::Detection::start(options.detect, &options.state_dir, worker.clone())?;

    let socket = options.socket.clone();
    let network_desc = options.network.as_ref().map(|b| b.describe());
    let result = runtime.block_on(async {
        // Before anything is bound or reported running: a SIGTERM from then
        // on stops the agent cleanly (socket removed, queue finished), not
        // by the signal's default action.
        let shutdown = palisade_control::signal::shutdown();
        if let Some(bus) = options.network.clone() {
            network::spawn(
                bus,
                store.clone(),
                worker.clone(),
                outbox_ready,
                net_state.clone(),
                options.infrastructure.clone(),
            );
        }
        let feeds = feeds::spawn(
            options.feeds,
            palisade_feed::dir(&options.state_dir),
            worker.clone(),
        );
        for service in options.services {
            service(store.clone());
        }
        let listener = control::bind(&socket).map_err(|source| AgentError::Socket {
            path: socket.clone(),
            source,
        })?;
        info!(
            node = %identity.node,
            mode = %identity.mode,
            socket = %socket.display(),
            state = %identity.state_dir.display(),
            enforcers = %names.join(","),
            "palisade agent running"
        );
        let shared = control::Shared {
            store,
            worker,
            identity: Arc::new(identity),
            killed,
            network: network_desc.map(|d| (d, net_state.clone())),
            feeds: Arc::new(feeds),
        };
        if let Some(addr) = options.metrics {
            let listener = metrics::bind(addr).await?;
            info!(address = %addr, "serving metrics at /metrics");
            let shared = shared.clone();
            let sources = options.metrics_sources.clone();
            tokio::spawn(metrics::serve(listener, move || {
                let (shared, counters) = (shared.clone(), counters.clone());
                let sources = sources.clone();
                async move {
                    let mut text = control::metrics(&shared, &counters).await;
                    for source in &sources {
                        text.push_str(&source());
                    }
                    text
                }
            }));
        }
        tokio::select! {
            _ = control::serve(listener, shared) => {}
            _ = shutdown => {}
        }
        Ok(())
    });
    // Dropping the runtime and the detectors drops the last worker handles,
    // so the worker finishes its queue and stops.
    drop(runtime);
    drop(detection);
    let _ = std::fs::remove_file(&options.socket);
    let _ = worker_thread.join();
    // The killer is not waited for: connections it has not cut yet are
    // dropped by the kernel anyway, and a long backlog must not hold up a
    // restart.
    drop(killer);
    info!("palisade agent stopped; bans stay in the kernel and expire on time");
    result
}

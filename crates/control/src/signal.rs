//! The signals that stop a palisade daemon (SIGTERM from systemd, SIGINT
//! from a terminal), shared by the agent and the hub.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Installs the SIGTERM and SIGINT handlers at once and returns what
/// completes on the first of them. Call it when the daemon's runtime
/// starts, before the daemon binds anything or says it runs: a signal that
/// comes before the future is first polled is kept, whereas one that comes
/// before the handlers exist takes the default action and kills the
/// process without its cleanup (a socket left behind, a queue not
/// finished). Needs a tokio runtime with I/O enabled.
pub fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, stopping"),
            _ = int.recv() => info!("SIGINT received, stopping"),
        }
    }
}

//! Cutting the open connections of newly banned addresses.
//!
//! A ban drops new packets at once, but an attacker may already hold a
//! connection (a shell, a half-finished upload). Killing it walks conntrack
//! and the socket table, which can take a while on a busy host, so it runs
//! on its own thread and never delays the next ban.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use palisade_model::Net;
use tracing::{info, warn};

/// Kills the connections of one network; returns how many it cut.
pub type KillFn = Box<dyn Fn(&Net) -> Result<u64, String> + Send>;

/// Starts the killer thread. It stops when every sender is dropped.
pub fn spawn(kill: KillFn, killed: Arc<AtomicU64>) -> (mpsc::Sender<Net>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Net>();
    let thread = std::thread::Builder::new()
        .name("palisade-killer".into())
        .spawn(move || {
            for net in rx {
                match kill(&net) {
                    Ok(0) => {}
                    Ok(n) => {
                        killed.fetch_add(n, Ordering::Relaxed);
                        info!(target = %net, connections = n, "killed open connections");
                    }
                    Err(e) => warn!(target = %net, error = %e, "could not kill open connections"),
                }
            }
        })
        .expect("spawn the connection killer thread");
    (tx, thread)
}

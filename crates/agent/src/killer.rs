//! Cutting the open connections of newly banned addresses.
//!
//! A ban drops new packets at once, but an attacker may already hold a
//! connection (a shell, a half-finished upload). Killing it walks conntrack
//! and the socket table, which can take a while on a busy host, so it runs
//! on its own thread and never delays the next ban. Networks banned while a
//! walk is under way are handled together by the next walk, so a bulk ban
//! costs one walk, not one per address.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use palisade_model::Net;
use tracing::{info, warn};

/// Kills the connections of these networks; returns how many it cut.
pub type KillFn = Box<dyn FnMut(&[Net]) -> Result<u64, palisade_enforce::EnforceError> + Send>;

/// Most networks handed to one walk.
const BATCH: usize = 100_000;

/// Starts the killer thread. It stops when every sender is dropped.
pub fn spawn(mut kill: KillFn, killed: Arc<AtomicU64>) -> (mpsc::Sender<Net>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Net>();
    let thread = std::thread::Builder::new()
        .name("palisade-killer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut nets = vec![first];
                nets.extend(rx.try_iter().take(BATCH - 1));
                let what = match nets.as_slice() {
                    [one] => one.to_string(),
                    many => format!("{} banned networks", many.len()),
                };
                match kill(&nets) {
                    Ok(0) => {}
                    Ok(n) => {
                        killed.fetch_add(n, Ordering::Relaxed);
                        info!(target = %what, connections = n, "killed open connections");
                    }
                    Err(e) => warn!(target = %what, error = %e, "could not kill open connections"),
                }
            }
        })
        .expect("spawn the connection killer thread");
    (tx, thread)
}

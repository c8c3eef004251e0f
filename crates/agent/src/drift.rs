//! Drift: the kernel changed behind palisade's back (`nft flush set`,
//! another tool, a firewall service reloaded, an iptables rule added after
//! the agent started). The worker compares every enforcer's kernel state
//! with what it holds every few seconds, puts it right, logs what differed
//! and counts it ([`crate::metrics::Counters::drift_repaired`]).

use std::time::{Duration, Instant};

use tracing::warn;

use crate::core::Core;

/// How often the kernel is compared, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// A comparison reads every element back (a full dump): with very large
/// sets the period grows so that checks take at most 1/this of the
/// worker's time.
const MAX_SHARE: u32 = 20;

/// When the next comparison is due, and what the last one found per
/// enforcer (a difference that cannot be repaired yet, such as an xt_recent
/// list no rule has made, is logged and counted once).
pub struct DriftWatch {
    next: Instant,
    last: Vec<String>,
}

impl DriftWatch {
    /// A watch whose first comparison is [`CHECK_EVERY`] from now.
    pub fn new() -> DriftWatch {
        DriftWatch {
            next: Instant::now() + CHECK_EVERY,
            last: Vec::new(),
        }
    }

    /// Time until the next comparison.
    pub fn due_in(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Compares and repairs if the time has come.
    pub fn run_if_due(&mut self, core: &mut Core) {
        if Instant::now() < self.next {
            return;
        }
        let started = Instant::now();
        self.run(core);
        let took = started.elapsed();
        self.next = Instant::now() + CHECK_EVERY.max(took * MAX_SHARE);
    }

    fn run(&mut self, core: &mut Core) {
        let n = core.enforcers.len();
        self.last.resize(n, String::new());
        for i in 0..n {
            let name = core.enforcers[i].name().to_string();
            match core.enforcers[i].drift(true) {
                Ok(d) if d.is_empty() => self.last[i].clear(),
                Ok(d) => {
                    let text = d.to_string();
                    if text != self.last[i] {
                        warn!(
                            enforcer = %name,
                            elements = d.elements(),
                            drift = %text,
                            "the kernel differed from palisade's decisions; repaired"
                        );
                        core.counters.add_drift(&name, d.elements() as u64);
                    }
                    self.last[i] = text;
                }
                // Reading back can fail while the kernel is busy (a dump
                // interrupted by changes): the next check tries again.
                Err(e) => {
                    warn!(enforcer = %name, error = %e, "could not compare the kernel with palisade's decisions")
                }
            }
        }
    }
}

impl Default for DriftWatch {
    fn default() -> Self {
        DriftWatch::new()
    }
}

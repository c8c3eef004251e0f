//! Test-only: a seeded, bounded mutation fuzzer that runs on stable Rust.
//!
//! Each [`Target`] is a parser that sees hostile input (network, logs,
//! third parties, configuration) with a few valid seeds and a dictionary of
//! its syntax. [`run`] feeds it `n` inputs made by stacking random
//! mutations (bit flips, interesting bytes, insertions, deletions,
//! duplications, splices, dictionary words) on the seeds and on inputs it
//! made before, and checks that nothing panics and that what parses prints
//! back to itself where the parser promises that. The same seed gives the
//! same inputs, so a failure is reproduced by its seed and index; with
//! `PALISADE_FUZZ_LAST=FILE` each input is written to FILE before it is
//! tried, for crashes no unwinding catches (stack overflows).
//!
//! `cargo test -p palisade-fuzz` runs a short smoke of every target;
//! `PALISADE_FUZZ_INPUTS=10000000 cargo test -p palisade-fuzz --release --
//! --nocapture --test-threads 2` runs ten million inputs per target and
//! prints the figures.

pub mod mutate;
pub mod targets;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

pub use mutate::Mutator;
pub use targets::{TARGETS, Target};

/// What one run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Inputs fed to the target.
    pub inputs: u64,
    /// Inputs the parser accepted (a measure of how deep the run went).
    pub accepted: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{}: {} inputs ({} accepted) in {:.1} s, {:.0} inputs/s, no panic",
            self.target,
            self.inputs,
            self.accepted,
            secs,
            self.inputs as f64 / secs
        )
    }
}

/// The input that made a target panic.
#[derive(Debug)]
pub struct Failure {
    /// The target's name.
    pub target: &'static str,
    /// The run's seed (`PALISADE_FUZZ_SEED` reproduces it).
    pub seed: u64,
    /// Which input of the run it was, counting from 0.
    pub index: u64,
    /// The input itself.
    pub input: Vec<u8>,
    /// The panic's message.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} panicked on input {} of seed {}: {}\ninput ({} bytes): {:?}",
            self.target,
            self.index,
            self.seed,
            self.message,
            self.input.len(),
            String::from_utf8_lossy(&self.input)
        )
    }
}

/// Inputs per target: `PALISADE_FUZZ_INPUTS`, else `default`.
pub fn inputs_from_env(default: u64) -> u64 {
    std::env::var("PALISADE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The run's seed: `PALISADE_FUZZ_SEED`, else a fixed one.
pub fn seed_from_env() -> u64 {
    std::env::var("PALISADE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9a11_5ade)
}

/// Feeds `target` `n` inputs made from its seeds with `seed`.
pub fn run(target: &Target, n: u64, seed: u64) -> Result<Report, Box<Failure>> {
    let mut mutator = Mutator::new(seed, target.seeds, target.dictionary);
    let started = Instant::now();
    let mut accepted = 0;
    // The default hook would print every caught panic; the failure is
    // reported with its input instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut result = Ok(());
    // A crash that unwinding cannot catch (a stack overflow, an abort)
    // leaves its input here.
    let last = std::env::var_os("PALISADE_FUZZ_LAST");
    for index in 0..n {
        let input = mutator.next_input();
        if let Some(path) = &last {
            let _ = std::fs::write(path, input);
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(input))) {
            Ok(true) => {
                accepted += 1;
                mutator.keep();
            }
            Ok(false) => {}
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                result = Err(Box::new(Failure {
                    target: target.name,
                    seed,
                    index,
                    input: input.to_vec(),
                    message,
                }));
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    result.map(|()| Report {
        target: target.name,
        inputs: n,
        accepted,
        elapsed: started.elapsed(),
    })
}

//! Running the detectors inside the agent.
//!
//! Every source runs on its own thread and sends its lines into one channel;
//! one detection thread owns the [`Tracker`] (the counting state) and hands
//! what it finds to the worker, which bans through the same guard as every
//! other ban. The channel is bounded: if the agent cannot keep up, sources
//! wait (a followed file is simply read later) rather than memory growing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, bounded};
use palisade_detect::{
    Engine, Event, Limits, Line, RuleConfig, SourceConfig, SourceHandle, Tracker,
};
use palisade_model::Timestamp;
use tracing::{info, warn};

use crate::worker::{Command, WorkerHandle};

/// Lines waiting for the detection thread.
const QUEUE: usize = 16_384;
/// How often the counting state forgets what has aged out.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long the detection thread may take to notice that it must stop.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// What to detect and where to read it.
#[derive(Debug, Clone, Default)]
pub struct DetectOptions {
    /// The rules, built-in ones already merged in.
    pub rules: Vec<RuleConfig>,
    /// The log sources to read.
    pub sources: Vec<SourceConfig>,
    /// The tracker's memory budget and thresholds.
    pub limits: Limits,
}

/// Why detection could not start.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A rule's pattern is invalid.
    #[error("the detection rules do not compile: {0}")]
    Rules(#[from] palisade_detect::CompileError),
    /// A log source could not start.
    #[error("cannot start the log source {name:?}: {error:#}")]
    Source {
        /// The source's name.
        name: String,
        /// Why it could not start.
        error: anyhow::Error,
    },
    /// The detection state directory could not be created.
    #[error("cannot create {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
}

/// The running detectors. Dropping it stops the sources; the detection
/// thread stops once they are gone.
pub struct Detection {
    sources: Vec<SourceHandle>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Detection {
    /// Compiles the rules, starts every source and the detection thread.
    /// Nothing is started if anything fails.
    pub fn start(
        options: DetectOptions,
        state_dir: &Path,
        worker: WorkerHandle,
    ) -> Result<Option<Detection>, DetectError> {
        if options.sources.is_empty() {
            info!("no log sources configured: detection is off");
            return Ok(None);
        }
        let engine = Engine::compile(&options.rules)?;
        let dir = state_dir.join("detect");
        std::fs::create_dir_all(&dir).map_err(|source| DetectError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let (tx, rx) = bounded(QUEUE);
        let mut sources = Vec::new();
        for s in &options.sources {
            let handle = palisade_detect::spawn(s, &dir, tx.clone()).map_err(|error| {
                DetectError::Source {
                    name: s.name(),
                    error,
                }
            })?;
            sources.push(handle);
        }
        drop(tx);
        let names: Vec<String> = options.sources.iter().map(|s| s.name()).collect();
        let rule_count = options.rules.iter().filter(|r| r.enabled).count();
        let mut tracker = Tracker::new(engine, options.limits);
        tracker.set_forgeable_sources(
            options
                .sources
                .iter()
                .filter(|s| s.forgeable())
                .map(|s| s.name()),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("palisade-detect".into())
            .spawn(move || {
                let mut last_prune = Instant::now();
                let mut evicted = 0;
                // Stopping is checked between lines, so a source stuck in a
                // blocking read cannot hold up the agent's shutdown.
                while !stopped.load(Ordering::Relaxed) {
                    match rx.recv_timeout(STOP_CHECK) {
                        Ok(line) => {
                            // Drain what is already queued into the same batch.
                            let mut lines = vec![line];
                            lines.extend(rx.try_iter().take(1023));
                            let events = observe(&mut tracker, &lines);
                            if !events.is_empty() && worker.send(Command::Detected(events)).is_err()
                            {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        tracker.prune(Timestamp::now());
                        last_prune = Instant::now();
                        // Attackers forgotten for lack of room: worth a
                        // warning (raise `[detect] memory`).
                        if tracker.evicted() > evicted {
                            warn!(
                                forgotten = tracker.evicted() - evicted,
                                total = tracker.evicted(),
                                capacity = tracker.capacity(),
                                "detection: attackers forgotten because the counting memory was full; raise [detect] memory"
                            );
                            evicted = tracker.evicted();
                        }
                    }
                }
            })
            .expect("spawn the detection thread");
        info!(sources = %names.join(","), rules = rule_count, "detection running");
        Ok(Some(Detection {
            sources,
            thread: Some(thread),
            stop,
        }))
    }
}

impl Drop for Detection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.sources.drain(..) {
            let name = s.name().to_string();
            if let Err(e) = s.stop() {
                warn!(source = %name, error = %e, "log source stopped with an error");
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts `lines` in order, each run of lines from one source at once (the
/// tracker asks for the memory of the pairs a run counts before it reads
/// it); the events they make.
fn observe(tracker: &mut Tracker, lines: &[Line]) -> Vec<Event> {
    let mut events = Vec::new();
    for run in lines.chunk_by(|a, b| a.source == b.source) {
        let texts: Vec<&str> = run.iter().map(|l| l.text.as_str()).collect();
        let counted = tracker.observe_lines(
            &run[0].source,
            &texts,
            |_| Timestamp::now(),
            |_, made, _| {
                events.extend(made);
                Ok::<(), std::convert::Infallible>(())
            },
        );
        counted.unwrap_or_else(|never| match never {});
    }
    events
}

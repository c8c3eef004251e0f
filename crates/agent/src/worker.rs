//! The one thread that changes decisions.
//!
//! Every mutation (ban, unban, allow, unallow, expiry) runs on this thread,
//! in arrival order, so the store and the kernel never see two writers and
//! never disagree about order. Reads (list, explain) do not come here: they
//! read a store snapshot on their own threads.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use palisade_control::{
    AllowRequest, BanRequest, EnforcerStatus, Outcome, Summary, TargetsRequest,
};
use palisade_model::{Net, Timestamp};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::core::{Applied, Core, CoreError};
use crate::drift::DriftWatch;

/// Longest sleep between expiry checks, in case the clock jumps.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// Where a mutation's answer goes.
pub type Reply = oneshot::Sender<Result<(Summary, Vec<Outcome>), WorkerError>>;

/// Why the worker did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker has stopped (the agent is shutting down); nothing was done.
    #[error("the agent is shutting down; ask again once it is back")]
    Stopping,
    /// The core refused or failed; its error says what to do.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// A request for the worker.
pub enum Command {
    /// Ban targets.
    Ban(BanRequest, Reply),
    /// Lift bans.
    Unban(TargetsRequest, Reply),
    /// Allow targets.
    Allow(AllowRequest, Reply),
    /// Remove allow entries.
    Unallow(TargetsRequest, Reply),
    /// What the detectors found (no one waits for an answer).
    Detected(Vec<palisade_detect::Event>),
    /// The network's own addresses as resolved now (on every connection):
    /// they stay allowed here.
    Infrastructure(Vec<(palisade_model::Net, String)>),
    /// Items of the network's decision stream; answered once applied (and
    /// stored, with the cursor).
    Remote(
        Vec<palisade_wire::StreamItem>,
        oneshot::Sender<Result<(), WorkerError>>,
    ),
    /// The network's answers to intents sent from the outbox.
    /// The answer says whether this node must read the network's whole
    /// state again (it lifted something locally that the network kept).
    Results(
        Vec<palisade_wire::IntentResult>,
        oneshot::Sender<Result<bool, WorkerError>>,
    ),
    /// Each enforcer's status; with `true`, read back from the kernel.
    EnforcerStatus(bool, oneshot::Sender<Vec<EnforcerStatus>>),
    /// A feed's new list: it replaces the feed's entries at once.
    Feed(
        String,
        palisade_feed::List,
        oneshot::Sender<Result<palisade_control::FeedApplied, WorkerError>>,
    ),
    /// The feeds still configured: the others' entries go.
    RetireFeeds(Vec<String>),
}

/// Handle to the worker thread; dropping every [`WorkerHandle`] sender stops
/// it after the queued commands are done.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Command>,
}

impl WorkerHandle {
    /// Queues `cmd` for the worker.
    pub fn send(&self, cmd: Command) -> Result<(), WorkerError> {
        self.tx.send(cmd).map_err(|_| WorkerError::Stopping)
    }
}

/// Starts the worker. `on_banned` receives every newly enforced ban (to kill
/// its open connections).
pub fn spawn(
    mut core: Core,
    on_banned: Option<mpsc::Sender<Net>>,
) -> (WorkerHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Command>();
    let thread = std::thread::Builder::new()
        .name("palisade-worker".into())
        .spawn(move || {
            let mut drift = DriftWatch::new();
            loop {
                let wait = match core.next_expiry() {
                    Ok(Some(t)) => t.since(Timestamp::now()).min(MAX_IDLE),
                    Ok(None) => MAX_IDLE,
                    Err(e) => {
                        error!(error = %e, "cannot read the next expiry");
                        MAX_IDLE
                    }
                };
                match rx.recv_timeout(wait.min(drift.due_in())) {
                    Ok(cmd) => handle(&mut core, cmd, on_banned.as_ref()),
                    Err(RecvTimeoutError::Timeout) => core.tick(),
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                // Due even while commands keep coming: a busy agent is no
                // reason to leave the kernel wrong.
                drift.run_if_due(&mut core);
                if let Err(e) = core.prune(Timestamp::now()) {
                    error!(error = %e, "pruning expired decisions failed");
                }
            }
        })
        .expect("spawn the worker thread");
    (WorkerHandle { tx }, thread)
}

fn handle(core: &mut Core, cmd: Command, on_banned: Option<&mpsc::Sender<Net>>) {
    let now = Timestamp::now();
    let (result, reply): (Result<Applied, CoreError>, Reply) = match cmd {
        Command::Detected(events) => {
            for e in &events {
                if let palisade_detect::Event::Ban { rule, .. } = e {
                    core.counters.add_detection(rule);
                }
            }
            match core.detected(events, now) {
                Ok(applied) => kill(on_banned, applied.newly_banned),
                Err(e) => error!(error = %e, "acting on detections failed"),
            }
            return;
        }
        Command::Remote(items, reply) => {
            let r = core.remote(items, now).map(|newly| kill(on_banned, newly));
            if let Err(e) = &r {
                error!(error = %e, "applying the network's decisions failed");
            }
            let _ = reply.send(r.map_err(WorkerError::from));
            return;
        }
        Command::Results(results, reply) => {
            let r = core.results(&results);
            if let Err(e) = &r {
                error!(error = %e, "handling the network's answers failed");
            }
            let _ = reply.send(r.map_err(WorkerError::from));
            return;
        }
        Command::Ban(req, reply) => (core.ban(req, now), reply),
        Command::Unban(req, reply) => (core.unban(req), reply),
        Command::Allow(req, reply) => (core.allow(req, now), reply),
        Command::Unallow(req, reply) => (core.unallow(req), reply),
        Command::EnforcerStatus(kernel, reply) => {
            let _ = reply.send(core.enforcer_status(kernel));
            return;
        }
        Command::Feed(name, entries, reply) => {
            let r = core.replace_feed(&name, &entries, now);
            if let Err(e) = &r {
                error!(feed = %name, error = %e, "applying a feed failed");
            }
            let _ = reply.send(r.map_err(WorkerError::from));
            return;
        }
        Command::Infrastructure(list) => {
            if let Err(e) = core.set_infrastructure(list) {
                error!(error = %e, "updating the allow entries of the network's own addresses failed");
            }
            return;
        }
        Command::RetireFeeds(keep) => {
            if let Err(e) = core.retire_feeds(&keep, now) {
                error!(error = %e, "removing the entries of old feeds failed");
            }
            return;
        }
    };
    let result = result.map(|applied| {
        kill(on_banned, applied.newly_banned);
        (applied.summary, applied.outcomes)
    });
    // The client may have gone away; the decision stands either way.
    let _ = reply.send(result.map_err(WorkerError::from));
}

/// Hands newly banned networks to the connection killer, if there is one.
fn kill(on_banned: Option<&mpsc::Sender<Net>>, nets: Vec<Net>) {
    if let Some(tx) = on_banned {
        for net in nets {
            if tx.send(net).is_err() {
                warn!("the connection killer has stopped");
                return;
            }
        }
    }
}

//! Each feed's pulling task: on its schedule (sooner after a failure), and
//! at once when the running agent or hub is asked over its control socket
//! ([`PullNow`]). Pulls by hand go through the same task, so they happen
//! in the daemon's namespace, routes and environment, never two at once
//! for one feed, and only for a feed the daemon's own configuration names.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_control::{FeedApplied, FeedPulled};
use palisade_model::Timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::{Feed, FeedError, List, Pulled, last_good, next_pull_in, pull, record_error, state};

/// Pulls asked for by hand that may wait while one runs: more are refused
/// at once rather than queued without bound.
const WAITING: usize = 1;

/// The longest feed name repeated back in an error (a name from the socket
/// is the asker's text).
const NAME_SHOWN: usize = 64;

type Asked = oneshot::Sender<Result<FeedPulled, PullFailed>>;

/// Why applying a list failed, as the agent or the hub says it.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Why one pull of a feed came to nothing; the feed's last good list
/// stays.
#[derive(Debug, thiserror::Error)]
pub enum PullFailed {
    /// The pull failed; the feed's state records why.
    #[error("the feed {name} failed: {error}; {kept}")]
    Pull {
        /// The feed's name.
        name: String,
        /// Why the pull failed.
        #[source]
        error: FeedError,
        /// What stays of the feed (its last good list, or nothing).
        kept: String,
    },
    /// The list arrived but could not be applied.
    #[error("the feed {name} was pulled ({entries} entries) but cannot be applied: {error}")]
    Apply {
        /// The feed's name.
        name: String,
        /// How many entries the list has.
        entries: usize,
        /// Why the agent or the hub could not apply it.
        #[source]
        error: ApplyError,
    },
}

/// Why a pull asked for by hand did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum PullNowError {
    /// The configuration has no `[[feed]]`.
    #[error("no feed is configured here: add a [[feed]] table with name and url and restart")]
    NoneConfigured,
    /// No configured feed has that name.
    #[error("no feed is named {name:?} here; configured: {configured}")]
    Unknown {
        /// The name asked for (cut to 64 characters).
        name: String,
        /// The configured names, comma separated.
        configured: String,
    },
    /// A pull asked for by hand is already waiting for that feed.
    #[error("a pull of the feed {name} is already waiting; try again when it is done")]
    Busy {
        /// The feed's name.
        name: String,
    },
    /// The feed's task has ended: the process is stopping.
    #[error("the feed {name} is not being pulled any more (the process is stopping)")]
    Stopped {
        /// The feed's name.
        name: String,
    },
    /// The pull or applying its list failed; the message says why and what
    /// was kept.
    #[error(transparent)]
    Failed(#[from] PullFailed),
}

/// The way into every feed's pulling task, by the feed's name.
#[derive(Debug, Default)]
pub struct PullNow {
    feeds: BTreeMap<String, mpsc::Sender<Asked>>,
}

impl PullNow {
    /// Registers a feed; its task takes requests from the receiver.
    fn add(&mut self, name: &str) -> mpsc::Receiver<Asked> {
        let (tx, rx) = mpsc::channel(WAITING);
        self.feeds.insert(name.to_string(), tx);
        rx
    }

    /// Asks the feed `name`'s task to pull now and waits for what it did.
    pub async fn pull(&self, name: &str) -> Result<FeedPulled, PullNowError> {
        let Some(task) = self.feeds.get(name) else {
            if self.feeds.is_empty() {
                return Err(PullNowError::NoneConfigured);
            }
            let shown: String = name.chars().take(NAME_SHOWN).collect();
            let configured: Vec<&str> = self.feeds.keys().map(String::as_str).collect();
            return Err(PullNowError::Unknown {
                name: shown,
                configured: configured.join(", "),
            });
        };
        let (tx, rx) = oneshot::channel();
        let name = name.to_string();
        task.try_send(tx).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PullNowError::Busy { name: name.clone() },
            mpsc::error::TrySendError::Closed(_) => PullNowError::Stopped { name: name.clone() },
        })?;
        rx.await
            .map_err(|_| PullNowError::Stopped { name })?
            .map_err(PullNowError::Failed)
    }
}

/// Spawns one pulling task per feed on the current tokio runtime (each
/// `(feed, every)`), handing every new list to `apply(name, entries)`,
/// and returns the way to ask them for a pull now.
pub fn spawn_all<F, Fut, E>(feeds: Vec<(Feed, Duration)>, dir: PathBuf, apply: F) -> PullNow
where
    F: Fn(String, List) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<FeedApplied, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut now = PullNow::default();
    for (feed, every) in feeds {
        let asked = now.add(&feed.name);
        let (dir, apply) = (dir.clone(), apply.clone());
        tokio::spawn(async move {
            let name = feed.name.clone();
            keep_pulling(
                feed,
                every,
                dir,
                |entries| apply(name.clone(), entries),
                asked,
            )
            .await;
        });
    }
    now
}

/// Pulls `feed` every `every`, forever, handing each new list to `apply`,
/// and at once whenever asked through `asked`. It starts by applying the
/// last good list, so after a restart the feed's entries are right at once
/// whatever the server says; a failure is recorded and logged, the last
/// good list stays, and the pull is retried sooner ([`next_pull_in`]).
async fn keep_pulling<F, Fut, E>(
    feed: Feed,
    every: Duration,
    dir: PathBuf,
    apply: F,
    mut asked: mpsc::Receiver<Asked>,
) where
    F: Fn(List) -> Fut,
    Fut: Future<Output = Result<FeedApplied, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let name = feed.name.as_str();
    if state(&dir, name).url == feed.url
        && let Some(list) = last_good(&dir, name)
        && let Err(e) = apply(list).await
    {
        tracing::warn!(feed = name, error = %e, "cannot apply the feed's last good list");
    }
    let mut failures = 0u32;
    let mut by_hand: Option<Asked> = None;
    loop {
        let done = pull_and_apply(&feed, &dir, &apply, by_hand.is_some()).await;
        match &done {
            Ok(_) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let retry = next_pull_in(every, failures);
                tracing::warn!(feed = name, error = %e, retry_in = ?retry, "the feed failed; its last good list stays");
            }
        }
        if let Some(reply) = by_hand.take() {
            let _ = reply.send(done);
        }
        tokio::select! {
            _ = tokio::time::sleep(next_pull_in(every, failures)) => {}
            Some(reply) = asked.recv() => by_hand = Some(reply),
        }
    }
}

/// One pull, and the new list applied. Asked by hand, a list the server
/// says has not changed is applied again (the operator asked for the
/// feed's entries to be right now). A failure is recorded in the feed's
/// state; its message says what was kept.
async fn pull_and_apply<F, Fut, E>(
    feed: &Feed,
    dir: &Path,
    apply: &F,
    by_hand: bool,
) -> Result<FeedPulled, PullFailed>
where
    F: Fn(List) -> Fut,
    Fut: Future<Output = Result<FeedApplied, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let name = feed.name.as_str();
    let started = tokio::time::Instant::now();
    let mut done = FeedPulled {
        name: name.to_string(),
        ..FeedPulled::default()
    };
    let list = match pull(feed, dir, |_| {}).await {
        Ok(Pulled::Updated {
            entries,
            malformed,
            examples,
        }) => {
            if malformed > 0 {
                tracing::warn!(feed = name, malformed, examples = ?examples, "lines that are not addresses or networks were skipped");
            }
            done.entries = Some(entries.len() as u64);
            done.malformed = malformed;
            done.examples = examples;
            Some(entries)
        }
        Ok(Pulled::NotModified) => {
            tracing::debug!(feed = name, "feed not modified");
            if by_hand { last_good(dir, name) } else { None }
        }
        Err(e) => {
            record_error(dir, feed, &e.to_string());
            return Err(PullFailed::Pull {
                name: name.to_string(),
                error: e,
                kept: kept(dir, name),
            });
        }
    };
    done.millis = started.elapsed().as_millis() as u64;
    if let Some(entries) = list {
        let n = entries.len();
        match apply(entries).await {
            Ok(applied) => {
                tracing::info!(feed = name, entries = n, "feed pulled");
                done.applied = Some(applied);
            }
            Err(e) => {
                tracing::warn!(feed = name, error = %e, "cannot apply the feed");
                return Err(PullFailed::Apply {
                    name: name.to_string(),
                    entries: n,
                    error: Box::new(e),
                });
            }
        }
    }
    Ok(done)
}

/// What stays of a feed after a failed pull, for the operator.
fn kept(dir: &Path, name: &str) -> String {
    let st = state(dir, name);
    match st.fetched {
        Some(t) => format!(
            "its last good list ({} entries, pulled {}) stays",
            st.entries,
            palisade_model::time::relative(t, Timestamp::now())
        ),
        None => "there is no earlier list".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_by_hand_are_bounded_and_only_for_configured_feeds() {
        let none = PullNow::default();
        let e = none.pull("x").await.unwrap_err();
        assert!(matches!(e, PullNowError::NoneConfigured), "{e:?}");

        let mut now = PullNow::default();
        let mut waiting = now.add("lvl1");
        let _other = now.add("drop");
        let long = format!("../../etc/{}", "x".repeat(1000));
        let e = now.pull(&long).await.unwrap_err();
        let PullNowError::Unknown { name, configured } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(name.chars().count(), NAME_SHOWN);
        assert_eq!(configured, "drop, lvl1");

        // A task busy pulling holds one request waiting; the next is
        // refused at once instead of queued.
        let now = std::sync::Arc::new(now);
        let first = tokio::spawn({
            let now = now.clone();
            async move { now.pull("lvl1").await }
        });
        while waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        let e = now.pull("lvl1").await.unwrap_err();
        assert!(
            matches!(&e, PullNowError::Busy { name } if name == "lvl1"),
            "{e:?}"
        );
        // The task answers the one that waited.
        let reply = waiting.recv().await.unwrap();
        reply
            .send(Err(PullFailed::Pull {
                name: "lvl1".into(),
                error: FeedError::BadUrl("ftp://x".into()),
                kept: "there is no earlier list".into(),
            }))
            .unwrap();
        let e = first.await.unwrap().unwrap_err();
        assert!(matches!(e, PullNowError::Failed(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the feed lvl1 failed: \"ftp://x\" is not an http:// or https:// address; there is no earlier list"
        );
        // A task that is gone says so.
        drop(waiting);
        let e = now.pull("lvl1").await.unwrap_err();
        assert!(
            matches!(&e, PullNowError::Stopped { name } if name == "lvl1"),
            "{e:?}"
        );
    }
}

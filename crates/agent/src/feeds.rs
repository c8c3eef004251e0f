//! External blocklists on an agent that runs no hub: each feed's entries
//! are this node's own decisions (scope `local`, source `feed`, rule
//! `feed:NAME`), replaced by each new list in one kernel transaction and
//! one store transaction.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use palisade_control::FeedApplied;
use palisade_enforce::Change;
use palisade_feed::PullNow;
use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};
use tokio::sync::oneshot;
use tracing::info;

use crate::core::{Core, CoreError, entry};
use crate::worker::{Command, WorkerHandle};

/// The rule of a feed's decisions.
pub fn rule(name: &str) -> String {
    format!("feed:{name}")
}

impl Core {
    /// Makes `entries` the feed's whole set of bans: removes those it no
    /// longer lists and adds the new ones, in one kernel transaction and
    /// one store transaction. The allowlist and the guard still win; an
    /// address already banned for another reason is left as it is.
    pub fn replace_feed(
        &mut self,
        name: &str,
        entries: &[Net],
        now: Timestamp,
    ) -> Result<FeedApplied, CoreError> {
        let rule = rule(name);
        let reader = self.store.read()?;
        let mut current = HashSet::new();
        for d in reader.iter(Some(Action::Ban))? {
            let d = d?;
            if d.origin.source == Source::Feed && d.rule.as_deref() == Some(rule.as_str()) {
                current.insert(d.target);
            }
        }
        let wanted: HashSet<Net> = entries.iter().copied().collect();
        let mut applied = FeedApplied {
            total: wanted.len() as u64,
            ..FeedApplied::default()
        };
        let removed: Vec<Net> = current
            .iter()
            .filter(|n| !wanted.contains(n))
            .copied()
            .collect();
        let mut added = Vec::new();
        for n in &wanted {
            if current.contains(n) {
                continue;
            }
            if self
                .settings
                .guard
                .check_ban(n, &self.allows, |a| a.comment.clone())
                .is_err()
            {
                applied.refused += 1;
                continue;
            }
            if reader
                .get(Action::Ban, n)?
                .is_some_and(|d| d.is_active(now))
            {
                applied.kept += 1;
                continue;
            }
            added.push(
                Decision::new(
                    Action::Ban,
                    *n,
                    now,
                    Span::Forever,
                    Origin::new(self.settings.node.clone(), Source::Feed).with_actor(name),
                )
                .with_rule(rule.clone())
                .with_reason(format!("listed by the feed {name}"))
                .with_scope(Scope::Local),
            );
        }
        drop(reader);
        applied.added = added.len() as u64;
        applied.removed = removed.len() as u64;
        if removed.is_empty() && added.is_empty() {
            return Ok(applied);
        }
        let mut changes: Vec<Change> = removed
            .iter()
            .map(|n| Change::Remove {
                action: Action::Ban,
                net: *n,
            })
            .collect();
        changes.extend(added.iter().map(|d| Change::Put(entry(d))));
        self.enforce_changes(&changes);
        self.save(&format!("the feed {name}"), &[], |w| {
            for n in &removed {
                w.remove(Action::Ban, n)?;
            }
            for d in &added {
                w.put(d)?;
            }
            Ok(())
        })?;
        info!(
            feed = name,
            total = applied.total,
            added = applied.added,
            removed = applied.removed,
            refused = applied.refused,
            kept = applied.kept,
            "feed applied"
        );
        Ok(applied)
    }

    /// Removes the entries of feeds no longer configured.
    pub fn retire_feeds(&mut self, keep: &[String], now: Timestamp) -> Result<(), CoreError> {
        let mut gone = HashSet::new();
        for d in self.store.read()?.iter(Some(Action::Ban))? {
            let d = d?;
            if d.origin.source == Source::Feed
                && let Some(name) = d.rule.as_deref().and_then(|r| r.strip_prefix("feed:"))
                && !keep.iter().any(|k| k == name)
            {
                gone.insert(name.to_string());
            }
        }
        for name in gone {
            info!(feed = %name, "the feed is no longer configured; removing its entries");
            self.replace_feed(&name, &[], now)?;
        }
        Ok(())
    }
}

/// A feed and how often to pull it.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub feed: palisade_feed::Feed,
    pub every: Duration,
}

/// Pulls every feed on its schedule and applies each new list; starts by
/// applying the last good lists (and removing feeds no longer configured).
/// The answer is how `palisade feed pull` asks for a pull now.
pub fn spawn(feeds: Vec<Scheduled>, dir: PathBuf, worker: WorkerHandle) -> PullNow {
    let keep: Vec<String> = feeds.iter().map(|f| f.feed.name.clone()).collect();
    let _ = worker.send(Command::RetireFeeds(keep));
    let feeds = feeds.into_iter().map(|s| (s.feed, s.every)).collect();
    palisade_feed::spawn_all(feeds, dir, move |name, entries| {
        let worker = worker.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            worker.send(Command::Feed(name, entries, tx))?;
            rx.await.map_err(|_| "the agent is stopping".to_string())?
        }
    })
}

//! External blocklists on an agent that runs no hub: each feed's entries
//! are this node's own decisions (scope `local`, source `feed`, actor the
//! feed's name, rule `feed:NAME` or the entry's own, as a CrowdSec
//! decision's `crowdsec:<scenario>`), replaced by each new list in one
//! kernel transaction and one store transaction.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use palisade_control::FeedApplied;
use palisade_enforce::Change;
use palisade_feed::{List, PullNow};
use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};
use tokio::sync::oneshot;
use tracing::info;

use crate::core::{Core, CoreError, entry};
use crate::worker::{Command, WorkerError, WorkerHandle};

impl Core {
    /// Makes `list` the feed's whole set of bans: removes those it no
    /// longer lists and adds the new ones, in one kernel transaction and
    /// one store transaction; an entry whose rule changed keeps its ban
    /// under the new rule. The allowlist and the guard still win; an
    /// address already banned for another reason is left as it is.
    pub fn replace_feed(
        &mut self,
        name: &str,
        list: &List,
        now: Timestamp,
    ) -> Result<FeedApplied, CoreError> {
        let feed_rule = palisade_feed::rule(name);
        let reader = self.store.read()?;
        // The feed's bans, each with whether its rule is still the one
        // the list gives it (a rule per entry, not a copy of each).
        let mut current: HashMap<Net, bool> = HashMap::new();
        for d in reader.iter(Some(Action::Ban))? {
            let d = d?;
            if own_feed(&d) == Some(name) {
                let same = d.rule.as_deref() == Some(list.rule_of(&d.target, &feed_rule));
                current.insert(d.target, same);
            }
        }
        let wanted: HashSet<Net> = list.nets.iter().copied().collect();
        let mut applied = FeedApplied {
            total: wanted.len() as u64,
            ..FeedApplied::default()
        };
        let removed: Vec<Net> = current
            .keys()
            .filter(|n| !wanted.contains(n))
            .copied()
            .collect();
        let mut added = Vec::new();
        let mut renamed = Vec::new();
        for n in &wanted {
            let rule = list.rule_of(n, &feed_rule);
            if let Some(&same) = current.get(n) {
                if !same && let Some(d) = reader.get(Action::Ban, n)? {
                    renamed.push(d.with_rule(rule));
                }
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
                .with_rule(rule)
                .with_reason(format!("listed by the feed {name}"))
                .with_scope(Scope::Local),
            );
        }
        drop(reader);
        applied.added = added.len() as u64;
        applied.removed = removed.len() as u64;
        if removed.is_empty() && added.is_empty() && renamed.is_empty() {
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
            for d in added.iter().chain(&renamed) {
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
            if let Some(name) = own_feed(&d)
                && !keep.iter().any(|k| k == name)
            {
                gone.insert(name.to_string());
            }
        }
        for name in gone {
            info!(feed = %name, "the feed is no longer configured; removing its entries");
            self.replace_feed(&name, &List::default(), now)?;
        }
        Ok(())
    }
}

/// The feed of this agent that made `d`: only its own (scope local)
/// count; the network's feed bans, which the hub pulled, are the hub's
/// to change, and survive a restart of an agent that pulls no feed.
fn own_feed(d: &Decision) -> Option<&str> {
    if d.scope != Scope::Local {
        return None;
    }
    palisade_feed::owner(d)
}

/// A feed and how often to pull it.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// What to pull, and where from.
    pub feed: palisade_feed::Feed,
    /// How often.
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
            rx.await.unwrap_or(Err(WorkerError::Stopping))
        }
    })
}

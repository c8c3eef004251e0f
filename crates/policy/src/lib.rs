//! How a hub turns what nodes send into decisions for every node.
//!
//! [`Policy::decide`] takes one [`Envelope`] from one node and, reading and
//! writing through a [`Ledger`] (the hub's store, or a map in tests),
//! returns what became of it. The rules, in order:
//!
//! 1. **Allowlists always win**: a ban covered by an allow entry (an
//!    operator's, or the address of a palisade node, added automatically)
//!    is refused, as is one the [`Guard`] forbids (loopback, too broad).
//! 2. **Quorum** (optional, per source): a detector's or program's report
//!    bans only once `k` distinct nodes have reported the address within a
//!    window; operators' bans never wait.
//! 3. **Repeats**: a repeat of an active ban inside the suppression window
//!    (banshare's 5 minutes) is recorded but not re-broadcast; after it, a
//!    repeat extends the ban and is broadcast as an update.
//! 4. **Escalation**: each new ban of a repeat offender from a detector or
//!    program lasts `factor` times longer than the last, up to `max`, like
//!    fail2ban's `bantime.increment`. History older than `forget_after` is
//!    forgotten; an operator's unban forgets it at once.
//!
//! Per-node rate limits are checked before any of this with
//! [`Policy::admit`]. Everything else about a decision (who reported it,
//! which rule, the evidence) is kept on it, so `palisade explain` can tell
//! the whole story on any node.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use palisade_model::{
    Action, Decision, Guard, Net, NetMap, Origin, Scope, Source, Span, Timestamp,
};
use palisade_wire::{Envelope, Intent, IntentOutcome, IntentResult};
use serde::{Deserialize, Serialize};

/// Tunables, from the hub's configuration.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Ban length when an intent does not say.
    pub default_ban: Span,
    /// A repeat of an active ban within this long of its last broadcast is
    /// recorded but not broadcast again.
    pub suppress_window: Duration,
    pub escalation: Option<Escalation>,
    /// Distinct reporting nodes needed before a ban, per source. Missing or
    /// 1: no quorum. Operators' bans (`cli`) never wait.
    pub quorum: BTreeMap<Source, u32>,
    /// How long reports count towards a quorum.
    pub quorum_window: Duration,
    pub rate: RateLimit,
    pub guard: Guard,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_ban: Span::For(Duration::from_secs(86_400)),
            suppress_window: Duration::from_secs(300),
            escalation: Some(Escalation::default()),
            quorum: BTreeMap::new(),
            quorum_window: Duration::from_secs(3600),
            rate: RateLimit::default(),
            guard: Guard::default(),
        }
    }
}

/// Longer bans for repeat offenders.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    /// Each new ban lasts this many times the previous one.
    pub factor: f64,
    /// The longest an escalated ban lasts.
    pub max: Duration,
    /// Past bans older than this no longer count.
    pub forget_after: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            factor: 2.0,
            max: Duration::from_secs(30 * 86_400),
            forget_after: Duration::from_secs(30 * 86_400),
        }
    }
}

/// A token bucket per node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Intents per second a node may send on average.
    pub per_second: f64,
    /// How many it may send at once.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 1000,
        }
    }
}

/// A node as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub group: Option<String>,
}

/// What the hub remembers about an address's past bans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    /// Bans made so far (that still count).
    pub bans: u32,
    pub last: Timestamp,
}

/// One node's report of an address, towards a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub at: Timestamp,
}

/// What the policy reads and writes. `put` and `remove` are broadcast to
/// the nodes; `touch` is not.
pub trait Ledger {
    type Error: std::error::Error;

    /// The decision with this action and target (in `group`'s namespace for
    /// group allows), active or not.
    fn get(
        &self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Self::Error>;
    /// Global allow entries covering `target`, widest first.
    fn allows_covering(&self, target: &Net) -> Result<Vec<Decision>, Self::Error>;
    /// Bans strictly inside `target`.
    fn bans_within(&self, target: &Net) -> Result<Vec<Decision>, Self::Error>;
    /// Stores and broadcasts a decision.
    fn put(&mut self, d: &Decision) -> Result<(), Self::Error>;
    /// Stores a decision without broadcasting it (a suppressed repeat).
    fn touch(&mut self, d: &Decision) -> Result<(), Self::Error>;
    /// Removes and broadcasts the removal of a decision.
    fn remove(
        &mut self,
        action: Action,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Option<Decision>, Self::Error>;
    fn offender(&self, target: &Net) -> Result<Option<Offender>, Self::Error>;
    fn set_offender(&mut self, target: &Net, o: Option<Offender>) -> Result<(), Self::Error>;
    fn reports(&self, target: &Net) -> Result<Vec<Report>, Self::Error>;
    fn set_reports(&mut self, target: &Net, r: &[Report]) -> Result<(), Self::Error>;
}

/// The policy, with its per-node rate limiters.
pub struct Policy {
    config: PolicyConfig,
    buckets: HashMap<String, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Policy {
        Policy {
            config,
            buckets: HashMap::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// True if `node` may send one more intent now (token bucket).
    pub fn admit(&mut self, node: &str) -> bool {
        let RateLimit { per_second, burst } = self.config.rate;
        let now = Instant::now();
        let b = self.buckets.entry(node.to_string()).or_insert(Bucket {
            tokens: f64::from(burst),
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * per_second;
        b.tokens = (b.tokens + refill).min(f64::from(burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Decides what to do with one intent from `from`.
    pub fn decide<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        env: &Envelope,
        now: Timestamp,
    ) -> Result<IntentResult, L::Error> {
        let result = |outcome, reason: Option<String>, expires| IntentResult {
            id: env.id,
            outcome,
            reason,
            expires,
        };
        match &env.intent {
            Intent::Ban {
                target,
                span,
                rule,
                reason,
                evidence,
                source,
                actor,
                list,
            } => {
                if let Some(refusal) = self.refuse_ban(ledger, target)? {
                    return Ok(result(IntentOutcome::Refused, Some(refusal), None));
                }
                let needed = match source {
                    Source::Cli | Source::Config | Source::Policy => 1,
                    s => self.config.quorum.get(s).copied().unwrap_or(1),
                };
                if needed > 1 {
                    let (have, reached) = self.count_report(ledger, target, from, now, needed)?;
                    if !reached {
                        let why = format!(
                            "{have} of {needed} nodes have reported {target}; waiting for a quorum"
                        );
                        return Ok(result(IntentOutcome::Pending, Some(why), None));
                    }
                }
                let mut origin = Origin::new(from.name.clone(), *source);
                if let Some(a) = actor {
                    origin = origin.with_actor(a.clone());
                }
                let automatic = !matches!(source, Source::Cli | Source::Config);
                if let Some(mut old) = ledger.get(Action::Ban, target, None)?
                    && old.is_active(now)
                {
                    // A repeat: extend, but do not re-broadcast inside the
                    // suppression window.
                    let base = span.unwrap_or(self.config.default_ban);
                    let mut fresh = Decision::new(Action::Ban, *target, now, base, origin)
                        .with_evidence(evidence.iter())
                        .with_scope(Scope::Network)
                        .with_list(list.clone());
                    if let Some(r) = rule {
                        fresh = fresh.with_rule(r.clone());
                    }
                    if let Some(r) = reason {
                        fresh = fresh.with_reason(r.clone());
                    }
                    if now.since(old.updated) < self.config.suppress_window {
                        old.hits = old.hits.saturating_add(1);
                        old.evidence.extend(fresh.evidence);
                        let excess = old
                            .evidence
                            .len()
                            .saturating_sub(palisade_model::decision::MAX_EVIDENCE_LINES);
                        old.evidence.drain(..excess);
                        ledger.touch(&old)?;
                        let why = format!(
                            "{target} is already banned; a repeat within {} of the last update is recorded, not broadcast",
                            palisade_model::time::compact_duration(self.config.suppress_window)
                        );
                        return Ok(result(IntentOutcome::Suppressed, Some(why), old.expires));
                    }
                    old.absorb(fresh);
                    ledger.put(&old)?;
                    return Ok(result(IntentOutcome::Accepted, None, old.expires));
                }
                let base = span.unwrap_or(self.config.default_ban);
                let lasting = if automatic {
                    self.escalate(ledger, target, base, now)?
                } else {
                    base
                };
                let mut d = Decision::new(Action::Ban, *target, now, lasting, origin)
                    .with_evidence(evidence.iter())
                    .with_scope(Scope::Network)
                    .with_list(list.clone());
                if let Some(r) = rule {
                    d = d.with_rule(r.clone());
                }
                let offence = ledger.offender(target)?.map_or(0, |o| o.bans);
                let mut why = reason.clone();
                if lasting != base {
                    let note = format!(
                        "offence {} of this address: {base} escalated to {lasting}",
                        offence
                    );
                    why = Some(match why {
                        Some(r) => format!("{r}; {note}"),
                        None => note,
                    });
                }
                if let Some(r) = why {
                    d = d.with_reason(r);
                }
                ledger.put(&d)?;
                if needed > 1 {
                    ledger.set_reports(target, &[])?;
                }
                Ok(result(IntentOutcome::Accepted, None, d.expires))
            }
            Intent::Unban { target, .. } => match ledger.remove(Action::Ban, target, None)? {
                Some(_) => {
                    // An operator forgave it: its history goes too.
                    ledger.set_offender(target, None)?;
                    Ok(result(IntentOutcome::Accepted, None, None))
                }
                None => {
                    let why = format!("{target} is not banned");
                    Ok(result(IntentOutcome::NotFound, Some(why), None))
                }
            },
            Intent::Allow {
                target,
                span,
                comment,
                group,
                actor,
            } => {
                let mut origin = Origin::new(from.name.clone(), Source::Cli);
                if let Some(a) = actor {
                    origin = origin.with_actor(a.clone());
                }
                let lasting = span.unwrap_or(Span::Forever);
                let mut d = Decision::new(Action::Allow, *target, now, lasting, origin)
                    .with_scope(Scope::Network)
                    .with_group(group.clone());
                if let Some(c) = comment {
                    d = d.with_reason(c.clone());
                }
                if let Some(mut old) = ledger.get(Action::Allow, target, group.as_deref())? {
                    old.absorb(d);
                    d = old;
                }
                ledger.put(&d)?;
                if group.is_none() {
                    // The allowlist wins: bans inside the allowed network go.
                    let mut lifted: Vec<Net> = ledger
                        .bans_within(target)?
                        .into_iter()
                        .map(|b| b.target)
                        .collect();
                    if ledger.get(Action::Ban, target, None)?.is_some() {
                        lifted.push(*target);
                    }
                    for n in &lifted {
                        ledger.remove(Action::Ban, n, None)?;
                    }
                }
                Ok(result(IntentOutcome::Accepted, None, d.expires))
            }
            Intent::Unallow { target, group, .. } => {
                if let Some(old) = ledger.get(Action::Allow, target, group.as_deref())?
                    && old.origin.source == Source::Policy
                {
                    let why = format!(
                        "{target} is allowed because it is a palisade node; revoke that node's token instead"
                    );
                    return Ok(result(IntentOutcome::Refused, Some(why), None));
                }
                match ledger.remove(Action::Allow, target, group.as_deref())? {
                    Some(_) => Ok(result(IntentOutcome::Accepted, None, None)),
                    None => {
                        let why = format!("{target} is not an allow entry");
                        Ok(result(IntentOutcome::NotFound, Some(why), None))
                    }
                }
            }
        }
    }

    /// Why a ban of `target` must not be made, if it must not (an allow
    /// entry covers it, or the guard forbids it).
    pub fn refusal<L: Ledger>(&self, ledger: &L, target: &Net) -> Result<Option<String>, L::Error> {
        self.refuse_ban(ledger, target)
    }

    fn refuse_ban<L: Ledger>(&self, ledger: &L, target: &Net) -> Result<Option<String>, L::Error> {
        let allows = ledger.allows_covering(target)?;
        let mut map = NetMap::new();
        for a in &allows {
            map.insert(a.target, a);
        }
        Ok(self
            .config
            .guard
            .check_ban(target, &map, |a| {
                if a.origin.source == Source::Policy {
                    Some(format!("palisade node {}", a.origin.node))
                } else {
                    a.reason.clone()
                }
            })
            .err()
            .map(|r| r.to_string()))
    }

    /// Records `from`'s report; returns the distinct reporters within the
    /// window and whether they reach `needed`.
    fn count_report<L: Ledger>(
        &self,
        ledger: &mut L,
        target: &Net,
        from: &Node,
        now: Timestamp,
        needed: u32,
    ) -> Result<(u32, bool), L::Error> {
        let window = self.config.quorum_window;
        let mut reports: Vec<Report> = ledger
            .reports(target)?
            .into_iter()
            .filter(|r| now.since(r.at) < window && r.node != from.name)
            .collect();
        reports.push(Report {
            node: from.name.clone(),
            at: now,
        });
        let have = reports.len() as u32;
        ledger.set_reports(target, &reports)?;
        Ok((have, have >= needed))
    }

    /// The length of a new automatic ban of `target`, escalated for repeat
    /// offenders; records the offence.
    fn escalate<L: Ledger>(
        &self,
        ledger: &mut L,
        target: &Net,
        base: Span,
        now: Timestamp,
    ) -> Result<Span, L::Error> {
        let Some(esc) = &self.config.escalation else {
            return Ok(base);
        };
        let previous = ledger
            .offender(target)?
            .filter(|o| now.since(o.last) < esc.forget_after)
            .map_or(0, |o| o.bans);
        ledger.set_offender(
            target,
            Some(Offender {
                bans: previous + 1,
                last: now,
            }),
        )?;
        let Span::For(d) = base else {
            return Ok(base);
        };
        let factor = esc.factor.max(1.0).powi(previous.min(64) as i32);
        let secs = (d.as_secs_f64() * factor).min(esc.max.as_secs_f64().max(d.as_secs_f64()));
        Ok(Span::For(Duration::from_secs(secs.round() as u64)))
    }
}

#[cfg(test)]
mod tests;

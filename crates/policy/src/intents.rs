//! A node's batch of intents: retries recognised, rate limits applied by
//! what each intent is, each one decided, the node's record kept.

use std::time::Instant;

use palisade_model::{Source, Timestamp};
use palisade_wire::{Envelope, Intent, IntentOutcome, IntentResult, Role};

use crate::nodes::NodeRecord;
use crate::roles::Node;
use crate::{Ledger, Policy, RateLimit};

/// What a batch came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// One result per intent applied, in order; fewer than sent when the
    /// node went over a rate limit (it keeps the rest and sends them again
    /// later).
    pub results: Vec<IntentResult>,
    /// Which limit held the rest back, if one did.
    pub held_back: Option<&'static str>,
}

/// Which token bucket an intent draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    /// Reports (detectors, fail2ban): the `rate` limit.
    Report,
    /// A node's own bans, unbans and group allows: `node_rate`, sized for
    /// an operator's `ban --file` on that node.
    NodeAction,
}

pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Policy {
    /// Applies a node's batch in order. `admitted`, when a caller decides
    /// the same batch again (a NATS worker after a conflict), keeps the
    /// rate limits counted once: pass `None` the first time and the same
    /// variable after.
    pub fn apply_intents<L: Ledger>(
        &mut self,
        ledger: &mut L,
        node: &Node,
        envelopes: &[Envelope],
        now: Timestamp,
        admitted: &mut Option<usize>,
    ) -> Result<BatchResult, L::Error> {
        let mut record = ledger
            .node(&node.name)?
            .unwrap_or_else(|| NodeRecord::new(&node.name, node.group.clone()));
        if !node.internal {
            record.group = node.group.clone();
        }
        let mut out = BatchResult::default();
        for (i, env) in envelopes.iter().enumerate() {
            if env.id != 0 && env.id <= record.last_intent {
                out.results.push(IntentResult {
                    id: env.id,
                    outcome: IntentOutcome::Duplicate,
                    reason: None,
                    expires: None,
                });
                continue;
            }
            let over = match *admitted {
                Some(n) => i >= n,
                None => match self.class(node, &env.intent) {
                    Some(class) => !self.admit(&node.name, class),
                    None => false,
                },
            };
            if over {
                admitted.get_or_insert(i);
                out.held_back = Some(match self.class(node, &env.intent) {
                    Some(Class::NodeAction) => "node_rate",
                    _ => "rate",
                });
                break;
            }
            let r = self.decide(ledger, node, env, now)?;
            record.last_intent = record.last_intent.max(env.id);
            record.intents += 1;
            if matches!(env.intent, Intent::Ban { .. }) {
                record.reported += 1;
            }
            out.results.push(r);
        }
        admitted.get_or_insert(envelopes.len());
        ledger.set_node(&record)?;
        Ok(out)
    }

    /// The bucket an intent draws from; `None`: not rate limited (an
    /// operator's or the hub's own).
    fn class(&self, node: &Node, intent: &Intent) -> Option<Class> {
        // The hub's own reporters (the vallumd topic, open to whoever may
        // publish on it) are limited like any reporter.
        if node.internal && node.role == Role::Reporter {
            return Some(Class::Report);
        }
        if node.internal || node.role == Role::Operator {
            return match intent {
                // An operator's detectors still report like anyone's.
                Intent::Ban {
                    source: Source::Detector | Source::Report,
                    ..
                } if !node.internal => Some(Class::Report),
                _ => None,
            };
        }
        match intent {
            Intent::Ban {
                source: Source::Cli,
                ..
            } if node.role == Role::Node => Some(Class::NodeAction),
            Intent::Ban { .. } => Some(Class::Report),
            _ => Some(Class::NodeAction),
        }
    }

    /// True if `node` may send one more intent of `class` now.
    fn admit(&mut self, node: &str, class: Class) -> bool {
        let RateLimit { per_second, burst } = match class {
            Class::Report => self.config.rate,
            Class::NodeAction => self.config.node_rate,
        };
        let now = Instant::now();
        let b = self
            .buckets
            .entry((node.to_string(), class))
            .or_insert(Bucket {
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
}

//! Allow entries the hub's configuration makes: `[[hub.allow]]` (global or
//! per group), and the addresses of the hub itself, so that no report,
//! feed or node can ban the host every node depends on.

use std::collections::HashSet;

use palisade_model::{Action, Decision, Net, Origin, Scope, Source, Span, Timestamp};

use crate::{Ledger, Policy};

/// One `[[hub.allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAllow {
    /// The address or network allowed.
    pub target: Net,
    /// Why, shown by `list` and `explain`.
    pub comment: Option<String>,
    /// The node group it applies to; `None`: every node.
    pub group: Option<String>,
}

/// The node name of the hub's own decisions.
pub const HUB_NODE: &str = "hub";

impl Policy {
    /// Makes the configuration's allow entries and the hub's own addresses
    /// ([`PolicyOptions::protected`](crate::PolicyOptions)) decisions, and
    /// removes those no longer configured. Bans they cover are shadowed,
    /// not removed: if the entry goes, they apply again.
    pub fn sync_static_allows<L: Ledger>(
        &self,
        ledger: &mut L,
        entries: &[StaticAllow],
        now: Timestamp,
    ) -> Result<(), L::Error> {
        let mut wanted: HashSet<(Net, Option<String>, Source)> = HashSet::new();
        for e in entries {
            wanted.insert((e.target, e.group.clone(), Source::Config));
            let existing = ledger.get(Action::Allow, &e.target, e.group.as_deref())?;
            if existing
                .as_ref()
                .is_some_and(|d| d.reason == e.comment && d.origin.source == Source::Config)
            {
                continue;
            }
            let mut d = Decision::new(
                Action::Allow,
                e.target,
                now,
                Span::Forever,
                Origin::new(HUB_NODE, Source::Config),
            )
            .with_scope(Scope::Network)
            .with_group(e.group.clone());
            if let Some(c) = &e.comment {
                d = d.with_reason(c.clone());
            }
            ledger.put(&d)?;
        }
        for (target, why) in &self.config().protected {
            wanted.insert((*target, None, Source::Policy));
            let existing = ledger.get(Action::Allow, target, None)?;
            if existing.as_ref().is_some_and(|d| {
                d.origin.source == Source::Policy
                    && d.origin.node == HUB_NODE
                    && d.reason.as_deref() == Some(why.as_str())
            }) {
                continue;
            }
            // An operator's or a node's own entry for the address stays.
            if existing.is_some_and(|d| d.origin.node != HUB_NODE && d.is_active(now)) {
                continue;
            }
            let d = Decision::new(
                Action::Allow,
                *target,
                now,
                Span::Forever,
                Origin::new(HUB_NODE, Source::Policy),
            )
            .with_reason(why.clone())
            .with_scope(Scope::Network);
            ledger.put(&d)?;
        }
        let stale: Vec<Decision> = ledger
            .all_allows()?
            .into_iter()
            .filter(|d| {
                let config = d.origin.source == Source::Config;
                let hub_own = d.origin.source == Source::Policy && d.origin.node == HUB_NODE;
                (config || hub_own)
                    && !wanted.contains(&(d.target, d.group.clone(), d.origin.source))
            })
            .collect();
        for d in stale {
            ledger.remove(Action::Allow, &d.target, d.group.as_deref())?;
        }
        Ok(())
    }
}

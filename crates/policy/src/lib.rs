//! How the palisade network decides: every rule about who may do what
//! lives here once, and the embedded hub's writer, the NATS policy workers
//! and the MQTT bridge (through the hub) all apply it.
//!
//! [`Policy::apply_intents`] takes one node's batch of [`Envelope`](palisade_wire::Envelope)s
//! (retries recognised, rate limits applied) and [`Policy::decide`]s each,
//! reading and writing through a [`Ledger`] (the hub's store, a worker's
//! mirror of the buckets, or a map in tests). The rules, in order:
//!
//! 1. **The credential decides, not the request** ([`Node`]): the name,
//!    group and [`Role`] come from the token (or the bus subject). A
//!    *reporter* only reports; a *node* reports and makes host bans within
//!    [`NodeLimits`], lifts only its own bans and changes only its own
//!    group's allow entries; an *operator* may do all the guard permits.
//!    `source` is checked against the role (only the hub itself makes
//!    `policy`, `config` and `feed` decisions; a reporter's `cli` is a
//!    report), and a token holder's `actor` is recorded as `NODE:actor`.
//! 2. **The network never cuts itself off**: a ban covering an address of
//!    the hub or the brokers ([`PolicyOptions::protected`]) is refused, and
//!    those addresses are allow entries every node enforces
//!    ([`Policy::sync_static_allows`]); every node's own address is
//!    allowed too, pinned to where it was first seen ([`Policy::node_address`]).
//! 3. **Allowlists always win, and never destroy**: a ban covered by an
//!    allow entry is refused, as is one the [`Guard`] forbids (loopback, too
//!    broad); an allow entry made later shadows the bans inside it, which
//!    apply again when it goes. Allow entries are width-limited like bans.
//! 4. **Quorum** (optional, per source; always at least
//!    `quorum_unverified` for detections that could be forged): a report
//!    bans only once that many distinct nodes reported the address within
//!    a window; bans by hand never wait. The ban names every reporter.
//! 5. **Repeats**: an automatic repeat (a detection, report or feed) of
//!    an active ban inside the suppression window (banshare's 5 minutes)
//!    is recorded but not re-broadcast, and the answer carries the expiry
//!    that holds; after it, a repeat extends the ban and is broadcast as an
//!    update. A repeated ban by hand always extends at once.
//! 6. **Escalation**: each new ban of a repeat offender from a detector or
//!    program lasts `factor` times longer than the last, up to `max`, like
//!    fail2ban's `bantime.increment`. History older than `forget_after` is
//!    forgotten; an unban forgets it at once.
//! 7. **Roll-up** ([`Rollup`]): when `hosts` distinct hosts of one IPv4 or
//!    IPv6 network (a /24, a /64 or /48) have been banned within the
//!    window, the policy bans the network itself in their place (source
//!    `policy`, rule `rollup`, the members in its evidence), escalated
//!    like any repeat offender. Only the policy widens a ban this way, and
//!    the network ban passes the same checks as any other (2 and 3, and
//!    `[hub.limits]`): it is never made over the hub or an allow entry
//!    covering it, and allowed hosts inside it stay reachable.
//!
//! Rate limits: reports draw from `rate`, a node's own bans and allows
//! from `node_rate` (sized for an operator's `ban --file` on that node);
//! operators and the hub itself are not limited.

mod allows;
mod decide;
mod intents;
mod ledger;
mod nodes;
mod roles;
pub mod rollup;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use palisade_model::{Guard, Net, Source, Span};

pub use allows::{HUB_NODE, StaticAllow};
pub use intents::BatchResult;
pub use ledger::{Ledger, Offender, Report};
pub use nodes::{NodeAddress, NodeRecord};
pub use palisade_wire::Role;
pub use roles::{NameError, Node, RESERVED_NAMES, check_node_name};
pub use rollup::Rollup;

#[cfg(test)]
use palisade_model::{Action, Decision, Origin, Scope, Timestamp};
#[cfg(test)]
use palisade_wire::{Envelope, Intent, IntentOutcome, IntentResult};

/// Tunables, from the hub's configuration.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// Ban length when an intent does not say.
    pub default_ban: Span,
    /// An automatic repeat of an active ban within this long of its last
    /// broadcast is recorded but not broadcast again (bans by hand always
    /// extend).
    pub suppress_window: Duration,
    /// Longer bans for repeat offenders; `None`: every ban lasts what it
    /// asks.
    pub escalation: Option<Escalation>,
    /// Distinct reporting nodes needed before a ban, per source. Missing or
    /// 1: no quorum. Bans by hand (`cli`) never wait.
    pub quorum: BTreeMap<Source, u32>,
    /// Distinct nodes needed before a detection that could be forged (a
    /// port probe) bans network-wide; until then it bans only where it was
    /// seen.
    pub quorum_unverified: u32,
    /// How long reports count towards a quorum.
    pub quorum_window: Duration,
    /// Reports per node.
    pub rate: RateLimit,
    /// A node's own bans, unbans and group allows.
    pub node_rate: RateLimit,
    /// What a node (not an operator) may ban.
    pub limits: NodeLimits,
    /// Refuses bans of protected ranges, of allowed addresses, and wider than
    /// its prefix limits.
    pub guard: Guard,
    /// Addresses of the palisade network itself (the hub's, the brokers'),
    /// with why: never banned, allowed on every node.
    pub protected: Vec<(Net, String)>,
    /// Where palisade nodes live: a node's automatic allow moves only
    /// inside these networks (and, when set, is made only inside them).
    pub node_networks: Vec<Net>,
    /// When many banned hosts of one network ban the network.
    pub rollup: Rollup,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            default_ban: Span::For(Duration::from_secs(86_400)),
            suppress_window: Duration::from_secs(300),
            escalation: Some(Escalation::default()),
            quorum: BTreeMap::new(),
            quorum_unverified: 2,
            quorum_window: Duration::from_secs(3600),
            rate: RateLimit::default(),
            node_rate: RateLimit {
                per_second: 1000.0,
                burst: 100_000,
            },
            limits: NodeLimits::default(),
            guard: Guard::default(),
            protected: Vec::new(),
            node_networks: Vec::new(),
            rollup: Rollup::default(),
        }
    }
}

/// What a node credential may ban (an operator's may ban what the guard
/// permits).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLimits {
    /// The longest ban; longer ones (and `forever`) are shortened to it.
    pub longest_ban: Duration,
    /// The widest IPv4 network a node may ban.
    pub widest_v4: u8,
    /// The widest IPv6 network a node may ban.
    pub widest_v6: u8,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            longest_ban: Duration::from_secs(7 * 86_400),
            widest_v4: 24,
            widest_v6: 48,
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

impl Escalation {
    /// How many past bans of `record` still count at `now`.
    pub fn counted(&self, record: Option<Offender>, now: palisade_model::Timestamp) -> u32 {
        record
            .filter(|o| now.since(o.last) < self.forget_after)
            .map_or(0, |o| o.bans)
    }

    /// The length of a new ban of `base` after `previous` counted bans:
    /// `factor` times longer each time, up to `max` (never shorter than
    /// `base`); `forever` stays forever.
    pub fn lasting(&self, base: Span, previous: u32) -> Span {
        let Span::For(d) = base else {
            return base;
        };
        let factor = self.factor.max(1.0).powi(previous.min(64) as i32);
        let secs = (d.as_secs_f64() * factor).min(self.max.as_secs_f64().max(d.as_secs_f64()));
        Span::For(Duration::from_secs(secs.round() as u64))
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

/// The policy, with its per-node rate limiters.
pub struct Policy {
    config: PolicyOptions,
    buckets: HashMap<(String, intents::Class), intents::Bucket>,
}

impl Policy {
    /// A policy with `config` and empty rate limiters.
    pub fn new(config: PolicyOptions) -> Policy {
        Policy {
            config,
            buckets: HashMap::new(),
        }
    }

    /// The tunables it was made with.
    pub fn config(&self) -> &PolicyOptions {
        &self.config
    }
}

#[cfg(test)]
mod tests;

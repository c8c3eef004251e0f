//! The roll-up on an agent that is not joined to a network: the same rule
//! the hub applies ([`palisade_policy::rollup`]), over this agent's own
//! bans, escalated like the hub's (the default escalation: each roll-up of
//! the same network within 30 days lasts twice the last, up to 30 days),
//! with the network's history in the store's offender records. A joined
//! agent leaves it to the hub, whose network ban reaches it through the
//! stream like any other decision.

use palisade_enforce::Change;
use palisade_model::{Action, Decision, Net, Scope, Timestamp};
use palisade_policy::{Escalation, Offender, Rollup};
use palisade_store::Map;
use tracing::info;

use crate::core::{Core, CoreError, entry};

/// Past roll-ups of a network, for escalation: the agent's own table, under
/// the name the hub gives its table of offenders.
const OFFENDERS: Map = Map::new("map.offenders");

impl Core {
    /// After new bans of `hosts` (or narrower networks): bans each of their
    /// networks in which enough bans were made within the window, in place of the member
    /// bans it covers. The network ban passes the guard like any other (an
    /// allow entry covering it, or an address of the network's
    /// infrastructure inside it, forbids it; allowed hosts inside stay
    /// allowed). Returns the networks banned.
    pub(crate) fn roll_up(&mut self, hosts: &[Net], now: Timestamp) -> Result<Vec<Net>, CoreError> {
        let Some(rule) = self.settings.rollup.clone() else {
            return Ok(Vec::new());
        };
        let mut networks: Vec<Net> = hosts.iter().filter_map(|h| rule.network_of(h)).collect();
        networks.sort();
        networks.dedup();
        let mut banned = Vec::new();
        for network in networks {
            if let Some((ban, offence)) = self.network_ban(&rule, network, now)? {
                self.replace_members(&rule, ban, offence, now)?;
                banned.push(network);
            }
        }
        Ok(banned)
    }

    /// The network ban that rolls up `network`'s members, if it is due and
    /// permitted, and the network's offence record it makes.
    fn network_ban(
        &self,
        rule: &Rollup,
        network: Net,
        now: Timestamp,
    ) -> Result<Option<(Decision, Offender)>, CoreError> {
        let reader = self.store.read()?;
        if reader
            .get(Action::Ban, &network)?
            .is_some_and(|d| d.is_active(now))
        {
            return Ok(None);
        }
        let refused = self
            .settings
            .guard
            .check_ban(&network, &self.allows, |a| a.comment.clone())
            .is_err()
            || self
                .settings
                .infrastructure
                .iter()
                .any(|(n, _)| n.overlaps(&network));
        if refused {
            return Ok(None);
        }
        let inside = reader.within(Action::Ban, &network)?;
        let Some(members) = rule.members(&inside, now) else {
            return Ok(None);
        };
        let escalation = Escalation::default();
        let past = reader
            .map_get(OFFENDERS, &network.to_string())?
            .and_then(|b| serde_json::from_slice::<Offender>(&b).ok());
        let previous = escalation.counted(past, now);
        let base = self.settings.default_ban;
        let lasting = escalation.lasting(base, previous);
        let mut ban = rule
            .network_ban(network, &members, &self.settings.node, lasting, now)
            .with_scope(Scope::Local);
        palisade_policy::rollup::note_escalation(&mut ban, previous + 1, base);
        let offence = Offender {
            bans: previous + 1,
            last: now,
        };
        Ok(Some((ban, offence)))
    }

    /// Puts `ban` in the kernel and the store with the network's `offence`,
    /// and removes the members whose time it covers, in one kernel and one
    /// store transaction.
    fn replace_members(
        &mut self,
        rule: &Rollup,
        ban: Decision,
        offence: Offender,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        let reader = self.store.read()?;
        let inside = reader.within(Action::Ban, &ban.target)?;
        drop(reader);
        let replaced: Vec<Net> = rule
            .members(&inside, now)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| Rollup::replaces(&ban, m))
            .map(|m| m.target)
            .collect();
        let mut changes = vec![Change::Put(entry(&ban))];
        changes.extend(replaced.iter().map(|&net| Change::Remove {
            action: Action::Ban,
            net,
        }));
        self.enforce_changes(&changes);
        info!(network = %ban.target, members = replaced.len(), reason = ban.reason.as_deref().unwrap_or(""), "rolled up");
        self.save(&format!("the roll-up into {}", ban.target), &[], |w| {
            w.put(&ban)?;
            let record = serde_json::to_vec(&offence).expect("a record serializes");
            w.map_put(OFFENDERS, &ban.target.to_string(), &record)?;
            for net in &replaced {
                w.remove(Action::Ban, net)?;
            }
            Ok(())
        })
    }
}

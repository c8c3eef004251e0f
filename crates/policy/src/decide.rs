//! One intent, decided: what the sender's role permits, then the
//! allowlists, quorums, repeats and escalation (see the crate docs).

use palisade_model::net::Family;
use palisade_model::{Action, Decision, Net, NetMap, Origin, Scope, Source, Span, Timestamp};
use palisade_wire::{Envelope, Intent, IntentOutcome, IntentResult, Role};

use crate::roles::Node;
use crate::{Ledger, Policy, Report};

/// An intent refused before anything was read or written: why.
type Refused = String;

impl Policy {
    /// Decides what to do with one intent from `from`.
    pub fn decide<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        env: &Envelope,
        now: Timestamp,
    ) -> Result<IntentResult, L::Error> {
        let answer = |outcome, reason: Option<String>, expires| IntentResult {
            id: env.id,
            outcome,
            reason,
            expires,
        };
        let decided = match &env.intent {
            Intent::Ban { .. } => self.ban(ledger, from, &env.intent, now)?,
            Intent::Unban { target, .. } => self.unban(ledger, from, target)?,
            Intent::Allow {
                target,
                span,
                comment,
                group,
                actor,
            } => self.allow(
                ledger,
                from,
                target,
                *span,
                comment.as_deref(),
                group.as_deref(),
                actor.as_deref(),
                now,
            )?,
            Intent::Unallow { target, group, .. } => {
                self.unallow(ledger, from, target, group.as_deref())?
            }
        };
        Ok(match decided {
            Ok((outcome, reason, expires)) => answer(outcome, reason, expires),
            Err(why) => answer(IntentOutcome::Refused, Some(why), None),
        })
    }

    /// Why a ban of `target` must not be made, if it must not: it covers
    /// an address of the palisade network itself, an allow entry covers
    /// it, or the guard forbids it.
    pub fn refusal<L: Ledger>(&self, ledger: &L, target: &Net) -> Result<Option<String>, L::Error> {
        if let Some((addr, why)) = self
            .config()
            .protected
            .iter()
            .find(|(p, _)| target.overlaps(p))
        {
            return Ok(Some(format!(
                "{target} covers {addr} ({why}); palisade never bans its own hub or brokers"
            )));
        }
        let allows = ledger.allows_covering(target)?;
        let mut map = NetMap::new();
        for a in &allows {
            map.insert(a.target, a);
        }
        Ok(self
            .config()
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

    /// The source a ban is recorded with: what the sender's role allows of
    /// what it claims.
    fn source_for(&self, from: &Node, claimed: Source) -> Result<Source, Refused> {
        match claimed {
            Source::Policy | Source::Config | Source::Feed if !from.internal => Err(format!(
                "the source {claimed} is the hub's own; a node reports as detector or report, or bans as cli"
            )),
            // A reporter only reports: its bans always count towards a
            // quorum, whatever it says.
            Source::Cli if from.role == Role::Reporter => Ok(Source::Report),
            s => Ok(s),
        }
    }

    /// Checks a node's ban against `[hub.limits]`; returns the span to use
    /// (the longest allowed when it asked for more) and a note when it was
    /// shortened.
    fn within_limits(
        &self,
        from: &Node,
        target: &Net,
        span: Span,
    ) -> Result<(Span, Option<String>), Refused> {
        if from.internal || from.role == Role::Operator {
            return Ok((span, None));
        }
        let limits = &self.config().limits;
        let widest = match target.family() {
            Family::V4 => limits.widest_v4,
            Family::V6 => limits.widest_v6,
        };
        if target.prefix() < widest {
            return Err(format!(
                "a {} credential may ban networks up to /{widest} for this family; {target} is wider (an operator can ban it, on the hub or with an operator token)",
                from.role
            ));
        }
        let longest = limits.longest_ban;
        match span {
            Span::For(d) if d <= longest => Ok((span, None)),
            _ => Ok((
                Span::For(longest),
                Some(format!(
                    "shortened from {span} to {}, the longest a {} may ban",
                    Span::For(longest),
                    from.role
                )),
            )),
        }
    }

    fn ban<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        intent: &Intent,
        now: Timestamp,
    ) -> Result<Result<Decided, Refused>, L::Error> {
        let Intent::Ban {
            target,
            span,
            rule,
            reason,
            evidence,
            source,
            list,
            actor,
            unverified,
        } = intent
        else {
            unreachable!("ban() is called with bans");
        };
        let source = match self.source_for(from, *source) {
            Ok(s) => s,
            Err(why) => return Ok(Err(why)),
        };
        if let Some(refusal) = self.refusal(ledger, target)? {
            return Ok(Err(refusal));
        }
        let asked = span.unwrap_or(self.config().default_ban);
        let (base, shortened) = match self.within_limits(from, target, asked) {
            Ok(v) => v,
            Err(why) => return Ok(Err(why)),
        };
        let mut needed = match source {
            // Operators and nodes ban by hand at once; reports wait.
            Source::Cli | Source::Config | Source::Policy | Source::Feed => 1,
            s => self.config().quorum.get(&s).copied().unwrap_or(1),
        };
        if *unverified {
            needed = needed.max(self.config().quorum_unverified);
        }
        let mut reporters = Vec::new();
        if needed > 1 {
            let (have, reached) = self.count_report(ledger, target, from, now, needed)?;
            if !reached {
                let why = format!(
                    "{} of {needed} nodes have reported {target}; waiting for a quorum{}",
                    have.len(),
                    if *unverified {
                        " (a port probe can be forged, so it needs several servers)"
                    } else {
                        ""
                    }
                );
                return Ok(Ok((IntentOutcome::Pending, Some(why), None)));
            }
            reporters = have;
        }
        let mut origin = Origin::new(from.name.clone(), source);
        if let Some(a) = from.actor(actor.as_deref()) {
            origin = origin.with_actor(a);
        }
        let automatic = !matches!(source, Source::Cli | Source::Config);
        let mut fresh = Decision::new(Action::Ban, *target, now, base, origin)
            .with_evidence(evidence.iter())
            .with_scope(Scope::Network)
            .with_list(list.clone());
        if let Some(r) = rule {
            fresh = fresh.with_rule(r.clone());
        }
        if !reporters.is_empty() {
            fresh.evidence.push(format!(
                "reported by {} (a quorum of {needed})",
                reporters.join(", ")
            ));
        }
        if let Some(mut old) = ledger.get(Action::Ban, target, None)?
            && old.is_active(now)
        {
            if let Some(r) = reason {
                fresh = fresh.with_reason(r.clone());
            }
            // Only automatic repeats (detectors, reports, feeds) are
            // suppressed, to damp a flood of the same report. A ban by
            // hand is an operator's (or a server's operator's) word: its
            // repeat extends the ban everywhere at once, as the CLI says.
            if automatic && now.since(old.updated) < self.config().suppress_window {
                // A repeat: recorded, not re-broadcast; the answer carries
                // the expiry that holds, so the reporter's own kernel
                // keeps the network's.
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
                    palisade_model::time::compact_duration(self.config().suppress_window)
                );
                return Ok(Ok((IntentOutcome::Suppressed, Some(why), old.expires)));
            }
            old.absorb(fresh);
            ledger.put(&old)?;
            return Ok(Ok((IntentOutcome::Accepted, shortened, old.expires)));
        }
        let lasting = if automatic {
            self.escalate(ledger, target, base, now)?
        } else {
            base
        };
        fresh.expires = lasting.expiry_from(now);
        let offence = ledger.offender(target)?.map_or(0, |o| o.bans);
        let mut notes: Vec<String> = reason.iter().cloned().collect();
        if lasting != base {
            notes.push(format!(
                "offence {offence} of this address: {base} escalated to {lasting}"
            ));
        }
        notes.extend(shortened.clone());
        if !notes.is_empty() {
            fresh = fresh.with_reason(notes.join("; "));
        }
        ledger.put(&fresh)?;
        if needed > 1 {
            ledger.set_reports(target, &[])?;
        }
        let note = match self.roll_up(ledger, target, now)? {
            Some(rolled) => Some(match shortened {
                Some(s) => format!("{s}; {rolled}"),
                None => rolled,
            }),
            None => shortened,
        };
        Ok(Ok((IntentOutcome::Accepted, note, fresh.expires)))
    }

    /// After a new ban of `banned` (a host, or a network narrower than the
    /// roll-up's): when enough bans inside its network were made within
    /// the window, bans the network in their place (see
    /// [`crate::rollup`]) and says so. The network ban is the policy's own,
    /// but bounded like a node's: never wider than `[hub.limits]`, never
    /// over the hub, an allow entry covering it or what the guard forbids.
    fn roll_up<L: Ledger>(
        &self,
        ledger: &mut L,
        banned: &Net,
        now: Timestamp,
    ) -> Result<Option<String>, L::Error> {
        let rollup = &self.config().rollup;
        let Some(network) = rollup.network_of(banned) else {
            return Ok(None);
        };
        if ledger
            .get(Action::Ban, &network, None)?
            .is_some_and(|d| d.is_active(now))
        {
            return Ok(None);
        }
        // Cheap refusals before the members are read: a flood of hosts in
        // a protected network costs a lookup each, not a scan.
        let limits = &self.config().limits;
        let widest = match network.family() {
            Family::V4 => limits.widest_v4,
            Family::V6 => limits.widest_v6,
        };
        if network.prefix() < widest || self.refusal(ledger, &network)?.is_some() {
            return Ok(None);
        }
        let inside = ledger.bans_within(&network)?;
        let Some(members) = rollup.members(&inside, now) else {
            return Ok(None);
        };
        let base = self.config().default_ban;
        let lasting = self.escalate(ledger, &network, base, now)?;
        let mut ban = rollup.network_ban(network, &members, crate::HUB_NODE, lasting, now);
        let offence = ledger.offender(&network)?.map_or(0, |o| o.bans);
        crate::rollup::note_escalation(&mut ban, offence, base);
        ledger.put(&ban)?;
        for m in members.iter().filter(|m| crate::Rollup::replaces(&ban, m)) {
            ledger.remove(Action::Ban, &m.target, None)?;
        }
        Ok(Some(format!(
            "{} bans inside {network} within the roll-up's window: rolled up into a ban of {network}",
            members.len()
        )))
    }

    fn unban<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        target: &Net,
    ) -> Result<Result<Decided, Refused>, L::Error> {
        let Some(existing) = ledger.get(Action::Ban, target, None)? else {
            return Ok(Ok((
                IntentOutcome::NotFound,
                Some(format!("{target} is not banned")),
                None,
            )));
        };
        let own = existing.origin.node == from.name;
        match from.role {
            Role::Operator => {}
            _ if from.internal => {}
            Role::Node if own => {}
            Role::Node => {
                return Ok(Err(format!(
                    "{target} was banned by {}; a node may lift only its own bans (an operator can unban it)",
                    existing.origin.node
                )));
            }
            Role::Reporter => {
                return Ok(Err(
                    "a reporter credential only reports; it cannot unban".to_string()
                ));
            }
        }
        ledger.remove(Action::Ban, target, None)?;
        // Forgiven: its history goes too.
        ledger.set_offender(target, None)?;
        Ok(Ok((IntentOutcome::Accepted, None, None)))
    }

    #[allow(clippy::too_many_arguments)]
    fn allow<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        target: &Net,
        span: Option<Span>,
        comment: Option<&str>,
        group: Option<&str>,
        actor: Option<&str>,
        now: Timestamp,
    ) -> Result<Result<Decided, Refused>, L::Error> {
        if let Err(why) = self.may_allow(from, group) {
            return Ok(Err(why));
        }
        if let Err(r) = self.config().guard.check_allow(target) {
            return Ok(Err(r.to_string()));
        }
        let mut origin = Origin::new(from.name.clone(), Source::Cli);
        if let Some(a) = from.actor(actor) {
            origin = origin.with_actor(a);
        }
        let lasting = span.unwrap_or(Span::Forever);
        let mut d = Decision::new(Action::Allow, *target, now, lasting, origin)
            .with_scope(Scope::Network)
            .with_group(group.map(String::from));
        if let Some(c) = comment {
            d = d.with_reason(c);
        }
        if let Some(mut old) = ledger.get(Action::Allow, target, group)? {
            if old.origin.source == Source::Policy || old.origin.source == Source::Config {
                return Ok(Err(format!(
                    "{target} is already allowed by the hub ({}); nothing to do",
                    old.reason.as_deref().unwrap_or("configuration")
                )));
            }
            old.absorb(d);
            d = old;
        }
        // Bans the entry covers stay: they are shadowed (the kernel lets
        // allowed sources through first) and apply again if it goes.
        ledger.put(&d)?;
        Ok(Ok((IntentOutcome::Accepted, None, d.expires)))
    }

    /// Allow entries: operators anywhere; a node only for its own group.
    fn may_allow(&self, from: &Node, group: Option<&str>) -> Result<(), Refused> {
        if from.internal || from.role == Role::Operator {
            return Ok(());
        }
        match (from.role, group, from.group.as_deref()) {
            (Role::Node, Some(g), Some(own)) if g == own => Ok(()),
            (Role::Node, Some(g), _) => Err(format!(
                "a node may change the allow entries of its own group only, not {g:?}"
            )),
            (Role::Node, None, _) => Err(
                "a node credential cannot change the allowlist of the whole network; an operator can (the dashboard, `palisade allow` where `palisade up` runs, or a server whose token was made with --role operator), or use --local for this server only"
                    .to_string(),
            ),
            _ => Err(format!(
                "a {} credential only reports; it cannot change allow entries",
                from.role
            )),
        }
    }

    fn unallow<L: Ledger>(
        &self,
        ledger: &mut L,
        from: &Node,
        target: &Net,
        group: Option<&str>,
    ) -> Result<Result<Decided, Refused>, L::Error> {
        if let Err(why) = self.may_allow(from, group) {
            return Ok(Err(why));
        }
        let Some(old) = ledger.get(Action::Allow, target, group)? else {
            return Ok(Ok((
                IntentOutcome::NotFound,
                Some(format!("{target} is not an allow entry")),
                None,
            )));
        };
        match old.origin.source {
            Source::Policy => {
                return Ok(Err(format!(
                    "{target} is allowed because it is part of the palisade network ({}); revoke that node's token instead",
                    old.reason.as_deref().unwrap_or("a node")
                )));
            }
            Source::Config => {
                return Ok(Err(format!(
                    "{target} is allowed by the hub's configuration; remove it from [[hub.allow]] there"
                )));
            }
            _ => {}
        }
        if !(from.internal || from.role == Role::Operator) && old.origin.node != from.name {
            return Ok(Err(format!(
                "{target} was allowed by {}; a node may remove only its own entries",
                old.origin.node
            )));
        }
        ledger.remove(Action::Allow, target, group)?;
        Ok(Ok((IntentOutcome::Accepted, None, None)))
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
    ) -> Result<(Vec<String>, bool), L::Error> {
        let window = self.config().quorum_window;
        let mut reports: Vec<Report> = ledger
            .reports(target)?
            .into_iter()
            .filter(|r| now.since(r.at) < window && r.node != from.name)
            .collect();
        reports.push(Report {
            node: from.name.clone(),
            at: now,
        });
        ledger.set_reports(target, &reports)?;
        let names: Vec<String> = reports.into_iter().map(|r| r.node).collect();
        let reached = names.len() as u32 >= needed;
        Ok((names, reached))
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
        let Some(esc) = &self.config().escalation else {
            return Ok(base);
        };
        let previous = esc.counted(ledger.offender(target)?, now);
        ledger.set_offender(
            target,
            Some(crate::Offender {
                bans: previous + 1,
                last: now,
            }),
        )?;
        Ok(esc.lasting(base, previous))
    }
}

/// What a decided intent answers: outcome, reason, expiry.
type Decided = (IntentOutcome, Option<String>, Option<Timestamp>);

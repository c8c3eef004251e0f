//! What the dashboard's pages show, read from one store snapshot: a page of
//! decisions, one address's story.
//!
//! Every request does bounded work whatever the store holds: a page of the
//! ordered index (keyset paging), a covering lookup (one point lookup per
//! prefix length), or a range scan inside a network; filters examine at
//! most [`EXAMINE`] decisions per request and say where they stopped.

use std::collections::HashMap;

use palisade_model::explain::Explanation;
use palisade_model::{Action, Decision, Net, Source, Timestamp};
use palisade_policy::{Offender, Report};
use palisade_store::{Order, Position, Reader, StoreError};
use serde::{Deserialize, Serialize};

use crate::tables;

/// Most decisions one listing request examines when filtering.
pub const EXAMINE: usize = 10_000;
/// Most rows a page has.
pub const MAX_LIMIT: usize = 200;
/// Newest stream events searched for an address's history.
pub const HISTORY_EVENTS: u64 = 20_000;

/// Why a listing could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The search text is not an address or a network.
    #[error("{0}; search for an address or a network, such as 198.51.100.7 or 198.51.100.0/24")]
    Search(#[from] palisade_model::NetError),
    /// The page position is not one the hub gave.
    #[error("{0:?} is not a position; start again from the first page")]
    Position(String),
}

/// What the listing asks: filters, order and page (the query string).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    /// `ban` (default) or `allow`.
    #[serde(default)]
    pub action: Option<Action>,
    /// An address or network to look for.
    #[serde(default)]
    pub q: Option<String>,
    /// Only decisions of this rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// Only decisions made by this node.
    #[serde(default)]
    pub node: Option<String>,
    /// Only decisions of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only decisions of this source.
    #[serde(default)]
    pub source: Option<Source>,
    /// `updated` (default) or `expires`.
    #[serde(default)]
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    #[serde(default)]
    pub dir: Option<String>,
    /// Where the previous page ended.
    #[serde(default)]
    pub after: Option<String>,
    /// Rows per page.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One page of the listing.
#[derive(Debug, Serialize)]
pub struct ListPage {
    /// `ordered` (the whole list), `address` (what covers one address) or
    /// `network` (what covers a network, then what lies inside it).
    pub mode: &'static str,
    /// The decisions of this page.
    pub rows: Vec<Decision>,
    /// Decisions that cover the searched network or address.
    pub covering: Vec<Decision>,
    /// Allows for one group's nodes only (first page of the allows; they
    /// are few and kept apart from the global decisions).
    pub group_allows: Vec<Decision>,
    /// Where to continue; `None` at the end.
    pub next: Option<String>,
    /// Decisions examined for this page.
    pub examined: usize,
    /// True when the page stopped at [`EXAMINE`] before filling up.
    pub stopped: bool,
    /// The most decisions examined for one page ([`EXAMINE`]).
    pub limit_examined: usize,
    /// How many decisions the hub holds.
    pub counts: Counts,
    /// Milliseconds spent in the store.
    pub took_ms: f64,
}

/// The numbers of decisions the hub holds, by kind.
#[derive(Debug, Serialize)]
pub struct Counts {
    /// Bans of single addresses.
    pub ban_hosts: u64,
    /// Bans of wider networks.
    pub ban_networks: u64,
    /// Allow entries.
    pub allows: u64,
}

/// A filter on origin: which decisions a listing keeps.
struct Filter<'a> {
    rule: Option<&'a str>,
    node: Option<&'a str>,
    group: Option<&'a str>,
    source: Option<Source>,
    /// Node name to group, for the group filter.
    groups: &'a HashMap<String, Option<String>>,
    now: Timestamp,
}

impl Filter<'_> {
    fn is_empty(&self) -> bool {
        self.rule.is_none() && self.node.is_none() && self.group.is_none() && self.source.is_none()
    }

    fn keeps(&self, d: &Decision) -> bool {
        d.is_active(self.now)
            && self.rule.is_none_or(|r| d.rule.as_deref() == Some(r))
            && self.node.is_none_or(|n| d.origin.node == n)
            && self.source.is_none_or(|s| d.origin.source == s)
            && self.group.is_none_or(|g| {
                d.group.as_deref() == Some(g)
                    || self
                        .groups
                        .get(&d.origin.node)
                        .is_some_and(|ng| ng.as_deref() == Some(g))
            })
    }
}

fn blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// One page of decisions for `q`. `groups` maps node names to their groups.
pub fn list(
    r: &Reader,
    q: &ListQuery,
    groups: &HashMap<String, Option<String>>,
    now: Timestamp,
) -> Result<ListPage, QueryError> {
    let started = std::time::Instant::now();
    let action = q.action.unwrap_or(Action::Ban);
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let filter = Filter {
        rule: blank(&q.rule),
        node: blank(&q.node),
        group: blank(&q.group),
        source: q.source,
        groups,
        now,
    };
    let mut page = ListPage {
        mode: "ordered",
        rows: Vec::new(),
        covering: Vec::new(),
        group_allows: Vec::new(),
        next: None,
        examined: 0,
        stopped: false,
        limit_examined: EXAMINE,
        counts: {
            let c = r.counts()?;
            Counts {
                ban_hosts: c.ban_hosts,
                ban_networks: c.ban_networks,
                allows: c.allows,
            }
        },
        took_ms: 0.0,
    };
    let after = blank(&q.after);
    match blank(&q.q) {
        Some(text) => {
            let net: Net = text.parse()?;
            // What covers it (both actions: an allow explains a missing ban).
            if after.is_none() {
                for a in [Action::Allow, Action::Ban] {
                    page.covering.extend(
                        r.covering(a, &net)?
                            .into_iter()
                            .filter(|d| d.is_active(now)),
                    );
                }
            }
            if net.is_host() {
                page.mode = "address";
            } else {
                page.mode = "network";
                let after: Option<Net> = match after {
                    Some(a) => Some(a.parse().map_err(|_| QueryError::Position(a.to_string()))?),
                    None => Some(net),
                };
                for d in r.inside(action, &net, after.as_ref())? {
                    let d = d?;
                    page.examined += 1;
                    let target = d.target;
                    if filter.keeps(&d) {
                        page.rows.push(d);
                    }
                    if page.rows.len() >= limit || page.examined >= EXAMINE {
                        page.stopped = page.rows.len() < limit;
                        page.next = Some(target.to_string());
                        break;
                    }
                }
            }
        }
        None => {
            if action == Action::Allow && after.is_none() {
                for (_, bytes) in r.map_entries(tables::GROUP_ALLOWS)? {
                    if let Ok(d) = serde_json::from_slice::<Decision>(&bytes)
                        && filter.keeps(&d)
                    {
                        page.group_allows.push(d);
                    }
                }
            }
            let order = match q.sort.as_deref() {
                Some("expires") => Order::Expires,
                _ => Order::Updated,
            };
            let descending = q.dir.as_deref() != Some("asc");
            let after: Option<Position> = match after {
                Some(a) => Some(
                    a.parse()
                        .map_err(|_: StoreError| QueryError::Position(a.to_string()))?,
                ),
                None => None,
            };
            let budget = if filter.is_empty() {
                // Without filters only expired entries are skipped; they are
                // pruned every 30 s, so few. Still bounded.
                EXAMINE * 5
            } else {
                EXAMINE
            };
            page.limit_examined = budget;
            for item in r.ordered(action, order, descending, after.as_ref())? {
                let (pos, d) = item?;
                page.examined += 1;
                if filter.keeps(&d) {
                    page.rows.push(d);
                }
                if page.rows.len() >= limit || page.examined >= budget {
                    page.stopped = page.rows.len() < limit;
                    page.next = Some(pos.to_string());
                    break;
                }
            }
        }
    }
    page.took_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(page)
}

/// An address's whole story, for the explain page.
#[derive(Debug, Serialize)]
pub struct Story {
    /// What the policy says about it now.
    pub explanation: Explanation,
    /// Group allow entries covering it (these apply to one group's nodes).
    pub group_allows: Vec<Decision>,
    /// Escalation records of it and of the bans covering it.
    pub offenders: Vec<(Net, Offender)>,
    /// Reports waiting for a quorum.
    pub pending: Vec<Report>,
    /// Recent stream events about it or the bans covering it, newest first.
    pub history: Vec<serde_json::Value>,
    /// Stream events read to find the history (at most [`HISTORY_EVENTS`]).
    pub history_examined: u64,
}

/// Reads an address's story from one snapshot.
pub fn story(r: &Reader, net: Net, now: Timestamp) -> Result<Story, StoreError> {
    let explanation = r.explain(net, now)?;
    let mut group_allows = Vec::new();
    for (_, bytes) in r.map_entries(tables::GROUP_ALLOWS)? {
        if let Ok(d) = serde_json::from_slice::<Decision>(&bytes)
            && d.is_active(now)
            && d.target.contains(&net)
        {
            group_allows.push(d);
        }
    }
    let mut targets = vec![net];
    targets.extend(explanation.banned_by.iter().map(|d| d.target));
    targets.extend(explanation.allowed_by.iter().map(|d| d.target));
    targets.sort_by_key(|t| (t.prefix(), t.to_string()));
    targets.dedup();
    let mut offenders = Vec::new();
    let mut pending = Vec::new();
    for t in &targets {
        if let Some(o) = r
            .map_get(tables::OFFENDERS, &t.to_string())?
            .and_then(|b| serde_json::from_slice::<Offender>(&b).ok())
        {
            offenders.push((*t, o));
        }
        if let Some(rs) = r
            .map_get(tables::QUORUM, &t.to_string())?
            .and_then(|b| serde_json::from_slice::<Vec<Report>>(&b).ok())
        {
            pending.extend(rs);
        }
    }
    // Recent events naming one of these targets, found without parsing the
    // others.
    let needles: Vec<String> = targets
        .iter()
        .map(|t| format!("\"target\":\"{t}\""))
        .collect();
    let next = r.queue_next(tables::EVENTS)?;
    let from = next.saturating_sub(HISTORY_EVENTS + 1);
    let mut history = Vec::new();
    let mut examined = 0;
    for (_, record) in r.queue(tables::EVENTS, from, HISTORY_EVENTS as usize)? {
        examined += 1;
        let (_, line) = crate::records::split_record(&record);
        let text = String::from_utf8_lossy(line);
        if needles.iter().any(|n| text.contains(n.as_str()))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            history.push(v);
        }
    }
    history.reverse();
    history.truncate(100);
    Ok(Story {
        explanation,
        group_allows,
        offenders,
        pending,
        history,
        history_examined: examined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Origin, Span};
    use palisade_store::{Options, Store};
    use std::time::Duration;

    fn store(dir: &tempfile::TempDir) -> Store {
        let s = Store::open(
            &dir.path().join("hub.redb"),
            &Options {
                ordered: true,
                ..Options::default()
            },
        )
        .unwrap();
        s.write(|w| {
            for i in 0..30u64 {
                let target: Net = format!("198.51.100.{i}").parse().unwrap();
                let d = Decision::new(
                    Action::Ban,
                    target,
                    Timestamp::from_millis(1_000_000 + i * 1000),
                    Span::For(Duration::from_secs(10_000_000 - 2 * i)),
                    Origin::new(
                        format!("web{}", i % 3),
                        if i % 2 == 0 {
                            Source::Detector
                        } else {
                            Source::Cli
                        },
                    ),
                )
                .with_rule(if i % 5 == 0 { "postfix" } else { "sshd" });
                w.put(&d)?;
            }
            w.put(&Decision::new(
                Action::Ban,
                "203.0.113.0/24".parse().unwrap(),
                Timestamp::from_millis(1),
                Span::Forever,
                Origin::new("web0", Source::Feed),
            ))?;
            Ok(())
        })
        .unwrap();
        s
    }

    fn q(f: impl FnOnce(&mut ListQuery)) -> ListQuery {
        let mut q = ListQuery {
            limit: Some(10),
            ..ListQuery::default()
        };
        f(&mut q);
        q
    }

    #[test]
    fn pages_filters_and_searches() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let r = s.read().unwrap();
        let now = Timestamp::from_millis(2_000_000);
        let groups = HashMap::from([("web1".to_string(), Some("dmz".to_string()))]);
        let targets = |p: &ListPage| {
            p.rows
                .iter()
                .map(|d| d.target.to_string())
                .collect::<Vec<_>>()
        };

        // Newest first, ten at a time, continuing where a page ended.
        let p1 = list(&r, &q(|_| {}), &groups, now).unwrap();
        assert_eq!(targets(&p1)[0], "198.51.100.29");
        assert_eq!(p1.rows.len(), 10);
        let p2 = list(&r, &q(|q| q.after = p1.next.clone()), &groups, now).unwrap();
        assert_eq!(targets(&p2)[0], "198.51.100.19");
        let p4 = list(
            &r,
            &q(|q| {
                q.after = list(&r, &q_after(&p2), &groups, now).unwrap().next;
            }),
            &groups,
            now,
        )
        .unwrap();
        assert_eq!(targets(&p4), ["203.0.113.0/24"]);
        assert!(p4.next.is_none());

        // By expiry, soonest first: the never-ending feed ban comes last.
        let exp = list(
            &r,
            &q(|q| {
                q.sort = Some("expires".into());
                q.dir = Some("asc".into());
                q.limit = Some(200);
            }),
            &groups,
            now,
        )
        .unwrap();
        assert_eq!(targets(&exp).last().unwrap(), "203.0.113.0/24");
        assert_eq!(targets(&exp)[0], "198.51.100.29");

        // Filters: rule, node, source, and group (the origin node's).
        let f = list(
            &r,
            &q(|q| {
                q.rule = Some("postfix".into());
                q.source = Some(Source::Detector);
            }),
            &groups,
            now,
        )
        .unwrap();
        assert_eq!(
            targets(&f),
            ["198.51.100.20", "198.51.100.10", "198.51.100.0"]
        );
        let g = list(&r, &q(|q| q.group = Some("dmz".into())), &groups, now).unwrap();
        assert!(g.rows.iter().all(|d| d.origin.node == "web1"));
        assert_eq!(g.rows.len(), 10);

        // An address finds the network ban that covers it.
        let a = list(&r, &q(|q| q.q = Some("203.0.113.9".into())), &groups, now).unwrap();
        assert_eq!(a.mode, "address");
        assert_eq!(a.covering[0].target.to_string(), "203.0.113.0/24");
        // A network: what covers it, then what lies inside, paged.
        let n = list(
            &r,
            &q(|q| q.q = Some("198.51.100.0/24".into())),
            &groups,
            now,
        )
        .unwrap();
        assert_eq!(n.mode, "network");
        assert_eq!(targets(&n)[..2], ["198.51.100.0", "198.51.100.1"]);
        let n2 = list(
            &r,
            &q(|q| {
                q.q = Some("198.51.100.0/24".into());
                q.after = n.next.clone();
            }),
            &groups,
            now,
        )
        .unwrap();
        assert_eq!(targets(&n2)[0], "198.51.100.10");
        assert!(list(&r, &q(|q| q.q = Some("nonsense".into())), &groups, now).is_err());

        let story = story(&r, "203.0.113.9".parse().unwrap(), now).unwrap();
        assert_eq!(story.explanation.banned_by.len(), 1);
    }

    fn q_after(p: &ListPage) -> ListQuery {
        ListQuery {
            limit: Some(10),
            after: p.next.clone(),
            ..ListQuery::default()
        }
    }
}

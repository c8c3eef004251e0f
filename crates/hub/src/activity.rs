//! Recent activity for the dashboard's live page: new bans per minute by
//! rule, and the networks (/24 and /48) with the most new bans, in bounded
//! memory. The writer records each new ban after its transaction commits.
//! Kept in memory only: a restarted hub starts a new chart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use palisade_model::{Family, Net, Timestamp};
use serde::Serialize;

/// Minutes of history kept for the chart.
pub const MINUTES: usize = 180;
/// Minutes the most active networks are counted over.
pub const NETWORK_MINUTES: usize = 60;
/// Distinct rules counted per minute; the rest count as "other".
const RULES_PER_MINUTE: usize = 24;
/// Distinct networks counted per minute; the rest are not counted.
const NETWORKS_PER_MINUTE: usize = 2048;

#[derive(Debug, Default)]
struct Minute {
    /// Minutes since the epoch.
    at: u64,
    rules: HashMap<String, u32>,
    networks: HashMap<Net, u32>,
}

#[derive(Debug, Default)]
pub struct Activity {
    minutes: Mutex<VecDeque<Minute>>,
}

/// The chart and top networks, as the dashboard receives them.
#[derive(Debug, Serialize)]
pub struct ActivityView {
    /// Minutes since the epoch of the first point; one point per minute.
    pub start: u64,
    pub minutes: usize,
    /// Rule name and its new bans per minute, busiest rule first.
    pub rules: Vec<(String, Vec<u32>)>,
    pub top24: Vec<(Net, u32)>,
    pub top48: Vec<(Net, u32)>,
}

impl Activity {
    /// Counts a new ban of `target` by `rule`.
    pub fn record(&self, rule: Option<&str>, target: &Net, now: Timestamp) {
        let at = now.as_millis() / 60_000;
        let mut minutes = self.minutes.lock().unwrap();
        if minutes.back().is_none_or(|m| m.at < at) {
            minutes.push_back(Minute {
                at,
                ..Minute::default()
            });
        }
        while minutes.front().is_some_and(|m| m.at + MINUTES as u64 <= at) {
            minutes.pop_front();
        }
        // Clocks that step back count into the newest minute.
        let m = minutes.back_mut().expect("just pushed");
        let rule = rule.unwrap_or("(none)");
        let key = if m.rules.len() < RULES_PER_MINUTE || m.rules.contains_key(rule) {
            rule
        } else {
            "other"
        };
        *m.rules.entry(key.to_string()).or_default() += 1;
        let prefix = match target.family() {
            Family::V4 => 24,
            Family::V6 => 48,
        };
        if target.prefix() >= prefix {
            let net = Net::truncating(target.addr(), prefix);
            if m.networks.len() < NETWORKS_PER_MINUTE || m.networks.contains_key(&net) {
                *m.networks.entry(net).or_default() += 1;
            }
        }
    }

    pub fn view(&self, now: Timestamp, top: usize) -> ActivityView {
        let now_min = now.as_millis() / 60_000;
        let start = now_min + 1 - MINUTES as u64;
        let minutes = self.minutes.lock().unwrap();
        let mut rules: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut nets: HashMap<Net, u32> = HashMap::new();
        for m in minutes.iter().filter(|m| m.at >= start && m.at <= now_min) {
            let i = (m.at - start) as usize;
            for (r, n) in &m.rules {
                rules.entry(r).or_insert_with(|| vec![0; MINUTES])[i] += n;
            }
            if m.at + NETWORK_MINUTES as u64 > now_min {
                for (net, n) in &m.networks {
                    *nets.entry(*net).or_default() += n;
                }
            }
        }
        let mut rules: Vec<(String, Vec<u32>)> =
            rules.into_iter().map(|(r, v)| (r.to_string(), v)).collect();
        rules.sort_by_key(|(r, v)| (std::cmp::Reverse(v.iter().sum::<u32>()), r.clone()));
        let mut ranked: Vec<(Net, u32)> = nets.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.to_string().cmp(&b.0.to_string())));
        let pick = |f: Family| {
            ranked
                .iter()
                .filter(|(n, _)| n.family() == f)
                .take(top)
                .copied()
                .collect()
        };
        ActivityView {
            start,
            minutes: MINUTES,
            rules,
            top24: pick(Family::V4),
            top48: pick(Family::V6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_by_rule_and_ranks_networks() {
        let a = Activity::default();
        let t = |min: u64| Timestamp::from_millis(min * 60_000 + 5);
        let n = |s: &str| s.parse::<Net>().unwrap();
        a.record(Some("sshd"), &n("198.51.100.7"), t(1000));
        a.record(Some("sshd"), &n("198.51.100.8"), t(1000));
        a.record(Some("nginx"), &n("203.0.113.1"), t(1001));
        a.record(None, &n("2001:db8:1:2::5"), t(1002));
        let v = a.view(t(1002), 10);
        assert_eq!(v.rules[0].0, "sshd");
        assert_eq!(v.rules[0].1.iter().sum::<u32>(), 2);
        assert_eq!(*v.rules[0].1.last().unwrap(), 0);
        assert_eq!(v.rules[0].1[MINUTES - 3], 2);
        assert_eq!(v.top24[0], (n("198.51.100.0/24"), 2));
        assert_eq!(v.top48, vec![(n("2001:db8:1::/48"), 1)]);
        // Old minutes leave the chart and the ranking.
        let later = a.view(t(1002 + MINUTES as u64), 10);
        assert!(
            later.rules.iter().all(|(_, v)| v.iter().all(|&c| c == 0)) || later.rules.is_empty()
        );
        assert!(later.top24.is_empty());
    }
}

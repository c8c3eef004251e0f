//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade_model::Source;
use palisade_wire::{Intent, IntentOutcome};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const OUTCOMES: [(IntentOutcome, &str); 6] = [
    (IntentOutcome::Accepted, "accepted"),
    (IntentOutcome::Suppressed, "suppressed"),
    (IntentOutcome::Pending, "pending"),
    (IntentOutcome::NotFound, "not_found"),
    (IntentOutcome::Refused, "refused"),
    (IntentOutcome::Duplicate, "duplicate"),
];

const SOURCES: [(Source, &str); 6] = [
    (Source::Cli, "cli"),
    (Source::Config, "config"),
    (Source::Detector, "detector"),
    (Source::Report, "report"),
    (Source::Feed, "feed"),
    (Source::Policy, "policy"),
];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Intents by outcome.
    outcomes: [Counter; 6],
    /// Ban intents (reports) by source.
    reports: [Counter; 6],
    /// Decisions made (accepted bans and allows).
    pub decisions: Counter,
    pub rate_limited: Counter,
    pub store_errors: Counter,
    pub refused_auth: Counter,
    /// Stream connections now open.
    pub streams: AtomicU64,
    /// Items sent on streams (events, snapshot entries, pings).
    pub stream_items: Counter,
    pub snapshots: Counter,
}

impl Metrics {
    pub fn intent(&self, intent: &Intent, outcome: IntentOutcome) {
        if let Some(i) = OUTCOMES.iter().position(|(o, _)| *o == outcome) {
            self.outcomes[i].inc();
        }
        if let Intent::Ban { source, .. } = intent
            && let Some(i) = SOURCES.iter().position(|(s, _)| s == source)
        {
            self.reports[i].inc();
        }
        if outcome == IntentOutcome::Accepted
            && matches!(intent, Intent::Ban { .. } | Intent::Allow { .. })
        {
            self.decisions.inc();
        }
    }
}

/// How many stream events `node` has not confirmed applying: unknown
/// (`None`) until a heartbeat says where it is. Before that its record
/// holds no cursor of its own (0 for a node that just joined), and
/// counting from it would show the whole stream as lag.
pub fn stream_lag(node: &crate::records::NodeRecord, seq: u64) -> Option<u64> {
    node.version
        .as_ref()
        .map(|_| seq.saturating_sub(node.cursor))
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub bans: u64,
    pub ban_networks: u64,
    pub allows: u64,
    pub seq: u64,
    pub nodes: u64,
    /// (node, stream lag in events), for nodes whose lag is known
    /// ([`stream_lag`]).
    pub lag: Vec<(String, u64)>,
}

pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let outcomes: Vec<(String, u64)> = OUTCOMES
        .iter()
        .zip(&m.outcomes)
        .map(|((_, l), c)| (format!("{{outcome=\"{l}\"}}"), c.get()))
        .collect();
    metric(
        "palisade_hub_intents_total",
        "counter",
        "Intents received from nodes, by outcome.",
        &outcomes,
    );
    let reports: Vec<(String, u64)> = SOURCES
        .iter()
        .zip(&m.reports)
        .map(|((_, l), c)| (format!("{{source=\"{l}\"}}"), c.get()))
        .collect();
    metric(
        "palisade_hub_reports_total",
        "counter",
        "Ban reports received, by source.",
        &reports,
    );
    metric(
        "palisade_hub_decisions_total",
        "counter",
        "Bans and allows decided.",
        &[(String::new(), m.decisions.get())],
    );
    metric(
        "palisade_hub_active_decisions",
        "gauge",
        "Decisions in force.",
        &[
            ("{action=\"ban\",kind=\"host\"}".into(), g.bans),
            ("{action=\"ban\",kind=\"network\"}".into(), g.ban_networks),
            ("{action=\"allow\",kind=\"any\"}".into(), g.allows),
        ],
    );
    metric(
        "palisade_hub_connected_agents",
        "gauge",
        "Decision streams open now.",
        &[(String::new(), m.streams.load(Ordering::Relaxed))],
    );
    metric(
        "palisade_hub_nodes",
        "gauge",
        "Nodes with a valid token.",
        &[(String::new(), g.nodes)],
    );
    metric(
        "palisade_hub_stream_seq",
        "gauge",
        "Number of the newest stream event.",
        &[(String::new(), g.seq)],
    );
    let lag: Vec<(String, u64)> = g
        .lag
        .iter()
        .map(|(node, l)| {
            (
                format!("{{node=\"{}\"}}", node.replace(['"', '\\', '\n'], "_")),
                *l,
            )
        })
        .collect();
    metric(
        "palisade_hub_stream_lag",
        "gauge",
        "Events a node has not yet confirmed applying.",
        &lag,
    );
    metric(
        "palisade_hub_stream_items_total",
        "counter",
        "Items sent on decision streams.",
        &[(String::new(), m.stream_items.get())],
    );
    metric(
        "palisade_hub_snapshots_total",
        "counter",
        "Full snapshots sent to joining or returning nodes.",
        &[(String::new(), m.snapshots.get())],
    );
    metric(
        "palisade_hub_rate_limited_total",
        "counter",
        "Intents refused for now by per-node rate limits.",
        &[(String::new(), m.rate_limited.get())],
    );
    metric(
        "palisade_hub_auth_refused_total",
        "counter",
        "Requests refused for a bad or revoked token.",
        &[(String::new(), m.refused_auth.get())],
    );
    metric(
        "palisade_hub_store_errors_total",
        "counter",
        "Changes the store could not keep.",
        &[(String::new(), m.store_errors.get())],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_lag_is_unknown_until_its_heartbeat() {
        let mut node = crate::records::NodeRecord {
            name: "web1".into(),
            ..Default::default()
        };
        assert_eq!(stream_lag(&node, 5000), None);
        node.version = Some("0.1.0".into());
        node.cursor = 4998;
        assert_eq!(stream_lag(&node, 5000), Some(2));
        node.cursor = 5003;
        assert_eq!(stream_lag(&node, 5000), Some(0));
    }
}

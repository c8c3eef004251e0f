//! What bouncers report about themselves (`POST /v1/usage-metrics`, the
//! body CrowdSec 1.6's remediation components send): counted per bouncer
//! and shown in the agent's Prometheus metrics. A report is a bouncer's
//! word (hostile like any input): its metric names are checked, their
//! labels summed away, their number bounded, and nothing in it reaches a
//! decision.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde::Deserialize;

/// Most distinct metrics (name and unit) kept per bouncer; further ones in
/// a report are dropped.
pub const MAX_METRICS: usize = 64;
/// Longest metric name or unit kept.
const MAX_NAME: usize = 64;

#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    remediation_components: Vec<Component>,
}

#[derive(Deserialize)]
struct Component {
    #[serde(default)]
    metrics: Vec<Window>,
}

#[derive(Deserialize)]
struct Window {
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    name: String,
    value: f64,
    #[serde(default)]
    unit: String,
}

/// Why a report was refused (the bouncer gets it as a 400's message).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The body is not JSON of a usage report's shape.
    #[error("the body is not a usage report: {0}")]
    NotAReport(String),
}

/// A metric as a bouncer reported it: its name and unit, and the value of
/// its last report window, summed over the labels it gave.
pub type Values = BTreeMap<(String, String), f64>;

/// The values of one report; names or units that are not short words
/// (letters, digits, `_`, `.`, `-`) and values that are not finite are
/// left out.
pub fn parse(body: &[u8]) -> Result<Values, UsageError> {
    let report: Report =
        serde_json::from_slice(body).map_err(|e| UsageError::NotAReport(e.to_string()))?;
    let word = |s: &str| {
        s.len() <= MAX_NAME
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let mut values = Values::new();
    let items = report
        .remediation_components
        .iter()
        .flat_map(|c| &c.metrics)
        .flat_map(|w| &w.items);
    for item in items {
        if item.name.is_empty() || !word(&item.name) || !word(&item.unit) {
            continue;
        }
        if !item.value.is_finite() {
            continue;
        }
        let key = (item.name.clone(), item.unit.clone());
        if values.len() >= MAX_METRICS && !values.contains_key(&key) {
            continue;
        }
        *values.entry(key).or_default() += item.value;
    }
    Ok(values)
}

/// Each bouncer's reports: how many came, and the values of the last one.
#[derive(Debug, Default)]
pub struct Usage {
    bouncers: Mutex<BTreeMap<String, Reported>>,
}

#[derive(Debug, Default)]
struct Reported {
    reports: u64,
    last: Values,
}

impl Usage {
    /// Records a report of `bouncer` (a name from the key file, so the
    /// bouncers counted are bounded by the keys made).
    pub fn record(&self, bouncer: &str, values: Values) {
        let mut bouncers = self.bouncers.lock().expect("usage lock");
        let r = bouncers.entry(bouncer.to_string()).or_default();
        r.reports += 1;
        r.last = values;
    }

    /// Forgets bouncers whose key is gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.bouncers
            .lock()
            .expect("usage lock")
            .retain(|name, _| keep(name));
    }

    /// The Prometheus exposition text of the counts.
    pub fn render(&self) -> String {
        let bouncers = self.bouncers.lock().expect("usage lock");
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP palisade_agent_crowdsec_usage_reports_total Usage reports received from each CrowdSec bouncer (POST /v1/usage-metrics).\n# TYPE palisade_agent_crowdsec_usage_reports_total counter"
        );
        for (name, r) in bouncers.iter() {
            let _ = writeln!(
                out,
                "palisade_agent_crowdsec_usage_reports_total{{bouncer=\"{}\"}} {}",
                label(name),
                r.reports
            );
        }
        let _ = writeln!(
            out,
            "# HELP palisade_agent_crowdsec_bouncer_metric What each CrowdSec bouncer reported in its last usage report (for example packets dropped in its last window), summed over its labels.\n# TYPE palisade_agent_crowdsec_bouncer_metric gauge"
        );
        for (bouncer, r) in bouncers.iter() {
            for ((name, unit), value) in &r.last {
                let _ = writeln!(
                    out,
                    "palisade_agent_crowdsec_bouncer_metric{{bouncer=\"{}\",name=\"{name}\",unit=\"{unit}\"}} {value}",
                    label(bouncer),
                );
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape crowdsec-firewall-bouncer 0.0.29+ sends.
    const REPORT: &str = r#"{"remediation_components":[{"version":"v0.0.31","type":"crowdsec-firewall-bouncer","name":"fw","feature_flags":[],"utc_startup_timestamp":1700000000,"os":{"name":"debian","version":"12"},"metrics":[{"meta":{"window_size_seconds":1800,"utc_now_timestamp":1700001800},"items":[{"name":"dropped","value":12,"unit":"packet","labels":{"origin":"cscli","ip_type":"ipv4"}},{"name":"dropped","value":3,"unit":"packet","labels":{"origin":"lists","ip_type":"ipv4"}},{"name":"dropped","value":960,"unit":"byte","labels":{"origin":"cscli","ip_type":"ipv4"}},{"name":"active_decisions","value":5,"unit":"ip","labels":{"origin":"cscli","ip_type":"ipv4"}}]}]}]}"#;

    #[test]
    fn a_report_is_summed_over_its_labels_and_rendered() {
        let usage = Usage::default();
        usage.record("fw", parse(REPORT.as_bytes()).unwrap());
        usage.record("fw", parse(REPORT.as_bytes()).unwrap());
        let text = usage.render();
        assert!(
            text.contains("palisade_agent_crowdsec_usage_reports_total{bouncer=\"fw\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "palisade_agent_crowdsec_bouncer_metric{bouncer=\"fw\",name=\"dropped\",unit=\"packet\"} 15\n"
            ),
            "{text}"
        );
        assert!(text.contains("name=\"active_decisions\",unit=\"ip\"} 5\n"));
        usage.retain(|n| n != "fw");
        assert!(!usage.render().contains("fw"));
    }

    #[test]
    fn hostile_reports_are_refused_or_bounded() {
        for bad in [
            &b"not json"[..],
            br#"{"remediation_components":5}"#,
            br#"{"remediation_components":[{"metrics":[{"items":[{"name":"x","value":"1"}]}]}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // An empty report, or one of another shape with no items, counts.
        assert!(parse(b"{}").unwrap().is_empty());
        let item = |name: &str, unit: &str| {
            format!(
                r#"{{"name":{},"value":1,"unit":{}}}"#,
                serde_json::json!(name),
                serde_json::json!(unit)
            )
        };
        let mut items: Vec<String> = (0..1000).map(|i| item(&format!("m{i}"), "x")).collect();
        items.push(item("evil\"} 1\nfake_metric 9", "packet"));
        items.push(item(&"n".repeat(1000), "packet"));
        items.push(item("dropped", "pa cket"));
        let body = format!(
            r#"{{"remediation_components":[{{"metrics":[{{"items":[{}]}}]}}]}}"#,
            items.join(",")
        );
        let values = parse(body.as_bytes()).unwrap();
        assert_eq!(values.len(), MAX_METRICS);
        let usage = Usage::default();
        usage.record("fw\"}\nx", values);
        let text = usage.render();
        assert!(
            !text.contains("fake_metric") && !text.contains("\nx"),
            "{text}"
        );
    }
}

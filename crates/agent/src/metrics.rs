//! The agent's own Prometheus metrics: counters kept as things happen
//! ([`Counters`]), the rest read when scraped (decisions from the store,
//! kernel elements from the enforcers, the stream and the outbox), served
//! on a loopback address only ([`serve`]): they carry no secret, but the
//! endpoint has no authentication either.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use palisade_control::AgentStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

/// Counted as things happen, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Kernel elements found missing or extra and repaired, by enforcer.
    drift: Mutex<BTreeMap<String, u64>>,
    /// Detections that asked for a ban, by rule.
    detections: Mutex<BTreeMap<String, u64>>,
}

/// Most distinct rules counted; detections of further rules go to `other`
/// (rules come from the configuration, but a bound keeps memory fixed).
const MAX_RULES: usize = 1000;

impl Counters {
    /// Counts `elements` repaired in `enforcer`'s kernel state.
    pub fn add_drift(&self, enforcer: &str, elements: u64) {
        *self
            .drift
            .lock()
            .unwrap()
            .entry(enforcer.to_string())
            .or_default() += elements;
    }

    /// Counts a ban a detection rule fired.
    pub fn add_detection(&self, rule: &str) {
        let mut m = self.detections.lock().unwrap();
        let key = if m.len() >= MAX_RULES && !m.contains_key(rule) {
            "other"
        } else {
            rule
        };
        *m.entry(key.to_string()).or_default() += 1;
    }

    /// Kernel elements repaired so far.
    pub fn drift_repaired(&self) -> u64 {
        self.drift.lock().unwrap().values().sum()
    }
}

/// The exposition text for one scrape.
pub fn render(s: &AgentStatus, counters: &Counters) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "palisade_agent_decisions",
        "gauge",
        "Active decisions, by kind.",
        &[
            (r#"{kind="ban_host"}"#.into(), s.bans),
            (r#"{kind="ban_network"}"#.into(), s.ban_networks),
            (r#"{kind="allow"}"#.into(), s.allows),
        ],
    );
    let mut elements = Vec::new();
    let mut healthy = Vec::new();
    for e in &s.enforcers {
        healthy.push((
            format!("{{enforcer=\"{}\"}}", label(&e.name)),
            u64::from(e.healthy),
        ));
        for o in &e.objects {
            elements.push((
                format!(
                    "{{enforcer=\"{}\",object=\"{}\"}}",
                    label(&e.name),
                    label(&o.name)
                ),
                o.expected as u64,
            ));
        }
    }
    metric(
        "palisade_agent_kernel_elements",
        "gauge",
        "Kernel elements palisade keeps, per kernel object.",
        &elements,
    );
    metric(
        "palisade_agent_enforcer_healthy",
        "gauge",
        "1 when the enforcer's last kernel transaction succeeded.",
        &healthy,
    );
    let drift: Vec<(String, u64)> = counters
        .drift
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("{{enforcer=\"{}\"}}", label(k)), *v))
        .collect();
    metric(
        "palisade_agent_drift_repaired_total",
        "counter",
        "Kernel elements found missing or extra behind palisade's back, and repaired.",
        &drift,
    );
    let detections: Vec<(String, u64)> = counters
        .detections
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("{{rule=\"{}\"}}", label(k)), *v))
        .collect();
    metric(
        "palisade_agent_detections_total",
        "counter",
        "Detections that asked for a ban, by rule.",
        &detections,
    );
    metric(
        "palisade_agent_connections_killed_total",
        "counter",
        "Open connections of banned addresses cut.",
        &[(String::new(), s.connections_killed)],
    );
    if let Some(n) = &s.network {
        metric(
            "palisade_agent_stream_lag",
            "gauge",
            "Decisions of the network's stream not applied here yet.",
            &[(String::new(), n.latest.saturating_sub(n.cursor))],
        );
        metric(
            "palisade_agent_intents_queued",
            "gauge",
            "Requests to the network waiting in the outbox.",
            &[(String::new(), n.pending)],
        );
        metric(
            "palisade_agent_connected",
            "gauge",
            "1 while connected to the network.",
            &[(String::new(), u64::from(n.connected))],
        );
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Why the metrics endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics are served on loopback only (they have no authentication): use 127.0.0.1:PORT or [::1]:PORT, not {0}"
    )]
    /// The address is not a loopback one.
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why it could not be bound.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the metrics listener (loopback addresses only).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Longest request head read; anything longer is refused.
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) with what
/// `scrape` returns.
pub async fn serve<F, Fut>(listener: TcpListener, scrape: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
            let (status, body) = match head {
                Ok(Some(head)) if is_metrics_get(&head) => ("200 OK", scrape().await),
                Ok(Some(_)) => ("404 Not Found", "only GET /metrics is served\n".into()),
                Ok(None) | Err(_) => ("400 Bad Request", "bad request\n".into()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(reply.as_bytes()).await {
                debug!(error = %e, "metrics client went away");
            }
        });
    }
}

/// The request head, up to the blank line; `None` if it is too long or the
/// client closed early.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(buf);
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
}

fn is_metrics_get(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return false;
    };
    method == b"GET" && (path == b"/metrics" || path.starts_with(b"/metrics?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_of_metrics_is_served() {
        assert!(is_metrics_get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_metrics_get(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"));
        for bad in [
            &b"POST /metrics HTTP/1.1\r\n\r\n"[..],
            b"GET /metricsx HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"",
        ] {
            assert!(!is_metrics_get(bad), "{bad:?}");
        }
    }

    #[test]
    fn labels_are_escaped_and_rules_bounded() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let c = Counters::default();
        for i in 0..MAX_RULES + 5 {
            c.add_detection(&format!("r{i}"));
        }
        let m = c.detections.lock().unwrap();
        assert_eq!(m.len(), MAX_RULES + 1);
        assert_eq!(m["other"], 5);
    }
}

//! palisade over an MQTT 5 broker (mosquitto, EMQX, HiveMQ).
//!
//! Topics, under a configurable first level (`palisade`):
//! - `palisade/decisions/KEY`: one retained message per decision (KEY from
//!   `palisade_wire::keys`), the decision's JSON, with an MQTT 5 message
//!   expiry matching the decision's; an empty retained message removes
//!   it. A new subscriber gets the whole state from the broker.
//! - `palisade/intents/NODE`: a node's intents, as MQTT 5 requests (a
//!   response topic `palisade/results/NODE` and correlation data), taken
//!   by the hub, which applies its policy and publishes the decisions.
//! - `palisade/beat/NODE`: heartbeats, with the address the node reaches
//!   the broker from.
//! - `palisade/sync/CLIENT`: a marker each client sends itself after
//!   subscribing: the broker delivers it after the retained messages, so
//!   it marks the end of the snapshot.
//!
//! [`MqttBus`] is a node's side; [`bridge`] is the hub's.

pub mod bridge;
pub mod bus;

use std::sync::Arc;
use std::time::Duration;

pub use bridge::{BridgeOptions, Decider, DeciderError, run_bridge};
pub use bus::MqttBus;
pub use palisade_wire::tls::TlsOptions;

/// Largest packet either side accepts (a batch of intents with evidence).
const MAX_PACKET: u32 = 8 << 20;

/// How to reach the broker, and which palisade network on it.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttOptions {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's port (1883, 8883 for TLS, unless the URL says).
    pub port: u16,
    /// The broker user, from the URL or `[mqtt] username`.
    pub username: Option<String>,
    /// The broker password, from the URL or `[mqtt] password`.
    pub password: Option<String>,
    /// `mqtts://`: TLS, with these CA and client certificates.
    pub tls: Option<TlsOptions>,
    /// The first level of every palisade topic (`palisade`), so several
    /// networks can share a broker.
    pub topic_prefix: String,
    /// The role this node's intents are decided with (see
    /// [`MqttOptions::intents_topic`]).
    pub role: palisade_wire::Role,
}

/// An MQTT URL that cannot be used: its text, and the forms that can.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an MQTT address: use mqtt://[USER:PASSWORD@]HOST:PORT or mqtts://…")]
pub struct UrlError(String);

/// Why a connection to the broker cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "the MQTT TLS settings cannot be used: {0}; check [mqtt] ca, client_cert and client_key"
    )]
    /// The TLS settings could not be loaded.
    Tls(#[from] palisade_wire::tls::TlsError),
}

impl MqttOptions {
    /// Reads `mqtt://[USER:PASSWORD@]HOST[:PORT]` or `mqtts://…`.
    pub fn from_url(url: &str) -> Result<MqttOptions, UrlError> {
        let bad = || UrlError(url.to_string());
        let (tls, rest, default_port) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r, 1883)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r, 8883)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (cred, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) if hostport.starts_with('[') && hostport.ends_with(']') => {
                    (hostport, default_port)
                }
                Err(_) => return Err(bad()),
            },
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', ',']) {
            return Err(bad());
        }
        let (username, password) = match cred.map(|c| c.split_once(':')) {
            Some(Some((u, p))) => (Some(u.to_string()), Some(p.to_string())),
            Some(None) => (cred.map(String::from), None),
            None => (None, None),
        };
        Ok(MqttOptions {
            host: host.to_string(),
            port,
            username,
            password,
            tls: tls.then(TlsOptions::default),
            topic_prefix: "palisade".into(),
            role: palisade_wire::Role::Node,
        })
    }

    /// The broker as logs and status show it (never the password).
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("mqtt {scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("mqtt {scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The subscription that receives every retained decision.
    pub fn decisions_filter(&self) -> String {
        format!("{}/decisions/#", self.topic_prefix)
    }

    /// The topic a decision is retained under, by its key.
    pub fn decision_topic(&self, key: &str) -> String {
        format!("{}/decisions/{key}", self.topic_prefix)
    }

    /// The decision key of a topic under `decisions/`.
    pub fn decision_key<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.topic_prefix.as_str())?
            .strip_prefix("/decisions/")
    }

    /// Where this node's intents go: the topic names the role they are
    /// decided with (`intents` for a node, `reports` for a reporter,
    /// `operator` for an operator), so the broker's ACLs grant roles.
    pub fn intents_topic(&self, node: &str) -> String {
        format!(
            "{}/{}/{}",
            self.topic_prefix,
            self.role.intents_word(),
            topic_level(node)
        )
    }

    /// Where the answers to `node`'s intents go.
    pub fn results_topic(&self, node: &str) -> String {
        format!("{}/results/{}", self.topic_prefix, topic_level(node))
    }

    /// Where `node`'s heartbeats go.
    pub fn beat_topic(&self, node: &str) -> String {
        format!("{}/beat/{}", self.topic_prefix, topic_level(node))
    }

    /// The self-addressed topic that marks the end of `client`'s snapshot of
    /// retained decisions.
    pub fn sync_topic(&self, client: &str) -> String {
        format!("{}/sync/{}", self.topic_prefix, topic_level(client))
    }

    /// rumqttc's options for a client with this id.
    fn client_options(&self, client_id: &str) -> Result<rumqttc::v5::MqttOptions, SetupError> {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(10));
        o.set_clean_start(true);
        o.set_max_packet_size(Some(MAX_PACKET));
        o.set_connection_timeout(5);
        // Small messages, sent at once: Nagle's algorithm would hold each
        // behind the previous one's acknowledgement.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(5);
        o.set_network_options(net);
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        // The TLS configuration is built with the workspace's rustls (its
        // certificate checks are rustls-webpki 0.103) and handed to rumqttc
        // whole as `TlsConfiguration::Rustls`.
        //
        // rumqttc 0.25.1 (the newest) still depends on rustls-webpki 0.102.8
        // and rustls-pemfile 2.2.0, but only for what palisade never calls:
        // pemfile parses PEM for `TlsConfiguration::Simple`, and webpki 0.102
        // appears only as an error type (`rumqttc::TlsError::WebPki`) of that
        // path; no certificate is ever checked by 0.102. So
        // RUSTSEC-2026-0049 (CRL distribution points), RUSTSEC-2026-0098 (URI
        // name constraints) and RUSTSEC-2026-0099 (wildcard name
        // constraints) concern code that does not run, and palisade uses no
        // CRLs; RUSTSEC-2025-0134 (pemfile unmaintained) concerns a parser
        // that does not run: PEM files are read with rustls-pki-types
        // (`palisade_wire::tls`, `PemObject`). Do not switch to
        // `TlsConfiguration::Simple`.
        if let Some(tls) = &self.tls {
            let config = tls.client_config()?;
            o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        Ok(o)
    }
}

/// A node name as one topic level.
pub fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect()
}

/// Seconds until `expires` as an MQTT message expiry interval (at least
/// 1); `None` for decisions that never expire, `Some(0)` when already
/// expired.
pub fn expiry_interval(
    expires: Option<palisade_model::Timestamp>,
    now: palisade_model::Timestamp,
) -> Option<u32> {
    let e = expires?;
    let ms = e.as_millis().saturating_sub(now.as_millis());
    if ms == 0 {
        return Some(0);
    }
    Some(u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX))
}

/// A random hex string (client ids, correlation data).
pub fn nonce() -> String {
    palisade_wire::random_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = MqttOptions::from_url("mqtt://u:p@broker:1884").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("broker", 1884));
        assert_eq!(
            (o.username.as_deref(), o.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert!(o.tls.is_none());
        let o = MqttOptions::from_url("mqtts://198.18.0.1").unwrap();
        assert_eq!(o.port, 8883);
        assert!(o.tls.is_some());
        let o = MqttOptions::from_url("mqtt://[2001:db8::1]:1883").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("2001:db8::1", 1883));
        assert_eq!(o.describe(), "mqtt mqtt://[2001:db8::1]:1883");
        for bad in ["nats://h:1", "mqtt://", "mqtt://h:x", "mqtt://a,b:1"] {
            assert!(MqttOptions::from_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            o.decision_key("palisade/decisions/ban.1-2-3-4"),
            Some("ban.1-2-3-4")
        );
        assert_eq!(o.intents_topic("a/b"), "palisade/intents/a_b");
    }

    #[test]
    fn expiry() {
        let now = palisade_model::Timestamp::from_millis(10_000);
        assert_eq!(expiry_interval(None, now), None);
        assert_eq!(
            expiry_interval(Some(palisade_model::Timestamp::from_millis(10_001)), now),
            Some(1)
        );
        assert_eq!(
            expiry_interval(Some(palisade_model::Timestamp::from_millis(9_000)), now),
            Some(0)
        );
    }
}

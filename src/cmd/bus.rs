//! Which bus a URL names, and its options from the configuration:
//! `https://` a palisade hub, `nats://`/`tls://` NATS JetStream,
//! `mqtt://`/`mqtts://` an MQTT broker.

use anyhow::{Context as _, Result, bail};
use palisade_config::Config;

/// The kind of bus a join URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hub,
    Nats,
    Mqtt,
}

pub fn kind(url: &str) -> Result<Kind> {
    Ok(match url.split_once("://").map(|(s, _)| s) {
        Some("https") => Kind::Hub,
        Some("nats" | "tls") => Kind::Nats,
        Some("mqtt" | "mqtts") => Kind::Mqtt,
        _ => bail!(
            "{url:?} is not an address to join: use https://HUB:PORT (a palisade hub), nats://HOST:PORT[,HOST:PORT...] (NATS JetStream) or mqtt://HOST:PORT (an MQTT broker)"
        ),
    })
}

/// NATS options from the URL and `[nats]`.
pub fn nats_options(url: &str, config: &Config) -> Result<palisade_nats::NatsOptions> {
    use palisade_nats::{Auth, TlsOptions};
    let c = &config.nats;
    let mut o = palisade_nats::NatsOptions::from_url(url)?;
    o.subject_prefix = c.subject_prefix.clone();
    o.bucket_prefix = c.bucket_prefix.clone();
    o.replicas = c.replicas.max(1);
    o.jetstream_domain = c.jetstream_domain.clone();
    o.role = c.role;
    if let Some(creds) = &c.creds {
        o.auth = Auth::Creds(creds.clone());
    } else if let Some(file) = &c.nkey_seed_file {
        let seed = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the nkey seed {}", file.display()))?;
        o.auth = Auth::Nkey(seed.trim().to_string());
    } else if let (Some(user), Some(password)) = (&c.user, &c.password) {
        o.auth = Auth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        };
    } else if let Some(token) = &c.token {
        o.auth = Auth::Token(token.clone());
    }
    let client = match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => bail!("[nats] needs both `client_cert` and `client_key`, or neither"),
    };
    if o.tls.is_some() || c.ca.is_some() || client.is_some() {
        o.tls = Some(TlsOptions {
            ca: c.ca.clone(),
            client,
        });
    }
    o.validate()?;
    Ok(o)
}

/// MQTT options from the URL and `[mqtt]`.
pub fn mqtt_options(url: &str, config: &Config) -> Result<palisade_mqtt::MqttOptions> {
    let c = &config.mqtt;
    let mut o = palisade_mqtt::MqttOptions::from_url(url)?;
    o.topic_prefix = c.topic_prefix.clone();
    o.role = c.role;
    if let Some(u) = &c.username {
        o.username = Some(u.clone());
    }
    if let Some(p) = &c.password {
        o.password = Some(p.clone());
    } else if let Some(file) = &c.password_file {
        let p = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the MQTT password {}", file.display()))?;
        o.password = Some(p.trim_end_matches(['\n', '\r']).to_string());
    }
    let client = match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => bail!("[mqtt] needs both `client_cert` and `client_key`, or neither"),
    };
    if let Some(tls) = &mut o.tls {
        tls.ca = c.ca.clone();
        tls.client = client;
    } else if c.ca.is_some() || client.is_some() {
        bail!("[mqtt] ca and client certificates need an mqtts:// address");
    }
    Ok(o)
}

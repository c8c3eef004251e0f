//! Why palisade could not work with NATS, and what to check.

use std::path::PathBuf;

use palisade_wire::tls::TlsError;

/// Why NATS options are not usable.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{0:?} is not a NATS address: use nats://HOST:PORT[,HOST:PORT…] (or tls://… for TLS)")]
    BadUrl(String),
    #[error("{what} {value:?} may hold only letters, digits, '-' and '_'")]
    BadName { what: &'static str, value: String },
}

/// A failure talking to NATS, saying what the operator can check.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("cannot read the NATS credentials {}: {detail}; check [nats] creds", path.display())]
    Credentials { path: PathBuf, detail: String },
    #[error(
        "the NATS TLS settings cannot be used: {0}; check [nats] ca, client_cert and client_key"
    )]
    Tls(#[from] TlsError),
    #[error(
        "cannot connect to {servers}: {detail}; check that the servers run and are reachable from here, and the credentials"
    )]
    Connect { servers: String, detail: String },
    #[error("asking NATS about {stream}: {detail} (is JetStream enabled?)")]
    JetStream { stream: String, detail: String },
    #[error(
        "NATS refused to create {stream}: {detail}; check the account's JetStream limits and permissions"
    )]
    Create { stream: String, detail: String },
    #[error(
        "cannot open the NATS bucket {bucket}: {detail}; it is made by the first `palisade hub --join nats://…` worker"
    )]
    Bucket { bucket: String, detail: String },
    #[error(
        "subscribing to {what}: {detail}; check the subscribe permissions of the worker's NATS user"
    )]
    Subscribe { what: &'static str, detail: String },
    #[error("the bucket watch stopped while reading the buckets; restart the worker")]
    WatchStopped,
    #[error("writing {key} to {bucket}: {detail}")]
    Write {
        key: String,
        bucket: String,
        detail: String,
    },
    #[error("the buckets kept changing under this worker; try again")]
    KeptChanging,
}

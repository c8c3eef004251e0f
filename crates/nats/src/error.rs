//! Why palisade could not work with NATS, and what to check.

use std::path::PathBuf;

use palisade_wire::tls::TlsError;

/// Why NATS options are not usable.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("{0:?} is not a NATS address: use nats://HOST:PORT[,HOST:PORT…] (or tls://… for TLS)")]
    /// Not a NATS URL.
    BadUrl(String),
    #[error("{what} {value:?} may hold only letters, digits, '-' and '_'")]
    /// A prefix holds characters subjects and buckets cannot.
    BadName {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
    },
}

/// A failure talking to NATS, saying what the operator can check.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(transparent)]
    /// The options are not usable.
    Options(#[from] OptionsError),
    #[error("cannot read the NATS credentials {}: {detail}; check [nats] creds", path.display())]
    /// The credentials file could not be read.
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    #[error(
        "the NATS TLS settings cannot be used: {0}; check [nats] ca, client_cert and client_key"
    )]
    /// The TLS settings could not be loaded.
    Tls(#[from] TlsError),
    #[error(
        "cannot connect to {servers}: {detail}; check that the servers run and are reachable from here, and the credentials"
    )]
    /// No server could be reached.
    Connect {
        /// The servers tried.
        servers: String,
        /// What the client said.
        detail: String,
    },
    #[error("asking NATS about {stream}: {detail} (is JetStream enabled?)")]
    /// A JetStream request about a stream failed.
    JetStream {
        /// The stream.
        stream: String,
        /// What the server said.
        detail: String,
    },
    #[error(
        "NATS refused to create {stream}: {detail}; check the account's JetStream limits and permissions"
    )]
    /// A stream could not be created.
    Create {
        /// The stream.
        stream: String,
        /// What the server said.
        detail: String,
    },
    #[error(
        "cannot open the NATS bucket {bucket}: {detail}; it is made by the first `palisade hub --join nats://…` worker"
    )]
    /// A bucket could not be opened.
    Bucket {
        /// The bucket.
        bucket: String,
        /// What the server said.
        detail: String,
    },
    #[error(
        "subscribing to {what}: {detail}; check the subscribe permissions of the worker's NATS user"
    )]
    /// A subscription was refused.
    Subscribe {
        /// What was subscribed to.
        what: &'static str,
        /// What the server said.
        detail: String,
    },
    #[error("the bucket watch stopped while reading the buckets; restart the worker")]
    /// The watch of the buckets ended while they were being read.
    WatchStopped,
    #[error("writing {key} to {bucket}: {detail}")]
    /// A key could not be written.
    Write {
        /// The key.
        key: String,
        /// Its bucket.
        bucket: String,
        /// What the server said.
        detail: String,
    },
    #[error("the buckets kept changing under this worker; try again")]
    /// Conditional writes kept finding newer revisions.
    KeptChanging,
}

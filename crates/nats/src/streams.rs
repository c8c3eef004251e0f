//! The JetStream streams palisade makes, with plain JetStream API requests
//! holding exactly the settings wanted (every server since 2.9 understands
//! them; async-nats' own bucket creation does not work on 2.9).
//!
//! - The decisions bucket's stream has the server republish every message
//!   it stores on `<subject_prefix>.changes.<key>` ([`NatsOptions::changes_subject`]):
//!   that core-NATS subject is how changes fan out to agents, with no
//!   JetStream state per agent. The server stamps each with its stream
//!   sequence (`Nats-Sequence`), so an agent sees a gap and fills it.
//! - The snapshot stream ([`crate::snapshot`]) holds a compact copy of the
//!   decisions, stamped with the revision it reflects.
//!
//! Every stream sets its consumer limit: agents use none (they read with
//! direct gets), workers one per bucket each.

use serde::Deserialize;

use crate::{NatsError, NatsOptions};

/// Consumers allowed on a bucket's stream: each worker watches each bucket
/// once; agents never hold one. (Servers since 2.15 default to 1,000 per
/// stream; 2.9 to none.)
pub const BUCKET_CONSUMERS: i64 = 64;
/// Nobody reads the snapshot stream with a consumer.
pub const SNAPSHOT_CONSUMERS: i64 = 4;
/// How long a snapshot part stays when nobody rewrites it: workers rewrite
/// theirs far more often, so only a stopped worker's parts age out.
const SNAPSHOT_MAX_AGE_NS: u64 = 3_600 * 1_000_000_000;

#[derive(Deserialize)]
struct ApiAnswer {
    #[serde(default)]
    error: Option<ApiErrorBody>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    state: Option<StreamState>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// What `STREAM.INFO` says of a stream's contents.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamState {
    /// Messages it holds.
    #[serde(default)]
    pub messages: u64,
    /// The sequence of its last message (0 when empty).
    #[serde(default)]
    pub last_seq: u64,
}

/// A stream's current state; None when it does not exist. `api` is the
/// JetStream API prefix ([`NatsOptions::api_prefix`]).
pub async fn stream_state(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
) -> Result<Option<StreamState>, NatsError> {
    Ok(stream_info(client, api, stream)
        .await?
        .map(|a| a.state.unwrap_or_default()))
}

async fn stream_info(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
) -> Result<Option<ApiAnswer>, NatsError> {
    let info = client
        .request(format!("{api}.STREAM.INFO.{stream}"), "".into())
        .await
        .map_err(|e| jetstream_error(stream, e))?;
    let answer: ApiAnswer =
        serde_json::from_slice(&info.payload).map_err(|e| jetstream_error(stream, e))?;
    match &answer.error {
        None => Ok(Some(answer)),
        // 10059: stream not found.
        Some(e) if e.err_code == 10059 || e.code == 404 => Ok(None),
        Some(e) => Err(jetstream_error(stream, &e.description)),
    }
}

/// Creates the stream of KV bucket `bucket` if it does not exist, with the
/// settings of a KV bucket holding one value per key; with `ttl`, made for
/// per-message TTLs; with `republish`, every message stored is also
/// published on `<republish>.<key>`. An existing stream is given the
/// republish setting when it lacks it. `api` as for [`stream_state`].
pub async fn ensure_bucket(
    client: &async_nats::Client,
    api: &str,
    bucket: &str,
    replicas: usize,
    ttl: bool,
    republish: Option<&str>,
) -> Result<(), NatsError> {
    let stream = format!("KV_{bucket}");
    let source = format!("$KV.{bucket}.>");
    let republish = republish.map(|to| {
        serde_json::json!({
            "src": source,
            "dest": format!("{to}.>"),
            "headers_only": false,
        })
    });
    if let Some(existing) = stream_info(client, api, &stream).await? {
        // A bucket made before changes were republished: add it.
        if let (Some(want), Some(mut config)) = (republish, existing.config)
            && config.get("republish") != Some(&want)
        {
            config["republish"] = want;
            request(client, api, &stream, "UPDATE", &config)
                .await
                .map_err(|e| create_error(&stream, e))?;
            tracing::info!(bucket, "the bucket now republishes its changes");
        }
        return Ok(());
    }
    let mut config = serde_json::json!({
        "name": stream,
        "subjects": [source],
        "retention": "limits",
        "max_consumers": BUCKET_CONSUMERS,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "storage": "file",
        "discard": "new",
        "num_replicas": replicas.max(1),
        "duplicate_window": 120_000_000_000u64,
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "deny_purge": false,
        "allow_direct": true,
        "mirror_direct": false,
    });
    if ttl {
        config["allow_msg_ttl"] = serde_json::Value::Bool(true);
    }
    if let Some(r) = republish {
        config["republish"] = r;
    }
    create(client, api, &stream, &config).await?;
    tracing::info!(bucket, replicas, ttl, "created a KV bucket");
    Ok(())
}

/// Creates the snapshot stream of `options`' network if it does not exist.
pub async fn ensure_snapshot_stream(
    client: &async_nats::Client,
    options: &NatsOptions,
) -> Result<(), NatsError> {
    let stream = options.snapshot_stream();
    let api = options.api_prefix();
    if stream_info(client, &api, &stream).await?.is_some() {
        return Ok(());
    }
    let config = serde_json::json!({
        "name": stream,
        "subjects": [format!("{}.>", options.snapshot_subject())],
        "retention": "limits",
        "max_consumers": SNAPSHOT_CONSUMERS,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": SNAPSHOT_MAX_AGE_NS,
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "storage": "file",
        "discard": "old",
        "num_replicas": options.replicas.max(1),
        "duplicate_window": 120_000_000_000u64,
        "allow_rollup_hdrs": false,
        "deny_delete": true,
        "deny_purge": false,
        "allow_direct": true,
        "mirror_direct": false,
    });
    create(client, &api, &stream, &config).await?;
    tracing::info!(stream, "created the snapshot stream");
    Ok(())
}

async fn create(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
    config: &serde_json::Value,
) -> Result<(), NatsError> {
    match request(client, api, stream, "CREATE", config).await {
        Ok(()) => Ok(()),
        // 10058: already exists (another worker was faster).
        Err(Refused::Api(e)) if e.err_code == 10058 => Ok(()),
        Err(e) => Err(create_error(stream, e)),
    }
}

enum Refused {
    Transport(String),
    Api(ApiErrorBody),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Transport(e) => f.write_str(e),
            Refused::Api(e) => f.write_str(&e.description),
        }
    }
}

async fn request(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
    verb: &str,
    config: &serde_json::Value,
) -> Result<(), Refused> {
    let answer = client
        .request(
            format!("{api}.STREAM.{verb}.{stream}"),
            serde_json::to_vec(config).expect("json").into(),
        )
        .await
        .map_err(|e| Refused::Transport(e.to_string()))?;
    let answer: ApiAnswer =
        serde_json::from_slice(&answer.payload).map_err(|e| Refused::Transport(e.to_string()))?;
    match answer.error {
        None => Ok(()),
        Some(e) => Err(Refused::Api(e)),
    }
}

fn jetstream_error(stream: &str, detail: impl std::fmt::Display) -> NatsError {
    NatsError::JetStream {
        stream: stream.to_string(),
        detail: detail.to_string(),
    }
}

fn create_error(stream: &str, detail: impl std::fmt::Display) -> NatsError {
    NatsError::Create {
        stream: stream.to_string(),
        detail: detail.to_string(),
    }
}

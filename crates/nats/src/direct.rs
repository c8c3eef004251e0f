//! Reading a stream's messages with JetStream direct gets (2.9+, streams
//! made with `allow_direct`): a plain request answered by any replica, with
//! no consumer made and nothing left behind on the server.

use std::time::Duration;

use async_nats::StatusCode;
use bytes::Bytes;

/// Longest wait for one direct get.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored message, as a direct get (or the server's republish) gives
/// it: the subject it was stored under, its stream sequence, its KV
/// operation (`DEL`, `PURGE`; None for a value).
#[derive(Debug, Clone)]
pub struct StoredMsg {
    /// The subject it was stored under (the bucket's `$KV.<bucket>.<key>`).
    pub subject: String,
    /// Its sequence in the stream: the bucket revision it made.
    pub seq: u64,
    /// Its KV operation (`DEL`, `PURGE`); None for a value.
    pub operation: Option<String>,
    /// The stored value.
    pub payload: Bytes,
}

impl StoredMsg {
    /// Reads the stream's stamp from a message's headers (direct get
    /// answers and republished messages carry the same ones); None when
    /// they are missing or name another stream.
    pub fn from_message(stream: &str, m: &async_nats::Message) -> Option<StoredMsg> {
        let headers = m.headers.as_ref()?;
        if headers.get("Nats-Stream")?.as_str() != stream {
            return None;
        }
        let seq = headers.get("Nats-Sequence")?.as_str().parse().ok()?;
        let subject = headers.get("Nats-Subject")?.as_str().to_string();
        // Only what is read later is kept: this runs once per agent and
        // change.
        let operation = headers.get(KV_OPERATION).map(|v| v.as_str().to_string());
        Some(StoredMsg {
            subject,
            seq,
            operation,
            payload: m.payload.clone(),
        })
    }
}

/// The KV header naming a message's operation.
pub const KV_OPERATION: &str = "KV-Operation";

/// Whether a message's KV operation (its [`KV_OPERATION`] header) removes
/// the key: a delete or purge marker rather than a value.
pub fn is_removal(operation: Option<&str>) -> bool {
    matches!(operation, Some("DEL" | "PURGE"))
}

/// The subject a bucket stores `key` under.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Why a direct get gave no message.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The server answered with an error (is the stream there, and does
    /// it allow direct gets?).
    #[error("direct get from {stream}: {detail}")]
    Failed {
        /// The stream asked.
        stream: String,
        /// What the server or the client said.
        detail: String,
    },
    /// No answer in time: the server is unreachable or overloaded.
    #[error("direct get from {stream} timed out")]
    TimedOut {
        /// The stream asked.
        stream: String,
    },
}

/// The first message of `stream` at or after `seq` whose subject matches
/// `filter`; None when there is none. `api` is the JetStream API prefix
/// ([`crate::NatsOptions::api_prefix`]).
pub async fn next(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
    filter: &str,
    seq: u64,
) -> Result<Option<StoredMsg>, DirectError> {
    let body = serde_json::json!({ "seq": seq.max(1), "next_by_subj": filter });
    get(client, stream, format!("{api}.DIRECT.GET.{stream}"), body).await
}

/// The newest message of `stream` stored under `subject`; `api` as for
/// [`next`].
pub async fn last(
    client: &async_nats::Client,
    api: &str,
    stream: &str,
    subject: &str,
) -> Result<Option<StoredMsg>, DirectError> {
    let body = serde_json::json!({ "last_by_subj": subject });
    get(client, stream, format!("{api}.DIRECT.GET.{stream}"), body).await
}

async fn get(
    client: &async_nats::Client,
    stream: &str,
    api: String,
    body: serde_json::Value,
) -> Result<Option<StoredMsg>, DirectError> {
    let failed = |detail: String| DirectError::Failed {
        stream: stream.to_string(),
        detail,
    };
    let request = client.request(api, serde_json::to_vec(&body).expect("json").into());
    let answer = tokio::time::timeout(GET_TIMEOUT, request)
        .await
        .map_err(|_| DirectError::TimedOut {
            stream: stream.to_string(),
        })?
        .map_err(|e| failed(e.to_string()))?;
    match answer.status {
        Some(StatusCode::NOT_FOUND) => return Ok(None),
        Some(s) if s != StatusCode::OK => {
            return Err(failed(format!(
                "status {s} {}",
                answer.description.as_deref().unwrap_or_default()
            )));
        }
        _ => {}
    }
    StoredMsg::from_message(stream, &answer)
        .map(Some)
        .ok_or_else(|| failed("an answer without its stream's headers".into()))
}

//! The decisions snapshot: the whole decisions bucket in a few large
//! messages, so a joining agent reads the state with a handful of direct
//! gets (the same stored object for every agent) instead of replaying the
//! bucket through a consumer of its own.
//!
//! Policy workers keep it current ([`write()`]): each writes its parts on
//! `<snapshot_subject>.part.<writer>.<index>`, then the head on
//! `<snapshot_subject>.head`, naming the writer, the number of parts and
//! the bucket revision the snapshot reflects (every change up to it is in,
//! some later ones may be too). An agent ([`read()`]) reads the head, then
//! the parts, checks each names the head's writer and revision (a worker
//! may rewrite its parts meanwhile: then it reads again), and then reads
//! the bucket's changes after that revision.
//!
//! Nothing in it is trusted beyond what the bucket could say: a head
//! claiming a revision the bucket has not reached is refused, and every
//! entry is checked like a change from the bucket.

use std::time::Duration;

use async_nats::HeaderMap;
use palisade_model::{Decision, Timestamp};
use serde::{Deserialize, Serialize};

use crate::NatsOptions;
use crate::direct::{self, DirectError};

/// Largest part written (servers refuse messages over 1 MiB by default).
const PART_BYTES: usize = 512 * 1024;
/// Most parts a head may name: 2 GiB of decisions, far beyond any bucket.
const MAX_PARTS: u32 = 4096;
/// How often a reader starts over when the parts changed under it.
const READ_ATTEMPTS: usize = 4;
/// A worker rewrites a snapshot this old even when nothing changed, so its
/// parts never age out of the stream while they are the current ones.
pub const REFRESH: Duration = Duration::from_secs(600);

/// What the head says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Head {
    /// The bucket revision the snapshot reflects.
    pub rev: u64,
    /// Which worker wrote the parts (a token of letters and digits).
    pub writer: String,
    /// How many parts follow the head.
    pub parts: u32,
    /// How many decisions the parts hold together.
    pub decisions: u64,
    /// When it was written, in milliseconds since the epoch.
    pub written: u64,
    /// How the parts are encoded (heads written before this field existed
    /// name JSON parts).
    #[serde(default)]
    pub encoding: Encoding,
}

/// How a snapshot's parts are encoded.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JSON, as the first workers wrote them.
    #[default]
    Json,
    /// postcard: about a quarter of JSON's bytes for a decision, and several
    /// times quicker to read. Every joining agent reads every part, so both
    /// count once per agent: 10,000 agents joining on 10,000 decisions read
    /// 35 GB of JSON.
    Postcard,
}

impl Encoding {
    fn encode(self, part: &Part<String>) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(part).expect("a part serializes"),
            Encoding::Postcard => postcard::to_stdvec(part).expect("a part serializes"),
        }
    }

    /// Reads a part, its keys borrowed from `bytes`: a joining agent reads
    /// every decision, and a key's allocation was a tenth of its cost.
    fn decode(self, bytes: &[u8]) -> Result<Part<&str>, String> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// The encoding workers write.
const WRITTEN: Encoding = Encoding::Postcard;

/// One part: a run of decisions with the bucket keys they are stored under
/// (owned when written, borrowed from the message when read).
#[derive(Debug, Serialize, Deserialize)]
struct Part<K> {
    rev: u64,
    writer: String,
    index: u32,
    entries: Vec<(K, Decision)>,
}

/// A snapshot read whole.
#[derive(Debug)]
pub struct Snapshot<T> {
    /// The bucket revision it reflects: changes after it are read next.
    pub rev: u64,
    /// What the reader kept of the decisions.
    pub entries: Vec<T>,
    /// Bytes read, head and parts.
    pub bytes: usize,
}

/// Why no usable snapshot was read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading a head or a part failed.
    #[error(transparent)]
    Direct(#[from] DirectError),
    /// A head or part did not parse or did not fit the head (a stale or
    /// forged part): the agent reads the bucket instead.
    #[error("the snapshot is not usable: {0}")]
    Invalid(String),
    /// Workers replaced it faster than it could be read.
    #[error("the snapshot kept changing while it was read")]
    KeptChanging,
    /// A worker could not store it (is the snapshot stream there?).
    #[error("writing the snapshot: {0}")]
    Write(String),
}

fn head_subject(options: &NatsOptions) -> String {
    format!("{}.head", options.snapshot_subject())
}

fn part_subject(options: &NatsOptions, writer: &str, index: u32) -> String {
    format!("{}.part.{writer}.{index}", options.snapshot_subject())
}

/// The current head; None when no snapshot was written yet.
pub async fn head(
    client: &async_nats::Client,
    options: &NatsOptions,
) -> Result<Option<Head>, SnapshotError> {
    let stream = options.snapshot_stream();
    let Some(m) = direct::last(
        client,
        &options.api_prefix(),
        &stream,
        &head_subject(options),
    )
    .await?
    else {
        return Ok(None);
    };
    let head: Head = serde_json::from_slice(&m.payload)
        .map_err(|e| SnapshotError::Invalid(format!("an unreadable head: {e}")))?;
    if head.writer.is_empty() || !head.writer.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(SnapshotError::Invalid(
            "a head naming no valid writer".into(),
        ));
    }
    if head.parts > MAX_PARTS {
        return Err(SnapshotError::Invalid(format!(
            "a head naming {} parts",
            head.parts
        )));
    }
    Ok(Some(head))
}

/// Reads the current snapshot whole. `newest` is the bucket's last
/// revision: a snapshot claiming a later one is refused. None when there
/// is no snapshot yet. `keep` is given each decision with its bucket key
/// and the snapshot's revision, and says what to keep of it.
pub async fn read<T>(
    client: &async_nats::Client,
    options: &NatsOptions,
    newest: u64,
    mut keep: impl FnMut(&str, u64, Decision) -> Option<T>,
) -> Result<Option<Snapshot<T>>, SnapshotError> {
    let stream = options.snapshot_stream();
    for _ in 0..READ_ATTEMPTS {
        let Some(head) = head(client, options).await? else {
            return Ok(None);
        };
        if head.rev > newest {
            return Err(SnapshotError::Invalid(format!(
                "it claims revision {} but the bucket is at {newest}",
                head.rev
            )));
        }
        let mut entries = Vec::with_capacity(head.decisions.min(1 << 20) as usize);
        let mut bytes = 0;
        let mut changed = false;
        for index in 0..head.parts {
            let subject = part_subject(options, &head.writer, index);
            let Some(m) = direct::last(client, &options.api_prefix(), &stream, &subject).await?
            else {
                changed = true;
                break;
            };
            bytes += m.payload.len();
            let part = head
                .encoding
                .decode(&m.payload)
                .map_err(|e| SnapshotError::Invalid(format!("an unreadable part: {e}")))?;
            if part.rev != head.rev || part.writer != head.writer || part.index != index {
                changed = true;
                break;
            }
            entries.extend(
                part.entries
                    .into_iter()
                    .filter_map(|(key, decision)| keep(key, head.rev, decision)),
            );
        }
        if !changed {
            return Ok(Some(Snapshot {
                rev: head.rev,
                entries,
                bytes,
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(SnapshotError::KeptChanging)
}

/// Writes a snapshot of `entries` (decisions by bucket key) reflecting
/// bucket revision `rev`, as `writer`; returns its head.
pub async fn write(
    js: &async_nats::jetstream::Context,
    options: &NatsOptions,
    writer: &str,
    rev: u64,
    entries: Vec<(String, Decision)>,
) -> Result<Head, SnapshotError> {
    let failed = |e: &dyn std::fmt::Display| SnapshotError::Write(e.to_string());
    let decisions = entries.len() as u64;
    let mut parts: Vec<Vec<(String, Decision)>> = vec![Vec::new()];
    let mut size = 0;
    for (key, decision) in entries {
        // An estimate good enough to keep parts under the server's limit.
        let one = key.len() + 16 + postcard::to_stdvec(&decision).map_or(0, |v| v.len());
        if size + one > PART_BYTES && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            size = 0;
        }
        size += one;
        parts
            .last_mut()
            .expect("one part at least")
            .push((key, decision));
    }
    let count = parts.len() as u32;
    let mut acks = Vec::with_capacity(parts.len());
    for (index, entries) in parts.into_iter().enumerate() {
        let part = Part {
            rev,
            writer: writer.to_string(),
            index: index as u32,
            entries,
        };
        let body = WRITTEN.encode(&part);
        let ack = js
            .publish_with_headers(
                part_subject(options, writer, index as u32),
                HeaderMap::new(),
                body.into(),
            )
            .await
            .map_err(|e| failed(&e))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| failed(&e))?;
    }
    let head = Head {
        rev,
        writer: writer.to_string(),
        parts: count,
        decisions,
        written: Timestamp::now().as_millis(),
        encoding: WRITTEN,
    };
    js.publish(
        head_subject(options),
        serde_json::to_vec(&head).expect("a head serializes").into(),
    )
    .await
    .map_err(|e| failed(&e))?
    .await
    .map_err(|e| failed(&e))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Net, Origin, Source, Span};
    use palisade_wire::keys;

    fn part(n: u32) -> Part<String> {
        let entries = (0..n)
            .map(|i| {
                let net = Net::host(std::net::Ipv4Addr::from(0xc612_0000 + i).into());
                let mut d = Decision::new(
                    Action::Ban,
                    net,
                    Timestamp::now(),
                    "1d".parse::<Span>().unwrap(),
                    Origin::new("web-17", Source::Detector),
                );
                d.rule = Some("sshd".into());
                d.reason = Some("5 failures within 10m".into());
                (keys::decision_key(Action::Ban, &net, None), d)
            })
            .collect();
        Part {
            rev: 7,
            writer: "w1".into(),
            index: 0,
            entries,
        }
    }

    #[test]
    fn parts_read_back_in_either_encoding() {
        let p = part(1000);
        let mut sizes = Vec::new();
        for encoding in [Encoding::Json, Encoding::Postcard] {
            let bytes = encoding.encode(&p);
            sizes.push(bytes.len());
            let back = encoding.decode(&bytes).unwrap();
            assert_eq!((back.rev, back.writer.as_str(), back.index), (7, "w1", 0));
            assert_eq!(back.entries.len(), p.entries.len());
            for ((ka, da), (kb, db)) in back.entries.iter().zip(&p.entries) {
                assert_eq!((*ka, da), (kb.as_str(), db));
            }
        }
        eprintln!(
            "1000 decisions: JSON {} bytes, postcard {} bytes",
            sizes[0], sizes[1]
        );
        assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
    }

    /// A part that is not what a worker wrote (cut short, flipped bytes, a
    /// count far beyond its bytes) is an error, never a panic or a large
    /// allocation: the agent then reads the bucket itself.
    #[test]
    fn broken_parts_are_refused() {
        let bytes = Encoding::Postcard.encode(&part(50));
        for cut in 0..bytes.len() {
            assert!(Encoding::Postcard.decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % b.len();
            b[at] ^= (seed >> 20) as u8 | 1;
            if let Ok(p) = Encoding::Postcard.decode(&b) {
                assert!(p.entries.len() <= 50);
            }
        }
        // rev 1, writer "w", index 0, then ten bytes claiming 2^63 entries.
        let mut huge = vec![1, 1, b'w', 0];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert!(Encoding::Postcard.decode(&huge).is_err());
    }

    #[test]
    fn heads_without_an_encoding_name_json_parts() {
        let head: Head =
            serde_json::from_str(r#"{"rev":1,"writer":"w1","parts":1,"decisions":1,"written":0}"#)
                .unwrap();
        assert_eq!(head.encoding, Encoding::Json);
        let head: Head = serde_json::from_str(
            r#"{"rev":1,"writer":"w1","parts":1,"decisions":1,"written":0,"encoding":"postcard"}"#,
        )
        .unwrap();
        assert_eq!(head.encoding, Encoding::Postcard);
    }
}

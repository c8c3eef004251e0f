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
use palisade_wire::parts;
use serde::{Deserialize, Serialize};

use crate::NatsOptions;
use crate::direct::{self, DirectError};

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
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// JSON with each decision's bucket key, as the first workers wrote
    /// them.
    #[default]
    Json,
    /// postcard with each decision's bucket key: about a quarter of JSON's
    /// bytes, and several times quicker to read.
    Postcard,
    /// postcard without keys, compressed with LZ4 (its size first, 4 bytes
    /// little-endian). Every joining agent reads every part, so bytes and
    /// reading count once per agent: 10,000 agents joining on 10,000
    /// decisions read 35 GB of JSON, 8.6 GB of keyed postcard. The keys
    /// only repeated what each decision says, and checking them was a
    /// tenth to a fifth of an agent's reading.
    PostcardLz4,
}

/// One part as written: a run of decisions.
#[derive(Serialize)]
struct Part<'a> {
    rev: u64,
    writer: &'a str,
    index: u32,
    decisions: &'a [Decision],
}

/// One part of the older encodings as read: each decision with its bucket
/// key, borrowed from the message.
#[derive(Deserialize)]
struct PartRead<E> {
    rev: u64,
    writer: String,
    index: u32,
    entries: Vec<E>,
}

/// A part in the encoding workers write ([`WRITTEN`]).
fn encode(part: &Part) -> Vec<u8> {
    parts::compress(part)
}

impl Encoding {
    /// Reads a part, handing each decision (with its key where the part
    /// has keys) to `keep`.
    fn decode<T>(
        self,
        bytes: &[u8],
        mut keep: impl FnMut(Option<&str>, Decision) -> Option<T>,
        into: &mut Vec<T>,
    ) -> Result<(u64, String, u32), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut keyed = |p: PartRead<(&str, Decision)>, into: &mut Vec<T>| {
            into.extend(p.entries.into_iter().filter_map(|(k, d)| keep(Some(k), d)));
            (p.rev, p.writer, p.index)
        };
        match self {
            Encoding::Json => Ok(keyed(
                serde_json::from_slice(bytes).map_err(|e| err(&e))?,
                into,
            )),
            Encoding::Postcard => Ok(keyed(
                postcard::from_bytes(bytes).map_err(|e| err(&e))?,
                into,
            )),
            Encoding::PostcardLz4 => parts::read_compressed(bytes, |de| {
                serde::de::DeserializeSeed::deserialize(
                    KeptPart {
                        keep: &mut |d| keep(None, d),
                        into,
                    },
                    de,
                )
            })
            .map_err(|e| err(&e)),
        }
    }
}

/// Reads a part without keys, handing each decision to `keep` as it is
/// read (no list of the part's decisions in between); the value is the
/// part's revision, writer and index.
struct KeptPart<'a, T, F> {
    keep: &'a mut F,
    into: &'a mut Vec<T>,
}

impl<'de, T, F: FnMut(Decision) -> Option<T>> serde::de::DeserializeSeed<'de>
    for KeptPart<'_, T, F>
{
    type Value = (u64, String, u32);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_struct("Part", &["rev", "writer", "index", "decisions"], self)
    }
}

impl<'de, T, F: FnMut(Decision) -> Option<T>> serde::de::Visitor<'de> for KeptPart<'_, T, F> {
    type Value = (u64, String, u32);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a snapshot part")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let missing = || serde::de::Error::custom("a part cut short");
        let rev = seq.next_element()?.ok_or_else(missing)?;
        let writer = seq.next_element()?.ok_or_else(missing)?;
        let index = seq.next_element()?.ok_or_else(missing)?;
        seq.next_element_seed(parts::Kept {
            keep: self.keep,
            into: self.into,
        })?
        .ok_or_else(missing)?;
        Ok((rev, writer, index))
    }
}

/// The encoding workers write ([`encode`]).
const WRITTEN: Encoding = Encoding::PostcardLz4;

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
/// is no snapshot yet. `keep` is given each decision with the snapshot's
/// revision (and its bucket key, in parts of the older encodings that
/// carry one), and says what to keep of it.
pub async fn read<T>(
    client: &async_nats::Client,
    options: &NatsOptions,
    newest: u64,
    mut keep: impl FnMut(Option<&str>, u64, Decision) -> Option<T>,
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
        // The head's count is only a hint: a forged one must not reserve
        // much memory (the list grows as parts are read).
        let mut entries = Vec::with_capacity(head.decisions.min(1 << 16) as usize);
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
            let (rev, writer, at) = head
                .encoding
                .decode(&m.payload, |key, d| keep(key, head.rev, d), &mut entries)
                .map_err(|e| SnapshotError::Invalid(format!("an unreadable part: {e}")))?;
            if rev != head.rev || writer != head.writer || at != index {
                changed = true;
                break;
            }
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

/// Where the parts of a snapshot of `decisions` end (see
/// [`parts::run_ends`]): even an incompressible part stays under the
/// server's limit.
fn part_ends(decisions: &[Decision]) -> Vec<usize> {
    // What a part holds besides its decisions: its revision, writer (16
    // hex digits) and index.
    const FRAME: usize = 64;
    parts::run_ends(decisions, FRAME)
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
    let decisions: Vec<Decision> = entries.into_iter().map(|(_, d)| d).collect();
    let ends = part_ends(&decisions);
    let count = ends.len() as u32;
    let mut acks = Vec::with_capacity(ends.len());
    let mut start = 0;
    for (index, end) in ends.into_iter().enumerate() {
        let part = Part {
            rev,
            writer,
            index: index as u32,
            decisions: &decisions[start..end],
        };
        start = end;
        let body = encode(&part);
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
        decisions: decisions.len() as u64,
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

    fn decisions(n: u32) -> Vec<Decision> {
        (0..n)
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
                d
            })
            .collect()
    }

    /// A part as the older workers wrote it, with each decision's key.
    #[derive(Serialize)]
    struct Keyed {
        rev: u64,
        writer: String,
        index: u32,
        entries: Vec<(String, Decision)>,
    }

    fn keyed(decisions: &[Decision]) -> Keyed {
        Keyed {
            rev: 7,
            writer: "w1".into(),
            index: 0,
            entries: decisions
                .iter()
                .map(|d| (keys::decision_key(d.action, &d.target, None), d.clone()))
                .collect(),
        }
    }

    fn written(decisions: &[Decision]) -> Vec<u8> {
        encode(&Part {
            rev: 7,
            writer: "w1",
            index: 0,
            decisions,
        })
    }

    /// Reads a part back; keys, where the part has them, must be the
    /// decisions' own.
    fn read_back(
        encoding: Encoding,
        bytes: &[u8],
    ) -> Result<(u64, String, u32, Vec<Decision>), String> {
        let mut out = Vec::new();
        let (rev, writer, index) = encoding.decode(
            bytes,
            |key, d| {
                key.is_none_or(|key| key == keys::decision_key(d.action, &d.target, None))
                    .then_some(d)
            },
            &mut out,
        )?;
        Ok((rev, writer, index, out))
    }

    #[test]
    fn parts_read_back_in_every_encoding() {
        let d = decisions(1000);
        let old = keyed(&d);
        let mut sizes = Vec::new();
        for (encoding, bytes) in [
            (Encoding::Json, serde_json::to_vec(&old).unwrap()),
            (Encoding::Postcard, postcard::to_stdvec(&old).unwrap()),
            (Encoding::PostcardLz4, written(&d)),
        ] {
            sizes.push(bytes.len());
            let (rev, writer, index, back) = read_back(encoding, &bytes).unwrap();
            assert_eq!((rev, writer.as_str(), index), (7, "w1", 0));
            assert_eq!(back, d);
        }
        eprintln!(
            "1000 decisions: JSON {} bytes, keyed postcard {} bytes, postcard-lz4 {} bytes",
            sizes[0], sizes[1], sizes[2]
        );
        assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
        assert!(sizes[2] * 2 < sizes[1], "{sizes:?}");
    }

    /// A part that is not what a worker wrote (cut short, flipped bytes, a
    /// count far beyond its bytes, a size far beyond the limit) is an
    /// error, never a panic or a large allocation: the agent then reads
    /// the bucket itself.
    #[test]
    fn broken_parts_are_refused() {
        let d = decisions(50);
        for (encoding, bytes) in [
            (Encoding::Postcard, postcard::to_stdvec(&keyed(&d)).unwrap()),
            (Encoding::PostcardLz4, written(&d)),
        ] {
            for cut in 0..bytes.len() {
                assert!(
                    read_back(encoding, &bytes[..cut]).is_err(),
                    "{encoding:?} {cut}"
                );
            }
            let mut seed = 7u64;
            for _ in 0..2000 {
                let mut b = bytes.clone();
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % b.len();
                b[at] ^= (seed >> 20) as u8 | 1;
                if let Ok((.., back)) = read_back(encoding, &b) {
                    assert!(back.len() <= 50);
                }
            }
        }
        // rev 1, writer "w", index 0, then ten bytes claiming 2^63 entries.
        let mut huge = vec![1, 1, b'w', 0];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert!(read_back(Encoding::Postcard, &huge).is_err());
        let mut compressed = lz4_flex::block::compress_prepend_size(&huge);
        assert!(read_back(Encoding::PostcardLz4, &compressed).is_err());
        // A size beyond what any worker writes is refused before anything
        // is allocated for it.
        compressed[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = read_back(Encoding::PostcardLz4, &compressed).unwrap_err();
        assert!(e.contains("claiming 4294967295 bytes"), "{e}");
    }

    #[test]
    fn heads_name_their_encoding() {
        let head: Head =
            serde_json::from_str(r#"{"rev":1,"writer":"w1","parts":1,"decisions":1,"written":0}"#)
                .unwrap();
        assert_eq!(head.encoding, Encoding::Json);
        for (name, encoding) in [
            ("postcard", Encoding::Postcard),
            ("postcard-lz4", Encoding::PostcardLz4),
        ] {
            let head: Head = serde_json::from_str(&format!(
                r#"{{"rev":1,"writer":"w1","parts":1,"decisions":1,"written":0,"encoding":"{name}"}}"#
            ))
            .unwrap();
            assert_eq!(head.encoding, encoding);
        }
    }
}

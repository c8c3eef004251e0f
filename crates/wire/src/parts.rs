//! Runs of decisions as compact blobs: postcard, compressed with LZ4 (the
//! plain size first, 4 bytes little-endian).
//!
//! Every joining agent reads the whole state, so a fleet's join costs the
//! state's bytes and decoding once per agent: 10,000 agents on 10,000
//! decisions are 30 GB of JSON lines, where these blobs are a fiftieth of
//! it and decode several times faster. The NATS snapshot parts and the
//! hub's snapshot lines ([`SnapshotPart`](crate::SnapshotPart)) both carry
//! them.
//!
//! A blob is input from the network like any other: its claimed size is
//! bounded before anything is allocated for it, a count of decisions
//! reserves no memory beyond a small bound, and each decision goes through
//! the same checks as one read from JSON.

use palisade_model::Decision;
use serde::Serialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};

/// Largest run a writer puts in one blob, before compression: even an
/// incompressible blob stays well under NATS's default message limit
/// (1 MiB) and the hub client's longest line.
pub const PLAIN_BYTES: usize = 512 * 1024;
/// Largest blob a reader decompresses: twice what a writer makes.
pub const MAX_PLAIN: usize = 2 * PLAIN_BYTES;
/// Most decisions a reader reserves room for at once, whatever a blob's
/// count claims.
const RESERVE_AT_MOST: usize = 1 << 14;

/// Why a blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// Shorter than its size field.
    #[error("a part shorter than its size")]
    Short,
    /// Claims more than any writer makes ([`MAX_PLAIN`]).
    #[error("a part claiming {0} bytes")]
    TooLarge(usize),
    /// The LZ4 block is broken.
    #[error("a part that does not decompress: {0}")]
    Lz4(String),
    /// Decompressed to another size than it claims.
    #[error("a part of {got} bytes claiming {claimed}")]
    SizeMismatch {
        /// What it decompressed to.
        got: usize,
        /// What its size field says.
        claimed: usize,
    },
    /// The decompressed bytes are not what a writer encodes.
    #[error("an unreadable part: {0}")]
    Unreadable(String),
}

/// `value` in postcard, compressed.
pub fn compress<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let plain = postcard::to_stdvec(value).expect("a part serializes");
    lz4_flex::block::compress_prepend_size(&plain)
}

thread_local! {
    /// A decompressed blob, kept for the next: a buffer of hundreds of
    /// kilobytes per join was a large share of a joining fleet's
    /// allocations.
    static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A decompressed blob, as postcard to read.
pub type Plain<'a> = postcard::Deserializer<'a, postcard::de_flavors::Slice<'a>>;

/// Decompresses `blob` and hands the plain bytes to `read` as a postcard
/// deserializer.
pub fn read_compressed<R>(
    blob: &[u8],
    read: impl for<'a> FnOnce(&mut Plain<'a>) -> postcard::Result<R>,
) -> Result<R, PartError> {
    let (size, compressed) = blob.split_first_chunk::<4>().ok_or(PartError::Short)?;
    let claimed = u32::from_le_bytes(*size) as usize;
    if claimed > MAX_PLAIN {
        return Err(PartError::TooLarge(claimed));
    }
    PLAIN.with_borrow_mut(|plain| {
        plain.clear();
        plain.resize(claimed, 0);
        let got = lz4_flex::block::decompress_into(compressed, plain)
            .map_err(|e| PartError::Lz4(e.to_string()))?;
        if got != claimed {
            return Err(PartError::SizeMismatch { got, claimed });
        }
        let mut de = postcard::Deserializer::from_bytes(plain);
        read(&mut de).map_err(|e| PartError::Unreadable(e.to_string()))
    })
}

/// A run of decisions as one blob.
pub fn encode_run(decisions: &[Decision]) -> Vec<u8> {
    compress(decisions)
}

/// Reads a blob of [`encode_run`], handing each decision to `keep` and
/// adding what it keeps to `into`.
pub fn decode_run<T>(
    blob: &[u8],
    mut keep: impl FnMut(Decision) -> Option<T>,
    into: &mut Vec<T>,
) -> Result<(), PartError> {
    read_compressed(blob, |de| {
        Kept {
            keep: &mut keep,
            into,
        }
        .deserialize(de)
    })
}

/// Where the runs of `decisions` end: each holds at most [`PLAIN_BYTES`]
/// of them in postcard, with `frame` bytes besides (what the writer adds
/// around them), and one decision at least.
pub fn run_ends(decisions: &[Decision], frame: usize) -> Vec<usize> {
    // The count of decisions before them.
    let frame = frame + 10;
    let mut ends = Vec::new();
    let mut size = frame;
    for (i, decision) in decisions.iter().enumerate() {
        let one = postcard::experimental::serialized_size(decision).expect("a decision serializes");
        if size + one > PLAIN_BYTES && i > ends.last().copied().unwrap_or(0) {
            ends.push(i);
            size = frame;
        }
        size += one;
    }
    ends.push(decisions.len());
    ends
}

/// A sequence of decisions read straight into a list: each is handed to
/// `keep` as it is read, with no list of the blob's own in between.
pub struct Kept<'a, T, F> {
    /// Says what to keep of each decision.
    pub keep: &'a mut F,
    /// Where kept values go.
    pub into: &'a mut Vec<T>,
}

impl<'de, T, F: FnMut(Decision) -> Option<T>> DeserializeSeed<'de> for Kept<'_, T, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T, F: FnMut(Decision) -> Option<T>> Visitor<'de> for Kept<'_, T, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a run of decisions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            // Bounded: a forged count must not reserve memory for it.
            self.into.reserve(n.min(RESERVE_AT_MOST));
        }
        while let Some(d) = seq.next_element::<Decision>()? {
            self.into.extend((self.keep)(d));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Net, Origin, Source, Span, Timestamp};

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

    fn read_back(blob: &[u8]) -> Result<Vec<Decision>, PartError> {
        let mut out = Vec::new();
        decode_run(blob, Some, &mut out)?;
        Ok(out)
    }

    #[test]
    fn runs_read_back() {
        let d = decisions(1000);
        let blob = encode_run(&d);
        assert_eq!(read_back(&blob).unwrap(), d);
        let json: usize = d.iter().map(|d| serde_json::to_vec(d).unwrap().len()).sum();
        assert!(blob.len() * 20 < json, "{} against {json}", blob.len());
        let mut odd = Vec::new();
        let mut n = 0;
        decode_run(
            &blob,
            |d| {
                n += 1;
                (n % 2 == 1).then_some(d.target)
            },
            &mut odd,
        )
        .unwrap();
        assert_eq!(odd.len(), 500);
        assert_eq!(odd[1], d[2].target);
    }

    /// A blob that is not what a writer made (cut short, flipped bytes, a
    /// count far beyond its bytes, a size far beyond the limit) is an
    /// error, never a panic or a large allocation.
    #[test]
    fn broken_runs_are_refused() {
        let blob = encode_run(&decisions(50));
        for cut in 0..blob.len() {
            assert!(read_back(&blob[..cut]).is_err(), "{cut}");
        }
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut b = blob.clone();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (seed >> 33) as usize % b.len();
            b[at] ^= (seed >> 20) as u8 | 1;
            if let Ok(back) = read_back(&b) {
                assert!(back.len() <= 50);
            }
        }
        // Ten bytes claiming 2^63 decisions, and nothing after them.
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        let mut compressed = lz4_flex::block::compress_prepend_size(&huge);
        assert!(matches!(
            read_back(&compressed),
            Err(PartError::Unreadable(_))
        ));
        // A size beyond what any writer makes is refused before anything
        // is allocated for it.
        compressed[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            read_back(&compressed),
            Err(PartError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(read_back(&[1, 0]), Err(PartError::Short));
    }

    /// However long the decisions are, every run stays under PLAIN_BYTES
    /// with its frame and holds at least one decision.
    #[test]
    fn runs_stay_under_the_limit() {
        let mut d = decisions(20_000);
        for (i, d) in d.iter_mut().enumerate().step_by(7) {
            d.evidence = vec!["x".repeat(i % 3000)];
        }
        let frame = 64;
        let ends = run_ends(&d, frame);
        assert!(ends.len() > 3, "{ends:?}");
        let mut start = 0;
        for (index, &end) in ends.iter().enumerate() {
            assert!(end > start);
            let plain = postcard::to_stdvec(&d[start..end]).unwrap();
            assert!(
                plain.len() + frame <= PLAIN_BYTES,
                "run {index}: {} bytes",
                plain.len()
            );
            start = end;
        }
        assert_eq!(start, d.len());
        assert_eq!(run_ends(&[], frame), vec![0]);
    }
}

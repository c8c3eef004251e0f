//! The evidence of the [`Tracker`](super::Tracker)'s bans: every pair's
//! matched lines in one ring of bytes ([`EvidenceLog`]), each cleaned and
//! capped first ([`capped`]).

use palisade_model::decision::{MAX_EVIDENCE_LINES, clean_text};

/// Longest evidence line kept before cutting (sources cut lines at 16 KiB).
pub(super) const MAX_LINE_LEN: usize = 16 * 1024;

/// Matched lines of all pairs, in one ring of bytes. Each record is the
/// position of the pair's previous record plus one (8 bytes), the line's
/// length (2 bytes) and the line; positions count every byte ever written,
/// so a record is still there when its position is within the ring's size
/// of the end.
pub(super) struct EvidenceLog {
    buf: Vec<u8>,
    written: u64,
    /// Where the next byte goes in `buf`: `written` modulo the ring's size,
    /// kept as bytes are written (a division for each write costs more
    /// than the copy of a short line).
    at: usize,
}

const RECORD_HEAD: usize = 10;

impl EvidenceLog {
    pub(super) fn new(bytes: usize) -> EvidenceLog {
        let buf = Vec::with_capacity(bytes.max(RECORD_HEAD + MAX_LINE_LEN + 3));
        super::pages::advise_huge(&buf);
        EvidenceLog {
            buf,
            written: 0,
            at: 0,
        }
    }

    fn cap(&self) -> usize {
        self.buf.capacity()
    }

    #[inline]
    fn write(&mut self, data: &[u8]) {
        let cap = self.cap();
        let at = self.at;
        if self.buf.len() < cap {
            // Filling for the first time (pages are touched as needed).
            let room = cap - self.buf.len();
            let first = data.len().min(room);
            self.buf.extend_from_slice(&data[..first]);
            if first < data.len() {
                self.buf[..data.len() - first].copy_from_slice(&data[first..]);
            }
        } else {
            let first = data.len().min(cap - at);
            self.buf[at..at + first].copy_from_slice(&data[..first]);
            self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        }
        self.written += data.len() as u64;
        // No write is longer than the ring.
        self.at += data.len();
        if self.at >= cap {
            self.at -= cap;
        }
    }

    /// The `len` bytes written at `pos`, in the two pieces the ring's end
    /// may cut them into.
    fn pieces(&self, pos: u64, len: usize) -> (&[u8], &[u8]) {
        let cap = self.cap();
        // Whole records are within the ring's size of the end.
        let back = (self.written - pos) as usize;
        debug_assert!(back <= cap);
        let at = if back <= self.at {
            self.at - back
        } else {
            self.at + cap - back
        };
        let first = len.min(cap - at);
        (&self.buf[at..at + first], &self.buf[..len - first])
    }

    /// Appends `line`, followed by "…" if it was `cut`, after the record
    /// at `prev` (a position plus one, or 0); returns the new record's
    /// position plus one.
    #[inline]
    pub(super) fn push(&mut self, prev: u64, line: &[u8], cut: bool) -> u64 {
        const MORE: &[u8] = "…".as_bytes();
        let pos = self.written;
        let len = line.len() + if cut { MORE.len() } else { 0 };
        let mut head = [0u8; RECORD_HEAD];
        head[..8].copy_from_slice(&prev.to_le_bytes());
        head[8..].copy_from_slice(&(len as u16).to_le_bytes());
        self.write(&head);
        self.write(line);
        if cut {
            self.write(MORE);
        }
        pos + 1
    }

    /// Whether the record at `pos` is still whole.
    fn holds(&self, pos: u64) -> bool {
        pos >= self.written.saturating_sub(self.cap() as u64)
    }

    /// Up to `max` lines of the chain ending at `last`, oldest first.
    pub(super) fn lines(&self, mut last: u64, max: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(max.min(MAX_EVIDENCE_LINES));
        while last != 0 && out.len() < max && self.holds(last - 1) {
            let pos = last - 1;
            let mut head = [0u8; RECORD_HEAD];
            let (a, b) = self.pieces(pos, RECORD_HEAD);
            head[..a.len()].copy_from_slice(a);
            head[a.len()..].copy_from_slice(b);
            let prev = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            let len = usize::from(u16::from_le_bytes([head[8], head[9]]));
            let (a, b) = self.pieces(pos + RECORD_HEAD as u64, len);
            let mut text = Vec::with_capacity(len);
            text.extend_from_slice(a);
            text.extend_from_slice(b);
            // Written from whole `str`s.
            out.push(String::from_utf8(text).unwrap_or_default());
            last = prev;
        }
        out.reverse();
        out
    }
}

/// `s` cleaned (no control characters, so no newline either) and capped at
/// `max` bytes, and whether it was cut (then `…` follows). Cleaning, when
/// needed, happens in `scratch`.
#[inline]
pub(super) fn capped<'a>(s: &'a str, max: usize, scratch: &'a mut String) -> (&'a str, bool) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    let cut = end < s.len();
    if printable(head.as_bytes()) {
        (head, cut)
    } else {
        *scratch = clean_text(head);
        (scratch.as_str(), cut)
    }
}

/// Only printable ASCII and tabs (16 bytes at a time, written so that it
/// compiles to vector instructions).
#[inline]
fn printable(b: &[u8]) -> bool {
    fn bad(c: u8) -> u8 {
        // c < 0x20 or c >= 0x7f, except tab
        u8::from(c.wrapping_sub(0x20) >= 0x5f) & u8::from(c != b'\t')
    }
    fn all_good(chunk: &[u8]) -> bool {
        chunk.iter().fold(0, |acc, &c| acc | bad(c)) == 0
    }
    if b.len() < 16 {
        return b.iter().all(|&c| bad(c) == 0);
    }
    // Whole chunks, then the last 16 bytes (overlapping the last chunk).
    b.chunks_exact(16).all(all_good) && all_good(&b[b.len() - 16..])
}

#[cfg(test)]
pub(super) fn cap(s: &str, max: usize) -> String {
    let mut scratch = String::new();
    let (head, cut) = capped(s, max, &mut scratch);
    let mut out = head.to_string();
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pairs' chains through a ring that wraps many times: each read
    /// gives the chain's newest lines whole, those cut by the ring's end
    /// too, and none that was written over.
    #[test]
    fn chains_are_read_whole_across_the_end_of_the_ring() {
        let mut log = EvidenceLog::new(0);
        let cap = log.cap();
        let (mut a, mut b) = (0, 0);
        let mut a_lines = Vec::new();
        for n in 0..2_000 {
            let line = format!("{n} {}", "x".repeat(n % 97));
            a = log.push(a, line.as_bytes(), false);
            a_lines.push(line);
            b = log.push(b, "b".repeat(n % 300).as_bytes(), n % 7 == 0);
            let want = &a_lines[a_lines.len().saturating_sub(4)..];
            assert_eq!(log.lines(a, 4), want, "after {n}");
            let newest_b = log.lines(b, 1);
            let mut b_line = "b".repeat(n % 300);
            if n % 7 == 0 {
                b_line.push('…');
            }
            assert_eq!(newest_b, [b_line], "after {n}");
        }
        assert!(log.written > 10 * cap as u64, "the ring wrapped");
        // The oldest records are gone: a chain reads only what is left.
        let all = log.lines(a, usize::MAX);
        assert!(all.len() < a_lines.len());
        assert_eq!(all, a_lines[a_lines.len() - all.len()..]);
    }

    #[test]
    fn printable_is_printable_ascii_and_tabs() {
        for len in 0..40 {
            for c in 0..=255u8 {
                let mut b = vec![b'a'; len];
                if len > 0 {
                    b[len / 2] = c;
                }
                let want = b.iter().all(|&c| (0x20..0x7f).contains(&c) || c == b'\t');
                assert_eq!(printable(&b), want, "{len} {c}");
            }
        }
    }
}

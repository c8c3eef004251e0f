//! Splitting a byte stream (a followed file, a pipe) into lines.
//!
//! A line longer than [`MAX_LINE`] is cut: its first `MAX_LINE` bytes are
//! passed on when its newline arrives, and everything up to and including
//! that newline is discarded. So no line ever starts in the middle of
//! another: an attacker who gets a long line written cannot make its tail
//! look like a fresh line that starts with text they chose.

use super::{MAX_LINE, line_from_bytes};

#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    /// The start of the incomplete last line (at most `MAX_LINE` bytes).
    head: Vec<u8>,
    /// Bytes of the incomplete last line dropped beyond `head`.
    dropped: u64,
}

/// What one [`LineSplitter::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Bytes of the stream that ended lines in this push (including bytes of
    /// those lines held from earlier pushes).
    pub completed: u64,
    /// `emit` refused a line (its receiver is gone); the rest was not read.
    pub closed: bool,
}

impl LineSplitter {
    /// Appends `bytes` to the stream and hands every line they complete to
    /// `emit` (text without its terminator, lossy UTF-8, cut to `MAX_LINE`).
    /// Empty lines are passed on too; callers skip what they do not want.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(String) -> bool) -> Pushed {
        let mut completed = 0;
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            let line = if self.pending() == 0 {
                // The common case: the whole line is in this chunk.
                line_from_bytes(&bytes[..=nl])
            } else {
                completed += self.pending();
                self.keep(&bytes[..=nl]);
                let line = line_from_bytes(&self.head);
                self.clear();
                line
            };
            completed += (nl + 1) as u64;
            bytes = &bytes[nl + 1..];
            if !emit(line) {
                return Pushed {
                    completed,
                    closed: true,
                };
            }
        }
        self.keep(bytes);
        Pushed {
            completed,
            closed: false,
        }
    }

    /// Bytes of the stream held as the start of an incomplete line (kept or
    /// dropped).
    pub fn pending(&self) -> u64 {
        self.head.len() as u64 + self.dropped
    }

    /// The incomplete last line as text, if any, forgetting it (a rotated
    /// or truncated file's last words).
    pub fn take_rest(&mut self) -> Option<String> {
        let rest = (self.pending() > 0).then(|| line_from_bytes(&self.head));
        self.clear();
        rest
    }

    pub fn clear(&mut self) {
        self.head.clear();
        self.dropped = 0;
    }

    /// Holds `bytes` as part of the incomplete line, up to `MAX_LINE` bytes
    /// of it; counts the rest as dropped.
    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..room]);
        self.dropped += (bytes.len() - room) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<String>, u64, u64) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let mut completed = 0;
        for c in chunks {
            completed += s
                .push(c, &mut |l| {
                    out.push(l);
                    true
                })
                .completed;
        }
        (out, completed, s.pending())
    }

    #[test]
    fn lines_across_chunks() {
        let (lines, completed, pending) = split(&[b"ab\ncd", b"e\r\n\nf"]);
        assert_eq!(lines, ["ab", "cde", ""]);
        assert_eq!((completed, pending), (9, 1));
    }

    #[test]
    fn the_tail_of_an_overlong_line_never_becomes_a_line() {
        let attack = format!(
            "Failed password for x from 198.18.0.7 {}\n198.18.0.66 sshd: Failed password\nnext\n",
            "A".repeat(MAX_LINE)
        );
        for chunk in [1, 7, 4096, 65536, attack.len()] {
            let chunks: Vec<&[u8]> = attack.as_bytes().chunks(chunk).collect();
            let (lines, completed, pending) = split(&chunks);
            assert_eq!(lines.len(), 3, "chunk {chunk}");
            assert_eq!(lines[0].len(), MAX_LINE);
            assert!(lines[0].starts_with("Failed password for x from 198.18.0.7 "));
            assert_eq!(lines[1], "198.18.0.66 sshd: Failed password");
            assert_eq!(lines[2], "next");
            assert_eq!((completed, pending), (attack.len() as u64, 0));
        }
        // A tail past the cap, after the newline is gone: discarded whole.
        let long = format!("{}198.18.0.66 sshd: Failed\n", "B".repeat(3 * MAX_LINE));
        let (lines, _, _) = split(&[long.as_bytes()]);
        assert_eq!(lines, ["B".repeat(MAX_LINE)]);
    }

    #[test]
    fn an_endless_line_is_held_within_the_cap() {
        let mut s = LineSplitter::default();
        for _ in 0..100 {
            let p = s.push(&[b'x'; 65536], &mut |_| panic!("no line yet"));
            assert_eq!(p.completed, 0);
        }
        assert!(s.head.len() <= MAX_LINE);
        assert_eq!(s.pending(), 100 * 65536);
        assert_eq!(s.take_rest().unwrap().len(), MAX_LINE);
        assert_eq!(s.pending(), 0);
    }
}

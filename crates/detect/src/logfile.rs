//! Reading a whole log (a file, standard input) line by line, for
//! `palisade detect`: in 1 MiB blocks, each line handed on as a `&str`
//! inside the block (no `String` per line), the block's whole lines checked
//! as UTF-8 at once. A line that is not UTF-8 is passed on with its bad
//! bytes replaced (U+FFFD). Lines are cut to [`MAX_LINE`] bytes as the
//! daemon's sources cut them, so `palisade detect` sees what the daemon
//! would, and a line without end cannot make the reader hold the whole
//! input.

use std::io::{ErrorKind, Read};

use crate::sources::MAX_LINE;

const BLOCK: usize = 1 << 20;

/// Calls `f` with each line of `input` (without `\n` or `\r\n`), in order,
/// until the input ends or `f` fails.
pub fn for_each_line<E: From<std::io::Error>>(
    input: impl Read,
    mut f: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    for_each_batch(input, 1, |lines| lines.iter().try_for_each(|l| f(l)))
}

/// Calls `f` with the lines of `input` (as [`for_each_line`] gives them),
/// at most `max` at a time, in order, until the input ends or `f` fails:
/// for a reader that does better with several lines at once
/// ([`Tracker::observe_lines`](crate::Tracker::observe_lines)).
pub fn for_each_batch<E: From<std::io::Error>>(
    mut input: impl Read,
    max: usize,
    mut f: impl FnMut(&[&str]) -> Result<(), E>,
) -> Result<(), E> {
    let max = max.max(1);
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0;
    // Discarding the rest of a line cut at MAX_LINE, until its newline.
    let mut cutting = false;
    let mut lossy = String::new();
    loop {
        let n = match input.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        len += n;
        let end = if n == 0 {
            len
        } else {
            match memchr::memrchr(b'\n', &buf[..len]) {
                Some(i) => i + 1,
                None if len == buf.len() => {
                    // One line fills the block: pass on its start, drop
                    // the rest up to its newline.
                    if !cutting {
                        emit(&buf[..MAX_LINE], &mut lossy, &mut f)?;
                    }
                    cutting = true;
                    len = 0;
                    continue;
                }
                None => continue,
            }
        };
        let block = &buf[..end];
        let text = std::str::from_utf8(block).ok();
        let mut batch: Vec<&str> = Vec::with_capacity(max);
        let mut start = 0;
        while start < end {
            let stop = memchr::memchr(b'\n', &block[start..]).map_or(end, |i| start + i + 1);
            if cutting {
                cutting = false;
            } else {
                match text {
                    Some(t) => {
                        batch.push(cap(trim(&t[start..stop])));
                        if batch.len() == max {
                            f(&batch)?;
                            batch.clear();
                        }
                    }
                    None => emit(&block[start..stop], &mut lossy, &mut f)?,
                }
            }
            start = stop;
        }
        if !batch.is_empty() {
            f(&batch)?;
        }
        drop(batch);
        if n == 0 {
            return Ok(());
        }
        buf.copy_within(end..len, 0);
        len -= end;
    }
}

/// A line's bytes, which may not be UTF-8, to `f`.
fn emit<E>(
    line: &[u8],
    lossy: &mut String,
    f: &mut impl FnMut(&[&str]) -> Result<(), E>,
) -> Result<(), E> {
    let line = &line[..line.len().min(MAX_LINE)];
    match std::str::from_utf8(line) {
        Ok(t) => f(&[trim(t)]),
        Err(_) => {
            lossy.clear();
            lossy.push_str(&String::from_utf8_lossy(line));
            f(&[cap(trim(lossy))])
        }
    }
}

fn trim(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// `line` cut to [`MAX_LINE`] bytes at a character boundary.
pub(crate) fn cap(line: &str) -> &str {
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for_each_line::<std::io::Error>(input, |l| {
            out.push(l.to_string());
            Ok(())
        })
        .unwrap();
        out
    }

    /// Reads `input` a few bytes at a time (block edges everywhere).
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn splits_trims_and_replaces() {
        assert_eq!(lines(b"a\nb\r\n\nlast"), ["a", "b", "", "last"]);
        assert_eq!(lines(b"x\xff\ny\n"), ["x\u{fffd}", "y"]);
        assert!(lines(b"").is_empty());
        let text = b"one\ntwo\r\nthr\xc3\xa9e\nfour";
        for step in 1..6 {
            let mut out = Vec::new();
            for_each_line::<std::io::Error>(Trickle(text, step), |l| {
                out.push(l.to_string());
                Ok(())
            })
            .unwrap();
            assert_eq!(out, ["one", "two", "thr\u{e9}e", "four"], "{step}");
        }
    }

    /// Batches hold the lines one by one gives, in order, at most `max`.
    #[test]
    fn batches_are_the_lines_in_order() {
        let mut input = Vec::new();
        for n in 0..1000 {
            input.extend(format!("line {n}\n").as_bytes());
            if n % 97 == 0 {
                input.extend(b"bad \xff byte\n");
            }
        }
        input.extend(std::iter::repeat_n(b'a', BLOCK + 5));
        input.extend(b"\nend");
        // A few bytes at a time (each read looks for the block's last
        // newline again) only through the start.
        for (max, step, len) in [
            (3, 7, 3000),
            (1, 4096, input.len()),
            (64, 1 << 16, input.len()),
        ] {
            let input = &input[..len];
            let want = lines(input);
            let mut got = Vec::new();
            for_each_batch::<std::io::Error>(Trickle(input, step), max, |batch| {
                assert!((1..=max).contains(&batch.len()));
                got.extend(batch.iter().map(|l| l.to_string()));
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "{max} {step}");
        }
    }

    /// A hostile line longer than a block is cut, and the text after its
    /// cut never appears as a line of its own.
    #[test]
    fn long_lines_are_cut_not_split() {
        let mut input = b"before\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 3 * BLOCK));
        input.extend(b"Failed password for root from 192.0.2.1\nafter\n");
        input.extend(std::iter::repeat_n(b'b', MAX_LINE + 10));
        input.extend("\u{e9}\n".as_bytes());
        let out = lines(&input);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], "before");
        assert_eq!(out[1].len(), MAX_LINE);
        assert!(out[1].bytes().all(|b| b == b'a'));
        assert_eq!(out[2], "after");
        assert_eq!(out[3].len(), MAX_LINE);
    }
}

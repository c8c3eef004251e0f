//! Following a file like `tail -F`.
//!
//! Polling, not inotify: every 100 ms while idle, the follower reads what was
//! appended, then compares the path's inode with the open file's (rename
//! rotation) and the file's size and first bytes with what it has read
//! (truncation, also `copytruncate` followed by quick writes). Polling
//! handles the cases inotify makes hard (a watch on a path that is renamed
//! away, a file that does not exist yet, network and overlay file systems)
//! with no dependency, at the cost of one `stat` and one small `pread` per
//! file every 100 ms; while lines arrive it reads without sleeping.
//!
//! After a rename, the old file stays open for 5 s and is drained, so lines
//! a writer appends before it reopens the path are not lost. (A file that
//! is created and renamed away again between two polls, within 100 ms, is
//! never seen; real rotations are hours apart.)
//!
//! The position (device, inode, offset of the last whole line sent, first
//! bytes) is saved in the state directory after every batch. At start, a
//! saved position continues where it stopped; if the file was rotated
//! meanwhile, the rotated file is found by inode in the same directory and
//! finished first, so nothing is read twice or skipped.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::lines::LineSplitter;
use super::{Line, SourceHandle, state, stopped};
use crate::config::StartAt;

const POLL: Duration = Duration::from_millis(100);
const KEEP_ROTATED: Duration = Duration::from_secs(5);
const HEAD: usize = 32;

/// Starts following the file at `path` like `tail -F` on a thread of its
/// own, sending each line to `tx`; the read position is kept under
/// `state_dir`, so a restart resumes where it stopped.
pub fn spawn(
    name: &str,
    path: &Path,
    start: StartAt,
    state_dir: &Path,
    tx: Sender<Line>,
) -> anyhow::Result<SourceHandle> {
    fs::create_dir_all(state_dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut f = Follower {
        name: name.into(),
        path: path.to_path_buf(),
        state_file: state::path(state_dir, name, "pos"),
        start,
        tx,
        cur: None,
        prev: None,
        started: false,
        saved: String::new(),
    };
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || f.run(&flag))?;
    Ok(SourceHandle::new(name.into(), stop, thread))
}

struct Open {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset just after the last whole line sent.
    offset: u64,
    /// Bytes read after `offset` (an incomplete last line).
    lines: LineSplitter,
    head: Vec<u8>,
}

impl Open {
    fn at(path: &Path, offset: u64) -> std::io::Result<Open> {
        let file = File::open(path)?;
        let md = file.metadata()?;
        let mut o = Open {
            file,
            dev: md.dev(),
            ino: md.ino(),
            offset: 0,
            lines: LineSplitter::default(),
            head: Vec::new(),
        };
        o.seek(offset)?;
        Ok(o)
    }

    fn seek(&mut self, offset: u64) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(offset))?;
        self.offset = offset;
        self.lines.clear();
        Ok(())
    }

    fn pos(&self) -> u64 {
        self.offset + self.lines.pending()
    }

    fn read_head(&self) -> Vec<u8> {
        let mut h = vec![0; HEAD];
        match self.file.read_at(&mut h, 0) {
            Ok(n) => {
                h.truncate(n);
                h
            }
            Err(_) => Vec::new(),
        }
    }
}

struct Follower {
    name: String,
    path: PathBuf,
    state_file: PathBuf,
    start: StartAt,
    tx: Sender<Line>,
    cur: Option<Open>,
    prev: Option<(Open, Instant)>,
    /// True once the path was opened (or found missing) at least once.
    started: bool,
    saved: String,
}

enum Flow {
    Continue,
    Closed,
}

impl Follower {
    fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        while !stopped(stop) {
            let mut progressed = false;
            if self.cur.is_none() {
                self.open_path()?;
            }
            if let Some((mut prev, since)) = self.prev.take() {
                let (n, flow) = self.drain(&mut prev)?;
                if let Flow::Closed = flow {
                    return Ok(());
                }
                if n > 0 {
                    progressed = true;
                    self.prev = Some((prev, Instant::now()));
                } else if since.elapsed() < KEEP_ROTATED {
                    self.prev = Some((prev, since));
                } else {
                    self.flush_partial(&mut prev);
                }
            }
            if let Some(mut cur) = self.cur.take() {
                // Truncation first: after a copytruncate the writer may
                // already have written past our old offset.
                self.check_truncation(&mut cur)?;
                let (n, flow) = self.drain(&mut cur)?;
                if let Flow::Closed = flow {
                    return Ok(());
                }
                progressed |= n > 0;
                self.cur = Some(cur);
                self.check_rotation()?;
                self.save();
            }
            if !progressed {
                std::thread::sleep(POLL);
            }
        }
        self.save();
        Ok(())
    }

    fn open_path(&mut self) -> anyhow::Result<()> {
        let md = match fs::metadata(&self.path) {
            Ok(md) => md,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.started = true;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let first = !self.started;
        self.started = true;
        let saved = state::read(&self.state_file).and_then(|s| parse_state(&s));
        let offset = match saved {
            Some((dev, ino, off, head)) if dev == md.dev() && ino == md.ino() => {
                let o = Open::at(&self.path, 0)?;
                if off <= md.len() && (head.is_empty() || o.read_head().starts_with(&head)) {
                    off
                } else {
                    0
                }
            }
            Some((dev, ino, off, _)) => {
                // Rotated while we were away: finish the old file first.
                if let Some(old) = find_by_inode(&self.path, dev, ino) {
                    tracing::info!(source = %self.name, "finishing rotated {}", old.display());
                    if let Ok(o) = Open::at(&old, off) {
                        self.prev = Some((o, Instant::now()));
                    }
                }
                0
            }
            None if first && self.start == StartAt::End => md.len(),
            None => 0,
        };
        match Open::at(&self.path, offset) {
            Ok(mut o) => {
                if offset >= HEAD as u64 {
                    o.head = o.read_head();
                }
                self.cur = Some(o);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `o` to its end, sending whole lines. Returns bytes read.
    fn drain(&mut self, o: &mut Open) -> anyhow::Result<(usize, Flow)> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = match o.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            total += n;
            let pushed = o.lines.push(&chunk[..n], &mut |line| self.send(line));
            o.offset += pushed.completed;
            if pushed.closed {
                return Ok((total, Flow::Closed));
            }
            if o.head.is_empty() && o.offset >= HEAD as u64 {
                o.head = o.read_head();
            }
        }
        Ok((total, Flow::Continue))
    }

    fn send(&self, text: String) -> bool {
        self.tx
            .send(Line {
                source: self.name.as_str().into(),
                text,
                received: Timestamp::now(),
            })
            .is_ok()
    }

    fn flush_partial(&self, o: &mut Open) {
        o.offset += o.lines.pending();
        if let Some(line) = o.lines.take_rest() {
            self.send(line);
        }
    }

    fn check_truncation(&mut self, o: &mut Open) -> anyhow::Result<()> {
        let len = o.file.metadata()?.len();
        let rewritten = !o.head.is_empty() && !o.read_head().starts_with(&o.head);
        if len < o.pos() || rewritten {
            tracing::info!(source = %self.name, "{} was truncated", self.path.display());
            self.flush_partial(o);
            o.seek(0)?;
            o.head.clear();
        }
        Ok(())
    }

    fn check_rotation(&mut self) -> anyhow::Result<()> {
        let Some(cur) = &self.cur else { return Ok(()) };
        let md = match fs::metadata(&self.path) {
            Ok(md) => md,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if md.dev() == cur.dev && md.ino() == cur.ino {
            return Ok(());
        }
        tracing::info!(source = %self.name, "{} was rotated", self.path.display());
        let new = match Open::at(&self.path, 0) {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Some((mut older, _)) = self.prev.take() {
            self.drain(&mut older)?;
            self.flush_partial(&mut older);
        }
        let old = self.cur.replace(new).expect("checked above");
        self.prev = Some((old, Instant::now()));
        Ok(())
    }

    fn save(&mut self) {
        let Some(cur) = &self.cur else { return };
        let hex: String = cur.head.iter().map(|b| format!("{b:02x}")).collect();
        let s = format!("{} {} {} {}\n", cur.dev, cur.ino, cur.offset, hex);
        if s != self.saved {
            match state::write(&self.state_file, &s) {
                Ok(()) => self.saved = s,
                Err(e) => tracing::warn!(source = %self.name, "cannot save position: {e}"),
            }
        }
    }
}

fn parse_state(s: &str) -> Option<(u64, u64, u64, Vec<u8>)> {
    let mut f = s.split_whitespace();
    let dev = f.next()?.parse().ok()?;
    let ino = f.next()?.parse().ok()?;
    let off = f.next()?.parse().ok()?;
    let hex = f.next().unwrap_or("");
    let head = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    Some((dev, ino, off, head))
}

/// A file in `path`'s directory with this device and inode (the rotated
/// `auth.log.1`, whatever its name).
fn find_by_inode(path: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        if let Ok(md) = entry.metadata()
            && md.dev() == dev
            && md.ino() == ino
            && md.is_file()
        {
            return Some(entry.path());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_roundtrip() {
        assert_eq!(parse_state("1 2 3 6162\n"), Some((1, 2, 3, b"ab".to_vec())));
        assert_eq!(parse_state("1 2 3\n"), Some((1, 2, 3, vec![])));
        assert_eq!(parse_state("x"), None);
    }
}

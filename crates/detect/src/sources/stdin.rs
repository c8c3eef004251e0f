//! Standard input, line by line, until EOF.
//!
//! A blocking read of stdin cannot be interrupted, so stopping this source
//! does not wait for its thread: it ends at the next line or at EOF.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_channel::Sender;
use palisade_model::Timestamp;

use super::{Line, SourceHandle, line_from_bytes, stopped};

/// Reads standard input line by line and sends each line to `tx`, on a
/// thread of its own.
pub fn spawn(name: &str, tx: Sender<Line>) -> anyhow::Result<SourceHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let src: Arc<str> = name.into();
    let thread = std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || -> anyhow::Result<()> {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            while !stopped(&flag) {
                buf.clear();
                if lock.read_until(b'\n', &mut buf)? == 0 {
                    return Ok(());
                }
                let line = Line {
                    source: src.clone(),
                    text: line_from_bytes(&buf),
                    received: Timestamp::now(),
                };
                if tx.send(line).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })?;
    Ok(SourceHandle::new(name.into(), stop, thread).detached())
}

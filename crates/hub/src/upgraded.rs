//! A node's decision stream on the connection it took over from HTTP/1.1
//! (`Upgrade: palisade-stream`): the lines go straight to the TLS socket.
//!
//! Served as an HTTP response body, every open stream kept hyper's read and
//! header buffers (8 KiB each) for as long as it was open, and each line
//! went through the body, chunked encoding and hyper's connection task on
//! its way to the socket. A fleet keeps one stream per node open all the
//! time, so that was most of the hub's memory and of its work for each
//! decision.

use std::time::Duration;

use axum::body::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A write that takes longer ends the stream: the node stopped reading.
/// (The HTTP connection's idle timeout no longer watches a connection
/// taken over; the stream itself writes a ping every 10 s.)
const WRITE_AT_MOST: Duration = Duration::from_secs(60);

/// Writes what the stream's feed queues on `rx` to `io` until the feed
/// ends, the node closes the connection or sends anything (it has nothing
/// to say on a stream), or a write stalls; dropping `rx` then ends the
/// feed.
pub(crate) async fn write(io: Upgraded, mut rx: mpsc::Receiver<Bytes>) {
    let mut io = TokioIo::new(io);
    let mut unexpected = [0u8; 1];
    loop {
        let first = tokio::select! {
            bytes = rx.recv() => match bytes {
                Some(b) => b,
                None => break,
            },
            _ = io.read(&mut unexpected) => return,
        };
        let written = tokio::time::timeout(WRITE_AT_MOST, async {
            io.write_all(&first).await?;
            while let Ok(next) = rx.try_recv() {
                io.write_all(&next).await?;
            }
            io.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
    let _ = tokio::time::timeout(WRITE_AT_MOST, io.shutdown()).await;
}

//! The control socket server.
//!
//! Root only, twice over: the socket file is mode 0600 (only root can
//! connect), and every peer's credentials are checked with `SO_PEERCRED`
//! (so a socket made reachable by mistake still refuses other users).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade_control::{
    AgentStatus, ControlError, ErrorCode, ListRequest, MAX_REQUEST_BYTES, Request, Response,
};
use palisade_model::{Span, Timestamp};
use palisade_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::worker::{Command, WorkerHandle};

/// Facts about the agent shown by `palisade status`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This node's name.
    pub node: String,
    /// How it runs: `local-only`, or `joined to` the network.
    pub mode: String,
    /// Where its decisions are stored.
    pub state_dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// When it started.
    pub started: Timestamp,
    /// The ban length when a request names none.
    pub default_ban: Span,
}

/// Everything a connection handler needs.
#[derive(Clone)]
pub struct Shared {
    /// The agent's store, read from snapshots.
    pub store: Arc<Store>,
    /// Where changes go (the one writer).
    pub worker: WorkerHandle,
    /// What `palisade status` shows about the agent.
    pub identity: Arc<Identity>,
    /// Connections cut so far.
    pub killed: Arc<AtomicU64>,
    /// What the agent is joined to, and how that goes.
    pub network: Option<(String, Arc<crate::network::NetState>)>,
    /// Asks the feeds' tasks to pull now (`palisade feed pull`).
    pub feeds: Arc<palisade_feed::PullNow>,
}

/// Creates the agent's root-only control socket.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::from_std(palisade_control::socket::bind_root_only(path, "agent")?)
}

/// Accepts connections until the listener fails or the task is dropped.
pub async fn serve(listener: UnixListener, shared: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, shared).await {
                        debug!(error = %e, "control connection ended with an error");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, shared: Shared) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    if !palisade_control::socket::peer_allowed(cred.uid()) {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control connection from a non-root user");
        // Read (and ignore) the request first: closing a UNIX socket with
        // unread data resets the peer, which would lose this answer.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            (&mut reader)
                .take(MAX_REQUEST_BYTES as u64)
                .read_line(&mut line),
        )
        .await;
        let e = ControlError::new(
            ErrorCode::Forbidden,
            palisade_control::socket::refusal(cred.uid()),
        );
        send(&mut write, &Response::Error(e)).await?;
        return Ok(());
    }
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_REQUEST_BYTES {
            let e = ControlError::new(
                ErrorCode::BadRequest,
                format!("request larger than {MAX_REQUEST_BYTES} bytes; split it"),
            );
            return send(&mut write, &Response::Error(e)).await;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let e = ControlError::new(ErrorCode::BadRequest, format!("bad request: {e}"));
                send(&mut write, &Response::Error(e)).await?;
                continue;
            }
        };
        respond(request, &shared, &mut write).await?;
    }
}

async fn respond(
    request: Request,
    shared: &Shared,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> io::Result<()> {
    let response = match request {
        Request::Ban(r) => mutate(shared, |reply| Command::Ban(r, reply)).await,
        Request::Unban(r) => mutate(shared, |reply| Command::Unban(r, reply)).await,
        Request::Allow(r) => mutate(shared, |reply| Command::Allow(r, reply)).await,
        Request::Unallow(r) => mutate(shared, |reply| Command::Unallow(r, reply)).await,
        Request::List(r) => return list(shared, r, write).await,
        Request::Explain { address } => {
            let store = shared.store.clone();
            blocking(move || {
                let reader = store.read().map_err(internal)?;
                reader
                    .explain(address, Timestamp::now())
                    .map(Response::Explanation)
                    .map_err(internal)
            })
            .await
        }
        Request::Status { kernel } => status(shared, kernel).await,
        Request::FeedPull { name } => feed_pull(shared, &name).await,
    };
    send(write, &response).await
}

/// Pulls a configured feed now, in the agent, and applies it.
async fn feed_pull(shared: &Shared, name: &str) -> Response {
    use palisade_feed::PullNowError;
    match shared.feeds.pull(name).await {
        Ok(pulled) => Response::FeedPulled(pulled),
        Err(e) => {
            let code = match e {
                PullNowError::NoneConfigured | PullNowError::Unknown { .. } => {
                    ErrorCode::BadRequest
                }
                PullNowError::Busy { .. }
                | PullNowError::Stopped { .. }
                | PullNowError::Failed(_) => ErrorCode::Internal,
            };
            Response::Error(ControlError::new(code, e.to_string()))
        }
    }
}

async fn mutate(shared: &Shared, make: impl FnOnce(crate::worker::Reply) -> Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if let Err(e) = shared.worker.send(make(tx)) {
        return Response::Error(ControlError::new(ErrorCode::Internal, e.to_string()));
    }
    match rx.await {
        Ok(Ok((summary, outcomes))) => Response::Outcomes { summary, outcomes },
        Ok(Err(e)) => Response::Error(ControlError::new(ErrorCode::Internal, e.to_string())),
        Err(_) => Response::Error(ControlError::new(
            ErrorCode::Internal,
            "the agent stopped before answering",
        )),
    }
}

/// Why a listing stopped before its end.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Streams every decision, one line each, from a store snapshot.
async fn list(
    shared: &Shared,
    req: ListRequest,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let store = shared.store.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let now = Timestamp::now();
        let mut count = 0u64;
        let mut chunk = Vec::with_capacity(64 << 10);
        let result: Result<(), ListError> = (|| {
            let reader = store.read()?;
            for d in reader.iter(req.action)? {
                let d = d?;
                if !d.is_active(now) {
                    continue;
                }
                serde_json::to_writer(&mut chunk, &Response::Item { decision: d })?;
                chunk.push(b'\n');
                count += 1;
                if chunk.len() >= 60 << 10 {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 << 10));
                    if tx.blocking_send(full).is_err() {
                        return Ok(()); // client went away
                    }
                }
            }
            Ok(())
        })();
        let last = match result {
            Ok(()) => Response::End { count },
            Err(e) => Response::Error(ControlError::new(ErrorCode::Internal, e.to_string())),
        };
        serde_json::to_writer(&mut chunk, &last).expect("serialize a response");
        chunk.push(b'\n');
        let _ = tx.blocking_send(chunk);
    });
    while let Some(bytes) = rx.recv().await {
        write.write_all(&bytes).await?;
    }
    producer.await.map_err(io::Error::other)?;
    Ok(())
}

/// The metrics text: the status (without reading the kernel back) and the
/// counters.
pub async fn metrics(shared: &Shared, counters: &crate::metrics::Counters) -> String {
    match status(shared, false).await {
        Response::Status(s) => crate::metrics::render(&s, counters),
        other => format!("# the agent could not read its status: {other:?}\n"),
    }
}

async fn status(shared: &Shared, kernel: bool) -> Response {
    let (tx, rx) = oneshot::channel();
    let enforcers = match shared.worker.send(Command::EnforcerStatus(kernel, tx)) {
        Ok(()) => rx.await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let store = shared.store.clone();
    let id = shared.identity.clone();
    let killed = shared.killed.load(Ordering::Relaxed);
    let net = shared.network.clone();
    blocking(move || {
        let reader = store.read().map_err(internal)?;
        let counts = reader.counts().map_err(internal)?;
        let next_expiry = reader.next_expiry().map_err(internal)?;
        let network = match net {
            Some((bus, state)) => Some(palisade_control::NetworkStatus {
                bus,
                connected: state.connected.load(Ordering::Relaxed),
                cursor: reader.meta(crate::cursor::CURSOR).map_err(internal)?,
                latest: state.latest.load(Ordering::Relaxed),
                pending: reader
                    .queue_bounds(crate::outbox::OUTBOX)
                    .map_err(internal)?
                    .map_or(0, |(a, b)| b - a + 1),
                last_error: state.last_error.lock().unwrap().clone(),
                held_back: state.held_back.lock().unwrap().clone(),
            }),
            None => None,
        };
        Ok(Response::Status(Box::new(AgentStatus {
            node: id.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started: id.started,
            now: Timestamp::now(),
            mode: id.mode.clone(),
            state_dir: id.state_dir.display().to_string(),
            socket: id.socket.display().to_string(),
            bans: counts.ban_hosts,
            ban_networks: counts.ban_networks,
            allows: counts.allows,
            next_expiry,
            default_ban: id.default_ban,
            enforcers,
            connections_killed: killed,
            network,
        })))
    })
    .await
}

async fn blocking(f: impl FnOnce() -> Result<Response, ControlError> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::Error(e),
        Err(e) => Response::Error(internal(e)),
    }
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::new(ErrorCode::Internal, e.to_string())
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

//! The hub's HTTPS API (see `palisade_wire::paths`). Every route needs a
//! token; errors are JSON `{"error": "..."}` that say what to do.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use palisade_model::{Action, Net, Timestamp};
use palisade_wire::{
    Envelope, Heartbeat, JoinRequest, JoinResponse, STREAM_UPGRADE, SnapshotPart, StreamItem,
    TokenKind, paths,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::server::Peer;
use crate::snapshot::put_line;
use crate::state::{AuthError, Caller, Hub};
use crate::tables;
use crate::writer::Job;

/// How often an idle stream gets a ping (and its token is re-checked).
const PING_EVERY: Duration = Duration::from_secs(10);
/// Stream records read from the store per batch when catching up.
const CATCH_UP_BATCH: usize = 10_000;

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route(paths::JOIN, post(join))
        .route(paths::INTENTS, post(intents))
        .route(paths::STREAM, get(stream))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::DECISIONS, get(decisions))
        .route(&format!("{}/{{address}}", paths::EXPLAIN), get(explain))
        .route(paths::EXPORT, get(export))
        .route(paths::METRICS, get(metrics))
        .with_state(hub.clone())
        .merge(crate::dashboard::router(hub.clone()))
        .layer(axum::middleware::from_fn_with_state(
            crowdsec_router(&hub),
            crowdsec_first,
        ))
}

/// CrowdSec's bouncer API on the hub's port, for bouncers that are not on
/// a palisade server; keys are the hub's (`palisade bouncer add NAME
/// --state-dir HUB_STATE_DIR`).
fn crowdsec_router(hub: &Hub) -> Router {
    palisade_crowdsec::router(palisade_crowdsec::Api::new(
        hub.store.clone(),
        palisade_crowdsec::Keys::new(&hub.state_dir),
    ))
}

/// Hands CrowdSec's requests to its API: `/v1/decisions` is the hub's own
/// listing too, so there only requests carrying CrowdSec's `X-Api-Key`.
async fn crowdsec_first(
    State(crowdsec): State<Router>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tower::ServiceExt as _;
    if !palisade_crowdsec::server::claims(req.uri().path(), req.headers()) {
        return next.run(req).await;
    }
    if let Some(Peer(addr)) = req.extensions().get::<Peer>().copied() {
        req.extensions_mut()
            .insert(palisade_crowdsec::server::Peer(addr));
    }
    match crowdsec.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

// Handlers answer with a `Response` either way; boxing the error would only
// add an allocation.
#[allow(clippy::result_large_err)]
fn auth(hub: &Hub, headers: &HeaderMap, kinds: &[TokenKind]) -> Result<Caller, Response> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    hub.authenticate(value, kinds).map_err(|e| {
        hub.metrics.refused_auth.inc();
        let status = match e {
            AuthError::WrongKind { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        error(status, e.to_string())
    })
}

#[allow(clippy::result_large_err)]
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

async fn join(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = match auth(&hub, &headers, &[TokenKind::Join]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let req: JoinRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let store = hub.store.clone();
    let join_id = caller.id.clone();
    let made =
        tokio::task::spawn_blocking(move || crate::tokens::enrol(&store, &join_id, &req.name))
            .await;
    match made {
        Ok(Ok((token, record))) => {
            let _ = hub.reload_tokens();
            info!(node = %record.name, group = ?record.group, role = %record.role, via = %caller.record.name, "a node joined");
            axum::Json(JoinResponse {
                name: record.name,
                group: record.group,
                token: token.to_string(),
            })
            .into_response()
        }
        Ok(Err(e @ crate::tokens::TokenError::Taken(_))) => error(
            StatusCode::CONFLICT,
            format!("{e}; or start the agent with another --node-name"),
        ),
        Ok(Err(e @ crate::tokens::TokenError::Spent)) => {
            let _ = hub.reload_tokens();
            error(StatusCode::UNAUTHORIZED, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn intents(
    State(hub): State<Arc<Hub>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match auth(&hub, &headers, &[TokenKind::Node]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    hub.seen(&caller, peer.0.ip());
    let envelopes: Vec<Envelope> = match parse(&body) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let sent = envelopes.len();
    debug!(node = %caller.record.name, intents = sent, "intents received");
    let (tx, rx) = oneshot::channel();
    let job = Job::Intents {
        node: caller.node(),
        envelopes,
        reply: tx,
    };
    if let Err(e) = hub.writer.send(job) {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    match rx.await {
        Ok(Ok(results)) => {
            // Fewer results than intents: the node is over its rate limit;
            // it keeps the rest and sends them again later.
            let status = if results.len() < sent {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            (status, axum::Json(results)).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub stopped before answering",
        ),
    }
}

async fn heartbeat(
    State(hub): State<Arc<Hub>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match auth(&hub, &headers, &[TokenKind::Node]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    hub.seen(&caller, peer.0.ip());
    match parse::<Heartbeat>(&body) {
        Ok(beat) => {
            hub.heartbeat(&caller, &beat);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    #[serde(default)]
    cursor: u64,
    /// How the receiver reads a snapshot's decisions: in part lines when it
    /// names [`SnapshotPart::ENCODING`]; anything else (an encoding of a
    /// later version) gets `Put` lines, which every version reads.
    #[serde(default)]
    parts: Option<String>,
}

/// Who a stream is for.
struct StreamFor {
    /// The node's group: its allows are sent, other groups' are not.
    group: Option<String>,
    /// It reads a snapshot's decisions as [`SnapshotPart`] lines.
    parts: bool,
}

/// The decision stream: what came after `cursor`, or a snapshot when the
/// cursor is 0, too old (its events were trimmed) or from another hub's
/// history; then live events, with pings when idle. One JSON object per
/// line.
async fn stream(
    State(hub): State<Arc<Hub>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<StreamQuery>,
    mut req: axum::extract::Request,
) -> Response {
    let caller = match auth(&hub, req.headers(), &[TokenKind::Node]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    hub.seen(&caller, peer.0.ip());
    // Subscribe before reading the store, so nothing falls between the two.
    let live = hub.live.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let name = caller.record.name.clone();
    hub.stream_opened(&name);
    let h = hub.clone();
    tokio::spawn(async move {
        let to = StreamFor {
            group: caller.record.group.clone(),
            parts: q.parts.as_deref() == Some(SnapshotPart::ENCODING),
        };
        if let Err(e) = feed(&h, &caller, &to, q.cursor, live, &tx).await {
            debug!(node = %caller.record.name, reason = %e, "stream ended");
        }
        h.stream_closed(&caller.record.name);
    });
    if asks_upgrade(req.headers()) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(io) => crate::upgraded::write(io, rx).await,
                Err(e) => debug!(error = %e, "a stream's upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, STREAM_UPGRADE)
            .body(Body::empty())
            .expect("a valid response");
    }
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

/// Whether a request asks to take its connection over for the stream
/// ([`STREAM_UPGRADE`]; HTTP/1.1 only: HTTP/2 has no such upgrade).
fn asks_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, STREAM_UPGRADE)
}

/// Why a node's stream ended early.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    /// Its token was revoked.
    #[error("the node's token was revoked")]
    Revoked,
    /// It closed the connection.
    #[error("the node went away")]
    NodeGone,
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    /// The task reading the store did not finish.
    #[error("reading the store for a stream stopped: {0}")]
    Reader(#[from] tokio::task::JoinError),
    /// No snapshot could be read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// Writes the stream for one node until it goes away or loses its token.
async fn feed(
    hub: &Arc<Hub>,
    caller: &Caller,
    to: &StreamFor,
    cursor: u64,
    mut live: broadcast::Receiver<crate::ledger::LiveEvent>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), StreamEnd> {
    let mut last = start(hub, to, cursor, tx).await?;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(e) => {
                    if e.seq <= last {
                        continue;
                    }
                    if e.seq > last + 1 {
                        last = catch_up(hub, to, last, tx).await?;
                        if e.seq <= last {
                            continue;
                        }
                    }
                    if !hub.still_valid(&caller.id) {
                        return Err(StreamEnd::Revoked);
                    }
                    if e.group.as_deref().is_none_or(|g| Some(g) == to.group.as_deref()) {
                        send(hub, tx, e.line.clone()).await?;
                        debug!(node = %caller.record.name, seq = e.seq, "event streamed");
                    }
                    last = e.seq;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live channel: read from the store.
                    last = catch_up(hub, to, last, tx).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = ping.tick() => {
                if !hub.still_valid(&caller.id) {
                    return Err(StreamEnd::Revoked);
                }
                let item = StreamItem::Ping { seq: last, time: Timestamp::now() };
                send(hub, tx, line(&item)).await?;
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Sends the missed events after `cursor`, or a snapshot; returns the last
/// stream number sent.
async fn start(
    hub: &Arc<Hub>,
    to: &StreamFor,
    cursor: u64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<u64, StreamEnd> {
    let store = hub.store.clone();
    let (oldest, next) = tokio::task::spawn_blocking(move || -> Result<(u64, u64), StreamEnd> {
        let r = store.read()?;
        let next = r.queue_next(tables::EVENTS)?;
        let oldest = r.queue_bounds(tables::EVENTS)?.map_or(next, |(o, _)| o);
        Ok((oldest, next))
    })
    .await??;
    // The head first, so the node applies what it missed up to there in
    // one batch (a ban and its unban both missed never reach its kernel
    // one at a time).
    let head = next.saturating_sub(1);
    if head > cursor {
        let item = StreamItem::Ping {
            seq: head,
            time: Timestamp::now(),
        };
        send(hub, tx, line(&item)).await?;
    }
    // Resumable: the cursor is from this history and nothing it needs was
    // trimmed.
    if cursor > 0 && cursor < next && cursor + 1 >= oldest {
        return catch_up(hub, to, cursor, tx).await;
    }
    if cursor > 0 && cursor + 1 == next {
        return Ok(cursor);
    }
    // The shared snapshot may be a little older than the queue's head:
    // what came after it follows as a catch-up.
    let seq = snapshot(hub, to, tx).await?;
    catch_up(hub, to, seq, tx).await
}

/// Sends every stored event after `last` (for this node's group); returns
/// the last number read.
async fn catch_up(
    hub: &Arc<Hub>,
    to: &StreamFor,
    mut last: u64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<u64, StreamEnd> {
    'batches: loop {
        let store = hub.store.clone();
        let batch = tokio::task::spawn_blocking(move || {
            store
                .read()
                .and_then(|r| r.queue(tables::EVENTS, last, CATCH_UP_BATCH))
        })
        .await??;
        let done = batch.len() < CATCH_UP_BATCH;
        for (seq, record) in batch {
            if seq != last + 1 {
                // Trimmed under our feet: only a snapshot can help.
                warn!(
                    missing_after = last,
                    found = seq,
                    "stream events were trimmed during catch-up; sending a snapshot"
                );
                last = snapshot(hub, to, tx).await?;
                continue 'batches;
            }
            let (event_group, json) = crate::records::split_record(&record);
            if event_group.is_none_or(|g| Some(g) == to.group.as_deref()) {
                send(hub, tx, Bytes::copy_from_slice(json)).await?;
            }
            last = seq;
        }
        if done {
            return Ok(last);
        }
    }
}

/// Sends every active decision for this node: its group's allows, then the
/// shared snapshot of global allows and bans (see `snapshot.rs`); returns
/// the stream number the snapshot reflects, which may be a little behind
/// the queue's head (the caller catches up from it).
async fn snapshot(
    hub: &Arc<Hub>,
    to: &StreamFor,
    tx: &mpsc::Sender<Bytes>,
) -> Result<u64, StreamEnd> {
    hub.metrics.snapshots.inc();
    let shared = hub.snapshots.get(&hub.store).await?;
    let seq = shared.seq;
    let mut head = Vec::new();
    put_line(&mut head, &StreamItem::Snapshot { seq });
    let mut count = shared.count;
    if let Some(g) = to.group.clone() {
        let store = hub.store.clone();
        let allows = tokio::task::spawn_blocking(
            move || -> Result<Vec<palisade_model::Decision>, StreamEnd> {
                let now = Timestamp::now();
                let r = store.read()?;
                Ok(r.map_entries(tables::GROUP_ALLOWS)?
                    .into_iter()
                    .filter(|(key, _)| key.split('\u{0}').next() == Some(g.as_str()))
                    .filter_map(|(_, bytes)| {
                        serde_json::from_slice::<palisade_model::Decision>(&bytes).ok()
                    })
                    .filter(|d| d.is_active(now))
                    .collect())
            },
        )
        .await??;
        for decision in allows {
            put_line(&mut head, &StreamItem::Put { seq, decision });
            count += 1;
        }
    }
    let chunks = if to.parts {
        &shared.parts
    } else {
        &shared.chunks
    };
    let mut pieces = Vec::with_capacity(chunks.len() + 2);
    pieces.push(Bytes::from(head));
    pieces.extend(chunks.iter().cloned());
    pieces.push(line(&StreamItem::SnapshotEnd { seq }));
    // A turn lasts until the connection has taken the whole snapshot from
    // the channel (handed it to the kernel), or at most TURN_AT_MOST: then
    // the rest is sent without one.
    let turn = hub.snapshots.turn().await;
    let mut sent = 0;
    let within_turn = tokio::time::timeout(crate::snapshot::TURN_AT_MOST, async {
        for piece in &pieces {
            send_chunk(tx, piece.clone()).await?;
            sent += 1;
        }
        while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<(), StreamEnd>(())
    })
    .await;
    drop(turn);
    match within_turn {
        Ok(r) => r?,
        Err(_) => {
            for piece in &pieces[sent..] {
                send_chunk(tx, piece.clone()).await?;
            }
        }
    }
    hub.metrics.stream_items.add(count + 2);
    Ok(seq)
}

/// Queues bytes for the node's connection (counted by the caller).
async fn send_chunk(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), StreamEnd> {
    tx.send(bytes).await.map_err(|_| StreamEnd::NodeGone)
}

fn line(item: &StreamItem) -> Bytes {
    let mut v = Vec::new();
    put_line(&mut v, item);
    Bytes::from(v)
}

async fn send(hub: &Hub, tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), StreamEnd> {
    hub.metrics.stream_items.inc();
    tx.send(bytes).await.map_err(|_| StreamEnd::NodeGone)
}

#[derive(Debug, Deserialize)]
struct DecisionsQuery {
    #[serde(default)]
    action: Option<Action>,
}

async fn decisions(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<DecisionsQuery>,
) -> Response {
    if let Err(r) = auth(&hub, &headers, &[TokenKind::Node, TokenKind::Read]) {
        return r;
    }
    let store = hub.store.clone();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ListError> {
        let now = Timestamp::now();
        let r = store.read()?;
        let mut out = b"[".to_vec();
        let mut first = true;
        for d in r.iter(q.action)? {
            let d = d?;
            if !d.is_active(now) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"\n  ");
            serde_json::to_writer(&mut out, &d)?;
        }
        out.extend_from_slice(b"\n]\n");
        Ok(out)
    })
    .await;
    match body {
        Ok(Ok(b)) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Why a listing of decisions stopped before its end.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Active bans, one address or network per line (what maltrail's
/// `/fail2ban` served to cron scripts).
async fn export(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&hub, &headers, &[TokenKind::Node, TokenKind::Read]) {
        return r;
    }
    let store = hub.store.clone();
    let body =
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>, palisade_store::StoreError> {
            use std::io::Write;
            let now = Timestamp::now();
            let r = store.read()?;
            let mut out = Vec::new();
            for d in r.iter(Some(Action::Ban))? {
                let d = d?;
                if d.is_active(now) {
                    let _ = writeln!(out, "{}", d.target);
                }
            }
            Ok(out)
        })
        .await;
    match body {
        Ok(Ok(b)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], b).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn explain(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(address): Path<String>,
) -> Response {
    if let Err(r) = auth(&hub, &headers, &[TokenKind::Node, TokenKind::Read]) {
        return r;
    }
    let net: Net = match address.parse() {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let store = hub.store.clone();
    match tokio::task::spawn_blocking(move || {
        store.read().and_then(|r| r.explain(net, Timestamp::now()))
    })
    .await
    {
        Ok(Ok(e)) => axum::Json(e).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&hub, &headers, &[TokenKind::Node, TokenKind::Read]) {
        return r;
    }
    let h = hub.clone();
    let text =
        tokio::task::spawn_blocking(move || -> Result<String, palisade_store::StoreError> {
            let r = h.store.read()?;
            let counts = r.counts()?;
            let seq = r.queue_next(tables::EVENTS)? - 1;
            let lag = h
                .node_status()
                .into_iter()
                .filter_map(|(n, _)| Some((n.name.clone(), crate::metrics::stream_lag(&n, seq)?)))
                .collect();
            let g = crate::metrics::Gauges {
                bans: counts.ban_hosts,
                ban_networks: counts.ban_networks,
                allows: counts.allows,
                seq,
                nodes: h.node_count(),
                lag,
            };
            Ok(crate::metrics::render(&h.metrics, &g))
        })
        .await;
    match text {
        Ok(Ok(t)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], t).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

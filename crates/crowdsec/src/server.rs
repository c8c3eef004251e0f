//! The HTTP endpoint: CrowdSec's bouncer API over plain HTTP (loopback by
//! default), answered from store snapshots. A bouncer can read decisions
//! and report its own usage; it can change nothing else.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use palisade_model::Timestamp;
use palisade_store::{Store, StoreError};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::duration::go_duration;
use crate::journal::{self, Entry, Journal};
use crate::keys::{self, Keys, Seen};
use crate::query::{self, Filter};
use crate::usage::{self, Usage};

/// Largest usage-metrics body accepted.
pub const MAX_BODY: usize = 64 << 10;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The shortest time between two reads of the store: many bouncers polling
/// at once, or a storm of writes, cost one read per period. The store is
/// read again only when it changed or a ban's end came (a read is a scan
/// of every ban: tens of milliseconds at 100,000), so bouncers polling a
/// quiet store cost no scan at all.
const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// How often the key file is checked for changes.
const KEYS_EVERY: Duration = Duration::from_secs(1);
/// How often what the bouncers reported is written to disk.
const SEEN_EVERY: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How far a ban without end reaches for a bouncer, which needs a duration.
const FOREVER_MS: i64 = 365 * 24 * 3_600_000;

/// The state every request shares.
pub struct Api {
    store: Arc<Store>,
    keys: Keys,
    journal: Mutex<(Journal, Option<Refreshed>)>,
    known: Mutex<KnownKeys>,
    /// Each bouncer's stream number: the last answer it received in full.
    positions: Mutex<HashMap<String, u64>>,
    seen: Mutex<(BTreeMap<String, Seen>, Option<Instant>)>,
    usage: Arc<Usage>,
}

/// When the journal was last renumbered, and from what.
struct Refreshed {
    at: Instant,
    /// The store's commits then ([`Store::commits`]).
    commits: u64,
}

#[derive(Default)]
struct KnownKeys {
    by_hash: HashMap<String, String>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Api {
    /// An endpoint answering from `store` for the bouncers of `keys`.
    pub fn new(store: Arc<Store>, keys: Keys) -> Arc<Api> {
        Api::with_usage(store, keys, Arc::default())
    }

    /// An endpoint that counts the bouncers' usage reports into `usage`
    /// (which the agent's metrics render).
    pub fn with_usage(store: Arc<Store>, keys: Keys, usage: Arc<Usage>) -> Arc<Api> {
        let seen = keys.seen().unwrap_or_default();
        Arc::new(Api {
            store,
            keys,
            journal: Mutex::new((Journal::default(), None)),
            known: Mutex::new(KnownKeys::default()),
            positions: Mutex::new(HashMap::new()),
            seen: Mutex::new((seen, None)),
            usage,
        })
    }

    /// The bouncer a request's `X-Api-Key` belongs to.
    fn bouncer(&self, headers: &HeaderMap) -> Option<String> {
        let mut values = headers.get_all("x-api-key").iter();
        let key = values.next()?.to_str().ok()?;
        if values.next().is_some() || key.is_empty() || key.len() > keys::MAX_KEY_LEN {
            return None;
        }
        let mut known = self.known.lock().expect("keys lock");
        if known.checked.is_none_or(|t| t.elapsed() >= KEYS_EVERY) {
            known.checked = Some(Instant::now());
            let modified = std::fs::metadata(self.keys.keys_path())
                .and_then(|m| m.modified())
                .ok();
            if modified != known.modified || modified.is_none() {
                match self.keys.list() {
                    Ok(list) => {
                        known.by_hash = list.into_iter().map(|b| (b.hash, b.name)).collect();
                        known.modified = modified;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot read the bouncer keys; keeping the last ones read")
                    }
                }
            }
        }
        known.by_hash.get(&keys::hash(key)).cloned()
    }

    fn note(&self, name: &str, headers: &HeaderMap, peer: SocketAddr, pulled: bool, usage: bool) {
        let mut seen = self.seen.lock().expect("seen lock");
        let entry = seen.0.entry(name.to_string()).or_default();
        if pulled {
            entry.last_pull = Some(Timestamp::now());
        }
        if usage {
            entry.usage_reports += 1;
        }
        entry.version = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(palisade_model::decision::clean_name);
        entry.address = Some(peer.ip().to_string());
        if seen.1.is_none_or(|t| t.elapsed() >= SEEN_EVERY) {
            seen.1 = Some(Instant::now());
            // Only bouncers that still have a key are written.
            let names: Vec<String> = self
                .known
                .lock()
                .expect("keys lock")
                .by_hash
                .values()
                .cloned()
                .collect();
            seen.0.retain(|n, _| names.contains(n));
            self.usage.retain(|n| names.iter().any(|k| k == n));
            if let Err(e) = self.keys.write_seen(&seen.0) {
                warn!(error = %e, "cannot record what the bouncers reported");
            }
        }
    }

    /// Renumbers from a fresh snapshot if the store changed or a ban ended
    /// since the last one (at most every [`REFRESH_EVERY`]), then runs `f`
    /// on the journal.
    fn with_journal<T>(&self, f: impl FnOnce(&Journal) -> T) -> Result<T, StoreError> {
        let mut guard = self.journal.lock().expect("journal lock");
        let (journal, refreshed) = &mut *guard;
        let now = Timestamp::now();
        let stale = match refreshed {
            None => true,
            Some(r) => {
                r.at.elapsed() >= REFRESH_EVERY
                    && (self.store.commits() != r.commits
                        || journal.next_end().is_some_and(|end| end <= now))
            }
        };
        if stale {
            // Counted before the snapshot: a commit after it moves the
            // count again, and the next request reads again.
            let commits = self.store.commits();
            let reader = self.store.read()?;
            let bans = journal::visible(&reader, now)?;
            journal.refresh(&bans, now);
            *refreshed = Some(Refreshed {
                at: Instant::now(),
                commits,
            });
        }
        Ok(f(journal))
    }
}

/// The decision as CrowdSec writes it (fields in its order).
#[derive(Serialize)]
struct WireDecision<'a> {
    duration: String,
    id: u64,
    origin: &'a str,
    scenario: &'a str,
    scope: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: String,
}

/// `deleted` ones carry a negative duration, as CrowdSec's do (the time
/// since they ended, at least a millisecond).
fn wire(e: &Entry, now: Timestamp, deleted: bool) -> WireDecision<'_> {
    let remaining = match e.until {
        Some(u) => u.as_millis() as i64 - now.as_millis() as i64,
        None => FOREVER_MS,
    };
    let remaining = if deleted {
        remaining.min(-1)
    } else {
        remaining
    };
    WireDecision {
        duration: go_duration(remaining),
        id: e.id,
        origin: &e.origin,
        scenario: &e.scenario,
        scope: if e.target.is_host() { "Ip" } else { "Range" },
        kind: "ban",
        value: e.target.to_string(),
    }
}

#[derive(Serialize)]
struct StreamAnswer<'a> {
    deleted: Option<Vec<WireDecision<'a>>>,
    new: Option<Vec<WireDecision<'a>>>,
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(body))
        .expect("static headers")
}

fn forbidden() -> Response {
    json(
        StatusCode::FORBIDDEN,
        br#"{"message":"access forbidden"}"#.to_vec(),
    )
}

fn message(status: StatusCode, text: &str) -> Response {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "message": text })).expect("json"),
    )
}

/// Runs `f` on the journal off the async threads (a refresh reads the
/// store). The bouncer learns only that something failed; the log has what.
async fn read<T: Send + 'static>(
    api: &Arc<Api>,
    f: impl FnOnce(&Journal) -> T + Send + 'static,
) -> Result<T, Response> {
    let api = api.clone();
    let answer = tokio::task::spawn_blocking(move || api.with_journal(f)).await;
    let failed = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "cannot read the decisions for a bouncer");
        message(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    match answer {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(failed(&e)),
    }
}

/// The bouncer and its parsed query, or the answer refusing them: 403
/// for a missing or unknown key (checked first), 400 for a bad query.
// The refusal is the handler's answer as it stands; boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn admit<Q>(
    api: &Api,
    headers: &HeaderMap,
    query: Result<Q, query::QueryError>,
) -> Result<(String, Q), Response> {
    let name = api.bouncer(headers).ok_or_else(forbidden)?;
    let q = query.map_err(|e| message(StatusCode::BAD_REQUEST, &e.to_string()))?;
    Ok((name, q))
}

/// The address a request came from; whoever serves the router inserts it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Whether a request is for CrowdSec's API, on a port that serves other
/// things too: its paths, and `/v1/decisions` only with CrowdSec's key
/// header.
pub fn claims(path: &str, headers: &HeaderMap) -> bool {
    match path {
        "/v1/decisions/stream" | "/v1/usage-metrics" | "/health" => true,
        "/v1/decisions" => headers.contains_key("x-api-key"),
        _ => false,
    }
}

async fn stream(
    State(api): State<Arc<Api>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (name, q) = match admit(&api, &headers, query::stream(uri.query())) {
        Ok(x) => x,
        Err(response) => return response,
    };
    let position = if q.startup {
        None
    } else {
        api.positions.lock().expect("positions").get(&name).copied()
    };
    let answer = read(&api, move |j| {
        let changes = j.since(position);
        let now = Timestamp::now();
        fn pick<'a>(
            list: &'a [Entry],
            filter: &Filter,
            now: Timestamp,
            deleted: bool,
        ) -> Option<Vec<WireDecision<'a>>> {
            let v: Vec<_> = list
                .iter()
                .filter(|e| admitted(filter, e))
                .map(|e| wire(e, now, deleted))
                .collect();
            (!v.is_empty()).then_some(v)
        }
        let body = serde_json::to_vec(&StreamAnswer {
            deleted: pick(&changes.deleted, &q.filter, now, true),
            new: pick(&changes.new, &q.filter, now, false),
        })
        .expect("json");
        (body, changes.through)
    })
    .await;
    let (body, through) = match answer {
        Ok(a) => a,
        Err(response) => return response,
    };
    api.note(&name, &headers, peer, true, false);
    // The position moves only once the whole answer went out.
    let done: Box<dyn FnOnce() + Send> = Box::new(move || {
        api.positions
            .lock()
            .expect("positions")
            .insert(name, through);
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::new(Completion {
            data: Some(Bytes::from(body)),
            done: Some(done),
        }))
        .expect("static headers")
}

fn admitted(filter: &Filter, e: &Entry) -> bool {
    filter.admits(&e.target, &e.origin, &e.scenario)
}

async fn decisions(
    State(api): State<Arc<Api>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (name, q) = match admit(&api, &headers, query::lookup(uri.query())) {
        Ok(x) => x,
        Err(response) => return response,
    };
    let answer = read(&api, move |j| {
        let now = Timestamp::now();
        let mut found: Vec<&Entry> = if q.only_other_types {
            Vec::new()
        } else {
            j.live()
                .filter(|e| match &q.target {
                    None => true,
                    Some(t) if q.contains => e.target.contains(t),
                    Some(t) => t.contains(&e.target),
                })
                .filter(|e| admitted(&q.filter, e))
                .collect()
        };
        found.sort_by_key(|e| e.id);
        let list: Vec<_> = found.into_iter().map(|e| wire(e, now, false)).collect();
        if list.is_empty() {
            b"null".to_vec()
        } else {
            serde_json::to_vec(&list).expect("json")
        }
    })
    .await;
    api.note(&name, &headers, peer, false, false);
    match answer {
        Ok(body) => json(StatusCode::OK, body),
        Err(response) => response,
    }
}

async fn usage_metrics(
    State(api): State<Arc<Api>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(name) = api.bouncer(&headers) else {
        return forbidden();
    };
    let values = match usage::parse(&body) {
        Ok(v) => v,
        Err(e) => return message(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    api.usage.record(&name, values);
    api.note(&name, &headers, peer, false, true);
    json(StatusCode::CREATED, b"{}".to_vec())
}

async fn health() -> Response {
    json(StatusCode::OK, br#"{"status":"up"}"#.to_vec())
}

async fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "not found")
}

/// The routes (`GET` routes answer `HEAD` too).
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/decisions/stream", get(stream))
        .route("/v1/decisions", get(decisions))
        .route("/v1/usage-metrics", post(usage_metrics))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Serves the bouncer API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, api: Arc<Api>) {
    let router = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting a bouncer's connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many bouncer connections; closing this one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().layer(Extension(Peer(peer))));
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 << 10);
            if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                debug!(%peer, error = %e, "bouncer connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// A one-chunk body that runs `done` when the connection asks for its end,
/// that is, after the whole answer was written to it.
struct Completion {
    data: Option<Bytes>,
    done: Option<Box<dyn FnOnce() + Send>>,
}

impl http_body::Body for Completion {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if let Some(done) = self.done.take() {
            done();
        }
        Poll::Ready(None)
    }

    // No exact size: the answer goes chunked, so the connection asks for
    // the end only after writing the data, and a broken one never does.
    fn is_end_stream(&self) -> bool {
        false
    }
}

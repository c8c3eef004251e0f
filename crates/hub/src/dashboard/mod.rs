//! The hub's web dashboard, served on the API's HTTPS port under
//! `/dashboard/`: see, search, explain and undo decisions; the nodes and
//! their health; live activity.
//!
//! Everything it serves is compiled in (`assets/`: plain HTML, CSS and
//! JavaScript, no third-party code, nothing fetched from elsewhere). Pages
//! are one shell the script fills from the JSON routes under
//! `/dashboard/api/`.
//!
//! Security:
//! - administrators log in with a name and password (`palisade hub admin
//!   create NAME`; argon2id hashes in the store, [`admins`]); a refusal
//!   never says which part was wrong, takes at least [`REFUSAL_DELAY`],
//!   attempts are rate limited per client (address, or IPv6 /64) and per
//!   name (not for a client that logged in as that name before), and at
//!   most a few passwords are hashed at once ([`Hashing`]: 429 past that);
//! - sessions ([`sessions`]) are random 256-bit ids in a `__Host-` cookie
//!   (`Secure; HttpOnly; SameSite=Strict`), kept server-side as hashes, with
//!   idle and absolute expiry;
//! - every POST needs the session's CSRF token in `X-CSRF-Token` and an
//!   `Origin` (or, lacking one, a `Referer`) of this very host;
//! - pages carry a strict Content-Security-Policy (scripts and styles from
//!   this origin only), and the script builds the page with `textContent`,
//!   never HTML from data: evidence lines are attacker-controlled text.
//!
//! Actions go to the hub's writer like any node's intent (node `dashboard`,
//! source `cli`, the administrator as actor), so every agent applies them.

pub mod admins;
pub mod query;
pub mod sessions;
pub(crate) mod state;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use palisade_model::{Net, Span, Timestamp};
use palisade_wire::{Intent, IntentOutcome, TokenKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

use crate::records::NodeRecord;
use crate::server::Peer;
use crate::state::Hub;
use crate::tables;
use crate::writer::{Job, OperatorAction};

pub use sessions::{LoginLimit, Sessions};
pub use state::{HashTurn, Hashing};

/// A refused login answers no sooner than this after it arrived.
pub const REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// How often the live event stream sends a keep-alive (and re-checks the
/// session).
const LIVE_PING: Duration = Duration::from_secs(15);

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const LOGIN_JS: &str = include_str!("assets/login.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The dashboard's routes (under `/dashboard/`).
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(to_dashboard))
        .route("/dashboard", get(to_dashboard))
        .route("/dashboard/", get(shell))
        .route("/dashboard/explain", get(shell))
        .route("/dashboard/nodes", get(shell))
        .route("/dashboard/live", get(shell))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/static/{file}", get(asset))
        .route("/dashboard/api/decisions", get(api_decisions))
        .route("/dashboard/api/explain", get(api_explain))
        .route("/dashboard/api/act", post(api_act))
        .route("/dashboard/api/nodes", get(api_nodes))
        .route("/dashboard/api/nodes/revoke", post(api_revoke))
        .route("/dashboard/api/activity", get(api_activity))
        .route("/dashboard/api/events", get(api_events))
        .with_state(hub)
}

/// Version of the compiled-in assets, so browsers may cache them.
fn asset_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let all = [APP_JS, LOGIN_JS, APP_CSS, ICON_SVG].concat();
        palisade_wire::sha256(all.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    secure(
        (
            status,
            axum::Json(serde_json::json!({ "error": message.into() })),
        )
            .into_response(),
    )
}

fn json<T: Serialize>(v: &T) -> Response {
    secure(axum::Json(v).into_response())
}

fn redirect(to: &'static str) -> Response {
    secure(
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, to)
            .body(Body::empty())
            .expect("a valid response"),
    )
}

async fn to_dashboard() -> Response {
    redirect("/dashboard/")
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(sessions::cookie_value)
}

/// The logged-in administrator's session, if any.
fn session(hub: &Hub, headers: &HeaderMap) -> Option<sessions::Session> {
    hub.dashboard.sessions.get(cookie(headers)?)
}

/// For GET routes of the API: the session or 401.
fn reader(hub: &Hub, headers: &HeaderMap) -> Result<sessions::Session, Response> {
    session(hub, headers).ok_or_else(|| {
        json_error(
            StatusCode::UNAUTHORIZED,
            "not logged in (or the session ended): log in again",
        )
    })
}

/// `https://HOST` as the browser names this hub.
fn own_origin(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))?;
    Some(format!("https://{host}"))
}

/// A state-changing request must come from a page of this origin:
/// `Origin` (or `Referer` when a browser sends no `Origin`) must name it.
fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), Response> {
    let refuse = |why: &str| {
        json_error(
            StatusCode::FORBIDDEN,
            format!("refused: {why} (cross-site request protection)"),
        )
    };
    let own = own_origin(headers, uri).ok_or_else(|| refuse("no Host"))?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        return if origin.to_str().ok() == Some(own.as_str()) {
            Ok(())
        } else {
            Err(refuse("the request came from another site"))
        };
    }
    match headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        Some(r) if r.starts_with(&format!("{own}/")) => Ok(()),
        Some(_) => Err(refuse("the request came from another site")),
        None => Err(refuse("the request names no Origin or Referer")),
    }
}

/// For POST routes: a session, this origin, and the session's CSRF token.
fn writer_session(
    hub: &Hub,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<sessions::Session, Response> {
    let s = reader(hub, headers)?;
    same_origin(headers, uri)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !sessions::same(sent, &s.csrf) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "refused: missing or wrong CSRF token; reload the page",
        ));
    }
    Ok(s)
}

fn html(body: String) -> Response {
    secure(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

async fn shell(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let Some(s) = session(&hub, &headers) else {
        return redirect("/dashboard/login");
    };
    // Names are [A-Za-z0-9._-] and the token is base64url: nothing to escape.
    html(
        INDEX_HTML
            .replace("{{ADMIN}}", &s.admin)
            .replace("{{CSRF}}", &s.csrf)
            .replace("{{V}}", asset_version()),
    )
}

async fn login_page(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if session(&hub, &headers).is_some() {
        return redirect("/dashboard/");
    }
    html(LOGIN_HTML.replace("{{V}}", asset_version()))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "login.js" => (LOGIN_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return json_error(StatusCode::NOT_FOUND, "no such file"),
    };
    secure(
        (
            [
                (header::CONTENT_TYPE, kind),
                // URLs carry the assets' version.
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            body,
        )
            .into_response(),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login(
    State(hub): State<Arc<Hub>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    if let Err(r) = same_origin(&headers, &uri) {
        return r;
    }
    let Ok(form) = serde_json::from_slice::<LoginForm>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "send a name and a password");
    };
    let name: String = form.name.trim().chars().take(64).collect();
    if let Err(wait) = hub.dashboard.login_limit.attempt(peer.0.ip(), &name) {
        warn!(peer = %peer.0.ip(), name = %name, "dashboard login rate limited");
        let secs = wait.as_secs().max(1);
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many login attempts; try again in {secs} s"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    let Some(mut turn) = hub.dashboard.hashing.try_start() else {
        warn!(peer = %peer.0.ip(), name = %name, "dashboard login refused: too many at once");
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "the hub is checking too many logins at once; try again in a few seconds",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(2));
        return r;
    };
    let store = hub.store.clone();
    let who = name.clone();
    let ok = tokio::task::spawn_blocking(move || {
        // `turn` is held until the hash is done, even if the client goes.
        let record = admins::get(&store, &who).ok().flatten();
        // Unknown names cost the same as wrong passwords.
        let hash = record
            .as_ref()
            .map_or(admins::decoy_hash(), |r| r.hash.as_str());
        let good =
            admins::verify_password_in(hash, &form.password, &mut turn.memory) && record.is_some();
        if good {
            let _ = admins::logged_in(&store, &who);
        }
        good
    })
    .await
    .unwrap_or(false);
    if !ok {
        warn!(peer = %peer.0.ip(), name = %name, "dashboard login refused");
        tokio::time::sleep_until((arrived + REFUSAL_DELAY).into()).await;
        return json_error(StatusCode::UNAUTHORIZED, "wrong name or password");
    }
    info!(peer = %peer.0.ip(), admin = %name, "dashboard login");
    hub.dashboard.login_limit.logged_in(peer.0.ip(), &name);
    let id = hub.dashboard.sessions.create(&name);
    let mut r = json(&serde_json::json!({ "ok": true }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&sessions::set_cookie(&id)).expect("a valid cookie"),
    );
    r
}

async fn logout(State(hub): State<Arc<Hub>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = writer_session(&hub, &headers, &uri) {
        return r;
    }
    if let Some(id) = cookie(&headers) {
        hub.dashboard.sessions.end(id);
    }
    let mut r = json(&serde_json::json!({ "ok": true }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&sessions::clear_cookie()).expect("a valid cookie"),
    );
    r
}

/// Node name to group, from the tokens.
fn node_groups(hub: &Hub) -> HashMap<String, Option<String>> {
    crate::tokens::all(&hub.store)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, r)| r.kind == TokenKind::Node)
        .map(|(_, r)| (r.name, r.group))
        .collect()
}

async fn api_decisions(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<query::ListQuery>,
) -> Response {
    if let Err(r) = reader(&hub, &headers) {
        return r;
    }
    let h = hub.clone();
    let page = tokio::task::spawn_blocking(move || {
        let groups = if q.group.as_deref().is_some_and(|g| !g.is_empty()) {
            node_groups(&h)
        } else {
            HashMap::new()
        };
        let r = h.store.read()?;
        query::list(&r, &q, &groups, Timestamp::now())
    })
    .await;
    match page {
        Ok(Ok(p)) => json(&p),
        Ok(Err(e @ query::QueryError::Store(_))) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ExplainQuery {
    addr: String,
}

async fn api_explain(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(q): Query<ExplainQuery>,
) -> Response {
    if let Err(r) = reader(&hub, &headers) {
        return r;
    }
    let net: Net = match q.addr.trim().parse() {
        Ok(n) => n,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let store = hub.store.clone();
    let story = tokio::task::spawn_blocking(move || {
        let r = store.read()?;
        query::story(&r, net, Timestamp::now())
    })
    .await;
    match story {
        Ok(Ok(s)) => json(&s),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct ActForm {
    /// `unban`, `extend`, `allow` or `unallow`.
    op: String,
    target: String,
    #[serde(default)]
    span: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

async fn api_act(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let s = match writer_session(&hub, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let form: ActForm = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    let target: Net = match form.target.trim().parse() {
        Ok(n) => n,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let span = match form
        .span
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(text) => match text.parse::<Span>() {
            Ok(s) => Some(s),
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => None,
    };
    let text = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let group = text(&form.group);
    if let Some(g) = &group
        && let Err(e) = crate::tokens::check_name(g)
    {
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let actor = Some(s.admin.clone());
    let action = match form.op.as_str() {
        "unban" => OperatorAction::Intent(Intent::Unban { target, actor }),
        "extend" => match span {
            Some(by) => OperatorAction::Extend { target, by },
            None => return json_error(StatusCode::BAD_REQUEST, "extend needs a span (e.g. 1d)"),
        },
        "allow" => OperatorAction::Intent(Intent::Allow {
            target,
            span,
            comment: text(&form.comment),
            group,
            actor,
        }),
        "unallow" => OperatorAction::Intent(Intent::Unallow {
            target,
            group,
            actor,
        }),
        other => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("{other:?} is not an action: use unban, extend, allow or unallow"),
            );
        }
    };
    info!(admin = %s.admin, op = %form.op, target = %target, "dashboard action");
    let (tx, rx) = oneshot::channel();
    if let Err(e) = hub.writer.send(Job::Operator {
        actor: s.admin.clone(),
        action,
        reply: tx,
    }) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    match rx.await {
        Ok(Ok(r)) => {
            let status = match r.outcome {
                IntentOutcome::Accepted | IntentOutcome::Suppressed => StatusCode::OK,
                IntentOutcome::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            secure((status, axum::Json(r)).into_response())
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub stopped before answering",
        ),
    }
}

/// A joined node as the dashboard lists it.
#[derive(Debug, Serialize)]
struct NodeView {
    name: String,
    group: Option<String>,
    address: Option<String>,
    version: Option<String>,
    /// Streams open now.
    streams: u32,
    last_seen: Option<Timestamp>,
    /// The last stream number it applied, and how far behind that is.
    cursor: u64,
    lag: u64,
    /// Bans it enforces (its last heartbeat).
    bans: u64,
    /// Ban reports it sent the hub, and all its intents.
    reported: u64,
    intents: u64,
    created: Timestamp,
    revoked: Option<Timestamp>,
    joined_with: Option<String>,
}

async fn api_nodes(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = reader(&hub, &headers) {
        return r;
    }
    let h = hub.clone();
    let nodes = tokio::task::spawn_blocking(move || -> Result<_, palisade_store::StoreError> {
        let r = h.store.read()?;
        let seq = r.queue_next(tables::EVENTS)? - 1;
        let stored: HashMap<String, NodeRecord> = r
            .map_entries(tables::NODES)?
            .into_iter()
            .filter_map(|(k, b)| serde_json::from_slice(&b).ok().map(|n| (k, n)))
            .collect();
        let live: HashMap<String, (NodeRecord, u32)> = h
            .node_status()
            .into_iter()
            .map(|(n, s)| (n.name.clone(), (n, s)))
            .collect();
        let mut tokens: Vec<_> = crate::tokens::all(&h.store)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.kind == TokenKind::Node)
            .collect();
        // One row per name: its valid token, else its newest revoked one.
        tokens.sort_by_key(|t| (t.name.clone(), t.is_valid(), t.created));
        let mut rows: Vec<NodeView> = Vec::new();
        for t in tokens {
            if rows.last().is_some_and(|r| r.name == t.name) {
                rows.pop();
            }
            let (rec, streams) = live
                .get(&t.name)
                .cloned()
                .unwrap_or_else(|| (stored.get(&t.name).cloned().unwrap_or_default(), 0));
            let st = stored.get(&t.name);
            rows.push(NodeView {
                name: t.name.clone(),
                group: t.group.clone(),
                address: rec.address.map(|a| a.to_string()),
                version: rec.version.clone(),
                streams: if t.is_valid() { streams } else { 0 },
                last_seen: rec.last_seen,
                cursor: rec.cursor,
                // Shown only with a version (after a heartbeat).
                lag: crate::metrics::stream_lag(&rec, seq).unwrap_or(0),
                bans: rec.bans,
                reported: st.map_or(0, |s| s.reported),
                intents: st.map_or(0, |s| s.intents),
                created: t.created,
                revoked: t.revoked,
                joined_with: t.joined_with.clone(),
            });
        }
        Ok(serde_json::json!({ "seq": seq, "now": Timestamp::now(), "nodes": rows }))
    })
    .await;
    match nodes {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    name: String,
}

async fn api_revoke(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let s = match writer_session(&hub, &headers, &uri) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(form) = serde_json::from_slice::<RevokeForm>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "send the node's name");
    };
    let h = hub.clone();
    let name = form.name.clone();
    match tokio::task::spawn_blocking(move || h.revoke_token(&name)).await {
        Ok(Ok(count)) => {
            info!(admin = %s.admin, node = %form.name, "node token revoked from the dashboard");
            json(&serde_json::json!({ "revoked": count }))
        }
        Ok(Err(e)) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn api_activity(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = reader(&hub, &headers) {
        return r;
    }
    let now = Timestamp::now();
    let view = hub.dashboard.activity.view(now, 10);
    let counts = hub
        .store
        .read()
        .and_then(|r| r.counts())
        .unwrap_or_default();
    json(&serde_json::json!({
        "now": now,
        "activity": view,
        "counts": {
            "ban_hosts": counts.ban_hosts,
            "ban_networks": counts.ban_networks,
            "allows": counts.allows,
        },
        "streams": hub.metrics.streams.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// Server-Sent Events: every change the writer commits, as the stream
/// items agents receive (`data: {"put":{…}}`), until the session ends.
async fn api_events(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = reader(&hub, &headers) {
        return r;
    }
    let id = cookie(&headers).unwrap_or_default().to_string();
    let live = hub.live.subscribe();
    let h = hub.clone();
    let start = futures_util::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b"retry: 3000\n\n"))
    });
    let events = futures_util::stream::unfold(
        (live, h, id, tokio::time::interval(LIVE_PING), true),
        |(mut live, h, id, mut ping, first)| async move {
            if first {
                ping.tick().await;
            }
            let out = tokio::select! {
                e = live.recv() => match e {
                    Ok(e) => {
                        let line = e.line.strip_suffix(b"\n").unwrap_or(&e.line);
                        let mut v = Vec::with_capacity(line.len() + 8);
                        v.extend_from_slice(b"data: ");
                        v.extend_from_slice(line);
                        v.extend_from_slice(b"\n\n");
                        Bytes::from(v)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Bytes::from_static(b"event: lagged\ndata: {}\n\n")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = ping.tick() => {
                    if !h.dashboard.sessions.is_live(&id) {
                        return None;
                    }
                    Bytes::from_static(b": ping\n\n")
                }
            };
            Some((Ok::<_, Infallible>(out), (live, h, id, ping, false)))
        },
    );
    use futures_util::StreamExt as _;
    secure(
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::from_stream(start.chain(events)))
            .expect("a valid response"),
    )
}

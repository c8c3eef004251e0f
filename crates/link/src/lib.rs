//! An agent's link to the embedded hub: the [`Bus`] over HTTPS.
//!
//! TLS trusts exactly the certificate pinned in the node's token (or the
//! system CAs when the token has no pin); every request carries the token.
//! The decision stream is one long HTTP response of JSON lines, read
//! incrementally; silence longer than three ping intervals counts as a
//! dead connection, so a half-open TCP connection never stalls an agent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_wire::bus::{BoxFuture, ItemStream};
use palisade_wire::{
    Bus, BusError, Envelope, Heartbeat, IntentResult, JoinRequest, JoinResponse, PartLine,
    STREAM_UPGRADE, SnapshotPart, StreamItem, Token, paths,
};
use tracing::debug;

/// Longest wait for an answer to a request (not the stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A stream silent this long is taken for dead (the hub pings every 10 s).
const STREAM_SILENCE: Duration = Duration::from_secs(35);
/// Largest stream line accepted (a decision with its evidence is a few kB).
const MAX_LINE: usize = 1 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A node's link to one hub.
#[derive(Clone)]
pub struct HubLink {
    base: String,
    bearer: Arc<str>,
    client: HttpsClient,
}

/// Why a hub address or token is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The address is not `https://HOST:PORT`.
    #[error(
        "{0:?} is not a hub address: use https://HOST:PORT (the command `palisade up` printed)"
    )]
    BadUrl(String),
    /// The token's pin or the system's CA store could not make a TLS client.
    #[error(transparent)]
    Tls(#[from] palisade_wire::tls::TlsError),
}

impl HubLink {
    /// A link to the hub at `url` (`https://host:port`) with `token`; the
    /// token's pin, if any, decides which certificate is trusted.
    pub fn new(url: &str, token: &Token) -> Result<HubLink, LinkError> {
        let base = url.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|_| LinkError::BadUrl(url.to_string()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(LinkError::BadUrl(url.to_string()));
        }
        let tls = palisade_wire::tls::client_config(token.pin)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HubLink {
            base,
            bearer: Arc::from(format!("Bearer {}", token.bearer())),
            client,
        })
    }

    /// Exchanges a join token for this node's own credential.
    pub async fn join(&self, name: &str) -> Result<JoinResponse, BusError> {
        let body = serde_json::to_vec(&JoinRequest {
            name: name.to_string(),
        })
        .expect("serializes");
        let bytes = self.call(Method::POST, paths::JOIN, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| BusError::Protocol(format!("the hub's join answer: {e}")))
    }

    /// A GET returning the body (for `export`, `decisions`, `metrics`).
    pub async fn get(&self, path: &str) -> Result<Bytes, BusError> {
        self.call(Method::GET, path, Vec::new()).await
    }

    fn request(&self, method: Method, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &*self.bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("palisade/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }

    /// Sends a request and returns the body of a 2xx answer (429 too: the
    /// intents route answers partial results with it).
    async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Bytes, BusError> {
        let req = self.request(method, path, body);
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            check(status, &bytes)?;
            Ok(bytes)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| {
                BusError::Unreachable(format!(
                    "the hub at {} did not answer within {REQUEST_TIMEOUT:?}",
                    self.base
                ))
            })?
    }

    fn unreachable(&self, e: impl std::fmt::Display + std::fmt::Debug) -> BusError {
        // hyper's Display is terse ("client error (Connect)"); the source
        // chain says why (refused, certificate pin mismatch, ...).
        BusError::Unreachable(format!("cannot reach the hub at {}: {e:?}", self.base))
    }
}

/// Turns an HTTP status into the bus's errors, keeping the hub's message.
fn check(status: StatusCode, body: &[u8]) -> Result<(), BusError> {
    if status.is_success() || status == StatusCode::TOO_MANY_REQUESTS {
        return Ok(());
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            BusError::Unauthorized(format!("the hub refused this node: {message}"))
        }
        StatusCode::CONFLICT | StatusCode::BAD_REQUEST => {
            BusError::Protocol(format!("the hub refused the request: {message}"))
        }
        _ => BusError::Unreachable(format!("the hub answered {status}: {message}")),
    })
}

impl Bus for HubLink {
    fn describe(&self) -> String {
        format!("hub {}", self.base)
    }

    fn send<'a>(
        &'a self,
        batch: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<IntentResult>, BusError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(batch).expect("envelopes serialize");
            let bytes = self.call(Method::POST, paths::INTENTS, body).await?;
            // Fewer results than intents (rate limit): the caller keeps the
            // rest and sends them again later.
            serde_json::from_slice(&bytes)
                .map_err(|e| BusError::Protocol(format!("the hub's answer to intents: {e}")))
        })
    }

    fn follow(&self, cursor: u64) -> BoxFuture<'_, Result<ItemStream, BusError>> {
        Box::pin(async move {
            let mut req = self.request(
                Method::GET,
                &format!(
                    "{}?cursor={cursor}&parts={}",
                    paths::STREAM,
                    SnapshotPart::ENCODING
                ),
                Vec::new(),
            );
            // The stream takes the connection over when the hub knows how
            // (101); an older hub sends it as the body (200).
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| {
                    BusError::Unreachable(format!("the hub at {} did not answer", self.base))
                })?
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let mut source = if status == StatusCode::SWITCHING_PROTOCOLS {
                let io = hyper::upgrade::on(resp).await.map_err(|e| {
                    BusError::Unreachable(format!(
                        "the stream from {} could not start: {e}",
                        self.base
                    ))
                })?;
                Source::Upgraded(TokioIo::new(io))
            } else if status.is_success() {
                Source::Body(resp.into_body().into_data_stream())
            } else {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(check(status, &body).err().unwrap_or_else(|| {
                    BusError::Protocol(format!("the hub answered the stream with {status}"))
                }));
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<StreamItem>, BusError>>(1024);
            let base = self.base.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    match tokio::time::timeout(STREAM_SILENCE, source.read(&mut buf)).await {
                        Ok(Ok(true)) => {}
                        Ok(Err(e)) => {
                            let _ = tx
                                .send(Err(BusError::Unreachable(format!(
                                    "the stream from {base} broke: {e}"
                                ))))
                                .await;
                            return;
                        }
                        Ok(Ok(false)) => {
                            let _ = tx
                                .send(Err(BusError::Unreachable(format!(
                                    "the hub at {base} closed the stream"
                                ))))
                                .await;
                            return;
                        }
                        Err(_) => {
                            let _ = tx
                                .send(Err(BusError::Unreachable(format!(
                                    "the stream from {base} went silent"
                                ))))
                                .await;
                            return;
                        }
                    }
                    // The chunk's whole lines go over as one batch; a line
                    // that does not parse ends the stream after the ones
                    // before it.
                    let mut items = Vec::new();
                    let mut broken = None;
                    while let Some(pos) = memchr::memchr(b'\n', &buf) {
                        let line = buf.split_to(pos + 1);
                        if let Err(e) = read_line(&line[..pos], &mut items) {
                            broken = Some(e);
                            break;
                        }
                    }
                    if !items.is_empty() && tx.send(Ok(items)).await.is_err() {
                        return;
                    }
                    if let Some(e) = broken {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    if buf.len() > MAX_LINE {
                        let _ = tx
                            .send(Err(BusError::Protocol(
                                "a stream line from the hub is too long".into(),
                            )))
                            .await;
                        return;
                    }
                    if buf.is_empty() {
                        buf.clear();
                    } else if buf.capacity() > 4 * MAX_LINE {
                        let rest = buf.copy_to_bytes(buf.len());
                        buf = BytesMut::from(&rest[..]);
                    }
                }
            });
            debug!(cursor, "following the hub's stream");
            Ok(palisade_wire::batched(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
            )))
        })
    }

    fn heartbeat<'a>(&'a self, beat: &'a Heartbeat) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(beat).expect("a heartbeat serializes");
            self.call(Method::POST, paths::HEARTBEAT, body)
                .await
                .map(|_| ())
        })
    }
}

/// Where a stream's bytes come from.
enum Source {
    /// The connection, taken over from HTTP.
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
    /// The body of a `200` (a hub without the upgrade).
    Body(http_body_util::BodyDataStream<hyper::body::Incoming>),
}

/// How much the stream reads from a connection at once.
const READ_SIZE: usize = 16 * 1024;

impl Source {
    /// Adds the next bytes to `buf`; false once the hub closed the stream.
    async fn read(&mut self, buf: &mut BytesMut) -> Result<bool, String> {
        match self {
            Source::Upgraded(io) => {
                buf.reserve(READ_SIZE);
                let n = tokio::io::AsyncReadExt::read_buf(io, buf)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(n > 0)
            }
            Source::Body(body) => match body.next().await {
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    Ok(true)
                }
                Some(Err(e)) => Err(e.to_string()),
                None => Ok(false),
            },
        }
    }
}

/// Adds what one stream line says to `items`: a [`StreamItem`], or the
/// `Put`s of a snapshot part.
fn read_line(line: &[u8], items: &mut Vec<StreamItem>) -> Result<(), BusError> {
    let broken =
        |e: &dyn std::fmt::Display| BusError::Protocol(format!("a stream line from the hub: {e}"));
    if line.starts_with(SnapshotPart::LINE_START) {
        let part = serde_json::from_slice::<PartLine>(line).map_err(|e| broken(&e))?;
        part.part.puts(items).map_err(|e| broken(&e))
    } else {
        let item = serde_json::from_slice::<StreamItem>(line).map_err(|e| broken(&e))?;
        items.push(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_model::{Action, Decision, Net, Origin, Source, Span, Timestamp};

    fn bans(n: u32) -> Vec<Decision> {
        (0..n)
            .map(|i| {
                Decision::new(
                    Action::Ban,
                    Net::host(std::net::Ipv4Addr::from(0xc612_0000 + i).into()),
                    Timestamp::now(),
                    "1h".parse::<Span>().unwrap(),
                    Origin::new("web-1", Source::Detector),
                )
            })
            .collect()
    }

    fn line(part: &SnapshotPart) -> Vec<u8> {
        serde_json::to_vec(&PartLine { part: part.clone() }).unwrap()
    }

    #[test]
    fn part_lines_become_puts_of_the_snapshot() {
        let d = bans(300);
        let mut items = vec![StreamItem::Snapshot { seq: 9 }];
        let part = SnapshotPart::new(9, &d);
        read_line(&line(&part), &mut items).unwrap();
        read_line(br#"{"snapshot_end":{"seq":9}}"#, &mut items).unwrap();
        assert_eq!(items.len(), 302);
        for (item, d) in items[1..301].iter().zip(&d) {
            assert_eq!(
                item,
                &StreamItem::Put {
                    seq: 9,
                    decision: d.clone()
                }
            );
        }
    }

    /// Attack: part lines that are not what a hub writes (a count that
    /// does not match, bytes that are not base64, a blob cut short or
    /// claiming a huge size, a line that only starts like one) end the
    /// stream with an error, and none of their decisions is added.
    #[test]
    fn broken_part_lines_add_nothing() {
        let good = SnapshotPart::new(9, &bans(50));
        let mut miscounted = good.clone();
        miscounted.count = 49;
        let mut not_base64 = good.clone();
        not_base64.data.insert(3, '!');
        let mut cut = good.clone();
        cut.data.truncate(cut.data.len() / 2 / 4 * 4);
        let mut huge = good.clone();
        {
            use base64::Engine;
            let engine = base64::engine::general_purpose::STANDARD;
            let mut blob = engine.decode(&huge.data).unwrap();
            blob[..4].copy_from_slice(&u32::MAX.to_le_bytes());
            huge.data = engine.encode(blob);
        }
        let mut lines: Vec<Vec<u8>> = [miscounted, not_base64, cut, huge]
            .iter()
            .map(line)
            .collect();
        lines.push(br#"{"part":{"seq":9}}"#.to_vec());
        lines.push(br#"{"part": 5, "put": {}}"#.to_vec());
        for l in &lines {
            let mut items = vec![StreamItem::Snapshot { seq: 9 }];
            let e = read_line(l, &mut items).unwrap_err();
            assert!(matches!(e, BusError::Protocol(_)), "{e}");
            assert_eq!(items.len(), 1, "{e}");
        }
    }
}

//! Accepting HTTPS connections: rustls over TCP, HTTP/1.1 and HTTP/2, with
//! the limits that keep a flood of clients from taking the hub from its
//! agents: connection caps ([`Connections`]), a deadline for the TLS
//! handshake and for each request's headers, HTTP/2 keep-alive and stream
//! limits, and an idle timeout on every connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::limits::Connections;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request's headers, counted from
/// when the hub is ready for them (so also how long an idle HTTP/1.1
/// keep-alive connection stays open). Agents send a heartbeat every 10 s.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection on which nothing was read or written this long is closed.
/// Streams send a ping every 10 s (agents) or 15 s (dashboard), HTTP/2
/// keep-alive pings every [`H2_PING`].
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const H2_PING: Duration = Duration::from_secs(20);
/// Requests one HTTP/2 connection may have open at once.
const H2_STREAMS: u32 = 64;
/// The most a client's request head may take in memory (HTTP/1.1 buffer,
/// HTTP/2 header list).
const MAX_HEAD: usize = 16 * 1024;
/// TLS handshakes in progress at once. A handshake is the costliest thing
/// an unauthenticated client makes the hub do; thousands at once would fill
/// the runtime's queues and delay the agents' streams by seconds. The rest
/// wait their turn, up to [`HANDSHAKE_QUEUE`]; a client takes a turn only
/// once it has sent something.
const HANDSHAKES: usize = 64;
const HANDSHAKE_QUEUE: Duration = Duration::from_secs(30);
/// Refusals logged at most this often (a flood must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The peer address of the connection a request came on (each request
/// carries it as an extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    connections: Arc<Connections>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    let mut refused = 0u64;
    let mut refusal_logged: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match connections.admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                // Closed at once: holding it would be what the flood wants.
                drop(tcp);
                refused += 1;
                if refusal_logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                    warn!(%peer, refused, "connection refused: {e}");
                    refusal_logged = Some(Instant::now());
                    refused = 0;
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handshakes = handshakes.clone();
        let router = WithPeer {
            router: router.clone(),
            peer: Peer(peer),
        };
        tokio::spawn(async move {
            let spoke = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.readable()).await;
            if !matches!(spoke, Ok(Ok(()))) {
                debug!(%peer, "the client sent nothing");
                return;
            }
            let Ok(Ok(turn)) = tokio::time::timeout(HANDSHAKE_QUEUE, handshakes.acquire()).await
            else {
                debug!(%peer, "no turn for a TLS handshake");
                return;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            drop(turn);
            // The protocol is the one agreed in the handshake (ALPN), so the
            // server never waits for a silent client to show which it speaks.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = builder(h2);
            let activity = Activity::new();
            let io = TokioIo::new(Watched {
                inner: tls,
                activity: activity.clone(),
                _admitted: admitted,
            });
            let service = TowerToHyperService::new(router);
            // Upgrades: a node's decision stream takes the connection over
            // (see `api::stream`); the connection then ends here, and the
            // stream keeps the socket (and its admission) until it ends.
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = activity.idle_for(IDLE_TIMEOUT) => {
                    debug!(%peer, "connection closed: idle for {IDLE_TIMEOUT:?}");
                }
            }
        });
    }
}

/// The router, telling each request which peer it came from. (Cheaper per
/// connection than a layer, which would copy the whole router.)
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: Peer,
}

impl<B> tower_service::Service<http::Request<B>> for WithPeer
where
    Router: tower_service::Service<http::Request<B>>,
{
    type Response = <Router as tower_service::Service<http::Request<B>>>::Response;
    type Error = <Router as tower_service::Service<http::Request<B>>>::Error;
    type Future = <Router as tower_service::Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        self.router.call(req)
    }
}

fn builder(h2: bool) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    if h2 {
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING)
            .keep_alive_timeout(H2_PING)
            .max_concurrent_streams(H2_STREAMS)
            .max_header_list_size(MAX_HEAD as u32)
            .max_pending_accept_reset_streams(Some(H2_STREAMS as usize));
        b.http2_only()
    } else {
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD);
        b.http1_only()
    }
}

/// When a connection last moved a byte, as milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// A stream that notes every byte read or written in its [`Activity`], and
/// holds the connection's admission for as long as the socket lives (also
/// when a stream took it over from HTTP).
struct Watched<T> {
    inner: T,
    activity: Activity,
    _admitted: crate::limits::Admitted,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

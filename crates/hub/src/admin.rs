//! The hub's root-only control socket: `palisade hub token …` and
//! `palisade hub status` while the hub runs.

use std::io;
use std::sync::Arc;

use palisade_control::hub::{HubRequest, HubResponse, HubStatus};
use palisade_feed::PullNow;
use palisade_model::Timestamp;
use palisade_wire::token::show_pin;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::state::Hub;
use crate::tables;

pub async fn serve(listener: UnixListener, hub: Arc<Hub>, feeds: Arc<PullNow>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (hub, feeds) = (hub.clone(), feeds.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, hub, feeds).await {
                        warn!(error = %e, "hub control connection failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a hub control connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, hub: Arc<Hub>, feeds: Arc<PullNow>) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        // Read the request even when refusing: closing a UNIX socket with
        // unread data would reset the peer and lose the answer.
        if (&mut reader).take(1 << 20).read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let answer = if !palisade_control::socket::peer_allowed(uid) {
            HubResponse::Error {
                message: palisade_control::socket::refusal(uid),
            }
        } else {
            match serde_json::from_str::<HubRequest>(&line) {
                // A pull waits on the network, not on the store.
                Ok(HubRequest::FeedPull { name }) => match feeds.pull(&name).await {
                    Ok(pulled) => HubResponse::FeedPulled(pulled),
                    Err(e) => HubResponse::Error {
                        message: e.to_string(),
                    },
                },
                Ok(req) => {
                    let h = hub.clone();
                    tokio::task::spawn_blocking(move || handle(&h, req))
                        .await
                        .unwrap_or_else(|e| HubResponse::Error {
                            message: e.to_string(),
                        })
                }
                Err(e) => HubResponse::Error {
                    message: format!("bad request: {e}"),
                },
            }
        };
        let mut out = serde_json::to_vec(&answer).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

fn handle(hub: &Hub, req: HubRequest) -> HubResponse {
    let err = |e: &dyn std::fmt::Display| HubResponse::Error {
        message: e.to_string(),
    };
    match req {
        HubRequest::TokenCreate { .. } => {
            let made = crate::tokens::create_requested(&hub.store, &req, hub.pin)
                .expect("a token creation");
            match made {
                Ok((token, record)) => {
                    let _ = hub.reload_tokens();
                    info!(name = %record.name, kind = %record.kind, role = %record.role, "token created");
                    HubResponse::Token {
                        token: token.to_string(),
                        name: record.name,
                    }
                }
                Err(e) => err(&e),
            }
        }
        HubRequest::TokenList => match crate::tokens::list(&hub.store) {
            Ok(mut tokens) => {
                let live = hub.node_status();
                for t in &mut tokens {
                    if let Some((n, streams)) = live.iter().find(|(n, _)| n.name == t.name) {
                        t.connected = *streams > 0;
                        t.last_seen = n.last_seen.or(t.last_seen);
                        t.address = n.address.map(|a| a.to_string()).or(t.address.take());
                    }
                }
                HubResponse::Tokens { tokens }
            }
            Err(e) => err(&e),
        },
        HubRequest::TokenRevoke { name } => match hub.revoke_token(&name) {
            Ok(count) => HubResponse::Revoked {
                name,
                count: count as u64,
            },
            Err(e) => err(&e),
        },
        HubRequest::AdminCreate { name, password } => {
            match crate::dashboard::admins::create(&hub.store, &name, &password) {
                Ok(r) => {
                    info!(admin = %r.name, "dashboard administrator created");
                    HubResponse::AdminCreated { name: r.name }
                }
                Err(e) => err(&e),
            }
        }
        HubRequest::AdminList => match crate::dashboard::admins::list(&hub.store) {
            Ok(admins) => HubResponse::Admins { admins },
            Err(e) => err(&e),
        },
        HubRequest::AdminDelete { name } => {
            match crate::dashboard::admins::delete(&hub.store, &name) {
                Ok(()) => {
                    hub.dashboard.sessions.end_admin(&name);
                    info!(admin = %name, "dashboard administrator deleted");
                    HubResponse::AdminDeleted { name }
                }
                Err(e) => err(&e),
            }
        }
        HubRequest::FeedPull { .. } => err(&"a feed is pulled by the connection, not here"),
        HubRequest::Status => {
            let r = match hub.store.read() {
                Ok(r) => r,
                Err(e) => return err(&e),
            };
            let counts = r.counts().unwrap_or_default();
            let seq = r.queue_next(tables::EVENTS).unwrap_or(1) - 1;
            HubResponse::Status(Box::new(HubStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                listen: hub.listen.to_string(),
                pin: hub.pin.as_ref().map(show_pin),
                started: hub.started,
                now: Timestamp::now(),
                bans: counts.ban_hosts,
                ban_networks: counts.ban_networks,
                allows: counts.allows,
                seq,
                nodes: hub.node_count(),
                connected: hub
                    .metrics
                    .streams
                    .load(std::sync::atomic::Ordering::Relaxed),
            }))
        }
    }
}

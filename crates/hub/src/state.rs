//! What every request handler shares: the store, the token cache, the live
//! status of nodes, the writer, the live event channel, the counters.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use palisade_model::Timestamp;
use palisade_policy::Node;
use palisade_store::Store;
use palisade_wire::{Heartbeat, Token, TokenKind};
use tokio::sync::broadcast;

use crate::ledger::LiveEvent;
use crate::metrics::Metrics;
use crate::records::{NodeRecord, TokenRecord};
use crate::tables;
use crate::writer::{Job, WriterHandle};

/// Who is calling, once its token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's id (its hash).
    pub id: String,
    pub record: TokenRecord,
}

impl Caller {
    /// The node as the policy sees it: name, group and role from the
    /// credential.
    pub fn node(&self) -> Node {
        Node::member(
            self.record.name.clone(),
            self.record.group.clone(),
            self.record.role,
        )
    }
}

/// Why a request was refused before doing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
    Revoked,
    /// A join token past its expiry or its number of uses.
    Spent,
    WrongKind {
        have: TokenKind,
        need: &'static str,
    },
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => {
                f.write_str("this needs a palisade token: send `Authorization: Bearer palisade1.…`")
            }
            AuthError::Invalid => f.write_str(
                "this token is not known to this hub (a token from another hub, or a typo)",
            ),
            AuthError::Revoked => f.write_str(
                "this token was revoked; ask for a new one (`palisade hub token create`)",
            ),
            AuthError::Spent => f.write_str(
                "this join token has expired or enrolled all the nodes it may; ask for a new one (`palisade hub token create --kind join`)",
            ),
            AuthError::WrongKind { have, need } => {
                write!(f, "a {have} token cannot do this; it needs {need}")
            }
        }
    }
}

/// What every part of the hub shares.
pub struct Hub {
    /// The hub's store (decisions, stream events, tokens, nodes).
    pub store: Arc<Store>,
    /// The pin of its certificate (`None` for an operator's certificate).
    pub pin: Option<[u8; 32]>,
    /// Where agents connect.
    pub listen: SocketAddr,
    /// When it started.
    pub started: Timestamp,
    /// Stream events as they are committed, to every open stream.
    pub live: broadcast::Sender<LiveEvent>,
    /// The one writer.
    pub writer: WriterHandle,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<Metrics>,
    /// The dashboard's sessions, logins and activity.
    pub dashboard: crate::dashboard::state::Dashboard,
    /// Where the hub keeps its files (feeds' last good lists too).
    pub state_dir: std::path::PathBuf,
    /// The snapshot joining nodes share.
    pub(crate) snapshots: crate::snapshot::SnapshotCache,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    nodes: Mutex<HashMap<String, NodeLive>>,
}

#[derive(Debug, Clone, Default)]
struct NodeLive {
    record: NodeRecord,
    /// The address it last made contact from (sent to the writer once).
    seen_from: Option<IpAddr>,
    streams: u32,
    /// Changed since last written to the store.
    dirty: bool,
}

impl Hub {
    // Called once, by `start`, with the parts it has just made.
    /// Puts together the parts `start` made.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        pin: Option<[u8; 32]>,
        listen: SocketAddr,
        live: broadcast::Sender<LiveEvent>,
        writer: WriterHandle,
        metrics: Arc<Metrics>,
        activity: Arc<crate::activity::Activity>,
        state_dir: std::path::PathBuf,
    ) -> anyhow::Result<Hub> {
        let hub = Hub {
            store,
            pin,
            listen,
            started: Timestamp::now(),
            live,
            writer,
            metrics,
            dashboard: crate::dashboard::state::Dashboard {
                activity,
                ..Default::default()
            },
            state_dir,
            snapshots: Default::default(),
            tokens: RwLock::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
        };
        hub.reload_tokens()?;
        let reader = hub.store.read()?;
        let mut nodes = hub.nodes.lock().unwrap();
        for (name, bytes) in reader.map_entries(tables::NODES)? {
            if let Ok(record) = serde_json::from_slice::<NodeRecord>(&bytes) {
                nodes.insert(
                    name,
                    NodeLive {
                        record,
                        ..NodeLive::default()
                    },
                );
            }
        }
        drop(nodes);
        Ok(hub)
    }

    /// Re-reads the tokens from the store (after one was created or
    /// revoked).
    pub fn reload_tokens(&self) -> anyhow::Result<()> {
        let all: HashMap<String, TokenRecord> =
            crate::tokens::all(&self.store)?.into_iter().collect();
        *self.tokens.write().unwrap() = all;
        Ok(())
    }

    /// Checks an `Authorization` header value against the valid tokens.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        kinds: &[TokenKind],
    ) -> Result<Caller, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let bearer = value.strip_prefix("Bearer ").ok_or(AuthError::Missing)?;
        let token: Token = bearer.parse().map_err(|_| AuthError::Invalid)?;
        let id = token.id();
        let record = self
            .tokens
            .read()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or(AuthError::Invalid)?;
        if record.kind != token.kind {
            return Err(AuthError::Invalid);
        }
        if record.revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        if !record.is_valid() {
            return Err(AuthError::Spent);
        }
        if !kinds.contains(&record.kind) {
            let need = match kinds {
                [TokenKind::Join] => "a join token",
                k if k.contains(&TokenKind::Read) => "a node or read token",
                _ => "a node token",
            };
            return Err(AuthError::WrongKind {
                have: record.kind,
                need,
            });
        }
        Ok(Caller { id, record })
    }

    /// Revokes every valid token named `name`: its streams are cut at their
    /// next event or ping, and a node's automatic allow entry goes. Returns
    /// how many were revoked.
    pub fn revoke_token(&self, name: &str) -> Result<usize, crate::tokens::TokenError> {
        let ids = crate::tokens::revoke(&self.store, name)?;
        let _ = self.reload_tokens();
        let _ = self.writer.send(Job::NodeGone {
            name: name.to_string(),
        });
        tracing::info!(name = %name, count = ids.len(), "token revoked");
        Ok(ids.len())
    }

    /// True while the token with this id is valid (streams check it, so a
    /// revoked node is cut off).
    pub fn still_valid(&self, id: &str) -> bool {
        self.tokens
            .read()
            .unwrap()
            .get(id)
            .is_some_and(TokenRecord::is_valid)
    }

    /// Records that a node made contact from `peer`; a new address gets the
    /// node's automatic allow entry (loopback needs none: it is never
    /// banned).
    pub fn seen(&self, caller: &Caller, peer: IpAddr) {
        if caller.record.kind != TokenKind::Node {
            return;
        }
        let peer = palisade_model::net::canonical_addr(peer);
        let mut nodes = self.nodes.lock().unwrap();
        let live = nodes
            .entry(caller.record.name.clone())
            .or_insert_with(|| NodeLive {
                record: NodeRecord {
                    name: caller.record.name.clone(),
                    group: caller.record.group.clone(),
                    ..NodeRecord::default()
                },
                ..NodeLive::default()
            });
        live.record.last_seen = Some(Timestamp::now());
        live.dirty = true;
        // The policy decides whether the address is allowed (a node's allow
        // is pinned to its first address); the job goes before the
        // request's own, so the allow is in place before its intents are
        // decided.
        // A reporter's address is not allowed automatically: a reporting
        // program's stolen token must not allowlist its thief (list real
        // servers in [[hub.allow]]).
        if live.seen_from != Some(peer)
            && !peer.is_loopback()
            && caller.record.role != palisade_wire::Role::Reporter
        {
            live.seen_from = Some(peer);
            live.record.address = Some(peer);
            let _ = self.writer.send(Job::NodeAddress {
                name: caller.record.name.clone(),
                group: caller.record.group.clone(),
                address: peer,
            });
        }
    }

    /// Keeps a node's heartbeat (cursor, bans, version, last seen).
    pub fn heartbeat(&self, caller: &Caller, beat: &Heartbeat) {
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(live) = nodes.get_mut(&caller.record.name) {
            live.record.cursor = beat.cursor;
            live.record.bans = beat.bans;
            live.record.version = Some(beat.version.clone());
            live.record.last_seen = Some(Timestamp::now());
            live.dirty = true;
        }
    }

    /// Counts a stream a node opened.
    pub fn stream_opened(&self, name: &str) {
        self.metrics.streams.fetch_add(1, Ordering::Relaxed);
        if let Some(live) = self.nodes.lock().unwrap().get_mut(name) {
            live.streams += 1;
        }
    }

    /// Counts a stream a node closed.
    pub fn stream_closed(&self, name: &str) {
        self.metrics.streams.fetch_sub(1, Ordering::Relaxed);
        if let Some(live) = self.nodes.lock().unwrap().get_mut(name) {
            live.streams = live.streams.saturating_sub(1);
        }
    }

    /// Node status changed since the last call, to be written to the store.
    pub fn take_dirty_nodes(&self) -> Vec<NodeRecord> {
        let mut nodes = self.nodes.lock().unwrap();
        nodes
            .values_mut()
            .filter(|l| l.dirty)
            .map(|l| {
                l.dirty = false;
                l.record.clone()
            })
            .collect()
    }

    /// (name, connected streams, cursor, record) of every known node.
    pub fn node_status(&self) -> Vec<(NodeRecord, u32)> {
        self.nodes
            .lock()
            .unwrap()
            .values()
            .map(|l| (l.record.clone(), l.streams))
            .collect()
    }

    /// Names of nodes with a valid node token.
    pub fn node_count(&self) -> u64 {
        self.tokens
            .read()
            .unwrap()
            .values()
            .filter(|r| r.kind == TokenKind::Node && r.is_valid())
            .count() as u64
    }
}

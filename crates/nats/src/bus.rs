//! A node's [`Bus`] over NATS: intents as requests to the policy workers,
//! the decision stream as a watch of the decisions bucket.

use std::net::IpAddr;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation};
use futures_util::StreamExt;
use palisade_model::Decision;
use palisade_wire::bus::{BoxFuture, ItemStream};
use palisade_wire::{
    Bus, BusError, BusReply, BusRequest, Envelope, Heartbeat, IntentResult, NodeBeat, StreamItem,
    keys,
};
use tracing::debug;

use crate::{Lazy, NatsOptions};

/// How long an empty watch may stay silent before the bucket is checked
/// for being empty (its last values may expire between the two).
const EMPTY_CHECK: Duration = Duration::from_secs(2);
/// Longest wait for a JetStream API answer when starting a watch.
const JS_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's connection to a palisade network on NATS.
#[derive(Clone)]
pub struct NatsBus {
    lazy: Lazy,
    node: String,
    group: Option<String>,
}

impl NatsBus {
    /// A bus for node `node` (of `group`, whose allow entries it applies).
    /// Nothing is contacted until it is used.
    pub fn new(options: NatsOptions, node: &str, group: Option<String>) -> NatsBus {
        NatsBus {
            lazy: Lazy::new(options, node),
            node: node.to_string(),
            group,
        }
    }

    fn options(&self) -> &NatsOptions {
        self.lazy.options()
    }

    async fn connection(&self) -> Result<(async_nats::Client, crate::Buckets), BusError> {
        self.lazy
            .get()
            .await
            .map_err(|e| BusError::Unreachable(e.to_string()))
    }

    /// Maps one watched entry to a stream item (None: not for this node).
    fn item(&self, e: &Entry, in_snapshot: bool) -> Option<StreamItem> {
        let (action, target, group) = keys::parse_decision_key(&e.key)?;
        if group.is_some() && group != self.group {
            return None;
        }
        match e.operation {
            Operation::Put => {
                let decision: Decision = match serde_json::from_slice(&e.value) {
                    Ok(d) => d,
                    Err(err) => {
                        debug!(key = %e.key, error = %err, "an unreadable decision in the bucket; skipped");
                        return None;
                    }
                };
                if (decision.action, decision.target) != (action, target) {
                    return None;
                }
                Some(StreamItem::Put {
                    seq: e.revision,
                    decision,
                })
            }
            Operation::Delete | Operation::Purge if !in_snapshot => Some(StreamItem::Remove {
                seq: e.revision,
                action,
                target,
                group,
            }),
            _ => None,
        }
    }
}

impl Bus for NatsBus {
    fn describe(&self) -> String {
        self.options().describe()
    }

    fn send<'a>(
        &'a self,
        batch: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<IntentResult>, BusError>> {
        Box::pin(async move {
            let (client, _) = self.connection().await?;
            let body = serde_json::to_vec(&BusRequest {
                group: self.group.clone(),
                address: client_address(&client),
                envelopes: batch.to_vec(),
            })
            .expect("a request serializes");
            let subject = self.options().intents_subject(&self.node);
            let answer = client.request(subject, body.into()).await.map_err(|e| {
                use async_nats::client::RequestErrorKind as K;
                match e.kind() {
                    K::NoResponders => BusError::Unreachable(format!(
                        "no palisade policy worker listens on {} (start `palisade hub --join nats://…`)",
                        self.options().describe()
                    )),
                    _ => BusError::Unreachable(format!(
                        "sending to the policy workers on {}: {e}",
                        self.options().describe()
                    )),
                }
            })?;
            match serde_json::from_slice::<BusReply>(&answer.payload) {
                Ok(BusReply::Results(r)) => Ok(r),
                Ok(BusReply::Error(e)) => Err(BusError::Unreachable(format!(
                    "a policy worker could not apply this node's intents: {e}"
                ))),
                Err(e) => Err(BusError::Protocol(format!("a policy worker's answer: {e}"))),
            }
        })
    }

    fn follow(&self, cursor: u64) -> BoxFuture<'_, Result<ItemStream, BusError>> {
        Box::pin(async move {
            let (_, buckets) = self.connection().await?;
            let kv = buckets.decisions.clone();
            let watch_err = |e: &dyn std::fmt::Display| {
                BusError::Unreachable(format!(
                    "cannot watch the bucket {}: {e}",
                    buckets.decisions_name
                ))
            };
            // Short timeouts: while a cluster elects a new leader, asking
            // again soon beats waiting long.
            let timeout = |what| watch_err(&format!("{what} timed out"));
            let mut info = tokio::time::timeout(
                JS_TIMEOUT,
                buckets
                    .js
                    .get_stream(format!("KV_{}", buckets.decisions_name)),
            )
            .await
            .map_err(|_| timeout("asking for the bucket"))?
            .map_err(|e| watch_err(&e))?;
            let state = tokio::time::timeout(JS_TIMEOUT, info.info())
                .await
                .map_err(|_| timeout("asking for the bucket"))?
                .map_err(|e| watch_err(&e))?
                .state
                .clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamItem, BusError>>(4096);
            let bus = self.clone();
            // A reconnection ends the stream, and the agent resumes from
            // what it stored: the watch's consumer may have died with its
            // server.
            let connections = self.lazy.connections.clone();
            let connected = connections.load(std::sync::atomic::Ordering::SeqCst);
            let reconnected =
                move || connections.load(std::sync::atomic::Ordering::SeqCst) != connected;
            // Resumable while the stream still holds what came after the
            // cursor: with one value per key, every key changed since is
            // there with its newest value, and removals as tombstones.
            let resume = cursor > 0 && cursor <= state.last_sequence;
            if resume {
                let mut watch =
                    tokio::time::timeout(JS_TIMEOUT, kv.watch_all_from_revision(cursor + 1))
                        .await
                        .map_err(|_| timeout("watching"))?
                        .map_err(|e| watch_err(&e))?;
                debug!(cursor, "resuming the NATS watch");
                tokio::spawn(async move {
                    loop {
                        let e = match tokio::time::timeout(Duration::from_secs(1), watch.next())
                            .await
                        {
                            Ok(Some(e)) => e,
                            Ok(None) => break,
                            Err(_) if reconnected() => break,
                            Err(_) => continue,
                        };
                        let item = match e {
                            Ok(e) => match bus.item(&e, false) {
                                Some(i) => Ok(i),
                                None => continue,
                            },
                            Err(err) => Err(BusError::Unreachable(format!(
                                "the NATS watch stopped: {err}"
                            ))),
                        };
                        let fatal = item.is_err();
                        if tx.send(item).await.is_err() || fatal {
                            return;
                        }
                    }
                    let _ = tx
                        .send(Err(BusError::Unreachable("the NATS watch ended".into())))
                        .await;
                });
            } else {
                let seq = state.last_sequence;
                let mut watch = tokio::time::timeout(JS_TIMEOUT, kv.watch_with_history(">"))
                    .await
                    .map_err(|_| timeout("watching"))?
                    .map_err(|e| watch_err(&e))?;
                let mut js_stream = info;
                tokio::spawn(async move {
                    if tx.send(Ok(StreamItem::Snapshot { seq })).await.is_err() {
                        return;
                    }
                    let mut in_snapshot = state.messages > 0;
                    if !in_snapshot && tx.send(Ok(StreamItem::SnapshotEnd { seq })).await.is_err() {
                        return;
                    }
                    loop {
                        let next = if in_snapshot {
                            match tokio::time::timeout(EMPTY_CHECK, watch.next()).await {
                                Ok(n) => n,
                                Err(_) => {
                                    // Nothing came: the values may have
                                    // expired since the count was taken.
                                    let empty = js_stream
                                        .info()
                                        .await
                                        .map(|i| i.state.messages == 0)
                                        .unwrap_or(false);
                                    if empty {
                                        in_snapshot = false;
                                        if tx
                                            .send(Ok(StreamItem::SnapshotEnd { seq }))
                                            .await
                                            .is_err()
                                        {
                                            return;
                                        }
                                    } else if reconnected() {
                                        break;
                                    }
                                    continue;
                                }
                            }
                        } else {
                            match tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
                                Ok(n) => n,
                                Err(_) if reconnected() => break,
                                Err(_) => continue,
                            }
                        };
                        let Some(e) = next else { break };
                        let e = match e {
                            Ok(e) => e,
                            Err(err) => {
                                let _ = tx
                                    .send(Err(BusError::Unreachable(format!(
                                        "the NATS watch stopped: {err}"
                                    ))))
                                    .await;
                                return;
                            }
                        };
                        let last_of_snapshot = in_snapshot && e.delta == 0;
                        if let Some(item) = bus.item(&e, in_snapshot) {
                            // Inside the snapshot every put carries its
                            // number, and only SnapshotEnd's is stored.
                            if tx.send(Ok(item)).await.is_err() {
                                return;
                            }
                        }
                        if last_of_snapshot {
                            // The snapshot's number is the revision the
                            // bucket had when it began: values written
                            // since may come again on a resume, which is
                            // harmless.
                            in_snapshot = false;
                            if tx.send(Ok(StreamItem::SnapshotEnd { seq })).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = tx
                        .send(Err(BusError::Unreachable("the NATS watch ended".into())))
                        .await;
                });
            }
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|i| (i, rx))
            });
            Ok(Box::pin(stream) as ItemStream)
        })
    }

    fn heartbeat<'a>(&'a self, beat: &'a Heartbeat) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let (client, _) = self.connection().await?;
            let address = client_address(&client);
            let body = serde_json::to_vec(&NodeBeat {
                beat: beat.clone(),
                group: self.group.clone(),
                address,
            })
            .expect("a heartbeat serializes");
            client
                .publish(self.options().beat_subject(&self.node), body.into())
                .await
                .map_err(|e| BusError::Unreachable(format!("sending a heartbeat: {e}")))
        })
    }
}

/// The address the NATS server sees this client at (it says so when the
/// connection opens).
fn client_address(client: &async_nats::Client) -> Option<IpAddr> {
    client
        .server_info()
        .client_ip
        .parse::<IpAddr>()
        .ok()
        .map(palisade_model::net::canonical_addr)
}

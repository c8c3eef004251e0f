//! A node's [`Bus`] over MQTT: the retained decisions as the stream,
//! intents as MQTT 5 requests to the hub.
//!
//! One connection serves everything; it is made on first use and remade
//! whenever it drops (the session is clean, so each new stream starts
//! with a snapshot of the retained decisions). Stream numbers are local to
//! the node: MQTT has none, and a node that reconnects always gets the
//! whole retained state, so nothing depends on them but their order.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use palisade_model::{Decision, Timestamp};
use palisade_wire::bus::{BoxFuture, ItemStream};
use palisade_wire::{
    Bus, BusError, BusReply, BusRequest, Envelope, Heartbeat, IntentResult, NodeBeat, StreamItem,
    keys,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, RetainForwardRule};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::MqttOptions;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Stream items buffered towards the agent (a large snapshot may wait).
const STREAM_BUFFER: usize = 65_536;

/// A node's connection to a palisade network on an MQTT broker.
#[derive(Clone)]
pub struct MqttBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: MqttOptions,
    node: String,
    group: Option<String>,
    client_id: String,
    conn: OnceCell<Conn>,
    seq: AtomicU64,
}

struct Conn {
    client: AsyncClient,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    pending: Mutex<HashMap<Bytes, oneshot::Sender<Bytes>>>,
    follower: Mutex<Option<Follower>>,
}

struct Follower {
    tx: mpsc::Sender<Result<StreamItem, BusError>>,
    marker: Bytes,
    /// The snapshot's number while it is being received.
    snapshot: Option<u64>,
}

impl MqttBus {
    /// A bus for node `node` (of `group`). Nothing is contacted until it is
    /// used.
    pub fn new(options: MqttOptions, node: &str, group: Option<String>) -> MqttBus {
        MqttBus {
            inner: Arc::new(Inner {
                client_id: format!("palisade-{}-{}", crate::topic_level(node), crate::nonce()),
                options,
                node: node.to_string(),
                group,
                conn: OnceCell::new(),
                // Above anything an earlier run of this node numbered.
                seq: AtomicU64::new(Timestamp::now().as_millis() * 1000),
            }),
        }
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn conn(&self) -> Result<&Conn, BusError> {
        self.inner
            .conn
            .get_or_try_init(|| async { self.start() })
            .await
    }

    /// Starts the connection task.
    fn start(&self) -> Result<Conn, BusError> {
        let o = &self.inner.options;
        let mqtt = o
            .client_options(&self.inner.client_id)
            .map_err(|e| BusError::Unreachable(e.to_string()))?;
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
        let shared = Arc::new(Shared::default());
        let (s, c, bus) = (shared.clone(), client.clone(), self.clone());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        info!(broker = %bus.inner.options.describe(), "connected to the MQTT broker");
                        backoff = Duration::from_millis(100);
                        s.connected.store(true, Ordering::SeqCst);
                        let results = bus.inner.options.results_topic(&bus.inner.node);
                        let _ = c.subscribe(results, QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => bus.incoming(&s, p).await,
                    Ok(_) => {}
                    Err(e) => {
                        if s.connected.swap(false, Ordering::SeqCst) {
                            warn!(error = %e, "the connection to the MQTT broker dropped");
                        } else {
                            debug!(error = %e, "cannot reach the MQTT broker");
                        }
                        let follower = s.follower.lock().unwrap().take();
                        if let Some(f) = follower {
                            let _ =
                                f.tx.send(Err(BusError::Unreachable(format!(
                                    "the connection to {} dropped: {e}",
                                    bus.inner.options.describe()
                                ))))
                                .await;
                        }
                        s.pending.lock().unwrap().clear();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(Conn { client, shared })
    }

    async fn connected(&self) -> Result<&Conn, BusError> {
        let conn = self.conn().await?;
        for _ in 0..50 {
            if conn.shared.connected.load(Ordering::SeqCst) {
                return Ok(conn);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BusError::Unreachable(format!(
            "cannot reach the MQTT broker at {}",
            self.inner.options.describe()
        )))
    }

    async fn incoming(&self, s: &Shared, p: rumqttc::v5::mqttbytes::v5::Publish) {
        let o = &self.inner.options;
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return;
        };
        if topic == o.results_topic(&self.inner.node) {
            if let Some(corr) = p
                .properties
                .as_ref()
                .and_then(|pr| pr.correlation_data.clone())
                && let Some(tx) = s.pending.lock().unwrap().remove(&corr)
            {
                let _ = tx.send(p.payload);
            }
            return;
        }
        let tx = {
            let mut f = s.follower.lock().unwrap();
            let Some(follower) = f.as_mut() else { return };
            let item = if topic == o.sync_topic(&self.inner.client_id) {
                if p.payload != follower.marker {
                    return;
                }
                let Some(seq) = follower.snapshot.take() else {
                    return;
                };
                StreamItem::SnapshotEnd { seq }
            } else if let Some(key) = o.decision_key(topic) {
                match self.item(key, &p.payload, follower.snapshot) {
                    Some(i) => i,
                    None => return,
                }
            } else {
                return;
            };
            (follower.tx.clone(), item)
        };
        let (sender, item) = tx;
        let _ = sender.send(Ok(item)).await;
    }

    fn item(&self, key: &str, payload: &[u8], snapshot: Option<u64>) -> Option<StreamItem> {
        let (action, target, group) = keys::parse_decision_key(key)?;
        if group.is_some() && group != self.inner.group {
            return None;
        }
        let seq = snapshot.unwrap_or_else(|| self.next_seq());
        if payload.is_empty() {
            return Some(StreamItem::Remove {
                seq,
                action,
                target,
                group,
            });
        }
        let decision: Decision = serde_json::from_slice(payload)
            .map_err(|e| debug!(key, error = %e, "an unreadable decision on the broker; skipped"))
            .ok()?;
        ((decision.action, decision.target) == (action, target))
            .then_some(StreamItem::Put { seq, decision })
    }

    /// The address this node reaches the broker from.
    fn local_address(&self) -> Option<IpAddr> {
        let o = &self.inner.options;
        let to = (o.host.as_str(), o.port).to_socket_addrs().ok()?.next()?;
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let sock = std::net::UdpSocket::bind(bind).ok()?;
        sock.connect(to).ok()?;
        Some(palisade_model::net::canonical_addr(
            sock.local_addr().ok()?.ip(),
        ))
    }
}

impl Bus for MqttBus {
    fn describe(&self) -> String {
        self.inner.options.describe()
    }

    fn send<'a>(
        &'a self,
        batch: &'a [Envelope],
    ) -> BoxFuture<'a, Result<Vec<IntentResult>, BusError>> {
        Box::pin(async move {
            let conn = self.connected().await?;
            let o = &self.inner.options;
            let body = serde_json::to_vec(&BusRequest {
                group: self.inner.group.clone(),
                address: self.local_address(),
                envelopes: batch.to_vec(),
            })
            .expect("a request serializes");
            let corr = Bytes::from(crate::nonce());
            let (tx, rx) = oneshot::channel();
            conn.shared.pending.lock().unwrap().insert(corr.clone(), tx);
            let props = PublishProperties {
                response_topic: Some(o.results_topic(&self.inner.node)),
                correlation_data: Some(corr.clone()),
                ..Default::default()
            };
            let sent = conn
                .client
                .publish_with_properties(
                    o.intents_topic(&self.inner.node),
                    QoS::AtLeastOnce,
                    false,
                    body,
                    props,
                )
                .await;
            if let Err(e) = sent {
                conn.shared.pending.lock().unwrap().remove(&corr);
                return Err(BusError::Unreachable(format!("sending intents: {e}")));
            }
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                Ok(Ok(a)) => a,
                Ok(Err(_)) => {
                    return Err(BusError::Unreachable(
                        "the connection to the broker dropped before the hub answered".into(),
                    ));
                }
                Err(_) => {
                    conn.shared.pending.lock().unwrap().remove(&corr);
                    return Err(BusError::Unreachable(format!(
                        "no palisade hub answered on {} within {REQUEST_TIMEOUT:?} (is `palisade hub --join mqtt://…` running?)",
                        o.describe()
                    )));
                }
            };
            match serde_json::from_slice::<BusReply>(&answer) {
                Ok(BusReply::Results(r)) => Ok(r),
                Ok(BusReply::Error(e)) => Err(BusError::Unreachable(format!(
                    "the hub could not apply this node's intents: {e}"
                ))),
                Err(e) => Err(BusError::Protocol(format!("the hub's answer: {e}"))),
            }
        })
    }

    fn follow(&self, _cursor: u64) -> BoxFuture<'_, Result<ItemStream, BusError>> {
        Box::pin(async move {
            let conn = self.connected().await?;
            let o = &self.inner.options;
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let seq = self.next_seq();
            let marker = Bytes::from(crate::nonce());
            tx.send(Ok(StreamItem::Snapshot { seq }))
                .await
                .expect("the receiver is here");
            *conn.shared.follower.lock().unwrap() = Some(Follower {
                tx,
                marker: marker.clone(),
                snapshot: Some(seq),
            });
            // The broker sends the retained decisions on subscribing, then
            // this client's own marker: the end of the snapshot.
            let sync = o.sync_topic(&self.inner.client_id);
            let filters = vec![
                Filter {
                    path: o.decisions_filter(),
                    qos: QoS::AtLeastOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                },
                Filter::new(sync.clone(), QoS::AtLeastOnce),
            ];
            let started = async {
                conn.client.subscribe_many(filters).await?;
                conn.client
                    .publish(sync, QoS::AtLeastOnce, false, marker)
                    .await
            };
            started
                .await
                .map_err(|e| BusError::Unreachable(format!("subscribing to decisions: {e}")))?;
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|i| (i, rx))
            });
            Ok(Box::pin(stream) as ItemStream)
        })
    }

    fn heartbeat<'a>(&'a self, beat: &'a Heartbeat) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let conn = self.connected().await?;
            let body = serde_json::to_vec(&NodeBeat {
                beat: beat.clone(),
                group: self.inner.group.clone(),
                address: self.local_address(),
            })
            .expect("a heartbeat serializes");
            conn.client
                .publish(
                    self.inner.options.beat_topic(&self.inner.node),
                    QoS::AtMostOnce,
                    false,
                    body,
                )
                .await
                .map_err(|e| BusError::Unreachable(format!("sending a heartbeat: {e}")))
        })
    }
}

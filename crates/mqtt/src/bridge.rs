//! The hub's side of an MQTT bus: reports in, retained decisions out.
//!
//! The hub keeps deciding with its own store and policy (a [`Decider`]);
//! the bridge takes nodes' intents (and vallumd-style bare addresses) from
//! the broker, answers each request, and mirrors the hub's decisions as
//! retained messages. On every (re)connection it reads what the broker
//! retains and sets it right (publishes what is missing or changed,
//! clears what is no longer decided), so a broker that restarted empty, or
//! a removal made while the broker was away, ends up right.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use palisade_model::{Decision, Net, Source, Span, Timestamp};
use palisade_policy::{Node, Role};

use palisade_wire::bus::BoxFuture;
use palisade_wire::{
    BusReply, BusRequest, Envelope, Intent, IntentResult, NodeBeat, StreamItem, keys,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, RetainForwardRule};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::MqttOptions;

/// Why a [`Decider`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeciderError {
    /// The hub is stopping; nodes send their intents again (they keep them
    /// queued) once it is back.
    #[error("the hub is shutting down; nodes send their intents again once it is back")]
    Stopping,
    /// The hub failed; its own error says what to do.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// What the bridge needs from the hub.
pub trait Decider: Send + Sync + 'static {
    /// Applies a node's intents with the hub's policy.
    fn decide(
        &self,
        node: Node,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'static, Result<Vec<IntentResult>, DeciderError>>;
    /// Every active decision: global ones and every group's allows.
    fn current(&self) -> BoxFuture<'static, Result<Vec<Decision>, DeciderError>>;
    /// The hub's decision stream from now on; `None` when the receiver fell
    /// behind and must start over from [`Decider::current`].
    fn changes(&self) -> mpsc::Receiver<Option<StreamItem>>;
    /// A node declared the address the broker sees it at (the policy
    /// decides whether it is allowed).
    fn node_address(&self, name: &str, group: Option<String>, address: IpAddr);
}

/// How the bridge runs.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The broker, and the palisade network on it.
    pub mqtt: MqttOptions,
    /// A topic whose every message is a bare address to ban (vallumd).
    pub vallumd_topic: Option<String>,
    /// How long a vallumd-style ban lasts.
    pub vallumd_ban: Span,
}

enum Cmd {
    /// What the broker retains, read after a (re)connection: set it right.
    Reconcile(HashMap<String, Bytes>),
}

/// Runs the bridge forever (until its task is dropped).
pub async fn run_bridge(options: BridgeOptions, decider: Arc<dyn Decider>) {
    let o = options.mqtt.clone();
    let client_id = format!("palisade-hub-{}", crate::nonce());
    let mqtt = match o.client_options(&client_id) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "cannot set up the MQTT bridge");
            return;
        }
    };
    let (client, mut eventloop) = AsyncClient::new(mqtt, 4096);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(4);
    let (resync_tx, mut resync_rx) = mpsc::channel::<()>(1);
    tokio::spawn(publisher(
        o.clone(),
        client.clone(),
        decider.clone(),
        cmd_rx,
        resync_tx,
    ));
    let sync_topic = o.sync_topic(&client_id);
    let mut collecting: Option<(Bytes, HashMap<String, Bytes>)> = None;
    let mut vallumd_ids = Timestamp::now().as_millis() * 1000;
    let mut backoff = Duration::from_millis(100);
    info!(broker = %o.describe(), "bridging the hub to the MQTT broker");
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            Some(()) = resync_rx.recv() => {
                collecting = Some(start_collecting(&client, &o, &sync_topic).await);
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                info!(broker = %o.describe(), "the hub is connected to the MQTT broker");
                let prefix = &o.topic_prefix;
                let mut filters = vec![Filter::new(format!("{prefix}/beat/+"), QoS::AtMostOnce)];
                for role in Role::ALL {
                    filters.push(Filter::new(
                        format!("{prefix}/{}/+", role.intents_word()),
                        QoS::AtLeastOnce,
                    ));
                }
                if let Some(t) = &options.vallumd_topic {
                    filters.push(Filter::new(t.clone(), QoS::AtLeastOnce));
                }
                let _ = client.subscribe_many(filters).await;
                collecting = Some(start_collecting(&client, &o, &sync_topic).await);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(topic) = std::str::from_utf8(&p.topic).map(String::from) else {
                    continue;
                };
                if let Some((marker, retained)) = &mut collecting {
                    if let Some(key) = o.decision_key(&topic) {
                        if p.payload.is_empty() {
                            retained.remove(key);
                        } else {
                            retained.insert(key.to_string(), p.payload.clone());
                        }
                        continue;
                    }
                    if topic == sync_topic && p.payload == *marker {
                        let (_, retained) = collecting.take().expect("collecting");
                        let _ = client.unsubscribe(o.decisions_filter()).await;
                        let _ = cmd_tx.send(Cmd::Reconcile(retained)).await;
                        continue;
                    }
                }
                let prefix = &o.topic_prefix;
                let intents = Role::ALL.into_iter().find_map(|role| {
                    topic
                        .strip_prefix(&format!("{prefix}/{}/", role.intents_word()))
                        .map(|node| (role, node))
                });
                if let Some((role, node)) = intents {
                    let reply = p.properties.as_ref().and_then(|pr| {
                        pr.response_topic
                            .clone()
                            .map(|t| (t, pr.correlation_data.clone()))
                    });
                    tokio::spawn(answer(
                        client.clone(),
                        decider.clone(),
                        (node.to_string(), role),
                        p.payload.clone(),
                        reply,
                    ));
                } else if let Some(node) = topic.strip_prefix(&format!("{prefix}/beat/")) {
                    if let Ok(beat) = serde_json::from_slice::<NodeBeat>(&p.payload)
                        && let Some(addr) = beat.address
                        && palisade_policy::check_node_name(node).is_ok()
                    {
                        decider.node_address(node, beat.group, addr);
                    }
                } else if options.vallumd_topic.as_deref() == Some(topic.as_str()) {
                    vallumd_ids += 1;
                    vallumd(&decider, &p.payload, options.vallumd_ban, vallumd_ids).await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "the MQTT bridge lost the broker; reconnecting");
                collecting = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Subscribes to the retained decisions and sends the marker that follows
/// them.
async fn start_collecting(
    client: &AsyncClient,
    o: &MqttOptions,
    sync_topic: &str,
) -> (Bytes, HashMap<String, Bytes>) {
    let marker = Bytes::from(crate::nonce());
    let filters = vec![
        Filter {
            path: o.decisions_filter(),
            qos: QoS::AtLeastOnce,
            // Not what this bridge publishes itself meanwhile.
            nolocal: true,
            preserve_retain: true,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        },
        Filter::new(sync_topic.to_string(), QoS::AtLeastOnce),
    ];
    let _ = client.subscribe_many(filters).await;
    let _ = client
        .publish(
            sync_topic.to_string(),
            QoS::AtLeastOnce,
            false,
            marker.clone(),
        )
        .await;
    (marker, HashMap::new())
}

/// Answers one node's request.
async fn answer(
    client: AsyncClient,
    decider: Arc<dyn Decider>,
    (name, role): (String, Role),
    payload: Bytes,
    reply: Option<(String, Option<Bytes>)>,
) {
    let answer = match (
        palisade_policy::check_node_name(&name),
        serde_json::from_slice::<BusRequest>(&payload),
    ) {
        (Err(e), _) => BusReply::Error(e.to_string()),
        (Ok(()), Ok(req)) => {
            // The declared address first: the node's allow is in place
            // before its intents are decided (the hub's writer keeps order).
            if let Some(addr) = req.address.filter(|_| role != Role::Reporter) {
                decider.node_address(&name, req.group.clone(), addr);
            }
            let node = Node::member(name, req.group, role);
            match decider.decide(node, req.envelopes).await {
                Ok(r) => BusReply::Results(r),
                Err(e) => BusReply::Error(e.to_string()),
            }
        }
        (Ok(()), Err(e)) => BusReply::Error(format!("an unreadable request: {e}")),
    };
    let Some((topic, corr)) = reply else { return };
    let props = PublishProperties {
        correlation_data: corr,
        ..Default::default()
    };
    let body = serde_json::to_vec(&answer).expect("a reply serializes");
    if let Err(e) = client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, body, props)
        .await
    {
        debug!(error = %e, "could not answer a node");
    }
}

/// A bare address on the vallumd topic: a ban for the whole network,
/// through the hub's policy like any report.
async fn vallumd(decider: &Arc<dyn Decider>, payload: &[u8], span: Span, id: u64) {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    let target = match text.parse::<Net>() {
        Ok(n) => n,
        Err(e) => {
            warn!(payload = %text.chars().take(80).collect::<String>(), error = %e, "not an address on the vallumd topic; ignored");
            return;
        }
    };
    let env = Envelope {
        id,
        at: Timestamp::now(),
        intent: Intent::Ban {
            target,
            span: Some(span),
            rule: Some("vallumd".into()),
            reason: Some("published on the vallumd topic".into()),
            evidence: vec![],
            source: Source::Report,
            list: None,
            actor: Some("vallumd".into()),
            unverified: false,
        },
    };
    // The bridge's own reporter: whoever may publish on the topic reports,
    // nothing more.
    let node = Node::internal("vallumd", Role::Reporter);
    match decider.decide(node, vec![env]).await {
        Ok(r) => debug!(target = %target, outcome = ?r.first().map(|r| r.outcome), "vallumd ban"),
        Err(e) => warn!(target = %target, error = %e, "could not apply a vallumd ban"),
    }
}

/// Publishes the hub's decisions as retained messages, in order.
async fn publisher(
    o: MqttOptions,
    client: AsyncClient,
    decider: Arc<dyn Decider>,
    mut cmds: mpsc::Receiver<Cmd>,
    resync: mpsc::Sender<()>,
) {
    let mut changes = decider.changes();
    // Nothing goes out before the broker's state is known.
    let mut ready = false;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Reconcile(retained)) => {
                    match reconcile(&o, &client, &decider, retained).await {
                        Ok(()) => ready = true,
                        Err(e) => {
                            warn!(error = %e, "could not set the broker's retained decisions right; trying again");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = resync.try_send(());
                        }
                    }
                }
                None => return,
            },
            change = changes.recv(), if ready => match change {
                Some(Some(item)) => publish_item(&o, &client, item).await,
                Some(None) => {
                    // Fell behind the hub: read everything again.
                    ready = false;
                    let _ = resync.try_send(());
                }
                None => return,
            },
        }
    }
}

async fn reconcile(
    o: &MqttOptions,
    client: &AsyncClient,
    decider: &Arc<dyn Decider>,
    mut retained: HashMap<String, Bytes>,
) -> Result<(), DeciderError> {
    let now = Timestamp::now();
    let current = decider.current().await?;
    let (mut published, mut cleared) = (0u64, 0u64);
    for d in current {
        if !d.is_active(now) {
            continue;
        }
        let key = keys::decision_key(d.action, &d.target, d.group.as_deref());
        let body = Bytes::from(serde_json::to_vec(&d).expect("a decision serializes"));
        let same = retained.remove(&key).is_some_and(|r| r == body);
        if !same {
            publish_decision(o, client, &key, &d, body, now).await;
            published += 1;
        }
    }
    for key in retained.into_keys() {
        clear(o, client, &key).await;
        cleared += 1;
    }
    info!(
        published,
        cleared, "the broker's retained decisions match the hub's"
    );
    Ok(())
}

async fn publish_item(o: &MqttOptions, client: &AsyncClient, item: StreamItem) {
    match item {
        StreamItem::Put { decision, .. } => {
            let key =
                keys::decision_key(decision.action, &decision.target, decision.group.as_deref());
            let body = Bytes::from(serde_json::to_vec(&decision).expect("a decision serializes"));
            publish_decision(o, client, &key, &decision, body, Timestamp::now()).await;
        }
        StreamItem::Remove {
            action,
            target,
            group,
            ..
        } => {
            clear(
                o,
                client,
                &keys::decision_key(action, &target, group.as_deref()),
            )
            .await
        }
        _ => {}
    }
}

async fn publish_decision(
    o: &MqttOptions,
    client: &AsyncClient,
    key: &str,
    d: &Decision,
    body: Bytes,
    now: Timestamp,
) {
    let expiry = crate::expiry_interval(d.expires, now);
    if expiry == Some(0) {
        clear(o, client, key).await;
        return;
    }
    let props = PublishProperties {
        message_expiry_interval: expiry,
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    if let Err(e) = client
        .publish_with_properties(o.decision_topic(key), QoS::AtLeastOnce, true, body, props)
        .await
    {
        warn!(key, error = %e, "could not publish a decision");
    }
}

/// An empty retained message: the broker forgets the decision, and every
/// subscriber hears it is lifted.
async fn clear(o: &MqttOptions, client: &AsyncClient, key: &str) {
    if let Err(e) = client
        .publish(o.decision_topic(key), QoS::AtLeastOnce, true, Bytes::new())
        .await
    {
        warn!(key, error = %e, "could not clear a decision");
    }
}

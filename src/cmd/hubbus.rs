//! The embedded hub as the decider behind an MQTT bridge: intents go to
//! its writer (its policy, its store), its live stream becomes retained
//! messages.

use std::net::IpAddr;
use std::sync::Arc;

use palisade_hub::Hub;
use palisade_hub::writer::Job;
use palisade_model::{Action, Decision, Timestamp};
use palisade_policy::Node;
use palisade_wire::bus::BoxFuture;
use palisade_wire::{Envelope, IntentResult, StreamItem};
use tokio::sync::{broadcast, mpsc, oneshot};

pub struct HubDecider {
    pub hub: Arc<Hub>,
}

impl palisade_mqtt::Decider for HubDecider {
    fn decide(
        &self,
        node: Node,
        envelopes: Vec<Envelope>,
    ) -> BoxFuture<'static, Result<Vec<IntentResult>, String>> {
        let hub = self.hub.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            hub.writer.send(Job::Intents {
                node,
                envelopes,
                reply: tx,
            })?;
            rx.await
                .map_err(|_| "the hub stopped before answering".to_string())?
        })
    }

    fn current(&self) -> BoxFuture<'static, Result<Vec<Decision>, String>> {
        let store = self.hub.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<Decision>, String> {
                let now = Timestamp::now();
                let r = store.read().map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                for (_, bytes) in r
                    .map_entries(palisade_hub::tables::GROUP_ALLOWS)
                    .map_err(|e| e.to_string())?
                {
                    if let Ok(d) = serde_json::from_slice::<Decision>(&bytes) {
                        out.push(d);
                    }
                }
                for action in [Action::Allow, Action::Ban] {
                    for d in r.iter(Some(action)).map_err(|e| e.to_string())? {
                        out.push(d.map_err(|e| e.to_string())?);
                    }
                }
                out.retain(|d| d.is_active(now));
                Ok(out)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn changes(&self) -> mpsc::Receiver<Option<StreamItem>> {
        let mut live = self.hub.live.subscribe();
        let (tx, rx) = mpsc::channel(16_384);
        tokio::spawn(async move {
            loop {
                let item = match live.recv().await {
                    Ok(e) => match serde_json::from_slice::<StreamItem>(&e.line) {
                        Ok(i) => Some(i),
                        Err(_) => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn node_address(&self, name: &str, group: Option<String>, address: IpAddr) {
        // The policy decides (pinning, node_networks); the writer keeps the
        // order, so this lands before the node's next intents.
        let _ = self.hub.writer.send(Job::NodeAddress {
            name: name.to_string(),
            group,
            address,
        });
    }
}

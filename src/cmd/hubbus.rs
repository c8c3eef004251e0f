//! The embedded hub as the decider behind an MQTT bridge: intents go to
//! its writer (its policy, its store), its live stream becomes retained
//! messages.

use std::net::IpAddr;
use std::sync::Arc;

use palisade_hub::Hub;
use palisade_hub::writer::{Job, WriterError};
use palisade_model::{Action, Decision, Timestamp};
use palisade_mqtt::DeciderError;
use palisade_policy::Node;
use palisade_store::StoreError;
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
    ) -> BoxFuture<'static, Result<Vec<IntentResult>, DeciderError>> {
        let hub = self.hub.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            hub.writer
                .send(Job::Intents {
                    node,
                    envelopes,
                    reply: tx,
                })
                .map_err(decider_error)?;
            rx.await
                .unwrap_or(Err(WriterError::Stopping))
                .map_err(decider_error)
        })
    }

    fn current(&self) -> BoxFuture<'static, Result<Vec<Decision>, DeciderError>> {
        let store = self.hub.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<Decision>, StoreError> {
                let now = Timestamp::now();
                let r = store.read()?;
                let mut out = Vec::new();
                for (_, bytes) in r.map_entries(palisade_hub::tables::GROUP_ALLOWS)? {
                    if let Ok(d) = serde_json::from_slice::<Decision>(&bytes) {
                        out.push(d);
                    }
                }
                for action in [Action::Allow, Action::Ban] {
                    for d in r.iter(Some(action))? {
                        out.push(d?);
                    }
                }
                out.retain(|d| d.is_active(now));
                Ok(out)
            })
            .await
            .map_err(|_| DeciderError::Stopping)?
            .map_err(|e| DeciderError::Failed(Box::new(e)))
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

/// The writer's refusal as the bridge reports it.
fn decider_error(e: WriterError) -> DeciderError {
    match e {
        WriterError::Stopping => DeciderError::Stopping,
        other => DeciderError::Failed(Box::new(other)),
    }
}

//! A node's [`Bus`] over NATS: intents as requests to the policy workers,
//! the decision stream read as [`crate::follow`] describes (a snapshot,
//! direct gets, then the changes the server republishes; no consumer).

use std::net::IpAddr;

use palisade_wire::bus::{BoxFuture, ItemStream};
use palisade_wire::{
    Bus, BusError, BusReply, BusRequest, Envelope, Heartbeat, IntentResult, NodeBeat,
};

use crate::{Lazy, NatsOptions};

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
            let (client, _) = self.connection().await?;
            let reader = crate::follow::Reader {
                client,
                options: self.lazy.shared_options(),
                group: self.group.clone(),
                connections: self.lazy.connections.clone(),
            };
            let rx = reader.follow(cursor).await?;
            Ok(palisade_wire::batched(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
            )))
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

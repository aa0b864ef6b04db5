//! Putting back a delivery no caller was handed: one of another shape, or
//! one the standing consumer held too long. A `basic.nack` with requeue
//! would count it in `x-delivery-count`, though no caller was handed it, so
//! a copy goes back instead (published with a confirm, carrying the earlier
//! hand-outs), and only then is the original acknowledged: a failure at any
//! point leaves the message on its queue, never lost.

use std::sync::Arc;

use tokio::time::Instant;

use super::{
    channel::TrackedChannel,
    properties::{self, Outgoing},
    publisher::Publish,
    pump::Held,
    slot::{OtherShape, Slot},
    RabbitMqMessageService,
};

impl RabbitMqMessageService {
    /// Publishes `copies` to `queue`: which of them the broker confirmed.
    async fn copies_confirmed(&self, queue: &str, copies: Vec<Outgoing>) -> Vec<bool> {
        let pending = async {
            let link = self.inner.put_back_link().await?;
            link.publisher().await?.publish(queue, copies).await
        };
        let Ok(Publish::Sent(pending)) = pending.await else {
            // Not sent (or on a channel retiring after a nack): the
            // originals are requeued instead.
            return Vec::new();
        };
        let deadline = Instant::now() + self.inner.data.settings.timeout;
        let mut confirmed = Vec::with_capacity(pending.len());
        for pending in pending {
            confirmed.push(pending.confirmed_by(deadline).await.is_ok());
        }
        confirmed
    }

    /// Publishes a copy of each delivery of another shape back to its queue
    /// and acknowledges the original; one whose copy is not confirmed is
    /// requeued with `basic.nack` instead (counted by the broker, logged).
    pub(super) async fn put_back_other_shapes(
        &self,
        slot: &Slot,
        epoch: u64,
        released: Vec<OtherShape>,
    ) {
        let now = chrono::Utc::now();
        let copies = released
            .iter()
            .map(|o| properties::other_shape_copy(&o.delivered, &o.properties, o.body.clone(), now))
            .collect();
        let confirmed = self.copies_confirmed(&slot.queue, copies).await;
        // Ready again once settled below, copied (acked) or requeued.
        let releases = released.len();
        for (i, other) in released.into_iter().enumerate() {
            let copied = confirmed.get(i).copied().unwrap_or(false);
            if !copied {
                tracing::debug!(
                    queue = slot.queue,
                    message_id = other.delivered.message_id,
                    "could not publish a copy of a message of another shape; requeued instead"
                );
            }
            // Acked once copied, else requeued: back on the queue either way.
            if let Some(channel) = slot.leases.take(epoch, other.tag) {
                if let Err(error) = channel.settle(other.tag, !copied).await {
                    tracing::debug!(
                        queue = slot.queue,
                        ?error,
                        "could not settle a delivery of another shape; its channel gave it back"
                    );
                }
            }
        }
        crate::telemetry::released(crate::Provider::RabbitMq, &slot.queue, releases);
    }

    /// Publishes a copy of each delivery the standing consumer held and no
    /// caller took, on `channel`'s queue: the deliveries, each with whether
    /// its copy was confirmed. Those of a consumer the broker cancelled
    /// went with their queue, and are left out: a copy would land in a
    /// queue created again under the same name. Settle them with
    /// [`settle_given_back`](Self::settle_given_back).
    pub(super) async fn copy_held(
        &self,
        slot: &Slot,
        channel: &TrackedChannel,
        mut held: Vec<Held>,
    ) -> Vec<(Held, bool)> {
        held.retain(|held| !channel.cancelled_by_broker(&held.tag));
        if held.is_empty() {
            return Vec::new();
        }
        let copies = held
            .iter()
            .map(|held| {
                let delivery = &held.delivery;
                let delivered = properties::delivered(&delivery.properties, delivery.tag);
                let since = delivered.other_shape_since;
                properties::uncounted_copy(
                    &delivered,
                    &delivery.properties,
                    delivery.body.clone(),
                    since,
                )
            })
            .collect();
        let confirmed = self.copies_confirmed(&slot.queue, copies).await;
        held.into_iter()
            .enumerate()
            .map(|(i, held)| (held, confirmed.get(i).copied().unwrap_or(false)))
            .collect()
    }

    /// Acknowledges the originals whose copies were confirmed, and requeues
    /// the others (counted by the broker, logged): back on the queue either way.
    pub(super) async fn settle_given_back(
        &self,
        slot: &Slot,
        channel: &Arc<TrackedChannel>,
        given: Vec<(Held, bool)>,
    ) {
        let (mut acked, mut requeued) = (Vec::new(), Vec::new());
        for (held, copied) in &given {
            match copied {
                true => acked.push(held.delivery.tag),
                false => requeued.push(held.delivery.tag),
            }
        }
        if !requeued.is_empty() {
            tracing::debug!(
                queue = slot.queue,
                count = requeued.len(),
                "could not publish copies of held deliveries; requeued instead"
            );
        }
        for (tags, requeue) in [(acked, false), (requeued, true)] {
            if let Err(error) = channel.settle_many(&tags, requeue).await {
                // The channel is gone, and the broker requeued them with it.
                tracing::debug!(
                    queue = slot.queue,
                    ?error,
                    "could not settle held deliveries"
                );
            }
        }
        // Their credit returns now, with the settles sent.
        drop(given);
    }
}

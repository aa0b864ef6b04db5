//! Putting back a delivery of another shape. A `basic.nack` with requeue
//! would count it in `x-delivery-count`, though no caller was handed it, so
//! a copy goes back instead (published with a confirm, carrying the earlier
//! hand-outs), and only then is the original acknowledged: a failure at any
//! point leaves the message on its queue, never lost.

use tokio::time::Instant;

use super::{
    properties,
    slot::{OtherShape, Slot},
    RabbitMqMessageService,
};

impl RabbitMqMessageService {
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
        let confirmed: Vec<bool> = match self.publish(&slot.queue, copies).await {
            Ok(pending) => {
                let deadline = Instant::now() + self.inner.data.settings.timeout;
                let mut confirmed = Vec::with_capacity(pending.len());
                for pending in pending {
                    confirmed.push(pending.confirmed_by(deadline).await.is_ok());
                }
                confirmed
            }
            Err(_) => Vec::new(),
        };
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
}

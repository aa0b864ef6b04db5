//! A consumer opened for one receive, and the deliveries it takes.

use std::{sync::Arc, time::Duration};

use amqprs::{channel::ConsumerMessage, BasicProperties};
use tokio::{sync::mpsc, time::Instant};

use super::{
    channel::TrackedChannel,
    errors,
    slot::{Slot, RECEIVE},
};
use crate::MessagingError;

/// One delivery taken by a receive, leased from the moment it arrived.
pub(super) struct Delivery {
    pub(super) tag: u64,
    pub(super) properties: BasicProperties,
    pub(super) body: Vec<u8>,
}

impl Delivery {
    pub(super) fn from_message(message: ConsumerMessage) -> Option<Self> {
        Some(Self {
            tag: message.deliver?.delivery_tag(),
            properties: message.basic_properties?,
            body: message.content?,
        })
    }
}

/// A consumer opened for one receive. Dropped before [`Consumer::close`]
/// (an abandoned receive), it cancels itself from a task and requeues what
/// arrives after.
pub(super) struct Consumer {
    pub(super) channel: Arc<TrackedChannel>,
    pub(super) tag: String,
    pub(super) deliveries: Option<mpsc::UnboundedReceiver<ConsumerMessage>>,
    /// Deliveries taken so far.
    pub(super) taken: Vec<Delivery>,
    pub(super) want: usize,
}

impl Consumer {
    pub(super) fn full(&self) -> bool {
        self.taken.len() >= self.want
    }

    /// Moves what amqprs has received into `taken`, leasing each.
    pub(super) fn drain(&mut self, slot: &Slot, epoch: u64, lease: Duration) -> bool {
        let Some(deliveries) = self.deliveries.as_mut() else {
            return false;
        };
        let mut open = true;
        loop {
            match deliveries.try_recv() {
                Ok(message) => take(&mut self.taken, slot, epoch, lease, message),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        open
    }

    pub(super) fn take(
        &mut self,
        slot: &Slot,
        epoch: u64,
        lease: Duration,
        message: ConsumerMessage,
    ) {
        take(&mut self.taken, slot, epoch, lease, message);
    }

    /// Waits for one delivery until `deadline`; false when none came.
    pub(super) async fn wait(
        &mut self,
        slot: &Slot,
        epoch: u64,
        lease: Duration,
        deadline: Instant,
    ) -> bool {
        let Some(deliveries) = self.deliveries.as_mut() else {
            return false;
        };
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(message)) => {
                take(&mut self.taken, slot, epoch, lease, message);
                true
            }
            _ => false,
        }
    }

    /// Ends the consumer. A full one has no credit, so nothing can follow and
    /// the cancel is not awaited; otherwise deliveries sent before
    /// `cancel-ok` are taken too.
    pub(super) async fn close(
        mut self,
        slot: &Slot,
        epoch: u64,
        lease: Duration,
    ) -> Result<Vec<Delivery>, MessagingError> {
        let full = self.full();
        let cancelled = self.channel.cancel_consumer(&self.tag, full).await;
        if cancelled.is_ok() && !full {
            self.drain(slot, epoch, lease);
        }
        self.deliveries = None;
        let taken = std::mem::take(&mut self.taken);
        match cancelled {
            Ok(_) => Ok(taken),
            // The channel died: its deliveries went back to the broker.
            Err(error) => Err(errors::call_error(RECEIVE, error, Some(&slot.queue))),
        }
    }
}

/// Leases a delivery as it arrives and keeps it in `taken`.
fn take(
    taken: &mut Vec<Delivery>,
    slot: &Slot,
    epoch: u64,
    lease: Duration,
    message: ConsumerMessage,
) {
    if let Some(delivery) = Delivery::from_message(message) {
        // The lease, and the broker's consumer_timeout, count from now.
        let now = Instant::now();
        slot.leases.grant(epoch, delivery.tag, now + lease, now);
        taken.push(delivery);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(mut deliveries) = self.deliveries.take() else {
            return;
        };
        let (channel, tag) = (Arc::clone(&self.channel), self.tag.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // What was taken is leased and comes back when the lease ends; what
        // arrives until cancel-ok has no lease and goes back at once.
        runtime.spawn(async move {
            if channel.cancel_consumer(&tag, false).await.is_err() {
                return;
            }
            while let Ok(message) = deliveries.try_recv() {
                if let Some(tag) = message.deliver.map(|d| d.delivery_tag()) {
                    let _ = channel.settle(tag, true).await;
                }
            }
        });
    }
}

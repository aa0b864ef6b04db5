//! Moving dead letters: a copy published with a confirm, then the original
//! acknowledged, so a failure at any point leaves the message leased in its
//! queue, never lost.

use tokio::time::Instant;

use super::{
    properties,
    slot::{DeadLetter, Slot},
    RabbitMqMessageService,
};
use crate::MessagingError;

impl RabbitMqMessageService {
    /// Moves dead letters to the dead-letter queue: each is published with a
    /// confirm, and only then is the original acknowledged, so a failure at
    /// any point leaves the message leased in its queue, never lost.
    pub(super) async fn move_dead_letters(&self, slot: &Slot, epoch: u64, dead: Vec<DeadLetter>) {
        let Some(dlq) = self.inner.dead_letters.dead_letter_queue(&slot.queue) else {
            return;
        };
        let mut waiting: Vec<DeadLetter> = dead;
        for attempt in 0..2 {
            let copies = waiting
                .iter()
                .map(|d| {
                    properties::dead_letter(&d.delivered, d.body.clone(), &slot.queue, d.reason)
                })
                .collect();
            let pending = match self.publish(&dlq, copies).await {
                Ok(pending) => pending,
                Err(error) => {
                    self.dead_letter_failed(&slot.queue, &waiting, &error);
                    return;
                }
            };
            let deadline = Instant::now() + self.inner.data.settings.timeout;
            let mut missing_queue = Vec::new();
            for (letter, pending) in waiting.into_iter().zip(pending) {
                match pending.confirmed_by(deadline).await {
                    Ok(_) => {
                        if let Some(channel) = slot.leases.take(epoch, letter.tag) {
                            if let Err(error) = channel.settle(letter.tag, false).await {
                                tracing::debug!(queue = slot.queue, ?error, "could not acknowledge a dead-lettered delivery; it will come back");
                            }
                        }
                        self.inner.dead_letters.log_move(
                            &slot.queue,
                            &letter.delivered.message_id,
                            letter.reason,
                        );
                        // Counted once its copy is confirmed on the DLQ.
                        crate::telemetry::dead_lettered(
                            crate::Provider::RabbitMq,
                            &slot.queue,
                            letter.reason.as_str(),
                        );
                    }
                    Err(MessagingError::QueueNotFound { .. }) if attempt == 0 => {
                        missing_queue.push(letter)
                    }
                    Err(error) => {
                        self.dead_letter_failed(&slot.queue, std::slice::from_ref(&letter), &error)
                    }
                }
            }
            if missing_queue.is_empty() {
                return;
            }
            // Someone deleted the dead-letter queue alone: declare it again.
            if let Err(error) = self.inner.admin.declare(&dlq).await {
                self.dead_letter_failed(&slot.queue, &missing_queue, &error);
                return;
            }
            waiting = missing_queue;
        }
    }

    fn dead_letter_failed(&self, queue: &str, letters: &[DeadLetter], error: &MessagingError) {
        for letter in letters {
            tracing::warn!(
                queue,
                message_id = letter.delivered.message_id,
                %error,
                "could not move a message to the dead-letter queue; it stays leased and is tried again when the lease ends"
            );
        }
    }
}

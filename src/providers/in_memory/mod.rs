//! The in-process provider: the same contract as the servers, with no server.

mod queue;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::Utc;

use self::queue::{Queue, Received};
use crate::{
    codec,
    dead_letter::{DeadLetterPolicy, Verdict},
    lease,
    queue_name::{validate_new_queue_name, validate_queue_name},
    receipt::Receipt,
    wait::Arrivals,
    CircuitBreaker, MessageId, MessagingError, MessagingService, Provider, QueueMessage,
    QueueStats, QueuedMessage, QueuedMessageMetadata, QueuesConfig, ReceiptHandle,
};

/// Queues held in this process, behind one mutex; nothing survives the process.
///
/// Clones share the same queues. Lease deadlines use tokio's clock, so tests
/// may pause and advance time.
#[derive(Debug, Clone)]
pub struct InMemoryMessageService {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    config: Arc<QueuesConfig>,
    dead_letters: Arc<DeadLetterPolicy>,
    arrivals: Arc<Arrivals>,
}

impl InMemoryMessageService {
    /// An empty set of queues with these settings, refused when they fail
    /// [`QueuesConfig::validate`].
    pub fn new(config: QueuesConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        Ok(Self {
            queues: Arc::default(),
            arrivals: Arc::default(),
            dead_letters: Arc::new((&config).into()),
            config: Arc::new(config),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // A panic while holding the lock cannot leave a queue half-updated
        // (every mutation is a single map operation), so poisoning is ignored.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_queue<R>(
        &self,
        queue: &str,
        f: impl FnOnce(&mut Queue) -> Result<R, MessagingError>,
    ) -> Result<R, MessagingError> {
        validate_queue_name(queue)?;
        let mut queues = self.lock();
        let q = queues
            .get_mut(queue)
            .ok_or_else(|| MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            })?;
        q.release_expired(tokio::time::Instant::now());
        f(q)
    }

    fn lease_of(&self, queue: &str, receipt: &ReceiptHandle) -> Result<Receipt, MessagingError> {
        validate_queue_name(queue)?;
        Receipt::decode(receipt, Provider::InMemory, queue)
    }

    fn lease_expired(queue: &str, receipt: &ReceiptHandle) -> MessagingError {
        MessagingError::LeaseExpired {
            queue: queue.to_owned(),
            receipt: receipt.to_string(),
        }
    }
}

impl MessagingService for InMemoryMessageService {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        Ok(true)
    }

    async fn create_queue(&self, queue: &str) -> Result<(), MessagingError> {
        validate_new_queue_name(queue, &self.config.dead_letter_queue_suffix)?;
        let mut queues = self.lock();
        queues.entry(queue.to_owned()).or_default();
        if let Some(dlq) = self.dead_letters.dead_letter_queue(queue) {
            queues.entry(dlq).or_default();
        }
        Ok(())
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let body = codec::encode(message, self.config.max_message_bytes)?;
        let id = self.with_queue(queue, |q| {
            Ok(MessageId::new(q.push(body.into()).to_string()))
        })?;
        self.arrivals.notify(queue);
        Ok(id)
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        if messages.is_empty() {
            validate_queue_name(queue)?;
            return Ok(Vec::new());
        }
        let bodies = codec::encode_all(messages, self.config.max_message_bytes)?;
        let ids = self.with_queue(queue, |q| {
            Ok(bodies
                .into_iter()
                .map(|body| MessageId::new(q.push(body.into()).to_string()))
                .collect())
        })?;
        self.arrivals.notify(queue);
        Ok(ids)
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        lease::check_max_messages(max_messages)?;
        let secs = lease::lease_secs(visibility_timeout, 1)?;
        validate_queue_name(queue)?;
        let mut queues = self.lock();
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_secs(secs);
        let q = queues
            .get_mut(queue)
            .ok_or_else(|| MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            })?;
        q.release_expired(now);
        let mut delivered = Vec::new();
        let mut dead = Vec::new();
        let mut released = Vec::new();
        while delivered.len() < max_messages {
            let Some(Received {
                id,
                body,
                enqueued_at,
                receive_count,
            }) = q.lease_next(deadline)
            else {
                break;
            };
            let decoded = codec::decode_as::<T>(&body);
            match self
                .dead_letters
                .verdict(queue, receive_count, decoded.decoding())
            {
                Verdict::Deliver => {
                    let codec::Decoded::Message(message) = decoded else {
                        continue;
                    };
                    let expires = Utc::now() + chrono::Duration::seconds(secs as i64);
                    delivered.push(QueuedMessage {
                        metadata: QueuedMessageMetadata {
                            message_id: MessageId::new(id.to_string()),
                            receipt_handle: Receipt {
                                id,
                                lease: u64::from(receive_count),
                            }
                            .encode(Provider::InMemory, queue),
                            enqueued_at,
                            receive_count,
                            visibility_timeout_expires: expires,
                        },
                        message,
                    })
                }
                Verdict::DeadLetter(reason) => {
                    let body = q.remove(id).unwrap_or(body);
                    dead.push((id, body, reason));
                }
                // After the loop, or this receive would lease it again.
                Verdict::Release => released.push(Receipt {
                    id,
                    lease: u64::from(receive_count),
                }),
                Verdict::Hold => self.dead_letters.log_held(queue, &id.to_string()),
            }
        }
        for receipt in &released {
            q.extend_lease(*receipt, now);
        }
        if !released.is_empty() {
            self.arrivals.notify(queue);
        }
        let dlq_name = self.dead_letters.dead_letter_queue(queue);
        if let (false, Some(dlq_name)) = (dead.is_empty(), dlq_name) {
            // Recreated if it was deleted on its own: a dead letter is never dropped.
            let dlq = queues.entry(dlq_name.clone()).or_default();
            for (id, body, reason) in dead {
                dlq.push(body);
                self.dead_letters.log_move(queue, &id.to_string(), reason);
            }
            drop(queues);
            self.arrivals.notify(&dlq_name);
        }
        Ok(delivered)
    }

    async fn delete_message(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let lease = self.lease_of(queue, receipt)?;
        self.with_queue(queue, |q| {
            q.delete_leased(lease)
                .then_some(())
                .ok_or_else(|| Self::lease_expired(queue, receipt))
        })
    }

    async fn change_message_visibility(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        let secs = lease::lease_secs(visibility_timeout, 0)?;
        let lease = self.lease_of(queue, receipt)?;
        self.with_queue(queue, |q| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            q.extend_lease(lease, deadline)
                .then_some(())
                .ok_or_else(|| Self::lease_expired(queue, receipt))
        })?;
        if secs == 0 {
            self.arrivals.notify(queue);
        }
        Ok(())
    }

    async fn get_queue_stats(&self, queue: &str) -> Result<QueueStats, MessagingError> {
        validate_queue_name(queue)?;
        let now = tokio::time::Instant::now();
        let mut queues = self.lock();
        let dead_letter_count = self
            .dead_letters
            .dead_letter_queue(queue)
            .and_then(|dlq| queues.get(&dlq))
            .map(|dlq| dlq.len() as u64);
        let q = queues
            .get_mut(queue)
            .ok_or_else(|| MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            })?;
        q.release_expired(now);
        Ok(QueueStats {
            queue_name: queue.to_owned(),
            message_count: q.ready_len() as u64,
            in_flight_count: Some(q.leased_len() as u64),
            oldest_message_age_seconds: q
                .oldest_enqueued_at()
                .map(|at| (Utc::now() - at).num_seconds()),
            dead_letter_count,
        })
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64, MessagingError> {
        self.with_queue(queue, |q| Ok(q.purge_ready()))
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), MessagingError> {
        validate_queue_name(queue)?;
        let mut queues = self.lock();
        queues.remove(queue);
        if let Some(dlq) = self.dead_letters.dead_letter_queue(queue) {
            queues.remove(&dlq);
        }
        Ok(())
    }

    fn provider(&self) -> Provider {
        Provider::InMemory
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::IN_MEMORY
    }

    fn queues_config(&self) -> &QueuesConfig {
        &self.config
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        None
    }

    fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }
}

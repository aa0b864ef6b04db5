//! The in-process provider: the same contract as the servers, with no server.

// About 450 lines: the unit tests of waits and arrival signals sit at the end.

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
    dead_letter::DeadLetterPolicy,
    delivery::{self, Outcome},
    lease,
    queue_name::QueueName,
    receipt::Receipt,
    service::provide::{Shutdown, Teardown},
    wait::Arrivals,
    CircuitBreaker, MessageId, MessagingError, Provider, QueueMessage, QueueStats, QueuedMessage,
    QueuesConfig, ReceiptHandle, SendOptions,
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
    shutdown: Arc<Shutdown>,
}

impl InMemoryMessageService {
    /// An empty set of queues with these settings, refused when they fail
    /// [`QueuesConfig::validate`].
    pub fn new(config: QueuesConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        Ok(Self {
            queues: Arc::default(),
            arrivals: Arc::default(),
            shutdown: Arc::default(),
            dead_letters: Arc::new((&config).into()),
            config: Arc::new(config),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // A panic while holding the lock cannot leave a queue half-updated
        // (every mutation is a single map operation), so poisoning is ignored.
        crate::sync::lock(&self.queues)
    }

    fn with_queue<R>(
        &self,
        queue: &str,
        f: impl FnOnce(&mut Queue) -> Result<R, MessagingError>,
    ) -> Result<R, MessagingError> {
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
        Receipt::decode(receipt, Provider::InMemory, queue)
    }

    fn lease_expired(queue: &str, receipt: &ReceiptHandle) -> MessagingError {
        MessagingError::LeaseExpired {
            queue: queue.to_owned(),
            receipt: receipt.to_string(),
        }
    }
}

impl crate::service::provide::Provide for InMemoryMessageService {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        Ok(true)
    }

    async fn create_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let mut queues = self.lock();
        queues.entry(queue.to_owned()).or_default();
        if let Some(dlq) = self.dead_letters.dead_letter_queue(queue) {
            queues.entry(dlq).or_default();
        }
        Ok(())
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let queue = queue.as_str();
        let body = codec::encode(message, self.config.max_message_bytes)?;
        let id = self.with_queue(queue, |q| {
            Ok(MessageId::new(q.push(body.into()).to_string()))
        })?;
        self.arrivals.notify(queue, 1);
        Ok(id)
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        let queue = queue.as_str();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let bodies = codec::encode_all(messages, self.config.max_message_bytes)?;
        let ids: Vec<MessageId> = self.with_queue(queue, |q| {
            Ok(bodies
                .into_iter()
                .map(|body| MessageId::new(q.push(body.into()).to_string()))
                .collect())
        })?;
        self.arrivals.notify(queue, ids.len());
        Ok(ids)
    }

    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
        options: &SendOptions,
    ) -> Result<MessageId, MessagingError> {
        let ids = self
            .send_batch_with(queue, std::slice::from_ref(message), options)
            .await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| MessagingError::invalid_argument("no message was sent"))
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
        options: &SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        let queue = queue.as_str();
        let bodies = codec::encode_all_with_headers(
            messages,
            self.config.max_message_bytes,
            options.header_bytes(),
        )?;
        // Rounded up to the millisecond, the granularity this provider states.
        let delay = options.delay_duration();
        let delay = Duration::from_millis(
            u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
        );
        let due = (!delay.is_zero())
            .then(|| tokio::time::Instant::now().checked_add(delay))
            .flatten();
        let ids: Vec<MessageId> = self.with_queue(queue, |q| {
            Ok(bodies
                .into_iter()
                .map(|body| {
                    let id = q.push_with(body.into(), options.header_map().clone(), due);
                    MessageId::new(id.to_string())
                })
                .collect())
        })?;
        if due.is_none() {
            self.arrivals.notify(queue, ids.len());
        }
        Ok(ids)
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let queue = queue.as_str();
        lease::check_max_messages(max_messages)?;
        let secs = lease::lease_secs(visibility_timeout, 1)?;
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
        // At most `max_messages` reads: one of another shape takes its place.
        for _ in 0..max_messages {
            let Some(Received {
                id,
                body,
                headers,
                enqueued_at,
                receive_count,
                other_shape_since,
            }) = q.lease_next(deadline)
            else {
                break;
            };
            let receipt = Receipt {
                scope: q.incarnation(),
                id,
                lease: u64::from(receive_count),
            };
            let outcome = delivery::assemble::<T>(
                &self.dead_letters,
                delivery::Delivery {
                    queue,
                    provider: Provider::InMemory,
                    receipt,
                    message_id: id.to_string(),
                    enqueued_at,
                    receive_count,
                    lease_ends: delivery::lease_ends(secs),
                    lease: Duration::from_secs(secs),
                    other_shape_for: other_shape_since
                        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
                    body: &body,
                    headers: headers.clone(),
                },
            );
            match outcome {
                Outcome::Deliver(message) => delivered.push(message),
                Outcome::DeadLetter(reason) => {
                    let (body, headers) = q.remove(id).unwrap_or((body, headers));
                    dead.push((id, body, headers, reason));
                }
                // After the loop, or this receive would lease it again.
                Outcome::Release => released.push(receipt),
                Outcome::Hold => {}
            }
        }
        // Ready again for receivers that read it, waking no one: a waiter
        // woken by its own release would read it again at once.
        let releases = released.len();
        for receipt in released {
            q.release_other_shape(receipt, now);
        }
        crate::telemetry::released(Provider::InMemory, queue, releases);
        let dlq_name = self.dead_letters.dead_letter_queue(queue);
        if let (false, Some(dlq_name)) = (dead.is_empty(), dlq_name) {
            // Recreated if it was deleted on its own: a dead letter is never dropped.
            let dlq = queues.entry(dlq_name.clone()).or_default();
            let moved = dead.len();
            for (id, body, headers, reason) in dead {
                dlq.push_with(body, headers, None);
                self.dead_letters.log_move(queue, &id.to_string(), reason);
                crate::telemetry::dead_lettered(Provider::InMemory, queue, reason.as_str());
            }
            drop(queues);
            self.arrivals.notify(&dlq_name, moved);
        }
        Ok(delivered)
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let signal = &self.arrivals;
        crate::wait::receive_wait(self, signal, queue, max_messages, visibility_timeout, wait).await
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let lease = self.lease_of(queue, receipt)?;
        self.with_queue(queue, |q| {
            q.delete_leased(lease)
                .then_some(())
                .ok_or_else(|| Self::lease_expired(queue, receipt))
        })
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        let queue = queue.as_str();
        let leases = Receipt::decode_all(receipts, Provider::InMemory, queue);
        if !leases.iter().any(Result::is_ok) {
            return Ok(leases.into_iter().map(|lease| lease.map(drop)).collect());
        }
        // One lock for the batch; each receipt in turn, as delete_message would.
        self.with_queue(queue, |q| {
            Ok(leases
                .into_iter()
                .zip(receipts)
                .map(|(lease, receipt)| {
                    q.delete_leased(lease?)
                        .then_some(())
                        .ok_or_else(|| Self::lease_expired(queue, receipt))
                })
                .collect())
        })
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let secs = lease::lease_secs(visibility_timeout, 0)?;
        let lease = self.lease_of(queue, receipt)?;
        self.with_queue(queue, |q| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            q.extend_lease(lease, deadline)
                .then_some(())
                .ok_or_else(|| Self::lease_expired(queue, receipt))
        })?;
        if secs == 0 {
            self.arrivals.notify(queue, 1);
        }
        Ok(())
    }

    async fn put_back_uncounted(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let lease = self.lease_of(queue, receipt)?;
        self.with_queue(queue, |q| {
            q.put_back_uncounted(lease, None)
                .then_some(())
                .ok_or_else(|| Self::lease_expired(queue, receipt))
        })?;
        self.arrivals.notify(queue, 1);
        Ok(())
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats, MessagingError> {
        let queue = queue.as_str();
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
            delayed_count: Some(q.delayed_len() as u64),
            migration: None,
        })
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64, MessagingError> {
        let queue = queue.as_str();
        self.with_queue(queue, |q| Ok(q.purge_ready()))
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let dlq = self.dead_letters.dead_letter_queue(queue);
        {
            let mut queues = self.lock();
            queues.remove(queue);
            if let Some(dlq) = &dlq {
                queues.remove(dlq);
            }
        }
        // Waiters find the queue gone and leave, and their signal with them.
        self.arrivals.notify_all(queue);
        if let Some(dlq) = &dlq {
            self.arrivals.notify_all(dlq);
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

    fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Nothing to let go of: the queues live as long as a clone does, and
    /// every clone is closed (C33).
    fn teardown(&self) -> Teardown {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;
    use crate::{queue_name::validate_queue_name, MessagingService, SimpleStepMessage};

    /// A random name that `validate_queue_name` rejects.
    fn invalid_name(rng: &mut StdRng) -> String {
        const CHARS: &[char] = &['a', 'z', '_', '0', '9', 'A', 'Z', '-', ' ', '.', 'é', '\''];
        let len = rng.gen_range(0..60);
        let mut name: String = (0..len)
            .map(|_| CHARS[rng.gen_range(0..CHARS.len())])
            .collect();
        if validate_queue_name(&name).is_ok() {
            name.insert(0, 'X');
        }
        name
    }

    /// A random valid name, of a queue that does not exist.
    fn missing_name(rng: &mut StdRng) -> String {
        format!("missing_{:016x}", rng.gen::<u64>())
    }

    #[tokio::test]
    async fn random_names_leave_no_signal_behind() {
        let service = InMemoryMessageService::new(QueuesConfig::default()).expect("valid config");
        let step = crate::conformance::step();
        let vt = Duration::from_secs(30);
        let mut rng = StdRng::seed_from_u64(11);
        for i in 0..100_000 {
            let name = if i % 2 == 0 {
                invalid_name(&mut rng)
            } else {
                missing_name(&mut rng)
            };
            let waited = service
                .receive_messages_wait::<SimpleStepMessage>(&name, 1, vt, Duration::ZERO)
                .await;
            assert!(waited.is_err(), "{name:?}: {waited:?}");
            let _ = service.send_message(&name, &step).await;
            let _ = service
                .receive_messages::<SimpleStepMessage>(&name, 1, vt)
                .await;
            let _ = service.get_queue_stats(&name).await;
            let _ = service.purge_queue(&name).await;
            let _ = service.delete_queue(&name).await;
        }
        assert_eq!(service.arrivals.len(), 0);
        assert!(service.lock().is_empty(), "no queue was created");
    }

    #[tokio::test]
    async fn a_signal_lasts_while_its_waiters_do() {
        let service = InMemoryMessageService::new(QueuesConfig::default()).expect("valid config");
        service.create_queue("held").await.unwrap();
        let vt = Duration::from_secs(30);
        // Waits that end with a message, and waits dropped mid-way.
        for _ in 0..1_000 {
            let waiting =
                service.receive_messages_wait::<SimpleStepMessage>("held", 1, vt, Duration::MAX);
            assert!(tokio::time::timeout(Duration::from_millis(1), waiting)
                .await
                .is_err());
            assert_eq!(service.arrivals.len(), 0, "a dropped wait left its signal");
        }
        let a = tokio::spawn({
            let service = service.clone();
            async move {
                service
                    .receive_messages_wait::<SimpleStepMessage>("held", 1, vt, Duration::MAX)
                    .await
            }
        });
        let b = tokio::spawn({
            let service = service.clone();
            async move {
                service
                    .receive_messages_wait::<SimpleStepMessage>("held", 1, vt, Duration::MAX)
                    .await
            }
        });
        while service.arrivals.len() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(service.arrivals.len(), 1, "one signal per queue");
        service
            .send_batch(
                "held",
                &[crate::conformance::step(), crate::conformance::step()],
            )
            .await
            .unwrap();
        assert_eq!(a.await.unwrap().unwrap().len(), 1);
        assert_eq!(b.await.unwrap().unwrap().len(), 1);
        assert_eq!(service.arrivals.len(), 0);
    }

    #[tokio::test]
    async fn deleting_a_queue_ends_its_waits_and_its_signal() {
        // A poll interval far longer than the test: only the delete can wake.
        let service = InMemoryMessageService::new(QueuesConfig {
            wait_poll_interval_ms: 3_600_000,
            ..QueuesConfig::default()
        })
        .expect("valid config");
        service.create_queue("doomed").await.unwrap();
        let waiting = tokio::spawn({
            let service = service.clone();
            async move {
                service
                    .receive_messages_wait::<SimpleStepMessage>(
                        "doomed",
                        1,
                        Duration::from_secs(30),
                        Duration::MAX,
                    )
                    .await
            }
        });
        while service.arrivals.len() == 0 {
            tokio::task::yield_now().await;
        }
        service.delete_queue("doomed").await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the delete woke the waiter")
            .unwrap();
        assert!(
            matches!(ended, Err(MessagingError::QueueNotFound { .. })),
            "{ended:?}"
        );
        assert_eq!(service.arrivals.len(), 0);
    }
}

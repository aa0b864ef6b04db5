//! `MigratingMessageService`: sends to the target, receives from both.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{MigrationSide, MigrationStats};
use crate::{
    lease,
    queue_name::QueueName,
    receipt,
    service::provide::{Provide, Shutdown, Teardown},
    sync::lock,
    Capabilities, CircuitBreaker, MessageBackend, MessageId, MessagingConfig, MessagingError,
    Provider, QueueMessage, QueueStats, QueuedMessage, QueuesConfig, ReceiptHandle,
};

/// A [`MessageBackend::Migrating`](crate::MessageBackend::Migrating): the
/// provider of `provider` (the source) and that of `[migration] to` (the
/// target), with the same `[queues]`, retry and breaker settings.
///
/// - Sends go to the target.
/// - A receive takes from the source first, then fills up from the target.
///   A source found with nothing ready is looked at again after
///   `queues.wait_poll_interval_ms` (so once it is drained a receive costs
///   what it costs on the target alone); a waiting receive with nothing on
///   the source waits on the target and looks at the source again each time
///   that interval ends. A message reaching the source meanwhile (sent or
///   released by a process still on the old configuration) is so taken
///   within about one interval, by a receive or a wait. A transient source
///   failure does not stop receives from the target: it is logged and the
///   source is left for the next receive.
/// - Receipts are the issuing provider's own, so `delete_message` and
///   `change_message_visibility` reach the side that issued them, receipts
///   from before the switch included.
/// - `create_queue`, `delete_queue` and `purge_queue` act on both sides;
///   a queue exists when it exists on the target (one missing on the source
///   counts as empty there).
/// - Stats are the sums, with each side in
///   [`QueueStats::migration`](crate::QueueStats::migration);
///   `health_check` is `true` when both sides answer.
/// - [`capabilities`](crate::MessagingService::capabilities) are the weaker
///   of the two; [`provider`](crate::MessagingService::provider) and
///   [`circuit_breaker`](crate::MessagingService::circuit_breaker) are the
///   target's.
#[derive(Debug, Clone)]
pub struct MigratingMessageService {
    source: MigrationSide,
    target: MigrationSide,
    /// Per queue, until when the source is not looked at again: it had
    /// nothing ready then. Cleared by a receive that finds something.
    source_idle: Arc<Mutex<HashMap<String, Instant>>>,
    shutdown: Arc<Shutdown>,
}

/// Queues whose idle source is remembered at most; past it the memory
/// starts over (it only saves round trips).
const IDLE_QUEUES: usize = 10_000;

impl MigratingMessageService {
    /// Connects both sides of `config`'s `[migration]`. A config without
    /// that section, or one failing [`MessagingConfig::validate`], is refused.
    pub async fn connect(config: &MessagingConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        let to = config
            .migration
            .as_ref()
            .ok_or_else(|| MessagingError::Config("migration.to is required".into()))?
            .to;
        let (source, target) = tokio::join!(
            MigrationSide::connect(config, config.provider),
            MigrationSide::connect(config, to)
        );
        Ok(Self {
            source: source?,
            target: target?,
            source_idle: Arc::default(),
            shutdown: Arc::default(),
        })
    }

    /// A migration between two backends already connected, sharing their
    /// connections: a process that switches in place this way keeps the
    /// leases it holds usable. That matters for RabbitMQ, where a delivery
    /// can only be acknowledged on the connection that received it (a
    /// RabbitMQ receipt is `LeaseExpired` in any other process, migrating or
    /// not); PGMQ receipts work in every process. Both must be PGMQ or
    /// RabbitMQ backends of different providers, else `Config`.
    pub fn from_backends(
        source: MessageBackend,
        target: MessageBackend,
    ) -> Result<Self, MessagingError> {
        let side = |backend: MessageBackend| match backend {
            MessageBackend::Pgmq(pgmq) => Ok(MigrationSide::Pgmq(pgmq)),
            MessageBackend::RabbitMq(rabbitmq) => Ok(MigrationSide::RabbitMq(rabbitmq)),
            other => Err(MessagingError::Config(format!(
                "a migration is between a pgmq and a rabbitmq backend, not {}",
                crate::MessagingService::provider(&other)
            ))),
        };
        let (source, target) = (side(source)?, side(target)?);
        if source.provider() == target.provider() {
            return Err(MessagingError::Config(format!(
                "a migration needs two providers (both are {})",
                source.provider()
            )));
        }
        Ok(Self {
            source,
            target,
            source_idle: Arc::default(),
            shutdown: Arc::default(),
        })
    }

    /// The provider migrated from.
    pub fn source(&self) -> &MigrationSide {
        &self.source
    }

    /// The provider migrated to.
    pub fn target(&self) -> &MigrationSide {
        &self.target
    }

    /// The side that issued `receipt`, by its first field.
    fn issuer(&self, receipt: &ReceiptHandle) -> Result<&MigrationSide, MessagingError> {
        let tag = receipt::issuer(receipt);
        [&self.target, &self.source]
            .into_iter()
            .find(|side| side.provider().tag() == tag)
            .ok_or_else(|| MessagingError::InvalidReceipt {
                receipt: receipt.as_str().chars().take(128).collect(),
                reason: "issued by neither provider of this migration",
            })
    }

    /// Up to `max` messages from the source: none when the queue is missing
    /// there, or when the source fails transiently (logged; the target
    /// keeps serving). A source found with nothing ready is looked at again
    /// only after `queues.wait_poll_interval_ms`: once it is drained, a
    /// receive costs one round trip to the target, as on a plain backend.
    async fn take_from_source<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let name = queue.as_str();
        let slice = self.queues_config().wait_poll_interval();
        {
            // One look at a time per queue: receives that come meanwhile go
            // straight to the target instead of queueing behind it.
            let mut idle = lock(&self.source_idle);
            if idle.get(name).is_some_and(|until| Instant::now() < *until) {
                return Ok(Vec::new());
            }
            if idle.len() >= IDLE_QUEUES {
                idle.clear();
            }
            idle.insert(name.to_owned(), Instant::now() + slice);
        }
        let got = match Self::on_source(self.source.receive_messages(queue, max, lease).await) {
            Ok(got) => got.unwrap_or_default(),
            Err(e) if e.is_transient() => {
                tracing::warn!(queue = name, error = %e,
                    "migration source unavailable; receiving from the target only");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut idle = lock(&self.source_idle);
        if got.is_empty() {
            idle.insert(name.to_owned(), Instant::now() + slice);
        } else {
            // Messages there: the next receive looks again at once.
            idle.remove(name);
        }
        Ok(got)
    }

    /// Tops `got` (from the source) up to `max` from the target, without
    /// waiting. A target failure after source messages were leased returns
    /// those (logged) rather than leaving their leases to run out.
    async fn fill_from_target<T: QueueMessage>(
        &self,
        queue: &QueueName,
        mut got: Vec<QueuedMessage<T>>,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        if got.len() >= max {
            return Ok(got);
        }
        match self
            .target
            .receive_messages(queue, max - got.len(), lease)
            .await
        {
            Ok(more) => got.extend(more),
            Err(e) if !got.is_empty() => {
                tracing::warn!(queue = queue.as_str(), error = %e,
                    "migration target receive failed; returning the source's messages");
            }
            Err(e) => return Err(e),
        }
        Ok(got)
    }

    /// How long until the source of `queue` is looked at again (at most one
    /// `queues.wait_poll_interval_ms`).
    fn until_next_look(&self, queue: &str) -> Duration {
        let poll = self.queues_config().wait_poll_interval();
        lock(&self.source_idle)
            .get(queue)
            .map_or(poll, |until| {
                until.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), poll)
    }

    /// A source result where a missing queue is `None`.
    fn on_source<T>(result: Result<T, MessagingError>) -> Result<Option<T>, MessagingError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(MessagingError::QueueNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `error`, for one receipt of a side whose batch failed as a whole (the
/// error type is not `Clone`): a missing queue stays `QueueNotFound`, and
/// anything else becomes a `Provider` error of that side (`provider`) with
/// the same text and the same answer to whether a retry can help.
fn each(error: &MessagingError, provider: Provider) -> MessagingError {
    match error {
        MessagingError::QueueNotFound { queue } => MessagingError::QueueNotFound {
            queue: queue.clone(),
        },
        other => MessagingError::Provider {
            provider,
            operation: "delete_messages",
            message: other.to_string(),
            transient: other.is_transient(),
            source: None,
        },
    }
}

impl Provide for MigratingMessageService {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        let (source, target) = tokio::join!(self.source.health_check(), self.target.health_check());
        Ok(source? && target?)
    }

    async fn create_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        self.target.create_queue(queue).await?;
        self.source.create_queue(queue).await
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        self.target.send_message(queue, message).await
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        self.target.send_batch(queue, messages).await
    }

    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
        options: &crate::SendOptions,
    ) -> Result<MessageId, MessagingError> {
        self.target.send_message_with(queue, message, options).await
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
        options: &crate::SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        self.target.send_batch_with(queue, messages, options).await
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        lease::check_max_messages(max_messages)?;
        let got = self
            .take_from_source(queue, max_messages, visibility_timeout)
            .await?;
        self.fill_from_target(queue, got, max_messages, visibility_timeout)
            .await
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        lease::check_max_messages(max_messages)?;
        // Old processes may still send to (or release leases on) the source,
        // so the wait looks there each time its idle interval ends, and waits
        // on the target, where sends go, in between. A RabbitMQ target's
        // waiting consumer is restarted at each look (see C28's exception).
        let deadline = crate::wait::deadline(wait);
        loop {
            let got = self
                .take_from_source(queue, max_messages, visibility_timeout)
                .await?;
            if !got.is_empty() {
                return self
                    .fill_from_target(queue, got, max_messages, visibility_timeout)
                    .await;
            }
            let now = tokio::time::Instant::now();
            let slice = self.until_next_look(queue.as_str());
            let slice = match deadline {
                Some(deadline) => deadline.saturating_duration_since(now).min(slice),
                None => slice,
            };
            let got = self
                .target
                .receive_messages_wait(queue, max_messages, visibility_timeout, slice)
                .await?;
            let over = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if !got.is_empty() || over {
                return Ok(got);
            }
        }
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        self.issuer(receipt)?.delete_message(queue, receipt).await
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        // Each side settles the receipts it issued, in one call; a receipt
        // neither issued is `InvalidReceipt` without I/O.
        let mut outcomes: Vec<Option<Result<(), MessagingError>>> =
            receipts.iter().map(|_| None).collect();
        let mut settled_any = false;
        for side in [&self.source, &self.target] {
            let mine: Vec<usize> = (0..receipts.len())
                .filter(|&i| matches!(self.issuer(&receipts[i]), Ok(s) if std::ptr::eq(s, side)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let batch: Vec<ReceiptHandle> = mine.iter().map(|&i| receipts[i].clone()).collect();
            match side.delete_messages(queue, &batch).await {
                Ok(results) => {
                    for (i, result) in mine.into_iter().zip(results) {
                        outcomes[i] = Some(result);
                    }
                    settled_any = true;
                }
                // Nothing settled yet: the whole call failed, as on one provider.
                Err(error) if !settled_any => return Err(error),
                // The other side settled its receipts: this side's each fail.
                Err(error) => {
                    for i in mine {
                        outcomes[i] = Some(Err(each(&error, side.provider())));
                    }
                }
            }
        }
        Ok(receipts
            .iter()
            .zip(outcomes)
            .map(|(receipt, outcome)| outcome.unwrap_or_else(|| self.issuer(receipt).map(|_| ())))
            .collect())
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        self.issuer(receipt)?
            .change_message_visibility(queue, receipt, visibility_timeout)
            .await
    }

    async fn put_back_uncounted(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        self.issuer(receipt)?
            .put_back_uncounted(queue, receipt)
            .await
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats, MessagingError> {
        let (source, target) = tokio::join!(
            self.source.get_queue_stats(queue),
            self.target.get_queue_stats(queue)
        );
        Ok(MigrationStats::combine(
            self.source.provider(),
            Self::on_source(source)?,
            self.target.provider(),
            target?,
        ))
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64, MessagingError> {
        let target = self.target.purge_queue(queue).await?;
        let source = Self::on_source(self.source.purge_queue(queue).await)?;
        Ok(target + source.unwrap_or(0))
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        self.target.delete_queue(queue).await?;
        self.source.delete_queue(queue).await
    }

    fn provider(&self) -> Provider {
        self.target.provider()
    }

    fn capabilities(&self) -> Capabilities {
        self.source
            .capabilities()
            .weakest(self.target.capabilities())
    }

    fn queues_config(&self) -> &QueuesConfig {
        self.target.queues_config()
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.target.circuit_breaker()
    }

    fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Closed, or one side closed directly: the other side alone cannot
    /// answer for the migration (C33).
    fn closed(&self) -> bool {
        use crate::MessagingService;
        self.shutdown.is_closed() || self.source.is_closed() || self.target.is_closed()
    }

    /// Closes both sides, and so the backends it was built from (C33).
    fn teardown(&self) -> Teardown {
        use crate::MessagingService;
        let (source, target) = (self.source.clone(), self.target.clone());
        Box::pin(async move {
            let (source, target) = tokio::join!(source.close(), target.close());
            source.and(target)
        })
    }
}

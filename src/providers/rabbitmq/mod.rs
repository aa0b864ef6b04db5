//! RabbitMQ over AMQP 0-9-1, through amqprs.
//!
//! Queues are durable quorum queues; messages are persistent and every send
//! waits for its publisher confirm (`publisher`). Each receive runs a consumer
//! of its own, sized to what it asks for, so no process holds deliveries no
//! caller asked for (`slot`). Leases are kept by the library because AMQP has
//! none (`leases`): an expired lease is requeued with `basic.nack`, and
//! `receive_count` comes from the quorum queue's `x-delivery-count` header.
//! The data connection recovers by itself after a drop (`connection`), on
//! the next node of a cluster given as `rabbitmq.urls` (`settings`);
//! declarations and inspection use a connection of their own (`admin`).
//!
//! What the broker cannot tell is not guessed:
//! - `get_queue_stats` counts the ready messages the broker holds; leased
//!   counts and ages are `None`.
//! - A receipt names its queue channel's epoch: a reconnect (or a new
//!   channel) ends the leases of the old one, and the broker requeues them.
//!   It also names this backend (an id drawn at connect): a receipt used in
//!   another process is `LeaseExpired` there, since only the receiving
//!   connection can settle a delivery, and tags and epochs restart in every
//!   process.
//!
//! Retries and the circuit breaker (the shared `Resilience`) wrap each call
//! that waits for the broker and is safe to repeat under at-least-once
//! delivery; only transient failures are retried or counted:
//! - `send_message`, `send_batch`: a retry publishes again what has no
//!   confirm yet, with the same message id. A publish whose confirm was lost
//!   may then be stored twice (a duplicate, never a loss); `send_batch`
//!   republishes only the messages without a confirm.
//! - `receive_messages` (and so `receive_messages_wait`): a failed receive
//!   hands out nothing; what it took stays leased and comes back when the
//!   lease ends (or at once, with its channel), so a retry loses nothing.
//! - `get_queue_stats`, `create_queue`, `delete_queue`: reads, and
//!   declarations and deletions that are idempotent.
//! - `purge_queue`: `queue.purge` removes only ready messages. A retried
//!   purge whose first reply was lost counts only what the retry removed.
//! - `delete_message`, `change_message_visibility`: the `basic.ack` or
//!   `basic.nack` that ends a lease is sent at most once and never retried:
//!   the lease is taken out of the table before it is sent, and after a
//!   reconnect the same delivery tag names another delivery, possibly one
//!   another caller holds. It is one frame on a live channel (or
//!   `LeaseExpired` at once), so it neither waits for the broker nor goes
//!   through the breaker, and settling a live lease is never refused. Only
//!   the lookup that tells `LeaseExpired` from `QueueNotFound` for a dead
//!   lease is a broker call, a read, retried. Extending a lease is local.
//! - `health_check` reports reachability as it is: neither retried nor
//!   refused by an open circuit.
//! - Moving dead letters (inside a receive) is best effort and not retried:
//!   a failure leaves the message leased, and it comes back with its lease.

// Over 450 lines: the MessagingService impl sits with the retry contract of
// each call that the module doc states.
mod admin;
mod channel;
mod connection;
mod consumer;
mod credit;
mod dead_letters;
mod delay;
mod errors;
mod inner;
mod leases;
mod properties;
mod publisher;
mod pump;
mod pump_task;
mod put_back;
mod settings;
mod slot;
mod teardown;
mod tls;

use crate::sync::lock;
use std::{
    fmt,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use self::{
    admin::Admin,
    connection::DataConnection,
    inner::Inner,
    leases::ExtendError,
    properties::Outgoing,
    publisher::{Pending, Publish},
    settings::Settings,
};
use crate::{
    codec, lease,
    queue_name::QueueName,
    receipt::Receipt,
    resilience::{CircuitBreaker, Resilience},
    service::provide::{Shutdown, Teardown},
    MessageId, MessagingConfig, MessagingError, Provider, QueueMessage, QueueStats, QueuedMessage,
    QueuesConfig, ReceiptHandle,
};

/// The RabbitMQ provider. Clones share one set of connections and the
/// circuit breaker.
///
/// Holds two connections: one for publishes and consumers, which recovers by
/// itself after a drop, and one for declarations and inspection; and, once
/// a receive first gives a delivery back uncounted, a third that publishes
/// those copies and holds no lease (RabbitMQ 3.10 closes a connection whose
/// publish meets a queue being deleted, C12). Dropping the
/// last clone closes them; the broker then requeues every delivery this
/// backend held.
///
/// [`close`](crate::MessagingService::close) gives each channel 250 ms
/// after its last settle, then closes every channel and then both
/// connections, awaiting the broker's close-ok each time (see `teardown`;
/// the pause is a heuristic, see `close`). Dropping the last
/// clone without it runs the same teardown from a task, when a runtime is
/// there to run it; a process that exits at once cuts that task short.
#[derive(Clone)]
pub struct RabbitMqMessageService {
    inner: Arc<Inner>,
    resilience: Arc<Resilience>,
}

impl fmt::Debug for RabbitMqMessageService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqMessageService")
            .field("nodes", &self.inner.config.nodes())
            .field("generation", &self.inner.data.generation())
            .finish_non_exhaustive()
    }
}

impl RabbitMqMessageService {
    /// Connects to `[rabbitmq] url`, or to one of `urls` (both connections),
    /// with the queue, retry and circuit-breaker settings of `config`. Each
    /// node tried gets its own `connection_timeout_ms`, so connect fails
    /// after up to N times that when none of N nodes answers. Once connected,
    /// a call takes at most (`max_retries` + 1) x `connection_timeout_ms`
    /// plus the retry backoffs (about 20 s with the defaults). A config that fails
    /// [`MessagingConfig::validate`] is refused first.
    pub async fn connect(config: &MessagingConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        let resilience = Arc::new(Resilience::new(
            Provider::RabbitMq,
            config.retry_policy.clone(),
            config.circuit_breaker.clone(),
        ));
        let queues = config.queues.clone();
        let config = config
            .rabbitmq
            .as_ref()
            .ok_or_else(|| MessagingError::Config("rabbitmq.url is required".into()))?;
        let settings = Arc::new(Settings::new(config)?);
        let data =
            DataConnection::connect(Arc::clone(&settings), Arc::clone(resilience.reach())).await?;
        let admin = Admin::new(settings, config.quorum_initial_group_size);
        admin.ping().await?;
        let (stop, stopped) = watch::channel(());
        let inner = Arc::new(Inner {
            config: config.clone(),
            dead_letters: (&queues).into(),
            queues,
            data: Arc::new(data),
            admin: Arc::new(admin),
            slots: Mutex::default(),
            put_back: tokio::sync::Mutex::default(),
            declared: Mutex::default(),
            delay_tiers: tokio::sync::OnceCell::new(),
            delay_bound: Mutex::default(),
            epochs: AtomicU64::new(0),
            holder: crate::receipt::new_scope(),
            stop,
            supervisor: Mutex::default(),
            shutdown: Shutdown::default(),
        });
        let supervisor = tokio::spawn(connection::supervise(
            Arc::downgrade(&inner),
            Arc::clone(&resilience),
            stopped,
        ));
        *lock(&inner.supervisor) = Some(supervisor);
        Ok(Self { inner, resilience })
    }

    /// The data connection's generation: 1 after connecting, one more after
    /// each automatic reconnect.
    pub fn connection_generation(&self) -> u64 {
        self.inner.data.generation()
    }

    /// The `host:port` of the node the data connection is on (with
    /// `rabbitmq.urls`, one of the cluster's nodes); `None` while reconnecting.
    pub fn connected_node(&self) -> Option<String> {
        self.inner.data.node()
    }

    fn lease_expired(queue: &str, receipt: &ReceiptHandle) -> MessagingError {
        MessagingError::LeaseExpired {
            queue: queue.to_owned(),
            receipt: receipt.to_string(),
        }
    }

    /// `QueueNotFound` when `queue` is gone: what a receipt with no live
    /// lease needs to know to be `LeaseExpired` instead.
    async fn ensure_exists(
        &self,
        operation: &'static str,
        queue: &str,
    ) -> Result<(), MessagingError> {
        let exists = self
            .resilience
            .run(operation, || self.inner.admin.exists(operation, queue))
            .await?;
        match exists {
            true => Ok(()),
            false => Err(MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            }),
        }
    }

    /// The error for a receipt with no live lease: `QueueNotFound` when the
    /// queue is gone, `LeaseExpired` otherwise.
    async fn no_lease(
        &self,
        operation: &'static str,
        queue: &str,
        receipt: &ReceiptHandle,
    ) -> MessagingError {
        match self.ensure_exists(operation, queue).await {
            Ok(()) => Self::lease_expired(queue, receipt),
            Err(error) => error,
        }
    }

    /// Publishes `messages` to `queue` and waits for every confirm.
    async fn publish(
        &self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<Pending>, MessagingError> {
        let link = self.inner.data.link().await?;
        let mut messages = messages;
        // A nack elsewhere can retire the channel between `publisher()` and
        // the publish; the messages then go out on the new one. Bounded:
        // under a storm of nacks the send fails as refused, and is retried.
        for _ in 0..3 {
            match link.publisher().await?.publish(queue, messages).await? {
                Publish::Sent(pending) => return Ok(pending),
                Publish::Retired(unsent) => messages = unsent,
            }
        }
        Err(errors::refused(
            "the broker kept refusing publishes, on three channels in turn",
        ))
    }
}

impl RabbitMqMessageService {
    /// Publishes `outgoing` and waits for every confirm, retrying what has
    /// none (`send_batch`, and the sends with options).
    async fn publish_confirmed(
        &self,
        queue: &str,
        outgoing: Vec<Outgoing>,
    ) -> Result<Vec<MessageId>, MessagingError> {
        // Not atomic on RabbitMQ: each message is confirmed on its own. An
        // attempt waits for every confirm, and a retry republishes only the
        // messages still without one (a lost confirm may make a duplicate).
        let confirmed: Mutex<Vec<Option<MessageId>>> =
            Mutex::new(outgoing.iter().map(|_| None).collect());
        self.resilience
            .run("send_batch", || async {
                let todo: Vec<usize> = lock(&confirmed)
                    .iter()
                    .enumerate()
                    .filter_map(|(i, id)| id.is_none().then_some(i))
                    .collect();
                let batch = todo.iter().map(|&i| outgoing[i].clone()).collect();
                let pending = self.publish(queue, batch).await?;
                let deadline = Instant::now() + self.inner.data.settings.timeout;
                let mut failure: Option<MessagingError> = None;
                for (i, pending) in todo.into_iter().zip(pending) {
                    match pending.confirmed_by(deadline).await {
                        Ok(id) => lock(&confirmed)[i] = Some(id),
                        // Report a permanent failure (no retry) over a
                        // transient one, and an unreachable server over a
                        // refusal, which the breaker does not count.
                        Err(error) => {
                            let rank = |e: &MessagingError| match (e.is_transient(), e.is_refusal())
                            {
                                (false, _) => 2,
                                (true, false) => 1,
                                (true, true) => 0,
                            };
                            if failure.as_ref().is_none_or(|f| rank(&error) > rank(f)) {
                                failure = Some(error);
                            }
                        }
                    }
                }
                failure.map_or(Ok(()), Err)
            })
            .await?;
        let ids = confirmed.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(ids.into_iter().flatten().collect())
    }

    /// Declares the delay tiers once for this backend, and binds `queue` to
    /// their last hop once (`QueueNotFound` if it does not exist).
    async fn prepare_delay(&self, queue: &str) -> Result<(), MessagingError> {
        self.inner
            .delay_tiers
            .get_or_try_init(|| async {
                self.resilience
                    .run("send_message", || self.inner.admin.declare_delay_tiers())
                    .await
            })
            .await?;
        if lock(&self.inner.delay_bound).contains(queue) {
            return Ok(());
        }
        self.resilience
            .run("send_message", || async {
                self.inner.admin.bind_delayed(queue).await.map(drop)
            })
            .await?;
        lock(&self.inner.delay_bound).insert(queue.to_owned());
        Ok(())
    }

    /// One attempt at `get_queue_stats` (a read, safe to repeat).
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, MessagingError> {
        const OPERATION: &str = "get_queue_stats";
        let ready = self.inner.admin.ready_count(OPERATION, queue).await?;
        let dead_letter_count = match self.inner.dead_letters.dead_letter_queue(queue) {
            None => None,
            Some(dlq) => match self.inner.admin.ready_count(OPERATION, &dlq).await {
                // Dead letters this process holds leases on count too.
                Ok(ready) => Some(
                    ready
                        + self
                            .inner
                            .existing_slot(&dlq)
                            .map_or(0, |slot| slot.leases.len() as u64),
                ),
                Err(MessagingError::QueueNotFound { .. }) => None,
                Err(error) => return Err(error),
            },
        };
        Ok(QueueStats {
            queue_name: queue.to_owned(),
            message_count: ready,
            // The broker cannot say how many are leased, or how old the oldest is.
            in_flight_count: None,
            oldest_message_age_seconds: None,
            dead_letter_count,
            // Delayed messages wait in tiers every queue shares (`delay`).
            delayed_count: None,
            migration: None,
        })
    }

    /// Ends a live lease with one `basic.ack` (`requeue == false`) or
    /// `basic.nack` with requeue. Never retried and not gated by the breaker:
    /// the lease leaves the table before the frame is sent, so a tag is
    /// settled at most once, and a retry after a reconnect could settle
    /// another delivery that reuses the tag.
    async fn settle(
        &self,
        operation: &'static str,
        queue: &str,
        receipt: &ReceiptHandle,
        requeue: bool,
    ) -> Result<(), MessagingError> {
        let lease = Receipt::decode(receipt, Provider::RabbitMq, queue)?;
        let (epoch, tag) = self.inner.lease_key(&lease);
        let channel = self
            .inner
            .existing_slot(queue)
            .and_then(|slot| slot.leases.take(epoch, tag));
        match channel {
            Some(channel) => match channel.settle(tag, requeue).await {
                Ok(()) => Ok(()),
                // The channel died with its deliveries: the broker requeued this one.
                Err(_) => Err(Self::lease_expired(queue, receipt)),
            },
            None => Err(self.no_lease(operation, queue, receipt).await),
        }
    }

    /// A receive that, with `until`, waits until then for a first message;
    /// also whether it put back messages of another shape.
    async fn receive<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
        until: Option<Instant>,
    ) -> Result<(Vec<QueuedMessage<T>>, bool), MessagingError> {
        lease::check_max_messages(max_messages)?;
        let secs = lease::lease_secs(visibility_timeout, 1)?;
        self.inner.check_broker_limit(secs)?;
        let window = self.inner.config.prefetch_count;
        // A failed attempt hands out nothing, and what it took stays leased
        // (or went back with its channel), so a retry loses nothing.
        let (slot, received) = self
            .resilience
            .run("receive_messages", || async {
                let slot = self.inner.slot(queue);
                if until.is_some() {
                    self.run_pump_of(&slot);
                }
                match slot
                    .receive::<T>(&self.inner, max_messages, window, secs, until)
                    .await
                {
                    Ok(received) => Ok((slot, received)),
                    Err(error) => {
                        if matches!(error, MessagingError::QueueNotFound { .. }) {
                            self.inner.forget_slot(&slot);
                        }
                        Err(error)
                    }
                }
            })
            .await?;
        let put_back = !received.released.is_empty();
        if put_back || !received.dead.is_empty() {
            // Publish, confirm, then ack (C13, C19): in a task of its own, so
            // a caller dropped halfway never leaves both the copy and a
            // leased original that comes back counted.
            let (service, epoch) = (self.clone(), received.epoch);
            let (released, dead) = (received.released, received.dead);
            let task = tokio::spawn(async move {
                if !released.is_empty() {
                    service.put_back_other_shapes(&slot, epoch, released).await;
                }
                if !dead.is_empty() {
                    service.move_dead_letters(&slot, epoch, dead).await;
                }
            });
            if let Err(error) = task.await {
                tracing::debug!(?error, queue, "putting back or dead-lettering failed");
            }
        }
        Ok((received.messages, put_back))
    }
}

impl crate::service::provide::Provide for RabbitMqMessageService {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        // Not through the breaker: it reports reachability as it is now.
        let check = async {
            self.inner.data.link().await?;
            self.inner.admin.ping().await
        };
        let bound = crate::resilience::HEALTH_CHECK_BOUND.min(self.inner.data.settings.timeout);
        Ok(matches!(
            tokio::time::timeout(bound, check).await,
            Ok(Ok(()))
        ))
    }

    async fn create_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let dlq = self.inner.dead_letters.dead_letter_queue(queue);
        // Declarations are idempotent: a retry repeats both.
        self.resilience
            .run("create_queue", || async {
                self.inner.admin.declare(queue).await?;
                if let Some(dlq) = &dlq {
                    self.inner.admin.declare(dlq).await?;
                }
                Ok(())
            })
            .await?;
        lock(&self.inner.declared).insert(queue.to_owned());
        // Delayed messages already on their way to a queue of this name
        // (sent before it was deleted and created again) reach it; a no-op
        // where no delayed send ever declared the tiers.
        let bound = self
            .resilience
            .run("create_queue", || self.inner.admin.bind_delayed(queue))
            .await?;
        if bound {
            lock(&self.inner.delay_bound).insert(queue.to_owned());
        }
        Ok(())
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let queue = queue.as_str();
        let body = codec::encode(message, self.inner.queues.max_message_bytes)?;
        let outgoing = properties::outgoing(message, body);
        // A retry after a lost confirm may store a second copy (same id), never lose one.
        self.resilience
            .run("send_message", || async {
                let mut pending = self.publish(queue, vec![outgoing.clone()]).await?;
                match pending.pop() {
                    Some(pending) => pending.confirmed().await,
                    None => Err(errors::connection("the publish was not sent", None)),
                }
            })
            .await
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
        let bodies = codec::encode_all(messages, self.inner.queues.max_message_bytes)?;
        let outgoing: Vec<Outgoing> = messages
            .iter()
            .zip(bodies)
            .map(|(message, body)| properties::outgoing(message, body))
            .collect();
        self.publish_confirmed(queue, outgoing).await
    }

    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
        options: &crate::SendOptions,
    ) -> Result<MessageId, MessagingError> {
        let mut ids = self
            .send_batch_with(queue, std::slice::from_ref(message), options)
            .await?;
        ids.pop()
            .ok_or_else(|| MessagingError::invalid_argument("no message was sent"))
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
        options: &crate::SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        let name = queue.as_str();
        let bodies = codec::encode_all_with_headers(
            messages,
            self.inner.queues.max_message_bytes,
            options.header_bytes(),
        )?;
        let secs = delay::whole_secs(options.delay_duration());
        if secs > 0 {
            self.prepare_delay(name).await?;
        }
        let outgoing: Vec<Outgoing> = messages
            .iter()
            .zip(bodies)
            .map(|(message, body)| {
                properties::outgoing(message, body).with_options(options.header_map(), name, secs)
            })
            .collect();
        self.publish_confirmed(name, outgoing).await
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let queue = queue.as_str();
        let (got, _) = self
            .receive(queue, max_messages, visibility_timeout, None)
            .await?;
        Ok(got)
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let queue = queue.as_str();
        // No deadline (`Duration::MAX` and the like): a far-off one, re-armed
        // if it is ever reached, so the wait ends only with a message.
        let deadline = crate::wait::deadline(wait);
        let poll = self.inner.queues.wait_poll_interval();
        loop {
            let until = deadline.unwrap_or_else(crate::wait::far_future);
            let (got, put_back) = self
                .receive(queue, max_messages, visibility_timeout, Some(until))
                .await?;
            // Empty before the deadline: the broker ended the consumer (the
            // queue was deleted, say). Looking again reports that, or waits on.
            if !got.is_empty() || (deadline.is_some() && Instant::now() >= until) {
                return Ok(got);
            }
            if put_back {
                // Only messages of another shape: a consumer would be handed
                // them again at once. Look again after the poll interval.
                tokio::time::sleep_until(until.min(Instant::now() + poll)).await;
            }
        }
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        self.settle("delete_message", queue, receipt, false).await
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        let queue = queue.as_str();
        let leases = Receipt::decode_all(receipts, Provider::RabbitMq, queue);
        let keys: Vec<Option<(u64, u64)>> = leases
            .iter()
            .map(|lease| lease.as_ref().ok().map(|lease| self.inner.lease_key(lease)))
            .collect();
        if keys.iter().all(Option::is_none) {
            return Ok(leases.into_iter().map(|lease| lease.map(drop)).collect());
        }
        let slot = self.inner.existing_slot(queue);
        // A dead receipt is LeaseExpired only on a queue that exists, as in
        // delete_message. Asked before anything is settled, so that an Err
        // means nothing was.
        let all_live = slot
            .as_ref()
            .is_some_and(|slot| slot.leases.all_live(keys.iter().flatten().copied()));
        if !all_live {
            self.ensure_exists("delete_messages", queue).await?;
        }
        let (channel, live) = match &slot {
            Some(slot) => slot.leases.take_many(keys.iter().copied()),
            None => (None, vec![false; keys.len()]),
        };
        let tags: Vec<u64> = keys
            .iter()
            .zip(&live)
            .filter_map(|(key, &live)| key.filter(|_| live).map(|(_, tag)| tag))
            .collect();
        // Acks back to back, never retried (see `settle`); those after a
        // failure went back with their channel.
        let mut acked = match channel {
            Some(channel) => match channel.settle_many(&tags, false).await {
                Ok(()) => tags.len(),
                Err((sent, _)) => sent,
            },
            None => 0,
        };
        Ok(leases
            .into_iter()
            .zip(live)
            .zip(receipts)
            .map(|((lease, live), receipt)| {
                lease?;
                if live && acked > 0 {
                    acked -= 1;
                    Ok(())
                } else {
                    Err(Self::lease_expired(queue, receipt))
                }
            })
            .collect())
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        const OPERATION: &str = "change_message_visibility";
        let secs = lease::lease_secs(visibility_timeout, 0)?;
        self.inner.check_broker_limit(secs)?;
        if secs == 0 {
            return self.settle(OPERATION, queue, receipt, true).await;
        }
        // Moving a deadline is local: the broker knows nothing of leases.
        let lease = Receipt::decode(receipt, Provider::RabbitMq, queue)?;
        let Some(slot) = self.inner.existing_slot(queue) else {
            return Err(self.no_lease(OPERATION, queue, receipt).await);
        };
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (epoch, tag) = self.inner.lease_key(&lease);
        match slot.leases.extend(
            epoch,
            tag,
            deadline,
            self.inner.broker_consumer_timeout(),
        ) {
            Ok(()) => Ok(()),
            Err(ExtendError::TooLong) => Err(MessagingError::invalid_argument(format!(
                "a lease of {secs} s more would keep the delivery unacknowledged beyond RabbitMQ's consumer_timeout of {} s",
                self.inner.broker_consumer_timeout().as_secs()
            ))),
            Err(ExtendError::Dead) => Err(self.no_lease(OPERATION, queue, receipt).await),
        }
    }

    async fn put_back_uncounted(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        // The uncounted put-back (`other_shape`) republishes the delivery's
        // body and properties, which a lease does not keep: this requeue is
        // counted by the broker.
        self.settle("put_back_uncounted", queue.as_str(), receipt, true)
            .await
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats, MessagingError> {
        let queue = queue.as_str();
        self.resilience
            .run("get_queue_stats", || self.queue_stats(queue))
            .await
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64, MessagingError> {
        let queue = queue.as_str();
        // queue.purge removes only what no consumer holds: the ready messages.
        self.resilience
            .run("purge_queue", || self.inner.admin.purge(queue))
            .await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        lock(&self.inner.declared).remove(queue);
        // Its binding to the delay tiers goes with it.
        lock(&self.inner.delay_bound).remove(queue);
        // Stop consuming first; dropping the slot closes its channel.
        lock(&self.inner.slots).remove(queue);
        let dlq = self.inner.dead_letters.dead_letter_queue(queue);
        if let Some(dlq) = &dlq {
            lock(&self.inner.slots).remove(dlq);
        }
        // Deleting a missing queue succeeds: a retry repeats both.
        self.resilience
            .run("delete_queue", || async {
                self.inner.admin.delete(queue).await?;
                if let Some(dlq) = &dlq {
                    self.inner.admin.delete(dlq).await?;
                }
                Ok(())
            })
            .await
    }

    fn provider(&self) -> Provider {
        Provider::RabbitMq
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::RABBITMQ
    }

    fn queues_config(&self) -> &QueuesConfig {
        &self.inner.queues
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        Some(self.resilience.breaker())
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.inner.data.server()
    }

    fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    fn teardown(&self) -> Teardown {
        let service = self.clone();
        Box::pin(async move {
            service.stop_pumps().await;
            service.inner.teardown().await
        })
    }
}

//! One queue's consumer: a pull API over AMQP's push delivery.
//!
//! The first receive on a queue starts a consumer on a channel of its own,
//! with `basic.qos` prefetch; the broker pushes deliveries ahead into a local
//! buffer (amqprs' channel to us, drained into a queue), and a receive hands
//! out what is buffered, leasing each delivery as it goes. A receive that
//! would come back empty first makes one round trip on the consumer's
//! channel (a repeated `basic.qos`): the broker sends deliveries it has
//! already dispatched before that reply, so "nothing available now" is exact.
//! A receive with messages in hand returns them without it; deliveries still
//! on the wire wait in the buffer for the next receive.
//!
//! A consumer no receive has used for `consumer_idle_timeout_ms` is
//! cancelled and its buffered deliveries go back to the broker, so an idle
//! process strands nothing; the next receive starts it again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use amqprs::{
    channel::{BasicCancelArguments, BasicConsumeArguments, BasicQosArguments, ConsumerMessage},
    BasicProperties,
};
use chrono::Utc;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    channel::TrackedChannel,
    connection::Link,
    errors,
    leases::{self, Leases},
    properties::{self, Delivered},
    Inner,
};
use crate::wait::Arrivals;
use crate::{
    codec,
    dead_letter::{DeadLetterReason, Verdict},
    receipt::Receipt,
    MessageId, MessagingError, Provider, QueueMessage, QueuedMessage, QueuedMessageMetadata,
};

const RECEIVE: &str = "receive_messages";
/// How long a receive that just started a consumer waits for the messages the
/// queue reported ready (they may go to another consumer instead).
const FIRST_DELIVERIES_WAIT: Duration = Duration::from_millis(500);

/// Most message ids [`Slot::unseen`] remembers, and for how long.
const UNSEEN_LIMIT: usize = 100_000;
const UNSEEN_TTL: Duration = Duration::from_secs(3600);

/// One delivery waiting in the local buffer.
struct Delivery {
    tag: u64,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Delivery {
    fn from_message(message: ConsumerMessage) -> Option<Self> {
        Some(Self {
            tag: message.deliver?.delivery_tag(),
            properties: message.basic_properties?,
            body: message.content?,
        })
    }
}

/// An active `basic.consume`.
struct Consuming {
    tag: String,
    /// Deliveries, passed on from amqprs by the relay task.
    deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    /// Asks the relay to pass on at once everything amqprs holds; answered
    /// when it has.
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Consuming {
    /// Returns once every delivery amqprs has received is in `deliveries`.
    /// A reply (say `basic.qos-ok`) follows, in amqprs, the deliveries the
    /// broker sent before it; this carries that order through the relay.
    async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.flushes.send(done).is_ok() {
            // An error means the relay ended: nothing is left in it.
            let _ = flushed.await;
        }
    }
}

/// Passes deliveries from amqprs to `relay`, waking the queue's waiting
/// receivers on each, and flushes on request (see [`Consuming::flush`]).
/// Ends, closing `relay`, when amqprs closes its side.
async fn run_relay(
    mut from_broker: mpsc::UnboundedReceiver<ConsumerMessage>,
    relay: mpsc::UnboundedSender<ConsumerMessage>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    arrivals: Arc<Arrivals>,
    queue: String,
) {
    loop {
        tokio::select! {
            message = from_broker.recv() => {
                let Some(message) = message else { return };
                if relay.send(message).is_err() {
                    return;
                }
                arrivals.notify(&queue);
            }
            Some(done) = flushes.recv() => {
                let mut passed = false;
                while let Ok(message) = from_broker.try_recv() {
                    if relay.send(message).is_err() {
                        return;
                    }
                    passed = true;
                }
                if passed {
                    arrivals.notify(&queue);
                }
                let _ = done.send(());
            }
        }
    }
}

struct Consumer {
    /// The data link generation the channel belongs to.
    generation: u64,
    /// Names the channel in receipts; a new channel gets a new epoch.
    epoch: u64,
    channel: Arc<TrackedChannel>,
    consuming: Option<Consuming>,
    /// The broker or the connection ended the consumer.
    ended: bool,
    buffer: VecDeque<Delivery>,
    starts: u32,
    /// The [`Slot::barriers`] number of the last barrier completed on this
    /// channel since it began consuming; 0 for none.
    synced_at: u64,
}

impl Consumer {
    /// Moves what amqprs has received into the buffer.
    fn drain(&mut self) {
        let Some(consuming) = self.consuming.as_mut() else {
            return;
        };
        loop {
            match consuming.deliveries.try_recv() {
                Ok(message) => self.buffer.extend(Delivery::from_message(message)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.consuming = None;
                    self.ended = true;
                    break;
                }
            }
        }
    }

    /// Waits for one more delivery until `deadline`; false when none came.
    async fn wait_for_delivery(&mut self, deadline: Instant) -> bool {
        let Some(consuming) = self.consuming.as_mut() else {
            return false;
        };
        match tokio::time::timeout_at(deadline, consuming.deliveries.recv()).await {
            Ok(Some(message)) => {
                self.buffer.extend(Delivery::from_message(message));
                true
            }
            Ok(None) => {
                self.consuming = None;
                self.ended = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Whether the channel, and so its buffered deliveries and leases, are current.
    fn live(&self, generation: u64) -> bool {
        !self.ended
            && self.generation == generation
            && self.channel.usable()
            && !self.channel.cancelled_by_broker()
    }

    /// A round trip on the channel: deliveries dispatched before it arrive
    /// first, and are ready to drain when it returns.
    async fn barrier(&self, prefetch: u16, queue: &str) -> Result<(), MessagingError> {
        self.channel
            .call(move |c| async move {
                c.basic_qos(BasicQosArguments::new(0, prefetch, false))
                    .await
            })
            .await
            .map_err(|e| errors::call_error(RECEIVE, e, Some(queue)))?;
        if let Some(consuming) = &self.consuming {
            consuming.flush().await;
        }
        Ok(())
    }
}

/// A delivery bound for the dead-letter queue, leased until it is moved.
pub(super) struct DeadLetter {
    pub tag: u64,
    pub delivered: Delivered,
    pub body: Vec<u8>,
    pub reason: DeadLetterReason,
}

/// What one receive took from the buffer.
pub(super) struct Received<T> {
    pub messages: Vec<QueuedMessage<T>>,
    pub dead: Vec<DeadLetter>,
    /// The epoch the leases above belong to.
    pub epoch: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single assignments or map operations.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One queue's consumer state and leases.
pub(super) struct Slot {
    pub queue: String,
    state: tokio::sync::Mutex<Option<Consumer>>,
    pub leases: Arc<Leases>,
    last_used: Mutex<Instant>,
    /// Deliveries this process gave back without handing them out, by
    /// message id. The quorum queue counts every return in
    /// `x-delivery-count`; these were not receives, so they are taken off
    /// when the message is handed out here again.
    unseen: Mutex<HashMap<String, (u32, Instant)>>,
    /// Woken on every delivery, for waiting receives.
    arrivals: Arc<Arrivals>,
    /// Numbers the barriers started on this queue's consumer, so receivers
    /// queued behind one barrier share it (see [`Slot::sync`]).
    barriers: AtomicU64,
    /// Dropping the slot stops its lease timer.
    _stop: watch::Sender<()>,
}

impl Slot {
    /// A slot for `queue` with its lease timer running.
    pub(super) fn new(queue: &str, arrivals: Arc<Arrivals>) -> Arc<Self> {
        let leases = Arc::new(Leases::default());
        let (stop, stopped) = watch::channel(());
        tokio::spawn(leases::run_timer(
            queue.to_owned(),
            Arc::clone(&leases),
            stopped,
        ));
        Arc::new(Self {
            queue: queue.to_owned(),
            state: tokio::sync::Mutex::new(None),
            leases,
            last_used: Mutex::new(Instant::now()),
            unseen: Mutex::default(),
            arrivals,
            barriers: AtomicU64::new(0),
            _stop: stop,
        })
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }

    /// Remembers deliveries going back to the broker unseen (see [`Slot::unseen`]).
    fn record_unseen<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut unseen = lock(&self.unseen);
        let now = Instant::now();
        for delivery in deliveries {
            if let Some(id) = delivery.properties.message_id() {
                let entry = unseen.entry(id.clone()).or_insert((0, now));
                *entry = (entry.0.saturating_add(1), now);
            }
        }
        if unseen.len() > UNSEEN_LIMIT {
            // Most went to other consumers; forget the old ones.
            unseen.retain(|_, (_, at)| at.elapsed() < UNSEEN_TTL);
            if unseen.len() > UNSEEN_LIMIT {
                unseen.clear();
            }
        }
    }

    fn take_unseen(&self, message_id: &str) -> u32 {
        let mut unseen = lock(&self.unseen);
        // Usually empty: skip hashing the id.
        if unseen.is_empty() {
            return 0;
        }
        unseen.remove(message_id).map_or(0, |(n, _)| n)
    }

    /// Drops the consumer; its channel closes and the broker requeues what it held.
    fn tear_down(&self, state: &mut Option<Consumer>) {
        if let Some(mut consumer) = state.take() {
            consumer.drain();
            self.record_unseen(&consumer.buffer);
            self.leases.clear();
        }
    }

    /// Makes sure a current consumer runs, returning how many messages the
    /// queue reported ready when one had to be started (0 otherwise).
    async fn ensure(
        &self,
        state: &mut Option<Consumer>,
        inner: &Inner,
        link: &Arc<Link>,
    ) -> Result<u64, MessagingError> {
        if let Some(consumer) = state.as_mut() {
            consumer.drain();
            if consumer.live(link.generation) {
                if consumer.consuming.is_some() {
                    return Ok(0);
                }
                // Cancelled while idle: consume again on the same channel,
                // which keeps its leases.
                let ready = inner.admin.ready_count(RECEIVE, &self.queue).await?;
                return match self.consume(consumer).await {
                    Ok(()) => Ok(ready),
                    Err(error) => {
                        self.tear_down(state);
                        Err(error)
                    }
                };
            }
            self.tear_down(state);
        }
        // Ask on the admin connection first: a consume on a missing queue
        // would cost the data connection a channel.
        let ready = inner.admin.ready_count(RECEIVE, &self.queue).await?;
        let channel = link.open_channel().await?;
        let mut consumer = Consumer {
            generation: link.generation,
            epoch: inner.next_epoch(),
            channel,
            consuming: None,
            ended: false,
            buffer: VecDeque::new(),
            starts: 0,
            synced_at: 0,
        };
        consumer
            .barrier(inner.config.prefetch_count, &self.queue)
            .await?;
        self.consume(&mut consumer).await?;
        self.leases
            .reset(consumer.epoch, Arc::clone(&consumer.channel));
        *state = Some(consumer);
        Ok(ready)
    }

    async fn consume(&self, consumer: &mut Consumer) -> Result<(), MessagingError> {
        consumer.starts += 1;
        let tag = format!(
            "tasker-messaging.{}.{}.{}",
            self.queue, consumer.epoch, consumer.starts
        );
        let args = BasicConsumeArguments::new(&self.queue, &tag)
            .manual_ack(true)
            .finish();
        let (tag, from_broker) = consumer
            .channel
            .call(move |c| async move { c.basic_consume_rx(args).await })
            .await
            .map_err(|e| errors::call_error(RECEIVE, e, Some(&self.queue)))?;
        // Relay deliveries so each one wakes the queue's waiting receivers.
        let (relay, deliveries) = mpsc::unbounded_channel();
        let (flushes, flush_requests) = mpsc::unbounded_channel();
        tokio::spawn(run_relay(
            from_broker,
            relay,
            flush_requests,
            Arc::clone(&self.arrivals),
            self.queue.clone(),
        ));
        consumer.consuming = Some(Consuming {
            tag,
            deliveries,
            flushes,
        });
        Ok(())
    }

    /// Hands out up to `max` messages available now, leased for `secs`.
    pub(super) async fn receive<T: QueueMessage>(
        &self,
        inner: &Inner,
        max: usize,
        secs: u64,
    ) -> Result<Received<T>, MessagingError> {
        self.touch();
        // A barrier numbered above this one starts after this receive arrived.
        let arrived = self.barriers.load(Ordering::Acquire);
        let link = inner.data.link().await?;
        let mut state = self.state.lock().await;
        let expected = self.ensure(&mut state, inner, &link).await?;
        let Some(consumer) = state.as_mut() else {
            return Err(errors::connection("the consumer did not start", None));
        };
        let mut got = Received {
            messages: Vec::new(),
            dead: Vec::new(),
            epoch: consumer.epoch,
        };
        let prefetch = usize::from(inner.config.prefetch_count);
        let mut taken = 0_usize;
        let mut synced = false;
        let deadline = Instant::now() + FIRST_DELIVERIES_WAIT;
        loop {
            consumer.drain();
            taken += self.hand_out(consumer, inner, max, secs, &mut got);
            let room = prefetch.saturating_sub(self.leases.len() + consumer.buffer.len());
            if got.messages.len() >= max || consumer.consuming.is_none() || room == 0 {
                break;
            }
            if (taken as u64) < expected && consumer.wait_for_delivery(deadline).await {
                continue;
            }
            // Only an empty answer needs the barrier (see the module docs):
            // a round trip per receive slows a streaming consumer.
            // A barrier another receiver completed after this one arrived
            // counts too: its deliveries were drained above.
            if synced || !got.messages.is_empty() || consumer.synced_at > arrived {
                break;
            }
            synced = true;
            if let Err(error) = self.sync(consumer, inner).await {
                self.tear_down(&mut state);
                return Err(error);
            }
        }
        Ok(got)
    }

    /// Takes deliveries from the buffer until `max` messages are handed out,
    /// returning how many deliveries it took.
    fn hand_out<T: QueueMessage>(
        &self,
        consumer: &mut Consumer,
        inner: &Inner,
        max: usize,
        secs: u64,
        got: &mut Received<T>,
    ) -> usize {
        if !consumer.live(inner.data.generation()) {
            return 0;
        }
        let lease = Duration::from_secs(secs);
        let mut taken = 0;
        while got.messages.len() < max {
            let Some(delivery) = consumer.buffer.pop_front() else {
                break;
            };
            taken += 1;
            // The lease clock starts now, when the message is handed out.
            self.leases
                .grant(consumer.epoch, delivery.tag, Instant::now() + lease);
            let mut delivered = properties::delivered(&delivery.properties, delivery.tag);
            let unseen = self.take_unseen(&delivered.message_id);
            delivered.receive_count = delivered.receive_count.saturating_sub(unseen).max(1);
            let decoded = std::str::from_utf8(&delivery.body)
                .ok()
                .and_then(|body| codec::decode::<T>(body).ok());
            let verdict =
                inner
                    .dead_letters
                    .verdict(&self.queue, delivered.receive_count, decoded.is_some());
            match (verdict, decoded) {
                (Verdict::Deliver, Some(message)) => got.messages.push(QueuedMessage {
                    metadata: QueuedMessageMetadata {
                        receipt_handle: Receipt {
                            id: delivery.tag,
                            lease: consumer.epoch,
                        }
                        .encode(Provider::RabbitMq, &self.queue),
                        message_id: MessageId::new(delivered.message_id),
                        enqueued_at: delivered.enqueued_at,
                        receive_count: delivered.receive_count,
                        visibility_timeout_expires: Utc::now()
                            + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX)),
                    },
                    message,
                }),
                (Verdict::DeadLetter(reason), _) => got.dead.push(DeadLetter {
                    tag: delivery.tag,
                    delivered,
                    body: delivery.body,
                    reason,
                }),
                // Stays leased, out of the caller's hands, and comes back later.
                (Verdict::Hold | Verdict::Deliver, _) => inner
                    .dead_letters
                    .log_held(&self.queue, &delivered.message_id),
            }
        }
        taken
    }

    /// Deliveries buffered here, not handed out: ready as far as callers can
    /// tell, though the broker counts them as delivered.
    pub(super) async fn buffered(&self, inner: &Inner) -> u64 {
        let mut state = self.state.lock().await;
        let Some(consumer) = self.synced(&mut state, inner).await else {
            return 0;
        };
        consumer.buffer.len() as u64
    }

    /// Acknowledges (removes for good) every buffered delivery, returning how many.
    pub(super) async fn purge_buffered(&self, inner: &Inner) -> Result<u64, MessagingError> {
        let mut state = self.state.lock().await;
        let Some(consumer) = self.synced(&mut state, inner).await else {
            return Ok(0);
        };
        let mut purged = 0;
        while let Some(delivery) = consumer.buffer.pop_front() {
            consumer
                .channel
                .settle(delivery.tag, false)
                .await
                .map_err(|e| errors::call_error("purge_queue", e, Some(&self.queue)))?;
            purged += 1;
        }
        Ok(purged)
    }

    /// A numbered barrier on a consuming channel: afterwards everything the
    /// broker dispatched before it is ready to drain.
    async fn sync(&self, consumer: &mut Consumer, inner: &Inner) -> Result<(), MessagingError> {
        let number = self.barriers.fetch_add(1, Ordering::AcqRel) + 1;
        consumer
            .barrier(inner.config.prefetch_count, &self.queue)
            .await?;
        consumer.synced_at = number;
        Ok(())
    }

    /// The current consumer with everything dispatched to it buffered.
    async fn synced<'a>(
        &self,
        state: &'a mut Option<Consumer>,
        inner: &Inner,
    ) -> Option<&'a mut Consumer> {
        let consumer = state.as_mut()?;
        if !consumer.live(inner.data.generation()) {
            return None;
        }
        if consumer.consuming.is_some() && self.sync(consumer, inner).await.is_err() {
            return None;
        }
        consumer.drain();
        Some(consumer)
    }

    /// After a reconnect: drops the old consumer (its deliveries and leases
    /// died with the connection) and starts a new one if the queue was in use.
    pub(super) async fn resume(&self, inner: &Inner, link: &Arc<Link>, idle: Duration) {
        let mut state = self.state.lock().await;
        if state
            .as_ref()
            .is_some_and(|c| c.generation != link.generation)
        {
            self.tear_down(&mut state);
            if self.idle_for() < idle {
                if let Err(error) = self.ensure(&mut state, inner, link).await {
                    tracing::debug!(queue = self.queue, %error, "could not resume a consumer");
                }
            }
        }
    }

    /// Returns buffered deliveries to the broker once the consumer has gone
    /// unused for `idle`, and closes its channel when it holds no leases.
    pub(super) async fn release_if_idle(&self, generation: u64, idle: Duration) {
        if self.idle_for() < idle {
            return;
        }
        // A receive in progress is not idle.
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let Some(consumer) = state.as_mut() else {
            return;
        };
        consumer.drain();
        if !consumer.live(generation) {
            self.tear_down(&mut state);
            return;
        }
        if let Some(consuming) = consumer.consuming.take() {
            // Cancel first, or the broker would push the requeued deliveries
            // straight back to this consumer.
            let tag = consuming.tag.clone();
            let cancelled = consumer
                .channel
                .call(move |c| async move { c.basic_cancel(BasicCancelArguments::new(&tag)).await })
                .await;
            if cancelled.is_err() {
                self.tear_down(&mut state);
                return;
            }
            // Deliveries sent before the cancel-ok are in the receiver once
            // the relay is flushed.
            consuming.flush().await;
            let mut deliveries = consuming.deliveries;
            while let Ok(message) = deliveries.try_recv() {
                consumer.buffer.extend(Delivery::from_message(message));
            }
            let returned = consumer.buffer.len();
            self.record_unseen(&consumer.buffer);
            for delivery in std::mem::take(&mut consumer.buffer) {
                if consumer.channel.settle(delivery.tag, true).await.is_err() {
                    // The channel is gone, and the broker requeued the rest with it.
                    self.tear_down(&mut state);
                    return;
                }
            }
            if returned > 0 {
                tracing::debug!(
                    queue = self.queue,
                    returned,
                    "consumer idle: returned buffered deliveries to the broker"
                );
            }
        }
        if self.leases.len() == 0 {
            self.tear_down(&mut state);
        }
    }
}

//! One queue's receives: waiting receives through the standing consumer
//! (`pump`), the others by `basic.get` and short-lived consumers.
//!
//! Several processes share a queue, so a process must not hold deliveries
//! that no caller asked for: another process could not get them, and handing
//! them back counts as a delivery (`x-delivery-count` + 1). The standing
//! consumer holds them for at most 50 ms and gives them back uncounted; a
//! receive that does not wait, when the standing consumer holds nothing:
//!
//! 1. `basic.get`: one message, and how many more are ready. Empty means
//!    nothing is available now (exact); a waiting receive then runs a
//!    consumer with a window of one until a delivery or its deadline.
//! 2. Fewer than [`BULK`] more wanted, or fewer than [`CLAIM`] times that
//!    ready: more `basic.get`s, each exact, until the receive has its count
//!    or the queue is empty.
//! 3. Otherwise a consumer whose `basic.qos` window is what the receive
//!    still wants. Once full it has no credit left, so its `basic.cancel` is
//!    not awaited. The consume is sent `nowait` (see [`Slot::open`]) and a
//!    `basic.qos` after it is its reply. A quorum queue dispatches after it
//!    starts the consumer, so that `basic.qos` (a barrier for what was dispatched before it) can answer
//!    first: while the broker then says messages are ready, the receive
//!    waits for the deliveries its credit draws (`fill`), and only once none
//!    are, a last barrier passes and the consumer is cancelled with a reply.
//!
//! A consumer cancelled with credit left can race a message arriving at that
//! moment: the broker hands that delivery back to the queue, counted, and
//! hands it straight to another consumer with credit, possibly one being
//! cancelled too (counted again). Taking a consumer only when several times
//! what it wants is ready, and waiting for what its credit draws, keeps
//! that race to a waiting receive's deadline and to processes draining the
//! same last messages. Measured in `a_fleet_drains_with_bulk_receives` (six
//! processes, 1,000 messages sent while received): 12-41 of 1,000 counted
//! without a hand-out before (window from the ready count, cancel at the
//! first barrier), 0 after.
//!
//! Round trips: an empty receive 1; a receive of n messages by gets n (+1
//! when the queue empties); a bulk receive 2 (get, consume with its
//! barrier; the cancel is not awaited), 3 when the barrier answers first, and 2 more (a ready count
//! on the admin connection, a barrier) per check when another process took
//! part of it. Dropped at any await, a receive strands nothing: its consumer
//! is owned from the moment its consume is sent, by the request's task until the receive
//! holds it. The options weighed,
//! measured on RabbitMQ 3.10 here (quorum queue, loopback):
//! - one long-lived consumer with a window narrowed to the callers' demand:
//!   impossible, as a quorum queue fixes a consumer's prefetch when it starts
//!   (a later `basic.qos` changed nothing);
//! - `basic.get` alone: one Raft command per message, about 1,000 msg/s on
//!   one channel;
//! - a consumer per receive: 17-23k msg/s at 100 a receive (a long-lived raw
//!   consumer: 30-37k), but each cancel with credit left races new
//!   messages, and 0.5-1% of a steady trickle came back counted;
//! - returning unclaimed deliveries with a nack: each return is counted; a
//!   confirmed copy carrying the hand-outs, then an ack, is not, and is
//!   what the standing consumer of waiting receives (`pump`) uses.
//!
//! Deliveries are leased the moment they arrive, so a receive abandoned
//! mid-way loses nothing: what it took comes back when the lease ends, and a
//! guard cancels its consumer and requeues what arrives after.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use amqprs::channel::{BasicConsumeArguments, BasicGetArguments, BasicQosArguments};
use tokio::{sync::watch, time::Instant};

use super::{
    channel::{CallError, TrackedChannel},
    connection::Link,
    consumer::{Consumer, Delivery},
    errors,
    leases::{self, Leases},
    properties::{self, Delivered},
    pump::{Pump, Waited},
    Inner,
};
use crate::{
    dead_letter::DeadLetterReason,
    delivery::{self, Outcome},
    receipt::Receipt,
    MessagingError, Provider, QueueMessage, QueuedMessage,
};

pub(super) const RECEIVE: &str = "receive_messages";
/// Fewest more messages a receive takes with a consumer rather than with
/// `basic.get`: a consumer costs about three `basic.get`s to start and stop.
const BULK: usize = 8;
/// A bulk receive takes a consumer only when the broker says this many
/// times what it still wants is ready: with less, other processes are likely
/// to take part of it first, and `basic.get` is exact.
const CLAIM: usize = 4;
/// Longest a bulk receive waits for deliveries its consumer has credit for
/// while the broker says messages are ready (see [`Slot::fill`]).
const FILL_BOUND: Duration = Duration::from_secs(1);
/// How long it waits for one of them before asking the broker again.
const FILL_STEP: Duration = Duration::from_millis(20);

/// The channel a queue's leases live on.
struct Line {
    /// The data link generation the channel belongs to.
    generation: u64,
    /// Names the channel in receipts; a new channel gets a new epoch.
    epoch: u64,
    channel: Arc<TrackedChannel>,
    /// The prefetch the last `basic.qos` set: the window of the next consumer.
    prefetch: u16,
}

impl Line {
    fn live(&self, generation: u64) -> bool {
        self.generation == generation && self.channel.usable()
    }
}

/// A delivery bound for the dead-letter queue, leased until it is moved.
pub(super) struct DeadLetter {
    pub tag: u64,
    pub delivered: Delivered,
    pub body: Vec<u8>,
    pub reason: DeadLetterReason,
}

/// A delivery of another shape, leased until its copy is published back.
pub(super) struct OtherShape {
    pub tag: u64,
    pub delivered: Delivered,
    pub properties: amqprs::BasicProperties,
    pub body: Vec<u8>,
}

/// What one receive took.
pub(super) struct Received<T> {
    pub messages: Vec<QueuedMessage<T>>,
    pub dead: Vec<DeadLetter>,
    /// Deliveries of another shape, to put back for other receivers.
    pub released: Vec<OtherShape>,
    /// The epoch the leases above belong to.
    pub epoch: u64,
}

/// One queue's channel and leases.
pub(super) struct Slot {
    pub queue: String,
    line: tokio::sync::Mutex<Option<Line>>,
    pub leases: Arc<Leases>,
    /// The standing consumer of waiting receives (`pump`).
    pub pump: Arc<Pump>,
    consumers: AtomicU64,
    /// Dropping the slot stops its lease timer and its standing consumer's task.
    _stop: watch::Sender<()>,
    pub stopped: watch::Receiver<()>,
}

impl Slot {
    /// A slot for `queue` with its lease timer running.
    pub(super) fn new(queue: &str) -> Arc<Self> {
        let leases = Arc::new(Leases::default());
        let (stop, stopped) = watch::channel(());
        tokio::spawn(leases::run_timer(
            queue.to_owned(),
            Arc::clone(&leases),
            stopped.clone(),
        ));
        Arc::new(Self {
            queue: queue.to_owned(),
            line: tokio::sync::Mutex::new(None),
            leases,
            pump: Arc::default(),
            consumers: AtomicU64::new(0),
            _stop: stop,
            stopped,
        })
    }

    /// The live line, opening a channel when there is none.
    async fn line<'a>(
        &self,
        line: &'a mut Option<Line>,
        inner: &Inner,
        link: &Arc<Link>,
    ) -> Result<&'a mut Line, MessagingError> {
        if !line.as_ref().is_some_and(|l| l.live(link.generation)) {
            // Its leases died with the channel.
            *line = None;
            self.leases.clear();
            // Ask on the admin connection first: a consume on a missing queue
            // would cost the data connection a channel.
            inner.admin.ready_count(RECEIVE, &self.queue).await?;
            let channel = link.open_channel().await?;
            let epoch = inner.next_epoch();
            self.leases.reset(epoch, Arc::clone(&channel));
            *line = Some(Line {
                generation: link.generation,
                epoch,
                channel,
                prefetch: 0,
            });
        }
        line.as_mut()
            .ok_or_else(|| errors::connection("no channel for the queue", None))
    }

    /// Sets the window and starts a consumer, as one step: another receive's
    /// `basic.qos` must not come between them.
    pub(super) async fn open(
        &self,
        inner: &Inner,
        want: u16,
    ) -> Result<(Consumer, u64), MessagingError> {
        let link = inner.data.link().await?;
        let mut guard = self.line.lock().await;
        let line = self.line(&mut guard, inner, &link).await?;
        let fail = |e| errors::call_error(RECEIVE, e, Some(&self.queue));
        if line.prefetch != want {
            // Unknown until the broker answers: a caller gone mid-way must
            // not leave the next consumer a window other than the one it
            // counts on (a full consumer with credit left strands deliveries).
            line.prefetch = 0;
            line.channel
                .call(move |c| async move {
                    c.basic_qos(BasicQosArguments::new(0, want, false)).await
                })
                .await
                .map_err(fail)?;
            line.prefetch = want;
        }
        let n = self.consumers.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tasker-messaging.{}.{}.{n}", self.queue, line.epoch);
        // `nowait`: RabbitMQ can answer one `basic.consume` with two
        // `consume-ok`s (the queue deleted and re-created under it: the
        // broker retries the consume on the new queue and sends its reply
        // again), and amqprs panics its dispatcher on the second, taking the
        // connection and every lease on it. Without a reply nothing can be
        // unmatched; the barrier that follows in `consume` is the round trip
        // that says whether the consume failed (the channel closes, 404).
        let args = BasicConsumeArguments::new(&self.queue, &tag)
            .manual_ack(true)
            .no_wait(true)
            .finish();
        // The consumer is owned from the moment its frame is queued, inside
        // the request's task: should the caller be gone by then, the task
        // drops it, and its guard cancels it (no orphan takes messages).
        let channel = Arc::clone(&line.channel);
        let consumer = line
            .channel
            .call(move |c| async move {
                let (tag, deliveries) = c.basic_consume_rx(args).await?;
                Ok(Consumer {
                    channel,
                    tag,
                    deliveries: Some(deliveries),
                    taken: Vec::new(),
                    want: usize::from(want),
                })
            })
            .await
            .map_err(fail)?;
        Ok((consumer, line.epoch))
    }

    /// A round trip on the line's channel: deliveries dispatched before it
    /// have arrived when it returns. A `basic.qos` repeating the current
    /// window, under the line lock so that it changes nothing.
    async fn barrier(&self) -> Result<(), MessagingError> {
        let guard = self.line.lock().await;
        let Some(line) = guard.as_ref() else {
            return Err(errors::connection("the channel closed", None));
        };
        let prefetch = line.prefetch;
        line.channel
            .call(move |c| async move {
                c.basic_qos(BasicQosArguments::new(0, prefetch, false))
                    .await
            })
            .await
            .map_err(|e| errors::call_error(RECEIVE, e, Some(&self.queue)))
    }

    /// Takes up to `max` messages (at most `window`) available now, leased
    /// for `secs`; with `until`, waits until then for a first one.
    pub(super) async fn receive<T: QueueMessage>(
        &self,
        inner: &Inner,
        max: usize,
        window: u16,
        secs: u64,
        until: Option<Instant>,
    ) -> Result<Received<T>, MessagingError> {
        let want = max.min(usize::from(window)).max(1);
        let lease = Duration::from_secs(secs);
        // The standing consumer first: what it holds, or for a waiting
        // receive, what it is sent until `until`.
        let (held, epoch) = self.pump.take(&self.leases, want, lease);
        if !held.is_empty() {
            return Ok(self.hand_out(inner, epoch, secs, held));
        }
        if let Some(until) = until {
            match self.pump.wait(&self.leases, want, lease, until).await {
                Waited::Got(taken, epoch) => return Ok(self.hand_out(inner, epoch, secs, taken)),
                Waited::Nothing => return Ok(self.hand_out(inner, epoch, secs, Vec::new())),
                // The consumer could not start: this receive reports why.
                Waited::Failed => {}
            }
        }
        let (channel, epoch) = self.channel(inner).await?;
        let mut taken = Vec::new();
        // How many more the broker says are ready; unknown after a wait.
        let mut ready = match self.get(&channel, epoch, lease).await? {
            Some((delivery, ready)) => {
                taken.push(delivery);
                Some(ready)
            }
            None => match until {
                None => {
                    self.top_up(&mut taken, epoch, want, lease);
                    return Ok(self.hand_out(inner, epoch, secs, taken));
                }
                Some(until) => {
                    taken.extend(self.consume(inner, 1, lease, Some(until)).await?);
                    None
                }
            },
        };
        let more = want.saturating_sub(taken.len());
        let known = ready.map_or(0, |r| usize::try_from(r).unwrap_or(usize::MAX));
        // A consumer only where it will fill: one left with credit races
        // other receivers for the last messages, and its cancel sends back,
        // counted, whatever it was dispatched meanwhile.
        if more >= BULK && known >= more.saturating_mul(CLAIM) {
            let window = u16::try_from(more).unwrap_or(u16::MAX);
            taken.extend(self.consume(inner, window, lease, None).await?);
        } else {
            while taken.len() < want && !taken.is_empty() && ready != Some(0) {
                match self.get(&channel, epoch, lease).await? {
                    Some((delivery, left)) => {
                        taken.push(delivery);
                        ready = Some(left);
                    }
                    None => break,
                }
            }
        }
        self.top_up(&mut taken, epoch, want, lease);
        Ok(self.hand_out(inner, epoch, secs, taken))
    }

    /// Adds to `taken` what the standing consumer was sent meanwhile, up to
    /// `want`. After a reply on the line's channel (a `basic.get`), what the
    /// queue dispatched to the consumer before it has arrived: a message
    /// released or requeued by this process just before, say, that went to
    /// the consumer rather than to the `basic.get`.
    fn top_up(&self, taken: &mut Vec<Delivery>, epoch: u64, want: usize, lease: Duration) {
        let more = want.saturating_sub(taken.len());
        if more == 0 {
            return;
        }
        // Only deliveries of the channel this receive leased on: its
        // receipts name that channel.
        taken.extend(self.pump.take_on(&self.leases, more, lease, epoch));
    }

    /// The line's channel and epoch, opening one when there is none.
    async fn channel(&self, inner: &Inner) -> Result<(Arc<TrackedChannel>, u64), MessagingError> {
        let link = inner.data.link().await?;
        let mut guard = self.line.lock().await;
        let line = self.line(&mut guard, inner, &link).await?;
        Ok((Arc::clone(&line.channel), line.epoch))
    }

    /// One `basic.get`: a message, leased before the reply leaves the task
    /// (so an abandoned call strands nothing), and how many more are ready.
    async fn get(
        &self,
        channel: &Arc<TrackedChannel>,
        epoch: u64,
        lease: Duration,
    ) -> Result<Option<(Delivery, u32)>, MessagingError> {
        let leases = Arc::clone(&self.leases);
        let args = BasicGetArguments::new(&self.queue).finish();
        channel
            .call(move |c| async move {
                let got = c.basic_get(args).await?;
                Ok(got.map(|(ok, properties, body)| {
                    let (tag, now) = (ok.delivery_tag(), Instant::now());
                    leases.grant(epoch, tag, now + lease, now);
                    let delivery = Delivery {
                        tag,
                        properties,
                        body,
                    };
                    (delivery, ok.message_count())
                }))
            })
            .await
            .map_err(|e| errors::call_error(RECEIVE, e, Some(&self.queue)))
    }

    /// Runs a consumer with a window of `want`: what arrives by the barrier,
    /// or with `until`, the first delivery by then.
    async fn consume(
        &self,
        inner: &Inner,
        want: u16,
        lease: Duration,
        until: Option<Instant>,
    ) -> Result<Vec<Delivery>, MessagingError> {
        let (mut consumer, epoch) = self.open(inner, want).await?;
        let mut open = true;
        // Deliveries dispatched at the consume arrive before the barrier's reply.
        {
            let barrier = self.barrier();
            tokio::pin!(barrier);
            while let Some(deliveries) = consumer.deliveries.as_mut() {
                tokio::select! {
                    biased;
                    message = deliveries.recv() => match message {
                        Some(message) => {
                            consumer.take(self, epoch, lease, message);
                            open = consumer.drain(self, epoch, lease);
                            if consumer.full() || !open {
                                break;
                            }
                        }
                        None => {
                            open = false;
                            break;
                        }
                    },
                    done = &mut barrier => {
                        done?;
                        open = consumer.drain(self, epoch, lease);
                        break;
                    }
                }
            }
        }
        if until.is_none() && open && !consumer.full() {
            open = self.fill(inner, &mut consumer, epoch, lease).await?;
        }
        if let Some(until) = until {
            if open && consumer.taken.is_empty() && consumer.wait(self, epoch, lease, until).await {
                consumer.drain(self, epoch, lease);
            }
        }
        if !open {
            // What was taken is requeued with the channel, or gone with the queue.
            return Err(if consumer.channel.usable() {
                // The broker cancelled the consumer: the queue was deleted.
                MessagingError::QueueNotFound {
                    queue: self.queue.clone(),
                }
            } else {
                // A 404 here is the (unawaited) consume finding no queue.
                errors::call_error(RECEIVE, consumer.channel.dead(), Some(&self.queue))
            });
        }
        consumer.close(self, epoch, lease).await
    }

    /// Waits for the deliveries a bulk consumer, not full when the barrier
    /// answered, still has coming. A quorum queue dispatches after
    /// `consume-ok`, so under load a barrier can answer first; cancelled
    /// then, the consumer's deliveries in flight would go back to the queue,
    /// each counted as a delivery. While the broker says messages are ready,
    /// the consumer's credit draws them; once none are, a barrier lets
    /// through what was dispatched before. False when the consumer ended.
    async fn fill(
        &self,
        inner: &Inner,
        consumer: &mut Consumer,
        epoch: u64,
        lease: Duration,
    ) -> Result<bool, MessagingError> {
        let give_up = Instant::now() + FILL_BOUND;
        loop {
            let ready = inner.admin.ready_count(RECEIVE, &self.queue).await?;
            if ready == 0 || Instant::now() >= give_up {
                self.barrier().await?;
                return Ok(consumer.drain(self, epoch, lease));
            }
            let next = (Instant::now() + FILL_STEP).min(give_up);
            consumer.wait(self, epoch, lease, next).await;
            if !consumer.drain(self, epoch, lease) {
                return Ok(false);
            }
            if consumer.full() {
                return Ok(true);
            }
        }
    }

    /// Decodes each delivery into a message, or a dead letter to move.
    fn hand_out<T: QueueMessage>(
        &self,
        inner: &Inner,
        epoch: u64,
        secs: u64,
        taken: Vec<Delivery>,
    ) -> Received<T> {
        let mut got = Received {
            messages: Vec::with_capacity(taken.len()),
            dead: Vec::new(),
            released: Vec::new(),
            epoch,
        };
        let lease_ends = delivery::lease_ends(secs);
        let now = chrono::Utc::now();
        for taken in taken {
            let delivered = properties::delivered(&taken.properties, taken.tag);
            let other_shape_for = delivered
                .other_shape_since
                .and_then(|since| (now - since).to_std().ok())
                .unwrap_or_default();
            let outcome = delivery::assemble::<T>(
                &inner.dead_letters,
                delivery::Delivery {
                    queue: &self.queue,
                    provider: Provider::RabbitMq,
                    receipt: Receipt {
                        scope: inner.holder,
                        id: taken.tag,
                        lease: epoch,
                    },
                    message_id: delivered.message_id.clone(),
                    enqueued_at: delivered.enqueued_at,
                    receive_count: delivered.receive_count,
                    lease_ends,
                    lease: Duration::from_secs(secs),
                    other_shape_for,
                    // Not UTF-8: not JSON either.
                    body: std::str::from_utf8(&taken.body).unwrap_or(""),
                    headers: delivered.headers.clone(),
                },
            );
            match outcome {
                Outcome::Deliver(message) => got.messages.push(message),
                Outcome::Release => got.released.push(OtherShape {
                    tag: taken.tag,
                    delivered,
                    properties: taken.properties,
                    body: taken.body,
                }),
                Outcome::DeadLetter(reason) => got.dead.push(DeadLetter {
                    tag: taken.tag,
                    delivered,
                    body: taken.body,
                    reason,
                }),
                // Stays leased, out of the caller's hands, and comes back later.
                Outcome::Hold => {}
            }
        }
        got
    }

    /// The backend is closing: closes the queue's channel (see
    /// [`TrackedChannel::close`]); its leases end, and the broker requeues
    /// what they held at once.
    pub(super) async fn close_line(&self) -> Result<(), CallError> {
        let line = self.line.lock().await.take();
        self.leases.clear();
        match line {
            Some(line) => line.channel.close().await,
            None => Ok(()),
        }
    }

    /// After a reconnect to `generation`: a channel of an older one died
    /// with its leases. One already opened on the new connection (a
    /// receive between the reconnect and this call) stays, with its leases.
    pub(super) async fn forget_line(&self, generation: u64) {
        let mut line = self.line.lock().await;
        if line
            .as_ref()
            .is_some_and(|line| line.generation >= generation)
        {
            return;
        }
        *line = None;
        self.leases.clear();
    }
}

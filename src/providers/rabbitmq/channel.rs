//! One AMQP channel with what the broker told us about it, and the rules
//! amqprs needs to be used safely.
//!
//! amqprs keys a channel's pending replies by method, so two requests of the
//! same kind in flight on one channel cross their replies (and a reply nobody
//! waits for panics its dispatcher task). Every synchronous request therefore
//! runs one at a time per channel, inside a spawned task that is never
//! dropped, so neither a caller going away nor a timeout abandons a request
//! half-way. A request that times out or fails gives the channel up: it is
//! closed once that request has ended, so the broker cancels its consumers
//! and requeues its deliveries instead of keeping them while the connection
//! lives (C13).

use crate::sync::lock;
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use amqprs::{
    callbacks::ChannelCallback,
    channel::{BasicAckArguments, BasicNackArguments, Channel},
    connection::Connection,
    Ack, BasicProperties, Cancel, CloseChannel, Nack, Return,
};
use async_trait::async_trait;

use super::publisher::{Confirms, Outcome};

/// Why the broker closed a channel (`channel.close` reply code and text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Closed {
    pub code: u16,
    pub text: String,
}

/// A failed channel request.
#[derive(Debug)]
pub(super) enum CallError {
    /// The broker closed the channel, e.g. 404 for a missing queue.
    Closed(Closed),
    /// The connection is gone, the request timed out, or the driver failed.
    Broken {
        message: String,
        source: Option<amqprs::error::Error>,
    },
}

impl CallError {
    pub(super) fn broken(message: impl Into<String>, source: Option<amqprs::error::Error>) -> Self {
        Self::Broken {
            message: message.into(),
            source,
        }
    }
}

/// What the broker said about a channel, written by its callback.
#[derive(Default)]
struct Events {
    closed: Mutex<Option<Closed>>,
    /// Consumers the broker cancelled (their queue was deleted).
    cancelled: Mutex<std::collections::HashSet<String>>,
}

/// The channel callback amqprs calls from its dispatcher task. It must be
/// quick: the dispatcher handles nothing else while it runs.
struct Callback {
    events: Arc<Events>,
    confirms: Option<Arc<Confirms>>,
    /// Channels of this connection the broker has closed (see [`CLOSED_CHANNEL_LIMIT`]).
    closures: Arc<AtomicU32>,
}

#[async_trait]
impl ChannelCallback for Callback {
    async fn close(
        &mut self,
        channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let closed = Closed {
            code: close.reply_code(),
            text: close.reply_text().clone(),
        };
        tracing::debug!(
            channel = channel.channel_id(),
            code = closed.code,
            text = %closed.text,
            "RabbitMQ closed a channel"
        );
        *lock(&self.events.closed) = Some(closed);
        self.closures.fetch_add(1, Ordering::Relaxed);
        if let Some(confirms) = &self.confirms {
            confirms.fail_all();
        }
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &Channel,
        cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        // amqprs ends the consumer's delivery stream; the receive sees that.
        // Remembered, so that what the consumer held is not copied back
        // into a queue created again under the same name.
        lock(&self.events.cancelled).insert(cancel.consumer_tag().clone());
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(ack.delivery_tag(), ack.mutiple(), Outcome::Ack);
        }
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(nack.delivery_tag(), nack.multiple(), Outcome::Nack);
        }
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        // The broker sends a publish's return before its ack, on this same
        // dispatcher, so the waiting caller sees the return.
        if let (Some(confirms), Some(id)) = (&self.confirms, properties.message_id()) {
            confirms.returned(id);
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        // The dispatcher task ended (channel or connection gone): no confirm
        // can arrive any more.
        if let Some(confirms) = &self.confirms {
            confirms.fail_all();
        }
    }
}

/// amqprs never frees the id of a channel the broker closed, and panics once
/// every id is taken; a connection that has lost this many channels is
/// replaced (the broker's default `channel_max` is 2047).
pub(super) const CLOSED_CHANNEL_LIMIT: u32 = 1_000;

/// A channel, its broker events, and the lock that serialises its requests.
pub(super) struct TrackedChannel {
    channel: Channel,
    events: Arc<Events>,
    requests: Arc<tokio::sync::Mutex<()>>,
    poisoned: AtomicBool,
    /// Set once a close was scheduled by [`TrackedChannel::give_up`].
    closing: AtomicBool,
    /// When the last ack or nack was handed to amqprs (see [`SETTLE_GRACE`]).
    last_settle: Mutex<Option<tokio::time::Instant>>,
    timeout: Duration,
}

/// How long [`TrackedChannel::close`] lets the last settle reach its queue.
/// A quorum queue's channel may hold acks back while earlier ones are
/// unapplied (a burst of single acks does this), and a channel closed
/// meanwhile drops them: the broker returns those messages, acked or not.
/// A timing heuristic: AMQP 0-9-1 has no round trip that confirms an ack
/// was applied. Measured: 8 to 17 of 1,000 acks lost when closing at once
/// after 1,000 single acks, none with a 20 ms pause; this is ten times
/// that. A slow cluster may need more; an ack missed is a duplicate.
const SETTLE_GRACE: Duration = Duration::from_millis(250);

impl TrackedChannel {
    /// Whether the broker cancelled consumer `tag` (its queue was deleted).
    pub(super) fn cancelled_by_broker(&self, tag: &str) -> bool {
        lock(&self.events.cancelled).contains(tag)
    }

    /// Opens a channel on `connection`. `confirms` receives publisher
    /// confirms and returns (publisher channels only).
    pub(super) async fn open(
        connection: &Connection,
        timeout: Duration,
        confirms: Option<Arc<Confirms>>,
        closures: Arc<AtomicU32>,
    ) -> Result<Arc<Self>, CallError> {
        let connection = connection.clone();
        // Spawned: an abandoned open would leave amqprs a reply nobody awaits.
        let opening = tokio::spawn(async move {
            let channel = tokio::time::timeout(timeout, connection.open_channel(None))
                .await
                .map_err(|_| CallError::broken("timed out opening a channel", None))?
                .map_err(|e| CallError::broken("cannot open a channel", Some(e)))?;
            let events = Arc::new(Events::default());
            channel
                .register_callback(Callback {
                    events: Arc::clone(&events),
                    confirms,
                    closures,
                })
                .await
                .map_err(|e| CallError::broken("cannot register a channel callback", Some(e)))?;
            Ok(Arc::new(Self {
                channel,
                events,
                requests: Arc::new(tokio::sync::Mutex::new(())),
                poisoned: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                last_settle: Mutex::new(None),
                timeout,
            }))
        });
        opening
            .await
            .unwrap_or_else(|e| Err(CallError::broken(format!("channel task failed: {e}"), None)))
    }

    /// Whether requests and acknowledgements may be sent on this channel.
    pub(super) fn usable(&self) -> bool {
        self.channel.is_open()
            && !self.poisoned.load(Ordering::Acquire)
            && lock(&self.events.closed).is_none()
    }

    /// Why the channel is unusable: the broker's close, or a broken link.
    pub(super) fn dead(&self) -> CallError {
        match lock(&self.events.closed).clone() {
            Some(closed) => CallError::Closed(closed),
            None => CallError::broken("the channel is closed", None),
        }
    }

    /// Cancels consumer `tag`, awaiting `cancel-ok` unless `no_wait`. A
    /// cancel that could not be sent would leave a consumer nobody owns:
    /// the channel is closed instead, and the broker cancels it and
    /// requeues its deliveries.
    pub(super) async fn cancel_consumer(
        self: &Arc<Self>,
        tag: &str,
        no_wait: bool,
    ) -> Result<(), CallError> {
        let args = amqprs::channel::BasicCancelArguments::new(tag)
            .no_wait(no_wait)
            .finish();
        let cancelled = self
            .call(move |c| async move { c.basic_cancel(args).await })
            .await
            .map(drop);
        if cancelled.is_err() {
            self.give_up();
        }
        cancelled
    }

    /// Runs one synchronous request (a method the broker answers), one at a
    /// time on this channel, within the timeout.
    pub(super) async fn call<T, F, Fut>(self: &Arc<Self>, request: F) -> Result<T, CallError>
    where
        F: FnOnce(Channel) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, amqprs::error::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + this.timeout;
            let Ok(turn) =
                tokio::time::timeout_at(deadline, Arc::clone(&this.requests).lock_owned()).await
            else {
                return Err(CallError::broken("timed out waiting for the channel", None));
            };
            if !this.usable() {
                return Err(this.dead());
            }
            // The request keeps its turn, and amqprs its responder, until the
            // broker answers, even when we stop waiting for it: a reply that
            // found no responder would panic the channel's dispatcher.
            let pending = request(this.channel.clone());
            let mut request = tokio::spawn(async move {
                let outcome = pending.await;
                drop(turn);
                outcome
            });
            let outcome = tokio::time::timeout_at(deadline, &mut request).await;
            if !matches!(outcome, Ok(Ok(Ok(_)))) {
                this.give_up();
            }
            match outcome {
                Ok(Ok(Ok(value))) => Ok(value),
                // The reply never came: the channel or its connection closed.
                Ok(Ok(Err(error))) => match lock(&this.events.closed).clone() {
                    Some(closed) => Err(CallError::Closed(closed)),
                    None => Err(CallError::broken("the request failed", Some(error))),
                },
                Ok(Err(e)) => Err(CallError::broken(format!("request task failed: {e}"), None)),
                Err(_) => Err(CallError::broken("timed out waiting for the broker", None)),
            }
        });
        task.await
            .unwrap_or_else(|e| Err(CallError::broken(format!("request task failed: {e}"), None)))
    }

    /// Marks the channel unusable and closes it from a task once the request
    /// in flight (if any) has ended, within a bound: a channel left open
    /// would keep its consumers and unacknowledged deliveries on the broker
    /// for as long as the connection lives. Leases on it are already dead
    /// (their receipts report `LeaseExpired`).
    pub(super) fn give_up(self: &Arc<Self>) {
        self.poisoned.store(true, Ordering::Release);
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Without a runtime the connection is gone too.
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            // Wait (bounded) for a request in flight, so its reply still
            // finds its responder; the close is sent either way.
            let _turn =
                tokio::time::timeout(this.timeout, Arc::clone(&this.requests).lock_owned()).await;
            if lock(&this.events.closed).is_some() {
                return; // The broker closed it already.
            }
            let closing = this.channel.clone().close();
            match tokio::time::timeout(this.timeout, closing).await {
                Ok(Ok(())) => tracing::debug!("closed a channel given up"),
                Ok(Err(error)) => tracing::debug!(?error, "could not close a channel given up"),
                Err(_) => tracing::debug!("timed out closing a channel given up"),
            }
        });
    }

    /// Closes the channel, after [`SETTLE_GRACE`] from its last settle,
    /// awaiting the broker's close-ok: every frame sent on it before has
    /// then reached the broker (whether a quorum queue applied the acks is
    /// what the grace is for), which requeues the deliveries still
    /// unacknowledged. Waits (bounded) for a
    /// request in flight first, as [`give_up`](Self::give_up) does. A
    /// channel given up or closed by the broker earlier is left as it is:
    /// nothing sent on it since can be waiting.
    pub(super) async fn close(&self) -> Result<(), CallError> {
        self.poisoned.store(true, Ordering::Release);
        if self.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _turn =
            tokio::time::timeout(self.timeout, Arc::clone(&self.requests).lock_owned()).await;
        if lock(&self.events.closed).is_some() {
            return Ok(());
        }
        let last_settle = *lock(&self.last_settle);
        if let Some(at) = last_settle {
            tokio::time::sleep_until(at + SETTLE_GRACE).await;
        }
        // amqprs reports success without a handshake once the connection is gone.
        if !self.channel.is_connection_open() {
            return Err(CallError::broken("the connection was lost", None));
        }
        match tokio::time::timeout(self.timeout, self.channel.clone().close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(CallError::broken("cannot close a channel", Some(error))),
            Err(_) => Err(CallError::broken("timed out closing a channel", None)),
        }
    }

    /// Acknowledges (`requeue == false`) or requeues a delivery.
    pub(super) async fn settle(
        self: &Arc<Self>,
        delivery_tag: u64,
        requeue: bool,
    ) -> Result<(), CallError> {
        self.settle_many(&[delivery_tag], requeue)
            .await
            .map_err(|(_, error)| error)
    }

    /// Settles `tags` in order, back to back: each frame is one cancel-safe
    /// send to amqprs' writer, and none waits for the broker. A failure means
    /// the channel is gone, and the broker requeued the rest with it:
    /// `Err((settled, error))`, `settled` counting those sent before.
    ///
    /// Should the caller drop this future before every frame is queued, a
    /// task sends the rest, so a delivery its lease no longer tracks is never
    /// left unsettled.
    pub(super) async fn settle_many(
        self: &Arc<Self>,
        tags: &[u64],
        requeue: bool,
    ) -> Result<(), (usize, CallError)> {
        let mut unsent = Unsettled {
            channel: self,
            tags,
            sent: 0,
            requeue,
        };
        while let Some(&tag) = tags.get(unsent.sent) {
            if let Err(error) = self.send_settle(tag, requeue).await {
                let sent = unsent.sent;
                std::mem::forget(unsent);
                return Err((sent, error));
            }
            unsent.sent += 1;
        }
        std::mem::forget(unsent);
        Ok(())
    }

    async fn send_settle(&self, delivery_tag: u64, requeue: bool) -> Result<(), CallError> {
        // A tag sent on a channel the broker closed would close the whole
        // connection, and an unknown tag closes the channel: send only on a
        // live channel, and only tags its lease table still held.
        if !self.usable() {
            return Err(self.dead());
        }
        let sent = if requeue {
            self.channel
                .basic_nack(BasicNackArguments::new(delivery_tag, false, true))
                .await
        } else {
            self.channel
                .basic_ack(BasicAckArguments::new(delivery_tag, false))
                .await
        };
        *lock(&self.last_settle) = Some(tokio::time::Instant::now());
        sent.map_err(|e| CallError::broken("cannot settle a delivery", Some(e)))
    }

    /// The driver channel, for frames that need no reply (publishes).
    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// Settlements whose caller went away before all were sent; dropping it
/// sends the rest from a task. Defused with `mem::forget` once all are sent.
struct Unsettled<'a> {
    channel: &'a Arc<TrackedChannel>,
    tags: &'a [u64],
    sent: usize,
    requeue: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        let channel = Arc::clone(self.channel);
        let (rest, requeue) = (self.tags[self.sent..].to_vec(), self.requeue);
        // Outside a runtime the connection, and with it the deliveries, is gone.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for tag in rest {
                    if let Err(error) = channel.send_settle(tag, requeue).await {
                        tracing::debug!(
                            ?error,
                            "could not settle a delivery; the broker requeues it with its channel"
                        );
                        return;
                    }
                }
            });
        }
    }
}

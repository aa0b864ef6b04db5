//! Publisher confirms: a confirm-mode channel whose publishes are matched to
//! their callers by delivery tag.
//!
//! Publishing assigns tags in order under a short lock (the broker numbers a
//! channel's publishes 1, 2, 3, ...); waiting for the confirm happens outside
//! it, so concurrent sends pipeline on one channel. Acks and nacks honour
//! `multiple`; a `basic.return` (no queue took a `mandatory` publish) arrives
//! before the publish's ack and marks it, so its caller gets `QueueNotFound`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::AtomicU32, Arc, Mutex, MutexGuard},
    time::Duration,
};

use amqprs::{
    channel::{BasicPublishArguments, ConfirmSelectArguments},
    connection::Connection,
};
use tokio::{
    sync::{oneshot, Notify},
    time::Instant,
};

use super::{
    channel::{CallError, TrackedChannel},
    errors,
    properties::Outgoing,
};
use crate::{MessageId, MessagingError};

/// How the broker settled one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Durable in the queue, or returned unrouted (`QueueNotFound`) when a
    /// `basic.return` preceded it.
    Ack,
    /// The broker could not take it.
    Nack,
    /// The channel or connection ended first: it may or may not be durable.
    Lost,
}

struct Waiting {
    message_id: String,
    returned: bool,
    reply: oneshot::Sender<(Outcome, bool)>,
}

#[derive(Default)]
struct State {
    by_tag: BTreeMap<u64, Waiting>,
    by_id: HashMap<String, u64>,
    /// Set once the channel can confirm nothing more.
    dead: bool,
    /// Set by a nack: the next send opens a new channel (see `Refused`).
    retired: bool,
}

/// The publishes of one channel that wait for their confirm.
#[derive(Default)]
pub(super) struct Confirms {
    state: Mutex<State>,
    /// Signalled whenever the last waiting publish is settled or forgotten.
    idle: Notify,
}

impl Confirms {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only move map entries; a poisoned lock is consistent.
        crate::sync::lock(&self.state)
    }

    fn wake_if_idle(&self, state: &State) {
        if state.by_tag.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Returns once no publish waits for its confirm.
    async fn settled(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake in between is kept.
            notified.as_mut().enable();
            if self.lock().by_tag.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn register(&self, tag: u64, message_id: &str) -> Option<oneshot::Receiver<(Outcome, bool)>> {
        let mut state = self.lock();
        if state.dead {
            return None;
        }
        let (reply, receiver) = oneshot::channel();
        state.by_id.insert(message_id.to_owned(), tag);
        state.by_tag.insert(
            tag,
            Waiting {
                message_id: message_id.to_owned(),
                returned: false,
                reply,
            },
        );
        Some(receiver)
    }

    fn forget(&self, tag: u64) {
        let mut state = self.lock();
        if let Some(waiting) = state.by_tag.remove(&tag) {
            state.by_id.remove(&waiting.message_id);
        }
        self.wake_if_idle(&state);
    }

    /// An ack or nack for `tag` (and every earlier tag when `multiple`).
    pub(super) fn settle(&self, tag: u64, multiple: bool, outcome: Outcome) {
        let mut state = self.lock();
        let settled: Vec<Waiting> = if multiple {
            let later = state.by_tag.split_off(&tag.saturating_add(1));
            std::mem::replace(&mut state.by_tag, later)
                .into_values()
                .collect()
        } else {
            state.by_tag.remove(&tag).into_iter().collect()
        };
        state.retired |= outcome == Outcome::Nack;
        for waiting in settled {
            state.by_id.remove(&waiting.message_id);
            // The caller may have given up (timeout, dropped future).
            let _ = waiting.reply.send((outcome, waiting.returned));
        }
        self.wake_if_idle(&state);
    }

    /// A `basic.return` of the publish carrying `message_id`.
    pub(super) fn returned(&self, message_id: &str) {
        let mut state = self.lock();
        if let Some(tag) = state.by_id.get(message_id).copied() {
            if let Some(waiting) = state.by_tag.get_mut(&tag) {
                waiting.returned = true;
            }
        }
    }

    /// Fails every waiting publish: the channel will confirm nothing more.
    pub(super) fn fail_all(&self) {
        let mut state = self.lock();
        state.dead = true;
        state.by_id.clear();
        for (_, waiting) in std::mem::take(&mut state.by_tag) {
            let _ = waiting.reply.send((Outcome::Lost, waiting.returned));
        }
        self.wake_if_idle(&state);
    }

    /// Whether new publishes may go out on this channel.
    fn accepts(&self) -> bool {
        let state = self.lock();
        !state.dead && !state.retired
    }

    fn retired(&self) -> bool {
        self.lock().retired
    }
}

/// What [`Publisher::publish`] did with the messages.
pub(super) enum Publish {
    /// Published: one confirm to wait for per message.
    Sent(Vec<Pending>),
    /// Nothing published: a nack retired the channel after the caller got
    /// it; the messages go out on the next publisher channel.
    Retired(Vec<Outgoing>),
}

/// A confirm-mode channel for publishing.
pub(super) struct Publisher {
    channel: Arc<TrackedChannel>,
    confirms: Arc<Confirms>,
    /// The tag of the last publish; held only while publishing, never while waiting.
    last_tag: tokio::sync::Mutex<u64>,
    timeout: Duration,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub(super) async fn open(
        connection: &Connection,
        timeout: Duration,
        closures: Arc<AtomicU32>,
    ) -> Result<Self, CallError> {
        let confirms = Arc::new(Confirms::default());
        let channel =
            TrackedChannel::open(connection, timeout, Some(Arc::clone(&confirms)), closures)
                .await?;
        channel
            .call(|c| async move { c.confirm_select(ConfirmSelectArguments::default()).await })
            .await?;
        Ok(Self {
            channel,
            confirms,
            last_tag: tokio::sync::Mutex::default(),
            timeout,
        })
    }

    /// The channel publishes go out on (closed by `teardown`).
    pub(super) fn tracked(&self) -> &Arc<TrackedChannel> {
        &self.channel
    }

    /// Whether publishes can still be confirmed on this channel.
    pub(super) fn usable(&self) -> bool {
        self.channel.usable() && self.confirms.accepts()
    }

    /// Closes the channel once the publishes already on it are settled, or
    /// after the timeout: other sends may still await their confirms on a
    /// channel that one nack retired, and closing at once would fail them
    /// as lost (a retry, a duplicate, a failure counted by the breaker).
    pub(super) fn retire(self: Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Without a runtime the connection is gone too.
        };
        runtime.spawn(async move {
            let drained = async {
                self.confirms.settled().await;
                // A publish that got this channel before it retired holds
                // or awaits this lock; once it is ours, every later one
                // sees `retired` and leaves: the last confirms are these.
                let _publishing = self.last_tag.lock().await;
                self.confirms.settled().await;
            };
            let _ = tokio::time::timeout(self.timeout, drained).await;
            self.channel.give_up();
        });
    }

    /// Publishes `messages` in order to `queue` on the default exchange,
    /// persistent and `mandatory`, returning one confirm to wait for per message.
    ///
    /// Cancel-safe without a task: each publish is one cancel-safe send to
    /// amqprs' writer, and the tag advances in the same poll that queues it,
    /// so a caller dropped at an await leaves tags and publishes lined up.
    pub(super) async fn publish(
        &self,
        queue: &str,
        messages: Vec<Outgoing>,
    ) -> Result<Publish, MessagingError> {
        let lost = || errors::connection("the publisher channel is closed", None);
        let mut tag = self.last_tag.lock().await;
        if self.confirms.retired() {
            return Ok(Publish::Retired(messages));
        }
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            if !self.channel.usable() {
                return Err(lost());
            }
            let next = *tag + 1;
            let reply = self
                .confirms
                .register(next, &message.message_id)
                .ok_or_else(lost)?;
            let unsent = Unsent {
                confirms: &self.confirms,
                tag: next,
            };
            // Not `finish()`, which clones the arguments. A delayed send
            // goes through the delay tiers (`delay`).
            let mut args = match message.route.as_deref() {
                Some((exchange, key)) => BasicPublishArguments::new(exchange, key),
                None => BasicPublishArguments::new("", queue),
            };
            args.mandatory(true);
            let sent = self
                .channel
                .channel()
                .basic_publish(message.properties, message.body, args)
                .await;
            std::mem::forget(unsent);
            if let Err(e) = sent {
                // Tags and publishes may no longer line up: retire the channel.
                self.confirms.forget(next);
                self.confirms.fail_all();
                return Err(errors::connection("cannot publish", Some(e)));
            }
            *tag = next;
            pending.push(Pending {
                tag: next,
                message_id: message.message_id,
                reply,
                confirms: Arc::clone(&self.confirms),
                queue: queue.to_owned(),
                timeout: self.timeout,
            });
        }
        Ok(Publish::Sent(pending))
    }
}

/// A registered publish whose caller went away before it was queued:
/// dropping it forgets the registration, so the tag goes to the next publish.
/// Defused with `mem::forget` once queued.
struct Unsent<'a> {
    confirms: &'a Confirms,
    tag: u64,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.confirms.forget(self.tag);
    }
}

/// One publish waiting for its confirm.
pub(super) struct Pending {
    tag: u64,
    message_id: String,
    reply: oneshot::Receiver<(Outcome, bool)>,
    confirms: Arc<Confirms>,
    queue: String,
    timeout: Duration,
}

impl Pending {
    /// Waits for the confirm: the message id once the broker holds the
    /// message durably, `QueueNotFound` if no queue took it, an error otherwise.
    pub(super) async fn confirmed(self) -> Result<MessageId, MessagingError> {
        let deadline = Instant::now() + self.timeout;
        self.confirmed_by(deadline).await
    }

    /// [`confirmed`](Self::confirmed) with a shared deadline (batches).
    pub(super) async fn confirmed_by(self, deadline: Instant) -> Result<MessageId, MessagingError> {
        let Self {
            tag,
            message_id,
            reply,
            confirms,
            queue,
            ..
        } = self;
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok((Outcome::Ack, false))) => Ok(MessageId::new(message_id)),
            Ok(Ok((Outcome::Ack, true))) => Err(MessagingError::QueueNotFound { queue }),
            Ok(Ok((Outcome::Nack, _))) => Err(errors::refused(format!(
                "the broker refused message {message_id} (basic.nack)"
            ))),
            Ok(Ok((Outcome::Lost, _))) | Ok(Err(_)) => Err(errors::connection(
                format!("the connection closed before message {message_id} was confirmed; it may or may not have been stored"),
                None,
            )),
            Err(_) => {
                confirms.forget(tag);
                Err(errors::connection(
                    format!("no publisher confirm for message {message_id} in time; it may or may not have been stored"),
                    None,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_settle_in_order_returns_mark_not_found_and_a_nack_retires_the_channel() {
        let confirms = Confirms::default();
        let mut one = confirms.register(1, "a").unwrap();
        let mut two = confirms.register(2, "b").unwrap();
        let mut three = confirms.register(3, "c").unwrap();
        confirms.returned("b");
        confirms.settle(2, true, Outcome::Ack);
        assert_eq!(one.try_recv().unwrap(), (Outcome::Ack, false));
        assert_eq!(two.try_recv().unwrap(), (Outcome::Ack, true));
        assert!(three.try_recv().is_err());
        assert!(confirms.accepts());
        confirms.settle(3, false, Outcome::Nack);
        assert_eq!(three.try_recv().unwrap(), (Outcome::Nack, false));
        assert!(!confirms.accepts(), "a nack retires the channel");
        let mut four = confirms.register(4, "d").unwrap();
        confirms.fail_all();
        assert_eq!(four.try_recv().unwrap(), (Outcome::Lost, false));
        assert!(confirms.register(5, "e").is_none());
    }

    #[tokio::test]
    async fn settled_waits_for_the_last_confirm_of_a_retired_channel() {
        let confirms = Arc::new(Confirms::default());
        confirms.settled().await; // nothing waits
        let _one = confirms.register(1, "a").unwrap();
        let _two = confirms.register(2, "b").unwrap();
        confirms.settle(1, false, Outcome::Nack);
        let waiter = tokio::spawn({
            let confirms = Arc::clone(&confirms);
            async move { confirms.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "publish 2 still waits for its confirm"
        );
        confirms.settle(2, false, Outcome::Ack);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("settled once the last confirm arrived")
            .unwrap();
    }
}

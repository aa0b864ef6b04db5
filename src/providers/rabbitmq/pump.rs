//! The standing consumer: one per queue and process while its callers keep
//! waiting for messages, so that a steady stream costs a delivery per
//! message instead of a consumer started and cancelled per receive.
//!
//! What it may hold (CONTRACT C27): a delivery no caller has taken is held
//! for at most [`HOLD`], and the consumers' window grows only to the
//! callers' demand: what the waiting callers want plus what their
//! deliveries still leased to callers use. A delivery held for [`HOLD`] is
//! given back *uncounted* (a confirmed copy carrying the hand-outs so far,
//! then an ack of the original: `put_back`), so `receive_count` still counts
//! hand-outs to callers only (C28), with the consumers running on: a cancel
//! with credit left can race a dispatch, which the broker counts. Only once
//! no caller has waited for [`LINGER`] (or the backend closes) are they
//! cancelled, each cancel awaited so that nothing they were sent is missed,
//! and what they hold given back.
//!
//! A quorum queue fixes a consumer's prefetch when it starts (a later
//! `basic.qos` changes nothing on RabbitMQ 3.10). So the window grows by
//! consumers: when callers wait for more than the credit left, another
//! consumer starts on the same channel with a window of the difference, up
//! to `prefetch_count` in all. Past that, a consumer whose every delivery is
//! leased is replaced by one with a window from the demand now: with no
//! credit left, nothing is in flight to it, so its cancel races nothing and
//! needs no reply. Only a stop cancels consumers with credit left, once
//! callers stopped coming; a delivery in flight then comes back counted
//! (the race C28's RabbitMQ note states).
//!
//! Callers never await the consumer: they register their demand, take what
//! is held under a lock, and wait for a wake-up. A caller dropped at any
//! point has leased only what it took, in the same step as taking it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::Poll,
    time::Duration,
};

use amqprs::channel::ConsumerMessage;
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};

use super::{
    channel::TrackedChannel,
    consumer::Delivery,
    credit::{Credit, Token},
    leases::Leases,
};

/// Longest a delivery no caller took is held before the consumer stops and
/// gives it back; the give-back itself takes a few milliseconds more, within
/// the 100 ms of C27.
pub(super) const HOLD: Duration = Duration::from_millis(50);
/// How long the consumer outlives its last waiting caller: callers that
/// work on a batch and come back within it keep it (and its window).
pub(super) const LINGER: Duration = Duration::from_millis(100);

/// A delivery that no caller has taken yet.
pub(super) struct Held {
    pub delivery: Delivery,
    pub credit: Token,
    /// When it arrived: its lease and the broker's `consumer_timeout` count
    /// from here.
    pub since: Instant,
    /// The consumer it came from.
    from: u64,
    /// That consumer's tag.
    pub tag: Arc<str>,
}

/// The consumer while it runs.
pub(super) struct Running {
    pub channel: Arc<TrackedChannel>,
    pub tag: Arc<str>,
    pub epoch: u64,
    pub window: usize,
    pub credit: Arc<Credit>,
    rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    /// Names it among the pump's consumers.
    id: u64,
    /// Being cancelled: it counts for no credit, and its end is ours.
    cancelling: bool,
}

impl Running {
    /// A consumer whose deliveries arrive on `rx`.
    pub(super) fn new(
        channel: Arc<TrackedChannel>,
        tag: String,
        epoch: u64,
        window: usize,
        rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    ) -> Self {
        Self {
            channel,
            tag: tag.into(),
            epoch,
            window,
            credit: Arc::default(),
            rx,
            id: 0,
            cancelling: false,
        }
    }
}

#[derive(Default)]
struct State {
    /// The consumers, all on `held_channel`.
    running: Vec<Running>,
    /// Deliveries no caller took yet, all of `held_epoch`'s channel.
    held: VecDeque<Held>,
    held_epoch: u64,
    held_channel: Option<Arc<TrackedChannel>>,
    /// What the callers waiting now want, and how many they are.
    wanted: usize,
    waiters: usize,
    /// When a caller last stopped waiting.
    last_left: Option<Instant>,
    /// Callers that asked so far, and that count when a start last failed:
    /// the callers then fall back to a receive of their own (which reports
    /// the error), and only a later caller makes the pump try again.
    asks: u64,
    failed_at: Option<u64>,
    /// Whether the task that runs the consumer was spawned.
    spawned: bool,
    /// The last consumer id given.
    ids: u64,
    /// The backend is closing: no consumer starts again.
    closed: bool,
}

impl State {
    /// Moves what amqprs has received into `held`.
    fn pull(&mut self) {
        let (held, mut deleted) = (&mut self.held, Vec::new());
        self.running.retain_mut(|running| loop {
            match running.rx.try_recv() {
                Ok(message) => hold(held, running, message),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // Gone with its channel, which gave back what it held;
                    // or cancelled by the broker, its queue deleted: what
                    // it held went with the queue, and must not be copied
                    // into one created again under the same name.
                    if running.channel.cancelled_by_broker(&running.tag) {
                        deleted.push(running.id);
                    }
                    return false;
                }
            }
        });
        if !deleted.is_empty() {
            self.held.retain(|held| !deleted.contains(&held.from));
        }
    }

    /// The credit the consumers have left, and their windows in all.
    fn credit(&self) -> (usize, usize) {
        let live = self.running.iter().filter(|running| !running.cancelling);
        live.fold((0, 0), |(free, total), running| {
            let used = running.credit.used();
            (
                free + running.window.saturating_sub(used),
                total + running.window,
            )
        })
    }
}

fn hold(held: &mut VecDeque<Held>, running: &Running, message: ConsumerMessage) {
    if let Some(delivery) = Delivery::from_message(message) {
        held.push_back(Held {
            delivery,
            credit: Token::new(&running.credit),
            since: Instant::now(),
            from: running.id,
            tag: Arc::clone(&running.tag),
        });
    }
}

/// What the consumer's task does next.
pub(super) enum Next {
    /// Start a consumer (another, if some run) with this window.
    Start(usize),
    /// Cancel a consumer, which has no credit left (its id, channel and
    /// tag), then start one with this window.
    Replace(u64, Arc<TrackedChannel>, String, usize),
    /// Cancel the consumers and give back what they hold.
    Stop,
    /// Give back what was held for [`HOLD`], the consumers running on.
    GiveBack,
    /// Wait for a delivery, a caller, or this time.
    Wait(Option<Instant>),
}

/// How a waiting caller's turn ended.
pub(super) enum Waited {
    /// Deliveries, leased on channel `epoch`.
    Got(Vec<Delivery>, u64),
    /// Nothing came by the deadline.
    Nothing,
    /// The consumer could not start: receive as without it.
    Failed,
}

/// One queue's standing consumer, shared by the callers and its task.
#[derive(Default)]
pub(super) struct Pump {
    state: Mutex<State>,
    /// Wakes a waiting caller: deliveries arrived (each taker passes it on
    /// while some are left), or the consumer failed (all of them).
    arrived: Notify,
    /// Wakes the task: a caller came or left.
    asked: Notify,
    /// Held by the task during a step, and by `close` while it stops the
    /// consumers: the two never interleave.
    pub step: tokio::sync::Mutex<()>,
}

impl Pump {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Whether the caller must spawn the task: true once.
    pub(super) fn claim_task(&self) -> bool {
        !std::mem::replace(&mut self.lock().spawned, true)
    }

    /// Up to `want` held deliveries, each leased for `lease` in the same step.
    pub(super) fn take(
        &self,
        leases: &Leases,
        want: usize,
        lease: Duration,
    ) -> (Vec<Delivery>, u64) {
        let mut state = self.lock();
        let epoch = state.held_epoch;
        (self.take_locked(&mut state, leases, want, lease), epoch)
    }

    /// [`take`](Self::take), only if what is held is of channel `epoch`.
    pub(super) fn take_on(
        &self,
        leases: &Leases,
        want: usize,
        lease: Duration,
        epoch: u64,
    ) -> Vec<Delivery> {
        let mut state = self.lock();
        if state.held_epoch != epoch {
            return Vec::new();
        }
        self.take_locked(&mut state, leases, want, lease)
    }

    fn take_locked(
        &self,
        state: &mut MutexGuard<'_, State>,
        leases: &Leases,
        want: usize,
        lease: Duration,
    ) -> Vec<Delivery> {
        state.pull();
        let epoch = state.held_epoch;
        let (mut taken, now, mut refused) = (Vec::new(), Instant::now(), false);
        while taken.len() < want {
            let Some(held) = state.held.pop_front() else {
                break;
            };
            let tag = held.delivery.tag;
            if leases.grant_with(epoch, tag, now + lease, held.since, Some(held.credit)) {
                taken.push(held.delivery);
            } else {
                refused = true;
            }
        }
        if refused {
            // The lease table moved to another channel while this one
            // lives: nothing would ever settle these deliveries. Closing
            // the channel makes the broker requeue them.
            if let Some(channel) = state.held_channel.as_ref().filter(|c| c.usable()) {
                channel.give_up();
            }
        }
        if !state.held.is_empty() {
            // Another caller takes the rest, and the task times how long
            // it is held.
            self.arrived.notify_one();
            self.asked.notify_one();
        }
        taken
    }

    /// Waits until `until` for deliveries, at most `want`, leased for `lease`.
    pub(super) async fn wait(
        &self,
        leases: &Leases,
        want: usize,
        lease: Duration,
        until: Instant,
    ) -> Waited {
        let demand = Demand::new(self, want);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let (taken, epoch) = self.take(leases, want, lease);
            if !taken.is_empty() {
                return Waited::Got(taken, epoch);
            }
            let (failed, short) = {
                let state = self.lock();
                // Nothing held, and too little credit for what is wanted:
                // the task must add a consumer, or nothing may come.
                let short = state.running.is_empty() || state.wanted > state.credit().0;
                (state.failed_at.is_some_and(|at| at >= demand.ask), short)
            };
            if failed {
                return Waited::Failed;
            }
            if short {
                self.asked.notify_one();
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(until) => {
                    // What came at the last moment, rather than a give-back.
                    let (taken, epoch) = self.take(leases, want, lease);
                    if taken.is_empty() {
                        return Waited::Nothing;
                    }
                    return Waited::Got(taken, epoch);
                }
            }
        }
    }

    /// Decides the task's next step; `cap` bounds a window.
    pub(super) fn next(&self, cap: usize) -> Next {
        let mut state = self.lock();
        state.pull();
        let now = Instant::now();
        if state.closed {
            if state.running.is_empty() && state.held.is_empty() {
                return Next::Wait(None);
            }
            return Next::Stop;
        }
        let give_back_at = state.held.front().map(|held| held.since + HOLD);
        let linger_until = match (state.waiters, state.last_left) {
            (0, Some(left)) => Some(left + LINGER),
            (0, None) => Some(now),
            _ => None,
        };
        if state.running.is_empty() {
            if give_back_at.is_some_and(|at| now >= at) {
                return Next::Stop;
            }
            let retry = state.failed_at.is_none_or(|at| state.asks > at);
            if state.wanted > 0 && retry {
                return Next::Start(state.wanted.clamp(1, cap));
            }
            return Next::Wait(give_back_at);
        }
        let (free, total) = state.credit();
        let retry = state.failed_at.is_none_or(|at| state.asks > at);
        if state.held.is_empty() && state.wanted > free && retry {
            let short = state.wanted - free;
            if total < cap {
                return Next::Start(short.min(cap - total));
            }
            let spent = state
                .running
                .iter_mut()
                .find(|running| !running.cancelling && running.credit.used() >= running.window);
            if let Some(spent) = spent {
                spent.cancelling = true;
                let room = cap.saturating_sub(total - spent.window).max(1);
                let (channel, tag) = (Arc::clone(&spent.channel), spent.tag.to_string());
                return Next::Replace(spent.id, channel, tag, short.clamp(1, room));
            }
        }
        if linger_until.is_some_and(|at| now >= at) {
            return Next::Stop;
        }
        if give_back_at.is_some_and(|at| now >= at) {
            // The consumers keep running: a cancel with credit left could
            // race a dispatch, which the broker would count.
            return Next::GiveBack;
        }
        Next::Wait(match (give_back_at, linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The consumer started: its deliveries come on `running`'s receiver.
    /// Handed back when the backend closed meanwhile: cancel it.
    pub(super) fn started(&self, mut running: Running) -> Option<Running> {
        let mut state = self.lock();
        if state.closed {
            return Some(running);
        }
        state.ids += 1;
        running.id = state.ids;
        if state.held_epoch != running.epoch {
            // Held deliveries and consumers of an older channel went with it.
            state.held.clear();
            state.running.clear();
        }
        state.held_epoch = running.epoch;
        state.held_channel = Some(Arc::clone(&running.channel));
        state.running.push(running);
        state.failed_at = None;
        None
    }

    /// The consumer could not start: the callers waiting now fall back.
    pub(super) fn failed(&self) {
        let mut state = self.lock();
        state.failed_at = Some(state.asks);
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Takes what was held for [`HOLD`] or longer, leaving the consumers
    /// running, with the channel the deliveries are on.
    pub(super) fn take_old(&self) -> (Vec<Held>, Option<Arc<TrackedChannel>>) {
        let mut state = self.lock();
        state.pull();
        let now = Instant::now();
        let old = state
            .held
            .iter()
            .take_while(|held| now >= held.since + HOLD)
            .count();
        let held = state.held.drain(..old).collect();
        (held, state.held_channel.clone())
    }

    /// Takes everything held, leaving the consumers running, with the
    /// channel the deliveries are on.
    pub(super) fn take_held(&self) -> (Vec<Held>, Option<Arc<TrackedChannel>>) {
        let mut state = self.lock();
        state.pull();
        let held = state.held.drain(..).collect();
        (held, state.held_channel.clone())
    }

    /// The consumers to cancel, leaving their deliveries to come.
    pub(super) fn stopping(&self) -> Vec<(Arc<TrackedChannel>, String)> {
        let mut state = self.lock();
        state
            .running
            .iter_mut()
            .map(|running| {
                running.cancelling = true;
                (Arc::clone(&running.channel), running.tag.to_string())
            })
            .collect()
    }

    /// Consumer `id` was cancelled: takes what it was sent before, and ends it.
    pub(super) fn retired(&self, id: u64) {
        let mut state = self.lock();
        state.pull();
        state.running.retain(|running| running.id != id);
    }

    /// The consumer was cancelled: takes what it was sent before, ends it,
    /// and returns everything held, with the channel and epoch it is on.
    pub(super) fn stopped(&self) -> (Vec<Held>, Option<Arc<TrackedChannel>>, u64) {
        let mut state = self.lock();
        state.pull();
        state.running.clear();
        let held = state.held.drain(..).collect();
        // Nothing is on it any more: it need not stay open for the pump.
        (held, state.held_channel.take(), state.held_epoch)
    }

    /// Waits for a delivery to a consumer (pending while none runs), moves
    /// it and any after it into `held`, and wakes a caller.
    pub(super) async fn delivered(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let State { running, held, .. } = &mut *state;
            let mut ready = false;
            for consumer in running.iter_mut() {
                match consumer.rx.poll_recv(cx) {
                    Poll::Ready(Some(message)) => {
                        hold(held, consumer, message);
                        ready = true;
                    }
                    // Ended: `pull` drops it.
                    Poll::Ready(None) => ready = true,
                    Poll::Pending => {}
                }
            }
            if ready {
                state.pull();
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        self.arrived.notify_one();
    }

    /// The backend is closing: no consumer starts again, and the task
    /// stops those that run.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.asked.notify_one();
    }

    /// The task ended (it panicked, say): the next caller spawns another,
    /// and the callers waiting now fall back.
    pub(super) fn task_ended(&self) {
        self.lock().spawned = false;
        self.failed();
    }

    /// Ends when a caller comes or leaves (pin it and `enable` it before
    /// looking at the state, so that one in between is not missed).
    pub(super) fn asked(&self) -> tokio::sync::futures::Notified<'_> {
        self.asked.notified()
    }
}

/// A waiting caller's demand, counted while it waits.
struct Demand<'a> {
    pump: &'a Pump,
    want: usize,
    ask: u64,
}

impl<'a> Demand<'a> {
    fn new(pump: &'a Pump, want: usize) -> Self {
        let mut state = pump.lock();
        state.wanted += want;
        state.waiters += 1;
        state.asks += 1;
        let ask = state.asks;
        // The caller wakes the task when what is held and the credit left
        // fall short (`wait`): a wake-up per receive would cost a task switch.
        drop(state);
        Self { pump, want, ask }
    }
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        let mut state = self.pump.lock();
        state.wanted -= self.want;
        state.waiters -= 1;
        state.last_left = Some(Instant::now());
        // The last one gone: the task times the consumers' linger.
        let last = state.waiters == 0;
        drop(state);
        if last {
            self.pump.asked.notify_one();
        }
    }
}

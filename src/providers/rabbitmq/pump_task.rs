//! The task that runs a queue's standing consumer (`pump`): starts it when
//! callers wait, replaces it when its window is used up, and stops it and
//! gives back what it holds once callers stop coming.

use std::sync::{Arc, Weak};

use tokio::sync::watch;

use super::{
    inner::Inner,
    pump::{Next, Pump, Running},
    slot::Slot,
    RabbitMqMessageService,
};
use crate::resilience::Resilience;

impl RabbitMqMessageService {
    /// Spawns the task of `slot`'s standing consumer, once.
    pub(super) fn run_pump_of(&self, slot: &Arc<Slot>) {
        if slot.pump.claim_task() {
            let task = run_pump(
                Arc::downgrade(&self.inner),
                Arc::clone(&self.resilience),
                Arc::downgrade(slot),
                Arc::clone(&slot.pump),
                slot.stopped.clone(),
            );
            tokio::spawn(task);
        }
    }
}

/// Runs the standing consumer until the slot or the backend is dropped. It
/// holds neither while it waits: a backend dropped by its user closes.
async fn run_pump(
    inner: Weak<Inner>,
    resilience: Arc<Resilience>,
    slot: Weak<Slot>,
    pump: Arc<Pump>,
    mut stop: watch::Receiver<()>,
) {
    /// Lets the callers know when the task ends, however it ends.
    struct Ended(Arc<Pump>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.task_ended();
        }
    }
    let _ended = Ended(Arc::clone(&pump));
    loop {
        let asked = pump.asked();
        tokio::pin!(asked);
        asked.as_mut().enable();
        let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
            return;
        };
        let service = RabbitMqMessageService {
            inner,
            resilience: Arc::clone(&resilience),
        };
        let cap = usize::from(service.inner.config.prefetch_count);
        match pump.next(cap) {
            Next::Wait(until) => {
                drop((service, slot));
                let until = until.unwrap_or_else(crate::wait::far_future);
                tokio::select! {
                    _ = &mut asked => {}
                    _ = pump.delivered() => {}
                    _ = tokio::time::sleep_until(until) => {}
                    changed = stop.changed() => if changed.is_err() {
                        return;
                    },
                }
            }
            next => {
                let _step = pump.step.lock().await;
                service.step(&slot, &pump, next).await;
            }
        }
    }
}

impl RabbitMqMessageService {
    /// Carries out a step of the standing consumer other than waiting.
    async fn step(&self, slot: &Slot, pump: &Pump, next: Next) {
        match next {
            Next::Start(window) => self.start_pump(slot, pump, window).await,
            Next::Replace(id, channel, tag, window) => {
                // Awaited, though it has no credit left: a lease settled
                // since may have given it some, and what it was sent before
                // `cancel-ok` must reach `held` rather than be stranded.
                let _ = channel.cancel_consumer(&tag, false).await;
                pump.retired(id);
                self.start_pump(slot, pump, window).await;
            }
            Next::Stop => self.stop_pump(slot, pump).await,
            Next::GiveBack => {
                let (held, channel) = pump.take_old();
                if let Some(channel) = channel.filter(|c| c.usable()) {
                    let given = self.copy_held(slot, &channel, held).await;
                    self.settle_given_back(slot, &channel, given).await;
                }
            }
            Next::Wait(_) => {}
        }
    }

    async fn start_pump(&self, slot: &Slot, pump: &Pump, window: usize) {
        let want = u16::try_from(window).unwrap_or(u16::MAX);
        match slot.open(&self.inner, want).await {
            Ok((mut consumer, epoch)) => {
                // Its guard is disarmed: the pump owns the consumer now.
                let Some(rx) = consumer.deliveries.take() else {
                    return pump.failed();
                };
                let channel = Arc::clone(&consumer.channel);
                let tag = consumer.tag.clone();
                if let Some(closed) = pump.started(Running::new(channel, tag, epoch, window, rx)) {
                    // The backend closed meanwhile; its channel closes next,
                    // and gives back what this consumer was sent.
                    let _ = closed.channel.cancel_consumer(&closed.tag, true).await;
                }
            }
            Err(error) => {
                tracing::debug!(queue = slot.queue, %error, "the standing consumer could not start");
                pump.failed();
            }
        }
    }

    /// Stops every queue's standing consumer and gives back what it holds,
    /// before `close` closes the channels (which would requeue it counted).
    pub(super) async fn stop_pumps(&self) {
        for slot in self.inner.all_slots() {
            slot.pump.close();
            let _step = slot.pump.step.lock().await;
            self.stop_pump(&slot, &slot.pump).await;
        }
    }

    /// Stops the consumers and gives back what no caller took: copies
    /// first, while the consumers still run, so that a queue deleted
    /// meanwhile cancels them and is heard of (`copy_held` then leaves
    /// their deliveries out); then the cancels, each awaited so that what
    /// was sent before is in hand, and copies of that; the originals are
    /// acknowledged last, so their credit draws nothing more.
    async fn stop_pump(&self, slot: &Slot, pump: &Pump) {
        let (held, channel) = pump.take_held();
        let mut given = match &channel {
            Some(channel) if !held.is_empty() && channel.usable() => {
                self.copy_held(slot, channel, held).await
            }
            _ => Vec::new(),
        };
        for (channel, tag) in pump.stopping() {
            let _ = channel.cancel_consumer(&tag, false).await;
        }
        let (late, _, _) = pump.stopped();
        match channel {
            Some(channel) if channel.usable() => {
                if !late.is_empty() {
                    given.extend(self.copy_held(slot, &channel, late).await);
                }
                self.settle_given_back(slot, &channel, given).await;
            }
            // Gone with the channel, which gave them back.
            _ => drop((given, late)),
        }
    }
}

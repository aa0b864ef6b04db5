//! The waiting receive, written once: providers only say when a queue may
//! have something new (an insert, a delivery, a released lease).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    queue_name::QueueName, service::provide::Provide, MessagingError, QueueMessage, QueuedMessage,
};

/// Waits at least this long have no end: they last until a message comes (or
/// the future is dropped). Far enough that `now + FOREVER` and tokio's timer
/// rounding never overflow an `Instant`.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// When a wait of `wait` that starts at `start` ends; `None` when it has no
/// end. The one rule every waiting receive uses, bindings included: a wait
/// of 30 years or more (`Duration::MAX` among them) lasts until a message
/// comes, and so does one whose end no `Instant` can represent, so no wait
/// ever overflows.
pub fn wait_deadline(start: std::time::Instant, wait: Duration) -> Option<std::time::Instant> {
    if wait >= FOREVER {
        return None;
    }
    start.checked_add(wait)
}

/// [`wait_deadline`] from now, on tokio's clock (tests may pause it).
pub(crate) fn deadline(wait: Duration) -> Option<Instant> {
    wait_deadline(Instant::now().into_std(), wait).map(Instant::from_std)
}

/// A deadline for a timer that stands for "no deadline": re-armed when reached.
pub(crate) fn far_future() -> Instant {
    Instant::now() + FOREVER
}

/// Per-queue wake-ups for waiting receivers.
///
/// A queue has a signal only while someone waits on it: the last waiter to
/// leave removes it. So the map holds one entry per queue with a live waiter,
/// whatever names callers try, and a deleted queue's signal goes once its
/// waiters (woken by the delete) have seen `QueueNotFound`.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    queues: Mutex<HashMap<String, Signal>>,
}

#[derive(Debug, Default)]
struct Signal {
    notify: Arc<Notify>,
    waiters: usize,
}

impl Arrivals {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Signal>> {
        // Every change is a single map operation: a poisoned map is whole.
        crate::sync::lock(&self.queues)
    }

    /// Joins the waiters on `queue`, which must be a valid name.
    fn wait_on<'a>(&'a self, queue: &'a str) -> Waiter<'a> {
        let mut queues = self.lock();
        let signal = queues.entry(queue.to_owned()).or_default();
        signal.waiters += 1;
        Waiter {
            arrivals: self,
            queue,
            notify: Arc::clone(&signal.notify),
        }
    }

    /// `count` messages arrived on `queue` (or became receivable again):
    /// wakes as many of its waiting receivers, so that a steady stream wakes
    /// one receiver per message, not every waiter of the process. A receiver
    /// woken while it is busy keeps the wake for its next wait; one that
    /// leaves without using its wake passes it on (see [`receive_wait`]).
    pub(crate) fn notify(&self, queue: &str, count: usize) {
        if let Some(signal) = self.lock().get(queue) {
            for _ in 0..count.min(signal.waiters) {
                signal.notify.notify_one();
            }
        }
    }

    /// Wakes every receiver waiting on `queue`: it was deleted, and each
    /// must see `QueueNotFound`.
    pub(crate) fn notify_all(&self, queue: &str) {
        if let Some(signal) = self.lock().get(queue) {
            signal.notify.notify_waiters();
        }
    }

    /// How many queues have a signal (that is, a waiter).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One waiter on a queue's signal; the last one to leave removes it.
struct Waiter<'a> {
    arrivals: &'a Arrivals,
    queue: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut queues = self.arrivals.lock();
        if let Some(signal) = queues.get_mut(self.queue) {
            signal.waiters = signal.waiters.saturating_sub(1);
            if signal.waiters == 0 {
                queues.remove(self.queue);
            }
        }
    }
}

/// Receives, waiting up to `wait` for a first message (with no end for
/// `Duration::MAX` and other waits of [`FOREVER`] or more): wakes on an
/// arrival signal, and re-checks every `queues.wait_poll_interval_ms` for
/// what no signal announces
/// (a lease that ran out, a signal lost with a connection).
pub(crate) async fn receive_wait<S, T>(
    service: &S,
    arrivals: &Arrivals,
    queue: &QueueName,
    max_messages: usize,
    visibility_timeout: Duration,
    wait: Duration,
) -> Result<Vec<QueuedMessage<T>>, MessagingError>
where
    S: Provide,
    T: QueueMessage,
{
    // `queue` passed the gate: an invalid name never gets a signal.
    let poll = service.queues_config().wait_poll_interval();
    let deadline = deadline(wait);
    let waiter = arrivals.wait_on(queue);
    let mut wake = Wake {
        notify: &waiter.notify,
        held: false,
    };
    loop {
        // Registered before the receive, so an arrival during it is not
        // missed; if this receive returns messages, dropping it hands a wake
        // it got meanwhile to another waiter.
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // An error, or a drop at this await, passes a held wake on.
        let got = service
            .receive_messages(queue, max_messages, visibility_timeout)
            .await?;
        // A full batch may have left more behind: the next waiter looks too.
        wake.held &= got.len() >= max_messages;
        let now = Instant::now();
        let nap = match deadline {
            _ if !got.is_empty() => return Ok(got),
            Some(deadline) if now >= deadline => return Ok(got),
            Some(deadline) => (deadline - now).min(poll),
            None => poll,
        };
        // Woken, found nothing (another receiver, maybe in another process,
        // took it): wait again, no query until the next wake or poll.
        wake.held = tokio::select! {
            () = &mut notified => true,
            () = tokio::time::sleep(nap) => false,
        };
    }
}

/// A wake one waiter took and has not yet used: a receiver that leaves with
/// it (an error, a dropped future, a full batch) hands it to another waiter.
struct Wake<'a> {
    notify: &'a Notify,
    held: bool,
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        if self.held {
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn any_wait_has_a_deadline_or_none() {
        assert!(deadline(Duration::MAX).is_none());
        assert!(deadline(FOREVER).is_none());
        assert!(deadline(Duration::from_secs(u64::MAX / 2)).is_none());
        assert!(deadline(Duration::ZERO).is_some_and(|d| d <= Instant::now()));
        let hour = deadline(Duration::from_secs(3600)).expect("an hour has an end");
        assert!(hour > Instant::now() + Duration::from_secs(3599));
        // 1e19 s (the Ruby binding's `wait: 1e19`) overflows no clock.
        let huge = Duration::from_secs_f64(1e19);
        assert!(wait_deadline(std::time::Instant::now(), huge).is_none());
        assert!(deadline(huge).is_none());
        let start = std::time::Instant::now();
        assert_eq!(
            wait_deadline(start, Duration::from_secs(5)),
            Some(start + Duration::from_secs(5))
        );
        // tokio rounds a timer's deadline up by under a millisecond.
        let _ = far_future() + Duration::from_millis(1);
    }

    /// How many of `waiting` a wake reached (those are then done).
    fn woken(waiting: &mut Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>>) -> usize {
        let before = waiting.len();
        waiting.retain_mut(|n| n.as_mut().now_or_never().is_none());
        before - waiting.len()
    }

    #[test]
    fn an_arrival_wakes_one_waiter_and_an_unused_wake_passes_on() {
        let arrivals = Arrivals::default();
        let waiters: Vec<_> = (0..4).map(|_| arrivals.wait_on("q")).collect();
        let mut waiting: Vec<_> = waiters
            .iter()
            .map(|w| Box::pin(w.notify.notified()))
            .collect();
        waiting.iter_mut().for_each(|n| {
            n.as_mut().enable();
        });
        arrivals.notify("q", 1);
        assert_eq!(woken(&mut waiting), 1, "one message, one receiver");
        arrivals.notify("q", 2);
        assert_eq!(woken(&mut waiting), 2, "a batch of two, two receivers");
        // A receiver that leaves with its wake unused hands it on.
        drop(Wake {
            notify: &waiters[0].notify,
            held: true,
        });
        assert_eq!(woken(&mut waiting), 1);
        drop(Wake {
            notify: &waiters[0].notify,
            held: false,
        });
        let mut late = vec![Box::pin(waiters[1].notify.notified())];
        assert_eq!(woken(&mut late), 0, "a used wake is not passed on");
        arrivals.notify_all("q");
        assert_eq!(woken(&mut late), 1, "a deleted queue wakes everyone");
    }

    #[test]
    fn the_last_waiter_removes_the_signal() {
        let arrivals = Arrivals::default();
        let first = arrivals.wait_on("q");
        let second = arrivals.wait_on("q");
        let other = arrivals.wait_on("other");
        assert_eq!(arrivals.len(), 2);
        drop(first);
        assert_eq!(arrivals.len(), 2, "a waiter is left on q");
        drop(second);
        assert_eq!(arrivals.len(), 1);
        drop(other);
        assert_eq!(arrivals.len(), 0);
        arrivals.notify("q", 1);
        arrivals.notify_all("q");
        assert_eq!(arrivals.len(), 0, "notify creates nothing");
    }

    #[test]
    fn waiters_leaving_from_many_threads_leave_nothing() {
        let arrivals = Arc::new(Arrivals::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let arrivals = Arc::clone(&arrivals);
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        drop(arrivals.wait_on("q"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(arrivals.len(), 0);
    }
}

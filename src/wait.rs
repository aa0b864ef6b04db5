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

    /// Wakes every receiver waiting on `queue`.
    pub(crate) fn notify(&self, queue: &str) {
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
    loop {
        // Registered before the receive, so an arrival during it is not missed.
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let got = service
            .receive_messages(queue, max_messages, visibility_timeout)
            .await?;
        let now = Instant::now();
        let nap = match deadline {
            _ if !got.is_empty() => return Ok(got),
            Some(deadline) if now >= deadline => return Ok(got),
            Some(deadline) => (deadline - now).min(poll),
            None => poll,
        };
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

#[cfg(test)]
mod tests {
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
        arrivals.notify("q");
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

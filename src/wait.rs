//! The waiting receive, written once: providers only say when a queue may
//! have something new (an insert, a delivery, a released lease).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::{MessagingError, MessagingService, QueueMessage, QueuedMessage};

/// Per-queue wake-ups for waiting receivers.
#[derive(Debug, Default)]
pub struct Arrivals {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Arrivals {
    fn signal(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(queues.entry(queue.to_owned()).or_default())
    }

    /// Wakes every receiver waiting on `queue`.
    pub(crate) fn notify(&self, queue: &str) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signal) = queues.get(queue) {
            signal.notify_waiters();
        }
    }
}

/// Receives, waiting up to `wait` for a first message: wakes on an arrival
/// signal, and re-checks every `poll` for what no signal announces (a lease
/// that ran out, a signal lost with a connection).
pub(crate) async fn receive_wait<S, T>(
    service: &S,
    arrivals: &Arrivals,
    poll: Duration,
    queue: &str,
    max_messages: usize,
    visibility_timeout: Duration,
    wait: Duration,
) -> Result<Vec<QueuedMessage<T>>, MessagingError>
where
    S: MessagingService + ?Sized,
    T: QueueMessage,
{
    let deadline = Instant::now() + wait;
    let signal = arrivals.signal(queue);
    loop {
        // Registered before the receive, so an arrival during it is not missed.
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let got = service
            .receive_messages(queue, max_messages, visibility_timeout)
            .await?;
        let now = Instant::now();
        if !got.is_empty() || now >= deadline {
            return Ok(got);
        }
        let nap = (deadline - now).min(poll);
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

//! Closing a backend, the part every provider shares: refuse new calls,
//! end waiting receives, wait (bounded) for the calls in flight, then run
//! the provider's teardown once, from a task of its own.
//!
//! The teardown is a spawned task, not part of the `close` future: a close
//! cancelled midway (a timeout, an interrupt) must not cut the teardown
//! short, since a channel dropped instead of closed skips the settle grace.
//! Every `close`, the first or a retry, awaits that one task.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

use crate::{sync::lock, MessagingError, Provider};

/// How long `close` waits for the calls in flight before tearing down
/// anyway: a call future that was polled once and then parked is never
/// polled again to see the close, and must not hold it up for ever.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A provider's teardown, owning what it needs, to run in a task.
pub(crate) type Teardown = Pin<Box<dyn Future<Output = Result<(), MessagingError>> + Send>>;

/// One backend's closed state, shared by its clones. Public in a private
/// module, like `Provide`, which names it.
#[derive(Debug, Default)]
pub struct Shutdown {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    closed: AtomicBool,
    in_flight: AtomicUsize,
    /// Set to `true` once closing: ends waiting receives.
    closing: watch::Sender<bool>,
    /// Woken when the last call in flight ends after closing began.
    drained: Notify,
    /// Whether the teardown task was spawned.
    started: AtomicBool,
    /// Set to `true` once the teardown task has ended.
    done: watch::Sender<bool>,
    /// Its outcome, for the first `close` that sees it end.
    outcome: Mutex<Option<Result<(), MessagingError>>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            drained: Notify::new(),
            started: AtomicBool::new(false),
            done: watch::Sender::new(false),
            outcome: Mutex::new(None),
        }
    }
}

/// A call in flight; closing waits until every pass is dropped (or
/// `DRAIN_LIMIT` passed).
pub(crate) struct Pass<'a>(&'a State);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 && self.0.closed.load(SeqCst) {
            self.0.drained.notify_waiters();
        }
    }
}

/// Marks the teardown ended even if its task is dropped (the runtime shut
/// down) or panics, so that no `close` waits for ever.
struct Finish<'a>(&'a State, Provider);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut outcome = lock(&self.0.outcome);
        if outcome.is_none() && !*self.0.done.borrow() {
            *outcome = Some(Err(MessagingError::Provider {
                provider: self.1,
                operation: "close",
                message: "the close task ended before closing everything".into(),
                transient: false,
                source: None,
            }));
        }
        drop(outcome);
        self.0.done.send_replace(true);
    }
}

impl Shutdown {
    /// Whether `close` has been called.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(SeqCst)
    }

    /// Admits one call, or refuses it with `Closed`.
    pub(crate) fn enter(&self, provider: Provider) -> Result<Pass<'_>, MessagingError> {
        // Counted before looking, so `close` either sees this call or this
        // call sees the flag (both sides SeqCst).
        self.state.in_flight.fetch_add(1, SeqCst);
        let pass = Pass(&self.state);
        if self.is_closed() {
            return Err(MessagingError::Closed { provider });
        }
        Ok(pass)
    }

    /// Resolves once closing has begun.
    pub(crate) async fn closing(&self) {
        let mut closing = self.state.closing.subscribe();
        // Err only when the sender is gone, which `&self` rules out.
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// Runs `call`, cut short with `Closed` should the backend close
    /// meanwhile: for waiting receives, which may otherwise wait for long.
    pub(crate) async fn unless_closed<T>(
        &self,
        provider: Provider,
        call: impl Future<Output = Result<T, MessagingError>>,
    ) -> Result<T, MessagingError> {
        tokio::select! {
            // Closing first: a receive polled after the teardown sees
            // `Closed`, not the torn-down state.
            biased;
            () = self.closing() => Err(MessagingError::Closed { provider }),
            result = call => result,
        }
    }

    /// Refuses new calls and ends waiting receives, then, once, spawns a
    /// task that waits for the other calls in flight (at most
    /// `DRAIN_LIMIT`) and runs `teardown`; every call awaits that task, so
    /// dropping a `close` future leaves the teardown running. The first
    /// call to see the task end returns its outcome; later ones `Ok`.
    pub(crate) async fn close(
        &self,
        provider: Provider,
        teardown: impl FnOnce() -> Teardown,
    ) -> Result<(), MessagingError> {
        let state = &self.state;
        let mut done = state.done.subscribe();
        state.closed.store(true, SeqCst);
        state.closing.send_replace(true);
        if !state.started.swap(true, SeqCst) {
            let teardown = teardown();
            let state = Arc::clone(state);
            let task = async move {
                let finish = Finish(&state, provider);
                state.drained(DRAIN_LIMIT).await;
                let outcome = teardown.await;
                *lock(&state.outcome) = Some(outcome);
                drop(finish);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(task)),
                // Polled outside tokio (no provider but in-memory works
                // there): run it here, where a cancel does cut it short.
                Err(_) => task.await,
            }
        }
        // Err only when the sender is gone, which `&self` rules out.
        let _ = done.wait_for(|done| *done).await;
        lock(&state.outcome).take().unwrap_or(Ok(()))
    }
}

impl State {
    async fn drained(&self, limit: Duration) {
        let drained = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight.load(SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, drained).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight.load(SeqCst),
                "closing with calls still in flight after {limit:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await
    }

    fn ok() -> Teardown {
        Box::pin(async { Ok(()) })
    }

    #[tokio::test]
    async fn close_refuses_new_calls_and_waits_for_those_in_flight() {
        let shutdown = Arc::new(Shutdown::default());
        let pass = shutdown.enter(Provider::InMemory).unwrap();
        let closer = {
            let shutdown = Arc::clone(&shutdown);
            tokio::spawn(async move { shutdown.close(Provider::InMemory, ok).await })
        };
        shutdown.closing().await;
        assert!(matches!(
            shutdown.enter(Provider::InMemory),
            Err(MessagingError::Closed { .. })
        ));
        tokio::task::yield_now().await;
        assert!(!closer.is_finished());
        drop(pass);
        closer.await.unwrap().unwrap();
        // Idempotent: the teardown runs once.
        shutdown
            .close(Provider::InMemory, || panic!("ran twice"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiting_call_ends_with_closed() {
        let shutdown = Shutdown::default();
        let wait = shutdown.unless_closed(Provider::Pgmq, std::future::pending::<Result<(), _>>());
        let (waited, closed) = tokio::join!(wait, shutdown.close(Provider::Pgmq, ok));
        assert!(matches!(waited, Err(MessagingError::Closed { .. })));
        closed.unwrap();
    }

    /// A close dropped midway leaves its teardown running to the end; a
    /// second close waits for that same teardown.
    #[tokio::test]
    async fn a_cancelled_close_does_not_cancel_the_teardown() {
        let shutdown = Shutdown::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let teardown = {
            let finished = Arc::clone(&finished);
            move || -> Teardown {
                Box::pin(async move {
                    let _ = released.await;
                    finished.store(true, SeqCst);
                    Err(MessagingError::Closed {
                        provider: Provider::RabbitMq,
                    })
                })
            }
        };
        {
            let first = shutdown.close(Provider::RabbitMq, teardown);
            tokio::pin!(first);
            assert!(poll_once(first.as_mut()).await.is_pending());
        } // dropped: the teardown task lives on
        let second = shutdown.close(Provider::RabbitMq, || panic!("ran twice"));
        tokio::pin!(second);
        assert!(poll_once(second.as_mut()).await.is_pending());
        release.send(()).unwrap();
        // The retry reports the teardown's outcome, and only after it ended.
        assert!(second.await.is_err());
        assert!(finished.load(SeqCst));
        shutdown
            .close(Provider::RabbitMq, || panic!("ran twice"))
            .await
            .unwrap();
    }

    /// A call in flight that is never polled again holds the teardown back
    /// for `DRAIN_LIMIT` only (paused clock).
    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded() {
        let shutdown = Shutdown::default();
        let _parked = shutdown.enter(Provider::InMemory).unwrap();
        shutdown.close(Provider::InMemory, ok).await.unwrap();
    }
}

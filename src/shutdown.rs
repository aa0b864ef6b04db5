//! Closing a backend, the part every provider shares: refuse new calls,
//! end waiting receives, wait for the calls in flight, then run the
//! provider's teardown once.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
};

use tokio::sync::{watch, Notify, OnceCell};

use crate::{MessagingError, Provider};

/// One backend's closed state, shared by its clones. Public in a private
/// module, like `Provide`, which names it.
#[derive(Debug)]
pub struct Shutdown {
    closed: AtomicBool,
    in_flight: AtomicUsize,
    /// Set to `true` once closing: ends waiting receives.
    closing: watch::Sender<bool>,
    /// Woken when the last call in flight ends after closing began.
    drained: Notify,
    /// The provider's teardown, run once.
    done: OnceCell<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            drained: Notify::new(),
            done: OnceCell::new(),
        }
    }
}

/// A call in flight; closing waits until every pass is dropped.
pub(crate) struct Pass<'a>(&'a Shutdown);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, SeqCst) == 1 && self.0.closed.load(SeqCst) {
            self.0.drained.notify_waiters();
        }
    }
}

impl Shutdown {
    /// Whether `close` has been called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Admits one call, or refuses it with `Closed`.
    pub(crate) fn enter(&self, provider: Provider) -> Result<Pass<'_>, MessagingError> {
        // Counted before looking, so `close` either sees this call or this
        // call sees the flag (both sides SeqCst).
        self.in_flight.fetch_add(1, SeqCst);
        let pass = Pass(self);
        if self.is_closed() {
            return Err(MessagingError::Closed { provider });
        }
        Ok(pass)
    }

    /// Resolves once closing has begun.
    pub(crate) async fn closing(&self) {
        let mut closing = self.closing.subscribe();
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
            result = call => result,
            () = self.closing() => Err(MessagingError::Closed { provider }),
        }
    }

    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Refuses new calls, ends waiting receives, waits for the other calls
    /// in flight, then runs `teardown` unless an earlier close ran it to the
    /// end. Only the call that ran the teardown reports its failure.
    pub(crate) async fn close<F>(&self, teardown: impl FnOnce() -> F) -> Result<(), MessagingError>
    where
        F: Future<Output = Result<(), MessagingError>>,
    {
        self.closed.store(true, SeqCst);
        self.closing.send_replace(true);
        self.drained().await;
        let mut outcome = Ok(());
        self.done
            .get_or_init(|| async {
                outcome = teardown().await;
            })
            .await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_refuses_new_calls_and_waits_for_those_in_flight() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let pass = shutdown.enter(Provider::InMemory).unwrap();
        let closer = {
            let shutdown = std::sync::Arc::clone(&shutdown);
            tokio::spawn(async move { shutdown.close(|| async { Ok(()) }).await })
        };
        shutdown.closing().await;
        assert!(matches!(
            shutdown.enter(Provider::InMemory),
            Err(MessagingError::Closed { .. })
        ));
        assert!(!closer.is_finished());
        drop(pass);
        closer.await.unwrap().unwrap();
        // Idempotent: the teardown runs once.
        shutdown
            .close(|| async { panic!("ran twice") })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiting_call_ends_with_closed() {
        let shutdown = Shutdown::default();
        let wait = shutdown.unless_closed(Provider::Pgmq, std::future::pending::<Result<(), _>>());
        let (waited, closed) = tokio::join!(wait, shutdown.close(|| async { Ok(()) }));
        assert!(matches!(waited, Err(MessagingError::Closed { .. })));
        closed.unwrap();
    }
}

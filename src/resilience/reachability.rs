//! Whether a provider's server answers, as its last connection attempt found.
//!
//! A provider's reconnect loop keeps this up to date. While the server is
//! down, calls fail at once instead of each waiting out a connect attempt.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::RetryPolicy;
use crate::{MessagingError, Provider};

/// Pause before reconnect probe number `attempt` (0-based): 100 ms doubling
/// to 500 ms, each random within its upper half. A server that comes back is
/// seen within about half a second, at no more than four attempts a second.
pub(crate) fn probe_pause(attempt: u32) -> Duration {
    RetryPolicy {
        max_retries: 0,
        initial_backoff_ms: 100,
        max_backoff_ms: 500,
        backoff_multiplier: 2.0,
        jitter: true,
    }
    .backoff(attempt)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    Up,
    /// A lost connection is being replaced; the server has not refused yet.
    Reconnecting,
    /// The last connection attempt failed, with this message; `tls` when it
    /// was a failed handshake, which calls report as such (not transient).
    Down {
        why: Arc<str>,
        tls: bool,
    },
}

/// The server's reachability, shared by a provider's calls and its reconnect loop.
#[derive(Debug)]
pub(crate) struct Reachability {
    provider: Provider,
    state: watch::Sender<Reach>,
}

impl Reachability {
    pub(crate) fn new(provider: Provider) -> Self {
        Self {
            provider,
            state: watch::Sender::new(Reach::Up),
        }
    }

    fn error(&self, state: &Reach) -> MessagingError {
        let message = match state {
            Reach::Down { why, tls: true } => {
                return MessagingError::Tls {
                    provider: self.provider,
                    message: format!("the TLS handshake with {} fails ({why})", self.provider),
                    source: None,
                }
            }
            Reach::Down { why, .. } => format!("{} is unreachable ({why})", self.provider),
            _ => format!("not connected to {} (reconnecting)", self.provider),
        };
        MessagingError::connection(self.provider, message, None)
    }

    /// A transient `Connection` error at once while the server is down (a
    /// `Tls` error while its last failure was a handshake).
    pub(crate) fn check(&self) -> Result<(), MessagingError> {
        match &*self.state.borrow() {
            state @ Reach::Down { .. } => Err(self.error(state)),
            _ => Ok(()),
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        matches!(*self.state.borrow(), Reach::Down { .. })
    }

    /// A connection was lost and is being replaced.
    pub(crate) fn reconnecting(&self) {
        self.state.send_if_modified(|state| {
            let was_up = *state == Reach::Up;
            if was_up {
                *state = Reach::Reconnecting;
            }
            was_up
        });
    }

    /// A connection attempt failed with `error`; returns whether the server
    /// was not already known to be down.
    pub(crate) fn down(&self, error: &MessagingError) -> bool {
        let newly = !self.is_down();
        self.state.send_replace(Reach::Down {
            why: error.to_string().into(),
            tls: matches!(error, MessagingError::Tls { .. }),
        });
        newly
    }

    /// A connection attempt succeeded; returns whether the server was not up.
    pub(crate) fn up(&self) -> bool {
        self.state.send_replace(Reach::Up) != Reach::Up
    }

    /// Resolves with the error of [`check`](Self::check) once the server is found down.
    pub(crate) async fn until_down(&self) -> MessagingError {
        let mut state = self.state.subscribe();
        let down = state
            .wait_for(|state| matches!(state, Reach::Down { .. }))
            .await
            .map(|state| state.clone());
        // The sender lives as long as `self`, so the wait cannot fail.
        self.error(&down.unwrap_or(Reach::Reconnecting))
    }

    /// Resolves once the state changes from what it is now.
    pub(crate) async fn changed(&self) {
        let mut state = self.state.subscribe();
        let _ = state.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_fails_fast_and_up_clears_it() {
        let reach = Reachability::new(Provider::RabbitMq);
        assert!(reach.check().is_ok());
        reach.reconnecting();
        assert!(reach.check().is_ok(), "reconnecting is not down");
        let refused = MessagingError::connection(Provider::RabbitMq, "refused", None);
        assert!(reach.down(&refused));
        assert!(!reach.down(&refused), "already down");
        let error = reach.check().unwrap_err();
        assert!(error.is_transient() && error.to_string().contains("refused"));
        assert!(reach.up());
        assert!(!reach.up());
        assert!(reach.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_handshake_stays_a_tls_error_until_up() {
        let reach = Reachability::new(Provider::RabbitMq);
        let handshake = MessagingError::Tls {
            provider: Provider::RabbitMq,
            message: "UnknownIssuer".into(),
            source: None,
        };
        assert!(reach.down(&handshake));
        for _ in 0..2 {
            let error = reach.check().unwrap_err();
            assert!(matches!(error, MessagingError::Tls { .. }), "{error}");
            assert!(!error.is_transient() && error.to_string().contains("UnknownIssuer"));
        }
        // The next attempt meets a refused port: transient again.
        reach.down(&MessagingError::connection(
            Provider::RabbitMq,
            "refused",
            None,
        ));
        assert!(reach.check().unwrap_err().is_transient());
        assert!(reach.up());
        assert!(reach.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn until_down_wakes_when_an_attempt_fails() {
        let reach = Arc::new(Reachability::new(Provider::Pgmq));
        let waiter = tokio::spawn({
            let reach = Arc::clone(&reach);
            async move { reach.until_down().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        reach.down(&MessagingError::connection(Provider::Pgmq, "refused", None));
        let error = waiter.await.unwrap();
        assert!(error.to_string().contains("unreachable"), "{error}");
    }

    #[test]
    fn probes_are_frequent_but_not_hammering() {
        for attempt in 0..20 {
            let pause = probe_pause(attempt);
            assert!(pause >= Duration::from_millis(50), "{pause:?}");
            assert!(pause <= Duration::from_millis(500), "{pause:?}");
        }
    }
}

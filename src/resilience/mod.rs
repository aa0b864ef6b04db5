//! Retry and circuit breaking, written once and wrapped around every
//! provider's server calls.
//!
//! Retrying is safe under at-least-once delivery: a retried send may store a
//! message twice (a duplicate, never a loss); a retried receive may have
//! leased messages whose answer was lost, and they come back when the lease
//! ends; a retried delete or lease change of a lease that the lost first
//! attempt already ended reports `LeaseExpired`.

mod circuit_breaker;
mod reachability;
mod retry;

use std::{future::Future, sync::Arc, time::Duration};

pub(crate) use self::reachability::{probe_pause, Reachability};
pub use self::{
    circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState},
    retry::RetryPolicy,
};
use crate::{MessagingError, Provider};

/// Longest a `health_check` takes (or the connection timeout, if shorter):
/// an orchestrator's probe gets `Ok(false)` well within a second rather than
/// racing the library's own timeout.
pub(crate) const HEALTH_CHECK_BOUND: Duration = Duration::from_millis(900);

/// The source of a transient error from a server that answered and refused
/// one call (a RabbitMQ `basic.nack`): the call is retried, but the breaker,
/// which tracks whether the server can be reached, does not count it.
///
/// After a quorum queue's leader is killed, RabbitMQ 3.10 nacks every
/// publish for many seconds on a channel that still names the old leader,
/// and for about 0.1–0.2 s on a new one; so a nack retires its publisher
/// channel, and the retried send goes out on a new one. Counted, those nacks
/// opened the circuit for every call for `timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the server answered and refused this call")]
pub(crate) struct Refused;

impl MessagingError {
    /// Whether this is a transient refusal from a server that answered.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Self::Provider { source: Some(source), .. } if source.is::<Refused>())
    }
}

/// A provider's retry policy and circuit breaker.
#[derive(Debug)]
pub(crate) struct Resilience {
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    reach: Arc<Reachability>,
}

impl Resilience {
    pub(crate) fn new(
        provider: Provider,
        retry: RetryPolicy,
        breaker: CircuitBreakerConfig,
    ) -> Self {
        Self {
            retry,
            breaker: CircuitBreaker::new(provider, breaker),
            reach: Arc::new(Reachability::new(provider)),
        }
    }

    pub(crate) fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The server's reachability, kept by the provider's reconnect loop.
    pub(crate) fn reach(&self) -> &Arc<Reachability> {
        &self.reach
    }

    /// A connection attempt succeeded after a loss: the server is up, and an
    /// open circuit half-opens now rather than after `timeout_ms`, so the
    /// first call after a recovery is not refused for the rest of it.
    pub(crate) fn server_answered(&self) {
        self.reach.up();
        self.breaker.server_answered();
    }

    /// Runs one server call through the breaker, retrying transient failures.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, MessagingError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, MessagingError>>,
    {
        let mut retry = 0;
        loop {
            let permit = self.breaker.acquire()?;
            let result = call().await;
            self.breaker.record(permit, &result);
            match result {
                Err(error) if error.is_transient() && retry < self.retry.max_retries => {
                    let pause = self.retry.backoff(retry);
                    tracing::debug!(operation, retry, ?pause, %error, "retrying transient failure");
                    tokio::time::sleep(pause).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }
}

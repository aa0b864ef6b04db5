//! The circuit breaker: closed, open and half-open, counting only transient failures.

use std::{
    fmt,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{MessagingError, Provider};

/// The `[circuit_breaker]` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Whether the breaker acts at all.
    pub enabled: bool,
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: u32,
    /// Consecutive successes in half-open that close it again.
    pub success_threshold: u32,
    /// How long the circuit stays open before trial calls, in milliseconds.
    pub timeout_ms: u64,
    /// Trial calls allowed at once while half-open.
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 2,
            // Short: one dropped connection fails every call in flight on it,
            // which alone can reach the threshold.
            timeout_ms: 5_000,
            half_open_max_calls: 1,
        }
    }
}

impl CircuitBreakerConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("failure_threshold", self.failure_threshold),
            ("success_threshold", self.success_threshold),
            ("half_open_max_calls", self.half_open_max_calls),
        ] {
            if value == 0 {
                return Err(format!("circuit_breaker.{key} must be at least 1"));
            }
        }
        if self.timeout_ms == 0 {
            return Err("circuit_breaker.timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Where a circuit breaker stands.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; transient failures are counted.
    Closed,
    /// Calls fail fast with `CircuitOpen` until the timeout passes.
    Open,
    /// A few trial calls go through; their outcome closes or reopens the circuit.
    HalfOpen,
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        })
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// A circuit breaker for one provider's server. Shared by clones of a backend.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    provider: Provider,
    inner: Mutex<Inner>,
}

/// Leave to make one call; report its outcome with [`CircuitBreaker::record`].
/// Dropped unreported (a cancelled call), it frees its half-open slot.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    trial: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial {
            if let Inner::HalfOpen { in_flight, .. } = &mut *self.breaker.lock() {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(provider: Provider, config: CircuitBreakerConfig) -> Self {
        // No gauge yet: it is set at transitions only, so a breaker
        // created for a second backend of the provider does not reset it.
        Self {
            config,
            provider,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    /// The current state (an open circuit past its timeout reads as half-open).
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { until } if Instant::now() < *until => CircuitState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single assignment; a poisoned lock holds a whole state.
        crate::sync::lock(&self.inner)
    }

    fn transition(&self, inner: &mut Inner, next: Inner) {
        let from = Self::name(inner);
        let to = Self::name(&next);
        *inner = next;
        if from != to {
            crate::telemetry::breaker_state(self.provider, to);
            tracing::warn!(provider = %self.provider, %from, %to, "circuit breaker state changed");
        }
    }

    fn name(inner: &Inner) -> CircuitState {
        match inner {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to make a call: `CircuitOpen` while open, or while half-open with
    /// every trial slot taken.
    pub(crate) fn acquire(&self) -> Result<Permit<'_>, MessagingError> {
        let open = || MessagingError::CircuitOpen {
            provider: self.provider,
        };
        if !self.config.enabled {
            return Ok(Permit {
                breaker: self,
                trial: false,
            });
        }
        let mut inner = self.lock();
        if let Inner::Open { until } = *inner {
            if Instant::now() < until {
                return Err(open());
            }
            self.transition(
                &mut inner,
                Inner::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
            );
        }
        match &mut *inner {
            Inner::HalfOpen { in_flight, .. } if *in_flight >= self.config.half_open_max_calls => {
                Err(open())
            }
            Inner::HalfOpen { in_flight, .. } => {
                *in_flight += 1;
                Ok(Permit {
                    breaker: self,
                    trial: true,
                })
            }
            _ => Ok(Permit {
                breaker: self,
                trial: false,
            }),
        }
    }

    /// The provider reconnected: an open circuit half-opens at once, so trial
    /// calls confirm the recovery without waiting out `timeout_ms`.
    pub(crate) fn server_answered(&self) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.lock();
        if let Inner::Open { .. } = *inner {
            self.transition(
                &mut inner,
                Inner::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
            );
        }
    }

    /// Reports a call's outcome. Only transient failures count against the
    /// server: a `QueueNotFound` means it answered. A refusal (see
    /// [`Refused`](super::Refused)) counts neither way.
    pub(crate) fn record<T>(&self, mut permit: Permit<'_>, result: &Result<T, MessagingError>) {
        if !self.config.enabled {
            return;
        }
        let refused = matches!(result, Err(e) if e.is_refusal());
        let failed = matches!(result, Err(e) if e.is_transient());
        let mut inner = self.lock();
        if permit.trial {
            permit.trial = false;
            if let Inner::HalfOpen { in_flight, .. } = &mut *inner {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
        if refused {
            return;
        }
        let open = Inner::Open {
            until: Instant::now() + Duration::from_millis(self.config.timeout_ms),
        };
        match (&mut *inner, failed) {
            (Inner::Closed { failures }, true) => {
                *failures += 1;
                if *failures >= self.config.failure_threshold {
                    self.transition(&mut inner, open);
                }
            }
            (Inner::Closed { failures }, false) => *failures = 0,
            (Inner::HalfOpen { .. }, true) => self.transition(&mut inner, open),
            (Inner::HalfOpen { successes, .. }, false) => {
                *successes += 1;
                if *successes >= self.config.success_threshold {
                    self.transition(&mut inner, Inner::Closed { failures: 0 });
                }
            }
            // A call admitted before the circuit opened: its outcome changes nothing.
            (Inner::Open { .. }, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            Provider::Pgmq,
            CircuitBreakerConfig {
                failure_threshold: 2,
                success_threshold: 2,
                timeout_ms: 1_000,
                half_open_max_calls: 1,
                enabled: true,
            },
        )
    }

    fn transient() -> Result<(), MessagingError> {
        Err(MessagingError::connection(Provider::Pgmq, "down", None))
    }

    fn refused() -> Result<(), MessagingError> {
        Err(MessagingError::Provider {
            provider: Provider::RabbitMq,
            operation: "send_message",
            message: "nacked".into(),
            transient: true,
            source: Some(Box::new(super::super::Refused)),
        })
    }

    fn call(b: &CircuitBreaker, outcome: Result<(), MessagingError>) {
        let permit = b.acquire().expect("admitted");
        b.record(permit, &outcome);
    }

    #[test]
    fn refusals_from_a_server_that_answered_count_neither_way() {
        let b = breaker();
        for _ in 0..5 {
            call(&b, refused());
        }
        assert_eq!(b.state(), CircuitState::Closed, "refusals do not open it");
        call(&b, transient());
        call(&b, refused());
        call(&b, transient());
        assert_eq!(b.state(), CircuitState::Open, "nor reset the failures");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let b = breaker();
        call(&b, transient());
        assert_eq!(b.state(), CircuitState::Closed);
        call(&b, transient());
        assert_eq!(b.state(), CircuitState::Open);
        assert!(matches!(
            b.acquire(),
            Err(MessagingError::CircuitOpen { .. })
        ));

        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let trial = b.acquire().expect("one trial call");
        assert!(
            b.acquire().is_err(),
            "only half_open_max_calls trials at once"
        );
        b.record(trial, &Ok(()));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        call(&b, Ok(()));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_trial_frees_its_slot_and_decides_nothing() {
        let b = breaker();
        call(&b, transient());
        call(&b, transient());
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let trial = b.acquire().expect("one trial call");
        b.record(trial, &refused());
        assert_eq!(
            b.state(),
            CircuitState::HalfOpen,
            "neither reopened nor closer"
        );
        call(&b, Ok(()));
        assert_eq!(b.state(), CircuitState::HalfOpen, "one success of two");
        call(&b, Ok(()));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens() {
        let b = breaker();
        call(&b, transient());
        call(&b, transient());
        tokio::time::advance(Duration::from_millis(1_001)).await;
        call(&b, transient());
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn only_transient_failures_count() {
        let b = breaker();
        for _ in 0..5 {
            call(&b, Err(MessagingError::QueueNotFound { queue: "q".into() }));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        call(&b, transient());
        call(&b, Ok(()));
        call(&b, transient());
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a success resets the count"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_half_opens_an_open_circuit_at_once() {
        let b = breaker();
        b.server_answered();
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a closed circuit stays closed"
        );
        call(&b, transient());
        call(&b, transient());
        assert_eq!(b.state(), CircuitState::Open);
        b.server_answered();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        call(&b, Ok(()));
        call(&b, Ok(()));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_frees_its_slot() {
        let b = breaker();
        call(&b, transient());
        call(&b, transient());
        tokio::time::advance(Duration::from_millis(1_001)).await;
        drop(b.acquire().expect("trial"));
        assert!(b.acquire().is_ok(), "the dropped permit gave its slot back");
    }
}

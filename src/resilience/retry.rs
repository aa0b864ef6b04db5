//! The `[retry_policy]` section and its backoff schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retries of transient failures ([`MessagingError::is_transient`](crate::MessagingError::is_transient)),
/// with exponential backoff and jitter. Non-transient errors are never retried.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// Backoff before the first retry, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Cap on any one backoff, in milliseconds.
    pub max_backoff_ms: u64,
    /// Factor between consecutive backoffs (at least 1).
    pub backoff_multiplier: f64,
    /// Randomise each backoff within its upper half, so that clients that
    /// failed together do not retry together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 2_000,
            backoff_multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (0-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self.backoff_multiplier.powi(retry.min(63) as i32);
        let ms = (self.initial_backoff_ms as f64 * exp).min(self.max_backoff_ms as f64);
        let ms = if self.jitter {
            // Uniform in [ms/2, ms]; uuid's v4 generator is the random source.
            let unit = (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64;
            ms * (0.5 + unit / 2.0)
        } else {
            ms
        };
        Duration::from_millis(ms as u64)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier <= 100.0) {
            return Err("retry_policy.backoff_multiplier must be between 1 and 100".into());
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err("retry_policy.max_backoff_ms must be at least initial_backoff_ms".into());
        }
        if self.max_retries > 100 {
            return Err("retry_policy.max_retries must be at most 100".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        let ms: Vec<u128> = (0..8).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for retry in 0..10 {
            let full = RetryPolicy {
                jitter: false,
                ..policy.clone()
            }
            .backoff(retry);
            let jittered = policy.backoff(retry);
            assert!(
                jittered <= full && jittered >= full / 2,
                "{jittered:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let bad = [
            RetryPolicy {
                backoff_multiplier: 0.5,
                ..Default::default()
            },
            RetryPolicy {
                backoff_multiplier: f64::NAN,
                ..Default::default()
            },
            RetryPolicy {
                max_backoff_ms: 1,
                ..Default::default()
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }
}

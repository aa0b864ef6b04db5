//! Argument rules for receives and leases, shared by every provider.

use std::time::Duration;

use crate::MessagingError;

/// Longest lease accepted anywhere (12 hours); providers may allow less.
pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);

/// A visibility timeout in whole seconds, rounded up, at least `min_secs`.
///
/// Receives use `min_secs = 1`; `change_message_visibility` uses 0, which
/// releases the message at once.
pub(crate) fn lease_secs(timeout: Duration, min_secs: u64) -> Result<u64, MessagingError> {
    if timeout > MAX_VISIBILITY_TIMEOUT {
        return Err(MessagingError::invalid_argument(format!(
            "visibility timeout {timeout:?} exceeds the maximum of {MAX_VISIBILITY_TIMEOUT:?}"
        )));
    }
    let whole = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    Ok(whole.max(min_secs))
}

/// Checks `max_messages` for a receive.
pub(crate) fn check_max_messages(max_messages: usize) -> Result<(), MessagingError> {
    if max_messages == 0 {
        return Err(MessagingError::invalid_argument(
            "max_messages must be at least 1",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(1), 0).unwrap(), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500), 0).unwrap(), 2);
        assert_eq!(lease_secs(Duration::from_secs(3), 0).unwrap(), 3);
        assert_eq!(lease_secs(Duration::ZERO, 0).unwrap(), 0);
        assert_eq!(lease_secs(Duration::ZERO, 1).unwrap(), 1);
    }

    #[test]
    fn refuses_out_of_range_arguments() {
        assert!(lease_secs(MAX_VISIBILITY_TIMEOUT + Duration::from_secs(1), 1).is_err());
        assert!(check_max_messages(0).is_err());
        assert!(check_max_messages(1).is_ok());
    }
}

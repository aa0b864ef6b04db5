//! Queue-name rules, shared by every provider and checked before any I/O.

use crate::MessagingError;

/// Longest queue name, dead-letter suffix included: PGMQ's limit, so that
/// `template_pgmq_q_{name}` fits PostgreSQL's 63-byte identifiers.
pub const MAX_QUEUE_NAME_BYTES: usize = 47;

/// Checks a queue name against `^[a-z_][a-z0-9_]*$` and the
/// [`MAX_QUEUE_NAME_BYTES`] limit.
///
/// This is the check every operation runs first; a name that passes is safe to
/// embed in SQL identifiers and AMQP queue names. `create_queue` additionally
/// refuses a name ending in the dead-letter suffix and requires room for it.
pub fn validate_queue_name(name: &str) -> Result<(), MessagingError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_QUEUE_NAME_BYTES {
        Some("is longer than 47 bytes")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("must start with a lower-case letter or `_`")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some("may contain only `a-z`, `0-9` and `_`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(invalid(name, reason)),
    }
}

/// Checks a name for `create_queue`: valid, not ending in the dead-letter
/// suffix, and short enough that its dead-letter queue `{name}{suffix}` is
/// valid too.
///
/// A name ending in the suffix is a dead-letter queue's: created with its
/// queue, never on its own. A work queue of that name would never
/// dead-letter, and `create_queue`/`delete_queue` of the shorter name would
/// take it as their own dead-letter queue.
pub(crate) fn validate_new_queue_name(name: &str, dlq_suffix: &str) -> Result<(), MessagingError> {
    validate_queue_name(name)?;
    if name.ends_with(dlq_suffix) {
        return Err(invalid(
            name,
            "ends in the dead-letter suffix: dead-letter queues are created with their queue",
        ));
    }
    if name.len() + dlq_suffix.len() > MAX_QUEUE_NAME_BYTES {
        return Err(invalid(
            name,
            "leaves no room for the dead-letter suffix within 47 bytes",
        ));
    }
    Ok(())
}

/// A queue name that passed [`validate_queue_name`]: what providers take, so
/// a name that reaches SQL or AMQP has been checked by construction. Made
/// only by the gate in `service.rs`.
#[repr(transparent)]
pub struct QueueName(str);

impl QueueName {
    /// Checks `name` for any operation.
    pub(crate) fn new(name: &str) -> Result<&Self, MessagingError> {
        validate_queue_name(name)?;
        Ok(Self::trusted(name))
    }

    /// Checks `name` for `create_queue`: not a dead-letter queue's name, and
    /// room for the dead-letter suffix.
    pub(crate) fn new_queue<'a>(
        name: &'a str,
        dlq_suffix: &str,
    ) -> Result<&'a Self, MessagingError> {
        validate_new_queue_name(name, dlq_suffix)?;
        Ok(Self::trusted(name))
    }

    /// A name derived from a valid one by the library (a dead-letter queue's).
    pub(crate) fn trusted(name: &str) -> &Self {
        // SAFETY: `QueueName` is a `repr(transparent)` wrapper around `str`,
        // so the pointer cast keeps layout and lifetime.
        unsafe { &*(name as *const str as *const Self) }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for QueueName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

fn invalid(name: &str, reason: &'static str) -> MessagingError {
    // Names come from callers and may be huge; keep errors and logs bounded.
    let shown: String = name.chars().take(64).collect();
    MessagingError::InvalidQueueName {
        name: shown,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "_", "fulfillment_queue", "q1_2", &"a".repeat(47)] {
            validate_queue_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "a".repeat(48);
        for bad in [
            "",
            "Upper",
            "dash-name",
            "with space",
            "quote'",
            "semi;colon",
            "ünï",
            "1abc",
            &long,
            "a\"b",
            "a$b",
            "a.b",
        ] {
            assert!(
                matches!(
                    validate_queue_name(bad),
                    Err(MessagingError::InvalidQueueName { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn create_needs_room_for_the_suffix() {
        let base = "a".repeat(44);
        assert!(validate_new_queue_name(&base, "_dlq").is_err());
        assert!(validate_new_queue_name(&base[..43], "_dlq").is_ok());
    }

    #[test]
    fn create_refuses_names_ending_in_the_suffix() {
        for name in ["orders_dlq", "_dlq", "orders_dlq_dlq"] {
            assert!(
                matches!(
                    validate_new_queue_name(name, "_dlq"),
                    Err(MessagingError::InvalidQueueName { .. })
                ),
                "{name} was accepted"
            );
            validate_queue_name(name).expect("every other operation takes it");
        }
        for name in ["orders", "orders_dl", "dlq", "orders_dlq1"] {
            validate_new_queue_name(name, "_dlq").unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(validate_new_queue_name("orders_dead", "_dead").is_err());
        assert!(validate_new_queue_name("orders_dlq", "_dead").is_ok());
    }

    #[test]
    fn error_text_is_bounded() {
        let huge = "X".repeat(10_000);
        let err = validate_queue_name(&huge).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}

//! Mapping amqprs failures onto `MessagingError`.
//!
//! What a retry can fix is transient: the broker unreachable, a connection or
//! channel lost mid-call, a request that timed out, and the reply codes of a
//! broker in trouble (320 connection forced, 405 resource locked, 506
//! resource error, 541 internal error). A reply code that says the request
//! itself is wrong (404, 403, 406, ...) is not: the broker answered.

use super::channel::{CallError, Closed};
use crate::{resilience::Refused, BoxError, MessagingError, Provider};

/// AMQP reply code: the named queue (or exchange) does not exist.
pub(super) const NOT_FOUND: u16 = 404;
/// AMQP reply code: say, a queue declared again with other arguments.
pub(super) const PRECONDITION_FAILED: u16 = 406;

/// AMQP reply codes that say the request is wrong, so repeating it cannot
/// help: 311 content-too-large, 402 invalid-path (no such virtual host),
/// 403 access-refused, 404 not-found, 406 precondition-failed (say, a queue
/// declared with other arguments), 501-505 frame, syntax, command-invalid,
/// channel and unexpected-frame errors, 530 not-allowed, 540 not-implemented.
fn permanent(code: u16) -> bool {
    matches!(code, 311 | 402..=404 | 406 | 501..=505 | 530 | 540)
}

/// A transient connection error: the broker is unreachable, or the
/// connection (or channel) died mid-call.
pub(super) fn connection(
    message: impl Into<String>,
    source: Option<amqprs::error::Error>,
) -> MessagingError {
    MessagingError::connection(
        Provider::RabbitMq,
        message,
        source.map(|e| Box::new(e) as BoxError),
    )
}

/// A publish the broker refused (`basic.nack`): transient, and marked
/// [`Refused`] so the circuit breaker does not count it.
pub(super) fn refused(message: impl Into<String>) -> MessagingError {
    MessagingError::Provider {
        provider: Provider::RabbitMq,
        operation: "send_message",
        message: message.into(),
        transient: true,
        source: Some(Box::new(Refused)),
    }
}

/// Maps a failed channel request. `queue` names the queue a 404 refers to;
/// without it a 404 is a plain (permanent) provider error.
pub(super) fn call_error(
    operation: &'static str,
    error: CallError,
    queue: Option<&str>,
) -> MessagingError {
    match error {
        CallError::Closed(Closed { code, text }) => match (code, queue) {
            (NOT_FOUND, Some(queue)) => MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            },
            _ => MessagingError::Provider {
                provider: Provider::RabbitMq,
                operation,
                message: format!("the broker closed the channel: {code} {text}"),
                transient: !permanent(code),
                source: None,
            },
        },
        CallError::Broken { message, source } => {
            connection(format!("{operation}: {message}"), source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16) -> CallError {
        CallError::Closed(Closed {
            code,
            text: "text".into(),
        })
    }

    #[test]
    fn lost_connections_and_timeouts_are_transient_answers_are_not() {
        let broken = call_error("op", CallError::broken("timed out", None), Some("q"));
        assert!(
            matches!(broken, MessagingError::Connection { .. }) && broken.is_transient(),
            "{broken:?}"
        );
        assert!(matches!(
            call_error("op", closed(NOT_FOUND), Some("q")),
            MessagingError::QueueNotFound { queue } if queue == "q"
        ));
        for code in [NOT_FOUND, 403, 406, 402, 530] {
            let error = call_error("op", closed(code), None);
            assert!(!error.is_transient(), "{code}: {error}");
        }
        for code in [320, 405, 506, 541] {
            let error = call_error("op", closed(code), Some("q"));
            assert!(error.is_transient(), "{code}: {error}");
        }
        assert!(connection("refused", None).is_transient());
    }
}

//! Mapping amqprs failures onto `MessagingError`.

use super::channel::{CallError, Closed};
use crate::{BoxError, MessagingError, Provider};

/// AMQP reply code: the named queue (or exchange) does not exist.
pub(super) const NOT_FOUND: u16 = 404;
/// AMQP reply codes that retrying the same request cannot fix.
const ACCESS_REFUSED: u16 = 403;
const PRECONDITION_FAILED: u16 = 406;

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

/// Maps a failed channel request. `queue` names the queue a 404 refers to;
/// without it a 404 is a plain provider error.
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
                transient: !matches!(code, ACCESS_REFUSED | PRECONDITION_FAILED),
                source: None,
            },
        },
        CallError::Broken { message, source } => {
            connection(format!("{operation}: {message}"), source)
        }
    }
}

//! The one error type every provider returns.

use std::error::Error as StdError;

use crate::Provider;

/// A boxed driver error, kept as the `source` of [`MessagingError::Provider`]
/// and [`MessagingError::Connection`] so driver types never leak into the API.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Every failure a [`MessagingService`](crate::MessagingService) call can report.
///
/// The variants are semantic, not per driver: `QueueNotFound` means the same on
/// every provider. Use [`MessagingError::is_transient`] to decide whether a retry
/// can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessagingError {
    /// The server could not be reached, or the connection dropped mid-call.
    #[error("{provider} connection error: {message}")]
    Connection {
        /// Which provider failed.
        provider: Provider,
        /// What went wrong, free of secrets.
        message: String,
        /// The driver error, if there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The TLS handshake with the server failed: its certificate was not
    /// trusted (unknown CA, wrong host name, expired), it refused ours, or
    /// it does not speak TLS on that port. Not transient: a retry meets the
    /// same certificates.
    #[error("{provider} TLS error: {message}")]
    Tls {
        /// Which provider failed.
        provider: Provider,
        /// What went wrong, free of secrets.
        message: String,
        /// The TLS library's error, if there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The queue does not exist (create it with `create_queue`).
    #[error("queue `{queue}` does not exist")]
    QueueNotFound {
        /// The queue that was named.
        queue: String,
    },

    /// The queue name breaks the naming rules; no I/O was done.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The rejected name (truncated when very long).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// An argument is out of range (for example `max_messages == 0`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A message could not be serialized, or a body could not be decoded.
    #[error("serialization error: {0}")]
    Serialization(#[source] serde_json::Error),

    /// The receipt is malformed, or belongs to another provider or queue.
    #[error("invalid receipt handle {receipt:?}: {reason}")]
    InvalidReceipt {
        /// The receipt as given.
        receipt: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The receipt no longer holds the message: it was deleted, or its lease
    /// ended (and the message may have been delivered again).
    #[error("lease of receipt {receipt:?} on queue `{queue}` has ended")]
    LeaseExpired {
        /// The queue the receipt names.
        queue: String,
        /// The receipt as given.
        receipt: String,
    },

    /// The serialized message exceeds `queues.max_message_bytes`; nothing was sent.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// The circuit breaker is open; the call was not attempted.
    #[error("circuit breaker is open for {provider}")]
    CircuitOpen {
        /// The provider whose breaker is open.
        provider: Provider,
    },

    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),

    /// The backend was closed ([`MessagingService::close`](crate::MessagingService::close)):
    /// it makes no more calls. Never transient: connect a new backend.
    #[error("the {provider} backend is closed")]
    Closed {
        /// The provider of the closed backend.
        provider: Provider,
    },

    /// Any other provider failure, with the driver error kept as `source`.
    #[error("{provider} error during {operation}: {message}")]
    Provider {
        /// Which provider failed.
        provider: Provider,
        /// The operation that failed, e.g. `"send_message"`.
        operation: &'static str,
        /// What went wrong, free of secrets.
        message: String,
        /// Whether retrying the same call can succeed.
        transient: bool,
        /// The driver's error, or a marker of why the call failed (a
        /// broker's refusal of a publish), if there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl MessagingError {
    /// Whether retrying the same call may succeed: connection failures, open
    /// circuits and provider errors marked transient. Bad input, missing queues,
    /// dead leases and oversized messages never succeed on retry.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::CircuitOpen { .. } => true,
            Self::Provider { transient, .. } => *transient,
            _ => false,
        }
    }

    /// A stable short name of the variant, for the `error.type` span
    /// attribute and metric label: `connection`, `tls`, `queue_not_found`,
    /// `invalid_queue_name`, `invalid_argument`, `serialization`,
    /// `invalid_receipt`, `lease_expired`, `message_too_large`,
    /// `circuit_open`, `config`, `closed`, `provider`. Never carries a
    /// queue name, a receipt or a message: a bounded set of values.
    ///
    /// ```
    /// use tasker_messaging::MessagingError;
    /// let error = MessagingError::QueueNotFound { queue: "orders".into() };
    /// assert_eq!(error.kind(), "queue_not_found");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connection { .. } => "connection",
            Self::Tls { .. } => "tls",
            Self::QueueNotFound { .. } => "queue_not_found",
            Self::InvalidQueueName { .. } => "invalid_queue_name",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Serialization(_) => "serialization",
            Self::InvalidReceipt { .. } => "invalid_receipt",
            Self::LeaseExpired { .. } => "lease_expired",
            Self::MessageTooLarge { .. } => "message_too_large",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Config(_) => "config",
            Self::Closed { .. } => "closed",
            Self::Provider { .. } => "provider",
        }
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub(crate) fn connection(
        provider: Provider,
        message: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        Self::Connection {
            provider,
            message: message.into(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_io_failures_are_transient() {
        let transient = MessagingError::connection(Provider::Pgmq, "refused", None);
        assert!(transient.is_transient());
        assert!(MessagingError::CircuitOpen {
            provider: Provider::Pgmq
        }
        .is_transient());
        assert!(!MessagingError::QueueNotFound { queue: "q".into() }.is_transient());
        assert!(!MessagingError::MessageTooLarge { size: 2, max: 1 }.is_transient());
        assert!(!MessagingError::Closed {
            provider: Provider::RabbitMq
        }
        .is_transient());
        assert!(!MessagingError::LeaseExpired {
            queue: "q".into(),
            receipt: "r".into()
        }
        .is_transient());
    }
}

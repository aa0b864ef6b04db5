//! Send options: a delay before a message can be received, and headers
//! (string to string) that travel with it.
//!
//! Checked once, at the gate (`service.rs`), before any provider sees them:
//! header keys are ASCII, at most [`MAX_HEADER_KEY_BYTES`] bytes and outside
//! the library's reserved names ([`is_reserved_header`]); values hold no
//! U+0000; the delay is at most [`Capabilities::max_delay`]. Headers count
//! toward `queues.max_message_bytes` (CONTRACT.md, C34–C42).

use std::{collections::BTreeMap, time::Duration};

use crate::{Capabilities, MessagingError};

/// A message's headers: string keys to string values, in key order.
pub type Headers = BTreeMap<String, String>;

/// The longest header key accepted, in bytes.
pub const MAX_HEADER_KEY_BYTES: usize = 128;

/// The most a message's headers may take, in bytes, counting each header's
/// key, value and 8 bytes of framing. RabbitMQ carries headers in one
/// content-header frame, which cannot be split and is bounded by the
/// negotiated `frame_max` (128 KiB by default); this bound keeps a send
/// well inside it on every provider, rather than letting the broker close
/// the connection over it.
pub const MAX_HEADERS_BYTES: usize = 64 * 1024;

/// Key prefixes (compared without case) the library and the brokers keep for
/// themselves: `x-` (AMQP's and the broker's own headers) and `tasker`
/// (this library's bookkeeping).
pub const RESERVED_HEADER_PREFIXES: [&str; 2] = ["x-", "tasker"];

/// Keys the library uses internally without a reserved prefix (PGMQ's
/// dead-letter record).
const RESERVED_HEADER_KEYS: [&str; 1] = ["dead_letter"];

/// Whether `key` is one of the library's own header names: it starts with a
/// [reserved prefix](RESERVED_HEADER_PREFIXES), or is a key the library
/// uses internally (`dead_letter`). A send with such a key is
/// `InvalidArgument`; a received message never shows one.
pub fn is_reserved_header(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    RESERVED_HEADER_PREFIXES
        .iter()
        .any(|prefix| lower.starts_with(prefix))
        || RESERVED_HEADER_KEYS.contains(&lower.as_str())
}

/// How a message is sent: after a delay, with headers. The default (and
/// [`SendOptions::new`]) is a plain send: no delay, no headers.
///
/// ```
/// use std::time::Duration;
/// use tasker_messaging::SendOptions;
///
/// let options = SendOptions::new()
///     .delay(Duration::from_secs(30))
///     .header("correlation-id", "order-42")
///     .header("tenant", "acme");
/// assert_eq!(options.delay_duration(), Duration::from_secs(30));
/// assert_eq!(options.header_map()["tenant"], "acme");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    delay: Duration,
    headers: Headers,
}

impl SendOptions {
    /// A plain send: no delay, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the message receivable only once `delay` has passed (C34). Zero
    /// is a plain send (C37); above the provider's
    /// [`max_delay`](Capabilities::max_delay) the send is `InvalidArgument`
    /// (C36).
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds (or replaces) one header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Adds (or replaces) every header of `headers`.
    #[must_use]
    pub fn headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The delay set with [`delay`](Self::delay); zero by default.
    pub fn delay_duration(&self) -> Duration {
        self.delay
    }

    /// The headers set so far.
    pub fn header_map(&self) -> &Headers {
        &self.headers
    }

    /// Whether this is a plain send: no delay and no header.
    pub fn is_plain(&self) -> bool {
        self.delay.is_zero() && self.headers.is_empty()
    }

    /// The bytes the headers add to a message (keys and values), counted
    /// toward `queues.max_message_bytes`.
    pub(crate) fn header_bytes(&self) -> usize {
        header_bytes(&self.headers)
    }

    /// The gate's check (C35, C36, C39): header keys and values, and the
    /// delay against what the provider can hold.
    pub(crate) fn validate(&self, capabilities: &Capabilities) -> Result<(), MessagingError> {
        for (key, value) in &self.headers {
            validate_header(key, value)?;
        }
        let framed: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        if framed > MAX_HEADERS_BYTES {
            return Err(MessagingError::invalid_argument(format!(
                "the headers take {framed} bytes with their framing; at most {MAX_HEADERS_BYTES} are allowed"
            )));
        }
        if self.delay > capabilities.max_delay {
            return Err(MessagingError::invalid_argument(format!(
                "a delay of {:?} is longer than this provider's maximum, {:?}",
                self.delay, capabilities.max_delay
            )));
        }
        Ok(())
    }
}

/// The bytes `headers` add to a message: every key and value.
pub(crate) fn header_bytes(headers: &Headers) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len()).sum()
}

fn validate_header(key: &str, value: &str) -> Result<(), MessagingError> {
    let refuse = |why: &str| {
        Err(MessagingError::invalid_argument(format!(
            "header key {:?}: {why}",
            key.chars().take(MAX_HEADER_KEY_BYTES).collect::<String>()
        )))
    };
    if key.is_empty() {
        return refuse("a header key may not be empty");
    }
    if key.len() > MAX_HEADER_KEY_BYTES {
        return refuse("longer than 128 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("only printable ASCII without spaces is allowed");
    }
    if is_reserved_header(key) {
        return refuse("the prefixes x- and tasker, and dead_letter, are reserved");
    }
    if value.contains('\u{0}') {
        return refuse("the value contains U+0000, which not every provider can store");
    }
    Ok(())
}

/// The caller's headers among `pairs` (a provider's stored headers): string
/// values under keys a caller could have sent; the library's own and
/// anything else are left out.
pub(crate) fn user_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
    pairs
        .into_iter()
        .filter(|(k, v)| validate_header(k, v).is_ok())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(options: SendOptions) -> Result<(), MessagingError> {
        options.validate(&Capabilities::IN_MEMORY)
    }

    #[test]
    fn keys_are_ascii_bounded_and_not_reserved() {
        assert!(check(SendOptions::new().header("trace-id", "é ok")).is_ok());
        let bad = [
            String::new(),
            "clé".to_owned(),
            "with space".to_owned(),
            "k".repeat(129),
            "x-death".to_owned(),
            "X-Custom".to_owned(),
            "tasker_other_shape_since".to_owned(),
            "Tasker-anything".to_owned(),
            "dead_letter".to_owned(),
        ];
        for key in bad {
            let err = check(SendOptions::new().header(key.clone(), "v")).unwrap_err();
            assert!(matches!(err, MessagingError::InvalidArgument(_)), "{key}");
        }
        assert!(check(SendOptions::new().header("k".repeat(128), "v")).is_ok());
        assert!(matches!(
            check(SendOptions::new().header("k", "a\u{0}b")),
            Err(MessagingError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_delay_above_the_maximum_is_refused() {
        let max = Capabilities::RABBITMQ.max_delay;
        assert!(SendOptions::new()
            .delay(max)
            .validate(&Capabilities::RABBITMQ)
            .is_ok());
        assert!(matches!(
            SendOptions::new()
                .delay(max + Duration::from_millis(1))
                .validate(&Capabilities::RABBITMQ),
            Err(MessagingError::InvalidArgument(_))
        ));
        assert!(SendOptions::new().delay(Duration::ZERO).is_plain());
    }

    #[test]
    fn received_headers_leave_the_library_s_own_out() {
        let got = user_headers([
            ("tenant", "acme"),
            ("x-death", "…"),
            ("tasker_other_shape_since", "1"),
            ("dead_letter", "{}"),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(got["tenant"], "acme");
    }
}

//! Message bodies: JSON, with the size limit every provider enforces on send.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::value::RawValue;

use crate::MessagingError;

/// Serializes a message, refusing it before any I/O when it exceeds `max_bytes`.
pub(crate) fn encode<T: Serialize>(
    message: &T,
    max_bytes: usize,
) -> Result<Box<RawValue>, MessagingError> {
    encode_with_headers(message, max_bytes, 0)
}

/// [`encode`] for a message whose headers take `header_bytes` of the limit
/// (C39): the size reported is the body's and the headers' together.
pub(crate) fn encode_with_headers<T: Serialize>(
    message: &T,
    max_bytes: usize,
    header_bytes: usize,
) -> Result<Box<RawValue>, MessagingError> {
    let raw = serde_json::value::to_raw_value(message).map_err(MessagingError::Serialization)?;
    let size = raw.get().len().saturating_add(header_bytes);
    if size > max_bytes {
        return Err(MessagingError::MessageTooLarge {
            size,
            max: max_bytes,
        });
    }
    if contains_nul_escape(raw.get()) {
        // PostgreSQL's jsonb cannot store it; refuse it everywhere for parity.
        return Err(MessagingError::invalid_argument(
            "message contains the character U+0000, which not every provider can store",
        ));
    }
    Ok(raw)
}

/// Whether serialized JSON holds a `\u0000` escape (an escaped backslash
/// followed by `u0000` is text, not a NUL).
fn contains_nul_escape(json: &str) -> bool {
    json.match_indices("u0000").any(|(at, _)| {
        let slashes = json[..at].bytes().rev().take_while(|&b| b == b'\\').count();
        slashes % 2 == 1
    })
}

/// Serializes a batch; one oversized message refuses the whole batch.
pub(crate) fn encode_all<T: Serialize>(
    messages: &[T],
    max_bytes: usize,
) -> Result<Vec<Box<RawValue>>, MessagingError> {
    encode_all_with_headers(messages, max_bytes, 0)
}

/// [`encode_all`] for messages each carrying `header_bytes` of headers.
pub(crate) fn encode_all_with_headers<T: Serialize>(
    messages: &[T],
    max_bytes: usize,
    header_bytes: usize,
) -> Result<Vec<Box<RawValue>>, MessagingError> {
    messages
        .iter()
        .map(|m| encode_with_headers(m, max_bytes, header_bytes))
        .collect()
}

/// A body read as the type a receive asked for.
pub(crate) enum Decoded<T> {
    /// It is a `T`.
    Message(T),
    /// JSON, but not a `T`: another version's message, say, that a newer
    /// (or older) receiver can read.
    OtherShape,
    /// Not JSON at all: no receiver can read it.
    NotJson,
}

impl<T> Decoded<T> {
    /// What the dead-letter policy needs to know.
    pub(crate) fn decoding(&self) -> crate::dead_letter::Decoding {
        use crate::dead_letter::Decoding;
        match self {
            Self::Message(_) => Decoding::Ok,
            Self::OtherShape => Decoding::OtherShape,
            Self::NotJson => Decoding::NotJson,
        }
    }
}

/// Decodes `body` as a `T`, telling another shape from a body that is not JSON.
pub(crate) fn decode_as<T: DeserializeOwned>(body: &str) -> Decoded<T> {
    match serde_json::from_str(body) {
        Ok(message) => Decoded::Message(message),
        Err(e) if e.classify() == serde_json::error::Category::Data => Decoded::OtherShape,
        Err(_) => Decoded::NotJson,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nul_characters_but_not_their_spelling() {
        assert!(matches!(
            encode(&"a\u{0}b", 100),
            Err(MessagingError::InvalidArgument(_))
        ));
        assert!(
            encode(&"a\\u0000b", 100).is_ok(),
            "a literal backslash-u0000 is text"
        );
        assert!(encode(&"u0000", 100).is_ok());
    }

    #[test]
    fn refuses_oversized_messages() {
        let big = "x".repeat(100);
        assert!(matches!(
            encode(&big, 50),
            Err(MessagingError::MessageTooLarge { size: 102, max: 50 })
        ));
        assert_eq!(encode(&big, 102).unwrap().get().len(), 102);
    }
}

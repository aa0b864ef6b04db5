//! Ruby messages as the library sees them: JSON text, passed through.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tasker_messaging::MessagingError;

/// A message body as JSON text. Any JSON decodes as it, so a Ruby receiver
/// takes every message of its queue, whatever its shape. A `QueueMessage`
/// by the library's blanket implementation; its name is its
/// `message_type` (the AMQP `type` property on RabbitMQ).
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RubyMessage(Box<RawValue>);

impl RubyMessage {
    /// Checks that `text` is JSON (the Ruby side generated it).
    pub fn parse(text: String) -> Result<Self, MessagingError> {
        RawValue::from_string(text)
            .map(Self)
            .map_err(MessagingError::Serialization)
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }
}

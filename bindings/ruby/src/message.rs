//! Ruby messages as the library sees them: JSON text, passed through.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tasker_messaging::{MessagingError, QueueMessage};

/// A message body as JSON text. Any JSON decodes as it, so a Ruby receiver
/// takes every message of its queue, whatever its shape.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<RawValue>);

impl Json {
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

impl QueueMessage for Json {
    fn message_type(&self) -> &str {
        "RubyMessage"
    }
}

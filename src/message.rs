//! The values that travel through a queue: messages, ids, receipts and stats.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// A message that can be queued: every type that is `Serialize +
/// DeserializeOwned + Send + Sync + 'static` is one, with nothing to write
/// (a blanket implementation).
///
/// Bodies travel as JSON. Derive serde's traits on your own type and send it:
///
/// ```
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use tasker_messaging::{MessageBackend, MessagingConfig, MessagingService};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct InvoiceDue {
///     invoice: u64,
///     customer: String,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tasker_messaging::MessagingError> {
/// let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
/// backend.create_queue("billing").await?;
/// let due = InvoiceDue { invoice: 42, customer: "acme".into() };
/// backend.send_message("billing", &due).await?;
/// let got = backend
///     .receive_messages::<InvoiceDue>("billing", 1, Duration::from_secs(30))
///     .await?;
/// assert_eq!(got[0].message, due);
/// # Ok(()) }
/// ```
pub trait QueueMessage: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type's name without its module path (or generic arguments), e.g.
    /// `"SimpleStepMessage"`: RabbitMQ publishes it as the AMQP `type`
    /// property, for tools looking at a queue.
    fn message_type(&self) -> &str {
        let full = std::any::type_name::<Self>();
        let base = full.split('<').next().unwrap_or(full);
        base.rsplit("::").next().unwrap_or(base)
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> QueueMessage for T {}

/// Tasker's step message: "step X of task Y is ready", with the steps it waited on.
///
/// PostgreSQL holds the state; the message carries only ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleStepMessage {
    /// The task the step belongs to.
    pub task_uuid: Uuid,
    /// The step that is ready to run.
    pub step_uuid: Uuid,
    /// The steps whose completion made this one ready.
    #[serde(default)]
    pub ready_dependency_step_uuids: Vec<Uuid>,
}

impl SimpleStepMessage {
    /// A step message with no dependencies.
    pub fn new(task_uuid: Uuid, step_uuid: Uuid) -> Self {
        Self {
            task_uuid,
            step_uuid,
            ready_dependency_step_uuids: Vec::new(),
        }
    }
}

/// A message's provider-assigned id (a PGMQ `msg_id`, a RabbitMQ message id, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps a provider's id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MessageId {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Proof of one lease on one received message; pass it to `delete_message` or
/// `change_message_visibility`.
///
/// Opaque: its text round-trips through `Display`/`FromStr` (so it can be stored
/// or sent elsewhere), and the provider checks it when it comes back. A receipt
/// from another provider or queue is `InvalidReceipt`; one whose lease has ended
/// is `LeaseExpired`, as is one from before its queue was created again. In
/// another process it works where
/// [`Capabilities::portable_receipts`](crate::Capabilities::portable_receipts)
/// says so (PGMQ); elsewhere (RabbitMQ) it is `LeaseExpired` there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReceiptHandle(String);

impl ReceiptHandle {
    pub(crate) fn from_string(text: String) -> Self {
        Self(text)
    }

    /// The receipt as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ReceiptHandle {
    type Err = std::convert::Infallible;

    /// Any text parses; the provider validates it when it is used.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What the queue knows about one delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessageMetadata {
    /// The message's id; stable across deliveries.
    pub message_id: MessageId,
    /// The receipt of this delivery's lease.
    pub receipt_handle: ReceiptHandle,
    /// When the message was first enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// How many times the message has been received, this delivery included
    /// (1 on first receive).
    pub receive_count: u32,
    /// When this lease ends and the message becomes visible again.
    pub visibility_timeout_expires: DateTime<Utc>,
    /// The headers the message was sent with
    /// ([`SendOptions::header`](crate::SendOptions::header)); empty if none.
    /// The library's own bookkeeping never shows here (C38).
    pub headers: crate::Headers,
}

/// A received message and its delivery metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage<T> {
    /// The delivery's id, receipt and counters.
    pub metadata: QueuedMessageMetadata,
    /// The decoded message.
    pub message: T,
}

impl<T> QueuedMessage<T> {
    /// Shorthand for `&self.metadata.receipt_handle`.
    pub fn receipt(&self) -> &ReceiptHandle {
        &self.metadata.receipt_handle
    }

    /// The headers the message was sent with; shorthand for
    /// `&self.metadata.headers`.
    pub fn headers(&self) -> &crate::Headers {
        &self.metadata.headers
    }

    /// The trace context the sender's span put in the message's headers
    /// (cargo feature `opentelemetry`), read by the application's global
    /// text-map propagator; an empty context when the message carries none.
    /// Make the processing span a child of the sender's, or link to it:
    ///
    /// ```no_run
    /// # use tasker_messaging::QueuedMessage;
    /// use opentelemetry::trace::TraceContextExt;
    /// use tracing_opentelemetry::OpenTelemetrySpanExt;
    ///
    /// # fn work(message: QueuedMessage<serde_json::Value>) {
    /// let span = tracing::info_span!("process step");
    /// let _ = span.set_parent(message.trace_context());
    /// // or, to start a trace of its own that points at the sender's:
    /// let linked = tracing::info_span!("process step");
    /// linked.add_link(message.trace_context().span().span_context().clone());
    /// # }
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn trace_context(&self) -> opentelemetry::Context {
        crate::trace_context::extract(&self.metadata.headers)
    }
}

/// A snapshot of one queue. A field a provider cannot know is `None`, never a guess.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub queue_name: String,
    /// Messages ready to be received now.
    pub message_count: u64,
    /// Messages currently leased to a consumer.
    pub in_flight_count: Option<u64>,
    /// Age of the oldest message in the queue, in seconds.
    pub oldest_message_age_seconds: Option<i64>,
    /// Messages in the queue's dead-letter queue.
    pub dead_letter_count: Option<u64>,
    /// Messages sent with a delay that is not over yet: counted here and in
    /// no other field (C40). `None` where the provider cannot know
    /// (RabbitMQ: its delay tiers are shared by every queue).
    #[serde(default)]
    pub delayed_count: Option<u64>,
    /// Set by a [`MessageBackend::Migrating`](crate::MessageBackend::Migrating)
    /// only: the same counts on each side of the migration. The fields above
    /// are then their sums (`None` where either side's is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Box<crate::MigrationStats>>,
}

impl QueueStats {
    /// Stats of `queue_name` with `message_count` ready messages and every
    /// other count unknown (`None`): for a test double of
    /// [`MessagingService`](crate::MessagingService). Set the rest with the
    /// `with_*` methods or the public fields.
    pub fn new(queue_name: impl Into<String>, message_count: u64) -> Self {
        Self {
            queue_name: queue_name.into(),
            message_count,
            in_flight_count: None,
            oldest_message_age_seconds: None,
            dead_letter_count: None,
            delayed_count: None,
            migration: None,
        }
    }

    /// With `in_flight_count` known.
    pub fn with_in_flight_count(mut self, count: u64) -> Self {
        self.in_flight_count = Some(count);
        self
    }

    /// With the oldest message's age known, in seconds.
    pub fn with_oldest_message_age_seconds(mut self, seconds: i64) -> Self {
        self.oldest_message_age_seconds = Some(seconds);
        self
    }

    /// With `dead_letter_count` known.
    pub fn with_dead_letter_count(mut self, count: u64) -> Self {
        self.dead_letter_count = Some(count);
        self
    }

    /// With `delayed_count` known.
    pub fn with_delayed_count(mut self, count: u64) -> Self {
        self.delayed_count = Some(count);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Custom;

    #[derive(Serialize, Deserialize)]
    struct Generic<T>(T);

    #[test]
    fn message_type_is_the_short_type_name() {
        assert_eq!(Custom.message_type(), "Custom");
        assert_eq!(Generic(1u8).message_type(), "Generic");
        let step = SimpleStepMessage::new(Uuid::nil(), Uuid::nil());
        assert_eq!(step.message_type(), "SimpleStepMessage");
    }

    #[test]
    fn ids_and_receipts_round_trip_through_text() {
        let receipt: ReceiptHandle = "pgmq:q:16384:1:2".parse().unwrap();
        assert_eq!(
            receipt.to_string().parse::<ReceiptHandle>().unwrap(),
            receipt
        );
        let id: MessageId = "42".parse().unwrap();
        assert_eq!(id.as_str(), "42");
    }

    #[test]
    fn step_message_without_dependencies_decodes() {
        let task = Uuid::new_v4();
        let step = Uuid::new_v4();
        let json = format!(r#"{{"task_uuid":"{task}","step_uuid":"{step}"}}"#);
        let msg: SimpleStepMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(msg, SimpleStepMessage::new(task, step));
    }
}

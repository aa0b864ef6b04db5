//! The `MessagingService` trait: the one contract every provider implements.

use std::{future::Future, time::Duration};

use crate::{
    queue_name::QueueName,
    telemetry::{self, Op},
    Capabilities, CircuitBreaker, MessageId, MessagingError, Provider, QueueMessage, QueueStats,
    QueuedMessage, QueuesConfig, ReceiptHandle, SendOptions,
};

/// Operations every provider offers, with the same observable behaviour.
///
/// The contract is `docs/CONTRACT.md` in the repository: numbered rules
/// (C1, C2, …), each checked on every provider by the conformance suite
/// (cargo feature `conformance`). The methods below cite the rules they obey.
///
/// # The implementor to use: [`MessageBackend`](crate::MessageBackend)
///
/// Applications hold a [`MessageBackend`](crate::MessageBackend), the
/// closed enum of the providers built by
/// [`MessageBackend::connect`](crate::MessageBackend::connect) from a
/// [`MessagingConfig`](crate::MessagingConfig), and call these methods on it.
/// It implements this trait by a `match` over its variants: static
/// dispatch, no trait object, no boxed future. The concrete providers
/// ([`InMemoryMessageService`](crate::providers::InMemoryMessageService) and,
/// with their cargo features, `PgmqMessageService` and
/// `RabbitMqMessageService`) implement it too, and so may a test double of
/// your own (every method can be written with `async fn`).
///
/// Every method returns a `Send` future, so generic code spawns it:
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tasker_messaging::{MessagingService, SimpleStepMessage};
///
/// fn spawn_drain<S: MessagingService + Send + Sync + 'static>(
///     service: Arc<S>,
/// ) -> tokio::task::JoinHandle<Result<usize, tasker_messaging::MessagingError>> {
///     tokio::spawn(async move {
///         let got = service
///             .receive_messages::<SimpleStepMessage>("orders", 10, Duration::from_secs(30))
///             .await?;
///         for message in &got {
///             service.delete_message("orders", message.receipt()).await?;
///         }
///         Ok(got.len())
///     })
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let backend = tasker_messaging::MessageBackend::connect(&tasker_messaging::MessagingConfig::in_memory()).await?;
/// # backend.create_queue("orders").await?;
/// # assert_eq!(spawn_drain(Arc::new(backend)).await??, 0);
/// # Ok(()) }
/// ```
///
/// The trait is not object-safe on purpose: generic message methods and
/// unboxed futures keep the hot path free of allocation.
///
/// Queue names are validated once, before dispatch and before any I/O (see
/// [`validate_queue_name`](crate::validate_queue_name); C1): the trait is
/// implemented once, for every provider, on top of a provider-side trait that
/// only accepts a checked name. Every operation but `create_queue` and
/// `delete_queue` fails with `QueueNotFound` on a missing queue (C4).
pub trait MessagingService {
    /// `Ok(true)` when the server answers, `Ok(false)` when it does not within
    /// the connection timeout. Never hangs (C23).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// assert!(backend.health_check().await?);
    /// # Ok(()) }
    /// ```
    fn health_check(&self) -> impl Future<Output = Result<bool, MessagingError>> + Send;

    /// Creates `queue` and its dead-letter queue. Idempotent (C2). A name
    /// ending in `queues.dead_letter_queue_suffix` is `InvalidQueueName`:
    /// dead-letter queues are created with their queue, never on their own
    /// (C1).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.create_queue("payments").await?;
    /// backend.create_queue("payments").await?; // idempotent (C2)
    /// assert_eq!(backend.get_queue_stats("payments").await?.message_count, 0);
    /// // A dead-letter queue comes with its queue, never on its own (C1).
    /// let refused = backend.create_queue("payments_dlq").await;
    /// assert!(matches!(refused, Err(MessagingError::InvalidQueueName { .. })));
    /// # Ok(()) }
    /// ```
    fn create_queue(&self, queue: &str) -> impl Future<Output = Result<(), MessagingError>> + Send;

    /// Sends one message; returns once it is durable (C5). Over
    /// `queues.max_message_bytes` it is `MessageTooLarge` (C7); a message
    /// containing U+0000 is `InvalidArgument` (C31). The same as
    /// [`send_message_with`](Self::send_message_with) and
    /// [`SendOptions::new`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let id = backend.send_message("orders", &step).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// assert_eq!(got[0].metadata.message_id, id);
    /// assert_eq!(got[0].message, step);
    /// # Ok(()) }
    /// ```
    fn send_message<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
    ) -> impl Future<Output = Result<MessageId, MessagingError>> + Send;

    /// Sends messages in order, one id per message, returning once all are
    /// durable. An empty batch is `Ok(vec![])` with no I/O (C6). One
    /// oversized message refuses the whole batch (C7). The same as
    /// [`send_batch_with`](Self::send_batch_with) and [`SendOptions::new`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let ids = backend.send_batch("orders", &[step.clone(), step]).await?;
    /// assert_eq!(ids.len(), 2);
    /// // An empty batch does no I/O (C6).
    /// assert!(backend.send_batch::<SimpleStepMessage>("orders", &[]).await?.is_empty());
    /// # Ok(()) }
    /// ```
    fn send_batch<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
    ) -> impl Future<Output = Result<Vec<MessageId>, MessagingError>> + Send;

    /// Sends one message with `options`: receivable only once
    /// `options.delay` has passed (C34, C35), carrying `options.headers`,
    /// which every receive of it shows (C38) and which count toward
    /// `queues.max_message_bytes` (C39). Returns once the message is durable,
    /// delayed or not (C5, C41). Checked before any I/O: a header key that is
    /// not ASCII, longer than 128 bytes or reserved (`x-`, `tasker`,
    /// `dead_letter`), and a delay above
    /// [`Capabilities::max_delay`], are `InvalidArgument` (C36, C39). A zero
    /// delay is a plain send (C37).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// use tasker_messaging::SendOptions;
    /// let options = SendOptions::new().delay(Duration::from_secs(60));
    /// backend.send_message_with("orders", &step, &options).await?;
    /// // Not receivable for a minute, but counted as delayed.
    /// assert!(backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?.is_empty());
    /// assert_eq!(backend.get_queue_stats("orders").await?.delayed_count, Some(1));
    /// # Ok(()) }
    /// ```
    fn send_message_with<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
        options: &SendOptions,
    ) -> impl Future<Output = Result<MessageId, MessagingError>> + Send;

    /// [`send_batch`](Self::send_batch) with `options` applied to every
    /// message, as [`send_message_with`](Self::send_message_with) applies
    /// them to one.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// use tasker_messaging::SendOptions;
    /// let options = SendOptions::new().header("tenant", "acme");
    /// backend.send_batch_with("orders", &[step.clone(), step], &options).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 2, lease).await?;
    /// assert_eq!(got.len(), 2);
    /// assert!(got.iter().all(|m| m.headers()["tenant"] == "acme"));
    /// # Ok(()) }
    /// ```
    fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
        options: &SendOptions,
    ) -> impl Future<Output = Result<Vec<MessageId>, MessagingError>> + Send;

    /// Returns at once with up to `max_messages` messages available now, each
    /// leased for `visibility_timeout` (whole seconds, rounded up, at least 1).
    /// FIFO for one consumer (C8); a leased message is hidden from every other
    /// receive (C9, C10, C12) until the lease ends, when it comes back with
    /// `receive_count` one higher (C11). After `max_receive_count` deliveries
    /// a message moves to the dead-letter queue instead (C18); one that does
    /// not decode as `T` takes its place among the `max_messages` read and is
    /// put back at once for receivers that read it, without counting as a
    /// delivery, and one that is not JSON moves at once (C19).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_message("orders", &step).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 10, lease).await?;
    /// assert_eq!((got.len(), got[0].metadata.receive_count), (1, 1));
    /// // Leased: hidden from every other receive until deleted or the lease ends.
    /// assert!(backend.receive_messages::<SimpleStepMessage>("orders", 10, lease).await?.is_empty());
    /// # Ok(()) }
    /// ```
    fn receive_messages<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> impl Future<Output = Result<Vec<QueuedMessage<T>>, MessagingError>> + Send;

    /// Like [`receive_messages`](Self::receive_messages), but when nothing is
    /// available waits up to `wait` for a first message, returning as soon as
    /// one can be leased (C24), or empty once `wait` has passed (C25). PGMQ
    /// and in-memory wait on an arrival signal (LISTEN/NOTIFY; a `Notify`)
    /// with a slow fallback poll (`queues.wait_poll_interval_ms`) that also
    /// catches leases that ran out (C26); RabbitMQ keeps a consumer with a
    /// window of one open. `Duration::ZERO` does not wait.
    /// Dropping the future mid-wait loses nothing: a lease taken by an
    /// interrupted receive ends with its visibility timeout (not checked by
    /// the conformance suite).
    ///
    /// The two `Duration`s are easy to swap, and both compile. The lease
    /// comes first, in the same place as in `receive_messages`; the wait is
    /// the one argument added at the end:
    ///
    /// | position | argument | what it bounds | typical |
    /// | --- | --- | --- | --- |
    /// | 3rd | `visibility_timeout` | **the lease**: how long each message received stays hidden from other receivers, for the caller to settle it | 30 s |
    /// | 4th | `wait` | **the wait**: how long this call blocks when the queue is empty before returning `Ok(vec![])` | 1-20 s |
    ///
    /// Swapped, a 30 s lease and 1 s wait become a 1 s lease, after which
    /// the message is delivered again (a duplicate), and a 30 s wait.
    /// Naming both as locals, as below, keeps the order visible at the call.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let lease = Duration::from_secs(30); // visibility_timeout: how long a message stays ours
    /// let wait = Duration::from_millis(50); // wait: how long to wait for one to arrive
    /// let empty = backend.receive_messages_wait::<SimpleStepMessage>("orders", 10, lease, wait).await?;
    /// assert!(empty.is_empty()); // nothing arrived within `wait`
    /// backend.send_message("orders", &step).await?;
    /// let got = backend.receive_messages_wait::<SimpleStepMessage>("orders", 10, lease, wait).await?;
    /// assert_eq!(got.len(), 1); // available: returned at once, leased for 30 s
    /// # Ok(()) }
    /// ```
    fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<QueuedMessage<T>>, MessagingError>> + Send;

    /// Removes a leased message for good. A receipt whose lease has ended is
    /// `LeaseExpired`; a malformed or foreign one is `InvalidReceipt`
    /// (C14–C16).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_message("orders", &step).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// backend.delete_message("orders", got[0].receipt()).await?;
    /// // A receipt settles once: its lease is gone (C14).
    /// let again = backend.delete_message("orders", got[0].receipt()).await;
    /// assert!(matches!(again, Err(MessagingError::LeaseExpired { .. })));
    /// # Ok(()) }
    /// ```
    fn delete_message(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
    ) -> impl Future<Output = Result<(), MessagingError>> + Send;

    /// Deletes many leased messages in one call, for a worker settling the
    /// batch it received: one outcome per receipt, in order, each what
    /// [`delete_message`](Self::delete_message) would return for that
    /// receipt were it called for each in turn (a live lease is deleted, a
    /// dead one is `LeaseExpired`, a malformed or foreign one
    /// `InvalidReceipt`; a receipt given twice is `LeaseExpired` the second
    /// time). PGMQ runs one statement, RabbitMQ sends the acks back to back
    /// and the in-memory queue takes its lock once. An empty batch is
    /// `Ok(vec![])` with no I/O (C32).
    ///
    /// The outer `Err` is for the call as a whole (the queue is missing, the
    /// server cannot be reached) and then no receipt was settled, except
    /// that, as for `delete_message`, a lost reply can hide deletes that did
    /// happen (C4, C32).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_batch("orders", &[step.clone(), step]).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 10, lease).await?;
    /// let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
    /// let outcomes = backend.delete_messages("orders", &receipts).await?;
    /// assert!(outcomes.len() == 2 && outcomes.iter().all(Result::is_ok));
    /// assert_eq!(backend.get_queue_stats("orders").await?.in_flight_count, Some(0));
    /// # Ok(()) }
    /// ```
    fn delete_messages(
        &self,
        queue: &str,
        receipts: &[ReceiptHandle],
    ) -> impl Future<Output = Result<Vec<Result<(), MessagingError>>, MessagingError>> + Send;

    /// Moves a live lease's deadline to now + `visibility_timeout`; zero
    /// releases the message at once (C17). Dead and foreign receipts fail as
    /// in [`delete_message`](Self::delete_message) (C14, C15).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_message("orders", &step).await?;
    /// let got = backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// // Zero hands the message back at once, for the next receive (C17).
    /// backend.change_message_visibility("orders", got[0].receipt(), Duration::ZERO).await?;
    /// let again = backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// assert_eq!(again[0].metadata.receive_count, 2);
    /// # Ok(()) }
    /// ```
    fn change_message_visibility(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> impl Future<Output = Result<(), MessagingError>> + Send;

    /// Ready, leased and dead-lettered counts, and the oldest message's age;
    /// `None` where the provider cannot know (C21).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_batch("orders", &[step.clone(), step]).await?;
    /// backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// let stats = backend.get_queue_stats("orders").await?;
    /// assert_eq!(stats.message_count, 1); // ready
    /// assert_eq!(stats.in_flight_count, Some(1)); // leased (`None` where unknown)
    /// assert_eq!(stats.dead_letter_count, Some(0));
    /// # Ok(()) }
    /// ```
    fn get_queue_stats(
        &self,
        queue: &str,
    ) -> impl Future<Output = Result<QueueStats, MessagingError>> + Send;

    /// Removes every ready message (leased ones stay) and returns how many
    /// (C22).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.send_batch("orders", &[step.clone(), step.clone(), step]).await?;
    /// let leased = backend.receive_messages::<SimpleStepMessage>("orders", 1, lease).await?;
    /// assert_eq!(backend.purge_queue("orders").await?, 2); // the leased one stays
    /// backend.delete_message("orders", leased[0].receipt()).await?;
    /// # Ok(()) }
    /// ```
    fn purge_queue(&self, queue: &str) -> impl Future<Output = Result<u64, MessagingError>> + Send;

    /// Deletes `queue` and its dead-letter queue. Idempotent (C3).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// backend.delete_queue("orders").await?;
    /// backend.delete_queue("orders").await?; // idempotent (C3)
    /// let gone = backend.get_queue_stats("orders").await;
    /// assert!(matches!(gone, Err(MessagingError::QueueNotFound { .. })));
    /// # Ok(()) }
    /// ```
    fn delete_queue(&self, queue: &str) -> impl Future<Output = Result<(), MessagingError>> + Send;

    /// Which provider this is.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// use tasker_messaging::Provider;
    /// assert_eq!(backend.provider(), Provider::InMemory);
    /// assert_eq!(backend.provider().to_string(), "in_memory"); // the config's tag
    /// # Ok(()) }
    /// ```
    fn provider(&self) -> Provider;

    /// What this provider guarantees beyond the contract (atomic batches,
    /// exact stats, confirmed deletes, durability, portable receipts).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let capabilities = backend.capabilities();
    /// assert!(!capabilities.durable); // in-memory: gone with the process
    /// assert!(capabilities.max_delay >= Duration::from_secs(3600)); // delayed sends offered
    /// # Ok(()) }
    /// ```
    fn capabilities(&self) -> Capabilities;

    /// The `[queues]` settings this service enforces (limits, dead-letter policy).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let queues = backend.queues_config();
    /// assert_eq!(queues.dead_letter_queue_suffix, "_dlq");
    /// assert_eq!(queues.max_receive_count, 5); // then a message is dead-lettered
    /// # Ok(()) }
    /// ```
    fn queues_config(&self) -> &QueuesConfig;

    /// The circuit breaker guarding this provider's server; `None` for a
    /// provider without one (in-memory: nothing to protect).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// match backend.circuit_breaker() {
    ///     Some(breaker) => println!("circuit {:?}", breaker.state()),
    ///     None => assert!(backend.provider() == tasker_messaging::Provider::InMemory),
    /// }
    /// # Ok(()) }
    /// ```
    fn circuit_breaker(&self) -> Option<&CircuitBreaker>;

    /// Shuts the backend down, for it and every clone (C33). New calls are
    /// refused at once; waiting receives in progress end with `Closed`;
    /// other calls in flight are waited for, at most 5 s (a call future
    /// polled once and then parked is never polled to see the close): after
    /// that the provider tears down anyway, and such a call, polled later,
    /// fails (with `Closed`, or an error from the closed connection). Then
    /// the provider lets go of the server:
    ///
    /// - On PGMQ every delete and settle that returned `Ok` was committed
    ///   when it returned. On RabbitMQ a settle (ack, release, visibility
    ///   change) that returned `Ok` was handed to amqprs' writer task;
    ///   `close` lets each channel that settled rest 250 ms after its last
    ///   settle, then closes it and then the connection, each awaiting the
    ///   broker's close-ok. That pause is a heuristic, not a proof: a
    ///   quorum queue applies acks asynchronously and AMQP 0-9-1 has no
    ///   round trip that confirms one. Measured: 0 of 10,000 and of 30,000
    ///   deleted messages came back on one node; a slow cluster may need
    ///   more. An ack not applied in time brings its message back, a
    ///   duplicate, never a loss.
    /// - Leases not settled come back as the provider brings them back:
    ///   on RabbitMQ at once (the broker requeues a closed channel's
    ///   deliveries), on PGMQ when their visibility timeout ends.
    /// - Channels, connections and background tasks are closed or stopped;
    ///   a pool PGMQ built (`connect`) is closed, one passed to
    ///   `PgmqMessageService::from_pool` is left open.
    ///
    /// Every later call (`health_check` included) fails with
    /// [`MessagingError::Closed`], which is not transient; `provider`,
    /// `capabilities`, `queues_config` and `circuit_breaker` still answer.
    ///
    /// The teardown runs in a task of its own, started by the first call:
    /// dropping a `close` future (a timeout, an interrupt) does not cut it
    /// short, and every call, the first or a retry, waits for it to end.
    /// The first call to see it end returns its outcome; later calls `Ok`.
    /// `Err` means the server could not confirm the close, e.g. the
    /// connection was lost: settles sent just before may not have reached
    /// it, so those messages may come back (duplicates, never losses).
    /// Resources are let go either way.
    ///
    /// Dropping the last clone without `close` is safe: RabbitMQ runs the
    /// same teardown from a task when a runtime is there to run it, but a
    /// process that exits right after loses that task, and with it acks
    /// not yet written (their messages come back as duplicates).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let clone = backend.clone();
    /// backend.close().await?;
    /// let refused = clone.send_message("orders", &step).await;
    /// assert!(matches!(refused, Err(MessagingError::Closed { .. })));
    /// backend.close().await?; // later calls are `Ok`
    /// # Ok(()) }
    /// ```
    fn close(&self) -> impl Future<Output = Result<(), MessagingError>> + Send;

    /// Whether [`close`](Self::close) has been called on this backend or a clone.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tasker_messaging::{MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
    /// # backend.create_queue("orders").await?;
    /// # let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    /// # let lease = Duration::from_secs(30);
    /// let clone = backend.clone();
    /// assert!(!clone.is_closed());
    /// backend.close().await?;
    /// assert!(clone.is_closed()); // closing one clone closes them all
    /// # Ok(()) }
    /// ```
    fn is_closed(&self) -> bool;
}

/// What a provider implements: the operations of [`MessagingService`] with
/// the queue name already validated. Public in a private module, so users
/// cannot name it; [`MessagingService`] is implemented once for every
/// provider (and `MessageBackend`) on top of it, which is where every queue
/// name is checked, before dispatch.
pub(crate) mod provide {
    use std::time::Duration;

    use std::future::Future;

    pub(crate) use crate::shutdown::{Shutdown, Teardown};
    use crate::{
        queue_name::QueueName, Capabilities, CircuitBreaker, MessageId, MessagingError, Provider,
        QueueMessage, QueueStats, QueuedMessage, QueuesConfig, ReceiptHandle, SendOptions,
    };

    /// The provider side of [`MessagingService`](crate::MessagingService).
    pub trait Provide: Send + Sync {
        fn health_check(&self) -> impl Future<Output = Result<bool, MessagingError>> + Send;

        fn create_queue(
            &self,
            queue: &QueueName,
        ) -> impl Future<Output = Result<(), MessagingError>> + Send;

        fn send_message<T: QueueMessage>(
            &self,
            queue: &QueueName,
            message: &T,
        ) -> impl Future<Output = Result<MessageId, MessagingError>> + Send;

        fn send_batch<T: QueueMessage>(
            &self,
            queue: &QueueName,
            messages: &[T],
        ) -> impl Future<Output = Result<Vec<MessageId>, MessagingError>> + Send;

        /// A send with options the gate checked and found not plain (a
        /// delay, or headers); plain sends go to `send_message`.
        fn send_message_with<T: QueueMessage>(
            &self,
            queue: &QueueName,
            message: &T,
            options: &SendOptions,
        ) -> impl Future<Output = Result<MessageId, MessagingError>> + Send;

        /// `send_batch` with options, as `send_message_with`.
        fn send_batch_with<T: QueueMessage>(
            &self,
            queue: &QueueName,
            messages: &[T],
            options: &SendOptions,
        ) -> impl Future<Output = Result<Vec<MessageId>, MessagingError>> + Send;

        fn receive_messages<T: QueueMessage>(
            &self,
            queue: &QueueName,
            max_messages: usize,
            visibility_timeout: Duration,
        ) -> impl Future<Output = Result<Vec<QueuedMessage<T>>, MessagingError>> + Send;

        fn receive_messages_wait<T: QueueMessage>(
            &self,
            queue: &QueueName,
            max_messages: usize,
            visibility_timeout: Duration,
            wait: Duration,
        ) -> impl Future<Output = Result<Vec<QueuedMessage<T>>, MessagingError>> + Send;

        fn delete_message(
            &self,
            queue: &QueueName,
            receipt: &ReceiptHandle,
        ) -> impl Future<Output = Result<(), MessagingError>> + Send;

        fn delete_messages(
            &self,
            queue: &QueueName,
            receipts: &[ReceiptHandle],
        ) -> impl Future<Output = Result<Vec<Result<(), MessagingError>>, MessagingError>> + Send;

        fn change_message_visibility(
            &self,
            queue: &QueueName,
            receipt: &ReceiptHandle,
            visibility_timeout: Duration,
        ) -> impl Future<Output = Result<(), MessagingError>> + Send;

        /// Makes a leased message ready again at once without counting the
        /// receive that leased it: for a read that reached no caller (a move
        /// that could not move it). `LeaseExpired` if the lease is not live.
        fn put_back_uncounted(
            &self,
            queue: &QueueName,
            receipt: &ReceiptHandle,
        ) -> impl Future<Output = Result<(), MessagingError>> + Send;

        fn get_queue_stats(
            &self,
            queue: &QueueName,
        ) -> impl Future<Output = Result<QueueStats, MessagingError>> + Send;

        fn purge_queue(
            &self,
            queue: &QueueName,
        ) -> impl Future<Output = Result<u64, MessagingError>> + Send;

        fn delete_queue(
            &self,
            queue: &QueueName,
        ) -> impl Future<Output = Result<(), MessagingError>> + Send;

        fn provider(&self) -> Provider;

        fn capabilities(&self) -> Capabilities;

        fn queues_config(&self) -> &QueuesConfig;

        fn circuit_breaker(&self) -> Option<&CircuitBreaker>;

        /// The server this backend talks to now, as `(host, port)`, for the
        /// `server.address` and `server.port` span attributes: from the
        /// configured URL (never its credentials); `None` for a provider
        /// with no server (in-memory), or none fixed (a migration, or
        /// RabbitMQ while reconnecting). Asked only when a span is recorded.
        fn server(&self) -> Option<(&str, u16)> {
            None
        }

        /// The closed state the gate checks, shared by clones.
        fn shutdown(&self) -> &Shutdown;

        /// Whether calls must be refused with `Closed`: this backend was
        /// closed, or (for a migration) one of its sides was.
        fn closed(&self) -> bool {
            self.shutdown().is_closed()
        }

        /// Lets go of the server once no call is in flight (see
        /// [`MessagingService::close`](crate::MessagingService::close)). The
        /// future owns what it needs: it runs in a task of its own, which a
        /// cancelled `close` does not cut short.
        fn teardown(&self) -> Teardown;
    }
}

/// The one gate: every queue name is checked here, before any provider sees
/// it (C1), so a provider only ever handles valid names. Every queue call
/// also runs here inside its span, and records its metrics once
/// (`telemetry::observe`): a provider (or a migration's side, called
/// through `Provide`) makes no span of its own.
impl<P: provide::Provide> MessagingService for P {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        let _pass = enter(self)?;
        provide::Provide::health_check(self).await
    }

    async fn create_queue(&self, queue: &str) -> Result<(), MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            let suffix = &provide::Provide::queues_config(self).dead_letter_queue_suffix;
            let queue = QueueName::new_queue(queue, suffix)?;
            provide::Provide::create_queue(self, queue).await
        };
        telemetry::observe(self, Op::CreateQueue, queue, None, call).await
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            send_one(self, QueueName::new(queue)?, message, &SendOptions::new()).await
        };
        telemetry::observe(self, Op::SendMessage, queue, None, call).await
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            send_many(self, QueueName::new(queue)?, messages, &SendOptions::new()).await
        };
        let count = Some(messages.len());
        telemetry::observe(self, Op::SendBatch, queue, count, call).await
    }

    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
        options: &SendOptions,
    ) -> Result<MessageId, MessagingError> {
        // Runs inside the send span, which the trace context names.
        let call = async {
            let _pass = enter(self)?;
            let queue = QueueName::new(queue)?;
            options.validate(&provide::Provide::capabilities(self))?;
            send_one(self, queue, message, options).await
        };
        telemetry::observe(self, Op::SendMessageWith, queue, None, call).await
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
        options: &SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        // Runs inside the send span, which the trace context names.
        let call = async {
            let _pass = enter(self)?;
            let queue = QueueName::new(queue)?;
            options.validate(&provide::Provide::capabilities(self))?;
            send_many(self, queue, messages, options).await
        };
        let count = Some(messages.len());
        telemetry::observe(self, Op::SendBatchWith, queue, count, call).await
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            let queue = QueueName::new(queue)?;
            provide::Provide::receive_messages(self, queue, max_messages, visibility_timeout).await
        };
        telemetry::observe(self, Op::ReceiveMessages, queue, None, call).await
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            let queue = QueueName::new(queue)?;
            let wait = provide::Provide::receive_messages_wait(
                self,
                queue,
                max_messages,
                visibility_timeout,
                wait,
            );
            let provider = provide::Provide::provider(self);
            provide::Provide::shutdown(self)
                .unless_closed(provider, wait)
                .await
        };
        telemetry::observe(self, Op::ReceiveMessagesWait, queue, None, call).await
    }

    async fn delete_message(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            provide::Provide::delete_message(self, QueueName::new(queue)?, receipt).await
        };
        telemetry::observe(self, Op::DeleteMessage, queue, None, call).await
    }

    async fn delete_messages(
        &self,
        queue: &str,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            provide::Provide::delete_messages(self, QueueName::new(queue)?, receipts).await
        };
        let count = Some(receipts.len());
        telemetry::observe(self, Op::DeleteMessages, queue, count, call).await
    }

    async fn change_message_visibility(
        &self,
        queue: &str,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            let queue = QueueName::new(queue)?;
            provide::Provide::change_message_visibility(self, queue, receipt, visibility_timeout)
                .await
        };
        telemetry::observe(self, Op::ChangeMessageVisibility, queue, None, call).await
    }

    async fn get_queue_stats(&self, queue: &str) -> Result<QueueStats, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            provide::Provide::get_queue_stats(self, QueueName::new(queue)?).await
        };
        telemetry::observe(self, Op::GetQueueStats, queue, None, call).await
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64, MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            provide::Provide::purge_queue(self, QueueName::new(queue)?).await
        };
        telemetry::observe(self, Op::PurgeQueue, queue, None, call).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), MessagingError> {
        let call = async {
            let _pass = enter(self)?;
            provide::Provide::delete_queue(self, QueueName::new(queue)?).await
        };
        telemetry::observe(self, Op::DeleteQueue, queue, None, call).await
    }

    fn provider(&self) -> Provider {
        provide::Provide::provider(self)
    }

    fn capabilities(&self) -> Capabilities {
        provide::Provide::capabilities(self)
    }

    fn queues_config(&self) -> &QueuesConfig {
        provide::Provide::queues_config(self)
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        provide::Provide::circuit_breaker(self)
    }

    async fn close(&self) -> Result<(), MessagingError> {
        let provider = provide::Provide::provider(self);
        provide::Provide::shutdown(self)
            .close(provider, || provide::Provide::teardown(self))
            .await
    }

    fn is_closed(&self) -> bool {
        provide::Provide::closed(self)
    }
}

/// Admits one call on `service`, or refuses it once the backend is closed (C33).
fn enter<P: provide::Provide>(service: &P) -> Result<crate::shutdown::Pass<'_>, MessagingError> {
    let provider = provide::Provide::provider(service);
    let pass = provide::Provide::shutdown(service).enter(provider)?;
    // A migration whose side was closed directly (C33).
    if provide::Provide::closed(service) {
        return Err(MessagingError::Closed { provider });
    }
    Ok(pass)
}

/// A send whose options the gate checked, with the current trace context
/// added (`trace_context`): plain options take the provider's plain path
/// (PGMQ's group commit, for one).
///
/// A message that fits without the context must not fail for it: when the
/// added headers push it over `max_message_bytes`, it is sent again with
/// the caller's own options. Every provider raises `MessageTooLarge` while
/// encoding, before any I/O (`codec::encode_all_with_headers`), so the
/// first attempt sent nothing.
async fn send_one<P: provide::Provide, T: QueueMessage>(
    service: &P,
    queue: &QueueName,
    message: &T,
    options: &SendOptions,
) -> Result<MessageId, MessagingError> {
    // One await in a loop, not two: the future holds one send, not two.
    let mut options_now = traced(service, options);
    loop {
        match send_one_as(service, queue, message, &options_now).await {
            Err(MessagingError::MessageTooLarge { .. })
                if matches!(options_now, std::borrow::Cow::Owned(_)) =>
            {
                options_now = std::borrow::Cow::Borrowed(options);
            }
            sent => return sent,
        }
    }
}

/// `send_one` with these very options.
async fn send_one_as<P: provide::Provide, T: QueueMessage>(
    service: &P,
    queue: &QueueName,
    message: &T,
    options: &SendOptions,
) -> Result<MessageId, MessagingError> {
    if options.is_plain() {
        return provide::Provide::send_message(service, queue, message).await;
    }
    provide::Provide::send_message_with(service, queue, message, options).await
}

/// `send_one` for a batch: every message carries the same options, and the
/// batch is sent again without the context if it made one message too large.
async fn send_many<P: provide::Provide, T: QueueMessage>(
    service: &P,
    queue: &QueueName,
    messages: &[T],
    options: &SendOptions,
) -> Result<Vec<MessageId>, MessagingError> {
    let mut options_now = traced(service, options);
    loop {
        match send_many_as(service, queue, messages, &options_now).await {
            Err(MessagingError::MessageTooLarge { .. })
                if matches!(options_now, std::borrow::Cow::Owned(_)) =>
            {
                options_now = std::borrow::Cow::Borrowed(options);
            }
            sent => return sent,
        }
    }
}

/// `send_many` with these very options.
async fn send_many_as<P: provide::Provide, T: QueueMessage>(
    service: &P,
    queue: &QueueName,
    messages: &[T],
    options: &SendOptions,
) -> Result<Vec<MessageId>, MessagingError> {
    if options.is_plain() {
        return provide::Provide::send_batch(service, queue, messages).await;
    }
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    provide::Provide::send_batch_with(service, queue, messages, options).await
}

/// `options` with the current trace context's headers. Checked again only
/// when some were added: a context that does not fit (the headers' bound)
/// is left out rather than failing a send that fits without it.
fn traced<'a, P: provide::Provide>(
    service: &P,
    options: &'a SendOptions,
) -> std::borrow::Cow<'a, SendOptions> {
    match crate::trace_context::inject(options) {
        std::borrow::Cow::Owned(traced)
            if traced
                .validate(&provide::Provide::capabilities(service))
                .is_err() =>
        {
            std::borrow::Cow::Borrowed(options)
        }
        traced => traced,
    }
}

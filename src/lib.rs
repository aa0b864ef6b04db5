//! # tasker-messaging
//!
//! One queue abstraction for the Tasker workflow orchestrator: small UUID
//! messages over **PGMQ** (PostgreSQL), **RabbitMQ** or an **in-memory**
//! queue, chosen by configuration at startup, with the same observable
//! behaviour on each.
//!
//! Hold one [`MessageBackend`] and call the [`MessagingService`] methods on
//! it; every call dispatches statically (a `match` over the providers) to
//! the configured provider: no trait objects, no boxed futures, no generic
//! parameter to carry around. Every method's future is `Send`, so it can be
//! spawned, from generic code too.
//!
//! ```
//! use std::time::Duration;
//! use tasker_messaging::{MessageBackend, MessagingConfig, MessagingService, SimpleStepMessage};
//! use uuid::Uuid;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tasker_messaging::MessagingError> {
//! // `MessagingConfig::load()?` reads config/messaging.toml and the environment.
//! let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
//! backend.create_queue("fulfillment_queue").await?;
//! let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
//! backend.send_message("fulfillment_queue", &step).await?;
//! for msg in backend
//!     .receive_messages::<SimpleStepMessage>("fulfillment_queue", 10, Duration::from_secs(30))
//!     .await?
//! {
//!     // ... run the step, then:
//!     backend.delete_message("fulfillment_queue", msg.receipt()).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! Any `Serialize + DeserializeOwned + Send + Sync + 'static` type is a
//! [`QueueMessage`]; [`SimpleStepMessage`] is Tasker's own.
//!
//! ## Where things are
//!
//! The core types are at the root: [`MessageBackend`],
//! [`MessagingService`], [`MessagingConfig`], [`MessagingError`], the
//! message types. The modules group the rest:
//!
//! - [`config`]: the configuration, its sections, [`SecretUrl`], retry
//!   and circuit-breaker settings.
//! - [`providers`]: the concrete providers behind the `MessageBackend`
//!   variants.
//! - [`migration`]: the backend that moves a fleet from one provider to
//!   another.
//! - [`ops`]: moving messages between queues, redriving dead letters.
//! - [`telemetry`]: the spans (through `tracing`) and metrics (through the
//!   `metrics` facade) every call records, and their names.
//!
//! ## Cargo features
//!
//! - `pgmq` (default): the PGMQ provider (sqlx, pgmq).
//! - `rabbitmq` (default): the RabbitMQ provider (amqprs, rustls).
//! - `cli`: the `tasker-messaging` operations binary.
//! - `conformance`: the shared conformance suite, for testing a provider.
//!
//! With `default-features = false, features = ["rabbitmq"]` no sqlx is
//! built, and with `["pgmq"]` no amqprs; the in-memory provider is always
//! there. A configuration naming a provider left out fails
//! [`MessagingConfig::validate`] with a [`MessagingError::Config`].
//!
//! ## The contract
//!
//! The contract is written out in `docs/CONTRACT.md` (in the repository and
//! the published package): numbered rules C1–C42, each naming the
//! conformance cases that check it on every provider (the `conformance`
//! module, behind the cargo feature of that name). In brief:
//! - sends return once the message is durable (C5);
//! - receives are pull-based and lease each message for a visibility timeout
//!   (whole seconds); an unreleased lease expires and the message comes back
//!   with `receive_count` one higher (C8–C11);
//! - a receipt names one lease: a stale one is [`MessagingError::LeaseExpired`]
//!   and never touches a message another consumer holds (C14);
//! - after `max_receive_count` deliveries a message moves to the queue's
//!   dead-letter queue; one of another shape is first released for receivers
//!   that read it (C18, C19);
//! - delivery is at-least-once: duplicates are possible, loss is not (C11,
//!   C13);
//! - transient failures are retried with backoff and counted by a circuit
//!   breaker ([`RetryPolicy`], [`CircuitBreakerConfig`]), the same way for
//!   every server provider.
//!
//! ## Migrating between providers, and operating queues
//!
//! A `[migration]` section makes [`MessageBackend::connect`] return
//! [`MessageBackend::Migrating`] ([`MigratingMessageService`]): sends go to
//! the new provider, receives drain the old one first, receipts reach the
//! provider that issued them. [`move_messages`] moves messages between any
//! two queues at-least-once; [`redrive_dead_letters`] is built on it. The
//! `tasker-messaging` binary (feature `cli`) offers `health`, `stats`,
//! `peek`, `purge`, `dlq redrive`, `migrate` and `config` from a shell.
#![deny(missing_docs)]
// The resilience, receipt and migration helpers serve the server
// providers; a build without one of them leaves some unused. The full
// build (the default features) is linted without this.
#![cfg_attr(
    not(all(feature = "pgmq", feature = "rabbitmq")),
    allow(dead_code, unused_imports)
)]

mod backend;
mod capabilities;
mod codec;
mod compact_json;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod dead_letter;
mod delivery;
mod dispatch;
mod error;
mod lease;
mod message;
pub mod migration;
pub mod ops;
pub mod providers;
mod queue_name;
mod receipt;
mod resilience;
mod router;
mod secret;
mod send_options;
mod service;
mod shutdown;
mod sync;
pub mod telemetry;
mod trace_context;
mod transfer;
mod wait;

pub use backend::MessageBackend;
pub use capabilities::Capabilities;
#[doc(no_inline)]
pub use config::Figment;
pub use config::{
    MessagingConfig, MigrationConfig, PgmqConfig, Provider, QueuesConfig, RabbitMqConfig,
    RabbitMqTlsConfig, MAX_RECEIVE_COUNT,
};
pub use error::{BoxError, MessagingError};
pub use lease::MAX_VISIBILITY_TIMEOUT;
pub use message::{
    MessageId, QueueMessage, QueueStats, QueuedMessage, QueuedMessageMetadata, ReceiptHandle,
    SimpleStepMessage,
};
pub use migration::MigrationStats;
#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
pub use migration::{MigratingMessageService, MigrationSide};
pub use providers::InMemoryMessageService;
#[cfg(feature = "pgmq")]
#[doc(no_inline)]
pub use providers::PgPool;
#[cfg(feature = "pgmq")]
pub use providers::PgmqMessageService;
#[cfg(feature = "rabbitmq")]
pub use providers::RabbitMqMessageService;
pub use queue_name::{validate_queue_name, MAX_QUEUE_NAME_BYTES};
pub use resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitState, RetryPolicy};
pub use router::{MessageRouter, NamespaceQueueRouter};
pub use secret::{InvalidUrl, SecretUrl};
pub use send_options::{
    is_reserved_header, Headers, SendOptions, MAX_HEADERS_BYTES, MAX_HEADER_KEY_BYTES,
    RESERVED_HEADER_PREFIXES,
};
pub use service::MessagingService;
pub use transfer::{
    move_messages, move_messages_with_progress, redrive_dead_letters, MoveError, MoveReport,
    RawMessage,
};
pub use wait::wait_deadline;

/// The README's examples, compiled as doctests so they keep working when copied.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

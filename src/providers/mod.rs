//! The concrete providers, each also a variant of
//! [`MessageBackend`](crate::MessageBackend) and at the crate root. Each
//! holds only what is specific to its server; names, receipts, encoding,
//! leases and dead-letter policy are shared.
//!
//! - [`InMemoryMessageService`]: always built.
//! - `PgmqMessageService`: cargo feature `pgmq`.
//! - `RabbitMqMessageService`: cargo feature `rabbitmq`.
//!
//! Most code holds a `MessageBackend` instead; a concrete provider is for
//! code that knows which one it has (e.g. a PGMQ service sharing the
//! application's [`PgPool`] through `PgmqMessageService::from_pool`).

mod in_memory;
#[cfg(feature = "pgmq")]
mod pgmq;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

pub use self::in_memory::InMemoryMessageService;
#[cfg(feature = "pgmq")]
pub use self::pgmq::PgmqMessageService;
#[cfg(feature = "rabbitmq")]
pub use self::rabbitmq::RabbitMqMessageService;
/// The sqlx pool [`PgmqMessageService::from_pool`] takes, re-exported so a
/// caller needs no sqlx dependency of its own (cargo feature `pgmq`).
#[cfg(feature = "pgmq")]
pub use sqlx::PgPool;

use crate::{dead_letter::DeadLetterPolicy, QueuesConfig};

impl From<&QueuesConfig> for DeadLetterPolicy {
    fn from(queues: &QueuesConfig) -> Self {
        Self {
            max_receive_count: queues.max_receive_count,
            suffix: queues.dead_letter_queue_suffix.clone(),
        }
    }
}

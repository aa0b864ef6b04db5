//! `MigrationSide`: one side of a migration, a closed enum of the server
//! providers (in-memory queues cannot be migrated), dispatched statically.

use std::time::Duration;

use enum_dispatch::enum_dispatch;

// The generated `impl Provide for MigrationSide` names these types.
use crate::{
    providers::{PgmqMessageService, RabbitMqMessageService},
    queue_name::QueueName,
    service::provide::{Provide, Shutdown, Teardown},
    Capabilities, CircuitBreaker, MessageId, MessagingConfig, MessagingError, Provider,
    QueueMessage, QueueStats, QueuedMessage, QueuesConfig, ReceiptHandle, SendOptions,
};

/// The source or the target of a
/// [`MessageBackend::Migrating`](crate::MessageBackend::Migrating): a plain
/// provider, usable on its own through
/// [`MessagingService`](crate::MessagingService) (to look at one side).
#[non_exhaustive]
#[enum_dispatch(Provide)]
#[derive(Debug, Clone)]
pub enum MigrationSide {
    /// PGMQ on PostgreSQL.
    Pgmq(PgmqMessageService),
    /// RabbitMQ.
    RabbitMq(RabbitMqMessageService),
}

impl MigrationSide {
    /// Connects `provider` with the sections of `config`.
    pub(crate) async fn connect(
        config: &MessagingConfig,
        provider: Provider,
    ) -> Result<Self, MessagingError> {
        match provider {
            Provider::Pgmq => Ok(PgmqMessageService::connect(config).await?.into()),
            Provider::RabbitMq => Ok(RabbitMqMessageService::connect(config).await?.into()),
            Provider::InMemory => Err(MessagingError::Config(
                "migration.to cannot involve the in_memory provider".into(),
            )),
        }
    }
}

//! `MigrationSide`: one side of a migration, a closed enum of the server
//! providers (in-memory queues cannot be migrated), dispatched statically.

use crate::{
    dispatch::dispatch_provide,
    providers::{PgmqMessageService, RabbitMqMessageService},
    MessagingConfig, MessagingError, Provider,
};

/// The source or the target of a
/// [`MessageBackend::Migrating`](crate::MessageBackend::Migrating): a plain
/// provider, usable on its own through
/// [`MessagingService`](crate::MessagingService) (to look at one side).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum MigrationSide {
    /// PGMQ on PostgreSQL.
    Pgmq(PgmqMessageService),
    /// RabbitMQ.
    RabbitMq(RabbitMqMessageService),
}

dispatch_provide!(MigrationSide {
    Pgmq(PgmqMessageService),
    RabbitMq(RabbitMqMessageService),
});

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

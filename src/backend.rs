//! `MessageBackend`: the closed set of providers, picked by configuration.

#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
use crate::migration::MigratingMessageService;
#[cfg(feature = "pgmq")]
use crate::providers::PgmqMessageService;
#[cfg(feature = "rabbitmq")]
use crate::providers::RabbitMqMessageService;
use crate::{
    dispatch::dispatch_provide, providers::InMemoryMessageService, MessagingConfig, MessagingError,
    Provider,
};

/// The value an application holds: one of the providers, dispatched statically.
///
/// Every [`MessagingService`](crate::MessagingService) method on it checks
/// the queue name once, then is a `match` over the variants, with no vtable
/// and no boxed future. Share it as `Arc<MessageBackend>` (or clone it: clones
/// share the connection); all methods take `&self`.
///
/// The variants present are those of the enabled cargo features: `Pgmq`
/// with `pgmq`, `RabbitMq` with `rabbitmq`, `Migrating` with both;
/// `InMemory` always.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum MessageBackend {
    /// PGMQ on PostgreSQL (cargo feature `pgmq`).
    #[cfg(feature = "pgmq")]
    Pgmq(PgmqMessageService),
    /// RabbitMQ (durable quorum queues, publisher confirms; cargo feature
    /// `rabbitmq`).
    #[cfg(feature = "rabbitmq")]
    RabbitMq(RabbitMqMessageService),
    /// The in-process queue.
    InMemory(InMemoryMessageService),
    /// Two providers while a fleet migrates from one to the other
    /// (`[migration]` in the configuration): sends go to the target,
    /// receives take from the source first. Cargo features `pgmq` and
    /// `rabbitmq`.
    #[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
    Migrating(MigratingMessageService),
}

dispatch_provide!(MessageBackend {
    #[cfg(feature = "pgmq")]
    Pgmq(PgmqMessageService),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(RabbitMqMessageService),
    InMemory(InMemoryMessageService),
    #[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
    Migrating(MigratingMessageService),
});

impl MessageBackend {
    /// Builds the provider `config.provider` names, connecting (and, for PGMQ,
    /// installing the extension's SQL) as needed; with a `[migration]`
    /// section, a [`Migrating`](Self::Migrating) backend over both providers.
    pub async fn connect(config: &MessagingConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        #[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
        if config.migration.is_some() {
            return Ok(MigratingMessageService::connect(config).await?.into());
        }
        Ok(match config.provider {
            #[cfg(feature = "pgmq")]
            Provider::Pgmq => PgmqMessageService::connect(config).await?.into(),
            Provider::InMemory => InMemoryMessageService::new(config.queues.clone())?.into(),
            #[cfg(feature = "rabbitmq")]
            Provider::RabbitMq => RabbitMqMessageService::connect(config).await?.into(),
            // `validate` refuses a provider whose feature is off.
            #[allow(unreachable_patterns)]
            other => return Err(crate::config::disabled(other)),
        })
    }

    /// Loads the configuration ([`MessagingConfig::load`]) and connects.
    pub async fn from_env() -> Result<Self, MessagingError> {
        Self::connect(&MessagingConfig::load()?).await
    }

    /// The two sides of a migrating backend; `None` for a plain one.
    #[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
    pub fn migration(&self) -> Option<&MigratingMessageService> {
        match self {
            Self::Migrating(migrating) => Some(migrating),
            _ => None,
        }
    }
}

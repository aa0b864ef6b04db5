//! The concrete providers. Each holds only what is specific to its server;
//! names, receipts, encoding, leases and dead-letter policy are shared.

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

use crate::{dead_letter::DeadLetterPolicy, QueuesConfig};

impl From<&QueuesConfig> for DeadLetterPolicy {
    fn from(queues: &QueuesConfig) -> Self {
        Self {
            max_receive_count: queues.max_receive_count,
            suffix: queues.dead_letter_queue_suffix.clone(),
        }
    }
}

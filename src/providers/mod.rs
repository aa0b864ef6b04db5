//! The concrete providers. Each holds only what is specific to its server;
//! names, receipts, encoding, leases and dead-letter policy are shared.

mod in_memory;
mod pgmq;
mod rabbitmq;

pub use self::in_memory::InMemoryMessageService;
pub use self::pgmq::PgmqMessageService;
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

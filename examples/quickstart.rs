//! Connect with the configured provider, then send, receive and delete one
//! step message and print the queue's stats.
//!
//! ```sh
//! cargo run --example quickstart                                # in-memory
//! TASKER_MESSAGING_PROVIDER=pgmq cargo run --example quickstart # PGMQ
//! ```

use std::time::Duration;

use tasker_messaging::{
    MessageBackend, MessageRouter, MessagingConfig, MessagingError, MessagingService,
    NamespaceQueueRouter, SimpleStepMessage,
};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), MessagingError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let config = MessagingConfig::load()?;
    let backend = MessageBackend::connect(&config).await?;
    println!("provider: {}", backend.provider());

    let router = NamespaceQueueRouter::new(&config.queues.namespace_pattern);
    let queue = router.route_to_queue("quickstart", "SimpleStepMessage");
    backend.create_queue(&queue).await?;

    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    let id = backend.send_message(&queue, &step).await?;
    println!("sent step {} to {queue} as message {id}", step.step_uuid);

    let received = backend
        .receive_messages::<SimpleStepMessage>(&queue, 1, Duration::from_secs(30))
        .await?;
    for message in &received {
        println!(
            "received step {} (receive_count {}), lease ends {}",
            message.message.step_uuid,
            message.metadata.receive_count,
            message.metadata.visibility_timeout_expires
        );
        backend.delete_message(&queue, message.receipt()).await?;
        println!("deleted message {}", message.metadata.message_id);
    }

    let stats = backend.get_queue_stats(&queue).await?;
    println!(
        "stats for {}: ready {}, in flight {:?}, dead letters {:?}",
        stats.queue_name, stats.message_count, stats.in_flight_count, stats.dead_letter_count
    );
    backend.delete_queue(&queue).await?;
    Ok(())
}

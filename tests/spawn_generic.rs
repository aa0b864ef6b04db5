//! Generic code over `S: MessagingService` can `tokio::spawn` the trait's
//! futures: every method returns `impl Future + Send`, with no boxing. If a
//! method's future stopped being `Send`, `spawn_drain` would stop compiling.
//!
//! Run on the in-memory provider (as a concrete type and through
//! `MessageBackend`) and on the live PGMQ and RabbitMQ servers.

mod common;

use std::{sync::Arc, time::Duration};

use tasker_messaging::{
    InMemoryMessageService, MessageBackend, MessagingError, MessagingService, Provider,
    QueuesConfig, SimpleStepMessage,
};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

/// Sends `count` steps, then drains the queue from a spawned task: receive
/// (waiting for the first), delete each, until a receive comes back empty.
/// Returns the steps received, in order.
fn spawn_drain<S: MessagingService + Send + Sync + 'static>(
    service: Arc<S>,
    queue: String,
) -> tokio::task::JoinHandle<Result<Vec<SimpleStepMessage>, MessagingError>> {
    tokio::spawn(async move {
        let mut drained = Vec::new();
        loop {
            let got = service
                .receive_messages_wait::<SimpleStepMessage>(
                    &queue,
                    10,
                    LEASE,
                    Duration::from_millis(200),
                )
                .await?;
            if got.is_empty() {
                break;
            }
            let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
            for outcome in service.delete_messages(&queue, &receipts).await? {
                outcome?;
            }
            drained.extend(got.into_iter().map(|m| m.message));
        }
        let stats = service.get_queue_stats(&queue).await?;
        assert_eq!(stats.message_count, 0);
        Ok(drained)
    })
}

/// Creates a queue on `service`, sends three steps from a spawned task, and
/// drains them with `spawn_drain`.
async fn round_trip<S: MessagingService + Send + Sync + 'static>(service: Arc<S>, case: &str) {
    let queue = format!("spawn_{case}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    service.create_queue(&queue).await.unwrap();
    let sent: Vec<_> = (0..3)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    let sender = {
        let (service, queue, sent) = (service.clone(), queue.clone(), sent.clone());
        tokio::spawn(async move { service.send_batch(&queue, &sent).await })
    };
    assert_eq!(sender.await.unwrap().unwrap().len(), 3);
    let drained = spawn_drain(service.clone(), queue.clone())
        .await
        .expect("the spawned drain does not panic")
        .expect("the drain succeeds");
    assert_eq!(drained, sent);
    service.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn a_concrete_provider_spawns_from_generic_code() {
    let service = InMemoryMessageService::new(QueuesConfig::default()).unwrap();
    round_trip(Arc::new(service), "concrete").await;
}

#[tokio::test]
async fn an_in_memory_backend_spawns_from_generic_code() {
    round_trip(Arc::new(common::backend(Provider::InMemory).await), "mem").await;
}

#[tokio::test]
async fn a_pgmq_backend_spawns_from_generic_code() {
    let backend: MessageBackend = common::backend(Provider::Pgmq).await;
    round_trip(Arc::new(backend), "pgmq").await;
}

#[tokio::test]
async fn a_rabbitmq_backend_spawns_from_generic_code() {
    let backend: MessageBackend = common::backend(Provider::RabbitMq).await;
    round_trip(Arc::new(backend), "rabbit").await;
}

//! A user's own test double: `impl MessagingService` for a mock, written with
//! `async fn` and the public constructors only (`QueueStats::new`,
//! `Capabilities::new`, `QueuesConfig::default`), then driven by generic
//! application code, spawned included.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::Utc;
use tasker_messaging::{
    Capabilities, CircuitBreaker, MessageId, MessagingError, MessagingService, Provider,
    QueueMessage, QueueStats, QueuedMessage, QueuedMessageMetadata, QueuesConfig, ReceiptHandle,
    SendOptions, SimpleStepMessage,
};
use uuid::Uuid;

/// One queue of JSON bodies; every receive hands the front ones out and
/// forgets them (a mock, not a lease model).
#[derive(Default)]
struct Mock {
    bodies: Mutex<VecDeque<(MessageId, String)>>,
    next_id: AtomicU64,
    deleted: Mutex<Vec<ReceiptHandle>>,
    closed: AtomicBool,
    queues: QueuesConfig,
}

fn mock_error(message: impl Into<String>) -> MessagingError {
    MessagingError::InvalidArgument(message.into())
}

impl MessagingService for Mock {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        Ok(!self.closed.load(Ordering::SeqCst))
    }

    async fn create_queue(&self, _queue: &str) -> Result<(), MessagingError> {
        Ok(())
    }

    async fn send_message<T: QueueMessage>(
        &self,
        _queue: &str,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let body = serde_json::to_string(message).map_err(MessagingError::Serialization)?;
        let id = MessageId::new(self.next_id.fetch_add(1, Ordering::SeqCst).to_string());
        self.bodies.lock().unwrap().push_back((id.clone(), body));
        Ok(id)
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        let mut ids = Vec::new();
        for message in messages {
            ids.push(self.send_message(queue, message).await?);
        }
        Ok(ids)
    }

    // This mock keeps no delays or headers: it sends as a plain send does.
    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &str,
        message: &T,
        _options: &SendOptions,
    ) -> Result<MessageId, MessagingError> {
        self.send_message(queue, message).await
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &str,
        messages: &[T],
        _options: &SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        self.send_batch(queue, messages).await
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        _queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let mut bodies = self.bodies.lock().unwrap();
        let take = max_messages.min(bodies.len());
        bodies
            .drain(..take)
            .map(|(id, body)| {
                let lease = chrono::Duration::from_std(visibility_timeout)
                    .map_err(|e| mock_error(e.to_string()))?;
                Ok(QueuedMessage {
                    metadata: QueuedMessageMetadata {
                        receipt_handle: format!("mock:{id}").parse().unwrap(),
                        message_id: id,
                        enqueued_at: Utc::now(),
                        receive_count: 1,
                        visibility_timeout_expires: Utc::now() + lease,
                        headers: Default::default(),
                    },
                    message: serde_json::from_str(&body).map_err(MessagingError::Serialization)?,
                })
            })
            .collect()
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &str,
        max_messages: usize,
        visibility_timeout: Duration,
        _wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        self.receive_messages(queue, max_messages, visibility_timeout)
            .await
    }

    async fn delete_message(
        &self,
        _queue: &str,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        self.deleted.lock().unwrap().push(receipt.clone());
        Ok(())
    }

    async fn delete_messages(
        &self,
        queue: &str,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        let mut outcomes = Vec::new();
        for receipt in receipts {
            outcomes.push(self.delete_message(queue, receipt).await);
        }
        Ok(outcomes)
    }

    async fn change_message_visibility(
        &self,
        _queue: &str,
        _receipt: &ReceiptHandle,
        _visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        Err(mock_error("the mock does not release"))
    }

    async fn get_queue_stats(&self, queue: &str) -> Result<QueueStats, MessagingError> {
        let ready = self.bodies.lock().unwrap().len() as u64;
        Ok(QueueStats::new(queue, ready).with_in_flight_count(0))
    }

    async fn purge_queue(&self, _queue: &str) -> Result<u64, MessagingError> {
        let mut bodies = self.bodies.lock().unwrap();
        let purged = bodies.len() as u64;
        bodies.clear();
        Ok(purged)
    }

    async fn delete_queue(&self, _queue: &str) -> Result<(), MessagingError> {
        Ok(())
    }

    fn provider(&self) -> Provider {
        Provider::InMemory
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_exact_in_flight(true)
    }

    fn queues_config(&self) -> &QueuesConfig {
        &self.queues
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        None
    }

    async fn close(&self) -> Result<(), MessagingError> {
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Application code under test: runs every step waiting on `queue` and
/// deletes it, in a task of its own. Generic, so the mock stands in.
async fn run_ready_steps<S: MessagingService + Send + Sync + 'static>(
    service: Arc<S>,
    queue: &'static str,
) -> Result<Vec<Uuid>, MessagingError> {
    tokio::spawn(async move {
        let lease = service.queues_config().default_visibility_timeout();
        let mut ran = Vec::new();
        for step in service
            .receive_messages::<SimpleStepMessage>(queue, 10, lease)
            .await?
        {
            ran.push(step.message.step_uuid);
            service.delete_message(queue, step.receipt()).await?;
        }
        Ok(ran)
    })
    .await
    .expect("the worker task does not panic")
}

#[tokio::test]
async fn a_mock_service_drives_generic_code() {
    let mock = Arc::new(Mock::default());
    let steps: Vec<_> = (0..3)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    mock.send_batch("steps", &steps).await.unwrap();
    assert_eq!(
        mock.get_queue_stats("steps").await.unwrap(),
        QueueStats::new("steps", 3).with_in_flight_count(0)
    );

    let ran = run_ready_steps(mock.clone(), "steps").await.unwrap();

    assert_eq!(ran, steps.iter().map(|s| s.step_uuid).collect::<Vec<_>>());
    assert_eq!(mock.deleted.lock().unwrap().len(), 3);
    assert_eq!(
        mock.get_queue_stats("steps").await.unwrap().message_count,
        0
    );
    let caps = mock.capabilities();
    assert!(caps.atomic_batch && caps.exact_in_flight && !caps.durable);
    assert_eq!(Capabilities::new(), Capabilities::default());
    mock.close().await.unwrap();
    assert!(mock.is_closed() && !mock.health_check().await.unwrap());
}

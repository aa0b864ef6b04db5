//! Waits of any length, on every provider: `Duration::MAX` waits until a
//! message comes, and a delete ends a wait on the deleted queue.

mod common;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingError, MessagingService, Provider, SimpleStepMessage,
};

const LEASE: Duration = Duration::from_secs(30);
/// How long a wait's future must sit unpolled to count as parked.
const PARKED: Duration = Duration::from_millis(300);

/// A backend whose fallback poll is longer than any test here, so only an
/// arrival signal can end a wait in time.
async fn without_poll(provider: Provider) -> MessageBackend {
    let mut config = common::config(provider);
    config.queues.wait_poll_interval_ms = 3_600_000;
    MessageBackend::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("{provider:?} backend: {e}"))
}

type Waited = Result<Vec<tasker_messaging::QueuedMessage<SimpleStepMessage>>, MessagingError>;

/// A wait running in a task of its own, with a record of when its future
/// was last polled: evidence that it is parked, not yet to start.
struct Waiting {
    task: tokio::task::JoinHandle<Waited>,
    last_poll: Arc<Mutex<Option<Instant>>>,
}

impl Waiting {
    /// Returns once the wait has been polled and then left alone for
    /// `quiet`, still pending: it checked the queue, found it empty and is
    /// parked on its signal (a receive in flight is polled as its I/O
    /// completes). Fails if that does not happen within 10 s.
    async fn until_parked(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(!self.task.is_finished(), "an empty queue ended the wait");
            let last = *self.last_poll.lock().expect("poll record");
            if last.is_some_and(|at| at.elapsed() >= quiet) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the wait was not parked within 10 s (last polled {:?} ago)",
                last.map(|at| at.elapsed())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn wait_forever(backend: &MessageBackend, queue: &str) -> Waiting {
    let (backend, queue) = (backend.clone(), queue.to_owned());
    let last_poll = Arc::new(Mutex::new(None));
    let record = Arc::clone(&last_poll);
    let mut wait = Box::pin(async move {
        backend
            .receive_messages_wait::<SimpleStepMessage>(&queue, 1, LEASE, Duration::MAX)
            .await
    });
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        let polled = wait.as_mut().poll(cx);
        *record.lock().expect("poll record") = Some(Instant::now());
        polled
    }));
    Waiting { task, last_poll }
}

async fn duration_max_wait_returns_the_message_sent(backend: MessageBackend) {
    let queue = unique_queue("wait_max");
    backend.create_queue(&queue).await.unwrap();
    let waiting = wait_forever(&backend, &queue);
    waiting.until_parked(PARKED).await;
    let sent = step();
    backend.send_message(&queue, &sent).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting.task)
        .await
        .expect("the send woke the wait")
        .expect("the wait did not panic")
        .expect("the wait succeeded");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, sent);
    backend.delete_queue(&queue).await.unwrap();
}

async fn huge_waits_do_not_panic(backend: MessageBackend) {
    let queue = unique_queue("wait_huge");
    backend.create_queue(&queue).await.unwrap();
    for wait in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(i64::MAX as u64),
        Duration::from_secs(u64::MAX / 1_000),
    ] {
        let sent = step();
        backend.send_message(&queue, &sent).await.unwrap();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            backend.receive_messages_wait::<SimpleStepMessage>(&queue, 1, LEASE, wait),
        )
        .await
        .unwrap_or_else(|_| panic!("{wait:?}: the ready message was not received"))
        .unwrap_or_else(|e| panic!("{wait:?}: {e}"));
        assert_eq!(got.len(), 1, "{wait:?}");
        assert_eq!(got[0].message, sent, "{wait:?}");
        backend
            .delete_message(&queue, got[0].receipt())
            .await
            .unwrap();
    }
    // An invalid name fails at once, however long the wait.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        backend.receive_messages_wait::<SimpleStepMessage>("Not-A-Queue", 1, LEASE, Duration::MAX),
    )
    .await
    .expect("no wait on an invalid name")
    .unwrap_err();
    assert!(
        matches!(err, MessagingError::InvalidQueueName { .. }),
        "{err:?}"
    );
    backend.delete_queue(&queue).await.unwrap();
}

async fn delete_ends_a_wait_on_the_queue(backend: MessageBackend) {
    let queue = unique_queue("wait_deleted");
    backend.create_queue(&queue).await.unwrap();
    let waiting = wait_forever(&backend, &queue);
    waiting.until_parked(PARKED).await;
    backend.delete_queue(&queue).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting.task)
        .await
        .expect("the delete ended the wait")
        .expect("the wait did not panic");
    assert!(
        matches!(ended, Err(MessagingError::QueueNotFound { .. })),
        "{ended:?}"
    );
}

macro_rules! for_each_provider {
    ($($module:ident => $provider:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duration_max_wait_returns_the_message_sent() {
                super::duration_max_wait_returns_the_message_sent(without_poll($provider).await)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duration_max_wait_with_the_default_poll() {
                super::duration_max_wait_returns_the_message_sent(
                    common::backend($provider).await,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn huge_waits_do_not_panic() {
                super::huge_waits_do_not_panic(common::backend($provider).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete_ends_a_wait_on_the_queue() {
                super::delete_ends_a_wait_on_the_queue(without_poll($provider).await).await;
            }
        }
    )*};
}

for_each_provider! {
    in_memory => Provider::InMemory,
    pgmq => Provider::Pgmq,
    rabbitmq => Provider::RabbitMq,
}

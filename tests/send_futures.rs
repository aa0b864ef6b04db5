//! Compile-time check: every `MessagingService` future through `MessageBackend`
//! is `Send`, so an orchestrator can `tokio::spawn` with an `Arc<MessageBackend>`.
//! If a provider holds a non-`Send` value across an `.await`, this file stops compiling.

use std::{future::Future, sync::Arc, time::Duration};

use tasker_messaging::{MessageBackend, MessagingService, ReceiptHandle, SimpleStepMessage};

fn assert_send<F: Future + Send>(future: F) -> F {
    future
}

#[allow(dead_code)]
fn every_backend_future_is_send(backend: Arc<MessageBackend>) {
    let receipt: ReceiptHandle = "r".parse().unwrap();
    let step = SimpleStepMessage::new(uuid::Uuid::nil(), uuid::Uuid::nil());
    let lease = Duration::from_secs(1);
    let b = &*backend;
    drop(assert_send(b.health_check()));
    drop(assert_send(b.create_queue("q")));
    drop(assert_send(b.send_message("q", &step)));
    drop(assert_send(b.send_batch("q", std::slice::from_ref(&step))));
    let options = tasker_messaging::SendOptions::new().header("k", "v");
    drop(assert_send(b.send_message_with("q", &step, &options)));
    drop(assert_send(b.send_batch_with(
        "q",
        std::slice::from_ref(&step),
        &options,
    )));
    drop(assert_send(
        b.receive_messages::<SimpleStepMessage>("q", 1, lease),
    ));
    drop(assert_send(b.delete_message("q", &receipt)));
    drop(assert_send(
        b.delete_messages("q", std::slice::from_ref(&receipt)),
    ));
    drop(assert_send(
        b.change_message_visibility("q", &receipt, lease),
    ));
    drop(assert_send(b.get_queue_stats("q")));
    drop(assert_send(b.purge_queue("q")));
    drop(assert_send(b.close()));
    drop(assert_send(b.delete_queue("q")));
    drop(assert_send(MessageBackend::connect(&Default::default())));
}

#[tokio::test]
async fn a_spawned_task_can_own_the_backend() {
    let backend = Arc::new(MessageBackend::connect(&Default::default()).await.unwrap());
    backend.create_queue("spawned").await.unwrap();
    let worker = Arc::clone(&backend);
    let sent = tokio::spawn(async move {
        let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        worker.send_message("spawned", &step).await.map(|_| step)
    })
    .await
    .unwrap()
    .unwrap();
    let got = backend
        .receive_messages::<SimpleStepMessage>("spawned", 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].message, sent);
}

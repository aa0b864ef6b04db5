//! Sending: round trips, batches, size limits.

use super::*;

/// C5, C9: a sent message comes back intact with its delivery metadata.
pub async fn send_then_receive_round_trips_with_metadata(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "round_trip").await;
    let message = step();
    let before = chrono::Utc::now();
    let id = backend.send_message(&queue, &message).await.expect("send");
    let got = receive_one(backend, &queue, Duration::from_secs(30)).await;
    assert_eq!(got.message, message);
    assert_eq!(got.metadata.message_id, id);
    assert_eq!(got.metadata.receive_count, 1);
    let skew = chrono::Duration::seconds(2);
    assert!(
        got.metadata.enqueued_at >= before - skew,
        "enqueued_at too early"
    );
    assert!(
        got.metadata.enqueued_at <= chrono::Utc::now() + skew,
        "enqueued_at in the future"
    );
    let expires_in = got.metadata.visibility_timeout_expires - chrono::Utc::now();
    assert!(
        (chrono::Duration::seconds(25)..=chrono::Duration::seconds(31)).contains(&expires_in),
        "lease ends in {expires_in}, expected about 30 s"
    );
    backend
        .delete_message(&queue, got.receipt())
        .await
        .expect("delete");
    cleanup(backend, &queue).await;
}

/// C6: a batch keeps order with one id per message; an empty batch does no I/O.
pub async fn send_batch_keeps_order_and_empty_batch_does_no_io(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "batch_order").await;
    let messages: Vec<_> = (0..10).map(|_| step()).collect();
    let ids = backend
        .send_batch(&queue, &messages)
        .await
        .expect("send_batch");
    assert_eq!(ids.len(), messages.len());
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "ids must be distinct"
    );
    let got = receive_n(backend, &queue, 10, LONG_LEASE, Duration::from_secs(5)).await;
    let got_messages: Vec<_> = got.iter().map(|m| m.message.clone()).collect();
    assert_eq!(got_messages, messages, "batch order");
    let got_ids: Vec<_> = got.iter().map(|m| m.metadata.message_id.clone()).collect();
    assert_eq!(got_ids, ids, "ids in send order");

    let never_created = unique_queue("no_io");
    let empty = backend
        .send_batch::<SimpleStepMessage>(&never_created, &[])
        .await
        .expect("an empty batch must not touch the (missing) queue");
    assert!(empty.is_empty());
    cleanup(backend, &queue).await;
}

/// C7: an oversized message is `MessageTooLarge` and nothing is sent.
pub async fn oversized_message_is_rejected_and_nothing_sent(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "too_large").await;
    let max = backend.queues_config().max_message_bytes;
    let huge = NotAStep {
        garbage: "x".repeat(max),
    };
    let too_large = |e: &MessagingError| matches!(e, MessagingError::MessageTooLarge { .. });
    assert_err(backend.send_message(&queue, &huge).await, too_large, "send");
    let small = NotAStep {
        garbage: "ok".into(),
    };
    assert_err(
        backend
            .send_batch(&queue, &[small.clone(), huge, small])
            .await,
        too_large,
        "send_batch with one oversized message",
    );
    assert_empty_for(backend, &queue, Duration::from_millis(300)).await;
    assert_eq!(ready_count(backend, &queue).await, 0);
    cleanup(backend, &queue).await;
}

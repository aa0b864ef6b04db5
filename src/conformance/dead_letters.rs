//! Dead letters: after max_receive_count, and bodies of another shape.

use super::*;

/// C18, C20, C21: after `max_receive_count` deliveries a message moves to the
/// dead-letter queue at its next delivery; nothing is lost and other messages
/// keep flowing. The dead-letter queue is an ordinary queue.
pub async fn max_receive_count_moves_message_to_dead_letter_queue(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "max_receives").await;
    let dlq = dead_letter_queue(backend, &queue);
    let max = backend.queues_config().max_receive_count;
    let doomed = step();
    send(backend, &queue, &doomed).await;
    for attempt in 1..=max {
        let got = receive_one(backend, &queue, LONG_LEASE).await;
        assert_eq!(got.message, doomed);
        assert_eq!(got.metadata.receive_count, attempt);
        backend
            .change_message_visibility(&queue, got.receipt(), Duration::ZERO)
            .await
            .expect("release");
    }
    let healthy = step();
    send(backend, &queue, &healthy).await;
    let next = receive_n(backend, &queue, 2, LONG_LEASE, Duration::from_secs(3)).await;
    let next: Vec<_> = next.into_iter().map(|m| m.message).collect();
    assert_eq!(
        next,
        vec![healthy],
        "the exhausted message must not be returned"
    );

    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.dead_letter_count, Some(1));
    let dead = receive_one(backend, &dlq, LONG_LEASE).await;
    assert_eq!(dead.message, doomed, "the dead letter keeps its body");
    backend
        .delete_message(&dlq, dead.receipt())
        .await
        .expect("delete from dead-letter queue");
    send(backend, &dlq, &step()).await;
    assert_eq!(
        backend
            .purge_queue(&dlq)
            .await
            .expect("purge dead-letter queue"),
        1
    );
    cleanup(backend, &queue).await;
}

/// C18: the crash path: a message whose every lease runs out (its consumers
/// die, no release) moves to the dead-letter queue at the delivery after
/// its `max_receive_count`-th, just as one released each time does.
pub async fn expired_last_lease_moves_message_to_dead_letter_queue(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "expired_last_lease").await;
    let dlq = dead_letter_queue(backend, &queue);
    let max = backend.queues_config().max_receive_count;
    let doomed = step();
    send(backend, &queue, &doomed).await;
    for attempt in 1..=max {
        // Each consumer crashes holding the message: its lease runs out.
        let got = receive_one(backend, &queue, LEASE).await;
        assert_eq!(got.message, doomed);
        assert_eq!(got.metadata.receive_count, attempt);
        drop(got);
        tokio::time::sleep(LEASE + SLACK).await;
    }
    let next = receive_n(backend, &queue, 1, LONG_LEASE, Duration::from_secs(2)).await;
    assert!(
        next.is_empty(),
        "delivered after {max} expired leases: {:?}",
        next.first().map(|m| (&m.message, m.metadata.receive_count))
    );
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.dead_letter_count, Some(1));
    let dead = receive_one(backend, &dlq, LONG_LEASE).await;
    assert_eq!(dead.message, doomed, "the dead letter keeps its body");
    cleanup(backend, &queue).await;
}

/// C19: a body of another shape is released at once for receivers that read
/// it (an "old" worker's receive skips a "new" message, and the "new" worker
/// gets every one), each such receive counts, and after `max_receive_count`
/// receives it moves to the dead-letter queue intact.
pub async fn message_of_another_shape_is_released_then_dead_lettered(backend: &MessageBackend) {
    let max = backend.queues_config().max_receive_count;
    assert!(max >= 3, "this case needs max_receive_count >= 3");
    let queue = fresh_queue(backend, "other_shape").await;
    let dlq = dead_letter_queue(backend, &queue);
    let newer: Vec<NotAStep> = (0..5)
        .map(|i| NotAStep {
            garbage: format!("a newer message {i}"),
        })
        .collect();
    backend
        .send_batch(&queue, &newer)
        .await
        .expect("send the newer messages");
    let good = step();
    send(backend, &queue, &good).await;
    // The old worker: its step, and none of the newer messages.
    let got = receive(backend, &queue, 10, LONG_LEASE).await;
    let got: Vec<_> = got.into_iter().map(|m| m.message).collect();
    assert_eq!(got, vec![good], "the newer messages are skipped");
    // The new worker gets every one at once, each received twice now.
    let read: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(&queue, 10, LONG_LEASE)
        .await
        .expect("the new worker's receive");
    let bodies: Vec<_> = read.iter().map(|m| m.message.clone()).collect();
    assert_eq!(bodies, newer, "the new worker gets every newer message");
    assert!(read.iter().all(|m| m.metadata.receive_count == 2));
    for message in &read[1..] {
        backend
            .delete_message(&queue, message.receipt())
            .await
            .expect("delete");
    }
    // One left to old workers alone reaches the dead-letter queue, intact.
    backend
        .change_message_visibility(&queue, read[0].receipt(), Duration::ZERO)
        .await
        .expect("release");
    for _ in 2..max {
        assert!(receive(backend, &queue, 10, LONG_LEASE).await.is_empty());
    }
    let dead: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(&dlq, 10, LONG_LEASE)
        .await
        .expect("receive dead letters");
    let dead: Vec<_> = dead.into_iter().map(|m| m.message).collect();
    assert_eq!(dead, vec![newer[0].clone()], "moved after {max} receives");
    assert_empty_for(backend, &queue, Duration::from_millis(200)).await;
    cleanup(backend, &queue).await;
}

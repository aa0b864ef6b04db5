//! Queues and names: validation before I/O, idempotent create and delete, missing queues.

use super::*;

/// C1: bad names are `InvalidQueueName` on every operation, before any I/O.
pub async fn queue_names_are_validated_before_io(backend: &MessageBackend) {
    let too_long_with_dlq = "a".repeat(44);
    let receipt: ReceiptHandle = "x".parse().expect("infallible");
    let bad_names = [
        "",
        "Upper",
        "dash-name",
        "with space",
        "quote'",
        "semi;colon",
        "drop;--",
        "ünïcode",
        "9starts_with_digit",
        &"b".repeat(48),
    ];
    for name in bad_names {
        let b = backend;
        assert_err(b.create_queue(name).await, is_invalid_name, name);
        assert_err(b.send_message(name, &step()).await, is_invalid_name, name);
        assert_err(
            b.send_batch::<SimpleStepMessage>(name, &[]).await,
            is_invalid_name,
            name,
        );
        assert_err(
            b.receive_messages::<SimpleStepMessage>(name, 1, LEASE)
                .await,
            is_invalid_name,
            name,
        );
        assert_err(
            b.delete_message(name, &receipt).await,
            is_invalid_name,
            name,
        );
        assert_err(
            b.change_message_visibility(name, &receipt, LEASE).await,
            is_invalid_name,
            name,
        );
        assert_err(b.get_queue_stats(name).await, is_invalid_name, name);
        assert_err(b.purge_queue(name).await, is_invalid_name, name);
        assert_err(b.delete_queue(name).await, is_invalid_name, name);
    }
    assert_err(
        backend.create_queue(&too_long_with_dlq).await,
        is_invalid_name,
        "no room for the dead-letter suffix",
    );
}

/// C1, C20: `create_queue` refuses a name ending in the dead-letter suffix
/// (nothing is created), so no work queue can pose as another's dead-letter
/// queue; once `q` exists, its dead-letter queue takes every other
/// operation like any queue, and goes with `q`.
pub async fn create_queue_refuses_names_ending_in_the_dead_letter_suffix(backend: &MessageBackend) {
    let suffix = backend.queues_config().dead_letter_queue_suffix.clone();
    let queue = unique_queue("suffixed");
    let dlq = dead_letter_queue(backend, &queue);
    for name in [dlq.clone(), format!("{dlq}{suffix}"), suffix.clone()] {
        assert_err(backend.create_queue(&name).await, is_invalid_name, &name);
        assert_err(
            backend.get_queue_stats(&name).await,
            is_not_found,
            "a refused name creates nothing",
        );
    }
    backend.create_queue(&queue).await.expect("create_queue");
    let message = step();
    send(backend, &dlq, &message).await;
    let got = receive_one(backend, &dlq, LONG_LEASE).await;
    assert_eq!(got.message, message);
    backend
        .delete_message(&dlq, got.receipt())
        .await
        .expect("delete on the dead-letter queue");
    send(backend, &dlq, &step()).await;
    assert_eq!(await_ready_count(backend, &dlq, 1).await, 1);
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.dead_letter_count, Some(1));
    assert_eq!(backend.purge_queue(&dlq).await.expect("purge"), 1);
    cleanup(backend, &queue).await;
    assert_err(
        backend.get_queue_stats(&dlq).await,
        is_not_found,
        "the dead-letter queue goes with its queue",
    );
}

/// C2, C20, C21: `create_queue` is idempotent and creates the dead-letter
/// queue.
pub async fn create_queue_is_idempotent_and_creates_dead_letter_queue(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "create_idempotent").await;
    send(backend, &queue, &step()).await;
    backend.create_queue(&queue).await.expect("second create");
    assert_eq!(
        await_ready_count(backend, &queue, 1).await,
        1,
        "re-creating a queue must keep its messages"
    );
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.dead_letter_count, Some(0));
    let dlq = dead_letter_queue(backend, &queue);
    let dlq_stats = backend
        .get_queue_stats(&dlq)
        .await
        .expect("dead-letter queue exists");
    assert_eq!(dlq_stats.message_count, 0);
    cleanup(backend, &queue).await;
}

/// C3: `delete_queue` is idempotent and removes the dead-letter queue too.
pub async fn delete_queue_is_idempotent_and_removes_dead_letter_queue(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "delete_idempotent").await;
    send(backend, &queue, &step()).await;
    backend.delete_queue(&queue).await.expect("delete");
    backend.delete_queue(&queue).await.expect("second delete");
    let never_created = unique_queue("never_created");
    backend
        .delete_queue(&never_created)
        .await
        .expect("delete of a queue that never existed");
    assert_err(
        backend.get_queue_stats(&queue).await,
        is_not_found,
        "deleted queue",
    );
    let dlq = dead_letter_queue(backend, &queue);
    assert_err(
        backend.get_queue_stats(&dlq).await,
        is_not_found,
        "deleted dead-letter queue",
    );
}

/// C4: every operation but create/delete on a missing queue is `QueueNotFound`.
pub async fn operations_on_missing_queue_are_not_found(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "missing").await;
    send(backend, &queue, &step()).await;
    let receipt = receive_one(backend, &queue, LONG_LEASE)
        .await
        .metadata
        .receipt_handle;
    cleanup(backend, &queue).await;

    let b = backend;
    assert_err(b.send_message(&queue, &step()).await, is_not_found, "send");
    assert_err(
        b.send_batch(&queue, &[step(), step()]).await,
        is_not_found,
        "send_batch",
    );
    assert_err(
        b.receive_messages::<SimpleStepMessage>(&queue, 1, LEASE)
            .await,
        is_not_found,
        "receive",
    );
    assert_err(
        b.delete_message(&queue, &receipt).await,
        is_not_found,
        "delete_message",
    );
    assert_err(
        b.change_message_visibility(&queue, &receipt, LEASE).await,
        is_not_found,
        "change_message_visibility",
    );
    assert_err(b.get_queue_stats(&queue).await, is_not_found, "stats");
    assert_err(b.purge_queue(&queue).await, is_not_found, "purge");
}

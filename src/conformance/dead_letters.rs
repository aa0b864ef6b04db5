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
/// gets every one), and such a read is no hand-out: the new worker sees
/// `receive_count` 1. One left to old workers alone moves to the dead-letter
/// queue intact once `max_receive_count` of their leases have passed since an
/// old worker first met it, not before.
pub async fn message_of_another_shape_is_released_then_dead_lettered(backend: &MessageBackend) {
    let max = backend.queues_config().max_receive_count;
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
    let first_met = Instant::now();
    let got = receive(backend, &queue, 10, LONG_LEASE).await;
    let got: Vec<_> = got.into_iter().map(|m| m.message).collect();
    assert_eq!(got, vec![good], "the newer messages are skipped");
    // The new worker gets every one, as their first hand-out.
    let read: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(&queue, 10, LONG_LEASE)
        .await
        .expect("the new worker's receive");
    let bodies: Vec<_> = read.iter().map(|m| m.message.clone()).collect();
    assert_eq!(bodies, newer, "the new worker gets every newer message");
    let counts: Vec<u32> = read.iter().map(|m| m.metadata.receive_count).collect();
    assert_eq!(counts, vec![1; 5], "the old worker's read was no hand-out");
    for message in &read[1..] {
        backend
            .delete_message(&queue, message.receipt())
            .await
            .expect("delete");
    }
    // One left to old workers alone (leases of LEASE) reaches the
    // dead-letter queue, intact, once max_receive_count leases have passed.
    backend
        .change_message_visibility(&queue, read[0].receipt(), Duration::ZERO)
        .await
        .expect("release");
    let grace = LEASE * max;
    let dead = loop {
        assert!(receive(backend, &queue, 10, LEASE).await.is_empty());
        let dead: Vec<QueuedMessage<NotAStep>> = backend
            .receive_messages(&dlq, 10, LONG_LEASE)
            .await
            .expect("receive dead letters");
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            first_met.elapsed() < grace + Duration::from_secs(3),
            "not moved {:?} after it was first met",
            first_met.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved_after = first_met.elapsed();
    assert!(
        moved_after >= grace,
        "moved after {moved_after:?}, before {grace:?}"
    );
    let dead: Vec<_> = dead.into_iter().map(|m| m.message).collect();
    assert_eq!(dead, vec![newer[0].clone()], "moved intact");
    assert_empty_for(backend, &queue, Duration::from_millis(200)).await;
    cleanup(backend, &queue).await;
}

/// C8, C19: a receive reads at most `max` messages, and one of another shape
/// takes its place: a receive of 1 that meets a newer message first returns
/// nothing, on every provider, and the step behind it stays for the next
/// receive. The newer message reaches a receiver that reads it as its first
/// hand-out.
pub async fn a_receive_of_one_that_meets_another_shape_first_returns_nothing(
    backend: &MessageBackend,
) {
    let queue = fresh_queue(backend, "other_shape_one").await;
    let newer = NotAStep {
        garbage: "a newer message".into(),
    };
    backend
        .send_message(&queue, &newer)
        .await
        .expect("send the newer message");
    let good = step();
    send(backend, &queue, &good).await;
    assert_eq!(await_ready_count(backend, &queue, 2).await, 2);
    let one = receive(backend, &queue, 1, LONG_LEASE).await;
    let one: Vec<_> = one.into_iter().map(|m| m.message).collect();
    assert_eq!(
        one,
        vec![],
        "the newer message took the place of the one read"
    );
    let rest = receive_n(backend, &queue, 1, LONG_LEASE, Duration::from_secs(3)).await;
    let rest: Vec<_> = rest.into_iter().map(|m| m.message).collect();
    assert_eq!(rest, vec![good], "the step is still there");
    let read: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(&queue, 10, LONG_LEASE)
        .await
        .expect("the new worker's receive");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].message, newer);
    assert_eq!(read[0].metadata.receive_count, 1, "no hand-out before");
    cleanup(backend, &queue).await;
}

/// C19, C24: a rolling deploy. Three old workers wait for steps while one new
/// worker waits for the newer messages; 50 newer messages and 20 steps
/// arrive. Every newer message reaches the new worker as its first hand-out,
/// every step an old worker, and nothing is dead-lettered (the old workers'
/// reads of newer messages are no hand-outs, and a waiting old worker does not
/// read them again at once).
pub async fn a_rolling_deploy_hands_newer_messages_to_the_newer_worker(backend: &MessageBackend) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    };
    const NEWER: usize = 50;
    const STEPS: usize = 20;
    let queue = fresh_queue(backend, "rolling_deploy").await;
    let stop = AtomicBool::new(false);
    let newer_seen: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
    let steps_seen: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let wait = Duration::from_secs(1);
    let old_worker = || async {
        while !stop.load(Ordering::Relaxed) {
            let got: Vec<QueuedMessage<SimpleStepMessage>> = backend
                .receive_messages_wait(&queue, 10, LONG_LEASE, wait)
                .await
                .expect("old worker receive");
            for message in got {
                steps_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(message.metadata.receive_count);
                backend
                    .delete_message(&queue, message.receipt())
                    .await
                    .expect("old worker delete");
            }
        }
    };
    let new_worker = async {
        while !stop.load(Ordering::Relaxed) {
            let got: Vec<QueuedMessage<NotAStep>> = backend
                .receive_messages_wait(&queue, 10, LONG_LEASE, wait)
                .await
                .expect("new worker receive");
            for message in got {
                // A little work per message: the old workers get their turns.
                tokio::time::sleep(Duration::from_millis(10)).await;
                newer_seen.lock().unwrap_or_else(|p| p.into_inner()).push((
                    message.message.garbage.clone(),
                    message.metadata.receive_count,
                ));
                backend
                    .delete_message(&queue, message.receipt())
                    .await
                    .expect("new worker delete");
            }
        }
    };
    let produce = async {
        // The workers are waiting before anything arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..NEWER {
            let newer = NotAStep {
                garbage: format!("newer {i}"),
            };
            backend
                .send_message(&queue, &newer)
                .await
                .expect("send newer");
            if i % 5 == 4 {
                send(backend, &queue, &step()).await;
                send(backend, &queue, &step()).await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let newer = newer_seen.lock().unwrap_or_else(|p| p.into_inner()).len();
            let steps = steps_seen.lock().unwrap_or_else(|p| p.into_inner()).len();
            if (newer >= NEWER && steps >= STEPS) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(
        produce,
        new_worker,
        old_worker(),
        old_worker(),
        old_worker()
    );
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    let newer = newer_seen.into_inner().unwrap_or_else(|p| p.into_inner());
    let steps = steps_seen.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<&str> = newer.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        stats.dead_letter_count,
        Some(0),
        "dead-lettered; the new worker got {} of {NEWER}",
        names.len()
    );
    assert_eq!(
        names.len(),
        NEWER,
        "every newer message reached the new worker"
    );
    // First hand-outs only; on RabbitMQ a consumer cancelled with credit
    // left may race a delivery, counted once more without a hand-out (C28's
    // exception): the standing consumer cancels only after its callers have
    // not waited for a while, which a starved runtime (the suite in
    // parallel on two cores) shows now and then. Two such messages of 50
    // are allowed there; none elsewhere.
    let recounted: Vec<_> = newer.iter().filter(|(_, count)| *count > 1).collect();
    let allowed = 2 * usize::from(backend.provider() == crate::Provider::RabbitMq);
    assert!(
        recounted.len() <= allowed && recounted.iter().all(|(_, count)| *count == 2),
        "first hand-outs only: {recounted:?}"
    );
    assert_eq!(steps.len(), STEPS, "every step reached an old worker");
    cleanup(backend, &queue).await;
}

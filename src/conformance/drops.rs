//! Receives their callers drop mid-way (a `timeout`, a `select!`, a Ruby
//! `Timeout`): whatever was under way when the future went, nothing stays
//! out of reach once the leases end.

use super::*;

/// Waiting receives dropped in [`dropped_receives_strand_nothing`].
const DROPPED_WAITS: usize = 300;
/// Messages sent after them, then fetched by plain receives that are dropped too.
const MESSAGES: usize = 200;

/// A drop point between 0.2 and 3 ms, spread over calls (not random, so a
/// failure repeats).
fn drop_after(i: usize) -> Duration {
    Duration::from_micros(200 + (i as u64 * 7_919) % 2_800)
}

/// C13: receives dropped at any point strand nothing. `DROPPED_WAITS` (300)
/// waiting receives on an empty queue are each dropped after 0.2-3 ms; then
/// `MESSAGES` (200) are sent and taken by plain receives of 10 with 1 s leases,
/// each dropped after 0.2-3 ms too. Once those leases have ended, every sent
/// message is receivable (from the queue, or from its dead-letter queue once
/// expired leases counted it out): none is held by a consumer nobody owns.
pub async fn dropped_receives_strand_nothing(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "dropped_receives").await;
    for i in 0..DROPPED_WAITS {
        let call = backend.receive_messages_wait::<SimpleStepMessage>(
            &queue,
            1 + i % 10,
            LEASE,
            Duration::from_secs(30),
        );
        if let Ok(outcome) = tokio::time::timeout(drop_after(i), call).await {
            let got = outcome.unwrap_or_else(|e| panic!("receive_messages_wait({queue}): {e}"));
            panic!("a wait on an empty queue returned {} at once", got.len());
        }
    }
    let sent: Vec<SimpleStepMessage> = (0..MESSAGES).map(|_| step()).collect();
    for chunk in sent.chunks(50) {
        backend.send_batch(&queue, chunk).await.expect("send_batch");
    }
    for i in 0..MESSAGES / 2 {
        let call = backend.receive_messages::<SimpleStepMessage>(&queue, 10, LEASE);
        if let Ok(outcome) = tokio::time::timeout(drop_after(i), call).await {
            // Finished in time: its messages stay leased until the lease ends.
            outcome.unwrap_or_else(|e| panic!("receive_messages({queue}): {e}"));
        }
    }
    tokio::time::sleep(LEASE + SLACK).await;
    // Leases that ran out count as deliveries: a message may have reached
    // the dead-letter queue meanwhile, which is as receivable (a move cut
    // short by a drop may leave a copy in both: a duplicate, not a loss).
    let dlq = dead_letter_queue(backend, &queue);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = HashSet::new();
    while received.len() < MESSAGES && Instant::now() < deadline {
        let mut got = receive(backend, &queue, 10, LONG_LEASE).await;
        got.extend(receive(backend, &dlq, 10, LONG_LEASE).await);
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        received.extend(got.iter().map(|m| m.message.step_uuid));
    }
    let missing = sent
        .iter()
        .filter(|m| !received.contains(&m.step_uuid))
        .count();
    assert_eq!(
        missing, 0,
        "{missing} of {MESSAGES} messages stayed out of reach after every lease ended"
    );
    cleanup(backend, &queue).await;
}

/// Queues in [`dropped_put_backs_leave_one_copy`], one message each.
const PUT_BACK_ROUNDS: usize = 40;

/// C13, C19: a receive dropped while it puts back a message of another shape
/// leaves exactly one copy of it. `PUT_BACK_ROUNDS` (40) queues each hold one
/// message an old worker cannot read; its receive on queue `i` is dropped
/// after `i` × 0.5 ms, so some drops land in every step of the put-back
/// (on RabbitMQ: publishing the copy, awaiting its confirm, acking the
/// original). Once every lease has ended, a newer worker finds the message
/// once on every queue: not lost, and not both the copy and an original that
/// came back when its lease ran out.
pub async fn dropped_put_backs_leave_one_copy(backend: &MessageBackend) {
    let mut queues = Vec::with_capacity(PUT_BACK_ROUNDS);
    for i in 0..PUT_BACK_ROUNDS {
        let queue = fresh_queue(backend, "dropped_put_back").await;
        let newer = NotAStep {
            garbage: format!("a newer message {i}"),
        };
        backend
            .send_message(&queue, &newer)
            .await
            .expect("send the newer message");
        queues.push(queue);
    }
    let old_workers: Vec<_> = queues
        .iter()
        .enumerate()
        .map(|(i, queue)| {
            let (backend, queue) = (backend.clone(), queue.clone());
            tokio::spawn(async move {
                let call = backend.receive_messages::<SimpleStepMessage>(&queue, 1, LEASE);
                let drop_after = Duration::from_micros(500 * i as u64);
                if let Ok(outcome) = tokio::time::timeout(drop_after, call).await {
                    let got = outcome.unwrap_or_else(|e| panic!("receive_messages({queue}): {e}"));
                    assert!(got.is_empty(), "an old worker got a newer message");
                }
            })
        })
        .collect();
    for worker in old_workers {
        worker.await.expect("an old worker's task");
    }
    tokio::time::sleep(LEASE + SLACK).await;
    // First the one copy each queue must hold, then, after a little longer,
    // any second one.
    let mut found = vec![0usize; PUT_BACK_ROUNDS];
    let deadline = Instant::now() + Duration::from_secs(5);
    while found.contains(&0) && Instant::now() < deadline {
        for (i, queue) in queues.iter().enumerate() {
            if found[i] == 0 {
                found[i] += read_newer(backend, queue).await;
            }
        }
    }
    tokio::time::sleep(SLACK).await;
    for (i, queue) in queues.iter().enumerate() {
        found[i] += read_newer(backend, queue).await;
    }
    let wrong: Vec<(usize, usize)> = found
        .iter()
        .enumerate()
        .filter(|(_, copies)| **copies != 1)
        .map(|(i, copies)| (i, *copies))
        .collect();
    assert!(
        wrong.is_empty(),
        "queues (i: dropped after i × 0.5 ms, copies found) without exactly one copy: {wrong:?}"
    );
    for queue in &queues {
        cleanup(backend, queue).await;
    }
}

/// How many messages of another shape a newer worker reads from `queue`.
async fn read_newer(backend: &MessageBackend, queue: &str) -> usize {
    let read: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(queue, 10, LONG_LEASE)
        .await
        .unwrap_or_else(|e| panic!("the newer worker's receive_messages({queue}): {e}"));
    read.len()
}

//! Stats, purge and health.

use super::*;

/// C19, C21: stats count ready, leased and dead-lettered messages; a count
/// the provider's [`Capabilities`](crate::Capabilities) say it cannot know is
/// `None`, and one they say it knows is exact.
pub async fn queue_stats_count_ready_leased_and_dead_letters(backend: &MessageBackend) {
    let caps = backend.capabilities();
    let leased = |stats: &crate::QueueStats, n: u64| {
        let expected = caps.exact_in_flight.then_some(n);
        assert_eq!(stats.in_flight_count, expected, "in flight: {stats:?}");
    };
    let queue = fresh_queue(backend, "stats").await;
    for _ in 0..3 {
        send(backend, &queue, &step()).await;
    }
    let poison = NotAStep {
        garbage: "x".into(),
    };
    assert_eq!(await_ready_count(backend, &queue, 3).await, 3);
    let held = receive_one(backend, &queue, LONG_LEASE).await;
    backend
        .send_message(&queue, &poison)
        .await
        .expect("send poison");
    assert_eq!(await_ready_count(backend, &queue, 3).await, 3);
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.queue_name, queue);
    assert_eq!(stats.message_count, 3, "ready: {stats:?}");
    leased(&stats, 1);
    match stats.oldest_message_age_seconds {
        Some(age) => assert!(
            caps.message_ages_known && (0..60).contains(&age),
            "{stats:?}"
        ),
        None => assert!(!caps.message_ages_known, "{stats:?}"),
    }
    assert_eq!(stats.dead_letter_count, Some(0));
    // Drain: the message of another shape is released on each receive and
    // moves to the dead-letter queue once max_receive_count leases (of LEASE
    // here) have passed since the first.
    let mut rest = receive(backend, &queue, 10, LONG_LEASE).await;
    let max = backend.queues_config().max_receive_count;
    let deadline = Instant::now() + LEASE * max + Duration::from_secs(5);
    let stats = loop {
        rest.extend(receive(backend, &queue, 10, LEASE).await);
        let stats = backend.get_queue_stats(&queue).await.expect("stats");
        let drained = stats.message_count == 0 && stats.dead_letter_count == Some(1);
        if (rest.len() == 2 && drained) || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rest.len(), 2, "the two remaining steps");
    assert_eq!(stats.message_count, 0, "{stats:?}");
    leased(&stats, 3);
    assert_eq!(stats.dead_letter_count, Some(1), "{stats:?}");
    drop(held);
    cleanup(backend, &queue).await;
}

/// C22: purge removes ready messages and counts them; leased ones survive.
pub async fn purge_removes_ready_messages_only(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "purge").await;
    let kept = step();
    send(backend, &queue, &kept).await;
    let held = receive_one(backend, &queue, LONG_LEASE).await;
    for _ in 0..3 {
        send(backend, &queue, &step()).await;
    }
    assert_eq!(await_ready_count(backend, &queue, 3).await, 3);
    assert_eq!(backend.purge_queue(&queue).await.expect("purge"), 3);
    assert_eq!(backend.purge_queue(&queue).await.expect("purge again"), 0);
    backend
        .change_message_visibility(&queue, held.receipt(), Duration::ZERO)
        .await
        .expect("the leased message survived the purge");
    let back = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(back.message, kept);
    cleanup(backend, &queue).await;
}

/// C23: `health_check` is `Ok(true)` against a live server.
pub async fn health_check_answers_true_when_server_is_up(backend: &MessageBackend) {
    let started = Instant::now();
    assert!(backend.health_check().await.expect("health_check"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

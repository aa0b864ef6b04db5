//! The move primitive against the real servers: across providers, within
//! one (dead-letter redrive), and a failed send that loses nothing.

mod common;

use std::time::Duration;

use tasker_messaging::{
    conformance::unique_queue, move_messages, redrive_dead_letters, MessageBackend, MessagingError,
    MessagingService, Provider, SimpleStepMessage,
};
use uuid::Uuid;

fn steps(n: usize) -> Vec<SimpleStepMessage> {
    (0..n)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect()
}

/// Receives (and deletes) everything ready on `queue`, in order.
async fn drain(backend: &MessageBackend, queue: &str) -> Vec<SimpleStepMessage> {
    let mut got = Vec::new();
    loop {
        let batch = backend
            .receive_messages::<SimpleStepMessage>(queue, 50, Duration::from_secs(30))
            .await
            .expect("receive");
        if batch.is_empty() {
            return got;
        }
        for m in batch {
            assert_eq!(m.metadata.receive_count, 1, "a moved message starts afresh");
            backend
                .delete_message(queue, m.receipt())
                .await
                .expect("delete");
            got.push(m.message);
        }
    }
}

async fn moves_across_providers(from: Provider, to: Provider) {
    let (source, target) = (common::backend(from).await, common::backend(to).await);
    let queue = unique_queue("move");
    source.create_queue(&queue).await.unwrap();
    target.create_queue(&queue).await.unwrap();
    let sent = steps(250);
    source.send_batch(&queue, &sent).await.unwrap();

    let first = move_messages(&source, &queue, &target, &queue, 120)
        .await
        .expect("move 120");
    assert_eq!((first.moved, first.duplicated), (120, 0));
    let rest = move_messages(&source, &queue, &target, &queue, usize::MAX)
        .await
        .expect("move the rest");
    assert_eq!((rest.moved, rest.duplicated), (130, 0));
    assert_eq!(
        source.get_queue_stats(&queue).await.unwrap().message_count,
        0
    );
    let got = drain(&target, &queue).await;
    let ids = |m: &[SimpleStepMessage]| m.iter().map(|m| m.step_uuid).collect::<Vec<_>>();
    let (mut got, mut sent) = (ids(&got), ids(&sent));
    assert_eq!(got.len(), sent.len(), "every message arrived once");
    got.sort();
    sent.sort();
    assert!(got == sent, "the same messages arrived");
    source.delete_queue(&queue).await.unwrap();
    target.delete_queue(&queue).await.unwrap();
}

async fn redrive_returns_dead_letters(provider: Provider) {
    let backend = common::backend(provider).await;
    let queue = unique_queue("redrive");
    backend.create_queue(&queue).await.unwrap();
    let sent = steps(3);
    backend.send_batch(&queue, &sent).await.unwrap();
    // Three deliveries without a delete each, then the next receive moves them.
    let max = backend.queues_config().max_receive_count;
    for _ in 0..=max {
        for m in backend
            .receive_messages::<SimpleStepMessage>(&queue, 10, Duration::from_secs(30))
            .await
            .unwrap()
        {
            backend
                .change_message_visibility(&queue, m.receipt(), Duration::ZERO)
                .await
                .unwrap();
        }
    }
    let stats = backend.get_queue_stats(&queue).await.unwrap();
    assert_eq!(stats.dead_letter_count, Some(3), "{stats:?}");

    let report = redrive_dead_letters(&backend, &queue, 2)
        .await
        .expect("redrive 2");
    assert_eq!(report.moved, 2);
    let report = redrive_dead_letters(&backend, &queue, 10)
        .await
        .expect("redrive the rest");
    assert_eq!(report.moved, 1);
    let stats = backend.get_queue_stats(&queue).await.unwrap();
    assert_eq!(stats.dead_letter_count, Some(0), "{stats:?}");
    let mut back = drain(&backend, &queue).await;
    back.sort_by_key(|m| m.step_uuid);
    let mut expected = sent;
    expected.sort_by_key(|m| m.step_uuid);
    assert_eq!(back, expected);
    backend.delete_queue(&queue).await.unwrap();
}

/// A destination that refuses the send: the error names it, nothing is
/// deleted from the source, and the round is released at once.
async fn a_failed_send_loses_nothing(from: Provider, to: Provider) {
    let (source, target) = (common::backend(from).await, common::backend(to).await);
    let queue = unique_queue("move_fail");
    let missing = unique_queue("move_missing");
    source.create_queue(&queue).await.unwrap();
    let sent = steps(5);
    source.send_batch(&queue, &sent).await.unwrap();
    let error = move_messages(&source, &queue, &target, &missing, 10)
        .await
        .expect_err("the destination queue does not exist");
    assert!(
        matches!(error.error, MessagingError::QueueNotFound { .. }),
        "{error}"
    );
    assert_eq!(error.done.sent(), 0);
    // Released at once; the move's receive counts on RabbitMQ only (there
    // the put-back is a counted requeue).
    let count = if from == Provider::RabbitMq { 2 } else { 1 };
    let back = source
        .receive_messages::<SimpleStepMessage>(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let bodies: Vec<_> = back.iter().map(|m| m.message.clone()).collect();
    assert_eq!(
        bodies, sent,
        "every message is back in the source, in order"
    );
    assert!(back.iter().all(|m| m.metadata.receive_count == count));
    source.delete_queue(&queue).await.unwrap();
}

/// Moves that fail (the destination queue is missing) more times than
/// `max_receive_count`: no message is dead-lettered, and the next real
/// receive is each message's first.
async fn failed_moves_never_count(from: Provider, to: Provider) {
    let (source, target) = (common::backend(from).await, common::backend(to).await);
    let queue = unique_queue("move_uncounted");
    let missing = unique_queue("move_nowhere");
    source.create_queue(&queue).await.unwrap();
    let sent = steps(4);
    source.send_batch(&queue, &sent).await.unwrap();
    for _ in 0..5 {
        let error = move_messages(&source, &queue, &target, &missing, 10)
            .await
            .expect_err("the destination queue does not exist");
        assert_eq!(error.done.sent(), 0, "{error}");
    }
    let stats = source.get_queue_stats(&queue).await.unwrap();
    assert_eq!(stats.dead_letter_count, Some(0), "{stats:?}");
    let back = source
        .receive_messages::<SimpleStepMessage>(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let counts: Vec<u32> = back.iter().map(|m| m.metadata.receive_count).collect();
    assert_eq!(counts, vec![1; 4], "a failed move is no delivery");
    source.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_moves_within_pgmq_never_count() {
    failed_moves_never_count(Provider::Pgmq, Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_moves_pgmq_to_rabbitmq_never_count() {
    failed_moves_never_count(Provider::Pgmq, Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_moves_within_in_memory_never_count() {
    failed_moves_never_count(Provider::InMemory, Provider::InMemory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmq_to_rabbitmq() {
    moves_across_providers(Provider::Pgmq, Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_pgmq() {
    moves_across_providers(Provider::RabbitMq, Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_on_pgmq() {
    redrive_returns_dead_letters(Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_on_rabbitmq() {
    redrive_returns_dead_letters(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_send_to_rabbitmq_loses_nothing() {
    a_failed_send_loses_nothing(Provider::Pgmq, Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_send_to_pgmq_loses_nothing() {
    a_failed_send_loses_nothing(Provider::RabbitMq, Provider::Pgmq).await;
}

/// A backend with `max_message_bytes` set to `max`.
async fn backend_limited(provider: Provider, max: usize) -> MessageBackend {
    let mut config = common::config(provider);
    config.queues.max_message_bytes = max;
    common::connect(config, provider).await
}

/// A message the destination refuses on its own (its limit is lower than
/// the source's): a move still moves the messages around it, reports it as
/// refused, and leaves it ready in the source, its count as it was.
async fn a_refused_message_never_blocks_the_rest(to: Provider) {
    let source = common::backend(Provider::Pgmq).await;
    let target = backend_limited(to, 1024).await;
    let text = format!("{{\"n\":\"{}\"}}", "x".repeat(2000));
    assert!(text.len() < source.queues_config().max_message_bytes);
    let big: tasker_messaging::RawMessage = serde_json::from_str(&text).unwrap();

    let queue = unique_queue("move_refused");
    let dest = unique_queue("move_refused_to");
    source.create_queue(&queue).await.unwrap();
    target.create_queue(&dest).await.unwrap();
    let before = steps(2);
    let after = steps(2);
    source.send_batch(&queue, &before).await.unwrap();
    source
        .send_message(&queue, &big)
        .await
        .expect("accepted at its size");
    source.send_batch(&queue, &after).await.unwrap();

    let report = move_messages(&source, &queue, &target, &dest, usize::MAX)
        .await
        .expect("one refused message does not stop the move");
    assert_eq!((report.moved, report.refused), (4, 1), "{report:?}");
    let moved = drain(&target, &dest).await;
    let expected: Vec<_> = before.into_iter().chain(after).collect();
    assert_eq!(moved, expected);
    let left = source
        .receive_messages::<tasker_messaging::RawMessage>(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "the refused message is back in the source");
    assert_eq!(
        left[0].metadata.receive_count, 1,
        "the move's read did not count"
    );
    source.delete_queue(&queue).await.unwrap();
    target.delete_queue(&dest).await.unwrap();
}

/// Bodies PGMQ accepted under the default 256 KiB limit that come back
/// longer (jsonb text: a space after every `:` and `,`, `1e1000` as 1,001
/// digits) move at the size they were accepted at: nothing is refused.
async fn an_accepted_body_moves(to: Provider) {
    const LIMIT: usize = 262_144;
    let source = backend_limited(Provider::Pgmq, LIMIT).await;
    let target = backend_limited(to, LIMIT).await;
    let items = vec!["1"; 100_002].join(",");
    let text = format!("{{\"n\":[{items}]}}");
    assert_eq!(text.len(), 200_011);
    let big: tasker_messaging::RawMessage = serde_json::from_str(&text).unwrap();
    let huge_number: tasker_messaging::RawMessage =
        serde_json::from_str(r#"{"big": 1e1000}"#).unwrap();

    let queue = unique_queue("move_size");
    let dest = unique_queue("move_size_to");
    source.create_queue(&queue).await.unwrap();
    target.create_queue(&dest).await.unwrap();
    source.send_message(&queue, &big).await.expect("accepted");
    source
        .send_message(&queue, &huge_number)
        .await
        .expect("accepted");
    source.send_batch(&queue, &steps(2)).await.unwrap();

    let report = move_messages(&source, &queue, &target, &dest, usize::MAX)
        .await
        .expect("move");
    assert_eq!((report.moved, report.refused), (4, 0), "{report:?}");
    let got = target
        .receive_messages::<tasker_messaging::RawMessage>(&dest, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    let value = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(value(got[0].message.json()), value(&text));
    let digits: String = got[1]
        .message
        .json()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'e')
        .collect();
    assert!(
        digits == "1e1000" || digits == format!("1{}", "0".repeat(1000)),
        "{digits}"
    );
    source.delete_queue(&queue).await.unwrap();
    target.delete_queue(&dest).await.unwrap();
}

/// Floats PGMQ writes out longer (`1e-7` as `0.0000001`, `0e-50` as 50
/// zeros) move under the limit they were accepted under (C7).
async fn accepted_floats_move(to: Provider) {
    const LIMIT: usize = 4096;
    let source = backend_limited(Provider::Pgmq, LIMIT).await;
    let target = backend_limited(to, LIMIT).await;
    let weights = serde_json::json!({ "w": vec![1e-7; 700] }).to_string();
    assert!(
        weights.len() > 3_500 && weights.len() <= LIMIT,
        "{}",
        weights.len()
    );
    let queue = unique_queue("move_floats");
    let dest = unique_queue("move_floats_to");
    source.create_queue(&queue).await.unwrap();
    target.create_queue(&dest).await.unwrap();
    for text in [weights.as_str(), r#"{"x":0e-5000}"#] {
        let body: tasker_messaging::RawMessage = serde_json::from_str(text).unwrap();
        source.send_message(&queue, &body).await.expect("accepted");
    }
    let report = move_messages(&source, &queue, &target, &dest, 10)
        .await
        .expect("move");
    source.delete_queue(&queue).await.unwrap();
    target.delete_queue(&dest).await.unwrap();
    assert_eq!((report.moved, report.refused), (2, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_floats_move_within_pgmq() {
    accepted_floats_move(Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_floats_move_pgmq_to_rabbitmq() {
    accepted_floats_move(Provider::RabbitMq).await;
}

/// A typed message whose integers end in long runs of zeros still reads as
/// its own type after a move: integers are never written as floats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_integers_stay_integers() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        order_id: u64,
        placed_at_ms: i64,
    }

    let sent = Order {
        order_id: 1_200_000_000,
        placed_at_ms: -1_700_000_000_000,
    };
    for (from, to) in [
        (Provider::Pgmq, Provider::RabbitMq),
        (Provider::Pgmq, Provider::Pgmq),
        (Provider::RabbitMq, Provider::RabbitMq),
        (Provider::InMemory, Provider::InMemory),
    ] {
        let source = common::backend(from).await;
        let target = match to == from && from == Provider::InMemory {
            true => source.clone(),
            false => common::backend(to).await,
        };
        let (queue, dest) = (unique_queue("move_ints"), unique_queue("move_ints_to"));
        source.create_queue(&queue).await.unwrap();
        target.create_queue(&dest).await.unwrap();
        source.send_message(&queue, &sent).await.unwrap();
        let report = move_messages(&source, &queue, &target, &dest, 10)
            .await
            .expect("move");
        let got = target
            .receive_messages::<Order>(&dest, 10, Duration::from_secs(30))
            .await
            .unwrap();
        source.delete_queue(&queue).await.unwrap();
        target.delete_queue(&dest).await.unwrap();
        assert_eq!(report.moved, 1, "{from:?} -> {to:?}");
        let got: Vec<Order> = got.into_iter().map(|m| m.message).collect();
        assert_eq!(got, vec![sent.clone()], "{from:?} -> {to:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_body_moves_within_pgmq() {
    an_accepted_body_moves(Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_body_moves_pgmq_to_rabbitmq() {
    an_accepted_body_moves(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_message_within_pgmq() {
    a_refused_message_never_blocks_the_rest(Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_message_pgmq_to_rabbitmq() {
    a_refused_message_never_blocks_the_rest(Provider::RabbitMq).await;
}

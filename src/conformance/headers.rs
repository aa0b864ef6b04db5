//! Headers: round trips, the gate's key rules, the size limit, and the
//! paths a message takes (dead-lettering, another shape, moves).

use super::*;
use crate::{move_messages, Headers, SendOptions};

fn tenant_headers() -> SendOptions {
    SendOptions::new()
        .header("tenant", "acme")
        .header("correlation-id", "order-42")
        .header("trace", "00-4bf92f3577b34da6-00f067aa0ba902b7-01 é")
}

fn expected(options: &SendOptions) -> Headers {
    options.header_map().clone()
}

/// C38: headers sent with a message (one or a batch) come back with every
/// receive of it, in `headers()` and the metadata; a plain message has none.
pub async fn headers_round_trip_on_send_and_batch(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "headers_round_trip").await;
    let options = tenant_headers();
    let one = step();
    let id = backend
        .send_message_with(&queue, &one, &options)
        .await
        .expect("send_message_with");
    let plain = step();
    send(backend, &queue, &plain).await;
    let batch: Vec<_> = (0..3).map(|_| step()).collect();
    let other = SendOptions::new().header("batch", "yes");
    let ids = backend
        .send_batch_with(&queue, &batch, &other)
        .await
        .expect("send_batch_with");
    assert_eq!(ids.len(), 3);
    let got = receive_n(backend, &queue, 5, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].message, one);
    assert_eq!(got[0].metadata.message_id, id);
    assert_eq!(got[0].headers(), &expected(&options));
    assert_eq!(got[0].metadata.headers, expected(&options));
    assert_eq!(got[1].message, plain);
    assert!(got[1].headers().is_empty(), "a plain send has no headers");
    for (message, sent) in got[2..].iter().zip(&batch) {
        assert_eq!(&message.message, sent, "batch order");
        assert_eq!(message.headers(), &expected(&other));
    }
    // A redelivery shows them again.
    backend
        .change_message_visibility(&queue, got[0].receipt(), Duration::ZERO)
        .await
        .expect("release");
    let again = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(again.metadata.receive_count, 2);
    assert_eq!(again.headers(), &expected(&options));
    assert_eq!(
        backend
            .send_batch_with::<SimpleStepMessage>(&queue, &[], &options)
            .await
            .expect("an empty batch"),
        vec![]
    );
    cleanup(backend, &queue).await;
}

/// C39: header keys are checked at the gate, before any I/O: ASCII, at most
/// 128 bytes, not reserved (`x-`, `tasker`, `dead_letter`); values hold no
/// U+0000. Nothing is sent.
pub async fn header_keys_are_checked_before_io(backend: &MessageBackend) {
    let never_created = unique_queue("no_io_headers");
    let bad_keys = [
        String::new(),
        "clé".to_owned(),
        "two words".to_owned(),
        "k".repeat(129),
        "x-death".to_owned(),
        "X-Delay".to_owned(),
        "tasker-delay-to".to_owned(),
        "tasker_other_shape_since".to_owned(),
        "dead_letter".to_owned(),
    ];
    for key in bad_keys {
        let options = SendOptions::new().header(key.clone(), "v");
        assert_err(
            backend
                .send_message_with(&never_created, &step(), &options)
                .await,
            |e| matches!(e, MessagingError::InvalidArgument(_)),
            &format!("header key {key:?}"),
        );
        assert_err(
            backend
                .send_batch_with(&never_created, &[step()], &options)
                .await,
            |e| matches!(e, MessagingError::InvalidArgument(_)),
            &format!("header key {key:?} in a batch"),
        );
    }
    let nul = SendOptions::new().header("k", "a\u{0}b");
    assert_err(
        backend
            .send_message_with(&never_created, &step(), &nul)
            .await,
        |e| matches!(e, MessagingError::InvalidArgument(_)),
        "a value with U+0000",
    );
    // Headers over MAX_HEADERS_BYTES (a 200,000-byte value passes
    // `max_message_bytes` at its default but not RabbitMQ's frame size).
    let big = SendOptions::new().header("big", "a".repeat(200_000));
    assert_err(
        backend
            .send_message_with(&never_created, &step(), &big)
            .await,
        |e| matches!(e, MessagingError::InvalidArgument(_)),
        "headers over MAX_HEADERS_BYTES",
    );
    // A good key of the longest length reaches the queue (missing here).
    let longest = SendOptions::new().header("k".repeat(128), "v");
    assert_err(
        backend
            .send_message_with(&never_created, &step(), &longest)
            .await,
        is_not_found,
        "a 128-byte key on a missing queue",
    );
}

/// C39: headers count toward `max_message_bytes`: a body that fits alone is
/// `MessageTooLarge` with headers that push it over, and nothing is sent.
pub async fn headers_count_toward_the_size_limit(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "headers_size").await;
    let max = backend.queues_config().max_message_bytes;
    let body_len = serde_json::to_string(&step()).expect("json").len();
    let room = max - body_len;
    let fits = SendOptions::new().header("pad", "p".repeat(room - 3));
    backend
        .send_message_with(&queue, &step(), &fits)
        .await
        .expect("body and headers exactly at the limit");
    let over = SendOptions::new().header("pad", "p".repeat(room - 2));
    assert_err(
        backend.send_message_with(&queue, &step(), &over).await,
        |e| matches!(e, MessagingError::MessageTooLarge { .. }),
        "one byte over with headers",
    );
    assert_err(
        backend
            .send_batch_with(&queue, &[step(), step()], &over)
            .await,
        |e| matches!(e, MessagingError::MessageTooLarge { .. }),
        "a batch one byte over with headers",
    );
    let got = receive_n(backend, &queue, 5, LONG_LEASE, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "only the message that fit was sent");
    cleanup(backend, &queue).await;
}

/// C38: headers stay with a message moved to the dead-letter queue (after
/// `max_receive_count`), and with one of another shape put back for
/// the receivers that read it.
pub async fn headers_survive_dead_lettering_and_other_shapes(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "headers_dead_letter").await;
    let dlq = dead_letter_queue(backend, &queue);
    let options = tenant_headers();
    // Another shape, read first by a receiver that cannot read it.
    let newer = NotAStep {
        garbage: "a newer message".into(),
    };
    backend
        .send_message_with(&queue, &newer, &options)
        .await
        .expect("send the newer message");
    assert!(receive(backend, &queue, 1, LONG_LEASE).await.is_empty());
    let read: Vec<QueuedMessage<NotAStep>> = backend
        .receive_messages(&queue, 1, LONG_LEASE)
        .await
        .expect("the new worker's receive");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].message, newer);
    assert_eq!(read[0].headers(), &expected(&options), "another shape");
    backend
        .delete_message(&queue, read[0].receipt())
        .await
        .expect("delete");
    // Dead-lettered after max_receive_count.
    let max = backend.queues_config().max_receive_count;
    let doomed = step();
    backend
        .send_message_with(&queue, &doomed, &options)
        .await
        .expect("send");
    for _ in 1..=max {
        let got = receive_one(backend, &queue, LONG_LEASE).await;
        backend
            .change_message_visibility(&queue, got.receipt(), Duration::ZERO)
            .await
            .expect("release");
    }
    assert!(receive(backend, &queue, 1, LONG_LEASE).await.is_empty());
    let dead = receive_one(backend, &dlq, LONG_LEASE).await;
    assert_eq!(dead.message, doomed);
    assert_eq!(dead.headers(), &expected(&options), "dead-lettered");
    cleanup(backend, &queue).await;
}

/// C38: `move_messages` (and so the dead-letter redrive and `migrate`)
/// sends each message on with its headers, in order.
pub async fn headers_survive_move_messages(backend: &MessageBackend) {
    let from = fresh_queue(backend, "headers_move_from").await;
    let to = fresh_queue(backend, "headers_move_to").await;
    let a = SendOptions::new().header("tenant", "a");
    let b = SendOptions::new().header("tenant", "b");
    let sent = [step(), step(), step(), step()];
    backend
        .send_batch_with(&from, &sent[..2], &a)
        .await
        .expect("send a");
    send(backend, &from, &sent[2]).await;
    backend
        .send_message_with(&from, &sent[3], &b)
        .await
        .expect("send b");
    let report = move_messages(backend, &from, backend, &to, 10)
        .await
        .expect("move");
    assert_eq!(report.moved, 4);
    let got = receive_n(backend, &to, 4, LONG_LEASE, Duration::from_secs(5)).await;
    let bodies: Vec<_> = got.iter().map(|m| m.message.clone()).collect();
    assert_eq!(bodies, sent, "order kept");
    let headers: Vec<_> = got.iter().map(|m| m.headers().clone()).collect();
    assert_eq!(
        headers,
        vec![expected(&a), expected(&a), Headers::new(), expected(&b)]
    );
    cleanup(backend, &from).await;
    cleanup(backend, &to).await;
}

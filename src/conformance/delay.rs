//! Delayed delivery: not before the due time, ready after it; the stated
//! granularity and maximum; zero as a plain send; stats.

use super::*;
use crate::SendOptions;

/// A delay long enough to look at the queue before it ends, short enough
/// for a test: 2 s (one RabbitMQ tier).
const DELAY: Duration = Duration::from_secs(2);

/// The latest a delayed message may become receivable after its due time:
/// the provider's granularity plus slack for a busy machine.
fn lateness(backend: &MessageBackend) -> Duration {
    backend.capabilities().delay_granularity + Duration::from_secs(3)
}

/// C34, C40: a delayed message (one or a batch) is not receivable before its
/// due time, and is counted as delayed (where the provider can know) and as
/// nothing else; after it, it is received like any ready message, with its
/// headers, in order, receive count 1.
pub async fn a_delayed_message_is_received_only_after_its_due_time(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "delayed").await;
    let options = SendOptions::new().delay(DELAY).header("tenant", "acme");
    let sent_at = Instant::now();
    let first = step();
    backend
        .send_message_with(&queue, &first, &options)
        .await
        .expect("delayed send");
    let batch = [step(), step()];
    backend
        .send_batch_with(&queue, &batch, &options)
        .await
        .expect("delayed batch");
    let plain = step();
    send(backend, &queue, &plain).await;
    // The plain message is there at once; the delayed ones are not.
    let got = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(got.message, plain, "the plain send comes first");
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.message_count, 0, "delayed messages are not ready");
    if let Some(in_flight) = stats.in_flight_count {
        assert_eq!(in_flight, 1, "delayed messages are not in flight");
    }
    if let Some(delayed) = stats.delayed_count {
        assert_eq!(delayed, 3);
    }
    let early = DELAY
        .saturating_sub(sent_at.elapsed())
        .saturating_sub(SLACK);
    assert_empty_for(backend, &queue, early).await;
    let got = receive_n(backend, &queue, 3, LONG_LEASE, lateness(backend) + SLACK).await;
    let elapsed = sent_at.elapsed();
    assert!(
        elapsed + SLACK >= DELAY,
        "received after {elapsed:?}, before its delay"
    );
    let bodies: Vec<_> = got.iter().map(|m| m.message.clone()).collect();
    assert_eq!(bodies, vec![first, batch[0].clone(), batch[1].clone()]);
    for message in &got {
        assert_eq!(message.metadata.receive_count, 1);
        assert_eq!(message.headers(), options.header_map());
    }
    let stats = backend.get_queue_stats(&queue).await.expect("stats");
    if let Some(delayed) = stats.delayed_count {
        assert_eq!(delayed, 0);
    }
    // Once due it behaves like any message: a dropped lease brings it back.
    backend
        .change_message_visibility(&queue, got[0].receipt(), Duration::ZERO)
        .await
        .expect("release");
    let again = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(again.metadata.receive_count, 2);
    cleanup(backend, &queue).await;
}

/// C35, C36: the granularity is stated and at most 1 s; the maximum delay is
/// stated, and a longer one is `InvalidArgument` before any I/O.
pub async fn the_delay_limits_are_stated_and_enforced(backend: &MessageBackend) {
    let capabilities = backend.capabilities();
    assert!(capabilities.delay_granularity <= Duration::from_secs(1));
    assert!(capabilities.delay_granularity > Duration::ZERO);
    assert!(capabilities.max_delay >= Duration::from_secs(86_400));
    let never_created = unique_queue("no_io_delay");
    let too_long = SendOptions::new().delay(capabilities.max_delay + Duration::from_secs(1));
    assert_err(
        backend
            .send_message_with(&never_created, &step(), &too_long)
            .await,
        |e| matches!(e, MessagingError::InvalidArgument(_)),
        "a delay above the maximum",
    );
    assert_err(
        backend
            .send_batch_with(&never_created, &[step()], &too_long)
            .await,
        |e| matches!(e, MessagingError::InvalidArgument(_)),
        "a batch delay above the maximum",
    );
    // The maximum itself is a valid delay: the missing queue is the error.
    let longest = SendOptions::new().delay(capabilities.max_delay);
    assert_err(
        backend
            .send_message_with(&never_created, &step(), &longest)
            .await,
        is_not_found,
        "the longest delay, on a missing queue",
    );
}

/// C37: a delay of zero is a plain send: receivable at once.
pub async fn a_zero_delay_is_a_plain_send(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "zero_delay").await;
    let message = step();
    let options = SendOptions::new().delay(Duration::ZERO);
    assert!(options.is_plain());
    backend
        .send_message_with(&queue, &message, &options)
        .await
        .expect("send");
    let got = receive(backend, &queue, 1, LONG_LEASE).await;
    assert_eq!(got.len(), 1, "received at once");
    assert_eq!(got[0].message, message);
    cleanup(backend, &queue).await;
}

/// C34: a delayed message sent by one process is received by another only
/// after its due time (the delay is kept by the server, not the sender).
pub async fn a_delayed_message_reaches_another_process_when_due(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    let queue = fresh_queue(a, "delayed_other").await;
    let message = step();
    let sent_at = Instant::now();
    a.send_message_with(&queue, &message, &SendOptions::new().delay(DELAY))
        .await
        .expect("delayed send");
    let early = DELAY
        .saturating_sub(sent_at.elapsed())
        .saturating_sub(SLACK);
    assert_empty_for(b, &queue, early).await;
    let got = receive_n(b, &queue, 1, LONG_LEASE, lateness(b) + SLACK).await;
    assert_eq!(got.len(), 1, "the other process receives it once due");
    assert_eq!(got[0].message, message);
    assert!(sent_at.elapsed() + SLACK >= DELAY);
    cleanup(a, &queue).await;
}

/// C42: a queue deleted while delayed messages wait for it holds up no other
/// queue's delayed messages (on RabbitMQ, where every queue shares the delay
/// tiers, a few dozen such messages used to stall the last hop for all).
pub async fn a_deleted_queue_s_delayed_messages_hold_up_no_other_queue(backend: &MessageBackend) {
    let gone = fresh_queue(backend, "delayed_gone").await;
    let other = fresh_queue(backend, "delayed_kept").await;
    let short = SendOptions::new().delay(Duration::from_secs(1));
    let orphans: Vec<_> = (0..40).map(|_| step()).collect();
    backend
        .send_batch_with(&gone, &orphans, &short)
        .await
        .expect("delayed batch");
    backend.delete_queue(&gone).await.expect("delete");
    let message = step();
    backend
        .send_message_with(&other, &message, &short)
        .await
        .expect("delayed send");
    let got = receive_n(
        backend,
        &other,
        1,
        LONG_LEASE,
        lateness(backend) + SLACK + Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        got.len(),
        1,
        "the other queue's delayed message arrives when due"
    );
    assert_eq!(got[0].message, message);
    cleanup(backend, &other).await;
}

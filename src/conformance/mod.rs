//! The conformance suite every provider passes: one `pub async fn` per
//! behaviour of the contract, each taking a connected [`MessageBackend`].
//! The contract is `docs/CONTRACT.md` in the repository; each case's doc
//! comment starts with the numbers of the rules it checks (`C1`, `C2`, …),
//! and each rule there names its cases (`tests/contract.rs` keeps the two in
//! step).
//!
//! Run it against a provider with one line per provider, naming how to
//! connect and how to reach the same queues from "another process":
//!
//! ```text
//! mod pgmq {
//!     tasker_messaging::conformance_tests!(
//!         my_tests::connect(Provider::Pgmq),
//!         |_| my_tests::connect(Provider::Pgmq)
//!     );
//! }
//! ```
//!
//! [`conformance_tests!`](crate::conformance_tests) expands every case into a
//! `#[tokio::test]` (the calling crate needs `tokio` with `macros` and
//! `rt-multi-thread`). The expression is awaited once per case and must yield a
//! `MessageBackend`. Every case creates and deletes its own queues, so cases
//! run in parallel. Cases read `max_receive_count` from the backend, so any
//! value works; small values keep the suite quick.
//!
//! The cases panic on a broken contract, like any test.

pub mod fleet;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    MessageBackend, MessagingError, MessagingService, QueueMessage, QueuedMessage, ReceiptHandle,
    SimpleStepMessage,
};

/// The shortest lease, used wherever a case waits for one to end.
const LEASE: Duration = Duration::from_secs(1);
/// A lease no case outlives.
const LONG_LEASE: Duration = Duration::from_secs(60);
/// Slack after a lease's end before a case expects the message back.
const SLACK: Duration = Duration::from_millis(400);

/// Expands every conformance case into a `#[tokio::test]` in the current module.
///
/// `$backend` is an expression whose awaited value is a `MessageBackend`,
/// evaluated once per case. `$other_process` is a closure that, given that
/// backend, returns a future of a second one on the same queues, connected
/// independently (for an in-memory backend, a clone): the
/// several-processes cases in [`fleet`](crate::conformance::fleet) use both.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr, $other_process:expr $(,)?) => {
        $crate::__conformance_fleet_cases!($backend, $other_process;
            ready_messages_reach_every_process,
            released_and_expired_leases_reach_every_process,
            receive_count_counts_hand_outs_across_processes,
            two_processes_share_a_drain,
            waiting_receive_wakes_on_another_process_send,
            one_process_holds_many_leases,
            purge_spares_other_processes_leases,
            a_fleet_keeps_up_with_a_trickle_of_sends,
        );
        $crate::__conformance_cases!($backend;
            queue_names_are_validated_before_io,
            create_queue_is_idempotent_and_creates_dead_letter_queue,
            delete_queue_is_idempotent_and_removes_dead_letter_queue,
            operations_on_missing_queue_are_not_found,
            send_then_receive_round_trips_with_metadata,
            send_batch_keeps_order_and_empty_batch_does_no_io,
            oversized_message_is_rejected_and_nothing_sent,
            receive_returns_available_messages_at_once_in_fifo_order,
            received_message_is_leased_from_other_receivers,
            dropped_lease_is_redelivered_with_higher_receive_count,
            visibility_timeout_rounds_up_to_whole_seconds,
            delete_removes_message_and_stale_receipts_are_lease_expired,
            foreign_and_malformed_receipts_are_invalid,
            receipt_round_trips_through_text,
            change_visibility_extends_and_releases_leases,
            max_receive_count_moves_message_to_dead_letter_queue,
            message_of_another_shape_is_released_then_dead_lettered,
            concurrent_receivers_never_share_a_message,
            cancelled_calls_lose_nothing,
            queue_stats_count_ready_leased_and_dead_letters,
            purge_removes_ready_messages_only,
            health_check_answers_true_when_server_is_up,
            waiting_receive_wakes_within_100ms_of_a_send,
            waiting_receive_returns_empty_after_the_wait,
            waiting_receive_sees_a_lease_that_ran_out,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($backend:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend.await;
                $crate::conformance::$case(&backend).await;
            }
        )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_fleet_cases {
    ($backend:expr, $other_process:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let a = $backend.await;
                let b = ($other_process)(&a).await;
                $crate::conformance::fleet::$case(&a, &b).await;
            }
        )+
    };
}

/// A message of another shape: a poison pill for a `SimpleStepMessage` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotAStep {
    /// Anything that is not a step.
    pub garbage: String,
}

impl QueueMessage for NotAStep {}

/// A fresh queue name for one case, unique across runs and parallel cases.
pub fn unique_queue(case: &str) -> String {
    let case: String = case.chars().take(28).collect();
    format!("cf_{case}_{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A step message with fresh ids.
pub fn step() -> SimpleStepMessage {
    SimpleStepMessage {
        task_uuid: Uuid::new_v4(),
        step_uuid: Uuid::new_v4(),
        ready_dependency_step_uuids: vec![Uuid::new_v4()],
    }
}

async fn fresh_queue(backend: &MessageBackend, case: &str) -> String {
    let queue = unique_queue(case);
    backend
        .create_queue(&queue)
        .await
        .unwrap_or_else(|e| panic!("create_queue({queue}) on {}: {e}", backend.provider()));
    queue
}

fn dead_letter_queue(backend: &MessageBackend, queue: &str) -> String {
    format!(
        "{queue}{}",
        backend.queues_config().dead_letter_queue_suffix
    )
}

async fn receive(
    backend: &MessageBackend,
    queue: &str,
    max: usize,
    lease: Duration,
) -> Vec<QueuedMessage<SimpleStepMessage>> {
    backend
        .receive_messages(queue, max, lease)
        .await
        .unwrap_or_else(|e| panic!("receive_messages({queue}): {e}"))
}

/// Receives until `want` messages arrived or `within` passed (a broker may
/// deliver to its consumer a moment after a send returns).
async fn receive_n(
    backend: &MessageBackend,
    queue: &str,
    want: usize,
    lease: Duration,
    within: Duration,
) -> Vec<QueuedMessage<SimpleStepMessage>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let batch = receive(backend, queue, want - got.len(), lease).await;
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got.extend(batch);
    }
    got
}

async fn receive_one(
    backend: &MessageBackend,
    queue: &str,
    lease: Duration,
) -> QueuedMessage<SimpleStepMessage> {
    let mut got = receive_n(backend, queue, 1, lease, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "expected one message on {queue}");
    got.remove(0)
}

/// Asserts nothing is receivable on `queue` for a short while.
async fn assert_empty_for(backend: &MessageBackend, queue: &str, period: Duration) {
    let got = receive_n(backend, queue, 1, LONG_LEASE, period).await;
    assert!(got.is_empty(), "{queue} delivered {:?}", got[0].message);
}

async fn send(backend: &MessageBackend, queue: &str, message: &SimpleStepMessage) {
    backend
        .send_message(queue, message)
        .await
        .unwrap_or_else(|e| panic!("send_message({queue}): {e}"));
}

async fn ready_count(backend: &MessageBackend, queue: &str) -> u64 {
    backend
        .get_queue_stats(queue)
        .await
        .unwrap_or_else(|e| panic!("get_queue_stats({queue}): {e}"))
        .message_count
}

/// Waits until the ready count of `queue` reaches `want` (brokers count
/// asynchronously), returning the last count seen.
async fn await_ready_count(backend: &MessageBackend, queue: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = ready_count(backend, queue).await;
        if count == want || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cleanup(backend: &MessageBackend, queue: &str) {
    backend
        .delete_queue(queue)
        .await
        .unwrap_or_else(|e| panic!("delete_queue({queue}): {e}"));
}

fn assert_err<T: std::fmt::Debug>(
    result: Result<T, MessagingError>,
    expected: impl Fn(&MessagingError) -> bool,
    what: &str,
) {
    match result {
        Err(e) if expected(&e) => {}
        other => panic!("{what}: unexpected {other:?}"),
    }
}

fn is_invalid_name(e: &MessagingError) -> bool {
    matches!(e, MessagingError::InvalidQueueName { .. })
}

fn is_not_found(e: &MessagingError) -> bool {
    matches!(e, MessagingError::QueueNotFound { .. })
}

fn is_lease_expired(e: &MessagingError) -> bool {
    matches!(e, MessagingError::LeaseExpired { .. })
}

fn is_invalid_receipt(e: &MessagingError) -> bool {
    matches!(e, MessagingError::InvalidReceipt { .. })
}

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

/// C8: receive returns at once with what is available, FIFO, never more than
/// asked.
pub async fn receive_returns_available_messages_at_once_in_fifo_order(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "fifo").await;
    let started = Instant::now();
    assert!(receive(backend, &queue, 10, LEASE).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "receive on an empty queue must not wait ({:?})",
        started.elapsed()
    );
    assert_err(
        backend
            .receive_messages::<SimpleStepMessage>(&queue, 0, LEASE)
            .await,
        |e| matches!(e, MessagingError::InvalidArgument(_)),
        "max_messages = 0",
    );
    let messages: Vec<_> = (0..5).map(|_| step()).collect();
    for m in &messages {
        send(backend, &queue, m).await;
    }
    let first = receive_n(backend, &queue, 3, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 3);
    let rest = receive_n(backend, &queue, 2, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(rest.len(), 2);
    let order: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|m| m.message.clone())
        .collect();
    assert_eq!(order, messages, "FIFO order for one consumer");
    assert!(receive(backend, &queue, 10, LEASE).await.is_empty());
    cleanup(backend, &queue).await;
}

/// C9: a leased message is invisible to other receives until its lease ends.
pub async fn received_message_is_leased_from_other_receivers(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "leased").await;
    send(backend, &queue, &step()).await;
    let held = receive_one(backend, &queue, Duration::from_secs(3)).await;
    assert_empty_for(backend, &queue, Duration::from_millis(1500)).await;
    backend
        .delete_message(&queue, held.receipt())
        .await
        .expect("delete while leased");
    cleanup(backend, &queue).await;
}

/// C11: a consumer that never deletes loses its lease, and the message comes
/// back with `receive_count` 2.
pub async fn dropped_lease_is_redelivered_with_higher_receive_count(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "dropped_lease").await;
    let message = step();
    send(backend, &queue, &message).await;
    let first = receive_one(backend, &queue, LEASE).await;
    assert_eq!(first.metadata.receive_count, 1);
    drop(first); // the consumer "crashes" without deleting
    tokio::time::sleep(LEASE + SLACK).await;
    let again = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(again.message, message);
    assert_eq!(again.metadata.receive_count, 2);
    backend
        .delete_message(&queue, again.receipt())
        .await
        .expect("delete");
    cleanup(backend, &queue).await;
}

/// C10, C11: sub-second visibility timeouts round up to whole seconds.
pub async fn visibility_timeout_rounds_up_to_whole_seconds(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "round_up").await;
    send(backend, &queue, &step()).await;
    let got = receive_one(backend, &queue, Duration::from_millis(100)).await;
    let lease = got.metadata.visibility_timeout_expires - chrono::Utc::now();
    assert!(
        lease > chrono::Duration::milliseconds(500),
        "lease of {lease} not rounded up"
    );
    // Still leased well after 100 ms.
    assert_empty_for(backend, &queue, Duration::from_millis(400)).await;
    tokio::time::sleep(LEASE + SLACK).await;
    let again = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(again.metadata.receive_count, 2);
    cleanup(backend, &queue).await;
}

/// C14: delete removes for good; a receipt whose lease ended is
/// `LeaseExpired` and leaves the message alone.
pub async fn delete_removes_message_and_stale_receipts_are_lease_expired(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "stale_receipt").await;
    send(backend, &queue, &step()).await;
    let got = receive_one(backend, &queue, LONG_LEASE).await;
    backend
        .delete_message(&queue, got.receipt())
        .await
        .expect("delete");
    assert_err(
        backend.delete_message(&queue, got.receipt()).await,
        is_lease_expired,
        "twice",
    );
    assert_empty_for(backend, &queue, Duration::from_millis(300)).await;

    // A lease that expired: its receipt is dead, even once the message is held again.
    let message = step();
    send(backend, &queue, &message).await;
    let stale = receive_one(backend, &queue, LEASE).await;
    tokio::time::sleep(LEASE + SLACK).await;
    assert_err(
        backend.delete_message(&queue, stale.receipt()).await,
        is_lease_expired,
        "expired lease",
    );
    let current = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(
        current.message, message,
        "a stale delete must not remove the message"
    );
    assert_err(
        backend.delete_message(&queue, stale.receipt()).await,
        is_lease_expired,
        "stale receipt while another consumer holds the message",
    );
    backend
        .delete_message(&queue, current.receipt())
        .await
        .expect("the current holder can still delete");
    cleanup(backend, &queue).await;
}

/// C15: a malformed receipt, or one from another queue, is `InvalidReceipt`.
pub async fn foreign_and_malformed_receipts_are_invalid(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "foreign_receipt").await;
    let other = fresh_queue(backend, "foreign_other").await;
    send(backend, &other, &step()).await;
    let foreign = receive_one(backend, &other, LONG_LEASE).await;
    let malformed: Vec<ReceiptHandle> = ["", "garbage", "1:2:3:4:5", "pgmq:q", "rabbitmq:q:x:y"]
        .iter()
        .map(|s| s.parse().expect("infallible"))
        .collect();
    for receipt in malformed.iter().chain([foreign.receipt()]) {
        assert_err(
            backend.delete_message(&queue, receipt).await,
            is_invalid_receipt,
            "delete",
        );
        assert_err(
            backend
                .change_message_visibility(&queue, receipt, LEASE)
                .await,
            is_invalid_receipt,
            "change_message_visibility",
        );
    }
    backend
        .delete_message(&other, foreign.receipt())
        .await
        .expect("the receipt still works on its own queue");
    cleanup(backend, &queue).await;
    cleanup(backend, &other).await;
}

/// C16: receipts survive a trip through text (a store, another process).
pub async fn receipt_round_trips_through_text(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "receipt_text").await;
    send(backend, &queue, &step()).await;
    let got = receive_one(backend, &queue, LONG_LEASE).await;
    let text = got.receipt().to_string();
    let parsed: ReceiptHandle = text.parse().expect("infallible");
    backend
        .delete_message(&queue, &parsed)
        .await
        .expect("delete via parsed receipt");
    assert_empty_for(backend, &queue, Duration::from_millis(300)).await;
    cleanup(backend, &queue).await;
}

/// C14, C17: visibility changes move a live lease; 0 releases at once; a dead
/// lease is `LeaseExpired`.
pub async fn change_visibility_extends_and_releases_leases(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "change_visibility").await;
    send(backend, &queue, &step()).await;
    let got = receive_one(backend, &queue, LEASE).await;
    backend
        .change_message_visibility(&queue, got.receipt(), Duration::from_secs(10))
        .await
        .expect("extend");
    tokio::time::sleep(LEASE + SLACK).await;
    assert_empty_for(backend, &queue, Duration::from_millis(200)).await;

    backend
        .change_message_visibility(&queue, got.receipt(), Duration::ZERO)
        .await
        .expect("release");
    let again = receive_one(backend, &queue, LONG_LEASE).await;
    assert_eq!(again.metadata.receive_count, 2);
    assert_err(
        backend
            .change_message_visibility(&queue, got.receipt(), LEASE)
            .await,
        is_lease_expired,
        "released lease",
    );
    backend
        .delete_message(&queue, again.receipt())
        .await
        .expect("delete");
    assert_err(
        backend
            .change_message_visibility(&queue, again.receipt(), LEASE)
            .await,
        is_lease_expired,
        "deleted message",
    );
    cleanup(backend, &queue).await;
}

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

/// C12: concurrent receivers never hold the same message at once; with
/// leases longer than the work, every message is processed exactly once.
pub async fn concurrent_receivers_never_share_a_message(backend: &MessageBackend) {
    const MESSAGES: usize = 60;
    let queue = fresh_queue(backend, "concurrent").await;
    let messages: Vec<_> = (0..MESSAGES).map(|_| step()).collect();
    backend
        .send_batch(&queue, &messages)
        .await
        .expect("send_batch");

    let receiver = || async {
        let mut seen = Vec::new();
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_millis(500) {
            let batch = receive(backend, &queue, 3, LONG_LEASE).await;
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            idle_since = Instant::now();
            for m in batch {
                backend
                    .delete_message(&queue, m.receipt())
                    .await
                    .expect("delete");
                seen.push(m.message.step_uuid);
            }
        }
        seen
    };
    let (a, b, c, d) = tokio::join!(receiver(), receiver(), receiver(), receiver());
    let seen: Vec<Uuid> = [a, b, c, d].into_iter().flatten().collect();
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message was processed twice");
    let expected: HashSet<_> = messages.iter().map(|m| &m.step_uuid).collect();
    assert_eq!(unique, expected, "every message processed");
    cleanup(backend, &queue).await;
}

/// Runs `call`, abandoning it (dropping its future) after `yields` scheduler
/// yields if it has not finished: a caller that times out or is cancelled.
async fn abandon_after<F: std::future::Future>(yields: usize, call: F) -> Option<F::Output> {
    let give_up = async {
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        biased;
        output = call => Some(output),
        () = give_up => None,
    }
}

/// C13: at-least-once under cancellation: callers dropping sends and deletes at
/// any await lose no confirmed message, leave later calls working, and a
/// delete that returned `Ok` stays deleted.
pub async fn cancelled_calls_lose_nothing(backend: &MessageBackend) {
    const MESSAGES: usize = 40;
    let queue = fresh_queue(backend, "cancelled").await;
    let messages: Vec<_> = (0..MESSAGES).map(|_| step()).collect();
    // Concurrent sends, every other one abandoned after 0-3 yields.
    let sends = messages.iter().enumerate().map(|(i, message)| {
        let call = backend.send_message(&queue, message);
        async move {
            let outcome = if i % 2 == 0 {
                abandon_after(i / 2 % 4, call).await
            } else {
                Some(call.await)
            };
            (message.step_uuid, outcome)
        }
    });
    let outcomes = futures_join_all(sends).await;
    let confirmed: HashSet<Uuid> = outcomes
        .iter()
        .filter_map(|(id, outcome)| match outcome {
            Some(Ok(_)) => Some(*id),
            Some(Err(e)) => panic!("send_message({queue}) failed: {e}"),
            None => None,
        })
        .collect();
    assert!(
        confirmed.len() >= MESSAGES / 2,
        "the sends left alone all finish"
    );
    // The publisher still works after the abandoned sends.
    let after = step();
    send(backend, &queue, &after).await;

    // Receive everything; abandon every other delete after 0-3 yields.
    let got = receive_until_idle(backend, &queue).await;
    let seen: HashSet<Uuid> = got.iter().map(|m| m.message.step_uuid).collect();
    for id in confirmed.iter().chain([&after.step_uuid]) {
        assert!(seen.contains(id), "confirmed message {id} was lost");
    }
    let mut deleted = HashSet::new();
    for (i, m) in got.iter().enumerate() {
        let call = backend.delete_message(&queue, m.receipt());
        let outcome = if i % 2 == 0 {
            abandon_after(i / 2 % 4, call).await
        } else {
            Some(call.await)
        };
        match outcome {
            Some(Ok(())) => {
                deleted.insert(m.message.step_uuid);
            }
            Some(Err(e)) => panic!("delete_message({queue}) failed: {e}"),
            None => {}
        }
    }
    // Release what is left: a message an abandoned delete did not remove
    // comes back; one a finished delete removed never does.
    for m in &got {
        match backend
            .change_message_visibility(&queue, m.receipt(), Duration::ZERO)
            .await
        {
            Ok(()) => {}
            Err(e) if is_lease_expired(&e) => {}
            Err(e) => panic!("change_message_visibility({queue}) failed: {e}"),
        }
    }
    let again = receive_until_idle(backend, &queue).await;
    for m in &again {
        assert!(
            !deleted.contains(&m.message.step_uuid),
            "a deleted message came back"
        );
    }
    cleanup(backend, &queue).await;
}

/// Receives (long leases) until the queue has been empty for a moment.
async fn receive_until_idle(
    backend: &MessageBackend,
    queue: &str,
) -> Vec<QueuedMessage<SimpleStepMessage>> {
    let mut got = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < SLACK {
        let batch = receive(backend, queue, 10, LONG_LEASE).await;
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            idle_since = Instant::now();
            got.extend(batch);
        }
    }
    got
}

/// Awaits every future concurrently, in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

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
    // moves to the dead-letter queue after max_receive_count of them.
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        rest.extend(receive(backend, &queue, 10, LONG_LEASE).await);
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

/// C24: a waiting receive returns within 100 ms of a send from another task.
pub async fn waiting_receive_wakes_within_100ms_of_a_send(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "wait_wakes").await;
    // Let any per-queue machinery (a consumer, a listener) settle first.
    let warm_up: Vec<QueuedMessage<SimpleStepMessage>> = backend
        .receive_messages_wait(&queue, 1, LONG_LEASE, Duration::from_millis(300))
        .await
        .expect("warm-up wait");
    assert!(warm_up.is_empty());
    let message = step();
    let waiter = async {
        let got: Vec<QueuedMessage<SimpleStepMessage>> = backend
            .receive_messages_wait(&queue, 10, LONG_LEASE, Duration::from_secs(10))
            .await
            .expect("waiting receive");
        (got, Instant::now())
    };
    let sender = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(backend, &queue, &message).await;
        Instant::now()
    };
    let ((got, woke), sent) = tokio::join!(waiter, sender);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, message);
    let latency = woke.saturating_duration_since(sent);
    assert!(
        latency < Duration::from_millis(100),
        "woke {latency:?} after the send returned"
    );
    cleanup(backend, &queue).await;
}

/// C25: a waiting receive on an idle queue returns empty once `wait` has
/// passed.
pub async fn waiting_receive_returns_empty_after_the_wait(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "wait_idle").await;
    let wait = Duration::from_millis(700);
    let started = Instant::now();
    let got: Vec<QueuedMessage<SimpleStepMessage>> = backend
        .receive_messages_wait(&queue, 10, LONG_LEASE, wait)
        .await
        .expect("waiting receive");
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(waited >= wait, "returned after {waited:?}, before the wait");
    assert!(
        waited < wait + Duration::from_millis(700),
        "overslept: {waited:?}"
    );
    cleanup(backend, &queue).await;
}

/// C26: a waiting receive sees a message whose lease ran out while it waited.
pub async fn waiting_receive_sees_a_lease_that_ran_out(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "wait_lease").await;
    let message = step();
    send(backend, &queue, &message).await;
    let first = receive_one(backend, &queue, LEASE).await;
    let got: Vec<QueuedMessage<SimpleStepMessage>> = backend
        .receive_messages_wait(&queue, 10, LONG_LEASE, Duration::from_secs(5))
        .await
        .expect("waiting receive");
    assert_eq!(
        got.len(),
        1,
        "the expired lease's message comes back within the wait"
    );
    assert_eq!(got[0].message, message);
    assert_eq!(
        got[0].metadata.receive_count,
        first.metadata.receive_count + 1
    );
    cleanup(backend, &queue).await;
}

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

mod cancels;
mod close;
mod dead_letters;
mod delay;
mod drops;
pub mod fleet;
mod headers;
mod leases;
mod queues;
mod send;
mod settle;
mod stats;
mod wait;

pub use close::*;
pub use dead_letters::*;
pub use delay::*;
pub use drops::*;
pub use headers::*;
pub use leases::*;
pub use queues::*;
pub use send::*;
pub use settle::*;
pub use stats::*;
pub use wait::*;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    MessageBackend, MessagingError, MessagingService, QueuedMessage, ReceiptHandle,
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
            held_deliveries_reach_another_process_within_the_bound,
            a_recreated_queue_gets_nothing_another_process_held,
            released_and_expired_leases_reach_every_process,
            receive_count_counts_hand_outs_across_processes,
            two_processes_share_a_drain,
            waiting_receive_wakes_on_another_process_send,
            one_process_holds_many_leases,
            purge_spares_other_processes_leases,
            batch_settle_spares_other_processes_leases,
            a_fleet_keeps_up_with_a_trickle_of_sends,
            a_receipt_used_in_another_process_spares_that_process_lease,
            cancelled_calls_never_undo_other_calls,
        );
        $crate::__conformance_pair_cases!($backend, $other_process;
            close_keeps_settles_and_refuses_later_calls,
            a_delayed_message_reaches_another_process_when_due,
        );
        $crate::__conformance_wide_fleet_cases!($backend, $other_process;
            a_fleet_drains_with_bulk_receives,
        );
        $crate::__conformance_cases!($backend;
            queue_names_are_validated_before_io,
            create_queue_refuses_names_ending_in_the_dead_letter_suffix,
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
            receipts_from_before_a_queue_was_recreated_are_lease_expired,
            receipt_round_trips_through_text,
            change_visibility_extends_and_releases_leases,
            a_released_message_is_received_at_once_without_waiting,
            delete_messages_settles_each_receipt_on_its_own,
            max_receive_count_moves_message_to_dead_letter_queue,
            expired_last_lease_moves_message_to_dead_letter_queue,
            message_of_another_shape_is_released_then_dead_lettered,
            a_receive_of_one_that_meets_another_shape_first_returns_nothing,
            a_rolling_deploy_hands_newer_messages_to_the_newer_worker,
            concurrent_receivers_never_share_a_message,
            cancelled_calls_lose_nothing,
            dropped_receives_strand_nothing,
            dropped_put_backs_leave_one_copy,
            queue_stats_count_ready_leased_and_dead_letters,
            purge_removes_ready_messages_only,
            health_check_answers_true_when_server_is_up,
            waiting_receive_wakes_within_100ms_of_a_send,
            waiting_receive_returns_empty_after_the_wait,
            waiting_receive_sees_a_lease_that_ran_out,
            waiting_receive_sees_what_reaches_the_old_side,
            headers_round_trip_on_send_and_batch,
            header_keys_are_checked_before_io,
            headers_count_toward_the_size_limit,
            headers_survive_dead_lettering_and_other_shapes,
            headers_survive_move_messages,
            a_delayed_message_is_received_only_after_its_due_time,
            the_delay_limits_are_stated_and_enforced,
            a_zero_delay_is_a_plain_send,
            a_deleted_queue_s_delayed_messages_hold_up_no_other_queue,
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
macro_rules! __conformance_pair_cases {
    ($backend:expr, $other_process:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let a = $backend.await;
                let b = ($other_process)(&a).await;
                $crate::conformance::$case(&a, &b).await;
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

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_wide_fleet_cases {
    ($backend:expr, $other_process:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let a = $backend.await;
                let mut others = Vec::new();
                for _ in 1..$crate::conformance::fleet::FLEET {
                    others.push(($other_process)(&a).await);
                }
                $crate::conformance::fleet::$case(&a, &others).await;
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

/// Awaits every future concurrently, in order.
pub(super) async fn join_all<F: std::future::Future>(
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

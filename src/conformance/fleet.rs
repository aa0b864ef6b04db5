//! Several processes on one queue: each case takes two independently
//! connected backends, `a` and `b`, standing for two worker processes (for
//! the in-memory provider, two clones: its only way to share queues).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

// In a file of its own for its size; a fleet case (B reads what A did).
pub use super::cancels::cancelled_calls_never_undo_other_calls;

use super::{
    cleanup, fresh_queue, receive, receive_n, receive_one, send, step, LEASE, LONG_LEASE, SLACK,
};
use crate::{
    MessageBackend, MessagingError, MessagingService, QueuedMessage, ReceiptHandle,
    SimpleStepMessage,
};

/// Leases one process holds at once in [`one_process_holds_many_leases`]:
/// three times the RabbitMQ `prefetch_count` the project's suite configures.
pub const MANY_LEASES: usize = 150;

/// Processes in the cases that take a whole fleet (`a` and the others):
/// one receiver each, as in a deployment of single-worker processes.
pub const FLEET: usize = 6;

fn uuids(got: &[QueuedMessage<SimpleStepMessage>]) -> Vec<Uuid> {
    got.iter().map(|m| m.message.step_uuid).collect()
}

/// C27: ready messages that no lease holds can be received by every process: A
/// takes 1 of 10, and B's next receive of 10 returns the other 9.
pub async fn ready_messages_reach_every_process(a: &MessageBackend, b: &MessageBackend) {
    let queue = fresh_queue(a, "fleet_ready").await;
    let sent: Vec<SimpleStepMessage> = (0..10).map(|_| step()).collect();
    a.send_batch(&queue, &sent).await.expect("send_batch");
    let first = receive_one(a, &queue, LONG_LEASE).await;
    let rest = receive(b, &queue, 10, LONG_LEASE).await;
    assert_eq!(
        rest.len(),
        9,
        "B's receive returns every message A does not hold"
    );
    let mut all = uuids(&rest);
    all.push(first.message.step_uuid);
    let expected: HashSet<Uuid> = sent.iter().map(|m| m.step_uuid).collect();
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), expected);
    cleanup(a, &queue).await;
}

/// The longest a process may hold a delivery no caller asked for (C27).
pub const HOLD_BOUND: Duration = Duration::from_millis(100);

/// C27, C28: a process holds a delivery no caller asked for at most
/// [`HOLD_BOUND`]. A's waiting receive of 10 finds 1 and A stops asking;
/// the 5 sent next reach B's waiting receive within the bound (and the
/// case's slack for a loaded machine), each with `receive_count` 1: what A
/// held was never handed out.
pub async fn held_deliveries_reach_another_process_within_the_bound(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    let queue = fresh_queue(a, "fleet_held").await;
    send(a, &queue, &step()).await;
    let first = a
        .receive_messages_wait::<SimpleStepMessage>(&queue, 10, LONG_LEASE, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1, "A's waiting receive finds the one message");
    let sent: Vec<SimpleStepMessage> = (0..5).map(|_| step()).collect();
    a.send_batch(&queue, &sent).await.expect("send_batch");
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < sent.len() && started.elapsed() < Duration::from_secs(5) {
        let wait = Duration::from_secs(1);
        got.extend(
            b.receive_messages_wait::<SimpleStepMessage>(&queue, 10, LONG_LEASE, wait)
                .await
                .expect("receive"),
        );
    }
    let took = started.elapsed();
    let expected: HashSet<Uuid> = sent.iter().map(|m| m.step_uuid).collect();
    assert_eq!(uuids(&got).into_iter().collect::<HashSet<_>>(), expected);
    assert!(
        got.iter().all(|m| m.metadata.receive_count == 1),
        "held, never handed out: {:?}",
        got.iter()
            .map(|m| m.metadata.receive_count)
            .collect::<Vec<_>>()
    );
    assert!(
        took < HOLD_BOUND + SLACK,
        "B received what A did not ask for after {took:?}"
    );
    cleanup(a, &queue).await;
}

/// C27: what a process held of a queue that another process deleted and
/// created again under the same name stays gone: A's waiting receive of 10
/// takes 1, 9 more arrive (A may hold them), B deletes and re-creates the
/// queue; past the hold bound, the new queue is empty.
pub async fn a_recreated_queue_gets_nothing_another_process_held(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    let queue = fresh_queue(a, "fleet_recreated").await;
    send(a, &queue, &step()).await;
    let first = a
        .receive_messages_wait::<SimpleStepMessage>(&queue, 10, LONG_LEASE, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    let more: Vec<SimpleStepMessage> = (0..9).map(|_| step()).collect();
    b.send_batch(&queue, &more).await.expect("send_batch");
    b.delete_queue(&queue).await.expect("delete_queue");
    b.create_queue(&queue).await.expect("create_queue");
    tokio::time::sleep(HOLD_BOUND + SLACK).await;
    let got = receive(b, &queue, 10, LONG_LEASE).await;
    assert!(got.is_empty(), "{} deleted messages came back", got.len());
    cleanup(a, &queue).await;
}

/// C11, C17: a release with visibility 0, or a lease that ran out, makes the
/// message receivable at once by any process, the one that let it go included,
/// with `receive_count` one higher.
pub async fn released_and_expired_leases_reach_every_process(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    assert!(
        a.queues_config().max_receive_count >= 2,
        "this case needs max_receive_count >= 2"
    );
    let queue = fresh_queue(a, "fleet_release").await;
    // Released, then received again at once by the same process.
    hand_back(&queue, a, a, Some(Duration::ZERO), "same process, at once").await;
    // Released, then received at once by the other process.
    hand_back(&queue, a, b, Some(Duration::ZERO), "other process, at once").await;
    // A lease that ran out, then received by the other process.
    hand_back(&queue, a, b, None, "after the lease ran out").await;
    cleanup(a, &queue).await;
}

/// Sends a message, lets `holder` receive it and give it back (a release with
/// visibility `release`, or with `None` a 1 s lease that runs out), then
/// checks that `receiver` gets it at once with `receive_count` one higher,
/// and deletes it.
async fn hand_back(
    queue: &str,
    holder: &MessageBackend,
    receiver: &MessageBackend,
    release: Option<Duration>,
    what: &str,
) {
    let message = step();
    send(holder, queue, &message).await;
    let held = match release {
        Some(visibility) => {
            let held = receive_one(holder, queue, LONG_LEASE).await;
            holder
                .change_message_visibility(queue, held.receipt(), visibility)
                .await
                .expect("release");
            held
        }
        None => {
            let held = receive_one(holder, queue, LEASE).await;
            // Timed from the lease's end as the provider stated it.
            let left = (held.metadata.visibility_timeout_expires - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::time::sleep(left + SLACK).await;
            held
        }
    };
    let mut got = receive(receiver, queue, 10, LONG_LEASE).await;
    if got.is_empty() {
        // One look can land in a scheduling stall (a RabbitMQ lease ends on
        // a timer task): measured once more, after the slack, before failing.
        println!("{what}: not receivable at once; looking once more");
        tokio::time::sleep(SLACK).await;
        got = receive(receiver, queue, 10, LONG_LEASE).await;
    }
    assert_eq!(uuids(&got), vec![message.step_uuid], "{what}");
    assert_eq!(
        got[0].metadata.receive_count,
        held.metadata.receive_count + 1,
        "{what}"
    );
    receiver
        .delete_message(queue, got[0].receipt())
        .await
        .expect("delete");
}

/// Records `message` as handled by `who`, failing if any receiver handled it
/// before, then deletes it.
async fn handle_once(
    process: &MessageBackend,
    queue: &str,
    seen: &Mutex<HashSet<Uuid>>,
    message: &QueuedMessage<SimpleStepMessage>,
    who: &str,
) {
    let fresh = crate::sync::lock(seen).insert(message.message.step_uuid);
    assert!(fresh, "{who} handled {:?} a second time", message.message);
    process
        .delete_message(queue, message.receipt())
        .await
        .expect("delete");
}

/// C28: `receive_count` counts hand-outs to callers across processes: after A's
/// lease runs out B sees 2, and messages no caller was handed still show 1,
/// however A received and deleted around them.
pub async fn receive_count_counts_hand_outs_across_processes(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    let queue = fresh_queue(a, "fleet_count").await;
    let sent: Vec<SimpleStepMessage> = (0..6).map(|_| step()).collect();
    a.send_batch(&queue, &sent).await.expect("send_batch");
    let done = receive_one(a, &queue, LONG_LEASE).await;
    assert_eq!(done.metadata.receive_count, 1);
    a.delete_message(&queue, done.receipt())
        .await
        .expect("delete");
    let dropped = receive_one(a, &queue, LEASE).await;
    assert_eq!(dropped.metadata.receive_count, 1);
    tokio::time::sleep(LEASE + SLACK).await;
    let rest = receive_n(b, &queue, 5, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(rest.len(), 5);
    for message in &rest {
        let expected = if message.message == dropped.message {
            2
        } else {
            1
        };
        assert_eq!(
            message.metadata.receive_count, expected,
            "receive_count of {:?}",
            message.message.step_uuid
        );
    }
    cleanup(a, &queue).await;
}

/// C12, C30: two processes drain 300 messages with a little work each: every
/// message is handled exactly once, and each process handles at least a third.
pub async fn two_processes_share_a_drain(a: &MessageBackend, b: &MessageBackend) {
    const MESSAGES: usize = 300;
    let queue = fresh_queue(a, "fleet_drain").await;
    let sent: Vec<SimpleStepMessage> = (0..MESSAGES).map(|_| step()).collect();
    for chunk in sent.chunks(100) {
        a.send_batch(&queue, chunk).await.expect("send_batch");
    }
    let handled = AtomicUsize::new(0);
    let seen = Mutex::new(HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker = |backend: &'static str, process: &MessageBackend| {
        let (queue, handled, seen) = (&queue, &handled, &seen);
        let process = process.clone();
        async move {
            let mut mine = 0_usize;
            while handled.load(Ordering::SeqCst) < MESSAGES && Instant::now() < deadline {
                let got = receive(&process, queue, 1, LONG_LEASE).await;
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for message in got {
                    // The work: a few milliseconds per message.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    handle_once(&process, queue, seen, &message, backend).await;
                    handled.fetch_add(1, Ordering::SeqCst);
                    mine += 1;
                }
            }
            mine
        }
    };
    let (from_a, from_b) = tokio::join!(worker("A", a), worker("B", b));
    assert_eq!(from_a + from_b, MESSAGES, "A {from_a} + B {from_b}");
    for (name, count) in [("A", from_a), ("B", from_b)] {
        assert!(
            count >= MESSAGES / 3,
            "process {name} handled {count} of {MESSAGES}: the other one hoarded"
        );
    }
    cleanup(a, &queue).await;
}

/// C24: B, waiting in `receive_messages_wait`, wakes within 100 ms of A's send.
pub async fn waiting_receive_wakes_on_another_process_send(a: &MessageBackend, b: &MessageBackend) {
    super::wait::assert_wakes_on_send(a, b).await;
}

/// C9, C29: one process holds [`MANY_LEASES`] leases at once, more than any
/// prefetch window, while the other sees nothing ready.
pub async fn one_process_holds_many_leases(a: &MessageBackend, b: &MessageBackend) {
    let queue = fresh_queue(a, "fleet_many").await;
    let sent: Vec<SimpleStepMessage> = (0..MANY_LEASES).map(|_| step()).collect();
    for chunk in sent.chunks(50) {
        a.send_batch(&queue, chunk).await.expect("send_batch");
    }
    let mut held = Vec::new();
    while held.len() < MANY_LEASES {
        let got = receive(a, &queue, 10, LONG_LEASE).await;
        assert_eq!(
            got.len(),
            10,
            "holding {} leases, a receive of 10 got {}",
            held.len(),
            got.len()
        );
        held.extend(got);
    }
    assert!(receive(b, &queue, 10, LONG_LEASE).await.is_empty());
    let distinct: HashSet<Uuid> = uuids(&held).into_iter().collect();
    assert_eq!(distinct.len(), MANY_LEASES);
    for message in &held {
        a.delete_message(&queue, message.receipt())
            .await
            .expect("every lease is live");
    }
    cleanup(a, &queue).await;
}

/// C22: `purge_queue`, run while another process holds leases, removes only the
/// ready messages, and never one sent after it returned.
pub async fn purge_spares_other_processes_leases(a: &MessageBackend, b: &MessageBackend) {
    let queue = fresh_queue(a, "fleet_purge").await;
    let sent: Vec<SimpleStepMessage> = (0..5).map(|_| step()).collect();
    a.send_batch(&queue, &sent).await.expect("send_batch");
    let held = receive_n(b, &queue, 2, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 2);
    let purged = a.purge_queue(&queue).await.expect("purge_queue");
    assert_eq!(purged, 3, "only the ready messages are purged");
    let late = step();
    send(a, &queue, &late).await;
    let got = receive_n(b, &queue, 1, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(uuids(&got), vec![late.step_uuid], "a later send survives");
    for message in held.iter().chain(&got) {
        b.delete_message(&queue, message.receipt())
            .await
            .expect("leases survive another process's purge");
    }
    cleanup(a, &queue).await;
}

/// C14, C32: a batch settle in one process never touches what another holds:
/// A's receipts whose leases ran out, their messages now held by B, are
/// `LeaseExpired` while A's live one in the same batch is deleted, and B's
/// leases all settle afterwards.
pub async fn batch_settle_spares_other_processes_leases(a: &MessageBackend, b: &MessageBackend) {
    let queue = fresh_queue(a, "fleet_batch_settle").await;
    let sent: Vec<SimpleStepMessage> = (0..6).map(|_| step()).collect();
    a.send_batch(&queue, &sent).await.expect("send_batch");
    let lapsed = receive_n(a, &queue, 3, LEASE, Duration::from_secs(5)).await;
    assert_eq!(lapsed.len(), 3);
    tokio::time::sleep(LEASE + SLACK).await;
    let held = receive_n(b, &queue, 5, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 5, "B holds the lapsed three and two more");
    let live = receive_one(a, &queue, LONG_LEASE).await;

    let batch: Vec<ReceiptHandle> = lapsed
        .iter()
        .chain([&live])
        .map(|m| m.receipt().clone())
        .collect();
    let outcomes = a
        .delete_messages(&queue, &batch)
        .await
        .expect("delete_messages");
    assert!(
        matches!(
            outcomes.as_slice(),
            [
                Err(MessagingError::LeaseExpired { .. }),
                Err(MessagingError::LeaseExpired { .. }),
                Err(MessagingError::LeaseExpired { .. }),
                Ok(()),
            ]
        ),
        "A's lapsed receipts, then its live one: {outcomes:?}"
    );
    let batch: Vec<ReceiptHandle> = held.iter().map(|m| m.receipt().clone()).collect();
    for outcome in b
        .delete_messages(&queue, &batch)
        .await
        .expect("delete_messages")
    {
        outcome.expect("B's leases survive A's stale batch");
    }
    assert!(receive(a, &queue, 10, LONG_LEASE).await.is_empty());
    cleanup(a, &queue).await;
}

/// C12, C28: four receivers in two processes take messages sent in a steady
/// trickle, mixing plain and waiting receives: every message is received, none
/// twice, and none is dead-lettered. A hand-out no caller saw is counted for
/// no message where `exact_receive_count` holds, and for at most 1 in 100
/// where it does not: the RabbitMQ race CONTRACT.md states under C28
/// (measured at about 1 in 2,000).
pub async fn a_fleet_keeps_up_with_a_trickle_of_sends(a: &MessageBackend, b: &MessageBackend) {
    const MESSAGES: usize = 1_500;
    let queue = fresh_queue(a, "fleet_trickle").await;
    let seen = Mutex::new(HashSet::new());
    let recounted = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let receiver = |n: usize, process: &MessageBackend| {
        let (queue, seen, recounted, process) = (&queue, &seen, &recounted, process.clone());
        async move {
            while crate::sync::lock(seen).len() < MESSAGES && Instant::now() < deadline {
                let got: Vec<QueuedMessage<SimpleStepMessage>> = if n % 2 == 0 {
                    receive(&process, queue, 10, LONG_LEASE).await
                } else {
                    process
                        .receive_messages_wait(queue, 7, LONG_LEASE, Duration::from_millis(50))
                        .await
                        .expect("waiting receive")
                };
                if got.is_empty() {
                    // Let the sender run (an in-memory receive never waits).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for message in got {
                    if message.metadata.receive_count > 1 {
                        recounted.fetch_add(1, Ordering::Relaxed);
                    }
                    handle_once(&process, queue, seen, &message, "a receiver").await;
                }
            }
        }
    };
    let sender = async {
        for _ in 0..MESSAGES / 3 {
            let batch: Vec<SimpleStepMessage> = (0..3).map(|_| step()).collect();
            a.send_batch(&queue, &batch).await.expect("send_batch");
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
    };
    tokio::join!(
        sender,
        receiver(0, a),
        receiver(1, a),
        receiver(2, b),
        receiver(3, b)
    );
    let received = crate::sync::lock(&seen).len();
    assert_eq!(received, MESSAGES);
    let recounted = recounted.into_inner();
    println!("trickle: {recounted} of {MESSAGES} came back counted without a hand-out");
    let tolerance = if a.capabilities().exact_receive_count {
        0
    } else {
        MESSAGES / 100
    };
    assert!(
        recounted <= tolerance,
        "{recounted} of {MESSAGES} messages came back counted without a hand-out \
         (allowed: {tolerance})"
    );
    let stats = a.get_queue_stats(&queue).await.expect("stats");
    assert_eq!(stats.dead_letter_count, Some(0), "nothing dead-lettered");
    cleanup(a, &queue).await;
}

/// C16: a receipt used in another process settles the lease it names where
/// receipts are portable (`Capabilities::portable_receipts`) and is
/// otherwise `LeaseExpired`; either way it never touches a lease that
/// process holds. A and B each hold one message (receipts of the same shape:
/// first delivery of each), and B uses A's receipt with every settling call.
/// A backend that is not portable throughout (a migrating one) may honour
/// it, but then it must truly have settled A's message.
pub async fn a_receipt_used_in_another_process_spares_that_process_lease(
    a: &MessageBackend,
    b: &MessageBackend,
) {
    let queue = fresh_queue(a, "fleet_foreign_receipt").await;
    a.send_batch(&queue, &[step(), step()])
        .await
        .expect("send_batch");
    let of_a = receive_one(a, &queue, LONG_LEASE).await;
    let of_b = receive_one(b, &queue, LONG_LEASE).await;
    let foreign = of_a.receipt();
    let portable = b.capabilities().portable_receipts;

    let extended = b
        .change_message_visibility(&queue, foreign, LONG_LEASE)
        .await;
    let deleted = b
        .delete_messages(&queue, std::slice::from_ref(foreign))
        .await
        .expect("delete_messages")
        .remove(0);
    for outcome in [&extended, &deleted] {
        assert!(
            matches!(outcome, Ok(()) | Err(MessagingError::LeaseExpired { .. })),
            "A's receipt in B: {outcome:?}"
        );
    }
    if portable {
        assert!(
            extended.is_ok() && deleted.is_ok(),
            "portable receipts settle from any process: {extended:?}, {deleted:?}"
        );
    }
    assert_eq!(
        extended.is_ok(),
        deleted.is_ok(),
        "B honours A's receipt for every call or for none: {extended:?}, {deleted:?}"
    );
    // Settled or never honoured: the receipt is dead in B from now on.
    for outcome in [
        b.delete_message(&queue, foreign).await,
        b.change_message_visibility(&queue, foreign, Duration::ZERO)
            .await,
    ] {
        assert!(
            matches!(outcome, Err(MessagingError::LeaseExpired { .. })),
            "A's receipt used again in B: {outcome:?}"
        );
    }
    b.delete_message(&queue, of_b.receipt())
        .await
        .expect("B's own lease survives A's receipt");
    let in_a = a.delete_message(&queue, foreign).await;
    if deleted.is_ok() {
        assert!(
            matches!(in_a, Err(MessagingError::LeaseExpired { .. })),
            "B reported A's message deleted, yet A's lease lived on: {in_a:?}"
        );
    } else {
        in_a.expect("A's lease is untouched by B's refusal");
    }
    assert!(
        receive(a, &queue, 10, LONG_LEASE).await.is_empty(),
        "both messages are settled for good"
    );
    cleanup(a, &queue).await;
}

/// C8, C28: one receiver in each of [`FLEET`] processes takes 1,000 messages,
/// 10 per receive, half of them queued before the receivers start and the
/// rest sent in batches of 20 meanwhile, with leases none outlives. A
/// receive made while at least 10 messages per receiver were surely ready
/// (sent before it began, and no more than one receive's worth held by each
/// other receiver) returns 10. A message no caller was handed before shows
/// `receive_count` 1, but for the RabbitMQ race CONTRACT.md states under
/// C28 (tolerated here for 1 message in 500).
pub async fn a_fleet_drains_with_bulk_receives(a: &MessageBackend, others: &[MessageBackend]) {
    const MESSAGES: usize = 1_000;
    const MAX: usize = 10;
    const RECEIVERS: usize = FLEET;
    let queue = fresh_queue(a, "fleet_bulk").await;
    let seen = Mutex::new(HashSet::new());
    let (sent, handled) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (recounted, checked) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let short = Mutex::new(Vec::new());
    // Half is queued before the receivers start, so that the rule on short
    // receives applies from the first receive on; the rest arrives meanwhile.
    let send_twenty = || async {
        let batch: Vec<SimpleStepMessage> = (0..20).map(|_| step()).collect();
        a.send_batch(&queue, &batch).await.expect("send_batch");
        sent.fetch_add(batch.len(), Ordering::SeqCst);
    };
    for _ in 0..MESSAGES / 40 {
        send_twenty().await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let receiver = |process: &MessageBackend| {
        let (queue, seen, sent, handled) = (&queue, &seen, &sent, &handled);
        let (recounted, checked) = (&recounted, &checked);
        let (short, process) = (&short, process.clone());
        async move {
            while handled.load(Ordering::SeqCst) < MESSAGES && Instant::now() < deadline {
                let stored = sent.load(Ordering::SeqCst);
                let got = receive(&process, queue, MAX, LONG_LEASE).await;
                // Handled after the receive: no more were at any point during
                // it, and each other receiver held one receive's worth at most.
                let ready = stored.saturating_sub(handled.load(Ordering::SeqCst));
                if ready >= RECEIVERS * MAX {
                    checked.fetch_add(1, Ordering::Relaxed);
                    if got.len() < MAX {
                        crate::sync::lock(short).push((got.len(), ready));
                    }
                }
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for message in &got {
                    if message.metadata.receive_count > 1 {
                        recounted.fetch_add(1, Ordering::Relaxed);
                    }
                    let fresh = crate::sync::lock(seen).insert(message.message.step_uuid);
                    assert!(fresh, "{:?} was handed out twice", message.message);
                }
                let receipts: Vec<ReceiptHandle> =
                    got.iter().map(|m| m.receipt().clone()).collect();
                for outcome in process
                    .delete_messages(queue, &receipts)
                    .await
                    .expect("delete_messages")
                {
                    outcome.expect("a live lease deletes");
                }
                handled.fetch_add(got.len(), Ordering::SeqCst);
            }
        }
    };
    let sender = async {
        for _ in 0..MESSAGES / 40 {
            send_twenty().await;
        }
    };
    let receivers: Vec<_> = std::iter::once(a).chain(others).map(receiver).collect();
    tokio::join!(sender, super::join_all(receivers));
    assert_eq!(crate::sync::lock(&seen).len(), MESSAGES);
    let recounted = recounted.into_inner();
    let short = short.into_inner().unwrap_or_else(|p| p.into_inner());
    let checked = checked.into_inner();
    println!(
        "bulk drain: {recounted} of {MESSAGES} came back counted without a hand-out; \
         {checked} receives while at least {} were surely ready, short ones (got, ready): {short:?}",
        RECEIVERS * MAX
    );
    assert!(
        checked >= RECEIVERS,
        "only {checked} receives ran while {} were surely ready: the rule on short receives went untested",
        RECEIVERS * MAX
    );
    assert!(
        recounted <= MESSAGES / 500,
        "{recounted} of {MESSAGES} messages came back counted without a hand-out"
    );
    assert!(
        short.is_empty(),
        "receives returned less than {MAX} while more were surely ready: {short:?}"
    );
    cleanup(a, &queue).await;
}

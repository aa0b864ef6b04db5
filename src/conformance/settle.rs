//! Settling a batch at once: `delete_messages`.

use super::*;

/// What one receipt of a batch should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Deleted,
    LeaseExpired,
    InvalidReceipt,
}

fn outcome(result: &Result<(), MessagingError>) -> Option<Expect> {
    match result {
        Ok(()) => Some(Expect::Deleted),
        Err(e) if is_lease_expired(e) => Some(Expect::LeaseExpired),
        Err(e) if is_invalid_receipt(e) => Some(Expect::InvalidReceipt),
        Err(_) => None,
    }
}

/// Deletes `batch` on `queue` and asserts each receipt's outcome.
async fn assert_settles(backend: &MessageBackend, queue: &str, batch: &[(&ReceiptHandle, Expect)]) {
    let receipts: Vec<ReceiptHandle> = batch.iter().map(|(r, _)| (*r).clone()).collect();
    let outcomes = backend
        .delete_messages(queue, &receipts)
        .await
        .unwrap_or_else(|e| panic!("delete_messages({queue}) on {}: {e}", backend.provider()));
    assert_eq!(outcomes.len(), batch.len(), "one outcome per receipt");
    for (i, ((receipt, want), got)) in batch.iter().zip(&outcomes).enumerate() {
        assert_eq!(
            outcome(got),
            Some(*want),
            "receipt {i} ({receipt}) on {}: {got:?}",
            backend.provider()
        );
    }
}

/// C32, C4: `delete_messages` gives each receipt of a mixed batch what
/// `delete_message` would: live leases are deleted for good, a receipt whose
/// lease ran out (its message held again under a new lease), one already
/// used and one given twice are `LeaseExpired` and touch nothing, foreign
/// and malformed ones are `InvalidReceipt`. An empty batch does no I/O; on a
/// missing queue the call is `QueueNotFound`.
pub async fn delete_messages_settles_each_receipt_on_its_own(backend: &MessageBackend) {
    let queue = fresh_queue(backend, "batch_settle").await;
    let other = fresh_queue(backend, "batch_settle_other").await;
    let sent: Vec<_> = (0..5).map(|_| step()).collect();
    backend.send_batch(&queue, &sent).await.expect("send_batch");
    send(backend, &other, &step()).await;
    let foreign = receive_one(backend, &other, LONG_LEASE).await;

    // The first message's first lease runs out, and it is received again.
    let expired = receive_one(backend, &queue, LEASE).await;
    tokio::time::sleep(LEASE + SLACK).await;
    let live = receive_n(backend, &queue, 5, LONG_LEASE, Duration::from_secs(5)).await;
    assert_eq!(live.len(), 5, "every message is leased");
    let again = live
        .iter()
        .find(|m| m.message == expired.message)
        .expect("the expired message is received again");
    let others: Vec<_> = live
        .iter()
        .filter(|m| m.message != expired.message)
        .collect();
    // One live lease settled on its own first: its receipt is now dead.
    backend
        .delete_message(&queue, others[0].receipt())
        .await
        .expect("delete_message");
    let malformed: ReceiptHandle = "not:a:receipt".parse().expect("infallible");

    use Expect::*;
    assert_settles(
        backend,
        &queue,
        &[
            (others[1].receipt(), Deleted),
            (expired.receipt(), LeaseExpired),
            (foreign.receipt(), InvalidReceipt),
            (again.receipt(), Deleted),
            (&malformed, InvalidReceipt),
            (others[1].receipt(), LeaseExpired),
            (others[0].receipt(), LeaseExpired),
            (others[2].receipt(), Deleted),
            (others[3].receipt(), Deleted),
        ],
    )
    .await;
    assert_empty_for(backend, &queue, Duration::from_millis(300)).await;
    // Settled receipts are dead, and the foreign one still works at home.
    assert_err(
        backend.delete_message(&queue, again.receipt()).await,
        is_lease_expired,
        "a receipt delete_messages settled",
    );
    assert_settles(backend, &other, &[(foreign.receipt(), Deleted)]).await;

    // Only receipts that cannot be this queue's: answered without I/O.
    assert_settles(backend, &queue, &[(&malformed, InvalidReceipt)]).await;
    let none = backend
        .delete_messages(&unique_queue("never_created"), &[])
        .await
        .expect("an empty batch does no I/O, even on a missing queue");
    assert!(none.is_empty());

    cleanup(backend, &queue).await;
    assert_err(
        backend
            .delete_messages(&queue, &[again.receipt().clone()])
            .await,
        is_not_found,
        "delete_messages on a deleted queue",
    );
    cleanup(backend, &other).await;
}

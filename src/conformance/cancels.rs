//! Calls one process drops at random points, while other callers on the same
//! backend (and its connection pool) go on: a run as a fleet case, so that
//! the outcome is read through another process.

use std::{
    collections::HashSet,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use uuid::Uuid;

use super::{
    cleanup, fresh_queue, is_lease_expired, leases::receive_until_idle, receive, step,
    unique_queue, LONG_LEASE,
};
use crate::{MessageBackend, MessagingService, ReceiptHandle, SimpleStepMessage};

/// Sends each of the two callers that are never cancelled makes.
const SENDS: usize = 250;
/// Most queues the case creates (one every 10 ms at most).
const CREATES: usize = 40;

/// Runs `call`, dropping it at a random point if it has not finished: after
/// 0-63 scheduler yields (within its first round trips), or 0-2 ms later.
async fn cut<F: Future>(rng: &mut StdRng, call: F) -> Option<F::Output> {
    let yields = rng.gen_range(0..64);
    let late = rng
        .gen_bool(0.25)
        .then(|| Duration::from_micros(rng.gen_range(0..2_000)));
    let give_up = async move {
        match late {
            Some(after) => tokio::time::sleep(after).await,
            None => {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    tokio::select! {
        biased;
        output = call => Some(output),
        () = give_up => None,
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(rand::random())
}

/// C13: calls dropped at random points never undo other calls. While two
/// callers send on process A, A also runs receives (on an empty queue),
/// sends, deletes and queue creations that are each dropped at a random
/// point. Every send that returned `Ok` is then stored, and every delete that
/// returned `Ok` stays deleted, as process B sees them.
pub async fn cancelled_calls_never_undo_other_calls(a: &MessageBackend, b: &MessageBackend) {
    let quiet = fresh_queue(a, "cut_quiet").await;
    let target = fresh_queue(a, "cut_target").await;
    let settle = fresh_queue(a, "cut_settle").await;
    let done = Arc::new(AtomicBool::new(false));

    // Each loop yields once a round: an in-memory call may never wait, and a
    // loop that never yields would starve the senders.
    // Receives on an empty queue, each dropped at a random point.
    let receives = tokio::spawn({
        let (a, quiet, done) = (a.clone(), quiet.clone(), Arc::clone(&done));
        async move {
            let mut rng = rng();
            while !done.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
                let call = a.receive_messages::<SimpleStepMessage>(&quiet, 5, LONG_LEASE);
                if let Some(Ok(got)) = cut(&mut rng, call).await {
                    assert!(got.is_empty(), "{quiet} had no message to give");
                }
            }
        }
    });
    // Queue creations dropped at random points; the names, for cleanup.
    let creates = tokio::spawn({
        let (a, done) = (a.clone(), Arc::clone(&done));
        async move {
            let mut rng = rng();
            let mut names = Vec::new();
            while !done.load(Ordering::Relaxed) && names.len() < CREATES {
                tokio::time::sleep(Duration::from_millis(10)).await;
                names.push(unique_queue("cut_made"));
                let name = names.last().expect("just pushed");
                if let Some(Err(e)) = cut(&mut rng, a.create_queue(name)).await {
                    panic!("create_queue({name}) failed: {e}");
                }
            }
            names
        }
    });
    // Sends dropped at random points: those that returned Ok must be stored.
    let cut_sends = tokio::spawn({
        let (a, target, done) = (a.clone(), target.clone(), Arc::clone(&done));
        async move {
            let mut rng = rng();
            let mut confirmed = Vec::new();
            while !done.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
                let message = step();
                match cut(&mut rng, a.send_message(&target, &message)).await {
                    Some(Ok(_)) => confirmed.push(message.step_uuid),
                    Some(Err(e)) => panic!("send_message({target}) failed: {e}"),
                    None => {}
                }
            }
            confirmed
        }
    });
    // Sent, received, then deleted by calls dropped at random points.
    let deletes = tokio::spawn({
        let (a, settle, done) = (a.clone(), settle.clone(), Arc::clone(&done));
        async move { settle_with_cuts(&a, &settle, &done).await }
    });
    // The callers that are never cancelled.
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (a, target) = (a.clone(), target.clone());
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(SENDS);
                for _ in 0..SENDS {
                    let message = step();
                    a.send_message(&target, &message)
                        .await
                        .unwrap_or_else(|e| panic!("send_message({target}) failed: {e}"));
                    sent.push(message.step_uuid);
                }
                sent
            })
        })
        .collect();

    let mut confirmed = HashSet::new();
    for sender in senders {
        confirmed.extend(sender.await.expect("a sender panicked"));
    }
    done.store(true, Ordering::Relaxed);
    receives.await.expect("the receiver panicked");
    confirmed.extend(cut_sends.await.expect("the cut sender panicked"));
    let made = creates.await.expect("the creator panicked");
    let settled = deletes.await.expect("the settler panicked");

    // Every send that returned Ok is stored, as another process sees it.
    let stored: HashSet<Uuid> = receive_until_idle(b, &target)
        .await
        .iter()
        .map(|m| m.message.step_uuid)
        .collect();
    let lost = confirmed.difference(&stored).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} sends that returned Ok were not stored",
        confirmed.len()
    );

    // A delete that returned Ok ended its lease for good; the other leases
    // are released, and what comes back to B was not deleted.
    let mut undeleted = 0;
    for (deleted, (_, receipt)) in settled
        .deleted
        .iter()
        .map(|d| (true, d))
        .chain(settled.held.iter().map(|h| (false, h)))
    {
        match a
            .change_message_visibility(&settle, receipt, Duration::ZERO)
            .await
        {
            Ok(()) => undeleted += usize::from(deleted),
            Err(e) if is_lease_expired(&e) => {}
            Err(e) => panic!("change_message_visibility({settle}) failed: {e}"),
        }
    }
    let back: HashSet<Uuid> = receive_until_idle(b, &settle)
        .await
        .iter()
        .map(|m| m.message.step_uuid)
        .collect();
    let deleted: HashSet<Uuid> = settled.deleted.iter().map(|(id, _)| *id).collect();
    undeleted += deleted.intersection(&back).count();
    assert_eq!(
        undeleted,
        0,
        "{undeleted} of {} deletes that returned Ok did not stay deleted",
        deleted.len()
    );
    let held: HashSet<Uuid> = settled.held.iter().map(|(id, _)| *id).collect();
    let lost = settled
        .sent
        .iter()
        .filter(|id| !back.contains(id) && !deleted.contains(id) && !held.contains(id))
        .count();
    assert_eq!(lost, 0, "{lost} messages sent to {settle} were lost");

    for queue in made.iter().chain([&quiet, &target, &settle]) {
        cleanup(b, queue).await;
    }
}

/// What [`settle_with_cuts`] did: the messages it sent, and those it
/// received, with their receipts, split by whether their delete returned `Ok`
/// or was dropped.
struct Settled {
    sent: Vec<Uuid>,
    deleted: Vec<(Uuid, ReceiptHandle)>,
    held: Vec<(Uuid, ReceiptHandle)>,
}

/// Until `done`: sends a message to `settle`, receives what is ready and
/// deletes each with a call dropped at a random point.
async fn settle_with_cuts(a: &MessageBackend, settle: &str, done: &AtomicBool) -> Settled {
    let mut rng = rng();
    let mut settled = Settled {
        sent: Vec::new(),
        deleted: Vec::new(),
        held: Vec::new(),
    };
    while !done.load(Ordering::Relaxed) {
        tokio::task::yield_now().await;
        let message = step();
        a.send_message(settle, &message)
            .await
            .unwrap_or_else(|e| panic!("send_message({settle}) failed: {e}"));
        settled.sent.push(message.step_uuid);
        for m in receive(a, settle, 5, LONG_LEASE).await {
            let lease = (m.message.step_uuid, m.receipt().clone());
            match cut(&mut rng, a.delete_message(settle, m.receipt())).await {
                Some(Ok(())) => settled.deleted.push(lease),
                Some(Err(e)) => panic!("delete_message({settle}) failed: {e}"),
                None => settled.held.push(lease),
            }
        }
    }
    settled
}

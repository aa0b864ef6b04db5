//! Shutting a backend down (C33).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::{cleanup, fresh_queue, receive_n, step, LONG_LEASE, SLACK};
use crate::{MessageBackend, MessagingError, MessagingService, Provider, SimpleStepMessage};

/// The lease `a` holds its messages under: long enough to settle them all
/// on a loaded machine, short enough to wait out on PGMQ.
const HELD: Duration = Duration::from_secs(5);
/// Longest any call on a closed backend may take, and a waiting receive
/// may go on once `close` began.
const PROMPT: Duration = Duration::from_secs(5);

fn is_closed(result: &Result<impl std::fmt::Debug, MessagingError>) -> bool {
    matches!(result, Err(e @ MessagingError::Closed { .. }) if !e.is_transient())
}

/// Runs `call` on a closed backend: it must fail with `Closed` (not
/// transient) within [`PROMPT`].
async fn refused<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, MessagingError>>,
) {
    match tokio::time::timeout(PROMPT, call).await {
        Ok(result) => assert!(is_closed(&result), "{what} after close: {result:?}"),
        Err(_) => panic!("{what} after close hung for {PROMPT:?}"),
    }
}

/// C33: process `a` receives four messages, deletes one, batch-deletes one,
/// releases one (visibility 0) and keeps one; a waiting receive is under
/// way on another queue. `close` ends that wait at once with `Closed`,
/// returns `Ok`, and again `Ok` when called twice; every call after it fails
/// with `Closed` (not transient) without hanging. Another process then gets
/// exactly the released and the kept message back, within the lease, and
/// never the two deleted. (In memory, the "other process" is a clone, which
/// `close` closed too.)
pub async fn close_keeps_settles_and_refuses_later_calls(a: &MessageBackend, b: &MessageBackend) {
    let queue = fresh_queue(b, "close").await;
    let idle = fresh_queue(b, "close_wait").await;
    let sent: Vec<SimpleStepMessage> = (0..4).map(|_| step()).collect();
    b.send_batch(&queue, &sent).await.expect("send_batch");
    let got = receive_n(a, &queue, 4, HELD, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "a received {} of 4", got.len());
    a.delete_message(&queue, got[0].receipt())
        .await
        .expect("delete_message");
    let batch = a
        .delete_messages(&queue, &[got[1].receipt().clone()])
        .await
        .expect("delete_messages");
    assert!(batch.iter().all(Result::is_ok), "{batch:?}");
    a.change_message_visibility(&queue, got[2].receipt(), Duration::ZERO)
        .await
        .expect("change_message_visibility");

    let waiting =
        a.receive_messages_wait::<SimpleStepMessage>(&idle, 1, LONG_LEASE, Duration::from_secs(60));
    let closing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        (a.close().await, started)
    };
    let (waited, (closed, started)) = tokio::join!(waiting, closing);
    assert!(
        is_closed(&waited),
        "a waiting receive during close: {waited:?}"
    );
    assert!(
        started.elapsed() < PROMPT,
        "the waiting receive ended {:?} after close began",
        started.elapsed()
    );
    closed.expect("close");
    a.close().await.expect("a second close");
    assert!(a.is_closed());

    let kept = got[3].receipt();
    refused("health_check", a.health_check()).await;
    refused("create_queue", a.create_queue(&queue)).await;
    refused("send_message", a.send_message(&queue, &step())).await;
    refused("send_batch", a.send_batch(&queue, &[step()])).await;
    refused(
        "receive_messages",
        a.receive_messages::<SimpleStepMessage>(&queue, 1, LONG_LEASE),
    )
    .await;
    let wait = Duration::from_secs(60);
    refused(
        "receive_messages_wait",
        a.receive_messages_wait::<SimpleStepMessage>(&queue, 1, LONG_LEASE, wait),
    )
    .await;
    refused("delete_message", a.delete_message(&queue, kept)).await;
    refused(
        "delete_messages",
        a.delete_messages(&queue, std::slice::from_ref(kept)),
    )
    .await;
    let release = a.change_message_visibility(&queue, kept, Duration::ZERO);
    refused("change_message_visibility", release).await;
    refused("get_queue_stats", a.get_queue_stats(&queue)).await;
    refused("purge_queue", a.purge_queue(&queue)).await;
    refused("delete_queue", a.delete_queue(&queue)).await;

    if b.is_closed() {
        // Clones share the close: only the in-memory "other process" is one.
        assert_eq!(b.provider(), Provider::InMemory, "b was closed with a");
        refused("get_queue_stats on a clone", b.get_queue_stats(&queue)).await;
        return;
    }
    let back = receive_n(b, &queue, 3, LONG_LEASE, HELD + SLACK * 5).await;
    let back: HashSet<_> = back.iter().map(|m| m.message.step_uuid).collect();
    let expected: HashSet<_> = [&sent[2], &sent[3]].iter().map(|m| m.step_uuid).collect();
    assert_eq!(
        back, expected,
        "after close, the released and the kept message come back, the deleted never"
    );
    cleanup(b, &queue).await;
    cleanup(b, &idle).await;
}

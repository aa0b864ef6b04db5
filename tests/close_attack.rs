//! Adversarial checks of C33 (review of the close branch).

mod common;

use std::time::Duration;

use tasker_messaging::{
    conformance::{step, unique_queue},
    InMemoryMessageService, MessageBackend, MessagingError, MessagingService, Provider,
    QueuesConfig, SimpleStepMessage,
};

/// A receive polled once and then parked by its own task only learns of
/// the close when polled: close waits for it at most the drain bound
/// (5 s), then tears down; the receive, polled later, ends with `Closed`.
#[tokio::test]
async fn close_hangs_behind_a_parked_waiting_receive() {
    let b = InMemoryMessageService::new(QueuesConfig::default()).unwrap();
    b.create_queue("parked").await.unwrap();
    let mut recv = Box::pin(b.receive_messages_wait::<SimpleStepMessage>(
        "parked",
        1,
        Duration::from_secs(30),
        Duration::from_secs(3600),
    ));
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut recv)
        .await
        .is_err());
    let closed = tokio::time::timeout(Duration::from_secs(9), b.close()).await;
    println!("close with a parked receive: {closed:?}");
    assert!(closed.is_ok(), "close hung for 9 s behind a parked receive");
    closed.unwrap().unwrap();
    let received = tokio::time::timeout(Duration::from_secs(1), recv).await;
    assert!(
        matches!(received, Ok(Err(MessagingError::Closed { .. }))),
        "{received:?}"
    );
}

/// The first close is cut short inside the RabbitMQ teardown (the grace
/// sleep): the teardown runs on in its task, and the second close waits
/// for it, grace included (it used to return at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_second_close_after_cancel_keeps_the_grace() {
    let b = common::backend(Provider::RabbitMq).await;
    let q = unique_queue("close_cancel");
    b.create_queue(&q).await.unwrap();
    b.send_batch(&q, &(0..10).map(|_| step()).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = b
        .receive_messages_wait::<SimpleStepMessage>(
            &q,
            10,
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    for m in &got {
        b.delete_message(&q, m.receipt()).await.unwrap();
    }
    let t = std::time::Instant::now();
    let first = tokio::time::timeout(Duration::from_millis(30), b.close()).await;
    println!(
        "first close cut short: {} after {:?}",
        first.is_err(),
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let second = b.close().await;
    let took = t.elapsed();
    println!("second close: {second:?} in {took:?}");
    let other = common::backend(Provider::RabbitMq).await;
    other.delete_queue(&q).await.unwrap();
    other.close().await.unwrap();
    second.unwrap();
    assert!(first.is_err(), "the first close was meant to be cut short");
    assert!(
        took >= Duration::from_millis(100),
        "second close skipped the settle grace ({took:?})"
    );
}

/// A migration built from two backends: the caller closes one of them
/// directly. Calls on the migrating backend fail with `Closed` (they used
/// to run on the torn-down side, transient errors for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_after_a_side_was_closed() {
    let pg = common::backend(Provider::Pgmq).await;
    let rb = common::backend(Provider::RabbitMq).await;
    let q = unique_queue("close_side");
    let m = MessageBackend::Migrating(
        tasker_messaging::MigratingMessageService::from_backends(pg.clone(), rb.clone()).unwrap(),
    );
    m.create_queue(&q).await.unwrap();
    pg.close().await.unwrap();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(60), m.send_message(&q, &step())).await;
        let stats = tokio::time::timeout(Duration::from_secs(60), m.get_queue_stats(&q)).await;
        let recv = tokio::time::timeout(
            Duration::from_secs(60),
            m.receive_messages::<SimpleStepMessage>(&q, 1, Duration::from_secs(5)),
        )
        .await;
        println!(
            "after pg.close: m.is_closed={} send={sent:?}\n stats={stats:?}\n recv={:?} ({:?})",
            m.is_closed(),
            recv.as_ref().map(|r| r.as_ref().map(|v| v.len())),
            t.elapsed()
        );
        if let Ok(Err(e)) = &recv {
            println!("recv transient: {}", e.is_transient());
        }
        if let Ok(Err(e)) = &stats {
            println!("stats transient: {}", e.is_transient());
        }
        assert!(m.is_closed());
        assert!(
            matches!(sent, Ok(Err(MessagingError::Closed { .. }))),
            "{sent:?}"
        );
        assert!(
            matches!(stats, Ok(Err(MessagingError::Closed { .. }))),
            "{stats:?}"
        );
        assert!(
            matches!(recv, Ok(Err(MessagingError::Closed { .. }))),
            "{recv:?}"
        );
    }
    rb.delete_queue(&q).await.ok();
    m.close().await.ok();
}

/// The last clone dropped while the runtime shuts down (a task holding it
/// is dropped by the runtime): must not panic.
#[test]
fn rabbitmq_dropped_while_runtime_shuts_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = common::backend(Provider::RabbitMq).await;
        let q = unique_queue("close_rtdrop");
        b.create_queue(&q).await.unwrap();
        b.send_message(&q, &step()).await.unwrap();
        let _ = b
            .receive_messages::<SimpleStepMessage>(&q, 1, Duration::from_secs(30))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _b = b;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    drop(rt);
    // and the same, dropped outside any runtime
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(common::backend(Provider::RabbitMq));
    drop(rt);
    drop(b);
}

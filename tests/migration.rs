//! A provider migration under load, in both directions, on the orchestrator
//! engine: workers on the old configuration; mid-run, with steps leased,
//! workers on the migrating configuration start and the old ones stop; then
//! the fleet moves to the target alone, `move_messages` sweeps what is left
//! on the source, and the run finishes on the target. Every step must
//! complete (0 lost); duplicates are counted and printed.

mod common;

// The example's command line uses parts of the engine these tests do not.
#[allow(dead_code, unused_imports)]
#[path = "../examples/orchestrator/engine/mod.rs"]
mod engine;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use engine::{Orchestrator, Settings};
use tasker_messaging::{move_messages, MessagingConfig, MessagingService, Provider};

const STEPS: u64 = 3_000;

/// `config` with this run's own namespace queues.
fn own_queues(mut config: MessagingConfig, pattern: &str) -> MessagingConfig {
    config.queues.namespace_pattern = pattern.to_owned();
    config.queues.namespaces = vec!["alpha".into(), "beta".into()];
    config.queues.wait_poll_interval_ms = 200;
    config
}

async fn until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn migrate_under_load(from: Provider, to: Provider) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let pattern = format!("m{}_{{namespace}}", &tag[..8]);
    let connect =
        |config: MessagingConfig, provider| common::connect(own_queues(config, &pattern), provider);
    let old = Arc::new(connect(common::config(from), from).await);
    let migrating = Arc::new(connect(common::migrating_config(from, to), to).await);
    let new = Arc::new(connect(common::config(to), to).await);

    let settings = Settings {
        messages: STEPS,
        workers: 2,
        work: Duration::from_millis(2),
        fail_rate: 0.0,
        progress: None,
    };
    let orchestrator = Orchestrator::new(Arc::clone(&old), settings).unwrap();
    let queues = orchestrator.queue_names();
    let handle = orchestrator.handle();
    let started = Instant::now();
    let run = tokio::spawn(orchestrator.run());

    // 1. The old fleet works until a fifth is done, with steps leased.
    until(
        "the old workers to process 600 steps",
        Duration::from_secs(60),
        || handle.processed() >= 600 && handle.in_flight() > 0,
    )
    .await;
    let leased_at_switch = handle.in_flight();
    // 2. Workers on the migrating configuration start; the old ones stop
    //    (steps in progress finish, the rest go back to the source).
    handle
        .switch_to(Arc::clone(&migrating))
        .await
        .expect("switch to the migrating configuration");
    let processed_old = handle.processed();
    until(
        "the migrating workers to process 900 more",
        Duration::from_secs(60),
        || handle.processed() >= processed_old + 900,
    )
    .await;
    let leased_at_second_switch = handle.in_flight();
    // 3. The target alone; what the source still holds is moved over.
    handle
        .switch_to(Arc::clone(&new))
        .await
        .expect("switch to the target alone");
    let processed_migrating = handle.processed() - processed_old;
    let mut swept = 0;
    for queue in &queues {
        let report = move_messages(&old, queue, &new, queue, usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("sweeping {queue}: {e}"));
        swept += report.sent();
    }
    let exact_in_flight = old.capabilities().exact_in_flight;
    for queue in &queues {
        let stats = old.get_queue_stats(queue).await.expect("source stats");
        assert_eq!(stats.message_count, 0, "left on the source: {stats:?}");
        if exact_in_flight {
            assert_eq!(stats.in_flight_count, Some(0), "leased on the source");
        }
    }

    let summary = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finishes within 120 s")
        .expect("the run's task")
        .expect("the run succeeds");
    println!("{summary}");
    if !exact_in_flight {
        // The source cannot count its leases (RabbitMQ): close the old
        // connection, which gives back any lease it still held, and look.
        drop(handle);
        let old =
            Arc::try_unwrap(old).unwrap_or_else(|_| panic!("the old backend is still shared"));
        drop(old);
        let source = connect(common::config(from), from).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            for queue in &queues {
                let stats = source.get_queue_stats(queue).await.expect("source stats");
                assert_eq!(stats.message_count, 0, "leased on the source: {stats:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elapsed = started.elapsed();
    let lost = summary.missing;
    println!(
        "migration {from} -> {to}: sent {}, processed {} (old workers {processed_old}, \
         migrating {processed_migrating}, target alone {}), lost {lost}, duplicates {}, \
         leased at the switches {leased_at_switch} and {leased_at_second_switch}, \
         swept from the source {swept}, in {:.1} s",
        summary.sent,
        summary.processed,
        summary.processed - processed_old - processed_migrating,
        summary.duplicates,
        elapsed.as_secs_f64()
    );
    assert!(
        leased_at_switch > 0,
        "steps were leased when the switch came"
    );
    assert_eq!(summary.sent, STEPS);
    assert_eq!(summary.processed, STEPS, "every step processed");
    assert_eq!(lost, 0, "no step lost");
    assert!(summary.ok(), "the run's own check");
    assert_eq!(summary.left_in_queues, 0);
    for queue in &queues {
        migrating.delete_queue(queue).await.expect("delete_queue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmq_to_rabbitmq_under_load() {
    migrate_under_load(Provider::Pgmq, Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_pgmq_under_load() {
    migrate_under_load(Provider::RabbitMq, Provider::Pgmq).await;
}

/// A receipt a plain backend issued before the switch still works through a
/// migrating one built on it, alone or in a batch with the target's
/// receipts; a receipt of neither provider is `InvalidReceipt` in the batch.
async fn receipts_from_before_the_switch_keep_working(from: Provider, to: Provider) {
    use tasker_messaging::{conformance::unique_queue, MessagingError, SimpleStepMessage};
    use tasker_messaging::{MessageBackend, MigratingMessageService};
    let old = common::backend(from).await;
    // Switched in place: the old backend's connection is kept, so even a
    // RabbitMQ lease taken before the switch can be settled after it.
    let migrating: MessageBackend =
        MigratingMessageService::from_backends(old.clone(), common::backend(to).await)
            .expect("two providers")
            .into();
    let queue = unique_queue("pre_switch");
    migrating.create_queue(&queue).await.unwrap();
    let step = || SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    old.send_batch(&queue, &[step(), step(), step()])
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let before = old
        .receive_messages::<SimpleStepMessage>(&queue, 3, lease)
        .await
        .unwrap();
    assert_eq!(before.len(), 3);
    migrating.send_message(&queue, &step()).await.unwrap();
    let after = migrating
        .receive_messages::<SimpleStepMessage>(&queue, 10, lease)
        .await
        .unwrap();
    assert_eq!(
        after.len(),
        1,
        "the source's messages are leased by the old process"
    );
    assert!(after[0].receipt().as_str().starts_with(to.tag()));

    migrating
        .delete_message(&queue, before[0].receipt())
        .await
        .expect("a pre-switch receipt deletes on the source");
    migrating
        .change_message_visibility(&queue, before[1].receipt(), Duration::from_secs(60))
        .await
        .expect("and extends its lease");
    let foreign: tasker_messaging::ReceiptHandle =
        format!("in_memory:{queue}:1:1:1").parse().unwrap();
    let outcomes = migrating
        .delete_messages(
            &queue,
            &[
                before[1].receipt().clone(),
                after[0].receipt().clone(),
                foreign,
                before[2].receipt().clone(),
            ],
        )
        .await
        .expect("delete_messages");
    assert!(
        outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[3].is_ok(),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], Err(MessagingError::InvalidReceipt { .. })),
        "{outcomes:?}"
    );
    let stats = migrating.get_queue_stats(&queue).await.unwrap();
    assert_eq!(stats.message_count, 0, "{stats:?}");
    let sides = stats.migration.expect("both sides reported");
    assert_eq!((sides.source, sides.target), (from, to));
    assert_eq!(sides.source_stats.map(|s| s.message_count), Some(0));
    migrating.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_switch_receipts_pgmq_to_rabbitmq() {
    receipts_from_before_the_switch_keep_working(Provider::Pgmq, Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_switch_receipts_rabbitmq_to_pgmq() {
    receipts_from_before_the_switch_keep_working(Provider::RabbitMq, Provider::Pgmq).await;
}

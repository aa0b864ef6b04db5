//! The orchestrator example's core loop, end to end on every provider: each
//! step completes exactly once, failing steps end in the dead-letter queues,
//! and a stopped run leaves its steps for the next one to drain.

mod common;

// The example's command line uses parts of the engine these tests do not.
#[allow(dead_code, unused_imports)]
#[path = "../examples/orchestrator/engine/mod.rs"]
mod engine;

use std::{sync::Arc, time::Duration};

use engine::{Orchestrator, Settings, Summary};
use tasker_messaging::{MessageBackend, MessagingService, Provider};

/// A backend whose namespace queues are this test's own, so the suite's tests
/// can run side by side.
async fn backend(provider: Provider) -> Arc<MessageBackend> {
    let mut config = common::config(provider);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    config.queues.namespace_pattern = format!("o{}_{{namespace}}", &tag[..8]);
    config.queues.namespaces = vec!["alpha".into(), "beta".into()];
    // A lease that ran out is noticed within this, so dead-lettering is quick.
    config.queues.wait_poll_interval_ms = 200;
    let backend = MessageBackend::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("{provider} is not usable: {e}. Start it and rerun."));
    Arc::new(backend)
}

fn settings(messages: u64, work_ms: u64, fail_rate: f64) -> Settings {
    Settings {
        messages,
        workers: 2,
        work: Duration::from_millis(work_ms),
        fail_rate,
        progress: None,
    }
}

async fn run(orchestrator: Orchestrator) -> Summary {
    let summary = tokio::time::timeout(Duration::from_secs(60), orchestrator.run())
        .await
        .expect("the run finishes within 60 s")
        .expect("the run succeeds");
    println!("{summary}");
    summary
}

async fn delete_queues(backend: &MessageBackend, queues: &[String]) {
    for queue in queues {
        backend.delete_queue(queue).await.expect("delete_queue");
    }
}

async fn every_step_completes_once(provider: Provider) {
    let backend = backend(provider).await;
    let orchestrator = Orchestrator::new(Arc::clone(&backend), settings(150, 1, 0.0)).unwrap();
    let queues = orchestrator.queue_names();
    let summary = run(orchestrator).await;
    assert!(summary.ok());
    assert_eq!(
        (summary.sent, summary.processed, summary.duplicates),
        (150, 150, 0)
    );
    assert_eq!((summary.dead_lettered, summary.missing), (0, 0));
    assert_eq!(summary.left_in_queues, 0);
    delete_queues(&backend, &queues).await;
}

async fn failing_steps_are_dead_lettered(provider: Provider) {
    let backend = backend(provider).await;
    let orchestrator = Orchestrator::new(Arc::clone(&backend), settings(6, 0, 1.0)).unwrap();
    assert_eq!(orchestrator.lease(), Duration::from_secs(1));
    let queues = orchestrator.queue_names();
    let summary = run(orchestrator).await;
    assert!(summary.ok());
    assert_eq!((summary.sent, summary.failing_sent), (6, 6));
    assert_eq!((summary.dead_lettered, summary.failing_seen), (6, 6));
    assert_eq!((summary.processed, summary.left_in_queues), (0, 0));
    delete_queues(&backend, &queues).await;
}

async fn a_stopped_run_is_drained_by_the_next(provider: Provider) {
    let backend = backend(provider).await;
    // 20 ms a step: 4 workers need 1.5 s for all 300, so the stop lands
    // mid-run even when the results check lags on a loaded machine.
    let first = Orchestrator::new(Arc::clone(&backend), settings(300, 20, 0.0)).unwrap();
    let queues = first.queue_names();
    let handle = first.handle();
    let first = tokio::spawn(run(first));
    tokio::time::timeout(Duration::from_secs(30), async {
        while handle.processed() < 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("30 steps complete");
    assert!(handle.interrupt());
    let first = first.await.unwrap();
    assert!(first.interrupted);
    assert!(first.processed < first.sent, "stopped before the end");
    assert_eq!(first.duplicates, 0);

    let second = Orchestrator::new(Arc::clone(&backend), settings(0, 0, 0.0)).unwrap();
    let second = run(second).await;
    assert!(second.ok());
    assert_eq!(second.sent, 0);
    assert_eq!(second.processed, second.processed_leftover);
    assert_eq!(second.duplicates, 0);
    assert_eq!(
        first.processed + second.processed,
        first.sent,
        "every step the first run sent completed in one of the runs"
    );
    assert_eq!(second.left_in_queues, 0);
    delete_queues(&backend, &queues).await;
}

macro_rules! orchestrator_tests {
    ($($module:ident => $provider:expr),+ $(,)?) => {$(
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_step_completes_once() {
                super::every_step_completes_once($provider).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failing_steps_are_dead_lettered() {
                super::failing_steps_are_dead_lettered($provider).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stopped_run_is_drained_by_the_next() {
                super::a_stopped_run_is_drained_by_the_next($provider).await;
            }
        }
    )+};
}

orchestrator_tests!(
    in_memory => tasker_messaging::Provider::InMemory,
    pgmq => tasker_messaging::Provider::Pgmq,
    rabbitmq => tasker_messaging::Provider::RabbitMq,
);

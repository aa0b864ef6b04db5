//! C33 across a process exit: a child process (this test binary, run again
//! with `TASKER_CLOSE_CHILD` set) receives and deletes 1,000 messages, then
//! exits at once, with or without `close`. The parent then counts what comes
//! back: after the child's connection is gone on RabbitMQ, after its leases
//! could have ended on PGMQ.

mod common;

use std::{process::Command, time::Duration};

use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingService, Provider, SimpleStepMessage,
};

const CHILD_ENV: &str = "TASKER_CLOSE_CHILD";
const MESSAGES: usize = 1_000;
/// The child's leases: short, so PGMQ's come back soon if a delete was lost.
const LEASE: Duration = Duration::from_secs(3);

/// Runs one child over a fresh queue of [`MESSAGES`] messages; returns how
/// many of them came back afterwards.
async fn redelivered_after_child(provider: Provider, close: bool) -> usize {
    let backend = common::backend(provider).await;
    let queue = unique_queue("close_child");
    backend.create_queue(&queue).await.expect("create_queue");
    let sent: Vec<SimpleStepMessage> = (0..MESSAGES).map(|_| step()).collect();
    for chunk in sent.chunks(100) {
        backend.send_batch(&queue, chunk).await.expect("send_batch");
    }
    let spec = format!("{}|{queue}|{close}", provider.tag());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().expect("the test binary"))
            .args(["child_process", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, spec)
            .output()
            .expect("run the child")
    })
    .await
    .expect("child task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains(&format!("deleted {MESSAGES} ({MESSAGES} distinct)")),
        "child failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("child: {}", stdout.trim());
    if provider == Provider::Pgmq {
        // A delete lost on PGMQ would show only once its lease ended.
        tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    }
    let mut back = 0;
    loop {
        let got = backend
            .receive_messages_wait::<SimpleStepMessage>(
                &queue,
                100,
                Duration::from_secs(60),
                Duration::from_secs(2),
            )
            .await
            .expect("receive what came back");
        if got.is_empty() {
            break;
        }
        back += got.len();
    }
    backend.delete_queue(&queue).await.expect("delete_queue");
    backend.close().await.expect("close the parent's backend");
    back
}

/// C33: the child closes before exiting; nothing it deleted comes back.
async fn a_process_that_closes_leaves_nothing_to_redeliver(provider: Provider) {
    let back = redelivered_after_child(provider, true).await;
    assert_eq!(
        back, 0,
        "{provider}: {back} of {MESSAGES} deleted messages came back after close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_process_that_closes_leaves_nothing_to_redeliver() {
    a_process_that_closes_leaves_nothing_to_redeliver(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmq_a_process_that_closes_leaves_nothing_to_redeliver() {
    a_process_that_closes_leaves_nothing_to_redeliver(Provider::Pgmq).await;
}

/// The README's "Shutting down" figures: rounds with and without `close`
/// on each server provider, printed (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the README, not a check"]
async fn redelivered_without_close_measured() {
    const ROUNDS: usize = 5;
    for provider in [Provider::RabbitMq, Provider::Pgmq] {
        for close in [true, false] {
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                rounds.push(redelivered_after_child(provider, close).await);
            }
            let total: usize = rounds.iter().sum();
            println!(
                "{provider} {}: redelivered {rounds:?} of {MESSAGES} per round, \
                 {total} of {} in all",
                if close { "with close" } else { "without close" },
                MESSAGES * ROUNDS
            );
        }
    }
}

/// The child: only does anything when run by the cases above, with
/// `TASKER_CLOSE_CHILD` = `provider|queue|close`. It receives and deletes
/// every message, one `delete_message` each, prints `deleted N`, closes
/// (or only drops the backend) and exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the cases above as a child process"]
async fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (Some(provider), Some(queue), Some(close)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("{CHILD_ENV} is not provider|queue|close: {spec}");
    };
    let provider = match provider {
        "pgmq" => Provider::Pgmq,
        "rabbitmq" => Provider::RabbitMq,
        other => panic!("no provider {other}"),
    };
    let backend: MessageBackend = common::backend(provider).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut deleted = 0;
    let mut distinct = std::collections::HashSet::new();
    while deleted < MESSAGES && tokio::time::Instant::now() < deadline {
        let got = backend
            .receive_messages_wait::<SimpleStepMessage>(queue, 100, LEASE, Duration::from_secs(1))
            .await
            .expect("receive");
        for message in &got {
            backend
                .delete_message(queue, message.receipt())
                .await
                .expect("delete_message");
            deleted += 1;
            distinct.insert(message.message.step_uuid);
        }
    }
    println!("deleted {deleted} ({} distinct)", distinct.len());
    if close == "true" {
        backend.close().await.expect("close");
    } else {
        drop(backend);
    }
    std::process::exit(0);
}

//! C33 across a process exit: a child process (this test binary, run again
//! with `TASKER_BURST_CHILD` set) receives and deletes 1,000 messages, then
//! exits at once, with or without `close`. The parent then counts what comes
//! back: after the child's connection is gone on RabbitMQ, after its leases
//! could have ended on PGMQ.
//!
//! A measurement tool, ignored by default (it takes seconds per run): knobs
//! `BURST_N` (messages), `BURST_SEQ` (delete one at a time), `BURST_MODE`
//! (`true`: close; `cancel`: a close cut short after `BURST_CANCEL_MS`,
//! then a second close; `cancel_drop`: cut short, then dropped; anything
//! else: dropped without close), e.g.
//! `BURST_CANCEL_MS=0 BURST_SEQ=1 BURST_MODE=cancel cargo test --test
//! close_burst rabbitmq_burst -- --ignored --nocapture`.

mod common;

use std::{process::Command, time::Duration};

use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingService, Provider, SimpleStepMessage,
};

const CHILD_ENV: &str = "TASKER_BURST_CHILD";
fn messages() -> usize {
    std::env::var("BURST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
/// The child's leases: short, so PGMQ's come back soon if a delete was lost.
const LEASE: Duration = Duration::from_secs(3);

/// Runs one child over a fresh queue of [`messages()`] messages; returns how
/// many of them came back afterwards.
async fn redelivered_after_child(provider: Provider, close: &str) -> usize {
    let backend = common::backend(provider).await;
    let queue = unique_queue("close_child");
    backend.create_queue(&queue).await.expect("create_queue");
    let sent: Vec<SimpleStepMessage> = (0..messages()).map(|_| step()).collect();
    for chunk in sent.chunks(500) {
        backend.send_batch(&queue, chunk).await.expect("send_batch");
    }
    let spec = format!("{}|{queue}|{close}", provider.tag());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().expect("the test binary"))
            .args(["burst_child", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, spec)
            .output()
            .expect("run the child")
    })
    .await
    .expect("child task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains(&format!("deleted {n} ({n} distinct)", n = messages())),
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

fn mode() -> String {
    std::env::var("BURST_MODE").unwrap_or_else(|_| "true".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement tool: see the module docs"]
async fn rabbitmq_burst() {
    let m = mode();
    let back = redelivered_after_child(Provider::RabbitMq, &m).await;
    println!(
        "RESULT rabbitmq mode={m} n={}: {back} came back",
        messages()
    );
    assert_eq!(back, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement tool: see the module docs"]
async fn pgmq_burst() {
    let m = mode();
    let back = redelivered_after_child(Provider::Pgmq, &m).await;
    println!("RESULT pgmq mode={m} n={}: {back} came back", messages());
    assert_eq!(back, 0);
}

/// The child: only does anything when run by the cases above, with
/// `TASKER_BURST_CHILD` = `provider|queue|close`. It receives and deletes
/// every message, one `delete_message` each, prints `deleted N`, closes
/// (or only drops the backend) and exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the cases above as a child process"]
async fn burst_child() {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut deleted = 0;
    let mut distinct = std::collections::HashSet::new();
    while deleted < messages() && tokio::time::Instant::now() < deadline {
        let got = backend
            .receive_messages_wait::<SimpleStepMessage>(queue, 100, LEASE, Duration::from_secs(1))
            .await
            .expect("receive");
        if std::env::var("BURST_SEQ").is_ok() {
            for m in &got {
                backend
                    .delete_message(queue, m.receipt())
                    .await
                    .expect("delete_message");
            }
        } else {
            let deletes = got
                .iter()
                .map(|m| backend.delete_message(queue, m.receipt()));
            for r in futures_util::future::join_all(deletes).await {
                r.expect("delete_message");
            }
        }
        for message in &got {
            deleted += 1;
            distinct.insert(message.message.step_uuid);
        }
    }
    println!("deleted {deleted} ({} distinct)", distinct.len());
    let t = std::time::Instant::now();
    match close {
        "true" => backend.close().await.expect("close"),
        "cancel" => {
            let first = tokio::time::timeout(
                Duration::from_millis(
                    std::env::var("BURST_CANCEL_MS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(20),
                ),
                backend.close(),
            )
            .await;
            let t2 = std::time::Instant::now();
            backend.close().await.expect("second close");
            println!(
                "first close cut short: {}; second close took {:?}",
                first.is_err(),
                t2.elapsed()
            );
        }
        "cancel_drop" => {
            let first = tokio::time::timeout(
                Duration::from_millis(
                    std::env::var("BURST_CANCEL_MS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(20),
                ),
                backend.close(),
            )
            .await;
            println!("first close cut short: {}", first.is_err());
            drop(backend);
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        _ => drop(backend),
    }
    println!("close took {:?}", t.elapsed());
    std::process::exit(0);
}

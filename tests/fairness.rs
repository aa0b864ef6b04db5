//! Fairness across a fleet (issue 20's target): four processes, one worker
//! each, 50 ms of work per step, 200 steps queued. Every process takes at
//! least 25, and the run takes at most 1.5× the ideal 2.5 s: a standing
//! consumer (RabbitMQ) must not starve the other processes.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tasker_messaging::{MessageBackend, MessagingService, Provider, SimpleStepMessage};
use uuid::Uuid;

const PROCESSES: usize = 4;
const STEPS: usize = 200;
const WORK: Duration = Duration::from_millis(50);

async fn fleet_is_fair(provider: Provider) {
    let mut processes = Vec::new();
    for _ in 0..PROCESSES {
        processes.push(match provider {
            Provider::InMemory if !processes.is_empty() => {
                let first: &MessageBackend = &processes[0];
                first.clone()
            }
            _ => common::backend(provider).await,
        });
    }
    let queue = format!("fair_{}", &Uuid::new_v4().simple().to_string()[..8]);
    processes[0]
        .create_queue(&queue)
        .await
        .expect("create queue");
    let steps: Vec<SimpleStepMessage> = (0..STEPS)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    for chunk in steps.chunks(50) {
        processes[0].send_batch(&queue, chunk).await.expect("send");
    }
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (i, process) in processes.iter().enumerate() {
        let (process, queue, done) = (process.clone(), queue.clone(), Arc::clone(&done));
        workers.spawn(async move {
            let mut taken = 0;
            while done.load(Ordering::Acquire) < STEPS {
                let got = process
                    .receive_messages_wait::<SimpleStepMessage>(
                        &queue,
                        1,
                        Duration::from_secs(30),
                        Duration::from_millis(200),
                    )
                    .await
                    .expect("receive");
                for message in got {
                    tokio::time::sleep(WORK).await;
                    process
                        .delete_message(&queue, message.receipt())
                        .await
                        .expect("delete");
                    taken += 1;
                    done.fetch_add(1, Ordering::AcqRel);
                }
            }
            (i, taken)
        });
    }
    let mut taken = [0; PROCESSES];
    while let Some(worker) = workers.join_next().await {
        let (i, n) = worker.expect("worker");
        taken[i] = n;
    }
    let elapsed = started.elapsed();
    println!("{provider:?}: steps per process {taken:?} in {elapsed:?}");
    processes[0]
        .delete_queue(&queue)
        .await
        .expect("delete queue");
    assert_eq!(taken.iter().sum::<usize>(), STEPS);
    assert!(
        taken.iter().all(|&n| n >= STEPS / PROCESSES / 2),
        "{provider:?}: a process took fewer than {}: {taken:?}",
        STEPS / PROCESSES / 2
    );
    let ideal = WORK * (STEPS / PROCESSES) as u32;
    assert!(
        elapsed <= ideal * 3 / 2,
        "{provider:?}: {elapsed:?}, over 1.5x the ideal {ideal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_fleet_shares_the_work() {
    fleet_is_fair(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgmq_fleet_shares_the_work() {
    fleet_is_fair(Provider::Pgmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_fleet_shares_the_work() {
    fleet_is_fair(Provider::InMemory).await;
}

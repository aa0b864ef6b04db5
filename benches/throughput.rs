//! Messages per second per provider, through `MessageBackend` and through
//! each provider's raw client in the same run, so every figure has a ratio.
//!
//! cargo bench --bench throughput                  # full run
//! TASKER_BENCH_QUICK=1 cargo bench --bench throughput   # a few minutes
//!
//! Needs PostgreSQL and RabbitMQ as `scripts/test.sh` starts them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgmq::PGMQueueExt;
use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingService, Provider, SimpleStepMessage,
};
use tokio::runtime::Runtime;

const LEASE: Duration = Duration::from_secs(30);
const BATCH: usize = 100;
const END_TO_END: usize = 400;
const CONSUMERS: usize = 4;

/// Whoever does the work: the library, or a provider's own client.
#[derive(Clone)]
enum Client {
    Tasker(Arc<MessageBackend>),
    RawPgmq(Arc<PGMQueueExt>),
}

impl Client {
    fn label(&self) -> String {
        match self {
            Self::Tasker(b) => format!("tasker/{}", b.provider()),
            Self::RawPgmq(_) => "raw/pgmq".into(),
        }
    }

    async fn send(&self, queue: &str, message: &SimpleStepMessage) {
        match self {
            Self::Tasker(b) => drop(b.send_message(queue, message).await.expect("send")),
            Self::RawPgmq(q) => drop(q.send(queue, message).await.expect("raw send")),
        }
    }

    async fn send_batch(&self, queue: &str, messages: &[SimpleStepMessage]) {
        match self {
            Self::Tasker(b) => drop(b.send_batch(queue, messages).await.expect("send_batch")),
            Self::RawPgmq(q) => drop(q.send_batch(queue, messages).await.expect("raw batch")),
        }
    }

    /// Receives up to `max` and deletes each; returns how many.
    async fn receive_delete(&self, queue: &str, max: usize) -> usize {
        match self {
            Self::Tasker(b) => {
                let got = b
                    .receive_messages::<SimpleStepMessage>(queue, max, LEASE)
                    .await
                    .expect("receive");
                for m in &got {
                    b.delete_message(queue, m.receipt()).await.expect("delete");
                }
                got.len()
            }
            Self::RawPgmq(q) => {
                let got = q
                    .read_batch::<SimpleStepMessage>(queue, 30, max as i32)
                    .await
                    .expect("raw read");
                for m in &got {
                    q.delete(queue, m.msg_id).await.expect("raw delete");
                }
                got.len()
            }
        }
    }
}

struct Setup {
    rt: Runtime,
    /// Per provider: the clients to compare and a queue for each.
    providers: Vec<(Provider, Vec<(Client, String)>)>,
}

fn setup() -> Setup {
    let rt = Runtime::new().expect("tokio runtime");
    let providers = rt.block_on(async {
        let mut providers = Vec::new();
        for provider in [Provider::InMemory, Provider::Pgmq] {
            let backend = Arc::new(common::backend(provider).await);
            let mut clients = vec![Client::Tasker(Arc::clone(&backend))];
            if let MessageBackend::Pgmq(pgmq) = &*backend {
                let raw = PGMQueueExt::new_with_pool(pgmq.pool().clone()).await;
                clients.push(Client::RawPgmq(Arc::new(raw)));
            }
            let mut with_queues = Vec::new();
            for client in clients {
                let queue = unique_queue("bench");
                backend.create_queue(&queue).await.expect("create_queue");
                with_queues.push((client, queue));
            }
            providers.push((provider, with_queues));
        }
        providers
    });
    Setup { rt, providers }
}

fn configure(c: &mut Criterion) -> &mut Criterion {
    if std::env::var_os("TASKER_BENCH_QUICK").is_some() {
        *c = std::mem::take(c)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
    }
    c
}

fn bench(c: &mut Criterion) {
    let c = configure(c);
    let s = setup();
    let rt = &s.rt;

    for (provider, clients) in &s.providers {
        let mut group = c.benchmark_group(format!("send_message/{provider}"));
        group.throughput(Throughput::Elements(1));
        for (client, queue) in clients {
            let message = step();
            group.bench_function(BenchmarkId::from_parameter(client.label()), |b| {
                b.to_async(rt).iter(|| client.send(queue, &message))
            });
            rt.block_on(purge(clients, queue));
        }
        group.finish();

        let mut group = c.benchmark_group(format!("send_batch_100/{provider}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        let batch: &[_] = &(0..BATCH).map(|_| step()).collect::<Vec<_>>();
        for (client, queue) in clients {
            group.bench_function(BenchmarkId::from_parameter(client.label()), |b| {
                b.to_async(rt).iter(|| client.send_batch(queue, batch))
            });
            rt.block_on(purge(clients, queue));
        }
        group.finish();

        let mut group = c.benchmark_group(format!("receive_100_delete/{provider}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        for (client, queue) in clients {
            group.bench_function(BenchmarkId::from_parameter(client.label()), |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        client.send_batch(queue, batch).await;
                        let started = Instant::now();
                        let mut got = 0;
                        while got < BATCH {
                            got += client.receive_delete(queue, BATCH - got).await;
                        }
                        spent += started.elapsed();
                    }
                    spent
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("end_to_end_4_consumers/{provider}"));
        group.throughput(Throughput::Elements(END_TO_END as u64));
        for (client, queue) in clients {
            group.bench_function(BenchmarkId::from_parameter(client.label()), |b| {
                b.to_async(rt).iter(|| end_to_end(client, queue))
            });
        }
        group.finish();
    }
}

/// One producer sends `END_TO_END` messages one by one while `CONSUMERS`
/// consumers receive and delete them; done when all are deleted.
async fn end_to_end(client: &Client, queue: &str) {
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (client, queue, done) = (client.clone(), queue.to_owned(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(Ordering::Acquire) < END_TO_END {
                    let n = client.receive_delete(&queue, 10).await;
                    if n == 0 {
                        tokio::task::yield_now().await;
                    }
                    done.fetch_add(n, Ordering::AcqRel);
                }
            })
        })
        .collect();
    let message = step();
    for _ in 0..END_TO_END {
        client.send(queue, &message).await;
    }
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
}

async fn purge(clients: &[(Client, String)], queue: &str) {
    if let Some((Client::Tasker(backend), _)) = clients.first() {
        backend.purge_queue(queue).await.expect("purge");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

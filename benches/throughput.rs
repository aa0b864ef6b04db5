//! Messages per second per provider, through `MessageBackend` and through
//! each provider's raw client in the same run, so every figure has a ratio.
//!
//! cargo bench --bench throughput                  # full run
//! TASKER_BENCH_QUICK=1 cargo bench --bench throughput   # a few minutes
//!
//! Needs PostgreSQL and RabbitMQ as `scripts/test.sh` starts them.

mod clients;

use std::time::{Duration, Instant};

use clients::{end_to_end, purge, setup, BATCH, END_TO_END};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tasker_messaging::conformance::step;

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

criterion_group!(benches, bench);
criterion_main!(benches);

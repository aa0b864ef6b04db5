//! Paired ratios: the library against each raw client, in alternating short
//! blocks (the order rotating every round), so that drift on a shared
//! machine (steal time, broker housekeeping) hits both sides alike. On the
//! 2-core VM of BENCHMARKS.md, criterion's one-after-the-other runs move by
//! 10-20% between runs, more than the targets it has to resolve.
//!
//! Prints a markdown table: each client's median msg/s over the rounds and
//! the median of the per-round ratios. `drain_2_processes` runs each client
//! with a second, independently connected one on the same queue (two worker
//! processes draining 1,000 messages), where the provider has processes.
//!
//! `send_message_16_tasks` has 16 tasks send at once on one client (the raw
//! AMQP client pipelines them on its confirm-mode channel);
//! `send_receive_settle_100` sends a batch of 100, receives it and settles
//! it as a batch (`delete_messages`; raw PGMQ `delete_batch`, raw AMQP its
//! acks). After the table, single-sender latency (p50, p99 of every send)
//! against the library before grouping (PGMQ, with the raw client's row too)
//! or the raw client. Every PGMQ client, raw or library, runs on one pool of
//! the library's default `pool_size`.
//!
//! cargo bench --bench paired                        # 21 rounds
//! TASKER_BENCH_QUICK=1 cargo bench --bench paired   # 5 rounds
//! TASKER_BENCH_ROUNDS=3 cargo bench --bench paired  # any number of rounds
//! cargo bench --bench paired -- rabbitmq            # rows containing "rabbitmq"
//!
//! Needs PostgreSQL and RabbitMQ as `scripts/test.sh` starts them.

mod clients;

use std::time::{Duration, Instant};

use clients::{
    end_to_end, fleet_drain, fleet_drain_wide, peer, purge, setup, steady_stream, Client, BATCH,
    END_TO_END, FLEET_DRAIN, FLEET_WIDE, STREAM,
};
use tasker_messaging::{conformance::step, MessagingService};

/// Work per block: enough to take tens of milliseconds or more.
const SENDS: usize = 500;
const BATCHES: usize = 50;
const RECEIVES: usize = 20;
const END_TO_ENDS: usize = 2;
/// Callers sending at once in `send_message_16_tasks`.
const SENDERS: usize = 16;
/// Messages each of them sends per block.
const SENDS_EACH: usize = 50;
/// Batches sent, received and settled per block in `send_receive_settle_100`.
const ROUND_TRIPS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    SendMessage,
    SendBatch,
    ReceiveDelete,
    EndToEnd,
    FleetDrain,
    ConcurrentSends,
    SendReceiveSettle,
    FleetDrainWide,
    FleetDrainWideWaiting,
    SteadyStream,
    StreamSendersAlone,
}

impl Operation {
    const ALL: [Self; 11] = [
        Self::ConcurrentSends,
        Self::SendReceiveSettle,
        Self::SendMessage,
        Self::SendBatch,
        Self::ReceiveDelete,
        Self::EndToEnd,
        Self::FleetDrain,
        Self::FleetDrainWide,
        Self::FleetDrainWideWaiting,
        Self::SteadyStream,
        Self::StreamSendersAlone,
    ];

    /// The same names as the criterion groups of `benches/throughput.rs`.
    fn name(self) -> &'static str {
        match self {
            Self::SendMessage => "send_message",
            Self::SendBatch => "send_batch_100",
            Self::ReceiveDelete => "receive_100_delete",
            Self::EndToEnd => "end_to_end_4_consumers",
            Self::FleetDrain => "drain_2_processes",
            Self::ConcurrentSends => "send_message_16_tasks",
            Self::SendReceiveSettle => "send_receive_settle_100",
            Self::FleetDrainWide => "drain_2x4_10000",
            Self::FleetDrainWideWaiting => "drain_2x4_10000_waiting",
            Self::SteadyStream => "stream_4_senders_2x4_waiting",
            Self::StreamSendersAlone => "stream_4_senders_alone",
        }
    }

    /// Runs one block, returning messages per second.
    async fn block(self, client: &Client, peer: Option<&Client>, queue: &str) -> f64 {
        let batch: Vec<_> = (0..BATCH).map(|_| step()).collect();
        let mut spent = Duration::ZERO;
        let messages = match self {
            Self::SendMessage => {
                let message = step();
                let started = Instant::now();
                for _ in 0..SENDS {
                    client.send(queue, &message).await;
                }
                spent = started.elapsed();
                SENDS
            }
            Self::SendBatch => {
                let started = Instant::now();
                for _ in 0..BATCHES {
                    client.send_batch(queue, &batch).await;
                }
                spent = started.elapsed();
                BATCHES * BATCH
            }
            Self::ReceiveDelete => {
                for _ in 0..RECEIVES {
                    // Filling the queue is not timed.
                    client.send_batch(queue, &batch).await;
                    let started = Instant::now();
                    let mut got = 0;
                    while got < BATCH {
                        got += client.receive_delete(queue, BATCH - got).await;
                    }
                    spent += started.elapsed();
                }
                RECEIVES * BATCH
            }
            Self::EndToEnd => {
                let started = Instant::now();
                for _ in 0..END_TO_ENDS {
                    end_to_end(client, queue).await;
                }
                spent = started.elapsed();
                END_TO_ENDS * END_TO_END
            }
            Self::ConcurrentSends => {
                let started = Instant::now();
                client.send_concurrently(queue, SENDERS, SENDS_EACH).await;
                spent = started.elapsed();
                SENDERS * SENDS_EACH
            }
            Self::SendReceiveSettle => {
                let started = Instant::now();
                for _ in 0..ROUND_TRIPS {
                    client.send_batch(queue, &batch).await;
                    let mut got = 0;
                    while got < BATCH {
                        got += client.receive_delete_batch(queue, BATCH - got).await;
                    }
                }
                spent = started.elapsed();
                ROUND_TRIPS * BATCH
            }
            Self::FleetDrain => {
                let Some(peer) = peer else {
                    return f64::NAN;
                };
                for _ in 0..FLEET_DRAIN / BATCH {
                    client.send_batch(queue, &batch).await;
                }
                let started = Instant::now();
                fleet_drain(client, peer, queue).await;
                spent = started.elapsed();
                FLEET_DRAIN
            }
            Self::FleetDrainWide | Self::FleetDrainWideWaiting => {
                let Some(peer) = peer else {
                    return f64::NAN;
                };
                for _ in 0..FLEET_WIDE / BATCH {
                    client.send_batch(queue, &batch).await;
                }
                let started = Instant::now();
                let waiting = self == Self::FleetDrainWideWaiting;
                fleet_drain_wide(client, peer, queue, waiting).await;
                spent = started.elapsed();
                FLEET_WIDE
            }
            Self::SteadyStream | Self::StreamSendersAlone => {
                let peer = match self {
                    Self::SteadyStream => match peer {
                        Some(peer) => Some(peer),
                        None => return f64::NAN,
                    },
                    _ => None,
                };
                let started = Instant::now();
                steady_stream(client, peer, queue).await;
                spent = started.elapsed();
                STREAM
            }
        };
        messages as f64 / spent.as_secs_f64()
    }
}

/// Sends one at a time per latency block.
const LATENCY_SENDS: usize = 200;

/// The `q`-quantile of `values` (sorted here).
fn quantile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i]
}

/// Single-sender latency: each client sends one message at a time, each
/// timed, in alternating blocks; prints p50 and p99 over every send of the
/// run and their ratio to the first client's baseline.
fn latency_rows(s: &clients::Setup, rounds: usize, filter: Option<&str>) {
    println!();
    println!("| single-sender latency | provider | client | p50 (µs) | p99 (µs) | p50 vs baseline | p99 vs baseline |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for (provider, clients) in &s.providers {
        let row = format!("send_message_latency/{provider}");
        if filter.is_some_and(|f| !row.contains(f)) {
            continue;
        }
        // Baseline first: the library before grouping, else the raw client;
        // where both exist (PGMQ), the raw client gets a row too.
        let mut pair: Vec<(Client, String, String)> = Vec::new();
        let raw = clients
            .get(1)
            .map(|(raw, queue)| (raw.clone(), queue.clone(), raw.label()));
        match s.rt.block_on(clients::ungrouped(*provider)) {
            Some((client, queue)) => {
                pair.push((client, queue, "tasker, ungrouped (before)".into()));
                pair.extend(raw);
            }
            None => match raw {
                Some(raw) => pair.push(raw),
                None => continue,
            },
        }
        let (ours, queue) = &clients[0];
        pair.push((ours.clone(), queue.clone(), ours.label()));
        let mut times = vec![Vec::new(); pair.len()];
        let message = step();
        for round in 0..rounds {
            for k in 0..pair.len() {
                let i = (k + round) % pair.len();
                let (client, queue, _) = &pair[i];
                s.rt.block_on(async {
                    for _ in 0..LATENCY_SENDS {
                        let started = Instant::now();
                        client.send(queue, &message).await;
                        times[i].push(started.elapsed());
                    }
                });
                s.rt.block_on(purge(clients, queue));
            }
        }
        let p50 = quantile(&mut times[0], 0.5);
        let p99 = quantile(&mut times[0], 0.99);
        for ((_, _, label), t) in pair.iter().zip(times.iter_mut()) {
            let (a, b) = (quantile(t, 0.5), quantile(t, 0.99));
            println!(
                "| send_message | {provider} | {label} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
                a.as_secs_f64() * 1e6,
                b.as_secs_f64() * 1e6,
                a.as_secs_f64() / p50.as_secs_f64(),
                b.as_secs_f64() / p99.as_secs_f64(),
            );
        }
        if let (Client::Tasker(backend), queue, _) = &pair[0] {
            if pair[0].2.contains("before") {
                s.rt.block_on(backend.delete_queue(queue))
                    .expect("delete_queue");
            }
        }
        s.rt.block_on(async move { drop(pair) });
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and
    // then one round is a smoke test.
    let rounds = if !std::env::args().any(|a| a == "--bench") {
        1
    } else if let Some(n) = std::env::var("TASKER_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        n
    } else if std::env::var_os("TASKER_BENCH_QUICK").is_some() {
        5
    } else {
        21
    };
    // `cargo bench` passes flags such as `--bench`; a bare word filters rows.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let s = setup();
    println!("| operation | provider | tasker-messaging (msg/s) | raw client | raw (msg/s) | median ratio | ratio range |");
    println!("| --- | --- | ---: | --- | ---: | ---: | --- |");
    for (provider, clients) in &s.providers {
        if clients.len() < 2 {
            continue; // no raw client to pair with
        }
        // The second process of each client, for the two-process drain.
        let peers: Vec<Option<Client>> = s.rt.block_on(async {
            let mut peers = Vec::new();
            for (client, queue) in clients {
                peers.push(peer(client, queue).await);
            }
            peers
        });
        for operation in Operation::ALL {
            let row = format!("{}/{provider}", operation.name());
            if filter.as_ref().is_some_and(|f| !row.contains(f.as_str())) {
                continue;
            }
            let two_processes = matches!(
                operation,
                Operation::FleetDrain
                    | Operation::FleetDrainWide
                    | Operation::FleetDrainWideWaiting
                    | Operation::SteadyStream
            );
            // A client without a second process (raw PGMQ) sits a
            // two-process row out; the library's row is still measured.
            let runs = |i: usize| !two_processes || peers[i].is_some();
            if !runs(0) {
                continue;
            }
            let mut rates = vec![Vec::with_capacity(rounds); clients.len()];
            for round in 0..rounds {
                for k in 0..clients.len() {
                    let i = (k + round) % clients.len();
                    if !runs(i) {
                        continue;
                    }
                    let (client, queue) = &clients[i];
                    let peer = peers[i].as_ref();
                    rates[i].push(s.rt.block_on(operation.block(client, peer, queue)));
                    // Every block starts from an empty queue.
                    s.rt.block_on(purge(clients, queue));
                }
            }
            let ours = &rates[0];
            if (1..clients.len()).all(|i| !runs(i)) {
                let rate = median(ours);
                println!(
                    "| {} | {provider} | {rate:.0} | (none) | | | |",
                    operation.name()
                );
            }
            for ((raw, _), theirs) in clients.iter().zip(&rates).skip(1) {
                if theirs.is_empty() {
                    continue;
                }
                let ratios: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| a / b).collect();
                let (low, high) = ratios
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
                println!(
                    "| {} | {provider} | {:.0} | {} | {:.0} | {:.2}x | {low:.2}-{high:.2} |",
                    operation.name(),
                    median(ours),
                    raw.label(),
                    median(theirs),
                    median(&ratios),
                );
            }
        }
        // Peers hold connections: drop them inside the runtime (amqprs closes
        // channels from tasks it spawns).
        s.rt.block_on(async move { drop(peers) });
    }
    latency_rows(&s, rounds, filter.as_deref());
}

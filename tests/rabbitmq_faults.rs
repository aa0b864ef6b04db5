//! RabbitMQ fault tests: forced connection closes, dropped consumers, stale
//! receipts. They disturb the broker, so they run one at a time (a global
//! lock) in a virtual host of their own (`tasker_faults`, created with
//! `rabbitmqctl`), where `close_all_connections --vhost` closes every
//! connection of the test and nobody else's. They need RabbitMQ and
//! `rabbitmqctl` (run as root) and fail loudly, naming RabbitMQ, without them.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tasker_messaging::{
    MessageBackend, MessageId, MessagingError, MessagingService, Provider, QueuedMessage,
    SimpleStepMessage,
};
use uuid::Uuid;

const VHOST: &str = "tasker_faults";

/// Serialises the tests of this binary: each disturbs the shared broker.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs `rabbitmqctl` with `args`, panicking with its output on failure.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("RabbitMQ's rabbitmqctl cannot run ({e}); the fault tests need it (as root)")
        });
    assert!(
        output.status.success(),
        "RabbitMQ's `rabbitmqctl {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Closes every connection in the test's virtual host.
async fn close_all_connections() {
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            VHOST,
            "tasker-messaging fault test",
        ])
    })
    .await
    .expect("rabbitmqctl task");
}

/// A backend connected to the test's virtual host (created on first use).
async fn backend() -> MessageBackend {
    static VHOST_READY: OnceLock<()> = OnceLock::new();
    VHOST_READY.get_or_init(|| {
        rabbitmqctl(&["add_vhost", VHOST]);
        rabbitmqctl(&["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]);
    });
    let mut config = common::config(Provider::RabbitMq);
    let mut url = url::Url::parse(&common::amqp_url()).expect("test AMQP URL parses");
    url.set_path(VHOST);
    let url = tasker_messaging::SecretUrl::parse(url.as_str()).expect("URL");
    let rabbitmq = config.rabbitmq.as_mut().expect("RabbitMQ settings");
    rabbitmq.url = url.clone();
    rabbitmq.prefetch_count = 100;
    MessageBackend::connect(&config).await.unwrap_or_else(|e| {
        panic!("RabbitMQ at {url} is not usable: {e}. Start it (scripts/test.sh does) and rerun.")
    })
}

fn generation(backend: &MessageBackend) -> u64 {
    match backend {
        MessageBackend::RabbitMq(rabbit) => rabbit.connection_generation(),
        other => panic!("expected a RabbitMQ backend, got {}", other.provider()),
    }
}

fn queue_name(case: &str) -> String {
    format!(
        "faults_{case}_{}",
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

fn step() -> SimpleStepMessage {
    SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())
}

/// Receives until `want` messages arrived or `within` passed.
async fn receive_n(
    backend: &MessageBackend,
    queue: &str,
    want: usize,
    lease: Duration,
    within: Duration,
) -> Vec<QueuedMessage<SimpleStepMessage>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match backend
            .receive_messages(queue, want - got.len(), lease)
            .await
        {
            Ok(batch) if !batch.is_empty() => got.extend(batch),
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("receive_messages({queue}): {e}"),
        }
    }
    got
}

/// Waits until `backend` has reconnected past generation `after`.
async fn await_reconnect(backend: &MessageBackend, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = generation(backend);
        if now > after {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ backend did not reconnect within 15 s (generation still {now})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct Tally {
    acknowledged: HashSet<MessageId>,
    received: HashMap<MessageId, usize>,
}

/// (a) A producer sends 5,000 messages while consumers receive and delete
/// them, and every connection is closed twice meanwhile: every message whose
/// send returned `Ok` is received at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_forced_connection_closes() {
    const TOTAL: usize = 5_000;
    const PRODUCERS: usize = 50;
    const TICK: Duration = Duration::from_millis(50);
    init_logs();
    let _serial = serial().await;
    let producer = Arc::new(backend().await);
    let consumer = Arc::new(backend().await);
    let queue = queue_name("load");
    producer.create_queue(&queue).await.expect("create_queue");
    let generations_before = (generation(&producer), generation(&consumer));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let retries = Arc::new(AtomicUsize::new(0));
    let failed_deletes = Arc::new(AtomicUsize::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // Paced at about 1,000 messages a second so the closes land mid-stream.
    // PRODUCERS tasks, each sending every TICK: about 1,000 messages a
    // second, with sends in flight nearly all the time, so the closes catch
    // some of them mid-confirm.
    let producer_task = {
        let (producer, queue, tally, retries, producing) = (
            Arc::clone(&producer),
            queue.clone(),
            Arc::clone(&tally),
            Arc::clone(&retries),
            Arc::clone(&producing),
        );
        tokio::spawn(async move {
            let producers = (0..PRODUCERS).map(|p| {
                let (producer, queue, tally, retries) = (
                    Arc::clone(&producer),
                    queue.clone(),
                    Arc::clone(&tally),
                    Arc::clone(&retries),
                );
                async move {
                    let mut tick = tokio::time::interval(TICK);
                    for n in 0..TOTAL / PRODUCERS {
                        tick.tick().await;
                        let message = step();
                        let deadline = Instant::now() + Duration::from_secs(30);
                        let id = loop {
                            match producer.send_message(&queue, &message).await {
                                Ok(id) => break id,
                                Err(e) if e.is_transient() && Instant::now() < deadline => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                Err(e) => panic!("producer {p}, send {n}: {e}"),
                            }
                        };
                        tally.lock().expect("tally").acknowledged.insert(id);
                    }
                }
            });
            join_all(producers).await;
            producing.store(false, Ordering::Release);
        })
    };

    let consumer_task = |_: usize| {
        let (consumer, queue, tally, failed_deletes, stop) = (
            Arc::clone(&consumer),
            queue.clone(),
            Arc::clone(&tally),
            Arc::clone(&failed_deletes),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let batch = match consumer
                    .receive_messages::<SimpleStepMessage>(&queue, 50, Duration::from_secs(30))
                    .await
                {
                    Ok(batch) => batch,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => panic!("receive: {e}"),
                };
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                {
                    let mut tally = tally.lock().expect("tally");
                    for m in &batch {
                        *tally
                            .received
                            .entry(m.metadata.message_id.clone())
                            .or_default() += 1;
                    }
                }
                for m in batch {
                    match consumer.delete_message(&queue, m.receipt()).await {
                        Ok(()) => {}
                        // A lease from before a reconnect: the message comes back.
                        Err(MessagingError::LeaseExpired { .. }) => {
                            failed_deletes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_transient() => {
                            failed_deletes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("delete: {e}"),
                    }
                }
            }
        })
    };
    let consumers: Vec<_> = (0..2).map(consumer_task).collect();

    // Two forced closes while the producer runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    close_all_connections().await;
    let first_close = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    close_all_connections().await;
    let second_close = started.elapsed();

    producer_task.await.expect("producer");
    let sent_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(45);
    let missing = loop {
        let missing = {
            let tally = tally.lock().expect("tally");
            tally
                .acknowledged
                .iter()
                .filter(|id| !tally.received.contains_key(id))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Release);
    for consumer in consumers {
        consumer.await.expect("consumer");
    }

    let (acknowledged, distinct, receives, unacknowledged_received) = {
        let tally = tally.lock().expect("tally");
        let unacknowledged = tally
            .received
            .keys()
            .filter(|id| !tally.acknowledged.contains(id))
            .count();
        (
            tally.acknowledged.len(),
            tally.received.len(),
            tally.received.values().sum::<usize>(),
            unacknowledged,
        )
    };
    let duplicates = receives - distinct;
    let generations_after = (generation(&producer), generation(&consumer));
    println!(
        "fault test (a): sent {TOTAL} messages in {sent_in:?} (closes at {first_close:?} and {second_close:?}); \
         acknowledged (send Ok) {acknowledged}; send retries {}; received {distinct} distinct in {receives} receives; \
         duplicates {duplicates}; received without an Ok send {unacknowledged_received}; \
         deletes refused (lease ended with the connection) {}; missing {missing}; \
         connection generations producer {} -> {}, consumer {} -> {}",
        retries.load(Ordering::Relaxed),
        failed_deletes.load(Ordering::Relaxed),
        generations_before.0,
        generations_after.0,
        generations_before.1,
        generations_after.1,
    );
    assert_eq!(acknowledged, TOTAL, "every send ends Ok");
    assert_eq!(
        missing, 0,
        "messages whose send returned Ok were never received"
    );
    assert!(
        generations_after.0 >= generations_before.0 + 2
            && generations_after.1 >= generations_before.1 + 2,
        "both backends reconnect after each close: {generations_before:?} -> {generations_after:?}"
    );
    producer.delete_queue(&queue).await.expect("delete_queue");
}

/// Runs every future as a task, returning their outputs in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, future) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, future.await) });
    }
    let mut outputs: Vec<(usize, F::Output)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        outputs.push(joined.expect("task"));
    }
    outputs.sort_by_key(|(i, _)| *i);
    outputs.into_iter().map(|(_, output)| output).collect()
}

/// (b) A consumer that drops its backend while holding leases loses them at
/// once: the messages come back to another backend with `receive_count` 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_backend_gives_its_leases_back() {
    init_logs();
    let _serial = serial().await;
    let first = backend().await;
    let queue = queue_name("dropped");
    first.create_queue(&queue).await.expect("create_queue");
    let sent: HashSet<MessageId> = first
        .send_batch(&queue, &[step(), step(), step()])
        .await
        .expect("send_batch")
        .into_iter()
        .collect();
    let held = receive_n(
        &first,
        &queue,
        3,
        Duration::from_secs(600),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(held.len(), 3, "the first backend holds all three");
    assert!(held.iter().all(|m| m.metadata.receive_count == 1));
    drop(held);
    drop(first);

    let second = backend().await;
    // Far sooner than the 600 s lease: the dropped connection released them.
    let back = receive_n(
        &second,
        &queue,
        3,
        Duration::from_secs(60),
        Duration::from_secs(10),
    )
    .await;
    let ids: HashSet<MessageId> = back.iter().map(|m| m.metadata.message_id.clone()).collect();
    assert_eq!(ids, sent, "every held message comes back");
    for m in &back {
        assert_eq!(m.metadata.receive_count, 2, "{:?}", m.metadata);
        second
            .delete_message(&queue, m.receipt())
            .await
            .expect("delete");
    }
    second.delete_queue(&queue).await.expect("delete_queue");
}

/// (c) A receipt from before a reconnect is `LeaseExpired` (no stale tag
/// reaches the broker), and the backend keeps working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_from_before_a_reconnect_is_lease_expired() {
    init_logs();
    let _serial = serial().await;
    let backend = backend().await;
    let queue = queue_name("stale");
    backend.create_queue(&queue).await.expect("create_queue");
    let message = step();
    backend.send_message(&queue, &message).await.expect("send");
    let held = receive_n(
        &backend,
        &queue,
        1,
        Duration::from_secs(600),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(held.len(), 1);
    let before = generation(&backend);

    close_all_connections().await;
    let after = await_reconnect(&backend, before).await;
    println!("fault test (c): connection generation {before} -> {after}");

    let stale = held[0].receipt();
    let expired = |r: Result<(), MessagingError>, what: &str| match r {
        Err(MessagingError::LeaseExpired { .. }) => {}
        other => panic!("{what} with a receipt from before the reconnect: {other:?}"),
    };
    expired(
        backend.delete_message(&queue, stale).await,
        "delete_message",
    );
    expired(
        backend
            .change_message_visibility(&queue, stale, Duration::from_secs(5))
            .await,
        "change_message_visibility",
    );
    expired(
        backend
            .change_message_visibility(&queue, stale, Duration::ZERO)
            .await,
        "release",
    );

    // The broker requeued the message when the connection closed.
    let again = receive_n(
        &backend,
        &queue,
        1,
        Duration::from_secs(60),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(again.len(), 1, "the message comes back after the reconnect");
    assert_eq!(again[0].message, message);
    assert_eq!(again[0].metadata.receive_count, 2);
    backend
        .delete_message(&queue, again[0].receipt())
        .await
        .expect("a fresh receipt deletes");

    // The channels keep working: a full round trip on the new connection.
    let next = step();
    backend
        .send_message(&queue, &next)
        .await
        .expect("send after reconnect");
    let got = receive_n(
        &backend,
        &queue,
        1,
        Duration::from_secs(60),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, next);
    backend
        .delete_message(&queue, got[0].receipt())
        .await
        .expect("delete after reconnect");
    assert!(backend.health_check().await.expect("health_check"));
    assert_eq!(
        generation(&backend),
        after,
        "no further reconnects were needed"
    );
    backend.delete_queue(&queue).await.expect("delete_queue");
}

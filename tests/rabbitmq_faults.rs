//! RabbitMQ fault tests: forced connection closes, dropped consumers, stale
//! receipts, a stopped broker. They disturb the broker, so they run one at a
//! time (a global lock) in a virtual host of their own (`tasker_faults`,
//! created with `rabbitmqctl`), where `close_all_connections --vhost` closes
//! every connection of the test and nobody else's. The circuit-breaker test
//! stops the whole broker application for a few seconds (and starts it again
//! whatever the outcome); so does the stopped-broker test, with default
//! settings. They need RabbitMQ and `rabbitmqctl` (run as root) and fail
//! loudly, naming RabbitMQ, without them.
//!
//! The broker is the one `TASKER_TEST_AMQP_URL` names; `rabbitmqctl` controls
//! the node `TASKER_TEST_RABBITMQCTL_NODE` names (its `-n`), by default the
//! local default node.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use common::load::{self, Load};
use tasker_messaging::{
    CircuitState, MessageBackend, MessageId, MessagingConfig, MessagingError, MessagingService,
    Provider, QueuedMessage, SendOptions, SimpleStepMessage,
};
use uuid::Uuid;

const VHOST: &str = "tasker_faults";

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `rabbitmqctl`, for the node `TASKER_TEST_RABBITMQCTL_NODE` if set.
fn ctl() -> std::process::Command {
    let mut command = std::process::Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var("TASKER_TEST_RABBITMQCTL_NODE") {
        command.args(["-n", &node]);
    }
    command
}

/// Runs `rabbitmqctl` with `args`, panicking with its output on failure.
fn rabbitmqctl(args: &[&str]) {
    let output = ctl().args(args).output().unwrap_or_else(|e| {
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
    backend_with(|_| {}).await
}

/// [`backend`] with settings changed by `configure`.
async fn backend_with(configure: impl FnOnce(&mut MessagingConfig)) -> MessageBackend {
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
    rabbitmq.url = Some(url.clone());
    rabbitmq.prefetch_count = 100;
    configure(&mut config);
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

/// (a) Producers send 5,000 messages while two consuming backends receive and delete
/// them, and every connection is closed twice meanwhile: every message whose
/// send returned `Ok` is received at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_forced_connection_closes() {
    init_logs();
    let _serial = common::serial().await;
    // A close fails every send in flight at once, and each counts against
    // the breaker: with the defaults (5 failures, 30 s open) one close would
    // stall sends for 30 s. Retry longer and reopen sooner, as in
    // tests/pgmq_faults.rs.
    let configure = |config: &mut MessagingConfig| {
        config.retry_policy.max_retries = 5;
        config.circuit_breaker.timeout_ms = 500;
    };
    let producer = Arc::new(backend_with(configure).await);
    // Two consuming backends: two worker processes on one queue.
    let consumer = Arc::new(backend_with(configure).await);
    let other = Arc::new(backend_with(configure).await);
    let queue = queue_name("load");
    producer.create_queue(&queue).await.expect("create_queue");
    let before = (generation(&producer), generation(&consumer));

    let started = Instant::now();
    // Paced at about 1,000 messages a second (50 sends every 50 ms), with
    // sends in flight nearly all the time, so each close (rabbitmqctl takes
    // most of a second) lands mid-stream and catches some sends mid-confirm.
    let report = load::run_fleet(
        Arc::clone(&producer),
        vec![Arc::clone(&consumer), Arc::clone(&other)],
        &queue,
        Load {
            total: 5_000,
            in_flight: 50,
            consumers: 4,
            lease: Duration::from_secs(30),
            disrupt_at: vec![1_000, 3_000],
            deadline: Duration::from_secs(90),
        },
        Duration::from_millis(50),
        move || async move {
            close_all_connections().await;
            println!("closed every connection at {:.1?}", started.elapsed());
        },
    )
    .await;
    report.print("fault test (a), two forced connection closes, two consuming backends");
    assert_eq!(report.disruptions, 2, "both closes ran mid-stream");
    // The second close may land after the last message was received.
    let after = (
        await_reconnect(&producer, before.0 + 1).await,
        await_reconnect(&consumer, before.1 + 1).await,
    );
    println!(
        "connection generations: producer {} -> {}, consumer {} -> {}",
        before.0, after.0, before.1, after.1
    );
    assert_eq!(report.acknowledged, 5_000, "every send ends Ok");
    assert_eq!(
        report.lost, 0,
        "messages whose send returned Ok were never received: {report:?}"
    );
    producer.delete_queue(&queue).await.expect("delete_queue");
}

/// (b) A consumer that drops its backend while holding leases loses them at
/// once: the messages come back to another backend with `receive_count` 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_backend_gives_its_leases_back() {
    init_logs();
    let _serial = common::serial().await;
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
    let _serial = common::serial().await;
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

/// The broker's AMQP address, from the test URL.
fn broker_address() -> String {
    let url = url::Url::parse(&common::amqp_url()).expect("test AMQP URL parses");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5672)
    )
}

/// Starts the RabbitMQ application (a no-op when it runs) and waits until
/// it accepts AMQP connections again.
fn start_broker() {
    let started = ctl().arg("start_app").output();
    if let Err(error) = started {
        eprintln!("RabbitMQ's `rabbitmqctl start_app` could not run: {error}");
    }
    let address = broker_address();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&address).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctl().args(["await_startup", "--timeout", "60"]).output();
}

/// Starts the broker again when dropped, so a failed test leaves it running.
struct RestartBroker;

impl Drop for RestartBroker {
    fn drop(&mut self) {
        start_broker();
    }
}

/// (d) With the broker stopped, the circuit breaker opens after
/// `failure_threshold` transient failures and fails fast; after its timeout
/// a trial call goes through (and reopens it while the broker is still down);
/// with the broker back it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_while_the_broker_is_down_and_recovers() {
    init_logs();
    let _serial = common::serial().await;
    let backend = backend_with(|config| {
        config.retry_policy.max_retries = 0;
        let breaker = &mut config.circuit_breaker;
        breaker.failure_threshold = 3;
        breaker.success_threshold = 1;
        breaker.timeout_ms = 1_000;
        let rabbitmq = config.rabbitmq.as_mut().expect("RabbitMQ settings");
        rabbitmq.connection_timeout_ms = 1_000;
    })
    .await;
    let breaker = backend
        .circuit_breaker()
        .expect("RabbitMQ has a circuit breaker");
    let queue = queue_name("breaker");
    backend.create_queue(&queue).await.expect("create_queue");
    let mut seen = vec![("connected", breaker.state())];

    let _restart = RestartBroker;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .expect("stop_app task");
    let down = Instant::now();
    for attempt in 1..=3 {
        let error = backend
            .get_queue_stats(&queue)
            .await
            .expect_err("the broker is down");
        assert!(
            error.is_transient() && !matches!(error, MessagingError::CircuitOpen { .. }),
            "attempt {attempt} reaches for the broker and fails transiently: {error}"
        );
        seen.push(("failure", breaker.state()));
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert!(
        down.elapsed() < Duration::from_secs(5),
        "three failures took {:?}",
        down.elapsed()
    );

    let (backend_ref, queue_ref) = (&backend, &queue);
    common::within_twice(
        Duration::from_millis(50),
        "an open circuit fails fast",
        || async move {
            let stats = backend_ref.get_queue_stats(queue_ref).await;
            let send = backend_ref.send_message(queue_ref, &step()).await;
            let receive = backend_ref
                .receive_messages::<SimpleStepMessage>(queue_ref, 1, Duration::from_secs(5))
                .await;
            for result in [stats.map(drop), send.map(drop), receive.map(drop)] {
                assert!(
                    matches!(result, Err(MessagingError::CircuitOpen { .. })),
                    "{result:?}"
                );
            }
        },
    )
    .await;
    seen.push(("fail fast", breaker.state()));

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    seen.push(("after timeout_ms", breaker.state()));
    let trial = backend.get_queue_stats(&queue).await;
    assert!(
        matches!(&trial, Err(e) if e.is_transient() && !matches!(e, MessagingError::CircuitOpen { .. })),
        "the trial call reaches for the broker: {trial:?}"
    );
    assert_eq!(breaker.state(), CircuitState::Open);
    seen.push(("failed trial", breaker.state()));

    tokio::task::spawn_blocking(start_broker)
        .await
        .expect("start_app task");
    println!("RabbitMQ was down for {:.1?}", down.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = CircuitState::Open;
    loop {
        let mut note = |state| {
            if state != last {
                seen.push(("broker back", state));
                last = state;
            }
        };
        note(breaker.state());
        let result = backend.get_queue_stats(&queue).await;
        note(breaker.state());
        match result {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("RabbitMQ did not come back within 30 s: {e}"),
        }
    }
    assert_eq!(breaker.state(), CircuitState::Closed);
    seen.push(("first success", breaker.state()));
    println!("circuit states seen: {seen:?}");

    // The data connection recovers too: a full round trip.
    let message = step();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match backend.send_message(&queue, &message).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("send after the broker came back: {e}"),
        }
    }
    let got = receive_n(
        &backend,
        &queue,
        1,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, message);
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (e) With default settings and the broker stopped: `health_check` answers
/// `Ok(false)` within a second, 8 tasks x 100 sends end within a few seconds,
/// mostly with `CircuitOpen`; after the restart the first send succeeds and
/// `health_check` says `Ok(true)` within 1.5 s of the port accepting, and
/// every send that returned `Ok` is received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_fails_fast_and_recovers_within_a_second() {
    init_logs();
    let _serial = common::serial().await;
    let backend = Arc::new(backend().await);
    let queue = queue_name("stopped");
    backend.create_queue(&queue).await.expect("create_queue");
    let _restart = RestartBroker;
    common::outage::stopped_server_within_bounds(
        Arc::clone(&backend),
        &queue,
        &broker_address(),
        || rabbitmqctl(&["stop_app"]),
        start_broker,
        "RabbitMQ",
    )
    .await;
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (f) Sends to a queue whose broker nacks every publish (a policy of
/// `max-length` 0 with `reject-publish`) run beside sends to a healthy queue
/// on the same backend, so on the same publisher channels. A nack retires
/// its channel for new publishes, but the sends awaiting confirms on it get
/// them, and a send that got the channel just before goes out on the next
/// one: no healthy send fails, none is stored twice, and the refusals do not
/// open the circuit (one failed attempt of another kind in a run of this
/// size used to open it: 8 nacking senders, 24 healthy, 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_on_one_queue_cost_a_healthy_queue_nothing() {
    init_logs();
    let _serial = common::serial().await;
    let backend = Arc::new(backend().await);
    let (refusing, healthy) = (queue_name("nacking"), queue_name("healthy"));
    let pattern = format!("^{refusing}$");
    let policy = r#"{"max-length":0,"overflow":"reject-publish"}"#;
    rabbitmqctl(&[
        "set_policy",
        "-p",
        VHOST,
        "--apply-to",
        "queues",
        "tm-nacking",
        &pattern,
        policy,
    ]);
    backend.create_queue(&refusing).await.expect("create_queue");
    backend.create_queue(&healthy).await.expect("create_queue");

    const NACKING: usize = 8;
    let until = Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for i in 0..NACKING + 24 {
        let (backend, queue) = (
            Arc::clone(&backend),
            if i < NACKING {
                refusing.clone()
            } else {
                healthy.clone()
            },
        );
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (0_u64, Vec::new());
            while Instant::now() < until {
                match backend.send_message(&queue, &step()).await {
                    Ok(_) => acked += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (acked, failed)
        }));
    }
    let (mut refused, mut healthy_acked, mut healthy_failed) = (0, 0, Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let (acked, failed) = task.await.expect("sender");
        if i < NACKING {
            // A quorum queue checks its limit after enqueuing: the first
            // publish may be taken.
            assert!(acked <= 1, "the nacking queue stored {acked} messages");
            refused += failed.len();
        } else {
            healthy_acked += acked;
            healthy_failed.extend(failed);
        }
    }
    rabbitmqctl(&["clear_policy", "-p", VHOST, "tm-nacking"]);
    let stored = backend
        .get_queue_stats(&healthy)
        .await
        .expect("stats")
        .message_count;
    println!("nacked sends {refused}, healthy sends acked {healthy_acked}, stored {stored}");
    assert!(refused > 0, "the policy made the broker nack");
    assert!(
        healthy_failed.is_empty(),
        "{} healthy sends failed, e.g. {:?}",
        healthy_failed.len(),
        healthy_failed.first()
    );
    assert_eq!(stored, healthy_acked, "a healthy send was stored twice");
    let breaker = backend.circuit_breaker().expect("a circuit breaker");
    assert_eq!(breaker.state(), CircuitState::Closed, "refusals opened it");
    backend.delete_queue(&refusing).await.expect("delete_queue");
    backend.delete_queue(&healthy).await.expect("delete_queue");
}

/// C41: a delayed message is durable when its send returns: the broker
/// application is stopped and started again while the message waits in the
/// delay tiers (6 s: the 4 s and 2 s levels), and it is received once due,
/// not before, with its headers (at-least-once dead-lettering between the
/// levels; a duplicate would be allowed, a loss not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_survives_a_broker_restart() {
    init_logs();
    let _serial = common::serial().await;
    let backend = backend_with(|_| {}).await;
    let queue = queue_name("delayed_restart");
    backend.create_queue(&queue).await.expect("create_queue");
    let sent = step();
    let delay = Duration::from_secs(6);
    let options = SendOptions::new().delay(delay).header("tenant", "acme");
    let sent_at = Instant::now();
    let id = backend
        .send_message_with(&queue, &sent, &options)
        .await
        .expect("delayed send");
    let restart = RestartBroker;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .expect("stop_app task");
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(move || drop(restart))
        .await
        .expect("start_app task");
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        assert!(Instant::now() < deadline, "the delayed message never came");
        match backend
            .receive_messages::<SimpleStepMessage>(&queue, 10, Duration::from_secs(30))
            .await
        {
            Ok(got) if !got.is_empty() => break got,
            Ok(_) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => panic!("receive after the restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = sent_at.elapsed();
    println!("the delayed message arrived after {elapsed:.1?}");
    assert!(
        elapsed + Duration::from_millis(400) >= delay,
        "received after {elapsed:?}, before its delay"
    );
    assert_eq!(got[0].message, sent);
    assert_eq!(got[0].metadata.message_id, id);
    assert_eq!(got[0].headers(), options.header_map());
    backend.delete_queue(&queue).await.expect("delete_queue");
}

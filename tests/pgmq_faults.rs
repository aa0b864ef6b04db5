//! PostgreSQL fault tests: killed connections, a server restart, a stopped
//! server and a crash, with messages flowing. They disturb the shared server, so they run
//! one at a time, and the server is started again whatever the outcome.
//! They need root (for `pg_ctlcluster`) and fail loudly without it.
//!
//! The server is the one `TASKER_TEST_DATABASE_URL` names; `pg_ctlcluster`
//! controls the cluster `TASKER_TEST_PG_CLUSTER` names (`"<version> <name>"`,
//! e.g. `"15 faults"`), by default the newest version's `main`.

mod common;

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::load::{self, Load};
use sqlx::{Connection, PgConnection};
use tasker_messaging::{
    CircuitState, MessageBackend, MessageId, MessagingConfig, MessagingError, MessagingService,
    Provider, SecretUrl, SendOptions, SimpleStepMessage,
};

const APP: &str = "tasker_fault_test";

/// The test configuration, tagging connections so the tests can find them.
fn config() -> MessagingConfig {
    let mut config = common::config(Provider::Pgmq);
    let pgmq = config.pgmq.as_mut().expect("pgmq settings");
    let mut url = url::Url::parse(&common::database_url()).expect("test URL");
    url.query_pairs_mut().append_pair("application_name", APP);
    pgmq.database_url = SecretUrl::parse(url.as_str()).expect("URL");
    pgmq.connection_timeout_ms = 1_000;
    config.retry_policy.max_retries = 5;
    config.circuit_breaker.timeout_ms = 500;
    config
}

async fn admin() -> PgConnection {
    PgConnection::connect(&common::database_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable: {e}"))
}

/// Terminates every connection of the backend under test; returns how many.
async fn terminate_backend_connections() -> i64 {
    let mut admin = admin().await;
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(APP)
    .fetch_one(&mut admin)
    .await
    .expect("pg_terminate_backend")
}

/// The cluster under test: `TASKER_TEST_PG_CLUSTER`, or the newest `main`.
fn cluster() -> (String, String) {
    if let Ok(named) = std::env::var("TASKER_TEST_PG_CLUSTER") {
        let mut parts = named.split_whitespace().map(str::to_owned);
        match (parts.next(), parts.next()) {
            (Some(version), Some(name)) => return (version, name),
            _ => panic!("TASKER_TEST_PG_CLUSTER must be \"<version> <name>\", not {named:?}"),
        }
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL's /etc/postgresql (pg_ctlcluster needs it)")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a PostgreSQL cluster");
    (version, "main".into())
}

/// Runs `pg_ctlcluster <version> <name> <action> [options]`.
fn pg_ctl(action: &str) {
    pg_ctl_with(action, &[]);
}

fn pg_ctl_with(action: &str, options: &[&str]) {
    let (version, name) = cluster();
    let out = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, &name, action])
        .args(options)
        .output()
        .unwrap_or_else(|e| panic!("PostgreSQL's pg_ctlcluster cannot run ({e})"));
    assert!(
        out.status.success() || action == "start",
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's address, from the test URL.
fn server_address() -> String {
    let url = url::Url::parse(&common::database_url()).expect("test URL");
    format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(5432)
    )
}

/// Starts PostgreSQL again when dropped, so a failed test leaves it running.
struct RestoreServer;

impl Drop for RestoreServer {
    fn drop(&mut self) {
        pg_ctl("start");
        let address = server_address();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn fresh_queue(backend: &MessageBackend, name: &str) -> String {
    let queue = tasker_messaging::conformance::unique_queue(name);
    backend.create_queue(&queue).await.expect("create_queue");
    queue
}

/// (a) 5,000 messages flow while every pool connection is terminated twice:
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_lose_no_message() {
    let _serial = common::serial().await;
    let backend = Arc::new(
        MessageBackend::connect(&config())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}")),
    );
    let queue = fresh_queue(&backend, "terminate").await;
    let report = load::run(
        Arc::clone(&backend),
        Arc::clone(&backend),
        &queue,
        Load {
            total: 5_000,
            in_flight: 8,
            consumers: 3,
            lease: Duration::from_secs(3),
            disrupt_at: vec![1_500, 3_500],
            deadline: Duration::from_secs(120),
        },
        || async {
            let killed = terminate_backend_connections().await;
            println!("terminated {killed} pool connections");
            // None found: the fault never happened (application_name not applied?).
            assert!(killed > 0, "no connection tagged {APP} to terminate");
        },
    )
    .await;
    report.print("pg_terminate_backend x2");
    assert_eq!(report.disruptions, 2, "every termination ran mid-stream");
    assert_eq!(report.acknowledged, 5_000);
    assert_eq!(report.lost, 0, "{report:?}");
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (b) PostgreSQL restarts mid-stream: calls fail transiently or are retried,
/// the backend recovers without being rebuilt, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_no_message() {
    let _serial = common::serial().await;
    let _restore = RestoreServer;
    let backend = Arc::new(
        MessageBackend::connect(&config())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}")),
    );
    let queue = fresh_queue(&backend, "restart").await;
    let report = load::run(
        Arc::clone(&backend),
        Arc::clone(&backend),
        &queue,
        Load {
            total: 2_000,
            in_flight: 8,
            consumers: 3,
            lease: Duration::from_secs(3),
            disrupt_at: vec![800],
            deadline: Duration::from_secs(120),
        },
        || async {
            let started = Instant::now();
            tokio::task::spawn_blocking(|| pg_ctl("restart"))
                .await
                .expect("restart task");
            println!("PostgreSQL restarted in {:.1?}", started.elapsed());
        },
    )
    .await;
    report.print("pg_ctlcluster restart");
    assert_eq!(report.disruptions, 1, "the restart ran mid-stream");
    assert_eq!(report.acknowledged, 2_000);
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(backend.health_check().await.expect("health_check"));
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (c) With the server stopped, the breaker opens after `failure_threshold`
/// failures and fails fast; with it back, it half-opens, then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_and_recovers() {
    let _serial = common::serial().await;
    let _restore = RestoreServer;
    let mut config = config();
    config.retry_policy.max_retries = 0;
    config.circuit_breaker.failure_threshold = 3;
    config.circuit_breaker.success_threshold = 1;
    config.circuit_breaker.timeout_ms = 1_000;
    let backend = MessageBackend::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}"));
    let breaker = backend
        .circuit_breaker()
        .expect("PGMQ has a circuit breaker");
    let queue = fresh_queue(&backend, "breaker").await;
    let mut seen = vec![breaker.state()];

    tokio::task::spawn_blocking(|| pg_ctl("stop"))
        .await
        .expect("stop");
    for attempt in 1..=3 {
        let err = backend
            .get_queue_stats(&queue)
            .await
            .expect_err("server is down");
        assert!(err.is_transient(), "attempt {attempt}: {err}");
        seen.push(breaker.state());
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let (backend_ref, queue_ref) = (&backend, &queue);
    common::within_twice(
        Duration::from_millis(50),
        "an open circuit fails fast",
        || async move {
            let fast = backend_ref.get_queue_stats(queue_ref).await;
            assert!(
                matches!(fast, Err(MessagingError::CircuitOpen { .. })),
                "{fast:?}"
            );
        },
    )
    .await;

    tokio::task::spawn_blocking(|| pg_ctl("start"))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    seen.push(breaker.state());
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match backend.get_queue_stats(&queue).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("PostgreSQL did not come back: {e}"),
        }
    }
    seen.push(breaker.state());
    assert_eq!(breaker.state(), CircuitState::Closed);
    println!("circuit states seen: {seen:?}");
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (d) With default settings and the server stopped: `health_check` answers
/// `Ok(false)` within a second, 8 tasks x 100 sends end within a few seconds,
/// mostly with `CircuitOpen`; after the restart the first send succeeds and
/// `health_check` says `Ok(true)` within 1.5 s of the port accepting, and
/// every send that returned `Ok` is received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_fast_and_recovers_within_a_second() {
    let _serial = common::serial().await;
    let _restore = RestoreServer;
    let backend = Arc::new(
        MessageBackend::connect(&common::config(Provider::Pgmq))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}")),
    );
    let queue = fresh_queue(&backend, "stopped").await;
    common::outage::stopped_server_within_bounds(
        Arc::clone(&backend),
        &queue,
        &server_address(),
        || pg_ctl("stop"),
        || pg_ctl("start"),
        "PostgreSQL",
    )
    .await;
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// (e) C5 through a crash: PostgreSQL is killed (`stop -m immediate`: no
/// checkpoint, no clean shutdown) while 8 tasks send; after the restart
/// every send that returned `Ok` is in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_crash() {
    let _serial = common::serial().await;
    let _restore = RestoreServer;
    let backend = Arc::new(
        MessageBackend::connect(&config())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}")),
    );
    let queue = fresh_queue(&backend, "crash").await;
    // The claim holds only with the server's durability settings on.
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .expect("PostgreSQL is not reachable");
    for setting in ["fsync", "synchronous_commit"] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut admin)
            .await
            .expect("SHOW");
        assert_eq!(
            value, "on",
            "{setting} must be on for this test to mean anything"
        );
    }
    drop(admin);
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let sending = Arc::new(AtomicBool::new(true));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (backend, queue) = (Arc::clone(&backend), queue.clone());
            let (acknowledged, sending) = (Arc::clone(&acknowledged), Arc::clone(&sending));
            let (in_flight, failed) = (Arc::clone(&in_flight), Arc::clone(&failed));
            tokio::spawn(async move {
                while sending.load(Ordering::Acquire) {
                    let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let sent = backend.send_message(&queue, &step).await;
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    match sent {
                        Ok(id) => {
                            acknowledged.lock().expect("tally").insert(id);
                        }
                        Err(e) if e.is_transient() => {
                            failed.fetch_add(1, Ordering::AcqRel);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("send_message: {e}"),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().expect("tally").len() < 1_000 {
        assert!(Instant::now() < deadline, "1,000 sends took over 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Killed mid-stream: sends are committing as it goes down.
    let in_flight_at_kill = in_flight.load(Ordering::Acquire);
    assert!(in_flight_at_kill > 0, "no send was in flight at the kill");
    tokio::task::spawn_blocking(|| pg_ctl_with("stop", &["-m", "immediate"]))
        .await
        .expect("crash");
    let at_crash = acknowledged.lock().expect("tally").len();
    sending.store(false, Ordering::Release);
    tokio::task::spawn_blocking(|| pg_ctl("start"))
        .await
        .expect("start");
    for sender in senders {
        sender.await.expect("sender task");
    }
    let want: HashSet<MessageId> = acknowledged.lock().expect("tally").clone();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&seen) && Instant::now() < deadline {
        match backend
            .receive_messages::<SimpleStepMessage>(&queue, 100, Duration::from_secs(60))
            .await
        {
            Ok(batch) if batch.is_empty() => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(batch) => seen.extend(batch.into_iter().map(|m| m.metadata.message_id)),
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("receive_messages: {e}"),
        }
    }
    let lost = want.difference(&seen).count();
    let failed = failed.load(Ordering::Acquire);
    println!(
        "crash: {in_flight_at_kill} sends in flight at the kill, {failed} failed by it, {} acknowledged ({at_crash} when the kill returned), {} received, {lost} lost",
        want.len(),
        seen.len()
    );
    assert!(
        failed > 0,
        "the kill failed no send: it did not interrupt the stream"
    );
    assert_eq!(lost, 0, "sends that returned Ok did not survive the crash");
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// C41: a delayed message is durable when its send returns, as a plain one
/// is (C5): PostgreSQL is killed (`stop -m immediate`) and started again
/// while the delay runs, and the message is received once it is due, not
/// before, with its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_survives_a_restart() {
    let _serial = common::serial().await;
    let _restore = RestoreServer;
    let backend = MessageBackend::connect(&config())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not usable: {e}"));
    let queue = fresh_queue(&backend, "delayed_restart").await;
    let step = SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let delay = Duration::from_secs(4);
    let options = SendOptions::new().delay(delay).header("tenant", "acme");
    let sent_at = Instant::now();
    let id = backend
        .send_message_with(&queue, &step, &options)
        .await
        .expect("delayed send");
    pg_ctl_with("stop", &["-m", "immediate"]);
    // Starts the server and waits until it accepts connections.
    drop(RestoreServer);
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        assert!(Instant::now() < deadline, "the delayed message never came");
        match backend
            .receive_messages::<SimpleStepMessage>(&queue, 1, Duration::from_secs(30))
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
    assert!(
        elapsed + Duration::from_millis(400) >= delay,
        "received after {elapsed:?}, before its delay"
    );
    assert_eq!(got[0].message, step);
    assert_eq!(got[0].metadata.message_id, id);
    assert_eq!(got[0].headers(), options.header_map());
    backend.delete_queue(&queue).await.expect("delete_queue");
}

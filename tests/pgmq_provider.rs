//! PGMQ-specific behaviour the shared suite cannot show: installation on a
//! fresh database, health when the server is gone, and secrets in errors.

mod common;

use std::time::{Duration, Instant};

use sqlx::{postgres::PgPoolOptions, Connection, PgConnection};
use tasker_messaging::{
    MessageBackend, MessagingConfig, MessagingService, PgmqMessageService, Provider, SecretUrl,
};

async fn admin() -> PgConnection {
    PgConnection::connect(&common::database_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable: {e}"))
}

/// Concurrent first connects to a database without PGMQ all succeed: one
/// installs under the advisory lock, the others find it installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connects_install_pgmq_once() {
    let db = format!(
        "tasker_install_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut admin = admin().await;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut config = common::config(Provider::Pgmq);
    let base = common::database_url();
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    config.pgmq.as_mut().unwrap().database_url = SecretUrl::parse(&url).unwrap();

    let (a, b, c) = tokio::join!(
        MessageBackend::connect(&config),
        MessageBackend::connect(&config),
        MessageBackend::connect(&config),
    );
    for backend in [a, b, c] {
        let backend = backend.expect("connect installs or finds PGMQ");
        backend.create_queue("installed").await.unwrap();
        assert!(backend.health_check().await.unwrap());
    }
    let mut fresh = PgConnection::connect(&url).await.unwrap();
    let scripts: i64 = sqlx::query_scalar("SELECT count(*) FROM pgmq.__pgmq_migrations")
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert!(
        scripts >= 1,
        "the embedded PGMQ SQL was recorded as applied"
    );
    fresh.close().await.unwrap();
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// `health_check` answers `false`, quickly, when nothing listens.
#[tokio::test]
async fn health_check_is_false_when_the_server_is_gone() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let service = PgmqMessageService::from_pool(pool, &MessagingConfig::default())
        .expect("the default config is valid");
    let started = Instant::now();
    assert!(!service.health_check().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        service.get_queue_stats("q").await,
        Err(e) if e.is_transient()
    ));
}

/// A password in the URL appears in no error from a failed connect.
#[tokio::test]
async fn connect_errors_hide_the_password() {
    let mut config = common::config(Provider::Pgmq);
    let pgmq = config.pgmq.as_mut().unwrap();
    pgmq.database_url = SecretUrl::parse("postgres://postgres:hunter2@127.0.0.1:1/test").unwrap();
    pgmq.connection_timeout_ms = 500;
    let err = MessageBackend::connect(&config).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(err.is_transient(), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// Concurrent `send_message` calls are grouped into shared statements: each
/// caller gets its own message's id, every message arrives once, and a group
/// that fails (its queue is missing) fails every caller in it while the
/// groups of another queue, sent at the same moment, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_sends_answer_each_caller_for_its_own_message() {
    use std::{collections::HashMap, sync::Arc};
    use tasker_messaging::{conformance, MessagingError, SimpleStepMessage};

    const SENDERS: usize = 64;
    let backend = Arc::new(common::backend(Provider::Pgmq).await);
    let queue = conformance::unique_queue("grouped_sends");
    let missing = conformance::unique_queue("grouped_missing");
    backend.create_queue(&queue).await.expect("create_queue");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SENDERS {
        let backend = Arc::clone(&backend);
        let target = if i % 4 == 3 {
            missing.clone()
        } else {
            queue.clone()
        };
        tasks.spawn(async move {
            let message = conformance::step();
            let sent = backend.send_message(&target, &message).await;
            (target, message, sent)
        });
    }
    let mut by_id = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (target, message, sent) = joined.expect("sender task");
        if target == missing {
            assert!(
                matches!(sent, Err(MessagingError::QueueNotFound { .. })),
                "a send to the missing queue: {sent:?}"
            );
        } else {
            let id = sent.expect("a send to the existing queue");
            assert!(by_id.insert(id, message).is_none(), "ids are distinct");
        }
    }
    assert_eq!(by_id.len(), SENDERS / 4 * 3);
    let got = backend
        .receive_messages::<SimpleStepMessage>(&queue, SENDERS, Duration::from_secs(30))
        .await
        .expect("receive");
    assert_eq!(got.len(), by_id.len(), "every message stored once");
    for message in &got {
        assert_eq!(
            by_id.get(&message.metadata.message_id),
            Some(&message.message),
            "each caller's id names its own message"
        );
    }
    backend.delete_queue(&queue).await.expect("delete_queue");
}

/// A backend shared between runtimes keeps sending after runtimes that sent
/// through it shut down mid-send: a flush task dropped before its first poll
/// hands its place back, so later sends neither hang nor queue forever.
#[test]
fn a_shared_backend_outlives_runtimes_that_sent_through_it() {
    use tasker_messaging::conformance;

    let main = tokio::runtime::Runtime::new().unwrap();
    let (backend, queue) = main.block_on(async {
        let backend = common::backend(Provider::Pgmq).await;
        let queue = conformance::unique_queue("shared_runtimes");
        backend.create_queue(&queue).await.expect("create_queue");
        (backend, queue)
    });
    for round in 0..20u64 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..16 {
            let (backend, queue) = (backend.clone(), queue.clone());
            runtime.spawn(async move {
                loop {
                    let _ = backend.send_message(&queue, &conformance::step()).await;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(5 + round % 7));
        drop(runtime);
    }
    main.block_on(async {
        for _ in 0..20 {
            tokio::time::timeout(
                Duration::from_secs(5),
                backend.send_message(&queue, &conformance::step()),
            )
            .await
            .expect("a send after the runtimes are gone answers")
            .expect("and stores its message");
        }
        backend.delete_queue(&queue).await.expect("delete_queue");
    });
}

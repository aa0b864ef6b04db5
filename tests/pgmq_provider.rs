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

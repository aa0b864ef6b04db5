//! Backends for the live test suites, connected to this machine's services.
//!
//! A missing service fails the test loudly and names the service; nothing is skipped.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

pub mod load;
pub mod logs;
pub mod outage;

/// Serialises the tests of one binary that disturb a shared server (fault tests).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// Times `call` against `bound`, measuring once more before failing: a
/// scheduling stall on a loaded machine can delay one measurement, not two.
/// Returns the time that met the bound.
pub async fn within_twice<F, Fut>(bound: Duration, what: &str, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        call().await;
        let elapsed = started.elapsed();
        if elapsed < bound {
            return elapsed;
        }
        println!("{what}: {elapsed:?}, over {bound:?}; measuring once more");
        took.push(elapsed);
    }
    panic!("{what}: {took:?}, both over {bound:?}");
}

use std::time::{Duration, Instant};

use tasker_messaging::{
    MessageBackend, MessagingConfig, MigrationConfig, PgmqConfig, Provider, RabbitMqConfig,
    SecretUrl,
};

/// PostgreSQL for the PGMQ tests; override with `TASKER_TEST_DATABASE_URL`.
pub fn database_url() -> String {
    std::env::var("TASKER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// RabbitMQ for the RabbitMQ tests; override with `TASKER_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("TASKER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The configuration the suites use: small limits so dead-letter cases are quick.
pub fn config(provider: Provider) -> MessagingConfig {
    let url = |text: String| SecretUrl::parse(&text).expect("test URL parses");
    // The config types are non-exhaustive: built from defaults, then set.
    let mut config = MessagingConfig::default();
    config.provider = provider;
    config.queues.max_receive_count = 3;
    config.queues.max_message_bytes = 4 * 1024;
    let mut pgmq = PgmqConfig::new(url(database_url()));
    pgmq.pool_size = 4;
    pgmq.connection_timeout_ms = 5_000;
    config.pgmq = Some(pgmq);
    let mut rabbitmq = RabbitMqConfig::new(url(amqp_url()));
    rabbitmq.prefetch_count = 50;
    rabbitmq.heartbeat_interval_secs = 10;
    rabbitmq.connection_timeout_ms = 5_000;
    config.rabbitmq = Some(rabbitmq);
    config
}

/// The suites' configuration for a migration from `from` to `to`.
pub fn migrating_config(from: Provider, to: Provider) -> MessagingConfig {
    let mut config = config(from);
    config.migration = Some(MigrationConfig::new(to));
    config
}

/// A connected backend migrating from `from` to `to`, or a panic naming the
/// service that is missing.
pub async fn migrating(from: Provider, to: Provider) -> MessageBackend {
    connect(migrating_config(from, to), to).await
}

/// A connected backend, or a panic that names the service that is missing.
pub async fn backend(provider: Provider) -> MessageBackend {
    connect(config(provider), provider).await
}

/// Connects `config`, or panics naming the service behind `provider`.
pub async fn connect(config: MessagingConfig, provider: Provider) -> MessageBackend {
    MessageBackend::connect(&config).await.unwrap_or_else(|e| {
        let service = match provider {
            Provider::Pgmq => format!(
                "PostgreSQL at {}",
                config
                    .pgmq
                    .as_ref()
                    .map(|c| c.database_url.to_string())
                    .unwrap_or_default()
            ),
            Provider::RabbitMq => format!(
                "RabbitMQ at {}",
                config
                    .rabbitmq
                    .as_ref()
                    .map(|c| {
                        let nodes: Vec<String> = c.nodes().iter().map(|u| u.to_string()).collect();
                        nodes.join(", ")
                    })
                    .unwrap_or_default()
            ),
            other => format!("the {other} provider"),
        };
        panic!("{service} is not usable: {e}. Start it (scripts/test.sh does) and rerun.")
    })
}

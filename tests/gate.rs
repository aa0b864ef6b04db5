//! The validation gate, table-driven: every public constructor refuses a bad
//! config with a typed error before any I/O, and every operation refuses a bad
//! queue name before any I/O. "Before any I/O" is proven by pointing the
//! servers at a port where nothing listens (any I/O would be a `Connection`
//! error) and, for operations, by a PGMQ backend on a lazy pool to that port.

mod common;

use std::time::{Duration, Instant};

use tasker_messaging::{
    InMemoryMessageService, MessageBackend, MessagingConfig, MessagingError, MessagingService,
    PgmqMessageService, Provider, RabbitMqMessageService, SecretUrl, SimpleStepMessage,
};

/// A config whose servers do not exist: any I/O fails with `Connection`.
fn unreachable(provider: Provider) -> MessagingConfig {
    let mut config = common::config(provider);
    let url = |text: &str| SecretUrl::parse(text).expect("URL");
    if let Some(pgmq) = config.pgmq.as_mut() {
        pgmq.database_url = url("postgres://postgres@127.0.0.1:1/test");
    }
    if let Some(rabbitmq) = config.rabbitmq.as_mut() {
        rabbitmq.url = Some(url("amqp://guest:guest@127.0.0.1:1/%2f"));
    }
    config
}

/// How to break a good config.
type Spoil = fn(&mut MessagingConfig);

/// The bad configs: a name, and how to break a good config.
fn bad_configs() -> Vec<(&'static str, Spoil)> {
    vec![
        ("suffix with a quote", |c| {
            c.queues.dead_letter_queue_suffix = "_dlq'".into()
        }),
        ("empty suffix", |c| {
            c.queues.dead_letter_queue_suffix = String::new()
        }),
        ("prefetch 0", |c| {
            if let Some(r) = c.rabbitmq.as_mut() {
                r.prefetch_count = 0;
            }
        }),
        ("max_receive_count 0", |c| c.queues.max_receive_count = 0),
        ("48-byte namespace queue", |c| {
            c.queues.namespaces = vec!["n".repeat(48)];
        }),
    ]
}

fn assert_config_error<T>(result: Result<T, MessagingError>, what: &str) {
    match result {
        Err(MessagingError::Config(_)) => {}
        Err(other) => panic!("{what}: expected a Config error, got {other:?}"),
        Ok(_) => panic!("{what}: expected a Config error, got a service"),
    }
}

#[tokio::test]
async fn every_constructor_refuses_a_bad_config_before_io() {
    for (name, spoil) in bad_configs() {
        for provider in [Provider::Pgmq, Provider::RabbitMq, Provider::InMemory] {
            let mut config = unreachable(provider);
            spoil(&mut config);
            // prefetch only matters where there is a [rabbitmq] section: it
            // is validated whenever the section is present.
            let started = Instant::now();
            assert_config_error(
                MessageBackend::connect(&config).await,
                &format!("MessageBackend::connect({provider}, {name})"),
            );
            assert_config_error(
                PgmqMessageService::connect(&config).await,
                &format!("PgmqMessageService::connect({name})"),
            );
            assert_config_error(
                RabbitMqMessageService::connect(&config).await,
                &format!("RabbitMqMessageService::connect({name})"),
            );
            let pool = sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://postgres@127.0.0.1:1/test")
                .expect("a lazy pool does no I/O");
            assert_config_error(
                PgmqMessageService::from_pool(pool, &config),
                &format!("PgmqMessageService::from_pool({name})"),
            );
            if name != "prefetch 0" {
                assert_config_error(
                    InMemoryMessageService::new(config.queues.clone()),
                    &format!("InMemoryMessageService::new({name})"),
                );
            }
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{name}: refusing took {:?}, as if it had tried the network",
                started.elapsed()
            );
        }
    }
}

#[tokio::test]
async fn every_operation_refuses_a_bad_name_before_io() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .expect("a lazy pool does no I/O");
    // Any I/O on this backend would fail with Connection.
    let offline: MessageBackend =
        PgmqMessageService::from_pool(pool, &common::config(Provider::Pgmq))
            .expect("valid config")
            .into();
    let live = common::backend(Provider::InMemory).await;
    let receipt = "pgmq:q:1:1".parse().expect("infallible");
    for backend in [&offline, &live] {
        for name in ["", "Bad", "quote'", "semi;colon", &"b".repeat(48)] {
            let what = format!("{} {name:?}", backend.provider());
            let check = |result: Result<(), MessagingError>, op: &str| match result {
                Err(MessagingError::InvalidQueueName { .. }) => {}
                other => panic!("{what} {op}: expected InvalidQueueName, got {other:?}"),
            };
            check(backend.create_queue(name).await, "create_queue");
            check(backend.delete_queue(name).await, "delete_queue");
            check(
                backend
                    .send_message(
                        name,
                        &SimpleStepMessage::new(uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
                    )
                    .await
                    .map(drop),
                "send_message",
            );
            check(
                backend
                    .send_batch::<SimpleStepMessage>(name, &[])
                    .await
                    .map(drop),
                "send_batch",
            );
            check(
                backend
                    .receive_messages::<SimpleStepMessage>(name, 1, Duration::from_secs(1))
                    .await
                    .map(drop),
                "receive_messages",
            );
            check(
                backend
                    .receive_messages_wait::<SimpleStepMessage>(
                        name,
                        1,
                        Duration::from_secs(1),
                        Duration::from_secs(1),
                    )
                    .await
                    .map(drop),
                "receive_messages_wait",
            );
            check(
                backend.delete_message(name, &receipt).await,
                "delete_message",
            );
            check(
                backend
                    .delete_messages(name, std::slice::from_ref(&receipt))
                    .await
                    .map(drop),
                "delete_messages",
            );
            check(
                backend
                    .change_message_visibility(name, &receipt, Duration::ZERO)
                    .await,
                "change_message_visibility",
            );
            check(
                backend.get_queue_stats(name).await.map(drop),
                "get_queue_stats",
            );
            check(backend.purge_queue(name).await.map(drop), "purge_queue");
        }
        // A dead-letter queue's name: refused by create_queue alone (C1).
        let what = format!("{} create_queue(\"orders_dlq\")", backend.provider());
        match backend.create_queue("orders_dlq").await {
            Err(MessagingError::InvalidQueueName { .. }) => {}
            other => panic!("{what}: expected InvalidQueueName, got {other:?}"),
        }
    }
}

//! A password in a URL, in its user info or its query (`?password=`),
//! appears nowhere: not in `Debug`/`Display` of the config, not in connect
//! errors, not in any tracing output (captured at TRACE, from every thread). The RabbitMQ session logs in as a user made for
//! the test (with `rabbitmqctl`, as root) whose password is the secret, and
//! has its connections closed so reconnect logging runs too; then again
//! through a list of nodes (`rabbitmq.urls`), one unreachable.

mod common;

use common::logs::Captured;

use std::time::Duration;

use tasker_messaging::{MessageBackend, MessagingService, Provider, SecretUrl, SimpleStepMessage};

const PASSWORD: &str = "hunter2-s3cr3t";

/// A RabbitMQ user whose password is [`PASSWORD`], deleted when dropped.
struct RabbitUser(String);

fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("RabbitMQ's rabbitmqctl cannot run ({e}); this test needs it (as root)")
        });
    assert!(
        output.status.success(),
        "RabbitMQ's `rabbitmqctl {}` failed: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl RabbitUser {
    fn create() -> Self {
        let name = format!(
            "tasker_secrets_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        rabbitmqctl(&["add_user", &name, PASSWORD]);
        let user = Self(name);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.0, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

fn with_password(url: &str) -> SecretUrl {
    let mut url = url::Url::parse(url).expect("test URL");
    if url.username().is_empty() {
        url.set_username("postgres").expect("username");
    }
    url.set_password(Some(PASSWORD)).expect("password");
    SecretUrl::parse(url.as_str()).expect("URL")
}

/// `url` with the password in the query string: `?password=...`.
fn in_query(url: &str) -> SecretUrl {
    let mut url = url::Url::parse(url).expect("test URL");
    url.query_pairs_mut().append_pair("password", PASSWORD);
    SecretUrl::parse(url.as_str()).expect("URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_errors_debug_or_logs() {
    let captured = Captured::default();
    let subscriber = captured.subscriber();
    // Global, so events of the runtime's worker threads (where the providers'
    // background tasks log) are captured too; this binary has one test.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let mut shown = String::new();

    // PostgreSQL trusts local connections, so the password is carried but unused:
    // a full session (install check, send, receive, stats) runs with it.
    let mut config = common::config(Provider::Pgmq);
    config.pgmq.as_mut().unwrap().database_url = with_password(&common::database_url());
    shown += &format!("{config:?} {}", config.pgmq.as_ref().unwrap().database_url);
    let backend = MessageBackend::connect(&config)
        .await
        .expect("PostgreSQL connects");
    let queue = tasker_messaging::conformance::unique_queue("secrets");
    shown += &session(&backend, &queue).await.0;
    backend.delete_queue(&queue).await.unwrap();

    // The same, with the password as a query parameter (a form sqlx accepts).
    let mut query_config = common::config(Provider::Pgmq);
    query_config.pgmq.as_mut().unwrap().database_url = in_query(&common::database_url());
    let url = &query_config.pgmq.as_ref().unwrap().database_url;
    assert!(
        url.expose().contains(PASSWORD),
        "the test carries the secret"
    );
    let seen = format!("{query_config:?} {url}");
    assert!(seen.contains("password=***"), "{seen}");
    shown += &seen;
    let backend = MessageBackend::connect(&query_config)
        .await
        .expect("PostgreSQL connects");
    let queue = tasker_messaging::conformance::unique_queue("secrets");
    shown += &session(&backend, &queue).await.0;
    backend.delete_queue(&queue).await.unwrap();

    // RabbitMQ checks the password: a full session as a user whose password
    // is the secret, then its connections closed by the broker, so the
    // provider logs the loss, the reconnect and the recovery.
    let user = tokio::task::spawn_blocking(RabbitUser::create)
        .await
        .expect("add_user task");
    let mut rabbit = common::config(Provider::RabbitMq);
    let mut url = url::Url::parse(&common::amqp_url()).expect("test AMQP URL");
    url.set_username(&user.0).expect("username");
    url.set_password(Some(PASSWORD)).expect("password");
    rabbit.rabbitmq.as_mut().unwrap().url = Some(SecretUrl::parse(url.as_str()).expect("URL"));
    shown += &format!("{rabbit:?} {:?}", rabbit.rabbitmq.as_ref().unwrap().url);
    let backend = MessageBackend::connect(&rabbit)
        .await
        .expect("RabbitMQ accepts the test user");
    let queue = tasker_messaging::conformance::unique_queue("secrets");
    let (seen, received) = session(&backend, &queue).await;
    assert_eq!(received, 1);
    shown += &seen;
    let MessageBackend::RabbitMq(rabbit) = &backend else {
        unreachable!("connected as RabbitMQ")
    };
    let before = rabbit.connection_generation();
    let name = user.0.clone();
    tokio::task::spawn_blocking(move || {
        rabbitmqctl(&[
            "close_all_user_connections",
            &name,
            "tasker-messaging secrets test",
        ])
    })
    .await
    .expect("close task");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while rabbit.connection_generation() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "RabbitMQ backend did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend
        .send_message(&queue, &tasker_messaging::conformance::step())
        .await
        .unwrap();
    assert!(backend.health_check().await.unwrap());
    backend.delete_queue(&queue).await.unwrap();
    drop(backend);

    // A list of nodes (`rabbitmq.urls`), each with the password: one that
    // refuses (tried first half the time: its failure is logged), then the
    // broker. Shown in Debug, Display, logs, and the connect error below.
    let mut cluster = common::config(Provider::RabbitMq);
    let rabbitmq = cluster.rabbitmq.as_mut().unwrap();
    rabbitmq.url = None;
    rabbitmq.urls = vec![
        with_password("amqp://guest@127.0.0.1:1/%2f"),
        SecretUrl::parse(url.as_str()).expect("URL"),
    ];
    assert!(rabbitmq.urls.iter().all(|u| u.expose().contains(PASSWORD)));
    shown += &format!(
        "{cluster:?} {:?}",
        cluster.rabbitmq.as_ref().unwrap().nodes()
    );
    for node in cluster.rabbitmq.as_ref().unwrap().nodes() {
        shown += &format!(" {node}");
    }
    let backend = MessageBackend::connect(&cluster)
        .await
        .expect("the list's live node accepts the test user");
    let queue = tasker_messaging::conformance::unique_queue("secrets");
    let (seen, received) = session(&backend, &queue).await;
    assert_eq!(received, 1);
    shown += &seen;
    backend.delete_queue(&queue).await.unwrap();
    drop(backend);
    drop(user);

    // Unreachable servers, and RabbitMQ refusing the password.
    let mut unreachable_pg = config.clone();
    let pgmq = unreachable_pg.pgmq.as_mut().unwrap();
    pgmq.database_url = with_password("postgres://postgres@127.0.0.1:1/test");
    pgmq.connection_timeout_ms = 300;
    let mut rabbit_bad_password = common::config(Provider::RabbitMq);
    rabbit_bad_password.rabbitmq.as_mut().unwrap().url = Some(with_password(&common::amqp_url()));
    let mut rabbit_unreachable = rabbit_bad_password.clone();
    let rabbitmq = rabbit_unreachable.rabbitmq.as_mut().unwrap();
    rabbitmq.url = Some(with_password("amqp://guest@127.0.0.1:1/%2f"));
    rabbitmq.connection_timeout_ms = 300;
    let mut rabbit_cluster_unreachable = rabbit_unreachable.clone();
    let rabbitmq = rabbit_cluster_unreachable.rabbitmq.as_mut().unwrap();
    rabbitmq.url = None;
    rabbitmq.urls = vec![
        with_password("amqp://guest@127.0.0.1:1/%2f"),
        in_query("amqp://guest@127.0.0.1:2/%2f"),
    ];
    let mut unreachable_pg_query = unreachable_pg.clone();
    unreachable_pg_query.pgmq.as_mut().unwrap().database_url =
        in_query("postgres://postgres@127.0.0.1:1/test");
    for config in [
        unreachable_pg,
        unreachable_pg_query,
        rabbit_bad_password,
        rabbit_unreachable,
        rabbit_cluster_unreachable,
    ] {
        let err = MessageBackend::connect(&config)
            .await
            .expect_err("connect must fail");
        shown += &format!("{err} {err:?} {config:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            shown += &format!(" {e} {e:?}");
            source = e.source();
        }
    }

    let logs = captured.text();
    assert!(
        !logs.is_empty(),
        "tracing captured nothing; the test would prove nothing"
    );
    assert!(
        logs.contains("RabbitMQ connection recovered"),
        "the reconnect was not logged; the test would prove less: {logs}"
    );
    assert!(!shown.contains(PASSWORD), "password shown: {shown}");
    assert!(!logs.contains(PASSWORD), "password logged: {logs}");
    assert!(
        shown.contains("***"),
        "the redaction marker is shown instead"
    );
}

/// Creates `queue`, sends a step, receives it (waiting up to 5 s) and reads
/// the stats; returns everything shown along the way and how many arrived.
async fn session(backend: &MessageBackend, queue: &str) -> (String, usize) {
    backend.create_queue(queue).await.unwrap();
    backend
        .send_message(queue, &tasker_messaging::conformance::step())
        .await
        .unwrap();
    let got = backend
        .receive_messages_wait::<SimpleStepMessage>(
            queue,
            1,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let stats = backend.get_queue_stats(queue).await.unwrap();
    (format!("{backend:?} {got:?} {stats:?}"), got.len())
}

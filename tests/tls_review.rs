//! Review probes for the TLS change (issue 19 item 3). Each case prints what
//! it observed; the assertions state what the requirements demand.

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tasker_messaging::{
    MessageBackend, MessagingConfig, MessagingError, PgmqConfig, PgmqMessageService, Provider,
    RabbitMqConfig, RabbitMqTlsConfig, SecretUrl,
};

const PASSWORD: &str = "hunter2-review";
const TIMEOUT_MS: u64 = 2_000;
const CERTS: &str = "/var/tmp/tasker-rabbitmq-tls/certs";
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn pg(url: &str) -> MessagingConfig {
    let mut config = common::config(Provider::Pgmq);
    let mut pgmq = PgmqConfig::new(SecretUrl::parse(url).unwrap());
    pgmq.pool_size = 2;
    pgmq.connection_timeout_ms = TIMEOUT_MS;
    config.pgmq = Some(pgmq);
    config
}

fn rabbit(url: &str, tls: RabbitMqTlsConfig) -> MessagingConfig {
    let mut config = common::config(Provider::RabbitMq);
    let mut r = RabbitMqConfig::new(SecretUrl::parse(url).unwrap());
    r.connection_timeout_ms = TIMEOUT_MS;
    r.tls = tls;
    config.rabbitmq = Some(r);
    config
}

async fn outcome(what: &str, config: &MessagingConfig) -> Option<MessagingError> {
    let started = Instant::now();
    let result = MessageBackend::connect(config).await;
    let took = started.elapsed();
    match result {
        Ok(_) => {
            println!("[{what}] CONNECTED in {took:?}");
            None
        }
        Err(e) => {
            let kind = match &e {
                MessagingError::Tls { .. } => "Tls",
                MessagingError::Config(_) => "Config",
                MessagingError::Connection { .. } => "Connection",
                MessagingError::Provider { .. } => "Provider",
                _ => "other",
            };
            println!(
                "[{what}] {kind} transient={} after {took:?}: {e}",
                e.is_transient()
            );
            assert!(
                !e.to_string().contains(PASSWORD),
                "[{what}] password leaked"
            );
            assert!(
                !format!("{e:?}").contains(PASSWORD),
                "[{what}] password leaked in Debug"
            );
            Some(e)
        }
    }
}

fn pg_url(host: &str, query: &str) -> String {
    format!("postgres://postgres:{PASSWORD}@{host}:5432/test?{query}")
}

/// A TCP listener that accepts and never writes.
async fn silent_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }
    });
    port
}

#[tokio::test]
async fn pg_bad_certificate_inputs() {
    let dir = std::env::temp_dir().join(format!("tls-review-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::File::create(&empty).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let cases = [
        (
            "sslrootcert=directory",
            pg_url("localhost", "sslmode=verify-full&sslrootcert=/etc/ssl/certs"),
        ),
        (
            "sslrootcert=empty file, verify-full",
            pg_url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", empty.display()),
            ),
        ),
        (
            "sslrootcert=junk, verify-full",
            pg_url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", junk.display()),
            ),
        ),
        (
            "sslrootcert=system (libpq 16)",
            pg_url("localhost", "sslmode=verify-full&sslrootcert=system"),
        ),
        (
            "sslkey = a certificate (no key), require",
            pg_url(
                "localhost",
                &format!("sslmode=require&sslcert={SNAKEOIL}&sslkey={SNAKEOIL}"),
            ),
        ),
        (
            "sslkey = empty file, require",
            pg_url(
                "localhost",
                &format!("sslmode=require&sslcert={SNAKEOIL}&sslkey={}", empty.display()),
            ),
        ),
        (
            "sslcert = directory, require",
            pg_url(
                "localhost",
                &format!("sslmode=require&sslcert=/etc&sslkey={}", junk.display()),
            ),
        ),
        (
            "sslcert without sslkey, require",
            pg_url("localhost", &format!("sslmode=require&sslcert={SNAKEOIL}")),
        ),
        (
            "client key not matching cert",
            pg_url(
                "localhost",
                &format!("sslmode=require&sslcert={CERTS}/client.pem&sslkey={CERTS}/server.key"),
            ),
        ),
        (
            "unix socket, sslmode=require (libpq ignores sslmode there)",
            format!("postgres:///test?host=/var/run/postgresql&user=postgres&password={PASSWORD}&sslmode=require"),
        ),
        (
            "unix socket, default prefer",
            format!("postgres:///test?host=/var/run/postgresql&user=postgres&password={PASSWORD}"),
        ),
    ];
    for (what, url) in cases {
        let _ = outcome(what, &pg(&url)).await;
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn pg_silent_port() {
    let port = silent_port().await;
    for mode in ["require", "verify-full", "prefer"] {
        let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/test?sslmode={mode}");
        let _ = outcome(&format!("pg silent port sslmode={mode}"), &pg(&url)).await;
    }
}

#[tokio::test]
async fn rabbit_hostile_endpoints() {
    let tls = RabbitMqTlsConfig::new().ca_file(format!("{CERTS}/ca.pem"));
    let port = silent_port().await;
    let cases = [
        (
            "amqps to the system node's plain port 5672",
            format!("amqps://guest:{PASSWORD}@localhost:5672/%2f"),
        ),
        (
            "amqps to a silent port",
            format!("amqps://guest:{PASSWORD}@localhost:{port}/%2f"),
        ),
        (
            "amqps host rustls refuses as a name",
            format!("amqps://guest:{PASSWORD}@loc%61lhost:5692/%2f"),
        ),
        (
            "amqps host with an underscore (compose service names)",
            format!("amqps://guest:{PASSWORD}@rabbit_mq:5692/%2f"),
        ),
        (
            "amqps IPv6 literal",
            format!("amqps://guest:{PASSWORD}@[::1]:5692/%2f"),
        ),
        (
            "amqps to PostgreSQL's port",
            format!("amqps://guest:{PASSWORD}@localhost:5432/%2f"),
        ),
        (
            "amqps right CA, wrong password",
            format!("amqps://guest:{PASSWORD}@localhost:5692/%2f"),
        ),
        (
            "plain amqp on the TLS node, wrong password",
            format!("amqp://guest:{PASSWORD}@localhost:5691/%2f"),
        ),
        (
            "plain amqp on the system node, wrong password",
            format!("amqp://guest:{PASSWORD}@localhost:5672/%2f"),
        ),
    ];
    for (what, url) in cases {
        let tls = match url.starts_with("amqps:") {
            true => tls.clone(),
            false => RabbitMqTlsConfig::new(),
        };
        let _ = outcome(what, &rabbit(&url, tls)).await;
    }
}

#[tokio::test]
async fn rabbit_bad_files() {
    let dir = std::env::temp_dir().join(format!("tls-review-r-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::File::create(&empty).unwrap();
    let url = format!("amqps://guest:{PASSWORD}@localhost:5692/%2f");
    let ca = format!("{CERTS}/ca.pem");
    let cases = [
        (
            "ca_file directory",
            RabbitMqTlsConfig::new().ca_file("/etc"),
        ),
        ("ca_file empty", RabbitMqTlsConfig::new().ca_file(&empty)),
        (
            "ca_file = a key",
            RabbitMqTlsConfig::new().ca_file(format!("{CERTS}/ca.key")),
        ),
        (
            "client key empty",
            RabbitMqTlsConfig::new()
                .ca_file(&ca)
                .client_auth(format!("{CERTS}/client.pem"), &empty),
        ),
        (
            "client key directory",
            RabbitMqTlsConfig::new()
                .ca_file(&ca)
                .client_auth(format!("{CERTS}/client.pem"), "/etc"),
        ),
        (
            "client cert = key, key = cert",
            RabbitMqTlsConfig::new()
                .ca_file(&ca)
                .client_auth(format!("{CERTS}/client.key"), format!("{CERTS}/client.pem")),
        ),
        (
            "ca_file = server leaf (not a CA)",
            RabbitMqTlsConfig::new().ca_file(format!("{CERTS}/server.pem")),
        ),
    ];
    for (what, tls) in cases {
        let _ = outcome(what, &rabbit(&url, tls)).await;
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A writer that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn pg_sslpassword_reaches_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let url = pg_url(
        "localhost",
        &format!("sslmode=prefer&sslpassword={PASSWORD}"),
    );
    let service = PgmqMessageService::connect(&pg(&url)).await;
    println!(
        "connect: {:?}",
        service.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    let logged = String::from_utf8_lossy(&captured.0.lock().unwrap()).to_string();
    println!("log:\n{logged}");
    assert!(!logged.contains(PASSWORD), "sslpassword value logged");
}

/// Cost of `prefer` (now TLS on a server that offers it) against
/// `disable`: connect time and 2000 round trips on one connection.
#[tokio::test]
async fn pg_prefer_versus_disable_cost() {
    for mode in ["disable", "prefer", "disable", "prefer"] {
        let url = format!("postgres://postgres@127.0.0.1:5432/test?sslmode={mode}");
        let started = Instant::now();
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        let connect = started.elapsed();
        let started = Instant::now();
        for _ in 0..2000 {
            let _: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        }
        let rt = started.elapsed();
        let started = Instant::now();
        let payload = "x".repeat(64 * 1024);
        for _ in 0..200 {
            let _: String = sqlx::query_scalar("SELECT $1::text")
                .bind(&payload)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        }
        let big = started.elapsed();
        println!(
            "sslmode={mode}: connect {connect:?}, 2000 x SELECT 1 {rt:?} ({:?}/query), 200 x 64 KiB echo {big:?}",
            rt / 2000
        );
    }
    let _ = Duration::ZERO;
}

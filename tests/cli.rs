//! The `tasker-messaging` binary, run as a user would, against the real
//! servers: each command's output and exit code.

mod common;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use tasker_messaging::{
    conformance::unique_queue, MessageBackend, MessagingService, Provider, QueueStats, SendOptions,
    SimpleStepMessage,
};
use uuid::Uuid;

/// A config file for `provider` (and a migration to `to`), in the temp dir.
fn config_file(provider: Provider, to: Option<Provider>, amqp_url: &str) -> PathBuf {
    let migration = to.map_or_else(String::new, |to| format!("[migration]\nto = \"{to}\"\n"));
    let text = format!(
        "provider = \"{provider}\"\n{migration}\
         [queues]\nmax_receive_count = 3\nnamespaces = []\n\
         [pgmq]\ndatabase_url = \"{}\"\n\
         [rabbitmq]\nurl = \"{amqp_url}\"\nconnection_timeout_ms = 1000\n",
        common::database_url(),
    );
    let path = std::env::temp_dir().join(format!("tasker_cli_{}.toml", Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("write the config file");
    path
}

fn config(provider: Provider, to: Option<Provider>) -> PathBuf {
    config_file(provider, to, &common::amqp_url())
}

/// Runs the binary with `args`, feeding `stdin`.
fn cli(config: &PathBuf, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker-messaging"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("TASKER_MESSAGING_CONFIG")
        .env_remove("TASKER_MESSAGING_PROVIDER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tasker-messaging");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("tasker-messaging output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

async fn queue_with(
    backend: &MessageBackend,
    case: &str,
    n: usize,
) -> (String, Vec<SimpleStepMessage>) {
    let queue = unique_queue(case);
    backend.create_queue(&queue).await.expect("create_queue");
    let steps: Vec<SimpleStepMessage> = (0..n)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    if n > 0 {
        backend
            .send_batch(&queue, &steps)
            .await
            .expect("send_batch");
    }
    (queue, steps)
}

async fn ready(backend: &MessageBackend, queue: &str) -> u64 {
    backend
        .get_queue_stats(queue)
        .await
        .expect("stats")
        .message_count
}

#[test]
fn health_names_each_provider_and_fails_on_one_that_does_not_answer() {
    let both = config(Provider::Pgmq, Some(Provider::RabbitMq));
    let output = cli(&both, &["health"], "");
    assert_exit(&output, 0);
    let out = text(&output.stdout);
    assert!(out.contains("pgmq") && out.contains("rabbitmq"), "{out}");
    assert_eq!(out.matches(" ok").count(), 2, "{out}");

    // Nothing listens on port 1.
    let dead = config_file(
        Provider::Pgmq,
        Some(Provider::RabbitMq),
        "amqp://guest:guest@127.0.0.1:1/%2f",
    );
    let output = cli(&dead, &["health"], "");
    assert_exit(&output, 4);
    let err = text(&output.stderr);
    assert!(err.contains("rabbitmq"), "names the provider: {err}");
    assert!(!err.contains("guest:guest"), "no password shown: {err}");
}

#[test]
fn usage_and_configuration_errors_have_their_own_exit_codes() {
    let file = config(Provider::Pgmq, None);
    assert_exit(&cli(&file, &["frobnicate"], ""), 2);
    assert_exit(&cli(&file, &["peek"], ""), 2);
    assert_exit(&cli(&file, &["migrate"], ""), 2);
    let bad = std::env::temp_dir().join(format!("tasker_cli_bad_{}.toml", Uuid::new_v4().simple()));
    std::fs::write(&bad, "provider = \"pgmq\"\nno_such_key = 1\n").unwrap();
    let output = cli(&bad, &["health"], "");
    assert_exit(&output, 3);
    assert!(text(&output.stderr).contains("no_such_key"));
    // A migration to the provider already in use is a configuration error.
    let output = cli(&file, &["migrate", "--to", "pgmq", "--queues", "q"], "");
    assert_exit(&output, 3);
    assert!(text(&output.stderr).contains("migration.to"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_a_table_and_json() {
    let backend = common::backend(Provider::RabbitMq).await;
    let (queue, _) = queue_with(&backend, "cli_stats", 3).await;
    let file = config(Provider::RabbitMq, None);
    let output = cli(&file, &["stats", "--json", &queue], "");
    assert_exit(&output, 0);
    let stats: Vec<QueueStats> = serde_json::from_slice(&output.stdout).expect("JSON stats");
    assert_eq!((stats.len(), stats[0].message_count), (1, 3));
    assert_eq!(stats[0].queue_name, queue);

    // Migrating: a row for the sum and one per side.
    let migrating = common::migrating(Provider::RabbitMq, Provider::Pgmq).await;
    migrating
        .create_queue(&queue)
        .await
        .expect("create on both sides");
    let file = config(Provider::RabbitMq, Some(Provider::Pgmq));
    let output = cli(&file, &["stats", &queue], "");
    assert_exit(&output, 0);
    let out = text(&output.stdout);
    let ready_in = |start: &str, provider: &str| {
        out.lines()
            .find(|l| l.starts_with(start) && l.contains(provider))
            .unwrap_or_else(|| panic!("no {start} row for {provider}: {out}"))
            .split_whitespace()
            .rev()
            .nth(3)
            .map(str::to_owned)
    };
    assert_eq!(ready_in(&queue, "both").as_deref(), Some("3"), "{out}");
    assert_eq!(
        ready_in("  source", "rabbitmq").as_deref(),
        Some("3"),
        "{out}"
    );
    assert_eq!(ready_in("  target", "pgmq").as_deref(), Some("0"), "{out}");

    let output = cli(
        &config(Provider::RabbitMq, None),
        &["stats", "missing_queue_xyz"],
        "",
    );
    assert_exit(&output, 1);
    assert!(text(&output.stderr).contains("missing_queue_xyz"));
    migrating.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_messages_and_leaves_them_ready() {
    let backend = common::backend(Provider::Pgmq).await;
    let (queue, steps) = queue_with(&backend, "cli_peek", 2).await;
    let output = cli(
        &config(Provider::Pgmq, None),
        &["peek", &queue, "-n", "5"],
        "",
    );
    assert_exit(&output, 0);
    let out = text(&output.stdout);
    for step in &steps {
        assert!(out.contains(&step.step_uuid.to_string()), "{out}");
    }
    assert!(text(&output.stderr).contains("receive_count goes up by one"));
    assert_eq!(ready(&backend, &queue).await, 2, "released at once");
    let again = backend
        .receive_messages::<SimpleStepMessage>(&queue, 5, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 2, "both peeked messages are ready again");
    assert!(
        again.iter().all(|m| m.metadata.receive_count == 2),
        "the peek counted"
    );
    backend.delete_queue(&queue).await.unwrap();
}

/// C38: `peek` shows a message's headers, and `migrate` (move_messages)
/// keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_shows_headers_and_migrate_keeps_them() {
    let backend = common::backend(Provider::Pgmq).await;
    let (queue, _) = queue_with(&backend, "cli_peek_headers", 0).await;
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    let options = SendOptions::new().header("tenant", "acme");
    backend
        .send_message_with(&queue, &step, &options)
        .await
        .expect("send with headers");
    let output = cli(&config(Provider::Pgmq, None), &["peek", &queue], "");
    assert_exit(&output, 0);
    let out = text(&output.stdout);
    assert!(out.contains(r#"headers {"tenant":"acme"}"#), "{out}");
    let output = cli(
        &config(Provider::Pgmq, None),
        &["migrate", "--to", "rabbitmq", "--queues", &queue],
        "",
    );
    assert_exit(&output, 0);
    let target = common::backend(Provider::RabbitMq).await;
    let got = target
        .receive_messages::<SimpleStepMessage>(&queue, 5, Duration::from_secs(30))
        .await
        .expect("receive on the target");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, step);
    assert_eq!(got[0].headers(), options.header_map());
    target
        .delete_queue(&queue)
        .await
        .expect("delete on the target");
    backend
        .delete_queue(&queue)
        .await
        .expect("delete on the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_first_unless_yes() {
    let backend = common::backend(Provider::Pgmq).await;
    let (queue, _) = queue_with(&backend, "cli_purge", 4).await;
    let file = config(Provider::Pgmq, None);
    let output = cli(&file, &["purge", &queue], "n\n");
    assert_exit(&output, 5);
    assert_eq!(ready(&backend, &queue).await, 4, "declined: nothing purged");
    let output = cli(&file, &["purge", &queue], "y\n");
    assert_exit(&output, 0);
    assert!(text(&output.stdout).contains("purged 4"));
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    backend.send_message(&queue, &step).await.unwrap();
    let output = cli(&file, &["purge", &queue, "--yes"], "");
    assert_exit(&output, 0);
    assert!(text(&output.stdout).contains("purged 1"));
    assert_eq!(ready(&backend, &queue).await, 0);
    backend.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_moves_dead_letters_back() {
    let backend = common::backend(Provider::RabbitMq).await;
    let (queue, _) = queue_with(&backend, "cli_redrive", 0).await;
    let dlq = format!("{queue}_dlq");
    let dead: Vec<SimpleStepMessage> = (0..3)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    backend.send_batch(&dlq, &dead).await.unwrap();
    let file = config(Provider::RabbitMq, None);
    let output = cli(&file, &["dlq", "redrive", &queue, "-n", "2"], "");
    assert_exit(&output, 0);
    assert!(
        text(&output.stdout).contains("moved 2"),
        "{}",
        text(&output.stdout)
    );
    let output = cli(&file, &["dlq", "redrive", &queue], "");
    assert_exit(&output, 0);
    assert!(
        text(&output.stdout).contains("moved 1"),
        "{}",
        text(&output.stdout)
    );
    let stats = backend.get_queue_stats(&queue).await.unwrap();
    assert_eq!((stats.message_count, stats.dead_letter_count), (3, Some(0)));
    backend.delete_queue(&queue).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_queues_and_dead_letters_to_the_target() {
    let source = common::backend(Provider::Pgmq).await;
    let target = common::backend(Provider::RabbitMq).await;
    let (queue, steps) = queue_with(&source, "cli_migrate", 250).await;
    source
        .send_message(&format!("{queue}_dlq"), &steps[0])
        .await
        .unwrap();
    // Not movable until due: reported, not lost from sight.
    let later = tasker_messaging::SendOptions::new().delay(std::time::Duration::from_secs(600));
    source
        .send_message_with(&queue, &steps[1], &later)
        .await
        .unwrap();
    let output = cli(
        &config(Provider::Pgmq, None),
        &["migrate", "--to", "rabbitmq", "--queues", &queue],
        "",
    );
    assert_exit(&output, 0);
    let out = text(&output.stdout);
    assert!(
        out.contains("migrated 251 message(s) from pgmq to rabbitmq"),
        "{out}"
    );
    assert!(out.contains("1 delayed message(s) still on pgmq"), "{out}");
    assert!(text(&output.stderr).contains("250 moved"), "progress line");
    assert_eq!(ready(&source, &queue).await, 0);
    let stats = target.get_queue_stats(&queue).await.unwrap();
    assert_eq!(
        (stats.message_count, stats.dead_letter_count),
        (250, Some(1))
    );
    source.delete_queue(&queue).await.unwrap();
    target.delete_queue(&queue).await.unwrap();
}

/// `[rabbitmq.tls]` in the file reaches the binary: `health` over amqps to
/// the private cluster's node 1 (scripts/rabbitmq-cluster.sh, amqps on 5691)
/// answers with the right CA, and exits 4 naming the certificate problem
/// with another.
#[test]
fn health_over_amqps_reads_rabbitmq_tls() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");
    let run = |arg: &str| {
        let output = Command::new("bash")
            .args([script, arg])
            .output()
            .expect("bash runs the script");
        assert!(
            output.status.success(),
            "{script} {arg} failed: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout).trim().to_owned()
    };
    run("start");
    let certs = run("certs");
    for (ca, code) in [("ca.pem", 0), ("wrong-ca.pem", 4)] {
        let path = config_file(
            Provider::RabbitMq,
            None,
            "amqps://guest:guest@localhost:5691/%2f",
        );
        let mut text_of = std::fs::read_to_string(&path).expect("read the config file");
        text_of.push_str(&format!("[rabbitmq.tls]\nca_file = \"{certs}/{ca}\"\n"));
        std::fs::write(&path, text_of).expect("write the config file");
        let output = cli(&path, &["health"], "");
        assert_exit(&output, code);
        if code == 4 {
            let said = text(&output.stdout) + &text(&output.stderr);
            assert!(
                said.contains("TLS error") && said.contains("UnknownIssuer"),
                "{said}"
            );
        }
        std::fs::remove_file(&path).ok();
    }
}

/// `config` prints the effective configuration without connecting: TOML by
/// default, JSON with `--json`, both loadable back into the same values,
/// with the passwords shown as `***`.
#[test]
fn config_prints_the_effective_configuration_without_passwords() {
    use figment::{
        providers::{Format, Toml},
        Figment,
    };
    use tasker_messaging::MessagingConfig;

    // Nothing listens there: `config` must not connect.
    let path = config_file(
        Provider::RabbitMq,
        None,
        "amqp://guest:hunter2@127.0.0.1:1/%2f?auth_token=hunter2",
    );
    let loaded = MessagingConfig::from_file(&path).unwrap();
    let toml = cli(&path, &["config"], "");
    assert_exit(&toml, 0);
    let json = cli(&path, &["config", "--json"], "");
    assert_exit(&json, 0);
    let (toml, json) = (text(&toml.stdout), text(&json.stdout));
    for shown in [&toml, &json] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("amqp://guest:***@127.0.0.1:1/%2f?auth_token=***"),
            "{shown}"
        );
    }
    let from_toml = MessagingConfig::from_figment(Figment::from(Toml::string(&toml))).unwrap();
    let from_json: MessagingConfig = serde_json::from_str(&json).unwrap();
    from_json.validate().unwrap();
    assert_eq!(from_toml, from_json);
    // Everything but the redacted secrets is what was loaded.
    assert_eq!(from_toml.provider, loaded.provider);
    assert_eq!(from_toml.queues, loaded.queues);
    assert_eq!(from_toml.retry_policy, loaded.retry_policy);
    assert_eq!(from_toml.circuit_breaker, loaded.circuit_breaker);
    let (shown, real) = (
        from_toml.rabbitmq.unwrap(),
        loaded.rabbitmq.clone().unwrap(),
    );
    assert_eq!(shown.connection_timeout_ms, real.connection_timeout_ms);
    assert_eq!(shown.nodes()[0].expose(), real.nodes()[0].redacted());
    std::fs::remove_file(path).ok();
}

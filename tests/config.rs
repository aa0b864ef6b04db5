//! Configuration loading: layering, provider switching, and errors that name
//! the file or key at fault. `figment::Jail` isolates env and cwd per test.

// `figment::Jail` closures return figment's (large) error type.
#![allow(clippy::result_large_err)]

use figment::Jail;
use tasker_messaging::{MessagingConfig, MessagingError, Provider};

const FILE: &str = "config/messaging.toml";

fn load(jail: &mut Jail) -> Result<MessagingConfig, MessagingError> {
    jail.create_dir("config").expect("jail dir");
    MessagingConfig::load()
}

fn config_error(result: Result<MessagingConfig, MessagingError>) -> String {
    match result {
        Err(MessagingError::Config(message)) => message,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn defaults_without_a_file_are_in_memory() {
    Jail::expect_with(|jail| {
        let config = load(jail).expect("defaults load");
        assert_eq!(config.provider, Provider::InMemory);
        assert_eq!(config.queues.max_receive_count, 5);
        assert_eq!(config.queues.dead_letter_queue_suffix, "_dlq");
        assert_eq!(config.queues.max_message_bytes, 256 * 1024);
        Ok(())
    });
}

#[test]
fn the_shipped_files_load() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, provider) in [
        ("messaging.toml", Provider::InMemory),
        ("in_memory.toml", Provider::InMemory),
        ("pgmq.toml", Provider::Pgmq),
        ("rabbitmq.toml", Provider::RabbitMq),
    ] {
        Jail::expect_with(|_| {
            let config = MessagingConfig::from_file(format!("{root}/config/{file}"))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(config.provider, provider, "{file}");
            Ok(())
        });
    }
}

#[test]
fn environment_beats_the_file() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            "provider = \"in_memory\"\n[queues]\nmax_receive_count = 7\n",
        )?;
        jail.set_env("TASKER_MESSAGING_QUEUES__MAX_RECEIVE_COUNT", "9");
        let config = MessagingConfig::load().expect("load");
        assert_eq!(config.queues.max_receive_count, 9);
        Ok(())
    });
}

#[test]
fn one_env_variable_switches_provider() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            r#"
provider = "in_memory"
[pgmq]
database_url = "postgres://postgres@127.0.0.1:5432/test"
[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
"#,
        )?;
        assert_eq!(
            MessagingConfig::load().unwrap().provider,
            Provider::InMemory
        );
        jail.set_env("TASKER_MESSAGING_PROVIDER", "pgmq");
        assert_eq!(MessagingConfig::load().unwrap().provider, Provider::Pgmq);
        jail.set_env("TASKER_MESSAGING_PROVIDER", "rabbitmq");
        assert_eq!(
            MessagingConfig::load().unwrap().provider,
            Provider::RabbitMq
        );
        Ok(())
    });
}

#[test]
fn config_path_comes_from_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_file("elsewhere.toml", "[queues]\nmax_receive_count = 2\n")?;
        jail.set_env("TASKER_MESSAGING_CONFIG", "elsewhere.toml");
        assert_eq!(MessagingConfig::load().unwrap().queues.max_receive_count, 2);
        jail.set_env("TASKER_MESSAGING_CONFIG", "missing.toml");
        let message = config_error(MessagingConfig::load());
        assert!(message.contains("missing.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn unknown_provider_lists_the_valid_ones() {
    Jail::expect_with(|jail| {
        jail.set_env("TASKER_MESSAGING_PROVIDER", "kafka");
        let message = config_error(load(jail));
        for name in ["kafka", "pgmq", "rabbitmq", "in_memory"] {
            assert!(message.contains(name), "{name} missing from: {message}");
        }
        Ok(())
    });
}

#[test]
fn malformed_toml_names_the_file() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(FILE, "provider = \"pgmq\n[queues\n")?;
        let message = config_error(MessagingConfig::load());
        assert!(message.contains("messaging.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn missing_required_key_is_named() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        // The selected provider has no section at all.
        jail.create_file(FILE, "provider = \"pgmq\"\n")?;
        let message = config_error(MessagingConfig::load());
        assert!(message.contains("pgmq.database_url"), "{message}");
        // A section without its required key.
        jail.create_file(
            FILE,
            "provider = \"rabbitmq\"\n[rabbitmq]\nprefetch_count = 5\n",
        )?;
        let message = config_error(MessagingConfig::load());
        assert!(
            message.contains("url") && message.contains("rabbitmq"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn unknown_keys_and_out_of_range_values_are_named() {
    let cases = [
        ("[queues]\nmax_recieve_count = 3\n", "max_recieve_count"),
        (
            "[queues]\nmax_receive_count = 0\n",
            "queues.max_receive_count",
        ),
        ("[queues]\nmax_receive_count = -1\n", "max_receive_count"),
        (
            "[queues]\ndefault_visibility_timeout_secs = 0\n",
            "queues.default_visibility_timeout_secs",
        ),
        (
            "[queues]\ndead_letter_queue_suffix = \"-DLQ\"\n",
            "queues.dead_letter_queue_suffix",
        ),
        (
            "[queues]\nnamespace_pattern = \"static\"\n",
            "queues.namespace_pattern",
        ),
        (
            "[queues]\nnamespaces = [\"Bad-Name\"]\n",
            "queues.namespaces",
        ),
        (
            // A queue named like a dead-letter queue (C1).
            "[queues]\nnamespace_pattern = \"{namespace}_dlq\"\nnamespaces = [\"orders\"]\n",
            "queues.namespaces",
        ),
        (
            "[pgmq]\ndatabase_url = \"postgres://h/db\"\npool_size = 0\n",
            "pgmq.pool_size",
        ),
        (
            "[pgmq]\ndatabase_url = \"postgres://h/db\"\nconnection_timeout_ms = -5\n",
            "connection_timeout_ms",
        ),
        (
            "[pgmq]\ndatabase_url = \"postgres://h/db\"\nmax_send_group = 0\n",
            "pgmq.max_send_group",
        ),
        (
            "[pgmq]\ndatabase_url = \"postgres://h/db\"\nmax_send_group = 1001\n",
            "pgmq.max_send_group",
        ),
        ("[pgmq]\ndatabase_url = \"not a url\"\n", "database_url"),
        (
            "[rabbitmq]\nurl = \"amqp://h/\"\nquorum_initial_group_size = 0\n",
            "rabbitmq.quorum_initial_group_size",
        ),
        (
            "[rabbitmq]\nurls = []\n",
            "rabbitmq.url (or rabbitmq.urls) is required",
        ),
        ("[rabbitmq]\nurls = [\"not a url\"]\n", "urls"),
    ];
    for (toml, key) in cases {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(FILE, toml)?;
            let message = config_error(MessagingConfig::load());
            assert!(message.contains(key), "{toml:?}: {message}");
            Ok(())
        });
    }
}

#[test]
fn passwords_never_show() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            r#"
provider = "pgmq"
[pgmq]
database_url = "postgres://app:hunter2@db.internal:5432/tasker"
[rabbitmq]
url = "amqp://app:hunter2@mq.internal:5672/%2f"
"#,
        )?;
        let config = MessagingConfig::load().expect("load");
        let shown = format!(
            "{config:?} {} {}",
            config.pgmq.as_ref().unwrap().database_url,
            config.rabbitmq.as_ref().unwrap().nodes()[0]
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db.internal"), "{shown}");
        assert_eq!(
            config.pgmq.unwrap().database_url.expose(),
            "postgres://app:hunter2@db.internal:5432/tasker"
        );
        // A malformed URL with a password is not echoed either.
        jail.create_file(
            FILE,
            "[pgmq]\ndatabase_url = \"postgres://app:hunter2@[::1\"\n",
        )?;
        let message = config_error(MessagingConfig::load());
        assert!(!message.contains("hunter2"), "{message}");
        Ok(())
    });
}

#[test]
fn a_migration_is_configured_by_its_section_or_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            "provider = \"pgmq\"\n[pgmq]\ndatabase_url = \"postgres://u:secret@db/app\"\n\
             [rabbitmq]\nurl = \"amqp://g:secret@mq/%2f\"\n",
        )?;
        assert!(MessagingConfig::load()
            .expect("no migration")
            .migration
            .is_none());
        jail.set_env("TASKER_MESSAGING_MIGRATION__TO", "rabbitmq");
        let config = MessagingConfig::load().expect("a migration from the environment");
        assert_eq!(config.migration.map(|m| m.to), Some(Provider::RabbitMq));
        Ok(())
    });
}

#[test]
fn bad_migrations_are_errors_that_name_the_key() {
    let cases = [
        // The same provider on both sides.
        (
            "provider = \"pgmq\"\n[migration]\nto = \"pgmq\"\n",
            "migration.to must name another provider",
        ),
        // The in-memory provider cannot take part.
        (
            "provider = \"in_memory\"\n[migration]\nto = \"pgmq\"\n",
            "in_memory",
        ),
        (
            "provider = \"pgmq\"\n[migration]\nto = \"in_memory\"\n",
            "in_memory",
        ),
        // The target's section is missing.
        (
            "provider = \"pgmq\"\n[migration]\nto = \"rabbitmq\"\n",
            "rabbitmq.url is required when migration.to = \"rabbitmq\"",
        ),
        // Unknown keys and providers.
        (
            "provider = \"pgmq\"\n[migration]\nto = \"rabbitmq\"\nspeed = 1\n",
            "speed",
        ),
        (
            "provider = \"pgmq\"\n[migration]\nto = \"kafka\"\n",
            "kafka",
        ),
    ];
    for (text, expected) in cases {
        Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            let pgmq = "[pgmq]\ndatabase_url = \"postgres://u@db/app\"\n";
            jail.create_file(FILE, &format!("{text}{pgmq}"))?;
            let message = config_error(load(jail));
            assert!(message.contains(expected), "{text}: {message}");
            Ok(())
        });
    }
}

#[test]
fn rabbitmq_tls_keys_load_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            r#"
provider = "rabbitmq"
[rabbitmq]
url = "amqps://guest:guest@rabbit.example:5671/%2f"
[rabbitmq.tls]
ca_file = "/etc/tasker/ca.pem"
"#,
        )?;
        jail.set_env("TASKER_MESSAGING_RABBITMQ__TLS__CLIENT_CERT_FILE", "/c.pem");
        jail.set_env("TASKER_MESSAGING_RABBITMQ__TLS__CLIENT_KEY_FILE", "/c.key");
        let config = MessagingConfig::load().expect("load");
        let tls = config.rabbitmq.expect("[rabbitmq]").tls;
        assert_eq!(tls.ca_file.as_deref(), Some("/etc/tasker/ca.pem".as_ref()));
        assert_eq!(tls.client_cert_file.as_deref(), Some("/c.pem".as_ref()));
        assert_eq!(tls.client_key_file.as_deref(), Some("/c.key".as_ref()));

        // A certificate without its key names the keys.
        jail.clear_env();
        jail.set_env("TASKER_MESSAGING_RABBITMQ__TLS__CLIENT_CERT_FILE", "/c.pem");
        let message = config_error(MessagingConfig::load());
        assert!(
            message.contains("rabbitmq.tls.client_key_file"),
            "{message}"
        );

        // Misspelt keys are refused.
        jail.clear_env();
        jail.set_env("TASKER_MESSAGING_RABBITMQ__TLS__CA_PATH", "/x.pem");
        let message = config_error(MessagingConfig::load());
        assert!(message.contains("ca_path"), "{message}");
        Ok(())
    });
}

#[test]
fn several_rabbitmq_nodes_are_a_list_and_never_both_keys() {
    Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            FILE,
            r#"
provider = "rabbitmq"
[rabbitmq]
urls = ["amqp://u:hunter2@mq1:5672/%2f", "amqp://u:hunter2@mq2:5672/%2f"]
quorum_initial_group_size = 3
"#,
        )?;
        let config = MessagingConfig::load().expect("a list of nodes loads");
        let rabbitmq = config.rabbitmq.as_ref().unwrap();
        assert_eq!(rabbitmq.url, None);
        let nodes: Vec<String> = rabbitmq.nodes().iter().map(|u| u.to_string()).collect();
        assert_eq!(
            nodes,
            ["amqp://u:***@mq1:5672/%2f", "amqp://u:***@mq2:5672/%2f"]
        );
        assert_eq!(rabbitmq.quorum_initial_group_size, Some(3));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("mq2"),
            "{shown}"
        );

        // The environment can give the list too.
        jail.create_file(FILE, "provider = \"rabbitmq\"\n")?;
        jail.set_env(
            "TASKER_MESSAGING_RABBITMQ__URLS",
            "[\"amqp://mq1/\", \"amqp://mq2/\", \"amqp://mq3/\"]",
        );
        let config = MessagingConfig::load().expect("urls from the environment");
        assert_eq!(config.rabbitmq.as_ref().unwrap().nodes().len(), 3);

        // One node by `url`, as before: a list of one.
        jail.clear_env();
        jail.create_file(
            FILE,
            "provider = \"rabbitmq\"\n[rabbitmq]\nurl = \"amqp://mq/\"\n",
        )?;
        let config = MessagingConfig::load().expect("one url");
        let rabbitmq = config.rabbitmq.as_ref().unwrap();
        assert_eq!(rabbitmq.nodes().len(), 1);
        assert_eq!(rabbitmq.quorum_initial_group_size, None);

        // Both keys: a config error naming both, whichever layer set each.
        for (file, env) in [
            (
                "[rabbitmq]\nurl = \"amqp://u:hunter2@mq/\"\nurls = [\"amqp://u:hunter2@mq2/\"]\n",
                None,
            ),
            (
                "[rabbitmq]\nurl = \"amqp://u:hunter2@mq/\"\n",
                Some("[\"amqp://u:hunter2@mq2/\"]"),
            ),
        ] {
            jail.clear_env();
            jail.create_file(FILE, &format!("provider = \"rabbitmq\"\n{file}"))?;
            if let Some(urls) = env {
                jail.set_env("TASKER_MESSAGING_RABBITMQ__URLS", urls);
            }
            let message = config_error(MessagingConfig::load());
            assert!(
                message.contains("rabbitmq.url ") && message.contains("rabbitmq.urls"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
        Ok(())
    });
}

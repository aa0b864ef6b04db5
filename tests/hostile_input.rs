//! Hostile input, by property: arbitrary queue names, receipts, bodies, sizes
//! and config values never panic and always give the typed error, on every
//! server provider and in memory. Each property's case count is in its config.

mod common;

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use figment::{
    providers::{Format, Toml},
    Figment,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tasker_messaging::{
    validate_queue_name, MessageBackend, MessagingConfig, MessagingError, MessagingService,
    Provider, QueueMessage, ReceiptHandle, SimpleStepMessage, MAX_QUEUE_NAME_BYTES,
};
use tokio::runtime::Runtime;

/// Providers every property runs against.
const PROVIDERS: [Provider; 2] = [Provider::InMemory, Provider::Pgmq];

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new().expect("tokio runtime"))
}

/// One backend per provider, shared by every case.
fn backends() -> &'static [MessageBackend] {
    static BACKENDS: OnceLock<Vec<MessageBackend>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        runtime().block_on(async {
            let mut out = Vec::new();
            for provider in PROVIDERS {
                out.push(common::backend(provider).await);
            }
            out
        })
    })
}

/// Each backend with a queue of this property's own (properties run in parallel).
fn with_queues(property: &'static str) -> Vec<(&'static MessageBackend, String)> {
    static QUEUES: Mutex<Vec<(&str, Vec<String>)>> = Mutex::new(Vec::new());
    let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    if !queues.iter().any(|(p, _)| *p == property) {
        let names = backends()
            .iter()
            .map(|backend| {
                let queue = tasker_messaging::conformance::unique_queue(property);
                runtime()
                    .block_on(backend.create_queue(&queue))
                    .expect("create_queue");
                queue
            })
            .collect();
        queues.push((property, names));
    }
    let names = &queues
        .iter()
        .find(|(p, _)| *p == property)
        .expect("inserted")
        .1;
    backends().iter().zip(names.iter().cloned()).collect()
}

/// Any JSON value, sent as-is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct Raw(serde_json::Value);
impl QueueMessage for Raw {}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::hash_map(".{0,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Names built from the characters most likely to break SQL or AMQP.
fn nasty_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z_'\";\\-$ .%*#/\\\\\u{0}éß😀A-Z0-9]{0,60}",
        "[a-z_][a-z0-9_]{0,60}",
    ]
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn valid_per_regex(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'));
    first_ok
        && name.len() <= MAX_QUEUE_NAME_BYTES
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Validation agrees with `^[a-z_][a-z0-9_]*$` and 47 bytes, for any string.
    #[test]
    fn queue_name_validation_matches_the_rule(name in nasty_name()) {
        prop_assert_eq!(validate_queue_name(&name).is_ok(), valid_per_regex(&name));
    }

    /// No name reaches SQL or AMQP unvalidated: every answer is
    /// `InvalidQueueName` or, for a valid name that was never created, `QueueNotFound`.
    #[test]
    fn arbitrary_queue_names_get_typed_errors(name in nasty_name()) {
        for backend in backends() {
            let result = runtime().block_on(backend.get_queue_stats(&name));
            let ok = match &result {
                Err(MessagingError::InvalidQueueName { .. }) => !valid_per_regex(&name),
                Err(MessagingError::QueueNotFound { .. }) => valid_per_regex(&name),
                _ => false,
            };
            prop_assert!(ok, "{}: {:?} -> {:?}", backend.provider(), name, result);
            let purge = runtime().block_on(backend.purge_queue(&name));
            prop_assert!(
                matches!(purge, Err(MessagingError::InvalidQueueName { .. } | MessagingError::QueueNotFound { .. })),
                "{}: {:?} -> {:?}", backend.provider(), name, purge
            );
        }
    }

    /// Any receipt text is `InvalidReceipt`, or `LeaseExpired` when it is
    /// well-formed for this provider and queue but names no live lease.
    #[test]
    fn arbitrary_receipts_are_rejected(
        text in prop_oneof![any::<String>(), "[a-z_]{0,10}:[a-z_0-9]{0,20}:[0-9]{0,20}:[0-9]{0,20}"],
        id in any::<u64>(),
        lease in any::<u64>(),
    ) {
        for (backend, queue) in with_queues("receipts") {
            let queue = &queue;
            let well_formed = format!("{}:{queue}:{id}:{lease}", backend.provider());
            for receipt in [text.clone(), well_formed] {
                let receipt: ReceiptHandle = receipt.parse().expect("infallible");
                let deleted = runtime().block_on(backend.delete_message(queue, &receipt));
                let changed = runtime().block_on(
                    backend.change_message_visibility(queue, &receipt, Duration::ZERO),
                );
                for result in [deleted, changed] {
                    prop_assert!(
                        matches!(result, Err(MessagingError::InvalidReceipt { .. } | MessagingError::LeaseExpired { .. })),
                        "{}: {:?} -> {:?}", backend.provider(), receipt, result
                    );
                }
            }
        }
    }

    /// A message is refused, before any I/O, exactly when it serializes to
    /// more than `max_message_bytes`.
    #[test]
    fn oversized_messages_are_refused(extra in 0usize..64) {
        for (backend, queue) in with_queues("oversized") {
            let queue = &queue;
            let max = backend.queues_config().max_message_bytes;
            // A JSON string of n characters serializes to n + 2 bytes.
            let len = max - 32 + extra;
            let body = Raw(serde_json::Value::String("x".repeat(len)));
            let result = runtime().block_on(backend.send_message(queue, &body));
            if len + 2 > max {
                prop_assert!(
                    matches!(result, Err(MessagingError::MessageTooLarge { size, max: m }) if size == len + 2 && m == max),
                    "{}: {} bytes -> {:?}", backend.provider(), len + 2, result
                );
            } else {
                prop_assert!(result.is_ok(), "{}: {:?}", backend.provider(), result);
                runtime().block_on(backend.purge_queue(queue)).expect("purge");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever JSON sits in a queue, receiving it as a step never panics:
    /// it is delivered if it decodes, else dead-lettered; nothing is lost.
    #[test]
    fn garbage_bodies_go_to_the_dead_letter_queue(value in json_value()) {
        for (backend, queue) in with_queues("garbage") {
            let queue = &queue;
            runtime().block_on(async {
                let sent = backend.send_message(queue, &Raw(value.clone())).await;
                if has_nul(&value) {
                    // PostgreSQL's jsonb cannot hold U+0000: refused everywhere, before I/O.
                    prop_assert!(
                        matches!(sent, Err(MessagingError::InvalidArgument(_))),
                        "{}: {:?}", backend.provider(), sent
                    );
                    return Ok(());
                }
                sent.expect("send");
                let decodes = serde_json::from_value::<SimpleStepMessage>(value.clone()).is_ok();
                let got = backend
                    .receive_messages::<SimpleStepMessage>(queue, 10, Duration::from_secs(30))
                    .await
                    .expect("receive never fails on a bad body");
                let stats = backend.get_queue_stats(queue).await.expect("stats");
                let dlq = format!("{queue}{}", backend.queues_config().dead_letter_queue_suffix);
                let dead: Vec<tasker_messaging::QueuedMessage<Raw>> = backend
                    .receive_messages(&dlq, 10, Duration::from_secs(30))
                    .await
                    .expect("dead letters are receivable");
                for m in &dead {
                    backend.delete_message(&dlq, m.receipt()).await.expect("delete dead letter");
                }
                for m in &got {
                    backend.delete_message(queue, m.receipt()).await.expect("delete");
                }
                prop_assert_eq!(got.len(), usize::from(decodes), "{}", backend.provider());
                prop_assert_eq!(stats.dead_letter_count, Some(u64::from(!decodes)));
                if !decodes {
                    prop_assert_eq!(&dead[0].message.0, &value, "dead letter keeps the body");
                }
                Ok(())
            })?;
        }
    }

    /// Out-of-range config values are errors at load that name the key.
    #[test]
    fn out_of_range_config_is_named(
        pool_size in 0u32..3,
        max_receive_count in -2i64..2,
        visibility in -2i64..2,
        timeout in -2i64..2,
    ) {
        let toml = format!(
            "provider = \"pgmq\"\n\
             [queues]\nmax_receive_count = {max_receive_count}\ndefault_visibility_timeout_secs = {visibility}\n\
             [pgmq]\ndatabase_url = \"postgres://h/db\"\npool_size = {pool_size}\nconnection_timeout_ms = {timeout}\n"
        );
        let result = MessagingConfig::from_figment(Figment::from(Toml::string(&toml)));
        let bad: Vec<&str> = [
            (max_receive_count < 1, "max_receive_count"),
            (visibility < 1, "default_visibility_timeout_secs"),
            (pool_size < 1, "pool_size"),
            (timeout < 1, "connection_timeout_ms"),
        ]
        .into_iter()
        .filter_map(|(is_bad, key)| is_bad.then_some(key))
        .collect();
        match result {
            Ok(_) => prop_assert!(bad.is_empty(), "accepted {:?}", toml),
            Err(MessagingError::Config(message)) => {
                prop_assert!(bad.iter().any(|key| message.contains(key)), "{:?}: {}", toml, message)
            }
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }
}

//! Hostile input, by property: arbitrary queue names, receipts, bodies, sizes
//! and config values never panic and always give the typed error, on every
//! server provider and in memory. Each property's case count is in its config.

mod common;

use std::{sync::OnceLock, time::Duration};

use figment::{
    providers::{Format, Toml},
    Figment,
};
use proptest::{prelude::*, test_runner::TestRunner};
use serde::{Deserialize, Serialize};
use tasker_messaging::{
    validate_queue_name, MessageBackend, MessagingConfig, MessagingError, MessagingService,
    Provider, ReceiptHandle, SimpleStepMessage, MAX_QUEUE_NAME_BYTES,
};
use tokio::runtime::Runtime;

/// Providers every property runs against.
const PROVIDERS: [Provider; 3] = [Provider::InMemory, Provider::Pgmq, Provider::RabbitMq];

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

/// A queue of one property's own on every backend (properties run in
/// parallel), deleted when dropped, whatever the outcome: leaked queues pile
/// up run after run, and on RabbitMQ each quorum queue holds file handles
/// until the broker has none left for new connections.
struct PropertyQueues(Vec<(&'static MessageBackend, String)>);

impl PropertyQueues {
    fn create(property: &str) -> Self {
        let mut queues = Self(Vec::new());
        for backend in backends() {
            let queue = tasker_messaging::conformance::unique_queue(property);
            runtime()
                .block_on(backend.create_queue(&queue))
                .expect("create_queue");
            queues.0.push((backend, queue));
        }
        queues
    }
}

impl Drop for PropertyQueues {
    fn drop(&mut self) {
        for (backend, queue) in &self.0 {
            if let Err(error) = runtime().block_on(backend.delete_queue(queue)) {
                eprintln!("{}: could not delete {queue}: {error}", backend.provider());
            }
        }
    }
}

/// Runs `property` on `cases` values of `strategy` (as `proptest!` does,
/// failing with the minimal failing input), on queues made for the run.
fn check_with_queues<S>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(&[(&'static MessageBackend, String)], S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let queues = PropertyQueues::create(name);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |value| property(&queues.0, value));
    drop(queues);
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// Any JSON value, sent as-is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct Raw(serde_json::Value);

/// Any characters but U+0000, up to 40 and 12 of them.
const NO_NUL_40: &str = "[^\\x00]{0,40}";
const NO_NUL_12: &str = "[^\\x00]{0,12}";

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        // U+0000 is refused before any I/O (PostgreSQL's jsonb cannot hold
        // it): drawn here it would end most cases early, so it has cases of
        // its own (`nul_bodies_are_refused_before_io`).
        NO_NUL_40.prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::hash_map(NO_NUL_12, inner, 0..4)
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

/// JSON equality with numbers compared by value: PostgreSQL's jsonb keeps a
/// number's value but not its text (`1e3` comes back as `1000`).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
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

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

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

/// Any receipt text is `InvalidReceipt` (C15); one well-formed for this
/// provider and queue that names no live lease is `LeaseExpired` (C14), or
/// `InvalidReceipt` if the provider's receipts carry more than the fields
/// built here.
#[test]
fn arbitrary_receipts_are_rejected() {
    let text = prop_oneof![
        any::<String>(),
        "[a-z_]{0,10}:[a-z_0-9]{0,20}:[0-9]{0,20}:[0-9]{0,20}",
        "[a-z_]{0,10}:[a-z_0-9]{0,20}:[0-9]{0,20}:[0-9]{0,20}:[0-9]{0,20}"
    ];
    let strategy = (text, any::<u64>(), any::<u64>(), any::<u64>());
    check_with_queues(
        "receipts",
        256,
        strategy,
        |queues, (text, scope, id, lease)| {
            for (backend, queue) in queues {
                let well_formed = format!("{}:{queue}:{scope}:{id}:{lease}", backend.provider());
                for (receipt, garbage) in [(text.clone(), true), (well_formed, false)] {
                    let receipt: ReceiptHandle = receipt.parse().expect("infallible");
                    let deleted = runtime().block_on(backend.delete_message(queue, &receipt));
                    let changed = runtime().block_on(backend.change_message_visibility(
                        queue,
                        &receipt,
                        Duration::ZERO,
                    ));
                    for result in [deleted, changed] {
                        let expected = match result {
                            Err(MessagingError::InvalidReceipt { .. }) => true,
                            Err(MessagingError::LeaseExpired { .. }) => !garbage,
                            _ => false,
                        };
                        prop_assert!(
                            expected,
                            "{}: {} receipt {:?} -> {:?}",
                            backend.provider(),
                            if garbage { "garbage" } else { "well-formed" },
                            receipt,
                            result
                        );
                    }
                }
            }
            Ok(())
        },
    );
}

/// C31's explicit cases: a body holding U+0000 anywhere (PostgreSQL's jsonb
/// cannot store it) is `InvalidArgument` on every provider, alone or in a
/// batch, and nothing of it or of its batch is stored.
#[test]
fn nul_bodies_are_refused_before_io() {
    use serde_json::json;
    let bodies = [
        json!("\u{0}"),
        json!("before\u{0}after"),
        json!({ "key\u{0}": 1 }),
        json!([1, { "nested": ["x", "\u{0}"] }]),
    ];
    let queues = PropertyQueues::create("nul");
    for (backend, queue) in &queues.0 {
        let provider = backend.provider();
        runtime().block_on(async {
            for body in &bodies {
                let sent = backend.send_message(queue, &Raw(body.clone())).await;
                assert!(
                    matches!(sent, Err(MessagingError::InvalidArgument(_))),
                    "{provider}: {body:?} -> {sent:?}"
                );
                let batch = [Raw(json!({ "fine": true })), Raw(body.clone())];
                let sent = backend.send_batch(queue, &batch).await;
                assert!(
                    matches!(sent, Err(MessagingError::InvalidArgument(_))),
                    "{provider}: batch with {body:?} -> {sent:?}"
                );
            }
            let stats = backend.get_queue_stats(queue).await.expect("stats");
            assert_eq!(stats.message_count, 0, "{provider}: nothing was stored");
        });
    }
}

/// A message is refused, before any I/O, exactly when it serializes to
/// more than `max_message_bytes`.
#[test]
fn oversized_messages_are_refused() {
    check_with_queues("oversized", 256, 0usize..64, |queues, extra| {
        for (backend, queue) in queues {
            let max = backend.queues_config().max_message_bytes;
            // A JSON string of n characters serializes to n + 2 bytes.
            let len = max - 32 + extra;
            let body = Raw(serde_json::Value::String("x".repeat(len)));
            let result = runtime().block_on(backend.send_message(queue, &body));
            if len + 2 > max {
                prop_assert!(
                    matches!(result, Err(MessagingError::MessageTooLarge { size, max: m }) if size == len + 2 && m == max),
                    "{}: {} bytes -> {:?}",
                    backend.provider(),
                    len + 2,
                    result
                );
            } else {
                prop_assert!(result.is_ok(), "{}: {:?}", backend.provider(), result);
                runtime()
                    .block_on(backend.purge_queue(queue))
                    .expect("purge");
            }
        }
        Ok(())
    });
}

/// Whatever JSON sits in a queue, receiving it as a step never panics: it is
/// delivered if it decodes, else released at once for a receiver that reads
/// it (here, one that takes any JSON); nothing is lost or dead-lettered early.
#[test]
fn garbage_bodies_are_released_for_receivers_that_read_them() {
    check_with_queues("garbage", 64, json_value(), |queues, value| {
        for (backend, queue) in queues {
            let provider = backend.provider();
            runtime().block_on(async {
                prop_assert!(!has_nul(&value), "the strategy draws no U+0000");
                backend
                    .send_message(queue, &Raw(value.clone()))
                    .await
                    .expect("send");
                let decodes = serde_json::from_value::<SimpleStepMessage>(value.clone()).is_ok();
                let got = backend
                    .receive_messages::<SimpleStepMessage>(queue, 10, Duration::from_secs(30))
                    .await
                    .expect("receive never fails on a bad body");
                let stats = backend.get_queue_stats(queue).await.expect("stats");
                let other: Vec<tasker_messaging::QueuedMessage<Raw>> = backend
                    .receive_messages(queue, 10, Duration::from_secs(30))
                    .await
                    .expect("a receiver of any JSON");
                for m in &other {
                    backend
                        .delete_message(queue, m.receipt())
                        .await
                        .expect("delete");
                }
                for m in &got {
                    backend
                        .delete_message(queue, m.receipt())
                        .await
                        .expect("delete");
                }
                prop_assert_eq!(got.len(), usize::from(decodes), "{}: delivered", provider);
                prop_assert_eq!(
                    stats.dead_letter_count,
                    Some(0),
                    "{}: dead_letter_count",
                    provider
                );
                prop_assert_eq!(
                    other.len(),
                    usize::from(!decodes),
                    "{}: released for another receiver",
                    provider
                );
                if !decodes {
                    prop_assert!(
                        same_json(&other[0].message.0, &value),
                        "{}: the body is kept: {:?} became {:?}",
                        provider,
                        value,
                        other[0].message.0
                    );
                }
                Ok(())
            })?;
        }
        Ok(())
    });
}

//! The spans and metrics every call records, on every provider (real
//! services: PostgreSQL and RabbitMQ must be up; a missing one fails the
//! test, naming it). Spans are captured by a `tracing_subscriber` layer
//! written here, metrics by `metrics-util`'s `DebuggingRecorder`, both
//! installed for this thread only (`#[tokio::test]` runs on one thread, and
//! every gate call runs on it). The tests run one at a time, each with a
//! subscriber: `tracing` caches whether a callsite is enabled, and a
//! thread without one could have it cached as disabled for all.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use metrics_util::{
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
    CompositeKey, MetricKind,
};
use tasker_messaging::{
    telemetry, MessageBackend, MessagingError, MessagingService, Provider, SimpleStepMessage,
};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

/// One closed span: its name, its fields as text, and its parent's name.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    target: String,
    parent: Option<&'static str>,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn ours(&self) -> bool {
        self.target.starts_with("tasker_messaging")
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// A layer that keeps every closed span.
#[derive(Clone, Default)]
struct SpanCapture(Arc<Mutex<Vec<Captured>>>);

impl SpanCapture {
    fn ours(&self) -> Vec<Captured> {
        let spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spans.iter().filter(|s| s.ours()).cloned().collect()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanCapture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a new span is in the registry");
        let mut captured = Captured {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            parent: span.parent().map(|p| p.name()),
            fields: BTreeMap::new(),
        };
        attrs.record(&mut Fields(&mut captured.fields));
        span.extensions_mut().insert(captured);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(captured) = span.extensions_mut().get_mut::<Captured>() {
                values.record(&mut Fields(&mut captured.fields));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(captured) = span.extensions_mut().remove::<Captured>() {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(captured);
            }
        }
    }
}

/// Every metric recorded so far (a snapshot drains the recorder: take one).
type Metrics = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn take(snapshotter: &Snapshotter) -> Metrics {
    snapshotter.snapshot().into_vec()
}

/// The sum of the counters named `name` whose labels include `labels`.
fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .iter()
        .filter(|(key, _, _, _)| key.kind() == MetricKind::Counter && key.key().name() == name)
        .filter(|(key, _, _, _)| matches_labels(key.key(), labels))
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

/// The number of histogram samples named `name` whose labels include `labels`.
fn samples(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> usize {
    metrics
        .iter()
        .filter(|(key, _, _, _)| key.kind() == MetricKind::Histogram && key.key().name() == name)
        .filter(|(key, _, _, _)| matches_labels(key.key(), labels))
        .map(|(_, _, _, value)| match value {
            DebugValue::Histogram(values) => values.len(),
            _ => 0,
        })
        .sum()
}

fn matches_labels(key: &metrics::Key, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| {
        if *v == "<none>" {
            key.labels().all(|l| l.key() != *k)
        } else {
            key.labels().any(|l| l.key() == *k && l.value() == *v)
        }
    })
}

fn unique_queue(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A known run on `backend`, with the spans and metrics it recorded, checked.
async fn known_run(backend: MessageBackend, system: &str, server: Option<(&str, &str)>) {
    let _serial = common::serial().await;
    let spans = SpanCapture::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    telemetry::enable_metrics();

    let queue = unique_queue("telemetry");
    let missing = unique_queue("telemetry_missing");
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    let mut calls = 0;

    backend.create_queue(&queue).await.expect("create");
    let id = backend.send_message(&queue, &step).await.expect("send");
    let ids = backend
        .send_batch(&queue, &[step.clone(), step.clone()])
        .await
        .expect("send batch");
    assert_eq!(ids.len(), 2);
    calls += 3;
    let mut got = Vec::new();
    for _ in 0..20 {
        let more = backend
            .receive_messages_wait::<SimpleStepMessage>(
                &queue,
                3 - got.len(),
                LEASE,
                Duration::from_secs(1),
            )
            .await
            .expect("receive");
        calls += 1;
        got.extend(more);
        if got.len() == 3 {
            break;
        }
    }
    assert_eq!(got.len(), 3, "three messages received");
    backend
        .delete_message(&queue, got[0].receipt())
        .await
        .expect("delete");
    backend
        .change_message_visibility(&queue, got[1].receipt(), LEASE)
        .await
        .expect("change visibility");
    let receipts = [got[1].receipt().clone(), got[2].receipt().clone()];
    let outcomes = backend
        .delete_messages(&queue, &receipts)
        .await
        .expect("delete messages");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let stale = backend.delete_message(&queue, got[0].receipt()).await;
    assert!(
        matches!(stale, Err(MessagingError::LeaseExpired { .. })),
        "{stale:?}"
    );
    let lost = backend.send_message(&missing, &step).await;
    assert!(
        matches!(lost, Err(MessagingError::QueueNotFound { .. })),
        "{lost:?}"
    );
    let refused = backend.send_message("bad name!", &step).await;
    assert!(matches!(
        refused,
        Err(MessagingError::InvalidQueueName { .. })
    ));
    backend.get_queue_stats(&queue).await.expect("stats");
    backend.purge_queue(&queue).await.expect("purge");
    backend.delete_queue(&queue).await.expect("delete queue");
    calls += 9;
    backend.close().await.expect("close");

    // Spans: one per call, none inside another.
    let ours = spans.ours();
    assert_eq!(ours.len(), calls, "one span per call: {ours:#?}");
    for span in &ours {
        assert_eq!(span.parent, None, "no span inside another: {span:?}");
        assert_eq!(span.field("messaging.system"), Some(system), "{span:?}");
        // `{span} {queue}`, or the span's name alone when the queue is
        // not recorded (no trailing space).
        let otel_name = match span.field("messaging.destination.name").unwrap_or("") {
            "" => span.name.to_owned(),
            destination => format!("{} {destination}", span.name),
        };
        assert_eq!(
            span.field("otel.name"),
            Some(otel_name.as_str()),
            "{span:?}"
        );
        match server {
            Some((address, port)) => {
                assert_eq!(span.field("server.address"), Some(address), "{span:?}");
                assert_eq!(span.field("server.port"), Some(port), "{span:?}");
            }
            None => assert_eq!(span.field("server.address"), None, "{span:?}"),
        }
    }
    let find = |op: &str| -> Vec<&Captured> {
        ours.iter()
            .filter(|s| s.field("messaging.operation.name") == Some(op))
            .collect()
    };
    let sends = find("send_message");
    assert_eq!(sends.len(), 3);
    let sent = sends[0];
    assert_eq!(sent.name, "send");
    assert_eq!(sent.field("otel.kind"), Some("producer"));
    assert_eq!(sent.field("messaging.operation.type"), Some("send"));
    assert_eq!(
        sent.field("messaging.destination.name"),
        Some(queue.as_str())
    );
    assert_eq!(sent.field("messaging.message.id"), Some(id.as_str()));
    assert_eq!(sent.field("error.type"), None);
    assert_eq!(sends[1].field("error.type"), Some("queue_not_found"));
    assert_eq!(sends[1].field("otel.status_code"), Some("ERROR"));
    assert_eq!(sends[1].field("messaging.message.id"), None);
    // A name the gate refuses is not recorded.
    assert_eq!(sends[2].field("error.type"), Some("invalid_queue_name"));
    assert_eq!(sends[2].field("messaging.destination.name"), Some(""));
    assert_eq!(sends[2].field("otel.name"), Some("send"));
    let batch = find("send_batch");
    assert_eq!(batch[0].field("messaging.batch.message_count"), Some("2"));
    let receives = find("receive_messages_wait");
    assert!(receives
        .iter()
        .all(|s| s.name == "receive" && s.field("messaging.operation.type") == Some("receive")));
    let received: u64 = receives
        .iter()
        .map(|s| {
            s.field("messaging.batch.message_count")
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(received, 3);
    let deletes = find("delete_message");
    assert_eq!(deletes.len(), 2);
    assert_eq!(deletes[0].name, "settle");
    assert_eq!(deletes[0].field("messaging.operation.type"), Some("settle"));
    assert_eq!(deletes[1].field("error.type"), Some("lease_expired"));
    assert_eq!(
        find("delete_messages")[0].field("messaging.batch.message_count"),
        Some("2")
    );
    assert_eq!(find("change_message_visibility")[0].name, "settle");
    for (op, name) in [
        ("create_queue", "create"),
        ("get_queue_stats", "stats"),
        ("purge_queue", "purge"),
        ("delete_queue", "delete"),
    ] {
        let span = find(op);
        assert_eq!((span.len(), span[0].name), (1, name), "{op}");
        assert_eq!(span[0].field("messaging.operation.type"), None, "{op}");
    }

    // Metrics.
    let recorded = take(&snapshotter);
    let q = queue.as_str();
    let on = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut labels = vec![
            ("messaging.system", system),
            ("messaging.destination.name", q),
        ];
        labels.extend_from_slice(extra);
        labels
    };
    let sent_ok = on(&[("error.type", "<none>")]);
    assert_eq!(counter(&recorded, telemetry::SENT_MESSAGES, &sent_ok), 3);
    assert_eq!(
        counter(
            &recorded,
            telemetry::SENT_MESSAGES,
            &[
                ("messaging.destination.name", ""),
                ("error.type", "queue_not_found")
            ]
        ),
        1,
        "a queue that does not exist is no label of its own"
    );
    assert_eq!(
        counter(
            &recorded,
            telemetry::ERRORS,
            &[
                ("messaging.destination.name", ""),
                ("error.type", "invalid_queue_name")
            ]
        ),
        1
    );
    assert!(
        !recorded.iter().any(|(key, _, _, _)| key
            .key()
            .labels()
            .any(|label| label.value() == missing.as_str())),
        "no metric labelled with the missing queue"
    );
    assert_eq!(
        counter(&recorded, telemetry::CONSUMED_MESSAGES, &on(&[])),
        3
    );
    assert_eq!(
        counter(
            &recorded,
            telemetry::SETTLED_MESSAGES,
            &on(&[("outcome", "ok")])
        ),
        4
    );
    assert_eq!(
        counter(
            &recorded,
            telemetry::SETTLED_MESSAGES,
            &on(&[("outcome", "lease_expired")])
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            telemetry::ERRORS,
            &on(&[("error.type", "lease_expired")])
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            telemetry::ERRORS,
            &[("messaging.system", system)]
        ),
        3
    );
    assert_eq!(
        samples(
            &recorded,
            telemetry::OPERATION_DURATION,
            &on(&[
                ("messaging.operation.name", "send_message"),
                ("messaging.operation.type", "send")
            ])
        ),
        1
    );
    assert_eq!(
        samples(
            &recorded,
            telemetry::OPERATION_DURATION,
            &[("messaging.system", system)]
        ),
        calls
    );
}

#[tokio::test]
async fn in_memory_spans_and_metrics() {
    known_run(common::backend(Provider::InMemory).await, "in_memory", None).await;
}

#[tokio::test]
async fn pgmq_spans_and_metrics() {
    let backend = common::backend(Provider::Pgmq).await;
    known_run(backend, "pgmq", Some(("127.0.0.1", "5432"))).await;
}

#[tokio::test]
async fn rabbitmq_spans_and_metrics() {
    let backend = common::backend(Provider::RabbitMq).await;
    known_run(backend, "rabbitmq", Some(("127.0.0.1", "5672"))).await;
}

/// A migrating backend calls its sides below the gate: still one span per
/// call, with the target's `messaging.system` and no server (a call may
/// reach either side).
#[tokio::test]
async fn migration_makes_one_span_per_call() {
    let _serial = common::serial().await;
    let backend = common::migrating(Provider::Pgmq, Provider::RabbitMq).await;
    let spans = SpanCapture::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let queue = unique_queue("telemetry_migrating");
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    backend.create_queue(&queue).await.expect("create");
    backend.send_message(&queue, &step).await.expect("send");
    let got = backend
        .receive_messages_wait::<SimpleStepMessage>(&queue, 1, LEASE, Duration::from_secs(2))
        .await
        .expect("receive");
    backend
        .delete_message(&queue, got[0].receipt())
        .await
        .expect("delete");
    backend.delete_queue(&queue).await.expect("delete queue");
    backend.close().await.expect("close");
    let names: Vec<_> = spans.ours().iter().map(|s| s.name).collect();
    assert_eq!(names, ["create", "send", "receive", "settle", "delete"]);
    for span in spans.ours() {
        assert_eq!(span.parent, None);
        assert_eq!(span.field("messaging.system"), Some("rabbitmq"));
        assert_eq!(span.field("server.address"), None);
    }
}

/// Dead-lettered and released messages, counted once the receive that
/// moved or released them has done so.
async fn dead_letters_and_releases_are_counted(provider: Provider) {
    let _serial = common::serial().await;
    // A subscriber here too: a span callsite first met on a thread with
    // none would be cached as never enabled, for the other tests as well.
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(SpanCapture::default()),
    );
    let backend = common::backend(provider).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    telemetry::enable_metrics();
    let queue = unique_queue("telemetry_dlq");
    backend.create_queue(&queue).await.expect("create");
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
    backend.send_message(&queue, &step).await.expect("send");
    // max_receive_count is 3 in the suites' config: the 4th read moves it.
    for _ in 0..3 {
        let got = backend
            .receive_messages::<SimpleStepMessage>(&queue, 1, LEASE)
            .await
            .expect("receive");
        backend
            .change_message_visibility(&queue, got[0].receipt(), Duration::ZERO)
            .await
            .expect("release");
    }
    let none = backend
        .receive_messages::<SimpleStepMessage>(&queue, 1, LEASE)
        .await
        .expect("receive");
    assert!(none.is_empty());
    // Another shape: put back at once for receivers that can read it.
    let other = serde_json::json!({ "other": "shape" });
    backend.send_message(&queue, &other).await.expect("send");
    let none = backend
        .receive_messages::<SimpleStepMessage>(&queue, 1, LEASE)
        .await
        .expect("receive");
    assert!(none.is_empty());

    let recorded = take(&snapshotter);
    let labels = [
        ("messaging.system", provider.tag()),
        ("messaging.destination.name", queue.as_str()),
    ];
    let mut dead = labels.to_vec();
    dead.push(("reason", "max_receive_count_exceeded"));
    assert_eq!(
        counter(&recorded, telemetry::DEAD_LETTERED_MESSAGES, &dead),
        1
    );
    assert_eq!(counter(&recorded, telemetry::RELEASED_MESSAGES, &labels), 1);
    assert_eq!(counter(&recorded, telemetry::CONSUMED_MESSAGES, &labels), 3);
    assert_eq!(counter(&recorded, telemetry::SENT_MESSAGES, &labels), 2);
    backend.delete_queue(&queue).await.expect("delete queue");
}

#[tokio::test]
async fn in_memory_dead_letters_and_releases_are_counted() {
    dead_letters_and_releases_are_counted(Provider::InMemory).await;
}

#[tokio::test]
async fn pgmq_dead_letters_and_releases_are_counted() {
    dead_letters_and_releases_are_counted(Provider::Pgmq).await;
}

#[tokio::test]
async fn rabbitmq_dead_letters_and_releases_are_counted() {
    dead_letters_and_releases_are_counted(Provider::RabbitMq).await;
}

/// `enable_metrics` gives every metric its unit.
#[test]
fn metrics_are_described_with_units() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        telemetry::enable_metrics();
        metrics::histogram!(telemetry::OPERATION_DURATION).record(0.5);
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let (_, unit, description, _) = snapshot
        .iter()
        .find(|(key, _, _, _)| key.key().name() == telemetry::OPERATION_DURATION)
        .expect("recorded");
    assert_eq!(*unit, Some(metrics::Unit::Seconds));
    assert!(description.is_some());
}

/// A call dropped before it ends closes its span as cancelled, and records
/// no metric.
#[tokio::test]
async fn a_cancelled_call_closes_its_span_as_cancelled() {
    let _serial = common::serial().await;
    let spans = SpanCapture::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    telemetry::enable_metrics();
    let backend = common::backend(Provider::InMemory).await;
    let queue = unique_queue("telemetry_cancel");
    backend.create_queue(&queue).await.expect("create");
    let waited = tokio::time::timeout(
        Duration::from_millis(50),
        backend.receive_messages_wait::<SimpleStepMessage>(
            &queue,
            1,
            LEASE,
            Duration::from_secs(30),
        ),
    )
    .await;
    assert!(waited.is_err(), "the receive was cut short");
    let receives: Vec<_> = spans
        .ours()
        .into_iter()
        .filter(|s| s.name == "receive")
        .collect();
    assert_eq!(receives.len(), 1, "{receives:#?}");
    assert_eq!(receives[0].field("error.type"), Some("cancelled"));
    let recorded = take(&snapshotter);
    assert_eq!(
        samples(
            &recorded,
            telemetry::OPERATION_DURATION,
            &[("messaging.operation.name", "receive_messages_wait")]
        ),
        0
    );
}

/// The breaker gauge is set at transitions only: creating a backend (and
/// its breaker) sets nothing.
#[tokio::test]
async fn a_new_breaker_sets_no_gauge() {
    let _serial = common::serial().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    telemetry::enable_metrics();
    let _breaker = tasker_messaging::CircuitBreaker::new(
        Provider::Pgmq,
        tasker_messaging::CircuitBreakerConfig::default(),
    );
    let recorded = take(&snapshotter);
    assert!(
        !recorded
            .iter()
            .any(|(key, _, _, _)| key.key().name() == telemetry::CIRCUIT_BREAKER_STATE),
        "{recorded:?}"
    );
}

//! Trace context across processes (feature `opentelemetry`): a span around a
//! send in one backend, a receive in another, independently connected; the
//! worker's span continues the sender's trace. On every provider, through
//! a migrating backend, through dead-lettering.

mod common;

use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tasker_messaging::{
    MessageBackend, MessagingService, Provider, QueuedMessage, SendOptions, SimpleStepMessage,
};
use tracing::subscriber::DefaultGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

/// A subscriber with an OpenTelemetry layer (real span contexts, no
/// exporter) and W3C's propagator, for this test's thread.
fn traced() -> DefaultGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = SdkTracerProvider::builder()
        .build()
        .tracer("trace_context test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_default(subscriber)
}

fn step() -> SimpleStepMessage {
    SimpleStepMessage {
        task_uuid: Uuid::new_v4(),
        step_uuid: Uuid::new_v4(),
        ready_dependency_step_uuids: vec![],
    }
}

async fn fresh(backend: &MessageBackend, case: &str) -> String {
    let queue = format!("tc_{case}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    backend.create_queue(&queue).await.expect("create queue");
    queue
}

/// Two independently connected backends on `provider` (in-memory queues live
/// in one backend, so there a clone stands for the second).
async fn two(provider: Provider) -> (MessageBackend, MessageBackend) {
    let sender = common::backend(provider).await;
    let receiver = match provider {
        Provider::InMemory => sender.clone(),
        _ => common::backend(provider).await,
    };
    (sender, receiver)
}

async fn receive_one(backend: &MessageBackend, queue: &str) -> QueuedMessage<SimpleStepMessage> {
    let mut got = backend
        .receive_messages_wait::<SimpleStepMessage>(queue, 1, LEASE, WAIT)
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "one message on {queue}");
    got.remove(0)
}

/// The sender's span context: what the worker's span must continue.
fn context_of(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// A worker's span made a child of the message's trace context.
fn worker_span(message: &QueuedMessage<SimpleStepMessage>) -> SpanContext {
    let span = tracing::info_span!("process step");
    span.set_parent(message.trace_context())
        .expect("set parent");
    context_of(&span)
}

/// Sends a step inside a span on one backend, receives it on the other, and
/// checks that the worker's span is in the sender's trace.
async fn carried_across(provider: Provider) {
    let _guard = traced();
    let (sender, receiver) = two(provider).await;
    let queue = fresh(&sender, "across").await;

    let span = tracing::info_span!("enqueue step");
    let sent = context_of(&span);
    assert!(sent.is_valid(), "the test's tracer makes real contexts");
    {
        let _entered = span.enter();
        sender.send_message(&queue, &step()).await.expect("send");
        sender
            .send_batch(&queue, &[step(), step()])
            .await
            .expect("send batch");
        sender
            .send_message_with(
                &queue,
                &step(),
                &SendOptions::new().header("tenant", "acme"),
            )
            .await
            .expect("send with a header");
    }
    for _ in 0..4 {
        let message = receive_one(&receiver, &queue).await;
        let remote = message.trace_context().span().span_context().clone();
        assert!(remote.is_remote(), "the context came from the headers");
        assert_eq!(
            remote.trace_id(),
            sent.trace_id(),
            "{provider:?}: the sender's trace"
        );
        let worker = worker_span(&message);
        assert_eq!(
            worker.trace_id(),
            sent.trace_id(),
            "{provider:?}: the worker continues it"
        );
        // The library's `send` span, a child of the caller's, is the parent.
        assert_ne!(remote.span_id(), sent.span_id(), "the send span's own id");
        assert_ne!(worker.span_id(), sent.span_id());
        assert!(message.headers().contains_key("traceparent"));
        receiver
            .delete_message(&queue, message.receipt())
            .await
            .expect("delete");
    }

    // Outside any span of the caller's, the library's own `send` span
    // starts a trace of its own.
    sender.send_message(&queue, &step()).await.expect("send");
    let own = receive_one(&receiver, &queue).await;
    let root = own.trace_context().span().span_context().clone();
    assert!(root.is_valid(), "{provider:?}: {:?}", own.headers());
    assert_ne!(root.trace_id(), sent.trace_id(), "a trace of its own");
    sender.delete_queue(&queue).await.expect("delete queue");
}

#[tokio::test]
async fn in_memory_carries_the_trace() {
    carried_across(Provider::InMemory).await;
}

#[tokio::test]
async fn pgmq_carries_the_trace() {
    carried_across(Provider::Pgmq).await;
}

#[tokio::test]
async fn rabbitmq_carries_the_trace() {
    carried_across(Provider::RabbitMq).await;
}

/// A caller's own `traceparent` wins over the current span's.
#[tokio::test]
async fn a_caller_s_own_traceparent_is_kept() {
    let _guard = traced();
    let backend = common::backend(Provider::InMemory).await;
    let queue = fresh(&backend, "own").await;
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let span = tracing::info_span!("enqueue step");
    let _entered = span.enter();
    backend
        .send_message_with(
            &queue,
            &step(),
            &SendOptions::new().header("traceparent", own),
        )
        .await
        .expect("send");
    let message = receive_one(&backend, &queue).await;
    assert_eq!(message.headers()["traceparent"], own);
    assert_eq!(
        message
            .trace_context()
            .span()
            .span_context()
            .trace_id()
            .to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

/// Sent through a backend migrating from PGMQ to RabbitMQ, received by a
/// backend on RabbitMQ alone (the migration's new side).
#[tokio::test]
async fn a_migrating_backend_carries_the_trace() {
    let _guard = traced();
    let migrating = common::migrating(Provider::Pgmq, Provider::RabbitMq).await;
    let rabbitmq = common::backend(Provider::RabbitMq).await;
    let queue = fresh(&migrating, "migrating").await;
    let span = tracing::info_span!("enqueue step");
    let sent = context_of(&span);
    {
        let _entered = span.enter();
        migrating.send_message(&queue, &step()).await.expect("send");
    }
    let message = receive_one(&rabbitmq, &queue).await;
    assert_eq!(worker_span(&message).trace_id(), sent.trace_id());
    rabbitmq
        .delete_message(&queue, message.receipt())
        .await
        .expect("delete");
    migrating.delete_queue(&queue).await.expect("delete queue");
}

/// A message dead-lettered after `max_receive_count` receives keeps the
/// sender's trace on every provider, received from the dead-letter queue by
/// another backend.
#[tokio::test]
async fn a_dead_letter_keeps_the_trace() {
    let _guard = traced();
    for provider in [Provider::InMemory, Provider::Pgmq, Provider::RabbitMq] {
        let (sender, receiver) = two(provider).await;
        let queue = fresh(&sender, "dead").await;
        let dlq = format!("{queue}{}", sender.queues_config().dead_letter_queue_suffix);
        let span = tracing::info_span!("enqueue step");
        let sent = context_of(&span);
        {
            let _entered = span.enter();
            sender.send_message(&queue, &step()).await.expect("send");
        }
        for _ in 0..receiver.queues_config().max_receive_count {
            let message = receive_one(&receiver, &queue).await;
            receiver
                .change_message_visibility(&queue, message.receipt(), Duration::ZERO)
                .await
                .expect("release");
        }
        // The next receive moves it; it returns nothing from the queue.
        let none = receiver
            .receive_messages::<SimpleStepMessage>(&queue, 1, LEASE)
            .await
            .expect("receive");
        assert!(
            none.is_empty(),
            "{provider:?}: the exhausted message is not handed out"
        );
        let dead = receive_one(&receiver, &dlq).await;
        assert_eq!(
            worker_span(&dead).trace_id(),
            sent.trace_id(),
            "{provider:?}: the dead letter keeps the trace"
        );
        sender.delete_queue(&queue).await.expect("delete queue");
    }
}

/// With no OpenTelemetry layer installed there is no context: a send
/// inside a span stays a plain send, with no header added.
#[tokio::test]
async fn without_a_layer_a_send_carries_nothing() {
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let backend = common::backend(Provider::InMemory).await;
    let queue = fresh(&backend, "no_layer").await;
    let span = tracing::info_span!("enqueue step");
    let _entered = span.enter();
    backend.send_message(&queue, &step()).await.expect("send");
    let message = receive_one(&backend, &queue).await;
    assert!(message.headers().is_empty(), "{:?}", message.headers());
    assert!(!message.trace_context().span().span_context().is_valid());
}

/// A body exactly at `max_message_bytes` (its JSON is that long).
fn body_at_limit(backend: &MessageBackend) -> serde_json::Value {
    let max = backend.queues_config().max_message_bytes;
    let body = serde_json::Value::String("x".repeat(max - 2));
    assert_eq!(serde_json::to_string(&body).expect("json").len(), max);
    body
}

/// A message that fits without trace headers is not refused for them: sent
/// inside a span, it goes out without the context instead, once.
async fn a_full_message_is_sent_in_a_span(provider: Provider) {
    let _guard = traced();
    let backend = common::backend(provider).await;
    let queue = fresh(&backend, "full").await;
    let body = body_at_limit(&backend);
    let span = tracing::info_span!("enqueue step");
    {
        let _entered = span.enter();
        backend
            .send_message(&queue, &body)
            .await
            .unwrap_or_else(|e| panic!("{provider:?}: send at the limit in a span: {e}"));
        backend
            .send_batch(&queue, std::slice::from_ref(&body))
            .await
            .unwrap_or_else(|e| panic!("{provider:?}: batch at the limit in a span: {e}"));
        backend
            .send_message_with(&queue, &body, &SendOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{provider:?}: send_with at the limit in a span: {e}"));
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let more = backend
            .receive_messages_wait::<serde_json::Value>(&queue, 10, LEASE, WAIT)
            .await
            .expect("receive");
        assert!(!more.is_empty(), "{provider:?}: only {} arrived", got.len());
        got.extend(more);
    }
    for message in &got {
        assert_eq!(message.message, body);
        assert!(!message.headers().contains_key("traceparent"));
    }
    let left = backend
        .receive_messages::<serde_json::Value>(&queue, 10, LEASE)
        .await
        .expect("receive");
    assert!(
        left.is_empty(),
        "{provider:?}: each sent once, no second copy"
    );
    backend.delete_queue(&queue).await.expect("delete queue");
}

#[tokio::test]
async fn in_memory_full_message_in_a_span() {
    a_full_message_is_sent_in_a_span(Provider::InMemory).await;
}

#[tokio::test]
async fn pgmq_full_message_in_a_span() {
    a_full_message_is_sent_in_a_span(Provider::Pgmq).await;
}

#[tokio::test]
async fn rabbitmq_full_message_in_a_span() {
    a_full_message_is_sent_in_a_span(Provider::RabbitMq).await;
}

/// A message with no valid context gives an empty one, not the receiver's
/// current context (`extract` would fall back to it).
#[tokio::test]
async fn no_context_in_the_headers_is_no_context() {
    let backend = common::backend(Provider::InMemory).await;
    let queue = fresh(&backend, "none").await;
    // With no OpenTelemetry layer yet: no trace headers at all.
    backend.send_message(&queue, &step()).await.expect("send");
    let _guard = traced();
    // A caller's garbage: kept as it is, and no context is read from it.
    backend
        .send_message_with(
            &queue,
            &step(),
            &SendOptions::new().header("traceparent", "garbage"),
        )
        .await
        .expect("send");
    let worker = tracing::info_span!("worker");
    let _entered = worker.enter();
    assert!(context_of(&worker).is_valid());
    for _ in 0..2 {
        let message = receive_one(&backend, &queue).await;
        let context = message.trace_context();
        assert!(
            !context.span().span_context().is_valid(),
            "headers {:?} carry no context, yet the worker's came back",
            message.headers()
        );
    }
}

/// The caller's trace headers win whole, whatever their case: no second
/// `traceparent` beside a `Traceparent`, no library `traceparent` paired
/// with the caller's `tracestate`, and never an empty `tracestate`.
#[tokio::test]
async fn a_caller_s_trace_headers_win_whole() {
    let _guard = traced();
    let backend = common::backend(Provider::InMemory).await;
    let queue = fresh(&backend, "whole").await;
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let span = tracing::info_span!("enqueue step");
    let _entered = span.enter();
    let cases = [
        ("Traceparent", own),
        ("TRACESTATE", "vendor=secret"),
        ("tracestate", "vendor=secret"),
    ];
    for (key, value) in cases {
        backend
            .send_message_with(&queue, &step(), &SendOptions::new().header(key, value))
            .await
            .expect("send");
        let message = receive_one(&backend, &queue).await;
        let mut expected = tasker_messaging::Headers::new();
        expected.insert(key.to_owned(), value.to_owned());
        assert_eq!(message.headers(), &expected, "{key}: only the caller's");
        backend
            .delete_message(&queue, message.receipt())
            .await
            .expect("delete");
    }
    // The caller's own `Traceparent` is read back, without case.
    backend
        .send_message_with(
            &queue,
            &step(),
            &SendOptions::new().header("Traceparent", own),
        )
        .await
        .expect("send");
    let message = receive_one(&backend, &queue).await;
    assert_eq!(
        message
            .trace_context()
            .span()
            .span_context()
            .trace_id()
            .to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    backend
        .delete_message(&queue, message.receipt())
        .await
        .expect("delete");
    // The library's own: `traceparent` only (the span's `tracestate` is empty).
    backend.send_message(&queue, &step()).await.expect("send");
    let message = receive_one(&backend, &queue).await;
    let keys: Vec<&str> = message.headers().keys().map(String::as_str).collect();
    assert_eq!(keys, ["traceparent"], "no empty tracestate");
}

//! Observability: one `tracing` span and one set of `metrics` per public
//! call, made in one place, the gate every
//! [`MessagingService`](crate::MessagingService) call goes through.
//!
//! The library depends on no OpenTelemetry crate, no exporter and no
//! metrics SDK: spans go through the [`tracing`](https://docs.rs/tracing)
//! facade and metrics through the [`metrics`](https://docs.rs/metrics)
//! facade. The application installs a subscriber (e.g.
//! `tracing-opentelemetry` or `tracing_subscriber::fmt`) and a recorder
//! (e.g. `metrics-exporter-prometheus` or
//! `metrics-exporter-opentelemetry`) then calls [`enable_metrics`]; with
//! neither, a call pays a disabled span's interest check and one atomic
//! load.
//!
//! # Spans
//!
//! One span per call at level `INFO`, named by its operation (the static
//! `tracing` name) with the OpenTelemetry name `{operation} {queue}` in the
//! field `otel.name`, which `tracing-opentelemetry` uses as the span name:
//!
//! | span | `messaging.operation.type` | `messaging.operation.name` (the method) | `otel.kind` |
//! | --- | --- | --- | --- |
//! | `send` | `send` | `send_message`, `send_batch`, `send_message_with`, `send_batch_with` | `producer` |
//! | `receive` | `receive` | `receive_messages`, `receive_messages_wait` | `client` |
//! | `settle` | `settle` | `delete_message`, `delete_messages`, `change_message_visibility` | `client` |
//! | `create` | (none) | `create_queue` | `client` |
//! | `delete` | (none) | `delete_queue` | `client` |
//! | `purge` | (none) | `purge_queue` | `client` |
//! | `stats` | (none) | `get_queue_stats` | `client` |
//!
//! The fields: `messaging.system` ([`Provider::tag`](crate::Provider::tag):
//! `pgmq`, `rabbitmq`, `in_memory`), `messaging.destination.name`,
//! `messaging.operation.type`, `messaging.operation.name`,
//! `messaging.batch.message_count` (batch calls), `messaging.message.id`
//! (single-message calls, where known), `error.type`
//! ([`MessagingError::kind`](crate::MessagingError::kind)) and
//! `otel.status_code = "ERROR"` on failure (`error.type = "cancelled"`
//! alone when the call's future was dropped before it ended), `server.address` and
//! `server.port` (server providers).
//!
//! # Metrics
//!
//! Recorded once the application calls [`enable_metrics`] (after installing
//! its recorder); the names are the constants of this module.

mod meter;
mod span;

pub(crate) use self::{
    meter::{breaker_state, dead_lettered, reconnected, released},
    span::{observe, Op},
};

/// Histogram, seconds: the duration of each call, failed or not
/// (OpenTelemetry `messaging.client.operation.duration`). Labels:
/// `messaging.system`, `messaging.destination.name`,
/// `messaging.operation.name`, `messaging.operation.type` (where there is
/// one), `error.type` (on failure).
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Counter, messages: messages a send call tried to send, with `error.type`
/// when it failed (OpenTelemetry `messaging.client.sent.messages`). Labels:
/// `messaging.system`, `messaging.destination.name`,
/// `messaging.operation.name`, `error.type` (on failure).
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// Counter, messages: messages handed to the caller by a receive
/// (OpenTelemetry `messaging.client.consumed.messages`). Labels:
/// `messaging.system`, `messaging.destination.name`,
/// `messaging.operation.name`.
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// Counter, messages: receipts settled (deleted, or their lease changed),
/// one per receipt. Labels: `messaging.system`,
/// `messaging.destination.name`, `messaging.operation.name`, `outcome`
/// (`ok`, or the [`MessagingError::kind`](crate::MessagingError::kind) of
/// that receipt's failure).
pub const SETTLED_MESSAGES: &str = "tasker_messaging.settled.messages";
/// Counter, messages: messages a receive sent to the dead-letter queue.
/// Labels: `messaging.system`, `messaging.destination.name` (the queue
/// they left), `reason` (`max_receive_count_exceeded`, `undecodable_body`).
pub const DEAD_LETTERED_MESSAGES: &str = "tasker_messaging.dead_lettered.messages";
/// Counter, messages: messages of another shape a receive read and made
/// ready again at once for receivers that can read them (C19). Labels:
/// `messaging.system`, `messaging.destination.name`.
pub const RELEASED_MESSAGES: &str = "tasker_messaging.released.messages";
/// Counter, errors: failed calls. Labels: `messaging.system`,
/// `messaging.destination.name`, `messaging.operation.name`, `error.type`.
pub const ERRORS: &str = "tasker_messaging.errors";
/// Gauge: the circuit breaker's state, `0` closed, `1` half-open, `2` open,
/// set at each transition once metrics are enabled (none until a breaker
/// first changes state). Label: `messaging.system` only: it is keyed by
/// provider, so two backends of one provider (two PGMQ databases, say)
/// set the same gauge, and it shows whichever changed last.
pub const CIRCUIT_BREAKER_STATE: &str = "tasker_messaging.circuit_breaker.state";
/// Counter, reconnects: connections to the server re-established after a
/// loss (RabbitMQ: the data connection; PGMQ: the server answering again
/// after it was found unreachable). Label: `messaging.system`.
pub const RECONNECTS: &str = "tasker_messaging.reconnects";

/// Turns the library's metrics on, and gives the installed recorder the
/// unit and description of each. Call it once, after installing the
/// recorder (a recorder installed later does not see the descriptions).
///
/// Until it is called, calls record no per-call metric: the `metrics`
/// facade cannot tell whether a recorder is installed, and building the
/// labels of a call (an owned queue name each) for its no-op recorder cost
/// about 0.2 µs a call on the in-memory provider (BENCHMARKS.md,
/// "Telemetry cost"). The circuit breaker gauge is set only at transitions
/// once they are enabled; the reconnect counter, rare, is recorded either
/// way.
///
/// ```
/// // With metrics-exporter-prometheus, say:
/// // let handle = PrometheusBuilder::new().install_recorder()?;
/// tasker_messaging::telemetry::enable_metrics();
/// ```
pub fn enable_metrics() {
    meter::enable();
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Duration of each messaging call."
    );
    describe_counter!(
        SENT_MESSAGES,
        Unit::Count,
        "Messages a send call tried to send."
    );
    describe_counter!(
        CONSUMED_MESSAGES,
        Unit::Count,
        "Messages handed to the caller by a receive."
    );
    describe_counter!(
        SETTLED_MESSAGES,
        Unit::Count,
        "Receipts settled: deleted, or their lease changed."
    );
    describe_counter!(
        DEAD_LETTERED_MESSAGES,
        Unit::Count,
        "Messages a receive sent to the dead-letter queue."
    );
    describe_counter!(
        RELEASED_MESSAGES,
        Unit::Count,
        "Messages of another shape made ready again at once by a receive."
    );
    describe_counter!(ERRORS, Unit::Count, "Failed messaging calls.");
    describe_gauge!(
        CIRCUIT_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Connections to the server re-established after a loss."
    );
}

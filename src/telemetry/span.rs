//! The span of one call, and what its outcome records.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Instant,
};

use tracing::{field::Empty, Span};

use super::meter;
use crate::{service::provide::Provide, MessageId, MessagingError, QueueStats, QueuedMessage};

/// A public call the gate observes: its `messaging.operation.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    CreateQueue,
    DeleteQueue,
    PurgeQueue,
    GetQueueStats,
    SendMessage,
    SendBatch,
    SendMessageWith,
    SendBatchWith,
    ReceiveMessages,
    ReceiveMessagesWait,
    DeleteMessage,
    DeleteMessages,
    ChangeMessageVisibility,
}

impl Op {
    /// `messaging.operation.name`: the method's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CreateQueue => "create_queue",
            Self::DeleteQueue => "delete_queue",
            Self::PurgeQueue => "purge_queue",
            Self::GetQueueStats => "get_queue_stats",
            Self::SendMessage => "send_message",
            Self::SendBatch => "send_batch",
            Self::SendMessageWith => "send_message_with",
            Self::SendBatchWith => "send_batch_with",
            Self::ReceiveMessages => "receive_messages",
            Self::ReceiveMessagesWait => "receive_messages_wait",
            Self::DeleteMessage => "delete_message",
            Self::DeleteMessages => "delete_messages",
            Self::ChangeMessageVisibility => "change_message_visibility",
        }
    }

    /// The span's name, the first word of `otel.name`.
    pub(crate) fn span_name(self) -> &'static str {
        match self {
            Self::CreateQueue => "create",
            Self::DeleteQueue => "delete",
            Self::PurgeQueue => "purge",
            Self::GetQueueStats => "stats",
            Self::SendMessage | Self::SendBatch | Self::SendMessageWith | Self::SendBatchWith => {
                "send"
            }
            Self::ReceiveMessages | Self::ReceiveMessagesWait => "receive",
            Self::DeleteMessage | Self::DeleteMessages | Self::ChangeMessageVisibility => "settle",
        }
    }

    /// `messaging.operation.type`: the conventions have none for queue
    /// administration.
    pub(crate) fn operation_type(self) -> Option<&'static str> {
        match self.span_name() {
            name @ ("send" | "receive" | "settle") => Some(name),
            _ => None,
        }
    }

    pub(crate) fn is_send(self) -> bool {
        self.span_name() == "send"
    }

    pub(crate) fn is_settle(self) -> bool {
        self.span_name() == "settle"
    }
}

/// A span with every field of the conventions declared empty: a callsite
/// per span name (a `tracing` name is static). Disabled, it costs an
/// interest check and nothing is formatted or allocated.
macro_rules! op_span {
    ($name:literal, $kind:literal) => {
        tracing::info_span!(
            $name,
            otel.name = Empty,
            otel.kind = $kind,
            otel.status_code = Empty,
            messaging.system = Empty,
            messaging.destination.name = Empty,
            messaging.operation.type = Empty,
            messaging.operation.name = Empty,
            messaging.batch.message_count = Empty,
            messaging.message.id = Empty,
            "error.type" = Empty,
            server.address = Empty,
            server.port = Empty,
        )
    };
}

/// The span of `op`: disabled (an interest check, nothing formatted or
/// allocated) unless a subscriber wants it.
fn start(op: Op) -> Span {
    match op.span_name() {
        "send" => op_span!("send", "producer"),
        "receive" => op_span!("receive", "client"),
        "settle" => op_span!("settle", "client"),
        "create" => op_span!("create", "client"),
        "delete" => op_span!("delete", "client"),
        "purge" => op_span!("purge", "client"),
        _ => op_span!("stats", "client"),
    }
}

/// Records the attributes known before the call on an enabled span.
fn record_start<P: Provide>(span: &Span, service: &P, op: Op, queue: &str, count: Option<usize>) {
    if queue.is_empty() {
        // Not recordable (see `recordable`): the operation alone.
        span.record("otel.name", op.span_name());
    } else {
        span.record(
            "otel.name",
            tracing::field::display(format_args!("{} {queue}", op.span_name())),
        );
    }
    span.record("messaging.system", Provide::provider(service).tag());
    span.record("messaging.destination.name", queue);
    if let Some(kind) = op.operation_type() {
        span.record("messaging.operation.type", kind);
    }
    span.record("messaging.operation.name", op.name());
    if let Some(count) = count {
        span.record("messaging.batch.message_count", count as u64);
    }
    if let Some((address, port)) = Provide::server(service) {
        span.record("server.address", address);
        span.record("server.port", port);
    }
}

/// Runs `call`, the gate's work for `op` on `queue`, inside its span, then
/// records its outcome on the span and in the metrics. `count` is the
/// number of messages or receipts of a batch call.
///
/// With no subscriber wanting the span and metrics not enabled
/// ([`enable_metrics`](super::enable_metrics)), each poll is `call`'s poll
/// after one interest check and one atomic load at the first. A call whose
/// future is dropped before it ends records no metric; its span gets
/// `error.type = "cancelled"`.
///
/// A hand-written future rather than an `async fn`: an `async fn` taking
/// `call` by value holds it twice (as its argument and as the future it
/// awaits), which doubled the size of every gate future.
pub(crate) fn observe<'a, P, F>(
    service: &'a P,
    op: Op,
    queue: &'a str,
    count: Option<usize>,
    call: F,
) -> Observe<'a, P, F> {
    Observe {
        call: Some(call),
        service,
        op,
        queue,
        count,
        state: State::Unpolled,
    }
}

/// Where an [`Observe`] is.
enum State {
    /// Not polled yet: whether to observe is decided at the first poll.
    Unpolled,
    /// Nothing to record: polls are `call`'s own.
    Plain,
    /// Observed: the call's span (maybe disabled, with metrics on), whether
    /// metrics are recorded, and when the call started.
    Observed {
        span: Span,
        metered: bool,
        started: Instant,
    },
    /// Finished and recorded.
    Done,
}

pin_project_lite::pin_project! {
    /// The future of [`observe`].
    ///
    /// `call` is entered in its span around each poll and dropped inside it
    /// too, as `tracing::Instrumented` does: whatever the call's drop does
    /// (a permit handed back, a log line) belongs to its span.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Observe<'a, P, F> {
        // `None` once dropped in its span (finished or cancelled).
        #[pin]
        call: Option<F>,
        service: &'a P,
        op: Op,
        queue: &'a str,
        count: Option<usize>,
        state: State,
    }

    impl<P, F> PinnedDrop for Observe<'_, P, F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if let State::Observed { span, .. } = &*this.state {
                // Dropped before it finished: cancelled.
                let _entered = span.enter();
                this.call.set(None);
                if !span.is_disabled() {
                    span.record("error.type", "cancelled");
                }
            }
        }
    }
}

impl<P, T, F> Future for Observe<'_, P, F>
where
    P: Provide,
    T: Observed,
    F: Future<Output = Result<T, MessagingError>>,
{
    type Output = Result<T, MessagingError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let State::Unpolled = this.state {
            let metered = meter::enabled();
            let span = start(*this.op);
            if span.is_disabled() && !metered {
                // Nothing to record: the call as it would be without telemetry.
                *this.state = State::Plain;
            } else {
                // A name the gate refuses may be anything (a secret pasted
                // by mistake, a megabyte): it is recorded empty, never as a
                // span field or a label.
                *this.queue = recordable(this.queue);
                if !span.is_disabled() {
                    record_start(&span, *this.service, *this.op, this.queue, *this.count);
                }
                *this.state = State::Observed {
                    span,
                    metered,
                    started: Instant::now(),
                };
            }
        }
        let result = match &*this.state {
            State::Plain => {
                let call = this.call.as_pin_mut().expect("polled after completion");
                return call.poll(cx);
            }
            State::Observed { span, .. } => {
                let _entered = span.enter();
                let call = this.call.as_mut().as_pin_mut();
                let result = ready!(call.expect("polled after completion").poll(cx));
                this.call.set(None);
                result
            }
            State::Unpolled | State::Done => panic!("`Observe` polled after completion"),
        };
        let State::Observed {
            span,
            metered,
            started,
        } = std::mem::replace(this.state, State::Done)
        else {
            unreachable!("observed above")
        };
        let elapsed = started.elapsed();
        if !span.is_disabled() {
            match &result {
                Ok(value) => value.on_span(&span),
                Err(error) => {
                    span.record("error.type", error.kind());
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
        if metered {
            let system = Provide::provider(*this.service).tag();
            // A queue that does not exist is as unbounded as an invalid
            // name (any string a caller tries): no label of its own.
            let queue = match &result {
                Err(
                    MessagingError::QueueNotFound { .. } | MessagingError::InvalidQueueName { .. },
                ) => "",
                _ => *this.queue,
            };
            meter::finish(system, *this.op, queue, *this.count, elapsed, &result);
        }
        Poll::Ready(result)
    }
}

/// `queue` if it is a valid name, else `""`.
fn recordable(queue: &str) -> &str {
    if crate::queue_name::QueueName::new(queue).is_ok() {
        queue
    } else {
        ""
    }
}

/// What a call's successful output adds to its span and metrics.
pub(crate) trait Observed {
    /// Records what the output says on the call's (enabled) span.
    fn on_span(&self, _span: &Span) {}

    /// Messages handed to the caller (a receive).
    fn consumed(&self) -> Option<usize> {
        None
    }

    /// Per-receipt outcomes (`delete_messages`).
    fn outcomes(&self) -> Option<&[Result<(), MessagingError>]> {
        None
    }
}

impl Observed for () {}
impl Observed for bool {}
impl Observed for u64 {}
impl Observed for QueueStats {}
impl Observed for Vec<MessageId> {}

impl Observed for MessageId {
    fn on_span(&self, span: &Span) {
        span.record("messaging.message.id", self.as_str());
    }
}

impl<T> Observed for Vec<QueuedMessage<T>> {
    fn on_span(&self, span: &Span) {
        span.record("messaging.batch.message_count", self.len() as u64);
    }

    fn consumed(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl Observed for Vec<Result<(), MessagingError>> {
    fn outcomes(&self) -> Option<&[Result<(), MessagingError>]> {
        Some(self)
    }
}

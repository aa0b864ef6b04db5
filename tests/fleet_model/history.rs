//! What the fleet did: every call with its start, end and outcome, and every
//! delivery a receive returned. Times are offsets from the run's start.

use std::time::Duration;

use tasker_messaging::{MessageId, MessagingError};
use uuid::Uuid;

/// When a call ran: from just before it was made to just after it returned
/// (or was dropped).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub start: Duration,
    pub end: Duration,
}

/// How long after an uncertain call ended its effect may still land.
pub const LANDS_LATE: Duration = Duration::from_secs(2);

/// What a call did, as far as the caller can know.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It returned `Ok`: it happened.
    Ok,
    /// An error that says it did not happen (`LeaseExpired`, `QueueNotFound`, ...).
    Refused(String),
    /// Dropped mid-call, or an error that cannot say (a connection lost):
    /// it may or may not have happened.
    Uncertain(String),
}

impl Outcome {
    /// The outcome of a call that returned, or `None` when it was dropped.
    pub fn of<T>(result: &Option<Result<T, MessagingError>>) -> Self {
        match result {
            None => Self::Uncertain("cancelled".into()),
            Some(Ok(_)) => Self::Ok,
            Some(Err(e)) => Self::of_error(e),
        }
    }

    /// An error's meaning for the model.
    pub fn of_error(e: &MessagingError) -> Self {
        match e {
            MessagingError::LeaseExpired { .. }
            | MessagingError::InvalidReceipt { .. }
            | MessagingError::QueueNotFound { .. }
            | MessagingError::InvalidQueueName { .. }
            | MessagingError::InvalidArgument(_)
            | MessagingError::MessageTooLarge { .. } => Self::Refused(short(e)),
            other => Self::Uncertain(short(other)),
        }
    }

    /// It may have happened (returned `Ok`, or cannot say).
    pub fn maybe(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }

    /// Until when the call may take effect: a call dropped or cut off after
    /// its request left may still run on the server after its span ended
    /// (a `DELETE` the caller stopped waiting for still commits).
    pub fn lands_by(&self, span: Span) -> Duration {
        match self {
            Self::Uncertain(_) => span.end + LANDS_LATE,
            _ => span.end,
        }
    }

    pub fn is_lease_refusal(&self) -> bool {
        matches!(self, Self::Refused(e) if e.starts_with("LeaseExpired") || e.starts_with("InvalidReceipt"))
    }
}

fn short(e: &MessagingError) -> String {
    let variant = format!("{e:?}");
    let name: String = variant
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    format!("{name}: {e}")
}

/// What a settle call did to a lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    Delete,
    /// `change_message_visibility` with zero.
    Release,
    /// `change_message_visibility` with a lease at least as long as the first.
    Extend,
}

/// One call the fleet made.
#[derive(Debug, Clone)]
pub enum Event {
    Send {
        backend: usize,
        queue: usize,
        ids: Vec<Uuid>,
        span: Span,
        outcome: Outcome,
    },
    /// One receipt of a `delete_message`, `delete_messages` or
    /// `change_message_visibility` call (a batch gives one event per receipt).
    Settle {
        backend: usize,
        /// The queue the call named (not always the lease's).
        queue: usize,
        kind: Settle,
        lease: usize,
        span: Span,
        outcome: Outcome,
    },
    Purge {
        queue: usize,
        span: Span,
        outcome: Outcome,
    },
    /// A receive that did not return `Ok`: it may have leased (and counted)
    /// messages no caller saw (C13).
    LostReceive { queue: usize, span: Span },
    DeleteQueue {
        /// The process that deleted it.
        backend: usize,
        queue: usize,
        span: Span,
        outcome: Outcome,
    },
}

/// One message a receive returned: a lease, named by its index.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The backend that received it (`usize::MAX`: the final drain).
    pub backend: usize,
    pub queue: usize,
    pub payload: Uuid,
    pub message_id: MessageId,
    pub receive_count: u32,
    /// The receive call's span: the lease began somewhere inside it.
    pub span: Span,
    pub lease: Duration,
    /// Returned by the final drain, after every lease had ended.
    pub drain: bool,
}

impl Delivery {
    /// The physical message: a payload and the id the queue gave it.
    pub fn key(&self) -> (Uuid, MessageId) {
        (self.payload, self.message_id.clone())
    }
}

/// The whole run, for the checker.
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    pub deliveries: Vec<Delivery>,
    /// Calls that did not return in time: when they started, and what.
    pub hung: Vec<(Duration, String)>,
    /// Every hand-out adds exactly one to `receive_count`
    /// (`Capabilities::exact_receive_count`).
    pub exact_receive_count: bool,
}

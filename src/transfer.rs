//! Moving messages between queues, possibly on different providers: the one
//! primitive behind dead-letter redrive and `tasker-messaging migrate`.
//!
//! Each message is sent to the destination, and deleted from the source only
//! once the send returned (the message is durable there). A failure between
//! the two leaves the message in both places: a duplicate, never a loss.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    queue_name::QueueName, service::provide, MessageBackend, MessagingError, MessagingService,
    QueuedMessage, ReceiptHandle, SendOptions,
};

/// Messages taken per round: one receive, one `send_batch`, one `delete_messages`.
const MOVE_BATCH: usize = 100;
/// The lease on a round's messages: long enough for its send and deletes.
const MOVE_LEASE: Duration = Duration::from_secs(60);

/// A message body of any type, kept as the JSON text it was sent as: what
/// [`move_messages`] carries, and what `tasker-messaging peek` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawMessage(Box<RawValue>);

impl RawMessage {
    /// The body's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl RawMessage {
    /// The same JSON value in its compact text (see `compact_json`): what a
    /// move sends, so that a body is measured about the way it was accepted.
    fn compacted(&self) -> RawMessage {
        RawValue::from_string(crate::compact_json::compact(self.json()))
            .map(RawMessage)
            .unwrap_or_else(|_| self.clone())
    }
}

/// What a move did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MoveReport {
    /// Sent to the destination, then deleted from the source.
    pub moved: u64,
    /// Sent to the destination, but the delete from the source failed (its
    /// lease had ended, or the source did not answer): the message may now
    /// be in both queues. Never lost; consumers see a duplicate at worst.
    pub duplicated: u64,
    /// Refused by the destination on their own (too large there, or not
    /// acceptable): left in the source, released when the move ends, and
    /// never in the way of the messages behind them.
    pub refused: u64,
}

impl MoveReport {
    /// Messages now in the destination: moved plus duplicated.
    pub fn sent(&self) -> u64 {
        self.moved + self.duplicated
    }
}

/// A move that stopped on an error, with what it had done before.
#[derive(Debug)]
pub struct MoveError {
    /// What was moved before the error.
    pub done: MoveReport,
    /// The error. Messages of the round that failed were released back to
    /// the source (or come back when their lease ends).
    pub error: MessagingError,
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (after moving {}, {} of them possibly duplicated)",
            self.error,
            self.done.sent(),
            self.done.duplicated
        )
    }
}

impl std::error::Error for MoveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Moves up to `limit` ready messages from `from_queue` on `from` to
/// `to_queue` on `to`, in rounds of 100, each in the order the source hands
/// its messages out (FIFO, but a message RabbitMQ requeued comes later than
/// its neighbours): receive (a 60 s lease),
/// send the round with `send_batch` and wait until it is durable, then delete
/// the round from the source with one `delete_messages`. Stops when `limit` is reached or the source
/// has nothing ready (leased messages stay where they are).
///
/// At-least-once: a message is deleted from the source only after the
/// destination confirmed it, so a crash or error mid-way duplicates at
/// worst. A moved message gets a new id, `enqueued_at` and `receive_count`
/// (1 at its next receive). A body is sent in its compact JSON text, so a
/// PGMQ body (jsonb text, longer) is measured about as it was accepted (C7).
/// A message taken but not moved goes back uncounted (C18).
/// A body that is not JSON is never handed to the move: the receive
/// dead-letters it (or, in a dead-letter queue, leaves it leased).
pub async fn move_messages(
    from: &MessageBackend,
    from_queue: &str,
    to: &MessageBackend,
    to_queue: &str,
    limit: usize,
) -> Result<MoveReport, MoveError> {
    move_messages_with_progress(from, from_queue, to, to_queue, limit, |_| {}).await
}

/// [`move_messages`], calling `progress` with the running totals after
/// each round.
pub async fn move_messages_with_progress(
    from: &MessageBackend,
    from_queue: &str,
    to: &MessageBackend,
    to_queue: &str,
    limit: usize,
    mut progress: impl FnMut(&MoveReport),
) -> Result<MoveReport, MoveError> {
    let mut done = MoveReport::default();
    // Refused messages stay leased until the move ends, so that later rounds
    // do not take them again; then they are released where they were.
    let mut refused: Vec<QueuedMessage<RawMessage>> = Vec::new();
    let result = move_rounds(
        from,
        from_queue,
        to,
        to_queue,
        limit,
        &mut done,
        &mut refused,
        &mut progress,
    )
    .await;
    release(from, from_queue, &refused).await;
    done.refused = refused.len() as u64;
    match result {
        Ok(()) => Ok(done),
        Err(error) => Err(MoveError { done, error }),
    }
}

/// Whether the destination refused a message for what it is, rather than
/// failing: the rest of a round can still move.
fn is_refusal(error: &MessagingError) -> bool {
    matches!(
        error,
        MessagingError::MessageTooLarge { .. } | MessagingError::InvalidArgument(_)
    )
}

/// The rounds of [`move_messages_with_progress`]; refused messages are
/// added to `refused`, still leased.
#[allow(clippy::too_many_arguments)]
async fn move_rounds(
    from: &MessageBackend,
    from_queue: &str,
    to: &MessageBackend,
    to_queue: &str,
    limit: usize,
    done: &mut MoveReport,
    refused: &mut Vec<QueuedMessage<RawMessage>>,
    progress: &mut impl FnMut(&MoveReport),
) -> Result<(), MessagingError> {
    while (done.sent() as usize) < limit {
        let want = MOVE_BATCH.min(limit - done.sent() as usize);
        let mut round: Vec<QueuedMessage<RawMessage>> =
            from.receive_messages(from_queue, want, MOVE_LEASE).await?;
        if round.is_empty() {
            break;
        }
        let bodies: Vec<RawMessage> = round.iter().map(|m| m.message.compacted()).collect();
        let mut failed = None;
        match send_round(to, to_queue, &round, &bodies).await {
            Ok(()) => {}
            Err(error) if is_refusal(&error) => {
                // One message the destination refuses must not hold back the
                // rest: the round goes one by one.
                (round, failed) =
                    send_one_by_one(from, from_queue, to, to_queue, round, bodies, refused).await;
            }
            Err(error) => {
                release(from, from_queue, &round).await;
                return Err(error);
            }
        }
        settle(from, from_queue, &round, done).await;
        progress(done);
        if let Some(error) = failed {
            return Err(error);
        }
    }
    Ok(())
}

/// Sends a round in order, its headers with it (C38): one `send_batch` when
/// no message has headers (the common case), else one per run of messages
/// with the same headers. A failure after some runs were sent makes
/// duplicates of those when the round is sent again, never losses.
async fn send_round(
    to: &MessageBackend,
    to_queue: &str,
    round: &[QueuedMessage<RawMessage>],
    bodies: &[RawMessage],
) -> Result<(), MessagingError> {
    if round.iter().all(|m| m.headers().is_empty()) {
        return to.send_batch(to_queue, bodies).await.map(drop);
    }
    let mut start = 0;
    while start < round.len() {
        let headers = round[start].headers();
        let end = round[start..]
            .iter()
            .position(|m| m.headers() != headers)
            .map_or(round.len(), |n| start + n);
        let options = SendOptions::new().headers(headers.clone());
        to.send_batch_with(to_queue, &bodies[start..end], &options)
            .await?;
        start = end;
    }
    Ok(())
}

/// Deletes a sent round from the source with one `delete_messages` (one
/// statement on PGMQ), counting each message moved or duplicated.
async fn settle(
    from: &MessageBackend,
    from_queue: &str,
    round: &[QueuedMessage<RawMessage>],
    done: &mut MoveReport,
) {
    if round.is_empty() {
        return;
    }
    let receipts: Vec<ReceiptHandle> = round.iter().map(|m| m.receipt().clone()).collect();
    let outcomes = match from.delete_messages(from_queue, &receipts).await {
        Ok(outcomes) => outcomes,
        Err(error) => {
            tracing::warn!(queue = from_queue, %error,
                    "moved messages not deleted from the source: they may be delivered twice");
            done.duplicated += round.len() as u64;
            return;
        }
    };
    for outcome in outcomes {
        match outcome {
            Ok(()) => done.moved += 1,
            Err(error) => {
                tracing::warn!(queue = from_queue, %error,
                        "moved message not deleted from the source: it may be delivered twice");
                done.duplicated += 1;
            }
        }
    }
}

/// Sends a round message by message: returns those sent, puts those the
/// destination refuses in `refused`, and on another error releases what is
/// left of the round and returns the error too.
async fn send_one_by_one(
    from: &MessageBackend,
    from_queue: &str,
    to: &MessageBackend,
    to_queue: &str,
    round: Vec<QueuedMessage<RawMessage>>,
    bodies: Vec<RawMessage>,
    refused: &mut Vec<QueuedMessage<RawMessage>>,
) -> (Vec<QueuedMessage<RawMessage>>, Option<MessagingError>) {
    let mut sent = Vec::with_capacity(round.len());
    let mut rest = round.into_iter().zip(bodies);
    while let Some((message, body)) = rest.next() {
        let options = SendOptions::new().headers(message.headers().clone());
        match to.send_message_with(to_queue, &body, &options).await {
            Ok(_) => sent.push(message),
            Err(error) if is_refusal(&error) => {
                tracing::warn!(queue = from_queue, %error,
                    "the destination refuses a message; it stays in the source");
                refused.push(message);
            }
            Err(error) => {
                let left: Vec<_> = std::iter::once(message)
                    .chain(rest.map(|(message, _)| message))
                    .collect();
                release(from, from_queue, &left).await;
                return (sent, Some(error));
            }
        }
    }
    (sent, None)
}

/// Gives a round that could not be sent back to the source at once; what
/// cannot be released comes back when its lease ends.
async fn release(from: &MessageBackend, queue: &str, round: &[QueuedMessage<RawMessage>]) {
    let Ok(name) = QueueName::new(queue) else {
        return;
    };
    for message in round {
        // The move's read reached no worker: it must not count toward
        // dead-lettering.
        if let Err(error) =
            provide::Provide::put_back_uncounted(from, name, message.receipt()).await
        {
            tracing::warn!(queue, %error, "could not release a message; it returns when its lease ends");
        }
    }
}

/// Moves up to `limit` messages from `queue`'s dead-letter queue back into
/// `queue`, on the same backend (see [`move_messages`]).
pub async fn redrive_dead_letters(
    backend: &MessageBackend,
    queue: &str,
    limit: usize,
) -> Result<MoveReport, MoveError> {
    let dlq = format!(
        "{queue}{}",
        backend.queues_config().dead_letter_queue_suffix
    );
    move_messages(backend, &dlq, backend, queue, limit).await
}

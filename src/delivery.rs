//! Turning one delivery into what a receive returns, written once: decode,
//! the dead-letter verdict, the receipt and the metadata. Providers only say
//! where a delivery came from and act on the outcome.

use chrono::{DateTime, Utc};

use crate::{
    codec::{self, Decoded},
    dead_letter::{DeadLetterPolicy, DeadLetterReason, Verdict},
    receipt::Receipt,
    MessageId, Provider, QueueMessage, QueuedMessage, QueuedMessageMetadata,
};

/// One delivery, as a provider read it.
pub(crate) struct Delivery<'a> {
    pub queue: &'a str,
    pub provider: Provider,
    /// The lease this delivery holds.
    pub receipt: Receipt,
    pub message_id: String,
    pub enqueued_at: DateTime<Utc>,
    /// Receives of the message, this one included.
    pub receive_count: u32,
    pub lease_ends: DateTime<Utc>,
    /// The lease this receive takes.
    pub lease: std::time::Duration,
    /// How long ago a receiver that could not read it first met it (zero if
    /// none has).
    pub other_shape_for: std::time::Duration,
    /// The body; one that is not UTF-8 is passed as `""` (not JSON).
    pub body: &'a str,
    /// The caller's headers it carries (the library's own left out).
    pub headers: crate::Headers,
}

/// What the receive does with it.
pub(crate) enum Outcome<T> {
    /// Hand it to the caller.
    Deliver(QueuedMessage<T>),
    /// Make it ready again at once (another shape), taking this read back
    /// out of its receive count: it was no hand-out.
    Release,
    /// Move it to the dead-letter queue.
    DeadLetter(DeadLetterReason),
    /// Keep it leased and out of the caller's hands (logged here).
    Hold,
}

/// Decides what a receive does with `delivery` under `policy`.
pub(crate) fn assemble<T: QueueMessage>(
    policy: &DeadLetterPolicy,
    delivery: Delivery<'_>,
) -> Outcome<T> {
    let decoded = codec::decode_as::<T>(delivery.body);
    let verdict = policy.verdict(
        delivery.queue,
        delivery.receive_count,
        decoded.decoding(),
        delivery.other_shape_for,
        delivery.lease,
    );
    match (verdict, decoded) {
        (Verdict::Deliver, Decoded::Message(message)) => Outcome::Deliver(QueuedMessage {
            metadata: QueuedMessageMetadata {
                receipt_handle: delivery.receipt.encode(delivery.provider, delivery.queue),
                message_id: MessageId::new(delivery.message_id),
                enqueued_at: delivery.enqueued_at,
                receive_count: delivery.receive_count,
                visibility_timeout_expires: delivery.lease_ends,
                headers: delivery.headers,
            },
            message,
        }),
        // Counted by the provider once the release or the move is done
        // (committed, confirmed), not here: a receive that fails after
        // deciding would count a message it decides again next time.
        (Verdict::Release, _) => Outcome::Release,
        (Verdict::DeadLetter(reason), _) => Outcome::DeadLetter(reason),
        // The policy delivers only what decoded; anything else is held.
        (Verdict::Hold | Verdict::Deliver, _) => {
            policy.log_held(delivery.queue, &delivery.message_id);
            Outcome::Hold
        }
    }
}

/// When a lease of `secs` seconds taken now ends.
pub(crate) fn lease_ends(secs: u64) -> DateTime<Utc> {
    let lease = i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .unwrap_or(chrono::TimeDelta::MAX);
    Utc::now()
        .checked_add_signed(lease)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

//! The dead-letter policy, written once: when a delivery goes to the
//! dead-letter queue instead of the caller, and what gets logged.

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterReason {
    /// Received `max_receive_count` times without being deleted.
    MaxReceives,
    /// The body is not JSON, or no receiver read it within its grace
    /// ([`DeadLetterPolicy::other_shape_grace`]).
    Poison,
}

impl DeadLetterReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MaxReceives => "max_receive_count_exceeded",
            Self::Poison => "undecodable_body",
        }
    }
}

/// How a delivery's body read as the type the receive asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoding {
    Ok,
    /// JSON of another shape: another receiver may read it.
    OtherShape,
    NotJson,
}

/// What a receive does with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the caller.
    Deliver,
    /// Make it ready again at once for other receivers. Not a hand-out: the
    /// provider takes this read back out of the receive count.
    Release,
    /// Move it to the dead-letter queue, in the same step as the read.
    DeadLetter(DeadLetterReason),
    /// Keep it leased and out of the caller's hands (poison in a dead-letter queue).
    Hold,
}

/// The queue settings that decide dead-lettering.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterPolicy {
    pub max_receive_count: u32,
    pub suffix: String,
}

impl DeadLetterPolicy {
    /// The dead-letter queue of `queue`, or `None` when `queue` is itself one
    /// (a dead-letter queue has no dead-letter queue of its own).
    pub(crate) fn dead_letter_queue(&self, queue: &str) -> Option<String> {
        (!queue.ends_with(&self.suffix)).then(|| format!("{queue}{}", self.suffix))
    }

    /// How long a message of another shape stays on its queue after a
    /// receiver that cannot read it first met it, before such a receiver
    /// moves it: `max_receive_count` leases of that receiver (`lease`), the
    /// time a readable message that is never deleted takes to be dead-lettered.
    pub(crate) fn other_shape_grace(&self, lease: std::time::Duration) -> std::time::Duration {
        lease.saturating_mul(self.max_receive_count)
    }

    /// What to do with a delivery of a message from `queue` that has now been
    /// handed out `receive_count` times (this delivery included).
    ///
    /// A body of another shape is released for other receivers (in a rolling
    /// deploy, a newer worker may read what an older one cannot), and that
    /// read is no hand-out: it does not count towards `max_receive_count`.
    /// It moves once `other_shape_for` (the time since a receiver that cannot
    /// read it first met it) has reached [`other_shape_grace`](Self::other_shape_grace)
    /// of this receive's `lease`. A body that is not JSON moves at once. A
    /// dead-letter queue has no dead-letter queue: its messages are never
    /// moved, and one that is not JSON is held (left leased) for an operator.
    pub(crate) fn verdict(
        &self,
        queue: &str,
        receive_count: u32,
        decoding: Decoding,
        other_shape_for: std::time::Duration,
        lease: std::time::Duration,
    ) -> Verdict {
        let has_dlq = self.dead_letter_queue(queue).is_some();
        match decoding {
            Decoding::Ok if has_dlq && receive_count > self.max_receive_count => {
                Verdict::DeadLetter(DeadLetterReason::MaxReceives)
            }
            Decoding::Ok => Verdict::Deliver,
            Decoding::OtherShape if has_dlq && other_shape_for >= self.other_shape_grace(lease) => {
                Verdict::DeadLetter(DeadLetterReason::Poison)
            }
            Decoding::OtherShape => Verdict::Release,
            Decoding::NotJson if has_dlq => Verdict::DeadLetter(DeadLetterReason::Poison),
            Decoding::NotJson => Verdict::Hold,
        }
    }

    /// Logs a dead-letter move; every provider calls this once per message moved.
    pub(crate) fn log_move(&self, queue: &str, message_id: &str, reason: DeadLetterReason) {
        tracing::warn!(
            queue,
            message_id,
            reason = reason.as_str(),
            "moved message to dead-letter queue"
        );
    }

    /// Logs a held message (see [`Verdict::Hold`]).
    pub(crate) fn log_held(&self, queue: &str, message_id: &str) {
        tracing::warn!(
            queue,
            message_id,
            reason = DeadLetterReason::Poison.as_str(),
            "undecodable message in a dead-letter queue; left leased for an operator"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> DeadLetterPolicy {
        DeadLetterPolicy {
            max_receive_count: 3,
            suffix: "_dlq".into(),
        }
    }

    #[test]
    fn dead_letter_queues_have_none_of_their_own() {
        assert_eq!(
            policy().dead_letter_queue("orders").as_deref(),
            Some("orders_dlq")
        );
        assert_eq!(policy().dead_letter_queue("orders_dlq"), None);
    }

    #[test]
    fn verdicts() {
        let p = policy();
        let (zero, lease) = (Duration::ZERO, Duration::from_secs(30));
        let v = |queue, count, decoding, since| p.verdict(queue, count, decoding, since, lease);
        assert_eq!(v("q", 3, Decoding::Ok, zero), Verdict::Deliver);
        assert_eq!(
            v("q", 4, Decoding::Ok, zero),
            Verdict::DeadLetter(DeadLetterReason::MaxReceives)
        );
        // Another shape: released however often it was met, until the grace
        // of max_receive_count leases has passed since it was first met.
        assert_eq!(v("q", 1, Decoding::OtherShape, zero), Verdict::Release);
        assert_eq!(v("q", 9, Decoding::OtherShape, zero), Verdict::Release);
        let grace = Duration::from_secs(90);
        assert_eq!(p.other_shape_grace(lease), grace);
        assert_eq!(
            v(
                "q",
                1,
                Decoding::OtherShape,
                grace - Duration::from_millis(1)
            ),
            Verdict::Release
        );
        assert_eq!(
            v("q", 1, Decoding::OtherShape, grace),
            Verdict::DeadLetter(DeadLetterReason::Poison)
        );
        assert_eq!(
            v("q", 1, Decoding::NotJson, zero),
            Verdict::DeadLetter(DeadLetterReason::Poison)
        );
        assert_eq!(v("q_dlq", 9, Decoding::Ok, zero), Verdict::Deliver);
        assert_eq!(v("q_dlq", 9, Decoding::OtherShape, grace), Verdict::Release);
        assert_eq!(v("q_dlq", 1, Decoding::NotJson, zero), Verdict::Hold);
    }
}

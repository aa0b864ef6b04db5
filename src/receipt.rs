//! The receipt format shared by every provider:
//! `{provider}:{queue}:{scope}:{id}:{lease}`.
//!
//! `id` names the message (or delivery) and `lease` the lease on it: PGMQ's
//! `read_ct`, the in-memory receive count, or RabbitMQ's channel epoch. A
//! receipt therefore identifies one lease, not just one message.
//!
//! `scope` names what `id` and `lease` are counted in, since those restart:
//! the queue's incarnation on PGMQ (the queue table's OID) and in memory (an
//! id drawn when the queue is created), so a receipt from before the queue
//! was deleted and created again names no lease of the new one; on RabbitMQ
//! the backend that received the delivery (an id drawn at connect), since
//! delivery tags and epochs restart in every process and only the receiving
//! connection can settle a delivery.

use crate::{MessagingError, Provider, ReceiptHandle};

/// A parsed receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// What `id` and `lease` are counted in (see the module doc).
    pub scope: u64,
    pub id: u64,
    pub lease: u64,
}

/// The tag of the provider that issued `handle` (its first field), unchecked:
/// a migrating backend routes a receipt to the side that issued it by this.
pub(crate) fn issuer(handle: &ReceiptHandle) -> &str {
    handle.as_str().split(':').next().unwrap_or_default()
}

/// A fresh random scope: for a queue incarnation or a backend that
/// numbers leases of its own.
///
/// Drawn from the OS, not a thread-local generator: a forked child inherits
/// the parent's buffered random block, so every worker forked from one parent
/// (Puma, Unicorn) would draw the same scope and accept its siblings' receipts.
pub(crate) fn new_scope() -> u64 {
    rand::RngCore::next_u64(&mut rand::rngs::OsRng)
}

/// A number as [`Receipt::encode`] writes it, and only so: `+1` and `01`
/// name no receipt this crate issued (C15), though `u64::from_str` takes them.
fn canonical(text: &str) -> Option<u64> {
    let number: u64 = text.parse().ok()?;
    let plain = text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    plain.then_some(number)
}

impl Receipt {
    pub(crate) fn encode(self, provider: Provider, queue: &str) -> ReceiptHandle {
        use std::fmt::Write;
        // Sized up front: `format!` reallocates on this hot path (one receipt per message).
        let tag = provider.tag();
        let mut text = String::with_capacity(tag.len() + queue.len() + 3 * 21 + 4);
        let _ = write!(
            text,
            "{tag}:{queue}:{}:{}:{}",
            self.scope, self.id, self.lease
        );
        ReceiptHandle::from_string(text)
    }

    /// Parses a receipt that must belong to `provider` and `queue`.
    pub(crate) fn decode(
        handle: &ReceiptHandle,
        provider: Provider,
        queue: &str,
    ) -> Result<Self, MessagingError> {
        let invalid = |reason| MessagingError::InvalidReceipt {
            receipt: handle.as_str().chars().take(128).collect(),
            reason,
        };
        let mut parts = handle.as_str().split(':');
        let (Some(tag), Some(q), Some(scope), Some(id), Some(lease), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid("not a tasker-messaging receipt"));
        };
        if tag != provider.tag() {
            return Err(invalid("issued by another provider"));
        }
        if q != queue {
            return Err(invalid("issued for another queue"));
        }
        match (canonical(scope), canonical(id), canonical(lease)) {
            (Some(scope), Some(id), Some(lease)) => Ok(Self { scope, id, lease }),
            _ => Err(invalid("malformed receipt numbers")),
        }
    }

    /// [`decode`](Self::decode) for each receipt of a batch, in order. A
    /// batch with no receipt that decodes needs no I/O: every outcome is
    /// already known (and an empty batch is the empty list).
    pub(crate) fn decode_all(
        handles: &[ReceiptHandle],
        provider: Provider,
        queue: &str,
    ) -> Vec<Result<Self, MessagingError>> {
        handles
            .iter()
            .map(|handle| Self::decode(handle, provider, queue))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Receipt = Receipt {
        scope: 16_384,
        id: 7,
        lease: 2,
    };

    #[test]
    fn round_trips() {
        let handle = R.encode(Provider::Pgmq, "orders");
        assert_eq!(handle.as_str(), "pgmq:orders:16384:7:2");
        assert_eq!(
            Receipt::decode(&handle, Provider::Pgmq, "orders").unwrap(),
            R
        );
        let max = Receipt {
            scope: u64::MAX,
            id: u64::MAX,
            lease: u64::MAX,
        };
        let handle = max.encode(Provider::RabbitMq, "q");
        assert_eq!(
            Receipt::decode(&handle, Provider::RabbitMq, "q").unwrap(),
            max
        );
    }

    #[test]
    fn scopes_are_drawn_afresh() {
        assert_ne!(new_scope(), new_scope());
    }

    #[test]
    fn rejects_foreign_and_malformed_receipts() {
        let handle = R.encode(Provider::Pgmq, "orders");
        let cases = [
            (handle.clone(), Provider::InMemory, "orders"),
            (handle, Provider::Pgmq, "other"),
            ("".parse().unwrap(), Provider::Pgmq, "orders"),
            // The format before scopes: four fields.
            ("pgmq:orders:1:2".parse().unwrap(), Provider::Pgmq, "orders"),
            (
                "pgmq:orders:1:x:1".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:x:1:1".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:1:1:2:3".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:1:-1:2".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            // Numbers written otherwise than encode writes them.
            (
                "pgmq:orders:+1:1:1".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:1:01:1".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:1:1: 1".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
        ];
        for (handle, provider, queue) in cases {
            assert!(
                matches!(
                    Receipt::decode(&handle, provider, queue),
                    Err(MessagingError::InvalidReceipt { .. })
                ),
                "{handle} accepted for {provider}/{queue}"
            );
        }
    }
}

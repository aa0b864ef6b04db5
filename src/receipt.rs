//! The receipt format shared by every provider: `{provider}:{queue}:{id}:{lease}`.
//!
//! `id` names the message (or delivery) and `lease` the lease on it: PGMQ's
//! `read_ct`, the in-memory receive count, or RabbitMQ's connection generation.
//! A receipt therefore identifies one lease, not just one message.

use crate::{MessagingError, Provider, ReceiptHandle};

/// A parsed receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub id: u64,
    pub lease: u64,
}

/// The tag of the provider that issued `handle` (its first field), unchecked:
/// a migrating backend routes a receipt to the side that issued it by this.
pub(crate) fn issuer(handle: &ReceiptHandle) -> &str {
    handle.as_str().split(':').next().unwrap_or_default()
}

impl Receipt {
    pub(crate) fn encode(self, provider: Provider, queue: &str) -> ReceiptHandle {
        use std::fmt::Write;
        // Sized up front: `format!` reallocates on this hot path (one receipt per message).
        let tag = provider.tag();
        let mut text = String::with_capacity(tag.len() + queue.len() + 2 * 21 + 3);
        let _ = write!(text, "{tag}:{queue}:{}:{}", self.id, self.lease);
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
        let (Some(tag), Some(q), Some(id), Some(lease), None) = (
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
        match (id.parse(), lease.parse()) {
            (Ok(id), Ok(lease)) => Ok(Self { id, lease }),
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

    #[test]
    fn round_trips() {
        let r = Receipt { id: 7, lease: 2 };
        let handle = r.encode(Provider::Pgmq, "orders");
        assert_eq!(
            Receipt::decode(&handle, Provider::Pgmq, "orders").unwrap(),
            r
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_receipts() {
        let handle = Receipt { id: 7, lease: 2 }.encode(Provider::Pgmq, "orders");
        let cases = [
            (handle.clone(), Provider::InMemory, "orders"),
            (handle, Provider::Pgmq, "other"),
            ("".parse().unwrap(), Provider::Pgmq, "orders"),
            ("pgmq:orders:x:1".parse().unwrap(), Provider::Pgmq, "orders"),
            (
                "pgmq:orders:1:2:3".parse().unwrap(),
                Provider::Pgmq,
                "orders",
            ),
            (
                "pgmq:orders:-1:2".parse().unwrap(),
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

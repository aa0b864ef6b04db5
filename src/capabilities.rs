//! What a provider guarantees beyond the contract every provider keeps, as
//! values a caller (and the conformance suite) can read instead of prose.

/// What one provider guarantees. Read it with
/// [`MessagingService::capabilities`](crate::MessagingService::capabilities).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `send_batch` stores all of its messages or none (RabbitMQ confirms
    /// each message on its own: a failed batch may have stored some).
    pub atomic_batch: bool,
    /// `QueueStats::in_flight_count` is the exact number of leased messages
    /// (otherwise it is `None`).
    pub exact_in_flight: bool,
    /// `QueueStats::oldest_message_age_seconds` is known (otherwise `None`).
    pub message_ages_known: bool,
    /// `delete_message` returns after the server confirmed the removal
    /// (RabbitMQ acknowledgements are never answered: a delete is one frame
    /// on a live channel, and a crash right after it may redeliver).
    pub broker_confirmed_delete: bool,
    /// A message whose send returned outlives this process (in-memory:
    /// nothing does).
    pub durable: bool,
    /// A receipt settles the lease it names from any process, not only the
    /// one that received it (RabbitMQ: a delivery can only be settled on the
    /// connection that received it, and elsewhere a receipt is
    /// `LeaseExpired`). In-memory: from any clone.
    pub portable_receipts: bool,
    /// `receive_count` counts hand-outs to callers and nothing else
    /// (RabbitMQ's delivery count may also count a dispatch to a consumer
    /// cancelled before it handed the message out: CONTRACT.md, C28).
    pub exact_receive_count: bool,
    /// The longest delay a send may ask for
    /// ([`SendOptions::delay`](crate::SendOptions::delay)); a longer one is
    /// `InvalidArgument` (C36). RabbitMQ: 2^20 − 1 s (about 12 days), the
    /// reach of its 20 delay tiers; PGMQ and in-memory: 2^31 − 1 s.
    pub max_delay: std::time::Duration,
    /// How finely a delay is kept: a delay is rounded up to a multiple of it,
    /// never down (C35). 1 s on PGMQ (whole-second `delay`) and RabbitMQ
    /// (whole-second tier TTLs), 1 ms in memory.
    pub delay_granularity: std::time::Duration,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

impl Capabilities {
    /// Nothing guaranteed beyond the contract (every flag `false`, no delay offered: `max_delay` zero): for a
    /// test double of [`MessagingService`](crate::MessagingService). Turn
    /// on what the double offers with the `with_*` methods or the fields:
    ///
    /// ```
    /// use tasker_messaging::Capabilities;
    ///
    /// let caps = Capabilities::new().with_atomic_batch(true).with_exact_in_flight(true);
    /// assert!(caps.atomic_batch && !caps.durable);
    /// ```
    pub const fn new() -> Self {
        Self {
            atomic_batch: false,
            exact_in_flight: false,
            message_ages_known: false,
            broker_confirmed_delete: false,
            durable: false,
            portable_receipts: false,
            exact_receive_count: false,
            max_delay: std::time::Duration::ZERO,
            delay_granularity: Self::SECOND,
        }
    }

    /// Sets [`atomic_batch`](Self::atomic_batch).
    pub const fn with_atomic_batch(mut self, on: bool) -> Self {
        self.atomic_batch = on;
        self
    }

    /// Sets [`exact_in_flight`](Self::exact_in_flight).
    pub const fn with_exact_in_flight(mut self, on: bool) -> Self {
        self.exact_in_flight = on;
        self
    }

    /// Sets [`message_ages_known`](Self::message_ages_known).
    pub const fn with_message_ages_known(mut self, on: bool) -> Self {
        self.message_ages_known = on;
        self
    }

    /// Sets [`broker_confirmed_delete`](Self::broker_confirmed_delete).
    pub const fn with_broker_confirmed_delete(mut self, on: bool) -> Self {
        self.broker_confirmed_delete = on;
        self
    }

    /// Sets [`durable`](Self::durable).
    pub const fn with_durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// Sets [`portable_receipts`](Self::portable_receipts).
    pub const fn with_portable_receipts(mut self, on: bool) -> Self {
        self.portable_receipts = on;
        self
    }

    /// Sets [`exact_receive_count`](Self::exact_receive_count).
    pub const fn with_exact_receive_count(mut self, on: bool) -> Self {
        self.exact_receive_count = on;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub const fn with_max_delay(mut self, max: std::time::Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Sets [`delay_granularity`](Self::delay_granularity).
    pub const fn with_delay_granularity(mut self, granularity: std::time::Duration) -> Self {
        self.delay_granularity = granularity;
        self
    }

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
    /// PGMQ's `delay` is an `integer` of seconds.
    const LONG_DELAY: std::time::Duration = std::time::Duration::from_secs(i32::MAX as u64);
    /// The sum of RabbitMQ's 20 tiers (2^0 … 2^19 s).
    const TIER_DELAY: std::time::Duration = std::time::Duration::from_secs((1 << 20) - 1);
    /// PGMQ: one statement per batch, a transaction per delete, a table to count.
    pub(crate) const PGMQ: Self = Self {
        atomic_batch: true,
        exact_in_flight: true,
        message_ages_known: true,
        broker_confirmed_delete: true,
        durable: true,
        portable_receipts: true,
        exact_receive_count: true,
        max_delay: Self::LONG_DELAY,
        delay_granularity: Self::SECOND,
    };
    /// RabbitMQ: confirms per message, fire-and-forget acks, and a broker that
    /// does not say what consumers hold or how old a message is.
    pub(crate) const RABBITMQ: Self = Self {
        atomic_batch: false,
        exact_in_flight: false,
        message_ages_known: false,
        broker_confirmed_delete: false,
        durable: true,
        portable_receipts: false,
        exact_receive_count: false,
        max_delay: Self::TIER_DELAY,
        delay_granularity: Self::SECOND,
    };
    /// In-memory: everything under one lock, nothing on disk.
    pub(crate) const IN_MEMORY: Self = Self {
        atomic_batch: true,
        exact_in_flight: true,
        message_ages_known: true,
        broker_confirmed_delete: true,
        durable: false,
        portable_receipts: true,
        exact_receive_count: true,
        max_delay: Self::LONG_DELAY,
        delay_granularity: std::time::Duration::from_millis(1),
    };

    /// What both `self` and `other` guarantee: a migrating backend's, whose
    /// calls may reach either side.
    pub(crate) fn weakest(self, other: Self) -> Self {
        Self {
            atomic_batch: self.atomic_batch && other.atomic_batch,
            exact_in_flight: self.exact_in_flight && other.exact_in_flight,
            message_ages_known: self.message_ages_known && other.message_ages_known,
            broker_confirmed_delete: self.broker_confirmed_delete && other.broker_confirmed_delete,
            durable: self.durable && other.durable,
            portable_receipts: self.portable_receipts && other.portable_receipts,
            exact_receive_count: self.exact_receive_count && other.exact_receive_count,
            max_delay: self.max_delay.min(other.max_delay),
            delay_granularity: self.delay_granularity.max(other.delay_granularity),
        }
    }
}

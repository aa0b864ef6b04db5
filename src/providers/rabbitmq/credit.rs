//! A standing consumer's credit: how much of its window its deliveries use.
//!
//! Each delivery of the standing consumer (`pump`) carries a [`Token`] from
//! its arrival until it is settled, given back, or gone with its channel:
//! held unclaimed, then inside its lease. So the count is what the broker
//! counts against the consumer's prefetch, or briefly less: a lease ends
//! (and its token with it) just before its ack is sent.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// The deliveries of one consumer not yet settled.
#[derive(Debug, Default)]
pub(super) struct Credit(AtomicUsize);

impl Credit {
    /// Deliveries of the consumer still unsettled.
    pub(super) fn used(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One delivery's share of its consumer's window, returned when dropped.
#[derive(Debug)]
pub(super) struct Token(Arc<Credit>);

impl Token {
    /// Takes one unit of `credit`.
    pub(super) fn new(credit: &Arc<Credit>) -> Self {
        credit.0.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(credit))
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

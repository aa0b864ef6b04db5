//! Leases on one queue's deliveries, kept by the library (AMQP has none).
//!
//! A lease names the consumer channel's epoch and the delivery tag. Ending a
//! lease (delete, release, expiry) removes it from the table first and only
//! then settles the tag with the broker, so a tag is settled at most once and
//! never after the table forgot it: an unknown tag would close the channel.
//! A timer task requeues expired leases even when nobody calls the library.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use super::{channel::TrackedChannel, credit::Token};

struct Lease {
    deadline: Instant,
    /// When the broker delivered the message: its `consumer_timeout` counts from here.
    delivered_at: Instant,
    /// The standing consumer's credit the delivery uses, returned with the lease.
    _credit: Option<Token>,
}

#[derive(Default)]
struct Table {
    /// Epoch of the channel the tags belong to; 0 when there is none.
    epoch: u64,
    channel: Option<Arc<TrackedChannel>>,
    by_tag: HashMap<u64, Lease>,
    by_deadline: BTreeSet<(Instant, u64)>,
}

/// Why a lease could not be moved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ExtendError {
    /// No live lease matches (deleted, expired, or from an earlier channel).
    Dead,
    /// The broker would close the channel before the new deadline.
    TooLong,
}

/// The live leases of one queue's consumer channel.
#[derive(Default)]
pub(super) struct Leases {
    table: Mutex<Table>,
    changed: Notify,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Critical sections only move entries between maps; poisoning is harmless.
        crate::sync::lock(&self.table)
    }

    /// Starts a new channel's table: every earlier lease dies.
    pub(super) fn reset(&self, epoch: u64, channel: Arc<TrackedChannel>) {
        *self.lock() = Table {
            epoch,
            channel: Some(channel),
            ..Table::default()
        };
        self.changed.notify_one();
    }

    /// Forgets every lease (the channel is gone, its deliveries went back).
    pub(super) fn clear(&self) {
        *self.lock() = Table::default();
        self.changed.notify_one();
    }

    /// Leases delivery `tag` of channel `epoch`, delivered at `delivered_at`, until `deadline`.
    pub(super) fn grant(&self, epoch: u64, tag: u64, deadline: Instant, delivered_at: Instant) {
        self.grant_with(epoch, tag, deadline, delivered_at, None);
    }

    /// [`grant`](Self::grant) for a delivery of the standing consumer, which
    /// keeps its `credit` until the lease ends. False when `epoch` is not the
    /// live channel's: the delivery went back with its channel.
    pub(super) fn grant_with(
        &self,
        epoch: u64,
        tag: u64,
        deadline: Instant,
        delivered_at: Instant,
        credit: Option<Token>,
    ) -> bool {
        let mut table = self.lock();
        if table.epoch != epoch || epoch == 0 {
            return false;
        }
        let lease = Lease {
            deadline,
            delivered_at,
            _credit: credit,
        };
        if let Some(old) = table.by_tag.insert(tag, lease) {
            table.by_deadline.remove(&(old.deadline, tag));
        }
        table.by_deadline.insert((deadline, tag));
        Self::wake_if_first(&self.changed, table, deadline, tag);
        true
    }

    /// Wakes the timer only when `(deadline, tag)` is now the earliest
    /// deadline: for any later one the timer wakes in time anyway, and a wake
    /// per lease would cost a task switch per message.
    fn wake_if_first(changed: &Notify, table: MutexGuard<'_, Table>, deadline: Instant, tag: u64) {
        let first = table.by_deadline.first() == Some(&(deadline, tag));
        drop(table);
        if first {
            changed.notify_one();
        }
    }

    /// Live leases.
    pub(super) fn len(&self) -> usize {
        self.lock().by_tag.len()
    }

    /// Ends a live lease, returning the channel to settle its tag on.
    pub(super) fn take(&self, epoch: u64, tag: u64) -> Option<Arc<TrackedChannel>> {
        let (channel, live) = self.take_many([Some((epoch, tag))]);
        channel.filter(|_| live[0])
    }

    /// Whether every `(epoch, tag)` names a live lease.
    pub(super) fn all_live(&self, leases: impl IntoIterator<Item = (u64, u64)>) -> bool {
        let table = self.lock();
        leases.into_iter().all(|(epoch, tag)| {
            epoch != 0 && table.epoch == epoch && table.by_tag.contains_key(&tag)
        })
    }

    /// [`take`](Self::take) for many leases under one lock: which of them
    /// were live (in order; a lease named twice is live once), and the
    /// channel to settle those on.
    pub(super) fn take_many(
        &self,
        leases: impl IntoIterator<Item = Option<(u64, u64)>>,
    ) -> (Option<Arc<TrackedChannel>>, Vec<bool>) {
        let mut table = self.lock();
        let live = leases
            .into_iter()
            .map(|lease| {
                let Some((epoch, tag)) = lease else {
                    return false;
                };
                if table.epoch != epoch || epoch == 0 {
                    return false;
                }
                match table.by_tag.remove(&tag) {
                    Some(lease) => table.by_deadline.remove(&(lease.deadline, tag)),
                    None => false,
                }
            })
            .collect();
        (table.channel.clone(), live)
    }

    /// Moves a live lease's deadline to `deadline`, refusing one the broker
    /// would not honour: it closes a channel holding a delivery unacked for
    /// longer than `broker_limit` (its `consumer_timeout`).
    pub(super) fn extend(
        &self,
        epoch: u64,
        tag: u64,
        deadline: Instant,
        broker_limit: Duration,
    ) -> Result<(), ExtendError> {
        let mut table = self.lock();
        if table.epoch != epoch || epoch == 0 {
            return Err(ExtendError::Dead);
        }
        let Some(lease) = table.by_tag.get_mut(&tag) else {
            return Err(ExtendError::Dead);
        };
        if deadline.saturating_duration_since(lease.delivered_at) > broker_limit {
            return Err(ExtendError::TooLong);
        }
        let old = std::mem::replace(&mut lease.deadline, deadline);
        table.by_deadline.remove(&(old, tag));
        table.by_deadline.insert((deadline, tag));
        Self::wake_if_first(&self.changed, table, deadline, tag);
        Ok(())
    }

    /// Ends every lease whose deadline has passed, returning the channel and
    /// the tags to requeue.
    fn take_expired(&self, now: Instant) -> Option<(Arc<TrackedChannel>, Vec<u64>)> {
        let mut table = self.lock();
        let mut expired = Vec::new();
        while let Some(&(deadline, tag)) = table.by_deadline.first() {
            if deadline > now {
                break;
            }
            table.by_deadline.pop_first();
            table.by_tag.remove(&tag);
            expired.push(tag);
        }
        if expired.is_empty() {
            return None;
        }
        table.channel.clone().map(|channel| (channel, expired))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock()
            .by_deadline
            .first()
            .map(|(deadline, _)| *deadline)
    }
}

/// Requeues expired leases as their deadlines pass, until `stop`'s sender is dropped.
pub(super) async fn run_timer(queue: String, leases: Arc<Leases>, mut stop: watch::Receiver<()>) {
    loop {
        let changed = leases.changed.notified();
        tokio::pin!(changed);
        // Register interest before reading the deadline, so a grant in between wakes us.
        changed.as_mut().enable();
        let sleep = match leases.next_deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = &mut changed => {}
            _ = stop.changed() => return,
        }
        if let Some((channel, tags)) = leases.take_expired(Instant::now()) {
            for tag in tags {
                if let Err(error) = channel.settle(tag, true).await {
                    // The channel is gone, and the broker requeued the delivery with it.
                    tracing::debug!(queue, tag, ?error, "could not requeue an expired lease");
                }
            }
        }
    }
}

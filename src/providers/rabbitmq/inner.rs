//! The state behind a `RabbitMqMessageService` and its clones: settings,
//! connections, and each queue's channel and leases ([`Slot`]).

use crate::sync::lock;
use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    admin::Admin,
    connection::{DataConnection, Link},
    slot::Slot,
    teardown,
};
use crate::{
    dead_letter::DeadLetterPolicy, receipt::Receipt, shutdown::Shutdown, MessagingError,
    QueuesConfig, RabbitMqConfig,
};

pub(super) struct Inner {
    pub(super) config: RabbitMqConfig,
    pub(super) queues: QueuesConfig,
    pub(super) dead_letters: DeadLetterPolicy,
    // In `Arc`s so that `Drop for Inner` can hand them to a task.
    pub(super) data: Arc<DataConnection>,
    pub(super) admin: Arc<Admin>,
    pub(super) slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// See [`Inner::put_back_link`].
    pub(super) put_back: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// Queues this backend created, declared again after a reconnect.
    pub(super) declared: Mutex<BTreeSet<String>>,
    /// Set once this backend declared the delay tiers (`delay`).
    pub(super) delay_tiers: tokio::sync::OnceCell<()>,
    /// Queues this backend bound to the delay tiers' last hop.
    pub(super) delay_bound: Mutex<BTreeSet<String>>,
    pub(super) epochs: AtomicU64,
    /// Drawn at connect; every receipt this backend issues names it. Tags
    /// and epochs restart in every process, and only this backend's
    /// connection can settle its deliveries.
    pub(super) holder: u64,
    /// A send, or dropping it, stops the supervisor.
    pub(super) stop: watch::Sender<()>,
    /// The supervisor's task, awaited by `close` after `stop`.
    pub(super) supervisor: Mutex<Option<JoinHandle<()>>>,
    pub(super) shutdown: Shutdown,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slots = self.take_slots();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // amqprs closes connections and channels from tasks it spawns on
            // drop, which panics outside a runtime: leave them to the OS.
            std::mem::forget(slots);
            std::mem::forget(Arc::clone(&self.data));
            std::mem::forget(Arc::clone(&self.admin));
            return;
        };
        if self.shutdown.is_closed() {
            // `close` spawned the teardown, whose task held this `Inner`
            // until it ended: everything was let go of.
            return;
        }
        // Without `close`: the same teardown, from a task, so acks queued
        // still reach the broker if the runtime lives on.
        let (data, admin) = (Arc::clone(&self.data), Arc::clone(&self.admin));
        runtime.spawn(async move {
            if let Err(error) = teardown::run(&data, &admin, slots).await {
                tracing::debug!(%error, "closing a dropped RabbitMQ backend failed");
            }
        });
    }
}

impl Inner {
    pub(super) fn broker_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.config.broker_consumer_timeout_ms)
    }

    /// The `(epoch, tag)` a receipt names in this backend's lease tables:
    /// one from another backend names epoch 0, which no channel has, so it
    /// is never live here (`LeaseExpired`) and never settles a delivery of
    /// ours that happens to share its tag and epoch.
    pub(super) fn lease_key(&self, lease: &Receipt) -> (u64, u64) {
        let epoch = if lease.scope == self.holder {
            lease.lease
        } else {
            0
        };
        (epoch, lease.id)
    }

    /// The connection that publishes the copies of deliveries given back
    /// (`put_back`), opened at first use and again once lost. Not the data
    /// connection: RabbitMQ 3.10 closes a connection whose publish meets a
    /// queue being deleted (C12), and this one holds no lease to lose.
    pub(super) async fn put_back_link(&self) -> Result<Arc<Link>, MessagingError> {
        let mut link = self.put_back.lock().await;
        if let Some(live) = link.as_ref().filter(|link| link.is_alive()) {
            return Ok(Arc::clone(live));
        }
        let fresh = Link::open(&self.data.settings, 0).await?;
        *link = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    pub(super) fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn slot(&self, queue: &str) -> Arc<Slot> {
        Arc::clone(
            lock(&self.slots)
                .entry(queue.to_owned())
                .or_insert_with(|| Slot::new(queue)),
        )
    }

    /// Drops the slot of a queue found missing, unless it still holds leases.
    pub(super) fn forget_slot(&self, slot: &Arc<Slot>) {
        let mut slots = lock(&self.slots);
        if slots.get(&slot.queue).is_some_and(|s| Arc::ptr_eq(s, slot)) && slot.leases.len() == 0 {
            slots.remove(&slot.queue);
        }
    }

    pub(super) fn existing_slot(&self, queue: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(queue).cloned()
    }

    pub(super) fn all_slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).values().cloned().collect()
    }

    /// The data connection dropped: every lease died with it.
    pub(super) fn on_connection_lost(&self) {
        for slot in self.all_slots() {
            slot.leases.clear();
        }
    }

    /// A new data connection: declare again what this backend declared. The
    /// queues' channels died with the old one; each opens anew on its next receive.
    pub(super) async fn after_reconnect(&self) {
        let declared: Vec<String> = lock(&self.declared).iter().cloned().collect();
        for queue in declared {
            let names =
                std::iter::once(queue.clone()).chain(self.dead_letters.dead_letter_queue(&queue));
            for name in names {
                if let Err(error) = self.admin.declare(&name).await {
                    tracing::warn!(queue = name, %error, "could not declare a queue again after reconnecting");
                }
            }
        }
        let generation = self.data.generation();
        for slot in self.all_slots() {
            slot.forget_line(generation).await;
        }
    }

    pub(super) fn check_broker_limit(&self, secs: u64) -> Result<(), MessagingError> {
        let limit = self.broker_consumer_timeout();
        if Duration::from_secs(secs) > limit {
            return Err(MessagingError::invalid_argument(format!(
                "visibility timeout of {secs} s exceeds RabbitMQ's consumer_timeout of {} s",
                limit.as_secs()
            )));
        }
        Ok(())
    }
}

//! Letting go of the broker: on `close`, and from a task when the last
//! clone is dropped without it.
//!
//! amqprs hands every frame to a writer task, so an ack that returned `Ok`
//! may still be queued, and a quorum queue's channel may hold acks back
//! while earlier ones are applied. Each channel rests a moment after its
//! last settle (`SETTLE_GRACE`, a heuristic: nothing in AMQP 0-9-1 confirms
//! an ack was applied), then each channel and then the connection close,
//! awaiting the broker's close-ok each time; the broker requeues the
//! deliveries still unacknowledged at once.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::{admin::Admin, connection::DataConnection, errors, inner::Inner, slot::Slot};
use crate::{sync::lock, MessagingError};

const OPERATION: &str = "close";

impl Inner {
    /// Stops the supervisor and waits for it to end (bounded, then aborted),
    /// so that no reconnect installs a link or declares through the admin
    /// connection after they were closed; then closes everything. Runs in
    /// its own task (see `shutdown`), so nothing here is cut short by a
    /// cancelled `close`.
    pub(super) async fn teardown(&self) -> Result<(), MessagingError> {
        self.stop.send_replace(());
        // Nothing is given back any more (`stop_pumps` ran): its
        // connection closes as it drops.
        self.put_back.lock().await.take();
        let supervisor = lock(&self.supervisor).take();
        if let Some(mut supervisor) = supervisor {
            // A reconnect in progress may be declaring queues again, each
            // declaration bounded by the timeout.
            let bound = self.data.settings.timeout * 2;
            if tokio::time::timeout(bound, &mut supervisor).await.is_err() {
                tracing::debug!("the reconnect supervisor did not stop in time; aborting it");
                supervisor.abort();
                let _ = supervisor.await;
            }
        }
        let slots = self.take_slots();
        run(&self.data, &self.admin, slots).await
    }

    pub(super) fn take_slots(&self) -> Vec<Arc<Slot>> {
        std::mem::take(&mut *lock(&self.slots))
            .into_values()
            .collect()
    }
}

/// Closes the queues' channels (together), then the data connection, then
/// the admin one. The first failure to confirm a close is returned, after
/// everything was closed.
pub(super) async fn run(
    data: &DataConnection,
    admin: &Admin,
    slots: Vec<Arc<Slot>>,
) -> Result<(), MessagingError> {
    let mut closing = JoinSet::new();
    for slot in slots {
        closing.spawn(async move { slot.close_line().await });
    }
    let mut outcome = Ok(());
    while let Some(closed) = closing.join_next().await {
        let failed = match closed {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => errors::call_error(OPERATION, error, None),
            Err(error) => errors::connection(format!("a channel close failed: {error}"), None),
        };
        outcome = outcome.and(Err(failed));
    }
    let data = data
        .close()
        .await
        .map_err(|error| errors::call_error(OPERATION, error, None));
    admin.close().await;
    outcome.and(data)
}

//! Queue declarations and inspection, on a connection of their own.
//!
//! AMQP answers a request about a missing queue by closing the channel (404),
//! and amqprs never reuses the id of a channel the broker closed. Keeping
//! these requests off the data connection means a 404 never disturbs the
//! channels that hold leases, and a connection that has used up its channel
//! ids can be replaced without losing anything.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use amqprs::{
    channel::{
        Channel, ExchangeDeclareArguments, QueueDeclareArguments, QueueDeleteArguments,
        QueuePurgeArguments,
    },
    connection::Connection,
    FieldTable, FieldValue,
};

use super::{
    channel::{CallError, Closed, TrackedChannel, CLOSED_CHANNEL_LIMIT},
    errors,
    settings::Settings,
};
use crate::MessagingError;

#[derive(Default)]
struct State {
    connection: Option<Connection>,
    channel: Option<Arc<TrackedChannel>>,
    closures: Arc<AtomicU32>,
    /// Set by `close`: a call still in flight after it (past the drain
    /// bound) must not open a new connection nobody would close.
    closed: bool,
}

/// The admin connection and its one channel; requests run one at a time.
pub(super) struct Admin {
    settings: Arc<Settings>,
    /// `x-quorum-initial-group-size` of the queues it declares, if set.
    group_size: Option<u32>,
    state: tokio::sync::Mutex<State>,
}

/// The quorum queues' `x-delivery-limit`. RabbitMQ 4.x gives quorum queues
/// a limit of 20 by default and drops a message returned more often when the
/// queue has no dead-letter target; the library moves messages to its own
/// dead-letter queue after `max_receive_count` deliveries (at most
/// [`MAX_RECEIVE_COUNT`](crate::MAX_RECEIVE_COUNT)), so an explicit
/// limit far above that keeps every broker version from dropping one.
pub(super) const DELIVERY_LIMIT: i64 = 1_000_000;

/// Arguments of every queue this library declares: durable quorum queues
/// with the explicit delivery limit above, on `group_size` nodes if set.
fn quorum_arguments(group_size: Option<u32>) -> FieldTable {
    let mut arguments = FieldTable::new();
    arguments.insert(
        "x-queue-type".try_into().unwrap_or_default(),
        FieldValue::from("quorum"),
    );
    arguments.insert(
        "x-delivery-limit".try_into().unwrap_or_default(),
        FieldValue::l(DELIVERY_LIMIT),
    );
    if let Some(size) = group_size {
        arguments.insert(
            "x-quorum-initial-group-size".try_into().unwrap_or_default(),
            FieldValue::l(i64::from(size)),
        );
    }
    arguments
}

impl Admin {
    pub(super) fn new(settings: Arc<Settings>, group_size: Option<u32>) -> Self {
        Self {
            settings,
            group_size,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// Closes the channel, then the connection (the backend is closing).
    /// Nothing here settles deliveries, so failures are only logged.
    pub(super) async fn close(&self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        if let Some(channel) = state.channel.take() {
            if let Err(error) = channel.close().await {
                tracing::debug!(?error, "could not close the admin channel");
            }
        }
        if let Some(connection) = state.connection.take() {
            match tokio::time::timeout(self.settings.timeout, connection.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "could not close the admin connection"),
                Err(_) => tracing::debug!("timed out closing the admin connection"),
            }
        }
    }

    async fn channel(&self, state: &mut State) -> Result<Arc<TrackedChannel>, MessagingError> {
        if state.closed {
            return Err(MessagingError::Closed {
                provider: crate::Provider::RabbitMq,
            });
        }
        let worn_out = state.closures.load(Ordering::Relaxed) >= CLOSED_CHANNEL_LIMIT;
        if worn_out || !state.connection.as_ref().is_some_and(Connection::is_open) {
            // Dropping the old connection closes it.
            *state = State::default();
            let (connection, _) = self.settings.open("tasker-messaging admin").await?;
            state.connection = Some(connection);
        }
        if let Some(channel) = state.channel.as_ref().filter(|c| c.usable()) {
            return Ok(Arc::clone(channel));
        }
        let Some(connection) = state.connection.as_ref() else {
            return Err(errors::connection("no admin connection", None));
        };
        let channel = TrackedChannel::open(
            connection,
            self.settings.timeout,
            None,
            Arc::clone(&state.closures),
        )
        .await
        .map_err(|e| errors::call_error("open channel", e, None))?;
        state.channel = Some(Arc::clone(&channel));
        Ok(channel)
    }

    /// `x-quorum-initial-group-size` of the queues it declares, if set.
    pub(super) fn group_size(&self) -> Option<u32> {
        self.group_size
    }

    /// Runs one request; a 404 is `QueueNotFound` for `queue`.
    pub(super) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        queue: Option<&str>,
        request: F,
    ) -> Result<T, MessagingError>
    where
        F: FnOnce(Channel) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, amqprs::error::Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.call(request)
            .await?
            .map_err(|error| errors::call_error(operation, error, queue))
    }

    /// Runs one request, returning the broker's refusal as it came (outer
    /// error: no channel to send it on).
    pub(super) async fn call<T, F, Fut>(
        &self,
        request: F,
    ) -> Result<Result<T, CallError>, MessagingError>
    where
        F: FnOnce(Channel) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, amqprs::error::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let mut state = self.state.lock().await;
        let channel = self.channel(&mut state).await?;
        let result = channel.call(request).await;
        if matches!(result, Err(CallError::Broken { .. })) {
            // Timed out or lost: start afresh next time.
            *state = State::default();
        }
        Ok(result)
    }

    /// Declares `queue` as a durable quorum queue (idempotent).
    ///
    /// A queue declared earlier with other arguments (by an older version,
    /// without the delivery limit) is kept as it is, with a warning: the
    /// broker refuses to change a queue's arguments (406).
    pub(super) async fn declare(&self, queue: &str) -> Result<(), MessagingError> {
        let args = QueueDeclareArguments::durable_client_named(queue)
            .arguments(quorum_arguments(self.group_size))
            .finish();
        let declared = self
            .call(move |c| async move { c.queue_declare(args).await.map(drop) })
            .await?;
        match declared {
            Ok(()) => Ok(()),
            Err(CallError::Closed(Closed {
                code: errors::PRECONDITION_FAILED,
                ..
            })) => {
                self.ready_count("create_queue", queue).await?;
                tracing::warn!(
                    queue,
                    "queue exists with other arguments (declared by an older version?); kept as it is"
                );
                Ok(())
            }
            Err(error) => Err(errors::call_error("create_queue", error, None)),
        }
    }

    /// Messages ready in `queue` (not delivered to any consumer), or `QueueNotFound`.
    pub(super) async fn ready_count(
        &self,
        operation: &'static str,
        queue: &str,
    ) -> Result<u64, MessagingError> {
        let args = QueueDeclareArguments::new(queue).passive(true).finish();
        let declared = self
            .run(operation, Some(queue), move |c| async move {
                c.queue_declare(args).await
            })
            .await?;
        Ok(declared.map_or(0, |(_, ready, _)| u64::from(ready)))
    }

    /// Whether `queue` exists.
    pub(super) async fn exists(
        &self,
        operation: &'static str,
        queue: &str,
    ) -> Result<bool, MessagingError> {
        match self.ready_count(operation, queue).await {
            Ok(_) => Ok(true),
            Err(MessagingError::QueueNotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes `queue`; deleting a missing queue succeeds.
    pub(super) async fn delete(&self, queue: &str) -> Result<(), MessagingError> {
        let args = QueueDeleteArguments::new(queue);
        self.run("delete_queue", None, move |c| async move {
            c.queue_delete(args).await.map(drop)
        })
        .await
    }

    /// Removes `queue`'s ready messages, returning how many.
    pub(super) async fn purge(&self, queue: &str) -> Result<u64, MessagingError> {
        let args = QueuePurgeArguments::new(queue);
        let purged = self
            .run("purge_queue", Some(queue), move |c| async move {
                c.queue_purge(args).await
            })
            .await?;
        Ok(purged.map_or(0, u64::from))
    }

    /// One round trip to the broker.
    pub(super) async fn ping(&self) -> Result<(), MessagingError> {
        // amq.direct exists in every vhost.
        let args = ExchangeDeclareArguments::new("amq.direct", "direct")
            .passive(true)
            .finish();
        self.run("health_check", None, move |c| async move {
            c.exchange_declare(args).await
        })
        .await
    }
}

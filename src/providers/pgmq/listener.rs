//! One LISTEN connection per service, shared by every waiting receive: a
//! statement trigger on each queue table notifies `tasker_messaging_insert`
//! with the queue's name, and this task wakes that queue's waiters.

use std::{
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use sqlx::{
    postgres::{PgListener, PgPoolOptions},
    PgPool,
};
use tokio::task::JoinHandle;

use crate::wait::Arrivals;

/// The channel the insert trigger notifies; the payload is the queue name.
pub(super) const CHANNEL: &str = "tasker_messaging_insert";

/// Installed with PGMQ: the trigger function every queue table gets.
pub(super) fn notify_function_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS tasker_messaging;
         CREATE OR REPLACE FUNCTION tasker_messaging.notify_insert() RETURNS trigger
         LANGUAGE plpgsql AS $$
         BEGIN
             -- Table q_{{queue}}: the payload is the queue name.
             PERFORM pg_notify('{CHANNEL}', substring(TG_TABLE_NAME FROM 3));
             RETURN NULL;
         END $$;"
    )
}

/// The trigger for one queue table. Per statement, so a batch notifies once.
pub(super) fn trigger_sql(queue: &str) -> String {
    format!(
        "CREATE OR REPLACE TRIGGER tasker_messaging_notify_insert
         AFTER INSERT ON pgmq.q_{queue}
         FOR EACH STATEMENT EXECUTE FUNCTION tasker_messaging.notify_insert()"
    )
}

#[derive(Debug)]
pub(super) struct Listener {
    arrivals: Arc<Arrivals>,
    pool: PgPool,
    task: OnceLock<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Listener {
    /// A listener for the database `pool` talks to. Its connection is its own
    /// (a pool of one), so waiting never holds one of `pool`'s connections.
    pub(super) fn new(pool: &PgPool) -> Self {
        let options = pool.connect_options().as_ref().clone();
        Self {
            arrivals: Arc::default(),
            pool: PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options),
            task: OnceLock::new(),
        }
    }

    /// Stops the listening task and closes its connection (the backend is
    /// closing).
    pub(super) async fn stop(&self) {
        if let Some(task) = self.task.get() {
            task.0.abort();
        }
        self.pool.close().await;
    }

    /// The arrival signals, starting the listening task on first use.
    pub(super) fn arrivals(&self) -> &Arrivals {
        self.task.get_or_init(|| {
            AbortOnDrop(tokio::spawn(listen(
                self.pool.clone(),
                Arc::downgrade(&self.arrivals),
            )))
        });
        &self.arrivals
    }
}

/// Forwards notifications until the service is gone. A lost connection is
/// re-established; waiters meanwhile rely on their fallback poll.
async fn listen(pool: PgPool, arrivals: Weak<Arrivals>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => loop {
                    match listener.recv().await {
                        Ok(notification) => match arrivals.upgrade() {
                            // One per insert statement: a batch wakes one
                            // receiver, which passes it on if it fills its batch.
                            Some(arrivals) => arrivals.notify(notification.payload(), 1),
                            None => return,
                        },
                        Err(error) => {
                            tracing::debug!(%error, "pgmq listener lost its connection");
                            break;
                        }
                    }
                },
                Err(error) => tracing::debug!(%error, "pgmq listener cannot LISTEN"),
            },
            Err(error) => tracing::debug!(%error, "pgmq listener cannot connect"),
        }
        if arrivals.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

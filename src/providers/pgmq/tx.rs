//! Transactions that a dropped future cannot leave open on a pooled connection.
//!
//! sqlx 0.8 counts a transaction only once BEGIN's reply has arrived, so a
//! `pool.begin()` dropped before that leaves the server inside a transaction
//! that nothing rolls back; the connection goes back to the pool (its release
//! check only pings), and other callers' plain statements, sends and deletes
//! that return `Ok`, run inside that transaction and vanish with its eventual
//! rollback. sqlx does not expose the connection's transaction status, so the
//! pool cannot be made to check it.
//!
//! So each transaction runs to completion in a task of its own, on a
//! connection its caller acquired ([`Tx::run`]): a dropped caller never cuts
//! it in half, and since waiting for a connection stays with the caller, callers
//! that cancel in a loop leave no queue of tasks behind on the pool. The task
//! costs a spawn, no round trip. Closing the connection of every cut transaction
//! instead was tried: a caller cancelling in a loop then reconnects each time,
//! and sends beside it fell to under half their rate.
//!
//! For what a task cannot cover (a panic, a runtime shutting down), a [`Tx`]
//! counts as open from before BEGIN is sent until COMMIT or ROLLBACK has
//! answered, and dropped while open it closes its connection instead of
//! pooling it: the server rolls the transaction back when the session ends.

use std::{
    future::Future,
    ops::{Deref, DerefMut},
    pin::Pin,
};

use sqlx::{pool::PoolConnection, Executor, PgConnection, PgPool, Postgres};

/// The statements of one transaction, given its connection.
pub(super) type Body<'c, R> = Pin<Box<dyn Future<Output = Result<R, sqlx::Error>> + Send + 'c>>;

/// One transaction on a pooled connection; see the module documentation.
pub(super) struct Tx {
    conn: PoolConnection<Postgres>,
    open: bool,
}

impl Tx {
    /// Acquires a connection from `pool`, then runs `body` in a transaction
    /// on it in a task of its own, committed if `body` succeeds; dropping
    /// the returned future after the acquire leaves the task to finish.
    pub(super) async fn run<R, F>(pool: &PgPool, body: F) -> Result<R, sqlx::Error>
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Body<'c, R> + Send + 'static,
    {
        let conn = pool.acquire().await?;
        let task = tokio::spawn(async move {
            let mut tx = Self::begin(conn).await?;
            let outcome = body(&mut tx).await;
            tx.end(outcome).await
        });
        task.await.unwrap_or_else(|failed| {
            Err(sqlx::Error::Protocol(format!(
                "the transaction's task ended early ({failed}); it may not have committed"
            )))
        })
    }

    /// Begins a transaction on `conn`.
    async fn begin(conn: PoolConnection<Postgres>) -> Result<Self, sqlx::Error> {
        let mut tx = Self { conn, open: true };
        // A plain statement without arguments: the simple protocol, one round trip.
        tx.conn.execute("BEGIN").await?;
        Ok(tx)
    }

    /// Commits when `outcome` is `Ok`, else rolls back; returns `outcome`,
    /// or the commit's error.
    async fn end<T>(mut self, outcome: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match outcome {
            Ok(value) => {
                self.conn.execute("COMMIT").await?;
                self.open = false;
                Ok(value)
            }
            Err(error) => {
                // Pooled again only once the server confirms; else closed.
                if self.conn.execute("ROLLBACK").await.is_ok() {
                    self.open = false;
                }
                Err(error)
            }
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

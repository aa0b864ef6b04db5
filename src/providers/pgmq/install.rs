//! Installing PGMQ on connect: the extension when the server has it, else the
//! SQL shipped in the `pgmq` crate, serialised by an advisory lock.

use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, PgPool};

use super::{errors::db_error, listener::notify_function_sql};
use crate::MessagingError;

/// Serialises concurrent first connects across processes.
const INSTALL_LOCK: &str = "SELECT pg_advisory_lock(hashtext('tasker_messaging.install_pgmq'))";

pub(super) async fn ensure_installed(
    options: &PgConnectOptions,
    pool: &PgPool,
) -> Result<(), MessagingError> {
    let err = |e| db_error("install_pgmq", e, None);
    // A connection of its own, so the lock is held outside the pool the
    // installer uses (a pool of size 1 would otherwise deadlock).
    let mut lock = PgConnection::connect_with(options).await.map_err(err)?;
    sqlx::query(INSTALL_LOCK)
        .execute(&mut lock)
        .await
        .map_err(err)?;
    let result = match install(pool).await {
        Ok(()) => sqlx::raw_sql(&notify_function_sql())
            .execute(pool)
            .await
            .map(drop)
            .map_err(err),
        failed => failed,
    };
    // Closing the session releases the lock even if this fails.
    let _ = lock.close().await;
    result
}

async fn extension_version(pool: &PgPool) -> Result<Option<String>, MessagingError> {
    sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("install_pgmq", e, None))
}

async fn install(pool: &PgPool) -> Result<(), MessagingError> {
    let err = |e| db_error("install_pgmq", e, None);
    if extension_version(pool).await?.is_some() {
        return Ok(());
    }
    let (sql_installed, available): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('pgmq.meta') IS NOT NULL,
                EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq')",
    )
    .fetch_one(pool)
    .await
    .map_err(err)?;
    if available && !sql_installed {
        tracing::info!("installing the pgmq extension");
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pgmq CASCADE")
            .execute(pool)
            .await
            .map_err(err)?;
        return Ok(());
    }
    // Idempotent: applies only the embedded scripts not yet recorded. Its
    // transaction is not cancel-safe (`tx`), but it runs on the pool `connect`
    // builds: a dropped connect drops that pool, and with it the session.
    pgmq::install::install_sql_from_embedded(pool)
        .await
        .map_err(|e| MessagingError::Provider {
            provider: crate::Provider::Pgmq,
            operation: "install_pgmq",
            message: e.to_string(),
            transient: false,
            source: Some(Box::new(e)),
        })
}

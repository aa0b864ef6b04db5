//! Mapping `sqlx` errors onto `MessagingError`.

use crate::{MessagingError, Provider};

/// SQLSTATE `undefined_table`: the queue's table does not exist.
const UNDEFINED_TABLE: &str = "42P01";

/// Maps a driver error. `queue` names the queue whose table a missing-relation
/// error refers to; without it such an error is a plain provider error.
pub(super) fn db_error(
    operation: &'static str,
    error: sqlx::Error,
    queue: Option<&str>,
) -> MessagingError {
    use sqlx::Error as E;
    match (&error, queue) {
        (E::Database(db), Some(queue)) if db.code().as_deref() == Some(UNDEFINED_TABLE) => {
            MessagingError::QueueNotFound {
                queue: queue.to_owned(),
            }
        }
        _ if super::tls::is_tls_failure(&error) => {
            super::tls::tls_error(format!("{operation}: cannot connect"), error)
        }
        (E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed, _) => {
            MessagingError::connection(Provider::Pgmq, error.to_string(), Some(error.into()))
        }
        _ => MessagingError::Provider {
            provider: Provider::Pgmq,
            operation,
            message: error.to_string(),
            transient: is_transient(&error),
            source: Some(error.into()),
        },
    }
}

/// Server-side failures that a retry can get past: lost connections, server
/// shutdown or startup, serialization failures and deadlocks.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "40001" || code == "40P01"
        }),
        sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

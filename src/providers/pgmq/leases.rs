//! Leases on the queue table: reading messages under a lease, the guarded
//! statements that settle or change one, and dead-letter moves.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use super::{errors::db_error, tx::Tx, PgmqMessageService};
use crate::{
    dead_letter::{DeadLetterPolicy, DeadLetterReason},
    delivery::{self, Outcome},
    receipt::Receipt,
    MessagingError, Provider, QueueMessage, QueuedMessage, ReceiptHandle,
};

/// One row of `pgmq.read`.
#[derive(sqlx::FromRow)]
pub(super) struct ReadRow {
    /// The OID of the queue table read (its `tableoid`).
    incarnation: i64,
    msg_id: i64,
    read_ct: i32,
    enqueued_at: DateTime<Utc>,
    vt: DateTime<Utc>,
    body: String,
    /// The `headers` column as text (`NULL` for most messages).
    headers: Option<String>,
    /// Seconds since a receiver that could not read it first met it.
    other_shape_secs: Option<f64>,
}

/// The header key that records when a receiver that could not read a
/// message first met it (seconds since the epoch, the database's clock).
pub(super) const OTHER_SHAPE_SINCE: &str = "tasker_other_shape_since";
/// Takes a read that reached no caller back out of `read_ct`: the one place
/// a PGMQ release does so (a message of another shape, a move that failed).
pub(super) const UNCOUNT: &str = "read_ct = greatest(read_ct - 1, 0)";

impl PgmqMessageService {
    /// A receipt's lease as the queue table's (`msg_id`, `read_ct`,
    /// `tableoid`).
    pub(super) fn lease_key(
        lease: Result<Receipt, MessagingError>,
        receipt: &ReceiptHandle,
    ) -> Result<(i64, i32, i64), MessagingError> {
        let lease = lease?;
        match (
            i64::try_from(lease.id),
            i32::try_from(lease.lease),
            i64::try_from(lease.scope),
        ) {
            (Ok(msg_id), Ok(read_ct), Ok(oid)) => Ok((msg_id, read_ct, oid)),
            _ => Err(MessagingError::InvalidReceipt {
                receipt: receipt.to_string(),
                reason: "receipt numbers out of range",
            }),
        }
    }

    pub(super) fn lease_expired(queue: &str, receipt: &ReceiptHandle) -> MessagingError {
        MessagingError::LeaseExpired {
            queue: queue.to_owned(),
            receipt: receipt.to_string(),
        }
    }

    /// Runs a lease-guarded statement (`$1` msg_id, `$2` read_ct, `$3` the
    /// table's OID, then `extra`); no matching row means the lease has ended.
    pub(super) async fn on_live_lease(
        &self,
        operation: &'static str,
        sql: &str,
        queue: &str,
        receipt: &ReceiptHandle,
        extra: Option<i32>,
    ) -> Result<(), MessagingError> {
        let lease = Receipt::decode(receipt, Provider::Pgmq, queue);
        let (msg_id, read_ct, oid) = Self::lease_key(lease, receipt)?;
        let done = self
            .run(operation, || async {
                let mut query = sqlx::query(sql).bind(msg_id).bind(read_ct).bind(oid);
                if let Some(extra) = extra {
                    query = query.bind(extra);
                }
                query
                    .execute(&self.pool)
                    .await
                    .map_err(|e| db_error(operation, e, Some(queue)))
            })
            .await?;
        if done.rows_affected() == 0 {
            return Err(Self::lease_expired(queue, receipt));
        }
        Ok(())
    }

    /// One receive attempt: read and lease up to `qty` messages, and move those
    /// the dead-letter policy rejects, in one transaction. A crash between the
    /// read and the move leaves the message leased in its queue, never lost;
    /// a dropped call rolls back (see `tx`).
    pub(super) async fn read_leases<T: QueueMessage>(
        &self,
        queue: &str,
        vt: i32,
        qty: i32,
    ) -> Result<(Vec<QueuedMessage<T>>, Vec<(i64, DeadLetterReason)>), MessagingError> {
        let err = |e| db_error("receive_messages", e, Some(queue));
        let (policy, name) = (Arc::clone(&self.dead_letters), queue.to_owned());
        let (delivered, dead, releases) = Tx::run(&self.pool, move |tx| {
            Box::pin(async move { Self::lease_in::<T>(tx, &policy, &name, vt, qty).await })
        })
        .await
        .map_err(err)?;
        // Counted once the transaction committed: a rolled-back attempt
        // (retried by the caller) decides again and counts then.
        crate::telemetry::released(Provider::Pgmq, queue, releases);
        if self.dead_letters.dead_letter_queue(queue).is_some() {
            for (_, reason) in &dead {
                crate::telemetry::dead_lettered(Provider::Pgmq, queue, reason.as_str());
            }
        }
        Ok((delivered, dead))
    }

    /// The statements of [`Self::read_leases`], inside its transaction.
    pub(super) async fn lease_in<T: QueueMessage>(
        tx: &mut sqlx::PgConnection,
        dead_letters: &DeadLetterPolicy,
        queue: &str,
        vt: i32,
        qty: i32,
    ) -> Result<(Vec<QueuedMessage<T>>, Vec<(i64, DeadLetterReason)>, usize), sqlx::Error> {
        // The table's OID, for the receipts: looked up once, at the first
        // row, after pgmq.read ran; the table it read stays locked against a
        // drop until this transaction ends, so the OID is that table's.
        let rows: Vec<ReadRow> = sqlx::query_as(&format!(
            "SELECT msg_id, read_ct, enqueued_at, vt, message::text AS body,
                    headers::text AS headers,
                    (SELECT coalesce(to_regclass('pgmq.q_' || $1)::oid::bigint, 0))
                        AS incarnation,
                    CASE WHEN jsonb_typeof(headers->'{OTHER_SHAPE_SINCE}') = 'number'
                         THEN extract(epoch FROM clock_timestamp())::float8
                              - (headers->>'{OTHER_SHAPE_SINCE}')::float8
                    END AS other_shape_secs
             FROM pgmq.read($1, $2, $3)"
        ))
        .bind(queue)
        .bind(vt)
        .bind(qty)
        .fetch_all(&mut *tx)
        .await?;

        let mut delivered = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        let mut released = Vec::new();
        for row in rows {
            let receive_count = u32::try_from(row.read_ct).unwrap_or(0);
            let outcome = delivery::assemble::<T>(
                dead_letters,
                delivery::Delivery {
                    queue,
                    provider: Provider::Pgmq,
                    receipt: Receipt {
                        scope: row.incarnation as u64,
                        id: row.msg_id as u64,
                        lease: u64::from(receive_count),
                    },
                    message_id: row.msg_id.to_string(),
                    enqueued_at: row.enqueued_at,
                    receive_count,
                    lease_ends: row.vt,
                    lease: Duration::from_secs(u64::try_from(vt).unwrap_or(0)),
                    other_shape_for: row
                        .other_shape_secs
                        .and_then(|secs| Duration::try_from_secs_f64(secs.max(0.0)).ok())
                        .unwrap_or_default(),
                    body: &row.body,
                    headers: user_headers(row.headers.as_deref()),
                },
            );
            match outcome {
                Outcome::Deliver(message) => delivered.push(message),
                Outcome::DeadLetter(reason) => dead.push((row.msg_id, reason)),
                Outcome::Release => released.push(row.msg_id),
                Outcome::Hold => {}
            }
        }
        // Visible again at once to other receivers, at the back of the line
        // (a new msg_id: the id is the place), one at a time to keep their
        // order. The read was no hand-out: read_ct goes back, and the first
        // such read is noted.
        let release = format!(
            "UPDATE pgmq.q_{queue}
             SET msg_id = DEFAULT, vt = clock_timestamp(),
                 {UNCOUNT},
                 headers = coalesce(headers, '{{}}'::jsonb) || jsonb_build_object(
                     '{OTHER_SHAPE_SINCE}',
                     CASE WHEN jsonb_typeof(headers->'{OTHER_SHAPE_SINCE}') = 'number'
                          THEN headers->'{OTHER_SHAPE_SINCE}'
                          ELSE to_jsonb(extract(epoch FROM clock_timestamp())) END)
             WHERE msg_id = $1"
        );
        released.sort_unstable();
        let releases = released.len();
        for id in released {
            sqlx::query(&release).bind(id).execute(&mut *tx).await?;
        }
        if let (false, Some(dlq)) = (dead.is_empty(), dead_letters.dead_letter_queue(queue)) {
            Self::move_to_dead_letters(tx, queue, &dlq, &dead).await?;
        }
        Ok((delivered, dead, releases))
    }

    /// Moves messages this transaction has just leased to the dead-letter queue.
    pub(super) async fn move_to_dead_letters(
        tx: &mut sqlx::PgConnection,
        queue: &str,
        dlq: &str,
        dead: &[(i64, DeadLetterReason)],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = dead.iter().map(|(id, _)| *id).collect();
        let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
        // Recreate the dead-letter queue if someone dropped it on its own.
        sqlx::query("SELECT pgmq.create($1)")
            .bind(dlq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "WITH moved AS (
                 DELETE FROM pgmq.q_{queue} WHERE msg_id = ANY($1)
                 RETURNING msg_id, message, headers)
             INSERT INTO pgmq.q_{dlq} (vt, message, headers)
             SELECT clock_timestamp(), moved.message,
                    coalesce(moved.headers, '{{}}'::jsonb) || jsonb_build_object(
                        'dead_letter', jsonb_build_object(
                            'source_queue', $3::text,
                            'source_msg_id', moved.msg_id,
                            'reason', r.reason))
             FROM moved JOIN unnest($1::bigint[], $2::text[]) AS r(id, reason)
                  ON r.id = moved.msg_id
             ORDER BY moved.msg_id"
        ))
        .bind(&ids)
        .bind(&reasons)
        .bind(queue)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// The caller's headers in a `headers` column: its string values, the
/// library's own keys (`tasker_*`, `dead_letter`) left out. A column that is
/// not a JSON object (written by another producer) gives none.
pub(super) fn user_headers(column: Option<&str>) -> crate::Headers {
    let Some(text) = column else {
        return crate::Headers::new();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => crate::send_options::user_headers(
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))),
        ),
        Err(_) => crate::Headers::new(),
    }
}

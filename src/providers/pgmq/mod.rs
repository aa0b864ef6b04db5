//! PGMQ on PostgreSQL, through a sqlx pool.
//!
//! Reads and sends go through the `pgmq.*` functions with explicit column
//! lists. Deletes and lease changes are guarded statements on the queue table
//! itself, because `pgmq.delete`/`pgmq.set_vt` cannot check that the caller
//! still holds the lease: a receipt is `msg_id` plus `read_ct` plus the queue
//! table's OID (`msg_id` and `read_ct` start over in a queue deleted and
//! created again), and a statement that changes a message requires all
//! three, and an unexpired `vt`.

mod errors;
mod install;
mod leases;
mod listener;
mod outage;
mod send_group;
mod tls;
mod tx;
mod url_parameters;

use std::{collections::HashSet, future::Future, sync::Arc, time::Duration};

use serde_json::value::RawValue;
use sqlx::{postgres::PgPoolOptions, types::Json, PgPool};

use self::{
    errors::db_error,
    leases::UNCOUNT,
    listener::Listener,
    outage::{LastDown, Outage},
    send_group::{FlushGuard, Pending, SendGroups},
    tx::Tx,
};
use crate::{
    codec,
    dead_letter::DeadLetterPolicy,
    lease,
    queue_name::QueueName,
    receipt::Receipt,
    resilience::{CircuitBreaker, Resilience},
    service::provide::{Shutdown, Teardown},
    MessageId, MessagingConfig, MessagingError, PgmqConfig, Provider, QueueMessage, QueueStats,
    QueuedMessage, QueuesConfig, ReceiptHandle,
};

/// The PGMQ provider: a sqlx pool and the queue settings. Clones share the
/// pool and the circuit breaker.
#[derive(Debug, Clone)]
pub struct PgmqMessageService {
    pool: PgPool,
    config: Arc<QueuesConfig>,
    dead_letters: Arc<DeadLetterPolicy>,
    resilience: Arc<Resilience>,
    listener: Arc<Listener>,
    outage: Arc<Outage>,
    connection_timeout: Duration,
    sends: Arc<SendGroups>,
    shutdown: Arc<Shutdown>,
    /// Whether `close` closes `pool`: it does for the pool `connect` built,
    /// not for one passed to `from_pool`.
    owns_pool: bool,
}

/// A flush place a send took for its own message ([`SendGroups::lead`]):
/// handed back on drop, to a new flush task if sends lined up meanwhile.
struct Lead<'a>(&'a PgmqMessageService);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.0.sends.hand_back() {
            self.0.start_flush();
        }
    }
}

impl PgmqMessageService {
    /// Connects a pool to `[pgmq] database_url` and installs PGMQ if absent.
    /// A config that fails [`MessagingConfig::validate`] is refused first.
    pub async fn connect(config: &MessagingConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        let pgmq = config
            .pgmq
            .as_ref()
            .ok_or_else(|| MessagingError::Config("pgmq.database_url is required".into()))?;
        let url = &pgmq.database_url;
        let options = tls::connect_options(url)?;
        // No ping before each acquire: it would double the round trips of
        // every call, and a connection that died meanwhile fails its call
        // with a transient error that the retry layer absorbs. Connections
        // older than the last outage are dead: dropped without a round trip.
        let last_down = Arc::new(LastDown::default());
        let stale = Arc::clone(&last_down);
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .before_acquire(move |_, meta| {
                let fresh = !stale.is_stale(meta.age);
                Box::pin(async move { Ok(fresh) })
            })
            .max_connections(pgmq.pool_size)
            .acquire_timeout(Duration::from_millis(pgmq.connection_timeout_ms))
            .connect_with(options.clone())
            .await
            .map_err(|e| match e {
                // A certificate or key sqlx cannot use: no retry mends it.
                sqlx::Error::Configuration(_) => {
                    MessagingError::Config(format!("cannot connect to {url}: {e}"))
                }
                _ if tls::is_tls_failure(&e) => {
                    tls::tls_error(format!("cannot connect to {url}"), e)
                }
                _ => MessagingError::connection(
                    Provider::Pgmq,
                    format!("cannot connect to {url}: {e}"),
                    Some(e.into()),
                ),
            })?;
        install::ensure_installed(&options, &pool).await?;
        Ok(Self::build(pool, config, last_down, true))
    }

    /// Wraps an existing pool on a database where PGMQ is installed, with the
    /// queue, retry and circuit-breaker settings of `config`.
    ///
    /// After an outage, calls on such a pool may first meet its dead pooled
    /// connections (retried as transient failures); [`connect`](Self::connect)
    /// builds a pool that drops them. A config that fails
    /// [`MessagingConfig::validate`] is refused.
    ///
    /// [`close`](crate::MessagingService::close) leaves this pool open: it
    /// is the caller's.
    pub fn from_pool(pool: PgPool, config: &MessagingConfig) -> Result<Self, MessagingError> {
        config.validate()?;
        Ok(Self::build(pool, config, Arc::default(), false))
    }

    fn build(
        pool: PgPool,
        config: &MessagingConfig,
        last_down: Arc<LastDown>,
        owns_pool: bool,
    ) -> Self {
        let (timeout_ms, max_send_group) = config.pgmq.as_ref().map_or(
            (
                PgmqConfig::DEFAULT_CONNECTION_TIMEOUT_MS,
                PgmqConfig::DEFAULT_MAX_SEND_GROUP,
            ),
            |pgmq| (pgmq.connection_timeout_ms, pgmq.max_send_group),
        );
        let connection_timeout = Duration::from_millis(timeout_ms);
        let resilience = Arc::new(Resilience::new(
            Provider::Pgmq,
            config.retry_policy.clone(),
            config.circuit_breaker.clone(),
        ));
        let outage = Outage::new(
            Arc::clone(&resilience),
            (*pool.connect_options()).clone(),
            connection_timeout,
            last_down,
        );
        Self {
            listener: Arc::new(Listener::new(&pool)),
            pool,
            dead_letters: Arc::new((&config.queues).into()),
            config: Arc::new(config.queues.clone()),
            resilience,
            outage: Arc::new(outage),
            connection_timeout,
            sends: Arc::new(SendGroups::new(max_send_group)),
            shutdown: Arc::default(),
            owns_pool,
        }
    }

    /// Runs a server call through the breaker and the retry policy; each
    /// attempt fails at once while the server is known to be down.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, MessagingError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, MessagingError>>,
    {
        self.resilience
            .run(operation, || self.outage.guard(call()))
            .await
    }

    /// Stores `bodies` in `queue` in one statement (one transaction: all or
    /// none), returning their ids in order. A retry after a lost reply may
    /// store them twice, never lose them.
    async fn store(
        &self,
        operation: &'static str,
        queue: &str,
        bodies: &[Json<&RawValue>],
    ) -> Result<Vec<i64>, MessagingError> {
        self.run(operation, || async {
            let err = |e| db_error(operation, e, Some(queue));
            match bodies {
                [body] => sqlx::query_scalar("SELECT pgmq.send($1, $2)")
                    .bind(queue)
                    .bind(body)
                    .fetch_one(&self.pool)
                    .await
                    .map(|id| vec![id])
                    .map_err(err),
                _ => sqlx::query_scalar("SELECT pgmq.send_batch($1, $2)")
                    .bind(queue)
                    .bind(bodies)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(err),
            }
        })
        .await
    }

    /// A flush task of the send line: stores group after group until the
    /// line is empty (see `send_group`).
    async fn flush_sends(self, guard: FlushGuard) {
        while let Some(group) = self.sends.next_group() {
            let bodies: Vec<_> = group.iter().map(|send| Json(&*send.body)).collect();
            let stored = self.store("send_message", &group[0].queue, &bodies).await;
            drop(bodies);
            send_group::reply(group, stored);
        }
        std::mem::forget(guard);
    }

    /// Starts a flush task for the send line (its place already taken).
    fn start_flush(&self) {
        // Dropped with the task, polled or not: what waits fails rather than
        // strands (also when there is no runtime to flush on).
        let guard = FlushGuard(self.sends.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.clone().flush_sends(guard));
        }
    }

    /// The underlying pool, for running SQL in the same database. Closed by
    /// [`close`](crate::MessagingService::close) when [`connect`](Self::connect)
    /// built it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl crate::service::provide::Provide for PgmqMessageService {
    async fn health_check(&self) -> Result<bool, MessagingError> {
        // Not through the breaker or retries: reachability as it is now.
        let ping = self.outage.guard(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| db_error("health_check", e, None))
        });
        let bound = crate::resilience::HEALTH_CHECK_BOUND.min(self.connection_timeout);
        Ok(matches!(tokio::time::timeout(bound, ping).await, Ok(Ok(_))))
    }

    async fn create_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let mut names = vec![queue.to_owned()];
        names.extend(self.dead_letters.dead_letter_queue(queue));
        self.run("create_queue", || async {
            let err = |e| db_error("create_queue", e, None);
            let names = names.clone();
            Tx::run(&self.pool, move |tx| {
                Box::pin(async move {
                    sqlx::query("SELECT pgmq.create(name) FROM unnest($1::text[]) AS name")
                        .bind(&names)
                        .execute(&mut *tx)
                        .await?;
                    for name in &names {
                        sqlx::query(&listener::trigger_sql(name))
                            .execute(&mut *tx)
                            .await?;
                    }
                    Ok(())
                })
            })
            .await
            .map_err(err)
        })
        .await?;
        Ok(())
    }

    async fn send_message<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
    ) -> Result<MessageId, MessagingError> {
        let queue = queue.as_str();
        let body = codec::encode(message, self.config.max_message_bytes)?;
        if !self.sends.groups() {
            let ids = self.store("send_message", queue, &[Json(&*body)]).await?;
            return Ok(MessageId::new(ids[0].to_string()));
        }
        if self.sends.lead() {
            // Hands the place back however this ends, a dropped call included.
            let _place = Lead(self);
            let ids = self.store("send_message", queue, &[Json(&*body)]).await?;
            return Ok(MessageId::new(ids[0].to_string()));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let send = Pending {
            queue: queue.into(),
            body,
            reply,
        };
        if self.sends.push(send) {
            self.start_flush();
        }
        let id = answer
            .await
            .unwrap_or_else(|_| Err(send_group::unanswered()))?;
        Ok(MessageId::new(id.to_string()))
    }

    async fn send_batch<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
    ) -> Result<Vec<MessageId>, MessagingError> {
        let queue = queue.as_str();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let bodies = codec::encode_all(messages, self.config.max_message_bytes)?;
        let bodies: Vec<_> = bodies.iter().map(|body| Json(&**body)).collect();
        let ids = self.store("send_batch", queue, &bodies).await?;
        Ok(ids
            .into_iter()
            .map(|id| MessageId::new(id.to_string()))
            .collect())
    }

    async fn send_message_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
        options: &crate::SendOptions,
    ) -> Result<MessageId, MessagingError> {
        let mut ids = self
            .send_batch_with(queue, std::slice::from_ref(message), options)
            .await?;
        ids.pop()
            .ok_or_else(|| MessagingError::invalid_argument("no message was sent"))
    }

    async fn send_batch_with<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
        options: &crate::SendOptions,
    ) -> Result<Vec<MessageId>, MessagingError> {
        let queue = queue.as_str();
        let bodies = codec::encode_all_with_headers(
            messages,
            self.config.max_message_bytes,
            options.header_bytes(),
        )?;
        let bodies: Vec<_> = bodies.iter().map(|body| Json(&**body)).collect();
        // PGMQ's own `headers` column and `delay` (whole seconds, rounded
        // up: the granularity `Capabilities` states); one statement, so the
        // batch is stored whole or not at all, delayed or not (C41).
        let headers = options.header_map();
        let headers: Vec<_> = bodies.iter().map(|_| Json(headers)).collect();
        let delay = options.delay_duration();
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let secs = i32::try_from(secs)
            .map_err(|_| MessagingError::invalid_argument("the delay is too long for PGMQ"))?;
        let ids: Vec<i64> = self
            .run("send_batch", || async {
                sqlx::query_scalar(
                    "SELECT pgmq.send_batch($1, $2::jsonb[], $3::jsonb[], $4::integer)",
                )
                .bind(queue)
                .bind(&bodies)
                .bind(&headers)
                .bind(secs)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("send_batch", e, Some(queue)))
            })
            .await?;
        Ok(ids
            .into_iter()
            .map(|id| MessageId::new(id.to_string()))
            .collect())
    }

    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let queue = queue.as_str();
        lease::check_max_messages(max_messages)?;
        let vt = i32::try_from(lease::lease_secs(visibility_timeout, 1)?)
            .map_err(|_| MessagingError::invalid_argument("visibility timeout too large"))?;
        let qty = i32::try_from(max_messages).unwrap_or(i32::MAX);
        let (delivered, dead) = self
            .run("receive_messages", || self.read_leases::<T>(queue, vt, qty))
            .await?;
        for (id, reason) in dead {
            self.dead_letters.log_move(queue, &id.to_string(), reason);
        }
        Ok(delivered)
    }

    async fn receive_messages_wait<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<QueuedMessage<T>>, MessagingError> {
        let signal = self.listener.arrivals();
        crate::wait::receive_wait(self, signal, queue, max_messages, visibility_timeout, wait).await
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let sql = format!(
            "DELETE FROM pgmq.q_{queue}
             WHERE msg_id = $1 AND read_ct = $2 AND tableoid::bigint = $3
               AND vt > clock_timestamp()"
        );
        self.on_live_lease("delete_message", &sql, queue, receipt, None)
            .await
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<Vec<Result<(), MessagingError>>, MessagingError> {
        let queue = queue.as_str();
        let keys: Vec<_> = Receipt::decode_all(receipts, Provider::Pgmq, queue)
            .into_iter()
            .zip(receipts)
            .map(|(lease, receipt)| Self::lease_key(lease, receipt))
            .collect();
        let ids: Vec<i64> = keys.iter().flatten().map(|key| key.0).collect();
        let read_cts: Vec<i32> = keys.iter().flatten().map(|key| key.1).collect();
        let oids: Vec<i64> = keys.iter().flatten().map(|key| key.2).collect();
        let mut deleted = HashSet::new();
        if !ids.is_empty() {
            // The guard of delete_message, for every (msg_id, read_ct, oid) at once.
            let sql = format!(
                "DELETE FROM pgmq.q_{queue} AS q
                 USING unnest($1::bigint[], $2::int[], $3::bigint[]) AS r(msg_id, read_ct, oid)
                 WHERE q.msg_id = r.msg_id AND q.read_ct = r.read_ct
                   AND q.tableoid::bigint = r.oid AND q.vt > clock_timestamp()
                 RETURNING q.msg_id, q.read_ct, q.tableoid::bigint"
            );
            let rows: Vec<(i64, i32, i64)> = self
                .run("delete_messages", || async {
                    sqlx::query_as(&sql)
                        .bind(&ids)
                        .bind(&read_cts)
                        .bind(&oids)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| db_error("delete_messages", e, Some(queue)))
                })
                .await?;
            deleted.extend(rows);
        }
        // A receipt given twice deletes once: the second is LeaseExpired.
        Ok(keys
            .into_iter()
            .zip(receipts)
            .map(|(key, receipt)| {
                deleted
                    .remove(&key?)
                    .then_some(())
                    .ok_or_else(|| Self::lease_expired(queue, receipt))
            })
            .collect())
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let secs = i32::try_from(lease::lease_secs(visibility_timeout, 0)?)
            .map_err(|_| MessagingError::invalid_argument("visibility timeout too large"))?;
        let sql = format!(
            "UPDATE pgmq.q_{queue} SET vt = clock_timestamp() + make_interval(secs => $4)
             WHERE msg_id = $1 AND read_ct = $2 AND tableoid::bigint = $3
               AND vt > clock_timestamp()"
        );
        self.on_live_lease(
            "change_message_visibility",
            &sql,
            queue,
            receipt,
            Some(secs),
        )
        .await
    }

    async fn put_back_uncounted(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        // One statement: the release and the count restored together.
        let sql = format!(
            "UPDATE pgmq.q_{queue} SET vt = clock_timestamp(), {UNCOUNT}
             WHERE msg_id = $1 AND read_ct = $2 AND tableoid::bigint = $3
               AND vt > clock_timestamp()"
        );
        self.on_live_lease("put_back_uncounted", &sql, queue, receipt, None)
            .await
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats, MessagingError> {
        let queue = queue.as_str();
        let dlq = self.dead_letters.dead_letter_queue(queue);
        type Row = (i64, i64, Option<i32>, Option<i64>, i64);
        // Delayed: not visible and never read (a lease has read it at least
        // once); counted apart from the leased ones (C40).
        let sql = format!(
            "SELECT m.queue_visible_length, m.queue_length, m.oldest_msg_age_sec,
                    CASE WHEN to_regclass('pgmq.q_' || $2) IS NULL THEN NULL
                         ELSE (SELECT d.queue_length FROM pgmq.metrics($2) d) END,
                    (SELECT count(*) FROM pgmq.q_{queue}
                     WHERE vt > clock_timestamp() AND read_ct = 0)
             FROM pgmq.metrics($1) m"
        );
        let (ready, total, oldest, dead, delayed): Row = self
            .run("get_queue_stats", || async {
                sqlx::query_as(&sql)
                    .bind(queue)
                    .bind(dlq.as_deref())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| db_error("get_queue_stats", e, Some(queue)))
            })
            .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(QueueStats {
            queue_name: queue.to_owned(),
            message_count: count(ready),
            in_flight_count: Some(count(total - ready - delayed)),
            oldest_message_age_seconds: oldest.map(i64::from),
            dead_letter_count: dead.map(count),
            delayed_count: Some(count(delayed)),
            migration: None,
        })
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64, MessagingError> {
        let queue = queue.as_str();
        let sql = format!("DELETE FROM pgmq.q_{queue} WHERE vt <= clock_timestamp()");
        let done = self
            .run("purge_queue", || async {
                sqlx::query(&sql)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| db_error("purge_queue", e, Some(queue)))
            })
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<(), MessagingError> {
        let queue = queue.as_str();
        let mut names = vec![queue.to_owned()];
        names.extend(self.dead_letters.dead_letter_queue(queue));
        // The notification wakes waiters in every process: they find the
        // queue gone and leave, and their arrival signal with them.
        self.run("delete_queue", || async {
            sqlx::query(
                "SELECT pgmq.drop_queue(name), pg_notify($2, name)
                 FROM unnest($1::text[]) AS name",
            )
            .bind(&names)
            .bind(listener::CHANNEL)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("delete_queue", e, None))
        })
        .await?;
        Ok(())
    }

    fn provider(&self) -> Provider {
        Provider::Pgmq
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::PGMQ
    }

    fn queues_config(&self) -> &QueuesConfig {
        &self.config
    }

    fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        Some(self.resilience.breaker())
    }

    fn server(&self) -> Option<(&str, u16)> {
        Some(self.outage.server())
    }

    fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Every delete and settle that returned `Ok` was committed; what is
    /// left is to stop the background tasks and close the pools (C33).
    fn teardown(&self) -> Teardown {
        let this = self.clone();
        Box::pin(async move {
            this.outage.stop();
            this.listener.stop().await;
            if this.owns_pool {
                this.pool.close().await;
            }
            Ok(())
        })
    }
}

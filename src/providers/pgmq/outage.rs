//! Failing fast while PostgreSQL is down, and noticing its return.
//!
//! sqlx's pool retries a refused connect until `acquire_timeout`, so every
//! call against a stopped server would wait out `connection_timeout_ms`.
//! Instead, a call that fails transiently, or still waits after
//! [`SUSPECT_AFTER`], starts a probe: one direct connect attempt, one probe
//! loop at a time. A failed probe marks the server down: calls waiting stop,
//! new ones fail at once, and the loop probes [`probe_pause`] apart until the
//! server answers; then the circuit half-opens. Pooled connections opened
//! before the server was last found down are dead, and are dropped on
//! checkout ([`LastDown::is_stale`]).

use crate::sync::lock;
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};

use crate::{
    resilience::{probe_pause, Resilience},
    MessagingError, Provider,
};

/// How long a call waits before a probe checks that the server is there.
/// A busy pool can be slower than this; the probe then finds the server up
/// and the call goes on waiting.
const SUSPECT_AFTER: Duration = Duration::from_millis(300);
/// Fewest seconds between probes started by suspicion while the server is up.
const SUSPECT_INTERVAL: Duration = Duration::from_secs(1);

/// PostgreSQL's reachability for one pool.
pub(super) struct Outage {
    resilience: Arc<Resilience>,
    options: PgConnectOptions,
    timeout: Duration,
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    last_down: Arc<LastDown>,
    /// Set by `close`: no probe starts, and a running one ends.
    stopped: AtomicBool,
}

impl Outage {
    /// The server's host (or socket directory) and port, from the connect
    /// options (never the password).
    pub(super) fn server(&self) -> (&str, u16) {
        (self.options.get_host(), self.options.get_port())
    }
}

// By hand: the connect options hold the password.
impl std::fmt::Debug for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outage")
            .field("timeout", &self.timeout)
            .field("probing", &self.probing)
            .finish_non_exhaustive()
    }
}

/// When the server was last found down, shared with the pool's checkout hook.
#[derive(Debug, Default)]
pub(super) struct LastDown(Mutex<Option<Instant>>);

impl LastDown {
    fn mark(&self) {
        *lock(&self.0) = Some(Instant::now());
    }

    /// Whether a pooled connection `age` old predates the last outage.
    pub(super) fn is_stale(&self, age: Duration) -> bool {
        let created = Instant::now().checked_sub(age);
        match (*lock(&self.0), created) {
            (Some(down_at), Some(created)) => created < down_at,
            _ => false,
        }
    }
}

impl Outage {
    pub(super) fn new(
        resilience: Arc<Resilience>,
        options: PgConnectOptions,
        timeout: Duration,
        last_down: Arc<LastDown>,
    ) -> Self {
        Self {
            resilience,
            options,
            timeout,
            probing: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            last_down,
            stopped: AtomicBool::new(false),
        }
    }

    /// Stops probing for good (the backend is closing).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Runs one call attempt: fails at once while the server is down, and
    /// stops waiting once a probe finds it down.
    pub(super) async fn guard<T>(
        self: &Arc<Self>,
        call: impl Future<Output = Result<T, MessagingError>>,
    ) -> Result<T, MessagingError> {
        let reach = self.resilience.reach();
        reach.check()?;
        let found_down = async {
            let down = reach.until_down();
            tokio::pin!(down);
            tokio::select! {
                error = &mut down => return error,
                _ = tokio::time::sleep(SUSPECT_AFTER) => self.suspect(),
            }
            down.await
        };
        // A call cut short has no answer: a send may have been stored (a
        // duplicate if retried), never lost.
        let result = tokio::select! {
            result = call => result,
            error = found_down => Err(error),
        };
        if matches!(&result, Err(error) if error.is_transient()) {
            self.suspect();
        }
        result
    }

    /// Starts the probe loop, unless one runs or one started within
    /// [`SUSPECT_INTERVAL`] (while the server is up).
    fn suspect(self: &Arc<Self>) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        {
            let mut last = lock(&self.last_probe);
            if last.is_some_and(|at| at.elapsed() < SUSPECT_INTERVAL) {
                return;
            }
            if self.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        tokio::spawn(probe_loop(Arc::downgrade(self)));
    }

    /// One direct connect attempt, outside the pool and its retries.
    async fn probe(&self) -> Result<(), MessagingError> {
        let unreachable =
            |message: String| MessagingError::connection(Provider::Pgmq, message, None);
        match tokio::time::timeout(self.timeout, PgConnection::connect_with(&self.options)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                Ok(())
            }
            Ok(Err(error)) => Err(unreachable(error.to_string())),
            Err(_) => Err(unreachable("timed out connecting".into())),
        }
    }
}

/// Probes until the server answers; stops early when the backend is dropped.
async fn probe_loop(outage: Weak<Outage>) {
    let mut attempt = 0;
    loop {
        let Some(this) = outage.upgrade() else { return };
        if this.stopped.load(Ordering::Acquire) {
            return;
        }
        match this.probe().await {
            Ok(()) => {
                if this.resilience.reach().is_down() {
                    this.resilience.server_answered();
                    crate::telemetry::reconnected(Provider::Pgmq);
                    tracing::info!("PostgreSQL answers again");
                }
                this.probing.store(false, Ordering::Release);
                return;
            }
            Err(error) => {
                this.last_down.mark();
                if this.resilience.reach().down(&error) {
                    tracing::warn!(%error, "PostgreSQL is unreachable; calls fail at once until it answers");
                }
            }
        }
        drop(this);
        tokio::time::sleep(probe_pause(attempt)).await;
        attempt += 1;
    }
}

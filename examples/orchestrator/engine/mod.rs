//! The orchestrator's core loop: the queues and the run (here), the enqueuer,
//! the workers, the results check, the monitor and the summary (one module
//! each). `main.rs` wraps it in a command line; `tests/orchestrator.rs`
//! includes this module with `#[path]` and runs it against every provider.

mod enqueue;
mod monitor;
mod results;
mod summary;
mod wake_up;
mod workers;

use enqueue::enqueue;
use monitor::{monitor, waiting};
use results::consume_results;
pub use summary::Summary;
pub use wake_up::measure_wake_up;
use workers::work;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tasker_messaging::{
    MessageBackend, MessageId, MessageRouter, MessagingError, MessagingService,
    NamespaceQueueRouter, Provider, QueueStats, QueuedMessage, ReceiptHandle, SimpleStepMessage,
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use uuid::Uuid;

/// How long one waiting receive parks. It also bounds how long a worker takes
/// to notice a stop, so receives are never cancelled mid-flight.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// How often the monitor looks at the queues to decide whether the run is done.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Steps per `send_batch` when enqueuing.
pub const SEND_BATCH: usize = 100;
/// Steps a worker leases per receive; its lease must cover their work.
pub const RECEIVE_BATCH: usize = 10;
/// Completions the results consumer takes per receive.
const RESULTS_BATCH: usize = 100;
/// Results consumers: one deletes a completion per round trip, which on PGMQ
/// alone falls behind a dozen workers.
const RESULTS_CONSUMERS: usize = 3;
/// Consecutive steps that share a task uuid.
const STEPS_PER_TASK: usize = 4;
/// The results queue's name is routed through the namespace pattern too, so a
/// unique pattern keeps a test's results apart from other runs.
pub const RESULTS_NAMESPACE: &str = "step_results";

/// What a run does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Steps to enqueue; 0 only drains what is already queued.
    pub messages: u64,
    /// Workers per namespace queue.
    pub workers: usize,
    /// Simulated work per step.
    pub work: Duration,
    /// Share of steps that fail on every attempt (0.0 to 1.0), chosen from the
    /// step uuid so a rerun agrees.
    pub fail_rate: f64,
    /// How often to print a progress line on stderr; `None` for none.
    pub progress: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            messages: 10_000,
            workers: 4,
            work: Duration::from_millis(1),
            fail_rate: 0.0,
            progress: Some(Duration::from_secs(1)),
        }
    }
}

/// The completion a worker reports for a step it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepCompleted {
    /// The run whose worker ran the step; completions of other runs are stale.
    pub run_id: Uuid,
    /// The step's task.
    pub task_uuid: Uuid,
    /// The step that ran.
    pub step_uuid: Uuid,
    /// Which delivery of the step this was (1 on the first).
    pub attempt: u32,
}

/// Whether `step` fails every attempt at `rate`. A hash of the uuid, not a
/// random draw, so a second run (draining the first's leftovers) agrees.
pub fn fails(step: Uuid, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // splitmix64's finaliser: v4 uuids are random already, but their version
    // and variant bits are not, so mix before taking a uniform fraction.
    let (hi, lo) = step.as_u64_pair();
    let mut z = hi ^ lo.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// The lease a worker takes. Failing steps come back only when it ends, so a
/// failing run uses a short one (still covering a received batch's work);
/// otherwise the configured default, since a stop releases leases anyway.
pub fn lease_for(settings: &Settings, default: Duration) -> Duration {
    if settings.fail_rate > 0.0 {
        let batch_work = settings.work * 2 * RECEIVE_BATCH as u32;
        Duration::from_secs(batch_work.as_secs_f64().ceil().max(1.0) as u64)
    } else {
        default
    }
}

/// Counters and tallies the tasks share.
#[derive(Default)]
struct Shared {
    interrupted: AtomicBool,
    /// Set when interrupted, finished or failed: workers stop receiving.
    stop: AtomicBool,
    enqueue_done: AtomicBool,
    workers_done: AtomicBool,
    sent: AtomicU64,
    /// Steps a worker holds: received and not yet deleted, dropped or released.
    in_flight: AtomicU64,
    completions_sent: AtomicU64,
    /// This run's completion messages taken off the results queue (duplicates included).
    completions_received: AtomicU64,
    /// Distinct steps whose completion arrived.
    processed: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    lease_lost: AtomicU64,
    released: AtomicU64,
    stale_results: AtomicU64,
    last_delivery_ms: AtomicU64,
    failing: Mutex<HashSet<Uuid>>,
    tally: Mutex<Tally>,
    fatal: Mutex<Option<MessagingError>>,
}

#[derive(Default)]
struct Tally {
    by_step: HashMap<Uuid, u32>,
    /// Completion messages counted already: a redelivered one is not a duplicate step.
    seen: HashSet<MessageId>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct Ctx {
    /// The backend the enqueuer and the monitor use: the newest crew's.
    current: Mutex<Arc<MessageBackend>>,
    /// The crews running: one at first, two while switching backends.
    crews: Mutex<Vec<Arc<Crew>>>,
    settings: Settings,
    run_id: Uuid,
    queues: Vec<String>,
    results: String,
    dlq_suffix: String,
    lease: Duration,
    /// Without deliveries for this long, no lease of ours can still be out.
    quiet: Duration,
    epoch: Instant,
    shared: Shared,
}

/// One process's share of the run: its connection, and the workers and
/// results consumers that use it. A switch to another backend (a new
/// configuration rolled out) starts a new crew, then stops the old one.
struct Crew {
    backend: Arc<MessageBackend>,
    /// Set when this crew alone is stopped: like an interrupt, for its tasks.
    stop: AtomicBool,
    workers: Mutex<JoinSet<()>>,
    results: Mutex<JoinSet<()>>,
}

impl Crew {
    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Stops this crew's tasks and waits for them: steps in progress
    /// finish, the rest are released.
    async fn stop_and_join(&self) {
        self.stop.store(true, Relaxed);
        join_all(&self.workers).await;
        join_all(&self.results).await;
    }
}

/// Awaits every task of `set`, passing on a panic.
async fn join_all(set: &Mutex<JoinSet<()>>) {
    let mut set = std::mem::take(&mut *lock(set));
    while let Some(joined) = set.join_next().await {
        joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
}

impl Ctx {
    /// The newest crew's backend.
    fn backend(&self) -> Arc<MessageBackend> {
        Arc::clone(&lock(&self.current))
    }

    /// Starts a crew on `backend`: workers for every queue and the results
    /// consumers, all using that backend.
    fn start_crew(self: &Arc<Self>, backend: Arc<MessageBackend>) -> Arc<Crew> {
        let crew = Arc::new(Crew {
            backend: Arc::clone(&backend),
            stop: AtomicBool::new(false),
            workers: Mutex::default(),
            results: Mutex::default(),
        });
        for _ in 0..RESULTS_CONSUMERS {
            lock(&crew.results).spawn(consume_results(Arc::clone(self), Arc::clone(&crew)));
        }
        for queue in 0..self.queues.len() {
            for _ in 0..self.settings.workers {
                lock(&crew.workers).spawn(work(Arc::clone(self), Arc::clone(&crew), queue));
            }
        }
        *lock(&self.current) = backend;
        lock(&self.crews).push(Arc::clone(&crew));
        crew
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Relaxed)
    }

    fn interrupted(&self) -> bool {
        self.shared.interrupted.load(Relaxed)
    }

    fn mark_delivery(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.shared.last_delivery_ms.store(ms, Relaxed);
    }

    fn since_last_delivery(&self) -> Duration {
        let last = Duration::from_millis(self.shared.last_delivery_ms.load(Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn dlq(&self, queue: &str) -> String {
        format!("{queue}{}", self.dlq_suffix)
    }

    /// Records the first error that ends the run and stops every task.
    fn fail(&self, error: MessagingError) {
        lock(&self.shared.fatal).get_or_insert(error);
        self.shared.stop.store(true, Relaxed);
    }

    /// Whether to go on after `error`: transient ones are logged and waited out.
    async fn tolerate(&self, what: &str, error: MessagingError) -> bool {
        if error.is_transient() {
            eprintln!("warning: {what}: {error} (retrying)");
            tokio::time::sleep(Duration::from_millis(500)).await;
            true
        } else {
            self.fail(error);
            false
        }
    }

    async fn work_stats(&self) -> Result<Vec<QueueStats>, MessagingError> {
        let mut stats = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            stats.push(self.backend().get_queue_stats(queue).await?);
        }
        Ok(stats)
    }

    /// Done when nothing is held or queued and every step is accounted for
    /// (completed or dead-lettered); or, for leftovers the start count could
    /// not see, when no delivery came for longer than a lease.
    fn finished(&self, stats: &[QueueStats], dead: u64, target: u64) -> bool {
        let s = &self.shared;
        if !s.enqueue_done.load(Relaxed)
            || s.in_flight.load(Relaxed) != 0
            || s.completions_received.load(Relaxed) < s.completions_sent.load(Relaxed)
        {
            return false;
        }
        let empty = stats
            .iter()
            .all(|q| q.message_count == 0 && q.in_flight_count.unwrap_or(0) == 0);
        empty
            && (s.processed.load(Relaxed) + dead >= target
                || self.since_last_delivery() >= self.quiet)
    }
}

/// Stops a run from outside (a signal handler, a test) and reads its progress.
#[derive(Clone)]
pub struct Handle(Arc<Ctx>);

impl Handle {
    /// Asks the run to stop: no new receives; in-flight steps finish, steps
    /// received but not started are released. Returns false if already asked.
    pub fn interrupt(&self) -> bool {
        let first = !self.0.shared.interrupted.swap(true, Relaxed);
        self.0.shared.stop.store(true, Relaxed);
        first
    }

    /// Distinct steps completed so far.
    pub fn processed(&self) -> u64 {
        self.0.shared.processed.load(Relaxed)
    }

    /// Steps workers hold right now: received, not yet deleted or released.
    pub fn in_flight(&self) -> u64 {
        self.0.shared.in_flight.load(Relaxed)
    }

    /// Rolls the run over to `backend`, as a fleet rolls out a new
    /// configuration: creates the queues through it (as a process starting
    /// on it would), starts workers and results consumers on it and sends
    /// new steps through it, then stops the previous ones (their steps in
    /// progress finish, the rest are released) and returns once they are
    /// gone. The run's tally is shared, so the summary covers every crew.
    pub async fn switch_to(&self, backend: Arc<MessageBackend>) -> Result<(), MessagingError> {
        let ctx = &self.0;
        for queue in ctx.queues.iter().chain([&ctx.results]) {
            backend.create_queue(queue).await?;
        }
        let old: Vec<Arc<Crew>> = lock(&ctx.crews).clone();
        let new = ctx.start_crew(backend);
        for crew in old {
            crew.stop_and_join().await;
        }
        lock(&ctx.crews).retain(|crew| Arc::ptr_eq(crew, &new));
        Ok(())
    }
}

/// One run over the queues of a backend's `[queues]` section.
pub struct Orchestrator {
    ctx: Arc<Ctx>,
}

impl Orchestrator {
    /// Plans a run: the namespace queues come from the backend's `[queues]`
    /// `namespaces` through its `namespace_pattern`. No I/O yet.
    pub fn new(backend: Arc<MessageBackend>, settings: Settings) -> Result<Self, MessagingError> {
        let config = backend.queues_config().clone();
        if config.namespaces.is_empty() {
            return Err(MessagingError::Config(
                "queues.namespaces is empty: the orchestrator needs a namespace to run".into(),
            ));
        }
        if settings.workers == 0 {
            return Err(MessagingError::InvalidArgument(
                "workers must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&settings.fail_rate) {
            return Err(MessagingError::InvalidArgument(format!(
                "fail rate must be between 0 and 1 (got {})",
                settings.fail_rate
            )));
        }
        let router = NamespaceQueueRouter::new(&config.namespace_pattern);
        let queues: Vec<String> = config
            .namespaces
            .iter()
            .map(|ns| router.route_to_queue(ns, "SimpleStepMessage"))
            .collect();
        let results = router.route_to_queue(RESULTS_NAMESPACE, "StepCompleted");
        if queues.contains(&results) {
            return Err(MessagingError::Config(format!(
                "queues.namespaces: `{RESULTS_NAMESPACE}` is the orchestrator's results queue"
            )));
        }
        let lease = lease_for(&settings, config.default_visibility_timeout());
        // A lease that ran out is seen within one fallback poll; a failing
        // step may wait out its longest backoff first (workers::backoff).
        let longest = if settings.fail_rate > 0.0 {
            workers::backoff(lease, config.max_receive_count)
        } else {
            lease
        };
        let quiet = longest + 2 * config.wait_poll_interval() + Duration::from_secs(1);
        let ctx = Ctx {
            current: Mutex::new(backend),
            crews: Mutex::default(),
            settings,
            run_id: Uuid::new_v4(),
            queues,
            results,
            dlq_suffix: config.dead_letter_queue_suffix,
            lease,
            quiet,
            epoch: Instant::now(),
            shared: Shared::default(),
        };
        Ok(Self { ctx: Arc::new(ctx) })
    }

    /// A handle to stop the run or watch it.
    pub fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.ctx))
    }

    /// The namespace queues, then the results queue.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = self.ctx.queues.clone();
        names.push(self.ctx.results.clone());
        names
    }

    /// The lease each worker takes.
    pub fn lease(&self) -> Duration {
        self.ctx.lease
    }

    /// Runs to completion, or until interrupted, and reports.
    ///
    /// Steps already waiting in the namespace queues (left by a stopped run)
    /// are drained with the new ones, so `messages: 0` only drains.
    pub async fn run(self) -> Result<Summary, MessagingError> {
        let ctx = self.ctx;
        let backend = ctx.backend();
        for queue in ctx.queues.iter().chain([&ctx.results]) {
            backend.create_queue(queue).await?;
        }
        let before = ctx.work_stats().await?;
        let found_at_start: u64 = before.iter().map(waiting).sum();
        let dlq_base: u64 = before
            .iter()
            .map(|s| s.dead_letter_count.unwrap_or(0))
            .sum();
        let target = found_at_start + ctx.settings.messages;
        if found_at_start > 0 && ctx.settings.progress.is_some() {
            eprintln!("found {found_at_start} steps already queued: draining them too");
        }

        let started = Instant::now();
        ctx.mark_delivery();
        ctx.start_crew(Arc::clone(&backend));
        let enqueuer = tokio::spawn(enqueue(Arc::clone(&ctx)));

        let finished_after = monitor(&ctx, target, dlq_base, started).await;
        let elapsed = finished_after.unwrap_or_else(|| started.elapsed());

        ctx.shared.stop.store(true, Relaxed);
        let own_steps = enqueuer
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let crews: Vec<Arc<Crew>> = lock(&ctx.crews).clone();
        for crew in &crews {
            join_all(&crew.workers).await;
        }
        ctx.shared.workers_done.store(true, Relaxed);
        for crew in &crews {
            join_all(&crew.results).await;
        }
        if let Some(error) = lock(&ctx.shared.fatal).take() {
            return Err(error);
        }

        // The last crew's backend: where the run ended.
        let backend = ctx.backend();
        let mut queue_stats = Vec::new();
        let mut dead_now = 0;
        let mut left = 0;
        for queue in &ctx.queues {
            let stats = backend.get_queue_stats(queue).await;
            if let Ok(s) = &stats {
                dead_now += s.dead_letter_count.unwrap_or(0);
                left += waiting(s);
            }
            queue_stats.push((queue.clone(), stats.map_err(|e| e.to_string())));
            let dlq = ctx.dlq(queue);
            let stats = backend.get_queue_stats(&dlq).await;
            queue_stats.push((dlq, stats.map_err(|e| e.to_string())));
        }
        let stats = backend.get_queue_stats(&ctx.results).await;
        queue_stats.push((ctx.results.clone(), stats.map_err(|e| e.to_string())));

        let s = &ctx.shared;
        let tally = lock(&s.tally);
        let own: HashSet<Uuid> = own_steps.iter().copied().collect();
        let missing = own_steps
            .iter()
            .filter(|step| {
                !fails(**step, ctx.settings.fail_rate) && !tally.by_step.contains_key(*step)
            })
            .count() as u64;
        let processed_leftover = tally
            .by_step
            .keys()
            .filter(|step| !own.contains(*step))
            .count() as u64;
        let processed = tally.by_step.len() as u64;
        drop(tally);
        let failing_seen = lock(&s.failing).len() as u64;
        let summary = Summary {
            provider: backend.provider(),
            run_id: ctx.run_id,
            interrupted: ctx.interrupted(),
            sent: s.sent.load(Relaxed),
            failing_sent: own_steps
                .iter()
                .filter(|step| fails(**step, ctx.settings.fail_rate))
                .count() as u64,
            found_at_start,
            processed,
            processed_leftover,
            duplicates: s.duplicates.load(Relaxed),
            dead_lettered: dead_now.saturating_sub(dlq_base),
            failing_seen,
            missing,
            left_in_queues: left,
            unaccounted_completions: s
                .completions_sent
                .load(Relaxed)
                .saturating_sub(s.completions_received.load(Relaxed)),
            lease_lost: s.lease_lost.load(Relaxed),
            released: s.released.load(Relaxed),
            stale_results: s.stale_results.load(Relaxed),
            lease: ctx.lease,
            elapsed,
            queue_stats,
        };
        Ok(summary)
    }
}

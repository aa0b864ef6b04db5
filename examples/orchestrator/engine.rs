//! The orchestrator's core loop: queues, enqueuer, workers, the results check
//! and the summary. `main.rs` wraps it in a command line; `tests/orchestrator.rs`
//! includes this file with `#[path]` and runs it against every provider.

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
    NamespaceQueueRouter, Provider, QueueMessage, QueueStats, QueuedMessage, SimpleStepMessage,
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

impl QueueMessage for StepCompleted {
    fn message_type(&self) -> &str {
        "StepCompleted"
    }

    fn correlation_id(&self) -> Option<String> {
        Some(self.task_uuid.to_string())
    }
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
    backend: Arc<MessageBackend>,
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

impl Ctx {
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
            stats.push(self.backend.get_queue_stats(queue).await?);
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
        // A lease that ran out is seen within one fallback poll.
        let quiet = lease + 2 * config.wait_poll_interval() + Duration::from_secs(1);
        let ctx = Ctx {
            backend,
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
        let backend = &ctx.backend;
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
        let mut results = JoinSet::new();
        for _ in 0..RESULTS_CONSUMERS {
            results.spawn(consume_results(Arc::clone(&ctx)));
        }
        let mut workers = JoinSet::new();
        for queue in 0..ctx.queues.len() {
            for _ in 0..ctx.settings.workers {
                workers.spawn(work(Arc::clone(&ctx), queue));
            }
        }
        let enqueuer = tokio::spawn(enqueue(Arc::clone(&ctx)));

        let finished_after = monitor(&ctx, target, dlq_base, started).await;
        let elapsed = finished_after.unwrap_or_else(|| started.elapsed());

        ctx.shared.stop.store(true, Relaxed);
        let own_steps = enqueuer
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        while let Some(joined) = workers.join_next().await {
            joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        ctx.shared.workers_done.store(true, Relaxed);
        while let Some(joined) = results.join_next().await {
            joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        if let Some(error) = lock(&ctx.shared.fatal).take() {
            return Err(error);
        }

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

/// Steps a queue holds, ready or leased (a provider that cannot count leases
/// counts them as 0).
fn waiting(stats: &QueueStats) -> u64 {
    stats.message_count + stats.in_flight_count.unwrap_or(0)
}

/// Watches the run, prints progress, and returns the time to completion, or
/// `None` when interrupted or failed.
async fn monitor(ctx: &Ctx, target: u64, dlq_base: u64, started: Instant) -> Option<Duration> {
    let s = &ctx.shared;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let every = ctx.settings.progress;
    let mut next_progress = every.map(|e| started + e);
    let (mut last_processed, mut last_at) = (0, started);
    loop {
        ticks.tick().await;
        if ctx.stopping() {
            return None;
        }
        match ctx.work_stats().await {
            Ok(stats) => {
                let dead: u64 = stats.iter().map(|q| q.dead_letter_count.unwrap_or(0)).sum();
                let dead = dead.saturating_sub(dlq_base);
                s.dead_lettered.store(dead, Relaxed);
                if ctx.finished(&stats, dead, target) {
                    return Some(started.elapsed());
                }
            }
            Err(error) => {
                if !ctx.tolerate("queue stats", error).await {
                    return None;
                }
            }
        }
        let now = Instant::now();
        if let (Some(every), Some(due)) = (every, next_progress) {
            if now >= due {
                let processed = s.processed.load(Relaxed);
                let rate = (processed - last_processed) as f64 / (now - last_at).as_secs_f64();
                eprintln!(
                    "[{:>6.1}s] {}: processed {processed}/{target} ({rate:.0} msg/s), \
                     dead-lettered {}, in flight {}, duplicates {}",
                    (now - started).as_secs_f64(),
                    ctx.backend.provider(),
                    s.dead_lettered.load(Relaxed),
                    s.in_flight.load(Relaxed),
                    s.duplicates.load(Relaxed),
                );
                (last_processed, last_at) = (processed, now);
                next_progress = Some(due + every);
            }
        }
    }
}

/// Sends the run's steps in batches, round robin over the namespace queues,
/// and returns the ids of those sent.
async fn enqueue(ctx: Arc<Ctx>) -> Vec<Uuid> {
    let total = ctx.settings.messages as usize;
    let mut sent = Vec::with_capacity(total);
    let mut task = Uuid::new_v4();
    let mut round = 0;
    while sent.len() < total && !ctx.stopping() {
        let queue = &ctx.queues[round % ctx.queues.len()];
        let steps: Vec<SimpleStepMessage> = (sent.len()..total.min(sent.len() + SEND_BATCH))
            .map(|i| {
                if i % STEPS_PER_TASK == 0 {
                    task = Uuid::new_v4();
                }
                SimpleStepMessage::new(task, Uuid::new_v4())
            })
            .collect();
        // A failed send is retried with the same steps: at-least-once, so a
        // partly sent batch shows up as duplicates, never as a loss.
        loop {
            match ctx.backend.send_batch(queue, &steps).await {
                Ok(_) => {
                    sent.extend(steps.iter().map(|step| step.step_uuid));
                    ctx.shared.sent.fetch_add(steps.len() as u64, Relaxed);
                    break;
                }
                Err(error) => {
                    if !ctx.tolerate("send_batch", error).await || ctx.stopping() {
                        ctx.shared.enqueue_done.store(true, Relaxed);
                        return sent;
                    }
                }
            }
        }
        round += 1;
    }
    ctx.shared.enqueue_done.store(true, Relaxed);
    sent
}

/// One worker on one namespace queue: wait for steps, run them, report, delete.
async fn work(ctx: Arc<Ctx>, queue: usize) {
    let queue = ctx.queues[queue].as_str();
    while !ctx.stopping() {
        let steps = match ctx
            .backend
            .receive_messages_wait::<SimpleStepMessage>(
                queue,
                RECEIVE_BATCH,
                ctx.lease,
                RECEIVE_WAIT,
            )
            .await
        {
            Ok(steps) => steps,
            Err(error) => {
                if ctx.tolerate("receive", error).await {
                    continue;
                }
                return;
            }
        };
        if steps.is_empty() {
            continue;
        }
        ctx.mark_delivery();
        ctx.shared.in_flight.fetch_add(steps.len() as u64, Relaxed);
        run_steps(&ctx, queue, steps).await;
    }
}

async fn run_steps(ctx: &Ctx, queue: &str, steps: Vec<QueuedMessage<SimpleStepMessage>>) {
    let s = &ctx.shared;
    let mut done = Vec::with_capacity(steps.len());
    let mut steps = steps.into_iter();
    while let Some(step) = steps.next() {
        if ctx.interrupted() {
            release(ctx, queue, std::iter::once(step).chain(steps.by_ref())).await;
            break;
        }
        if !ctx.settings.work.is_zero() {
            tokio::time::sleep(ctx.settings.work).await;
        }
        if fails(step.message.step_uuid, ctx.settings.fail_rate) {
            // Not deleted: the lease runs out, the step comes back, and after
            // max_receive_count deliveries it moves to the dead-letter queue.
            lock(&s.failing).insert(step.message.step_uuid);
            s.in_flight.fetch_sub(1, Relaxed);
            continue;
        }
        done.push(step);
    }
    if done.is_empty() {
        return;
    }
    // Report before deleting: a crash between the two runs the step again (a
    // duplicate the results check counts) instead of losing its completion.
    let completions: Vec<StepCompleted> = done
        .iter()
        .map(|step| StepCompleted {
            run_id: ctx.run_id,
            task_uuid: step.message.task_uuid,
            step_uuid: step.message.step_uuid,
            attempt: step.metadata.receive_count,
        })
        .collect();
    if let Err(error) = ctx.backend.send_batch(&ctx.results, &completions).await {
        // Not deleted either: the steps come back when their leases end.
        s.in_flight.fetch_sub(done.len() as u64, Relaxed);
        ctx.tolerate("send completions", error).await;
        return;
    }
    s.completions_sent
        .fetch_add(completions.len() as u64, Relaxed);
    for step in &done {
        match ctx.backend.delete_message(queue, step.receipt()).await {
            Ok(()) => {}
            // The lease ran out before the delete: the step is delivered
            // again, and its second completion counts as a duplicate.
            Err(MessagingError::LeaseExpired { .. }) => {
                s.lease_lost.fetch_add(1, Relaxed);
            }
            Err(error) if error.is_transient() => {
                eprintln!("warning: delete: {error} (the step comes back when its lease ends)");
            }
            Err(error) => ctx.fail(error),
        }
        s.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Hands steps not started back to the queue at once (visibility 0), so the
/// next run gets them without waiting out the lease.
async fn release(
    ctx: &Ctx,
    queue: &str,
    steps: impl Iterator<Item = QueuedMessage<SimpleStepMessage>>,
) {
    for step in steps {
        match ctx
            .backend
            .change_message_visibility(queue, step.receipt(), Duration::ZERO)
            .await
        {
            Ok(()) => {
                ctx.shared.released.fetch_add(1, Relaxed);
            }
            // Already back in the queue.
            Err(MessagingError::LeaseExpired { .. }) => {}
            Err(error) => {
                eprintln!("warning: release: {error} (the step comes back when its lease ends)")
            }
        }
        ctx.shared.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Takes completions off the results queue and tallies them by step, until
/// the workers are done and every completion they sent has arrived.
async fn consume_results(ctx: Arc<Ctx>) {
    let s = &ctx.shared;
    let lease = Duration::from_secs(30);
    let mut idle_after_workers = 0;
    loop {
        let completions = match ctx
            .backend
            .receive_messages_wait::<StepCompleted>(
                &ctx.results,
                RESULTS_BATCH,
                lease,
                RECEIVE_WAIT,
            )
            .await
        {
            Ok(completions) => completions,
            Err(error) => {
                if ctx.tolerate("receive results", error).await {
                    continue;
                }
                return;
            }
        };
        if completions.is_empty() {
            if s.workers_done.load(Relaxed) {
                let caught_up =
                    s.completions_received.load(Relaxed) >= s.completions_sent.load(Relaxed);
                idle_after_workers += 1;
                // Give up on a completion that never arrives after ~10 s; the
                // summary reports it as unaccounted.
                if caught_up || idle_after_workers >= 20 || lock(&s.fatal).is_some() {
                    return;
                }
            }
            continue;
        }
        for completion in completions {
            {
                let mut tally = lock(&s.tally);
                let done = &completion.message;
                if !tally.seen.insert(completion.metadata.message_id.clone()) {
                    // The same completion message again: already counted.
                } else if done.run_id != ctx.run_id {
                    s.stale_results.fetch_add(1, Relaxed);
                } else {
                    s.completions_received.fetch_add(1, Relaxed);
                    let count = tally.by_step.entry(done.step_uuid).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        s.processed.fetch_add(1, Relaxed);
                    } else {
                        s.duplicates.fetch_add(1, Relaxed);
                    }
                }
            }
            match ctx
                .backend
                .delete_message(&ctx.results, completion.receipt())
                .await
            {
                Ok(()) | Err(MessagingError::LeaseExpired { .. }) => {}
                Err(error) if error.is_transient() => {
                    eprintln!("warning: delete completion: {error}");
                }
                Err(error) => ctx.fail(error),
            }
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// The provider the run used.
    pub provider: Provider,
    /// The run's id, carried in its completions.
    pub run_id: Uuid,
    /// Stopped by a signal (or `Handle::interrupt`) before it was done.
    pub interrupted: bool,
    /// Steps this run enqueued.
    pub sent: u64,
    /// Of those, steps that fail on every attempt.
    pub failing_sent: u64,
    /// Steps already in the namespace queues at the start (drained too).
    pub found_at_start: u64,
    /// Distinct steps completed.
    pub processed: u64,
    /// Of those, steps this run did not enqueue (left by an earlier run).
    pub processed_leftover: u64,
    /// Completions beyond the first for a step.
    pub duplicates: u64,
    /// Steps moved to the dead-letter queues during the run (from their stats).
    pub dead_lettered: u64,
    /// Distinct steps that failed on purpose in this run.
    pub failing_seen: u64,
    /// Steps this run sent that should have completed and did not.
    pub missing: u64,
    /// Steps still in the namespace queues at the end, ready or leased.
    pub left_in_queues: u64,
    /// Completions sent that never arrived on the results queue.
    pub unaccounted_completions: u64,
    /// Deletes refused because the lease had run out (the step ran again).
    pub lease_lost: u64,
    /// Steps received but not started, released at a stop.
    pub released: u64,
    /// Completions of other runs found on the results queue.
    pub stale_results: u64,
    /// The lease workers took.
    pub lease: Duration,
    /// Time until every step was accounted for (or until the stop).
    pub elapsed: Duration,
    /// Stats of each namespace queue, its dead-letter queue, and the results queue.
    pub queue_stats: Vec<(String, Result<QueueStats, String>)>,
}

impl Summary {
    /// Every step sent completed, exactly the failing ones were dead-lettered
    /// (checked strictly when no leftovers were drained), nothing unaccounted.
    pub fn ok(&self) -> bool {
        !self.interrupted
            && self.missing == 0
            && self.unaccounted_completions == 0
            && (self.found_at_start > 0 || self.dead_lettered == self.failing_seen)
    }

    /// Distinct steps completed per second.
    pub fn rate(&self) -> f64 {
        self.processed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = self.run_id.simple().to_string();
        writeln!(
            f,
            "== orchestrator summary: {}, run {} ==",
            self.provider,
            &run[..8]
        )?;
        writeln!(
            f,
            "sent           {} steps ({} failing on purpose)",
            self.sent, self.failing_sent
        )?;
        writeln!(
            f,
            "found at start {} steps already queued",
            self.found_at_start
        )?;
        writeln!(
            f,
            "processed      {} distinct steps ({} of them left by an earlier run)",
            self.processed, self.processed_leftover
        )?;
        writeln!(f, "duplicates     {}", self.duplicates)?;
        writeln!(
            f,
            "dead-lettered  {} (failing steps seen: {})",
            self.dead_lettered, self.failing_seen
        )?;
        if self.interrupted {
            let next = match self.provider {
                Provider::InMemory => "in memory, they end with this process",
                _ => "the next run drains them",
            };
            writeln!(f, "left queued    {} steps ({next})", self.left_in_queues)?;
        } else {
            writeln!(f, "missing        {}", self.missing)?;
        }
        writeln!(
            f,
            "throughput     {:.0} msg/s ({} steps in {:.2} s, lease {} s)",
            self.rate(),
            self.processed,
            self.elapsed.as_secs_f64(),
            self.lease.as_secs()
        )?;
        writeln!(
            f,
            "notes          {} leases lost, {} released at stop, {} stale completions, {} unaccounted",
            self.lease_lost, self.released, self.stale_results, self.unaccounted_completions
        )?;
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        writeln!(
            f,
            "{:<40} {:>7} {:>9} {:>12} {:>7}",
            "queue", "ready", "in flight", "dead letters", "oldest"
        )?;
        for (name, stats) in &self.queue_stats {
            match stats {
                Ok(s) => writeln!(
                    f,
                    "{name:<40} {:>7} {:>9} {:>12} {:>7}",
                    s.message_count,
                    opt(s.in_flight_count),
                    opt(s.dead_letter_count),
                    s.oldest_message_age_seconds
                        .map_or_else(|| "-".to_owned(), |a| format!("{a}s")),
                )?,
                Err(error) => writeln!(f, "{name:<40} stats failed: {error}")?,
            }
        }
        let verdict = if self.interrupted {
            "STOPPED: steps in progress finished, the rest left queued"
        } else if self.ok() {
            "OK: every step completed or was dead-lettered as planned"
        } else {
            "FAILED: see missing, dead-lettered and unaccounted above"
        };
        write!(f, "result         {verdict}")
    }
}

/// Wake-up latency of `receive_messages_wait`, in milliseconds.
#[derive(Debug)]
pub struct WakeUp {
    /// From a send returning to the waiting receive returning; negative when
    /// the receive returned first (a broker can deliver before it confirms).
    pub after_send: Vec<f64>,
    /// How long each send took.
    pub send: Vec<f64>,
}

impl WakeUp {
    /// The middle value of `values` (sorted copy).
    pub fn median(values: &[f64]) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for WakeUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.after_send.clone();
        sorted.sort_by(f64::total_cmp);
        let from_start: Vec<f64> = self
            .after_send
            .iter()
            .zip(&self.send)
            .map(|(a, s)| a + s)
            .collect();
        write!(
            f,
            "receive_messages_wait wake-up, {} samples: median {:.2} ms after the send returned \
             (min {:.2}, max {:.2}), {:.2} ms after it began (the send took {:.2} ms)",
            sorted.len(),
            Self::median(&sorted),
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
            Self::median(&from_start),
            Self::median(&self.send),
        )
    }
}

/// Measures how soon a receive parked in `receive_messages_wait` returns once
/// a message is sent, on a scratch queue (`queue`, deleted afterwards).
pub async fn measure_wake_up(
    backend: Arc<MessageBackend>,
    queue: &str,
    samples: usize,
) -> Result<WakeUp, MessagingError> {
    backend.create_queue(queue).await?;
    backend.purge_queue(queue).await?;
    let (woke, mut wakes) = mpsc::unbounded_channel();
    let receiver = {
        let (backend, queue) = (Arc::clone(&backend), queue.to_owned());
        tokio::spawn(async move {
            let mut got_count = 0;
            while got_count < samples {
                let got = backend
                    .receive_messages_wait::<SimpleStepMessage>(
                        &queue,
                        1,
                        Duration::from_secs(30),
                        Duration::from_secs(10),
                    )
                    .await?;
                let at = Instant::now();
                for message in &got {
                    let _ = woke.send(at);
                    backend.delete_message(&queue, message.receipt()).await?;
                    got_count += 1;
                }
            }
            Ok::<_, MessagingError>(())
        })
    };
    let mut result = WakeUp {
        after_send: Vec::with_capacity(samples),
        send: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        // Long enough for the receiver to delete the last probe and park again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
        let before = Instant::now();
        backend.send_message(queue, &step).await?;
        let sent = Instant::now();
        let Some(woke_at) = wakes.recv().await else {
            break;
        };
        let signed_ms = |a: Instant, b: Instant| match a.checked_duration_since(b) {
            Some(d) => d.as_secs_f64() * 1e3,
            None => -(b - a).as_secs_f64() * 1e3,
        };
        result.after_send.push(signed_ms(woke_at, sent));
        result.send.push(signed_ms(sent, before));
    }
    receiver
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    backend.delete_queue(queue).await?;
    Ok(result)
}

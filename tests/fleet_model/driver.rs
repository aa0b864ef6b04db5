//! The fleet: a few processes, each running a few workers that make random
//! calls on two queues, dropping some of them mid-flight and passing receipts
//! around; then a final drain, and the history for the checker.
//!
//! Queue 0 is never purged or deleted, so a loss there has no excuse; queue
//! 1 is also purged and deleted and re-created now and then.

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tasker_messaging::{
    conformance::unique_queue, MessageBackend, MessagingError, MessagingService, QueuedMessage,
    ReceiptHandle, SimpleStepMessage,
};
use uuid::Uuid;

use crate::history::{Delivery, Event, History, Outcome, Settle, Span};

/// Every lease the fleet takes.
pub const LEASE: Duration = Duration::from_secs(1);
/// The longest lease an extension sets (an extension never shortens one).
const LONGEST_LEASE: Duration = Duration::from_secs(2);
/// Receipts kept for reuse, at most.
const KEPT_RECEIPTS: usize = 64;

/// What a run does; the switches turn off one source of uncertainty each.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub run_for: Duration,
    pub workers_per_process: usize,
    /// The share of calls dropped mid-flight.
    pub cancel_rate: f64,
    /// Use receipts through other processes than their holder's.
    pub cross_receipts: bool,
    /// Delete and re-create queue 1.
    pub recreate: bool,
    /// Purge queue 1.
    pub purge: bool,
}

/// A receipt a worker may use again, with the lease it names.
#[derive(Clone)]
struct Kept {
    lease: usize,
    backend: usize,
    queue: usize,
    receipt: ReceiptHandle,
}

struct Shared {
    t0: Instant,
    queues: [String; 2],
    history: Mutex<History>,
    kept: Mutex<Vec<Kept>>,
    plan: Plan,
}

impl Shared {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn record(&self, event: Event) {
        self.history.lock().unwrap().events.push(event);
    }
}

/// What a run produced.
pub struct Run {
    pub history: History,
    /// Calls made, and how many were dropped mid-flight.
    pub calls: usize,
    pub cancelled: usize,
}

/// Runs `plan` with `processes` (each an independently connected backend on
/// the same queues), then drains every queue through `drain`, a backend no
/// worker used.
pub async fn run(processes: Vec<MessageBackend>, drain: MessageBackend, plan: Plan) -> Run {
    let queues = [
        unique_queue("fleet_model_steady"),
        unique_queue("fleet_model_chaos"),
    ];
    for queue in &queues {
        drain.create_queue(queue).await.expect("create_queue");
    }
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        queues,
        history: Mutex::new(History {
            exact_receive_count: processes
                .iter()
                .all(|p| p.capabilities().exact_receive_count),
            ..History::default()
        }),
        kept: Mutex::new(Vec::new()),
        plan: plan.clone(),
    });
    let processes: Vec<Arc<MessageBackend>> = processes.into_iter().map(Arc::new).collect();
    let mut workers = Vec::new();
    for (p, backend) in processes.iter().enumerate() {
        for w in 0..plan.workers_per_process {
            let rng = StdRng::seed_from_u64(plan.seed ^ (((p * 16 + w) as u64 + 1) * 0x9E37_79B9));
            let worker = Worker {
                shared: Arc::clone(&shared),
                backend: Arc::clone(backend),
                index: p,
                rng,
            };
            workers.push(tokio::spawn(worker.run()));
        }
    }
    let mut calls = 0;
    let mut cancelled = 0;
    for worker in workers {
        let (c, x) = worker.await.expect("a worker panicked");
        calls += c;
        cancelled += x;
    }
    // Every lease ends (the longest an extension set), and the processes
    // go: a lease or consumer they still hold goes back to the queue.
    drop(processes);
    tokio::time::sleep(LONGEST_LEASE + Duration::from_millis(500)).await;
    for q in 0..2 {
        drain_queue(&shared, &drain, q).await;
    }
    for queue in &shared.queues {
        tokio::time::timeout(HUNG, drain.delete_queue(queue))
            .await
            .unwrap_or_else(|_| panic!("delete_queue({queue}) hung"))
            .expect("delete_queue");
    }
    let history = std::mem::take(&mut *shared.history.lock().unwrap());
    Run {
        history,
        calls,
        cancelled,
    }
}

/// Receives everything left on queue `q`, under leases no check outlives,
/// until nothing has come for a second.
async fn drain_queue(shared: &Shared, drain: &MessageBackend, q: usize) {
    let queue = &shared.queues[q];
    // A re-creation may have been dropped half-way.
    tokio::time::timeout(HUNG, drain.create_queue(queue))
        .await
        .unwrap_or_else(|_| panic!("the drain's create_queue({queue}) hung"))
        .expect("create_queue");
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(1) {
        let start = shared.now();
        let got = tokio::time::timeout(
            HUNG,
            drain.receive_messages::<SimpleStepMessage>(queue, 10, Duration::from_secs(120)),
        )
        .await
        .unwrap_or_else(|_| panic!("the drain's receive on {queue} hung"))
        .unwrap_or_else(|e| panic!("drain of {queue}: {e}"));
        let span = Span {
            start,
            end: shared.now(),
        };
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        idle_since = Instant::now();
        let mut history = shared.history.lock().unwrap();
        for m in got {
            history.deliveries.push(delivery(
                usize::MAX,
                q,
                &m,
                span,
                Duration::from_secs(120),
                true,
            ));
        }
    }
}

fn delivery(
    backend: usize,
    queue: usize,
    m: &QueuedMessage<SimpleStepMessage>,
    span: Span,
    lease: Duration,
    drain: bool,
) -> Delivery {
    Delivery {
        backend,
        queue,
        payload: m.message.step_uuid,
        message_id: m.metadata.message_id.clone(),
        receive_count: m.metadata.receive_count,
        span,
        lease,
        drain,
    }
}

struct Worker {
    shared: Arc<Shared>,
    backend: Arc<MessageBackend>,
    index: usize,
    rng: StdRng,
}

/// How a call may be dropped.
#[derive(Clone, Copy)]
enum Cancel {
    /// After this long (a caller's `timeout`).
    After(Duration),
    /// After this many wake-ups: at one of the call's own I/O steps.
    AfterPolls(u32),
}

/// A call that takes longer than this hangs: the run reports it and stops.
const HUNG: Duration = Duration::from_secs(20);

/// Runs `call`, dropping it as `cancel` says; `None` when it was dropped.
/// A call that runs past [`HUNG`] is dropped too, and recorded as hung.
async fn maybe_cancel<T>(
    shared: &Shared,
    what: &str,
    call: impl Future<Output = T>,
    cancel: Option<Cancel>,
) -> Option<T> {
    let start = shared.now();
    let watched = async {
        match cancel {
            None => Some(call.await),
            Some(Cancel::After(after)) => tokio::time::timeout(after, call).await.ok(),
            Some(Cancel::AfterPolls(polls)) => {
                let mut call = pin!(call);
                let mut pending = 0;
                std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
                    Poll::Ready(value) => Poll::Ready(Some(value)),
                    Poll::Pending if pending >= polls => Poll::Ready(None),
                    Poll::Pending => {
                        pending += 1;
                        Poll::Pending
                    }
                })
                .await
            }
        }
    };
    match tokio::time::timeout(HUNG, watched).await {
        Ok(outcome) => outcome,
        Err(_) => {
            let mut history = shared.history.lock().unwrap();
            history.hung.push((start, what.to_string()));
            None
        }
    }
}

impl Worker {
    /// Makes random calls until the run's time is up; returns how many, and
    /// how many were dropped.
    async fn run(mut self) -> (usize, usize) {
        let mut calls = 0;
        let mut cancelled = 0;
        while self.shared.now() < self.shared.plan.run_for {
            let q = usize::from(self.rng.gen_bool(0.4));
            let cancel = self.rng.gen_bool(self.shared.plan.cancel_rate).then(|| {
                if self.rng.gen_bool(0.5) {
                    Cancel::After(Duration::from_micros(self.rng.gen_range(0..3_000)))
                } else {
                    Cancel::AfterPolls(self.rng.gen_range(0..4))
                }
            });
            let dropped = match self.rng.gen_range(0..100) {
                0..=17 => self.send(q, 1, cancel).await,
                18..=25 => {
                    let n = self.rng.gen_range(1..=4);
                    self.send(q, n, cancel).await
                }
                26..=43 => self.receive(q, Duration::ZERO, cancel).await,
                44..=50 => {
                    let wait = Duration::from_millis(self.rng.gen_range(0..300));
                    self.receive(q, wait, cancel).await
                }
                51..=64 => self.settle(q, 1, Settle::Delete, cancel).await,
                65..=71 => {
                    let n = self.rng.gen_range(1..=3);
                    self.settle(q, n, Settle::Delete, cancel).await
                }
                72..=76 => self.settle(q, 1, Settle::Extend, cancel).await,
                77..=81 => self.settle(q, 1, Settle::Release, cancel).await,
                82 if q == 1 && self.shared.plan.purge => self.purge(cancel).await,
                83 if q == 1 && self.shared.plan.recreate => self.recreate(cancel).await,
                _ => {
                    let pause = self.rng.gen_range(0..3);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            };
            calls += 1;
            cancelled += usize::from(dropped);
            if self.rng.gen_bool(0.3) {
                tokio::task::yield_now().await;
            }
        }
        (calls, cancelled)
    }

    fn span(&self, start: Duration) -> Span {
        Span {
            start,
            end: self.shared.now(),
        }
    }

    /// A missing queue (another worker is re-creating it) is created again.
    async fn on_missing<T>(&self, q: usize, result: &Option<Result<T, MessagingError>>) {
        if let Some(Err(MessagingError::QueueNotFound { .. })) = result {
            self.create(q, None).await;
        }
    }

    /// Creates queue `q` (creations are not part of the model: only
    /// deletions remove messages); true when the call was dropped.
    async fn create(&self, q: usize, cancel: Option<Cancel>) -> bool {
        let call = self.backend.create_queue(&self.shared.queues[q]);
        maybe_cancel(&self.shared, "create_queue", call, cancel)
            .await
            .is_none()
    }

    async fn send(&mut self, q: usize, n: usize, cancel: Option<Cancel>) -> bool {
        let messages: Vec<SimpleStepMessage> = (0..n)
            .map(|_| SimpleStepMessage::new(Uuid::nil(), Uuid::from_u128(self.rng.gen())))
            .collect();
        let queue = &self.shared.queues[q];
        let start = self.shared.now();
        let result = if n == 1 {
            maybe_cancel(
                &self.shared,
                "send_message",
                self.backend.send_message(queue, &messages[0]),
                cancel,
            )
            .await
            .map(|r| r.map(|id| vec![id]))
        } else {
            maybe_cancel(
                &self.shared,
                "send_batch",
                self.backend.send_batch(queue, &messages),
                cancel,
            )
            .await
        };
        self.shared.record(Event::Send {
            backend: self.index,
            queue: q,
            ids: messages.iter().map(|m| m.step_uuid).collect(),
            span: self.span(start),
            outcome: Outcome::of(&result),
        });
        self.on_missing(q, &result).await;
        result.is_none()
    }

    async fn receive(&mut self, q: usize, wait: Duration, cancel: Option<Cancel>) -> bool {
        let max = self.rng.gen_range(1..=4);
        let queue = &self.shared.queues[q];
        let start = self.shared.now();
        let result = if wait.is_zero() {
            maybe_cancel(
                &self.shared,
                "receive_messages",
                self.backend
                    .receive_messages::<SimpleStepMessage>(queue, max, LEASE),
                cancel,
            )
            .await
        } else {
            maybe_cancel(
                &self.shared,
                "receive_messages_wait",
                self.backend
                    .receive_messages_wait::<SimpleStepMessage>(queue, max, LEASE, wait),
                cancel,
            )
            .await
        };
        let span = self.span(start);
        if !matches!(result, Some(Ok(_))) {
            self.shared.record(Event::LostReceive { queue: q, span });
        }
        if let Some(Ok(got)) = &result {
            let mut history = self.shared.history.lock().unwrap();
            let mut kept = self.shared.kept.lock().unwrap();
            for m in got {
                let lease = history.deliveries.len();
                history
                    .deliveries
                    .push(delivery(self.index, q, m, span, LEASE, false));
                if kept.len() >= KEPT_RECEIPTS {
                    let old = self.rng.gen_range(0..kept.len());
                    kept.swap_remove(old);
                }
                kept.push(Kept {
                    lease,
                    backend: self.index,
                    queue: q,
                    receipt: m.receipt().clone(),
                });
            }
        }
        self.on_missing(q, &result).await;
        result.is_none()
    }

    /// A kept receipt, mostly one of this process's own and for queue `q`.
    fn pick(&mut self, q: usize) -> Option<Kept> {
        let kept = self.shared.kept.lock().unwrap();
        let foreign = self.shared.plan.cross_receipts && self.rng.gen_bool(0.25);
        let other_queue = self.rng.gen_bool(0.03);
        let fits: Vec<&Kept> = kept
            .iter()
            .filter(|k| foreign || k.backend == self.index)
            .filter(|k| other_queue || k.queue == q)
            .collect();
        if fits.is_empty() {
            return None;
        }
        Some(fits[self.rng.gen_range(0..fits.len())].clone())
    }

    /// Forgets a receipt, unless kept on purpose for a stale use later.
    fn forget(&mut self, lease: usize, outcome: &Outcome) {
        let keep_stale = matches!(outcome, Outcome::Refused(_)) && self.rng.gen_bool(0.5);
        if !keep_stale {
            self.shared
                .kept
                .lock()
                .unwrap()
                .retain(|k| k.lease != lease);
        }
    }

    async fn settle(&mut self, q: usize, n: usize, kind: Settle, cancel: Option<Cancel>) -> bool {
        let picked: Vec<Kept> = (0..n).filter_map(|_| self.pick(q)).collect();
        if picked.is_empty() {
            return false;
        }
        let queue = &self.shared.queues[q];
        let start = self.shared.now();
        let end;
        let outcomes: Vec<Outcome> = match kind {
            Settle::Delete if n > 1 => {
                let receipts: Vec<ReceiptHandle> =
                    picked.iter().map(|k| k.receipt.clone()).collect();
                let result = maybe_cancel(
                    &self.shared,
                    "delete_messages",
                    self.backend.delete_messages(queue, &receipts),
                    cancel,
                )
                .await;
                end = self.shared.now();
                self.on_missing(q, &result).await;
                match result {
                    Some(Ok(each)) => each
                        .iter()
                        .map(|r| r.as_ref().map_or_else(Outcome::of_error, |_| Outcome::Ok))
                        .collect(),
                    other => vec![Outcome::of(&other); picked.len()],
                }
            }
            _ => {
                let receipt = &picked[0].receipt;
                let result = match kind {
                    Settle::Delete => {
                        maybe_cancel(
                            &self.shared,
                            "delete_message",
                            self.backend.delete_message(queue, receipt),
                            cancel,
                        )
                        .await
                    }
                    Settle::Release => {
                        maybe_cancel(
                            &self.shared,
                            "change_message_visibility(0)",
                            self.backend
                                .change_message_visibility(queue, receipt, Duration::ZERO),
                            cancel,
                        )
                        .await
                    }
                    Settle::Extend => {
                        let lease = if self.rng.gen_bool(0.5) {
                            LEASE
                        } else {
                            LONGEST_LEASE
                        };
                        maybe_cancel(
                            &self.shared,
                            "change_message_visibility",
                            self.backend
                                .change_message_visibility(queue, receipt, lease),
                            cancel,
                        )
                        .await
                    }
                };
                end = self.shared.now();
                self.on_missing(q, &result).await;
                vec![Outcome::of(&result)]
            }
        };
        let span = Span { start, end };
        for (k, outcome) in picked.iter().zip(&outcomes) {
            self.shared.record(Event::Settle {
                backend: self.index,
                queue: q,
                kind,
                lease: k.lease,
                span,
                outcome: outcome.clone(),
            });
            if kind != Settle::Extend {
                self.forget(k.lease, outcome);
            }
        }
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Uncertain(e) if e == "cancelled"))
    }

    async fn purge(&mut self, cancel: Option<Cancel>) -> bool {
        let start = self.shared.now();
        let result = maybe_cancel(
            &self.shared,
            "purge_queue",
            self.backend.purge_queue(&self.shared.queues[1]),
            cancel,
        )
        .await;
        self.shared.record(Event::Purge {
            queue: 1,
            span: self.span(start),
            outcome: Outcome::of(&result),
        });
        self.on_missing(1, &result).await;
        result.is_none()
    }

    async fn recreate(&mut self, cancel: Option<Cancel>) -> bool {
        let start = self.shared.now();
        let result = maybe_cancel(
            &self.shared,
            "delete_queue",
            self.backend.delete_queue(&self.shared.queues[1]),
            cancel,
        )
        .await;
        self.shared.record(Event::DeleteQueue {
            backend: self.index,
            queue: 1,
            span: self.span(start),
            outcome: Outcome::of(&result),
        });
        let cancel = cancel.filter(|_| self.rng.gen_bool(0.5));
        self.create(1, cancel).await || result.is_none()
    }
}

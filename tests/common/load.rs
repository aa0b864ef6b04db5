//! A producer/consumer load run for the fault tests: producers send steps
//! while consumers receive and delete them, a disruption fires at set points,
//! and the report says whether every acknowledged send was received.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tasker_messaging::{MessageBackend, MessagingError, MessagingService, SimpleStepMessage};
use uuid::Uuid;

/// How a load run goes.
pub struct Load {
    /// Messages to send.
    pub total: usize,
    /// Sends in flight at once.
    pub in_flight: usize,
    /// Concurrent consumers.
    pub consumers: usize,
    /// Lease of each received message.
    pub lease: Duration,
    /// Acknowledged-send counts at which to run the disruption.
    pub disrupt_at: Vec<usize>,
    /// How long the whole run may take before it is judged.
    pub deadline: Duration,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Sends attempted (retries included).
    pub send_attempts: usize,
    /// Sends that returned `Ok`.
    pub acknowledged: usize,
    /// Sends that returned an error (then retried).
    pub send_errors: usize,
    /// Distinct acknowledged messages received at least once.
    pub received: usize,
    /// Deliveries beyond the first of a message.
    pub duplicates: usize,
    /// Receive or delete calls that failed (transiently).
    pub consumer_errors: usize,
    /// Acknowledged messages never received.
    pub lost: usize,
    /// Disruptions that ran: the test checks it against `disrupt_at`, or a
    /// run that ended before a point would pass without its fault.
    pub disruptions: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// Prints the counts, for the test log and the closing note.
    pub fn print(&self, name: &str) {
        println!(
            "{name}: acknowledged {} (send attempts {}, send errors {}), received {}, \
             duplicates {}, consumer errors {}, lost {}, disruptions {}, in {:.1?}",
            self.acknowledged,
            self.send_attempts,
            self.send_errors,
            self.received,
            self.duplicates,
            self.consumer_errors,
            self.lost,
            self.disruptions,
            self.elapsed
        );
    }
}

#[derive(Default)]
struct Tally {
    acknowledged: HashSet<Uuid>,
    received: HashMap<Uuid, usize>,
}

fn tolerable(error: &MessagingError) -> bool {
    error.is_transient() || matches!(error, MessagingError::LeaseExpired { .. })
}

/// Runs the load on `queue` (which must exist), calling `disrupt` each time
/// the acknowledged count passes a point of `load.disrupt_at`.
pub async fn run<F, Fut>(
    producer: Arc<MessageBackend>,
    consumer: Arc<MessageBackend>,
    queue: &str,
    load: Load,
    disrupt: F,
) -> Report
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    run_paced(producer, consumer, queue, load, Duration::ZERO, disrupt).await
}

/// [`run`], with each chunk of `load.in_flight` sends started at least
/// `pace` after the one before (`Duration::ZERO`: as fast as they complete),
/// so a slow disruption still lands while messages are flowing.
pub async fn run_paced<F, Fut>(
    producer: Arc<MessageBackend>,
    consumer: Arc<MessageBackend>,
    queue: &str,
    load: Load,
    pace: Duration,
    disrupt: F,
) -> Report
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    run_fleet(producer, vec![consumer], queue, load, pace, disrupt).await
}

/// [`run_paced`] with the consumer tasks spread over several backends, each
/// standing for a worker process of its own.
pub async fn run_fleet<F, Fut>(
    producer: Arc<MessageBackend>,
    consumers: Vec<Arc<MessageBackend>>,
    queue: &str,
    load: Load,
    pace: Duration,
    disrupt: F,
) -> Report
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let send_errors = Arc::new(AtomicUsize::new(0));
    let consumer_errors = Arc::new(AtomicUsize::new(0));
    let done_sending = Arc::new(AtomicBool::new(false));
    let queue = queue.to_owned();

    let acknowledged = || {
        tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledged
            .len()
    };

    let producer_task = {
        let (tally, attempts, send_errors, done) = (
            Arc::clone(&tally),
            Arc::clone(&attempts),
            Arc::clone(&send_errors),
            Arc::clone(&done_sending),
        );
        let queue = queue.clone();
        let (total, in_flight, deadline) = (load.total, load.in_flight, started + load.deadline);
        tokio::spawn(async move {
            let mut tick = (!pace.is_zero()).then(|| tokio::time::interval(pace));
            let mut sent = 0;
            while sent < total {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let chunk = in_flight.min(total - sent);
                let sends = (0..chunk).map(|_| {
                    let (producer, queue) = (&producer, &queue);
                    let (attempts, send_errors) = (&attempts, &send_errors);
                    async move {
                        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
                        while Instant::now() < deadline {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            match producer.send_message(queue, &step).await {
                                Ok(_) => return Some(step.step_uuid),
                                Err(e) if e.is_transient() => {
                                    send_errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                Err(e) => panic!("send_message: {e}"),
                            }
                        }
                        None
                    }
                });
                let acked = futures_util::future::join_all(sends).await;
                let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                tally.acknowledged.extend(acked.into_iter().flatten());
                sent += chunk;
            }
            done.store(true, Ordering::Release);
        })
    };

    let consumer_tasks: Vec<_> = (0..load.consumers)
        .map(|n| {
            let (consumer, tally, errors, done) = (
                Arc::clone(&consumers[n % consumers.len()]),
                Arc::clone(&tally),
                Arc::clone(&consumer_errors),
                Arc::clone(&done_sending),
            );
            let queue = queue.clone();
            let (lease, deadline) = (load.lease, started + load.deadline);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let batch = match consumer
                        .receive_messages::<SimpleStepMessage>(&queue, 20, lease)
                        .await
                    {
                        Ok(batch) => batch,
                        Err(e) if tolerable(&e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(e) => panic!("receive_messages: {e}"),
                    };
                    if batch.is_empty() {
                        let all_in = {
                            let t = tally.lock().unwrap_or_else(|p| p.into_inner());
                            t.acknowledged.iter().all(|id| t.received.contains_key(id))
                        };
                        if done.load(Ordering::Acquire) && all_in {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    for message in batch {
                        *tally
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .received
                            .entry(message.message.step_uuid)
                            .or_default() += 1;
                        match consumer.delete_message(&queue, message.receipt()).await {
                            Ok(()) => {}
                            Err(e) if tolerable(&e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("delete_message: {e}"),
                        }
                    }
                }
            })
        })
        .collect();

    let mut points = load.disrupt_at.into_iter().peekable();
    let mut disruptions = 0;
    while !producer_task.is_finished() {
        if points.peek().is_some_and(|&at| acknowledged() >= at) {
            points.next();
            disrupt().await;
            disruptions += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer_task.await.expect("producer task");
    for task in consumer_tasks {
        task.await.expect("consumer task");
    }

    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    let received = tally
        .acknowledged
        .iter()
        .filter(|id| tally.received.contains_key(id))
        .count();
    Report {
        send_attempts: attempts.load(Ordering::Relaxed),
        acknowledged: tally.acknowledged.len(),
        send_errors: send_errors.load(Ordering::Relaxed),
        received,
        duplicates: tally.received.values().map(|n| n - 1).sum(),
        consumer_errors: consumer_errors.load(Ordering::Relaxed),
        lost: tally.acknowledged.len() - received,
        disruptions,
        elapsed: started.elapsed(),
    }
}

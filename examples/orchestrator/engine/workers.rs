//! Namespace workers: receive steps, run them, report completions, delete.

use super::*;

/// One worker of `crew` on one namespace queue: wait for steps, run them,
/// report, delete.
pub(super) async fn work(ctx: Arc<Ctx>, crew: Arc<Crew>, queue: usize) {
    let queue = ctx.queues[queue].as_str();
    while !ctx.stopping() && !crew.stopped() {
        let steps = match crew
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
        run_steps(&ctx, &crew, queue, steps).await;
    }
}

pub(super) async fn run_steps(
    ctx: &Ctx,
    crew: &Crew,
    queue: &str,
    steps: Vec<QueuedMessage<SimpleStepMessage>>,
) {
    let s = &ctx.shared;
    let mut done = Vec::with_capacity(steps.len());
    let mut steps = steps.into_iter();
    while let Some(step) = steps.next() {
        if ctx.interrupted() || crew.stopped() {
            release(
                ctx,
                crew,
                queue,
                std::iter::once(step).chain(steps.by_ref()),
            )
            .await;
            break;
        }
        if !ctx.settings.work.is_zero() {
            tokio::time::sleep(ctx.settings.work).await;
        }
        if fails(step.message.step_uuid, ctx.settings.fail_rate) {
            // Retried with exponential backoff: not deleted, but its lease is
            // stretched to the backoff of this attempt, so it comes back
            // then (a visibility change, not a delayed send: see README),
            // and after max_receive_count deliveries it moves to the
            // dead-letter queue.
            lock(&s.failing).insert(step.message.step_uuid);
            let backoff = backoff(ctx.lease, step.metadata.receive_count);
            match crew
                .backend
                .change_message_visibility(queue, step.receipt(), backoff)
                .await
            {
                // Gone already: it comes back, or moved on, as it would have.
                Ok(()) | Err(MessagingError::LeaseExpired { .. }) => {}
                // The lease ends on its own: a retry after one lease.
                Err(error) => eprintln!("warning: backoff: {error} (retried after its lease)"),
            }
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
    if let Err(error) = crew.backend.send_batch(&ctx.results, &completions).await {
        // Not deleted either: the steps come back when their leases end.
        s.in_flight.fetch_sub(done.len() as u64, Relaxed);
        ctx.tolerate("send completions", error).await;
        return;
    }
    s.completions_sent
        .fetch_add(completions.len() as u64, Relaxed);
    // One call settles the batch: one statement on PGMQ, acks back to back on RabbitMQ.
    let receipts: Vec<ReceiptHandle> = done.iter().map(|step| step.receipt().clone()).collect();
    let settled = crew.backend.delete_messages(queue, &receipts).await;
    s.in_flight.fetch_sub(done.len() as u64, Relaxed);
    match settled {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome {
                    Ok(()) => {}
                    // The lease ran out before the delete: the step is delivered
                    // again, and its second completion counts as a duplicate.
                    Err(MessagingError::LeaseExpired { .. }) => {
                        s.lease_lost.fetch_add(1, Relaxed);
                    }
                    Err(error) => ctx.fail(error),
                }
            }
        }
        Err(error) if error.is_transient() => {
            eprintln!("warning: delete: {error} (the steps come back when their leases end)");
        }
        Err(error) => ctx.fail(error),
    }
}

/// Hands steps not started back to the queue at once (visibility 0), so the
/// next run gets them without waiting out the lease.
pub(super) async fn release(
    ctx: &Ctx,
    crew: &Crew,
    queue: &str,
    steps: impl Iterator<Item = QueuedMessage<SimpleStepMessage>>,
) {
    for step in steps {
        match crew
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

/// How long a step that failed its `attempt`-th delivery waits before its
/// next: the lease, doubled for every attempt after the first (1, 2, 4, …
/// leases), at most [`MAX_BACKOFF`].
pub fn backoff(lease: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    lease.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// The longest backoff: far under RabbitMQ's `consumer_timeout` (30 min by
/// default), above which a visibility change is refused.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

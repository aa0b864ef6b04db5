//! The enqueuer: the run's steps in batches, round robin over the namespaces.

use super::*;

/// Sends the run's steps in batches, round robin over the namespace queues,
/// and returns the ids of those sent.
pub(super) async fn enqueue(ctx: Arc<Ctx>) -> Vec<Uuid> {
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
            match ctx.backend().send_batch(queue, &steps).await {
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

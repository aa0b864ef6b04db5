//! The results check: completions by step id, duplicates counted.

use super::*;

/// Takes completions off the results queue (through `crew`'s backend) and
/// tallies them by step, until the workers are done and every completion
/// they sent has arrived, or until the crew is stopped.
pub(super) async fn consume_results(ctx: Arc<Ctx>, crew: Arc<Crew>) {
    let s = &ctx.shared;
    let lease = Duration::from_secs(30);
    let mut idle_after_workers = 0;
    while !crew.stopped() {
        let completions = match crew
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
        for completion in &completions {
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
        let receipts: Vec<ReceiptHandle> = completions
            .iter()
            .map(|completion| completion.receipt().clone())
            .collect();
        match crew.backend.delete_messages(&ctx.results, &receipts).await {
            Ok(outcomes) => {
                for outcome in outcomes {
                    match outcome {
                        // Already counted: a redelivery is skipped as seen.
                        Ok(()) | Err(MessagingError::LeaseExpired { .. }) => {}
                        Err(error) => ctx.fail(error),
                    }
                }
            }
            Err(error) if error.is_transient() => {
                eprintln!("warning: delete completions: {error}");
            }
            Err(error) => ctx.fail(error),
        }
    }
}

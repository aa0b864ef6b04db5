//! The monitor: progress lines and the check that a run is complete.

use super::*;

/// Steps a queue holds, ready or leased (a provider that cannot count leases
/// counts them as 0).
pub(super) fn waiting(stats: &QueueStats) -> u64 {
    stats.message_count + stats.in_flight_count.unwrap_or(0)
}

/// Watches the run, prints progress, and returns the time to completion, or
/// `None` when interrupted or failed.
pub(super) async fn monitor(
    ctx: &Ctx,
    target: u64,
    dlq_base: u64,
    started: Instant,
) -> Option<Duration> {
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
                    ctx.backend().provider(),
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

//! What a run did, and how it prints.

use super::*;

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

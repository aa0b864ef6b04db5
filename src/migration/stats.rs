//! Stats of a queue during a migration: each side, and their sum.

use serde::{Deserialize, Serialize};

use crate::{Provider, QueueStats};

/// Each side of a migrating backend's queue, as
/// [`QueueStats::migration`](crate::QueueStats::migration) carries it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// The provider migrated from.
    pub source: Provider,
    /// The queue on the source; `None` when it does not exist there (never
    /// created on the source, or already removed from it).
    pub source_stats: Option<QueueStats>,
    /// The provider migrated to (where sends go).
    pub target: Provider,
    /// The queue on the target.
    pub target_stats: QueueStats,
}

impl MigrationStats {
    /// The sums the top-level fields show, with both sides attached. A count
    /// or the oldest age is `None` when either side's is (the unknown part
    /// could be anything); otherwise the oldest age is the larger of the two.
    pub(crate) fn combine(
        source: Provider,
        source_stats: Option<QueueStats>,
        target: Provider,
        target_stats: QueueStats,
    ) -> QueueStats {
        let mut sum = target_stats.clone();
        if let Some(s) = &source_stats {
            let add = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
            sum.message_count += s.message_count;
            sum.in_flight_count = add(s.in_flight_count, sum.in_flight_count);
            sum.dead_letter_count = add(s.dead_letter_count, sum.dead_letter_count);
            sum.delayed_count = add(s.delayed_count, sum.delayed_count);
            sum.oldest_message_age_seconds = s
                .oldest_message_age_seconds
                .zip(sum.oldest_message_age_seconds)
                .map(|(a, b)| a.max(b));
        }
        sum.migration = Some(Box::new(Self {
            source,
            source_stats,
            target,
            target_stats,
        }));
        sum
    }
}

//! Queue N step messages through the configured provider, then drain them
//! (receive 100 + delete each), and print this process's peak memory.
//!
//! ```sh
//! cargo run --release --example drain -- 100000
//! TASKER_MESSAGING_PROVIDER=pgmq /usr/bin/time -v target/release/examples/drain 100000
//! ```
//!
//! The peak is `VmHWM` from `/proc/self/status` (Linux): for PGMQ and
//! RabbitMQ the messages live in the server, for in-memory in this process.

use std::time::{Duration, Instant};

use tasker_messaging::{
    MessageBackend, MessagingConfig, MessagingError, MessagingService, SimpleStepMessage,
};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), MessagingError> {
    let total: usize = match std::env::args().nth(1) {
        None => 100_000,
        Some(n) => n
            .parse()
            .map_err(|_| MessagingError::InvalidArgument(format!("not a count: {n}")))?,
    };
    let backend = MessageBackend::connect(&MessagingConfig::load()?).await?;
    // A queue of its own per run, so that runs never meet.
    let queue = format!("drain_{}", &Uuid::new_v4().simple().to_string()[..8]);
    backend.create_queue(&queue).await?;

    let started = Instant::now();
    let batch: Vec<SimpleStepMessage> = (0..100)
        .map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    let mut queued = 0;
    while queued < total {
        let n = batch.len().min(total - queued);
        backend.send_batch(&queue, &batch[..n]).await?;
        queued += n;
    }
    let queued_in = started.elapsed();
    let peak_queued = peak_rss_kib();

    let mut drained = 0;
    while drained < total {
        let got = backend
            .receive_messages::<SimpleStepMessage>(&queue, 100, Duration::from_secs(60))
            .await?;
        for message in &got {
            backend.delete_message(&queue, message.receipt()).await?;
        }
        drained += got.len();
    }
    backend.delete_queue(&queue).await?;
    println!(
        "provider {}: queued {total} in {queued_in:.1?}, drained in {:.1?}; \
         peak RSS {} KiB with all queued, {} KiB at the end",
        backend.provider(),
        started.elapsed() - queued_in,
        peak_queued,
        peak_rss_kib()
    );
    Ok(())
}

/// The process's peak resident set (`VmHWM`), in KiB; 0 where unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

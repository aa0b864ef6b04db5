//! The Rust side of `bench/throughput.rb`: the same workload as the Ruby
//! loop, on the same backend, in the same process, without crossing into
//! Ruby per call. Not part of the Ruby API (`TaskerCore::Native` only).

use std::time::{Duration, Instant};

use magnus::{Error, Ruby};
use tasker_messaging::{MessagingError, MessagingService, SimpleStepMessage};

use crate::{
    backend::Backend,
    errors::{guard, OrRaise},
    gvl,
};

/// Sends `messages` copies of the step `body` one by one, then receives them
/// in batches of `batch` and deletes each, all typed as `SimpleStepMessage`;
/// returns the seconds taken.
pub fn rust_cycle(
    ruby: &Ruby,
    backend: &Backend,
    queue: String,
    body: String,
    messages: usize,
    batch: usize,
) -> Result<f64, Error> {
    guard(ruby, || {
        let step: SimpleStepMessage = serde_json::from_str(&body)
            .map_err(MessagingError::Serialization)
            .or_raise(ruby)?;
        let backend = backend.backend(ruby)?;
        let (queue, step, backend) = (&queue, &step, &backend);
        let elapsed = gvl::block_on(ruby, || async move {
            let started = Instant::now();
            for _ in 0..messages {
                backend.send_message(queue, step).await?;
            }
            let lease = Duration::from_secs(30);
            let mut left = messages;
            while left > 0 {
                let got = backend
                    .receive_messages::<SimpleStepMessage>(queue, batch, lease)
                    .await?;
                if got.is_empty() {
                    return Err(MessagingError::InvalidArgument(format!(
                        "{left} messages missing from {queue}: is another consumer on it?"
                    )));
                }
                for message in got {
                    backend.delete_message(queue, message.receipt()).await?;
                    left -= 1;
                }
            }
            Ok(started.elapsed().as_secs_f64())
        })?;
        elapsed.or_raise(ruby)
    })
}

/// `calls` health checks in one crossing; returns the seconds taken.
pub fn rust_health(ruby: &Ruby, backend: &Backend, calls: usize) -> Result<f64, Error> {
    guard(ruby, || {
        let backend = backend.backend(ruby)?;
        let backend = &backend;
        let elapsed = gvl::block_on(ruby, || async move {
            let started = Instant::now();
            for _ in 0..calls {
                backend.health_check().await?;
            }
            Ok(started.elapsed().as_secs_f64())
        })?;
        elapsed.or_raise(ruby)
    })
}

/// Panics on purpose, with the GVL held (`released == false`) or not, so the
/// Ruby suite can check that a panic arrives as `InternalError`.
pub fn panic_probe(ruby: &Ruby, released: bool) -> Result<bool, Error> {
    guard(ruby, || {
        if released {
            gvl::block_on(ruby, || async { panic!("panic_probe without the GVL") })?;
        }
        panic!("panic_probe with the GVL")
    })
}

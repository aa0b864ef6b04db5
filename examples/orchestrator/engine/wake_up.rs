//! The wake-up latency measurement of `--measure-wake-up`.

use super::*;

/// Wake-up latency of `receive_messages_wait`, in milliseconds.
#[derive(Debug)]
pub struct WakeUp {
    /// From a send returning to the waiting receive returning; negative when
    /// the receive returned first (a broker can deliver before it confirms).
    pub after_send: Vec<f64>,
    /// How long each send took.
    pub send: Vec<f64>,
}

impl WakeUp {
    /// The middle value of `values` (sorted copy).
    pub fn median(values: &[f64]) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for WakeUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.after_send.clone();
        sorted.sort_by(f64::total_cmp);
        let from_start: Vec<f64> = self
            .after_send
            .iter()
            .zip(&self.send)
            .map(|(a, s)| a + s)
            .collect();
        write!(
            f,
            "receive_messages_wait wake-up, {} samples: median {:.2} ms after the send returned \
             (min {:.2}, max {:.2}), {:.2} ms after it began (the send took {:.2} ms)",
            sorted.len(),
            Self::median(&sorted),
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
            Self::median(&from_start),
            Self::median(&self.send),
        )
    }
}

/// Measures how soon a receive parked in `receive_messages_wait` returns once
/// a message is sent, on a scratch queue (`queue`, deleted afterwards).
pub async fn measure_wake_up(
    backend: Arc<MessageBackend>,
    queue: &str,
    samples: usize,
) -> Result<WakeUp, MessagingError> {
    backend.create_queue(queue).await?;
    backend.purge_queue(queue).await?;
    let (woke, mut wakes) = mpsc::unbounded_channel();
    let receiver = {
        let (backend, queue) = (Arc::clone(&backend), queue.to_owned());
        tokio::spawn(async move {
            let mut got_count = 0;
            while got_count < samples {
                let got = backend
                    .receive_messages_wait::<SimpleStepMessage>(
                        &queue,
                        1,
                        Duration::from_secs(30),
                        Duration::from_secs(10),
                    )
                    .await?;
                let at = Instant::now();
                for message in &got {
                    let _ = woke.send(at);
                    backend.delete_message(&queue, message.receipt()).await?;
                    got_count += 1;
                }
            }
            Ok::<_, MessagingError>(())
        })
    };
    let mut result = WakeUp {
        after_send: Vec::with_capacity(samples),
        send: Vec::with_capacity(samples),
    };
    for _ in 0..samples {
        // Long enough for the receiver to delete the last probe and park again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
        let before = Instant::now();
        backend.send_message(queue, &step).await?;
        let sent = Instant::now();
        let Some(woke_at) = wakes.recv().await else {
            break;
        };
        let signed_ms = |a: Instant, b: Instant| match a.checked_duration_since(b) {
            Some(d) => d.as_secs_f64() * 1e3,
            None => -(b - a).as_secs_f64() * 1e3,
        };
        result.after_send.push(signed_ms(woke_at, sent));
        result.send.push(signed_ms(sent, before));
    }
    receiver
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    backend.delete_queue(queue).await?;
    Ok(result)
}

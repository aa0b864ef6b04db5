//! Operating on queues: moving messages between any two queues (on one
//! provider or two), redriving dead letters, and the deadline arithmetic of
//! waiting receives. The `tasker-messaging` binary (cargo feature `cli`) is
//! built on these.
//!
//! ```
//! use tasker_messaging::{
//!     ops::redrive_dead_letters, MessageBackend, MessagingConfig, MessagingService,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = MessageBackend::connect(&MessagingConfig::in_memory()).await?;
//! backend.create_queue("orders").await?;
//! // Moves what `orders_dlq` holds back into `orders`, at least once.
//! let report = redrive_dead_letters(&backend, "orders", usize::MAX).await?;
//! assert_eq!(report.moved, 0);
//! # Ok(()) }
//! ```

pub use crate::transfer::{
    move_messages, move_messages_with_progress, redrive_dead_letters, MoveError, MoveReport,
    RawMessage,
};
pub use crate::wait::wait_deadline;

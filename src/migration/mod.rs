//! The migrating backend: two providers behind one `MessageBackend`, while
//! a fleet moves from one to the other without stopping.
//!
//! Sends go to the target. Receives take from the source first, while it has
//! ready messages, then from the target. A receipt keeps the format of the
//! provider that issued it (`{provider}:{queue}:{scope}:{id}:{lease}`),
//! whose first field names its origin: deletes and visibility changes go to
//! that side, which checks the rest (the queue incarnation, or the RabbitMQ
//! backend that received it) as a plain backend would, so a receipt a plain
//! backend issued before the switch keeps working where it would there.
//!
//! The migrating service and its sides need both cargo features, `pgmq` and
//! `rabbitmq`; [`MigrationStats`] and [`MigrationConfig`] are always there.
//! The types are also at the crate root.

pub use crate::config::MigrationConfig;

#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
mod service;
#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
mod side;
mod stats;

#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
pub use service::MigratingMessageService;
#[cfg(all(feature = "pgmq", feature = "rabbitmq"))]
pub use side::MigrationSide;
pub use stats::MigrationStats;

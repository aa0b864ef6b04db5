//! The one lock helper.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the data of a poisoned one as it is. Every critical
/// section in this crate is a map operation or an assignment that leaves its
/// data consistent even when a panic interrupts the holder, so poisoning
/// carries no information here, and a poisoned lock must not turn every later
/// call into a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

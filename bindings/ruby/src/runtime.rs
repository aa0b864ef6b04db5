//! The one tokio runtime of a process, made again in a forked child.
//!
//! `fork` copies only the calling thread: in a child, the parent's runtime
//! has no worker threads left, and a future waiting on its I/O driver would
//! wait for ever. So the runtime is keyed by process id, and a child builds
//! its own on first use. The parent's copy is leaked, never dropped: its
//! shutdown would wait for threads that do not exist in the child.
//!
//! The lock is only taken while the caller holds the GVL, and never across a
//! blocking call, so no thread can hold it when Ruby forks.

use std::{io, sync::Mutex};

use tokio::runtime::{Builder, Runtime};

struct Current {
    pid: u32,
    runtime: &'static Runtime,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// This process's runtime, built on first use (again after a fork).
pub fn get() -> io::Result<&'static Runtime> {
    let pid = std::process::id();
    let mut current = CURRENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(current) = current.as_ref().filter(|c| c.pid == pid) {
        return Ok(current.runtime);
    }
    let runtime = Builder::new_multi_thread()
        .enable_all()
        .thread_name("tasker-messaging")
        .build()?;
    // Lives as long as the process: a runtime per process, never torn down
    // while Ruby threads may still call into it.
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    *current = Some(Current { pid, runtime });
    Ok(runtime)
}

/// This process's runtime if it was already built here (not inherited).
pub fn built_here() -> Option<&'static Runtime> {
    let pid = std::process::id();
    let current = CURRENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    current.as_ref().filter(|c| c.pid == pid).map(|c| c.runtime)
}

//! Running a future with the GVL released, so other Ruby threads run while
//! this one waits on I/O.
//!
//! magnus 0.9 has no wrapper for `rb_nogvl` (its own inventory lists the
//! `without_gvl` family as unwrapped), so it is declared here, with
//! - `RB_NOGVL_INTR_FAIL`: it does not raise on its way out; a pending
//!   interrupt (Thread#raise, Ctrl-C, Timeout) is raised afterwards by
//!   `Ruby::thread_check_ints`, as a `magnus::Error`, once no Rust frame with
//!   a destructor is left to skip;
//! - `RB_NOGVL_UBF_ASYNC_SAFE`: the unblocking function only stores a flag.
//!   Without it Ruby starts a helper thread on every call made from the main
//!   thread while no other thread lives, which measured 100-350 µs a call
//!   against 0.2 µs (Ruby 3.1).
//!
//! The flag cancels the future within `INTERRUPT_POLL` (dropping a call
//! mid-way loses nothing: a lease it took ends with its visibility timeout).

use std::{
    ffi::{c_int, c_void},
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    ptr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use magnus::{Error, Ruby};

use crate::{errors, runtime};

// ruby/thread.h
const RB_NOGVL_INTR_FAIL: c_int = 0x1;
const RB_NOGVL_UBF_ASYNC_SAFE: c_int = 0x2;

extern "C" {
    fn rb_nogvl(
        func: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
        data1: *mut c_void,
        ubf: Option<unsafe extern "C" fn(*mut c_void)>,
        data2: *mut c_void,
        flags: c_int,
    ) -> *mut c_void;
}

/// How often a waiting call looks at the interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(20);

/// One call: what runs without the GVL, and what it leaves behind.
struct Call<F: Future> {
    /// Boxed: a `MessageBackend` future holds every provider's state machine
    /// (kilobytes), and moving it by value cost more than the call itself.
    future: Option<Pin<Box<F>>>,
    runtime: &'static tokio::runtime::Runtime,
    /// Set by Ruby's unblocking function (possibly in a signal handler).
    cancel: AtomicBool,
    /// `None` if Ruby did not run the call (an interrupt was pending);
    /// `Some(Err)` if it panicked; `Some(Ok(None))` if it was cancelled.
    outcome: Option<std::thread::Result<Option<F::Output>>>,
}

unsafe extern "C" fn run<F: Future>(data: *mut c_void) -> *mut c_void {
    let call = data.cast::<Call<F>>();
    // SAFETY: `data` is the `Call<F>` that `block_on` passed, alive until
    // `rb_nogvl` returns. Fields are reached one by one:
    // `unblock` may set `cancel` from another thread meanwhile.
    let (future, runtime, cancel) = unsafe {
        (
            (*call).future.take(),
            (*call).runtime,
            &*ptr::addr_of!((*call).cancel),
        )
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let future = future?;
        runtime.block_on(async {
            tokio::select! {
                // The call first: one that is ready at once never arms the timer.
                biased;
                output = future => Some(output),
                () = interrupted(cancel) => None,
            }
        })
    }));
    // SAFETY: as above; nothing else touches `outcome`.
    unsafe { (*call).outcome = Some(outcome) };
    ptr::null_mut()
}

/// Resolves once `flag` is set.
async fn interrupted(flag: &AtomicBool) {
    while !flag.load(Ordering::Acquire) {
        tokio::time::sleep(INTERRUPT_POLL).await;
    }
}

/// Async-signal-safe: one atomic store, nothing that can lock or panic.
unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `AtomicBool` inside the live `Call`; Ruby calls
    // this only between the start and the end of `rb_nogvl`.
    unsafe { &*data.cast::<AtomicBool>() }.store(true, Ordering::Release);
}

/// Runs the future `make` returns to completion on the process's runtime
/// with the GVL released. `Send` keeps Ruby objects out of it: nothing may
/// touch Ruby without the GVL. A panic becomes `InternalError`. A Ruby
/// interrupt cancels the future and is raised; one that raises nothing (a
/// thread switch, `Thread#wakeup`) makes a fresh future and goes on, as
/// Ruby's own blocking calls retry after `EINTR`.
pub fn block_on<F, M>(ruby: &Ruby, mut make: M) -> Result<F::Output, Error>
where
    M: FnMut() -> F,
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime::get().map_err(|e| errors::internal(ruby, &e.to_string()))?;
    loop {
        let mut call = Call {
            future: Some(Box::pin(make())),
            runtime,
            cancel: AtomicBool::new(false),
            outcome: None,
        };
        let data = ptr::addr_of_mut!(call);
        // SAFETY: both pointers stay valid until the call returns; `run` and
        // `unblock` cast them back to the types given here.
        unsafe {
            rb_nogvl(
                run::<F>,
                data.cast(),
                Some(unblock),
                ptr::addr_of_mut!((*data).cancel).cast(),
                RB_NOGVL_INTR_FAIL | RB_NOGVL_UBF_ASYNC_SAFE,
            );
        }
        match call.outcome {
            Some(Ok(Some(output))) => return Ok(output),
            Some(Err(panic)) => return Err(errors::internal(ruby, &errors::panic_text(&*panic))),
            // Not run, or cancelled: handle the interrupt (raising it, if
            // it is an exception), then try again.
            None | Some(Ok(None)) => ruby.thread_check_ints()?,
        }
    }
}

//! Running a future with the GVL released, so other Ruby threads run while
//! this one waits on I/O.
//!
//! magnus 0.9 has no wrapper for `rb_thread_call_without_gvl` (its own
//! inventory lists it as unwrapped), so it is declared here. The `2` variant
//! is used because it does not raise on its way out: a pending interrupt
//! (Thread#raise, Ctrl-C, Timeout) is raised afterwards by
//! `Ruby::thread_check_ints`, as a `magnus::Error`, once no Rust frame with
//! a destructor is left to skip.
//!
//! Ruby's unblocking function cancels the future (dropping a call mid-way
//! loses nothing: a lease it took ends with its visibility timeout).

use std::{
    ffi::c_void,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    ptr,
};

use magnus::{Error, Ruby};
use tokio::sync::Notify;

use crate::{errors, runtime};

extern "C" {
    // ruby/thread.h
    fn rb_thread_call_without_gvl2(
        func: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
        data1: *mut c_void,
        ubf: Option<unsafe extern "C" fn(*mut c_void)>,
        data2: *mut c_void,
    ) -> *mut c_void;
}

/// One call: what runs without the GVL, and what it leaves behind.
struct Call<F: Future> {
    future: Option<F>,
    runtime: &'static tokio::runtime::Runtime,
    /// Signalled by Ruby's unblocking function.
    cancel: Notify,
    /// `None` if Ruby did not run the call (an interrupt was pending);
    /// `Some(Err)` if it panicked; `Some(Ok(None))` if it was cancelled.
    outcome: Option<std::thread::Result<Option<F::Output>>>,
}

unsafe extern "C" fn run<F: Future>(data: *mut c_void) -> *mut c_void {
    let call = data.cast::<Call<F>>();
    // SAFETY: `data` is the `Call<F>` that `block_on` passed, alive until
    // `rb_thread_call_without_gvl2` returns. Fields are reached one by one:
    // `unblock` may read `cancel` from another thread meanwhile.
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
                biased;
                () = cancel.notified() => None,
                output = future => Some(output),
            }
        })
    }));
    // SAFETY: as above; nothing else touches `outcome`.
    unsafe { (*call).outcome = Some(outcome) };
    ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `Notify` inside the live `Call`; Ruby calls this
    // only between the start and the end of `rb_thread_call_without_gvl2`.
    let cancel = unsafe { &*data.cast::<Notify>() };
    // notify_one stores a permit: a cancel before the select starts counts.
    let _ = catch_unwind(AssertUnwindSafe(|| cancel.notify_one()));
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
            future: Some(make()),
            runtime,
            cancel: Notify::new(),
            outcome: None,
        };
        let data = ptr::addr_of_mut!(call);
        // SAFETY: both pointers stay valid until the call returns; `run` and
        // `unblock` cast them back to the types given here.
        unsafe {
            rb_thread_call_without_gvl2(
                run::<F>,
                data.cast(),
                Some(unblock),
                ptr::addr_of_mut!((*data).cancel).cast(),
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

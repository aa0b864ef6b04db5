//! The Ruby extension of tasker-messaging (`TaskerCore::Native`): a thin
//! layer over one `MessageBackend`. The Ruby API (`TaskerCore::Services`,
//! `lib/`) wraps these classes; every queue operation is the Rust library's
//! own, through its `MessagingService` gate.
//!
//! - Calls release the GVL while they wait (`gvl`), on one tokio runtime per
//!   process (`runtime`), rebuilt in a forked child.
//! - Errors become the Ruby classes of `lib/tasker_core/services/errors.rb`
//!   (`errors`); every method body catches panics.

mod backend;
mod bench;
mod config;
mod errors;
mod gvl;
mod message;
mod router;
mod runtime;

use magnus::{function, method, prelude::*, Error, Ruby};

#[magnus::init]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let native = ruby.define_module("TaskerCore")?.define_module("Native")?;

    let backend = native.define_class("Backend", ruby.class_object())?;
    backend.define_singleton_method("connect", function!(backend::Backend::connect, 2))?;
    backend.define_method("provider", method!(backend::Backend::provider, 0))?;
    backend.define_method("health_check", method!(backend::Backend::health_check, 0))?;
    backend.define_method("create_queue", method!(backend::Backend::create_queue, 1))?;
    backend.define_method("delete_queue", method!(backend::Backend::delete_queue, 1))?;
    backend.define_method("send_message", method!(backend::Backend::send_message, 4))?;
    backend.define_method("send_batch", method!(backend::Backend::send_batch, 4))?;
    backend.define_method("receive", method!(backend::Backend::receive, 4))?;
    backend.define_method(
        "delete_message",
        method!(backend::Backend::delete_message, 2),
    )?;
    backend.define_method(
        "delete_messages",
        method!(backend::Backend::delete_messages, 2),
    )?;
    backend.define_method(
        "change_message_visibility",
        method!(backend::Backend::change_message_visibility, 3),
    )?;
    backend.define_method("queue_stats", method!(backend::Backend::queue_stats, 1))?;
    backend.define_method("purge_queue", method!(backend::Backend::purge_queue, 1))?;
    backend.define_method("queues_config", method!(backend::Backend::queues_config, 0))?;
    backend.define_method("capabilities", method!(backend::Backend::capabilities, 0))?;
    backend.define_method("close", method!(backend::Backend::close, 0))?;
    backend.define_method("closed?", method!(backend::Backend::is_closed, 0))?;

    let router = native.define_class("Router", ruby.class_object())?;
    router.define_singleton_method("new", function!(router::Router::new, 1))?;
    router.define_method("route_to_queue", method!(router::Router::route_to_queue, 2))?;
    router.define_method(
        "extract_namespace",
        method!(router::Router::extract_namespace, 1),
    )?;

    native.define_module_function("rust_cycle", function!(bench::rust_cycle, 5))?;
    native.define_module_function("rust_health", function!(bench::rust_health, 2))?;
    native.define_module_function("panic_probe", function!(bench::panic_probe, 1))?;
    Ok(())
}

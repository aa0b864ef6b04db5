//! `MessagingError` (and the binding's own failures) as Ruby exceptions.
//!
//! The classes are defined in Ruby (`lib/tasker_core/services/errors.rb`),
//! one per `MessagingError` variant under `TaskerCore::Services::MessagingError`;
//! each instance carries `transient?` from `MessagingError::is_transient`.

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
};

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};
use tasker_messaging::MessagingError;

/// The Ruby class of `error` (a name under `TaskerCore::Services`).
fn class_name(error: &MessagingError) -> &'static str {
    match error {
        MessagingError::Connection { .. } => "ConnectionError",
        MessagingError::QueueNotFound { .. } => "QueueNotFound",
        MessagingError::InvalidQueueName { .. } => "InvalidQueueName",
        MessagingError::InvalidArgument(_) => "InvalidArgument",
        MessagingError::Serialization(_) => "SerializationError",
        MessagingError::InvalidReceipt { .. } => "InvalidReceipt",
        MessagingError::LeaseExpired { .. } => "LeaseExpired",
        MessagingError::MessageTooLarge { .. } => "MessageTooLarge",
        MessagingError::CircuitOpen { .. } => "CircuitOpen",
        MessagingError::Config(_) => "ConfigurationError",
        MessagingError::Tls { .. } => "TlsError",
        MessagingError::Provider { .. } => "ProviderError",
        MessagingError::Closed { .. } => "Closed",
        // A variant added later still arrives as a MessagingError.
        _ => "MessagingError",
    }
}

/// An instance of `TaskerCore::Services::<name>`, or a `RuntimeError` if the
/// Ruby side was not loaded (the extension required on its own).
fn raise(ruby: &Ruby, name: &str, message: String, transient: bool) -> Error {
    let class = ruby
        .class_object()
        .const_get::<_, RModule>("TaskerCore")
        .and_then(|core| core.const_get::<_, RModule>("Services"))
        .and_then(|services| services.const_get::<_, ExceptionClass>(name));
    match class.and_then(|class| class.new_instance((message.as_str(), transient))) {
        Ok(exception) => exception.into(),
        Err(_) => Error::new(ruby.exception_runtime_error(), message),
    }
}

/// `error` as the Ruby exception of its variant.
pub fn to_ruby(ruby: &Ruby, error: MessagingError) -> Error {
    raise(
        ruby,
        class_name(&error),
        error.to_string(),
        error.is_transient(),
    )
}

/// A failure of the binding itself (a caught panic, no runtime): a bug, not
/// a queue condition. Whether the call took effect is unknown.
pub fn internal(ruby: &Ruby, what: &str) -> Error {
    raise(
        ruby,
        "InternalError",
        format!("tasker-messaging internal error: {what}"),
        false,
    )
}

/// A service whose queues live in another process (in-memory, after fork).
pub fn used_after_fork(ruby: &Ruby, made_in: u32) -> Error {
    raise(
        ruby,
        "UsedAfterFork",
        format!(
            "this in_memory service was created in process {made_in}; its queues live there, \
             not in this forked child ({}). Create a new service in the child.",
            std::process::id()
        ),
        false,
    )
}

/// The text of a caught panic.
pub fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs a method body, turning a panic into `InternalError` (magnus would
/// raise it as `fatal`, which ends the process).
pub fn guard<T>(ruby: &Ruby, body: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|panic| Err(internal(ruby, &panic_text(&*panic))))
}

/// `Result<T, MessagingError>` → `Result<T, magnus::Error>`.
pub trait OrRaise<T> {
    /// Converts the error to its Ruby exception.
    fn or_raise(self, ruby: &Ruby) -> Result<T, Error>;
}

impl<T> OrRaise<T> for Result<T, MessagingError> {
    fn or_raise(self, ruby: &Ruby) -> Result<T, Error> {
        self.map_err(|e| to_ruby(ruby, e))
    }
}

//! `TaskerCore::Native::Router`: the library's `NamespaceQueueRouter`.

use magnus::{Error, Ruby};
use tasker_messaging::{MessageRouter, NamespaceQueueRouter};

use crate::errors::guard;

/// Routes a namespace to its queue by a `{namespace}` pattern.
#[magnus::wrap(class = "TaskerCore::Native::Router", free_immediately, size)]
pub struct Router(NamespaceQueueRouter);

impl Router {
    pub fn new(ruby: &Ruby, pattern: String) -> Result<Self, Error> {
        guard(ruby, || Ok(Self(NamespaceQueueRouter::new(pattern))))
    }

    pub fn route_to_queue(
        ruby: &Ruby,
        rb_self: &Self,
        namespace: String,
        message_type: String,
    ) -> Result<String, Error> {
        guard(ruby, || {
            Ok(rb_self.0.route_to_queue(&namespace, &message_type))
        })
    }

    pub fn extract_namespace(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
    ) -> Result<Option<String>, Error> {
        guard(ruby, || Ok(rb_self.0.extract_namespace(&queue)))
    }
}

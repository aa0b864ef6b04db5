//! Mapping namespaces to queue names.

/// Decides which queue a message goes to, and reads the namespace back.
pub trait MessageRouter {
    /// The queue for a message of `message_type` in `namespace`.
    fn route_to_queue(&self, namespace: &str, message_type: &str) -> String;
    /// The namespace a queue name belongs to, if it follows this router's pattern.
    fn extract_namespace(&self, queue: &str) -> Option<String>;
}

/// Routes every message of a namespace to one queue named by a pattern,
/// `"{namespace}_queue"` by default: `fulfillment` → `fulfillment_queue`.
///
/// Build it from `[queues] namespace_pattern` with
/// [`NamespaceQueueRouter::new`]. The message type does not affect the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceQueueRouter {
    prefix: String,
    suffix: String,
}

impl NamespaceQueueRouter {
    /// The placeholder a pattern must contain.
    pub const PLACEHOLDER: &'static str = "{namespace}";

    /// A router for `pattern`, e.g. `"{namespace}_queue"`. A pattern without
    /// the placeholder routes every namespace to the pattern itself
    /// (config validation rejects such patterns).
    pub fn new(pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        match pattern.split_once(Self::PLACEHOLDER) {
            Some((prefix, suffix)) => Self {
                prefix: prefix.into(),
                suffix: suffix.into(),
            },
            None => Self {
                prefix: pattern,
                suffix: String::new(),
            },
        }
    }
}

impl Default for NamespaceQueueRouter {
    fn default() -> Self {
        Self::new("{namespace}_queue")
    }
}

impl MessageRouter for NamespaceQueueRouter {
    fn route_to_queue(&self, namespace: &str, _message_type: &str) -> String {
        format!("{}{namespace}{}", self.prefix, self.suffix)
    }

    fn extract_namespace(&self, queue: &str) -> Option<String> {
        let namespace = queue
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        (!namespace.is_empty()).then(|| namespace.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_reads_back() {
        let router = NamespaceQueueRouter::default();
        let queue = router.route_to_queue("fulfillment", "SimpleStepMessage");
        assert_eq!(queue, "fulfillment_queue");
        assert_eq!(
            router.extract_namespace(&queue).as_deref(),
            Some("fulfillment")
        );
        assert_eq!(router.extract_namespace("fulfillment"), None);
        assert_eq!(router.extract_namespace("_queue"), None);
    }

    #[test]
    fn custom_patterns() {
        let router = NamespaceQueueRouter::new("tasker_{namespace}_steps");
        assert_eq!(
            router.route_to_queue("billing", "x"),
            "tasker_billing_steps"
        );
        assert_eq!(
            router.extract_namespace("tasker_billing_steps").as_deref(),
            Some("billing")
        );
    }
}

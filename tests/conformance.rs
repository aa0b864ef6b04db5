//! The shared conformance suite, run against every provider: one line each.

mod common;

mod pgmq {
    tasker_messaging::conformance_tests!(crate::common::backend(tasker_messaging::Provider::Pgmq));
}

mod rabbitmq {
    tasker_messaging::conformance_tests!(crate::common::backend(
        tasker_messaging::Provider::RabbitMq
    ));
}

mod in_memory {
    tasker_messaging::conformance_tests!(crate::common::backend(
        tasker_messaging::Provider::InMemory
    ));
}

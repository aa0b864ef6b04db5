//! The shared conformance suite, run against every provider: one line each.
//! The second argument connects "another process" to the same queues.

mod common;

mod pgmq {
    tasker_messaging::conformance_tests!(
        crate::common::backend(tasker_messaging::Provider::Pgmq),
        |_| crate::common::backend(tasker_messaging::Provider::Pgmq)
    );
}

mod rabbitmq {
    tasker_messaging::conformance_tests!(
        crate::common::backend(tasker_messaging::Provider::RabbitMq),
        |_| crate::common::backend(tasker_messaging::Provider::RabbitMq)
    );
}

mod in_memory {
    // Clones share queues: the in-memory provider's only "other process".
    tasker_messaging::conformance_tests!(
        crate::common::backend(tasker_messaging::Provider::InMemory),
        |a: &tasker_messaging::MessageBackend| std::future::ready(a.clone())
    );
}

// A migrating backend in each direction: sends to the target, receives from
// both; its "other process" is a second migrating backend.
mod pgmq_to_rabbitmq {
    use tasker_messaging::Provider::{Pgmq, RabbitMq};
    tasker_messaging::conformance_tests!(crate::common::migrating(Pgmq, RabbitMq), |_| {
        crate::common::migrating(Pgmq, RabbitMq)
    });
}

mod rabbitmq_to_pgmq {
    use tasker_messaging::Provider::{Pgmq, RabbitMq};
    tasker_messaging::conformance_tests!(crate::common::migrating(RabbitMq, Pgmq), |_| {
        crate::common::migrating(RabbitMq, Pgmq)
    });
}

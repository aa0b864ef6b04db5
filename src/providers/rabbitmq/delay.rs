//! Delayed delivery on RabbitMQ 3.10 without plugins: fixed-TTL delay tiers
//! with dead-lettering, the design of kombu's native delayed delivery and
//! NServiceBus.
//!
//! The topology, declared once per backend, idempotently (every declaration
//! repeats harmlessly, from any number of processes):
//!
//! - for each level `k` in 0..20, a durable topic exchange `tasker.delay.k`
//!   and a quorum queue `tasker.delay.k` whose messages expire after 2^k s
//!   (`x-message-ttl`) and are dead-lettered, at least once
//!   (`x-dead-letter-strategy = at-least-once`, which needs
//!   `x-overflow = reject-publish`), to the exchange of level `k − 1`, or
//!   for level 0 to the headers exchange `tasker.delay.deliver`;
//! - a delayed message carries a routing key of 20 binary digits, the delay
//!   in whole seconds, most significant first (`d19.d18.….d0`). Exchange `k`
//!   routes a message whose digit `k` is 1 into queue `k` (it waits 2^k s
//!   there), and one whose digit is 0 straight on to the exchange of level
//!   `k − 1`. Dead-lettering keeps the routing key and the headers, so the
//!   message walks down the levels, waiting exactly the sum of its digits;
//! - `tasker.delay.deliver` routes on the header `tasker-delay-to`: every
//!   queue is bound to it with `x-match = all, tasker-delay-to = <queue>`
//!   (at `create_queue`, and at the first delayed send to it).
//!
//! A send publishes to `tasker.delay.19` with publisher confirms: it returns
//! once the first hop is durable in a quorum queue (or, for the digits a
//! message skips, in the destination queue), as a plain send does. Each
//! hop after that is an at-least-once dead-lettering inside the broker,
//! which keeps the message in its tier until the next queue confirmed it:
//! a restart or a hop never loses one, and may duplicate one. The maximum
//! delay is 2^20 − 1 s; a delay is rounded up to whole seconds.
//!
//! Delayed messages wait in tiers every queue shares: `get_queue_stats`
//! cannot count them per queue (`delayed_count` is `None`) and `purge_queue`
//! does not remove them. A queue deleted while some wait for it: at the last
//! hop nothing routes them, and at-least-once dead-lettering would keep
//! retrying them in level 0, where a few dozen such messages stall the
//! broker's dead-letter worker for every queue. So `tasker.delay.deliver`
//! has an alternate exchange, the fanout `tasker.delay.unroutable`, whose
//! quorum queue of the same name keeps the last 10,000 of them (older ones
//! are dropped): the deleted queue's delayed messages are discarded, as PGMQ
//! discards them with its table. A queue of the same name created before
//! they fall due receives them.

use std::time::Duration;

use amqprs::{
    channel::{
        Channel, ExchangeBindArguments, ExchangeDeclareArguments, QueueBindArguments,
        QueueDeclareArguments,
    },
    FieldTable, FieldValue,
};

use super::{admin::Admin, channel::CallError, errors};
use crate::MessagingError;

/// Levels: 2^0 … 2^19 s, so delays up to 2^20 − 1 s.
pub(super) const LEVELS: u32 = 20;
/// The exchange of the last hop.
pub(super) const DELIVER: &str = "tasker.delay.deliver";
/// The alternate exchange of the last hop, and its bounded queue.
pub(super) const UNROUTABLE: &str = "tasker.delay.unroutable";
/// How many unroutable delayed messages `UNROUTABLE` keeps.
const UNROUTABLE_KEPT: i64 = 10_000;
/// The header naming a delayed message's destination queue.
pub(super) const DELAY_TO: &str = "tasker-delay-to";

/// The exchange and queue of level `k`.
pub(super) fn level(k: u32) -> String {
    format!("tasker.delay.{k}")
}

/// The exchange a delayed send publishes to.
pub(super) fn first_exchange() -> String {
    level(LEVELS - 1)
}

/// The routing key of a delay of `secs` whole seconds: its 20 binary
/// digits, most significant first, separated by dots.
pub(super) fn routing_key(secs: u64) -> String {
    (0..LEVELS)
        .rev()
        .map(|k| if secs >> k & 1 == 1 { "1" } else { "0" })
        .collect::<Vec<_>>()
        .join(".")
}

/// A topic pattern that matches keys whose digit `k` is `digit`.
fn pattern(k: u32, digit: &str) -> String {
    let before = LEVELS - 1 - k;
    let mut words: Vec<&str> = (0..before).map(|_| "*").collect();
    words.push(digit);
    words.push("#");
    words.join(".")
}

/// Whole seconds of `delay`, rounded up.
pub(super) fn whole_secs(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

fn text(value: &str) -> FieldValue {
    FieldValue::from(value)
}

fn key(name: &str) -> amqprs::FieldName {
    // Only this module's constants, all far below 255 bytes.
    name.try_into().unwrap_or_default()
}

fn tier_arguments(k: u32, group_size: Option<u32>) -> FieldTable {
    let next = if k == 0 {
        DELIVER.to_owned()
    } else {
        level(k - 1)
    };
    let mut arguments = FieldTable::new();
    arguments.insert(key("x-queue-type"), text("quorum"));
    arguments.insert(key("x-message-ttl"), FieldValue::l(1000_i64 << k));
    arguments.insert(key("x-dead-letter-exchange"), text(&next));
    arguments.insert(key("x-dead-letter-strategy"), text("at-least-once"));
    arguments.insert(key("x-overflow"), text("reject-publish"));
    if let Some(size) = group_size {
        arguments.insert(
            key("x-quorum-initial-group-size"),
            FieldValue::l(i64::from(size)),
        );
    }
    arguments
}

/// A bounded quorum queue: the oldest message goes when it is full.
fn unroutable_arguments() -> FieldTable {
    let mut arguments = FieldTable::new();
    arguments.insert(key("x-queue-type"), text("quorum"));
    arguments.insert(key("x-max-length"), FieldValue::l(UNROUTABLE_KEPT));
    arguments.insert(key("x-overflow"), text("drop-head"));
    arguments
}

fn binding_to(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::new();
    arguments.insert(key("x-match"), text("all"));
    arguments.insert(key(DELAY_TO), text(queue));
    arguments
}

impl Admin {
    /// Declares the delay tiers (see the module), idempotently.
    pub(super) async fn declare_delay_tiers(&self) -> Result<(), MessagingError> {
        let group_size = self.group_size();
        self.run("declare_delay_tiers", None, move |c: Channel| async move {
            let exchange = |name: &str, kind: &str| {
                ExchangeDeclareArguments::new(name, kind)
                    .durable(true)
                    .finish()
            };
            c.exchange_declare(exchange(UNROUTABLE, "fanout")).await?;
            let args = QueueDeclareArguments::durable_client_named(UNROUTABLE)
                .arguments(unroutable_arguments())
                .finish();
            c.queue_declare(args).await?;
            c.queue_bind(QueueBindArguments::new(UNROUTABLE, UNROUTABLE, ""))
                .await?;
            let mut deliver = exchange(DELIVER, "headers");
            deliver
                .arguments
                .insert(key("alternate-exchange"), text(UNROUTABLE));
            c.exchange_declare(deliver).await?;
            // From level 0 up, so that every exchange a binding names exists.
            for k in 0..LEVELS {
                let name = level(k);
                c.exchange_declare(exchange(&name, "topic")).await?;
                let args = QueueDeclareArguments::durable_client_named(&name)
                    .arguments(tier_arguments(k, group_size))
                    .finish();
                c.queue_declare(args).await?;
                c.queue_bind(QueueBindArguments::new(&name, &name, &pattern(k, "1")))
                    .await?;
                let next = if k == 0 {
                    DELIVER.to_owned()
                } else {
                    level(k - 1)
                };
                c.exchange_bind(ExchangeBindArguments::new(&next, &name, &pattern(k, "0")))
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Binds `queue` to the last hop. `QueueNotFound` if it does not exist;
    /// `Ok(false)` when the tiers were never declared on this vhost.
    pub(super) async fn bind_delayed(&self, queue: &str) -> Result<bool, MessagingError> {
        let args = QueueBindArguments::new(queue, DELIVER, "")
            .arguments(binding_to(queue))
            .finish();
        match self
            .call(move |c| async move { c.queue_bind(args).await })
            .await?
        {
            Ok(()) => Ok(true),
            Err(CallError::Closed(closed)) if closed.code == errors::NOT_FOUND => {
                // The queue or the exchange: which one, the queue says.
                self.ready_count("send_message", queue).await?;
                Ok(false)
            }
            Err(error) => Err(errors::call_error("send_message", error, Some(queue))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digits_of_a_delay_route_it_through_its_levels() {
        assert_eq!(routing_key(5), "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1");
        assert_eq!(routing_key((1 << 20) - 1).matches('1').count(), 20);
        assert_eq!(pattern(LEVELS - 1, "1"), "1.#");
        assert_eq!(pattern(0, "0"), "*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.*.0.#");
        assert_eq!(whole_secs(Duration::from_millis(1500)), 2);
        assert_eq!(whole_secs(Duration::from_secs(3)), 3);
    }
}

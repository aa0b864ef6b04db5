//! AMQP message properties: what a publish carries and what a delivery tells.

use std::sync::LazyLock;

use amqprs::{BasicProperties, FieldName, FieldTable, FieldValue, DELIVERY_MODE_PERSISTENT};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::value::RawValue;
use uuid::{Uuid, Version};

use crate::{dead_letter::DeadLetterReason, Headers, QueueMessage};

/// Header with the enqueue time in milliseconds, on dead-letter copies only:
/// a message this library publishes carries it in its UUIDv7 id.
const ENQUEUED_AT_MS: &str = "x-tasker-enqueued-at-ms";
/// Set by quorum queues on redelivery: how many times the message went back.
const DELIVERY_COUNT: &str = "x-delivery-count";
/// Headers a release of another shape puts on the copy it publishes: the
/// hand-outs before it (the copy starts a fresh `x-delivery-count`), and when
/// a receiver that could not read the message first met it.
const HAND_OUTS: &str = "x-tasker-hand-outs";
const OTHER_SHAPE_SINCE_MS: &str = "x-tasker-other-shape-since-ms";
/// Headers a dead-letter move adds.
const DEAD_LETTER_REASON: &str = "x-tasker-dead-letter-reason";
const DEAD_LETTER_SOURCE: &str = "x-tasker-dead-letter-source";
/// AMQP short strings (property values, header names) hold at most 255 bytes;
/// amqprs panics on longer ones.
const SHORT_STR_MAX: usize = 255;

fn name(text: &str) -> FieldName {
    // Only called with this module's constants, all far below 255 bytes.
    text.try_into().unwrap_or_default()
}

/// A message ready to publish. A retried send publishes a clone, so every
/// copy the broker may store carries the same message id.
#[derive(Clone)]
pub(super) struct Outgoing {
    pub message_id: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
    /// `Some((exchange, routing key))` for a delayed send (`delay`);
    /// `None` publishes to the queue through the default exchange.
    pub route: Option<Box<(String, String)>>,
}

impl Outgoing {
    /// Adds the caller's headers (string values) and, for a delay of
    /// `delay_secs` > 0, routes the publish through the delay tiers to
    /// `queue` (see `delay`).
    pub(super) fn with_options(mut self, headers: &Headers, queue: &str, delay_secs: u64) -> Self {
        if headers.is_empty() && delay_secs == 0 {
            return self;
        }
        let mut table = self.properties.headers().cloned().unwrap_or_default();
        for (key, value) in headers {
            // Keys are checked at the gate: ASCII, at most 128 bytes.
            if let Ok(key) = FieldName::try_from(key.as_str()) {
                table.insert(key, FieldValue::from(value.as_str()));
            }
        }
        if delay_secs > 0 {
            table.insert(name(super::delay::DELAY_TO), FieldValue::from(queue));
            self.route = Some(Box::new((
                super::delay::first_exchange(),
                super::delay::routing_key(delay_secs),
            )));
        }
        self.properties.with_headers(table);
        self
    }
}

/// The caller's headers in a delivery's header table: string values under
/// keys a caller could have sent (`x-*`, `tasker*` and the like left out).
fn user_headers(table: Option<&FieldTable>) -> Headers {
    let Some(table) = table else {
        return Headers::new();
    };
    crate::send_options::user_headers(table.as_ref().iter().filter_map(|(k, v)| match v {
        FieldValue::S(v) => Some((k.as_ref().as_str(), v.as_ref().as_str())),
        _ => None,
    }))
}

/// Builds a persistent JSON publish with a fresh message id.
pub(super) fn outgoing<T: QueueMessage>(message: &T, body: Box<RawValue>) -> Outgoing {
    let now = Utc::now();
    // A UUIDv7 id carries the enqueue time to the millisecond, so a publish
    // needs no header table (one costs the broker about 5% of batch
    // throughput). Random bits from the thread-local RNG: `Uuid::now_v7`
    // makes a getrandom syscall per id.
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let message_id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
        .into_uuid()
        .to_string();
    let mut properties = BasicProperties::default();
    properties
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_content_type("application/json")
        .with_message_id(&message_id)
        .with_timestamp(u64::try_from(now.timestamp()).unwrap_or(0));
    let message_type = message.message_type();
    if message_type.len() <= SHORT_STR_MAX {
        properties.with_message_type(message_type);
    }
    let body: Box<str> = body.into();
    Outgoing {
        message_id,
        properties,
        body: body.into_string().into_bytes(),
        route: None,
    }
}

/// The copy of a delivery published to its dead-letter queue: the same id,
/// body and enqueue time, a fresh delivery count, and where and why it moved.
pub(super) fn dead_letter(
    original: &Delivered,
    body: Vec<u8>,
    source_queue: &str,
    reason: DeadLetterReason,
) -> Outgoing {
    let mut headers = FieldTable::new();
    // The caller's headers go with it (C38).
    for (key, value) in &original.headers {
        if let Ok(key) = FieldName::try_from(key.as_str()) {
            headers.insert(key, FieldValue::from(value.as_str()));
        }
    }
    headers.insert(
        name(ENQUEUED_AT_MS),
        FieldValue::l(original.enqueued_at.timestamp_millis()),
    );
    headers.insert(name(DEAD_LETTER_REASON), FieldValue::from(reason.as_str()));
    headers.insert(name(DEAD_LETTER_SOURCE), FieldValue::from(source_queue));
    let mut properties = BasicProperties::default();
    properties
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_message_id(&original.message_id)
        .with_timestamp(u64::try_from(original.enqueued_at.timestamp()).unwrap_or(0))
        .with_headers(headers);
    if let Some(content_type) = &original.content_type {
        properties.with_content_type(content_type);
    }
    Outgoing {
        message_id: original.message_id.clone(),
        properties,
        body,
        route: None,
    }
}

/// The copy of a delivery no caller was handed, published back to its queue
/// in its place (a delivery of another shape, or one the standing consumer
/// held): the same id, body, properties and enqueue time, its hand-outs so
/// far (this delivery was none) and, for another shape, when a receiver
/// that could not read it first met it (`other_shape_since`), in headers.
pub(super) fn uncounted_copy(
    original: &Delivered,
    properties: &BasicProperties,
    body: Vec<u8>,
    other_shape_since: Option<DateTime<Utc>>,
) -> Outgoing {
    let mut headers = FieldTable::new();
    let ours = [
        DELIVERY_COUNT,
        HAND_OUTS,
        OTHER_SHAPE_SINCE_MS,
        ENQUEUED_AT_MS,
    ]
    .map(name);
    if let Some(theirs) = properties.headers() {
        for (key, value) in theirs.as_ref() {
            if !ours.contains(key) {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    let hand_outs = original.receive_count.saturating_sub(1);
    headers.insert(name(HAND_OUTS), FieldValue::l(i64::from(hand_outs)));
    if let Some(since) = other_shape_since {
        headers.insert(
            name(OTHER_SHAPE_SINCE_MS),
            FieldValue::l(since.timestamp_millis()),
        );
    }
    headers.insert(
        name(ENQUEUED_AT_MS),
        FieldValue::l(original.enqueued_at.timestamp_millis()),
    );
    let mut properties = properties.clone();
    properties
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_headers(headers);
    // A message another publisher sent without an id keeps having none.
    if properties.message_id().is_some() {
        properties.with_message_id(&original.message_id);
    }
    Outgoing {
        message_id: original.message_id.clone(),
        properties,
        body,
        route: None,
    }
}

/// The copy of a delivery of another shape: an [`uncounted_copy`] that
/// records when a receiver that could not read it first met it (`now`, the
/// first time).
pub(super) fn other_shape_copy(
    original: &Delivered,
    properties: &BasicProperties,
    body: Vec<u8>,
    now: DateTime<Utc>,
) -> Outgoing {
    let since = original.other_shape_since.unwrap_or(now);
    uncounted_copy(original, properties, body, Some(since))
}

/// What a delivery's properties say about the message.
#[derive(Debug, Clone)]
pub(super) struct Delivered {
    pub message_id: String,
    /// Receives of the message, this one included.
    pub receive_count: u32,
    pub enqueued_at: DateTime<Utc>,
    /// When a receiver that could not read it first met it.
    pub other_shape_since: Option<DateTime<Utc>>,
    /// The caller's headers (the library's and the broker's left out).
    pub headers: Headers,
    /// Kept (already a short string) for the dead-letter copy.
    content_type: Option<String>,
}

/// Reads a delivery's properties. Every field is optional on the wire (other
/// publishers may omit them), so nothing here fails.
pub(super) fn delivered(properties: &BasicProperties, delivery_tag: u64) -> Delivered {
    // Built once: a lookup key is an allocated string.
    static KEYS: LazyLock<[FieldName; 4]> = LazyLock::new(|| {
        [
            DELIVERY_COUNT,
            ENQUEUED_AT_MS,
            HAND_OUTS,
            OTHER_SHAPE_SINCE_MS,
        ]
        .map(name)
    });
    let [delivery_count, enqueued_at_ms, hand_outs, other_shape_since_ms] = &*KEYS;
    let headers = properties.headers();
    let header = |key: &FieldName| headers.and_then(|h| h.get(key));
    // Absent on a first delivery; the quorum queue counts returns. A copy
    // published by a release of another shape carries the earlier hand-outs.
    let returns = header(delivery_count).and_then(integer).unwrap_or(0);
    let before = header(hand_outs).and_then(integer).unwrap_or(0);
    let receive_count = u32::try_from(returns.saturating_add(before).saturating_add(1))
        .unwrap_or(u32::MAX)
        .max(1);
    // The header (dead-letter copies), else the UUIDv7 id, else the
    // whole-second `timestamp` another publisher may have set.
    let enqueued_at = header(enqueued_at_ms)
        .and_then(integer)
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .or_else(|| properties.message_id().and_then(|id| id_time(id)))
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|s| i64::try_from(s).ok())
                .and_then(|s| Utc.timestamp_opt(s, 0).single())
        })
        .unwrap_or_else(Utc::now);
    Delivered {
        message_id: properties
            .message_id()
            .cloned()
            // Not ours: name it by delivery tag so logs can still point at it.
            .unwrap_or_else(|| format!("delivery-{delivery_tag}")),
        receive_count,
        enqueued_at,
        other_shape_since: header(other_shape_since_ms)
            .and_then(integer)
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        headers: user_headers(headers),
        content_type: properties.content_type().cloned(),
    }
}

/// The time in a UUIDv7 id.
fn id_time(message_id: &str) -> Option<DateTime<Utc>> {
    let id = Uuid::try_parse(message_id).ok()?;
    if id.get_version() != Some(Version::SortRand) {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Utc.timestamp_opt(i64::try_from(secs).ok()?, nanos).single()
}

fn integer(value: &FieldValue) -> Option<i64> {
    match value {
        FieldValue::b(v) => Some(i64::from(*v)),
        FieldValue::B(v) => Some(i64::from(*v)),
        FieldValue::s(v) => Some(i64::from(*v)),
        FieldValue::u(v) => Some(i64::from(*v)),
        FieldValue::I(v) => Some(i64::from(*v)),
        FieldValue::i(v) => Some(i64::from(*v)),
        FieldValue::l(v) => Some(*v),
        FieldValue::T(v) => i64::try_from(*v).ok(),
        _ => None,
    }
    .filter(|v| *v >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleStepMessage;

    #[test]
    fn a_first_delivery_counts_one_and_keeps_the_enqueue_time() {
        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
        let body = crate::codec::encode(&step, 1024).unwrap();
        let out = outgoing(&step, body);
        let seen = delivered(&out.properties, 7);
        assert_eq!(seen.message_id, out.message_id);
        assert_eq!(seen.receive_count, 1);
        assert!(out.properties.headers().is_none(), "no header table");
        assert!((Utc::now() - seen.enqueued_at).num_seconds().abs() < 5);
        // From the id, to the millisecond (`timestamp` has whole seconds).
        let id = Uuid::parse_str(&out.message_id).unwrap();
        assert_eq!(id.get_version(), Some(Version::SortRand));
        assert_eq!(id_time(&out.message_id), Some(seen.enqueued_at));
        assert_eq!(
            out.properties.delivery_mode(),
            Some(DELIVERY_MODE_PERSISTENT)
        );
    }

    #[test]
    fn the_delivery_count_header_adds_to_the_receive_count() {
        let mut headers = FieldTable::new();
        headers.insert(name(DELIVERY_COUNT), FieldValue::l(2));
        let mut properties = BasicProperties::default();
        properties.with_headers(headers);
        let seen = delivered(&properties.finish(), 9);
        assert_eq!(seen.receive_count, 3);
        assert_eq!(seen.message_id, "delivery-9");
    }

    #[test]
    fn a_copy_of_another_shape_keeps_its_hand_outs_and_first_meeting() {
        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
        let out = outgoing(&step, crate::codec::encode(&step, 1024).unwrap());
        let mut headers = FieldTable::new();
        headers.insert(name(DELIVERY_COUNT), FieldValue::l(2));
        headers.insert(name("x-theirs"), FieldValue::l(7));
        let mut properties = out.properties.clone();
        properties.with_headers(headers);
        let first = delivered(&properties, 1);
        assert_eq!(first.receive_count, 3);
        let now = Utc::now();
        let copy = other_shape_copy(&first, &properties, out.body.clone(), now);
        let seen = delivered(&copy.properties, 2);
        // This read was no hand-out: the next delivery of the copy is the third.
        assert_eq!(seen.receive_count, 3);
        assert_eq!(seen.message_id, out.message_id);
        assert_eq!(seen.enqueued_at, first.enqueued_at);
        let since = seen.other_shape_since.expect("first meeting recorded");
        assert_eq!(since.timestamp_millis(), now.timestamp_millis());
        let again = other_shape_copy(&seen, &copy.properties, out.body, Utc::now());
        let again = delivered(&again.properties, 3);
        assert_eq!(again.receive_count, 3, "released again: still no hand-out");
        assert_eq!(again.other_shape_since, seen.other_shape_since);
        let headers = copy.properties.headers().unwrap();
        assert!(
            headers.get(&name("x-theirs")).is_some(),
            "other headers kept"
        );
    }

    #[test]
    fn caller_headers_travel_and_a_delay_routes_through_the_tiers() {
        let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());
        let headers: Headers = [("tenant".to_owned(), "acme".to_owned())].into();
        let out = outgoing(&step, crate::codec::encode(&step, 1024).unwrap())
            .with_options(&headers, "q", 5);
        let (exchange, key) = &**out.route.as_ref().unwrap();
        assert_eq!(exchange, "tasker.delay.19");
        assert!(key.ends_with("1.0.1"));
        let seen = delivered(&out.properties, 1);
        assert_eq!(seen.headers, headers, "tasker-delay-to is not shown");
        let copy = dead_letter(&seen, out.body, "q", DeadLetterReason::Poison);
        assert_eq!(delivered(&copy.properties, 2).headers, headers);
    }
}

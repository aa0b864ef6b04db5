//! The metrics of a call, and the few only a provider knows (dead letters,
//! releases, breaker transitions, reconnects). Names and labels are listed
//! in the parent module.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use metrics::{counter, gauge, histogram, Label};

use super::{span::Observed, Op};
use crate::{CircuitState, MessagingError, Provider};

const SYSTEM: &str = "messaging.system";
const DESTINATION: &str = "messaging.destination.name";
const OPERATION: &str = "messaging.operation.name";
const OPERATION_TYPE: &str = "messaging.operation.type";
const ERROR_TYPE: &str = "error.type";
const OUTCOME: &str = "outcome";

/// Whether the application enabled metrics ([`super::enable_metrics`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The labels every per-call metric carries.
fn base(system: &'static str, op: Op, queue: &str) -> Vec<Label> {
    let mut labels = Vec::with_capacity(5);
    labels.push(Label::from_static_parts(SYSTEM, system));
    labels.push(Label::new(DESTINATION, queue.to_owned()));
    labels.push(Label::from_static_parts(OPERATION, op.name()));
    labels
}

fn with(mut labels: Vec<Label>, key: &'static str, value: &'static str) -> Vec<Label> {
    labels.push(Label::from_static_parts(key, value));
    labels
}

/// Records the metrics of one finished call.
pub(crate) fn finish<T: Observed>(
    system: &'static str,
    op: Op,
    queue: &str,
    count: Option<usize>,
    elapsed: Duration,
    result: &Result<T, MessagingError>,
) {
    let labels = base(system, op, queue);
    let error = result.as_ref().err().map(MessagingError::kind);

    let mut timed = labels.clone();
    if let Some(kind) = op.operation_type() {
        timed.push(Label::from_static_parts(OPERATION_TYPE, kind));
    }
    if let Some(kind) = error {
        timed.push(Label::from_static_parts(ERROR_TYPE, kind));
    }
    histogram!(super::OPERATION_DURATION, timed).record(elapsed.as_secs_f64());

    if let Some(kind) = error {
        counter!(super::ERRORS, with(labels.clone(), ERROR_TYPE, kind)).increment(1);
    }
    if op.is_send() {
        let sent = count.unwrap_or(1) as u64;
        if sent > 0 {
            let sent_labels = match error {
                Some(kind) => with(labels, ERROR_TYPE, kind),
                None => labels,
            };
            counter!(super::SENT_MESSAGES, sent_labels).increment(sent);
        }
        return;
    }
    if op.is_settle() {
        settled(labels, count, result);
        return;
    }
    if let Ok(Some(consumed)) = result.as_ref().map(Observed::consumed) {
        if consumed > 0 {
            counter!(super::CONSUMED_MESSAGES, labels).increment(consumed as u64);
        }
    }
}

/// One count per receipt, by outcome.
fn settled<T: Observed>(
    labels: Vec<Label>,
    count: Option<usize>,
    result: &Result<T, MessagingError>,
) {
    let add = |outcome: &'static str, n: usize| {
        if n > 0 {
            counter!(
                super::SETTLED_MESSAGES,
                with(labels.clone(), OUTCOME, outcome)
            )
            .increment(n as u64);
        }
    };
    match result {
        Err(error) => add(error.kind(), count.unwrap_or(1)),
        Ok(value) => match value.outcomes() {
            None => add("ok", 1),
            Some(outcomes) => {
                let ok = outcomes.iter().filter(|o| o.is_ok()).count();
                add("ok", ok);
                // Few kinds: one count per failed receipt.
                for failed in outcomes.iter().filter_map(|o| o.as_ref().err()) {
                    add(failed.kind(), 1);
                }
            }
        },
    }
}

/// A receive sent a message of `queue` to its dead-letter queue.
pub(crate) fn dead_lettered(provider: Provider, queue: &str, reason: &'static str) {
    if !enabled() {
        return;
    }
    counter!(
        super::DEAD_LETTERED_MESSAGES,
        SYSTEM => provider.tag(),
        DESTINATION => queue.to_owned(),
        "reason" => reason,
    )
    .increment(1);
}

/// A receive made `n` messages of `queue` of another shape ready again.
pub(crate) fn released(provider: Provider, queue: &str, n: usize) {
    if !enabled() || n == 0 {
        return;
    }
    counter!(
        super::RELEASED_MESSAGES,
        SYSTEM => provider.tag(),
        DESTINATION => queue.to_owned(),
    )
    .increment(n as u64);
}

/// `provider`'s circuit breaker is now in `state` (a transition). Keyed by
/// provider only: two backends of one provider set the same gauge.
pub(crate) fn breaker_state(provider: Provider, state: CircuitState) {
    if !enabled() {
        return;
    }
    let value = match state {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open => 2.0,
    };
    gauge!(super::CIRCUIT_BREAKER_STATE, SYSTEM => provider.tag()).set(value);
}

/// `provider`'s connection to its server was re-established.
pub(crate) fn reconnected(provider: Provider) {
    counter!(super::RECONNECTS, SYSTEM => provider.tag()).increment(1);
}

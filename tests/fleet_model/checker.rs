//! The reference model: reads a finished [`History`] and lists every way it
//! breaks the contract.
//!
//! Uncertain calls (dropped, or an error that cannot say) count as "maybe
//! happened" in whichever direction excuses an observation, so they never
//! raise an alarm; a purge or a queue deletion excuses a missing message that
//! was sent before it ended (an uncertain one: before `LANDS_LATE` after
//! it, since a statement its caller stopped waiting for still runs). Lease timing is judged with [`SLACK`] either
//! way, from the receive calls' spans (a lease starts somewhere inside its
//! receive).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
    time::Duration,
};

use tasker_messaging::MessageId;
use uuid::Uuid;

use crate::history::{Delivery, Event, History, Outcome, Settle, Span, LANDS_LATE};

/// Scheduling slack allowed around a lease's end.
pub const SLACK: Duration = Duration::from_millis(250);

/// One broken rule, when the history shows it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: &'static str,
    /// When the run made it visible (the offending call's end).
    pub at: Duration,
    pub detail: String,
}

struct SettleRef<'a> {
    backend: usize,
    queue: usize,
    kind: Settle,
    span: Span,
    outcome: &'a Outcome,
}

/// Every violation `history` shows, ordered by when it became visible.
pub fn check(history: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let d = &history.deliveries;
    // Index the events.
    let mut sends: HashMap<Uuid, (usize, usize, Span, &Outcome)> = HashMap::new();
    let mut settles: HashMap<usize, Vec<SettleRef>> = HashMap::new();
    // (queue, span, outcome, what, by which process; `usize::MAX`: any).
    let mut wipes: Vec<(usize, Span, &Outcome, &'static str, usize)> = Vec::new();
    let mut lost_receives: Vec<(usize, Span)> = Vec::new();
    for event in &history.events {
        match event {
            Event::Send {
                backend,
                queue,
                ids,
                span,
                outcome,
            } => {
                for id in ids {
                    sends.insert(*id, (*backend, *queue, *span, outcome));
                }
            }
            Event::Settle {
                backend,
                queue,
                kind,
                lease,
                span,
                outcome,
            } => settles.entry(*lease).or_default().push(SettleRef {
                backend: *backend,
                queue: *queue,
                kind: *kind,
                span: *span,
                outcome,
            }),
            Event::Purge {
                queue,
                span,
                outcome,
            } => wipes.push((*queue, *span, outcome, "purge", usize::MAX)),
            Event::DeleteQueue {
                backend,
                queue,
                span,
                outcome,
            } => wipes.push((*queue, *span, outcome, "delete_queue", *backend)),
            Event::LostReceive { queue, span } => lost_receives.push((*queue, *span)),
        }
    }
    // A receive that returned nothing to its caller and overlapped
    // [from, to] on `queue`: it may have counted a hand-out no one saw.
    let lost_receive_between = |queue: usize, from: Duration, to: Duration| {
        lost_receives
            .iter()
            .any(|(q, span)| *q == queue && span.end + LANDS_LATE > from && span.start < to)
    };
    let mut by_message: HashMap<(Uuid, MessageId), Vec<usize>> = HashMap::new();
    let mut by_payload: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, delivery) in d.iter().enumerate() {
        by_message.entry(delivery.key()).or_default().push(i);
        by_payload.entry(delivery.payload).or_default().push(i);
    }
    let no_settles = Vec::new();
    let settles_of = |lease: usize| settles.get(&lease).unwrap_or(&no_settles);
    let ok_deletes = |key: &(Uuid, MessageId)| -> Vec<(usize, Span)> {
        by_message[key]
            .iter()
            .flat_map(|&l| {
                settles_of(l)
                    .iter()
                    .filter(|s| s.kind == Settle::Delete && *s.outcome == Outcome::Ok)
                    .map(move |s| (l, s.span))
            })
            .collect()
    };
    let story = |payload: Uuid| history_of(history, &sends, &settles, payload);

    // A delivery of a message never sent, or of one sent to another queue.
    for delivery in d {
        match sends.get(&delivery.payload) {
            None => found.push(Violation {
                rule: "phantom message",
                at: delivery.span.end,
                detail: format!("{} was never sent", delivery.payload),
            }),
            Some((_, queue, ..)) if *queue != delivery.queue => found.push(Violation {
                rule: "message crossed queues",
                at: delivery.span.end,
                detail: story(delivery.payload),
            }),
            _ => {}
        }
    }

    // No Ok send lost, no leased message vanished: every message that was
    // stored (an Ok send, or seen) is in the final drain or was maybe
    // removed by a delete through one of its own leases, a purge or a queue
    // deletion.
    for (payload, (_, queue, sent, outcome)) in &sends {
        let seen = by_payload.get(payload);
        if **outcome != Outcome::Ok && seen.is_none() {
            continue;
        }
        let seen = seen.map(Vec::as_slice).unwrap_or(&[]);
        if seen.iter().any(|&l| d[l].drain) {
            continue;
        }
        let deleted = seen.iter().any(|&l| {
            settles_of(l)
                .iter()
                .any(|s| s.kind == Settle::Delete && s.outcome.maybe())
        });
        let wiped = wipes.iter().any(|(q, span, outcome, _, _)| {
            q == queue && outcome.maybe() && outcome.lands_by(*span) > sent.start
        });
        if !deleted && !wiped {
            found.push(Violation {
                rule: if seen.is_empty() {
                    "Ok send lost"
                } else {
                    "message vanished"
                },
                at: sent.end,
                detail: story(*payload),
            });
        }
    }

    for (key, leases) in &by_message {
        // Where counts are exact, hand-outs count 1, 2, 3, ...: no number is
        // skipped unless a receive that returned nothing to its caller ran
        // between the two hand-outs (it may have counted one, C13).
        if history.exact_receive_count {
            let mut by_count: Vec<&Delivery> = leases.iter().map(|&l| &d[l]).collect();
            by_count.sort_by_key(|l| l.receive_count);
            let sent_at = sends.get(&key.0).map_or(Duration::ZERO, |s| s.2.start);
            let mut before = (0, sent_at);
            for then in by_count {
                if then.receive_count > before.0 + 1
                    && !lost_receive_between(then.queue, before.1, then.span.end)
                {
                    found.push(Violation {
                        rule: "receive_count skipped a hand-out",
                        at: then.span.end,
                        detail: story(key.0),
                    });
                }
                before = (then.receive_count, then.span.start);
            }
        }
        let deletes = ok_deletes(key);
        // At most one Ok delete per message.
        if deletes.len() > 1 {
            found.push(Violation {
                rule: "message deleted twice",
                at: deletes.iter().map(|(_, s)| s.end).max().unwrap_or_default(),
                detail: format!("{} (Ok deletes: {deletes:?})", story(key.0)),
            });
        }
        // No Ok delete undone.
        for (_, deleted) in &deletes {
            for &l in leases {
                if d[l].span.start > deleted.end {
                    found.push(Violation {
                        rule: "Ok delete undone",
                        at: d[l].span.end,
                        detail: story(key.0),
                    });
                }
            }
        }
        for (i, &l1) in leases.iter().enumerate() {
            let a = &d[l1];
            for &l2 in &leases[i + 1..] {
                let b = &d[l2];
                // receive_count grows with every hand-out.
                let (first, then) = if a.span.end < b.span.start {
                    (a, b)
                } else {
                    (b, a)
                };
                if first.span.end < then.span.start && then.receive_count <= first.receive_count {
                    found.push(Violation {
                        rule: "receive_count not monotonic",
                        at: then.span.end,
                        detail: story(key.0),
                    });
                }
                // Never two live leases: both hand-outs fell inside one lease.
                let from = a.span.start.min(b.span.start);
                let to = a.span.end.max(b.span.end);
                let ended = |l: usize| {
                    settles_of(l)
                        .iter()
                        .any(|s| s.kind != Settle::Extend && s.outcome.maybe() && s.span.start < to)
                };
                if !a.drain
                    && !b.drain
                    && to - from + SLACK < a.lease.min(b.lease)
                    && !ended(l1)
                    && !ended(l2)
                {
                    found.push(Violation {
                        rule: "two live leases on one message",
                        at: to,
                        detail: story(key.0),
                    });
                }
            }
        }
    }

    // Receipts settle only the lease they name, and only while it lives.
    for (&lease, calls) in &settles {
        let leased = &d[lease];
        let others = &by_message[&leased.key()];
        let deletes = ok_deletes(&leased.key());
        for call in calls {
            let mut flag = |rule: &'static str| {
                found.push(Violation {
                    rule,
                    at: call.span.end,
                    detail: story(leased.payload),
                })
            };
            if *call.outcome == Outcome::Ok {
                if call.queue != leased.queue {
                    flag("receipt settled on another queue");
                }
                // Only a recreate by the process that holds the lease: a
                // RabbitMQ process is not told of another's (C14), and its
                // old receipt then acks a delivery that went with the queue.
                let recreated = wipes.iter().any(|(q, span, outcome, what, by)| {
                    *q == leased.queue
                        && *what == "delete_queue"
                        && *by == leased.backend
                        && **outcome == Outcome::Ok
                        && span.start > leased.span.end
                        && span.end < call.span.start
                });
                if recreated {
                    flag("receipt from a deleted queue settled");
                }
                if deletes.iter().any(|(_, s)| s.end < call.span.start) {
                    flag("receipt settled a deleted message");
                }
                let superseded = others.iter().any(|&o| {
                    o != lease
                        && d[o].span.start > leased.span.end
                        && d[o].span.end < call.span.start
                });
                if superseded {
                    flag("stale receipt settled a newer lease");
                }
            }
            // A live lease refused to its own holder.
            let live_until = leased.span.start + leased.lease;
            if call.outcome.is_lease_refusal()
                && call.backend == leased.backend
                && call.queue == leased.queue
                && call.span.end + SLACK < live_until
            {
                let ended = calls.iter().any(|s| {
                    s.kind != Settle::Extend && s.outcome.maybe() && s.span.start < call.span.end
                });
                let wiped = wipes.iter().any(|(q, span, outcome, what, _)| {
                    *q == leased.queue
                        && *what == "delete_queue"
                        && outcome.maybe()
                        && span.start < call.span.end
                        && outcome.lands_by(*span) > leased.span.start
                });
                if !ended && !wiped {
                    flag("live lease refused to its holder");
                }
            }
        }
    }
    for (at, what) in &history.hung {
        found.push(Violation {
            rule: "call hung",
            at: *at,
            detail: format!("{what} did not return within 20 s"),
        });
    }
    found.sort_by_key(|v| v.at);
    found
}

/// A message's story, for a report: its send, deliveries and settles.
fn history_of(
    history: &History,
    sends: &HashMap<Uuid, (usize, usize, Span, &Outcome)>,
    settles: &HashMap<usize, Vec<SettleRef>>,
    payload: Uuid,
) -> String {
    let mut text = format!("message {payload}:");
    let Some((by, queue, sent, outcome)) = sends.get(&payload) else {
        return text;
    };
    let _ = write!(
        text,
        "\n    sent by process {by} to q{queue} {} -> {outcome:?}",
        at(sent)
    );
    let last = history
        .deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| d.payload == payload)
        .flat_map(|(l, _)| settles.get(&l).into_iter().flatten())
        .map(|s| s.span.end)
        .max()
        .unwrap_or(sent.end);
    for event in &history.events {
        let (what, q, span, outcome) = match event {
            Event::Purge {
                queue,
                span,
                outcome,
            } => ("purged", queue, span, outcome),
            Event::DeleteQueue {
                queue,
                span,
                outcome,
                ..
            } => ("deleted", queue, span, outcome),
            Event::Send { .. } | Event::Settle { .. } | Event::LostReceive { .. } => continue,
        };
        if q == queue && outcome.lands_by(*span) > sent.start && span.start < last {
            let _ = write!(text, "\n    q{q} {what} {} -> {outcome:?}", at(span));
        }
    }
    let mut seen = HashSet::new();
    for (l, delivery) in history.deliveries.iter().enumerate() {
        if delivery.payload != payload || !seen.insert(l) {
            continue;
        }
        let Delivery {
            backend,
            queue,
            message_id,
            receive_count,
            span,
            drain,
            ..
        } = delivery;
        let who = if *drain {
            "the final drain".to_string()
        } else {
            format!("process {backend}")
        };
        let _ = write!(
            text,
            "\n    lease #{l}: received by {who} from q{queue} {} (id {message_id}, receive_count {receive_count})",
            at(span)
        );
        for s in settles.get(&l).into_iter().flatten() {
            let _ = write!(
                text,
                "\n      {:?} via process {} on q{} {} -> {:?}",
                s.kind,
                s.backend,
                s.queue,
                at(&s.span),
                s.outcome
            );
        }
    }
    text
}

fn at(span: &Span) -> String {
    format!(
        "at {:.3}-{:.3}s",
        span.start.as_secs_f64(),
        span.end.as_secs_f64()
    )
}

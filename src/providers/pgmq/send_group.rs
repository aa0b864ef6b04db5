//! Concurrent `send_message` calls grouped into one statement (group commit).
//!
//! Every commit waits for PostgreSQL to flush its WAL, so sixteen callers
//! sending one message each pay sixteen flushes. Here a send joins a line of
//! pending sends; a flush task starts at once when fewer than [`FLUSHERS`]
//! run, so a lone sender waits for no window. Sends that arrive while the
//! flushers are with the server line up, and the next flush to come free
//! takes them as one `pgmq.send_batch` (up to `pgmq.max_send_group`, all to
//! one queue). The window is therefore adaptive: as long as one round trip
//! when the server is busy, none when it is idle.
//!
//! A send that finds the line empty and a flush place free does not line up
//! at all: it takes the place and stores its own message from its own task
//! ([`SendGroups::lead`]), as an ungrouped send would. That spares the lone
//! sender the hand-off to a flush task (about 15% of its latency, measured).
//! Sends that line up behind it are taken by a flush task started when it
//! gives its place back.
//!
//! Nothing is lost and nothing is claimed: a statement is one transaction,
//! so a failed group stored none of its messages and every caller in it gets
//! the error; a caller is told `Ok` only with the id the server returned for
//! its own message. A flush task that ends without replying (a panic, the
//! runtime shutting down) drops the replies, and its callers get a
//! `Connection` error saying the message may or may not be stored.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::{MessagingError, Provider};

/// Flush tasks at once: one statement with the server while the next group
/// forms. More would split the line into smaller groups (more commits); a
/// reasoned choice, not yet measured against other counts.
pub(super) const FLUSHERS: usize = 2;

/// One send waiting for its statement.
pub(super) struct Pending {
    pub queue: Box<str>,
    pub body: Box<RawValue>,
    pub reply: oneshot::Sender<Result<i64, MessagingError>>,
}

#[derive(Default)]
struct Line {
    pending: VecDeque<Pending>,
    flushing: usize,
}

/// The line of sends of one service (and its clones).
pub(super) struct SendGroups {
    line: Mutex<Line>,
    max_group: usize,
}

impl fmt::Debug for SendGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGroups")
            .field("max_group", &self.max_group)
            .finish_non_exhaustive()
    }
}

impl SendGroups {
    pub(super) fn new(max_group: usize) -> Self {
        Self {
            line: Mutex::default(),
            max_group: max_group.max(1),
        }
    }

    /// Whether sends are grouped at all (`max_send_group` above 1); if not,
    /// each is stored on its own, as by `send_batch`.
    pub(super) fn groups(&self) -> bool {
        self.max_group > 1
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // Critical sections only move entries in and out of the line.
        crate::sync::lock(&self.line)
    }

    /// Lines `send` up; `true` when the caller must start a flush task.
    pub(super) fn push(&self, send: Pending) -> bool {
        let mut line = self.lock();
        line.pending.push_back(send);
        if line.flushing < FLUSHERS {
            line.flushing += 1;
            true
        } else {
            false
        }
    }

    /// Takes a flush place for a send of the caller's own, when the line is
    /// empty and a place is free; the caller then stores its message itself
    /// and must hand the place back with [`Self::hand_back`].
    pub(super) fn lead(&self) -> bool {
        let mut line = self.lock();
        if line.pending.is_empty() && line.flushing < FLUSHERS {
            line.flushing += 1;
            true
        } else {
            false
        }
    }

    /// Gives back a place [`Self::lead`] took; `true` when sends lined up
    /// meanwhile and the caller must start a flush task in its stead (the
    /// place passes to it).
    pub(super) fn hand_back(&self) -> bool {
        let mut line = self.lock();
        if line.pending.is_empty() {
            line.flushing -= 1;
            false
        } else {
            true
        }
    }

    /// The next group for a flush task: the oldest send and those after it
    /// to the same queue, up to `max_group`. `None` ends the task.
    pub(super) fn next_group(&self) -> Option<Vec<Pending>> {
        let mut line = self.lock();
        let Some(first) = line.pending.pop_front() else {
            line.flushing -= 1;
            return None;
        };
        let mut group = vec![first];
        let mut i = 0;
        while group.len() < self.max_group && i < line.pending.len() {
            if line.pending[i].queue == group[0].queue {
                group.extend(line.pending.remove(i));
            } else {
                i += 1;
            }
        }
        Some(group)
    }

    /// A flush task is ending without `next_group` returning `None` (it
    /// panicked): give its place up, and fail the sends still in line rather
    /// than leave them to wait for a send that may never come.
    pub(super) fn abandon(&self) {
        let orphans = {
            let mut line = self.lock();
            line.flushing -= 1;
            if line.flushing == 0 {
                std::mem::take(&mut line.pending)
            } else {
                VecDeque::new()
            }
        };
        // Dropping their replies fails them (see `unanswered`).
        drop(orphans);
    }
}

/// Gives a flush task's place back if it ends early; defused once
/// `next_group` returned `None`. Armed before the task is spawned, so a task
/// dropped unpolled (its runtime shut down) hands its place back too.
pub(super) struct FlushGuard(pub Arc<SendGroups>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Replies to every send of `group`: each its own id, in order, or the
/// group's error.
pub(super) fn reply(group: Vec<Pending>, result: Result<Vec<i64>, MessagingError>) {
    match result {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for send in group {
                let answer = ids.next().ok_or_else(|| {
                    MessagingError::connection(
                        Provider::Pgmq,
                        "the server returned fewer ids than messages; this one may or may not have been stored",
                        None,
                    )
                });
                // The caller may have gone away; its message is stored anyway.
                let _ = send.reply.send(answer);
            }
        }
        Err(error) => {
            let mut group = group.into_iter();
            let first = group.next();
            for send in group {
                let _ = send.reply.send(Err(copy_error(&error)));
            }
            if let Some(send) = first {
                let _ = send.reply.send(Err(error));
            }
        }
    }
}

/// The error a caller sees when its flush task ended without a reply.
pub(super) fn unanswered() -> MessagingError {
    MessagingError::connection(
        Provider::Pgmq,
        "the grouped send ended without a reply; the message may or may not have been stored",
        None,
    )
}

/// The same failure for another caller of the group: errors are not `Clone`
/// (their driver source is not), so the copy keeps everything but that.
fn copy_error(error: &MessagingError) -> MessagingError {
    use MessagingError as E;
    match error {
        E::QueueNotFound { queue } => E::QueueNotFound {
            queue: queue.clone(),
        },
        E::CircuitOpen { provider } => E::CircuitOpen {
            provider: *provider,
        },
        E::Connection {
            provider, message, ..
        } => E::connection(*provider, message.clone(), None),
        other => E::Provider {
            provider: Provider::Pgmq,
            operation: "send_message",
            message: other.to_string(),
            transient: other.is_transient(),
            source: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(queue: &str) -> (Pending, oneshot::Receiver<Result<i64, MessagingError>>) {
        let (reply, answer) = oneshot::channel();
        let body = RawValue::from_string("{}".into()).expect("JSON");
        let queue = queue.into();
        (Pending { queue, body, reply }, answer)
    }

    #[test]
    fn groups_one_queue_at_a_time_up_to_the_limit() {
        let groups = SendGroups::new(2);
        let mut answers = Vec::new();
        let mut starts = 0;
        for queue in ["a", "b", "a", "a"] {
            let (send, answer) = pending(queue);
            starts += usize::from(groups.push(send));
            answers.push(answer);
        }
        assert_eq!(
            starts, FLUSHERS,
            "a flush starts while fewer than FLUSHERS run"
        );
        let first = groups.next_group().expect("a group");
        assert_eq!(
            first.iter().map(|p| &*p.queue).collect::<Vec<_>>(),
            ["a", "a"]
        );
        let second = groups.next_group().expect("a group");
        assert_eq!(second.iter().map(|p| &*p.queue).collect::<Vec<_>>(), ["b"]);
        let third = groups.next_group().expect("a group");
        assert_eq!(third.len(), 1);
        assert!(groups.next_group().is_none());
        assert_eq!(groups.lock().flushing, FLUSHERS - 1);

        reply(first, Ok(vec![7]));
        assert_eq!(answers[0].try_recv().unwrap().unwrap(), 7);
        assert!(answers[2].try_recv().unwrap().is_err(), "no id, no success");
        reply(
            second,
            Err(MessagingError::QueueNotFound { queue: "b".into() }),
        );
        assert!(matches!(
            answers[1].try_recv().unwrap(),
            Err(MessagingError::QueueNotFound { .. })
        ));
    }

    #[test]
    fn a_lone_send_leads_and_hands_over_what_lined_up() {
        let groups = SendGroups::new(10);
        assert!(groups.lead(), "an idle line: the send stores its own");
        assert!(!groups.hand_back(), "nothing lined up: the place is free");
        assert_eq!(groups.lock().flushing, 0);

        assert!(groups.lead());
        assert!(groups.lead(), "a second place");
        assert!(!groups.lead(), "no third: FLUSHERS are busy");
        let (send, _answer) = pending("a");
        assert!(!groups.push(send), "lined up behind the leaders");
        assert!(!groups.lead(), "the line is not empty");
        assert!(groups.hand_back(), "a send waits: a flush task takes over");
        assert_eq!(groups.lock().flushing, FLUSHERS);
        assert!(groups.next_group().is_some());
        assert!(groups.next_group().is_none());
        assert!(!groups.hand_back());
        assert_eq!(groups.lock().flushing, 0);
    }

    #[test]
    fn an_abandoned_flush_fails_what_waits() {
        let groups = Arc::new(SendGroups::new(10));
        let (send, mut answer) = pending("a");
        assert!(groups.push(send));
        drop(FlushGuard(groups.clone()));
        assert!(answer.try_recv().is_err(), "the reply was dropped");
        assert_eq!(groups.lock().flushing, 0);
        let (send, _answer) = pending("a");
        assert!(groups.push(send), "the next send starts a flush again");
    }
}

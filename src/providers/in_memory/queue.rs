//! One in-memory queue: messages by id (FIFO), the ready set and the leases.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::{receipt::Receipt, Headers};

#[derive(Debug)]
struct Stored {
    body: Box<str>,
    headers: Headers,
    /// `Some(due)` while a delayed send's delay runs.
    due: Option<Instant>,
    enqueued_at: DateTime<Utc>,
    /// Hand-outs to callers (reads of another shape are taken back out).
    receive_count: u32,
    /// `Some(deadline)` while leased.
    lease: Option<Instant>,
    /// When a receiver that could not read it first met it.
    other_shape_since: Option<Instant>,
    /// Its place in line: its id, or a later number once it was sent to the
    /// back (read as another shape).
    place: u64,
}

/// A message handed out by [`Queue::lease_next`].
pub(super) struct Received {
    pub id: u64,
    pub body: Box<str>,
    pub headers: Headers,
    pub enqueued_at: DateTime<Utc>,
    pub receive_count: u32,
    pub other_shape_since: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Queue {
    /// Drawn when the queue is created: receipts name it, so that one from
    /// before a delete and a create names no lease of this queue, whose ids
    /// and receive counts start over.
    incarnation: u64,
    next_id: u64,
    messages: BTreeMap<u64, Stored>,
    /// `(place, id)` of messages not leased, in FIFO order.
    ready: BTreeSet<(u64, u64)>,
    /// `(deadline, id)` of every lease, earliest first.
    leases: BTreeSet<(Instant, u64)>,
    /// `(due, id)` of every delayed message, earliest first.
    delayed: BTreeSet<(Instant, u64)>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            incarnation: crate::receipt::new_scope(),
            next_id: 0,
            messages: BTreeMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            delayed: BTreeSet::new(),
        }
    }
}

impl Queue {
    /// What this queue's receipts name as their scope.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn push(&mut self, body: Box<str>) -> u64 {
        self.push_with(body, Headers::new(), None)
    }

    /// Adds a message with headers, ready at once or, with `due`, only once
    /// that instant has passed (a delayed send).
    pub fn push_with(&mut self, body: Box<str>, headers: Headers, due: Option<Instant>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.messages.insert(
            id,
            Stored {
                body,
                headers,
                due,
                enqueued_at: Utc::now(),
                receive_count: 0,
                lease: None,
                other_shape_since: None,
                place: id,
            },
        );
        match due {
            Some(due) => {
                self.delayed.insert((due, id));
            }
            None => {
                self.ready.insert((id, id));
            }
        }
        id
    }

    /// Makes every message whose lease ended, or whose delay ran out, at or
    /// before `now` ready again.
    pub fn release_expired(&mut self, now: Instant) {
        while let Some(&(due, id)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(stored) = self.messages.get_mut(&id) {
                stored.due = None;
                self.ready.insert((stored.place, id));
            }
        }
        while let Some(&(deadline, id)) = self.leases.first() {
            if deadline > now {
                break;
            }
            self.leases.pop_first();
            if let Some(stored) = self.messages.get_mut(&id) {
                stored.lease = None;
                self.ready.insert((stored.place, id));
            }
        }
    }

    /// Leases the oldest ready message until `deadline`.
    pub fn lease_next(&mut self, deadline: Instant) -> Option<Received> {
        let (_, id) = self.ready.pop_first()?;
        let stored = self.messages.get_mut(&id)?;
        stored.receive_count = stored.receive_count.saturating_add(1);
        stored.lease = Some(deadline);
        self.leases.insert((deadline, id));
        Some(Received {
            id,
            body: stored.body.clone(),
            headers: stored.headers.clone(),
            enqueued_at: stored.enqueued_at,
            receive_count: stored.receive_count,
            other_shape_since: stored.other_shape_since,
        })
    }

    /// Makes a message read as another shape ready again at `now`, at the
    /// back of the line, taking that read back out of its receive count (it
    /// was no hand-out).
    pub fn release_other_shape(&mut self, receipt: Receipt, now: Instant) {
        // Places and ids come from one counter: a new place is behind every message.
        let place = self.next_id + 1;
        if self.put_back_uncounted(receipt, Some(place)) {
            self.next_id = place;
            if let Some(stored) = self.messages.get_mut(&receipt.id) {
                stored.other_shape_since.get_or_insert(now);
            }
        }
    }

    /// Makes a leased message ready again at once, taking the read that
    /// leased it back out of its receive count (it reached no caller): at
    /// its place, or at `new_place`. False if the lease is not live.
    pub fn put_back_uncounted(&mut self, receipt: Receipt, new_place: Option<u64>) -> bool {
        let Some(deadline) = self.live_lease(receipt) else {
            return false;
        };
        self.leases.remove(&(deadline, receipt.id));
        let Some(stored) = self.messages.get_mut(&receipt.id) else {
            return false;
        };
        stored.lease = None;
        stored.receive_count = stored.receive_count.saturating_sub(1);
        stored.place = new_place.unwrap_or(stored.place);
        self.ready.insert((stored.place, receipt.id));
        true
    }

    /// Removes a message outright, returning its body and headers.
    pub fn remove(&mut self, id: u64) -> Option<(Box<str>, Headers)> {
        let stored = self.messages.remove(&id)?;
        self.ready.remove(&(stored.place, id));
        if let Some(deadline) = stored.lease {
            self.leases.remove(&(deadline, id));
        }
        if let Some(due) = stored.due {
            self.delayed.remove(&(due, id));
        }
        Some((stored.body, stored.headers))
    }

    /// The live lease `receipt` names, if it is still held.
    fn live_lease(&self, receipt: Receipt) -> Option<Instant> {
        if receipt.scope != self.incarnation {
            return None;
        }
        let stored = self.messages.get(&receipt.id)?;
        (u64::from(stored.receive_count) == receipt.lease)
            .then_some(stored.lease)
            .flatten()
    }

    pub fn delete_leased(&mut self, receipt: Receipt) -> bool {
        self.live_lease(receipt).is_some() && self.remove(receipt.id).is_some()
    }

    /// Moves a live lease's deadline; a deadline of now releases the message.
    pub fn extend_lease(&mut self, receipt: Receipt, deadline: Instant) -> bool {
        let Some(old) = self.live_lease(receipt) else {
            return false;
        };
        self.leases.remove(&(old, receipt.id));
        self.leases.insert((deadline, receipt.id));
        if let Some(stored) = self.messages.get_mut(&receipt.id) {
            stored.lease = Some(deadline);
        }
        self.release_expired(Instant::now());
        true
    }

    pub fn purge_ready(&mut self) -> u64 {
        let ready = std::mem::take(&mut self.ready);
        for (_, id) in &ready {
            self.messages.remove(id);
        }
        ready.len() as u64
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn leased_len(&self) -> usize {
        self.leases.len()
    }

    pub fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    pub fn oldest_enqueued_at(&self) -> Option<DateTime<Utc>> {
        self.messages.first_key_value().map(|(_, m)| m.enqueued_at)
    }
}

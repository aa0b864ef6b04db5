//! `TaskerCore::Native::Backend`: one `MessageBackend`, each method a call
//! through the `MessagingService` gate with the GVL released. No queue logic
//! lives here: arguments are converted, the call is made, results converted.

use std::{
    mem::{self, ManuallyDrop},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use magnus::{
    time::{Offset, Timespec},
    value::ReprValue,
    Error, IntoValue, RArray, RHash, Ruby, Value,
};
use tasker_messaging::{
    wait_deadline, MessageBackend, MessagingConfig, MessagingError, MessagingService, Provider,
    QueuedMessage, ReceiptHandle, SendOptions,
};

use crate::{
    config,
    errors::{self, guard, OrRaise},
    gvl,
    message::RubyMessage,
    runtime,
};

/// A connected backend and the process it was connected in. Never dropped
/// with it: a forked child must leak its parent's backend (dropping would
/// close connections the parent still uses); `Backend`'s `Drop` releases it
/// in the process that made it.
struct Connected {
    pid: u32,
    backend: ManuallyDrop<Arc<MessageBackend>>,
}

/// The Ruby object behind a `TaskerCore::Services::MessageService`.
#[magnus::wrap(class = "TaskerCore::Native::Backend", size)]
pub struct Backend {
    /// Locked only with the GVL held and never across a blocking call, so no
    /// thread holds it when Ruby forks.
    connected: Mutex<Connected>,
    /// Kept to reconnect in a forked child.
    config: MessagingConfig,
    /// The process that called `close` before using the service: a forked
    /// child with no backend of its own. It stays closed (no reconnect).
    closed_in: AtomicU32,
}

impl Backend {
    /// `Backend.connect(overrides_json, config_file)`: loads the Rust
    /// configuration with the overrides on top, then connects.
    pub fn connect(
        ruby: &Ruby,
        overrides_json: Option<String>,
        config_file: Option<String>,
    ) -> Result<Self, Error> {
        guard(ruby, || {
            let config =
                config::load(overrides_json.as_deref(), config_file.as_deref()).or_raise(ruby)?;
            let backend = connect_now(ruby, &config)?;
            Ok(Self {
                connected: Mutex::new(Connected {
                    pid: std::process::id(),
                    backend: ManuallyDrop::new(backend),
                }),
                config,
                closed_in: AtomicU32::new(0),
            })
        })
    }

    /// The backend to call in this process. In a forked child, a server
    /// provider reconnects (the parent's connections and runtime threads
    /// are not the child's to use); an in-memory one refuses, since its
    /// queues stay in the parent.
    fn current(&self, ruby: &Ruby) -> Result<Arc<MessageBackend>, Error> {
        let pid = std::process::id();
        if self.closed_in.load(Ordering::SeqCst) == pid {
            let closed = MessagingError::Closed {
                provider: self.config.provider,
            };
            return Err::<Arc<MessageBackend>, _>(closed).or_raise(ruby);
        }
        let made_in = {
            let connected = lock(&self.connected);
            if connected.pid == pid {
                return Ok(Arc::clone(&*connected.backend));
            }
            connected.pid
        };
        if self.config.provider == Provider::InMemory {
            return Err(errors::used_after_fork(ruby, made_in));
        }
        let fresh = connect_now(ruby, &self.config)?;
        let mut connected = lock(&self.connected);
        if connected.pid != pid {
            // The parent's backend is leaked (see `Connected`).
            *connected = Connected {
                pid,
                backend: ManuallyDrop::new(Arc::clone(&fresh)),
            };
            return Ok(fresh);
        }
        // Another thread reconnected first; this one's extra backend goes.
        let backend = Arc::clone(&*connected.backend);
        drop(connected);
        drop_here(fresh);
        Ok(backend)
    }

    /// Runs `op` on this process's backend with the GVL released (again,
    /// if a Ruby interrupt that raises nothing cancelled it).
    fn call<T, F, Fut>(&self, ruby: &Ruby, op: F) -> Result<T, Error>
    where
        F: Fn(Arc<MessageBackend>) -> Fut,
        Fut: std::future::Future<Output = Result<T, MessagingError>> + Send,
        T: Send,
    {
        let backend = self.current(ruby)?;
        gvl::block_on(ruby, || op(Arc::clone(&backend)))?.or_raise(ruby)
    }

    /// This process's backend, for the benchmark baseline.
    pub fn backend(&self, ruby: &Ruby) -> Result<Arc<MessageBackend>, Error> {
        self.current(ruby)
    }

    pub fn provider(ruby: &Ruby, rb_self: &Self) -> Result<&'static str, Error> {
        guard(ruby, || Ok(rb_self.config.provider.tag()))
    }

    pub fn health_check(ruby: &Ruby, rb_self: &Self) -> Result<bool, Error> {
        guard(ruby, || {
            rb_self.call(ruby, |b| async move { b.health_check().await })
        })
    }

    pub fn create_queue(ruby: &Ruby, rb_self: &Self, queue: String) -> Result<bool, Error> {
        guard(ruby, || {
            let queue = &queue;
            rb_self.call(ruby, |b| async move { b.create_queue(queue).await })?;
            Ok(true)
        })
    }

    pub fn delete_queue(ruby: &Ruby, rb_self: &Self, queue: String) -> Result<bool, Error> {
        guard(ruby, || {
            let queue = &queue;
            rb_self.call(ruby, |b| async move { b.delete_queue(queue).await })?;
            Ok(true)
        })
    }

    /// `body` is the message as JSON text (the Ruby side generates it);
    /// `delay` in seconds (0: none) and `headers` as flat `[key, value, ...]`
    /// strings (the Ruby side flattens its Hash).
    pub fn send_message(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        body: String,
        delay: f64,
        headers: Vec<String>,
    ) -> Result<String, Error> {
        guard(ruby, || {
            let message = &RubyMessage::parse(body).or_raise(ruby)?;
            let options = &send_options(delay, headers).or_raise(ruby)?;
            let queue = &queue;
            let id = rb_self.call(ruby, |b| async move {
                b.send_message_with(queue, message, options).await
            })?;
            Ok(id.to_string())
        })
    }

    /// As [`send_message`](Self::send_message), for many bodies with the
    /// same options.
    pub fn send_batch(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        bodies: Vec<String>,
        delay: f64,
        headers: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        guard(ruby, || {
            let messages = bodies
                .into_iter()
                .map(RubyMessage::parse)
                .collect::<Result<Vec<_>, _>>()
                .or_raise(ruby)?;
            let options = &send_options(delay, headers).or_raise(ruby)?;
            let (queue, messages) = (&queue, &messages);
            let ids = rb_self.call(ruby, |b| async move {
                b.send_batch_with(queue, messages, options).await
            })?;
            Ok(ids.iter().map(ToString::to_string).collect())
        })
    }

    /// `wait` nil: `receive_messages`; a number of seconds:
    /// `receive_messages_wait`. One row per message:
    /// `[message_id, receipt, enqueued_at, receive_count, expires_at, body]`.
    pub fn receive(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        max_messages: usize,
        visibility_timeout: f64,
        wait: Option<f64>,
    ) -> Result<RArray, Error> {
        guard(ruby, || {
            let lease = seconds(visibility_timeout, "visibility_timeout").or_raise(ruby)?;
            let wait = wait.map(wait_seconds).transpose().or_raise(ruby)?;
            // A retried wait (see `call`) waits only for what is left. The
            // deadline is the Rust rule's: `None` inside is a wait with no end.
            let deadline = wait.map(|wait| wait_deadline(Instant::now(), wait));
            let queue = &queue;
            let messages = rb_self.call(ruby, |b| async move {
                match deadline {
                    None => {
                        b.receive_messages::<RubyMessage>(queue, max_messages, lease)
                            .await
                    }
                    Some(deadline) => {
                        let wait = deadline.map_or(Duration::MAX, |deadline| {
                            deadline.saturating_duration_since(Instant::now())
                        });
                        b.receive_messages_wait::<RubyMessage>(queue, max_messages, lease, wait)
                            .await
                    }
                }
            })?;
            rows(ruby, messages)
        })
    }

    pub fn delete_message(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        receipt: String,
    ) -> Result<bool, Error> {
        guard(ruby, || {
            let (queue, receipt) = (&queue, &receipt_handle(receipt));
            rb_self.call(
                ruby,
                |b| async move { b.delete_message(queue, receipt).await },
            )?;
            Ok(true)
        })
    }

    /// One outcome per receipt, in order: `true`, or the exception
    /// `delete_message` would have raised for it (returned, not raised).
    pub fn delete_messages(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        receipts: Vec<String>,
    ) -> Result<RArray, Error> {
        guard(ruby, || {
            let receipts: Vec<ReceiptHandle> = receipts.into_iter().map(receipt_handle).collect();
            let (queue, receipts) = (&queue, &receipts);
            let outcomes =
                rb_self.call(
                    ruby,
                    |b| async move { b.delete_messages(queue, receipts).await },
                )?;
            let array = ruby.ary_new_capa(outcomes.len());
            for outcome in outcomes {
                match outcome {
                    Ok(()) => array.push(true)?,
                    Err(error) => match errors::to_ruby(ruby, error).value() {
                        Some(exception) => array.push(exception)?,
                        None => array.push(false)?,
                    },
                }
            }
            Ok(array)
        })
    }

    pub fn change_message_visibility(
        ruby: &Ruby,
        rb_self: &Self,
        queue: String,
        receipt: String,
        visibility_timeout: f64,
    ) -> Result<bool, Error> {
        guard(ruby, || {
            let (queue, receipt) = (&queue, &receipt_handle(receipt));
            let lease = seconds(visibility_timeout, "visibility_timeout").or_raise(ruby)?;
            rb_self.call(ruby, |b| async move {
                b.change_message_visibility(queue, receipt, lease).await
            })?;
            Ok(true)
        })
    }

    /// The stats as a Hash with the `QueueStats` field names as symbols.
    pub fn queue_stats(ruby: &Ruby, rb_self: &Self, queue: String) -> Result<RHash, Error> {
        guard(ruby, || {
            let queue = &queue;
            let stats = rb_self.call(ruby, |b| async move { b.get_queue_stats(queue).await })?;
            let hash = ruby.hash_new();
            hash.aset(ruby.to_symbol("queue_name"), stats.queue_name)?;
            hash.aset(ruby.to_symbol("message_count"), stats.message_count)?;
            hash.aset(ruby.to_symbol("in_flight_count"), stats.in_flight_count)?;
            hash.aset(
                ruby.to_symbol("oldest_message_age_seconds"),
                stats.oldest_message_age_seconds,
            )?;
            hash.aset(ruby.to_symbol("dead_letter_count"), stats.dead_letter_count)?;
            hash.aset(ruby.to_symbol("delayed_count"), stats.delayed_count)?;
            Ok(hash)
        })
    }

    pub fn purge_queue(ruby: &Ruby, rb_self: &Self, queue: String) -> Result<u64, Error> {
        guard(ruby, || {
            let queue = &queue;
            rb_self.call(ruby, |b| async move { b.purge_queue(queue).await })
        })
    }

    /// `[namespace_pattern, namespaces, default_visibility_timeout_secs, max_receive_count]`.
    pub fn queues_config(ruby: &Ruby, rb_self: &Self) -> Result<RArray, Error> {
        guard(ruby, || {
            let q = &rb_self.config.queues;
            Ok(ruby.ary_new_from_values(&[
                q.namespace_pattern.as_str().into_value_with(ruby),
                q.namespaces.clone().into_value_with(ruby),
                q.default_visibility_timeout_secs.into_value_with(ruby),
                q.max_receive_count.into_value_with(ruby),
            ]))
        })
    }

    /// `Capabilities` as a Hash of booleans.
    pub fn capabilities(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        guard(ruby, || {
            let c = rb_self.current(ruby)?.capabilities();
            let hash = ruby.hash_new();
            for (key, value) in [
                ("atomic_batch", c.atomic_batch),
                ("exact_in_flight", c.exact_in_flight),
                ("message_ages_known", c.message_ages_known),
                ("broker_confirmed_delete", c.broker_confirmed_delete),
                ("durable", c.durable),
                ("portable_receipts", c.portable_receipts),
                ("exact_receive_count", c.exact_receive_count),
            ] {
                hash.aset(ruby.to_symbol(key), value)?;
            }
            Ok(hash)
        })
    }

    /// Closes this process's backend (C33): waiting receives end with
    /// `Closed`, settles that returned are given their grace to be applied,
    /// and every later call raises `Closed`. Idempotent. In a forked child
    /// that never used the service there is no connection of its own to
    /// close: the child is marked closed, so later calls raise `Closed`
    /// instead of reconnecting.
    pub fn close(ruby: &Ruby, rb_self: &Self) -> Result<bool, Error> {
        guard(ruby, || {
            let pid = std::process::id();
            if lock(&rb_self.connected).pid != pid {
                rb_self.closed_in.store(pid, Ordering::SeqCst);
                return Ok(true);
            }
            rb_self.call(ruby, |b| async move { b.close().await })?;
            Ok(true)
        })
    }

    /// Whether this process's backend was closed.
    pub fn is_closed(ruby: &Ruby, rb_self: &Self) -> Result<bool, Error> {
        guard(ruby, || {
            let pid = std::process::id();
            if rb_self.closed_in.load(Ordering::SeqCst) == pid {
                return Ok(true);
            }
            let connected = lock(&rb_self.connected);
            Ok(connected.pid == pid && connected.backend.is_closed())
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let connected = self
            .connected
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if connected.pid == std::process::id() {
            // SAFETY: taken once, here, and the field is not used again.
            drop_here(unsafe { ManuallyDrop::take(&mut connected.backend) });
        }
    }
}

/// Drops a backend made in this process inside its runtime (a RabbitMQ
/// connection closes itself on a spawned task), never unwinding into Ruby.
fn drop_here(backend: Arc<MessageBackend>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match runtime::built_here() {
            Some(runtime) => {
                let _guard = runtime.enter();
                drop(backend);
            }
            None => mem::forget(backend),
        }
    }));
}

fn connect_now(ruby: &Ruby, config: &MessagingConfig) -> Result<Arc<MessageBackend>, Error> {
    let backend = gvl::block_on(ruby, || MessageBackend::connect(config))?.or_raise(ruby)?;
    Ok(Arc::new(backend))
}

fn lock(connected: &Mutex<Connected>) -> std::sync::MutexGuard<'_, Connected> {
    connected
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds from Ruby (Integer or Float) as a `Duration`.
pub fn seconds(value: f64, name: &str) -> Result<Duration, MessagingError> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        MessagingError::InvalidArgument(format!(
            "{name} must be a finite number of seconds >= 0 (got {value})"
        ))
    })
}

/// Send options from Ruby: a delay in seconds and flat header pairs.
fn send_options(delay: f64, headers: Vec<String>) -> Result<SendOptions, MessagingError> {
    if headers.len() % 2 != 0 {
        return Err(MessagingError::InvalidArgument(
            "headers must be key, value pairs".into(),
        ));
    }
    let mut pairs = headers.into_iter();
    let mut options = SendOptions::new().delay(seconds(delay, "delay")?);
    while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
        options = options.header(key, value);
    }
    Ok(options)
}

/// A `wait` from Ruby: seconds as for [`seconds`], except that a wait longer
/// than any `Duration` (up to `Float::INFINITY`) is one with no end, as in Rust.
fn wait_seconds(value: f64) -> Result<Duration, MessagingError> {
    if value > 0.0 && Duration::try_from_secs_f64(value).is_err() {
        return Ok(Duration::MAX);
    }
    seconds(value, "wait")
}

fn receipt_handle(text: String) -> ReceiptHandle {
    match text.parse() {
        Ok(receipt) => receipt,
        Err(never) => match never {},
    }
}

/// A UTC `Time` from seconds and nanoseconds since the epoch.
fn time(ruby: &Ruby, secs: i64, nanos: u32) -> Result<Value, Error> {
    let spec = Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    Ok(ruby.time_timespec_new(spec, Offset::utc())?.as_value())
}

/// A message's headers as a Ruby Hash of Strings.
fn headers(ruby: &Ruby, headers: &tasker_messaging::Headers) -> Result<Value, Error> {
    let hash = ruby.hash_new();
    for (key, value) in headers {
        hash.aset(ruby.str_new(key), ruby.str_new(value))?;
    }
    Ok(hash.as_value())
}

fn rows(ruby: &Ruby, messages: Vec<QueuedMessage<RubyMessage>>) -> Result<RArray, Error> {
    let rows = ruby.ary_new_capa(messages.len());
    for message in messages {
        let meta = &message.metadata;
        rows.push(ruby.ary_new_from_values(&[
            ruby.str_new(meta.message_id.as_str()).as_value(),
            ruby.str_new(meta.receipt_handle.as_str()).as_value(),
            time(
                ruby,
                meta.enqueued_at.timestamp(),
                meta.enqueued_at.timestamp_subsec_nanos(),
            )?,
            meta.receive_count.into_value_with(ruby),
            time(
                ruby,
                meta.visibility_timeout_expires.timestamp(),
                meta.visibility_timeout_expires.timestamp_subsec_nanos(),
            )?,
            ruby.str_new(message.message.text()).as_value(),
            headers(ruby, &meta.headers)?,
        ]))?;
    }
    Ok(rows)
}

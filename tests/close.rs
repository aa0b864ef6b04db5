//! C33 across a process exit: a child process (this test binary, run again
//! with `TASKER_CLOSE_CHILD` set) receives and deletes a queue's messages,
//! then ends its backend one of several ways (see [`Mode`]) and exits at
//! once. The parent then counts what comes back: after the child's
//! connection is gone on RabbitMQ, after its leases could have ended on PGMQ.
//!
//! The default cases check 1,000 messages, deleted one at a time, then
//! `close`: nothing comes back. `redelivered_without_close_measured` gives
//! the README's "Shutting down" figures:
//! `cargo test --test close redelivered_without_close_measured -- --ignored
//! --nocapture`.
//!
//! `rabbitmq_burst` and `pgmq_burst` are an ignored measurement tool (seconds
//! per run) driven by env knobs: `BURST_N` (messages, default 10,000),
//! `BURST_SEQ` (set: delete one at a time; unset: each received batch's
//! deletes at once), `BURST_MODE` (`true`: close; `cancel`: a close cut short
//! after `BURST_CANCEL_MS` (default 20), then a second close; `cancel_drop`:
//! cut short, then dropped; anything else: dropped without close), e.g.
//! `BURST_CANCEL_MS=0 BURST_SEQ=1 BURST_MODE=cancel cargo test --test close
//! rabbitmq_burst -- --ignored --nocapture`.

mod common;

use std::{collections::HashSet, process::Command, time::Duration};

use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingService, Provider, SimpleStepMessage,
};

const CHILD_ENV: &str = "TASKER_CLOSE_CHILD";
/// The default cases' queue size.
const MESSAGES: usize = 1_000;
/// The child's leases: short, so PGMQ's come back soon if a delete was lost.
const LEASE: Duration = Duration::from_secs(3);

/// How the child ends its backend after its last delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `close`, awaited.
    Close,
    /// A `close` cut short after the cancel delay, then a second `close`.
    CancelThenClose,
    /// A `close` cut short after the cancel delay, then the backend dropped.
    CancelThenDrop,
    /// The backend dropped without `close`.
    Drop,
}

impl Mode {
    /// `BURST_MODE`'s spelling, also the child's.
    fn parse(tag: &str) -> Self {
        match tag {
            "true" => Self::Close,
            "cancel" => Self::CancelThenClose,
            "cancel_drop" => Self::CancelThenDrop,
            _ => Self::Drop,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Close => "true",
            Self::CancelThenClose => "cancel",
            Self::CancelThenDrop => "cancel_drop",
            Self::Drop => "drop",
        }
    }
}

/// One child run.
#[derive(Clone, Copy, Debug)]
struct Run {
    messages: usize,
    /// One `delete_message` at a time, or each received batch's at once.
    one_by_one: bool,
    mode: Mode,
    /// How long the first `close` runs before it is cut short.
    cancel_after: Duration,
}

impl Run {
    /// The default cases' run: [`MESSAGES`], deleted one at a time.
    fn default_with(mode: Mode) -> Self {
        Self {
            messages: MESSAGES,
            one_by_one: true,
            mode,
            cancel_after: Duration::ZERO,
        }
    }

    /// The burst run, from the `BURST_*` knobs.
    fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            messages: usize::try_from(number("BURST_N", 10_000)).expect("BURST_N fits usize"),
            one_by_one: std::env::var("BURST_SEQ").is_ok(),
            mode: Mode::parse(&std::env::var("BURST_MODE").unwrap_or_else(|_| "true".into())),
            cancel_after: Duration::from_millis(number("BURST_CANCEL_MS", 20)),
        }
    }

    /// `provider|queue|messages|one_by_one|mode|cancel_ms`, for the child.
    fn spec(self, provider: Provider, queue: &str) -> String {
        format!(
            "{}|{queue}|{}|{}|{}|{}",
            provider.tag(),
            self.messages,
            self.one_by_one,
            self.mode.tag(),
            self.cancel_after.as_millis()
        )
    }

    fn from_spec(spec: &str) -> (Provider, String, Self) {
        let parts: Vec<&str> = spec.split('|').collect();
        let [provider, queue, messages, one_by_one, mode, cancel_ms] = parts[..] else {
            panic!("{CHILD_ENV} is not provider|queue|messages|one_by_one|mode|cancel_ms: {spec}");
        };
        let provider = match provider {
            "pgmq" => Provider::Pgmq,
            "rabbitmq" => Provider::RabbitMq,
            other => panic!("no provider {other}"),
        };
        let run = Self {
            messages: messages.parse().expect("messages"),
            one_by_one: one_by_one == "true",
            mode: Mode::parse(mode),
            cancel_after: Duration::from_millis(cancel_ms.parse().expect("cancel_ms")),
        };
        (provider, queue.to_owned(), run)
    }
}

/// Runs one child over a fresh queue of `run.messages` messages; returns how
/// many of them came back afterwards.
async fn redelivered_after_child(provider: Provider, run: Run) -> usize {
    let backend = common::backend(provider).await;
    let queue = unique_queue("close_child");
    backend.create_queue(&queue).await.expect("create_queue");
    let sent: Vec<SimpleStepMessage> = (0..run.messages).map(|_| step()).collect();
    for chunk in sent.chunks(100) {
        backend.send_batch(&queue, chunk).await.expect("send_batch");
    }
    let spec = run.spec(provider, &queue);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().expect("the test binary"))
            .args(["child_process", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, spec)
            .output()
            .expect("run the child")
    })
    .await
    .expect("child task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains(&format!("deleted {n} ({n} distinct)", n = run.messages)),
        "child failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("child: {}", stdout.trim());
    if provider == Provider::Pgmq {
        // A delete lost on PGMQ would show only once its lease ended.
        tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    }
    let mut back = 0;
    loop {
        let got = backend
            .receive_messages_wait::<SimpleStepMessage>(
                &queue,
                100,
                Duration::from_secs(60),
                Duration::from_secs(2),
            )
            .await
            .expect("receive what came back");
        if got.is_empty() {
            break;
        }
        back += got.len();
    }
    backend.delete_queue(&queue).await.expect("delete_queue");
    backend.close().await.expect("close the parent's backend");
    back
}

/// C33: the child closes before exiting; nothing it deleted comes back.
async fn a_process_that_closes_leaves_nothing_to_redeliver(provider: Provider) {
    let back = redelivered_after_child(provider, Run::default_with(Mode::Close)).await;
    assert_eq!(
        back, 0,
        "{provider}: {back} of {MESSAGES} deleted messages came back after close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_process_that_closes_leaves_nothing_to_redeliver() {
    a_process_that_closes_leaves_nothing_to_redeliver(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmq_a_process_that_closes_leaves_nothing_to_redeliver() {
    a_process_that_closes_leaves_nothing_to_redeliver(Provider::Pgmq).await;
}

/// The README's "Shutting down" figures: rounds with and without `close`
/// on each server provider, printed (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the README, not a check"]
async fn redelivered_without_close_measured() {
    const ROUNDS: usize = 5;
    for provider in [Provider::RabbitMq, Provider::Pgmq] {
        for mode in [Mode::Close, Mode::Drop] {
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                rounds.push(redelivered_after_child(provider, Run::default_with(mode)).await);
            }
            let total: usize = rounds.iter().sum();
            println!(
                "{provider} {}: redelivered {rounds:?} of {MESSAGES} per round, \
                 {total} of {} in all",
                if mode == Mode::Close {
                    "with close"
                } else {
                    "without close"
                },
                MESSAGES * ROUNDS
            );
        }
    }
}

/// The burst measurement: one run from the `BURST_*` knobs (module docs).
async fn burst(provider: Provider) {
    let run = Run::from_env();
    let back = redelivered_after_child(provider, run).await;
    println!(
        "RESULT {provider} mode={} n={} one_by_one={} cancel_after={:?}: {back} came back",
        run.mode.tag(),
        run.messages,
        run.one_by_one,
        run.cancel_after
    );
    assert_eq!(back, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement tool: see the module docs"]
async fn rabbitmq_burst() {
    burst(Provider::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement tool: see the module docs"]
async fn pgmq_burst() {
    burst(Provider::Pgmq).await;
}

/// The child: only does anything when run by the cases above, with
/// `TASKER_CLOSE_CHILD` set to a [`Run::spec`]. It receives and deletes
/// every message, prints `deleted N (D distinct)`, ends its backend as the
/// mode says and exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the cases above as a child process"]
async fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (provider, queue, run) = Run::from_spec(&spec);
    let queue = queue.as_str();
    let backend: MessageBackend = common::backend(provider).await;
    // 60 s for the default 1,000; more for bigger bursts.
    let budget = Duration::from_millis(30 * run.messages as u64).max(Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + budget;
    let mut deleted = 0;
    let mut distinct = HashSet::new();
    while deleted < run.messages && tokio::time::Instant::now() < deadline {
        let got = backend
            .receive_messages_wait::<SimpleStepMessage>(queue, 100, LEASE, Duration::from_secs(1))
            .await
            .expect("receive");
        if run.one_by_one {
            for message in &got {
                backend
                    .delete_message(queue, message.receipt())
                    .await
                    .expect("delete_message");
            }
        } else {
            let deletes = got
                .iter()
                .map(|message| backend.delete_message(queue, message.receipt()));
            for result in futures_util::future::join_all(deletes).await {
                result.expect("delete_message");
            }
        }
        for message in &got {
            deleted += 1;
            distinct.insert(message.message.step_uuid);
        }
    }
    println!("deleted {deleted} ({} distinct)", distinct.len());
    let started = std::time::Instant::now();
    match run.mode {
        Mode::Close => backend.close().await.expect("close"),
        Mode::CancelThenClose => {
            let first = tokio::time::timeout(run.cancel_after, backend.close()).await;
            let second = std::time::Instant::now();
            backend.close().await.expect("second close");
            println!(
                "first close cut short: {}; second close took {:?}",
                first.is_err(),
                second.elapsed()
            );
        }
        Mode::CancelThenDrop => {
            let first = tokio::time::timeout(run.cancel_after, backend.close()).await;
            println!("first close cut short: {}", first.is_err());
            drop(backend);
            // Lets whatever the drop started run before the exit.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Mode::Drop => drop(backend),
    }
    println!("close took {:?}", started.elapsed());
    std::process::exit(0);
}

//! A small Tasker orchestrator on one `MessageBackend` (in an `Arc`, shared by
//! every task): it creates a queue per `[queues] namespaces` entry plus a
//! results queue, enqueues steps in batches, runs workers per namespace that
//! wait for steps with `receive_messages_wait`, and checks on the results
//! queue that every step completed.
//!
//! ```sh
//! cargo run --release --example orchestrator                                   # in-memory
//! cargo run --release --example orchestrator -- --config config/pgmq.toml
//! cargo run --release --example orchestrator -- --config config/rabbitmq.toml
//! TASKER_MESSAGING_PROVIDER=rabbitmq cargo run --release --example orchestrator
//! cargo run --release --example orchestrator -- --messages 2000 --fail-rate 0.01
//! cargo run --release --example orchestrator -- --messages 20 --trace --metrics
//! ```
//!
//! Flags: `--config FILE` (else `MessagingConfig::load()`: `TASKER_MESSAGING_CONFIG`
//! or `config/messaging.toml`, then `TASKER_MESSAGING_*`), `--messages N`
//! (10000), `--workers K` per namespace (4), `--work-ms MS` per step (1),
//! `--fail-rate P` (0), `--quiet` (no progress line), `--measure-wake-up`
//! (time `receive_messages_wait` wake-ups instead of a run), `--switch-to FILE`
//! with `--switch-after N` (once N steps are processed, roll the run over to
//! the configuration in FILE: new workers on it, then the old ones stopped;
//! with a `[migration]` section in FILE, a live provider migration),
//! `--trace` (print every span of the library on stderr as it closes, with
//! its attributes and timing, through `tracing_subscriber::fmt`; use it on a
//! short run), `--metrics` (install `metrics-exporter-prometheus`'s
//! recorder, no HTTP server, and print every metric in the Prometheus text
//! format on stdout at the end).
//!
//! Failing steps (picked from the step uuid, so every run agrees) are never
//! deleted: they are retried with exponential backoff (1, 2, 4, … leases, at
//! most 60 s) by stretching their lease with `change_message_visibility`,
//! until `max_receive_count` moves them to the dead-letter queue. A
//! visibility change rather than a delayed send: it keeps the message's id
//! and `receive_count`, so the dead-letter limit still counts the attempts,
//! and there is never a second copy (a delayed send then a delete leaves
//! both between the two calls). A failing run uses a short lease (at least
//! 1 s, twice a received batch's work).
//!
//! Ctrl-C or SIGTERM stops receiving; steps being worked on finish, steps
//! received but not started are released at once (visibility 0), the summary
//! is printed and the exit code is 0. A second signal exits at once; leases
//! then run out and those steps come back.
//!
//! Nothing is lost across runs: a run first counts the steps already waiting
//! in the namespace queues and works them along with its own, so the next run
//! (`--messages 0` only drains) finishes what a stopped one left. In-memory
//! queues live in the process, so there a stopped run's steps end with it.
//! Run one orchestrator per set of queues: completions are matched by run id,
//! and two runs would take each other's steps.
//!
//! A run ends when the namespace queues are empty and every step is completed
//! or dead-lettered (or, for leftovers the start count missed, when nothing
//! was delivered for longer than a lease). Exit code 0 when the check passes
//! or after a stop, 1 when a step is missing or the dead-letter count is off.

mod engine;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use engine::{Handle, Orchestrator, Settings};
use tasker_messaging::{
    MessageBackend, MessageRouter, MessagingConfig, MessagingError, MessagingService,
    NamespaceQueueRouter,
};

const USAGE: &str = "usage: orchestrator [--config FILE] [--messages N] [--workers K] \
                     [--work-ms MS] [--fail-rate P] [--quiet] [--measure-wake-up] \
                     [--switch-to FILE --switch-after N] [--trace] [--metrics]";

struct Args {
    config: Option<PathBuf>,
    settings: Settings,
    measure_wake_up: bool,
    switch_to: Option<PathBuf>,
    switch_after: u64,
    trace: bool,
    metrics: bool,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;

    let mut args = Args {
        config: None,
        settings: Settings::default(),
        measure_wake_up: false,
        switch_to: None,
        switch_after: 0,
        trace: false,
        metrics: false,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => args.config = Some(parser.value()?.into()),
            Long("messages") => args.settings.messages = parser.value()?.parse()?,
            Long("workers") => args.settings.workers = parser.value()?.parse()?,
            Long("work-ms") => {
                args.settings.work = Duration::from_millis(parser.value()?.parse()?);
            }
            Long("fail-rate") => {
                let rate: f64 = parser.value()?.parse()?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err("--fail-rate must be between 0 and 1".into());
                }
                args.settings.fail_rate = rate;
            }
            Long("quiet") => args.settings.progress = None,
            Long("measure-wake-up") => args.measure_wake_up = true,
            Long("switch-to") => args.switch_to = Some(parser.value()?.into()),
            Long("switch-after") => args.switch_after = parser.value()?.parse()?,
            Long("trace") => args.trace = true,
            Long("metrics") => args.metrics = true,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_tracing(args.trace);
    let prometheus = if args.metrics {
        // The recorder only: no HTTP listener, no upkeep task. Durations as
        // a histogram with the OpenTelemetry messaging buckets (else a summary).
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        const BUCKETS: [f64; 14] = [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ];
        let duration = Matcher::Full(tasker_messaging::telemetry::OPERATION_DURATION.into());
        let installed = PrometheusBuilder::new()
            .set_buckets_for_metric(duration, &BUCKETS)
            .map_err(|e| e.to_string())
            .and_then(|builder| builder.install_recorder().map_err(|e| e.to_string()));
        match installed {
            Ok(handle) => {
                tasker_messaging::telemetry::enable_metrics();
                Some(handle)
            }
            Err(error) => {
                eprintln!("error: cannot install the metrics recorder: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let code = match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    };
    if let Some(handle) = prometheus {
        print!("{}", handle.render());
    }
    code
}

/// Logs as `RUST_LOG` says (errors only without it). With `--trace`, also
/// every span of the library, printed when it closes with its fields and
/// timing (`RUST_LOG` still overrides the filter).
fn init_tracing(trace: bool) {
    use tracing_subscriber::{fmt::format::FmtSpan, EnvFilter};
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::stderr);
    if trace {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,tasker_messaging=info"));
        subscriber
            .with_env_filter(filter)
            .with_span_events(FmtSpan::CLOSE)
            .init();
    } else {
        subscriber
            .with_env_filter(EnvFilter::from_default_env())
            .init();
    }
}

async fn run(args: Args) -> Result<ExitCode, MessagingError> {
    let (config, source) = match &args.config {
        Some(path) => (
            MessagingConfig::from_file(path)?,
            path.display().to_string(),
        ),
        None => (
            MessagingConfig::load()?,
            std::env::var(MessagingConfig::PATH_ENV)
                .unwrap_or_else(|_| MessagingConfig::DEFAULT_PATH.into()),
        ),
    };
    let backend = Arc::new(MessageBackend::connect(&config).await?);

    if args.measure_wake_up {
        let router = NamespaceQueueRouter::new(&config.queues.namespace_pattern);
        let queue = router.route_to_queue("wake_up_probe", "SimpleStepMessage");
        let wake_up = engine::measure_wake_up(Arc::clone(&backend), &queue, 20).await;
        backend.close().await?;
        let wake_up = wake_up?;
        println!("{}: {wake_up}", backend.provider());
        return Ok(ExitCode::SUCCESS);
    }

    let orchestrator = Orchestrator::new(Arc::clone(&backend), args.settings.clone())?;
    let s = &args.settings;
    let mut queues = orchestrator.queue_names();
    let results = queues.pop().unwrap_or_default();
    eprintln!(
        "orchestrator: provider {} (config {source}), {} workers on each of {}; \
         results on {results}; {} steps to send, work {} ms, fail rate {}, lease {} s",
        backend.provider(),
        s.workers,
        queues.join(", "),
        s.messages,
        s.work.as_millis(),
        s.fail_rate,
        orchestrator.lease().as_secs(),
    );
    tokio::spawn(stop_on_signal(orchestrator.handle()));
    // Closed once the run ends, so its last deletes and releases reach the
    // server before the process exits (C33).
    let mut backends = vec![Arc::clone(&backend)];
    if let Some(path) = &args.switch_to {
        // Connected up front, so a bad file fails before the run starts.
        let next = Arc::new(MessageBackend::connect(&MessagingConfig::from_file(path)?).await?);
        backends.push(Arc::clone(&next));
        let (handle, after, path) = (orchestrator.handle(), args.switch_after, path.display());
        let path = path.to_string();
        tokio::spawn(async move {
            while handle.processed() < after {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!(
                "switching to {path} after {} steps, {} in flight",
                handle.processed(),
                handle.in_flight()
            );
            match handle.switch_to(next).await {
                Ok(()) => eprintln!("switched: the previous workers have stopped"),
                Err(error) => eprintln!("error: switching to {path}: {error}"),
            }
        });
    }
    let summary = orchestrator.run().await;
    for backend in &backends {
        backend.close().await?;
    }
    let summary = summary?;
    println!("{summary}");
    Ok(if summary.ok() || summary.interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// First Ctrl-C or SIGTERM: a graceful stop. Second: exit at once.
async fn stop_on_signal(handle: Handle) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            eprintln!("warning: cannot watch SIGTERM: {error}");
            return;
        }
    };
    loop {
        #[cfg(unix)]
        let signalled = tokio::select! {
            result = tokio::signal::ctrl_c() => result.is_ok(),
            got = term.recv() => got.is_some(),
        };
        #[cfg(not(unix))]
        let signalled = tokio::signal::ctrl_c().await.is_ok();
        if !signalled {
            return;
        }
        if handle.interrupt() {
            eprintln!(
                "stopping after {} steps: no new receives; finishing steps in progress, \
                 releasing the rest (signal again to exit at once)",
                handle.processed()
            );
        } else {
            eprintln!("exiting now: leased steps come back when their leases end");
            std::process::exit(130);
        }
    }
}

//! The cost of one call through `MessageBackend` (enum_dispatch) against the
//! concrete provider, a generic function, and a `Box<dyn>` adapter with boxed
//! futures (the async_trait way). In-memory only: with no I/O, dispatch is a
//! visible share of the cost.
//!
//! The `telemetry` group times the same round trip through
//! `MessageBackend` with no `tracing` subscriber and metrics off (disabled
//! spans), with a `tracing_subscriber::fmt` subscriber writing to
//! `io::sink` (every span enabled and formatted), with metrics on and no
//! recorder (the facade's no-op one), with a Prometheus recorder, and with
//! both. Subscriber and recorder are installed for the bench thread only
//! (`block_on` polls on it).
//!
//! cargo bench --bench dispatch
//! cargo bench --bench dispatch -- telemetry

use std::{future::Future, hint::black_box, pin::Pin, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use tasker_messaging::{
    InMemoryMessageService, MessageBackend, MessagingError, MessagingService, Provider,
    QueuesConfig, SimpleStepMessage,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

const QUEUE: &str = "dispatch_bench";
const LEASE: Duration = Duration::from_secs(30);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An object-safe view of the service, as an `async_trait` design would have it.
trait DynService: Send + Sync {
    fn provider(&self) -> Provider;
    fn round_trip<'a>(
        &'a self,
        step: &'a SimpleStepMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>>;
}

impl DynService for InMemoryMessageService {
    fn provider(&self) -> Provider {
        MessagingService::provider(self)
    }

    fn round_trip<'a>(
        &'a self,
        step: &'a SimpleStepMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move { round_trip!(self, step) })
    }
}

/// Send, receive and delete one step: the work every variant measures,
/// written once and expanded inline so each variant calls its own way.
macro_rules! round_trip {
    ($service:expr, $step:expr) => {{
        let service = $service;
        service.send_message(QUEUE, $step).await?;
        let got = service
            .receive_messages::<SimpleStepMessage>(QUEUE, 1, LEASE)
            .await?;
        service.delete_message(QUEUE, got[0].receipt()).await
    }};
}
use round_trip;

async fn round_trip_generic<S: MessagingService>(
    service: &S,
    step: &SimpleStepMessage,
) -> Result<(), MessagingError> {
    round_trip!(service, step)
}

fn provider_generic<S: MessagingService>(service: &S) -> Provider {
    service.provider()
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let direct = InMemoryMessageService::new(QueuesConfig::default()).expect("default config");
    let backend = MessageBackend::from(direct.clone());
    let boxed: Box<dyn DynService> = Box::new(direct.clone());
    rt.block_on(direct.create_queue(QUEUE))
        .expect("create queue");
    let step = SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4());

    let mut group = c.benchmark_group("provider() (no I/O)");
    group.bench_function("enum_dispatch", |b| {
        b.iter(|| black_box(&backend).provider())
    });
    group.bench_function("direct", |b| {
        b.iter(|| MessagingService::provider(black_box(&direct)))
    });
    group.bench_function("generic", |b| {
        b.iter(|| provider_generic(black_box(&direct)))
    });
    group.bench_function("box_dyn", |b| b.iter(|| black_box(&boxed).provider()));
    group.finish();

    let mut group = c.benchmark_group("send+receive+delete (in-memory)");
    group.bench_function("enum_dispatch", |b| {
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    group.bench_function("direct", |b| {
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&direct), &step) })
    });
    group.bench_function("generic", |b| {
        b.to_async(&rt)
            .iter(|| round_trip_generic(black_box(&direct), &step))
    });
    group.bench_function("box_dyn", |b| {
        b.to_async(&rt).iter(|| black_box(&boxed).round_trip(&step))
    });
    group.finish();

    // In this order: `tracing` caches a callsite's interest once a
    // subscriber has seen it, and metrics cannot be turned off once on.
    let mut group = c.benchmark_group("telemetry: send+receive+delete (in-memory)");
    group.bench_function("no_subscriber_metrics_off", |b| {
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    let fmt = || {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish()
    };
    group.bench_function("fmt_subscriber_to_sink", |b| {
        let _subscriber = tracing::subscriber::set_default(fmt());
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    tasker_messaging::telemetry::enable_metrics();
    group.bench_function("metrics_on_no_recorder", |b| {
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    group.bench_function("prometheus_recorder", |b| {
        let _recorder = metrics::set_default_local_recorder(&prometheus);
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    group.bench_function("fmt_subscriber_and_prometheus_recorder", |b| {
        let _subscriber = tracing::subscriber::set_default(fmt());
        let _recorder = metrics::set_default_local_recorder(&prometheus);
        b.to_async(&rt)
            .iter(|| async { round_trip!(black_box(&backend), &step) })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

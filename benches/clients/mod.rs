//! The clients the throughput benches compare: the library, and each
//! provider's raw client (the `pgmq` crate; plain amqprs), with a queue each.

// Each bench uses a subset.
#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use amqprs::{
    callbacks::ChannelCallback,
    channel::{
        BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments,
        Channel, ConfirmSelectArguments, ConsumerMessage,
    },
    connection::{Connection, OpenConnectionArguments},
    Ack, BasicProperties, Cancel, CloseChannel, Nack, Return, DELIVERY_MODE_PERSISTENT,
};
use pgmq::PGMQueueExt;
use tasker_messaging::{
    conformance::{step, unique_queue},
    MessageBackend, MessagingConfig, MessagingService, PgmqConfig, Provider, RabbitMqConfig,
    SimpleStepMessage,
};
use tokio::{runtime::Runtime, sync::mpsc};

pub const LEASE: Duration = Duration::from_secs(30);
pub const BATCH: usize = 100;
pub const END_TO_END: usize = 400;
pub const CONSUMERS: usize = 4;
/// Messages the two-process drain takes.
pub const FLEET_DRAIN: usize = 1_000;
/// Messages the wide two-process drain takes (issue 20's table).
pub const FLEET_WIDE: usize = 10_000;
/// Workers per process in the wide drain and the steady stream.
pub const WORKERS_EACH: usize = 4;
/// Senders in the steady stream, each sending one message at a time.
pub const STREAM_SENDERS: usize = 4;
/// Messages the steady stream sends in all.
pub const STREAM: usize = 1_000;
/// How long the raw AMQP consumer waits for a delivery before reporting none.
pub const FIRST_DELIVERY: Duration = Duration::from_millis(1);

/// Whoever does the work: the library, or a provider's own client.
#[derive(Clone)]
pub enum Client {
    Tasker(Arc<MessageBackend>),
    RawPgmq(Arc<PGMQueueExt>),
    RawAmqp(Arc<RawAmqp>),
}

impl Client {
    pub fn label(&self) -> String {
        match self {
            Self::Tasker(b) => format!("tasker/{}", b.provider()),
            Self::RawPgmq(_) => "raw/pgmq".into(),
            Self::RawAmqp(r) if r.tasker_wire => "raw-same-wire/amqprs".into(),
            Self::RawAmqp(r) if !r.ahead => "raw-per-receive/amqprs".into(),
            Self::RawAmqp(_) => "raw/amqprs".into(),
        }
    }

    pub async fn send(&self, queue: &str, message: &SimpleStepMessage) {
        match self {
            Self::Tasker(b) => drop(b.send_message(queue, message).await.expect("send")),
            Self::RawPgmq(q) => drop(q.send(queue, message).await.expect("raw send")),
            Self::RawAmqp(r) => r.send(std::slice::from_ref(message)).await,
        }
    }

    pub async fn send_batch(&self, queue: &str, messages: &[SimpleStepMessage]) {
        match self {
            Self::Tasker(b) => drop(b.send_batch(queue, messages).await.expect("send_batch")),
            Self::RawPgmq(q) => drop(q.send_batch(queue, messages).await.expect("raw batch")),
            Self::RawAmqp(r) => r.send(messages).await,
        }
    }

    /// `tasks` tasks at once, each sending `each` messages one by one (each
    /// awaited): a busy orchestrator's many callers. The raw AMQP client
    /// pipelines them on its one confirm-mode channel.
    pub async fn send_concurrently(&self, queue: &str, tasks: usize, each: usize) {
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (client, queue) = (self.clone(), queue.to_owned());
            running.spawn(async move {
                let message = step();
                for _ in 0..each {
                    client.send(&queue, &message).await;
                }
            });
        }
        while let Some(done) = running.join_next().await {
            done.expect("sender task");
        }
    }

    /// Receives up to `max` and settles them as one batch (the library:
    /// `delete_messages`; raw PGMQ: `delete_batch`; raw AMQP: its acks);
    /// returns how many.
    pub async fn receive_delete_batch(&self, queue: &str, max: usize) -> usize {
        match self {
            Self::Tasker(b) => {
                let got = b
                    .receive_messages::<SimpleStepMessage>(queue, max, LEASE)
                    .await
                    .expect("receive");
                let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                for outcome in b.delete_messages(queue, &receipts).await.expect("delete") {
                    outcome.expect("delete");
                }
                got.len()
            }
            Self::RawPgmq(q) => {
                let got = q
                    .read_batch::<SimpleStepMessage>(queue, 30, max as i32)
                    .await
                    .expect("raw read");
                let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
                if !ids.is_empty() {
                    q.delete_batch(queue, &ids).await.expect("raw delete");
                }
                got.len()
            }
            Self::RawAmqp(r) => r.receive_delete(max).await,
        }
    }

    /// A waiting receive of up to `max` (the library's
    /// `receive_messages_wait`, waiting up to `wait`), settled as one batch;
    /// the raw clients have no waiting receive: theirs is
    /// [`receive_delete_batch`](Self::receive_delete_batch) and 1 ms of
    /// sleep when it found nothing. Returns how many.
    pub async fn receive_wait_delete_batch(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> usize {
        match self {
            Self::Tasker(b) => {
                let got = b
                    .receive_messages_wait::<SimpleStepMessage>(queue, max, LEASE, wait)
                    .await
                    .expect("receive_messages_wait");
                let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                for outcome in b.delete_messages(queue, &receipts).await.expect("delete") {
                    outcome.expect("delete");
                }
                got.len()
            }
            _ => {
                let n = self.receive_delete_batch(queue, max).await;
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                n
            }
        }
    }

    /// Receives up to `max` and deletes each; returns how many.
    pub async fn receive_delete(&self, queue: &str, max: usize) -> usize {
        match self {
            Self::Tasker(b) => {
                let got = b
                    .receive_messages::<SimpleStepMessage>(queue, max, LEASE)
                    .await
                    .expect("receive");
                for m in &got {
                    b.delete_message(queue, m.receipt()).await.expect("delete");
                }
                got.len()
            }
            Self::RawPgmq(q) => {
                let got = q
                    .read_batch::<SimpleStepMessage>(queue, 30, max as i32)
                    .await
                    .expect("raw read");
                for m in &got {
                    q.delete(queue, m.msg_id).await.expect("raw delete");
                }
                got.len()
            }
            Self::RawAmqp(r) => r.receive_delete(max).await,
        }
    }
}

/// The RabbitMQ baseline: plain amqprs on one queue, used as a careful
/// application would. Persistent messages to the durable quorum queue
/// `create_queue` made, on a confirm-mode channel: each send waits for the
/// confirms of everything it published (a batch is pipelined, then waited
/// for). A consumer with `basic.qos` prefetch and manual acks receives.
pub struct RawAmqp {
    queue: String,
    /// Publishes what the library puts on the wire: a UUIDv7 message id,
    /// timestamp and type, `mandatory`. Isolates the
    /// broker's cost of that format from the library's own.
    tasker_wire: bool,
    /// Consumes ahead of receives (a long-lived consumer with prefetch);
    /// false: a consumer per receive, as the library's fleet rule requires.
    ahead: bool,
    prefetch: u16,
    _connection: Connection,
    publisher: Channel,
    /// The last delivery tag used; held while publishing, not while waiting.
    last_tag: tokio::sync::Mutex<u64>,
    confirms: Arc<Confirms>,
    consumer: Channel,
    /// The consumer's deliveries, once the first receive has started it.
    deliveries: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<ConsumerMessage>>>,
}

/// Publisher confirms: the tags not yet acked, and a wake-up on each ack.
#[derive(Default)]
struct Confirms {
    unconfirmed: Mutex<BTreeSet<u64>>,
    nacked: AtomicBool,
    settled: tokio::sync::Notify,
}

impl Confirms {
    fn settle(&self, tag: u64, multiple: bool) {
        let mut unconfirmed = self.unconfirmed.lock().expect("confirms");
        if multiple {
            *unconfirmed = unconfirmed.split_off(&(tag + 1));
        } else {
            unconfirmed.remove(&tag);
        }
        self.settled.notify_waiters();
    }

    /// Waits until every tag up to `last` is confirmed.
    async fn wait(&self, last: u64) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            assert!(!self.nacked.load(Ordering::Relaxed), "the broker nacked");
            let first = self.unconfirmed.lock().expect("confirms").first().copied();
            if first.is_none_or(|tag| tag > last) {
                return;
            }
            settled.await;
        }
    }
}

struct ConfirmCallback(Arc<Confirms>);

type AmqpResult<T> = Result<T, amqprs::error::Error>;

#[async_trait::async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> AmqpResult<()> {
        panic!("raw publisher channel closed: {close}");
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> AmqpResult<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> AmqpResult<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.0.settle(ack.delivery_tag(), ack.mutiple());
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.0.nacked.store(true, Ordering::Relaxed);
        self.0.settle(nack.delivery_tag(), nack.multiple());
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

impl RawAmqp {
    /// Connects to the test broker for `queue`, which must exist.
    async fn connect(queue: &str, prefetch: u16, tasker_wire: bool, ahead: bool) -> Self {
        let url = url::Url::parse(&common::amqp_url()).expect("AMQP URL");
        let vhost = match url.path().trim_start_matches('/') {
            "" | "%2f" | "%2F" => "/",
            vhost => vhost,
        };
        let mut args = OpenConnectionArguments::new(
            url.host_str().expect("host"),
            url.port().unwrap_or(5672),
            url.username(),
            url.password().unwrap_or("guest"),
        );
        args.virtual_host(vhost);
        let connection = Connection::open(&args).await.expect("raw connect");
        let confirms = Arc::new(Confirms::default());
        let publisher = connection.open_channel(None).await.expect("channel");
        publisher
            .register_callback(ConfirmCallback(Arc::clone(&confirms)))
            .await
            .expect("callback");
        publisher
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .expect("confirm.select");
        let consumer = connection.open_channel(None).await.expect("channel");
        Self {
            queue: queue.to_owned(),
            tasker_wire,
            ahead,
            prefetch,
            _connection: connection,
            publisher,
            last_tag: tokio::sync::Mutex::new(0),
            confirms,
            consumer,
            deliveries: tokio::sync::Mutex::new(None),
        }
    }

    /// [`Self::receive_delete`] with nothing fetched ahead: a consumer with a
    /// window of `max` that lives for this call (up to 1 ms for a first
    /// delivery), then is cancelled. Receives take turns, as the library's
    /// do per queue channel.
    async fn receive_delete_per_receive(&self, max: usize) -> usize {
        static TAGS: AtomicUsize = AtomicUsize::new(0);
        // One receive at a time on the channel: amqprs matches replies by
        // method, so two concurrent basic.qos calls would cross.
        let _turn = self.deliveries.lock().await;
        let window = u16::try_from(max).unwrap_or(u16::MAX);
        let qos = BasicQosArguments::new(0, window, false);
        self.consumer.basic_qos(qos).await.expect("basic.qos");
        let tag = format!("raw-bench-{}", TAGS.fetch_add(1, Ordering::Relaxed));
        let args = BasicConsumeArguments::new(&self.queue, &tag)
            .manual_ack(true)
            .finish();
        let (_, mut receiver) = self.consumer.basic_consume_rx(args).await.expect("consume");
        let mut taken = Vec::with_capacity(max);
        while taken.len() < max {
            match tokio::time::timeout(FIRST_DELIVERY, receiver.recv()).await {
                Ok(Some(message)) => taken.push(message),
                _ => break,
            }
        }
        let cancel = amqprs::channel::BasicCancelArguments::new(&tag);
        self.consumer
            .basic_cancel(cancel)
            .await
            .expect("basic.cancel");
        while let Ok(message) = receiver.try_recv() {
            taken.push(message);
        }
        self.decode_and_ack(&taken).await
    }

    /// Decodes each delivery as the library would, acknowledges it, and
    /// returns how many there were.
    async fn decode_and_ack(&self, taken: &[ConsumerMessage]) -> usize {
        for message in taken {
            let body = message.content.as_deref().expect("body");
            serde_json::from_slice::<SimpleStepMessage>(body).expect("decode");
            let tag = message.deliver.as_ref().expect("deliver").delivery_tag();
            self.consumer
                .basic_ack(BasicAckArguments::new(tag, false))
                .await
                .expect("basic.ack");
        }
        taken.len()
    }

    /// Publishes `messages` back to back, then waits for their confirms.
    async fn send(&self, messages: &[SimpleStepMessage]) {
        let last = {
            let mut tag = self.last_tag.lock().await;
            for message in messages {
                *tag += 1;
                self.confirms
                    .unconfirmed
                    .lock()
                    .expect("confirms")
                    .insert(*tag);
                let mut properties = BasicProperties::default();
                properties
                    .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
                    .with_content_type("application/json");
                let mut args = BasicPublishArguments::new("", &self.queue);
                if self.tasker_wire {
                    let now = chrono::Utc::now();
                    let millis = now.timestamp_millis() as u64;
                    let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random());
                    properties
                        .with_message_id(&id.into_uuid().to_string())
                        .with_timestamp(now.timestamp() as u64)
                        .with_message_type("SimpleStepMessage");
                    args.mandatory(true);
                }
                let body = serde_json::to_vec(message).expect("serialize");
                self.publisher
                    .basic_publish(properties, body, args)
                    .await
                    .expect("raw publish");
            }
            *tag
        };
        self.confirms.wait(last).await;
    }

    /// Takes up to `max` deliveries, decodes and acknowledges each; returns
    /// how many.
    async fn receive_delete(&self, max: usize) -> usize {
        if !self.ahead {
            return self.receive_delete_per_receive(max).await;
        }
        let mut deliveries = self.deliveries.lock().await;
        if deliveries.is_none() {
            let qos = BasicQosArguments::new(0, self.prefetch, false);
            self.consumer.basic_qos(qos).await.expect("basic.qos");
            let args = BasicConsumeArguments::new(&self.queue, "raw-bench")
                .manual_ack(true)
                .finish();
            let (_, receiver) = self.consumer.basic_consume_rx(args).await.expect("consume");
            *deliveries = Some(receiver);
        }
        let receiver = deliveries.as_mut().expect("consuming");
        let mut taken = Vec::with_capacity(max);
        // Await the first (up to 1 ms, so callers can stop), then take what
        // else is buffered.
        if let Ok(Some(first)) = tokio::time::timeout(FIRST_DELIVERY, receiver.recv()).await {
            taken.push(first);
            while taken.len() < max {
                match receiver.try_recv() {
                    Ok(message) => taken.push(message),
                    Err(_) => break,
                }
            }
        }
        drop(deliveries);
        self.decode_and_ack(&taken).await
    }
}

/// The library as it sent before concurrent sends were grouped (PGMQ:
/// `max_send_group = 1`, one `pgmq.send` per call), with a queue of its own:
/// the baseline of the single-sender latency rows. `None` for a provider
/// whose send path has no such switch.
pub async fn ungrouped(provider: Provider) -> Option<(Client, String)> {
    if provider != Provider::Pgmq {
        return None;
    }
    let mut config = config(provider);
    config.pgmq.as_mut()?.max_send_group = 1;
    let backend = MessageBackend::connect(&config).await.expect("connect");
    let queue = unique_queue("bench");
    backend.create_queue(&queue).await.expect("create_queue");
    Some((Client::Tasker(Arc::new(backend)), queue))
}

pub struct Setup {
    pub rt: Runtime,
    /// Per provider: the clients to compare and a queue for each.
    pub providers: Vec<(Provider, Vec<(Client, String)>)>,
}

impl Drop for Setup {
    /// Deletes the queues, and drops the clients inside the runtime (amqprs
    /// closes channels from tasks it spawns).
    fn drop(&mut self) {
        let providers = std::mem::take(&mut self.providers);
        self.rt.block_on(async move {
            for (_, clients) in &providers {
                if let Some((Client::Tasker(backend), _)) = clients.first() {
                    for (_, queue) in clients {
                        backend.delete_queue(queue).await.expect("delete_queue");
                    }
                }
            }
            drop(providers);
        });
    }
}

pub fn setup() -> Setup {
    let rt = Runtime::new().expect("tokio runtime");
    let providers = rt.block_on(async {
        let mut providers = Vec::new();
        for provider in [Provider::InMemory, Provider::Pgmq, Provider::RabbitMq] {
            let backend = Arc::new(library(provider).await);
            let new_queue = || async {
                let queue = unique_queue("bench");
                backend.create_queue(&queue).await.expect("create_queue");
                queue
            };
            let mut clients = vec![(Client::Tasker(Arc::clone(&backend)), new_queue().await)];
            match &*backend {
                MessageBackend::Pgmq(pgmq) => {
                    let raw = PGMQueueExt::new_with_pool(pgmq.pool().clone()).await;
                    // Created by the raw client: a plain PGMQ queue, without
                    // the library's NOTIFY trigger, so the baseline is pure.
                    let queue = unique_queue("bench");
                    raw.create(&queue).await.expect("raw create");
                    clients.push((Client::RawPgmq(Arc::new(raw)), queue));
                }
                MessageBackend::RabbitMq(_) => {
                    // The library's cap on one receive, as the raw consumer's window.
                    let prefetch = config(provider).rabbitmq.map_or(200, |r| r.prefetch_count);
                    for (tasker_wire, ahead) in [(false, true), (true, true), (false, false)] {
                        let queue = new_queue().await;
                        let raw = RawAmqp::connect(&queue, prefetch, tasker_wire, ahead).await;
                        clients.push((Client::RawAmqp(Arc::new(raw)), queue));
                    }
                }
                // In-memory (and any later provider): no raw client to compare.
                _ => {}
            }
            providers.push((provider, clients));
        }
        providers
    });
    Setup { rt, providers }
}

/// The library as a user configures it: the tests' settings, but the
/// default cap on one receive and the default PGMQ pool (the tests lower
/// both). The raw PGMQ client shares that pool, so both sides run on the
/// same, default, number of connections.
fn config(provider: Provider) -> MessagingConfig {
    let mut config = common::config(provider);
    if let Some(rabbitmq) = config.rabbitmq.as_mut() {
        rabbitmq.prefetch_count = RabbitMqConfig::new(rabbitmq.nodes()[0].clone()).prefetch_count;
    }
    if let Some(pgmq) = config.pgmq.as_mut() {
        pgmq.pool_size = PgmqConfig::new(pgmq.database_url.clone()).pool_size;
    }
    config
}

/// A backend connected with [`config`].
async fn library(provider: Provider) -> MessageBackend {
    MessageBackend::connect(&config(provider))
        .await
        .unwrap_or_else(|e| panic!("{provider} for the benches: {e}"))
}

/// A consumer task: receives up to 10 and deletes each until `done` reaches
/// `total`.
fn consume(
    client: Client,
    queue: &str,
    done: Arc<AtomicUsize>,
    total: usize,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let queue = queue.to_owned();
    async move {
        while done.load(Ordering::Acquire) < total {
            let n = client.receive_delete(&queue, 10).await;
            if n == 0 {
                // An idle consumer backs off a little, as a real one would,
                // instead of hammering the server with reads.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            done.fetch_add(n, Ordering::AcqRel);
        }
    }
}

/// One producer sends `END_TO_END` messages one by one while `CONSUMERS`
/// consumers receive and delete them; done when all are deleted.
pub async fn end_to_end(client: &Client, queue: &str) {
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            tokio::spawn(consume(
                client.clone(),
                queue,
                Arc::clone(&done),
                END_TO_END,
            ))
        })
        .collect();
    let message = step();
    for _ in 0..END_TO_END {
        client.send(queue, &message).await;
    }
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
}

/// A second client of the same kind on `queue`, connected on its own: the
/// other worker process of the two-process drain. `None` where the provider
/// has no processes to speak of (in-memory) or for the raw PGMQ client.
pub async fn peer(client: &Client, queue: &str) -> Option<Client> {
    match client {
        Client::Tasker(backend) if backend.provider() != Provider::InMemory => {
            Some(Client::Tasker(Arc::new(library(backend.provider()).await)))
        }
        Client::RawAmqp(raw) => Some(Client::RawAmqp(Arc::new(
            RawAmqp::connect(queue, raw.prefetch, raw.tasker_wire, raw.ahead).await,
        ))),
        _ => None,
    }
}

/// Two processes (`client` and `peer`) drain `FLEET_DRAIN` messages queued
/// beforehand, each receiving up to 10 at a time and deleting each.
pub async fn fleet_drain(client: &Client, peer: &Client, queue: &str) {
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = [client, peer]
        .into_iter()
        .map(|process| {
            tokio::spawn(consume(
                process.clone(),
                queue,
                Arc::clone(&done),
                FLEET_DRAIN,
            ))
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
}

pub async fn purge(clients: &[(Client, String)], queue: &str) {
    if let Some((Client::Tasker(backend), _)) = clients.first() {
        backend.purge_queue(queue).await.expect("purge");
    }
}

/// Two processes (`client` and `peer`) with [`WORKERS_EACH`] workers each
/// drain [`FLEET_WIDE`] messages queued beforehand, 10 per receive, each
/// receive settled as one batch (`delete_messages`).
pub async fn fleet_drain_wide(client: &Client, peer: &Client, queue: &str, waiting: bool) {
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for process in [client, peer] {
        for _ in 0..WORKERS_EACH {
            let (process, queue, done) = (process.clone(), queue.to_owned(), Arc::clone(&done));
            workers.spawn(async move {
                while done.load(Ordering::Acquire) < FLEET_WIDE {
                    let n = if waiting {
                        // As Tasker's workers: a waiting receive (the raw
                        // clients: a receive, and 1 ms of sleep on empty).
                        let wait = Duration::from_millis(100);
                        process.receive_wait_delete_batch(&queue, 10, wait).await
                    } else {
                        let n = process.receive_delete_batch(&queue, 10).await;
                        if n == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        n
                    };
                    done.fetch_add(n, Ordering::AcqRel);
                }
            });
        }
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("worker");
    }
}

/// [`STREAM_SENDERS`] tasks on `client` send [`STREAM`] messages one at a
/// time while, with `peer`, two processes of [`WORKERS_EACH`] workers wait
/// for them (10 per receive, settled as a batch); done when all are
/// deleted. Without `peer`, nobody consumes: the senders' rate alone.
pub async fn steady_stream(client: &Client, peer: Option<&Client>, queue: &str) {
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for process in peer.into_iter().flat_map(|peer| [client, peer]) {
        for _ in 0..WORKERS_EACH {
            let (process, queue, done) = (process.clone(), queue.to_owned(), Arc::clone(&done));
            workers.spawn(async move {
                while done.load(Ordering::Acquire) < STREAM {
                    let n = process
                        .receive_wait_delete_batch(&queue, 10, Duration::from_millis(100))
                        .await;
                    done.fetch_add(n, Ordering::AcqRel);
                }
            });
        }
    }
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..STREAM_SENDERS {
        let (client, queue) = (client.clone(), queue.to_owned());
        senders.spawn(async move {
            let message = step();
            for _ in 0..STREAM / STREAM_SENDERS {
                client.send(&queue, &message).await;
            }
        });
    }
    while let Some(sender) = senders.join_next().await {
        sender.expect("sender");
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("worker");
    }
}

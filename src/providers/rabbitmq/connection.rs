//! Connecting, and recovering by ourselves: amqprs has no automatic recovery.
//!
//! The data connection carries publishes and consumers. Each successful
//! connect is a [`Link`] with a generation number; when it drops (broker
//! restart, forced close, missed heartbeats) the supervisor task reconnects
//! with backoff, installs the next generation and declares again what this
//! backend declared (each queue's channel opens anew on its next receive).
//! Calls made meanwhile wait for
//! the new link at most [`RECONNECT_WAIT`]; once an attempt has failed (the
//! broker refused, or did not answer within the connection timeout) they fail
//! at once with a transient `Connection` error, until an attempt succeeds.
//! Attempts are [`probe_pause`] apart, so a broker that comes back is
//! connected within about half a second.
//!
//! With several nodes (`rabbitmq.urls`), each connection tries them in a
//! random order drawn at connect, once each, from the node the last
//! connection reached; when the data connection drops, the next attempt
//! starts at the node after the lost one. Leases die with their connection
//! as with one node; a publish whose confirm was lost fails transient (and
//! the send's retry may store it twice, never lose it).

// Over 450 lines: URL settings, the link and its supervisor share the
// reconnect state, and their tests need all three.
use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};

use amqprs::{
    callbacks::ConnectionCallback,
    connection::{Connection, OpenConnectionArguments},
    Close,
};
use async_trait::async_trait;
use percent_encoding::percent_decode_str;
use rand::seq::SliceRandom;
use tokio::sync::watch;
use url::Url;

use super::{
    channel::{TrackedChannel, CLOSED_CHANNEL_LIMIT},
    errors,
    publisher::Publisher,
    Inner,
};
use crate::{
    resilience::{probe_pause, Reachability, Resilience},
    MessagingError, RabbitMqConfig, SecretUrl,
};

/// Longest a call waits for a reconnect under way before failing; after a
/// forced close the next connection is usually up within tens of ms.
const RECONNECT_WAIT: Duration = Duration::from_millis(500);
/// How often a link checks its connection besides amqprs' shutdown signal
/// (which a late subscriber can miss).
const LIVENESS_POLL: Duration = Duration::from_millis(250);

/// How a node's connection is carried, from its URL's scheme. Only plain
/// AMQP for now: `amqps` is refused. A TLS variant would carry its settings
/// and apply them in [`Node::parse`], where the arguments are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// `amqp://`: TCP without TLS.
    Plain,
}

impl Transport {
    fn of(url: &Url) -> Result<Self, &'static str> {
        match url.scheme() {
            "amqp" => Ok(Self::Plain),
            "amqps" => Err("uses amqps, which this build does not support"),
            _ => Err("must start with amqp://"),
        }
    }

    /// The port a URL without one means.
    fn default_port(self) -> u16 {
        match self {
            Self::Plain => 5672,
        }
    }
}

/// One broker node: how to open a connection to it.
struct Node {
    args: OpenConnectionArguments,
    /// The URL with its password redacted, for messages.
    shown: String,
    /// `host:port`, for messages and [`DataConnection::node`].
    address: String,
}

impl Node {
    /// Reads `url`, the value of config key `key`. Errors name the key and
    /// show the URL redacted.
    fn parse(url: &SecretUrl, key: &str, heartbeat: u16) -> Result<Self, MessagingError> {
        let shown = url.to_string();
        let bad = |why: &str| MessagingError::Config(format!("{key} {why}: {shown}"));
        let parsed = Url::parse(url.expose()).map_err(|_| bad("is not a URL"))?;
        let transport = Transport::of(&parsed).map_err(bad)?;
        let host = match parsed.host().ok_or_else(|| bad("has no host"))? {
            // The driver wants an IPv6 address without its brackets.
            url::Host::Ipv6(address) => address.to_string(),
            host => host.to_string(),
        };
        let decode = |text: &str| -> Result<String, MessagingError> {
            percent_decode_str(text)
                .decode_utf8()
                .map(Cow::into_owned)
                .map_err(|_| bad("has a percent-encoding that is not UTF-8"))
        };
        let username = match parsed.username() {
            "" => "guest".to_owned(),
            user => decode(user)?,
        };
        let password = match parsed.password() {
            None => "guest".to_owned(),
            Some(password) => decode(password)?,
        };
        // `amqp://host` and `amqp://host/` name the default vhost "/"; `%2f` too.
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            path => decode(path)?,
        };
        let port = parsed.port().unwrap_or(transport.default_port());
        let mut args = OpenConnectionArguments::new(&host, port, &username, &password);
        args.virtual_host(&vhost).heartbeat(heartbeat);
        let address = match parsed.host() {
            Some(url::Host::Ipv6(address)) => format!("[{address}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Ok(Self {
            args,
            shown,
            address,
        })
    }
}

/// How to reach the broker, from `RabbitMqConfig`: its nodes, in the order
/// connections try them.
pub(super) struct Settings {
    /// Shuffled once, so that clients spread over the nodes.
    nodes: Vec<Node>,
    /// The node the next connection tries first: the one the last
    /// connection reached, or the one after a node whose connection dropped.
    preferred: AtomicUsize,
    pub timeout: Duration,
}

impl Settings {
    pub(super) fn new(config: &RabbitMqConfig) -> Result<Self, MessagingError> {
        let urls = config.nodes();
        if urls.is_empty() {
            return Err(MessagingError::Config(
                "rabbitmq.url (or rabbitmq.urls) is required".into(),
            ));
        }
        let key = |i: usize| match config.urls.is_empty() {
            true => "rabbitmq.url".to_owned(),
            false => format!("rabbitmq.urls[{i}]"),
        };
        let mut nodes = urls
            .iter()
            .enumerate()
            .map(|(i, url)| Node::parse(url, &key(i), config.heartbeat_interval_secs))
            .collect::<Result<Vec<_>, _>>()?;
        nodes.shuffle(&mut rand::thread_rng());
        Ok(Self {
            nodes,
            preferred: AtomicUsize::new(0),
            timeout: Duration::from_millis(config.connection_timeout_ms),
        })
    }

    /// Opens a connection named `name` (shown in the broker's management
    /// UI), trying each node once from the preferred one; also which node.
    pub(super) async fn open(&self, name: &str) -> Result<(Connection, usize), MessagingError> {
        let count = self.nodes.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut failures = Vec::new();
        for index in (first..count).chain(0..first) {
            match self.open_node(index, name).await {
                Ok(connection) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((connection, index));
                }
                Err(error) if count == 1 => return Err(error),
                Err(error) => {
                    tracing::debug!(node = self.nodes[index].address, %error, "RabbitMQ node unreachable; trying the next");
                    failures.push(error.to_string());
                }
            }
        }
        Err(errors::connection(
            format!(
                "cannot connect to any of {count} RabbitMQ nodes: {}",
                failures.join("; ")
            ),
            None,
        ))
    }

    /// The connection to node `index` dropped: the next connection tries
    /// the node after it first (unless another already moved on).
    fn passed(&self, index: usize) {
        let next = (index + 1) % self.nodes.len();
        let _ = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    async fn open_node(&self, index: usize, name: &str) -> Result<Connection, MessagingError> {
        let node = &self.nodes[index];
        let mut args = node.args.clone();
        args.connection_name(name);
        let connection = match tokio::time::timeout(self.timeout, Connection::open(&args)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(errors::connection(
                    format!("cannot connect to {}: {e}", node.shown),
                    Some(e),
                ))
            }
            Err(_) => {
                return Err(errors::connection(
                    format!("timed out connecting to {}", node.shown),
                    None,
                ))
            }
        };
        if let Err(e) = connection.register_callback(ConnectionEvents).await {
            return Err(errors::connection(
                "cannot register a connection callback",
                Some(e),
            ));
        }
        Ok(connection)
    }
}

/// Logs what the broker says about a connection.
struct ConnectionEvents;

#[async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(
        &mut self,
        connection: &Connection,
        close: Close,
    ) -> Result<(), amqprs::error::Error> {
        tracing::warn!(
            connection = connection.connection_name(),
            reason = %close,
            "RabbitMQ closed the connection"
        );
        Ok(())
    }

    async fn blocked(&mut self, connection: &Connection, reason: String) {
        tracing::warn!(
            connection = connection.connection_name(),
            reason,
            "RabbitMQ blocked publishing on the connection (resource alarm)"
        );
    }

    async fn unblocked(&mut self, connection: &Connection) {
        tracing::info!(
            connection = connection.connection_name(),
            "RabbitMQ unblocked the connection"
        );
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

/// One generation of the data connection.
pub(super) struct Link {
    pub generation: u64,
    /// The node it is connected to (an index into the settings' nodes).
    node: usize,
    connection: Connection,
    publisher: Mutex<Option<Arc<Publisher>>>,
    /// Held while a replacement publisher channel is opened.
    reopening: tokio::sync::Mutex<()>,
    alive: watch::Sender<bool>,
    /// Channels of this connection the broker closed.
    closures: Arc<AtomicU32>,
    timeout: Duration,
}

impl Link {
    async fn open(settings: &Settings, generation: u64) -> Result<Arc<Self>, MessagingError> {
        let (connection, node) = settings.open("tasker-messaging").await?;
        let closures = Arc::new(AtomicU32::new(0));
        let publisher = Publisher::open(&connection, settings.timeout, Arc::clone(&closures))
            .await
            .map_err(|e| errors::call_error("connect", e, None))?;
        Ok(Arc::new(Self {
            generation,
            node,
            connection,
            publisher: Mutex::new(Some(Arc::new(publisher))),
            reopening: tokio::sync::Mutex::new(()),
            alive: watch::Sender::new(true),
            closures,
            timeout: settings.timeout,
        }))
    }

    fn lock_publisher(&self) -> MutexGuard<'_, Option<Arc<Publisher>>> {
        crate::sync::lock(&self.publisher)
    }

    /// Whether this link still carries traffic.
    pub(super) fn is_alive(&self) -> bool {
        *self.alive.borrow() && self.connection.is_open()
    }

    fn mark_lost(&self) {
        self.alive.send_replace(false);
    }

    fn lost() -> MessagingError {
        errors::connection("the RabbitMQ connection was lost", None)
    }

    /// The confirm-mode publisher channel, reopened if the broker closed it.
    pub(super) async fn publisher(&self) -> Result<Arc<Publisher>, MessagingError> {
        let current = || self.lock_publisher().clone().filter(|p| p.usable());
        if let Some(publisher) = current() {
            return Ok(publisher);
        }
        let _reopening = self.reopening.lock().await;
        if let Some(publisher) = current() {
            return Ok(publisher);
        }
        self.check_closures()?;
        if !self.is_alive() {
            return Err(Self::lost());
        }
        let publisher = Publisher::open(&self.connection, self.timeout, Arc::clone(&self.closures))
            .await
            .map_err(|e| errors::call_error("open publisher channel", e, None))?;
        let publisher = Arc::new(publisher);
        *self.lock_publisher() = Some(Arc::clone(&publisher));
        Ok(publisher)
    }

    /// A new channel for a consumer.
    pub(super) async fn open_channel(&self) -> Result<Arc<TrackedChannel>, MessagingError> {
        self.check_closures()?;
        if !self.is_alive() {
            return Err(Self::lost());
        }
        TrackedChannel::open(
            &self.connection,
            self.timeout,
            None,
            Arc::clone(&self.closures),
        )
        .await
        .map_err(|e| errors::call_error("open channel", e, None))
    }

    /// Replaces a connection that leaked too many channel ids (see
    /// [`CLOSED_CHANNEL_LIMIT`]): the supervisor reconnects.
    fn check_closures(&self) -> Result<(), MessagingError> {
        if self.closures.load(Ordering::Relaxed) < CLOSED_CHANNEL_LIMIT {
            return Ok(());
        }
        tracing::warn!(
            generation = self.generation,
            "the broker closed too many channels on this connection; reconnecting"
        );
        self.mark_lost();
        let connection = self.connection.clone();
        tokio::spawn(async move {
            let _ = connection.close().await;
        });
        Err(Self::lost())
    }

    /// Resolves once the connection is gone.
    async fn until_lost(&self) {
        let mut alive = self.alive.subscribe();
        let poll = async {
            while self.connection.is_open() {
                tokio::time::sleep(LIVENESS_POLL).await;
            }
        };
        tokio::select! {
            _ = self.connection.listen_network_io_failure() => {}
            _ = poll => {}
            _ = alive.wait_for(|alive| !alive) => {}
        }
    }
}

/// The data connection: the current link, and a signal when a new one is installed.
pub(super) struct DataConnection {
    pub settings: Arc<Settings>,
    current: Mutex<Arc<Link>>,
    installed: watch::Sender<u64>,
    reach: Arc<Reachability>,
}

impl DataConnection {
    /// Connects the first generation; `reach` is the broker's reachability,
    /// which [`supervise`] keeps.
    pub(super) async fn connect(
        settings: Arc<Settings>,
        reach: Arc<Reachability>,
    ) -> Result<Self, MessagingError> {
        let link = Link::open(&settings, 1).await?;
        Ok(Self {
            settings,
            current: Mutex::new(link),
            installed: watch::Sender::new(1),
            reach,
        })
    }

    fn current(&self) -> Arc<Link> {
        Arc::clone(&crate::sync::lock(&self.current))
    }

    /// The `host:port` of the node the live link is connected to; `None`
    /// while reconnecting.
    pub(super) fn node(&self) -> Option<String> {
        let link = self.current();
        link.is_alive()
            .then(|| self.settings.nodes[link.node].address.clone())
    }

    /// The generation of the newest link.
    pub(super) fn generation(&self) -> u64 {
        *self.installed.borrow()
    }

    /// The live link. While reconnecting, waits at most [`RECONNECT_WAIT`];
    /// once a reconnect attempt has failed, fails at once.
    pub(super) async fn link(&self) -> Result<Arc<Link>, MessagingError> {
        let deadline = tokio::time::Instant::now() + RECONNECT_WAIT.min(self.settings.timeout);
        loop {
            // Subscribed before looking, so an install in between is not missed.
            let mut installed = self.installed.subscribe();
            let link = self.current();
            if link.is_alive() {
                return Ok(link);
            }
            drop(link);
            self.reach.check()?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(errors::connection(
                    "not connected to RabbitMQ (reconnecting)",
                    None,
                ));
            }
            // A new link, a failed attempt, or the supervisor noticing the loss.
            tokio::select! {
                _ = installed.changed() => {}
                _ = self.reach.changed() => {}
                _ = tokio::time::sleep(remaining.min(LIVENESS_POLL)) => {}
            }
        }
    }

    fn install(&self, link: Arc<Link>) {
        let generation = link.generation;
        *crate::sync::lock(&self.current) = link;
        self.installed.send_replace(generation);
    }
}

/// Watches the data connection and reconnects it, until `stop`'s sender is
/// dropped. Keeps `resilience`'s reachability: down after a failed attempt,
/// up (and an open circuit half-open) after a successful one.
pub(super) async fn supervise(
    inner: Weak<Inner>,
    resilience: Arc<Resilience>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let Some(link) = inner.upgrade().map(|i| i.data.current()) else {
            return;
        };
        tokio::select! {
            _ = link.until_lost() => {}
            _ = stop.changed() => return,
        }
        link.mark_lost();
        resilience.reach().reconnecting();
        let generation = link.generation;
        let node = link.node;
        drop(link);
        match inner.upgrade() {
            Some(inner) => {
                let settings = &inner.data.settings;
                tracing::warn!(
                    generation,
                    node = settings.nodes[node].address,
                    "RabbitMQ connection lost; reconnecting"
                );
                // Another node first: this one may be going down.
                settings.passed(node);
                inner.on_connection_lost();
            }
            None => return,
        }
        let mut attempt = 0;
        loop {
            let Some(settings) = inner.upgrade().map(|i| Arc::clone(&i.data.settings)) else {
                return;
            };
            let opened = tokio::select! {
                opened = Link::open(&settings, generation + 1) => opened,
                _ = stop.changed() => return,
            };
            drop(settings);
            match opened {
                Ok(link) => {
                    let Some(inner) = inner.upgrade() else { return };
                    inner.data.install(Arc::clone(&link));
                    resilience.server_answered();
                    tracing::info!(
                        generation = link.generation,
                        "RabbitMQ connection recovered"
                    );
                    inner.after_reconnect().await;
                    break;
                }
                Err(error) => {
                    let pause = probe_pause(attempt);
                    if resilience.reach().down(&error) {
                        tracing::warn!(%error, "RabbitMQ is unreachable; calls fail at once until it answers");
                    } else {
                        tracing::debug!(%error, retry_in = ?pause, "RabbitMQ reconnect failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => return,
                    }
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretUrl;

    fn config(url: &str) -> RabbitMqConfig {
        let mut config = RabbitMqConfig::new(SecretUrl::parse(url).unwrap());
        config.connection_timeout_ms = 1_000;
        config
    }

    #[tokio::test]
    async fn a_silent_server_times_out_instead_of_hanging() {
        // Accepts TCP connections and never speaks AMQP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let mut config = config(&format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f"));
        config.connection_timeout_ms = 300;
        let started = std::time::Instant::now();
        let error = crate::MessageBackend::connect(&crate::MessagingConfig {
            provider: crate::Provider::RabbitMq,
            rabbitmq: Some(config),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(error.is_transient(), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    fn node(url: &str) -> Node {
        Node::parse(&SecretUrl::parse(url).unwrap(), "rabbitmq.url", 10).unwrap()
    }

    #[test]
    fn parses_urls_and_never_shows_the_password() {
        let n = node("amqp://us%40er:p%2Fss@rabbit:5673/%2f");
        assert_eq!(n.args.get_host(), "rabbit");
        assert_eq!(n.args.get_port(), 5673);
        assert_eq!(n.args.get_virtual_host(), "/");
        assert_eq!(n.address, "rabbit:5673");
        assert!(!n.shown.contains("p%2Fss"), "{}", n.shown);
        let n = node("amqp://localhost");
        assert_eq!((n.args.get_port(), n.args.get_virtual_host()), (5672, "/"));
        let n = node("amqp://h/tasker");
        assert_eq!(n.args.get_virtual_host(), "tasker");
        let n = node("amqp://u:p@[::1]:5680/v%20h");
        assert_eq!(
            (n.args.get_host(), n.args.get_virtual_host()),
            ("::1", "v h")
        );
        assert_eq!(n.address, "[::1]:5680");
        for bad in ["http://h/", "amqps://u:secret@h/", "amqp://u:secret@h/%FF"] {
            let e = Settings::new(&config(bad)).err().unwrap().to_string();
            assert!(e.contains("rabbitmq.url"), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn every_node_of_a_cluster_is_read_and_a_bad_one_is_named() {
        let urls = |list: &[&str]| {
            RabbitMqConfig::cluster(list.iter().map(|u| SecretUrl::parse(u).unwrap()).collect())
        };
        let s = Settings::new(&urls(&["amqp://a:1", "amqp://b:2", "amqp://c:3"])).unwrap();
        let mut addresses: Vec<&str> = s.nodes.iter().map(|n| n.address.as_str()).collect();
        addresses.sort_unstable();
        assert_eq!(addresses, ["a:1", "b:2", "c:3"]);
        // After a node's connection drops, the next node comes first.
        s.passed(0);
        assert_eq!(s.preferred.load(Ordering::Relaxed), 1);
        s.passed(2);
        assert_eq!(
            s.preferred.load(Ordering::Relaxed),
            1,
            "only the node in use moves it"
        );
        let e = Settings::new(&urls(&["amqp://a", "amqps://u:secret@b/"]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("rabbitmq.urls[1]") && !e.contains("secret"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_is_passed_over_and_all_of_them_are_named() {
        // Two ports nothing listens on: each refuses at once.
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (free(), free());
        let urls = [a.local_addr().unwrap(), b.local_addr().unwrap()]
            .map(|address| SecretUrl::parse(&format!("amqp://u:hunter2@{address}/")).unwrap());
        drop((a, b));
        let s = Settings::new(&RabbitMqConfig::cluster(urls.to_vec())).unwrap();
        let e = s.open("test").await.err().unwrap();
        assert!(e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(text.contains("any of 2 RabbitMQ nodes"), "{text}");
        for node in &s.nodes {
            assert!(text.contains(&node.address), "{text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
    }
}

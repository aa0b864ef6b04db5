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

// Over 450 lines: URL settings, the link and its supervisor share the
// reconnect state, and their tests need all three.
use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
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
use tokio::sync::watch;
use url::Url;

use super::{
    channel::{CallError, TrackedChannel, CLOSED_CHANNEL_LIMIT},
    errors,
    publisher::Publisher,
    Inner,
};
use crate::{
    resilience::{probe_pause, Reachability, Resilience},
    MessagingError, RabbitMqConfig,
};

/// Longest a call waits for a reconnect under way before failing; after a
/// forced close the next connection is usually up within tens of ms.
const RECONNECT_WAIT: Duration = Duration::from_millis(500);
/// How often a link checks its connection besides amqprs' shutdown signal
/// (which a late subscriber can miss).
const LIVENESS_POLL: Duration = Duration::from_millis(250);

/// How to reach the broker, from `RabbitMqConfig`.
pub(super) struct Settings {
    args: OpenConnectionArguments,
    /// The URL with its password redacted, for messages.
    shown: String,
    pub timeout: Duration,
}

impl Settings {
    pub(super) fn new(config: &RabbitMqConfig) -> Result<Self, MessagingError> {
        let shown = config.url.to_string();
        let bad = |why: &str| MessagingError::Config(format!("rabbitmq.url {why}: {shown}"));
        let url = Url::parse(config.url.expose()).map_err(|_| bad("is not a URL"))?;
        match url.scheme() {
            "amqp" | "amqps" => {}
            _ => return Err(bad("must start with amqp:// or amqps://")),
        }
        let host = url.host_str().ok_or_else(|| bad("has no host"))?;
        let decode = |text: &str| -> Result<String, MessagingError> {
            percent_decode(text).ok_or_else(|| bad("has a malformed percent-encoding"))
        };
        let username = match url.username() {
            "" => "guest".to_owned(),
            user => decode(user)?,
        };
        let password = match url.password() {
            None => "guest".to_owned(),
            Some(password) => decode(password)?,
        };
        // `amqp://host` and `amqp://host/` name the default vhost "/"; `%2f` too.
        let vhost = match url.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            path => decode(path)?,
        };
        let mut args = OpenConnectionArguments::new(
            host.trim_start_matches('[').trim_end_matches(']'),
            url.port().unwrap_or(5672),
            &username,
            &password,
        );
        args.virtual_host(&vhost)
            .heartbeat(config.heartbeat_interval_secs);
        super::tls::configure(&mut args, &url, host, config)?;
        Ok(Self {
            args,
            shown,
            timeout: Duration::from_millis(config.connection_timeout_ms),
        })
    }

    /// Opens a connection named `name` (shown in the broker's management UI).
    pub(super) async fn open(&self, name: &str) -> Result<Connection, MessagingError> {
        let mut args = self.args.clone();
        args.connection_name(name);
        let connection = match tokio::time::timeout(self.timeout, Connection::open(&args)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                let tls = self.args.get_tls_adaptor().is_some();
                return Err(super::tls::open_error(
                    tls,
                    format!("cannot connect to {}", self.shown),
                    e,
                ));
            }
            Err(_) => {
                return Err(errors::connection(
                    format!("timed out connecting to {}", self.shown),
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

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
        let connection = settings.open("tasker-messaging").await?;
        let closures = Arc::new(AtomicU32::new(0));
        let publisher = Publisher::open(&connection, settings.timeout, Arc::clone(&closures))
            .await
            .map_err(|e| errors::call_error("connect", e, None))?;
        Ok(Arc::new(Self {
            generation,
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

    /// Closes the current link's publisher channel, then its connection,
    /// each awaiting the broker's close-ok (the backend is closing; the
    /// supervisor is stopped first).
    pub(super) async fn close(&self) -> Result<(), CallError> {
        let link = self.current();
        let publisher = link.lock_publisher().take();
        let channel = match publisher {
            Some(publisher) => publisher.tracked().close().await,
            None => Ok(()),
        };
        // amqprs reports success without a handshake once the connection is gone.
        if !link.connection.is_open() {
            return Err(CallError::broken("the connection was lost", None));
        }
        match tokio::time::timeout(self.settings.timeout, link.connection.clone().close()).await {
            Ok(Ok(())) => channel,
            Ok(Err(e)) => Err(CallError::broken("cannot close the connection", Some(e))),
            Err(_) => Err(CallError::broken("timed out closing the connection", None)),
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
        drop(link);
        tracing::warn!(generation, "RabbitMQ connection lost; reconnecting");
        match inner.upgrade() {
            Some(inner) => inner.on_connection_lost(),
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
        RabbitMqConfig {
            url: SecretUrl::parse(url).unwrap(),
            prefetch_count: 10,
            heartbeat_interval_secs: 10,
            connection_timeout_ms: 1_000,
            broker_consumer_timeout_ms: 1_800_000,
            tls: Default::default(),
        }
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

    #[test]
    fn parses_urls_and_never_shows_the_password() {
        let s = Settings::new(&config("amqp://us%40er:p%2Fss@rabbit:5673/%2f")).unwrap();
        assert_eq!(s.args.get_host(), "rabbit");
        assert_eq!(s.args.get_port(), 5673);
        assert_eq!(s.args.get_virtual_host(), "/");
        assert!(!s.shown.contains("p%2Fss"), "{}", s.shown);
        let s = Settings::new(&config("amqp://localhost")).unwrap();
        assert_eq!((s.args.get_port(), s.args.get_virtual_host()), (5672, "/"));
        let s = Settings::new(&config("amqp://h/tasker")).unwrap();
        assert_eq!(s.args.get_virtual_host(), "tasker");
        let s = Settings::new(&config("amqps://u:secret@h/")).unwrap();
        assert_eq!(s.args.get_port(), super::super::tls::AMQPS_PORT);
        assert!(s.args.get_tls_adaptor().is_some());
        for bad in ["http://h/", "ftp://u:secret@h/"] {
            let e = Settings::new(&config(bad)).err().unwrap().to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}

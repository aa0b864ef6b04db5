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
//! With several nodes (`rabbitmq.urls`, see `settings`), when the data
//! connection drops the next attempt starts at the node after the lost one.
//! Leases die with their connection as with one node; a publish whose
//! confirm was lost fails transient (and the send's retry may store it
//! twice, never lose it).

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    time::Duration,
};

use amqprs::connection::Connection;
use tokio::sync::watch;

use super::{
    channel::{CallError, TrackedChannel, CLOSED_CHANNEL_LIMIT},
    errors,
    publisher::Publisher,
    settings::Settings,
    Inner,
};
use crate::{
    resilience::{probe_pause, Reachability, Resilience},
    MessagingError,
};

/// Longest a call waits for a reconnect under way before failing; after a
/// forced close the next connection is usually up within tens of ms.
const RECONNECT_WAIT: Duration = Duration::from_millis(500);
/// How often a link checks its connection besides amqprs' shutdown signal
/// (which a late subscriber can miss).
const LIVENESS_POLL: Duration = Duration::from_millis(250);

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
    /// Opens a connection with a confirm-mode publisher channel.
    pub(super) async fn open(
        settings: &Settings,
        generation: u64,
    ) -> Result<Arc<Self>, MessagingError> {
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

    /// The confirm-mode publisher channel, reopened if the broker closed it
    /// or nacked a publish on it (the old one is closed once the confirms
    /// still due on it have arrived).
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
        if let Some(old) = self.lock_publisher().replace(Arc::clone(&publisher)) {
            old.retire();
        }
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
            .then(|| self.settings.address(link.node).to_owned())
    }

    /// The host and port of the node the live link is connected to;
    /// `None` while reconnecting.
    pub(super) fn server(&self) -> Option<(&str, u16)> {
        let link = self.current();
        link.is_alive().then(|| self.settings.server(link.node))
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
        let node = link.node;
        drop(link);
        match inner.upgrade() {
            Some(inner) => {
                let settings = &inner.data.settings;
                tracing::warn!(
                    generation,
                    node = settings.address(node),
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
                    crate::telemetry::reconnected(crate::Provider::RabbitMq);
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
    use crate::{RabbitMqConfig, SecretUrl};

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
}

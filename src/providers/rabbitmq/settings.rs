//! How to reach the broker: its nodes, read from `rabbitmq.url` or
//! `rabbitmq.urls` with the `url` crate, and opening a connection to one.
//!
//! With several nodes each connection tries them in a random order drawn at
//! connect (so a fleet spreads over them), once each, from the node the last
//! connection reached; after a node's connection drops, from the one after it.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicUsize, Ordering},
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
use url::Url;

use super::errors;
use crate::{MessagingError, RabbitMqConfig, SecretUrl};

/// How a node's connection is carried, from its URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// `amqp://`: TCP without TLS.
    Plain,
    /// `amqps://`: TLS with `[rabbitmq.tls]` (see [`super::tls`]).
    Tls,
}

impl Transport {
    fn of(url: &Url) -> Result<Self, &'static str> {
        match url.scheme() {
            "amqp" => Ok(Self::Plain),
            "amqps" => Ok(Self::Tls),
            _ => Err("must start with amqp:// or amqps://"),
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Self::Plain => "amqp",
            Self::Tls => "amqps",
        }
    }

    /// The port a URL without one means.
    fn default_port(self) -> u16 {
        match self {
            Self::Plain => 5672,
            Self::Tls => super::tls::AMQPS_PORT,
        }
    }
}

/// One broker node: how to open a connection to it.
struct Node {
    args: OpenConnectionArguments,
    /// Plain or TLS: every node of a cluster must agree (with the vhost).
    transport: Transport,
    /// The URL with its password redacted, for messages.
    shown: String,
    /// `host:port`, for messages and `connected_node`.
    address: String,
    /// The host as the URL names it (an IPv6 address without brackets) and
    /// the port: the `server.address` and `server.port` of spans.
    host: String,
    port: u16,
}

impl Node {
    /// Reads `url`, the value of config key `key`, with the rest of its
    /// `config`. Errors name the key and show the URL redacted.
    fn parse(url: &SecretUrl, key: &str, config: &RabbitMqConfig) -> Result<Self, MessagingError> {
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
        args.virtual_host(&vhost)
            .heartbeat(config.heartbeat_interval_secs);
        let tls = transport == Transport::Tls;
        super::tls::configure(&mut args, tls, &host, &config.tls, key, &shown)?;
        let address = match parsed.host() {
            Some(url::Host::Ipv6(address)) => format!("[{address}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        Ok(Self {
            args,
            transport,
            shown,
            address,
            host,
            port,
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
            .map(|(i, url)| Node::parse(url, &key(i), config))
            .collect::<Result<Vec<_>, _>>()?;
        // A failover must not move a backend to another namespace (vhost) or
        // off TLS; credentials may differ per node.
        let first = &nodes[0];
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let vhost = node.args.get_virtual_host();
            if vhost != first.args.get_virtual_host() || node.transport != first.transport {
                return Err(MessagingError::Config(format!(
                    "{} names vhost {vhost:?} over {}, but rabbitmq.urls[0] names vhost {:?} over {}: every node of a cluster must use the same vhost and scheme: {}",
                    key(i),
                    node.transport.scheme(),
                    first.args.get_virtual_host(),
                    first.transport.scheme(),
                    node.shown
                )));
            }
        }
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
                    // Each node's own message, without the error kind's
                    // prefix that the joined error carries once.
                    failures.push(node_failure(&error));
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

    /// The `host:port` of node `index`.
    pub(super) fn address(&self, index: usize) -> &str {
        &self.nodes[index].address
    }

    /// The host and port of node `index`.
    pub(super) fn server(&self, index: usize) -> (&str, u16) {
        let node = &self.nodes[index];
        (&node.host, node.port)
    }

    /// The connection to node `index` dropped: the next connection tries
    /// the node after it first (unless another already moved on).
    pub(super) fn passed(&self, index: usize) {
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
                return Err(super::tls::open_error(
                    node.args.get_tls_adaptor().is_some(),
                    format!("cannot connect to {}", node.shown),
                    e,
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

/// A node's failure for the all-nodes error, which already says
/// "RabbitMQ connection error" once: a connection error's own message.
fn node_failure(error: &MessagingError) -> String {
    match error {
        MessagingError::Connection { message, .. } => message.clone(),
        MessagingError::Tls { message, .. } => format!("TLS: {message}"),
        other => other.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> RabbitMqConfig {
        RabbitMqConfig::new(SecretUrl::parse(url).unwrap())
    }

    fn node(url: &str) -> Node {
        Node::parse(
            &SecretUrl::parse(url).unwrap(),
            "rabbitmq.url",
            &config(url),
        )
        .unwrap()
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
        let n = node("amqps://u:secret@h/");
        assert_eq!(n.args.get_port(), super::super::tls::AMQPS_PORT);
        assert!(n.args.get_tls_adaptor().is_some());
        for bad in ["http://h/", "ftp://u:secret@h/", "amqp://u:secret@h/%FF"] {
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
        let e = Settings::new(&urls(&["amqp://a", "ftp://u:secret@b/"]))
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
        assert_eq!(
            text.matches("connection error").count(),
            1,
            "the kind once, not per node: {text}"
        );
    }

    #[test]
    fn the_nodes_of_a_cluster_share_a_vhost_and_a_scheme() {
        let urls = |list: &[&str]| {
            RabbitMqConfig::cluster(list.iter().map(|u| SecretUrl::parse(u).unwrap()).collect())
        };
        // Credentials may differ; `amqp://h`, `amqp://h/` and `%2f` all mean "/".
        Settings::new(&urls(&[
            "amqp://a:1@h1",
            "amqp://b:2@h2/",
            "amqp://c:3@h3/%2f",
        ]))
        .unwrap();
        Settings::new(&urls(&["amqps://h1/v", "amqps://h2/v"])).unwrap();
        for (list, named) in [
            (
                &["amqp://h1/a", "amqp://h2/a", "amqp://u:secret@h3/b"][..],
                "rabbitmq.urls[2]",
            ),
            (
                &["amqp://h1/", "amqps://u:secret@h2/"][..],
                "rabbitmq.urls[1]",
            ),
        ] {
            let e = Settings::new(&urls(list)).err().unwrap();
            assert!(matches!(e, MessagingError::Config(_)), "{e}");
            let text = e.to_string();
            assert!(
                text.contains(named) && text.contains("rabbitmq.urls[0]"),
                "{text}"
            );
            assert!(!text.contains("secret"), "{text}");
        }
    }
}

//! The configuration: [`MessagingConfig`] and its sections, loaded with
//! figment from a TOML file, then `TASKER_MESSAGING_*` environment variables
//! (`__` separates nesting), or built in code
//! ([`MessagingConfig::in_memory`], [`MessagingConfig::pgmq`],
//! [`MessagingConfig::rabbitmq`] and the `with_*` setters).
//!
//! Every type here is also at the crate root.

pub use crate::resilience::{CircuitBreakerConfig, RetryPolicy};
pub use crate::secret::{InvalidUrl, SecretUrl};
/// The figment crate, whose [`Figment`] [`MessagingConfig::figment`] and
/// [`MessagingConfig::layered`] return: merge more providers from it
/// (`figment::providers::Serialized`, ...) without depending on it yourself.
pub use figment;
pub use figment::Figment;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::{lease::MAX_VISIBILITY_TIMEOUT, queue_name, MessagingError};

/// Which queue provider a [`MessageBackend`](crate::MessageBackend) talks to.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub enum Provider {
    /// PGMQ on PostgreSQL (`provider = "pgmq"`).
    #[serde(rename = "pgmq")]
    Pgmq,
    /// RabbitMQ over AMQP 0-9-1 (`provider = "rabbitmq"`).
    #[serde(rename = "rabbitmq")]
    RabbitMq,
    /// An in-process queue with the same semantics (`provider = "in_memory"`).
    #[default]
    #[serde(rename = "in_memory")]
    InMemory,
}

impl Provider {
    /// The name used in config files and receipts.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Pgmq => "pgmq",
            Self::RabbitMq => "rabbitmq",
            Self::InMemory => "in_memory",
        }
    }
}

impl Provider {
    /// Whether this build includes the provider: `in_memory` always, `pgmq`
    /// and `rabbitmq` with the cargo features of those names. A
    /// configuration naming a provider left out fails
    /// [`MessagingConfig::validate`] with a [`MessagingError::Config`] that
    /// names the feature.
    pub fn is_enabled(self) -> bool {
        match self {
            Self::Pgmq => cfg!(feature = "pgmq"),
            Self::RabbitMq => cfg!(feature = "rabbitmq"),
            Self::InMemory => true,
        }
    }
}

/// The error for a configuration that selects `provider` in a build without it.
pub(crate) fn disabled(provider: Provider) -> MessagingError {
    MessagingError::Config(format!(
        "provider \"{provider}\" is not in this build: enable tasker-messaging's \
         `{provider}` cargo feature"
    ))
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// The whole configuration. Load it with [`MessagingConfig::load`] (a TOML
/// file and `TASKER_MESSAGING_*` variables), or build it in code; every
/// field has a default except the selected provider's URL.
///
/// In code, start from [`in_memory`](Self::in_memory),
/// [`pgmq`](Self::pgmq) or [`rabbitmq`](Self::rabbitmq), then chain the
/// `with_*` setters (or set the public fields of a `let mut` binding, e.g.
/// `config.queues.namespaces`):
///
/// ```
/// use std::time::Duration;
/// use tasker_messaging::{MessagingConfig, SecretUrl};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let url: SecretUrl = "postgres://app:hunter2@localhost/app".parse()?;
/// let config = MessagingConfig::pgmq(url)
///     .with_max_receive_count(3)
///     .with_default_visibility_timeout(Duration::from_secs(60))
///     .with_max_message_bytes(64 * 1024);
/// config.validate()?;
/// // The effective configuration, secrets redacted:
/// let shown = serde_json::to_string(&config)?;
/// assert!(shown.contains("app:***@localhost") && !shown.contains("hunter2"));
/// # Ok(()) }
/// ```
///
/// `Serialize` writes every key the way a configuration file would set
/// it, except that the passwords in URLs are `***` (see [`SecretUrl`]): the
/// output is for showing, not for loading back.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// The provider `MessageBackend::connect` builds.
    pub provider: Provider,
    /// Queue naming, leases, dead letters and size limits.
    pub queues: QueuesConfig,
    /// PGMQ settings; required when `provider = "pgmq"`.
    pub pgmq: Option<PgmqConfig>,
    /// RabbitMQ settings; required when `provider = "rabbitmq"`.
    pub rabbitmq: Option<RabbitMqConfig>,
    /// A migration from `provider` to another provider, in progress: with
    /// this section `MessageBackend::connect` builds a
    /// [`MessageBackend::Migrating`](crate::MessageBackend::Migrating) that
    /// sends to the target and receives from both.
    pub migration: Option<MigrationConfig>,
    /// Retries of transient failures, for every provider.
    pub retry_policy: RetryPolicy,
    /// The circuit breaker guarding each provider's server.
    pub circuit_breaker: CircuitBreakerConfig,
}

/// The `[migration]` section: move from `provider` to `to` without stopping.
///
/// ```toml
/// provider = "pgmq"          # where the messages are now (the source)
///
/// [migration]
/// to = "rabbitmq"            # where they go (the target); needs its [rabbitmq] section
/// ```
///
/// The two providers must differ, and neither may be `in_memory` (its queues
/// live in one process: there is nothing another process could take over).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// The provider being migrated to.
    pub to: Provider,
}

impl MigrationConfig {
    /// A migration to `to`.
    pub fn new(to: Provider) -> Self {
        Self { to }
    }
}

/// Highest `queues.max_receive_count` accepted. RabbitMQ queues are declared
/// with a broker-side delivery limit far above it, so the library's own
/// dead-lettering always comes first.
pub const MAX_RECEIVE_COUNT: u32 = 100_000;

/// The `[queues]` section, shared by every provider.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueuesConfig {
    /// How a namespace maps to a queue name; must contain `{namespace}`.
    pub namespace_pattern: String,
    /// The namespaces an orchestrator creates queues for.
    pub namespaces: Vec<String>,
    /// Lease length when the caller has no better idea, in seconds.
    pub default_visibility_timeout_secs: u64,
    /// Deliveries without a delete before a message is dead-lettered.
    pub max_receive_count: u32,
    /// Appended to a queue's name to name its dead-letter queue.
    pub dead_letter_queue_suffix: String,
    /// Largest serialized message accepted by a send, in bytes.
    pub max_message_bytes: usize,
    /// How often a waiting receive re-checks a queue without an arrival
    /// signal (to see leases that ran out), in milliseconds.
    pub wait_poll_interval_ms: u64,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        Self {
            namespace_pattern: "{namespace}_queue".into(),
            namespaces: Vec::new(),
            default_visibility_timeout_secs: 30,
            max_receive_count: 5,
            dead_letter_queue_suffix: "_dlq".into(),
            max_message_bytes: 256 * 1024,
            wait_poll_interval_ms: 1_000,
        }
    }
}

impl QueuesConfig {
    /// `wait_poll_interval_ms` as a `Duration`.
    pub fn wait_poll_interval(&self) -> Duration {
        Duration::from_millis(self.wait_poll_interval_ms)
    }

    /// `default_visibility_timeout_secs` as a `Duration`.
    pub fn default_visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.default_visibility_timeout_secs)
    }

    /// Checks every `[queues]` value, naming the key of the first bad one.
    /// [`MessagingConfig::validate`] runs it, and so does every provider's
    /// public constructor.
    pub fn validate(&self) -> Result<(), MessagingError> {
        let q = self;
        let bad = |key: &str, why: String| Err(MessagingError::Config(format!("{key} {why}")));
        if q.max_receive_count == 0 || q.max_receive_count > MAX_RECEIVE_COUNT {
            return bad(
                "queues.max_receive_count",
                format!("must be from 1 to {MAX_RECEIVE_COUNT}"),
            );
        }
        if q.default_visibility_timeout_secs == 0
            || q.default_visibility_timeout() > MAX_VISIBILITY_TIMEOUT
        {
            return bad(
                "queues.default_visibility_timeout_secs",
                format!("must be between 1 and {}", MAX_VISIBILITY_TIMEOUT.as_secs()),
            );
        }
        let suffix = &q.dead_letter_queue_suffix;
        if suffix.is_empty()
            || suffix.len() > 8
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return bad(
                "queues.dead_letter_queue_suffix",
                format!("must be 1 to 8 bytes of `a-z`, `0-9` and `_` (got {suffix:?})"),
            );
        }
        if q.wait_poll_interval_ms == 0 {
            return bad("queues.wait_poll_interval_ms", "must be at least 1".into());
        }
        if q.max_message_bytes == 0 {
            return bad("queues.max_message_bytes", "must be at least 1".into());
        }
        if !q.namespace_pattern.contains("{namespace}") {
            return bad(
                "queues.namespace_pattern",
                format!(
                    "must contain `{{namespace}}` (got {:?})",
                    q.namespace_pattern
                ),
            );
        }
        let router = crate::NamespaceQueueRouter::new(q.namespace_pattern.clone());
        for namespace in &q.namespaces {
            let queue = crate::MessageRouter::route_to_queue(&router, namespace, "");
            queue_name::validate_new_queue_name(&queue, suffix)
                .map_err(|e| MessagingError::Config(format!("queues.namespaces: {e}")))?;
        }
        Ok(())
    }
}

impl PgmqConfig {
    /// `connection_timeout_ms` when the section does not set it.
    pub const DEFAULT_CONNECTION_TIMEOUT_MS: u64 = 5_000;

    /// `max_send_group` when the section does not set it.
    pub const DEFAULT_MAX_SEND_GROUP: usize = 100;
    /// The largest `max_send_group` accepted.
    pub const MAX_SEND_GROUP: usize = 1_000;

    /// The section for `database_url`, every other key at its default.
    pub fn new(database_url: SecretUrl) -> Self {
        Self {
            database_url,
            pool_size: defaults::pool_size(),
            connection_timeout_ms: defaults::connection_timeout_ms(),
            max_send_group: defaults::max_send_group(),
        }
    }

    /// `pool_size`: the most connections the pool opens.
    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// `connection_timeout_ms`, from a `Duration` (whole milliseconds).
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }
}

impl RabbitMqConfig {
    /// The section for one node at `url`, every other key at its default.
    pub fn new(url: SecretUrl) -> Self {
        Self::with_nodes(Some(url), Vec::new())
    }

    /// The section for the nodes of one cluster (`urls`), every other key
    /// at its default.
    pub fn cluster(urls: Vec<SecretUrl>) -> Self {
        Self::with_nodes(None, urls)
    }

    fn with_nodes(url: Option<SecretUrl>, urls: Vec<SecretUrl>) -> Self {
        Self {
            url,
            urls,
            prefetch_count: defaults::prefetch_count(),
            heartbeat_interval_secs: defaults::heartbeat_interval_secs(),
            connection_timeout_ms: defaults::connection_timeout_ms(),
            broker_consumer_timeout_ms: defaults::broker_consumer_timeout_ms(),
            tls: RabbitMqTlsConfig::default(),
            quorum_initial_group_size: None,
        }
    }

    /// `prefetch_count`: the most messages one receive takes.
    pub fn with_prefetch_count(mut self, prefetch_count: u16) -> Self {
        self.prefetch_count = prefetch_count;
        self
    }

    /// `connection_timeout_ms`, from a `Duration` (whole milliseconds).
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The `[rabbitmq.tls]` files for an `amqps://` URL.
    pub fn with_tls(mut self, tls: RabbitMqTlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// The nodes to connect to: `url`, or else `urls`.
    /// [`MessagingConfig::validate`] refuses a section with both or neither.
    pub fn nodes(&self) -> &[SecretUrl] {
        match &self.url {
            Some(url) if self.urls.is_empty() => std::slice::from_ref(url),
            _ => &self.urls,
        }
    }
}

/// The `[pgmq]` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PgmqConfig {
    /// `postgres://user:password@host:port/database`; the password is never shown.
    pub database_url: SecretUrl,
    /// Most connections the pool opens.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: u32,
    /// How long to wait for a connection before a call fails (and
    /// `health_check` answers `false`), in milliseconds.
    #[serde(default = "defaults::connection_timeout_ms")]
    pub connection_timeout_ms: u64,
    /// The most concurrent `send_message` calls (to one queue) sent as one
    /// statement (1 to 1000; 1 sends each on its own). Sends that arrive
    /// while earlier ones are with the server wait for the next statement, so
    /// a lone sender never waits and a busy one pays one commit per group.
    #[serde(default = "defaults::max_send_group")]
    pub max_send_group: usize,
}

/// The `[rabbitmq]` section: one node (`url`) or the nodes of a cluster
/// (`urls`), never both.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// One node: `amqp://user:password@host:port/vhost`; the password is
    /// never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// The nodes of one cluster, each a URL like `url`, all with the vhost
    /// and scheme (`amqp` or `amqps`) of the first (else connect fails with
    /// a configuration error naming the entry); credentials may differ. The
    /// backend tries them in a random order, each with its own
    /// `connection_timeout_ms` (so N silent nodes take N times that), and,
    /// when its connection drops, goes on to the next one. A node that goes
    /// silent without closing the connection (a network loss) is left only
    /// once two heartbeats are missed: after 2 x `heartbeat_interval_secs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<SecretUrl>,
    /// The most messages one receive takes: the `basic.qos` window of the
    /// consumer each receive runs. Nothing is fetched ahead of a receive.
    #[serde(default = "defaults::prefetch_count")]
    pub prefetch_count: u16,
    /// AMQP heartbeat interval, in seconds. A connection whose broker goes
    /// silent without closing it is taken for lost after two missed
    /// heartbeats (2 x this).
    #[serde(default = "defaults::heartbeat_interval_secs")]
    pub heartbeat_interval_secs: u16,
    /// How long one attempt waits for the broker, in milliseconds: a request
    /// or confirm, or opening a connection to one node (each node tried gets
    /// its own). A call is retried by `retry_policy`, so it can take up to
    /// (`max_retries` + 1) x this plus the backoffs: about 20 s with the
    /// defaults.
    #[serde(default = "defaults::connection_timeout_ms")]
    pub connection_timeout_ms: u64,
    /// The broker's `consumer_timeout`, in milliseconds (RabbitMQ 3.10 default:
    /// 30 minutes). The broker closes a channel holding a delivery unacked for
    /// longer, so a visibility timeout above it is `InvalidArgument`. Set it to
    /// the broker's value if that was changed.
    #[serde(default = "defaults::broker_consumer_timeout_ms")]
    pub broker_consumer_timeout_ms: u64,
    /// How many cluster nodes hold a replica of each queue this library
    /// declares (`x-quorum-initial-group-size`); unset, the broker's choice
    /// (every node, up to its default). Applies to queues declared from
    /// now on; an existing queue keeps its members.
    #[serde(default)]
    pub quorum_initial_group_size: Option<u32>,
    /// Certificates for an `amqps://` URL; empty means the bundled public roots
    /// and no client certificate. Refused with an `amqp://` URL.
    #[serde(default)]
    pub tls: RabbitMqTlsConfig,
}

/// The `[rabbitmq.tls]` section: PEM files for `amqps://`. Unreadable or
/// invalid files fail `connect` with a `Config` error naming the key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqTlsConfig {
    /// The CA certificate(s) the broker's certificate must chain to. Without
    /// it, the Mozilla roots built into the library (webpki-roots) are used;
    /// the operating system's store is not read.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (chain) to present, for brokers that verify
    /// peers; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1 PEM).
    pub client_key_file: Option<PathBuf>,
}

impl RabbitMqTlsConfig {
    /// No files: the bundled roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in `path` instead of the bundled roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents the certificate in `cert` with the private key in `key`.
    pub fn client_auth(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

mod defaults {
    pub fn pool_size() -> u32 {
        10
    }
    pub fn max_send_group() -> usize {
        super::PgmqConfig::DEFAULT_MAX_SEND_GROUP
    }
    pub fn connection_timeout_ms() -> u64 {
        super::PgmqConfig::DEFAULT_CONNECTION_TIMEOUT_MS
    }
    pub fn prefetch_count() -> u16 {
        200
    }
    pub fn heartbeat_interval_secs() -> u16 {
        10
    }
    pub fn broker_consumer_timeout_ms() -> u64 {
        30 * 60 * 1_000
    }
}

impl MessagingConfig {
    /// The in-memory provider, every other key at its default.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// PGMQ at `database_url` (`postgres://user:password@host:port/db`),
    /// every other key at its default. [`MessageBackend::connect`](crate::MessageBackend::connect)
    /// refuses it with a `Config` error unless the `pgmq` cargo feature is on.
    pub fn pgmq(database_url: SecretUrl) -> Self {
        Self::default().with_pgmq(PgmqConfig::new(database_url))
    }

    /// RabbitMQ at one node's `url` (`amqp://user:password@host:port/vhost`,
    /// or `amqps://`), every other key at its default.
    /// [`MessageBackend::connect`](crate::MessageBackend::connect) refuses it
    /// with a `Config` error unless the `rabbitmq` cargo feature is on.
    pub fn rabbitmq(url: SecretUrl) -> Self {
        Self::default().with_rabbitmq(RabbitMqConfig::new(url))
    }

    /// Selects PGMQ with this `[pgmq]` section.
    pub fn with_pgmq(mut self, pgmq: PgmqConfig) -> Self {
        self.provider = Provider::Pgmq;
        self.pgmq = Some(pgmq);
        self
    }

    /// Selects RabbitMQ with this `[rabbitmq]` section (one node, or a
    /// cluster with [`RabbitMqConfig::cluster`]).
    pub fn with_rabbitmq(mut self, rabbitmq: RabbitMqConfig) -> Self {
        self.provider = Provider::RabbitMq;
        self.rabbitmq = Some(rabbitmq);
        self
    }

    /// Adds a `[migration]` to `to`, whose section must be set too (with
    /// [`with_pgmq`](Self::with_pgmq) or [`with_rabbitmq`](Self::with_rabbitmq)
    /// before selecting `provider` again, or by setting the field).
    pub fn with_migration_to(mut self, to: Provider) -> Self {
        self.migration = Some(MigrationConfig::new(to));
        self
    }

    /// Replaces the whole `[queues]` section.
    pub fn with_queues(mut self, queues: QueuesConfig) -> Self {
        self.queues = queues;
        self
    }

    /// `queues.namespaces`: the namespaces an orchestrator creates queues for.
    pub fn with_namespaces<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// `queues.max_receive_count`: deliveries before a message is dead-lettered.
    pub fn with_max_receive_count(mut self, max_receive_count: u32) -> Self {
        self.queues.max_receive_count = max_receive_count;
        self
    }

    /// `queues.default_visibility_timeout_secs`, from a `Duration` (whole
    /// seconds, rounded up).
    pub fn with_default_visibility_timeout(mut self, timeout: Duration) -> Self {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        self.queues.default_visibility_timeout_secs = secs;
        self
    }

    /// `queues.max_message_bytes`: the largest serialized message a send accepts.
    pub fn with_max_message_bytes(mut self, max_message_bytes: usize) -> Self {
        self.queues.max_message_bytes = max_message_bytes;
        self
    }

    /// `queues.dead_letter_queue_suffix`: appended to a queue's name to name
    /// its dead-letter queue.
    pub fn with_dead_letter_queue_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.queues.dead_letter_queue_suffix = suffix.into();
        self
    }

    /// `queues.wait_poll_interval_ms`, from a `Duration` (whole milliseconds).
    pub fn with_wait_poll_interval(mut self, interval: Duration) -> Self {
        self.queues.wait_poll_interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Replaces the `[retry_policy]` section.
    pub fn with_retry_policy(mut self, retry_policy: RetryPolicy) -> Self {
        self.retry_policy = retry_policy;
        self
    }

    /// Replaces the `[circuit_breaker]` section.
    pub fn with_circuit_breaker(mut self, circuit_breaker: CircuitBreakerConfig) -> Self {
        self.circuit_breaker = circuit_breaker;
        self
    }

    /// Prefix of the environment variables that override the file.
    pub const ENV_PREFIX: &'static str = "TASKER_MESSAGING_";
    /// Environment variable naming the config file to load.
    pub const PATH_ENV: &'static str = "TASKER_MESSAGING_CONFIG";
    /// File loaded when `TASKER_MESSAGING_CONFIG` is unset (optional).
    pub const DEFAULT_PATH: &'static str = "config/messaging.toml";

    /// Loads the file named by `TASKER_MESSAGING_CONFIG` (which must exist), or
    /// `config/messaging.toml` if present, then applies `TASKER_MESSAGING_*`
    /// environment variables, then validates.
    pub fn load() -> Result<Self, MessagingError> {
        Self::from_figment(Self::layered(None)?)
    }

    /// Loads `path` (which must exist), then the environment, then validates.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, MessagingError> {
        Self::from_figment(Self::layered(Some(path.as_ref()))?)
    }

    /// The figment [`load`](Self::load) (`file: None`) or
    /// [`from_file`](Self::from_file) extracts, before validation: `file`
    /// (which must exist), else the file named by `TASKER_MESSAGING_CONFIG`
    /// (which must exist), else `config/messaging.toml` if present; then
    /// `TASKER_MESSAGING_*`. Bindings merge their overrides into it.
    pub fn layered(file: Option<&Path>) -> Result<Figment, MessagingError> {
        let env_path = std::env::var_os(Self::PATH_ENV).map(PathBuf::from);
        let file = match file.or(env_path.as_deref()) {
            Some(path) if !path.is_file() => {
                return Err(MessagingError::Config(format!(
                    "config file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => Some(path),
            None => Some(Path::new(Self::DEFAULT_PATH)).filter(|p| p.is_file()),
        };
        Ok(Self::figment(file))
    }

    /// The layered figment: defaults, then `file` if present, then
    /// `TASKER_MESSAGING_*`. Merge more providers into it, then call
    /// [`from_figment`](Self::from_figment).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(
            Env::prefixed(Self::ENV_PREFIX)
                .ignore(&["config"])
                .split("__"),
        )
    }

    /// Extracts and validates a configuration from any figment.
    pub fn from_figment(figment: Figment) -> Result<Self, MessagingError> {
        let config: Self = figment
            .extract()
            .map_err(|e| MessagingError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range and that the selected provider is configured.
    pub fn validate(&self) -> Result<(), MessagingError> {
        self.queues.validate()?;
        let bad = |key: &str, why: String| Err(MessagingError::Config(format!("{key} {why}")));
        if let Some(pgmq) = &self.pgmq {
            if pgmq.pool_size == 0 {
                return bad("pgmq.pool_size", "must be at least 1".into());
            }
            if pgmq.connection_timeout_ms == 0 {
                return bad("pgmq.connection_timeout_ms", "must be at least 1".into());
            }
            if !(1..=PgmqConfig::MAX_SEND_GROUP).contains(&pgmq.max_send_group) {
                return bad(
                    "pgmq.max_send_group",
                    format!("must be 1 to {}", PgmqConfig::MAX_SEND_GROUP),
                );
            }
        }
        if let Some(rabbit) = &self.rabbitmq {
            if rabbit.url.is_some() && !rabbit.urls.is_empty() {
                return bad(
                    "rabbitmq.url and rabbitmq.urls",
                    "are both set; set one: url for one node, urls for the nodes of a cluster"
                        .into(),
                );
            }
            if rabbit.nodes().is_empty() {
                return bad(
                    "rabbitmq.url (or rabbitmq.urls)",
                    "is required in the [rabbitmq] section".into(),
                );
            }
            if rabbit.quorum_initial_group_size == Some(0) {
                return bad(
                    "rabbitmq.quorum_initial_group_size",
                    "must be at least 1".into(),
                );
            }
            if rabbit.prefetch_count == 0 {
                return bad("rabbitmq.prefetch_count", "must be at least 1".into());
            }
            if rabbit.connection_timeout_ms == 0 {
                return bad(
                    "rabbitmq.connection_timeout_ms",
                    "must be at least 1".into(),
                );
            }
            if rabbit.tls.client_cert_file.is_some() != rabbit.tls.client_key_file.is_some() {
                return bad(
                    "rabbitmq.tls.client_cert_file",
                    "and rabbitmq.tls.client_key_file go together".into(),
                );
            }
            if rabbit.broker_consumer_timeout_ms < 1_000 {
                return bad(
                    "rabbitmq.broker_consumer_timeout_ms",
                    "must be at least 1000".into(),
                );
            }
        }
        if let Some(migration) = &self.migration {
            self.validate_migration(migration.to)?;
        }
        self.retry_policy
            .validate()
            .map_err(MessagingError::Config)?;
        self.circuit_breaker
            .validate()
            .map_err(MessagingError::Config)?;
        self.require_section(self.provider, "provider")
    }

    /// The migration rules: two different server providers, the target's
    /// section present.
    fn validate_migration(&self, to: Provider) -> Result<(), MessagingError> {
        let bad = |why: String| Err(MessagingError::Config(format!("migration.to {why}")));
        if to == self.provider {
            return bad(format!(
                "must name another provider than `provider` (both are \"{to}\")"
            ));
        }
        if [to, self.provider].contains(&Provider::InMemory) {
            return bad(
                "cannot involve the in_memory provider: its queues live in one process, \
                 so there is nothing to migrate"
                    .into(),
            );
        }
        self.require_section(to, "migration.to")
    }

    /// Fails unless the section `provider` needs is present; `key` is the
    /// setting that selected it.
    fn require_section(&self, provider: Provider, key: &str) -> Result<(), MessagingError> {
        if !provider.is_enabled() {
            return Err(disabled(provider));
        }
        let missing = match provider {
            Provider::Pgmq if self.pgmq.is_none() => "pgmq.database_url",
            Provider::RabbitMq if self.rabbitmq.is_none() => "rabbitmq.url",
            _ => return Ok(()),
        };
        Err(MessagingError::Config(format!(
            "{missing} is required when {key} = \"{provider}\""
        )))
    }

    /// This configuration for `provider` alone: `provider` set to it and no
    /// migration. The CLI uses it to reach each side of a migration.
    pub fn for_provider(&self, provider: Provider) -> Self {
        Self {
            provider,
            migration: None,
            ..self.clone()
        }
    }
}

//! Configuration: a TOML file of serde structs (every field documented, every default named),
//! then the environment variables of the stack logmill replaces, then command-line flags;
//! validated once into [`Settings`] that later code uses without checking again.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::access::rules::{Registry, RulesError};
use crate::agent::filter::{Filters, Globs};
use crate::agent::{AgentRules, CollectTo};
use crate::consume::CoreSettings;
use crate::derive::level::LevelDetector;
use crate::derive::DeriveSettings;
use crate::host::{
    CollectSettings, CpuOptions, DiskOptions, Glob, HostInput, KubeletSettings, NsqStatsSettings, Roots,
};
use crate::influx::api::{Api, Auth};
use crate::influx::writer::InfluxSettings;
use crate::kube::{CacheSettings, KubeSettings};
use crate::metrics::aggregate::AggregateSettings;
use crate::nsq::connection::{ConnectionSettings, Secret, TlsSettings};
use crate::nsq::consumer::ConsumerSettings;
use crate::nsq::producer::ProducerSettings;
use crate::nsq::NsqSettings;
use crate::tail::multiline::MultilineRule;
use crate::tail::{StartAt, TailSettings, WatchMode, Wrapping};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Toml { path: String, source: toml::de::Error },
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error(transparent)]
    Parsers(#[from] RulesError),
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// The configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This node's name, the `host` tag of every point. Default: `$NODE_NAME` (set from the
    /// pod's `spec.nodeName` in the DaemonSet), else the machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Longest log line kept whole; longer lines are truncated to this and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    #[serde(default)]
    pub parsers: RawParsers,
    #[serde(default)]
    pub aggregate: RawAggregate,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub nsq: RawNsq,
    #[serde(default)]
    pub influx: RawInflux,
    #[serde(default)]
    pub kubernetes: RawKubernetes,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub tail: RawTail,
    /// Multiline merging, per container: `[[multiline]]` tables, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multiline: Vec<RawMultiline>,
    #[serde(default)]
    pub collect: RawCollect,
    #[serde(default)]
    pub consume: RawConsume,
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawParsers {
    /// A directory of `*.toml` log-format definitions, added to the built-ins (a file with a
    /// built-in's `name` replaces it). Default: none, the built-ins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// Length of a `router_requests` window, in event time (the access line's own time).
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// How long past its end a window waits for stragglers before it is flushed.
    #[serde(default = "default_lateness_secs")]
    pub lateness_secs: u64,
    /// Most live series (window × app × status × method × host) held at once; past it the
    /// least recently used is flushed early and counted in `logmill_series_evicted_total`.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

impl Default for RawAggregate {
    fn default() -> Self {
        Self {
            window_secs: default_window_secs(),
            lateness_secs: default_lateness_secs(),
            max_series: default_max_series(),
        }
    }
}

fn default_window_secs() -> u64 {
    10
}
fn default_lateness_secs() -> u64 {
    10
}
fn default_max_series() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Address of the `/metrics` (Prometheus text) and `/healthz` endpoint of the long-running
    /// roles; empty to disable.
    #[serde(default = "default_telemetry_listen")]
    pub listen: String,
    /// Seconds between two writes of the service's own counters as `logmill_*` points (to the
    /// `metrics` topic from the agent, to InfluxDB from the consumer), like Telegraf's
    /// `internal` input; 0 turns them off.
    #[serde(default = "default_telemetry_interval_secs")]
    pub interval_secs: u64,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self { listen: default_telemetry_listen(), interval_secs: default_telemetry_interval_secs() }
    }
}

fn default_telemetry_interval_secs() -> u64 {
    10
}

fn default_telemetry_listen() -> String {
    "0.0.0.0:9273".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNsq {
    /// nsqd TCP addresses (`host:port`) to publish to and consume from.
    /// Env: `NSQD_TCP_ADDRESSES` or `DEIS_NSQD_ADDRS` (comma separated, as Hephy's fluentd),
    /// else `DEIS_NSQD_SERVICE_HOST` + `DEIS_NSQD_SERVICE_PORT_TRANSPORT` (as Deis's fluentd).
    #[serde(default = "default_nsqd")]
    pub nsqd_tcp_addresses: Vec<String>,
    /// nsqlookupd HTTP addresses for the consumer's discovery. Env: `NSQLOOKUPD_HTTP_ADDRESSES`.
    #[serde(default)]
    pub lookupd_http_addresses: Vec<String>,
    /// Seconds between two polls of the nsqlookupds (go-nsq's `lookupd_poll_interval`); each
    /// wait is drawn within ±15 % of it, so consumers restarted together spread out.
    #[serde(default = "default_lookupd_poll_interval_secs")]
    pub lookupd_poll_interval_secs: u64,
    /// nsqd HTTP addresses (`host:port` or `http://host:port`) on which the consumer creates its
    /// topics and channel before subscribing: a channel that does not exist yet misses what is
    /// published before it does. Env: `NSQD_HTTP_ADDRESSES` (comma separated).
    #[serde(default)]
    pub nsqd_http_addresses: Vec<String>,
    /// Topic of app log records. Env: `NSQ_LOG_TOPIC`.
    #[serde(default = "default_log_topic")]
    pub log_topic: String,
    /// Topic of line-protocol metrics. Env: `NSQ_METRIC_TOPIC`.
    #[serde(default = "default_metric_topic")]
    pub metric_topic: String,
    /// logmill's consumer channel on both topics; never the old consumers' `consume` (Deis
    /// logger) or `consumer` (telegraf), which would steal their messages.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Messages the consumer has in flight at once, across all nsqd (spread as RDY). The
    /// consumer holds messages until their aggregate windows are written, so its throughput is
    /// about this many messages per write's latency.
    #[serde(default = "default_nsq_max_in_flight")]
    pub max_in_flight: u32,
    /// Bytes of message bodies received from nsqd and not yet processed, about at most: the
    /// consumer lowers RDY so that what nsqd may still send, at the running average message
    /// size, fits. Messages held after processing (in an open window) count in
    /// `max_in_flight` only. 0: no bound but `max_in_flight`.
    #[serde(default = "default_nsq_max_buffered_bytes")]
    pub max_buffered_bytes: u64,
    /// Milliseconds a consumed message may stay unfinished before nsqd redelivers it
    /// (IDENTIFY `msg_timeout`); 0: the server's `--msg-timeout`.
    #[serde(default = "default_msg_timeout_ms")]
    pub msg_timeout_ms: u64,
    /// Milliseconds between nsqd's heartbeats (IDENTIFY `heartbeat_interval`, 1000..=60000).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Milliseconds to connect to nsqd and finish the handshake.
    #[serde(default = "default_dial_timeout_ms")]
    pub dial_timeout_ms: u64,
    /// Milliseconds pending output may make no progress before the connection is dropped.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Most messages the producer merges into one MPUB.
    #[serde(default = "default_publish_batch_max_messages")]
    pub publish_batch_max_messages: usize,
    /// Most bytes of messages the producer merges into one MPUB (under nsqd's 5 MiB
    /// `--max-body-size`).
    #[serde(default = "default_publish_batch_max_bytes")]
    pub publish_batch_max_bytes: usize,
    /// nsqd's `--max-msg-size`: larger messages fail locally, and frames up to it are read.
    #[serde(default = "default_max_msg_bytes")]
    pub max_msg_bytes: usize,
    /// nsqd's `--max-body-size`: the largest MPUB body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Publishes queued for the producer before callers wait (back-pressure).
    #[serde(default = "default_publish_queue_capacity")]
    pub publish_queue_capacity: usize,
    /// Deliveries after which a message is logged and finished unprocessed; 0: never give up.
    #[serde(default)]
    pub max_attempts: u16,
    /// Milliseconds the consumer lets in-flight messages finish on shutdown before requeueing.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Upgrade connections to TLS (`tls_v1`); fails clearly when nsqd does not offer it.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of a CA to trust for nsqd's certificate, besides the built-in roots.
    #[serde(default)]
    pub tls_ca_file: String,
    /// Name to verify nsqd's certificate against; default: the host of each address.
    #[serde(default)]
    pub tls_server_name: String,
    /// File holding the secret sent with AUTH when nsqd requires it (never a flag).
    /// Env: `NSQ_AUTH_SECRET` (the value).
    #[serde(default)]
    pub auth_secret_file: String,
    /// Set from `NSQ_AUTH_SECRET`; never read from or written to the file.
    #[serde(skip)]
    pub auth_secret_from_env: Option<String>,
}

impl Default for RawNsq {
    fn default() -> Self {
        Self {
            nsqd_tcp_addresses: default_nsqd(),
            lookupd_http_addresses: Vec::new(),
            lookupd_poll_interval_secs: default_lookupd_poll_interval_secs(),
            nsqd_http_addresses: Vec::new(),
            log_topic: default_log_topic(),
            metric_topic: default_metric_topic(),
            channel: default_channel(),
            max_in_flight: default_nsq_max_in_flight(),
            max_buffered_bytes: default_nsq_max_buffered_bytes(),
            msg_timeout_ms: default_msg_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            dial_timeout_ms: default_dial_timeout_ms(),
            write_timeout_ms: default_write_timeout_ms(),
            publish_batch_max_messages: default_publish_batch_max_messages(),
            publish_batch_max_bytes: default_publish_batch_max_bytes(),
            max_msg_bytes: default_max_msg_bytes(),
            max_body_bytes: default_max_body_bytes(),
            publish_queue_capacity: default_publish_queue_capacity(),
            max_attempts: 0,
            drain_timeout_ms: default_drain_timeout_ms(),
            tls: false,
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            auth_secret_file: String::new(),
            auth_secret_from_env: None,
        }
    }
}

// The NSQ client's own defaults (`ProducerSettings`, `ConsumerSettings`,
// `ConnectionSettings`) are the one place they are defined; the file's defaults read them.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
fn default_nsq_max_in_flight() -> u32 {
    ConsumerSettings::default().max_in_flight
}
fn default_nsq_max_buffered_bytes() -> u64 {
    ConsumerSettings::default().max_buffered_bytes
}
fn default_msg_timeout_ms() -> u64 {
    // 60 s, nsqd's own `--msg-timeout` default, asked for explicitly so that a server started
    // with a shorter one does not redeliver what a slow InfluxDB holds.
    60_000
}
fn default_heartbeat_interval_ms() -> u64 {
    ConnectionSettings::default().heartbeat_interval.map_or(0, ms)
}
fn default_dial_timeout_ms() -> u64 {
    ms(ConnectionSettings::default().dial_timeout)
}
fn default_write_timeout_ms() -> u64 {
    ms(ConnectionSettings::default().write_timeout)
}
fn default_publish_batch_max_messages() -> usize {
    ProducerSettings::default().batch_max_messages
}
fn default_publish_batch_max_bytes() -> usize {
    ProducerSettings::default().batch_max_bytes
}
fn default_max_msg_bytes() -> usize {
    ProducerSettings::default().max_message_bytes
}
fn default_max_body_bytes() -> usize {
    ProducerSettings::default().max_body_bytes
}
fn default_publish_queue_capacity() -> usize {
    ProducerSettings::default().queue_capacity
}
fn default_drain_timeout_ms() -> u64 {
    ms(ConsumerSettings::default().drain_timeout)
}

impl RawNsq {
    /// Checks every value once and builds the client's settings: TLS roots loaded and the
    /// AUTH secret read here, once, for every connection of the role.
    pub(crate) fn validate(&self, host: &str) -> Result<NsqSettings, ConfigError> {
        for topic in [&self.log_topic, &self.metric_topic] {
            if !valid_nsq_name(topic) {
                return Err(invalid("nsq topics", format!("`{topic}` is not a valid NSQ topic name")));
            }
        }
        if !valid_nsq_name(&self.channel) {
            return Err(invalid(
                "nsq.channel",
                format!("`{}` is not a valid NSQ channel name", self.channel),
            ));
        }
        if ["consume", "consumer"].contains(&self.channel.as_str()) {
            return Err(invalid("nsq.channel", "`consume` and `consumer` belong to the Deis logger and telegraf; sharing them would split their messages"));
        }
        if self.lookupd_poll_interval_secs == 0 {
            return Err(invalid("nsq.lookupd_poll_interval_secs", "must be greater than 0"));
        }
        for (key, addresses) in [
            ("nsq.lookupd_http_addresses", &self.lookupd_http_addresses),
            ("nsq.nsqd_http_addresses", &self.nsqd_http_addresses),
        ] {
            for address in addresses {
                crate::nsq::http::base_url(address).map_err(|e| invalid(key, e.to_string()))?;
            }
        }
        let connection = self.connection_settings(host)?;
        Ok(NsqSettings {
            nsqd_tcp_addresses: self.nsqd_tcp_addresses.clone(),
            producer: self.producer_settings(connection.clone())?,
            consumer: self.consumer_settings(connection)?,
            lookupd_http_addresses: self.lookupd_http_addresses.clone(),
            lookupd_poll_interval: Duration::from_secs(self.lookupd_poll_interval_secs),
            log_topic: self.log_topic.clone(),
            metric_topic: self.metric_topic.clone(),
        })
    }

    fn connection_settings(&self, host: &str) -> Result<ConnectionSettings, ConfigError> {
        for addr in &self.nsqd_tcp_addresses {
            if !crate::nsq::connection::valid_address(addr) {
                return Err(invalid("nsq.nsqd_tcp_addresses", format!("`{addr}` is not host:port")));
            }
        }
        if !(1000..=60_000).contains(&self.heartbeat_interval_ms) {
            return Err(invalid("nsq.heartbeat_interval_ms", "must be between 1000 and 60000"));
        }
        if self.msg_timeout_ms != 0 && !(1000..=900_000).contains(&self.msg_timeout_ms) {
            return Err(invalid(
                "nsq.msg_timeout_ms",
                "must be 0 (server default) or between 1000 and 900000",
            ));
        }
        let dial_timeout = Duration::from_millis(self.dial_timeout_ms);
        if dial_timeout.is_zero() {
            return Err(invalid("nsq.dial_timeout_ms", "must be greater than 0"));
        }
        if self.write_timeout_ms == 0 {
            return Err(invalid("nsq.write_timeout_ms", "must be greater than 0"));
        }
        let tls = if self.tls {
            let ca = (!self.tls_ca_file.is_empty()).then(|| Path::new(&self.tls_ca_file));
            let name = (!self.tls_server_name.is_empty()).then(|| self.tls_server_name.clone());
            Some(TlsSettings::new(ca, name).map_err(|e| invalid("nsq.tls_ca_file", e.to_string()))?)
        } else {
            None
        };
        let auth_secret = match (&self.auth_secret_from_env, self.auth_secret_file.as_str()) {
            (Some(secret), _) => Some(Secret(secret.clone().into_bytes())),
            (None, "") => None,
            (None, path) => {
                let text = std::fs::read(path)
                    .map_err(|e| invalid("nsq.auth_secret_file", format!("{path}: {e}")))?;
                let end = text.iter().rposition(|&b| b != b'\n' && b != b'\r').map_or(0, |i| i + 1);
                Some(Secret(text[..end].to_vec()))
            }
        };
        Ok(ConnectionSettings {
            client_id: host.to_owned(),
            hostname: host.to_owned(),
            heartbeat_interval: Some(Duration::from_millis(self.heartbeat_interval_ms)),
            msg_timeout: (self.msg_timeout_ms > 0).then(|| Duration::from_millis(self.msg_timeout_ms)),
            dial_timeout,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            tls,
            auth_secret,
            max_frame_bytes: self.max_msg_bytes.saturating_add(
                crate::nsq::protocol::FRAME_TYPE_BYTES + crate::nsq::protocol::MESSAGE_HEADER_BYTES,
            ),
            ..ConnectionSettings::default()
        })
    }

    fn producer_settings(&self, connection: ConnectionSettings) -> Result<ProducerSettings, ConfigError> {
        let defaults = ProducerSettings::default();
        if self.publish_batch_max_messages == 0 {
            return Err(invalid("nsq.publish_batch_max_messages", "must be at least 1"));
        }
        if self.max_msg_bytes == 0 || self.max_body_bytes < self.max_msg_bytes {
            return Err(invalid(
                "nsq.max_body_bytes",
                "must be at least max_msg_bytes (and that at least 1)",
            ));
        }
        if self.publish_batch_max_bytes == 0 || self.publish_batch_max_bytes > self.max_body_bytes {
            return Err(invalid(
                "nsq.publish_batch_max_bytes",
                format!(
                    "must be between 1 and {} (max_body_bytes, nsqd's --max-body-size)",
                    self.max_body_bytes
                ),
            ));
        }
        if self.publish_queue_capacity == 0 {
            return Err(invalid("nsq.publish_queue_capacity", "must be at least 1"));
        }
        Ok(ProducerSettings {
            addresses: self.nsqd_tcp_addresses.clone(),
            connection,
            queue_capacity: self.publish_queue_capacity,
            batch_max_messages: self.publish_batch_max_messages,
            batch_max_bytes: self.publish_batch_max_bytes,
            max_message_bytes: self.max_msg_bytes,
            max_body_bytes: self.max_body_bytes,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            ..defaults
        })
    }

    /// The consumers' settings; the topic is set per subscription (`NsqSettings::consumer`).
    fn consumer_settings(&self, connection: ConnectionSettings) -> Result<ConsumerSettings, ConfigError> {
        if self.max_in_flight == 0 {
            return Err(invalid("nsq.max_in_flight", "must be at least 1"));
        }
        Ok(ConsumerSettings {
            topic: self.log_topic.clone(),
            channel: self.channel.clone(),
            connection,
            max_in_flight: self.max_in_flight,
            max_buffered_bytes: self.max_buffered_bytes,
            max_attempts: self.max_attempts,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            create_on: self.nsqd_http_addresses.clone(),
            ..ConsumerSettings::default()
        })
    }
}

fn default_nsqd() -> Vec<String> {
    vec!["127.0.0.1:4150".into()]
}
fn default_lookupd_poll_interval_secs() -> u64 {
    60
}
fn default_log_topic() -> String {
    "logs".into()
}
fn default_metric_topic() -> String {
    "metrics".into()
}
fn default_channel() -> String {
    "logmill".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInflux {
    /// InfluxDB base URLs, tried in turn (failover); empty: no InfluxDB output.
    /// Env: `INFLUXDB_URLS` (comma separated, as the old telegraf) or `INFLUXDB_URL`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Write API: 1 (`/write`, InfluxDB 1.x) or 2 (`/api/v2/write`: 2.x, 3, and 1.8+).
    #[serde(default = "default_api_version")]
    pub api_version: u8,
    /// 1.x database. Env: `INFLUXDB_DATABASE`.
    #[serde(default = "default_database")]
    pub database: String,
    /// 1.x retention policy; empty: the database's default.
    #[serde(default)]
    pub retention_policy: String,
    /// When set (e.g. `"30d"`) and the database is created, also create `retention_policy`
    /// with this duration, as the default.
    #[serde(default)]
    pub retention_policy_duration: String,
    /// Create a missing 1.x database on `database not found`.
    #[serde(default = "default_true")]
    pub create_database: bool,
    /// 1.x user. Env: `INFLUXDB_USERNAME`.
    #[serde(default)]
    pub username: String,
    /// File holding the 1.x password (the password itself is never a setting or a flag).
    /// Env: `INFLUXDB_PASSWORD` (the value).
    #[serde(default)]
    pub password_file: String,
    /// 2.x organisation.
    #[serde(default)]
    pub org: String,
    /// 2.x bucket.
    #[serde(default)]
    pub bucket: String,
    /// File holding an API token (`Authorization: Token`). Env: `INFLUXDB_TOKEN` (the value).
    #[serde(default)]
    pub token_file: String,
    /// PEM file of a CA to trust for `https://` URLs, besides the built-in roots.
    #[serde(default)]
    pub ca_file: String,
    /// Compress request bodies with gzip.
    #[serde(default = "default_true")]
    pub gzip: bool,
    /// A batch is sent when it holds this many points…
    #[serde(default = "default_batch_max_points")]
    pub batch_max_points: usize,
    /// …or this many bytes of line protocol…
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// …or has waited this long.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Line protocol accepted but not yet stored, at most; callers wait beyond it.
    #[serde(default = "default_buffer_max_bytes")]
    pub buffer_max_bytes: usize,
    /// Batches sent at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retry backoff: first wait, doubled per failed round over the URLs up to the cap, ±25 %.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Set from `INFLUXDB_PASSWORD`; never read from or written to the file.
    #[serde(skip)]
    pub password_from_env: Option<String>,
    /// Set from `INFLUXDB_TOKEN`; never read from or written to the file.
    #[serde(skip)]
    pub token_from_env: Option<String>,
}

impl Default for RawInflux {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [influx] must parse: {e}"))
    }
}

fn default_api_version() -> u8 {
    1
}
fn default_database() -> String {
    "kubernetes".into()
}
fn default_true() -> bool {
    true
}
fn default_batch_max_points() -> usize {
    5000
}
fn default_batch_max_bytes() -> usize {
    1 << 20
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_buffer_max_bytes() -> usize {
    64 << 20
}
fn default_max_in_flight() -> usize {
    2
}
fn default_timeout_secs() -> u64 {
    10
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl RawInflux {
    /// The writer's settings; `None` when no URL is configured.
    pub fn validate(&self) -> Result<Option<InfluxSettings>, ConfigError> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        let mut urls = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains('?') {
                return Err(invalid(
                    "influx.urls",
                    format!("`{url}` is not an http:// or https:// base URL"),
                ));
            }
            urls.push(url.trim_end_matches('/').to_owned());
        }
        let read_secret = |key: &'static str, path: &str| -> Result<Option<String>, ConfigError> {
            if path.is_empty() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(path).map_err(|e| invalid(key, format!("{path}: {e}")))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        };
        let token = match &self.token_from_env {
            Some(t) => Some(t.clone()),
            None => read_secret("influx.token_file", &self.token_file)?,
        };
        let password = match &self.password_from_env {
            Some(p) => Some(p.clone()),
            None => read_secret("influx.password_file", &self.password_file)?,
        };
        let auth = match (token, self.username.is_empty()) {
            (Some(token), _) => Auth::Token(token),
            (None, false) => {
                Auth::Basic { username: self.username.clone(), password: password.unwrap_or_default() }
            }
            (None, true) => Auth::None,
        };
        let api = match self.api_version {
            1 => {
                if self.database.is_empty() {
                    return Err(invalid("influx.database", "must not be empty"));
                }
                Api::V1 {
                    database: self.database.clone(),
                    retention_policy: Some(self.retention_policy.clone()).filter(|r| !r.is_empty()),
                }
            }
            2 => {
                if self.org.is_empty() || self.bucket.is_empty() {
                    return Err(invalid("influx.org", "api_version 2 needs `org` and `bucket`"));
                }
                Api::V2 { org: self.org.clone(), bucket: self.bucket.clone() }
            }
            v => return Err(invalid("influx.api_version", format!("`{v}`: must be 1 or 2"))),
        };
        let retention = match (self.retention_policy.is_empty(), self.retention_policy_duration.is_empty()) {
            (_, true) => None,
            (false, false) => Some((self.retention_policy.clone(), self.retention_policy_duration.clone())),
            (true, false) => {
                return Err(invalid(
                    "influx.retention_policy_duration",
                    "needs `retention_policy` (its name)",
                ))
            }
        };
        if let Some((_, d)) = &retention {
            let unit_ok = d.ends_with(['s', 'm', 'h', 'd', 'w']) || d == "INF";
            if !unit_ok || !d.trim_end_matches(char::is_alphabetic).chars().all(|c| c.is_ascii_digit()) {
                return Err(invalid(
                    "influx.retention_policy_duration",
                    format!("`{d}` is not an InfluxQL duration like 30d"),
                ));
            }
        }
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        Ok(Some(InfluxSettings {
            urls,
            api,
            auth,
            gzip: self.gzip,
            batch_max_points: positive("influx.batch_max_points", self.batch_max_points as u64)? as usize,
            batch_max_bytes: positive("influx.batch_max_bytes", self.batch_max_bytes as u64)? as usize,
            flush_interval: Duration::from_millis(positive(
                "influx.flush_interval_ms",
                self.flush_interval_ms,
            )?),
            buffer_max_bytes: positive("influx.buffer_max_bytes", self.buffer_max_bytes as u64)? as usize,
            max_in_flight: positive("influx.max_in_flight", self.max_in_flight as u64)? as usize,
            timeout: Duration::from_secs(positive("influx.timeout_secs", self.timeout_secs)?),
            ca_file: Some(PathBuf::from(&self.ca_file)).filter(|_| !self.ca_file.is_empty()),
            create_database: self.create_database,
            retention,
            backoff_initial: Duration::from_millis(positive(
                "influx.backoff_initial_ms",
                self.backoff_initial_ms,
            )?),
            backoff_max: Duration::from_millis(positive("influx.backoff_max_ms", self.backoff_max_ms)?),
        }))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// Ask the Kubernetes API for pod labels and uids. When no API is found (no `api_url`, and
    /// not in a pod: `$KUBERNETES_SERVICE_HOST` unset), records are classified by container
    /// name and namespace alone, whatever this says.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// API server base URL. Default: in a pod, `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[serde(default)]
    pub api_url: String,
    /// File holding the bearer token, read again every `token_reload_secs` (bound
    /// service-account tokens rotate). Default: the service account's token, when mounted.
    #[serde(default)]
    pub token_file: String,
    /// Seconds between two reads of `token_file` (client-go's period; a 401 reads it at once).
    #[serde(default = "default_token_reload_secs")]
    pub token_reload_secs: u64,
    /// PEM CA bundle trusted for the API server, instead of the built-in roots. Default: the
    /// service account's `ca.crt`, when mounted.
    #[serde(default)]
    pub ca_file: String,
    /// Accept any certificate from the API server (tests and emergencies only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Milliseconds one API request may take, connection included.
    #[serde(default = "default_kube_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// API requests under way at once, at most.
    #[serde(default = "default_kube_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Pods whose metadata is cached, at most (the least recently used is dropped first).
    #[serde(default = "default_kube_cache_max_pods")]
    pub cache_max_pods: usize,
    /// Seconds a pod's labels are used before they are refreshed (in the background: the old
    /// ones are served meanwhile).
    #[serde(default = "default_kube_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Seconds a 404 (no such pod) is believed before the API is asked again.
    #[serde(default = "default_kube_negative_ttl_secs")]
    pub negative_ttl_secs: u64,
    /// Seconds a deleted pod's metadata is kept after the API first says it is gone, so that
    /// its last lines ship with its labels.
    #[serde(default = "default_kube_deleted_pod_retention_secs")]
    pub deleted_pod_retention_secs: u64,
    /// Seconds before a failed request (API down, slow, an error) is retried; records are
    /// classified by namespace meanwhile.
    #[serde(default = "default_kube_error_retry_secs")]
    pub error_retry_secs: u64,
    /// Milliseconds a container's records may wait for its pod's metadata, counted from the
    /// pod's first lookup; then they go out classified by namespace. 0: never wait.
    #[serde(default = "default_kube_metadata_wait_ms")]
    pub metadata_wait_ms: u64,
    /// `host:port` from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`; never read from
    /// or written to the file.
    #[serde(skip)]
    pub in_cluster_from_env: Option<String>,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [kubernetes] must parse: {e}"))
    }
}

fn default_token_reload_secs() -> u64 {
    60
}
fn default_kube_request_timeout_ms() -> u64 {
    5000
}
fn default_kube_max_concurrent_requests() -> usize {
    4
}
fn default_kube_cache_max_pods() -> usize {
    // A node runs at most 110 pods by default; churn (jobs, deploys) stays far below this.
    4096
}
fn default_kube_cache_ttl_secs() -> u64 {
    300
}
fn default_kube_negative_ttl_secs() -> u64 {
    30
}
fn default_kube_deleted_pod_retention_secs() -> u64 {
    600
}
fn default_kube_error_retry_secs() -> u64 {
    10
}
fn default_kube_metadata_wait_ms() -> u64 {
    2000
}

impl RawKubernetes {
    /// The API client's settings; `None` when there is no API to ask.
    pub fn validate(&self) -> Result<Option<KubeSettings>, ConfigError> {
        self.validate_with(Path::new(crate::kube::SERVICE_ACCOUNT_DIR))
    }

    /// [`validate`](Self::validate) with the service account mounted at `account_dir`.
    fn validate_with(&self, account_dir: &Path) -> Result<Option<KubeSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let api_url = match (self.api_url.trim(), &self.in_cluster_from_env) {
            ("", None) => return Ok(None),
            ("", Some(host_port)) => format!("https://{host_port}"),
            (url, _) => url.to_owned(),
        };
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) || api_url.contains('?') {
            return Err(invalid(
                "kubernetes.api_url",
                format!("`{api_url}` is not an http:// or https:// base URL"),
            ));
        }
        let file = |key: &'static str, given: &str, default: &str| -> Result<Option<PathBuf>, ConfigError> {
            if given.is_empty() {
                let path = account_dir.join(default);
                return Ok(path.is_file().then_some(path));
            }
            let path = PathBuf::from(given);
            std::fs::metadata(&path).map_err(|e| invalid(key, format!("{given}: {e}")))?;
            Ok(Some(path))
        };
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        let secs = |key, v| positive(key, v).map(Duration::from_secs);
        let cache = CacheSettings {
            capacity: NonZeroUsize::new(self.cache_max_pods)
                .ok_or_else(|| invalid("kubernetes.cache_max_pods", "must be at least 1"))?,
            ttl: secs("kubernetes.cache_ttl_secs", self.cache_ttl_secs)?,
            negative_ttl: secs("kubernetes.negative_ttl_secs", self.negative_ttl_secs)?,
            deleted_retention: Duration::from_secs(self.deleted_pod_retention_secs),
            error_retry: secs("kubernetes.error_retry_secs", self.error_retry_secs)?,
        };
        if self.max_concurrent_requests == 0 {
            return Err(invalid("kubernetes.max_concurrent_requests", "must be at least 1"));
        }
        Ok(Some(KubeSettings {
            api_url: api_url.trim_end_matches('/').to_owned(),
            token_file: file("kubernetes.token_file", &self.token_file, "token")?,
            token_reload: secs("kubernetes.token_reload_secs", self.token_reload_secs)?,
            ca_file: file("kubernetes.ca_file", &self.ca_file, "ca.crt")?,
            insecure_skip_verify: self.insecure_skip_verify,
            request_timeout: Duration::from_millis(positive(
                "kubernetes.request_timeout_ms",
                self.request_timeout_ms,
            )?),
            max_concurrent_requests: self.max_concurrent_requests,
            cache,
            metadata_wait: Duration::from_millis(self.metadata_wait_ms),
        }))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// Drop the records of containers that are neither apps, the controller nor the router,
    /// as the old fluentd plugin did; `false` ships them to the `logs` topic too (the Deis
    /// logger files a record without `labels.app` under an empty app name).
    #[serde(default = "default_true")]
    pub drop_other: bool,
    /// Drop the router's lines that are not access lines (nginx's error and notice lines),
    /// as the old plugin did; `false` ships them to the `logs` topic.
    #[serde(default = "default_true")]
    pub drop_router_non_access_lines: bool,
    /// Read only containers in these namespaces (globs: `*`, `?`; whole names). Empty: all.
    #[serde(default)]
    pub include_namespaces: Vec<String>,
    /// Never read containers in these namespaces. Exclusion wins over inclusion.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Read only containers of these pods (globs). Empty: all.
    #[serde(default)]
    pub include_pods: Vec<String>,
    /// Never read containers of these pods.
    #[serde(default)]
    pub exclude_pods: Vec<String>,
    /// Read only containers with these names (globs). Empty: all.
    #[serde(default)]
    pub include_containers: Vec<String>,
    /// Never read containers with these names.
    #[serde(default)]
    pub exclude_containers: Vec<String>,
    /// Publish app and controller records to the `logs` topic. Env: `SEND_LOGS_TO_NSQ`
    /// (`false` turns it off, as for the old fluentd).
    #[serde(default = "default_true")]
    pub send_logs: bool,
    /// Publish router points to the `metrics` topic. Env: `SEND_METRICS_TO_NSQ`.
    #[serde(default = "default_true")]
    pub send_metrics: bool,
    /// Where the agent's host, kubelet and nsqd collectors (`[collect]`) write: `nsq` (line
    /// protocol on the `metrics` topic, to InfluxDB through the consumers), `influx`
    /// (directly, with `[influx]`), or `off`.
    #[serde(default = "default_collect_to")]
    pub collect: String,
    /// Seconds a read may wait for NSQ's acknowledgement before `/healthz` fails (publishing is
    /// stuck: nsqd down or refusing).
    #[serde(default = "default_publish_stall_secs")]
    pub publish_stall_secs: u64,
    /// Files whose names are no container's (`logmill run` over plain files, an operator's
    /// own router log): `[[agent.sources]]` tables with a path pattern (`*`, `?`, `[…]`,
    /// matched against the whole path) and the namespace, pod and container they stand for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<RawSource>,
}

/// One `[[agent.sources]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// A path pattern, e.g. `/var/log/nginx/access*.log`.
    pub path: String,
    pub namespace: String,
    pub pod: String,
    /// The container's name: `deis-router` makes the lines router access lines.
    pub container: String,
}

fn default_collect_to() -> String {
    "nsq".into()
}
fn default_publish_stall_secs() -> u64 {
    60
}

/// `[tail]`: how the agent follows files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTail {
    /// Path globs of the files to follow (`*` and `?` per path component); symlinks are
    /// followed. Flag: `--paths`.
    #[serde(default = "default_tail_paths")]
    pub paths: Vec<String>,
    /// Where the checkpoints live. Flag: `--state-dir`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where files already present at the very first start (no checkpoint, no fluentd
    /// pos_file) are read from: `beginning` (nothing lost) or `end` (nothing old sent).
    #[serde(default = "default_start_at")]
    pub start_at: String,
    /// fluentd's pos_file, imported on the first start only (when it exists), so that nothing
    /// is sent twice or skipped when logmill replaces fluentd.
    #[serde(default = "default_fluentd_pos_file")]
    pub fluentd_pos_file: PathBuf,
    /// Files found without a checkpoint whose last write is older than this many seconds are
    /// followed from their end; 0: off.
    #[serde(default)]
    pub ignore_older_secs: u64,
    /// How lines are wrapped: `auto` (decided per file from its first line), `docker`, `cri`
    /// or `raw`.
    #[serde(default = "default_tail_format")]
    pub format: String,
    /// Longest record kept whole; longer ones are cut to this, flagged and counted.
    #[serde(default = "default_tail_max_line_bytes")]
    pub max_line_bytes: usize,
    /// One read, and each file's share before the next file's turn.
    #[serde(default = "default_read_chunk_bytes")]
    pub read_chunk_bytes: usize,
    /// Milliseconds between read passes (and rescans when polling).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Seconds between full rescans of the paths, the safety net under inotify.
    #[serde(default = "default_rescan_interval_secs")]
    pub rescan_interval_secs: u64,
    /// Milliseconds between two checkpoint writes (also written on shutdown).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Bytes read and not yet acknowledged by NSQ at which reading pauses (bounded memory
    /// while NSQ is slow or down).
    #[serde(default = "default_max_unacked_bytes")]
    pub max_unacked_bytes: usize,
    /// Seconds a rotated or deleted file read to its end stays open for late writes.
    #[serde(default = "default_rotate_wait_secs")]
    pub rotate_wait_secs: u64,
    /// `inotify` (with polling as the safety net, and as the fallback when the kernel's
    /// limits are reached) or `poll`.
    #[serde(default = "default_watch")]
    pub watch: String,
}

impl Default for RawTail {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [tail] must parse: {e}"))
    }
}

fn default_tail_paths() -> Vec<String> {
    vec!["/var/log/containers/*.log".into()]
}
fn default_state_dir() -> PathBuf {
    "/var/lib/logmill".into()
}
fn default_start_at() -> String {
    "beginning".into()
}
fn default_fluentd_pos_file() -> PathBuf {
    "/var/log/containers.log.pos".into()
}
fn default_tail_format() -> String {
    "auto".into()
}
fn default_tail_max_line_bytes() -> usize {
    256 * 1024
}
fn default_read_chunk_bytes() -> usize {
    64 * 1024
}
fn default_poll_interval_ms() -> u64 {
    250
}
fn default_rescan_interval_secs() -> u64 {
    10
}
fn default_checkpoint_interval_ms() -> u64 {
    1000
}
fn default_max_unacked_bytes() -> usize {
    16 << 20
}
fn default_rotate_wait_secs() -> u64 {
    5
}
fn default_watch() -> String {
    "inotify".into()
}

impl RawTail {
    /// The engine's settings (the agent adds its filters as `exclude`).
    pub fn validate(&self) -> Result<TailSettings, ConfigError> {
        if self.paths.is_empty() {
            return Err(invalid("tail.paths", "at least one path glob"));
        }
        let paths = self.paths.iter().map(|p| absolute(p)).collect();
        let mut s = TailSettings::new(paths, absolute(&self.state_dir.to_string_lossy()).into());
        s.start_at = match self.start_at.as_str() {
            "beginning" => StartAt::Beginning,
            "end" => StartAt::End,
            other => return Err(invalid("tail.start_at", format!("`{other}`: beginning or end"))),
        };
        s.fluentd_pos_file =
            (!self.fluentd_pos_file.as_os_str().is_empty()).then(|| self.fluentd_pos_file.clone());
        s.ignore_older = (self.ignore_older_secs > 0).then(|| Duration::from_secs(self.ignore_older_secs));
        s.wrapping = match self.format.as_str() {
            "auto" => None,
            "docker" => Some(Wrapping::Docker),
            "cri" => Some(Wrapping::Cri),
            "raw" => Some(Wrapping::Raw),
            other => return Err(invalid("tail.format", format!("`{other}`: auto, docker, cri or raw"))),
        };
        if self.max_line_bytes < 1024 {
            return Err(invalid("tail.max_line_bytes", "must be at least 1024"));
        }
        s.max_line_bytes = self.max_line_bytes;
        if self.read_chunk_bytes < 4096 {
            return Err(invalid("tail.read_chunk_bytes", "must be at least 4096"));
        }
        s.read_chunk_bytes = self.read_chunk_bytes;
        for (key, v) in [
            ("tail.poll_interval_ms", self.poll_interval_ms),
            ("tail.rescan_interval_secs", self.rescan_interval_secs),
            ("tail.checkpoint_interval_ms", self.checkpoint_interval_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        s.poll_interval = Duration::from_millis(self.poll_interval_ms);
        s.rescan_interval = Duration::from_secs(self.rescan_interval_secs);
        s.checkpoint_interval = Duration::from_millis(self.checkpoint_interval_ms);
        if self.max_unacked_bytes < self.read_chunk_bytes {
            return Err(invalid("tail.max_unacked_bytes", "must be at least read_chunk_bytes"));
        }
        s.max_unacked_bytes = self.max_unacked_bytes;
        s.rotate_wait = Duration::from_secs(self.rotate_wait_secs);
        s.watch = match self.watch.as_str() {
            "inotify" => WatchMode::Notify,
            "poll" => WatchMode::Poll,
            other => return Err(invalid("tail.watch", format!("`{other}`: inotify or poll"))),
        };
        Ok(s)
    }
}

impl Default for RawAgent {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [agent] must parse: {e}"))
    }
}

impl RawAgent {
    pub fn validate(&self) -> Result<AgentRules, ConfigError> {
        let globs = |key: &'static str, list: &[String]| {
            Globs::new(list).map_err(|e| invalid(key, format!("{list:?}: {e}")))
        };
        let collect = match self.collect.as_str() {
            "nsq" => CollectTo::Nsq,
            "influx" => CollectTo::Influx,
            "off" => CollectTo::Off,
            other => return Err(invalid("agent.collect", format!("`{other}`: nsq, influx or off"))),
        };
        if self.publish_stall_secs == 0 {
            return Err(invalid("agent.publish_stall_secs", "must be greater than 0"));
        }
        let mut declared = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            let path = crate::glob::Glob::new(&absolute(&s.path))
                .map_err(|e| invalid("agent.sources.path", e.to_string()))?;
            if [&s.namespace, &s.pod, &s.container].iter().any(|v| v.is_empty()) {
                return Err(invalid(
                    "agent.sources",
                    format!("`{}`: namespace, pod and container are needed", s.path),
                ));
            }
            let container = crate::kube::ContainerRef {
                pod: s.pod.clone(),
                namespace: s.namespace.clone(),
                container: s.container.clone(),
                container_id: String::new(),
                pod_uid: None,
                cut: false,
            };
            declared.push(crate::agent::source::DeclaredSource { path, container });
        }
        Ok(AgentRules {
            send_logs: self.send_logs,
            send_metrics: self.send_metrics,
            collect,
            publish_stall: Duration::from_secs(self.publish_stall_secs),
            sources: crate::agent::source::Sources { declared },
            drop_other: self.drop_other,
            drop_router_non_access_lines: self.drop_router_non_access_lines,
            filters: Filters {
                include_namespaces: globs("agent.include_namespaces", &self.include_namespaces)?,
                exclude_namespaces: globs("agent.exclude_namespaces", &self.exclude_namespaces)?,
                include_pods: globs("agent.include_pods", &self.include_pods)?,
                exclude_pods: globs("agent.exclude_pods", &self.exclude_pods)?,
                include_containers: globs("agent.include_containers", &self.include_containers)?,
                exclude_containers: globs("agent.exclude_containers", &self.exclude_containers)?,
            },
        })
    }
}

/// One `[[multiline]]` rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMultiline {
    /// Regex on container names the rule applies to (unanchored, as a definition's
    /// `applies_to.containers`); the first rule that matches a container is its rule.
    pub containers: String,
    /// Regex the first line of a record matches (e.g. `^\d{4}-\d{2}-\d{2} ` for lines that
    /// begin with a date); other lines are appended to the record before them.
    pub start: String,
    /// Milliseconds a record is held, from its first line, before it is emitted even though
    /// no next start line came.
    #[serde(default = "default_multiline_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_multiline_timeout_ms() -> u64 {
    1000
}

fn validate_multiline(rules: &[RawMultiline]) -> Result<Vec<MultilineRule>, ConfigError> {
    rules
        .iter()
        .map(|r| {
            let containers = regex::Regex::new(&r.containers)
                .map_err(|e| invalid("multiline.containers", format!("`{}`: {e}", r.containers)))?;
            let start = regex::bytes::Regex::new(&r.start)
                .map_err(|e| invalid("multiline.start", format!("`{}`: {e}", r.start)))?;
            if r.timeout_ms == 0 {
                return Err(invalid("multiline.timeout_ms", "must be greater than 0"));
            }
            Ok(MultilineRule { containers, start, timeout: Duration::from_millis(r.timeout_ms) })
        })
        .collect()
}

/// `[collect]`: the host, kubelet and nsqd collectors (Telegraf's inputs, same series).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollect {
    /// Milliseconds between two collection cycles (Telegraf's `interval`, 10 s).
    #[serde(default = "default_collect_interval_ms")]
    pub interval_ms: u64,
    /// Start cycles on multiples of the interval on the clock (:00, :10, :20 with 10 s), as
    /// Telegraf's `round_interval`; every point of a cycle carries that tick's time.
    #[serde(default = "default_true")]
    pub round_interval: bool,
    /// `collect --once`: milliseconds between the two samples of the inputs that report rates
    /// (cpu, diskio).
    #[serde(default = "default_once_sample_gap_ms")]
    pub once_sample_gap_ms: u64,
    /// Host inputs to run, by Telegraf's names: cpu, mem, swap, disk, diskio, net, netstat,
    /// system, processes, kernel. Empty: none (the kubelet and nsqd collectors only).
    #[serde(default = "default_collect_inputs")]
    pub inputs: Vec<String>,
    /// The host's `/proc` (in a pod: where it is mounted, e.g. `/rootfs/proc`). Env: `HOST_PROC`.
    #[serde(default = "default_host_proc")]
    pub host_proc: String,
    /// The host's `/sys`. Env: `HOST_SYS`.
    #[serde(default = "default_host_sys")]
    pub host_sys: String,
    /// Where the host's `/` is mounted (e.g. `/rootfs`): mount points are measured under it
    /// and tagged without it. Empty: none. Env: `HOST_MOUNT_PREFIX`.
    #[serde(default)]
    pub host_mount_prefix: String,
    /// The host's `/var`, for `run/utmp` (the `system` input's user counts). Env: `HOST_VAR`.
    #[serde(default = "default_host_var")]
    pub host_var: String,
    /// cpu: a point per CPU (Telegraf's `percpu`).
    #[serde(default = "default_true")]
    pub cpu_per_cpu: bool,
    /// cpu: the `cpu-total` point (`totalcpu`).
    #[serde(default = "default_true")]
    pub cpu_total: bool,
    /// cpu: also the `time_*` fields, seconds since boot (`collect_cpu_time`).
    #[serde(default)]
    pub cpu_collect_time: bool,
    /// cpu: also `usage_active` (and `time_active`) (`report_active`).
    #[serde(default)]
    pub cpu_report_active: bool,
    /// disk: only these mount points (`mount_points`); empty: all.
    #[serde(default)]
    pub disk_mount_points: Vec<String>,
    /// disk: filesystem types not reported (`ignore_fs`); autofs never is.
    #[serde(default = "default_disk_ignore_fs")]
    pub disk_ignore_fs: Vec<String>,
    /// disk: mounts with one of these options are not reported (`ignore_mount_opts`;
    /// `bind` for bind mounts).
    #[serde(default)]
    pub disk_ignore_mount_opts: Vec<String>,
    /// diskio: devices to report, globs (`devices`, e.g. `["sd*", "nvme*"]`); empty: every
    /// device with activity.
    #[serde(default)]
    pub diskio_devices: Vec<String>,
    /// net: interfaces to report, globs, whatever their state (`interfaces`); empty: every
    /// interface that is up and not loopback.
    #[serde(default)]
    pub net_interfaces: Vec<String>,
    #[serde(default)]
    pub kubelet: RawKubelet,
    #[serde(default)]
    pub nsqd: RawNsqdStats,
}

impl Default for RawCollect {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [collect] must parse: {e}"))
    }
}

/// `[collect.kubelet]`: the kubelet summary collector (Telegraf's `inputs.kubernetes`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubelet {
    /// The kubelet's base URL: `https://NODE_IP:10250` (authenticated), or the read-only
    /// `http://NODE_IP:10255`. Empty: the collector is off.
    #[serde(default)]
    pub url: String,
    /// Service-account token sent as `Authorization: Bearer` (over HTTPS only), read on every
    /// request; empty: none.
    #[serde(default = "default_kubelet_token_file")]
    pub token_file: String,
    /// PEM CA that signed the kubelet's certificate (the cluster CA); the only roots trusted.
    /// Empty: the built-in web roots.
    #[serde(default = "default_kubelet_ca_file")]
    pub ca_file: String,
    /// Accept any certificate: for kubelets serving self-signed certificates. Must be said.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Milliseconds a request may take (Telegraf's `response_timeout`, 5 s).
    #[serde(default = "default_kubelet_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for RawKubelet {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [collect.kubelet] must parse: {e}"))
    }
}

/// `[collect.nsqd]`: the nsqd statistics collector (Telegraf's `inputs.nsq`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNsqdStats {
    /// nsqd HTTP addresses (`host:4151` or `http://host:4151`) whose `/stats` to read; empty:
    /// the collector is off.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Milliseconds a request may take (Telegraf's 4 s).
    #[serde(default = "default_nsqd_stats_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for RawNsqdStats {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [collect.nsqd] must parse: {e}"))
    }
}

fn default_collect_interval_ms() -> u64 {
    10_000
}
fn default_once_sample_gap_ms() -> u64 {
    1_000
}
fn default_collect_inputs() -> Vec<String> {
    HostInput::ALL.iter().map(|i| i.name().to_owned()).collect()
}
fn default_host_proc() -> String {
    "/proc".into()
}
fn default_host_sys() -> String {
    "/sys".into()
}
fn default_host_var() -> String {
    "/var".into()
}
fn default_disk_ignore_fs() -> Vec<String> {
    crate::host::disk::DEFAULT_IGNORE_FS.iter().map(|s| (*s).to_owned()).collect()
}
fn default_kubelet_token_file() -> String {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}
fn default_kubelet_ca_file() -> String {
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()
}
fn default_kubelet_timeout_ms() -> u64 {
    5_000
}
fn default_nsqd_stats_timeout_ms() -> u64 {
    4_000
}

impl RawCollect {
    /// The collectors' settings, every value checked.
    pub fn validate(&self) -> Result<CollectSettings, ConfigError> {
        if self.interval_ms < 10 {
            return Err(invalid("collect.interval_ms", "must be at least 10"));
        }
        let mut inputs = Vec::new();
        for name in &self.inputs {
            let input = HostInput::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = HostInput::ALL.iter().map(|i| i.name()).collect();
                invalid("collect.inputs", format!("unknown input `{name}` (known: {})", known.join(", ")))
            })?;
            if !inputs.contains(&input) {
                inputs.push(input);
            }
        }
        for (key, path) in [
            ("collect.host_proc", &self.host_proc),
            ("collect.host_sys", &self.host_sys),
            ("collect.host_var", &self.host_var),
        ] {
            if path.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let globs = |key: &'static str, patterns: &[String]| {
            patterns
                .iter()
                .map(|p| Glob::new(p).map_err(|e| invalid(key, e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        };
        let kubelet = if self.kubelet.url.trim().is_empty() {
            None
        } else {
            let k = &self.kubelet;
            let url = reqwest::Url::parse(k.url.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    invalid("collect.kubelet.url", format!("`{}` is not an http(s):// URL", k.url))
                })?;
            if k.timeout_ms == 0 {
                return Err(invalid("collect.kubelet.timeout_ms", "must be greater than 0"));
            }
            let path = |p: &str| Some(PathBuf::from(p)).filter(|_| !p.is_empty());
            Some(KubeletSettings {
                url,
                token_file: path(&k.token_file),
                ca_file: path(&k.ca_file),
                insecure_skip_verify: k.insecure_skip_verify,
                timeout: Duration::from_millis(k.timeout_ms),
            })
        };
        let nsq = if self.nsqd.endpoints.is_empty() {
            None
        } else {
            if self.nsqd.timeout_ms == 0 {
                return Err(invalid("collect.nsqd.timeout_ms", "must be greater than 0"));
            }
            let endpoints = self
                .nsqd
                .endpoints
                .iter()
                .map(|e| {
                    crate::nsq::http::base_url(e)
                        .map_err(|e| invalid("collect.nsqd.endpoints", e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(NsqStatsSettings { endpoints, timeout: Duration::from_millis(self.nsqd.timeout_ms) })
        };
        Ok(CollectSettings {
            interval: Duration::from_millis(self.interval_ms),
            round_interval: self.round_interval,
            once_sample_gap: Duration::from_millis(self.once_sample_gap_ms),
            inputs,
            roots: Roots {
                proc: PathBuf::from(&self.host_proc),
                sys: PathBuf::from(&self.host_sys),
                mount_prefix: PathBuf::from(&self.host_mount_prefix),
                var: PathBuf::from(&self.host_var),
            },
            cpu: CpuOptions {
                per_cpu: self.cpu_per_cpu,
                total: self.cpu_total,
                collect_time: self.cpu_collect_time,
                report_active: self.cpu_report_active,
            },
            disk: DiskOptions {
                mount_points: self.disk_mount_points.clone(),
                ignore_fs: self.disk_ignore_fs.clone(),
                ignore_mount_opts: self.disk_ignore_mount_opts.clone(),
            },
            diskio_devices: globs("collect.diskio_devices", &self.diskio_devices)?,
            net_interfaces: globs("collect.net_interfaces", &self.net_interfaces)?,
            kubelet,
            nsq,
        })
    }
}

/// `logmill consume`: how messages are held, aggregated and acknowledged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsume {
    /// This replica's name: the `consumer` tag of the points it aggregates, so that replicas
    /// never write the same key. Must differ between replicas. Default: the machine's host
    /// name (a pod's name in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Write the `deis_router_*` points of the `metrics` topic to InfluxDB as they come (the
    /// old dashboards read them); false: only aggregate them into `router_requests`.
    #[serde(default = "default_true")]
    pub write_router_points: bool,
    /// A regex finding an app log line's level when the line is not JSON with a `level`,
    /// `severity`, `lvl` or `loglevel` key: its `level` group, else its first group that
    /// matched. Levels are folded into trace, debug, info, warn, error, fatal. Empty: JSON only.
    #[serde(default)]
    pub level_regex: String,
    /// Append invalid input (lines that are not line protocol, `logs` messages that are not
    /// JSON) to this file, one JSON object per line. Empty: none.
    #[serde(default)]
    pub dead_letter_file: String,
    /// Publish invalid input to this NSQ topic (through `nsq.nsqd_tcp_addresses`), one message
    /// per message that had some. Empty: none.
    #[serde(default)]
    pub dead_letter_topic: String,
    /// Flush every window early when a topic's messages held in open windows reach this
    /// percentage of what nsqd lets be in flight (`nsq.max_in_flight`, capped by each nsqd's
    /// `--max-rdy-count`); the rest of the room takes what arrives while the flush is written.
    #[serde(default = "default_high_water_percent")]
    pub high_water_percent: u8,
    /// Values kept so that held messages can be taken back out of open windows (about two per
    /// access line, 8 bytes each); past this, every window is flushed early.
    #[serde(default = "default_max_held_values")]
    pub max_held_values: usize,
    /// Longest a message in an open window is held before every window is flushed early (at
    /// most half of nsqd's `--max-msg-timeout` is used).
    #[serde(default = "default_max_hold_secs")]
    pub max_hold_secs: u64,
    /// When InfluxDB has answered no submission for this long, held messages that are only in
    /// open windows are taken out of them and requeued.
    #[serde(default = "default_influx_stall_secs")]
    pub influx_stall_secs: u64,
    /// The REQ delay of those requeues (the consumer also backs off).
    #[serde(default = "default_requeue_delay_ms")]
    pub requeue_delay_ms: u64,
    /// With no message for this long (while the consumer would take one), windows close by the
    /// wall clock instead of event time.
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
}

impl Default for RawConsume {
    fn default() -> Self {
        // The defaults of every field are those of an empty table.
        toml::from_str("").unwrap_or_else(|e| unreachable!("empty [consume] must parse: {e}"))
    }
}

fn default_high_water_percent() -> u8 {
    50
}
fn default_max_held_values() -> usize {
    // 16 MiB of f64s: about half a million access lines held.
    2 << 20
}
fn default_max_hold_secs() -> u64 {
    60
}
fn default_influx_stall_secs() -> u64 {
    60
}
fn default_requeue_delay_ms() -> u64 {
    5000
}
fn default_idle_flush_ms() -> u64 {
    // What a held message waits after the input stops, most of a short backlog's drain at
    // 1 s (benches/consume: a third of the router run). Live windows still wait for their
    // lateness; only windows already due close sooner.
    250
}

/// `logmill consume`'s validated settings.
#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    /// The `consumer` tag.
    pub instance: String,
    pub core: CoreSettings,
    pub dead_letter_file: Option<PathBuf>,
    pub dead_letter_topic: Option<String>,
}

impl RawConsume {
    fn validate(
        &self,
        aggregate: &AggregateSettings,
        host: &str,
        telemetry_interval: Option<Duration>,
    ) -> Result<ConsumeSettings, ConfigError> {
        let instance = match &self.instance {
            Some(i) => i.clone(),
            None => machine_host_name(),
        };
        if instance.is_empty() || instance.contains(['\n', '\r']) {
            return Err(invalid("consume.instance", "must be a non-empty name"));
        }
        if !(1..=100).contains(&self.high_water_percent) {
            return Err(invalid("consume.high_water_percent", "must be between 1 and 100"));
        }
        let levels = match self.level_regex.as_str() {
            "" => None,
            r => Some(regex::Regex::new(r).map_err(|e| invalid("consume.level_regex", e.to_string()))?),
        };
        let dead_letter_topic = Some(self.dead_letter_topic.clone()).filter(|t| !t.is_empty());
        if let Some(t) = &dead_letter_topic {
            if !valid_nsq_name(t) {
                return Err(invalid(
                    "consume.dead_letter_topic",
                    format!("`{t}` is not a valid NSQ topic name"),
                ));
            }
        }
        let positive = |key: &'static str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        let core = CoreSettings {
            derive: DeriveSettings {
                window_ns: aggregate.window_ns,
                write_router_points: self.write_router_points,
                levels: LevelDetector::new(levels),
            },
            aggregate: AggregateSettings { consumer: instance.clone(), ..aggregate.clone() },
            high_water: f64::from(self.high_water_percent) / 100.0,
            max_held_values: positive("consume.max_held_values", self.max_held_values as u64)? as usize,
            max_hold: Duration::from_secs(positive("consume.max_hold_secs", self.max_hold_secs)?),
            influx_stall: Duration::from_secs(positive("consume.influx_stall_secs", self.influx_stall_secs)?),
            requeue_delay: Duration::from_millis(self.requeue_delay_ms),
            idle_flush: Duration::from_millis(positive("consume.idle_flush_ms", self.idle_flush_ms)?),
            telemetry_interval,
            telemetry_host: host.to_owned(),
            // Set by the role from `nsq.drain_timeout_ms`, the time nsqd's connections give.
            shutdown_grace: Duration::ZERO,
        };
        Ok(ConsumeSettings {
            instance,
            core,
            dead_letter_file: Some(PathBuf::from(&self.dead_letter_file))
                .filter(|_| !self.dead_letter_file.is_empty()),
            dead_letter_topic,
        })
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) host: String,
    pub(crate) max_line_bytes: usize,
    pub parsers: Registry,
    pub aggregate: AggregateSettings,
    pub telemetry_listen: Option<SocketAddr>,
    pub nsq: NsqSettings,
    /// The InfluxDB writer's settings, when `influx.urls` is set.
    pub(crate) influx: Option<InfluxSettings>,
    /// The Kubernetes API, when there is one to ask.
    pub kubernetes: Option<KubeSettings>,
    /// The agent's classification switches and include/exclude filters.
    pub agent: AgentRules,
    /// Multiline merging rules, first match wins.
    pub multiline: Vec<MultilineRule>,
    /// The host, kubelet and nsqd collectors.
    pub collect: CollectSettings,
    /// How the agent follows files.
    pub tail: TailSettings,
    /// How often the `logmill_*` points are written; `None`: never.
    pub telemetry_interval: Option<Duration>,
    /// `logmill consume`'s settings.
    pub consume: ConsumeSettings,
}

impl RawConfig {
    /// Reads a file; `None` gives the documented defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Self::from_toml("(defaults)", "") };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::from_toml(&shown, &text)
    }

    pub(crate) fn from_toml(path: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Toml { path: path.to_owned(), source })
    }

    /// Applies the old stack's environment variables over the file's values.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let list = |v: String| {
            v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect::<Vec<_>>()
        };
        if self.host.is_none() {
            self.host = env("NODE_NAME");
        }
        if let Some(v) = env("NSQ_LOG_TOPIC") {
            self.nsq.log_topic = v;
        }
        if let Some(v) = env("NSQ_METRIC_TOPIC") {
            self.nsq.metric_topic = v;
        }
        // Hephy's fluentd reads a list; Deis's read the service variables Kubernetes injects.
        if let Some(v) = env("NSQD_TCP_ADDRESSES").or_else(|| env("DEIS_NSQD_ADDRS")) {
            self.nsq.nsqd_tcp_addresses = list(v);
        } else if let Some(host) = env("DEIS_NSQD_SERVICE_HOST") {
            let port = env("DEIS_NSQD_SERVICE_PORT_TRANSPORT").unwrap_or_else(|| "4150".into());
            if port.parse::<u16>().is_err() {
                return Err(ConfigError::Env {
                    var: "DEIS_NSQD_SERVICE_PORT_TRANSPORT",
                    message: format!("`{port}` is not a port"),
                });
            }
            self.nsq.nsqd_tcp_addresses = vec![format!("{host}:{port}")];
        }
        if let Some(v) = env("NSQLOOKUPD_HTTP_ADDRESSES") {
            self.nsq.lookupd_http_addresses = list(v);
        }
        if let Some(v) = env("NSQD_HTTP_ADDRESSES") {
            self.nsq.nsqd_http_addresses = list(v);
        }
        if let Some(v) = env("INFLUXDB_URLS").or_else(|| env("INFLUXDB_URL")) {
            self.influx.urls = list(v);
        }
        if let Some(v) = env("INFLUXDB_DATABASE") {
            self.influx.database = v;
        }
        if let Some(v) = env("INFLUXDB_USERNAME") {
            self.influx.username = v;
        }
        // Telegraf's (gopsutil's) variables for a host mounted into a pod.
        for (var, slot) in [
            ("HOST_PROC", &mut self.collect.host_proc),
            ("HOST_SYS", &mut self.collect.host_sys),
            ("HOST_MOUNT_PREFIX", &mut self.collect.host_mount_prefix),
            ("HOST_VAR", &mut self.collect.host_var),
        ] {
            if let Some(v) = env(var) {
                *slot = v;
            }
        }
        // The old fluentd's switches: any value but `false` leaves a topic on.
        for (var, slot) in [
            ("SEND_LOGS_TO_NSQ", &mut self.agent.send_logs),
            ("SEND_METRICS_TO_NSQ", &mut self.agent.send_metrics),
        ] {
            if let Some(v) = env(var) {
                *slot = !v.trim().eq_ignore_ascii_case("false");
            }
        }
        self.nsq.auth_secret_from_env = env("NSQ_AUTH_SECRET");
        self.influx.password_from_env = env("INFLUXDB_PASSWORD");
        self.influx.token_from_env = env("INFLUXDB_TOKEN");
        // client-go's in-cluster rule: both variables, or not in a cluster.
        if let (Some(host), Some(port)) = (env("KUBERNETES_SERVICE_HOST"), env("KUBERNETES_SERVICE_PORT")) {
            if port.parse::<u16>().is_err() {
                return Err(ConfigError::Env {
                    var: "KUBERNETES_SERVICE_PORT",
                    message: format!("`{port}` is not a port"),
                });
            }
            // An IPv6 service address needs brackets in a URL.
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            self.kubernetes.in_cluster_from_env = Some(format!("{host}:{port}"));
        }
        Ok(())
    }

    /// Checks every value once and builds the settings (parsers loaded, regexes compiled).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let host = match &self.host {
            Some(h) => h.clone(),
            None => machine_host_name(),
        };
        if host.is_empty() || host.contains(['\n', '\r']) {
            return Err(invalid("host", "must be a non-empty node name"));
        }
        if self.max_line_bytes < 1024 {
            return Err(invalid("max_line_bytes", "must be at least 1024"));
        }
        let a = &self.aggregate;
        if a.window_secs == 0 || a.window_secs > 3600 {
            return Err(invalid("aggregate.window_secs", "must be between 1 and 3600"));
        }
        if a.lateness_secs > 86_400 {
            return Err(invalid("aggregate.lateness_secs", "must be at most 86400"));
        }
        let max_series = NonZeroUsize::new(a.max_series)
            .ok_or_else(|| invalid("aggregate.max_series", "must be at least 1"))?;
        let telemetry_listen = match self.telemetry.listen.trim() {
            "" => None,
            addr => Some(addr.parse().map_err(|e| invalid("telemetry.listen", format!("`{addr}`: {e}")))?),
        };
        let nsq = self.nsq.validate(&host)?;
        let aggregate = AggregateSettings {
            window_ns: a.window_secs as i64 * 1_000_000_000,
            lateness_ns: a.lateness_secs as i64 * 1_000_000_000,
            max_series,
            consumer: "local".into(),
            sequence_base: 0,
        };
        let telemetry_interval =
            (self.telemetry.interval_secs > 0).then(|| Duration::from_secs(self.telemetry.interval_secs));
        let consume = self.consume.validate(&aggregate, &host, telemetry_interval)?;
        Ok(Settings {
            host,
            max_line_bytes: self.max_line_bytes,
            parsers: Registry::load(self.parsers.dir.as_deref())?,
            aggregate,
            telemetry_listen,
            nsq,
            influx: self.influx.validate()?,
            collect: self.collect.validate()?,
            kubernetes: self.kubernetes.validate()?,
            agent: self.agent.validate()?,
            multiline: validate_multiline(&self.multiline)?,
            tail: self.tail.validate()?,
            telemetry_interval,
            consume,
        })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A relative path taken from the current directory (a repository's config tailing its own
/// files); an absolute one as it is.
fn absolute(path: &str) -> String {
    if Path::new(path).is_absolute() {
        return path.to_owned();
    }
    match std::env::current_dir() {
        Ok(dir) => dir.join(path).to_string_lossy().into_owned(),
        Err(_) => path.to_owned(),
    }
}

/// NSQ's rule for topic and channel names: `^[.a-zA-Z0-9_-]+(#ephemeral)?$`, 1 to 64 bytes.
pub(crate) fn valid_nsq_name(name: &str) -> bool {
    crate::nsq::protocol::valid_name(name)
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_the_old_stacks_names() {
        let raw = RawConfig::load(None).unwrap();
        let s = raw.validate().unwrap();
        assert_eq!(s.nsq.log_topic, "logs");
        assert_eq!(s.nsq.metric_topic, "metrics");
        assert_eq!(s.nsq.consumer.channel, "logmill");
        assert!(s.influx.is_none(), "no URL, no writer");
        assert_eq!(s.aggregate.window_ns, 10_000_000_000);
        assert_eq!(s.max_line_bytes, 1 << 20);
        assert!(s.parsers.get("deis-router").is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = RawConfig::from_toml("x.toml", "[aggregate]\nwindow_sec = 5\n").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("window_sec"), "{e}");
        let e = RawConfig::from_toml("x.toml", "[aggregate]\nwindow_secs = \"5\"\n").unwrap_err().to_string();
        assert!(e.contains("window_secs"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let raw = RawConfig::from_toml("x", "[aggregate]\nwindow_secs = 0\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("aggregate.window_secs"));
        let raw = RawConfig::from_toml("x", "[nsq]\nchannel = \"consumer\"\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("nsq.channel"));
        let raw = RawConfig::from_toml("x", "[nsq]\nlog_topic = \"a b\"\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("a b"));
        let raw = RawConfig::from_toml("x", "[telemetry]\nlisten = \"nope\"\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("telemetry.listen"));
    }

    #[test]
    fn old_stack_environment() {
        let mut raw =
            RawConfig::from_toml("x", "host = \"from-file\"\n[nsq]\nlog_topic = \"file-logs\"\n").unwrap();
        let env = |k: &str| match k {
            "NSQ_LOG_TOPIC" => Some("applogs".to_owned()),
            "NSQ_METRIC_TOPIC" => Some("m".to_owned()),
            "DEIS_NSQD_SERVICE_HOST" => Some("10.0.0.9".to_owned()),
            "DEIS_NSQD_SERVICE_PORT_TRANSPORT" => Some("4150".to_owned()),
            "NODE_NAME" => Some("node-7".to_owned()),
            "INFLUXDB_URLS" => Some("http://a:8086, http://b:8086".to_owned()),
            _ => None,
        };
        raw.apply_env(env).unwrap();
        let s = raw.validate().unwrap();
        assert_eq!(s.nsq.log_topic, "applogs", "the environment overrides the file");
        assert_eq!(s.nsq.metric_topic, "m");
        assert_eq!(s.nsq.nsqd_tcp_addresses, ["10.0.0.9:4150"]);
        assert_eq!(s.host, "from-file", "NODE_NAME is only the default of `host`");
        let influx = s.influx.unwrap();
        assert_eq!(influx.urls, ["http://a:8086", "http://b:8086"]);
        assert_eq!(influx.api, Api::V1 { database: "kubernetes".into(), retention_policy: None });
        let mut raw = RawConfig::load(None).unwrap();
        raw.apply_env(no_env).unwrap();
        assert_eq!(raw.nsq.nsqd_tcp_addresses, ["127.0.0.1:4150"]);
        let mut bad = RawConfig::load(None).unwrap();
        let e = bad
            .apply_env(|k| match k {
                "DEIS_NSQD_SERVICE_HOST" => Some("h".into()),
                "DEIS_NSQD_SERVICE_PORT_TRANSPORT" => Some("tcp".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("DEIS_NSQD_SERVICE_PORT_TRANSPORT"));
    }

    #[test]
    fn effective_config_round_trips() {
        let raw = RawConfig::from_toml("x", "host = \"n\"\n[aggregate]\nwindow_secs = 30\n").unwrap();
        let again = RawConfig::from_toml("y", &raw.to_toml()).unwrap();
        assert_eq!(again.aggregate.window_secs, 30);
        assert_eq!(again.host.as_deref(), Some("n"));
    }

    #[test]
    fn nsq_http_addresses() {
        let raw = RawConfig::load(None).unwrap();
        assert_eq!(raw.nsq.lookupd_poll_interval_secs, 60);
        assert!(raw.nsq.nsqd_http_addresses.is_empty());
        let mut raw = RawConfig::from_toml(
            "x",
            "[nsq]\nlookupd_http_addresses = [\"http://lookupd:4161\"]\nlookupd_poll_interval_secs = 15\n",
        )
        .unwrap();
        raw.apply_env(|k| (k == "NSQD_HTTP_ADDRESSES").then(|| "nsqd-0:4151, http://nsqd-1:4151".to_owned()))
            .unwrap();
        let s = raw.validate().unwrap();
        assert_eq!(s.nsq.consumer.create_on, ["nsqd-0:4151", "http://nsqd-1:4151"]);
        assert_eq!(s.nsq.lookupd_poll_interval, Duration::from_secs(15));
        let raw = RawConfig::from_toml("x", "[nsq]\nlookupd_poll_interval_secs = 0\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("nsq.lookupd_poll_interval_secs"));
        let raw = RawConfig::from_toml("x", "[nsq]\nnsqd_http_addresses = [\"ftp://n:4151\"]\n").unwrap();
        let e = raw.validate().unwrap_err().to_string();
        assert!(e.contains("nsq.nsqd_http_addresses") && e.contains("ftp://n:4151"), "{e}");
    }

    #[test]
    fn nsq_client_keys() {
        let raw = RawConfig::from_toml("x", "").unwrap();
        assert_eq!(raw.nsq.max_in_flight, 2500);
        assert_eq!(raw.nsq.heartbeat_interval_ms, 30_000);
        assert_eq!(raw.nsq.publish_batch_max_messages, 200);
        assert!(!raw.nsq.tls);
        let nsq = raw.nsq.validate("node-1").unwrap();
        let p = &nsq.producer;
        assert_eq!(p.addresses, ["127.0.0.1:4150"]);
        assert_eq!(p.connection.client_id, "node-1");
        assert_eq!(p.connection.msg_timeout, Some(Duration::from_secs(60)));
        assert!(p.connection.auth_secret.is_none() && p.connection.tls.is_none());
        let c = nsq.consumer("logs");
        assert_eq!((c.topic.as_str(), c.channel.as_str(), c.max_in_flight), ("logs", "logmill", 2500));

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[nsq]\nmax_in_flight = 2500\nmsg_timeout_ms = 0\nheartbeat_interval_ms = 5000\ndial_timeout_ms = 250\n\
             publish_batch_max_messages = 50\npublish_batch_max_bytes = 65536\nmax_attempts = 7\n\
             tls = true\ntls_server_name = \"nsqd.example\"\nauth_secret_file = \"{}\"\n",
            secret.display()
        );
        let mut raw = RawConfig::from_toml("x", &text).unwrap();
        let nsq = raw.nsq.validate("h").unwrap();
        let c = nsq.consumer("metrics");
        assert_eq!((c.max_in_flight, c.max_attempts), (2500, 7));
        assert_eq!(c.connection.msg_timeout, None);
        assert_eq!(c.connection.heartbeat_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.connection.dial_timeout, Duration::from_millis(250));
        assert_eq!(c.connection.auth_secret.as_ref().map(|s| s.0.as_slice()), Some(&b"s3cret"[..]));
        assert_eq!(c.connection.tls.as_ref().and_then(|t| t.server_name.as_deref()), Some("nsqd.example"));
        let p = &nsq.producer;
        assert_eq!((p.batch_max_messages, p.batch_max_bytes), (50, 65536));
        // The environment's secret wins over the file, and is never serialized.
        raw.apply_env(|k| (k == "NSQ_AUTH_SECRET").then(|| "from-env".to_owned())).unwrap();
        let c = raw.nsq.validate("h").unwrap().consumer("logs");
        assert_eq!(c.connection.auth_secret.map(|s| s.0), Some(b"from-env".to_vec()));
        assert!(!raw.to_toml().contains("from-env"));

        for (bad, key) in [
            ("[nsq]\nmax_in_flight = 0\n", "nsq.max_in_flight"),
            ("[nsq]\nheartbeat_interval_ms = 500\n", "nsq.heartbeat_interval_ms"),
            ("[nsq]\nmsg_timeout_ms = 10\n", "nsq.msg_timeout_ms"),
            ("[nsq]\npublish_batch_max_bytes = 6000000\n", "nsq.publish_batch_max_bytes"),
            ("[nsq]\nnsqd_tcp_addresses = [\"nsqd\"]\n", "nsq.nsqd_tcp_addresses"),
            ("[nsq]\nauth_secret_file = \"/nonexistent/secret\"\n", "nsq.auth_secret_file"),
            ("[nsq]\ntls = true\ntls_ca_file = \"/nonexistent/ca.pem\"\n", "nsq.tls_ca_file"),
        ] {
            let raw = RawConfig::from_toml("x", bad).unwrap();
            let err = raw.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(RawConfig::from_toml("x", "[nsq]\nmax_in_flite = 3\n").is_err(), "unknown keys refused");
    }

    #[test]
    fn nsq_names() {
        assert!(valid_nsq_name("logs"));
        assert!(valid_nsq_name("a.b_c-d#ephemeral"));
        assert!(!valid_nsq_name(""));
        assert!(!valid_nsq_name("#ephemeral"));
        assert!(!valid_nsq_name("a/b"));
        assert!(!valid_nsq_name(&"x".repeat(65)));
    }

    #[test]
    fn nsqd_size_limits_reach_the_client() {
        let raw =
            RawConfig::from_toml("x", "[nsq]\nmax_msg_bytes = 2097152\nmax_body_bytes = 8388608\n").unwrap();
        let p = raw.nsq.validate("n").unwrap().producer;
        assert_eq!((p.max_message_bytes, p.max_body_bytes), (2_097_152, 8_388_608));
        // A frame carries the 4-byte type and the 26-byte message header besides the body.
        assert_eq!(p.connection.max_frame_bytes, 2_097_152 + 30);
        let raw = RawConfig::from_toml("x", "[nsq]\nmax_msg_bytes = 10\nmax_body_bytes = 5\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("nsq.max_body_bytes"));
        let raw = RawConfig::from_toml("x", "[nsq]\npublish_batch_max_bytes = 6000000\n").unwrap();
        assert!(raw.validate().unwrap_err().to_string().contains("nsq.publish_batch_max_bytes"));
    }
    #[test]
    fn kubernetes_api_from_the_pod_or_the_file() {
        // Not in a pod, no URL: no API, records go by name and namespace.
        let raw = RawConfig::load(None).unwrap();
        assert!(raw.kubernetes.validate_with(Path::new("/nonexistent")).unwrap().is_none());
        // In a pod: the service variables and the mounted service account.
        let account = tempfile::tempdir().unwrap();
        std::fs::write(account.path().join("token"), "t").unwrap();
        std::fs::write(account.path().join("ca.crt"), "pem").unwrap();
        let mut raw = RawConfig::load(None).unwrap();
        raw.apply_env(|k| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".into()),
            "KUBERNETES_SERVICE_PORT" => Some("443".into()),
            _ => None,
        })
        .unwrap();
        let k = raw.kubernetes.validate_with(account.path()).unwrap().expect("in a pod");
        assert_eq!(k.api_url, "https://10.96.0.1:443");
        assert_eq!(k.token_file.as_deref(), Some(account.path().join("token").as_path()));
        assert_eq!(k.ca_file.as_deref(), Some(account.path().join("ca.crt").as_path()));
        assert_eq!(k.token_reload, Duration::from_secs(60));
        assert_eq!(k.request_timeout, Duration::from_secs(5));
        assert_eq!(k.metadata_wait, Duration::from_secs(2));
        assert_eq!(k.cache.capacity.get(), 4096);
        assert_eq!(k.cache.deleted_retention, Duration::from_secs(600));
        assert!(!k.insecure_skip_verify);
        // Nothing mounted: no token, no CA (the built-in roots).
        let k = raw.kubernetes.validate_with(Path::new("/nonexistent")).unwrap().unwrap();
        assert_eq!((k.token_file, k.ca_file), (None, None));
        // Turned off, even in a pod.
        raw.kubernetes.enabled = false;
        assert!(raw.kubernetes.validate_with(account.path()).unwrap().is_none());
        // One variable alone is not a cluster (client-go's rule); IPv6 hosts get brackets.
        let mut raw = RawConfig::load(None).unwrap();
        raw.apply_env(|k| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".into())).unwrap();
        assert_eq!(raw.kubernetes.in_cluster_from_env, None);
        raw.apply_env(|k| match k {
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".into()),
            "KUBERNETES_SERVICE_PORT" => Some("6443".into()),
            _ => None,
        })
        .unwrap();
        let k = raw.kubernetes.validate_with(Path::new("/nonexistent")).unwrap().unwrap();
        assert_eq!(k.api_url, "https://[fd00::1]:6443");
        let e = RawConfig::load(None)
            .unwrap()
            .apply_env(|k| match k {
                "KUBERNETES_SERVICE_HOST" => Some("h".into()),
                "KUBERNETES_SERVICE_PORT" => Some("https".into()),
                _ => None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("KUBERNETES_SERVICE_PORT"), "{e}");
        // The file's URL wins over the pod's; explicit files must exist.
        let text = format!(
            "[kubernetes]\napi_url = \"https://api.example:6443/\"\ntoken_file = \"{}\"\n\
             cache_ttl_secs = 60\nmetadata_wait_ms = 0\ninsecure_skip_verify = true\n",
            account.path().join("token").display()
        );
        let mut raw = RawConfig::from_toml("x", &text).unwrap();
        raw.kubernetes.in_cluster_from_env = Some("10.96.0.1:443".into());
        let k = raw.kubernetes.validate_with(Path::new("/nonexistent")).unwrap().unwrap();
        assert_eq!(k.api_url, "https://api.example:6443");
        assert_eq!((k.cache.ttl, k.metadata_wait), (Duration::from_secs(60), Duration::ZERO));
        assert!(k.insecure_skip_verify);
        for (bad, key) in [
            ("[kubernetes]\napi_url = \"api:443\"\n", "kubernetes.api_url"),
            (
                "[kubernetes]\napi_url = \"https://a\"\ntoken_file = \"/nonexistent/token\"\n",
                "kubernetes.token_file",
            ),
            (
                "[kubernetes]\napi_url = \"https://a\"\nca_file = \"/nonexistent/ca.crt\"\n",
                "kubernetes.ca_file",
            ),
            ("[kubernetes]\napi_url = \"https://a\"\ncache_max_pods = 0\n", "kubernetes.cache_max_pods"),
            (
                "[kubernetes]\napi_url = \"https://a\"\nrequest_timeout_ms = 0\n",
                "kubernetes.request_timeout_ms",
            ),
            (
                "[kubernetes]\napi_url = \"https://a\"\nmax_concurrent_requests = 0\n",
                "kubernetes.max_concurrent_requests",
            ),
        ] {
            let err = RawConfig::from_toml("x", bad).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(
            RawConfig::from_toml("x", "[kubernetes]\napi_uri = \"x\"\n").is_err(),
            "unknown keys refused"
        );
    }

    #[test]
    fn agent_rules_and_filters() {
        let s = RawConfig::load(None).unwrap().validate().unwrap();
        assert!(s.agent.drop_other && s.agent.drop_router_non_access_lines, "the old plugin's defaults");
        let c = |ns: &str, container: &str| crate::kube::ContainerRef {
            pod: "p".into(),
            namespace: ns.into(),
            container: container.into(),
            container_id: String::new(),
            pod_uid: None,
            cut: false,
        };
        assert!(s.agent.filters.admits(&c("kube-system", "x")), "no filters: everything");
        let raw = RawConfig::from_toml(
            "x",
            "[agent]\ndrop_other = false\nexclude_namespaces = [\"kube-*\"]\ninclude_containers = [\"*-web\", \"deis-*\"]\n",
        )
        .unwrap();
        let s = raw.validate().unwrap();
        assert!(!s.agent.drop_other);
        assert!(s.agent.filters.admits(&c("foo", "foo-web")));
        assert!(s.agent.filters.admits(&c("deis", "deis-router")));
        assert!(!s.agent.filters.admits(&c("kube-system", "deis-router")));
        assert!(!s.agent.filters.admits(&c("foo", "foo-worker")));
        let e =
            RawConfig::from_toml("x", "[agent]\ninclude_pods = [\"\"]\n").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("agent.include_pods"), "{e}");
    }

    #[test]
    fn multiline_rules() {
        assert!(RawConfig::load(None).unwrap().validate().unwrap().multiline.is_empty());
        let raw = RawConfig::from_toml(
            "x",
            "[[multiline]]\ncontainers = \"^java-\"\nstart = '^\\d{4}-'\ntimeout_ms = 500\n\
             [[multiline]]\ncontainers = \"java\"\nstart = '^\\S'\n",
        )
        .unwrap();
        let s = raw.validate().unwrap();
        assert_eq!(s.multiline.len(), 2);
        let rule = MultilineRule::for_container(&s.multiline, "java-api").unwrap();
        assert_eq!(rule.timeout, Duration::from_millis(500));
        assert!(rule.start.is_match(b"2024-01-01 x") && !rule.start.is_match(b"\tat x"));
        let rule = MultilineRule::for_container(&s.multiline, "my-java").unwrap();
        assert_eq!(rule.timeout, Duration::from_millis(1000), "the default");
        assert!(MultilineRule::for_container(&s.multiline, "web").is_none());
        for (bad, key) in [
            ("[[multiline]]\ncontainers = \"(\"\nstart = \"x\"\n", "multiline.containers"),
            ("[[multiline]]\ncontainers = \"x\"\nstart = \"[\"\n", "multiline.start"),
            ("[[multiline]]\ncontainers = \"x\"\nstart = \"x\"\ntimeout_ms = 0\n", "multiline.timeout_ms"),
        ] {
            let err = RawConfig::from_toml("x", bad).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(
            RawConfig::from_toml("x", "[[multiline]]\ncontainers = \"x\"\n").is_err(),
            "start is required"
        );
    }

    #[test]
    fn new_sections_round_trip() {
        let raw = RawConfig::from_toml(
            "x",
            "[kubernetes]\ncache_ttl_secs = 7\n[agent]\nexclude_pods = [\"a*\"]\n\
             [[multiline]]\ncontainers = \"j\"\nstart = \"^x\"\n",
        )
        .unwrap();
        let again = RawConfig::from_toml("y", &raw.to_toml()).unwrap();
        assert_eq!(again.kubernetes.cache_ttl_secs, 7);
        assert_eq!(again.agent.exclude_pods, ["a*"]);
        assert_eq!(again.multiline.len(), 1);
        assert_eq!(again.multiline[0].start, "^x");
    }
    #[test]
    fn collect_keys() {
        let s = RawConfig::load(None).unwrap().validate().unwrap();
        let c = &s.collect;
        assert_eq!(c.interval, Duration::from_secs(10), "Telegraf's interval");
        assert!(c.round_interval);
        assert_eq!(c.inputs, HostInput::ALL, "every host input by default");
        assert_eq!(c.roots, Roots::default());
        assert!(c.kubelet.is_none() && c.nsq.is_none(), "off without a URL");
        assert_eq!(
            c.disk.ignore_fs,
            ["tmpfs", "devtmpfs", "devfs", "iso9660", "overlay", "aufs", "squashfs"]
        );

        let mut raw = RawConfig::from_toml(
            "x",
            "[collect]\ninterval_ms = 500\ninputs = [\"cpu\", \"mem\", \"cpu\"]\nhost_proc = \"/from-file\"\n\
             net_interfaces = [\"eth*\"]\n[collect.kubelet]\nurl = \"https://10.0.0.5:10250\"\nca_file = \"\"\n\
             [collect.nsqd]\nendpoints = [\"nsqd:4151\", \"https://nsqd-1:4151\"]\n",
        )
        .unwrap();
        raw.apply_env(|k| match k {
            "HOST_PROC" => Some("/rootfs/proc".into()),
            "HOST_SYS" => Some("/rootfs/sys".into()),
            "HOST_MOUNT_PREFIX" => Some("/rootfs".into()),
            "HOST_VAR" => Some("/rootfs/var".into()),
            _ => None,
        })
        .unwrap();
        let c = raw.validate().unwrap().collect;
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.inputs, [HostInput::Cpu, HostInput::Mem], "duplicates dropped");
        assert_eq!(c.roots.proc, PathBuf::from("/rootfs/proc"), "the environment overrides the file");
        assert_eq!(c.roots.mount_prefix, PathBuf::from("/rootfs"));
        assert_eq!(c.roots.var, PathBuf::from("/rootfs/var"));
        assert!(c.net_interfaces[0].matches("eth0"));
        let k = c.kubelet.unwrap();
        assert_eq!(k.url.as_str(), "https://10.0.0.5:10250/");
        assert_eq!(
            k.token_file.as_deref(),
            Some(Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"))
        );
        assert_eq!(k.ca_file, None);
        assert_eq!(k.timeout, Duration::from_secs(5));
        let n = c.nsq.unwrap();
        assert_eq!(n.endpoints[0].as_str(), "http://nsqd:4151/");
        assert_eq!(n.timeout, Duration::from_secs(4));

        for (bad, key) in [
            ("[collect]\ninterval_ms = 0\n", "collect.interval_ms"),
            ("[collect]\ninputs = [\"docker\"]\n", "collect.inputs"),
            ("[collect]\nhost_sys = \"\"\n", "collect.host_sys"),
            ("[collect]\ndiskio_devices = [\"sd[a\"]\n", "collect.diskio_devices"),
            ("[collect.kubelet]\nurl = \"10.0.0.5:10250\"\n", "collect.kubelet.url"),
            ("[collect.kubelet]\nurl = \"http://k:10255\"\ntimeout_ms = 0\n", "collect.kubelet.timeout_ms"),
            ("[collect.nsqd]\nendpoints = [\"ftp://n:4151\"]\n", "collect.nsqd.endpoints"),
        ] {
            let err = RawConfig::from_toml("x", bad).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let err = RawConfig::from_toml("x", "[collect]\ninterval = 5\n").unwrap_err().to_string();
        assert!(err.contains("interval"), "unknown keys are refused: {err}");
        let err =
            RawConfig::from_toml("x", "[collect.kubelet]\nbearer_token = \"t\"\n").unwrap_err().to_string();
        assert!(err.contains("bearer_token"), "{err}");
    }
}

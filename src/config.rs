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
use crate::metrics::aggregate::AggregateSettings;

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
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self { listen: default_telemetry_listen() }
    }
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
}

impl Default for RawNsq {
    fn default() -> Self {
        Self {
            nsqd_tcp_addresses: default_nsqd(),
            lookupd_http_addresses: Vec::new(),
            log_topic: default_log_topic(),
            metric_topic: default_metric_topic(),
            channel: default_channel(),
        }
    }
}

fn default_nsqd() -> Vec<String> {
    vec!["127.0.0.1:4150".into()]
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
    /// InfluxDB base URLs; empty: no InfluxDB output. Env: `INFLUXDB_URLS` (comma separated)
    /// or `INFLUXDB_URL`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Database. Env: `INFLUXDB_DATABASE`.
    #[serde(default = "default_database")]
    pub database: String,
}

impl Default for RawInflux {
    fn default() -> Self {
        Self { urls: Vec::new(), database: default_database() }
    }
}

fn default_database() -> String {
    "kubernetes".into()
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub max_line_bytes: usize,
    pub parsers: Registry,
    pub aggregate: AggregateSettings,
    pub telemetry_listen: Option<SocketAddr>,
    pub nsq: RawNsq,
    pub influx: RawInflux,
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

    pub fn from_toml(path: &str, text: &str) -> Result<Self, ConfigError> {
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
        if let Some(v) = env("INFLUXDB_URLS").or_else(|| env("INFLUXDB_URL")) {
            self.influx.urls = list(v);
        }
        if let Some(v) = env("INFLUXDB_DATABASE") {
            self.influx.database = v;
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
        for topic in [&self.nsq.log_topic, &self.nsq.metric_topic] {
            if !valid_nsq_name(topic) {
                return Err(invalid("nsq topics", format!("`{topic}` is not a valid NSQ topic name")));
            }
        }
        if !valid_nsq_name(&self.nsq.channel) {
            return Err(invalid(
                "nsq.channel",
                format!("`{}` is not a valid NSQ channel name", self.nsq.channel),
            ));
        }
        if ["consume", "consumer"].contains(&self.nsq.channel.as_str()) {
            return Err(invalid("nsq.channel", "`consume` and `consumer` belong to the Deis logger and telegraf; sharing them would split their messages"));
        }
        for url in &self.influx.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("influx.urls", format!("`{url}` is not an http:// or https:// URL")));
            }
        }
        Ok(Settings {
            host,
            max_line_bytes: self.max_line_bytes,
            parsers: Registry::load(self.parsers.dir.as_deref())?,
            aggregate: AggregateSettings {
                window_ns: a.window_secs as i64 * 1_000_000_000,
                lateness_ns: a.lateness_secs as i64 * 1_000_000_000,
                max_series,
                consumer: "local".into(),
                sequence_base: 0,
            },
            telemetry_listen,
            nsq: self.nsq.clone(),
            influx: self.influx.clone(),
        })
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// NSQ's rule for topic and channel names: `^[.a-zA-Z0-9_-]+(#ephemeral)?$`, 1 to 64 bytes.
pub fn valid_nsq_name(name: &str) -> bool {
    let base = name.strip_suffix("#ephemeral").unwrap_or(name);
    (1..=64).contains(&name.len())
        && !base.is_empty()
        && base.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// How often the long-running roles write their own counters as points.
pub const TELEMETRY_POINTS_INTERVAL: Duration = Duration::from_secs(10);

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
        assert_eq!(s.nsq.channel, "logmill");
        assert_eq!(s.influx.database, "kubernetes");
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
        assert_eq!(s.influx.urls, ["http://a:8086", "http://b:8086"]);
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
    fn nsq_names() {
        assert!(valid_nsq_name("logs"));
        assert!(valid_nsq_name("a.b_c-d#ephemeral"));
        assert!(!valid_nsq_name(""));
        assert!(!valid_nsq_name("#ephemeral"));
        assert!(!valid_nsq_name("a/b"));
        assert!(!valid_nsq_name(&"x".repeat(65)));
    }
}

//! NSQ, the queue between agents and consumers.
//!
//! Map of the submodules, from the pure bottom up:
//!
//! - [`protocol`]: the TCP protocol V2 as bytes and values, no I/O. Frames the server sends
//!   (`decode_frame`), commands a client sends (`encode_*` into a caller's buffer), error codes
//!   and which of them close the connection, topic/channel names. `protocol::server` is the
//!   other direction (decoding a client's commands the way nsqd v1.3.0 does), used by the test
//!   broker in `tests/support/`.
//! - [`connection`]: one connection to nsqd: dial, IDENTIFY (TLS, AUTH), a pump that never
//!   blocks on one direction and answers heartbeats itself; reconnecting with [`crate::backoff::Backoff`].
//! - [`producer`]: a cloneable handle publishing (PUB/MPUB/DPUB pipelined, batched), at least
//!   once across dropped connections and failover.
//! - [`consumer`]: SUB on every nsqd of a `watch` of addresses (lookupd's or a fixed set),
//!   `max_in_flight` spread as RDY, backoff on handler failure, graceful stop.
//! - [`http`]: nsqd's and nsqlookupd's HTTP APIs: base URLs, creating topics and channels.
//! - [`lookupd`]: nsqlookupd discovery, a `watch` of the nsqd producing a topic.
//!
//! Connection, producer, consumer and lookupd discovery sit on top of these two.

pub mod connection;
pub mod consumer;
pub mod http;
pub mod lookupd;
pub mod producer;
pub mod protocol;

use std::time::Duration;

use consumer::ConsumerSettings;
use producer::ProducerSettings;

/// A role's NSQ settings, validated once from the configuration (TLS roots loaded, the AUTH
/// secret read) and shared by its producer and consumers.
#[derive(Debug, Clone)]
pub struct NsqSettings {
    /// nsqd TCP addresses (`host:port`): published to in turn, or consumed from.
    pub nsqd_tcp_addresses: Vec<String>,
    pub producer: ProducerSettings,
    /// The consumers' settings; [`NsqSettings::consumer`] sets the topic.
    pub consumer: ConsumerSettings,
    /// nsqlookupd HTTP addresses for discovery (empty: the fixed nsqd addresses only).
    pub lookupd_http_addresses: Vec<String>,
    pub lookupd_poll_interval: Duration,
    /// Topic of app log records (`logs`).
    pub log_topic: String,
    /// Topic of line-protocol metrics (`metrics`).
    pub metric_topic: String,
}

impl NsqSettings {
    /// The consumer settings for `topic`, on the configured channel.
    pub fn consumer(&self, topic: &str) -> ConsumerSettings {
        ConsumerSettings { topic: topic.to_owned(), ..self.consumer.clone() }
    }
}

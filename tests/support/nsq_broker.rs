//! An in-process NSQ test broker that answers like nsqd v1.3.0, on ephemeral loopback ports.
//!
//! Commands are decoded by `logmill::nsq::protocol::server`, which replays nsqd's checks and
//! error texts; this file adds what needs state: topics copying every message to each of
//! their channels (messages published before the first channel wait in the topic), channels
//! spreading messages over subscribers within each one's RDY window (in flight < RDY), FIN /
//! REQ (with delay) / TOUCH, msg_timeout redelivery with attempts + 1 (scanned every
//! `queue_scan_interval`, 100 ms as in nsqd), DPUB, IDENTIFY and its JSON answer, heartbeats
//! from connection start (every connection gets them, subscribed or not) and the read deadline
//! of two heartbeat intervals, and the close after every error but E_FIN_FAILED,
//! E_REQ_FAILED, E_TOUCH_FAILED. `tests/nsq_conformance.rs` holds it to recordings of a real
//! nsqd.
//!
//! It runs as nsqd with `--deflate=false --snappy=false`; `sample_rate` is accepted and reported
//! but every message is delivered. By default there is no TLS and no auth (AUTH answers
//! E_AUTH_DISABLED), as in the recordings. With [`NsqBrokerOptions::tls`] (nsqd's `--tls-cert`/
//! `--tls-key`) an IDENTIFY asking `tls_v1` is granted: the JSON answer goes out in plain text,
//! the socket is upgraded (server-side rustls, 5 s handshake deadline) and `OK` follows over TLS;
//! [`NsqBrokerOptions::tls_required`] (`--tls-required`) refuses every command but IDENTIFY on a
//! plain connection. [`NsqBrokerOptions::auth_secrets`] stands in for `--auth-http-address` and
//! an auth server that accepts exactly those secrets (granting every topic and channel):
//! IDENTIFY answers `auth_required: true`, SUB/PUB/MPUB/DPUB before AUTH get E_AUTH_FIRST,
//! another secret E_AUTH_FAILED (all fatal). Texts and order are nsqd v1.3.0's, taken from its
//! source (`nsqd/protocol_v2.go`: `IDENTIFY`, `AUTH`, `CheckAuth`, `enforceTLSPolicy`;
//! `nsqd/client_v2.go`: `UpgradeTLS`), as the recordings have neither TLS nor auth. Test certificates: `testdata/tls/` ([`TlsServer::test`]).
//! IDENTIFY's JSON is read with serde, which (unlike Go) matches keys case-sensitively and
//! refuses duplicate keys. A rejected MPUB does not create its topic (nsqd's does).
//!
//! Pacing: messages are written as nsqd's `protocolV2.messagePump` writes them (v1.3.0,
//! `nsqd/protocol_v2.go`, `clientV2.SetOutputBuffer`): into a per-client output buffer of
//! `output_buffer_size` (16 KiB), which reaches the socket when it fills, when the client has
//! no room for more (not subscribed, RDY 0, or as many in flight as RDY), when a response,
//! error or heartbeat is sent behind it, or at the client's output buffer ticker
//! (`output_buffer_timeout`, 250 ms, both negotiable in IDENTIFY; a timeout of -1 stops the
//! ticker, a size of -1 unbuffers). The ticker runs from the connection's start (restarted by
//! IDENTIFY), and, as a Go 1.19 ticker channel does, keeps one tick that fired while nothing
//! was buffered: so a lone message after a quiet spell goes out at once, and the next ones
//! within the period wait for the next tick, as a real nsqd does.
//!
//! Faults: [`NsqBroker::drop_connections_mid_mpub`], [`NsqBroker::drop_connections_after_mpub`],
//! [`NsqBroker::stall_reads`] and [`NsqBroker::hold_reads`] / [`NsqBroker::release_reads`],
//! [`NsqBroker::inject_error`], [`NsqBroker::fail_next_publishes`],
//! [`NsqBroker::drop_all_connections`] and [`NsqBroker::restart`], which keeps every message it
//! acknowledged (in-flight and deferred ones back in their channel's queue, ephemeral topics
//! and channels gone), as nsqd does across a clean restart.
//!
//! Include it with `mod support;` (`support/mod.rs`) or
//! `#[path = "support/nsq_broker.rs"] mod nsq_broker;`. It uses tokio timers, so it runs on
//! real time, not under `tokio::time::pause()`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use logmill::nsq::protocol::server::{
    decode_command, ClientState, Command, CommandError, CommandLimits, Session, NSQD_MAX_LINE_BYTES,
};
use logmill::nsq::protocol::{
    encode_frame, ErrorCode, IdentifyConfig, IdentifyResponse, MessageId, ServerError, CLOSE_WAIT,
    FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE, FRAME_TYPE_RESPONSE, HEARTBEAT, MAGIC_V2, OK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// The version the broker reports, the nsqd its answers were recorded from.
pub const VERSION: &str = "1.3.0";
/// nsqd's default (and largest) client output buffer; also the most the broker queues for a
/// client before it stops reading that client's commands, as nsqd blocks on a full socket.
const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;
const MAX_OUTPUT_BUFFER_BYTES: usize = 64 * 1024;
/// nsqd's `--max-deflate-level` default, reported in the IDENTIFY answer.
const MAX_DEFLATE_LEVEL: i64 = 6;
/// How long a closing connection's unread input is drained, so the close is a FIN rather than
/// a reset that could destroy the last answer before the client reads it.
const CLOSE_DRAIN: Duration = Duration::from_millis(50);
const CLOSE_DRAIN_BYTES: usize = 1 << 20;
/// Most bytes received from one client while its reads are stalled; beyond, TCP pushes back.
const STALLED_INPUT_MAX_BYTES: usize = 4 << 20;
/// Bounds of the minimal HTTP API.
const HTTP_MAX_HEAD_BYTES: usize = 16 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// nsqd's `clientV2.UpgradeTLS` deadline for the whole handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The `identity` the stand-in auth server gives every client it accepts.
pub const AUTH_IDENTITY: &str = "logmill-test";
/// The `identity_url` it gives them.
pub const AUTH_IDENTITY_URL: &str = "";
/// It grants one authorization: every topic and channel, subscribe and publish.
const AUTH_PERMISSION_COUNT: usize = 1;

/// The server side of nsqd's TLS: a certificate chain and its key (`--tls-cert`, `--tls-key`).
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1); panics on
    /// a bad file (test support). Any TLS version rustls offers by default (1.2, 1.3), no client
    /// certificates (nsqd's default `--tls-client-auth-policy`).
    pub fn from_pem_files(cert: &Path, key: &Path) -> TlsServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .unwrap_or_else(|e| panic!("test TLS certificate {}: {e}", cert.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("test TLS key {}: {e}", key.display()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("test TLS certificate and key match");
        TlsServer { config: Arc::new(config) }
    }

    /// The committed test certificate for `localhost` and 127.0.0.1 (`testdata/tls/`).
    pub fn test() -> TlsServer {
        let dir = test_tls_dir();
        TlsServer::from_pem_files(&dir.join("server.pem"), &dir.join("server.key"))
    }

    /// The CA that signed [`TlsServer::test`]'s certificate, for clients to trust.
    pub fn test_ca_file() -> PathBuf {
        test_tls_dir().join("ca.pem")
    }
}

fn test_tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls")
}

/// nsqd's options that shape its answers. [`Default`] is nsqd's defaults;
/// [`NsqBrokerOptions::recorded`] the options of `../shared/nsq-conformance/`.
#[derive(Debug, Clone)]
pub struct NsqBrokerOptions {
    /// `--max-msg-size`.
    pub max_msg_size: i64,
    /// `--max-body-size`.
    pub max_body_size: i64,
    /// `--max-rdy-count`.
    pub max_rdy_count: i64,
    /// `--msg-timeout`, the default a client may change in IDENTIFY.
    pub msg_timeout: Duration,
    /// `--max-msg-timeout`.
    pub max_msg_timeout: Duration,
    /// `--max-req-timeout`.
    pub max_req_timeout: Duration,
    /// `--max-heartbeat-interval`.
    pub max_heartbeat_interval: Duration,
    /// `--client-timeout`; the default heartbeat interval is half of it (30 s).
    pub client_timeout: Duration,
    /// `--output-buffer-timeout`, reported in IDENTIFY.
    pub output_buffer_timeout: Duration,
    /// `--min-output-buffer-timeout`.
    pub min_output_buffer_timeout: Duration,
    /// `--max-output-buffer-timeout`.
    pub max_output_buffer_timeout: Duration,
    /// How often in-flight and deferred messages are checked (nsqd's `--queue-scan-interval`).
    pub queue_scan_interval: Duration,
    /// Also serve the HTTP API (`/ping`, `/topic/create`, `/channel/create`, `/stats`).
    pub http: bool,
    /// `--tls-cert`/`--tls-key`: grant `tls_v1` to the clients that ask. `None`: no TLS.
    pub tls: Option<TlsServer>,
    /// `--tls-required`: on a connection not (yet) upgraded, every command but IDENTIFY gets
    /// `E_INVALID cannot <CMD> in current state (TLS required)` and the connection closes.
    /// Needs `tls`, as nsqd refuses to start without a certificate.
    pub tls_required: bool,
    /// `--auth-http-address` and an auth server accepting exactly these secrets. `Some`:
    /// IDENTIFY answers `auth_required: true` and SUB/PUB/MPUB/DPUB need AUTH first; `None`:
    /// AUTH is `E_AUTH_DISABLED`.
    pub auth_secrets: Option<Vec<String>>,
}

impl Default for NsqBrokerOptions {
    fn default() -> Self {
        NsqBrokerOptions {
            max_msg_size: 1024 * 1024,
            max_body_size: 5 * 1024 * 1024,
            max_rdy_count: 2500,
            msg_timeout: Duration::from_secs(60),
            max_msg_timeout: Duration::from_secs(15 * 60),
            max_req_timeout: Duration::from_secs(60 * 60),
            max_heartbeat_interval: Duration::from_secs(60),
            client_timeout: Duration::from_secs(60),
            output_buffer_timeout: Duration::from_millis(250),
            min_output_buffer_timeout: Duration::from_millis(25),
            max_output_buffer_timeout: Duration::from_secs(30),
            queue_scan_interval: Duration::from_millis(100),
            http: false,
            tls: None,
            tls_required: false,
            auth_secrets: None,
        }
    }
}

impl NsqBrokerOptions {
    /// The nsqd of the recordings: `--max-msg-size=1024 --max-body-size=4096
    /// --max-rdy-count=2500 --msg-timeout=60s`.
    pub fn recorded() -> Self {
        NsqBrokerOptions { max_msg_size: 1024, max_body_size: 4096, ..NsqBrokerOptions::default() }
    }

    fn limits(&self) -> CommandLimits {
        CommandLimits {
            max_line_bytes: NSQD_MAX_LINE_BYTES,
            max_msg_size: self.max_msg_size,
            max_body_size: self.max_body_size,
            max_rdy_count: self.max_rdy_count,
            max_req_timeout_ms: millis(self.max_req_timeout),
        }
    }
}

/// A client connection as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The broker's number for the connection.
    pub id: u64,
    /// Peer address.
    pub remote_addr: SocketAddr,
    /// IDENTIFY's `client_id` (the peer's IP before IDENTIFY, as nsqd).
    pub client_id: String,
    /// IDENTIFY's `hostname`.
    pub hostname: String,
    /// IDENTIFY's `user_agent`.
    pub user_agent: String,
    /// nsqd's state.
    pub state: ClientState,
    /// Topic and channel after SUB.
    pub subscription: Option<(String, String)>,
    /// The current RDY.
    pub rdy: i64,
    /// Messages delivered and not yet FIN/REQ/timed out.
    pub in_flight: i64,
    /// Messages delivered.
    pub message_count: u64,
    /// FINs.
    pub finish_count: u64,
    /// REQs.
    pub requeue_count: u64,
    /// In force for this client (`None`: disabled).
    pub heartbeat_interval: Option<Duration>,
    /// In force for this client.
    pub msg_timeout: Duration,
    /// The connection was upgraded to TLS.
    pub tls: bool,
    /// AUTH was accepted.
    pub authenticated: bool,
    /// Bytes received and not yet read as commands (they wait while reads are held).
    pub unread_bytes: usize,
}

/// What the broker counted since it started (kept across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerCounters {
    /// Connections that sent the protocol magic.
    pub connections: u64,
    /// TLS upgrades completed (IDENTIFY `tls_v1` granted, handshake done, `OK` queued).
    pub tls_upgrades: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: u64,
    /// AUTH commands accepted.
    pub auth_accepted: u64,
    /// AUTH commands refused with `E_AUTH_FAILED`.
    pub auth_refused: u64,
}

/// A channel as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// Messages waiting for delivery.
    pub depth: usize,
    /// Messages delivered, not yet FIN/REQ/timed out.
    pub in_flight: usize,
    /// Messages waiting for a DPUB or REQ delay.
    pub deferred: usize,
    /// Subscribed connections.
    pub clients: usize,
    /// Messages put into the channel.
    pub message_count: u64,
    /// REQs.
    pub requeue_count: u64,
    /// msg_timeout expiries.
    pub timeout_count: u64,
    /// FINs.
    pub finish_count: u64,
    /// The largest sum of the subscribers' RDY ever seen.
    pub max_total_rdy: i64,
    /// The largest number of messages in flight at once ever seen.
    pub max_in_flight: usize,
}

/// The broker. Dropping it stops every task and closes every socket.
pub struct NsqBroker {
    inner: Arc<Inner>,
}

struct Inner {
    options: NsqBrokerOptions,
    limits: CommandLimits,
    tcp_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    state: Mutex<State>,
    /// Wakes the readers held by [`NsqBroker::hold_reads`].
    reads_released: Notify,
    /// Cancels everything when the broker is dropped.
    root: CancellationToken,
    /// Parent of the connections and the accept loop of the current "process"; replaced by
    /// `restart`.
    generation: Mutex<Generation>,
}

struct Generation {
    token: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl Drop for NsqBroker {
    fn drop(&mut self) {
        self.inner.root.cancel();
    }
}

impl NsqBroker {
    /// Binds 127.0.0.1:0 (and another port for HTTP when asked) and starts serving.
    pub async fn start(options: NsqBrokerOptions) -> NsqBroker {
        // nsqd.New: "cannot require TLS client connections without TLS key and cert".
        assert!(
            options.tls.is_some() || !options.tls_required,
            "cannot require TLS client connections without TLS key and cert"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the NSQ test broker");
        let tcp_addr = listener.local_addr().expect("local address of the NSQ test broker");
        let http = if options.http {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind the NSQ test broker's HTTP port");
            let addr = l.local_addr().expect("local address of the HTTP port");
            Some((l, addr))
        } else {
            None
        };
        let root = CancellationToken::new();
        let token = root.child_token();
        let inner = Arc::new(Inner {
            limits: options.limits(),
            options,
            tcp_addr,
            http_addr: http.as_ref().map(|(_, a)| *a),
            state: Mutex::new(State::new()),
            reads_released: Notify::new(),
            root: root.clone(),
            generation: Mutex::new(Generation { token: token.clone(), accept: None }),
        });
        let accept = tokio::spawn(accept_loop(inner.clone(), listener, token));
        inner.generation().accept = Some(accept);
        tokio::spawn(scan_loop(inner.clone()));
        if let Some((l, _)) = http {
            tokio::spawn(http_loop(inner.clone(), l));
        }
        NsqBroker { inner }
    }

    /// Where clients connect (stays the same across [`NsqBroker::restart`]).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.inner.tcp_addr
    }

    /// The HTTP API, when [`NsqBrokerOptions::http`] was set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http_addr
    }

    /// The options it runs with.
    pub fn options(&self) -> &NsqBrokerOptions {
        &self.inner.options
    }

    /// Publishes as a PUB would, without a connection (to seed a test).
    pub fn put(&self, topic: &str, body: impl Into<Bytes>) {
        let now = Instant::now();
        let mut st = self.inner.state();
        st.commit(topic, vec![body.into()], None, now);
        st.dispatch(now);
    }

    /// Creates a topic, as `POST /topic/create` does.
    pub fn create_topic(&self, topic: &str) {
        self.inner.state().topic(topic);
    }

    /// Creates a topic and channel, as `POST /channel/create` does.
    pub fn create_channel(&self, topic: &str, channel: &str) {
        let now = Instant::now();
        let mut st = self.inner.state();
        st.channel(topic, channel, now);
        st.dispatch(now);
    }

    /// Every message body the broker acknowledged for `topic`, in order (PUB, MPUB, DPUB and
    /// [`NsqBroker::put`]); kept across restarts.
    pub fn published(&self, topic: &str) -> Vec<Bytes> {
        self.inner.state().published.get(topic).cloned().unwrap_or_default()
    }

    /// How many messages the broker acknowledged for `topic`.
    pub fn published_count(&self, topic: &str) -> usize {
        self.inner.state().published.get(topic).map_or(0, Vec::len)
    }

    /// Bodies FINished on `topic`/`channel`, in order.
    pub fn finished(&self, topic: &str, channel: &str) -> Vec<Bytes> {
        let st = self.inner.state();
        st.topics
            .get(topic)
            .and_then(|t| t.channels.get(channel))
            .map(|c| c.finished.clone())
            .unwrap_or_default()
    }

    /// The channels of `topic`, by name.
    pub fn channel_names(&self, topic: &str) -> Vec<String> {
        self.inner.state().topics.get(topic).map(|t| t.channels.keys().cloned().collect()).unwrap_or_default()
    }

    /// Topic names.
    pub fn topics(&self) -> Vec<String> {
        self.inner.state().topics.keys().cloned().collect()
    }

    /// Connections, TLS upgrades and AUTH outcomes counted since the start.
    pub fn counters(&self) -> BrokerCounters {
        self.inner.state().counters
    }

    /// Open connections (past the magic).
    pub fn connection_count(&self) -> usize {
        self.inner.state().clients.len()
    }

    /// Every open connection.
    pub fn clients(&self) -> Vec<ClientSnapshot> {
        self.inner.state().clients.iter().map(|(&id, c)| c.snapshot(id)).collect()
    }

    /// A channel's counts.
    pub fn channel(&self, topic: &str, channel: &str) -> Option<ChannelSnapshot> {
        let st = self.inner.state();
        let ch = st.topics.get(topic)?.channels.get(channel)?;
        Some(ChannelSnapshot {
            depth: ch.queue.len(),
            in_flight: ch.in_flight.len(),
            deferred: ch.deferred.len(),
            clients: ch.clients.len(),
            message_count: ch.message_count,
            requeue_count: ch.requeue_count,
            timeout_count: ch.timeout_count,
            finish_count: ch.finished.len() as u64,
            max_total_rdy: ch.max_total_rdy,
            max_in_flight: ch.max_in_flight,
        })
    }

    /// The sum of the current RDY of `topic`/`channel`'s subscribers.
    pub fn total_rdy(&self, topic: &str, channel: &str) -> i64 {
        let st = self.inner.state();
        st.topics
            .get(topic)
            .and_then(|t| t.channels.get(channel))
            .map_or(0, |ch| ch.clients.iter().filter_map(|id| st.clients.get(id)).map(|c| c.rdy).sum())
    }

    /// The next `n` MPUBs close their connection as soon as their command line has arrived,
    /// before the body is read: nothing of them is committed and they get no answer (answers
    /// to the commands before them are still sent).
    pub fn drop_connections_mid_mpub(&self, n: usize) {
        self.inner.state().faults.drop_mid_mpub += n;
    }

    /// The next `n` MPUBs are committed (their messages ARE queued and counted as published)
    /// and then their connection is closed without the `OK` (answers before it are still
    /// sent): an unseen success, which an at-least-once producer resends.
    pub fn drop_connections_after_mpub(&self, n: usize) {
        self.inner.state().faults.drop_after_mpub += n;
    }

    /// For `duration` from now the broker reads no command from any connection (heartbeats go
    /// on; read deadlines restart when the stall ends). Bytes received meanwhile (up to 4 MiB
    /// per connection) wait, unprocessed.
    pub fn stall_reads(&self, duration: Duration) {
        self.inner.state().faults.stall_until = Some(Instant::now() + duration);
    }

    /// From now until [`NsqBroker::release_reads`] the broker reads no command from any
    /// connection (as [`NsqBroker::stall_reads`], without a time limit): a test waits for what
    /// it needs to see (say, [`ClientSnapshot::unread_bytes`] of the commands it pipelined)
    /// rather than for a duration.
    pub fn hold_reads(&self) {
        self.inner.state().faults.hold_reads = true;
    }

    /// Ends [`NsqBroker::hold_reads`] (and any [`NsqBroker::stall_reads`]): the commands that
    /// waited are read, in order.
    pub fn release_reads(&self) {
        {
            let mut st = self.inner.state();
            st.faults.hold_reads = false;
            st.faults.stall_until = None;
        }
        self.inner.reads_released.notify_waiters();
    }

    /// Sends an error frame with `text` (e.g. `E_INVALID something`) to every open connection
    /// now; a fatal code closes each of them after the frame, as nsqd would, and no command
    /// waiting behind it is read. Returns how many connections got it.
    pub fn inject_error(&self, text: &str) -> usize {
        let error = ServerError::new(Bytes::copy_from_slice(text.as_bytes()));
        let mut st = self.inner.state();
        let ids: Vec<u64> = st.clients.keys().copied().collect();
        for &id in &ids {
            st.send_error(id, &error);
            // Its reader stops at once, even while reads are held.
            if let Some(c) = st.clients.get(&id) {
                c.wake_reader.notify_one();
            }
        }
        ids.len()
    }

    /// The next `n` PUB/MPUB/DPUB are answered with an error frame of `text` instead of being
    /// committed; a fatal code closes the connection after it.
    pub fn fail_next_publishes(&self, n: usize, text: &str) {
        let error = ServerError::new(Bytes::copy_from_slice(text.as_bytes()));
        let mut st = self.inner.state();
        st.faults.fail_publishes.extend(std::iter::repeat_n(error, n));
    }

    /// Closes every connection now, without answers; new ones are accepted.
    pub fn drop_all_connections(&self) {
        let mut st = self.inner.state();
        for c in st.clients.values_mut() {
            c.cancel.cancel();
        }
    }

    /// A clean nsqd restart: every connection is dropped, connections are refused for
    /// `refuse_for`, then the broker listens on the same port again. Every acknowledged message
    /// is kept: in-flight and deferred messages go back to their channel's queue; ephemeral
    /// topics and channels are gone. Returns once the old connections are closed; the port
    /// comes back in the background. (The HTTP API stays up throughout.)
    pub async fn restart(&self, refuse_for: Duration) {
        let (old_accept, new_token) = {
            let mut g = self.inner.generation();
            g.token.cancel();
            g.token = self.inner.root.child_token();
            (g.accept.take(), g.token.clone())
        };
        if let Some(accept) = old_accept {
            // Wait until the listener is closed, so connecting is refused from now on.
            let _ = accept.await;
        }
        self.inner.state().restart();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = new_token.cancelled() => return,
                _ = tokio::time::sleep(refuse_for) => {}
            }
            // The port was ours a moment ago; retry briefly in case the kernel is slow to free it.
            for _ in 0..200 {
                if new_token.is_cancelled() {
                    return;
                }
                match TcpListener::bind(inner.tcp_addr).await {
                    Ok(listener) => {
                        let handle = tokio::spawn(accept_loop(inner.clone(), listener, new_token.clone()));
                        inner.generation().accept = Some(handle);
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            panic!("NSQ test broker could not listen on {} again after a restart", inner.tcp_addr);
        });
    }

    /// Whether the broker accepts connections (false during a restart's refusal).
    pub fn is_accepting(&self) -> bool {
        self.inner.generation().accept.is_some()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in a test; keep serving so the test reports
        // its own failure instead of a poisoned-lock cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn generation(&self) -> MutexGuard<'_, Generation> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct State {
    topics: BTreeMap<String, Topic>,
    clients: BTreeMap<u64, Client>,
    next_client_id: u64,
    next_guid: u64,
    faults: Faults,
    published: BTreeMap<String, Vec<Bytes>>,
    start_unix_s: u64,
    counters: BrokerCounters,
}

#[derive(Default)]
struct Faults {
    drop_mid_mpub: usize,
    drop_after_mpub: usize,
    stall_until: Option<Instant>,
    /// Reads held until [`NsqBroker::release_reads`].
    hold_reads: bool,
    fail_publishes: VecDeque<ServerError>,
}

struct Topic {
    channels: BTreeMap<String, Channel>,
    /// Messages published while the topic had no channel: nsqd's topic pump holds them until
    /// the first channel appears.
    pending: VecDeque<(Msg, Option<Duration>)>,
    message_count: u64,
    message_bytes: u64,
    ephemeral: bool,
}

#[derive(Clone)]
struct Msg {
    id: MessageId,
    body: Bytes,
    timestamp_ns: i64,
    attempts: u16,
}

#[derive(Default)]
struct Channel {
    queue: VecDeque<Msg>,
    in_flight: HashMap<MessageId, InFlight>,
    deferred: Vec<(Instant, Msg)>,
    /// Subscribers in SUB order; `next` rotates delivery among them.
    clients: Vec<u64>,
    next: usize,
    message_count: u64,
    requeue_count: u64,
    timeout_count: u64,
    finished: Vec<Bytes>,
    max_total_rdy: i64,
    max_in_flight: usize,
    ephemeral: bool,
}

struct InFlight {
    msg: Msg,
    client: u64,
    delivered: Instant,
    deadline: Instant,
}

struct Client {
    /// Frames not yet handed to the writer, in the order nsqd would write them.
    outbox: BytesMut,
    /// Message frames in nsqd's output buffer (a `bufio.Writer` of `output_buffer_size`),
    /// not yet flushed to the socket; see [`Client::push_message`].
    held: BytesMut,
    /// nsqd's `flushed` in `messagePump`: nothing was sent since the pump last flushed.
    pump_flushed: bool,
    /// The output buffer ticker fired while the pump had nothing to flush: Go's ticker channel
    /// holds that one tick (nsqd v1.3.0 is built with Go 1.19), and the pump takes it as soon
    /// as it has something buffered.
    tick_pending: bool,
    /// Bytes received from the client and not yet decoded (commands held by a stall).
    unread_bytes: usize,
    /// Bytes the writer is writing now (counted for back-pressure).
    writing: usize,
    wake_writer: Arc<Notify>,
    wake_reader: Arc<Notify>,
    close_after_flush: bool,
    /// The writer is to hand its half of the socket back once the outbox is written (the TLS
    /// upgrade after IDENTIFY's answer).
    handover: bool,
    cancel: CancellationToken,
    session: Session,
    /// Upgraded to TLS: the protocol version and cipher suite as nsqd's stats name them.
    tls: Option<(String, String)>,
    /// AUTH accepted.
    authenticated: bool,
    subscription: Option<(String, String)>,
    rdy: i64,
    in_flight: i64,
    message_count: u64,
    finish_count: u64,
    requeue_count: u64,
    heartbeat_interval: Option<Duration>,
    msg_timeout: Duration,
    output_buffer_size: i64,
    output_buffer_timeout: Duration,
    sample_rate: i32,
    client_id: String,
    hostname: String,
    user_agent: String,
    remote_addr: SocketAddr,
    connect_ts: u64,
    pub_counts: BTreeMap<String, u64>,
}

impl Client {
    fn snapshot(&self, id: u64) -> ClientSnapshot {
        ClientSnapshot {
            id,
            remote_addr: self.remote_addr,
            client_id: self.client_id.clone(),
            hostname: self.hostname.clone(),
            user_agent: self.user_agent.clone(),
            state: self.session.state,
            subscription: self.subscription.clone(),
            rdy: self.rdy,
            in_flight: self.in_flight,
            message_count: self.message_count,
            finish_count: self.finish_count,
            requeue_count: self.requeue_count,
            heartbeat_interval: self.heartbeat_interval,
            msg_timeout: self.msg_timeout,
            tls: self.tls.is_some(),
            authenticated: self.authenticated,
            unread_bytes: self.unread_bytes,
        }
    }

    /// A response, error or heartbeat: nsqd's `Send` writes it behind whatever messages its
    /// output buffer holds and flushes them all.
    fn push_frame(&mut self, frame_type: u32, data: &[u8]) {
        // Nothing is written after the frame that closes the connection.
        if self.close_after_flush {
            return;
        }
        self.outbox.extend_from_slice(&self.held.split());
        encode_frame(frame_type, data, &mut self.outbox);
        self.wake_writer.notify_one();
    }

    /// A message: nsqd's `SendMessage` writes the frame into the client's `bufio.Writer` (the
    /// size, the type, then the data, three writes) without flushing. Bytes reach the socket
    /// when the buffer fills, as `bufio.Writer.Write` does (a write larger than the free space
    /// fills the buffer and flushes it; one larger than an empty buffer goes straight out), or
    /// when the pump flushes ([`Client::settle_output`], [`Client::output_tick`]).
    fn push_message(&mut self, data: &[u8]) {
        if self.close_after_flush {
            return;
        }
        let size = u32::try_from(4 + data.len()).unwrap_or(u32::MAX).to_be_bytes();
        let buffer = usize::try_from(self.output_buffer_size).unwrap_or(1).max(1);
        for mut part in [&size[..], &FRAME_TYPE_MESSAGE.to_be_bytes()[..], data] {
            while part.len() > buffer - self.held.len() {
                if self.held.is_empty() {
                    self.outbox.extend_from_slice(part);
                    part = &[];
                    break;
                }
                let n = buffer - self.held.len();
                self.held.extend_from_slice(&part[..n]);
                self.outbox.extend_from_slice(&self.held.split());
                part = &part[n..];
            }
            self.held.extend_from_slice(part);
        }
        self.pump_flushed = false;
        self.wake_writer.notify_one();
    }

    /// The top of nsqd's `messagePump` loop, run after every change to the client: a client
    /// not ready for messages (not subscribed, RDY 0, or as many in flight as RDY) is flushed
    /// at once; a ready one with something buffered takes a tick the ticker left pending.
    fn settle_output(&mut self) {
        let ready =
            self.session.state == ClientState::Subscribed && self.rdy > 0 && self.in_flight < self.rdy;
        if !ready {
            self.flush_held();
        } else if !self.pump_flushed && self.tick_pending {
            self.tick_pending = false;
            self.flush_held();
        }
    }

    /// nsqd's output buffer ticker fired (every `output_buffer_timeout`).
    fn output_tick(&mut self) {
        if self.pump_flushed {
            self.tick_pending = true;
        } else {
            self.flush_held();
        }
    }

    fn flush_held(&mut self) {
        self.pump_flushed = true;
        if !self.held.is_empty() && !self.close_after_flush {
            self.outbox.extend_from_slice(&self.held.split());
            self.wake_writer.notify_one();
        }
    }

    fn close(&mut self) {
        self.close_after_flush = true;
        self.wake_writer.notify_one();
    }

    fn eligible(&self) -> bool {
        self.session.state == ClientState::Subscribed && !self.close_after_flush && self.in_flight < self.rdy
    }
}

/// What the connection task does after a command.
#[derive(Debug)]
enum Outcome {
    Continue,
    /// IDENTIFY succeeded: restart the heartbeat ticker (interval, `None`: off) and the output
    /// buffer ticker (`output_buffer_timeout`, zero: stopped); then upgrade to TLS when it was
    /// granted.
    Identified(Option<Duration>, Duration, bool),
    /// The last frame is queued: flush and close.
    Close,
    /// Close now, without flushing: the connection was removed (restart, dropped).
    Drop,
}

impl State {
    fn new() -> State {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // Ids shaped like nsqd's (its GUID is pseudo-ms since 2010-11-04 shifted by 22 bits,
        // then hex-encoded): unique per broker, increasing, 16 ASCII hex bytes.
        let pseudo_ms = u64::try_from(now.as_nanos() >> 20).unwrap_or(0).saturating_sub(1_288_834_974_288);
        State {
            topics: BTreeMap::new(),
            clients: BTreeMap::new(),
            next_client_id: 1,
            next_guid: pseudo_ms << 22,
            faults: Faults::default(),
            published: BTreeMap::new(),
            start_unix_s: now.as_secs(),
            counters: BrokerCounters::default(),
        }
    }

    fn new_id(&mut self) -> MessageId {
        let guid = self.next_guid;
        self.next_guid += 1;
        let hex = format!("{guid:016x}");
        let mut id = [0u8; 16];
        id.copy_from_slice(&hex.as_bytes()[hex.len() - 16..]);
        MessageId(id)
    }

    fn topic(&mut self, name: &str) -> &mut Topic {
        self.topics.entry(name.to_owned()).or_insert_with(|| Topic {
            channels: BTreeMap::new(),
            pending: VecDeque::new(),
            message_count: 0,
            message_bytes: 0,
            ephemeral: name.ends_with("#ephemeral"),
        })
    }

    fn channel(&mut self, topic: &str, channel: &str, now: Instant) -> &mut Channel {
        let t = self.topic(topic);
        if !t.channels.contains_key(channel) {
            let mut ch = Channel { ephemeral: channel.ends_with("#ephemeral"), ..Channel::default() };
            if t.channels.is_empty() {
                // The first channel starts nsqd's topic pump: everything held goes to it.
                for (msg, defer) in t.pending.drain(..) {
                    ch.put(msg, defer, now);
                }
            }
            t.channels.insert(channel.to_owned(), ch);
        }
        t.channels.get_mut(channel).expect("inserted above")
    }

    /// Queues `bodies` on `topic` (copies to every channel) and records them as published.
    fn commit(&mut self, topic: &str, bodies: Vec<Bytes>, defer: Option<Duration>, now: Instant) {
        let timestamp_ns = unix_ns();
        let msgs: Vec<Msg> = bodies
            .iter()
            .map(|b| Msg { id: self.new_id(), body: b.clone(), timestamp_ns, attempts: 0 })
            .collect();
        let t = self.topic(topic);
        for msg in msgs {
            t.message_count += 1;
            t.message_bytes += msg.body.len() as u64;
            if t.channels.is_empty() {
                t.pending.push_back((msg, defer));
            } else {
                for ch in t.channels.values_mut() {
                    ch.put(msg.clone(), defer, now);
                }
            }
        }
        self.published.entry(topic.to_owned()).or_default().extend(bodies);
    }

    /// Delivers queued messages to subscribers with room in their RDY window.
    fn dispatch(&mut self, now: Instant) {
        let State { topics, clients, .. } = self;
        for t in topics.values_mut() {
            for ch in t.channels.values_mut() {
                while !ch.queue.is_empty() && !ch.clients.is_empty() {
                    let n = ch.clients.len();
                    let Some(pick) = (0..n)
                        .map(|i| (ch.next + i) % n)
                        .find(|&i| clients.get(&ch.clients[i]).is_some_and(Client::eligible))
                    else {
                        break;
                    };
                    ch.next = (pick + 1) % n;
                    let client_id = ch.clients[pick];
                    let (Some(client), Some(mut msg)) = (clients.get_mut(&client_id), ch.queue.pop_front())
                    else {
                        break;
                    };
                    msg.attempts = msg.attempts.wrapping_add(1);
                    let mut data = BytesMut::with_capacity(26 + msg.body.len());
                    data.put_i64(msg.timestamp_ns);
                    data.put_u16(msg.attempts);
                    data.put_slice(msg.id.as_bytes());
                    data.put_slice(&msg.body);
                    client.push_message(&data);
                    client.in_flight += 1;
                    client.message_count += 1;
                    client.settle_output();
                    let deadline = now + client.msg_timeout;
                    ch.in_flight
                        .insert(msg.id, InFlight { msg, client: client_id, delivered: now, deadline });
                    ch.max_in_flight = ch.max_in_flight.max(ch.in_flight.len());
                }
            }
        }
        // Every change to a client ends in dispatch: run the top of its message pump.
        for c in clients.values_mut() {
            c.settle_output();
        }
    }

    /// msg_timeout expiries and due deferred messages, as nsqd's queue scan.
    fn scan(&mut self, now: Instant) {
        let State { topics, clients, .. } = self;
        for t in topics.values_mut() {
            for ch in t.channels.values_mut() {
                let mut expired: Vec<(Instant, MessageId)> = ch
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.deadline <= now)
                    .map(|(id, f)| (f.deadline, *id))
                    .collect();
                expired.sort();
                for (_, id) in expired {
                    if let Some(f) = ch.in_flight.remove(&id) {
                        ch.timeout_count += 1;
                        if let Some(c) = clients.get_mut(&f.client) {
                            c.in_flight -= 1;
                        }
                        ch.queue.push_back(f.msg);
                    }
                }
                if ch.deferred.iter().any(|(due, _)| *due <= now) {
                    ch.deferred.sort_by_key(|(due, _)| *due);
                    let split = ch.deferred.partition_point(|(due, _)| *due <= now);
                    for (_, msg) in ch.deferred.drain(..split) {
                        ch.queue.push_back(msg);
                    }
                }
            }
        }
        self.dispatch(now);
    }

    fn restart(&mut self) {
        for c in self.clients.values() {
            c.cancel.cancel();
        }
        self.clients.clear();
        self.topics.retain(|_, t| !t.ephemeral);
        for t in self.topics.values_mut() {
            t.channels.retain(|_, ch| !ch.ephemeral);
            for ch in t.channels.values_mut() {
                // nsqd flushes the memory queue, then in-flight, then deferred messages to disk
                // and reads them back in that order.
                let mut in_flight: Vec<InFlight> = ch.in_flight.drain().map(|(_, f)| f).collect();
                in_flight.sort_by_key(|f| f.delivered);
                ch.queue.extend(in_flight.into_iter().map(|f| f.msg));
                ch.deferred.sort_by_key(|(due, _)| *due);
                ch.queue.extend(ch.deferred.drain(..).map(|(_, m)| m));
                ch.clients.clear();
                ch.next = 0;
            }
        }
        self.faults.stall_until = None;
        self.faults.hold_reads = false;
    }

    fn remove_client(&mut self, id: u64) {
        let Some(client) = self.clients.remove(&id) else { return };
        let Some((topic, channel)) = client.subscription else { return };
        let Some(t) = self.topics.get_mut(&topic) else { return };
        if let Some(ch) = t.channels.get_mut(&channel) {
            // Its in-flight messages stay in flight until their msg_timeout, as in nsqd.
            ch.clients.retain(|&c| c != id);
            ch.next = 0;
            if ch.ephemeral && ch.clients.is_empty() {
                t.channels.remove(&channel);
            }
        }
        if t.ephemeral && t.channels.is_empty() {
            self.topics.remove(&topic);
        }
    }

    fn send_error(&mut self, id: u64, error: &ServerError) -> Outcome {
        let Some(c) = self.clients.get_mut(&id) else { return Outcome::Drop };
        c.push_frame(FRAME_TYPE_ERROR, &error.text);
        if error.is_fatal() {
            c.close();
            Outcome::Close
        } else {
            Outcome::Continue
        }
    }

    fn respond(&mut self, id: u64, data: &[u8]) -> Outcome {
        match self.clients.get_mut(&id) {
            Some(c) => {
                c.push_frame(FRAME_TYPE_RESPONSE, data);
                Outcome::Continue
            }
            None => Outcome::Drop,
        }
    }

    fn execute(&mut self, id: u64, cmd: Command, now: Instant, options: &NsqBrokerOptions) -> Outcome {
        if !self.clients.contains_key(&id) {
            // Removed by a restart while this command was being read.
            return Outcome::Drop;
        }
        match cmd {
            Command::Nop => Outcome::Continue,
            Command::Identify { body } => self.identify(id, &body, options),
            Command::Auth { secret } => self.auth(id, &secret, options),
            Command::Sub { .. } | Command::Pub { .. } | Command::Mpub { .. } | Command::Dpub { .. }
                if options.auth_secrets.is_some()
                    && !self.clients.get(&id).is_some_and(|c| c.authenticated) =>
            {
                // nsqd's CheckAuth, after the command's own checks (decoded above), before it
                // touches a topic. MPUB's comes before its body, see `line_policy`.
                let verb = match cmd {
                    Command::Sub { .. } => "SUB",
                    Command::Pub { .. } => "PUB",
                    Command::Mpub { .. } => "MPUB",
                    _ => "DPUB",
                };
                let text = format!("AUTH required before {verb}");
                self.send_error(id, &ServerError::from_parts(ErrorCode::AuthFirst, text.as_bytes()))
            }
            Command::Sub { topic, channel } => {
                self.channel(&topic, &channel, now).clients.push(id);
                if let Some(c) = self.clients.get_mut(&id) {
                    c.session.state = ClientState::Subscribed;
                    c.subscription = Some((topic, channel));
                }
                let out = self.respond(id, OK);
                self.dispatch(now);
                out
            }
            Command::Pub { topic, body } => self.publish(id, &topic, vec![body], None, false, now),
            Command::Mpub { topic, bodies } => self.publish(id, &topic, bodies, None, true, now),
            Command::Dpub { topic, delay_ms, body } => {
                let defer = (delay_ms > 0).then(|| Duration::from_millis(delay_ms));
                self.publish(id, &topic, vec![body], defer, false, now)
            }
            Command::Rdy { count } => {
                let State { clients, topics, .. } = self;
                let Some(c) = clients.get_mut(&id) else { return Outcome::Drop };
                c.rdy = count;
                if let Some((t, ch)) = &c.subscription {
                    if let Some(ch) = topics.get_mut(t).and_then(|t| t.channels.get_mut(ch)) {
                        let total: i64 =
                            ch.clients.iter().filter_map(|i| clients.get(i)).map(|c| c.rdy).sum();
                        ch.max_total_rdy = ch.max_total_rdy.max(total);
                    }
                }
                self.dispatch(now);
                Outcome::Continue
            }
            Command::Fin { id: msg_id } => match self.pop_in_flight(id, &msg_id) {
                Ok((ch, f)) => {
                    ch.finished.push(f.msg.body);
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.in_flight -= 1;
                        c.finish_count += 1;
                    }
                    self.dispatch(now);
                    Outcome::Continue
                }
                Err(why) => self.send_error(id, &op_failed(ErrorCode::FinFailed, "FIN", &msg_id, why)),
            },
            Command::Req { id: msg_id, delay_ms } => match self.pop_in_flight(id, &msg_id) {
                Ok((ch, f)) => {
                    ch.requeue_count += 1;
                    ch.put(f.msg, (delay_ms > 0).then(|| Duration::from_millis(delay_ms)), now);
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.in_flight -= 1;
                        c.requeue_count += 1;
                    }
                    self.dispatch(now);
                    Outcome::Continue
                }
                Err(why) => self.send_error(id, &op_failed(ErrorCode::ReqFailed, "REQ", &msg_id, why)),
            },
            Command::Touch { id: msg_id } => {
                let msg_timeout = self.clients.get(&id).map_or(options.msg_timeout, |c| c.msg_timeout);
                match self.pop_in_flight(id, &msg_id) {
                    Ok((ch, mut f)) => {
                        // nsqd never extends a message past max_msg_timeout from its delivery.
                        f.deadline = (now + msg_timeout).min(f.delivered + options.max_msg_timeout);
                        ch.in_flight.insert(msg_id, f);
                        Outcome::Continue
                    }
                    Err(why) => {
                        self.send_error(id, &op_failed(ErrorCode::TouchFailed, "TOUCH", &msg_id, why))
                    }
                }
            }
            Command::Cls => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.rdy = 0;
                    c.session.state = ClientState::Closing;
                }
                self.respond(id, CLOSE_WAIT)
            }
        }
    }

    /// nsqd's `popInFlightMessage`: the message must be in flight and owned by this client.
    fn pop_in_flight(
        &mut self,
        id: u64,
        msg_id: &MessageId,
    ) -> Result<(&mut Channel, InFlight), &'static str> {
        let Some((topic, channel)) = self.clients.get(&id).and_then(|c| c.subscription.clone()) else {
            return Err("ID not in flight");
        };
        let Some(ch) = self.topics.get_mut(&topic).and_then(|t| t.channels.get_mut(&channel)) else {
            return Err("ID not in flight");
        };
        match ch.in_flight.get(msg_id) {
            None => Err("ID not in flight"),
            Some(f) if f.client != id => Err("client does not own message"),
            Some(_) => {
                let f = ch.in_flight.remove(msg_id).expect("checked above");
                Ok((ch, f))
            }
        }
    }

    fn publish(
        &mut self,
        id: u64,
        topic: &str,
        bodies: Vec<Bytes>,
        defer: Option<Duration>,
        mpub: bool,
        now: Instant,
    ) -> Outcome {
        if let Some(error) = self.faults.fail_publishes.pop_front() {
            return self.send_error(id, &error);
        }
        let drop_after = mpub && self.faults.drop_after_mpub > 0;
        if drop_after {
            self.faults.drop_after_mpub -= 1;
        }
        let n = bodies.len() as u64;
        self.commit(topic, bodies, defer, now);
        if let Some(c) = self.clients.get_mut(&id) {
            *c.pub_counts.entry(topic.to_owned()).or_default() += n;
        }
        self.dispatch(now);
        if drop_after {
            // Close without the OK; answers queued before it still go out, as nsqd flushes
            // every answer when it is sent.
            if let Some(c) = self.clients.get_mut(&id) {
                c.close();
            }
            return Outcome::Close;
        }
        self.respond(id, OK)
    }

    /// nsqd's AUTH after the checks `decode_command` made (state, parameters, body size):
    /// `AUTH already set`, `E_AUTH_DISABLED`, then the auth server's verdict.
    fn auth(&mut self, id: u64, secret: &[u8], options: &NsqBrokerOptions) -> Outcome {
        let Some(c) = self.clients.get_mut(&id) else { return Outcome::Drop };
        if c.authenticated {
            return self.send_error(id, &ServerError::from_parts(ErrorCode::Invalid, b"AUTH already set"));
        }
        let Some(secrets) = &options.auth_secrets else {
            return self.send_error(id, &ServerError::from_parts(ErrorCode::AuthDisabled, b"AUTH disabled"));
        };
        if !secrets.iter().any(|s| s.as_bytes() == secret) {
            // The auth server refused (HTTP 403): nsqd does not tell the client why.
            self.counters.auth_refused += 1;
            return self.send_error(id, &ServerError::from_parts(ErrorCode::AuthFailed, b"AUTH failed"));
        }
        self.counters.auth_accepted += 1;
        c.authenticated = true;
        #[derive(serde::Serialize)]
        struct AuthAnswer {
            identity: &'static str,
            identity_url: &'static str,
            permission_count: usize,
        }
        let answer = AuthAnswer {
            identity: AUTH_IDENTITY,
            identity_url: AUTH_IDENTITY_URL,
            permission_count: AUTH_PERMISSION_COUNT,
        };
        let json = serde_json::to_vec(&answer).expect("AUTH answer serializes");
        self.respond(id, &json)
    }

    fn identify(&mut self, id: u64, body: &[u8], options: &NsqBrokerOptions) -> Outcome {
        let Ok(data) = serde_json::from_slice::<IdentifyConfig>(body) else {
            return self.send_error(
                id,
                &ServerError::from_parts(ErrorCode::BadBody, b"IDENTIFY failed to decode JSON body"),
            );
        };
        let Some(c) = self.clients.get_mut(&id) else { return Outcome::Drop };
        match identify_answer(c, &data, options) {
            Ok(answer) => {
                c.push_frame(FRAME_TYPE_RESPONSE, &answer);
                // nsqd upgrades right after the answer is sent. A connection already upgraded
                // (a second IDENTIFY) is not upgraded again.
                let upgrade =
                    data.feature_negotiation && data.tls_v1 && options.tls.is_some() && c.tls.is_none();
                if upgrade {
                    c.handover = true;
                    c.wake_writer.notify_one();
                }
                Outcome::Identified(c.heartbeat_interval, c.output_buffer_timeout, upgrade)
            }
            Err(e) => self.send_error(id, &e),
        }
    }
}

/// Applies IDENTIFY to the client and builds nsqd's answer: `OK`, or the JSON with
/// `feature_negotiation`.
fn identify_answer(
    c: &mut Client,
    data: &IdentifyConfig,
    options: &NsqBrokerOptions,
) -> Result<Vec<u8>, ServerError> {
    c.client_id = data.client_id.clone();
    c.hostname = data.hostname.clone();
    c.user_agent = data.user_agent.clone();
    if let Err(why) = apply_identify(c, data, options) {
        return Err(ServerError::from_parts(ErrorCode::BadBody, format!("IDENTIFY {why}").as_bytes()));
    }
    if !data.feature_negotiation {
        return Ok(OK.to_vec());
    }
    // No deflate or snappy here: nsqd with those disabled answers false and level 6.
    let answer = IdentifyResponse {
        max_rdy_count: options.max_rdy_count,
        version: VERSION.to_owned(),
        max_msg_timeout: millis(options.max_msg_timeout),
        msg_timeout: millis(c.msg_timeout),
        tls_v1: options.tls.is_some() && data.tls_v1,
        deflate: false,
        deflate_level: 6.min(MAX_DEFLATE_LEVEL),
        max_deflate_level: MAX_DEFLATE_LEVEL,
        snappy: false,
        sample_rate: c.sample_rate,
        auth_required: options.auth_secrets.is_some(),
        output_buffer_size: c.output_buffer_size,
        output_buffer_timeout: millis(c.output_buffer_timeout),
    };
    serde_json::to_vec(&answer).map_err(|e| {
        ServerError::from_parts(ErrorCode::IdentifyFailed, format!("IDENTIFY failed {e}").as_bytes())
    })
}

impl Channel {
    fn put(&mut self, msg: Msg, defer: Option<Duration>, now: Instant) {
        self.message_count += 1;
        match defer {
            Some(d) => self.deferred.push((now + d, msg)),
            None => self.queue.push_back(msg),
        }
    }
}

/// nsqd's `clientV2.Identify` checks, in its order, with its texts.
fn apply_identify(c: &mut Client, data: &IdentifyConfig, o: &NsqBrokerOptions) -> Result<(), String> {
    match data.heartbeat_interval {
        -1 => c.heartbeat_interval = None,
        0 => {}
        ms if ms >= 1000 && ms <= millis(o.max_heartbeat_interval) => {
            c.heartbeat_interval = Some(Duration::from_millis(ms as u64))
        }
        ms => return Err(format!("heartbeat interval ({ms}) is invalid")),
    }
    let (size, timeout) = (data.output_buffer_size, data.output_buffer_timeout);
    match timeout {
        -1 => c.output_buffer_timeout = Duration::ZERO,
        0 => {}
        ms if ms >= millis(o.min_output_buffer_timeout) && ms <= millis(o.max_output_buffer_timeout) => {
            c.output_buffer_timeout = Duration::from_millis(ms as u64)
        }
        ms => return Err(format!("output buffer timeout ({ms}) is invalid")),
    }
    match size {
        -1 => {
            c.output_buffer_size = 1;
            c.output_buffer_timeout = Duration::ZERO;
        }
        0 => {}
        n if n >= 64 && n <= MAX_OUTPUT_BUFFER_BYTES as i64 => c.output_buffer_size = n,
        n => return Err(format!("output buffer size ({n}) is invalid")),
    }
    if !(0..=99).contains(&data.sample_rate) {
        return Err(format!("sample rate ({}) is invalid", data.sample_rate));
    }
    c.sample_rate = data.sample_rate;
    match data.msg_timeout {
        0 => {}
        ms if ms >= 1000 && ms <= millis(o.max_msg_timeout) => {
            c.msg_timeout = Duration::from_millis(ms as u64)
        }
        ms => return Err(format!("msg timeout ({ms}) is invalid")),
    }
    c.session.heartbeats_enabled = c.heartbeat_interval.is_some();
    Ok(())
}

fn op_failed(code: ErrorCode, verb: &str, id: &MessageId, why: &str) -> ServerError {
    let mut d = format!("{verb} ").into_bytes();
    d.extend_from_slice(id.as_bytes());
    d.extend_from_slice(format!(" failed {why}").as_bytes());
    ServerError::from_parts(code, &d)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Tasks

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    tokio::spawn(serve(inner.clone(), stream, peer, token.child_token()));
                }
            }
        }
    }
}

async fn scan_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.options.queue_scan_interval);
    loop {
        tokio::select! {
            _ = inner.root.cancelled() => return,
            _ = tick.tick() => inner.state().scan(Instant::now()),
        }
    }
}

/// How a connection ends.
enum End {
    /// Flush what is queued, then close.
    Graceful,
    /// Close now.
    Abrupt,
    /// IDENTIFY granted `tls_v1`: its answer is queued; hand the socket over for the upgrade.
    UpgradeTls,
}

/// The reader's timers and unread input, kept across the TLS upgrade.
struct ReadState {
    input: BytesMut,
    heartbeat: Option<Duration>,
    next_heartbeat: Option<Instant>,
    deadline: Option<Instant>,
    /// The output buffer ticker's period (`None`: stopped) and next tick.
    flush_period: Option<Duration>,
    next_flush: Option<Instant>,
}

async fn serve(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr, token: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut magic = [0u8; 4];
    tokio::select! {
        _ = token.cancelled() => return,
        read = rd.read_exact(&mut magic) => if read.is_err() { return },
    }
    if &magic != MAGIC_V2 {
        let mut frame = BytesMut::new();
        encode_frame(FRAME_TYPE_ERROR, ErrorCode::BadProtocol.as_str().as_bytes(), &mut frame);
        let _ = wr.write_all(&frame).await;
        let _ = wr.shutdown().await;
        drain(&mut rd).await;
        return;
    }
    let wake_writer = Arc::new(Notify::new());
    let wake_reader = Arc::new(Notify::new());
    let default_heartbeat = Some(inner.options.client_timeout / 2).filter(|d| !d.is_zero());
    let id = {
        let mut st = inner.state();
        let id = st.next_client_id;
        st.next_client_id += 1;
        st.counters.connections += 1;
        let ip = peer.ip().to_string();
        st.clients.insert(
            id,
            Client {
                outbox: BytesMut::new(),
                held: BytesMut::new(),
                pump_flushed: true,
                tick_pending: false,
                unread_bytes: 0,
                writing: 0,
                wake_writer: wake_writer.clone(),
                wake_reader: wake_reader.clone(),
                close_after_flush: false,
                handover: false,
                cancel: token.clone(),
                session: Session {
                    state: ClientState::Init,
                    heartbeats_enabled: default_heartbeat.is_some(),
                },
                tls: None,
                authenticated: false,
                subscription: None,
                rdy: 0,
                in_flight: 0,
                message_count: 0,
                finish_count: 0,
                requeue_count: 0,
                heartbeat_interval: default_heartbeat,
                msg_timeout: inner.options.msg_timeout,
                output_buffer_size: OUTPUT_BUFFER_BYTES as i64,
                output_buffer_timeout: inner.options.output_buffer_timeout,
                sample_rate: 0,
                client_id: ip.clone(),
                hostname: ip,
                user_agent: String::new(),
                remote_addr: peer,
                connect_ts: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                pub_counts: BTreeMap::new(),
            },
        );
        id
    };
    let start = Instant::now();
    // nsqd starts a client's message pump, with its heartbeat and output buffer tickers, as
    // soon as the client has sent the magic.
    let flush_period = Some(inner.options.output_buffer_timeout).filter(|d| !d.is_zero());
    let mut rs = ReadState {
        input: BytesMut::with_capacity(16 * 1024),
        heartbeat: default_heartbeat,
        next_heartbeat: default_heartbeat.map(|d| start + d),
        deadline: default_heartbeat.map(|d| start + 2 * d),
        flush_period,
        next_flush: flush_period.map(|d| start + d),
    };
    let plain = run_connection(&inner, id, rd, wr, &token, &wake_writer, &wake_reader, &mut rs).await;
    if let Some((rd, wr)) = plain {
        let tcp = rd.reunite(wr).expect("the halves of one socket");
        // nsqd's bufio.Reader is replaced by one over the TLS connection: plain bytes read
        // after IDENTIFY and not yet parsed are lost (a client sends none before the upgrade).
        rs.input.clear();
        if let Some(tls) = upgrade_tls(&inner, id, tcp, &token).await {
            // After IDENTIFY nsqd sets the read deadline again before the next command.
            rs.deadline = rs.heartbeat.map(|d| Instant::now() + 2 * d);
            let (rd, wr) = tokio::io::split(tls);
            // Only one upgrade per connection, so this cannot hand over again.
            let _ = run_connection(&inner, id, rd, wr, &token, &wake_writer, &wake_reader, &mut rs).await;
        }
    }
    inner.state().remove_client(id);
}

/// Serves the connection over `rd`/`wr` until it ends (`None`), or until IDENTIFY granted TLS:
/// then its answer is written and the halves are handed back for the upgrade.
#[allow(clippy::too_many_arguments)]
async fn run_connection<R, W>(
    inner: &Arc<Inner>,
    id: u64,
    mut rd: R,
    wr: W,
    token: &CancellationToken,
    wake_writer: &Arc<Notify>,
    wake_reader: &Arc<Notify>,
    rs: &mut ReadState,
) -> Option<(R, W)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = tokio::spawn(write_loop(
        inner.clone(),
        id,
        wr,
        wake_writer.clone(),
        wake_reader.clone(),
        token.clone(),
    ));
    let end = read_loop(inner, id, &mut rd, token, wake_reader, rs).await;
    match end {
        End::Graceful => {
            if let Some(c) = inner.state().clients.get_mut(&id) {
                c.close();
            }
            tokio::select! {
                _ = token.cancelled() => {}
                _ = writer => {}
            }
            drain(&mut rd).await;
            None
        }
        End::Abrupt => {
            writer.abort();
            None
        }
        End::UpgradeTls => {
            let wr = tokio::select! {
                _ = token.cancelled() => None,
                wr = writer => wr.ok().flatten(),
            };
            wr.map(|wr| (rd, wr))
        }
    }
}

/// nsqd's `clientV2.UpgradeTLS` and what IDENTIFY does after it: the server handshake within
/// 5 s, then `OK` over TLS. A failed handshake gets `E_IDENTIFY_FAILED IDENTIFY failed <why>`,
/// written in plain text as nsqd does (its writer is still the plain one), and the close.
async fn upgrade_tls(
    inner: &Arc<Inner>,
    id: u64,
    tcp: TcpStream,
    token: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let tls = inner.options.tls.as_ref()?;
    let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(tcp).into_fallible();
    let result = tokio::select! {
        _ = token.cancelled() => return None,
        r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept) => r,
    };
    let (why, tcp) = match result {
        Ok(Ok(stream)) => {
            let (_, conn) = stream.get_ref();
            let version = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLS1.2".to_owned(),
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS1.3".to_owned(),
                other => format!("Unknown {}", other.map_or(0, u16::from)),
            };
            let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
            // nsqd names only a few TLS 1.2 suites; any other is "Unknown <number>".
            let suite = match suite.and_then(|s| s.as_str()) {
                Some(
                    name @ ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
                    | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
                ) => name.to_owned(),
                _ => format!("Unknown {}", suite.map_or(0, u16::from)),
            };
            let mut st = inner.state();
            st.counters.tls_upgrades += 1;
            let c = st.clients.get_mut(&id)?;
            c.tls = Some((version, suite));
            c.handover = false;
            c.push_frame(FRAME_TYPE_RESPONSE, OK);
            return Some(stream);
        }
        Ok(Err((e, tcp))) => (e.to_string(), Some(tcp)),
        Err(_) => ("i/o timeout".to_owned(), None),
    };
    inner.state().counters.tls_failures += 1;
    if let Some(mut tcp) = tcp {
        let mut frame = BytesMut::new();
        encode_frame(
            FRAME_TYPE_ERROR,
            format!("E_IDENTIFY_FAILED IDENTIFY failed {why}").as_bytes(),
            &mut frame,
        );
        let _ = tokio::time::timeout(CLOSE_DRAIN, async {
            let _ = tcp.write_all(&frame).await;
            let _ = tcp.shutdown().await;
        })
        .await;
    }
    None
}

/// Reads and discards what the peer still sends, briefly and boundedly.
async fn drain<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut sink = vec![0u8; 16 * 1024];
    let mut total = 0;
    let until = Instant::now() + CLOSE_DRAIN;
    while total < CLOSE_DRAIN_BYTES {
        match tokio::time::timeout_at(until, rd.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

/// Writes the client's outbox as it fills. Returns its half of the socket when asked to hand
/// it over (TLS upgrade) once everything queued is written; `None` when the connection ends.
async fn write_loop<W: AsyncWrite + Unpin>(
    inner: Arc<Inner>,
    id: u64,
    mut wr: W,
    wake: Arc<Notify>,
    wake_reader: Arc<Notify>,
    token: CancellationToken,
) -> Option<W> {
    loop {
        let (chunk, close, handover, deadline) = {
            let mut st = inner.state();
            let c = st.clients.get_mut(&id)?;
            let chunk = c.outbox.split().freeze();
            c.writing = chunk.len();
            (chunk, c.close_after_flush, c.handover, c.heartbeat_interval)
        };
        if !chunk.is_empty() {
            let write = async {
                wr.write_all(&chunk).await?;
                // TLS buffers records until flushed (a no-op on TCP).
                wr.flush().await
            };
            // nsqd sets a write deadline of one heartbeat interval on every send.
            let written = match deadline {
                Some(d) => matches!(tokio::time::timeout(d, write).await, Ok(Ok(()))),
                None => write.await.is_ok(),
            };
            if let Some(c) = inner.state().clients.get_mut(&id) {
                c.writing = 0;
            }
            wake_reader.notify_one();
            if !written {
                token.cancel();
                return None;
            }
            continue;
        }
        if close {
            let _ = wr.shutdown().await;
            return None;
        }
        if handover {
            return Some(wr);
        }
        tokio::select! {
            _ = token.cancelled() => return None,
            _ = wake.notified() => {}
        }
    }
}

/// nsqd's checks made on the command line alone, before the command's own: the TLS policy
/// (`enforceTLSPolicy`, every command but IDENTIFY) and MPUB's CheckAuth, which comes before
/// its body is read (SUB, PUB and DPUB check auth after their own checks, in `execute`).
fn line_policy(
    input: &[u8],
    limits: &CommandLimits,
    options: &NsqBrokerOptions,
    c: &Client,
) -> Option<ServerError> {
    let tls_refused = options.tls_required && c.tls.is_none();
    let auth_first = options.auth_secrets.is_some() && !c.authenticated;
    if !tls_refused && !auth_first {
        return None;
    }
    let window = &input[..input.len().min(limits.max_line_bytes)];
    let mut line = &window[..memchr::memchr(b'\n', window)?];
    if let Some(trimmed) = line.strip_suffix(b"\r") {
        line = trimmed;
    }
    let params: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let verb = params[0];
    if tls_refused && verb != b"IDENTIFY" {
        let text = format!("cannot {} in current state (TLS required)", String::from_utf8_lossy(verb));
        return Some(ServerError::from_parts(ErrorCode::Invalid, text.as_bytes()));
    }
    let topic_ok =
        params.get(1).is_some_and(|t| std::str::from_utf8(t).is_ok_and(logmill::nsq::protocol::valid_name));
    if verb == b"MPUB" && topic_ok && auth_first {
        return Some(ServerError::from_parts(ErrorCode::AuthFirst, b"AUTH required before MPUB"));
    }
    None
}

async fn read_loop<R: AsyncRead + Unpin>(
    inner: &Arc<Inner>,
    id: u64,
    rd: &mut R,
    token: &CancellationToken,
    wake_reader: &Notify,
    rs: &mut ReadState,
) -> End {
    let far = Duration::from_secs(24 * 60 * 60);
    let ReadState { input, heartbeat, next_heartbeat, deadline, flush_period, next_flush } = rs;
    let mut eof = false;
    loop {
        // Registered before the state is read, so a release in between is not missed.
        let released = inner.reads_released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let now = Instant::now();
        let stalled_until = {
            let mut st = inner.state();
            let stalled_until = if st.faults.hold_reads {
                Some(now + far)
            } else {
                st.faults.stall_until.filter(|&t| t > now)
            };
            let Some(c) = st.clients.get_mut(&id) else { return End::Abrupt };
            c.unread_bytes = input.len();
            if c.close_after_flush {
                // A fatal error was sent (an injected one, say): like nsqd, read no more.
                return End::Graceful;
            }
            stalled_until
        };
        if stalled_until.is_none() && !input.is_empty() {
            let mut progressed = false;
            loop {
                let (session, mid_mpub, refused) = {
                    let mut st = inner.state();
                    let Some(c) = st.clients.get(&id) else { return End::Abrupt };
                    let session = c.session;
                    let refused = line_policy(input, &inner.limits, &inner.options, c);
                    let mid_mpub = refused.is_none()
                        && st.faults.drop_mid_mpub > 0
                        && input.starts_with(b"MPUB ")
                        && memchr::memchr(b'\n', input).is_some();
                    if mid_mpub {
                        st.faults.drop_mid_mpub -= 1;
                    }
                    (session, mid_mpub, refused)
                };
                if mid_mpub {
                    // Answers to earlier commands still go out (nsqd flushes each when sent);
                    // the MPUB gets none.
                    return End::Graceful;
                }
                let outcome = if let Some(e) = refused {
                    inner.state().send_error(id, &e)
                } else {
                    match decode_command(input, &inner.limits, session) {
                        Ok(None) => break,
                        Ok(Some(cmd)) => inner.state().execute(id, cmd, Instant::now(), &inner.options),
                        Err(CommandError::Fatal(e)) => inner.state().send_error(id, &e),
                        // nsqd drops a client whose line overflows its read buffer, without a word.
                        Err(_) => Outcome::Close,
                    }
                };
                progressed = true;
                match outcome {
                    Outcome::Continue => {}
                    Outcome::Identified(hb, output_buffer_timeout, upgrade) => {
                        *heartbeat = hb;
                        *next_heartbeat = hb.map(|d| Instant::now() + d);
                        // A new output buffer ticker (a new channel: no tick pending), or, at
                        // zero, the old one stopped (a tick it left stays pending).
                        if !output_buffer_timeout.is_zero() {
                            *flush_period = Some(output_buffer_timeout);
                            *next_flush = Some(Instant::now() + output_buffer_timeout);
                            if let Some(c) = inner.state().clients.get_mut(&id) {
                                c.tick_pending = false;
                            }
                        } else {
                            *flush_period = None;
                            *next_flush = None;
                        }
                        if upgrade {
                            return End::UpgradeTls;
                        }
                    }
                    Outcome::Close => return End::Graceful,
                    Outcome::Drop => return End::Abrupt,
                }
                // Back-pressure: like nsqd blocked in a write, stop reading commands while the
                // client is not reading our answers.
                loop {
                    let pending = match inner.state().clients.get(&id) {
                        Some(c) => c.outbox.len() + c.writing,
                        None => return End::Abrupt,
                    };
                    if pending <= MAX_OUTPUT_BUFFER_BYTES {
                        break;
                    }
                    tokio::select! {
                        _ = token.cancelled() => return End::Abrupt,
                        _ = wake_reader.notified() => {}
                    }
                }
            }
            if progressed {
                // nsqd sets the read deadline before reading each command line.
                *deadline = heartbeat.map(|d| Instant::now() + 2 * d);
            }
        }
        if eof && stalled_until.is_none() {
            return End::Graceful;
        }
        let now = Instant::now();
        tokio::select! {
            biased;
            _ = token.cancelled() => return End::Abrupt,
            _ = sleep_until(next_heartbeat.unwrap_or(now + far)), if next_heartbeat.is_some() => {
                if let Some(c) = inner.state().clients.get_mut(&id) {
                    c.push_frame(FRAME_TYPE_RESPONSE, HEARTBEAT);
                }
                *next_heartbeat = next_heartbeat.zip(*heartbeat).map(|(t, d)| t + d);
            }
            _ = sleep_until(deadline.unwrap_or(now + far)), if deadline.is_some() && stalled_until.is_none() => {
                // A heartbeat due at the same instant goes out first (nsqd's ticker and its
                // read deadline start together; the recording shows both heartbeats).
                if let (Some(hb), Some(dl)) = (*next_heartbeat, *deadline) {
                    if hb <= dl {
                        if let Some(c) = inner.state().clients.get_mut(&id) {
                            c.push_frame(FRAME_TYPE_RESPONSE, HEARTBEAT);
                        }
                    }
                }
                return End::Graceful;
            }
            _ = sleep_until(next_flush.unwrap_or(now + far)), if next_flush.is_some() => {
                if let Some(c) = inner.state().clients.get_mut(&id) {
                    c.output_tick();
                }
                // Go's ticker drops the ticks a slow receiver missed.
                if let (Some(t), Some(period)) = (next_flush.as_mut(), *flush_period) {
                    let now = Instant::now();
                    while *t <= now {
                        *t += period;
                    }
                }
            }
            _ = sleep_until(stalled_until.unwrap_or(now + far)), if stalled_until.is_some() => {
                *deadline = heartbeat.map(|d| Instant::now() + 2 * d);
            }
            _ = &mut released, if stalled_until.is_some() => {
                *deadline = heartbeat.map(|d| Instant::now() + 2 * d);
            }
            // The writer made room, or the client was closed from outside (an injected error).
            _ = wake_reader.notified() => {}
            // While reads are stalled, bytes are still received (up to a bound), not decoded:
            // a test can see what a client pipelined ([`ClientSnapshot::unread_bytes`]).
            read = rd.read_buf(input), if !eof && (stalled_until.is_none() || input.len() < STALLED_INPUT_MAX_BYTES) => match read {
                // The client closed; what it sent before is still read once the stall ends.
                Ok(0) if stalled_until.is_some() => eof = true,
                Ok(0) => return End::Graceful,
                Ok(_) => {}
                Err(_) => return End::Abrupt,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API: just enough of nsqd's for clients that create topics and channels up front and
// for stats readers.

async fn http_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        tokio::select! {
            _ = inner.root.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(HTTP_TIMEOUT, http_serve(inner, stream)).await;
                    });
                }
            }
        }
    }
}

async fn http_serve(inner: Arc<Inner>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > HTTP_MAX_HEAD_BYTES || stream.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut request_line = text.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: HashMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let (status, body, json) = http_route(&inner, &method, path, &params);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let content_type = if json { "Content-Type: application/json; charset=utf-8\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{content_type}X-NSQ-Content-Type: nsq; version=1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

fn http_error(status: u16, message: &str) -> (u16, Vec<u8>, bool) {
    (status, serde_json::json!({ "message": message }).to_string().into_bytes(), true)
}

fn http_route(
    inner: &Inner,
    method: &str,
    path: &str,
    params: &HashMap<String, String>,
) -> (u16, Vec<u8>, bool) {
    let topic = || match params.get("topic") {
        None => Err(http_error(400, "MISSING_ARG_TOPIC")),
        Some(t) if !logmill::nsq::protocol::valid_name(t) => Err(http_error(400, "INVALID_TOPIC")),
        Some(t) => Ok(t.clone()),
    };
    match (method, path) {
        ("GET", "/ping") => (200, b"OK".to_vec(), false),
        ("POST", "/topic/create") => match topic() {
            Ok(t) => {
                inner.state().topic(&t);
                (200, Vec::new(), false)
            }
            Err(e) => e,
        },
        ("POST", "/channel/create") => {
            // nsqd's getExistingTopicFromQuery and GetTopicChannelArgs, in their order and
            // with their texts (which differ from /topic/create's).
            let valid = logmill::nsq::protocol::valid_name;
            let (t, c) = match (params.get("topic"), params.get("channel")) {
                (None, _) => return http_error(400, "MISSING_ARG_TOPIC"),
                (Some(t), _) if !valid(t) => return http_error(400, "INVALID_ARG_TOPIC"),
                (_, None) => return http_error(400, "MISSING_ARG_CHANNEL"),
                (_, Some(c)) if !valid(c) => return http_error(400, "INVALID_ARG_CHANNEL"),
                (Some(t), Some(c)) => (t, c),
            };
            let now = Instant::now();
            let mut st = inner.state();
            if !st.topics.contains_key(t) {
                return http_error(404, "TOPIC_NOT_FOUND");
            }
            st.channel(t, c, now);
            st.dispatch(now);
            (200, Vec::new(), false)
        }
        ("GET", "/stats") => {
            let stats = inner.state().stats_json();
            if params.get("format").map(String::as_str) == Some("json") {
                (200, stats.to_string().into_bytes(), true)
            } else {
                (200, format!("nsqd v{VERSION} (test broker)\n{stats:#}\n").into_bytes(), false)
            }
        }
        (_, "/ping" | "/topic/create" | "/channel/create" | "/stats") => {
            http_error(405, "METHOD_NOT_ALLOWED")
        }
        _ => http_error(404, "NOT_FOUND"),
    }
}

impl State {
    /// `GET /stats?format=json` in nsqd v1.3.0's shape.
    fn stats_json(&self) -> serde_json::Value {
        use serde_json::json;
        let latency = json!({ "count": 0, "percentiles": null });
        let client_json = |id: &u64| {
            self.clients.get(id).map(|c| {
                let (tls_version, tls_cipher_suite) = c.tls.clone().unwrap_or_default();
                let mut j = json!({
                    "client_id": c.client_id, "hostname": c.hostname, "version": "V2",
                    "remote_address": c.remote_addr.to_string(),
                    "state": match c.session.state { ClientState::Init => 0, ClientState::Subscribed => 3, ClientState::Closing => 4 },
                    "ready_count": c.rdy, "in_flight_count": c.in_flight, "message_count": c.message_count,
                    "finish_count": c.finish_count, "requeue_count": c.requeue_count, "connect_ts": c.connect_ts,
                    "sample_rate": c.sample_rate, "deflate": false, "snappy": false, "user_agent": c.user_agent,
                    "tls": c.tls.is_some(), "tls_cipher_suite": tls_cipher_suite, "tls_version": tls_version,
                    "tls_negotiated_protocol": "", "tls_negotiated_protocol_is_mutual": false,
                });
                // nsqd's `authed`, `auth_identity`, `auth_identity_url` are `omitempty`.
                if c.authenticated {
                    j["authed"] = json!(true);
                    j["auth_identity"] = json!(AUTH_IDENTITY);
                    if !AUTH_IDENTITY_URL.is_empty() {
                        j["auth_identity_url"] = json!(AUTH_IDENTITY_URL);
                    }
                }
                j
            })
        };
        let topics: Vec<_> = self
            .topics
            .iter()
            .map(|(name, t)| {
                let channels: Vec<_> = t
                    .channels
                    .iter()
                    .map(|(cname, ch)| {
                        let clients: Vec<_> = ch.clients.iter().filter_map(client_json).collect();
                        json!({
                            "channel_name": cname, "depth": ch.queue.len(), "backend_depth": 0,
                            "in_flight_count": ch.in_flight.len(), "deferred_count": ch.deferred.len(),
                            "message_count": ch.message_count, "requeue_count": ch.requeue_count,
                            "timeout_count": ch.timeout_count, "client_count": clients.len(), "clients": clients,
                            "paused": false, "e2e_processing_latency": latency,
                        })
                    })
                    .collect();
                json!({
                    "topic_name": name, "channels": channels, "depth": t.pending.len(), "backend_depth": 0,
                    "message_count": t.message_count, "message_bytes": t.message_bytes, "paused": false,
                    "e2e_processing_latency": latency,
                })
            })
            .collect();
        let producers: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.pub_counts.is_empty())
            .filter_map(|(id, c)| {
                let mut j = client_json(id)?;
                let counts: Vec<_> =
                    c.pub_counts.iter().map(|(t, n)| json!({ "topic": t, "count": n })).collect();
                j["pub_counts"] = json!(counts);
                Some(j)
            })
            .collect();
        json!({
            "version": VERSION, "health": "OK", "start_time": self.start_unix_s, "topics": topics,
            "memory": {
                "heap_objects": 0, "heap_idle_bytes": 0, "heap_in_use_bytes": 0, "heap_released_bytes": 0,
                "gc_pause_usec_100": 0, "gc_pause_usec_99": 0, "gc_pause_usec_95": 0, "next_gc_bytes": 0,
                "gc_total_runs": 0,
            },
            "producers": producers,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

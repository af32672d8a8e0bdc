//! Real NSQ servers for tests: a throwaway `nsqd` (and, where a test needs one, `nsqlookupd`)
//! on loopback ports in its own temp dir, or, on a machine without the binaries, the
//! in-process test broker ([`super::nsq_broker`]) in its place.
//!
//! Binaries are looked up as the shared peers README says, the same way `scripts/test` does
//! before it runs the tests (and prints what it found): `$NSQD` / `$NSQLOOKUPD` when set, else
//! `nsqd` / `nsqlookupd` on `PATH`, else `../shared/peers/bin/` beside the crate root (where
//! CI keeps the real v1.3.0 build). A variable set to something that is not a file is a panic:
//! an explicit choice that does not work must not quietly turn into the broker.
//!
//! Where no `nsqd` is found, [`NsqServer::start`] falls back to the test broker and says so
//! once per test binary on stderr, and a test that only a real server can run
//! ([`Nsqd::start`] returns `None`) says that it is skipped ([`skip`]). The notices are written
//! with `std::io::stderr().write_all`, which libtest does not capture (it captures `print!`
//! and `eprint!` of passing tests only), so they show in `cargo test`'s output.
//!
//! Processes: each server gets free loopback ports picked up front (nsqd announces to
//! nsqlookupd the port it was given, so port 0 is of no use with lookupd) and its own temp dir
//! for data and its log; readiness is `GET /ping` answering `OK`. [`Nsqd::stop`] (SIGTERM,
//! nsqd persists its queues), [`Nsqd::kill`] (SIGKILL) and [`Nsqd::restart`] (same data dir,
//! same ports, so clients reconnect to the address they know). Dropping a server SIGKILLs and
//! reaps its process, also when the test panics; and every child is started with
//! `PR_SET_PDEATHSIG`, so even a test binary that is itself killed (a CI timeout) leaves no
//! nsqd behind.
//!
//! Include it with `mod support;` (`support/mod.rs`, beside `nsq_broker.rs`).
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::nsq_broker::{NsqBroker, NsqBrokerOptions};

/// How long a server may take to answer `/ping`. nsqd needs a few milliseconds when idle; on
/// a loaded 2-core machine with other engineers compiling, allow much more.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Nsqd::stop`] waits after SIGTERM before SIGKILL. nsqd flushes its memory queues
/// to disk and exits in milliseconds; a long wait means it is stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two `/ping` attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Attempts at a first start: free ports are found by binding port 0 and closing the
/// listener, so another process may take one before the server binds it.
const START_ATTEMPTS: usize = 3;
/// Bytes of a server's log quoted in panic messages.
const LOG_TAIL_BYTES: usize = 4096;
/// Timeout of one HTTP request to a server (stats, topic creation, publishing).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Finding the binaries

/// The `nsqd` the tests use, or `None` (after the fallback notice) when there is none.
pub fn nsqd_binary() -> Option<&'static Path> {
    static NSQD: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = NSQD.get_or_init(|| {
        let found = find_binary("NSQD", "nsqd");
        if found.is_none() {
            notice(
                "no nsqd binary found ($NSQD, PATH, ../shared/peers/bin/): the NSQ tests run against \
                 the in-process test broker (tests/support/nsq_broker.rs) instead, and the tests that \
                 need a real nsqd are SKIPPED (each says so). CI runs them against the real nsqd.",
            );
        }
        found
    });
    found.as_deref()
}

/// The `nsqlookupd` the tests use, or `None` (said once) when there is none.
pub fn nsqlookupd_binary() -> Option<&'static Path> {
    static NSQLOOKUPD: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = NSQLOOKUPD.get_or_init(|| {
        let found = find_binary("NSQLOOKUPD", "nsqlookupd");
        if found.is_none() {
            notice(
                "no nsqlookupd binary found ($NSQLOOKUPD, PATH, ../shared/peers/bin/): the tests that \
                 need a real nsqlookupd are SKIPPED (each says so).",
            );
        }
        found
    });
    found.as_deref()
}

/// `nsq_tail`, go-nsq's own consumer printing each message on a line, or `None` (said once)
/// when there is none: the black-box reader of what logmill publishes.
pub fn nsq_tail_binary() -> Option<&'static Path> {
    static NSQ_TAIL: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = NSQ_TAIL.get_or_init(|| {
        let found = find_binary("NSQ_TAIL", "nsq_tail");
        if found.is_none() {
            notice(
                "no nsq_tail binary found ($NSQ_TAIL, PATH, ../shared/peers/bin/): channels are read \
                 back with logmill's own consumer instead of go-nsq's. CI reads them with nsq_tail.",
            );
        }
        found
    });
    found.as_deref()
}

/// `$var` if set (it must be a file), else `name` on `PATH`, else the shared peers folder.
fn find_binary(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "${var} is set to {}, which is not a file", path.display());
        return Some(path);
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&dirs).map(|d| d.join(name)).find(|p| is_executable(p)) {
            return Some(found);
        }
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/bin").join(name);
    is_executable(&shared).then_some(shared)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Writes `text` to stderr, where libtest does not capture it.
fn notice(text: &str) {
    let _ = std::io::stderr().write_all(format!("\nNOTE (logmill NSQ tests): {text}\n").as_bytes());
}

/// Reports that `test` is skipped for want of a real server (see the module documentation).
pub fn skip(test: &str, needs: &str) {
    notice(&format!("SKIPPED {test}: it needs a real {needs}, and none is installed"));
}

// ---------------------------------------------------------------------------------------------
// nsqd

/// nsqd's flags a test sets; `None` leaves nsqd's default.
#[derive(Debug, Clone, Default)]
pub struct NsqdOptions {
    /// `--msg-timeout`.
    pub msg_timeout: Option<Duration>,
    /// `--max-rdy-count`.
    pub max_rdy_count: Option<u32>,
    /// `--max-msg-size`.
    pub max_msg_size: Option<usize>,
    /// `--mem-queue-size`; 0 puts every message in the disk queue.
    pub mem_queue_size: Option<u64>,
    /// `--sync-every`: messages per disk queue fsync (and metadata write).
    pub sync_every: Option<u64>,
    /// `--lookupd-tcp-address`, one per nsqlookupd to register with.
    pub lookupd_tcp_addresses: Vec<SocketAddr>,
    /// Put the data dir on tmpfs (`/dev/shm`) when there is one: fsync costs nothing there,
    /// so `--sync-every=1` does not slow a test to a few hundred messages a second, and the
    /// files live in the kernel's memory, which the death of the nsqd process leaves intact.
    pub data_on_tmpfs: bool,
    /// Any other flags, as `--name=value`.
    pub extra_args: Vec<String>,
}

impl NsqdOptions {
    fn args(&self, tcp: SocketAddr, http: SocketAddr, data: &Path) -> Vec<String> {
        let mut args = vec![
            format!("--tcp-address={tcp}"),
            format!("--http-address={http}"),
            // Used only with a TLS certificate, and then on 0.0.0.0:4152 by default, where two
            // test nsqd would collide; nothing here speaks HTTPS to nsqd.
            "--https-address=127.0.0.1:0".to_owned(),
            // What nsqd registers with nsqlookupd (its hostname otherwise, which need not resolve).
            "--broadcast-address=127.0.0.1".to_owned(),
            format!("--data-path={}", data.display()),
        ];
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        args.extend(self.msg_timeout.map(|d| format!("--msg-timeout={}", ms(d))));
        args.extend(self.max_rdy_count.map(|n| format!("--max-rdy-count={n}")));
        args.extend(self.max_msg_size.map(|n| format!("--max-msg-size={n}")));
        args.extend(self.mem_queue_size.map(|n| format!("--mem-queue-size={n}")));
        args.extend(self.sync_every.map(|n| format!("--sync-every={n}")));
        args.extend(self.lookupd_tcp_addresses.iter().map(|a| format!("--lookupd-tcp-address={a}")));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The broker's equivalent, for the options it models.
    fn broker_options(&self) -> NsqBrokerOptions {
        let d = NsqBrokerOptions::default();
        NsqBrokerOptions {
            msg_timeout: self.msg_timeout.unwrap_or(d.msg_timeout),
            max_rdy_count: self.max_rdy_count.map_or(d.max_rdy_count, i64::from),
            max_msg_size: self.max_msg_size.map_or(d.max_msg_size, |n| n as i64),
            http: true,
            ..d
        }
    }
}

/// A running (or stopped/killed) real nsqd; see the module documentation.
pub struct Nsqd {
    process: Process,
    options: NsqdOptions,
}

impl Nsqd {
    /// Starts a real nsqd with `options` and waits for `/ping`; `None` when no binary is
    /// installed (the caller reports the skip, see [`skip`]).
    pub async fn start(options: NsqdOptions) -> Option<Nsqd> {
        let binary = nsqd_binary()?;
        let dir = if options.data_on_tmpfs && Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new().prefix("logmill-nsqd-").tempdir_in("/dev/shm")
        } else {
            tempfile::Builder::new().prefix("logmill-nsqd-").tempdir()
        }
        .expect("create a temp dir for nsqd");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("create nsqd's data dir");
        let opts = options.clone();
        let process =
            Process::launch("nsqd", binary, dir, move |tcp, http| opts.args(tcp, http, &data)).await;
        Some(Nsqd { process, options })
    }

    /// The TCP address clients connect to (the same across [`Nsqd::restart`]).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.process.tcp
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http
    }

    /// The options it runs with.
    pub fn options(&self) -> &NsqdOptions {
        &self.options
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGTERM and wait for the exit (SIGKILL after 10 s): nsqd closes its connections and
    /// writes its memory queues and in-flight messages to the data dir.
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }

    /// SIGKILL, and reap the process: nothing of nsqd's memory survives, only what it had
    /// written to its files.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts nsqd again (after [`Nsqd::stop`] or [`Nsqd::kill`]) on the same data dir and
    /// ports, and waits for `/ping`.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    /// The last few KiB of nsqd's log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// `GET /stats?format=json`.
    pub async fn stats(&self) -> Stats {
        stats(self.http_addr()).await
    }

    /// Waits (up to a minute) until `topic` and its `channel` have nothing waiting: every
    /// message is in flight or finished.
    pub async fn wait_delivered(&self, topic: &str, channel: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stats = self.stats().await;
            let topic_depth = stats.topic(topic).map(|t| t.depth);
            let channel_depth = stats.channel(topic, channel).map(|c| c.depth);
            if topic_depth == Some(0) && channel_depth == Some(0) {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "{topic}/{channel} never delivered: {topic_depth:?} {channel_depth:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes `bodies` over HTTP (see [`NsqServer::put`]).
    pub async fn put(&self, topic: &str, bodies: &[Bytes]) {
        mpub_http(&self.http_addr().to_string(), topic, bodies).await;
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.child.as_ref().and_then(Child::id)
    }

    /// The temp dir holding the data dir and the log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.process.dir.path()
    }
}

/// A real nsqlookupd; see the module documentation.
pub struct Nsqlookupd {
    process: Process,
}

impl Nsqlookupd {
    /// Starts one and waits for `/ping`; `None` when no binary is installed.
    pub async fn start() -> Option<Nsqlookupd> {
        let binary = nsqlookupd_binary()?;
        let dir = tempfile::Builder::new().prefix("logmill-nsqlookupd-").tempdir().expect("create temp dir");
        let process = Process::launch("nsqlookupd", binary, dir, |tcp, http| {
            vec![
                format!("--tcp-address={tcp}"),
                format!("--http-address={http}"),
                "--broadcast-address=127.0.0.1".to_owned(),
            ]
        })
        .await;
        Some(Nsqlookupd { process })
    }

    /// Where nsqd registers (`--lookupd-tcp-address`).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.process.tcp
    }

    /// Where clients look up producers (`GET /lookup?topic=`).
    pub fn http_addr(&self) -> SocketAddr {
        self.process.http
    }

    /// The last few KiB of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

// ---------------------------------------------------------------------------------------------
// A real nsqd, or the broker in its place

/// What [`NsqServer::start`] gave: a real nsqd or, without one, the test broker.
pub enum NsqServer {
    /// A real nsqd.
    Nsqd(Box<Nsqd>),
    /// The in-process test broker, with its HTTP API.
    Broker(NsqBroker),
}

impl NsqServer {
    /// A real nsqd with `options`, or, where none is installed, the test broker with the
    /// options it models (`msg_timeout`, `max_rdy_count`, `max_msg_size`).
    pub async fn start(options: NsqdOptions) -> NsqServer {
        match Nsqd::start(options.clone()).await {
            Some(nsqd) => NsqServer::Nsqd(Box::new(nsqd)),
            None => NsqServer::Broker(NsqBroker::start(options.broker_options()).await),
        }
    }

    /// [`NsqServer::start`] with nsqd's defaults.
    pub async fn start_default() -> NsqServer {
        NsqServer::start(NsqdOptions::default()).await
    }

    /// The TCP address, `127.0.0.1:port`.
    pub fn tcp_addr(&self) -> String {
        match self {
            NsqServer::Nsqd(n) => n.tcp_addr().to_string(),
            NsqServer::Broker(b) => b.tcp_addr().to_string(),
        }
    }

    /// The HTTP address, `127.0.0.1:port`.
    pub fn http_addr(&self) -> String {
        match self {
            NsqServer::Nsqd(n) => n.http_addr().to_string(),
            NsqServer::Broker(b) => b.http_addr().expect("the fallback broker serves HTTP").to_string(),
        }
    }

    /// Whether this is a real nsqd.
    pub fn is_real(&self) -> bool {
        matches!(self, NsqServer::Nsqd(_))
    }

    /// The broker, when this is one.
    pub fn broker(&self) -> Option<&NsqBroker> {
        match self {
            NsqServer::Nsqd(_) => None,
            NsqServer::Broker(b) => Some(b),
        }
    }

    /// Stops the server for good: a real nsqd exits (SIGTERM), the broker refuses connections.
    pub async fn stop(&mut self) {
        match self {
            NsqServer::Nsqd(n) => n.stop().await,
            // A restart that refuses connections for a day: as good as stopped for a test.
            NsqServer::Broker(b) => b.restart(Duration::from_secs(86_400)).await,
        }
    }

    /// `GET /stats?format=json` (the broker answers in nsqd v1.3.0's shape).
    pub async fn stats(&self) -> Stats {
        stats(self.http_addr().parse().expect("a socket address")).await
    }

    /// The first half of a clean restart: a real nsqd gets SIGTERM and exits (its queues go to
    /// its data dir); the broker drops every connection and refuses new ones for
    /// `broker_down_for`, after which it listens again by itself (it cannot be told when).
    pub async fn go_down(&mut self, broker_down_for: Duration) {
        match self {
            NsqServer::Nsqd(n) => n.stop().await,
            NsqServer::Broker(b) => b.restart(broker_down_for).await,
        }
    }

    /// The second half: nsqd starts again on the same data dir and ports and answers `/ping`;
    /// for the broker, waits until it listens again.
    pub async fn come_back(&mut self) {
        match self {
            NsqServer::Nsqd(n) => n.restart().await,
            NsqServer::Broker(b) => {
                // Bounds only a broken broker: the refusal lasts what `go_down` asked for.
                let until = Instant::now() + Duration::from_secs(300);
                while !b.is_accepting() {
                    assert!(Instant::now() < until, "the test broker did not listen again");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }

    /// Creates the topic and channel over HTTP, as a consumer does before the first SUB.
    pub async fn create_channel(&self, topic: &str, channel: &str) {
        let client = http_client();
        logmill::nsq::http::create_topic_and_channel(&client, &self.http_addr(), topic, Some(channel))
            .await
            .unwrap_or_else(|e| panic!("create {topic}/{channel}: {e}"));
    }

    /// Publishes `bodies` over HTTP (`POST /mpub?binary=true`), independently of the client
    /// under test, to seed a topic.
    pub async fn put(&self, topic: &str, bodies: &[Bytes]) {
        if let NsqServer::Broker(b) = self {
            // The broker serves no /mpub; it takes messages directly.
            for body in bodies {
                b.put(topic, body.clone());
            }
            return;
        }
        mpub_http(&self.http_addr(), topic, bodies).await;
    }
}

/// `POST /mpub?topic=…&binary=true` to nsqd's HTTP API: the body is an MPUB's (u32 count, then
/// u32 size and bytes per message).
async fn mpub_http(http: &str, topic: &str, bodies: &[Bytes]) {
    let mut body = BytesMut::new();
    body.put_u32(bodies.len() as u32);
    for b in bodies {
        body.put_u32(b.len() as u32);
        body.put_slice(b);
    }
    let url = format!("http://{http}/mpub?topic={topic}&binary=true");
    let answer = http_client().post(&url).body(body.freeze()).send().await.expect("POST /mpub");
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "POST {url}: {status} {text}");
}

// ---------------------------------------------------------------------------------------------
// /stats

/// nsqd's `GET /stats?format=json`, the parts tests read.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// Topics.
    #[serde(deserialize_with = "null_as_empty")]
    pub topics: Vec<TopicStats>,
    /// Connections that published.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub producers: Vec<ClientStats>,
}

/// A topic's stats.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicStats {
    /// Name.
    pub topic_name: String,
    /// Channels.
    #[serde(deserialize_with = "null_as_empty")]
    pub channels: Vec<ChannelStats>,
    /// Messages waiting (memory and disk) for the first channel.
    pub depth: i64,
    /// Messages published.
    pub message_count: u64,
}

/// A channel's stats.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelStats {
    /// Name.
    pub channel_name: String,
    /// Messages waiting (memory and disk).
    pub depth: i64,
    /// Delivered, not yet finished, requeued or timed out.
    pub in_flight_count: i64,
    /// Waiting for a DPUB or REQ delay.
    pub deferred_count: i64,
    /// Messages put into the channel.
    pub message_count: u64,
    /// REQs.
    pub requeue_count: u64,
    /// msg_timeout expiries.
    pub timeout_count: u64,
    /// Subscribers.
    #[serde(deserialize_with = "null_as_empty")]
    pub clients: Vec<ClientStats>,
}

/// A connection's stats.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientStats {
    /// IDENTIFY's `client_id`.
    pub client_id: String,
    /// IDENTIFY's `user_agent`.
    pub user_agent: String,
    /// Peer address: one connection keeps one.
    pub remote_address: String,
    /// The current RDY.
    pub ready_count: i64,
    /// In flight on this connection.
    pub in_flight_count: i64,
    /// Messages delivered on it.
    pub message_count: u64,
    /// FINs on it.
    pub finish_count: u64,
    /// REQs on it.
    pub requeue_count: u64,
    /// Upgraded to TLS.
    #[serde(default)]
    pub tls: bool,
    /// AUTH accepted (nsqd leaves the key out when not).
    #[serde(default)]
    pub authed: bool,
}

impl Stats {
    /// A topic's stats.
    pub fn topic(&self, topic: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.topic_name == topic)
    }

    /// A channel's stats.
    pub fn channel(&self, topic: &str, channel: &str) -> Option<&ChannelStats> {
        self.topic(topic)?.channels.iter().find(|c| c.channel_name == channel)
    }

    /// The channel's subscribers (none when the channel does not exist).
    pub fn clients(&self, topic: &str, channel: &str) -> Vec<ClientStats> {
        self.channel(topic, channel).map(|c| c.clients.clone()).unwrap_or_default()
    }

    /// The sum of the subscribers' RDY.
    pub fn total_rdy(&self, topic: &str, channel: &str) -> i64 {
        self.clients(topic, channel).iter().map(|c| c.ready_count).sum()
    }

    /// FINs counted on the channel's current subscribers.
    pub fn finish_count(&self, topic: &str, channel: &str) -> u64 {
        self.clients(topic, channel).iter().map(|c| c.finish_count).sum()
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

async fn stats(http: SocketAddr) -> Stats {
    let url = format!("http://{http}/stats?format=json");
    let answer = http_client().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let text = answer.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("HTTP client")
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One server process with its ports, temp dir and log.
struct Process {
    name: &'static str,
    binary: PathBuf,
    args: Vec<String>,
    /// `None` while stopped or killed.
    child: Option<Child>,
    tcp: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    /// Declared after `child`: the directory outlives the process (see `Drop`).
    dir: TempDir,
}

impl Process {
    /// Starts `binary` with the arguments `args(tcp, http)` gives for free ports, retrying with
    /// new ports when one was taken meanwhile, and waits for `/ping`.
    async fn launch(
        name: &'static str,
        binary: &Path,
        dir: TempDir,
        args: impl Fn(SocketAddr, SocketAddr) -> Vec<String>,
    ) -> Process {
        let log = dir.path().join(format!("{name}.log"));
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let [tcp, http] = free_ports();
            let args = args(tcp, http);
            let _ = std::fs::remove_file(&log);
            let mut child = Some(spawn(binary, &args, &log));
            match wait_ready(name, &mut child, http).await {
                Ok(()) => {
                    return Process { name, binary: binary.to_owned(), args, child, tcp, http, log, dir };
                }
                Err(why) => {
                    kill(&mut child);
                    let tail = log_tail(&log);
                    failures.push_str(&format!(
                        "\nattempt {attempt} (tcp {tcp}, http {http}): {why}; log:\n{tail}"
                    ));
                    // Only a port lost to the race of `free_ports` is worth another try.
                    if !tail.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("{name} ({}) did not start:{failures}", binary.display());
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold `child`),
            // so the pid cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn kill(&mut self) {
        kill(&mut self.child);
    }

    async fn restart(&mut self) {
        assert!(!self.is_running(), "{} restarted while running", self.name);
        self.child = Some(spawn(&self.binary, &self.args, &self.log));
        if let Err(why) = wait_ready(self.name, &mut self.child, self.http).await {
            panic!("{} did not come back on {}: {why}\nlog:\n{}", self.name, self.tcp, self.log_tail());
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct free loopback ports: bind port 0 twice, read the ports, close the listeners.
/// Another process may take one before the server binds it: [`Process::launch`] retries.
fn free_ports() -> [SocketAddr; 2] {
    // Both listeners live at once, so the two ports differ.
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    [a.local_addr().expect("local addr"), b.local_addr().expect("local addr")]
}

fn spawn(binary: &Path, args: &[String], log: &Path) -> Child {
    // Appending keeps the output of earlier runs (kill/restart) for the panic messages.
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
    let err = out.try_clone().expect("clone the log handle");
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe. PR_SET_PDEATHSIG SIGKILLs the server when the thread that
    // spawned it ends: a test's thread or a tokio worker, which both outlive the server (it is
    // dropped, and killed, within the test) unless the test binary itself dies.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()))
}

/// Polls `GET /ping` until it answers `OK`, the process exits (`*child` becomes `None`), or
/// [`READY_TIMEOUT`].
async fn wait_ready(name: &str, child: &mut Option<Child>, http: SocketAddr) -> Result<(), String> {
    let started = Instant::now();
    let url = format!("http://{http}/ping");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
    loop {
        if let Some(running) = child.as_mut() {
            if let Ok(Some(status)) = running.try_wait() {
                *child = None;
                return Err(format!("{name} exited during start-up ({status})"));
            }
        }
        match client.get(&url).send().await {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => return Err(format!("GET /ping answered {}", answer.status())),
            Err(_) if started.elapsed() < READY_TIMEOUT => tokio::time::sleep(POLL_INTERVAL).await,
            Err(e) => return Err(format!("no answer to GET /ping within {READY_TIMEOUT:?} ({e})")),
        }
    }
}

/// SIGKILL and reap, so the process is gone when this returns (a restart binds its ports
/// next, and no server writes into a temp dir being removed). SIGKILL takes effect in
/// milliseconds; the bound only guards against a hang.
fn kill(child: &mut Option<Child>) {
    let Some(mut child) = child.take() else { return };
    let _ = child.start_kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn log_tail(log: &Path) -> String {
    let Ok(bytes) = std::fs::read(log) else { return format!("(no {})", log.display()) };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

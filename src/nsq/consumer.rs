//! The NSQ consumer: SUB to one topic and channel on every nsqd of a changing set.
//!
//! # Tasks
//!
//! A supervisor task owns the set of connections and the RDY budget. It follows a
//! `watch::Receiver<BTreeSet<String>>` of nsqd TCP addresses (what `lookupd` produces; a fixed
//! set for direct addresses, see [`fixed_addresses`]): an address that appears gets a
//! connection task, one that vanishes is closed gracefully. Each connection task dials (with
//! [`Backoff`]), SUBs, and then runs one `select!` over its socket, the RDY the supervisor
//! assigns it (a `watch`), the FIN/REQ/TOUCH of its messages and its close signal.
//!
//! The read side never waits on the application: messages go with `try_send` into one bounded
//! channel of `max_in_flight` [`Delivery`]s. nsqd keeps in flight at most RDY per connection
//! and the supervisor keeps the messages in flight across connections within `max_in_flight`,
//! so the channel has room; should it ever be full anyway, the message is requeued at once
//! rather than waited for. Heartbeats are answered by the connection itself.
//!
//! # RDY
//!
//! `max_in_flight` is spread over the connections ([`rdy_targets`]): each gets
//! `max_in_flight / n` (the remainder to some, rotating), capped by the server's
//! `max_rdy_count`. With more connections than `max_in_flight`, `max_in_flight` of them get
//! RDY 1 and the turn moves on once they have held it for `rdy_rotate_interval` (go-nsq rotates
//! too).
//!
//! With `max_buffered_bytes`, RDY also keeps the bodies nsqd has sent and the application
//! has not yet taken ([`Delivery::take_body`], or the delivery settled) near that many bytes:
//! the RDY of every connection adds up to at most what is in flight plus what still fits at
//! the running average body size (the largest frame's until a first body is seen), recomputed
//! at every tick and as soon as the bodies waiting fall below half the budget. A connection
//! lowers its RDY by the messages it finishes or requeues, ahead of those commands on the
//! socket: finishing frees no room for bodies. A message whose body was taken (one a consumer
//! holds while its window is open) counts against `max_in_flight` only, so holding stays as
//! deep as `max_in_flight` allows while the bodies waiting to be processed stay bounded: 2,500
//! router messages of 40 KB waiting were 100 MB.
//!
//! nsqd does not take back messages already in flight when RDY is lowered, so what a
//! connection holds is `max(RDY, in flight)` (each connection task reports its in-flight
//! count), and only `max_in_flight` minus the sum of those is handed out. Decreases are sent
//! at once; what they (or finished messages) free is handed out only after a whole tick
//! (50 ms), once nsqd has applied them, because commands on different sockets are not ordered.
//!
//! # Backoff
//!
//! [`Delivery::requeue`] is a handler failure: every connection goes to RDY 0 for
//! `handler_backoff_initial × 2^(level-1)` (capped), then one connection gets RDY 1 as a
//! probe. A finished probe lowers the level (back to full RDY at 0), a failed one raises it.
//! Signals that arrive while waiting are ignored, as in go-nsq. A probe on an nsqd that has
//! nothing to deliver would never get an outcome: after `probe_idle_timeout` without a message
//! on its connection it moves to the next one.
//!
//! # Messages
//!
//! A [`Delivery`] must be finished, requeued or touched through its methods; dropping it
//! requeues the message. A message delivered more than `max_attempts` times is handed to the
//! give-up hook and finished instead of being delivered; deliveries the application never saw
//! (requeued at once because the channel was full or closed) do not count. A panicking hook is
//! contained: logged, counted, and the message finished all the same.
//!
//! Dropping the delivery receiver stops the consumer, as [`Consumer::stop`] does: messages that
//! still arrive are requeued untouched, never given up.
//!
//! # Stopping
//!
//! On cancellation or [`Consumer::stop`], every connection sends CLS, waits for CLOSE_WAIT and
//! for its messages in flight to be finished or requeued, for at most `drain_timeout`; then it
//! requeues what is left and closes. The delivery channel ends (`recv` gives `None`) when the
//! last connection is gone. Nothing is lost: a message is either finished, requeued, or (if
//! the connection died) redelivered by nsqd after its msg_timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::connection::{classify_server_error, Connection, ConnectionError, ConnectionSettings};
use super::protocol::{self, Frame, Message, MessageId};
use crate::backoff::Backoff;
use crate::telemetry::{Counter, Gauge, Telemetry};

/// How often the supervisor hands out freed RDY and checks the backoff timer.
const RDY_TICK: Duration = Duration::from_millis(50);
/// nsqd's `--max-req-timeout` default: longer REQ delays are clamped to it.
const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(3600);
/// Bodies at least this large are copied out of the connection's read buffer. A body is a
/// slice of the 64 KiB chunk it was read into and keeps all of it alive, and a frame split
/// across chunks is copied into a fresh one when the buffer is shared: a 33 KB router message
/// held twice its size until processed, and the churn of new chunks was half of the
/// consumer's page faults. Copied, the read buffer is reused in place; smaller bodies share
/// chunks, many to one, and stay where they are.
const COPY_OUT_BODY_BYTES: usize = 4096;
/// Messages remembered as requeued without reaching the application (for `max_attempts`);
/// past this the memory is cleared rather than grown: such requeues are rare.
const UNSEEN_REQUEUES_MAX: usize = 4096;

/// Validated consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Topic to SUB to.
    pub topic: String,
    /// Channel to SUB to.
    pub channel: String,
    /// How connections are opened.
    pub connection: ConnectionSettings,
    /// Messages in flight across all connections, at most.
    pub max_in_flight: u32,
    /// Bytes of bodies received and not yet taken by the application, about at most (RDY is
    /// lowered from the running average body size); 0: no bound but `max_in_flight`.
    pub max_buffered_bytes: u64,
    /// Deliveries after which a message is given up (hook, then FIN); 0: never.
    pub max_attempts: u16,
    /// Reconnect backoff: first wait.
    pub reconnect_backoff_initial: Duration,
    /// Reconnect backoff: cap.
    pub reconnect_backoff_max: Duration,
    /// Handler backoff: first wait.
    pub handler_backoff_initial: Duration,
    /// Handler backoff: cap.
    pub handler_backoff_max: Duration,
    /// With more connections than `max_in_flight`, how long a turn holds RDY before it moves on.
    pub rdy_rotate_interval: Duration,
    /// While backing off, how long the RDY 1 probe may sit on an nsqd that delivers nothing
    /// before it moves to the next one (go-nsq moves RDY off a connection idle for 10 s).
    pub probe_idle_timeout: Duration,
    /// On stop, how long messages in flight may take to be finished or requeued.
    pub drain_timeout: Duration,
    /// nsqd HTTP addresses on which to create the topic and channel before subscribing.
    pub create_on: Vec<String>,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            topic: "logs".into(),
            channel: "logmill".into(),
            connection: ConnectionSettings::default(),
            // nsqd's own --max-rdy-count: `logmill consume` holds messages while their
            // aggregate windows are open, and what it can hold bounds its throughput.
            max_in_flight: 2500,
            // 250 of the agent's router messages (100 access lines, ~33 KB each): what a
            // consumer derives in ~25 ms, more than one RDY round trip; 16 MiB was no faster
            // in benches/consume and 20 MiB higher in peak RSS.
            max_buffered_bytes: 8 << 20,
            max_attempts: 0,
            reconnect_backoff_initial: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            handler_backoff_initial: Duration::from_secs(1),
            handler_backoff_max: Duration::from_secs(120),
            rdy_rotate_interval: Duration::from_secs(5),
            probe_idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            create_on: Vec::new(),
        }
    }
}

/// Why a consumer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Topic or channel name invalid.
    #[error("invalid topic or channel name: {0}")]
    InvalidName(String),
    /// `max_in_flight` is 0.
    #[error("max_in_flight must be at least 1")]
    NoInFlight,
    /// Creating the topic/channel over HTTP failed on some nsqd (every one was tried).
    #[error("creating topic and channel: {}", join_errors(.0))]
    Create(Vec<super::http::HttpError>),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

fn join_errors(errors: &[super::http::HttpError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Called with a message that reached `max_attempts`, before it is finished.
pub(crate) type GiveUpHook = Arc<dyn Fn(&Message) + Send + Sync>;

/// A set of addresses that never changes, for direct nsqd addresses.
pub fn fixed_addresses<I, S>(addresses: I) -> watch::Receiver<BTreeSet<String>>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    // The sender is dropped: the receiver keeps the value and reports no further change.
    watch::channel(addresses.into_iter().map(Into::into).collect()).1
}

/// Creates `topic` and `channel` on every nsqd HTTP address, so no message published before
/// the first SUB is missed by the channel. One nsqd failing does not stop the others: every
/// address is tried and the failures are returned together.
pub async fn create_topic_and_channel(
    nsqd_http_addresses: &[String],
    topic: &str,
    channel: &str,
    timeout: Duration,
) -> Result<(), ConsumerError> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let mut errors = Vec::new();
    for addr in nsqd_http_addresses {
        if let Err(e) = super::http::create_topic_and_channel(&client, addr, topic, Some(channel)).await {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConsumerError::Create(errors))
    }
}

/// Commands from deliveries to their connection.
#[derive(Debug)]
enum Cmd {
    Fin(MessageId),
    Req(MessageId, u32),
    Touch(MessageId),
}

/// State shared by the supervisor, the connections and the deliveries.
struct Shared {
    settings: ConsumerSettings,
    counters: Counters,
    give_up: Option<GiveUpHook>,
    /// Set while backing off: finishes are reported only then.
    backing_off: AtomicBool,
    successes: AtomicU64,
    failures: AtomicU64,
    signal: Notify,
    /// Message id → deliveries requeued at once without reaching the application.
    unseen_requeues: Mutex<HashMap<MessageId, u16>>,
    /// Messages in flight at most while the connections are as they are (see
    /// [`Consumer::capacity`]).
    capacity: Arc<AtomicU32>,
    /// Bytes of bodies delivered and not yet taken or settled (see `max_buffered_bytes`).
    buffered_bytes: AtomicU64,
    /// Signalled when `buffered_bytes` falls below half the budget: the supervisor hands the
    /// room out at once rather than at its next tick, which left the consumer idle for most
    /// of each tick (benches/consume: 1,700 router messages/s where 4,400 were possible).
    room: Notify,
    /// The byte budget, not `max_in_flight`, is what limits RDY now: finishing a message
    /// frees no room (see `on_commands`).
    budget_binds: AtomicBool,
    /// Bodies received, every connection: messages and bytes, for the average size.
    received: AtomicU64,
    received_bytes: AtomicU64,
}

impl Shared {
    fn new(settings: ConsumerSettings, give_up: Option<GiveUpHook>, telemetry: &Telemetry) -> Shared {
        Shared {
            counters: Counters::new(telemetry),
            settings,
            give_up,
            backing_off: AtomicBool::new(false),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            signal: Notify::new(),
            unseen_requeues: Mutex::new(HashMap::new()),
            capacity: Arc::new(AtomicU32::new(0)),
            buffered_bytes: AtomicU64::new(0),
            room: Notify::new(),
            budget_binds: AtomicBool::new(false),
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
        }
    }

    /// Deliveries of `m` the application saw (nsqd's attempts count every delivery).
    fn attempts_seen(&self, m: &Message) -> u16 {
        // The map is consistent after any panic (single inserts and removes).
        let unseen = self.unseen_requeues.lock().unwrap_or_else(PoisonError::into_inner);
        m.attempts.saturating_sub(unseen.get(&m.id).copied().unwrap_or(0))
    }

    fn requeued_unseen(&self, id: MessageId) {
        let mut unseen = self.unseen_requeues.lock().unwrap_or_else(PoisonError::into_inner);
        if unseen.len() >= UNSEEN_REQUEUES_MAX && !unseen.contains_key(&id) {
            unseen.clear();
        }
        let n = unseen.entry(id).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn forget_unseen(&self, id: &MessageId) {
        self.unseen_requeues.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    fn success(&self) {
        if self.backing_off.load(Ordering::Relaxed) {
            self.successes.fetch_add(1, Ordering::Relaxed);
            self.signal.notify_one();
        }
    }

    fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.signal.notify_one();
    }
}

#[derive(Clone)]
struct Counters {
    received: Counter,
    finished: Counter,
    requeued: Counter,
    given_up: Counter,
    give_up_hook_panics: Counter,
    overflowed: Counter,
    reconnects: Counter,
    connection_errors: Counter,
    non_fatal: Counter,
    backoffs: Counter,
    buffered_bytes: Gauge,
}

impl Counters {
    fn new(t: &Telemetry) -> Counters {
        let role = [("role", "consumer")];
        Counters {
            received: t.counter("logmill_nsq_messages_received_total", "Messages delivered by nsqd.", &[]),
            finished: t.counter("logmill_nsq_messages_finished_total", "Messages FINished.", &[]),
            requeued: t.counter("logmill_nsq_messages_requeued_total", "Messages REQueued.", &[]),
            given_up: t.counter(
                "logmill_nsq_messages_given_up_total",
                "Messages finished unprocessed after max_attempts deliveries.",
                &[],
            ),
            give_up_hook_panics: t.counter(
                "logmill_nsq_give_up_hook_panics_total",
                "Panics of the give-up hook (contained; the message was finished anyway).",
                &[],
            ),
            overflowed: t.counter(
                "logmill_nsq_messages_overflowed_total",
                "Messages requeued at once because the delivery channel was full or closed.",
                &[],
            ),
            reconnects: t.counter(
                "logmill_nsq_reconnects_total",
                "Connections to nsqd opened after the first one.",
                &role,
            ),
            connection_errors: t.counter(
                "logmill_nsq_connection_errors_total",
                "Connections to nsqd that failed or ended in error.",
                &role,
            ),
            non_fatal: t.counter(
                "logmill_nsq_non_fatal_errors_total",
                "E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED received.",
                &role,
            ),
            backoffs: t.counter(
                "logmill_nsq_backoffs_total",
                "Handler failures that started or deepened a backoff.",
                &[],
            ),
            buffered_bytes: t.gauge(
                "logmill_nsq_buffered_bytes",
                "Bytes of message bodies received and not yet taken by the consumer.",
                &[],
            ),
        }
    }
}

/// One message to process. Finish, requeue or touch it; dropping it requeues it.
pub struct Delivery {
    message: Message,
    conn: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    done: bool,
    msg_timeout: Duration,
    max_msg_timeout: Duration,
    /// Bytes of the body counted in `Shared::buffered_bytes`, until taken or settled.
    buffered: u64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.message.id)
            .field("attempts", &self.message.attempts)
            .finish()
    }
}

impl Delivery {
    /// The message body.
    pub fn body(&self) -> &Bytes {
        &self.message.body
    }

    /// The whole message (id, timestamp, attempts, body).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// nsqd's id.
    pub fn id(&self) -> MessageId {
        self.message.id
    }

    /// Deliveries so far, this one included.
    pub fn attempts(&self) -> u16 {
        self.message.attempts
    }

    /// How long nsqd waits for a FIN, REQ or TOUCH before redelivering (the msg_timeout
    /// negotiated on its connection).
    pub fn msg_timeout(&self) -> Duration {
        self.msg_timeout
    }

    /// The longest nsqd lets the message be in flight, TOUCHes included (its
    /// `--max-msg-timeout`).
    pub fn max_msg_timeout(&self) -> Duration {
        self.max_msg_timeout
    }

    /// Takes the body out, leaving the delivery as a small handle to finish, requeue or touch
    /// the message: a consumer that holds messages for a while holds no bodies.
    pub fn take_body(&mut self) -> Bytes {
        self.unbuffer();
        std::mem::take(&mut self.message.body)
    }

    /// The body no longer counts against `max_buffered_bytes`.
    fn unbuffer(&mut self) {
        if self.buffered > 0 {
            let before = self.shared.buffered_bytes.fetch_sub(self.buffered, Ordering::Relaxed);
            let half = self.shared.settings.max_buffered_bytes / 2;
            if before >= half && before - self.buffered < half {
                self.shared.room.notify_one();
            }
            self.buffered = 0;
        }
    }

    /// [`Delivery::touch`] as a future that does not borrow the delivery.
    pub fn touch_later(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (conn, id) = (self.conn.clone(), self.message.id);
        async move {
            let _ = conn.send(Cmd::Touch(id)).await;
        }
    }

    /// Done: FIN. A success for the backoff.
    pub async fn finish(mut self) {
        self.done = true;
        self.shared.success();
        // A closed connection: nsqd redelivers the message after msg_timeout (a duplicate).
        let _ = self.conn.send(Cmd::Fin(self.message.id)).await;
    }

    /// Failed: REQ after `delay` (clamped to an hour), and back off (a handler failure).
    pub async fn requeue(mut self, delay: Duration) {
        self.done = true;
        self.shared.failure();
        let _ = self.conn.send(Cmd::Req(self.message.id, delay_ms(delay))).await;
    }

    /// REQ after `delay` without counting as a handler failure.
    pub async fn requeue_without_backoff(mut self, delay: Duration) {
        self.done = true;
        let _ = self.conn.send(Cmd::Req(self.message.id, delay_ms(delay))).await;
    }

    /// Restarts the message's msg_timeout on nsqd.
    pub async fn touch(&self) {
        let _ = self.conn.send(Cmd::Touch(self.message.id)).await;
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.unbuffer();
        if !self.done {
            // Cannot wait here; if the channel is full the message times out on nsqd instead.
            let _ = self.conn.try_send(Cmd::Req(self.message.id, 0));
        }
    }
}

fn delay_ms(delay: Duration) -> u32 {
    u32::try_from(delay.min(MAX_REQUEUE_DELAY).as_millis()).unwrap_or(u32::MAX)
}

/// The handle: stop it, wait for it to be stopped.
#[derive(Debug, Clone)]
pub struct Consumer {
    stop: CancellationToken,
    stopped: CancellationToken,
    capacity: Arc<AtomicU32>,
}

impl Consumer {
    /// Starts the supervisor on `tracker`. Deliveries arrive on the returned receiver, which
    /// ends once the consumer has stopped and every connection is closed. `cancel` (the
    /// service's shutdown) stops it gracefully, as [`Consumer::stop`] does.
    pub fn start(
        settings: ConsumerSettings,
        addresses: watch::Receiver<BTreeSet<String>>,
        give_up: Option<GiveUpHook>,
        telemetry: &Telemetry,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<(Consumer, mpsc::Receiver<Delivery>), ConsumerError> {
        if !protocol::valid_name(&settings.topic) || !protocol::valid_name(&settings.channel) {
            return Err(ConsumerError::InvalidName(format!("{}/{}", settings.topic, settings.channel)));
        }
        if settings.max_in_flight == 0 {
            return Err(ConsumerError::NoInFlight);
        }
        let (tx, rx) = mpsc::channel(settings.max_in_flight as usize);
        let stop = cancel.child_token();
        let stopped = CancellationToken::new();
        let shared = Arc::new(Shared::new(settings, give_up, telemetry));
        let capacity = shared.capacity.clone();
        let supervisor = Supervisor::new(shared, addresses, Some(tx), tracker.clone(), stop.clone());
        let done = stopped.clone();
        tracker.spawn(async move {
            supervisor.run().await;
            done.cancel();
        });
        Ok((Consumer { stop, stopped, capacity }, rx))
    }

    /// Starts a graceful stop (CLS, drain, close).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// How many messages nsqd may have in flight to this consumer when it is not backing off:
    /// `max_in_flight`, or less while the connected nsqd's `--max-rdy-count`s cap it (0 until
    /// one is connected). A consumer that holds messages must acknowledge some before it
    /// holds this many, or nothing more arrives.
    pub fn capacity(&self) -> u32 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Resolves once every connection is closed.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}

/// RDY per connection: `max_in_flight` spread over `max_rdy.len()` connections (each capped by
/// its server's `max_rdy_count`), the remainder (or, with more connections than
/// `max_in_flight`, the single RDYs) given to the connections from `offset` on.
pub(crate) fn rdy_targets(max_in_flight: u32, max_rdy: &[u32], offset: usize) -> Vec<u32> {
    let n = max_rdy.len();
    let mut out = vec![0u32; n];
    if n == 0 {
        return out;
    }
    let base = max_in_flight / n as u32;
    let extra = (max_in_flight % n as u32) as usize;
    for (i, slot) in out.iter_mut().enumerate() {
        // Position of this connection in the rotation starting at `offset`.
        let pos = (i + n - offset % n) % n;
        let want = base + u32::from(pos < extra);
        *slot = want.min(max_rdy[i]);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// All RDY 0 until then.
    Waiting(Instant),
    /// One connection at RDY 1; waiting for its outcome. Since when its connection has shown
    /// no sign of life (no message received, none in flight).
    Probing(Instant),
}

enum Event {
    Ready { addr: String, max_rdy: u32 },
    Closed { addr: String },
    Exited { addr: String },
}

/// What a connection task reports to the supervisor, read when RDY is decided.
#[derive(Debug, Default)]
struct ConnStats {
    /// Messages of the current session not yet finished or requeued.
    in_flight: AtomicU32,
    /// Messages received, every session.
    received: AtomicU64,
}

struct ConnEntry {
    rdy: watch::Sender<u32>,
    close: CancellationToken,
    stats: Arc<ConnStats>,
    ready: bool,
    max_rdy: u32,
    /// RDY last assigned (0 when not connected).
    sent: u32,
    /// The most this connection held (RDY or in flight) since the last tick, and over the
    /// tick before: what it frees is handed out only once both have passed.
    held: [u32; 2],
    /// Address removed while its task was closing, then added again.
    respawn: bool,
    removing: bool,
}

impl ConnEntry {
    /// Messages nsqd may have in flight on this connection: RDY is not a credit, and lowering
    /// it does not take back what is already in flight.
    fn holds_now(&self) -> u32 {
        self.sent.max(self.stats.in_flight.load(Ordering::Relaxed))
    }

    /// What counts against `max_in_flight`: what it holds, or held until recently.
    fn usage(&self) -> u32 {
        self.holds_now().max(self.held[0]).max(self.held[1])
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    addresses: watch::Receiver<BTreeSet<String>>,
    deliveries: Option<mpsc::Sender<Delivery>>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    conns: BTreeMap<String, ConnEntry>,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// What connections that exited held, since the last tick and over the tick before.
    settling: [u32; 2],
    offset: usize,
    mode: Mode,
    level: u32,
    /// Messages the probe's connection had received when last looked at.
    probe_seen: u64,
    /// When every connection last got its whole target RDY: with more connections than
    /// `max_in_flight`, the turn moves on `rdy_rotate_interval` after that (measured from a
    /// timer instead, a turn whose RDY waits for the previous one to settle could be cut short
    /// before it began).
    turn_granted: Option<Instant>,
    /// Running average of the bodies received (bytes), once one has been.
    body_bytes: Option<f64>,
    /// `Shared::received` and `received_bytes` when last averaged.
    averaged: (u64, u64),
    /// What the connections' RDY may add up to (see [`Supervisor::in_flight_limit`]).
    limit: u32,
}

/// Resolves once the application dropped the delivery receiver.
async fn receiver_gone(deliveries: Option<&mpsc::Sender<Delivery>>) {
    match deliveries {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn new(
        shared: Arc<Shared>,
        addresses: watch::Receiver<BTreeSet<String>>,
        deliveries: Option<mpsc::Sender<Delivery>>,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Supervisor {
        let (events_tx, events_rx) = mpsc::channel(64);
        Supervisor {
            shared,
            addresses,
            deliveries,
            events_tx,
            events_rx,
            conns: BTreeMap::new(),
            tracker,
            stop,
            settling: [0, 0],
            offset: 0,
            mode: Mode::Normal,
            level: 0,
            probe_seen: 0,
            turn_granted: None,
            body_bytes: None,
            averaged: (0, 0),
            limit: 0,
        }
    }

    async fn run(mut self) {
        let span = tracing::info_span!("nsq_consumer", topic = %self.shared.settings.topic, channel = %self.shared.settings.channel);
        async move {
            let s = &self.shared.settings;
            if !s.create_on.is_empty() {
                // Best effort: a topic created by a producer later still works; only messages
                // published before the channel exists are missed.
                let timeout = s.connection.dial_timeout;
                if let Err(error) =
                    create_topic_and_channel(&s.create_on, &s.topic, &s.channel, timeout).await
                {
                    tracing::warn!(%error, "cannot create topic and channel up front");
                }
            }
            let initial = self.addresses.borrow_and_update().clone();
            self.reconcile(&initial);
            let mut watching = true;
            let mut stopping = false;
            let mut tick = tokio::time::interval(RDY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if stopping && self.conns.is_empty() {
                    break;
                }
                enum Ev {
                    Stop,
                    ReceiverGone,
                    Event(Event),
                    Addresses(bool),
                    Signal,
                    Room,
                    Tick,
                }
                let shared = self.shared.clone();
                let ev = tokio::select! {
                    biased;
                    _ = self.stop.cancelled(), if !stopping => Ev::Stop,
                    _ = receiver_gone(self.deliveries.as_ref()), if !stopping => Ev::ReceiverGone,
                    Some(e) = self.events_rx.recv() => Ev::Event(e),
                    r = self.addresses.changed(), if watching && !stopping => Ev::Addresses(r.is_ok()),
                    _ = shared.signal.notified(), if !stopping => Ev::Signal,
                    _ = shared.room.notified(), if !stopping => Ev::Room,
                    _ = tick.tick() => Ev::Tick,
                };
                match ev {
                    Ev::Stop | Ev::ReceiverGone => {
                        if matches!(ev, Ev::ReceiverGone) {
                            // Requeuing what arrives would only loop it through nsqd, its
                            // attempts climbing: stop, as `Consumer::stop` does.
                            tracing::warn!("the delivery receiver was dropped; stopping the consumer");
                            self.stop.cancel();
                        }
                        stopping = true;
                        tracing::info!(connections = self.conns.len(), "consumer stopping");
                        for c in self.conns.values() {
                            c.close.cancel();
                        }
                        // Connections hold their own senders; the channel ends with the last.
                        self.deliveries = None;
                    }
                    Ev::Event(e) => self.on_event(e, stopping),
                    Ev::Addresses(true) => {
                        let set = self.addresses.borrow_and_update().clone();
                        self.reconcile(&set);
                    }
                    // The sender is gone: the set stays as it was.
                    Ev::Addresses(false) => watching = false,
                    Ev::Signal => self.on_signals(),
                    // Only RDY to recompute, below.
                    Ev::Room => {}
                    Ev::Tick => self.on_tick(Instant::now()),
                }
                if !stopping {
                    self.apply_rdy();
                }
            }
        }
        .instrument(span)
        .await
    }

    fn reconcile(&mut self, wanted: &BTreeSet<String>) {
        for addr in wanted {
            match self.conns.get_mut(addr) {
                Some(c) if c.removing => c.respawn = true,
                Some(_) => {}
                None => self.spawn(addr),
            }
        }
        for (addr, c) in self.conns.iter_mut() {
            if !wanted.contains(addr) && !c.removing {
                tracing::info!(nsqd = %addr, "nsqd left the set; closing");
                c.removing = true;
                c.respawn = false;
                c.close.cancel();
            }
        }
    }

    fn spawn(&mut self, addr: &str) {
        let Some(deliveries) = self.deliveries.clone() else { return };
        let (rdy_tx, rdy_rx) = watch::channel(0u32);
        let close = CancellationToken::new();
        let stats = Arc::new(ConnStats::default());
        let task = ConnTask {
            addr: addr.to_owned(),
            shared: self.shared.clone(),
            stats: stats.clone(),
            rdy: rdy_rx,
            close: close.clone(),
            events: self.events_tx.clone(),
            deliveries,
        };
        self.tracker.spawn(task.run());
        self.conns.insert(
            addr.to_owned(),
            ConnEntry {
                rdy: rdy_tx,
                close,
                stats,
                ready: false,
                max_rdy: 0,
                sent: 0,
                held: [0, 0],
                respawn: false,
                removing: false,
            },
        );
    }

    fn on_event(&mut self, e: Event, stopping: bool) {
        match e {
            Event::Ready { addr, max_rdy } => {
                if let Some(c) = self.conns.get_mut(&addr) {
                    c.ready = true;
                    c.max_rdy = max_rdy;
                    c.sent = 0;
                }
            }
            Event::Closed { addr } => {
                if let Some(c) = self.conns.get_mut(&addr) {
                    c.ready = false;
                    c.held[0] = c.held[0].max(c.sent);
                    c.sent = 0;
                    c.rdy.send_replace(0);
                }
            }
            Event::Exited { addr } => {
                if let Some(c) = self.conns.remove(&addr) {
                    self.settling[0] = self.settling[0].saturating_add(c.usage());
                    if c.respawn && !stopping {
                        self.spawn(&addr);
                    }
                }
            }
        }
    }

    fn on_signals(&mut self) {
        let failures = self.shared.failures.swap(0, Ordering::Relaxed);
        let successes = self.shared.successes.swap(0, Ordering::Relaxed);
        let s = &self.shared.settings;
        match self.mode {
            // Signals from messages handled before the wait ends are ignored (go-nsq).
            Mode::Waiting(_) => return,
            Mode::Normal if failures > 0 => self.level = 1,
            Mode::Normal => return,
            Mode::Probing(_) if failures > 0 => self.level = self.level.saturating_add(1).min(32),
            Mode::Probing(_) if successes > 0 => self.level = self.level.saturating_sub(1),
            Mode::Probing(_) => return,
        }
        if self.level == 0 {
            tracing::info!("handler backoff over");
            self.mode = Mode::Normal;
            self.shared.backing_off.store(false, Ordering::Relaxed);
            return;
        }
        let wait = Backoff::delay(s.handler_backoff_initial, s.handler_backoff_max, self.level - 1, 0.5);
        if failures > 0 {
            self.shared.counters.backoffs.add(1);
        }
        tracing::warn!(level = self.level, ?wait, "handler failing; backing off (RDY 0)");
        self.mode = Mode::Waiting(Instant::now() + wait);
        self.shared.backing_off.store(true, Ordering::Relaxed);
    }

    /// The probe's connection (the ready one at `offset`): messages received, in flight.
    fn probe_stats(&self) -> Option<(u64, u32)> {
        let ready: Vec<&ConnEntry> = self.conns.values().filter(|c| c.ready).collect();
        let c = ready.get(self.offset % ready.len().max(1))?;
        Some((c.stats.received.load(Ordering::Relaxed), c.stats.in_flight.load(Ordering::Relaxed)))
    }

    /// Starts probing on the next connection.
    fn probe_next(&mut self, now: Instant) {
        self.offset = self.offset.wrapping_add(1);
        self.mode = Mode::Probing(now);
        self.probe_seen = self.probe_stats().map_or(0, |(received, _)| received);
    }

    /// Every `RDY_TICK`: what was freed a whole tick ago becomes free; the backoff wait ends;
    /// a probe on a connection that delivers nothing moves on; RDY rotates.
    fn on_tick(&mut self, now: Instant) {
        self.settling = [0, self.settling[0]];
        for c in self.conns.values_mut() {
            c.held = [c.holds_now(), c.held[0]];
        }
        self.average_body_size();
        if self.shared.settings.max_buffered_bytes > 0 {
            // A connection lowers its own RDY as it finishes messages while the budget binds
            // (see `on_commands`): it follows what was assigned again should the assignment
            // not have changed.
            for c in self.conns.values().filter(|c| c.ready) {
                c.rdy.send_replace(c.sent);
            }
        }
        let max = self.limit.max(1) as usize;
        let ready = self.conns.values().filter(|c| c.ready).count();
        let turn_over = self
            .turn_granted
            .is_some_and(|t| now.saturating_duration_since(t) >= self.shared.settings.rdy_rotate_interval);
        if self.mode == Mode::Normal && ready > max && turn_over {
            self.offset = self.offset.wrapping_add(max);
            self.turn_granted = None;
        }
        match self.mode {
            Mode::Waiting(until) if now >= until => self.probe_next(now),
            Mode::Probing(quiet_since) => {
                let (received, in_flight) = self.probe_stats().unwrap_or((self.probe_seen, 0));
                if received != self.probe_seen || in_flight > 0 {
                    // A message is on its way to an outcome.
                    self.probe_seen = received;
                    self.mode = Mode::Probing(now);
                } else if now.saturating_duration_since(quiet_since)
                    >= self.shared.settings.probe_idle_timeout
                {
                    tracing::info!("backoff probe got no message; moving it to the next nsqd");
                    self.probe_next(now);
                }
            }
            _ => {}
        }
    }

    /// Folds the bodies received since the last tick into the running average (a quarter
    /// weight per tick: it follows a change of message size within a second).
    fn average_body_size(&mut self) {
        let now = (
            self.shared.received.load(Ordering::Relaxed),
            self.shared.received_bytes.load(Ordering::Relaxed),
        );
        let (messages, bytes) = (now.0 - self.averaged.0, now.1 - self.averaged.1);
        self.averaged = now;
        if messages > 0 {
            let size = bytes as f64 / messages as f64;
            self.body_bytes = Some(self.body_bytes.map_or(size, |avg| avg + (size - avg) / 4.0));
        }
        self.shared.counters.buffered_bytes.set(self.shared.buffered_bytes.load(Ordering::Relaxed));
    }

    /// What the RDY of every connection may add up to: `max_in_flight`, or, with
    /// `max_buffered_bytes`, what is in flight plus as many average bodies as still fit in
    /// what is left of it (at least one when nothing is buffered, so that a body larger than
    /// the whole budget still comes, alone). Until a first body has given the size, bodies
    /// are taken to be as large as a frame may be: a backlog's first burst at full RDY would
    /// be `max_in_flight` bodies at once.
    fn in_flight_limit(&self) -> u32 {
        let s = &self.shared.settings;
        if s.max_buffered_bytes == 0 {
            return s.max_in_flight;
        }
        let body_bytes = self.body_bytes.unwrap_or(s.connection.max_frame_bytes as f64);
        let buffered = self.shared.buffered_bytes.load(Ordering::Relaxed);
        let fits = (s.max_buffered_bytes.saturating_sub(buffered) as f64 / body_bytes.max(1.0)) as u64;
        let fits = if buffered == 0 { fits.max(1) } else { fits };
        let in_flight = self.conns.values().map(|c| c.stats.in_flight.load(Ordering::Relaxed)).sum::<u32>();
        s.max_in_flight.min(in_flight.saturating_add(u32::try_from(fits).unwrap_or(u32::MAX)))
    }

    /// Computes every connection's RDY and sends changes: decreases at once, increases only
    /// within what no connection holds (RDY or in flight) and is settled.
    fn apply_rdy(&mut self) {
        let ready: Vec<String> = self.conns.iter().filter(|(_, c)| c.ready).map(|(a, _)| a.clone()).collect();
        let caps: Vec<u32> = ready.iter().map(|a| self.conns.get(a).map_or(0, |c| c.max_rdy)).collect();
        // The capacity a holding application plans with is `max_in_flight`'s: bodies it has
        // taken do not count against the byte budget.
        let capacity = rdy_targets(self.shared.settings.max_in_flight, &caps, self.offset);
        self.shared.capacity.store(capacity.iter().sum(), Ordering::Relaxed);
        self.limit = self.in_flight_limit();
        self.shared.budget_binds.store(self.limit < self.shared.settings.max_in_flight, Ordering::Relaxed);
        let max = self.limit;
        let targets = match self.mode {
            Mode::Normal => rdy_targets(max, &caps, self.offset),
            Mode::Waiting(_) => vec![0; ready.len()],
            Mode::Probing(_) => {
                let mut t = vec![0; ready.len()];
                if !ready.is_empty() {
                    t[self.offset % ready.len()] = 1;
                }
                t
            }
        };
        let mut increases = Vec::new();
        for (addr, &target) in ready.iter().zip(&targets) {
            let Some(c) = self.conns.get_mut(addr) else { continue };
            if target < c.sent {
                c.held[0] = c.held[0].max(c.sent);
                c.sent = target;
                c.rdy.send_replace(target);
            } else if target > c.sent {
                increases.push((addr.clone(), target));
            }
        }
        for c in self.conns.values_mut() {
            // In flight seen now stays counted for a whole tick after it is finished.
            c.held[0] = c.held[0].max(c.holds_now());
        }
        let used = self.conns.values().map(ConnEntry::usage).fold(self.settling[0], u32::saturating_add);
        let mut free = max.saturating_sub(used.saturating_add(self.settling[1]));
        for (addr, target) in increases {
            let Some(c) = self.conns.get_mut(&addr) else { continue };
            // Its RDY may grow over what it already holds for free; beyond, from `free`.
            let usage = c.usage();
            let grant = target.min(usage.saturating_add(free));
            if grant > c.sent {
                free -= grant.max(usage) - usage;
                c.sent = grant;
                c.held[0] = c.held[0].max(grant);
                c.rdy.send_replace(grant);
            }
        }
        let granted =
            ready.iter().zip(&targets).all(|(a, &t)| self.conns.get(a).is_some_and(|c| c.sent == t));
        if !granted {
            self.turn_granted = None;
        } else if self.turn_granted.is_none() {
            self.turn_granted = Some(Instant::now());
        }
    }
}

struct ConnTask {
    addr: String,
    shared: Arc<Shared>,
    stats: Arc<ConnStats>,
    rdy: watch::Receiver<u32>,
    close: CancellationToken,
    events: mpsc::Sender<Event>,
    deliveries: mpsc::Sender<Delivery>,
}

/// One subscribed connection's state.
struct Session {
    /// nsqd's `--max-rdy-count`.
    max_rdy: u32,
    /// The negotiated msg_timeout and nsqd's max_msg_timeout, for the deliveries.
    limits: (Duration, Duration),
    /// For deliveries to send their FIN/REQ/TOUCH back to this connection.
    cmd_tx: mpsc::Sender<Cmd>,
    in_flight: HashSet<MessageId>,
    rdy_sent: u32,
    /// Set once CLS is sent: when the drain gives up.
    closing: Option<Instant>,
    close_wait: bool,
    /// A message arrived: the reconnect backoff starts over.
    answered: bool,
    /// Commands taken in one go by `on_commands` (kept for its capacity).
    commands: Vec<Cmd>,
}

/// How a session ended.
enum SessionEnd {
    /// Closed as asked (stop or the address left).
    Closed,
    Failed(ConnectionError),
}

impl ConnTask {
    async fn run(mut self) {
        let span = tracing::info_span!("nsq_consumer_conn", nsqd = %self.addr);
        async {
            let s = &self.shared.settings;
            let mut backoff = Backoff::random(s.reconnect_backoff_initial, s.reconnect_backoff_max);
            let mut connected_once = false;
            while !self.close.is_cancelled() {
                let conn = tokio::select! {
                    r = Connection::connect(&self.addr, &self.shared.settings.connection) => r,
                    _ = self.close.cancelled() => break,
                };
                let conn = match conn {
                    Ok(c) => c,
                    Err(error) => {
                        self.shared.counters.connection_errors.add(1);
                        let delay = backoff.next_delay();
                        tracing::warn!(%error, ?delay, "cannot connect to nsqd");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = self.close.cancelled() => break,
                        }
                    }
                };
                if connected_once {
                    self.shared.counters.reconnects.add(1);
                }
                connected_once = true;
                let end = self.session(conn, &mut backoff).await;
                // Its messages are nsqd's again (redelivered after their msg_timeout).
                self.stats.in_flight.store(0, Ordering::Relaxed);
                let _ = self.events.send(Event::Closed { addr: self.addr.clone() }).await;
                match end {
                    SessionEnd::Closed => break,
                    SessionEnd::Failed(error) => {
                        self.shared.counters.connection_errors.add(1);
                        let delay = backoff.next_delay();
                        tracing::warn!(%error, ?delay, "nsqd connection lost; reconnecting");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.close.cancelled() => break,
                        }
                    }
                }
            }
            let _ = self.events.send(Event::Exited { addr: self.addr.clone() }).await;
        }
        .instrument(span)
        .await
    }

    async fn session(&mut self, mut conn: Connection, backoff: &mut Backoff) -> SessionEnd {
        let max_rdy = conn.negotiated().max_rdy_count;
        if let Err(e) = self.subscribe(&mut conn).await {
            return SessionEnd::Failed(e);
        }
        tracing::info!(version = %conn.negotiated().version, max_rdy, msg_timeout = ?conn.negotiated().msg_timeout, "subscribed");
        // What the supervisor assigned before this connection is stale; start at 0 and follow
        // only what it assigns after hearing of this connection.
        self.rdy.borrow_and_update();
        if self.events.send(Event::Ready { addr: self.addr.clone(), max_rdy }).await.is_err() {
            return SessionEnd::Closed;
        }
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(self.shared.settings.max_in_flight as usize + 64);
        let mut session = Session {
            max_rdy,
            limits: (conn.negotiated().msg_timeout, conn.negotiated().max_msg_timeout),
            cmd_tx,
            in_flight: HashSet::new(),
            rdy_sent: 0,
            closing: None,
            close_wait: false,
            answered: false,
            commands: Vec::new(),
        };
        loop {
            self.stats
                .in_flight
                .store(u32::try_from(session.in_flight.len()).unwrap_or(u32::MAX), Ordering::Relaxed);
            if session.closing.is_some() && session.close_wait && session.in_flight.is_empty() {
                tracing::info!("drained; closing");
                conn.close().await;
                return SessionEnd::Closed;
            }
            enum Ev {
                Io(Result<(), ConnectionError>),
                Cmd(Cmd),
                Rdy,
                Close,
                Deadline,
            }
            let closing = session.closing;
            let deadline = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let has_room = conn.has_room();
            let ev = tokio::select! {
                biased;
                r = conn.io() => Ev::Io(r),
                Some(c) = cmd_rx.recv(), if has_room => Ev::Cmd(c),
                r = self.rdy.changed(), if closing.is_none() => if r.is_ok() { Ev::Rdy } else { Ev::Close },
                _ = self.close.cancelled(), if closing.is_none() => Ev::Close,
                _ = tokio::time::sleep_until(deadline), if closing.is_some() => Ev::Deadline,
            };
            let result = match ev {
                Ev::Io(Err(e)) => Err(e),
                Ev::Io(Ok(())) => self.on_frames(&mut session, &mut conn, backoff),
                Ev::Cmd(first) => {
                    self.on_commands(&mut session, &mut conn, first, &mut cmd_rx);
                    Ok(())
                }
                Ev::Rdy => {
                    self.on_rdy(&mut session, &mut conn);
                    Ok(())
                }
                Ev::Close => {
                    protocol::encode_cls(conn.out());
                    session.closing = Some(Instant::now() + self.shared.settings.drain_timeout);
                    tracing::info!(in_flight = session.in_flight.len(), "CLS sent; draining");
                    Ok(())
                }
                Ev::Deadline => {
                    self.on_drain_deadline(&mut session, &mut conn);
                    conn.close().await;
                    return SessionEnd::Closed;
                }
            };
            if let Err(e) = result {
                return SessionEnd::Failed(e);
            }
        }
    }

    /// SUB, and its OK within the dial timeout.
    async fn subscribe(&self, conn: &mut Connection) -> Result<(), ConnectionError> {
        let s = &self.shared.settings;
        protocol::encode_sub(&s.topic, &s.channel, conn.out())?;
        let answer = async {
            loop {
                conn.io().await?;
                match conn.next_frame()? {
                    Some(f) if f.is_ok() => return Ok(()),
                    Some(Frame::Error(e)) => return Err(classify_server_error(e)),
                    Some(other) => {
                        return Err(ConnectionError::Protocol(format!("answer to SUB: {other:?}")))
                    }
                    None => {}
                }
            }
        };
        tokio::time::timeout(s.connection.dial_timeout, answer).await.unwrap_or_else(|_| {
            Err(ConnectionError::DialTimeout { addr: self.addr.clone(), timeout: s.connection.dial_timeout })
        })
    }

    /// Every frame read so far: messages to the application, CLOSE_WAIT noted, errors judged.
    fn on_frames(
        &self,
        session: &mut Session,
        conn: &mut Connection,
        backoff: &mut Backoff,
    ) -> Result<(), ConnectionError> {
        let mut received = 0u64;
        while let Some(frame) = conn.next_frame()? {
            match frame {
                Frame::Message(m) => {
                    received += 1;
                    let gone = self.on_message(m, conn, session);
                    if gone && session.rdy_sent > 0 {
                        // Nobody receives: take no more (the supervisor stops).
                        protocol::encode_rdy(0, conn.out());
                        session.rdy_sent = 0;
                    }
                }
                f if f.is_close_wait() => session.close_wait = true,
                Frame::Response(data) => {
                    tracing::debug!(response = %String::from_utf8_lossy(&data), "unexpected response");
                }
                Frame::Error(e) if !e.is_fatal() => {
                    self.shared.counters.non_fatal.add(1);
                    tracing::warn!(error = %e, "non-fatal error from nsqd");
                }
                Frame::Error(e) => return Err(classify_server_error(e)),
            }
        }
        if received > 0 {
            self.shared.counters.received.add(received);
            self.stats.received.fetch_add(received, Ordering::Relaxed);
            if !session.answered {
                session.answered = true;
                backoff.reset();
            }
        }
        Ok(())
    }

    /// FIN, REQ and TOUCH from deliveries, with whatever else is already queued, in one write.
    fn on_commands(
        &self,
        session: &mut Session,
        conn: &mut Connection,
        first: Cmd,
        cmd_rx: &mut mpsc::Receiver<Cmd>,
    ) {
        let mut commands = std::mem::take(&mut session.commands);
        commands.push(first);
        while commands.len() < 256 {
            match cmd_rx.try_recv() {
                Ok(c) => commands.push(c),
                Err(_) => break,
            }
        }
        let mut settled = 0u32;
        for c in &commands {
            if let Cmd::Fin(id) | Cmd::Req(id, _) = c {
                settled += u32::from(session.in_flight.remove(id));
            }
        }
        if settled > 0 && session.rdy_sent > 0 && self.shared.budget_binds.load(Ordering::Relaxed) {
            // While the byte budget limits RDY, a finished message frees no room for a body:
            // what may come is what the supervisor computed from the bodies waiting. RDY goes
            // down with the messages, ahead of their FINs on the same socket, or nsqd would
            // fill what they free (a window's worth at once) before the supervisor's next RDY.
            session.rdy_sent = session.rdy_sent.saturating_sub(settled);
            protocol::encode_rdy(session.rdy_sent, conn.out());
        }
        let (mut fin, mut req) = (0u64, 0u64);
        for c in commands.drain(..) {
            match c {
                Cmd::Fin(id) => {
                    protocol::encode_fin(&id, conn.out());
                    fin += 1;
                }
                Cmd::Req(id, delay) => {
                    protocol::encode_req(&id, delay, conn.out());
                    req += 1;
                }
                Cmd::Touch(id) => {
                    if session.in_flight.contains(&id) {
                        protocol::encode_touch(&id, conn.out());
                    }
                }
            }
        }
        session.commands = commands;
        self.shared.counters.finished.add(fin);
        self.shared.counters.requeued.add(req);
    }

    /// The supervisor's RDY for this connection, capped at the server's max.
    fn on_rdy(&mut self, session: &mut Session, conn: &mut Connection) {
        let mut n = (*self.rdy.borrow_and_update()).min(session.max_rdy);
        if self.deliveries.is_closed() {
            n = 0;
        }
        if n != session.rdy_sent {
            protocol::encode_rdy(n, conn.out());
            session.rdy_sent = n;
        }
    }

    /// The drain time is up: what is still in flight goes back to nsqd.
    fn on_drain_deadline(&self, session: &mut Session, conn: &mut Connection) {
        let n = session.in_flight.len() as u64;
        for id in session.in_flight.drain() {
            protocol::encode_req(&id, 0, conn.out());
        }
        self.shared.counters.requeued.add(n);
        tracing::warn!(
            requeued = n,
            close_wait = session.close_wait,
            "drain deadline passed; requeued what was still in flight"
        );
    }

    /// Hands a message to the application, gives it up, or requeues it at once. Returns
    /// whether the delivery receiver is gone.
    fn on_message(&self, mut m: Message, conn: &mut Connection, session: &mut Session) -> bool {
        if m.body.len() >= COPY_OUT_BODY_BYTES {
            m.body = Bytes::copy_from_slice(&m.body);
        }
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        self.shared.received_bytes.fetch_add(m.body.len() as u64, Ordering::Relaxed);
        let in_flight = &mut session.in_flight;
        if self.deliveries.is_closed() {
            // Before the give-up check: a message nobody can handle is not given up.
            self.requeue_unseen(m.id, conn);
            return true;
        }
        let max_attempts = self.shared.settings.max_attempts;
        if max_attempts > 0 && m.attempts > max_attempts && self.shared.attempts_seen(&m) > max_attempts {
            tracing::warn!(id = %m.id, attempts = m.attempts, "giving up on message");
            if let Some(hook) = &self.shared.give_up {
                // The hook is the application's code: a panic in it must not kill this read
                // loop (its RDY share would never be released nor the connection redialed).
                if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&m))).is_err() {
                    self.shared.counters.give_up_hook_panics.add(1);
                    tracing::error!(id = %m.id, "give-up hook panicked; finishing the message anyway");
                }
            }
            self.shared.forget_unseen(&m.id);
            protocol::encode_fin(&m.id, conn.out());
            self.shared.counters.given_up.add(1);
            self.shared.counters.finished.add(1);
            return false;
        }
        let id = m.id;
        in_flight.insert(id);
        // Counted before the application can take it; a delivery not sent uncounts on drop.
        let buffered = m.body.len() as u64;
        self.shared.buffered_bytes.fetch_add(buffered, Ordering::Relaxed);
        let delivery = Delivery {
            message: m,
            conn: session.cmd_tx.clone(),
            shared: self.shared.clone(),
            done: false,
            msg_timeout: session.limits.0,
            max_msg_timeout: session.limits.1,
            buffered,
        };
        let (mut d, gone) = match self.deliveries.try_send(delivery) {
            Ok(()) => return false,
            // Full (should not happen: in flight stays within the channel's capacity): requeue
            // now rather than make the read side wait.
            Err(TrySendError::Full(d)) => (d, false),
            Err(TrySendError::Closed(d)) => (d, true),
        };
        d.done = true;
        in_flight.remove(&id);
        self.requeue_unseen(id, conn);
        gone
    }

    /// REQ 0 for a message the application never saw.
    fn requeue_unseen(&self, id: MessageId, conn: &mut Connection) {
        protocol::encode_req(&id, 0, conn.out());
        self.shared.requeued_unseen(id);
        self.shared.counters.overflowed.add(1);
        self.shared.counters.requeued.add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdy_spread_evenly_within_max_in_flight() {
        assert_eq!(rdy_targets(10, &[2500, 2500, 2500], 0), [4, 3, 3]);
        assert_eq!(rdy_targets(10, &[2500, 2500, 2500], 1), [3, 4, 3]);
        assert_eq!(rdy_targets(2500, &[2500], 0), [2500]);
        assert_eq!(rdy_targets(100, &[30, 2500], 0), [30, 50], "capped by the server's max_rdy_count");
        assert!(rdy_targets(5, &[], 0).is_empty());
        for max in 1..40u32 {
            for n in 1..12usize {
                for offset in 0..n * 2 {
                    let t = rdy_targets(max, &vec![2500; n], offset);
                    assert_eq!(t.iter().sum::<u32>(), max.min(n as u32 * 2500), "max={max} n={n}");
                    let (lo, hi) = (t.iter().min().unwrap(), t.iter().max().unwrap());
                    assert!(hi - lo <= 1, "even spread: {t:?}");
                }
            }
        }
    }

    #[test]
    fn rdy_rotates_when_connections_outnumber_max_in_flight() {
        // 2 RDY over 5 connections: advancing the offset by 2 each turn reaches every one.
        let mut seen = [false; 5];
        let mut offset = 0;
        for _ in 0..5 {
            let t = rdy_targets(2, &[2500; 5], offset);
            assert_eq!(t.iter().sum::<u32>(), 2);
            assert!(t.iter().all(|&r| r <= 1));
            for (i, &r) in t.iter().enumerate() {
                seen[i] |= r == 1;
            }
            offset += 2;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    fn supervisor(max_in_flight: u32) -> Supervisor {
        budgeted(max_in_flight, 0)
    }

    fn budgeted(max_in_flight: u32, max_buffered_bytes: u64) -> Supervisor {
        let settings = ConsumerSettings { max_in_flight, max_buffered_bytes, ..ConsumerSettings::default() };
        let shared = Arc::new(Shared::new(settings, None, &Telemetry::default()));
        let addresses = fixed_addresses(Vec::<String>::new());
        Supervisor::new(shared, addresses, None, TaskTracker::new(), CancellationToken::new())
    }

    fn add(s: &mut Supervisor, addr: &str) -> (watch::Receiver<u32>, Arc<ConnStats>) {
        let (rdy, rx) = watch::channel(0);
        let stats = Arc::new(ConnStats::default());
        s.conns.insert(
            addr.into(),
            ConnEntry {
                rdy,
                close: CancellationToken::new(),
                stats: stats.clone(),
                ready: true,
                max_rdy: 2500,
                sent: 0,
                held: [0, 0],
                respawn: false,
                removing: false,
            },
        );
        (rx, stats)
    }

    /// Two ticks: what was freed before the first is free after the second.
    fn settle(s: &mut Supervisor) {
        s.on_tick(Instant::now());
        s.on_tick(Instant::now());
    }

    #[test]
    fn freed_rdy_is_handed_out_only_after_a_whole_tick() {
        let mut s = supervisor(10);
        let (a, _) = add(&mut s, "a");
        s.apply_rdy();
        assert_eq!(*a.borrow(), 10, "the first connection gets everything at once");
        let (b, _) = add(&mut s, "b");
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (5, 0), "decrease now, increase after settling");
        s.on_tick(Instant::now());
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (5, 0), "a tick that began before the decrease");
        s.on_tick(Instant::now());
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (5, 5));
        // Backoff: everything to 0, then a single probe.
        s.mode = Mode::Waiting(Instant::now());
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (0, 0));
        settle(&mut s);
        s.mode = Mode::Probing(Instant::now());
        s.apply_rdy();
        assert_eq!(*a.borrow() + *b.borrow(), 1);
    }

    #[test]
    fn messages_in_flight_count_against_max_in_flight_after_rdy_is_lowered() {
        let mut s = supervisor(7);
        let (a, a_stats) = add(&mut s, "a");
        s.apply_rdy();
        assert_eq!(*a.borrow(), 7);
        // nsqd filled the window: 7 in flight on a.
        a_stats.in_flight.store(7, Ordering::Relaxed);
        let (b, _) = add(&mut s, "b");
        s.apply_rdy();
        settle(&mut s);
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (4, 0), "a still holds 7: nothing for b");
        a_stats.in_flight.store(5, Ordering::Relaxed);
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*b.borrow(), 2, "only what a no longer holds");
        a_stats.in_flight.store(2, Ordering::Relaxed);
        s.apply_rdy();
        assert_eq!(*b.borrow(), 2, "freed in flight waits a whole tick");
        settle(&mut s);
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (4, 3));
        // A connection's own in flight does not keep its RDY from growing back.
        let mut s = supervisor(10);
        let (a, a_stats) = add(&mut s, "a");
        s.mode = Mode::Probing(Instant::now());
        s.apply_rdy();
        a_stats.in_flight.store(9, Ordering::Relaxed);
        s.mode = Mode::Normal;
        s.apply_rdy();
        assert_eq!(*a.borrow(), 10);
    }

    /// A delivery of `body_bytes` received on a connection, as the connection task makes one.
    fn delivered(s: &Supervisor, stats: &ConnStats, body_bytes: usize) -> Delivery {
        let shared = s.shared.clone();
        shared.received.fetch_add(1, Ordering::Relaxed);
        shared.received_bytes.fetch_add(body_bytes as u64, Ordering::Relaxed);
        shared.buffered_bytes.fetch_add(body_bytes as u64, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let body = Bytes::from(vec![b'x'; body_bytes]);
        let message = Message { id: MessageId(*b"0123456789abcdef"), attempts: 1, timestamp_ns: 0, body };
        Delivery {
            message,
            conn: mpsc::channel(1).0,
            shared,
            done: true,
            msg_timeout: Duration::from_secs(60),
            max_msg_timeout: Duration::from_secs(900),
            buffered: body_bytes as u64,
        }
    }

    #[test]
    fn rdy_keeps_bodies_not_yet_taken_within_the_byte_budget() {
        // 100 in flight at most, bodies of 1,000 bytes, 10,000 bytes of them buffered at most.
        let mut s = budgeted(100, 10_000);
        let (a, a_stats) = add(&mut s, "a");
        s.apply_rdy();
        assert_eq!(*a.borrow(), 1, "bodies as large as a frame until the size is known");
        assert_eq!(s.shared.capacity.load(Ordering::Relaxed), 100, "holding plans with max_in_flight");
        let mut first = delivered(&s, &a_stats, 1000);
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 10, "1 in flight and 9 more bodies fit");
        // The first body taken (held by the application): it counts in flight only.
        drop(first.take_body());
        assert_eq!(s.shared.buffered_bytes.load(Ordering::Relaxed), 0);
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 11);
        // Ten more arrive; four taken and held, six still buffered.
        let mut more: Vec<Delivery> = (0..10).map(|_| delivered(&s, &a_stats, 1000)).collect();
        for d in &mut more[..4] {
            drop(d.take_body());
        }
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 11 + 4, "11 in flight, and the 4,000 bytes left");
        // Settled without being taken (requeued, dropped): no longer buffered either.
        more.truncate(4);
        a_stats.in_flight.store(3, Ordering::Relaxed);
        assert_eq!(s.shared.buffered_bytes.load(Ordering::Relaxed), 0);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 3 + 10, "decreased at once: 3 in flight and 10 bodies");
        // Never above max_in_flight, however small the bodies.
        let mut s = budgeted(100, 10_000);
        let (a, a_stats) = add(&mut s, "a");
        drop(delivered(&s, &a_stats, 1).take_body());
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 100);
        // A body larger than the budget still comes, one at a time.
        let mut s = budgeted(100, 10_000);
        let (a, a_stats) = add(&mut s, "a");
        let mut big = delivered(&s, &a_stats, 50_000);
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 1, "nothing more while it waits");
        drop(big.take_body());
        settle(&mut s);
        s.apply_rdy();
        assert_eq!(*a.borrow(), 2, "held, and room for one more");
    }

    #[test]
    fn an_idle_probe_moves_to_the_next_connection() {
        let mut s = supervisor(2);
        let (a, a_stats) = add(&mut s, "a");
        let (b, _) = add(&mut s, "b");
        let start = Instant::now();
        s.mode = Mode::Waiting(start);
        s.on_tick(start);
        assert!(matches!(s.mode, Mode::Probing(_)));
        settle(&mut s);
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (0, 1), "the first probe on b");
        let idle = s.shared.settings.probe_idle_timeout;
        s.on_tick(start + idle / 2);
        s.apply_rdy();
        assert_eq!(*b.borrow(), 1, "not yet");
        s.on_tick(start + idle);
        s.on_tick(start + idle);
        s.on_tick(start + idle);
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (1, 0), "b had nothing: the probe moved to a");
        // A message on the probe's connection keeps the probe there.
        a_stats.received.fetch_add(1, Ordering::Relaxed);
        a_stats.in_flight.store(1, Ordering::Relaxed);
        for k in 2..6 {
            s.on_tick(start + idle * k);
        }
        s.apply_rdy();
        assert_eq!((*a.borrow(), *b.borrow()), (1, 0));
    }

    #[tokio::test]
    async fn backoff_levels_follow_probe_outcomes() {
        let mut s = supervisor(10);
        s.shared.failure();
        s.on_signals();
        assert!(matches!(s.mode, Mode::Waiting(_)));
        assert_eq!(s.level, 1);
        assert!(s.shared.backing_off.load(Ordering::Relaxed));
        // Ignored while waiting.
        s.shared.failure();
        s.on_signals();
        assert_eq!(s.level, 1);
        s.mode = Mode::Probing(Instant::now());
        s.shared.failure();
        s.on_signals();
        assert_eq!(s.level, 2);
        s.mode = Mode::Probing(Instant::now());
        s.shared.success();
        s.on_signals();
        assert_eq!(s.level, 1);
        assert!(matches!(s.mode, Mode::Waiting(_)));
        s.mode = Mode::Probing(Instant::now());
        s.shared.success();
        s.on_signals();
        assert_eq!((s.level, s.mode), (0, Mode::Normal));
        assert!(!s.shared.backing_off.load(Ordering::Relaxed));
    }

    #[test]
    fn deliveries_the_application_never_saw_do_not_count_as_attempts() {
        let s = Shared::new(ConsumerSettings::default(), None, &Telemetry::default());
        let id = MessageId(*b"0123456789abcdef");
        let m = Message { id, attempts: 3, timestamp_ns: 0, body: Bytes::new() };
        assert_eq!(s.attempts_seen(&m), 3);
        s.requeued_unseen(id);
        s.requeued_unseen(id);
        assert_eq!(s.attempts_seen(&m), 1);
        s.forget_unseen(&id);
        assert_eq!(s.attempts_seen(&m), 3);
    }
}

//! The NSQ producer: a cloneable [`Producer`] handle and one task that owns the connection.
//!
//! Every publish travels with a `oneshot` for its own answer and resolves to `Ok(())` once
//! nsqd said `OK`, or to a typed [`PublishError`]. Publishes are pipelined: the task writes
//! as many as fit (a bounded number of commands and [`OUTPUT_HIGH_WATER_BYTES`](super::connection::OUTPUT_HIGH_WATER_BYTES) of output)
//! without waiting, and keeps those written but unanswered in a FIFO, since nsqd answers PUB,
//! MPUB and DPUB in order. Single publishes waiting in the queue for the same topic are sent
//! together as one MPUB of at most `batch_max_messages` / `batch_max_bytes`; each keeps its
//! own answer.
//!
//! # Guarantees
//!
//! At least once: a publish is answered `Ok` only after nsqd's `OK`. When a connection drops,
//! the publishes written and not answered have an unknown outcome; they go back to the FRONT
//! of the queue, in order, and are sent again on the next connection (to the same nsqd or the
//! next one of `addresses`). So a message can be stored twice (nsqd stored it and the `OK` was
//! lost), never silently lost. The same holds after a fatal error frame: nsqd answers in order
//! and closes after it, so the error belongs to the oldest unanswered publish. If it is the
//! caller's fault (`E_BAD_TOPIC`, `E_BAD_MESSAGE`, `E_BAD_BODY`, `E_UNAUTHORIZED`) that
//! publish fails with [`PublishError::Rejected`]; `E_PUB_FAILED`/`E_MPUB_FAILED`/
//! `E_DPUB_FAILED` (the topic was exiting) and any other error retry it; every publish
//! behind it is resent. Publishes the producer merged into one MPUB that nsqd refuses for a
//! size (`E_BAD_MESSAGE`, `E_BAD_BODY`: nsqd's limits may be lower than the producer's) are
//! each sent again on their own, so that only the one at fault fails. A publish that is at the
//! head of the FIFO when nsqd closes the connection with an unexplained error [`MAX_BLAMES`]
//! times fails, so one poisonous publish cannot stall the producer forever.
//!
//! Topic names, empty bodies and sizes are checked before anything is queued, so a bad
//! publish fails at once without costing a connection.
//!
//! Back-pressure: the queue is a bounded channel; while nsqd is unreachable, publishing waits
//! for room. Reconnects use [`Backoff`] over the addresses in turn (failover).
//!
//! Shutdown: when the cancellation token fires, new publishes fail with
//! [`PublishError::Stopped`]; those already queued are still sent for up to `drain_timeout`,
//! then every one left fails with [`PublishError::Stopped`] (outcome unknown: it may or may
//! not have been stored). The task ends when every handle is dropped and the queue is empty.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::connection::{classify_server_error, Connection, ConnectionError, ConnectionSettings};
use super::protocol::{self, ErrorCode, Frame, ServerError};
use crate::backoff::Backoff;
use crate::telemetry::{Counter, Telemetry};

/// nsqd's `--max-req-timeout` default, the longest DPUB delay it accepts.
pub(crate) const MAX_DEFER: Duration = Duration::from_secs(3600);
/// Times a publish may be at the head of the FIFO when nsqd closes the connection with an
/// error that does not say whose fault it is, before it fails.
pub(crate) const MAX_BLAMES: u8 = 3;

/// Validated producer settings.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// nsqd TCP addresses (`host:port`), tried in turn.
    pub addresses: Vec<String>,
    /// How connections are opened.
    pub connection: ConnectionSettings,
    /// Publishes waiting for the task, at most (the caller waits beyond).
    pub queue_capacity: usize,
    /// Most messages merged into one MPUB.
    pub batch_max_messages: usize,
    /// Most body bytes merged into one MPUB.
    pub batch_max_bytes: usize,
    /// nsqd's `--max-msg-size`: a larger message fails locally.
    pub max_message_bytes: usize,
    /// nsqd's `--max-body-size`: a larger MPUB fails locally.
    pub max_body_bytes: usize,
    /// Commands written and not yet answered, at most.
    pub max_pipelined: usize,
    /// Reconnect backoff: first wait.
    pub backoff_initial: Duration,
    /// Reconnect backoff: cap.
    pub backoff_max: Duration,
    /// After cancellation, how long queued publishes are still sent.
    pub drain_timeout: Duration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            addresses: vec!["127.0.0.1:4150".into()],
            connection: ConnectionSettings::default(),
            queue_capacity: 10_000,
            batch_max_messages: 200,
            batch_max_bytes: 512 * 1024,
            max_message_bytes: protocol::NSQD_DEFAULT_MAX_MSG_BYTES,
            max_body_bytes: 5 * 1024 * 1024,
            max_pipelined: 64,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a publish did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic name is not valid for nsqd.
    #[error("invalid topic name `{0}`")]
    InvalidTopic(String),
    /// nsqd refuses empty messages.
    #[error("empty message")]
    EmptyMessage,
    /// MPUB of no messages.
    #[error("no messages to publish")]
    NoMessages,
    /// Over nsqd's `--max-msg-size`.
    #[error("message of {len} bytes is over the limit of {max}")]
    MessageTooLarge {
        /// Bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The MPUB body is over nsqd's `--max-body-size`.
    #[error("MPUB body of {len} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// Bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The DPUB delay is over [`MAX_DEFER`].
    #[error("delay {0:?} is over nsqd's maximum of one hour")]
    DelayTooLong(Duration),
    /// nsqd refused it for good (`E_BAD_TOPIC`, `E_BAD_MESSAGE`, `E_BAD_BODY`,
    /// `E_UNAUTHORIZED`, or an error it kept closing the connection with).
    #[error("nsqd rejected the publish: {message}")]
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// nsqd's whole error text.
        message: String,
    },
    /// The producer stopped before nsqd answered: the message may or may not be stored.
    #[error("the producer stopped before nsqd answered")]
    Stopped,
}

type Answer = oneshot::Sender<Result<(), PublishError>>;

/// The answer to one publish, as a future.
#[derive(Debug)]
pub struct PublishAck(oneshot::Receiver<Result<(), PublishError>>);

impl std::future::Future for PublishAck {
    type Output = Result<(), PublishError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(PublishError::Stopped)))
    }
}

enum Payload {
    One(Bytes),
    Many(Vec<Bytes>),
}

struct Request {
    topic: Arc<str>,
    payload: Payload,
    delay_ms: Option<u32>,
    answer: Answer,
}

impl Request {
    fn messages(&self) -> usize {
        match &self.payload {
            Payload::One(_) => 1,
            Payload::Many(v) => v.len(),
        }
    }

    /// Bytes this request adds to an MPUB body: a u32 size and the bytes, per message.
    fn bytes(&self) -> usize {
        match &self.payload {
            Payload::One(b) => 4 + b.len(),
            Payload::Many(v) => v.iter().map(|b| 4 + b.len()).sum(),
        }
    }
}

/// One command's worth of publishes: a PUB, a DPUB, or an MPUB of one or more requests.
#[derive(Debug)]
struct Unit {
    topic: Arc<str>,
    bodies: Vec<Bytes>,
    bytes: usize,
    delay_ms: Option<u32>,
    answers: Vec<Answer>,
    /// Messages of each request merged into this unit, in the order of `answers`.
    parts: Vec<usize>,
    /// Times this unit was at the head of the FIFO when nsqd closed with an error.
    blamed: u8,
}

impl Unit {
    fn from_request(r: Request) -> Unit {
        // The MPUB body as nsqd counts it against --max-body-size: the u32 count, then each
        // message's u32 size and bytes.
        let bytes = 4 + r.bytes();
        let bodies = match r.payload {
            Payload::One(b) => vec![b],
            Payload::Many(v) => v,
        };
        let parts = vec![bodies.len()];
        Unit {
            topic: r.topic,
            bodies,
            bytes,
            delay_ms: r.delay_ms,
            answers: vec![r.answer],
            parts,
            blamed: 0,
        }
    }

    /// Whether `r` can join this unit's MPUB within the limits.
    fn can_merge(&self, r: &Request, max_messages: usize, max_bytes: usize) -> bool {
        self.delay_ms.is_none()
            && r.delay_ms.is_none()
            && self.topic == r.topic
            && self.bodies.len() + r.messages() <= max_messages
            && self.bytes + r.bytes() <= max_bytes
    }

    fn merge(&mut self, r: Request) {
        self.bytes += r.bytes();
        self.parts.push(r.messages());
        match r.payload {
            Payload::One(b) => self.bodies.push(b),
            Payload::Many(v) => self.bodies.extend(v),
        }
        self.answers.push(r.answer);
    }

    /// The requests merged into this unit, each a unit of its own again, in order.
    fn split(self) -> Vec<Unit> {
        let Unit { topic, bodies, delay_ms, answers, parts, blamed, .. } = self;
        let mut bodies = bodies.into_iter();
        parts
            .into_iter()
            .zip(answers)
            .map(|(n, answer)| {
                let bodies: Vec<Bytes> = bodies.by_ref().take(n).collect();
                let bytes = 4 + bodies.iter().map(|b| 4 + b.len()).sum::<usize>();
                Unit {
                    topic: topic.clone(),
                    bodies,
                    bytes,
                    delay_ms,
                    answers: vec![answer],
                    parts: vec![n],
                    blamed,
                }
            })
            .collect()
    }

    fn answer(self, result: &Result<(), PublishError>) {
        for a in self.answers {
            let _ = a.send(result.clone());
        }
    }

    fn encode(&self, out: &mut bytes::BytesMut) -> Result<(), protocol::EncodeError> {
        match (self.delay_ms, self.bodies.as_slice()) {
            (Some(delay), [body]) => protocol::encode_dpub(&self.topic, delay, body, out),
            (None, [body]) => protocol::encode_pub(&self.topic, body, out),
            _ => protocol::encode_mpub(&self.topic, &self.bodies, out),
        }
    }
}

/// The handle; clone it freely. See the module documentation.
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Request>,
    limits: Limits,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_message_bytes: usize,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("topic", &self.topic).field("messages", &self.messages()).finish()
    }
}

#[derive(Clone)]
struct Counters {
    published: Counter,
    retries: Counter,
    failed: Counter,
    reconnects: Counter,
    connection_errors: Counter,
    non_fatal: Counter,
}

impl Counters {
    fn new(t: &Telemetry) -> Counters {
        Counters {
            published: t.counter("logmill_nsq_messages_published_total", "Messages nsqd acknowledged.", &[]),
            retries: t.counter(
                "logmill_nsq_publish_retries_total",
                "Messages resent after a dropped connection or a retryable error.",
                &[],
            ),
            failed: t.counter(
                "logmill_nsq_publishes_failed_total",
                "Messages whose publish failed for good (rejected or stopped).",
                &[],
            ),
            reconnects: t.counter(
                "logmill_nsq_reconnects_total",
                "Connections to nsqd opened after the first one.",
                &[("role", "producer")],
            ),
            connection_errors: t.counter(
                "logmill_nsq_connection_errors_total",
                "Connections to nsqd that failed or ended in error.",
                &[("role", "producer")],
            ),
            non_fatal: t.counter(
                "logmill_nsq_non_fatal_errors_total",
                "E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED received.",
                &[("role", "producer")],
            ),
        }
    }
}

impl Producer {
    /// Starts the producer task on `tracker`; it connects on the first publish.
    pub fn start(
        settings: ProducerSettings,
        telemetry: &Telemetry,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Producer {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let limits =
            Limits { max_message_bytes: settings.max_message_bytes, max_body_bytes: settings.max_body_bytes };
        let task = Task {
            answered_on_connection: false,
            backoff: Backoff::random(settings.backoff_initial, settings.backoff_max),
            settings,
            rx,
            rx_closed: false,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            counters: Counters::new(telemetry),
            cancel,
            stop_deadline: None,
            next_addr: 0,
            connected_once: false,
        };
        tracker.spawn(task.run());
        Producer { tx, limits }
    }

    /// Publishes one message (PUB, or part of an MPUB) and waits for nsqd's answer.
    pub async fn publish(&self, topic: &str, body: impl Into<Bytes>) -> Result<(), PublishError> {
        self.submit(topic, body).await?.await
    }

    /// Publishes several messages as one MPUB and waits for nsqd's answer.
    pub async fn publish_multi(&self, topic: &str, bodies: Vec<Bytes>) -> Result<(), PublishError> {
        self.submit_multi(topic, bodies).await?.await
    }

    /// Publishes one message to be delivered after `delay` (DPUB) and waits for the answer.
    pub async fn publish_deferred(
        &self,
        topic: &str,
        delay: Duration,
        body: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let body = body.into();
        self.check_one(topic, &body)?;
        let delay_ms = u32::try_from(delay.as_millis())
            .ok()
            .filter(|_| delay <= MAX_DEFER)
            .ok_or(PublishError::DelayTooLong(delay))?;
        self.enqueue(topic, Payload::One(body), Some(delay_ms)).await?.await
    }

    /// Queues one message and returns its answer as a future, without waiting for it: many
    /// submits in a row are pipelined and batched. Waits only for room in the queue.
    pub async fn submit(&self, topic: &str, body: impl Into<Bytes>) -> Result<PublishAck, PublishError> {
        let body = body.into();
        self.check_one(topic, &body)?;
        self.enqueue(topic, Payload::One(body), None).await
    }

    /// Queues one MPUB and returns its answer as a future (see [`Producer::submit`]).
    pub async fn submit_multi(&self, topic: &str, bodies: Vec<Bytes>) -> Result<PublishAck, PublishError> {
        check_topic(topic)?;
        if bodies.is_empty() {
            return Err(PublishError::NoMessages);
        }
        // MPUB body: u32 count, then u32 size + bytes per message.
        let mut total = 4usize;
        for b in &bodies {
            self.check_body(b)?;
            total = total.saturating_add(4 + b.len());
        }
        if total > self.limits.max_body_bytes {
            return Err(PublishError::BodyTooLarge { len: total, max: self.limits.max_body_bytes });
        }
        self.enqueue(topic, Payload::Many(bodies), None).await
    }

    fn check_one(&self, topic: &str, body: &Bytes) -> Result<(), PublishError> {
        check_topic(topic)?;
        self.check_body(body)
    }

    fn check_body(&self, body: &Bytes) -> Result<(), PublishError> {
        if body.is_empty() {
            return Err(PublishError::EmptyMessage);
        }
        if body.len() > self.limits.max_message_bytes {
            return Err(PublishError::MessageTooLarge {
                len: body.len(),
                max: self.limits.max_message_bytes,
            });
        }
        Ok(())
    }

    async fn enqueue(
        &self,
        topic: &str,
        payload: Payload,
        delay_ms: Option<u32>,
    ) -> Result<PublishAck, PublishError> {
        let (answer, rx) = oneshot::channel();
        let request = Request { topic: Arc::from(topic), payload, delay_ms, answer };
        self.tx.send(request).await.map_err(|_| PublishError::Stopped)?;
        Ok(PublishAck(rx))
    }
}

fn check_topic(topic: &str) -> Result<(), PublishError> {
    if protocol::valid_name(topic) {
        Ok(())
    } else {
        Err(PublishError::InvalidTopic(topic.to_owned()))
    }
}

/// Where an error frame leaves the publish at the head of the FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The caller's fault: fail it.
    Fail,
    /// A server-side failure: send it again.
    Retry,
    /// Not known whose fault: retry, counting a blame.
    Blame,
}

fn verdict(code: ErrorCode) -> Verdict {
    match code {
        ErrorCode::BadTopic | ErrorCode::BadMessage | ErrorCode::BadBody | ErrorCode::Unauthorized => {
            Verdict::Fail
        }
        ErrorCode::PubFailed | ErrorCode::MpubFailed | ErrorCode::DpubFailed => Verdict::Retry,
        _ => Verdict::Blame,
    }
}

/// How a connection ended.
enum End {
    /// Every handle dropped and nothing left to send.
    Done,
    /// Failed; reconnect.
    Failed(ConnectionError),
    /// The drain deadline passed.
    DeadlinePassed,
}

struct Task {
    /// Whether the current connection has answered anything: one that fails before it did
    /// (a publish refused for good on a fresh connection, say) is followed by a backoff, not
    /// an immediate reconnect.
    answered_on_connection: bool,
    settings: ProducerSettings,
    rx: mpsc::Receiver<Request>,
    rx_closed: bool,
    /// Formed units waiting to be written; requeued ones go to the front.
    queue: VecDeque<Unit>,
    /// Written, waiting for nsqd's answer, oldest first.
    in_flight: VecDeque<Unit>,
    counters: Counters,
    cancel: CancellationToken,
    stop_deadline: Option<Instant>,
    backoff: Backoff,
    next_addr: usize,
    connected_once: bool,
}

impl Task {
    async fn run(mut self) {
        loop {
            // Connect lazily: wait for something to publish.
            if self.queue.is_empty() {
                if self.rx_closed {
                    break;
                }
                let stopping = self.stop_deadline.is_some();
                let got = tokio::select! {
                    _ = self.cancel.cancelled(), if !stopping => None,
                    got = self.rx.recv() => Some(got),
                };
                match got {
                    None => {
                        self.begin_stop();
                        continue;
                    }
                    Some(Some(r)) => self.form_units(r),
                    Some(None) => {
                        self.rx_closed = true;
                        continue;
                    }
                }
            }
            let Some(conn) = self.connect().await else { break };
            let addr = conn.addr().to_owned();
            let span = tracing::info_span!("nsq_producer_conn", nsqd = %addr);
            let end = self.pump(conn).instrument(span).await;
            match end {
                End::Done => break,
                End::DeadlinePassed => break,
                End::Failed(error) => {
                    self.counters.connection_errors.add(1);
                    tracing::warn!(nsqd = %addr, %error, pending = self.in_flight.len(), "nsqd connection lost; resending unanswered publishes");
                    self.requeue_in_flight();
                    if !self.answered_on_connection {
                        let delay = self.backoff.next_delay();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = tokio::time::sleep_until(self.deadline()) => {}
                        }
                    }
                }
            }
        }
        self.fail_remaining();
    }

    fn begin_stop(&mut self) {
        self.stop_deadline = Some(Instant::now() + self.settings.drain_timeout);
        // No new publishes; those already queued still go out.
        self.rx.close();
    }

    fn deadline(&self) -> Instant {
        self.stop_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    /// Builds units from `first` and whatever else is already queued, merging single publishes
    /// of one topic into MPUBs.
    fn form_units(&mut self, first: Request) {
        let max_n = self.settings.batch_max_messages.max(1);
        // A merged MPUB must stay within nsqd's body limit whatever the batch setting says.
        let max_b = self.settings.batch_max_bytes.clamp(1, self.settings.max_body_bytes.max(1));
        let mut current = Unit::from_request(first);
        // Bounded so one call does not drain an endless stream while output waits.
        for _ in 0..max_n.max(64) {
            if current.bodies.len() >= max_n || current.bytes >= max_b {
                break;
            }
            match self.rx.try_recv() {
                Ok(r) if current.can_merge(&r, max_n, max_b) => current.merge(r),
                Ok(r) => {
                    self.queue.push_back(std::mem::replace(&mut current, Unit::from_request(r)));
                }
                Err(_) => break,
            }
        }
        self.queue.push_back(current);
    }

    /// Dials the addresses in turn until one answers; after a whole round fails, waits the
    /// backoff. `None` when stopping and the deadline passed.
    async fn connect(&mut self) -> Option<Connection> {
        let addresses = self.settings.addresses.clone();
        if addresses.is_empty() {
            return None;
        }
        loop {
            for _ in 0..addresses.len() {
                let addr = &addresses[self.next_addr % addresses.len()];
                let deadline = self.deadline();
                let attempt = tokio::select! {
                    r = Connection::connect(addr, &self.settings.connection) => Some(r),
                    _ = tokio::time::sleep_until(deadline) => None,
                };
                match attempt {
                    None => return None,
                    Some(Ok(conn)) => {
                        if self.connected_once {
                            self.counters.reconnects.add(1);
                        }
                        self.connected_once = true;
                        tracing::info!(nsqd = %addr, version = %conn.negotiated().version, tls = conn.negotiated().tls, "producer connected");
                        return Some(conn);
                    }
                    Some(Err(error)) => {
                        self.counters.connection_errors.add(1);
                        if error.is_permanent() {
                            tracing::error!(nsqd = %addr, %error, "cannot publish to nsqd");
                        } else {
                            tracing::warn!(nsqd = %addr, %error, "cannot connect to nsqd");
                        }
                        self.next_addr = (self.next_addr + 1) % addresses.len();
                    }
                }
            }
            let delay = self.backoff.next_delay();
            tracing::debug!(?delay, "every nsqd failed; backing off");
            let (deadline, stopping) = (self.deadline(), self.stop_deadline.is_some());
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = self.cancel.cancelled(), if !stopping => true,
            };
            if cancelled {
                self.begin_stop();
            }
        }
    }

    /// Writes queued units while there is room, so the next `select!` only waits.
    fn fill(&mut self, conn: &mut Connection) {
        while conn.has_room() && self.in_flight.len() < self.settings.max_pipelined.max(1) {
            let unit = match self.queue.pop_front() {
                Some(u) => u,
                None => match self.rx.try_recv() {
                    Ok(r) => {
                        self.form_units(r);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            match unit.encode(conn.out()) {
                Ok(()) => self.in_flight.push_back(unit),
                Err(e) => {
                    // Checked when queued; only a bug gets here. Fail it rather than loop.
                    tracing::error!(topic = %unit.topic, error = %e, "cannot encode publish");
                    self.counters.failed.add(unit.bodies.len() as u64);
                    unit.answer(&Err(PublishError::Rejected {
                        code: ErrorCode::Unknown,
                        message: e.to_string(),
                    }));
                }
            }
        }
    }

    async fn pump(&mut self, mut conn: Connection) -> End {
        self.answered_on_connection = false;
        loop {
            self.fill(&mut conn);
            if self.rx_closed && self.queue.is_empty() && self.in_flight.is_empty() {
                conn.close().await;
                return End::Done;
            }
            let can_take = conn.has_room()
                && self.in_flight.len() < self.settings.max_pipelined.max(1)
                && self.queue.is_empty()
                && !self.rx_closed;
            let stopping = self.stop_deadline.is_some();
            let deadline = self.deadline();
            enum Ev {
                Io(Result<(), ConnectionError>),
                Req(Option<Request>),
                Cancel,
                Deadline,
            }
            let ev = tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if !stopping => Ev::Cancel,
                _ = tokio::time::sleep_until(deadline), if stopping => Ev::Deadline,
                r = conn.io() => Ev::Io(r),
                r = self.rx.recv(), if can_take => Ev::Req(r),
            };
            match ev {
                Ev::Cancel => self.begin_stop(),
                Ev::Deadline => {
                    conn.close().await;
                    return End::DeadlinePassed;
                }
                Ev::Req(Some(r)) => self.form_units(r),
                Ev::Req(None) => self.rx_closed = true,
                Ev::Io(Err(e)) => return End::Failed(e),
                Ev::Io(Ok(())) => loop {
                    match conn.next_frame() {
                        Ok(None) => break,
                        Ok(Some(frame)) => {
                            if let Err(e) = self.on_frame(frame) {
                                return End::Failed(e);
                            }
                            if !self.answered_on_connection {
                                self.answered_on_connection = true;
                                self.backoff.reset();
                            }
                        }
                        Err(e) => return End::Failed(e),
                    }
                },
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        match frame {
            Frame::Response(data) if data.as_ref() == protocol::OK => {
                let Some(unit) = self.in_flight.pop_front() else {
                    return Err(ConnectionError::Protocol("OK with no publish pending".into()));
                };
                self.counters.published.add(unit.bodies.len() as u64);
                unit.answer(&Ok(()));
                Ok(())
            }
            Frame::Response(data) => {
                Err(ConnectionError::Protocol(format!("response {:?}", String::from_utf8_lossy(&data))))
            }
            Frame::Message(_) => Err(ConnectionError::Protocol("message sent to a producer".into())),
            Frame::Error(e) if !e.is_fatal() => {
                self.counters.non_fatal.add(1);
                tracing::warn!(error = %e, "non-fatal error from nsqd");
                Ok(())
            }
            Frame::Error(e) => {
                self.on_fatal(&e);
                Err(classify_server_error(e))
            }
        }
    }

    /// nsqd answers in order and closes after this error: it belongs to the oldest unanswered
    /// publish. Decide that one's fate; the caller requeues the rest.
    fn on_fatal(&mut self, e: &ServerError) {
        let Some(mut head) = self.in_flight.pop_front() else { return };
        if head.answers.len() > 1 && matches!(e.code, ErrorCode::BadMessage | ErrorCode::BadBody) {
            // Publishes this producer merged into one MPUB, refused for a size (one message
            // over nsqd's --max-msg-size, or the whole body over --max-body-size, limits that
            // can be lower than configured here): which one is at fault is unknown, so each
            // goes again as its own command, and the refusal lands on the one it belongs to.
            tracing::info!(topic = %head.topic, publishes = head.answers.len(), error = %e, "merged MPUB refused; resending each publish on its own");
            for unit in head.split().into_iter().rev() {
                self.in_flight.push_front(unit);
            }
            return;
        }
        let fail = match verdict(e.code) {
            Verdict::Fail => true,
            Verdict::Retry => false,
            Verdict::Blame => {
                head.blamed = head.blamed.saturating_add(1);
                head.blamed >= MAX_BLAMES
            }
        };
        if fail {
            tracing::warn!(topic = %head.topic, messages = head.bodies.len(), error = %e, "publish rejected by nsqd");
            self.counters.failed.add(head.bodies.len() as u64);
            head.answer(&Err(PublishError::Rejected { code: e.code, message: e.to_string() }));
        } else {
            tracing::info!(topic = %head.topic, error = %e, "publish failed on nsqd; will retry");
            self.in_flight.push_front(head);
        }
    }

    /// Written-but-unanswered units go back to the front of the queue, in order.
    fn requeue_in_flight(&mut self) {
        let mut resent = 0u64;
        while let Some(unit) = self.in_flight.pop_back() {
            resent += unit.bodies.len() as u64;
            self.queue.push_front(unit);
        }
        self.counters.retries.add(resent);
    }

    fn fail_remaining(&mut self) {
        self.requeue_in_flight();
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            self.queue.push_back(Unit::from_request(r));
        }
        let mut failed = 0u64;
        for unit in self.queue.drain(..) {
            failed += unit.bodies.len() as u64;
            unit.answer(&Err(PublishError::Stopped));
        }
        if failed > 0 {
            tracing::warn!(messages = failed, "producer stopped with unanswered publishes");
            self.counters.failed.add(failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        topic: &str,
        body: &'static [u8],
        delay_ms: Option<u32>,
    ) -> (Request, oneshot::Receiver<Result<(), PublishError>>) {
        let (answer, rx) = oneshot::channel();
        (
            Request {
                topic: Arc::from(topic),
                payload: Payload::One(Bytes::from_static(body)),
                delay_ms,
                answer,
            },
            rx,
        )
    }

    fn task(settings: ProducerSettings) -> (Task, mpsc::Sender<Request>) {
        let (tx, rx) = mpsc::channel(100);
        let task = Task {
            answered_on_connection: false,
            backoff: Backoff::new(settings.backoff_initial, settings.backoff_max, 1),
            settings,
            rx,
            rx_closed: false,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            counters: Counters::new(&Telemetry::default()),
            cancel: CancellationToken::new(),
            stop_deadline: None,
            next_addr: 0,
            connected_once: false,
        };
        (task, tx)
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(ErrorCode::BadTopic), Verdict::Fail);
        assert_eq!(verdict(ErrorCode::BadMessage), Verdict::Fail);
        assert_eq!(verdict(ErrorCode::BadBody), Verdict::Fail);
        assert_eq!(verdict(ErrorCode::PubFailed), Verdict::Retry);
        assert_eq!(verdict(ErrorCode::MpubFailed), Verdict::Retry);
        assert_eq!(verdict(ErrorCode::DpubFailed), Verdict::Retry);
        assert_eq!(verdict(ErrorCode::Invalid), Verdict::Blame);
    }

    #[tokio::test]
    async fn batches_by_topic_count_and_bytes() {
        let settings =
            ProducerSettings { batch_max_messages: 3, batch_max_bytes: 1000, ..ProducerSettings::default() };
        let (mut t, tx) = task(settings);
        let mut acks = Vec::new();
        let mut first = None;
        for (topic, delay) in
            [("a", None), ("a", None), ("a", None), ("a", None), ("b", None), ("b", Some(5)), ("b", None)]
        {
            let (r, ack) = request(topic, b"xy", delay);
            if first.is_none() {
                first = Some(r);
            } else {
                tx.send(r).await.unwrap();
            }
            acks.push(ack);
        }
        t.form_units(first.unwrap());
        // A full unit stops the forming; what is left is formed on the next call (as `fill` does).
        assert_eq!(t.queue.len(), 1);
        while let Ok(r) = t.rx.try_recv() {
            t.form_units(r);
        }
        let shape: Vec<(String, usize, Option<u32>)> =
            t.queue.iter().map(|u| (u.topic.to_string(), u.bodies.len(), u.delay_ms)).collect();
        assert_eq!(
            shape,
            [
                ("a".into(), 3, None),
                ("a".into(), 1, None),
                ("b".into(), 1, None),
                ("b".into(), 1, Some(5)),
                ("b".into(), 1, None)
            ]
        );
    }

    #[tokio::test]
    async fn merged_mpubs_stay_within_the_body_limit() {
        // nsqd counts an MPUB body as a u32 count, then per message a u32 size and the bytes:
        // two 100-byte messages are 4 + 2 × 104 = 212 bytes, three are 316.
        let settings = ProducerSettings {
            batch_max_messages: 100,
            batch_max_bytes: 10_000,
            max_body_bytes: 212,
            ..ProducerSettings::default()
        };
        let (mut t, tx) = task(settings);
        let body: &'static [u8] = &[b'x'; 100];
        let (first, _a) = request("t", body, None);
        let mut acks = Vec::new();
        for _ in 0..4 {
            let (r, ack) = request("t", body, None);
            tx.send(r).await.unwrap();
            acks.push(ack);
        }
        t.form_units(first);
        while let Ok(r) = t.rx.try_recv() {
            t.form_units(r);
        }
        let sizes: Vec<usize> = t.queue.iter().map(|u| u.bodies.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        for unit in &t.queue {
            let mut out = bytes::BytesMut::new();
            unit.encode(&mut out).unwrap();
            // The command line (`MPUB t\n`, or `PUB t\n` for one message), the u32 body size.
            let at = out.iter().position(|&b| b == b'\n').unwrap() + 1;
            let body_len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            assert!(body_len <= 212, "{body_len}");
        }
    }

    #[tokio::test]
    async fn fifo_matching_fails_the_head_and_requeues_the_rest_in_order() {
        let (mut t, _tx) = task(ProducerSettings::default());
        let mut acks = Vec::new();
        for (i, body) in [&b"0"[..], b"1", b"2", b"3"].into_iter().enumerate() {
            let (r, ack) = request("t", body, Some(i as u32));
            t.in_flight.push_back(Unit::from_request(r));
            acks.push(ack);
        }
        // OK answers the oldest.
        t.on_frame(Frame::Response(Bytes::from_static(b"OK"))).unwrap();
        assert_eq!(acks.remove(0).try_recv().unwrap(), Ok(()));
        // A caller's-fault error fails the next one; the others go back to the queue in order.
        let e = ServerError::new(Bytes::from_static(b"E_BAD_TOPIC PUB topic name \"x\" is not valid"));
        assert!(t.on_frame(Frame::Error(e)).is_err());
        assert!(matches!(
            acks.remove(0).try_recv().unwrap(),
            Err(PublishError::Rejected { code: ErrorCode::BadTopic, .. })
        ));
        t.requeue_in_flight();
        let delays: Vec<_> = t.queue.iter().map(|u| u.delay_ms).collect();
        assert_eq!(delays, [Some(2), Some(3)]);
        // A server-side failure keeps the head, first in line.
        t.in_flight = std::mem::take(&mut t.queue);
        let e = ServerError::new(Bytes::from_static(b"E_DPUB_FAILED DPUB failed exiting"));
        assert!(t.on_frame(Frame::Error(e)).is_err());
        t.requeue_in_flight();
        assert_eq!(t.queue.iter().map(|u| u.delay_ms).collect::<Vec<_>>(), [Some(2), Some(3)]);
        // An unexplained error blames the head; after MAX_BLAMES it fails.
        for round in 1..=MAX_BLAMES {
            t.in_flight = std::mem::take(&mut t.queue);
            let e = ServerError::new(Bytes::from_static(b"E_INVALID something"));
            assert!(t.on_frame(Frame::Error(e)).is_err());
            t.requeue_in_flight();
            let expect = if round < MAX_BLAMES { 2 } else { 1 };
            assert_eq!(t.queue.len(), expect);
        }
        assert!(matches!(
            acks.remove(0).try_recv().unwrap(),
            Err(PublishError::Rejected { code: ErrorCode::Invalid, .. })
        ));
        // Non-fatal errors change nothing; an OK with nothing pending is a protocol error.
        t.in_flight.clear();
        let e = ServerError::new(Bytes::from_static(b"E_FIN_FAILED FIN x failed"));
        assert!(t.on_frame(Frame::Error(e)).is_ok());
        assert!(t.on_frame(Frame::Response(Bytes::from_static(b"OK"))).is_err());
    }

    #[tokio::test]
    async fn a_merged_mpub_refused_for_a_size_is_resent_publish_by_publish() {
        let (mut t, _tx) = task(ProducerSettings::default());
        let mut acks = Vec::new();
        let mut unit: Option<Unit> = None;
        let requests: [&[&'static [u8]]; 3] = [&[b"a"], &[b"big", b"b"], &[b"c"]];
        for bodies in requests {
            let (answer, rx) = oneshot::channel();
            let payload = match bodies {
                [one] => Payload::One(Bytes::from_static(one)),
                many => Payload::Many(many.iter().map(|b| Bytes::from_static(b)).collect()),
            };
            let r = Request { topic: Arc::from("t"), payload, delay_ms: None, answer };
            match &mut unit {
                None => unit = Some(Unit::from_request(r)),
                Some(u) => u.merge(r),
            }
            acks.push(rx);
        }
        t.in_flight.push_back(unit.unwrap());
        let too_big = || {
            Frame::Error(ServerError::new(Bytes::from_static(
                b"E_BAD_MESSAGE MPUB message too big 2000 > 1024",
            )))
        };
        assert!(t.on_frame(too_big()).is_err());
        t.requeue_in_flight();
        // Nobody answered yet; three commands, each with its own publish.
        assert!(acks.iter_mut().all(|a| a.try_recv().is_err()));
        let shape: Vec<Vec<&[u8]>> =
            t.queue.iter().map(|u| u.bodies.iter().map(|b| b.as_ref()).collect()).collect();
        assert_eq!(shape, [vec![&b"a"[..]], vec![&b"big"[..], &b"b"[..]], vec![&b"c"[..]]]);
        // Resent: the first is stored; the MPUB with the big message is refused again and,
        // alone now, fails; the last is stored.
        t.in_flight = std::mem::take(&mut t.queue);
        t.on_frame(Frame::Response(Bytes::from_static(b"OK"))).unwrap();
        assert!(t.on_frame(too_big()).is_err());
        t.requeue_in_flight();
        t.in_flight = std::mem::take(&mut t.queue);
        t.on_frame(Frame::Response(Bytes::from_static(b"OK"))).unwrap();
        assert_eq!(acks[0].try_recv().unwrap(), Ok(()));
        assert!(matches!(
            acks[1].try_recv().unwrap(),
            Err(PublishError::Rejected { code: ErrorCode::BadMessage, .. })
        ));
        assert_eq!(acks[2].try_recv().unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn local_checks_fail_before_queueing() {
        let tracker = TaskTracker::new();
        let p = Producer::start(
            ProducerSettings::default(),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        );
        assert_eq!(p.publish("bad topic", "x").await, Err(PublishError::InvalidTopic("bad topic".into())));
        assert_eq!(p.publish("t", "").await, Err(PublishError::EmptyMessage));
        assert_eq!(p.publish_multi("t", vec![]).await, Err(PublishError::NoMessages));
        let big = Bytes::from(vec![b'x'; protocol::NSQD_DEFAULT_MAX_MSG_BYTES + 1]);
        assert!(matches!(p.publish("t", big).await, Err(PublishError::MessageTooLarge { .. })));
        let many = vec![Bytes::from(vec![b'x'; 1 << 20]); 5];
        assert!(matches!(p.publish_multi("t", many).await, Err(PublishError::BodyTooLarge { .. })));
        assert!(matches!(
            p.publish_deferred("t", Duration::from_secs(3601), "x").await,
            Err(PublishError::DelayTooLong(_))
        ));
    }
}

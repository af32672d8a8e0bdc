//! The consumer's processing core, independent of where messages come from: NSQ deliveries
//! (`logmill consume`, see [`super::source`]) or, later, an in-memory queue (`logmill run`).
//!
//! [`start`] spawns one task that owns the [`Deriver`], both aggregates (`router_requests`,
//! `app_log_lines`), the [`Ledger`] of held messages and their TOUCH timers, and a second task
//! ([`super::submit`]) that owns the outputs. A source sends [`Inbound`] messages into the
//! returned channel, each with its acknowledgement handle ([`Ack`]); the core calls
//! [`Ack::finish`] once everything derived from the message is durable in InfluxDB,
//! [`Ack::requeue`] when it must be given back, and [`Ack::touch`] at half the message's
//! timeout while it is held.
//!
//! # Holding
//!
//! A message whose lines fall in open aggregate windows stays unacknowledged until those
//! windows are flushed and written. Windows close by event time (the watermark), or by the
//! wall clock once input has been quiet for `idle_flush`. They are flushed early, whole, when
//! holding would stall the source: when a topic's messages in open windows reach `high_water`
//! of what the source lets be in flight (nsqd stops delivering at `max_in_flight`, itself
//! capped by `--max-rdy-count`), when the values kept for retractions pass `max_held_values`
//! (memory), or when the oldest message of an open window has been held `max_hold` (or half of
//! nsqd's `--max-msg-timeout`). A flush's points are sent at once, not batched: every message
//! of its windows waits on that answer, and a consumer's throughput is what it may hold in
//! flight over that latency.
//!
//! # When InfluxDB fails
//!
//! Submissions are retried by the writer. When the oldest unanswered one is older than
//! `influx_stall`, every held message whose contributions are still only in open windows is
//! taken out of them (retracted) and requeued: nothing of it was written, so its redelivery
//! counts once. While the stall lasts, windows are not flushed early nor by the wall clock
//! (that would only seal what a retraction could take back), and the REQ delay doubles with
//! every `influx_stall` the outage lasts, from `requeue_delay` up to 16 times it, so that an
//! outage costs a bounded churn and a recovery waits at most that long. (The source's own
//! handler backoff is not used: its probe would need a FIN to recover, and a held message is
//! finished only when its window closes.) Messages whose windows were already flushed wait
//! for their points; only past 90 % of the source's longest hold are they requeued regardless
//! (then their aggregates may count twice: counted in `logmill_consume_held_expired_total`).
//!
//! # Stopping
//!
//! When `stop` fires or the inbound channel closes, every window is flushed, messages still
//! arriving are processed and flushed at once, and the task ends when nothing is held; after
//! `shutdown_grace` it requeues what is left and ends anyway.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ledger::{HoldLimits, Ledger, SubmissionId, Verdict};
use super::submit::{self, Answer, DeadLetter, DeadLetterSink, Job};
use crate::derive::contribution::Lane;
use crate::derive::{DeriveSettings, Derived, Deriver, Tally, TopicKind};
use crate::metrics::aggregate::{AggregateSettings, Aggregator};
use crate::metrics::line_protocol::encode_point;
use crate::metrics::log_volume::LogVolume;
use crate::metrics::point::Point;
use crate::output::Output;
use crate::telemetry::{Counter, Gauge, Telemetry};

/// How often held messages are looked at (touches, quiet windows, stalls, expiry).
const TICK: Duration = Duration::from_millis(100);
/// A pass-through submission is handed over once it holds this much line protocol (or at the
/// end of each burst of messages).
const BATCH_BYTES: usize = 256 * 1024;
/// Line protocol handed to the outputs and not yet answered beyond which no new message is
/// taken. A consumer's backlog waits in nsqd, so the writer's buffer (64 MiB by default) need
/// not fill from it: this keeps InfluxDB's requests (two of at most 1 MiB by default) busy
/// several times over, and memory well below the writer's budget.
const MAX_UNANSWERED_BYTES: usize = 8 << 20;
/// Messages taken from the inbound channel in one go before other events are looked at.
const BURST: usize = 64;

/// Acknowledging a message to its source. The futures own what they need, so that the core
/// can await them after letting go of its state.
pub trait Ack: Send + 'static {
    /// Everything derived from the message is durable (or refused for good): done.
    fn finish(self) -> impl Future<Output = ()> + Send + 'static;
    /// Not durable: give it back after `delay`; `backoff` when the source should slow down
    /// (InfluxDB is failing), not when the consumer is merely stopping.
    fn requeue(self, delay: Duration, backoff: bool) -> impl Future<Output = ()> + Send + 'static;
    /// Restarts the message's timeout (NSQ TOUCH); nothing for a source without one.
    fn touch(&self) -> impl Future<Output = ()> + Send + 'static;
}

/// What became of a message whose source is a [`OneshotAck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Durable: the source may forget it (advance a checkpoint).
    Finished,
    /// Not durable: the source must send it again (after `delay`).
    Requeued { delay: Duration },
}

/// An acknowledgement handle for an in-memory source (`logmill run`): the source keeps the
/// receiver and learns each message's fate from it. No timeout, so no touches.
#[derive(Debug)]
pub struct OneshotAck(pub oneshot::Sender<Settled>);

impl OneshotAck {
    /// A handle and the receiver its source keeps.
    pub fn new() -> (Self, oneshot::Receiver<Settled>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }
}

impl Ack for OneshotAck {
    fn finish(self) -> impl Future<Output = ()> + Send + 'static {
        let _ = self.0.send(Settled::Finished);
        std::future::ready(())
    }

    fn requeue(self, delay: Duration, _backoff: bool) -> impl Future<Output = ()> + Send + 'static {
        let _ = self.0.send(Settled::Requeued { delay });
        std::future::ready(())
    }

    fn touch(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }
}

/// One message for the core.
#[derive(Debug)]
pub struct Inbound<A> {
    pub topic: TopicKind,
    pub body: Bytes,
    /// When the message was published (NSQ's timestamp), Unix ns: the time of points that
    /// carry none.
    pub timestamp_ns: i64,
    /// Deliveries so far, this one included (1 the first time).
    pub attempts: u16,
    /// NSQ's id, for the dead letters.
    pub id: Option<[u8; 16]>,
    /// How long the source lets it be held.
    pub limits: HoldLimits,
    /// How many messages of this topic the source lets be unacknowledged at once (`None`:
    /// no limit). The core flushes early before holding that many.
    pub capacity: Option<u32>,
    pub ack: A,
}

/// The core's settings, validated by the configuration.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub(crate) derive: DeriveSettings,
    /// Windows of both aggregates; its `consumer` is the instance, its `sequence_base` this
    /// process's.
    pub(crate) aggregate: AggregateSettings,
    pub(crate) high_water: f64,
    pub(crate) max_held_values: usize,
    pub(crate) max_hold: Duration,
    pub(crate) influx_stall: Duration,
    pub(crate) requeue_delay: Duration,
    pub(crate) idle_flush: Duration,
    /// How often the `logmill_*` counters are written as points (`None`: never), with this
    /// `host` tag.
    pub(crate) telemetry_interval: Option<Duration>,
    pub(crate) telemetry_host: String,
    pub(crate) shutdown_grace: Duration,
}

impl CoreSettings {
    /// The deriver of messages these settings describe.
    pub fn deriver(&self) -> Deriver {
        Deriver::new(self.derive.clone())
    }

    /// An empty `router_requests` aggregate with these settings' windows.
    pub fn request_aggregator(&self) -> Aggregator {
        Aggregator::new(self.aggregate.clone())
    }
}

/// What the core did, for the role's last words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreSummary {
    pub messages: u64,
    pub finished: u64,
    pub requeued: u64,
    /// Requeued at shutdown because they could not be made durable in time.
    pub requeued_at_stop: u64,
}

fn topic_index(t: TopicKind) -> usize {
    match t {
        TopicKind::Metrics => 0,
        TopicKind::Logs => 1,
    }
}

const TOPICS: [TopicKind; 2] = [TopicKind::Metrics, TopicKind::Logs];

/// Starts the core (and its output task) on `tracker`. Messages go into the returned sender;
/// the core ends once `stop` has fired or the sender is dropped, and nothing is held.
pub fn start<A: Ack>(
    settings: CoreSettings,
    output: Output,
    dead_letters: DeadLetterSink,
    telemetry: &Telemetry,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> (mpsc::Sender<Inbound<A>>, JoinHandle<CoreSummary>) {
    // A burst's worth: the source's own bound (nsqd's RDY) is what limits messages in flight.
    // The source counts a body as processed once it is sent here (`max_buffered_bytes`), so
    // this is also what waits here beyond that bound: 64 router messages are 2.5 MB.
    let (tx, rx) = mpsc::channel(BURST);
    let (jobs_tx, jobs_rx) = mpsc::channel(16);
    let (answers_tx, answers_rx) = mpsc::channel(1024);
    tracker.spawn(submit::run(jobs_rx, output, dead_letters, answers_tx));
    let core = Core::new(settings, telemetry.clone());
    let handle = tracker.spawn(core.run(rx, jobs_tx, answers_rx, stop));
    (tx, handle)
}

/// Line protocol of several messages, submitted together.
#[derive(Default)]
struct Batch {
    id: Option<SubmissionId>,
    bytes: BytesMut,
    points: usize,
}

struct Counters {
    telemetry: Telemetry,
    messages: [Counter; 2],
    finished: [Counter; 2],
    requeued: HashMap<&'static str, Counter>,
    lines: [Counter; 2],
    /// (topic, reason) → counter, registered when first seen.
    by_reason: HashMap<(&'static str, &'static str, &'static str), Counter>,
    points_passed: Counter,
    aggregate_points: [Counter; 2],
    encode_errors: Counter,
    early_flushes: HashMap<&'static str, Counter>,
    retracted: Counter,
    held_expired: Counter,
    writes: Counter,
    write_latency_ms: Counter,
    write_latency_last_ms: Gauge,
    dead_letters: Counter,
    dead_letters_failed: Counter,
    held: [Gauge; 2],
    held_values: Gauge,
    series: [Gauge; 2],
}

impl Counters {
    fn new(t: Telemetry) -> Self {
        let per_topic = |name, help| TOPICS.map(|topic| t.counter(name, help, &[("topic", topic.as_str())]));
        let lanes = |name, help| {
            ["router_requests", "app_log_lines"].map(|m| t.counter(name, help, &[("measurement", m)]))
        };
        Self {
            messages: per_topic("logmill_consume_messages_total", "Messages taken in by the consumer."),
            finished: per_topic("logmill_consume_messages_finished_total", "Messages acknowledged (FIN) once durable."),
            requeued: HashMap::new(),
            lines: per_topic("logmill_consume_lines_total", "Lines (metrics) and records (logs) read."),
            by_reason: HashMap::new(),
            points_passed: t.counter(
                "logmill_consume_points_passed_total",
                "Points of the metrics topic (and router lines in logs) submitted to InfluxDB.",
                &[],
            ),
            aggregate_points: lanes("logmill_consume_aggregate_points_total", "Aggregated points submitted."),
            encode_errors: t.counter(
                "logmill_consume_encode_errors_total",
                "Aggregated points that could not be encoded as line protocol.",
                &[],
            ),
            early_flushes: HashMap::new(),
            retracted: t.counter(
                "logmill_consume_messages_retracted_total",
                "Held messages taken out of open windows and requeued (InfluxDB failing, or held too long).",
                &[],
            ),
            held_expired: t.counter(
                "logmill_consume_held_expired_total",
                "Messages requeued past 90 % of nsqd's max_msg_timeout with their windows already flushed (their aggregates may count twice).",
                &[],
            ),
            writes: t.counter("logmill_consume_writes_total", "Submissions answered by the output.", &[]),
            write_latency_ms: t.counter(
                "logmill_consume_write_latency_ms_total",
                "Milliseconds from submission to InfluxDB's answer, summed (divide by logmill_consume_writes_total).",
                &[],
            ),
            write_latency_last_ms: t.gauge(
                "logmill_consume_write_latency_last_ms",
                "Milliseconds from submission to InfluxDB's answer, the last one.",
                &[],
            ),
            dead_letters: t.counter("logmill_consume_dead_letters_total", "Messages with invalid content dead-lettered.", &[]),
            dead_letters_failed: t.counter(
                "logmill_consume_dead_letters_failed_total",
                "Dead letters the sink did not take (the message was finished anyway).",
                &[],
            ),
            held: TOPICS.map(|topic| {
                t.gauge("logmill_consume_messages_held", "Messages in flight, held by the consumer.", &[("topic", topic.as_str())])
            }),
            held_values: t.gauge(
                "logmill_consume_held_values",
                "Values kept to take held messages' contributions back.",
                &[],
            ),
            series: ["router_requests", "app_log_lines"]
                .map(|m| t.gauge("logmill_consume_series_live", "Live aggregate series.", &[("measurement", m)])),
            telemetry: t,
        }
    }

    fn reason(
        &mut self,
        name: &'static str,
        help: &'static str,
        topic: &'static str,
        reason: &'static str,
        n: u64,
    ) {
        let t = &self.telemetry;
        self.by_reason
            .entry((name, topic, reason))
            .or_insert_with(|| t.counter(name, help, &[("topic", topic), ("reason", reason)]))
            .add(n);
    }

    fn tally(&mut self, topic: TopicKind, tally: &Tally) {
        let t = topic.as_str();
        self.lines[topic_index(topic)].add(tally.lines);
        for &(reason, n) in &tally.invalid {
            self.reason(
                "logmill_consume_lines_invalid_total",
                "Lines that are not line protocol, and logs messages that are not JSON, by reason (dead-lettered).",
                t,
                reason,
                n,
            );
        }
        for &(reason, n) in &tally.unaggregated {
            self.reason(
                "logmill_consume_router_points_unaggregated_total",
                "deis_router_* points passed through but not aggregated, by reason.",
                t,
                reason,
                n,
            );
        }
        for &(kind, n) in &tally.records {
            self.reason(
                "logmill_consume_log_records_total",
                "logs records by what became of them.",
                t,
                kind,
                n,
            );
        }
    }

    fn requeued(&mut self, why: &'static str, n: u64) {
        let t = &self.telemetry;
        self.requeued
            .entry(why)
            .or_insert_with(|| {
                t.counter(
                    "logmill_consume_messages_requeued_total",
                    "Messages given back to NSQ, by why.",
                    &[("reason", why)],
                )
            })
            .add(n);
    }

    fn early_flush(&mut self, why: &'static str) {
        let t = &self.telemetry;
        self.early_flushes
            .entry(why)
            .or_insert_with(|| {
                t.counter(
                    "logmill_consume_early_flushes_total",
                    "Windows flushed before their time, by why (held messages, memory, hold time).",
                    &[("reason", why)],
                )
            })
            .add(1);
    }
}

struct Core<A> {
    settings: CoreSettings,
    deriver: Deriver,
    derived: Derived,
    requests: Aggregator,
    logs: LogVolume,
    ledger: Ledger<A>,
    started: Instant,
    jobs: VecDeque<Job>,
    unanswered_bytes: usize,
    batch: Batch,
    capacity: [Option<u32>; 2],
    last_inbound: Instant,
    stalled: bool,
    closing: Option<Instant>,
    next_telemetry: Option<Instant>,
    counters: Counters,
    summary: CoreSummary,
    /// Messages to requeue (InfluxDB failing, held too long), and the delay.
    requeues: Vec<(A, Duration)>,
}

impl<A: Ack> Core<A> {
    fn new(settings: CoreSettings, telemetry: Telemetry) -> Self {
        let now = Instant::now();
        let window = settings.aggregate.windows();
        Self {
            deriver: settings.deriver(),
            derived: Derived::default(),
            requests: settings.request_aggregator(),
            logs: LogVolume::new(window, settings.aggregate.consumer.clone()),
            ledger: Ledger::default(),
            started: now,
            jobs: VecDeque::new(),
            unanswered_bytes: 0,
            batch: Batch::default(),
            capacity: [None; 2],
            last_inbound: now,
            stalled: false,
            closing: None,
            next_telemetry: settings.telemetry_interval.map(|i| now + i),
            counters: Counters::new(telemetry),
            summary: CoreSummary::default(),
            requeues: Vec::new(),
            settings,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound<A>>,
        jobs: mpsc::Sender<Job>,
        mut answers: mpsc::Receiver<Answer>,
        stop: CancellationToken,
    ) -> CoreSummary {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbound_open = true;
        loop {
            if let Some(deadline) = self.closing {
                let idle = !inbound_open && self.ledger.held_total() == 0 && self.jobs.is_empty();
                if idle {
                    break;
                }
                if Instant::now() >= deadline {
                    let left = self.ledger.drain();
                    tracing::warn!(
                        held = left.len(),
                        "shutdown grace over; requeueing what is not yet durable"
                    );
                    self.summary.requeued_at_stop += left.len() as u64;
                    self.counters.requeued("stopped", left.len() as u64);
                    for ack in left {
                        ack.requeue(Duration::ZERO, false).await;
                    }
                    break;
                }
            }
            let can_read = inbound_open && self.unanswered_bytes < MAX_UNANSWERED_BYTES;
            if !can_read {
                // Not reading is not quiet input: windows must not close by the wall clock
                // while InfluxDB is merely slow to answer (a backlog would be flushed in
                // pieces, more points for the slow server).
                self.last_inbound = Instant::now();
            }
            tokio::select! {
                biased;
                _ = stop.cancelled(), if self.closing.is_none() => self.begin_closing(),
                Some(answer) = answers.recv() => {
                    self.on_answer(answer);
                    while let Ok(answer) = answers.try_recv() {
                        self.on_answer(answer);
                    }
                }
                permit = jobs.reserve(), if !self.jobs.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(job) = self.jobs.pop_front() {
                            permit.send(job);
                        }
                    }
                    // The output task is gone (a panic): nothing can be made durable any more.
                    Err(_) => {
                        tracing::error!("the output task has ended; stopping");
                        self.closing = Some(Instant::now());
                    }
                },
                m = inbound.recv(), if can_read => match m {
                    Some(m) => {
                        self.on_message(m);
                        for _ in 1..BURST {
                            match inbound.try_recv() {
                                Ok(m) => self.on_message(m),
                                Err(_) => break,
                            }
                        }
                        self.end_batch();
                    }
                    None => {
                        inbound_open = false;
                        self.begin_closing();
                    }
                },
                _ = tick.tick() => self.on_tick().await,
            }
            self.settle().await;
        }
        self.counters.held.iter().for_each(|g| g.set(0));
        // The counters as they end, and whatever else is still queued, to the output task
        // (which writes them unless the role stops the writer first).
        self.write_telemetry();
        while let Some(job) = self.jobs.pop_front() {
            if jobs.send(job).await.is_err() {
                break;
            }
        }
        self.summary
    }

    /// Performs the ledger's decisions.
    async fn settle(&mut self) {
        for (ack, topic, verdict) in self.ledger.take_decisions() {
            match verdict {
                Verdict::Finish => {
                    self.summary.finished += 1;
                    self.counters.finished[topic_index(topic)].add(1);
                    ack.finish().await;
                }
                Verdict::Requeue => {
                    self.summary.requeued += 1;
                    self.counters.requeued("not_written", 1);
                    ack.requeue(Duration::ZERO, false).await;
                }
            }
        }
        for (ack, delay) in std::mem::take(&mut self.requeues) {
            ack.requeue(delay, false).await;
        }
    }

    fn begin_closing(&mut self) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!(held = self.ledger.held_total(), "consumer stopping: flushing every window");
        self.closing = Some(Instant::now() + self.settings.shutdown_grace);
        self.flush_all(None);
        self.end_batch();
    }

    fn on_message(&mut self, m: Inbound<A>) {
        let now = self.now();
        self.last_inbound = Instant::now();
        let t = topic_index(m.topic);
        if m.capacity.is_some() {
            self.capacity[t] = m.capacity;
        }
        self.summary.messages += 1;
        self.counters.messages[t].add(1);
        let key = self.ledger.admit(m.ack, m.topic, m.limits, now);
        self.deriver.derive(m.topic, &m.body, m.timestamp_ns, m.attempts <= 1, &mut self.derived);
        self.counters.tally(m.topic, &self.derived.tally);
        let contribution = std::mem::take(&mut self.derived.contribution);
        for g in &contribution.requests {
            self.ledger.join(key, Lane::Requests, g.window_start);
            g.observe(&mut self.requests);
            self.collect_flushes(Lane::Requests);
        }
        for g in &contribution.logs {
            self.ledger.join(key, Lane::Logs, g.window_start);
            g.observe(&mut self.logs);
            self.collect_flushes(Lane::Logs);
        }
        self.ledger.keep(key, contribution);
        if self.derived.points > 0 {
            let id = match self.batch.id {
                Some(id) => id,
                None => *self.batch.id.insert(self.ledger.open_submission(now)),
            };
            self.ledger.wait_on(id, key);
            self.batch.bytes.extend_from_slice(&self.derived.lines);
            self.batch.points += self.derived.points;
            self.counters.points_passed.add(self.derived.points as u64);
        }
        if !self.derived.dead.is_empty() {
            self.log_invalid(m.topic, m.id.as_ref());
            let id = self.ledger.open_submission(now);
            self.ledger.wait_on(id, key);
            let content = std::mem::take(&mut self.derived.dead);
            let letter = DeadLetter { topic: m.topic, nsq_id: m.id, timestamp_ns: m.timestamp_ns, content };
            self.queue(Job::Dead { id, letter });
        }
        self.ledger.derived(key);
        if self.batch.bytes.len() >= BATCH_BYTES {
            self.end_batch();
        }
        if self.closing.is_some() {
            self.flush_all(None);
        } else {
            self.maybe_flush_early(m.topic);
        }
    }

    /// Invalid content: logged, at most once a second per topic (it can come on every line).
    fn log_invalid(&mut self, topic: TopicKind, id: Option<&[u8; 16]>) {
        static LAST: std::sync::Mutex<[Option<std::time::Instant>; 2]> = std::sync::Mutex::new([None; 2]);
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut last[topic_index(topic)];
        if slot.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *slot = Some(std::time::Instant::now());
        let (reason, range) = match self.derived.dead.entries.first() {
            Some(e) => e.clone(),
            None => return,
        };
        let sample = String::from_utf8_lossy(self.derived.dead.bytes.get(range).unwrap_or_default())
            .chars()
            .take(200)
            .collect::<String>();
        tracing::warn!(
            topic = topic.as_str(),
            id = id.map(|i| String::from_utf8_lossy(i).into_owned()).unwrap_or_default(),
            reason,
            invalid = self.derived.dead.entries.len(),
            sample = %sample,
            "invalid input dead-lettered (logged at most once a second)"
        );
    }

    fn queue(&mut self, job: Job) {
        self.unanswered_bytes += job.bytes();
        self.jobs.push_back(job);
    }

    fn end_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if let Some(id) = batch.id {
            // Batched with what follows: under load it fills a batch by itself, and otherwise
            // its messages wait for their windows anyway.
            self.queue(Job::Points {
                id: Some(id),
                body: batch.bytes.freeze(),
                points: batch.points,
                urgent: false,
            });
        }
    }

    /// Points the aggregates flushed: submitted, and their windows sealed or closed.
    fn collect_flushes(&mut self, lane: Lane) {
        let points: Vec<Point> = match lane {
            Lane::Requests => self.requests.take_ready(),
            Lane::Logs => self.logs.take_ready(),
        };
        if points.is_empty() {
            return;
        }
        let mut body = BytesMut::new();
        let mut written = 0;
        let mut windows: Vec<(i64, bool)> = Vec::new();
        for p in &points {
            match encode_point(p, &mut body) {
                Ok(()) => written += 1,
                Err(_) => self.counters.encode_errors.add(1),
            }
            let ts = p.timestamp_ns.unwrap_or_default();
            let start = match lane {
                Lane::Requests => self.requests.window_start(ts),
                Lane::Logs => self.logs.window_start(ts),
            };
            if !windows.iter().any(|(w, _)| *w == start) {
                windows.push((start, false));
            }
        }
        for (start, closed) in &mut windows {
            *closed = match lane {
                Lane::Requests => !self.requests.is_open(*start),
                Lane::Logs => !self.logs.is_open(*start),
            };
        }
        self.counters.aggregate_points[lane as usize].add(written as u64);
        let now = self.now();
        if let Some(id) = self.ledger.flushed(lane, &windows, written > 0, now) {
            // Every message of these windows is held until this is answered: no batching
            // delay (what a consumer can have in flight over that latency is its throughput).
            self.queue(Job::Points { id: Some(id), body: body.freeze(), points: written, urgent: true });
        }
    }

    fn flush_all(&mut self, why: Option<&'static str>) {
        if let Some(why) = why {
            self.counters.early_flush(why);
        }
        self.requests.flush_all();
        self.collect_flushes(Lane::Requests);
        self.logs.flush_all();
        self.collect_flushes(Lane::Logs);
    }

    /// Flushes every window early when holding more would stall the source or cost too much.
    fn maybe_flush_early(&mut self, topic: TopicKind) {
        if self.stalled {
            // Flushing now would only seal contributions that a retraction could take back.
            return;
        }
        // Counted are the messages in open windows only: those already flushed wait for
        // InfluxDB, and flushing again would free none of them. So in flight stays below
        // `high_water × capacity` plus what arrives over one write's latency.
        let t = topic_index(topic);
        if let Some(cap) = self.capacity[t].filter(|&c| c > 0) {
            if self.ledger.open_held(topic) as f64 >= self.settings.high_water * f64::from(cap) {
                self.flush_all(Some("held_messages"));
                return;
            }
        }
        if self.ledger.retained_values() >= self.settings.max_held_values {
            self.flush_all(Some("held_values"));
        }
    }

    fn on_answer(&mut self, answer: Answer) {
        self.unanswered_bytes -= answer.bytes;
        if answer.dead_letter {
            self.counters.dead_letters.add(1);
            if answer.outcome.rejected > 0 {
                self.counters.dead_letters_failed.add(1);
            }
        } else {
            self.counters.writes.add(1);
            let ms = u64::try_from(answer.latency.as_millis()).unwrap_or(u64::MAX);
            self.counters.write_latency_ms.add(ms);
            self.counters.write_latency_last_ms.set(ms);
        }
        if let Some(id) = answer.id {
            self.ledger.answered(id, answer.durable);
        }
    }

    async fn on_tick(&mut self) {
        let now = self.now();
        // Touches first: nothing below must make a held message time out.
        let touches: Vec<_> = self.ledger.due_touches(now).into_iter().map(Ack::touch).collect();
        for touch in touches {
            touch.await;
        }
        let stall = self.ledger.oldest_submission().map(|at| now.saturating_sub(at)).unwrap_or_default();
        self.stalled = stall >= self.settings.influx_stall;
        if self.closing.is_none() && !self.stalled && self.last_inbound.elapsed() >= self.settings.idle_flush
        {
            // Quiet input: windows close by the wall clock (a live stream's current window
            // still waits for its lateness; a backlog's old windows close now).
            let wall = crate::timefmt::now_ns();
            self.requests.advance_to(wall);
            self.collect_flushes(Lane::Requests);
            self.logs.advance_to(wall);
            self.collect_flushes(Lane::Logs);
        }
        if self.stalled {
            self.retract_and_requeue(stall);
        } else if let Some(oldest) = self.ledger.oldest_open() {
            let limit = match self.ledger.min_max_hold() {
                Some(max) => self.settings.max_hold.min(max / 2),
                None => self.settings.max_hold,
            };
            if now.saturating_sub(oldest) >= limit {
                self.flush_all(Some("hold_time"));
            }
        }
        self.expire(now);
        self.end_batch();
        if let Some(next) = self.next_telemetry {
            if Instant::now() >= next {
                self.write_telemetry();
            }
        }
        for topic in TOPICS {
            self.counters.held[topic_index(topic)].set(self.ledger.held(topic) as u64);
        }
        self.counters.held_values.set(self.ledger.retained_values() as u64);
        self.counters.series[0].set(self.requests.live_series() as u64);
        self.counters.series[1].set(self.logs.live_series() as u64);
    }

    /// InfluxDB has answered nothing for `stall`: what is only in open windows goes back to
    /// NSQ, later the longer the outage.
    fn retract_and_requeue(&mut self, stall: Duration) {
        let taken = self.ledger.take_retractable();
        if taken.is_empty() {
            return;
        }
        tracing::warn!(
            messages = taken.len(),
            stall = ?self.settings.influx_stall,
            "InfluxDB has not answered; requeueing held messages and taking them out of the open windows"
        );
        self.counters.retracted.add(taken.len() as u64);
        self.counters.requeued("influx_stalled", taken.len() as u64);
        self.summary.requeued += taken.len() as u64;
        let periods = (stall.as_secs_f64() / self.settings.influx_stall.as_secs_f64().max(1e-3)) as u32;
        let delay = self.settings.requeue_delay * (1u32 << periods.saturating_sub(1).min(4));
        for (ack, contribution) in taken {
            if let Some(c) = contribution {
                self.retract(&c);
            }
            self.requeues.push((ack, delay));
        }
    }

    fn retract(&mut self, c: &crate::derive::contribution::Contribution) {
        let mut missing = 0;
        for g in &c.requests {
            missing += usize::from(!g.retract(&mut self.requests));
        }
        for g in &c.logs {
            missing += usize::from(!g.retract(&mut self.logs));
        }
        if missing > 0 {
            // The ledger said its windows were unflushed: a bug, but not one to crash on.
            tracing::error!(missing, "a retraction found a series flushed already");
        }
    }

    /// Messages about to pass the source's longest hold are given back regardless.
    fn expire(&mut self, now: Duration) {
        let expired = self.ledger.take_expired(now);
        if expired.is_empty() {
            return;
        }
        let sealed = expired.iter().filter(|(_, _, retractable)| !retractable).count();
        tracing::warn!(
            messages = expired.len(),
            sealed,
            "messages held nearly as long as nsqd allows; requeueing them"
        );
        self.counters.held_expired.add(sealed as u64);
        self.counters.requeued("held_too_long", expired.len() as u64);
        self.summary.requeued += expired.len() as u64;
        let delay = self.settings.requeue_delay;
        for (ack, contribution, _) in expired {
            if let Some(c) = contribution {
                self.retract(&c);
            }
            self.requeues.push((ack, delay));
        }
    }

    fn write_telemetry(&mut self) {
        let Some(interval) = self.settings.telemetry_interval else { return };
        self.next_telemetry = Some(Instant::now() + interval);
        let points = self.counters.telemetry.points(&self.settings.telemetry_host, crate::timefmt::now_ns());
        let mut body = BytesMut::new();
        let mut n = 0;
        for p in &points {
            if encode_point(p, &mut body).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            self.queue(Job::Points { id: None, body: body.freeze(), points: n, urgent: false });
        }
    }
}

#[cfg(test)]
mod tests;

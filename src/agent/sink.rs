//! The agent's end of the tail engine: what it reads of each file is shipped by that file's
//! [`FileShipper`], published, and the file's resume point is acknowledged to the engine —
//! so that its checkpoint may move — only once every message of the read behind it was
//! acknowledged by NSQ (or, in `logmill run`, by the consumer's output).
//!
//! A container with a `[[multiline]]` rule has its lines merged into records by its shipper:
//! the record in the making is held, so the resume point handed on stops at its start; the
//! sink tells the engine so ([`RecordSink::held`]), which calls `flushed` again at the merge
//! timeout even if the file gets no more writes, and before `closed` ([`RecordSink::ending`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::classify::{Classification, Classifier};
use super::ship::{FileShipper, Outgoing, ShipCounts};
use super::source::Sources;
use crate::access::{KeyGuard, Reject};
use crate::kube::{ContainerRef, Lookup, PodKey, PodMetadata};
use crate::nsq::producer::{Producer, PublishError};
use crate::pipeline::LineCounts;
use crate::tail::multiline::MultilineRule;
use crate::tail::{FileId, Held, Record, RecordSink, Resume};
use crate::telemetry::{Counter, Gauge, Telemetry};

/// The answer to one publish: `Ok` once the messages are stored downstream.
pub(crate) type Ack = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// Where the agent's messages go: nsqd, or `logmill run`'s in-process consumer.
pub(crate) trait Publish: Send + 'static {
    /// Queues `bodies` (one message each) for `topic`; waits only for room in the queue,
    /// which is the back-pressure on reading.
    fn submit(
        &self,
        topic: &str,
        bodies: Vec<Bytes>,
    ) -> impl Future<Output = Result<Ack, PublishError>> + Send;
}

impl Publish for Producer {
    async fn submit(&self, topic: &str, bodies: Vec<Bytes>) -> Result<Ack, PublishError> {
        let ack = match <[Bytes; 1]>::try_from(bodies) {
            Ok([one]) => Producer::submit(self, topic, one).await?,
            Err(bodies) => self.submit_multi(topic, bodies).await?,
        };
        Ok(Box::pin(ack))
    }
}

/// How the sink publishes.
#[derive(Debug, Clone)]
pub(crate) struct SinkSettings {
    /// This node's name: `kubernetes.host` and the `host` tag.
    pub(crate) host: String,
    pub(crate) log_topic: String,
    pub(crate) metric_topic: String,
    /// Whether each topic is published at all (the old stack's `SEND_LOGS_TO_NSQ`,
    /// `SEND_METRICS_TO_NSQ`); what is not sent is counted as dropped.
    pub(crate) send_logs: bool,
    pub(crate) send_metrics: bool,
    /// nsqd's `--max-msg-size`: no message is larger.
    pub(crate) max_msg_bytes: usize,
    /// One MPUB of `logs` records: at most this many, and this many bytes.
    pub(crate) batch_max_messages: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) drop_router_non_access_lines: bool,
    /// `[[multiline]]` rules: the first whose `containers` matches a container's name merges
    /// its lines (unless a definition turns them into points).
    pub(crate) multiline: Vec<MultilineRule>,
    /// The tail's `max_line_bytes`: a merged record is capped at it too.
    pub(crate) max_line_bytes: usize,
}

impl SinkSettings {
    /// From the agent's validated settings.
    pub(crate) fn new(settings: &crate::config::Settings) -> Self {
        let (agent, producer) = (&settings.agent, &settings.nsq.producer);
        Self {
            host: settings.host.clone(),
            log_topic: settings.nsq.log_topic.clone(),
            metric_topic: settings.nsq.metric_topic.clone(),
            send_logs: agent.send_logs,
            send_metrics: agent.send_metrics,
            max_msg_bytes: producer.max_message_bytes,
            batch_max_messages: producer.batch_max_messages,
            batch_max_bytes: producer.batch_max_bytes,
            drop_router_non_access_lines: agent.drop_router_non_access_lines,
            multiline: settings.multiline.clone(),
            max_line_bytes: settings.tail.max_line_bytes,
        }
    }
}

/// After this many bytes of messages acknowledged, the next idle moment gives free heap back
/// to the kernel: a backlog (a restart after an outage, a node's files found at start) leaves
/// megabytes of freed messages that glibc would otherwise keep for good. Live tailing ships
/// small reads and rarely gets there; a trim costs a walk of the allocator's free lists.
const RELEASE_AFTER_BYTES: u64 = 4 << 20;
/// Idle: nothing new handed over for this long. A busy agent never waits this long between
/// reads, so it never trims (the memory would be taken back at once).
const RELEASE_WHEN_IDLE: Duration = Duration::from_millis(500);

/// The messages of one read, on their way: acknowledged to the engine once all are.
struct Chunk {
    file: FileId,
    resume: Resume,
    /// Body bytes of its messages.
    bytes: u64,
    /// (topic is `logs`, messages, their answer).
    acks: Vec<(bool, u64, Ack)>,
    /// When it was handed over (for the health check).
    since_ms: i64,
}

/// A file as the sink knows it.
struct FileState {
    /// `None`: not a container's log and no declared source: its records are dropped.
    shipper: Option<FileShipper>,
    /// The pod whose metadata the classification still waits for.
    pending: Option<PodKey>,
    /// What was already added to the counters.
    counted: (ShipCounts, LineCounts),
}

/// The agent's [`RecordSink`].
pub(crate) struct AgentSink<P> {
    settings: SinkSettings,
    classifier: Classifier,
    pods: Option<PodMetadata>,
    sources: Sources,
    files: HashMap<FileId, FileState>,
    publisher: P,
    chunks: mpsc::Sender<Chunk>,
    counters: Arc<SinkCounters>,
    /// The publisher stopped (shutdown): nothing more is published or acknowledged, so no
    /// checkpoint moves past what was not published.
    stopped: bool,
    /// Wall time of the current read, for `logs` records of raw files (no runtime time).
    now_ns: i64,
    /// When the current read was handed over (merge timeouts count from it).
    now: Option<Instant>,
}

struct SinkCounters {
    logs: Counter,
    cut: Counter,
    dropped: Counter,
    points: Counter,
    access: Counter,
    rejected: Vec<Counter>,
    messages_logs: Counter,
    messages_metrics: Counter,
    refused: Counter,
    unknown_files: Counter,
    multiline_records: Counter,
    multiline_lines: Counter,
    multiline_truncated: Counter,
    /// Milliseconds since the epoch at which the oldest read not yet acknowledged was handed
    /// over; 0 when none waits.
    oldest_waiting_ms: AtomicI64,
    publish_wait: Gauge,
}

impl SinkCounters {
    fn new(t: &Telemetry) -> Self {
        let messages = |topic| {
            t.counter(
                "logmill_messages_published_total",
                "NSQ messages acknowledged, by topic.",
                &[("topic", topic)],
            )
        };
        Self {
            logs: t.counter("logmill_records_shipped_total", "Records published to the logs topic.", &[]),
            cut: t.counter(
                "logmill_records_cut_total",
                "Records whose text was cut to fit nsqd's --max-msg-size.",
                &[],
            ),
            dropped: t.counter(
                "logmill_records_dropped_total",
                "Records neither shipped nor turned into points (other containers, router error lines, \
                 controller lines the Deis logger cannot file, a topic switched off).",
                &[],
            ),
            points: t.counter("logmill_points_shipped_total", "Points published to the metrics topic.", &[]),
            access: t.counter(
                "logmill_access_lines_total",
                "Router (and parsers/) lines turned into points.",
                &[],
            ),
            rejected: Reject::ALL
                .iter()
                .map(|r| {
                    t.counter(
                        "logmill_lines_rejected_total",
                        "Lines of a parsed format that could not be used, by reason.",
                        &[("reason", r.as_str())],
                    )
                })
                .collect(),
            messages_logs: messages("logs"),
            messages_metrics: messages("metrics"),
            refused: t.counter(
                "logmill_publish_refused_total",
                "Messages nsqd refused for good (their records are lost, and logged).",
                &[],
            ),
            unknown_files: t.counter(
                "logmill_files_unknown_total",
                "Files matched by the paths whose name is no container's and no declared source's.",
                &[],
            ),
            multiline_records: t.counter(
                "logmill_multiline_records_total",
                "Records made by multiline merging (of one line or more), shipped as one each.",
                &[],
            ),
            multiline_lines: t.counter(
                "logmill_multiline_lines_merged_total",
                "Lines appended to a multiline record that began on an earlier line.",
                &[],
            ),
            multiline_truncated: t.counter(
                "logmill_multiline_records_truncated_total",
                "Multiline records cut at tail.max_line_bytes (the rest of their lines dropped).",
                &[],
            ),
            oldest_waiting_ms: AtomicI64::new(0),
            publish_wait: t.gauge(
                "logmill_publish_wait_seconds",
                "How long the oldest read not yet acknowledged downstream has waited.",
                &[],
            ),
        }
    }
}

fn now_ms() -> i64 {
    crate::timefmt::now_ns() / 1_000_000
}

impl<P: Publish> AgentSink<P> {
    /// The sink, and the [`Acknowledger`] to run beside it.
    pub(crate) fn new(
        settings: SinkSettings,
        classifier: Classifier,
        pods: Option<PodMetadata>,
        sources: Sources,
        publisher: P,
        telemetry: &Telemetry,
    ) -> (Self, Acknowledger) {
        // A few hundred reads: the engine's unacknowledged-bytes budget is what bounds memory.
        let (chunks, rx) = mpsc::channel(256);
        let counters = Arc::new(SinkCounters::new(telemetry));
        let sink = Self {
            settings,
            classifier,
            pods,
            sources,
            files: HashMap::new(),
            publisher,
            chunks,
            counters: counters.clone(),
            stopped: false,
            now_ns: 0,
            now: None,
        };
        (sink, Acknowledger { rx, counters })
    }

    /// The container's classification now, and the pod to wait for when it is not final.
    fn classify(&self, container: &ContainerRef) -> (Classification, Option<PodKey>) {
        let Some(pods) = &self.pods else { return (self.classifier.classify(container, None), None) };
        let key = PodKey::new(container.namespace.clone(), container.pod.clone());
        match pods.lookup(&key) {
            Lookup::Known(meta) => (self.classifier.classify(container, Some(&meta)), None),
            Lookup::Pending { .. } => (self.classifier.classify(container, None), Some(key)),
            Lookup::Absent | Lookup::Unavailable => (self.classifier.classify(container, None), None),
        }
    }

    /// Adds what a file's shipper did since the last call to the counters.
    fn count(counters: &SinkCounters, state: &mut FileState) {
        let Some(shipper) = &state.shipper else { return };
        let (ship, lines) = (shipper.counts(), shipper.line_counts().unwrap_or_default());
        let (was_ship, was_lines) = &state.counted;
        counters.logs.add(ship.logs - was_ship.logs);
        counters.cut.add(ship.cut - was_ship.cut);
        counters.dropped.add(ship.dropped - was_ship.dropped);
        let (merged, was_merged) = (ship.multiline, was_ship.multiline);
        counters.multiline_records.add(merged.records - was_merged.records);
        counters.multiline_lines.add(merged.lines_merged - was_merged.lines_merged);
        counters.multiline_truncated.add(merged.truncated - was_merged.truncated);
        counters.access.add(lines.access - was_lines.access);
        counters.points.add(lines.compat_points - was_lines.compat_points);
        for (i, r) in Reject::ALL.iter().enumerate() {
            counters.rejected[i].add(lines.rejected(*r) - was_lines.rejected(*r));
        }
        state.counted = (ship, lines);
    }

    /// Publishes one read's messages and hands its acknowledgements on, in read order.
    async fn publish(&mut self, file: FileId, resume: Resume, out: Outgoing) {
        let s = &self.settings;
        let mut acks = Vec::new();
        let bytes = out.logs.iter().chain(&out.metrics).map(|b| b.len() as u64).sum();
        let mut submits: Vec<(bool, Vec<Bytes>)> = Vec::new();
        if s.send_logs {
            submits.extend(batches(out.logs, s.batch_max_messages, s.batch_max_bytes).map(|b| (true, b)));
        } else {
            self.counters.dropped.add(out.logs.len() as u64);
        }
        if s.send_metrics {
            submits.extend(out.metrics.into_iter().map(|m| (false, vec![m])));
        }
        for (logs, bodies) in submits {
            let topic = if logs { &self.settings.log_topic } else { &self.settings.metric_topic };
            let n = bodies.len() as u64;
            match self.publisher.submit(topic, bodies).await {
                Ok(ack) => acks.push((logs, n, ack)),
                Err(PublishError::Stopped) => {
                    // Shutting down: this read is not acknowledged, nor any after it, so the
                    // checkpoint stays before it and a restart sends it again.
                    self.stopped = true;
                    return;
                }
                Err(error) => {
                    // Refused before sending (no message logmill writes should be): counted,
                    // logged, and the read goes on.
                    self.counters.refused.add(n);
                    tracing::error!(%error, topic, messages = n, "publish refused");
                }
            }
        }
        if self.chunks.send(Chunk { file, resume, bytes, acks, since_ms: now_ms() }).await.is_err() {
            self.stopped = true;
        }
    }
}

impl<P: Publish> RecordSink for AgentSink<P> {
    fn opened(&mut self, file: FileId, source: &Path) {
        let container = self.sources.container_of(source);
        let shipper = match &container {
            Some(container) => {
                let (class, pending) = self.classify(container);
                let s = &self.settings;
                let merger = MultilineRule::for_container(&s.multiline, &container.container)
                    .map(|rule| rule.merger(s.max_line_bytes));
                let shipper = FileShipper::new(
                    container.clone(),
                    class,
                    pending.is_none(),
                    &s.host,
                    s.drop_router_non_access_lines,
                    s.max_msg_bytes,
                    merger,
                );
                tracing::info!(
                    path = %source.display(),
                    %file,
                    kind = shipper.kind().as_str(),
                    multiline = shipper.merges(),
                    "following"
                );
                self.files
                    .insert(file, FileState { shipper: Some(shipper), pending, counted: Default::default() });
                return;
            }
            None => {
                self.counters.unknown_files.add(1);
                tracing::warn!(path = %source.display(), "not a container log nor a declared source; its records are dropped");
                None
            }
        };
        self.files.insert(file, FileState { shipper, pending: None, counted: Default::default() });
    }

    fn record(&mut self, file: FileId, record: Record<'_>, keys: &mut KeyGuard) {
        match self.files.get_mut(&file).and_then(|f| f.shipper.as_mut()) {
            Some(shipper) => {
                if self.now_ns == 0 {
                    self.now_ns = now_ms().saturating_mul(1_000_000);
                }
                let now = *self.now.get_or_insert_with(Instant::now);
                shipper.record(&record, keys, self.now_ns, now);
            }
            None => self.counters.dropped.add(1),
        }
    }

    async fn flushed(&mut self, file: FileId, resume: Resume) {
        self.now_ns = 0;
        self.now = None;
        if self.stopped {
            return;
        }
        let Some(state) = self.files.get_mut(&file) else { return };
        // Merged records whose time is up go with this read (or alone: the engine calls at
        // their deadline).
        if let Some(shipper) = &mut state.shipper {
            shipper.expire(Instant::now());
        }
        // A new pod whose metadata is on its way: wait for it, a bounded time from the first
        // lookup (the engine keeps tracking files meanwhile), then ship by what is known.
        if let (Some(key), Some(pods)) = (state.pending.take(), &self.pods) {
            let meta = match pods.resolve(&key).await {
                Lookup::Known(meta) => Some(meta),
                _ => None,
            };
            if let Some(shipper) = &mut state.shipper {
                let container = shipper.container().clone();
                shipper.settle(self.classifier.classify(&container, meta.as_deref()));
            }
        }
        Self::count(&self.counters, state);
        // Held merged records were not shipped: the point stays before them.
        let resume = state.shipper.as_ref().map_or(resume, |s| s.resume(resume));
        let out = state.shipper.as_mut().map(FileShipper::take).unwrap_or_default();
        self.publish(file, resume, out).await;
    }

    fn held(&self, file: FileId) -> Option<Held> {
        let shipper = self.files.get(&file)?.shipper.as_ref()?;
        shipper.held_back().map(|(from, until)| Held { from, until })
    }

    fn ending(&mut self, file: FileId) {
        if let Some(shipper) = self.files.get_mut(&file).and_then(|f| f.shipper.as_mut()) {
            shipper.end();
        }
    }

    fn closed(&mut self, file: FileId) {
        if let Some(mut state) = self.files.remove(&file) {
            Self::count(&self.counters, &mut state);
        }
    }
}

/// `logs` records grouped into MPUBs within nsqd's limits.
fn batches(bodies: Vec<Bytes>, max_messages: usize, max_bytes: usize) -> impl Iterator<Item = Vec<Bytes>> {
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0;
    for body in bodies {
        match out.last_mut() {
            Some(batch) if batch.len() < max_messages && bytes + body.len() <= max_bytes => {
                bytes += body.len();
                batch.push(body);
            }
            _ => {
                bytes = body.len();
                out.push(vec![body]);
            }
        }
    }
    out.into_iter()
}

/// Acknowledges reads to the tail engine once every message of theirs is acknowledged, in the
/// order they were read. Ends when the sink is dropped and everything handed over is answered,
/// or at the first read that cannot be acknowledged (shutdown).
pub(crate) struct Acknowledger {
    rx: mpsc::Receiver<Chunk>,
    counters: Arc<SinkCounters>,
}

impl Acknowledger {
    /// `acked` is told each read whose messages were all acknowledged (the tail engine's
    /// [`crate::tail::TailHandle::acked`]). Once a burst is shipped and the agent idle, free
    /// heap goes back to the kernel (see [`RELEASE_AFTER_BYTES`]).
    pub(crate) async fn run(mut self, mut acked: impl FnMut(FileId, Resume) + Send) {
        let mut shipped: u64 = 0;
        loop {
            let next = if shipped >= RELEASE_AFTER_BYTES {
                tokio::time::timeout(RELEASE_WHEN_IDLE, self.rx.recv()).await
            } else {
                Ok(self.rx.recv().await)
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_idle) => {
                    // Every read handed over is acknowledged, its messages freed.
                    crate::heap::release_free_memory();
                    shipped = 0;
                    continue;
                }
            };
            shipped += chunk.bytes;
            let c = &self.counters;
            c.oldest_waiting_ms.store(chunk.since_ms, Ordering::Relaxed);
            let mut stored = true;
            for (logs, n, ack) in chunk.acks {
                match ack.await {
                    Ok(()) if logs => c.messages_logs.add(n),
                    Ok(()) => c.messages_metrics.add(n),
                    Err(PublishError::Stopped) => stored = false,
                    Err(error) => {
                        // Refused for good: sending it again would be refused again.
                        c.refused.add(n);
                        tracing::error!(%error, messages = n, "nsqd refused a publish for good; its records are lost");
                    }
                }
            }
            c.oldest_waiting_ms.store(0, Ordering::Relaxed);
            if !stored {
                // Shutdown came first: neither this read nor any later one is acknowledged.
                tracing::info!("publishing stopped; later reads are sent again after the restart");
                break;
            }
            acked(chunk.file, chunk.resume);
        }
    }

    pub(crate) fn health(&self) -> SinkHealth {
        SinkHealth(self.counters.clone())
    }
}

/// What `/healthz` asks of the sink.
#[derive(Clone)]
pub(crate) struct SinkHealth(Arc<SinkCounters>);

impl SinkHealth {
    /// How long the oldest read not yet acknowledged downstream has waited.
    pub(crate) fn waiting(&self) -> std::time::Duration {
        let since = self.0.oldest_waiting_ms.load(Ordering::Relaxed);
        let waited = if since == 0 { 0 } else { (now_ms() - since).max(0) };
        self.0.publish_wait.set((waited / 1000) as u64);
        std::time::Duration::from_millis(waited as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::access::rules::Registry;
    use crate::agent::ship::tests::{java_rule, java_trace_file, log_text, next_record, whole_trace};
    use crate::tail::decoder::FileDecoder;
    use crate::tail::Wrapping;

    /// Keeps the `log` field of every `logs` message published; nsqd's answer is `OK` at once.
    #[derive(Clone, Default)]
    struct Published(Arc<Mutex<Vec<String>>>);

    impl Publish for Published {
        async fn submit(&self, topic: &str, bodies: Vec<Bytes>) -> Result<Ack, PublishError> {
            if topic == "logs" {
                self.0.lock().unwrap().extend(bodies.iter().map(|b| log_text(b)));
            }
            Ok(Box::pin(async { Ok(()) }))
        }
    }

    impl Published {
        fn logs(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Java {
        sink: AgentSink<Published>,
        published: Published,
        acked: Arc<Mutex<Vec<(FileId, Resume)>>>,
        telemetry: Telemetry,
    }

    const FILE: FileId = FileId(1);

    fn java_sink(timeout: Duration) -> Java {
        let settings = SinkSettings {
            host: "node-1".into(),
            log_topic: "logs".into(),
            metric_topic: "metrics".into(),
            send_logs: true,
            send_metrics: true,
            max_msg_bytes: 1 << 20,
            batch_max_messages: 100,
            batch_max_bytes: 1 << 20,
            drop_router_non_access_lines: true,
            multiline: vec![java_rule(timeout)],
            max_line_bytes: 1 << 20,
        };
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        let (published, telemetry) = (Published::default(), Telemetry::default());
        let (mut sink, acknowledger) =
            AgentSink::new(settings, classifier, None, Sources::default(), published.clone(), &telemetry);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let into = acked.clone();
        tokio::spawn(acknowledger.run(move |file, resume| into.lock().unwrap().push((file, resume))));
        let name = format!("/var/log/containers/java-api-7d4b9_shop_java-api-{}.log", "c".repeat(64));
        sink.opened(FILE, Path::new(&name));
        Java { sink, published, acked, telemetry }
    }

    impl Java {
        /// The `n`-th acknowledgement's offset, once it came.
        async fn ack(&self, n: usize) -> u64 {
            for _ in 0..1000 {
                if let Some((file, resume)) = self.acked.lock().unwrap().get(n) {
                    assert_eq!(*file, FILE);
                    return resume.offset;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("acknowledgement {n} never came");
        }

        fn read(&mut self, d: &mut FileDecoder, bytes: &[u8]) {
            d.push(bytes, |r, keys| self.sink.record(FILE, r, keys));
        }
    }

    #[tokio::test]
    async fn a_held_stack_trace_holds_the_checkpoint_and_goes_whole() {
        let timeout = Duration::from_millis(200);
        let mut j = java_sink(timeout);
        let (file, starts) = java_trace_file();
        let mut d = FileDecoder::new(Some(Wrapping::Docker), 1 << 20, Resume::default());

        // A read ending inside the trace: nothing published, its start acknowledged.
        let cut = starts[3] as usize;
        j.read(&mut d, &file[..cut]);
        assert_eq!(j.sink.held(FILE).map(|h| h.from.offset), Some(0));
        j.sink.flushed(FILE, d.resume()).await;
        assert_eq!(j.ack(0).await, 0);
        assert!(j.published.logs().is_empty());

        // The rest and the next record: the trace in one message; the point at the next one.
        j.read(&mut d, &file[cut..]);
        j.sink.flushed(FILE, d.resume()).await;
        assert_eq!(j.ack(1).await, starts[7]);
        assert_eq!(j.published.logs(), [whole_trace()]);

        // The file goes quiet: at the held record's deadline the engine calls again with the
        // same point, and the record goes.
        let held = j.sink.held(FILE).expect("the next record is held");
        assert_eq!(held.from.offset, starts[7]);
        assert!(held.until <= Instant::now() + timeout);
        tokio::time::sleep_until(held.until.into()).await;
        j.sink.flushed(FILE, d.resume()).await;
        assert_eq!(j.ack(2).await, file.len() as u64);
        assert_eq!(j.published.logs(), [whole_trace(), next_record()]);
        assert_eq!(j.sink.held(FILE), None);

        let count = |name| j.telemetry.value(name, &[]);
        assert_eq!(count("logmill_multiline_records_total"), Some(2));
        assert_eq!(count("logmill_multiline_lines_merged_total"), Some(6));
        assert_eq!(count("logmill_multiline_records_truncated_total"), Some(0));
        assert_eq!(count("logmill_records_shipped_total"), Some(2));
    }

    #[tokio::test]
    async fn a_file_that_ends_ships_what_is_held() {
        let mut j = java_sink(Duration::from_secs(3600));
        let (file, starts) = java_trace_file();
        let mut d = FileDecoder::new(Some(Wrapping::Docker), 1 << 20, Resume::default());
        j.read(&mut d, &file[..starts[7] as usize]);
        j.sink.flushed(FILE, d.resume()).await;
        assert_eq!(j.ack(0).await, 0);
        // Rotated away and read to its end: the engine says so before its last flush.
        j.sink.ending(FILE);
        j.sink.flushed(FILE, d.resume()).await;
        assert_eq!(j.ack(1).await, starts[7]);
        assert_eq!(j.published.logs(), [whole_trace()]);
        j.sink.closed(FILE);
    }

    #[test]
    fn log_batches_stay_within_nsqds_limits() {
        let body = |n: usize| Bytes::from(vec![b'x'; n]);
        let sizes = |b: Vec<Vec<Bytes>>| {
            b.iter().map(|v| v.iter().map(Bytes::len).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        let got = sizes(batches(vec![body(4), body(4), body(4), body(9), body(1)], 2, 10).collect());
        assert_eq!(got, vec![vec![4, 4], vec![4], vec![9, 1]]);
        // A body over the byte bound still goes, alone.
        let got = sizes(batches(vec![body(20), body(1)], 5, 10).collect());
        assert_eq!(got, vec![vec![20], vec![1]]);
        assert_eq!(batches(Vec::new(), 5, 10).count(), 0);
    }
}

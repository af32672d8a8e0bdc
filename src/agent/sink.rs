//! The agent's end of the tail engine: what it reads of each file is shipped by that file's
//! [`FileShipper`], published, and the file's resume point is acknowledged to the engine —
//! so that its checkpoint may move — only once every message of the read behind it was
//! acknowledged by NSQ (or, in `logmill run`, by the consumer's output).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::classify::{Classification, Classifier};
use super::ship::{FileShipper, Outgoing, ShipCounts};
use super::source::Sources;
use crate::access::{KeyGuard, Reject};
use crate::kube::{ContainerRef, Lookup, PodKey, PodMetadata};
use crate::nsq::producer::{Producer, PublishError};
use crate::pipeline::LineCounts;
use crate::tail::{FileId, Record, RecordSink, Resume};
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
        }
    }
}

/// The messages of one read, on their way: acknowledged to the engine once all are.
struct Chunk {
    file: FileId,
    resume: Resume,
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
        if self.chunks.send(Chunk { file, resume, acks, since_ms: now_ms() }).await.is_err() {
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
                let shipper = FileShipper::new(
                    container.clone(),
                    class,
                    pending.is_none(),
                    &self.settings.host,
                    self.settings.drop_router_non_access_lines,
                    self.settings.max_msg_bytes,
                );
                tracing::info!(path = %source.display(), %file, kind = shipper.kind().as_str(), "following");
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
                shipper.record(&record, keys, self.now_ns);
            }
            None => self.counters.dropped.add(1),
        }
    }

    async fn flushed(&mut self, file: FileId, resume: Resume) {
        self.now_ns = 0;
        if self.stopped {
            return;
        }
        let Some(state) = self.files.get_mut(&file) else { return };
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
        let out = state.shipper.as_mut().map(FileShipper::take).unwrap_or_default();
        self.publish(file, resume, out).await;
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
    /// [`crate::tail::TailHandle::acked`]).
    pub(crate) async fn run(mut self, mut acked: impl FnMut(FileId, Resume) + Send) {
        while let Some(chunk) = self.rx.recv().await {
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
    use super::*;

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

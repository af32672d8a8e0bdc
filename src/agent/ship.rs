//! What one file's records become on NSQ, pure: router (and `parsers/`) lines become points
//! for the `metrics` topic, app and controller records the compatible JSON for `logs`, the
//! rest is dropped and counted. The records of one read go out together, with the resume
//! point a checkpoint may take once every message of theirs is acknowledged.
//!
//! A container with a `[[multiline]]` rule has its lines merged into records first (a stack
//! trace is one `logs` message): the [`Merger`] holds the record in the making, so the resume
//! point handed on stops at its start ([`FileShipper::resume`]) until it is emitted.

use std::borrow::Cow;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::classify::{Classification, Kind};
use crate::access::KeyGuard;
use crate::kube::ContainerRef;
use crate::metrics::line_protocol::split_lines;
use crate::pipeline::{LineCounts, LineParser, LineProcessor};
use crate::tail::decoder::{Record, Resume};
use crate::tail::multiline::{self, MergeCounts, Merger};
use crate::wire::log_record::{LogEncoder, LogMeta};

/// The messages of one read of one file.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    /// `logs` messages, one per record.
    pub(crate) logs: Vec<Bytes>,
    /// `metrics` messages: line protocol, many lines each, each within `max_msg_bytes`.
    pub(crate) metrics: Vec<Bytes>,
}

#[cfg(test)]
impl Outgoing {
    pub(crate) fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.metrics.is_empty()
    }
}

/// What became of a file's records, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShipCounts {
    /// Records shipped to `logs`.
    pub(crate) logs: u64,
    /// `logs` records whose text was cut to fit nsqd's `--max-msg-size`.
    pub(crate) cut: u64,
    /// Records neither shipped nor turned into points (other containers, the router's error
    /// lines, controller lines the Deis logger cannot file).
    pub(crate) dropped: u64,
    /// What multiline merging did (zero without a rule).
    pub(crate) multiline: MergeCounts,
}

/// How a file's records are shipped, from its container's classification.
///
/// A new pod's metadata may not be known when its first records are read. Its lines are turned
/// into points at once (which definition applies depends on the container's name only, and
/// the file's key guard must advance as the engine reads), while what decides the `logs` side
/// (labels, `pod_id`) is awaited a bounded time: those records are held, then shipped by the
/// classification [`FileShipper::settle`] brings.
pub(crate) struct FileShipper {
    class: Classification,
    /// The classification is final; until then, `logs` records are held.
    settled: bool,
    held: Vec<Held>,
    container: ContainerRef,
    host: String,
    /// Encodes `logs` records (the per-container part written once).
    logs: LogEncoder,
    /// Turns lines into points, when a definition applies (the router's, or a `parsers/` one).
    points: Option<LineProcessor>,
    /// Non-access lines of a container with a definition go to `logs` only when this is off
    /// (and the container's records ship at all).
    drop_non_access: bool,
    /// Merges lines into records, for a container with a `[[multiline]]` rule and no
    /// definition (merged records carry no point keys).
    merger: Option<Merger>,
    max_msg_bytes: usize,
    /// `logs` records of the current read, back to back; split into messages at the end.
    /// Both buffers leave with the read's messages ([`FileShipper::take`]): between reads a
    /// shipper holds no buffer, however large its last read was.
    log_buf: BytesMut,
    log_ends: Vec<usize>,
    /// Line protocol of the current read.
    metric_buf: BytesMut,
    /// The last read's sizes of both: the next read's buffers start there, one allocation
    /// rather than a series of doublings, each copied and freed (heap churn that raised the
    /// 4-file catch-up's peak RSS from 18 to 61 MiB).
    log_hint: usize,
    metric_hint: usize,
    counts: ShipCounts,
}

/// A record waiting for its container's classification.
struct Held {
    text: Vec<u8>,
    stream: crate::tail::container::Stream,
    time_ns: i64,
    /// Not turned into points (or no definition applies).
    other: bool,
}

impl FileShipper {
    /// `host` is this node's name (`kubernetes.host`, and the `host` tag of points). `settled`:
    /// `class` is final (else `logs` records are held until [`FileShipper::settle`]).
    /// `merger`: the container's `[[multiline]]` rule's, used only when no definition turns
    /// its lines into points.
    pub(crate) fn new(
        container: ContainerRef,
        class: Classification,
        settled: bool,
        host: &str,
        drop_non_access: bool,
        max_msg_bytes: usize,
        merger: Option<Merger>,
    ) -> Self {
        let logs = log_encoder(&container, &class, host);
        let points =
            class.parser.as_ref().map(|d| LineProcessor::points_only(host, LineParser::for_definition(d)));
        // Points are keyed by each line's own time and offset; a merged record has neither of
        // its later lines, so a file whose lines become points is never merged.
        let merger = merger.filter(|_| points.is_none());
        Self {
            class,
            settled,
            held: Vec::new(),
            container,
            host: host.to_owned(),
            logs,
            points,
            drop_non_access,
            merger,
            max_msg_bytes,
            log_buf: BytesMut::new(),
            log_ends: Vec::new(),
            metric_buf: BytesMut::new(),
            log_hint: 0,
            metric_hint: 0,
            counts: ShipCounts::default(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        self.class.kind
    }

    pub(crate) fn container(&self) -> &ContainerRef {
        &self.container
    }

    /// Whether the container's lines are merged into records.
    pub(crate) fn merges(&self) -> bool {
        self.merger.is_some()
    }

    /// Handles one record; `now_ns` stamps `logs` records of raw files, which carry no
    /// runtime time; `now` is when it was read (the merge timeout's clock).
    pub(crate) fn record(&mut self, record: &Record<'_>, keys: &mut KeyGuard, now_ns: i64, now: Instant) {
        if let Some(mut merger) = self.merger.take() {
            // A merged record of a raw file keeps its first line's read time.
            let line = Record {
                time_ns: Some(record.time_ns.unwrap_or(now_ns)),
                stream: record.stream,
                text: Cow::Borrowed(&record.text),
                truncated: record.truncated,
                offset: record.offset,
            };
            merger.push(line, *keys, now, |r| self.merged(&r));
            self.merger = Some(merger);
            return;
        }
        // An access line becomes points (or is counted as a bad one); a line of another kind
        // (nginx's error lines) may still go to `logs`.
        let other = match &mut self.points {
            None => true,
            Some(points) => {
                let other_before = points.counts().other;
                if self.metric_buf.capacity() == 0 {
                    self.metric_buf.reserve(self.metric_hint);
                }
                points.process(&record.text, record.truncated, record.origin(), keys, &mut self.metric_buf);
                points.counts().other > other_before
            }
        };
        self.log(&record.text, record.stream, record.time_ns.unwrap_or(now_ns), other);
    }

    /// Emits the merged records held `timeout` or longer at `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        if let Some(mut merger) = self.merger.take() {
            merger.flush_expired(now, |r| self.merged(&r));
            self.merger = Some(merger);
        }
    }

    /// Emits every merged record held: the file ends.
    pub(crate) fn end(&mut self) {
        if let Some(mut merger) = self.merger.take() {
            merger.flush(|r| self.merged(&r));
            self.merger = Some(merger);
        }
    }

    /// Where the file may be read again from, given the decoder's resume point: before the
    /// oldest merged record still held (it was not shipped).
    pub(crate) fn resume(&self, decoder: Resume) -> Resume {
        match &self.merger {
            Some(merger) => multiline::resume(decoder, merger),
            None => decoder,
        }
    }

    /// The start of the oldest merged record held, and when the next one is due.
    pub(crate) fn held_back(&self) -> Option<(Resume, Instant)> {
        let merger = self.merger.as_ref()?;
        Some((merger.oldest_start()?, merger.next_deadline()?))
    }

    fn merged(&mut self, record: &Record<'_>) {
        // Every line pushed has a time (`record` gives raw lines theirs); no definition
        // applies (see `new`): the record is of the `other` kind, for `logs`.
        self.log(&record.text, record.stream, record.time_ns.unwrap_or_default(), true);
    }

    fn log(&mut self, text: &[u8], stream: crate::tail::container::Stream, time_ns: i64, other: bool) {
        if !self.settled {
            self.held.push(Held { text: text.to_vec(), stream, time_ns, other });
            return;
        }
        self.push_log(text, stream, time_ns, other);
    }

    /// The final classification: held records are shipped by it.
    pub(crate) fn settle(&mut self, class: Classification) {
        self.logs = log_encoder(&self.container, &class, &self.host);
        self.class = class;
        self.settled = true;
        for h in std::mem::take(&mut self.held) {
            self.push_log(&h.text, h.stream, h.time_ns, h.other);
        }
    }

    fn push_log(&mut self, text: &[u8], stream: crate::tail::container::Stream, time_ns: i64, other: bool) {
        let ships = self.class.ships(text) || (other && self.points.is_some() && !self.drop_non_access);
        if !ships {
            // Access lines became points; anything else is dropped.
            self.counts.dropped += u64::from(other);
            return;
        }
        if self.log_buf.capacity() == 0 {
            self.log_buf.reserve(self.log_hint);
        }
        let cut = self.logs.encode_into_capped(text, stream, time_ns, self.max_msg_bytes, &mut self.log_buf);
        self.log_ends.push(self.log_buf.len());
        self.counts.logs += 1;
        self.counts.cut += u64::from(cut);
    }

    /// The messages of what was handed over since the last call.
    ///
    /// The read's buffers go with them (the messages are slices of them) and are freed when
    /// the last message is acknowledged. `split()` instead would leave the shipper the rest
    /// of each buffer, and with it the whole allocation, which a split `BytesMut` shares: one
    /// 64 KiB read of short lines is ~350 KiB of `logs` JSON, kept for every followed file as
    /// long as it is followed, idle or not (82 MiB of the agent's 84 with 200 files). A busy
    /// file allocates its read's buffer afresh each time, which it mostly did anyway: the
    /// previous one is still shared with messages in flight.
    pub(crate) fn take(&mut self) -> Outgoing {
        (self.log_hint, self.metric_hint) = (self.log_buf.len(), self.metric_buf.len());
        let all = std::mem::take(&mut self.log_buf).freeze();
        let mut logs = Vec::with_capacity(self.log_ends.len());
        let mut start = 0;
        for end in std::mem::take(&mut self.log_ends) {
            logs.push(all.slice(start..end));
            start = end;
        }
        let metrics = split_lines(std::mem::take(&mut self.metric_buf).freeze(), self.max_msg_bytes);
        Outgoing { logs, metrics }
    }

    /// Bytes of buffer capacity the shipper holds between reads.
    #[cfg(test)]
    fn retained_bytes(&self) -> usize {
        self.log_buf.capacity()
            + self.log_ends.capacity() * std::mem::size_of::<usize>()
            + self.metric_buf.capacity()
    }

    pub(crate) fn counts(&self) -> ShipCounts {
        ShipCounts { multiline: self.merger.as_ref().map(Merger::counts).unwrap_or_default(), ..self.counts }
    }

    /// What the definition made of the lines (access, other, rejected by reason).
    pub(crate) fn line_counts(&self) -> Option<LineCounts> {
        self.points.as_ref().map(LineProcessor::counts)
    }
}

fn log_encoder(container: &ContainerRef, class: &Classification, host: &str) -> LogEncoder {
    LogEncoder::new(&LogMeta {
        container_id: &container.container_id,
        namespace_name: &container.namespace,
        pod_id: &class.pod_id,
        pod_name: &container.pod,
        container_name: &class.container_name,
        labels: &class.labels,
        host,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::access::rules::Registry;
    use crate::agent::classify::Classifier;
    use crate::tail::container::Stream;
    use crate::tail::multiline::MultilineRule;

    const ROUTER_LINE: &[u8] = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "c" - "w" - 127.0.0.1:19001 - w - 0.001 - 0.002"#;
    const NGINX_ERROR: &[u8] = b"2026/11/21 04:22:23 [error] 16272#16272: *10 connect() failed";

    fn container(name: &str) -> ContainerRef {
        let file = format!("{name}_{}_{name}-{}.log", "ns", "a".repeat(64));
        crate::kube::names::parse_containers_name(&file).expect("a valid name")
    }

    fn shipper(c: &ContainerRef, drop_non_access: bool) -> FileShipper {
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        FileShipper::new(
            c.clone(),
            classifier.classify(c, None),
            true,
            "node-1",
            drop_non_access,
            1 << 20,
            None,
        )
    }

    fn record(text: &[u8], offset: u64) -> Record<'_> {
        Record {
            time_ns: Some(1_795_234_941_000_001_000 + offset as i64),
            stream: Stream::Stderr,
            text: Cow::Borrowed(text),
            truncated: false,
            offset,
        }
    }

    #[test]
    fn router_lines_become_points_and_its_error_lines_are_dropped_or_shipped() {
        let c = container("deis-router");
        for drop in [true, false] {
            let mut s = shipper(&c, drop);
            assert_eq!(s.kind(), Kind::Router);
            let mut keys = KeyGuard::default();
            s.record(&record(ROUTER_LINE, 0), &mut keys, 0, Instant::now());
            s.record(&record(NGINX_ERROR, 300), &mut keys, 0, Instant::now());
            let out = s.take();
            // The three compat points of the access line, in one message.
            assert_eq!(out.metrics.len(), 1);
            let text = std::str::from_utf8(&out.metrics[0]).expect("line protocol is UTF-8");
            assert_eq!(text.lines().count(), 3, "{text}");
            assert!(text.starts_with("deis_router_request_time_ms,app=web,status_code=200,host=node-1,method=GET value=0.002 1795234941000001000\n"), "{text}");
            // Namespace `ns` is not a platform one, so without metadata the router's pod
            // counts as an app only by the app rule, which the router rule takes before: its
            // error line goes to `logs` only when not dropped.
            assert_eq!(out.logs.len(), usize::from(!drop), "drop = {drop}");
            assert_eq!(s.counts().dropped, u64::from(drop));
        }
    }

    #[test]
    fn a_shipper_keeps_no_buffer_between_reads() {
        // A read of a thousand records, `logs` JSON (an app) and line protocol (the router):
        // the buffers leave with the messages, so an idle file costs no buffer however much
        // its last read was.
        for (name, line) in [("web", &b"GET /cart/1 200 served in 12 ms"[..]), ("deis-router", ROUTER_LINE)] {
            let c = container(name);
            let mut s = shipper(&c, true);
            let mut keys = KeyGuard::default();
            for i in 0..1000 {
                s.record(&record(line, i * 300), &mut keys, 0, Instant::now());
            }
            let out = s.take();
            let bytes: usize = out.logs.iter().chain(&out.metrics).map(|m| m.len()).sum();
            assert!(bytes > 64 << 10, "{name}: {bytes} bytes of messages");
            assert_eq!(s.retained_bytes(), 0, "{name}");
            // The next read still ships.
            s.record(&record(line, 1000 * 300), &mut keys, 0, Instant::now());
            let out = s.take();
            assert_eq!(out.logs.len() + out.metrics.len(), 1, "{name}");
        }
    }

    #[test]
    fn app_records_are_the_compatible_json() {
        let c = container("web");
        let mut s = shipper(&c, true);
        assert_eq!(s.kind(), Kind::App);
        let mut keys = KeyGuard::default();
        s.record(&record(b"hello \"world\"", 0), &mut keys, 0, Instant::now());
        s.record(&record(b"second", 10), &mut keys, 0, Instant::now());
        let out = s.take();
        assert!(out.metrics.is_empty());
        assert_eq!(out.logs.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&out.logs[0]).expect("JSON");
        assert_eq!(v["log"], "hello \"world\"\n");
        assert_eq!(v["stream"], "stderr");
        // date -u -d @1795234941 → 2026-11-21T04:22:21; the record's fraction is 1 µs.
        assert_eq!(v["time"], "2026-11-21T04:22:21.000001+00:00");
        assert_eq!(v["kubernetes"]["namespace_name"], "ns");
        assert_eq!(v["kubernetes"]["pod_name"], "web");
        assert_eq!(v["kubernetes"]["container_name"], "web");
        assert_eq!(v["kubernetes"]["labels"]["app"], "ns", "the app rule by namespace");
        assert_eq!(v["kubernetes"]["host"], "node-1");
        assert_eq!(v["docker"]["container_id"], "a".repeat(64));
        // A second read starts afresh.
        assert!(s.take().is_empty());
    }

    #[test]
    fn records_wait_for_the_classification_and_points_do_not() {
        let router = container("deis-router");
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        let mut s = FileShipper::new(
            router.clone(),
            classifier.classify(&router, None),
            false,
            "n",
            true,
            1 << 20,
            None,
        );
        let mut keys = KeyGuard::default();
        s.record(&record(ROUTER_LINE, 0), &mut keys, 0, Instant::now());
        s.record(&record(b"plain text", 300), &mut keys, 0, Instant::now());
        // The access line's points are written at once, and the guard moved.
        assert_eq!(keys.last_ns(), Some(1_795_234_941_000_001_000));
        let out = s.take();
        assert_eq!((out.metrics.len(), out.logs.len()), (1, 0));
        // The pod is a Deis app's: its router ships every record to `logs` too.
        let meta = crate::kube::PodMeta {
            uid: "uid-1".into(),
            labels: vec![("app".into(), "ns".into()), ("heritage".into(), "deis".into())],
            containers: vec![],
        };
        s.settle(classifier.classify(&router, Some(&meta)));
        let out = s.take();
        assert_eq!((out.metrics.len(), out.logs.len()), (0, 2));
        let v: serde_json::Value = serde_json::from_slice(&out.logs[1]).expect("JSON");
        assert_eq!(
            (v["log"].as_str(), v["kubernetes"]["pod_id"].as_str()),
            (Some("plain text\n"), Some("uid-1"))
        );
    }

    /// A Java application's error with its stack trace, and the next record: each record
    /// starts with a date, as the rule's `start` says.
    const JAVA_START: &str = r"^\d{4}-\d{2}-\d{2} ";
    const TRACE: [&str; 7] = [
        "2026-11-21 04:22:21.000 ERROR [main] c.e.Checkout - payment failed",
        "java.lang.IllegalStateException: card declined",
        "\tat com.example.Payments.charge(Payments.java:42)",
        "\tat com.example.Checkout.run(Checkout.java:17)",
        "Caused by: java.io.IOException: gateway timeout",
        "\tat com.example.Gateway.call(Gateway.java:88)",
        "\t... 2 more",
    ];
    const NEXT: &str = "2026-11-21 04:22:22.000 INFO [main] c.e.Checkout - next order";

    pub(crate) fn java_rule(timeout: std::time::Duration) -> MultilineRule {
        MultilineRule {
            containers: regex::Regex::new("java").expect("a regex"),
            start: regex::bytes::Regex::new(JAVA_START).expect("a regex"),
            timeout,
        }
    }

    /// Docker json-file lines of `texts`, the i-th written at second 21 + i, and where each
    /// line starts.
    pub(crate) fn docker_lines(texts: &[&str]) -> (Vec<u8>, Vec<u64>) {
        let (mut file, mut starts) = (Vec::new(), Vec::new());
        for (i, text) in texts.iter().enumerate() {
            starts.push(file.len() as u64);
            let log = serde_json::to_string(&format!("{text}\n")).expect("a string");
            let line = format!(
                r#"{{"log":{log},"stream":"stdout","time":"2026-11-21T04:22:{}.000000000Z"}}"#,
                21 + i
            );
            file.extend_from_slice(line.as_bytes());
            file.push(b'\n');
        }
        (file, starts)
    }

    pub(crate) fn java_trace_file() -> (Vec<u8>, Vec<u64>) {
        docker_lines(&[&TRACE[..], &[NEXT]].concat())
    }

    pub(crate) fn log_text(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        v["log"].as_str().expect("a log field").to_owned()
    }

    pub(crate) fn whole_trace() -> String {
        TRACE.join("\n") + "\n"
    }

    pub(crate) fn next_record() -> String {
        format!("{NEXT}\n")
    }

    #[test]
    fn a_stack_trace_split_over_reads_is_one_logs_message() {
        use crate::tail::decoder::FileDecoder;
        use crate::tail::Wrapping;
        let timeout = std::time::Duration::from_secs(1);
        let c = container("java-api");
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        let merger = Some(java_rule(timeout).merger(1 << 20));
        let mut s =
            FileShipper::new(c.clone(), classifier.classify(&c, None), true, "node-1", true, 1 << 20, merger);
        assert!(s.merges());
        let (file, starts) = java_trace_file();
        let mut d = FileDecoder::new(Some(Wrapping::Docker), 1 << 20, Resume::default());
        let t = Instant::now();

        // The first read ends inside the trace: nothing ships, the point stays at its start.
        let cut = starts[4] as usize;
        d.push(&file[..cut], |r, keys| s.record(&r, keys, 0, t));
        assert!(s.take().is_empty());
        assert_eq!(d.resume().offset, cut as u64);
        assert_eq!(s.resume(d.resume()), Resume::default());
        assert_eq!(s.held_back().map(|(from, _)| from.offset), Some(0));

        // The second read ends it (the next record starts): one message, `\n`-joined, with
        // the first line's time; the next record is held in its turn.
        let later = t + std::time::Duration::from_millis(100);
        d.push(&file[cut..], |r, keys| s.record(&r, keys, 0, later));
        let out = s.take();
        assert_eq!(out.logs.len(), 1);
        assert_eq!(log_text(&out.logs[0]), whole_trace());
        let v: serde_json::Value = serde_json::from_slice(&out.logs[0]).expect("JSON");
        assert!(v["time"].as_str().is_some_and(|t| t.starts_with("2026-11-21T04:22:21")), "{}", v["time"]);
        assert_eq!(v["stream"], "stdout");
        assert_eq!(s.resume(d.resume()).offset, starts[7]);
        assert_eq!(s.counts().multiline, MergeCounts { records: 1, lines_merged: 6, truncated: 0 });
        assert_eq!(s.counts().logs, 1);

        // Its timeout counts from when it was read.
        assert_eq!(
            s.held_back().map(|(from, until)| (from.offset, until)),
            Some((starts[7], later + timeout))
        );
        s.expire(later + timeout - std::time::Duration::from_millis(1));
        assert!(s.take().is_empty());
        s.expire(later + timeout);
        let out = s.take();
        assert_eq!(out.logs.iter().map(|b| log_text(b)).collect::<Vec<_>>(), [next_record()]);
        assert_eq!((s.resume(d.resume()), s.held_back()), (d.resume(), None));

        // The end of a file ships what is held.
        let (more, _) = docker_lines(&[NEXT, TRACE[1]]);
        d.push(&more, |r, keys| s.record(&r, keys, 0, later));
        assert!(s.take().is_empty());
        s.end();
        let out = s.take();
        assert_eq!(
            out.logs.iter().map(|b| log_text(b)).collect::<Vec<_>>(),
            [format!("{NEXT}\n{}\n", TRACE[1])]
        );
        assert_eq!(s.resume(d.resume()), d.resume());
    }

    #[test]
    fn lines_that_become_points_are_not_merged() {
        let router = container("deis-router");
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        let rule = MultilineRule {
            containers: regex::Regex::new("").expect("a regex"),
            ..java_rule(Default::default())
        };
        let s = FileShipper::new(
            router.clone(),
            classifier.classify(&router, None),
            true,
            "n",
            true,
            1 << 20,
            Some(rule.merger(1 << 20)),
        );
        assert!(!s.merges());
    }

    #[test]
    fn platform_containers_are_dropped() {
        let c = crate::kube::names::parse_containers_name(&format!(
            "deis-builder-1_deis_deis-builder-{}.log",
            "b".repeat(64)
        ))
        .expect("a valid name");
        let mut s = shipper(&c, true);
        assert_eq!(s.kind(), Kind::Other);
        s.record(&record(b"anything", 0), &mut KeyGuard::default(), 0, Instant::now());
        assert!(s.take().is_empty());
        assert_eq!(s.counts().dropped, 1);
    }
}

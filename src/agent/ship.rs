//! What one file's records become on NSQ, pure: router (and `parsers/`) lines become points
//! for the `metrics` topic, app and controller records the compatible JSON for `logs`, the
//! rest is dropped and counted. The records of one read go out together, with the resume
//! point a checkpoint may take once every message of theirs is acknowledged.

use bytes::{Bytes, BytesMut};

use super::classify::{Classification, Kind};
use crate::access::KeyGuard;
use crate::kube::ContainerRef;
use crate::metrics::line_protocol::split_lines;
use crate::pipeline::{LineCounts, LineParser, LineProcessor};
use crate::tail::decoder::Record;
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
    max_msg_bytes: usize,
    /// `logs` records of the current read, back to back; split into messages at the end.
    log_buf: BytesMut,
    log_ends: Vec<usize>,
    /// Line protocol of the current read.
    metric_buf: BytesMut,
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
    pub(crate) fn new(
        container: ContainerRef,
        class: Classification,
        settled: bool,
        host: &str,
        drop_non_access: bool,
        max_msg_bytes: usize,
    ) -> Self {
        let logs = log_encoder(&container, &class, host);
        let points =
            class.parser.as_ref().map(|d| LineProcessor::points_only(host, LineParser::for_definition(d)));
        Self {
            class,
            settled,
            held: Vec::new(),
            container,
            host: host.to_owned(),
            logs,
            points,
            drop_non_access,
            max_msg_bytes,
            log_buf: BytesMut::new(),
            log_ends: Vec::new(),
            metric_buf: BytesMut::new(),
            counts: ShipCounts::default(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        self.class.kind
    }

    pub(crate) fn container(&self) -> &ContainerRef {
        &self.container
    }

    /// Handles one record; `now_ns` stamps `logs` records of raw files, which carry no
    /// runtime time.
    pub(crate) fn record(&mut self, record: &Record<'_>, keys: &mut KeyGuard, now_ns: i64) {
        // An access line becomes points (or is counted as a bad one); a line of another kind
        // (nginx's error lines) may still go to `logs`.
        let other = match &mut self.points {
            None => true,
            Some(points) => {
                let other_before = points.counts().other;
                points.process(&record.text, record.truncated, record.origin(), keys, &mut self.metric_buf);
                points.counts().other > other_before
            }
        };
        let time_ns = record.time_ns.unwrap_or(now_ns);
        if !self.settled {
            self.held.push(Held { text: record.text.to_vec(), stream: record.stream, time_ns, other });
            return;
        }
        self.push_log(&record.text, record.stream, time_ns, other);
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
        let cut = self.logs.encode_into_capped(text, stream, time_ns, self.max_msg_bytes, &mut self.log_buf);
        self.log_ends.push(self.log_buf.len());
        self.counts.logs += 1;
        self.counts.cut += u64::from(cut);
    }

    /// The messages of what was handed over since the last call.
    pub(crate) fn take(&mut self) -> Outgoing {
        let mut logs = Vec::with_capacity(self.log_ends.len());
        let mut start = 0;
        let all = self.log_buf.split().freeze();
        for &end in &self.log_ends {
            logs.push(all.slice(start..end));
            start = end;
        }
        self.log_ends.clear();
        let metrics = split_lines(self.metric_buf.split().freeze(), self.max_msg_bytes);
        Outgoing { logs, metrics }
    }

    pub(crate) fn counts(&self) -> ShipCounts {
        self.counts
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
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::access::rules::Registry;
    use crate::agent::classify::Classifier;
    use crate::tail::container::Stream;

    const ROUTER_LINE: &[u8] = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "c" - "w" - 127.0.0.1:19001 - w - 0.001 - 0.002"#;
    const NGINX_ERROR: &[u8] = b"2026/11/21 04:22:23 [error] 16272#16272: *10 connect() failed";

    fn container(name: &str) -> ContainerRef {
        let file = format!("{name}_{}_{name}-{}.log", "ns", "a".repeat(64));
        crate::kube::names::parse_containers_name(&file).expect("a valid name")
    }

    fn shipper(c: &ContainerRef, drop_non_access: bool) -> FileShipper {
        let classifier = Classifier::new(Registry::builtin().expect("built-ins"), true);
        FileShipper::new(c.clone(), classifier.classify(c, None), true, "node-1", drop_non_access, 1 << 20)
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
            s.record(&record(ROUTER_LINE, 0), &mut keys, 0);
            s.record(&record(NGINX_ERROR, 300), &mut keys, 0);
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
    fn app_records_are_the_compatible_json() {
        let c = container("web");
        let mut s = shipper(&c, true);
        assert_eq!(s.kind(), Kind::App);
        let mut keys = KeyGuard::default();
        s.record(&record(b"hello \"world\"", 0), &mut keys, 0);
        s.record(&record(b"second", 10), &mut keys, 0);
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
        let mut s =
            FileShipper::new(router.clone(), classifier.classify(&router, None), false, "n", true, 1 << 20);
        let mut keys = KeyGuard::default();
        s.record(&record(ROUTER_LINE, 0), &mut keys, 0);
        s.record(&record(b"plain text", 300), &mut keys, 0);
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

    #[test]
    fn platform_containers_are_dropped() {
        let c = crate::kube::names::parse_containers_name(&format!(
            "deis-builder-1_deis_deis-builder-{}.log",
            "b".repeat(64)
        ))
        .expect("a valid name");
        let mut s = shipper(&c, true);
        assert_eq!(s.kind(), Kind::Other);
        s.record(&record(b"anything", 0), &mut KeyGuard::default(), 0);
        assert!(s.take().is_empty());
        assert_eq!(s.counts().dropped, 1);
    }
}

//! `router_requests`: access lines aggregated per event-time window and series.
//!
//! A series is (window, app, status, method, host). Windows close when the newest event time
//! seen (the watermark) passes their end plus the allowed lateness; a line for a window that
//! already closed opens it again as a new series, flushed later under a new sequence number,
//! so a written point is never overwritten and `sum("count")` stays exact. Live series are
//! bounded: past `max_series` the least recently used one is flushed early (and counted),
//! never dropped.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::point::{FieldValue, Point};
use super::sketch::Sketch;
use crate::access::{AccessRecord, Method};

pub(crate) const MEASUREMENT: &str = "router_requests";

/// Upper bounds of the histogram buckets, seconds; a last bucket `inf` takes the rest.
pub(crate) const BUCKET_BOUNDS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BUCKET_NAMES: [&str; 12] =
    ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "inf"];

/// How the aggregator windows and bounds its state.
#[derive(Debug, Clone)]
pub struct AggregateSettings {
    pub(crate) window_ns: i64,
    /// How far behind the watermark a window stays open for stragglers.
    pub(crate) lateness_ns: i64,
    pub(crate) max_series: NonZeroUsize,
    /// The `consumer` tag: the instance that aggregated (`local` for replay and run).
    pub(crate) consumer: String,
    /// First flush sequence number. Replays use 0 so that replaying a file again writes the
    /// same keys; a long-running consumer starts from a clock-derived value so that a restart
    /// does not reuse the keys of points it wrote before.
    pub(crate) sequence_base: u64,
}

/// Counters of what the aggregator did, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AggregateStats {
    pub(crate) lines: u64,
    pub(crate) points: u64,
    pub(crate) evictions: u64,
    /// Lines whose window had already been flushed.
    pub(crate) late_lines: u64,
}

#[derive(Debug, Default)]
struct Distribution {
    sum: f64,
    max: f64,
    buckets: [u64; 12],
    sketch: Sketch,
}

impl Distribution {
    fn insert(&mut self, v: f64) {
        // A value line protocol cannot carry would make InfluxDB refuse the whole point.
        if !v.is_finite() {
            return;
        }
        self.sum = (self.sum + v).min(f64::MAX);
        self.max = self.max.max(v);
        let bucket = BUCKET_BOUNDS.iter().position(|&b| v <= b).unwrap_or(BUCKET_BOUNDS.len());
        self.buckets[bucket] += 1;
        self.sketch.insert(v);
    }

    fn write_fields(&self, prefix: &str, fields: &mut Vec<(String, FieldValue)>) {
        if self.sketch.count() == 0 {
            return;
        }
        fields.push((format!("{prefix}_sum"), FieldValue::Float(self.sum)));
        fields.push((format!("{prefix}_max"), FieldValue::Float(self.max)));
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            if let Some(v) = self.sketch.quantile(q) {
                fields.push((format!("{prefix}_{name}"), FieldValue::Float(v)));
            }
        }
        for (name, &count) in BUCKET_NAMES.iter().zip(&self.buckets) {
            fields.push((format!("{prefix}_bucket_le_{name}"), FieldValue::Int(count as i64)));
        }
    }
}

#[derive(Debug)]
struct Series {
    window_start: i64,
    app: Box<str>,
    host: Box<str>,
    status: u16,
    method: Method,
    count: u64,
    bytes_sent: u64,
    request_time: Distribution,
    upstream_time: Distribution,
}

/// A fast hash for series keys (the FxHash mix, 8 bytes at a time). The keys are built from
/// the router's own configuration (app names) and closed sets (status, method), not from what
/// a client can choose freely, so a keyed hash's flood resistance buys nothing here, while
/// SipHash was a visible share of the per-line cost.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

pub struct Aggregator {
    settings: AggregateSettings,
    series: LruCache<Box<[u8]>, Series, KeyHash>,
    /// Live series per window start, to find due windows without scanning every series.
    open_windows: BTreeMap<i64, usize>,
    /// Newest window start flushed so far: lines at or before it are late.
    closed_through: Option<i64>,
    watermark_ns: i64,
    sequence: u64,
    key: Vec<u8>,
    ready: Vec<Point>,
    stats: AggregateStats,
}

impl Aggregator {
    pub fn new(settings: AggregateSettings) -> Self {
        Self {
            series: LruCache::with_hasher(settings.max_series, KeyHash::default()),
            open_windows: BTreeMap::new(),
            closed_through: None,
            watermark_ns: i64::MIN,
            sequence: settings.sequence_base,
            key: Vec::with_capacity(64),
            ready: Vec::new(),
            stats: AggregateStats::default(),
            settings,
        }
    }

    pub(crate) fn stats(&self) -> AggregateStats {
        self.stats
    }

    pub fn live_series(&self) -> usize {
        self.series.len()
    }

    /// Adds one access line; `host` is the router pod's node.
    pub fn observe(&mut self, record: &AccessRecord<'_>, host: &str) {
        self.stats.lines += 1;
        let window_start = record.time_ns - record.time_ns.rem_euclid(self.settings.window_ns);
        if self.closed_through.is_some_and(|c| window_start <= c) {
            self.stats.late_lines += 1;
        }
        // The key is built in a reused buffer so that a hit allocates nothing.
        self.key.clear();
        self.key.extend_from_slice(&window_start.to_be_bytes());
        self.key.extend_from_slice(&record.status.to_be_bytes());
        self.key.push(record.method as u8);
        self.key.extend_from_slice(record.app.as_bytes());
        self.key.push(0);
        self.key.extend_from_slice(host.as_bytes());
        let series = match self.series.get_mut(self.key.as_slice()) {
            Some(series) => series,
            None => {
                let fresh = Series {
                    window_start,
                    app: record.app.into(),
                    host: host.into(),
                    status: record.status,
                    method: record.method,
                    count: 0,
                    bytes_sent: 0,
                    request_time: Distribution::default(),
                    upstream_time: Distribution::default(),
                };
                *self.open_windows.entry(window_start).or_default() += 1;
                if let Some((_, evicted)) = self.series.push(self.key.as_slice().into(), fresh) {
                    self.stats.evictions += 1;
                    self.close_series(evicted);
                    self.sequence += 1;
                }
                // Cannot fail: the entry was inserted under this key just above, as the most
                // recently used, and nothing has touched the cache since.
                self.series.get_mut(self.key.as_slice()).expect("series just inserted")
            }
        };
        series.count += 1;
        series.bytes_sent = series.bytes_sent.saturating_add(record.bytes_sent);
        series.request_time.insert(record.request_time);
        if let Some(t) = record.upstream_time_total() {
            series.upstream_time.insert(t);
        }
        if record.time_ns > self.watermark_ns {
            self.advance_to(record.time_ns);
        }
    }

    /// Moves the watermark (event time) forward and flushes every window that is due. A
    /// consumer whose input has gone quiet calls this with the wall clock.
    pub(crate) fn advance_to(&mut self, watermark_ns: i64) {
        self.watermark_ns = self.watermark_ns.max(watermark_ns);
        let span = self.settings.window_ns.saturating_add(self.settings.lateness_ns);
        let due = |start: i64| start.saturating_add(span) <= self.watermark_ns;
        match self.open_windows.first_key_value() {
            Some((&first, _)) if due(first) => {}
            _ => return,
        }
        let cutoff = self.watermark_ns.saturating_sub(span);
        self.flush_where(|start| start <= cutoff);
    }

    /// Flushes every live series (end of input, shutdown).
    pub fn flush_all(&mut self) {
        self.flush_where(|_| true);
    }

    /// Takes the points flushed so far.
    pub fn take_ready(&mut self) -> Vec<Point> {
        std::mem::take(&mut self.ready)
    }

    fn flush_where(&mut self, due: impl Fn(i64) -> bool) {
        let keys: Vec<Box<[u8]>> =
            self.series.iter().filter(|(_, s)| due(s.window_start)).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return;
        }
        // Least recently used first, so the output follows the input's order.
        for key in keys.iter().rev() {
            if let Some(series) = self.series.pop(key) {
                let start = series.window_start;
                self.closed_through = Some(self.closed_through.map_or(start, |c| c.max(start)));
                self.close_series(series);
            }
        }
        self.sequence += 1;
    }

    fn close_series(&mut self, s: Series) {
        if let Some(n) = self.open_windows.get_mut(&s.window_start) {
            *n -= 1;
            if *n == 0 {
                self.open_windows.remove(&s.window_start);
            }
        }
        self.stats.points += 1;
        let mut fields = Vec::with_capacity(40);
        fields.push(("count".to_owned(), FieldValue::Int(s.count.min(i64::MAX as u64) as i64)));
        fields.push(("bytes_sent".to_owned(), FieldValue::Int(s.bytes_sent.min(i64::MAX as u64) as i64)));
        s.request_time.write_fields("request_time", &mut fields);
        s.upstream_time.write_fields("upstream_time", &mut fields);
        let offset = (self.sequence % self.settings.window_ns as u64) as i64;
        self.ready.push(Point {
            measurement: MEASUREMENT.to_owned(),
            tags: vec![
                ("app".to_owned(), s.app.into()),
                ("status_code".to_owned(), crate::access::StatusText::new(s.status).as_str().to_owned()),
                ("method".to_owned(), s.method.as_str().to_owned()),
                ("host".to_owned(), s.host.into()),
                ("consumer".to_owned(), self.settings.consumer.clone()),
            ],
            fields,
            timestamp_ns: Some(s.window_start + offset),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn settings(max_series: usize) -> AggregateSettings {
        AggregateSettings {
            window_ns: 10 * SEC,
            lateness_ns: 5 * SEC,
            max_series: NonZeroUsize::new(max_series).unwrap(),
            consumer: "local".into(),
            sequence_base: 0,
        }
    }

    fn rec(t_secs: i64, app: &'static str, status: u16, rt: f64, up: &'static [u8]) -> AccessRecord<'static> {
        AccessRecord {
            time_ns: t_secs * SEC,
            app,
            status,
            method: Method::Get,
            bytes_sent: 100,
            bytes_sent_text: b"100",
            upstream_times: up,
            request_time: rt,
            request_time_text: b"-",
        }
    }

    fn int(p: &Point, k: &str) -> i64 {
        match p.field_value(k) {
            Some(FieldValue::Int(v)) => *v,
            other => panic!("{k}: {other:?}"),
        }
    }

    fn float(p: &Point, k: &str) -> f64 {
        match p.field_value(k) {
            Some(FieldValue::Float(v)) => *v,
            other => panic!("{k}: {other:?}"),
        }
    }

    #[test]
    fn one_window_by_hand() {
        let mut a = Aggregator::new(settings(100));
        a.observe(&rec(100, "foo", 200, 0.004, b"0.003"), "n1");
        a.observe(&rec(101, "foo", 200, 0.030, b"0.010, 0.015"), "n1");
        a.observe(&rec(109, "foo", 200, 0.300, b"-"), "n1");
        a.observe(&rec(105, "bar", 404, 0.001, b"-"), "n1");
        assert!(a.take_ready().is_empty(), "window 100..110 is open until 115");
        a.observe(&rec(115, "foo", 200, 0.001, b"0.001"), "n1");
        let mut points = a.take_ready();
        assert_eq!(points.len(), 2);
        points.sort_by(|x, y| x.tag_value("app").cmp(&y.tag_value("app")));
        let (bar, foo) = (&points[0], &points[1]);
        assert_eq!(foo.timestamp_ns, Some(100 * SEC));
        assert_eq!(foo.tag_value("status_code"), Some("200"));
        assert_eq!(foo.tag_value("method"), Some("GET"));
        assert_eq!(foo.tag_value("host"), Some("n1"));
        assert_eq!(foo.tag_value("consumer"), Some("local"));
        assert_eq!(int(foo, "count"), 3);
        assert_eq!(int(foo, "bytes_sent"), 300);
        assert!((float(foo, "request_time_sum") - 0.334).abs() < 1e-12);
        assert_eq!(float(foo, "request_time_max"), 0.300);
        // 0.004 ≤ 0.005; 0.030 in (0.025, 0.05]; 0.300 in (0.25, 0.5]
        assert_eq!(int(foo, "request_time_bucket_le_0.005"), 1);
        assert_eq!(int(foo, "request_time_bucket_le_0.05"), 1);
        assert_eq!(int(foo, "request_time_bucket_le_0.5"), 1);
        assert_eq!(int(foo, "request_time_bucket_le_inf"), 0);
        // p50 of (0.004, 0.030, 0.300) is the 2nd value.
        assert!((float(foo, "request_time_p50") - 0.030).abs() <= 0.030 * 0.01);
        assert_eq!(float(foo, "request_time_p99"), 0.300);
        // upstream: 0.003 and 0.025 (a retry sums its attempts); `-` is not a value.
        assert!((float(foo, "upstream_time_sum") - 0.028).abs() < 1e-12);
        assert_eq!(int(foo, "upstream_time_bucket_le_0.005"), 1);
        assert_eq!(int(foo, "upstream_time_bucket_le_0.025"), 1);
        assert_eq!(bar.field_value("upstream_time_sum"), None, "every request had `-`");
        assert_eq!(bar.field_value("upstream_time_bucket_le_inf"), None);
        assert_eq!(bar.timestamp_ns, Some(100 * SEC));
    }

    #[test]
    fn huge_values_saturate_instead_of_losing_the_point() {
        let mut a = Aggregator::new(settings(100));
        let mut big = rec(100, "foo", 200, 1e308, b"1e308, 1e308");
        big.bytes_sent = u64::MAX;
        a.observe(&big, "n1");
        a.observe(&big, "n1");
        a.flush_all();
        let points = a.take_ready();
        let mut out = bytes::BytesMut::new();
        crate::metrics::line_protocol::encode_point(&points[0], &mut out).expect("still encodable");
        assert_eq!(int(&points[0], "count"), 2);
        assert_eq!(int(&points[0], "bytes_sent"), i64::MAX);
        assert_eq!(float(&points[0], "request_time_sum"), f64::MAX);
    }

    #[test]
    fn late_lines_get_new_keys() {
        let mut a = Aggregator::new(settings(100));
        a.observe(&rec(100, "foo", 200, 0.1, b"-"), "n1");
        a.observe(&rec(120, "foo", 200, 0.1, b"-"), "n1");
        let first = a.take_ready();
        assert_eq!(first.len(), 1);
        a.observe(&rec(101, "foo", 200, 0.1, b"-"), "n1");
        assert_eq!(a.stats().late_lines, 1);
        a.flush_all();
        let rest = a.take_ready();
        assert_eq!(rest.len(), 2);
        let late = rest.iter().find(|p| p.timestamp_ns.unwrap() < 110 * SEC).unwrap();
        assert_ne!(late.timestamp_ns, first[0].timestamp_ns, "a flushed key is never written again");
        let total: i64 = first.iter().chain(&rest).map(|p| int(p, "count")).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn eviction_flushes_and_counts() {
        let mut a = Aggregator::new(settings(2));
        for app in ["a", "b", "c", "a"] {
            a.observe(&rec(100, app, 200, 0.1, b"-"), "n1");
        }
        assert_eq!(a.stats().evictions, 2);
        assert!(a.live_series() <= 2);
        a.flush_all();
        let points = a.take_ready();
        let total: i64 = points.iter().map(|p| int(p, "count")).sum();
        assert_eq!(total, 4);
        let mut keys: Vec<_> =
            points.iter().map(|p| (p.tag_value("app").unwrap().to_owned(), p.timestamp_ns)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), points.len(), "no two points share a key");
    }
}

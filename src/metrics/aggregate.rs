//! `router_requests`: access lines aggregated per event-time window and series.
//!
//! A series is (window, app, status, method, host); the windows, their closing, late lines and
//! the bound on live series are [`super::window`]'s. The one input is [`RequestSample`], an
//! owned value that replay builds from a parsed line ([`RequestSample::of_line`]) and the
//! consumer from each compat point it receives ([`RequestSample::of_compat`]), side by side
//! here so that the two cannot drift: the same lines give the same fields either way.
//!
//! The event time of a sample is the timestamp of the line's compat points (the runtime's
//! time of the record, or the access second plus the line's offset): the only time a consumer
//! that sees the points has, so replay windows by it too.

use super::point::{FieldValue, Name, Point};
use super::sketch::Sketch;
use super::window::{SeriesState, WindowSettings, WindowStats, Windows};
use crate::access::{AccessRecord, Method};

pub(crate) const MEASUREMENT: &str = "router_requests";

/// Upper bounds of the histogram buckets, seconds; a last bucket `inf` takes the rest.
pub(crate) const BUCKET_BOUNDS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
#[cfg(test)]
const BUCKET_NAMES: [&str; 12] =
    ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "inf"];

/// The field names of one time distribution, fixed so that a window's point allocates none.
struct TimeFields {
    sum: &'static str,
    max: &'static str,
    quantiles: [(&'static str, f64); 3],
    /// By `BUCKET_NAMES`.
    buckets: [&'static str; 12],
}

macro_rules! time_fields {
    ($p:literal) => {
        TimeFields {
            sum: concat!($p, "_sum"),
            max: concat!($p, "_max"),
            quantiles: [(concat!($p, "_p50"), 0.5), (concat!($p, "_p90"), 0.9), (concat!($p, "_p99"), 0.99)],
            // `BUCKET_NAMES`, checked by a test.
            buckets: time_fields!(@buckets $p;
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "inf"),
        }
    };
    (@buckets $p:literal; $($bound:literal),*) => {
        [$(concat!($p, "_bucket_le_", $bound)),*]
    };
}

const REQUEST_TIME: TimeFields = time_fields!("request_time");
const UPSTREAM_TIME: TimeFields = time_fields!("upstream_time");

/// How the aggregator windows and bounds its state.
#[derive(Debug, Clone)]
pub struct AggregateSettings {
    pub(crate) window_ns: i64,
    /// How far behind the watermark a window stays open for stragglers.
    pub(crate) lateness_ns: i64,
    pub(crate) max_series: std::num::NonZeroUsize,
    /// The `consumer` tag: the instance that aggregated (`local` for replay and run).
    pub(crate) consumer: String,
    /// First flush sequence number. Replays use 0 so that replaying a file again writes the
    /// same keys; a long-running consumer starts from a clock-derived value so that a restart
    /// does not reuse the keys of points it wrote before.
    pub(crate) sequence_base: u64,
}

impl AggregateSettings {
    pub(crate) fn windows(&self) -> WindowSettings {
        WindowSettings {
            window_ns: self.window_ns,
            lateness_ns: self.lateness_ns,
            max_series: self.max_series,
            sequence_base: self.sequence_base,
        }
    }
}

/// Counters of what the aggregator did, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AggregateStats {
    /// Requests counted (access lines, or `deis_router_response_time_ms` points).
    pub(crate) lines: u64,
    pub(crate) points: u64,
    pub(crate) evictions: u64,
    /// Requests (as `lines`) whose window had already been flushed.
    pub(crate) late_lines: u64,
}

/// What one access line, or one of its compat points, adds to its `router_requests` series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestSample {
    /// Event time: the timestamp of the line's compat points.
    pub(crate) time_ns: i64,
    /// Requests counted: 1 for a line, and for its `deis_router_response_time_ms` point.
    pub(crate) requests: u64,
    pub(crate) bytes_sent: u64,
    /// Seconds.
    pub(crate) request_time: Option<f64>,
    /// Seconds in upstreams, every attempt of a retried request summed; `None` for `-`.
    pub(crate) upstream_time: Option<f64>,
}

/// The series a sample belongs to, besides its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRef<'a> {
    pub(crate) app: &'a str,
    /// The router pod's node.
    pub(crate) host: &'a str,
    pub(crate) status: u16,
    pub(crate) method: Method,
}

impl<'a> SeriesRef<'a> {
    /// A parsed line's series, `host` being the router pod's node.
    pub fn of_line(record: &AccessRecord<'a>, host: &'a str) -> Self {
        Self { app: record.app, host, status: record.status, method: record.method }
    }
}

/// One compat point as a consumer reads it (design.md § Schema).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CompatValue {
    /// `deis_router_request_time_ms` `value`.
    RequestTime(f64),
    /// `deis_router_response_time_ms`: `value`, and `upstream_total` when present. logmill's
    /// points (they carry a `method` tag) say the upstream time in `upstream_total`, whose
    /// absence means `-`; the old fluentd's have only `value` (Ruby's `to_f` of the field,
    /// 0.0 for `-`), which is then the best there is.
    ResponseTime { value: f64, upstream_total: Option<f64>, from_logmill: bool },
    /// `deis_router_bytes_sent` `value`.
    BytesSent(f64),
}

impl RequestSample {
    /// A whole access line, stamped `time_ns` (its compat points' timestamp): what replay and
    /// the agent's pipeline aggregate.
    pub fn of_line(record: &AccessRecord<'_>, time_ns: i64) -> Self {
        Self {
            time_ns,
            requests: 1,
            bytes_sent: record.bytes_sent,
            request_time: Some(record.request_time),
            upstream_time: record.upstream_time_total(),
        }
    }

    /// One compat point stamped `time_ns`: what a consumer aggregates. The three points of a
    /// line add up to [`RequestSample::of_line`] of it: the count and the upstream time come
    /// with `deis_router_response_time_ms`, the request time and the bytes with their own
    /// measurements. `None` for a byte count that is not a whole number of bytes.
    pub(crate) fn of_compat(value: CompatValue, time_ns: i64) -> Option<Self> {
        let mut s = Self { time_ns, requests: 0, bytes_sent: 0, request_time: None, upstream_time: None };
        match value {
            CompatValue::RequestTime(v) => s.request_time = Some(v),
            CompatValue::ResponseTime { value, upstream_total, from_logmill } => {
                s.requests = 1;
                s.upstream_time = if from_logmill { upstream_total } else { Some(value) };
            }
            CompatValue::BytesSent(v) => {
                // Written as a float (`211.0`); exact up to 2^53 bytes.
                if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64) {
                    return None;
                }
                s.bytes_sent = v as u64;
            }
        }
        Some(s)
    }
}

#[derive(Debug, Default)]
struct Distribution {
    sum: f64,
    max: f64,
    buckets: [u64; 12],
    sketch: Sketch,
}

fn bucket_of(v: f64) -> usize {
    BUCKET_BOUNDS.iter().position(|&b| v <= b).unwrap_or(BUCKET_BOUNDS.len())
}

impl Distribution {
    fn insert(&mut self, v: f64) {
        // A value line protocol cannot carry would make InfluxDB refuse the whole point.
        if !v.is_finite() {
            return;
        }
        self.sum = (self.sum + v).min(f64::MAX);
        self.max = self.max.max(v);
        self.buckets[bucket_of(v)] += 1;
        self.sketch.insert(v);
    }

    /// Takes back a value inserted before. The sum, buckets and percentiles no longer count
    /// it; the max may still be it (a max cannot be taken back without every value), which
    /// the max of maxes a dashboard reads does not mind: a retracted value comes back with the
    /// redelivered message, in this series or another consumer's.
    fn remove(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.sum -= v;
        let b = &mut self.buckets[bucket_of(v)];
        *b = b.saturating_sub(1);
        self.sketch.remove(v);
    }

    fn count(&self) -> u64 {
        self.sketch.count()
    }

    fn write_fields(&self, names: &TimeFields, fields: &mut Vec<(Name, FieldValue)>) {
        if self.sketch.count() == 0 {
            return;
        }
        fields.push((names.sum.into(), FieldValue::Float(self.sum)));
        fields.push((names.max.into(), FieldValue::Float(self.max)));
        for (name, q) in names.quantiles {
            if let Some(v) = self.sketch.quantile(q) {
                fields.push((name.into(), FieldValue::Float(v)));
            }
        }
        for (name, &count) in names.buckets.iter().zip(&self.buckets) {
            fields.push(((*name).into(), FieldValue::Int(count as i64)));
        }
    }
}

/// One `router_requests` series' counts.
#[derive(Debug, Default)]
pub(crate) struct RequestSeries {
    count: u64,
    bytes_sent: u64,
    request_time: Distribution,
    upstream_time: Distribution,
}

impl RequestSeries {
    fn take_back(&mut self, s: &RequestSample) {
        self.count = self.count.saturating_sub(s.requests);
        self.bytes_sent = self.bytes_sent.saturating_sub(s.bytes_sent);
        if let Some(t) = s.request_time {
            self.request_time.remove(t);
        }
        if let Some(t) = s.upstream_time {
            self.upstream_time.remove(t);
        }
    }
}

impl SeriesState for RequestSeries {
    fn is_empty(&self) -> bool {
        self.count == 0
            && self.bytes_sent == 0
            && self.request_time.count() == 0
            && self.upstream_time.count() == 0
    }

    fn write_fields(&self, fields: &mut Vec<(Name, FieldValue)>) {
        fields.push(("count".into(), FieldValue::Int(self.count.min(i64::MAX as u64) as i64)));
        fields.push(("bytes_sent".into(), FieldValue::Int(self.bytes_sent.min(i64::MAX as u64) as i64)));
        self.request_time.write_fields(&REQUEST_TIME, fields);
        self.upstream_time.write_fields(&UPSTREAM_TIME, fields);
    }
}

pub struct Aggregator {
    windows: Windows<RequestSeries>,
    consumer: String,
    key: Vec<u8>,
    lines: u64,
    late_lines: u64,
}

impl Aggregator {
    pub fn new(settings: AggregateSettings) -> Self {
        Self {
            windows: Windows::new(MEASUREMENT, settings.windows()),
            consumer: settings.consumer,
            key: Vec::with_capacity(64),
            lines: 0,
            late_lines: 0,
        }
    }

    pub(crate) fn stats(&self) -> AggregateStats {
        let WindowStats { points, evictions } = self.windows.stats();
        AggregateStats { lines: self.lines, points, evictions, late_lines: self.late_lines }
    }

    pub fn live_series(&self) -> usize {
        self.windows.live_series()
    }

    /// The start of the window holding `time_ns`.
    pub(crate) fn window_start(&self, time_ns: i64) -> i64 {
        self.windows.window_start(time_ns)
    }

    /// Whether any series of the window starting at `window_start` is live.
    pub(crate) fn is_open(&self, window_start: i64) -> bool {
        self.windows.is_open(window_start)
    }

    /// Builds the key of `series` in `window_start` in the reused buffer, so that a hit
    /// allocates nothing.
    fn build_key(&mut self, window_start: i64, series: &SeriesRef<'_>) {
        self.key.clear();
        self.key.extend_from_slice(&Windows::<RequestSeries>::key_prefix(window_start));
        self.key.extend_from_slice(&series.status.to_be_bytes());
        self.key.push(series.method as u8);
        self.key.extend_from_slice(series.app.as_bytes());
        self.key.push(0);
        self.key.extend_from_slice(series.host.as_bytes());
    }

    /// A new series' tags.
    fn tags(series: &SeriesRef<'_>, consumer: &str) -> Vec<(Name, Name)> {
        vec![
            ("app".into(), series.app.to_owned().into()),
            ("status_code".into(), crate::access::StatusText::new(series.status).as_str().to_owned().into()),
            ("method".into(), series.method.as_str().into()),
            ("host".into(), series.host.to_owned().into()),
            ("consumer".into(), consumer.to_owned().into()),
        ]
    }

    /// Adds a sample to its series.
    pub fn observe(&mut self, series: SeriesRef<'_>, sample: &RequestSample) {
        let times = (sample.request_time.as_slice(), sample.upstream_time.as_slice());
        self.observe_group(series, sample.time_ns, (sample.requests, sample.bytes_sent), times.0, times.1);
    }

    /// Adds what several samples of one series, all at `time_ns`, add: `requests` and
    /// `bytes_sent` summed, and their times. The same as [`Aggregator::observe`] of each (a
    /// consumer's samples of one message, grouped), with the series looked up once. Samples
    /// that add nothing make no series.
    pub(crate) fn observe_group(
        &mut self,
        series: SeriesRef<'_>,
        time_ns: i64,
        (requests, bytes_sent): (u64, u64),
        request_times: &[f64],
        upstream_times: &[f64],
    ) {
        if requests == 0 && bytes_sent == 0 && request_times.is_empty() && upstream_times.is_empty() {
            return;
        }
        self.lines += requests;
        let window_start = self.windows.window_start(time_ns);
        if self.windows.is_late(window_start) {
            self.late_lines += requests;
        }
        self.build_key(window_start, &series);
        let consumer = &self.consumer;
        let tags = || Self::tags(&series, consumer);
        let state = self.windows.series(window_start, &self.key, tags);
        state.count += requests;
        state.bytes_sent = state.bytes_sent.saturating_add(bytes_sent);
        for &t in request_times {
            state.request_time.insert(t);
        }
        for &t in upstream_times {
            state.upstream_time.insert(t);
        }
        self.windows.advance_to(time_ns);
    }

    /// Takes back a sample observed before, while its series is still live (not flushed);
    /// returns whether it was. A series left empty is dropped.
    pub(crate) fn retract(&mut self, series: SeriesRef<'_>, sample: &RequestSample) -> bool {
        let window_start = self.windows.window_start(sample.time_ns);
        self.build_key(window_start, &series);
        let Some(state) = self.windows.peek_mut(&self.key) else { return false };
        state.take_back(sample);
        self.lines = self.lines.saturating_sub(sample.requests);
        self.windows.remove_if_empty(&self.key);
        true
    }

    /// Moves the watermark (event time) forward and flushes every window that is due. A
    /// consumer whose input has gone quiet calls this with the wall clock.
    pub(crate) fn advance_to(&mut self, watermark_ns: i64) {
        self.windows.advance_to(watermark_ns);
    }

    /// Flushes every live series (end of input, shutdown).
    pub fn flush_all(&mut self) {
        self.windows.flush_all();
    }

    /// Takes the points flushed so far.
    pub fn take_ready(&mut self) -> Vec<Point> {
        self.windows.take_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn time_field_names_are_the_prefix_and_the_bucket_bounds() {
        for (names, prefix) in [(&REQUEST_TIME, "request_time"), (&UPSTREAM_TIME, "upstream_time")] {
            assert_eq!((names.sum, names.max), (&*format!("{prefix}_sum"), &*format!("{prefix}_max")));
            let quantiles: Vec<String> = names.quantiles.iter().map(|(n, q)| format!("{n}={q}")).collect();
            assert_eq!(quantiles, [0.5, 0.9, 0.99].map(|q| format!("{prefix}_p{}={q}", (q * 100.0) as u32)));
            let buckets: Vec<String> =
                BUCKET_NAMES.iter().map(|b| format!("{prefix}_bucket_le_{b}")).collect();
            assert_eq!(names.buckets.as_slice(), buckets);
            // One name per bound, and `inf` last.
            assert_eq!(BUCKET_NAMES.len(), BUCKET_BOUNDS.len() + 1);
            for (name, bound) in BUCKET_NAMES.iter().zip(BUCKET_BOUNDS) {
                assert_eq!(name.parse::<f64>().unwrap(), bound);
            }
        }
    }

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

    fn see(a: &mut Aggregator, r: &AccessRecord<'_>) {
        a.observe(SeriesRef::of_line(r, "n1"), &RequestSample::of_line(r, r.time_ns));
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
        see(&mut a, &rec(100, "foo", 200, 0.004, b"0.003"));
        see(&mut a, &rec(101, "foo", 200, 0.030, b"0.010, 0.015"));
        see(&mut a, &rec(109, "foo", 200, 0.300, b"-"));
        see(&mut a, &rec(105, "bar", 404, 0.001, b"-"));
        assert!(a.take_ready().is_empty(), "window 100..110 is open until 115");
        see(&mut a, &rec(115, "foo", 200, 0.001, b"0.001"));
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
        see(&mut a, &big);
        see(&mut a, &big);
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
        see(&mut a, &rec(100, "foo", 200, 0.1, b"-"));
        see(&mut a, &rec(120, "foo", 200, 0.1, b"-"));
        let first = a.take_ready();
        assert_eq!(first.len(), 1);
        see(&mut a, &rec(101, "foo", 200, 0.1, b"-"));
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
            see(&mut a, &rec(100, app, 200, 0.1, b"-"));
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

    /// The three compat points of a line, as the consumer reads them back.
    fn compat_samples(r: &AccessRecord<'_>, logmill: bool) -> [RequestSample; 3] {
        let t = r.time_ns;
        let response = CompatValue::ResponseTime {
            value: r.upstream_time_compat(),
            upstream_total: if logmill { r.upstream_time_total() } else { None },
            from_logmill: logmill,
        };
        [
            RequestSample::of_compat(CompatValue::RequestTime(r.request_time), t).unwrap(),
            RequestSample::of_compat(response, t).unwrap(),
            RequestSample::of_compat(CompatValue::BytesSent(r.bytes_sent as f64), t).unwrap(),
        ]
    }

    fn lines() -> Vec<AccessRecord<'static>> {
        vec![
            rec(100, "foo", 200, 0.004, b"0.003"),
            rec(101, "foo", 200, 0.030, b"0.010, 0.015"),
            rec(109, "foo", 200, 0.300, b"-"),
            rec(105, "bar", 404, 0.001, b"-"),
            rec(112, "foo", 200, 7.5, b"0.5 : 7"),
        ]
    }

    #[test]
    fn a_lines_three_compat_points_add_up_to_the_line() {
        let mut whole = Aggregator::new(settings(100));
        let mut parts = Aggregator::new(settings(100));
        for r in lines() {
            see(&mut whole, &r);
            let [a, b, c] = compat_samples(&r, true);
            // In another order than written: a consumer may see them so.
            for s in [c, a, b] {
                parts.observe(SeriesRef::of_line(&r, "n1"), &s);
            }
        }
        whole.flush_all();
        parts.flush_all();
        assert_eq!(whole.take_ready(), parts.take_ready());
        assert_eq!(whole.stats(), parts.stats());
    }

    #[test]
    fn a_group_adds_what_its_samples_add_one_by_one() {
        let (mut one_by_one, mut grouped) = (Aggregator::new(settings(100)), Aggregator::new(settings(100)));
        let series = SeriesRef { app: "foo", host: "n1", status: 200, method: Method::Get };
        let at = 103 * SEC;
        let (request_times, upstream_times) = ([0.004, 0.030, 0.300], [0.003, 0.025]);
        let counts = RequestSample {
            time_ns: at,
            requests: 3,
            bytes_sent: 700,
            request_time: None,
            upstream_time: None,
        };
        one_by_one.observe(series, &counts);
        for &t in &request_times {
            let s = RequestSample { request_time: Some(t), requests: 0, bytes_sent: 0, ..counts };
            one_by_one.observe(series, &s);
        }
        for &t in &upstream_times {
            let s = RequestSample { upstream_time: Some(t), requests: 0, bytes_sent: 0, ..counts };
            one_by_one.observe(series, &s);
        }
        grouped.observe_group(series, at, (3, 700), &request_times, &upstream_times);
        // Nothing at all: no series.
        grouped.observe_group(SeriesRef { app: "bar", ..series }, at, (0, 0), &[], &[]);
        assert_eq!(grouped.live_series(), 1);
        // A later sample closes the window in both.
        let late = RequestSample { time_ns: 125 * SEC, ..counts };
        one_by_one.observe(series, &late);
        grouped.observe_group(series, 125 * SEC, (3, 700), &[], &[]);
        assert_eq!(one_by_one.take_ready(), grouped.take_ready());
        one_by_one.flush_all();
        grouped.flush_all();
        assert_eq!(one_by_one.take_ready(), grouped.take_ready());
        assert_eq!(one_by_one.stats(), grouped.stats());
    }

    #[test]
    fn old_fluentd_points_read_the_upstream_time_from_value() {
        // `-` was 0.0 and a retry its first attempt's time (Ruby's to_f): that is all there is.
        let r = rec(100, "foo", 200, 0.030, b"0.010, 0.015");
        let [_, response, _] = compat_samples(&r, false);
        assert_eq!(response.upstream_time, Some(0.010));
        let r = rec(100, "foo", 200, 0.030, b"-");
        let [_, response, _] = compat_samples(&r, false);
        assert_eq!(response.upstream_time, Some(0.0));
        // logmill's: `upstream_total`, absent for `-`.
        let [_, response, _] = compat_samples(&r, true);
        assert_eq!(response.upstream_time, None);
        for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(RequestSample::of_compat(CompatValue::BytesSent(bad), 0), None, "{bad}");
        }
    }

    #[test]
    fn retraction_restores_what_was_before_but_the_max() {
        let mut a = Aggregator::new(settings(100));
        let mut b = Aggregator::new(settings(100));
        let all = lines();
        let (kept, retracted) = all.split_at(3);
        for r in kept {
            see(&mut a, r);
            see(&mut b, r);
        }
        // bar (one line) and a second foo line: taken back again.
        for r in retracted.iter().filter(|r| r.time_ns < 110 * SEC) {
            see(&mut b, r);
            assert!(b.retract(SeriesRef::of_line(r, "n1"), &RequestSample::of_line(r, r.time_ns)));
        }
        assert_eq!(b.live_series(), 1, "bar's series is empty and gone");
        a.flush_all();
        b.flush_all();
        let (a, b) = (a.take_ready(), b.take_ready());
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        for field in ["count", "bytes_sent", "request_time_bucket_le_0.005", "upstream_time_bucket_le_0.025"]
        {
            assert_eq!(int(&a[0], field), int(&b[0], field), "{field}");
        }
        assert!((float(&a[0], "request_time_sum") - float(&b[0], "request_time_sum")).abs() < 1e-12);
        assert!(!b[0].fields.iter().any(|(k, v)| k.ends_with("_p50") && *v == FieldValue::Float(0.0)));
        // Not live any more: nothing to take back.
        let r = &all[0];
        let mut c = Aggregator::new(settings(100));
        see(&mut c, r);
        c.flush_all();
        assert!(!c.retract(SeriesRef::of_line(r, "n1"), &RequestSample::of_line(r, r.time_ns)));
    }
}

//! What a consumer derives from one NSQ message. Pure: a message's bytes in; line protocol to
//! write, what it adds to the aggregates, what is dead-lettered and counts by reason out.
//!
//! - `metrics` messages ([`Deriver::derive`] with [`TopicKind::Metrics`]): every line is
//!   validated by the line-protocol parser. Valid lines are passed through as they are; one
//!   without a timestamp gets its message's, unique per series ([`stamp`]). `deis_router_*`
//!   points also become [`RequestSample`]s for `router_requests`, the event time being the
//!   point's timestamp: the count from `deis_router_response_time_ms`, the times and bytes
//!   from their own measurements, `method=unknown` for the old fluentd's points (no `method`
//!   tag). Invalid lines are counted by reason and kept for the dead letters.
//! - `logs` messages ([`TopicKind::Logs`]): the compatible JSON ([`crate::wire::log_record`]); an app's record
//!   counts in `app_log_lines` (app, stream, level when [`level`] finds one, host), a router's
//!   access line gives the compat points and samples the agent would have. JSON that does not
//!   decode is counted and dead-lettered whole.
//!
//! The aggregates themselves live with the consumer's task (`consume`); a message's part of
//! them is a [`contribution::Contribution`], applied there and kept until the message is
//! acknowledged.

pub(crate) mod contribution;
pub mod level;
pub(crate) mod stamp;

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use crate::access::router::RouterParser;
use crate::access::{Classified, Method};
use crate::metrics::aggregate::{Aggregator, CompatValue, RequestSample, SeriesRef};
use crate::metrics::compat::{CompatEncoder, BYTES_SENT, REQUEST_TIME, RESPONSE_TIME};
use crate::metrics::line_protocol::{parse_line_into, write_timestamp, FieldView, LineView};
use contribution::{Contribution, LogKey};
use level::LevelDetector;
use stamp::{series_hash, Stamps};

/// The topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Line protocol (`metrics`).
    Metrics,
    /// The compatible log JSON (`logs`).
    Logs,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Metrics => "metrics",
            TopicKind::Logs => "logs",
        }
    }
}

/// How messages are derived.
#[derive(Debug, Clone)]
pub struct DeriveSettings {
    /// The aggregates' window, to group a message's samples by.
    pub(crate) window_ns: i64,
    /// Whether `deis_router_*` points are written to InfluxDB too (the old dashboards read
    /// them), or only aggregated.
    pub(crate) write_router_points: bool,
    pub(crate) levels: LevelDetector,
}

/// The `stream` tag of `app_log_lines`: `stdout`, `stderr`, or `other`.
pub(crate) fn stream_tag(stream: &str) -> &'static str {
    match stream {
        "stdout" => "stdout",
        "stderr" => "stderr",
        _ => "other",
    }
}

/// Counts by reason, added to telemetry once per message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Lines (metrics) or records (logs) read.
    pub(crate) lines: u64,
    /// Invalid lines by parse error, or `bad_json`: dead-lettered.
    pub(crate) invalid: Vec<(&'static str, u64)>,
    /// `deis_router_*` points passed on but not aggregated, by reason.
    pub(crate) unaggregated: Vec<(&'static str, u64)>,
    /// Log records by what became of them (`app`, `no_app`, `router_access`, `router_other`,
    /// `router_<reject reason>`, `unencodable`).
    pub(crate) records: Vec<(&'static str, u64)>,
}

fn bump(list: &mut Vec<(&'static str, u64)>, reason: &'static str) {
    match list.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, n)) => *n += 1,
        None => list.push((reason, 1)),
    }
}

/// Invalid input of one message, with the reason of each piece.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeadLetters {
    pub(crate) bytes: BytesMut,
    pub(crate) entries: Vec<(&'static str, Range<usize>)>,
}

impl DeadLetters {
    fn push(&mut self, reason: &'static str, piece: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(piece);
        self.entries.push((reason, start..self.bytes.len()));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What one message gave. Reused from message to message ([`Deriver::derive`] clears it).
#[derive(Debug, Default)]
pub struct Derived {
    /// Line protocol to write, whole lines.
    pub(crate) lines: BytesMut,
    pub(crate) points: usize,
    pub(crate) contribution: Contribution,
    pub(crate) dead: DeadLetters,
    pub(crate) tally: Tally,
}

impl Derived {
    /// Adds the message's `router_requests` samples to `requests` as the consumer's core does
    /// (which also books each group in its ledger of held messages): for benches.
    pub fn observe_requests(&self, requests: &mut Aggregator) {
        for g in &self.contribution.requests {
            g.observe(requests);
        }
    }
}

/// Why a `deis_router_*` point was passed on without being aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unaggregated {
    MissingTag,
    BadStatus,
    BadValue,
}

impl Unaggregated {
    fn as_str(self) -> &'static str {
        match self {
            Unaggregated::MissingTag => "missing_tag",
            Unaggregated::BadStatus => "bad_status",
            Unaggregated::BadValue => "bad_value",
        }
    }
}

fn as_f64(v: &FieldView<'_>) -> Option<f64> {
    match *v {
        FieldView::Float(f) => Some(f),
        FieldView::Int(i) => Some(i as f64),
        FieldView::UInt(u) => Some(u as f64),
        _ => None,
    }
}

/// A compat point's series and sample.
fn compat_sample<'v>(
    view: &'v LineView<'_>,
    ts: i64,
) -> Result<(SeriesRef<'v>, RequestSample), Unaggregated> {
    // One pass over the tags for the four wanted (the first of each, as `LineView::tag`).
    let (mut app, mut status, mut host, mut method) = (None, None, None, None);
    for (key, value) in &view.tags {
        let slot = match key.as_ref() {
            "app" => &mut app,
            "status_code" => &mut status,
            "host" => &mut host,
            "method" => &mut method,
            _ => continue,
        };
        slot.get_or_insert(value.as_ref());
    }
    let (Some(app), Some(status), Some(host)) = (app, status, host) else {
        return Err(Unaggregated::MissingTag);
    };
    let status = match status.as_bytes() {
        &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(Unaggregated::BadStatus),
    };
    let method = method.map(Method::of_tag);
    let value = view.field("value").and_then(as_f64).ok_or(Unaggregated::BadValue)?;
    let compat = match view.measurement.as_ref() {
        REQUEST_TIME => CompatValue::RequestTime(value),
        RESPONSE_TIME => CompatValue::ResponseTime {
            value,
            upstream_total: view.field("upstream_total").and_then(as_f64),
            from_logmill: method.is_some(),
        },
        _ => CompatValue::BytesSent(value),
    };
    let sample = RequestSample::of_compat(compat, ts).ok_or(Unaggregated::BadValue)?;
    let series = SeriesRef { app, host, status, method: method.unwrap_or(Method::Unknown) };
    Ok((series, sample))
}

/// Derives messages one at a time; see the module documentation.
pub struct Deriver {
    settings: DeriveSettings,
    /// Stamps of `metrics` points without a timestamp, per series.
    stamps: Stamps,
    /// Stamps of router access lines found in `logs`, per router container (the agent's
    /// per-file guard, as well as a consumer can tell files apart).
    record_stamps: Stamps,
    router: RouterParser,
    compat: CompatEncoder,
}

impl Deriver {
    pub fn new(settings: DeriveSettings) -> Self {
        Self {
            settings,
            stamps: Stamps::default(),
            record_stamps: Stamps::default(),
            router: RouterParser::default(),
            compat: CompatEncoder::default(),
        }
    }

    fn window_start(&self, time_ns: i64) -> i64 {
        time_ns - time_ns.rem_euclid(self.settings.window_ns)
    }

    /// Derives one message into `out` (cleared first). `nsq_timestamp_ns` is when it was
    /// published; `first_delivery` whether this is its first attempt.
    pub fn derive(
        &mut self,
        topic: TopicKind,
        body: &[u8],
        nsq_timestamp_ns: i64,
        first_delivery: bool,
        out: &mut Derived,
    ) {
        out.lines.clear();
        out.points = 0;
        out.contribution = Contribution::default();
        out.dead.bytes.clear();
        out.dead.entries.clear();
        out.tally = Tally::default();
        match topic {
            TopicKind::Metrics => self.derive_metrics(body, nsq_timestamp_ns, first_delivery, out),
            TopicKind::Logs => self.derive_log(body, nsq_timestamp_ns, first_delivery, out),
        }
    }

    fn derive_metrics(&mut self, body: &[u8], nsq_ts: i64, first_delivery: bool, out: &mut Derived) {
        self.stamps.start_message(first_delivery);
        let mut view = LineView::default();
        // memchr finds a line's end many bytes at a time; `split` tested every byte.
        let mut rest = body;
        while !rest.is_empty() {
            let (raw, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            // Blank lines and comments, which InfluxDB skips too.
            match line.iter().find(|&&b| !matches!(b, b' ' | b'\t' | b'\0')) {
                None | Some(b'#') => continue,
                Some(_) => {}
            }
            out.tally.lines += 1;
            if let Err(e) = parse_line_into(line, &mut view) {
                bump(&mut out.tally.invalid, e.reason());
                out.dead.push(e.reason(), line);
                continue;
            }
            let ts = match view.timestamp_ns {
                Some(ts) => ts,
                None => self.stamps.stamp(series_hash(&[&line[..view.key_end]]), nsq_ts),
            };
            let router = matches!(view.measurement.as_ref(), REQUEST_TIME | RESPONSE_TIME | BYTES_SENT);
            if router {
                match compat_sample(&view, ts) {
                    Ok((series, sample)) => {
                        let window = self.window_start(sample.time_ns);
                        out.contribution.add_request(series, window, &sample);
                    }
                    Err(why) => bump(&mut out.tally.unaggregated, why.as_str()),
                }
            }
            if !router || self.settings.write_router_points {
                if view.timestamp_ns.is_some() {
                    out.lines.extend_from_slice(line);
                } else {
                    let end = line.iter().rposition(|&b| !matches!(b, b' ' | b'\t')).map_or(0, |i| i + 1);
                    out.lines.extend_from_slice(&line[..end]);
                    out.lines.put_u8(b' ');
                    write_timestamp(&mut out.lines, ts);
                }
                out.lines.put_u8(b'\n');
                out.points += 1;
            }
        }
    }

    fn derive_log(&mut self, body: &[u8], nsq_ts: i64, first_delivery: bool, out: &mut Derived) {
        out.tally.lines += 1;
        let record = match crate::wire::log_record::decode_log_record(body) {
            Ok(r) => r,
            Err(_) => {
                bump(&mut out.tally.invalid, "bad_json");
                out.dead.push("bad_json", body);
                return;
            }
        };
        let time_ns = record.time_ns().unwrap_or(nsq_ts);
        // A node name is a tag value, and tag values cannot be empty.
        let host = if record.host.is_empty() { "unknown" } else { record.host.as_ref() };
        if record.container_name.contains("deis-router") {
            let line = match self.router.classify(record.text().as_bytes()) {
                Classified::Access(line) => line,
                Classified::Rejected(_) => {
                    bump(&mut out.tally.records, "router_rejected");
                    return;
                }
                Classified::Other => {
                    bump(&mut out.tally.records, "router_other");
                    return;
                }
            };
            // The runtime's time of the record, made unique per router container as the
            // agent's per-file guard makes it.
            self.record_stamps.start_message(first_delivery);
            let key = series_hash(&[
                host.as_bytes(),
                record.namespace_name.as_bytes(),
                record.container_name.as_bytes(),
            ]);
            let ts = self.record_stamps.stamp(key, time_ns);
            if self.settings.write_router_points {
                if self.compat.write(&line, host, ts, &mut out.lines).is_err() {
                    bump(&mut out.tally.records, "unencodable");
                    return;
                }
                out.points += 3;
            }
            let window = self.window_start(ts);
            out.contribution.add_request(
                SeriesRef::of_line(&line, host),
                window,
                &RequestSample::of_line(&line, ts),
            );
            bump(&mut out.tally.records, "router_access");
            return;
        }
        let Some(app) = record.app.as_deref().filter(|a| !a.is_empty()) else {
            bump(&mut out.tally.records, "no_app");
            return;
        };
        let key = LogKey {
            app,
            stream: stream_tag(&record.stream),
            level: self.settings.levels.detect(record.text()),
            host,
        };
        out.contribution.add_log(key, self.window_start(time_ns), time_ns);
        bump(&mut out.tally.records, "app");
    }
}

#[cfg(test)]
mod tests;

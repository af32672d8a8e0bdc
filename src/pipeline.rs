//! The per-line path every role shares: classify a router line, write its compat points,
//! feed the aggregate. Pure: lines in, line protocol out, counts on the side.

use bytes::BytesMut;

use std::sync::Arc;

use crate::access::router::RouterParser;
use crate::access::rules::{Definition, Parsed, RuleValue, DEIS_ROUTER};
use crate::access::{AccessRecord, Classified, KeyGuard, LineOrigin, Reject};
use crate::metrics::aggregate::{AggregateSettings, AggregateStats, Aggregator, RequestSample, SeriesRef};
use crate::metrics::compat::CompatEncoder;
use crate::metrics::line_protocol::{encode_point, LineBuilder};

/// What the processor has seen; a role adds these to telemetry once per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    pub lines: u64,
    pub access: u64,
    pub other: u64,
    pub(crate) rejected: [u64; Reject::ALL.len()],
    /// Points written as line protocol, compat and aggregated.
    pub compat_points: u64,
    pub aggregate_points: u64,
    /// Aggregated points that could not be encoded (a value line protocol cannot carry).
    pub(crate) encode_errors: u64,
}

impl LineCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub(crate) fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason as usize]
    }
}

/// How access lines are parsed.
#[derive(Debug, Clone)]
pub enum LineParser {
    /// The hand-written parser of the Deis router format.
    FastPath,
    /// A declarative definition of `parsers/`.
    Rules(Arc<Definition>),
}

impl LineParser {
    /// The fast path for the unmodified built-in `deis-router`, the definition otherwise.
    pub(crate) fn for_definition(definition: &Arc<Definition>) -> Self {
        if definition.builtin && definition.name == DEIS_ROUTER {
            Self::FastPath
        } else {
            Self::Rules(definition.clone())
        }
    }
}

/// What became of one line.
enum Outcome<'l> {
    /// Not a line of this format (nginx's error lines among access lines).
    Other,
    /// Parsed; the record feeds the aggregate when the format has one, with the timestamp of
    /// its compat points as its event time (what a consumer of those points sees).
    Parsed(Option<(AccessRecord<'l>, i64)>),
    Rejected(Reject),
}

/// Turns one router's lines into points.
pub struct LineProcessor {
    host: String,
    parser: LineParser,
    router: RouterParser,
    /// `None` for the agent, which writes the points of each line and leaves aggregation to
    /// the consumers.
    aggregator: Option<Aggregator>,
    compat: CompatEncoder,
    counts: LineCounts,
}

impl LineProcessor {
    pub fn new(host: impl Into<String>, parser: LineParser, aggregate: AggregateSettings) -> Self {
        Self {
            host: host.into(),
            parser,
            router: RouterParser::default(),
            aggregator: Some(Aggregator::new(aggregate)),
            compat: CompatEncoder::default(),
            counts: LineCounts::default(),
        }
    }

    /// A processor that writes each line's points and aggregates nothing (the agent's).
    pub fn points_only(host: impl Into<String>, parser: LineParser) -> Self {
        Self {
            host: host.into(),
            parser,
            router: RouterParser::default(),
            aggregator: None,
            compat: CompatEncoder::default(),
            counts: LineCounts::default(),
        }
    }

    pub(crate) fn counts(&self) -> LineCounts {
        self.counts
    }

    pub(crate) fn aggregate_stats(&self) -> AggregateStats {
        self.aggregator.as_ref().map(Aggregator::stats).unwrap_or_default()
    }

    pub fn live_series(&self) -> usize {
        self.aggregator.as_ref().map_or(0, Aggregator::live_series)
    }

    /// Processes one line (without its line break); `truncated` when the reader cut it at
    /// `max_line_bytes`. The line's points are stamped through `keys`, its file's guard.
    /// Compat points go to `out` at once; aggregated points whenever a window closes.
    ///
    /// Both parsers count a failure the same way: a line whose points cannot be encoded is
    /// rejected as `unencodable` and neither written nor aggregated.
    pub fn process(
        &mut self,
        line: &[u8],
        truncated: bool,
        origin: LineOrigin,
        keys: &mut KeyGuard,
        out: &mut BytesMut,
    ) {
        let Self { host, parser, router, aggregator, compat, counts } = self;
        counts.lines += 1;
        let outcome = match parser {
            LineParser::FastPath => match router.classify(line) {
                Classified::Other => Outcome::Other,
                // A cut access line is rejected for its length, whatever the cut left behind
                // (it may even parse, with a wrong last number).
                _ if truncated => Outcome::Rejected(Reject::TooLong),
                Classified::Rejected(reason) => Outcome::Rejected(reason),
                Classified::Access(record) => {
                    let ts = keys.stamp(origin.point_timestamp(record.time_ns));
                    match compat.write(&record, host, ts, out) {
                        Ok(()) => {
                            counts.compat_points += 3;
                            Outcome::Parsed(Some((record, ts)))
                        }
                        Err(_) => Outcome::Rejected(Reject::Unencodable),
                    }
                }
            },
            LineParser::Rules(definition) => match definition.parse(line) {
                Ok(None) => Outcome::Other,
                _ if truncated => Outcome::Rejected(Reject::TooLong),
                Err(reason) => Outcome::Rejected(reason),
                Ok(Some(parsed)) => {
                    let written = definition.access_record(&parsed).transpose().and_then(|record| {
                        let ts = keys.stamp(origin.point_timestamp(parsed.time_ns));
                        Ok((record.map(|r| (r, ts)), write_rule_points(definition, &parsed, host, ts, out)?))
                    });
                    match written {
                        Ok((record, n)) => {
                            counts.compat_points += n as u64;
                            Outcome::Parsed(record)
                        }
                        Err(reason) => Outcome::Rejected(reason),
                    }
                }
            },
        };
        match outcome {
            Outcome::Other => counts.other += 1,
            Outcome::Rejected(reason) => counts.rejected[reason as usize] += 1,
            Outcome::Parsed(record) => {
                counts.access += 1;
                if let (Some((record, ts)), Some(aggregator)) = (record, aggregator) {
                    aggregator
                        .observe(SeriesRef::of_line(&record, host), &RequestSample::of_line(&record, ts));
                }
            }
        }
        self.write_ready(out);
    }

    /// Flushes every open window (end of input, shutdown).
    pub fn finish(&mut self, out: &mut BytesMut) {
        if let Some(aggregator) = &mut self.aggregator {
            aggregator.flush_all();
        }
        self.write_ready(out);
    }

    fn write_ready(&mut self, out: &mut BytesMut) {
        let Some(aggregator) = &mut self.aggregator else { return };
        for point in aggregator.take_ready() {
            match encode_point(&point, out) {
                Ok(()) => self.counts.aggregate_points += 1,
                Err(_) => self.counts.encode_errors += 1,
            }
        }
    }
}

/// Writes a definition's points for one line, stamped `timestamp_ns`; returns how many. On a
/// rejection nothing is left in `out`.
fn write_rule_points(
    definition: &Definition,
    parsed: &Parsed<'_>,
    host: &str,
    timestamp_ns: i64,
    out: &mut BytesMut,
) -> Result<usize, Reject> {
    let start = out.len();
    let mut written = 0;
    for point in definition.points(parsed, host) {
        let encoded = point.and_then(|p| {
            let mut line = LineBuilder::new(out, p.measurement);
            for (key, value) in &p.tags {
                line.tag(key, value);
            }
            for (key, value) in &p.fields {
                match *value {
                    RuleValue::Float(v) => line.field_f64(key, v),
                    RuleValue::Int(v) => line.field_i64(key, v),
                    RuleValue::Bool(v) => line.field_bool(key, v),
                    RuleValue::Str(v) => line.field_str(key, v),
                };
            }
            line.finish(Some(timestamp_ns)).map_err(|_| Reject::Unencodable)
        });
        if let Err(reject) = encoded {
            out.truncate(start);
            return Err(reject);
        }
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::rules::Registry;

    fn settings() -> AggregateSettings {
        AggregateSettings {
            window_ns: 10_000_000_000,
            lateness_ns: 0,
            max_series: std::num::NonZeroUsize::MIN,
            consumer: "local".into(),
            sequence_base: 0,
        }
    }

    fn definition(name: &str) -> LineParser {
        let registry = Registry::builtin().expect("built-ins load");
        LineParser::Rules(registry.get(name).expect("built-in").clone())
    }

    fn rules(name: &str) -> LineProcessor {
        LineProcessor::new("n1", definition(name), settings())
    }

    fn raw(offset: u64) -> LineOrigin {
        LineOrigin { runtime_time_ns: None, file_offset: offset }
    }

    #[test]
    fn definitions_points_as_line_protocol() {
        // The example line of Apache's documentation (mod_log_config, Common Log Format).
        let line =
            br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
        let mut p = rules("apache-common");
        let mut out = BytesMut::new();
        p.process(line, false, raw(7), &mut KeyGuard::default(), &mut out);
        // date -u -d '2000-10-10 20:55:36' +%s → 971211336; the offset fills the nanoseconds.
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "apache_access,status=200,method=GET,host=n1 requests=1i,bytes=2326i 971211336000000007\n"
        );
        let line =
            br#"10.1.2.3 - - [31/May/2016:16:56:12 +0000] "POST /api HTTP/1.1" 201 17 "-" "curl/8.5.0""#;
        let mut p = rules("nginx-combined");
        out.clear();
        p.process(line, false, raw(1), &mut KeyGuard::default(), &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "nginx_access,status=201,method=POST,host=n1 requests=1i,body_bytes_sent=17i 1464713772000000001\n"
        );
    }

    #[test]
    fn equal_times_get_distinct_keys_in_both_parsers() {
        // Two lines of one second at offsets 10⁹ apart: the same candidate key.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "c" - "f" - 10.2.3.4:5000 - f - 0.002 - 0.046"#;
        for parser in [LineParser::FastPath, definition("deis-router")] {
            let mut p = LineProcessor::new("n1", parser, settings());
            let (mut keys, mut out) = (KeyGuard::default(), BytesMut::new());
            p.process(line, false, raw(5), &mut keys, &mut out);
            p.process(line, false, raw(1_000_000_005), &mut keys, &mut out);
            let text = std::str::from_utf8(&out).unwrap();
            let stamps: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("deis_router_response_time_ms"))
                .map(|l| l.rsplit(' ').next().unwrap())
                .collect();
            assert_eq!(stamps, ["1464713772000000005", "1464713772000000006"], "{text}");
        }
    }

    #[test]
    fn an_unencodable_line_is_rejected_the_same_way_by_both_parsers() {
        // A tag value ending in a backslash cannot be written unambiguously (InfluxDB would
        // read `\,` or `\ ` as an escape): every line's points fail to encode.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "c" - "f" - 10.2.3.4:5000 - f - 0.002 - 0.046"#;
        for parser in [LineParser::FastPath, definition("deis-router")] {
            let mut p = LineProcessor::new("node\\", parser, settings());
            let mut out = BytesMut::new();
            p.process(line, false, raw(0), &mut KeyGuard::default(), &mut out);
            p.finish(&mut out);
            let c = p.counts();
            assert_eq!((c.access, c.rejected(Reject::Unencodable), c.compat_points), (0, 1, 0));
            assert_eq!(p.aggregate_stats().lines, 0, "not aggregated either");
        }
    }
}

//! The per-line path every role shares: classify a router line, write its compat points,
//! feed the aggregate. Pure: lines in, line protocol out, counts on the side.

use bytes::BytesMut;

use crate::access::router::RouterParser;
use crate::access::rules::{Definition, DEIS_ROUTER};
use crate::access::{AccessRecord, Classified, LineOrigin, Reject};
use crate::metrics::aggregate::{AggregateSettings, AggregateStats, Aggregator};
use crate::metrics::compat::CompatEncoder;
use crate::metrics::line_protocol::encode_point;
use std::sync::Arc;

/// What the processor has seen; a role adds these to telemetry once per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    pub lines: u64,
    pub access: u64,
    pub other: u64,
    pub rejected: [u64; Reject::ALL.len()],
    /// Points written as line protocol, compat and aggregated.
    pub compat_points: u64,
    pub aggregate_points: u64,
    /// Points that could not be encoded (a value line protocol cannot carry).
    pub encode_errors: u64,
}

impl LineCounts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn rejected(&self, reason: Reject) -> u64 {
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
    pub fn for_definition(definition: &Arc<Definition>) -> Self {
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
    /// Parsed; the record feeds the aggregate when the format has one.
    Parsed(Option<AccessRecord<'l>>),
    Rejected(Reject),
}

/// Turns one router's lines into points.
pub struct LineProcessor {
    host: String,
    parser: LineParser,
    router: RouterParser,
    aggregator: Aggregator,
    compat: CompatEncoder,
    counts: LineCounts,
}

impl LineProcessor {
    pub fn new(host: impl Into<String>, parser: LineParser, aggregate: AggregateSettings) -> Self {
        Self {
            host: host.into(),
            parser,
            router: RouterParser::default(),
            aggregator: Aggregator::new(aggregate),
            compat: CompatEncoder::default(),
            counts: LineCounts::default(),
        }
    }

    pub fn counts(&self) -> LineCounts {
        self.counts
    }

    pub fn aggregate_stats(&self) -> AggregateStats {
        self.aggregator.stats()
    }

    pub fn live_series(&self) -> usize {
        self.aggregator.live_series()
    }

    /// Processes one line (without its line break); `truncated` when the reader cut it at
    /// `max_line_bytes`. Compat points go to `out` at once; aggregated points whenever a
    /// window closes.
    pub fn process(&mut self, line: &[u8], truncated: bool, origin: LineOrigin, out: &mut BytesMut) {
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
                    match compat.write(&record, host, origin, out) {
                        Ok(()) => counts.compat_points += 3,
                        Err(_) => counts.encode_errors += 3,
                    }
                    Outcome::Parsed(Some(record))
                }
            },
            LineParser::Rules(definition) => match definition.parse(line) {
                Ok(None) => Outcome::Other,
                _ if truncated => Outcome::Rejected(Reject::TooLong),
                Err(reason) => Outcome::Rejected(reason),
                Ok(Some(parsed)) => {
                    let written = definition.access_record(&parsed).transpose().and_then(|record| {
                        Ok((record, definition.write_points(&parsed, host, origin, out)?))
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
                if let Some(record) = record {
                    aggregator.observe(&record, host);
                }
            }
        }
        self.write_ready(out);
    }

    /// Flushes every open window (end of input, shutdown).
    pub fn finish(&mut self, out: &mut BytesMut) {
        self.aggregator.flush_all();
        self.write_ready(out);
    }

    fn write_ready(&mut self, out: &mut BytesMut) {
        for point in self.aggregator.take_ready() {
            match encode_point(&point, out) {
                Ok(()) => self.counts.aggregate_points += 1,
                Err(_) => self.counts.encode_errors += 1,
            }
        }
    }
}

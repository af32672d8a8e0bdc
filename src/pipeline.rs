//! The per-line path every role shares: classify a router line, write its compat points,
//! feed the aggregate. Pure: lines in, line protocol out, counts on the side.

use bytes::BytesMut;

use crate::access::rules::{Definition, DEIS_ROUTER};
use crate::access::{router, Classified, LineOrigin, Reject};
use crate::metrics::aggregate::{AggregateSettings, AggregateStats, Aggregator};
use crate::metrics::compat::write_compat_points;
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

/// Turns one router's lines into points.
pub struct LineProcessor {
    host: String,
    parser: LineParser,
    aggregator: Aggregator,
    counts: LineCounts,
}

impl LineProcessor {
    pub fn new(host: impl Into<String>, parser: LineParser, aggregate: AggregateSettings) -> Self {
        Self {
            host: host.into(),
            parser,
            aggregator: Aggregator::new(aggregate),
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
        self.counts.lines += 1;
        match &self.parser {
            LineParser::FastPath => match router::classify(line) {
                Classified::Other => self.counts.other += 1,
                Classified::Rejected(reason) => self.reject(reason),
                // A cut line can still parse when the cut fell in its last number; it is
                // rejected all the same rather than counted with a wrong value.
                Classified::Access(_) if truncated => self.reject(Reject::TooLong),
                Classified::Access(record) => {
                    self.counts.access += 1;
                    match write_compat_points(&record, &self.host, origin, out) {
                        Ok(()) => self.counts.compat_points += 3,
                        Err(_) => self.counts.encode_errors += 3,
                    }
                    self.aggregator.observe(&record, &self.host);
                }
            },
            LineParser::Rules(definition) => {
                let definition = definition.clone();
                match definition.parse(line) {
                    Ok(None) => self.counts.other += 1,
                    Err(reason) => self.reject(reason),
                    Ok(Some(_)) if truncated => self.reject(Reject::TooLong),
                    Ok(Some(parsed)) => {
                        let record = match definition.access_record(&parsed) {
                            None => None,
                            Some(Ok(record)) => Some(record),
                            Some(Err(reason)) => return self.reject(reason),
                        };
                        match definition.write_points(&parsed, &self.host, origin, out) {
                            Ok(n) => self.counts.compat_points += n as u64,
                            Err(reason) => return self.reject(reason),
                        }
                        self.counts.access += 1;
                        if let Some(record) = record {
                            self.aggregator.observe(&record, &self.host);
                        }
                    }
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

    fn reject(&mut self, reason: Reject) {
        self.counts.rejected[reason as usize] += 1;
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

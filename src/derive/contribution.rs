//! What one message adds to the aggregates, kept while the message is held so that it can be
//! taken back ([`RequestGroup::retract`], [`LogGroup::retract`]) when the message must go back to
//! NSQ unwritten.
//!
//! Samples are grouped per series and window: a group holds the counts summed and the times
//! as they came (the sketch and the buckets take values back one by one), so a held message
//! costs about 16 bytes per access line, not a copy of its body.

use std::collections::HashMap;
use std::hash::Hasher;

use crate::access::Method;
use crate::metrics::aggregate::{Aggregator, RequestSample, SeriesRef};
use crate::metrics::log_volume::{LogSeries, LogVolume};
use crate::metrics::window::{KeyHash, KeyHasher};

/// Which aggregate a window belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Lane {
    /// `router_requests`.
    Requests,
    /// `app_log_lines`.
    Logs,
}

/// One `router_requests` series in one window, as one message contributes to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RequestGroup {
    pub(crate) app: String,
    pub(crate) host: String,
    pub(crate) status: u16,
    pub(crate) method: Method,
    pub(crate) window_start: i64,
    /// The newest event time of the group's samples: how far it moves the watermark.
    pub(crate) last_ns: i64,
    pub(crate) requests: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) request_times: Vec<f64>,
    pub(crate) upstream_times: Vec<f64>,
}

impl RequestGroup {
    fn series(&self) -> SeriesRef<'_> {
        SeriesRef { app: &self.app, host: &self.host, status: self.status, method: self.method }
    }

    /// Whether this is the group of `series` in the window starting at `window_start`.
    fn is(&self, series: &SeriesRef<'_>, window_start: i64) -> bool {
        self.window_start == window_start
            && self.status == series.status
            && self.method == series.method
            && self.app == series.app
            && self.host == series.host
    }

    /// The group as the aggregator's samples: the counts, then one per time.
    fn samples(&self) -> impl Iterator<Item = RequestSample> + '_ {
        let at = self.last_ns;
        let counts = (self.requests > 0 || self.bytes_sent > 0).then_some(RequestSample {
            time_ns: at,
            requests: self.requests,
            bytes_sent: self.bytes_sent,
            request_time: None,
            upstream_time: None,
        });
        let one = move |request_time, upstream_time| RequestSample {
            time_ns: at,
            requests: 0,
            bytes_sent: 0,
            request_time,
            upstream_time,
        };
        counts
            .into_iter()
            .chain(self.request_times.iter().map(move |&t| one(Some(t), None)))
            .chain(self.upstream_times.iter().map(move |&t| one(None, Some(t))))
    }

    /// Adds the group to its series.
    pub(crate) fn observe(&self, aggregator: &mut Aggregator) {
        aggregator.observe_group(
            self.series(),
            self.last_ns,
            (self.requests, self.bytes_sent),
            &self.request_times,
            &self.upstream_times,
        );
    }

    /// Takes the group back from its series; false when the series is no longer live.
    pub(crate) fn retract(&self, aggregator: &mut Aggregator) -> bool {
        self.samples().all(|sample| aggregator.retract(self.series(), &sample))
    }
}

/// One `app_log_lines` series in one window, as one message contributes to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogGroup {
    pub(crate) app: String,
    pub(crate) stream: &'static str,
    pub(crate) level: Option<&'static str>,
    pub(crate) host: String,
    pub(crate) window_start: i64,
    pub(crate) last_ns: i64,
    pub(crate) count: u64,
}

impl LogGroup {
    fn series(&self) -> LogSeries<'_> {
        LogSeries { app: &self.app, stream: self.stream, level: self.level, host: &self.host }
    }

    pub(crate) fn observe(&self, volume: &mut LogVolume) {
        volume.observe(self.series(), self.last_ns, self.count);
    }

    pub(crate) fn retract(&self, volume: &mut LogVolume) -> bool {
        volume.retract(self.series(), self.last_ns, self.count)
    }
}

/// The series of a log record, its stream and level from closed sets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogKey<'a> {
    pub(crate) app: &'a str,
    pub(crate) stream: &'static str,
    pub(crate) level: Option<&'static str>,
    pub(crate) host: &'a str,
}

/// Everything one message adds to the aggregates.
#[derive(Debug, Default)]
pub(crate) struct Contribution {
    pub(crate) requests: Vec<RequestGroup>,
    pub(crate) logs: Vec<LogGroup>,
    /// Group index by key hash (a collision falls back to a scan).
    index: HashMap<u64, usize, KeyHash>,
    /// The request group added to last: the three compat points of an access line, and often
    /// the next lines, belong to it, and comparing it costs less than hashing the key.
    last_request: Option<usize>,
}

fn key_hash(lane: Lane, parts: &[&[u8]], window_start: i64) -> u64 {
    let mut h = KeyHasher::default();
    h.write_u8(lane as u8);
    for p in parts {
        h.write(p);
        h.write_u8(0);
    }
    h.write_i64(window_start);
    h.finish()
}

impl Contribution {
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.logs.is_empty()
    }

    /// Values kept for a retraction: what holding the message costs, in f64s.
    pub(crate) fn retained_values(&self) -> usize {
        self.requests.iter().map(|g| g.request_times.len() + g.upstream_times.len() + 2).sum::<usize>()
            + self.logs.len() * 2
    }

    /// Adds a sample of `series` in the window starting at `window_start`.
    pub(crate) fn add_request(&mut self, series: SeriesRef<'_>, window_start: i64, s: &RequestSample) {
        let same = |g: &RequestGroup| g.is(&series, window_start);
        let i = match self.last_request.filter(|&i| self.requests.get(i).is_some_and(same)) {
            Some(i) => i,
            None => self.request_group(series, window_start, s.time_ns),
        };
        self.last_request = Some(i);
        let g = &mut self.requests[i];
        g.last_ns = g.last_ns.max(s.time_ns);
        g.requests += s.requests;
        g.bytes_sent = g.bytes_sent.saturating_add(s.bytes_sent);
        g.request_times.extend(s.request_time);
        g.upstream_times.extend(s.upstream_time);
    }

    /// The index of `series`' group in `window_start`, added (first at `time_ns`) if new.
    fn request_group(&mut self, series: SeriesRef<'_>, window_start: i64, time_ns: i64) -> usize {
        let status = series.status.to_be_bytes();
        let method = [series.method as u8];
        let hash = key_hash(
            Lane::Requests,
            &[series.app.as_bytes(), series.host.as_bytes(), &status, &method],
            window_start,
        );
        let same = |g: &RequestGroup| g.is(&series, window_start);
        let found = match self.index.get(&hash) {
            Some(&i) if self.requests.get(i).is_some_and(same) => Some(i),
            Some(_) => self.requests.iter().position(same),
            None => None,
        };
        found.unwrap_or_else(|| {
            self.requests.push(RequestGroup {
                app: series.app.to_owned(),
                host: series.host.to_owned(),
                status: series.status,
                method: series.method,
                window_start,
                last_ns: time_ns,
                requests: 0,
                bytes_sent: 0,
                request_times: Vec::new(),
                upstream_times: Vec::new(),
            });
            self.index.entry(hash).or_insert(self.requests.len() - 1);
            self.requests.len() - 1
        })
    }

    /// Counts one log record at `time_ns` in the window starting at `window_start`.
    pub(crate) fn add_log(&mut self, key: LogKey<'_>, window_start: i64, time_ns: i64) {
        let level = key.level.unwrap_or("").as_bytes();
        let hash = key_hash(
            Lane::Logs,
            &[key.app.as_bytes(), key.stream.as_bytes(), level, key.host.as_bytes()],
            window_start,
        );
        let same = |g: &LogGroup| {
            g.window_start == window_start
                && g.stream == key.stream
                && g.level == key.level
                && g.app == key.app
                && g.host == key.host
        };
        let found = match self.index.get(&hash) {
            Some(&i) if self.logs.get(i).is_some_and(same) => Some(i),
            Some(_) => self.logs.iter().position(same),
            None => None,
        };
        let i = found.unwrap_or_else(|| {
            self.logs.push(LogGroup {
                app: key.app.to_owned(),
                stream: key.stream,
                level: key.level,
                host: key.host.to_owned(),
                window_start,
                last_ns: time_ns,
                count: 0,
            });
            self.index.entry(hash).or_insert(self.logs.len() - 1);
            self.logs.len() - 1
        });
        let g = &mut self.logs[i];
        g.last_ns = g.last_ns.max(time_ns);
        g.count += 1;
    }
}

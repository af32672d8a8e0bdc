//! Event-time windows of aggregated series: the machinery `router_requests`
//! ([`super::aggregate`]) and `app_log_lines` ([`super::log_volume`]) share.
//!
//! A series is a window start plus a key the caller builds (tag values, as bytes). Windows
//! close when the newest event time seen (the watermark) passes their end plus the allowed
//! lateness; a contribution to a window that already closed opens it again as a new series,
//! flushed later under a new sequence number, so a written point is never overwritten and sums
//! stay exact. Live series are bounded: past `max_series` the least recently used one is
//! flushed early (and counted), never dropped.
//!
//! A point's timestamp is its window's start plus the flush sequence number (modulo the
//! window), so that every flush writes new keys; the sequence starts at a base the role
//! chooses (0 for replays, so replaying a file again writes the same keys; a clock-derived
//! value for a long-running consumer, so a restart does not reuse keys).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::point::{FieldValue, Name, Point};

/// What a series accumulates; the window and tags are kept beside it.
pub(crate) trait SeriesState: Default {
    /// Nothing is left in it (every contribution was retracted): dropped rather than written.
    fn is_empty(&self) -> bool;
    /// Its fields, in the order they are written.
    fn write_fields(&self, fields: &mut Vec<(Name, FieldValue)>);
}

/// How windows are cut and bounded.
#[derive(Debug, Clone)]
pub(crate) struct WindowSettings {
    pub(crate) window_ns: i64,
    /// How far behind the watermark a window stays open for stragglers.
    pub(crate) lateness_ns: i64,
    pub(crate) max_series: NonZeroUsize,
    /// First flush sequence number.
    pub(crate) sequence_base: u64,
}

/// Counters of what the windows did, for telemetry and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowStats {
    pub(crate) points: u64,
    pub(crate) evictions: u64,
}

struct Entry<S> {
    window_start: i64,
    tags: Vec<(Name, Name)>,
    state: S,
}

/// A fast hash for series keys (the FxHash mix, 8 bytes at a time). The keys are built from
/// the router's own configuration (app names) and closed sets (status, method), not from what
/// a client can choose freely, so a keyed hash's flood resistance buys nothing here, while
/// SipHash was a visible share of the per-line cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

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

pub(crate) type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

/// The live series of one measurement, by window.
pub(crate) struct Windows<S> {
    measurement: &'static str,
    settings: WindowSettings,
    series: LruCache<Box<[u8]>, Entry<S>, KeyHash>,
    /// Live series per window start, to find due windows without scanning every series.
    open_windows: BTreeMap<i64, usize>,
    /// Newest window start flushed so far: contributions at or before it are late.
    closed_through: Option<i64>,
    watermark_ns: i64,
    sequence: u64,
    ready: Vec<Point>,
    stats: WindowStats,
}

impl<S: SeriesState> Windows<S> {
    pub(crate) fn new(measurement: &'static str, settings: WindowSettings) -> Self {
        Self {
            measurement,
            series: LruCache::with_hasher(settings.max_series, KeyHash::default()),
            open_windows: BTreeMap::new(),
            closed_through: None,
            watermark_ns: i64::MIN,
            sequence: settings.sequence_base,
            ready: Vec::new(),
            stats: WindowStats::default(),
            settings,
        }
    }

    pub(crate) fn stats(&self) -> WindowStats {
        self.stats
    }

    pub(crate) fn live_series(&self) -> usize {
        self.series.len()
    }

    /// The start of the window holding `time_ns`.
    pub(crate) fn window_start(&self, time_ns: i64) -> i64 {
        time_ns - time_ns.rem_euclid(self.settings.window_ns)
    }

    /// Whether the window starting at `window_start` was flushed before (a contribution to it
    /// is late and goes into a new point).
    pub(crate) fn is_late(&self, window_start: i64) -> bool {
        self.closed_through.is_some_and(|c| window_start <= c)
    }

    /// Whether any series of the window starting at `window_start` is live.
    pub(crate) fn is_open(&self, window_start: i64) -> bool {
        self.open_windows.contains_key(&window_start)
    }

    /// The live series under `key` (which starts with the window, see [`Windows::key_prefix`]),
    /// created with `tags()` when there is none; creating one may flush the least recently
    /// used series early.
    pub(crate) fn series(
        &mut self,
        window_start: i64,
        key: &[u8],
        tags: impl FnOnce() -> Vec<(Name, Name)>,
    ) -> &mut S {
        if !self.series.contains(key) {
            let fresh = Entry { window_start, tags: tags(), state: S::default() };
            *self.open_windows.entry(window_start).or_default() += 1;
            if let Some((_, evicted)) = self.series.push(key.into(), fresh) {
                self.stats.evictions += 1;
                self.close_series(evicted);
                self.sequence += 1;
            }
        }
        match self.series.get_mut(key) {
            Some(entry) => &mut entry.state,
            // Cannot happen: the entry was inserted under this key just above (as the most
            // recently used, so the push could not have evicted it) or was already there.
            None => unreachable!("series just inserted"),
        }
    }

    /// The live series under `key`, if any, without making it the most recently used (a
    /// retraction is no use of the series).
    pub(crate) fn peek_mut(&mut self, key: &[u8]) -> Option<&mut S> {
        self.series.peek_mut(key).map(|e| &mut e.state)
    }

    /// Drops the series under `key` if nothing is left in it.
    pub(crate) fn remove_if_empty(&mut self, key: &[u8]) {
        if self.series.peek(key).is_some_and(|e| e.state.is_empty()) {
            if let Some(entry) = self.series.pop(key) {
                self.forget_window(entry.window_start);
            }
        }
    }

    /// The bytes every key of the window starting at `window_start` begins with.
    pub(crate) fn key_prefix(window_start: i64) -> [u8; 8] {
        window_start.to_be_bytes()
    }

    /// Moves the watermark (event time) forward and flushes every window that is due.
    pub(crate) fn advance_to(&mut self, watermark_ns: i64) {
        if watermark_ns <= self.watermark_ns {
            return;
        }
        self.watermark_ns = watermark_ns;
        let span = self.settings.window_ns.saturating_add(self.settings.lateness_ns);
        let due = |start: i64| start.saturating_add(span) <= self.watermark_ns;
        match self.open_windows.first_key_value() {
            Some((&first, _)) if due(first) => {}
            _ => return,
        }
        let cutoff = self.watermark_ns.saturating_sub(span);
        self.flush_where(|start| start <= cutoff);
    }

    /// Flushes every live series (end of input, shutdown, a consumer's early flush).
    pub(crate) fn flush_all(&mut self) {
        self.flush_where(|_| true);
    }

    /// Takes the points flushed so far.
    pub(crate) fn take_ready(&mut self) -> Vec<Point> {
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
            if let Some(entry) = self.series.pop(key) {
                let start = entry.window_start;
                self.closed_through = Some(self.closed_through.map_or(start, |c| c.max(start)));
                self.close_series(entry);
            }
        }
        self.sequence += 1;
    }

    fn forget_window(&mut self, window_start: i64) {
        if let Some(n) = self.open_windows.get_mut(&window_start) {
            *n -= 1;
            if *n == 0 {
                self.open_windows.remove(&window_start);
            }
        }
    }

    fn close_series(&mut self, entry: Entry<S>) {
        self.forget_window(entry.window_start);
        if entry.state.is_empty() {
            return;
        }
        self.stats.points += 1;
        let mut fields = Vec::with_capacity(40);
        entry.state.write_fields(&mut fields);
        let offset = (self.sequence % self.settings.window_ns as u64) as i64;
        self.ready.push(Point {
            measurement: self.measurement.into(),
            tags: entry.tags,
            fields,
            timestamp_ns: Some(entry.window_start + offset),
        });
    }
}

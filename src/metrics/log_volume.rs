//! `app_log_lines`: log records counted per event-time window and series (app, stream, level,
//! host), with the windows of [`super::window`]. Tags `app`, `stream`, `level` (only when one
//! was detected), `host` (the node of the pod), and `consumer` (the instance that counted, as
//! on `router_requests`, so that two consumers never write the same key); one integer field,
//! `count`.

use super::point::{FieldValue, Name, Point};
use super::window::{SeriesState, WindowSettings, Windows};

pub(crate) const MEASUREMENT: &str = "app_log_lines";

/// The series of a log record, besides its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogSeries<'a> {
    pub(crate) app: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) level: Option<&'a str>,
    pub(crate) host: &'a str,
}

#[derive(Debug, Default)]
struct LineCount(u64);

impl SeriesState for LineCount {
    fn is_empty(&self) -> bool {
        self.0 == 0
    }

    fn write_fields(&self, fields: &mut Vec<(Name, FieldValue)>) {
        fields.push(("count".into(), FieldValue::Int(self.0.min(i64::MAX as u64) as i64)));
    }
}

/// Counts log records into `app_log_lines` windows.
pub struct LogVolume {
    windows: Windows<LineCount>,
    consumer: String,
    key: Vec<u8>,
}

impl LogVolume {
    pub(crate) fn new(settings: WindowSettings, consumer: String) -> Self {
        Self { windows: Windows::new(MEASUREMENT, settings), consumer, key: Vec::with_capacity(64) }
    }

    pub(crate) fn window_start(&self, time_ns: i64) -> i64 {
        self.windows.window_start(time_ns)
    }

    pub(crate) fn is_open(&self, window_start: i64) -> bool {
        self.windows.is_open(window_start)
    }

    pub(crate) fn live_series(&self) -> usize {
        self.windows.live_series()
    }

    fn build_key(&mut self, window_start: i64, s: &LogSeries<'_>) {
        self.key.clear();
        self.key.extend_from_slice(&Windows::<LineCount>::key_prefix(window_start));
        for part in [s.app, s.stream, s.level.unwrap_or(""), s.host] {
            self.key.extend_from_slice(part.as_bytes());
            self.key.push(0);
        }
    }

    /// Counts `n` records of `series` at event time `time_ns`.
    pub(crate) fn observe(&mut self, series: LogSeries<'_>, time_ns: i64, n: u64) {
        let window_start = self.windows.window_start(time_ns);
        self.build_key(window_start, &series);
        let consumer = &self.consumer;
        let tags = || {
            let mut tags: Vec<(Name, Name)> = vec![
                ("app".into(), series.app.to_owned().into()),
                ("stream".into(), series.stream.to_owned().into()),
            ];
            if let Some(level) = series.level {
                tags.push(("level".into(), level.to_owned().into()));
            }
            tags.push(("host".into(), series.host.to_owned().into()));
            tags.push(("consumer".into(), consumer.clone().into()));
            tags
        };
        let count = self.windows.series(window_start, &self.key, tags);
        count.0 = count.0.saturating_add(n);
        self.windows.advance_to(time_ns);
    }

    /// Takes back `n` records counted before in a series still live; returns whether it was.
    pub(crate) fn retract(&mut self, series: LogSeries<'_>, time_ns: i64, n: u64) -> bool {
        let window_start = self.windows.window_start(time_ns);
        self.build_key(window_start, &series);
        let Some(count) = self.windows.peek_mut(&self.key) else { return false };
        count.0 = count.0.saturating_sub(n);
        self.windows.remove_if_empty(&self.key);
        true
    }

    pub(crate) fn advance_to(&mut self, watermark_ns: i64) {
        self.windows.advance_to(watermark_ns);
    }

    pub(crate) fn flush_all(&mut self) {
        self.windows.flush_all();
    }

    pub(crate) fn take_ready(&mut self) -> Vec<Point> {
        self.windows.take_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    const SEC: i64 = 1_000_000_000;

    fn volume(max_series: usize) -> LogVolume {
        let settings = WindowSettings {
            window_ns: 10 * SEC,
            lateness_ns: 0,
            max_series: NonZeroUsize::new(max_series).unwrap(),
            sequence_base: 7,
        };
        LogVolume::new(settings, "c1".into())
    }

    fn s<'a>(app: &'a str, level: Option<&'a str>) -> LogSeries<'a> {
        LogSeries { app, stream: "stdout", level, host: "n1" }
    }

    fn count(p: &Point) -> i64 {
        match p.field_value("count") {
            Some(FieldValue::Int(n)) => *n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counts_per_window_and_series_and_tags_the_level_only_when_known() {
        let mut v = volume(100);
        v.observe(s("foo", Some("error")), 100 * SEC, 1);
        v.observe(s("foo", Some("error")), 101 * SEC, 2);
        v.observe(s("foo", None), 105 * SEC, 1);
        v.observe(s("bar", None), 109 * SEC, 1);
        assert!(v.take_ready().is_empty(), "window 100..110 is open until the watermark passes 110");
        v.observe(s("foo", None), 110 * SEC, 1);
        let mut points = v.take_ready();
        points.sort_by_key(|p| {
            (p.tag_value("app").map(str::to_owned), p.tag_value("level").map(str::to_owned))
        });
        let summary: Vec<_> =
            points.iter().map(|p| (p.tag_value("app"), p.tag_value("level"), count(p))).collect();
        assert_eq!(
            summary,
            [(Some("bar"), None, 1), (Some("foo"), None, 1), (Some("foo"), Some("error"), 3)]
        );
        let tags: Vec<&str> = points[2].tags.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(tags, ["app", "stream", "level", "host", "consumer"]);
        // Window start + the sequence base.
        assert!(points.iter().all(|p| p.timestamp_ns == Some(100 * SEC + 7)));
    }

    #[test]
    fn retraction_takes_back_and_drops_an_emptied_series() {
        let mut v = volume(100);
        v.observe(s("foo", None), 100 * SEC, 3);
        v.observe(s("bar", None), 100 * SEC, 1);
        assert!(v.retract(s("foo", None), 100 * SEC, 1));
        assert!(v.retract(s("bar", None), 100 * SEC, 1));
        assert_eq!(v.live_series(), 1, "bar is empty and gone");
        assert!(!v.retract(s("baz", None), 100 * SEC, 1), "never counted");
        v.flush_all();
        let points = v.take_ready();
        assert_eq!(points.len(), 1);
        assert_eq!(count(&points[0]), 2);
        assert!(!v.is_open(100 * SEC));
        assert!(!v.retract(s("foo", None), 100 * SEC, 1), "flushed: nothing to take back");
    }
}

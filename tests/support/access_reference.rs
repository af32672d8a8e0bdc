//! An independent reading of Deis router access lines and of the `router_requests` points
//! they must add up to, for checking logmill's output from outside.
//!
//! Nothing here calls logmill: the access lines are read by splitting on `"` and ` - ` (nginx
//! escapes `"` inside quoted fields as `\x22`, so a raw `"` only ever delimits one), times by a
//! calendar walk from 1970, and line protocol by a few lines of its own. A disagreement between
//! this reading and logmill's output is a finding, whichever side it is on.
//!
//! Include it with `#[path = "support/access_reference.rs"] mod access_reference;`.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// The `router_requests` buckets of the schema (design brief), upper bounds in seconds, each
/// with the name its field carries; values above the last go to `inf`.
pub const BUCKETS: [(f64, &str); 11] = [
    (0.005, "0.005"),
    (0.01, "0.01"),
    (0.025, "0.025"),
    (0.05, "0.05"),
    (0.1, "0.1"),
    (0.25, "0.25"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.5, "2.5"),
    (5.0, "5"),
    (10.0, "10"),
];

/// The tags of a `router_requests` point.
pub const TAGS: [&str; 5] = ["app", "status_code", "method", "host", "consumer"];

/// What one access line says, as the schema reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine {
    /// `$time_iso8601` or `$time_local`, seconds since the epoch (UTC).
    pub secs: i64,
    pub app: String,
    pub status: String,
    /// The request's method from the schema's closed set, `OTHER` for anything else.
    pub method: String,
    pub bytes_sent: u64,
    pub request_time: f64,
    /// The upstream time summed over every attempt; `None` when no attempt has a time (`-`).
    pub upstream_total: Option<f64>,
}

/// Reads one access line of the `upstreaminfo` format. Panics on anything else: the tests feed
/// it only access lines, and a line it cannot read is a bug in the test.
pub fn read_line(line: &str) -> AccessLine {
    let quoted: Vec<&str> = line.split('"').collect();
    // [time] - app - addr - user - status - "request" - bytes - "referer" - "agent" - "server" - rest
    let [head, request, bytes, _referer, between_1, _agent, between_2, _server, tail] = quoted[..] else {
        panic!("not an access line ({} quotes): {line}", quoted.len() - 1)
    };
    assert!(between_1 == " - " && between_2 == " - ", "not an access line: {line}");
    let (time, head) = head.strip_prefix('[').and_then(|h| h.split_once("] - ")).unwrap_or_else(|| {
        panic!("no [time] at the start: {line}");
    });
    let head: Vec<&str> = head.strip_suffix(" - ").unwrap_or_else(|| panic!("{line}")).split(" - ").collect();
    let [app, _addr, _user, status] = head[..] else { panic!("expected app - addr - user - status: {line}") };
    let bytes =
        bytes.strip_prefix(" - ").and_then(|b| b.strip_suffix(" - ")).unwrap_or_else(|| panic!("{line}"));
    // upstream_addr - http_host - upstream_response_time - request_time, read from the right:
    // a Host header may hold ` - `, the two times never do.
    let mut right = tail.rsplitn(3, " - ");
    let request_time = right.next().unwrap();
    let upstream_times = right.next().unwrap_or_else(|| panic!("no upstream time: {line}"));
    let attempts: Vec<f64> =
        upstream_times.split([',', ':']).filter_map(|t| t.trim().parse::<f64>().ok()).collect();
    // Summed left to right from zero: the float the schema's "sum of its attempts" is.
    let upstream_total = (!attempts.is_empty()).then(|| attempts.iter().fold(0.0, |sum, t| sum + t));
    let method = request.split(' ').next().unwrap_or_default();
    let method = if ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]
        .contains(&method)
    {
        method
    } else {
        "OTHER"
    };
    AccessLine {
        secs: epoch_secs(time),
        app: app.to_owned(),
        status: status.to_owned(),
        method: method.to_owned(),
        bytes_sent: bytes.parse().unwrap_or_else(|_| panic!("bytes_sent {bytes:?}: {line}")),
        request_time: request_time
            .parse()
            .unwrap_or_else(|_| panic!("request_time {request_time:?}: {line}")),
        upstream_total,
    }
}

/// Every line of a raw access log.
pub fn read_log(text: &str) -> Vec<AccessLine> {
    text.lines().map(read_line).collect()
}

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn month_days(year: i64, month: usize) -> i64 {
    [31, if is_leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
}

/// Days from 1970-01-01 to a date (year ≥ 1970), by walking the calendar.
pub fn days_since_epoch(year: i64, month: usize, day: i64) -> i64 {
    let years: i64 = (1970..year).map(|y| if is_leap(y) { 366 } else { 365 }).sum();
    let months: i64 = (1..month).map(|m| month_days(year, m)).sum();
    years + months + day - 1
}

/// The date of a day count since 1970-01-01, by walking the calendar.
pub fn date_of_day(mut days: i64) -> (i64, usize, i64) {
    let mut year = 1970;
    while days >= if is_leap(year) { 366 } else { 365 } {
        days -= if is_leap(year) { 366 } else { 365 };
        year += 1;
    }
    let mut month = 1;
    while days >= month_days(year, month) {
        days -= month_days(year, month);
        month += 1;
    }
    (year, month, days + 1)
}

/// `2026-11-21T04:22:21+00:00` or `21/Nov/2026:04:22:21 +0000` → seconds since the epoch.
pub fn epoch_secs(time: &str) -> i64 {
    let n = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("bad time {time:?}"));
    let (year, month, day, clock, offset) = if time.as_bytes().get(2) == Some(&b'/') {
        // 21/Nov/2026:04:22:21 +0000
        let month = MONTHS.iter().position(|m| *m == &time[3..6]).unwrap_or_else(|| panic!("{time:?}")) + 1;
        (n(&time[7..11]), month, n(&time[..2]), &time[12..20], time[21..].replace(':', ""))
    } else {
        // 2026-11-21T04:22:21+00:00
        (n(&time[..4]), n(&time[5..7]) as usize, n(&time[8..10]), &time[11..19], time[19..].replace(':', ""))
    };
    let offset_secs = match offset.as_str() {
        "Z" => 0,
        o => {
            let magnitude = n(&o[1..3]) * 3600 + n(&o[3..5]) * 60;
            if o.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let hms: Vec<i64> = clock.split(':').map(n).collect();
    days_since_epoch(year, month, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2] - offset_secs
}

/// One time family of a series: what its `*_sum`, `*_max` and `*_bucket_le_*` must say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distribution {
    pub sum: f64,
    pub max: f64,
    pub buckets: [i64; 12],
}

impl Distribution {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.max = self.max.max(v);
        let bucket = BUCKETS.iter().position(|&(bound, _)| v <= bound).unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
    }
}

/// What one series (window, app, status, method, host) must add up to across its points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub count: i64,
    pub bytes_sent: i64,
    pub request_time: Distribution,
    /// `None` when every request of the series had `-`: then no point carries the fields.
    pub upstream_time: Option<Distribution>,
}

/// (window start ns, app, status_code, method, host).
pub type SeriesKey = (i64, String, String, String, String);

/// The series `lines` make with `window_secs` windows, as replayed on node `host`.
pub fn expected_series(lines: &[AccessLine], window_secs: i64, host: &str) -> BTreeMap<SeriesKey, Series> {
    let mut series: BTreeMap<SeriesKey, Series> = BTreeMap::new();
    for l in lines {
        let window = l.secs - l.secs.rem_euclid(window_secs);
        let key =
            (window * 1_000_000_000, l.app.clone(), l.status.clone(), l.method.clone(), host.to_owned());
        let s = series.entry(key).or_default();
        s.count += 1;
        s.bytes_sent += l.bytes_sent as i64;
        s.request_time.add(l.request_time);
        if let Some(t) = l.upstream_total {
            s.upstream_time.get_or_insert_with(Distribution::default).add(t);
        }
    }
    series
}

/// A field value as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

/// A `router_requests` point as read back, from line protocol or from InfluxDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time_ns: i64,
    pub tags: BTreeMap<String, String>,
    pub fields: BTreeMap<String, Num>,
}

/// The points of `measurement` in line protocol: just enough of the format for what logmill
/// writes (tags, integer and float fields, a timestamp; `\` escapes the next byte). Panics on
/// anything else.
pub fn read_line_protocol(text: &str, measurement: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for line in text.lines() {
        // Most lines are other measurements: skip them before the slow split.
        if !line.strip_prefix(measurement).is_some_and(|rest| rest.starts_with([',', ' '])) {
            continue;
        }
        let parts = split_unescaped(line, ' ');
        let [key, fields, time] = &parts[..] else { panic!("not `key fields time`: {line}") };
        let mut key = split_unescaped(key, ',').into_iter();
        if unescape(&key.next().unwrap()) != measurement {
            continue;
        }
        let pair = |kv: &str| {
            let kv = split_unescaped(kv, '=');
            let [k, v] = &kv[..] else { panic!("not `key=value` in {line}") };
            (unescape(k), v.clone())
        };
        let tags = key.map(|kv| pair(&kv)).map(|(k, v)| (k, unescape(&v))).collect();
        let fields = split_unescaped(fields, ',')
            .iter()
            .map(|kv| {
                let (k, v) = pair(kv);
                let value = match v.strip_suffix('i') {
                    Some(int) => Num::Int(int.parse().unwrap_or_else(|_| panic!("{k}={v} in {line}"))),
                    None => Num::Float(v.parse().unwrap_or_else(|_| panic!("{k}={v} in {line}"))),
                };
                (k, value)
            })
            .collect();
        let time_ns = time.parse().unwrap_or_else(|_| panic!("timestamp {time:?} in {line}"));
        rows.push(Row { time_ns, tags, fields });
    }
    rows
}

/// Splits on `sep` where it is not escaped by a backslash; the pieces keep their escapes.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let piece = pieces.last_mut().unwrap();
                piece.push('\\');
                piece.extend(chars.next());
            }
            c if c == sep => pieces.push(String::new()),
            c => pieces.last_mut().unwrap().push(c),
        }
    }
    pieces
}

/// Drops the backslash of `\,`, `\=` and `\ ` (a backslash before anything else is itself).
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(',' | '=' | ' ')) => out.extend(chars.next()),
            (c, _) => out.push(c),
        }
    }
    out
}

fn int(row: &Row, field: &str) -> Option<i64> {
    match row.fields.get(field) {
        None => None,
        Some(Num::Int(v)) => Some(*v),
        Some(other) => panic!("{field} is not an integer: {other:?} in {row:?}"),
    }
}

fn float(row: &Row, field: &str) -> Option<f64> {
    match row.fields.get(field) {
        None => None,
        Some(Num::Float(v)) => Some(*v),
        Some(other) => panic!("{field} is not a float: {other:?} in {row:?}"),
    }
}

/// Checks `router_requests` points against [`expected_series`]: each series' points together
/// hold its exact `count`, `bytes_sent` and every bucket, its `*_max` exactly, its `*_sum`s
/// within 1e-9 relative (a series flushed in several points is summed in another order), no
/// upstream field where every request had `-`, no series too many or too few, and no field the
/// schema does not name. Percentiles are not checked here. Returns the number of values checked.
pub fn check_router_requests(
    rows: &[Row],
    expected: &BTreeMap<SeriesKey, Series>,
    window_secs: i64,
    consumer: &str,
) -> usize {
    let window_ns = window_secs * 1_000_000_000;
    let mut known = vec!["count".to_owned(), "bytes_sent".to_owned()];
    for family in ["request_time", "upstream_time"] {
        for stat in ["sum", "max", "p50", "p90", "p99"] {
            known.push(format!("{family}_{stat}"));
        }
        for name in BUCKETS.iter().map(|(_, name)| *name).chain(["inf"]) {
            known.push(format!("{family}_bucket_le_{name}"));
        }
    }
    let mut groups: BTreeMap<SeriesKey, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        let tag = |k: &str| row.tags.get(k).cloned().unwrap_or_else(|| panic!("no tag {k}: {row:?}"));
        assert_eq!(row.tags.len(), TAGS.len(), "tags of {row:?}");
        assert_eq!(tag("consumer"), consumer, "{row:?}");
        for field in row.fields.keys() {
            assert!(known.contains(field), "a field the schema does not name: {field} in {row:?}");
        }
        let window = row.time_ns - row.time_ns.rem_euclid(window_ns);
        let key = (window, tag("app"), tag("status_code"), tag("method"), tag("host"));
        groups.entry(key).or_default().push(row);
    }
    let missing: Vec<_> = expected.keys().filter(|k| !groups.contains_key(*k)).collect();
    let extra: Vec<_> = groups.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "series missing: {missing:?}; series unexpected: {extra:?}"
    );

    let mut checked = 0;
    for (key, points) in &groups {
        let want = &expected[key];
        let total = |field: &str| points.iter().filter_map(|p| int(p, field)).sum::<i64>();
        assert_eq!(total("count"), want.count, "count of {key:?}");
        assert_eq!(total("bytes_sent"), want.bytes_sent, "bytes_sent of {key:?}");
        checked += 2;
        for (family, dist) in
            [("request_time", Some(&want.request_time)), ("upstream_time", want.upstream_time.as_ref())]
        {
            let Some(dist) = dist else {
                let stray: Vec<_> =
                    points.iter().flat_map(|p| p.fields.keys()).filter(|f| f.starts_with(family)).collect();
                assert!(stray.is_empty(), "{key:?}: every request had `-`, yet {stray:?}");
                continue;
            };
            let sum: f64 = points.iter().filter_map(|p| float(p, &format!("{family}_sum"))).sum();
            assert!(
                (sum - dist.sum).abs() <= 1e-9 * dist.sum.abs(),
                "{family}_sum of {key:?}: {sum}, independently {}",
                dist.sum
            );
            let max =
                points.iter().filter_map(|p| float(p, &format!("{family}_max"))).fold(f64::MIN, f64::max);
            assert_eq!(max, dist.max, "{family}_max of {key:?}");
            for (i, name) in BUCKETS.iter().map(|(_, name)| *name).chain(["inf"]).enumerate() {
                let field = format!("{family}_bucket_le_{name}");
                assert_eq!(total(&field), dist.buckets[i], "{field} of {key:?}");
            }
            checked += 2 + 12;
        }
        // Every request has a request time, so every point of the series carries the family.
        for p in points {
            assert!(p.fields.contains_key("request_time_sum"), "no request_time_sum: {p:?}");
        }
    }
    checked
}

//! Replaying the reference router data (`testdata/`, copied from real nginx output) must give
//! the exact counts of its README: 37,082 access lines, per status and per app.

#[path = "support/access_reference.rs"]
mod access_reference;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use logmill::config::{RawConfig, Settings};
use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};
use logmill::roles::replay::{collect, replay, FormatChoice, ReplayOptions, ReplaySummary};
use tokio_util::sync::CancellationToken;

const ACCESS_LINES: u64 = 37_082;
// From the data README (counted there from the raw file, independently of logmill).
const BY_STATUS: [(&str, i64); 8] = [
    ("200", 18_775),
    ("404", 6_251),
    ("502", 4_710),
    ("500", 1_868),
    ("503", 1_846),
    ("201", 1_830),
    ("301", 1_773),
    ("499", 29),
];
const BY_APP: [(&str, i64); 5] =
    [("web", 14_110), ("api", 9_199), ("dead", 4_710), ("router-default", 4_555), ("shop", 4_508)];

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn settings() -> Settings {
    let mut raw = RawConfig::load(None).unwrap();
    raw.host = Some("node-1".into());
    raw.validate().unwrap()
}

fn run(files: &[&str], format: FormatChoice, parser: &str) -> (Vec<Point>, ReplaySummary) {
    let options =
        ReplayOptions { files: files.iter().map(|f| testdata(f)).collect(), format, parser: parser.into() };
    let mut out = Vec::new();
    let summary = replay(&settings(), &options, &CancellationToken::new(), collect(&mut out)).unwrap();
    let points = parse_lines(&out).map(|(n, p)| p.unwrap_or_else(|e| panic!("line {n}: {e}"))).collect();
    (points, summary)
}

fn int(p: &Point, k: &str) -> i64 {
    match p.field_value(k) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{k}: {other:?}"),
    }
}

fn sum_count_by(points: &[Point], tag: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for p in points.iter().filter(|p| p.measurement == "router_requests") {
        *m.entry(p.tag_value(tag).unwrap().to_owned()).or_default() += int(p, "count");
    }
    m
}

fn count_by(points: &[Point], measurement: &str, tag: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for p in points.iter().filter(|p| p.measurement == measurement) {
        *m.entry(p.tag_value(tag).unwrap().to_owned()).or_default() += 1;
    }
    m
}

/// The (measurement, sorted tags, timestamp) key under which InfluxDB stores a point.
fn series_key(p: &Point) -> (String, Vec<(String, String)>, Option<i64>) {
    let mut tags: Vec<(String, String)> =
        p.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tags.sort();
    (p.measurement.to_string(), tags, p.timestamp_ns)
}

fn expected(table: &[(&str, i64)]) -> BTreeMap<String, i64> {
    table.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn raw_access_log_counts_exactly() {
    let (points, summary) = run(&["access.log"], FormatChoice::Auto, "deis-router");
    assert_eq!(summary.counts.lines, ACCESS_LINES);
    assert_eq!(summary.counts.access, ACCESS_LINES);
    assert_eq!(summary.counts.rejected_total(), 0);
    for m in ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"] {
        assert_eq!(points.iter().filter(|p| p.measurement == m).count() as u64, ACCESS_LINES, "{m}");
        assert_eq!(count_by(&points, m, "status_code"), expected(&BY_STATUS), "{m}");
        assert_eq!(count_by(&points, m, "app"), expected(&BY_APP), "{m}");
    }
    // No two points share a key: InfluxDB would keep only one of them.
    let keys: HashSet<_> = points.iter().map(series_key).collect();
    assert_eq!(keys.len(), points.len(), "duplicate keys");
    assert_eq!(sum_count_by(&points, "status_code"), expected(&BY_STATUS));
    assert_eq!(sum_count_by(&points, "app"), expected(&BY_APP));
    // Every compat value is a float, as the old series hold.
    for p in points.iter().filter(|p| p.measurement.starts_with("deis_router_")) {
        assert!(matches!(p.field_value("value"), Some(FieldValue::Float(_))), "{p:?}");
        assert_eq!(p.tag_value("host"), Some("node-1"));
    }
}

#[test]
fn docker_and_cri_wrapping_give_the_same_points() {
    let (docker, ds) = run(&["router-docker.log"], FormatChoice::Auto, "deis-router");
    let (cri, cs) = run(&["router-cri.log"], FormatChoice::Cri, "deis-router");
    // The merged files also hold nginx's error log: 4,714 lines, none of them access lines.
    for s in [&ds, &cs] {
        assert_eq!(s.counts.access, ACCESS_LINES);
        assert_eq!(s.counts.other, 4_714);
        assert_eq!(s.counts.rejected_total(), 0);
        assert!(s.undecodable.is_empty());
    }
    assert_eq!(docker, cri, "same runtime times, same lines: identical output");
    let keys: HashSet<_> = docker.iter().map(series_key).collect();
    assert_eq!(keys.len(), docker.len(), "duplicate keys");
    assert_eq!(sum_count_by(&docker, "status_code"), expected(&BY_STATUS));

    // Against the raw file: the same points but for the compat timestamps, which come from the
    // runtime's time here and from the access time + file offset there.
    let (raw, _) = run(&["access.log"], FormatChoice::Raw, "deis-router");
    let strip = |points: &[Point]| {
        let mut v: Vec<String> = points
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if p.measurement.starts_with("deis_router_") {
                    p.timestamp_ns = None;
                }
                format!("{p:?}")
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(strip(&docker), strip(&raw));
}

#[test]
fn the_regex_definition_matches_the_fast_path() {
    // The declarative `parsers/deis-router.toml`, loaded as a user definition so that the
    // regex path runs instead of the fast path.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("parsers/deis-router.toml"),
        dir.path().join("deis-router.toml"),
    )
    .unwrap();
    let mut raw = RawConfig::load(None).unwrap();
    raw.host = Some("node-1".into());
    raw.parsers.dir = Some(dir.path().to_owned());
    let user = raw.validate().unwrap();
    assert!(!user.parsers.get("deis-router").unwrap().builtin);

    // The reference data, and hand-made lines with the layouts real nginx writes rarely:
    // ` - ` inside a Basic user, an interrupted retry's times and a bad Host; `$time_local`;
    // `:` between redirects; a TLS handshake as the request; and broken lines.
    for (file, format) in [
        ("access.log", FormatChoice::Raw),
        ("router-docker.log", FormatChoice::Docker),
        ("router-edge.log", FormatChoice::Raw),
    ] {
        let options = ReplayOptions { files: vec![testdata(file)], format, parser: "deis-router".into() };
        let mut fast = Vec::new();
        let fs = replay(&settings(), &options, &CancellationToken::new(), collect(&mut fast)).unwrap();
        let mut regex = Vec::new();
        let rs = replay(&user, &options, &CancellationToken::new(), collect(&mut regex)).unwrap();
        // The same lines are access lines, other lines and rejected; a regex that does not match
        // cannot say why, so the reasons of rejected lines may differ.
        let outcome = |c: &logmill::pipeline::LineCounts| {
            (c.lines, c.access, c.other, c.rejected_total(), c.compat_points, c.aggregate_points)
        };
        assert_eq!(outcome(&fs.counts), outcome(&rs.counts), "{file}");
        // Byte for byte, every compat and aggregated point.
        if fast != regex {
            let (f, r) = (String::from_utf8_lossy(&fast), String::from_utf8_lossy(&regex));
            let first = f.lines().zip(r.lines()).find(|(a, b)| a != b);
            panic!("{file}: outputs differ, first at {first:?}");
        }
    }
}

#[test]
fn every_router_requests_field_matches_an_independent_reading() {
    let text = std::fs::read_to_string(testdata("access.log")).unwrap();
    let lines = access_reference::read_log(&text);
    // The reader itself agrees with the data's README.
    assert_eq!(lines.len() as u64, ACCESS_LINES);
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    for l in &lines {
        *by_status.entry(l.status.clone()).or_default() += 1;
    }
    assert_eq!(by_status, expected(&BY_STATUS));
    assert!(lines.iter().any(|l| l.upstream_total.is_none()), "the data has `-` upstream times");
    // The binary as a user runs it, with the default window and with 1 s windows (more series,
    // more points, more bucket edges).
    for window in [10, 1] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
            .args(["replay", "--host", "node-1", "--window", &window.to_string()])
            .arg(testdata("access.log"))
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows = access_reference::read_line_protocol(
            std::str::from_utf8(&out.stdout).unwrap(),
            "router_requests",
        );
        let want = access_reference::expected_series(&lines, window, "node-1");
        let checked = access_reference::check_router_requests(&rows, &want, window, "local");
        assert!(checked > 5_000, "only {checked} values checked with {window} s windows");
    }
}

/// The exact nearest-rank percentile of a set.
fn exact(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[test]
fn percentiles_within_one_percent_of_an_exact_sort() {
    let (points, _) = run(&["access.log"], FormatChoice::Raw, "deis-router");
    // An independent reading of the file: split on " - " from the right, where the last two
    // fields are the upstream and request times (neither contains " - ").
    let text = std::fs::read_to_string(testdata("access.log")).unwrap();
    let mut request: BTreeMap<(i64, String, String, String), Vec<f64>> = BTreeMap::new();
    let mut upstream: BTreeMap<(i64, String, String, String), Vec<f64>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(" - ").collect();
        let time = &fields[0][1..fields[0].len() - 1];
        let secs = time_secs(time);
        let window = secs - secs % 10;
        let app = fields[1].to_owned();
        let status = fields[4].to_owned();
        let method = line.split('"').nth(1).unwrap().split(' ').next().unwrap().to_owned();
        let key = (window * 1_000_000_000, app, status, method);
        let n = fields.len();
        request.entry(key.clone()).or_default().push(fields[n - 1].parse().unwrap());
        let ups: Vec<f64> = fields[n - 2].split([',', ':']).filter_map(|t| t.trim().parse().ok()).collect();
        if !ups.is_empty() {
            upstream.entry(key).or_default().push(ups.iter().sum());
        }
    }
    let mut checked = 0;
    for p in points.iter().filter(|p| p.measurement == "router_requests") {
        let ts = p.timestamp_ns.unwrap();
        let key = (
            ts - ts % 10_000_000_000,
            p.tag_value("app").unwrap().to_owned(),
            p.tag_value("status_code").unwrap().to_owned(),
            p.tag_value("method").unwrap().to_owned(),
        );
        for (prefix, table) in [("request_time", &request), ("upstream_time", &upstream)] {
            let Some(values) = table.get(&key) else {
                assert!(p.field_value(&format!("{prefix}_p50")).is_none());
                continue;
            };
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            assert_eq!(int(p, "count") as usize, request[&key].len());
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                let want = exact(&sorted, q);
                let Some(FieldValue::Float(got)) = p.field_value(&format!("{prefix}_{name}")) else {
                    panic!("{prefix}_{name} missing in {p:?}")
                };
                assert!(
                    (got - want).abs() <= want * 0.01,
                    "{key:?} {prefix}_{name}: got {got}, exact {want}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} percentiles checked");
}

/// Seconds since the epoch of `2026-11-21T04:22:21+00:00` (UTC only, as in the data).
fn time_secs(t: &str) -> i64 {
    assert!(t.ends_with("+00:00"), "{t}");
    let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
    // The data spans one day: 2026-11-21 is day 20,778 since 1970-01-01 (date -d 2026-11-21 +%s / 86400).
    assert_eq!(&t[..10], "2026-11-21");
    20_778 * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

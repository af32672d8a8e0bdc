//! `logmill replay --output influx` end to end: the binary, as a user runs it, writes into a real
//! `influxd` (the fixture), and what InfluxDB answers is checked against what the raw lines
//! say, read independently of logmill (`support/access_reference.rs`) or known by construction.
//! Each test breaks when a claim of the README breaks: every `router_requests` field survives
//! the trip, odd tag values come back exactly, eviction and late lines keep `sum("count")`
//! exact, and the files of one replay never share a key.

#[path = "support/access_reference.rs"]
mod access_reference;
#[path = "support/influxd.rs"]
mod influxd;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use access_reference::{Num, Row};
use influxd::Influxd;
use serde_json::Value;

const LINES: f64 = 37_082.0;
// From the data README, counted there from the raw file.
const BY_STATUS: [(&str, f64); 8] = [
    ("200", 18_775.0),
    ("404", 6_251.0),
    ("502", 4_710.0),
    ("500", 1_868.0),
    ("503", 1_846.0),
    ("201", 1_830.0),
    ("301", 1_773.0),
    ("499", 29.0),
];
const BY_APP: [(&str, f64); 5] =
    [("web", 14_110.0), ("api", 9_199.0), ("dead", 4_710.0), ("router-default", 4_555.0), ("shop", 4_508.0)];
const COMPAT: [&str; 3] =
    ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"];

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn table(t: &[(&str, f64)], times: f64) -> BTreeMap<String, f64> {
    t.iter().map(|(k, v)| (k.to_string(), v * times)).collect()
}

/// Runs `logmill replay --output influx` into `db` and returns its summary (stderr). Panics
/// unless it succeeded and reports every point written.
async fn replay(influx: &Influxd, db: &str, args: &[&str], files: &[&Path]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["replay", "--output", "influx", "--influx-url", &influx.url(), "--influx-db", db])
        .args(args)
        .args(files)
        // Only what the test says: no config or InfluxDB settings from the environment.
        .env_clear()
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let submitted = summary_number(&stderr, "influx");
    assert!(
        stderr.contains(&format!("{submitted} points submitted, {submitted} written, 0 dropped")),
        "{stderr}"
    );
    stderr
}

/// The first number after `label` on its line of the summary.
fn summary_number(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` in the summary:\n{summary}"));
    let number = line.trim_start()[label.len()..].split_whitespace().next().unwrap_or_default();
    number.parse().unwrap_or_else(|_| panic!("`{line}` has no number:\n{summary}"))
}

/// The rows of every series a query answers, each with the series' tags and its tag columns;
/// a field is an integer when `integer(column)` says so. Null values (a field a point lacks, an
/// aggregate over nothing) are left out, as the field is absent.
async fn rows(influx: &Influxd, db: &str, q: &str, integer: impl Fn(&str) -> bool) -> Vec<Row> {
    let json = influx.query(db, q).await;
    let result = &json["results"][0];
    assert!(result.get("partial").is_none(), "{q}: a partial answer (row limit?)");
    let mut rows = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        assert!(series.get("partial").is_none(), "{q}: a partial series (row limit?)");
        let columns: Vec<&str> =
            series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let mut tags = BTreeMap::new();
        for (k, v) in series["tags"].as_object().into_iter().flatten() {
            tags.insert(k.clone(), v.as_str().unwrap().to_owned());
        }
        for values in series["values"].as_array().unwrap() {
            let mut row = Row { time_ns: 0, tags: tags.clone(), fields: BTreeMap::new() };
            for (column, value) in columns.iter().zip(values.as_array().unwrap()) {
                match (*column, value) {
                    ("time", v) => row.time_ns = v.as_i64().unwrap(),
                    (_, Value::Null) => {}
                    (c, Value::String(s)) if access_reference::TAGS.contains(&c) => {
                        row.tags.insert(c.to_owned(), s.clone());
                    }
                    (c, v) if integer(c) => {
                        let n = v.as_i64().unwrap_or_else(|| panic!("{c} = {v} is not an integer"));
                        row.fields.insert(c.to_owned(), Num::Int(n));
                    }
                    (c, v) => {
                        let n = v.as_f64().unwrap_or_else(|| panic!("{c} = {v} is not a number"));
                        row.fields.insert(c.to_owned(), Num::Float(n));
                    }
                }
            }
            rows.push(row);
        }
    }
    rows
}

/// `router_requests` as InfluxDB sums it per `window_secs` window and series: what a dashboard
/// reads when points of one series were written more than once (evicted, or late).
async fn router_requests_per_window(influx: &Influxd, db: &str, window_secs: i64) -> Vec<Row> {
    let mut selected =
        vec!["sum(\"count\") AS \"count\"".to_owned(), "sum(\"bytes_sent\") AS \"bytes_sent\"".into()];
    for family in ["request_time", "upstream_time"] {
        selected.push(format!("sum(\"{family}_sum\") AS \"{family}_sum\""));
        selected.push(format!("max(\"{family}_max\") AS \"{family}_max\""));
        for name in access_reference::BUCKETS.iter().map(|(_, n)| *n).chain(["inf"]) {
            let field = format!("{family}_bucket_le_{name}");
            selected.push(format!("sum(\"{field}\") AS \"{field}\""));
        }
    }
    // The data is from 2026-11-21; GROUP BY time() needs a range.
    let q = format!(
        "SELECT {} FROM \"router_requests\" WHERE time >= '2026-11-21T00:00:00Z' AND time < '2026-11-22T00:00:00Z' \
         GROUP BY time({window_secs}s), \"app\", \"status_code\", \"method\", \"host\", \"consumer\" fill(none)",
        selected.join(", ")
    );
    rows(influx, db, &q, |c| c == "count" || c == "bytes_sent" || c.contains("_bucket_le_")).await
}

/// Every compat point and `sum("count")` add up to the data README's counts, `times` over.
async fn assert_reference_counts(influx: &Influxd, db: &str, times: f64) {
    for m in COMPAT {
        let q = format!("SELECT count(\"value\") FROM \"{m}\"");
        assert_eq!(influx.scalar(db, &q).await, LINES * times, "{m}");
    }
    let compat = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" GROUP BY \"status_code\"";
    assert_eq!(influx.grouped(db, compat, "status_code").await, table(&BY_STATUS, times));
    assert_eq!(influx.scalar(db, "SELECT sum(\"count\") FROM \"router_requests\"").await, LINES * times);
    let by = |tag: &str| format!("SELECT sum(\"count\") FROM \"router_requests\" GROUP BY \"{tag}\"");
    assert_eq!(influx.grouped(db, &by("status_code"), "status_code").await, table(&BY_STATUS, times));
    assert_eq!(influx.grouped(db, &by("app"), "app").await, table(&BY_APP, times));
}

/// A config file in `dir` with these `[aggregate]` settings.
fn aggregate_config(dir: &Path, settings: &str) -> PathBuf {
    let path = dir.join("logmill.toml");
    std::fs::write(&path, format!("[aggregate]\n{settings}\n")).unwrap();
    path
}

#[tokio::test]
async fn every_router_requests_field_survives_influxd() {
    let influx = Influxd::start().await;
    let access_log = testdata("access.log");
    replay(&influx, "fields", &["--host", "node-1"], &[&access_log]).await;

    // Types as the schema gives them: integers for counts and buckets, floats for seconds.
    let json = influx.query("fields", "SHOW FIELD KEYS FROM \"router_requests\"").await;
    let mut types = BTreeMap::new();
    for pair in json["results"][0]["series"][0]["values"].as_array().unwrap() {
        types.insert(pair[0].as_str().unwrap().to_owned(), pair[1].as_str().unwrap().to_owned());
    }
    for (field, kind) in &types {
        let integer = field == "count" || field == "bytes_sent" || field.contains("_bucket_le_");
        assert_eq!(kind, if integer { "integer" } else { "float" }, "{field}");
    }
    assert_eq!(types.len(), 2 + 2 * (5 + 12), "{types:?}");

    let stored =
        rows(&influx, "fields", "SELECT * FROM \"router_requests\"", |c| types[c] == "integer").await;
    let lines = access_reference::read_log(&std::fs::read_to_string(&access_log).unwrap());
    let want = access_reference::expected_series(&lines, 10, "node-1");
    let checked = access_reference::check_router_requests(&stored, &want, 10, "local");
    assert!(checked > 5_000, "only {checked} values checked");
    assert_reference_counts(&influx, "fields", 1.0).await;
}

#[tokio::test]
async fn odd_tag_values_come_back_exactly() {
    let influx = Influxd::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Spaces, commas, `=`, non-ASCII, quotes (plain bytes in a tag value) and a backslash
    // before an ordinary byte (the only place line protocol can carry one).
    let apps = ["my app", "a,b=c", "ünï cødé 日本", "say \"hi\"", "C:\\temp", "x=1, y=2"];
    let host = "node 1,rack=a\\b \"q\" ü";
    let mut log = String::new();
    let mut want = BTreeMap::new();
    for (i, app) in apps.iter().enumerate() {
        // A different number of lines per app, so that swapped values would show too.
        for j in 0..=i {
            log.push_str(&format!(
                "[2026-11-21T04:22:{:02}+00:00] - {app} - 127.0.0.1 - - - 200 - \"GET /{j} HTTP/1.1\" - 169 - \"-\" - \"curl\" - \"w\" - 127.0.0.1:1 - w - 0.001 - 0.002\n",
                21 + j
            ));
        }
        want.insert((app.to_string(), host.to_owned()), (i + 1) as f64);
    }
    let file = dir.path().join("odd.log");
    std::fs::write(&file, log).unwrap();
    let summary = replay(&influx, "odd", &["--host", host], &[&file]).await;
    assert_eq!(summary_number(&summary, "access lines"), 21, "{summary}");

    for (measurement, q) in [
        (
            "compat",
            "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" GROUP BY \"app\", \"host\"",
        ),
        ("router_requests", "SELECT sum(\"count\") FROM \"router_requests\" GROUP BY \"app\", \"host\""),
    ] {
        let mut got = BTreeMap::new();
        for row in rows(&influx, "odd", q, |_| false).await {
            let Some(&Num::Float(n)) = row.fields.values().next() else { panic!("{row:?}") };
            got.insert((row.tags["app"].clone(), row.tags["host"].clone()), n);
        }
        assert_eq!(got, want, "{measurement}");
    }
    let json = influx.query("odd", "SHOW TAG VALUES FROM \"router_requests\" WITH KEY = \"host\"").await;
    assert_eq!(json["results"][0]["series"][0]["values"], serde_json::json!([["host", host]]));
}

#[tokio::test]
async fn eviction_keeps_every_field_exact() {
    let influx = Influxd::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Two live series where a 10 s window holds dozens: nearly every line evicts one.
    let config = aggregate_config(dir.path(), "max_series = 2");
    let config = config.to_str().unwrap();
    let access_log = testdata("access.log");
    let summary = replay(&influx, "evicted", &["--config", config, "--host", "node-1"], &[&access_log]).await;
    assert!(summary_number(&summary, "series evicted") > 10_000, "{summary}");
    assert_reference_counts(&influx, "evicted", 1.0).await;
    let lines = access_reference::read_log(&std::fs::read_to_string(&access_log).unwrap());
    let want = access_reference::expected_series(&lines, 10, "node-1");
    let stored = router_requests_per_window(&influx, "evicted", 10).await;
    access_reference::check_router_requests(&stored, &want, 10, "local");
}

/// Lines out of order. A line's event time is its compat points' timestamp (the only time a
/// consumer of those points has, so that replay and agent → NSQ → consume agree), and the key
/// guard keeps a file's timestamps increasing: a line older than the one before it is stamped
/// 1 ns after it, so it counts in the newest window seen, never late. Counts stay exact, and
/// every field matches the lines grouped by the timestamps worked out here from design.md's
/// rule (access second + byte offset mod 10⁹, then `max(own, previous + 1)`).
#[tokio::test]
async fn shuffled_lines_keep_every_field_exact() {
    let influx = Influxd::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The reference lines in a fixed pseudo-random order (xorshift, Fisher-Yates), 1 s windows.
    let text = std::fs::read_to_string(testdata("access.log")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..lines.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lines.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let shuffled = dir.path().join("shuffled.log");
    std::fs::write(&shuffled, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let config = aggregate_config(dir.path(), "window_secs = 1\nlateness_secs = 0");
    let config = config.to_str().unwrap();
    let summary = replay(&influx, "late", &["--config", config, "--host", "node-1"], &[&shuffled]).await;
    assert_eq!(summary_number(&summary, "late lines"), 0, "{summary}");
    assert_reference_counts(&influx, "late", 1.0).await;
    let mut read = access_reference::read_log(&std::fs::read_to_string(&shuffled).unwrap());
    let (mut offset, mut last) = (0i64, i64::MIN);
    for (line, text) in read.iter_mut().zip(&lines) {
        let own = line.secs * 1_000_000_000 + offset % 1_000_000_000;
        last = own.max(last.saturating_add(1));
        line.secs = last.div_euclid(1_000_000_000);
        offset += text.len() as i64 + 1;
    }
    let want = access_reference::expected_series(&read, 1, "node-1");
    let stored = router_requests_per_window(&influx, "late", 1).await;
    access_reference::check_router_requests(&stored, &want, 1, "local");
}

#[tokio::test]
async fn the_files_of_one_replay_never_share_a_key() {
    let influx = Influxd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let access_log = testdata("access.log");
    // The same file twice (as two files: a copy, since a rotated log has another name).
    let copy = dir.path().join("access.log.1");
    std::fs::copy(&access_log, &copy).unwrap();
    let summary = replay(&influx, "twice", &["--host", "node-1"], &[&access_log, &copy]).await;
    assert_eq!(summary_number(&summary, "access lines"), 2 * 37_082, "{summary}");
    assert_reference_counts(&influx, "twice", 2.0).await;

    // A file cut in two at a line boundary replays to the very bytes of the whole file: offsets
    // run on across the files, so the halves write the whole file's keys. And every compat key
    // of the two copies is distinct.
    let text = std::fs::read(&access_log).unwrap();
    let middle = text.len() / 2;
    let cut = middle + text[middle..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let (first, second) = (dir.path().join("a.log"), dir.path().join("b.log"));
    std::fs::write(&first, &text[..cut]).unwrap();
    std::fs::write(&second, &text[cut..]).unwrap();
    let stdout = |files: &[&Path]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
            .args(["replay", "--host", "node-1"])
            .args(files)
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(stdout(&[&access_log]) == stdout(&[&first, &second]), "the halves replay differently");
    let both = stdout(&[&access_log, &copy]);
    let mut keys = HashSet::new();
    for line in both.lines().filter(|l| l.starts_with("deis_router_")) {
        let (series, rest) = line.split_once(" value=").unwrap();
        let time = rest.rsplit(' ').next().unwrap();
        assert!(keys.insert((series.to_owned(), time.to_owned())), "two points with the key of {line}");
    }
    assert_eq!(keys.len(), 2 * 3 * 37_082);
}

//! `logmill run --once` on the repository's config (`testdata/run.toml`): the agent and the
//! consumer's core in one process, no server. What it prints is checked against what is known
//! of the test data independently of logmill: the reference router log's counts (from the
//! data's README, counted from the raw file) and the app log's lines read here with serde_json.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};

// From testdata's README, counted from the raw file.
const ACCESS_LINES: usize = 37_082;
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

fn run_once(root: &Path) -> (Vec<u8>, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["run", "--once", "--config", "testdata/run.toml"])
        .current_dir(root)
        .output()
        .expect("logmill runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "logmill run --once failed: {}\n{stderr}", out.status);
    (out.stdout, stderr, started.elapsed())
}

fn of<'a>(points: &'a [Point], m: &'a str) -> impl Iterator<Item = &'a Point> + 'a {
    points.iter().filter(move |p| p.measurement == m)
}

fn int(p: &Point, field: &str) -> i64 {
    match p.field_value(field) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{field} of {p:?}: {other:?}"),
    }
}

#[test]
fn run_once_prints_what_the_test_data_holds_and_ends() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (stdout, stderr, took) = run_once(root);
    let points: Vec<Point> =
        parse_lines(&stdout).map(|(n, p)| p.unwrap_or_else(|e| panic!("line {n}: {e}"))).collect();

    // One compat point of each kind per access line.
    for m in ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"] {
        assert_eq!(of(&points, m).count(), ACCESS_LINES, "{m}");
    }
    // router_requests counts every access line once, by status as the data's README says.
    let mut by_status: BTreeMap<&str, i64> = BTreeMap::new();
    for p in of(&points, "router_requests") {
        *by_status.entry(p.tag_value("status_code").expect("status_code")).or_default() += int(p, "count");
    }
    assert_eq!(by_status, BTreeMap::from(BY_STATUS), "router_requests by status");

    // app_log_lines: the app's records by stream and level, read here from the file.
    let text = std::fs::read_to_string(root.join("testdata/app-docker.log")).unwrap();
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let log = record["log"].as_str().unwrap();
        let level = serde_json::from_str::<serde_json::Value>(log)
            .ok()
            .and_then(|v| v["level"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *expected.entry((record["stream"].as_str().unwrap().to_owned(), level)).or_default() += 1;
    }
    let mut got: BTreeMap<(String, String), i64> = BTreeMap::new();
    for p in of(&points, "app_log_lines") {
        assert_eq!(p.tag_value("app"), Some("shop"), "{p:?}");
        let key = (p.tag_value("stream").unwrap().to_owned(), p.tag_value("level").unwrap_or("").to_owned());
        *got.entry(key).or_default() += int(p, "count");
    }
    assert_eq!(got, expected, "app_log_lines by stream and level");
    assert!(stderr.contains("every file read to its end"), "{stderr}");
    eprintln!("logmill run --once: {} points in {:.1} s", points.len(), took.as_secs_f64());
}

#[test]
fn run_once_gives_replays_compat_points_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (stdout, _, _) = run_once(root);
    let replay = Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["replay", "--host", "node-1", "testdata/router-docker.log"])
        .current_dir(root)
        .output()
        .expect("logmill replay runs");
    assert!(replay.status.success());
    let compat = |out: &[u8]| {
        let mut lines: Vec<String> = String::from_utf8_lossy(out)
            .lines()
            .filter(|l| l.starts_with("deis_router_"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let (ran, replayed) = (compat(&stdout), compat(&replay.stdout));
    assert_eq!(ran.len(), 3 * ACCESS_LINES);
    assert!(ran == replayed, "run and replay differ in their compat points");
}

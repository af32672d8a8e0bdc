//! Compat point keys stay unique when timestamps repeat: InfluxDB keeps one point per
//! (measurement, tag set, timestamp), so two access lines that share a key would store one
//! request. Checked where it matters, in a real `influxd`.

#[path = "support/influxd.rs"]
mod influxd;

use std::io::Write;
use std::process::Command;

use influxd::Influxd;

/// The same access line, `n` times, in Docker json-file records that all carry the same
/// runtime time (a runtime with a coarse clock, or a replayed copy).
fn docker_file_of_identical_records(n: usize) -> tempfile::NamedTempFile {
    let line = r#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - \"GET /fast HTTP/1.1\" - 169 - \"-\" - \"curl/8.5.0\" - \"web.example.com\" - 127.0.0.1:19001 - web.example.com - 0.001 - 0.002"#;
    let record = format!(r#"{{"log":"{line}\n","stream":"stderr","time":"2026-11-21T04:22:21.000001000Z"}}"#);
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for _ in 0..n {
        writeln!(file, "{record}").expect("write");
    }
    file.flush().expect("flush");
    file
}

#[tokio::test]
async fn identical_runtime_times_store_one_point_per_line() {
    const LINES: usize = 500;
    let file = docker_file_of_identical_records(LINES);
    let influxd = Influxd::start().await;
    let output = Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["replay", "--host", "node-1", "--output", "influx", "--influx-url"])
        .arg(influxd.url())
        .args(["--influx-db", "keys"])
        .arg(file.path())
        .env_remove("INFLUXDB_URLS")
        .env_remove("INFLUXDB_URL")
        .output()
        .expect("run logmill");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    for measurement in
        ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"]
    {
        let q = format!(r#"SELECT count("value") FROM "{measurement}""#);
        assert_eq!(influxd.scalar("keys", &q).await, LINES as f64, "{measurement}: {stderr}");
    }
    // Every point has its own timestamp: the runtime time, then one nanosecond apart.
    let json = influxd.query("keys", r#"SELECT "value" FROM "deis_router_response_time_ms""#).await;
    let rows = json["results"][0]["series"][0]["values"].as_array().expect("rows");
    let times: Vec<i64> = rows.iter().map(|r| r[0].as_i64().expect("epoch ns")).collect();
    // date -u -d '2026-11-21 04:22:21' +%s → 1795234941; the record's fraction is 1 µs.
    let first = 1_795_234_941_000_001_000;
    assert_eq!(times, (0..LINES as i64).map(|i| first + i).collect::<Vec<_>>());
    assert_eq!(influxd.scalar("keys", r#"SELECT sum("count") FROM "router_requests""#).await, LINES as f64);
}

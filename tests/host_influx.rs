//! Host points written by `logmill collect --once --output influx` into a real influxd are read
//! back by queries written for Telegraf's schema, and InfluxDB types their fields as Telegraf's
//! (integer counters, float percentages): what the old dashboards need.

#[path = "support/influxd.rs"]
mod influxd;

use std::collections::BTreeMap;
use std::process::Command;

use influxd::Influxd;
use serde_json::Value;

const DB: &str = "telegraf_compat";

/// `SHOW FIELD KEYS FROM "m"` as field → type.
async fn field_types(influxd: &Influxd, measurement: &str) -> BTreeMap<String, String> {
    let json = influxd.query(DB, &format!("SHOW FIELD KEYS FROM \"{measurement}\"")).await;
    let rows = json["results"][0]["series"][0]["values"].as_array().cloned().unwrap_or_default();
    rows.iter().filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_str()?.to_owned()))).collect()
}

async fn strings(influxd: &Influxd, q: &str) -> Vec<String> {
    let json = influxd.query(DB, q).await;
    let rows = json["results"][0]["series"][0]["values"].as_array().cloned().unwrap_or_default();
    rows.iter().filter_map(|r| r[0].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_points_answer_telegraf_queries() {
    let influxd = Influxd::start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["collect", "--once", "--output", "influx", "--host", "node-1", "--influx-db", DB])
        .args(["--influx-url", &influxd.url()])
        .env_remove("LOGMILL_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "collect --once: {stderr}");
    assert!(stderr.contains("points submitted"), "the delivery summary: {stderr}");

    // Every Telegraf host measurement arrived (the database was created on first write).
    let measurements = strings(&influxd, "SHOW MEASUREMENTS").await;
    for m in ["cpu", "disk", "diskio", "kernel", "mem", "net", "netstat", "processes", "swap", "system"] {
        assert!(measurements.contains(&m.to_owned()), "{m} missing from {measurements:?}");
    }

    // Dashboard queries written for Telegraf.
    let usage =
        influxd.scalar(DB, "SELECT mean(\"usage_user\") FROM \"cpu\" WHERE \"cpu\"='cpu-total'").await;
    assert!((0.0..=100.0).contains(&usage), "usage_user {usage}");
    let used = influxd.scalar(DB, "SELECT last(\"used_percent\") FROM \"mem\" WHERE \"host\"='node-1'").await;
    assert!(used > 0.0 && used < 100.0, "used_percent {used}");
    let load = influxd.scalar(DB, "SELECT last(\"load1\") FROM \"system\"").await;
    assert!(load >= 0.0);
    let root = influxd.scalar(DB, "SELECT last(\"used_percent\") FROM \"disk\" WHERE \"path\"='/'").await;
    assert!(root > 0.0 && root < 100.0, "disk / used_percent {root}");
    let by_cpu =
        influxd.grouped(DB, "SELECT last(\"usage_idle\") FROM \"cpu\" GROUP BY \"cpu\"", "cpu").await;
    assert!(by_cpu.contains_key("cpu-total") && by_cpu.contains_key("cpu0"), "{by_cpu:?}");
    // The three legacy `system` points share one key: InfluxDB merges them into one row.
    let rows = influxd.scalar(DB, "SELECT count(\"uptime\") FROM \"system\"").await;
    assert_eq!(rows, 1.0);
    let format = influxd.query(DB, "SELECT last(\"uptime_format\") FROM \"system\"").await;
    assert!(
        matches!(&format["results"][0]["series"][0]["values"][0][1], Value::String(s) if s.contains(':'))
    );

    // Field types as InfluxDB stored them: Telegraf's.
    let mem = field_types(&influxd, "mem").await;
    assert_eq!(mem["total"], "integer");
    assert_eq!(mem["used"], "integer");
    assert_eq!(mem["used_percent"], "float");
    assert_eq!(mem["available_percent"], "float");
    let system = field_types(&influxd, "system").await;
    assert_eq!(system["load1"], "float");
    assert_eq!(system["n_cpus"], "integer");
    assert_eq!(system["uptime"], "integer");
    assert_eq!(system["uptime_format"], "string");
    let cpu = field_types(&influxd, "cpu").await;
    assert!(cpu.values().all(|t| t == "float"), "{cpu:?}");
    for m in ["diskio", "net", "netstat", "processes", "kernel"] {
        let types = field_types(&influxd, m).await;
        let not_int: Vec<_> =
            types.iter().filter(|(k, t)| *t != "integer" && !k.starts_with("io_")).collect();
        assert!(not_int.is_empty(), "{m}: {not_int:?}");
    }
    let disk_tags = strings(&influxd, "SHOW TAG KEYS FROM \"disk\"").await;
    for tag in ["device", "fstype", "host", "mode", "path"] {
        assert!(disk_tags.contains(&tag.to_owned()), "{disk_tags:?}");
    }

    // One timestamp per cycle: every measurement's point carries the same time.
    let times = influxd
        .query(DB, "SELECT last(\"total\") FROM \"mem\"; SELECT last(\"boot_time\") FROM \"kernel\"")
        .await;
    let time = |i: usize| times["results"][i]["series"][0]["values"][0][0].as_i64().unwrap();
    assert_eq!(time(0), time(1));
}

//! The Grafana dashboards of `deploy/dashboards/` against a real InfluxDB fed by logmill.
//!
//! One real `influxd` (the fixture) is loaded the way a cluster loads it: `logmill replay
//! --output influx` of the reference router log (the `deis_router_*` and `router_requests`
//! series), and `logmill collect --output influx` running for two collection cycles or more
//! with the host inputs, the kubelet input (against a stand-in serving
//! `testdata/kubelet/summary.json` on the read-only port's plain HTTP) and the nsqd input
//! against a real nsqd v1.3.0 that has topics, channels and messages waiting. Two cycles at
//! least, in different 10 s buckets, because rate panels (`non_negative_derivative`) need two
//! samples.
//!
//! Then every InfluxQL query of every dashboard (panels and variables) is run the way Grafana
//! runs it: `$timeFilter` becomes a range covering the data the dashboard reads (the router
//! data is from 2026-11-21, the collected data from now), `$__interval` 10s (the datasource's
//! `timeInterval`, the router windows and the collection interval), `$__interval_ms` 10000, and
//! each variable the values its own query returns ("All"). A query that fails or returns no
//! value is a failure, and all of them are listed. The one exception is said aloud: queries
//! that read only logmill's own `logmill_*` measurements, which the long-running agent and
//! consumer write, are listed as not covered when InfluxDB has no such measurement, never passed
//! silently. Two sources of `logmill_*` data exist already: an agent stand-in (the real tail
//! engine following a file, the real NSQ producer publishing to the nsqd, their counters turned
//! into points by `Telemetry::points` and written as the agent will write them), and, where the
//! binary has `logmill consume`, a consumer on the seeded nsqd writing its own counters every
//! second.

mod support;

#[path = "support/influxd.rs"]
mod influxd;
#[path = "support/tail_harness.rs"]
mod tail_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use influxd::Influxd;
use logmill::config::RawConfig;
use logmill::influx::writer::InfluxWriter;
use logmill::nsq::producer::{Producer, ProducerSettings};
use logmill::tail::WatchMode;
use logmill::telemetry::Telemetry;
use regex::Regex;
use serde_json::Value;
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const DB: &str = "kubernetes";
const DASHBOARDS: [&str; 4] = ["router-compatible.json", "router.json", "nodes.json", "logmill.json"];
/// Grafana's `$__interval` here: the datasource's minimum (10 s, provisioned as
/// `timeInterval`), which is also the router window and the collection interval.
const INTERVAL: &str = "10s";
const INTERVAL_MS: &str = "10000";
/// How long the collector may take to write two cycles in different 10 s buckets.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `logmill_*` measurements the dashboards read that no code on this branch registers yet,
/// with who will: checked against `src/` so that a misspelt name fails instead of waiting
/// forever for data.
const PENDING: [(&str, &str); 5] = [
    ("logmill_lines_rejected_total", "logmill agent (reason label, as style.md names it)"),
    ("logmill_consume_write_latency_ms_total", "logmill consume"),
    ("logmill_consume_writes_total", "logmill consume"),
    ("logmill_consume_write_latency_last_ms", "logmill consume"),
    ("logmill_consume_messages_held", "logmill consume"),
];
const PENDING_MORE: [(&str, &str); 2] = [
    ("logmill_consume_messages_requeued_total", "logmill consume"),
    ("logmill_consume_lines_invalid_total", "logmill consume"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(name: &str) -> Value {
    let path = repo("deploy/dashboards").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Whether a target is a Grafana server-side expression (`$A / $B`) rather than a query.
fn is_expression(target: &Value) -> bool {
    target["datasource"]["type"] == "__expr__"
}

/// (panel title, refId, query) of every InfluxQL target.
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten().filter(|t| !is_expression(t)) {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let ref_id = target["refId"].as_str().unwrap_or_default().to_owned();
            out.push((title, ref_id, target["query"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"].as_array().into_iter().flatten().collect()
}

/// The measurements a query reads (`FROM "m"`, subqueries included).
fn measurements(query: &str) -> BTreeSet<String> {
    let from = Regex::new(r#"FROM "([^"]+)""#).unwrap();
    from.captures_iter(query).map(|c| c[1].to_owned()).collect()
}

#[test]
fn dashboards_are_wired_to_the_datasource_variable() {
    let datasource = serde_json::json!({"type": "influxdb", "uid": "${datasource}"});
    let mut uids = BTreeSet::new();
    let used_var = Regex::new(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let macros = ["timeFilter", "__interval", "__interval_ms", "interval", "tag_", "col"];
    for name in DASHBOARDS {
        let d = load(name);
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
        assert!(d["id"].is_null(), "{name}: a provisioned dashboard carries no id");
        let vars = variables(&d);
        let ds = vars
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(
            (ds["type"].as_str(), ds["query"].as_str()),
            (Some("datasource"), Some("influxdb")),
            "{name}"
        );
        let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        for var in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(var["datasource"], datasource, "{name}: variable {}", var["name"]);
        }
        let mut used = BTreeSet::new();
        for panel in panels(&d).into_iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or_default();
            assert_eq!(panel["datasource"], datasource, "{name}: panel {title}");
            let targets =
                panel["targets"].as_array().unwrap_or_else(|| panic!("{name}: {title}: no targets"));
            assert!(!targets.is_empty(), "{name}: {title}: no targets");
            let ref_ids: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
            assert_eq!(ref_ids.len(), targets.len(), "{name}: {title}: refIds not unique");
            for t in targets.iter().filter(|t| is_expression(t)) {
                // An expression computes from the panel's queries, which are run below.
                let math = t["expression"].as_str().unwrap_or_default();
                assert_eq!(t["type"], "math", "{name}: {title}");
                let refs: Vec<&str> =
                    used_var.captures_iter(math).map(|c| c.get(1).unwrap().as_str()).collect();
                assert!(!refs.is_empty(), "{name}: {title}: expression {math:?} reads no query");
                for r in refs {
                    let source = targets.iter().find(|t| t["refId"] == r);
                    let source = source.unwrap_or_else(|| panic!("{name}: {title}: {math:?}: no query {r}"));
                    assert!(!is_expression(source), "{name}: {title}: {math:?}: {r} is not a query");
                }
            }
            for t in targets.iter().filter(|t| !is_expression(t)) {
                assert_eq!(t["datasource"], datasource, "{name}: {title} {}", t["refId"]);
                assert_eq!(t["rawQuery"], true, "{name}: {title}: only raw InfluxQL is run by the tests");
                let q = t["query"].as_str().unwrap_or_default();
                assert!(q.starts_with("SELECT "), "{name}: {title}: {q:?}");
                assert!(q.contains("$timeFilter"), "{name}: {title}: no $timeFilter: {q}");
                for c in used_var.captures_iter(q) {
                    let var = c.get(1).unwrap().as_str();
                    if !macros.iter().any(|m| var == *m || (m.ends_with('_') && var.starts_with(m))) {
                        assert!(defined.contains(var), "{name}: {title}: ${var} is not a variable");
                        assert!(
                            q.contains(&format!("=~ /^${var}$/")),
                            "{name}: {title}: ${var} not as =~ /^$var$/"
                        );
                        used.insert(var.to_owned());
                    }
                }
            }
        }
        for var in &defined {
            assert!(*var == "datasource" || used.contains(*var), "{name}: variable {var} is never used");
        }
    }
}

#[test]
fn every_logmill_measurement_is_registered_or_pending() {
    // The names the code registers: string literals under src/.
    let mut source = String::new();
    let mut dirs = vec![repo("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let pending: BTreeMap<&str, &str> = PENDING.iter().chain(&PENDING_MORE).copied().collect();
    let mut report = String::new();
    for name in DASHBOARDS {
        for (title, _, q) in queries(&load(name)) {
            for m in measurements(&q).into_iter().filter(|m| m.starts_with("logmill_")) {
                let registered = source.contains(&format!("\"{m}\""));
                match (registered, pending.get(m.as_str())) {
                    (true, _) => {}
                    (false, Some(who)) => {
                        writeln!(report, "  {m} ({name}: {title}): not registered on this branch; {who} will")
                            .unwrap()
                    }
                    (false, None) => panic!("{name}: {title}: {m} is neither registered in src/ nor pending"),
                }
            }
        }
    }
    if !report.is_empty() {
        let _ = std::io::stderr().write_all(
            format!("\nNOTE (dashboards): panels on names not yet registered:\n{report}").as_bytes(),
        );
    }
}

/// `logmill check-config` accepts every configuration file the manifests mount.
#[test]
fn deploy_configs_validate() {
    for file in [
        "deploy/base/agent/logmill.toml",
        "deploy/base/consume/logmill.toml",
        "deploy/base/nsq/nsq-stats.toml",
        "deploy/overlays/deis/agent.toml",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
            .args(["check-config"])
            .arg(repo(file))
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The agent's telemetry, by the agent's own parts: the tail engine following a CRI log, the
/// NSQ producer publishing to the nsqd, and logmill's InfluxDB writer, which sends the points
/// `Telemetry::points` makes of their counters (and of its own), as the long-running roles
/// will on their interval.
struct AgentStandIn {
    tail: tail_harness::Run,
    log: tail_harness::Writer,
    telemetry: Telemetry,
    influx: InfluxWriter,
    _producer: Producer,
    cancel: CancellationToken,
}

async fn agent_stand_in(dir: &Path, nsqd: &Nsqd, influx_url: &str) -> AgentStandIn {
    let logs = dir.join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    let glob = logs.join("*.log");
    let tail =
        tail_harness::start(tail_harness::settings(&glob, &dir.join("state"), WatchMode::Notify), true);
    let mut log = tail_harness::Writer::create(&logs.join("web-1_foo_web-0123.log"), "web");
    log.write(200);
    let telemetry = Telemetry::default();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let mut raw = RawConfig::load(None).unwrap();
    raw.influx.urls = vec![influx_url.to_owned()];
    raw.influx.database = DB.to_owned();
    raw.influx.flush_interval_ms = 100;
    let settings = raw.influx.validate().unwrap().expect("an InfluxDB URL");
    let influx = InfluxWriter::start(settings, &telemetry, &tracker, cancel.clone()).unwrap();
    let settings =
        ProducerSettings { addresses: vec![nsqd.tcp_addr().to_string()], ..ProducerSettings::default() };
    let producer = Producer::start(settings, &telemetry, &tracker, cancel.clone());
    for i in 0..10 {
        producer.publish("logs", Bytes::from(format!("{{\"log\":\"agent line {i}\\n\"}}"))).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while tail.telemetry.value("logmill_lines_read_total", &[]) != Some(200) {
        assert!(Instant::now() < deadline, "the tail engine did not read 200 lines:\n{}", tail.dump());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    AgentStandIn { tail, log, telemetry, influx, _producer: producer, cancel }
}

/// Line protocol of the stand-in's counters now, `host=node-1`, and the number of points.
fn agent_points(agent: &AgentStandIn) -> (String, usize) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let escape = |s: &str| s.replace(',', "\\,").replace('=', "\\=").replace(' ', "\\ ");
    let mut body = String::new();
    let points: Vec<_> = agent
        .tail
        .telemetry
        .points("node-1", now)
        .into_iter()
        .chain(agent.telemetry.points("node-1", now))
        .collect();
    for p in &points {
        body.push_str(&escape(&p.measurement));
        for (k, v) in &p.tags {
            write!(body, ",{}={}", escape(k), escape(v)).unwrap();
        }
        let Some(logmill::metrics::point::FieldValue::Int(v)) = p.field_value("value") else {
            panic!("telemetry point without an integer value: {p:?}")
        };
        writeln!(body, " value={v}i {now}").unwrap();
    }
    (body, points.len())
}

/// Sends the stand-in's counters through logmill's writer and waits for InfluxDB's answer.
async fn send_agent_points(agent: &AgentStandIn) {
    let (body, n) = agent_points(agent);
    let outcome = agent.influx.submit(Bytes::from(body), n).await.expect("submit").await;
    assert_eq!(outcome.written, n as u64, "{outcome:?}");
}

/// Serves `testdata/kubelet/summary.json` at `/stats/summary`, as a kubelet's read-only port.
async fn kubelet_stand_in() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let summary = std::fs::read(repo("testdata/kubelet/summary.json")).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let summary = summary.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let (status, body) = if buf.starts_with(b"GET /stats/summary ") {
                    ("200 OK", summary)
                } else {
                    ("404 Not Found", b"not found".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// An nsqd as a cluster's looks to the dashboards: both topics, logmill's channel and
/// telegraf's old `consumer` channel, messages waiting in each.
async fn seed_nsqd(nsqd: &Nsqd) {
    let client = reqwest::Client::new();
    let http = format!("http://{}", nsqd.http_addr());
    for (topic, channel) in [("logs", "logmill"), ("metrics", "logmill"), ("metrics", "consumer")] {
        for path in
            [format!("topic/create?topic={topic}"), format!("channel/create?topic={topic}&channel={channel}")]
        {
            let answer = client.post(format!("{http}/{path}")).send().await.expect("nsqd HTTP");
            assert!(answer.status().is_success(), "POST /{path}: {}", answer.status());
        }
    }
    let metrics: Vec<Bytes> =
        (0..20).map(|i| Bytes::from(format!("app_metric,app=web value={i}i"))).collect();
    nsqd.put("metrics", &metrics).await;
    let logs: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("{{\"log\":\"line {i}\\n\"}}"))).collect();
    nsqd.put("logs", &logs).await;
}

/// How many 10 s buckets of the last hour hold `field` of `measurement`.
async fn buckets(influx: &Influxd, measurement: &str, field: &str) -> usize {
    let q = format!(
        "SELECT count(\"{field}\") FROM \"{measurement}\" WHERE time > now() - 1h GROUP BY time(10s) fill(none)"
    );
    let Ok(json) = influx.try_query(DB, &q).await else { return 0 };
    json["results"][0]["series"][0]["values"].as_array().map_or(0, Vec::len)
}

/// Whether the binary has the subcommand (the roles land one by one).
fn has_subcommand(name: &str) -> bool {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_logmill")).args([name, "--help"]).output().unwrap();
    out.status.success()
}

/// Starts the logmill binary with `args`, no environment, its stderr in `log` (a file, so
/// that a chatty process never blocks on a full pipe).
fn spawn_logmill(args: &[&str], log: &Path) -> tokio::process::Child {
    let stderr = std::fs::File::create(log).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// SIGTERM (the writer answers what it holds), then the exit status and what it logged.
async fn stop(mut child: tokio::process::Child, log: &Path) -> (std::process::ExitStatus, String) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, not reaped yet, so the pid is still its own.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("logmill stops within 30 s of SIGTERM")
        .unwrap();
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

/// The first and last timestamps (ns) of a measurement, if it has points.
async fn extent(influx: &Influxd, measurement: &str) -> Option<(i64, i64)> {
    let mut ends = Vec::new();
    for order in ["ASC", "DESC"] {
        let q = format!("SELECT * FROM \"{measurement}\" ORDER BY time {order} LIMIT 1");
        let json = influx.query(DB, &q).await;
        ends.push(json["results"][0]["series"][0]["values"][0][0].as_i64()?);
    }
    Some((ends[0], ends[1]))
}

/// A value regex-escaped as Grafana escapes a multi-value variable's values for `=~`.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rows of the first statement that hold at least one value besides `time`.
fn rows_with_values(json: &Value) -> usize {
    let mut rows = 0;
    for series in json["results"][0]["series"].as_array().into_iter().flatten() {
        let columns: Vec<&str> =
            series["columns"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for row in series["values"].as_array().into_iter().flatten() {
            let values = row.as_array().into_iter().flatten().zip(&columns);
            if values.filter(|(_, c)| **c != "time").any(|(v, _)| !v.is_null()) {
                rows += 1;
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data() {
    let influx = Influxd::start().await;
    influx.create_database(DB).await;
    let nsqd = Nsqd::start(NsqdOptions::default()).await;
    match &nsqd {
        Some(nsqd) => seed_nsqd(nsqd).await,
        None => nsqd::skip("the nsq_* panels of every_dashboard_query_returns_data", "nsqd"),
    }
    let kubelet = kubelet_stand_in().await;
    let dir = tempfile::tempdir().unwrap();

    // logmill consume, where this binary has it, writing its own counters every second.
    let consume_log = dir.path().join("consume.log");
    let consume = match &nsqd {
        Some(nsqd) if has_subcommand("consume") => {
            let config = dir.path().join("consume.toml");
            std::fs::write(&config, "[telemetry]\nlisten = \"\"\n\n[consume]\ntelemetry_interval_secs = 1\n")
                .unwrap();
            let (tcp, url) = (nsqd.tcp_addr().to_string(), influx.url());
            let args =
                ["consume", "--config", config.to_str().unwrap(), "--nsqd", &tcp, "--channel", "logmill"];
            let influx_args = ["--influx-url", &url, "--influx-db", DB, "--instance", "dashboards-test"];
            Some(spawn_logmill(&[&args[..], &influx_args[..]].concat(), &consume_log))
        }
        _ => {
            let _ = std::io::stderr().write_all(
                b"\nNOTE (dashboards): no `logmill consume` in this binary (or no nsqd): the consumer's panels are not fed\n",
            );
            None
        }
    };

    let mut agent = match &nsqd {
        Some(nsqd) => Some(agent_stand_in(dir.path(), nsqd, &influx.url()).await),
        None => None,
    };

    // The collectors, every 5 s: three cycles always span two 10 s buckets.
    let config = dir.path().join("collect.toml");
    let mut text = format!("[telemetry]\nlisten = \"\"\n\n[collect]\ninterval_ms = 5000\n\n[collect.kubelet]\nurl = \"{kubelet}\"\n");
    if let Some(nsqd) = &nsqd {
        write!(text, "\n[collect.nsqd]\nendpoints = [\"{}\"]\n", nsqd.http_addr()).unwrap();
    }
    std::fs::write(&config, text).unwrap();
    let collect_log = dir.path().join("collect.log");
    let url = influx.url();
    let collect = spawn_logmill(
        &["collect", "--config", config.to_str().unwrap(), "--output", "influx", "--host", "node-1"]
            .into_iter()
            .chain(["--influx-db", DB, "--influx-url", &url])
            .collect::<Vec<_>>(),
        &collect_log,
    );

    // Meanwhile, the router data.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args([
            "replay",
            "--host",
            "node-1",
            "--output",
            "influx",
            "--influx-db",
            DB,
            "--influx-url",
            &influx.url(),
        ])
        .arg(repo("testdata/access.log"))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));

    let started = Instant::now();
    let mut needed = vec![("system", "load1"), ("kubernetes_node", "memory_working_set_bytes")];
    if nsqd.is_some() {
        needed.push(("nsq_channel", "depth"));
    }
    if consume.is_some() {
        needed.push(("logmill_consume_writes_total", "value"));
    }
    if agent.is_some() {
        needed.push(("logmill_lines_read_total", "value"));
    }
    loop {
        if let Some(agent) = &mut agent {
            // The node goes on logging; the agent's counters go out as it will send them.
            agent.log.write(20);
            send_agent_points(agent).await;
        }
        let mut waiting = Vec::new();
        for (m, f) in &needed {
            if buckets(&influx, m, f).await < 2 {
                waiting.push(*m);
            }
        }
        if waiting.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < COLLECT_TIMEOUT,
            "{waiting:?}: not in two 10 s buckets within {COLLECT_TIMEOUT:?}\ncollect: {}\nconsume: {}",
            std::fs::read_to_string(&collect_log).unwrap_or_default(),
            std::fs::read_to_string(&consume_log).unwrap_or_default(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, log) = stop(collect, &collect_log).await;
    assert!(status.success(), "collect: {status}: {log}");
    if let Some(consume) = consume {
        let (status, log) = stop(consume, &consume_log).await;
        assert!(status.success(), "consume: {status}: {log}");
    }
    if let Some(agent) = agent {
        agent.cancel.cancel();
        agent.tail.stop().await;
    }

    let present: BTreeSet<String> = {
        let json = influx.query(DB, "SHOW MEASUREMENTS").await;
        json["results"][0]["series"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r[0].as_str().map(str::to_owned))
            .collect()
    };

    let leftover = Regex::new(r"\$[A-Za-z_{]").unwrap();
    let mut failures = Vec::new();
    let mut not_covered = Vec::new();
    let mut passed = 0;
    let mut report = String::new();
    for name in DASHBOARDS {
        let dashboard = load(name);
        let all: Vec<(String, String, String)> = queries(&dashboard);
        // The time range: from the first to the last point the dashboard's measurements hold.
        let mut range: Option<(i64, i64)> = None;
        for m in all.iter().flat_map(|(_, _, q)| measurements(q)).collect::<BTreeSet<_>>() {
            if let Some((first, last)) = extent(&influx, &m).await {
                range = Some(range.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
            }
        }
        // No data at all: the range does not matter, every query is judged below.
        let (first, last) = range.unwrap_or((0, 0));
        let time_filter =
            format!("time >= {}ms and time <= {}ms", first / 1_000_000 - 60_000, last / 1_000_000 + 60_000);
        let expand = |q: &str, values: &BTreeMap<String, Vec<String>>| {
            let mut q = q
                .replace("$timeFilter", &time_filter)
                .replace("$__interval_ms", INTERVAL_MS)
                .replace("$__interval", INTERVAL)
                .replace("$interval", INTERVAL);
            for (var, vals) in values {
                let all = vals.iter().map(|v| regex_escape(v)).collect::<Vec<_>>().join("|");
                q = q.replace(&format!("/^${var}$/"), &format!("/^({all})$/"));
            }
            q
        };
        // Variables: their own queries, which must answer values too.
        let mut values = BTreeMap::new();
        for var in variables(&dashboard).into_iter().filter(|v| v["type"] == "query") {
            let var_name = var["name"].as_str().unwrap().to_owned();
            let q = var["query"].as_str().unwrap();
            match influx.try_query(DB, q).await {
                Ok(json) => {
                    let vals: Vec<String> = json["results"][0]["series"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["values"].as_array().into_iter().flatten())
                        .filter_map(|r| r[1].as_str().map(str::to_owned))
                        .collect();
                    if vals.is_empty() {
                        failures.push(format!("{name}: variable ${var_name}: {q}: no values"));
                    } else {
                        passed += 1;
                    }
                    writeln!(report, "  {name} ${var_name} = {vals:?}").unwrap();
                    values.insert(var_name, vals);
                }
                Err(why) => failures.push(format!("{name}: variable ${var_name}: {why}")),
            }
        }
        for (title, ref_id, q) in &all {
            let expanded = expand(q, &values);
            let reads = measurements(q);
            if leftover.is_match(&expanded) {
                failures.push(format!("{name}: {title} {ref_id}: unexpanded macro or variable: {expanded}"));
                continue;
            }
            let rows = match influx.try_query(DB, &expanded).await {
                Ok(json) => rows_with_values(&json),
                Err(why) => {
                    failures.push(format!("{name}: {title} {ref_id}: {why}"));
                    continue;
                }
            };
            let missing: Vec<&String> = reads.iter().filter(|m| !present.contains(*m)).collect();
            if rows > 0 {
                passed += 1;
                writeln!(report, "  {name}: {title} {ref_id}: {rows} rows").unwrap();
            } else if !missing.is_empty() && missing.iter().all(|m| m.starts_with("logmill_")) {
                not_covered.push(format!("{name}: {title} {ref_id}: no data in {missing:?} (written by the long-running agent and consumer)"));
            } else if !missing.is_empty() && nsqd.is_none() && missing.iter().all(|m| m.starts_with("nsq_")) {
                not_covered.push(format!("{name}: {title} {ref_id}: no nsqd binary, so no {missing:?}"));
            } else {
                failures.push(format!("{name}: {title} {ref_id}: no data: {expanded}"));
            }
        }
    }
    let mut summary = format!("\ndashboard queries against influxd:\n{report}");
    if !not_covered.is_empty() {
        writeln!(
            summary,
            "NOT COVERED ({}): queries on measurements nothing here writes yet:",
            not_covered.len()
        )
        .unwrap();
        for line in &not_covered {
            writeln!(summary, "  {line}").unwrap();
        }
    }
    let _ = std::io::stderr().write_all(summary.as_bytes());
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed or returned nothing ({passed} returned data):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every query that reads something other than logmill_* returned data.
    assert!(passed > 40, "only {passed} queries ran");
}

//! The Grafana dashboards of `deploy/dashboards/` against a real InfluxDB fed by logmill.
//!
//! One real `influxd` (the fixture) is loaded the way a cluster loads it: `logmill replay
//! --output influx` of the reference router log (the routers' history: `deis_router_*` and
//! `router_requests` of 2026-11-21), then the deployed path on a real nsqd v1.3.0 — `logmill
//! agent` tailing CRI container logs (a router's access lines, one of them broken, and an
//! app's), collecting the host inputs and the kubelet's (a stand-in serving
//! `testdata/kubelet/summary.json` on the read-only port's plain HTTP) onto `metrics` with its
//! own `logmill_*` counters, `logmill consume` writing all of it and its own counters to
//! InfluxDB, and `logmill collect` reading nsqd's statistics as the manifests' nsq-stats
//! Deployment does. nsqd also holds telegraf's old `consumer` channel and a message that is not
//! line protocol. Everything runs until each series the rate panels need
//! (`non_negative_derivative`) has samples in two 10 s buckets, then stops on SIGTERM, which
//! must end every process with 0.
//!
//! Then every InfluxQL query of every dashboard (panels and variables) is run the way Grafana
//! runs it: `$timeFilter` becomes a range covering the data the dashboard reads (the router
//! data is from 2026-11-21, the rest from now), `$__interval` 10s (the datasource's
//! `timeInterval`, the router windows and the collection interval), `$__interval_ms` 10000, and
//! each variable the values its own query returns ("All"). A query that fails or returns no
//! value is a failure, and all of them are listed. The one exception is said aloud: a query
//! whose `logmill_*` measurement does not exist (a counter registered at its first event, such
//! as a requeue, which this run does not provoke) is listed as not covered, never passed
//! silently. Without an nsqd binary only the replayed data is there, and the rest is listed.

mod support;

#[path = "support/influxd.rs"]
mod influxd;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use influxd::Influxd;
use regex::Regex;
use serde_json::Value;
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DB: &str = "kubernetes";
const DASHBOARDS: [&str; 4] = ["router-compatible.json", "router.json", "nodes.json", "logmill.json"];
/// Grafana's `$__interval` here: the datasource's minimum (10 s, provisioned as
/// `timeInterval`), which is also the router window and the collection interval.
const INTERVAL: &str = "10s";
const INTERVAL_MS: &str = "10000";
/// How long the collector may take to write two cycles in different 10 s buckets.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(60);

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
fn every_logmill_measurement_is_registered() {
    // The names the code registers: string literals under src/. A panel on a misspelt or
    // renamed counter would otherwise wait for data forever.
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
    let mut unknown = Vec::new();
    for name in DASHBOARDS {
        for (title, _, q) in queries(&load(name)) {
            for m in measurements(&q).into_iter().filter(|m| m.starts_with("logmill_")) {
                if !source.contains(&format!("\"{m}\"")) {
                    unknown.push(format!("{name}: {title}: {m}"));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "counters no code registers:\n{}", unknown.join("\n"));
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
    let mut metrics: Vec<Bytes> =
        (0..20).map(|i| Bytes::from(format!("app_metric,app=web value={i}i"))).collect();
    // What another producer may put on `metrics`: the consumer counts it invalid and goes on.
    metrics.push(Bytes::from_static(b"this is not line protocol"));
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

/// What the first statement answered: the rows that hold at least one value besides `time`,
/// and the columns (besides `time`) that hold none in any row of any series — a misspelt field
/// beside good ones in one SELECT is such a column.
fn values_of(json: &Value) -> (usize, Vec<String>) {
    let mut rows = 0;
    let mut filled: BTreeMap<String, bool> = BTreeMap::new();
    for series in json["results"][0]["series"].as_array().into_iter().flatten() {
        let columns: Vec<&str> =
            series["columns"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for column in columns.iter().filter(|c| **c != "time") {
            filled.entry((*column).to_owned()).or_insert(false);
        }
        for row in series["values"].as_array().into_iter().flatten() {
            let mut any = false;
            for (value, column) in row.as_array().into_iter().flatten().zip(&columns) {
                if *column != "time" && !value.is_null() {
                    any = true;
                    filled.insert((*column).to_owned(), true);
                }
            }
            rows += usize::from(any);
        }
    }
    (rows, filled.into_iter().filter(|(_, f)| !f).map(|(c, _)| c).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data() {
    let influx = Influxd::start().await;
    influx.create_database(DB).await;
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet_stand_in().await;
    let url = influx.url();

    // The router's reference log, as `logmill replay` writes it: the routers' history.
    let replay_log = dir.path().join("replay.log");
    let replay = spawn_logmill(
        &["replay", "--host", "node-1", "--output", "influx", "--influx-db", DB, "--influx-url", &url]
            .into_iter()
            .chain([repo("testdata/access.log").to_str().unwrap()])
            .collect::<Vec<_>>(),
        &replay_log,
    );
    let status =
        tokio::time::timeout(Duration::from_secs(120), replay.wait_with_output()).await.unwrap().unwrap();
    assert!(status.status.success(), "replay: {}", std::fs::read_to_string(&replay_log).unwrap_or_default());

    // The deployed path, where there is an nsqd: `logmill agent` (tailing, collecting, its
    // counters) → nsqd → `logmill consume` (and its own counters) → InfluxDB, and
    // `logmill collect` reading nsqd's statistics, as deploy/base/nsq/nsq-stats.yaml does.
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        nsqd::skip("the agent, consumer and nsq_* panels of every_dashboard_query_returns_data", "nsqd");
        return run_every_query(&influx, None).await;
    };
    seed_nsqd(&nsqd).await;
    let logs = dir.path().join("containers");
    std::fs::create_dir(&logs).unwrap();
    write_container_logs(&logs);
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "host = \"node-1\"\n[telemetry]\nlisten = \"\"\ninterval_secs = 1\n[nsq]\nnsqd_tcp_addresses = [\"{nsqd}\"]\n\
             [tail]\npaths = [\"{logs}/*.log\"]\nstate_dir = \"{state}\"\n[agent]\ncollect = \"nsq\"\n\
             [collect]\ninterval_ms = 5000\n[collect.kubelet]\nurl = \"{kubelet}\"\n\
             [collect.nsqd]\nendpoints = [\"127.0.0.1:{down}\"]\n[kubernetes]\nenabled = false\n",
            nsqd = nsqd.tcp_addr(),
            down = closed_port(),
            logs = logs.display(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let consume_config = dir.path().join("consume.toml");
    std::fs::write(
        &consume_config,
        "[telemetry]\nlisten = \"\"\ninterval_secs = 1\n[influx]\nflush_interval_ms = 100\n",
    )
    .unwrap();
    let stats_config = dir.path().join("nsq-stats.toml");
    std::fs::write(
        &stats_config,
        format!(
            "[telemetry]\nlisten = \"\"\n[collect]\ninterval_ms = 5000\ninputs = []\n[collect.nsqd]\nendpoints = [\"{}\"]\n",
            nsqd.http_addr()
        ),
    )
    .unwrap();
    let tcp = nsqd.tcp_addr().to_string();
    let logs_of = |name: &str| dir.path().join(format!("{name}.log"));
    let consume = spawn_logmill(
        &["consume", "--config", consume_config.to_str().unwrap(), "--nsqd", &tcp, "--channel", "logmill"]
            .into_iter()
            .chain(["--influx-url", &url, "--influx-db", DB, "--instance", "consumer-0"])
            .collect::<Vec<_>>(),
        &logs_of("consume"),
    );
    let agent = spawn_logmill(&["agent", "--config", agent_config.to_str().unwrap()], &logs_of("agent"));
    let stats = spawn_logmill(
        &["collect", "--config", stats_config.to_str().unwrap(), "--output", "influx", "--host", "nsq-stats"]
            .into_iter()
            .chain(["--influx-db", DB, "--influx-url", &url])
            .collect::<Vec<_>>(),
        &logs_of("nsq-stats"),
    );

    // Rates (non_negative_derivative) need two samples in two 10 s buckets.
    let needed = [
        ("system", "load1"),
        ("kubernetes_node", "memory_working_set_bytes"),
        ("nsq_channel", "depth"),
        ("logmill_lines_read_total", "value"),
        ("logmill_consume_writes_total", "value"),
        ("logmill_collect_problems_total", "value"),
        ("logmill_consume_lines_invalid_total", "value"),
    ];
    let started = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for (m, f) in needed {
            if buckets(&influx, m, f).await < 2 {
                waiting.push(m);
            }
        }
        if waiting.is_empty() {
            break;
        }
        if started.elapsed() > COLLECT_TIMEOUT {
            let log = |name| std::fs::read_to_string(logs_of(name)).unwrap_or_default();
            panic!(
                "{waiting:?}: not in two 10 s buckets within {COLLECT_TIMEOUT:?}\nagent: {}\nconsume: {}\nnsq-stats: {}",
                log("agent"),
                log("consume"),
                log("nsq-stats")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every process stops cleanly on SIGTERM (agent first: the consumer takes its last points).
    for (child, name) in [(agent, "agent"), (stats, "nsq-stats"), (consume, "consume")] {
        let (status, log) = stop(child, &logs_of(name)).await;
        assert!(status.success(), "{name}: {status}: {log}");
    }
    run_every_query(&influx, Some(&nsqd)).await;
}

/// A loopback port nothing listens on: an nsqd that is down, for the agent's collector to
/// count as a problem (the logmill dashboard's "Collector problems").
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Container logs as kubelet leaves them (CRI), on the agent's paths: a router's access lines
/// (dated just after the reference log, so the router dashboards' range stays one day; one
/// line is broken, so the rejected-lines panel has its reason) and an app's lines for `logs`.
fn write_container_logs(dir: &Path) {
    let mut router = String::new();
    for (i, (app, status)) in
        [("web", 200), ("api", 502), ("shop", 404), ("web", 301)].iter().cycle().take(40).enumerate()
    {
        writeln!(
            router,
            "2026-11-21T04:23:{:02}.{:09}Z stderr F [2026-11-21T04:23:{:02}+00:00] - {app} - 10.0.0.1 - - - {status} - \"GET /x HTTP/1.1\" - 120 - \"-\" - \"curl\" - \"{app}.example.com\" - 10.1.0.1:80 - {app}.example.com - 0.004 - 0.005",
            i / 4,
            i,
            i / 4,
        )
        .unwrap();
    }
    writeln!(router, "2026-11-21T04:23:10.000000000Z stderr F [2026-11-21T04:23:10+00:00] - web - 10.0.0.1 - - - 2x0 - \"GET /y HTTP/1.1\"").unwrap();
    std::fs::write(
        dir.join("deis-router-5f7c9_deis_deis-router-0123456789abcdef0123456789abcdef.log"),
        router,
    )
    .unwrap();
    let app: String = (0..10)
        .map(|i| format!("2026-12-01T00:00:{i:02}.000000000Z stdout F {{\"level\":\"info\",\"msg\":\"request {i}\"}}\n"))
        .collect();
    std::fs::write(dir.join("web-v3-web-7d9f_web_web-fedcba9876543210fedcba9876543210.log"), app).unwrap();
}

/// Runs every query of every dashboard against `influx` and fails on those that return
/// nothing (see the module documentation).
async fn run_every_query(influx: &Influxd, nsqd: Option<&Nsqd>) {
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
            if let Some((first, last)) = extent(influx, &m).await {
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
            let (rows, empty_columns) = match influx.try_query(DB, &expanded).await {
                Ok(json) => values_of(&json),
                Err(why) => {
                    failures.push(format!("{name}: {title} {ref_id}: {why}"));
                    continue;
                }
            };
            let missing: Vec<&String> = reads.iter().filter(|m| !present.contains(*m)).collect();
            if rows > 0 && !empty_columns.is_empty() {
                failures.push(format!("{name}: {title} {ref_id}: no value in {empty_columns:?}: {expanded}"));
            } else if rows > 0 {
                passed += 1;
                writeln!(report, "  {name}: {title} {ref_id}: {rows} rows").unwrap();
            } else if !missing.is_empty() && missing.iter().all(|m| m.starts_with("logmill_")) {
                not_covered.push(format!("{name}: {title} {ref_id}: no data in {missing:?} (a counter registered at its first event)"));
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

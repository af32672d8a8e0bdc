//! `logmill consume` end to end, on real parts: two real nsqd registered with a real
//! nsqlookupd (`support/nsqd.rs`, the v1.3.0 binaries), a real `influxd` (`support/influxd.rs`),
//! and two `logmill consume` processes (the binary under test) on one channel, found through
//! lookupd. NSQ is fed what the agent publishes (`support/router_feed.rs`: the crate's own
//! compat points of the reference router log, many lines per message) over nsqd's HTTP API.
//!
//! What must hold, read back from InfluxDB and compared with what the raw lines say
//! (`support/access_reference.rs`, counted independently) and with what `logmill replay`
//! writes for the same lines into another database of the same influxd:
//! - `count("value")` of `deis_router_response_time_ms` and `sum("count")` of
//!   `router_requests` equal the number of access lines, per app and per status too;
//! - every other `router_requests` field summed per (window, app, status, method, host) is
//!   replay's: integers and buckets exactly, `*_sum` within 1e-9, max as the max of maxes.
//!
//! Variants: InfluxDB stopped for 30 s in the middle; nsqd's `--msg-timeout=2s`; one nsqd
//! SIGKILLed and restarted (`--mem-queue-size=0`); one consumer `kill -9`ed and restarted (the
//! surplus over the exact totals printed, and bounded by what was in flight). Also: broken
//! line protocol and broken JSON dead-lettered while everything else flows, and the old
//! fluentd's messages (no timestamp, no `method`) aggregated under `method=unknown`.
//!
//! Waits are on signals (nsqd's channel stats, InfluxDB's counts), never on guessed delays;
//! the only sleeps are the scenario's own (the 30 s outage, a slow publisher).

mod support;

#[path = "support/access_reference.rs"]
mod access_reference;
#[path = "support/influxd.rs"]
mod influxd;
#[path = "support/router_feed.rs"]
mod router_feed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use access_reference::{AccessLine, Series, SeriesKey, BUCKETS};
use bytes::Bytes;
use influxd::Influxd;
use serde_json::Value;
use support::nsqd::{skip, Nsqd, NsqdOptions, Nsqlookupd};
use tempfile::TempDir;
use tokio::process::{Child, Command};

const LOGMILL: &str = env!("CARGO_BIN_EXE_logmill");
/// The router's node, in the compat points and in replay's `--host`.
const HOST: &str = "node-1";
const METRICS: &str = "metrics";
const LOGS: &str = "logs";
const CHANNEL: &str = "logmill";
const DB: &str = "kubernetes";
const REPLAY_DB: &str = "replay";
const WINDOW_SECS: i64 = 1;
/// Access lines per `metrics` message.
const LINES_PER_MESSAGE: usize = 20;
/// How long a run may take to drain; far above what it needs, for a loaded machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The reference data's day, for `GROUP BY time()` queries.
const DAY: &str = "time >= '2026-11-21T00:00:00Z' AND time < '2026-11-22T00:00:00Z'";

// ---------------------------------------------------------------------------------------------
// The data

/// The first `n` lines of the reference router log, as a file, read independently, and as
/// the agent's compat lines.
struct Data {
    _dir: TempDir,
    log: PathBuf,
    lines: Vec<AccessLine>,
    compat: Vec<String>,
}

fn data(n: usize) -> Data {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/access.log")).unwrap();
    let head: String = text.split_inclusive('\n').take(n).collect();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, &head).unwrap();
    let lines = access_reference::read_log(&head);
    assert_eq!(lines.len(), n, "every line of the head is an access line");
    let compat = router_feed::compat_lines(&log, HOST);
    assert_eq!(compat.len(), 3 * n, "three compat points per access line");
    Data { _dir: dir, log, lines, compat }
}

fn count_by(lines: &[AccessLine], key: impl Fn(&AccessLine) -> &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(key(l).to_owned()).or_insert(0.0) += 1.0;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// What a consumer's config says beyond the common part.
#[derive(Clone)]
struct ConsumerConfig {
    lateness_secs: u64,
    idle_flush_ms: u64,
    max_in_flight: u32,
    influx_stall_secs: u64,
    requeue_delay_ms: u64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            lateness_secs: 1,
            idle_flush_ms: 300,
            max_in_flight: 50,
            influx_stall_secs: 5,
            requeue_delay_ms: 500,
        }
    }
}

/// A `logmill consume` process.
struct ConsumerProc {
    instance: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ConsumerProc {
    fn spawn(instance: &str, config: PathBuf, log: PathBuf) -> ConsumerProc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(LOGMILL);
        command
            .args(["consume", "--config"])
            .arg(&config)
            // Only what the config says: no InfluxDB or NSQ settings from the environment.
            .env_clear()
            .env("LOGMILL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .kill_on_drop(true);
        // SAFETY: prctl(2) between fork and exec is async-signal-safe; it makes the kernel
        // SIGKILL the consumer if this test process dies without dropping it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn logmill consume");
        ConsumerProc { instance: instance.into(), config, log, child: Some(child) }
    }

    /// SIGTERM, and its exit status: 0 is a clean stop (flushed, written, finished).
    async fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.pid_of(&child), libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 60 s:\n{}", self.instance, self.log_tail()))
            .unwrap();
        assert!(status.success(), "{} exited with {status}:\n{}", self.instance, self.log_tail());
    }

    fn pid_of(&self, child: &Child) -> libc::pid_t {
        child.id().expect("running") as libc::pid_t
    }

    /// `kill -9`.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    fn restart(&mut self) {
        let again = ConsumerProc::spawn(&self.instance, self.config.clone(), self.log.clone());
        self.child = again.child;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        text[text.char_indices().map(|(i, _)| i).find(|&i| i >= start).unwrap_or(0)..].to_owned()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Cluster {
    lookupd: Nsqlookupd,
    nsqd: Vec<Nsqd>,
    influx: Influxd,
    dir: TempDir,
    consumers: Vec<ConsumerProc>,
    /// Messages published per topic.
    published: BTreeMap<&'static str, u64>,
}

impl Cluster {
    /// Two nsqd with `options`, registered with one nsqlookupd, and an influxd; `None` (the
    /// skip said) on a machine without the NSQ binaries.
    async fn start(test: &str, options: NsqdOptions) -> Option<Cluster> {
        let Some(lookupd) = Nsqlookupd::start().await else {
            skip(test, "nsqlookupd");
            return None;
        };
        let options = NsqdOptions { lookupd_tcp_addresses: vec![lookupd.tcp_addr()], ..options };
        let mut nsqd = Vec::new();
        for _ in 0..2 {
            let Some(n) = Nsqd::start(options.clone()).await else {
                skip(test, "nsqd");
                return None;
            };
            nsqd.push(n);
        }
        let influx = Influxd::start().await;
        influx.create_database(DB).await;
        // Topics and channels before anything is published (a channel created later misses
        // what came before); creating the topic also registers it with lookupd.
        let http = reqwest::Client::new();
        for n in &nsqd {
            for topic in [METRICS, LOGS] {
                logmill::nsq::http::create_topic_and_channel(
                    &http,
                    &n.http_addr().to_string(),
                    topic,
                    Some(CHANNEL),
                )
                .await
                .unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        Some(Cluster { lookupd, nsqd, influx, dir, consumers: Vec::new(), published: BTreeMap::new() })
    }

    fn dead_letters(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("dead-{instance}.jsonl"))
    }

    fn spawn_consumer(&mut self, instance: &str, c: &ConsumerConfig) {
        let nsqd_http: Vec<String> = self.nsqd.iter().map(|n| format!("\"{}\"", n.http_addr())).collect();
        let config = format!(
            r#"host = "{instance}"
[aggregate]
window_secs = {WINDOW_SECS}
lateness_secs = {lateness}
[telemetry]
listen = ""
interval_secs = 1
[nsq]
nsqd_tcp_addresses = []
lookupd_http_addresses = ["{lookupd}"]
lookupd_poll_interval_secs = 1
nsqd_http_addresses = [{nsqd_http}]
max_in_flight = {max_in_flight}
msg_timeout_ms = 0
drain_timeout_ms = 20000
[influx]
urls = ["{influx}"]
database = "{DB}"
flush_interval_ms = 100
backoff_max_ms = 1000
[consume]
instance = "{instance}"
influx_stall_secs = {stall}
requeue_delay_ms = {requeue}
idle_flush_ms = {idle}
dead_letter_file = "{dead}"
"#,
            lateness = c.lateness_secs,
            lookupd = self.lookupd.http_addr(),
            nsqd_http = nsqd_http.join(", "),
            max_in_flight = c.max_in_flight,
            influx = self.influx.url(),
            stall = c.influx_stall_secs,
            requeue = c.requeue_delay_ms,
            idle = c.idle_flush_ms,
            dead = self.dead_letters(instance).display(),
        );
        let path = self.dir.path().join(format!("{instance}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = self.dir.path().join(format!("{instance}.log"));
        self.consumers.push(ConsumerProc::spawn(instance, path, log));
    }

    /// Publishes `bodies` to `topic`, alternating between the nsqd, over nsqd's HTTP API.
    async fn publish(&mut self, topic: &'static str, bodies: &[Bytes]) {
        for (i, chunk) in bodies.chunks(50).enumerate() {
            self.nsqd[i % self.nsqd.len()].put(topic, chunk).await;
        }
        *self.published.entry(topic).or_default() += bodies.len() as u64;
    }

    /// Whether every nsqd has delivered and been told the fate of everything on `topic`'s
    /// channel: nothing waiting, in flight or deferred.
    async fn channel_empty(&self, topic: &str) -> bool {
        for n in &self.nsqd {
            let stats = n.stats().await;
            let Some(c) = stats.channel(topic, CHANNEL) else { return false };
            if c.depth != 0 || c.in_flight_count != 0 || c.deferred_count != 0 {
                return false;
            }
        }
        true
    }

    /// Waits until every published message was finished and `done` holds (a count InfluxDB
    /// answers), the consumers' logs quoted on a timeout.
    async fn wait_until(&self, what: &str, mut done: impl AsyncFnMut(&Cluster) -> bool) {
        let until = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let mut empty = true;
            for topic in self.published.keys() {
                empty &= self.channel_empty(topic).await;
            }
            if empty && done(self).await {
                return;
            }
            if Instant::now() > until {
                let mut channels = String::new();
                for (i, n) in self.nsqd.iter().enumerate() {
                    let stats = n.stats().await;
                    for topic in self.published.keys() {
                        let c = stats.channel(topic, CHANNEL);
                        let state =
                            c.map(|c| (c.depth, c.in_flight_count, c.deferred_count, c.message_count));
                        channels +=
                            &format!("nsqd {i} {topic}: (depth, in flight, deferred, delivered) {state:?}\n");
                    }
                }
                let logs: String = self
                    .consumers
                    .iter()
                    .map(|c| format!("--- {}:\n{}\n", c.instance, c.log_tail()))
                    .collect();
                panic!("timed out waiting for {what} (channels empty: {empty})\n{channels}{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every consumer has subscribed to both topics on every nsqd (found them
    /// through lookupd), so that all of them take part from the first message.
    async fn wait_subscribed(&self) {
        let until = Instant::now() + DRAIN_TIMEOUT;
        'poll: loop {
            assert!(Instant::now() < until, "consumers never subscribed everywhere");
            for n in &self.nsqd {
                let stats = n.stats().await;
                for topic in [METRICS, LOGS] {
                    let clients = stats.clients(topic, CHANNEL);
                    for c in &self.consumers {
                        if !clients.iter().any(|k| k.client_id == c.instance && k.ready_count > 0) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue 'poll;
                        }
                    }
                }
            }
            return;
        }
    }

    async fn stop_consumers(&mut self) {
        for c in &mut self.consumers {
            c.stop().await;
        }
    }

    /// Messages in flight on nsqd to consumer `instance` (its connections' client id).
    async fn in_flight_to(&self, instance: &str, topic: &str) -> i64 {
        let mut n = 0;
        for nsqd in &self.nsqd {
            let stats = nsqd.stats().await;
            n += stats
                .clients(topic, CHANNEL)
                .iter()
                .filter(|c| c.client_id == instance)
                .map(|c| c.in_flight_count)
                .sum::<i64>();
        }
        n
    }

    async fn scalar(&self, db: &str, q: &str) -> f64 {
        self.influx.scalar(db, q).await
    }

    async fn grouped(&self, db: &str, q: &str, tag: &str) -> BTreeMap<String, f64> {
        self.influx.grouped(db, q, tag).await
    }

    /// `logmill replay --output influx` of the same lines into [`REPLAY_DB`].
    async fn replay(&self, log: &Path) {
        let out = Command::new(LOGMILL)
            .args([
                "replay",
                "--output",
                "influx",
                "--influx-url",
                &self.influx.url(),
                "--influx-db",
                REPLAY_DB,
            ])
            .args(["--window", &WINDOW_SECS.to_string(), "--host", HOST])
            .arg(log)
            .env_clear()
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

// ---------------------------------------------------------------------------------------------
// Reading router_requests back

/// A `router_requests` row summed per window and series: field → value.
type Fields = BTreeMap<String, f64>;

/// `router_requests` of `db` summed per (window, app, status, method, host), whatever the
/// consumer: what a dashboard reads.
async fn router_requests(influx: &Influxd, db: &str) -> BTreeMap<SeriesKey, Fields> {
    let mut selected =
        vec!["sum(\"count\") AS \"count\"".to_owned(), "sum(\"bytes_sent\") AS \"bytes_sent\"".into()];
    for family in ["request_time", "upstream_time"] {
        selected.push(format!("sum(\"{family}_sum\") AS \"{family}_sum\""));
        selected.push(format!("max(\"{family}_max\") AS \"{family}_max\""));
        for name in BUCKETS.iter().map(|(_, n)| *n).chain(["inf"]) {
            let field = format!("{family}_bucket_le_{name}");
            selected.push(format!("sum(\"{field}\") AS \"{field}\""));
        }
    }
    let q = format!(
        "SELECT {} FROM \"router_requests\" WHERE {DAY} GROUP BY time({WINDOW_SECS}s), \"app\", \"status_code\", \"method\", \"host\" fill(none)",
        selected.join(", ")
    );
    let json = influx.query(db, &q).await;
    let result = &json["results"][0];
    assert!(result.get("partial").is_none(), "{q}: a partial answer");
    let mut out = BTreeMap::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let tag =
            |k: &str| series["tags"][k].as_str().unwrap_or_else(|| panic!("no tag {k}: {series}")).to_owned();
        let columns: Vec<&str> =
            series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for values in series["values"].as_array().unwrap() {
            let mut time = 0;
            let mut fields = Fields::new();
            for (column, value) in columns.iter().zip(values.as_array().unwrap()) {
                match (*column, value) {
                    ("time", v) => time = v.as_i64().unwrap(),
                    (_, Value::Null) => {}
                    (c, v) => {
                        fields.insert(c.to_owned(), v.as_f64().unwrap_or_else(|| panic!("{c} = {v}")));
                    }
                }
            }
            let key = (time, tag("app"), tag("status_code"), tag("method"), tag("host"));
            assert!(out.insert(key, fields).is_none(), "one row per window and series");
        }
    }
    out
}

/// Every field of `got` is `want`'s: integers exactly, sums within 1e-9 relative, maxima
/// exactly; the same windows and series. Returns the number of values compared.
fn assert_same_fields(
    got: &BTreeMap<SeriesKey, Fields>,
    want: &BTreeMap<SeriesKey, Fields>,
    what: &str,
) -> usize {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: series missing {missing:?}, unexpected {extra:?}"
    );
    let mut compared = 0;
    for (key, w) in want {
        let g = &got[key];
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "{what}: fields of {key:?}");
        for (field, &wv) in w {
            let gv = g[field];
            if field.ends_with("_sum") {
                assert!((gv - wv).abs() <= 1e-9 * wv.abs(), "{what}: {field} of {key:?}: {gv}, want {wv}");
            } else {
                assert_eq!(gv, wv, "{what}: {field} of {key:?}");
            }
            compared += 1;
        }
    }
    compared
}

/// What the lines say, as [`router_requests`] reads it back.
fn expected_fields(lines: &[AccessLine]) -> BTreeMap<SeriesKey, Fields> {
    let expected: BTreeMap<SeriesKey, Series> = access_reference::expected_series(lines, WINDOW_SECS, HOST);
    expected
        .into_iter()
        .map(|(key, s)| {
            let mut f = Fields::new();
            f.insert("count".into(), s.count as f64);
            f.insert("bytes_sent".into(), s.bytes_sent as f64);
            for (family, dist) in
                [("request_time", Some(&s.request_time)), ("upstream_time", s.upstream_time.as_ref())]
            {
                let Some(d) = dist else { continue };
                f.insert(format!("{family}_sum"), d.sum);
                f.insert(format!("{family}_max"), d.max);
                for (i, name) in BUCKETS.iter().map(|(_, n)| *n).chain(["inf"]).enumerate() {
                    f.insert(format!("{family}_bucket_le_{name}"), d.buckets[i] as f64);
                }
            }
            (key, f)
        })
        .collect()
}

/// The checks every run of the reference lines ends with. `surplus_allowed`: how many
/// requests `router_requests` may count twice (0 for an exact run); returns the surplus.
async fn check_router_data(cluster: &Cluster, data: &Data, surplus_allowed: f64, label: &str) -> f64 {
    let n = data.lines.len() as f64;
    let by_status = count_by(&data.lines, |l| &l.status);
    let by_app = count_by(&data.lines, |l| &l.app);
    for m in ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"] {
        let q = format!("SELECT count(\"value\") FROM \"{m}\"");
        assert_eq!(cluster.scalar(DB, &q).await, n, "{label}: {m}: one point per access line");
    }
    let q = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" GROUP BY \"status_code\"";
    assert_eq!(cluster.grouped(DB, q, "status_code").await, by_status, "{label}");
    let q = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" GROUP BY \"app\"";
    assert_eq!(cluster.grouped(DB, q, "app").await, by_app, "{label}");
    let total = cluster.scalar(DB, "SELECT sum(\"count\") FROM \"router_requests\"").await;
    let surplus = total - n;
    eprintln!("{label}: router_requests sum(count) {total} for {n} access lines: surplus {surplus}");
    assert!(surplus >= 0.0, "{label}: requests lost: {total} of {n}");
    assert!(surplus <= surplus_allowed, "{label}: surplus {surplus} over the {surplus_allowed} allowed");
    if surplus == 0.0 {
        let q = |tag: &str| format!("SELECT sum(\"count\") FROM \"router_requests\" GROUP BY \"{tag}\"");
        assert_eq!(cluster.grouped(DB, &q("status_code"), "status_code").await, by_status, "{label}");
        assert_eq!(cluster.grouped(DB, &q("app"), "app").await, by_app, "{label}");
        let consumed = router_requests(&cluster.influx, DB).await;
        cluster.replay(&data.log).await;
        let replayed = router_requests(&cluster.influx, REPLAY_DB).await;
        let a = assert_same_fields(&consumed, &replayed, &format!("{label}: consume vs replay"));
        let b = assert_same_fields(
            &consumed,
            &expected_fields(&data.lines),
            &format!("{label}: consume vs the lines"),
        );
        eprintln!("{label}: {a} values equal to replay's, {b} to the independent reading");
    }
    surplus
}

/// Waits for the reference lines to be written, stops the consumers, and checks.
async fn finish_router_run(cluster: &mut Cluster, data: &Data, surplus_allowed: f64, label: &str) -> f64 {
    let n = data.lines.len() as f64;
    let mut last = -1.0;
    cluster
        // Every message finished means every window it joined was written (a FIN waits for
        // that): the counts are final once the channels are empty.
        .wait_until("every point written and every message finished", async |c: &Cluster| {
            let written = c.scalar(DB, "SELECT count(\"value\") FROM \"deis_router_response_time_ms\"").await;
            if written != last {
                eprintln!("{label}: {written} of {n} response-time points written");
                last = written;
            }
            written >= n
        })
        .await;
    cluster.stop_consumers().await;
    check_router_data(cluster, data, surplus_allowed, label).await
}

/// Waits until the compat points of half the lines are in InfluxDB.
async fn written_half(cluster: &Cluster, data: &Data) {
    let half = (data.lines.len() / 2) as f64;
    let until = Instant::now() + DRAIN_TIMEOUT;
    while cluster.scalar(DB, "SELECT count(\"value\") FROM \"deis_router_response_time_ms\"").await < half {
        assert!(Instant::now() < until, "half the points never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn two_consumers(cluster: &mut Cluster, c: &ConsumerConfig) {
    cluster.spawn_consumer("c1", c);
    cluster.spawn_consumer("c2", c);
    cluster.wait_subscribed().await;
}

// ---------------------------------------------------------------------------------------------
// The runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_two_nsqd_exact_counts_and_replays_fields() {
    let Some(mut cluster) =
        Cluster::start("two_consumers_two_nsqd_exact_counts_and_replays_fields", NsqdOptions::default())
            .await
    else {
        return;
    };
    let data = data(3000);
    two_consumers(&mut cluster, &ConsumerConfig::default()).await;
    cluster.publish(METRICS, &router_feed::messages(&data.compat, LINES_PER_MESSAGE)).await;
    finish_router_run(&mut cluster, &data, 0.0, "two consumers").await;
    // Both consumers took part, and each wrote its own points.
    let q = "SELECT sum(\"count\") FROM \"router_requests\" GROUP BY \"consumer\"";
    let by_consumer = cluster.grouped(DB, q, "consumer").await;
    assert_eq!(by_consumer.keys().collect::<Vec<_>>(), ["c1", "c2"], "{by_consumer:?}");
    // And their own counters reached InfluxDB.
    let q = "SELECT last(\"value\") FROM \"logmill_consume_messages_finished_total\" WHERE \"topic\" = 'metrics' GROUP BY \"host\"";
    let finished: f64 = cluster.grouped(DB, q, "host").await.values().sum();
    assert!(finished > 0.0, "telemetry points");
}

/// The agent's own publishing (`logmill replay --output nsq`: the router's file through the
/// agent's classification and sink) to both nsqd, then consumed: every count and every
/// `router_requests` field equal to replay's and to the independent reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_by_the_agents_code_with_replay_output_nsq() {
    let Some(mut cluster) =
        Cluster::start("published_by_the_agents_code_with_replay_output_nsq", NsqdOptions::default()).await
    else {
        return;
    };
    let data = data(3000);
    two_consumers(&mut cluster, &ConsumerConfig::default()).await;
    let mut command = tokio::process::Command::new(LOGMILL);
    command.args(["replay", "--output", "nsq", "--host", HOST]);
    for n in &cluster.nsqd {
        command.args(["--nsqd", &n.tcp_addr().to_string()]);
    }
    command
        .args(["--namespace", "deis", "--pod", "deis-router-1", "--container", "deis-router"])
        .arg(&data.log);
    let out = command.env("LOGMILL_LOG", "warn").output().await.unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay --output nsq: {}\n{summary}", out.status);
    assert!(summary.contains(&format!("points to metrics {}", 3 * data.lines.len())), "{summary}");
    finish_router_run(&mut cluster, &data, 0.0, "replay --output nsq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_stopped_for_30_s_in_the_middle() {
    let Some(mut cluster) =
        Cluster::start("influxdb_stopped_for_30_s_in_the_middle", NsqdOptions::default()).await
    else {
        return;
    };
    let data = data(3000);
    // Windows that stay open (4 s after the input goes quiet) past the stall bound (2 s), so
    // that held messages are taken out of them and requeued during the outage.
    let c = ConsumerConfig {
        lateness_secs: 60,
        idle_flush_ms: 4000,
        influx_stall_secs: 2,
        ..ConsumerConfig::default()
    };
    two_consumers(&mut cluster, &c).await;
    let messages = router_feed::messages(&data.compat, LINES_PER_MESSAGE);
    let (first, second) = messages.split_at(messages.len() / 2);
    cluster.publish(METRICS, first).await;
    cluster
        .wait_until("the first half written", async |c: &Cluster| {
            c.scalar(DB, "SELECT count(\"value\") FROM \"deis_router_response_time_ms\"").await > 0.0
        })
        .await;
    cluster.influx.stop().await;
    cluster.publish(METRICS, second).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.influx.start_again().await;
    finish_router_run(&mut cluster, &data, 0.0, "InfluxDB stopped 30 s").await;
    // The outage outlasted the stall bound: held messages were taken back and requeued.
    let retracted = cluster.consumers.iter().any(|c| c.log_text().contains("InfluxDB has not answered"));
    assert!(retracted, "no consumer requeued during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_a_4_s_msg_timeout() {
    // 4 s, touched every 2 s: with 2 s (touches every second, nsqd's clock started up to its
    // 250 ms output-buffer flush earlier) a loaded machine left too little slack.
    let options = NsqdOptions { msg_timeout: Some(Duration::from_secs(4)), ..NsqdOptions::default() };
    let Some(mut cluster) = Cluster::start("within_a_4_s_msg_timeout", options).await else { return };
    let data = data(2000);
    // Windows that stay open long after the 4 s msg_timeout: they close 12 s after the input
    // went quiet, so their messages are held at least that long, on touches. (nsqd looks for
    // timed-out messages among the channels it listed at start-up or at its last 5-second
    // refresh: a hold shorter than that could go unnoticed even without touches.)
    let c = ConsumerConfig {
        lateness_secs: 60,
        idle_flush_ms: 12_000,
        max_in_flight: 1000,
        ..ConsumerConfig::default()
    };
    two_consumers(&mut cluster, &c).await;
    let messages = router_feed::messages(&data.compat, LINES_PER_MESSAGE);
    let started = Instant::now();
    cluster.publish(METRICS, &messages).await;
    finish_router_run(&mut cluster, &data, 0.0, "msg_timeout 4 s").await;
    assert!(started.elapsed() > Duration::from_secs(12), "held past the msg_timeout");
    for n in &cluster.nsqd {
        let stats = n.stats().await;
        let c = stats.channel(METRICS, CHANNEL).unwrap();
        assert_eq!(c.timeout_count, 0, "a held message timed out: its redelivery would count twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nsqd_killed_and_restarted_on_its_data() {
    let options = NsqdOptions {
        mem_queue_size: Some(0),
        // Every message's queue position on disk at once, on tmpfs: nsqd's own loss bound
        // (unsynced metadata) out of the way, what is left is the consumer's.
        sync_every: Some(1),
        data_on_tmpfs: true,
        ..NsqdOptions::default()
    };
    let Some(mut cluster) = Cluster::start("an_nsqd_killed_and_restarted_on_its_data", options).await else {
        return;
    };
    let data = data(3000);
    // Room in flight for every message (no early flush), so that the consumers hold the
    // messages of the last open windows until they are idle.
    let c = ConsumerConfig {
        lateness_secs: 30,
        idle_flush_ms: 5000,
        max_in_flight: 1000,
        ..ConsumerConfig::default()
    };
    two_consumers(&mut cluster, &c).await;
    cluster.publish(METRICS, &router_feed::messages(&data.compat, LINES_PER_MESSAGE)).await;
    // Kill the first nsqd while the consumers hold some of its messages in open windows.
    written_half(&cluster, &data).await;
    // nsqd counts a message in flight once it is in the connection's output buffer, flushed
    // every 250 ms: a SIGKILL before that loses it on nsqd's side, unseen by any consumer (one
    // message of 150 in about one run in five). Kill once nothing is left to deliver and the
    // buffers have been flushed, so that what is lost can only be the consumers' doing.
    cluster.nsqd[0].wait_delivered(METRICS, CHANNEL).await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    let stats = cluster.nsqd[0].stats().await;
    let in_flight = stats.channel(METRICS, CHANNEL).map_or(0, |c| c.in_flight_count);
    assert!(in_flight > 0, "nothing in flight on the first nsqd: the scenario did not happen");
    cluster.nsqd[0].kill();
    cluster.nsqd[0].restart().await;
    let bound = (in_flight as usize * LINES_PER_MESSAGE) as f64;
    let surplus = finish_router_run(&mut cluster, &data, bound, "nsqd SIGKILLed").await;
    eprintln!("nsqd SIGKILLed with {in_flight} messages in flight ({bound} lines): surplus {surplus}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_and_restarted() {
    // What the killed consumer held comes back after nsqd's msg_timeout: a short one.
    let options = NsqdOptions { msg_timeout: Some(Duration::from_secs(5)), ..NsqdOptions::default() };
    let Some(mut cluster) = Cluster::start("a_consumer_killed_and_restarted", options).await else {
        return;
    };
    let data = data(3000);
    // Room in flight for every message (no early flush): when c1 dies, what it holds is in
    // open windows, written nowhere. Idle 10 s before a flush: until then c1 holds every
    // message, however slow influxd's first writes and the /stats calls below are.
    let c = ConsumerConfig {
        lateness_secs: 30,
        idle_flush_ms: 10_000,
        max_in_flight: 1000,
        ..ConsumerConfig::default()
    };
    two_consumers(&mut cluster, &c).await;
    cluster.publish(METRICS, &router_feed::messages(&data.compat, LINES_PER_MESSAGE)).await;
    // Kill c1 once it has processed messages (their compat points are written) that it still
    // holds, their windows open: what it aggregated of them is in its memory only.
    written_half(&cluster, &data).await;
    let in_flight = cluster.in_flight_to("c1", METRICS).await;
    assert!(in_flight > 0, "c1 holds nothing: the scenario did not happen");
    cluster.consumers[0].kill().await;
    // Duplicates can only come from points c1 wrote and did not live to acknowledge. If it
    // had written no router_requests at all when it died, none of its messages can count twice.
    let q = "SELECT sum(\"count\") FROM \"router_requests\" WHERE \"consumer\" = 'c1'";
    let c1_wrote = cluster.scalar(DB, q).await;
    cluster.consumers[0].restart();
    let bound = if c1_wrote == 0.0 { 0.0 } else { (in_flight as usize * LINES_PER_MESSAGE) as f64 };
    let surplus = finish_router_run(&mut cluster, &data, bound, "consumer kill -9").await;
    eprintln!(
        "consumer c1 killed with {in_flight} messages in flight, {c1_wrote} requests aggregated and written: \
         surplus {surplus} (allowed {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_messages_are_dead_lettered_while_the_rest_flows() {
    let Some(mut cluster) =
        Cluster::start("broken_messages_are_dead_lettered_while_the_rest_flows", NsqdOptions::default())
            .await
    else {
        return;
    };
    let data = data(1000);
    cluster.spawn_consumer("c1", &ConsumerConfig::default());
    cluster.wait_subscribed().await;
    let mut messages = router_feed::messages(&data.compat, LINES_PER_MESSAGE);
    // Among the router messages: one with a broken line beside a good one.
    messages.insert(
        10,
        Bytes::from_static(b"this is not line protocol\napp_metric,app=x value=1 1700000000000000000\n"),
    );
    cluster.publish(METRICS, &messages).await;
    cluster
        .publish(
            LOGS,
            &[
                router_feed::log_record("foo", "stdout", "hello", "2026-11-21T04:22:21.5Z", HOST),
                Bytes::from_static(b"{\"log\":\"cut off"),
                router_feed::log_record("foo", "stderr", "world", "2026-11-21T04:22:22.5Z", HOST),
            ],
        )
        .await;
    let n = data.lines.len() as f64;
    cluster
        .wait_until("everything else written", async |c: &Cluster| {
            c.scalar(DB, "SELECT sum(\"count\") FROM \"router_requests\"").await >= n
                && c.scalar(DB, "SELECT sum(\"count\") FROM \"app_log_lines\"").await >= 2.0
        })
        .await;
    cluster.stop_consumers().await;
    check_router_data(&cluster, &data, 0.0, "with broken messages").await;
    assert_eq!(cluster.scalar(DB, "SELECT count(\"value\") FROM \"app_metric\"").await, 1.0, "the good line");
    assert_eq!(cluster.scalar(DB, "SELECT sum(\"count\") FROM \"app_log_lines\"").await, 2.0);
    let dead = std::fs::read_to_string(cluster.dead_letters("c1")).expect("a dead-letter file");
    let records: Vec<Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r["topic"].as_str().unwrap(), r["reason"].as_str().unwrap(), r["line"].as_str().unwrap()))
        .collect();
    assert_eq!(summary.len(), 2, "{dead}");
    assert!(summary.contains(&("metrics", "bad_field", "this is not line protocol")), "{summary:?}");
    assert!(summary.contains(&("logs", "bad_json", "{\"log\":\"cut off")), "{summary:?}");
    assert!(records.iter().all(|r| r["id"].as_str().is_some_and(|id| id.len() == 16)), "nsqd's ids: {dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_fluentds_messages_under_method_unknown() {
    let Some(mut cluster) =
        Cluster::start("the_old_fluentds_messages_under_method_unknown", NsqdOptions::default()).await
    else {
        return;
    };
    let data = data(500);
    two_consumers(&mut cluster, &ConsumerConfig::default()).await;
    // One message per access line, its three points as fluentd wrote them.
    let old: Vec<String> = data.compat.iter().map(|l| router_feed::old_fluentd_line(l)).collect();
    assert!(old
        .iter()
        .all(|l| !l.contains("method=") && !l.contains("upstream_total") && l.matches(' ').count() == 1));
    let messages: Vec<Bytes> =
        old.chunks(3).map(|c| Bytes::from(c.iter().map(|l| format!("{l}\n")).collect::<String>())).collect();
    cluster.publish(METRICS, &messages).await;
    // And app log records as the old fluentd sent them (more fields than the agent's).
    let mut records = Vec::new();
    for i in 0..300 {
        let (app, text) =
            if i % 3 == 0 { ("bar", r#"{"level":"error","msg":"boom"}"#) } else { ("foo", "plain text") };
        records.push(router_feed::log_record(app, "stdout", text, "2026-11-21T04:22:21.123456+00:00", HOST));
    }
    cluster.publish(LOGS, &records).await;
    let n = data.lines.len() as f64;
    cluster
        .wait_until("everything written", async |c: &Cluster| {
            c.scalar(DB, "SELECT sum(\"count\") FROM \"router_requests\"").await >= n
                && c.scalar(DB, "SELECT sum(\"count\") FROM \"app_log_lines\"").await >= 300.0
        })
        .await;
    cluster.stop_consumers().await;
    // Stored as sent (no method tag), one point per line: the NSQ timestamps kept keys unique.
    let q = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" WHERE time > now() - 1h GROUP BY \"status_code\"";
    assert_eq!(cluster.grouped(DB, q, "status_code").await, count_by(&data.lines, |l| &l.status));
    let q = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" WHERE time > now() - 1h AND \"method\" != ''";
    assert_eq!(cluster.scalar(DB, q).await, 0.0);
    // Aggregated under method=unknown only, at publishing time, with `value` as the upstream time.
    let q = "SELECT sum(\"count\") FROM \"router_requests\" WHERE time > now() - 1h GROUP BY \"method\"";
    assert_eq!(cluster.grouped(DB, q, "method").await, BTreeMap::from([("unknown".to_owned(), n)]));
    let q = "SELECT sum(\"count\") FROM \"router_requests\" WHERE time > now() - 1h GROUP BY \"app\"";
    assert_eq!(cluster.grouped(DB, q, "app").await, count_by(&data.lines, |l| &l.app));
    let sent = |m: &str| -> f64 {
        old.iter()
            .filter(|l| l.starts_with(m))
            .map(|l| l.rsplit_once("value=").unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    let total = |f: &str| format!("SELECT sum(\"{f}\") FROM \"router_requests\" WHERE time > now() - 1h");
    for (field, m) in [
        ("bytes_sent", "deis_router_bytes_sent,"),
        ("request_time_sum", "deis_router_request_time_ms,"),
        ("upstream_time_sum", "deis_router_response_time_ms,"),
    ] {
        let (got, want) = (cluster.scalar(DB, &total(field)).await, sent(m));
        assert!((got - want).abs() <= 1e-9 * want, "{field}: {got}, sent {want}");
    }
    // app_log_lines: 100 bar records, all at level error; 200 foo without a level.
    let q = "SELECT sum(\"count\") FROM \"app_log_lines\" GROUP BY \"app\"";
    assert_eq!(
        cluster.grouped(DB, q, "app").await,
        BTreeMap::from([("bar".to_owned(), 100.0), ("foo".to_owned(), 200.0)])
    );
    let q = "SELECT sum(\"count\") FROM \"app_log_lines\" WHERE \"level\" = 'error'";
    assert_eq!(cluster.scalar(DB, q).await, 100.0);
}

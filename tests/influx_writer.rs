//! The InfluxDB writer against a real `influxd` (started by the fixture), with faults injected
//! by a real proxy in front of it: whatever the server does, every point lands exactly once.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/influxd.rs"]
mod influxd;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use fault_proxy::{Fault, FaultProxy};
use influxd::Influxd;
use logmill::config::{RawConfig, RawInflux};
use logmill::influx::writer::{InfluxSettings, InfluxWriter, Outcome};
use logmill::roles::replay::{collect, replay, FormatChoice, ReplayOptions};
use logmill::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

fn table(t: &[(&str, f64)]) -> BTreeMap<String, f64> {
    t.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The reference router log, replayed to line protocol (compat and aggregated points).
fn reference_points() -> Vec<u8> {
    let mut raw = RawConfig::load(None).unwrap();
    raw.host = Some("node-1".into());
    let settings = raw.validate().unwrap();
    let options = ReplayOptions {
        files: vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/access.log")],
        format: FormatChoice::Raw,
        parser: "deis-router".into(),
    };
    let mut out = Vec::new();
    replay(&settings, &options, &CancellationToken::new(), collect(&mut out)).unwrap();
    out
}

fn settings(urls: &[String], database: &str, tweak: impl FnOnce(&mut RawInflux)) -> InfluxSettings {
    let mut raw = RawInflux {
        urls: urls.to_vec(),
        database: database.into(),
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        flush_interval_ms: 20,
        batch_max_points: 5_000,
        ..RawInflux::default()
    };
    tweak(&mut raw);
    raw.validate().unwrap().unwrap()
}

struct Running {
    writer: InfluxWriter,
    tracker: TaskTracker,
    cancel: CancellationToken,
    telemetry: Telemetry,
}

fn start(settings: InfluxSettings) -> Running {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let telemetry = Telemetry::default();
    let writer = InfluxWriter::start(settings, &telemetry, &tracker, cancel.clone()).unwrap();
    Running { writer, tracker, cancel, telemetry }
}

/// Submits `lines` in pieces of `per` lines and waits for every answer.
async fn submit_all(writer: &InfluxWriter, lines: &[u8], per: usize) -> Vec<Outcome> {
    let all: Vec<&[u8]> = lines.split_inclusive(|&b| b == b'\n').collect();
    let mut pending = Vec::new();
    for chunk in all.chunks(per) {
        let body: Vec<u8> = chunk.concat();
        pending.push(writer.submit(Bytes::from(body), chunk.len()).await.unwrap());
    }
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(p.await);
    }
    outcomes
}

/// What the proxy saw of the writer: nothing was sent again once its 2xx had reached the writer,
/// and every line of `lines` was in exactly one acknowledged request. InfluxDB overwrites
/// identical points, so a count read back from it cannot tell a resend from a single send.
fn assert_acknowledged_exactly_once(proxy: &FaultProxy, lines: &[u8]) {
    let resent = proxy.resent_after_acknowledgement("/write");
    assert!(resent.is_empty(), "sent again after a 2xx reached the writer (first, again): {resent:?}");
    let mut acknowledged: Vec<Vec<u8>> = Vec::new();
    for request in proxy.requests_to("/write").iter().filter(|r| r.acknowledged()) {
        acknowledged.extend(request.decoded_body().split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    let mut submitted: Vec<Vec<u8>> = lines.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    acknowledged.sort_unstable();
    submitted.sort_unstable();
    assert_eq!(acknowledged.len(), submitted.len(), "lines in acknowledged requests");
    assert!(acknowledged == submitted, "the acknowledged lines are not the submitted ones");
}

/// The real pause between the answer to `requests[i]` and the arrival of its resend (the next
/// request with the same body; other batches may be in flight meanwhile), as the proxy saw
/// them: a lower bound on how long the writer waited before retrying.
fn pause_before_resend(requests: &[fault_proxy::SeenRequest], i: usize) -> Duration {
    let body = requests[i].decoded_body();
    let Some(resend) = requests[i + 1..].iter().find(|r| r.decoded_body() == body) else {
        panic!("request {i} ({:?}) was never sent again", requests[i].outcome);
    };
    resend.received_at.duration_since(requests[i].answered_at)
}

/// Polls `condition` (a real signal: a counter, what the proxy saw) until it holds. The bound
/// only turns a hang into a failure; on a loaded machine it may take far longer than when idle.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "still waiting for {what} after 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of an unlabelled counter in Prometheus text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
        .parse()
        .unwrap()
}

async fn assert_reference_counts(influx: &Influxd, db: &str) {
    let q = |m: &str| format!("SELECT count(\"value\") FROM \"{m}\"");
    for m in ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"] {
        assert_eq!(influx.scalar(db, &q(m)).await, LINES, "{m}");
    }
    assert_eq!(influx.scalar(db, "SELECT sum(\"count\") FROM \"router_requests\"").await, LINES);
    let by = |tag: &str| format!("SELECT sum(\"count\") FROM \"router_requests\" GROUP BY \"{tag}\"");
    assert_eq!(influx.grouped(db, &by("status_code"), "status_code").await, table(&BY_STATUS));
    assert_eq!(influx.grouped(db, &by("app"), "app").await, table(&BY_APP));
    let compat = "SELECT count(\"value\") FROM \"deis_router_response_time_ms\" GROUP BY \"status_code\"";
    assert_eq!(influx.grouped(db, compat, "status_code").await, table(&BY_STATUS));
}

#[tokio::test]
async fn reference_data_lands_exactly() {
    let influx = Influxd::start().await;
    // The database does not exist yet: the writer creates it on `database not found`.
    let run = start(settings(&[influx.url()], "kubernetes", |_| {}));
    let points = reference_points();
    let lines = points.iter().filter(|&&b| b == b'\n').count();
    let outcomes = submit_all(&run.writer, &points, 3_000).await;
    assert!(outcomes.iter().all(Outcome::is_written), "{outcomes:?}");
    assert_reference_counts(&influx, "kubernetes").await;
    let metrics = run.telemetry.render_prometheus();
    assert_eq!(counter(&metrics, "logmill_influx_points_written_total"), lines as u64, "{metrics}");
    // Each batch in flight may have met `database not found` before the first created it.
    let created = counter(&metrics, "logmill_influx_databases_created_total");
    assert!((1..=2).contains(&created), "{metrics}");
    drop(run.writer);
    run.tracker.close();
    run.tracker.wait().await;
}

#[tokio::test]
async fn faults_lose_nothing_and_double_nothing() {
    let influx = Influxd::start().await;
    influx.create_database("faults").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    // Refused before InfluxDB saw them, dropped before and after InfluxDB wrote them: each
    // batch is resent byte for byte until one attempt is answered.
    proxy.push("/write", Fault::Status { code: 503, retry_after_secs: Some(1), body: String::new() });
    proxy.push("/write", Fault::Status { code: 429, retry_after_secs: None, body: String::new() });
    proxy.push("/write", Fault::DropBeforeForward);
    proxy.push("/write", Fault::DropAfterForward);
    proxy.push(
        "/write",
        Fault::Status { code: 500, retry_after_secs: None, body: "{\"error\":\"timeout\"}".into() },
    );
    proxy.push("/write", Fault::DropAfterForward);
    // Bodies over 64 KiB (gzip-compressed) get 413: batches are split until they fit.
    proxy.set_max_body_bytes(Some(64 << 10));
    let run = start(settings(&[proxy.url()], "faults", |r| r.batch_max_points = 20_000));
    let points = reference_points();
    let outcomes = submit_all(&run.writer, &points, 10_000).await;
    assert!(outcomes.iter().all(Outcome::is_written), "{outcomes:?}");
    assert_eq!(proxy.pending_faults(), 0, "every fault was used");
    let requests = proxy.requests_to("/write");
    assert!(requests.iter().any(|r| r.outcome == fault_proxy::Outcome::TooLarge), "a 413 happened");
    assert_reference_counts(&influx, "faults").await;
    assert_acknowledged_exactly_once(&proxy, &points);
    // The 503 said `Retry-After: 1`; the writer's own backoff is at most 500 ms here.
    let first = requests
        .iter()
        .position(|r| matches!(&r.outcome, fault_proxy::Outcome::Injected(Fault::Status { code: 503, .. })))
        .unwrap();
    let pause = pause_before_resend(&requests, first);
    assert!(pause >= Duration::from_secs(1), "retried {pause:?} after `Retry-After: 1`");
    // The writer's own account: each submission's outcome, and its counter.
    let lines = points.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(outcomes.iter().map(|o| o.written).sum::<u64>(), lines, "{outcomes:?}");
    let metrics = run.telemetry.render_prometheus();
    assert_eq!(counter(&metrics, "logmill_influx_points_written_total"), lines, "{metrics}");
    assert_eq!(counter(&metrics, "logmill_influx_points_rejected_total"), 0, "{metrics}");
    assert!(counter(&metrics, "logmill_influx_batch_splits_total") > 0, "{metrics}");
    assert!(counter(&metrics, "logmill_influx_retries_total") >= 6, "{metrics}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let influx = Influxd::start().await;
    influx.create_database("later").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    // Retry-After counts whole seconds. The writer's own backoff here is at most 50 ms, so a
    // retry a second or more later can only be the header's doing, however loaded the machine
    // (load makes pauses longer, never shorter).
    proxy.push("/write", Fault::Status { code: 503, retry_after_secs: Some(2), body: String::new() });
    proxy.push("/write", Fault::Status { code: 429, retry_after_secs: Some(1), body: String::new() });
    let run = start(settings(&[proxy.url()], "later", |r| {
        r.backoff_initial_ms = 10;
        r.backoff_max_ms = 50;
    }));
    let lines = b"m,t=a v=1.5 1000000000\nm,t=b v=2.5 1000000001\n";
    assert_eq!(submit_all(&run.writer, lines, 10).await, [Outcome::written(2)]);
    let requests = proxy.requests_to("/write");
    assert_eq!(requests.len(), 3, "{requests:?}");
    for (i, secs) in [(0, 2), (1, 1)] {
        let pause = pause_before_resend(&requests, i);
        let told = Duration::from_secs(secs);
        assert!(pause >= told, "retried {pause:?} after `Retry-After: {secs}`");
        // Seconds, not some larger unit; the margin is for a loaded machine.
        assert!(pause < told + Duration::from_secs(10), "retried only {pause:?} after `Retry-After: {secs}`");
    }
    assert_acknowledged_exactly_once(&proxy, lines);
    assert_eq!(influx.scalar("later", "SELECT count(\"v\") FROM \"m\"").await, 2.0);
}

#[tokio::test]
async fn retried_batches_are_resent_byte_for_byte() {
    let influx = Influxd::start().await;
    influx.create_database("same").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    proxy.push("/write", Fault::DropAfterForward);
    proxy.push("/write", Fault::Status { code: 503, retry_after_secs: None, body: String::new() });
    let run = start(settings(&[proxy.url()], "same", |_| {}));
    let lines = b"m,t=a v=1.5 1000000000\nm,t=b v=2.5 1000000001\n";
    let outcomes = submit_all(&run.writer, lines, 10).await;
    assert_eq!(outcomes, [Outcome::written(2)]);
    let bodies: Vec<Bytes> = proxy.requests_to("/write").into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 3);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every attempt sent the same bytes");
    assert_acknowledged_exactly_once(&proxy, lines);
    assert_eq!(influx.scalar("same", "SELECT count(\"v\") FROM \"m\"").await, 2.0);
}

#[tokio::test]
async fn influxd_down_for_ten_seconds_mid_run() {
    let mut influx = Influxd::start().await;
    influx.create_database("restart").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    let run = start(settings(&[proxy.url()], "restart", |r| {
        // Small enough that the second half waits for room while InfluxDB is down.
        r.buffer_max_bytes = 2 << 20;
        r.batch_max_points = 2_000;
    }));
    let points = reference_points();
    let cut = points.len() / 3;
    let cut = cut + points[cut..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let first = submit_all(&run.writer, &points[..cut], 1_000).await;
    assert!(first.iter().all(Outcome::is_written));
    influx.stop().await;
    let writer = run.writer.clone();
    let rest = points[cut..].to_vec();
    let second = tokio::spawn(async move { submit_all(&writer, &rest, 1_000).await });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!second.is_finished(), "nothing can be written while influxd is down");
    influx.start_again().await;
    let second = tokio::time::timeout(Duration::from_secs(60), second).await.unwrap().unwrap();
    assert!(second.iter().all(Outcome::is_written), "{second:?}");
    assert_reference_counts(&influx, "restart").await;
    assert_acknowledged_exactly_once(&proxy, &points);
    let lines = points.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(first.iter().chain(&second).map(|o| o.written).sum::<u64>(), lines);
    let metrics = run.telemetry.render_prometheus();
    assert_eq!(counter(&metrics, "logmill_influx_points_written_total"), lines, "{metrics}");
    assert!(counter(&metrics, "logmill_influx_retries_total") > 0, "{metrics}");
}

#[tokio::test]
async fn a_type_conflict_is_a_partial_write_not_retried() {
    let influx = Influxd::start().await;
    influx.create_database("conflict").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    let run = start(settings(&[proxy.url()], "conflict", |_| {}));
    assert_eq!(submit_all(&run.writer, b"m value=1.0 1000\n", 10).await, [Outcome::written(1)]);
    // `value` is a float: an integer is a field type conflict. The other two points are fine.
    let batch = b"m value=2i 2000\nm value=3.0 3000\nother,t=x value=1.0 4000\n";
    let outcomes = submit_all(&run.writer, batch, 10).await;
    let [outcome] = &outcomes[..] else { panic!("{outcomes:?}") };
    assert_eq!((outcome.written, outcome.dropped), (2, 1), "{outcome:?}");
    let message = outcome.error.as_deref().unwrap_or_default();
    assert!(message.contains("field type conflict"), "{message}");
    // One request for that batch: it is not resent.
    assert_eq!(proxy.requests_to("/write").len(), 2);
    assert_eq!(influx.scalar("conflict", "SELECT count(\"value\") FROM \"m\"").await, 2.0);
    assert_eq!(influx.scalar("conflict", "SELECT count(\"value\") FROM \"other\"").await, 1.0);
    let metrics = run.telemetry.render_prometheus();
    assert!(metrics.contains("logmill_influx_points_dropped_total 1\n"), "{metrics}");
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_error_without_the_secret() {
    let influx = Influxd::start_with_auth("admin", "right-secret").await;
    let run = start(settings(&[influx.url()], "authdb", |r| {
        r.username = "admin".into();
        r.password_from_env = Some("wrong-secret".into());
    }));
    let outcomes = submit_all(&run.writer, b"m v=1.0 1\n", 10).await;
    let [Outcome { rejected: 1, error: Some(message), .. }] = &outcomes[..] else { panic!("{outcomes:?}") };
    assert!(message.contains(&influx.url()), "names the URL: {message}");
    assert!(message.contains("`admin`"), "names the user: {message}");
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("wrong-secret") && !message.contains("right-secret"), "{message}");
    let metrics = run.telemetry.render_prometheus();
    assert!(metrics.contains("logmill_influx_points_rejected_total 1\n"), "{metrics}");

    // The right password: written, into a database the writer creates with the credentials.
    let run = start(settings(&[influx.url()], "authdb", |r| {
        r.username = "admin".into();
        r.password_from_env = Some("right-secret".into());
    }));
    assert_eq!(submit_all(&run.writer, b"m v=1.0 1\n", 10).await, [Outcome::written(1)]);
}

#[tokio::test]
async fn failover_to_the_next_url() {
    let influx = Influxd::start().await;
    influx.create_database("failover").await;
    // A port nobody listens on, then the real server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let run = start(settings(&[format!("http://{dead}"), influx.url()], "failover", |_| {}));
    let outcomes = submit_all(&run.writer, b"m v=1.0 1\nm v=2.0 2\n", 1).await;
    assert_eq!(outcomes, [Outcome::written(1), Outcome::written(1)]);
    assert_eq!(influx.scalar("failover", "SELECT count(\"v\") FROM \"m\"").await, 2.0);
}

#[tokio::test]
async fn back_pressure_while_unavailable_then_delivery() {
    let influx = Influxd::start().await;
    influx.create_database("pressure").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    proxy.set_unavailable(true);
    let run = start(settings(&[proxy.url()], "pressure", |r| r.buffer_max_bytes = 4096));
    let line = |i: usize| Bytes::from(format!("m,i={i} v=1.0 {i}\n").repeat(100));
    // The budget holds about 4 KiB: the first submissions fit, then `submit` waits. Each is
    // polled once: one that fits completes at once (room in the budget and the channel), and
    // one that does not can only complete when a batch is answered, which the 503s prevent. No
    // time window decides which is which.
    let mut pending = Vec::new();
    let mut blocked_at = None;
    for i in 0..20 {
        let mut submit = std::pin::pin!(run.writer.submit(line(i), 100));
        match submit.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(p) => pending.push(p.unwrap()),
            Poll::Pending => {
                blocked_at = Some(i);
                break;
            }
        }
    }
    let blocked_at = blocked_at.expect("submit must wait while the buffer is full");
    assert!(blocked_at < 20);
    let gauge = run.telemetry.render_prometheus();
    assert!(gauge.contains("logmill_influx_buffer_capacity_bytes 4096"), "{gauge}");
    proxy.set_unavailable(false);
    for i in blocked_at..20 {
        pending.push(run.writer.submit(line(i), 100).await.unwrap());
    }
    for p in pending {
        assert_eq!(p.await, Outcome::written(100));
    }
    assert_eq!(influx.scalar("pressure", "SELECT count(\"v\") FROM \"m\"").await, 20.0);
}

#[tokio::test]
async fn cancel_stops_retrying_and_answers_aborted() {
    let influx = Influxd::start().await;
    let proxy = FaultProxy::start(influx.addr()).await;
    proxy.set_unavailable(true);
    let run = start(settings(&[proxy.url()], "never", |_| {}));
    let pending = run.writer.submit(Bytes::from_static(b"m v=1.0 1\n"), 1).await.unwrap();
    // Cancel once the writer is retrying (it has had a 503), not after a guessed delay.
    wait_until("a refused write", || !proxy.requests_to("/write").is_empty()).await;
    run.cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap();
    assert_eq!(outcome, Outcome::aborted(1), "not written, so not acknowledged");
}

#[tokio::test]
async fn the_v2_request_matches_the_documented_api() {
    // No 2.x server here: a listener captures the request and answers 204 as the API documents.
    // https://docs.influxdata.com/influxdb/v2/api/#operation/PostWrite
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let captured = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await.unwrap();
                return (head, buf[end + 4..end + 4 + len].to_vec());
            }
        }
    });
    let run = start(settings(&[url], "unused", |r| {
        r.api_version = 2;
        r.org = "acme corp".into();
        r.bucket = "k8s".into();
        r.token_from_env = Some("tok-123".into());
    }));
    let lines = b"deis_router_bytes_sent,app=foo,status_code=200,host=n value=211.0 1464713772000000042\n";
    assert_eq!(submit_all(&run.writer, lines, 10).await, [Outcome::written(1)]);
    let (head, body) = captured.await.unwrap();
    let mut head_lines = head.lines();
    assert_eq!(
        head_lines.next().unwrap(),
        "POST /api/v2/write?org=acme%20corp&bucket=k8s&precision=ns HTTP/1.1"
    );
    let headers: BTreeMap<String, String> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_eq!(headers["authorization"], "Token tok-123");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut unzipped).unwrap();
    assert_eq!(unzipped, lines);
}

#[tokio::test]
async fn replay_output_influx_from_the_command_line() {
    let influx = Influxd::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_logmill"))
        .args(["replay", "--host", "node-1", "--output", "influx", "--influx-url", &influx.url()])
        .args(["--influx-db", "cli", "testdata/router-cri.log"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("INFLUXDB_URLS")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = reference_points().iter().filter(|&&b| b == b'\n').count();
    assert!(stderr.contains(&format!("{lines} points submitted, {lines} written")), "{stderr}");
    assert_reference_counts(&influx, "cli").await;
}

/// A TLS terminator in front of influxd, with the test certificate of `testdata/tls/`
/// (`localhost`, 127.0.0.1), so that the writer's `https://` and `ca_file` meet a real
/// handshake; the bytes inside go to influxd unchanged.
async fn https_front(influxd: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(influxd).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    let influx = Influxd::start().await;
    let front = https_front(influx.addr()).await;
    let ca = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tls/ca.pem");
    let url = format!("https://localhost:{}", front.port());
    let run = start(settings(std::slice::from_ref(&url), "tls", |r| r.ca_file = ca.display().to_string()));
    assert_eq!(submit_all(&run.writer, b"m v=1.0 1\nm v=2.0 2\n", 10).await, [Outcome::written(2)]);
    assert_eq!(influx.scalar("tls", "SELECT count(\"v\") FROM \"m\"").await, 2.0);

    // Without the CA the certificate is not trusted: nothing is written, and the writer keeps
    // retrying (a network-level failure) until it is stopped.
    let untrusted = start(settings(&[url], "tls_untrusted", |_| {}));
    let pending = untrusted.writer.submit(Bytes::from_static(b"m v=1.0 1\n"), 1).await.unwrap();
    let retries = || counter(&untrusted.telemetry.render_prometheus(), "logmill_influx_retries_total");
    wait_until("a failed handshake to be retried", || retries() > 0).await;
    untrusted.cancel.cancel();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap(), Outcome::aborted(1));
}

#[tokio::test]
async fn a_split_batch_counts_each_part_as_it_ended() {
    let influx = Influxd::start().await;
    influx.create_database("split").await;
    let proxy = FaultProxy::start(influx.addr()).await;
    // No gzip, so the proxy's limit is on the plain bytes: one line alone is over it.
    proxy.set_max_body_bytes(Some(1000));
    let run = start(settings(&[proxy.url()], "split", |r| r.gzip = false));
    let big = format!("m,t={} v=3.0 3\n", "x".repeat(5000));
    let lines = format!("m v=1.0 1\n{big}m v=2.0 2\n");
    let outcomes = submit_all(&run.writer, lines.as_bytes(), 10).await;
    // The one submission learns exactly how its points ended.
    assert!(
        matches!(&outcomes[..], [Outcome { written: 2, rejected: 1, dropped: 0, aborted: 0, .. }]),
        "{outcomes:?}"
    );
    // The two small points were written; only the one too large for the server was refused.
    assert_eq!(influx.scalar("split", "SELECT count(\"v\") FROM \"m\"").await, 2.0);
    let metrics = run.telemetry.render_prometheus();
    assert_eq!(counter(&metrics, "logmill_influx_points_written_total"), 2, "{metrics}");
    assert_eq!(counter(&metrics, "logmill_influx_points_rejected_total"), 1, "{metrics}");
}

/// An urgent submission (a consumer's window whose messages wait on it) goes out at once: not
/// after the flush interval, and not waiting for the batch to fill.
#[tokio::test]
async fn an_urgent_submission_is_not_held_for_the_batch() {
    let influx = Influxd::start().await;
    // A flush interval no test waits for: only urgency can send these.
    let r = start(settings(&[influx.url()], "urgent", |raw| raw.flush_interval_ms = 3_600_000));
    // The flush timer's first tick comes at once: spend it.
    let first = r.writer.submit(Bytes::from_static(b"m,t=first v=0 1\n"), 1).await.unwrap();
    assert_eq!(first.await, Outcome::written(1));
    let lazy = r.writer.submit(Bytes::from_static(b"m,t=a v=1 1\n"), 1).await.unwrap();
    let urgent = r.writer.submit_urgent(Bytes::from_static(b"m,t=b v=2 2\n"), 1).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), async { (lazy.await, urgent.await) }).await;
    let (lazy, urgent) = answered.expect("answered long before the flush interval");
    // The lazy one shared the urgent one's batch.
    assert_eq!((lazy, urgent), (Outcome::written(1), Outcome::written(1)));
    assert_eq!(influx.scalar("urgent", "SELECT count(\"v\") FROM \"m\"").await, 3.0);
    drop(r.writer);
    r.cancel.cancel();
    r.tracker.close();
    r.tracker.wait().await;
}

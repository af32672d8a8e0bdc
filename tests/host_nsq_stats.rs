//! The nsqd statistics collector against a real nsqd v1.3.0 (`../shared/peers/bin/nsqd`),
//! with topics, channels and a client it has really seen: messages published with logmill's
//! producer, some consumed and finished by logmill's consumer, some held in flight.
//!
//! The nsqd comes from the shared harness (`tests/support/nsqd.rs`); on a machine without the
//! binary the test says it is skipped (the in-process broker has no HTTP `/stats`).
//!
//! `LOGMILL_WRITE_NSQD_STATS=FILE` also writes nsqd's raw answer to FILE: that is how
//! `testdata/nsqd/stats.json` was recorded.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use logmill::config::RawConfig;
use logmill::host::Collector;
use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};
use logmill::nsq::connection::ConnectionSettings;
use logmill::nsq::consumer::{fixed_addresses, Consumer, ConsumerSettings};
use logmill::nsq::producer::{Producer, ProducerSettings};
use logmill::telemetry::Telemetry;
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn by_tags<'a>(points: &'a [Point], measurement: &str, tags: &[(&str, &str)]) -> &'a Point {
    let found: Vec<&Point> = points
        .iter()
        .filter(|p| p.measurement == measurement && tags.iter().all(|(k, v)| p.tag_value(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{measurement} {tags:?} in {points:#?}");
    found[0]
}

fn int(p: &Point, field: &str) -> i64 {
    match p.field_value(field) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{} {field}: {other:?} (an integer, as Telegraf writes it)", p.measurement),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collects_what_a_real_nsqd_has_seen() {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        return nsqd::skip("collects_what_a_real_nsqd_has_seen", "nsqd (the broker has no HTTP /stats)");
    };
    tokio::time::timeout(TEST_TIMEOUT, scenario(&nsqd)).await.expect("scenario within 60 s");
}

async fn scenario(nsqd: &Nsqd) {
    let http = format!("http://{}", nsqd.http_addr());
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("{http}/ping")).await != (200, "OK".into()) {
        assert!(Instant::now() < deadline, "nsqd /ping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let telemetry = Telemetry::default();
    let producer = Producer::start(
        ProducerSettings { addresses: vec![nsqd.tcp_addr().to_string()], ..ProducerSettings::default() },
        &telemetry,
        &tracker,
        cancel.clone(),
    );
    // `logs`: 7 messages, nobody subscribed.
    for i in 0..7 {
        producer.publish("logs", Bytes::from(format!("log line {i}"))).await.unwrap();
    }
    // `metrics`: channel `logmill` created first (the consumer does it over HTTP), then 10
    // messages; the consumer finishes 4 and holds the next 3 in flight (RDY 3).
    let connection = ConnectionSettings {
        client_id: "stats-test".into(),
        hostname: "stats-test-host".into(),
        ..ConnectionSettings::default()
    };
    let (_consumer, mut deliveries) = Consumer::start(
        ConsumerSettings {
            topic: "metrics".into(),
            channel: "logmill".into(),
            connection,
            max_in_flight: 3,
            create_on: vec![http.clone()],
            ..ConsumerSettings::default()
        },
        fixed_addresses([nsqd.tcp_addr().to_string()]),
        None,
        &telemetry,
        &tracker,
        cancel.clone(),
    )
    .unwrap();
    // Wait for the channel (created before SUB) so no message goes only to the topic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(&format!("{http}/stats?format=json&topic=metrics"))
        .await
        .1
        .contains("\"channel_name\":\"logmill\"")
    {
        assert!(Instant::now() < deadline, "channel logmill never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..10 {
        producer.publish("metrics", Bytes::from(format!("cpu value={i}i"))).await.unwrap();
    }
    for _ in 0..4 {
        deliveries.recv().await.expect("a delivery").finish().await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(deliveries.recv().await.expect("a delivery"));
    }
    // nsqd counts a FIN when it reads it: wait until its stats show 4 finished, 3 in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    let raw = loop {
        let (_, body) = get(&format!("{http}/stats?format=json")).await;
        if body.contains("\"finish_count\":4") && body.contains("\"in_flight_count\":3") {
            break body;
        }
        assert!(Instant::now() < deadline, "nsqd never showed 4 finished and 3 in flight: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(path) = std::env::var_os("LOGMILL_WRITE_NSQD_STATS") {
        std::fs::write(&path, &raw).unwrap();
    }

    let mut raw_config = RawConfig::load(None).unwrap();
    raw_config.collect.inputs = Vec::new();
    raw_config.collect.nsqd.endpoints = vec![nsqd.http_addr().to_string()];
    let settings = raw_config.validate().unwrap();
    let collector = Collector::new(&settings.collect, "node-1", &telemetry).unwrap();
    assert_eq!(collector.input_names(), ["nsq"]);
    let report = collector.once().await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let body: Vec<u8> = report.batches.iter().flat_map(|b| b.body.to_vec()).collect();
    let points: Vec<Point> = parse_lines(&body).map(|(_, p)| p.expect("valid line protocol")).collect();
    let server_host = nsqd.http_addr().to_string();
    assert!(points.iter().all(|p| p.tag_value("server_host") == Some(server_host.as_str())
        && p.tag_value("server_version") == Some("1.3.0")
        && p.tag_value("host") == Some("node-1")));
    assert_eq!(points.len(), 1 + 2 + 1 + 1, "server, 2 topics, 1 channel, 1 client: {points:#?}");

    let server = by_tags(&points, "nsq_server", &[]);
    assert_eq!((int(server, "server_count"), int(server, "topic_count")), (1, 2));

    let logs = by_tags(&points, "nsq_topic", &[("topic", "logs")]);
    assert_eq!(int(logs, "depth"), 7, "nobody reads `logs`");
    assert_eq!(int(logs, "message_count"), 7);
    assert_eq!(int(logs, "backend_depth"), 0, "7 messages fit nsqd's memory queue");
    assert_eq!(int(logs, "channel_count"), 0);

    let metrics = by_tags(&points, "nsq_topic", &[("topic", "metrics")]);
    assert_eq!(int(metrics, "message_count"), 10);
    assert_eq!(int(metrics, "depth"), 0, "passed on to the channel");
    assert_eq!(int(metrics, "channel_count"), 1);

    let channel = by_tags(&points, "nsq_channel", &[("topic", "metrics"), ("channel", "logmill")]);
    assert_eq!(int(channel, "message_count"), 10);
    assert_eq!(int(channel, "inflight_count"), 3, "held, not finished");
    assert_eq!(int(channel, "depth"), 3, "10 − 4 finished − 3 in flight");
    assert_eq!(int(channel, "client_count"), 1);
    assert_eq!(
        (int(channel, "requeue_count"), int(channel, "timeout_count"), int(channel, "deferred_count")),
        (0, 0, 0)
    );

    let client = by_tags(&points, "nsq_client", &[("channel", "logmill"), ("client_id", "stats-test")]);
    assert_eq!(client.tag_value("client_hostname"), Some("stats-test-host"));
    assert_eq!(client.tag_value("client_user_agent"), Some(concat!("logmill/", env!("CARGO_PKG_VERSION"))));
    assert_eq!(client.tag_value("client_version"), Some("V2"));
    assert_eq!(client.tag_value("client_tls"), Some("false"));
    assert!(client.tag_value("client_address").is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(int(client, "finish_count"), 4);
    assert_eq!(int(client, "inflight_count"), 3);
    assert_eq!(int(client, "message_count"), 7, "4 finished + 3 held");
    assert_eq!(int(client, "requeue_count"), 0);
    assert_eq!(int(client, "ready_count"), 3, "RDY = max_in_flight");

    drop(held);
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nsqd_is_a_problem_not_a_failure() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut raw_config = RawConfig::load(None).unwrap();
    raw_config.collect.inputs = vec!["kernel".into()];
    raw_config.collect.nsqd.endpoints = vec![format!("127.0.0.1:{port}")];
    raw_config.collect.nsqd.timeout_ms = 2000;
    let settings = raw_config.validate().unwrap();
    let report = Collector::new(&settings.collect, "node-1", &Telemetry::default()).unwrap().once().await;
    let inputs: BTreeSet<&str> = report.batches.iter().map(|b| b.input).collect();
    assert_eq!(inputs, BTreeSet::from(["kernel"]), "the other input still delivers");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].0, "nsq");
    assert_eq!(report.problems[0].1.reason, "http");
    assert!(report.problems[0].1.detail.contains(&port.to_string()));
}

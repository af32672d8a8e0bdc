//! nsqlookupd discovery over real HTTP, and creating topics and channels on a real nsqd
//! (`tests/support/nsqd.rs`; the test broker where none is installed).
//!
//! [`FakeLookupd`] is a few lines of HTTP/1.1 on a loopback port that answers `GET /lookup`
//! with the two shapes nsqlookupd has used (v1 `{"channels":…,"producers":…}` and the pre-1.0
//! wrapped `{"status_code":200,…,"data":…}`, see `parse_lookup_response` for the sources), from
//! a list the test changes, or fails the way a lookupd fails (connection closed, 500): what a
//! real nsqlookupd v1.3.0 cannot be made to do (it speaks one shape and does not fail on
//! demand). Discovery with a real nsqlookupd and real nsqd is
//! `a_consumer_follows_nsqd_joining_and_leaving_a_real_lookupd`. Polls run every 100 ms, so
//! the file takes a few seconds.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logmill::nsq::http::create_topic_and_channel;
use logmill::nsq::lookupd::{Discovery, LookupdSettings};
use logmill::telemetry::Telemetry;
use serde_json::json;
use support::nsqd::{NsqServer, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const POLL: Duration = Duration::from_millis(100);
/// Longest wait for a change that should come within a few polls.
const WAIT: Duration = Duration::from_secs(5);

/// What a fake lookupd answers.
#[derive(Debug, Clone)]
enum Mode {
    /// 200, v1 shape, these producers (`(broadcast_address, tcp_port)`).
    V1(Vec<(&'static str, u16)>),
    /// 200, pre-1.0 wrapped shape.
    Wrapped(Vec<(&'static str, u16)>),
    /// 404 `{"message":"TOPIC_NOT_FOUND"}`.
    TopicNotFound,
    /// The wrapped 500 `TOPIC_NOT_FOUND` of pre-1.0 lookupds.
    TopicNotFoundWrapped,
    /// 500 `{"message":"INTERNAL_ERROR"}`.
    InternalError,
    /// Closes the connection without answering.
    Down,
}

struct FakeLookupd {
    address: String,
    mode: Arc<Mutex<Mode>>,
    /// Requests answered while in each mode: (all, failed ones).
    requests: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    /// The head of the last request.
    last_request: Arc<Mutex<String>>,
}

impl FakeLookupd {
    async fn start(mode: Mode) -> FakeLookupd {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let lookupd = FakeLookupd {
            address,
            mode: Arc::new(Mutex::new(mode)),
            requests: Arc::default(),
            failures: Arc::default(),
            last_request: Arc::default(),
        };
        let (mode, requests, failures, last) = (
            lookupd.mode.clone(),
            lookupd.requests.clone(),
            lookupd.failures.clone(),
            lookupd.last_request.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                *last.lock().unwrap() = String::from_utf8_lossy(&head).into_owned();
                requests.fetch_add(1, Ordering::SeqCst);
                let mode = mode.lock().unwrap().clone();
                let producers = |list: &[(&str, u16)]| {
                    list.iter()
                        .map(|(host, port)| {
                            // Every field nsqlookupd v1.3.0's PeerInfo writes.
                            json!({
                                "remote_address": "127.0.0.1:50000", "hostname": "nsqd-host",
                                "broadcast_address": host, "tcp_port": port, "http_port": port + 1,
                                "version": "1.3.0", "topology_zone": "", "topology_region": "",
                            })
                        })
                        .collect::<Vec<_>>()
                };
                let (status, body) = match &mode {
                    Mode::V1(list) => (200, json!({ "channels": ["logmill"], "producers": producers(list) })),
                    Mode::Wrapped(list) => (
                        200,
                        json!({ "status_code": 200, "status_txt": "OK",
                                "data": { "channels": ["logmill"], "producers": producers(list) } }),
                    ),
                    Mode::TopicNotFound => (404, json!({ "message": "TOPIC_NOT_FOUND" })),
                    Mode::TopicNotFoundWrapped => {
                        (500, json!({ "status_code": 500, "status_txt": "TOPIC_NOT_FOUND", "data": null }))
                    }
                    Mode::InternalError => (500, json!({ "message": "INTERNAL_ERROR" })),
                    Mode::Down => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        drop(stream);
                        continue;
                    }
                };
                if status == 500 && matches!(mode, Mode::InternalError) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\nX-NSQ-Content-Type: nsq; version=1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        lookupd
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

struct Running {
    rx: watch::Receiver<BTreeSet<String>>,
    telemetry: Telemetry,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

fn start(addresses: &[String], max_failed_polls: u32) -> Running {
    let mut settings = LookupdSettings::new(addresses, "logs", POLL).unwrap();
    settings.max_failed_polls = max_failed_polls;
    settings.timeout = Duration::from_secs(2);
    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let rx = Discovery::start(settings, None, &telemetry, &tracker, cancel.clone()).unwrap();
    Running { rx, telemetry, tracker, cancel }
}

impl Running {
    /// Waits until the watch holds exactly `want`.
    async fn until(&mut self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        let waited = tokio::time::timeout(WAIT, self.rx.wait_for(|set| *set == want)).await.is_ok();
        assert!(waited, "timed out waiting for {want:?}; have {:?}", *self.rx.borrow());
    }

    fn metric(&self, line_start: &str) -> u64 {
        let text = self.telemetry.render_prometheus();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        assert!(
            tokio::time::timeout(WAIT, self.tracker.wait()).await.is_ok(),
            "discovery did not stop on cancel"
        );
    }
}

#[tokio::test]
async fn union_over_lookupds_of_both_shapes() {
    let a = FakeLookupd::start(Mode::V1(vec![("10.0.0.1", 4150)])).await;
    let b = FakeLookupd::start(Mode::Wrapped(vec![("10.0.0.1", 4150), ("::1", 4150)])).await;
    // One as `host:port`, one as a URL: both forms of `lookupd_http_addresses`.
    let mut d = start(&[a.address.clone(), format!("http://{}/", b.address)], 3);
    d.until(&["10.0.0.1:4150", "[::1]:4150"]).await;

    // What the lookupds were asked.
    let request = a.last_request.lock().unwrap().clone();
    assert!(request.starts_with("GET /lookup?topic=logs HTTP/1.1\r\n"), "{request}");
    assert!(
        request.to_ascii_lowercase().contains("accept: application/vnd.nsq; version=1.0\r\n"),
        "{request}"
    );

    // A producer added on one lookupd appears.
    a.set(Mode::V1(vec![("10.0.0.1", 4150), ("nsqd-2.nsqd", 4250)]));
    d.until(&["10.0.0.1:4150", "[::1]:4150", "nsqd-2.nsqd:4250"]).await;

    // Gone from one answer but still in the other: it stays.
    a.set(Mode::V1(vec![("nsqd-2.nsqd", 4250)]));
    let polls = a.requests.load(Ordering::SeqCst);
    support::eventually(WAIT, "two more polls of a", || a.requests.load(Ordering::SeqCst) >= polls + 2).await;
    assert!(d.rx.borrow().contains("10.0.0.1:4150"), "b still names it: {:?}", *d.rx.borrow());

    // Gone from every answer: it leaves.
    b.set(Mode::Wrapped(vec![("::1", 4150)]));
    d.until(&["[::1]:4150", "nsqd-2.nsqd:4250"]).await;
    assert_eq!(d.metric("logmill_nsq_lookupd_producers{topic=\"logs\"}"), 2);
    assert!(d.metric("logmill_nsq_lookupd_polls_total{result=\"ok\"}") >= 6);
    d.stop().await;
}

#[tokio::test]
async fn a_failed_lookupd_keeps_its_answer_for_max_failed_polls() {
    const MAX_FAILED_POLLS: u32 = 3;
    let a = FakeLookupd::start(Mode::V1(vec![("10.0.0.1", 4150)])).await;
    let b = FakeLookupd::start(Mode::V1(vec![("10.0.0.2", 4150)])).await;
    let mut d = start(&[a.address.clone(), b.address.clone()], MAX_FAILED_POLLS);
    d.until(&["10.0.0.1:4150", "10.0.0.2:4150"]).await;

    for (round, failure) in [Mode::Down, Mode::InternalError].into_iter().enumerate() {
        let failures_before = b.failures.load(Ordering::SeqCst);
        b.set(failure.clone());
        // b's producer stays through MAX_FAILED_POLLS failed polls and leaves at the next.
        support::eventually(WAIT, "b's failures", || {
            b.failures.load(Ordering::SeqCst) - failures_before >= MAX_FAILED_POLLS as usize
        })
        .await;
        assert!(
            d.rx.borrow().contains("10.0.0.2:4150"),
            "{failure:?}: forgotten before {MAX_FAILED_POLLS} failed polls"
        );
        d.until(&["10.0.0.1:4150"]).await;
        let failed = b.failures.load(Ordering::SeqCst) - failures_before;
        // Forgotten at failure MAX + 1; one more poll may have been served since.
        assert!(
            (MAX_FAILED_POLLS as usize + 1..=MAX_FAILED_POLLS as usize + 2).contains(&failed),
            "round {round} ({failure:?}): forgotten after {failed} failed polls"
        );

        // Back: its producers return at its first answer.
        b.set(Mode::V1(vec![("10.0.0.2", 4150)]));
        d.until(&["10.0.0.1:4150", "10.0.0.2:4150"]).await;
    }
    assert!(
        d.metric("logmill_nsq_lookupd_polls_total{result=\"error\"}") >= 2 * (MAX_FAILED_POLLS as u64 + 1)
    );

    d.stop().await;
}

#[tokio::test]
async fn every_lookupd_down_keeps_the_set() {
    const MAX_FAILED_POLLS: u32 = 2;
    let a = FakeLookupd::start(Mode::V1(vec![("10.0.0.1", 4150), ("10.0.0.2", 4150)])).await;
    let mut d = start(std::slice::from_ref(&a.address), MAX_FAILED_POLLS);
    d.until(&["10.0.0.1:4150", "10.0.0.2:4150"]).await;
    // Down well past the bound: nothing is known, and the set is kept rather than emptied.
    a.set(Mode::Down);
    support::eventually(WAIT, "failures past the bound", || {
        a.failures.load(Ordering::SeqCst) > MAX_FAILED_POLLS as usize + 3
    })
    .await;
    assert_eq!(*d.rx.borrow(), ["10.0.0.1:4150", "10.0.0.2:4150"].map(String::from).into());
    // Its first answer after the outage counts in full.
    a.set(Mode::V1(vec![("10.0.0.2", 4150)]));
    d.until(&["10.0.0.2:4150"]).await;
    d.stop().await;
}

#[tokio::test]
async fn topic_not_found_means_no_producers() {
    let a = FakeLookupd::start(Mode::TopicNotFound).await;
    let mut d = start(std::slice::from_ref(&a.address), 3);
    support::eventually(WAIT, "a few polls", || a.requests.load(Ordering::SeqCst) >= 3).await;
    assert!(d.rx.borrow().is_empty());
    assert!(!d.rx.has_changed().unwrap(), "an unchanged (empty) set is not sent again");
    assert_eq!(d.metric("logmill_nsq_lookupd_polls_total{result=\"error\"}"), 0, "not an error");

    // The topic appears, then is deleted: TOPIC_NOT_FOUND empties the set at once (it is an
    // answer, not a failure kept through max_failed_polls).
    a.set(Mode::V1(vec![("10.0.0.1", 4150)]));
    d.until(&["10.0.0.1:4150"]).await;
    a.set(Mode::TopicNotFound);
    d.until(&[]).await;
    // The same with the wrapped 500 of pre-1.0 lookupds.
    a.set(Mode::Wrapped(vec![("10.0.0.1", 4150)]));
    d.until(&["10.0.0.1:4150"]).await;
    let errors = d.metric("logmill_nsq_lookupd_polls_total{result=\"error\"}");
    a.set(Mode::TopicNotFoundWrapped);
    d.until(&[]).await;
    assert_eq!(d.metric("logmill_nsq_lookupd_polls_total{result=\"error\"}"), errors);
    assert_eq!(d.metric("logmill_nsq_lookupd_producers{topic=\"logs\"}"), 0);
    d.stop().await;
}

#[tokio::test]
async fn stops_when_every_receiver_is_gone() {
    let a = FakeLookupd::start(Mode::V1(vec![("10.0.0.1", 4150)])).await;
    let d = start(std::slice::from_ref(&a.address), 3);
    let Running { rx, tracker, cancel: _cancel, .. } = d;
    drop(rx);
    tracker.close();
    assert!(tokio::time::timeout(WAIT, tracker.wait()).await.is_ok(), "discovery outlived its receivers");
}

#[tokio::test]
async fn creates_topics_and_channels_on_nsqd() {
    let server = NsqServer::start_default().await;
    let http_addr = server.http_addr();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let names = |stats: &Stats| stats.topics.iter().map(|t| t.topic_name.clone()).collect::<BTreeSet<_>>();

    create_topic_and_channel(&client, &http_addr, "logs", Some("logmill")).await.unwrap();
    let stats = server.stats().await;
    assert_eq!(names(&stats), BTreeSet::from(["logs".to_owned()]));
    assert!(stats.channel("logs", "logmill").is_some());
    // Idempotent, a URL works as well as `host:port`, and the channel is optional.
    create_topic_and_channel(&client, &format!("http://{http_addr}/"), "logs", Some("logmill"))
        .await
        .unwrap();
    create_topic_and_channel(&client, &http_addr, "metrics", None).await.unwrap();
    assert_eq!(names(&server.stats().await), BTreeSet::from(["logs".to_owned(), "metrics".to_owned()]));
    // A `#` must be percent-encoded, or nsqd would read the channel as `x` (and a fragment).
    create_topic_and_channel(&client, &http_addr, "metrics", Some("tail#ephemeral")).await.unwrap();
    assert!(server.stats().await.channel("metrics", "tail#ephemeral").is_some());

    // nsqd's refusal names the URL and nsqd's reason (its own words: INVALID_TOPIC for
    // /topic/create, INVALID_ARG_CHANNEL for /channel/create).
    let e = create_topic_and_channel(&client, &http_addr, "bad name", None).await.unwrap_err().to_string();
    assert!(e.contains(&http_addr) && e.contains("/topic/create") && e.contains("INVALID_TOPIC"), "{e}");
    let e = create_topic_and_channel(&client, &http_addr, "logs", Some("a/b")).await.unwrap_err().to_string();
    assert!(e.contains("/channel/create") && e.contains("400") && e.contains("INVALID_ARG_CHANNEL"), "{e}");
    // Nothing listening: a network error naming the URL.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let e = create_topic_and_channel(&client, &closed, "logs", None).await.unwrap_err().to_string();
    assert!(e.contains(&closed), "{e}");
    let e = create_topic_and_channel(&client, "ftp://x", "logs", None).await.unwrap_err().to_string();
    assert!(e.contains("ftp://x"), "{e}");
}

/// A real nsqlookupd with real nsqd (skipped, and said so, without the binaries): the consumer,
/// fed by discovery, subscribes to both nsqd registered for the topic, picks up a third that
/// joins, and lets go of one that leaves: once the lookupd no longer names it, nothing dials
/// its address again (a listener put on its port after it exited sees no connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_nsqd_joining_and_leaving_a_real_lookupd() {
    use logmill::nsq::consumer::{Consumer, ConsumerSettings};
    use support::nsqd::{self, Nsqd, NsqdOptions, Nsqlookupd};
    const TEST: &str = "a_consumer_follows_nsqd_joining_and_leaving_a_real_lookupd";
    let Some(lookupd) = Nsqlookupd::start().await else { return nsqd::skip(TEST, "nsqlookupd") };
    let options = NsqdOptions { lookupd_tcp_addresses: vec![lookupd.tcp_addr()], ..NsqdOptions::default() };
    let start_nsqd = || async {
        let nsqd = Nsqd::start(options.clone()).await?;
        // The topic and channel exist up front; nsqd registers both with the lookupd.
        let client = reqwest::Client::new();
        create_topic_and_channel(&client, &nsqd.http_addr().to_string(), "logs", Some("logmill"))
            .await
            .unwrap();
        Some(nsqd)
    };
    let (Some(a), Some(mut b)) = (start_nsqd().await, start_nsqd().await) else {
        return nsqd::skip(TEST, "nsqd");
    };
    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let settings = LookupdSettings::new(&[lookupd.http_addr().to_string()], "logs", POLL).unwrap();
    let discovered = Discovery::start(settings, None, &telemetry, &tracker, cancel.clone()).unwrap();
    let consumer_settings = ConsumerSettings {
        topic: "logs".into(),
        channel: "logmill".into(),
        max_in_flight: 10,
        reconnect_backoff_initial: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(100),
        ..ConsumerSettings::default()
    };
    let (_consumer, mut deliveries) =
        Consumer::start(consumer_settings, discovered.clone(), None, &telemetry, &tracker, cancel.clone())
            .unwrap();
    async fn subscribed(nsqd: &Nsqd) -> usize {
        nsqd.stats().await.clients("logs", "logmill").len()
    }
    let wait = Duration::from_secs(10);
    support::eventually_async(wait, "subscribed to a and b", || async {
        subscribed(&a).await == 1 && subscribed(&b).await == 1
    })
    .await;

    // A third nsqd joins: the consumer finds it through the lookupd.
    let Some(c) = start_nsqd().await else { return nsqd::skip(TEST, "nsqd") };
    support::eventually_async(wait, "subscribed to c", || async { subscribed(&c).await == 1 }).await;
    // Messages put on each of the three reach the consumer.
    for (i, nsqd) in [&a, &b, &c].into_iter().enumerate() {
        nsqd.put("logs", &[bytes::Bytes::from(format!("via {i}"))]).await;
    }
    let mut got = BTreeSet::new();
    while got.len() < 3 {
        let d = tokio::time::timeout(wait, deliveries.recv()).await.expect("a message in time").unwrap();
        got.insert(String::from_utf8_lossy(d.body()).into_owned());
        d.finish().await;
    }
    assert_eq!(got, BTreeSet::from(["via 0".to_owned(), "via 1".to_owned(), "via 2".to_owned()]));

    // b leaves: stopped, the lookupd drops it when its connection closes.
    let b_addr = b.tcp_addr();
    b.stop().await;
    let mut watch = discovered.clone();
    let gone = tokio::time::timeout(wait, watch.wait_for(|set| !set.contains(&b_addr.to_string()))).await;
    assert!(gone.is_ok(), "the lookupd still names b: {:?}", *discovered.borrow());
    assert_eq!(discovered.borrow().len(), 2, "a and c stay: {:?}", *discovered.borrow());
    // Whatever was dialing b when it left has had time to give up (a few reconnect backoffs).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = TcpListener::bind(b_addr).await.expect("b's port is free again");
    let dialed = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
    assert!(dialed.is_err(), "the consumer still dials b after it left the lookupd");
    assert_eq!((subscribed(&a).await, subscribed(&c).await), (1, 1));
    cancel.cancel();
}

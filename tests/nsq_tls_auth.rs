//! The NSQ client's TLS (`tls_v1`) and AUTH against the test broker, which serves both as
//! nsqd v1.3.0 does: the IDENTIFY answer in plain text, the TLS handshake, `OK` over TLS;
//! `auth_required`, AUTH's JSON answer, `E_AUTH_FIRST`/`E_AUTH_FAILED`, and `--tls-required`'s
//! refusal of plain commands. Certificates: `testdata/tls/` (test-only).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use logmill::nsq::connection::{
    classify_server_error, Connection, ConnectionError, ConnectionSettings, Secret, TlsSettings,
};
use logmill::nsq::consumer::{Consumer, ConsumerSettings};
use logmill::nsq::producer::{Producer, ProducerSettings, PublishError};
use logmill::nsq::protocol::{self, ErrorCode, Frame, IdentifyConfig, IdentifyResponse};
use logmill::telemetry::Telemetry;
use support::eventually;
use support::nsq_broker::{NsqBroker, NsqBrokerOptions, TlsServer, AUTH_IDENTITY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "s3cret-for-tests";

async fn tls_broker(tls_required: bool, auth: bool) -> NsqBroker {
    NsqBroker::start(NsqBrokerOptions {
        tls: Some(TlsServer::test()),
        tls_required,
        auth_secrets: auth.then(|| vec!["another-secret".to_owned(), SECRET.to_owned()]),
        ..NsqBrokerOptions::default()
    })
    .await
}

async fn auth_broker() -> NsqBroker {
    NsqBroker::start(NsqBrokerOptions {
        auth_secrets: Some(vec![SECRET.to_owned()]),
        ..NsqBrokerOptions::default()
    })
    .await
}

/// TLS trusting the test CA, verifying `server_name` (`None`: the host of the address).
fn tls(server_name: Option<&str>) -> TlsSettings {
    TlsSettings::new(Some(&TlsServer::test_ca_file()), server_name.map(str::to_owned)).expect("test CA loads")
}

fn settings(tls: Option<TlsSettings>, secret: Option<&str>) -> ConnectionSettings {
    ConnectionSettings {
        dial_timeout: Duration::from_secs(3),
        tls,
        auth_secret: secret.map(|s| Secret(s.as_bytes().to_vec())),
        ..ConnectionSettings::default()
    }
}

/// `localhost:port`, so the name the certificate is checked against is the dialed host's.
fn localhost(broker: &NsqBroker) -> String {
    format!("localhost:{}", broker.tcp_addr().port())
}

fn start_producer(addr: String, connection: ConnectionSettings) -> (Producer, CancellationToken) {
    let settings = ProducerSettings {
        addresses: vec![addr],
        connection,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        drain_timeout: Duration::from_millis(200),
        ..ProducerSettings::default()
    };
    let cancel = CancellationToken::new();
    let producer = Producer::start(settings, &Telemetry::default(), &TaskTracker::new(), cancel.clone());
    (producer, cancel)
}

/// Consumes `n` messages of `topic` (FINishing each) and returns their bodies.
async fn consume(addr: String, topic: &str, connection: ConnectionSettings, n: usize) -> Vec<Bytes> {
    let settings = ConsumerSettings {
        topic: topic.into(),
        channel: "logmill".into(),
        connection,
        max_in_flight: 10,
        ..ConsumerSettings::default()
    };
    let (_addr_tx, addrs) = watch::channel(BTreeSet::from([addr]));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (_consumer, mut deliveries) =
        Consumer::start(settings, addrs, None, &Telemetry::default(), &tracker, cancel.clone())
            .expect("valid consumer settings");
    let mut seen = Vec::new();
    while seen.len() < n {
        let d = timeout(WAIT, deliveries.recv()).await.expect("deliveries in time").expect("consumer runs");
        seen.push(d.body().clone());
        d.finish().await;
    }
    cancel.cancel();
    seen
}

/// Writes `cmd` on `conn` and pumps until a frame arrives.
async fn command(conn: &mut Connection, cmd: &[u8]) -> Result<Frame, ConnectionError> {
    conn.out().extend_from_slice(cmd);
    timeout(WAIT, async {
        loop {
            if let Some(frame) = conn.next_frame()? {
                return Ok(frame);
            }
            conn.io().await?;
        }
    })
    .await
    .expect("an answer in time")
}

fn pub_cmd(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    protocol::encode_pub(topic, body, &mut b).unwrap();
    b.to_vec()
}

#[tokio::test]
async fn tls_publishes_and_consumes_through_the_broker() {
    let broker = tls_broker(false, false).await;
    let addr = localhost(&broker);

    let conn = Connection::connect(&addr, &settings(Some(tls(Some("localhost"))), None)).await.unwrap();
    assert!(conn.negotiated().tls, "{:?}", conn.negotiated());
    assert!(!conn.negotiated().authenticated);
    assert_eq!(broker.clients().len(), 1);
    assert!(broker.clients()[0].tls);
    conn.close().await;

    let (producer, cancel) = start_producer(addr.clone(), settings(Some(tls(Some("localhost"))), None));
    let bodies: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("tls-{i:03}"))).collect();
    for b in &bodies[..10] {
        timeout(WAIT, producer.publish("tls_topic", b.clone())).await.unwrap().unwrap();
    }
    timeout(WAIT, producer.publish_multi("tls_topic", bodies[10..].to_vec())).await.unwrap().unwrap();
    assert_eq!(broker.published("tls_topic"), bodies);
    assert!(broker.clients().iter().all(|c| c.tls), "{:?}", broker.clients());

    let mut seen =
        consume(addr, "tls_topic", settings(Some(tls(Some("localhost"))), None), bodies.len()).await;
    seen.sort();
    assert_eq!(seen, bodies);
    eventually(WAIT, "every message FINished", || {
        broker.finished("tls_topic", "logmill").len() == bodies.len()
    })
    .await;
    let counters = broker.counters();
    // The probe, the producer, the consumer; nothing fell back to plain TCP.
    assert_eq!(counters.tls_upgrades, counters.connections, "{counters:?}");
    assert!(counters.tls_upgrades >= 3, "{counters:?}");
    assert_eq!(counters.tls_failures, 0);
    cancel.cancel();
}

#[tokio::test]
async fn heartbeats_and_their_nops_cross_tls() {
    let broker = tls_broker(false, true).await;
    let mut s = settings(Some(tls(Some("localhost"))), Some(SECRET));
    s.heartbeat_interval = Some(Duration::from_secs(1));
    let mut conn = Connection::connect(&localhost(&broker), &s).await.unwrap();
    // nsqd drops a client that is silent for two intervals: the NOPs must go out over TLS.
    let until = Instant::now() + Duration::from_millis(2600);
    while Instant::now() < until {
        let _ = timeout(until - Instant::now(), conn.io()).await;
        assert!(conn.next_frame().unwrap().is_none());
    }
    assert!(conn.heartbeats() >= 2, "{} heartbeats", conn.heartbeats());
    let frame = command(&mut conn, &pub_cmd("hb", b"m")).await.unwrap();
    assert!(frame.is_ok(), "{frame:?}");
    assert_eq!(broker.published_count("hb"), 1);
}

#[tokio::test]
async fn tls_verifies_the_ip_address_when_no_server_name_is_set() {
    let broker = tls_broker(false, false).await;
    // 127.0.0.1 is in the certificate's SAN.
    let conn =
        Connection::connect(&broker.tcp_addr().to_string(), &settings(Some(tls(None)), None)).await.unwrap();
    assert!(conn.negotiated().tls);
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_clear_tls_error_not_a_hang() {
    let broker = tls_broker(false, false).await;
    let addr = localhost(&broker);
    let untrusted = TlsSettings::new(None, Some("localhost".into())).unwrap();
    for (what, tls) in [("untrusted CA", untrusted), ("wrong name", tls(Some("nsqd.example.com")))] {
        let started = Instant::now();
        let err = Connection::connect(&addr, &settings(Some(tls), None)).await.unwrap_err();
        assert!(matches!(err, ConnectionError::Tls(_)), "{what}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: took {:?}", started.elapsed());
        let text = err.to_string();
        assert!(text.starts_with("TLS handshake: invalid peer certificate"), "{what}: {text}");
        assert!(!err.is_permanent());
    }
    eventually(WAIT, "both failed handshakes counted", || broker.counters().tls_failures == 2).await;
    eventually(WAIT, "the broker closed them", || broker.connection_count() == 0).await;
    assert_eq!(broker.counters().tls_upgrades, 0);
}

#[tokio::test]
async fn tls_asked_of_an_nsqd_without_tls_is_not_offered() {
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let err = Connection::connect(&localhost(&broker), &settings(Some(tls(Some("localhost"))), None))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectionError::TlsNotOffered), "{err:?}");
    assert!(err.is_permanent());
}

#[tokio::test]
async fn tls_required_refuses_a_plain_client_with_tls_required() {
    let broker = tls_broker(true, false).await;
    let addr = localhost(&broker);

    // The handshake succeeds (nsqd's IDENTIFY answer does not say TLS is required); the first
    // command is refused and the connection closed.
    let mut conn = Connection::connect(&addr, &settings(None, None)).await.unwrap();
    assert!(!conn.negotiated().tls);
    let frame = command(&mut conn, &pub_cmd("plain", b"m")).await.unwrap();
    let Frame::Error(e) = frame else { panic!("{frame:?}") };
    assert_eq!(&e.text[..], b"E_INVALID cannot PUB in current state (TLS required)");
    let err = classify_server_error(e);
    assert!(matches!(err, ConnectionError::TlsRequired(_)), "{err:?}");
    assert!(err.is_permanent());
    assert!(err.to_string().starts_with("nsqd requires TLS (set nsq.tls)"), "{err}");
    let closed: Result<(), _> = timeout(WAIT, async {
        loop {
            conn.io().await?;
        }
    })
    .await
    .unwrap();
    assert!(matches!(closed, Err(ConnectionError::Closed)), "{closed:?}");

    // A producer's publish fails (after nsqd refused it on a few connections), it does not hang.
    let (producer, cancel) = start_producer(addr.clone(), settings(None, None));
    let started = std::time::Instant::now();
    let err = timeout(WAIT, producer.publish("plain", "m")).await.unwrap().unwrap_err();
    // Each connection was refused before answering anything: the producer backed off between
    // them (50 then 100 ms, ±25 %) instead of reconnecting at once.
    assert!(started.elapsed() >= Duration::from_millis(110), "no backoff: {:?}", started.elapsed());
    match err {
        PublishError::Rejected { code: ErrorCode::Invalid, message } => {
            assert!(message.ends_with("(TLS required)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(broker.published("plain").is_empty());
    cancel.cancel();

    // With TLS the same broker takes it.
    let (producer, cancel) = start_producer(addr, settings(Some(tls(Some("localhost"))), None));
    timeout(WAIT, producer.publish("plain", "m")).await.unwrap().unwrap();
    assert_eq!(broker.published("plain"), vec![Bytes::from_static(b"m")]);
    cancel.cancel();
}

#[tokio::test]
async fn auth_with_the_right_secret_publishes_and_consumes() {
    let broker = auth_broker().await;
    let addr = localhost(&broker);
    let conn = Connection::connect(&addr, &settings(None, Some(SECRET))).await.unwrap();
    assert!(conn.negotiated().authenticated);
    assert!(broker.clients()[0].authenticated);
    conn.close().await;

    let (producer, cancel) = start_producer(addr.clone(), settings(None, Some(SECRET)));
    for i in 0..5 {
        timeout(WAIT, producer.publish("authed", format!("a{i}"))).await.unwrap().unwrap();
    }
    assert_eq!(broker.published_count("authed"), 5);
    let seen = consume(addr, "authed", settings(None, Some(SECRET)), 5).await;
    assert_eq!(seen.len(), 5);
    let counters = broker.counters();
    assert_eq!((counters.auth_accepted, counters.auth_refused), (3, 0), "{counters:?}");
    cancel.cancel();
}

#[tokio::test]
async fn auth_over_tls_and_tls_required_before_auth() {
    let broker = tls_broker(true, true).await;
    let addr = localhost(&broker);
    let conn =
        Connection::connect(&addr, &settings(Some(tls(Some("localhost"))), Some(SECRET))).await.unwrap();
    assert!(conn.negotiated().tls && conn.negotiated().authenticated, "{:?}", conn.negotiated());
    let c = &broker.clients()[0];
    assert!(c.tls && c.authenticated, "{c:?}");
    conn.close().await;
    // AUTH in plain text is refused by the TLS policy first: that is the error to report.
    let err = Connection::connect(&addr, &settings(None, Some(SECRET))).await.unwrap_err();
    match &err {
        ConnectionError::TlsRequired(e) => {
            assert_eq!(&e.text[..], b"E_INVALID cannot AUTH in current state (TLS required)")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn auth_with_a_wrong_secret_fails_and_the_producer_backs_off() {
    let broker = auth_broker().await;
    let addr = localhost(&broker);
    let err = Connection::connect(&addr, &settings(None, Some("wrong"))).await.unwrap_err();
    match &err {
        ConnectionError::Auth(e) => {
            assert_eq!(e.code, ErrorCode::AuthFailed);
            assert_eq!(&e.text[..], b"E_AUTH_FAILED AUTH failed");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "AUTH refused: E_AUTH_FAILED AUTH failed");
    eventually(WAIT, "the broker closed it", || broker.connection_count() == 0).await;

    // The producer retries with backoff (50 ms doubling to 400 ms): a handful of attempts in a
    // second, not a spin; the publish waits meanwhile.
    let (producer, cancel) = start_producer(addr, settings(None, Some("wrong")));
    let ack = producer.submit("authed", "m").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let refused = broker.counters().auth_refused - 1;
    assert!((2..=10).contains(&refused), "{refused} AUTH attempts in 1 s");
    assert!(broker.published("authed").is_empty());
    cancel.cancel();
    assert_eq!(timeout(WAIT, ack).await.unwrap(), Err(PublishError::Stopped));
}

#[tokio::test]
async fn auth_required_without_a_secret_is_a_clear_error() {
    let broker = auth_broker().await;
    let err = Connection::connect(&localhost(&broker), &settings(None, None)).await.unwrap_err();
    assert!(matches!(err, ConnectionError::AuthRequired), "{err:?}");
    assert!(err.is_permanent());
    assert_eq!(broker.counters().auth_refused, 0);
}

/// A bare protocol client for the broker's own answers.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(broker: &NsqBroker) -> Raw {
        let mut stream = TcpStream::connect(broker.tcp_addr()).await.unwrap();
        stream.write_all(protocol::MAGIC_V2).await.unwrap();
        Raw { stream, buf: BytesMut::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame but heartbeats; `None` once the broker closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        timeout(WAIT, async {
            loop {
                if let Some(f) = protocol::decode_frame(&mut self.buf, 1 << 20).unwrap() {
                    if !f.is_heartbeat() {
                        return Some(f);
                    }
                    continue;
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("a frame or the close in time")
    }

    async fn identify(&mut self, tls_v1: bool) -> IdentifyResponse {
        let mut b = BytesMut::new();
        let config = IdentifyConfig { feature_negotiation: true, tls_v1, ..IdentifyConfig::default() };
        protocol::encode_identify(&config, &mut b).unwrap();
        self.send(&b).await;
        match self.frame().await {
            Some(Frame::Response(json)) => serde_json::from_slice(&json).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Sends `cmd`, expects the error `text` and the close after it.
    async fn refused(&mut self, cmd: &[u8], text: &str) {
        self.send(cmd).await;
        match self.frame().await {
            Some(Frame::Error(e)) => assert_eq!(String::from_utf8_lossy(&e.text), text),
            other => panic!("{other:?}"),
        }
        assert!(self.frame().await.is_none(), "closed after {text}");
    }
}

fn auth_cmd(secret: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    protocol::encode_auth(secret.as_bytes(), &mut b).unwrap();
    b.to_vec()
}

#[tokio::test]
async fn the_broker_answers_auth_as_nsqd() {
    let broker = auth_broker().await;
    let mut sub = BytesMut::new();
    protocol::encode_sub("t", "c", &mut sub).unwrap();
    let mut mpub = BytesMut::new();
    protocol::encode_mpub("t", [&b"m"[..]], &mut mpub).unwrap();
    let mut dpub = BytesMut::new();
    protocol::encode_dpub("t", 10, b"m", &mut dpub).unwrap();
    let cases: [(&[u8], &str); 4] = [
        (&sub, "E_AUTH_FIRST AUTH required before SUB"),
        (&pub_cmd("t", b"m"), "E_AUTH_FIRST AUTH required before PUB"),
        (&mpub, "E_AUTH_FIRST AUTH required before MPUB"),
        (&dpub, "E_AUTH_FIRST AUTH required before DPUB"),
    ];
    for (cmd, text) in cases {
        let mut raw = Raw::open(&broker).await;
        let answer = raw.identify(false).await;
        assert!(answer.auth_required && !answer.tls_v1, "{answer:?}");
        raw.refused(cmd, text).await;
    }
    // MPUB's auth check comes before its body is read: only the line is needed.
    let mut raw = Raw::open(&broker).await;
    raw.refused(b"MPUB t\n", "E_AUTH_FIRST AUTH required before MPUB").await;
    // A bad topic is reported before the auth check, as nsqd orders them.
    let mut raw = Raw::open(&broker).await;
    raw.refused(b"PUB b@d\n\0\0\0\x01m", "E_BAD_TOPIC PUB topic name \"b@d\" is not valid").await;

    let mut raw = Raw::open(&broker).await;
    raw.refused(&auth_cmd("wrong"), "E_AUTH_FAILED AUTH failed").await;

    let mut raw = Raw::open(&broker).await;
    raw.identify(false).await;
    raw.send(&auth_cmd(SECRET)).await;
    let expected = format!(r#"{{"identity":"{AUTH_IDENTITY}","identity_url":"","permission_count":1}}"#);
    match raw.frame().await {
        Some(Frame::Response(json)) => assert_eq!(String::from_utf8_lossy(&json), expected),
        other => panic!("{other:?}"),
    }
    raw.send(&pub_cmd("t", b"m")).await;
    assert!(raw.frame().await.is_some_and(|f| f.is_ok()));
    raw.refused(&auth_cmd(SECRET), "E_INVALID AUTH already set").await;
    assert_eq!(broker.published_count("t"), 1);

    // Without auth, AUTH stays E_AUTH_DISABLED.
    let plain = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut raw = Raw::open(&plain).await;
    assert!(!raw.identify(false).await.auth_required);
    raw.refused(&auth_cmd(SECRET), "E_AUTH_DISABLED AUTH disabled").await;
}

#[tokio::test]
async fn the_broker_enforces_tls_required_as_nsqd() {
    let broker = tls_broker(true, false).await;
    let mut raw = Raw::open(&broker).await;
    // IDENTIFY is allowed; not asking for TLS gets tls_v1 false.
    assert!(!raw.identify(false).await.tls_v1);
    raw.refused(b"NOP\n", "E_INVALID cannot NOP in current state (TLS required)").await;
    let mut raw = Raw::open(&broker).await;
    raw.refused(b"RDY 1\n", "E_INVALID cannot RDY in current state (TLS required)").await;
    // nsqd refuses to start with --tls-required and no certificate.
    let no_cert = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(NsqBroker::start(NsqBrokerOptions { tls_required: true, ..NsqBrokerOptions::default() }))
    })
    .join()
    .map(drop)
    .expect_err("refused to start");
    let why = no_cert
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| no_cert.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert_eq!(why, "cannot require TLS client connections without TLS key and cert");
}

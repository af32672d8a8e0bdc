//! The NSQ client's TLS (`tls_v1`) and AUTH, against a real nsqd started with the test
//! certificate and a stand-in auth server (`tls_and_auth_through_a_real_nsqd`), and against
//! the test broker, which serves both as nsqd v1.3.0 does: the IDENTIFY answer in plain text,
//! the TLS handshake, `OK` over TLS; `auth_required`, AUTH's JSON answer,
//! `E_AUTH_FIRST`/`E_AUTH_FAILED`, and `--tls-required`'s refusal of plain commands
//! (`auth_and_tls_policy_answers_match_a_real_nsqd` holds those answers to a real nsqd's).
//! The broker tests stay for what only the broker shows: its counts of TLS handshakes and AUTH
//! verdicts, the refusals its clients got. Certificates: `testdata/tls/` (test-only).

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
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
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
    // nsqd drops a client that is silent for two intervals: the NOPs must go out over TLS for
    // the connection to see a third heartbeat (3 s in), however long that takes on a loaded
    // machine.
    timeout(WAIT, async {
        while conn.heartbeats() < 3 {
            conn.io().await.expect("the connection stays up");
            assert!(conn.next_frame().unwrap().is_none());
        }
    })
    .await
    .expect("three heartbeats in time");
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
        // A TLS error, not a hang: a hang would end as DialTimeout.
        let err = Connection::connect(&addr, &settings(Some(tls), None)).await.unwrap_err();
        assert!(matches!(err, ConnectionError::Tls(_)), "{what}: {err:?}");
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
        Raw::open_to(broker.tcp_addr()).await
    }

    async fn open_to(addr: std::net::SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(protocol::MAGIC_V2).await.unwrap();
        Raw { stream, buf: BytesMut::new() }
    }

    /// The next frame as text (`OK`, `E_… text`, a response's JSON), or `closed`.
    async fn answer(&mut self) -> String {
        match self.frame().await {
            Some(Frame::Response(data)) => String::from_utf8_lossy(&data).into_owned(),
            Some(Frame::Error(e)) => String::from_utf8_lossy(&e.text).into_owned(),
            Some(Frame::Message(m)) => format!("message {:?}", m.body),
            None => "closed".to_owned(),
        }
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

// ---------------------------------------------------------------------------------------------
// Against a real nsqd (`tests/support/nsqd.rs`; skipped, and said so, without one): started with
// the test certificate (`--tls-cert`, `--tls-key`) and `--auth-http-address` pointing at
// [`AuthServer`], a stand-in for an auth server that grants exactly the broker's answer.

/// A few lines of HTTP/1.1 answering nsqd's `GET /auth?remote_ip=…&tls=…&secret=…&common_name=…`
/// as an auth server does (nsqd v1.3.0 `internal/auth`): 200 with one authorization for every
/// topic and channel when the secret is one of `secrets`, else 403.
struct AuthServer {
    address: std::net::SocketAddr,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AuthServer {
    async fn start(secrets: &[&str]) -> AuthServer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        let queries = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = queries.clone();
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
                counted.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or_default();
                let secret = target
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("secret="))
                    .map(percent_decode)
                    .unwrap_or_default();
                let (status, body) = if target.starts_with("/auth?") && secrets.contains(&secret) {
                    let body = serde_json::json!({
                        "ttl": 3600, "identity": AUTH_IDENTITY, "identity_url": "",
                        "authorizations": [{ "topic": ".*", "channels": [".*"], "permissions": ["subscribe", "publish"] }],
                    });
                    (200, body.to_string())
                } else {
                    (403, r#"{"message":"NOT_AUTHORIZED"}"#.to_owned())
                };
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        AuthServer { address, queries }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// nsqd's flags for the test certificate, plus `--tls-required` when asked.
fn tls_args(required: bool) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
    let mut args = vec![
        format!("--tls-cert={}", dir.join("server.pem").display()),
        format!("--tls-key={}", dir.join("server.key").display()),
    ];
    if required {
        // TLS on TCP; plain HTTP stays allowed, for the harness's /ping and /stats.
        args.push("--tls-required=tcp-https".to_owned());
    }
    args
}

/// The same raw exchanges (IDENTIFY, commands before AUTH, a wrong and a right secret, AUTH
/// twice; the TLS policy) sent to a real nsqd and to the broker: every answer the same, byte
/// for byte. The broker's texts were taken from nsqd's source; this holds them to nsqd itself.
#[tokio::test]
async fn auth_and_tls_policy_answers_match_a_real_nsqd() {
    let auth = AuthServer::start(&["another-secret", SECRET]).await;
    let options = |extra: Vec<String>| NsqdOptions { extra_args: extra, ..NsqdOptions::default() };
    let Some(real_auth) = Nsqd::start(options(vec![format!("--auth-http-address={}", auth.address)])).await
    else {
        return nsqd::skip("auth_and_tls_policy_answers_match_a_real_nsqd", "nsqd");
    };
    let Some(real_tls) = Nsqd::start(options(tls_args(true))).await else { return };
    let Some(real_plain) = Nsqd::start(NsqdOptions::default()).await else { return };
    let broker_auth = auth_broker().await;
    let broker_tls = tls_broker(true, false).await;
    let broker_plain = NsqBroker::start(NsqBrokerOptions::default()).await;

    async fn auth_exchanges(addr: std::net::SocketAddr) -> Vec<String> {
        let mut transcript = Vec::new();
        let mut sub = BytesMut::new();
        protocol::encode_sub("t", "c", &mut sub).unwrap();
        let mut mpub = BytesMut::new();
        protocol::encode_mpub("t", [&b"m"[..]], &mut mpub).unwrap();
        let mut dpub = BytesMut::new();
        protocol::encode_dpub("t", 10, b"m", &mut dpub).unwrap();
        let before_auth: [&[u8]; 6] =
            [&sub, &pub_cmd("t", b"m"), &mpub, &dpub, b"MPUB t\n", b"PUB b@d\n\0\0\0\x01m"];
        for cmd in before_auth {
            let mut raw = Raw::open_to(addr).await;
            let answer = raw.identify(false).await;
            transcript.push(format!("auth_required {} tls_v1 {}", answer.auth_required, answer.tls_v1));
            raw.send(cmd).await;
            transcript.push(raw.answer().await);
            transcript.push(raw.answer().await);
        }
        let mut raw = Raw::open_to(addr).await;
        raw.send(&auth_cmd("wrong")).await;
        transcript.extend([raw.answer().await, raw.answer().await]);
        let mut raw = Raw::open_to(addr).await;
        raw.identify(false).await;
        raw.send(&auth_cmd(SECRET)).await;
        transcript.push(raw.answer().await);
        raw.send(&pub_cmd("t", b"m")).await;
        transcript.push(raw.answer().await);
        raw.send(&auth_cmd(SECRET)).await;
        transcript.extend([raw.answer().await, raw.answer().await]);
        transcript
    }
    async fn tls_policy_exchanges(addr: std::net::SocketAddr) -> Vec<String> {
        let mut transcript = Vec::new();
        for cmd in [&b"NOP\n"[..], b"RDY 1\n", &pub_cmd("t", b"m"), &auth_cmd(SECRET)] {
            let mut raw = Raw::open_to(addr).await;
            transcript.push(format!("tls_v1 {}", raw.identify(false).await.tls_v1));
            raw.send(cmd).await;
            transcript.extend([raw.answer().await, raw.answer().await]);
        }
        transcript
    }
    async fn disabled_exchanges(addr: std::net::SocketAddr) -> Vec<String> {
        let mut raw = Raw::open_to(addr).await;
        let answer = raw.identify(false).await;
        raw.send(&auth_cmd(SECRET)).await;
        vec![format!("auth_required {}", answer.auth_required), raw.answer().await, raw.answer().await]
    }

    let real = auth_exchanges(real_auth.tcp_addr()).await;
    assert_eq!(auth_exchanges(broker_auth.tcp_addr()).await, real);
    assert!(auth.queries.load(std::sync::atomic::Ordering::SeqCst) >= 2, "nsqd asked the auth server");
    assert!(real.iter().any(|a| a.starts_with(r#"{"identity":"logmill-test""#)), "{real:?}");
    let real = tls_policy_exchanges(real_tls.tcp_addr()).await;
    assert_eq!(tls_policy_exchanges(broker_tls.tcp_addr()).await, real);
    assert!(real.iter().any(|a| a.ends_with("(TLS required)")), "{real:?}");
    let real = disabled_exchanges(real_plain.tcp_addr()).await;
    assert_eq!(disabled_exchanges(broker_plain.tcp_addr()).await, real);
}

/// The client's TLS and AUTH end to end against a real nsqd: a producer and a consumer over
/// TLS with a secret move 50 messages (nsqd's stats show both connections upgraded and
/// authenticated); a wrong secret is refused with nsqd's words; with `--tls-required`, a plain
/// client is refused and a TLS one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_auth_through_a_real_nsqd() {
    let auth = AuthServer::start(&[SECRET]).await;
    let mut extra = tls_args(false);
    extra.push(format!("--auth-http-address={}", auth.address));
    let Some(nsqd) = Nsqd::start(NsqdOptions { extra_args: extra, ..NsqdOptions::default() }).await else {
        return nsqd::skip("tls_and_auth_through_a_real_nsqd", "nsqd");
    };
    let addr = format!("localhost:{}", nsqd.tcp_addr().port());
    let secure = || settings(Some(tls(Some("localhost"))), Some(SECRET));

    let conn = Connection::connect(&addr, &secure()).await.unwrap();
    assert!(conn.negotiated().tls && conn.negotiated().authenticated, "{:?}", conn.negotiated());
    conn.close().await;
    let (producer, cancel) = start_producer(addr.clone(), secure());
    let bodies: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("secure-{i:03}"))).collect();
    for b in &bodies[..10] {
        timeout(WAIT, producer.publish("secure", b.clone())).await.unwrap().unwrap();
    }
    timeout(WAIT, producer.publish_multi("secure", bodies[10..].to_vec())).await.unwrap().unwrap();
    let stats = nsqd.stats().await;
    assert_eq!(stats.topic("secure").map(|t| t.message_count), Some(50));
    assert!(stats.producers.iter().all(|c| c.tls && c.authed), "{:?}", stats.producers);
    let mut seen = consume(addr.clone(), "secure", secure(), bodies.len()).await;
    seen.sort();
    assert_eq!(seen, bodies);
    cancel.cancel();

    let err =
        Connection::connect(&addr, &settings(Some(tls(Some("localhost"))), Some("wrong"))).await.unwrap_err();
    assert_eq!(err.to_string(), "AUTH refused: E_AUTH_FAILED AUTH failed", "{err:?}");
    let err = Connection::connect(&addr, &settings(None, None)).await.unwrap_err();
    assert!(matches!(err, ConnectionError::AuthRequired), "{err:?}");
    let err = Connection::connect(&addr, &settings(Some(tls(Some("nsqd.example.com"))), Some(SECRET)))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("TLS handshake: invalid peer certificate"), "{err}");

    // --tls-required: a plain client's first command is refused for good; TLS is served.
    let Some(required) =
        Nsqd::start(NsqdOptions { extra_args: tls_args(true), ..NsqdOptions::default() }).await
    else {
        return;
    };
    let addr = format!("localhost:{}", required.tcp_addr().port());
    let (producer, cancel) = start_producer(addr.clone(), settings(None, None));
    match timeout(WAIT, producer.publish("plain", "m")).await.unwrap() {
        Err(PublishError::Rejected { code: ErrorCode::Invalid, message }) => {
            assert!(message.ends_with("(TLS required)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    cancel.cancel();
    let (producer, cancel) = start_producer(addr, settings(Some(tls(Some("localhost"))), None));
    timeout(WAIT, producer.publish("plain", "m")).await.unwrap().unwrap();
    assert_eq!(required.stats().await.topic("plain").map(|t| t.message_count), Some(1));
    cancel.cancel();
}

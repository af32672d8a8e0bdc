//! The InfluxDB test support itself, against a real `influxd` (1.6, Debian `influxdb`): the
//! fixture starts, stops and restarts throwaway servers and reads counts back; the fault proxy
//! forwards faithfully (keep-alive, chunked and gzip bodies, garbage survived) and each fault
//! does what it says: an injected status with `Retry-After`, a connection dropped before
//! forwarding (nothing written), one dropped after forwarding (the points ARE written), 413
//! above a body size as sent, a persistent 503. It also pins the exact answers of the real
//! server that the writer relies on (404 database not found, 400 partial write for a type
//! conflict and for an unparsable line, 401). These are not the writer's tests; they prove the
//! ground those stand on.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/influxd.rs"]
mod influxd;

use fault_proxy::{raw_post, raw_request, Fault, FaultProxy, Outcome, RawConnection};
use influxd::Influxd;

/// 2023-11-14T22:13:20Z in ns: a fixed time, so counts never depend on the clock.
const T0_NS: u64 = 1_700_000_000_000_000_000;

/// `n` points of `measurement`, one second apart from `T0_NS + first` s, with a `host` tag
/// alternating `a`/`b` and a float field `value`.
fn lines(measurement: &str, first: u64, n: u64) -> String {
    (first..first + n)
        .map(|i| {
            let host = if i % 2 == 0 { "a" } else { "b" };
            format!("{measurement},host={host} value={i}.5 {}\n", T0_NS + i * 1_000_000_000)
        })
        .collect()
}

/// `gzip.compress(body, mtime=0)` (Python) of the 20 lines `gz,host=a value=1 {T0_NS + i s}\n`,
/// i = 0..20: 760 bytes of line protocol in 108.
const GZIPPED_20: [u8; 108] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x8d, 0xd0, 0xab, 0x0d, 0x80, 0x30, 0x00,
    0x00, 0x51, 0xcf, 0x14, 0x1d, 0x00, 0xc1, 0xf1, 0x2b, 0x88, 0x0e, 0x83, 0x20, 0x45, 0x90, 0x20, 0xf8,
    0x08, 0xa6, 0xc7, 0x12, 0x12, 0x92, 0x3b, 0xfd, 0xd4, 0xe5, 0xbb, 0x5c, 0xb6, 0xfd, 0x48, 0x53, 0xb8,
    0xa6, 0xf5, 0x9c, 0x13, 0x81, 0x58, 0x7d, 0x2b, 0xf2, 0xbf, 0x42, 0xa9, 0x5a, 0xa9, 0x46, 0xa9, 0x56,
    0xa9, 0x4e, 0xa9, 0x5e, 0xa9, 0xa8, 0xd4, 0xa0, 0xd4, 0x68, 0x14, 0xea, 0x3d, 0xea, 0x3d, 0xea, 0x3d,
    0xea, 0x3d, 0xea, 0x3d, 0xea, 0x3d, 0xea, 0x3d, 0xea, 0x3d, 0xea, 0x3d, 0xaf, 0xf7, 0x0f, 0x57, 0x66,
    0xe2, 0x47, 0xf8, 0x02, 0x00, 0x00,
];

async fn count(influxd: &Influxd, db: &str, measurement: &str) -> f64 {
    influxd.scalar(db, &format!("SELECT count(\"value\") FROM \"{measurement}\"")).await
}

#[tokio::test]
async fn starts_writes_and_reads_back_through_the_proxy() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;

    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 5).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204, "{}", answer.text());
    assert_eq!(count(&influxd, "fixture", "m").await, 5.0);
    assert_eq!(count(&influxd, "fixture", "nothing_here").await, 0.0);
    let per_host =
        influxd.grouped("fixture", "SELECT count(\"value\") FROM \"m\" GROUP BY \"host\"", "host").await;
    assert_eq!(per_host, [("a".to_owned(), 3.0), ("b".to_owned(), 2.0)].into());
    assert_eq!(influxd.scalar("fixture", "SELECT sum(\"value\") FROM \"m\"").await, 12.5);

    // Keep-alive toward the client: two writes and a chunked one on one connection.
    let mut conn = RawConnection::connect(&proxy.url()).await.unwrap();
    for first in [10, 20] {
        let answer =
            conn.send("POST", "/write?db=fixture", &[], lines("m", first, 2).as_bytes()).await.unwrap();
        assert_eq!(answer.status, 204, "{}", answer.text());
    }
    let body = lines("m", 30, 3);
    let (one, two) = body.split_at(10);
    let chunked = format!(
        "POST /write?db=fixture HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{one}\r\n{:x};ext=1\r\n{two}\r\n0\r\n\r\n",
        one.len(),
        two.len()
    );
    conn.send_raw(chunked.as_bytes()).await.unwrap();
    let answer = conn.read_response("POST").await.unwrap();
    assert_eq!(answer.status, 204, "{}", answer.text());
    assert_eq!(count(&influxd, "fixture", "m").await, 12.0);

    // A query through the proxy: chunked JSON from influxd, re-framed with Content-Length.
    let answer = raw_request(
        "GET",
        &proxy.url(),
        "/query?db=fixture&q=SELECT%20count(%22value%22)%20FROM%20%22m%22",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.header("transfer-encoding").is_none());
    assert_eq!(answer.header("content-length"), Some(answer.body.len().to_string().as_str()));
    assert!(
        answer.text().contains("\"count\"],\"values\":[[\"1970-01-01T00:00:00Z\",12]]"),
        "{}",
        answer.text()
    );

    // Garbage closes that connection only.
    let mut garbage = RawConnection::connect(&proxy.url()).await.unwrap();
    garbage.send_raw(b"\x00\xffnot http at all\r\n\r\n").await.unwrap();
    assert!(garbage.read_response("GET").await.is_err());
    let answer = raw_request("GET", &proxy.url(), "/ping", &[], b"").await.unwrap();
    assert_eq!(answer.status, 204);

    let writes = proxy.requests_to("/write");
    assert_eq!(writes.len(), 4);
    assert!(writes.iter().all(|r| r.outcome == Outcome::Forwarded { status: 204 }));
    assert_eq!(writes[0].method, "POST");
    assert_eq!(writes[0].target, "/write?db=fixture");
    assert_eq!(writes[0].body, lines("m", 0, 5).as_bytes());
    assert_eq!(writes[3].body, body.as_bytes(), "the chunked body is recorded de-chunked");
    assert_eq!(writes[3].header("Transfer-Encoding"), Some("chunked"));
}

#[tokio::test]
async fn status_fault_answers_with_retry_after_and_writes_nothing() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let body = r#"{"error":"overloaded"}"#.to_owned();
    proxy.push("/write", Fault::Status { code: 503, retry_after_secs: Some(7), body: body.clone() });

    // The prefix spares other paths: /ping passes while the fault waits.
    assert_eq!(raw_request("GET", &proxy.url(), "/ping", &[], b"").await.unwrap().status, 204);
    assert_eq!(proxy.pending_faults(), 1);

    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 3).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("Retry-After"), Some("7"));
    assert_eq!(answer.text(), body);
    assert_eq!(count(&influxd, "fixture", "m").await, 0.0);

    // Used once: the resend goes through.
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 3).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "m").await, 3.0);
    let outcomes: Vec<Outcome> = proxy.requests_to("/write").into_iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Injected(Fault::Status { code: 503, retry_after_secs: Some(7), body }),
            Outcome::Forwarded { status: 204 }
        ]
    );
}

#[tokio::test]
async fn drop_before_forward_is_an_eof_and_writes_nothing() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    proxy.push("/write", Fault::DropBeforeForward);

    let error =
        raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 3).as_bytes()).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    assert_eq!(count(&influxd, "fixture", "m").await, 0.0);
    assert_eq!(proxy.requests_to("/write")[0].outcome, Outcome::Injected(Fault::DropBeforeForward));
}

#[tokio::test]
async fn drop_after_forward_is_an_eof_but_the_points_are_written() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    proxy.push("/write", Fault::DropAfterForward);

    // On a kept-alive connection, as an HTTP client pool would have it.
    let mut conn = RawConnection::connect(&proxy.url()).await.unwrap();
    let error = conn.send("POST", "/write?db=fixture", &[], lines("m", 0, 4).as_bytes()).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    assert_eq!(count(&influxd, "fixture", "m").await, 4.0, "an unseen success");
    assert_eq!(proxy.requests_to("/write")[0].outcome, Outcome::ForwardedThenDropped { status: 204 });

    // Resent byte for byte, the same points overwrite themselves: still 4.
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 4).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "m").await, 4.0);
}

#[tokio::test]
async fn body_limit_gives_413_and_unavailable_gives_503_until_lifted() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let big = lines("m", 0, 20);
    let small = lines("m", 100, 1);
    assert!(big.len() > 200 && small.len() <= 200);

    proxy.set_max_body_bytes(Some(200));
    for _ in 0..2 {
        let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], big.as_bytes()).await.unwrap();
        assert_eq!(answer.status, 413);
        assert_eq!(answer.text(), r#"{"error":"Request Entity Too Large"}"#);
    }
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], small.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "m").await, 1.0);
    // The limit applies to the body as sent: 760 bytes of line protocol, 108 gzipped, pass.
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[("Content-Encoding", "gzip")], &GZIPPED_20)
        .await
        .unwrap();
    assert_eq!(answer.status, 204, "{}", answer.text());
    assert_eq!(count(&influxd, "fixture", "gz").await, 20.0);
    let seen = proxy.requests_to("/write").pop().unwrap();
    assert_eq!((seen.body.as_ref(), seen.header("content-encoding")), (&GZIPPED_20[..], Some("gzip")));
    proxy.set_max_body_bytes(None);
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], big.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "m").await, 21.0);

    proxy.set_unavailable(true);
    proxy.push("/write", Fault::DropBeforeForward);
    for _ in 0..3 {
        let answer =
            raw_post(&proxy.url(), "/write?db=fixture", &[], lines("n", 0, 1).as_bytes()).await.unwrap();
        assert_eq!(answer.status, 503);
    }
    assert_eq!(proxy.pending_faults(), 1, "rejected requests do not use queued faults");
    assert_eq!(raw_request("GET", &proxy.url(), "/ping", &[], b"").await.unwrap().status, 204);
    proxy.set_unavailable(false);
    assert!(raw_post(&proxy.url(), "/write?db=fixture", &[], lines("n", 0, 1).as_bytes()).await.is_err());
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("n", 0, 1).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "n").await, 1.0);

    let outcomes: Vec<Outcome> = proxy.requests_to("/write").into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::TooLarge).count(), 2);
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Forwarded { .. })).count(), 4);
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Unavailable).count(), 3);
}

#[tokio::test]
async fn stop_and_start_again_keep_ports_and_data() {
    let mut influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let url = influxd.url();
    let answer = raw_post(&url, "/write?db=fixture", &[], lines("m", 0, 6).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);

    influxd.stop().await;
    // While it is down, the proxy fails the connection as a direct one would fail.
    assert!(raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 6, 1).as_bytes()).await.is_err());
    assert!(matches!(proxy.requests_to("/write")[0].outcome, Outcome::UpstreamFailed(_)));

    influxd.start_again().await;
    assert_eq!(influxd.url(), url);
    assert_eq!(count(&influxd, "fixture", "m").await, 6.0);
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 6, 1).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(count(&influxd, "fixture", "m").await, 7.0);
}

#[tokio::test]
async fn auth_rejects_a_wrong_password_with_401() {
    let influxd = Influxd::start_with_auth("admin", "s3cret 'quoted'").await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let body = lines("m", 0, 2);

    let answer =
        raw_post(&proxy.url(), "/write?db=fixture&u=admin&p=wrong", &[], body.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.text(), "{\"error\":\"authorization failed\"}\n");
    assert_eq!(answer.header("www-authenticate"), Some("Basic realm=\"InfluxDB\""));
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], body.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.text(), "{\"error\":\"unable to parse authentication credentials\"}\n");
    assert_eq!(count(&influxd, "fixture", "m").await, 0.0);

    let path = "/write?db=fixture&u=admin&p=s3cret%20%27quoted%27";
    let answer = raw_post(&proxy.url(), path, &[], body.as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204, "{}", answer.text());
    assert_eq!(count(&influxd, "fixture", "m").await, 2.0);
}

/// The answers of the real server the writer's error handling is built on, relayed intact.
#[tokio::test]
async fn influxd_error_answers_are_relayed_verbatim() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let post = |path: &'static str, body: &'static str| {
        let url = proxy.url();
        async move { raw_post(&url, path, &[], body.as_bytes()).await.unwrap() }
    };

    let answer = post("/write?db=missing", "m value=1 1000000000").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.text(), "{\"error\":\"database not found: \\\"missing\\\"\"}\n");
    assert_eq!(answer.header("x-influxdb-error"), Some("database not found: \"missing\""));

    assert_eq!(post("/write?db=fixture", "m value=1.0 1000000000").await.status, 204);
    let answer = post("/write?db=fixture", "m value=2.0 2000000000\nm value=3i 3000000000\n").await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.text(),
        "{\"error\":\"partial write: field type conflict: input field \\\"value\\\" on measurement \
         \\\"m\\\" is type integer, already exists as type float dropped=1\"}\n"
    );
    assert_eq!(count(&influxd, "fixture", "m").await, 2.0, "the good point of a partial write is kept");

    // An unparsable line among good ones: the good ones are written, yet `dropped=0`.
    let answer =
        post("/write?db=fixture", "m value=4.0 4000000000\nnot line protocol\nm value=5.0 5000000000").await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.text(),
        "{\"error\":\"partial write: unable to parse 'not line protocol': invalid field format dropped=0\"}\n"
    );
    assert_eq!(count(&influxd, "fixture", "m").await, 4.0);
}

/// Writers' tests pause the clock for backoff; the support code must not trip over it.
#[tokio::test(start_paused = true)]
async fn support_code_works_with_the_clock_paused() {
    let mut influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let answer = raw_post(&proxy.url(), "/write?db=fixture", &[], lines("m", 0, 2).as_bytes()).await.unwrap();
    assert_eq!(answer.status, 204);
    influxd.stop().await;
    influxd.start_again().await;
    assert_eq!(count(&influxd, "fixture", "m").await, 2.0);
}

/// The proxy's record of what it acknowledged, which the writer's "nothing doubled" checks
/// stand on: a resend after a relayed 2xx is flagged (also when one copy was gzipped), a resend
/// after an unseen success is not, and its times bound the client's pauses from below.
#[tokio::test]
async fn resends_after_an_acknowledged_write_are_flagged() {
    let influxd = Influxd::start().await;
    influxd.create_database("fixture").await;
    let proxy = FaultProxy::start(influxd.addr()).await;
    let url = proxy.url();
    // What GZIPPED_20 holds.
    let plain: String =
        (0..20).map(|i| format!("gz,host=a value=1 {}\n", T0_NS + i * 1_000_000_000)).collect();
    assert_eq!(raw_post(&url, "/write?db=fixture", &[], plain.as_bytes()).await.unwrap().status, 204);
    assert!(proxy.resent_after_acknowledgement("/write").is_empty());
    let pause = std::time::Duration::from_millis(200);
    tokio::time::sleep(pause).await;
    // The same 20 lines, gzipped.
    let answer = raw_post(&url, "/write?db=fixture", &[("Content-Encoding", "gzip")], &GZIPPED_20).await;
    assert_eq!(answer.unwrap().status, 204);
    assert_eq!(proxy.resent_after_acknowledgement("/write"), [(0, 1)]);
    let seen = proxy.requests_to("/write");
    assert_eq!(seen[1].decoded_body(), plain.as_bytes());
    assert!(seen[0].received_at <= seen[0].answered_at);
    assert!(seen[1].received_at.duration_since(seen[0].answered_at) >= pause);

    // An unseen success is no acknowledgement: its resend is what the client must do.
    proxy.push("/write", Fault::DropAfterForward);
    let other = lines("m", 0, 3);
    assert!(raw_post(&url, "/write?db=fixture", &[], other.as_bytes()).await.is_err());
    assert_eq!(raw_post(&url, "/write?db=fixture", &[], other.as_bytes()).await.unwrap().status, 204);
    assert_eq!(proxy.resent_after_acknowledgement("/write"), [(0, 1)]);
    // The same body to another database is another write.
    influxd.create_database("other").await;
    assert_eq!(raw_post(&url, "/write?db=other", &[], other.as_bytes()).await.unwrap().status, 204);
    assert_eq!(proxy.resent_after_acknowledgement("/write"), [(0, 1)]);
}

//! The deriver on byte literals and on the reference data. Expectations are worked out by hand
//! or come from the replay path (the other side of the "same lines, same fields" promise).

use super::*;
use crate::access::{KeyGuard, LineOrigin};
use crate::metrics::aggregate::{AggregateSettings, Aggregator};
use crate::metrics::line_protocol::encode_point;
use crate::metrics::log_volume::LogVolume;
use crate::metrics::point::{FieldValue, Point};
use crate::pipeline::{LineParser, LineProcessor};

const SEC: i64 = 1_000_000_000;

fn settings(write_router_points: bool) -> DeriveSettings {
    DeriveSettings { window_ns: 10 * SEC, write_router_points, levels: LevelDetector::default() }
}

fn aggregate(window_secs: i64, lateness_secs: i64) -> AggregateSettings {
    AggregateSettings {
        window_ns: window_secs * SEC,
        lateness_ns: lateness_secs * SEC,
        max_series: std::num::NonZeroUsize::new(100_000).unwrap(),
        consumer: "c".into(),
        sequence_base: 0,
    }
}

fn derive(d: &mut Deriver, topic: TopicKind, body: &[u8], nsq_ts: i64) -> Derived {
    let mut out = Derived::default();
    d.derive(topic, body, nsq_ts, true, &mut out);
    out
}

fn text(out: &Derived) -> &str {
    std::str::from_utf8(&out.lines).unwrap()
}

fn sorted_lines(points: Vec<Point>) -> Vec<String> {
    let mut lines: Vec<String> = points
        .iter()
        .map(|p| {
            let mut b = BytesMut::new();
            encode_point(p, &mut b).unwrap();
            String::from_utf8(b.to_vec()).unwrap()
        })
        .collect();
    lines.sort();
    lines
}

/// The first `n` lines of the reference access log.
fn reference_lines(n: usize) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/access.log");
    let text = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n').take(n) {
        out.extend_from_slice(line);
    }
    out
}

/// Replays `log` through the pipeline as `replay` does: its compat lines, and its
/// `router_requests` points.
fn replay(log: &[u8], agg: AggregateSettings) -> (Vec<u8>, Vec<Point>) {
    let mut p = LineProcessor::new("node-1", LineParser::FastPath, agg.clone());
    let (mut keys, mut out) = (KeyGuard::default(), BytesMut::new());
    let mut offset = 0u64;
    for line in log.split_inclusive(|&b| b == b'\n') {
        let origin = LineOrigin { runtime_time_ns: None, file_offset: offset };
        p.process(line.strip_suffix(b"\n").unwrap_or(line), false, origin, &mut keys, &mut out);
        offset += line.len() as u64;
    }
    p.finish(&mut out);
    let mut compat = Vec::new();
    let mut aggregated = Vec::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"deis_router_") {
            compat.extend_from_slice(line);
        } else {
            aggregated.push(crate::metrics::line_protocol::parse_line(&line[..line.len() - 1]).unwrap());
        }
    }
    // The consumer tag is the aggregating instance's: set it aside.
    for p in &mut aggregated {
        p.tags.retain(|(k, _)| k != "consumer");
    }
    (compat, aggregated)
}

/// What a consumer aggregates from `bodies` (compat line protocol, one message each).
fn consume(bodies: &[&[u8]], agg: AggregateSettings) -> Vec<Point> {
    let mut d = Deriver::new(DeriveSettings { window_ns: agg.window_ns, ..settings(true) });
    let mut a = Aggregator::new(agg);
    for body in bodies {
        let out = derive(&mut d, TopicKind::Metrics, body, 0);
        assert!(out.dead.is_empty() && out.tally.unaggregated.is_empty(), "{:?}", out.tally);
        for g in &out.contribution.requests {
            g.observe(&mut a);
        }
    }
    a.flush_all();
    let mut points = a.take_ready();
    for p in &mut points {
        p.tags.retain(|(k, _)| k != "consumer");
    }
    points
}

#[test]
fn consuming_the_compat_points_gives_replays_router_requests() {
    // One flush at the end on both sides (a lateness longer than the data), so that even the
    // point keys agree: the same fields, byte for byte.
    let log = reference_lines(3000);
    let (compat, replayed) = replay(&log, aggregate(10, 3600));
    assert_eq!(compat.iter().filter(|&&b| b == b'\n').count(), 9000, "three points per line");
    // The agent sends many lines per message; cut anywhere between lines, even inside a
    // line's three points.
    let cut: Vec<&[u8]> = compat.split_inclusive(|&b| b == b'\n').collect();
    let bodies: Vec<Vec<u8>> = cut.chunks(701).map(|c| c.concat()).collect();
    let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let consumed = consume(&bodies, aggregate(10, 3600));
    assert!(replayed.len() > 20, "{} series", replayed.len());
    assert_eq!(sorted_lines(consumed), sorted_lines(replayed));
}

#[test]
fn the_edge_lines_too() {
    // Retries with several upstream times (`upstream_total` is their sum), `-`, `$time_local`,
    // odd methods: what the compat points carry is what replay aggregated.
    let log = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/router-edge.log")).unwrap();
    let (compat, replayed) = replay(&log, aggregate(10, 3600));
    assert!(!replayed.is_empty());
    assert_eq!(sorted_lines(consume(&[&compat], aggregate(10, 3600))), sorted_lines(replayed));
}

#[test]
fn valid_lines_pass_through_and_invalid_ones_are_dead_lettered() {
    let mut d = Deriver::new(settings(true));
    let body = b"cpu,host=a usage=0.5 1700000000000000000\n\
                 \n\
                 # a comment\n\
                 cpu,host=a usage=0.6\n\
                 cpu,host=a usage=0.7  \r\n\
                 cpu,host=b usage=0.8\n\
                 bad line\n\
                 cpu,host=a usage=\"unterminated\n\
                 mem free=1i 12 13";
    let out = derive(&mut d, TopicKind::Metrics, body, 500);
    // Stamped with the message's timestamp, one apart within a series.
    assert_eq!(
        text(&out),
        "cpu,host=a usage=0.5 1700000000000000000\n\
         cpu,host=a usage=0.6 500\n\
         cpu,host=a usage=0.7 501\n\
         cpu,host=b usage=0.8 500\n"
    );
    assert_eq!(out.points, 4);
    assert_eq!(out.tally.lines, 7);
    let reasons: Vec<&str> = out.dead.entries.iter().map(|(r, _)| *r).collect();
    assert_eq!(reasons, ["bad_field", "unterminated_string", "trailing_garbage"]);
    let (_, second) = &out.dead.entries[1];
    assert_eq!(&out.dead.bytes[second.clone()], b"cpu,host=a usage=\"unterminated");
    assert!(out.contribution.is_empty());
}

#[test]
fn router_points_aggregate_even_when_not_written() {
    let body = b"deis_router_request_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.046 1464713772000000042\n\
deis_router_response_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.002,upstream_total=0.012 1464713772000000042\n\
deis_router_bytes_sent,app=foo,status_code=200,host=node-1,method=GET value=211.0 1464713772000000042\n";
    let mut d = Deriver::new(settings(false));
    let out = derive(&mut d, TopicKind::Metrics, body, 0);
    assert_eq!((out.points, out.lines.len()), (0, 0), "aggregated only");
    let groups = &out.contribution.requests;
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!((g.app.as_str(), g.host.as_str(), g.status, g.method), ("foo", "node-1", 200, Method::Get));
    assert_eq!((g.requests, g.bytes_sent), (1, 211));
    assert_eq!((g.request_times.as_slice(), g.upstream_times.as_slice()), (&[0.046][..], &[0.012][..]));
    // 1464713772 s falls in the window starting at 1464713770 s.
    assert_eq!((g.window_start, g.last_ns), (1_464_713_770 * SEC, 1_464_713_772_000_000_042));
    let mut d = Deriver::new(settings(true));
    assert_eq!(derive(&mut d, TopicKind::Metrics, body, 0).lines, &body[..]);
}

#[test]
fn the_old_fluentds_points_aggregate_under_method_unknown() {
    // design.md's example, as fluentd sent it: no method, no timestamp, `value` only.
    let body = b"deis_router_request_time_ms,app=foo,status_code=200,host=node-1 value=0.046\n\
deis_router_response_time_ms,app=foo,status_code=200,host=node-1 value=0.002\n\
deis_router_bytes_sent,app=foo,status_code=200,host=node-1 value=211.0\n";
    let mut d = Deriver::new(settings(true));
    let nsq_ts = 1_464_713_779_999_999_999;
    let out = derive(&mut d, TopicKind::Metrics, body, nsq_ts);
    let g = &out.contribution.requests[..];
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].method, Method::Unknown);
    assert_eq!(g[0].upstream_times, [0.002], "value is all the old plugin sent");
    assert_eq!(g[0].last_ns, nsq_ts, "event time: when it was published");
    // Three measurements, three series: each takes the message's timestamp.
    assert_eq!(text(&out).matches(" 1464713779999999999\n").count(), 3, "{}", text(&out));
    let mut a = Aggregator::new(aggregate(10, 10));
    g[0].observe(&mut a);
    a.flush_all();
    let p = a.take_ready().pop().unwrap();
    assert_eq!(p.tag_value("method"), Some("unknown"));
    assert_eq!(p.field_value("count"), Some(&FieldValue::Int(1)));
}

#[test]
fn router_points_that_cannot_be_aggregated_still_pass() {
    let body = b"deis_router_bytes_sent,app=foo,status_code=2xx,host=n value=1.0 5\n\
deis_router_bytes_sent,app=foo,host=n value=1.0 5\n\
deis_router_bytes_sent,app=foo,status_code=200,host=n value=1.5 5\n\
deis_router_bytes_sent,app=foo,status_code=200,host=n value=\"x\" 5\n";
    let mut d = Deriver::new(settings(true));
    let out = derive(&mut d, TopicKind::Metrics, body, 0);
    assert_eq!(out.points, 4);
    assert!(out.contribution.is_empty());
    let mut reasons = out.tally.unaggregated.clone();
    reasons.sort();
    assert_eq!(reasons, [("bad_status", 1), ("bad_value", 2), ("missing_tag", 1)]);
}

fn log_json(container: &str, app: Option<&str>, stream: &str, log: &str, time: &str) -> Vec<u8> {
    let labels = match app {
        Some(app) => format!(r#"{{"app":"{app}","heritage":"deis"}}"#),
        None => "{}".to_owned(),
    };
    format!(
        r#"{{"log":{},"stream":"{stream}","time":"{time}","docker":{{"container_id":"c"}},"kubernetes":{{"namespace_name":"ns","pod_id":"p","pod_name":"pod","container_name":"{container}","labels":{labels},"host":"node-1"}}}}"#,
        serde_json::to_string(&format!("{log}\n")).unwrap()
    )
    .into_bytes()
}

#[test]
fn app_records_count_in_app_log_lines() {
    let mut d = Deriver::new(DeriveSettings {
        levels: LevelDetector::new(Some(regex::Regex::new(r"^(\w+):").unwrap())),
        ..settings(true)
    });
    let mut volume = LogVolume::new(aggregate(10, 10).windows(), "c".into());
    let records = [
        log_json("foo-web", Some("foo"), "stdout", "INFO: hi", "2016-10-18T20:29:38.123456+00:00"),
        log_json(
            "foo-web",
            Some("foo"),
            "stdout",
            r#"{"level":"error","msg":"x"}"#,
            "2016-10-18T20:29:39+00:00",
        ),
        log_json("foo-web", Some("foo"), "stderr", "plain", "2016-10-18T20:29:39+00:00"),
        log_json("foo-web", Some("foo"), "stdout", "info: again", "2016-10-18T20:29:39.5+00:00"),
        log_json("x", None, "stdout", "no app", "2016-10-18T20:29:39+00:00"),
    ];
    let mut tallies = Vec::new();
    for r in &records {
        let out = derive(&mut d, TopicKind::Logs, r, 0);
        assert!(out.lines.is_empty() && out.dead.is_empty());
        for g in &out.contribution.logs {
            g.observe(&mut volume);
        }
        tallies.extend(out.tally.records);
    }
    assert_eq!(tallies.iter().filter(|(r, _)| *r == "app").count(), 4);
    assert_eq!(tallies.iter().filter(|(r, _)| *r == "no_app").count(), 1);
    volume.flush_all();
    let mut got: Vec<(String, Option<String>, i64)> = volume
        .take_ready()
        .into_iter()
        .map(|p| {
            let count = match p.field_value("count") {
                Some(FieldValue::Int(n)) => *n,
                other => panic!("{other:?}"),
            };
            assert_eq!(p.tag_value("host"), Some("node-1"));
            // date -u -d 2016-10-18T20:29:30Z +%s → 1476822570: the 10 s window of both times.
            assert_eq!(p.timestamp_ns, Some(1_476_822_570 * SEC));
            (p.tag_value("stream").unwrap().to_owned(), p.tag_value("level").map(str::to_owned), count)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("stderr".into(), None, 1),
            ("stdout".into(), Some("error".into()), 1),
            ("stdout".into(), Some("info".into()), 2)
        ]
    );
}

#[test]
fn router_lines_in_logs_give_the_agents_points() {
    let line = r#"[2016-10-18T20:29:38+00:00] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "curl/7.43.0" - "foo.example.com" - 10.2.3.4:5000, 10.2.3.5:5000 - foo.example.com - 0.002, 0.010 - 0.046"#;
    let record =
        log_json("deis-router", Some("deis-router"), "stderr", line, "2016-10-18T20:29:38.123456+00:00");
    let mut d = Deriver::new(settings(true));
    let out = derive(&mut d, TopicKind::Logs, &record, 0);
    // What the agent writes for that line with that runtime time (compat's own test has the
    // fields; here the stamp is the record's time, as the agent's for a Docker record).
    let mut want = BytesMut::new();
    let parsed = crate::access::router::parse(line.as_bytes()).unwrap();
    CompatEncoder::default().write(&parsed, "node-1", 1_476_822_578_123_456_000, &mut want).unwrap();
    assert_eq!(text(&out), std::str::from_utf8(&want).unwrap());
    assert_eq!(out.points, 3);
    let g = &out.contribution.requests[0];
    assert_eq!((g.requests, g.bytes_sent, g.upstream_times.as_slice()), (1, 211, &[0.012][..]));
    assert!(out.contribution.logs.is_empty(), "router traffic is not an app's log volume");
    // The same runtime time again (a second record in the same microsecond): a new key.
    let again = derive(&mut d, TopicKind::Logs, &record, 0);
    assert!(text(&again).contains(" 1476822578123456001\n"), "{}", text(&again));
    // Not an access line: counted, nothing written.
    let other = log_json(
        "deis-router",
        None,
        "stderr",
        "2016/10/18 20:29:38 [error] 1#1: boom",
        "2016-10-18T20:29:38Z",
    );
    let out = derive(&mut d, TopicKind::Logs, &other, 0);
    assert_eq!((out.points, out.tally.records.as_slice()), (0, &[("router_other", 1)][..]));
}

#[test]
fn broken_json_is_dead_lettered_whole() {
    let mut d = Deriver::new(settings(true));
    let out = derive(&mut d, TopicKind::Logs, b"{\"log\":\"x", 0);
    assert_eq!(out.tally.invalid, [("bad_json", 1)]);
    assert_eq!(&out.dead.bytes[..], b"{\"log\":\"x");
    assert!(out.contribution.is_empty() && out.lines.is_empty());
}

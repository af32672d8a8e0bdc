//! nsqd's statistics (`GET /stats?format=json`) as Telegraf v1.39.3's `inputs.nsq` writes
//! them (`plugins/inputs/nsq/nsq.go`), which the old NSQ health dashboard reads:
//!
//! | measurement | per | tags | integer fields |
//! | --- | --- | --- | --- |
//! | `nsq_server` | nsqd | `server_host`, `server_version` | `server_count` (1 when `health` is `OK`), `topic_count` |
//! | `nsq_topic` | topic | + `topic` | `depth`, `backend_depth`, `message_count`, `channel_count` |
//! | `nsq_channel` | channel | + `channel` | `depth`, `backend_depth`, `inflight_count`, `deferred_count`, `message_count`, `requeue_count`, `timeout_count`, `client_count` |
//! | `nsq_client` | client | + `client_id`, `client_hostname`, `client_version`, `client_address`, `client_user_agent`, `client_tls`, `client_snappy`, `client_deflate`, (`client_name`) | `ready_count`, `inflight_count`, `message_count`, `finish_count`, `requeue_count` |
//!
//! `server_host` is the `host:port` of the endpoint as configured. nsqd ≥ 1.0 answers the
//! object itself; older ones wrap it in `{"status_code":200,"data":{…}}` — Telegraf tells
//! them apart by a missing `version`, and so does this. Note the names: nsqd's
//! `in_flight_count` is Telegraf's `inflight_count`. A number missing from the answer is left
//! out (Telegraf writes 0); one that is not an integer is left out and counted as odd.

use serde_json::Value;

use crate::metrics::point::{FieldValue, Point};

/// Why an answer gave no points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not an nsqd stats object")]
    NotStats,
}

/// The points of one nsqd's answer, and how many values were present but not integers.
#[derive(Debug, Default)]
pub(crate) struct StatsPoints {
    pub points: Vec<Point>,
    pub odd_values: u64,
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn flag(v: &Value, key: &str) -> &'static str {
    if v.get(key).and_then(Value::as_bool).unwrap_or(false) {
        "true"
    } else {
        "false"
    }
}

fn count(n: usize) -> FieldValue {
    FieldValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Adds `(field, key)` pairs of `v` that are integers.
fn with_numbers(mut p: Point, v: &Value, fields: &[(&'static str, &str)], odd: &mut u64) -> Point {
    for (field, key) in fields {
        match v.get(key) {
            None | Some(Value::Null) => {}
            Some(n) => match n.as_i64() {
                Some(n) => p = p.field(*field, FieldValue::Int(n)),
                None => *odd += 1,
            },
        }
    }
    p
}

/// The points of a `/stats?format=json` answer from the nsqd at `server_host` (`host:port`).
pub(crate) fn stats_points(body: &[u8], server_host: &str) -> Result<StatsPoints, StatsError> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| StatsError::Json(e.to_string()))?;
    let data = if answer.get("version").is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
        &answer
    } else {
        answer.get("data").filter(|d| d.is_object()).ok_or(StatsError::NotStats)?
    };
    if !data.is_object() {
        return Err(StatsError::NotStats);
    }
    let version = text(data, "version");
    let mut out = StatsPoints::default();
    let odd = &mut out.odd_values;
    let topics = array(data, "topics");
    out.points.push(
        Point::new("nsq_server")
            .tag("server_host", server_host.to_owned())
            .tag("server_version", version.to_owned())
            .field("server_count", FieldValue::Int(i64::from(text(data, "health") == "OK")))
            .field("topic_count", count(topics.len())),
    );
    for t in topics {
        let topic = text(t, "topic_name");
        let channels = array(t, "channels");
        let p = Point::new("nsq_topic")
            .tag("server_host", server_host.to_owned())
            .tag("server_version", version.to_owned())
            .tag("topic", topic.to_owned());
        let p = with_numbers(
            p,
            t,
            &[("depth", "depth"), ("backend_depth", "backend_depth"), ("message_count", "message_count")],
            odd,
        );
        out.points.push(p.field("channel_count", count(channels.len())));
        for c in channels {
            let channel = text(c, "channel_name");
            let clients = array(c, "clients");
            let p = Point::new("nsq_channel")
                .tag("server_host", server_host.to_owned())
                .tag("server_version", version.to_owned())
                .tag("topic", topic.to_owned())
                .tag("channel", channel.to_owned());
            let p = with_numbers(
                p,
                c,
                &[
                    ("depth", "depth"),
                    ("backend_depth", "backend_depth"),
                    ("inflight_count", "in_flight_count"),
                    ("deferred_count", "deferred_count"),
                    ("message_count", "message_count"),
                    ("requeue_count", "requeue_count"),
                    ("timeout_count", "timeout_count"),
                ],
                odd,
            );
            out.points.push(p.field("client_count", count(clients.len())));
            for cl in clients {
                let mut p = Point::new("nsq_client")
                    .tag("server_host", server_host.to_owned())
                    .tag("server_version", version.to_owned())
                    .tag("topic", topic.to_owned())
                    .tag("channel", channel.to_owned())
                    .tag("client_id", text(cl, "client_id").to_owned())
                    .tag("client_hostname", text(cl, "hostname").to_owned())
                    .tag("client_version", text(cl, "version").to_owned())
                    .tag("client_address", text(cl, "remote_address").to_owned())
                    .tag("client_user_agent", text(cl, "user_agent").to_owned())
                    .tag("client_tls", flag(cl, "tls"))
                    .tag("client_snappy", flag(cl, "snappy"))
                    .tag("client_deflate", flag(cl, "deflate"));
                let name = text(cl, "name");
                if !name.is_empty() {
                    p = p.tag("client_name", name.to_owned());
                }
                let p = with_numbers(
                    p,
                    cl,
                    &[
                        ("ready_count", "ready_count"),
                        ("inflight_count", "in_flight_count"),
                        ("message_count", "message_count"),
                        ("finish_count", "finish_count"),
                        ("requeue_count", "requeue_count"),
                    ],
                    odd,
                );
                // Every field missing: nothing InfluxDB would take.
                if !p.fields.is_empty() {
                    out.points.push(p);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(p: &Point, key: &str) -> Option<i64> {
        match p.field_value(key) {
            Some(FieldValue::Int(v)) => Some(*v),
            None => None,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// The pre-1.0 wrapped shape, as in Telegraf's own test (`nsq_test.go`, nsqd 0.3.6),
    /// reduced to one topic; expected values read off the JSON by hand.
    #[test]
    fn wrapped_old_shape() {
        let body = br#"{"status_code":200,"status_txt":"OK","data":{"version":"0.3.6","health":"OK",
          "start_time":1452021674,"topics":[{"topic_name":"t1","channels":[{"channel_name":"c1",
          "depth":0,"backend_depth":1,"in_flight_count":2,"deferred_count":3,"message_count":4,
          "requeue_count":5,"timeout_count":6,"clients":[{"name":"373a715cd990",
          "client_id":"373a715cd990","hostname":"373a715cd990","version":"V2",
          "remote_address":"172.17.0.11:35560","state":3,"ready_count":200,"in_flight_count":7,
          "message_count":8,"finish_count":9,"requeue_count":10,"connect_ts":1452021675,
          "sample_rate":11,"deflate":false,"snappy":false,"user_agent":"nsq_to_nsq/0.3.6 go-nsq/1.0.5",
          "tls":false}],"paused":false}],"depth":12,"backend_depth":13,"message_count":14,"paused":false}]}}"#;
        let out = stats_points(body, "127.0.0.1:4151").unwrap();
        assert_eq!(out.odd_values, 0);
        assert_eq!(out.points.len(), 4);
        let server = &out.points[0];
        assert_eq!(server.tag_value("server_version"), Some("0.3.6"));
        assert_eq!((i(server, "server_count"), i(server, "topic_count")), (Some(1), Some(1)));
        let topic = &out.points[1];
        assert_eq!(topic.tag_value("topic"), Some("t1"));
        assert_eq!(
            (
                i(topic, "depth"),
                i(topic, "backend_depth"),
                i(topic, "message_count"),
                i(topic, "channel_count")
            ),
            (Some(12), Some(13), Some(14), Some(1))
        );
        let channel = &out.points[2];
        assert_eq!(channel.tag_value("channel"), Some("c1"));
        assert_eq!(i(channel, "inflight_count"), Some(2));
        assert_eq!(i(channel, "timeout_count"), Some(6));
        assert_eq!(i(channel, "client_count"), Some(1));
        assert_eq!(channel.fields.len(), 8);
        let client = &out.points[3];
        assert_eq!(client.tag_value("client_name"), Some("373a715cd990"));
        assert_eq!(client.tag_value("client_user_agent"), Some("nsq_to_nsq/0.3.6 go-nsq/1.0.5"));
        assert_eq!(client.tag_value("client_tls"), Some("false"));
        assert_eq!(client.tag_value("client_address"), Some("172.17.0.11:35560"));
        assert_eq!(
            (i(client, "ready_count"), i(client, "inflight_count"), i(client, "finish_count")),
            (Some(200), Some(7), Some(9))
        );
        assert_eq!(client.fields.len(), 5);
    }

    #[test]
    fn odd_answers() {
        assert!(matches!(stats_points(b"<html>", "h:1"), Err(StatsError::Json(_))));
        assert_eq!(stats_points(b"[]", "h:1").unwrap_err(), StatsError::NotStats);
        assert_eq!(stats_points(br#"{"data": 3}"#, "h:1").unwrap_err(), StatsError::NotStats);
        let out = stats_points(
            br#"{"version":"1.3.0","health":"NOK - disk full","topics":[{"topic_name":"t","depth":"x","channels":[{}]}]}"#,
            "h:1",
        )
        .unwrap();
        assert_eq!(out.odd_values, 1);
        assert_eq!(i(&out.points[0], "server_count"), Some(0), "unhealthy");
        assert_eq!(out.points[1].fields.len(), 1, "only channel_count");
        assert_eq!(out.points[2].tag_value("channel"), Some(""), "empty tags are left out when encoded");
    }

    /// `testdata/nsqd/stats.json`, recorded from a real nsqd v1.3.0 after the scenario of
    /// `tests/host_nsq_stats.rs`: 7 messages to `logs` (no channel); channel `logmill` on
    /// `metrics`, 10 messages, one consumer (RDY 3) that finished 4 and holds 3.
    #[test]
    fn recorded_v1_answer() {
        let body = std::fs::read(format!("{}/testdata/nsqd/stats.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let out = stats_points(&body, "127.0.0.1:4151").unwrap();
        assert_eq!(out.odd_values, 0);
        let kinds: Vec<&str> = out.points.iter().map(|p| p.measurement.as_ref()).collect();
        assert_eq!(kinds, ["nsq_server", "nsq_topic", "nsq_topic", "nsq_channel", "nsq_client"]);
        assert!(out.points.iter().all(|p| p.tag_value("server_version") == Some("1.3.0")));
        assert_eq!((i(&out.points[0], "server_count"), i(&out.points[0], "topic_count")), (Some(1), Some(2)));
        let logs = &out.points[1];
        assert_eq!(logs.tag_value("topic"), Some("logs"));
        assert_eq!(
            (i(logs, "depth"), i(logs, "message_count"), i(logs, "channel_count")),
            (Some(7), Some(7), Some(0))
        );
        let metrics = &out.points[2];
        assert_eq!((i(metrics, "depth"), i(metrics, "message_count")), (Some(0), Some(10)));
        let channel = &out.points[3];
        assert_eq!(
            (
                i(channel, "depth"),
                i(channel, "inflight_count"),
                i(channel, "message_count"),
                i(channel, "client_count")
            ),
            (Some(3), Some(3), Some(10), Some(1))
        );
        let client = &out.points[4];
        assert_eq!(client.tag_value("client_id"), Some("stats-test"));
        assert_eq!(client.tag_value("client_user_agent"), Some("logmill/0.1.0"));
        assert_eq!(client.tag_value("client_name"), None, "nsqd 1.x has no `name`");
        assert_eq!(
            (
                i(client, "finish_count"),
                i(client, "inflight_count"),
                i(client, "message_count"),
                i(client, "ready_count")
            ),
            (Some(4), Some(3), Some(7), Some(3))
        );
    }
}

//! The three points per access line that the old fluentd plugin put on the `metrics` topic,
//! kept exactly (names, tags, float values in seconds and bytes) plus a `method` tag and a
//! timestamp that keys each line uniquely (see [`LineOrigin::point_timestamp`]).

use bytes::BytesMut;

use super::line_protocol::{EncodeError, LineBuilder};
use crate::access::{AccessRecord, LineOrigin};

pub const REQUEST_TIME: &str = "deis_router_request_time_ms";
pub const RESPONSE_TIME: &str = "deis_router_response_time_ms";
pub const BYTES_SENT: &str = "deis_router_bytes_sent";

/// Writes the three compat points of one access line; `host` is the router pod's node.
pub fn write_compat_points(
    record: &AccessRecord<'_>,
    host: &str,
    origin: LineOrigin,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    let timestamp = Some(origin.point_timestamp(record.time_ns));
    let status = record.status_text();
    let values = [
        (REQUEST_TIME, record.request_time),
        (RESPONSE_TIME, record.upstream_time_compat()),
        // Precision loss only past 2^53 bytes.
        (BYTES_SENT, record.bytes_sent as f64),
    ];
    for (measurement, value) in values {
        let mut line = LineBuilder::new(out, measurement);
        line.tag("app", record.app)
            .tag("status_code", status.as_str())
            .tag("host", host)
            .tag("method", record.method.as_str())
            .field_f64("value", value);
        if let Err(e) = line.finish(timestamp) {
            out.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::router;

    #[test]
    fn the_old_plugins_three_lines() {
        // The example of the design brief, as fluentd wrote it, plus `method` and a timestamp.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "curl/7.43.0" - "foo.example.com" - 10.2.3.4:5000, 10.2.3.5:5000 - foo.example.com - 0.002, 0.010 - 0.046"#;
        let record = router::parse(line).unwrap();
        let mut out = BytesMut::new();
        let origin = LineOrigin { runtime_time_ns: None, file_offset: 42 };
        write_compat_points(&record, "node-1", origin, &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "deis_router_request_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.046 1464713772000000042\n\
             deis_router_response_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.002 1464713772000000042\n\
             deis_router_bytes_sent,app=foo,status_code=200,host=node-1,method=GET value=211.0 1464713772000000042\n"
        );
    }

    #[test]
    fn runtime_time_keys_wrapped_lines() {
        let line = br#"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - "PUT /ms50 HTTP/1.1" - 308 - "-" - "curl/8.5.0" - "_" - - - unknown.example.com - - - 0.000"#;
        let record = router::parse(line).unwrap();
        let mut out = BytesMut::new();
        let origin = LineOrigin { runtime_time_ns: Some(1_795_234_941_000_001_194), file_offset: 9 };
        write_compat_points(&record, "n", origin, &mut out).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("deis_router_response_time_ms,app=router-default,status_code=404,host=n,method=PUT value=0.0 1795234941000001194\n"), "{text}");
        assert!(text.contains("value=308.0 1795234941000001194\n"), "{text}");
    }
}

//! The three points per access line that the old fluentd plugin put on the `metrics` topic,
//! kept exactly (names, tags, float values in seconds and bytes) plus a `method` tag, an
//! `upstream_total` field on `deis_router_response_time_ms` (design.md § Schema), and a
//! timestamp that keys each line uniquely (see [`LineOrigin::point_timestamp`] and
//! [`KeyGuard`](crate::access::KeyGuard)).

use bytes::{BufMut, BytesMut};

use super::line_protocol::{write_float, write_plain_decimal, write_tag_set, write_timestamp, EncodeError};
use crate::access::AccessRecord;
#[cfg(doc)]
use crate::access::LineOrigin;

pub(crate) const REQUEST_TIME: &str = "deis_router_request_time_ms";
pub(crate) const RESPONSE_TIME: &str = "deis_router_response_time_ms";
pub(crate) const BYTES_SENT: &str = "deis_router_bytes_sent";

/// A compat measurement, the text its value is read from, and the value when that text is not
/// a plain decimal.
type CompatValue<'t> = (&'static str, &'t [u8], fn(&AccessRecord<'_>) -> f64);

/// Writes the compat points of access lines. The three points of a line share their tags and
/// timestamp, which are encoded once per line and copied.
#[derive(Debug, Default)]
pub struct CompatEncoder {
    /// The line's tag set, then ` <timestamp>\n` from `tags_end` on.
    shared: BytesMut,
    /// The host and its escaped `,host=…` (the same for every line of a processor).
    host: Option<(String, Result<BytesMut, EncodeError>)>,
}

impl CompatEncoder {
    /// Writes the three compat points of one access line, stamped `timestamp_ns`; `host` is
    /// the router pod's node. On error nothing is written.
    pub fn write(
        &mut self,
        record: &AccessRecord<'_>,
        host: &str,
        timestamp_ns: i64,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let status = record.status_text();
        self.shared.clear();
        write_tag_set(&mut self.shared, &[("app", record.app)])?;
        // Three digits and an upper-case method never need escaping.
        self.shared.extend_from_slice(b",status_code=");
        self.shared.extend_from_slice(status.as_str().as_bytes());
        if self.host.as_ref().is_none_or(|(h, _)| h != host) {
            let mut tag = BytesMut::new();
            let tag = write_tag_set(&mut tag, &[("host", host)]).map(|()| tag);
            self.host = Some((host.to_owned(), tag));
        }
        match self.host.as_ref().map(|(_, tag)| tag) {
            Some(Ok(tag)) => self.shared.extend_from_slice(tag),
            Some(Err(e)) => return Err(*e),
            None => {}
        }
        self.shared.extend_from_slice(b",method=");
        self.shared.extend_from_slice(record.method.as_str().as_bytes());
        let tags_end = self.shared.len();
        self.shared.put_u8(b' ');
        write_timestamp(&mut self.shared, timestamp_ns);
        self.shared.put_u8(b'\n');

        // Each value from the line's own text when it is a plain decimal, as it almost always
        // is; the float otherwise. Either way the same bytes (see `write_plain_decimal`).
        let values: [CompatValue<'_>; 3] = [
            (REQUEST_TIME, record.request_time_text, |r| r.request_time),
            (RESPONSE_TIME, record.upstream_time_compat_text(), |r| r.upstream_time_compat()),
            // Precision loss only past 2^53 bytes.
            (BYTES_SENT, record.bytes_sent_text, |r| r.bytes_sent as f64),
        ];
        let start = out.len();
        for (measurement, text, value) in values {
            out.extend_from_slice(measurement.as_bytes());
            out.extend_from_slice(&self.shared[..tags_end]);
            out.extend_from_slice(b" value=");
            if !write_plain_decimal(out, text) {
                if let Err(e) = write_float(out, value(record)) {
                    out.truncate(start);
                    return Err(e);
                }
            }
            if measurement == RESPONSE_TIME {
                if let Err(e) = write_upstream_total(record, out) {
                    out.truncate(start);
                    return Err(e);
                }
            }
            out.extend_from_slice(&self.shared[tags_end..]);
        }
        Ok(())
    }
}

/// `,upstream_total=<seconds>`: every attempt's upstream time added up, what the consumer
/// aggregates as `upstream_time`. Left out when no attempt has a time (`-`), so that old
/// queries reading only `value` and new ones reading this field both stay right.
fn write_upstream_total(record: &AccessRecord<'_>, out: &mut BytesMut) -> Result<(), EncodeError> {
    let Some(total) = record.upstream_time_total() else { return Ok(()) };
    out.extend_from_slice(b",upstream_total=");
    // One attempt, as nearly always: its own text, as for `value`.
    if !write_plain_decimal(out, record.upstream_times) {
        write_float(out, total)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::router;

    use crate::access::LineOrigin;

    fn write(line: &[u8], host: &str, origin: LineOrigin) -> String {
        let record = router::parse(line).unwrap();
        let mut out = BytesMut::new();
        let ts = origin.point_timestamp(record.time_ns);
        CompatEncoder::default().write(&record, host, ts, &mut out).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn the_old_plugins_three_lines() {
        // The example of the design brief, as fluentd wrote it, plus `method` and a timestamp.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "curl/7.43.0" - "foo.example.com" - 10.2.3.4:5000, 10.2.3.5:5000 - foo.example.com - 0.002, 0.010 - 0.046"#;
        let origin = LineOrigin { runtime_time_ns: None, file_offset: 42 };
        assert_eq!(
            write(line, "node-1", origin),
            "deis_router_request_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.046 1464713772000000042\n\
             deis_router_response_time_ms,app=foo,status_code=200,host=node-1,method=GET value=0.002,upstream_total=0.012 1464713772000000042\n\
             deis_router_bytes_sent,app=foo,status_code=200,host=node-1,method=GET value=211.0 1464713772000000042\n"
        );
    }

    #[test]
    fn runtime_time_keys_wrapped_lines() {
        let line = br#"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - "PUT /ms50 HTTP/1.1" - 308 - "-" - "curl/8.5.0" - "_" - - - unknown.example.com - - - 0.000"#;
        let origin = LineOrigin { runtime_time_ns: Some(1_795_234_941_000_001_194), file_offset: 9 };
        let text = write(line, "n", origin);
        assert!(text.contains("deis_router_response_time_ms,app=router-default,status_code=404,host=n,method=PUT value=0.0 1795234941000001194\n"), "{text}");
        assert!(
            text.contains(
                "deis_router_request_time_ms,app=router-default,status_code=404,host=n,method=PUT value=0.0 "
            ),
            "{text}"
        );
        assert!(text.contains("value=308.0 1795234941000001194\n"), "{text}");
    }

    #[test]
    fn odd_numbers_fall_back_to_the_float() {
        // `0.1e1` is no plain decimal: it reads as 1.0, written as the float.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "c" - "f" - 10.2.3.4:5000 - f - 0.002 - 0.1e1"#;
        let text = write(line, "n", LineOrigin { runtime_time_ns: Some(5), file_offset: 0 });
        assert!(
            text.contains(
                "deis_router_request_time_ms,app=foo,status_code=200,host=n,method=GET value=1.0 5\n"
            ),
            "{text}"
        );
        // Escapes in tag values reach all three points.
        let line = br#"[31/May/2016:16:56:12 +0000] - a,b c - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1 - "-" - "c" - "f" - - - f - - - 0.5"#;
        let text = write(line, "n=1", LineOrigin { runtime_time_ns: Some(5), file_offset: 0 });
        assert_eq!(
            text.matches(",app=a\\,b\\ c,status_code=200,host=n\\=1,method=GET value=").count(),
            3,
            "{text}"
        );
    }
}

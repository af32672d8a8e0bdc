//! The `logs` topic's message: one JSON object per log record, the shape the old fluentd
//! plugin sent and the Deis logger reads (design.md, "What goes on NSQ"):
//!
//! ```json
//! {"log":"line text\n","stream":"stderr","time":"2016-10-18T20:29:38.123456+00:00",
//!  "docker":{"container_id":"6a90…"},
//!  "kubernetes":{"namespace_name":"foo","pod_id":"34eb…","pod_name":"foo-v2-web-2ggow",
//!    "container_name":"foo-web","labels":{"app":"foo","heritage":"deis","type":"web","version":"v2"},
//!    "host":"node-1"}}
//! ```
//!
//! - `log` ends in `\n`, as Docker's json-file and so fluentd's records had it; a merged
//!   multiline record has `\n` between its lines and one at its end.
//! - `time` is the record's runtime time in fluentd's layout (`%FT%T.%6N%:z`, UTC).
//! - Text that is not UTF-8 (CRI files carry the container's bytes as they are; Docker
//!   already replaced such bytes when it wrote its JSON) becomes U+FFFD per invalid
//!   sequence, as `String::from_utf8_lossy`: the Deis logger (Go) and every JSON reader need
//!   valid UTF-8, and Ruby's generator would have refused the whole record.
//! - Control characters, `"` and `\` are escaped (`\n`, `\t`, `\u001b`, …); everything else,
//!   non-ASCII included, is written as it is.
//!
//! A container's `docker` and `kubernetes` objects are the same for all its records, so
//! [`LogEncoder::new`] writes them once; [`LogEncoder::encode_into`] then writes only `log`,
//! `stream` and `time` per record, into the caller's buffer.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::tail::container::Stream;
use crate::timefmt::{format_rfc3339_micros, parse_rfc3339};

/// The per-container part of a record: the `docker` and `kubernetes` objects.
#[derive(Debug, Clone, Copy)]
pub struct LogMeta<'a> {
    pub container_id: &'a str,
    pub namespace_name: &'a str,
    pub pod_id: &'a str,
    pub pod_name: &'a str,
    pub container_name: &'a str,
    /// Written in this order; keys should be unique (as [`crate::kube::PodMeta::labels`] are).
    pub labels: &'a [(String, String)],
    /// The node's name.
    pub host: &'a str,
}

/// Encodes one container's records. Build one per file (again when its metadata changes).
#[derive(Debug, Clone)]
pub struct LogEncoder {
    /// `,"docker":{…},"kubernetes":{…}}`: everything after `time`.
    tail: Vec<u8>,
    /// The second whose `YYYY-MM-DDTHH:MM:SS` is in `second_text`: records come in bursts
    /// within one second, and the calendar is worked out once per second.
    second: i64,
    second_text: [u8; 19],
}

impl LogEncoder {
    pub fn new(meta: &LogMeta<'_>) -> Self {
        let mut t = BytesMut::with_capacity(256);
        t.put_slice(b",\"docker\":{\"container_id\":");
        write_json_str(&mut t, meta.container_id.as_bytes());
        t.put_slice(b"},\"kubernetes\":{\"namespace_name\":");
        write_json_str(&mut t, meta.namespace_name.as_bytes());
        t.put_slice(b",\"pod_id\":");
        write_json_str(&mut t, meta.pod_id.as_bytes());
        t.put_slice(b",\"pod_name\":");
        write_json_str(&mut t, meta.pod_name.as_bytes());
        t.put_slice(b",\"container_name\":");
        write_json_str(&mut t, meta.container_name.as_bytes());
        t.put_slice(b",\"labels\":{");
        for (i, (k, v)) in meta.labels.iter().enumerate() {
            if i > 0 {
                t.put_u8(b',');
            }
            write_json_str(&mut t, k.as_bytes());
            t.put_u8(b':');
            write_json_str(&mut t, v.as_bytes());
        }
        t.put_slice(b"},\"host\":");
        write_json_str(&mut t, meta.host.as_bytes());
        t.put_slice(b"}}");
        Self { tail: t.to_vec(), second: i64::MIN, second_text: [0; 19] }
    }

    /// Appends one record's JSON to `out`: `text` is the line without its final `\n` (the
    /// encoder writes it), `time_ns` the runtime's time of the record (Unix ns).
    pub fn encode_into(&mut self, text: &[u8], stream: Stream, time_ns: i64, out: &mut BytesMut) {
        out.reserve(text.len() + self.tail.len() + 80);
        out.put_slice(b"{\"log\":\"");
        escape_into(out, text);
        out.put_slice(b"\\n\",\"stream\":\"");
        out.put_slice(match stream {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        });
        out.put_slice(b"\",\"time\":\"");
        self.write_time(time_ns, out);
        out.put_u8(b'"');
        out.put_slice(&self.tail);
    }

    /// Like [`encode_into`](Self::encode_into), but the text is cut (at a character boundary)
    /// so that the record's JSON is at most `max_bytes`: nsqd drops the connection of a client
    /// that publishes a message over its `--max-msg-size`, and escaping can make a line up to six
    /// times longer (`\u0001`). Returns whether the text was cut. A `max_bytes` too small for
    /// even an empty `log` gives the record with an empty `log`.
    pub fn encode_into_capped(
        &mut self,
        text: &[u8],
        stream: Stream,
        time_ns: i64,
        max_bytes: usize,
        out: &mut BytesMut,
    ) -> bool {
        let start = out.len();
        self.encode_into(text, stream, time_ns, out);
        let written = out.len() - start;
        if written <= max_bytes {
            return false;
        }
        out.truncate(start);
        let overhead = written - escaped_len(text);
        let cut = escaped_prefix(text, max_bytes.saturating_sub(overhead));
        self.encode_into(&text[..cut], stream, time_ns, out);
        true
    }

    /// fluentd's `%FT%T.%6N%:z` in UTC: `2016-10-18T20:29:38.123456+00:00`.
    fn write_time(&mut self, time_ns: i64, out: &mut BytesMut) {
        const NANOS: i64 = 1_000_000_000;
        let second = time_ns.div_euclid(NANOS);
        if second != self.second {
            let mut s = String::with_capacity(32);
            format_rfc3339_micros(second * NANOS, &mut s);
            // `YYYY-MM-DDTHH:MM:SS` is the first 19 bytes for every year the parsers accept
            // (1970..=2200); a time outside that range is written whole, uncached.
            match s.as_bytes().get(..19) {
                Some(head) if s.len() == 32 => {
                    self.second_text.copy_from_slice(head);
                    self.second = second;
                }
                _ => {
                    s.clear();
                    format_rfc3339_micros(time_ns, &mut s);
                    out.put_slice(s.as_bytes());
                    return;
                }
            }
        }
        out.put_slice(&self.second_text);
        let micros = time_ns.rem_euclid(NANOS) / 1000;
        let mut digits = *b".000000+00:00";
        let mut m = micros;
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.put_slice(&digits);
    }
}

/// What each byte needs inside a JSON string: 0 nothing, `u` a `\u00XX` escape, else the
/// letter after the backslash.
static ESCAPES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// The bytes [`escape_into`] writes for `s`.
fn escaped_len(s: &[u8]) -> usize {
    escaped_prefix_walk(s, usize::MAX).1
}

/// The longest prefix of `s`, cut at a character boundary, that [`escape_into`] writes in at
/// most `budget` bytes.
fn escaped_prefix(s: &[u8], budget: usize) -> usize {
    escaped_prefix_walk(s, budget).0
}

/// `(prefix length, its escaped length)` for the longest prefix within `budget`, walking `s` as
/// [`escape_into`] writes it: an escaped ASCII byte is 2 or 6 bytes, an invalid sequence the 3
/// bytes of U+FFFD, any other character its own length.
fn escaped_prefix_walk(s: &[u8], budget: usize) -> (usize, usize) {
    let (mut taken, mut written) = (0, 0);
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            let n = match ESCAPES.get(c as usize) {
                Some(0) | None => c.len_utf8(),
                Some(b'u') => 6,
                Some(_) => 2,
            };
            if written + n > budget {
                return (taken, written);
            }
            taken += c.len_utf8();
            written += n;
        }
        if !chunk.invalid().is_empty() {
            if written + 3 > budget {
                return (taken, written);
            }
            taken += chunk.invalid().len();
            written += 3;
        }
    }
    (taken, written)
}

/// Writes `s` quoted as a JSON string.
fn write_json_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(b'"');
    escape_into(out, s);
    out.put_u8(b'"');
}

/// Writes `s` escaped for the inside of a JSON string, invalid UTF-8 as U+FFFD.
pub(crate) fn escape_into(out: &mut BytesMut, s: &[u8]) {
    if std::str::from_utf8(s).is_ok() {
        escape_utf8(out, s);
        return;
    }
    for chunk in s.utf8_chunks() {
        escape_utf8(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.put_slice("\u{FFFD}".as_bytes());
        }
    }
}

/// Escapes valid UTF-8: only ASCII bytes ever need it, so multi-byte sequences pass whole.
fn escape_utf8(out: &mut BytesMut, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let e = ESCAPES[usize::from(b)];
        if e == 0 {
            continue;
        }
        out.put_slice(&s[start..i]);
        if e == b'u' {
            out.put_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.put_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.put_slice(&s[start..]);
}

/// What the consumer reads of a `logs` message: logmill's, or the old fluentd's, which
/// carries more fields (ignored). Strings are borrowed from the message when unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogView<'a> {
    /// The text as sent, with its final `\n`.
    pub log: Cow<'a, str>,
    /// `stdout` or `stderr` (as sent; empty when absent).
    pub stream: Cow<'a, str>,
    /// As sent (RFC 3339); `None` when absent or not a string.
    pub time: Option<Cow<'a, str>>,
    /// `kubernetes.labels.app`.
    pub app: Option<Cow<'a, str>>,
    pub container_name: Cow<'a, str>,
    pub namespace_name: Cow<'a, str>,
    pub host: Cow<'a, str>,
}

impl LogView<'_> {
    /// `time` in Unix nanoseconds, when it is RFC 3339.
    pub fn time_ns(&self) -> Option<i64> {
        parse_rfc3339(self.time.as_deref()?.as_bytes()).ok()
    }

    /// The text without the final `\n` the producer added.
    pub fn text(&self) -> &str {
        self.log.strip_suffix('\n').unwrap_or(&self.log)
    }
}

/// Why a `logs` message was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogDecodeError {
    #[error("not a JSON object with a string `log`: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a `logs` message. Fields other than `log` are optional, and optional string fields
/// (and `labels`) of an unexpected type are taken as absent: a consumer must not choke on
/// another producer's variant of the record.
pub fn decode_log_record(body: &[u8]) -> Result<LogView<'_>, LogDecodeError> {
    let raw: RawRecord<'_> = serde_json::from_slice(body)?;
    let k = raw.kubernetes.unwrap_or_default();
    Ok(LogView {
        log: raw.log,
        stream: raw.stream.0.unwrap_or_default(),
        time: raw.time.0,
        app: k.labels.0,
        container_name: k.container_name.0.unwrap_or_default(),
        namespace_name: k.namespace_name.0.unwrap_or_default(),
        host: k.host.0.unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Lenient<'a>,
    #[serde(borrow, default)]
    time: Lenient<'a>,
    #[serde(borrow, default)]
    kubernetes: Option<RawKubernetes<'a>>,
}

#[derive(Deserialize, Default)]
struct RawKubernetes<'a> {
    #[serde(borrow, default)]
    container_name: Lenient<'a>,
    #[serde(borrow, default)]
    namespace_name: Lenient<'a>,
    #[serde(borrow, default)]
    host: Lenient<'a>,
    #[serde(borrow, default)]
    labels: AppLabel<'a>,
}

/// A string, or `None` for any other JSON value.
#[derive(Default)]
struct Lenient<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `labels.app` of a `labels` object, the other labels skipped unread; `None` when `labels`
/// is not an object.
#[derive(Default)]
struct AppLabel<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for AppLabel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AppLabel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a labels object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut app = None;
                while let Some(key) = map.next_key::<Lenient<'de>>()? {
                    if key.0.as_deref() == Some("app") {
                        app = map.next_value::<Lenient<'de>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(AppLabel(app))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AppLabel(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AppLabel(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const ID: &str = "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f";
    const POD_ID: &str = "34ebc234-2423-11e6-94aa-42010a800021";
    /// 2016-10-18T20:29:38Z (`date -u -d @1476822578`) and 123456789 ns.
    const TIME_NS: i64 = 1_476_822_578_123_456_789;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn design_meta(labels: &[(String, String)]) -> LogMeta<'_> {
        LogMeta {
            container_id: ID,
            namespace_name: "foo",
            pod_id: POD_ID,
            pod_name: "foo-v2-web-2ggow",
            container_name: "foo-web",
            labels,
            host: "node-1",
        }
    }

    fn encode(meta: &LogMeta<'_>, text: &[u8], stream: Stream, time_ns: i64) -> Vec<u8> {
        let mut out = BytesMut::new();
        LogEncoder::new(meta).encode_into(text, stream, time_ns, &mut out);
        out.to_vec()
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn the_design_example_exactly() {
        let l = labels(&[("app", "foo"), ("heritage", "deis"), ("type", "web"), ("version", "v2")]);
        let bytes = encode(&design_meta(&l), b"line text", Stream::Stderr, TIME_NS);
        // design.md's example, its elided ids written out, on one line.
        let expected = format!(
            "{{\"log\":\"line text\\n\",\"stream\":\"stderr\",\"time\":\"2016-10-18T20:29:38.123456+00:00\",\
             \"docker\":{{\"container_id\":\"{ID}\"}},\
             \"kubernetes\":{{\"namespace_name\":\"foo\",\"pod_id\":\"{POD_ID}\",\"pod_name\":\"foo-v2-web-2ggow\",\
             \"container_name\":\"foo-web\",\"labels\":{{\"app\":\"foo\",\"heritage\":\"deis\",\"type\":\"web\",\"version\":\"v2\"}},\
             \"host\":\"node-1\"}}}}"
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
        // And to serde_json, exactly the field set design.md lists.
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(keys(&v), ["docker", "kubernetes", "log", "stream", "time"]);
        assert_eq!(keys(&v["docker"]), ["container_id"]);
        assert_eq!(
            keys(&v["kubernetes"]),
            ["container_name", "host", "labels", "namespace_name", "pod_id", "pod_name"]
        );
        assert_eq!(
            v,
            json!({"log": "line text\n", "stream": "stderr", "time": "2016-10-18T20:29:38.123456+00:00",
                   "docker": {"container_id": ID},
                   "kubernetes": {"namespace_name": "foo", "pod_id": POD_ID, "pod_name": "foo-v2-web-2ggow",
                                  "container_name": "foo-web",
                                  "labels": {"app": "foo", "heritage": "deis", "type": "web", "version": "v2"},
                                  "host": "node-1"}})
        );
    }

    #[test]
    fn times_in_fluentds_layout() {
        let l = labels(&[]);
        let meta = design_meta(&l);
        let mut enc = LogEncoder::new(&meta);
        let mut time = |ns: i64| {
            let mut out = BytesMut::new();
            enc.encode_into(b"", Stream::Stdout, ns, &mut out);
            let v: Value = serde_json::from_slice(&out).unwrap();
            v["time"].as_str().unwrap().to_owned()
        };
        // The cached second is reused only within its second; micros are truncated, not rounded.
        assert_eq!(time(TIME_NS), "2016-10-18T20:29:38.123456+00:00");
        assert_eq!(time(1_476_822_578_000_000_999), "2016-10-18T20:29:38.000000+00:00");
        assert_eq!(time(1_476_822_578_999_999_999), "2016-10-18T20:29:38.999999+00:00");
        assert_eq!(time(1_476_822_579_000_001_000), "2016-10-18T20:29:39.000001+00:00");
        // date -u -d @1483228799 → 2016-12-31 23:59:59; a year boundary.
        assert_eq!(time(1_483_228_799_500_000_000), "2016-12-31T23:59:59.500000+00:00");
        assert_eq!(time(1_483_228_800_000_000_000), "2017-01-01T00:00:00.000000+00:00");
        assert_eq!(time(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(time(1_476_822_578_123_456_789), "2016-10-18T20:29:38.123456+00:00");
    }

    #[test]
    fn escaping() {
        let l = labels(&[("a\"b", "c\\d"), ("app_kubernetes_io/name", "x")]);
        let meta = LogMeta { host: "node\t1", ..design_meta(&l) };
        let cases: [(&[u8], &str); 9] = [
            (b"say \"hi\"", r#""say \"hi\"\n""#),
            (b"C:\\dir\\", r#""C:\\dir\\\n""#),
            (b"tab\there\r", r#""tab\there\r\n""#),
            (b"\x00\x01\x08\x0c\x1b[31m\x1f", r#""\u0000\u0001\b\f\u001b[31m\u001f\n""#),
            // DEL and non-ASCII need no escape.
            (b"\x7f", "\"\x7f\\n\""),
            ("caf\u{e9} \u{2028} \u{1F600}".as_bytes(), "\"caf\u{e9} \u{2028} \u{1F600}\\n\""),
            // Invalid UTF-8: one U+FFFD per invalid sequence, as from_utf8_lossy.
            (b"a\xffb", "\"a\u{FFFD}b\\n\""),
            (b"\xe2\x82x\xc3", "\"\u{FFFD}x\u{FFFD}\\n\""),
            // A line that ends in a newline of its own keeps it, then gets the record's.
            (b"two\nlines\n", r#""two\nlines\n\n""#),
        ];
        for (text, log) in cases {
            let bytes = encode(&meta, text, Stream::Stdout, TIME_NS);
            let s = String::from_utf8(bytes.clone()).expect("always UTF-8");
            let expected = format!("{{\"log\":{log},");
            assert!(s.starts_with(&expected), "{text:?}: {s}");
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["log"], format!("{}\n", String::from_utf8_lossy(text)), "{text:?}");
        }
        let v: Value = serde_json::from_slice(&encode(&meta, b"", Stream::Stdout, 0)).unwrap();
        assert_eq!(v["kubernetes"]["host"], "node\t1");
        assert_eq!(v["kubernetes"]["labels"], json!({"a\"b": "c\\d", "app_kubernetes_io/name": "x"}));
        let raw = String::from_utf8(encode(&meta, b"", Stream::Stdout, 0)).unwrap();
        assert!(raw.contains(r#""labels":{"a\"b":"c\\d","#), "{raw}");
    }

    #[test]
    fn decoding_logmills_records() {
        let l = labels(&[("app", "foo"), ("heritage", "deis")]);
        let bytes = encode(&design_meta(&l), b"GET / 200", Stream::Stdout, TIME_NS);
        let v = decode_log_record(&bytes).unwrap();
        assert_eq!(
            v,
            LogView {
                log: "GET / 200\n".into(),
                stream: "stdout".into(),
                time: Some("2016-10-18T20:29:38.123456+00:00".into()),
                app: Some("foo".into()),
                container_name: "foo-web".into(),
                namespace_name: "foo".into(),
                host: "node-1".into(),
            }
        );
        assert_eq!(v.text(), "GET / 200");
        assert_eq!(v.time_ns(), Some(1_476_822_578_123_456_000));
        // Unescaped strings are borrowed from the message.
        assert!(matches!(v.stream, Cow::Borrowed(_)) && matches!(v.app, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn decoding_the_old_fluentds_records() {
        // The Deis logger's own example (log/model.go), with the extra fields fluentd's
        // kubernetes_metadata filter added, and `time` from another zone.
        let body =
            br#"{"log":"2016/05/31 01:34:43 10.164.1.1 GET / - 5074209722772702441\n","stream":"stderr",
            "docker":{"container_id":"6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f"},
            "kubernetes":{"namespace_name":"foo","pod_id":"34ebc234-2423-11e6-94aa-42010a800021",
              "pod_name":"foo-v2-web-2ggow","container_name":"foo-web",
              "labels":{"heritage":"deis","type":"web","app":"foo","version":"v2"},
              "host":"gke-jchauncey-default-pool-7ae1c279-10ye","master_url":"https://10.3.240.1:443",
              "namespace_id":"9e3f"},
            "time":"2016-05-31T03:34:43.123456+02:00"}"#;
        let v = decode_log_record(body).unwrap();
        assert_eq!(v.app.as_deref(), Some("foo"));
        assert_eq!(v.host, "gke-jchauncey-default-pool-7ae1c279-10ye");
        assert_eq!(v.stream, "stderr");
        // date -u -d '2016-05-31T01:34:43Z' +%s → 1464658483
        assert_eq!(v.time_ns(), Some(1_464_658_483_123_456_000));
        // Optional fields missing or of another type are absent; a missing `log` is an error.
        let v =
            decode_log_record(br#"{"log":"x","time":1464658483,"kubernetes":{"labels":"none","host":null}}"#)
                .unwrap();
        assert_eq!((v.time, v.app, v.host.as_ref(), v.stream.as_ref()), (None, None, "", ""));
        let v = decode_log_record(br#"{"log":"x","kubernetes":{"labels":{"app":{"x":1},"a":[1]}}}"#).unwrap();
        assert_eq!(v.app, None);
        let v =
            decode_log_record(br#"{"log":"x","kubernetes":{"labels":{"\u0061pp":"esc\u0061ped"}}}"#).unwrap();
        assert_eq!(v.app.as_deref(), Some("escaped"));
        for bad in [&b"{}"[..], b"[]", b"not json", br#"{"log":5}"#, br#"{"log":"x""#, b""] {
            assert!(decode_log_record(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn records_are_capped_at_nsqds_message_size() {
        let l = labels(&[("app", "foo")]);
        let meta = design_meta(&l);
        let mut enc = LogEncoder::new(&meta);
        // 1 MiB of control characters escapes to 6 MiB; nsqd's default limit is 1 MiB.
        let text = vec![1u8; 1 << 20];
        let mut out = BytesMut::new();
        assert!(enc.encode_into_capped(&text, Stream::Stdout, TIME_NS, 1 << 20, &mut out));
        assert!(out.len() <= 1 << 20, "{}", out.len());
        // Cut where the next escape would not fit: within 6 bytes of the limit.
        assert!(out.len() > (1 << 20) - 6, "{}", out.len());
        let v: Value = serde_json::from_slice(&out).unwrap();
        let log = v["log"].as_str().unwrap();
        assert!(log.ends_with('\n') && log[..log.len() - 1].bytes().all(|b| b == 1));
        // A record that fits is written whole, and says so.
        out.clear();
        assert!(!enc.encode_into_capped(b"short", Stream::Stdout, TIME_NS, 1 << 20, &mut out));
        assert_eq!(decode_log_record(&out).unwrap().text(), "short");
        // Cuts fall between characters: 'é' is 2 bytes, never split.
        out.clear();
        let empty_len = {
            let mut e = BytesMut::new();
            enc.encode_into(b"", Stream::Stdout, TIME_NS, &mut e);
            e.len()
        };
        assert!(enc.encode_into_capped("éééé".as_bytes(), Stream::Stdout, TIME_NS, empty_len + 5, &mut out));
        assert_eq!(decode_log_record(&out).unwrap().text(), "éé");
        // Appends after what the buffer holds.
        let before = out.len();
        enc.encode_into_capped(&text, Stream::Stdout, TIME_NS, 1000, &mut out);
        assert!(out.len() - before <= 1000);
        assert!(serde_json::from_slice::<Value>(&out[before..]).is_ok());
    }

    proptest! {
        #[test]
        fn capped_records_fit_and_keep_a_prefix(
            text in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'"'), Just(1u8), Just(0xe9), Just(0xc3), Just(0xa9), any::<u8>()],
                0..400,
            ),
            extra in 0usize..600,
        ) {
            let l = labels(&[("app", "foo")]);
            let meta = design_meta(&l);
            let mut enc = LogEncoder::new(&meta);
            let mut empty = BytesMut::new();
            enc.encode_into(b"", Stream::Stdout, TIME_NS, &mut empty);
            let max = empty.len() + extra;
            let mut out = BytesMut::new();
            let cut = enc.encode_into_capped(&text, Stream::Stdout, TIME_NS, max, &mut out);
            prop_assert!(out.len() <= max);
            let view = decode_log_record(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let whole = String::from_utf8_lossy(&text).into_owned();
            prop_assert!(whole.starts_with(view.text()), "{:?} is not a prefix of {:?}", view.text(), whole);
            prop_assert_eq!(cut, view.text().len() < whole.len());
        }

        #[test]
        fn encoded_records_parse_back(
            text in proptest::collection::vec(any::<u8>(), 0..300),
            ns in ".{0,20}", pod in ".{0,20}", container in ".{0,20}", host in ".{0,20}",
            label_pairs in proptest::collection::btree_map(".{0,10}", ".{0,10}", 0..5),
            stderr in any::<bool>(),
            time_ns in 0i64..7_258_118_400_000_000_000,
        ) {
            let l: Vec<(String, String)> = label_pairs.clone().into_iter().collect();
            let meta = LogMeta {
                container_id: ID, namespace_name: &ns, pod_id: POD_ID, pod_name: &pod,
                container_name: &container, labels: &l, host: &host,
            };
            let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
            let bytes = encode(&meta, &text, stream, time_ns);
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let log = format!("{}\n", String::from_utf8_lossy(&text));
            prop_assert_eq!(v["log"].as_str(), Some(log.as_str()));
            prop_assert_eq!(v["stream"].as_str(), Some(if stderr { "stderr" } else { "stdout" }));
            prop_assert_eq!(v["kubernetes"]["namespace_name"].as_str(), Some(ns.as_str()));
            prop_assert_eq!(v["kubernetes"]["pod_name"].as_str(), Some(pod.as_str()));
            prop_assert_eq!(v["kubernetes"]["container_name"].as_str(), Some(container.as_str()));
            prop_assert_eq!(v["kubernetes"]["host"].as_str(), Some(host.as_str()));
            let back: std::collections::BTreeMap<String, String> =
                serde_json::from_value(v["kubernetes"]["labels"].clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, label_pairs.clone());
            let time = v["time"].as_str().unwrap_or_default().as_bytes().to_vec();
            prop_assert_eq!(parse_rfc3339(&time).ok(), Some(time_ns - time_ns % 1000));
            // The consumer's reader agrees.
            let view = decode_log_record(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(view.log.as_ref(), log.as_str());
            prop_assert_eq!(view.app.as_deref(), label_pairs.get("app").map(String::as_str));
            prop_assert_eq!(view.namespace_name.as_ref(), ns.as_str());
        }
    }
}

//! Reading a `logs` message, the compatible JSON of design.md ("What goes on NSQ"): the seam
//! between the consumer and the record's format.
//!
//! [`decode_log_record`] and [`LogView`] have the shape of `wire::log_record`'s (the encoder
//! and reader being built with the agent, branch `kube`): when that module is on main, this
//! file goes and the consumer imports `crate::wire::{decode_log_record, LogView}` instead.
//! Only `log` is required; the other fields are optional, and a field of an unexpected type is
//! taken as absent, so that another producer's variant of the record (the old fluentd's
//! carries more fields) is read rather than refused.

use std::borrow::Cow;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::timefmt::parse_rfc3339;

/// What the consumer reads of a `logs` message. Strings are borrowed from the message when
/// they hold no escapes.
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
    /// The node's name.
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

/// Reads a `logs` message.
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

/// Ignores any JSON value: what a lenient field becomes when it is not what it should be.
macro_rules! ignore_others {
    ($none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
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
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            ignore_others!(Lenient(None));
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
            ignore_others!(AppLabel(None));
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example() {
        let body = br#"{"log":"line text\n","stream":"stderr","time":"2016-10-18T20:29:38.123456+00:00",
 "docker":{"container_id":"6a90"},
 "kubernetes":{"namespace_name":"foo","pod_id":"34eb","pod_name":"foo-v2-web-2ggow",
   "container_name":"foo-web","labels":{"app":"foo","heritage":"deis","type":"web","version":"v2"},
   "host":"node-1"}}"#;
        let v = decode_log_record(body).unwrap();
        assert_eq!(v.text(), "line text");
        assert_eq!((v.stream.as_ref(), v.app.as_deref(), v.host.as_ref()), ("stderr", Some("foo"), "node-1"));
        assert_eq!((v.container_name.as_ref(), v.namespace_name.as_ref()), ("foo-web", "foo"));
        // date -u -d 2016-10-18T20:29:38Z +%s → 1476822578
        assert_eq!(v.time_ns(), Some(1_476_822_578_123_456_000));
        assert!(matches!(v.log, Cow::Owned(_)), "an escaped \\n is copied");
        assert!(matches!(v.host, Cow::Borrowed(_)));
    }

    #[test]
    fn lenient_about_everything_but_log() {
        let v =
            decode_log_record(br#"{"log":"x","stream":1,"time":null,"kubernetes":{"labels":"no"}}"#).unwrap();
        assert_eq!((v.stream.as_ref(), v.time, v.app), ("", None, None));
        assert_eq!(decode_log_record(br#"{"log":"x"}"#).unwrap().time_ns(), None);
        for bad in [&br#"{"stream":"stdout"}"#[..], b"{\"log\":\"x\"", b"not json", br#"{"log":5}"#, b""] {
            assert!(decode_log_record(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

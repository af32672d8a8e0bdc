//! Property tests of the declarative rules path (`access::rules`, the regex of
//! `parsers/*.toml`), which the fast path's own property tests do not reach, through the public
//! pipeline a role runs (`timefmt` has its own in `src/timefmt.rs`).
//!
//! - Arbitrary bytes, damaged lines and lines with one broken field never panic any built-in
//!   definition, nor the fast path.
//! - On generated valid access lines (ISO and `$time_local` times at any offset, IPv4 and IPv6,
//!   retries and redirects with `-` attempts, `\x22` escapes and ` - ` inside quoted fields),
//!   the rules path writes the very bytes the fast path writes, and those say what the
//!   generator wrote: tags, values, the timestamp from the line's time and offset, the
//!   aggregate's count, bytes and sums (read back by the test's own line-protocol reader).

#[path = "support/access_reference.rs"]
mod access_reference;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use access_reference::{date_of_day, read_line_protocol, Num, Row};
use bytes::BytesMut;
use logmill::access::rules::Registry;
use logmill::access::{KeyGuard, LineOrigin};
use logmill::config::RawConfig;
use logmill::metrics::aggregate::AggregateSettings;
use logmill::pipeline::{LineParser, LineProcessor};
use proptest::prelude::*;

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
/// 2200-01-01T00:00:00Z: logmill reads times from 1970 through 2200.
const Y2200_SECS: i64 = 7_258_118_400;
const DAY: i64 = 86_400;

// ---- an independent formatter ----------------------------------------------------------------

/// The local calendar fields of `secs` (UTC) at `offset_secs` east of UTC.
fn civil(secs: i64, offset_secs: i64) -> (i64, usize, i64, i64, i64, i64) {
    let local = secs + offset_secs;
    let (year, month, day) = date_of_day(local.div_euclid(DAY));
    let sod = local.rem_euclid(DAY);
    (year, month, day, sod / 3600, sod % 3600 / 60, sod % 60)
}

/// `+hh:mm` / `-hh:mm` (`colon`) or `+hhmm`.
fn offset_text(offset_secs: i64, colon: bool) -> String {
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let (h, m) = (offset_secs.abs() / 3600, offset_secs.abs() % 3600 / 60);
    if colon {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}")
    }
}

/// nginx's `$time_iso8601`: `2026-11-21T04:22:21+00:00`.
fn iso8601(secs: i64, offset_secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs, offset_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}", offset_text(offset_secs, true))
}

/// nginx's `$time_local`: `21/Nov/2026:04:22:21 +0000`.
fn time_local(secs: i64, offset_secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs, offset_secs);
    format!("{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} {}", MONTHS[mo - 1], offset_text(offset_secs, false))
}

// ---- generators ----------------------------------------------------------------------------

/// An instant in logmill's range, two days from its ends so that any offset stays inside.
fn instant() -> impl Strategy<Value = i64> {
    2 * DAY..Y2200_SECS - 2 * DAY
}

/// A UTC offset in whole minutes, as time zones have them (±23:59 is what the layouts allow).
fn offset() -> impl Strategy<Value = i64> {
    (-(23 * 60 + 59)..=23 * 60 + 59i64).prop_map(|minutes| minutes * 60)
}

/// Text nginx writes inside a quoted field: anything printable but `"`, which it writes as
/// `\x22`; ` - ` included, which broke the old split-based parser.
fn quoted_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![6 => "[a-zA-Z0-9/.;:,()_=&?%+ -]{1,8}", 1 => Just(r"\x22".to_owned()), 1 => Just(" - ".to_owned())], 0..6)
        .prop_map(|parts| parts.concat())
}

fn remote_addr() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        Just("::1".to_owned()),
    ]
}

/// `$upstream_addr` and `$upstream_response_time` of zero to three attempts, with `, `
/// between retries and ` : ` between internal redirects; an attempt that got no answer has
/// `-` for its time.
fn upstream() -> impl Strategy<Value = (String, String)> {
    let attempt =
        (remote_addr(), 1u16.., prop_oneof![4 => "[0-9]{1,2}\\.[0-9]{3}", 1 => Just("-".to_owned())]);
    (prop::collection::vec(attempt, 0..=3), prop_oneof![Just(", "), Just(" : ")]).prop_map(
        |(attempts, sep)| {
            if attempts.is_empty() {
                return ("-".to_owned(), "-".to_owned());
            }
            let addrs: Vec<String> = attempts
                .iter()
                .map(
                    |(a, port, _)| {
                        if a.contains(':') {
                            format!("[{a}]:{port}")
                        } else {
                            format!("{a}:{port}")
                        }
                    },
                )
                .collect();
            let times: Vec<&str> = attempts.iter().map(|(_, _, t)| t.as_str()).collect();
            (addrs.join(sep), times.join(sep))
        },
    )
}

/// `$request`: a request line (known methods, unknown ones, lower case), `-`, or the bytes a
/// TLS handshake leaves when sent to a plain port.
fn request() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("HEAD"),
        Just("PATCH"),
        Just("OPTIONS"),
        Just("PROPFIND"),
        Just("get"),
    ];
    prop_oneof![
        8 => (method, quoted_text()).prop_map(|(m, path)| format!("{m} /{path} HTTP/1.1")),
        1 => Just("-".to_owned()),
        1 => Just(r"\x16\x03\x01\x02\x00\x01\x00\x01\xFC\x03\x03".to_owned()),
    ]
}

/// The fields of one access line, as nginx would write them.
#[derive(Debug, Clone)]
struct Access {
    secs: i64,
    offset: i64,
    local_time: bool,
    app: String,
    remote_addr: String,
    user: String,
    status: u16,
    request: String,
    bytes_sent: u64,
    referer: String,
    agent: String,
    server: String,
    upstream_addr: String,
    host: String,
    upstream_time: String,
    request_time: String,
}

impl Access {
    fn line(&self) -> String {
        String::from_utf8(self.line_with(usize::MAX, b"")).unwrap()
    }

    /// The line with field `index` (0 the time, 13 the request time) replaced by `bytes`.
    fn line_with(&self, index: usize, bytes: &[u8]) -> Vec<u8> {
        let time = if self.local_time {
            time_local(self.secs, self.offset)
        } else {
            iso8601(self.secs, self.offset)
        };
        let fields = [
            time,
            self.app.clone(),
            self.remote_addr.clone(),
            self.user.clone(),
            self.status.to_string(),
            self.request.clone(),
            self.bytes_sent.to_string(),
            self.referer.clone(),
            self.agent.clone(),
            self.server.clone(),
            self.upstream_addr.clone(),
            self.host.clone(),
            self.upstream_time.clone(),
            self.request_time.clone(),
        ];
        let mut line = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let (open, close): (&[u8], &[u8]) = match i {
                0 => (b"[", b"]"),
                5 | 7 | 8 | 9 => (b"\"", b"\""),
                _ => (b"", b""),
            };
            if i > 0 {
                line.extend_from_slice(b" - ");
            }
            line.extend_from_slice(open);
            line.extend_from_slice(if i == index { bytes } else { field.as_bytes() });
            line.extend_from_slice(close);
        }
        line
    }
}

fn access() -> impl Strategy<Value = Access> {
    let when = (instant(), offset(), any::<bool>());
    let who = (
        "[a-z0-9][a-z0-9-]{0,20}",
        remote_addr(),
        prop_oneof![Just("-".to_owned()), "[a-zA-Z0-9._]{1,10}"],
        100u16..=599,
    );
    let what =
        (request(), 0u64..10_000_000_000, prop_oneof![Just("-".to_owned()), quoted_text()], quoted_text());
    let whence = (
        prop_oneof![Just("_".to_owned()), "[a-z0-9.-]{1,20}"],
        upstream(),
        prop_oneof![
            Just("-".to_owned()),
            "[a-z0-9.:-]{1,20}",
            Just("bad - host".to_owned()),
            // A Host whose tail looks like a time, or like the times' own separators.
            Just("h - 0.5".to_owned()),
            Just("h, - x".to_owned()),
        ],
        "[0-9]{1,3}\\.[0-9]{3}",
    );
    (when, who, what, whence).prop_map(
        |(
            (secs, offset, local_time),
            (app, remote_addr, user, status),
            (request, bytes_sent, referer, agent),
            (server, (upstream_addr, upstream_time), host, request_time),
        )| {
            // A Host header may hold ` - `: the times after it are still read as the times.
            Access {
                secs,
                offset,
                local_time,
                app,
                remote_addr,
                user,
                status,
                request,
                bytes_sent,
                referer,
                agent,
                server,
                upstream_addr,
                host,
                upstream_time,
                request_time,
            }
        },
    )
}

/// A valid line with one field replaced by arbitrary bytes: invalid UTF-8, quotes, ` - `,
/// nothing, a number out of range.
fn damaged_field() -> impl Strategy<Value = Vec<u8>> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12),
        prop::collection::vec(
            prop_oneof![Just(0xffu8), Just(0xc3), Just(b'"'), Just(b' '), Just(b'-'), Just(b'9')],
            0..12
        ),
        Just(b"99999999999999999999".to_vec()),
        Just(b"NaN".to_vec()),
    ];
    (access(), 0usize..14, bytes).prop_map(|(a, index, bytes)| a.line_with(index, &bytes))
}

/// A valid line damaged: one byte replaced, a cut, or bytes inserted.
fn damaged(line: String) -> impl Strategy<Value = Vec<u8>> {
    let len = line.len();
    (0..len.max(1), any::<u8>(), prop::collection::vec(any::<u8>(), 0..8), 0..3u8).prop_map(
        move |(at, byte, inserted, how)| {
            let mut bytes = line.clone().into_bytes();
            match how {
                0 => bytes[at] = byte,
                1 => bytes.truncate(at),
                _ => {
                    bytes.splice(at..at, inserted);
                }
            }
            bytes
        },
    )
}

// ---- the rules path ------------------------------------------------------------------------

/// The default aggregate settings, with room for a few series only: a processor per case
/// stays cheap.
fn aggregate_settings() -> AggregateSettings {
    static SETTINGS: LazyLock<AggregateSettings> = LazyLock::new(|| {
        let mut raw = RawConfig::load(None).unwrap();
        raw.host = Some("node-1".into());
        raw.aggregate.max_series = 16;
        raw.validate().unwrap().aggregate
    });
    SETTINGS.clone()
}

/// The built-in definitions, compiled once (a regex per case would dominate the run).
fn builtins() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry::builtin().unwrap());
    &REGISTRY
}

/// One line through a processor with `parser`, as a role runs it: its compat points, then the
/// aggregated ones.
fn process(parser: LineParser, line: &[u8], origin: LineOrigin) -> String {
    let mut processor = LineProcessor::new("node-1", parser, aggregate_settings());
    let mut out = BytesMut::new();
    processor.process(line, false, origin, &mut KeyGuard::default(), &mut out);
    processor.finish(&mut out);
    String::from_utf8(out.to_vec())
        .unwrap_or_else(|_| panic!("not UTF-8: {:?}", String::from_utf8_lossy(&out)))
}

/// Runs every built-in definition over a line, by hand and through a processor, and the fast
/// path too. Only a panic can fail this.
fn through_every_definition(line: &[u8]) {
    let origin = LineOrigin { runtime_time_ns: None, file_offset: 7 };
    for name in ["deis-router", "nginx-combined", "apache-common"] {
        let definition = builtins().get(name).unwrap();
        if let Ok(Some(parsed)) = definition.parse(line) {
            let _ = definition.access_record(&parsed);
        }
        process(LineParser::Rules(definition.clone()), line, origin);
    }
    process(LineParser::FastPath, line, origin);
}

/// The float a point's field holds; fails the case otherwise.
fn float(row: &Row, field: &str) -> Result<f64, TestCaseError> {
    match row.fields.get(field) {
        Some(Num::Float(v)) => Ok(*v),
        other => Err(TestCaseError::fail(format!("{field}: {other:?} in {row:?}"))),
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_rules_path(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        through_every_definition(&bytes);
        let mut bracketed = b"[".to_vec();
        bracketed.extend_from_slice(&bytes);
        through_every_definition(&bracketed);
    }

    #[test]
    fn damaged_access_lines_never_panic_the_rules_path(line in access().prop_flat_map(|a| damaged(a.line()))) {
        through_every_definition(&line);
    }

    #[test]
    fn lines_with_a_broken_field_never_panic_the_rules_path(line in damaged_field()) {
        through_every_definition(&line);
    }

    #[test]
    fn rules_path_and_fast_path_write_valid_lines_alike(a in access(), file_offset in 0u64..1 << 40) {
        let line = a.line();
        let origin = LineOrigin { runtime_time_ns: None, file_offset };
        let fast = process(LineParser::FastPath, line.as_bytes(), origin);
        let rules = builtins().get("deis-router").unwrap();
        let slow = process(LineParser::Rules(rules.clone()), line.as_bytes(), origin);
        prop_assert_eq!(&fast, &slow, "{}", line);

        // What the generator wrote, read back. The compat points: the line's second plus its
        // offset (mod 10⁹) as the timestamp, the method from the closed set.
        let method = a.request.split(' ').next().unwrap();
        let known = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
        let method = if known.contains(&method) { method } else { "OTHER" };
        let status = a.status.to_string();
        // The upstream time as the schema reads it: the first attempt's for the compat point (the
        // old plugin's `to_f`, 0.0 for `-`), every attempt's summed for the aggregate.
        let attempts: Vec<Option<f64>> = a.upstream_time.split([',', ':']).map(|t| t.trim().parse().ok()).collect();
        let timed: Vec<f64> = attempts.iter().flatten().copied().collect();
        let total = (!timed.is_empty()).then(|| timed.iter().fold(0.0, |sum, t| sum + t));
        let request_time: f64 = a.request_time.parse().unwrap();
        for (measurement, value) in [
            ("deis_router_request_time_ms", request_time),
            ("deis_router_response_time_ms", attempts[0].unwrap_or(0.0)),
            ("deis_router_bytes_sent", a.bytes_sent as f64),
        ] {
            let rows = read_line_protocol(&fast, measurement);
            prop_assert_eq!(rows.len(), 1, "{}: {}", measurement, fast);
            let row = &rows[0];
            prop_assert_eq!(row.time_ns, a.secs * 1_000_000_000 + (file_offset % 1_000_000_000) as i64);
            let tags: Vec<(&str, &str)> = row.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let want = [("app", a.app.as_str()), ("host", "node-1"), ("method", method), ("status_code", &status)];
            prop_assert_eq!(&tags[..], &want[..], "{}", line);
            prop_assert_eq!(float(row, "value")?, value, "{}: {}", measurement, line);
            // The schema's `upstream_total`: on the response time point only, every attempt's
            // time summed, absent when none had one.
            match (measurement, total) {
                ("deis_router_response_time_ms", Some(total)) => {
                    prop_assert_eq!(float(row, "upstream_total")?, total, "{}", line)
                }
                _ => prop_assert!(!row.fields.contains_key("upstream_total"), "{}: {}", measurement, line),
            }
        }
        // The aggregate of one line.
        let rows = read_line_protocol(&fast, "router_requests");
        prop_assert_eq!(rows.len(), 1, "{}", fast);
        let row = &rows[0];
        prop_assert_eq!(row.time_ns - row.time_ns % 10_000_000_000, (a.secs - a.secs % 10) * 1_000_000_000);
        prop_assert_eq!(row.fields.get("count"), Some(&Num::Int(1)));
        prop_assert_eq!(row.fields.get("bytes_sent"), Some(&Num::Int(a.bytes_sent as i64)));
        prop_assert_eq!(float(row, "request_time_sum")?, request_time);
        match total {
            Some(total) => prop_assert_eq!(float(row, "upstream_time_sum")?, total, "{}", line),
            None => prop_assert!(!row.fields.contains_key("upstream_time_sum"), "{}", line),
        }
    }
}

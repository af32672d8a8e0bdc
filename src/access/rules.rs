//! Declarative log formats: the definitions in `parsers/*.toml`, read at run time.
//!
//! A definition names the sources it applies to, a regex with named captures, the capture that
//! holds the time, and templates that map captures to points (measurement, tags, fields). An
//! optional `[aggregate]` table maps captures onto an [`AccessRecord`] so that the format also
//! feeds the `router_requests` aggregate. The built-ins are embedded in the binary; a user's
//! directory adds definitions or replaces a built-in of the same name.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use regex::bytes::{Captures, Regex};
use serde::Deserialize;

use super::{ruby_to_f, AccessRecord, Method, Reject};

/// The definitions shipped inside the binary, as (file name, text).
pub(crate) const BUILTINS: [(&str, &str); 3] = [
    ("deis-router.toml", include_str!("../../parsers/deis-router.toml")),
    ("nginx-combined.toml", include_str!("../../parsers/nginx-combined.toml")),
    ("apache-common.toml", include_str!("../../parsers/apache-common.toml")),
];

/// The name of the definition that the hand-written fast path implements.
pub const DEIS_ROUTER: &str = "deis-router";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("{file}: {source}")]
    Toml { file: String, source: toml::de::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("reading parsers directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

// ---- the file format ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    /// Unique name; a user's definition with a built-in's name replaces it.
    name: String,
    /// One line for humans.
    #[serde(default)]
    description: String,
    /// Which sources the definition applies to.
    #[serde(default)]
    applies_to: RawAppliesTo,
    line: RawLine,
    /// Feed `router_requests` from these captures.
    aggregate: Option<RawAggregate>,
    /// The points written for each line.
    #[serde(default)]
    points: Vec<RawPoint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppliesTo {
    /// Regexes matched (unanchored) against a container's name.
    #[serde(default)]
    containers: Vec<String>,
    /// Regexes matched (unanchored) against a file's path.
    #[serde(default)]
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    /// Lines that do not match this regex are not for this definition (counted as "other",
    /// not rejected). Absent: every line is expected to match `regex`.
    candidate: Option<String>,
    /// The line's layout, with named captures.
    regex: String,
    time: RawTime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime {
    capture: String,
    format: TimeFormat,
}

/// How a time capture is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimeFormat {
    /// `$time_iso8601` or `$time_local`, whichever the line has.
    Nginx,
    /// `2016-10-06T00:17:09.669794202Z`.
    Rfc3339,
    /// Common Log Format, `$time_local`: `31/May/2016:16:56:12 +0000`.
    Clf,
    /// Seconds since the epoch, with an optional fraction (nginx's `$msec`).
    Unix,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    app: String,
    status: String,
    request: String,
    bytes_sent: String,
    request_time: String,
    upstream_time: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    measurement: String,
    #[serde(default)]
    tags: Vec<RawValue>,
    fields: Vec<RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValue {
    key: String,
    /// A capture name, or `@host` for the node's name.
    from: Option<String>,
    /// A constant instead of `from`.
    value: Option<String>,
    #[serde(rename = "as", default)]
    conversion: Conversion,
}

/// How a captured text becomes a tag or field value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Conversion {
    /// The text itself (tag, or string field).
    #[default]
    String,
    /// The method of an HTTP request line, from a closed set (tags only).
    HttpMethod,
    /// A float; `-` leaves the field out, anything else unparsable rejects the line.
    Float,
    /// An integer; `-` leaves the field out, anything else unparsable rejects the line.
    Int,
    /// Ruby's `to_f`, as the old fluentd plugin did: the leading number, 0.0 if none.
    RubyFloat,
    /// `true`/`false`.
    Bool,
    /// The times of a list (`0.004, - : 0.010`, as `$upstream_response_time` writes retries)
    /// added up, as a float; `-` entries are skipped, and a list with no time leaves the field
    /// out.
    Sum,
}

// ---- validated --------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Source {
    Capture(usize),
    Host,
    Literal(Vec<u8>),
}

impl Source {
    fn bytes<'a>(&'a self, parsed: &'a Parsed<'_>, host: &'a str) -> &'a [u8] {
        match self {
            Source::Capture(i) => parsed.captures.get(*i).map_or(&b""[..], |m| m.as_bytes()),
            Source::Host => host.as_bytes(),
            Source::Literal(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
struct ValueTemplate {
    key: String,
    source: Source,
    conversion: Conversion,
}

#[derive(Debug, Clone)]
struct PointTemplate {
    measurement: String,
    tags: Vec<ValueTemplate>,
    fields: Vec<ValueTemplate>,
}

#[derive(Debug, Clone, Copy)]
struct AggregateCaptures {
    app: usize,
    status: usize,
    request: usize,
    bytes_sent: usize,
    request_time: usize,
    upstream_time: usize,
}

/// A validated definition, ready to apply.
#[derive(Debug)]
pub struct Definition {
    pub(crate) name: String,
    pub(crate) description: String,
    /// Shipped inside the binary, unmodified.
    pub builtin: bool,
    containers: Vec<regex::Regex>,
    files: Vec<regex::Regex>,
    candidate: Option<Regex>,
    regex: Regex,
    time_capture: usize,
    time_format: TimeFormat,
    aggregate: Option<AggregateCaptures>,
    points: Vec<PointTemplate>,
}

/// A line the definition parsed: its captures and time.
pub struct Parsed<'l> {
    captures: Captures<'l>,
    pub(crate) time_ns: i64,
}

fn invalid(file: &str, message: impl Into<String>) -> RulesError {
    RulesError::Invalid { file: file.to_owned(), message: message.into() }
}

impl Definition {
    /// Reads and validates one definition; `file` names it in errors.
    pub(crate) fn from_toml(file: &str, text: &str, builtin: bool) -> Result<Self, RulesError> {
        let raw: RawDefinition =
            toml::from_str(text).map_err(|source| RulesError::Toml { file: file.to_owned(), source })?;
        if raw.name.is_empty() {
            return Err(invalid(file, "`name` is empty"));
        }
        let compile_str =
            |what: &str, re: &str| regex::Regex::new(re).map_err(|e| invalid(file, format!("{what}: {e}")));
        let compile =
            |what: &str, re: &str| Regex::new(re).map_err(|e| invalid(file, format!("{what}: {e}")));
        let regex = compile("line.regex", &raw.line.regex)?;
        let capture = |name: &str, what: &str| {
            regex.capture_names().position(|n| n == Some(name)).ok_or_else(|| {
                invalid(file, format!("{what} names capture `{name}`, which line.regex does not have"))
            })
        };
        let value = |v: &RawValue, what: &str, tag: bool| -> Result<ValueTemplate, RulesError> {
            let what = format!("{what} `{}`", v.key);
            if v.key.is_empty() {
                return Err(invalid(file, format!("{what}: empty key")));
            }
            let allowed = if tag {
                matches!(v.conversion, Conversion::String | Conversion::HttpMethod)
            } else {
                v.conversion != Conversion::HttpMethod
            };
            if !allowed {
                return Err(invalid(file, format!("{what}: `as = {:?}` is not allowed here", v.conversion)));
            }
            let source = match (&v.from, &v.value) {
                (Some(from), None) if from == "@host" => Source::Host,
                (Some(from), None) => Source::Capture(capture(from, &what)?),
                (None, Some(value)) => {
                    let literal = value.as_bytes().to_vec();
                    if convert_field(&literal, v.conversion).is_err() {
                        return Err(invalid(file, format!("{what}: `{value}` is not a {:?}", v.conversion)));
                    }
                    Source::Literal(literal)
                }
                _ => return Err(invalid(file, format!("{what}: give exactly one of `from` and `value`"))),
            };
            Ok(ValueTemplate { key: v.key.clone(), source, conversion: v.conversion })
        };
        let mut points = Vec::with_capacity(raw.points.len());
        for p in &raw.points {
            if p.measurement.is_empty() || p.fields.is_empty() {
                return Err(invalid(file, "every [[points]] needs a measurement and at least one field"));
            }
            points.push(PointTemplate {
                measurement: p.measurement.clone(),
                tags: p.tags.iter().map(|t| value(t, "tag", true)).collect::<Result<_, _>>()?,
                fields: p.fields.iter().map(|f| value(f, "field", false)).collect::<Result<_, _>>()?,
            });
        }
        let aggregate = match &raw.aggregate {
            None => None,
            Some(a) => Some(AggregateCaptures {
                app: capture(&a.app, "aggregate.app")?,
                status: capture(&a.status, "aggregate.status")?,
                request: capture(&a.request, "aggregate.request")?,
                bytes_sent: capture(&a.bytes_sent, "aggregate.bytes_sent")?,
                request_time: capture(&a.request_time, "aggregate.request_time")?,
                upstream_time: capture(&a.upstream_time, "aggregate.upstream_time")?,
            }),
        };
        if points.is_empty() && aggregate.is_none() {
            return Err(invalid(file, "a definition needs [[points]] or [aggregate]"));
        }
        Ok(Self {
            time_capture: capture(&raw.line.time.capture, "line.time")?,
            time_format: raw.line.time.format,
            containers: raw
                .applies_to
                .containers
                .iter()
                .map(|r| compile_str("applies_to.containers", r))
                .collect::<Result<_, _>>()?,
            files: raw
                .applies_to
                .files
                .iter()
                .map(|r| compile_str("applies_to.files", r))
                .collect::<Result<_, _>>()?,
            candidate: raw.line.candidate.as_deref().map(|r| compile("line.candidate", r)).transpose()?,
            regex,
            aggregate,
            points,
            name: raw.name,
            description: raw.description,
            builtin,
        })
    }

    pub fn applies_to_container(&self, container: &str) -> bool {
        self.containers.iter().any(|r| r.is_match(container))
    }

    pub fn applies_to_file(&self, path: &str) -> bool {
        self.files.iter().any(|r| r.is_match(path))
    }

    /// Whether lines also feed the `router_requests` aggregate.
    pub fn aggregates(&self) -> bool {
        self.aggregate.is_some()
    }

    /// Parses a line: `Ok(None)` when it is not a candidate (another kind of line).
    pub fn parse<'l>(&self, line: &'l [u8]) -> Result<Option<Parsed<'l>>, Reject> {
        if let Some(candidate) = &self.candidate {
            if !candidate.is_match(line) {
                return Ok(None);
            }
        }
        let captures = self.regex.captures(line).ok_or(Reject::Malformed)?;
        let time = captures.get(self.time_capture).map_or(&b""[..], |m| m.as_bytes());
        let time_ns = parse_time(time, self.time_format)?;
        Ok(Some(Parsed { captures, time_ns }))
    }

    /// The line as an access record, when the definition has an `[aggregate]` table.
    pub fn access_record<'l>(&self, parsed: &Parsed<'l>) -> Option<Result<AccessRecord<'l>, Reject>> {
        let a = self.aggregate?;
        let get = |i: usize| parsed.captures.get(i).map_or(&b""[..], |m| m.as_bytes());
        let record = || {
            let status = get(a.status);
            let status = match status {
                [a, b, c] if status.iter().all(u8::is_ascii_digit) => {
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
                }
                _ => return Err(Reject::BadStatus),
            };
            let number =
                |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.trim_end().parse::<f64>().ok());
            Ok(AccessRecord {
                time_ns: parsed.time_ns,
                app: std::str::from_utf8(get(a.app)).map_err(|_| Reject::InvalidUtf8)?,
                status,
                method: Method::of_request(get(a.request)),
                bytes_sent: std::str::from_utf8(get(a.bytes_sent))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Reject::BadNumber)?,
                bytes_sent_text: get(a.bytes_sent),
                upstream_times: get(a.upstream_time),
                request_time: number(get(a.request_time))
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or(Reject::BadNumber)?,
                request_time_text: get(a.request_time).trim_ascii_end(),
            })
        };
        Some(record())
    }

    /// The line's points, as the definition's templates make them. An error rejects the
    /// whole line (a number that does not parse, text that is not UTF-8).
    pub(crate) fn points<'s>(
        &'s self,
        parsed: &'s Parsed<'_>,
        host: &'s str,
    ) -> impl Iterator<Item = Result<RulePoint<'s>, Reject>> + 's {
        self.points.iter().map(move |p| {
            let mut tags = Vec::with_capacity(p.tags.len());
            for t in &p.tags {
                let raw = t.source.bytes(parsed, host);
                let value = match t.conversion {
                    Conversion::HttpMethod => Method::of_request(raw).as_str(),
                    _ => std::str::from_utf8(raw).map_err(|_| Reject::InvalidUtf8)?,
                };
                tags.push((t.key.as_str(), value));
            }
            let mut fields = Vec::with_capacity(p.fields.len());
            for f in &p.fields {
                if let Some(value) = convert_field(f.source.bytes(parsed, host), f.conversion)? {
                    fields.push((f.key.as_str(), value));
                }
            }
            Ok(RulePoint { measurement: &p.measurement, tags, fields })
        })
    }
}

/// One point of a parsed line: names from the definition, values borrowed from the line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RulePoint<'a> {
    pub(crate) measurement: &'a str,
    pub(crate) tags: Vec<(&'a str, &'a str)>,
    pub(crate) fields: Vec<(&'a str, RuleValue<'a>)>,
}

/// A field value of a [`RulePoint`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RuleValue<'a> {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(&'a str),
}

fn convert_field(raw: &[u8], conversion: Conversion) -> Result<Option<RuleValue<'_>>, Reject> {
    let text = || std::str::from_utf8(raw).map_err(|_| Reject::InvalidUtf8);
    Ok(Some(match conversion {
        Conversion::RubyFloat => RuleValue::Float(ruby_to_f(raw)),
        Conversion::Sum => match super::sum_of_times(raw) {
            Some(total) => RuleValue::Float(total),
            None => return Ok(None),
        },
        Conversion::Float if raw == b"-" => return Ok(None),
        Conversion::Float => {
            RuleValue::Float(text()?.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or(Reject::BadNumber)?)
        }
        Conversion::Int if raw == b"-" => return Ok(None),
        Conversion::Int => RuleValue::Int(text()?.parse().map_err(|_| Reject::BadNumber)?),
        Conversion::Bool => RuleValue::Bool(match raw {
            b"true" => true,
            b"false" => false,
            _ => return Err(Reject::BadNumber),
        }),
        Conversion::String | Conversion::HttpMethod => RuleValue::Str(text()?),
    }))
}

fn parse_time(b: &[u8], format: TimeFormat) -> Result<i64, Reject> {
    use crate::timefmt;
    match format {
        TimeFormat::Nginx => timefmt::parse_access_time(b).map_err(|_| Reject::BadTime),
        TimeFormat::Rfc3339 => timefmt::parse_rfc3339(b).map_err(|_| Reject::BadTime),
        TimeFormat::Clf => timefmt::parse_clf(b).map_err(|_| Reject::BadTime),
        TimeFormat::Unix => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            // The same 1970..2200 range as the other layouts (see `timefmt`).
            .filter(|s| s.is_finite() && (0.0..7.26e9).contains(s))
            .map(|s| (s * 1e9).round() as i64)
            .ok_or(Reject::BadTime),
    }
}

/// Every definition in force: the built-ins, then a user's directory, whose files add
/// definitions or replace built-ins of the same name.
#[derive(Debug, Clone)]
pub struct Registry {
    definitions: BTreeMap<String, Arc<Definition>>,
}

impl Registry {
    pub fn builtin() -> Result<Self, RulesError> {
        let mut definitions = BTreeMap::new();
        for (file, text) in BUILTINS {
            let d = Definition::from_toml(&format!("(built-in) parsers/{file}"), text, true)?;
            definitions.insert(d.name.clone(), Arc::new(d));
        }
        Ok(Self { definitions })
    }

    /// The built-ins plus every `*.toml` in `dir`.
    pub(crate) fn load(dir: Option<&Path>) -> Result<Self, RulesError> {
        let mut registry = Self::builtin()?;
        let Some(dir) = dir else { return Ok(registry) };
        let io = |source| RulesError::Io { dir: dir.display().to_string(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let d = Definition::from_toml(&file, &text, false)?;
            registry.definitions.insert(d.name.clone(), Arc::new(d));
        }
        Ok(registry)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Definition>> {
        self.definitions.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.definitions.values()
    }

    /// The definition for a container, by name (first in name order).
    pub fn for_container(&self, container: &str) -> Option<&Arc<Definition>> {
        self.iter().find(|d| d.applies_to_container(container))
    }

    /// The definition for a plain file, by path.
    pub fn for_file(&self, path: &str) -> Option<&Arc<Definition>> {
        self.iter().find(|d| d.applies_to_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points<'s>(
        d: &'s Definition,
        parsed: &'s Parsed<'_>,
        host: &'s str,
    ) -> Result<Vec<RulePoint<'s>>, Reject> {
        d.points(parsed, host).collect()
    }

    #[test]
    fn builtins_load() {
        let r = Registry::builtin().unwrap();
        let names: Vec<_> = r.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["apache-common", "deis-router", "nginx-combined"]);
        assert_eq!(r.for_container("deis-router").unwrap().name, "deis-router");
        assert!(r.for_container("foo-web").is_none());
    }

    #[test]
    fn apache_common_example_from_apache_docs() {
        let r = Registry::builtin().unwrap();
        let d = r.get("apache-common").unwrap();
        let line =
            br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
        let parsed = d.parse(line).unwrap().unwrap();
        // date -u -d '2000-10-10 20:55:36' +%s → 971211336
        assert_eq!(parsed.time_ns, 971_211_336_000_000_000);
        assert_eq!(
            points(d, &parsed, "n1"),
            Ok(vec![RulePoint {
                measurement: "apache_access",
                tags: vec![("status", "200"), ("method", "GET"), ("host", "n1")],
                fields: vec![("requests", RuleValue::Int(1)), ("bytes", RuleValue::Int(2326))],
            }])
        );
        // `%b` is `-` for an empty body: the field is left out, the point stays.
        let line = br#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "HEAD / HTTP/1.0" 304 -"#;
        let parsed = d.parse(line).unwrap().unwrap();
        let p = points(d, &parsed, "n1").unwrap();
        assert_eq!(p[0].fields, [("requests", RuleValue::Int(1))]);
        assert!(matches!(d.parse(b"garbage"), Err(Reject::Malformed)));
    }

    #[test]
    fn nginx_combined_example() {
        let r = Registry::builtin().unwrap();
        let d = r.get("nginx-combined").unwrap();
        let line =
            br#"10.1.2.3 - - [31/May/2016:16:56:12 +0000] "POST /api HTTP/1.1" 201 17 "-" "curl/8.5.0""#;
        let parsed = d.parse(line).unwrap().unwrap();
        assert_eq!(parsed.time_ns, 1_464_713_772_000_000_000);
        assert_eq!(
            points(d, &parsed, "n1"),
            Ok(vec![RulePoint {
                measurement: "nginx_access",
                tags: vec![("status", "201"), ("method", "POST"), ("host", "n1")],
                fields: vec![("requests", RuleValue::Int(1)), ("body_bytes_sent", RuleValue::Int(17))],
            }])
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let bad_capture = r#"
name = "x"
[line]
regex = '^(?P<a>\S+)$'
time = { capture = "t", format = "unix" }
[[points]]
measurement = "m"
fields = [{ key = "v", from = "a", as = "float" }]
"#;
        let e = Definition::from_toml("x.toml", bad_capture, false).unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("`t`"), "{e}");
        let unknown_key = "name = \"x\"\nregexp = 'x'\n";
        let e = Definition::from_toml("y.toml", unknown_key, false).unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("regexp"), "{e}");
        let method_field = r#"
name = "x"
[line]
regex = '^(?P<t>\S+) (?P<a>\S+)$'
time = { capture = "t", format = "unix" }
[[points]]
measurement = "m"
fields = [{ key = "v", from = "a", as = "http_method" }]
"#;
        let e = Definition::from_toml("z.toml", method_field, false).unwrap_err().to_string();
        assert!(e.contains("not allowed"), "{e}");
    }

    #[test]
    fn user_directory_adds_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            r#"
name = "deis-router"
[applies_to]
containers = ["my-router"]
[line]
regex = '^(?P<t>\S+) (?P<ms>\S+)$'
time = { capture = "t", format = "unix" }
[[points]]
measurement = "latency"
fields = [{ key = "ms", from = "ms", as = "float" }]
"#,
        )
        .unwrap();
        let r = Registry::load(Some(dir.path())).unwrap();
        let d = r.get("deis-router").unwrap();
        assert!(!d.builtin);
        assert!(d.applies_to_container("my-router"));
        let parsed = d.parse(b"1464713772.5 12.5").unwrap().unwrap();
        assert_eq!(parsed.time_ns, 1_464_713_772_500_000_000);
        assert_eq!(
            points(d, &parsed, "n"),
            Ok(vec![RulePoint {
                measurement: "latency",
                tags: vec![],
                fields: vec![("ms", RuleValue::Float(12.5))]
            }])
        );
        assert_eq!(d.parse(b"1464713772 x").map(|_| ()), Ok(()));
        let parsed = d.parse(b"1464713772 x").unwrap().unwrap();
        assert_eq!(points(d, &parsed, "n"), Err(Reject::BadNumber));
    }
}

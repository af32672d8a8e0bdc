//! An owned InfluxDB point: what aggregation, telemetry and host collectors produce and what
//! the line-protocol parser returns. The per-line hot path (compat points) skips this type
//! and writes straight through [`super::line_protocol::LineBuilder`].

use std::borrow::Cow;

/// A field value, typed as InfluxDB types it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Rendered with a decimal point (`211.0`), never as an integer.
    Float(f64),
    /// Rendered with the `i` suffix.
    Int(i64),
    /// Rendered with the `u` suffix; InfluxDB 1.x OSS rejects it, so logmill never writes one,
    /// but the parser accepts it from other producers.
    UInt(u64),
    Bool(bool),
    Str(String),
}

/// A measurement, key or tag value: most are fixed names (the host collectors make a few
/// hundred points a second, and allocating each name was a tenth of a cycle's user time).
pub type Name = Cow<'static, str>;

/// One point: measurement, tags, fields and an optional timestamp in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: Name,
    pub tags: Vec<(Name, Name)>,
    pub(crate) fields: Vec<(Name, FieldValue)>,
    pub timestamp_ns: Option<i64>,
}

impl Point {
    pub fn new(measurement: impl Into<Name>) -> Self {
        Self { measurement: measurement.into(), tags: Vec::new(), fields: Vec::new(), timestamp_ns: None }
    }

    pub fn tag(mut self, key: impl Into<Name>, value: impl Into<Name>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    pub fn field(mut self, key: impl Into<Name>, value: FieldValue) -> Self {
        self.fields.push((key.into(), value));
        self
    }

    pub fn timestamp(mut self, ns: i64) -> Self {
        self.timestamp_ns = Some(ns);
        self
    }

    /// The tag's value, if the point has it.
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// The field's value, if the point has it.
    pub fn field_value(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

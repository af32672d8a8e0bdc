//! InfluxDB line protocol: an encoder that writes straight into a caller's buffer (the per-line
//! hot path) and a parser that turns a line back into an owned [`Point`] (validation of lines
//! from other producers, and tests).
//!
//! Escaping follows the InfluxDB 1.x reference: the measurement escapes `,` and space; tag keys,
//! tag values and field keys escape `,`, `=` and space; string field values escape `"` and `\`.
//!
//! # Backslashes outside string values
//!
//! Line protocol has no escape for a backslash in names and tag values, and InfluxDB's readers
//! disagree on `\\`: the 1.x tag and measurement scanners treat a delimiter after any backslash
//! as escaped, its field scanner skips backslashes in pairs, and later references say two
//! contiguous backslashes read as one. So `path=C:\` followed by `,` reads as an escaped comma
//! (the reference says names and tag values "cannot end with a backslash"), and `a\,b` has no
//! spelling at all. The encoder therefore accepts a backslash in a name or tag value only where
//! every reader takes it literally: followed by a byte that is neither a backslash, `,`, `=`,
//! space, nor `"` (which 1.x unescapes in measurement names and field keys), and not at the end.
//! Anything else is [`EncodeError::AmbiguousBackslash`] rather than bytes InfluxDB would misread.
//!
//! The parser reads a backslash as an escape only before a byte that is special where it
//! stands, and as a literal backslash otherwise, which is how 1.x reads measurements and tags.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::point::{FieldValue, Point};

/// Why a line could not be encoded. The builder removes the partial line before returning one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("line has no fields; InfluxDB requires at least one")]
    NoFields,
    #[error("float field is NaN or infinite, which line protocol cannot carry")]
    NonFinite,
    #[error("newline or carriage return in a measurement, key or value")]
    Newline,
    #[error("empty measurement, tag key or field key")]
    EmptyName,
    #[error("tag added after a field")]
    TagAfterField,
    #[error(
        "backslash at the end of a name or tag value, or before a backslash, ',', '=', space or \
         '\"', which line protocol cannot carry unambiguously"
    )]
    AmbiguousBackslash,
    #[error(
        "measurement starts with '#' (read as a comment), or a measurement or field key starts \
         with a tab or NUL (skipped as whitespace)"
    )]
    BadStart,
}

impl EncodeError {
    /// A short snake_case label for counters.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoFields => "no_fields",
            Self::NonFinite => "non_finite",
            Self::Newline => "newline",
            Self::EmptyName => "empty_name",
            Self::TagAfterField => "tag_after_field",
            Self::AmbiguousBackslash => "ambiguous_backslash",
            Self::BadStart => "bad_start",
        }
    }
}

/// Why a line was rejected. Small and `Copy` so a consumer can count rejects by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("missing measurement")]
    MissingMeasurement,
    #[error("missing fields")]
    MissingFields,
    #[error("bad tag: empty key or value, no '=', or an unescaped '=' in the value")]
    BadTag,
    #[error("bad field: empty key or no '='")]
    BadField,
    #[error("bad field value: not a float, integer, boolean or string, out of range, or NaN/Inf")]
    BadFieldValue,
    #[error("string field value has no closing quote")]
    UnterminatedString,
    #[error("timestamp is not a 64-bit signed integer")]
    BadTimestamp,
    #[error("unexpected bytes after the timestamp")]
    TrailingGarbage,
    #[error("measurement, key or value is not valid UTF-8")]
    InvalidUtf8,
}

impl ParseError {
    /// A short snake_case label for counters (`logmill_lines_rejected_total{reason=…}`).
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingMeasurement => "missing_measurement",
            Self::MissingFields => "missing_fields",
            Self::BadTag => "bad_tag",
            Self::BadField => "bad_field",
            Self::BadFieldValue => "bad_field_value",
            Self::UnterminatedString => "unterminated_string",
            Self::BadTimestamp => "bad_timestamp",
            Self::TrailingGarbage => "trailing_garbage",
            Self::InvalidUtf8 => "invalid_utf8",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------------------------

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        set[bytes[i] as usize] = true;
        i += 1;
    }
    set
}

/// Bytes that send a name or tag value off the copy-it-whole fast path: the escapable ones
/// plus those that need checking. `=` is here for the measurement too, where it is not escaped;
/// it only costs that name the slow path.
static NAME_SLOW: [bool; 256] = byte_set(b",= \\\n\r");
/// The same for string field values.
static STRING_SLOW: [bool; 256] = byte_set(b"\"\\\n\r");

/// Writes one line of line protocol into `out`.
///
/// Errors are sticky and reported by [`finish`](Self::finish), which then removes everything
/// written since [`new`](Self::new); so does dropping an unfinished builder. The buffer thus
/// only ever holds whole lines. Nothing here allocates beyond growing `out`.
///
/// ```text
/// let mut line = LineBuilder::new(&mut out, "deis_router_bytes_sent");
/// line.tag("app", "foo").field_f64("value", 211.0);
/// line.finish(None)?; // deis_router_bytes_sent,app=foo value=211.0\n
/// ```
#[must_use = "the line is removed again unless finish() is called"]
pub(crate) struct LineBuilder<'a> {
    out: &'a mut BytesMut,
    /// Length of `out` before this line, to truncate back to on error.
    start: usize,
    has_fields: bool,
    error: Option<EncodeError>,
    finished: bool,
}

impl<'a> LineBuilder<'a> {
    /// Starts a line with `measurement`, escaping `,` and space.
    pub(crate) fn new(out: &'a mut BytesMut, measurement: &str) -> Self {
        let start = out.len();
        let error = match measurement.as_bytes().first() {
            // InfluxDB drops a line whose first non-blank byte is '#' and skips leading tabs
            // and NULs; none of them can be escaped.
            Some(b'#' | b'\t' | b'\0') => Some(EncodeError::BadStart),
            _ => write_name(out, measurement, false).err(),
        };
        Self { out, start, has_fields: false, error, finished: false }
    }

    /// Adds a tag. An empty value omits the tag, as Telegraf does, since InfluxDB rejects
    /// empty tag values; the key is still checked, so an empty key is an error either way.
    pub(crate) fn tag(&mut self, key: &str, value: &str) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        let result = if self.has_fields {
            Err(EncodeError::TagAfterField)
        } else if value.is_empty() {
            check_name(key)
        } else {
            self.out.put_u8(b',');
            write_name(self.out, key, true).and_then(|()| {
                self.out.put_u8(b'=');
                write_name(self.out, value, true)
            })
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
        self
    }

    /// Adds a float field with the shortest digits that read back to the same value, always
    /// with a decimal point: `211.0`, not `211`. InfluxDB takes a bare `211` as a float too, but
    /// the point keeps the type plain to anyone reading the bytes.
    pub(crate) fn field_f64(&mut self, key: &str, v: f64) -> &mut Self {
        if !v.is_finite() {
            self.fail(EncodeError::NonFinite);
        } else if self.field_key(key) {
            write_f64(self.out, v);
        }
        self
    }

    /// Adds an integer field (`12i`).
    pub(crate) fn field_i64(&mut self, key: &str, v: i64) -> &mut Self {
        if self.field_key(key) {
            write_i64(self.out, v);
            self.out.put_u8(b'i');
        }
        self
    }

    /// Adds an unsigned field (`12u`). InfluxDB 1.x OSS rejects these; it exists for symmetry
    /// with the parser and for 2.x.
    pub(crate) fn field_u64(&mut self, key: &str, v: u64) -> &mut Self {
        if self.field_key(key) {
            write_u64(self.out, v);
            self.out.put_u8(b'u');
        }
        self
    }

    /// Adds a boolean field (`true`/`false`).
    pub(crate) fn field_bool(&mut self, key: &str, v: bool) -> &mut Self {
        if self.field_key(key) {
            self.out.extend_from_slice(if v { b"true" } else { b"false" });
        }
        self
    }

    /// Adds a string field, quoted, with `"` and `\` escaped.
    /// A field of any type.
    pub(crate) fn field(&mut self, key: &str, value: &FieldValue) -> &mut Self {
        match value {
            FieldValue::Float(v) => self.field_f64(key, *v),
            FieldValue::Int(v) => self.field_i64(key, *v),
            FieldValue::UInt(v) => self.field_u64(key, *v),
            FieldValue::Bool(v) => self.field_bool(key, *v),
            FieldValue::Str(v) => self.field_str(key, v),
        }
    }

    pub(crate) fn field_str(&mut self, key: &str, v: &str) -> &mut Self {
        if self.field_key(key) {
            self.out.put_u8(b'"');
            if let Err(e) = write_string(self.out, v) {
                self.error = Some(e);
                return self;
            }
            self.out.put_u8(b'"');
        }
        self
    }

    /// Ends the line with an optional timestamp in nanoseconds and `\n`. On error the line is
    /// removed from the buffer.
    pub(crate) fn finish(mut self, timestamp_ns: Option<i64>) -> Result<(), EncodeError> {
        if let Some(e) = self.error {
            // Drop truncates.
            return Err(e);
        }
        if !self.has_fields {
            return Err(EncodeError::NoFields);
        }
        if let Some(ts) = timestamp_ns {
            self.out.put_u8(b' ');
            write_i64(self.out, ts);
        }
        self.out.put_u8(b'\n');
        self.finished = true;
        Ok(())
    }

    fn fail(&mut self, e: EncodeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Writes the separator, `key` and `=`; false when the field must not be written.
    fn field_key(&mut self, key: &str) -> bool {
        if self.error.is_some() {
            return false;
        }
        // InfluxDB skips whitespace before the first field key and a tab or NUL cannot be
        // escaped; rejecting it for every field key keeps the rule independent of order.
        if matches!(key.as_bytes().first(), Some(b'\t' | b'\0')) {
            self.error = Some(EncodeError::BadStart);
            return false;
        }
        self.out.put_u8(if self.has_fields { b',' } else { b' ' });
        if let Err(e) = write_name(self.out, key, true) {
            self.error = Some(e);
            return false;
        }
        self.out.put_u8(b'=');
        self.has_fields = true;
        true
    }
}

impl Drop for LineBuilder<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

/// Appends `,key=value` for each tag, escaped, omitting empty values as [`LineBuilder::tag`]
/// does: the part of a line that several points of one source share, so a caller can encode it
/// once and copy it (the three compat points of an access line). On error `out` is unchanged.
pub(crate) fn write_tag_set(out: &mut BytesMut, tags: &[(&str, &str)]) -> Result<(), EncodeError> {
    let start = out.len();
    for (key, value) in tags {
        let result = if value.is_empty() {
            check_name(key)
        } else {
            out.put_u8(b',');
            write_name(out, key, true).and_then(|()| {
                out.put_u8(b'=');
                write_name(out, value, true)
            })
        };
        if let Err(e) = result {
            out.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

/// Appends a float value as [`LineBuilder::field_f64`] writes it.
pub(crate) fn write_float(out: &mut BytesMut, v: f64) -> Result<(), EncodeError> {
    if !v.is_finite() {
        return Err(EncodeError::NonFinite);
    }
    write_f64(out, v);
    Ok(())
}

/// Appends a timestamp (`ns`) as [`LineBuilder::finish`] writes it, without the space.
pub(crate) fn write_timestamp(out: &mut BytesMut, ns: i64) {
    write_i64(out, ns);
}

/// Appends the float that `text` denotes exactly as [`write_float`] would write it, straight
/// from the text, when `text` is a plain decimal (`123`, `0.046`, `.5`, `7.`) of at most 15
/// significant digits; returns false, writing nothing, otherwise.
///
/// Logs write their numbers as such decimals, and every decimal of at most 15 significant
/// digits survives the trip through an f64 (DBL_DIG = 15): its shortest round-trip digits are
/// its own, without leading and trailing zeros. So the canonical text is written without the
/// float formatting that would otherwise dominate the cost of a compat point.
pub(crate) fn write_plain_decimal(out: &mut BytesMut, text: &[u8]) -> bool {
    // One pass: where the point is, and the first and last non-zero digits.
    let mut dot = None;
    let (mut first_nonzero, mut last_nonzero) = (usize::MAX, 0);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'1'..=b'9' => {
                first_nonzero = first_nonzero.min(i);
                last_nonzero = i;
            }
            b'0' => {}
            b'.' if dot.is_none() => dot = Some(i),
            _ => return false,
        }
    }
    let dot = dot.unwrap_or(text.len());
    if text.len() == usize::from(dot < text.len()) {
        return false; // "" or "."
    }
    // Digits from the first non-zero to the last, not counting the point.
    let significant = match first_nonzero {
        usize::MAX => 0,
        f => last_nonzero - f + 1 - usize::from(f < dot && last_nonzero > dot),
    };
    if significant > 15 {
        return false;
    }
    let int = &text[..dot];
    let int = &int[int.len().min(first_nonzero)..];
    let frac_end = if last_nonzero > dot && first_nonzero != usize::MAX { last_nonzero + 1 } else { dot };
    let frac = &text[(dot + 1).min(frac_end)..frac_end];
    out.extend_from_slice(if int.is_empty() { b"0" } else { int });
    out.put_u8(b'.');
    out.extend_from_slice(if frac.is_empty() { b"0" } else { frac });
    true
}

/// Cuts line protocol into messages of whole lines, each at most `max` bytes (a single line
/// longer than that, impossible for the points logmill writes, goes alone).
pub(crate) fn split_lines(mut lines: Bytes, max: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    while lines.len() > max {
        let cut = memchr::memrchr(b'\n', &lines[..max])
            .map(|i| i + 1)
            .or_else(|| memchr::memchr(b'\n', &lines).map(|i| i + 1))
            .unwrap_or(lines.len());
        out.push(lines.split_to(cut));
    }
    if !lines.is_empty() {
        out.push(lines);
    }
    out
}

/// Encodes `point` as one line, through [`LineBuilder`].
pub(crate) fn encode_point(point: &Point, out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut line = LineBuilder::new(out, &point.measurement);
    for (key, value) in &point.tags {
        line.tag(key, value);
    }
    for (key, value) in &point.fields {
        line.field(key, value);
    }
    line.finish(point.timestamp_ns)
}

/// Checks the bytes of a name or tag value that has at least one byte from [`NAME_SLOW`].
fn check_name_bytes(bytes: &[u8]) -> Result<(), EncodeError> {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' | b'\r' => return Err(EncodeError::Newline),
            b'\\' => match bytes.get(i + 1) {
                None | Some(b'\\' | b',' | b'=' | b' ' | b'"') => {
                    return Err(EncodeError::AmbiguousBackslash)
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
    Ok(())
}

/// Checks a name as [`write_name`] would, without writing it.
fn check_name(name: &str) -> Result<(), EncodeError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(EncodeError::EmptyName);
    }
    if bytes.iter().any(|&b| NAME_SLOW[usize::from(b)]) {
        check_name_bytes(bytes)?;
    }
    Ok(())
}

/// Writes a measurement (`escape_equals` false) or a tag key, tag value or field key.
fn write_name(out: &mut BytesMut, name: &str, escape_equals: bool) -> Result<(), EncodeError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(EncodeError::EmptyName);
    }
    if !bytes.iter().any(|&b| NAME_SLOW[usize::from(b)]) {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    check_name_bytes(bytes)?;
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b',' || b == b' ' || (b == b'=' && escape_equals) {
            out.extend_from_slice(&bytes[run..i]);
            out.extend_from_slice(&[b'\\', b]);
            run = i + 1;
        }
    }
    out.extend_from_slice(&bytes[run..]);
    Ok(())
}

/// Writes the inside of a string field value.
fn write_string(out: &mut BytesMut, value: &str) -> Result<(), EncodeError> {
    let bytes = value.as_bytes();
    if !bytes.iter().any(|&b| STRING_SLOW[usize::from(b)]) {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' | b'\r' => return Err(EncodeError::Newline),
            b'"' | b'\\' => {
                out.extend_from_slice(&bytes[run..i]);
                out.extend_from_slice(&[b'\\', b]);
                run = i + 1;
            }
            _ => {}
        }
    }
    out.extend_from_slice(&bytes[run..]);
    Ok(())
}

fn write_f64(out: &mut BytesMut, v: f64) {
    let start = out.len();
    // Display for f64 gives the shortest digits that round-trip and never an exponent. Writing
    // into a BytesMut fails only if its length would pass usize::MAX, which allocation hits
    // first, so the result carries nothing to handle.
    let _ = write!(out, "{v}");
    if !out[start..].contains(&b'.') {
        out.extend_from_slice(b".0");
    }
}

fn write_u64(out: &mut BytesMut, mut v: u64) {
    // Two digits per division: every point ends in a 19-digit timestamp.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

fn write_i64(out: &mut BytesMut, v: i64) {
    if v < 0 {
        out.put_u8(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// What InfluxDB skips before the measurement and between sections.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\0')
}

fn skip_blank(line: &[u8], mut i: usize) -> usize {
    while line.get(i).is_some_and(|&b| is_blank(b)) {
        i += 1;
    }
    i
}

/// The delimiters of a name, which are also the only bytes a backslash escapes in it:
/// `,` and space in a measurement, plus `=` in tag keys, tag values and field keys.
fn is_delimiter(b: u8, equals: bool) -> bool {
    b == b',' || b == b' ' || (equals && b == b'=')
}

/// Bytes that end the plain run of a measurement: its delimiters and the backslash.
static MEASUREMENT_STOPS: [bool; 256] = byte_set(b", \\");
/// The same for tag keys, tag values and field keys.
static KEY_STOPS: [bool; 256] = byte_set(b",= \\");

/// Scans a name from `i` to its first unescaped delimiter (or the end); returns where it
/// stopped and whether it holds an escape.
fn scan_name(line: &[u8], mut i: usize, equals: bool) -> (usize, bool) {
    // One table lookup per byte of the plain runs, which is nearly every byte: this loop is
    // most of a consumer's parsing time.
    let stops = if equals { &KEY_STOPS } else { &MEASUREMENT_STOPS };
    let mut escaped = false;
    loop {
        while line.get(i).is_some_and(|&b| !stops[usize::from(b)]) {
            i += 1;
        }
        if line.get(i) != Some(&b'\\') {
            return (i, escaped);
        }
        if line.get(i + 1).is_some_and(|&n| is_delimiter(n, equals)) {
            escaped = true;
            i += 2;
        } else {
            // A backslash before anything else is itself.
            i += 1;
        }
    }
}

/// The name at `range` of a line, borrowed from `text` (the whole line, when it is valid
/// UTF-8) when it has no escapes: no check of its own, since its ends are ASCII delimiters or
/// the line's ends, so character boundaries. `None`: [`name_string`] decides.
//
// The callers build the `Cow` themselves and apply `?` to the cold path only: a
// `Result<Cow<str>, ParseError>` for both cases was moved through the stack at odd offsets
// (the error byte shares a word with the pointer) that store forwarding cannot serve, a
// quarter of a consumer's parsing time.
#[inline(always)]
fn borrowed_name(text: Option<&str>, range: Range<usize>, escaped: bool) -> Option<&str> {
    text.filter(|_| !escaped)?.get(range)
}

#[cold]
fn name_string(raw: &[u8], escaped: bool, equals: bool) -> Result<Cow<'_, str>, ParseError> {
    if !escaped {
        return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| ParseError::InvalidUtf8);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match raw.get(i + 1) {
            Some(&n) if b == b'\\' && is_delimiter(n, equals) => {
                out.push(n);
                i += 2;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| ParseError::InvalidUtf8)
}

/// A field value as parsed, a string borrowed from the line unless it held escapes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldView<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

impl FieldView<'_> {
    fn into_owned(self) -> FieldValue {
        match self {
            FieldView::Float(v) => FieldValue::Float(v),
            FieldView::Int(v) => FieldValue::Int(v),
            FieldView::UInt(v) => FieldValue::UInt(v),
            FieldView::Bool(v) => FieldValue::Bool(v),
            FieldView::Str(v) => FieldValue::Str(v.into_owned()),
        }
    }
}

/// One parsed line, borrowing from it: what a consumer validates and reads without
/// allocating (names and values are copied only when they hold escapes). The vectors are
/// reused from line to line by [`parse_line_into`].
#[derive(Debug, Default)]
pub(crate) struct LineView<'a> {
    pub(crate) measurement: Cow<'a, str>,
    pub(crate) tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub(crate) fields: Vec<(Cow<'a, str>, FieldView<'a>)>,
    pub(crate) timestamp_ns: Option<i64>,
    /// Where the measurement and tag set end in the line (the series key, as written).
    pub(crate) key_end: usize,
}

impl<'a> LineView<'a> {
    /// The value of tag `key`, if the line has it.
    #[cfg(test)]
    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// The value of field `key`, if the line has it.
    pub(crate) fn field(&self, key: &str) -> Option<&FieldView<'a>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is tolerated) into an owned point.
///
/// Accepts what InfluxDB 1.x accepts, with two differences: `u` integers are accepted (1.x
/// OSS rejects them) and duplicate tag keys are not checked. Tags keep their order in the line.
pub(crate) fn parse_line(line: &[u8]) -> Result<Point, ParseError> {
    let mut view = LineView::default();
    parse_line_into(line, &mut view)?;
    Ok(Point {
        measurement: view.measurement.into_owned().into(),
        tags: view.tags.into_iter().map(|(k, v)| (k.into_owned().into(), v.into_owned().into())).collect(),
        fields: view.fields.into_iter().map(|(k, v)| (k.into_owned().into(), v.into_owned())).collect(),
        timestamp_ns: view.timestamp_ns,
    })
}

/// [`parse_line`] into a borrowed view, reusing its vectors. On error the view holds
/// whatever was read before the error.
pub(crate) fn parse_line_into<'a>(line: &'a [u8], view: &mut LineView<'a>) -> Result<(), ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    view.tags.clear();
    view.fields.clear();
    view.timestamp_ns = None;
    // Checked once for the whole line: names and string values are then slices of it, where
    // checking each one by itself cost a consumer more than the rest of its parsing. A line
    // that is not UTF-8 is parsed name by name as before, so that it fails where it did.
    let text = std::str::from_utf8(line).ok();

    let mut i = skip_blank(line, 0);
    if matches!(line.get(i), None | Some(b',')) {
        return Err(ParseError::MissingMeasurement);
    }
    let (end, escaped) = scan_name(line, i, false);
    view.measurement = match borrowed_name(text, i..end, escaped) {
        Some(name) => Cow::Borrowed(name),
        None => name_string(&line[i..end], escaped, false)?,
    };
    i = end;

    while line.get(i) == Some(&b',') {
        i += 1;
        let (key_end, escaped) = scan_name(line, i, true);
        if key_end == i || line.get(key_end) != Some(&b'=') {
            return Err(ParseError::BadTag);
        }
        let key = match borrowed_name(text, i..key_end, escaped) {
            Some(key) => Cow::Borrowed(key),
            None => name_string(&line[i..key_end], escaped, true)?,
        };
        i = key_end + 1;
        let (value_end, escaped) = scan_name(line, i, true);
        if value_end == i || line.get(value_end) == Some(&b'=') {
            return Err(ParseError::BadTag);
        }
        let value = match borrowed_name(text, i..value_end, escaped) {
            Some(value) => Cow::Borrowed(value),
            None => name_string(&line[i..value_end], escaped, true)?,
        };
        view.tags.push((key, value));
        i = value_end;
    }
    view.key_end = i;

    // Here `i` is at the space before the fields, or at the end.
    i = skip_blank(line, i);
    if i >= line.len() {
        return Err(ParseError::MissingFields);
    }

    loop {
        let (key_end, escaped) = scan_name(line, i, true);
        if key_end == i || line.get(key_end) != Some(&b'=') {
            return Err(ParseError::BadField);
        }
        let key = match borrowed_name(text, i..key_end, escaped) {
            Some(key) => Cow::Borrowed(key),
            None => name_string(&line[i..key_end], escaped, true)?,
        };
        let (value, value_end) = parse_field_value(line, text, key_end + 1)?;
        view.fields.push((key, value));
        i = value_end;
        if line.get(i) == Some(&b',') {
            i += 1;
        } else {
            break;
        }
    }

    i = skip_blank(line, i);
    if i < line.len() {
        let start = i;
        if line[i] == b'-' {
            i += 1;
        }
        // Read as it is checked: nineteen digits (a nanosecond timestamp's) cannot overflow
        // a u64; longer ones (leading zeros) go to the checked reader.
        let digits = i;
        let mut magnitude = 0u64;
        while let Some(&b) = line.get(i) {
            if b == b' ' {
                break;
            }
            if !b.is_ascii_digit() {
                return Err(ParseError::BadTimestamp);
            }
            magnitude = magnitude.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            i += 1;
        }
        let ts = match i - digits {
            0 => None,
            1..=19 if start == digits => i64::try_from(magnitude).ok(),
            1..=19 if magnitude == 1 << 63 => Some(i64::MIN),
            1..=19 => i64::try_from(magnitude).ok().map(|m| -m),
            _ => parse_i64(&line[start..i]),
        }
        .ok_or(ParseError::BadTimestamp)?;
        if line[i..].iter().any(|&b| b != b' ') {
            return Err(ParseError::TrailingGarbage);
        }
        view.timestamp_ns = Some(ts);
    }
    Ok(())
}

/// Parses a request body: one result per line, numbered from 1. Skips empty and blank lines and
/// comments (first non-blank byte `#`), as InfluxDB does. A `\n` inside a quoted string value
/// ends the line here, as the line protocol reference says newlines are not supported in values
/// (InfluxDB 1.x's own splitter happens to keep them).
pub fn parse_lines(body: &[u8]) -> impl Iterator<Item = (usize, Result<Point, ParseError>)> + '_ {
    body.split(|&b| b == b'\n').enumerate().filter_map(|(index, line)| {
        let content = line.strip_suffix(b"\r").unwrap_or(line);
        match content.iter().find(|&&b| !is_blank(b)) {
            None | Some(b'#') => None,
            Some(_) => Some((index + 1, parse_line(line))),
        }
    })
}

/// Parses the value starting at `i`; returns it and the index just past it, which holds `,`,
/// a space, or is the end.
fn parse_field_value<'a>(
    line: &'a [u8],
    text: Option<&'a str>,
    i: usize,
) -> Result<(FieldView<'a>, usize), ParseError> {
    match line.get(i) {
        Some(b'"') => parse_string(line, text, i + 1),
        Some(b'0'..=b'9' | b'.' | b'-') => {
            let end = value_end(line, i);
            Ok((parse_number(&line[i..end])?, end))
        }
        Some(_) => {
            let end = value_end(line, i);
            Ok((parse_bool(&line[i..end])?, end))
        }
        None => Err(ParseError::BadFieldValue),
    }
}

fn value_end(line: &[u8], i: usize) -> usize {
    line[i..].iter().position(|&b| b == b',' || b == b' ').map_or(line.len(), |p| i + p)
}

/// `start` is just past the opening quote; `text` as for [`borrowed_name`].
fn parse_string<'a>(
    line: &'a [u8],
    text: Option<&'a str>,
    start: usize,
) -> Result<(FieldView<'a>, usize), ParseError> {
    let mut i = start;
    let mut escaped = false;
    loop {
        match line.get(i) {
            None => return Err(ParseError::UnterminatedString),
            // As in InfluxDB, a backslash hides the next byte from the quote search whatever it
            // is; only `\"` and `\\` are unescaped.
            Some(b'\\') if i + 1 < line.len() => {
                escaped = true;
                i += 2;
            }
            Some(b'"') => break,
            Some(_) => i += 1,
        }
    }
    let raw = &line[start..i];
    let value = if escaped {
        let mut out = Vec::with_capacity(raw.len());
        let mut j = 0;
        while let Some(&b) = raw.get(j) {
            match raw.get(j + 1) {
                Some(&n @ (b'"' | b'\\')) if b == b'\\' => {
                    out.push(n);
                    j += 2;
                }
                _ => {
                    out.push(b);
                    j += 1;
                }
            }
        }
        Cow::Owned(String::from_utf8(out).map_err(|_| ParseError::InvalidUtf8)?)
    } else {
        match text.and_then(|t| t.get(start..i)) {
            Some(value) => Cow::Borrowed(value),
            None => Cow::Borrowed(std::str::from_utf8(raw).map_err(|_| ParseError::InvalidUtf8)?),
        }
    };
    let end = i + 1;
    match line.get(end) {
        None | Some(b',' | b' ') => Ok((FieldView::Str(value), end)),
        Some(_) => Err(ParseError::BadFieldValue),
    }
}

fn parse_number(token: &[u8]) -> Result<FieldView<'static>, ParseError> {
    let bad = ParseError::BadFieldValue;
    match token.split_last() {
        Some((b'i', digits)) => {
            let unsigned = digits.strip_prefix(b"-").unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            parse_i64(digits).map(FieldView::Int).ok_or(bad)
        }
        Some((b'u', digits)) => {
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            parse_u64(digits).map(FieldView::UInt).ok_or(bad)
        }
        _ => {
            // Only the characters InfluxDB's scanner allows, so Rust's parser cannot accept
            // `inf`, `nan` or a leading `+` that InfluxDB would reject.
            let body = token.strip_prefix(b"-").unwrap_or(token);
            let mut prev = b'-';
            for &b in body {
                let ok = match b {
                    b'0'..=b'9' | b'.' | b'e' | b'E' => true,
                    b'+' | b'-' => prev == b'e' || prev == b'E',
                    _ => false,
                };
                if !ok {
                    return Err(bad);
                }
                prev = b;
            }
            // Rust's parser rounds an out-of-range value to infinity where Go's reports a range
            // error; reject it as InfluxDB does.
            match parse_f64(token) {
                Some(v) if v.is_finite() => Ok(FieldView::Float(v)),
                _ => Err(bad),
            }
        }
    }
}

fn parse_bool(token: &[u8]) -> Result<FieldView<'static>, ParseError> {
    match token {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(FieldView::Bool(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(FieldView::Bool(false)),
        _ => Err(ParseError::BadFieldValue),
    }
}

/// Digits only, at least one, within `u64`.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let digit = |b: u8| b.checked_sub(b'0').filter(|d| *d <= 9).map(u64::from);
    if digits.len() <= 19 {
        // Nineteen nines are below 2^64: no overflow to check (a nanosecond timestamp has 19
        // digits, and this is per line).
        return digits.iter().try_fold(0u64, |n, &b| Some(n * 10 + digit(b)?));
    }
    digits.iter().try_fold(0u64, |n, &b| n.checked_mul(10)?.checked_add(digit(b)?))
}

/// An optional `-` and digits, within `i64` (what `str::parse` accepts, but for a `+`, which
/// the callers have refused already).
fn parse_i64(token: &[u8]) -> Option<i64> {
    match token.strip_prefix(b"-") {
        Some(digits) => {
            let n = parse_u64(digits)?;
            // i64::MIN's magnitude is one more than i64::MAX.
            if n == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(n).ok().map(|n| -n)
            }
        }
        None => i64::try_from(parse_u64(token)?).ok(),
    }
}

/// Powers of ten exact in an `f64`, for [`parse_f64`]'s fast path.
const EXACT_POWERS_OF_TEN: [f64; 16] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/// A float as `str::parse` reads it. A plain decimal of at most 15 digits (`710.0`,
/// `-0.25`: nearly every value a router or an agent writes) is its digits as an integer
/// divided by a power of ten, both exact in an `f64`, so the one rounding of the division is
/// the correctly rounded result `str::parse` gives too (Clinger's fast path); anything else
/// goes to `str::parse`.
fn parse_f64(token: &[u8]) -> Option<f64> {
    let (negative, body) = match token.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, token),
    };
    let (mut mantissa, mut digits, mut fraction, mut point) = (0u64, 0usize, 0usize, false);
    let mut plain = true;
    for &b in body {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
                fraction += usize::from(point);
                if digits > 15 {
                    plain = false;
                    break;
                }
            }
            b'.' if !point => point = true,
            _ => {
                plain = false;
                break;
            }
        }
    }
    if plain && digits > 0 {
        // Both exact: `mantissa` < 10^15 < 2^53, and `fraction` ≤ 15.
        let v = mantissa as f64 / EXACT_POWERS_OF_TEN[fraction];
        return Some(if negative { -v } else { v });
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(point: &Point) -> Result<String, EncodeError> {
        let mut out = BytesMut::new();
        encode_point(point, &mut out)?;
        Ok(String::from_utf8(out.to_vec()).expect("encoder writes UTF-8"))
    }

    fn line_of(build: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> String {
        let mut out = BytesMut::new();
        build(&mut out).expect("encodes");
        String::from_utf8(out.to_vec()).expect("encoder writes UTF-8")
    }

    /// Runs a builder that must fail on a buffer already holding a line, and checks the
    /// buffer is untouched.
    fn fails(build: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> EncodeError {
        let mut out = BytesMut::new();
        out.extend_from_slice(b"earlier value=1.0\n");
        let before = out.clone();
        let err = build(&mut out).expect_err("must fail");
        assert_eq!(out, before, "buffer changed by a failed line");
        err
    }

    fn float_of(line: &str) -> f64 {
        let p = parse_line(line.trim_end_matches('\n').as_bytes()).expect("parses");
        match p.fields.first() {
            Some((_, FieldValue::Float(v))) => *v,
            other => panic!("not a float: {other:?}"),
        }
    }

    // ----- encoder, expectations worked out from the line protocol reference -----

    #[test]
    fn encodes_router_point() {
        let p = Point::new("deis_router_bytes_sent")
            .tag("app", "foo")
            .tag("status_code", "200")
            .tag("host", "node-1")
            .field("value", FieldValue::Float(211.0));
        assert_eq!(
            encode(&p).unwrap(),
            "deis_router_bytes_sent,app=foo,status_code=200,host=node-1 value=211.0\n"
        );
    }

    #[test]
    fn builder_chains_and_timestamps() {
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "router_requests");
            line.tag("app", "foo").field_i64("count", 12).field_f64("request_time_sum", 0.046);
            line.field_bool("ok", true).field_bool("bad", false);
            line.finish(Some(1_465_839_830_100_400_200))
        });
        assert_eq!(
            s,
            "router_requests,app=foo count=12i,request_time_sum=0.046,ok=true,bad=false \
             1465839830100400200\n"
        );
    }

    #[test]
    fn escapes_measurement_comma_and_space_only() {
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "cpu load");
            line.field_f64("v", 1.0);
            line.finish(None)
        });
        assert_eq!(s, "cpu\\ load v=1.0\n");
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "a,b=c");
            line.field_f64("v", 1.0);
            line.finish(None)
        });
        assert_eq!(s, "a\\,b=c v=1.0\n");
    }

    #[test]
    fn escapes_tags_and_field_keys() {
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.tag("k ey", "a=b,c d").field_i64("f,=k", 1);
            line.finish(None)
        });
        assert_eq!(s, "m,k\\ ey=a\\=b\\,c\\ d f\\,\\=k=1i\n");
    }

    #[test]
    fn escapes_string_values() {
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.field_str("msg", r#"say "hi" \o/"#);
            line.finish(None)
        });
        assert_eq!(s, "m msg=\"say \\\"hi\\\" \\\\o/\"\n");
        // Commas, spaces and '=' need no escape inside quotes.
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.field_str("msg", "a, b=c").field_str("empty", "");
            line.finish(None)
        });
        assert_eq!(s, "m msg=\"a, b=c\",empty=\"\"\n");
    }

    #[test]
    fn omits_empty_tag_values() {
        let p = Point::new("m").tag("a", "1").tag("b", "").tag("c", "3").field("v", FieldValue::Int(1));
        assert_eq!(encode(&p).unwrap(), "m,a=1,c=3 v=1i\n");
    }

    #[test]
    fn renders_floats() {
        let f = |v: f64| {
            line_of(|out| {
                let mut line = LineBuilder::new(out, "m");
                line.field_f64("v", v);
                line.finish(None)
            })
        };
        assert_eq!(f(0.046), "m v=0.046\n");
        assert_eq!(f(211.0), "m v=211.0\n");
        assert_eq!(f(-1.5), "m v=-1.5\n");
        assert_eq!(f(0.0), "m v=0.0\n");
        assert_eq!(f(-0.0), "m v=-0.0\n");
        assert_eq!(f(1e-7), "m v=0.0000001\n");
        assert_eq!(f(1e21), "m v=1000000000000000000000.0\n");
        assert_eq!(f(0.1 + 0.2), "m v=0.30000000000000004\n");

        // Very large and very small floats read back as the same floats, sign of zero included.
        assert_eq!(float_of(&f(1e21)), 1e21);
        assert_eq!(float_of(&f(f64::MAX)), f64::MAX);
        assert_eq!(float_of(&f(f64::MIN_POSITIVE)), f64::MIN_POSITIVE);
        assert_eq!(float_of(&f(5e-324)), 5e-324);
        let z = float_of(&f(-0.0));
        assert!(z == 0.0 && z.is_sign_negative());
    }

    #[test]
    fn renders_integers() {
        let s = line_of(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.field_i64("a", 0).field_i64("b", -5).field_i64("c", i64::MIN);
            line.field_i64("d", i64::MAX).field_u64("e", 0).field_u64("f", u64::MAX);
            line.finish(Some(-1))
        });
        assert_eq!(
            s,
            "m a=0i,b=-5i,c=-9223372036854775808i,d=9223372036854775807i,e=0u,\
             f=18446744073709551615u -1\n"
        );
    }

    #[test]
    fn keeps_unambiguous_backslashes() {
        let p = Point::new(r"m\x").tag("path", r"C:\Users\x").field(r"k\b", FieldValue::Str(r"C:\".into()));
        let s = encode(&p).unwrap();
        assert_eq!(s, "m\\x,path=C:\\Users\\x k\\b=\"C:\\\\\"\n");
        assert_eq!(parse_line(s.trim_end().as_bytes()).unwrap(), p);
    }

    #[test]
    fn appends_whole_lines() {
        let mut out = BytesMut::new();
        encode_point(&Point::new("a").field("v", FieldValue::Bool(true)), &mut out).unwrap();
        encode_point(&Point::new("b").field("v", FieldValue::Float(f64::NAN)), &mut out).unwrap_err();
        encode_point(&Point::new("c").field("v", FieldValue::Int(2)).timestamp(3), &mut out).unwrap();
        assert_eq!(&out[..], b"a v=true\nc v=2i 3\n");
    }

    #[test]
    fn rejects_non_finite_floats() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = fails(|out| {
                let mut line = LineBuilder::new(out, "m");
                line.tag("a", "b").field_i64("before", 1).field_f64("v", v).field_i64("after", 2);
                line.finish(None)
            });
            assert_eq!(err, EncodeError::NonFinite);
        }
    }

    #[test]
    fn rejects_bad_lines_without_leaving_bytes() {
        let err = fails(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.tag("a", "b");
            line.finish(Some(1))
        });
        assert_eq!(err, EncodeError::NoFields);

        let err = fails(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.field_i64("v", 1).tag("a", "b");
            line.finish(None)
        });
        assert_eq!(err, EncodeError::TagAfterField);

        for (measurement, tag_key, tag_value, field_key, expected) in [
            ("", "a", "b", "v", EncodeError::EmptyName),
            ("m", "", "b", "v", EncodeError::EmptyName),
            ("m", "", "", "v", EncodeError::EmptyName),
            ("m", "a", "b", "", EncodeError::EmptyName),
            ("m\n", "a", "b", "v", EncodeError::Newline),
            ("m", "a\r", "b", "v", EncodeError::Newline),
            ("m", "a", "b\nc", "v", EncodeError::Newline),
            ("m", "a", "b", "v\n", EncodeError::Newline),
            ("m", "a", r"C:\", "v", EncodeError::AmbiguousBackslash),
            (r"m\", "a", "b", "v", EncodeError::AmbiguousBackslash),
            ("m", r"a\,", "b", "v", EncodeError::AmbiguousBackslash),
            ("m", "a", r"b\ c", "v", EncodeError::AmbiguousBackslash),
            ("m", "a", r"b\=c", "v", EncodeError::AmbiguousBackslash),
            ("m", "a", r"b\\c", "v", EncodeError::AmbiguousBackslash),
            (r"m\'", "a", "b", r#"v\""#, EncodeError::AmbiguousBackslash),
            ("#m", "a", "b", "v", EncodeError::BadStart),
            ("\tm", "a", "b", "v", EncodeError::BadStart),
            ("\0m", "a", "b", "v", EncodeError::BadStart),
            ("m", "a", "b", "\tv", EncodeError::BadStart),
        ] {
            let err = fails(|out| {
                let mut line = LineBuilder::new(out, measurement);
                line.tag(tag_key, tag_value).field_f64(field_key, 1.0);
                line.finish(None)
            });
            assert_eq!(err, expected, "{measurement:?} {tag_key:?} {tag_value:?} {field_key:?}");
        }

        let err = fails(|out| {
            let mut line = LineBuilder::new(out, "m");
            line.field_str("msg", "two\nlines");
            line.finish(None)
        });
        assert_eq!(err, EncodeError::Newline);
    }

    #[test]
    fn measurement_may_contain_hash_after_the_start() {
        let p = Point::new("m#1").field("v", FieldValue::Int(1));
        assert_eq!(encode(&p).unwrap(), "m#1 v=1i\n");
    }

    #[test]
    fn dropping_an_unfinished_builder_removes_its_bytes() {
        let mut out = BytesMut::from(&b"keep v=1i\n"[..]);
        {
            let mut line = LineBuilder::new(&mut out, "m");
            line.field_i64("v", 1);
        }
        assert_eq!(&out[..], b"keep v=1i\n");
    }

    // ----- parser -----

    fn parse(line: &str) -> Result<Point, ParseError> {
        parse_line(line.as_bytes())
    }

    #[test]
    fn parses_reference_examples() {
        assert_eq!(
            parse("weather,location=us-midwest temperature=82 1465839830100400200").unwrap(),
            Point::new("weather")
                .tag("location", "us-midwest")
                .field("temperature", FieldValue::Float(82.0))
                .timestamp(1_465_839_830_100_400_200)
        );
        assert_eq!(
            parse("weather,location=us-midwest,season=summer temperature=82,humidity=71i").unwrap(),
            Point::new("weather")
                .tag("location", "us-midwest")
                .tag("season", "summer")
                .field("temperature", FieldValue::Float(82.0))
                .field("humidity", FieldValue::Int(71))
        );
        assert_eq!(
            parse("weather temperature=82 1465839830100400200").unwrap(),
            Point::new("weather")
                .field("temperature", FieldValue::Float(82.0))
                .timestamp(1_465_839_830_100_400_200)
        );
        assert_eq!(
            parse(r#"weather,location=us-midwest temperature="too warm""#).unwrap(),
            Point::new("weather")
                .tag("location", "us-midwest")
                .field("temperature", FieldValue::Str("too warm".into()))
        );
        assert_eq!(
            parse(r"weather,location\ place=us\,midwest temp\=rature=82").unwrap(),
            Point::new("weather")
                .tag("location place", "us,midwest")
                .field("temp=rature", FieldValue::Float(82.0))
        );
        assert_eq!(
            parse(r"wea\,ther\ now,a=b v=1").unwrap(),
            Point::new("wea,ther now").tag("a", "b").field("v", FieldValue::Float(1.0))
        );
        // Quotes in a measurement are part of its name; '=' needs no escape there.
        assert_eq!(parse(r#""weather" v=1i"#).unwrap().measurement, "\"weather\"");
        assert_eq!(parse("a=b v=1i").unwrap().measurement, "a=b");
    }

    #[test]
    fn parses_string_escapes_as_the_reference_shows() {
        let s = |line: &str| match parse(line).unwrap().fields.remove(0).1 {
            FieldValue::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        };
        assert_eq!(s(r#"w t="too hot/cold""#), "too hot/cold");
        assert_eq!(s(r#"w t="too hot\cold""#), r"too hot\cold");
        assert_eq!(s(r#"w t="too hot\\cold""#), r"too hot\cold");
        assert_eq!(s(r#"w t="too hot\\\cold""#), r"too hot\\cold");
        assert_eq!(s(r#"w t="too hot\\\\cold""#), r"too hot\\cold");
        assert_eq!(s(r#"w t="too hot\\\\\cold""#), r"too hot\\\cold");
        assert_eq!(s(r#"w t="too \"hot\"""#), r#"too "hot""#);
        assert_eq!(s(r#"w t="a, b=c d""#), "a, b=c d");
        assert_eq!(s(r#"w t="""#), "");
    }

    #[test]
    fn parses_numbers() {
        let v = |line: &str| parse(line).unwrap().fields.remove(0).1;
        assert_eq!(v("m v=1e-7"), FieldValue::Float(1e-7));
        assert_eq!(v("m v=-1.5"), FieldValue::Float(-1.5));
        assert_eq!(v("m v=1."), FieldValue::Float(1.0));
        assert_eq!(v("m v=.5"), FieldValue::Float(0.5));
        assert_eq!(v("m v=-.5"), FieldValue::Float(-0.5));
        assert_eq!(v("m v=1E5"), FieldValue::Float(100000.0));
        assert_eq!(v("m v=1.5e+3"), FieldValue::Float(1500.0));
        assert_eq!(v("m v=1e21"), FieldValue::Float(1e21));
        assert_eq!(v("m v=12i"), FieldValue::Int(12));
        assert_eq!(v("m v=-12i"), FieldValue::Int(-12));
        assert_eq!(v("m v=-9223372036854775808i"), FieldValue::Int(i64::MIN));
        assert_eq!(v("m v=12u"), FieldValue::UInt(12));
        assert_eq!(v("m v=18446744073709551615u"), FieldValue::UInt(u64::MAX));
    }

    #[test]
    fn parses_booleans() {
        for (text, expected) in [
            ("t", true),
            ("T", true),
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("f", false),
            ("F", false),
            ("false", false),
            ("False", false),
            ("FALSE", false),
        ] {
            let p = parse(&format!("m v={text},w=1i")).unwrap();
            assert_eq!(p.fields[0].1, FieldValue::Bool(expected), "{text}");
            assert_eq!(p.fields[1].1, FieldValue::Int(1));
        }
    }

    #[test]
    fn tolerates_whitespace_and_carriage_return() {
        let expected = Point::new("cpu").tag("a", "b").field("v", FieldValue::Int(1)).timestamp(5);
        assert_eq!(parse("cpu,a=b v=1i 5").unwrap(), expected);
        assert_eq!(parse("  \tcpu,a=b  v=1i   5  ").unwrap(), expected);
        assert_eq!(parse("cpu,a=b v=1i 5\r").unwrap(), expected);
        assert_eq!(parse("cpu v=1i \r").unwrap().timestamp_ns, None);
        assert_eq!(parse("cpu v=-1i -5").unwrap().timestamp_ns, Some(-5));
    }

    #[test]
    fn parse_errors() {
        use ParseError::*;
        let cases: &[(&[u8], ParseError)] = &[
            (b"", MissingMeasurement),
            (b"   ", MissingMeasurement),
            (b",a=b v=1", MissingMeasurement),
            (b"cpu", MissingFields),
            (b"cpu ", MissingFields),
            (b"cpu,a=b", MissingFields),
            (b"cpu,a=b  ", MissingFields),
            (b"cpu\\ v=1", MissingFields),
            (b"cpu, v=1", BadTag),
            (b"cpu,a v=1", BadTag),
            (b"cpu,a= v=1", BadTag),
            (b"cpu,=b v=1", BadTag),
            (b"cpu,a=b=c v=1", BadTag),
            (b"cpu,a=b, v=1", BadTag),
            (b"cpu v", BadField),
            (b"cpu =1", BadField),
            (b"cpu v=1,", BadField),
            (b"cpu v=1,w", BadField),
            (b"cpu v=1,,w=2", BadField),
            (b"cpu v=", BadFieldValue),
            (b"cpu v=,w=1", BadFieldValue),
            (b"cpu v= 1", BadFieldValue),
            (b"cpu v=NaN", BadFieldValue),
            (b"cpu v=nan", BadFieldValue),
            (b"cpu v=inf", BadFieldValue),
            (b"cpu v=-Inf", BadFieldValue),
            (b"cpu v=-inf", BadFieldValue),
            (b"cpu v=1e400", BadFieldValue),
            (b"cpu v=1.2.3", BadFieldValue),
            (b"cpu v=.", BadFieldValue),
            (b"cpu v=-", BadFieldValue),
            (b"cpu v=+1", BadFieldValue),
            (b"cpu v=1e", BadFieldValue),
            (b"cpu v=1x", BadFieldValue),
            (b"cpu v=12i3", BadFieldValue),
            (b"cpu v=1.5i", BadFieldValue),
            (b"cpu v=1e3i", BadFieldValue),
            (b"cpu v=i", BadFieldValue),
            (b"cpu v=-i", BadFieldValue),
            (b"cpu v=9223372036854775808i", BadFieldValue),
            (b"cpu v=-1u", BadFieldValue),
            (b"cpu v=18446744073709551616u", BadFieldValue),
            (b"cpu v=tru", BadFieldValue),
            (b"cpu v=yes", BadFieldValue),
            (b"cpu v=\"a\"b", BadFieldValue),
            (b"cpu v=\"abc", UnterminatedString),
            (b"cpu v=\"abc\\\"", UnterminatedString),
            (b"cpu v=\"abc\\", UnterminatedString),
            (b"cpu v=1 12a", BadTimestamp),
            (b"cpu v=1 -", BadTimestamp),
            (b"cpu v=1 1.5", BadTimestamp),
            (b"cpu v=1 12-3", BadTimestamp),
            (b"cpu v=1 12\t", BadTimestamp),
            (b"cpu v=1 9223372036854775808", BadTimestamp),
            (b"cpu v=1 123 456", TrailingGarbage),
            (b"cpu v=1 123 x", TrailingGarbage),
            (b"\xffcpu v=1", InvalidUtf8),
            (b"cpu,a=\xff v=1", InvalidUtf8),
            (b"cpu,a\\ \xff=b v=1", InvalidUtf8),
            (b"cpu v\xc3=1", InvalidUtf8),
            (b"cpu v=\"\xff\"", InvalidUtf8),
            (b"cpu v=\"\\\"\xff\"", InvalidUtf8),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line), Err(*expected), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn the_view_borrows_unescaped_text_and_marks_the_series_key() {
        let line = br#"cpu\ load,host=a\,b,region=eu value=0.5,msg="hi" 42"#;
        let mut view = LineView::default();
        parse_line_into(line, &mut view).unwrap();
        assert_eq!(&line[..view.key_end], br#"cpu\ load,host=a\,b,region=eu"#);
        assert!(matches!(view.measurement, Cow::Owned(_)), "escaped: copied");
        assert_eq!(view.measurement, "cpu load");
        assert_eq!(view.tag("host"), Some("a,b"));
        assert!(matches!(view.tags[1].1, Cow::Borrowed("eu")));
        assert_eq!(view.field("value"), Some(&FieldView::Float(0.5)));
        assert!(matches!(view.field("msg"), Some(FieldView::Str(Cow::Borrowed("hi")))));
        assert_eq!(view.timestamp_ns, Some(42));
        // Reused for a shorter line: nothing of the first one is left.
        parse_line_into(b"m v=1i", &mut view).unwrap();
        assert_eq!((view.tags.len(), view.fields.len(), view.timestamp_ns, view.key_end), (0, 1, None, 1));
        assert_eq!(parse_line_into(b"m,t= v=1", &mut view), Err(ParseError::BadTag));
    }

    #[test]
    fn parse_lines_numbers_lines_and_skips_comments() {
        let body = b"# a comment\n\ncpu v=1i\r\n   \n  # indented comment\nbad\n\tmem v=2i 7\n";
        let got: Vec<_> = parse_lines(body).collect();
        assert_eq!(
            got,
            vec![
                (3, Ok(Point::new("cpu").field("v", FieldValue::Int(1)))),
                (6, Err(ParseError::MissingFields)),
                (7, Ok(Point::new("mem").field("v", FieldValue::Int(2)).timestamp(7))),
            ]
        );
        assert_eq!(parse_lines(b"").count(), 0);
        assert_eq!(parse_lines(b"\n\r\n").count(), 0);
    }

    #[test]
    fn reasons_are_distinct() {
        use ParseError::*;
        let all = [
            MissingMeasurement,
            MissingFields,
            BadTag,
            BadField,
            BadFieldValue,
            UnterminatedString,
            BadTimestamp,
            TrailingGarbage,
            InvalidUtf8,
        ];
        let mut reasons: Vec<_> = all.iter().map(|e| e.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }

    // ----- properties -----

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Text without the bytes the encoder refuses: arbitrary Unicode, and a mix heavy in
        /// the bytes line protocol treats specially.
        fn clean_text() -> impl Strategy<Value = String> {
            prop_oneof![r"[^\n\r\\]{1,12}", r"[a-z ,=\x22#\t\x00é😀]{1,12}"]
        }

        fn measurement() -> impl Strategy<Value = String> {
            clean_text().prop_map(|s| if s.starts_with(['#', '\t', '\0']) { format!("m{s}") } else { s })
        }

        fn field_key() -> impl Strategy<Value = String> {
            clean_text().prop_map(|s| if s.starts_with(['\t', '\0']) { format!("k{s}") } else { s })
        }

        fn finite_f64() -> impl Strategy<Value = f64> {
            use proptest::num::f64::*;
            POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
        }

        fn string_value() -> impl Strategy<Value = String> {
            prop_oneof![r"[^\n\r]{0,16}", r"[a-z \\\x22,=]{0,16}"]
        }

        fn field_value() -> impl Strategy<Value = FieldValue> {
            prop_oneof![
                finite_f64().prop_map(FieldValue::Float),
                any::<i64>().prop_map(FieldValue::Int),
                any::<u64>().prop_map(FieldValue::UInt),
                any::<bool>().prop_map(FieldValue::Bool),
                string_value().prop_map(FieldValue::Str),
            ]
        }

        fn owned_point(
            measurement: String,
            tags: Vec<(String, String)>,
            fields: Vec<(String, FieldValue)>,
            timestamp_ns: Option<i64>,
        ) -> Point {
            Point {
                measurement: measurement.into(),
                tags: tags.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                timestamp_ns,
            }
        }

        fn point() -> impl Strategy<Value = Point> {
            (
                measurement(),
                prop::collection::vec((clean_text(), clean_text()), 0..4),
                prop::collection::vec((field_key(), field_value()), 1..4),
                any::<Option<i64>>(),
            )
                .prop_map(|(measurement, tags, fields, timestamp_ns)| {
                    owned_point(measurement, tags, fields, timestamp_ns)
                })
        }

        /// Anything, backslashes, line breaks and empty strings included.
        fn any_text() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => r"[^\n\r]{1,10}",
                3 => r"[a-c \\,=\x22#\t\x00é]{1,8}",
                1 => r"[a-c \\,=\x22#\t\x00\n\r]{0,8}",
            ]
        }

        fn any_field_value() -> impl Strategy<Value = FieldValue> {
            prop_oneof![
                any::<f64>().prop_map(FieldValue::Float),
                any::<i64>().prop_map(FieldValue::Int),
                any::<bool>().prop_map(FieldValue::Bool),
                any_text().prop_map(FieldValue::Str),
            ]
        }

        /// Raw bytes, bytes from line protocol's alphabet, and lines assembled from good and
        /// bad pieces of line protocol, which get past the first checks far more often.
        fn lp_bytes() -> impl Strategy<Value = Vec<u8>> {
            const NAMES: &[&[u8]] = &[
                b"m",
                b"cpu",
                br"a\ b",
                br"x\,y",
                br"e\=q",
                br"bs\x",
                b"#c",
                b"\xc3\xa9",
                b"\xff",
                br"\",
                b"",
                b" ",
                b",",
            ];
            const TAGS: &[&[u8]] = &[
                b",a=b",
                br",k\ ey=v\,al",
                br",k=a\=b",
                br",p=C:\x",
                b",a=",
                b",=b",
                b",a=b=c",
                b",a",
                b",",
                b"\t",
                b"",
            ];
            const FIELDS: &[&[u8]] = &[
                b"v=1",
                b"v=-1.5",
                b"v=1e-7",
                b"v=.5",
                b"v=1.",
                b"v=12i",
                b"v=12u",
                b"v=-3i",
                b"v=t",
                b"v=FALSE",
                br#"v="a\"b\\c""#,
                br#"v="x y,z=""#,
                br"f\ k\,e\=y=2",
                b"v=",
                b"v=nan",
                b"v=1.2.3",
                b"v=\"open",
                b"v=\"\xff\"",
                b"v",
                b"=1",
                b"",
            ];
            const ENDS: &[&[u8]] =
                &[b"", b" 123", b" -9", b"  7  ", b" 1.5", b" 12 3", b" ", b"\r", b" 5\r", b"\n"];
            let assembled = (
                prop::sample::select(NAMES),
                prop::collection::vec(prop::sample::select(TAGS), 0..3),
                prop::collection::vec(prop::sample::select(FIELDS), 1..4),
                prop::sample::select(ENDS),
            )
                .prop_map(|(name, tags, fields, end)| {
                    let mut line = name.to_vec();
                    tags.iter().for_each(|t| line.extend_from_slice(t));
                    line.push(b' ');
                    line.extend_from_slice(&fields.join(&b','));
                    line.extend_from_slice(end);
                    line
                });
            prop_oneof![
                1 => prop::collection::vec(any::<u8>(), 0..200),
                1 => prop::collection::vec(
                    prop::sample::select(
                        b" ,=\\\"\n\r#\t\x000123456789.-+eEiutfTFam\xff\xc3".to_vec()
                    ),
                    0..64
                ),
                2 => assembled,
            ]
        }

        fn encoded(point: &Point) -> Result<Vec<u8>, EncodeError> {
            let mut out = BytesMut::new();
            encode_point(point, &mut out).map(|()| out.to_vec())
        }

        proptest! {
            #[test]
            fn clean_points_round_trip(p in point()) {
                let bytes = encoded(&p).expect("clean points encode");
                prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
                prop_assert_eq!(bytes.last(), Some(&b'\n'));
                prop_assert_eq!(parse_line(&bytes[..bytes.len() - 1]), Ok(p.clone()));
                let lines: Vec<_> = parse_lines(&bytes).collect();
                prop_assert_eq!(lines, vec![(1, Ok(p))]);
            }

            #[test]
            fn parsing_arbitrary_bytes_never_panics(bytes in lp_bytes()) {
                if let Ok(p) = parse_line(&bytes) {
                    // Whatever parses and can be encoded reads back the same.
                    if let Ok(again) = encoded(&p) {
                        prop_assert_eq!(parse_line(&again[..again.len() - 1]), Ok(p));
                    }
                }
                for (n, _) in parse_lines(&bytes) {
                    prop_assert!(n >= 1);
                }
            }

            #[test]
            fn arbitrary_input_round_trips_or_leaves_buffer_unchanged(
                measurement in any_text(),
                tags in prop::collection::vec((any_text(), any_text()), 0..3),
                fields in prop::collection::vec((any_text(), any_field_value()), 0..3),
                timestamp_ns in any::<Option<i64>>(),
            ) {
                let p = owned_point(measurement, tags, fields, timestamp_ns);
                let mut out = BytesMut::from(&b"earlier v=1i\n"[..]);
                let before = out.clone();
                match encode_point(&p, &mut out) {
                    Ok(()) => {
                        prop_assert!(out.starts_with(&before));
                        let line = &out[before.len()..out.len() - 1];
                        let mut expected = p.clone();
                        expected.tags.retain(|(_, v)| !v.is_empty());
                        prop_assert_eq!(parse_line(line), Ok(expected));
                    }
                    Err(e) => {
                        prop_assert_eq!(&out, &before);
                        // The error has a cause in the input.
                        let names = || {
                            std::iter::once(p.measurement.as_ref())
                                .chain(p.tags.iter().flat_map(|(k, v)| [k.as_ref(), v.as_ref()]))
                                .chain(p.fields.iter().map(|(k, _)| k.as_ref()))
                        };
                        let strings = || p.fields.iter().filter_map(|(_, v)| match v {
                            FieldValue::Str(s) => Some(s.as_str()),
                            _ => None,
                        });
                        let justified = match e {
                            EncodeError::NoFields => p.fields.is_empty(),
                            EncodeError::NonFinite => p.fields.iter().any(|(_, v)| {
                                matches!(v, FieldValue::Float(f) if !f.is_finite())
                            }),
                            EncodeError::Newline => names()
                                .chain(strings())
                                .any(|s| s.contains(['\n', '\r'])),
                            EncodeError::EmptyName => std::iter::once(&p.measurement)
                                .chain(p.tags.iter().map(|(k, _)| k))
                                .chain(p.fields.iter().map(|(k, _)| k))
                                .any(|s| s.is_empty()),
                            EncodeError::AmbiguousBackslash => names().any(|s| s.contains('\\')),
                            EncodeError::BadStart => {
                                p.measurement.starts_with(['#', '\t', '\0'])
                                    || p.fields.iter().any(|(k, _)| k.starts_with(['\t', '\0']))
                            }
                            EncodeError::TagAfterField => false,
                        };
                        prop_assert!(justified, "unjustified {:?} for {:?}", e, p);
                    }
                }
            }
        }
    }

    #[test]
    fn plain_decimals_as_field_f64_writes_them() {
        // Expected strings by hand: the shortest digits of the value, with a decimal point.
        for (text, want) in [
            ("0.046", "0.046"),
            ("0.000", "0.0"),
            ("211", "211.0"),
            ("007", "7.0"),
            ("0.010", "0.01"),
            (".5", "0.5"),
            ("7.", "7.0"),
            ("1000", "1000.0"),
            ("123456789012345", "123456789012345.0"),
        ] {
            let mut out = BytesMut::new();
            assert!(write_plain_decimal(&mut out, text.as_bytes()), "{text}");
            assert_eq!(&out[..], want.as_bytes(), "{text}");
        }
        for text in ["", ".", "-1", "1e3", "1,5", "0x1", "1234567890123456", "0.1234567890123456"] {
            let mut out = BytesMut::new();
            assert!(!write_plain_decimal(&mut out, text.as_bytes()), "{text}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn numbers_read_as_str_parse_reads_them() {
        // Values by hand, around the fast path's edges: 15 digits, 16, signs, lone points.
        let floats: &[(&str, Option<f64>)] = &[
            ("0.0", Some(0.0)),
            ("710.0", Some(710.0)),
            ("-0.25", Some(-0.25)),
            (".5", Some(0.5)),
            ("7.", Some(7.0)),
            ("0.1", Some(0.1)),
            ("123456789012345", Some(123_456_789_012_345.0)),
            ("1234567890123456", Some(1_234_567_890_123_456.0)),
            ("0.30000000000000004", Some(0.300_000_000_000_000_04)),
            ("1e3", Some(1000.0)),
            (".", None),
            ("-", None),
            ("", None),
        ];
        for &(text, want) in floats {
            assert_eq!(parse_f64(text.as_bytes()), want, "{text}");
        }
        assert!(parse_f64(b"-0.0").is_some_and(|v| v == 0.0 && v.is_sign_negative()));
        for (text, want) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("-", None),
            ("", None),
            ("1-", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), want, "{text}");
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        // Timestamps, read as they are checked.
        let ts = |line: &str| parse_line(line.as_bytes()).map(|p| p.timestamp_ns);
        assert_eq!(ts("m v=1 1795234941000000247"), Ok(Some(1_795_234_941_000_000_247)));
        assert_eq!(ts("m v=1 9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(ts("m v=1 -9223372036854775808"), Ok(Some(i64::MIN)));
        assert_eq!(ts("m v=1 -0"), Ok(Some(0)));
        assert_eq!(ts("m v=1 000000000000000000000042"), Ok(Some(42)));
        for bad in ["m v=1 9223372036854775808", "m v=1 -9223372036854775809", "m v=1 99999999999999999999"] {
            assert_eq!(ts(bad), Err(ParseError::BadTimestamp), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_decimals_match_float_formatting(int in "[0-9]{0,12}", frac in proptest::option::of("[0-9]{0,12}")) {
            let text = match &frac { Some(f) => format!("{int}.{f}"), None => int.clone() };
            let mut fast = BytesMut::new();
            if write_plain_decimal(&mut fast, text.as_bytes()) {
                let v: f64 = text.parse().unwrap();
                let mut slow = BytesMut::new();
                write_float(&mut slow, v).unwrap();
                proptest::prop_assert_eq!(&fast[..], &slow[..], "{}", text);
            }
        }

        #[test]
        fn floats_read_as_str_parse_reads_them(sign in "-?", int in "[0-9]{0,17}", frac in proptest::option::of("[0-9]{0,17}")) {
            let text = match &frac { Some(f) => format!("{sign}{int}.{f}"), None => format!("{sign}{int}") };
            let want = text.parse::<f64>().ok();
            let got = parse_f64(text.as_bytes());
            // Bit for bit: the sign of a zero too.
            proptest::prop_assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{}", text);
        }

        #[test]
        fn integers_read_as_str_parse_reads_them(text in "-?[0-9]{0,20}") {
            proptest::prop_assert_eq!(parse_i64(text.as_bytes()), text.parse::<i64>().ok(), "{}", text);
        }

        #[test]
        fn tag_sets_match_the_builder(tags in proptest::collection::vec(("[a-z,= ]{1,6}", "[a-z,= ]{0,6}"), 0..4)) {
            let pairs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut via_builder = BytesMut::new();
            let mut line = LineBuilder::new(&mut via_builder, "m");
            for (k, v) in &pairs {
                line.tag(k, v);
            }
            line.field_i64("f", 1);
            line.finish(None).unwrap();
            let mut direct = BytesMut::from(&b"m"[..]);
            write_tag_set(&mut direct, &pairs).unwrap();
            direct.extend_from_slice(b" f=1i\n");
            proptest::prop_assert_eq!(via_builder, direct);
        }
    }

    #[test]
    fn metrics_messages_stay_within_the_limit_and_keep_lines_whole() {
        let lines = Bytes::from_static(b"a v=1\nbb v=2\nccc v=3\ndddd v=4\n");
        let parts = split_lines(lines.clone(), 13);
        assert_eq!(parts.concat(), lines.to_vec());
        assert!(parts.iter().all(|p| p.len() <= 13 && p.ends_with(b"\n")), "{parts:?}");
        assert_eq!(parts.len(), 3);
        assert_eq!(split_lines(Bytes::new(), 13), Vec::<Bytes>::new());
        // A line longer than the limit goes alone.
        let parts = split_lines(Bytes::from_static(b"x v=1\nyyyyyyyyyyyyyyyyyy v=2\nz v=3\n"), 10);
        assert_eq!(parts.len(), 3, "{parts:?}");
    }

    #[test]
    fn split_lines_keeps_lines_whole_within_the_limit() {
        let body = Bytes::from_static(b"aaaa\nbb\ncccccccc\nd\n");
        let pieces = split_lines(body.clone(), 8);
        let texts: Vec<&[u8]> = pieces.iter().map(|b| b.as_ref()).collect();
        assert_eq!(texts, [&b"aaaa\nbb\n"[..], b"cccccccc\n", b"d\n"]);
        assert_eq!(split_lines(body.clone(), 1000).len(), 1);
    }
}

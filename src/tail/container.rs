//! Container runtime log formats: Docker json-file and CRI (containerd, CRI-O) lines decoded
//! to their text, and the pieces of a long line joined back into one record.
//!
//! Pure and allocation free on the common path. The Docker decoder is hand-written rather than
//! serde_json because every Docker line ends in the escape `\n` and router lines carry `\"`:
//! serde_json would hand back an owned `String` for every line. Here text without escapes is
//! lent out of the line, and escaped text is decoded into a buffer the caller reuses.

use std::borrow::Cow;

use memchr::{memchr, memchr2};

use crate::timefmt::parse_rfc3339;

/// The standard stream a container wrote a line to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn parse(b: &[u8]) -> Result<Self, DecodeError> {
        match b {
            b"stdout" => Ok(Stream::Stdout),
            b"stderr" => Ok(Stream::Stderr),
            _ => Err(DecodeError::BadStream),
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// How a file's lines are wrapped by the container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapping {
    /// Not wrapped: an operator's own log file, the line is the text.
    Raw,
    /// Docker json-file: `{"log":"text\n","stream":"stdout","time":"…"}`.
    Docker,
    /// CRI: `<time> <stream> <tags> <content>`.
    Cri,
}

/// Why a line did not decode. Small and `Copy`: a bad line is counted by reason, not raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DecodeError {
    #[error("docker line is not a JSON object")]
    BadJson,
    #[error("docker record lacks a string log, stream or time")]
    MissingField,
    #[error("record time is not RFC 3339")]
    BadTime,
    #[error("record stream is neither stdout nor stderr")]
    BadStream,
    #[error("CRI line is not `<time> <stream> <tags> <content>`")]
    BadCri,
}

impl DecodeError {
    pub(crate) const ALL: [DecodeError; 5] = [
        DecodeError::BadJson,
        DecodeError::MissingField,
        DecodeError::BadTime,
        DecodeError::BadStream,
        DecodeError::BadCri,
    ];

    /// A short label for a `reason` metric tag.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            DecodeError::BadJson => "bad_json",
            DecodeError::MissingField => "missing_field",
            DecodeError::BadTime => "bad_time",
            DecodeError::BadStream => "bad_stream",
            DecodeError::BadCri => "bad_cri",
        }
    }
}

/// One record of a container log file: a whole line or a piece of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fragment<'a> {
    /// When the runtime read the piece, in Unix nanoseconds; `None` for raw lines, which carry
    /// no runtime time (the text may have its own).
    pub(crate) time_ns: Option<i64>,
    /// Raw lines say [`Stream::Stdout`]: a file written by the application is one stream.
    pub(crate) stream: Stream,
    /// The text without the runtime's wrapping and without the line's final `'\n'`.
    pub(crate) text: &'a [u8],
    /// More pieces of the same line follow on this stream.
    pub(crate) partial: bool,
}

/// Guesses a file's wrapping from one of its lines: a `{` and a valid Docker record is Docker,
/// a line that decodes as CRI is CRI, anything else is raw.
pub(crate) fn detect_wrapping(line: &[u8]) -> Wrapping {
    if line.first() == Some(&b'{') && decode_docker(line, &mut Vec::new()).is_ok() {
        Wrapping::Docker
    } else if decode_cri(line).is_ok() {
        Wrapping::Cri
    } else {
        Wrapping::Raw
    }
}

/// Decodes a line of a file with the given wrapping; see [`decode_docker`] for `scratch`.
pub(crate) fn decode<'a>(
    wrapping: Wrapping,
    line: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<Fragment<'a>, DecodeError> {
    match wrapping {
        Wrapping::Raw => Ok(Fragment { time_ns: None, stream: Stream::Stdout, text: line, partial: false }),
        Wrapping::Docker => decode_docker(line, scratch),
        Wrapping::Cri => decode_cri(line),
    }
}

/// Decodes a Docker json-file line. The text is `log` without its final `'\n'`; a `log` without
/// one is a piece of a line Docker split at 16 KiB (`partial`).
///
/// Text with no escapes other than that final `\n` is lent out of `line`. Other escaped text is
/// decoded into `scratch`, which is cleared first: passing the same buffer for every line keeps
/// the decoder from allocating once it has grown to the longest line.
///
/// Keys other than `log`, `stream` and `time` (`attrs`, …) are skipped; their values are
/// bracket-matched but not validated further. Where JSON is broken in ways Go's decoder (Docker's
/// own) tolerates, this follows Go: a repeated key keeps its last value, an unpaired UTF-16
/// surrogate becomes U+FFFD, a raw control byte inside a string is taken as it is.
pub(crate) fn decode_docker<'a>(
    line: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<Fragment<'a>, DecodeError> {
    let fields = DockerFields::scan(line)?;
    let (Some(log), Some(stream), Some(time)) = (fields.log, fields.stream, fields.time) else {
        return Err(DecodeError::MissingField);
    };
    let stream = Stream::parse(stream.decode(scratch)?)?;
    let time_ns = parse_rfc3339(time.decode(scratch)?).map_err(|_| DecodeError::BadTime)?;
    let (text, ends_line) = match log.first_escape {
        None => (log.raw, false),
        // The usual shape: plain text and the newline. A backslash at `i` is the first one, so
        // it is not itself escaped and `\n` here really is a newline.
        Some(i) if log.raw.get(i..) == Some(&b"\\n"[..]) => (&log.raw[..i], true),
        Some(_) => {
            scratch.clear();
            unescape_into(log.raw, scratch)?;
            let ends_line = scratch.last() == Some(&b'\n');
            if ends_line {
                scratch.pop();
            }
            let text: &'a [u8] = scratch;
            (text, ends_line)
        }
    };
    Ok(Fragment { time_ns: Some(time_ns), stream, text, partial: !ends_line })
}

/// Decodes a CRI line, `2016-10-06T00:17:09.669794202Z stdout P text`: time, stream, tags, one
/// space, then the content verbatim (empty content may lose its space; both forms are taken).
///
/// Tags are `:`-separated and only the first is read: `P` means more pieces follow, anything
/// else ends the line. That is kubelet's own forward-compatible rule, so logmill joins lines
/// exactly as `kubectl logs` shows them.
pub(crate) fn decode_cri(line: &[u8]) -> Result<Fragment<'_>, DecodeError> {
    let (time, rest) = split_space(line).ok_or(DecodeError::BadCri)?;
    let time_ns = parse_rfc3339(time).map_err(|_| DecodeError::BadTime)?;
    let (stream, rest) = split_space(rest).ok_or(DecodeError::BadCri)?;
    let stream = Stream::parse(stream)?;
    let (tags, text) = split_space(rest).unwrap_or((rest, &b""[..]));
    let first_tag = tags.split(|&b| b == b':').next().unwrap_or_default();
    if first_tag.is_empty() {
        return Err(DecodeError::BadCri);
    }
    Ok(Fragment { time_ns: Some(time_ns), stream, text, partial: first_tag == b"P" })
}

fn split_space(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr(b' ', b)?;
    Some((&b[..i], &b[i + 1..]))
}

/// A JSON string as it sits in the line, between its quotes.
#[derive(Debug, Clone, Copy)]
struct JsonStr<'a> {
    raw: &'a [u8],
    /// Position in `raw` of the first backslash.
    first_escape: Option<usize>,
}

impl<'a> JsonStr<'a> {
    /// The string's value: `raw` itself when it has no escapes, else decoded into `scratch`.
    fn decode<'s>(self, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], DecodeError>
    where
        'a: 's,
    {
        if self.first_escape.is_none() {
            return Ok(self.raw);
        }
        scratch.clear();
        unescape_into(self.raw, scratch)?;
        Ok(scratch)
    }
}

/// The three fields logmill reads from a Docker record, still escaped.
#[derive(Debug, Default)]
struct DockerFields<'a> {
    log: Option<JsonStr<'a>>,
    stream: Option<JsonStr<'a>>,
    time: Option<JsonStr<'a>>,
}

impl<'a> DockerFields<'a> {
    fn scan(line: &'a [u8]) -> Result<Self, DecodeError> {
        let mut p = JsonCursor { b: line, i: 0 };
        let mut fields = DockerFields::default();
        p.ws();
        p.eat(b'{')?;
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
        } else {
            loop {
                let key = p.string()?;
                p.ws();
                p.eat(b':')?;
                p.ws();
                let slot = match &*key_bytes(key)? {
                    b"log" => Some(&mut fields.log),
                    b"stream" => Some(&mut fields.stream),
                    b"time" => Some(&mut fields.time),
                    _ => None,
                };
                match slot {
                    Some(slot) if p.peek() == Some(b'"') => *slot = Some(p.string()?),
                    // A known key with a value of another type leaves the field missing.
                    Some(slot) => {
                        p.skip_value()?;
                        *slot = None;
                    }
                    None => p.skip_value()?,
                }
                p.ws();
                match p.next() {
                    Some(b',') => p.ws(),
                    Some(b'}') => break,
                    _ => return Err(DecodeError::BadJson),
                }
            }
        }
        p.ws();
        if p.i == line.len() {
            Ok(fields)
        } else {
            Err(DecodeError::BadJson)
        }
    }
}

/// A key's value; escaped keys (never written by Docker) take the allocating path.
fn key_bytes(key: JsonStr<'_>) -> Result<Cow<'_, [u8]>, DecodeError> {
    if key.first_escape.is_none() {
        return Ok(Cow::Borrowed(key.raw));
    }
    let mut out = Vec::new();
    unescape_into(key.raw, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Deepest nesting of an unknown value that is skipped; one bit of the matching stack each.
const MAX_JSON_DEPTH: u32 = 128;

struct JsonCursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> JsonCursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), DecodeError> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(DecodeError::BadJson)
        }
    }

    /// A string starting at the cursor. Escapes are only stepped over here; they are checked
    /// when (and if) the value is decoded.
    fn string(&mut self) -> Result<JsonStr<'a>, DecodeError> {
        self.eat(b'"')?;
        let start = self.i;
        let mut first_escape = None;
        loop {
            // After a backslash that ends the line, `i` is past the end: unterminated string.
            let rest = self.b.get(self.i..).ok_or(DecodeError::BadJson)?;
            let k = memchr2(b'"', b'\\', rest).ok_or(DecodeError::BadJson)?;
            let at = self.i + k;
            if rest[k] == b'"' {
                self.i = at + 1;
                return Ok(JsonStr { raw: &self.b[start..at], first_escape });
            }
            first_escape.get_or_insert(at - start);
            self.i = at + 2;
        }
    }

    fn skip_value(&mut self) -> Result<(), DecodeError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => self.skip_nested(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => {
                while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
                    self.i += 1;
                }
                Ok(())
            }
            _ => Err(DecodeError::BadJson),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), DecodeError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(DecodeError::BadJson)
        }
    }

    /// Skips an object or array by matching brackets on a bit stack rather than by recursion:
    /// a line of ten thousand `[` must not overflow the thread's stack.
    fn skip_nested(&mut self) -> Result<(), DecodeError> {
        let mut is_object: u128 = 0;
        let mut depth = 0u32;
        loop {
            match self.peek().ok_or(DecodeError::BadJson)? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                open @ (b'{' | b'[') => {
                    if depth == MAX_JSON_DEPTH {
                        return Err(DecodeError::BadJson);
                    }
                    is_object = is_object << 1 | u128::from(open == b'{');
                    depth += 1;
                }
                close @ (b'}' | b']') => {
                    if (is_object & 1 == 1) != (close == b'}') {
                        return Err(DecodeError::BadJson);
                    }
                    is_object >>= 1;
                    // Never below zero: the first byte was an opening bracket, and the
                    // function returns as soon as depth is back to zero.
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b'-' | b'+' | b'.' => {}
                c if c.is_ascii_alphanumeric() => {}
                _ => return Err(DecodeError::BadJson),
            }
            self.i += 1;
        }
    }
}

/// Appends the value of an escaped JSON string (without its quotes) to `out`.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    out.reserve(raw.len());
    let mut i = 0;
    while let Some(k) = memchr(b'\\', &raw[i..]) {
        out.extend_from_slice(&raw[i..i + k]);
        let escape = *raw.get(i + k + 1).ok_or(DecodeError::BadJson)?;
        i += k + 2;
        let byte = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (c, used) = unicode_escape(&raw[i..])?;
                i += used;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return Err(DecodeError::BadJson),
        };
        out.push(byte);
    }
    out.extend_from_slice(&raw[i..]);
    Ok(())
}

/// The character of a `\u` escape whose four hex digits start `rest`, and how many bytes of
/// `rest` it used (ten when a surrogate pair's second half was joined to it).
fn unicode_escape(rest: &[u8]) -> Result<(char, usize), DecodeError> {
    let unit = hex4(rest).ok_or(DecodeError::BadJson)?;
    let c = match unit {
        0xD800..=0xDBFF => {
            let low = rest.get(4..6).filter(|s| *s == b"\\u").and_then(|_| rest.get(6..)).and_then(hex4);
            if let Some(low @ 0xDC00..=0xDFFF) = low {
                let c = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                return Ok((char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER), 10));
            }
            char::REPLACEMENT_CHARACTER
        }
        // from_u32 fails only on surrogates, which is what a lone low half is.
        _ => char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER),
    };
    Ok((c, 4))
}

fn hex4(b: &[u8]) -> Option<u16> {
    b.get(..4)?.iter().try_fold(0u16, |acc, &c| Some(acc << 4 | char::from(c).to_digit(16)? as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NS: i64 = 1_000_000_000;

    fn docker(line: &[u8]) -> Result<(Option<i64>, Stream, Vec<u8>, bool), DecodeError> {
        let mut scratch = Vec::new();
        decode_docker(line, &mut scratch).map(|f| (f.time_ns, f.stream, f.text.to_vec(), f.partial))
    }

    #[test]
    fn docker_example_line() {
        let line = br#"{"log":"text\n","stream":"stdout","time":"2016-10-20T18:39:20.57606443Z"}"#;
        let mut scratch = Vec::new();
        let frag = decode_docker(line, &mut scratch).expect("valid");
        // date -u -d '2016-10-20 18:39:20' +%s → 1476988760; the fraction has eight digits.
        assert_eq!(frag.time_ns, Some(1_476_988_760 * NS + 576_064_430));
        assert_eq!(frag.stream, Stream::Stdout);
        assert_eq!(frag.text, b"text");
        assert!(!frag.partial);
        // Only the final newline was escaped: the text is lent out of the line.
        assert!(line.as_ptr_range().contains(&frag.text.as_ptr()));
        assert!(scratch.is_empty());
    }

    #[test]
    fn docker_unknown_keys_order_and_whitespace() {
        let line = br#"{"log":"hi\n","stream":"stderr","attrs":{"io.kubernetes.pod.name":"web-1","n":[1,-2.5e3,{"a":null}],"ok":true},"time":"2016-10-06T00:17:09.669794202Z"}"#;
        assert_eq!(
            docker(line),
            Ok((Some(1_475_713_029 * NS + 669_794_202), Stream::Stderr, b"hi".to_vec(), false))
        );
        let line =
            b" { \"time\" : \"1970-01-01T00:00:01Z\" , \"stream\":\"stdout\",\t\"log\":\"x\" , \"e\":[] }\r";
        assert_eq!(docker(line), Ok((Some(NS), Stream::Stdout, b"x".to_vec(), true)));
        // A repeated key keeps its last value.
        let line = br#"{"log":"a\n","log":"b\n","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#;
        assert_eq!(docker(line).map(|f| f.2), Ok(b"b".to_vec()));
    }

    #[test]
    fn docker_escapes_are_decoded() {
        let line = br#"{"log":"say \"hi\" C:\\dir caf\u00e9 \ud83d\ude00\t\u003cb\u003e\/ \ud800!\n","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#;
        let want = "say \"hi\" C:\\dir café 😀\t<b>/ \u{fffd}!".as_bytes();
        assert_eq!(docker(line), Ok((Some(0), Stream::Stdout, want.to_vec(), false)));
        // An escaped backslash before an `n` is not a newline.
        let line = br#"{"log":"a\\n","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#;
        assert_eq!(docker(line), Ok((Some(0), Stream::Stdout, b"a\\n".to_vec(), true)));
        // A newline in the middle is text; only the last one ends the line.
        let line = br#"{"log":"a\nb\n\n","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#;
        assert_eq!(docker(line), Ok((Some(0), Stream::Stdout, b"a\nb\n".to_vec(), false)));
        // An empty line is a bare "\n".
        let line = br#"{"log":"\n","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#;
        assert_eq!(docker(line), Ok((Some(0), Stream::Stdout, vec![], false)));
    }

    #[test]
    fn docker_bad_lines() {
        use DecodeError::*;
        let t = r#""time":"1970-01-01T00:00:00Z""#;
        let cases: Vec<(String, DecodeError)> = vec![
            (String::new(), BadJson),
            ("not json".into(), BadJson),
            (r#"["log"]"#.into(), BadJson),
            (r#"{"log":"unterminated"#.into(), BadJson),
            (r#"{"log":"x\"#.into(), BadJson),
            (format!(r#"{{"log":"x\n","stream":"stdout",{t}}} trailing"#), BadJson),
            (format!(r#"{{"log":"x\n","stream":"stdout",{t},}}"#), BadJson),
            (format!(r#"{{"log":"bad \q escape","stream":"stdout",{t}}}"#), BadJson),
            (format!(r#"{{"log":"\u12G4","stream":"stdout",{t}}}"#), BadJson),
            (format!(r#"{{"log":"x","stream":"stdout",{t},"a":[1}}}}"#), BadJson),
            (format!(r#"{{"log":"x","stream":"stdout",{t},"a":tru}}"#), BadJson),
            (
                format!(r#"{{"log":"x","stream":"stdout",{t},"a":{}{}}}"#, "[".repeat(200), "]".repeat(200)),
                BadJson,
            ),
            (r#"{"log":"x\n","stream":"stdout"}"#.into(), MissingField),
            (format!(r#"{{"log":5,"stream":"stdout",{t}}}"#), MissingField),
            ("{}".into(), MissingField),
            (r#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#.into(), BadTime),
            (format!(r#"{{"log":"x\n","stream":"stdin",{t}}}"#), BadStream),
        ];
        for (line, want) in cases {
            assert_eq!(docker(line.as_bytes()), Err(want), "{line}");
        }
        assert_eq!(BadJson.reason(), "bad_json");
        assert_eq!(BadJson.to_string(), "docker line is not a JSON object");
    }

    #[test]
    fn cri_lines() {
        let f = decode_cri(b"2016-10-06T00:17:09.669794202Z stdout P partial text").expect("valid");
        assert_eq!(
            f,
            Fragment {
                time_ns: Some(1_475_713_029 * NS + 669_794_202),
                stream: Stream::Stdout,
                text: b"partial text",
                partial: true
            }
        );
        // An offset and a short fraction: 02:17:09.5+02:00 is 00:17:09.5Z.
        let f = decode_cri(b"2016-10-06T02:17:09.5+02:00 stderr F:x:y  two leading spaces ").expect("valid");
        assert_eq!((f.time_ns, f.stream), (Some(1_475_713_029 * NS + 500_000_000), Stream::Stderr));
        assert_eq!((f.text, f.partial), (&b" two leading spaces "[..], false));
        assert!(decode_cri(b"2016-10-06T00:17:09Z stdout P:x more").expect("valid").partial);
        // Kubelet reads any first tag other than P as the end of a line.
        assert!(!decode_cri(b"2016-10-06T00:17:09Z stdout Q text").expect("valid").partial);
        // Empty content: containerd writes the space after the tag; accept its absence too.
        for line in [&b"2016-10-06T00:17:09Z stdout F "[..], b"2016-10-06T00:17:09Z stdout F"] {
            let f = decode_cri(line).expect("valid");
            assert_eq!((f.text, f.partial), (&b""[..], false));
        }
        // Content is verbatim: no unescaping, a trailing '\r' kept.
        let f = decode_cri(b"2016-10-06T00:17:09Z stdout F a\\nb\t{\"x\"}\r").expect("valid");
        assert_eq!(f.text, b"a\\nb\t{\"x\"}\r");
    }

    #[test]
    fn cri_bad_lines() {
        use DecodeError::*;
        let cases: [(&[u8], DecodeError); 8] = [
            (b"", BadCri),
            (b"2016-10-06T00:17:09Z", BadCri),
            (b"2016-10-06T00:17:09Z stdout", BadCri),
            (b"2016-10-06T00:17:09Z stdout  empty tag", BadCri),
            (b"2016-10-06T00:17:09Z stdout :x text", BadCri),
            (b"hello world F x", BadTime),
            (b"2016-10-06 00:17:09Z stdout F x", BadTime),
            (b"2016-10-06T00:17:09Z stdin F x", BadStream),
        ];
        for (line, want) in cases {
            assert_eq!(decode_cri(line), Err(want), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn wrapping_detection_and_raw_lines() {
        let d = br#"{"log":"x\n","stream":"stdout","time":"2016-10-20T18:39:20Z"}"#;
        assert_eq!(detect_wrapping(d), Wrapping::Docker);
        assert_eq!(detect_wrapping(b"2016-10-06T00:17:09Z stdout F x"), Wrapping::Cri);
        assert_eq!(detect_wrapping(b"{\"level\":\"info\",\"msg\":\"app json\"}"), Wrapping::Raw);
        assert_eq!(detect_wrapping(b"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1"), Wrapping::Raw);
        assert_eq!(detect_wrapping(b""), Wrapping::Raw);
        let mut scratch = Vec::new();
        assert_eq!(
            decode(Wrapping::Raw, b"plain\r", &mut scratch),
            Ok(Fragment { time_ns: None, stream: Stream::Stdout, text: b"plain\r", partial: false })
        );
    }

    // The first three lines of ../shared/data/router/router-{docker,cri}.log.
    const ROUTER_DOCKER: [&[u8]; 3] = [
        br#"{"log":"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - \"GET /big HTTP/1.1\" - 710 - \"-\" - \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\" - \"_\" - - - unknown.example.com - - - 0.000\n","stream":"stderr","time":"2026-11-21T04:22:21.000001000Z"}"#,
        br#"{"log":"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - \"GET /fast HTTP/1.1\" - 169 - \"-\" - \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\" - \"web.example.com\" - 127.0.0.1:19001 - web.example.com - 0.000 - 0.000\n","stream":"stderr","time":"2026-11-21T04:22:21.000001097Z"}"#,
        br#"{"log":"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - \"PUT /ms50 HTTP/1.1\" - 308 - \"https://unknown.example.com/from?page=19\" - \"curl/8.5.0\" - \"_\" - - - unknown.example.com - - - 0.000\n","stream":"stderr","time":"2026-11-21T04:22:21.000001194Z"}"#,
    ];
    const ROUTER_CRI: [&[u8]; 3] = [
        br#"2026-11-21T04:22:21.000001000Z stderr F [2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - "GET /big HTTP/1.1" - 710 - "-" - "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36" - "_" - - - unknown.example.com - - - 0.000"#,
        br#"2026-11-21T04:22:21.000001097Z stderr F [2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36" - "web.example.com" - 127.0.0.1:19001 - web.example.com - 0.000 - 0.000"#,
        br#"2026-11-21T04:22:21.000001194Z stderr F [2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - "PUT /ms50 HTTP/1.1" - 308 - "https://unknown.example.com/from?page=19" - "curl/8.5.0" - "_" - - - unknown.example.com - - - 0.000"#,
    ];

    #[test]
    fn router_fixture_decodes_the_same_in_both_wrappings() {
        let (mut docker_scratch, mut cri_scratch) = (Vec::new(), Vec::new());
        for (d, c) in ROUTER_DOCKER.iter().zip(ROUTER_CRI) {
            assert_eq!(detect_wrapping(d), Wrapping::Docker);
            assert_eq!(detect_wrapping(c), Wrapping::Cri);
            let c = decode(Wrapping::Cri, c, &mut cri_scratch).expect("valid");
            let d = decode(Wrapping::Docker, d, &mut docker_scratch).expect("valid");
            assert_eq!(d, c);
            assert_eq!((d.stream, d.partial), (Stream::Stderr, false));
        }
        // date -u -d '2026-11-21 04:22:21' +%s → 1795234941.
        let first = decode_cri(ROUTER_CRI[0]).expect("valid");
        assert_eq!(first.time_ns, Some(1_795_234_941 * NS + 1_000));
        assert!(first
            .text
            .starts_with(b"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - \"GET"));
        assert!(first.text.ends_with(b"unknown.example.com - - - 0.000"));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut scratch = Vec::new();
            let _ = decode_docker(&line, &mut scratch);
            let _ = decode_cri(&line);
            let _ = detect_wrapping(&line);
        }

        #[test]
        fn near_docker_lines_never_panic_and_agree_with_serde_json(
            log in proptest::collection::vec(prop_oneof![
                Just(b'\\'), Just(b'"'), Just(b'u'), Just(b'{'), Just(b'['), Just(b'}'), Just(b']'),
                Just(b'd'), Just(b'8'), Just(b'n'), any::<u8>()], 0..64),
        ) {
            let mut line = br#"{"log":""#.to_vec();
            line.extend_from_slice(&log);
            line.extend_from_slice(br#"","stream":"stdout","time":"1970-01-01T00:00:00Z"}"#);
            let mut scratch = Vec::new();
            let got = decode_docker(&line, &mut scratch).map(|f| f.text.to_vec());
            let _ = detect_wrapping(&line);
            // Where serde_json accepts the line, both must read the same text. (The decoder is
            // more lenient than serde_json, as Go is: raw control bytes, lone surrogates.)
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) {
                let log = value["log"].as_str().unwrap_or_default();
                prop_assert_eq!(got, Ok(log.strip_suffix('\n').unwrap_or(log).as_bytes().to_vec()));
            }
        }

        /// serde_json is the independent reference for what a Docker line means.
        #[test]
        fn docker_agrees_with_serde_json(log in ".{0,40}", extra in ".{0,10}", nl in any::<bool>(), err in any::<bool>()) {
            let log = if nl { format!("{log}\n") } else { log };
            let stream = if err { "stderr" } else { "stdout" };
            let value = serde_json::json!({
                "log": log, "attrs": { "k": extra, "n": [1.5, null, true] }, "stream": stream,
                "time": "2016-10-20T18:39:20.57606443Z",
            });
            let line = serde_json::to_vec(&value).expect("a json! value always serialises");
            let got = docker(&line);
            let text = log.strip_suffix('\n').unwrap_or(&log);
            prop_assert_eq!(got, Ok((
                Some(1_476_988_760 * NS + 576_064_430),
                if err { Stream::Stderr } else { Stream::Stdout },
                text.as_bytes().to_vec(),
                !log.ends_with('\n'),
            )));
        }
    }
}

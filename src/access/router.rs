//! The fast path for the Deis router's access lines (nginx `log_format upstreaminfo`):
//!
//! ```text
//! [$time_iso8601] - $app_name - $remote_addr - $remote_user - $status - "$request" - $bytes_sent - "$http_referer" - "$http_user_agent" - "$server_name" - $upstream_addr - $http_host - $upstream_response_time - $request_time
//! ```
//!
//! Older routers wrote `[$time_local]`. Fields are separated by ` - `, which a quoted field
//! may contain (`"Probe - Health/2.1"`): the old split-based parser broke on exactly that, so
//! quoted fields are read up to their closing quote. nginx escapes `"` inside a quoted field as
//! `\x22`, so the first `"` always closes it.

use nom::{
    bytes::complete::{tag, take_until},
    error::{Error, ErrorKind},
    sequence::{delimited, terminated},
    IResult, Parser,
};

use super::{AccessRecord, Classified, Method, Reject};

const SEP: &str = " - ";

type Res<'a, O> = IResult<&'a [u8], O, Error<&'a [u8]>>;

/// An unquoted field and the separator after it. A plain loop: the fields are short, so a
/// `memchr` call per field (dispatch, vector setup) costs more than it saves.
fn bare(i: &[u8]) -> Res<'_, &[u8]> {
    let mut at = 0;
    while at + 2 < i.len() {
        if i[at] == b' ' && i[at + 1] == b'-' && i[at + 2] == b' ' {
            return Ok((&i[at + SEP.len()..], &i[..at]));
        }
        at += 1;
    }
    Err(nom::Err::Error(Error::new(i, ErrorKind::TakeUntil)))
}

/// A quoted field and the separator after it, with the errors
/// `terminated(delimited(tag("\""), take_until("\""), tag("\"")), tag(SEP))` gives.
fn quoted(i: &[u8]) -> Res<'_, &[u8]> {
    let fail = |input, code| Err(nom::Err::Error(Error::new(input, code)));
    let Some(body) = i.strip_prefix(b"\"") else { return fail(i, ErrorKind::Tag) };
    let Some(end) = memchr::memchr(b'"', body) else { return fail(body, ErrorKind::TakeUntil) };
    let rest = &body[end + 1..];
    match rest.strip_prefix(SEP.as_bytes()) {
        Some(after) => Ok((after, &body[..end])),
        None => fail(rest, ErrorKind::Tag),
    }
}

/// `$remote_user - $status - "`: the user comes from any client's Basic credentials and may
/// hold ` - `, so it runs to the first ` - ` followed by three digits, ` - ` and the request's
/// opening quote. Returns the input from that quote on, and the three digits.
fn user_and_status(i: &[u8]) -> Result<(&[u8], &[u8; 3]), Reject> {
    // nginx escapes `"` in the user (`\x22`), so the first quote opens the request: the status
    // is before it.
    let Some(quote) = memchr::memchr(b'"', i) else { return Err(Reject::Truncated) };
    let mut unquoted_request = false;
    let head = &i[..quote];
    for at in (0..head.len().saturating_sub(2)).filter(|&at| head[at..].starts_with(SEP.as_bytes())) {
        let after = &i[at + SEP.len()..];
        if let [a, b, c, b' ', b'-', b' ', next, ..] = after {
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() {
                if *next != b'"' {
                    unquoted_request = true;
                    continue;
                }
                let status: &[u8; 3] = after[..3].try_into().map_err(|_| Reject::BadStatus)?;
                return Ok((&after[6..], status));
            }
        }
    }
    // A status followed by something other than the request's quote is a broken layout; no
    // status at all is a bad status.
    Err(if unquoted_request { Reject::Malformed } else { Reject::BadStatus })
}

/// A nom failure as a rejection: running out of line is `Truncated`, anything else `Malformed`.
fn reject(e: nom::Err<Error<&[u8]>>) -> Reject {
    match e {
        // The line ended where a field, a separator or a closing quote was still expected.
        nom::Err::Error(e) | nom::Err::Failure(e)
            if e.code == ErrorKind::TakeUntil || SEP.as_bytes().starts_with(e.input) =>
        {
            Reject::Truncated
        }
        _ => Reject::Malformed,
    }
}

fn parse_u64(b: &[u8]) -> Result<u64, Reject> {
    // Plain digits, as nginx writes them, without a detour through `str`; anything else (a
    // sign, 20 digits) as `str::parse` reads it, so the rules path agrees.
    if !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit) {
        return Ok(b.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0')));
    }
    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()).ok_or(Reject::BadNumber)
}

/// `$upstream_response_time` as nginx writes it: `-` or a time (`0.012`) per attempt, joined
/// by `, ` (retries) and ` : ` (internal redirects). `parsers/deis-router.toml` has the same
/// rule as a regex.
fn is_upstream_times(b: &[u8]) -> bool {
    let mut rest = b;
    loop {
        let time = rest.iter().take_while(|c| c.is_ascii_digit() || **c == b'.').count();
        let token = if rest.first() == Some(&b'-') { 1 } else { time };
        let valid = token > 0 && (token == 1 && rest[0] == b'-' || is_time(&rest[..token]));
        if !valid {
            return false;
        }
        rest = &rest[token..];
        if rest.is_empty() {
            return true;
        }
        match rest {
            [b',', b' ', tail @ ..] | [b' ', b':', b' ', tail @ ..] => rest = tail,
            _ => return false,
        }
    }
}

/// `12`, `0.012`: digits, and at most one point between digits.
fn is_time(b: &[u8]) -> bool {
    match b.iter().position(|&c| c == b'.') {
        None => !b.is_empty(),
        Some(p) => p > 0 && p + 1 < b.len() && b[p + 1..].iter().all(u8::is_ascii_digit),
    }
}

fn parse_seconds(b: &[u8]) -> Result<f64, Reject> {
    super::parse_decimal(b).filter(|t| t.is_finite() && *t >= 0.0).ok_or(Reject::BadNumber)
}

/// Classifies one line of a router's log (without its line break).
///
/// A line that starts with `[` is taken for an access line and either parses or is rejected
/// with a reason; any other line (nginx's `2016/05/31 16:56:12 [error] …`) is `Other`.
pub fn classify(line: &[u8]) -> Classified<'_> {
    if line.first() != Some(&b'[') {
        return Classified::Other;
    }
    match parse(line) {
        Ok(record) => Classified::Access(record),
        Err(reason) => Classified::Rejected(reason),
    }
}

/// The fast path with a memory of the last access time: a router writes many lines in each
/// second, all with the same time text, so comparing that text saves parsing it again.
#[derive(Debug, Default)]
pub struct RouterParser {
    /// The last time text that parsed, and its value.
    last: Option<(Vec<u8>, i64)>,
}

impl RouterParser {
    /// As [`classify`].
    pub fn classify<'l>(&mut self, line: &'l [u8]) -> Classified<'l> {
        if line.first() != Some(&b'[') {
            return Classified::Other;
        }
        let mut time_of = |text: &[u8]| match &mut self.last {
            Some((last, ns)) if last.as_slice() == text => Ok(*ns),
            last => {
                let ns = access_time(text)?;
                let (buf, value) = last.get_or_insert_with(|| (Vec::new(), 0));
                buf.clear();
                buf.extend_from_slice(text);
                *value = ns;
                Ok(ns)
            }
        };
        match parse_with(line, &mut time_of) {
            Ok(record) => Classified::Access(record),
            Err(reason) => Classified::Rejected(reason),
        }
    }
}

fn access_time(text: &[u8]) -> Result<i64, Reject> {
    crate::timefmt::parse_access_time(text).map_err(|_| Reject::BadTime)
}

/// Parses one access line.
pub(crate) fn parse(line: &[u8]) -> Result<AccessRecord<'_>, Reject> {
    parse_with(line, &mut access_time)
}

fn parse_with<'l>(
    line: &'l [u8],
    time_of: &mut dyn FnMut(&[u8]) -> Result<i64, Reject>,
) -> Result<AccessRecord<'l>, Reject> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (i, time) =
        terminated(delimited(tag("["), take_until("]"), tag("]")), tag(SEP)).parse(line).map_err(reject)?;
    let time_ns = time_of(time)?;
    let (i, app) = bare(i).map_err(reject)?;
    let (i, _remote_addr) = bare(i).map_err(reject)?;
    let (i, status) = user_and_status(i)?;
    let (i, request) = quoted(i).map_err(reject)?;
    let (i, bytes_sent) = bare(i).map_err(reject)?;
    let (i, _referer) = quoted(i).map_err(reject)?;
    let (i, _user_agent) = quoted(i).map_err(reject)?;
    let (i, _server_name) = quoted(i).map_err(reject)?;
    // `$upstream_addr - $http_host - $upstream_response_time - $request_time`. An interrupted
    // retry's times (`0.001, -`) and a Host header can hold ` - `; the request time never
    // does, so it is what follows the last separator.
    // A plain backwards loop: the request time is a few bytes from the end, and a `memmem`
    // searcher costs more to build than this search.
    let (middle, request_time) =
        match (0..i.len().saturating_sub(2)).rev().find(|&at| i[at..].starts_with(SEP.as_bytes())) {
            Some(at) => (&i[..at], &i[at + SEP.len()..]),
            None => return Err(Reject::Truncated),
        };
    let (rest, _upstream_addr) = bare(middle).map_err(reject)?;
    // The upstream times are what nginx writes there (times or `-`, joined by `, ` and ` : `),
    // so the Host header is everything before the first separator that such a list follows:
    // a Host holding ` - ` stays whole, and the times stay the times.
    let mut after_separators =
        (0..rest.len().saturating_sub(2)).filter(|&at| rest[at..].starts_with(SEP.as_bytes())).peekable();
    if after_separators.peek().is_none() {
        // No room for both fields: the line was cut.
        return Err(Reject::Truncated);
    }
    let upstream_times = after_separators
        .map(|at| &rest[at + SEP.len()..])
        .find(|times| is_upstream_times(times))
        .ok_or(Reject::Malformed)?;

    let status =
        u16::from(status[0] - b'0') * 100 + u16::from(status[1] - b'0') * 10 + u16::from(status[2] - b'0');
    let request_time_text = request_time.trim_ascii_end();
    if request_time_text.contains(&b' ') {
        return Err(Reject::Malformed);
    }
    Ok(AccessRecord {
        time_ns,
        app: std::str::from_utf8(app).map_err(|_| Reject::InvalidUtf8)?,
        status,
        method: Method::of_request(request),
        bytes_sent: parse_u64(bytes_sent)?,
        bytes_sent_text: bytes_sent,
        upstream_times,
        request_time: parse_seconds(request_time_text)?,
        request_time_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_234_941_000_000_000; // date -u -d 2026-11-21T04:22:21 +%s

    // Lines from ../shared/data/router/access.log, expectations read off the lines by eye.
    #[test]
    fn plain_line() {
        let line = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36" - "web.example.com" - 127.0.0.1:19001 - web.example.com - 0.000 - 0.000"#;
        let r = parse(line).unwrap();
        assert_eq!(r.time_ns, T0);
        assert_eq!(r.app, "web");
        assert_eq!(r.status, 200);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.bytes_sent, 169);
        assert_eq!(r.upstream_times, b"0.000");
        assert_eq!(r.request_time, 0.0);
    }

    #[test]
    fn no_upstream() {
        let line = br#"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 404 - "PUT /ms50 HTTP/1.1" - 308 - "https://unknown.example.com/from?page=19" - "curl/8.5.0" - "_" - - - unknown.example.com - - - 0.000"#;
        let r = parse(line).unwrap();
        assert_eq!((r.app, r.status, r.method, r.bytes_sent), ("router-default", 404, Method::Put, 308));
        assert_eq!(r.upstream_times, b"-");
        assert_eq!(r.upstream_time_total(), None);
        assert_eq!(r.upstream_time_compat(), 0.0);
    }

    #[test]
    fn retried_upstreams() {
        let line = br#"[2026-11-21T04:22:32+00:00] - shop - 127.0.0.1 - - - 200 - "DELETE /ms10 HTTP/1.1" - 169 - "-" - "Mozilla/5.0 (compatible; Probe - Health/2.1)" - "shop.example.com" - 127.0.0.1:19009, 127.0.0.1:19001 - shop.example.com - 0.000, 0.010 - 0.010"#;
        let r = parse(line).unwrap();
        assert_eq!(r.time_ns, T0 + 11_000_000_000);
        assert_eq!((r.app, r.status, r.method), ("shop", 200, Method::Delete));
        assert_eq!(r.upstream_times, b"0.000, 0.010");
        assert_eq!(r.upstream_time_compat(), 0.0);
        assert_eq!(r.upstream_time_total(), Some(0.010));
        assert_eq!(r.request_time, 0.010);
    }

    #[test]
    fn escaped_quotes_and_empty_agent() {
        let line = br#"[2026-11-21T04:22:21+00:00] - api - 127.0.0.1 - - - 200 - "GET /fast/\x22quoted\x22 HTTP/1.1" - 169 - "https://api.example.com/from?page=78" - "" - "api.example.com" - 127.0.0.1:19002 - api.example.com - 0.005 - 0.005"#;
        let r = parse(line).unwrap();
        assert_eq!((r.app, r.status, r.bytes_sent, r.request_time), ("api", 200, 169, 0.005));
    }

    #[test]
    fn client_closed_499() {
        let line = br#"[2026-11-21T04:22:36+00:00] - web - 127.0.0.1 - - - 499 - "POST /ms50 HTTP/1.1" - 0 - "-" - "Mozilla/5.0 (compatible; Probe - Health/2.1)" - "web.example.com" - 127.0.0.1:19001 - web.example.com - - - 0.042"#;
        let r = parse(line).unwrap();
        assert_eq!((r.status, r.method, r.bytes_sent, r.request_time), (499, Method::Post, 0, 0.042));
        assert_eq!(r.upstream_time_total(), None);
    }

    #[test]
    fn time_local_variant() {
        // The format of older routers; date -u -d '2016-05-31 16:56:12' +%s → 1464713772.
        let line = br#"[31/May/2016:16:56:12 +0000] - foo - 10.0.0.1 - - - 200 - "GET / HTTP/1.1" - 211 - "-" - "curl/7.43.0" - "foo.example.com" - 10.2.3.4:5000 - foo.example.com - 0.002 - 0.046"#;
        let r = parse(line).unwrap();
        assert_eq!(r.time_ns, 1_464_713_772_000_000_000);
        assert_eq!((r.app, r.bytes_sent, r.request_time), ("foo", 211, 0.046));
    }

    #[test]
    fn bytes_sent_reads_as_str_parse_does() {
        // The rules path reads `$bytes_sent` with `str::parse`; the fast path must agree.
        for (text, want) in [("211", Ok(211)), ("+7", Ok(7)), ("18446744073709551615", Ok(u64::MAX))] {
            assert_eq!(parse_u64(text.as_bytes()), want, "{text}");
        }
        for text in ["", "-1", "1x", "18446744073709551616"] {
            assert_eq!(parse_u64(text.as_bytes()), Err(Reject::BadNumber), "{text}");
        }
    }

    #[test]
    fn the_time_memory_changes_nothing() {
        let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/access.log")).unwrap();
        let mut parser = RouterParser::default();
        let mut lines = 0;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert_eq!(parser.classify(line), classify(line));
            lines += 1;
        }
        assert_eq!(lines, 37_082);
        // A bad time is not remembered as good.
        let bad = br#"[2026-11-21X04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1 - "-" - "c" - "w" - - - w - - - 0.1"#;
        assert_eq!(parser.classify(bad), Classified::Rejected(Reject::BadTime));
        assert_eq!(parser.classify(bad), Classified::Rejected(Reject::BadTime));
        // Nothing remembered yet: an empty time is not the epoch.
        let empty =
            br#"[] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1 - "-" - "c" - "w" - - - w - - - 0.1"#;
        assert_eq!(RouterParser::default().classify(empty), Classified::Rejected(Reject::BadTime));
    }

    #[test]
    fn separators_inside_unquoted_fields() {
        // A client's Basic user `a - b`, an interrupted retry's times `0.001, -`, and the bad
        // Host header nginx logs on its 400: each holds ` - ` outside quotes.
        let user = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - a - b - 200 - "GET / HTTP/1.1" - 169 - "-" - "c" - "w" - 127.0.0.1:1 - w - 0.001 - 0.002"#;
        let r = parse(user).unwrap();
        assert_eq!((r.app, r.status, r.bytes_sent, r.request_time), ("web", 200, 169, 0.002));
        assert_eq!(r.upstream_times, b"0.001");
        let retry = br#"[2026-11-21T04:22:21+00:00] - shop - 127.0.0.1 - - - 499 - "POST / HTTP/1.1" - 0 - "-" - "c" - "s" - 127.0.0.1:1, 127.0.0.1:2 - s - 0.001, - - 0.042"#;
        let r = parse(retry).unwrap();
        assert_eq!((r.status, r.request_time), (499, 0.042));
        assert_eq!(r.upstream_times, b"0.001, -");
        assert_eq!(r.upstream_time_total(), Some(0.001));
        let host = br#"[2026-11-21T04:22:21+00:00] - router-default - 127.0.0.1 - - - 400 - "GET / HTTP/1.1" - 150 - "-" - "c" - "_" - - - bad - host - - - 0.000"#;
        let r = parse(host).unwrap();
        assert_eq!((r.app, r.status, r.bytes_sent, r.request_time), ("router-default", 400, 150, 0.0));
        assert_eq!(r.upstream_times, b"-");
        // A Host with ` - ` on a request that reached an upstream: its time is kept.
        let proxied = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1 - "-" - "c" - "w" - 127.0.0.1:19001 - web.x - y - 0.005 - 0.006"#;
        let r = parse(proxied).unwrap();
        assert_eq!((r.upstream_times, r.request_time), (&b"0.005"[..], 0.006));
        assert_eq!(r.upstream_time_compat(), 0.005);
        // Interrupted attempts and redirects around such a Host.
        let mixed = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 502 - "GET / HTTP/1.1" - 1 - "-" - "c" - "w" - 10.0.0.1:80, 10.0.0.2:80 - a - 0.5 - 0.004, - : 0.010 - 0.020"#;
        let r = parse(mixed).unwrap();
        assert_eq!(r.upstream_times, b"0.004, - : 0.010");
        assert_eq!(r.upstream_time_total(), Some(0.014));
        // Whatever else stands there is not an upstream time: the line is malformed.
        let garbage = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1 - "-" - "c" - "w" - - - w - soon - 0.1"#;
        assert_eq!(parse(garbage).map(|_| ()), Err(Reject::Malformed));
    }

    #[test]
    fn upstream_times_grammar() {
        for ok in ["-", "0.012", "12", "0.001, -", "- : 0.001", "0.004, - : 0.010", "1.5, 2.5, 3.5"] {
            assert!(is_upstream_times(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "soon", "0.", ".5", "1..2", "0.001,", "0.001 -", "- -", "0.1 , 0.2", "--", "1.2.3"] {
            assert!(!is_upstream_times(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn non_access_lines_are_other() {
        let err = b"2026/11/21 04:22:21 [error] 16272#16272: *10 connect() failed (111: Connection refused) while connecting to upstream";
        assert_eq!(classify(err), Classified::Other);
        assert_eq!(classify(b""), Classified::Other);
        assert_eq!(classify(b"2016/05/31 16:56:12 [notice] 1#1: signal process started"), Classified::Other);
    }

    #[test]
    fn rejections_have_reasons() {
        let good = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "curl" - "web.example.com" - 127.0.0.1:19001 - web.example.com - 0.000 - 0.000"#;
        assert!(parse(good).is_ok());
        for cut in [10, 40, 60, 120, good.len() - 12] {
            assert_eq!(classify(&good[..cut]), Classified::Rejected(Reject::Truncated), "cut at {cut}");
        }
        let bad_time = br#"[2026-11-21 04:22] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 169 - "-" - "curl" - "w" - - - w - - - 0.000"#;
        assert_eq!(classify(bad_time), Classified::Rejected(Reject::BadTime));
        let bad_status = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 2000 - "GET / HTTP/1.1" - 169 - "-" - "curl" - "w" - - - w - - - 0.000"#;
        assert_eq!(classify(bad_status), Classified::Rejected(Reject::BadStatus));
        let bad_bytes = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 1x9 - "-" - "curl" - "w" - - - w - - - 0.000"#;
        assert_eq!(classify(bad_bytes), Classified::Rejected(Reject::BadNumber));
        let bad_time_value = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET / HTTP/1.1" - 19 - "-" - "curl" - "w" - - - w - - - NaN"#;
        assert_eq!(classify(bad_time_value), Classified::Rejected(Reject::BadNumber));
        let unquoted = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - GET / HTTP/1.1 - 19 - "-" - "curl" - "w" - - - w - - - 0.1"#;
        assert_eq!(classify(unquoted), Classified::Rejected(Reject::Malformed));
        let latin1 = b"[2026-11-21T04:22:21+00:00] - w\xe9b - 127.0.0.1 - - - 200 - \"GET / HTTP/1.1\" - 19 - \"-\" - \"curl\" - \"w\" - - - w - - - 0.1";
        assert_eq!(classify(latin1), Classified::Rejected(Reject::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_outside_tags_is_fine() {
        let line = b"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - \"GET /\xff\xfe HTTP/1.1\" - 19 - \"-\" - \"\xc3\x28\" - \"w\" - - - w - - - 0.1\r";
        let r = parse(line).unwrap();
        assert_eq!((r.app, r.request_time), ("web", 0.1));
    }

    #[test]
    fn a_mebibyte_line_is_rejected_not_panicking() {
        let mut line = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /"#.to_vec();
        line.resize(1 << 20, b'a');
        assert_eq!(classify(&line), Classified::Rejected(Reject::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = classify(&bytes);
            let mut with_bracket = b"[".to_vec();
            with_bracket.extend_from_slice(&bytes);
            let _ = classify(&with_bracket);
        }

        #[test]
        fn mutated_lines_never_panic(pos in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut line = br#"[2026-11-21T04:22:21+00:00] - web - 127.0.0.1 - - - 200 - "GET /fast HTTP/1.1" - 169 - "-" - "curl" - "web.example.com" - 127.0.0.1:19001 - web.example.com - 0.000, 0.001 - 0.000"#.to_vec();
            let at = pos % line.len();
            line[at] = byte;
            let _ = classify(&line);
        }
    }
}

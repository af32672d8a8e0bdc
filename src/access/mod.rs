//! Access lines: what a router (nginx) wrote for each request, parsed without copying.
//!
//! [`router`] is the hand-written fast path for the Deis router's `upstreaminfo` format;
//! [`rules`] runs the declarative definitions of `parsers/*.toml` (the same format among them,
//! as the reference the fast path is tested against).

pub mod router;
pub mod rules;

/// The HTTP method of a request, from a closed set so that a scanner's garbage methods cannot
/// create new series in InfluxDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    /// Anything else, including `-` and the bytes of a TLS handshake sent to a plain port.
    Other,
    /// Not known: compat points of the old fluentd, which carried no `method` tag. Never
    /// parsed from a line.
    Unknown,
}

impl Method {
    /// The method of an nginx `$request` (`GET /path HTTP/1.1`).
    pub(crate) fn of_request(request: &[u8]) -> Self {
        let token = request.split(|&b| b == b' ').next().unwrap_or_default();
        match token {
            b"GET" => Self::Get,
            b"HEAD" => Self::Head,
            b"POST" => Self::Post,
            b"PUT" => Self::Put,
            b"DELETE" => Self::Delete,
            b"PATCH" => Self::Patch,
            b"OPTIONS" => Self::Options,
            b"CONNECT" => Self::Connect,
            b"TRACE" => Self::Trace,
            _ => Self::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
            Self::Connect => "CONNECT",
            Self::Trace => "TRACE",
            Self::Other => "OTHER",
            Self::Unknown => "unknown",
        }
    }

    /// The method a `method` tag names (what [`Method::as_str`] wrote); anything else is
    /// `OTHER`, so that another producer's tags cannot create series either.
    pub(crate) fn of_tag(tag: &str) -> Self {
        match tag {
            "unknown" => Self::Unknown,
            _ => Self::of_request(tag.as_bytes()),
        }
    }
}

/// One access line, borrowing from the line it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessRecord<'a> {
    /// `$time_iso8601` or `$time_local`, Unix nanoseconds (nginx writes whole seconds).
    pub time_ns: i64,
    /// `$app_name`.
    pub(crate) app: &'a str,
    /// `$status`, always three digits.
    pub(crate) status: u16,
    pub(crate) method: Method,
    /// `$bytes_sent`.
    pub(crate) bytes_sent: u64,
    /// `$bytes_sent` as written, to copy into points without formatting a number.
    pub(crate) bytes_sent_text: &'a [u8],
    /// `$upstream_response_time` as written: `-`, `0.002`, or one time per attempt
    /// (`0.000, 0.012`, and `:` between internal redirects).
    pub(crate) upstream_times: &'a [u8],
    /// `$request_time`, seconds.
    pub(crate) request_time: f64,
    /// `$request_time` as written.
    pub(crate) request_time_text: &'a [u8],
}

impl<'a> AccessRecord<'a> {
    /// `$status` as the three characters of a tag value.
    pub(crate) fn status_text(&self) -> StatusText {
        StatusText::new(self.status)
    }

    /// The upstream time the old fluentd plugin stored: Ruby's `to_f` of the raw field, so the
    /// first attempt's time, and 0.0 for `-`.
    pub(crate) fn upstream_time_compat(&self) -> f64 {
        ruby_to_f(self.upstream_times)
    }

    /// The text [`upstream_time_compat`](Self::upstream_time_compat) reads its number from
    /// (empty for `-`).
    pub(crate) fn upstream_time_compat_text(&self) -> &'a [u8] {
        ruby_to_f_text(self.upstream_times)
    }

    /// The time spent in upstreams, summed over every attempt of a retried request; `None`
    /// when no attempt has a time (`-`).
    pub(crate) fn upstream_time_total(&self) -> Option<f64> {
        sum_of_times(self.upstream_times)
    }
}

/// The times of a list such as `$upstream_response_time` (`0.004, - : 0.010`) added up; `-`
/// and anything else that is not a number is skipped; `None` when nothing is a number.
pub(crate) fn sum_of_times(list: &[u8]) -> Option<f64> {
    let mut total = None;
    for part in list.split(|&b| b == b',' || b == b':') {
        if let Some(t) = parse_decimal(part.trim_ascii()) {
            if t.is_finite() {
                *total.get_or_insert(0.0) += t;
            }
        }
    }
    total
}

/// A three-digit status code as a `&str`, without allocating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusText([u8; 3]);

impl StatusText {
    pub(crate) fn new(status: u16) -> Self {
        let s = status.min(999);
        Self([b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8])
    }

    pub(crate) fn as_str(&self) -> &str {
        // Three ASCII digits are always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("000")
    }
}

/// A decimal number as `str::parse::<f64>` reads it, with a fast path for the plain decimals
/// logs write (`0.046`, `211`): with at most 15 digits and at most 22 after the point, the
/// digits as an integer and the power of ten are both exact doubles, so one division is
/// correctly rounded, the same value the general parser returns (Clinger's fast path).
pub(crate) fn parse_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17,
        1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut frac_digits = None;
    for &c in b {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
                if let Some(f) = frac_digits.as_mut() {
                    *f += 1;
                }
                if digits > 15 {
                    return parse_decimal_slow(b);
                }
            }
            b'.' if frac_digits.is_none() => frac_digits = Some(0usize),
            _ => return parse_decimal_slow(b),
        }
    }
    if digits == 0 {
        return parse_decimal_slow(b);
    }
    let frac_digits = frac_digits.unwrap_or(0);
    match POW10.get(frac_digits) {
        Some(p) => Some(mantissa as f64 / p),
        None => parse_decimal_slow(b),
    }
}

fn parse_decimal_slow(b: &[u8]) -> Option<f64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Ruby's `String#to_f`, which the old fluentd plugin applied to every number: skip leading
/// whitespace, read the longest leading decimal number, 0.0 when there is none.
pub(crate) fn ruby_to_f(b: &[u8]) -> f64 {
    parse_decimal(ruby_to_f_text(b)).filter(|v| v.is_finite()).unwrap_or(0.0)
}

/// The leading number that Ruby's `to_f` reads (empty when there is none).
pub(crate) fn ruby_to_f_text(b: &[u8]) -> &[u8] {
    let b = b.trim_ascii_start();
    let mut end = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let int_digits = b[end..].iter().take_while(|c| c.is_ascii_digit()).count();
    end += int_digits;
    let mut frac_digits = 0;
    if b.get(end) == Some(&b'.') {
        frac_digits = b[end + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac_digits > 0 {
            end += 1 + frac_digits;
        }
    }
    if int_digits + frac_digits == 0 {
        return &b[..0];
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut e = end + 1;
        if matches!(b.get(e), Some(b'+' | b'-')) {
            e += 1;
        }
        let exp_digits = b[e.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp_digits > 0 {
            end = e + exp_digits;
        }
    }
    &b[..end]
}

/// Where a line came from: what its compat points' timestamps are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineOrigin {
    /// The container runtime's time of the record (Docker json-file, CRI), if any.
    pub runtime_time_ns: Option<i64>,
    /// Byte offset of the line's first byte in its file.
    pub file_offset: u64,
}

impl LineOrigin {
    /// The timestamp of the points of one line, unique per line and the same every time the
    /// same line is read again, so a resend overwrites itself instead of counting twice.
    ///
    /// The runtime's nanosecond time is unique per record of a container stream. Raw nginx
    /// files have only whole-second access times, so the line's byte offset (mod 10^9) fills
    /// the nanoseconds: two lines in one second differ in offset.
    pub fn point_timestamp(&self, access_time_ns: i64) -> i64 {
        const NS: i64 = 1_000_000_000;
        self.runtime_time_ns.unwrap_or_else(|| {
            access_time_ns - access_time_ns.rem_euclid(NS) + (self.file_offset % NS as u64) as i64
        })
    }
}

/// Keeps the point timestamps of one file's lines strictly increasing: each line's timestamp
/// is `max(its own, previous + 1)`. Two lines with the same runtime time (or the same access
/// second and the same offset modulo 10⁹) and the same tags would otherwise share a point key
/// in InfluxDB, and one request would overwrite the other.
///
/// The guard is part of a file's checkpoint (see `tail::decoder::Resume`): a resend after a
/// restart starts from the saved value and so gives every line the key it had before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyGuard {
    last_ns: Option<i64>,
}

impl KeyGuard {
    /// A guard that continues after a point stamped `last_ns` (`None`: nothing stamped yet).
    pub fn after(last_ns: Option<i64>) -> Self {
        Self { last_ns }
    }

    /// The timestamp of the next line, whose own is `candidate_ns`.
    pub fn stamp(&mut self, candidate_ns: i64) -> i64 {
        let ts = match self.last_ns {
            Some(last) => candidate_ns.max(last.saturating_add(1)),
            None => candidate_ns,
        };
        self.last_ns = Some(ts);
        ts
    }

    /// The last timestamp given, for a checkpoint.
    pub fn last_ns(&self) -> Option<i64> {
        self.last_ns
    }
}

/// What a line of a router's log turned out to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Classified<'a> {
    Access(AccessRecord<'a>),
    /// Not an access line: nginx's error and notice lines share the router's stderr.
    Other,
    Rejected(Reject),
}

/// Why a line that looked like an access line could not be used. Counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("line longer than max_line_bytes")]
    TooLong,
    #[error("line ends before its last field")]
    Truncated,
    #[error("line does not have the access log layout")]
    Malformed,
    #[error("access time not understood")]
    BadTime,
    #[error("status is not three digits")]
    BadStatus,
    #[error("number not understood")]
    BadNumber,
    #[error("invalid UTF-8 in a field used as a tag")]
    InvalidUtf8,
    #[error("a value line protocol cannot carry (an empty tag, a bad name)")]
    Unencodable,
}

impl Reject {
    pub(crate) const ALL: [Reject; 8] = [
        Reject::TooLong,
        Reject::Truncated,
        Reject::Malformed,
        Reject::BadTime,
        Reject::BadStatus,
        Reject::BadNumber,
        Reject::InvalidUtf8,
        Reject::Unencodable,
    ];

    /// The value of the `reason` label of `logmill_lines_rejected_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::Truncated => "truncated",
            Reject::Malformed => "malformed",
            Reject::BadTime => "bad_time",
            Reject::BadStatus => "bad_status",
            Reject::BadNumber => "bad_number",
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::Unencodable => "unencodable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_to_f_matches_ruby() {
        // Each expectation is what `ruby -e 'p "…".to_f'` prints.
        let cases: [(&[u8], f64); 12] = [
            (b"0.046", 0.046),
            (b"-", 0.0),
            (b"0.002, 0.010", 0.002),
            (b"0.000 : 0.012", 0.0),
            (b"211", 211.0),
            (b"", 0.0),
            (b"  1.5x", 1.5),
            (b".5", 0.5),
            (b"1.", 1.0),
            (b"1e3", 1000.0),
            (b"1e", 1.0),
            (b"-2.25", -2.25),
        ];
        for (input, want) in cases {
            assert_eq!(ruby_to_f(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    fn record(upstream: &[u8]) -> AccessRecord<'_> {
        AccessRecord {
            time_ns: 0,
            app: "a",
            status: 200,
            method: Method::Get,
            bytes_sent: 0,
            bytes_sent_text: b"0",
            upstream_times: upstream,
            request_time: 0.0,
            request_time_text: b"0.000",
        }
    }

    #[test]
    fn upstream_times_of_retries() {
        assert_eq!(record(b"-").upstream_time_total(), None);
        assert_eq!(record(b"0.012").upstream_time_total(), Some(0.012));
        assert_eq!(record(b"0.001, 0.001").upstream_time_total(), Some(0.002));
        assert_eq!(record(b"0.004, - : 0.010").upstream_time_total(), Some(0.014));
        assert_eq!(record(b"0.002, 0.010").upstream_time_compat(), 0.002);
        assert_eq!(record(b"-").upstream_time_compat(), 0.0);
        assert_eq!(record(b"0.002, 0.010").upstream_time_compat_text(), b"0.002");
        assert_eq!(record(b"-").upstream_time_compat_text(), b"");
    }

    proptest::proptest! {
        #[test]
        fn decimals_parse_as_std_does(text in "[0-9]{0,20}(\\.[0-9]{0,25})?|[-+0-9.eE]{0,8}|inf|NaN") {
            let std = text.parse::<f64>().ok();
            let fast = parse_decimal(text.as_bytes());
            proptest::prop_assert_eq!(fast.map(f64::to_bits), std.map(f64::to_bits), "{}", text);
        }
    }

    #[test]
    fn the_key_guard_keeps_keys_unique_and_repeatable() {
        let mut g = KeyGuard::default();
        let keys: Vec<i64> = [5, 5, 5, 9, 7, 20].iter().map(|&t| g.stamp(t)).collect();
        assert_eq!(keys, [5, 6, 7, 9, 10, 20]);
        assert_eq!(g.last_ns(), Some(20));
        // Resumed from a saved value, the same lines get the same keys.
        let mut resumed = KeyGuard::after(Some(7));
        assert_eq!([9, 7, 20].map(|t| resumed.stamp(t)), [9, 10, 20]);
        assert_eq!(KeyGuard::after(Some(i64::MAX)).stamp(0), i64::MAX, "saturates, never wraps");
    }

    #[test]
    fn methods_are_a_closed_set() {
        assert_eq!(Method::of_request(b"GET /x HTTP/1.1"), Method::Get);
        assert_eq!(Method::of_request(b"PATCH /x HTTP/1.1"), Method::Patch);
        assert_eq!(Method::of_request(b"get /x HTTP/1.1"), Method::Other);
        assert_eq!(Method::of_request(b"-"), Method::Other);
        assert_eq!(Method::of_request(b"\\x16\\x03\\x01"), Method::Other);
        assert_eq!(StatusText::new(499).as_str(), "499");
        assert_eq!(StatusText::new(200).as_str(), "200");
    }
}

//! InfluxDB's write API as data: request URLs and headers for 1.x and 2.x, and what an answer
//! means for the batch that caused it. Pure: no I/O.

use std::time::Duration;

/// Which write API, with its target and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Api {
    /// 1.x `POST /write?db=&rp=&precision=ns`.
    V1 { database: String, retention_policy: Option<String> },
    /// 2.x `POST /api/v2/write?org=&bucket=&precision=ns` (also InfluxDB 3 and 1.8+).
    V2 { org: String, bucket: String },
}

/// How requests authenticate. Secrets never appear in URLs or messages.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    /// 1.x user and password, sent as HTTP basic auth.
    Basic {
        username: String,
        password: String,
    },
    /// `Authorization: Token …` (2.x, and 1.8+ with `username:password`).
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic {{ username: {username:?}, password: *** }}"),
            Auth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl Auth {
    /// The user to name in errors, when there is one.
    pub(crate) fn username(&self) -> Option<&str> {
        match self {
            Auth::Basic { username, .. } => Some(username),
            _ => None,
        }
    }
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters pass).
pub(crate) fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The write URL under `base` (`http://host:8086`, no trailing slash). logmill stamps every
/// point in nanoseconds, so precision is always `ns`.
pub(crate) fn write_url(base: &str, api: &Api) -> String {
    match api {
        Api::V1 { database, retention_policy } => {
            let mut url = format!("{base}/write?db={}", encode_query_value(database));
            if let Some(rp) = retention_policy {
                url.push_str("&rp=");
                url.push_str(&encode_query_value(rp));
            }
            url.push_str("&precision=ns");
            url
        }
        Api::V2 { org, bucket } => format!(
            "{base}/api/v2/write?org={}&bucket={}&precision=ns",
            encode_query_value(org),
            encode_query_value(bucket)
        ),
    }
}

/// Quotes an InfluxQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The InfluxQL statements that create a 1.x database and, when a duration is configured, its
/// retention policy (as the default, so points written without `rp` land in it too).
pub(crate) fn create_statements(database: &str, retention: Option<(&str, &str)>) -> Vec<String> {
    let mut statements = vec![format!("CREATE DATABASE {}", quote_ident(database))];
    if let Some((rp, duration)) = retention {
        statements.push(format!(
            "CREATE RETENTION POLICY {} ON {} DURATION {duration} REPLICATION 1 DEFAULT",
            quote_ident(rp),
            quote_ident(database)
        ));
    }
    statements
}

/// What an answer means for the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// 204: every point is stored.
    Written,
    /// 400/422 `partial write`: the valid points ARE stored, `dropped` were refused. Never
    /// resent: the same bytes would be refused again.
    Partial { dropped: u64, message: String },
    /// 404 `database not found` (1.x): create it when allowed, then resend.
    DatabaseNotFound,
    /// 413: split the batch and resend the halves.
    TooLarge,
    /// 5xx, 429, network: resend the same bytes later, after `after` when the server said so.
    Retry { after: Option<Duration>, reason: String },
    /// Any other refusal: reported and counted, never retried.
    Rejected { status: u16, message: String },
}

/// The `error` (1.x) or `message` (2.x) of a JSON error body, or the body itself.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let text = parsed
        .as_ref()
        .and_then(|v| v.get("error").or_else(|| v.get("message")))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body.trim().to_owned());
    // An error body can be large (every unparsable line quoted); keep messages readable.
    let mut end = text.len().min(500);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// `dropped=N` of a 1.x partial write message.
fn dropped_count(message: &str) -> Option<u64> {
    let at = message.rfind("dropped=")? + "dropped=".len();
    let digits: String = message[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `Retry-After` in seconds (the HTTP-date form is rare from InfluxDB and taken as absent).
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s.min(3600)))
}

/// Classifies an answer to a write.
pub(crate) fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Written,
        400 | 422 => {
            let message = error_message(body);
            if message.contains("partial write") {
                // A partial write drops at least one point, whatever it says: 1.6 reports
                // `dropped=0` for unparsable lines, and 2.x counts the written, not the dropped.
                Verdict::Partial { dropped: dropped_count(&message).unwrap_or(1).max(1), message }
            } else {
                Verdict::Rejected { status, message }
            }
        }
        404 => {
            let message = error_message(body);
            if message.contains("database not found") {
                Verdict::DatabaseNotFound
            } else {
                Verdict::Rejected { status, message }
            }
        }
        413 => Verdict::TooLarge,
        408 | 429 | 500..=599 => {
            Verdict::Retry { after: retry_after, reason: format!("{status}: {}", error_message(body)) }
        }
        _ => Verdict::Rejected { status, message: error_message(body) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_both_apis() {
        let v1 = Api::V1 { database: "kubernetes".into(), retention_policy: None };
        assert_eq!(write_url("http://h:8086", &v1), "http://h:8086/write?db=kubernetes&precision=ns");
        let v1rp = Api::V1 { database: "my db".into(), retention_policy: Some("30d&x".into()) };
        assert_eq!(write_url("http://h", &v1rp), "http://h/write?db=my%20db&rp=30d%26x&precision=ns");
        let v2 = Api::V2 { org: "acme".into(), bucket: "k8s/raw".into() };
        assert_eq!(
            write_url("https://h", &v2),
            "https://h/api/v2/write?org=acme&bucket=k8s%2Fraw&precision=ns"
        );
    }

    #[test]
    fn create_statements_quote_names() {
        assert_eq!(create_statements("kubernetes", None), ["CREATE DATABASE \"kubernetes\""]);
        assert_eq!(
            create_statements("a\"b", Some(("week", "7d"))),
            [
                "CREATE DATABASE \"a\\\"b\"",
                "CREATE RETENTION POLICY \"week\" ON \"a\\\"b\" DURATION 7d REPLICATION 1 DEFAULT"
            ]
        );
    }

    // Bodies as InfluxDB 1.6 and 2.x write them (the 1.x ones captured from the influxd the
    // tests run; the 2.x ones from its API documentation).
    #[test]
    fn answers() {
        assert_eq!(classify(204, "", None), Verdict::Written);
        let conflict = r#"{"error":"partial write: field type conflict: input field \"value\" on measurement \"m\" is type integer, already exists as type float dropped=1"}"#;
        assert!(matches!(classify(400, conflict, None), Verdict::Partial { dropped: 1, .. }));
        let v2_partial = r#"{"code":"invalid","message":"partial write error (5 written): unable to parse 'x': missing fields"}"#;
        assert!(matches!(classify(400, v2_partial, None), Verdict::Partial { dropped: 1, .. }));
        let unparsable_among_good = r#"{"error":"partial write: unable to parse 'this is not line protocol': invalid field format dropped=0"}"#;
        assert!(matches!(classify(400, unparsable_among_good, None), Verdict::Partial { dropped: 1, .. }));
        let unparsable = r#"{"error":"unable to parse 'garbage': missing fields"}"#;
        assert_eq!(
            classify(400, unparsable, None),
            Verdict::Rejected { status: 400, message: "unable to parse 'garbage': missing fields".into() }
        );
        assert_eq!(
            classify(404, r#"{"error":"database not found: \"nope\""}"#, None),
            Verdict::DatabaseNotFound
        );
        assert!(matches!(
            classify(404, r#"{"code":"not found","message":"bucket \"b\" not found"}"#, None),
            Verdict::Rejected { status: 404, .. }
        ));
        assert_eq!(classify(413, "", None), Verdict::TooLarge);
        let after = Some(Duration::from_secs(3));
        assert!(
            matches!(classify(503, "", after), Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        assert!(matches!(classify(429, "", None), Verdict::Retry { after: None, .. }));
        assert!(matches!(classify(500, "{\"error\":\"timeout\"}", None), Verdict::Retry { .. }));
        assert_eq!(
            classify(401, r#"{"error":"authorization failed"}"#, None),
            Verdict::Rejected { status: 401, message: "authorization failed".into() }
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let basic = Auth::Basic { username: "admin".into(), password: "hunter2".into() };
        let shown = format!("{basic:?} {:?}", Auth::Token("tok-123".into()));
        assert!(!shown.contains("hunter2") && !shown.contains("tok-123"), "{shown}");
        assert!(shown.contains("admin"));
    }
}

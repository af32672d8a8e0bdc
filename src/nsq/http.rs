//! The HTTP side of NSQ: base URLs from the addresses users configure, reading small answers
//! with a size cap, and creating topics and channels on nsqd up front.
//!
//! A channel that does not exist yet misses every message published before it does, so the
//! consumer creates its topic and channel on each nsqd it knows before subscribing
//! (`POST /topic/create`, `POST /channel/create` on nsqd's HTTP port, as `nsq_to_file` and
//! friends do). nsqd answers 200 with an empty body on success (also when the topic or channel
//! already exists) and `{"message":"INVALID_TOPIC"}`-style JSON with a 4xx/5xx otherwise
//! (nsqio/nsq v1.3.0, `nsqd/http.go` `doCreateTopic`/`doCreateChannel`,
//! `internal/http_api/api_response.go` `RespondV1`).

use reqwest::Url;

/// The largest answer read from nsqd or nsqlookupd. Their JSON answers are a few KiB; anything
/// near this is not one of them, and is not worth buffering.
pub(crate) const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Longest piece of an unexpected answer quoted in an error message.
const QUOTE_MAX_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("`{address}` is not an HTTP address (`host:port` or `http://host:port`): {reason}")]
    Address { address: String, reason: String },
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// The base URL of an nsqd or nsqlookupd HTTP address: `host:port` (as nsqd's and go-nsq's
/// flags take them) or `http://host:port` / `https://host:port`, optionally with a path prefix
/// (a reverse proxy). No query, no fragment; a trailing `/` is dropped.
pub(crate) fn base_url(address: &str) -> Result<Url, HttpError> {
    let bad = |reason: &str| HttpError::Address { address: address.to_owned(), reason: reason.to_owned() };
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let with_scheme = if trimmed.contains("://") { trimmed.to_owned() } else { format!("http://{trimmed}") };
    let mut url = Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base address takes no query or fragment"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// `base` + `/path` + the query pairs, percent-encoded.
pub(crate) fn endpoint(base: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// What a failed request says: reqwest's message and its causes (connection refused, timed
/// out…), without the URL, which the caller's error names once.
pub(crate) fn describe(error: reqwest::Error) -> String {
    crate::errors::chain(&error.without_url())
}

/// Reads a response's status and body, at most [`MAX_ANSWER_BYTES`] of it.
pub(crate) async fn read_answer(
    url: &Url,
    mut response: reqwest::Response,
) -> Result<(u16, Vec<u8>), HttpError> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(HttpError::TooLarge { url: url.to_string(), limit: MAX_ANSWER_BYTES });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, body)),
            Err(e) => return Err(HttpError::Request { url: url.to_string(), reason: describe(e) }),
        }
    }
}

/// The reason in an NSQ error answer: `{"message":"…"}` (v1 API), `{"status_txt":"…"}` (the
/// wrapped pre-1.0 API), else the start of the body as text.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorAnswer {
        message: Option<String>,
        status_txt: Option<String>,
    }
    if let Ok(ErrorAnswer { message, status_txt }) = serde_json::from_slice::<ErrorAnswer>(body) {
        if let Some(text) = message.or(status_txt).filter(|t| !t.is_empty()) {
            return text;
        }
    }
    quote(body)
}

/// The start of a body, as text, for an error message.
pub(crate) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Creates `topic` on the nsqd whose HTTP API is at `nsqd_http` (`host:port` or a URL), then
/// `channel` on it when given. Both are idempotent on nsqd: creating what exists succeeds.
///
/// `http` should carry a timeout (the caller's client; nsqd answers these at once).
pub async fn create_topic_and_channel(
    http: &reqwest::Client,
    nsqd_http: &str,
    topic: &str,
    channel: Option<&str>,
) -> Result<(), HttpError> {
    let base = base_url(nsqd_http)?;
    post_ok(http, endpoint(&base, "/topic/create", &[("topic", topic)])).await?;
    if let Some(channel) = channel {
        post_ok(http, endpoint(&base, "/channel/create", &[("topic", topic), ("channel", channel)])).await?;
    }
    tracing::debug!(nsqd = %base, topic, channel, "topic and channel created");
    Ok(())
}

/// POSTs an empty body; anything but 200 is an error carrying nsqd's reason.
async fn post_ok(http: &reqwest::Client, url: Url) -> Result<(), HttpError> {
    let response = http
        .post(url.clone())
        .send()
        .await
        .map_err(|e| HttpError::Request { url: url.to_string(), reason: describe(e) })?;
    let (status, body) = read_answer(&url, response).await?;
    if status == 200 {
        return Ok(());
    }
    Err(HttpError::Status { url: url.to_string(), status, message: error_message(&body) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let ok = |a: &str| base_url(a).unwrap().to_string();
        assert_eq!(ok("nsqlookupd:4161"), "http://nsqlookupd:4161/");
        assert_eq!(ok("http://10.0.0.1:4161/"), "http://10.0.0.1:4161/");
        assert_eq!(ok(" https://lookupd.example/nsq/ "), "https://lookupd.example/nsq");
        assert_eq!(ok("[::1]:4161"), "http://[::1]:4161/");
        for bad in ["", "ftp://h:1", "http://h:4161/?x=1", "http://:4161", "h:notaport"] {
            let e = base_url(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{}`", bad)), "{e}");
        }
    }

    #[test]
    fn endpoints_are_percent_encoded() {
        let base = base_url("h:4151").unwrap();
        assert_eq!(
            endpoint(&base, "/channel/create", &[("topic", "a b&c"), ("channel", "x#ephemeral")]).as_str(),
            "http://h:4151/channel/create?topic=a+b%26c&channel=x%23ephemeral"
        );
        let prefixed = base_url("http://proxy/nsq/").unwrap();
        assert_eq!(
            endpoint(&prefixed, "/lookup", &[("topic", "logs")]).as_str(),
            "http://proxy/nsq/lookup?topic=logs"
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(error_message(br#"{"message":"INVALID_TOPIC"}"#), "INVALID_TOPIC");
        assert_eq!(
            error_message(br#"{"status_code":500,"status_txt":"TOPIC_NOT_FOUND","data":null}"#),
            "TOPIC_NOT_FOUND"
        );
        assert_eq!(error_message(b"<html>bad gateway</html>"), "<html>bad gateway</html>");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "é".repeat(500);
        assert_eq!(quote(long.as_bytes()).chars().count(), QUOTE_MAX_CHARS + 1);
    }
}

//! nsqlookupd discovery: which nsqd hold a topic, as a [`watch`] of their TCP addresses.
//!
//! [`Discovery::start`] spawns one task that asks every configured nsqlookupd
//! `GET /lookup?topic=T` (with `Accept: application/vnd.nsq; version=1.0`) at once, right away
//! and then every `poll_interval` (± half of `poll_jitter`), and publishes the union of the
//! producers they name, `host:port`, whenever that set changes.
//!
//! # When a lookupd fails
//!
//! Each lookupd's last good answer is remembered. A poll of it that fails (no connection,
//! timeout, 5xx, an answer that is not a `/lookup` answer) leaves that answer in place for up
//! to [`LookupdSettings::max_failed_polls`] consecutive failed polls; the next failure forgets
//! it, and the producers only it named leave the set. So one flapping or restarting lookupd
//! does not make producers vanish, and one that is gone for good stops vouching for its
//! producers after `max_failed_polls + 1` polls (with the defaults, 3 + 1 polls of 60 s).
//!
//! A producer leaves the set when no remembered answer names it: nsqlookupd itself drops an
//! nsqd that stops pinging it (`--inactive-producer-timeout`, 300 s by default) or is
//! tombstoned. When no lookupd has a remembered answer at all (every one down for longer than
//! the bound, or none has answered yet), discovery knows nothing, and the set stays as it was
//! rather than emptying: an outage of the lookupds is not evidence that the nsqd are gone.
//!
//! A lookupd that answers "no such topic" (`404 {"message":"TOPIC_NOT_FOUND"}`, or the wrapped
//! pre-1.0 `{"status_code":500,"status_txt":"TOPIC_NOT_FOUND",…}`) has answered: no producers.
//!
//! The pure parts, [`parse_lookup_response`] and [`merge`] (with [`LookupdView`]), hold the
//! rules; the task only does the I/O and the clock.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{self, HttpError};
use crate::backoff::{jittered, random_unit};
use crate::telemetry::{Counter, Gauge, Telemetry};

/// go-nsq's `lookupd_poll_interval` default.
#[cfg(test)]
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// go-nsq's `lookupd_poll_jitter` default (there it delays the first poll by up to 30 % of the
/// interval; here every wait is spread over a window 30 % of the interval wide).
pub(crate) const DEFAULT_POLL_JITTER: f64 = 0.3;
/// A `/lookup` is one map lookup on the lookupd; a lookupd that takes longer than this is as
/// good as down.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed polls through which a lookupd's last answer is kept.
pub(crate) const DEFAULT_MAX_FAILED_POLLS: u32 = 3;

/// The `Accept` value that makes every nsqlookupd since v0.3 answer in the unwrapped v1 shape
/// (older ones ignore it and wrap; both are parsed).
const ACCEPT_V1: &str = "application/vnd.nsq; version=1.0";

/// Validated discovery settings.
#[derive(Debug, Clone)]
pub struct LookupdSettings {
    /// Base URLs of the lookupds' HTTP APIs.
    pub(crate) lookupds: Vec<Url>,
    pub(crate) topic: String,
    pub(crate) poll_interval: Duration,
    /// Width of the window each wait is drawn from, as a fraction of `poll_interval` (0.3: each
    /// wait is between 85 % and 115 % of the interval), so consumers restarted together do not
    /// poll in step.
    pub(crate) poll_jitter: f64,
    /// Timeout of one `/lookup` request.
    pub timeout: Duration,
    /// See the module documentation: a lookupd's last answer outlives this many consecutive
    /// failed polls, and is forgotten at the next.
    pub max_failed_polls: u32,
}

impl LookupdSettings {
    /// Settings with the defaults above, from the configured addresses (`host:port` or
    /// `http://host:port`, as `lookupd_http_addresses` holds them).
    pub fn new(addresses: &[String], topic: &str, poll_interval: Duration) -> Result<Self, HttpError> {
        if addresses.is_empty() {
            return Err(HttpError::Address {
                address: String::new(),
                reason: "discovery needs at least one nsqlookupd address".into(),
            });
        }
        let mut lookupds = Vec::with_capacity(addresses.len());
        for address in addresses {
            let url = http::base_url(address)?;
            // The same lookupd twice would only be asked twice.
            if !lookupds.contains(&url) {
                lookupds.push(url);
            }
        }
        Ok(Self {
            lookupds,
            topic: topic.to_owned(),
            poll_interval: poll_interval.max(Duration::from_millis(1)),
            poll_jitter: DEFAULT_POLL_JITTER,
            timeout: DEFAULT_TIMEOUT,
            max_failed_polls: DEFAULT_MAX_FAILED_POLLS,
        })
    }
}

/// One nsqd as nsqlookupd lists it (`PeerInfo` in nsqio/nsq `nsqlookupd/registration_db.go`;
/// `remote_address`, `topology_*` and unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Producer {
    /// The address nsqd says clients should use (`--broadcast-address`, its host name by
    /// default).
    #[serde(default)]
    pub(crate) broadcast_address: String,
    #[serde(default)]
    pub(crate) hostname: String,
    pub(crate) tcp_port: u16,
    #[serde(default)]
    pub(crate) http_port: u16,
    #[serde(default)]
    pub(crate) version: String,
}

impl Producer {
    /// `host:port` of nsqd's TCP protocol; an IPv6 host in brackets, as Go's
    /// `net.JoinHostPort` (which go-nsq uses) writes it.
    pub(crate) fn tcp_address(&self) -> String {
        join_host_port(self.host(), self.tcp_port)
    }

    /// `host:port` of nsqd's HTTP API, when the lookupd reported one.
    #[cfg(test)]
    fn http_address(&self) -> Option<String> {
        (self.http_port != 0).then(|| join_host_port(self.host(), self.http_port))
    }

    /// `broadcast_address`, or the host name when it is empty (as nsqjs does).
    fn host(&self) -> &str {
        if self.broadcast_address.is_empty() {
            &self.hostname
        } else {
            &self.broadcast_address
        }
    }
}

/// `host:port`, the host bracketed when it is an IPv6 address (it holds a `:`) and not
/// bracketed already.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why one `/lookup` answer gave no producers. Pure: the caller adds the lookupd's URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LookupError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("not a /lookup answer: {0}")]
    Malformed(String),
    #[error("a producer without an address: {0}")]
    NoAddress(String),
}

/// A failed poll of one lookupd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PollError {
    #[error("nsqlookupd {url}: {source}")]
    Answer { url: String, source: LookupError },
    #[error("nsqlookupd {0}")]
    Http(#[from] HttpError),
}

/// The producers of a `/lookup?topic=` answer, from its HTTP status and body.
///
/// Shapes, from nsqio/nsq:
/// - v1 (nsqlookupd ≥ 0.3 asked with the v1 `Accept`, and every nsqlookupd ≥ 1.0): 200
///   `{"channels":[…],"producers":[{…}]}` — `nsqlookupd/http.go` `doLookup` at v1.3.0
///   (commit 3103474b), through `internal/http_api/api_response.go` `RespondV1`; errors are
///   `{"message":"TOPIC_NOT_FOUND"}` with the error's own status (404 here).
/// - wrapped (before 1.0 without that `Accept`): `{"status_code":200,"status_txt":"OK",
///   "data":{"channels":[…],"producers":[…]}}` — `Respond` in `internal/http_api/
///   api_response.go` before commit 2d7f2332 ("remove deprecated features", 2015), and the
///   example answer of nsqlookupd 0.2.18 in gist mreiferson/5548351. Its `NegotiateVersion`
///   answered every error as HTTP 500 `{"status_code":500,"status_txt":"TOPIC_NOT_FOUND",
///   "data":null}` ("always returns 500 for backwards compatibility").
///
/// `TOPIC_NOT_FOUND` in either shape is an answer with no producers. Any other non-200, or a
/// 404 whose body is not NSQ's (a proxy's page: a wrong address), is an error. `producers`
/// may be `null` (a Go nil slice) but not missing.
pub(crate) fn parse_lookup_response(status: u16, body: &[u8]) -> Result<Vec<Producer>, LookupError> {
    #[derive(Deserialize)]
    struct Answer {
        // `Option<Option<…>>` tells a missing `producers` (not an answer) from `null` (none).
        #[serde(default, deserialize_with = "present")]
        producers: Option<Option<Vec<serde_json::Value>>>,
        status_code: Option<i64>,
        status_txt: Option<String>,
        #[serde(default, deserialize_with = "present")]
        data: Option<Option<Box<Answer>>>,
        message: Option<String>,
    }
    fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        T::deserialize(d).map(Some)
    }

    let parsed = serde_json::from_slice::<Answer>(body);
    let reason = match &parsed {
        Ok(a) => a.message.as_deref().or(a.status_txt.as_deref()),
        Err(_) => None,
    };
    if reason == Some("TOPIC_NOT_FOUND") {
        return Ok(Vec::new());
    }
    if status != 200 {
        return Err(LookupError::Status { status, message: http::error_message(body) });
    }
    let answer = parsed.map_err(|e| LookupError::Malformed(format!("{e}: {}", http::quote(body))))?;
    let answer = match answer.status_code {
        None => answer,
        Some(200) => match answer.data {
            Some(Some(data)) => *data,
            _ => return Err(LookupError::Malformed("wrapped answer without `data`".into())),
        },
        Some(code) => {
            let message = answer.status_txt.unwrap_or_default();
            return Err(LookupError::Status { status: u16::try_from(code).unwrap_or(0), message });
        }
    };
    let producers = match answer.producers {
        None => return Err(LookupError::Malformed(format!("no `producers`: {}", http::quote(body)))),
        Some(None) => return Ok(Vec::new()),
        Some(Some(list)) => list,
    };
    // One unusable entry must not hide the good ones (the lookupd would then count as failed,
    // or, remembered, freeze its set): skip it with a warning. Only an answer whose every entry
    // is unusable is an error.
    let mut good = Vec::with_capacity(producers.len());
    let mut first_error = None;
    for value in producers {
        let text = value.to_string();
        let checked = serde_json::from_value::<Producer>(value)
            .map_err(|e| LookupError::Malformed(format!("producer {text}: {e}")))
            .and_then(|p| {
                if p.host().is_empty() || p.tcp_port == 0 {
                    Err(LookupError::NoAddress(text))
                } else {
                    Ok(p)
                }
            });
        match checked {
            Ok(p) => good.push(p),
            Err(e) => {
                tracing::warn!(error = %e, "nsqlookupd answer: skipping an unusable producer");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if good.is_empty() => Err(e),
        _ => Ok(good),
    }
}

/// What discovery remembers of one lookupd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LookupdView {
    /// TCP addresses of its last good answer; `None` before the first, or once forgotten.
    pub(crate) answer: Option<BTreeSet<String>>,
    /// Consecutive failed polls since that answer.
    pub(crate) failed_polls: u32,
}

impl LookupdView {
    pub(crate) fn answered(&mut self, producers: &[Producer]) {
        self.answer = Some(producers.iter().map(Producer::tcp_address).collect());
        self.failed_polls = 0;
    }

    /// Counts a failed poll; forgets the answer past `max_failed_polls`. Returns whether it
    /// was forgotten by this call.
    pub(crate) fn failed(&mut self, max_failed_polls: u32) -> bool {
        self.failed_polls = self.failed_polls.saturating_add(1);
        self.failed_polls > max_failed_polls && self.answer.take().is_some()
    }
}

/// The union of the remembered answers; `None` when no lookupd has one (nothing is known:
/// the caller keeps its set).
pub(crate) fn merge(views: &[LookupdView]) -> Option<BTreeSet<String>> {
    let mut known = views.iter().filter_map(|v| v.answer.as_ref()).peekable();
    known.peek()?;
    Some(known.flatten().cloned().collect())
}

#[derive(Clone)]
struct Counters {
    polls_ok: Counter,
    polls_error: Counter,
    producers: Gauge,
}

impl Counters {
    fn new(t: &Telemetry, topic: &str) -> Self {
        let polls = |result| {
            t.counter(
                "logmill_nsq_lookupd_polls_total",
                "nsqlookupd /lookup requests, by result (ok includes TOPIC_NOT_FOUND).",
                &[("result", result)],
            )
        };
        Self {
            polls_ok: polls("ok"),
            polls_error: polls("error"),
            // Per topic: the consumer discovers each of its topics separately.
            producers: t.gauge(
                "logmill_nsq_lookupd_producers",
                "nsqd producing a topic, as discovered from nsqlookupd.",
                &[("topic", topic)],
            ),
        }
    }
}

/// nsqlookupd discovery; see the module documentation.
pub struct Discovery;

impl Discovery {
    /// Starts polling on `tracker` until `cancel` fires or every receiver is dropped. The
    /// receiver starts at the empty set; each change of the union is sent once.
    ///
    /// `http`: a client to share (its own timeout is overridden per request by
    /// `settings.timeout`); `None` builds one.
    pub fn start(
        settings: LookupdSettings,
        http: Option<reqwest::Client>,
        telemetry: &Telemetry,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<watch::Receiver<BTreeSet<String>>, HttpError> {
        let http = match http {
            Some(client) => client,
            None => reqwest::Client::builder()
                .timeout(settings.timeout)
                .build()
                .map_err(|e| HttpError::Client(http::describe(e)))?,
        };
        let (tx, rx) = watch::channel(BTreeSet::new());
        let counters = Counters::new(telemetry, &settings.topic);
        let span = tracing::info_span!("lookupd", topic = %settings.topic);
        let task = Task { settings, http, counters, tx, cancel };
        tracker.spawn(tracing::Instrument::instrument(task.run(), span));
        Ok(rx)
    }
}

struct Task {
    settings: LookupdSettings,
    http: reqwest::Client,
    counters: Counters,
    tx: watch::Sender<BTreeSet<String>>,
    cancel: CancellationToken,
}

impl Task {
    async fn run(self) {
        let mut views = vec![LookupdView::default(); self.settings.lookupds.len()];
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = self.poll_round(&mut views) => {}
            }
            let wait = jittered(self.settings.poll_interval, self.settings.poll_jitter, random_unit());
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Asks every lookupd at once and merges once all have answered or timed out: one
    /// decision per round, so lookupds that fail together are forgotten together (merging
    /// each answer as it came would publish the set of whichever was forgotten last). A slow
    /// lookupd delays the round by at most `timeout`.
    async fn poll_round(&self, views: &mut [LookupdView]) {
        let mut requests = JoinSet::new();
        for (index, base) in self.settings.lookupds.iter().enumerate() {
            let url = http::endpoint(base, "/lookup", &[("topic", &self.settings.topic)]);
            let http = self.http.clone();
            let timeout = self.settings.timeout;
            requests.spawn(async move { (index, lookup(&http, url, timeout).await) });
        }
        while let Some(joined) = requests.join_next().await {
            // The request futures do not panic; a JoinError could only be one.
            let Ok((index, result)) = joined else { continue };
            let view = &mut views[index];
            let base = &self.settings.lookupds[index];
            match result {
                Ok(producers) => {
                    self.counters.polls_ok.add(1);
                    if view.failed_polls > 0 {
                        tracing::info!(lookupd = %base, failed_polls = view.failed_polls, "nsqlookupd answers again");
                    }
                    view.answered(&producers);
                }
                Err(error) => {
                    self.counters.polls_error.add(1);
                    let forgotten = view.failed(self.settings.max_failed_polls);
                    tracing::warn!(
                        lookupd = %base,
                        %error,
                        failed_polls = view.failed_polls,
                        max_failed_polls = self.settings.max_failed_polls,
                        "nsqlookupd poll failed"
                    );
                    if forgotten {
                        tracing::warn!(lookupd = %base, "forgetting this nsqlookupd's producers");
                    }
                }
            }
        }
        self.publish(views);
    }

    fn publish(&self, views: &[LookupdView]) {
        let Some(set) = merge(views) else { return };
        self.counters.producers.set(set.len() as u64);
        self.tx.send_if_modified(|current| {
            if *current == set {
                return false;
            }
            let added: Vec<_> = set.difference(current).collect();
            let removed: Vec<_> = current.difference(&set).collect();
            tracing::info!(?added, ?removed, producers = set.len(), "nsqd producers changed");
            *current = set;
            true
        });
    }
}

/// One `GET /lookup`.
async fn lookup(http: &reqwest::Client, url: Url, timeout: Duration) -> Result<Vec<Producer>, PollError> {
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, ACCEPT_V1)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| HttpError::Request { url: url.to_string(), reason: http::describe(e) })?;
    let (status, body) = http::read_answer(&url, response).await?;
    parse_lookup_response(status, &body).map_err(|source| PollError::Answer { url: url.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The producer of nsqlookupd v1.3.0's `PeerInfo` JSON, every field it writes.
    const PEER_V1: &str = r#"{"remote_address":"10.2.0.7:52134","hostname":"nsqd-0","broadcast_address":"10.2.0.7","tcp_port":4150,"http_port":4151,"version":"1.3.0","topology_zone":"","topology_region":""}"#;

    fn addresses(producers: &[Producer]) -> Vec<String> {
        producers.iter().map(Producer::tcp_address).collect()
    }

    #[test]
    fn an_unusable_producer_does_not_hide_the_others() {
        let body = br#"{"channels":[],"producers":[
            {"broadcast_address":"a","hostname":"a","tcp_port":4150,"http_port":4151,"version":"1.3.0"},
            {"broadcast_address":"b","tcp_port":"not a port"},
            {"tcp_port":4150}
        ]}"#;
        let producers = parse_lookup_response(200, body).unwrap();
        assert_eq!(producers.len(), 1);
        assert_eq!(producers[0].tcp_address(), "a:4150");
    }

    #[test]
    fn v1_answer() {
        let body = format!(
            r#"{{"channels":["logmill","consume"],"producers":[{PEER_V1},{{"remote_address":"10.2.0.8:40000","hostname":"nsqd-1","broadcast_address":"nsqd-1.nsqd","tcp_port":4250,"http_port":4251,"version":"1.2.1"}}]}}"#
        );
        let producers = parse_lookup_response(200, body.as_bytes()).unwrap();
        assert_eq!(
            producers[0],
            Producer {
                broadcast_address: "10.2.0.7".into(),
                hostname: "nsqd-0".into(),
                tcp_port: 4150,
                http_port: 4151,
                version: "1.3.0".into(),
            }
        );
        assert_eq!(addresses(&producers), ["10.2.0.7:4150", "nsqd-1.nsqd:4250"]);
        assert_eq!(producers[1].http_address().as_deref(), Some("nsqd-1.nsqd:4251"));
    }

    #[test]
    fn wrapped_answer() {
        // gist mreiferson/5548351, "example response from nsqlookupd" (v0.2.18).
        let body = br#"{
            "status_code": 200,
            "status_txt": "OK",
            "data": {
                "channels": ["archive", "science", "metrics"],
                "producers": [
                    {"broadcast_address": "clicksapi01.routable.domain.net", "hostname": "clicksapi01.domain.net",
                     "tcp_port": 4150, "http_port": 4151, "version": "0.2.18"},
                    {"broadcast_address": "clicksapi02.routable.domain.net", "hostname": "clicksapi02.domain.net",
                     "tcp_port": 4150, "http_port": 4151, "version": "0.2.18"}
                ]
            }
        }"#;
        assert_eq!(
            addresses(&parse_lookup_response(200, body).unwrap()),
            ["clicksapi01.routable.domain.net:4150", "clicksapi02.routable.domain.net:4150"]
        );
    }

    #[test]
    fn topic_not_found_is_no_producers() {
        // v1: `http_api.Err{404, "TOPIC_NOT_FOUND"}` through RespondV1.
        assert_eq!(parse_lookup_response(404, br#"{"message":"TOPIC_NOT_FOUND"}"#), Ok(vec![]));
        // Wrapped: NegotiateVersion answered every error as a 500.
        let wrapped = br#"{"status_code":500,"status_txt":"TOPIC_NOT_FOUND","data":null}"#;
        assert_eq!(parse_lookup_response(500, wrapped), Ok(vec![]));
        let wrapped_404 = br#"{"status_code":404,"status_txt":"TOPIC_NOT_FOUND","data":null}"#;
        assert_eq!(parse_lookup_response(404, wrapped_404), Ok(vec![]));
        // A topic with no live producer: empty list, or a Go nil slice.
        assert_eq!(parse_lookup_response(200, br#"{"channels":[],"producers":[]}"#), Ok(vec![]));
        assert_eq!(parse_lookup_response(200, br#"{"channels":null,"producers":null}"#), Ok(vec![]));
    }

    #[test]
    fn errors() {
        let err = |status, body: &[u8]| parse_lookup_response(status, body).unwrap_err();
        assert_eq!(
            err(500, br#"{"message":"INTERNAL_ERROR"}"#),
            LookupError::Status { status: 500, message: "INTERNAL_ERROR".into() }
        );
        assert_eq!(
            err(400, br#"{"message":"MISSING_ARG_TOPIC"}"#),
            LookupError::Status { status: 400, message: "MISSING_ARG_TOPIC".into() }
        );
        // A 404 that is not nsqlookupd's: the address points elsewhere.
        assert_eq!(
            err(404, b"404 page not found\n"),
            LookupError::Status { status: 404, message: "404 page not found".into() }
        );
        assert_eq!(err(502, b"<html>Bad Gateway</html>").to_string(), "HTTP 502: <html>Bad Gateway</html>");
        assert!(matches!(err(200, b"OK"), LookupError::Malformed(_)));
        assert!(
            matches!(err(200, br#"{"channels":[]}"#), LookupError::Malformed(m) if m.contains("producers"))
        );
        assert!(matches!(err(200, br#"{"producers":{}}"#), LookupError::Malformed(_)));
        assert!(
            matches!(err(200, br#"{"producers":[{"tcp_port":"4150","broadcast_address":"a"}]}"#), LookupError::Malformed(m) if m.contains("4150"))
        );
        assert!(matches!(
            err(200, br#"{"producers":[{"tcp_port":70000,"broadcast_address":"a"}]}"#),
            LookupError::Malformed(_)
        ));
        assert!(matches!(err(200, br#"{"producers":[{"tcp_port":4150}]}"#), LookupError::NoAddress(_)));
        assert!(matches!(
            err(200, br#"{"producers":[{"tcp_port":0,"broadcast_address":"a"}]}"#),
            LookupError::NoAddress(_)
        ));
        assert!(matches!(
            err(200, br#"{"status_code":200,"status_txt":"OK","data":null}"#),
            LookupError::Malformed(_)
        ));
        assert_eq!(
            err(200, br#"{"status_code":500,"status_txt":"INTERNAL_ERROR","data":null}"#),
            LookupError::Status { status: 500, message: "INTERNAL_ERROR".into() }
        );
    }

    #[test]
    fn ipv6_and_host_name_fallback() {
        let body = br#"{"producers":[
            {"broadcast_address":"::1","hostname":"h","tcp_port":4150,"http_port":4151},
            {"broadcast_address":"fd00:10::7","hostname":"h","tcp_port":4150,"http_port":0},
            {"broadcast_address":"[fd00::8]","hostname":"h","tcp_port":4150},
            {"broadcast_address":"","hostname":"nsqd-2","tcp_port":4152}
        ]}"#;
        let producers = parse_lookup_response(200, body).unwrap();
        assert_eq!(
            addresses(&producers),
            ["[::1]:4150", "[fd00:10::7]:4150", "[fd00::8]:4150", "nsqd-2:4152"]
        );
        assert_eq!(producers[0].http_address().as_deref(), Some("[::1]:4151"));
        assert_eq!(producers[1].http_address(), None);
        assert_eq!(join_host_port("10.0.0.1", 1), "10.0.0.1:1");
    }

    fn set(addrs: &[&str]) -> BTreeSet<String> {
        addrs.iter().map(|a| (*a).to_owned()).collect()
    }

    fn producer(host: &str, port: u16) -> Producer {
        Producer {
            broadcast_address: host.into(),
            hostname: String::new(),
            tcp_port: port,
            http_port: 0,
            version: String::new(),
        }
    }

    #[test]
    fn union_of_answers() {
        let mut views = vec![LookupdView::default(); 2];
        assert_eq!(merge(&views), None, "nothing known before the first answer");
        views[0].answered(&[producer("a", 4150), producer("b", 4150)]);
        assert_eq!(merge(&views), Some(set(&["a:4150", "b:4150"])));
        views[1].answered(&[producer("b", 4150), producer("c", 4150)]);
        assert_eq!(merge(&views), Some(set(&["a:4150", "b:4150", "c:4150"])));
        // b leaves lookupd 0 but lookupd 1 still names it; a leaves every answer.
        views[0].answered(&[]);
        assert_eq!(merge(&views), Some(set(&["b:4150", "c:4150"])));
        views[1].answered(&[producer("c", 4150)]);
        assert_eq!(merge(&views), Some(set(&["c:4150"])));
        // TOPIC_NOT_FOUND everywhere: an answer, and an empty one.
        views[1].answered(&[]);
        assert_eq!(merge(&views), Some(BTreeSet::new()));
    }

    #[test]
    fn failed_lookupd_keeps_its_answer_for_a_bounded_number_of_polls() {
        let max = 2;
        let mut views = vec![LookupdView::default(); 2];
        views[0].answered(&[producer("a", 4150)]);
        views[1].answered(&[producer("b", 4150)]);
        assert!(!views[1].failed(max));
        assert!(!views[1].failed(max));
        assert_eq!(merge(&views), Some(set(&["a:4150", "b:4150"])), "kept through {max} failed polls");
        assert!(views[1].failed(max), "forgotten at failure {}", max + 1);
        assert_eq!(merge(&views), Some(set(&["a:4150"])));
        assert!(!views[1].failed(max), "only forgotten once");
        // It comes back: its answer counts again, the failure count restarts.
        views[1].answered(&[producer("b", 4150)]);
        assert_eq!(views[1].failed_polls, 0);
        assert_eq!(merge(&views), Some(set(&["a:4150", "b:4150"])));
        // Every lookupd gone past the bound: nothing known, the caller keeps its set.
        for _ in 0..=max {
            views[0].failed(max);
            views[1].failed(max);
        }
        assert_eq!(merge(&views), None);
        // A lookupd that never answered contributes nothing, however long it fails.
        let mut never = LookupdView::default();
        assert!(!never.failed(0));
        assert_eq!(merge(&[never]), None);
    }

    #[test]
    fn settings_from_addresses() {
        let s = LookupdSettings::new(
            &["lookupd-0:4161".into(), "http://lookupd-1:4161/".into(), "lookupd-0:4161".into()],
            "logs",
            DEFAULT_POLL_INTERVAL,
        )
        .unwrap();
        let urls: Vec<_> = s.lookupds.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://lookupd-0:4161/", "http://lookupd-1:4161/"]);
        assert_eq!(s.max_failed_polls, DEFAULT_MAX_FAILED_POLLS);
        assert!(LookupdSettings::new(&[], "logs", DEFAULT_POLL_INTERVAL).is_err());
        let e = LookupdSettings::new(&["ftp://x".into()], "logs", DEFAULT_POLL_INTERVAL).unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
    }
}

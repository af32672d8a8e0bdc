//! The InfluxDB writer: a cloneable [`InfluxWriter`] handle and one task that batches
//! submissions and sends them, each batch resent byte for byte until InfluxDB has answered it
//! for good.
//!
//! Every submission learns its batch's [`Outcome`], so callers move a checkpoint or FIN a
//! message only once its points are durable. Memory is bounded by a byte budget: while
//! InfluxDB is down, [`InfluxWriter::submit`] waits instead of the buffer growing.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::api::{self, Api, Auth, Verdict};
use crate::backoff::Backoff;
use crate::telemetry::{Counter, Gauge, Telemetry};

/// Validated writer settings.
#[derive(Debug, Clone)]
pub struct InfluxSettings {
    /// Base URLs, tried in turn (failover); no trailing slash.
    pub(crate) urls: Vec<String>,
    pub(crate) api: Api,
    pub(crate) auth: Auth,
    pub(crate) gzip: bool,
    pub(crate) batch_max_points: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) flush_interval: Duration,
    /// Bytes of line protocol accepted but not yet answered for good.
    pub(crate) buffer_max_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) timeout: Duration,
    /// PEM file of a CA to trust besides the built-in roots.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// Create a missing 1.x database (and `retention`) on `database not found`.
    pub(crate) create_database: bool,
    /// (name, duration) of a retention policy to create with the database.
    pub(crate) retention: Option<(String, String)>,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

/// What became of a submission's points, counted exactly.
///
/// A batch holds several submissions and a batch split after a 413 can end differently in each
/// part, so one submission's points may end in more than one way. InfluxDB does not say which
/// points a partial write refused: its count is charged to the part's first submissions, so
/// `dropped` is exact summed over every submission, an attribution for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Stored.
    pub written: u64,
    /// Refused inside a partial write (a field type conflict, an unparsable line); InfluxDB
    /// stored the rest, and resending would not change that.
    pub dropped: u64,
    /// Refused for good (credentials, a missing bucket, a point too large…).
    pub rejected: u64,
    /// Not known to be stored: the writer stopped (shutdown) before InfluxDB took them. The
    /// caller must not acknowledge upstream; they come again after a restart.
    pub aborted: u64,
    /// InfluxDB's reason for the first drop or rejection.
    pub error: Option<String>,
}

impl Outcome {
    /// `n` points stored.
    pub fn written(n: u64) -> Self {
        Self { written: n, ..Self::default() }
    }

    /// `n` points refused for good, for `reason`.
    pub(crate) fn rejected(n: u64, reason: impl Into<String>) -> Self {
        Self { rejected: n, error: Some(reason.into()), ..Self::default() }
    }

    /// `n` points not known to be stored.
    pub fn aborted(n: u64) -> Self {
        Self { aborted: n, ..Self::default() }
    }

    pub fn points(&self) -> u64 {
        self.written + self.dropped + self.rejected + self.aborted
    }

    /// The points are as stored as they will ever be: acknowledge upstream.
    pub fn is_final(&self) -> bool {
        self.aborted == 0
    }

    /// Every point was stored.
    pub fn is_written(&self) -> bool {
        self.dropped + self.rejected + self.aborted == 0
    }

    /// Adds another outcome's counts (a summary over submissions); the first error stays.
    pub(crate) fn add(&mut self, other: &Outcome) {
        self.written += other.written;
        self.dropped += other.dropped;
        self.rejected += other.rejected;
        self.aborted += other.aborted;
        if self.error.is_none() {
            self.error.clone_from(&other.error);
        }
    }
}

/// How one part of a batch (the whole batch unless a 413 split it) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Written,
    Partial { dropped: u64, message: String },
    Rejected { message: String },
    Aborted,
}

/// Each submission's outcome, from how the parts of its batch ended. `parts` are (lines,
/// ending) in batch order; `sizes` the submissions' points in the same order.
fn distribute(parts: &[(u64, Ending)], sizes: &[u64]) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = sizes.iter().map(|_| Outcome::default()).collect();
    let (mut sub, mut used) = (0, 0);
    for (lines, ending) in parts {
        let (mut left, mut to_drop) =
            (*lines, if let Ending::Partial { dropped, .. } = ending { *dropped } else { 0 });
        while left > 0 && sub < sizes.len() {
            let take = left.min(sizes[sub] - used);
            let o = &mut outcomes[sub];
            match ending {
                Ending::Written => o.written += take,
                Ending::Partial { message, .. } => {
                    let d = take.min(to_drop);
                    to_drop -= d;
                    o.dropped += d;
                    o.written += take - d;
                    if d > 0 && o.error.is_none() {
                        o.error = Some(message.clone());
                    }
                }
                Ending::Rejected { message } => {
                    o.rejected += take;
                    o.error.get_or_insert_with(|| message.clone());
                }
                Ending::Aborted => o.aborted += take,
            }
            (left, used) = (left - take, used + take);
            if used == sizes[sub] {
                (sub, used) = (sub + 1, 0);
            }
        }
        // Submissions of no points take no lines; skip them so the next part starts right.
        while sub < sizes.len() && sizes[sub] == 0 {
            sub += 1;
        }
    }
    outcomes
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    #[error("reading CA file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the InfluxDB writer has stopped")]
    Closed,
}

struct Submission {
    body: Bytes,
    points: usize,
    /// Sent without waiting for the batch to fill or the flush interval: someone is held
    /// until it is answered.
    urgent: bool,
    ack: oneshot::Sender<Outcome>,
    _budget: OwnedSemaphorePermit,
}

/// The answer to one submission; resolves once its batch is answered for good.
pub struct Pending(oneshot::Receiver<Outcome>, u64);

impl std::future::Future for Pending {
    type Output = Outcome;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome> {
        let points = self.1;
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Outcome::aborted(points)))
    }
}

/// The handle: clone it freely; the writer task ends when every handle is dropped and what
/// they submitted is answered (or, after cancellation, abandoned as `Aborted`).
#[derive(Clone)]
pub struct InfluxWriter {
    tx: mpsc::Sender<Submission>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

#[derive(Clone)]
struct Counters {
    points_written: Counter,
    points_dropped: Counter,
    points_rejected: Counter,
    points_aborted: Counter,
    batches: Counter,
    retries: Counter,
    splits: Counter,
    databases_created: Counter,
    buffered_bytes: Gauge,
}

impl Counters {
    fn new(t: &Telemetry) -> Self {
        Self {
            points_written: t.counter("logmill_influx_points_written_total", "Points InfluxDB stored.", &[]),
            points_dropped: t.counter(
                "logmill_influx_points_dropped_total",
                "Points InfluxDB refused in a partial write (type conflicts, unparsable lines).",
                &[],
            ),
            points_rejected: t.counter(
                "logmill_influx_points_rejected_total",
                "Points of batches InfluxDB refused for good.",
                &[],
            ),
            points_aborted: t.counter(
                "logmill_influx_points_aborted_total",
                "Points abandoned unwritten at shutdown (resent after restart).",
                &[],
            ),
            batches: t.counter("logmill_influx_batches_total", "Batches sent to InfluxDB.", &[]),
            retries: t.counter("logmill_influx_retries_total", "Write attempts that will be retried.", &[]),
            splits: t.counter("logmill_influx_batch_splits_total", "Batches split after a 413.", &[]),
            databases_created: t.counter(
                "logmill_influx_databases_created_total",
                "Databases created after `database not found`.",
                &[],
            ),
            buffered_bytes: t.gauge(
                "logmill_influx_buffer_bytes",
                "Line protocol bytes accepted and not yet answered.",
                &[],
            ),
        }
    }
}

impl InfluxWriter {
    /// Starts the writer task on `tracker`. `cancel` stops retrying: after it fires, a batch
    /// that fails is answered `Aborted` instead of waiting for InfluxDB.
    pub fn start(
        settings: InfluxSettings,
        telemetry: &Telemetry,
        tracker: &tokio_util::task::TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, WriterError> {
        let mut client = reqwest::Client::builder().timeout(settings.timeout).pool_max_idle_per_host(4);
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|source| WriterError::CaFile { path: path.display().to_string(), source })?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let client = client.build()?;
        let budget_bytes = settings.buffer_max_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let budget = Arc::new(Semaphore::new(budget_bytes));
        let counters = Counters::new(telemetry);
        telemetry
            .gauge("logmill_influx_buffer_capacity_bytes", "The writer's byte budget.", &[])
            .set(budget_bytes as u64);
        // The channel only hands submissions over; the byte budget is what bounds memory.
        let (tx, rx) = mpsc::channel(64);
        let task = Task {
            sender: Arc::new(Sender { client, settings, cancel, counters }),
            rx,
            budget: budget.clone(),
            budget_bytes,
        };
        tracker.spawn(task.run());
        Ok(Self { tx, budget, budget_bytes })
    }

    /// Hands over complete lines of line protocol (`points` of them, each ending in `\n`).
    /// Waits while the buffer is full: that wait is the back-pressure on the caller.
    pub async fn submit(&self, body: Bytes, points: usize) -> Result<Pending, WriterError> {
        self.submit_with(body, points, false).await
    }

    /// [`InfluxWriter::submit`], and the batch holding it is sent as soon as a request slot
    /// is free rather than when it fills or the flush interval passes: for points whose
    /// answer something waits on (a consumer holding messages until their window is written).
    pub async fn submit_urgent(&self, body: Bytes, points: usize) -> Result<Pending, WriterError> {
        self.submit_with(body, points, true).await
    }

    async fn submit_with(&self, body: Bytes, points: usize, urgent: bool) -> Result<Pending, WriterError> {
        // A body larger than the whole budget takes all of it, alone.
        let permits = body.len().clamp(1, self.budget_bytes) as u32;
        let budget =
            self.budget.clone().acquire_many_owned(permits).await.map_err(|_| WriterError::Closed)?;
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Submission { body, points, urgent, ack, _budget: budget })
            .await
            .map_err(|_| WriterError::Closed)?;
        Ok(Pending(rx, points as u64))
    }
}

struct Task {
    sender: Arc<Sender>,
    rx: mpsc::Receiver<Submission>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl Task {
    async fn run(mut self) {
        let settings = &self.sender.settings;
        let mut batch: Vec<Submission> = Vec::new();
        let (mut batch_points, mut batch_bytes) = (0usize, 0usize);
        let mut batch_urgent = false;
        let mut in_flight = JoinSet::new();
        let mut tick = tokio::time::interval(settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        while open || !batch.is_empty() || !in_flight.is_empty() {
            let full = batch_points >= settings.batch_max_points || batch_bytes >= settings.batch_max_bytes;
            let due = full || batch_urgent || (!open && !batch.is_empty());
            if due && in_flight.len() < settings.max_in_flight {
                let sender = self.sender.clone();
                let taken = std::mem::take(&mut batch);
                (batch_points, batch_bytes, batch_urgent) = (0, 0, false);
                in_flight.spawn(async move { sender.send(taken).await });
                continue;
            }
            self.sender
                .counters
                .buffered_bytes
                .set((self.budget_bytes - self.budget.available_permits()) as u64);
            tokio::select! {
                // While a full batch waits for a free slot, take no more input.
                received = self.rx.recv(), if open && !full => match received {
                    Some(s) => {
                        batch_points += s.points;
                        batch_bytes += s.body.len();
                        batch_urgent |= s.urgent;
                        batch.push(s);
                    }
                    None => open = false,
                },
                _ = tick.tick(), if !batch.is_empty() && in_flight.len() < settings.max_in_flight => {
                    let sender = self.sender.clone();
                    let taken = std::mem::take(&mut batch);
                    (batch_points, batch_bytes, batch_urgent) = (0, 0, false);
                    in_flight.spawn(async move { sender.send(taken).await });
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        self.sender.counters.buffered_bytes.set(0);
    }
}

struct Sender {
    client: reqwest::Client,
    settings: InfluxSettings,
    cancel: CancellationToken,
    counters: Counters,
}

impl Sender {
    /// Sends one batch until it is answered for good, then answers its submissions.
    async fn send(&self, batch: Vec<Submission>) {
        let points: usize = batch.iter().map(|s| s.points).sum();
        let mut body = BytesMut::with_capacity(batch.iter().map(|s| s.body.len()).sum());
        for s in &batch {
            body.extend_from_slice(&s.body);
        }
        let mut parts = Vec::new();
        self.send_lines(body.freeze(), points as u64, &mut parts).await;
        let sizes: Vec<u64> = batch.iter().map(|s| s.points as u64).collect();
        let outcomes = distribute(&parts, &sizes);
        let mut total = Outcome::default();
        for o in &outcomes {
            total.add(o);
        }
        self.counters.points_written.add(total.written);
        self.counters.points_dropped.add(total.dropped);
        self.counters.points_rejected.add(total.rejected);
        self.counters.points_aborted.add(total.aborted);
        if let Some(message) = &total.error {
            if total.rejected > 0 {
                tracing::error!(points = total.rejected, %message, "InfluxDB refused points for good");
            }
            if total.dropped > 0 {
                tracing::warn!(dropped = total.dropped, %message, "InfluxDB partial write: the valid points are stored");
            }
        }
        for (s, outcome) in batch.into_iter().zip(outcomes) {
            let _ = s.ack.send(outcome);
        }
    }

    /// Sends these lines (split on 413) until answered for good, appending how each part
    /// ended, in order.
    async fn send_lines(&self, lines: Bytes, points: u64, parts: &mut Vec<(u64, Ending)>) {
        let body = if self.settings.gzip { gzip(&lines) } else { lines.clone() };
        match self.send_body(body).await {
            Ok(ending) => parts.push((points, ending)),
            Err(TooLarge) => match split_lines(&lines) {
                None => {
                    let message =
                        format!("a single point of {} bytes is larger than InfluxDB accepts", lines.len());
                    parts.push((points, Ending::Rejected { message }));
                }
                Some((a, b)) => {
                    self.counters.splits.add(1);
                    let (pa, pb) = (count_lines(&a) as u64, count_lines(&b) as u64);
                    Box::pin(self.send_lines(a, pa, parts)).await;
                    Box::pin(self.send_lines(b, pb, parts)).await;
                }
            },
        }
    }

    /// Sends one body, the same bytes on every attempt, rotating through the URLs.
    async fn send_body(&self, body: Bytes) -> Result<Ending, TooLarge> {
        let s = &self.settings;
        let mut backoff = Backoff::random(s.backoff_initial, s.backoff_max);
        let mut url_index = 0;
        let mut created = false;
        self.counters.batches.add(1);
        loop {
            let base = &s.urls[url_index % s.urls.len()];
            let verdict = match self.post(base, body.clone()).await {
                Ok((status, retry_after, text)) => api::classify(status, &text, retry_after),
                Err(e) => Verdict::Retry { after: None, reason: describe(&e) },
            };
            match verdict {
                Verdict::Written => return Ok(Ending::Written),
                Verdict::Partial { dropped, message } => return Ok(Ending::Partial { dropped, message }),
                Verdict::TooLarge => return Err(TooLarge),
                Verdict::DatabaseNotFound if s.create_database && !created => {
                    created = true;
                    match self.create_database(base).await {
                        Ok(()) => {
                            self.counters.databases_created.add(1);
                            continue;
                        }
                        Err(reason) => {
                            tracing::warn!(url = %base, %reason, "creating the database failed; retrying");
                        }
                    }
                }
                Verdict::DatabaseNotFound => {
                    let database = match &s.api {
                        Api::V1 { database, .. } => database.as_str(),
                        Api::V2 { bucket, .. } => bucket.as_str(),
                    };
                    if !s.create_database {
                        return Ok(Ending::Rejected {
                            message: format!(
                                "{base}: database `{database}` not found (and influx.create_database is off)"
                            ),
                        });
                    }
                }
                Verdict::Rejected { status, message } => {
                    let message = match (status, s.auth.username()) {
                        (401 | 403, Some(user)) => {
                            format!("{base} refused the credentials of user `{user}` ({status}): {message}")
                        }
                        (401 | 403, None) => format!("{base} requires credentials ({status}): {message}"),
                        _ => format!("{base} refused the batch ({status}): {message}"),
                    };
                    return Ok(Ending::Rejected { message });
                }
                Verdict::Retry { after, reason } => {
                    self.counters.retries.add(1);
                    tracing::warn!(url = %base, %reason, "InfluxDB write failed; retrying");
                    url_index += 1;
                    // Back off once every URL has failed in turn, or when told to wait.
                    let wait = match after {
                        Some(after) => after,
                        None if url_index % s.urls.len() == 0 => backoff.next_delay(),
                        None => Duration::ZERO,
                    };
                    if !self.pause(wait).await {
                        return Ok(Ending::Aborted);
                    }
                    continue;
                }
            }
            // A failed database creation: wait as for any retry.
            if !self.pause(backoff.next_delay()).await {
                return Ok(Ending::Aborted);
            }
        }
    }

    /// Waits `d`; false when cancelled first (or already): the batch is then abandoned.
    async fn pause(&self, d: Duration) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    async fn post(&self, base: &str, body: Bytes) -> Result<(u16, Option<Duration>, String), reqwest::Error> {
        let s = &self.settings;
        let mut request = self
            .client
            .post(api::write_url(base, &s.api))
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if s.gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        request = self.authorize(request);
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(api::parse_retry_after);
        let text = response.text().await.unwrap_or_default();
        Ok((status, retry_after, text))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Token(token) => request.header(reqwest::header::AUTHORIZATION, format!("Token {token}")),
        }
    }

    async fn create_database(&self, base: &str) -> Result<(), String> {
        let Api::V1 { database, .. } = &self.settings.api else {
            return Err("2.x buckets are not created by logmill".into());
        };
        let retention = self.settings.retention.as_ref().map(|(n, d)| (n.as_str(), d.as_str()));
        for statement in api::create_statements(database, retention) {
            let request = self
                .client
                .post(format!("{base}/query"))
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(format!("q={}", api::encode_query_value(&statement)));
            let response = self.authorize(request).send().await.map_err(|e| describe(&e))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            // /query answers 200 even when a statement fails; the error is in the body.
            if !status.is_success() || text.contains("\"error\"") {
                return Err(format!("{statement}: {status} {text}"));
            }
            tracing::info!(url = %base, %statement, "created");
        }
        Ok(())
    }
}

/// A 413: the caller splits the batch.
struct TooLarge;

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL; its sources say what went wrong underneath.
    crate::errors::chain(e)
}

fn gzip(lines: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(lines.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(lines);
    Bytes::from(encoder.finish().unwrap_or_default())
}

fn count_lines(lines: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', lines).count()
}

/// Splits lines into two halves at a line boundary; `None` for a single line.
fn split_lines(lines: &Bytes) -> Option<(Bytes, Bytes)> {
    let middle = lines.len() / 2;
    let cut = memchr::memchr(b'\n', &lines[middle..])
        .map(|i| middle + i + 1)
        .filter(|&c| c < lines.len())
        .or_else(|| memchr::memrchr(b'\n', &lines[..middle]).map(|i| i + 1).filter(|&c| c > 0))?;
    Some((lines.slice(..cut), lines.slice(cut..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_keeps_whole_lines() {
        let lines = Bytes::from_static(b"a v=1\nbb v=2\nccc v=3\n");
        let (a, b) = split_lines(&lines).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"a v=1\nbb v=2\n"[..], &b"ccc v=3\n"[..]));
        let (a, b) = split_lines(&Bytes::from_static(b"a v=1\nbbbbbbbbbbbbbbbbbbbbbbbb v=2\n")).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"a v=1\n"[..], &b"bbbbbbbbbbbbbbbbbbbbbbbb v=2\n"[..]));
        assert!(split_lines(&Bytes::from_static(b"one v=1\n")).is_none());
    }

    #[test]
    fn each_submission_learns_how_its_own_points_ended() {
        let partial = |dropped| Ending::Partial { dropped, message: "conflict".into() };
        let rejected = Ending::Rejected { message: "too large".into() };
        let o = |w, d, r, a, e: Option<&str>| Outcome {
            written: w,
            dropped: d,
            rejected: r,
            aborted: a,
            error: e.map(str::to_owned),
        };
        // One part, three submissions: all written.
        assert_eq!(
            distribute(&[(6, Ending::Written)], &[1, 2, 3]),
            [o(1, 0, 0, 0, None), o(2, 0, 0, 0, None), o(3, 0, 0, 0, None)]
        );
        // A split batch: lines 0..4 written, 4..6 refused for good; the second submission
        // straddles the cut.
        assert_eq!(
            distribute(&[(4, Ending::Written), (2, rejected.clone())], &[3, 2, 1]),
            [o(3, 0, 0, 0, None), o(1, 0, 1, 0, Some("too large")), o(0, 0, 1, 0, Some("too large"))]
        );
        // A partial write of 3 drops over submissions of 2 and 4: charged to the first ones.
        assert_eq!(
            distribute(&[(6, partial(3))], &[2, 4]),
            [o(0, 2, 0, 0, Some("conflict")), o(3, 1, 0, 0, Some("conflict"))]
        );
        // Aborted at shutdown; empty submissions take no lines.
        assert_eq!(
            distribute(&[(2, Ending::Written), (1, Ending::Aborted)], &[0, 2, 0, 1]),
            [o(0, 0, 0, 0, None), o(2, 0, 0, 0, None), o(0, 0, 0, 0, None), o(0, 0, 0, 1, None)]
        );
        // Summed, the counts are the parts' exactly.
        let mut total = Outcome::default();
        for x in distribute(&[(3, partial(2)), (5, Ending::Written), (2, rejected)], &[4, 4, 2]) {
            total.add(&x);
        }
        assert_eq!(total, o(6, 2, 2, 0, Some("conflict")));
        assert!(total.is_final() && !total.is_written());
        assert!(!Outcome::aborted(1).is_final());
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let lines = b"m v=1 1\n".repeat(100);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&lines)[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, lines);
    }
}

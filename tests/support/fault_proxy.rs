//! A real HTTP/1.1 proxy that injects faults between a client under test and a real server (the
//! `influxd` of `influxd.rs`): canned statuses, connections dropped before or after forwarding,
//! 413 above a body size, and a persistent 503. Everything else is forwarded untouched. It
//! records every request with its outcome and times, so that a test can check what no count
//! read back from InfluxDB shows: a batch sent again after its 2xx reached the client
//! ([`FaultProxy::resent_after_acknowledgement`]), or a retry sooner than `Retry-After` said.
//!
//! Include it with `#[path = "support/fault_proxy.rs"] mod fault_proxy;`. It depends on no other
//! support file. Toward the client it keeps connections alive (HTTP clients reuse them); toward
//! the upstream it opens one connection per request with `Connection: close`. Bodies are
//! re-framed with `Content-Length` both ways (chunked requests and answers are decoded).
//!
//! Safe under `tokio::time::pause()`: it uses no tokio timer (nor does it time anything out; the
//! upstream is a local influxd with its own write timeout). The times it records are
//! `std::time::Instant`s, real time, so that a test can measure a client's real pauses.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request or answer body the proxy accepts: far above anything a test sends, low enough
/// that garbage cannot make it allocate without bound. A larger request gets 413 and a close.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest request or answer head (start line and headers).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// A fault for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After: secs` when given) without forwarding. The body
    /// is sent as is, as `application/json` (InfluxDB's error bodies are `{"error":"…"}`).
    Status { code: u16, retry_after_secs: Option<u64>, body: String },
    /// Close the client connection without answering and without forwarding.
    DropBeforeForward,
    /// Forward (so InfluxDB WRITES the points), then close the client connection without
    /// relaying the answer: an unseen success.
    DropAfterForward,
}

/// What the proxy did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded; upstream answered `status`, which was relayed.
    Forwarded { status: u16 },
    /// A queued [`Fault::Status`] or [`Fault::DropBeforeForward`]: nothing was forwarded.
    Injected(Fault),
    /// A queued [`Fault::DropAfterForward`]: forwarded, upstream answered `status`, and the
    /// client connection was closed instead of relaying it.
    ForwardedThenDropped { status: u16 },
    /// 413 because of [`FaultProxy::set_max_body_bytes`] (or [`MAX_BODY_BYTES`]); not forwarded.
    TooLarge,
    /// 503 because of [`FaultProxy::set_unavailable`]; not forwarded.
    Unavailable,
    /// The upstream could not be reached or gave no complete answer (e.g. influxd is stopped).
    /// The client connection was closed, as a direct connection would have failed.
    UpstreamFailed(String),
}

/// A request as the proxy received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as sent: `/write?db=logmill&precision=ns`.
    pub target: String,
    /// In order of arrival, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// As received (still gzip-compressed when the client compressed it; de-chunked).
    pub body: Bytes,
    pub outcome: Outcome,
    /// When the request's head had arrived: no earlier than the moment the client sent it.
    pub received_at: Instant,
    /// When the proxy began to write the answer (or closed the connection instead): no later
    /// than the moment the client could see it. So the gap between one request's `answered_at`
    /// and the next request's `received_at` is a lower bound on the client's pause between them.
    pub answered_at: Instant,
}

impl SeenRequest {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        path_of(&self.target)
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as the server reads it: gunzipped when sent with `Content-Encoding: gzip`.
    /// Panics on a body that claims gzip and is not (a bug in the client under test).
    pub fn decoded_body(&self) -> Vec<u8> {
        if !self.header("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip")) {
            return self.body.to_vec();
        }
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&self.body[..])
            .read_to_end(&mut plain)
            .unwrap_or_else(|error| panic!("{} {}: bad gzip body: {error}", self.method, self.target));
        plain
    }

    /// The client was told that the server took it: upstream answered 2xx and the proxy relayed
    /// that answer. (A [`Fault::DropAfterForward`] is a success the client never saw, which it
    /// must send again.)
    pub fn acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Forwarded { status: 200..=299 })
    }
}

#[derive(Default)]
struct State {
    /// Path prefix and fault, applied in order to matching requests.
    faults: VecDeque<(String, Fault)>,
    max_body_bytes: Option<usize>,
    unavailable: bool,
    seen: Vec<SeenRequest>,
}

/// What to do with one request, decided under the lock.
enum Plan {
    Forward { drop_after: bool },
    Answer { outcome: Outcome, response: Vec<u8> },
    Drop,
}

/// The proxy: listening on a loopback port until dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&state)));
        FaultProxy { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `fault` for the next request whose path starts with `path_prefix` (e.g. "/write",
    /// so that /query and /ping pass). Faults are used once each, in order; a request that a
    /// persistent setting ([`Self::set_unavailable`], [`Self::set_max_body_bytes`]) rejects does
    /// not use one.
    pub fn push(&self, path_prefix: &str, fault: Fault) {
        self.lock().faults.push_back((path_prefix.to_owned(), fault));
    }

    /// Faults queued and not used yet.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.len()
    }

    /// Requests whose body is larger than `n` bytes, as sent (so compressed when gzip), get
    /// `413 Request Entity Too Large` with influxd's own body, until set to `None`.
    pub fn set_max_body_bytes(&self, n: Option<usize>) {
        self.lock().max_body_bytes = n;
    }

    /// While on, every write request (path `/write` or `/api/v2/write`) gets a 503 without
    /// forwarding, as from an overloaded server.
    pub fn set_unavailable(&self, on: bool) {
        self.lock().unavailable = on;
    }

    /// Every request seen so far, in order. A request is recorded before its answer (or the
    /// close) reaches the client, so after the client has its outcome it is listed here.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    /// The requests seen whose path starts with `path_prefix`.
    pub fn requests_to(&self, path_prefix: &str) -> Vec<SeenRequest> {
        self.lock().seen.iter().filter(|r| r.path().starts_with(path_prefix)).cloned().collect()
    }

    /// Requests to `path_prefix` that carried the same target and decoded body as an earlier
    /// one whose 2xx the client had received: something sent again after it was known to
    /// have succeeded, as (index of the acknowledged one, index of the resend) in
    /// [`Self::requests_to`]'s order. InfluxDB overwrites identical points, so a count read
    /// back cannot see such a resend; only the proxy can.
    pub fn resent_after_acknowledgement(&self, path_prefix: &str) -> Vec<(usize, usize)> {
        let mut acknowledged: HashMap<(String, Vec<u8>), usize> = HashMap::new();
        let mut resent = Vec::new();
        for (i, request) in self.requests_to(path_prefix).iter().enumerate() {
            let key = (request.target.clone(), request.decoded_body());
            if let Some(&first) = acknowledged.get(&key) {
                resent.push((first, i));
            } else if request.acknowledged() {
                acknowledged.insert(key, i);
            }
        }
        resent
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// A std mutex: held for a few field updates, never across an await. A test that panicked while
// holding it must not hide its own message behind a poison error.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // E.g. out of file descriptors: let finished connections close, then go on.
            tokio::task::yield_now().await;
            continue;
        };
        connections.spawn(serve(stream, upstream, Arc::clone(&state)));
    }
}

/// One client connection: requests in turn until the client closes, sends garbage, asks for a
/// close, or a fault closes it. Errors end the connection quietly; they never panic.
async fn serve(stream: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    loop {
        let Ok(Some(head)) = conn.read_head().await else { return };
        let received_at = Instant::now();
        let Some((method, target, http_1_0)) = parse_request_line(&head.start_line) else { return };
        let Ok(framing) = request_framing(&head.headers) else { return };
        let keep_alive = wants_keep_alive(&head.headers, http_1_0);
        if let Framing::Length(n) = framing {
            if n > MAX_BODY_BYTES {
                // Not read: answer and close rather than swallow it.
                let seen = (method, target, head.headers, Bytes::new(), received_at);
                record(&state, seen, Outcome::TooLarge);
                let _ = conn.stream.write_all(&too_large_response(false)).await;
                return;
            }
        }
        if header(&head.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
        {
            return;
        }
        let Ok(body) = conn.read_body(framing).await else { return };

        let plan = decide(&state, &target, body.len(), keep_alive);
        let keep_alive = match plan {
            Plan::Answer { outcome, response } => {
                record(&state, (method, target, head.headers, body, received_at), outcome);
                if conn.stream.write_all(&response).await.is_err() {
                    return;
                }
                keep_alive
            }
            Plan::Drop => {
                let outcome = Outcome::Injected(Fault::DropBeforeForward);
                record(&state, (method, target, head.headers, body, received_at), outcome);
                return;
            }
            Plan::Forward { drop_after } => {
                let request = forward_request(&method, &target, &head.headers, &body);
                let answer = exchange(upstream, &request, &method).await;
                let outcome = match (&answer, drop_after) {
                    (Err(error), _) => Outcome::UpstreamFailed(error.to_string()),
                    (Ok(answer), false) => Outcome::Forwarded { status: answer.status },
                    (Ok(answer), true) => Outcome::ForwardedThenDropped { status: answer.status },
                };
                record(&state, (method.clone(), target, head.headers, body, received_at), outcome);
                let Ok(answer) = answer else { return };
                if drop_after {
                    return;
                }
                if conn.stream.write_all(&relay_response(&answer, &method, keep_alive)).await.is_err() {
                    return;
                }
                keep_alive
            }
        };
        if !keep_alive {
            let _ = conn.stream.shutdown().await;
            return;
        }
    }
}

fn decide(state: &Mutex<State>, target: &str, body_len: usize, keep_alive: bool) -> Plan {
    let path = path_of(target);
    let mut state = lock(state);
    if state.unavailable && (path == "/write" || path == "/api/v2/write") {
        let body = r#"{"error":"fault proxy: service unavailable"}"#;
        return Plan::Answer {
            outcome: Outcome::Unavailable,
            response: canned_response(503, None, body, keep_alive),
        };
    }
    if state.max_body_bytes.is_some_and(|max| body_len > max) {
        return Plan::Answer { outcome: Outcome::TooLarge, response: too_large_response(keep_alive) };
    }
    let Some(index) = state.faults.iter().position(|(prefix, _)| path.starts_with(prefix.as_str())) else {
        return Plan::Forward { drop_after: false };
    };
    // `index` was just found in this locked queue.
    let (_, fault) = state.faults.remove(index).expect("queued fault");
    match fault {
        Fault::Status { code, retry_after_secs, ref body } => Plan::Answer {
            response: canned_response(code, retry_after_secs, body, keep_alive),
            outcome: Outcome::Injected(fault),
        },
        Fault::DropBeforeForward => Plan::Drop,
        Fault::DropAfterForward => Plan::Forward { drop_after: true },
    }
}

/// A request as read: method, target, headers, body, and when its head arrived.
type Received = (String, String, Vec<(String, String)>, Bytes, Instant);

/// Records a request just before its answer is written (or its connection closed), so that
/// `answered_at` is no later than the client's view of the answer.
fn record(state: &Mutex<State>, received: Received, outcome: Outcome) {
    let (method, target, headers, body, received_at) = received;
    let answered_at = Instant::now();
    lock(state).seen.push(SeenRequest { method, target, headers, body, outcome, received_at, answered_at });
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A start line and headers (names lower-cased).
struct Head {
    start_line: String,
    headers: Vec<(String, String)>,
}

/// How a message's body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    /// In order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// De-chunked.
    pub body: Bytes,
}

impl RawResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A buffered connection reading HTTP/1.x messages.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn { stream, buf: BytesMut::with_capacity(16 << 10) }
    }

    /// Reads more bytes into the buffer; `UnexpectedEof` at the end of the stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 8 << 10 {
            self.buf.reserve(16 << 10);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }

    /// The next head, or `None` when the peer closed cleanly before sending a byte of it.
    async fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw = self.buf.split_to(end + 4);
                return parse_head(&raw[..end]).map(Some);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("head too large"));
            }
            match self.fill().await {
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                    return Ok(None)
                }
                other => other?,
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF), within the head size limit.
    async fn read_line(&mut self) -> io::Result<BytesMut> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(end);
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(invalid("line too long"));
            }
            self.fill().await?;
        }
    }

    async fn read_exact_body(&mut self, n: usize, into: &mut BytesMut) -> io::Result<()> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        into.extend_from_slice(&self.buf.split_to(n));
        Ok(())
    }

    async fn read_body(&mut self, framing: Framing) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        match framing {
            Framing::Length(n) if n > MAX_BODY_BYTES => return Err(invalid("body too large")),
            Framing::Length(n) => self.read_exact_body(n, &mut body).await?,
            Framing::Chunked => loop {
                let line = self.read_line().await?;
                let size = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| invalid("bad chunk size"))?;
                if size == 0 {
                    // Trailers, if any, up to the empty line.
                    while !self.read_line().await?.is_empty() {}
                    break;
                }
                if body.len() + size > MAX_BODY_BYTES {
                    return Err(invalid("body too large"));
                }
                self.read_exact_body(size, &mut body).await?;
                if !self.read_line().await?.is_empty() {
                    return Err(invalid("chunk not followed by CRLF"));
                }
            },
            Framing::UntilClose => loop {
                body.extend_from_slice(&self.buf.split());
                if body.len() > MAX_BODY_BYTES {
                    return Err(invalid("body too large"));
                }
                match self.fill().await {
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
                    other => other?,
                }
            },
        }
        Ok(body.freeze())
    }

    /// Reads one answer to a request with `method`, skipping interim 1xx answers.
    async fn read_response(&mut self, method: &str) -> io::Result<RawResponse> {
        loop {
            let head =
                self.read_head().await?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let (status, reason) =
                parse_status_line(&head.start_line).ok_or_else(|| invalid("status line"))?;
            if (100..200).contains(&status) {
                continue;
            }
            let framing = if method == "HEAD" || status == 204 || status == 304 {
                Framing::Length(0)
            } else if is_chunked(&head.headers) {
                Framing::Chunked
            } else if let Some(length) = content_length(&head.headers)? {
                Framing::Length(length)
            } else {
                Framing::UntilClose
            };
            let body = self.read_body(framing).await?;
            return Ok(RawResponse { status, reason, headers: head.headers, body });
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(raw).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("header without colon"))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(invalid("bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Head { start_line, headers })
}

/// `METHOD TARGET HTTP/1.x` → method, target, whether HTTP/1.0.
fn parse_request_line(line: &str) -> Option<(String, String, bool)> {
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let valid_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if parts.next().is_some() || !valid_method || !target.starts_with('/') {
        return None;
    }
    match version {
        "HTTP/1.1" => Some((method.to_owned(), target.to_owned(), false)),
        "HTTP/1.0" => Some((method.to_owned(), target.to_owned(), true)),
        _ => None,
    }
}

/// `HTTP/1.x CODE REASON` → code, reason.
fn parse_status_line(line: &str) -> Option<(u16, String)> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let mut parts = rest.splitn(3, ' ');
    let _minor = parts.next()?;
    let code = parts.next()?.parse().ok()?;
    Some((code, parts.next().unwrap_or_default().to_owned()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"))
}

/// The `Content-Length`, if any; an error when unparsable or when two disagree.
fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    let mut length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let parsed: usize = value.parse().map_err(|_| invalid("bad content-length"))?;
        if length.is_some_and(|seen| seen != parsed) {
            return Err(invalid("conflicting content-length"));
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// A request without `Content-Length` or chunked encoding has no body (RFC 9112 § 6.3).
fn request_framing(headers: &[(String, String)]) -> io::Result<Framing> {
    if is_chunked(headers) {
        return Ok(Framing::Chunked);
    }
    Ok(Framing::Length(content_length(headers)?.unwrap_or(0)))
}

fn wants_keep_alive(headers: &[(String, String)], http_1_0: bool) -> bool {
    let tokens = connection_tokens(headers);
    if http_1_0 {
        tokens.iter().any(|t| t == "keep-alive")
    } else {
        !tokens.iter().any(|t| t == "close")
    }
}

fn connection_tokens(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

/// Headers of one hop, or re-framed by the proxy: never copied from one side to the other.
fn is_hop_header(name: &str, listed: &[String]) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "content-length"
    ) || listed.iter().any(|t| t == name)
}

fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

fn forward_request(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let listed = connection_tokens(headers);
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers.iter().filter(|(n, _)| !is_hop_header(n, &listed)) {
        write!(head, "{name}: {value}\r\n").unwrap();
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        write!(head, "Content-Length: {}\r\n", body.len()).unwrap();
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends one request on a fresh upstream connection and reads its answer.
async fn exchange(upstream: SocketAddr, request: &[u8], method: &str) -> io::Result<RawResponse> {
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    conn.stream.write_all(request).await?;
    conn.read_response(method).await
}

fn relay_response(answer: &RawResponse, method: &str, keep_alive: bool) -> Vec<u8> {
    let listed = connection_tokens(&answer.headers);
    let mut head = format!("HTTP/1.1 {} {}\r\n", answer.status, answer.reason);
    for (name, value) in answer.headers.iter().filter(|(n, _)| !is_hop_header(n, &listed)) {
        write!(head, "{name}: {value}\r\n").unwrap();
    }
    // No Content-Length on 1xx/204/304 (RFC 9110 § 8.6); a HEAD answer has no body to frame.
    if !matches!(answer.status, 100..=199 | 204 | 304) && method != "HEAD" {
        write!(head, "Content-Length: {}\r\n", answer.body.len()).unwrap();
    }
    head.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    let mut response = head.into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(&answer.body);
    }
    response
}

/// InfluxDB's own 413 answer (1.6, body above `[http] max-body-size`).
fn too_large_response(keep_alive: bool) -> Vec<u8> {
    canned_response(413, None, r#"{"error":"Request Entity Too Large"}"#, keep_alive)
}

fn canned_response(code: u16, retry_after_secs: Option<u64>, body: &str, keep_alive: bool) -> Vec<u8> {
    let reason = match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected Fault",
    };
    let mut head =
        format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Fault-Proxy: injected\r\n");
    if let Some(secs) = retry_after_secs {
        write!(head, "Retry-After: {secs}\r\n").unwrap();
    }
    if !matches!(code, 100..=199 | 204 | 304) {
        write!(head, "Content-Length: {}\r\n", body.len()).unwrap();
    }
    head.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    let mut response = head.into_bytes();
    if !matches!(code, 100..=199 | 204 | 304) {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

// ---------------------------------------------------------------------------------------------
// A raw client, for tests that need to see exactly what goes over the wire

/// A client connection that can carry several requests (keep-alive).
pub struct RawConnection {
    conn: Conn,
    host: String,
}

impl RawConnection {
    /// Connects to `url` (`http://HOST:PORT`, any path ignored).
    pub async fn connect(url: &str) -> io::Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| invalid("only http:// URLs"))?;
        let host = rest.split('/').next().unwrap_or_default().to_owned();
        let stream = TcpStream::connect(host.as_str()).await?;
        let _ = stream.set_nodelay(true);
        Ok(RawConnection { conn: Conn::new(stream), host })
    }

    /// Sends one request (with `Host` and `Content-Length` added) and reads its answer. An error
    /// (e.g. `UnexpectedEof`) when the server closes without a complete answer.
    pub async fn send(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<RawResponse> {
        let mut head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            write!(head, "{name}: {value}\r\n").unwrap();
        }
        write!(head, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.conn.stream.write_all(&request).await?;
        self.conn.read_response(method).await
    }

    /// Sends bytes as they are (for chunked bodies, garbage, …).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.stream.write_all(bytes).await
    }

    /// Reads one answer, e.g. after [`Self::send_raw`].
    pub async fn read_response(&mut self, method: &str) -> io::Result<RawResponse> {
        self.conn.read_response(method).await
    }
}

/// One request on a fresh connection with `Connection: close`. `Err` when the server closes
/// the connection without a complete answer (what a client sees of a dropped connection).
pub async fn raw_request(
    method: &str,
    url: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<RawResponse> {
    let mut conn = RawConnection::connect(url).await?;
    let mut with_close = headers.to_vec();
    with_close.push(("Connection", "close"));
    conn.send(method, path_and_query, &with_close, body).await
}

/// `POST` on a fresh connection; see [`raw_request`].
pub async fn raw_post(
    url: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<RawResponse> {
    raw_request("POST", url, path_and_query, headers, body).await
}

//! A throwaway, real `influxd` (InfluxDB 1.x OSS, Debian package `influxdb`) for integration tests.
//!
//! Each [`Influxd`] gets its own temp dir (meta, data, WAL, config, log) and two free loopback
//! ports: HTTP and the top-level RPC `bind-address` (default 8088, on which two instances would
//! otherwise collide). Its output goes to `influxd.log` in the temp dir, and every panic of this
//! fixture quotes that file's tail.
//!
//! Include it with `#[path = "support/influxd.rs"] mod influxd;`. It depends on no other support
//! file, so it carries its own few lines of HTTP/1.1 client (one request per connection).
//!
//! Safe under `tokio::time::pause()`: no tokio timer is used. Deadlines are measured with
//! `std::time::Instant`, and the short waits between polls sleep on a blocking thread, which
//! also keeps a paused clock from auto-advancing meanwhile.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long `influxd` may take to answer `/ping` with 204. It needs about a second when idle;
/// on a loaded 2-core machine, with other engineers compiling, allow much more.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL. 1.x closes its services and exits in
/// well under a second; it only hangs on to a shutdown when stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two `/ping` attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts at a first start: a free port is found by binding port 0 and dropping the
/// listener, so another process may take it before influxd binds it (see [`free_ports`]).
const START_ATTEMPTS: usize = 3;
/// Bytes of `influxd.log` quoted in panic messages.
const LOG_TAIL_BYTES: u64 = 4096;

/// A running (or stopped, see [`Influxd::stop`]) `influxd` with its own data and ports.
pub struct Influxd {
    /// `None` between [`Influxd::stop`] and [`Influxd::start_again`].
    child: Option<Child>,
    /// Declared after `child` so that the directory outlives the process in drop order.
    dir: TempDir,
    http: SocketAddr,
    rpc: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// Credentials sent with every query when auth is enabled.
    auth: Option<(String, String)>,
}

impl Influxd {
    /// Starts a throwaway `influxd` without authentication and waits until `/ping` answers 204.
    ///
    /// Panics with the log's tail if it does not become ready within 30 s or exits, and with an
    /// installation hint if `influxd` is not on `PATH`.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// Like [`Influxd::start`] with `[http] auth-enabled = true`, plus an admin user. With auth
    /// enabled and no user yet, 1.x lets anyone create the first admin; every later query of
    /// this fixture sends the credentials.
    pub async fn start_with_auth(user: &str, password: &str) -> Self {
        let mut influxd = Self::launch(true).await;
        let q = format!(
            "CREATE USER {} WITH PASSWORD {} WITH ALL PRIVILEGES",
            quote_ident(user),
            quote_string(password)
        );
        influxd.query("", &q).await;
        influxd.auth = Some((user.to_owned(), password.to_owned()));
        influxd
    }

    /// `http://127.0.0.1:PORT`, the base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The HTTP API's address.
    pub fn addr(&self) -> SocketAddr {
        self.http
    }

    /// The config file influxd runs with (it lives in the temp dir).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The last few KiB of influxd's own output.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// `POST /query` with the form body `q=…&db=…` (no `db` when `db` is empty) and the
    /// credentials in the URL when auth is enabled (1.6 reads `u`/`p` from the URL or basic auth
    /// only, not from a form body). Times come back as integer nanoseconds (`epoch=ns`).
    ///
    /// Panics, quoting the body, unless the answer is 200 with no `error` at the top or in any
    /// statement's result: a query error in a test is a bug in the test (a query against a
    /// missing database, for one, is a 200 with an `error` inside).
    pub async fn query(&self, db: &str, q: &str) -> Value {
        self.try_query(db, q).await.unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Influxd::query`] for a test that collects failures instead of stopping at the first
    /// (every query of every dashboard, say): the error names the query and quotes influxd's
    /// answer. Panics only when influxd cannot be reached at all.
    pub async fn try_query(&self, db: &str, q: &str) -> Result<Value, String> {
        let mut path = String::from("/query?epoch=ns");
        if let Some((user, password)) = &self.auth {
            write!(path, "&u={}&p={}", form_encode(user), form_encode(password)).unwrap();
        }
        let mut body = format!("q={}", form_encode(q));
        if !db.is_empty() {
            write!(body, "&db={}", form_encode(db)).unwrap();
        }
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let (status, text) = match http_request(self.http, "POST", &path, &headers, body.as_bytes()).await {
            Ok(answer) => answer,
            Err(error) => panic!("influxd query {q:?}: {error}\n{}", self.describe()),
        };
        if status != 200 {
            return Err(format!("influxd query {q:?}: HTTP {status}: {text}"));
        }
        let json: Value = serde_json::from_str(&text)
            .map_err(|error| format!("influxd query {q:?}: answer is not JSON ({error}): {text}"))?;
        let statement_error =
            json["results"].as_array().into_iter().flatten().any(|result| result.get("error").is_some());
        if json.get("error").is_some() || statement_error {
            return Err(format!("influxd query {q:?} failed: {text}"));
        }
        Ok(json)
    }

    /// The single number a query such as `SELECT count("value") FROM "m"` answers, or 0 when it
    /// answers no series (InfluxQL's answer to a count over nothing). Panics unless there is
    /// exactly one series with one row and one non-`time` column.
    pub async fn scalar(&self, db: &str, q: &str) -> f64 {
        let json = self.query(db, q).await;
        let Some(series) = single_statement(&json, q)["series"].as_array() else {
            return 0.0;
        };
        match series.as_slice() {
            [] => 0.0,
            [one] => single_number(one, q),
            _ => panic!("query {q:?} answers {} series, not one: {json}", series.len()),
        }
    }

    /// The number of each group of a query such as
    /// `SELECT count("value") FROM "m" GROUP BY "host"`, keyed by the tag's value (`""` for
    /// points without the tag). Empty when the query answers no series. Panics unless each
    /// series has one row with one non-`time` column.
    pub async fn grouped(&self, db: &str, q: &str, tag: &str) -> BTreeMap<String, f64> {
        let json = self.query(db, q).await;
        let mut groups = BTreeMap::new();
        for one in single_statement(&json, q)["series"].as_array().into_iter().flatten() {
            let Some(tags) = one["tags"].as_object() else {
                panic!("query {q:?}: a series without tags (missing GROUP BY?): {json}");
            };
            let value = match tags.get(tag) {
                Some(Value::String(value)) => value.clone(),
                _ => panic!("query {q:?}: a series without the tag {tag:?}: {json}"),
            };
            let number = single_number(one, q);
            if groups.insert(value.clone(), number).is_some() {
                panic!("query {q:?}: two series for {tag}={value:?} (group by more tags?): {json}");
            }
        }
        groups
    }

    /// `CREATE DATABASE "db"` (a no-op when it exists).
    pub async fn create_database(&self, db: &str) {
        self.query("", &format!("CREATE DATABASE {}", quote_ident(db))).await;
    }

    /// Stops influxd with SIGTERM and waits for it to exit (SIGKILL after 10 s), keeping its
    /// data, config and ports for [`Influxd::start_again`]. A no-op when already stopped.
    pub async fn stop(&mut self) {
        stop_child(self.child.take()).await;
    }

    /// Starts the stopped influxd again on the same ports, config and data, and waits for
    /// `/ping`. A no-op when it is running.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let binary = find_on_path("influxd").expect("influxd vanished from PATH");
        self.child = Some(spawn_binary(&binary, &self.config, &self.log));
        if let Err(why) = wait_ready(&mut self.child, self.http).await {
            panic!("influxd did not come back on {}: {why}\n{}", self.http, self.describe());
        }
    }

    /// Starts a fresh instance, trying new ports when the first ones were taken meanwhile.
    async fn launch(auth_enabled: bool) -> Self {
        let binary = find_on_path("influxd").unwrap_or_else(|| {
            panic!(
                "`influxd` is not on PATH: these tests run a real InfluxDB 1.x. \
                 Install the Debian package influxdb (apt-get install influxdb), or run scripts/test"
            )
        });
        let dir = tempfile::Builder::new().prefix("logmill-influxd-").tempdir().expect("create temp dir");
        let config = dir.path().join("influxdb.conf");
        let log = dir.path().join("influxd.log");
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let [http, rpc] = free_ports();
            std::fs::write(&config, config_text(dir.path(), http, rpc, auth_enabled))
                .expect("write influxd config");
            // A fresh log per attempt, so that the port check below reads this attempt only.
            let _ = std::fs::remove_file(&log);
            let mut child = Some(spawn_binary(&binary, &config, &log));
            match wait_ready(&mut child, http).await {
                Ok(()) => return Influxd { child, dir, http, rpc, config, log, auth: None },
                Err(why) => {
                    stop_child(child.take()).await;
                    let tail = log_tail(&log);
                    write!(failures, "\nattempt {attempt} (http {http}, rpc {rpc}): {why}; log:\n{tail}")
                        .unwrap();
                    // Only a port lost to the race of `free_ports` is worth another try.
                    if !tail.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("influxd did not start (config {}):{failures}", config.display());
    }

    fn describe(&self) -> String {
        format!(
            "config {}, log {} ends with:\n{}",
            self.config.display(),
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = child.start_kill();
        // Reap it before the TempDir goes, so that no influxd still writes into a directory
        // being removed. SIGKILL takes effect in milliseconds; the bound only guards a hang.
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Polls `GET /ping` until 204, the process exits (then `*child` becomes `None`), or
/// [`READY_TIMEOUT`].
async fn wait_ready(child: &mut Option<Child>, http: SocketAddr) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Some(running) = child.as_mut() {
            if let Ok(Some(status)) = running.try_wait() {
                *child = None;
                return Err(format!("influxd exited during start-up ({status})"));
            }
        }
        match http_request(http, "GET", "/ping", &[], b"").await {
            Ok((204, _)) => return Ok(()),
            Ok((status, body)) => return Err(format!("GET /ping answered {status}: {body}")),
            Err(_) if started.elapsed() < READY_TIMEOUT => real_sleep(POLL_INTERVAL).await,
            Err(error) => return Err(format!("no 204 from GET /ping within {READY_TIMEOUT:?} ({error})")),
        }
    }
}

/// SIGTERM, then wait for the exit; SIGKILL after [`STOP_TIMEOUT`].
async fn stop_child(child: Option<Child>) {
    let Some(mut child) = child else { return };
    if let Some(pid) = child.id() {
        // tokio's Child can only SIGKILL; `kill` (procps, on every Debian) sends SIGTERM
        // without a libc dependency. A failure leaves the SIGKILL below to do the job.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => real_sleep(POLL_INTERVAL).await,
            _ => break,
        }
    }
    let _ = child.kill().await;
}

/// The config of a throwaway instance: everything under `dir`, loopback only, quiet.
///
/// The key is `reporting-enabled` in Debian's build (Debian patches usage reporting to opt-in;
/// upstream's key is `reporting-disabled`); 1.x ignores unknown keys, so both are set.
fn config_text(dir: &Path, http: SocketAddr, rpc: SocketAddr, auth_enabled: bool) -> String {
    let path = |name: &str| toml_string(&dir.join(name).to_string_lossy());
    format!(
        r#"# Written by logmill's test fixture (tests/support/influxd.rs).
reporting-enabled = false
reporting-disabled = true
bind-address = "{rpc}"

[meta]
  dir = {meta}
  logging-enabled = false

[data]
  dir = {data}
  wal-dir = {wal}
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "{http}"
  auth-enabled = {auth_enabled}
  log-enabled = false
  pprof-enabled = false

[continuous_queries]
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"#,
        meta = path("meta"),
        data = path("data"),
        wal = path("wal"),
    )
}

fn spawn_binary(binary: &Path, config: &Path, log: &Path) -> Child {
    // Appending keeps the output of earlier runs (stop/start_again) for the panic messages.
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open influxd.log");
    let err = out.try_clone().expect("clone influxd.log handle");
    Command::new(binary)
        .arg("-config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {}: {error}", binary.display()))
}

/// Two distinct free loopback ports: bind port 0 twice, read the ports, close the listeners.
///
/// There is a small race: another process may bind a port between our close and influxd's
/// bind. influxd then exits with "address already in use" and [`Influxd::start`] retries with
/// new ports; [`Influxd::start_again`] reuses its ports and cannot.
fn free_ports() -> [SocketAddr; 2] {
    // Both listeners live at once, so the two ports differ.
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    [a.local_addr().expect("local addr"), b.local_addr().expect("local addr")]
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

fn log_tail(log: &Path) -> String {
    let Ok(bytes) = std::fs::read(log) else { return format!("(no {})", log.display()) };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES as usize);
    let tail = String::from_utf8_lossy(&bytes[start..]);
    if tail.trim().is_empty() {
        "(empty)".to_owned()
    } else {
        tail.into_owned()
    }
}

/// Sleeps in real time on a blocking thread: unaffected by a paused tokio clock, and a pending
/// blocking task stops the paused clock from auto-advancing meanwhile.
async fn real_sleep(duration: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(duration)).await;
}

fn single_statement<'a>(json: &'a Value, q: &str) -> &'a Value {
    match json["results"].as_array().map(Vec::as_slice) {
        Some([one]) => one,
        _ => panic!("query {q:?} should be one statement: {json}"),
    }
}

/// The one number of a series with one row of `time` plus one column.
fn single_number(series: &Value, q: &str) -> f64 {
    let columns = series["columns"].as_array().map(Vec::as_slice).unwrap_or_default();
    let rows = series["values"].as_array().map(Vec::as_slice).unwrap_or_default();
    let [row] = rows else { panic!("query {q:?}: expected one row: {series}") };
    let picked: Vec<(&Value, &Value)> =
        columns.iter().zip(row.as_array().into_iter().flatten()).filter(|(c, _)| *c != "time").collect();
    match picked.as_slice() {
        [(_, Value::Null)] => 0.0,
        [(_, value)] => value.as_f64().unwrap_or_else(|| panic!("query {q:?}: not a number: {series}")),
        _ => panic!("query {q:?}: expected one column besides time: {series}"),
    }
}

/// An InfluxQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An InfluxQL string literal in single quotes.
fn quote_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `application/x-www-form-urlencoded` (also fine in a URL query string).
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => write!(out, "%{byte:02X}").unwrap(),
        }
    }
    out
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`; the answer's status
/// and body (de-chunked). influxd ends every answer by closing, so reading to EOF is enough.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        write!(head, "{name}: {value}\r\n").unwrap();
    }
    write!(head, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    parse_response(&answer)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed or truncated HTTP answer"))
}

fn parse_response(answer: &[u8]) -> Option<(u16, String)> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let mut body = &answer[split + 4..];
    if !chunked {
        return Some((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut decoded = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some((status, String::from_utf8_lossy(&decoded).into_owned()));
        }
        decoded.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

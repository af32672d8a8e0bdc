//! `logmill agent` end to end, as a process (the binary under test, started with the command
//! line operators use), on a node's log tree in a temp dir, publishing to a real nsqd (the
//! v1.3.0 binaries, `support/nsqd.rs`; without them the in-process broker, said so), read back
//! with go-nsq's own consumer `nsq_tail` on a durable channel created before anything was
//! published (`support/channel_tail.rs`; logmill's consumer where nsq_tail is missing, said so).
//!
//! - The torture test: six files (CRI under kubelet's `/var/log/pods` layout, Docker json-file,
//!   and an operator's file rotated by copytruncate, both formats) written at thousands of lines
//!   a second, some lines over 16 KiB split as the runtimes split them; every file rotates every
//!   few seconds (rename, then gzip of the older rotation; Docker's shifting renames;
//!   copytruncate) while the agent is `kill -9`ed and restarted every 2–4 s, and nsqd is stopped
//!   (the agent killed again meanwhile) until every file has rotated twice, then started again.
//!   Every line of every file arrives, whole; duplicates are printed and stay under 1 %.
//! - The `logs` messages carry exactly the compatible JSON's field set (design.md, "What goes
//!   on NSQ"), with values worked out here from the names of the files.
//! - A router's log becomes `deis_router_*` points on `metrics` that parse as line protocol
//!   and land in a real influxd as one point per access line, the access lines counted by the
//!   independent reader (`support/access_reference.rs`).
//! - SIGTERM in the middle of a backlog: exit 0, a checkpoint, and a restart resends nothing.
//!
//! Waits are on signals (lines read back, nsqd's stats, the agent's counters), bounded by
//! generous deadlines; the sleeps are the scenario's own (the kill schedule, the write rate).

mod support;

#[path = "support/access_reference.rs"]
mod access_reference;
#[path = "support/channel_tail.rs"]
mod channel_tail;
#[path = "support/container_logs.rs"]
mod container_logs;
#[path = "support/influxd.rs"]
mod influxd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use channel_tail::ChannelTail;
use container_logs::{ContainerLog, Format, Layout, Node, Shape};
use serde_json::Value;
use support::nsqd::{NsqServer, NsqdOptions};
use tokio::process::{Child, Command};

const LOGMILL: &str = env!("CARGO_BIN_EXE_logmill");
const LOGS: &str = "logs";
const METRICS: &str = "metrics";
/// The node's name: `--node`.
const NODE: &str = "node-7";
/// How long reading everything back may take; far above what it needs, for a loaded machine.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERM may take: the agent's drain grace is 20 s, Kubernetes' grace 30 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One test at a time: each runs an agent, nsqd and a writer at a set rate, and the torture
/// test's figures (duplicates after each kill) depend on the machine not running three more.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The agent process

/// A `logmill agent` process, restartable with the same command line.
struct Agent {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Processes started so far.
    starts: u32,
}

/// What the tests set beyond the command line: short intervals, no collectors, no Kubernetes
/// API, no fluentd pos_file, no `logmill_*` points on `metrics`.
fn agent_config(checkpoint_interval_ms: u64, extra_tail: &str, extra_agent: &str) -> String {
    format!(
        r#"[telemetry]
listen = ""
interval_secs = 0
[kubernetes]
enabled = false
[agent]
collect = "off"
{extra_agent}
[tail]
fluentd_pos_file = ""
poll_interval_ms = 50
rescan_interval_secs = 1
checkpoint_interval_ms = {checkpoint_interval_ms}
rotate_wait_secs = 1
{extra_tail}
"#
    )
}

impl Agent {
    /// Writes `config` into `dir` and starts `logmill agent --config … --paths <node's glob>
    /// --state-dir <dir>/state --nsqd <nsqd> --node NODE [--listen <listen>]`.
    fn start(dir: &Path, node: &Node, nsqd: &str, listen: Option<SocketAddr>, config: &str) -> Agent {
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).expect("write the agent's config");
        let mut args = vec![
            "agent".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--paths".to_owned(),
            node.glob(),
            "--state-dir".to_owned(),
            dir.join("state").display().to_string(),
            "--nsqd".to_owned(),
            nsqd.to_owned(),
            "--node".to_owned(),
            NODE.to_owned(),
        ];
        if let Some(listen) = listen {
            args.extend(["--listen".to_owned(), listen.to_string()]);
        }
        let mut agent = Agent { args, log: dir.join("agent.log"), child: None, starts: 0 };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(LOGMILL);
        command
            .args(&self.args)
            // Only what the config and flags say: no NSQ, node or Kubernetes settings from the
            // environment.
            .env_clear()
            .env("LOGMILL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .kill_on_drop(true);
        // SAFETY: prctl(2) between fork and exec is async-signal-safe; it makes the kernel
        // SIGKILL the agent if this test process dies without dropping it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("spawn logmill agent"));
        self.starts += 1;
    }

    /// `kill -9`, and reap it.
    async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("the agent is running");
        child.kill().await.expect("SIGKILL the agent");
    }

    /// SIGTERM; its exit status and how long it took.
    async fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("the agent is running");
        let started = Instant::now();
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(child.id().expect("running") as libc::pid_t, libc::SIGTERM) };
        let status = tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("the agent did not stop within {STOP_TIMEOUT:?}:\n{}", self.log_tail())
            })
            .expect("wait for the agent");
        (status, started.elapsed())
    }

    /// The agent's log lines (every start) about truncations and rotations found late: what
    /// tells where copytruncate's duplicates came from.
    fn rotation_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let keep = ["truncated", "rotation not seen", "vanished", "cannot reopen"];
        let lines: Vec<&str> = text.lines().filter(|l| keep.iter().any(|k| l.contains(k))).collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(8000);
        let start = (start..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text[start..].to_owned()
    }
}

/// A temp dir for a test's node, state and logs; kept (and named on stderr) when
/// `LOGMILL_TEST_KEEP` is set, to read the agent's log after a failure.
fn test_dir(test: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix(&format!("logmill-agent-{test}-")).tempdir().unwrap();
    if std::env::var_os("LOGMILL_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        report(&format!("{test}: keeping {}", dir.path().display()));
    }
    dir
}

/// A loopback port free a moment ago (for `--listen`).
fn free_addr() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a free port")
}

/// A counter or gauge of the agent's `/metrics` (labels ignored, values summed).
async fn agent_metric(listen: SocketAddr, name: &str) -> u64 {
    try_agent_metric(listen, name).await.unwrap_or_else(|| panic!("GET http://{listen}/metrics for {name}"))
}

/// [`agent_metric`], `None` while the agent does not answer (starting) or lacks the metric.
async fn try_agent_metric(listen: SocketAddr, name: &str) -> Option<u64> {
    let text = http().get(format!("http://{listen}/metrics")).send().await.ok()?.text().await.ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// Bytes behind the writer, and read but not acknowledged, under which the agent has caught
/// up (the writer adds about 600 KiB a second).
const CAUGHT_UP_BYTES: u64 = 256 * 1024;

/// Waits until the agent serving `listen` has caught up with the files and nsqd has
/// acknowledged what it read; how long that took.
async fn wait_caught_up(listen: SocketAddr, agent: &Agent, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let lag = try_agent_metric(listen, "logmill_files_lag_bytes").await;
        let unacked = try_agent_metric(listen, "logmill_tail_unacked_bytes").await;
        if lag.zip(unacked).is_some_and(|(l, u)| l < CAUGHT_UP_BYTES && u < CAUGHT_UP_BYTES) {
            return started.elapsed();
        }
        assert!(started.elapsed() < READ_TIMEOUT, "the agent never caught up {what}:\n{}", agent.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/healthz`'s status code.
async fn agent_health(listen: SocketAddr) -> u16 {
    http().get(format!("http://{listen}/healthz")).send().await.expect("GET /healthz").status().as_u16()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client")
}

/// Figures for the CI log: written to stderr directly, which libtest does not capture.
fn report(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

/// Waits until nothing is waiting, in flight or deferred on `topic`/`channel`: every message
/// published so far was delivered to the reader and finished.
async fn wait_drained(server: &NsqServer, topic: &str, channel: &str) {
    let until = Instant::now() + READ_TIMEOUT;
    loop {
        let stats = server.stats().await;
        if let Some(c) = stats.channel(topic, channel) {
            if c.depth == 0 && c.in_flight_count == 0 && c.deferred_count == 0 {
                return;
            }
            assert!(Instant::now() < until, "{topic}/{channel} never drained: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The writer

/// Appends to every file at a steady rate on its own thread, rotating each every
/// `rotate_every` (staggered), until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    rotations: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<Vec<ContainerLog>>>,
}

impl Writer {
    fn spawn(mut files: Vec<ContainerLog>, lines_per_sec: u64, rotate_every: Option<Duration>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rotations: Arc<Vec<AtomicU64>> = Arc::new(files.iter().map(|_| AtomicU64::new(0)).collect());
        let (stop_flag, rotated) = (stop.clone(), rotations.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let n = files.len();
            let mut next_rotation: Vec<Duration> = (0..n)
                .map(|i| rotate_every.unwrap_or_default().mul_f64(0.5 + i as f64 / (2 * n) as f64))
                .collect();
            let first: Vec<u64> = files.iter().map(|f| f.next).collect();
            while !stop_flag.load(Ordering::Acquire) {
                let elapsed = started.elapsed();
                for (i, f) in files.iter_mut().enumerate() {
                    let due = first[i] + (elapsed.as_secs_f64() * lines_per_sec as f64) as u64;
                    if f.next < due {
                        f.write(due - f.next);
                    }
                    if let Some(every) = rotate_every {
                        if elapsed >= next_rotation[i] {
                            f.rotate();
                            rotated[i].store(f.rotations, Ordering::Release);
                            next_rotation[i] += every;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            files
        });
        Writer { stop, rotations, thread: Some(thread) }
    }

    fn rotations(&self) -> Vec<u64> {
        self.rotations.iter().map(|r| r.load(Ordering::Acquire)).collect()
    }

    /// Stops writing; the files, with how much each holds.
    fn stop(mut self) -> Vec<ContainerLog> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().expect("running").join().expect("the writer thread")
    }
}

// ---------------------------------------------------------------------------------------------
// What came back

/// Counts what arrived of each line of each file, checking every record whole.
struct Tally {
    by_tag: HashMap<String, usize>,
    shapes: Vec<Shape>,
    tags: Vec<String>,
    /// How often each line arrived, per file.
    counts: Vec<Vec<u32>>,
    distinct: u64,
    expected: u64,
    received: u64,
    long_lines: u64,
}

impl Tally {
    fn new(files: &[ContainerLog]) -> Tally {
        Tally {
            by_tag: files.iter().enumerate().map(|(i, f)| (f.tag.clone(), i)).collect(),
            shapes: files.iter().map(|f| f.shape).collect(),
            tags: files.iter().map(|f| f.tag.clone()).collect(),
            counts: files.iter().map(|f| vec![0; f.next as usize]).collect(),
            distinct: 0,
            expected: files.iter().map(|f| f.next).sum(),
            received: 0,
            long_lines: 0,
        }
    }

    /// Adds `logs` messages: each must be a record of one of the files, its text exactly what
    /// was written, on the stream it was written to.
    fn add(&mut self, lines: Vec<String>) {
        for line in lines {
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a logs message that is not JSON ({e}): {}", cut(&line)));
            let log = json["log"].as_str().unwrap_or_else(|| panic!("no log text: {}", cut(&line)));
            let text =
                log.strip_suffix('\n').unwrap_or_else(|| panic!("log without its newline: {}", cut(log)));
            let mut words = text.splitn(3, ' ');
            let (tag, seq) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            let file = *self.by_tag.get(tag).unwrap_or_else(|| panic!("a record of no file: {}", cut(text)));
            let seq: u64 = seq.parse().unwrap_or_else(|_| panic!("no sequence number: {}", cut(text)));
            let shape = self.shapes[file];
            assert_same_text(text, &shape.text(tag, seq), tag, seq);
            assert_eq!(json["stream"].as_str(), Some(shape.stream(seq)), "stream of {tag} line {seq}");
            let count = self.counts[file]
                .get_mut(seq as usize)
                .unwrap_or_else(|| panic!("{tag} line {seq} was never written"));
            *count += 1;
            self.received += 1;
            if *count == 1 {
                self.distinct += 1;
                self.long_lines += u64::from(shape.is_long(seq));
            }
        }
    }

    fn complete(&self) -> bool {
        self.distinct == self.expected
    }

    fn duplicates(&self) -> u64 {
        self.received - self.distinct
    }

    /// What is missing, per file, as ranges.
    fn missing(&self) -> String {
        let mut out = String::new();
        for (tag, counts) in self.tags.iter().zip(&self.counts) {
            let missing: Vec<u64> = (0..counts.len() as u64).filter(|&s| counts[s as usize] == 0).collect();
            if !missing.is_empty() {
                out.push_str(&format!(
                    "{tag}: {} of {} missing: {}\n",
                    missing.len(),
                    counts.len(),
                    ranges(&missing)
                ));
            }
        }
        out
    }

    /// The first lines that arrived more than once, with how often.
    fn duplicated(&self, at_most: usize) -> String {
        let mut out = Vec::new();
        for (tag, counts) in self.tags.iter().zip(&self.counts) {
            for (seq, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 1) {
                if out.len() < at_most {
                    out.push(format!("{tag} {seq} ×{n}"));
                }
            }
        }
        out.join(", ")
    }

    /// The lines that arrived more than once, as ranges per file.
    fn duplicated_ranges(&self) -> String {
        let mut out = String::new();
        for (tag, counts) in self.tags.iter().zip(&self.counts) {
            let twice: Vec<u64> = (0..counts.len() as u64).filter(|&s| counts[s as usize] > 1).collect();
            if !twice.is_empty() {
                out.push_str(&format!("{tag}: {}; ", ranges(&twice)));
            }
        }
        out
    }

    /// Duplicates per file.
    fn duplicates_by_file(&self) -> String {
        self.tags
            .iter()
            .zip(&self.counts)
            .map(|(tag, c)| {
                format!("{tag} {}", c.iter().map(|&n| u64::from(n.saturating_sub(1))).sum::<u64>())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Panics unless a record's text is the line written, showing where they part (a long line
/// printed whole would be 56 KiB).
fn assert_same_text(got: &str, want: &str, tag: &str, seq: u64) {
    if got == want {
        return;
    }
    let at = got.bytes().zip(want.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let from = (0..=at.saturating_sub(20)).rev().find(|&i| got.is_char_boundary(i)).unwrap_or(0);
    panic!(
        "{tag} line {seq} arrived altered: {} bytes, {} written, first difference at byte {at}: {}",
        got.len(),
        want.len(),
        cut(&got[from..])
    );
}

fn cut(text: &str) -> &str {
    let end = (200..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[..end]
}

fn ranges(v: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() && out.len() < 20 {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        out.push(if start == v[i] { format!("{start}") } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    if i < v.len() {
        out.push("…".into());
    }
    out.join(", ")
}

/// Reads `tail` into `tally` until every line arrived; on a timeout, panics with what is
/// missing and the agent's log.
async fn read_all(tail: &ChannelTail, tally: &mut Tally, agent: &Agent, state: &Path) {
    let until = Instant::now() + READ_TIMEOUT;
    loop {
        tally.add(tail.take());
        if tally.complete() {
            return;
        }
        if Instant::now() > until {
            panic!(
                "not every line arrived within {READ_TIMEOUT:?}:\n{}checkpoint: {}\nagent log:\n{}\nreader log:\n{}",
                tally.missing(),
                std::fs::read_to_string(state.join("tail-checkpoint.json")).unwrap_or_default(),
                agent.log_tail(),
                tail.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small deterministic generator for the kill schedule (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration between `lo_ms` and `hi_ms`.
    fn ms(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.next() % (hi_ms - lo_ms + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// The torture test

/// Lines a second written to each file.
const TORTURE_RATE: u64 = 800;
/// Each file rotates this often.
const TORTURE_ROTATE_EVERY: Duration = Duration::from_millis(2500);
/// Kills before and after nsqd's restart.
const TORTURE_KILLS_EACH_SIDE: usize = 3;
const TORTURE_CHANNEL: &str = "torture";

fn torture_files(node: &Node) -> Vec<ContainerLog> {
    let shape = Shape { long_every: 400 };
    let ns = "torture";
    vec![
        ContainerLog::create(node, 0, "k0", ns, "web", Format::Cri, Layout::Kubelet, shape),
        ContainerLog::create(node, 1, "k1", ns, "worker", Format::Cri, Layout::Kubelet, shape),
        ContainerLog::create(node, 2, "d0", ns, "api", Format::Docker, Layout::Docker, shape),
        ContainerLog::create(node, 3, "d1", ns, "cron", Format::Docker, Layout::Docker, shape),
        ContainerLog::create(node, 4, "t0", ns, "nginx", Format::Cri, Layout::CopyTruncate, shape),
        ContainerLog::create(node, 5, "t1", ns, "proxy", Format::Docker, Layout::CopyTruncate, shape),
    ]
}

/// `times` times: 2–4 s of running, `kill -9`, up to 0.5 s down (the writer goes on), restart.
async fn kill_9_and_restart(agent: &mut Agent, rng: &mut Rng, times: usize) {
    for _ in 0..times {
        tokio::time::sleep(rng.ms(2000, 4000)).await;
        agent.kill_9().await;
        tokio::time::sleep(rng.ms(0, 500)).await;
        agent.spawn();
    }
}

/// See the module documentation. The kill schedule is random; `LOGMILL_TORTURE_SEED` repeats
/// one (the seed is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_kill_9_rotations_and_an_nsqd_restart_lose_no_line() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let seed = std::env::var("LOGMILL_TORTURE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let mut rng = Rng::new(seed);
    let mut server = NsqServer::start(NsqdOptions { data_on_tmpfs: true, ..NsqdOptions::default() }).await;
    if !server.is_real() {
        report("torture test: NO REAL nsqd, running against the in-process test broker");
    }
    // Durable, and there before the first publish: it holds every message until the end.
    server.create_channel(LOGS, TORTURE_CHANNEL).await;
    let dir = test_dir("torture");
    let node = Node::new(&dir.path().join("node"));
    let state = dir.path().join("state");
    let listen = free_addr();
    // A small unacknowledged budget, so that reading pauses within the outage; checkpoints
    // often, so that a kill resends little (the window since the last checkpoint is resent).
    let config = agent_config(20, "max_unacked_bytes = 1048576", "publish_stall_secs = 2");
    let writer = Writer::spawn(torture_files(&node), TORTURE_RATE, Some(TORTURE_ROTATE_EVERY));
    let mut agent = Agent::start(dir.path(), &node, &server.tcp_addr(), Some(listen), &config);
    let mut kills = 0;
    kill_9_and_restart(&mut agent, &mut rng, TORTURE_KILLS_EACH_SIDE).await;
    kills += TORTURE_KILLS_EACH_SIDE;

    // nsqd down until every file has rotated twice, the agent killed once meanwhile. It goes
    // down on an agent that has caught up after its last restart: a restart's burst cut by
    // nsqd's exit is resent whole, which would measure the coincidence, not the outage.
    // Nor just after a copytruncate: reading on in the copy is a burst of the unacknowledged
    // budget (1 MiB, over 1 % of the run's lines with the long ones), and if nsqd's exit cuts
    // it, it is resent whole (CI once: 1,115 lines of the copytruncated file). Right after a
    // rotation and caught up, the next one is most of `TORTURE_ROTATE_EVERY` away.
    let rotated = writer.rotations();
    while writer.rotations().iter().zip(&rotated).any(|(now, then)| now == then) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_caught_up(listen, &agent, "before the outage").await;
    let down_at = Instant::now();
    let before = writer.rotations();
    server.go_down(Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.kill_9().await;
    kills += 1;
    agent.spawn();
    let until = Instant::now() + Duration::from_secs(30);
    while writer.rotations().iter().zip(&before).any(|(now, then)| *now < then + 2) {
        assert!(Instant::now() < until, "the writer rotates");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent started during the outage waits on nsqd: its reading paused at the budget,
    // and /healthz says publishing is stuck (once its oldest read has waited
    // `publish_stall_secs`, counted from the restarted agent's start: polled, within the
    // broker's 8 s).
    let (pauses, health_down) = loop {
        let pauses = agent_metric(listen, "logmill_tail_pauses_total").await;
        let health = agent_health(listen).await;
        if (pauses > 0 && health == 503) || down_at.elapsed() > Duration::from_secs(7) {
            break (pauses, health);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.come_back().await;
    let outage = down_at.elapsed();
    let rotated_in_outage: Vec<u64> = writer.rotations().iter().zip(&before).map(|(n, b)| n - b).collect();
    // Back-pressure released: the backlog of the outage flows (the kills resume after it).
    let drained_in = wait_caught_up(listen, &agent, "after nsqd came back").await;

    kill_9_and_restart(&mut agent, &mut rng, TORTURE_KILLS_EACH_SIDE).await;
    kills += TORTURE_KILLS_EACH_SIDE;
    let files = writer.stop();
    let writing = started.elapsed();

    // Read back with the ecosystem's consumer while the agent (last started) catches up.
    let read_started = Instant::now();
    let tail = ChannelTail::start(&server.tcp_addr(), LOGS, TORTURE_CHANNEL).await;
    let mut tally = Tally::new(&files);
    read_all(&tail, &mut tally, &agent, &state).await;
    let health_up = agent_health(listen).await;
    let (status, stop_took) = agent.terminate().await;
    assert!(status.success(), "the agent exited with {status} after SIGTERM:\n{}", agent.log_tail());
    wait_drained(&server, LOGS, TORTURE_CHANNEL).await;
    let reader = if tail.is_nsq_tail() { "nsq_tail" } else { "logmill's consumer" };
    tally.add(tail.stop().await);

    let lines = tally.expected;
    let dups = tally.duplicates();
    let dup_pct = 100.0 * dups as f64 / lines as f64;
    report(&format!(
        "torture (seed {seed}, {}, read with {reader}): {lines} lines in {} files ({} over 16 KiB), \
         {} written in {:.1} s; rotations {:?}; {kills} kill -9 ({} agent starts); nsqd down {:.1} s \
         (rotations meanwhile {rotated_in_outage:?}, reading paused {pauses} times, /healthz {health_down}), \
         its backlog delivered {:.1} s after it came back; read back in {:.1} s; SIGTERM took {:.2} s; duplicates {dups} ({dup_pct:.3} %: {}); total {:.1} s",
        if server.is_real() { "real nsqd" } else { "TEST BROKER" },
        files.len(),
        tally.long_lines,
        files.iter().map(|f| f.next.to_string()).collect::<Vec<_>>().join("+"),
        writing.as_secs_f64(),
        files.iter().map(|f| f.rotations).collect::<Vec<_>>(),
        agent.starts,
        outage.as_secs_f64(),
        drained_in.as_secs_f64(),
        read_started.elapsed().as_secs_f64(),
        stop_took.as_secs_f64(),
        tally.duplicates_by_file(),
        started.elapsed().as_secs_f64(),
    ));
    assert!(tally.complete(), "lines lost:\n{}", tally.missing());
    assert!(tally.long_lines > 0, "some lines were over 16 KiB");
    assert!(rotated_in_outage.iter().all(|&n| n >= 2), "every file rotated twice while nsqd was down");
    assert!(pauses > 0, "reading paused at the unacknowledged budget while nsqd was down");
    assert_eq!(health_down, 503, "/healthz fails while publishing is stuck");
    assert_eq!(health_up, 200, "/healthz recovers once nsqd is back");
    assert!(
        dup_pct < 1.0,
        "duplicates {dups} of {lines} lines ({dup_pct:.3} %) are over 1 %: {}\nthe agent's truncations and late rotations:\n{}",
        tally.duplicated_ranges(),
        agent.rotation_log()
    );
}

// ---------------------------------------------------------------------------------------------
// SIGTERM

/// SIGTERM in the middle of a backlog, a writer still appending: the agent exits 0, its
/// checkpoint holds what nsqd acknowledged, and after a restart every line arrives exactly
/// once. The periodic checkpoint is set to a minute, so only the one written on the way out
/// can say where the restart starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_with_a_checkpoint_and_a_restart_resends_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CHANNEL: &str = "clean";
    let started = Instant::now();
    let server = NsqServer::start(NsqdOptions { data_on_tmpfs: true, ..NsqdOptions::default() }).await;
    server.create_channel(LOGS, CHANNEL).await;
    let dir = test_dir("sigterm");
    let node = Node::new(&dir.path().join("node"));
    let state = dir.path().join("state");
    let shape = Shape { long_every: 250 };
    let mut files = vec![
        ContainerLog::create(&node, 0, "s0", "clean", "web", Format::Cri, Layout::Kubelet, shape),
        ContainerLog::create(&node, 1, "s1", "clean", "api", Format::Docker, Layout::Docker, shape),
    ];
    for f in &mut files {
        f.write(30_000);
    }
    let backlog: u64 = files.iter().map(|f| f.next).sum();
    let writer = Writer::spawn(files, 2000, None);
    let mut agent = Agent::start(dir.path(), &node, &server.tcp_addr(), None, &agent_config(60_000, "", ""));
    // Once nsqd holds part of the backlog.
    let until = Instant::now() + READ_TIMEOUT;
    while server.stats().await.topic(LOGS).map_or(0, |t| t.message_count) < 5000 {
        assert!(Instant::now() < until, "the agent publishes:\n{}", agent.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, took) = agent.terminate().await;
    assert!(status.success(), "the agent exited with {status} after SIGTERM:\n{}", agent.log_tail());
    let at_stop = server.stats().await.topic(LOGS).map_or(0, |t| t.message_count);
    assert!(at_stop < backlog, "stopped in the middle of the backlog ({at_stop} of {backlog} published)");
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(state.join("tail-checkpoint.json")).unwrap())
            .expect("a checkpoint");
    let offsets: u64 =
        checkpoint["files"].as_array().expect("files").iter().filter_map(|f| f["offset"].as_u64()).sum();
    assert!(offsets > 0, "the checkpoint moved: {checkpoint}");

    agent.spawn();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let files = writer.stop();
    let tail = ChannelTail::start(&server.tcp_addr(), LOGS, CHANNEL).await;
    let mut tally = Tally::new(&files);
    read_all(&tail, &mut tally, &agent, &state).await;
    let (status, took_again) = agent.terminate().await;
    assert!(status.success(), "the agent exited with {status} after SIGTERM:\n{}", agent.log_tail());
    wait_drained(&server, LOGS, CHANNEL).await;
    tally.add(tail.stop().await);
    report(&format!(
        "sigterm ({}): stopped after {at_stop} of {backlog} backlog lines in {:.2} s, again in {:.2} s; \
         {} lines, {} duplicates; total {:.1} s",
        if server.is_real() { "real nsqd" } else { "TEST BROKER" },
        took.as_secs_f64(),
        took_again.as_secs_f64(),
        tally.expected,
        tally.duplicates(),
        started.elapsed().as_secs_f64(),
    ));
    assert!(tally.complete(), "lines lost:\n{}", tally.missing());
    assert_eq!(tally.duplicates(), 0, "sent twice after a clean stop: {}", tally.duplicated(20));
}

// ---------------------------------------------------------------------------------------------
// Published payloads

/// The `logs` topic's messages, checked against design.md's field set ("What goes on NSQ"),
/// worked out here, not copied from the encoder: every key and only those, each value from the
/// file's name and layout (no Kubernetes API: `labels` is `{app: <namespace>}`, `pod_id` the
/// uid of the `/var/log/pods` path, empty without one), the runtime time in fluentd's layout.
/// Containers of `kube-system` and `deis` (not the controller) publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_messages_carry_exactly_the_compatible_field_set() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CHANNEL: &str = "payload";
    let server = NsqServer::start(NsqdOptions::default()).await;
    server.create_channel(LOGS, CHANNEL).await;
    let dir = test_dir("logs-fields");
    let node = Node::new(&dir.path().join("node"));
    let shape = Shape { long_every: 25 };
    let mut apps = [
        ContainerLog::create(&node, 0, "a0", "shop", "web", Format::Cri, Layout::Kubelet, shape),
        ContainerLog::create(&node, 1, "a1", "blog", "api", Format::Docker, Layout::Docker, shape),
        ContainerLog::create(&node, 2, "a2", "shop", "nginx", Format::Cri, Layout::CopyTruncate, shape),
    ];
    let mut others = [
        ContainerLog::create(
            &node,
            3,
            "o0",
            "kube-system",
            "kube-proxy",
            Format::Cri,
            Layout::Kubelet,
            shape,
        ),
        ContainerLog::create(&node, 4, "o1", "deis", "deis-builder", Format::Docker, Layout::Docker, shape),
    ];
    for f in apps.iter_mut().chain(&mut others) {
        f.write(60);
    }
    let mut agent = Agent::start(dir.path(), &node, &server.tcp_addr(), None, &agent_config(100, "", ""));
    let tail = ChannelTail::start(&server.tcp_addr(), LOGS, CHANNEL).await;
    let mut lines = Vec::new();
    let expected: u64 = apps.iter().map(|f| f.next).sum();
    let until = Instant::now() + READ_TIMEOUT;
    while (lines.len() as u64) < expected {
        assert!(Instant::now() < until, "{} of {expected} records:\n{}", lines.len(), agent.log_tail());
        lines.extend(tail.take());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = agent.terminate().await;
    assert!(status.success(), "the agent exited with {status}:\n{}", agent.log_tail());
    wait_drained(&server, LOGS, CHANNEL).await;
    lines.extend(tail.stop().await);

    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
    };
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| (*s).to_owned()).collect() };
    let by_tag: HashMap<&str, &ContainerLog> = apps.iter().map(|f| (f.tag.as_str(), f)).collect();
    let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {}", cut(line)));
        assert_eq!(keys(&v), set(&["log", "stream", "time", "docker", "kubernetes"]), "{}", cut(line));
        assert_eq!(keys(&v["docker"]), set(&["container_id"]), "{}", cut(line));
        assert_eq!(
            keys(&v["kubernetes"]),
            set(&["namespace_name", "pod_id", "pod_name", "container_name", "labels", "host"]),
            "{}",
            cut(line)
        );
        let log = v["log"].as_str().expect("log is a string");
        let text = log.strip_suffix('\n').unwrap_or_else(|| panic!("log ends in a newline: {}", cut(line)));
        let mut words = text.splitn(3, ' ');
        let (tag, seq) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let f = by_tag.get(tag).unwrap_or_else(|| panic!("a record of no app's file: {}", cut(line)));
        let seq: u64 = seq.parse().expect("a sequence number");
        assert_same_text(text, &f.text(seq), tag, seq);
        assert_eq!(v["stream"], f.shape.stream(seq), "{tag} line {seq}");
        assert_eq!(v["time"], f.fluentd_time(seq).as_str(), "{tag} line {seq}");
        assert_eq!(v["docker"]["container_id"], f.id.as_str());
        let k = &v["kubernetes"];
        assert_eq!(k["namespace_name"], f.namespace.as_str());
        assert_eq!(k["pod_name"], f.pod.as_str());
        assert_eq!(k["container_name"], f.container.as_str());
        assert_eq!(k["pod_id"], f.uid.as_deref().unwrap_or(""));
        assert_eq!(k["host"], NODE);
        assert_eq!(k["labels"], serde_json::json!({ "app": f.namespace }));
        assert!(seen.insert((tag.to_owned(), seq)), "{tag} line {seq} twice");
    }
    assert_eq!(seen.len() as u64, expected, "every app line, once; nothing of kube-system's or deis's");
    report(&format!(
        "logs fields ({}): {} records of {} app files checked ({} over 16 KiB)",
        if server.is_real() { "real nsqd" } else { "TEST BROKER" },
        lines.len(),
        apps.len(),
        seen.iter().filter(|(t, s)| by_tag[t.as_str()].shape.is_long(*s)).count(),
    ));
}

/// A router's log (the reference `testdata/router-cri.log`: access lines and nginx's error
/// lines, CRI-wrapped, its times cut to the second so that many lines share one) in a
/// `deis-router` container: its access lines become `deis_router_*`
/// points on `metrics` that parse as line protocol (logmill's parser, and the independent
/// reader's field by field) and, written to a real influxd, count exactly one point per access
/// line for each of the three measurements, per app too; nothing goes to `logs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_lines_become_one_influxdb_point_per_access_line() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CHANNEL: &str = "payload";
    const DB: &str = "kubernetes";
    const MEASUREMENTS: [&str; 3] =
        ["deis_router_request_time_ms", "deis_router_response_time_ms", "deis_router_bytes_sent"];
    let started = Instant::now();
    let server = NsqServer::start(NsqdOptions::default()).await;
    server.create_channel(METRICS, CHANNEL).await;
    server.create_channel(LOGS, CHANNEL).await;
    let influx = influxd::Influxd::start().await;
    influx.create_database(DB).await;

    // The runtime's times cut to the second, so that hundreds of lines share one: the points'
    // keys are unique only if the agent makes them so.
    let recorded =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/router-cri.log")).unwrap();
    let text: String = recorded
        .lines()
        .map(|l| {
            let (time, rest) = l.split_once(' ').expect("a CRI line");
            format!("{}Z {rest}\n", &time[..19])
        })
        .collect();
    let raw = text.as_bytes();
    // The reference reading: the content of every CRI line that is an access line.
    let access: Vec<access_reference::AccessLine> = text
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).expect("a CRI line"))
        .filter(|content| content.starts_with('['))
        .map(access_reference::read_line)
        .collect();
    let n = access.len();
    let mut per_app: BTreeMap<String, f64> = BTreeMap::new();
    for a in &access {
        *per_app.entry(a.app.clone()).or_default() += 1.0;
    }
    let bytes_sent: u64 = access.iter().map(|a| a.bytes_sent).sum();
    let with_upstream = access.iter().filter(|a| a.upstream_total.is_some()).count();

    let dir = test_dir("router-points");
    let node = Node::new(&dir.path().join("node"));
    let mut router = ContainerLog::create(
        &node,
        0,
        "deis-router",
        "deis",
        "deis-router",
        Format::Cri,
        Layout::Kubelet,
        Shape { long_every: 0 },
    );
    router.append_raw(raw);
    let mut agent = Agent::start(dir.path(), &node, &server.tcp_addr(), None, &agent_config(100, "", ""));
    let tail = ChannelTail::start(&server.tcp_addr(), METRICS, CHANNEL).await;
    let mut lines: Vec<String> = Vec::new();
    let until = Instant::now() + READ_TIMEOUT;
    while lines.len() < 3 * n {
        assert!(Instant::now() < until, "{} of {} points:\n{}", lines.len(), 3 * n, agent.log_tail());
        lines.extend(tail.take());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = agent.terminate().await;
    assert!(status.success(), "the agent exited with {status}:\n{}", agent.log_tail());
    wait_drained(&server, METRICS, CHANNEL).await;
    lines.extend(tail.stop().await);
    let logs = server.stats().await.topic(LOGS).map_or(0, |t| t.message_count);
    assert_eq!(logs, 0, "the router's lines go to metrics only");

    // Line protocol, by logmill's parser.
    let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    for (i, point) in logmill::metrics::line_protocol::parse_lines(body.as_bytes()) {
        let point =
            point.unwrap_or_else(|e| panic!("line {i} is not line protocol ({e:?}): {}", lines[i - 1]));
        assert!(MEASUREMENTS.contains(&point.measurement.as_ref()), "{}", lines[i - 1]);
    }
    // Field by field, by the independent reader.
    for m in MEASUREMENTS {
        let rows = access_reference::read_line_protocol(&body, m);
        assert_eq!(rows.len(), n, "{m}: one point per access line");
        let mut keys = BTreeSet::new();
        for row in &rows {
            assert_eq!(
                row.tags.keys().map(String::as_str).collect::<Vec<_>>(),
                ["app", "host", "method", "status_code"],
                "{m} tags: {row:?}"
            );
            assert_eq!(row.tags["host"], NODE);
            let fields: Vec<&str> = row.fields.keys().map(String::as_str).collect();
            let allowed: &[&str] =
                if m == "deis_router_response_time_ms" { &["upstream_total", "value"] } else { &["value"] };
            assert!(
                fields.iter().all(|f| allowed.contains(f)) && fields.contains(&"value"),
                "{m} fields: {row:?}"
            );
            assert!(
                row.fields.values().all(|v| matches!(v, access_reference::Num::Float(_))),
                "{m}: floats only: {row:?}"
            );
            assert!(keys.insert((row.tags.clone(), row.time_ns)), "{m}: two points share a key: {row:?}");
        }
        if m == "deis_router_response_time_ms" {
            let got = rows.iter().filter(|r| r.fields.contains_key("upstream_total")).count();
            assert_eq!(got, with_upstream, "upstream_total on every line with an upstream time");
        }
        if m == "deis_router_bytes_sent" {
            let sum: f64 = rows
                .iter()
                .map(|r| match r.fields["value"] {
                    access_reference::Num::Float(v) => v,
                    access_reference::Num::Int(v) => v as f64,
                })
                .sum();
            assert_eq!(sum, bytes_sent as f64, "bytes_sent summed");
        }
    }

    // Into InfluxDB, as the consumer would pass them through.
    let client = http();
    for chunk in lines.chunks(5000) {
        let body: String = chunk.iter().map(|l| format!("{l}\n")).collect();
        let answer = client
            .post(format!("{}/write?db={DB}&precision=ns", influx.url()))
            .body(body)
            .send()
            .await
            .expect("POST /write");
        let code = answer.status();
        assert_eq!(code.as_u16(), 204, "/write: {}", answer.text().await.unwrap_or_default());
    }
    for m in MEASUREMENTS {
        let count = influx.scalar(DB, &format!("SELECT count(\"value\") FROM \"{m}\"")).await;
        assert_eq!(count, n as f64, "{m}: stored points, one per access line");
        let by_app = influx
            .grouped(DB, &format!("SELECT count(\"value\") FROM \"{m}\" GROUP BY \"app\""), "app")
            .await;
        assert_eq!(by_app, per_app, "{m}: points per app");
    }
    report(&format!(
        "router points ({}): {n} access lines of {} → {} points on metrics, {n} stored per measurement; {:.1} s",
        if server.is_real() { "real nsqd" } else { "TEST BROKER" },
        text.lines().count(),
        lines.len(),
        started.elapsed().as_secs_f64()
    ));
}

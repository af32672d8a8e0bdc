//! Reading an NSQ channel from outside the code under test: `nsq_tail`, go-nsq's own consumer
//! (found like nsqd: `$NSQ_TAIL`, `PATH`, `../shared/peers/bin/`), which prints each message
//! followed by a newline and finishes it once printed. Where it is missing, logmill's consumer
//! reads the channel in its place and says so once on stderr ([`nsq_tail_binary`]).
//!
//! What comes out is lines: a `logs` message is one line of JSON, a `metrics` message several
//! lines of line protocol; empty lines are dropped.
//!
//! Include it with `mod support;` then `#[path = "support/channel_tail.rs"] mod channel_tail;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logmill::nsq::consumer::{self, Consumer, ConsumerSettings};
use logmill::telemetry::Telemetry;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::nsqd::nsq_tail_binary;

/// Messages in flight to the reader: enough to read a channel of 100 k messages in seconds.
const MAX_IN_FLIGHT: u32 = 1000;
/// How long a stop may take (nsq_tail: SIGTERM, drain, exit).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running reader of one channel.
pub struct ChannelTail {
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
    how: How,
    /// nsq_tail's own log (stderr), for failure messages.
    log: PathBuf,
    _dir: tempfile::TempDir,
}

enum How {
    NsqTail(Child),
    Logmill { consumer: Consumer, tracker: TaskTracker },
}

impl ChannelTail {
    /// Subscribes to `topic`/`channel` on the nsqd at `nsqd_tcp` (the channel should exist
    /// already, created before anything was published).
    pub async fn start(nsqd_tcp: &str, topic: &str, channel: &str) -> ChannelTail {
        let dir = tempfile::Builder::new().prefix("logmill-channel-tail-").tempdir().expect("temp dir");
        let log = dir.path().join("nsq_tail.log");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (how, reader) = match nsq_tail_binary() {
            Some(binary) => {
                let err = std::fs::File::create(&log).expect("create nsq_tail's log");
                let mut command = Command::new(binary);
                command
                    .arg(format!("--nsqd-tcp-address={nsqd_tcp}"))
                    .arg(format!("--topic={topic}"))
                    .arg(format!("--channel={channel}"))
                    .arg(format!("--max-in-flight={MAX_IN_FLIGHT}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(err)
                    .kill_on_drop(true);
                // SAFETY: prctl(2) between fork and exec is async-signal-safe; it SIGKILLs
                // nsq_tail if the test process dies without dropping it.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
                let stdout = child.stdout.take().expect("piped stdout");
                let sink = lines.clone();
                let reader = tokio::spawn(async move {
                    let mut stdout = BufReader::with_capacity(1 << 20, stdout);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match stdout.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => push_lines(&sink, &line),
                        }
                    }
                });
                (How::NsqTail(child), reader)
            }
            None => {
                let settings = ConsumerSettings {
                    topic: topic.to_owned(),
                    channel: channel.to_owned(),
                    max_in_flight: MAX_IN_FLIGHT,
                    ..ConsumerSettings::default()
                };
                let tracker = TaskTracker::new();
                let (consumer, mut deliveries) = Consumer::start(
                    settings,
                    consumer::fixed_addresses([nsqd_tcp.to_owned()]),
                    None,
                    &Telemetry::default(),
                    &tracker,
                    CancellationToken::new(),
                )
                .expect("valid consumer settings");
                let sink = lines.clone();
                let reader = tokio::spawn(async move {
                    while let Some(d) = deliveries.recv().await {
                        push_lines(&sink, d.body());
                        d.finish().await;
                    }
                });
                (How::Logmill { consumer, tracker }, reader)
            }
        };
        ChannelTail { lines, reader, how, log, _dir: dir }
    }

    /// Whether go-nsq's `nsq_tail` reads (else logmill's consumer).
    pub fn is_nsq_tail(&self) -> bool {
        matches!(self.how, How::NsqTail(_))
    }

    /// The lines read since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stops reading (what was finished was printed) and returns the lines not taken yet.
    pub async fn stop(self) -> Vec<String> {
        match self.how {
            How::NsqTail(mut child) => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child, not reaped yet.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            How::Logmill { consumer, tracker } => {
                consumer.stop();
                let _ = tokio::time::timeout(STOP_TIMEOUT, consumer.stopped()).await;
                tracker.close();
            }
        }
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.reader).await;
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// nsq_tail's log (empty for logmill's consumer).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn push_lines(sink: &Mutex<Vec<String>>, bytes: &[u8]) {
    let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        sink.push(String::from_utf8_lossy(line).into_owned());
    }
}

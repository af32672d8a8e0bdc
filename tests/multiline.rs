//! Multiline merging end to end: the `logmill agent` binary follows a Java container's Docker
//! log with a `[[multiline]]` rule and publishes to a real nsqd v1.3.0, read back with
//! logmill's consumer. A stack trace written in two bursts arrives as one `logs` message; the
//! last record, with no line after it, arrives once its timeout passed; a record held when the
//! agent is killed (`kill -9`) or stopped (SIGTERM) arrives whole after the restart, because
//! the checkpoint never passes a held record's start.
//!
//! Waits are on real signals (messages arriving, the checkpoint file moving) with generous
//! deadlines; the one pause (between the two bursts) is shorter than the timeout, which is
//! what the test is about.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logmill::nsq::consumer::{fixed_addresses, Consumer, ConsumerSettings};
use logmill::telemetry::Telemetry;
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Generous: a loaded 2-core machine builds other crates meanwhile.
const WAIT: Duration = Duration::from_secs(30);

/// An error and its stack trace, then the next record (each record starts with a date).
const TRACE: [&str; 7] = [
    "2026-11-21 04:22:21.000 ERROR [main] c.e.Checkout - payment failed",
    "java.lang.IllegalStateException: card declined",
    "\tat com.example.Payments.charge(Payments.java:42)",
    "\tat com.example.Checkout.run(Checkout.java:17)",
    "Caused by: java.io.IOException: gateway timeout",
    "\tat com.example.Gateway.call(Gateway.java:88)",
    "\t... 2 more",
];
const FIRST: &str = "2026-11-21 04:22:20.000 INFO [main] c.e.Checkout - order received";
const NEXT: &str = "2026-11-21 04:22:22.000 INFO [main] c.e.Checkout - next order";

fn whole_trace() -> String {
    TRACE.join("\n") + "\n"
}

/// Docker json-file lines, as dockerd writes them.
fn docker(texts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for text in texts {
        let log = serde_json::to_string(&format!("{text}\n")).expect("a string");
        out.extend_from_slice(
            format!(r#"{{"log":{log},"stream":"stdout","time":"2026-11-21T04:22:21.000000000Z"}}"#)
                .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    state: PathBuf,
    /// The container's log file (kubelet's name).
    file: PathBuf,
}

/// A config for one Java container under the temp dir, publishing `logs` to `topic`.
fn setup(nsqd: &Nsqd, topic: &str, timeout_ms: u64) -> Setup {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path();
    let containers = dir.join("containers");
    std::fs::create_dir_all(&containers).expect("the containers dir");
    let file = containers.join(format!("java-api-7d4b9_shop_java-api-{}.log", "c".repeat(64)));
    std::fs::write(&file, b"").expect("the log file");
    let state = dir.join("state");
    let config = dir.join("agent.toml");
    let text = format!(
        r#"host = "node-1"
[telemetry]
listen = ""
interval_secs = 0
[nsq]
nsqd_tcp_addresses = ["{nsqd}"]
log_topic = "{topic}"
metric_topic = "{topic}_metrics"
[tail]
paths = ["{containers}/*.log"]
state_dir = "{state}"
fluentd_pos_file = "{dir}/none.pos"
poll_interval_ms = 50
checkpoint_interval_ms = 100
[agent]
collect = "off"
[kubernetes]
enabled = false
[[multiline]]
containers = "java"
start = '^\d{{4}}-\d{{2}}-\d{{2}} '
timeout_ms = {timeout_ms}
"#,
        nsqd = nsqd.tcp_addr(),
        containers = containers.display(),
        state = state.display(),
        dir = dir.display(),
    );
    std::fs::write(&config, text).expect("the config");
    let log = dir.join("agent.log");
    Setup { _tmp: tmp, config, log, state, file }
}

impl Setup {
    fn append(&self, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(&self.file).expect("the log file");
        f.write_all(bytes).expect("a write");
    }

    /// The checkpoint's offset for the log file, once there is one.
    fn checkpointed(&self) -> Option<u64> {
        let text = std::fs::read(self.state.join("tail-checkpoint.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        v["files"].as_array()?.first()?["offset"].as_u64()
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A running `logmill agent`, SIGKILLed if the test ends first.
struct Agent(Child);

impl Agent {
    fn start(s: &Setup) -> Agent {
        let log = OpenOptions::new().create(true).append(true).open(&s.log).expect("the agent's log");
        let child = Command::new(env!("CARGO_BIN_EXE_logmill"))
            .args(["agent", "--config"])
            .arg(&s.config)
            .env("LOGMILL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("logmill agent starts");
        Agent(child)
    }

    /// `kill -9`: whatever it did not checkpoint is read again by the next one.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and how long it took to exit.
    async fn terminate(mut self) -> Duration {
        let started = Instant::now();
        // SAFETY: a plain kill(2) on our own child's pid, which wait() has not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        while self.0.try_wait().expect("the agent's status").is_none() {
            assert!(started.elapsed() < Duration::from_secs(60), "the agent did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `logs` messages read from nsqd: their `log` field and when each came.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Instant)>>>);

impl Received {
    fn logs(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|(l, _)| l.clone()).collect()
    }

    fn at(&self, i: usize) -> Option<Instant> {
        self.0.lock().unwrap().get(i).map(|(_, t)| *t)
    }

    async fn until(&self, what: &str, s: &Setup, mut cond: impl FnMut(&[String]) -> bool) {
        let end = Instant::now() + WAIT;
        while !cond(&self.logs()) {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}: got {:#?}\n{}",
                self.logs(),
                s.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Subscribes to `topic` (created first, so nothing published before the SUB is missed).
async fn consume(nsqd: &Nsqd, topic: &str) -> (Received, TaskTracker, CancellationToken) {
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let settings = ConsumerSettings {
        topic: topic.into(),
        channel: "test".into(),
        create_on: vec![format!("http://{}", nsqd.http_addr())],
        ..ConsumerSettings::default()
    };
    let addresses = fixed_addresses([nsqd.tcp_addr().to_string()]);
    let (consumer, mut deliveries) =
        Consumer::start(settings, addresses, None, &Telemetry::default(), &tracker, cancel.clone())
            .expect("valid consumer settings");
    let received = Received::default();
    let into = received.clone();
    tokio::spawn(async move {
        // Subscribed for as long as deliveries are read.
        let _consumer = consumer;
        while let Some(d) = deliveries.recv().await {
            let v: serde_json::Value = serde_json::from_slice(d.body()).expect("a logs message is JSON");
            let log = v["log"].as_str().expect("a log field").to_owned();
            into.0.lock().unwrap().push((log, Instant::now()));
            d.finish().await;
        }
    });
    // The channel exists before the agent publishes anything.
    let end = Instant::now() + WAIT;
    while nsqd.stats().await.channel(topic, "test").is_none() {
        assert!(Instant::now() < end, "the consumer's channel never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (received, tracker, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_in_two_bursts_is_one_message_and_the_last_record_goes_at_its_timeout() {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        return nsqd::skip("a_trace_in_two_bursts_is_one_message", "nsqd");
    };
    let timeout = Duration::from_millis(3000);
    let s = setup(&nsqd, "bursts", timeout.as_millis() as u64);
    let (received, _tracker, cancel) = consume(&nsqd, "bursts").await;
    let agent = Agent::start(&s);

    // Two bursts, a pause shorter than the timeout between them.
    s.append(&docker(&TRACE[..3]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.append(&docker(&[&TRACE[3..], &[NEXT]].concat()));
    let next_written = Instant::now();
    received.until("the trace", &s, |logs| !logs.is_empty()).await;
    assert_eq!(received.logs(), [whole_trace()], "one message, the whole trace");

    // Nothing follows the next record: it goes at its timeout, counted from when it was read.
    received.until("the last record", &s, |logs| logs.len() == 2).await;
    assert_eq!(received.logs()[1], format!("{NEXT}\n"));
    let waited = received.at(1).expect("its arrival") - next_written;
    assert!(waited >= timeout, "sent after {waited:?}, before its {timeout:?} timeout");
    assert!(waited < timeout + Duration::from_secs(10), "sent {waited:?} after it was written");
    let _ = agent.terminate().await;
    cancel.cancel();
}

/// A record held when the agent stops arrives whole from the next agent.
async fn held_at_stop(topic: &str, kill: bool) {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        return nsqd::skip(topic, "nsqd");
    };
    // Longer than the test: the trace is held until the next record comes.
    let s = setup(&nsqd, topic, 600_000);
    let (received, _tracker, cancel) = consume(&nsqd, topic).await;
    let agent = Agent::start(&s);

    // One write: a record, ended by the trace's first line; the trace's start is held.
    let first = docker(&[FIRST]);
    s.append(&[first.clone(), docker(&TRACE[..3])].concat());
    received.until("the first record", &s, |logs| logs == [format!("{FIRST}\n")]).await;
    // The acknowledgement of that read reached the checkpoint (at the held trace's start; a
    // checkpoint past it would lose the trace's first lines).
    let end = Instant::now() + WAIT;
    while s.checkpointed().is_none_or(|o| o < first.len() as u64) {
        assert!(
            Instant::now() < end,
            "the checkpoint never moved: {:?}\n{}",
            s.checkpointed(),
            s.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if kill {
        agent.kill();
    } else {
        let took = agent.terminate().await;
        // Every mark it handed out is acknowledged (none waits past the held record), so it
        // does not wait out its 20 s drain grace.
        assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}\n{}", s.agent_log());
    }

    // The rest of the trace and the next record, read by the next agent from the checkpoint.
    s.append(&docker(&[&TRACE[3..], &[NEXT]].concat()));
    let again = Agent::start(&s);
    received.until("the trace, whole", &s, |logs| logs.contains(&whole_trace())).await;
    // At least once: the first record may come again, nothing comes cut.
    for log in received.logs() {
        assert!(
            log == format!("{FIRST}\n") || log == whole_trace(),
            "a cut record: {log:?}\n{}",
            s.agent_log()
        );
    }
    let _ = again.terminate().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_held_at_kill_9_arrives_whole_after_the_restart() {
    held_at_stop("killed", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_held_at_sigterm_arrives_whole_after_the_restart() {
    held_at_stop("stopped", false).await;
}

//! The collector runner as the agent will run it: batches on a bounded channel, cycles on
//! multiples of the interval, one timestamp per cycle shared by every input, and a slow input
//! (an nsqd that accepts connections and never answers) that delays nobody else.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logmill::config::RawConfig;
use logmill::host::{Batch, Collector};
use logmill::telemetry::Telemetry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The settings of a config file holding `text`, as `--config FILE` reads them.
fn settings_from(text: &str) -> logmill::config::Settings {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    RawConfig::load(Some(file.path())).unwrap().validate().unwrap()
}

const INTERVAL_MS: i64 = 200;

/// A runner started on the settings of config `text`, host `node-1`: its counters, its
/// batches, what stops it, and its task.
fn start(
    text: &str,
) -> (Telemetry, mpsc::Receiver<Vec<Batch>>, CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = settings_from(text);
    let telemetry = Telemetry::default();
    let collector = Collector::new(&settings.collect, "node-1", &telemetry).unwrap();
    let (tx, rx) = mpsc::channel::<Vec<Batch>>(64);
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(collector.run(tx, cancel.clone()));
    (telemetry, rx, cancel, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aligned_cycles_and_a_slow_input_delays_nobody() {
    // An "nsqd" that takes connections and never says a word: each request runs into the
    // collector's 1 s timeout, five intervals.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let text = format!(
        "host = \"node-1\"\n[collect]\ninterval_ms = {INTERVAL_MS}\ninputs = [\"mem\", \"kernel\", \"cpu\"]\n\
         [collect.nsqd]\nendpoints = [\"127.0.0.1:{port}\"]\ntimeout_ms = 1000\n"
    );
    let (telemetry, mut rx, cancel, runner) = start(&text);

    let started = Instant::now();
    let mut by_time: BTreeMap<i64, Vec<&'static str>> = BTreeMap::new();
    while started.elapsed() < Duration::from_millis(2300) {
        // The silent nsqd holds its input for 1 s (its timeout): a gap that long is the slow
        // input holding the others up; a shorter one can be a loaded machine.
        let Ok(Some(batches)) = tokio::time::timeout(Duration::from_millis(900), rx.recv()).await else {
            panic!("no batch for 900 ms: the slow input held the others up? {by_time:?}");
        };
        assert!(!batches.is_empty(), "a message holds a batch at least");
        for batch in batches {
            assert_eq!(batch.timestamp_ns % (INTERVAL_MS * 1_000_000), 0, "on a multiple of the interval");
            let text = std::str::from_utf8(&batch.body).unwrap();
            assert!(
                text.lines().all(|l| l.ends_with(&format!(" {}", batch.timestamp_ns))),
                "one timestamp: {text}"
            );
            assert!(text.lines().all(|l| l.contains(",host=node-1")));
            by_time.entry(batch.timestamp_ns).or_default().push(batch.input);
        }
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), runner).await.expect("stops on cancel").unwrap();

    // Complete cycles (the first and last may be cut by the test's window): each has mem,
    // kernel and cpu (cpu already primed, so it has rates from its first cycle), and no two
    // cycles share a time.
    let cycles: Vec<_> = by_time.values().collect();
    assert!(cycles.len() >= 8, "{} cycles in 2.3 s of 200 ms: {by_time:?}", cycles.len());
    let middle = &cycles[1..cycles.len() - 1];
    for inputs in middle {
        let mut sorted = (*inputs).clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["cpu", "kernel", "mem"], "{by_time:?}");
    }
    let times: Vec<i64> = by_time.keys().copied().collect();
    // Consecutive ticks; a loaded machine may make the thread miss one now and then, never
    // the five of the slow input's timeout.
    let step = INTERVAL_MS * 1_000_000;
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g == step || *g == 2 * step), "consecutive ticks: {times:?}");
    assert!(gaps.iter().filter(|g| **g != step).count() <= 1, "consecutive ticks: {times:?}");

    // The silent nsqd: counted as a problem, its skipped ticks counted, never a batch.
    let prometheus = telemetry.render_prometheus();
    let value = |needle: &str| -> u64 {
        prometheus
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(value("logmill_collect_problems_total{input=\"nsq\",reason=\"http\"}") >= 1, "{prometheus}");
    assert!(value("logmill_collect_cycles_missed_total{input=\"nsq\"}") >= 3, "{prometheus}");
    assert!(value("logmill_collect_cycles_missed_total{input=\"mem\"}") <= 1, "{prometheus}");
    assert!(value("logmill_collect_points_total{input=\"kernel\"}") >= 8);
}

/// A file input stuck in the kernel holds up no other: `utmp` is a FIFO that nobody writes,
/// so the `system` input's `open` waits, as a `statfs` of a dead NFS server would. After an
/// interval the other inputs go on without it (on a thread of their own), the ticks they lost
/// counted as missed; once `utmp` can be read again, the stuck input's points come too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_input_stuck_in_the_kernel_delays_nobody() {
    let var = StuckUtmp::new();
    let text = format!(
        "host = \"node-1\"\n[collect]\ninterval_ms = {INTERVAL_MS}\ninputs = [\"mem\", \"system\", \"kernel\"]\n\
         host_var = \"{}\"\n",
        var.dir.path().display()
    );
    let (telemetry, mut rx, cancel, runner) = start(&text);

    let stuck = gather(&mut rx, Duration::from_millis(2000)).await;
    assert_eq!(stuck.get("system"), None, "system is stuck in open(2): {stuck:?}");
    assert!(stuck.get("mem").copied().unwrap_or(0) >= 6, "mem goes on: {stuck:?}");
    assert!(stuck.get("kernel").copied().unwrap_or(0) >= 6, "kernel goes on: {stuck:?}");

    var.release();
    let after = gather(&mut rx, Duration::from_millis(1500)).await;
    assert!(after.get("system").copied().unwrap_or(0) >= 4, "system back, on its own thread: {after:?}");
    assert!(after.get("mem").copied().unwrap_or(0) >= 5, "{after:?}");

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), runner).await.expect("stops on cancel").unwrap();
    let prometheus = telemetry.render_prometheus();
    let missed = |input: &str| -> u64 {
        let needle = format!("logmill_collect_cycles_missed_total{{input=\"{input}\"}}");
        prometheus
            .lines()
            .find(|l| l.starts_with(&needle))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(missed("mem") >= 1, "the ticks lost to the stuck input are counted: {prometheus}");
    assert!(missed("system") >= 5, "and the stuck input's own: {prometheus}");
}

/// The same with `system` the only input: left behind with nothing to go on on a new thread,
/// its thread's batches are still passed on once utmp can be read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_input_stuck_comes_back() {
    let var = StuckUtmp::new();
    let text = format!(
        "host = \"node-1\"\n[collect]\ninterval_ms = {INTERVAL_MS}\ninputs = [\"system\"]\nhost_var = \"{}\"\n",
        var.dir.path().display()
    );
    let (_, mut rx, cancel, runner) = start(&text);
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), rx.recv()).await.is_err(),
        "nothing while system waits in open(2)"
    );
    var.release();
    let after = gather(&mut rx, Duration::from_millis(1000)).await;
    assert!(after.get("system").copied().unwrap_or(0) >= 3, "system back: {after:?}");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), runner).await.expect("stops on cancel").unwrap();
}

/// A `host_var` whose `run/utmp` is a FIFO nobody writes: the `system` input's `open(2)`
/// waits on it until [`StuckUtmp::release`].
struct StuckUtmp {
    dir: tempfile::TempDir,
}

impl StuckUtmp {
    fn new() -> Self {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        let utmp = std::ffi::CString::new(dir.path().join("run/utmp").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(utmp.as_ptr(), 0o600) }, 0, "mkfifo");
        Self { dir }
    }

    /// A writer lets the waiting open return (and read nothing); a regular file takes the
    /// FIFO's place for the cycles after.
    fn release(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let utmp = self.dir.path().join("run/utmp");
        let writer =
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&utmp).unwrap();
        let plain = self.dir.path().join("run/utmp.new");
        std::fs::write(&plain, b"").unwrap();
        std::fs::rename(&plain, &utmp).unwrap();
        drop(writer);
    }
}

/// Batches by input for `window`, failing on a silence as long as a stuck input's.
async fn gather(rx: &mut mpsc::Receiver<Vec<Batch>>, window: Duration) -> BTreeMap<&'static str, usize> {
    let started = Instant::now();
    let mut counts = BTreeMap::new();
    while started.elapsed() < window {
        let Ok(Some(batches)) = tokio::time::timeout(Duration::from_millis(900), rx.recv()).await else {
            panic!("no batch for 900 ms: the stuck input held the others up? {counts:?}");
        };
        for batch in batches {
            *counts.entry(batch.input).or_default() += 1;
        }
    }
    counts
}

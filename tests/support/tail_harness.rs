//! The tail engine's test harness: a sink that records every record and acknowledges when the
//! test says so, a writer of numbered CRI lines that rotates like kubelet (rename, new file,
//! gzip of the rotated one) or like logrotate (copytruncate), and log capture.
//!
//! Include it with `#[path = "support/container_logs.rs"] mod container_logs;` beside it.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use logmill::access::KeyGuard;
use logmill::tail::{FileId, Record, RecordSink, Resume, TailHandle, TailSettings, Tailer, WatchMode};
use logmill::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One record as the sink got it.
#[derive(Debug, Clone)]
pub struct Got {
    pub file: FileId,
    pub text: String,
    pub offset: u64,
    /// The point key the file's guard gave it (runtime time made unique).
    pub key: Option<i64>,
    pub truncated: bool,
    pub len: usize,
}

#[derive(Debug, Default)]
pub struct State {
    pub records: Vec<Got>,
    pub opened: Vec<(FileId, PathBuf)>,
    pub closed: Vec<FileId>,
    /// Marks flushed and not acknowledged yet, in order.
    pub pending: VecDeque<(FileId, Resume)>,
    /// Record bytes received.
    pub bytes: u64,
}

impl State {
    pub fn source_of(&self, file: FileId) -> Option<&Path> {
        self.opened.iter().find(|(f, _)| *f == file).map(|(_, p)| p.as_path())
    }
}

#[derive(Clone, Default)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub auto_ack: Arc<AtomicBool>,
    pub handle: Arc<Mutex<Option<TailHandle>>>,
    /// How long each `flushed` takes (a slow downstream).
    pub flush_delay: Arc<Mutex<Duration>>,
    /// The engine dropped the sink: it reads no more (end of input downstream).
    pub sink_dropped: Arc<AtomicBool>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acknowledges every mark flushed so far.
    pub fn ack_pending(&self) -> usize {
        let marks: Vec<_> = self.lock().pending.drain(..).collect();
        let n = marks.len();
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = handle {
            for (f, r) in marks {
                h.acked(f, r);
            }
        }
        n
    }
}

pub struct TestSink(pub Shared);

impl Drop for TestSink {
    fn drop(&mut self) {
        self.0.sink_dropped.store(true, Ordering::Release);
    }
}

impl RecordSink for TestSink {
    fn opened(&mut self, file: FileId, source: &Path) {
        self.0.lock().opened.push((file, source.to_path_buf()));
    }

    fn record(&mut self, file: FileId, record: Record<'_>, keys: &mut KeyGuard) {
        let key = record.time_ns.map(|t| keys.stamp(t));
        let mut s = self.0.lock();
        s.bytes += record.text.len() as u64;
        s.records.push(Got {
            file,
            text: String::from_utf8_lossy(&record.text[..record.text.len().min(200)]).into_owned(),
            offset: record.offset,
            key,
            truncated: record.truncated,
            len: record.text.len(),
        });
    }

    fn flushed(&mut self, file: FileId, resume: Resume) -> impl std::future::Future<Output = ()> + Send {
        self.0.lock().pending.push_back((file, resume));
        if self.0.auto_ack.load(Ordering::Acquire) {
            self.0.ack_pending();
        }
        let delay = *self.0.flush_delay.lock().unwrap_or_else(|e| e.into_inner());
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    fn closed(&mut self, file: FileId) {
        self.0.lock().closed.push(file);
    }
}

/// Settings for tests: short intervals so that everything happens within a second.
pub fn settings(glob: &Path, state: &Path, mode: WatchMode) -> TailSettings {
    let mut s = TailSettings::new(vec![glob.display().to_string()], state.to_path_buf());
    s.poll_interval = Duration::from_millis(50);
    s.rescan_interval = Duration::from_secs(1);
    s.checkpoint_interval = Duration::from_millis(100);
    s.rotate_wait = Duration::from_millis(300);
    s.watch = mode;
    s
}

pub struct Run {
    pub shared: Shared,
    pub handle: TailHandle,
    pub telemetry: Telemetry,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Starts a tailer with a recording sink.
pub fn start(settings: TailSettings, auto_ack: bool) -> Run {
    let shared = Shared::default();
    shared.auto_ack.store(auto_ack, Ordering::Release);
    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let handle = Tailer::start(settings, TestSink(shared.clone()), &telemetry, &tracker, cancel.clone())
        .expect("tailer starts");
    *shared.handle.lock().unwrap() = Some(handle.clone());
    Run { shared, handle, telemetry, tracker, cancel }
}

pub const DEADLINE: Duration = Duration::from_secs(30);

impl Run {
    pub fn set_auto_ack(&self, on: bool) {
        self.shared.auto_ack.store(on, Ordering::Release);
        if on {
            self.shared.ack_pending();
        }
    }

    /// Polls until `cond` holds on the sink's state, panicking with `what` after a generous
    /// deadline (the condition is the signal; the deadline only bounds a failure).
    pub async fn until(&self, what: &str, mut cond: impl FnMut(&State) -> bool) {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if self.shared.auto_ack.load(Ordering::Acquire) {
                self.shared.ack_pending();
            }
            if cond(&self.shared.lock()) {
                return;
            }
            if tokio::time::Instant::now() >= end {
                panic!("timed out waiting for {what}\n{}", self.dump());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the engine and the sink know, for a failure message.
    pub fn dump(&self) -> String {
        let s = self.shared.lock();
        let mut by_tag: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
        for r in &s.records {
            let mut parts = r.text.splitn(3, ' ');
            if let (Some(tag), Some(n)) = (parts.next(), parts.next().and_then(|n| n.parse::<u64>().ok())) {
                *by_tag.entry(tag.to_owned()).or_default().entry(n).or_insert(0) += 1;
            }
        }
        let mut out = String::new();
        for (tag, got) in by_tag {
            let max = got.keys().last().copied().unwrap_or(0);
            let missing: Vec<u64> = (0..=max).filter(|i| !got.contains_key(i)).collect();
            let ranges = ranges(&missing);
            out.push_str(&format!("tag {tag}: {} distinct, max {max}, missing {ranges}\n", got.len()));
        }
        out.push_str(&format!(
            "opened {:?}\nclosed {:?}\npending marks {}\n",
            s.opened,
            s.closed,
            s.pending.len()
        ));
        for f in self.handle.files() {
            out.push_str(&format!("{f:?}\n"));
        }
        out.push_str(&self.telemetry.render_prometheus());
        out
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.telemetry.value(name, &[]).unwrap_or_else(|| panic!("{name} is registered"))
    }

    /// Graceful stop: cancel, then either acknowledge everything flushed (the engine ends
    /// once all is acknowledged) or acknowledge nothing more and drop every handle (the engine
    /// ends when no acknowledgement can come). Returns when the engine's task has ended.
    pub async fn stop_acking(self, ack: bool) -> Shared {
        self.cancel.cancel();
        let Run { shared, handle, tracker, telemetry, .. } = self;
        // Kept for a failure message only (`files()` is the engine's own view).
        let status = handle.clone();
        drop(handle);
        tracker.close();
        if ack {
            // As downstream would: the last acknowledgements come after the end of input, so
            // the engine must wait for them.
            let end = tokio::time::Instant::now() + DEADLINE;
            while !shared.sink_dropped.load(Ordering::Acquire) {
                assert!(tokio::time::Instant::now() < end, "the engine drops the sink after cancel");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shared.auto_ack.store(true, Ordering::Release);
            while !tracker.is_empty() {
                shared.ack_pending();
                assert!(
                    tokio::time::Instant::now() < end,
                    "the engine ends once all is acknowledged: {:?}\n{}",
                    status.files(),
                    telemetry.render_prometheus()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            drop(status);
            shared.auto_ack.store(false, Ordering::Release);
            shared.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        tokio::time::timeout(DEADLINE, tracker.wait()).await.expect("the engine ends after cancel");
        shared
    }

    pub async fn stop(self) -> Shared {
        self.stop_acking(true).await
    }

    /// Stops as `kill -9` would leave things: whatever the engine writes after now is
    /// discarded and the checkpoint on disk is the one of this moment.
    pub async fn kill(self, state_dir: &Path) -> Shared {
        let ck = state_dir.join("tail-checkpoint.json");
        let snapshot = std::fs::read(&ck).expect("a checkpoint was written");
        let shared = self.stop_acking(false).await;
        std::fs::write(&ck, snapshot).unwrap();
        shared
    }
}

fn ranges(v: &[u64]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        out.push(if start == v[i] { format!("{start}") } else { format!("{start}-{}", v[i]) });
        i += 1;
    }
    format!("[{}]", out.join(", "))
}

/// Appends numbered CRI lines to a file: `<time> stdout F <tag> <seq>`. Ten lines share each
/// runtime time, so the key guard has work to do.
pub struct Writer {
    pub path: PathBuf,
    file: File,
    pub tag: String,
    pub next: u64,
    /// Bytes of padding per line.
    pub pad: usize,
}

impl Writer {
    pub fn create(path: &Path, tag: &str) -> Self {
        Writer { path: path.to_path_buf(), file: append(path), tag: tag.to_owned(), next: 0, pad: 40 }
    }

    pub fn line_text(&self, seq: u64) -> String {
        format!("{} {:08} {}", self.tag, seq, "x".repeat(self.pad))
    }

    pub fn write(&mut self, n: u64) {
        let mut buf = String::new();
        for _ in 0..n {
            let seq = self.next;
            self.next += 1;
            let t = seq / 10;
            buf.push_str(&format!(
                "2024-01-01T00:{:02}:{:02}.{:09}Z stdout F {}\n",
                t / 60 % 60,
                t % 60,
                0,
                self.line_text(seq)
            ));
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    /// kubelet's rotation: rename the live file to `<name>.<stamp>`, then the runtime writes
    /// to a new file at the old name.
    pub fn rotate(&mut self, stamp: &str) -> PathBuf {
        let rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        std::fs::rename(&self.path, &rotated).unwrap();
        self.file = append(&self.path);
        rotated
    }

    /// logrotate's copytruncate: copy to `<name>.<suffix>`, truncate the live file in place.
    pub fn copytruncate(&mut self, suffix: &str) -> PathBuf {
        let copy = PathBuf::from(format!("{}.{suffix}", self.path.display()));
        std::fs::copy(&self.path, &copy).unwrap();
        self.file.set_len(0).unwrap();
        copy
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// kubelet's compression of a rotated file (one helper for every test binary).
pub use crate::container_logs::gzip_like_kubelet;

/// Sequence numbers of `tag` received, with how often each came.
pub fn seqs(state: &State, tag: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    let prefix = format!("{tag} ");
    for r in &state.records {
        if let Some(rest) = r.text.strip_prefix(&prefix) {
            if let Some(n) = rest.get(..8).and_then(|d| d.parse::<u64>().ok()) {
                *out.entry(n).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Whether every line 0..n of `tag` arrived.
pub fn all_arrived(state: &State, tag: &str, n: u64) -> bool {
    let got = seqs(state, tag);
    (0..n).all(|i| got.contains_key(&i))
}

/// The sequence numbers of 0..n missing, for failure messages.
pub fn missing(state: &State, tag: &str, n: u64) -> Vec<u64> {
    let got = seqs(state, tag);
    (0..n).filter(|i| !got.contains_key(i)).collect()
}

/// Log lines captured from every thread (the engine logs from its own thread).
pub fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: std::sync::Once = std::sync::Once::new();
    let logs = LOGS.get_or_init(Default::default);
    INIT.call_once(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    logs
}

//! The tail engine: one blocking thread that owns every followed file, reads them in turn,
//! hands records to the [`RecordSink`], tracks rotation, and writes the checkpoint from the
//! sink's acknowledgements.
//!
//! Why one thread: reads are syscalls on files in the page cache (microseconds), records are
//! handed over by reference without a copy, and one owner means no lock around a file's
//! decoder. The async world is met in two places: the sink's `flushed` future, awaited with
//! `Handle::block_on` (while it waits the engine keeps processing acknowledgements, rescans and
//! checkpoints, but reads nothing), and acknowledgements, which arrive through [`TailHandle`]
//! from any task.
//!
//! ## Shutdown order
//!
//! 1. The cancellation token fires: the engine reads no more. A `flushed` already awaited is
//!    awaited to its end (the sink must not block forever once cancelled).
//! 2. The engine drops the sink: end of input for whatever the sink feeds.
//! 3. Downstream drains and acknowledges through [`TailHandle::acked`]; the engine writes the
//!    checkpoint as acknowledgements come.
//! 4. When every mark handed out is acknowledged, or every [`TailHandle`] is dropped (no
//!    acknowledgement can come any more), the engine writes the final checkpoint and its task
//!    ends. So the caller keeps its acknowledging side alive until then and waits on the task
//!    tracker (with its grace: a `kill -9` at any point loses nothing, the last checkpoint
//!    written only holds acknowledged points).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, Metadata};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::checkpoint::{self, Checkpoint, CheckpointError, Entry, Finished};
use super::container::DecodeError;
use super::decoder::{DecodeCounts, FileDecoder, Resume};
use super::discover::{self, Compression, Glob};
use super::fluentd::{self, PosFile};
use super::identity::{
    self, before_start, FileKey, Fingerprint, Observed, Saved, Verdict, FINGERPRINT_BYTES,
};
use super::schedule::{read_allowance, RoundRobin};
use super::watch::{self, DirWatch, Fallback, Signals};
use super::{FileId, RecordSink, StartAt, TailError, TailSettings, WatchMode};
use crate::access::KeyGuard;
use crate::telemetry::{Counter, Gauge, Telemetry};

/// Finished files are remembered this long, to recognise their `.gz` (kubelet compresses a
/// rotated file within seconds to minutes).
const FINISHED_TTL: Duration = Duration::from_secs(3600);
const FINISHED_MAX: usize = 4096;
/// mtime comparisons allow this much: a sibling written within it of the last sighting of the
/// live file may be one we never saw (reading it again costs duplicates, missing it costs loss).
const MTIME_SLACK_NS: i64 = 1_000_000_000;
/// Without changes, the checkpoint is still rewritten this often, so its `written_ns` stays
/// recent (after a restart, rotated files newer than it are read).
const CHECKPOINT_REFRESH: Duration = Duration::from_secs(10);
/// Passes that found nothing are at least this far apart (events come with every write).
const MIN_PASS_GAP: Duration = Duration::from_millis(5);
/// A read pass gives acknowledgements and rescans a turn after this long.
const PASS_BUDGET: Duration = Duration::from_millis(50);

/// Starts the engine.
pub struct Tailer;

impl Tailer {
    /// Loads the checkpoint (or imports fluentd's pos_file on the very first start) and starts
    /// the engine on `tracker` as a blocking task; it runs until `cancel` fires and the
    /// acknowledgements are in (see the module docs for the order). Must be called inside a
    /// tokio runtime (multi-threaded: the sink's futures and the engine's waits run on it).
    pub fn start<S: RecordSink>(
        settings: TailSettings,
        sink: S,
        telemetry: &Telemetry,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<TailHandle, TailError> {
        let rt = Handle::try_current().map_err(|_| TailError::NoRuntime)?;
        if settings.read_chunk_bytes == 0 || settings.max_unacked_bytes == 0 {
            return Err(TailError::Invalid {
                key: "read_chunk_bytes/max_unacked_bytes",
                message: "must be positive",
            });
        }
        let globs = settings.globs.iter().map(|g| Glob::new(g)).collect::<Result<Vec<_>, _>>()?;
        let dir = &settings.state_dir;
        std::fs::create_dir_all(dir)
            .map_err(|source| TailError::StateDir { path: dir.display().to_string(), source })?;
        let origin = match checkpoint::load(dir) {
            Ok(Some(c)) => Origin::Restart(c),
            Ok(None) => match &settings.fluentd_pos_file {
                Some(pos) => match std::fs::read(pos) {
                    Ok(text) => {
                        let since = std::fs::metadata(pos).map(|m| mtime_ns(&m)).unwrap_or(0);
                        let parsed = fluentd::parse(&text);
                        tracing::info!(
                            pos_file = %pos.display(),
                            files = parsed.positions.len(),
                            unparsable = parsed.unparsable,
                            "importing fluentd's positions (first start)"
                        );
                        Origin::PosFile(parsed, since)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Origin::Fresh,
                    Err(source) => {
                        return Err(TailError::PosFile { path: pos.display().to_string(), source })
                    }
                },
                None => Origin::Fresh,
            },
            Err(e @ (CheckpointError::Decode { .. } | CheckpointError::Version { .. })) => {
                // Reading everything again costs duplicates; starting at the end would lose
                // lines. At least once wins; the bad file is kept for the operator.
                let aside = checkpoint::set_aside(dir);
                tracing::error!(
                    error = %e,
                    kept_as = ?aside,
                    "checkpoint unreadable: every file and rotation present is read from its start"
                );
                Origin::Restart(Checkpoint::new(0, Vec::new(), Vec::new()))
            }
            Err(e) => return Err(e.into()),
        };
        let shared = Arc::new(Shared::default());
        let alive = Arc::new(());
        let handle = TailHandle { shared: shared.clone(), _alive: alive.clone() };
        let engine = Engine::new(settings, globs, rt, cancel, shared, Arc::downgrade(&alive), telemetry);
        drop(alive);
        tracker.spawn_blocking(move || engine.run(sink, origin));
        Ok(handle)
    }
}

/// How this run begins.
enum Origin {
    /// A checkpoint exists.
    Restart(Checkpoint),
    /// First start, fluentd's positions (and the pos_file's mtime, Unix ns).
    PosFile(PosFile, i64),
    /// First start, nothing to import: `start_at` applies.
    Fresh,
}

/// The engine's side of the handle.
#[derive(Debug, Default)]
struct Shared {
    acks: Mutex<Vec<(FileId, Resume)>>,
    signals: Arc<Signals>,
    status: Mutex<Status>,
}

#[derive(Debug, Default, Clone)]
struct Status {
    files: Vec<FileStatus>,
    last_checkpoint: Option<Instant>,
}

/// One followed file as the engine last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub id: FileId,
    pub source: PathBuf,
    /// Its real path when opened (it may since have been renamed or deleted).
    pub path: PathBuf,
    /// Bytes read.
    pub read_offset: u64,
    /// Acknowledged resume offset (what the checkpoint holds).
    pub acked_offset: u64,
    /// Bytes in the file not read yet (live files; 0 once rotated away).
    pub lag_bytes: u64,
    pub rotated: bool,
}

/// The caller's side: acknowledgements in, status out. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TailHandle {
    shared: Arc<Shared>,
    /// The engine watches this (weakly): once every handle is gone, no acknowledgement can
    /// come, and its drain ends.
    _alive: Arc<()>,
}

impl TailHandle {
    /// Records of `file` up to `resume` are durable downstream: its checkpoint may move there.
    /// Call in order per file, with the marks `flushed` handed out; an older or unknown mark is
    /// ignored.
    pub fn acked(&self, file: FileId, resume: Resume) {
        self.shared.acks.lock().unwrap_or_else(|e| e.into_inner()).push((file, resume));
        self.shared.signals.wake.notify_one();
    }

    /// The followed files, as of the engine's last checkpoint tick.
    pub fn files(&self) -> Vec<FileStatus> {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).files.clone()
    }

    /// Time since the checkpoint was last written; `None` before the first write.
    pub fn checkpoint_age(&self) -> Option<Duration> {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).last_checkpoint.map(|t| t.elapsed())
    }
}

/// A file's readable bytes: a plain descriptor (read with `pread` at our offset), or a `.gz`
/// decompressed as a stream.
enum Input {
    Plain(File),
    Gz(Box<MultiGzDecoder<BufReader<File>>>),
    Closed,
}

impl Input {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            let r = match self {
                Input::Plain(f) => f.read_at(buf, offset),
                Input::Gz(r) => r.read(buf),
                Input::Closed => Ok(0),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn plain(&self) -> Option<&File> {
        match self {
            Input::Plain(f) => Some(f),
            _ => None,
        }
    }
}

/// A resume point handed to the sink, with the hash before it for the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    resume: Resume,
    before: Option<u64>,
}

struct Tracked {
    id: FileId,
    source: PathBuf,
    path: PathBuf,
    input: Input,
    key: FileKey,
    fingerprint: Fingerprint,
    gz: bool,
    /// When it stopped being the live file at `source`; `None` while it is.
    rotated_at: Option<Instant>,
    /// Seen rewritten in place by a scan (head changed): restart it as a truncation.
    rewritten: bool,
    read_offset: u64,
    decoder: FileDecoder,
    opened_sent: bool,
    /// The last resume handed to the sink.
    flushed: Resume,
    /// The last mark queued: `flushed`, or the start of the oldest record the sink held back
    /// when it was handed over if that is older (see [`RecordSink::held`]).
    marked: Resume,
    /// When the sink wants `flushed` again though nothing new was read (it holds records).
    due: Option<Instant>,
    /// Handed out, not acknowledged yet, in order.
    marks: VecDeque<Mark>,
    /// What the checkpoint records.
    acked: Mark,
    /// `closed` was sent; kept only until its marks are acknowledged.
    finished: bool,
    undecodable: DecodeCounts,
    /// Size at the last scan (live files), for the lag gauge.
    size: u64,
    /// When a live file was last seen holding the stream read from it (Unix ns): a read that
    /// passed the head check, or a scan that found the head unchanged. Streams written after
    /// it (copytruncate's copies of them) are newer than this.
    intact_ns: i64,
}

impl Tracked {
    /// Bytes read past what the sink acknowledged, which count against the budget: none once
    /// every mark handed out is acknowledged. What lies past the acknowledged resume point
    /// then is held in the decoder (a partial line, a split line's pieces: both capped) or was
    /// handed over behind a split line and acknowledged. Counting it would stall a file whose
    /// split line is longer than the budget, as its resume point cannot move before the last
    /// piece is read.
    fn unacked(&self) -> u64 {
        if self.marks.is_empty() {
            return 0;
        }
        self.read_offset.saturating_sub(self.acked.resume.offset)
    }
}

struct Metrics {
    files_watched: Gauge,
    files_opened: Counter,
    files_rotated: Counter,
    files_truncated: Counter,
    files_finished: Counter,
    files_vanished: Counter,
    lines: Counter,
    bytes: Counter,
    truncated: Counter,
    undecodable: Vec<Counter>,
    lag: Gauge,
    lag_max: Gauge,
    unacked: Gauge,
    pauses: Counter,
    checkpoint_age: Gauge,
    checkpoint_writes: Counter,
    checkpoint_errors: Counter,
    rescans: Counter,
    overflows: Counter,
    polling: Gauge,
    read_errors: Counter,
}

impl Metrics {
    fn new(t: &Telemetry) -> Self {
        Metrics {
            files_watched: t.gauge("logmill_files_watched", "Log files followed now.", &[]),
            files_opened: t.counter("logmill_files_opened_total", "Log files opened.", &[]),
            files_rotated: t.counter(
                "logmill_files_rotated_total",
                "Followed files renamed away or deleted (read on to their end).",
                &[],
            ),
            files_truncated: t.counter(
                "logmill_files_truncated_total",
                "Followed files truncated or rewritten in place (read again from 0).",
                &[],
            ),
            files_finished: t.counter(
                "logmill_files_finished_total",
                "Rotated or deleted files read to their end and closed.",
                &[],
            ),
            files_vanished: t.counter(
                "logmill_files_vanished_total",
                "Files that disappeared before they could be opened or found again.",
                &[],
            ),
            lines: t.counter("logmill_lines_read_total", "Log records read from files.", &[]),
            bytes: t.counter("logmill_bytes_read_total", "Bytes read from log files.", &[]),
            truncated: t.counter(
                "logmill_lines_truncated_total",
                "Log lines longer than max_line_bytes, cut to it.",
                &[],
            ),
            undecodable: DecodeError::ALL
                .iter()
                .map(|e| {
                    t.counter(
                        "logmill_records_undecodable_total",
                        "Container log lines that did not decode, by reason.",
                        &[("reason", e.reason())],
                    )
                })
                .collect(),
            lag: t.gauge("logmill_files_lag_bytes", "Bytes written to live files and not read yet.", &[]),
            // One series per file would grow without bound as pods come and go; the file
            // furthest behind is what an alert needs (its path is in the logs).
            lag_max: t.gauge(
                "logmill_file_lag_max_bytes",
                "Bytes not read yet of the live file furthest behind.",
                &[],
            ),
            unacked: t.gauge(
                "logmill_tail_unacked_bytes",
                "Bytes read and not acknowledged downstream.",
                &[],
            ),
            pauses: t.counter(
                "logmill_tail_pauses_total",
                "Times reading paused at max_unacked_bytes (back-pressure).",
                &[],
            ),
            checkpoint_age: t.gauge(
                "logmill_checkpoint_age_seconds",
                "Seconds since the last checkpoint write.",
                &[],
            ),
            checkpoint_writes: t.counter("logmill_checkpoint_writes_total", "Checkpoint writes.", &[]),
            checkpoint_errors: t.counter("logmill_checkpoint_errors_total", "Failed checkpoint writes.", &[]),
            rescans: t.counter("logmill_tail_rescans_total", "Full rescans of the path globs.", &[]),
            overflows: t.counter(
                "logmill_inotify_overflows_total",
                "Watch event queue overflows (each followed by a rescan).",
                &[],
            ),
            polling: t.gauge("logmill_tail_polling", "1 when files are polled instead of watched.", &[]),
            read_errors: t.counter("logmill_file_read_errors_total", "Failed reads of log files.", &[]),
        }
    }
}

struct Engine {
    settings: TailSettings,
    globs: Vec<Glob>,
    rt: Handle,
    cancel: CancellationToken,
    shared: Arc<Shared>,
    alive: Weak<()>,
    watch: Option<DirWatch>,
    files: BTreeMap<FileId, Tracked>,
    /// source → its live file.
    live: HashMap<PathBuf, FileId>,
    /// source → wall time (ns) its live file was last confirmed by a scan.
    live_seen_ns: HashMap<PathBuf, i64>,
    next_id: u64,
    finished: Vec<Finished>,
    rr: RoundRobin,
    /// Set while this run's first scan happens (`start_at` and pos_file apply to it only).
    first_scan: Option<Origin>,
    last_scan: Instant,
    last_checkpoint_write: Instant,
    last_checkpoint_ok: Option<Instant>,
    dirty: bool,
    paused: bool,
    metrics: Metrics,
    last_read_warning: Option<Instant>,
    /// Matched paths already reported vanished (a dangling symlink stays until the kubelet
    /// removes it: report it once, not at every scan).
    vanished_paths: BTreeSet<PathBuf>,
}

/// What one turn of a file gave.
enum Turn {
    /// Bytes read; `Some` when a new mark is to be flushed.
    Read(Option<Resume>),
    /// Nothing to read now.
    Idle,
    /// At its end and done: finish it.
    Finish,
    /// Truncated or rewritten in place.
    Restart,
}

impl Engine {
    fn new(
        settings: TailSettings,
        globs: Vec<Glob>,
        rt: Handle,
        cancel: CancellationToken,
        shared: Arc<Shared>,
        alive: Weak<()>,
        telemetry: &Telemetry,
    ) -> Self {
        let now = Instant::now();
        Engine {
            settings,
            globs,
            rt,
            cancel,
            shared,
            alive,
            watch: None,
            files: BTreeMap::new(),
            live: HashMap::new(),
            live_seen_ns: HashMap::new(),
            next_id: 1,
            finished: Vec::new(),
            rr: RoundRobin::default(),
            first_scan: None,
            last_scan: now,
            last_checkpoint_write: now,
            last_checkpoint_ok: None,
            dirty: true,
            paused: false,
            metrics: Metrics::new(telemetry),
            last_read_warning: None,
            vanished_paths: BTreeSet::new(),
        }
    }

    fn run<S: RecordSink>(mut self, mut sink: S, origin: Origin) {
        let span = tracing::info_span!("tail");
        let _enter = span.enter();
        if self.settings.watch == WatchMode::Notify {
            match DirWatch::start(self.shared.signals.clone()) {
                Ok(w) => self.watch = Some(w),
                Err((why, error)) => self.fall_back_to_polling(why, &error),
            }
        } else {
            self.metrics.polling.set(1);
        }
        match origin {
            Origin::Restart(c) => {
                self.finished = c.finished.clone();
                self.restore(&c);
                self.scan();
                // Rotations that happened while logmill was down, and files that were live for
                // less than a checkpoint interval: newer than the checkpoint, never read. Beside
                // a live file, whatever was copied away since it was last seen intact (a
                // copytruncate while reading was paused, before the checkpoint).
                let mut since: BTreeMap<(PathBuf, PathBuf), i64> = BTreeMap::new();
                let files = c.files.iter().map(|e| {
                    (
                        (e.source.clone(), e.path.clone()),
                        e.intact_ns.unwrap_or(c.written_ns).min(c.written_ns),
                    )
                });
                let followed =
                    self.files.values().map(|t| ((t.source.clone(), t.path.clone()), c.written_ns));
                for (paths, ns) in files.chain(followed) {
                    let at = since.entry(paths).or_insert(ns);
                    *at = (*at).min(ns);
                }
                for ((source, path), ns) in since {
                    self.adopt_siblings(&source, &path, ns - MTIME_SLACK_NS);
                }
            }
            Origin::PosFile(pos, since) => {
                self.first_scan = Some(Origin::PosFile(pos, since));
                self.scan();
                if let Some(Origin::PosFile(pos, _)) = self.first_scan.take() {
                    self.import_rotated(&pos, since);
                }
            }
            Origin::Fresh => {
                self.first_scan = Some(Origin::Fresh);
                self.scan();
                self.first_scan = None;
            }
        }
        self.write_checkpoint();

        let mut buf = vec![0u8; self.settings.read_chunk_bytes];
        while !self.cancel.is_cancelled() {
            self.maintain();
            self.flush_due(&mut sink);
            let pass = Instant::now();
            let more = self.read_pass(&mut sink, &mut buf);
            if !more {
                let deadline = self.next_deadline();
                self.wait(deadline, true);
                // Every write to a watched directory is an event; a busy node writes
                // thousands a second. Passes that find little are spaced, so an idle pass
                // over every file costs at most one per `MIN_PASS_GAP`.
                let gap = pass + MIN_PASS_GAP;
                if Instant::now() < gap && !self.cancel.is_cancelled() {
                    std::thread::sleep(gap - Instant::now());
                }
            }
        }
        // A split line whose first pieces were read, another stream's lines read after them
        // (reading paused, or a chunk ended, between its pieces): the checkpoint can only hold
        // the line's start, and a restart would send those lines again. Its other pieces are
        // normally written already: it is read to its end first, past the budget.
        self.complete_split_lines(&mut sink, &mut buf);
        // 1-2: no more reading; the sink's end is end of input downstream.
        drop(sink);
        tracing::info!(unacked_bytes = self.unacked(), "tail stopped reading; waiting for acknowledgements");
        // 3-4: acknowledgements until all are in or nobody can send them.
        loop {
            self.process_acks();
            if self.dirty {
                self.write_checkpoint();
            }
            let outstanding = self.files.values().any(|t| !t.marks.is_empty());
            if !outstanding || self.alive.upgrade().is_none() {
                break;
            }
            let deadline = Instant::now() + self.settings.poll_interval;
            self.wait(deadline, false);
        }
        self.process_acks();
        self.write_checkpoint();
        tracing::info!(unacked_bytes = self.unacked(), "tail finished: final checkpoint written");
    }

    fn fall_back_to_polling(&mut self, why: Fallback, error: &notify::Error) {
        self.watch = None;
        self.metrics.polling.set(1);
        tracing::warn!(
            ?why,
            %error,
            "inotify limit reached (fs.inotify.max_user_watches / max_user_instances): polling files every {:?} instead",
            self.settings.poll_interval
        );
    }

    /// Everything but reading: acknowledgements, rescans, checkpoints, gauges. Never touches
    /// the sink, so it also runs while a `flushed` future is pending.
    fn maintain(&mut self) {
        self.process_acks();
        let signals = self.shared.signals.clone();
        if signals.limit.swap(false, Ordering::AcqRel) {
            self.fall_back_to_polling(
                Fallback::WatchLimit,
                &notify::Error::new(notify::ErrorKind::MaxFilesWatch),
            );
        }
        let overflow = signals.overflow.swap(false, Ordering::AcqRel);
        if overflow {
            self.metrics.overflows.add(1);
            tracing::warn!("file watch events were lost (queue overflow): rescanning");
        }
        let names = signals.names.swap(false, Ordering::AcqRel);
        let polling = self.watch.is_none();
        let scan_every = if polling { self.settings.poll_interval } else { self.settings.rescan_interval };
        if names || overflow || self.last_scan.elapsed() >= scan_every {
            self.scan();
        }
        if self.last_checkpoint_write.elapsed() >= self.settings.checkpoint_interval
            && (self.dirty || self.last_checkpoint_write.elapsed() >= CHECKPOINT_REFRESH)
        {
            self.write_checkpoint();
        }
        if let Some(t) = self.last_checkpoint_ok {
            self.metrics.checkpoint_age.set(t.elapsed().as_secs());
        }
        self.metrics.unacked.set(self.unacked());
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut d = now + self.settings.poll_interval;
        let ck = self.last_checkpoint_write + self.settings.checkpoint_interval;
        if self.dirty && ck < d {
            d = ck.max(now);
        }
        if let Some(due) = self.files.values().filter_map(|t| t.due).min() {
            d = d.min(due.max(now));
        }
        d
    }

    /// Sleeps until `deadline`, a wake-up (event, acknowledgement) or, if `on_cancel`, the
    /// cancellation.
    fn wait(&self, deadline: Instant, on_cancel: bool) {
        let signals = self.shared.signals.clone();
        let cancel = self.cancel.clone();
        self.rt.block_on(async move {
            let cancelled = async {
                if on_cancel {
                    cancel.cancelled().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = signals.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = cancelled => {}
            }
        });
    }

    fn unacked(&self) -> u64 {
        self.files.values().map(Tracked::unacked).sum()
    }

    fn new_id(&mut self) -> FileId {
        let id = FileId(self.next_id);
        self.next_id += 1;
        id
    }

    // ---------------------------------------------------------------- reading

    /// Reads in rounds, one chunk per file with data per round, until nothing is left, the
    /// budget is spent or the time slice is over. Returns whether there may be more to read.
    fn read_pass<S: RecordSink>(&mut self, sink: &mut S, buf: &mut [u8]) -> bool {
        let started = Instant::now();
        loop {
            let ids: Vec<u64> = self.files.iter().filter(|(_, t)| !t.finished).map(|(id, _)| id.0).collect();
            let mut progress = false;
            for id in self.rr.order(&ids) {
                if self.cancel.is_cancelled() {
                    return false;
                }
                let id = FileId(id);
                let Some(allowance) =
                    read_allowance(buf.len(), self.unacked(), self.settings.max_unacked_bytes)
                else {
                    if !self.paused {
                        self.paused = true;
                        self.metrics.pauses.add(1);
                        tracing::debug!(
                            unacked_bytes = self.unacked(),
                            "reading paused: waiting for acknowledgements"
                        );
                    }
                    // Rotated files at their end still finish (no reading needed): only
                    // `Finish` is acted on while paused.
                    self.finish_idle_rotated(sink);
                    return false;
                };
                self.paused = false;
                match self.turn(id, sink, &mut buf[..allowance]) {
                    Turn::Read(mark) => {
                        progress = true;
                        self.rr.served(id.0);
                        if let Some(resume) = mark {
                            self.flush(sink, id, resume);
                        }
                    }
                    Turn::Idle => {}
                    Turn::Finish => self.finish(sink, id),
                    Turn::Restart => self.restart_truncated(sink, id),
                }
            }
            if !progress || started.elapsed() >= PASS_BUDGET {
                return progress;
            }
            self.process_acks();
        }
    }

    /// On a clean stop: reads each file whose decoder handed over records past its resume point
    /// (see [`FileDecoder::ahead_of_resume`]) until the split line holding that point is
    /// whole, so that the last checkpoint is past every record handed over. Bounded by a
    /// line's largest wrapped size: a line still being written is left as it is.
    fn complete_split_lines<S: RecordSink>(&mut self, sink: &mut S, buf: &mut [u8]) {
        let bound = (self.settings.max_line_bytes as u64).saturating_mul(6) + buf.len() as u64;
        let ids: Vec<FileId> = self
            .files
            .values()
            .filter(|t| !t.finished && t.decoder.ahead_of_resume())
            .map(|t| t.id)
            .collect();
        for id in ids {
            let Some(start) = self.files.get(&id).map(|t| t.read_offset) else { continue };
            while self
                .files
                .get(&id)
                .is_some_and(|t| t.decoder.ahead_of_resume() && t.read_offset - start < bound)
            {
                match self.turn(id, sink, buf) {
                    Turn::Read(Some(resume)) => self.flush(sink, id, resume),
                    Turn::Read(None) => {}
                    Turn::Idle | Turn::Finish | Turn::Restart => break,
                }
            }
        }
    }

    /// While paused, rotated files that are already at their end can still be closed.
    fn finish_idle_rotated<S: RecordSink>(&mut self, sink: &mut S) {
        let wait = self.settings.rotate_wait;
        let done: Vec<FileId> = self
            .files
            .values()
            .filter(|t| {
                !t.finished
                    && t.rotated_at.is_some_and(|r| r.elapsed() >= wait)
                    && t.input
                        .plain()
                        .and_then(|f| f.metadata().ok())
                        .is_some_and(|m| m.len() <= t.read_offset)
            })
            .map(|t| t.id)
            .collect();
        for id in done {
            self.finish(sink, id);
        }
    }

    /// One read of `id`.
    fn turn<S: RecordSink>(&mut self, id: FileId, sink: &mut S, buf: &mut [u8]) -> Turn {
        let rotate_wait = self.settings.rotate_wait;
        let Some(t) = self.files.get_mut(&id) else { return Turn::Idle };
        if t.rewritten {
            return Turn::Restart;
        }
        let n = match t.input.read(buf, t.read_offset) {
            Ok(n) => n,
            Err(error) => {
                self.metrics.read_errors.add(1);
                let quiet = self.last_read_warning.is_some_and(|w| w.elapsed() < Duration::from_secs(10));
                if !quiet {
                    self.last_read_warning = Some(Instant::now());
                    tracing::warn!(path = %t.path.display(), %error, "read failed");
                }
                // A broken .gz (or an I/O error on a rotated file) ends that file: what could be
                // read was read.
                if t.gz || t.rotated_at.is_some() {
                    return Turn::Finish;
                }
                return Turn::Idle;
            }
        };
        if n == 0 {
            return match (&t.input, t.rotated_at) {
                // A .gz is complete: its end is the end.
                (Input::Gz(_), _) | (Input::Closed, _) => Turn::Finish,
                (Input::Plain(f), None) => match f.metadata() {
                    Ok(m) if m.len() < t.read_offset => Turn::Restart,
                    Ok(m) if m.nlink() == 0 => {
                        // Deleted while live: read out through the descriptor, then finish.
                        t.rotated_at = Some(Instant::now());
                        self.live.remove(&t.source);
                        self.metrics.files_rotated.add(1);
                        tracing::info!(path = %t.path.display(), "deleted: reading it out");
                        Turn::Idle
                    }
                    _ => Turn::Idle,
                },
                (Input::Plain(_), Some(at)) if at.elapsed() >= rotate_wait => Turn::Finish,
                (Input::Plain(_), Some(_)) => Turn::Idle,
            };
        }
        // A live file truncated and written past our offset since the last read (copytruncate
        // while reading was paused, or between two reads) would hand over the middle of its
        // new content as if it continued the old. Its head tells: checked after the read, so
        // a truncation before the read cannot slip through. The chunk is then dropped and the
        // file restarted (the old stream may read on in the copy).
        if t.rotated_at.is_none() {
            if head_changed(t) {
                t.rewritten = true;
                return Turn::Restart;
            }
            t.intact_ns = crate::timefmt::now_ns();
        }
        if !t.opened_sent {
            t.opened_sent = true;
            sink.opened(id, &t.source);
        }
        let chunk = &buf[..n];
        let chunk_start = t.read_offset;
        let (mut lines, mut cut) = (0u64, 0u64);
        t.decoder.push(chunk, |r, keys| {
            lines += 1;
            cut += u64::from(r.truncated);
            sink.record(id, r, keys);
        });
        t.read_offset += n as u64;
        self.metrics.lines.add(lines);
        self.metrics.truncated.add(cut);
        self.metrics.bytes.add(n as u64);
        let counts = t.decoder.counts();
        for (i, c) in self.metrics.undecodable.iter().enumerate() {
            c.add(counts.undecodable[i] - t.undecodable.undecodable[i]);
        }
        t.undecodable = counts;
        if t.read_offset > t.fingerprint.len {
            grow_fingerprint(t);
        }
        let resume = t.decoder.resume();
        // The sink has this read's records: what it holds of them is known before `flushed`,
        // so the mark (what shutdown waits for) is never past what it will acknowledge. Its
        // acknowledgement may go further (a held record emitted by `flushed` itself).
        let held = sink.held(id);
        t.due = held.map(|h| h.until);
        let mark = older(resume, held.map(|h| h.from));
        if mark != t.marked {
            let before = hash_before(&t.input, chunk, chunk_start, mark.offset);
            t.marks.push_back(Mark { resume: mark, before });
            t.marked = mark;
        }
        let moved = resume != t.flushed;
        t.flushed = resume;
        // Records may have completed behind a split record that holds the resume point (a
        // stderr line between the pieces of a stdout one): the sink still hears that they are
        // all handed over, with the unchanged mark.
        Turn::Read((moved || lines > 0).then_some(resume))
    }

    /// Awaits the sink's `flushed`, keeping everything but reading going meanwhile.
    fn flush<S: RecordSink>(&mut self, sink: &mut S, id: FileId, resume: Resume) {
        let signals = self.shared.signals.clone();
        let tick = self.settings.poll_interval;
        let rt = self.rt.clone();
        {
            let mut fut = pin!(sink.flushed(id, resume));
            loop {
                let done = rt.block_on(async {
                    tokio::select! {
                        _ = &mut fut => true,
                        _ = signals.wake.notified() => false,
                        _ = tokio::time::sleep(tick) => false,
                    }
                });
                if done {
                    break;
                }
                self.maintain();
            }
        }
        // `flushed` may have handed held records on, or begun holding others.
        if let Some(t) = self.files.get_mut(&id) {
            t.due = sink.held(id).map(|h| h.until);
        }
    }

    /// Calls `flushed` for files whose sink's deadline passed (a merged record's timeout): a
    /// held record is handed on in time even when its file gets no more writes, and while
    /// reading is paused (held records keep the checkpoint, hence the unacknowledged bytes,
    /// where they are).
    fn flush_due<S: RecordSink>(&mut self, sink: &mut S) {
        let now = Instant::now();
        let due: Vec<FileId> = self
            .files
            .values()
            .filter(|t| t.opened_sent && !t.finished && t.due.is_some_and(|d| d <= now))
            .map(|t| t.id)
            .collect();
        for id in due {
            if self.cancel.is_cancelled() {
                return;
            }
            let Some(resume) = self.files.get(&id).map(|t| t.flushed) else { continue };
            self.flush(sink, id, resume);
            // A sink that still reports a passed deadline would have the engine call it in a
            // loop: it is asked again after the file's next read.
            if let Some(t) = self.files.get_mut(&id) {
                t.due = t.due.filter(|&d| d > now);
            }
        }
    }

    /// A rotated file at its end: the last line without its newline is whole, the sink is told
    /// it is closed, and the file is forgotten once all of it is acknowledged.
    fn finish<S: RecordSink>(&mut self, sink: &mut S, id: FileId) {
        let Some(t) = self.files.get_mut(&id) else { return };
        let mut lines = 0u64;
        if t.opened_sent {
            t.decoder.finish(|r, keys| {
                lines += 1;
                sink.record(id, r, keys);
            });
            // No more records: what the sink holds goes at the flush below.
            sink.ending(id);
        }
        self.metrics.lines.add(lines);
        let resume = t.decoder.resume();
        let marked = older(resume, t.opened_sent.then(|| sink.held(id)).flatten().map(|h| h.from));
        t.due = None;
        let mark = (resume != t.flushed || marked != t.marked).then(|| {
            if marked != t.marked {
                let before = match &t.input {
                    Input::Plain(f) => hash_before_at(f, marked.offset),
                    _ => None,
                };
                t.marks.push_back(Mark { resume: marked, before });
                t.marked = marked;
            }
            t.flushed = resume;
            resume
        });
        t.input = Input::Closed;
        t.finished = true;
        tracing::info!(path = %t.path.display(), source = %t.source.display(), bytes = t.read_offset, "rotated file read to its end");
        let opened = t.opened_sent;
        self.metrics.files_finished.add(1);
        if let Some(resume) = mark.filter(|_| opened) {
            self.flush(sink, id, resume);
        }
        if opened {
            sink.closed(id);
        }
        self.dirty = true;
        self.forget_if_done(id);
    }

    /// Truncated (or rewritten) in place: the old stream ends, the file is read again from 0
    /// as a new one. With copytruncate the copy sits beside it: the old stream reads on there.
    /// Streams written and copied away since the old one was last seen on the live file
    /// (copytruncate twice while reading was paused) exist only in their copies: those are
    /// adopted as rotations never seen.
    fn restart_truncated<S: RecordSink>(&mut self, sink: &mut S, id: FileId) {
        let Some(mut old) = self.files.remove(&id) else { return };
        self.metrics.files_truncated.add(1);
        let (source, live_path, since) =
            (old.source.clone(), old.path.clone(), old.intact_ns - MTIME_SLACK_NS);
        let live_input = std::mem::replace(&mut old.input, Input::Closed);
        let copy = self.find_copy(&old);
        let new_id = self.new_id();
        let mut fresh = Tracked {
            id: new_id,
            source: old.source.clone(),
            path: old.path.clone(),
            input: live_input,
            key: old.key,
            fingerprint: Fingerprint::of(b""),
            gz: false,
            rotated_at: old.rotated_at,
            rewritten: false,
            read_offset: 0,
            decoder: FileDecoder::new(
                self.settings.wrapping,
                self.settings.max_line_bytes,
                Resume::default(),
            ),
            opened_sent: false,
            flushed: Resume::default(),
            marked: Resume::default(),
            due: None,
            marks: VecDeque::new(),
            acked: Mark { resume: Resume::default(), before: None },
            finished: false,
            undecodable: DecodeCounts::default(),
            size: 0,
            intact_ns: crate::timefmt::now_ns(),
        };
        if let Some(f) = fresh.input.plain() {
            if let Ok(fp) = head_fingerprint(f) {
                fresh.fingerprint = fp;
            }
        }
        if self.live.get(&old.source) == Some(&id) {
            self.live.insert(old.source.clone(), new_id);
        }
        match copy {
            Some(FoundCopy { path, input, key, fingerprint }) => {
                tracing::info!(path = %old.path.display(), copy = %path.display(), at = old.read_offset, "truncated after a copy: reading on in the copy");
                old.input = input;
                old.key = key;
                old.gz = matches!(old.input, Input::Gz(_));
                old.path = path;
                // The copy's whole head: a head taken while the stream was short would not
                // know the copy's `.gz` for the same content.
                old.fingerprint = fingerprint;
                old.rotated_at = Some(Instant::now());
                old.rewritten = false;
                self.files.insert(id, old);
            }
            None => {
                tracing::info!(path = %old.path.display(), at = old.read_offset, "truncated: reading again from 0");
                if old.opened_sent {
                    // Records the sink holds were read whole and cannot be read again: handed
                    // on (their acknowledgements no longer move anything).
                    if sink.held(id).is_some() {
                        sink.ending(id);
                        self.flush(sink, id, old.flushed);
                    }
                    sink.closed(id);
                }
            }
        }
        self.files.insert(new_id, fresh);
        self.adopt_siblings(&source, &live_path, since);
        self.dirty = true;
    }

    /// copytruncate's copy of `old`: a rotated sibling with the same head, at least as long as
    /// what was read, not followed already.
    fn find_copy(&self, old: &Tracked) -> Option<FoundCopy> {
        if old.fingerprint.len == 0 {
            return None;
        }
        let saved =
            Saved { key: old.key, fingerprint: old.fingerprint, offset: old.read_offset, before: None };
        for (path, comp) in discover::rotated_siblings(&old.path) {
            let Ok(found) = observe_path(&path, comp, &saved) else { continue };
            if found.observed.key.is_some_and(|k| self.is_tracked_key(k)) {
                continue;
            }
            if identity::judge(&saved, &found.observed) == Verdict::Resume {
                let Ok(input) = open_input(&path, comp, old.read_offset) else { continue };
                let fingerprint = match &input {
                    Input::Plain(f) => head_fingerprint(f).ok(),
                    _ => gz_fingerprint(&path).ok(),
                };
                let fingerprint = fingerprint.unwrap_or(old.fingerprint);
                return Some(FoundCopy { path, input, key: found.key, fingerprint });
            }
        }
        None
    }

    // ---------------------------------------------------------------- acknowledgements

    fn process_acks(&mut self) {
        let acks = std::mem::take(&mut *self.shared.acks.lock().unwrap_or_else(|e| e.into_inner()));
        for (id, resume) in acks {
            let Some(t) = self.files.get_mut(&id) else { continue };
            let mut best = None;
            while let Some(m) = t.marks.front() {
                if m.resume.offset > resume.offset {
                    break;
                }
                best = t.marks.pop_front();
            }
            // A sink that holds records acknowledges points between the marks (a held
            // record handed on at its deadline moves the point without a read): any point up
            // to what was handed over counts, never past it.
            let forward = resume.offset >= t.acked.resume.offset;
            let ahead = resume.offset > t.acked.resume.offset && resume.offset <= t.flushed.offset;
            if best.is_some() && forward || ahead {
                t.acked = match best {
                    Some(m) if m.resume == resume => m,
                    _ => Mark {
                        resume,
                        before: t.input.plain().and_then(|f| hash_before_at(f, resume.offset)),
                    },
                };
                self.dirty = true;
            }
            if t.finished {
                self.forget_if_done(id);
            }
        }
    }

    fn forget_if_done(&mut self, id: FileId) {
        let Some(t) = self.files.get(&id) else { return };
        if !(t.finished && t.marks.is_empty()) {
            return;
        }
        if let Some(t) = self.files.remove(&id) {
            if self.live.get(&t.source) == Some(&id) {
                self.live.remove(&t.source);
            }
            if t.fingerprint.len > 0 {
                self.finished.push(Finished {
                    source: t.source,
                    fingerprint: t.fingerprint,
                    len: t.read_offset,
                    at_ns: crate::timefmt::now_ns(),
                });
            }
            self.dirty = true;
        }
    }

    // ---------------------------------------------------------------- discovery

    fn is_tracked_key(&self, key: FileKey) -> bool {
        self.files.values().any(|t| !t.gz && t.key == key)
    }

    /// Expands the globs: new files are opened, live files whose path now names another file
    /// (or nothing) become rotated, and the watches follow.
    fn scan(&mut self) {
        self.last_scan = Instant::now();
        self.metrics.rescans.add(1);
        let now = crate::timefmt::now_ns();
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        let mut matched: Vec<PathBuf> = self.globs.iter().flat_map(discover::expand).collect();
        matched.sort();
        matched.dedup();
        let names: BTreeSet<Vec<u8>> = matched.iter().map(|p| path_bytes(p)).collect();
        let names_paths = matched.clone();
        for path in matched {
            if self.settings.exclude.as_ref().is_some_and(|f| f(&path)) {
                continue;
            }
            if is_rotation_of_a_match(&path, &names) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A dangling symlink: the runtime removed the target already. Known
                    // files are handled below as gone.
                    // (A followed source between rename and new file is not that.)
                    if !self.live_seen_ns.contains_key(&path) {
                        self.vanished(&path, "gone before it could be opened");
                    }
                    continue;
                }
                Err(_) => continue,
            };
            if !meta.is_file() {
                continue;
            }
            seen.insert(path.clone());
            let key = key_of(&meta);
            if let Some(&id) = self.live.get(&path) {
                if let Some(t) = self.files.get_mut(&id) {
                    if t.key == key {
                        t.size = meta.len();
                        if !t.rewritten {
                            if head_changed(t) {
                                t.rewritten = true;
                            } else {
                                t.intact_ns = now;
                            }
                        }
                        self.live_seen_ns.insert(path.clone(), now);
                        continue;
                    }
                    // The path names another file now: the followed one was renamed away.
                    t.rotated_at = Some(Instant::now());
                    self.metrics.files_rotated.add(1);
                    tracing::info!(source = %path.display(), "rotated: reading the old file to its end");
                }
                self.live.remove(&path);
                self.dirty = true;
                self.open_successor(&path, key, now);
                continue;
            }
            if self.is_tracked_key(key) {
                // Already followed under this name (a restored file), or matched twice.
                if let Some(t) =
                    self.files.values_mut().find(|t| !t.gz && t.key == key && t.rotated_at.is_none())
                {
                    if t.source == path {
                        let id = t.id;
                        self.live.insert(path.clone(), id);
                    }
                }
                self.live_seen_ns.insert(path.clone(), now);
                continue;
            }
            self.open_successor(&path, key, now);
        }
        let matched_now: BTreeSet<&PathBuf> = names_paths.iter().collect();
        self.vanished_paths.retain(|p| matched_now.contains(p));
        // Live files whose path is gone: deleted or renamed out of the globs.
        let gone: Vec<(PathBuf, FileId)> =
            self.live.iter().filter(|(p, _)| !seen.contains(*p)).map(|(p, id)| (p.clone(), *id)).collect();
        for (path, id) in gone {
            self.live.remove(&path);
            if let Some(t) = self.files.get_mut(&id) {
                t.rotated_at = Some(Instant::now());
                self.metrics.files_rotated.add(1);
                tracing::info!(source = %path.display(), "path gone: reading the file out to its end");
            }
            self.dirty = true;
        }
        self.expire_finished();
        self.update_watches();
        self.publish_status();
    }

    fn update_watches(&mut self) {
        let mut dirs: BTreeSet<PathBuf> =
            self.globs.iter().map(|g| g.root().to_path_buf()).filter(|d| d.is_dir()).collect();
        for t in self.files.values() {
            dirs.extend(watch::dirs_of(&t.source, &t.path));
        }
        if let Some(w) = self.watch.as_mut() {
            if let Err((why, error)) = w.set(&dirs) {
                self.fall_back_to_polling(why, &error);
            }
        }
        self.metrics.files_watched.set(self.files.values().filter(|t| !t.finished).count() as u64);
    }

    fn vanished(&mut self, path: &Path, why: &'static str) {
        if !self.vanished_paths.insert(path.to_path_buf()) {
            return;
        }
        self.metrics.files_vanished.add(1);
        tracing::warn!(path = %path.display(), why, "log file vanished: its unread lines are lost");
    }

    /// Opens the file now at `source`. If another file was live there before, files may have
    /// come and gone between the two scans (rotated twice, or the path briefly missing during
    /// a rename): rotated siblings newer than the last sighting of the old one are adopted.
    fn open_successor(&mut self, source: &Path, key: FileKey, now: i64) {
        let previous = self.live_seen_ns.get(source).copied();
        self.open_new(source, key);
        if let Some(seen) = previous {
            if let Some(id) = self.live.get(source).copied() {
                let real = self.files.get(&id).map(|t| t.path.clone());
                if let Some(real) = real {
                    self.adopt_siblings(source, &real, seen - MTIME_SLACK_NS);
                }
            }
        }
        self.live_seen_ns.insert(source.to_path_buf(), now);
    }

    /// Opens a newly matched file and starts following it.
    fn open_new(&mut self, source: &Path, expected: FileKey) {
        let file = match File::open(source) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.vanished(source, "gone before it could be opened");
                return;
            }
            Err(error) => {
                tracing::warn!(path = %source.display(), %error, "cannot open");
                return;
            }
        };
        let Ok(meta) = file.metadata() else { return };
        let key = key_of(&meta);
        if key != expected && self.is_tracked_key(key) {
            return;
        }
        let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let size = meta.len();
        let (offset, keys) = self.start_offset(source, key, &meta);
        let offset = offset.min(size);
        self.track(source.to_path_buf(), real, Input::Plain(file), key, false, offset, keys, None);
    }

    /// Where a file found by a scan starts (no checkpoint entry of its own).
    fn start_offset(&self, source: &Path, key: FileKey, meta: &Metadata) -> (u64, KeyGuard) {
        let old = self.settings.ignore_older.is_some_and(|limit| {
            meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > limit)
        });
        let first = match &self.first_scan {
            Some(Origin::PosFile(pos, _)) => FirstStart::Fluentd(pos.positions.get(source).copied()),
            Some(Origin::Fresh) => FirstStart::Fresh(self.settings.start_at),
            _ => FirstStart::No,
        };
        (start_point(first, key.ino, meta.len(), old), KeyGuard::default())
    }

    #[allow(clippy::too_many_arguments)] // one constructor for every way a file starts
    fn track(
        &mut self,
        source: PathBuf,
        path: PathBuf,
        input: Input,
        key: FileKey,
        gz: bool,
        offset: u64,
        keys: KeyGuard,
        rotated_at: Option<Instant>,
    ) -> FileId {
        let id = self.new_id();
        let fingerprint = match &input {
            Input::Plain(f) => head_fingerprint(f).unwrap_or(Fingerprint::of(b"")),
            _ => gz_fingerprint(&path).unwrap_or(Fingerprint::of(b"")),
        };
        let before = match &input {
            Input::Plain(f) => hash_before_at(f, offset),
            _ => None,
        };
        let resume = Resume { offset, keys };
        let mark = Mark { resume, before };
        tracing::info!(%id, source = %source.display(), path = %path.display(), offset, gz, rotated = rotated_at.is_some(), "following");
        self.metrics.files_opened.add(1);
        if rotated_at.is_none() {
            self.live.insert(source.clone(), id);
        }
        self.files.insert(
            id,
            Tracked {
                id,
                source,
                path,
                input,
                key,
                fingerprint,
                gz,
                rotated_at,
                rewritten: false,
                read_offset: offset,
                decoder: FileDecoder::new(self.settings.wrapping, self.settings.max_line_bytes, resume),
                opened_sent: false,
                flushed: resume,
                marked: resume,
                due: None,
                marks: VecDeque::new(),
                acked: mark,
                finished: false,
                undecodable: DecodeCounts::default(),
                size: 0,
                intact_ns: crate::timefmt::now_ns(),
            },
        );
        self.dirty = true;
        id
    }

    /// Rotated siblings of `live_path` that no one followed and that changed after `since_ns`:
    /// rotations missed while down or between two scans. Read from their start.
    fn adopt_siblings(&mut self, source: &Path, live_path: &Path, since_ns: i64) {
        if self.settings.exclude.as_ref().is_some_and(|f| f(source)) {
            return;
        }
        // A file opened while it was still short (reading paused since) has a short head:
        // take its whole head now, or its `.gz` would look like a file never seen.
        for t in self.files.values_mut() {
            grow_fingerprint(t);
        }
        for (path, comp) in discover::rotated_siblings(live_path) {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if mtime_ns(&meta) < since_ns {
                continue;
            }
            let key = key_of(&meta);
            if self.is_tracked_key(key) {
                continue;
            }
            let fingerprint = match comp {
                Compression::None => File::open(&path).ok().and_then(|f| head_fingerprint(&f).ok()),
                Compression::Gzip => gz_fingerprint(&path).ok(),
            };
            let Some(fp) = fingerprint else { continue };
            if fp.len > 0 && self.known_content(fp) {
                continue;
            }
            let Ok(input) = open_input(&path, comp, 0) else { continue };
            tracing::info!(source = %source.display(), path = %path.display(), "rotation not seen before: reading it");
            let id = self.track(
                source.to_path_buf(),
                path.clone(),
                input,
                key,
                comp == Compression::Gzip,
                0,
                KeyGuard::default(),
                Some(Instant::now()),
            );
            if let Some(t) = self.files.get_mut(&id) {
                t.fingerprint = fp;
            }
        }
    }

    /// Whether a file with this head is followed or was finished: its `.gz` is not new.
    fn known_content(&self, fp: Fingerprint) -> bool {
        let same = |f: &Fingerprint| f.len == fp.len && f.hash == fp.hash;
        self.files.values().any(|t| same(&t.fingerprint))
            || self.finished.iter().any(|f| same(&f.fingerprint))
    }

    fn expire_finished(&mut self) {
        let limit = crate::timefmt::now_ns() - FINISHED_TTL.as_nanos() as i64;
        self.finished.retain(|f| f.at_ns >= limit);
        if self.finished.len() > FINISHED_MAX {
            let excess = self.finished.len() - FINISHED_MAX;
            self.finished.drain(..excess);
        }
    }

    // ---------------------------------------------------------------- restart

    /// Finds each checkpointed file again: at its path, or beside it renamed or gzipped.
    fn restore(&mut self, c: &Checkpoint) {
        for e in &c.files {
            if self.settings.exclude.as_ref().is_some_and(|f| f(&e.source)) {
                continue;
            }
            let saved = e.saved();
            let mut candidates =
                vec![(e.path.clone(), if e.gz { Compression::Gzip } else { Compression::None })];
            candidates.extend(discover::rotated_siblings(&e.path));
            // A rotated file may have been renamed again since it was checkpointed (Docker's
            // and logrotate's numbered rotations shift `.1` to `.2`): it is looked for among
            // the live file's rotations too.
            if let Ok(live) = std::fs::canonicalize(&e.source) {
                for sibling in discover::rotated_siblings(&live) {
                    if !candidates.contains(&sibling) {
                        candidates.push(sibling);
                    }
                }
            }
            let mut found = None;
            for (path, comp) in candidates {
                let Ok(seen) = observe_path(&path, comp, &saved) else { continue };
                if seen.observed.key.is_some_and(|k| self.is_tracked_key(k)) && comp == Compression::None {
                    continue;
                }
                if identity::judge(&saved, &seen.observed) == Verdict::Resume {
                    found = Some((path, comp, seen.key));
                    break;
                }
            }
            let Some((path, comp, key)) = found else {
                self.vanished(&e.path, "checkpointed file not found after the restart");
                continue;
            };
            let input = match open_input(&path, comp, e.offset) {
                Ok(i) => i,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot reopen a checkpointed file");
                    continue;
                }
            };
            // Live if the glob's path still names it.
            let live = comp == Compression::None
                && !e.rotated
                && std::fs::metadata(&e.source).map(|m| key_of(&m) == key).unwrap_or(false);
            let id = self.track(
                e.source.clone(),
                path,
                input,
                key,
                comp == Compression::Gzip,
                e.offset,
                KeyGuard::after(e.keys),
                (!live).then(Instant::now),
            );
            if let Some(t) = self.files.get_mut(&id) {
                t.intact_ns = e.intact_ns.unwrap_or(c.written_ns);
                // Keep the checkpoint's identity until reading refreshes it; a .gz's mark keeps
                // the saved hash (decompressed bytes are not re-read to compute it).
                if comp == Compression::Gzip {
                    t.fingerprint = e.fingerprint;
                    t.acked.before = e.before;
                }
            }
        }
    }

    /// fluentd's rotated files: a pos_file entry whose inode is no longer at its path is looked
    /// for beside it, and read from fluentd's offset; rotations newer than the pos_file too.
    fn import_rotated(&mut self, pos: &PosFile, since_ns: i64) {
        for (source, p) in &pos.positions {
            let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.clone());
            if self.files.values().any(|t| t.key.ino == p.inode && !t.gz) {
                continue;
            }
            for (path, comp) in discover::rotated_siblings(&real) {
                if comp != Compression::None {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if meta.ino() != p.inode || meta.len() < p.offset {
                    continue;
                }
                let Ok(input) = open_input(&path, comp, p.offset) else { continue };
                self.track(
                    source.clone(),
                    path.clone(),
                    input,
                    key_of(&meta),
                    false,
                    p.offset,
                    KeyGuard::default(),
                    Some(Instant::now()),
                );
                break;
            }
            self.adopt_siblings(source, &real, since_ns);
        }
    }

    // ---------------------------------------------------------------- checkpoint

    fn write_checkpoint(&mut self) {
        let files: Vec<Entry> = self
            .files
            .values()
            .map(|t| Entry {
                source: lossy(&t.source),
                path: lossy(&t.path),
                key: t.key,
                fingerprint: t.fingerprint,
                offset: t.acked.resume.offset,
                before: t.acked.before,
                keys: t.acked.resume.keys.last_ns(),
                rotated: t.rotated_at.is_some(),
                gz: t.gz,
                intact_ns: t.rotated_at.is_none().then_some(t.intact_ns),
            })
            .collect();
        let c = Checkpoint::new(crate::timefmt::now_ns(), files, self.finished.clone());
        self.last_checkpoint_write = Instant::now();
        match checkpoint::write_atomic(&self.settings.state_dir, &checkpoint::encode(&c)) {
            Ok(()) => {
                self.dirty = false;
                self.last_checkpoint_ok = Some(Instant::now());
                self.metrics.checkpoint_writes.add(1);
                self.metrics.checkpoint_age.set(0);
            }
            Err(error) => {
                self.metrics.checkpoint_errors.add(1);
                tracing::warn!(%error, "checkpoint not written");
            }
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let files = self
            .files
            .values()
            .map(|t| FileStatus {
                id: t.id,
                source: t.source.clone(),
                path: t.path.clone(),
                read_offset: t.read_offset,
                acked_offset: t.acked.resume.offset,
                lag_bytes: if t.rotated_at.is_none() {
                    // The descriptor's size now (one fstat per file per checkpoint tick), else
                    // the last scan's.
                    let size = t.input.plain().and_then(|f| f.metadata().ok()).map_or(t.size, |m| m.len());
                    size.saturating_sub(t.read_offset)
                } else {
                    0
                },
                rotated: t.rotated_at.is_some(),
            })
            .collect::<Vec<_>>();
        self.metrics.lag.set(files.iter().map(|f| f.lag_bytes).sum());
        self.metrics.lag_max.set(files.iter().map(|f| f.lag_bytes).max().unwrap_or(0));
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.files = files;
        s.last_checkpoint = self.last_checkpoint_ok;
    }
}

/// The older of a resume point and the start of the records a sink holds.
fn older(resume: Resume, held: Option<Resume>) -> Resume {
    match held {
        Some(h) if h.offset < resume.offset => h,
        _ => resume,
    }
}

/// Whether a scan is this run's first, and what that start knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstStart {
    /// A later scan, or a restart (the checkpoint placed the files it knew).
    No,
    /// The very first start, nothing imported: `start_at`.
    Fresh(StartAt),
    /// The very first start with fluentd's pos_file: this path's entry, if any.
    Fluentd(Option<fluentd::Position>),
}

/// Where a file without a checkpoint entry starts. Pure.
///
/// fluentd's offset counts when its inode is still the file's (else the file is new since
/// fluentd: 0); a file fluentd never listed appeared after it stopped: 0. `start_at = end`
/// applies only to files present at the very first start; `ignore_older` to any file found
/// without an entry.
fn start_point(first: FirstStart, ino: u64, size: u64, old: bool) -> u64 {
    match first {
        FirstStart::Fluentd(Some(p)) if p.inode == ino && p.offset <= size => p.offset,
        FirstStart::Fluentd(Some(_)) => 0,
        FirstStart::Fresh(StartAt::End) => size,
        _ if old => size,
        _ => 0,
    }
}

// -------------------------------------------------------------------- file helpers

fn key_of(m: &Metadata) -> FileKey {
    FileKey { dev: m.dev(), ino: m.ino() }
}

fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// Kubernetes names are ASCII; a non-UTF-8 path is kept lossily in the checkpoint (it is then
/// only found again by its siblings' identity, not its name).
fn lossy(p: &Path) -> PathBuf {
    PathBuf::from(p.to_string_lossy().into_owned())
}

/// A glob as wide as `*.log*` also matches rotations: those are read as rotations of their
/// live file, not as files of their own.
fn is_rotation_of_a_match(path: &Path, names: &BTreeSet<Vec<u8>>) -> bool {
    let bytes = path_bytes(path);
    let Some(dot) = bytes.iter().rposition(|&b| b == b'.') else { return false };
    // Try every '.'-prefix: `0.log.20240101.gz` is a rotation of `0.log`.
    let mut end = dot;
    loop {
        if names.contains(&bytes[..end]) && discover::rotation_of(&bytes[..end], &bytes).is_some() {
            return true;
        }
        match bytes[..end].iter().rposition(|&b| b == b'.') {
            Some(d) => end = d,
            None => return false,
        }
    }
}

/// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end).
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn head_fingerprint(f: &File) -> io::Result<Fingerprint> {
    let mut head = [0u8; FINGERPRINT_BYTES as usize];
    let n = read_full_at(f, &mut head, 0)?;
    Ok(Fingerprint::of(&head[..n]))
}

/// Whether a live file's head no longer is what was read (rewritten in place past our offset,
/// which a size check alone cannot see).
fn head_changed(t: &Tracked) -> bool {
    let Some(f) = t.input.plain() else { return false };
    if t.fingerprint.len == 0 {
        return false;
    }
    let mut head = [0u8; FINGERPRINT_BYTES as usize];
    let len = t.fingerprint.len as usize;
    match read_full_at(f, &mut head[..len], 0) {
        Ok(n) if n == len => identity::hash(&head[..n]) != t.fingerprint.hash,
        // Shorter than its head: truncated (the read pass sees that too).
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Extends a short fingerprint to the file's head now, if the file still begins with the bytes
/// it was taken over; a live file that does not was rewritten in place.
fn grow_fingerprint(t: &mut Tracked) {
    if t.fingerprint.is_full() {
        return;
    }
    let Some(f) = t.input.plain() else { return };
    let mut head = [0u8; FINGERPRINT_BYTES as usize];
    let Ok(n) = read_full_at(f, &mut head, 0) else { return };
    let old = t.fingerprint.len as usize;
    if n < old || identity::hash(&head[..old]) != t.fingerprint.hash {
        if t.rotated_at.is_none() {
            t.rewritten = true;
        }
        return;
    }
    t.fingerprint = Fingerprint::of(&head[..n]);
}

fn hash_before_at(f: &File, offset: u64) -> Option<u64> {
    if offset == 0 {
        return None;
    }
    let start = before_start(offset);
    let mut buf = [0u8; identity::BEFORE_BYTES as usize];
    let len = (offset - start) as usize;
    match read_full_at(f, &mut buf[..len], start) {
        Ok(n) if n == len => Some(identity::hash(&buf[..n])),
        _ => None,
    }
}

/// The hash before `offset`, from the chunk just read when it holds those bytes (the common
/// case), else read again (plain files); unknown for a `.gz` whose window left the chunk.
fn hash_before(input: &Input, chunk: &[u8], chunk_start: u64, offset: u64) -> Option<u64> {
    if offset == 0 {
        return None;
    }
    let start = before_start(offset);
    if start >= chunk_start && offset <= chunk_start + chunk.len() as u64 {
        let (a, b) = ((start - chunk_start) as usize, (offset - chunk_start) as usize);
        return Some(identity::hash(&chunk[a..b]));
    }
    input.plain().and_then(|f| hash_before_at(f, offset))
}

fn gz_fingerprint(path: &Path) -> io::Result<Fingerprint> {
    let mut r = MultiGzDecoder::new(BufReader::new(File::open(path)?));
    let mut head = Vec::with_capacity(FINGERPRINT_BYTES as usize);
    (&mut r).take(FINGERPRINT_BYTES).read_to_end(&mut head)?;
    Ok(Fingerprint::of(&head))
}

/// Opens a file to read from `offset` (decompressed bytes for a `.gz`, skipped to).
fn open_input(path: &Path, comp: Compression, offset: u64) -> io::Result<Input> {
    let f = File::open(path)?;
    Ok(match comp {
        Compression::None => Input::Plain(f),
        Compression::Gzip => {
            let mut r = Box::new(MultiGzDecoder::new(BufReader::new(f)));
            let skipped = io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
            if skipped < offset {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "shorter than its checkpoint"));
            }
            Input::Gz(r)
        }
    })
}

/// copytruncate's copy of a stream, opened at the stream's offset.
struct FoundCopy {
    path: PathBuf,
    input: Input,
    key: FileKey,
    /// The copy's head (up to `FINGERPRINT_BYTES`).
    fingerprint: Fingerprint,
}

/// A candidate measured against a saved identity, with its own key.
struct Seen {
    observed: Observed,
    key: FileKey,
}

fn observe_path(path: &Path, comp: Compression, saved: &Saved) -> io::Result<Seen> {
    let f = File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a file"));
    }
    let key = key_of(&meta);
    let fp_len = saved.fingerprint.len as usize;
    let start = before_start(saved.offset);
    let before_len = (saved.offset - start) as usize;
    let observed = match comp {
        Compression::None => {
            let mut head = vec![0u8; fp_len];
            let head_ok = read_full_at(&f, &mut head, 0)? == fp_len;
            let mut before = vec![0u8; before_len];
            let before_ok = meta.len() >= saved.offset && read_full_at(&f, &mut before, start)? == before_len;
            Observed {
                key: Some(key),
                head: head_ok.then(|| identity::hash(&head)),
                before: before_ok.then(|| identity::hash(&before)),
            }
        }
        Compression::Gzip => {
            let mut r = MultiGzDecoder::new(BufReader::new(f));
            let mut head = Vec::with_capacity(fp_len);
            (&mut r).take(fp_len as u64).read_to_end(&mut head)?;
            let head_hash = (head.len() == fp_len).then(|| identity::hash(&head));
            // Only a matching head is worth decompressing up to the offset.
            let before = if head_hash == Some(saved.fingerprint.hash) {
                let pos = head.len() as u64;
                let skip = start.saturating_sub(pos);
                let skipped = io::copy(&mut (&mut r).take(skip), &mut io::sink())?;
                let mut window = Vec::with_capacity(before_len);
                if start >= pos {
                    (&mut r).take(before_len as u64).read_to_end(&mut window)?;
                } else {
                    // The window starts inside the head already read.
                    window.extend_from_slice(&head[start as usize..saved.offset.min(pos) as usize]);
                    let more = saved.offset.saturating_sub(pos);
                    (&mut r).take(more).read_to_end(&mut window)?;
                }
                (skipped == skip && window.len() == before_len).then(|| identity::hash(&window))
            } else {
                None
            };
            Observed { key: None, head: head_hash, before }
        }
    };
    Ok(Seen { observed, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps the text of each record and acknowledges every mark at once.
    struct Keep {
        texts: Arc<Mutex<Vec<String>>>,
        handle: Arc<Mutex<Option<TailHandle>>>,
    }

    impl RecordSink for Keep {
        fn opened(&mut self, _: FileId, _: &Path) {}
        fn record(&mut self, _: FileId, r: crate::tail::Record<'_>, _: &mut KeyGuard) {
            self.texts.lock().unwrap().push(String::from_utf8_lossy(&r.text).into_owned());
        }
        fn flushed(&mut self, file: FileId, resume: Resume) -> impl std::future::Future<Output = ()> + Send {
            if let Some(h) = self.handle.lock().unwrap().as_ref() {
                h.acked(file, resume);
            }
            async {}
        }
        fn closed(&mut self, _: FileId) {}
    }

    /// Starts an engine on `root/*/*/*.log` with rescans an hour apart: a file created in a
    /// directory nobody watches is found only when something makes the engine rescan.
    async fn deep_glob_engine(
        root: &Path,
    ) -> (TailHandle, Arc<Mutex<Vec<String>>>, Telemetry, CancellationToken, TaskTracker) {
        std::fs::create_dir_all(root.join("pod/c")).unwrap();
        let mut s = TailSettings::new(vec![format!("{}/*/*/*.log", root.display())], root.join("state"));
        s.rescan_interval = Duration::from_secs(3600);
        s.poll_interval = Duration::from_millis(20);
        let texts = Arc::new(Mutex::new(Vec::new()));
        let handle = Arc::new(Mutex::new(None));
        let (telemetry, tracker, cancel) =
            (Telemetry::default(), TaskTracker::new(), CancellationToken::new());
        let sink = Keep { texts: texts.clone(), handle: handle.clone() };
        let h = Tailer::start(s, sink, &telemetry, &tracker, cancel.clone()).unwrap();
        *handle.lock().unwrap() = Some(h.clone());
        // The first scan has run once the checkpoint exists.
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.checkpoint_age().is_none() {
            assert!(Instant::now() < deadline, "first checkpoint");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (h, texts, telemetry, cancel, tracker)
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_event_queue_means_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let (h, texts, telemetry, cancel, tracker) = deep_glob_engine(dir.path()).await;
        // pod/c is not watched (nothing matched there yet): this creation makes no event.
        std::fs::write(dir.path().join("pod/c/0.log"), b"found\n").unwrap();
        h.shared.signals.overflow.store(true, Ordering::Release);
        h.shared.signals.wake.notify_one();
        until("the file found by the rescan", || texts.lock().unwrap().iter().any(|t| t == "found")).await;
        assert_eq!(telemetry.value("logmill_inotify_overflows_total", &[]), Some(1));
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_watch_limit_the_engine_polls() {
        let dir = tempfile::tempdir().unwrap();
        let (h, texts, telemetry, cancel, tracker) = deep_glob_engine(dir.path()).await;
        assert_eq!(telemetry.value("logmill_tail_polling", &[]), Some(0));
        // What the watcher thread reports when inotify's max_user_watches is reached.
        h.shared.signals.limit.store(true, Ordering::Release);
        h.shared.signals.wake.notify_one();
        until("polling", || telemetry.value("logmill_tail_polling", &[]) == Some(1)).await;
        std::fs::write(dir.path().join("pod/c/0.log"), b"polled\n").unwrap();
        until("the file found by polling", || texts.lock().unwrap().iter().any(|t| t == "polled")).await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    /// A sink that merges records as the agent does for a stack trace (a line starting with
    /// `20` starts a record) and acknowledges at once what it handed on.
    struct Merging {
        texts: Arc<Mutex<Vec<String>>>,
        handle: Arc<Mutex<Option<TailHandle>>>,
        timeout: Duration,
        mergers: HashMap<FileId, crate::tail::multiline::Merger>,
    }

    impl Merging {
        fn emit(texts: &Arc<Mutex<Vec<String>>>) -> impl FnMut(crate::tail::Record<'_>) + '_ {
            |r| texts.lock().unwrap().push(String::from_utf8_lossy(&r.text).into_owned())
        }
    }

    impl RecordSink for Merging {
        fn opened(&mut self, file: FileId, _: &Path) {
            let start = regex::bytes::Regex::new("^20").unwrap();
            self.mergers.insert(file, crate::tail::multiline::Merger::new(start, self.timeout, 1 << 20));
        }
        fn record(&mut self, file: FileId, r: crate::tail::Record<'_>, keys: &mut KeyGuard) {
            let m = self.mergers.get_mut(&file).unwrap();
            m.push(r, *keys, Instant::now(), Self::emit(&self.texts));
        }
        fn flushed(&mut self, file: FileId, resume: Resume) -> impl std::future::Future<Output = ()> + Send {
            let m = self.mergers.get_mut(&file).unwrap();
            m.flush_expired(Instant::now(), Self::emit(&self.texts));
            let at = crate::tail::multiline::resume(resume, m);
            if let Some(h) = self.handle.lock().unwrap().as_ref() {
                h.acked(file, at);
            }
            async {}
        }
        fn held(&self, file: FileId) -> Option<crate::tail::Held> {
            let m = self.mergers.get(&file)?;
            Some(crate::tail::Held { from: m.oldest_start()?, until: m.next_deadline()? })
        }
        fn ending(&mut self, file: FileId) {
            self.mergers.get_mut(&file).unwrap().flush(Self::emit(&self.texts));
        }
        fn closed(&mut self, file: FileId) {
            self.mergers.remove(&file);
        }
    }

    struct MergeRun {
        h: TailHandle,
        texts: Arc<Mutex<Vec<String>>>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    }

    fn merge_engine(dir: &Path, timeout: Duration) -> MergeRun {
        let mut s = TailSettings::new(vec![format!("{}/*.log", dir.display())], dir.join("state"));
        s.wrapping = Some(crate::tail::Wrapping::Raw);
        s.poll_interval = Duration::from_millis(20);
        s.checkpoint_interval = Duration::from_millis(20);
        s.rotate_wait = Duration::from_millis(50);
        let texts = Arc::new(Mutex::new(Vec::new()));
        let handle = Arc::new(Mutex::new(None));
        let sink = Merging { texts: texts.clone(), handle: handle.clone(), timeout, mergers: HashMap::new() };
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        let h = Tailer::start(s, sink, &Telemetry::default(), &tracker, cancel.clone()).unwrap();
        *handle.lock().unwrap() = Some(h.clone());
        MergeRun { h, texts, cancel, tracker }
    }

    impl MergeRun {
        /// Cancels and waits for the engine, which ends once every mark is acknowledged (the
        /// sink acknowledges at once; `h` keeps a handle alive).
        async fn stop(&self) {
            self.cancel.cancel();
            self.tracker.close();
            let ended = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
            ended.expect("the engine ends: no mark waits past a held record");
        }
    }

    fn texts(run: &MergeRun) -> Vec<String> {
        run.texts.lock().unwrap().clone()
    }

    /// (read, acknowledged) offsets of the one followed file.
    fn offsets(run: &MergeRun) -> Option<(u64, u64)> {
        run.h.files().first().map(|f| (f.read_offset, f.acked_offset))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_record_goes_at_its_deadline_on_a_quiet_file() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(1);
        let run = merge_engine(dir.path(), timeout);
        let content = "2024 one\n  at a\n2024 two\n  at b\n";
        std::fs::write(dir.path().join("0.log"), content).unwrap();
        until("the first record, ended by the second", || texts(&run) == ["2024 one\n  at a"]).await;
        let read = Instant::now();
        // The second record is held and holds the checkpoint at its start.
        until("the read acknowledged up to the held record", || offsets(&run) == Some((32, 16))).await;
        // No more writes: the engine calls the sink at the deadline, and the point moves on.
        until("the held record, at its deadline", || texts(&run).len() == 2).await;
        assert!(read.elapsed() < timeout + Duration::from_secs(5), "{:?}", read.elapsed());
        assert_eq!(texts(&run)[1], "2024 two\n  at b");
        until("everything acknowledged", || offsets(&run) == Some((32, 32))).await;
        run.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_leaves_held_records_to_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let run = merge_engine(dir.path(), hour);
        std::fs::write(dir.path().join("0.log"), "2024 one\n more\n2024 two\n more\n").unwrap();
        until("the held record's start acknowledged", || offsets(&run) == Some((30, 15))).await;
        assert_eq!(texts(&run), ["2024 one\n more"]);
        // Every mark is acknowledged (none is past the held record): the engine ends at once,
        // though a handle is still alive.
        run.stop().await;
        let saved = checkpoint::load(&dir.path().join("state")).unwrap().unwrap();
        assert_eq!(saved.files.iter().map(|e| e.offset).collect::<Vec<_>>(), [15]);
        drop(run.h);

        // The next run reads the held record again, whole.
        let again = merge_engine(dir.path(), hour);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("0.log"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"2024 three\n"))
            .unwrap();
        until("the held record, whole", || texts(&again) == ["2024 two\n more"]).await;
        again.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotated_file_hands_on_what_is_held_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let run = merge_engine(dir.path(), Duration::from_secs(3600));
        let live = dir.path().join("0.log");
        std::fs::write(&live, "2024 one\n more\n").unwrap();
        until("read", || offsets(&run) == Some((15, 0))).await;
        std::fs::rename(&live, dir.path().join("0.log.20240101-000000")).unwrap();
        std::fs::write(&live, "2024 new\n").unwrap();
        until("the rotated file's held record", || texts(&run) == ["2024 one\n more"]).await;
        run.stop().await;
    }

    #[test]
    fn where_files_without_a_checkpoint_start() {
        use fluentd::Position;
        let at = |offset, inode| FirstStart::Fluentd(Some(Position { offset, inode }));
        assert_eq!(start_point(at(100, 7), 7, 500, false), 100, "fluentd's place in the same file");
        assert_eq!(start_point(at(100, 7), 8, 500, false), 0, "another file since fluentd");
        assert_eq!(start_point(at(900, 7), 7, 500, false), 0, "shorter than fluentd's offset: truncated");
        assert_eq!(start_point(FirstStart::Fluentd(None), 7, 500, false), 0, "appeared after fluentd");
        assert_eq!(start_point(FirstStart::Fluentd(None), 7, 500, true), 500, "old and unknown");
        assert_eq!(start_point(FirstStart::Fresh(StartAt::End), 7, 500, false), 500);
        assert_eq!(start_point(FirstStart::Fresh(StartAt::Beginning), 7, 500, false), 0);
        assert_eq!(start_point(FirstStart::Fresh(StartAt::Beginning), 7, 500, true), 500);
        assert_eq!(start_point(FirstStart::No, 7, 500, false), 0, "new since: read whole");
        assert_eq!(start_point(FirstStart::No, 7, 500, true), 500);
    }

    #[test]
    fn wide_globs_skip_rotations_of_their_own_matches() {
        let names: BTreeSet<Vec<u8>> =
            ["/d/0.log", "/d/app.log"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert!(is_rotation_of_a_match(Path::new("/d/0.log.20240101-000000"), &names));
        assert!(is_rotation_of_a_match(Path::new("/d/0.log.20240101-000000.gz"), &names));
        assert!(is_rotation_of_a_match(Path::new("/d/app.log.1"), &names));
        assert!(!is_rotation_of_a_match(Path::new("/d/0.log"), &names));
        assert!(!is_rotation_of_a_match(Path::new("/d/other.log.1"), &names));
    }

    #[test]
    fn the_hash_before_comes_from_the_chunk_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let f = File::open(&path).unwrap();
        let expect = |o: usize| Some(identity::hash(&content[o.saturating_sub(512)..o]));
        assert_eq!(hash_before_at(&f, 3000), expect(3000));
        assert_eq!(hash_before_at(&f, 100), expect(100));
        assert_eq!(hash_before_at(&f, 0), None);
        assert_eq!(hash_before_at(&f, 5000), None, "past the end");
        let input = Input::Plain(f);
        // In the chunk [2000, 4000): from the chunk; before it: read from the file.
        assert_eq!(hash_before(&input, &content[2000..], 2000, 3000), expect(3000));
        assert_eq!(hash_before(&input, &content[2000..], 2000, 2100), expect(2100));
        let gz = Input::Closed;
        assert_eq!(hash_before(&gz, &content[2000..], 2000, 2100), None);
    }

    #[test]
    fn a_gz_is_measured_on_its_decompressed_bytes() {
        use flate2::{write::GzEncoder, Compression as Level};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..300).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let plain = dir.path().join("0.log.1");
        std::fs::write(&plain, &content).unwrap();
        let gz = dir.path().join("0.log.1.gz");
        let mut enc = GzEncoder::new(File::create(&gz).unwrap(), Level::fast());
        enc.write_all(&content).unwrap();
        enc.finish().unwrap();
        let meta = std::fs::metadata(&plain).unwrap();
        for offset in [0u64, 200, 1024, 1500, content.len() as u64] {
            let o = offset as usize;
            let saved = Saved {
                key: key_of(&meta),
                fingerprint: Fingerprint::of(&content),
                offset,
                before: (offset > 0).then(|| identity::hash(&content[o.saturating_sub(512)..o])),
            };
            let p = observe_path(&plain, Compression::None, &saved).unwrap();
            assert_eq!(identity::judge(&saved, &p.observed), Verdict::Resume, "plain at {offset}");
            let g = observe_path(&gz, Compression::Gzip, &saved).unwrap();
            assert_eq!(g.observed.key, None);
            assert_eq!(identity::judge(&saved, &g.observed), Verdict::Resume, "gz at {offset}");
            let mut input = open_input(&gz, Compression::Gzip, offset).unwrap();
            let mut rest = vec![0u8; content.len()];
            let mut got = Vec::new();
            loop {
                let n = input.read(&mut rest, 0).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&rest[..n]);
            }
            assert_eq!(got, &content[o..]);
        }
        assert_eq!(gz_fingerprint(&gz).unwrap(), Fingerprint::of(&content));
    }
}

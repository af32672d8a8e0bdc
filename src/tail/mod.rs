//! Reading log files: from the bytes of one file to its records (pure), and the engine that
//! follows every file of a node through rotation, truncation, restarts and back-pressure.
//!
//! Pure: [`lines`] cuts a byte stream into capped lines with offsets; [`container`] decodes
//! Docker json-file and CRI lines; [`decoder`] is one file's decoding from bytes to whole
//! records, with the resume point a checkpoint may record; `identity` (inode, head fingerprint,
//! hash before an offset: is it the same file?), `checkpoint` (the state file's encoding),
//! `fluentd` (fluentd's pos_file), `discover` (globs, rotated names) and `schedule` (whose turn
//! it is to read). [`multiline`] joins a container's multi-line records (stack traces).
//!
//! I/O: [`Tailer`] starts the engine (`engine`), one blocking thread that owns every followed
//! file and hands records to a [`RecordSink`]; `watch` wakes it on directory events.
//!
//! The contract, in short: a file's checkpoint moves only to a [`Resume`] point the sink
//! acknowledged with [`TailHandle::acked`]; a rotated or deleted file is read to its end through
//! its open descriptor and forgotten only once all of it was acknowledged; after a restart,
//! files are found again by identity (beside the live file, `.gz` included) and read from their
//! acknowledged offset. See `engine` for the shutdown order.

pub(crate) mod checkpoint;
pub mod container;
pub mod decoder;
mod discover;
mod engine;
mod fluentd;
mod identity;
pub mod lines;
pub mod multiline;
mod schedule;
mod watch;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use checkpoint::CheckpointError;
pub use container::{Stream, Wrapping};
pub use decoder::{Record, Resume};
pub use discover::GlobError;
pub use engine::{FileStatus, TailHandle, Tailer};

use crate::access::KeyGuard;

/// A followed file, for the time it is followed (one process run). A file truncated in place
/// becomes a new `FileId`: its old records and its new ones are two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub(crate) u64);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file#{}", self.0)
    }
}

/// Where files already present at the very first start (no checkpoint, no fluentd pos_file)
/// are read from. Files that appear later are always read from their beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// How the engine learns that files changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify watches on the files' directories, polling as the safety net; falls back to
    /// [`WatchMode::Poll`] (with one warning) when the kernel's inotify limits are reached.
    Notify,
    /// Poll every `poll_interval` only.
    Poll,
}

/// A filter on glob-matched paths: `true` leaves the file alone (the agent's namespace, pod and
/// container filters, from the file name).
pub type Exclude = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// Validated tail settings (the agent's config builds them).
#[derive(Clone)]
pub struct TailSettings {
    /// Absolute path globs (`*` and `?` per component), e.g. `/var/log/containers/*.log`;
    /// symlinks are followed.
    pub globs: Vec<String>,
    pub exclude: Option<Exclude>,
    /// Where the checkpoint file lives.
    pub state_dir: PathBuf,
    pub start_at: StartAt,
    /// fluentd's pos_file, imported on the first start only (no checkpoint yet).
    pub fluentd_pos_file: Option<PathBuf>,
    /// Files found without a checkpoint entry whose last write is older than this are
    /// followed from their end (their old content is not sent).
    pub ignore_older: Option<Duration>,
    /// `None`: detected per file from its first line.
    pub wrapping: Option<Wrapping>,
    /// Longer lines are cut to this (the decoder's cap) and counted.
    pub max_line_bytes: usize,
    /// One read; also the quantum of the round robin between files with data.
    pub read_chunk_bytes: usize,
    /// Read pass and (in polling mode) rescan period.
    pub poll_interval: Duration,
    /// Full rescan of the globs, the safety net under the watches.
    pub rescan_interval: Duration,
    pub checkpoint_interval: Duration,
    /// Bytes read and not yet acknowledged, over all files, at which reading pauses.
    pub max_unacked_bytes: usize,
    /// How long a rotated or deleted file at its end stays open for writes still in flight
    /// (a runtime writes to the old file until it reopens); fluentd's `rotate_wait`.
    pub rotate_wait: Duration,
    pub watch: WatchMode,
}

impl TailSettings {
    /// The defaults for everything but the globs and the state directory.
    pub fn new(globs: Vec<String>, state_dir: PathBuf) -> Self {
        TailSettings {
            globs,
            exclude: None,
            state_dir,
            start_at: StartAt::Beginning,
            fluentd_pos_file: None,
            ignore_older: None,
            wrapping: None,
            max_line_bytes: 256 * 1024,
            read_chunk_bytes: 64 * 1024,
            poll_interval: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            max_unacked_bytes: 16 << 20,
            rotate_wait: Duration::from_secs(5),
            watch: WatchMode::Notify,
        }
    }
}

impl fmt::Debug for TailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TailSettings")
            .field("globs", &self.globs)
            .field("exclude", &self.exclude.as_ref().map(|_| "fn"))
            .field("state_dir", &self.state_dir)
            .field("start_at", &self.start_at)
            .field("fluentd_pos_file", &self.fluentd_pos_file)
            .field("ignore_older", &self.ignore_older)
            .field("wrapping", &self.wrapping)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("read_chunk_bytes", &self.read_chunk_bytes)
            .field("poll_interval", &self.poll_interval)
            .field("rescan_interval", &self.rescan_interval)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_unacked_bytes", &self.max_unacked_bytes)
            .field("rotate_wait", &self.rotate_wait)
            .field("watch", &self.watch)
            .finish()
    }
}

/// Where the engine hands what it reads. All methods run on the engine's blocking thread.
pub trait RecordSink: Send + 'static {
    /// `file` starts being read (new, or resumed from its checkpoint). `source` is the path
    /// the glob matched (e.g. `/var/log/containers/<pod>_<ns>_<container>-<id>.log`, what the
    /// metadata comes from), kept for the file's whole life even after rotation renames it.
    fn opened(&mut self, file: FileId, source: &Path);

    /// One complete record of `file`, with the file's key guard (see [`KeyGuard`]).
    fn record(&mut self, file: FileId, record: Record<'_>, keys: &mut KeyGuard);

    /// Every record read so far from `file` was handed to [`RecordSink::record`]; `resume` is
    /// the decoder's resume point now. Hand the mark on with the records, and once they are
    /// durable downstream call [`TailHandle::acked`]`(file, resume)`. Do not hold records back
    /// waiting for more after this call (the engine may pause until they are acknowledged),
    /// unless [`RecordSink::held`] says so: then acknowledge no further than the oldest held
    /// record's start (see [`multiline::resume`]). The future may wait (back-pressure); while
    /// it does, the engine keeps tracking rotations and acknowledgements but reads nothing.
    ///
    /// Also called, with the last `resume` again and no new record, when the deadline of
    /// [`RecordSink::held`] has passed, and at the end of a file after
    /// [`RecordSink::ending`].
    fn flushed(&mut self, file: FileId, resume: Resume) -> impl Future<Output = ()> + Send;

    /// What the sink holds back of `file` now, not handed on at `flushed` (lines being merged
    /// into one record, [`multiline`]). The engine asks after handing records over and after
    /// each `flushed`: its marks, hence what it waits for at shutdown, stop at [`Held::from`],
    /// and it calls `flushed` again at [`Held::until`] even if the file gets no more writes.
    /// The default holds nothing.
    fn held(&self, _file: FileId) -> Option<Held> {
        None
    }

    /// `file` ends (read to its end, or truncated away): hand on everything held at the
    /// `flushed` that follows, before [`RecordSink::closed`]. The default holds nothing.
    fn ending(&mut self, _file: FileId) {}

    /// `file` is finished (rotated away or deleted and read to its end, or truncated): no more
    /// records come. Acknowledgements of its marks are still welcome.
    fn closed(&mut self, file: FileId);
}

/// Records of a file a [`RecordSink`] holds back (see [`RecordSink::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Where the oldest held record starts, with the key state there: the furthest the file's
    /// checkpoint may go while they are held.
    pub from: Resume,
    /// When the sink wants `flushed` called again to hand some of them on (a merge timeout).
    pub until: Instant,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TailError {
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error("state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("fluentd pos_file {path}: {source}")]
    PosFile { path: String, source: std::io::Error },
    #[error("the tailer must be started inside a tokio runtime")]
    NoRuntime,
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: &'static str },
}

//! Directory watches (`notify`, inotify on Linux) that wake the tail engine, and the fall back
//! to polling when the kernel's inotify limits are reached.
//!
//! Events are hints, never the source of truth: the engine reads every followed file and, when
//! names may have changed, rescans the globs. So an event only sets a flag and wakes the engine;
//! a lost event (queue overflow: inotify's `IN_Q_OVERFLOW`, notify's `Rescan` flag) turns into a
//! full rescan, and without watches the engine's poll tick does the same work on a timer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// What the watcher tells the engine.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Names changed somewhere (create, rename, delete): rescan.
    pub(crate) names: AtomicBool,
    /// Events were lost: rescan, and count it.
    pub(crate) overflow: AtomicBool,
    /// The watch limit was reached: stop watching, poll.
    pub(crate) limit: AtomicBool,
    /// Wakes the engine; `notify_one` keeps a permit, so no wake-up is lost between checks.
    pub(crate) wake: Notify,
}

/// Why watching stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// `max_user_instances` (no inotify instance could be created) or another start error.
    NoWatcher,
    /// `max_user_watches`.
    WatchLimit,
}

/// What an event means to the engine. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// Bytes were written: a read pass finds them.
    Data,
    /// Names changed: rescan.
    Names,
    /// Events were lost: rescan everything.
    Overflow,
    /// Our own opens and closes, metadata: nothing to do.
    Ignore,
}

pub(crate) fn hint(event: &notify::Event) -> Hint {
    if event.need_rescan() {
        return Hint::Overflow;
    }
    match event.kind {
        EventKind::Modify(ModifyKind::Data(_)) => Hint::Data,
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) => Hint::Ignore,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => Hint::Names,
        EventKind::Any | EventKind::Other => Hint::Names,
    }
}

/// Whether a watch error means the kernel's limits: watches (`ENOSPC`, which notify reports as
/// `MaxFilesWatch`) or instances and descriptors (`EMFILE`).
pub(crate) fn is_limit(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(e) => e.raw_os_error() == Some(libc_emfile()),
        _ => false,
    }
}

/// `EMFILE` on Linux (24); the constant without a libc dependency for one number.
const fn libc_emfile() -> i32 {
    24
}

/// The set of watched directories, kept equal to what the engine asks for.
pub(crate) struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

impl DirWatch {
    /// Starts a watcher; `Err` when none can be had (the caller polls).
    pub(crate) fn start(signals: Arc<Signals>) -> Result<Self, (Fallback, notify::Error)> {
        let handler = move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) => match hint(&event) {
                    Hint::Ignore => return,
                    Hint::Data => {}
                    Hint::Names => signals.names.store(true, Ordering::Release),
                    Hint::Overflow => {
                        signals.overflow.store(true, Ordering::Release);
                        signals.names.store(true, Ordering::Release);
                    }
                },
                Err(error) if is_limit(&error) => signals.limit.store(true, Ordering::Release),
                Err(error) => {
                    // An error from the watcher thread is as good as a lost event: rescan.
                    tracing::debug!(%error, "watch error");
                    signals.names.store(true, Ordering::Release);
                }
            }
            signals.wake.notify_one();
        };
        let watcher = notify::recommended_watcher(handler).map_err(|e| (Fallback::NoWatcher, e))?;
        Ok(DirWatch { watcher: Some(watcher), watched: BTreeSet::new() })
    }

    /// Watches exactly `dirs`. A directory that vanished meanwhile is skipped (the next scan
    /// sees it gone); hitting the kernel's limit is `Err`, and the caller switches to polling.
    pub(crate) fn set(&mut self, dirs: &BTreeSet<PathBuf>) -> Result<(), (Fallback, notify::Error)> {
        let Some(watcher) = self.watcher.as_mut() else { return Ok(()) };
        let gone: Vec<PathBuf> = self.watched.difference(dirs).cloned().collect();
        for dir in gone {
            // Its inode may be gone already, which removed the watch with it.
            let _ = watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        for dir in dirs.difference(&self.watched.clone()) {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) if is_limit(&e) => return Err((Fallback::WatchLimit, e)),
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "not watched"),
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.watched.len()
    }

    #[cfg(test)]
    pub(crate) fn is_watched(&self, dir: &Path) -> bool {
        self.watched.contains(dir)
    }
}

/// The directories to watch for a followed file: the one its glob matched in and, for a
/// symlink, the target's (rotation renames files there).
pub(crate) fn dirs_of(source: &Path, real: &Path) -> impl Iterator<Item = PathBuf> {
    [source.parent(), real.parent()]
        .into_iter()
        .flatten()
        .map(Path::to_path_buf)
        .collect::<Vec<_>>()
        .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, MetadataKind, RemoveKind, RenameMode};
    use notify::Event;

    #[test]
    fn events_map_to_hints() {
        let e = |k| Event::new(k);
        assert_eq!(hint(&e(EventKind::Modify(ModifyKind::Data(DataChange::Any)))), Hint::Data);
        assert_eq!(hint(&e(EventKind::Create(CreateKind::File))), Hint::Names);
        assert_eq!(hint(&e(EventKind::Remove(RemoveKind::File))), Hint::Names);
        assert_eq!(hint(&e(EventKind::Modify(ModifyKind::Name(RenameMode::From)))), Hint::Names);
        assert_eq!(hint(&e(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)))), Hint::Ignore);
        assert_eq!(hint(&e(EventKind::Other).set_flag(Flag::Rescan)), Hint::Overflow);
    }

    #[test]
    fn limits_are_recognised() {
        assert!(is_limit(&notify::Error::new(notify::ErrorKind::MaxFilesWatch)));
        assert!(is_limit(&notify::Error::io(std::io::Error::from_raw_os_error(24))));
        assert!(!is_limit(&notify::Error::io(std::io::Error::from_raw_os_error(2))));
        assert!(!is_limit(&notify::Error::path_not_found()));
    }

    #[tokio::test]
    async fn a_write_in_a_watched_directory_wakes() {
        let d = tempfile::tempdir().unwrap();
        let signals = Arc::new(Signals::default());
        let mut w = DirWatch::start(signals.clone()).expect("inotify available");
        w.set(&[d.path().to_path_buf()].into()).unwrap();
        assert!(w.is_watched(d.path()));
        std::fs::write(d.path().join("new.log"), b"x\n").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), signals.wake.notified())
            .await
            .expect("woken");
        // Creating a file changes names; give the watcher thread its time to set the flag.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !signals.names.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "create seen as a name change");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        w.set(&BTreeSet::new()).unwrap();
        assert_eq!(w.watched(), 0);
    }
}

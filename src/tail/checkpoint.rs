//! The checkpoint file: for every file the tailer follows, where reading may start again and
//! what is needed to find the file again after a restart; written atomically.
//!
//! Encoding and decoding are pure; [`write_atomic`] and [`load`] are the only I/O (temp file,
//! fsync, rename, fsync of the directory: after a crash the file is either the old checkpoint or
//! the new one, never a mix).
//!
//! JSON rather than a binary layout: the file is small (one entry per followed file), written
//! once a second, and an operator debugging a resend can read it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::{FileKey, Fingerprint, Saved};

/// The checkpoint's file name in the state directory.
pub(crate) const FILE_NAME: &str = "tail-checkpoint.json";
const VERSION: u32 = 1;

/// Everything the tailer remembers across a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) version: u32,
    /// When it was written (Unix ns): a rotated file changed after this was not known then.
    pub(crate) written_ns: i64,
    pub(crate) files: Vec<Entry>,
    /// Rotated files read to their end and acknowledged, so that their `.gz` found later is
    /// not taken for a file never read.
    #[serde(default)]
    pub(crate) finished: Vec<Finished>,
}

/// One followed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The path the glob matched (what the metadata comes from).
    pub(crate) source: PathBuf,
    /// The file's real path when it was opened (symlinks resolved): its rotations sit beside it.
    pub(crate) path: PathBuf,
    pub(crate) key: FileKey,
    pub(crate) fingerprint: Fingerprint,
    /// Acknowledged resume offset: every record before it is durable downstream.
    pub(crate) offset: u64,
    /// Hash of the bytes just before `offset` (see `identity::BEFORE_BYTES`).
    pub(crate) before: Option<u64>,
    /// The point-key guard's state at `offset` (`KeyGuard::last_ns`).
    pub(crate) keys: Option<i64>,
    /// The file was no longer the live file at `source` (renamed away, deleted, truncated).
    pub(crate) rotated: bool,
    /// It was read decompressed from a `.gz`, so `offset` counts decompressed bytes.
    pub(crate) gz: bool,
    /// A live file's last sighting holding the stream read from it (Unix ns; see the engine's
    /// `Tracked::intact_ns`): what was copied away after it (copytruncate while reading was
    /// paused) is looked for beside it after a restart. Absent in checkpoints of older
    /// versions, and for rotated files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) intact_ns: Option<i64>,
}

impl Entry {
    pub(crate) fn saved(&self) -> Saved {
        Saved { key: self.key, fingerprint: self.fingerprint, offset: self.offset, before: self.before }
    }
}

/// A rotated file that was read to its end and acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finished {
    pub(crate) source: PathBuf,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) len: u64,
    /// When it was finished (Unix ns), to forget it after a while.
    pub(crate) at_ns: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a checkpoint: {source}")]
    Decode { path: String, source: serde_json::Error },
    #[error("{path}: checkpoint version {found}, this logmill reads version {VERSION}")]
    Version { path: String, found: u32 },
}

pub(crate) fn encode(c: &Checkpoint) -> Vec<u8> {
    // Serialising plain structs of numbers, strings and paths only fails on a path that is not
    // UTF-8; those were made lossy when the entry was built (see `Entry::source`).
    serde_json::to_vec_pretty(c).unwrap_or_default()
}

pub(crate) fn decode(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let shown = || path.display().to_string();
    let c: Checkpoint =
        serde_json::from_slice(bytes).map_err(|source| CheckpointError::Decode { path: shown(), source })?;
    if c.version != VERSION {
        return Err(CheckpointError::Version { path: shown(), found: c.version });
    }
    Ok(c)
}

impl Checkpoint {
    pub(crate) fn new(written_ns: i64, files: Vec<Entry>, finished: Vec<Finished>) -> Self {
        Checkpoint { version: VERSION, written_ns, files, finished }
    }
}

/// Reads the checkpoint in `dir`; `Ok(None)` when there is none (the very first start).
pub(crate) fn load(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io { path: path.display().to_string(), source }),
    }
}

/// Replaces the checkpoint in `dir` with `bytes`: temp file, fsync, rename, fsync of the
/// directory (without it the rename itself may not survive a power cut).
pub(crate) fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    fn io(p: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Io { path: p.display().to_string(), source }
    }
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// Moves an unreadable checkpoint aside (kept for the operator) so the next write does not
/// destroy the evidence.
pub(crate) fn set_aside(dir: &Path) -> Option<PathBuf> {
    let from = dir.join(FILE_NAME);
    let to = dir.join(format!("{FILE_NAME}.unreadable"));
    fs::rename(&from, &to).ok().map(|_| to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            source: PathBuf::from(format!("/var/log/containers/p{n}_ns_c-id.log")),
            path: PathBuf::from(format!("/var/log/pods/ns_p{n}_uid/c/0.log")),
            key: FileKey { dev: 2049, ino: 1000 + n },
            fingerprint: Fingerprint { len: 1024, hash: u64::MAX - n },
            offset: 12_345 * n,
            before: if n % 2 == 0 { Some(n) } else { None },
            keys: Some(1_700_000_000_000_000_000 + n as i64),
            rotated: n == 1,
            gz: n == 2,
            intact_ns: (n == 0).then_some(1_700_000_000_000_000_000),
        }
    }

    #[test]
    fn round_trips_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None, "no checkpoint yet");
        let c = Checkpoint::new(
            7,
            (0..3).map(entry).collect(),
            vec![Finished {
                source: "/x".into(),
                fingerprint: Fingerprint { len: 3, hash: 9 },
                len: 3,
                at_ns: 5,
            }],
        );
        write_atomic(dir.path(), &encode(&c)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c.clone()));
        // A second write replaces the first whole; no temp file is left behind.
        let c2 = Checkpoint::new(8, vec![entry(9)], vec![]);
        write_atomic(dir.path(), &encode(&c2)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c2));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn u64_values_survive_json() {
        // Inode numbers and hashes use all 64 bits; JSON numbers through f64 would round them.
        let mut e = entry(0);
        e.key.ino = u64::MAX - 1;
        e.fingerprint.hash = 0xffff_ffff_ffff_fff1;
        let c = Checkpoint::new(i64::MAX, vec![e.clone()], vec![]);
        let back = decode(Path::new("x"), &encode(&c)).unwrap();
        assert_eq!(back.files[0], e);
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        assert!(matches!(decode(Path::new("x"), b"{not json"), Err(CheckpointError::Decode { .. })));
        let mut c = Checkpoint::new(0, vec![], vec![]);
        c.version = 99;
        let bytes = serde_json::to_vec(&c).unwrap();
        assert!(matches!(decode(Path::new("x"), &bytes), Err(CheckpointError::Version { found: 99, .. })));
    }
}

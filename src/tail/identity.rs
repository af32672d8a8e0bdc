//! What makes a file the same file: its (device, inode), a fingerprint of its first bytes, and
//! a hash of the bytes just before a saved offset. Pure: callers read the bytes and hand over
//! what they measured.
//!
//! The inode alone is not enough: kubelet gzips a rotated file into a new inode, copytruncate
//! keeps the inode while replacing the content, and a deleted file's inode is reused by the next
//! file created. The head fingerprint follows the content into a `.gz`; the hash before the
//! offset tells a file that only grew from one that was truncated and written again.

use serde::{Deserialize, Serialize};

/// Bytes of a file's head that identify it (the first line of a container log carries a
/// nanosecond time, so two files share it only if one is a copy of the other).
pub(crate) const FINGERPRINT_BYTES: u64 = 1024;

/// Bytes before a saved offset whose hash must match for the offset to still mean the same
/// place: a line or two of a container log.
pub(crate) const BEFORE_BYTES: u64 = 512;

/// FNV-1a, 64 bits. Checkpoints outlive binaries, so the hash must be fixed by its definition,
/// not by a library version (std's `DefaultHasher` may change between Rust releases). It runs
/// over at most a KiB per file per check, so speed does not matter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(bytes);
    h.finish()
}

/// A file's (device, inode): who it is while it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct FileKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// The hash of a file's first `len` bytes (`len` < [`FINGERPRINT_BYTES`] while the file is
/// shorter than that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    pub(crate) len: u64,
    pub(crate) hash: u64,
}

impl Fingerprint {
    pub(crate) fn of(head: &[u8]) -> Self {
        let len = head.len().min(FINGERPRINT_BYTES as usize);
        Fingerprint { len: len as u64, hash: hash(&head[..len]) }
    }

    /// Whether it is final: the file had at least [`FINGERPRINT_BYTES`] when it was taken.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= FINGERPRINT_BYTES
    }
}

/// Where the `BEFORE_BYTES` window before `offset` starts.
pub(crate) fn before_start(offset: u64) -> u64 {
    offset.saturating_sub(BEFORE_BYTES)
}

/// A file as a checkpoint remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Saved {
    pub(crate) key: FileKey,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) offset: u64,
    /// Hash of the bytes from `before_start(offset)` to `offset`; `None` when unknown.
    pub(crate) before: Option<u64>,
}

/// A candidate file measured against a [`Saved`] identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    /// `None` for a decompressed `.gz`, whose inode says nothing.
    pub(crate) key: Option<FileKey>,
    /// Hash of the candidate's first `saved.fingerprint.len` bytes; `None` if it is shorter.
    pub(crate) head: Option<u64>,
    /// Hash of the candidate's bytes from `before_start(saved.offset)` to `saved.offset`;
    /// `None` if it is shorter than `saved.offset`.
    pub(crate) before: Option<u64>,
}

/// What a candidate is to a saved identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The same file, grown or not: read on from the saved offset.
    Resume,
    /// The same inode with other bytes where the saved ones were (truncated, copytruncated and
    /// written again, or the inode reused by a new file): it is a new file, read from 0.
    Rewritten,
    /// Another file.
    Other,
}

/// Judges a candidate. The inode is the first witness; without it (a `.gz`, a copy) the
/// content must speak, and an empty fingerprint says nothing, so it never matches on content.
pub(crate) fn judge(saved: &Saved, seen: &Observed) -> Verdict {
    let head_ok = seen.head == Some(saved.fingerprint.hash);
    let before_ok = if saved.offset == 0 {
        true
    } else {
        match (saved.before, seen.before) {
            (Some(a), Some(b)) => a == b,
            // Unknown when saved: the length at least must reach the offset.
            (None, Some(_)) => true,
            (_, None) => false,
        }
    };
    if seen.key == Some(saved.key) {
        if head_ok && before_ok {
            Verdict::Resume
        } else {
            Verdict::Rewritten
        }
    } else if saved.fingerprint.len > 0 && head_ok && before_ok {
        Verdict::Resume
    } else {
        Verdict::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: FileKey = FileKey { dev: 8, ino: 42 };

    fn saved(content: &[u8], offset: u64) -> Saved {
        let o = offset as usize;
        Saved {
            key: KEY,
            fingerprint: Fingerprint::of(content),
            offset,
            before: Some(hash(&content[before_start(offset) as usize..o])),
        }
    }

    /// What the engine measures of `content` (an independent reading: slices, not the engine).
    fn observe(key: Option<FileKey>, content: &[u8], s: &Saved) -> Observed {
        let fp = s.fingerprint.len as usize;
        let o = s.offset as usize;
        Observed {
            key,
            head: (content.len() >= fp).then(|| hash(&content[..fp])),
            before: (content.len() >= o).then(|| hash(&content[before_start(s.offset) as usize..o])),
        }
    }

    fn lines(from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("2024-01-01T00:00:00.{i:09}Z stdout F line {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // From the FNV reference (Fowler, Noll, Vo): FNV-1a 64 of "" and "a".
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_grown_file_resumes_and_a_rewritten_one_restarts() {
        let first = lines(0, 100);
        let s = saved(&first, 3000);
        let grown = [first.clone(), lines(100, 200)].concat();
        assert_eq!(judge(&s, &observe(Some(KEY), &grown, &s)), Verdict::Resume);
        // Truncated below the offset.
        assert_eq!(judge(&s, &observe(Some(KEY), &first[..2000], &s)), Verdict::Rewritten);
        // Copytruncated, then written past the offset again: the head differs.
        let rewritten = lines(500, 700);
        assert_eq!(judge(&s, &observe(Some(KEY), &rewritten, &s)), Verdict::Rewritten);
        // Same head (a writer restarting the same first line), other bytes before the offset.
        let mut same_head = first.clone();
        same_head[2900] ^= 1;
        assert_eq!(judge(&s, &observe(Some(KEY), &same_head, &s)), Verdict::Rewritten);
    }

    #[test]
    fn content_follows_a_file_into_its_gz_and_its_copy() {
        let content = lines(0, 100);
        let s = saved(&content, 3000);
        // A .gz: no inode, the decompressed bytes speak.
        assert_eq!(judge(&s, &observe(None, &content, &s)), Verdict::Resume);
        // A copy (copytruncate's rotated file): another inode, same bytes.
        let other = Some(FileKey { dev: 8, ino: 43 });
        assert_eq!(judge(&s, &observe(other, &content, &s)), Verdict::Resume);
        // Another container's file is another file.
        assert_eq!(judge(&s, &observe(other, &lines(1000, 1100), &s)), Verdict::Other);
        assert_eq!(judge(&s, &observe(None, &content[..100], &s)), Verdict::Other);
    }

    #[test]
    fn an_empty_fingerprint_matches_only_by_inode() {
        let s = saved(b"", 0);
        assert_eq!(s.fingerprint.len, 0);
        assert_eq!(judge(&s, &observe(Some(KEY), b"anything", &s)), Verdict::Resume);
        assert_eq!(judge(&s, &observe(None, b"anything", &s)), Verdict::Other);
        assert_eq!(judge(&s, &observe(Some(FileKey { dev: 1, ino: 1 }), b"", &s)), Verdict::Other);
    }

    #[test]
    fn a_short_fingerprint_is_taken_over_what_was_there() {
        let s = saved(b"short\n", 6);
        assert_eq!(s.fingerprint.len, 6);
        assert!(!s.fingerprint.is_full());
        assert_eq!(judge(&s, &observe(Some(KEY), b"short\nand more\n", &s)), Verdict::Resume);
        assert_eq!(judge(&s, &observe(None, b"short\nand more\n", &s)), Verdict::Resume);
        assert!(Fingerprint::of(&lines(0, 100)).is_full());
    }
}

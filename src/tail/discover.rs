//! Which files to follow: path globs expanded over the directory tree, and the rotated siblings
//! of a followed file recognised by name.
//!
//! The glob language is the shell's ([`crate::glob`]), one path component at a time: `*` (any
//! run of characters but `/`, not matching a leading `.`), `?` (one character) and `[…]` (a
//! set); everything else is literal. That covers `/var/log/containers/*.log` and
//! `/var/log/pods/*/*/*.log` without a glob crate.
//! Matching is pure; [`expand`] and [`rotated_siblings`] read directories.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A compiled glob: a literal directory prefix, then components that may hold wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// Where walking starts: the leading components without wildcards.
    pub(crate) root: PathBuf,
    parts: Vec<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GlobError {
    #[error("`{0}`: a path glob must be absolute")]
    NotAbsolute(String),
    #[error("`{0}`: a path glob must name files (it ends in a directory)")]
    NoFileName(String),
    #[error("`{0}`: `..` is not allowed in a path glob")]
    ParentDir(String),
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Result<Self, GlobError> {
        let path = Path::new(pattern);
        if !path.is_absolute() {
            return Err(GlobError::NotAbsolute(pattern.to_owned()));
        }
        if pattern.ends_with('/') {
            return Err(GlobError::NoFileName(pattern.to_owned()));
        }
        let mut root = PathBuf::from("/");
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => return Err(GlobError::ParentDir(pattern.to_owned())),
                Component::Prefix(_) => return Err(GlobError::NotAbsolute(pattern.to_owned())),
                Component::Normal(s) => {
                    if parts.is_empty() && !has_wildcard(s.as_bytes()) {
                        root.push(s);
                    } else {
                        parts.push(s.to_owned());
                    }
                }
            }
        }
        if parts.is_empty() {
            // A plain file path: its last component is the "pattern" matched in its directory.
            let name = root.file_name().map(OsStr::to_owned);
            let Some(name) = name else { return Err(GlobError::NoFileName(pattern.to_owned())) };
            root.pop();
            parts.push(name);
        }
        Ok(Glob { root, parts })
    }

    /// The directory walking starts from, watched so that files (or, under wildcard
    /// directories, new directories) appearing there are seen at once; deeper new directories
    /// are found by the next rescan.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the file names are the only wildcards (the root holds the matches).
    #[cfg(test)]
    fn is_flat(&self) -> bool {
        self.parts.len() == 1
    }
}

fn has_wildcard(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b'*' || b == b'?' || b == b'[')
}

/// Shell matching of one component ([`crate::glob`]); a leading `.` only literally.
pub(crate) fn matches(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    crate::glob::matches(pattern, name)
}

/// The paths that match `glob` now, sorted. Unreadable directories are skipped: a pod's
/// directory vanishing mid-walk is normal.
pub(crate) fn expand(glob: &Glob) -> Vec<PathBuf> {
    let mut level = vec![glob.root.clone()];
    for (i, part) in glob.parts.iter().enumerate() {
        let last = i + 1 == glob.parts.len();
        let mut next = Vec::new();
        for dir in &level {
            if !has_wildcard(part.as_bytes()) {
                next.push(dir.join(part));
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if matches(part.as_bytes(), name.as_bytes()) {
                    next.push(dir.join(&name));
                }
            }
        }
        if !last {
            next.retain(|p| p.is_dir());
        }
        level = next;
    }
    level.sort();
    level
}

/// How a rotated sibling is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Compression {
    None,
    Gzip,
}

/// Whether `name` is a rotation of the live file `live`: the live name, a `.`, and a suffix —
/// kubelet's `0.log.20240101-120000` and `0.log.20240101-120000.gz`, Docker's
/// `<id>-json.log.1`, logrotate's `app.log.1` and `app.log.2.gz`. kubelet compresses into
/// `<rotated>.tmp` and renames it to `.gz` when done, so `.tmp` is a half-written gzip, not a
/// rotation. `live` may itself be a rotated name (a checkpoint names the rotated file it was
/// reading): its `.gz` is then `<live>.gz`, the suffix `gz` alone.
pub(crate) fn rotation_of(live: &[u8], name: &[u8]) -> Option<Compression> {
    let rest = name.strip_prefix(live)?.strip_prefix(b".")?;
    if rest.is_empty() || rest.ends_with(b".tmp") {
        return None;
    }
    Some(if rest == b"gz" || rest.ends_with(b".gz") { Compression::Gzip } else { Compression::None })
}

/// The rotated siblings of `live_path` in its directory, sorted by name.
pub(crate) fn rotated_siblings(live_path: &Path) -> Vec<(PathBuf, Compression)> {
    let (Some(dir), Some(live)) = (live_path.parent(), live_path.file_name()) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            rotation_of(live.as_bytes(), name.as_bytes()).map(|c| (dir.join(&name), c))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_matching() {
        for (p, n, want) in [
            ("*.log", "a_ns_c-123.log", true),
            ("*.log", "a.log.1", false),
            ("*.log", ".hidden.log", false),
            (".*.log", ".hidden.log", true),
            ("*", "x", true),
            ("*", "", true),
            ("?.log", "0.log", true),
            ("?.log", "10.log", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*-json.log", "abc-json.log", true),
            ("literal", "literal", true),
            ("literal", "literally", false),
            ("**", "anything", true),
        ] {
            assert_eq!(matches(p.as_bytes(), n.as_bytes()), want, "{p} vs {n}");
        }
    }

    #[test]
    fn globs_compile_to_a_root_and_parts() {
        let g = Glob::new("/var/log/containers/*.log").unwrap();
        assert_eq!(g.root, Path::new("/var/log/containers"));
        assert!(g.is_flat());
        let g = Glob::new("/var/log/pods/*/*/*.log").unwrap();
        assert_eq!(g.root, Path::new("/var/log/pods"));
        assert!(!g.is_flat());
        assert_eq!(g.root(), Path::new("/var/log/pods"));
        let g = Glob::new("/srv/app.log").unwrap();
        assert_eq!((g.root.as_path(), g.parts.len()), (Path::new("/srv"), 1));
        assert!(matches!(Glob::new("logs/*.log"), Err(GlobError::NotAbsolute(_))));
        assert!(matches!(Glob::new("/var/log/"), Err(GlobError::NoFileName(_))));
        assert!(matches!(Glob::new("/var/../x/*.log"), Err(GlobError::ParentDir(_))));
    }

    #[test]
    fn expand_walks_wildcard_directories() {
        let d = tempfile::tempdir().unwrap();
        for p in ["ns_a_1/c/0.log", "ns_a_1/c/0.log.20240101-000000", "ns_b_2/d/1.log", "ns_b_2/d/x.txt"] {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
        }
        let g = Glob::new(&format!("{}/*/*/*.log", d.path().display())).unwrap();
        assert_eq!(expand(&g), [d.path().join("ns_a_1/c/0.log"), d.path().join("ns_b_2/d/1.log")]);
        let missing = Glob::new(&format!("{}/nope/*.log", d.path().display())).unwrap();
        assert!(expand(&missing).is_empty());
    }

    #[test]
    fn rotations_are_recognised_by_name() {
        let r = |live: &str, name: &str| rotation_of(live.as_bytes(), name.as_bytes());
        assert_eq!(r("0.log", "0.log.20240101-120000"), Some(Compression::None));
        assert_eq!(r("0.log", "0.log.20240101-120000.gz"), Some(Compression::Gzip));
        assert_eq!(r("0.log", "0.log.20240101-120000.tmp"), None, "kubelet's gzip in progress");
        assert_eq!(r("abc-json.log", "abc-json.log.1"), Some(Compression::None));
        assert_eq!(r("app.log", "app.log.2.gz"), Some(Compression::Gzip));
        // A rotated file's own `.gz` (a checkpoint names the rotated file).
        assert_eq!(r("0.log.20240101-120000", "0.log.20240101-120000.gz"), Some(Compression::Gzip));
        assert_eq!(r("app.log.1", "app.log.1.gz"), Some(Compression::Gzip));
        assert_eq!(r("0.log", "0.log"), None);
        assert_eq!(r("0.log", "0.log."), None);
        assert_eq!(r("0.log", "10.log.1"), None);
        assert_eq!(r("0.log", "0.logx"), None);
    }
}

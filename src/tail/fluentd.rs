//! fluentd's `in_tail` position file (`/var/log/containers.log.pos` in the Deis/Hephy fluentd
//! DaemonSet), read once when logmill replaces fluentd on a node. Pure.
//!
//! The format, as fluentd's `in_tail/position_file.rb` writes and reads it: one line per file,
//! `path \t offset \t inode`, offset and inode in hex (written `%016x`, read as any hex digits,
//! so both are accepted here). The offset is the byte after the last line fluentd emitted (it
//! subtracts its partial-line buffer), so it sits on a line boundary. `ffffffffffffffff` marks a
//! file fluentd stopped watching (rotated away, or gone); such lines carry no position. When a
//! path appears twice, fluentd keeps the last line; lines that do not parse are skipped.

use std::collections::HashMap;
use std::path::PathBuf;

/// fluentd's `UNWATCHED_POSITION`.
const UNWATCHED: u64 = u64::MAX;

/// Where fluentd was in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) offset: u64,
    pub(crate) inode: u64,
}

/// The positions of a pos_file's text, by path, and how many lines were not understood.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PosFile {
    pub(crate) positions: HashMap<PathBuf, Position>,
    pub(crate) unparsable: usize,
}

pub(crate) fn parse(text: &[u8]) -> PosFile {
    use std::os::unix::ffi::OsStrExt;
    let mut out = PosFile::default();
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, |&b| b == b'\t');
        let (Some(path), Some(offset), Some(inode)) = (fields.next(), fields.next(), fields.next()) else {
            out.unparsable += 1;
            continue;
        };
        // fluentd's regex anchors only the start: trailing text after the inode's digits is
        // ignored, so take the leading hex digits.
        let (Some(offset), Some(inode)) = (leading_hex(offset), leading_hex(inode)) else {
            out.unparsable += 1;
            continue;
        };
        if path.is_empty() {
            out.unparsable += 1;
            continue;
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        if offset == UNWATCHED {
            // A later "unwatched" line does not erase an earlier live one in fluentd's
            // compaction either: it is simply not an entry.
            continue;
        }
        out.positions.insert(path, Position { offset, inode });
    }
    out
}

fn leading_hex(field: &[u8]) -> Option<u64> {
    let digits = field.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let s = std::str::from_utf8(&field[..digits]).ok()?;
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_fluentd_writes() {
        // Lines as fluentd's "%s\t%016x\t%016x\n" writes them, worked out by hand:
        // 0x1f4 = 500, 0x2a = 42; an unwatched entry; a path listed twice (the last wins).
        let text = b"/var/log/containers/a_ns_c-1.log\t00000000000001f4\t000000000000002a\n\
/var/log/containers/b_ns_c-2.log\tffffffffffffffff\t0000000000000063\n\
/var/log/containers/c_ns_c-3.log\t0000000000000010\t0000000000000001\n\
/var/log/containers/c_ns_c-3.log\t0000000000000020\t0000000000000002\n";
        let p = parse(text);
        assert_eq!(p.unparsable, 0);
        assert_eq!(p.positions.len(), 2);
        assert_eq!(
            p.positions[&PathBuf::from("/var/log/containers/a_ns_c-1.log")],
            Position { offset: 500, inode: 42 }
        );
        assert_eq!(
            p.positions[&PathBuf::from("/var/log/containers/c_ns_c-3.log")],
            Position { offset: 32, inode: 2 }
        );
    }

    #[test]
    fn damaged_lines_are_counted_not_fatal() {
        let text = b"no tabs here\n/a\tzz\t01\n\t01\t01\n/b\t1F\t2a trailing\n/c\t01\n";
        let p = parse(text);
        assert_eq!(p.unparsable, 4);
        assert_eq!(p.positions[&PathBuf::from("/b")], Position { offset: 31, inode: 42 });
    }
}

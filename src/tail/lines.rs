//! Splitting the bytes of a file, read in chunks, into lines with their byte offsets.
//!
//! Pure: the caller reads, this module only cuts. A line wholly inside a chunk is lent out of
//! the chunk itself; only a line that spans two reads is copied, into a carry buffer that never
//! grows past `max_line_bytes`, so a runaway writer (a 1 GiB line without a newline) costs at
//! most that much memory.

use memchr::memchr_iter;

/// A per-file buffer (a carried line, a decoded line, a merged record) above this is freed once
/// used, rather than kept for the next one: a node follows hundreds of files, and one long
/// line each must not pin up to `max_line_bytes` per file for as long as it is followed.
/// Below it, the buffer is reused (most lines fit in a few hundred bytes).
pub(crate) const KEEP_BUFFER_BYTES: usize = 64 << 10;

/// One complete line of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// The line without its `'\n'`. A trailing `'\r'` is kept: whether it belongs to the text
    /// depends on the format (CRI content is verbatim), so the caller decides.
    pub(crate) bytes: &'a [u8],
    /// Offset in the file of the line's first byte.
    pub(crate) offset: u64,
    /// The line was longer than `max_line_bytes`; `bytes` holds its first `max_line_bytes`.
    pub(crate) truncated: bool,
}

/// Feed chunks as they are read from a file; get complete lines with the byte offset of their
/// first byte in the file.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    /// The start of a line whose `'\n'` has not been read yet, at most `max_line_bytes` of it.
    carry: Vec<u8>,
    /// The partial line had more than `max_line_bytes`; the excess was skipped, not kept.
    carry_overflowed: bool,
    max_line_bytes: usize,
    /// Offset just after the last delivered line: where the pending partial line, if any, begins.
    committed: u64,
    /// Offset of the next byte `push` will see.
    read: u64,
}

impl LineSplitter {
    /// A splitter for a file whose next byte to be pushed sits at `start_offset` (0 for a new
    /// file, a checkpoint's offset when resuming).
    pub(crate) fn new(max_line_bytes: usize, start_offset: u64) -> Self {
        Self {
            carry: Vec::new(),
            carry_overflowed: false,
            max_line_bytes,
            committed: start_offset,
            read: start_offset,
        }
    }

    /// Calls `on_line` for each line of `carry + chunk` that the chunk completes.
    ///
    /// A line longer than `max_line_bytes` is delivered once, when its `'\n'` arrives, cut to
    /// `max_line_bytes` and flagged `truncated`.
    pub(crate) fn push(&mut self, chunk: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        let base = self.read;
        let mut start = 0;
        for nl in memchr_iter(b'\n', chunk) {
            if start == 0 && self.has_partial() {
                // The first newline of the chunk ends the line carried over from earlier reads.
                let overflow = self.append_capped(&chunk[..nl]);
                on_line(Line {
                    bytes: &self.carry,
                    offset: self.committed,
                    truncated: self.carry_overflowed || overflow,
                });
                self.release_carry();
            } else {
                let whole = &chunk[start..nl];
                let cut = whole.len().min(self.max_line_bytes);
                on_line(Line {
                    bytes: &whole[..cut],
                    offset: base + start as u64,
                    truncated: cut < whole.len(),
                });
            }
            start = nl + 1;
            self.committed = base + start as u64;
        }
        if start < chunk.len() {
            let overflow = self.append_capped(&chunk[start..]);
            self.carry_overflowed |= overflow;
        }
        self.read = base + chunk.len() as u64;
    }

    /// At end of input (the replay of a finished file): delivers a last line that had no
    /// `'\n'`, if any. Pushing may continue afterwards; offsets carry on from the end.
    pub(crate) fn finish(&mut self, mut on_line: impl FnMut(Line<'_>)) {
        if self.has_partial() {
            on_line(Line { bytes: &self.carry, offset: self.committed, truncated: self.carry_overflowed });
            self.release_carry();
            self.committed = self.read;
        }
    }

    /// Offset just after the last line delivered: what a checkpoint may record. Bytes of a
    /// partial line are not counted, so a restart re-reads that line whole.
    pub(crate) fn committed_offset(&self) -> u64 {
        self.committed
    }

    /// Bytes of a partial line held in memory (at most `max_line_bytes`).
    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.carry.len()
    }

    /// Capacity of the carry buffer, held or not.
    #[cfg(test)]
    pub(crate) fn carry_capacity(&self) -> usize {
        self.carry.capacity()
    }

    /// The carried line was delivered: empty the buffer, and free it if a long line grew it.
    fn release_carry(&mut self) {
        self.carry.clear();
        self.carry_overflowed = false;
        if self.carry.capacity() > KEEP_BUFFER_BYTES {
            self.carry = Vec::new();
        }
    }

    fn has_partial(&self) -> bool {
        self.read > self.committed
    }

    /// Appends what fits under the cap; returns whether bytes had to be skipped.
    fn append_capped(&mut self, bytes: &[u8]) -> bool {
        let room = self.max_line_bytes.saturating_sub(self.carry.len());
        let take = bytes.len().min(room);
        if take > 0 {
            let needed = self.carry.len() + take;
            if needed > self.carry.capacity() {
                // Vec's doubling could reserve up to twice the cap; grow geometrically but
                // never past it, so the cap bounds the allocation and not just the length.
                let target = needed.max(self.carry.capacity() * 2).min(self.max_line_bytes);
                self.carry.reserve_exact(target - self.carry.len());
            }
            self.carry.extend_from_slice(&bytes[..take]);
        }
        take < bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Owned = (Vec<u8>, u64, bool);

    fn collect_push(s: &mut LineSplitter, chunk: &[u8], out: &mut Vec<Owned>) {
        s.push(chunk, |l| out.push((l.bytes.to_vec(), l.offset, l.truncated)));
    }

    fn split_in_chunks(
        input: &[u8],
        cuts: &[usize],
        max: usize,
        start: u64,
    ) -> (Vec<Owned>, u64, Vec<Owned>) {
        let mut s = LineSplitter::new(max, start);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            let cut = cut.clamp(from, input.len());
            collect_push(&mut s, &input[from..cut], &mut out);
            assert!(s.pending_bytes() <= max);
            assert!(s.carry.capacity() <= max.max(s.carry.len()));
            from = cut;
        }
        collect_push(&mut s, &input[from..], &mut out);
        let committed = s.committed_offset();
        let mut tail = Vec::new();
        s.finish(|l| tail.push((l.bytes.to_vec(), l.offset, l.truncated)));
        (out, committed, tail)
    }

    /// An independent model: split on every '\n', the last piece is the unterminated rest.
    fn reference(input: &[u8], max: usize, start: u64) -> (Vec<Owned>, u64, Vec<Owned>) {
        let mut lines = Vec::new();
        let mut offset = start;
        let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let rest = pieces.pop().unwrap_or_default();
        for p in pieces {
            lines.push((p[..p.len().min(max)].to_vec(), offset, p.len() > max));
            offset += p.len() as u64 + 1;
        }
        let tail = if rest.is_empty() {
            Vec::new()
        } else {
            vec![(rest[..rest.len().min(max)].to_vec(), offset, rest.len() > max)]
        };
        (lines, offset, tail)
    }

    #[test]
    fn lines_and_offsets_in_one_push() {
        let mut s = LineSplitter::new(100, 1000);
        let mut out = Vec::new();
        collect_push(&mut s, b"ab\n\ncrlf\r\nrest", &mut out);
        assert_eq!(
            out,
            vec![(b"ab".to_vec(), 1000, false), (vec![], 1003, false), (b"crlf\r".to_vec(), 1004, false)]
        );
        // "ab\n" + "\n" + "crlf\r\n" = 3 + 1 + 6 bytes.
        assert_eq!(s.committed_offset(), 1010);
        assert_eq!(s.pending_bytes(), 4);
        collect_push(&mut s, b"!\n", &mut out);
        assert_eq!(out[3], (b"rest!".to_vec(), 1010, false));
        assert_eq!(s.committed_offset(), 1016);
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input = b"first line\nsecond\n\nthird with \r\nno newline at end";
        let whole = split_in_chunks(input, &[], 64, 7);
        assert_eq!(whole, reference(input, 64, 7));
        for a in 0..=input.len() {
            assert_eq!(split_in_chunks(input, &[a], 64, 7), whole, "split at {a}");
            for b in a..=input.len() {
                assert_eq!(split_in_chunks(input, &[a, b], 64, 7), whole, "split at {a},{b}");
            }
        }
    }

    #[test]
    fn lines_inside_a_chunk_are_borrowed_from_it() {
        let chunk = b"one\ntwo\nthr";
        let range = chunk.as_ptr_range();
        let mut s = LineSplitter::new(64, 0);
        let mut seen = 0;
        s.push(chunk, |l| {
            assert!(range.contains(&l.bytes.as_ptr()));
            seen += 1;
        });
        assert_eq!(seen, 2);
        // A line that spans chunks comes from the carry buffer instead.
        let next = b"ee\nfour\n";
        let range = next.as_ptr_range();
        let mut got = Vec::new();
        s.push(next, |l| got.push((range.contains(&l.bytes.as_ptr()), l.bytes.to_vec())));
        assert_eq!(got, vec![(false, b"three".to_vec()), (true, b"four".to_vec())]);
    }

    #[test]
    fn an_overlong_line_is_truncated_once_and_the_next_is_intact() {
        const MIB: usize = 1 << 20;
        let mut input = vec![b'x'; MIB + 1];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");

        // Read in 64 KiB chunks, as a file reader would: the long line spans many of them.
        let mut s = LineSplitter::new(MIB, 0);
        let mut out = Vec::new();
        for chunk in input.chunks(64 * 1024) {
            collect_push(&mut s, chunk, &mut out);
            assert!(s.carry.capacity() <= MIB);
        }
        // Delivered, the long line's buffer is freed, not kept for the file's next lines.
        assert_eq!(s.carry.capacity(), 0);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.len(), MIB);
        assert!(out[0].0.iter().all(|&b| b == b'x'));
        assert_eq!((out[0].1, out[0].2), (0, true));
        // The long line is MIB + 1 bytes and its '\n'.
        assert_eq!(out[1], (b"next".to_vec(), MIB as u64 + 2, false));
        assert_eq!(s.committed_offset(), MIB as u64 + 7);

        // The same within a single chunk (the borrowed path).
        let mut s = LineSplitter::new(MIB, 0);
        let mut out = Vec::new();
        collect_push(&mut s, &input, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0.len(), out[0].1, out[0].2), (MIB, 0, true));
        assert_eq!(out[1], (b"next".to_vec(), MIB as u64 + 2, false));
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_not_truncated() {
        let (lines, _, _) = split_in_chunks(b"abcd\nabcde\n", &[2, 7], 4, 0);
        assert_eq!(lines, vec![(b"abcd".to_vec(), 0, false), (b"abcd".to_vec(), 5, true)]);
    }

    #[test]
    fn committed_offset_excludes_a_partial_line_until_finish() {
        let mut s = LineSplitter::new(8, 50);
        assert_eq!(s.committed_offset(), 50);
        s.push(b"abc", |_| panic!("no line yet"));
        assert_eq!(s.committed_offset(), 50);
        s.push(b"\nde", |_| {});
        assert_eq!(s.committed_offset(), 54);
        let mut last = Vec::new();
        s.finish(|l| last.push((l.bytes.to_vec(), l.offset, l.truncated)));
        assert_eq!(last, vec![(b"de".to_vec(), 54, false)]);
        assert_eq!(s.committed_offset(), 56);
        // A second finish has nothing left to deliver.
        s.finish(|_| panic!("already delivered"));
        // An overlong unterminated last line is flagged too.
        s.push(b"0123456789", |_| {});
        s.finish(|l| last.push((l.bytes.to_vec(), l.offset, l.truncated)));
        assert_eq!(last[1], (b"01234567".to_vec(), 56, true));
        assert_eq!(s.committed_offset(), 66);
    }

    #[test]
    fn a_zero_cap_keeps_nothing() {
        let (lines, committed, tail) = split_in_chunks(b"a\n\nbc", &[1, 3], 0, 0);
        assert_eq!(lines, vec![(vec![], 0, true), (vec![], 2, false)]);
        assert_eq!(committed, 3);
        assert_eq!(tail, vec![(vec![], 3, true)]);
    }

    fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Newlines are frequent enough to make many short lines; any byte may appear.
        proptest::collection::vec(prop_oneof![3 => Just(b'\n'), 1 => Just(b'\r'), 8 => any::<u8>()], 0..200)
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_lines(
            input in line_bytes(),
            cuts in proptest::collection::vec(0usize..200, 0..8),
            max in 0usize..24,
            start in 0u64..1_000_000,
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let got = split_in_chunks(&input, &cuts, max, start);
            prop_assert_eq!(&got, &split_in_chunks(&input, &[], max, start));
            prop_assert_eq!(got, reference(&input, max, start));
        }

        #[test]
        fn untruncated_lines_rebuild_the_input(
            input in line_bytes(),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (lines, committed, tail) = split_in_chunks(&input, &cuts, usize::MAX, 0);
            let mut rebuilt = Vec::new();
            for (bytes, offset, truncated) in &lines {
                prop_assert!(!truncated);
                prop_assert_eq!(*offset, rebuilt.len() as u64);
                rebuilt.extend_from_slice(bytes);
                rebuilt.push(b'\n');
            }
            prop_assert_eq!(committed, rebuilt.len() as u64);
            for (bytes, _, _) in &tail {
                rebuilt.extend_from_slice(bytes);
            }
            prop_assert_eq!(rebuilt, input);
        }
    }
}

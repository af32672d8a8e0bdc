//! One file's decoding, from the bytes read to whole records: the wrapping picked from the
//! first line (or given), Docker json-file and CRI lines decoded, the pieces of split lines
//! joined per stream, lines capped at `max_line_bytes`, and each record's origin.
//!
//! Pure: the caller reads the file and hands over chunks. Alongside the records the decoder
//! keeps the [`Resume`] point that a checkpoint may record: the first byte of the oldest record
//! not yet completed, with the point-key state as it was there. Restarting from it yields the
//! same records, stamped with the same keys, as reading on would have.

use std::borrow::Cow;

use super::container::{self, DecodeError, Fragment, Stream, Wrapping};
use super::lines::{Line, LineSplitter, KEEP_BUFFER_BYTES};
use crate::access::{KeyGuard, LineOrigin};

/// Where reading may start again: a byte offset at the start of a record, and the key state
/// of the records before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    pub offset: u64,
    pub keys: KeyGuard,
}

/// One whole line of a file: the pieces of a split line joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The runtime's time of the first piece (the moment the line began); `None` for raw lines.
    pub time_ns: Option<i64>,
    pub stream: Stream,
    pub text: Cow<'a, [u8]>,
    /// The line was longer than `max_line_bytes`; `text` holds its first `max_line_bytes`.
    pub truncated: bool,
    /// Offset of the record's first byte (its first piece's line) in the file.
    pub offset: u64,
}

impl Record<'_> {
    /// What the record's point timestamps derive from.
    pub(crate) fn origin(&self) -> LineOrigin {
        LineOrigin { runtime_time_ns: self.time_ns, file_offset: self.offset }
    }
}

/// Undecodable lines by reason, and records cut at `max_line_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DecodeCounts {
    pub(crate) undecodable: [u64; DecodeError::ALL.len()],
    pub(crate) truncated: u64,
}

impl DecodeCounts {
    /// `(reason, count)` for every reason seen.
    pub(crate) fn undecodable_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DecodeError::ALL.iter().zip(self.undecodable).filter(|(_, n)| *n > 0).map(|(e, n)| (e.reason(), n))
    }

    pub(crate) fn add(&mut self, other: &DecodeCounts) {
        for (a, b) in self.undecodable.iter_mut().zip(other.undecodable) {
            *a += b;
        }
        self.truncated += other.truncated;
    }
}

/// Decodes one file. Feed it the file's bytes in order from the offset it was created at.
#[derive(Debug)]
pub(crate) struct FileDecoder {
    /// `None` until the first line is seen, when the wrapping is detected.
    wrapping: Option<Wrapping>,
    max_line_bytes: usize,
    splitter: LineSplitter,
    reassembler: Reassembler,
    scratch: Vec<u8>,
    keys: KeyGuard,
    counts: DecodeCounts,
    /// The start of the last record handed over.
    last_record: u64,
}

impl FileDecoder {
    /// A decoder for a file read from `resume.offset` on; `wrapping` `None` detects it from
    /// the first line.
    pub(crate) fn new(wrapping: Option<Wrapping>, max_line_bytes: usize, resume: Resume) -> Self {
        Self {
            wrapping,
            max_line_bytes,
            splitter: LineSplitter::new(splitter_cap(max_line_bytes), resume.offset),
            reassembler: Reassembler::new(max_line_bytes),
            scratch: Vec::new(),
            keys: resume.keys,
            counts: DecodeCounts::default(),
            last_record: resume.offset,
        }
    }

    /// Decodes the next bytes of the file. `on_record` gets each completed record and the
    /// file's key guard, which stamps the record's points (see [`KeyGuard`]).
    pub(crate) fn push(&mut self, chunk: &[u8], mut on_record: impl FnMut(Record<'_>, &mut KeyGuard)) {
        let Self { wrapping, max_line_bytes, splitter, reassembler, scratch, keys, counts, last_record } =
            self;
        let mut on_record = |r: Record<'_>, keys: &mut KeyGuard| {
            *last_record = (*last_record).max(r.offset);
            on_record(r, keys);
        };
        splitter.push(chunk, |line| {
            feed(line, wrapping, *max_line_bytes, reassembler, scratch, keys, counts, &mut on_record)
        });
        release_large(scratch);
    }

    /// The end of a finished file (replay, or a rotated file read to its end): a last line
    /// without its `\n` is whole as it is, and so are pieces whose last piece never came
    /// (Docker writes a container's last line without `\n` when it exits mid-line).
    pub(crate) fn finish(&mut self, mut on_record: impl FnMut(Record<'_>, &mut KeyGuard)) {
        let Self { wrapping, max_line_bytes, splitter, reassembler, scratch, keys, counts, .. } = self;
        splitter.finish(|line| {
            feed(line, wrapping, *max_line_bytes, reassembler, scratch, keys, counts, &mut on_record)
        });
        reassembler.flush(|record| {
            counts.truncated += u64::from(record.truncated);
            on_record(record, keys);
        });
        release_large(scratch);
    }

    /// Capacity of the buffers the decoder keeps between reads.
    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.scratch.capacity() + self.splitter.carry_capacity()
    }

    /// Where a restart must read from so that no record is lost: the start of the oldest
    /// record still in pieces, else the end of the last complete line.
    pub(crate) fn resume(&self) -> Resume {
        self.reassembler
            .oldest_start()
            .unwrap_or(Resume { offset: self.splitter.committed_offset(), keys: self.keys })
    }

    pub(crate) fn counts(&self) -> DecodeCounts {
        self.counts
    }

    /// Whether records were handed over past [`FileDecoder::resume`]: lines of one stream
    /// completed between the pieces of a split line of the other. A restart from the resume
    /// point hands them over again.
    pub(crate) fn ahead_of_resume(&self) -> bool {
        self.reassembler.oldest_start().is_some_and(|start| self.last_record > start.offset)
    }
}

/// The unescaping buffer is per line; a long escaped line's is freed once the read is decoded.
fn release_large(scratch: &mut Vec<u8>) {
    if scratch.capacity() > KEEP_BUFFER_BYTES {
        *scratch = Vec::new();
    }
}

/// A wrapped line carries JSON or CRI framing around its text, and JSON escapes can make it up
/// to six times longer (`\u00XX`): the splitter leaves room for that, and the text itself is
/// capped at `max_line_bytes` after decoding.
fn splitter_cap(max_line_bytes: usize) -> usize {
    max_line_bytes.saturating_mul(6).saturating_add(4096)
}

#[allow(clippy::too_many_arguments)] // the decoder's fields, split for the borrow checker
fn feed(
    line: Line<'_>,
    wrapping: &mut Option<Wrapping>,
    max_line_bytes: usize,
    reassembler: &mut Reassembler,
    scratch: &mut Vec<u8>,
    keys: &mut KeyGuard,
    counts: &mut DecodeCounts,
    on_record: &mut impl FnMut(Record<'_>, &mut KeyGuard),
) {
    let wrapping = *wrapping.get_or_insert_with(|| container::detect_wrapping(line.bytes));
    if wrapping == Wrapping::Raw {
        let truncated = line.truncated || line.bytes.len() > max_line_bytes;
        counts.truncated += u64::from(truncated);
        let text = &line.bytes[..line.bytes.len().min(max_line_bytes)];
        let record = Record {
            time_ns: None,
            stream: Stream::Stdout,
            text: Cow::Borrowed(text),
            truncated,
            offset: line.offset,
        };
        on_record(record, keys);
        return;
    }
    let fragment = match container::decode(wrapping, line.bytes, scratch) {
        Ok(f) => f,
        Err(e) => {
            counts.undecodable[e as usize] += 1;
            return;
        }
    };
    if let Some(record) = reassembler.push(fragment, Resume { offset: line.offset, keys: *keys }) {
        counts.truncated += u64::from(record.truncated);
        on_record(record, keys);
    }
}

/// Joins partial fragments (Docker's 16 KiB splits, CRI `P` tags) into whole records, one
/// buffer per stream since a runtime interleaves a container's stdout and stderr in one file.
/// Use one per file.
#[derive(Debug)]
pub(crate) struct Reassembler {
    max_line_bytes: usize,
    pending: [Pending; 2],
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

#[derive(Debug, Default)]
struct Pending {
    /// Pieces seen so far, capped at `max_line_bytes`: the excess is dropped, not buffered.
    text: Vec<u8>,
    time_ns: Option<i64>,
    /// Where the first piece began (`Some` while pieces are pending).
    start: Option<Resume>,
    truncated: bool,
}

impl Pending {
    fn take(&mut self, stream: Stream) -> Record<'static> {
        Record {
            time_ns: self.time_ns.take(),
            stream,
            text: Cow::Owned(std::mem::take(&mut self.text)),
            truncated: std::mem::take(&mut self.truncated),
            offset: self.start.take().map_or(0, |s| s.offset),
        }
    }
}

impl Reassembler {
    pub(crate) fn new(max_line_bytes: usize) -> Self {
        Self { max_line_bytes, pending: Default::default() }
    }

    /// Returns the whole record when `frag` completes one; `at` is where `frag`'s line starts
    /// (kept when it begins a record). A whole line with no pieces pending on its stream
    /// passes through borrowed; only joined pieces are copied.
    pub(crate) fn push<'a>(&mut self, frag: Fragment<'a>, at: Resume) -> Option<Record<'a>> {
        let max = self.max_line_bytes;
        let pending = &mut self.pending[frag.stream.index()];
        if pending.start.is_none() {
            if !frag.partial {
                let cut = frag.text.len().min(max);
                return Some(Record {
                    time_ns: frag.time_ns,
                    stream: frag.stream,
                    text: Cow::Borrowed(&frag.text[..cut]),
                    truncated: cut < frag.text.len(),
                    offset: at.offset,
                });
            }
            pending.start = Some(at);
            pending.time_ns = frag.time_ns;
        }
        let room = max.saturating_sub(pending.text.len());
        let take = frag.text.len().min(room);
        if take < frag.text.len() {
            pending.truncated = true;
        }
        if take > 0 {
            let needed = pending.text.len() + take;
            if needed > pending.text.capacity() {
                // Doubling could reserve up to twice the cap; the cap bounds the allocation.
                let target = needed.max(pending.text.capacity() * 2).min(max);
                pending.text.reserve_exact(target - pending.text.len());
            }
            pending.text.extend_from_slice(&frag.text[..take]);
        }
        if frag.partial {
            None
        } else {
            Some(pending.take(frag.stream))
        }
    }

    /// Ends records whose last piece never came: at the end of a finished file, or when a
    /// rotation cut a line. Delivers them in file order.
    pub(crate) fn flush(&mut self, mut on_record: impl FnMut(Record<'static>)) {
        let [out, err] = &self.pending;
        let out_first = match (out.start, err.start) {
            (Some(o), Some(e)) => o.offset <= e.offset,
            _ => true,
        };
        for i in if out_first { [0, 1] } else { [1, 0] } {
            if self.pending[i].start.is_some() {
                on_record(self.pending[i].take(STREAMS[i]));
            }
        }
    }

    /// Bytes of unfinished records held in memory (at most `max_line_bytes` per stream).
    #[cfg(test)]
    fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|p| p.text.len()).sum()
    }

    /// The start of the oldest record still in pieces.
    pub(crate) fn oldest_start(&self) -> Option<Resume> {
        self.pending.iter().filter_map(|p| p.start).min_by_key(|s| s.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::container::{decode_cri, decode_docker};
    use proptest::prelude::*;

    const NS: i64 = 1_000_000_000;

    fn at(offset: u64) -> Resume {
        Resume { offset, keys: KeyGuard::default() }
    }

    fn docker_line(log: &str, stream: &str, time: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "log": log, "stream": stream, "time": time }))
            .expect("a json! value always serialises")
    }

    impl Record<'_> {
        fn into_owned(self) -> Record<'static> {
            Record { text: Cow::Owned(self.text.into_owned()), ..self }
        }
    }

    #[test]
    fn a_long_line_leaves_no_large_buffer_behind() {
        // A 200 KiB line with escapes, read in 64 KiB chunks as the engine does: it is carried
        // across reads and unescaped through the scratch buffer. Once it is handed over, a
        // file that goes on with short lines keeps neither buffer at that size.
        let text: String = "tab\there \"quoted\" ".chars().cycle().take(200 * 1024).collect();
        let mut file = docker_line(&format!("{text}\n"), "stdout", "2016-10-20T18:39:20.1Z");
        file.push(b'\n');
        file.extend(docker_line("short\n", "stdout", "2016-10-20T18:39:20.2Z"));
        file.push(b'\n');
        let mut d = FileDecoder::new(None, 256 * 1024, Resume::default());
        let mut got = Vec::new();
        for chunk in file.chunks(64 * 1024) {
            d.push(chunk, |r, _| got.push(r.text.len()));
        }
        assert_eq!(got, [200 * 1024, 5]);
        // The short line's few bytes of unescaping, not the long line's 200 KiB and more.
        assert!(d.buffer_capacity() < 4096, "{} bytes kept", d.buffer_capacity());
    }

    #[test]
    fn docker_pieces_of_a_40_kib_line_reassemble() {
        // Quotes, backslashes and tabs make the pieces take the escaped path; ASCII keeps the
        // 16 KiB cuts on character boundaries, as they are for Docker only by luck.
        let unit = b"0123456789abcdef\"\\\t";
        let text: Vec<u8> = unit.iter().copied().cycle().take(40 * 1024).collect();
        let pieces: Vec<&str> =
            text.chunks(16 * 1024).map(|c| std::str::from_utf8(c).expect("ASCII")).collect();
        assert_eq!(pieces.len(), 3);
        let times = ["2016-10-20T18:39:20.1Z", "2016-10-20T18:39:20.2Z", "2016-10-20T18:39:20.3Z"];
        let mut reasm = Reassembler::new(1 << 20);
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        for (i, (piece, time)) in pieces.iter().zip(times).enumerate() {
            let log = if i == 2 { format!("{piece}\n") } else { piece.to_string() };
            let line = docker_line(&log, "stdout", time);
            let frag = decode_docker(&line, &mut scratch).expect("valid");
            assert_eq!(frag.partial, i < 2);
            if let Some(rec) = reasm.push(frag, at(0)) {
                out.push(rec.into_owned());
            }
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, text);
        assert_eq!(out[0].time_ns, Some(1_476_988_760 * NS + 100_000_000));
        assert!(!out[0].truncated);
        assert_eq!(reasm.pending_bytes(), 0);
    }

    #[test]
    fn cri_partials_join_per_stream() {
        let lines: [&[u8]; 4] = [
            b"2016-10-06T00:17:09.1Z stdout P one ",
            b"2016-10-06T00:17:09.2Z stdout P two ",
            b"2016-10-06T00:17:09.3Z stderr F an error",
            b"2016-10-06T00:17:09.4Z stdout F three",
        ];
        let mut reasm = Reassembler::new(1024);
        let mut out = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            let frag = decode_cri(line).expect("valid");
            if let Some(rec) = reasm.push(frag, at(100 * i as u64)) {
                // The stderr line passes through without a copy.
                assert_eq!(matches!(rec.text, Cow::Borrowed(_)), rec.stream == Stream::Stderr);
                out.push(rec.into_owned());
            }
            if out.is_empty() {
                assert!(reasm.pending_bytes() > 0);
                assert_eq!(reasm.oldest_start(), Some(at(0)), "the first piece's line");
            }
        }
        let base = 1_475_713_029 * NS;
        assert_eq!(
            out,
            vec![
                Record {
                    time_ns: Some(base + 300_000_000),
                    stream: Stream::Stderr,
                    text: Cow::Borrowed(&b"an error"[..]),
                    truncated: false,
                    offset: 200,
                },
                // Its time and offset are its first piece's.
                Record {
                    time_ns: Some(base + 100_000_000),
                    stream: Stream::Stdout,
                    text: Cow::Borrowed(&b"one two three"[..]),
                    truncated: false,
                    offset: 0,
                },
            ]
        );
        assert_eq!(reasm.pending_bytes(), 0);
        assert_eq!(reasm.oldest_start(), None);
    }

    #[test]
    fn an_overlong_record_is_truncated_and_the_next_is_intact() {
        let mut reasm = Reassembler::new(10);
        let frag = |text: &'static [u8], partial, t| Fragment {
            time_ns: Some(t),
            stream: Stream::Stdout,
            text,
            partial,
        };
        assert_eq!(reasm.push(frag(b"0123456", true, 1), at(0)), None);
        assert_eq!(reasm.push(frag(b"789abc", true, 2), at(1)), None);
        assert_eq!(reasm.pending_bytes(), 10);
        assert_eq!(reasm.push(frag(b"def", true, 3), at(2)), None);
        assert_eq!(reasm.pending_bytes(), 10);
        let rec = reasm.push(frag(b"g", false, 4), at(3)).expect("the last piece completes it");
        assert_eq!((rec.time_ns, &rec.text[..], rec.truncated), (Some(1), &b"0123456789"[..], true));
        assert!(reasm.pending[0].text.capacity() <= 10);
        let rec = reasm.push(frag(b"next", false, 5), at(4)).expect("whole");
        assert_eq!((rec.time_ns, &rec.text[..], rec.truncated), (Some(5), &b"next"[..], false));
        assert_eq!(reasm.push(frag(b"x", true, 6), at(5)), None);
        let rec = reasm.push(frag(b"y", false, 7), at(6)).expect("the last piece completes it");
        assert_eq!((rec.time_ns, &rec.text[..], rec.truncated), (Some(6), &b"xy"[..], false));
        // A whole line over the cap is cut on the borrowed path too.
        let rec = reasm.push(frag(b"0123456789ABC", false, 8), at(7)).expect("whole");
        assert_eq!((&rec.text[..], rec.truncated), (&b"0123456789"[..], true));
        assert!(matches!(rec.text, Cow::Borrowed(_)));
    }

    #[test]
    fn flush_delivers_unfinished_records_in_file_order() {
        let mut reasm = Reassembler::new(100);
        let frag =
            |stream, text: &'static [u8], t| Fragment { time_ns: Some(t), stream, text, partial: true };
        // stderr's piece comes first in the file, though its runtime time is later.
        assert_eq!(reasm.push(frag(Stream::Stderr, b"first", 20), at(10)), None);
        assert_eq!(reasm.push(frag(Stream::Stdout, b"second", 10), at(50)), None);
        assert_eq!(reasm.oldest_start(), Some(at(10)));
        let mut out = Vec::new();
        reasm.flush(|r| out.push((r.stream, r.offset, r.text.into_owned())));
        assert_eq!(
            out,
            vec![(Stream::Stderr, 10, b"first".to_vec()), (Stream::Stdout, 50, b"second".to_vec())]
        );
        assert_eq!(reasm.pending_bytes(), 0);
        reasm.flush(|_| panic!("nothing left"));
    }

    /// (offset, stream, text, point key) of a record.
    type Decoded = (u64, Stream, Vec<u8>, i64);

    /// Every record of `input` from `resume` on, stamped with the runtime time as the compat
    /// points are.
    fn decode_all(input: &[u8], resume: Resume, chunk: usize) -> (Vec<Decoded>, Resume) {
        let mut d = FileDecoder::new(None, 1 << 20, resume);
        let mut out = Vec::new();
        for piece in input[resume.offset as usize..].chunks(chunk.max(1)) {
            d.push(piece, |r, keys| {
                let key = keys.stamp(r.time_ns.expect("wrapped"));
                out.push((r.offset, r.stream, r.text.into_owned(), key));
            });
        }
        (out, d.resume())
    }

    /// A Docker file with a record split in three pieces, stderr lines between the pieces, and
    /// runtime times that repeat (so the key guard has work to do).
    fn split_record_file() -> Vec<u8> {
        let t = "2016-10-20T18:39:20.000000001Z";
        let mut file = Vec::new();
        for (log, stream) in [
            ("before\n", "stdout"),
            ("piece one ", "stdout"),
            ("err a\n", "stderr"),
            ("piece two ", "stdout"),
            ("err b\n", "stderr"),
            ("piece three\n", "stdout"),
            ("after\n", "stderr"),
            ("last\n", "stdout"),
        ] {
            file.extend_from_slice(&docker_line(log, stream, t));
            file.push(b'\n');
        }
        file
    }

    #[test]
    fn resuming_from_the_resume_point_gives_the_same_records_and_keys() {
        let file = split_record_file();
        let (whole, end) = decode_all(&file, Resume::default(), file.len());
        assert_eq!(end.offset, file.len() as u64);
        let texts: Vec<&[u8]> = whole.iter().map(|r| &r.2[..]).collect();
        assert_eq!(
            texts,
            [&b"before"[..], b"err a", b"err b", b"piece one piece two piece three", b"after", b"last"]
        );
        // One runtime time for all: the guard makes every key unique and increasing.
        let keys: Vec<i64> = whole.iter().map(|r| r.3).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        // Cut the file anywhere (a crash after reading that far), restart from the resume
        // point: nothing is lost, and what is read twice gets the same keys.
        for cut in 0..=file.len() {
            let (before, resume) = decode_all(&file[..cut], Resume::default(), 7);
            assert!(resume.offset <= cut as u64);
            let (after, _) = decode_all(&file, resume, 13);
            let kept: Vec<_> = before.iter().filter(|r| r.0 < resume.offset).cloned().collect();
            let again: Vec<_> = before.iter().filter(|r| r.0 >= resume.offset).collect();
            assert_eq!([kept, after.clone()].concat(), whole, "cut at {cut}");
            for r in again {
                assert!(after.contains(r), "cut at {cut}: {r:?} read again with another key");
            }
        }
    }

    #[test]
    fn a_split_record_holds_the_resume_point_until_its_last_piece() {
        let file = split_record_file();
        let line_starts: Vec<u64> = std::iter::once(0)
            .chain(file.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i as u64 + 1))
            .collect();
        let mut d = FileDecoder::new(Some(Wrapping::Docker), 1 << 20, Resume::default());
        let mut resumes = Vec::new();
        for w in line_starts.windows(2) {
            d.push(&file[w[0] as usize..w[1] as usize], |_, _| {});
            resumes.push(d.resume().offset);
        }
        // After each line: the piece-one line (index 1) holds it through the third piece.
        let s = &line_starts;
        assert_eq!(resumes, [s[1], s[1], s[1], s[1], s[1], s[6], s[7], s[8]]);
    }

    #[test]
    fn a_line_between_the_pieces_of_a_split_one_is_ahead_of_the_resume_point() {
        let cri =
            |stream: &str, tag: &str, text: &str| format!("2016-10-06T00:17:09Z {stream} {tag} {text}\n");
        let mut d = FileDecoder::new(Some(Wrapping::Cri), 1 << 20, Resume::default());
        let mut ahead = Vec::new();
        for line in [
            cri("stdout", "F", "whole"),
            cri("stdout", "P", "first piece"),
            cri("stdout", "P", "second piece"),
            cri("stderr", "F", "between the pieces"),
            cri("stdout", "F", "last piece"),
        ] {
            d.push(line.as_bytes(), |_, _| {});
            ahead.push(d.ahead_of_resume());
        }
        // Only the stderr line, handed over while the stdout line holds the resume point.
        assert_eq!(ahead, [false, false, false, true, false]);
    }

    #[test]
    fn raw_lines_and_an_unterminated_last_line() {
        let mut d = FileDecoder::new(None, 1024, Resume { offset: 100, keys: KeyGuard::default() });
        let mut out = Vec::new();
        d.push(b"a line\npartial", |r, _| out.push((r.offset, r.text.into_owned(), r.time_ns)));
        assert_eq!(out, [(100, b"a line".to_vec(), None)]);
        assert_eq!(d.resume().offset, 107, "the partial line is read again after a restart");
        d.finish(|r, _| out.push((r.offset, r.text.into_owned(), r.time_ns)));
        assert_eq!(out[1], (107, b"partial".to_vec(), None));
        assert_eq!(d.resume().offset, 114);
    }

    #[test]
    fn undecodable_lines_are_counted_and_skipped() {
        let mut d = FileDecoder::new(Some(Wrapping::Cri), 1024, Resume::default());
        let mut out = Vec::new();
        d.push(b"2016-10-06T00:17:09Z stdout F ok\nnot cri\n2016-10-06T00:17:09Z stdin F x\n", |r, _| {
            out.push(r.text.into_owned())
        });
        assert_eq!(out, [b"ok".to_vec()]);
        let c = d.counts();
        let reasons: Vec<_> = c.undecodable_by_reason().collect();
        assert_eq!(reasons, [("bad_time", 1), ("bad_stream", 1)]);
    }

    proptest! {
        #[test]
        fn cri_pieces_reassemble(
            text in proptest::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
            other_stream in proptest::collection::vec(any::<bool>(), 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            cuts.push(text.len());
            let mut lines = Vec::new();
            let mut from = 0;
            for (i, &cut) in cuts.iter().enumerate() {
                let tag = if i + 1 == cuts.len() { "F" } else { "P" };
                let mut line = format!("2016-10-06T00:17:09.{i}Z stdout {tag} ").into_bytes();
                line.extend_from_slice(&text[from..cut]);
                lines.push(line);
                // Whole stderr lines interleaved between the pieces must not disturb them.
                if other_stream.get(i).copied().unwrap_or(false) {
                    lines.push(b"2016-10-06T00:17:10Z stderr F noise".to_vec());
                }
                from = cut;
            }
            let mut reasm = Reassembler::new(1024);
            let mut out = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                let frag = decode_cri(line).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if let Some(rec) = reasm.push(frag, at(i as u64)) {
                    if rec.stream == Stream::Stdout {
                        out.push(rec.into_owned());
                    }
                }
            }
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0].text[..], &text[..]);
            prop_assert_eq!(out[0].time_ns, Some(1_475_713_029 * NS));
            prop_assert_eq!(out[0].offset, 0);
            prop_assert_eq!(reasm.pending_bytes(), 0);
        }
    }
}

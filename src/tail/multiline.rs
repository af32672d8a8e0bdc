//! Multiline merging: the lines of one logical record (a stack trace) joined into one record.
//! Pure: the caller passes the clock in.
//!
//! A container configured with a start-of-record regex has its records held: a line that
//! matches begins a new record; a line that does not is appended to the record held on its
//! stream, after a `\n`. A held record is emitted when the next start line of its stream
//! arrives, when it has been held `timeout` (counted from its first line, so a container whose
//! lines never match still emits every `timeout` and its checkpoint moves on), or at the end of
//! a finished file. Each stream has its own record (per file, per stream), as stdout and stderr
//! interleave in one file. A record is capped at `max_bytes` (the agent's `max_line_bytes`): the
//! excess is dropped, and the record marked truncated and counted, as an over-long line is.
//!
//! **Checkpoints.** Held records are not yet delivered, so a restart must read them again:
//! [`Merger::oldest_start`] is the start of the oldest held record with the key state there,
//! and [`resume`] combines it with the decoder's own [`Resume`]. The caller passes each
//! record's key state in with it, as the decoder's reassembler takes it; merged records carry
//! no point keys of their own (they go to the `logs` topic as JSON), so a file whose lines
//! become points is not merged.
//!
//! The agent's sink (`agent::ship`) runs a merger per file and reports what it holds to the
//! engine ([`RecordSink::held`](super::RecordSink::held)): the engine's marks stop at the held
//! record's start, and it calls the sink again at [`Merger::next_deadline`] when the file goes
//! quiet, and at the end of a file ([`RecordSink::ending`](super::RecordSink::ending)).
//!
//! After a restart, lines are read again from that point: a held record is merged again, whole;
//! continuation lines of the other stream whose record was delivered before the crash come
//! again as a record of their own (at least once, never lost). A record emitted by timeout may
//! be grouped differently after a restart (the rest of its lines then arrive at once).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::container::Stream;
use super::decoder::{Record, Resume};
use super::lines::KEEP_BUFFER_BYTES;
use crate::access::KeyGuard;

/// A validated `[[multiline]]` rule.
#[derive(Debug, Clone)]
pub struct MultilineRule {
    /// Container names it applies to (unanchored).
    pub(crate) containers: regex::Regex,
    pub(crate) start: Regex,
    pub(crate) timeout: Duration,
}

impl MultilineRule {
    /// The first rule that applies to the container.
    pub fn for_container<'r>(rules: &'r [MultilineRule], container: &str) -> Option<&'r MultilineRule> {
        rules.iter().find(|r| r.containers.is_match(container))
    }

    /// A merger for one file of the container, records capped at `max_bytes` (the agent's
    /// `max_line_bytes`).
    pub(crate) fn merger(&self, max_bytes: usize) -> Merger {
        Merger::new(self.start.clone(), self.timeout, max_bytes)
    }
}

/// Records merged and cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MergeCounts {
    /// Records emitted.
    pub(crate) records: u64,
    /// Lines appended to a record that began on an earlier line.
    pub(crate) lines_merged: u64,
    /// Records cut at `max_bytes` by merging (records already cut by the decoder are counted
    /// there).
    pub(crate) truncated: u64,
}

/// One file's merger. Feed it the file's records in order.
#[derive(Debug)]
pub(crate) struct Merger {
    start: Regex,
    timeout: Duration,
    max_bytes: usize,
    held: [Held; 2],
    counts: MergeCounts,
}

#[derive(Debug, Default)]
struct Held {
    text: Vec<u8>,
    time_ns: Option<i64>,
    /// Where the first line began and the key state there; `Some` while a record is held.
    start: Option<Resume>,
    arrived: Option<Instant>,
    /// Some line was cut already (by the decoder), or merging cut the record.
    truncated: bool,
    /// Merging cut the record.
    cut_here: bool,
}

impl Merger {
    pub(crate) fn new(start: Regex, timeout: Duration, max_bytes: usize) -> Self {
        Self { start, timeout, max_bytes, held: Default::default(), counts: MergeCounts::default() }
    }

    /// Takes the file's next record, whose key state at its start is `keys`, at `now`, and
    /// emits the records it completes (its stream's held record when it is a start line, or
    /// when that record's time was up).
    pub(crate) fn push(
        &mut self,
        record: Record<'_>,
        keys: KeyGuard,
        now: Instant,
        mut out: impl FnMut(Record<'_>),
    ) {
        let i = record.stream.index();
        let expired = self.held[i].arrived.is_some_and(|at| now >= at + self.timeout);
        let starts = self.held[i].start.is_none() || expired || self.start.is_match(&record.text);
        if starts {
            self.emit(i, &mut out);
            let held = &mut self.held[i];
            held.start = Some(Resume { offset: record.offset, keys });
            held.time_ns = record.time_ns;
            held.arrived = Some(now);
            held.truncated = record.truncated;
            held.cut_here = false;
            Self::append(held, &record.text, self.max_bytes);
        } else {
            let held = &mut self.held[i];
            self.counts.lines_merged += 1;
            held.truncated |= record.truncated;
            Self::append(held, b"\n", self.max_bytes);
            Self::append(held, &record.text, self.max_bytes);
        }
    }

    /// Emits the records held `timeout` or longer at `now`, in file order.
    pub(crate) fn flush_expired(&mut self, now: Instant, mut out: impl FnMut(Record<'_>)) {
        for i in self.file_order() {
            if self.held[i].arrived.is_some_and(|at| now >= at + self.timeout) {
                self.emit(i, &mut out);
            }
        }
    }

    /// Emits every held record, in file order: the end of a finished file (replay, a rotated
    /// file read to its end), or of a container.
    pub(crate) fn flush(&mut self, mut out: impl FnMut(Record<'_>)) {
        for i in self.file_order() {
            self.emit(i, &mut out);
        }
    }

    /// When [`flush_expired`](Self::flush_expired) next has something to emit.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().filter_map(|h| h.arrived).min().map(|at| at + self.timeout)
    }

    /// The start of the oldest held record, with the key state there.
    pub(crate) fn oldest_start(&self) -> Option<Resume> {
        self.held.iter().filter_map(|h| h.start).min_by_key(|s| s.offset)
    }

    pub(crate) fn counts(&self) -> MergeCounts {
        self.counts
    }

    /// Held streams, oldest first.
    fn file_order(&self) -> [usize; 2] {
        match (self.held[0].start, self.held[1].start) {
            (Some(out), Some(err)) if err.offset < out.offset => [1, 0],
            _ => [0, 1],
        }
    }

    fn append(held: &mut Held, bytes: &[u8], max: usize) {
        let room = max.saturating_sub(held.text.len());
        if bytes.len() > room {
            held.truncated = true;
            held.cut_here = true;
        }
        held.text.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, i: usize, out: &mut impl FnMut(Record<'_>)) {
        let held = &mut self.held[i];
        let Some(start) = held.start.take() else { return };
        self.counts.records += 1;
        self.counts.truncated += u64::from(held.cut_here);
        out(Record {
            time_ns: held.time_ns.take(),
            stream: if i == 0 { Stream::Stdout } else { Stream::Stderr },
            text: Cow::Borrowed(&held.text),
            truncated: held.truncated,
            offset: start.offset,
        });
        held.arrived = None;
        held.text.clear();
        // One huge stack trace must not pin `max_bytes` per stream for good.
        if held.text.capacity() > KEEP_BUFFER_BYTES {
            held.text = Vec::new();
        }
    }
}

/// Where a file with a merger may be read again from: the older of the decoder's resume point
/// and the merger's oldest held record.
pub(crate) fn resume(decoder: Resume, merger: &Merger) -> Resume {
    match merger.oldest_start() {
        Some(held) if held.offset < decoder.offset => held,
        _ => decoder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::container::Wrapping;
    use crate::tail::decoder::FileDecoder;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);
    /// Lines of a Java application: each record starts with a date.
    const START: &str = r"^\d{4}-\d{2}-\d{2} ";

    fn merger(max_bytes: usize) -> Merger {
        let rule = MultilineRule {
            containers: regex::Regex::new("java").unwrap(),
            start: Regex::new(START).unwrap(),
            timeout: 2 * SECOND,
        };
        rule.merger(max_bytes)
    }

    fn rec(stream: Stream, text: &str, offset: u64) -> Record<'_> {
        Record {
            time_ns: Some(offset as i64 * 1000),
            stream,
            text: Cow::Borrowed(text.as_bytes()),
            truncated: false,
            offset,
        }
    }

    type Out = Vec<(Stream, u64, String, bool)>;

    fn collect(out: &mut Out) -> impl FnMut(Record<'_>) + '_ {
        |r| out.push((r.stream, r.offset, String::from_utf8_lossy(&r.text).into_owned(), r.truncated))
    }

    #[test]
    fn a_stack_trace_is_one_record() {
        let t = Instant::now();
        let mut m = merger(1 << 20);
        let mut out = Out::new();
        let lines = [
            "2024-01-01 12:00:00 ERROR request failed",
            "java.lang.IllegalStateException: boom",
            "\tat com.example.Foo.bar(Foo.java:42)",
            "",
            "\tat com.example.Main.main(Main.java:7)",
            "2024-01-01 12:00:01 INFO next request",
        ];
        let mut offset = 0;
        for line in lines {
            m.push(rec(Stream::Stdout, line, offset), KeyGuard::default(), t, collect(&mut out));
            offset += line.len() as u64 + 1;
        }
        assert_eq!(
            out,
            [(
                Stream::Stdout,
                0,
                "2024-01-01 12:00:00 ERROR request failed\njava.lang.IllegalStateException: boom\n\
                 \tat com.example.Foo.bar(Foo.java:42)\n\n\tat com.example.Main.main(Main.java:7)"
                    .to_owned(),
                false
            )]
        );
        // The next record is held, from its own first byte.
        let next_offset = offset - lines[5].len() as u64 - 1;
        assert_eq!(m.oldest_start().map(|r| r.offset), Some(next_offset));
        m.flush(collect(&mut out));
        assert_eq!(out[1], (Stream::Stdout, next_offset, lines[5].to_owned(), false));
        assert_eq!(m.oldest_start(), None);
        assert_eq!(m.counts(), MergeCounts { records: 2, lines_merged: 4, truncated: 0 });
    }

    #[test]
    fn records_keep_their_first_lines_time() {
        let t = Instant::now();
        let mut m = merger(1 << 20);
        let mut times = Vec::new();
        for (i, line) in ["2024-01-01 a", "b", "2024-01-01 c"].iter().enumerate() {
            m.push(rec(Stream::Stdout, line, 10 * i as u64), KeyGuard::default(), t, |r| {
                times.push(r.time_ns)
            });
        }
        assert_eq!(times, [Some(0)]);
    }

    #[test]
    fn a_held_record_is_emitted_at_its_timeout() {
        let t = Instant::now();
        let mut m = merger(1 << 20);
        let mut out = Out::new();
        m.push(rec(Stream::Stdout, "2024-01-01 start", 0), KeyGuard::default(), t, collect(&mut out));
        m.push(rec(Stream::Stdout, "more", 17), KeyGuard::default(), t + SECOND, collect(&mut out));
        // Counted from the first line, not the last.
        assert_eq!(m.next_deadline(), Some(t + 2 * SECOND));
        m.flush_expired(t + 2 * SECOND - Duration::from_millis(1), collect(&mut out));
        assert!(out.is_empty());
        m.flush_expired(t + 2 * SECOND, collect(&mut out));
        assert_eq!(out, [(Stream::Stdout, 0, "2024-01-01 start\nmore".to_owned(), false)]);
        assert_eq!((m.next_deadline(), m.oldest_start()), (None, None));
        // A continuation line after the timeout starts a record of its own.
        m.push(rec(Stream::Stdout, "late", 22), KeyGuard::default(), t + 3 * SECOND, collect(&mut out));
        assert_eq!(m.oldest_start().map(|r| r.offset), Some(22));
        // Pushing past a held record's timeout emits it even if flush_expired was not called.
        m.push(
            rec(Stream::Stdout, "still no date", 27),
            KeyGuard::default(),
            t + 5 * SECOND,
            collect(&mut out),
        );
        assert_eq!(out[1], (Stream::Stdout, 22, "late".to_owned(), false));
        assert_eq!(m.oldest_start().map(|r| r.offset), Some(27));
    }

    #[test]
    fn streams_merge_separately() {
        let t = Instant::now();
        let mut m = merger(1 << 20);
        let mut out = Out::new();
        let lines = [
            (Stream::Stdout, "2024-01-01 out one"),
            (Stream::Stderr, "2024-01-01 err one"),
            (Stream::Stdout, "out cont"),
            (Stream::Stderr, "err cont"),
            (Stream::Stderr, "2024-01-01 err two"),
            (Stream::Stdout, "out cont 2"),
        ];
        for (i, (stream, line)) in lines.into_iter().enumerate() {
            m.push(rec(stream, line, 100 * i as u64), KeyGuard::default(), t, collect(&mut out));
        }
        assert_eq!(out, [(Stream::Stderr, 100, "2024-01-01 err one\nerr cont".to_owned(), false)]);
        // stdout's record (from 0) is older than stderr's (from 400): it holds the resume point.
        assert_eq!(m.oldest_start().map(|r| r.offset), Some(0));
        m.flush(collect(&mut out));
        assert_eq!(out[1], (Stream::Stdout, 0, "2024-01-01 out one\nout cont\nout cont 2".to_owned(), false));
        assert_eq!(out[2], (Stream::Stderr, 400, "2024-01-01 err two".to_owned(), false));
    }

    #[test]
    fn merged_records_are_capped() {
        let t = Instant::now();
        let mut m = merger(20);
        let mut out = Out::new();
        for (i, line) in ["2024-01-01 abcdef", "ghij", "klm", "2024-01-01 ok"].iter().enumerate() {
            m.push(rec(Stream::Stdout, line, i as u64 * 20), KeyGuard::default(), t, collect(&mut out));
        }
        // 17 bytes, then "\n" and 2 of "ghij": 20; the rest is dropped.
        assert_eq!(out, [(Stream::Stdout, 0, "2024-01-01 abcdef\ngh".to_owned(), true)]);
        m.flush(collect(&mut out));
        assert_eq!(out[1], (Stream::Stdout, 60, "2024-01-01 ok".to_owned(), false));
        assert_eq!(m.counts().truncated, 1, "one record cut, counted once");
        // A line the decoder already cut marks the record, without counting it again here.
        let mut cut = rec(Stream::Stdout, "x", 100);
        cut.truncated = true;
        m.push(rec(Stream::Stdout, "2024-01-01 y", 80), KeyGuard::default(), t, |_| {});
        m.push(cut, KeyGuard::default(), t, |_| {});
        m.flush(collect(&mut out));
        assert_eq!(out[2], (Stream::Stdout, 80, "2024-01-01 y\nx".to_owned(), true));
        assert_eq!(m.counts().truncated, 1);
    }

    #[test]
    fn the_resume_point_is_the_older_of_decoder_and_merger() {
        let t = Instant::now();
        let keys = KeyGuard::after(Some(7));
        let mut m = merger(1 << 20);
        let decoder = Resume { offset: 500, keys: KeyGuard::default() };
        assert_eq!(resume(decoder, &m), decoder);
        m.push(rec(Stream::Stderr, "2024-01-01 x", 300), keys, t, |_| {});
        assert_eq!(resume(decoder, &m), Resume { offset: 300, keys });
        let older = Resume { offset: 200, keys: KeyGuard::default() };
        assert_eq!(resume(older, &m), older);
    }

    /// Records of a file, merged: `(offset, stream, text)`.
    type Merged = Vec<(u64, Stream, Vec<u8>)>;

    /// Decodes and merges `file` from `from` on in `chunk`-byte reads, with no timeouts; the
    /// end of the input is not the end of the file (nothing flushed) unless `finish`.
    fn run(file: &[u8], from: Resume, chunk: usize, finish: bool) -> (Merged, Resume) {
        let t = Instant::now();
        let mut d = FileDecoder::new(Some(Wrapping::Cri), 1 << 20, from);
        let mut m = merger(1 << 20);
        let mut out = Merged::new();
        let mut emit = |r: Record<'_>| out.push((r.offset, r.stream, r.text.into_owned()));
        for piece in file[from.offset as usize..].chunks(chunk.max(1)) {
            d.push(piece, |r, keys| m.push(r, *keys, t, &mut emit));
        }
        if finish {
            d.finish(|r, keys| m.push(r, *keys, t, &mut emit));
            m.flush(&mut emit);
        }
        let at = resume(d.resume(), &m);
        (out, at)
    }

    /// A CRI file: records of one to three lines per stream, interleaved, with partials.
    fn cri_file(spec: &[(bool, bool, bool)]) -> Vec<u8> {
        let mut file = Vec::new();
        for (i, &(stderr, starts, partial)) in spec.iter().enumerate() {
            let stream = if stderr { "stderr" } else { "stdout" };
            let text = if starts { format!("2024-01-01 record {i}") } else { format!("  continued {i}") };
            if partial {
                let (a, b) = text.split_at(text.len() / 2);
                file.extend_from_slice(format!("2016-10-06T00:17:09Z {stream} P {a}\n").as_bytes());
                file.extend_from_slice(format!("2016-10-06T00:17:09Z {stream} F {b}\n").as_bytes());
            } else {
                file.extend_from_slice(format!("2016-10-06T00:17:09Z {stream} F {text}\n").as_bytes());
            }
        }
        file
    }

    proptest! {
        /// Cut the file anywhere (a crash after reading that far), restart from the resume
        /// point: every record arrives whole, before the crash or after the restart. What is
        /// read again is either a record again, identical, or continuation lines of the other
        /// stream whose record was delivered before the crash, now as a record of their own.
        #[test]
        fn resuming_loses_no_line(
            spec in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 1..12),
            chunk in 1usize..64,
            cut_at in 0.0f64..1.0,
        ) {
            let file = cri_file(&spec);
            let (whole, _) = run(&file, Resume::default(), file.len(), true);
            let cut = (file.len() as f64 * cut_at) as usize;
            let (before, at) = run(&file[..cut], Resume::default(), chunk, false);
            prop_assert!(at.offset <= cut as u64);
            let (after, _) = run(&file, at, chunk, true);
            let kept: Merged = before.iter().filter(|r| r.0 < at.offset).cloned().collect();
            for r in &whole {
                let delivered = if r.0 < at.offset { &kept } else { &after };
                prop_assert!(delivered.contains(r), "{:?} lost (resume at {})", r, at.offset);
            }
            for r in &before {
                prop_assert!(whole.contains(r), "{:?} delivered before the crash is not whole", r);
            }
            let start = Regex::new(START).unwrap();
            for r in after.iter().filter(|r| !whole.contains(r)) {
                let again = before.iter().any(|b| b.0 < r.0 && b.1 == r.1 && b.2.ends_with(&r.2));
                prop_assert!(r.0 >= at.offset && !start.is_match(&r.2) && again, "{:?} is new", r);
            }
        }
    }
}

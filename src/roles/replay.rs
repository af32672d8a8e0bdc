//! `logmill replay FILE…`: push finished log files through the same per-line path as the agent
//! (no tailing: each file is read once to its end), and write both point families.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::access::KeyGuard;
use crate::agent::classify::Classifier;
use crate::agent::sink::{AgentSink, SinkSettings};
use crate::agent::source::{DeclaredSource, Sources};
use crate::config::Settings;
use crate::glob::Glob;
use crate::influx::writer::{InfluxSettings, InfluxWriter};
use crate::kube::ContainerRef;
use crate::nsq::producer::Producer;
use crate::output::{DeliverySummary, Output, OutputError};
use crate::pipeline::{LineCounts, LineParser, LineProcessor};
use crate::shutdown::Shutdown;
use crate::tail::container::Wrapping;
use crate::tail::decoder::{DecodeCounts, FileDecoder, Record, Resume};
use crate::tail::{FileId, RecordSink};
use crate::telemetry::Telemetry;

/// Read size: large enough that a read costs little per line, small enough to stay in cache.
const CHUNK_BYTES: usize = 256 * 1024;
/// Output is submitted in pieces of about this size.
const FLUSH_BYTES: usize = 1 << 20;

/// How the lines of the files are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatChoice {
    /// Decide per file from its first line.
    Auto,
    /// Plain lines, as nginx writes them.
    Raw,
    /// Docker json-file (`{"log":…,"stream":…,"time":…}`).
    Docker,
    /// CRI (`<time> <stream> <P|F> <line>`).
    Cri,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub files: Vec<PathBuf>,
    pub format: FormatChoice,
    /// The definition in `parsers/` to parse lines with.
    pub parser: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("no parser definition named `{0}` (see `logmill parsers`)")]
    UnknownParser(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Where `replay` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Destination {
    /// Line protocol on stdout.
    Stdout,
    /// InfluxDB, with the `[influx]` settings.
    Influx,
}

impl Destination {
    /// The writer's settings when the destination is InfluxDB; an error naming the flags when
    /// no URL was given.
    pub(crate) fn influx(self, settings: &Settings) -> anyhow::Result<Option<InfluxSettings>> {
        match self {
            Destination::Stdout => Ok(None),
            Destination::Influx => settings.influx.clone().map(Some).context(
                "--output influx needs an InfluxDB URL (--influx-url, influx.urls or $INFLUXDB_URLS)",
            ),
        }
    }
}

/// Where `replay` writes: [`Destination`]s, or NSQ as the agent would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayOutput {
    /// Line protocol on stdout.
    Stdout,
    /// InfluxDB, with the `[influx]` settings.
    Influx,
    /// NSQ topics `logs` and `metrics` (`[nsq]`, --nsqd), through the agent's classification
    /// and publishing.
    Nsq,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    pub counts: LineCounts,
    /// Container-log lines that could not be decoded, by reason.
    pub undecodable: Vec<(&'static str, u64)>,
    pub(crate) truncated: u64,
    pub(crate) evictions: u64,
    pub(crate) late_lines: u64,
    pub(crate) elapsed: Duration,
    pub(crate) interrupted: bool,
}

impl ReplaySummary {
    /// The human summary printed to stderr.
    pub(crate) fn render(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.counts;
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { c.lines as f64 / secs } else { 0.0 };
        let _ = writeln!(
            s,
            "logmill replay: {} file(s), {} bytes, {} lines in {:.3} s ({:.0} lines/s){}",
            self.files,
            self.bytes,
            c.lines,
            secs,
            rate,
            if self.interrupted { ", INTERRUPTED" } else { "" }
        );
        let _ = writeln!(s, "  access lines      {}", c.access);
        let _ = writeln!(s, "  other lines       {}", c.other);
        let _ = write!(s, "  rejected          {}", c.rejected_total());
        let reasons: Vec<String> = crate::access::Reject::ALL
            .iter()
            .filter(|r| c.rejected(**r) > 0)
            .map(|r| format!("{} {}", r.as_str(), c.rejected(*r)))
            .collect();
        if !reasons.is_empty() {
            let _ = write!(s, " ({})", reasons.join(", "));
        }
        s.push('\n');
        let undecodable: u64 = self.undecodable.iter().map(|(_, n)| n).sum();
        if undecodable > 0 {
            let reasons: Vec<String> = self.undecodable.iter().map(|(e, n)| format!("{e}: {n}")).collect();
            let _ = writeln!(s, "  undecodable       {undecodable} ({})", reasons.join(", "));
        }
        if self.truncated > 0 {
            let _ = writeln!(s, "  truncated lines   {}", self.truncated);
        }
        let _ = writeln!(s, "  compat points     {}", c.compat_points);
        let _ = writeln!(s, "  router_requests   {} points", c.aggregate_points);
        if c.encode_errors > 0 {
            let _ = writeln!(s, "  encode errors     {}", c.encode_errors);
        }
        let _ = writeln!(s, "  series evicted    {}", self.evictions);
        let _ = writeln!(s, "  late lines        {}", self.late_lines);
        s
    }
}

/// An `emit` for [`replay`] that appends the line protocol to `out` (tests, benchmarks).
pub fn collect(out: &mut Vec<u8>) -> impl FnMut(Bytes, usize) -> Result<(), OutputError> + '_ {
    |body, _| {
        out.extend_from_slice(&body);
        Ok(())
    }
}

/// The points written since the last call (compat and aggregated alike).
fn take_points(processor: &LineProcessor, emitted: &mut u64) -> usize {
    let c = processor.counts();
    let total = c.compat_points + c.aggregate_points;
    let new = total - *emitted;
    *emitted = total;
    new as usize
}

fn process(processor: &mut LineProcessor, record: Record<'_>, keys: &mut KeyGuard, out: &mut BytesMut) {
    processor.process(&record.text, record.truncated, record.origin(), keys, out);
}

/// Replays the files in order through one processor (one router's logs: a file and its
/// rotations, oldest first) and writes line protocol to `out`.
///
/// Line protocol is handed to `emit` in pieces of about a mebibyte, with the number of points
/// in each.
pub fn replay(
    settings: &Settings,
    options: &ReplayOptions,
    cancel: &CancellationToken,
    mut emit: impl FnMut(Bytes, usize) -> Result<(), OutputError>,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let definition = settings
        .parsers
        .get(&options.parser)
        .ok_or_else(|| ReplayError::UnknownParser(options.parser.clone()))?;
    let mut processor = LineProcessor::new(
        settings.host.clone(),
        LineParser::for_definition(definition),
        settings.aggregate.clone(),
    );
    let mut summary = ReplaySummary::default();
    let mut counts = DecodeCounts::default();
    let mut buf = BytesMut::with_capacity(FLUSH_BYTES + CHUNK_BYTES);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    // Points handed to `emit` so far.
    let mut emitted = 0;
    let wrapping = match options.format {
        FormatChoice::Auto => None,
        FormatChoice::Raw => Some(Wrapping::Raw),
        FormatChoice::Docker => Some(Wrapping::Docker),
        FormatChoice::Cri => Some(Wrapping::Cri),
    };
    // One router's files: offsets run on across them, so that lines of two raw files never
    // share a key (see `LineOrigin::point_timestamp`), and so do the keys.
    let mut resume = Resume::default();

    'files: for path in &options.files {
        let shown = path.display().to_string();
        let read_err = |source| ReplayError::Read { path: shown.clone(), source };
        let mut file = File::open(path).map_err(read_err)?;
        summary.files += 1;
        let mut decoder = FileDecoder::new(wrapping, settings.max_line_bytes, resume);
        loop {
            if cancel.is_cancelled() {
                summary.interrupted = true;
                counts.add(&decoder.counts());
                break 'files;
            }
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            summary.bytes += n as u64;
            decoder.push(&chunk[..n], |r, keys| process(&mut processor, r, keys, &mut buf));
            if buf.len() >= FLUSH_BYTES {
                let points = take_points(&processor, &mut emitted);
                emit(buf.split().freeze(), points)?;
            }
        }
        decoder.finish(|r, keys| process(&mut processor, r, keys, &mut buf));
        counts.add(&decoder.counts());
        resume = decoder.resume();
    }
    // Interrupted or not, what was read is flushed: a window is never left unwritten.
    processor.finish(&mut buf);
    if !buf.is_empty() {
        let points = take_points(&processor, &mut emitted);
        emit(buf.split().freeze(), points)?;
    }

    let stats = processor.aggregate_stats();
    summary.counts = processor.counts();
    summary.undecodable = counts.undecodable_by_reason().collect();
    summary.truncated = counts.truncated;
    summary.evictions = stats.evictions;
    summary.late_lines = stats.late_lines;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// `logmill replay`: replays the files to `destination`, prints the summary to stderr and
/// answers the exit code (130 when interrupted, 1 when InfluxDB did not take every point).
pub fn run(settings: Settings, options: ReplayOptions, destination: Destination) -> anyhow::Result<ExitCode> {
    let influx = destination.influx(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    let (summary, delivery) = runtime.block_on(async {
        shutdown.cancel_on_signals();
        let output = match influx {
            None => Output::Stdout,
            Some(influx) => Output::Influx(InfluxWriter::start(
                influx,
                &Telemetry::default(),
                &shutdown.tracker,
                shutdown.token.clone(),
            )?),
        };
        let cancel = shutdown.token.clone();
        let runtime = tokio::runtime::Handle::current();
        // Reading is blocking file I/O, on its own thread; the runtime meanwhile watches for
        // signals and runs the InfluxDB writer.
        let reading = tokio::task::spawn_blocking(move || {
            let mut pending = Vec::new();
            let summary = replay(&settings, &options, &cancel, |body, points| {
                pending.push((points as u64, runtime.block_on(output.submit(body, points))?));
                Ok(())
            });
            // The output is dropped here, so the writer task ends once it has answered all.
            summary.map(|summary| (summary, pending))
        });
        let (summary, pending) = reading.await??;
        let mut delivery = DeliverySummary::default();
        for (points, outcome) in pending {
            delivery.add(points, &outcome.await);
        }
        shutdown.token.cancel();
        shutdown.drain(Duration::from_secs(5)).await;
        anyhow::Ok((summary, delivery))
    })?;
    eprint!("{}", summary.render());
    if destination == Destination::Influx {
        eprint!("{}", delivery.render("influx"));
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if !delivery.complete() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The container `replay --output nsq` ships files as, from `--namespace`, `--pod` and
/// `--container`; without them, each file's name says (kubelet's layout).
#[derive(Debug, Clone, Default)]
pub struct AsContainer {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
}

/// `logmill replay --output nsq`: the files through the agent's classification and
/// publishing (its [`AgentSink`]) as if they were containers' logs, to `nsq.nsqd_tcp_addresses`;
/// ends once nsqd acknowledged every message (exit 1 if some were refused or not answered).
pub fn to_nsq(
    settings: Settings,
    options: ReplayOptions,
    as_container: AsContainer,
) -> anyhow::Result<ExitCode> {
    let sources = match as_container {
        AsContainer { namespace: None, pod: None, container: None } => Sources::default(),
        AsContainer { namespace: Some(namespace), pod: Some(pod), container: Some(container) } => {
            let container = ContainerRef {
                pod,
                namespace,
                container,
                container_id: String::new(),
                pod_uid: None,
                cut: false,
            };
            let path = Glob::new("*").context("the match-all pattern")?;
            Sources { declared: vec![DeclaredSource { path, container }] }
        }
        _ => anyhow::bail!("--namespace, --pod and --container go together"),
    };
    let wrapping = match options.format {
        FormatChoice::Auto => None,
        FormatChoice::Raw => Some(Wrapping::Raw),
        FormatChoice::Docker => Some(Wrapping::Docker),
        FormatChoice::Cri => Some(Wrapping::Cri),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    let telemetry = Telemetry::default();
    let started = Instant::now();
    let (bytes, unanswered, interrupted) = runtime.block_on(async {
        shutdown.cancel_on_signals();
        let stop_publishing = CancellationToken::new();
        let producer = Producer::start(
            settings.nsq.producer.clone(),
            &telemetry,
            &shutdown.tracker,
            stop_publishing.clone(),
        );
        let agent = &settings.agent;
        let sink_settings = SinkSettings::new(&settings);
        let classifier = Classifier::new(settings.parsers.clone(), agent.drop_other);
        let (mut sink, acknowledger) =
            AgentSink::new(sink_settings, classifier, None, sources, producer, &telemetry);
        let acked = Arc::new(AtomicU64::new(0));
        let counted = acked.clone();
        let acknowledging = tokio::spawn(acknowledger.run(move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        let (mut bytes, mut reads, mut chunk) = (0u64, 0u64, vec![0u8; CHUNK_BYTES]);
        let mut interrupted = false;
        'files: for (n, path) in options.files.iter().enumerate() {
            let file = FileId(n as u64 + 1);
            let mut input = File::open(path).with_context(|| format!("reading {}", path.display()))?;
            sink.opened(file, path);
            let mut decoder = FileDecoder::new(wrapping, settings.tail.max_line_bytes, Resume::default());
            loop {
                if shutdown.token.is_cancelled() {
                    interrupted = true;
                    break 'files;
                }
                let n = match tokio::task::block_in_place(|| input.read(&mut chunk)) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
                };
                bytes += n as u64;
                decoder.push(&chunk[..n], |r, keys| sink.record(file, r, keys));
                sink.flushed(file, decoder.resume()).await;
                reads += 1;
            }
            decoder.finish(|r, keys| sink.record(file, r, keys));
            // The file is complete: merged records still held go with its last read.
            sink.ending(file);
            sink.flushed(file, decoder.resume()).await;
            reads += 1;
            sink.closed(file);
        }
        // The acknowledger ends once every read handed over is answered.
        drop(sink);
        let _ = acknowledging.await;
        stop_publishing.cancel();
        shutdown.token.cancel();
        shutdown.drain(Duration::from_secs(5)).await;
        anyhow::Ok((bytes, reads.saturating_sub(acked.load(Ordering::Relaxed)), interrupted))
    })?;
    let value = |name: &str, labels: &[(&str, &str)]| telemetry.value(name, labels).unwrap_or(0);
    let refused = value("logmill_publish_refused_total", &[]);
    eprintln!(
        "logmill replay: {} file(s), {bytes} bytes in {:.3} s to nsqd {:?}{}",
        options.files.len(),
        started.elapsed().as_secs_f64(),
        settings.nsq.nsqd_tcp_addresses,
        if interrupted { ", INTERRUPTED" } else { "" }
    );
    eprintln!("  records to logs   {}", value("logmill_records_shipped_total", &[]));
    eprintln!("  access lines      {}", value("logmill_access_lines_total", &[]));
    eprintln!("  points to metrics {}", value("logmill_points_shipped_total", &[]));
    eprintln!("  records dropped   {}", value("logmill_records_dropped_total", &[]));
    for r in crate::access::Reject::ALL {
        let n = value("logmill_lines_rejected_total", &[("reason", r.as_str())]);
        if n > 0 {
            eprintln!("  rejected          {n} ({})", r.as_str());
        }
    }
    for topic in ["logs", "metrics"] {
        eprintln!(
            "  messages acknowledged ({topic}) {}",
            value("logmill_messages_published_total", &[("topic", topic)])
        );
    }
    if refused > 0 {
        eprintln!("  messages refused  {refused}");
    }
    if unanswered > 0 {
        eprintln!("  reads unanswered  {unanswered} (nsqd did not acknowledge them in time)");
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else if refused > 0 || unanswered > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

//! `logmill run`: the agent and the consumer's core in one process, an in-memory queue in
//! NSQ's place, line protocol to stdout or InfluxDB. A single machine's mode that tails real
//! files with no server; with `--once`, it stops once every file was read to its end and all
//! of it written.
//!
//! The guarantees are the agent's and the consumer's: a read is acknowledged to the tail
//! engine (its checkpoint may move) only once the core finished every message of it, that is
//! once everything derived from them was written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::agent::{self, serve_telemetry};
use super::replay::Destination;
use crate::config::Settings;
use crate::consume::memory::MemoryQueue;
use crate::consume::{self, DeadLetterSink, OneshotAck};
use crate::influx::writer::InfluxWriter;
use crate::kube::PodMetadata;
use crate::output::Output;
use crate::shutdown::Shutdown;
use crate::tail::TailHandle;
use crate::telemetry::Telemetry;

/// How long the last writes may take after reading stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// How often `--once` looks whether every file is read and acknowledged.
const ONCE_POLL: Duration = Duration::from_millis(200);
/// A file whose last bytes are no whole line yet never acknowledges them: `--once` ends when
/// nothing has moved for this long.
const ONCE_QUIET: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop once every file is read to its end (checkpoints in a temporary directory, so
    /// each run reads the files whole).
    pub once: bool,
    pub output: Destination,
}

/// `logmill run` until SIGTERM (or, with `--once`, the end of the files).
pub fn run(mut settings: Settings, options: RunOptions) -> anyhow::Result<ExitCode> {
    let influx = options.output.influx(&settings)?;
    let scratch = if options.once {
        let dir = std::env::temp_dir().join(format!(
            "logmill-run-{}-{}",
            std::process::id(),
            crate::timefmt::now_ns()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        settings.tail.state_dir = dir.clone();
        Some(Scratch(dir))
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    let summary = runtime.block_on(async {
        shutdown.cancel_on_signals();
        let telemetry = Telemetry::default();
        serve_telemetry(&settings, &telemetry, &shutdown).await;
        // The core and its writer outlive reading: what was read is written before the end.
        let stop_core = CancellationToken::new();
        let output = match influx {
            None => Output::Stdout,
            Some(influx) => {
                Output::Influx(InfluxWriter::start(influx, &telemetry, &shutdown.tracker, stop_core.clone())?)
            }
        };
        let dead_letters = match &settings.consume.dead_letter_file {
            Some(path) => DeadLetterSink::File(path.clone()),
            None => DeadLetterSink::None,
        };
        let mut core_settings = settings.consume.core.clone();
        // As `consume`: a restart never reuses the keys of the run before.
        core_settings.aggregate.sequence_base = crate::timefmt::now_ns().max(0) as u64;
        core_settings.shutdown_grace = DRAIN_GRACE;
        let (core, done) = consume::start::<OneshotAck>(
            core_settings,
            output,
            dead_letters,
            &telemetry,
            &shutdown.tracker,
            stop_core.clone(),
        );
        let pods = match &settings.kubernetes {
            Some(k) => Some(
                PodMetadata::start(k, &telemetry, &shutdown.tracker, shutdown.token.clone())
                    .context("the Kubernetes API client")?,
            ),
            None => None,
        };
        let queue = MemoryQueue::new(core, &settings.nsq.metric_topic);
        let node = agent::start(&settings, queue, pods, &telemetry, &shutdown)?;
        if options.once {
            tokio::spawn(stop_at_the_end(node.tail.clone(), shutdown.token.clone()));
        }
        tracing::info!(paths = ?settings.tail.globs, once = options.once, "running");

        shutdown.token.cancelled().await;
        // Reading stopped; every read is acknowledged once the core wrote it (windows close
        // by the wall clock after `consume.idle_flush_ms` without input).
        if tokio::time::timeout(DRAIN_GRACE, node.acknowledging).await.is_err() {
            tracing::warn!("reads still unwritten after the grace period; they are read again next time");
        }
        drop(node.tail);
        stop_core.cancel();
        let summary = done.await.context("the core")?;
        shutdown.drain(Duration::from_secs(5)).await;
        anyhow::Ok(summary)
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(scratch);
    tracing::info!(messages = summary.messages, written = summary.finished, "run finished");
    Ok(if summary.requeued_at_stop > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Cancels `stop` once every followed file is read to its end and acknowledged, and stays so
/// for two of the engine's status ticks (or nothing moved for [`ONCE_QUIET`]).
async fn stop_at_the_end(tail: TailHandle, stop: CancellationToken) {
    let mut last: Option<Vec<(PathBuf, u64, u64)>> = None;
    let mut since = Instant::now();
    let mut done_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ONCE_POLL) => {}
            _ = stop.cancelled() => return,
        }
        let files = tail.files();
        let read = files.iter().all(|f| f.lag_bytes == 0);
        let acked = files.iter().all(|f| f.acked_offset == f.read_offset);
        let state: Vec<_> = files.iter().map(|f| (f.path.clone(), f.read_offset, f.acked_offset)).collect();
        if last.as_ref() != Some(&state) {
            last = Some(state);
            since = Instant::now();
        }
        let quiet = since.elapsed() >= ONCE_QUIET;
        if read && (acked || quiet) {
            let first = *done_since.get_or_insert_with(Instant::now);
            if acked && first.elapsed() >= Duration::from_millis(1500) || quiet {
                tracing::info!(files = files.len(), "--once: every file read to its end");
                stop.cancel();
                return;
            }
        } else {
            done_since = None;
        }
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

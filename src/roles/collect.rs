//! `logmill collect [--once] [--output stdout|influx]`: the host, kubelet and nsqd collectors
//! on their own. Wiring only: [`crate::host::Collector`] does the work and hands each cycle's
//! batches over a bounded channel; they go through the one output boundary
//! ([`crate::output::Output`]), as the agent will send them to InfluxDB or the `metrics` topic.
//!
//! Long-running: every cycle's batches go out as they come, until SIGINT or SIGTERM. `--once`:
//! one cycle (the rate inputs sampled twice, `once_sample_gap_ms` apart), its problems on
//! stderr, and an exit status that says whether every enabled input produced points (and, with
//! InfluxDB, whether InfluxDB took them).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::host::{Batch, Collector};
use crate::influx::writer::InfluxWriter;
use crate::output::{DeliverySummary, Output, Pending};
use crate::roles::replay::Destination;
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

/// Batches waiting for the output: a cycle's worth of inputs several times over. Beyond it the
/// inputs wait (and miss ticks, counted) instead of memory growing.
const BATCH_QUEUE: usize = 64;
/// How long the output may take to answer what was submitted when stopping.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// One cycle, then exit.
    pub once: bool,
}

/// `logmill collect`: the collectors to `destination`; the exit status is the command's.
pub fn run(
    settings: Settings,
    options: CollectOptions,
    destination: Destination,
) -> anyhow::Result<ExitCode> {
    let influx = destination.influx(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    let telemetry = Telemetry::default();
    let collector = Collector::new(&settings.collect, &settings.host, &telemetry)?;
    if collector.input_names().is_empty() {
        anyhow::bail!(
            "nothing to collect: `collect.inputs` is empty and neither `collect.kubelet.url` nor \
             `collect.nsqd.endpoints` is set"
        );
    }
    let code = runtime.block_on(async {
        shutdown.cancel_on_signals();
        let output = match influx {
            None => Output::Stdout,
            Some(influx) => Output::Influx(InfluxWriter::start(
                influx,
                &telemetry,
                &shutdown.tracker,
                shutdown.token.clone(),
            )?),
        };
        let code = if options.once {
            once(collector, output, destination).await
        } else {
            if let Some(addr) = settings.telemetry_listen {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let serve =
                            crate::telemetry::serve(listener, telemetry.clone(), shutdown.token.clone());
                        shutdown.tracker.spawn(serve);
                    }
                    Err(error) => tracing::warn!(%addr, %error, "telemetry endpoint not served"),
                }
            }
            continuous(collector, output, &shutdown).await
        };
        shutdown.token.cancel();
        shutdown.drain(DRAIN_GRACE).await;
        anyhow::Ok(code)
    })?;
    // A blocking read stuck on a dead mount must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}

/// One cycle; problems on stderr.
async fn once(collector: Collector, output: Output, destination: Destination) -> ExitCode {
    let inputs = collector.input_names();
    let report = collector.once().await;
    for (input, problem) in &report.problems {
        eprintln!("logmill collect: {input}: {}: {}", problem.reason, problem.detail);
    }
    let silent: Vec<&str> =
        inputs.iter().copied().filter(|name| !report.batches.iter().any(|b| b.input == *name)).collect();
    if !silent.is_empty() {
        eprintln!("logmill collect: no points from {}", silent.join(", "));
    }
    let mut pending = Vec::with_capacity(report.batches.len());
    let mut delivery = DeliverySummary::default();
    for batch in report.batches {
        let points = batch.points as u64;
        match output.submit(batch.body, batch.points).await {
            Ok(p) => pending.push((points, p)),
            Err(e) => {
                eprintln!("logmill collect: {}: {e}", batch.input);
                delivery.add(points, &crate::output::Outcome::aborted(points));
            }
        }
    }
    // The output is dropped here, so the InfluxDB writer ends once it has answered everything.
    drop(output);
    for (points, p) in pending {
        delivery.add(points, &p.await);
    }
    if destination == Destination::Influx {
        eprint!("logmill collect\n{}", delivery.render("influx"));
    }
    if delivery.complete() && silent.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every cycle until stopped.
async fn continuous(collector: Collector, output: Output, shutdown: &Shutdown) -> ExitCode {
    let (tx, mut rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    shutdown.tracker.spawn(collector.run(tx, shutdown.token.clone()));
    // The output counts every refusal; this says once that points are being lost.
    let refused_logged = Arc::new(AtomicBool::new(false));
    while let Some(batch) = rx.recv().await {
        match output.submit(batch.body, batch.points).await {
            Ok(pending) => {
                shutdown.tracker.spawn(report_outcome(batch.input, pending, refused_logged.clone()));
            }
            Err(error) => {
                eprintln!("logmill collect: {error}");
                shutdown.token.cancel();
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

async fn report_outcome(input: &'static str, pending: Pending, logged: Arc<AtomicBool>) {
    let outcome = pending.await;
    if (outcome.dropped > 0 || outcome.rejected > 0) && !logged.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            input,
            dropped = outcome.dropped,
            rejected = outcome.rejected,
            error = outcome.error.as_deref().unwrap_or(""),
            "the output refused collector points (logged once)"
        );
    }
}

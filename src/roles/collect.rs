//! `logmill collect [--once] [--output stdout|influx]`: the host, kubelet and nsqd collectors
//! on their own. Wiring only: [`crate::host::Collector`] does the work and hands each cycle's
//! batches over a bounded channel; they go through the one output boundary
//! ([`crate::output::Output`]), as the agent will send them to InfluxDB or the `metrics` topic.
//!
//! Long-running: every cycle's batches go out as they come, until SIGINT or SIGTERM. `--once`:
//! one cycle (the rate inputs sampled twice, `once_sample_gap_ms` apart), its problems on
//! stderr, and an exit status that says whether every enabled input produced points (and, with
//! InfluxDB, whether InfluxDB took them).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::host::{Batch, Collector};
use crate::influx::writer::InfluxWriter;
use crate::output::{DeliverySummary, Outcome, Output, Pending};
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
    // One thread: the collectors' reads run on threads of their own, and what is left here
    // (a timer for the remote inputs, a write per cycle, the InfluxDB writer) is a few wake-ups
    // a cycle, which worker threads stealing from each other would multiply.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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

/// Every cycle until stopped. The batches already waiting when some arrive go out with them in
/// one submission: one write to stdout per cycle rather than one per input.
async fn continuous(collector: Collector, output: Output, shutdown: &Shutdown) -> ExitCode {
    let (tx, mut rx) = mpsc::channel::<Vec<Batch>>(BATCH_QUEUE);
    shutdown.tracker.spawn(collector.run(tx, shutdown.token.clone()));
    // The output counts every refusal; this says once that points are being lost.
    let refused_logged = Arc::new(AtomicBool::new(false));
    // Kept between submissions: its memory comes back once the output has let go of the last
    // body cut from it.
    let mut joined = BytesMut::new();
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        waiting.extend(first);
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
        }
        let Some(input) = waiting.first().map(|b| b.input) else { continue };
        let points = waiting.iter().map(|b| b.points).sum();
        let body = if waiting.len() == 1 {
            waiting.pop().map(|b| b.body).unwrap_or_default()
        } else {
            for batch in waiting.drain(..) {
                joined.extend_from_slice(&batch.body);
            }
            joined.split().freeze()
        };
        waiting.clear();
        match output.submit(body, points).await {
            Ok(mut pending) => {
                // Stdout's answer is known at once; only InfluxDB's is waited for in a task.
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut pending).poll(&mut cx) {
                    Poll::Ready(outcome) => report_refusal(input, &outcome, &refused_logged),
                    Poll::Pending => {
                        shutdown.tracker.spawn(report_outcome(input, pending, refused_logged.clone()));
                    }
                }
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
    report_refusal(input, &pending.await, &logged);
}

/// `input`: the first input of the submission.
fn report_refusal(input: &'static str, outcome: &Outcome, logged: &AtomicBool) {
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

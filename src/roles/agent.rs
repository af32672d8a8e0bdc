//! `logmill agent`: the DaemonSet half. Wiring only: the tail engine ([`crate::tail::Tailer`])
//! follows the node's container logs, the [`AgentSink`] ships their records to NSQ, its
//! [`Acknowledger`](crate::agent::sink::Acknowledger) moves checkpoints as nsqd acknowledges,
//! and the collectors and the service's own counters go to the `metrics` topic beside them.
//!
//! Shutdown (SIGTERM): reading stops, the engine drops the sink, the acknowledger drains what
//! was published (nsqd still answering), the engine writes the last checkpoint, then the
//! producer and everything else stop. Whatever was not acknowledged is read again after the
//! restart: duplicates are bounded, loss is zero.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use crate::agent::classify::Classifier;
use crate::agent::sink::{AgentSink, SinkSettings};
use crate::agent::CollectTo;
use crate::config::Settings;
use crate::host::Collector;
use crate::influx::writer::InfluxWriter;
use crate::kube::PodMetadata;
use crate::metrics::line_protocol::{encode_point, split_lines};
use crate::nsq::producer::Producer;
use crate::output::Output;
use crate::shutdown::Shutdown;
use crate::tail::{Exclude, Tailer};
use crate::telemetry::Telemetry;

/// How long the last acknowledgements, the checkpoint and the producer's drain may take after
/// SIGTERM (Kubernetes' default grace period is 30 s).
const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// `logmill agent` until SIGTERM.
pub fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    runtime.block_on(async {
        shutdown.cancel_on_signals();
        let telemetry = Telemetry::default();
        serve_telemetry(&settings, &telemetry, &shutdown).await;
        // The producer outlives reading: it stops only once the last reads are acknowledged.
        let stop_publishing = CancellationToken::new();
        let producer =
            Producer::start(settings.nsq.producer.clone(), &telemetry, &shutdown.tracker, stop_publishing.clone());
        let pods = match &settings.kubernetes {
            Some(k) => Some(
                PodMetadata::start(k, &telemetry, &shutdown.tracker, shutdown.token.clone())
                    .context("the Kubernetes API client")?,
            ),
            None => None,
        };
        let agent = &settings.agent;
        let sink_settings = SinkSettings {
            host: settings.host.clone(),
            log_topic: settings.nsq.log_topic.clone(),
            metric_topic: settings.nsq.metric_topic.clone(),
            send_logs: agent.send_logs,
            send_metrics: agent.send_metrics,
            max_msg_bytes: settings.nsq.producer.max_message_bytes,
            batch_max_messages: settings.nsq.producer.batch_max_messages,
            batch_max_bytes: settings.nsq.producer.batch_max_bytes,
            drop_router_non_access_lines: agent.drop_router_non_access_lines,
        };
        let classifier = Classifier::new(settings.parsers.clone(), agent.drop_other);
        let (sink, acknowledger) = AgentSink::new(
            sink_settings,
            classifier,
            pods,
            agent.sources.clone(),
            producer.clone(),
            &telemetry,
        );
        let health = acknowledger.health();
        let stall = agent.publish_stall;
        telemetry.health_check(
            "publishing",
            Arc::new(move || match health.waiting() {
                waited if waited > stall => Err(format!("a read has waited {} s for nsqd", waited.as_secs())),
                _ => Ok(()),
            }),
        );
        let mut tail = settings.tail.clone();
        let (sources, filters) = (agent.sources.clone(), agent.filters.clone());
        let exclude: Exclude =
            Arc::new(move |path| sources.container_of(path).is_some_and(|c| !filters.admits(&c)));
        tail.exclude = Some(exclude);
        let tail = Tailer::start(tail, sink, &telemetry, &shutdown.tracker, shutdown.token.clone())
            .context("starting the tail engine")?;
        let acknowledging = tokio::spawn(acknowledger.run(tail));

        let metrics_out = Output::Nsq { producer: producer.clone(), topic: settings.nsq.metric_topic.clone() };
        match agent.collect {
            CollectTo::Off => {}
            CollectTo::Nsq => start_collectors(&settings, &telemetry, &shutdown, metrics_out.clone())?,
            CollectTo::Influx => {
                let influx = settings
                    .influx
                    .clone()
                    .context("agent.collect = \"influx\" needs an InfluxDB URL (influx.urls, $INFLUXDB_URLS)")?;
                let writer = InfluxWriter::start(influx, &telemetry, &shutdown.tracker, shutdown.token.clone())?;
                start_collectors(&settings, &telemetry, &shutdown, Output::Influx(writer))?;
            }
        }
        if let Some(every) = settings.telemetry_interval {
            let (host, max) = (settings.host.clone(), settings.nsq.producer.max_message_bytes);
            let token = shutdown.token.clone();
            shutdown.tracker.spawn(report(telemetry.clone(), host, every, max, metrics_out, token));
        }
        drop(producer);
        tracing::info!(paths = ?settings.tail.globs, nsqd = ?settings.nsq.nsqd_tcp_addresses, "agent started");

        shutdown.token.cancelled().await;
        tracing::info!("stopping: reading stopped; draining what was published");
        // The engine drops the sink once reading stopped; the acknowledger then drains and
        // ends, dropping the last handle, upon which the engine writes its last checkpoint.
        if tokio::time::timeout(DRAIN_GRACE, acknowledging).await.is_err() {
            tracing::warn!("acknowledgements still pending after the grace period; they are sent again after the restart");
        }
        stop_publishing.cancel();
        let drained = shutdown.drain(DRAIN_GRACE).await;
        tracing::info!(drained, "agent stopped");
        anyhow::Ok(())
    })?;
    // A blocking read stuck on a dead mount must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` and `/healthz`, when `telemetry.listen` is set.
pub(crate) async fn serve_telemetry(settings: &Settings, telemetry: &Telemetry, shutdown: &Shutdown) {
    let Some(addr) = settings.telemetry_listen else { return };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            let serve = crate::telemetry::serve(listener, telemetry.clone(), shutdown.token.clone());
            shutdown.tracker.spawn(serve);
        }
        Err(error) => tracing::warn!(%addr, %error, "telemetry endpoint not served"),
    }
}

/// The host, kubelet and nsqd collectors, each cycle's batches to `output`.
fn start_collectors(
    settings: &Settings,
    telemetry: &Telemetry,
    shutdown: &Shutdown,
    output: Output,
) -> anyhow::Result<()> {
    let collector = Collector::new(&settings.collect, &settings.host, telemetry)?;
    if collector.input_names().is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    shutdown.tracker.spawn(collector.run(tx, shutdown.token.clone()));
    let max = settings.nsq.producer.max_message_bytes;
    shutdown.tracker.spawn(async move {
        while let Some(batch) = rx.recv().await {
            for body in split_lines(batch.body, max) {
                let points = memchr::memchr_iter(b'\n', &body).count();
                if output.submit(body, points).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The service's own counters as `logmill_*` points every `every`, like Telegraf's `internal`
/// input.
pub(crate) async fn report(
    telemetry: Telemetry,
    host: String,
    every: Duration,
    max_msg_bytes: usize,
    output: Output,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let now_ns = crate::timefmt::now_ns();
        let mut buf = BytesMut::new();
        for point in telemetry.points(&host, now_ns) {
            // A counter's name and labels are logmill's own: they always encode.
            let _ = encode_point(&point, &mut buf);
        }
        for body in split_lines(buf.freeze(), max_msg_bytes) {
            let points = memchr::memchr_iter(b'\n', &body).count();
            if output.submit(body, points).await.is_err() {
                return;
            }
        }
    }
}

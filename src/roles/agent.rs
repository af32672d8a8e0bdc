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
use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use crate::agent::classify::Classifier;
use crate::agent::sink::{AgentSink, Publish, SinkSettings};
use crate::agent::CollectTo;
use crate::config::Settings;
use crate::host::Collector;
use crate::influx::writer::InfluxWriter;
use crate::kube::PodMetadata;
use crate::metrics::line_protocol::{encode_point, split_lines};
use crate::nsq::producer::Producer;
use crate::output::Output;
use crate::shutdown::Shutdown;
use crate::tail::{Exclude, TailHandle, Tailer};
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
        let node = start(&settings, producer, pods, &telemetry, &shutdown)?;
        tracing::info!(paths = ?settings.tail.globs, nsqd = ?settings.nsq.nsqd_tcp_addresses, "agent started");

        shutdown.token.cancelled().await;
        tracing::info!("stopping: reading stopped; draining what was published");
        // The engine drops the sink once reading stopped; the acknowledger then drains and
        // ends, dropping the last handle, upon which the engine writes its last checkpoint.
        if tokio::time::timeout(DRAIN_GRACE, node.acknowledging).await.is_err() {
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

/// The agent at work: reading, publishing, acknowledging.
pub(crate) struct Node {
    /// Ends once the engine dropped the sink (reading stopped) and every read handed over was
    /// answered.
    pub(crate) acknowledging: tokio::task::JoinHandle<()>,
    pub(crate) tail: TailHandle,
}

/// Starts the tail engine, the sink publishing through `publisher`, its acknowledger, the
/// collectors and the telemetry points; they stop when `shutdown.token` fires (the
/// acknowledger once it has drained).
pub(crate) fn start<P: Publish + Clone + Sync>(
    settings: &Settings,
    publisher: P,
    pods: Option<PodMetadata>,
    telemetry: &Telemetry,
    shutdown: &Shutdown,
) -> anyhow::Result<Node> {
    let agent = &settings.agent;
    let sink_settings = SinkSettings::new(settings);
    let classifier = Classifier::new(settings.parsers.clone(), agent.drop_other);
    let (sink, acknowledger) =
        AgentSink::new(sink_settings, classifier, pods, agent.sources.clone(), publisher.clone(), telemetry);
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
    let tail = Tailer::start(tail, sink, telemetry, &shutdown.tracker, shutdown.token.clone())
        .context("starting the tail engine")?;
    let handle = tail.clone();
    let acknowledging = tokio::spawn(acknowledger.run(move |file, resume| handle.acked(file, resume)));

    let metrics = Lines::Topic(publisher, settings.nsq.metric_topic.clone());
    match agent.collect {
        CollectTo::Off => {}
        CollectTo::Nsq => start_collectors(settings, telemetry, shutdown, metrics.clone())?,
        CollectTo::Influx => {
            let influx = settings
                .influx
                .clone()
                .context("agent.collect = \"influx\" needs an InfluxDB URL (influx.urls, $INFLUXDB_URLS)")?;
            let writer = InfluxWriter::start(influx, telemetry, &shutdown.tracker, shutdown.token.clone())?;
            start_collectors(settings, telemetry, shutdown, Lines::<P>::Output(Output::Influx(writer)))?;
        }
    }
    if let Some(every) = settings.telemetry_interval {
        let (host, max) = (settings.host.clone(), settings.nsq.producer.max_message_bytes);
        let token = shutdown.token.clone();
        shutdown.tracker.spawn(report(telemetry.clone(), host, every, max, metrics, token));
    }
    Ok(Node { acknowledging, tail })
}

/// Where line protocol of the collectors and the telemetry goes: the `metrics` topic, or
/// InfluxDB directly. Fire and forget: a lost cycle is not a lost log line.
#[derive(Clone)]
enum Lines<P> {
    Topic(P, String),
    Output(Output),
}

impl<P: Publish> Lines<P> {
    /// `false` once the destination is gone.
    async fn send(&self, body: Bytes, max_msg_bytes: usize) -> bool {
        for body in split_lines(body, max_msg_bytes) {
            let sent = match self {
                Lines::Topic(publisher, topic) => publisher.submit(topic, vec![body]).await.is_ok(),
                Lines::Output(output) => {
                    let points = memchr::memchr_iter(b'\n', &body).count();
                    output.submit(body, points).await.is_ok()
                }
            };
            if !sent {
                return false;
            }
        }
        true
    }
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

/// The host, kubelet and nsqd collectors, each cycle's batches to `lines`.
fn start_collectors<P: Publish + Clone + Sync>(
    settings: &Settings,
    telemetry: &Telemetry,
    shutdown: &Shutdown,
    lines: Lines<P>,
) -> anyhow::Result<()> {
    let collector = Collector::new(&settings.collect, &settings.host, telemetry)?;
    if collector.input_names().is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    shutdown.tracker.spawn(collector.run(tx, shutdown.token.clone()));
    let max = settings.nsq.producer.max_message_bytes;
    shutdown.tracker.spawn(async move {
        while let Some(batches) = rx.recv().await {
            for batch in batches {
                if !lines.send(batch.body, max).await {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The service's own counters as `logmill_*` points every `every`, like Telegraf's `internal`
/// input.
async fn report<P: Publish + Sync>(
    telemetry: Telemetry,
    host: String,
    every: Duration,
    max_msg_bytes: usize,
    lines: Lines<P>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let mut buf = BytesMut::new();
        for point in telemetry.points(&host, crate::timefmt::now_ns()) {
            // A counter's name and labels are logmill's own: they always encode.
            let _ = encode_point(&point, &mut buf);
        }
        if !lines.send(buf.freeze(), max_msg_bytes).await {
            return;
        }
    }
}

//! `logmill consume`: NSQ `metrics` and `logs` to InfluxDB. Wiring only: the processing is
//! [`crate::consume`]'s, the reading [`crate::nsq`]'s, the writing [`crate::influx`]'s.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::consume::{self, source, DeadLetterSink};
use crate::derive::TopicKind;
use crate::influx::writer::InfluxWriter;
use crate::nsq::consumer::{Consumer, Delivery};
use crate::nsq::lookupd::{Discovery, LookupdSettings};
use crate::nsq::producer::Producer;
use crate::output::Output;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, Telemetry};

/// How long the writer and the other tasks get to finish after the core has settled every
/// message (what is left is telemetry, not anything a FIN waits for).
const AFTER_CORE: Duration = Duration::from_secs(5);

/// Runs until SIGTERM/SIGINT, then stops reading, flushes every window, waits for InfluxDB's
/// answers, acknowledges, and exits 0.
pub fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let influx = settings
        .influx
        .clone()
        .context("consume writes to InfluxDB: give --influx-url, influx.urls or $INFLUXDB_URLS")?;
    let nsq = &settings.nsq;
    if nsq.nsqd_tcp_addresses.is_empty() && nsq.lookupd_http_addresses.is_empty() {
        anyhow::bail!("consume needs nsqd addresses (--nsqd) or nsqlookupd addresses (--lookupd)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.cancel_on_signals();
        let telemetry = Telemetry::default();
        // The writer outlives the signal: the core still writes what it flushes on the way out.
        let writer_cancel = CancellationToken::new();
        let writer = InfluxWriter::start(influx, &telemetry, &shutdown.tracker, writer_cancel.clone())?;
        let c = &settings.consume;
        let dead_letters = match (&c.dead_letter_file, &c.dead_letter_topic) {
            (Some(path), _) => DeadLetterSink::File(path.clone()),
            (None, Some(topic)) => {
                let producer = Producer::start(
                    nsq.producer.clone(),
                    &telemetry,
                    &shutdown.tracker,
                    writer_cancel.clone(),
                );
                DeadLetterSink::Topic(Output::Nsq { producer, topic: topic.clone() })
            }
            (None, None) => DeadLetterSink::None,
        };
        let mut core_settings = c.core.clone();
        // A restart's aggregate points (window start + sequence) must not reuse the last run's keys.
        core_settings.aggregate.sequence_base = crate::timefmt::now_ns().max(0) as u64;
        core_settings.shutdown_grace = nsq.consumer.drain_timeout;
        let (core, done) = consume::start::<Delivery>(
            core_settings,
            Output::Influx(writer),
            dead_letters,
            &telemetry,
            &shutdown.tracker,
            shutdown.token.clone(),
        );
        if let Some(addr) = settings.telemetry_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("telemetry listener on {addr}"))?;
            shutdown.tracker.spawn(telemetry::serve(listener, telemetry.clone(), shutdown.token.clone()));
        }
        for (topic, kind) in [(&nsq.metric_topic, TopicKind::Metrics), (&nsq.log_topic, TopicKind::Logs)] {
            let discovered = if nsq.lookupd_http_addresses.is_empty() {
                None
            } else {
                let lookupd =
                    LookupdSettings::new(&nsq.lookupd_http_addresses, topic, nsq.lookupd_poll_interval)?;
                Some(Discovery::start(lookupd, None, &telemetry, &shutdown.tracker, shutdown.token.clone())?)
            };
            let addresses = source::nsqd_addresses(
                &nsq.nsqd_tcp_addresses,
                discovered,
                &shutdown.tracker,
                shutdown.token.clone(),
            );
            let (consumer, deliveries) = Consumer::start(
                nsq.consumer(topic),
                addresses,
                None,
                &telemetry,
                &shutdown.tracker,
                shutdown.token.clone(),
            )?;
            shutdown.tracker.spawn(source::forward(kind, consumer, deliveries, core.clone()));
        }
        drop(core);
        tracing::info!(
            instance = %c.instance,
            nsqd = ?nsq.nsqd_tcp_addresses,
            lookupd = ?nsq.lookupd_http_addresses,
            "consuming"
        );
        let summary = done.await.context("the consumer's core")?;
        writer_cancel.cancel();
        shutdown.token.cancel();
        shutdown.drain(AFTER_CORE).await;
        anyhow::Ok(summary)
    })?;
    tracing::info!(
        messages = summary.messages,
        finished = summary.finished,
        requeued = summary.requeued,
        requeued_at_stop = summary.requeued_at_stop,
        "consumer stopped"
    );
    Ok(ExitCode::SUCCESS)
}

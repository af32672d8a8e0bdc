//! Throughput of the consumer's per-message work over the messages the agent publishes:
//! `testdata/access.log` (37,082 router access lines) as compat points, 100 access lines (300
//! points) per `metrics` message as in `benches/consume`, derived (validated, router points
//! turned into samples, lines to write copied) and added to `router_requests`. What is left of
//! `logmill consume`'s per-message work is its ledger and the hand-over to the writer.
//!
//! Throughput is in bytes of message bodies; access lines/s = 37,082 / time per iteration.
//!
//! ```text
//! cargo bench --bench derive
//! cargo bench --bench derive -- --test       # run each once, as a smoke test
//! ```

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};

use logmill::access::{router, Classified};
use logmill::config::RawConfig;
use logmill::consume::CoreSettings;
use logmill::derive::{Derived, TopicKind};
use logmill::metrics::compat::CompatEncoder;

const HOST: &str = "node-1";
/// Access lines per message, as the agent batches them and `benches/consume` publishes them.
const LINES_PER_MESSAGE: usize = 100;

/// The consumer's core settings by default, with router points written to InfluxDB or not.
fn core_settings(write_router_points: bool) -> CoreSettings {
    let mut raw = RawConfig::load(None).expect("default config");
    raw.host = Some(HOST.to_owned());
    raw.consume.write_router_points = write_router_points;
    raw.validate().expect("default config validates").consume.core
}

/// The compat points of every access line, `LINES_PER_MESSAGE` lines to a message.
fn messages() -> Vec<BytesMut> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join("access.log");
    let text = std::fs::read(path).expect("testdata/access.log");
    let mut encoder = CompatEncoder::default();
    let mut messages = Vec::new();
    let mut body = BytesMut::new();
    let mut in_body = 0;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let Classified::Access(record) = router::classify(line) else { continue };
        // Distinct timestamps, as the agent's per-file guard makes them.
        encoder.write(&record, HOST, record.time_ns + i as i64, &mut body).expect("encodes");
        in_body += 1;
        if in_body == LINES_PER_MESSAGE {
            messages.push(std::mem::take(&mut body));
            in_body = 0;
        }
    }
    if in_body > 0 {
        messages.push(body);
    }
    messages
}

fn benches(c: &mut Criterion) {
    let messages = messages();
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    eprintln!(
        "{} metrics messages, {bytes} bytes; access lines/s = 37,082 / time per iteration",
        messages.len()
    );
    let mut group = c.benchmark_group("derive");
    // One iteration is every message (tens of milliseconds): flat sampling, as in `pipeline`.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, write_router_points) in [("aggregate", false), ("pass_through", true)] {
        let settings = core_settings(write_router_points);
        group.bench_function(name, |b| {
            // A fresh deriver and aggregate per iteration (built untimed): a used aggregate
            // has seen every window close.
            b.iter_batched_ref(
                || (settings.deriver(), settings.request_aggregator(), Derived::default()),
                |(deriver, requests, derived)| {
                    for (i, body) in messages.iter().enumerate() {
                        deriver.derive(TopicKind::Metrics, body, i as i64, true, derived);
                        derived.observe_requests(requests);
                        black_box(requests.take_ready());
                    }
                    requests.flush_all();
                    black_box(requests.take_ready());
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(derive, benches);
criterion_main!(derive);

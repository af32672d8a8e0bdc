//! CPU cost of one collection cycle of the host inputs on this machine, in process (no
//! scheduling, no output): each input's files read, parsed, turned into points and encoded as
//! line protocol, as `Collector::gather_host_blocking` does it. `benches/collect-vs-node-exporter`
//! measures the whole process beside the Prometheus node exporter.
//!
//! ```text
//! cargo bench --bench collect                 # the whole cycle, then each input alone
//! cargo bench --bench collect -- --test       # run each once, as a smoke test
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use logmill::config::RawConfig;
use logmill::host::{Collector, HostInput};
use logmill::telemetry::Telemetry;

fn collector(inputs: &[&str]) -> Collector {
    let mut raw = RawConfig::load(None).expect("default config");
    raw.collect.inputs = inputs.iter().map(|i| (*i).to_owned()).collect();
    let settings = raw.validate().expect("valid");
    Collector::new(&settings.collect, "bench", &Telemetry::default()).expect("collector")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("collect");
    group.measurement_time(Duration::from_secs(5)).sample_size(50);
    let all: Vec<&str> = HostInput::ALL.iter().map(|i| i.name()).collect();
    let mut every = collector(&all);
    // The rate inputs' first sample, so every iteration is a full cycle.
    every.gather_host_blocking(0);
    group.bench_function("host_cycle", |b| b.iter(|| black_box(every.gather_host_blocking(1))));
    for input in HostInput::ALL {
        let mut one = collector(&[input.name()]);
        one.gather_host_blocking(0);
        group.bench_function(input.name(), |b| b.iter(|| black_box(one.gather_host_blocking(1))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Throughput of the per-line path over real router logs.
//!
//! `testdata/access.log` (37,082 Deis router access lines) is read once; every group reports
//! bytes of that file per second, so the groups compare directly (lines/s = 37,082 / time per
//! iteration). `replay_docker` runs the whole replay role on `testdata/router-docker.log`
//! (Docker json-file, 41,796 lines) and reports that file's bytes.
//!
//! ```text
//! cargo bench --bench pipeline                 # all groups
//! cargo bench --bench pipeline -- pipeline/    # one group
//! cargo bench --bench pipeline -- --test       # run each once, as a smoke test
//! ```

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use tokio_util::sync::CancellationToken;

use logmill::access::rules::{Registry, DEIS_ROUTER};
use logmill::access::{router, AccessRecord, Classified, KeyGuard, LineOrigin};
use logmill::config::{RawConfig, Settings};
use logmill::metrics::aggregate::{AggregateSettings, Aggregator, RequestSample, SeriesRef};
use logmill::metrics::compat::CompatEncoder;
use logmill::pipeline::{LineParser, LineProcessor};
use logmill::roles::replay::{replay, FormatChoice, ReplayOptions};

const HOST: &str = "bench";

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// The settings `logmill replay` runs with by default, with a fixed host.
fn settings() -> Settings {
    let mut raw = RawConfig::load(None).expect("default config");
    raw.host = Some(HOST.to_owned());
    raw.validate().expect("default config validates")
}

/// One line of the file (without its line break) and where it starts.
struct Input<'a> {
    line: &'a [u8],
    origin: LineOrigin,
}

/// Splits the file into lines once, outside every timed loop.
fn split_lines(text: &[u8]) -> Vec<Input<'_>> {
    let mut offset = 0u64;
    let mut lines = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        let origin = LineOrigin { runtime_time_ns: None, file_offset: offset };
        offset += line.len() as u64;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        lines.push(Input { line, origin });
    }
    lines
}

fn configure<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>, bytes: usize) {
    // One iteration is a whole file (3 to 70 ms): flat sampling keeps 20 samples within the
    // measurement time, where linear sampling would need 210 iterations.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(bytes as u64));
}

fn benches(c: &mut Criterion) {
    let text = std::fs::read(testdata("access.log")).expect("testdata/access.log");
    let inputs = split_lines(&text);
    let settings = settings();
    let aggregate: AggregateSettings = settings.aggregate.clone();

    let records: Vec<(AccessRecord<'_>, LineOrigin)> = inputs
        .iter()
        .filter_map(|input| match router::classify(input.line) {
            Classified::Access(record) => Some((record, input.origin)),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), inputs.len(), "every line of testdata/access.log is an access line");
    eprintln!(
        "testdata/access.log: {} bytes, {} lines ({} access); lines/s = {} / time per iteration",
        text.len(),
        inputs.len(),
        records.len(),
        inputs.len()
    );

    // 1. The nom fast path alone.
    let mut group = c.benchmark_group("parse");
    configure(&mut group, text.len());
    group.bench_function("classify", |b| {
        b.iter(|| {
            for input in &inputs {
                black_box(router::classify(black_box(input.line)));
            }
        })
    });
    // What LineProcessor runs: the same parse, remembering the last access time.
    let mut parser = router::RouterParser::default();
    group.bench_function("router_parser", |b| {
        b.iter(|| {
            for input in &inputs {
                black_box(parser.classify(black_box(input.line)));
            }
        })
    });
    group.finish();

    // 2. The declarative definition of the same format: the regex reference path.
    let registry = Registry::builtin().expect("built-in parsers");
    let definition = registry.get(DEIS_ROUTER).expect("deis-router definition").clone();
    let mut group = c.benchmark_group("parse_rules");
    configure(&mut group, text.len());
    group.bench_function("deis-router", |b| {
        b.iter(|| {
            for input in &inputs {
                if let Ok(Some(parsed)) = definition.parse(black_box(input.line)) {
                    black_box(definition.access_record(&parsed));
                }
            }
        })
    });
    group.finish();

    // 3. The three compat points per line, into a reused buffer.
    let mut out = BytesMut::new();
    let mut group = c.benchmark_group("compat_encode");
    configure(&mut group, text.len());
    let mut encoder = CompatEncoder::default();
    group.bench_function("compat_points", |b| {
        b.iter(|| {
            out.clear();
            for (record, origin) in &records {
                let ts = origin.point_timestamp(record.time_ns);
                encoder.write(record, HOST, ts, &mut out).expect("encodes");
            }
            black_box(out.len());
        })
    });
    group.finish();

    // 4. router_requests aggregation; a fresh aggregator per iteration (built untimed), since
    //    a used one has seen every window close.
    let mut group = c.benchmark_group("aggregate");
    configure(&mut group, text.len());
    group.bench_function("observe", |b| {
        b.iter_batched_ref(
            || Aggregator::new(aggregate.clone()),
            |aggregator| {
                for (record, origin) in &records {
                    let sample = RequestSample::of_line(record, origin.point_timestamp(record.time_ns));
                    aggregator.observe(SeriesRef::of_line(record, HOST), &sample);
                }
                aggregator.flush_all();
                black_box(aggregator.take_ready());
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // 5. The whole per-line path: classify, compat points, aggregate, encode.
    let mut group = c.benchmark_group("pipeline");
    configure(&mut group, text.len());
    group.bench_function("process", |b| {
        b.iter_batched_ref(
            || LineProcessor::new(HOST, LineParser::FastPath, aggregate.clone()),
            |processor| {
                out.clear();
                let mut keys = KeyGuard::default();
                for input in &inputs {
                    processor.process(input.line, false, input.origin, &mut keys, &mut out);
                }
                processor.finish(&mut out);
                black_box(out.len());
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // 6. The replay role on Docker json-file: file reads, line splitting, JSON decoding and
    //    reassembly, then the same per-line path; output to a sink.
    let docker = testdata("router-docker.log");
    let docker_bytes = std::fs::metadata(&docker).expect("testdata/router-docker.log").len();
    let options =
        ReplayOptions { files: vec![docker], format: FormatChoice::Docker, parser: DEIS_ROUTER.to_owned() };
    let cancel = CancellationToken::new();
    let summary = replay(&settings, &options, &cancel, |_, _| Ok(())).expect("replay");
    eprintln!(
        "testdata/router-docker.log: {docker_bytes} bytes, {} lines ({} access, {} other)",
        summary.counts.lines, summary.counts.access, summary.counts.other
    );
    let mut group = c.benchmark_group("replay_docker");
    configure(&mut group, docker_bytes as usize);
    group.bench_function("replay", |b| {
        b.iter(|| black_box(replay(&settings, &options, &cancel, |_, _| Ok(())).expect("replay")))
    });
    group.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);

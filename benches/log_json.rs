//! Throughput of the `logs` topic's JSON: the agent's encoder and the consumer's reader.
//!
//! The record texts are the 41,796 lines of `testdata/access.log` and `testdata/error.log`
//! (real nginx output: quotes, `\x22`, user agents), read once; each iteration encodes all of
//! them, one second of runtime time apart every 100 records as a busy container's would be.
//! `serde_json` encoding the same records from a struct is measured alongside, the baseline
//! the hand-written encoder has to beat to be worth its code.
//!
//! ```text
//! cargo bench --bench log_json
//! cargo bench --bench log_json -- --test       # run each once, as a smoke test
//! ```

use std::hint::black_box;
use std::path::PathBuf;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use logmill::tail::container::Stream;
use logmill::wire::log_record::{decode_log_record, LogEncoder, LogMeta};

fn texts() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut out = Vec::new();
    for name in ["access.log", "error.log"] {
        let data = std::fs::read(dir.join(name)).expect("testdata");
        out.extend(data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    out
}

fn labels() -> Vec<(String, String)> {
    [("app", "foo"), ("heritage", "deis"), ("type", "web"), ("version", "v2")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const BASE_NS: i64 = 1_795_234_941_000_000_000;

fn bench(c: &mut Criterion) {
    let texts = texts();
    let labels = labels();
    let meta = LogMeta {
        container_id: "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f",
        namespace_name: "foo",
        pod_id: "34ebc234-2423-11e6-94aa-42010a800021",
        pod_name: "foo-v2-web-2ggow",
        container_name: "foo-web",
        labels: &labels,
        host: "node-1",
    };
    let mut group = c.benchmark_group("log_json");
    // A pass over every record takes tens of milliseconds; fewer samples keep the run short.
    group.sample_size(30);
    group.throughput(Throughput::Elements(texts.len() as u64));

    let mut encoder = LogEncoder::new(&meta);
    let mut out = BytesMut::with_capacity(1 << 20);
    group.bench_function("encode", |b| {
        b.iter(|| {
            for (i, text) in texts.iter().enumerate() {
                out.clear();
                let time = BASE_NS + (i as i64 / 100) * 1_000_000_000 + i as i64 * 1000;
                encoder.encode_into(text, Stream::Stderr, time, &mut out);
                black_box(&out);
            }
        })
    });

    #[derive(serde::Serialize)]
    struct Docker<'a> {
        container_id: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Kubernetes<'a> {
        namespace_name: &'a str,
        pod_id: &'a str,
        pod_name: &'a str,
        container_name: &'a str,
        labels: std::collections::BTreeMap<&'a str, &'a str>,
        host: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Record<'a> {
        log: String,
        stream: &'a str,
        time: String,
        docker: Docker<'a>,
        kubernetes: Kubernetes<'a>,
    }
    let mut buf = Vec::with_capacity(1 << 20);
    group.bench_function("serde_json_baseline", |b| {
        b.iter(|| {
            for (i, text) in texts.iter().enumerate() {
                buf.clear();
                let time = BASE_NS + (i as i64 / 100) * 1_000_000_000 + i as i64 * 1000;
                let mut t = String::new();
                logmill::timefmt::format_rfc3339_micros(time, &mut t);
                let record = Record {
                    log: format!("{}\n", String::from_utf8_lossy(text)),
                    stream: "stderr",
                    time: t,
                    docker: Docker { container_id: meta.container_id },
                    kubernetes: Kubernetes {
                        namespace_name: meta.namespace_name,
                        pod_id: meta.pod_id,
                        pod_name: meta.pod_name,
                        container_name: meta.container_name,
                        labels: labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                        host: meta.host,
                    },
                };
                serde_json::to_writer(&mut buf, &record).expect("serialises");
                black_box(&buf);
            }
        })
    });

    let messages: Vec<Vec<u8>> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut out = BytesMut::new();
            encoder.encode_into(text, Stream::Stdout, BASE_NS + i as i64, &mut out);
            out.to_vec()
        })
        .collect();
    group.bench_function("decode", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(decode_log_record(m).expect("valid"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

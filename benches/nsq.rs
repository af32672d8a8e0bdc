//! NSQ publish and consume throughput, the shape of nsqd's own `bench/bench_writer` (MPUB of
//! 200 messages of 200 bytes) and `bench_reader` (RDY 2500).
//!
//! ```text
//! cargo bench --bench nsq                                   # a real nsqd of its own
//! NSQD_TCP_ADDRESS=127.0.0.1:4150 NSQD_HTTP_ADDRESS=127.0.0.1:4151 cargo bench --bench nsq
//! NSQ_BENCH_MESSAGES=1000000 cargo bench --bench nsq        # more messages
//! ```
//!
//! Without `NSQD_TCP_ADDRESS` it starts a real nsqd as the tests do (`tests/support/nsqd.rs`:
//! `$NSQD`, `PATH`, `../shared/peers/bin/`), or, without one, the in-process test broker (and
//! says so). `benches/nsq-vs-go` runs it against the nsqd it also runs go-nsq's tools against.
//!
//! One producer (one connection) publishes N messages as MPUBs of 200, pipelined; then one
//! consumer with `max_in_flight` 2500 receives and FINishes all of them. Each phase prints
//! msgs/s and MB/s, and a last `RESULT` line the figures for scripts.

#[path = "../tests/support/nsq_broker.rs"]
mod nsq_broker;
#[path = "../tests/support/nsqd.rs"]
mod nsqd;

use std::time::{Duration, Instant};

use bytes::Bytes;
use logmill::nsq::consumer::{self, Consumer, ConsumerSettings};
use logmill::nsq::producer::{Producer, ProducerSettings};
use logmill::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MESSAGE_BYTES: usize = 200;
const BATCH: usize = 200;
const MAX_IN_FLIGHT: u32 = 2500;
/// The consume phase gives up when no 1000 messages arrive within this.
const STALL: Duration = Duration::from_secs(30);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it as a smoke test.
    let smoke = std::env::args().all(|a| a != "--bench");
    let n: usize = std::env::var("NSQ_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 200_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let mut _server = None;
    let (tcp, http, target) = match std::env::var("NSQD_TCP_ADDRESS") {
        Ok(tcp) => (tcp.clone(), std::env::var("NSQD_HTTP_ADDRESS").ok(), format!("nsqd {tcp}")),
        Err(_) => {
            // nsqd's own bench runs it with a memory queue large enough for the whole run.
            let options = nsqd::NsqdOptions {
                mem_queue_size: Some(n.max(10_000) as u64),
                data_on_tmpfs: true,
                ..nsqd::NsqdOptions::default()
            };
            let s = nsqd::NsqServer::start(options).await;
            let target = if s.is_real() {
                format!("nsqd {} (started here)", s.tcp_addr())
            } else {
                "in-process test broker".to_owned()
            };
            let addrs = (s.tcp_addr(), Some(s.http_addr()), target);
            _server = Some(s);
            addrs
        }
    };
    let topic = std::env::var("NSQ_BENCH_TOPIC").unwrap_or_else(|_| {
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("bench_{stamp}")
    });
    let channel = "bench";
    if let Some(http) = &http {
        consumer::create_topic_and_channel(
            std::slice::from_ref(http),
            &topic,
            channel,
            Duration::from_secs(5),
        )
        .await
        .expect("create topic and channel");
    } else {
        // nsqd keeps a topic's messages while it has no channel and hands them to the first
        // channel created: the topic is new, so the SUB after publishing misses nothing.
        eprintln!("NSQD_HTTP_ADDRESS not set: the channel is created by the SUB after publishing (the new topic keeps the messages until then)");
    }
    println!("nsq bench: {n} messages of {MESSAGE_BYTES} bytes against {target}");

    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let settings = ProducerSettings {
        addresses: vec![tcp.clone()],
        batch_max_messages: BATCH,
        queue_capacity: 1024,
        ..ProducerSettings::default()
    };
    let producer = Producer::start(settings, &telemetry, &tracker, cancel.clone());
    let body = Bytes::from(vec![b'a'; MESSAGE_BYTES]);
    let batch: Vec<Bytes> = (0..BATCH).map(|_| body.clone()).collect();

    let started = Instant::now();
    let mut acks = std::collections::VecDeque::new();
    let mut sent = 0;
    while sent < n {
        let count = BATCH.min(n - sent);
        acks.push_back(producer.submit_multi(&topic, batch[..count].to_vec()).await.expect("queued"));
        sent += count;
        // Keep a bounded window of answers outstanding, as the pipeline does.
        if acks.len() >= 64 {
            if let Some(a) = acks.pop_front() {
                a.await.expect("published");
            }
        }
    }
    for a in acks {
        a.await.expect("published");
    }
    let publish_rate = report("publish (1 connection, MPUB of 200, pipelined)", n, started.elapsed());

    let settings = ConsumerSettings {
        topic: topic.clone(),
        channel: channel.into(),
        max_in_flight: MAX_IN_FLIGHT,
        ..ConsumerSettings::default()
    };
    let started = Instant::now();
    let (consumer, mut deliveries) = Consumer::start(
        settings,
        consumer::fixed_addresses([tcp]),
        None,
        &telemetry,
        &tracker,
        cancel.clone(),
    )
    .expect("consumer settings");
    let mut received = 0;
    // One stall timer, pushed back every 1000 messages: a timeout per message would put a
    // timer in and out of tokio's wheel a million times, work the go-nsq reader does not do.
    let stall = tokio::time::sleep(STALL);
    tokio::pin!(stall);
    while received < n {
        tokio::select! {
            d = deliveries.recv() => match d {
                Some(d) => {
                    d.finish().await;
                    received += 1;
                    if received % 1000 == 0 {
                        stall.as_mut().reset(tokio::time::Instant::now() + STALL);
                    }
                }
                None => break,
            },
            _ = &mut stall => break,
        }
    }
    if received < n {
        eprintln!("consumer stalled after {received} messages");
    }
    let consume_rate = report("consume (1 connection, RDY 2500, FIN each)", received, started.elapsed());
    println!("RESULT messages={n} consumed={received} publish_msgs_per_s={publish_rate:.0} consume_msgs_per_s={consume_rate:.0}");
    consumer.stop();
    while let Some(d) = deliveries.recv().await {
        d.finish().await;
    }
    consumer.stopped().await;
    cancel.cancel();
    drop(producer);
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

/// Prints one phase's figures and returns its msgs/s.
fn report(what: &str, n: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = n as f64 / secs;
    println!(
        "{what}: {n} msgs in {secs:.3} s = {rate:.0} msgs/s, {:.1} MB/s",
        (n * MESSAGE_BYTES) as f64 / secs / 1e6
    );
    rate
}

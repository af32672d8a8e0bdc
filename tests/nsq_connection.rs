//! Connection timeouts against a real nsqd (`tests/support/nsqd.rs`; the test broker where
//! none is installed): a quiet spell longer than the write timeout must not make the next
//! command look late (a defect found in review: the write deadline ran from the last completed
//! write, so it had already passed when a publish was queued).
//!
//! The rule itself (`write_deadline`) has a deterministic unit test in `src/nsq/connection.rs`;
//! this test checks it end to end. It depends on no time window: each quiet spell is measured
//! (at least three write timeouts since the last answer), and a write to a server that reads
//! makes progress at once, however loaded the machine.

mod support;

use std::time::{Duration, Instant};

use logmill::nsq::producer::{Producer, ProducerSettings};
use logmill::telemetry::Telemetry;
use support::nsqd::NsqServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WRITE_TIMEOUT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn quiet_spells_longer_than_the_write_timeout_keep_the_connection() {
    let server = NsqServer::start_default().await;
    let mut settings = ProducerSettings { addresses: vec![server.tcp_addr()], ..ProducerSettings::default() };
    // Heartbeats far apart (nothing else to read or write meanwhile), a short write timeout,
    // and publishes spaced wider than it.
    settings.connection.heartbeat_interval = Some(Duration::from_secs(30));
    settings.connection.write_timeout = WRITE_TIMEOUT;
    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let producer = Producer::start(settings, &telemetry, &tracker, cancel.clone());
    let mut last_answer: Option<Instant> = None;
    for i in 0..10 {
        if let Some(at) = last_answer {
            // Sleeping can only make the spell longer than asked, never shorter.
            tokio::time::sleep((at + 3 * WRITE_TIMEOUT).saturating_duration_since(Instant::now())).await;
            assert!(at.elapsed() > 3 * WRITE_TIMEOUT);
        }
        let publish = producer.publish("quiet", format!("m{i}"));
        tokio::time::timeout(Duration::from_secs(10), publish).await.unwrap().unwrap();
        last_answer = Some(Instant::now());
    }
    let stats = server.stats().await;
    assert_eq!(stats.topic("quiet").map(|t| t.message_count), Some(10), "{stats:?}");
    let metrics = telemetry.render_prometheus();
    let reconnects: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("logmill_nsq_reconnects_total")
                || l.starts_with("logmill_nsq_connection_errors_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(reconnects, 0, "the connection was dropped:\n{metrics}");
    cancel.cancel();
}

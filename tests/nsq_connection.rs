//! Connection timeouts against the test broker: a quiet spell longer than the write timeout
//! must not make the next command look late (a defect found in review: the write deadline ran
//! from the last completed write, so it had already passed when a publish was queued).

mod support;

use std::time::Duration;

use logmill::nsq::producer::{Producer, ProducerSettings};
use logmill::telemetry::Telemetry;
use support::nsq_broker::{NsqBroker, NsqBrokerOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test]
async fn quiet_spells_longer_than_the_write_timeout_keep_the_connection() {
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut settings =
        ProducerSettings { addresses: vec![broker.tcp_addr().to_string()], ..ProducerSettings::default() };
    // Heartbeats far apart, a short write timeout, and publishes spaced wider than it.
    settings.connection.heartbeat_interval = Some(Duration::from_secs(30));
    settings.connection.write_timeout = Duration::from_millis(50);
    let telemetry = Telemetry::default();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let producer = Producer::start(settings, &telemetry, &tracker, cancel.clone());
    for i in 0..25 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let publish = producer.publish("quiet", format!("m{i}"));
        tokio::time::timeout(Duration::from_secs(10), publish).await.unwrap().unwrap();
    }
    assert_eq!(broker.published("quiet").len(), 25);
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

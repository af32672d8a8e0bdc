//! The NSQ client (connection, producer, consumer) against a real nsqd, started by
//! `tests/support/nsqd.rs` (the in-process test broker where none is installed, said once):
//! PUB/MPUB/DPUB round trips, failover, handler backoff, slow handlers and heartbeats, a
//! changing set of nsqd, graceful stop, giving up, backoff probes. What they check on the
//! server they read from nsqd's `/stats`, which the broker also serves.
//!
//! Tests that need what only the broker can do say why where they start it: injected faults
//! (connections dropped mid-MPUB, stalled reads, error frames) and the broker's own records
//! (the high-water mark of RDY across connections).

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use logmill::nsq::connection::ConnectionSettings;
use logmill::nsq::consumer::{self, Consumer, ConsumerSettings, Delivery};
use logmill::nsq::producer::{Producer, ProducerSettings, PublishError};
use logmill::nsq::protocol::ErrorCode;
use logmill::telemetry::Telemetry;
use support::nsq_broker::{NsqBroker, NsqBrokerOptions};
use support::nsqd::{self, NsqServer, Nsqd, NsqdOptions};
use support::{eventually, eventually_async};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TEST_TIMEOUT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(10);

/// A real nsqd (or the broker in its place) with nsqd's defaults.
async fn server() -> NsqServer {
    NsqServer::start_default().await
}

/// The in-process test broker, for the tests that need what only it can do.
async fn broker() -> NsqBroker {
    NsqBroker::start(NsqBrokerOptions::default()).await
}

fn producer_settings(addrs: &[String]) -> ProducerSettings {
    ProducerSettings {
        addresses: addrs.to_vec(),
        connection: fast_connection(),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ProducerSettings::default()
    }
}

fn fast_connection() -> ConnectionSettings {
    ConnectionSettings { dial_timeout: Duration::from_secs(2), ..ConnectionSettings::default() }
}

fn consumer_settings(topic: &str, max_in_flight: u32) -> ConsumerSettings {
    ConsumerSettings {
        topic: topic.into(),
        channel: "logmill".into(),
        connection: fast_connection(),
        max_in_flight,
        reconnect_backoff_initial: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        handler_backoff_initial: Duration::from_millis(200),
        handler_backoff_max: Duration::from_secs(1),
        rdy_rotate_interval: Duration::from_millis(100),
        probe_idle_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(2),
        ..ConsumerSettings::default()
    }
}

struct Running {
    consumer: Consumer,
    deliveries: mpsc::Receiver<Delivery>,
    tracker: TaskTracker,
}

fn start_consumer(settings: ConsumerSettings, addrs: watch::Receiver<BTreeSet<String>>) -> Running {
    let tracker = TaskTracker::new();
    let (consumer, deliveries) =
        Consumer::start(settings, addrs, None, &Telemetry::default(), &tracker, CancellationToken::new())
            .expect("valid consumer settings");
    Running { consumer, deliveries, tracker }
}

/// Finishes every delivery, recording bodies, until `stop` says so or the channel ends.
fn spawn_finisher(
    mut deliveries: mpsc::Receiver<Delivery>,
) -> (Arc<Mutex<Vec<Bytes>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handle = tokio::spawn(async move {
        while let Some(d) = deliveries.recv().await {
            s.lock().unwrap().push(d.body().clone());
            d.finish().await;
        }
    });
    (seen, handle)
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!("message-{i:06}"))
}

/// Connections subscribed to `topic`/logmill, from the server's /stats.
async fn subscribers(server: &NsqServer, topic: &str) -> usize {
    server.stats().await.clients(topic, "logmill").len()
}

/// The sum of RDY on `topic`/logmill, from the server's /stats.
async fn total_rdy(server: &NsqServer, topic: &str) -> i64 {
    server.stats().await.total_rdy(topic, "logmill")
}

/// The bytes of `PUB topic\n` with `body`, as the producer writes it.
fn pub_bytes(topic: &str, body: &[u8]) -> usize {
    let mut b = bytes::BytesMut::new();
    logmill::nsq::protocol::encode_pub(topic, body, &mut b).unwrap();
    b.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_consumes_pub_mpub_dpub() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        let topic = "roundtrip";
        let tracker = TaskTracker::new();
        let producer = Producer::start(
            producer_settings(&[s.tcp_addr()]),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        );
        let mut settings = consumer_settings(topic, 50);
        settings.create_on = vec![s.http_addr()];
        // The channel must exist before publishing: create it (HTTP) before the SUB.
        consumer::create_topic_and_channel(&[s.http_addr()], topic, "logmill", WAIT).await.unwrap();
        let run = start_consumer(settings, consumer::fixed_addresses([s.tcp_addr()]));
        let mut acks = Vec::new();
        for i in 0..300 {
            acks.push(producer.submit(topic, body(i)).await.unwrap());
        }
        let multi: Vec<Bytes> = (300..400).map(body).collect();
        producer.publish_multi(topic, multi).await.unwrap();
        producer.publish_deferred(topic, Duration::from_millis(100), body(400)).await.unwrap();
        for a in acks {
            a.await.unwrap();
        }
        let (seen, _h) = spawn_finisher(run.deliveries);
        eventually(WAIT, "all 401 messages consumed", || {
            seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == 401
        })
        .await;
        let got: HashSet<Bytes> = seen.lock().unwrap().iter().cloned().collect();
        assert_eq!(got, (0..401).map(body).collect::<HashSet<_>>());
        let stats = s.stats().await;
        assert_eq!(stats.topic(topic).map(|t| t.message_count), Some(401), "{stats:?}");
        assert!(stats.producers.iter().any(|c| c.user_agent.starts_with("logmill/")), "{stats:?}");
        assert!(stats.clients(topic, "logmill").iter().all(|c| c.user_agent.starts_with("logmill/")));
        run.consumer.stop();
        run.consumer.stopped().await;
        drop(run.tracker);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_lost_when_the_broker_restarts_during_a_sustained_publish() {
    timeout(TEST_TIMEOUT, async {
        // The broker: it drops connections mid-MPUB and right after committing one, which no
        // real nsqd can be made to do. A real nsqd SIGKILLed and restarted during a sustained
        // publish is `no_message_lost_when_nsqd_is_killed_during_a_sustained_publish`.
        let b = broker().await;
        let addr = b.tcp_addr().to_string();
        let topic = "sustained";
        b.create_channel(topic, "logmill");
        let tracker = TaskTracker::new();
        let producer_telemetry = Telemetry::default();
        let producer = Producer::start(
            producer_settings(std::slice::from_ref(&addr)),
            &producer_telemetry,
            &tracker,
            CancellationToken::new(),
        );
        let mut settings = consumer_settings(topic, 100);
        // Messages written to the consumer but unread when its connection drops stay in flight
        // on the broker until their msg_timeout (60 s by default), longer than this test.
        settings.connection.msg_timeout = Some(Duration::from_secs(1));
        let consumer_telemetry = Telemetry::default();
        let tracker_c = TaskTracker::new();
        let (consumer, deliveries) = Consumer::start(
            settings,
            consumer::fixed_addresses([addr.clone()]),
            None,
            &consumer_telemetry,
            &tracker_c,
            CancellationToken::new(),
        )
        .unwrap();
        let (seen, _h) = spawn_finisher(deliveries);
        const N: usize = 6000;
        let publisher = {
            let producer = producer.clone();
            tokio::spawn(async move {
                let mut acks = Vec::with_capacity(N);
                for i in 0..N {
                    acks.push(producer.submit(topic, body(i)).await.expect("queued"));
                    if i % 500 == 0 {
                        // Sustained, not one burst.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let mut results = Vec::with_capacity(N);
                for a in acks {
                    results.push(a.await);
                }
                results
            })
        };
        let reconnects = |t: &Telemetry, role: &str| {
            t.value("logmill_nsq_reconnects_total", &[("role", role)]).expect("registered at start")
        };
        eventually(WAIT, "some published", || b.published_count(topic) > 1000).await;
        b.drop_connections_mid_mpub(1);
        b.drop_connections_after_mpub(1);
        eventually(WAIT, "more published", || b.published_count(topic) > 2500).await;
        // Both MPUB faults closed the producer's connection (or the test injected nothing).
        eventually(WAIT, "the MPUB faults fired", || reconnects(&producer_telemetry, "producer") >= 2).await;
        b.restart(Duration::from_millis(200)).await;
        eventually(WAIT, "more published after restart", || b.published_count(topic) > 4000).await;
        eventually(WAIT, "the producer reconnected after the restart", || {
            reconnects(&producer_telemetry, "producer") >= 3
        })
        .await;
        eventually(WAIT, "the consumer reconnected after the restart", || {
            reconnects(&consumer_telemetry, "consumer") >= 1
        })
        .await;
        let consumer_reconnects = reconnects(&consumer_telemetry, "consumer");
        b.drop_all_connections();
        eventually(WAIT, "the consumer reconnected after the drop", || {
            reconnects(&consumer_telemetry, "consumer") > consumer_reconnects
        })
        .await;
        let results = publisher.await.unwrap();
        assert!(
            results.iter().all(Result::is_ok),
            "every publish ends Ok: {:?}",
            results.iter().find(|r| r.is_err())
        );
        let published: HashSet<Bytes> = b.published(topic).into_iter().collect();
        assert_eq!(published.len(), N, "the broker holds every message at least once");
        eventually(WAIT, "every body consumed", || {
            seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == N
        })
        .await;
        let dups = b.published_count(topic) - N;
        println!("published {N}, stored {} (duplicates from unseen OKs: {dups})", b.published_count(topic));
        consumer.stop();
        consumer.stopped().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_fails_only_its_publish_and_the_pipelined_rest_are_retried() {
    timeout(TEST_TIMEOUT, async {
        // The broker: it holds its reads and fails a publish on demand. A real nsqd's own
        // refusal (a body over --max-msg-size) is `a_body_over_max_msg_size_is_refused_…`.
        let b = broker().await;
        let addr = b.tcp_addr().to_string();
        let tracker = TaskTracker::new();
        // One PUB per publish, so many are pipelined behind the one that fails.
        let settings = ProducerSettings { batch_max_messages: 1, ..producer_settings(&[addr]) };
        let producer = Producer::start(settings, &Telemetry::default(), &tracker, CancellationToken::new());
        producer.publish("pipelined", "warm-up").await.unwrap();
        // Hold the broker's reads until all 50 PUBs below have arrived, so every one is
        // written before the first answer.
        b.hold_reads();
        b.fail_next_publishes(1, "E_BAD_TOPIC PUB topic name \"pipelined\" is not valid");
        let mut acks = Vec::new();
        for i in 0..50 {
            acks.push(producer.submit("pipelined", body(i)).await.unwrap());
        }
        let pipelined = 50 * pub_bytes("pipelined", &body(0));
        eventually(WAIT, "all 50 PUBs at the broker", || {
            b.clients().iter().any(|c| c.unread_bytes >= pipelined)
        })
        .await;
        b.release_reads();
        let mut results = Vec::new();
        for a in acks {
            results.push(a.await);
        }
        assert!(
            matches!(&results[0], Err(PublishError::Rejected { code: ErrorCode::BadTopic, .. })),
            "the head of the FIFO gets the error: {:?}",
            results[0]
        );
        assert!(results[1..].iter().all(Result::is_ok), "{results:?}");
        let published: HashSet<Bytes> = b.published("pipelined").into_iter().collect();
        for i in 1..50 {
            assert!(published.contains(&body(i)), "message {i} retried and stored");
        }
        assert!(!published.contains(&body(0)));

        // A retryable server-side failure (the topic was exiting) is retried, not failed.
        b.fail_next_publishes(1, "E_PUB_FAILED PUB failed exiting");
        producer.publish("pipelined", "after-pub-failed").await.unwrap();
        assert!(b.published("pipelined").contains(&Bytes::from_static(b"after-pub-failed")));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_when_an_unexplained_fatal_error_arrives_all_end_ok() {
    timeout(TEST_TIMEOUT, async {
        // The broker: it holds its reads and injects an error frame.
        let b = broker().await;
        let addr = b.tcp_addr().to_string();
        let tracker = TaskTracker::new();
        let telemetry = Telemetry::default();
        // One PUB per message, so the pipeline holds many commands (up to max_pipelined).
        let settings = ProducerSettings { batch_max_messages: 1, ..producer_settings(&[addr]) };
        let producer = Producer::start(settings, &telemetry, &tracker, CancellationToken::new());
        let retries =
            || telemetry.value("logmill_nsq_publish_retries_total", &[]).expect("registered at start");
        const N: usize = 3000;
        let submitted = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let producer = producer.clone();
            let submitted = submitted.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..N {
                    acks.push(producer.submit("errors", body(i)).await.unwrap());
                    submitted.store(i + 1, Ordering::SeqCst);
                    if i % 100 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                let mut out = Vec::new();
                for a in acks {
                    out.push(a.await);
                }
                out
            })
        };
        eventually(WAIT, "publishing", || b.published_count("errors") > 500).await;
        // Hold the broker's reads: what the producer writes from now on waits, unanswered,
        // behind the error below, until its whole pipeline (max_pipelined PUBs) has arrived.
        b.hold_reads();
        let pipeline = ProducerSettings::default().max_pipelined;
        let pipelined = pipeline * pub_bytes("errors", &body(0));
        eventually(WAIT, "the producer's whole pipeline at the broker", || {
            b.clients().iter().any(|c| c.unread_bytes >= pipelined)
        })
        .await;
        assert_eq!(retries(), 0, "no fault before the error");
        assert!(b.inject_error("E_INVALID injected") >= 1);
        b.release_reads();
        let results = publisher.await.unwrap();
        assert!(results.iter().all(Result::is_ok));
        let published: HashSet<Bytes> = b.published("errors").into_iter().collect();
        assert_eq!(published.len(), N);
        // The producer's whole pipeline (written, unanswered, never read) was resent.
        assert!(retries() >= pipeline as u64, "publishes pipelined behind the error: {}", retries());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_nsqd() {
    timeout(TEST_TIMEOUT, async {
        let mut a = server().await;
        let b = server().await;
        let tracker = TaskTracker::new();
        let producer = Producer::start(
            producer_settings(&[a.tcp_addr(), b.tcp_addr()]),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        );
        producer.publish("failover", "one").await.unwrap();
        assert_eq!(a.stats().await.topic("failover").map(|t| t.message_count), Some(1));
        a.stop().await;
        producer.publish("failover", "two").await.unwrap();
        assert_eq!(b.stats().await.topic("failover").map(|t| t.message_count), Some(1));
        let run = start_consumer(consumer_settings("failover", 1), consumer::fixed_addresses([b.tcp_addr()]));
        let mut deliveries = run.deliveries;
        let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        assert_eq!(d.body().as_ref(), b"two");
        d.finish().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdy_never_exceeds_max_in_flight_across_connections() {
    timeout(TEST_TIMEOUT, async {
        // The broker: it records the highest sum of RDY and of messages in flight it ever saw
        // on a channel; polling a real nsqd's /stats could miss a short excess.
        let b = broker().await;
        let port = b.tcp_addr().port();
        // Two names of one broker: two connections whose RDY the broker sums per channel.
        let addrs = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        for i in 0..400 {
            b.put("rdy", body(i));
        }
        b.create_channel("rdy", "logmill");
        // The first connection alone fills its window (7 in flight, unread); then the second
        // joins. Lowering the first one's RDY does not take those 7 back: the second must get
        // nothing until they are finished.
        let (addr_tx, addr_rx) = watch::channel(BTreeSet::from([addrs[0].clone()]));
        let run = start_consumer(consumer_settings("rdy", 7), addr_rx);
        eventually(WAIT, "7 in flight on the first connection", || {
            b.channel("rdy", "logmill").unwrap().in_flight == 7
        })
        .await;
        addr_tx.send_replace(addrs.iter().cloned().collect());
        eventually(WAIT, "both subscribed", || b.channel("rdy", "logmill").unwrap().clients == 2).await;
        // Several ticks: time for a wrongly freed share to be handed to the second connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.channel("rdy", "logmill").unwrap().max_in_flight <= 7);
        let mut deliveries = run.deliveries;
        let mut n = 0;
        while n < 400 {
            let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            if n % 50 == 0 {
                // Let RDY settle across both connections now and then.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            d.finish().await;
            n += 1;
        }
        let ch = b.channel("rdy", "logmill").unwrap();
        assert!(ch.max_total_rdy <= 7, "max total RDY {} > 7", ch.max_total_rdy);
        assert!(ch.max_in_flight <= 7, "max in flight {}", ch.max_in_flight);
        assert_eq!(ch.clients, 2);
        let per_conn: Vec<u64> = b.clients().iter().map(|c| c.message_count).collect();
        assert!(per_conn.iter().all(|&m| m > 0), "both connections got messages: {per_conn:?}");

        // More connections than max_in_flight: RDY 1 rotates; the sum stays at most 1.
        let b2 = broker().await;
        let port = b2.tcp_addr().port();
        for i in 0..60 {
            b2.put("rotate", body(i));
        }
        b2.create_channel("rotate", "logmill");
        let addrs = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        let run = start_consumer(consumer_settings("rotate", 1), consumer::fixed_addresses(addrs));
        let mut deliveries = run.deliveries;
        for _ in 0..60 {
            let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            // A handler slow enough for RDY to rotate (every 100 ms) a few times.
            tokio::time::sleep(Duration::from_millis(8)).await;
            d.finish().await;
        }
        let ch = b2.channel("rotate", "logmill").unwrap();
        assert!(ch.max_total_rdy <= 1, "max total RDY {}", ch.max_total_rdy);
        let per_conn: Vec<u64> = b2.clients().iter().map(|c| c.message_count).collect();
        assert!(
            per_conn.len() == 2 && per_conn.iter().all(|&m| m > 0),
            "rotation reached both: {per_conn:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_backs_off_to_rdy_0_probes_with_1_and_resumes() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        s.put("backoff", &(0..50).map(body).collect::<Vec<_>>()).await;
        s.create_channel("backoff", "logmill").await;
        let mut settings = consumer_settings("backoff", 10);
        // RDY 0 lasts 0.75..1.25 s: long enough to be seen by polling on a loaded machine.
        settings.handler_backoff_initial = Duration::from_secs(1);
        settings.handler_backoff_max = Duration::from_secs(2);
        let run = start_consumer(settings, consumer::fixed_addresses([s.tcp_addr()]));
        let mut deliveries = run.deliveries;
        let rdy = || async { s.stats().await.total_rdy("backoff", "logmill") };
        eventually_async(WAIT, "RDY 10", || async { rdy().await == 10 }).await;
        let first = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        first.requeue(Duration::ZERO).await;
        eventually_async(WAIT, "RDY 0 while backing off", || async { rdy().await == 0 }).await;
        eventually_async(WAIT, "a probe with RDY 1", || async { rdy().await == 1 }).await;
        // Finish everything delivered: the probe succeeds and full RDY comes back.
        let mut finished = 0;
        while rdy().await != 10 {
            if let Ok(Some(d)) = timeout(Duration::from_millis(50), deliveries.recv()).await {
                d.finish().await;
                finished += 1;
            }
        }
        assert!(finished >= 1);
        assert_eq!(s.stats().await.channel("backoff", "logmill").map(|c| c.requeue_count), Some(1));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_connection_heartbeats_answered() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        s.put("slow", &[Bytes::from_static(b"take your time")]).await;
        s.create_channel("slow", "logmill").await;
        let mut settings = consumer_settings("slow", 1);
        // nsqd drops a client silent for two heartbeat intervals: 2 s here.
        settings.connection.heartbeat_interval = Some(Duration::from_secs(1));
        let telemetry = Telemetry::default();
        let tracker = TaskTracker::new();
        let (_consumer, mut deliveries) = Consumer::start(
            settings,
            consumer::fixed_addresses([s.tcp_addr()]),
            None,
            &telemetry,
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        let clients = s.stats().await.clients("slow", "logmill");
        assert_eq!(clients.len(), 1);
        let client = clients[0].remote_address.clone();
        if let Some(b) = s.broker() {
            assert_eq!(b.clients()[0].heartbeat_interval, Some(Duration::from_secs(1)));
        }
        // The handler holds the message for three heartbeat intervals.
        tokio::time::sleep(Duration::from_millis(3200)).await;
        d.finish().await;
        eventually_async(WAIT, "FIN arrives", || async {
            s.stats().await.finish_count("slow", "logmill") == 1
        })
        .await;
        let clients = s.stats().await.clients("slow", "logmill");
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].remote_address, client, "same connection: heartbeats were answered");
        let reconnects = telemetry.value("logmill_nsq_reconnects_total", &[("role", "consumer")]);
        assert_eq!(reconnects, Some(0));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_disconnects_as_the_address_set_changes() {
    timeout(TEST_TIMEOUT, async {
        let a = server().await;
        let b = server().await;
        let (tx, rx) = watch::channel(BTreeSet::from([a.tcp_addr()]));
        // RDY from max_in_flight alone: with the byte budget, a consumer that has seen no
        // body yet takes bodies to be frame-sized and asks for 8 (the budget has its own test).
        let settings = ConsumerSettings { max_buffered_bytes: 0, ..consumer_settings("discovered", 10) };
        let run = start_consumer(settings, rx);
        eventually_async(WAIT, "subscribed to A", || async { subscribers(&a, "discovered").await == 1 })
            .await;
        assert_eq!(subscribers(&b, "discovered").await, 0);
        tx.send_replace(BTreeSet::from([a.tcp_addr(), b.tcp_addr()]));
        eventually_async(WAIT, "subscribed to B too", || async { subscribers(&b, "discovered").await == 1 })
            .await;
        eventually_async(WAIT, "RDY spread over both", || async {
            total_rdy(&a, "discovered").await == 5 && total_rdy(&b, "discovered").await == 5
        })
        .await;
        tx.send_replace(BTreeSet::from([b.tcp_addr()]));
        eventually_async(WAIT, "A dropped", || async { subscribers(&a, "discovered").await == 0 }).await;
        eventually_async(WAIT, "B gets all RDY", || async { total_rdy(&b, "discovered").await == 10 }).await;
        b.put("discovered", &[Bytes::from_static(b"via B")]).await;
        let mut deliveries = run.deliveries;
        let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        assert_eq!(d.body().as_ref(), b"via B");
        d.finish().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_loses_nothing() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        let topic = "graceful";
        s.create_channel(topic, "logmill").await;
        let tracker = TaskTracker::new();
        let producer = Producer::start(
            producer_settings(&[s.tcp_addr()]),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        );
        const N: usize = 500;
        producer.publish_multi(topic, (0..N).map(body).collect()).await.unwrap();
        let run = start_consumer(consumer_settings(topic, 50), consumer::fixed_addresses([s.tcp_addr()]));
        let mut deliveries = run.deliveries;
        let mut finished = Vec::new();
        let mut held = Vec::new();
        // Finish 100, then stop while 20 more are still being handled.
        while finished.len() < 100 {
            let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            finished.push(d.body().clone());
            d.finish().await;
        }
        for _ in 0..20 {
            held.push(timeout(WAIT, deliveries.recv()).await.unwrap().unwrap());
        }
        run.consumer.stop();
        // The handler finishes what it holds and what was already delivered, until the end.
        for d in held {
            finished.push(d.body().clone());
            d.finish().await;
        }
        while let Some(d) = timeout(WAIT, deliveries.recv()).await.unwrap() {
            finished.push(d.body().clone());
            d.finish().await;
        }
        timeout(WAIT, run.consumer.stopped()).await.unwrap();
        // A second consumer gets the rest; together: everything, nothing twice.
        let run2 = start_consumer(consumer_settings(topic, 50), consumer::fixed_addresses([s.tcp_addr()]));
        let (seen, _h) = spawn_finisher(run2.deliveries);
        let first = finished.len();
        eventually(WAIT, "the rest consumed", || first + seen.lock().unwrap().len() >= N).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut all = finished.clone();
        all.extend(seen.lock().unwrap().iter().cloned());
        let unique: HashSet<Bytes> = all.iter().cloned().collect();
        assert_eq!(unique.len(), N, "nothing lost");
        assert_eq!(all.len(), N, "nothing delivered twice after a clean stop");
        // And on the server: every message finished, none waiting, in flight or deferred.
        eventually_async(WAIT, "the channel empty", || async {
            let stats = s.stats().await;
            let ch = stats.channel(topic, "logmill").expect("the channel");
            (ch.depth, ch.in_flight_count, ch.deferred_count) == (0, 0, 0)
        })
        .await;
        assert_eq!(
            s.stats().await.finish_count(topic, "logmill"),
            (N - first) as u64,
            "the second consumer's FINs"
        );
        run2.consumer.stop();
        run2.consumer.stopped().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_attempts() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        s.put("poison", &[Bytes::from_static(b"never works")]).await;
        s.create_channel("poison", "logmill").await;
        let mut settings = consumer_settings("poison", 5);
        settings.max_attempts = 3;
        let given_up = Arc::new(AtomicUsize::new(0));
        let g = given_up.clone();
        let tracker = TaskTracker::new();
        let (_consumer, mut deliveries) = Consumer::start(
            settings,
            consumer::fixed_addresses([s.tcp_addr()]),
            Some(Arc::new(move |m: &logmill::nsq::protocol::Message| {
                assert_eq!(m.attempts, 4);
                g.fetch_add(1, Ordering::SeqCst);
            })),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        for attempt in 1..=3 {
            let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            assert_eq!(d.attempts(), attempt);
            d.requeue_without_backoff(Duration::ZERO).await;
        }
        eventually(WAIT, "given up", || given_up.load(Ordering::SeqCst) == 1).await;
        eventually_async(WAIT, "finished on nsqd", || async {
            let stats = s.stats().await;
            stats.finish_count("poison", "logmill") == 1
                && stats.channel("poison", "logmill").is_some_and(|c| c.depth + c.in_flight_count == 0)
        })
        .await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_probe_on_an_idle_nsqd_moves_to_the_next() {
    timeout(TEST_TIMEOUT, async {
        let a = server().await;
        let b = server().await;
        let addrs = [a.tcp_addr(), b.tcp_addr()];
        // Connections are ordered by address and the first probe goes to the second: the
        // messages go to the first, so the probe starts on the nsqd that has none.
        let (busy, idle) = if addrs[0] < addrs[1] { (&a, &b) } else { (&b, &a) };
        busy.create_channel("probe", "logmill").await;
        idle.create_channel("probe", "logmill").await;
        let mut settings = consumer_settings("probe", 2);
        // Long enough for the polling below to see the probe on the idle nsqd on a loaded
        // machine (two /stats calls a round); it moves on after that either way.
        settings.probe_idle_timeout = Duration::from_secs(2);
        let run = start_consumer(settings, consumer::fixed_addresses(addrs.clone()));
        let mut deliveries = run.deliveries;
        eventually_async(WAIT, "RDY 1 on each", || async {
            total_rdy(busy, "probe").await == 1 && total_rdy(idle, "probe").await == 1
        })
        .await;
        const N: usize = 20;
        busy.put("probe", &[body(0)]).await;
        let first = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        // A handler failure; the message comes back after the probe has started.
        first.requeue(Duration::from_millis(500)).await;
        eventually_async(WAIT, "the probe on the idle nsqd", || async {
            total_rdy(idle, "probe").await == 1 && total_rdy(busy, "probe").await == 0
        })
        .await;
        busy.put("probe", &(1..N).map(body).collect::<Vec<_>>()).await;
        let mut seen = HashSet::new();
        while seen.len() < N {
            let d = timeout(Duration::from_secs(5), deliveries.recv())
                .await
                .expect("the probe stalled on the idle nsqd")
                .unwrap();
            seen.insert(d.body().clone());
            d.finish().await;
        }
        assert_eq!(seen, (0..N).map(body).collect::<HashSet<_>>());
        eventually_async(WAIT, "every FIN on nsqd", || async {
            busy.stats().await.finish_count("probe", "logmill") == N as u64
        })
        .await;
        run.consumer.stop();
        timeout(WAIT, run.consumer.stopped()).await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_stops_the_consumer_and_gives_nothing_up() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        const N: usize = 20;
        s.put("orphan", &(0..N).map(body).collect::<Vec<_>>()).await;
        s.create_channel("orphan", "logmill").await;
        let mut settings = consumer_settings("orphan", 5);
        settings.max_attempts = 2;
        let given_up = Arc::new(AtomicUsize::new(0));
        let g = given_up.clone();
        let tracker = TaskTracker::new();
        let (consumer, mut deliveries) = Consumer::start(
            settings,
            consumer::fixed_addresses([s.tcp_addr()]),
            Some(Arc::new(move |_: &logmill::nsq::protocol::Message| {
                g.fetch_add(1, Ordering::SeqCst);
            })),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        // The application goes away without handling anything.
        drop(d);
        drop(deliveries);
        // Long enough for a requeue loop to run every message past max_attempts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(given_up.load(Ordering::SeqCst), 0, "nothing given up: no handler saw them");
        timeout(WAIT, consumer.stopped()).await.expect("the consumer stops once nobody receives");
        // Nothing FINished: once the consumer is gone, every message is still in the channel
        // (waiting, deferred, or in flight until its msg_timeout).
        eventually_async(WAIT, "the consumer's connection gone", || async {
            s.stats().await.clients("orphan", "logmill").is_empty()
        })
        .await;
        let stats = s.stats().await;
        let ch = stats.channel("orphan", "logmill").expect("the channel");
        assert_eq!(ch.depth + ch.in_flight_count + ch.deferred_count, N as i64, "{ch:?}");
        // Every message is still there for another consumer.
        let run = start_consumer(consumer_settings("orphan", 5), consumer::fixed_addresses([s.tcp_addr()]));
        let (seen, _h) = spawn_finisher(run.deliveries);
        eventually(WAIT, "every message consumed by the next consumer", || {
            seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == N
        })
        .await;
        eventually_async(WAIT, "every FIN on nsqd", || async {
            s.stats().await.finish_count("orphan", "logmill") == N as u64
        })
        .await;
        run.consumer.stop();
        run.consumer.stopped().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_give_up_hook_does_not_kill_the_connection() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        s.put("hook", &[Bytes::from_static(b"poison")]).await;
        s.create_channel("hook", "logmill").await;
        let mut settings = consumer_settings("hook", 5);
        settings.max_attempts = 1;
        let tracker = TaskTracker::new();
        let (_consumer, mut deliveries) = Consumer::start(
            settings,
            consumer::fixed_addresses([s.tcp_addr()]),
            Some(Arc::new(|_: &logmill::nsq::protocol::Message| panic!("the hook fails"))),
            &Telemetry::default(),
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        let client = s.stats().await.clients("hook", "logmill")[0].remote_address.clone();
        d.requeue_without_backoff(Duration::ZERO).await;
        // The second delivery is over max_attempts: the hook panics, the message is finished.
        eventually_async(WAIT, "finished after the hook", || async {
            s.stats().await.finish_count("hook", "logmill") == 1
        })
        .await;
        s.put("hook", &[Bytes::from_static(b"next")]).await;
        let d = timeout(WAIT, deliveries.recv()).await.expect("the connection still delivers").unwrap();
        assert_eq!(d.body().as_ref(), b"next");
        d.finish().await;
        let clients = s.stats().await.clients("hook", "logmill");
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].remote_address, client, "same connection");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_the_channel_tries_every_nsqd() {
    timeout(TEST_TIMEOUT, async {
        let s = server().await;
        // A port nothing listens on (bound, then closed), first.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let result =
            consumer::create_topic_and_channel(&[dead, s.http_addr()], "created", "logmill", WAIT).await;
        assert!(result.is_err(), "the dead nsqd is reported");
        assert!(s.stats().await.channel("created", "logmill").is_some(), "the live nsqd got its channel");
    })
    .await
    .expect("test timed out");
}

/// The nsqd harness itself (`tests/support/nsqd.rs`): SIGKILL leaves no process, a restart on
/// the data dir comes back on the same port with what nsqd had written, and dropping it kills
/// the process and removes its temp dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nsqd_harness_kills_restarts_and_cleans_up() {
    // The disk queue only (no memory queue), its metadata written after every message: without
    // --sync-every=1 a SIGKILL within nsqd's first 2 s (--sync-timeout) finds no metadata file,
    // and the restarted nsqd starts the queue afresh over the unsynced messages.
    let options = NsqdOptions {
        mem_queue_size: Some(0),
        sync_every: Some(1),
        data_on_tmpfs: true,
        ..NsqdOptions::default()
    };
    let Some(mut nsqd) = Nsqd::start(options).await else {
        return nsqd::skip("the_nsqd_harness_kills_restarts_and_cleans_up", "nsqd");
    };
    let bodies: Vec<Bytes> = (0..3).map(body).collect();
    nsqd.put("harness", &bodies).await;
    // nsqd answers before it syncs: wait for the queue's metadata (depth on its first line) to
    // say 3, as a SIGKILL in between would leave the restarted nsqd fewer, and for its own
    // metadata to list the topic, which it writes from another goroutine (a kill before that
    // once left the restarted nsqd without the topic at all).
    let meta = nsqd.dir().join("data/harness.diskqueue.meta.dat");
    let topics = nsqd.dir().join("data/nsqd.dat");
    eventually(WAIT, "nsqd synced the queue's and its own metadata", || {
        std::fs::read_to_string(&meta).is_ok_and(|m| m.lines().next() == Some("3"))
            && std::fs::read_to_string(&topics).is_ok_and(|t| t.contains("\"harness\""))
    })
    .await;
    let tcp = nsqd.tcp_addr();
    let pid = nsqd.pid().expect("running");
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(pid));
    nsqd.kill();
    assert!(!alive(pid), "nsqd {pid} still exists after kill");
    assert!(std::net::TcpStream::connect(tcp).is_err(), "nothing listens on {tcp} after kill");
    nsqd.restart().await;
    assert_eq!(nsqd.tcp_addr(), tcp);
    std::net::TcpStream::connect(tcp).expect("nsqd listens on the same port again");
    // With --mem-queue-size=0 the messages were in the disk queue, which the restart reads.
    assert_eq!(nsqd.stats().await.topic("harness").map(|t| t.depth), Some(3), "{}", nsqd.log_tail());
    let (pid, dir) = (nsqd.pid().expect("running again"), nsqd.dir().to_owned());
    drop(nsqd);
    assert!(!alive(pid), "nsqd {pid} outlived its harness");
    assert!(!dir.exists(), "{} outlived its harness", dir.display());
}

/// Writes a line to stderr, which libtest does not capture: figures a test reports.
fn report(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A real nsqd SIGKILLed twice and restarted on its data dir during a sustained publish:
/// every publish ends Ok, every body reaches the consumer, the duplicates are counted.
///
/// nsqd's flags make an `OK` survive the death of the process: `--mem-queue-size=0` sends
/// every message to the disk queue, which nsqd writes (write(2), into the kernel's page cache,
/// which outlives the process) before it answers; `--sync-every=1` makes it fsync the queue and
/// write its metadata (read and write positions) after every message, so the restarted nsqd
/// finds its queues described up to the last message or so (go-diskqueue v1.1.0 salvages what
/// lies past a stale write position). Without it, a kill within nsqd's first `--sync-timeout`
/// (2 s) finds no metadata, and the restarted nsqd starts the queue afresh over the unsynced
/// messages (`the_nsqd_harness_kills_restarts_and_cleans_up` shows it). nsqd answers before
/// that sync, so an OK is durable against a killed nsqd, not against a power loss. The data dir
/// is on tmpfs, where the fsyncs cost nothing.
///
/// The channel is created, and consuming starts, once publishing has ended: what is under test
/// is that every acknowledged message is in nsqd's queue, and two windows of nsqd itself would
/// blur it. Its topic pump holds each message in memory between the topic's disk queue (whose
/// read position it has already synced) and the channel's: a SIGKILL there loses it (seen: 2
/// of 20,000 in one run of five, with a channel in place during the kills). And messages in
/// flight to a consumer live only in nsqd's memory. Without a channel the topic keeps every
/// message in its own disk queue, and the first channel created gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_lost_when_nsqd_is_killed_during_a_sustained_publish() {
    const TEST: &str = "no_message_lost_when_nsqd_is_killed_during_a_sustained_publish";
    let options = NsqdOptions {
        mem_queue_size: Some(0),
        sync_every: Some(1),
        data_on_tmpfs: true,
        ..NsqdOptions::default()
    };
    let Some(mut nsqd) = Nsqd::start(options).await else { return nsqd::skip(TEST, "nsqd") };
    timeout(Duration::from_secs(60), async {
        let addr = nsqd.tcp_addr().to_string();
        let topic = "killed";
        let client = reqwest::Client::new();
        let http = nsqd.http_addr().to_string();
        logmill::nsq::http::create_topic_and_channel(&client, &http, topic, None).await.unwrap();
        let tracker = TaskTracker::new();
        let telemetry = Telemetry::default();
        let producer =
            Producer::start(producer_settings(std::slice::from_ref(&addr)), &telemetry, &tracker, CancellationToken::new());
        const N: usize = 20_000;
        let publisher = {
            let producer = producer.clone();
            tokio::spawn(async move {
                let mut acks = Vec::with_capacity(N);
                for i in 0..N {
                    acks.push(producer.submit(topic, body(i)).await.expect("queued"));
                    if i % 200 == 0 {
                        // Sustained, not one burst.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                let mut results = Vec::with_capacity(N);
                for a in acks {
                    results.push(a.await);
                }
                results
            })
        };
        let counter = |name: &str, labels: &[(&str, &str)]| telemetry.value(name, labels).expect("registered at start");
        let acknowledged = || counter("logmill_nsq_messages_published_total", &[]);
        for at in [N / 3, 2 * N / 3] {
            eventually(WAIT, "publishing", || acknowledged() >= at as u64).await;
            // Pipelined MPUBs are in flight now: their fate is unknown to the producer.
            nsqd.kill();
            // Down for a while: the producer's dials are refused and it backs off.
            tokio::time::sleep(Duration::from_millis(300)).await;
            nsqd.restart().await;
        }
        let results = publisher.await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
        assert!(acknowledged() >= N as u64);

        logmill::nsq::http::create_topic_and_channel(&client, &http, topic, Some("logmill")).await.unwrap();
        let run = start_consumer(consumer_settings(topic, 500), consumer::fixed_addresses([addr.clone()]));
        let (seen, _h) = spawn_finisher(run.deliveries);
        let all = || seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == N;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while !all() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !all() {
            let got: HashSet<Bytes> = seen.lock().unwrap().iter().cloned().collect();
            let missing: Vec<usize> = (0..N).filter(|&i| !got.contains(&body(i))).collect();
            panic!(
                "{} bodies never consumed, e.g. {:?}; stats {:?}\nnsqd log:\n{}",
                missing.len(),
                &missing[..missing.len().min(20)],
                nsqd.stats().await,
                nsqd.log_tail()
            );
        }
        // Duplicates still queued are delivered too before they are counted.
        eventually_async(WAIT, "the channel drained", || async {
            let stats = nsqd.stats().await;
            stats.channel(topic, "logmill").is_some_and(|c| c.depth == 0 && c.in_flight_count == 0)
        })
        .await;
        let delivered = seen.lock().unwrap().len();
        let unique: HashSet<Bytes> = seen.lock().unwrap().iter().cloned().collect();
        assert_eq!(unique, (0..N).map(body).collect::<HashSet<_>>());
        assert!(counter("logmill_nsq_reconnects_total", &[("role", "producer")]) >= 2, "the producer came back after each kill");
        let retries = counter("logmill_nsq_publish_retries_total", &[]);
        report(&format!(
            "{TEST}: published {N}, delivered {delivered}, duplicates {} (producer resent {retries} after the 2 kills)",
            delivered - N
        ));
        run.consumer.stop();
        run.consumer.stopped().await;
    })
    .await
    .expect("test timed out");
}

/// Redelivery after a real `--msg-timeout` (1 s): a message held without FIN, REQ or TOUCH
/// comes back with attempts 2, no sooner than the timeout allows; the late FIN of the first
/// delivery and the FIN of the second cover one message, and nsqd's refusal of the second
/// (`E_FIN_FAILED`, not fatal) leaves the connection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_past_a_real_msg_timeout_is_redelivered() {
    const TEST: &str = "a_message_held_past_a_real_msg_timeout_is_redelivered";
    let msg_timeout = Duration::from_secs(1);
    let options = NsqdOptions { msg_timeout: Some(msg_timeout), ..NsqdOptions::default() };
    let Some(nsqd) = Nsqd::start(options).await else { return nsqd::skip(TEST, "nsqd") };
    timeout(TEST_TIMEOUT, async {
        nsqd.put("timeout", &[Bytes::from_static(b"slow")]).await;
        let client = reqwest::Client::new();
        logmill::nsq::http::create_topic_and_channel(
            &client,
            &nsqd.http_addr().to_string(),
            "timeout",
            Some("logmill"),
        )
        .await
        .unwrap();
        let telemetry = Telemetry::default();
        let tracker = TaskTracker::new();
        let (_consumer, mut deliveries) = Consumer::start(
            consumer_settings("timeout", 2),
            consumer::fixed_addresses([nsqd.tcp_addr().to_string()]),
            None,
            &telemetry,
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        let first = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
        let received = std::time::Instant::now();
        assert_eq!(first.attempts(), 1);
        let client_before = nsqd.stats().await.clients("timeout", "logmill")[0].remote_address.clone();
        let second =
            timeout(WAIT, deliveries.recv()).await.expect("redelivered after the msg_timeout").unwrap();
        // nsqd's clock started when it queued the first for us, up to one output-buffer flush
        // (250 ms) and this task's own scheduling before `received`: half the timeout tells a
        // redelivery on the timeout from one at once, whatever the load.
        let waited = received.elapsed();
        assert!(waited >= msg_timeout / 2, "redelivered after {waited:?}");
        assert_eq!((second.id(), second.attempts(), second.body().as_ref()), (first.id(), 2, &b"slow"[..]));
        let stats = nsqd.stats().await;
        assert_eq!(stats.channel("timeout", "logmill").map(|c| c.timeout_count), Some(1));
        first.finish().await;
        second.finish().await;
        let non_fatal = || telemetry.value("logmill_nsq_non_fatal_errors_total", &[("role", "consumer")]);
        eventually(WAIT, "nsqd refuses the second FIN of one message", || non_fatal() == Some(1)).await;
        let stats = nsqd.stats().await;
        let clients = stats.clients("timeout", "logmill");
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].remote_address, client_before, "same connection");
        assert_eq!(clients[0].finish_count, 1);
        let ch = stats.channel("timeout", "logmill").unwrap();
        assert_eq!((ch.depth, ch.in_flight_count), (0, 0));
    })
    .await
    .expect("test timed out");
}

/// `max_buffered_bytes` against a real nsqd: bodies the application has not taken stay
/// within the budget (10 bodies of 10,000 bytes in 100,000), a body taken makes room for one
/// more, and finishing a held message (body taken before) makes none: what is held counts
/// against `max_in_flight` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_not_taken_stay_within_the_byte_budget() {
    const TEST: &str = "bodies_not_taken_stay_within_the_byte_budget";
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else { return nsqd::skip(TEST, "nsqd") };
    timeout(TEST_TIMEOUT, async {
        const N: usize = 60;
        let big = |i: usize| {
            let mut b = format!("{i:06}").into_bytes();
            b.resize(10_000, b'x');
            Bytes::from(b)
        };
        nsqd.put("budget", &(0..N).map(big).collect::<Vec<_>>()).await;
        let client = reqwest::Client::new();
        logmill::nsq::http::create_topic_and_channel(
            &client,
            &nsqd.http_addr().to_string(),
            "budget",
            Some("logmill"),
        )
        .await
        .unwrap();
        let settings = ConsumerSettings { max_buffered_bytes: 100_000, ..consumer_settings("budget", 50) };
        let run = start_consumer(settings, consumer::fixed_addresses([nsqd.tcp_addr().to_string()]));
        let mut deliveries = run.deliveries;
        let in_flight =
            || async { nsqd.stats().await.channel("budget", "logmill").map_or(0, |c| c.in_flight_count) };
        // Nothing taken: ten bodies, then nothing more however long we wait.
        let mut waiting = Vec::new();
        while waiting.len() < 10 {
            waiting.push(timeout(WAIT, deliveries.recv()).await.unwrap().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(in_flight().await, 10, "bodies not taken: within 100,000 bytes");
        assert!(deliveries.try_recv().is_err());
        // Five taken and held: five more come, no more.
        let mut held = Vec::new();
        for mut d in waiting.drain(..5) {
            drop(d.take_body());
            held.push(d);
        }
        eventually_async(WAIT, "five more in flight", || async { in_flight().await == 15 }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(in_flight().await, 15, "held messages do not count against the bytes");
        // Finishing the held ones frees no room for bodies.
        for d in held.drain(..) {
            d.finish().await;
        }
        eventually_async(WAIT, "the held ones finished", || async { in_flight().await == 10 }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(in_flight().await, 10);
        // Taking everything as it comes drains the topic, each message once.
        let mut seen: HashSet<Bytes> = HashSet::new();
        for mut d in waiting.drain(..) {
            seen.insert(d.take_body());
            d.finish().await;
        }
        while seen.len() < N - 5 {
            let mut d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            assert!(seen.insert(d.take_body()), "delivered twice");
            d.finish().await;
        }
        eventually_async(WAIT, "the channel drained", || async {
            nsqd.stats()
                .await
                .channel("budget", "logmill")
                .is_some_and(|c| c.depth == 0 && c.in_flight_count == 0)
        })
        .await;
    })
    .await
    .expect("test timed out");
}

/// RDY capped by a real `--max-rdy-count` (5) below `max_in_flight` (50): the consumer asks
/// for no more than the server allows (a larger RDY is a fatal `E_INVALID`), holds 5 in
/// flight, and consumes everything on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdy_is_capped_by_a_real_max_rdy_count() {
    const TEST: &str = "rdy_is_capped_by_a_real_max_rdy_count";
    let options = NsqdOptions { max_rdy_count: Some(5), ..NsqdOptions::default() };
    let Some(nsqd) = Nsqd::start(options).await else { return nsqd::skip(TEST, "nsqd") };
    timeout(TEST_TIMEOUT, async {
        const N: usize = 40;
        nsqd.put("capped", &(0..N).map(body).collect::<Vec<_>>()).await;
        let client = reqwest::Client::new();
        logmill::nsq::http::create_topic_and_channel(
            &client,
            &nsqd.http_addr().to_string(),
            "capped",
            Some("logmill"),
        )
        .await
        .unwrap();
        let telemetry = Telemetry::default();
        let tracker = TaskTracker::new();
        let (_consumer, mut deliveries) = Consumer::start(
            consumer_settings("capped", 50),
            consumer::fixed_addresses([nsqd.tcp_addr().to_string()]),
            None,
            &telemetry,
            &tracker,
            CancellationToken::new(),
        )
        .unwrap();
        let mut held = Vec::new();
        while held.len() < 5 {
            held.push(timeout(WAIT, deliveries.recv()).await.unwrap().unwrap());
        }
        eventually_async(WAIT, "RDY 5, 5 in flight", || async {
            let c = nsqd.stats().await.clients("capped", "logmill");
            c.len() == 1 && c[0].ready_count == 5 && c[0].in_flight_count == 5
        })
        .await;
        // Nothing beyond the window: nsqd delivers no sixth while five are held.
        assert!(timeout(Duration::from_millis(300), deliveries.recv()).await.is_err(), "a sixth in flight");
        let mut seen: HashSet<Bytes> = held.iter().map(|d| d.body().clone()).collect();
        for d in held {
            d.finish().await;
        }
        while seen.len() < N {
            let d = timeout(WAIT, deliveries.recv()).await.unwrap().unwrap();
            seen.insert(d.body().clone());
            d.finish().await;
        }
        let errors = telemetry.value("logmill_nsq_connection_errors_total", &[("role", "consumer")]);
        assert_eq!(errors, Some(0), "the connection was never refused:\n{}", nsqd.log_tail());
        assert_eq!(nsqd.stats().await.clients("capped", "logmill")[0].ready_count, 5);
    })
    .await
    .expect("test timed out");
}

/// A body over a real `--max-msg-size` (1 KiB; the producer is configured for nsqd's default
/// 1 MiB, as when an nsqd runs with a lower limit): nsqd refuses it (`E_BAD_MESSAGE`) and
/// closes the connection; that publish fails, and every other publish pipelined with it, before
/// and behind, ends Ok and arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_a_real_max_msg_size_is_refused_and_the_rest_arrive() {
    const TEST: &str = "a_body_over_a_real_max_msg_size_is_refused_and_the_rest_arrive";
    let options = NsqdOptions { max_msg_size: Some(1024), ..NsqdOptions::default() };
    let Some(nsqd) = Nsqd::start(options).await else { return nsqd::skip(TEST, "nsqd") };
    timeout(TEST_TIMEOUT, async {
        let addr = nsqd.tcp_addr().to_string();
        let http = reqwest::Client::new();
        logmill::nsq::http::create_topic_and_channel(
            &http,
            &nsqd.http_addr().to_string(),
            "sized",
            Some("logmill"),
        )
        .await
        .unwrap();
        let tracker = TaskTracker::new();
        let telemetry = Telemetry::default();
        let producer = Producer::start(
            producer_settings(std::slice::from_ref(&addr)),
            &telemetry,
            &tracker,
            CancellationToken::new(),
        );
        // Submitted in one go, so the producer pipelines them (and merges neighbours into MPUBs).
        const N: usize = 400;
        const BIG: usize = 250;
        let big = Bytes::from(vec![b'x'; 2000]);
        let mut acks = Vec::new();
        for i in 0..N {
            let b = if i == BIG { big.clone() } else { body(i) };
            acks.push(producer.submit("sized", b).await.unwrap());
        }
        let mut results = Vec::new();
        for a in acks {
            results.push(a.await);
        }
        assert!(
            matches!(&results[BIG], Err(PublishError::Rejected { code: ErrorCode::BadMessage, .. })),
            "{:?}",
            results[BIG]
        );
        let failed: Vec<usize> = (0..N).filter(|&i| results[i].is_err()).collect();
        assert_eq!(failed, [BIG], "only the big one fails: {:?}", results.iter().find(|r| r.is_err()));
        let run = start_consumer(consumer_settings("sized", 100), consumer::fixed_addresses([addr]));
        let (seen, _h) = spawn_finisher(run.deliveries);
        let expected: HashSet<Bytes> = (0..N).filter(|&i| i != BIG).map(body).collect();
        eventually(WAIT, "every other body consumed", || {
            seen.lock().unwrap().iter().collect::<HashSet<_>>().len() == N - 1
        })
        .await;
        eventually_async(WAIT, "the channel drained", || async {
            nsqd.stats()
                .await
                .channel("sized", "logmill")
                .is_some_and(|c| c.depth == 0 && c.in_flight_count == 0)
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);
        // At least once: what nsqd stored but had not answered when it closed the connection
        // (under load its OKs can still be in its output buffer) is resent, so a few bodies
        // may come twice; none may come more often, and none of the refused command.
        let mut times: std::collections::HashMap<&Bytes, usize> = std::collections::HashMap::new();
        for b in &seen {
            *times.entry(b).or_default() += 1;
        }
        assert!(times.values().all(|&n| n <= 2), "a body stored more than twice");
        eprintln!("duplicates after the refusal's resend: {}", seen.len() - (N - 1));
        let errors = telemetry.value("logmill_nsq_connection_errors_total", &[("role", "producer")]);
        assert!(errors >= Some(1), "nsqd closed the connection after the refusal: {errors:?}");
    })
    .await
    .expect("test timed out");
}

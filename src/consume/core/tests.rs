//! The core with a scripted output (each submission answered when the test says) and
//! acknowledgement handles that record what the core did, on tokio's paused clock.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::derive::level::LevelDetector;
use crate::metrics::point::FieldValue;
use crate::output::{Outcome, TestSubmission};

const SEC: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Finished,
    Requeued { backoff: bool },
    Touched,
}

type Events = Arc<Mutex<Vec<(String, Event, Instant)>>>;

/// Records what the core does with each message.
struct TestAck {
    name: String,
    events: Events,
}

impl TestAck {
    fn record(&self, e: Event) {
        self.events.lock().unwrap().push((self.name.clone(), e, Instant::now()));
    }
}

impl Ack for TestAck {
    fn finish(self) -> impl Future<Output = ()> + Send + 'static {
        self.record(Event::Finished);
        std::future::ready(())
    }
    fn requeue(self, _delay: Duration, backoff: bool) -> impl Future<Output = ()> + Send + 'static {
        self.record(Event::Requeued { backoff });
        std::future::ready(())
    }
    fn touch(&self) -> impl Future<Output = ()> + Send + 'static {
        self.record(Event::Touched);
        std::future::ready(())
    }
}

fn settings() -> CoreSettings {
    CoreSettings {
        derive: DeriveSettings {
            window_ns: 10 * SEC,
            write_router_points: true,
            levels: LevelDetector::default(),
        },
        aggregate: AggregateSettings {
            window_ns: 10 * SEC,
            lateness_ns: 0,
            max_series: std::num::NonZeroUsize::new(1000).unwrap(),
            consumer: "c1".into(),
            sequence_base: 0,
        },
        high_water: 0.8,
        max_held_values: 1_000_000,
        max_hold: Duration::from_secs(60),
        influx_stall: Duration::from_secs(10),
        requeue_delay: Duration::from_secs(1),
        // Longer than any test waits unless it means to.
        idle_flush: Duration::from_secs(3600),
        telemetry_interval: None,
        telemetry_host: "h".into(),
        shutdown_grace: Duration::from_secs(30),
    }
}

struct Harness {
    tx: mpsc::Sender<Inbound<TestAck>>,
    handle: Option<JoinHandle<CoreSummary>>,
    submissions: UnboundedReceiver<TestSubmission>,
    events: Events,
    stop: CancellationToken,
}

fn start_core(settings: CoreSettings) -> Harness {
    let (out_tx, submissions) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (tx, handle) = start(
        settings,
        Output::Test(out_tx),
        DeadLetterSink::None,
        &Telemetry::default(),
        &tracker,
        stop.clone(),
    );
    Harness { tx, handle: Some(handle), submissions, events: Events::default(), stop }
}

/// Three compat points of one access line at `secs`, as logmill's agent writes them.
fn line(secs: i64, app: &str, n: i64) -> String {
    let ts = secs * SEC + n;
    format!(
        "deis_router_request_time_ms,app={app},status_code=200,host=n1,method=GET value=0.1 {ts}\n\
         deis_router_response_time_ms,app={app},status_code=200,host=n1,method=GET value=0.05,upstream_total=0.05 {ts}\n\
         deis_router_bytes_sent,app={app},status_code=200,host=n1,method=GET value=100.0 {ts}\n"
    )
}

impl Harness {
    async fn send(&self, name: &str, body: String, attempts: u16, limits: HoldLimits, capacity: Option<u32>) {
        let ack = TestAck { name: name.into(), events: self.events.clone() };
        let m = Inbound {
            topic: TopicKind::Metrics,
            body: Bytes::from(body),
            timestamp_ns: 0,
            attempts,
            id: None,
            limits,
            capacity,
            ack,
        };
        self.tx.send(m).await.unwrap();
    }

    /// The next submission, within `within` of (paused) time.
    async fn next(&mut self, within: Duration) -> TestSubmission {
        tokio::time::timeout(within, self.submissions.recv()).await.expect("a submission").expect("open")
    }

    /// What became of `name`, touches left out.
    fn events_of(&self, name: &str) -> Vec<Event> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(n, e, _)| n == name && *e != Event::Touched)
            .map(|(_, e, _)| e.clone())
            .collect()
    }

    async fn settle(&self) {
        // Lets the core run what is ready (the paused clock advances only when all is idle).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
}

fn answer(s: TestSubmission) -> String {
    let text = String::from_utf8(s.body.to_vec()).unwrap();
    let _ = s.answer.send(Outcome::written(s.points as u64));
    text
}

fn count_field(text: &str) -> i64 {
    text.lines()
        .filter(|l| l.starts_with("router_requests"))
        .map(|l| {
            let p = crate::metrics::line_protocol::parse_line(l.as_bytes()).unwrap();
            match p.field_value("count") {
                Some(FieldValue::Int(n)) => *n,
                other => panic!("{other:?}"),
            }
        })
        .sum()
}

fn nsq_limits() -> HoldLimits {
    HoldLimits { timeout: Some(Duration::from_secs(2)), max_hold: Some(Duration::from_secs(900)) }
}

#[tokio::test(start_paused = true)]
async fn a_message_is_finished_once_its_points_and_its_window_are_written() {
    let mut h = start_core(settings());
    h.send("a", line(100, "foo", 0), 1, nsq_limits(), None).await;
    let pass = h.next(Duration::from_secs(1)).await;
    assert_eq!(pass.points, 3);
    answer(pass);
    h.settle().await;
    assert!(h.events_of("a").is_empty(), "its window (100..110 s) is open");
    // A later line closes the window (lateness 0): its point goes out, then `a` is done.
    h.send("b", line(111, "foo", 0), 1, nsq_limits(), None).await;
    let (s1, s2) = (h.next(Duration::from_secs(1)).await, h.next(Duration::from_secs(1)).await);
    let (flush, pass) = if s1.body.starts_with(b"router_requests") { (s1, s2) } else { (s2, s1) };
    let mut texts = vec![answer(pass)];
    h.settle().await;
    assert!(h.events_of("a").is_empty(), "its window's point is not answered yet");
    texts.push(answer(flush));
    h.settle().await;
    assert_eq!(h.events_of("a"), [Event::Finished]);
    assert!(h.events_of("b").is_empty(), "b's window is open");
    let all = texts.concat();
    assert_eq!(count_field(&all), 1, "{all}");
    assert!(all.contains("router_requests,app=foo,status_code=200,method=GET,host=n1,consumer=c1 "), "{all}");
    // Stopping flushes b's window and finishes it.
    h.stop.cancel();
    let last = answer(h.next(Duration::from_secs(1)).await);
    assert_eq!(count_field(&last), 1);
    let summary = h.handle.take().unwrap().await.unwrap();
    assert_eq!(h.events_of("b"), [Event::Finished]);
    assert_eq!((summary.messages, summary.finished, summary.requeued), (2, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn held_messages_are_touched_before_their_timeout() {
    let mut h = start_core(settings());
    h.send("a", line(100, "foo", 0), 1, nsq_limits(), None).await;
    answer(h.next(Duration::from_secs(1)).await);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let touches: Vec<Instant> = h
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, e, _)| *e == Event::Touched)
        .map(|(_, _, at)| *at)
        .collect();
    // Every second or so (half of the 2 s timeout, on a 100 ms tick), never 2 s apart.
    assert!(touches.len() >= 9, "{} touches", touches.len());
    let mut last = start;
    for t in touches {
        assert!(t - last < Duration::from_millis(1200), "{:?} between touches", t - last);
        last = t;
    }
    assert!(h.events_of("a").is_empty(), "still held");
}

#[tokio::test(start_paused = true)]
async fn held_messages_near_the_sources_capacity_flush_the_windows_early() {
    let mut h = start_core(settings());
    // Capacity 10, high water 80 %: the 8th held message flushes every window.
    for i in 0..8 {
        h.send(&format!("m{i}"), line(100, "foo", i), 1, nsq_limits(), Some(10)).await;
    }
    let mut text = String::new();
    while !text.contains("router_requests") || text.matches("deis_router_").count() < 24 {
        text.push_str(&answer(h.next(Duration::from_secs(1)).await));
    }
    assert_eq!(count_field(&text), 8, "{text}");
    h.settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..8 {
        assert_eq!(h.events_of(&format!("m{i}")), [Event::Finished], "m{i}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_influxdb_stalls_open_contributions_are_taken_back_and_requeued() {
    let mut h = start_core(settings());
    // `sealed` joins window 100 s, which is then flushed (by `closer` at 111 s): its point is
    // submitted and not answered. `closer` and `open` are in window 110 s, still open.
    h.send("sealed", line(100, "foo", 0), 1, nsq_limits(), None).await;
    let mut unanswered = vec![h.next(Duration::from_secs(1)).await];
    h.send("closer", line(111, "foo", 0), 1, nsq_limits(), None).await;
    unanswered.push(h.next(Duration::from_secs(1)).await);
    unanswered.push(h.next(Duration::from_secs(1)).await);
    h.send("open", line(112, "bar", 0) + &line(113, "bar", 1), 1, nsq_limits(), None).await;
    unanswered.push(h.next(Duration::from_secs(1)).await);
    // Nothing answered for the stall bound (10 s): `closer` (window 110, open) and `open`
    // go back to NSQ; `sealed` waits for its window's point.
    tokio::time::sleep(Duration::from_secs(11)).await;
    h.settle().await;
    assert_eq!(h.events_of("open").last(), Some(&Event::Requeued { backoff: false }));
    assert_eq!(h.events_of("closer").last(), Some(&Event::Requeued { backoff: false }));
    assert!(h.events_of("sealed").is_empty(), "{:?}", h.events_of("sealed"));
    // InfluxDB is back: what was submitted lands (the requeued messages' own points too,
    // which their redelivery writes again over themselves).
    let mut text: String = unanswered.into_iter().map(answer).collect();
    h.settle().await;
    assert_eq!(h.events_of("sealed").last(), Some(&Event::Finished));
    // Redelivered: each line counts once in the end.
    h.send("open", line(112, "bar", 0) + &line(113, "bar", 1), 2, nsq_limits(), None).await;
    h.send("closer", line(111, "foo", 0), 2, nsq_limits(), None).await;
    h.stop.cancel();
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), h.submissions.recv()).await {
        text.push_str(&answer(s));
    }
    h.handle.take().unwrap().await.unwrap();
    let bar: i64 = text.lines().filter(|l| l.contains("app=bar")).map(count_field).sum();
    let foo: i64 = text.lines().filter(|l| l.contains("app=foo")).map(count_field).sum();
    assert_eq!((bar, foo), (2, 2), "{text}");
    assert_eq!(h.events_of("open").last(), Some(&Event::Finished));
    assert_eq!(h.events_of("closer").last(), Some(&Event::Finished));
}

#[tokio::test(start_paused = true)]
async fn an_in_memory_source_learns_each_messages_fate() {
    // How `logmill run` feeds the core: its own queue, a OneshotAck per message.
    let (out_tx, mut submissions) = tokio::sync::mpsc::unbounded_channel();
    let tracker = TaskTracker::new();
    let (tx, handle) = start::<OneshotAck>(
        settings(),
        Output::Test(out_tx),
        DeadLetterSink::None,
        &Telemetry::default(),
        &tracker,
        CancellationToken::new(),
    );
    let (ack, settled) = OneshotAck::new();
    let m = Inbound {
        topic: TopicKind::Metrics,
        body: Bytes::from(line(100, "foo", 0)),
        timestamp_ns: 0,
        attempts: 1,
        id: None,
        limits: HoldLimits::default(),
        capacity: None,
        ack,
    };
    tx.send(m).await.unwrap();
    // End of input: the windows are flushed and the message settled.
    drop(tx);
    while let Some(s) = submissions.recv().await {
        answer(s);
    }
    assert_eq!(settled.await.unwrap(), Settled::Finished);
    assert_eq!(handle.await.unwrap().finished, 1);
}

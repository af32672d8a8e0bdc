//! The NSQ test broker against a real nsqd v1.3.0.
//!
//! `testdata/nsq-conformance/` holds TCP conversations recorded from nsqd (copied from the
//! shared recordings, so the project depends on nothing outside itself): what a client wrote
//! and every frame the server sent back before the next write. [`replays_every_recording`]
//! sends the same bytes to the broker and requires the same frames: type, size and bytes of
//! every response and error, size, attempts and body of every message, and the close, in
//! order. What varies between runs is compared for consistency instead of equality: message
//! ids (the broker's must map one-to-one onto the recorded ones, and FIN/REQ/TOUCH are sent
//! with the broker's ids), timestamps (a redelivery keeps its first delivery's), and the
//! `"version"` value of the IDENTIFY answer.
//!
//! The recordings consumed messages published outside the recorded connection; each replay
//! seeds the broker with them (the first delivery of each id, in order) before connecting.
//!
//! The rest of the file tests what the recordings cannot show: topics and channels, RDY across
//! connections, restarts and the other faults the client's tests rely on.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Deserialize;
use support::eventually;
use support::nsq_broker::{NsqBroker, NsqBrokerOptions};
use support::nsqd::{self, Nsqd, NsqdOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Longest wait for the frames a step expects; only a failing replay waits this long. The
/// slowest recorded step (heartbeat_missed.json) needs two 1 s heartbeat intervals.
const STEP_MAX_WAIT: Duration = Duration::from_secs(5);
/// After the expected frames, how long to watch for anything more (an extra frame or a close
/// that nsqd did not send).
const QUIET: Duration = Duration::from_millis(150);

#[derive(Debug, Deserialize)]
struct Recording {
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Step {
    note: String,
    send_hex: String,
    frames: Vec<Recorded>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Recorded {
    Response { size: u32, data: String, raw_hex: String },
    Error { size: u32, data: String, raw_hex: String },
    Message { size: u32, timestamp_ns: i64, attempts: u16, id: String, body: String },
    ClosedByServer,
}

/// A frame as read from the broker, split by this test's own reading of the format
/// (independent of `logmill::nsq::protocol`).
#[derive(Debug, Clone)]
enum Got {
    Frame { frame_type: u32, size: u32, data: Vec<u8>, raw: Vec<u8> },
    Closed,
}

fn recordings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nsq-conformance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_every_recording() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(recordings_dir())
        .expect("testdata/nsq-conformance exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 23, "expected the 23 recordings, found {}", files.len());
    // Each replay has its own broker; running them together keeps the test at the length of
    // the slowest one (two heartbeat intervals).
    let mut replays = tokio::task::JoinSet::new();
    for path in files {
        replays.spawn(async move {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let recording: Recording = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            replay(&name, &recording).await
        });
    }
    let mut failures = Vec::new();
    let mut replayed = 0;
    while let Some(result) = replays.join_next().await {
        failures.extend(result.expect("replay task"));
        replayed += 1;
    }
    assert!(
        failures.is_empty(),
        "{} difference(s) from nsqd v1.3.0:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(replayed >= 23);
}

/// Replays one recording; returns one line per difference.
async fn replay(name: &str, recording: &Recording) -> Vec<String> {
    let broker = NsqBroker::start(NsqBrokerOptions::recorded()).await;
    seed(&broker, recording);
    let mut failures = Vec::new();
    let mut stream = TcpStream::connect(broker.tcp_addr()).await.expect("connect to the broker");
    let mut input = BytesMut::new();
    let mut closed = false;
    let mut ids = Bijection::default();
    let mut timestamps: HashMap<i64, i64> = HashMap::new();
    for (n, step) in recording.steps.iter().enumerate() {
        let at = format!("{name} step {n} ({})", step.note);
        let mut send = hex_decode(&step.send_hex);
        for (recorded, actual) in &ids.forward {
            replace_all(&mut send, recorded.as_bytes(), actual);
        }
        if !send.is_empty() && !closed && stream.write_all(&send).await.is_err() {
            failures.push(format!("{at}: the broker refused the bytes (connection gone)"));
            break;
        }
        let got = if closed { Vec::new() } else { collect(&mut stream, &mut input, step.frames.len()).await };
        closed = closed || got.iter().any(|g| matches!(g, Got::Closed));
        for i in 0..step.frames.len().max(got.len()) {
            let at = format!("{at} frame {i}");
            match (step.frames.get(i), got.get(i)) {
                (Some(want), Some(have)) => {
                    if let Err(why) = compare(want, have, &mut ids, &mut timestamps) {
                        failures.push(format!("{at}: {why}"));
                    }
                }
                (Some(want), None) => failures.push(format!("{at}: nsqd sent {want:?}, the broker nothing")),
                (None, Some(have)) => {
                    failures.push(format!("{at}: nsqd sent nothing more, the broker {have:?}"))
                }
                (None, None) => {}
            }
        }
    }
    failures
}

/// Publishes, before the replay, the messages the recording shows being delivered.
fn seed(broker: &NsqBroker, recording: &Recording) {
    let mut topic = None;
    let mut seen = std::collections::HashSet::new();
    for step in &recording.steps {
        let sent = hex_decode(&step.send_hex);
        for line in sent.split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"SUB ") {
                let t = rest.split(|&b| b == b' ').next().unwrap_or_default();
                topic = Some(String::from_utf8_lossy(t).into_owned());
            }
        }
        for frame in &step.frames {
            if let Recorded::Message { id, body, .. } = frame {
                if seen.insert(id.clone()) {
                    let topic = topic.as_deref().expect("a recording delivers messages only after SUB");
                    broker.put(topic, body.clone().into_bytes());
                }
            }
        }
    }
}

/// Reads until `want` frames (a close counts as one) or [`STEP_MAX_WAIT`], then watches for
/// [`QUIET`] more.
async fn collect(stream: &mut TcpStream, input: &mut BytesMut, want: usize) -> Vec<Got> {
    let mut got = Vec::new();
    let hard = Instant::now() + STEP_MAX_WAIT;
    let mut quiet_until: Option<Instant> = None;
    loop {
        while let Some(frame) = split_frame(input) {
            got.push(frame);
        }
        if got.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + QUIET);
        }
        let until = quiet_until.unwrap_or(hard).min(hard);
        match timeout_at(until, stream.read_buf(input)).await {
            Err(_) => return got,
            Ok(Ok(0)) | Ok(Err(_)) => {
                while let Some(frame) = split_frame(input) {
                    got.push(frame);
                }
                got.push(Got::Closed);
                return got;
            }
            Ok(Ok(_)) => {}
        }
    }
}

fn split_frame(input: &mut BytesMut) -> Option<Got> {
    if input.len() < 8 {
        return None;
    }
    let size = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
    let total = 4 + size as usize;
    if input.len() < total {
        return None;
    }
    let raw = input.split_to(total).to_vec();
    let mut rest = &raw[4..];
    let frame_type = rest.get_u32();
    Some(Got::Frame { frame_type, size, data: rest.to_vec(), raw })
}

/// Recorded ids ↔ the broker's, one to one.
#[derive(Default)]
struct Bijection {
    forward: HashMap<String, Vec<u8>>,
    backward: HashMap<Vec<u8>, String>,
}

impl Bijection {
    fn pair(&mut self, recorded: &str, actual: &[u8]) -> Result<(), String> {
        match (self.forward.get(recorded), self.backward.get(actual)) {
            (None, None) => {
                self.forward.insert(recorded.to_owned(), actual.to_vec());
                self.backward.insert(actual.to_vec(), recorded.to_owned());
                Ok(())
            }
            (Some(a), Some(r)) if a == actual && r == recorded => Ok(()),
            _ => Err(format!(
                "message id {} does not correspond to recorded id {recorded} as earlier frames did",
                String::from_utf8_lossy(actual)
            )),
        }
    }
}

fn compare(
    want: &Recorded,
    have: &Got,
    ids: &mut Bijection,
    timestamps: &mut HashMap<i64, i64>,
) -> Result<(), String> {
    let (frame_type, size, data, raw) = match have {
        Got::Closed => {
            return if matches!(want, Recorded::ClosedByServer) {
                Ok(())
            } else {
                Err(format!("nsqd sent {want:?}, the broker closed the connection"))
            };
        }
        Got::Frame { frame_type, size, data, raw } => (*frame_type, *size, data, raw),
    };
    let (want_type, want_size, want_data, want_raw) = match want {
        Recorded::ClosedByServer => {
            return Err(format!("nsqd closed the connection, the broker sent {:?}", lossy(data)));
        }
        Recorded::Message { size: want_size, timestamp_ns, attempts, id, body } => {
            if frame_type != 2 {
                return Err(format!(
                    "nsqd sent a message, the broker a frame of type {frame_type}: {:?}",
                    lossy(data)
                ));
            }
            if size != *want_size || data.len() < 26 {
                return Err(format!("message frame size {size}, nsqd's {want_size}"));
            }
            let mut d = &data[..];
            let ts = d.get_i64();
            let have_attempts = d.get_u16();
            let (have_id, have_body) = d.split_at(16);
            if have_attempts != *attempts {
                return Err(format!("attempts {have_attempts}, nsqd's {attempts}"));
            }
            if have_body != body.as_bytes() {
                return Err(format!("body {:?}, nsqd's {body:?}", lossy(have_body)));
            }
            ids.pair(id, have_id)?;
            let first = *timestamps.entry(*timestamp_ns).or_insert(ts);
            if first != ts {
                return Err(format!(
                    "timestamp {ts} differs from the first delivery's {first}, as nsqd's do not"
                ));
            }
            return Ok(());
        }
        Recorded::Response { size, data, raw_hex } => (0, *size, data, raw_hex),
        Recorded::Error { size, data, raw_hex } => (1, *size, data, raw_hex),
    };
    if frame_type != want_type {
        return Err(format!(
            "frame type {frame_type} ({:?}), nsqd's type {want_type} ({want_data:?})",
            lossy(data)
        ));
    }
    // The broker's ids, where they appear in a text (E_FIN_FAILED FIN <id> …), read as the
    // recorded ones.
    let mut data = data.clone();
    let mut raw = raw.clone();
    for (actual, recorded) in &ids.backward {
        replace_all(&mut data, actual, recorded.as_bytes());
        replace_all(&mut raw, actual, recorded.as_bytes());
    }
    let mut want_raw = hex_decode(want_raw);
    let mut want_data = want_data.as_bytes().to_vec();
    let mut size = size;
    let mut want_size = want_size;
    if want_data.starts_with(b"{") {
        // The IDENTIFY answer: everything but the version must be byte-identical.
        let (w, wv) = without_version(&want_data);
        let (h, hv) = without_version(&data);
        want_size -= wv as u32;
        size -= hv as u32;
        want_data = w;
        data = h;
        want_raw = [&want_raw[..8], &want_data[..]].concat();
        raw = [&raw[..8], &data[..]].concat();
        raw[..4].copy_from_slice(&size.to_be_bytes());
        want_raw[..4].copy_from_slice(&want_size.to_be_bytes());
    }
    if data != want_data {
        return Err(format!("data {:?}, nsqd's {:?}", lossy(&data), lossy(&want_data)));
    }
    if size != want_size {
        return Err(format!("size {size}, nsqd's {want_size}"));
    }
    if raw != want_raw {
        return Err(format!("raw bytes {}, nsqd's {}", hex_encode(&raw), hex_encode(&want_raw)));
    }
    Ok(())
}

/// The JSON with the `"version"` value emptied, and that value's length.
fn without_version(json: &[u8]) -> (Vec<u8>, usize) {
    let key = b"\"version\":\"";
    let Some(start) = json.windows(key.len()).position(|w| w == key).map(|i| i + key.len()) else {
        return (json.to_vec(), 0);
    };
    let len = json[start..].iter().position(|&b| b == b'"').unwrap_or(0);
    ([&json[..start], &json[start + len..]].concat(), len)
}

fn replace_all(haystack: &mut Vec<u8>, from: &[u8], to: &[u8]) {
    if from.is_empty() || from == to {
        return;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    *haystack = out;
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("recordings hold valid hex"))
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Behaviour the recordings do not show.

/// A raw protocol client for these tests, built on the crate's own encoders and decoder.
struct Raw {
    stream: TcpStream,
    input: BytesMut,
}

impl Raw {
    async fn connect(broker: &NsqBroker) -> Raw {
        Raw::connect_to(broker.tcp_addr()).await
    }

    async fn connect_to(addr: std::net::SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(logmill::nsq::protocol::MAGIC_V2).await.expect("magic");
        Raw { stream, input: BytesMut::new() }
    }

    async fn send(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let mut b = BytesMut::new();
        encode(&mut b);
        self.stream.write_all(&b).await.expect("write");
    }

    /// The next frame that is not a heartbeat; `None` when the broker closed the connection.
    async fn frame(&mut self) -> Option<logmill::nsq::protocol::Frame> {
        use logmill::nsq::protocol::decode_frame;
        loop {
            if let Some(f) = decode_frame(&mut self.input, 1 << 20).expect("valid frame") {
                if f.is_heartbeat() {
                    continue;
                }
                return Some(f);
            }
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.input))
                .await
                .expect("a frame within 5 s");
            if matches!(read, Ok(0) | Err(_)) {
                return None;
            }
        }
    }

    async fn expect_ok(&mut self) {
        let f = self.frame().await;
        assert!(f.as_ref().is_some_and(|f| f.is_ok()), "expected OK, got {f:?}");
    }

    async fn message(&mut self) -> logmill::nsq::protocol::Message {
        match self.frame().await {
            Some(logmill::nsq::protocol::Frame::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn subscribe(broker: &NsqBroker, topic: &str, channel: &str, rdy: u32) -> Raw {
        use logmill::nsq::protocol::{encode_rdy, encode_sub};
        let mut c = Raw::connect(broker).await;
        c.send(|b| encode_sub(topic, channel, b).expect("names")).await;
        c.expect_ok().await;
        c.send(|b| encode_rdy(rdy, b)).await;
        c
    }
}

#[tokio::test]
async fn topics_copy_to_every_channel_and_hold_messages_until_the_first() {
    use logmill::nsq::protocol::{encode_fin, encode_mpub};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut producer = Raw::connect(&broker).await;
    producer.send(|b| encode_mpub("t", [&b"early1"[..], b"early2"], b).expect("mpub")).await;
    producer.expect_ok().await;
    assert_eq!(broker.published("t"), vec!["early1", "early2"]);

    let mut a = Raw::subscribe(&broker, "t", "a", 10).await;
    // Held by the topic, everything goes to the first channel.
    for want in ["early1", "early2"] {
        let m = a.message().await;
        assert_eq!(m.body, want);
        assert_eq!(m.attempts, 1);
        a.send(|b| encode_fin(&m.id, b)).await;
    }
    broker.create_channel("t", "b");
    broker.put("t", "later");
    assert_eq!(a.message().await.body, "later");
    let mut b = Raw::subscribe(&broker, "t", "b", 10).await;
    assert_eq!(b.message().await.body, "later", "a channel created before the PUB gets a copy");
    eventually(Duration::from_secs(2), "2 FINs on channel a", || {
        broker.channel("t", "a").is_some_and(|c| c.finish_count == 2)
    })
    .await;
    assert_eq!(broker.finished("t", "a"), vec!["early1", "early2"]);
}

#[tokio::test]
async fn rdy_is_a_window_across_connections() {
    use logmill::nsq::protocol::{encode_fin, encode_rdy};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    for i in 0..6 {
        broker.put("t", format!("m{i}"));
    }
    let mut a = Raw::subscribe(&broker, "t", "c", 2).await;
    let mut b = Raw::subscribe(&broker, "t", "c", 1).await;
    eventually(Duration::from_secs(2), "3 in flight", || {
        broker.channel("t", "c").is_some_and(|c| c.in_flight == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ch = broker.channel("t", "c").expect("channel");
    assert_eq!((ch.in_flight, ch.depth, ch.max_total_rdy, ch.max_in_flight), (3, 3, 3, 3));
    let first = b.message().await;
    b.send(|buf| encode_fin(&first.id, buf)).await;
    let second = b.message().await;
    assert_ne!(first.id, second.id, "a FIN opens the window for one more");
    b.send(|buf| encode_rdy(0, buf)).await;
    b.send(|buf| encode_fin(&second.id, buf)).await;
    eventually(Duration::from_secs(2), "b at RDY 0 with nothing in flight", || {
        broker.clients().iter().any(|c| c.rdy == 0 && c.in_flight == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ch = broker.channel("t", "c").expect("channel");
    assert_eq!((ch.in_flight, ch.depth, ch.finish_count), (2, 2, 2), "nothing more for b at RDY 0");
    assert_eq!(ch.max_total_rdy, 3, "the sum of RDY never exceeded 2 + 1");
    assert_eq!(broker.total_rdy("t", "c"), 2);
    assert_eq!(a.message().await.attempts, 1);
}

#[tokio::test]
async fn msg_timeout_redelivers_to_another_client_and_touch_extends() {
    use logmill::nsq::protocol::{encode_identify, encode_touch, IdentifyConfig};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    broker.put("t", "slow");
    let mut a = Raw::connect(&broker).await;
    // A 2 s msg_timeout and a TOUCH after 0.5 s: 1.5 s to spare on a loaded machine.
    let config = IdentifyConfig { msg_timeout: 2000, ..IdentifyConfig::default() };
    a.send(|b| encode_identify(&config, b).expect("identify")).await;
    a.expect_ok().await;
    a.send(|b| logmill::nsq::protocol::encode_sub("t", "c", b).expect("sub")).await;
    a.expect_ok().await;
    a.send(|b| logmill::nsq::protocol::encode_rdy(1, b)).await;
    let m = a.message().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let touched = Instant::now();
    a.send(|b| encode_touch(&m.id, b)).await;
    let again = a.message().await;
    // No sooner than a whole timeout after the TOUCH (had it come after the first timeout,
    // the redelivery would already be waiting).
    assert!(touched.elapsed() >= Duration::from_millis(1950), "TOUCH restarted the 2 s timeout");
    assert_eq!((again.id, again.attempts, again.timestamp_ns), (m.id, 2, m.timestamp_ns));
    assert_eq!(broker.channel("t", "c").map(|c| c.timeout_count), Some(1));
}

#[tokio::test]
async fn dpub_and_req_delay() {
    use logmill::nsq::protocol::{encode_dpub, encode_req};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    broker.create_channel("t", "c");
    let mut p = Raw::connect(&broker).await;
    let sent = Instant::now();
    p.send(|b| encode_dpub("t", 300, b"later", b).expect("dpub")).await;
    p.expect_ok().await;
    let mut c = Raw::subscribe(&broker, "t", "c", 1).await;
    let m = c.message().await;
    assert!(sent.elapsed() >= Duration::from_millis(300));
    let requeued = Instant::now();
    c.send(|b| encode_req(&m.id, 200, b)).await;
    let again = c.message().await;
    assert!(requeued.elapsed() >= Duration::from_millis(200));
    assert_eq!(again.attempts, 2);
    assert_eq!(broker.channel("t", "c").map(|c| c.requeue_count), Some(1));
}

#[tokio::test]
async fn restart_keeps_acknowledged_messages_and_refuses_meanwhile() {
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    broker.put("t", "queued");
    broker.put("t", "in flight");
    broker.put("eph#ephemeral", "lost");
    let mut c = Raw::subscribe(&broker, "t", "c", 1).await;
    assert_eq!(c.message().await.body, "queued");
    broker.restart(Duration::from_millis(300)).await;
    assert!(c.frame().await.is_none(), "connections are dropped");
    assert!(TcpStream::connect(broker.tcp_addr()).await.is_err(), "refused during the restart");
    eventually(Duration::from_secs(3), "accepting again", || broker.is_accepting()).await;
    let mut c = Raw::subscribe(&broker, "t", "c", 10).await;
    let first = c.message().await;
    let second = c.message().await;
    assert_eq!((first.body.as_ref(), first.attempts), (&b"in flight"[..], 1));
    assert_eq!(
        (second.body.as_ref(), second.attempts),
        (&b"queued"[..], 2),
        "in-flight goes back, attempts kept"
    );
    assert!(!broker.topics().contains(&"eph#ephemeral".to_owned()));
    assert_eq!(broker.published("t").len(), 2);
}

#[tokio::test]
async fn mpub_faults() {
    use logmill::nsq::protocol::{encode_mpub, encode_pub};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    broker.drop_connections_mid_mpub(1);
    let mut p = Raw::connect(&broker).await;
    p.send(|b| encode_pub("t", b"before", b).expect("pub")).await;
    p.send(|b| encode_mpub("t", [&b"x"[..], b"y"], b).expect("mpub")).await;
    p.expect_ok().await;
    assert!(p.frame().await.is_none(), "dropped mid-MPUB");
    assert_eq!(broker.published("t"), vec!["before"], "nothing of the MPUB committed");

    broker.drop_connections_after_mpub(1);
    let mut p = Raw::connect(&broker).await;
    p.send(|b| encode_mpub("t", [&b"x"[..], b"y"], b).expect("mpub")).await;
    assert!(p.frame().await.is_none(), "dropped without the OK");
    assert_eq!(broker.published("t"), vec!["before", "x", "y"], "committed before the drop");
}

#[tokio::test]
async fn injected_and_failed_publish_errors() {
    use logmill::nsq::protocol::{encode_pub, ErrorCode, Frame};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut p = Raw::connect(&broker).await;
    p.send(logmill::nsq::protocol::encode_nop).await;
    eventually(Duration::from_secs(2), "one connection", || broker.connection_count() == 1).await;
    assert_eq!(broker.inject_error("E_TOUCH_FAILED TOUCH x failed ID not in flight"), 1);
    assert!(matches!(p.frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::TouchFailed));
    broker.fail_next_publishes(1, "E_PUB_FAILED PUB failed exiting");
    p.send(|b| encode_pub("t", b"a", b).expect("pub")).await;
    p.send(|b| encode_pub("t", b"b", b).expect("pub")).await;
    assert!(matches!(p.frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::PubFailed));
    assert!(p.frame().await.is_none(), "a fatal error closes, the pipelined PUB behind it unanswered");
    assert!(broker.published("t").is_empty());
}

#[tokio::test]
async fn stalled_reads_delay_answers() {
    use logmill::nsq::protocol::encode_pub;
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut p = Raw::connect(&broker).await;
    p.send(|b| encode_pub("t", b"a", b).expect("pub")).await;
    p.expect_ok().await;
    let stalled = Instant::now();
    broker.stall_reads(Duration::from_millis(300));
    p.send(|b| encode_pub("t", b"b", b).expect("pub")).await;
    p.expect_ok().await;
    assert!(stalled.elapsed() >= Duration::from_millis(250));
    assert_eq!(broker.published("t"), vec!["a", "b"]);
}

#[tokio::test]
async fn http_api_creates_and_reports() {
    let broker = NsqBroker::start(NsqBrokerOptions { http: true, ..NsqBrokerOptions::default() }).await;
    let http = broker.http_addr().expect("http enabled");
    let post = |path: &'static str| async move {
        let mut s = TcpStream::connect(http).await.expect("http connect");
        let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    assert!(post("/topic/create?topic=logs").await.starts_with("HTTP/1.1 200"));
    // As nsqd v1.3.0: a channel's topic must exist (see also `http_api_answers_as_nsqd`).
    let missing = post("/channel/create?topic=metrics&channel=logmill").await;
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.ends_with("{\"message\":\"TOPIC_NOT_FOUND\"}"),
        "{missing}"
    );
    assert!(post("/topic/create?topic=metrics").await.starts_with("HTTP/1.1 200"));
    assert!(post("/channel/create?topic=metrics&channel=logmill").await.starts_with("HTTP/1.1 200"));
    let bad = post("/topic/create?topic=bad!").await;
    assert!(bad.starts_with("HTTP/1.1 400") && bad.ends_with("{\"message\":\"INVALID_TOPIC\"}"), "{bad}");
    broker.put("metrics", "cpu value=1");
    assert_eq!(broker.channel("metrics", "logmill").map(|c| c.depth), Some(1), "the channel got the message");

    let mut s = TcpStream::connect(http).await.expect("http connect");
    s.write_all(b"GET /stats?format=json HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let stats: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
    assert_eq!(stats["version"], "1.3.0");
    let names: Vec<&str> =
        stats["topics"].as_array().expect("topics").iter().filter_map(|t| t["topic_name"].as_str()).collect();
    assert_eq!(names, ["logs", "metrics"]);
    assert_eq!(stats["topics"][1]["channels"][0]["channel_name"], "logmill");
    assert_eq!(stats["topics"][1]["channels"][0]["depth"], 1);
}

/// The broker's HTTP API against a real nsqd's: the same requests get the same status and
/// body (the real nsqd from `tests/support/nsqd.rs`; skipped, and said so, without one).
#[tokio::test]
async fn http_api_answers_as_nsqd() {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        return nsqd::skip("http_api_answers_as_nsqd", "nsqd");
    };
    let broker = NsqBroker::start(NsqBrokerOptions { http: true, ..NsqBrokerOptions::default() }).await;
    let broker_http = broker.http_addr().expect("http enabled");
    let requests = [
        "POST /topic/create",
        "POST /topic/create?topic=bad!",
        "POST /channel/create?topic=logs&channel=logmill",
        "POST /topic/create?topic=logs",
        "POST /channel/create?topic=logs",
        "POST /channel/create?topic=logs&channel=a/b",
        "POST /channel/create?topic=bad!&channel=logmill",
        "POST /channel/create?channel=logmill",
        "POST /channel/create?topic=logs&channel=logmill",
        "POST /channel/create?topic=logs&channel=logmill",
        "POST /channel/create?topic=logs&channel=tail%23ephemeral",
        "GET /ping",
    ];
    let client = reqwest::Client::new();
    let ask = |addr: std::net::SocketAddr, request: &'static str| {
        let client = client.clone();
        async move {
            let (method, path) = request.split_once(' ').expect("METHOD /path");
            let url = format!("http://{addr}{path}");
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let answer = client.request(method, &url).send().await.expect("an answer");
            (answer.status().as_u16(), answer.text().await.expect("a body"))
        }
    };
    for request in requests {
        let real = ask(nsqd.http_addr(), request).await;
        let ours = ask(broker_http, request).await;
        assert_eq!(ours, real, "{request}: the broker answers {ours:?}, nsqd {real:?}");
    }
    let stats = nsqd.stats().await;
    let channels: Vec<&str> =
        stats.topic("logs").expect("logs").channels.iter().map(|c| c.channel_name.as_str()).collect();
    assert_eq!(channels, broker.channel_names("logs"));
}

/// How nsqd paces messages to a subscriber, the broker against a real nsqd (skipped, and said
/// so, without one). nsqd buffers message frames and flushes them at its output buffer ticker,
/// when the client's RDY window is full, or behind a response; its Go 1.19 ticker channel
/// keeps one tick that fired while nothing was buffered. The consumer asks for a 2 s
/// `output_buffer_timeout`, so "held" (up to a tick, ≥ 1.4 s here) and "at once" are far apart
/// (0.8 s between either and the line drawn, for a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_pacing_matches_nsqd() {
    let Some(nsqd) = Nsqd::start(NsqdOptions::default()).await else {
        return nsqd::skip("message_pacing_matches_nsqd", "nsqd");
    };
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let (real, ours) = tokio::join!(pacing(nsqd.tcp_addr()), pacing(broker.tcp_addr()));
    // Worked out from nsqd's messagePump (see the broker's documentation), step by step below.
    let expected = ["held", "held", "at once", "held", "at once"];
    assert_eq!(real.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), expected, "nsqd: {real:?}");
    assert_eq!(ours.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), expected, "broker: {ours:?}");
}

/// Runs the pacing scenario against `addr`; each message's delay from its PUB's OK, classified.
async fn pacing(addr: std::net::SocketAddr) -> Vec<(&'static str, Duration)> {
    use logmill::nsq::protocol::{
        encode_fin, encode_identify, encode_pub, encode_rdy, encode_sub, IdentifyConfig,
    };
    let identify = IdentifyConfig {
        feature_negotiation: true,
        output_buffer_timeout: 2000,
        ..IdentifyConfig::default()
    };
    let mut sub = Raw::connect_to(addr).await;
    // The output buffer ticker restarts here: ticks at 2 s, 4 s, … from now.
    sub.send(|b| encode_identify(&identify, b).expect("identify")).await;
    assert!(matches!(sub.frame().await, Some(logmill::nsq::protocol::Frame::Response(_))));
    sub.send(|b| encode_sub("pace", "c", b).expect("names")).await;
    sub.expect_ok().await;
    sub.send(|b| encode_rdy(10, b)).await;
    let mut publisher = Raw::connect_to(addr).await;
    let mut delays = Vec::new();
    let mut ids = Vec::new();
    async fn one(
        sub: &mut Raw,
        publisher: &mut Raw,
        body: &'static [u8],
        ids: &mut Vec<logmill::nsq::protocol::MessageId>,
        delays: &mut Vec<(&'static str, Duration)>,
    ) {
        publisher.send(|b| encode_pub("pace", body, b).expect("pub")).await;
        publisher.expect_ok().await;
        let published = Instant::now();
        let m = sub.message().await;
        assert_eq!(m.body.as_ref(), body);
        ids.push(m.id);
        let delay = published.elapsed();
        delays.push((if delay >= Duration::from_millis(800) { "held" } else { "at once" }, delay));
    }
    // 1. Before the first tick: buffered until it (RDY 10, 1 in flight: room for more).
    one(&mut sub, &mut publisher, b"m1", &mut ids, &mut delays).await;
    // 2. Right after the tick that flushed m1, which took that tick: until the next.
    one(&mut sub, &mut publisher, b"m2", &mut ids, &mut delays).await;
    // 3. A tick fires while nothing is buffered and stays pending: the next message goes at once.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    one(&mut sub, &mut publisher, b"m3", &mut ids, &mut delays).await;
    // 4. Right after: that pending tick is spent; until the next tick.
    one(&mut sub, &mut publisher, b"m4", &mut ids, &mut delays).await;
    // 5. RDY 1 with nothing in flight: the message fills the window, so it is flushed at once.
    for id in &ids {
        sub.send(|b| encode_fin(id, b)).await;
    }
    sub.send(|b| encode_rdy(1, b)).await;
    one(&mut sub, &mut publisher, b"m5", &mut ids, &mut delays).await;
    delays
}

#[tokio::test]
async fn held_reads_wait_for_release_and_an_injected_error_reads_no_more() {
    use logmill::nsq::protocol::{encode_pub, ErrorCode, Frame};
    let broker = NsqBroker::start(NsqBrokerOptions::default()).await;
    let mut p = Raw::connect(&broker).await;
    broker.hold_reads();
    p.send(|b| encode_pub("t", b"a", b).expect("pub")).await;
    eventually(Duration::from_secs(5), "the PUB received, unread", || {
        broker.clients().first().is_some_and(|c| c.unread_bytes > 0)
    })
    .await;
    assert!(broker.published("t").is_empty(), "nothing read while held");
    broker.release_reads();
    p.expect_ok().await;
    assert_eq!(broker.published("t"), vec!["a"]);

    // A fatal error injected while a PUB waits unread: the error, the close, and the PUB is
    // never read (nsqd reads nothing after a fatal error).
    broker.hold_reads();
    p.send(|b| encode_pub("t", b"b", b).expect("pub")).await;
    eventually(Duration::from_secs(5), "the second PUB received, unread", || {
        broker.clients().first().is_some_and(|c| c.unread_bytes > 0)
    })
    .await;
    assert_eq!(broker.inject_error("E_INVALID injected"), 1);
    assert!(matches!(p.frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::Invalid));
    assert!(p.frame().await.is_none(), "closed after the error");
    broker.release_reads();
    eventually(Duration::from_secs(5), "the connection gone", || broker.connection_count() == 0).await;
    assert_eq!(broker.published("t"), vec!["a"]);
}

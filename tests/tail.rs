//! The tail engine on real files in temp dirs: a writer appends numbered lines and rotates the
//! way kubelet (rename, new file, gzip of the rotated one) and logrotate (copytruncate) do,
//! while a recording sink acknowledges when the test says so. Every test checks the set of
//! sequence numbers received against the ones written: nothing lost, and duplicates only where
//! the contract allows them (the unacknowledged window of a killed run).
//!
//! Waits are on real signals (records arriving, counters moving) with generous deadlines;
//! no sleep is a correctness condition.

#[path = "support/container_logs.rs"]
mod container_logs;
#[path = "support/tail_harness.rs"]
mod tail_harness;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use logmill::tail::{StartAt, TailSettings, WatchMode};
use tail_harness::*;

struct Dirs {
    _tmp: tempfile::TempDir,
    /// Where the glob matches (`/var/log/containers`).
    containers: PathBuf,
    /// Where the files really are (`/var/log/pods`).
    pods: PathBuf,
    state: PathBuf,
}

/// Settings under which reading pauses within a test's few files: 16 KiB read and not
/// acknowledged, read 4 KiB at a time.
fn pausing_settings(d: &Dirs) -> TailSettings {
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 16 * 1024;
    set.read_chunk_bytes = 4 * 1024;
    set
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let containers = tmp.path().join("containers");
    let pods = tmp.path().join("pods");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::create_dir_all(&pods).unwrap();
    Dirs { _tmp: tmp, containers, pods, state }
}

impl Dirs {
    fn glob(&self) -> PathBuf {
        self.containers.join("*.log")
    }

    /// A container's log as kubelet lays it out: `pods/<ns>_<pod>_<uid>/<c>/0.log`, linked
    /// from `containers/<pod>_<ns>_<c>-<id>.log`. Returns (link, real path).
    fn container(&self, pod: &str) -> (PathBuf, PathBuf) {
        let dir = self.pods.join(format!("ns_{pod}_uid")).join("c");
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("0.log");
        let link = self.containers.join(format!("{pod}_ns_c-0123.log"));
        std::os::unix::fs::symlink(&real, &link).unwrap();
        (link, real)
    }
}

fn exactly_once(state: &State, tag: &str, n: u64) {
    let got = seqs(state, tag);
    let missing: Vec<u64> = (0..n).filter(|i| !got.contains_key(i)).collect();
    let doubled: Vec<(u64, usize)> = got.iter().filter(|(_, c)| **c > 1).map(|(s, c)| (*s, *c)).collect();
    let extra: Vec<u64> = got.keys().filter(|s| **s >= n).copied().collect();
    assert!(missing.is_empty(), "{tag}: lines lost: {missing:?}");
    assert!(
        doubled.is_empty(),
        "{tag}: {} lines read twice, from {:?} to {:?}",
        doubled.len(),
        doubled.first(),
        doubled.last()
    );
    assert!(extra.is_empty(), "{tag}: lines never written: {extra:?}");
}

async fn follows_files(mode: WatchMode) {
    let d = dirs();
    let (_, a_path) = d.container("a");
    let mut a = Writer::create(&a_path, "a");
    a.write(100);
    let run = start(settings(&d.glob(), &d.state, mode), true);
    run.until("a's first lines", |s| all_arrived(s, "a", 100)).await;
    a.write(100);
    let (b_link, b_path) = d.container("b");
    let mut b = Writer::create(&b_path, "b");
    b.write(50);
    run.until("a's and b's later lines", |s| all_arrived(s, "a", 200) && all_arrived(s, "b", 50)).await;
    let s = run.stop().await;
    let s = s.lock();
    exactly_once(&s, "a", 200);
    exactly_once(&s, "b", 50);
    // The source is the path the glob matched, not the symlink's target.
    let b_file = s.records.iter().find(|r| r.text.starts_with("b ")).unwrap().file;
    assert_eq!(s.source_of(b_file), Some(b_link.as_path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_lines_and_new_files_with_inotify() {
    follows_files(WatchMode::Notify).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_lines_and_new_files_by_polling() {
    follows_files(WatchMode::Poll).await;
}

/// kubelet rotates twice while reading is paused (nothing acknowledged: NSQ down), and gzips
/// each rotated file, deleting the uncompressed one, before the engine has read it. When
/// acknowledgements resume, every line of all three files arrives, each once, and both
/// rotated files are closed under the symlink's name.
///
/// With inotify the test waits until the new file is opened, still empty, before writing to
/// it (the engine then knows it only by a short head); polling once a second, the middle file
/// is typically created and rotated between two scans and found as a rotation never seen.
async fn rotation_with_gzip_during_a_pause(mode: WatchMode) {
    let d = dirs();
    let (link, real) = d.container("web");
    let mut w = Writer::create(&real, "w");
    w.write(2000);
    let mut set = settings(&d.glob(), &d.state, mode);
    if mode == WatchMode::Poll {
        set.poll_interval = Duration::from_secs(1);
    }
    set.max_unacked_bytes = 32 * 1024;
    set.read_chunk_bytes = 8 * 1024;
    let run = start(set, false);
    run.until("reading starts, then pauses", |s| !s.records.is_empty()).await;
    let pauses = || run.telemetry.value("logmill_tail_pauses_total", &[]).unwrap_or(0);
    let end = tokio::time::Instant::now() + DEADLINE;
    while pauses() == 0 {
        assert!(tokio::time::Instant::now() < end, "reading pauses at the budget");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = w.rotate("20240101-000001");
    if mode == WatchMode::Notify {
        run.until("the new file opened", |_| run.counter("logmill_files_opened_total") >= 2).await;
    }
    w.write(2000);
    gzip_like_kubelet(&first);
    let second = w.rotate("20240101-000002");
    w.write(1000);
    gzip_like_kubelet(&second);
    assert!(!first.exists() && !second.exists(), "only the .gz files are left");
    w.write(500);
    run.set_auto_ack(true);
    run.until("every line of the three files", |s| all_arrived(s, "w", 5500)).await;
    run.until("both rotated files closed", |s| s.closed.len() >= 2).await;
    let s = run.stop().await;
    let s = s.lock();
    exactly_once(&s, "w", 5500);
    for (_, source) in &s.opened {
        assert_eq!(source, &link, "every generation is reported under the glob's path");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_rotation_and_gzip_during_a_pause_lose_nothing_with_inotify() {
    rotation_with_gzip_during_a_pause(WatchMode::Notify).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_rotation_and_gzip_during_a_pause_lose_nothing_by_polling() {
    rotation_with_gzip_during_a_pause(WatchMode::Poll).await;
}

/// Back-pressure: without acknowledgements the engine reads at most `max_unacked_bytes`, and
/// reads again when they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_stops_within_the_unacknowledged_budget_and_resumes_on_acks() {
    let d = dirs();
    let (_, real) = d.container("bp");
    let mut w = Writer::create(&real, "bp");
    w.write(3000);
    let file_len = std::fs::metadata(&real).unwrap().len();
    let budget = 40 * 1024;
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = budget;
    set.read_chunk_bytes = 16 * 1024;
    let run = start(set, false);
    let pauses = || run.telemetry.value("logmill_tail_pauses_total", &[]).unwrap_or(0);
    let end = tokio::time::Instant::now() + DEADLINE;
    while pauses() == 0 {
        assert!(tokio::time::Instant::now() < end, "reading pauses");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the engine every chance to overrun: more data, more wake-ups.
    w.write(100);
    let read = run.counter("logmill_bytes_read_total");
    assert!(read <= budget as u64, "read {read} bytes with {budget} allowed unacknowledged");
    assert!(read < file_len, "the file is larger than the budget ({file_len} bytes)");
    // The lag gauges see the unread rest while paused (one file: the furthest behind is all).
    let gauge = |name| run.telemetry.value(name, &[]).unwrap_or(0);
    let end = tokio::time::Instant::now() + DEADLINE;
    while gauge("logmill_file_lag_max_bytes") == 0 {
        assert!(tokio::time::Instant::now() < end, "the lag gauge shows the unread bytes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gauge("logmill_file_lag_max_bytes"), gauge("logmill_files_lag_bytes"));
    assert!(gauge("logmill_file_lag_max_bytes") > file_len - read - 1, "most of the file is unread");
    let paused_records = run.shared.lock().records.len();
    // One round of acknowledgements lets it read about one budget more, then it pauses again.
    run.shared.ack_pending();
    run.until("more read after acknowledgements", |s| s.records.len() > paused_records).await;
    run.set_auto_ack(true);
    run.until("everything", |s| all_arrived(s, "bp", 3100)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "bp", 3100);
}

/// copytruncate while reading is paused: the copy holds the lines not read yet, the live file
/// starts again at 0 and grows past the old offset. Both the copy's rest and the new lines
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_reads_the_rest_from_the_copy_and_the_file_from_0() {
    let d = dirs();
    let path = d.containers.join("app.log");
    let mut w = Writer::create(&path, "ct");
    w.write(1000);
    let set = pausing_settings(&d);
    let run = start(set, false);
    run.until("reading starts", |s| !s.records.is_empty()).await;
    let copy = w.copytruncate("1");
    // Past the old offset (16 KiB), so no size check alone could see the truncation.
    w.write(600);
    assert!(std::fs::metadata(&path).unwrap().len() > 16 * 1024);
    run.set_auto_ack(true);
    run.until("the copy's rest and the new lines", |s| all_arrived(s, "ct", 1600)).await;
    let s = run.stop().await;
    let s = s.lock();
    let got = seqs(&s, "ct");
    assert!((0..1600).all(|i| got.contains_key(&i)), "{:?}", missing(&s, "ct", 1600));
    // Lines of the copy are read once: from the copy, after the offset already read.
    assert!(got.range(..1000).all(|(_, c)| *c == 1), "copy lines read twice");
    assert!(copy.exists());
}

/// Plain truncation: new lines after it are read from 0, under a new file id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_restarts_at_0() {
    let d = dirs();
    let path = d.containers.join("t.log");
    let mut w = Writer::create(&path, "t");
    w.write(200);
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    // The rescan's head check is a safety net; this test is about the reader's own check.
    set.rescan_interval = Duration::from_secs(3600);
    let run = start(set, true);
    run.until("before the truncation", |s| all_arrived(s, "t", 200)).await;
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    run.until("the truncation noticed", |_| run.counter("logmill_files_truncated_total") >= 1).await;
    w.write(50);
    run.until("after the truncation", |s| all_arrived(s, "t", 250)).await;
    let s = run.stop().await;
    let s = s.lock();
    exactly_once(&s, "t", 250);
    let ids: std::collections::BTreeSet<_> = s.records.iter().map(|r| r.file).collect();
    assert_eq!(ids.len(), 2, "the truncated stream and the new one");
}

/// copytruncate twice while reading is paused: the first copy holds the rest of the stream
/// being read, the second (written and copied while the engine never read the live file) a
/// whole stream that only that copy holds, the first copy gzipped meanwhile as logrotate's
/// `compress` does. Every line of the three streams arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_twice_during_a_pause_reads_the_stream_only_a_copy_holds() {
    let d = dirs();
    let path = d.containers.join("twice.log");
    let mut w = Writer::create(&path, "c2");
    w.write(1000);
    let set = pausing_settings(&d);
    let run = start(set, false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    let first = w.copytruncate("1");
    w.write(1000);
    gzip_like_kubelet(&first);
    w.copytruncate("2");
    w.write(500);
    run.set_auto_ack(true);
    run.until("the three streams", |s| all_arrived(s, "c2", 2500)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "c2", 2500);
}

/// The same, with logmill killed after both copies were made and a checkpoint written well
/// after them (another file appeared), nothing acknowledged: the restart finds the stream it
/// was reading in the first copy's `.gz`, and the stream only the second copy holds as well,
/// though that copy is older than the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_twice_during_a_pause_then_kill_9_reads_every_stream() {
    let d = dirs();
    let path = d.containers.join("twice.log");
    let mut w = Writer::create(&path, "k2");
    w.write(1000);
    let set = pausing_settings(&d);
    let run = start(set.clone(), false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    let first = w.copytruncate("1");
    w.write(1000);
    gzip_like_kubelet(&first);
    w.copytruncate("2");
    w.write(500);
    // More than the rotation slack later, a new file makes the engine write a checkpoint.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = run.counter("logmill_checkpoint_writes_total");
    Writer::create(&d.containers.join("other.log"), "o").write(1);
    run.until("a checkpoint after the copies", |_| run.counter("logmill_checkpoint_writes_total") > writes)
        .await;
    run.kill(&d.state).await;
    let run = start(set, true);
    run.until("the three streams", |s| all_arrived(s, "k2", 2500)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "k2", 2500);
}

/// A restart finds a rotated file it was reading (its checkpoint names the rotated file), is
/// killed again before it is done, and kubelet gzips that file meanwhile: the next restart
/// finds it as `<rotated name>.gz` and reads it from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_rotation_gzipped_while_down_is_found_as_its_gz() {
    let d = dirs();
    let (_, real) = d.container("gz");
    let mut w = Writer::create(&real, "g");
    w.write(2000);
    let set = pausing_settings(&d);
    let run = start(set.clone(), false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    run.kill(&d.state).await;
    let rotated = w.rotate("20240101-000001");
    w.write(100);
    // The restart finds the file beside the live one; its checkpoint now names the rotation,
    // at an acknowledged offset.
    let run = start(set.clone(), false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    // Acknowledged: per file, the last mark flushed so far.
    let acked: BTreeMap<_, u64> = {
        let pending: Vec<_> = run.shared.lock().pending.iter().copied().collect();
        run.shared.ack_pending();
        pending.into_iter().map(|(f, r)| (f, r.offset)).collect()
    };
    let rotated_id = {
        let s = run.shared.lock();
        s.records
            .iter()
            .find(|r| r.text.starts_with("g 00000000"))
            .map(|r| r.file)
            .expect("read from the start")
    };
    let rotated_acked = acked[&rotated_id];
    let ck = d.state.join("tail-checkpoint.json");
    let names = format!("\"path\": \"{}\"", rotated.display());
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(&ck).unwrap_or_default();
        if text.contains(&names) && text.contains(&format!("\"offset\": {rotated_acked},")) {
            break;
        }
        let shown = rotated.display();
        assert!(tokio::time::Instant::now() < end, "the checkpoint names {shown} at {rotated_acked}: {text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = run.kill(&d.state).await;
    // Delivered: what the second run read before each file's acknowledged offset.
    let delivered: BTreeSet<u64> = second
        .lock()
        .records
        .iter()
        .filter(|r| acked.get(&r.file).is_some_and(|a| r.offset < *a))
        .filter_map(|r| r.text.strip_prefix("g ").and_then(|t| t[..8].parse().ok()))
        .collect();
    assert!(!delivered.is_empty());
    gzip_like_kubelet(&rotated);
    let run = start(set, true);
    run.until("every line", |s| {
        let got = seqs(s, "g");
        (0..2100).all(|i| got.contains_key(&i) || delivered.contains(&i))
    })
    .await;
    let s = run.stop().await;
    let s = s.lock();
    let got = seqs(&s, "g");
    assert!(got.values().all(|c| *c == 1), "nothing twice after the restart");
    assert!(got.keys().all(|i| !delivered.contains(i)), "nothing acknowledged sent again");
    let other: Vec<&str> =
        s.records.iter().map(|r| r.text.as_str()).filter(|t| !t.starts_with("g ")).collect();
    assert!(
        other.is_empty(),
        "records that are no line written (a .gz read as text?): {:?}",
        &other[..other.len().min(3)]
    );
}

/// Docker's json-file rotation shifts names (`.1` → `.2`, the live file → `.1`): a restart
/// that followed a rotated file as `.1` is killed, the file is shifted to `.2` meanwhile, and
/// `.1` now names the next generation. The next restart finds the file by its identity among
/// the live file's rotations, not only beside its old name, and reads every generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_rotation_renamed_again_while_down_is_found_beside_the_live_file() {
    let d = dirs();
    let (_, real) = d.container("shift");
    let mut w = Writer::create(&real, "s");
    w.write(2000);
    let set = pausing_settings(&d);
    let run = start(set.clone(), false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    run.kill(&d.state).await;
    let one = w.rotate("1");
    w.write(2000);
    // Older than the next checkpoint by more than the rotation slack: only its identity can
    // find the first generation, not its age.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The restart follows the first generation as `.1`.
    let run = start(set.clone(), false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    let ck = std::fs::read_to_string(d.state.join("tail-checkpoint.json")).unwrap();
    assert!(
        ck.contains(&format!("\"path\": \"{}\"", one.display())),
        "the checkpoint names {}: {ck}",
        one.display()
    );
    run.kill(&d.state).await;
    std::fs::rename(&one, real.with_extension("log.2")).unwrap();
    w.rotate("1");
    w.write(500);
    let run = start(set, true);
    run.until("every generation", |s| all_arrived(s, "s", 4500)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "s", 4500);
}

/// Truncated and written past the old offset while reading was paused, with no rename to
/// wake a rescan: the reader's own head check restarts it at 0 instead of reading on from the
/// middle of the new content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_past_the_offset_during_a_pause_restarts_at_0() {
    let d = dirs();
    let path = d.containers.join("rw.log");
    let mut w = Writer::create(&path, "rw");
    w.write(1000);
    let mut set = pausing_settings(&d);
    set.rescan_interval = Duration::from_secs(3600);
    let run = start(set, false);
    run.until("reading starts, then pauses", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    let read = run.counter("logmill_bytes_read_total");
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    let mut n = Writer::create(&path, "new");
    n.write(600);
    assert!(std::fs::metadata(&path).unwrap().len() > read, "rewritten past the offset");
    run.set_auto_ack(true);
    run.until("the new content from 0", |s| all_arrived(s, "new", 600)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "new", 600);
}

/// A file deleted with unread bytes (reading paused) is read out through its descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_read_out_through_its_descriptor() {
    let d = dirs();
    let path = d.containers.join("del.log");
    let mut w = Writer::create(&path, "del");
    w.write(3000);
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 16 * 1024;
    let run = start(set, false);
    run.until("reading starts", |s| !s.records.is_empty()).await;
    std::fs::remove_file(&path).unwrap();
    run.until("the deletion noticed", |_| run.counter("logmill_files_rotated_total") >= 1).await;
    run.set_auto_ack(true);
    run.until("every line of the deleted file", |s| all_arrived(s, "del", 3000)).await;
    run.until("closed", |s| s.closed.len() == 1).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "del", 3000);
}

/// A container removed before its log could be opened: its symlink dangles. Counted once and
/// named in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_gone_before_it_was_opened_is_counted_and_named() {
    let logs = captured_logs();
    let d = dirs();
    let link = d.containers.join("gone_ns_c-0123.log");
    std::os::unix::fs::symlink(d.pods.join("never/0.log"), &link).unwrap();
    let (_, real) = d.container("here");
    Writer::create(&real, "h").write(5);
    let run = start(settings(&d.glob(), &d.state, WatchMode::Notify), true);
    run.until("the other file", |s| all_arrived(s, "h", 5)).await;
    run.until("counted", |_| run.counter("logmill_files_vanished_total") == 1).await;
    let shown = link.display().to_string();
    let end = tokio::time::Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&logs.lock().unwrap()).contains(&shown) {
        assert!(tokio::time::Instant::now() < end, "the log names {shown}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Rescans do not count it again.
    let scans = run.counter("logmill_tail_rescans_total");
    run.until("two more rescans", |_| run.counter("logmill_tail_rescans_total") >= scans + 2).await;
    assert_eq!(run.counter("logmill_files_vanished_total"), 1);
    run.stop().await;
}

/// `kill -9` mid-stream: the checkpoint on disk is the one written last, holding only
/// acknowledged marks. While logmill is down the file rotates twice (one rotation gzipped).
/// After the restart every line arrives; the lines received twice are all at or after the
/// acknowledged offset, and each gets the same point key as the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resend_only_the_unacknowledged_window() {
    let d = dirs();
    let (_, real) = d.container("k");
    let mut w = Writer::create(&real, "k");
    w.write(3000);
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 64 * 1024;
    set.read_chunk_bytes = 8 * 1024;
    let run = start(set.clone(), false);
    run.until("a first part", |s| s.records.len() >= 500).await;
    // Acknowledge what was flushed so far, and wait until a checkpoint holds it.
    let acked = {
        let pending: Vec<_> = run.shared.lock().pending.iter().copied().collect();
        run.shared.ack_pending();
        pending.last().map(|(_, r)| r.offset).expect("marks were flushed")
    };
    let ck = d.state.join("tail-checkpoint.json");
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(&ck).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let saved = json["files"].as_array().and_then(|f| f.first()).and_then(|f| f["offset"].as_u64());
        if saved.is_some_and(|o| o >= acked) {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the checkpoint reaches the acknowledged offset {acked}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More is read than acknowledged (up to the budget), then the process dies.
    run.until("read past the acknowledged offset", |s| s.records.iter().any(|r| r.offset >= acked)).await;
    let first = run.kill(&d.state).await;
    let (first_keys, first_offsets) = {
        let first = first.lock();
        let keys: BTreeMap<u64, Option<i64>> = first
            .records
            .iter()
            .filter_map(|r| r.text.get(2..10).and_then(|n| n.parse().ok()).map(|n| (n, r.key)))
            .collect();
        let offsets: BTreeMap<u64, u64> = first
            .records
            .iter()
            .filter_map(|r| r.text.get(2..10).and_then(|n| n.parse().ok()).map(|n| (n, r.offset)))
            .collect();
        (keys, offsets)
    };

    // Down: more lines, two rotations, one of them compressed.
    w.write(500);
    let r1 = w.rotate("20240101-000001");
    w.write(500);
    gzip_like_kubelet(&r1);
    w.rotate("20240101-000002");
    w.write(300);

    let run = start(set, true);
    // Delivered: what the first run had acknowledged, and everything the second run reads.
    // The first run's unacknowledged lines died with it.
    let acknowledged = |n: &u64| first_offsets.get(n).is_some_and(|o| *o < acked);
    run.until("every line after the restart", |s| {
        let got = seqs(s, "k");
        (0..4300).all(|i| got.contains_key(&i) || acknowledged(&i))
    })
    .await;
    let second = run.stop().await;
    let second = second.lock();
    let mut resent = 0;
    for r in &second.records {
        let Some(n) = r.text.get(2..10).and_then(|n| n.parse::<u64>().ok()) else { continue };
        if let Some(key) = first_keys.get(&n) {
            resent += 1;
            let offset = first_offsets[&n];
            assert!(offset >= acked, "line {n} at {offset} was acknowledged (up to {acked}) and sent again");
            assert_eq!(&r.key, key, "line {n} resent with another point key");
        }
    }
    let got = seqs(&second, "k");
    assert!(got.values().all(|c| *c == 1), "nothing twice within the second run");
    println!("resent after the kill: {resent} lines (unacknowledged window)");
    assert!(resent > 0, "the unacknowledged window is resent");
}

/// A graceful stop writes a final checkpoint after the last acknowledgements: a restart sends
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_checkpoints_the_last_acknowledgements() {
    let d = dirs();
    let (_, real) = d.container("g");
    let mut w = Writer::create(&real, "g");
    w.write(1000);
    let set = settings(&d.glob(), &d.state, WatchMode::Notify);
    let run = start(set.clone(), false);
    run.until("all read", |s| all_arrived(s, "g", 1000)).await;
    // Acknowledged only after the cancel: the engine waits for them.
    run.stop_acking(true).await;
    w.write(10);
    let run = start(set, true);
    run.until("the new lines", |s| all_arrived(s, "g", 1010) || seqs(s, "g").contains_key(&1009)).await;
    let s = run.stop().await;
    let got = seqs(&s.lock(), "g");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1000..1010).collect::<Vec<_>>(),
        "only the new lines"
    );
}

/// CRI lines for the split-line tests: `<time> <stream> <tag> <text>`.
fn cri(stream: &str, tag: &str, text: &str) -> String {
    format!("2024-01-01T00:00:00.000000000Z {stream} {tag} {text}\n")
}

/// A line written in 16 KiB pieces whose bytes exceed the unacknowledged budget (a container
/// writing 100 KiB without a newline), stderr lines between its pieces: the checkpoint cannot
/// pass the line's start before its last piece, yet reading must go on to that piece (what is
/// held of the line is capped at `max_line_bytes`; what was handed over is acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_line_larger_than_the_budget_does_not_stall_reading() {
    let d = dirs();
    let (_, real) = d.container("big");
    let mut content = String::new();
    for i in 0..50 {
        content.push_str(&cri("stdout", "F", &format!("b {i:08} {}", "x".repeat(40))));
    }
    let piece = "P".repeat(16 * 1024);
    content.push_str(&cri("stdout", "P", &format!("b {:08} {piece}", 50)));
    for i in 51..57 {
        content.push_str(&cri("stderr", "F", &format!("b {i:08} between the pieces")));
        content.push_str(&cri("stdout", "P", &piece));
    }
    content.push_str(&cri("stdout", "F", "end of the long line"));
    for i in 57..100 {
        content.push_str(&cri("stdout", "F", &format!("b {i:08} {}", "x".repeat(40))));
    }
    std::fs::write(&real, &content).unwrap();
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 32 * 1024;
    set.read_chunk_bytes = 4 * 1024;
    let run = start(set, true);
    run.until("every line", |s| all_arrived(s, "b", 100)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "b", 100);
}

/// A graceful stop while reading is paused between the pieces of a CRI line split at 16 KiB,
/// a stderr line read after its first piece: the stop reads the line to its end before the
/// last checkpoint, so a restart sends neither the stderr line nor anything else again (the
/// checkpoint could only hold the split line's start, before the stderr line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_between_the_pieces_of_a_split_line_resends_nothing() {
    let d = dirs();
    let (_, real) = d.container("split");
    let mut content = String::new();
    for i in 0..100 {
        content.push_str(&cri("stdout", "F", &format!("p {i:08} {}", "x".repeat(40))));
    }
    let long = "L".repeat(40 * 1024);
    let pieces: Vec<&str> =
        (0..long.len()).step_by(16 * 1024).map(|i| &long[i..(i + 16 * 1024).min(long.len())]).collect();
    content.push_str(&cri("stdout", "P", &format!("p {:08} {}", 100, pieces[0])));
    content.push_str(&cri("stderr", "F", &format!("p {:08} between the pieces", 101)));
    content.push_str(&cri("stdout", "P", pieces[1]));
    let second_piece_end = content.len() as u64;
    content.push_str(&cri("stdout", "F", pieces[2]));
    for i in 102..200 {
        content.push_str(&cri("stdout", "F", &format!("p {i:08} {}", "x".repeat(40))));
    }
    std::fs::write(&real, &content).unwrap();
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 28 * 1024;
    set.read_chunk_bytes = 4 * 1024;
    let run = start(set.clone(), false);
    run.until("the stderr line between the pieces", |s| seqs(s, "p").contains_key(&101)).await;
    run.until("reading paused", |_| run.counter("logmill_tail_pauses_total") >= 1).await;
    assert!(run.counter("logmill_bytes_read_total") < second_piece_end, "paused inside the split line");
    let first = run.stop().await;
    let run = start(set, true);
    run.until("the rest", |s| seqs(s, "p").contains_key(&199)).await;
    let second = run.stop().await;
    let (first, second) = (seqs(&first.lock(), "p"), seqs(&second.lock(), "p"));
    let twice: Vec<&u64> = first.keys().filter(|n| second.contains_key(n)).collect();
    assert!(twice.is_empty(), "sent again after a graceful stop: {twice:?}");
    assert!((0..200).all(|n| first.contains_key(&n) || second.contains_key(&n)), "every line");
}

/// While logmill was down the file was deleted and a new one created at the same path (the
/// inode may be reused), or rewritten in place past the old offset: it is read from 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_rewritten_file_is_read_from_0_after_a_restart() {
    let d = dirs();
    let path = d.containers.join("r.log");
    let mut w = Writer::create(&path, "r");
    w.write(300);
    let set = settings(&d.glob(), &d.state, WatchMode::Notify);
    let run = start(set.clone(), true);
    run.until("all read", |s| all_arrived(s, "r", 300)).await;
    run.stop().await;
    let old_ino = std::fs::metadata(&path).unwrap().ino();
    std::fs::remove_file(&path).unwrap();
    let mut n = Writer::create(&path, "n");
    n.write(400);
    println!("inode reused: {}", std::fs::metadata(&path).unwrap().ino() == old_ino);
    let run = start(set.clone(), true);
    run.until("the new file from 0", |s| all_arrived(s, "n", 400)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "n", 400);
    assert!(seqs(&s.lock(), "r").is_empty());

    // Same inode, rewritten past the old offset while down.
    let ino = std::fs::metadata(&path).unwrap().ino();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    let mut m = Writer::create(&path, "m");
    m.write(500);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    let run = start(set, true);
    run.until("the rewritten file from 0", |s| all_arrived(s, "m", 500)).await;
    let s = run.stop().await;
    exactly_once(&s.lock(), "m", 500);
    assert!(seqs(&s.lock(), "n").is_empty());
}

/// Replacing fluentd: its pos_file says where it was. A file still at its inode resumes at
/// fluentd's offset; a file rotated since is found beside the live one by inode and read from
/// fluentd's offset, the new live file from 0; a file fluentd never saw is read whole. On the
/// next start the checkpoint rules and the pos_file is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluentd_positions_are_imported_on_the_first_start_only() {
    let d = dirs();
    let x_path = d.containers.join("x.log");
    let mut x = Writer::create(&x_path, "x");
    x.write(40);
    let x_offset = std::fs::metadata(&x_path).unwrap().len();
    x.write(60);
    let y_path = d.containers.join("y.log");
    let mut y = Writer::create(&y_path, "y");
    y.write(30);
    let y_offset = std::fs::metadata(&y_path).unwrap().len();
    y.write(70);
    let y_ino = std::fs::metadata(&y_path).unwrap().ino();
    std::fs::rename(&y_path, d.containers.join("y.log.1")).unwrap();
    let mut y2 = Writer::create(&y_path, "y2");
    y2.write(20);
    let mut z = Writer::create(&d.containers.join("z.log"), "z");
    z.write(10);
    let x_ino = std::fs::metadata(&x_path).unwrap().ino();
    let pos = d.state.parent().unwrap().join("containers.log.pos");
    std::fs::write(
        &pos,
        format!(
            "{}\t{:016x}\t{:016x}\n{}\t{:016x}\t{:016x}\n{}\tffffffffffffffff\t{:016x}\n",
            x_path.display(),
            x_offset,
            x_ino,
            y_path.display(),
            y_offset,
            y_ino,
            d.containers.join("old.log").display(),
            12345
        ),
    )
    .unwrap();
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.fluentd_pos_file = Some(pos);
    let run = start(set.clone(), true);
    run.until("every file", |s| {
        let x = seqs(s, "x");
        (40..100).all(|i| x.contains_key(&i))
            && (30..100).all(|i| seqs(s, "y").contains_key(&i))
            && all_arrived(s, "y2", 20)
            && all_arrived(s, "z", 10)
    })
    .await;
    let s = run.stop().await;
    {
        let s = s.lock();
        assert_eq!(seqs(&s, "x").keys().copied().collect::<Vec<_>>(), (40..100).collect::<Vec<_>>());
        assert_eq!(seqs(&s, "y").keys().copied().collect::<Vec<_>>(), (30..100).collect::<Vec<_>>());
        exactly_once(&s, "y2", 20);
        exactly_once(&s, "z", 10);
        assert!(s
            .records
            .iter()
            .all(|r| !r.text.starts_with("x 000000") || r.text[2..10].parse::<u64>().unwrap() >= 40));
    }
    x.write(5);
    let run = start(set, true);
    run.until("x's new lines", |s| seqs(s, "x").contains_key(&104)).await;
    let s = run.stop().await;
    let s = s.lock();
    assert_eq!(
        seqs(&s, "x").keys().copied().collect::<Vec<_>>(),
        (100..105).collect::<Vec<_>>(),
        "checkpoint, not pos_file"
    );
    assert!(seqs(&s, "z").is_empty());
}

/// `start_at = end`: files present at the very first start are followed from their end;
/// files that appear later are read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_skips_what_was_there_at_the_first_start() {
    let d = dirs();
    let mut a = Writer::create(&d.containers.join("a.log"), "a");
    a.write(100);
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.start_at = StartAt::End;
    let run = start(set, true);
    // The engine has opened the file once it is watched.
    run.until("a followed", |_| run.counter("logmill_files_watched") == 1).await;
    a.write(10);
    let mut b = Writer::create(&d.containers.join("b.log"), "b");
    b.write(5);
    run.until("a's new lines and b", |s| seqs(s, "a").contains_key(&109) && all_arrived(s, "b", 5)).await;
    let s = run.stop().await;
    let s = s.lock();
    assert_eq!(seqs(&s, "a").keys().copied().collect::<Vec<_>>(), (100..110).collect::<Vec<_>>());
    exactly_once(&s, "b", 5);
}

/// `ignore_older`: a file last written long ago is followed from its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_older_follows_old_files_from_their_end() {
    let d = dirs();
    let old_path = d.containers.join("old.log");
    let mut old = Writer::create(&old_path, "o");
    old.write(50);
    std::fs::File::options()
        .write(true)
        .open(&old_path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let mut new = Writer::create(&d.containers.join("new.log"), "n");
    new.write(50);
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.ignore_older = Some(Duration::from_secs(3600));
    let run = start(set, true);
    run.until("the new file", |s| all_arrived(s, "n", 50)).await;
    old.write(5);
    run.until("the old file's new lines", |s| seqs(s, "o").contains_key(&54)).await;
    let s = run.stop().await;
    let s = s.lock();
    assert_eq!(seqs(&s, "o").keys().copied().collect::<Vec<_>>(), (50..55).collect::<Vec<_>>());
    exactly_once(&s, "n", 50);
}

/// A 1 MiB line is cut at `max_line_bytes`, counted, and the next line is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_line_is_truncated_and_counted() {
    let d = dirs();
    let path = d.containers.join("long.log");
    let mut content = b"before\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 1 << 20));
    content.extend_from_slice(b"\nafter\n");
    std::fs::write(&path, &content).unwrap();
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_line_bytes = 256 * 1024;
    let run = start(set, true);
    run.until("three records", |s| s.records.len() >= 3).await;
    assert_eq!(run.counter("logmill_lines_truncated_total"), 1);
    let s = run.stop().await;
    let s = s.lock();
    let got: Vec<(&str, usize, bool, u64)> =
        s.records.iter().map(|r| (&r.text[..r.text.len().min(6)], r.len, r.truncated, r.offset)).collect();
    assert_eq!(
        got,
        [("before", 6, false, 0), ("xxxxxx", 256 * 1024, true, 7), ("after", 5, false, 7 + (1 << 20) + 1)]
    );
}

/// Fairness: a file with a 24 MiB backlog does not hold back a quiet file's new line by more
/// than a few read chunks (the round robin gives each file one chunk per round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_file_does_not_starve_a_quiet_one() {
    let d = dirs();
    let mut busy = Writer::create(&d.containers.join("busy.log"), "busy");
    busy.pad = 4000;
    busy.write(6000);
    let busy_len = std::fs::metadata(&busy.path).unwrap().len();
    let mut quiet = Writer::create(&d.containers.join("quiet.log"), "quiet");
    let chunk = 64 * 1024;
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.read_chunk_bytes = chunk;
    set.max_unacked_bytes = 1 << 30;
    let run = start(set, true);
    // Slow the downstream a little, so the backlog lasts while the quiet line is written.
    *run.shared.flush_delay.lock().unwrap() = Duration::from_millis(2);
    run.until("the busy file is being read", |s| s.bytes > 4 * chunk as u64).await;
    // File bytes of the busy lines handed over (text and its newline; the CRI prefix aside,
    // the same for every line).
    let busy_bytes = |records: &[Got]| -> u64 {
        records.iter().filter(|r| r.text.starts_with("busy ")).map(|r| r.len as u64 + 1).sum()
    };
    let at_write = busy_bytes(&run.shared.lock().records);
    quiet.write(1);
    run.until("the quiet line", |s| all_arrived(s, "quiet", 1)).await;
    let busy_before = {
        let s = run.shared.lock();
        let pos = s.records.iter().position(|r| r.text.starts_with("quiet ")).unwrap();
        busy_bytes(&s.records[..pos])
    };
    // Busy bytes handed over between the write and the quiet line: the chunk being read, one
    // round (one chunk) and a chunk of slack for the wake-up.
    let waited = busy_before.saturating_sub(at_write);
    println!("busy bytes read while the quiet line waited: {waited} (chunk {chunk})");
    assert!(busy_before < busy_len, "the backlog was not finished first");
    assert!(waited <= 4 * chunk as u64, "the quiet line waited for {waited} busy bytes");
    run.set_auto_ack(true);
    *run.shared.flush_delay.lock().unwrap() = Duration::ZERO;
    run.stop().await;
}

/// Not a correctness test: how fast the engine hands records over, for a rough figure
/// (`cargo test --release --test tail throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let d = dirs();
    let n = 1_000_000u64;
    let mut files = Vec::new();
    for i in 0..4 {
        let mut w = Writer::create(&d.containers.join(format!("t{i}.log")), &format!("t{i}"));
        w.pad = 100;
        w.write(n / 4);
        files.push(w);
    }
    let started = std::time::Instant::now();
    let mut set = settings(&d.glob(), &d.state, WatchMode::Notify);
    set.max_unacked_bytes = 64 << 20;
    let run = start(set, true);
    run.until("all lines", |s| s.records.len() as u64 >= n).await;
    let secs = started.elapsed().as_secs_f64();
    println!("{n} CRI lines of ~150 bytes in {secs:.2} s: {:.0} lines/s (recording sink)", n as f64 / secs);
    run.stop().await;
}

//! The collector runner: every enabled input on one clock, each in its own task, each cycle's
//! points as one [`Batch`] of line protocol per input, a task's batches of a cycle sent
//! together into a bounded channel.
//!
//! - **Aligned cycles.** Cycles fall on multiples of the interval on the wall clock (Telegraf's
//!   `round_interval`), and every point of a cycle carries that tick's time: all inputs of one
//!   cycle share one timestamp, and two cycles never share one.
//! - **Isolation.** The kubelet and nsqd inputs are runtime tasks of their own. The file
//!   inputs share one thread that sleeps until its tick, then reads, encodes and sends (one
//!   wake-up per cycle; see [`ThreadLink`]), those that can wait on something outside the
//!   kernel's own tables last: `disk` (a `statfs` of a dead NFS server blocks), `net`,
//!   `system`. The runner watches that thread without waking it, and an input stuck for a
//!   whole interval is left behind on it while the others go on on a new thread
//!   ([`Shared::supervise`]), so a slow or failing input delays the others by one cycle at
//!   most. An input still busy when its next tick comes skips that tick; the skipped cycles
//!   are counted (`logmill_collect_cycles_missed_total{input}`) and logged once.
//! - **Quiet errors.** A problem (a missing file, a malformed line, a kubelet that does not
//!   answer) is counted every cycle (`logmill_collect_problems_total{input,reason}`) but logged
//!   once when it starts, and once more when it goes away ("recovered").
//! - **Back-pressure.** The channel is the caller's and bounded: when its consumer is slow
//!   (InfluxDB down), inputs wait to hand their batch over and miss ticks rather than pile up
//!   memory.
//!
//! The inputs that report rates (cpu, diskio) take a first sample when they start, so the
//! first cycle already has rates; `once` samples them twice, `once_sample_gap` apart.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::read::{CycleReads, FileInput, Gathered, HostContext};
use super::remote::{KubeletInput, NsqStatsInput, RemoteError};
use super::{encode_points, CollectSettings, HostInput, Problem};
use crate::telemetry::{Counter, Telemetry};

/// How long `once` waits for an input before giving up on it (a hung `statfs`, a kubelet
/// that accepts and never answers despite its own timeout).
const ONCE_INPUT_TIMEOUT: Duration = Duration::from_secs(30);

/// One input's points of one cycle, as line protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Telegraf's name of the input (`cpu`, `kubernetes`, `nsq`…).
    pub input: &'static str,
    /// The cycle's time, which every point of the batch carries.
    pub timestamp_ns: i64,
    /// Whole lines, each ending in `\n`.
    pub body: Bytes,
    /// Lines in `body`.
    pub points: usize,
}

impl Batch {
    /// `body` cut at line boundaries into pieces of at most `max_bytes` (a single longer line
    /// is a piece of its own): NSQ messages have a size limit (`nsq.max_msg_bytes`).
    pub fn split(&self, max_bytes: usize) -> Vec<Bytes> {
        crate::metrics::line_protocol::split_lines(self.body.clone(), max_bytes)
    }
}

/// What `once` produced.
#[derive(Debug, Default)]
pub struct OnceReport {
    /// One batch per input that produced points, in the order of the inputs.
    pub batches: Vec<Batch>,
    /// Every problem of the cycle, by input.
    pub problems: Vec<(&'static str, Problem)>,
}

/// Why the collectors could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    #[error("kubelet: {0}")]
    Kubelet(RemoteError),
    #[error("nsq: {0}")]
    Nsq(RemoteError),
}

/// One task of the runner.
#[derive(Debug)]
enum Input {
    /// File inputs, gathered one after the other on one thread (their own in `run`, a blocking
    /// one in `once`).
    Files(Vec<FileInput>),
    // Boxed: an HTTP client and its settings are many times a `Vec`'s size.
    Kubelet(Box<KubeletInput>),
    Nsq(NsqStatsInput),
}

/// Whether a file input's reads can wait on something the kernel does not answer from memory:
/// such an input has a task of its own in `once`, and comes last on the shared thread of
/// `run`. `disk`: `statfs` of a dead NFS or FUSE mount. `net`: a NIC's
/// `speed` in sysfs waits for the RTNL lock, which a stuck driver can hold. `system`: utmp is
/// a file on `host_var`, whatever filesystem that is.
fn can_block(kind: HostInput) -> bool {
    matches!(kind, HostInput::Disk | HostInput::Net | HostInput::System)
}

impl Input {
    /// Telegraf's names of the inputs of this task, in the order `gather` returns samples.
    fn names(&self) -> Vec<&'static str> {
        match self {
            Input::Files(files) => files.iter().map(|f| f.kind().name()).collect(),
            // Telegraf's plugin names.
            Input::Kubelet(_) => vec!["kubernetes"],
            Input::Nsq(_) => vec!["nsq"],
        }
    }

    fn needs_two_samples(&self) -> bool {
        matches!(self, Input::Files(files) if files.iter().any(FileInput::needs_two_samples))
    }

    /// One sample of each input of the task. File inputs move to a blocking thread and back,
    /// with their state.
    async fn gather(self, ctx: Arc<HostContext>) -> (Input, Vec<Gathered>) {
        match self {
            Input::Files(mut files) => {
                let kinds: Vec<HostInput> = files.iter().map(FileInput::kind).collect();
                let joined = tokio::task::spawn_blocking(move || {
                    let samples = gather_files(&mut files, &ctx);
                    (files, samples)
                })
                .await;
                match joined {
                    Ok((files, samples)) => (Input::Files(files), samples),
                    // The runtime is shutting down: nothing to report, and nothing will ask.
                    Err(e) => {
                        let samples = kinds
                            .iter()
                            .map(|_| Gathered {
                                problems: vec![Problem::new("panicked", e.to_string())],
                                ..Gathered::default()
                            })
                            .collect();
                        (Input::Files(kinds.into_iter().map(FileInput::new).collect()), samples)
                    }
                }
            }
            Input::Kubelet(k) => {
                let g = k.gather().await;
                (Input::Kubelet(k), vec![g])
            }
            Input::Nsq(n) => {
                let g = n.gather().await;
                (Input::Nsq(n), vec![g])
            }
        }
    }
}

/// One sample of each of `files`, one cycle: the files several of them read are read once.
fn gather_files<'a>(files: impl IntoIterator<Item = &'a mut FileInput>, ctx: &HostContext) -> Vec<Gathered> {
    let mut reads = CycleReads::default();
    files.into_iter().map(|file| gather_caught(file, ctx, &mut reads)).collect()
}

/// One sample of `file`. Only a bug panics in there; the input then starts afresh, and the
/// inputs sharing its thread are not held up.
fn gather_caught(file: &mut FileInput, ctx: &HostContext, reads: &mut CycleReads) -> Gathered {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| file.gather_with(ctx, reads))) {
        Ok(g) => g,
        Err(panic) => {
            *file = FileInput::new(file.kind());
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let mut g = Gathered::default();
            g.problems.push(Problem::new("panicked", what));
            g
        }
    }
}

/// The collectors, ready to run: [`Collector::run`] for the long-running roles,
/// [`Collector::once`] for `logmill collect --once`.
#[derive(Debug)]
pub struct Collector {
    interval: Duration,
    round_interval: bool,
    once_sample_gap: Duration,
    host: Arc<str>,
    ctx: Arc<HostContext>,
    inputs: Vec<Input>,
    /// Every input's name, in the order of the settings.
    names: Vec<&'static str>,
    telemetry: Telemetry,
}

impl Collector {
    /// Sets up every enabled input (HTTP clients built, the kubelet's CA read). `host` is the
    /// `host` tag of every point; `telemetry` the registry the runner counts into.
    pub fn new(settings: &CollectSettings, host: &str, telemetry: &Telemetry) -> Result<Self, CollectError> {
        let (alone, shared): (Vec<HostInput>, Vec<HostInput>) =
            settings.inputs.iter().copied().partition(|kind| can_block(*kind));
        let mut inputs = Vec::new();
        if !shared.is_empty() {
            inputs.push(Input::Files(shared.into_iter().map(FileInput::new).collect()));
        }
        inputs.extend(alone.into_iter().map(|kind| Input::Files(vec![FileInput::new(kind)])));
        if let Some(k) = &settings.kubelet {
            inputs
                .push(Input::Kubelet(Box::new(KubeletInput::new(k.clone()).map_err(CollectError::Kubelet)?)));
        }
        if let Some(n) = &settings.nsq {
            inputs.push(Input::Nsq(NsqStatsInput::new(n.clone()).map_err(CollectError::Nsq)?));
        }
        let mut names: Vec<&'static str> = settings.inputs.iter().map(|kind| kind.name()).collect();
        names.extend(inputs.iter().filter(|i| !matches!(i, Input::Files(_))).flat_map(Input::names));
        Ok(Self {
            names,
            interval: settings.interval,
            round_interval: settings.round_interval,
            once_sample_gap: settings.once_sample_gap,
            host: host.into(),
            ctx: Arc::new(HostContext::new(settings)),
            inputs,
            telemetry: telemetry.clone(),
        })
    }

    /// The enabled inputs, by Telegraf's names.
    pub fn input_names(&self) -> Vec<&'static str> {
        self.names.clone()
    }

    /// Runs every input on its schedule until `cancel` fires (or `out` is closed), sending each
    /// cycle's batches of a task (one per input that produced points) as one message. Spawn it;
    /// it returns once every input has stopped, or at once on `cancel` (a file input stuck in
    /// the kernel is left to its thread).
    pub async fn run(self, out: mpsc::Sender<Vec<Batch>>, cancel: CancellationToken) {
        let schedule = Schedule::new(crate::timefmt::now_ns(), self.interval, self.round_interval);
        tracing::info!(
            inputs = %self.input_names().join(","),
            interval_ms = self.interval.as_millis() as u64,
            round_interval = self.round_interval,
            "collectors started"
        );
        // The file inputs' threads send through their supervisor, which forwards to `out`.
        let (threads_out, from_threads) = mpsc::channel(1);
        let link = Arc::new(ThreadLink::new(threads_out, &cancel));
        let mut tasks = tokio::task::JoinSet::new();
        // Every file input on one thread, those that can block last: see `Shared::supervise`.
        let mut files = Vec::new();
        for input in self.inputs {
            match input {
                Input::Files(f) => files.extend(f),
                other => {
                    let run = InputRun::new(other.names(), &self.ctx, &self.host, schedule, &self.telemetry);
                    tasks.spawn(run.run(other, out.clone(), cancel.clone()));
                }
            }
        }
        if !files.is_empty() {
            let shared = Shared {
                ctx: self.ctx.clone(),
                host: self.host.clone(),
                schedule,
                telemetry: self.telemetry.clone(),
                link: link.clone(),
            };
            tasks.spawn(shared.supervise(files, from_threads, out.clone(), cancel.clone()));
        }
        drop(out);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = async { while tasks.join_next().await.is_some() {} } => {}
        }
        // Threads wait for their ticks on the link, not on the runtime: woken here, and the
        // channel closed for them even if one is stuck in a read.
        link.stop();
        while tasks.join_next().await.is_some() {}
    }

    /// One cycle of every input, stamped now. Inputs that report rates are sampled twice,
    /// `once_sample_gap` apart, so that every measurement is there.
    pub async fn once(self) -> OnceReport {
        let Collector { once_sample_gap, host, ctx, inputs, names, telemetry, .. } = self;
        let mut report = OnceReport::default();
        let timed_out = |names: Vec<&'static str>, report: &mut OnceReport| {
            for name in names {
                let p = Problem::new("timed_out", format!("no answer within {ONCE_INPUT_TIMEOUT:?}"));
                InputCounters::new(&telemetry, name).problem(&p);
                report.problems.push((name, p));
            }
        };
        let two_samples = inputs.iter().any(Input::needs_two_samples);
        let mut ready = Vec::with_capacity(inputs.len());
        for (task_names, input, _) in gather_all(inputs, &ctx, Input::needs_two_samples).await {
            match input {
                Some(input) => ready.push(input),
                None => timed_out(task_names, &mut report),
            }
        }
        if two_samples {
            tokio::time::sleep(once_sample_gap).await;
        }
        let timestamp_ns = crate::timefmt::now_ns();
        for (task_names, _, samples) in gather_all(ready, &ctx, |_| true).await {
            let Some(samples) = samples else {
                timed_out(task_names, &mut report);
                continue;
            };
            let mut buf = BytesMut::new();
            for (name, gathered) in task_names.into_iter().zip(samples) {
                let counters = InputCounters::new(&telemetry, name);
                let (batch, problems) =
                    finish_cycle(name, gathered, &host, timestamp_ns, &counters, &mut buf);
                report.batches.extend(batch);
                report.problems.extend(problems.into_iter().map(|p| (name, p)));
            }
        }
        // Tasks group inputs; the report keeps the order of the settings.
        let order = |name: &str| names.iter().position(|n| *n == name);
        report.batches.sort_by_key(|b| order(b.input));
        report.problems.sort_by_key(|(name, _)| order(name));
        report
    }

    /// One cycle of the host (file) inputs on this thread, stamped `timestamp_ns`: what a
    /// cycle costs, for benchmarks and tests. The kubelet and nsq inputs are not asked.
    pub fn gather_host_blocking(&mut self, timestamp_ns: i64) -> Vec<Batch> {
        let mut batches = Vec::new();
        for input in &mut self.inputs {
            let Input::Files(files) = input else { continue };
            let mut reads = CycleReads::default();
            for file in files {
                let g = file.gather_with(&self.ctx, &mut reads);
                let mut body = BytesMut::with_capacity(4096);
                let (points, _) = encode_points(&g.points, &self.host, timestamp_ns, &mut body);
                if points > 0 {
                    batches.push(Batch {
                        input: file.kind().name(),
                        timestamp_ns,
                        body: body.freeze(),
                        points,
                    });
                }
            }
        }
        batches
    }
}

/// Gathers the tasks `which` selects concurrently, each within [`ONCE_INPUT_TIMEOUT`].
/// Returns, in order, each task's input names, the task (`None` if it timed out) and its
/// samples, one per name (`None` when not selected or timed out).
#[allow(clippy::type_complexity)]
async fn gather_all(
    inputs: Vec<Input>,
    ctx: &Arc<HostContext>,
    which: impl Fn(&Input) -> bool,
) -> Vec<(Vec<&'static str>, Option<Input>, Option<Vec<Gathered>>)> {
    let mut results = Vec::with_capacity(inputs.len());
    let mut set = tokio::task::JoinSet::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let names = input.names();
        if which(&input) {
            let ctx = ctx.clone();
            set.spawn(async move { (i, tokio::time::timeout(ONCE_INPUT_TIMEOUT, input.gather(ctx)).await) });
            results.push((names, None, None));
        } else {
            results.push((names, Some(input), None));
        }
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((i, Ok((input, samples)))) = joined {
            results[i].1 = Some(input);
            results[i].2 = Some(samples);
        }
    }
    results
}

/// Encodes a cycle's points into `buf` (emptied first; the batch is cut from it, so one buffer
/// serves every input of a task) and counts its problems; the batch, if any point was written.
fn finish_cycle(
    name: &'static str,
    gathered: Gathered,
    host: &str,
    timestamp_ns: i64,
    counters: &InputCounters,
    buf: &mut BytesMut,
) -> (Option<Batch>, Vec<Problem>) {
    let Gathered { points, mut problems } = gathered;
    buf.clear();
    buf.reserve(points.len() * 256);
    let (written, errors) = encode_points(&points, host, timestamp_ns, buf);
    if let Some(first) = errors.first() {
        problems.push(Problem::new(
            "unencodable",
            format!("{} point(s) line protocol cannot carry, left out (first: {first})", errors.len()),
        ));
    }
    counters.points.add(written as u64);
    for p in &problems {
        counters.problem(p);
    }
    let batch = (written > 0).then(|| Batch {
        input: name,
        timestamp_ns,
        body: buf.split().freeze(),
        points: written,
    });
    (batch, problems)
}

/// The ticks of every input: `start + k × interval`, with `start` on a multiple of the
/// interval when rounding (the first multiple after now), else now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    start_ns: i64,
    interval_ns: i64,
}

impl Schedule {
    fn new(now_ns: i64, interval: Duration, round: bool) -> Self {
        let interval_ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX).max(1);
        let start_ns = if round {
            now_ns.div_euclid(interval_ns).saturating_add(1).saturating_mul(interval_ns)
        } else {
            now_ns
        };
        Self { start_ns, interval_ns }
    }

    fn tick_ns(&self, k: u64) -> i64 {
        self.start_ns.saturating_add(i64::try_from(k).unwrap_or(i64::MAX).saturating_mul(self.interval_ns))
    }

    /// The first tick after `now_ns`, and after tick `after` when given (a clock stepped
    /// back never repeats a tick).
    fn next_after(&self, now_ns: i64, after: Option<u64>) -> u64 {
        let elapsed = now_ns.saturating_sub(self.start_ns);
        let due = if elapsed < 0 {
            0
        } else {
            u64::try_from(elapsed / self.interval_ns).unwrap_or(u64::MAX).saturating_add(1)
        };
        match after {
            Some(k) => due.max(k.saturating_add(1)),
            None => due,
        }
    }
}

/// Counters of one input.
struct InputCounters {
    telemetry: Telemetry,
    input: &'static str,
    points: Counter,
    missed: Counter,
}

impl InputCounters {
    fn new(telemetry: &Telemetry, input: &'static str) -> Self {
        Self {
            telemetry: telemetry.clone(),
            input,
            points: telemetry.counter(
                "logmill_collect_points_total",
                "Points the host, kubelet and nsq collectors produced.",
                &[("input", input)],
            ),
            missed: telemetry.counter(
                "logmill_collect_cycles_missed_total",
                "Collection cycles an input skipped because its previous one, or that of an input stuck on its thread, was still running or waiting to be delivered.",
                &[("input", input)],
            ),
        }
    }

    fn problem(&self, p: &Problem) {
        self.telemetry
            .counter(
                "logmill_collect_problems_total",
                "Problems of collection cycles (unreadable files, malformed lines, HTTP errors), by input and reason.",
                &[("input", self.input), ("reason", p.reason)],
            )
            .add(1);
    }
}

/// Logs a problem when it starts and when it goes away, not every cycle in between.
struct ProblemLog {
    input: &'static str,
    active: BTreeSet<&'static str>,
}

impl ProblemLog {
    fn new(input: &'static str) -> Self {
        Self { input, active: BTreeSet::new() }
    }

    /// The reasons that started and the ones that ended with this cycle.
    fn update<'p>(&mut self, problems: &'p [Problem]) -> (Vec<&'p Problem>, Vec<&'static str>) {
        let now: BTreeSet<&'static str> = problems.iter().map(|p| p.reason).collect();
        let mut started = Vec::new();
        for p in problems {
            if !self.active.contains(p.reason) && !started.iter().any(|s: &&Problem| s.reason == p.reason) {
                started.push(p);
            }
        }
        let ended: Vec<&'static str> = self.active.difference(&now).copied().collect();
        self.active = now;
        (started, ended)
    }

    fn report(&mut self, problems: &[Problem]) {
        let input = self.input;
        let (started, ended) = self.update(problems);
        for p in started {
            tracing::warn!(input, reason = p.reason, detail = %p.detail, "collector problem (logged once while it lasts)");
        }
        for reason in ended {
            tracing::info!(input, reason, "collector recovered");
        }
    }
}

/// One input of a task: its name, counters and problem log.
struct Member {
    name: &'static str,
    counters: InputCounters,
    log: ProblemLog,
}

/// What the runner shares with the threads of its file inputs: the way out, and the signal to
/// stop.
///
/// The file inputs run on a thread that sleeps until its tick, reads, encodes and hands the
/// cycle's batches over, rather than a runtime task moving each cycle's reads to a blocking
/// thread and back: that hop woke three threads per task and cycle (a worker, a blocking
/// thread, the worker again), which cost more CPU than most inputs' reads.
struct ThreadLink {
    /// Taken away on stop, so that the channel closes even while a thread is stuck.
    out: Mutex<Option<mpsc::Sender<Vec<Batch>>>>,
    stopped: Mutex<bool>,
    wake: Condvar,
    cancel: CancellationToken,
    /// Runs a send on the thread, so that a full channel can be waited on until cancelled.
    runtime: tokio::runtime::Handle,
    handover: Mutex<Handover>,
}

/// Batches of inputs left behind on threads of their own (see [`Shared::supervise`]), handed
/// to the shared thread so that a cycle normally reaches the channel as one message: one
/// wake-up of its consumer and one write to stdout per cycle. The shared thread never waits
/// for them: what comes after it sent its cycle goes out on its own, and a thread left behind
/// only hands over for the tick the shared thread is at, so its points are held at most for
/// the rest of that one cycle.
#[derive(Debug, Default)]
struct Handover {
    /// The shared thread (its generation) and the tick it is about to gather or gathering.
    at: Option<(u64, i64)>,
    batches: Vec<Batch>,
}

/// While held by a shared thread, threads left behind may hand over to it; when it stops,
/// panics or is left behind itself, they no longer do.
struct Collecting<'a> {
    link: &'a ThreadLink,
    generation: u64,
}

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        let mut handover = self.link.handover.lock().unwrap_or_else(PoisonError::into_inner);
        // A newer shared thread may already be collecting: its hand-overs are not ours.
        if handover.at.is_some_and(|(generation, _)| generation == self.generation) {
            handover.at = None;
            handover.batches.clear();
        }
    }
}

impl ThreadLink {
    /// On the runtime that `send` will run on.
    fn new(out: mpsc::Sender<Vec<Batch>>, cancel: &CancellationToken) -> Self {
        ThreadLink {
            out: Mutex::new(Some(out)),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            cancel: cancel.clone(),
            runtime: tokio::runtime::Handle::current(),
            handover: Mutex::new(Handover::default()),
        }
    }

    fn stop(&self) {
        *self.out.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Sleeps until the wall clock reaches `tick_ns`; false when stopped first.
    fn sleep_until(&self, tick_ns: i64) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *stopped {
                return false;
            }
            let left = u64::try_from(tick_ns.saturating_sub(crate::timefmt::now_ns())).unwrap_or(0);
            if left == 0 {
                return true;
            }
            stopped = match self.wake.wait_timeout(stopped, Duration::from_nanos(left)) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Shared thread `generation` is about to gather `tick_ns` and will take what is handed
    /// over for it.
    fn expect(&self, generation: u64, tick_ns: i64) {
        self.handover.lock().unwrap_or_else(PoisonError::into_inner).at = Some((generation, tick_ns));
    }

    /// What was handed over to shared thread `generation` for its cycle, added to `batches`;
    /// nothing more is taken until its next [`ThreadLink::expect`].
    fn collect(&self, generation: u64, batches: &mut Vec<Batch>) {
        let mut handover = self.handover.lock().unwrap_or_else(PoisonError::into_inner);
        if handover.at.is_some_and(|(g, _)| g == generation) {
            handover.at = None;
            batches.append(&mut handover.batches);
        }
    }

    /// Hands `batches` of cycle `tick_ns` to the shared thread if it is at that tick; else
    /// gives them back, to be sent.
    fn hand_over(&self, tick_ns: i64, mut batches: Vec<Batch>) -> Option<Vec<Batch>> {
        let mut handover = self.handover.lock().unwrap_or_else(PoisonError::into_inner);
        if handover.at.map(|(_, tick)| tick) != Some(tick_ns) {
            return Some(batches);
        }
        handover.batches.append(&mut batches);
        None
    }

    /// Hands `batches` over, waiting while the channel is full; false once stopped or closed.
    fn send(&self, batches: Vec<Batch>) -> bool {
        let out = self.out.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(out) = out else { return false };
        // Neither future needs the runtime's timers or I/O, so this works on a thread outside it.
        self.runtime.block_on(async {
            tokio::select! {
                _ = self.cancel.cancelled() => false,
                sent = out.send(batches) => sent.is_ok(),
            }
        })
    }
}

/// `Watch::current` between inputs.
const BETWEEN_INPUTS: usize = usize::MAX;
/// Set in `Watch::current` by the runner: the thread keeps that input alone once it is back.
const LEFT_BEHIND: usize = 1 << (usize::BITS - 1);

/// Where a shared file-input thread is, for the runner that watches it.
struct Watch {
    generation: u64,
    /// The index of the input being gathered, or [`BETWEEN_INPUTS`]; the runner adds
    /// [`LEFT_BEHIND`] to an input that has taken too long. One word, so that the thread
    /// learns of it exactly when it leaves that input, never in another one.
    current: AtomicUsize,
    /// When the current input started (wall clock, ns).
    since_ns: AtomicI64,
    /// The tick index of the cycle being gathered.
    cycle: AtomicU64,
}

impl Watch {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            current: AtomicUsize::new(BETWEEN_INPUTS),
            since_ns: AtomicI64::new(0),
            cycle: AtomicU64::new(0),
        }
    }

    /// Moves the thread to input `next` (or [`BETWEEN_INPUTS`]); the input it leaves if the
    /// runner left it behind there.
    fn enter(&self, next: usize) -> Option<usize> {
        if next != BETWEEN_INPUTS {
            self.since_ns.store(crate::timefmt::now_ns(), Ordering::Relaxed);
        }
        let left = self.current.swap(next, Ordering::AcqRel);
        (left != BETWEEN_INPUTS && left & LEFT_BEHIND != 0).then_some(left & !LEFT_BEHIND)
    }

    /// When to look at the thread next, if nothing is reported before: a grace period after
    /// the input it is in started, or after the next tick when it is between inputs (asleep,
    /// or waiting on a full channel).
    fn next_look(&self, schedule: &Schedule, now_ns: i64) -> i64 {
        let grace = schedule.interval_ns;
        match self.current.load(Ordering::Acquire) {
            BETWEEN_INPUTS => schedule.tick_ns(schedule.next_after(now_ns, None)) + grace,
            _ => self.since_ns.load(Ordering::Relaxed) + grace,
        }
    }

    /// Leaves the thread behind with its input if that has taken a whole interval: that input
    /// waits on something outside the kernel's memory (a dead NFS server, a driver holding the
    /// RTNL lock, a FIFO as utmp). Returns the input's index and the cycle it was in.
    fn leave_behind_if_stuck(&self, schedule: &Schedule, now_ns: i64) -> Option<(usize, u64)> {
        let current = self.current.load(Ordering::Acquire);
        if current == BETWEEN_INPUTS || current & LEFT_BEHIND != 0 {
            return None;
        }
        if now_ns - self.since_ns.load(Ordering::Relaxed) < schedule.interval_ns {
            return None;
        }
        let cycle = self.cycle.load(Ordering::Relaxed);
        self.current
            .compare_exchange(current, current | LEFT_BEHIND, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| (current, cycle))
    }
}

/// What the threads of the file inputs share, for starting one.
struct Shared {
    ctx: Arc<HostContext>,
    host: Arc<str>,
    schedule: Schedule,
    telemetry: Telemetry,
    link: Arc<ThreadLink>,
}

impl Shared {
    /// Runs `files` on one thread and watches it.
    ///
    /// One thread for every file input: a thread that sleeps costs as much again to wake (cold
    /// caches, the scheduler) as most inputs' reads, and a thread each for `disk`, `net` and
    /// `system` was a tenth of a cycle's CPU. Those three can wait on something the kernel does
    /// not answer from memory, so they come last, and the runner watches the thread without
    /// waking it: the thread notes which input it is in, and its cycles' batches, which pass
    /// through here on their way to `out`, tell that it is alive. An input that takes a whole
    /// interval is left behind: the thread keeps it alone once (if ever) it is back, handing
    /// its batches to the shared thread, and the other inputs start afresh on a new thread at
    /// the next tick, the ticks lost meanwhile counted as missed. In the worst case each input
    /// ends up on a thread of its own; a thread that never comes back keeps the files of the
    /// inputs it had open.
    async fn supervise(
        self,
        mut files: Vec<FileInput>,
        mut from_threads: mpsc::Receiver<Vec<Batch>>,
        out: mpsc::Sender<Vec<Batch>>,
        cancel: CancellationToken,
    ) {
        files.sort_by_key(|f| can_block(f.kind()));
        let mut kinds: Vec<HostInput> = files.iter().map(FileInput::kind).collect();
        let mut lost_from = None;
        for generation in 1.. {
            let watch = Arc::new(Watch::new(generation));
            let run = InputRun::new(
                kinds.iter().map(|k| k.name()).collect(),
                &self.ctx,
                &self.host,
                self.schedule,
                &self.telemetry,
            );
            let label = run.label();
            let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
            let (link, thread_watch) = (self.link.clone(), watch.clone());
            let spawned = std::thread::Builder::new().name("logmill-collect".into()).spawn(move || {
                run.run_thread(files, &link, Some(thread_watch), lost_from);
                drop(done);
            });
            if let Err(error) = spawned {
                tracing::error!(inputs = %label, %error, "collector thread not started");
                return;
            }
            let Some((stuck, cycle)) =
                self.pass_on(&mut from_threads, &out, &cancel, &mut finished, Some(&watch)).await
            else {
                return;
            };
            let kind = kinds.remove(stuck);
            tracing::warn!(
                input = kind.name(),
                others = %kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
                "collector input stuck for a whole interval: it goes on on a thread of its own, the others on a new one"
            );
            if kinds.is_empty() {
                // Nothing left to share a thread: the stuck input keeps the old one.
                self.pass_on(&mut from_threads, &out, &cancel, &mut finished, None).await;
                return;
            }
            files = kinds.iter().map(|k| FileInput::new(*k)).collect();
            lost_from = Some(cycle);
        }
    }

    /// Passes the threads' batches on to `out` until the shared thread ends (or `out`
    /// closes, or `cancel`), or until `watch` finds an input stuck: then that input's index
    /// and the cycle it was in.
    async fn pass_on(
        &self,
        from_threads: &mut mpsc::Receiver<Vec<Batch>>,
        out: &mpsc::Sender<Vec<Batch>>,
        cancel: &CancellationToken,
        finished: &mut tokio::sync::oneshot::Receiver<()>,
        watch: Option<&Watch>,
    ) -> Option<(usize, u64)> {
        loop {
            let now = crate::timefmt::now_ns();
            let wait = watch.map_or(0, |w| w.next_look(&self.schedule, now).saturating_sub(now));
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut *finished => return None,
                batches = from_threads.recv() => {
                    let batches = batches?;
                    if batches.is_empty() {
                        continue;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        sent = out.send(batches) => sent.ok()?,
                    }
                }
                _ = tokio::time::sleep(Duration::from_nanos(u64::try_from(wait).unwrap_or(0))), if watch.is_some() => {
                    let left = watch.and_then(|w| w.leave_behind_if_stuck(&self.schedule, crate::timefmt::now_ns()));
                    if left.is_some() {
                        return left;
                    }
                }
            }
        }
    }
}

/// What one task owns besides its inputs.
struct InputRun {
    /// In the order of `Input::names`.
    members: Vec<Member>,
    ctx: Arc<HostContext>,
    host: Arc<str>,
    schedule: Schedule,
    /// Line protocol of every input of a cycle; each batch is cut from it.
    buf: BytesMut,
}

impl InputRun {
    fn new(
        names: Vec<&'static str>,
        ctx: &Arc<HostContext>,
        host: &Arc<str>,
        schedule: Schedule,
        telemetry: &Telemetry,
    ) -> Self {
        let members = names
            .into_iter()
            .map(|name| Member {
                name,
                counters: InputCounters::new(telemetry, name),
                log: ProblemLog::new(name),
            })
            .collect();
        InputRun { members, ctx: ctx.clone(), host: host.clone(), schedule, buf: BytesMut::new() }
    }

    fn label(&self) -> String {
        self.members.iter().map(|m| m.name).collect::<Vec<_>>().join(",")
    }

    /// A cycle's samples, in the order of the members: problems reported, points encoded.
    fn finish(&mut self, samples: impl IntoIterator<Item = Gathered>, tick_ns: i64) -> Vec<Batch> {
        let mut batches = Vec::with_capacity(self.members.len());
        for (member, gathered) in self.members.iter_mut().zip(samples) {
            member.log.report(&gathered.problems);
            let (batch, _) =
                finish_cycle(member.name, gathered, &self.host, tick_ns, &member.counters, &mut self.buf);
            batches.extend(batch);
        }
        batches
    }

    fn count_missed(&self, missed: u64) {
        for member in &self.members {
            member.counters.missed.add(missed);
        }
    }

    /// The tick after cycle `k` ended; ticks skipped meanwhile are counted (and logged once).
    fn advance(&self, k: u64, overrun_logged: &mut bool) -> u64 {
        let next = self.schedule.next_after(crate::timefmt::now_ns(), Some(k));
        let missed = next - k - 1;
        if missed > 0 {
            self.count_missed(missed);
            if !*overrun_logged {
                tracing::warn!(
                    input = %self.label(),
                    missed,
                    "collector cycle overran its interval (slow input, or its output waiting); skipping ticks (logged once)"
                );
                *overrun_logged = true;
            }
        }
        next
    }

    /// File inputs on this thread until stopped: watched, as the shared thread, until left
    /// behind with one of them (see [`Shared::supervise`]). `lost_from`: the first cycle that
    /// the inputs lost to a thread left behind, counted as missed up to this thread's first.
    fn run_thread(
        mut self,
        mut files: Vec<FileInput>,
        link: &ThreadLink,
        mut watch: Option<Arc<Watch>>,
        lost_from: Option<u64>,
    ) {
        let mut collecting = watch.as_ref().map(|w| Collecting { link, generation: w.generation });
        gather_files(files.iter_mut().filter(|f| f.needs_two_samples()), &self.ctx);
        let mut k = self.schedule.next_after(crate::timefmt::now_ns(), None);
        if let Some(lost) = lost_from {
            self.count_missed(k.saturating_sub(lost));
        }
        let mut overrun_logged = false;
        loop {
            let tick_ns = self.schedule.tick_ns(k);
            if let Some(w) = &watch {
                link.expect(w.generation, tick_ns);
                w.cycle.store(k, Ordering::Relaxed);
            }
            if !link.sleep_until(tick_ns) {
                return;
            }
            let mut reads = CycleReads::default();
            let mut samples = Vec::with_capacity(files.len());
            let mut left_behind = None;
            for (i, file) in files.iter_mut().enumerate() {
                left_behind = watch.as_ref().and_then(|w| w.enter(i));
                if left_behind.is_some() {
                    break;
                }
                samples.push(gather_caught(file, &self.ctx, &mut reads));
            }
            left_behind = left_behind.or_else(|| watch.as_ref().and_then(|w| w.enter(BETWEEN_INPUTS)));
            if let Some(i) = left_behind {
                // The others have gone on without this thread: keep the input it was stuck in,
                // and its sample of this cycle, alone.
                files = vec![files.swap_remove(i)];
                samples = vec![samples.swap_remove(i)];
                self.members = vec![self.members.swap_remove(i)];
                watch = None;
                drop(collecting.take());
            }
            let mut batches = self.finish(samples, tick_ns);
            // The shared thread sends every cycle, even an empty one: that wakes its
            // supervisor, which then looks again a grace period after the next tick, instead
            // of waking on its own timer.
            let to_send = match &watch {
                Some(w) => {
                    link.collect(w.generation, &mut batches);
                    Some(batches)
                }
                None if batches.is_empty() => None,
                None => link.hand_over(tick_ns, batches),
            };
            if let Some(batches) = to_send {
                if !link.send(batches) {
                    return;
                }
            }
            k = self.advance(k, &mut overrun_logged);
        }
    }

    /// The kubelet and nsqd inputs, as runtime tasks.
    async fn run(mut self, mut input: Input, out: mpsc::Sender<Vec<Batch>>, cancel: CancellationToken) {
        if input.needs_two_samples() {
            let primed = tokio::select! {
                _ = cancel.cancelled() => return,
                primed = input.gather(self.ctx.clone()) => primed,
            };
            input = primed.0;
        }
        let mut k = self.schedule.next_after(crate::timefmt::now_ns(), None);
        let mut overrun_logged = false;
        loop {
            let tick_ns = self.schedule.tick_ns(k);
            let wait = Duration::from_nanos(
                u64::try_from(tick_ns.saturating_sub(crate::timefmt::now_ns())).unwrap_or(0),
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let (next_input, samples) = tokio::select! {
                _ = cancel.cancelled() => return,
                result = input.gather(self.ctx.clone()) => result,
            };
            input = next_input;
            let batches = self.finish(samples, tick_ns);
            if !batches.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = out.send(batches) => if sent.is_err() { return },
                }
            }
            k = self.advance(k, &mut overrun_logged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn aligned_schedule() {
        // 12:00:03.5 with a 10 s interval: first tick 12:00:10, then every 10 s.
        let now = 1_700_000_003 * SEC + SEC / 2;
        let s = Schedule::new(now, Duration::from_secs(10), true);
        assert_eq!(s.tick_ns(0), 1_700_000_010 * SEC);
        assert_eq!(s.tick_ns(3), 1_700_000_040 * SEC);
        // Exactly on a multiple: the next one (the current tick is already passing).
        assert_eq!(
            Schedule::new(1_700_000_010 * SEC, Duration::from_secs(10), true).tick_ns(0),
            1_700_000_020 * SEC
        );
        // Not rounded: starts now.
        assert_eq!(Schedule::new(now, Duration::from_secs(10), false).tick_ns(1), now + 10 * SEC);
        // Before the first tick: tick 0 is next; a gather that ended within its interval:
        // the next tick; one that took 25 s: two ticks skipped.
        assert_eq!(s.next_after(now, None), 0);
        assert_eq!(s.next_after(s.tick_ns(0) + SEC, Some(0)), 1);
        assert_eq!(s.next_after(s.tick_ns(0) + 25 * SEC, Some(0)), 3);
        // A clock that stepped back never repeats a tick.
        assert_eq!(s.next_after(s.tick_ns(0) - 100 * SEC, Some(5)), 6);
        // Not rounded: the first tick is one interval after the start.
        let u = Schedule::new(now, Duration::from_secs(10), false);
        assert_eq!(u.next_after(now + 1, None), 1);
    }

    #[test]
    fn problems_logged_once_then_recovered() {
        let mut log = ProblemLog::new("kubernetes");
        let http = Problem::new("http", "refused");
        let json = Problem::new("bad_json", "x");
        let twice = [http.clone(), http.clone()];
        let (started, ended) = log.update(&twice);
        assert_eq!(started.len(), 1, "one report per reason");
        assert!(ended.is_empty());
        let (started, ended) = log.update(std::slice::from_ref(&http));
        assert!(started.is_empty() && ended.is_empty(), "still the same problem: silent");
        let json = [json];
        let (started, ended) = log.update(&json);
        assert_eq!(started[0].reason, "bad_json");
        assert_eq!(ended, ["http"]);
        let (started, ended) = log.update(&[]);
        assert!(started.is_empty());
        assert_eq!(ended, ["bad_json"]);
    }

    /// The inputs that read only what the kernel answers from memory share a task; those that
    /// can wait on a filesystem or a lock have their own; names keep the settings' order.
    #[test]
    fn file_inputs_grouped_by_what_can_block() {
        let mut raw = crate::config::RawConfig::load(None).unwrap();
        raw.collect.inputs = HostInput::ALL.iter().rev().map(|i| i.name().to_owned()).collect();
        let settings = raw.validate().unwrap();
        let collector = Collector::new(&settings.collect, "h", &Telemetry::default()).unwrap();
        let tasks: Vec<Vec<&str>> = collector.inputs.iter().map(Input::names).collect();
        assert_eq!(
            tasks,
            [
                vec!["kernel", "processes", "netstat", "diskio", "swap", "mem", "cpu"],
                vec!["system"],
                vec!["net"],
                vec!["disk"],
            ]
        );
        assert_eq!(
            collector.input_names(),
            ["kernel", "processes", "system", "netstat", "net", "diskio", "disk", "swap", "mem", "cpu"]
        );
    }

    fn batch(input: &'static str, timestamp_ns: i64) -> Batch {
        Batch { input, timestamp_ns, body: Bytes::from_static(b"x v=1i\n"), points: 1 }
    }

    /// Stopping wakes a thread sleeping until a far tick at once, and takes the channel from
    /// the threads: it closes though a thread (here: none) might still hold the link.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn stop_wakes_sleepers_and_closes_the_channel() {
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let link = Arc::new(ThreadLink::new(tx, &cancel));
        assert!(link.sleep_until(crate::timefmt::now_ns() - 1), "a tick already past: no sleep");
        let sleeper = {
            let link = link.clone();
            std::thread::spawn(move || link.sleep_until(crate::timefmt::now_ns() + 60 * SEC))
        };
        let sender = {
            let link = link.clone();
            tokio::task::spawn_blocking(move || link.send(vec![batch("cpu", 1)]))
        };
        assert!(sender.await.unwrap(), "sent while running");
        assert_eq!(rx.recv().await.unwrap()[0].input, "cpu");
        let started = std::time::Instant::now();
        link.stop();
        assert!(!tokio::task::spawn_blocking(move || sleeper.join().unwrap()).await.unwrap(), "stopped");
        assert!(started.elapsed() < Duration::from_secs(5), "woken, not timed out");
        assert!(rx.recv().await.is_none(), "closed while the link lives on");
        let link2 = link.clone();
        assert!(!tokio::task::spawn_blocking(move || link2.send(vec![batch("cpu", 2)])).await.unwrap());
    }

    /// A thread left behind hands its cycle to the shared thread only while that is at the
    /// same tick; otherwise (before, after, or no shared thread running) it sends it itself. A
    /// shared thread left behind in turn neither takes nor clears what its successor expects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn handover_only_for_the_shared_threads_tick() {
        let (tx, _rx) = mpsc::channel(4);
        let link = ThreadLink::new(tx, &CancellationToken::new());
        let back = link.hand_over(10, vec![batch("disk", 10)]);
        assert_eq!(back.map(|b| b.len()), Some(1), "no shared thread running: sent by its own thread");
        {
            let _collecting = Collecting { link: &link, generation: 1 };
            link.expect(1, 10);
            assert!(link.hand_over(10, vec![batch("disk", 10)]).is_none(), "taken for tick 10");
            assert!(link.hand_over(10, vec![batch("net", 10)]).is_none());
            assert!(link.hand_over(20, vec![batch("net", 20)]).is_some(), "another tick: not taken");
            let mut cycle = vec![batch("cpu", 10)];
            link.collect(1, &mut cycle);
            let inputs: Vec<&str> = cycle.iter().map(|b| b.input).collect();
            assert_eq!(inputs, ["cpu", "disk", "net"]);
            assert!(link.hand_over(10, vec![batch("system", 10)]).is_some(), "too late for tick 10");
            link.expect(1, 20);
            assert!(link.hand_over(20, vec![batch("system", 20)]).is_none());
        }
        // The shared thread stopped (or panicked) at tick 20: nothing is handed to it any more.
        assert!(link.hand_over(20, vec![batch("disk", 20)]).is_some());
        assert!(link.handover.lock().unwrap().batches.is_empty());

        // Generation 3 took over from generation 2, which comes back later.
        let old = Collecting { link: &link, generation: 2 };
        link.expect(2, 30);
        link.expect(3, 40);
        assert!(link.hand_over(40, vec![batch("disk", 40)]).is_none(), "taken by generation 3");
        let mut stale = Vec::new();
        link.collect(2, &mut stale);
        assert!(stale.is_empty(), "generation 2 takes nothing of generation 3's");
        drop(old);
        let mut cycle = Vec::new();
        link.collect(3, &mut cycle);
        assert_eq!(cycle.len(), 1, "generation 2 leaving cleared nothing of generation 3's");
    }

    #[test]
    fn batch_split_at_lines() {
        let body = Bytes::from_static(b"aaaa\nbb\ncccccccc\nd\n");
        let batch = Batch { input: "cpu", timestamp_ns: 0, body, points: 4 };
        let pieces = batch.split(8);
        let texts: Vec<&[u8]> = pieces.iter().map(|b| b.as_ref()).collect();
        assert_eq!(texts, [&b"aaaa\nbb\n"[..], b"cccccccc\n", b"d\n"]);
        assert_eq!(batch.split(1000).len(), 1);
    }
}

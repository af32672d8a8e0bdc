//! CPU time of host collection cycles in process, paused between cycles as the collector is:
//! what criterion's back-to-back loop (`cargo bench --bench collect`) cannot show, since after
//! 100 ms of other work on the machine the kernel's and the process's caches are cold and a
//! cycle costs two to three times as much. One thread, no runtime, no output: the difference
//! from `benches/collect-vs-node-exporter`'s figure is the runner's own cost.
//!
//! ```text
//! cargo run --release --example collect_cycles -- [INTERVAL_MS [CYCLES [INPUT,INPUT...]]]
//! cargo run --release --example collect_cycles -- 100 300            # every host input
//! cargo run --release --example collect_cycles -- 0 1000 netstat     # one, back to back
//! ```

use std::time::Duration;

use logmill::config::RawConfig;
use logmill::host::{Collector, HostInput};
use logmill::telemetry::Telemetry;

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.unsigned_abs()) + Duration::from_micros(t.tv_usec.unsigned_abs())
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().expect("a number"));
    let interval = Duration::from_millis(number(0, 100));
    let cycles = number(1, 300).max(1);
    let mut raw = RawConfig::load(None).expect("default config");
    raw.collect.inputs = match args.get(2) {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => HostInput::ALL.iter().map(|i| i.name().to_owned()).collect(),
    };
    let settings = raw.validate().expect("valid inputs");
    let mut collector = Collector::new(&settings.collect, "bench", &Telemetry::default()).expect("collector");
    // The rate inputs' first sample, then a few cycles to open what is kept open.
    for _ in 0..10 {
        collector.gather_host_blocking(0);
        std::thread::sleep(interval);
    }
    let start = cpu_time();
    for k in 0..cycles {
        std::hint::black_box(collector.gather_host_blocking(k as i64));
        std::thread::sleep(interval);
    }
    let per_cycle = (cpu_time() - start) / u32::try_from(cycles).unwrap_or(u32::MAX);
    println!(
        "{:.3} ms CPU per cycle ({cycles} cycles, {} ms apart, inputs {})",
        per_cycle.as_secs_f64() * 1000.0,
        interval.as_millis(),
        collector.input_names().join(",")
    );
}

//! The host collectors on this machine, against independent readers at the same moment:
//! `free -b` (procps) for `mem` and `swap`, `df -B1` (coreutils) for `disk`, `/proc/loadavg`,
//! `/proc/uptime`, `/proc/cpuinfo` and `lscpu` for `system`; and a CPU burner for `cpu`.
//!
//! **Tolerance.** The collector reads the kernel's counters between two runs of the reference
//! tool, so each value must lie between the tool's two readings; the only slack is what can
//! change in the few milliseconds between a read and the neighbouring tool's read on a machine
//! shared with other builds: [`MEMORY_SLACK_BYTES`] and [`DISK_SLACK_BYTES`]. Sizes that do
//! not move (`MemTotal`, a filesystem's size, the CPU count) must be equal.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use logmill::config::RawConfig;
use logmill::host::Collector;
use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};
use logmill::telemetry::Telemetry;

/// The settings of a config file holding `text`, as `--config FILE` reads them.
fn settings_from(text: &str) -> logmill::config::Settings {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    RawConfig::load(Some(file.path())).unwrap().validate().unwrap()
}

/// Memory a busy 2-core machine can allocate or free between two reads a few ms apart
/// (compilers here allocate in the hundreds of MiB per second).
const MEMORY_SLACK_BYTES: i64 = 32 << 20;
/// What concurrent builds can write to `/` in the same few ms.
const DISK_SLACK_BYTES: i64 = 64 << 20;

fn collector(inputs: &[&str]) -> Collector {
    let list: Vec<String> = inputs.iter().map(|i| format!("\"{i}\"")).collect();
    let text = format!("host = \"node-1\"\n[collect]\ninputs = [{}]\n", list.join(", "));
    let settings = settings_from(&text);
    Collector::new(&settings.collect, "node-1", &Telemetry::default()).unwrap()
}

fn gather(c: &mut Collector) -> Vec<Point> {
    let body: Vec<u8> = c.gather_host_blocking(1).iter().flat_map(|b| b.body.to_vec()).collect();
    parse_lines(&body).map(|(_, p)| p.expect("valid line protocol")).collect()
}

fn int(p: &Point, field: &str) -> i64 {
    match p.field_value(field) {
        Some(FieldValue::Int(v)) => *v,
        other => panic!("{} {field}: {other:?}", p.measurement),
    }
}

fn float(p: &Point, field: &str) -> f64 {
    match p.field_value(field) {
        Some(FieldValue::Float(v)) => *v,
        other => panic!("{} {field}: {other:?}", p.measurement),
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `free -b`: the numbers of its `Mem:` and `Swap:` rows by column name.
fn free() -> BTreeMap<String, i64> {
    let text = run("free", &["-b"]);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let mut out = BTreeMap::new();
    for line in lines {
        let mut words = line.split_whitespace();
        let row = words.next().unwrap().trim_end_matches(':').to_owned();
        for (column, value) in header.iter().zip(words) {
            out.insert(format!("{row}.{column}"), value.parse().unwrap());
        }
    }
    out
}

/// Asserts `value` lies between the two readings, give or take `slack`.
fn between(what: &str, value: i64, a: i64, b: i64, slack: i64) {
    let (lo, hi) = (a.min(b) - slack, a.max(b) + slack);
    assert!(lo <= value && value <= hi, "{what}: {value} not within [{lo}, {hi}] (readings {a} and {b})");
}

#[test]
fn mem_and_swap_match_free() {
    let mut c = collector(&["mem", "swap"]);
    let before = free();
    let points = gather(&mut c);
    let after = free();
    let mem = points.iter().find(|p| p.measurement == "mem").unwrap();
    let swap = points.iter().find(|p| p.measurement == "swap").unwrap();
    assert_eq!(int(mem, "total"), before["Mem.total"], "MemTotal does not move");
    // procps-ng ≥ 4 prints used = total − available, the formula of Telegraf ≥ 1.37.
    between("mem.used", int(mem, "used"), before["Mem.used"], after["Mem.used"], MEMORY_SLACK_BYTES);
    between("mem.free", int(mem, "free"), before["Mem.free"], after["Mem.free"], MEMORY_SLACK_BYTES);
    between(
        "mem.available",
        int(mem, "available"),
        before["Mem.available"],
        after["Mem.available"],
        MEMORY_SLACK_BYTES,
    );
    between("mem.shared", int(mem, "shared"), before["Mem.shared"], after["Mem.shared"], MEMORY_SLACK_BYTES);
    // free's buff/cache is Buffers + Cached + SReclaimable: Telegraf's buffered + cached.
    let buff_cache = int(mem, "buffered") + int(mem, "cached");
    between("buff/cache", buff_cache, before["Mem.buff/cache"], after["Mem.buff/cache"], MEMORY_SLACK_BYTES);
    let expected_percent = 100.0 * int(mem, "used") as f64 / int(mem, "total") as f64;
    assert!((float(mem, "used_percent") - expected_percent).abs() < 1e-9);
    assert_eq!(int(swap, "total"), before["Swap.total"]);
    between("swap.used", int(swap, "used"), before["Swap.used"], after["Swap.used"], MEMORY_SLACK_BYTES);
    between("swap.free", int(swap, "free"), before["Swap.free"], after["Swap.free"], MEMORY_SLACK_BYTES);
}

/// `ss` (iproute2, netlink) counted the way Telegraf counts: TCP by state, an IP socket seen
/// twice with the same (state, local, peer) once, `::ffff:a.b.c.d` as `a.b.c.d`; UDP and Unix
/// datagram sockets as `udp_socket`, Unix stream and seqpacket as `tcp_none`.
fn ss_counts() -> BTreeMap<String, i64> {
    let normalize = |a: &str| a.replace("[::ffff:", "").replace(']', "");
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in run("ss", &["-tan"]).lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let field = match w[0] {
            "ESTAB" => "tcp_established",
            "SYN-SENT" => "tcp_syn_sent",
            "SYN-RECV" => "tcp_syn_recv",
            "FIN-WAIT-1" => "tcp_fin_wait1",
            "FIN-WAIT-2" => "tcp_fin_wait2",
            "TIME-WAIT" => "tcp_time_wait",
            // CLOSE: a TCP socket leaves the kernel's tables as it closes, so what ss ≥ 6.8
            // lists as UNCONN is a socket bound and nothing more (BOUND_INACTIVE), which
            // `/proc/net/tcp`, and so Telegraf, never lists.
            "UNCONN" => continue,
            "CLOSE-WAIT" => "tcp_close_wait",
            "LAST-ACK" => "tcp_last_ack",
            "LISTEN" => "tcp_listen",
            "CLOSING" => "tcp_closing",
            other => panic!("ss state {other}"),
        };
        if seen.insert((field, normalize(w[3]), normalize(w[4]))) {
            *counts.entry(field.into()).or_default() += 1;
        }
    }
    for line in run("ss", &["-uan"]).lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if seen.insert(("udp", normalize(w[3]), normalize(w[4]))) {
            *counts.entry("udp_socket".into()).or_default() += 1;
        }
    }
    for line in run("ss", &["-xan"]).lines().skip(1) {
        let field = if line.starts_with("u_dgr") { "udp_socket" } else { "tcp_none" };
        *counts.entry(field.into()).or_default() += 1;
    }
    counts
}

/// Sockets other work on this machine can open or close between two reads a few ms apart.
const SOCKET_SLACK: i64 = 16;

#[test]
fn netstat_matches_ss() {
    let mut c = collector(&["netstat"]);
    let before = ss_counts();
    let points = gather(&mut c);
    let after = ss_counts();
    let p = points.iter().find(|p| p.measurement == "netstat").expect("a netstat point");
    const FIELDS: [&str; 13] = [
        "tcp_established",
        "tcp_syn_sent",
        "tcp_syn_recv",
        "tcp_fin_wait1",
        "tcp_fin_wait2",
        "tcp_time_wait",
        "tcp_close",
        "tcp_close_wait",
        "tcp_last_ack",
        "tcp_listen",
        "tcp_closing",
        "tcp_none",
        "udp_socket",
    ];
    for field in FIELDS {
        let (b, a) = (before.get(field).copied().unwrap_or(0), after.get(field).copied().unwrap_or(0));
        between(field, int(p, field), b, a, SOCKET_SLACK);
    }
    assert!(int(p, "tcp_listen") >= 1, "this test's machine has listeners");
}

/// `df -B1`: (size, used, avail) by mount point.
fn df() -> BTreeMap<String, (i64, i64, i64)> {
    run("df", &["-B1", "--output=target,size,used,avail"])
        .lines()
        .skip(1)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_owned(), (w[1].parse().unwrap(), w[2].parse().unwrap(), w[3].parse().unwrap()))
        })
        .collect()
}

#[test]
fn disk_matches_df() {
    let mut c = collector(&["disk"]);
    let before = df();
    let points = gather(&mut c);
    let after = df();
    assert!(points.iter().any(|p| p.tag_value("path") == Some("/")), "the root filesystem: {points:?}");
    for p in &points {
        let path = p.tag_value("path").unwrap();
        let (Some(b), Some(a)) = (before.get(path), after.get(path)) else {
            panic!("df does not list {path}: {before:?}");
        };
        assert_eq!(int(p, "total"), b.0, "{path}: size");
        between(&format!("{path} used"), int(p, "used"), b.1, a.1, DISK_SLACK_BYTES);
        between(&format!("{path} free"), int(p, "free"), b.2, a.2, DISK_SLACK_BYTES);
        assert!(["rw", "ro"].contains(&p.tag_value("mode").unwrap()));
        assert!(!p.tag_value("device").unwrap().starts_with("/dev/"));
    }
}

fn loadavg() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap();
    let w: Vec<f64> = text.split_whitespace().take(3).map(|v| v.parse().unwrap()).collect();
    (w[0], w[1], w[2])
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn system_matches_loadavg_cpuinfo_lscpu_and_uptime() {
    let mut c = collector(&["system"]);
    let (load_before, up_before) = (loadavg(), uptime());
    let points = gather(&mut c);
    let (load_after, up_after) = (loadavg(), uptime());
    let main = points.iter().find(|p| p.field_value("load1").is_some()).unwrap();
    let load = (float(main, "load1"), float(main, "load5"), float(main, "load15"));
    // The kernel recomputes load every 5 s: the collector saw one of the two readings.
    assert!(load == load_before || load == load_after, "{load:?} vs {load_before:?} / {load_after:?}");
    // gopsutil counts the `processor` lines of /proc/cpuinfo; logmill reads sysfs.
    let processors = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(int(main, "n_cpus"), processors as i64);
    // Physical cores: distinct (core, socket) pairs of lscpu.
    let cores: std::collections::BTreeSet<String> = run("lscpu", &["-p=CORE,SOCKET"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(int(main, "n_physical_cpus"), cores.len() as i64);
    let up = points.iter().find(|p| p.field_value("uptime").is_some()).unwrap();
    let seconds = int(up, "uptime");
    assert!(
        up_before.floor() as i64 <= seconds && seconds <= up_after.ceil() as i64,
        "{seconds} vs {up_before}..{up_after}"
    );
    assert!(points.iter().any(|p| p.field_value("uptime_format").is_some()));
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a burn did: the burner's CPU time, the CPU it was pinned to, and whether it ran at
/// nice ≤ 0 (so the kernel books its time as user, not nice).
struct Burn {
    cpu_time: Duration,
    cpu: usize,
    user: bool,
}

/// Spins one thread, pinned to one CPU, for `wall`.
///
/// Tests share this machine with other builds; a burner competing at equal weight on a
/// saturated machine moves nothing. As root it runs at nice −20, so it owns its CPU for the
/// window whatever else runs there (Linux sets nice and affinity per thread).
fn burn(wall: Duration) -> Burn {
    std::thread::spawn(move || {
        // SAFETY: syscalls on the calling thread (pid 0); `set` is a valid, zeroed cpu_set_t
        // that CPU_SET writes within, and its size is passed along.
        let (cpu, user) = unsafe {
            let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            let user = libc::setpriority(libc::PRIO_PROCESS, 0, -20) == 0
                || libc::setpriority(libc::PRIO_PROCESS, 0, 0) == 0;
            (cpu, user)
        };
        let start = Instant::now();
        let cpu0 = thread_cpu();
        let mut x = 0u64;
        while start.elapsed() < wall {
            for i in 0..10_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        Burn { cpu_time: thread_cpu() - cpu0, cpu, user }
    })
    .join()
    .unwrap()
}

fn cpu_point<'a>(points: &'a [Point], cpu: &str) -> &'a Point {
    points
        .iter()
        .find(|p| p.tag_value("cpu") == Some(cpu))
        .unwrap_or_else(|| panic!("no {cpu} in {points:?}"))
}

#[test]
fn usage_user_rises_when_a_core_burns() {
    let mut c = collector(&["cpu"]);
    let window = Duration::from_millis(1500);
    assert!(gather(&mut c).is_empty(), "the first sample gives no usage");
    std::thread::sleep(window);
    let base_points = gather(&mut c);
    let burn = burn(window);
    let burn_points = gather(&mut c);
    let name = format!("cpu{}", burn.cpu);
    let field = if burn.user { "usage_user" } else { "usage_nice" };
    let (base, busy) =
        (float(cpu_point(&base_points, &name), field), float(cpu_point(&burn_points, &name), field));
    // The burner's own clock: the share of its CPU it had during the window. The kernel books
    // it to that CPU's user (or nice) time, so the CPU's share cannot be lower, give or take
    // a few 10 ms ticks at the window's edges (5 points of 150 ticks).
    let burner = 100.0 * burn.cpu_time.as_secs_f64() / window.as_secs_f64();
    assert!(burner >= 33.0, "the burner got only {burner:.0} % of its CPU: machine too loaded to test");
    assert!(
        busy >= burner - 5.0,
        "{name} {field} {busy:.1} %, but the burner alone ran {burner:.1} % of the window"
    );
    if base < 90.0 {
        assert!(busy > base + 10.0, "{name} {field} did not rise: {base:.1} % → {busy:.1} %");
    } else {
        eprintln!("{name} was already {base:.0} % {field} before the burn: only the lower bound is checked");
    }
    // cpu-total moves too: one CPU of n at ≥ the burner's share.
    let n = burn_points.len() - 1;
    let total = float(cpu_point(&burn_points, "cpu-total"), field);
    assert!(total >= (burner - 5.0) / n as f64, "cpu-total {field} {total:.1} % with {n} CPUs");
    for p in &burn_points {
        // Guest time is inside user and nice, and subtracted from them: all ten add up to 100.
        let sum: f64 = [
            "usage_user",
            "usage_system",
            "usage_idle",
            "usage_nice",
            "usage_iowait",
            "usage_irq",
            "usage_softirq",
            "usage_steal",
            "usage_guest",
            "usage_guest_nice",
        ]
        .iter()
        .map(|f| float(p, f))
        .sum();
        assert!((sum - 100.0).abs() < 1e-6, "{:?}: the shares add up to 100 %: {sum}", p.tag_value("cpu"));
    }
}

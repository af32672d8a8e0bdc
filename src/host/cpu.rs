//! `cpu`: usage percentages per CPU and for `cpu-total` from two `/proc/stat` samples, as
//! Telegraf's `inputs.cpu` (v1.39.3, `plugins/inputs/cpu/cpu.go`) computes them.
//!
//! `/proc/stat` (proc(5)) prints, per line `cpu` (all CPUs) and `cpuN`, the time spent in
//! user, nice, system, idle, iowait, irq, softirq, steal, guest and guest_nice, in clock ticks
//! (`USER_HZ`). Guest time is already counted in user (and guest_nice in nice), so Telegraf's
//! total leaves the two guest columns out and `usage_user` / `usage_nice` subtract them:
//!
//! ```text
//! total  = user + nice + system + idle + iowait + irq + softirq + steal
//! usage_user = 100 × (Δuser − Δguest) / Δtotal      usage_nice = 100 × (Δnice − Δguest_nice) / Δtotal
//! usage_X    = 100 × ΔX / Δtotal   for system, idle, iowait, irq, softirq, steal, guest, guest_nice
//! ```
//!
//! Tag `cpu` = `cpu-total` or `cpuN`; every field a float. The first sample gives no usage
//! (there is no delta yet), nor does a CPU absent from the previous sample; a zero Δtotal
//! gives no point for that CPU. Optional: `time_*` (seconds since boot, floats) with
//! `collect_cpu_time`, and `usage_active` / `time_active` with `report_active`.
//!
//! Differs from Telegraf: when a CPU's total went backwards (a counter reset), Telegraf stops
//! the whole gather with an error; logmill skips only that CPU and reports it.

use crate::metrics::point::{FieldValue, Point};

use super::Malformed;

/// Which points the cpu input writes (Telegraf's options of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuOptions {
    /// A point per CPU (`percpu`).
    pub(crate) per_cpu: bool,
    /// The `cpu-total` point (`totalcpu`).
    pub(crate) total: bool,
    /// `time_*` fields (`collect_cpu_time`).
    pub(crate) collect_time: bool,
    /// `usage_active` / `time_active` (`report_active`).
    pub(crate) report_active: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        Self { per_cpu: true, total: true, collect_time: false, report_active: false }
    }
}

/// One `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// `cpu-total` for the `cpu` line, else `cpuN` as printed.
    pub name: String,
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub guest: u64,
    pub guest_nice: u64,
}

impl CpuTimes {
    fn total(&self) -> u64 {
        self.user
            .saturating_add(self.nice)
            .saturating_add(self.system)
            .saturating_add(self.idle)
            .saturating_add(self.iowait)
            .saturating_add(self.irq)
            .saturating_add(self.softirq)
            .saturating_add(self.steal)
    }
}

/// The `cpu` lines of `/proc/stat`. A line needs the seven columns user…softirq (kernels
/// before 2.6.11 stop there, as gopsutil accepts); steal, guest and guest_nice are 0 when
/// absent. Lines that are not numbers are reported, not guessed.
pub(crate) fn parse_stat(text: &str) -> (Vec<CpuTimes>, Vec<Malformed>) {
    let mut cpus = Vec::new();
    let mut malformed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if !line.starts_with("cpu") {
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        let Some(name) = words.next() else { continue };
        let values: Option<Vec<u64>> = words.map(|w| w.parse().ok()).collect();
        match values {
            Some(v) if v.len() >= 7 => {
                let at = |i: usize| v.get(i).copied().unwrap_or(0);
                cpus.push(CpuTimes {
                    name: if name == "cpu" { "cpu-total".to_owned() } else { name.to_owned() },
                    user: at(0),
                    nice: at(1),
                    system: at(2),
                    idle: at(3),
                    iowait: at(4),
                    irq: at(5),
                    softirq: at(6),
                    steal: at(7),
                    guest: at(8),
                    guest_nice: at(9),
                });
            }
            _ => malformed.push(Malformed { line: n + 1 }),
        }
    }
    (cpus, malformed)
}

/// What the cpu input made of a sample.
#[derive(Debug, Default)]
pub(crate) struct CpuPoints {
    pub points: Vec<Point>,
    /// CPUs whose total time went backwards since the previous sample.
    pub decreased: Vec<String>,
}

/// The points of `current`, with usage against `previous` (the last sample, if any).
/// `ticks_per_sec` (`USER_HZ`, 100 on Linux) converts ticks to the seconds of `time_*`.
pub(crate) fn points(
    previous: Option<&[CpuTimes]>,
    current: &[CpuTimes],
    options: CpuOptions,
    ticks_per_sec: f64,
) -> CpuPoints {
    let mut out = CpuPoints::default();
    for cts in current {
        let wanted = if cts.name == "cpu-total" { options.total } else { options.per_cpu };
        if !wanted {
            continue;
        }
        if options.collect_time {
            let s = |ticks: u64| FieldValue::Float(ticks as f64 / ticks_per_sec);
            let mut p = Point::new("cpu")
                .tag("cpu", cts.name.clone())
                .field("time_user", s(cts.user))
                .field("time_system", s(cts.system))
                .field("time_idle", s(cts.idle))
                .field("time_nice", s(cts.nice))
                .field("time_iowait", s(cts.iowait))
                .field("time_irq", s(cts.irq))
                .field("time_softirq", s(cts.softirq))
                .field("time_steal", s(cts.steal))
                .field("time_guest", s(cts.guest))
                .field("time_guest_nice", s(cts.guest_nice));
            if options.report_active {
                p = p.field("time_active", s(cts.total().saturating_sub(cts.idle)));
            }
            out.points.push(p);
        }
        let Some(last) = previous.and_then(|prev| prev.iter().find(|p| p.name == cts.name)) else {
            continue;
        };
        if cts.total() < last.total() {
            out.decreased.push(cts.name.clone());
            continue;
        }
        let total_delta = (cts.total() - last.total()) as f64;
        if total_delta == 0.0 {
            continue;
        }
        // Signed deltas: a single column may step back (guest sampled after user) even when
        // the total does not, and Telegraf's float arithmetic lets that show as it is.
        let d = |now: u64, then: u64| now as f64 - then as f64;
        let pct = |delta: f64| FieldValue::Float(100.0 * delta / total_delta);
        let mut p = Point::new("cpu")
            .tag("cpu", cts.name.clone())
            .field("usage_user", pct(d(cts.user, last.user) - d(cts.guest, last.guest)))
            .field("usage_system", pct(d(cts.system, last.system)))
            .field("usage_idle", pct(d(cts.idle, last.idle)))
            .field("usage_nice", pct(d(cts.nice, last.nice) - d(cts.guest_nice, last.guest_nice)))
            .field("usage_iowait", pct(d(cts.iowait, last.iowait)))
            .field("usage_irq", pct(d(cts.irq, last.irq)))
            .field("usage_softirq", pct(d(cts.softirq, last.softirq)))
            .field("usage_steal", pct(d(cts.steal, last.steal)))
            .field("usage_guest", pct(d(cts.guest, last.guest)))
            .field("usage_guest_nice", pct(d(cts.guest_nice, last.guest_nice)));
        if options.report_active {
            let active = |t: &CpuTimes| t.total() as f64 - t.idle as f64;
            p = p.field("usage_active", pct(active(cts) - active(last)));
        }
        out.points.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sorted_fields;

    fn captured(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn field(p: &Point, key: &str) -> f64 {
        match p.field_value(key) {
            Some(FieldValue::Float(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The two samples of this machine's `/proc/stat` taken one second apart
    /// (`testdata/proc/captured/stat`, `stat.1s`), an idle second. Expected values by hand
    /// from the columns of the two files.
    #[test]
    fn captured_two_samples() {
        let (first, bad1) = parse_stat(&captured("captured/stat"));
        let (second, bad2) = parse_stat(&captured("captured/stat.1s"));
        assert!(bad1.is_empty() && bad2.is_empty());
        assert_eq!(first.len(), 3, "cpu-total, cpu0, cpu1");
        assert_eq!(first[2].name, "cpu1");
        // The `cpu` line of `stat`, column by column.
        assert_eq!(
            first[0],
            CpuTimes {
                name: "cpu-total".into(),
                user: 91596,
                nice: 0,
                system: 9264,
                idle: 132178,
                iowait: 698,
                irq: 0,
                softirq: 77,
                steal: 87,
                guest: 0,
                guest_nice: 0,
            }
        );

        let none = points(None, &first, CpuOptions::default(), 100.0);
        assert!(none.points.is_empty(), "no usage from one sample");

        let out = points(Some(&first), &second, CpuOptions::default(), 100.0);
        assert_eq!(out.points.len(), 3);
        // cpu-total: only idle moved, 132178 → 132378 (+200): 100 % idle.
        let total = &out.points[0];
        assert_eq!(total.tag_value("cpu"), Some("cpu-total"));
        assert!(close(field(total, "usage_idle"), 100.0));
        assert!(close(field(total, "usage_user"), 0.0));
        assert_eq!(total.fields.len(), 10, "usage_* only by default");
        // cpu1: user 45757 → 45758 (+1), idle 66010 → 66109 (+99): Δtotal 100.
        let cpu1 = &out.points[2];
        assert_eq!(cpu1.tag_value("cpu"), Some("cpu1"));
        assert!(close(field(cpu1, "usage_user"), 1.0));
        assert!(close(field(cpu1, "usage_idle"), 99.0));
        assert!(close(field(cpu1, "usage_system"), 0.0));
    }

    /// A 64-CPU host with guests (built from proc(5)'s layout): guest time is inside user and
    /// must not be counted twice.
    #[test]
    fn many_cpus_with_guests() {
        let (first, bad) = parse_stat(&captured("odd/stat-64cpu-guest"));
        assert!(bad.is_empty());
        assert_eq!(first.len(), 65);
        let (second, _) = parse_stat(&captured("odd/stat-64cpu-guest.later"));
        let out = points(Some(&first), &second, CpuOptions::default(), 100.0);
        assert_eq!(out.points.len(), 65);
        let cpu63 = out.points.iter().find(|p| p.tag_value("cpu") == Some("cpu63")).unwrap();
        // cpu63: user +600 (of which guest +400, guest_nice +0), nice +100 (guest_nice +50),
        // system +100, idle +150, iowait +25, irq +5, softirq +10, steal +10
        // Δtotal = 600+100+100+150+25+5+10+10 = 1000
        assert!(close(field(cpu63, "usage_user"), 20.0), "(600 − 400) / 1000");
        assert!(close(field(cpu63, "usage_nice"), 5.0), "(100 − 50) / 1000");
        assert!(close(field(cpu63, "usage_guest"), 40.0));
        assert!(close(field(cpu63, "usage_guest_nice"), 5.0));
        assert!(close(field(cpu63, "usage_system"), 10.0));
        assert!(close(field(cpu63, "usage_idle"), 15.0));
        assert!(close(field(cpu63, "usage_iowait"), 2.5));
        assert!(close(field(cpu63, "usage_irq"), 0.5));
        assert!(close(field(cpu63, "usage_softirq"), 1.0));
        assert!(close(field(cpu63, "usage_steal"), 1.0));
    }

    #[test]
    fn options_and_odd_lines() {
        let first = "cpu  100 0 100 800 0 0 0\ncpu0 100 0 100 800 0 0 0\ncpu1 x y\nintr 5\n";
        let second = "cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 150 0 150 900 0 0 0\n";
        let (a, bad) = parse_stat(first);
        assert_eq!(bad, [Malformed { line: 3 }]);
        let (b, _) = parse_stat(second);
        let options = CpuOptions { per_cpu: false, total: true, collect_time: true, report_active: true };
        let out = points(Some(&a), &b, options, 100.0);
        // time point and usage point for cpu-total only.
        assert_eq!(out.points.len(), 2);
        let time = sorted_fields(&out.points[0]);
        assert_eq!(time.len(), 11);
        assert_eq!(out.points[0].field_value("time_user"), Some(&FieldValue::Float(1.5)));
        assert_eq!(out.points[0].field_value("time_active"), Some(&FieldValue::Float(3.0)), "(150+150)/100");
        // Δtotal 200, Δidle 100: active 50 %.
        assert!(close(field(&out.points[1], "usage_active"), 50.0));

        // A reset: cpu0 goes back; only it is skipped.
        let (c, _) = parse_stat("cpu  200 0 200 1000 0 0 0\ncpu0 1 0 1 1 0 0 0\n");
        let out = points(Some(&b), &c, CpuOptions::default(), 100.0);
        assert_eq!(out.decreased, ["cpu0"]);
        assert_eq!(out.points.len(), 1);
        // Nothing moved: no point (Telegraf skips a zero Δtotal).
        let out = points(Some(&c), &c, CpuOptions::default(), 100.0);
        assert!(out.points.is_empty() && out.decreased.is_empty());
    }
}

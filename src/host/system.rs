//! `system`: load, CPU counts, users and uptime, in the layout of Telegraf v1.39.3's
//! `inputs.system` default (`include = ["legacy"]`): three points with the same key, which
//! InfluxDB merges into one —
//!
//! - `load1`, `load5`, `load15` (floats, `/proc/loadavg`), `n_cpus`, `n_physical_cpus`, and
//!   when `/var/run/utmp` can be read `n_users`, `n_unique_users` (integers);
//! - `uptime` (integer seconds);
//! - `uptime_format` (string, `"3 days, 4:05"`, `" 0:14"`).
//!
//! Sources, as gopsutil v4.26.7 uses them or equivalently:
//! - `n_cpus`: the online CPUs. gopsutil counts `processor` lines of `/proc/cpuinfo`, which
//!   lists exactly the online CPUs; logmill reads the same set from
//!   `/sys/devices/system/cpu/online` (a range list such as `0-3,6`), which costs no per-CPU
//!   formatting, and falls back to the `cpuN` lines of `/proc/stat`.
//! - `n_physical_cpus`: the distinct `topology/core_cpus_list` (or `thread_siblings_list`) of
//!   `/sys/devices/system/cpu/cpuN`, as gopsutil.
//! - `uptime`: gopsutil asks `sysinfo(2)`, whose uptime is the boot-time clock rounded up to
//!   the second; logmill reads the same clock in `/proc/uptime` (hundredths) and rounds up.
//! - users: `USER_PROCESS` (type 7) records of utmp, 384 bytes each on Linux (glibc's
//!   `struct utmp`: `ut_type` at 0, `ut_user[32]` at 44).

use crate::metrics::point::{FieldValue, Point};

/// The three load averages of `/proc/loadavg` (`0.16 0.99 0.76 1/81 17077`).
pub(crate) fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut words = text.split_ascii_whitespace().map(|w| w.parse::<f64>().ok().filter(|v| v.is_finite()));
    Some((words.next()??, words.next()??, words.next()??))
}

/// Whole seconds since boot from `/proc/uptime` (`892.43 806.72`), rounded up as
/// `sysinfo(2)` rounds its uptime.
pub(crate) fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_ascii_whitespace().next()?;
    let (whole, frac) = first.split_once('.').unwrap_or((first, ""));
    let whole: u64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(if frac.bytes().any(|b| b != b'0') { whole.saturating_add(1) } else { whole })
}

/// The number of CPUs in a sysfs CPU list (`0-3,6,8-9`); `None` when it is not one.
pub(crate) fn count_cpu_list(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    let mut n = 0u64;
    for part in text.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if b < a {
            return None;
        }
        n = n.saturating_add(b - a + 1);
    }
    Some(n)
}

/// The `cpuN` lines of `/proc/stat` (gopsutil's fallback count).
pub(crate) fn count_stat_cpus(stat: &str) -> u64 {
    stat.lines().filter(|l| l.len() > 3 && l.starts_with("cpu") && l.as_bytes()[3].is_ascii_digit()).count()
        as u64
}

/// Size of glibc's `struct utmp` on Linux (64-bit and 32-bit alike, thanks to
/// `__WORDSIZE_TIME64_COMPAT32`).
const UTMP_RECORD_BYTES: usize = 384;
const UTMP_USER_PROCESS: i16 = 7;
const UTMP_USER_OFFSET: usize = 44;
const UTMP_USER_BYTES: usize = 32;

/// `(n_users, n_unique_users)` of a utmp file: user-process records, and their distinct
/// user names. A trailing partial record is ignored, as gopsutil does.
pub(crate) fn count_users(utmp: &[u8]) -> (u64, u64) {
    let mut users: Vec<&[u8]> = Vec::new();
    let mut sessions = 0;
    for record in utmp.chunks_exact(UTMP_RECORD_BYTES) {
        let kind = i16::from_le_bytes([record[0], record[1]]);
        if kind != UTMP_USER_PROCESS {
            continue;
        }
        sessions += 1;
        let name = &record[UTMP_USER_OFFSET..UTMP_USER_OFFSET + UTMP_USER_BYTES];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if !users.contains(&name) {
            users.push(name);
        }
    }
    (sessions, users.len() as u64)
}

/// Telegraf's `formatUptime`: `"N day(s), "` when at least a day, then `%2d:%02d`.
pub(crate) fn format_uptime(uptime: u64) -> String {
    let days = uptime / 86_400;
    let mut s = String::new();
    if days != 0 {
        s = format!("{days} day{}, ", if days > 1 { "s" } else { "" });
    }
    let minutes = uptime / 60;
    s.push_str(&format!("{:2}:{:02}", (minutes / 60) % 24, minutes % 60));
    s
}

/// What the system input read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SystemSample {
    pub load: Option<(f64, f64, f64)>,
    pub n_cpus: Option<u64>,
    pub n_physical_cpus: Option<u64>,
    /// `(n_users, n_unique_users)`; `None` without a readable utmp (Telegraf leaves both out).
    pub users: Option<(u64, u64)>,
    pub uptime: Option<u64>,
}

/// The three `system` points, each only when it has a field.
pub(crate) fn system_points(s: &SystemSample) -> Vec<Point> {
    let mut points = Vec::new();
    let mut p = Point::new("system");
    if let Some((l1, l5, l15)) = s.load {
        p = p
            .field("load1", FieldValue::Float(l1))
            .field("load5", FieldValue::Float(l5))
            .field("load15", FieldValue::Float(l15));
    }
    if let Some(n) = s.n_cpus {
        p = p.field("n_cpus", super::int(n));
    }
    if let Some(n) = s.n_physical_cpus {
        p = p.field("n_physical_cpus", super::int(n));
    }
    if let Some((users, unique)) = s.users {
        p = p.field("n_users", super::int(users)).field("n_unique_users", super::int(unique));
    }
    if !p.fields.is_empty() {
        points.push(p);
    }
    if let Some(uptime) = s.uptime {
        points.push(Point::new("system").field("uptime", super::int(uptime)));
        points.push(Point::new("system").field("uptime_format", FieldValue::Str(format_uptime(uptime))));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn captured_files() {
        // `/proc/loadavg` and `/proc/uptime` of this machine.
        let (l1, l5, l15) = parse_loadavg(&testdata("captured/loadavg")).unwrap();
        let text = testdata("captured/loadavg");
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            (l1, l5, l15),
            (words[0].parse().unwrap(), words[1].parse().unwrap(), words[2].parse().unwrap())
        );
        let up = testdata("captured/uptime");
        let seconds: f64 = up.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(parse_uptime(&up), Some(seconds.ceil() as u64));
        assert_eq!(count_stat_cpus(&testdata("captured/stat")), 2);
        assert_eq!(count_stat_cpus(&testdata("odd/stat-64cpu-guest")), 64);
    }

    #[test]
    fn by_hand() {
        assert_eq!(parse_loadavg("0.16 0.99 0.76 1/81 17077\n"), Some((0.16, 0.99, 0.76)));
        assert_eq!(parse_loadavg("0.16 0.99\n"), None);
        assert_eq!(parse_loadavg("0.16 nan 1\n"), None);
        assert_eq!(parse_uptime("892.43 806.72\n"), Some(893));
        assert_eq!(parse_uptime("892.00 806.72\n"), Some(892));
        assert_eq!(parse_uptime("892 806\n"), Some(892));
        assert_eq!(parse_uptime("x\n"), None);
        assert_eq!(parse_uptime("1.-5\n"), None);
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpu_list("0-127\n"), Some(128));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a"), None);
        // Telegraf's formatUptime cases.
        assert_eq!(format_uptime(892), " 0:14");
        assert_eq!(format_uptime(86_400 + 3 * 3600 + 5 * 60), "1 day,  3:05");
        assert_eq!(format_uptime(3 * 86_400 + 23 * 3600 + 59 * 60 + 59), "3 days, 23:59");
        assert_eq!(format_uptime(12 * 3600), "12:00");
    }

    #[test]
    fn utmp_records() {
        // Three records built from glibc's struct utmp: a boot record (type 2), two sessions
        // of "deis" and one of "root"; plus half a record.
        let record = |kind: i16, user: &str| {
            let mut r = vec![0u8; UTMP_RECORD_BYTES];
            r[..2].copy_from_slice(&kind.to_le_bytes());
            r[UTMP_USER_OFFSET..UTMP_USER_OFFSET + user.len()].copy_from_slice(user.as_bytes());
            r
        };
        let mut utmp = Vec::new();
        for (kind, user) in [(2, "reboot"), (7, "deis"), (7, "root"), (7, "deis"), (8, "gone")] {
            utmp.extend(record(kind, user));
        }
        utmp.extend([7u8; 100]);
        assert_eq!(count_users(&utmp), (3, 2));
        assert_eq!(count_users(&[]), (0, 0));
    }

    #[test]
    fn three_points() {
        let s = SystemSample {
            load: Some((0.5, 0.25, 0.125)),
            n_cpus: Some(2),
            n_physical_cpus: Some(2),
            users: None,
            uptime: Some(893),
        };
        let points = system_points(&s);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].fields.len(), 5, "no n_users without utmp");
        assert_eq!(points[1].field_value("uptime"), Some(&FieldValue::Int(893)));
        assert_eq!(points[2].field_value("uptime_format"), Some(&FieldValue::Str(" 0:14".into())));
        assert!(system_points(&SystemSample::default()).is_empty());
    }
}

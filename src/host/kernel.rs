//! `kernel`: counters of `/proc/stat` and the entropy pool, as Telegraf v1.39.3's
//! `inputs.kernel` writes them by default (no `ksm`, no `psi`).
//!
//! From `/proc/stat` (proc_stat(5)): `intr` (its first number, the total) → `interrupts`,
//! `ctxt` → `context_switches`, `processes` → `processes_forked`, `btime` → `boot_time`
//! (Unix seconds), and on kernels that still print it, `page IN OUT` → `disk_pages_in`,
//! `disk_pages_out`. From `/proc/sys/kernel/random/entropy_avail`: `entropy_avail`. All
//! integers.
//!
//! Differs from Telegraf: it fails the whole gather when a number cannot be read or the
//! entropy file is missing; logmill leaves that field out and reports it.

use crate::metrics::point::{FieldValue, Point};

/// The kernel counters of one `/proc/stat`; a field is `None` when its line is absent or not
/// a number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KernelStat {
    pub interrupts: Option<i64>,
    pub context_switches: Option<i64>,
    pub processes_forked: Option<i64>,
    pub boot_time: Option<i64>,
    pub disk_pages: Option<(i64, i64)>,
    /// Names of the lines present but unreadable.
    pub unreadable: Vec<&'static str>,
}

/// Parses the lines of `/proc/stat` the kernel input uses.
pub(crate) fn parse_stat(text: &str) -> KernelStat {
    let mut k = KernelStat::default();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(key) = words.next() else { continue };
        let mut number = || words.next().and_then(|w| w.parse::<i64>().ok());
        let (slot, name) = match key {
            "intr" => (&mut k.interrupts, "intr"),
            "ctxt" => (&mut k.context_switches, "ctxt"),
            "processes" => (&mut k.processes_forked, "processes"),
            "btime" => (&mut k.boot_time, "btime"),
            "page" => {
                match (number(), number()) {
                    (Some(a), Some(b)) => k.disk_pages = Some((a, b)),
                    _ => k.unreadable.push("page"),
                }
                continue;
            }
            _ => continue,
        };
        match number() {
            Some(v) => *slot = Some(v),
            None => k.unreadable.push(name),
        }
    }
    k
}

/// `entropy_avail` (`256\n`).
pub(crate) fn parse_entropy(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// The `kernel` point, or `None` when it would have no field.
pub(crate) fn kernel_point(k: &KernelStat, entropy_avail: Option<i64>) -> Option<Point> {
    let mut p = Point::new("kernel");
    for (name, value) in [
        ("interrupts", k.interrupts),
        ("context_switches", k.context_switches),
        ("processes_forked", k.processes_forked),
        ("boot_time", k.boot_time),
        ("entropy_avail", entropy_avail),
    ] {
        if let Some(v) = value {
            p = p.field(name, FieldValue::Int(v));
        }
    }
    if let Some((pages_in, pages_out)) = k.disk_pages {
        p = p
            .field("disk_pages_in", FieldValue::Int(pages_in))
            .field("disk_pages_out", FieldValue::Int(pages_out));
    }
    (!p.fields.is_empty()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn captured_stat() {
        let k = parse_stat(&testdata("captured/stat"));
        let entropy = parse_entropy(&testdata("captured/sys/kernel/random/entropy_avail"));
        assert_eq!(entropy, Some(256));
        let p = kernel_point(&k, entropy).unwrap();
        // The file's lines: `intr 574431 …`, `ctxt 739548`, `btime 1796094729`,
        // `processes 23159`.
        assert_eq!(p.field_value("interrupts"), Some(&FieldValue::Int(574431)));
        assert_eq!(p.field_value("context_switches"), Some(&FieldValue::Int(739548)));
        assert_eq!(p.field_value("processes_forked"), Some(&FieldValue::Int(23159)));
        assert_eq!(p.field_value("boot_time"), Some(&FieldValue::Int(1796094729)));
        assert_eq!(p.field_value("entropy_avail"), Some(&FieldValue::Int(256)));
        assert_eq!(p.fields.len(), 5, "no `page` line on this kernel");
    }

    #[test]
    fn built_stat() {
        let k = parse_stat(&testdata("odd/stat-64cpu-guest"));
        let p = kernel_point(&k, None).unwrap();
        assert_eq!(p.field_value("interrupts"), Some(&FieldValue::Int(123456789)));
        assert_eq!(p.field_value("context_switches"), Some(&FieldValue::Int(987654321)));
        assert_eq!(p.field_value("processes_forked"), Some(&FieldValue::Int(424242)));
        assert_eq!(p.field_value("boot_time"), Some(&FieldValue::Int(1700000000)));
        assert!(p.field_value("entropy_avail").is_none());
        // A 2.4-era `page` line, and unreadable numbers.
        let k = parse_stat("page 5741 1808\nctxt lots\nbtime\nintr 1 2\n");
        assert_eq!(k.disk_pages, Some((5741, 1808)));
        assert_eq!(k.unreadable, ["ctxt", "btime"]);
        let p = kernel_point(&k, Some(3000)).unwrap();
        assert_eq!(p.field_value("disk_pages_out"), Some(&FieldValue::Int(1808)));
        assert!(p.field_value("context_switches").is_none());
        assert!(kernel_point(&KernelStat::default(), None).is_none());
        assert_eq!(parse_entropy("x"), None);
    }
}

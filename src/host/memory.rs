//! `mem` and `swap` from `/proc/meminfo` (and `/proc/vmstat`, `/proc/zoneinfo`), as Telegraf
//! v1.39.3's `inputs.mem` and `inputs.swap` write them through gopsutil v4.26.7
//! (`mem/mem_linux.go`).
//!
//! `mem.used` follows Telegraf ≥ 1.37 (gopsutil ≥ 4.25.8): **`used = total − available`**,
//! the same as `free` (procps-ng ≥ 4) prints. Telegraf ≤ 1.36, and so every Telegraf the old
//! Deis/Hephy charts shipped, computed `total − free − buffers − cached`; a dashboard that
//! compares old and new points sees the step.
//!
//! Other rules of gopsutil kept as they are:
//! - `cached` is `Cached + SReclaimable`;
//! - without `MemAvailable` (kernels before 3.14), `available` is estimated from the low
//!   watermarks of `/proc/zoneinfo` when `Active(file)`, `Inactive(file)` and `SReclaimable`
//!   are present, else `Cached + Free`;
//! - a key the kernel does not print (`HighTotal` on 64-bit) is 0, as in Telegraf; a line
//!   whose number cannot be read is reported and its field left out instead;
//! - `huge_pages_total` / `huge_pages_free` are page counts, every other field bytes (the
//!   file's `kB` are KiB);
//! - swap `in` / `out` are `pswpin` / `pswpout` × 4096, gopsutil's fixed page size.
//!
//! `swap.total` / `free` come from `SwapTotal` / `SwapFree` of `/proc/meminfo`, where gopsutil
//! asks `sysinfo(2)`: the same kernel counters (sysinfo in bytes, meminfo in KiB of the same
//! page counts), read under `HOST_PROC` like everything else.

use std::collections::HashMap;

use crate::metrics::point::{FieldValue, Point};

use super::{int, Malformed};

/// The keys of `/proc/meminfo` Telegraf's `mem` reads, with the field each becomes, and
/// whether the value is in KiB (every key but the huge page counts).
const MEM_KEYS: &[(&str, &str, bool)] = &[
    ("Active", "active", true),
    ("Buffers", "buffered", true),
    ("CommitLimit", "commit_limit", true),
    ("Committed_AS", "committed_as", true),
    ("Dirty", "dirty", true),
    ("MemFree", "free", true),
    ("HighFree", "high_free", true),
    ("HighTotal", "high_total", true),
    ("HugePages_Free", "huge_pages_free", false),
    ("Hugepagesize", "huge_page_size", true),
    ("HugePages_Total", "huge_pages_total", false),
    ("Inactive", "inactive", true),
    ("LowFree", "low_free", true),
    ("LowTotal", "low_total", true),
    ("Mapped", "mapped", true),
    ("PageTables", "page_tables", true),
    ("Shmem", "shared", true),
    ("Slab", "slab", true),
    ("SReclaimable", "sreclaimable", true),
    ("SUnreclaim", "sunreclaim", true),
    ("SwapCached", "swap_cached", true),
    ("SwapFree", "swap_free", true),
    ("SwapTotal", "swap_total", true),
    ("VmallocChunk", "vmalloc_chunk", true),
    ("VmallocTotal", "vmalloc_total", true),
    ("VmallocUsed", "vmalloc_used", true),
    ("WritebackTmp", "write_back_tmp", true),
    ("Writeback", "write_back", true),
];

/// A `/proc/meminfo` key kept inline: parsing allocated one `String` per line, some 110 a
/// cycle. Keys longer than it holds are not stored: no field reads one, and the longest
/// key this machine's Linux 6.18 prints is 15 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    len: u8,
    bytes: [u8; Key::MAX],
}

impl Key {
    const MAX: usize = 31;

    fn new(key: &str) -> Option<Self> {
        let mut bytes = [0; Self::MAX];
        bytes.get_mut(..key.len())?.copy_from_slice(key.as_bytes());
        Some(Self { len: key.len() as u8, bytes })
    }

    fn as_str(&self) -> &str {
        // Copied whole from a `&str`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

// Hashed as the `str` it holds, so that a map keyed by it is looked up by `&str`.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// `/proc/meminfo` as numbers: bytes for `kB` lines, plain counts otherwise.
#[derive(Debug, Default, Clone)]
pub(crate) struct Meminfo {
    values: HashMap<Key, u64>,
    /// Keys whose line was present but unreadable: their fields are left out.
    unreadable: Vec<String>,
}

impl Meminfo {
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).copied()
    }

    fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Whether `MemAvailable` is missing and the zoneinfo estimate applies, so the caller knows
    /// to read `/proc/zoneinfo`.
    pub fn needs_zoneinfo(&self) -> bool {
        !self.has("MemAvailable")
            && self.has("Active(file)")
            && self.has("Inactive(file)")
            && self.has("SReclaimable")
    }
}

/// Parses `/proc/meminfo`: `Key:   value [kB]` per line (proc(5)).
pub(crate) fn parse_meminfo(text: &str) -> (Meminfo, Vec<Malformed>) {
    let mut info = Meminfo { values: HashMap::with_capacity(64), unreadable: Vec::new() };
    let mut malformed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            malformed.push(Malformed { line: n + 1 });
            continue;
        };
        let key = key.trim();
        let rest = rest.trim();
        let (number, kib) = match rest.strip_suffix("kB") {
            Some(n) => (n.trim_end(), true),
            None => (rest, false),
        };
        match number.parse::<u64>() {
            Ok(v) => {
                let v = if kib { v.saturating_mul(1024) } else { v };
                if let Some(key) = Key::new(key) {
                    info.values.insert(key, v);
                }
            }
            Err(_) => {
                info.unreadable.push(key.to_owned());
                malformed.push(Malformed { line: n + 1 });
            }
        }
    }
    (info, malformed)
}

/// Sum of the `low` watermarks of every zone in `/proc/zoneinfo`, in pages: gopsutil adds
/// the second word of each line whose first word starts with `low` (an unreadable one as 0).
pub(crate) fn zoneinfo_low_pages(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            let first = words.next()?;
            first.starts_with("low").then(|| words.next().and_then(|w| w.parse::<u64>().ok()).unwrap_or(0))
        })
        .fold(0u64, u64::saturating_add)
}

/// Why no `mem` point could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MemError {
    #[error("MemTotal is missing, unreadable or 0")]
    NoTotal,
}

/// `available`: `MemAvailable`, or gopsutil's estimate for kernels without it.
/// `low_watermark_pages` is [`zoneinfo_low_pages`] when zoneinfo could be read.
fn available(info: &Meminfo, low_watermark_pages: Option<u64>, page_size: u64) -> u64 {
    if let Some(v) = info.get("MemAvailable") {
        return v;
    }
    let free = info.get("MemFree").unwrap_or(0);
    let cached = info.get("Cached").unwrap_or(0).saturating_add(info.get("SReclaimable").unwrap_or(0));
    match low_watermark_pages {
        Some(pages) if info.needs_zoneinfo() => {
            // gopsutil's calculateAvailVmem (itself the kernel's si_mem_available), in signed
            // arithmetic: its unsigned version wraps where this clamps at 0.
            let wmark = i128::from(pages) * i128::from(page_size);
            let free = i128::from(free);
            let page_cache = i128::from(info.get("Active(file)").unwrap_or(0))
                + i128::from(info.get("Inactive(file)").unwrap_or(0));
            let sreclaimable = i128::from(info.get("SReclaimable").unwrap_or(0));
            let available = free - wmark + page_cache - (page_cache / 2).min(wmark) + sreclaimable
                - (sreclaimable / 2).min(wmark);
            u64::try_from(available.max(0)).unwrap_or(u64::MAX)
        }
        _ => cached.saturating_add(free),
    }
}

/// The `mem` point.
pub(crate) fn mem_point(
    info: &Meminfo,
    low_watermark_pages: Option<u64>,
    page_size: u64,
) -> Result<Point, MemError> {
    let total = info.get("MemTotal").filter(|&t| t > 0).ok_or(MemError::NoTotal)?;
    let available = available(info, low_watermark_pages, page_size);
    let used = total.saturating_sub(available);
    let mut p = Point::new("mem")
        .field("total", int(total))
        .field("available", int(available))
        .field("used", int(used))
        .field("used_percent", FieldValue::Float(100.0 * used as f64 / total as f64))
        .field("available_percent", FieldValue::Float(100.0 * available as f64 / total as f64));
    if !info.unreadable.iter().any(|k| k == "Cached" || k == "SReclaimable") {
        let cached = info.get("Cached").unwrap_or(0).saturating_add(info.get("SReclaimable").unwrap_or(0));
        p = p.field("cached", int(cached));
    }
    for (key, field, _) in MEM_KEYS {
        if info.unreadable.iter().any(|k| k == key) {
            continue;
        }
        p = p.field(*field, int(info.get(key).unwrap_or(0)));
    }
    Ok(p)
}

/// `pswpin` and `pswpout` of `/proc/vmstat` (`name value` per line), in pages.
pub(crate) fn parse_vmstat_swap(text: &str) -> (Option<u64>, Option<u64>) {
    (vmstat_value(text, "pswpin"), vmstat_value(text, "pswpout"))
}

/// The value of the line named `name`: two searches in some 180 lines instead of splitting
/// each into words (1 % of a collection cycle).
fn vmstat_value(text: &str, name: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let mut from = 0;
    loop {
        let at = from + memchr::memmem::find(&bytes[from..], name.as_bytes())?;
        from = at + name.len();
        let line_start = at == 0 || bytes[at - 1] == b'\n';
        if line_start && bytes.get(from).is_some_and(|b| *b == b' ' || *b == b'\t') {
            let line = &text[from..];
            let line = &line[..line.find('\n').unwrap_or(line.len())];
            return line.split_ascii_whitespace().next()?.parse().ok();
        }
    }
}

/// gopsutil's page size for swap in/out, whatever the machine's.
const SWAP_PAGE_BYTES: u64 = 4 * 1024;

/// The `swap` point. Telegraf writes it as two points (gauges and counters) with the same
/// key, which InfluxDB merges; one point carries the same fields. `in`/`out` are left out
/// when `/proc/vmstat` lacked them.
pub(crate) fn swap_point(info: &Meminfo, pswpin: Option<u64>, pswpout: Option<u64>) -> Option<Point> {
    let total = info.get("SwapTotal")?;
    let free = info.get("SwapFree")?;
    let used = total.saturating_sub(free);
    let used_percent = if total == 0 { 0.0 } else { 100.0 * used as f64 / total as f64 };
    let mut p = Point::new("swap")
        .field("total", int(total))
        .field("used", int(used))
        .field("free", int(free))
        .field("used_percent", FieldValue::Float(used_percent));
    if let Some(v) = pswpin {
        p = p.field("in", int(v.saturating_mul(SWAP_PAGE_BYTES)));
    }
    if let Some(v) = pswpout {
        p = p.field("out", int(v.saturating_mul(SWAP_PAGE_BYTES)));
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_looked_up_by_str_and_an_overlong_one_is_skipped() {
        let long = "K".repeat(Key::MAX + 1);
        let text =
            format!("{long}: 5 kB\nMemTotal: 2 kB\nHugePages_Total:       3\n{}: 7\n", "L".repeat(Key::MAX));
        let (info, malformed) = parse_meminfo(&text);
        assert!(malformed.is_empty());
        assert_eq!((info.get("MemTotal"), info.get("HugePages_Total")), (Some(2048), Some(3)));
        assert_eq!(info.get(&"L".repeat(Key::MAX)), Some(7), "a key of the longest length kept");
        assert_eq!(info.get(&long), None);
        assert_eq!(info.get("MemTota"), None);
    }

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn i(p: &Point, key: &str) -> i64 {
        match p.field_value(key) {
            Some(FieldValue::Int(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn f(p: &Point, key: &str) -> f64 {
        match p.field_value(key) {
            Some(FieldValue::Float(v)) => *v,
            other => panic!("{key}: {other:?}"),
        }
    }

    /// This machine's `/proc/meminfo` (`testdata/proc/captured/meminfo`); expected values are
    /// the file's numbers × 1024, worked out by hand.
    #[test]
    fn captured_meminfo() {
        let (info, bad) = parse_meminfo(&testdata("captured/meminfo"));
        assert!(bad.is_empty());
        let p = mem_point(&info, None, 4096).unwrap();
        // MemTotal 24731708 kB, MemAvailable 24164712 kB (the captured file).
        assert_eq!(i(&p, "total"), 24731708 * 1024);
        assert_eq!(i(&p, "available"), 24164712 * 1024);
        assert_eq!(i(&p, "used"), (24731708 - 24164712) * 1024);
        assert!((f(&p, "used_percent") - 100.0 * 566996.0 / 24731708.0).abs() < 1e-9);
        assert!((f(&p, "available_percent") - 100.0 * 24164712.0 / 24731708.0).abs() < 1e-9);
        // Cached 16541016 kB + SReclaimable 547812 kB.
        assert_eq!(i(&p, "cached"), (16541016 + 547812) * 1024);
        assert_eq!(i(&p, "buffered"), 67680 * 1024);
        assert_eq!(i(&p, "free"), 7390736 * 1024);
        assert_eq!(i(&p, "shared"), 8856 * 1024);
        assert_eq!(i(&p, "huge_page_size"), 2048 * 1024);
        assert_eq!(i(&p, "huge_pages_total"), 0);
        assert_eq!(i(&p, "high_total"), 0, "absent on x86_64: 0, as Telegraf");
        assert_eq!(i(&p, "vmalloc_total"), 34359738367 * 1024);
        // Telegraf's Linux fields, all present: the 5 common ones (total, available, used,
        // used_percent, available_percent) and the 29 of its `case "linux"`.
        assert_eq!(p.fields.len(), 34);
        assert!(p.fields.iter().all(|(k, v)| matches!(v, FieldValue::Int(_)) || k.ends_with("_percent")));
    }

    /// A 3.10 kernel (CentOS 7 layout, no `MemAvailable`): the zoneinfo estimate.
    #[test]
    fn missing_memavailable_uses_zoneinfo() {
        let (info, bad) = parse_meminfo(&testdata("odd/meminfo-3.10"));
        assert!(bad.is_empty());
        assert!(info.needs_zoneinfo());
        let low = zoneinfo_low_pages(&testdata("odd/zoneinfo-3.10"));
        // low watermarks of zones DMA, DMA32, Normal: 4 + 1360 + 15034 pages.
        assert_eq!(low, 16398);
        let p = mem_point(&info, Some(low), 4096).unwrap();
        // By hand, in kB (the file's unit; page = 4 kB, watermark = 16398 × 4 = 65592 kB):
        //   free 1503516 − 65592 = 1437924
        //   page cache 2066292 + 3391112 = 5457404, minus min(2728702, 65592) = 5391812
        //   SReclaimable 289760, minus min(144880, 65592) = 224168
        //   available = 1437924 + 5391812 + 224168 = 7053904 kB
        assert_eq!(i(&p, "available"), 7053904 * 1024);
        assert_eq!(i(&p, "used"), (16268424 - 7053904) * 1024);
        // Without zoneinfo: Cached + SReclaimable + MemFree = 5631432 + 289760 + 1503516 kB.
        let p = mem_point(&info, None, 4096).unwrap();
        assert_eq!(i(&p, "available"), (5631432 + 289760 + 1503516) * 1024);
    }

    #[test]
    fn odd_meminfo() {
        let text = "MemTotal:       1000 kB\nMemFree: lots kB\nBuffers:  10 kB\ngarbage\n\nCached: 100 kB\n";
        let (info, bad) = parse_meminfo(text);
        assert_eq!(bad, [Malformed { line: 2 }, Malformed { line: 4 }]);
        assert!(!info.needs_zoneinfo(), "no Active(file): the simple estimate");
        let p = mem_point(&info, None, 4096).unwrap();
        assert!(p.field_value("free").is_none(), "an unreadable number is left out, not zeroed");
        assert_eq!(i(&p, "available"), 100 * 1024, "Cached + Free, Free unknown");
        assert_eq!(p.field_value("buffered"), Some(&FieldValue::Int(10 * 1024)));
        assert_eq!(mem_point(&parse_meminfo("MemFree: 5 kB\n").0, None, 4096), Err(MemError::NoTotal));
        assert_eq!(mem_point(&parse_meminfo("MemTotal: 0 kB\n").0, None, 4096), Err(MemError::NoTotal));
        // A watermark larger than what it is taken from clamps at 0 (gopsutil's uint64 wraps).
        let (info, _) = parse_meminfo(
            "MemTotal: 100 kB\nMemFree: 1 kB\nActive(file): 0 kB\nInactive(file): 0 kB\nSReclaimable: 0 kB\n",
        );
        let p = mem_point(&info, Some(1_000_000), 4096).unwrap();
        assert_eq!(i(&p, "available"), 0);
        assert_eq!(i(&p, "used"), 100 * 1024);
    }

    #[test]
    fn swap_from_meminfo_and_vmstat() {
        let (info, _) = parse_meminfo(&testdata("captured/meminfo"));
        let (pswpin, pswpout) = parse_vmstat_swap(&testdata("captured/vmstat"));
        assert_eq!((pswpin, pswpout), (Some(0), Some(0)));
        let p = swap_point(&info, pswpin, pswpout).unwrap();
        // This machine has no swap: SwapTotal 0, SwapFree 0, used_percent 0 (not NaN).
        assert_eq!(i(&p, "total"), 0);
        assert_eq!(f(&p, "used_percent"), 0.0);
        assert_eq!(i(&p, "in"), 0);

        let (info, _) = parse_meminfo(&testdata("odd/meminfo-3.10"));
        let (pswpin, pswpout) = parse_vmstat_swap("pgpgin 5\npswpin 300\npswpout 1000\n");
        let p = swap_point(&info, pswpin, pswpout).unwrap();
        // SwapTotal 8257532 kB, SwapFree 8126460 kB → used 131072 kB.
        assert_eq!(i(&p, "total"), 8257532 * 1024);
        assert_eq!(i(&p, "used"), 131072 * 1024);
        assert_eq!(i(&p, "free"), 8126460 * 1024);
        assert!((f(&p, "used_percent") - 100.0 * 131072.0 / 8257532.0).abs() < 1e-9);
        assert_eq!(i(&p, "in"), 300 * 4096);
        assert_eq!(i(&p, "out"), 1000 * 4096);
        assert!(swap_point(&Meminfo::default(), None, None).is_none());
    }

    #[test]
    fn vmstat_lines_found_by_whole_name() {
        let text = "xpswpin 1\npswpin_x 2\npswpin\t7\npswpout 9\n";
        assert_eq!(parse_vmstat_swap(text), (Some(7), Some(9)));
        assert_eq!(parse_vmstat_swap("pswpout 3"), (None, Some(3)), "first line, no newline");
        assert_eq!(parse_vmstat_swap("pswpin x\npswpout\n"), (None, None));
        assert_eq!(parse_vmstat_swap(""), (None, None));
    }
}

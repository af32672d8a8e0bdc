//! `diskio`: block device counters of `/proc/diskstats`, as Telegraf v1.39.3's
//! `inputs.diskio` writes them (counters through gopsutil v4.26.7's `disk.IOCounters`).
//!
//! A line (Documentation/admin-guide/iostats.rst): major, minor, name, then reads completed,
//! reads merged, sectors read, ms reading, writes completed, writes merged, sectors written,
//! ms writing, I/Os in progress, ms doing I/O, weighted ms doing I/O (and, since 4.18 and
//! 5.5, discard and flush columns, unused here). Sectors are 512 bytes whatever the device.
//!
//! Tag `name` (and `wwid` from sysfs when the device has one). Integer fields `reads`,
//! `writes`, `read_bytes`, `write_bytes`, `read_time`, `write_time`, `io_time`,
//! `weighted_io_time`, `iops_in_progress`, `merged_reads`, `merged_writes`; with a previous
//! sample and no counter gone backwards, float `io_await` = Δ(read+write time) / Δ(reads +
//! writes) and `io_svctm` = Δio_time / Δ(reads + writes) (when some I/O completed), and
//! `io_util` = 100 × Δio_time / elapsed ms. A device whose counters are all 0 is skipped, as
//! gopsutil does (idle loop and ram devices).
//!
//! Not followed: udev-based `name_templates`, `device_tags` and `serial` (Telegraf's default
//! `skip_serial_number = true` writes no serial either).

use crate::metrics::point::{FieldValue, Point};

use super::{int, Malformed};

/// gopsutil's sector size: the kernel counts 512-byte sectors in diskstats for every device.
const SECTOR_BYTES: u64 = 512;

/// One device's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskStats {
    pub name: String,
    pub reads: u64,
    pub merged_reads: u64,
    pub read_sectors: u64,
    pub read_time_ms: u64,
    pub writes: u64,
    pub merged_writes: u64,
    pub write_sectors: u64,
    pub write_time_ms: u64,
    pub in_progress: u64,
    pub io_time_ms: u64,
    pub weighted_io_time_ms: u64,
}

/// Parses `/proc/diskstats`, keeping devices with any activity. Lines with fewer than the
/// 14 columns of 2.6 kernels, or with a column that is not a number, are reported.
pub(crate) fn parse_diskstats(text: &str) -> (Vec<DiskStats>, Vec<Malformed>) {
    let mut disks = Vec::new();
    let mut malformed = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // Parsed in place: most lines are idle devices, dropped below, and two vectors per
        // line were most of this parser's cost.
        let mut words = line.split_ascii_whitespace();
        let name = words.nth(2);
        let mut v = [0u64; 11];
        let complete = v.iter_mut().all(|slot| match words.next().map(str::parse) {
            Some(Ok(x)) => {
                *slot = x;
                true
            }
            _ => false,
        });
        let Some(name) = name.filter(|_| complete) else {
            malformed.push(Malformed { line: n + 1 });
            continue;
        };
        if v.iter().all(|x| *x == 0) {
            continue;
        }
        let d = DiskStats {
            name: name.to_owned(),
            reads: v[0],
            merged_reads: v[1],
            read_sectors: v[2],
            read_time_ms: v[3],
            writes: v[4],
            merged_writes: v[5],
            write_sectors: v[6],
            write_time_ms: v[7],
            in_progress: v[8],
            io_time_ms: v[9],
            weighted_io_time_ms: v[10],
        };
        disks.push(d);
    }
    (disks, malformed)
}

/// The `diskio` point of `current`; `previous` is the device's last sample and `elapsed_ms`
/// the whole milliseconds since it (Telegraf truncates the interval to milliseconds too).
/// `wwid` comes from sysfs.
pub(crate) fn diskio_point(
    current: &DiskStats,
    previous: Option<(&DiskStats, u64)>,
    wwid: Option<&str>,
) -> Point {
    let mut p = Point::new("diskio").tag("name", current.name.clone());
    if let Some(wwid) = wwid.filter(|w| !w.is_empty()) {
        p = p.tag("wwid", wwid.to_owned());
    }
    p = p
        .field("reads", int(current.reads))
        .field("writes", int(current.writes))
        .field("read_bytes", int(current.read_sectors.saturating_mul(SECTOR_BYTES)))
        .field("write_bytes", int(current.write_sectors.saturating_mul(SECTOR_BYTES)))
        .field("read_time", int(current.read_time_ms))
        .field("write_time", int(current.write_time_ms))
        .field("io_time", int(current.io_time_ms))
        .field("weighted_io_time", int(current.weighted_io_time_ms))
        .field("iops_in_progress", int(current.in_progress))
        .field("merged_reads", int(current.merged_reads))
        .field("merged_writes", int(current.merged_writes));
    let Some((last, elapsed_ms)) = previous else { return p };
    let wrapped = current.reads < last.reads
        || current.writes < last.writes
        || current.read_time_ms < last.read_time_ms
        || current.write_time_ms < last.write_time_ms
        || current.io_time_ms < last.io_time_ms;
    if wrapped {
        return p;
    }
    let rw_count = (current.reads - last.reads) as f64 + (current.writes - last.writes) as f64;
    let rw_time = (current.read_time_ms - last.read_time_ms) as f64
        + (current.write_time_ms - last.write_time_ms) as f64;
    let io_time = (current.io_time_ms - last.io_time_ms) as f64;
    if rw_count > 0.0 {
        p = p.field("io_await", FieldValue::Float(rw_time / rw_count));
        p = p.field("io_svctm", FieldValue::Float(io_time / rw_count));
    }
    if elapsed_ms > 0 {
        p = p.field("io_util", FieldValue::Float(100.0 * io_time / elapsed_ms as f64));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn captured_diskstats() {
        let (disks, bad) = parse_diskstats(&testdata("captured/diskstats"));
        assert!(bad.is_empty());
        // loop0-7 and zram0 are all zeros: only vda is left (20 columns, a 5.5+ kernel).
        assert_eq!(disks.len(), 1);
        let vda = &disks[0];
        // `254 0 vda 28456 5022 2515346 11723 22842 46776 39697840 356441 0 16660 373512 …`
        assert_eq!(vda.name, "vda");
        let p = diskio_point(vda, None, None);
        assert_eq!(p.field_value("reads"), Some(&FieldValue::Int(28456)));
        assert_eq!(p.field_value("merged_reads"), Some(&FieldValue::Int(5022)));
        assert_eq!(p.field_value("read_bytes"), Some(&FieldValue::Int(2515346 * 512)));
        assert_eq!(p.field_value("read_time"), Some(&FieldValue::Int(11723)));
        assert!(p.field_value("io_util").is_none(), "no rates from one sample");
        assert_eq!(p.fields.len(), 11);
    }

    #[test]
    fn rates_between_two_samples() {
        // Built from iostats.rst's layout: 14 columns (a 2.6 kernel), then the same device
        // 2000 ms later with 100 more reads (50 ms), 300 more writes (350 ms), 250 ms busy.
        let a = "   8       0 sda 1000 10 8000 500 3000 30 24000 1500 0 2000 2000\n";
        let b = "   8       0 sda 1100 10 8800 550 3300 31 26400 1850 2 2250 2400\n";
        let (da, _) = parse_diskstats(a);
        let (db, _) = parse_diskstats(b);
        let p = diskio_point(&db[0], Some((&da[0], 2000)), Some("naa.5000c500a1b2c3d4"));
        assert_eq!(p.tag_value("wwid"), Some("naa.5000c500a1b2c3d4"));
        assert_eq!(
            p.field_value("io_await"),
            Some(&FieldValue::Float(400.0 / 400.0)),
            "(50 + 350) / (100 + 300)"
        );
        assert_eq!(p.field_value("io_svctm"), Some(&FieldValue::Float(250.0 / 400.0)));
        assert_eq!(p.field_value("io_util"), Some(&FieldValue::Float(12.5)), "100 × 250 / 2000");
        assert_eq!(p.field_value("iops_in_progress"), Some(&FieldValue::Int(2)));
        // Counters went back (a device re-created): no rates, counters still written.
        let p = diskio_point(&da[0], Some((&db[0], 2000)), None);
        assert!(p.field_value("io_util").is_none());
        assert_eq!(p.fields.len(), 11);
        // Nothing completed: no await/svctm, util 0.
        let p = diskio_point(&da[0], Some((&da[0], 1000)), None);
        assert!(p.field_value("io_await").is_none());
        assert_eq!(p.field_value("io_util"), Some(&FieldValue::Float(0.0)));
    }

    #[test]
    fn odd_lines() {
        let text =
            "   8 0 sda 1 2 3\n   8 16 sdb x 0 0 0 0 0 0 0 0 0 0\n\n 253 0 dm-0 1 0 8 0 0 0 0 0 0 0 0\n";
        let (disks, bad) = parse_diskstats(text);
        assert_eq!(bad, [Malformed { line: 1 }, Malformed { line: 2 }]);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "dm-0");
    }
}

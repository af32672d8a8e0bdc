//! `disk`: usage of every mounted filesystem, as Telegraf v1.39.3's `inputs.disk` reports it
//! (mounts from gopsutil v4.26.7's `disk.Partitions(true)`, usage from `statfs(2)`).
//!
//! Mounts come from `/proc/1/mountinfo` (the host's init, under `HOST_PROC`), or
//! `/proc/self/mountinfo` when that cannot be read. A line (proc_pid_mountinfo(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)  (4)   (5)     (6)       (7)   (8) (9)    (10)         (11)
//! ```
//!
//! gopsutil's rules, kept: the device is the source (10) when it is a path or the root (4)
//! is `/`, else the root; a later mount of an already seen `major:minor` takes the first
//! one's device, and is a bind mount (option `bind`) when its source is a path and its root is
//! a subdirectory (not a btrfs `subvol=`); the mode is `ro` when the mount or the superblock
//! says `ro`, `rw` when both say `rw`; `\040`-style escapes in the mount point are decoded.
//! Telegraf then skips filesystems of `ignore_fs` (its sample config's list by default) and
//! `autofs`, mounts with an option of `ignore_mount_opts`, mounts outside `mount_points` when
//! that is set, and filesystems whose `statfs` total is 0 (proc, sysfs, cgroup…).
//!
//! Tags `path` (the mount point, without `HOST_MOUNT_PREFIX`), `device` (without `/dev/`; the
//! filesystem type for `none`), `fstype`, `mode`, and `label` (the device-mapper name) when
//! there is one. Fields `total`, `free` (available to unprivileged users, `f_bavail`), `used`
//! (`f_blocks − f_bfree`), `inodes_total`, `inodes_free`, `inodes_used` (integers, bytes and
//! counts), `used_percent` = used / (used + free) and `inodes_used_percent` (floats).
//!
//! Not followed: labels from the udev database (`ID_FS_LABEL`), which logmill does not read.

use crate::metrics::point::{FieldValue, Point};

use super::{int, Malformed};

/// Which mounts the disk input reports (Telegraf's options of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskOptions {
    /// Only these mount points; empty: all.
    pub(crate) mount_points: Vec<String>,
    /// Filesystem types to skip. `autofs` is always skipped (statfs would trigger a mount).
    pub(crate) ignore_fs: Vec<String>,
    /// Mount options that make a mount skipped (`bind` for bind mounts).
    pub(crate) ignore_mount_opts: Vec<String>,
}

/// Telegraf's sample `ignore_fs`: pseudo and image filesystems whose usage says nothing
/// about the node's disks (Telegraf's plugin default is empty; every generated config, the
/// Deis/Hephy charts' included, sets this list).
pub const DEFAULT_IGNORE_FS: [&str; 7] =
    ["tmpfs", "devtmpfs", "devfs", "iso9660", "overlay", "aufs", "squashfs"];

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            mount_points: Vec::new(),
            ignore_fs: DEFAULT_IGNORE_FS.iter().map(|s| (*s).to_owned()).collect(),
            ignore_mount_opts: Vec::new(),
        }
    }
}

/// One mount of mountinfo, as gopsutil's `PartitionStat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// `major:minor` of the filesystem (field 3).
    pub dev_id: String,
    /// See the module documentation.
    pub device: String,
    /// Decoded mount point.
    pub mount_point: String,
    pub fstype: String,
    /// Effective options: `rw`/`ro` from the mount and the superblock, then the mount's own,
    /// plus `bind` for a bind mount.
    pub opts: Vec<String>,
}

/// Decodes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash); anything else is kept as written.
pub(crate) fn unescape(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = &bytes[i + 1..(i + 4).min(bytes.len())];
            if digits.len() == 3 && digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn effective_opts(mount_opts: &str, super_opts: &[&str]) -> Vec<String> {
    let mount: Vec<&str> = mount_opts.split(',').filter(|o| !o.is_empty()).collect();
    let mode = if mount.contains(&"ro") || super_opts.contains(&"ro") {
        Some("ro")
    } else if mount.contains(&"rw") && super_opts.contains(&"rw") {
        Some("rw")
    } else {
        None
    };
    let Some(mode) = mode else { return mount.iter().map(|o| (*o).to_owned()).collect() };
    let mut opts = vec![mode.to_owned()];
    opts.extend(mount.iter().filter(|o| **o != "ro" && **o != "rw").map(|o| (*o).to_owned()));
    opts
}

/// Parses mountinfo into mounts, in file order.
pub(crate) fn parse_mountinfo(text: &str) -> (Vec<Mount>, Vec<Malformed>) {
    let mut mounts = Vec::new();
    let mut malformed = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((before, after)) = line.split_once(" - ") else {
            malformed.push(Malformed { line: n + 1 });
            continue;
        };
        let fields: Vec<&str> = before.split_ascii_whitespace().collect();
        let rest: Vec<&str> = after.split_ascii_whitespace().collect();
        if fields.len() < 5 || rest.len() < 2 {
            malformed.push(Malformed { line: n + 1 });
            continue;
        }
        let (dev_id, root, mount_point) = (fields[2], fields[3], fields[4]);
        let (fstype, source) = (rest[0], rest[1]);
        let super_opts: Vec<&str> = rest.get(2).map(|o| o.split(',').collect()).unwrap_or_default();
        let mut opts = effective_opts(fields.get(5).copied().unwrap_or(""), &super_opts);

        let mut device = if source.starts_with('/') || root == "/" { source } else { root }.to_owned();
        let first_device = seen.iter().find(|(id, _)| id == dev_id).map(|(_, d)| d.clone());
        if let Some(first) = first_device {
            device = first;
        } else {
            seen.push((dev_id.to_owned(), device.clone()));
        }
        let is_subvol = super_opts.iter().find_map(|o| o.strip_prefix("subvol=")).is_some_and(|v| v == root);
        if source.starts_with('/') && root != "/" && !is_subvol {
            opts.push("bind".to_owned());
        }
        mounts.push(Mount {
            dev_id: dev_id.to_owned(),
            device,
            mount_point: unescape(mount_point),
            fstype: fstype.to_owned(),
            opts,
        });
    }
    (mounts, malformed)
}

/// Filesystems whose `statfs` always says 0 blocks (they answer with the kernel's
/// `simple_statfs`): Telegraf asks and then skips them for their zero total; logmill skips
/// them without asking, which gives the same points for a dozen fewer system calls a cycle.
const NO_BLOCKS_FS: [&str; 16] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
];

/// A mount the disk input will `statfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selected {
    pub mount: Mount,
    /// Where to `statfs` it: the mount point under `HOST_MOUNT_PREFIX`.
    pub statfs_path: String,
    /// The `path` tag.
    pub path: String,
}

/// Telegraf's choice of mounts (`SystemPS.DiskUsage`), with `mount_prefix` as
/// `HOST_MOUNT_PREFIX` (empty: none).
pub(crate) fn select(mounts: &[Mount], options: &DiskOptions, mount_prefix: &str) -> Vec<Selected> {
    let prefix = mount_prefix.trim_end_matches('/');
    let mut out = Vec::new();
    for m in mounts {
        if m.opts.iter().any(|o| options.ignore_mount_opts.contains(o)) {
            continue;
        }
        if !options.mount_points.is_empty() && !options.mount_points.contains(&m.mount_point) {
            continue;
        }
        if m.fstype == "autofs"
            || options.ignore_fs.contains(&m.fstype)
            || NO_BLOCKS_FS.contains(&m.fstype.as_str())
        {
            continue;
        }
        let mut statfs_path = m.mount_point.clone();
        if !prefix.is_empty() && !m.mount_point.starts_with(prefix) {
            statfs_path = clean_join(prefix, &m.mount_point);
            // The prefixed path is itself a mount of the list (the container's own view of
            // the host's tree): Telegraf drops it rather than report one filesystem twice.
            if mounts.iter().any(|other| other.mount_point == statfs_path) {
                continue;
            }
        }
        let unprefixed = if prefix.is_empty() {
            m.mount_point.as_str()
        } else {
            m.mount_point.strip_prefix(prefix).unwrap_or(&m.mount_point)
        };
        out.push(Selected { mount: m.clone(), statfs_path, path: clean_join("/", unprefixed) });
    }
    out
}

/// `a` joined with `b` and cleaned as Go's `filepath.Join` does for these absolute paths:
/// one `/` between parts, none doubled, none trailing (but `/` itself).
fn clean_join(a: &str, b: &str) -> String {
    let mut out = String::with_capacity(a.len() + b.len() + 1);
    for part in a.split('/').chain(b.split('/')).filter(|p| !p.is_empty() && *p != ".") {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// What `statfs(2)` said of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FsStat {
    /// `f_bsize`, which gopsutil multiplies the block counts by.
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// The `disk` point of a mount, or `None` for a filesystem with no size (procfs and the
/// like), which Telegraf skips. `label` is the device-mapper name, when there is one.
pub(crate) fn disk_point(selected: &Selected, stat: &FsStat, label: Option<&str>) -> Option<Point> {
    let total = stat.blocks.saturating_mul(stat.block_size);
    if total == 0 {
        return None;
    }
    let free = stat.blocks_available.saturating_mul(stat.block_size);
    let used = stat.blocks.saturating_sub(stat.blocks_free).saturating_mul(stat.block_size);
    // gopsutil leaves inode counts at 0 when the filesystem reports more free than total.
    let (inodes_used, inodes_free) = if stat.files < stat.files_free {
        (0, stat.files_free)
    } else {
        (stat.files - stat.files_free, stat.files_free)
    };
    let percent = |part: u64, rest: u64| {
        let whole = part as f64 + rest as f64;
        if whole > 0.0 {
            100.0 * part as f64 / whole
        } else {
            0.0
        }
    };
    let m = &selected.mount;
    let device =
        if m.device == "none" || m.device.is_empty() { m.fstype.as_str() } else { m.device.as_str() };
    let mode = if m.opts.iter().any(|o| o == "rw") {
        "rw"
    } else if m.opts.iter().any(|o| o == "ro") {
        "ro"
    } else {
        "unknown"
    };
    let mut p = Point::new("disk")
        .tag("path", selected.path.clone())
        .tag("device", device.replace("/dev/", ""))
        .tag("fstype", m.fstype.clone())
        .tag("mode", mode);
    if let Some(label) = label.filter(|l| !l.is_empty()) {
        p = p.tag("label", label.to_owned());
    }
    Some(
        p.field("total", int(total))
            .field("free", int(free))
            .field("used", int(used))
            .field("used_percent", FieldValue::Float(percent(used, free)))
            .field("inodes_total", int(stat.files))
            .field("inodes_free", int(inodes_free))
            .field("inodes_used", int(inodes_used))
            .field("inodes_used_percent", FieldValue::Float(percent(inodes_used, inodes_free))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/proc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn captured_mountinfo() {
        let (mounts, bad) = parse_mountinfo(&testdata("captured/1/mountinfo"));
        assert!(bad.is_empty());
        assert_eq!(mounts.len(), 19);
        let root = mounts.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!(root.device, "/dev/vda");
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.dev_id, "254:0");
        assert_eq!(root.opts[..2], ["rw", "relatime"]);
        // The second devpts on /dev/pts (0:26) is a different filesystem from 0:24; both are
        // "devpts" devices (the source, since the root is /).
        let pts: Vec<&Mount> = mounts.iter().filter(|m| m.mount_point == "/dev/pts").collect();
        assert_eq!(pts.len(), 2);
        let selected = select(&mounts, &DiskOptions::default(), "");
        let paths: Vec<&str> = selected.iter().map(|s| s.path.as_str()).collect();
        // tmpfs and devtmpfs are ignored by default; proc, sysfs, devpts and cgroup have no
        // blocks and are never measured: only `/` is left.
        assert_eq!(paths, ["/"]);
    }

    /// Odd lines built from proc_pid_mountinfo(5): escapes, optional fields, a bind mount, a
    /// btrfs subvolume, a read-only superblock under a rw mount, a container's prefix.
    #[test]
    fn odd_mountinfo() {
        let (mounts, bad) = parse_mountinfo(&testdata("odd/mountinfo"));
        assert_eq!(bad, [Malformed { line: 9 }, Malformed { line: 10 }], "no ` - `; too few fields");
        let by_path = |p: &str| mounts.iter().find(|m| m.mount_point == p).unwrap_or_else(|| panic!("{p}"));
        // `\040` is a space, `\134` a backslash.
        assert_eq!(by_path("/mnt/my disk").device, "/dev/sdb1");
        assert_eq!(by_path("/srv/a\\b").fstype, "xfs");
        // Same 8:1 as `/`: the first device, and a bind (root /var/lib/kubelet is not /).
        let bind = by_path("/var/lib/kubelet");
        assert_eq!(bind.device, "/dev/sda1");
        assert!(bind.opts.contains(&"bind".to_owned()));
        // btrfs subvolume: root equals subvol=, not a bind.
        assert!(!by_path("/home").opts.contains(&"bind".to_owned()));
        assert_eq!(by_path("/home").device, "/dev/nvme0n1p2");
        // rw mount of a read-only superblock is ro.
        assert_eq!(by_path("/media/cdrom").opts[0], "ro");
        // A source that is not a path, root not /: the root names it (an nsfs bind).
        assert_eq!(by_path("/run/netns/cni-1").device, "net:[4026532281]");

        let opts = DiskOptions { ignore_mount_opts: vec!["bind".into()], ..DiskOptions::default() };
        let paths: Vec<String> = select(&mounts, &opts, "").into_iter().map(|s| s.path).collect();
        assert!(!paths.contains(&"/var/lib/kubelet".to_owned()));
        assert!(!paths.contains(&"/net".to_owned()), "autofs is always skipped");
        let only = DiskOptions { mount_points: vec!["/home".into()], ..DiskOptions::default() };
        assert_eq!(select(&mounts, &only, "").len(), 1);
    }

    #[test]
    fn host_mount_prefix() {
        // In a pod: the host's tree at /rootfs. The host's `/` is statfs'ed at /rootfs and
        // tagged `/`; a mount already under the prefix keeps its path minus the prefix; a
        // host mount whose prefixed path is itself listed is dropped.
        let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    2 1 8:2 / /data rw - xfs /dev/sda2 rw\n\
                    3 1 8:1 / /rootfs rw - ext4 /dev/sda1 rw\n\
                    4 1 8:3 / /rootfs/scratch rw - ext4 /dev/sda3 rw\n";
        let (mounts, _) = parse_mountinfo(text);
        let selected = select(&mounts, &DiskOptions::default(), "/rootfs/");
        let got: Vec<(&str, &str)> =
            selected.iter().map(|s| (s.statfs_path.as_str(), s.path.as_str())).collect();
        assert_eq!(got, [("/rootfs/data", "/data"), ("/rootfs", "/"), ("/rootfs/scratch", "/scratch")]);
        assert_eq!(clean_join("/", ""), "/");
        assert_eq!(clean_join("/rootfs", "/"), "/rootfs");
    }

    /// `df -B1` of this machine's `/` printed 270553174016 total, 26899013632 used,
    /// 70673735680 available: statfs numbers that give those, with 4096-byte blocks.
    #[test]
    fn point_from_statfs() {
        let (mounts, _) = parse_mountinfo(&testdata("captured/1/mountinfo"));
        let selected = select(&mounts, &DiskOptions::default(), "");
        let root = selected.iter().find(|s| s.path == "/").unwrap();
        let stat = FsStat {
            block_size: 4096,
            blocks: 270553174016 / 4096,
            blocks_free: (270553174016 - 26899013632) / 4096,
            blocks_available: 70673735680 / 4096,
            files: 16777216,
            files_free: 16000000,
        };
        let p = disk_point(root, &stat, None).unwrap();
        assert_eq!(p.tag_value("device"), Some("vda"));
        assert_eq!(p.tag_value("fstype"), Some("ext4"));
        assert_eq!(p.tag_value("mode"), Some("rw"));
        assert_eq!(p.tag_value("label"), None);
        assert_eq!(p.field_value("total"), Some(&FieldValue::Int(270553174016)));
        assert_eq!(p.field_value("used"), Some(&FieldValue::Int(26899013632)));
        assert_eq!(p.field_value("free"), Some(&FieldValue::Int(70673735680)));
        // df's Use% rounds used / (used + avail) up: 26899013632 / 97572749312 = 27.57 % → 28 %.
        let Some(FieldValue::Float(pct)) = p.field_value("used_percent") else { panic!() };
        assert!((pct - 100.0 * 26899013632.0 / 97572749312.0).abs() < 1e-9);
        assert_eq!(p.field_value("inodes_used"), Some(&FieldValue::Int(777216)));
        // No size: skipped, as Telegraf does for procfs.
        assert!(disk_point(root, &FsStat::default(), None).is_none());
        // device "none" is named by the filesystem type.
        let (m, _) = parse_mountinfo("5 1 0:50 / /mnt/x rw - fuse.sshfs none rw\n");
        let s = &select(&m, &DiskOptions::default(), "")[0];
        let p = disk_point(s, &FsStat { block_size: 512, blocks: 2, ..FsStat::default() }, Some("vg0-data"))
            .unwrap();
        assert_eq!(p.tag_value("device"), Some("fuse.sshfs"));
        assert_eq!(p.tag_value("label"), Some("vg0-data"));
        assert_eq!(p.field_value("inodes_used_percent"), Some(&FieldValue::Float(0.0)));
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\011b\\012c\\134d"), "/a\tb\nc\\d");
        assert_eq!(unescape("/a\\9"), "/a\\9");
        assert_eq!(unescape("/end\\04"), "/end\\04");
        assert_eq!(unescape("\\777"), "\\777", "not a byte");
    }
}

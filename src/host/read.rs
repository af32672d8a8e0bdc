//! The host inputs' I/O: which files of `/proc` and `/sys` each reads (under the configured
//! roots), `statfs(2)`, and the state kept between two samples. Parsing is the pure modules'.
//!
//! Everything here blocks (a `statfs` of a hung NFS mount can block for good), so the runner
//! calls [`FileInput::gather_with`] on a thread of the input's task, never on the runtime.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::metrics::point::Point;
use crate::metrics::window::KeyHash;

use super::cpu::{self, CpuOptions, CpuTimes};
use super::disk::{self, DiskOptions, FsStat};
use super::diskio::{self, DiskStats};
use super::netstat::{SocketCounter, UnixCounts};
use super::processes::{ProcessCounts, StatError};
use super::sock_diag::{self, SockDiag};
use super::{kernel, malformed_problem, memory, net, netstat, processes, system};
use super::{CollectSettings, HostInput, Problem, Roots};
use crate::glob::{any_matches, Glob};

/// What the host inputs share: roots, options, and the machine's constants.
#[derive(Debug, Clone)]
pub(crate) struct HostContext {
    pub roots: Roots,
    pub cpu: CpuOptions,
    pub disk: DiskOptions,
    pub diskio_devices: Vec<Glob>,
    pub net_interfaces: Vec<Glob>,
    /// `USER_HZ`, the unit of `/proc/stat`.
    pub ticks_per_sec: f64,
    /// For the zoneinfo watermarks, in pages.
    pub page_size: u64,
}

impl HostContext {
    pub fn new(settings: &CollectSettings) -> Self {
        Self {
            roots: settings.roots.clone(),
            cpu: settings.cpu,
            disk: settings.disk.clone(),
            diskio_devices: settings.diskio_devices.clone(),
            net_interfaces: settings.net_interfaces.clone(),
            ticks_per_sec: sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64,
            page_size: sysconf(libc::_SC_PAGESIZE).unwrap_or(4096),
        }
    }

    fn proc(&self, rel: &str) -> PathBuf {
        self.roots.proc.join(rel)
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.roots.sys.join(rel)
    }
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system constant; it has no pointer arguments.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// One sample of one input.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    pub points: Vec<Point>,
    pub problems: Vec<Problem>,
}

impl Gathered {
    fn problem(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.problems.push(Problem::new(reason, detail));
    }

    fn malformed(&mut self, path: &Path, lines: &[super::Malformed]) {
        // Called every cycle by most inputs: no path formatted for nothing to report.
        if lines.is_empty() {
            return;
        }
        if let Some(p) = malformed_problem(&path.display().to_string(), lines) {
            self.problems.push(p);
        }
    }
}

/// The `/proc` and `/sys` files an input reads every cycle, kept open and read again from
/// offset 0 into one buffer.
///
/// procfs and sysfs print a file afresh for every read that starts at offset 0 (`seq_file`
/// starts over there), so a kept file reads as a newly opened one would, without the path walk,
/// permission checks and `close` of opening it, nor `std::fs::read_to_string`'s `statx`, probe
/// read and allocation: together some 10 % of a cycle's CPU here. A file the input did not
/// read in a cycle (an interface or disk gone) is closed at its end; one whose read fails is
/// closed and opened again at once. Files in a tree that is not a live procfs behave the same
/// as long as they are rewritten in place, which is all a test tree does.
#[derive(Debug)]
pub(crate) struct KeptFiles {
    /// Each file, and whether it was read this cycle. Paths come from the configured roots and
    /// the kernel's own names, so SipHash's flood resistance buys nothing, and hashing a path
    /// with it was 1 % of a cycle.
    open: HashMap<PathBuf, (std::fs::File, bool), KeyHash>,
    buf: Vec<u8>,
}

/// More files than an input reads (two per network interface is the most) are not kept.
const KEPT_FILES_MAX: usize = 512;
/// The largest file read every cycle (`/proc/vmstat`, `mountinfo` of a busy node) is a few KiB.
const KEPT_READ_BYTES: usize = 16 * 1024;

impl Default for KeptFiles {
    fn default() -> Self {
        Self { open: HashMap::default(), buf: vec![0; KEPT_READ_BYTES] }
    }
}

/// How the kernel hands out a file's text, which decides when a read has all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Records a page at a time (`seq_file` iterators: vmstat, diskstats, net/dev, net/tcp):
    /// a read can stop short of the end, so reading goes on until one returns nothing.
    Pages,
    /// Printed whole by a read from offset 0 (`single_open` procfs files such as stat,
    /// meminfo and loadavg, sysctls, sysfs attributes; regular files): a read that leaves room
    /// in the buffer has all of it, and asking again for the end of the file would be one more
    /// system call per file and cycle (1 % of a cycle over a dozen files).
    Whole,
}

/// Reads `file` whole into `buf` from offset 0, growing `buf` as needed; the bytes read.
fn read_whole(file: &std::fs::File, buf: &mut Vec<u8>, shape: Shape) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => return Ok(filled),
            n => filled += n,
        }
        if shape == Shape::Whole && filled < buf.len() {
            return Ok(filled);
        }
    }
}

impl KeptFiles {
    /// The whole text of `path`, or the problem of not reading it.
    fn read(&mut self, path: &Path, shape: Shape) -> Result<&str, Problem> {
        self.read_text(path, shape)
            .map_err(|e| Problem::new("read_failed", format!("{}: {e}", path.display())))
    }

    /// The whole text of `path`.
    fn read_text(&mut self, path: &Path, shape: Shape) -> std::io::Result<&str> {
        let n = self.read_bytes(path, shape)?;
        std::str::from_utf8(&self.buf[..n]).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8")
        })
    }

    fn read_bytes(&mut self, path: &Path, shape: Shape) -> std::io::Result<usize> {
        let Self { open, buf } = self;
        if let Some((file, used)) = open.get_mut(path) {
            *used = true;
            match read_whole(file, buf, shape) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    open.remove(path);
                }
            }
        }
        let file = std::fs::File::open(path)?;
        let n = read_whole(&file, buf, shape)?;
        if open.len() < KEPT_FILES_MAX {
            open.insert(path.to_owned(), (file, true));
        }
        Ok(n)
    }

    /// Closes the files not read since the last call.
    fn end_cycle(&mut self) {
        self.open.retain(|_, (_, used)| std::mem::take(used));
    }
}

/// The text of the files that more than one input of a task reads (`/proc/stat` for cpu and
/// kernel, `/proc/meminfo` for mem and swap, `/proc/loadavg` for system and processes), read
/// once per cycle: printing `/proc/stat` sums
/// every CPU's counters and every interrupt, and reading it twice was 1 % of a cycle. The
/// inputs of one cycle also see one snapshot. Empty it (or make a new one) between cycles.
#[derive(Debug, Default)]
pub(crate) struct CycleReads {
    texts: Vec<(PathBuf, String)>,
}

impl CycleReads {
    /// `path`'s text: as read earlier in this cycle, else read now through `files`.
    fn read(&mut self, files: &mut KeptFiles, path: &Path, shape: Shape) -> Result<&str, Problem> {
        let i = match self.texts.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                let text = files.read(path, shape)?.to_owned();
                self.texts.push((path.to_owned(), text));
                self.texts.len() - 1
            }
        };
        Ok(&self.texts[i].1)
    }
}

/// State kept between samples.
#[derive(Debug)]
enum State {
    Stateless,
    Cpu(Option<Vec<CpuTimes>>),
    Diskio(DiskioState),
    /// The online-CPU list and the physical core count it gave: topology only changes with
    /// CPU hotplug, which changes that list, so the per-CPU files are read again only then.
    System(Option<(String, Option<u64>)>),
    Disk(MountTable),
    Netstat(SocketTables),
    Processes(ProcessFiles),
}

/// One host input and its state.
#[derive(Debug)]
pub(crate) struct FileInput {
    kind: HostInput,
    state: State,
    files: KeptFiles,
}

impl FileInput {
    pub fn new(kind: HostInput) -> Self {
        let state = match kind {
            HostInput::Cpu => State::Cpu(None),
            HostInput::Diskio => State::Diskio(DiskioState::default()),
            HostInput::System => State::System(None),
            HostInput::Disk => State::Disk(MountTable::default()),
            HostInput::Netstat => State::Netstat(SocketTables::default()),
            HostInput::Processes => State::Processes(ProcessFiles::new()),
            _ => State::Stateless,
        };
        Self { kind, state, files: KeptFiles::default() }
    }

    pub fn kind(&self) -> HostInput {
        self.kind
    }

    /// Whether the input reports rates, which need a previous sample.
    pub fn needs_two_samples(&self) -> bool {
        matches!(self.kind, HostInput::Cpu | HostInput::Diskio)
    }

    /// Reads the input's files and makes its points, as the only input of its cycle.
    #[cfg(test)]
    pub fn gather(&mut self, ctx: &HostContext) -> Gathered {
        self.gather_with(ctx, &mut CycleReads::default())
    }

    /// Reads the input's files and makes its points, sharing through `reads` the files that
    /// other inputs of the cycle read too.
    pub fn gather_with(&mut self, ctx: &HostContext, reads: &mut CycleReads) -> Gathered {
        let mut g = Gathered::default();
        let files = &mut self.files;
        match (self.kind, &mut self.state) {
            (HostInput::Cpu, State::Cpu(previous)) => gather_cpu(ctx, files, reads, previous, &mut g),
            (HostInput::Mem, _) => gather_mem(ctx, files, reads, &mut g),
            (HostInput::Swap, _) => gather_swap(ctx, files, reads, &mut g),
            (HostInput::Disk, State::Disk(table)) => gather_disk(ctx, files, table, &mut g),
            (HostInput::Diskio, State::Diskio(state)) => gather_diskio(ctx, files, state, &mut g),
            (HostInput::Net, _) => gather_net(ctx, files, &mut g),
            (HostInput::Netstat, State::Netstat(tables)) => gather_netstat(ctx, files, tables, &mut g),
            (HostInput::System, State::System(cache)) => gather_system(ctx, files, reads, cache, &mut g),
            (HostInput::Processes, State::Processes(pids)) => {
                gather_processes(ctx, files, reads, pids, &mut g)
            }
            (HostInput::Kernel, _) => gather_kernel(ctx, files, reads, &mut g),
            // `new` pairs every kind with its state; nothing else is constructed.
            (kind, _) => g.problem("internal", format!("{} input without its state", kind.name())),
        }
        files.end_cycle();
        g
    }
}

fn gather_cpu(
    ctx: &HostContext,
    files: &mut KeptFiles,
    reads: &mut CycleReads,
    previous: &mut Option<Vec<CpuTimes>>,
    g: &mut Gathered,
) {
    let path = ctx.proc("stat");
    let text = match reads.read(files, &path, Shape::Whole) {
        Ok(t) => t,
        Err(p) => return g.problems.push(p),
    };
    let (current, malformed) = cpu::parse_stat(text);
    g.malformed(&path, &malformed);
    let out = cpu::points(previous.as_deref(), &current, ctx.cpu, ctx.ticks_per_sec);
    if !out.decreased.is_empty() {
        g.problem("counter_decreased", format!("CPU time went backwards for {}", out.decreased.join(", ")));
    }
    g.points = out.points;
    *previous = Some(current);
}

fn read_meminfo(
    ctx: &HostContext,
    files: &mut KeptFiles,
    reads: &mut CycleReads,
    g: &mut Gathered,
) -> Option<memory::Meminfo> {
    let path = ctx.proc("meminfo");
    match reads.read(files, &path, Shape::Whole) {
        Ok(text) => {
            let (info, malformed) = memory::parse_meminfo(text);
            g.malformed(&path, &malformed);
            Some(info)
        }
        Err(p) => {
            g.problems.push(p);
            None
        }
    }
}

fn gather_mem(ctx: &HostContext, files: &mut KeptFiles, reads: &mut CycleReads, g: &mut Gathered) {
    let Some(info) = read_meminfo(ctx, files, reads, g) else { return };
    // Kernels before 3.14: the estimate needs the zones' watermarks. A zoneinfo that cannot be
    // read falls back to Cached + Free, as gopsutil does.
    let low = if info.needs_zoneinfo() {
        files.read(&ctx.proc("zoneinfo"), Shape::Pages).ok().map(memory::zoneinfo_low_pages)
    } else {
        None
    };
    match memory::mem_point(&info, low, ctx.page_size) {
        Ok(p) => g.points.push(p),
        Err(e) => g.problem("missing_key", format!("{}: {e}", ctx.proc("meminfo").display())),
    }
}

fn gather_swap(ctx: &HostContext, files: &mut KeptFiles, reads: &mut CycleReads, g: &mut Gathered) {
    let Some(info) = read_meminfo(ctx, files, reads, g) else { return };
    let (pswpin, pswpout) = match files.read(&ctx.proc("vmstat"), Shape::Pages) {
        Ok(text) => memory::parse_vmstat_swap(text),
        Err(p) => {
            g.problems.push(p);
            (None, None)
        }
    };
    match memory::swap_point(&info, pswpin, pswpout) {
        Some(p) => g.points.push(p),
        None => {
            g.problem("missing_key", format!("{}: no SwapTotal or SwapFree", ctx.proc("meminfo").display()))
        }
    }
}

fn statfs(path: &str) -> std::io::Result<FsStat> {
    let c_path = std::ffi::CString::new(path).map_err(|_| std::io::Error::other("NUL in path"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call and
    // `stat` is a properly sized, writable `statfs` that the kernel fills in; it is read only
    // after a 0 return, which means it was filled.
    let stat = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        if libc::statfs(c_path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    // The field types differ between architectures (i64, u64, u32…); every value is a
    // non-negative count.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let to_u64 = |v: i128| u64::try_from(v).unwrap_or(0);
    #[allow(clippy::unnecessary_cast)]
    Ok(FsStat {
        block_size: to_u64(stat.f_bsize as i128),
        blocks: to_u64(stat.f_blocks as i128),
        blocks_free: to_u64(stat.f_bfree as i128),
        blocks_available: to_u64(stat.f_bavail as i128),
        files: to_u64(stat.f_files as i128),
        files_free: to_u64(stat.f_ffree as i128),
    })
}

/// The last component of a symlink's target (`../dm-0` → `dm-0`).
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The disk input's state: the mounts it measures, kept until the mount table changes.
///
/// `mountinfo` is printed afresh on every read (a few dozen µs, most of the input's cost
/// besides `statfs`), yet changes only when something is mounted or unmounted, which procfs
/// announces: poll(2) on an open `mountinfo` reports `POLLPRI | POLLERR` after each change of
/// the mount namespace (proc_pid_mountinfo(5)). So the file stays open, is polled each cycle
/// without waiting, and read again only when it says so, with the device names and labels
/// resolved from it. A file that is not on procfs (a test tree) announces nothing and is read
/// every cycle.
#[derive(Debug, Default)]
pub(crate) struct MountTable {
    /// `mountinfo`, its path, and whether it is on procfs.
    file: Option<(std::fs::File, PathBuf, bool)>,
    /// The mounts to measure, each with its device-mapper label.
    selected: Vec<(disk::Selected, Option<String>)>,
    malformed: Vec<super::Malformed>,
}

/// `PROC_SUPER_MAGIC` of `<linux/magic.h>`.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

impl MountTable {
    /// Whether the selection must be made again: never made, or the mount table changed.
    fn stale(&mut self) -> bool {
        let Some((file, _, on_procfs)) = &self.file else { return true };
        if !*on_procfs {
            return true;
        }
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd, and its count; a timeout of 0 never blocks.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready != 0 || poll.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    /// Opens and reads `/proc/1/mountinfo`, else the reader's own. The text, and the
    /// problem when neither could be read.
    fn open_and_read(&mut self, ctx: &HostContext, buf: &mut Vec<u8>) -> Result<String, Problem> {
        // Reading init's mountinfo needs ptrace-read access to pid 1; gopsutil falls back to
        // the reader's own mounts, and so does this.
        let mut last = None;
        for path in [ctx.proc("1/mountinfo"), ctx.proc("self/mountinfo")] {
            // Lossy: a mount point that is not UTF-8 costs its own `statfs`, not the input.
            let read = std::fs::File::open(&path).and_then(|file| {
                let n = read_whole(&file, buf, Shape::Pages)?;
                Ok((file, String::from_utf8_lossy(&buf[..n]).into_owned()))
            });
            match read {
                Ok((file, text)) => {
                    // SAFETY: `stat` is a writable statfs the kernel fills; read only on success.
                    let on_procfs = unsafe {
                        let mut stat: libc::statfs = std::mem::zeroed();
                        libc::fstatfs(file.as_raw_fd(), &mut stat) == 0
                            && i64::from(stat.f_type as i32) == PROC_SUPER_MAGIC
                    };
                    self.file = Some((file, path, on_procfs));
                    return Ok(text);
                }
                Err(e) => last = Some(Problem::new("read_failed", format!("{}: {e}", path.display()))),
            }
        }
        self.file = None;
        Err(last.unwrap_or_else(|| Problem::new("read_failed", "mountinfo")))
    }

    /// Reads the mount table again and chooses the mounts to measure.
    fn refresh(&mut self, ctx: &HostContext, files: &mut KeptFiles) -> Result<(), Problem> {
        // Already open (on a change, or a tree that is not procfs): read it again; if that
        // fails, open afresh.
        let kept =
            self.file.as_ref().and_then(|(file, _, _)| read_whole(file, &mut files.buf, Shape::Pages).ok());
        let text = match kept {
            Some(n) => String::from_utf8_lossy(&files.buf[..n]).into_owned(),
            None => self.open_and_read(ctx, &mut files.buf)?,
        };
        let (mut mounts, malformed) = disk::parse_mountinfo(&text);
        self.malformed = malformed;
        let prefix = ctx.roots.mount_prefix.to_string_lossy().into_owned();
        for m in &mut mounts {
            // gopsutil resolves device-mapper links and `/dev/root` to the block device's name.
            if let Some(name) = m.device.strip_prefix("/dev/mapper/") {
                let link = Path::new(&prefix).join("dev/mapper").join(name);
                if let Some(target) = link_name(&link) {
                    m.device = format!("/dev/{target}");
                }
            } else if m.device == "/dev/root" {
                if let Some(target) = link_name(&ctx.sys(&format!("dev/block/{}", m.dev_id))) {
                    m.device = format!("/dev/{target}");
                }
            }
        }
        self.selected = disk::select(&mounts, &ctx.disk, &prefix)
            .into_iter()
            .map(|selected| {
                let name = selected.mount.device.trim_start_matches("/dev/");
                let label = if name.is_empty() || name.contains('/') {
                    None
                } else {
                    std::fs::read_to_string(ctx.sys(&format!("block/{name}/dm/name")))
                        .ok()
                        .map(|l| l.trim().to_owned())
                };
                (selected, label)
            })
            .collect();
        Ok(())
    }
}

fn gather_disk(ctx: &HostContext, files: &mut KeptFiles, table: &mut MountTable, g: &mut Gathered) {
    if table.stale() {
        if let Err(p) = table.refresh(ctx, files) {
            table.selected.clear();
            return g.problems.push(p);
        }
    }
    if let Some((_, path, _)) = &table.file {
        g.malformed(path, &table.malformed);
    }
    let mut failures = Vec::new();
    for (selected, label) in &table.selected {
        let stat = match statfs(&selected.statfs_path) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", selected.statfs_path));
                continue;
            }
        };
        g.points.extend(disk::disk_point(selected, &stat, label.as_deref()));
    }
    if let Some(first) = failures.first() {
        g.problem("statfs_failed", format!("{} mount(s) not measured (first: {first})", failures.len()));
    }
}

/// The previous sample of each device, and the devices without a `wwid` attribute: an
/// attribute is there for a device's whole life, and a failing sysfs lookup every cycle was
/// 1 % of a collection cycle. A device that leaves `/proc/diskstats` is forgotten.
#[derive(Debug, Default)]
pub(crate) struct DiskioState {
    previous: Option<(Instant, HashMap<String, DiskStats>)>,
    no_wwid: HashSet<String>,
}

fn gather_diskio(ctx: &HostContext, files: &mut KeptFiles, state: &mut DiskioState, g: &mut Gathered) {
    let DiskioState { previous, no_wwid } = state;
    let path = ctx.proc("diskstats");
    let text = match files.read(&path, Shape::Pages) {
        Ok(t) => t,
        Err(p) => return g.problems.push(p),
    };
    let now = Instant::now();
    let (disks, malformed) = diskio::parse_diskstats(text);
    g.malformed(&path, &malformed);
    let mut current = HashMap::with_capacity(disks.len());
    for d in disks {
        if !ctx.diskio_devices.is_empty() && !any_matches(&ctx.diskio_devices, &d.name) {
            continue;
        }
        let last = previous.as_ref().and_then(|(at, map)| {
            let elapsed_ms = u64::try_from(now.duration_since(*at).as_millis()).unwrap_or(u64::MAX);
            map.get(&d.name).map(|last| (last, elapsed_ms))
        });
        let wwid = if no_wwid.contains(&d.name) {
            None
        } else {
            match files.read_text(&ctx.sys(&format!("block/{}/wwid", d.name)), Shape::Whole) {
                Ok(w) => Some(w),
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        no_wwid.insert(d.name.clone());
                    }
                    None
                }
            }
        };
        g.points.push(diskio::diskio_point(&d, last, wwid.map(|w| w.trim_end_matches('\n'))));
        current.insert(d.name.clone(), d);
    }
    no_wwid.retain(|name| current.contains_key(name));
    *previous = Some((now, current));
}

fn gather_net(ctx: &HostContext, files: &mut KeptFiles, g: &mut Gathered) {
    let path = ctx.proc("net/dev");
    let text = match files.read(&path, Shape::Pages) {
        Ok(t) => t,
        Err(p) => return g.problems.push(p),
    };
    let (devs, malformed) = net::parse_net_dev(text);
    g.malformed(&path, &malformed);
    for dev in devs {
        // Interfaces are files of sysfs; a name with a `/` cannot be one (and must not walk
        // out of the directory).
        if dev.name.contains('/') || dev.name.starts_with('.') {
            continue;
        }
        let flags = if ctx.net_interfaces.is_empty() {
            files
                .read(&ctx.sys(&format!("class/net/{}/flags", dev.name)), Shape::Whole)
                .ok()
                .and_then(net::parse_flags)
        } else {
            None
        };
        if !net::wanted(&dev.name, &ctx.net_interfaces, flags) {
            continue;
        }
        let speed = net::parse_speed(
            files.read(&ctx.sys(&format!("class/net/{}/speed", dev.name)), Shape::Whole).ok(),
        );
        g.points.push(net::net_point(&dev, speed));
    }
}

/// The TCP and UDP tables of `/proc/net`, when netlink is not available.
fn proc_sockets(ctx: &HostContext, files: &mut KeptFiles, counter: &mut SocketCounter, g: &mut Gathered) {
    for (file, tcp, required) in [
        ("net/tcp", true, true),
        ("net/tcp6", true, false),
        ("net/udp", false, true),
        ("net/udp6", false, false),
    ] {
        let path = ctx.proc(file);
        match files.read_text(&path, Shape::Pages) {
            Ok(text) => {
                let malformed = counter.add_inet(text, tcp);
                g.malformed(&path, &malformed);
            }
            // No IPv6 in this kernel: gopsutil counts nothing for it, and so does this.
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => g.problem("read_failed", format!("{}: {e}", path.display())),
        }
    }
}

/// The netstat input's state: its netlink socket, and what it learnt about this machine.
#[derive(Debug, Default)]
pub(crate) struct SocketTables {
    /// Whether `<host_proc>/net` shows the network namespace this process is in, the only
    /// one its netlink socket can ask about; decided at the first sample.
    netlink_sees_roots: Option<bool>,
    netlink: Netlink,
    counter: SocketCounter,
}

#[derive(Debug, Default)]
enum Netlink {
    /// Not open: not yet, or again after a failure that may pass.
    #[default]
    Closed,
    Open(SockDiag),
    /// Refused for good (no `sock_diag` in the kernel, a seccomp profile): why.
    Refused(String),
}

/// Whether `<proc_root>/net` lists the sockets a netlink socket of this process dumps: those
/// of its own network namespace. `/proc/net` is a link to `self/net`, so any live procfs in
/// which this process is visible (the host's, mounted in a pod) shows this process's namespace
/// there, as gopsutil would read it; a tree that is not one (a copy, a test's) is read as text.
fn netlink_sees(proc_root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if proc_root == Path::new("/proc") {
        return true;
    }
    let namespace =
        |root: &Path| std::fs::metadata(root.join("self/ns/net")).ok().map(|m| (m.dev(), m.ino()));
    matches!((namespace(proc_root), namespace(Path::new("/proc"))), (Some(a), Some(b)) if a == b)
}

impl SocketTables {
    /// TCP and UDP sockets into the counter through netlink, and the Unix sockets' counts when
    /// netlink gave them too. An error is the problem's detail.
    fn sample_netlink(&mut self) -> Result<Option<UnixCounts>, String> {
        let Self { netlink, counter, .. } = self;
        if let Netlink::Closed = netlink {
            match SockDiag::open() {
                Ok(diag) => *netlink = Netlink::Open(diag),
                Err(e) if sock_diag::refused_for_good(&e) => *netlink = Netlink::Refused(e.to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
        let diag = match netlink {
            Netlink::Open(diag) => diag,
            Netlink::Refused(why) => return Err(why.clone()),
            Netlink::Closed => return Err("not open".into()),
        };
        if let Err(e) = diag.count_inet(counter) {
            let why = e.to_string();
            *netlink =
                if sock_diag::refused_for_good(&e) { Netlink::Refused(why.clone()) } else { Netlink::Closed };
            return Err(why);
        }
        // Unix sockets are optional here: /proc/net/unix tells the same.
        Ok(diag.count_unix().ok().flatten())
    }
}

fn gather_netstat(ctx: &HostContext, files: &mut KeptFiles, tables: &mut SocketTables, g: &mut Gathered) {
    tables.counter.clear();
    let netlink = *tables.netlink_sees_roots.get_or_insert_with(|| netlink_sees(&ctx.roots.proc));
    let mut unix = None;
    let inet = if netlink {
        match tables.sample_netlink() {
            Ok(counts) => {
                unix = counts;
                true
            }
            Err(e) => {
                // A kernel without sock_diag, a seccomp profile refusing netlink: the slower
                // /proc tables, from scratch so nothing is counted twice.
                g.problem("netlink_failed", format!("NETLINK_SOCK_DIAG: {e}; reading /proc/net instead"));
                tables.counter.clear();
                false
            }
        }
    } else {
        false
    };
    if !inet {
        proc_sockets(ctx, files, &mut tables.counter, g);
    }
    match unix {
        Some(counts) => tables.counter.add_unix_counts(counts),
        None => {
            let path = ctx.proc("net/unix");
            match files.read(&path, Shape::Pages) {
                Ok(text) => {
                    let malformed = tables.counter.add_unix(text);
                    g.malformed(&path, &malformed);
                }
                Err(p) => g.problems.push(p),
            }
        }
    }
    // Counts missing a table would read as fewer sockets, not as unknown: no point then, as
    // Telegraf writes none when a table cannot be read.
    if !g.problems.iter().any(|p| p.reason == "read_failed") {
        g.points.push(netstat::netstat_point(&tables.counter.counts()));
    }
}

fn physical_cpus(ctx: &HostContext) -> Option<u64> {
    let dir = ctx.sys("devices/system/cpu");
    let entries = std::fs::read_dir(&dir).ok()?;
    let cpus: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    // gopsutil: the distinct core lists, from the newer file, else the older one.
    for file in ["topology/core_cpus_list", "topology/thread_siblings_list"] {
        let mut lists: Vec<String> = cpus
            .iter()
            .filter_map(|cpu| std::fs::read_to_string(cpu.join(file)).ok())
            .map(|t| t.trim().to_owned())
            .collect();
        lists.sort_unstable();
        lists.dedup();
        if !lists.is_empty() {
            return Some(lists.len() as u64);
        }
    }
    None
}

fn gather_system(
    ctx: &HostContext,
    files: &mut KeptFiles,
    reads: &mut CycleReads,
    cache: &mut Option<(String, Option<u64>)>,
    g: &mut Gathered,
) {
    let mut sample = system::SystemSample::default();
    match reads.read(files, &ctx.proc("loadavg"), Shape::Whole) {
        Ok(text) => match system::parse_loadavg(text) {
            Some(load) => sample.load = Some(load),
            None => g.problem(
                "malformed_line",
                format!("{}: not three load averages", ctx.proc("loadavg").display()),
            ),
        },
        Err(p) => g.problems.push(p),
    }
    match files.read(&ctx.sys("devices/system/cpu/online"), Shape::Whole) {
        Ok(online) => {
            sample.n_cpus = system::count_cpu_list(online);
            if sample.n_cpus.is_none() {
                g.problem(
                    "malformed_line",
                    format!("{}: not a CPU list", ctx.sys("devices/system/cpu/online").display()),
                );
            }
            match cache {
                Some((list, physical)) if *list == online => sample.n_physical_cpus = *physical,
                _ => {
                    let physical = physical_cpus(ctx);
                    sample.n_physical_cpus = physical;
                    *cache = Some((online.to_owned(), physical));
                }
            }
        }
        // No sysfs: count the cpuN lines of /proc/stat, gopsutil's own fallback.
        Err(_) => match files.read(&ctx.proc("stat"), Shape::Whole) {
            Ok(stat) => sample.n_cpus = Some(system::count_stat_cpus(stat)),
            Err(p) => g.problems.push(p),
        },
    }
    let utmp = ctx.roots.var.join("run/utmp");
    match std::fs::read(&utmp) {
        Ok(bytes) => sample.users = Some(system::count_users(&bytes)),
        // Telegraf leaves the user counts out when utmp is missing or unreadable, and only
        // traces it: systems without utmp (systemd ≥ 255 may not write one) are normal.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) => {
        }
        Err(e) => g.problem("read_failed", format!("{}: {e}", utmp.display())),
    }
    match files.read(&ctx.proc("uptime"), Shape::Whole) {
        Ok(text) => match system::parse_uptime(text) {
            Some(up) => sample.uptime = Some(up),
            None => g.problem("malformed_line", format!("{}: not an uptime", ctx.proc("uptime").display())),
        },
        Err(p) => g.problems.push(p),
    }
    g.points = system::system_points(&sample);
}

/// The `/proc/[pid]/stat` files of the processes seen, kept open between cycles.
///
/// Opening a pid's file costs a path walk and the revalidation of the pid's `/proc` entries;
/// re-reading an open one from offset 0 makes the kernel print the line afresh without either,
/// which halves what the processes input costs per cycle. An open file keeps pointing at its
/// process: once that has been reaped, reads fail with `ESRCH` (a zombie still reads, as
/// `Z`), and a reused pid is opened afresh. At most a quarter of the soft `RLIMIT_NOFILE`
/// (never changed) is spent this way; processes beyond it are opened and closed each cycle.
///
/// `<host_proc>` itself stays open too: it is listed with `getdents64(2)` into a kept buffer
/// (no allocation per entry, as `std::fs::read_dir` makes) and new pids' files are opened
/// relative to it. It is listed only when some task is not in a held process: every task
/// (thread) belongs to one process, so when the held processes' thread counts add up to the
/// tasks `loadavg` says the kernel has, no other process exists. Short-lived processes that
/// come and go between cycles (a scrape's curl, a probe's exec) leave that sum as it was.
/// When it falls short, `/proc` is listed from the pid after `loadavg`'s last pid of the
/// previous cycle (a seek to where a whole listing showed pids to be), and whole only if the
/// sum still falls short: the count, not the guess, decides. A procfs of a child pid
/// namespace never reaches the sum (the kernel's threads are outside) and is listed whole
/// every cycle.
#[derive(Debug)]
pub(crate) struct ProcessFiles {
    /// By pid, ascending, as the listing is sorted: a cycle merges the two.
    open: Vec<(u32, std::fs::File)>,
    /// The next cycle's `open`, kept for its memory.
    next: Vec<(u32, std::fs::File)>,
    budget: usize,
    pids: Vec<u32>,
    buf: Vec<u8>,
    dir: Option<OwnedFd>,
    dents: Vec<u8>,
    /// Where `/proc` lists pid 0, learnt from a whole listing ([`processes::Dirents`]).
    pid_position: Option<i64>,
    /// The last pid handed out, as `loadavg` said at the last cycle.
    last_pid: Option<u32>,
    /// Pids read (or failed to be) this cycle but not held, ascending: a second listing in
    /// the cycle passes them over.
    seen: Vec<u32>,
}

/// A stat line is a few hundred bytes; a longer one is read again with more room.
const STAT_READ_BYTES: usize = 4096;
/// One `getdents64` read: some 600 entries of `/proc`.
const DENTS_READ_BYTES: usize = 16 * 1024;

impl ProcessFiles {
    fn new() -> Self {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `limit` is a valid, writable rlimit.
        let soft =
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
        let budget = usize::try_from(soft / 4).unwrap_or(usize::MAX).min(1 << 16);
        Self {
            open: Vec::new(),
            next: Vec::new(),
            budget,
            pids: Vec::new(),
            buf: vec![0; STAT_READ_BYTES],
            dir: None,
            dents: vec![0; DENTS_READ_BYTES],
            pid_position: None,
            last_pid: None,
            seen: Vec::new(),
        }
    }

    /// Lists the pids of `<host_proc>` into `pids`, sorted: all of them, or those from `from`
    /// on (once a whole listing has shown where pids are).
    fn list(&mut self, root: &Path, from: Option<u32>) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = match &self.dir {
            Some(dir) => dir,
            None => self.dir.insert(
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(root)?.into(),
            ),
        };
        self.pids.clear();
        let position = match (from, self.pid_position) {
            (None, _) => 0,
            // A tree that is not procfs has positions of its own (hash cookies on ext4).
            (Some(pid), Some(offset)) => {
                i64::from(pid).checked_add(offset).ok_or_else(|| std::io::Error::other("no pid position"))?
            }
            (Some(_), None) => return Err(std::io::Error::other("no whole listing yet")),
        };
        // SAFETY: lseek on a descriptor this struct owns; the next getdents64 lists the
        // directory from that position.
        if unsafe { libc::lseek(dir.as_raw_fd(), position, libc::SEEK_SET) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: `dents` is valid and writable for its length, which is passed.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir.as_raw_fd(),
                    self.dents.as_mut_ptr(),
                    self.dents.len(),
                )
            };
            let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
            if n == 0 {
                break;
            }
            let dirents = processes::pids_in_dirents(&self.dents[..n], &mut self.pids)
                .ok_or_else(|| std::io::Error::other("getdents64 returned a malformed record"))?;
            if from.is_none() && dirents.pid_position.is_some() {
                self.pid_position = dirents.pid_position;
            }
        }
        self.pids.sort_unstable();
        Ok(())
    }
}

/// Opens `<pid>/stat` relative to `<host_proc>`, with the path on the stack.
fn open_stat(dir: &OwnedFd, pid: u32) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    // u32::MAX has 10 digits: "4294967295/stat" and the NUL fit.
    let mut path = [0u8; 24];
    let _ = write!(&mut path[..], "{pid}/stat");
    // SAFETY: `path` is NUL-terminated (zeroed, and at most 15 bytes written); a non-negative
    // result is a new descriptor that nothing else owns.
    unsafe {
        let fd = libc::openat(dir.as_raw_fd(), path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(fd))
    }
}

/// Reads a whole stat file from offset 0 into `buf` (grown when one read filled it).
fn read_stat(file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        let n = file.read_at(buf, 0)?;
        if n < buf.len() {
            return Ok(n);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// What one cycle of the processes input has read so far.
#[derive(Default)]
struct ProcessTally {
    counts: ProcessCounts,
    malformed: u64,
    unreadable: u64,
    first_error: Option<String>,
    /// Every stat read gave its thread count, so `counts.total_threads` is their sum.
    threads_known: bool,
}

impl ProcessTally {
    fn add(&mut self, stat: &[u8]) {
        if let Err(StatError::NoState | StatError::BadThreads) = self.counts.add(stat) {
            self.malformed += 1;
            self.threads_known = false;
        }
    }
}

/// Reads a held stat file; `None` once its process has been reaped (`ESRCH`, or nothing).
fn read_held(file: &std::fs::File, buf: &mut Vec<u8>) -> Option<usize> {
    read_stat(file, buf).ok().filter(|&n| n > 0)
}

fn gather_processes(
    ctx: &HostContext,
    kept: &mut KeptFiles,
    reads: &mut CycleReads,
    files: &mut ProcessFiles,
    g: &mut Gathered,
) {
    let mut tally = ProcessTally { threads_known: true, ..ProcessTally::default() };
    // The processes held since the last cycle first, in pid order.
    files.next.clear();
    files.seen.clear();
    for (pid, file) in files.open.drain(..) {
        if let Some(n) = read_held(&file, &mut files.buf) {
            tally.add(&files.buf[..n]);
            files.next.push((pid, file));
        }
    }
    std::mem::swap(&mut files.open, &mut files.next);

    // Listing `/proc` (a tenth of a cycle) finds the processes not held yet. When the held
    // ones' threads add up to every task the kernel has, there are none. When they fall
    // short, the missing ones are most likely new: pids are handed out upwards from the last
    // one until they wrap, so those after the last pid of the last cycle are listed first,
    // and all only if that was not enough. (In a pid namespace other than the procfs's, the
    // last pid is the namespace's own: the first listing then covers most of `/proc`.)
    let root = &ctx.roots.proc;
    // An unreadable `loadavg` only costs the shortcut.
    let loadavg = reads
        .read(kept, &ctx.proc("loadavg"), Shape::Whole)
        .ok()
        .and_then(|text| processes::loadavg_tasks(text.as_bytes()));
    let since = std::mem::replace(&mut files.last_pid, loadavg.map(|l| l.last_pid));
    let all_held = |tally: &ProcessTally| {
        tally.threads_known && loadavg.map(|l| l.tasks) == Some(tally.counts.total_threads)
    };
    // The pids after the last cycle's last one, unless pids wrapped meanwhile.
    let newer = since.zip(loadavg).filter(|(since, now)| *since <= now.last_pid);
    if let Some((since, _)) = newer.filter(|_| !all_held(&tally)) {
        match files.list(root, Some(since.saturating_add(1))) {
            Ok(()) => add_unheld(ctx, files, &mut tally),
            // Never tried again (no position, or none that fits): a whole listing still works.
            Err(_) => files.pid_position = None,
        }
    }
    if !all_held(&tally) {
        if let Err(e) = files.list(root, None) {
            // Opened again next time: the root may have been mounted meanwhile.
            files.dir = None;
            return g.problem("read_failed", format!("{}: {e}", root.display()));
        }
        add_unheld(ctx, files, &mut tally);
    }

    let ProcessTally { counts, malformed, unreadable, first_error, .. } = tally;
    if malformed > 0 {
        g.problem("malformed_line", format!("{malformed} /proc/[pid]/stat file(s) not understood"));
    }
    if let Some(first) = first_error {
        g.problem(
            "read_failed",
            format!("{unreadable} /proc/[pid]/stat file(s) unreadable (first: {first})"),
        );
    }
    g.points.push(processes::processes_point(&counts));
}

/// Opens, reads and counts the listed processes that are neither held nor counted yet this
/// cycle, and holds them (within the budget). A held process missing from a whole listing was
/// reaped after its read, which counted it; its file goes at the next cycle's read.
fn add_unheld(ctx: &HostContext, files: &mut ProcessFiles, tally: &mut ProcessTally) {
    let ProcessFiles { open, next, budget, pids, buf, dir, seen, .. } = files;
    let Some(dir) = dir.as_ref() else { return };
    let gone = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
    };
    // Both lists ascend; merged into `next`, which becomes `open`.
    next.clear();
    let mut held = open.drain(..).peekable();
    for &pid in pids.iter() {
        next.extend(std::iter::from_fn(|| held.next_if(|(held_pid, _)| *held_pid < pid)));
        if let Some(entry) = held.next_if(|(held_pid, _)| *held_pid == pid) {
            next.push(entry);
            continue;
        }
        let Err(unseen) = seen.binary_search(&pid) else { continue };
        match open_stat(dir, pid).and_then(|f| read_stat(&f, buf).map(|n| (f, n))) {
            Ok((file, n)) => {
                tally.add(&buf[..n]);
                if next.len() + held.len() < *budget {
                    next.push((pid, file));
                } else {
                    seen.insert(unseen, pid);
                }
            }
            // The process ended between the listing and the read: it is simply gone, as
            // Telegraf treats it.
            Err(e) if gone(&e) => {}
            Err(e) => {
                seen.insert(unseen, pid);
                tally.unreadable += 1;
                tally.first_error.get_or_insert_with(|| {
                    format!("{}: {e}", ctx.roots.proc.join(format!("{pid}/stat")).display())
                });
            }
        }
    }
    next.extend(held);
    std::mem::swap(open, next);
}

fn gather_kernel(ctx: &HostContext, files: &mut KeptFiles, reads: &mut CycleReads, g: &mut Gathered) {
    let path = ctx.proc("stat");
    let stat = match reads.read(files, &path, Shape::Whole) {
        Ok(t) => kernel::parse_stat(t),
        Err(p) => return g.problems.push(p),
    };
    if !stat.unreadable.is_empty() {
        g.problem("malformed_line", format!("{}: unreadable {}", path.display(), stat.unreadable.join(", ")));
    }
    let entropy_path = ctx.proc("sys/kernel/random/entropy_avail");
    let entropy = match files.read(&entropy_path, Shape::Whole) {
        Ok(t) => {
            let v = kernel::parse_entropy(t);
            if v.is_none() {
                g.problem("malformed_line", format!("{}: not a number", entropy_path.display()));
            }
            v
        }
        Err(p) => {
            g.problems.push(p);
            None
        }
    };
    g.points.extend(kernel::kernel_point(&stat, entropy));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netstat::SocketCounts;
    use crate::metrics::point::FieldValue;

    fn context(proc: &Path, sys: &Path) -> HostContext {
        HostContext {
            roots: Roots {
                proc: proc.into(),
                sys: sys.into(),
                mount_prefix: PathBuf::new(),
                var: sys.join("var"),
            },
            cpu: CpuOptions::default(),
            disk: DiskOptions::default(),
            diskio_devices: Vec::new(),
            net_interfaces: Vec::new(),
            ticks_per_sec: 100.0,
            page_size: 4096,
        }
    }

    /// Roots pointing at a tree built in a temp dir: the inputs read there, not on `/proc`,
    /// and a missing or broken file is a problem, never a panic.
    #[test]
    fn roots_are_honoured_and_bad_files_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::create_dir_all(proc.join("42")).unwrap();
        std::fs::create_dir_all(sys.join("class/net/eth0")).unwrap();
        std::fs::create_dir_all(sys.join("devices/system/cpu/cpu0/topology")).unwrap();
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/proc");
        std::fs::copy(testdata.join("odd/stat-64cpu-guest"), proc.join("stat")).unwrap();
        std::fs::write(proc.join("meminfo"), "MemTotal: 1000 kB\nMemAvailable: 250 kB\nbroken\n").unwrap();
        std::fs::write(proc.join("net/dev"), "h1\nh2\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n")
            .unwrap();
        std::fs::write(sys.join("class/net/eth0/flags"), "0x1003\n").unwrap();
        std::fs::write(sys.join("class/net/eth0/speed"), "1000\n").unwrap();
        std::fs::write(sys.join("devices/system/cpu/online"), "0-63\n").unwrap();
        std::fs::write(sys.join("devices/system/cpu/cpu0/topology/core_cpus_list"), "0,32\n").unwrap();
        std::fs::write(proc.join("loadavg"), "1.00 2.00 3.00 1/100 5\n").unwrap();
        std::fs::write(proc.join("uptime"), "90061.50 1.00\n").unwrap();
        std::fs::write(proc.join("42/stat"), "42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 3 0\n")
            .unwrap();
        let ctx = context(&proc, &sys);

        let mut cpu = FileInput::new(HostInput::Cpu);
        let g = cpu.gather(&ctx);
        assert!(g.points.is_empty() && g.problems.is_empty(), "first sample: nothing yet");
        let g = cpu.gather(&ctx);
        assert!(g.points.is_empty(), "nothing moved: no usage (a zero Δtotal)");
        std::fs::copy(testdata.join("odd/stat-64cpu-guest.later"), proc.join("stat")).unwrap();
        let g = cpu.gather(&ctx);
        assert_eq!(g.points.len(), 65, "cpu-total and 64 CPUs");

        let g = FileInput::new(HostInput::Mem).gather(&ctx);
        assert_eq!(g.points[0].field_value("used"), Some(&FieldValue::Int(750 * 1024)));
        assert_eq!(g.problems.len(), 1);
        assert_eq!(g.problems[0].reason, "malformed_line");

        let g = FileInput::new(HostInput::Net).gather(&ctx);
        assert_eq!(g.points.len(), 1);
        assert_eq!(g.points[0].field_value("speed"), Some(&FieldValue::Int(1000)));

        let g = FileInput::new(HostInput::System).gather(&ctx);
        assert!(g.problems.is_empty(), "{:?}", g.problems);
        assert_eq!(g.points[0].field_value("n_cpus"), Some(&FieldValue::Int(64)));
        assert_eq!(g.points[0].field_value("n_physical_cpus"), Some(&FieldValue::Int(1)));
        assert_eq!(g.points[1].field_value("uptime"), Some(&FieldValue::Int(90062)));
        assert_eq!(g.points[2].field_value("uptime_format"), Some(&FieldValue::Str("1 day,  1:01".into())));

        let mut processes = FileInput::new(HostInput::Processes);
        let g = processes.gather(&ctx);
        assert_eq!(g.points[0].field_value("sleeping"), Some(&FieldValue::Int(1)));
        assert_eq!(g.points[0].field_value("total_threads"), Some(&FieldValue::Int(3)));
        // Its file stays open between cycles; a process reaped (its held file reads nothing:
        // ESRCH on procfs, emptied here) is not counted from it any more, a new one is.
        std::fs::write(proc.join("42/stat"), "").unwrap();
        std::fs::remove_dir_all(proc.join("42")).unwrap();
        let stat = |pid: u32, state: char, threads: u32| {
            std::fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            let line = format!("{pid} (y) {state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 {threads} 0\n");
            std::fs::write(proc.join(format!("{pid}/stat")), line).unwrap();
        };
        stat(43, 'Z', 1);
        let g = processes.gather(&ctx);
        assert_eq!(g.points[0].field_value("total"), Some(&FieldValue::Int(1)));
        assert_eq!(g.points[0].field_value("zombies"), Some(&FieldValue::Int(1)));
        assert_eq!(g.points[0].field_value("sleeping"), Some(&FieldValue::Int(0)));
        // When the held processes' threads are every task loadavg counts, the listing is
        // skipped: a process this tree adds without counting its task is not seen...
        std::fs::write(proc.join("loadavg"), "1.00 2.00 3.00 1/1 5\n").unwrap();
        stat(44, 'R', 2);
        let g = processes.gather(&ctx);
        assert_eq!(g.points[0].field_value("total"), Some(&FieldValue::Int(1)));
        // ... and is once they are not.
        std::fs::write(proc.join("loadavg"), "1.00 2.00 3.00 1/3 5\n").unwrap();
        let g = processes.gather(&ctx);
        assert_eq!(g.points[0].field_value("total"), Some(&FieldValue::Int(2)));
        assert_eq!(g.points[0].field_value("running"), Some(&FieldValue::Int(1)));
        assert_eq!(g.points[0].field_value("total_threads"), Some(&FieldValue::Int(3)));

        // Files this tree does not have: problems naming them, no panic, no points.
        for kind in [HostInput::Swap, HostInput::Diskio, HostInput::Netstat, HostInput::Disk] {
            let g = FileInput::new(kind).gather(&ctx);
            assert!(g.points.is_empty(), "{kind:?}");
            assert!(g.problems.iter().any(|p| p.reason == "read_failed"), "{kind:?}: {:?}", g.problems);
            assert!(
                g.problems.iter().all(|p| p.detail.contains(dir.path().to_str().unwrap())),
                "{:?}",
                g.problems
            );
        }
        let g = FileInput::new(HostInput::Kernel).gather(&ctx);
        assert_eq!(g.points.len(), 1, "stat is there");
        assert!(g.problems[0].detail.contains("entropy_avail"));
    }

    /// On the real `/proc`: a process started between two cycles is counted by the second,
    /// and is not held once it has been reaped, whether the cycle lists `/proc` or not.
    #[test]
    fn processes_started_and_reaped_between_cycles() {
        let ctx = context(Path::new("/proc"), Path::new("/sys"));
        let mut input = FileInput::new(HostInput::Processes);
        let held = |input: &FileInput| match &input.state {
            State::Processes(files) => files.open.iter().map(|(pid, _)| *pid).collect::<Vec<_>>(),
            _ => unreachable!(),
        };
        for _ in 0..3 {
            let g = input.gather(&ctx);
            assert!(g.problems.is_empty(), "{:?}", g.problems);
        }
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // A listing from a pid on, at the position the whole listings showed.
        if let State::Processes(files) = &mut input.state {
            files.list(Path::new("/proc"), Some(child.id())).unwrap();
            assert_eq!(files.pids.first(), Some(&child.id()), "{:?}", files.pids);
        }
        let g = input.gather(&ctx);
        assert!(g.problems.is_empty(), "{:?}", g.problems);
        assert!(held(&input).contains(&child.id()), "the new process is held");
        let total = |g: &Gathered| match g.points[0].field_value("total") {
            Some(FieldValue::Int(n)) => *n,
            other => panic!("{other:?}"),
        };
        let listed = std::fs::read_dir("/proc")
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().parse::<u32>().is_ok())
            .count() as i64;
        assert!(total(&g) > 1 && total(&g) <= listed + 10, "total {} vs {listed} listed", total(&g));
        child.kill().unwrap();
        child.wait().unwrap();
        input.gather(&ctx);
        input.gather(&ctx);
        assert!(!held(&input).contains(&child.id()), "the reaped process is let go");
    }

    /// Beyond the budget of held files, processes are read each cycle, and once only though
    /// the cycle lists `/proc` twice (from the last pid, then whole).
    #[test]
    fn processes_beyond_the_budget_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        for (pid, state) in [(3, 'S'), (10, 'R'), (200, 'D')] {
            std::fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            let line = format!("{pid} (x) {state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 2 0\n");
            std::fs::write(proc.join(format!("{pid}/stat")), line).unwrap();
        }
        // More tasks than the tree's processes have: never all held, so each cycle lists.
        std::fs::write(proc.join("loadavg"), "1.00 2.00 3.00 1/100 1\n").unwrap();
        let ctx = context(&proc, dir.path());
        let mut input = FileInput::new(HostInput::Processes);
        let State::Processes(files) = &mut input.state else { unreachable!() };
        files.budget = 1;
        for cycle in 0..3 {
            let g = input.gather(&ctx);
            let p = &g.points[0];
            assert_eq!(p.field_value("total"), Some(&FieldValue::Int(3)), "cycle {cycle}");
            assert_eq!(p.field_value("total_threads"), Some(&FieldValue::Int(6)), "cycle {cycle}");
            assert_eq!(p.field_value("blocked"), Some(&FieldValue::Int(1)), "cycle {cycle}");
        }
        let State::Processes(files) = &mut input.state else { unreachable!() };
        assert_eq!(files.open.len(), 1);
        assert!(files.pid_position.is_some() && files.last_pid == Some(1), "both listings were made");

        // A position past what an offset can hold: the whole listing still counts everything.
        files.pid_position = Some(i64::MAX);
        let g = input.gather(&ctx);
        assert_eq!(g.points[0].field_value("total"), Some(&FieldValue::Int(3)));
    }

    /// mem and swap of one cycle read one `/proc/meminfo`: a change between them shows in
    /// neither until the next cycle.
    #[test]
    fn inputs_of_one_cycle_share_one_read_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        std::fs::create_dir_all(&proc).unwrap();
        let meminfo = |swap_free: u64| {
            format!("MemTotal: 1000 kB\nMemAvailable: 250 kB\nSwapTotal: 100 kB\nSwapFree: {swap_free} kB\n")
        };
        std::fs::write(proc.join("meminfo"), meminfo(100)).unwrap();
        let ctx = context(&proc, &sys);
        let (mut mem, mut swap) = (FileInput::new(HostInput::Mem), FileInput::new(HostInput::Swap));
        let swap_used = |g: &Gathered| g.points[0].field_value("used").cloned();

        let mut reads = CycleReads::default();
        assert_eq!(
            mem.gather_with(&ctx, &mut reads).points[0].field_value("total"),
            Some(&FieldValue::Int(1000 * 1024))
        );
        std::fs::write(proc.join("meminfo"), meminfo(40)).unwrap();
        assert_eq!(swap_used(&swap.gather_with(&ctx, &mut reads)), Some(FieldValue::Int(0)));

        let mut reads = CycleReads::default();
        mem.gather_with(&ctx, &mut reads);
        assert_eq!(swap_used(&swap.gather_with(&ctx, &mut reads)), Some(FieldValue::Int(60 * 1024)));

        // processes and system (one thread in `run`) share `/proc/loadavg` the same way.
        std::fs::write(
            proc.join("loadavg"),
            "1.00 2.00 3.00 1/1 5
",
        )
        .unwrap();
        let (mut processes, mut system) =
            (FileInput::new(HostInput::Processes), FileInput::new(HostInput::System));
        let load1 = |g: &Gathered| g.points.iter().find_map(|p| p.field_value("load1").cloned());
        let mut reads = CycleReads::default();
        processes.gather_with(&ctx, &mut reads);
        std::fs::write(
            proc.join("loadavg"),
            "4.00 2.00 3.00 1/1 5
",
        )
        .unwrap();
        assert_eq!(load1(&system.gather_with(&ctx, &mut reads)), Some(FieldValue::Float(1.0)));
        let mut reads = CycleReads::default();
        assert_eq!(load1(&system.gather_with(&ctx, &mut reads)), Some(FieldValue::Float(4.0)));
    }

    /// A device's `wwid` is looked up until it is found missing, and again once the device
    /// has left `/proc/diskstats` and come back.
    #[test]
    fn diskio_wwid_is_looked_up_again_only_for_a_device_that_came_back() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        std::fs::create_dir_all(&proc).unwrap();
        for d in ["sda", "sdb"] {
            std::fs::create_dir_all(sys.join("block").join(d)).unwrap();
        }
        std::fs::write(sys.join("block/sda/wwid"), "naa.5000c500a1b2c3d4\n").unwrap();
        let line = |name: &str| format!("   8       0 {name} 1 2 3 4 5 6 7 8 9 10 11\n");
        let both = format!("{}{}", line("sda"), line("sdb"));
        std::fs::write(proc.join("diskstats"), &both).unwrap();
        let ctx = context(&proc, &sys);
        let wwids = |g: &Gathered| -> Vec<Option<String>> {
            g.points.iter().map(|p| p.tag_value("wwid").map(str::to_owned)).collect()
        };
        let mut diskio = FileInput::new(HostInput::Diskio);
        let first = diskio.gather(&ctx);
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(wwids(&first), [Some("naa.5000c500a1b2c3d4".to_owned()), None]);
        // sdb gets a wwid while it stays: not seen (the attribute is the device's for life).
        std::fs::write(sys.join("block/sdb/wwid"), "eui.0025385b71b0d0f1\n").unwrap();
        assert_eq!(wwids(&diskio.gather(&ctx))[1], None);
        // sdb leaves and comes back: looked up again.
        std::fs::write(proc.join("diskstats"), line("sda")).unwrap();
        assert_eq!(diskio.gather(&ctx).points.len(), 1);
        std::fs::write(proc.join("diskstats"), &both).unwrap();
        assert_eq!(wwids(&diskio.gather(&ctx))[1].as_deref(), Some("eui.0025385b71b0d0f1"));
    }

    /// The socket tables of this machine through `/proc/net` text (Telegraf's source).
    fn proc_counts() -> SocketCounts {
        let ctx = context(Path::new("/proc"), Path::new("/sys"));
        let mut counter = SocketCounter::default();
        let mut g = Gathered::default();
        proc_sockets(&ctx, &mut KeptFiles::default(), &mut counter, &mut g);
        let malformed = counter.add_unix(&std::fs::read_to_string("/proc/net/unix").unwrap());
        assert!(g.problems.is_empty() && malformed.is_empty(), "{:?} {malformed:?}", g.problems);
        counter.counts()
    }

    /// Netlink counts the sockets the `/proc/net` tables list, in every field, on this
    /// machine, including a socket that is only bound (listed by neither) and a connection
    /// seen from both ends. Other work may open and close sockets meanwhile, so each netlink
    /// count must lie between the two text counts read before and after it, give or take
    /// [`LIVE_SOCKET_SLACK`].
    #[test]
    fn netlink_counts_what_proc_net_lists() {
        const LIVE_SOCKET_SLACK: u64 = 16;
        // SAFETY: socket(2) and bind(2) with a zeroed, then filled, sockaddr_in of the size
        // passed; the descriptor is closed by OwnedFd.
        let _bound = unsafe {
            use std::os::fd::FromRawFd;
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    (&addr as *const libc::sockaddr_in).cast(),
                    len
                ),
                0
            );
            fd
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

        let before = proc_counts();
        let mut tables = SocketTables::default();
        let unix = tables.sample_netlink().expect("netlink on this machine");
        let netlink = {
            let mut c = tables.counter.counts();
            let unix = unix.expect("unix_diag on this machine");
            c.tcp_none += unix.stream;
            c.udp_socket += unix.dgram;
            c
        };
        let after = proc_counts();
        let within = |what: &str, v: u64, a: u64, b: u64| {
            let (lo, hi) = (a.min(b).saturating_sub(LIVE_SOCKET_SLACK), a.max(b) + LIVE_SOCKET_SLACK);
            assert!((lo..=hi).contains(&v), "{what}: netlink {v}, /proc/net {a} then {b}");
        };
        for state in 0..11 {
            within(
                &format!("TCP state {}", state + 1),
                netlink.tcp[state],
                before.tcp[state],
                after.tcp[state],
            );
        }
        within("tcp_none", netlink.tcp_none, before.tcp_none, after.tcp_none);
        within("udp_socket", netlink.udp_socket, before.udp_socket, after.udp_socket);
        assert!(netlink.tcp[0] >= 2 && netlink.tcp[9] >= 1 && netlink.udp_socket >= 1, "{netlink:?}");
        // The bound socket is in no table; this test's slack must not hide it: nothing else
        // here leaves sockets in CLOSE.
        assert_eq!((before.tcp[6], netlink.tcp[6]), (0, 0), "CLOSE");
        // A second sample on the same socket counts afresh.
        tables.counter.clear();
        tables.sample_netlink().unwrap();
        assert!(tables.counter.counts().tcp[9] >= 1);
        drop((client, server, udp));
    }

    /// Netlink is asked only when `<host_proc>/net` shows this process's network namespace:
    /// `/proc` itself or another path to a live procfs, not a tree of files.
    #[test]
    fn netlink_only_for_a_live_procfs() {
        assert!(netlink_sees(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc", dir.path().join("proc")).unwrap();
        assert!(netlink_sees(&dir.path().join("proc")), "the same procfs by another path");
        std::fs::create_dir_all(dir.path().join("tree/self/ns")).unwrap();
        std::fs::write(dir.path().join("tree/self/ns/net"), "").unwrap();
        assert!(!netlink_sees(&dir.path().join("tree")), "a copy");
        assert!(!netlink_sees(&dir.path().join("missing")));
    }

    /// A kept file reads as a newly opened one would: a procfs file printed afresh, a file
    /// rewritten in place whole (longer than the buffer, then shorter, no stale tail); files not
    /// read in a cycle are closed at its end.
    #[test]
    fn kept_files_read_afresh() {
        let mut files = KeptFiles::default();
        let uptime = Path::new("/proc/uptime");
        let first = files.read(uptime, Shape::Whole).unwrap().to_owned();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let second = files.read(uptime, Shape::Whole).unwrap().to_owned();
        assert_ne!(first, second, "uptime moves by 0.01 s");
        assert_eq!(files.open.len(), 1, "kept, not opened again");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let big = "x".repeat(3 * KEPT_READ_BYTES + 5);
        for shape in [Shape::Whole, Shape::Pages] {
            std::fs::write(&path, &big).unwrap();
            assert_eq!(files.read(&path, shape).unwrap(), big);
            std::fs::write(&path, "short\n").unwrap();
            assert_eq!(files.read(&path, shape).unwrap(), "short\n");
        }
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(files.read(&path, Shape::Whole).unwrap_err().reason, "read_failed");
        files.end_cycle();
        assert_eq!(files.open.len(), 2);
        files.read(uptime, Shape::Whole).unwrap();
        files.end_cycle();
        assert_eq!(files.open.keys().collect::<Vec<_>>(), [uptime], "the file not read is closed");
        let missing = files.read(&dir.path().join("missing"), Shape::Whole).unwrap_err();
        assert!(missing.detail.contains("missing"), "{missing:?}");
    }

    /// A `seq_file` of many records comes a page at a time, even into a larger buffer:
    /// `/proc/vmstat` (some 4.1 KiB here) read as `Pages` has every line a fresh open and read
    /// to the end has, and its last line too, where stopping at the first short read would
    /// lose it. A `single_open` file (`/proc/meminfo`, 1.5 KiB) comes whole in one read.
    #[test]
    fn paged_files_read_to_the_end() {
        let keys =
            |text: &str| text.lines().map(|l| l.split(' ').next().unwrap().to_owned()).collect::<Vec<_>>();
        let mut files = KeptFiles::default();
        for (path, shape) in [("/proc/vmstat", Shape::Pages), ("/proc/meminfo", Shape::Whole)] {
            let path = Path::new(path);
            let expected = keys(&std::fs::read_to_string(path).unwrap());
            for _ in 0..2 {
                assert_eq!(keys(files.read(path, shape).unwrap()), expected, "{}", path.display());
            }
        }
        // What `Whole` would make of vmstat: the first page only, when it is more than one.
        let vmstat = std::fs::File::open("/proc/vmstat").unwrap();
        let mut buf = vec![0; KEPT_READ_BYTES];
        let n = read_whole(&vmstat, &mut buf, Shape::Whole).unwrap();
        let whole = std::fs::read("/proc/vmstat").unwrap();
        if whole.len() > 4096 {
            assert!(n < whole.len(), "a seq_file hands out a page per read");
        }
    }

    /// The mounts are chosen again only when the mount table changes: procfs's `mountinfo`
    /// announces it through poll(2); a tree that is not procfs is read every cycle.
    #[test]
    fn mount_table_kept_until_it_changes() {
        let live = context(Path::new("/proc"), Path::new("/sys"));
        let (mut table, mut files) = (MountTable::default(), KeptFiles::default());
        assert!(table.stale(), "never read");
        table.refresh(&live, &mut files).unwrap();
        assert!(table.file.as_ref().is_some_and(|(_, _, on_procfs)| *on_procfs));
        assert!(!table.stale(), "nothing mounted or unmounted in this namespace meanwhile");
        let mut g = Gathered::default();
        gather_disk(&live, &mut files, &mut table, &mut g);
        assert!(g.points.iter().any(|p| p.tag_value("path") == Some("/")), "{:?} {:?}", g.points, g.problems);

        let dir = tempfile::tempdir().unwrap();
        let tree = context(&dir.path().join("proc"), &dir.path().join("sys"));
        std::fs::create_dir_all(dir.path().join("proc/1")).unwrap();
        let mountinfo = dir.path().join("proc/1/mountinfo");
        let root = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        std::fs::write(&mountinfo, root).unwrap();
        let (mut table, mut files) = (MountTable::default(), KeptFiles::default());
        let paths = |table: &mut MountTable, files: &mut KeptFiles| {
            let mut g = Gathered::default();
            gather_disk(&tree, files, table, &mut g);
            assert!(g.problems.is_empty(), "{:?}", g.problems);
            g.points.iter().map(|p| p.tag_value("path").unwrap_or_default().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(paths(&mut table, &mut files), ["/"]);
        let second = format!("{root}23 22 254:0 / {} rw - ext4 /dev/vda rw\n", dir.path().display());
        std::fs::write(&mountinfo, second).unwrap();
        assert_eq!(paths(&mut table, &mut files), ["/".to_owned(), dir.path().display().to_string()]);
    }
}

//! Host and kubelet collectors that write Telegraf's series, so dashboards built on Telegraf's
//! schema keep working when logmill replaces it.
//!
//! Compatibility target: **Telegraf v1.39.3** (its `inputs.cpu`, `mem`, `swap`, `disk`,
//! `diskio`, `net`, `netstat`, `system`, `processes`, `kernel`, `kubernetes` and `nsq`), which
//! reads the kernel through gopsutil v4.26.7. Measurement, tag and field names and types are
//! Telegraf's: counts and bytes are integers (Telegraf's `uint64` values reach InfluxDB 1.x as
//! integers, clamped at `i64::MAX`), percentages and load averages floats. Every point carries
//! the `host` tag, as Telegraf's agent adds it. Where logmill deliberately differs (a quirk
//! not worth copying, or a cost Telegraf pays that logmill does not), the module says so.
//!
//! Layout: one pure module per concept parses kernel text (or API JSON) into points and has
//! golden tests over `testdata/proc/` and `testdata/`: [`cpu`], [`memory`] (mem and swap),
//! [`disk`], [`diskio`], [`net`], [`netstat`], [`system`], [`processes`], [`kernel`],
//! [`kubelet`], [`nsq_stats`]. [`read`] holds the inputs that read `/proc`, `/sys` and
//! `statfs`, [`sock_diag`] netstat's netlink socket; [`remote`] the two that ask HTTP APIs (the kubelet, nsqd); [`runner`] schedules
//! them on the clock and hands each cycle's line protocol to a channel.

pub(crate) mod cpu;
pub(crate) mod disk;
pub(crate) mod diskio;
pub(crate) mod kernel;
pub(crate) mod kubelet;
pub(crate) mod memory;
pub(crate) mod net;
pub(crate) mod netstat;
pub(crate) mod nsq_stats;
pub(crate) mod processes;
pub(crate) mod read;
pub(crate) mod remote;
pub(crate) mod runner;
pub(crate) mod sock_diag;
pub(crate) mod system;

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;

use crate::metrics::line_protocol::{EncodeError, LineBuilder};
use crate::metrics::point::{FieldValue, Point};

pub(crate) use crate::glob::Glob;
pub(crate) use cpu::CpuOptions;
pub(crate) use disk::DiskOptions;
pub use runner::{Batch, CollectError, Collector, OnceReport};

/// The host inputs, by Telegraf's plugin names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostInput {
    Cpu,
    Mem,
    Swap,
    Disk,
    Diskio,
    Net,
    Netstat,
    System,
    Processes,
    Kernel,
}

impl HostInput {
    /// Every host input, in the order a cycle gathers them.
    pub const ALL: [HostInput; 10] = [
        HostInput::Cpu,
        HostInput::Mem,
        HostInput::Swap,
        HostInput::Disk,
        HostInput::Diskio,
        HostInput::Net,
        HostInput::Netstat,
        HostInput::System,
        HostInput::Processes,
        HostInput::Kernel,
    ];

    /// Telegraf's name of the input (`[[inputs.cpu]]`), also its label in logmill's counters.
    pub fn name(self) -> &'static str {
        match self {
            HostInput::Cpu => "cpu",
            HostInput::Mem => "mem",
            HostInput::Swap => "swap",
            HostInput::Disk => "disk",
            HostInput::Diskio => "diskio",
            HostInput::Net => "net",
            HostInput::Netstat => "netstat",
            HostInput::System => "system",
            HostInput::Processes => "processes",
            HostInput::Kernel => "kernel",
        }
    }

    pub fn from_name(name: &str) -> Option<HostInput> {
        HostInput::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// Where the host's trees are. In a pod the host's `/proc`, `/sys` and `/` are mounted under
/// `/rootfs`; Telegraf (through gopsutil) reads `HOST_PROC`, `HOST_SYS`, `HOST_MOUNT_PREFIX`
/// and `HOST_VAR` for the same reason, and logmill takes the same variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Roots {
    /// `/proc` (`HOST_PROC`).
    pub(crate) proc: PathBuf,
    /// `/sys` (`HOST_SYS`).
    pub(crate) sys: PathBuf,
    /// Where the host's `/` is mounted, prefixed to mount points for `statfs` and taken off
    /// again for the `path` tag (`HOST_MOUNT_PREFIX`); empty: none.
    pub(crate) mount_prefix: PathBuf,
    /// `/var`, for `run/utmp` (`HOST_VAR`).
    pub(crate) var: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self { proc: "/proc".into(), sys: "/sys".into(), mount_prefix: PathBuf::new(), var: "/var".into() }
    }
}

/// How the kubelet is asked for `/stats/summary`.
#[derive(Debug, Clone)]
pub(crate) struct KubeletSettings {
    /// Base URL: `https://NODE:10250` or the read-only `http://NODE:10255`.
    pub(crate) url: reqwest::Url,
    /// The service-account token sent as `Authorization: Bearer` over HTTPS, read on each
    /// request because projected tokens are rotated.
    pub(crate) token_file: Option<PathBuf>,
    /// PEM CA to verify the kubelet's certificate with (the cluster CA); when set, the only
    /// roots trusted.
    pub(crate) ca_file: Option<PathBuf>,
    /// Accept any certificate (kubelets with self-signed serving certificates).
    pub(crate) insecure_skip_verify: bool,
    pub(crate) timeout: Duration,
}

/// How nsqd's `/stats` are read.
#[derive(Debug, Clone)]
pub(crate) struct NsqStatsSettings {
    /// nsqd HTTP base URLs.
    pub(crate) endpoints: Vec<reqwest::Url>,
    pub(crate) timeout: Duration,
}

/// Validated collector settings (`[collect]`).
#[derive(Debug, Clone)]
pub struct CollectSettings {
    /// Time between two cycles.
    pub(crate) interval: Duration,
    /// Cycles start on multiples of `interval` on the clock (Telegraf's `round_interval`).
    pub(crate) round_interval: bool,
    /// How long `collect --once` waits between the two samples of the inputs that report
    /// rates (cpu, diskio).
    pub(crate) once_sample_gap: Duration,
    pub(crate) inputs: Vec<HostInput>,
    pub(crate) roots: Roots,
    pub(crate) cpu: CpuOptions,
    pub(crate) disk: DiskOptions,
    /// `diskio` devices; empty: every device with activity.
    pub(crate) diskio_devices: Vec<Glob>,
    /// `net` interfaces; empty: every interface that is up and not loopback.
    pub(crate) net_interfaces: Vec<Glob>,
    pub(crate) kubelet: Option<KubeletSettings>,
    pub(crate) nsq: Option<NsqStatsSettings>,
}

/// Something an input could not read or make sense of: counted by `reason` in
/// `logmill_collect_problems_total{input,reason}` and logged once while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub detail: String,
}

impl Problem {
    pub(crate) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// A line a parser could not read, with its 1-based number, for a [`Problem`]'s detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub line: usize,
}

/// Lines a parser skipped, as one problem naming the file and the first such line.
pub(crate) fn malformed_problem(file: &str, malformed: &[Malformed]) -> Option<Problem> {
    let first = malformed.first()?;
    Some(Problem::new(
        "malformed_line",
        format!("{file}: {} line(s) not understood (first: line {})", malformed.len(), first.line),
    ))
}

/// An unsigned counter as Telegraf writes it to InfluxDB 1.x: an integer, clamped at
/// `i64::MAX` (its serializer's behaviour without `influx_uint_support`).
pub(crate) fn int(v: u64) -> FieldValue {
    FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Appends `points` as line protocol, each with the `host` tag, tags sorted by key as Telegraf
/// writes them, stamped `timestamp_ns`. Returns how many lines were written and the errors of
/// those that could not be (a NaN, a name line protocol cannot carry): each is left out whole.
pub(crate) fn encode_points(
    points: &[Point],
    host: &str,
    timestamp_ns: i64,
    out: &mut BytesMut,
) -> (usize, Vec<EncodeError>) {
    let mut written = 0;
    let mut errors = Vec::new();
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for point in points {
        tags.clear();
        tags.extend(point.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        if !tags.iter().any(|(k, _)| *k == "host") {
            tags.push(("host", host));
        }
        tags.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut line = LineBuilder::new(out, &point.measurement);
        for (key, value) in &tags {
            line.tag(key, value);
        }
        for (key, value) in &point.fields {
            line.field(key, value);
        }
        match line.finish(Some(timestamp_ns)) {
            Ok(()) => written += 1,
            Err(e) => errors.push(e),
        }
    }
    (written, errors)
}

/// Fields of a test point in a stable order, for comparisons.
#[cfg(test)]
pub(crate) fn sorted_fields(p: &Point) -> Vec<(crate::metrics::point::Name, FieldValue)> {
    let mut f = p.fields.clone();
    f.sort_by(|a, b| a.0.cmp(&b.0));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tag_added_tags_sorted_one_timestamp() {
        let points = vec![
            Point::new("cpu").tag("cpu", "cpu-total").field("usage_user", FieldValue::Float(1.5)),
            Point::new("mem").field("total", int(u64::MAX)).field("used_percent", FieldValue::Float(25.0)),
            Point::new("bad").field("x", FieldValue::Float(f64::NAN)),
            Point::new("system").field("uptime_format", FieldValue::Str(" 0:14".into())),
        ];
        let mut out = BytesMut::new();
        let (written, errors) = encode_points(&points, "node-1", 1_700_000_000_000_000_000, &mut out);
        assert_eq!(written, 3);
        assert_eq!(errors, [EncodeError::NonFinite]);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "cpu,cpu=cpu-total,host=node-1 usage_user=1.5 1700000000000000000\n\
             mem,host=node-1 total=9223372036854775807i,used_percent=25.0 1700000000000000000\n\
             system,host=node-1 uptime_format=\" 0:14\" 1700000000000000000\n"
        );
    }

    #[test]
    fn input_names_are_telegrafs() {
        let names: Vec<&str> = HostInput::ALL.iter().map(|i| i.name()).collect();
        assert_eq!(
            names,
            ["cpu", "mem", "swap", "disk", "diskio", "net", "netstat", "system", "processes", "kernel"]
        );
        assert_eq!(HostInput::from_name("diskio"), Some(HostInput::Diskio));
        assert_eq!(HostInput::from_name("docker"), None);
    }
}

//! Container logs as the runtimes write them, for the agent's end-to-end tests: numbered lines
//! in Docker's json-file or CRI format, some longer than 16 KiB and split the way the runtimes
//! split them, laid out on a node the way kubelet and Docker lay them out and rotated the way
//! kubelet, Docker and logrotate rotate them.
//!
//! Every line's text says which file and which sequence number it is (`<tag> <seq> …`), and is
//! a pure function of the two ([`text`]), so a reader at the other end of NSQ can check each
//! record whole without keeping what was written.
//!
//! Layouts, under one node directory:
//! - [`Layout::Kubelet`]: CRI's `pods/<ns>_<pod>_<uid>/<container>/0.log`, linked from
//!   `containers/<pod>_<ns>_<container>-<id>.log`; kubelet rotates by renaming `0.log` to
//!   `0.log.<stamp>` (the runtime then reopens `0.log`) and gzips the older rotation
//!   (`.tmp` first, then renamed to `.gz`, the uncompressed file removed).
//! - [`Layout::Docker`]: `docker/<id>/<id>-json.log`, linked from `containers/…`; Docker's
//!   json-file driver rotates by shifting `.1` → `.2` … and renaming the live file to `.1`.
//! - [`Layout::CopyTruncate`]: an operator's own file right in `containers/`, rotated by
//!   logrotate's `copytruncate` (copied to `<name>.<n>`, truncated in place; the copy before
//!   it gzipped).
//!
//! Include it with `#[path = "support/container_logs.rs"] mod container_logs;`.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The runtimes' line limit: Docker and containerd split longer lines into pieces this long.
pub const PIECE_BYTES: usize = 16 * 1024;

/// How the runtime wraps each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"log":"text\n","stream":"stdout","time":"…"}`; a split line's pieces but the last lack
    /// the `\n`.
    Docker,
    /// `<time> <stream> <F|P> <text>`; a split line's pieces but the last are tagged `P`.
    Cri,
}

/// Where the file lives and how it rotates (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Kubelet,
    Docker,
    CopyTruncate,
}

/// A node's log directories under `root`.
#[derive(Debug, Clone)]
pub struct Node {
    pub root: PathBuf,
}

impl Node {
    pub fn new(root: &Path) -> Node {
        for dir in ["containers", "pods", "docker"] {
            std::fs::create_dir_all(root.join(dir)).expect("create the node's log directories");
        }
        Node { root: root.to_owned() }
    }

    /// `/var/log/containers`.
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// The agent's `--paths`: `/var/log/containers/*.log`.
    pub fn glob(&self) -> String {
        format!("{}/*.log", self.containers().display())
    }
}

/// Which lines are long, and which stream each line is written to, by sequence number: every
/// `long_every`-th line (from the first) is long, on stdout, and the line after it is written
/// on stderr between its pieces; of the others, every third is on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// 0: no long lines.
    pub long_every: u64,
}

impl Shape {
    pub fn is_long(self, seq: u64) -> bool {
        self.long_every > 0 && seq % self.long_every == 0
    }

    /// `stdout` or `stderr`.
    pub fn stream(self, seq: u64) -> &'static str {
        let interleaved = self.long_every > 0 && seq % self.long_every == 1;
        if !self.is_long(seq) && (interleaved || seq % 3 == 0) {
            "stderr"
        } else {
            "stdout"
        }
    }

    /// The text of line `seq` of the file tagged `tag` (without its newline). Long lines are
    /// 16 KiB + 1 to about 56 KiB, never a multiple of the piece size, and their bytes depend on
    /// the position, so pieces joined in the wrong order or cut short show. Short lines carry
    /// what JSON must escape (`"`, `\`, a tab) and a non-ASCII letter.
    pub fn text(self, tag: &str, seq: u64) -> String {
        let stream = self.stream(seq);
        let head = format!("{tag} {seq:09} {stream}");
        if self.is_long(seq) {
            let mut len = PIECE_BYTES + 1 + (seq.wrapping_mul(7919) % 40_000) as usize;
            if len % PIECE_BYTES == 0 {
                len += 1;
            }
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let mut t = head.into_bytes();
            t.extend_from_slice(b" L ");
            while t.len() < len {
                t.push(ALPHABET[(t.len() * 7 + seq as usize) % ALPHABET.len()]);
            }
            String::from_utf8(t).expect("ASCII")
        } else {
            format!("{head} {} \"quoted\" back\\slash\ttab caf\u{e9}", "x".repeat((seq % 61) as usize))
        }
    }
}

/// One container's log file, written like its runtime writes it.
pub struct ContainerLog {
    pub tag: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// 64 hex digits, the end of the file name.
    pub id: String,
    /// The pod's uid in the `/var/log/pods` path ([`Layout::Kubelet`] only).
    pub uid: Option<String>,
    pub format: Format,
    pub layout: Layout,
    pub shape: Shape,
    /// The path the agent's glob matches.
    pub link: PathBuf,
    /// Where the runtime writes.
    pub live: PathBuf,
    file: File,
    /// The next line's sequence number: lines `0..next` were written.
    pub next: u64,
    pub rotations: u64,
    /// The last rotation not compressed yet (kubelet and copytruncate compress it at the next).
    last_rotated: Option<PathBuf>,
    /// The first line's time, in ns since the day's midnight (UTC); each line is 1.000037 ms
    /// later than the one before.
    day_ns_base: u64,
}

/// The day of every runtime time written: `2026-11-21`.
pub const DAY: &str = "2026-11-21";

impl ContainerLog {
    /// Creates the (empty) file of container `container` of a pod named after `tag` in
    /// `namespace`. `index` spreads the files' times and ids.
    #[allow(clippy::too_many_arguments)] // each a file's own; a table of them reads best at the call
    pub fn create(
        node: &Node,
        index: u32,
        tag: &str,
        namespace: &str,
        container: &str,
        format: Format,
        layout: Layout,
        shape: Shape,
    ) -> ContainerLog {
        let pod = format!("{tag}-7c9d8b6f4-x2k4q");
        let id = format!("{:064x}", 0x00c0_ffee_0000_u64 + u64::from(index));
        let name = format!("{pod}_{namespace}_{container}-{id}.log");
        let link = node.containers().join(&name);
        let (live, uid) = match layout {
            Layout::Kubelet => {
                let uid = format!("{index:08x}-1d2e-4f5a-8b9c-0123456789ab");
                let dir = node.root.join("pods").join(format!("{namespace}_{pod}_{uid}")).join(container);
                std::fs::create_dir_all(&dir).expect("create the pod's log directory");
                (dir.join("0.log"), Some(uid))
            }
            Layout::Docker => {
                let dir = node.root.join("docker").join(&id);
                std::fs::create_dir_all(&dir).expect("create the container's directory");
                (dir.join(format!("{id}-json.log")), None)
            }
            Layout::CopyTruncate => (link.clone(), None),
        };
        let file = append(&live);
        if live != link {
            std::os::unix::fs::symlink(&live, &link).expect("link the container's log");
        }
        ContainerLog {
            tag: tag.to_owned(),
            namespace: namespace.to_owned(),
            pod,
            container: container.to_owned(),
            id,
            uid,
            format,
            layout,
            shape,
            link,
            live,
            file,
            next: 0,
            rotations: 0,
            last_rotated: None,
            day_ns_base: u64::from(index) * 3_600_000_000_000,
        }
    }

    /// Line `seq`'s text.
    pub fn text(&self, seq: u64) -> String {
        self.shape.text(&self.tag, seq)
    }

    /// Line `seq`'s runtime time, in ns since midnight of [`DAY`].
    pub fn day_ns(&self, seq: u64) -> u64 {
        self.day_ns_base + seq * 1_000_037
    }

    /// Line `seq`'s time as the `logs` JSON must carry it: fluentd's `%FT%T.%6N%:z` in UTC
    /// (the runtime's nanoseconds cut to microseconds).
    pub fn fluentd_time(&self, seq: u64) -> String {
        let ns = self.day_ns(seq);
        let (h, m, s) = hms(ns);
        format!("{DAY}T{h:02}:{m:02}:{s:02}.{:06}+00:00", ns % 1_000_000_000 / 1000)
    }

    /// Appends at least `n` lines (a long line and the line written between its pieces go
    /// together), as one write.
    pub fn write(&mut self, n: u64) {
        let mut out = Vec::new();
        let end = self.next + n;
        while self.next < end {
            let seq = self.next;
            if self.shape.is_long(seq) {
                // The line after it goes out on the other stream between its first two pieces,
                // as when two streams are written at once.
                let text = self.text(seq);
                let pieces: Vec<&[u8]> = text.as_bytes().chunks(PIECE_BYTES).collect();
                for (i, piece) in pieces.iter().enumerate() {
                    self.wrap(seq, piece, i + 1 == pieces.len(), &mut out);
                    if i == 0 {
                        let next = self.text(seq + 1);
                        self.wrap(seq + 1, next.as_bytes(), true, &mut out);
                    }
                }
                self.next += 2;
            } else {
                let text = self.text(seq);
                self.wrap(seq, text.as_bytes(), true, &mut out);
                self.next += 1;
            }
        }
        self.file.write_all(&out).expect("append to the container's log");
    }

    /// One piece of line `seq` as the runtime writes it.
    fn wrap(&self, seq: u64, piece: &[u8], last: bool, out: &mut Vec<u8>) {
        let ns = self.day_ns(seq);
        let (h, m, s) = hms(ns);
        let time = format!("{DAY}T{h:02}:{m:02}:{s:02}.{:09}Z", ns % 1_000_000_000);
        let stream = self.shape.stream(seq);
        match self.format {
            Format::Cri => {
                let tag = if last { "F" } else { "P" };
                out.extend_from_slice(format!("{time} {stream} {tag} ").as_bytes());
                out.extend_from_slice(piece);
                out.push(b'\n');
            }
            Format::Docker => {
                let mut log = std::str::from_utf8(piece).expect("pieces are cut in ASCII text").to_owned();
                if last {
                    log.push('\n');
                }
                let record = serde_json::json!({ "log": log, "stream": stream, "time": time });
                out.extend_from_slice(record.to_string().as_bytes());
                out.push(b'\n');
            }
        }
    }

    /// Appends `bytes` as they are (a recorded log from `testdata/`), outside the numbering.
    pub fn append_raw(&mut self, bytes: &[u8]) {
        self.file.write_all(bytes).expect("append to the container's log");
    }

    /// Rotates as the layout's rotator does; returns the rotated file's path (its name at the
    /// moment of the rotation).
    pub fn rotate(&mut self) -> PathBuf {
        self.rotations += 1;
        let n = self.rotations;
        match self.layout {
            Layout::Kubelet => {
                if let Some(older) = self.last_rotated.take() {
                    gzip_like_kubelet(&older);
                }
                // kubelet's stamp is `%Y%m%d-%H%M%S`; one a second here would collide.
                let rotated = sibling(&self.live, &format!("20261121-{:06}", 120_000 + n));
                std::fs::rename(&self.live, &rotated).expect("rename the live log");
                self.file = append(&self.live);
                self.last_rotated = Some(rotated.clone());
                rotated
            }
            Layout::Docker => {
                for k in (1..n).rev() {
                    let from = sibling(&self.live, &k.to_string());
                    std::fs::rename(&from, sibling(&self.live, &(k + 1).to_string()))
                        .expect("shift a rotation");
                }
                let rotated = sibling(&self.live, "1");
                std::fs::rename(&self.live, &rotated).expect("rename the live log");
                self.file = append(&self.live);
                rotated
            }
            Layout::CopyTruncate => {
                if let Some(older) = self.last_rotated.take() {
                    gzip_like_kubelet(&older);
                }
                let copy = sibling(&self.live, &n.to_string());
                std::fs::copy(&self.live, &copy).expect("copy the live log");
                self.file.set_len(0).expect("truncate the live log");
                self.last_rotated = Some(copy.clone());
                copy
            }
        }
    }
}

/// `<path>.<suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

fn hms(day_ns: u64) -> (u64, u64, u64) {
    let secs = day_ns / 1_000_000_000;
    assert!(secs < 86_400, "test times stay within {DAY}");
    (secs / 3600, secs / 60 % 60, secs % 60)
}

fn append(path: &Path) -> File {
    OpenOptions::new().create(true).append(true).open(path).expect("open the log for appending")
}

/// kubelet's compression of a rotated file: gzip into `<rotated>.tmp`, rename to `.gz`,
/// remove the uncompressed file.
pub fn gzip_like_kubelet(rotated: &Path) -> PathBuf {
    use flate2::{write::GzEncoder, Compression};
    let mut content = Vec::new();
    File::open(rotated).unwrap().read_to_end(&mut content).unwrap();
    let tmp = PathBuf::from(format!("{}.tmp", rotated.display()));
    let gz = PathBuf::from(format!("{}.gz", rotated.display()));
    let mut enc = GzEncoder::new(File::create(&tmp).unwrap(), Compression::fast());
    enc.write_all(&content).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, &gz).unwrap();
    std::fs::remove_file(rotated).unwrap();
    gz
}

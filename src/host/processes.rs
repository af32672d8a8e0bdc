//! `processes`: processes by state and the total of their threads, from every
//! `/proc/[pid]/stat`, as Telegraf v1.39.3's `inputs.processes` counts them on Linux.
//!
//! A stat line (proc_pid_stat(5)) is `pid (comm) state ppid …`; `comm` may hold spaces and
//! parentheses, so the fields start after the **last** `)`. The state is the first field
//! after it, `num_threads` the 18th (field 20 of the line). States: `R` running, `S`
//! sleeping, `D` blocked, `Z` zombies, `X` dead, `T`/`t` stopped, `W` paging, `I` idle,
//! `P` parked; any other state counts only in `total`.
//!
//! Integer fields `blocked`, `zombies`, `stopped`, `running`, `sleeping`, `total`, `unknown`
//! (always 0 on Linux, as Telegraf's `/proc` path never increments it), `dead`, `paging`,
//! `total_threads`, `idle`, and `parked` when some process is parked. Telegraf sets `parked`
//! to 1 whatever the count (an assignment where an increment was meant); logmill writes the
//! count.

use crate::metrics::point::Point;

use super::int;

/// Counts by state, added up over the processes of one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProcessCounts {
    pub running: u64,
    pub sleeping: u64,
    pub blocked: u64,
    pub zombies: u64,
    pub dead: u64,
    pub stopped: u64,
    pub paging: u64,
    pub idle: u64,
    pub parked: u64,
    pub total: u64,
    pub total_threads: u64,
}

/// Why a stat line was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatError {
    /// No `)`, or nothing after it.
    NoState,
    /// The thread count is missing or not a number (the state was still counted).
    BadThreads,
}

impl ProcessCounts {
    /// Adds one `/proc/[pid]/stat`.
    pub fn add(&mut self, stat: &[u8]) -> Result<(), StatError> {
        let close = memchr::memrchr(b')', stat).ok_or(StatError::NoState)?;
        // Bytes, not text: this runs once per process per cycle, and only ASCII digits and
        // the state letter are read.
        let mut fields = stat[close + 1..].split(u8::is_ascii_whitespace).filter(|f| !f.is_empty());
        let state = fields.next().and_then(|s| s.first().copied()).ok_or(StatError::NoState)?;
        match state {
            b'R' => self.running += 1,
            b'S' => self.sleeping += 1,
            b'D' => self.blocked += 1,
            b'Z' => self.zombies += 1,
            b'X' => self.dead += 1,
            b'T' | b't' => self.stopped += 1,
            b'W' => self.paging += 1,
            b'I' => self.idle += 1,
            b'P' => self.parked += 1,
            _ => {}
        }
        self.total += 1;
        // num_threads is the 17th field after the state.
        let threads = fields.nth(16).and_then(parse_count).ok_or(StatError::BadThreads)?;
        self.total_threads = self.total_threads.saturating_add(threads);
        Ok(())
    }
}

/// `struct linux_dirent64` (getdents64(2)): `d_ino` (u64), `d_off` (i64), `d_reclen` (u16),
/// `d_type` (u8), then the NUL-terminated name, each record padded to 8 bytes.
const DIRENT_NAME_AT: usize = 19;

/// What one `getdents64` read of a `/proc` directory held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dirents {
    /// `d_off` of a record (the directory position of the next one) minus the pid of the next
    /// one, when that is a pid: `/proc` lists pid P at position P + this constant, so a seek
    /// there lists the pids from P on.
    pub pid_position: Option<i64>,
}

/// Appends the pids among one `getdents64` read of a `/proc` directory: the names made of
/// digits only. `None` when a record is cut short or mis-sized.
pub(crate) fn pids_in_dirents(buf: &[u8], pids: &mut Vec<u32>) -> Option<Dirents> {
    let mut dirents = Dirents::default();
    let mut previous_off = None;
    let mut at = 0;
    while at < buf.len() {
        let record = buf.get(at..at + DIRENT_NAME_AT)?;
        let d_off = i64::from_ne_bytes(record[8..16].try_into().ok()?);
        let reclen = usize::from(u16::from_ne_bytes([record[16], record[17]]));
        if reclen <= DIRENT_NAME_AT || at + reclen > buf.len() {
            return None;
        }
        let name = &buf[at + DIRENT_NAME_AT..at + reclen];
        let name = &name[..memchr::memchr(0, name).unwrap_or(name.len())];
        if !name.is_empty() && name.iter().all(u8::is_ascii_digit) {
            // More digits than a u32 holds is no pid.
            if let Some(pid) =
                name.iter().try_fold(0u32, |n, d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))
            {
                pids.push(pid);
                if let Some(off) = previous_off {
                    dirents.pid_position = i64::checked_sub(off, i64::from(pid));
                }
            }
        }
        previous_off = Some(d_off);
        at += reclen;
    }
    Some(dirents)
}

/// A decimal count: ASCII digits only, within a u64.
fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What `/proc/loadavg` says of tasks (proc_loadavg(5)): `0.24 0.91 0.88 1/76 12345` has 76
/// (runnable / existing scheduling entities: threads, kernel threads included), and 12345 is
/// the pid handed out last (in the reader's pid namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadavgTasks {
    pub tasks: u64,
    pub last_pid: u32,
}

pub(crate) fn loadavg_tasks(text: &[u8]) -> Option<LoadavgTasks> {
    let mut fields = text.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty()).skip(3);
    let (tasks, last_pid) = (fields.next()?, fields.next()?);
    let slash = memchr::memchr(b'/', tasks)?;
    Some(LoadavgTasks {
        tasks: parse_count(&tasks[slash + 1..])?,
        last_pid: u32::try_from(parse_count(last_pid)?).ok()?,
    })
}

/// The `processes` point.
pub(crate) fn processes_point(c: &ProcessCounts) -> Point {
    let mut p = Point::new("processes")
        .field("blocked", int(c.blocked))
        .field("zombies", int(c.zombies))
        .field("stopped", int(c.stopped))
        .field("running", int(c.running))
        .field("sleeping", int(c.sleeping))
        .field("total", int(c.total))
        .field("unknown", int(0))
        .field("dead", int(c.dead))
        .field("paging", int(c.paging))
        .field("total_threads", int(c.total_threads))
        .field("idle", int(c.idle));
    if c.parked > 0 {
        p = p.field("parked", int(c.parked));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::point::FieldValue;

    #[test]
    fn stat_lines() {
        let mut c = ProcessCounts::default();
        // A stat line of this machine (`cat` reading its own /proc/self/stat): state R,
        // num_threads 1.
        let captured =
            std::fs::read(format!("{}/testdata/proc/captured/self-stat", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        assert_eq!(c.add(&captured), Ok(()));
        // Built from proc_pid_stat(5): a comm with spaces and parentheses, 12 threads.
        let tricky = b"4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 12 0 500 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(c.add(tricky), Ok(()));
        assert_eq!(
            c.add(b"7 (kworker/0:1-events) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0"),
            Ok(())
        );
        assert_eq!(c.add(b"9 (z) Z 1 9 9 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0"), Ok(()));
        assert_eq!(c.add(b"10 (p) P 2 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0"), Ok(()));
        assert_eq!(c.add(b"11 (short) D 1"), Err(StatError::BadThreads), "counted by state, no threads");
        assert_eq!(
            c.add(b"13 (t) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 +2 0"),
            Err(StatError::BadThreads)
        );
        assert_eq!(c.add(b"no parenthesis"), Err(StatError::NoState));
        assert_eq!(c.add(b"12 (empty)"), Err(StatError::NoState));
        assert_eq!(
            c,
            ProcessCounts {
                running: 1,
                sleeping: 2,
                blocked: 1,
                zombies: 1,
                idle: 1,
                parked: 1,
                total: 7,
                total_threads: 1 + 12 + 1 + 1 + 1,
                ..ProcessCounts::default()
            }
        );
        let p = processes_point(&c);
        assert_eq!(p.fields.len(), 12);
        assert_eq!(p.field_value("unknown"), Some(&FieldValue::Int(0)));
        assert_eq!(p.field_value("total_threads"), Some(&FieldValue::Int(16)));
        assert!(processes_point(&ProcessCounts::default()).field_value("parked").is_none());
    }

    #[test]
    fn tasks_in_loadavg() {
        let captured =
            std::fs::read(format!("{}/testdata/proc/captured/loadavg", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let text = String::from_utf8(captured.clone()).unwrap();
        let words: Vec<&str> = text.split_whitespace().collect();
        let expected = LoadavgTasks {
            tasks: words[3].split_once('/').unwrap().1.parse().unwrap(),
            last_pid: words[4].parse().unwrap(),
        };
        assert_eq!(loadavg_tasks(&captured), Some(expected));
        let tasks = |text: &[u8]| loadavg_tasks(text).map(|t| (t.tasks, t.last_pid));
        assert_eq!(tasks(b"0.24 0.91 0.88 1/76 12345\n"), Some((76, 12345)));
        assert_eq!(tasks(b"0.24  0.91 0.88 12/4096 1"), Some((4096, 1)));
        assert_eq!(tasks(b"0.24 0.91 0.88 76 12345\n"), None, "no slash");
        assert_eq!(tasks(b"0.24 0.91 0.88 1/ 12345\n"), None);
        assert_eq!(tasks(b"0.24 0.91 0.88 1/7x 12345\n"), None);
        assert_eq!(tasks(b"0.24 0.91 0.88 1/76\n"), None, "no last pid");
        assert_eq!(tasks(b"0.24 0.91 0.88 1/76 4294967296\n"), None, "no u32");
        assert_eq!(tasks(b"0.24 0.91\n"), None);
    }

    /// One `struct linux_dirent64` as getdents64(2) lays it out: inode, offset, record length,
    /// type, NUL-terminated name, padded to a multiple of 8 bytes.
    fn dirent(name: &str, d_type: u8, d_off: i64) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut r = vec![0u8; reclen];
        r[0..8].copy_from_slice(&4026531842u64.to_ne_bytes());
        r[8..16].copy_from_slice(&d_off.to_ne_bytes());
        r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        r[18] = d_type;
        r[19..19 + name.len()].copy_from_slice(name.as_bytes());
        r
    }

    /// A listing of `/proc` as it starts (`.`, `..`, files, `self`), then pid directories
    /// (one whose name fills its record but for the NUL: 19 + 12 + 1 = 32 bytes) and names
    /// that are not pids.
    #[test]
    fn pids_from_a_proc_listing() {
        let mut buf = Vec::new();
        for (name, d_type) in [(".", 4), ("..", 4), ("fb", 8), ("self", 10), ("1", 4), ("000012345678", 4)] {
            buf.extend(dirent(name, d_type, 7));
        }
        assert_eq!(dirent("000012345678", 4, 7).len(), 32);
        for (name, d_type) in [("4294967295", 4), ("4294967296", 4), ("2a", 4), ("sys", 4), ("77", 4)] {
            buf.extend(dirent(name, d_type, 7));
        }
        let mut pids = vec![9];
        assert!(pids_in_dirents(&buf, &mut pids).is_some());
        assert_eq!(pids, [9, 1, 12345678, 4294967295, 77], "appended; too large for a u32: not a pid");
        assert!(pids_in_dirents(&[], &mut pids).is_some());
        let cut = &buf[..buf.len() - 3];
        assert!(pids_in_dirents(cut, &mut Vec::new()).is_none(), "last record cut short");
        assert!(pids_in_dirents(&buf[..10], &mut Vec::new()).is_none(), "cut inside the header");
        let mut zero = dirent("5", 4, 7);
        zero[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(pids_in_dirents(&zero, &mut Vec::new()).is_none(), "a record length of 0 would never end");
    }

    /// Each record's `d_off` is the position of the next one; fs/proc/base.c puts pid P at
    /// P + 258 (`FIRST_PROCESS_ENTRY` 256, then `self` and `thread-self`).
    #[test]
    fn pid_position_from_the_record_before_a_pid() {
        let records = [("thread-self", 258 + 1), ("1", 258 + 2), ("2", 258 + 17), ("17", 258 + 4_194_304)];
        let mut buf = Vec::new();
        for (name, d_off) in records {
            buf.extend(dirent(name, 4, d_off));
        }
        let mut pids = Vec::new();
        let dirents = pids_in_dirents(&buf, &mut pids).unwrap();
        assert_eq!(pids, [1, 2, 17]);
        assert_eq!(dirents.pid_position, Some(258));
        let first_only = pids_in_dirents(&dirent("1", 4, 260), &mut Vec::new()).unwrap();
        assert_eq!(first_only.pid_position, None, "no record before it in this read");
        // Another filesystem's positions (ext4 hash cookies, anything): no overflow.
        let mut odd = dirent("x", 4, i64::MIN);
        odd.extend(dirent("5", 4, 0));
        assert_eq!(pids_in_dirents(&odd, &mut Vec::new()).unwrap().pid_position, None);
    }
}

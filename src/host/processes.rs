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
        let close = stat.iter().rposition(|&b| b == b')').ok_or(StatError::NoState)?;
        let rest = std::str::from_utf8(&stat[close + 1..]).map_err(|_| StatError::NoState)?;
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next().and_then(|s| s.bytes().next()).ok_or(StatError::NoState)?;
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
        let threads: u64 = fields.nth(16).and_then(|t| t.parse().ok()).ok_or(StatError::BadThreads)?;
        self.total_threads = self.total_threads.saturating_add(threads);
        Ok(())
    }
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
        assert_eq!(c.add(b"no parenthesis"), Err(StatError::NoState));
        assert_eq!(c.add(b"12 (empty)"), Err(StatError::NoState));
        assert_eq!(
            c,
            ProcessCounts {
                running: 1,
                sleeping: 1,
                blocked: 1,
                zombies: 1,
                idle: 1,
                parked: 1,
                total: 6,
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
}

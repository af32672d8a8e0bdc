//! Whose turn it is to read. Pure.
//!
//! Round robin by one read (`read_chunk_bytes`) per file per round, the next pass starting
//! after the file that read last: a file flooding its log gets one chunk per round like every
//! other file with data, so a quiet file's new line waits at most one round (one chunk from
//! each other busy file) however fast the busy one writes.

/// A rotating start position over a changing set of files.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    /// The id after which the next round starts.
    last: Option<u64>,
}

impl RoundRobin {
    /// `ids` sorted ascending; returns them in this round's order: those after the last one
    /// served first, then the rest.
    pub(crate) fn order(&self, ids: &[u64]) -> Vec<u64> {
        let split = match self.last {
            Some(last) => ids.partition_point(|&id| id <= last),
            None => 0,
        };
        ids[split..].iter().chain(&ids[..split]).copied().collect()
    }

    /// `id` was served.
    pub(crate) fn served(&mut self, id: u64) {
        self.last = Some(id);
    }
}

/// How many bytes a read may take: a chunk, but never past the unacknowledged budget, so
/// reading stops within `max_unacked` however large a chunk is. `None`: paused.
pub(crate) fn read_allowance(chunk: usize, unacked: u64, max_unacked: usize) -> Option<usize> {
    let room = (max_unacked as u64).saturating_sub(unacked);
    (room > 0).then(|| chunk.min(room.min(usize::MAX as u64) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_gets_a_turn_before_any_gets_a_second() {
        let mut rr = RoundRobin::default();
        let ids = [1, 4, 7];
        assert_eq!(rr.order(&ids), [1, 4, 7]);
        rr.served(4);
        assert_eq!(rr.order(&ids), [7, 1, 4]);
        // The last one served left the set: start after where it was.
        assert_eq!(rr.order(&[1, 7, 9]), [7, 9, 1]);
        rr.served(9);
        assert_eq!(rr.order(&[1, 7, 9]), [1, 7, 9]);
        assert!(rr.order(&[]).is_empty());
    }

    #[test]
    fn the_budget_caps_a_read() {
        assert_eq!(read_allowance(65536, 0, 1 << 20), Some(65536));
        assert_eq!(read_allowance(65536, (1 << 20) - 100, 1 << 20), Some(100));
        assert_eq!(read_allowance(65536, 1 << 20, 1 << 20), None);
        assert_eq!(read_allowance(65536, 2 << 20, 1 << 20), None);
    }
}

//! Timestamps for points that arrive without one.
//!
//! A line-protocol point without a timestamp takes its NSQ message's timestamp (when it was
//! published: a backlog consumed late draws no spike, unlike InfluxDB's stamping on arrival),
//! made unique per series: InfluxDB keeps one point per (measurement, tags, timestamp), so two
//! points of one series stamped alike would overwrite each other. Each point gets
//! `max(candidate, previous of its series + 1)`.
//!
//! Two memories of "previous": the message's own (always: the points of one message stay
//! distinct), and the consumer's across messages (an LRU of recent series), consulted only on
//! a message's first delivery. A redelivered message is stamped from its own timestamp alone,
//! so it gets the keys it got the first time (a resend overwrites itself) unless the first
//! delivery had to move past another message's points of the same series, which needs two
//! messages of one series published within as many nanoseconds as they hold points.

use std::collections::HashMap;
use std::hash::Hasher;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::metrics::window::{KeyHash, KeyHasher};

/// Series remembered across messages; past it the least recently stamped is forgotten (its
/// next point is stamped from its message alone).
const REMEMBERED_SERIES: NonZeroUsize = match NonZeroUsize::new(65_536) {
    Some(n) => n,
    None => unreachable!(),
};

/// The hash of a series key as written (`measurement,tags`), or of any other key bytes.
pub(crate) fn series_hash(parts: &[&[u8]]) -> u64 {
    let mut h = KeyHasher::default();
    for part in parts {
        h.write(part);
        h.write_u8(0);
    }
    h.finish()
}

/// Stamps points that have no timestamp of their own; see the module documentation.
pub(crate) struct Stamps {
    across: LruCache<u64, i64, KeyHash>,
    /// This message's series, cleared by [`Stamps::start_message`].
    within: HashMap<u64, i64, KeyHash>,
    first_delivery: bool,
}

impl Default for Stamps {
    fn default() -> Self {
        Self {
            across: LruCache::with_hasher(REMEMBERED_SERIES, KeyHash::default()),
            within: HashMap::with_hasher(KeyHash::default()),
            first_delivery: true,
        }
    }
}

impl Stamps {
    /// Begins a message; `first_delivery` when nsqd says this is its first attempt.
    pub(crate) fn start_message(&mut self, first_delivery: bool) {
        self.within.clear();
        self.first_delivery = first_delivery;
    }

    /// The timestamp of the next point of series `hash` whose own time is `candidate_ns`.
    pub(crate) fn stamp(&mut self, hash: u64, candidate_ns: i64) -> i64 {
        let mut ts = candidate_ns;
        if let Some(&last) = self.within.get(&hash) {
            ts = ts.max(last.saturating_add(1));
        }
        if self.first_delivery {
            if let Some(&last) = self.across.peek(&hash) {
                ts = ts.max(last.saturating_add(1));
            }
        }
        self.within.insert(hash, ts);
        match self.across.get_mut(&hash) {
            Some(last) => *last = (*last).max(ts),
            None => {
                self.across.put(hash, ts);
            }
        }
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_of_a_series_get_distinct_stamps_within_and_across_messages() {
        let (a, b) = (series_hash(&[b"m,t=a"]), series_hash(&[b"m,t=b"]));
        let mut s = Stamps::default();
        s.start_message(true);
        assert_eq!(
            [s.stamp(a, 100), s.stamp(a, 100), s.stamp(b, 100), s.stamp(a, 100)],
            [100, 101, 100, 102]
        );
        // The next message, published 1 ns later: its points move past the first message's.
        s.start_message(true);
        assert_eq!([s.stamp(a, 101), s.stamp(b, 101)], [103, 101]);
        // A later message: its own time.
        s.start_message(true);
        assert_eq!(s.stamp(a, 500), 500);
    }

    #[test]
    fn a_redelivered_message_gets_its_first_stamps_again() {
        let a = series_hash(&[b"m,t=a"]);
        let mut s = Stamps::default();
        s.start_message(true);
        let first: Vec<i64> = (0..3).map(|_| s.stamp(a, 100)).collect();
        s.start_message(false);
        let again: Vec<i64> = (0..3).map(|_| s.stamp(a, 100)).collect();
        assert_eq!(first, again, "a resend overwrites its own points");
        assert_eq!(first, [100, 101, 102]);
    }
}

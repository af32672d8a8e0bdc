//! The per-pod metadata cache as a pure state machine: what a lookup answers and whether it
//! starts a fetch, and what a fetch's result does to the entry. The clock is passed in, so
//! every rule is tested without time passing; [`super::metadata`] runs the fetches.
//!
//! The rules, per pod:
//! - first lookup: [`Lookup::Pending`] and a fetch; the only case where a caller should wait;
//! - found: [`Lookup::Known`] for `ttl`, then still `Known` while a refresh runs in the
//!   background (labels rarely change; serving the old ones beats waiting);
//! - 404 with nothing known: [`Lookup::Absent`] for `negative_ttl`, then re-checked in the
//!   background, still answering `Absent`;
//! - 404 of a pod that was known (deleted): still `Known` for `deleted_retention` after the
//!   first 404, so that its last lines ship with its labels; then `Absent`. Refreshes go on
//!   meanwhile: a StatefulSet pod re-created under the same name becomes `Known` again;
//! - failure (down, timeout, 5xx, 401): `Known` stays known (stale) and is retried after
//!   `error_retry`; with nothing known it is [`Lookup::Unavailable`] and retried in the
//!   background after `error_retry`: the API being slow or down never makes anyone wait twice.
//!
//! At most `capacity` pods are held, least recently looked up evicted first.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::pod::PodMeta;

/// A pod's name in its namespace: the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub pod: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), pod: pod.into() }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// What is known of a pod right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The pod's metadata (perhaps being refreshed, perhaps of a pod deleted moments ago).
    Known(Arc<PodMeta>),
    /// The first fetch of this pod is under way, started at `since`: worth a bounded wait.
    Pending { since: Instant },
    /// The API said recently that there is no such pod.
    Absent,
    /// The API failed recently (down, slow, an error status); nothing is known. Not worth
    /// waiting for: a retry runs in the background.
    Unavailable,
}

/// How a fetch ended.
#[derive(Debug, Clone)]
pub enum Fetched {
    Found(Arc<PodMeta>),
    NotFound,
    Failed,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: NonZeroUsize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub deleted_retention: Duration,
    pub error_retry: Duration,
}

#[derive(Debug)]
enum State {
    /// Never answered; the first fetch runs.
    Unresolved {
        since: Instant,
    },
    Known {
        meta: Arc<PodMeta>,
        gone_since: Option<Instant>,
    },
    Absent,
    Failed,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// When a fetch (refresh, re-check, retry) is next due.
    next_check: Instant,
    fetching: bool,
}

#[derive(Debug)]
pub struct Cache {
    settings: CacheSettings,
    entries: LruCache<PodKey, Entry>,
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Self {
        Self { settings, entries: LruCache::new(settings.capacity) }
    }

    /// What is known of `key` at `now`, and whether the caller must start a fetch (then it
    /// must report its end with [`Cache::complete`]).
    pub fn lookup(&mut self, key: &PodKey, now: Instant) -> (Lookup, bool) {
        let Some(entry) = self.entries.get_mut(key) else {
            let state = State::Unresolved { since: now };
            self.entries.put(key.clone(), Entry { state, next_check: now, fetching: true });
            return (Lookup::Pending { since: now }, true);
        };
        if let State::Known { gone_since: Some(gone), .. } = entry.state {
            if now >= gone + self.settings.deleted_retention {
                entry.state = State::Absent;
            }
        }
        let due = !entry.fetching && now >= entry.next_check;
        entry.fetching |= due;
        let answer = match &entry.state {
            State::Unresolved { since } => Lookup::Pending { since: *since },
            State::Known { meta, .. } => Lookup::Known(meta.clone()),
            State::Absent => Lookup::Absent,
            State::Failed => Lookup::Unavailable,
        };
        (answer, due)
    }

    /// Records the end of a fetch of `key` started by [`Cache::lookup`].
    pub fn complete(&mut self, key: &PodKey, fetched: Fetched, now: Instant) {
        let s = self.settings;
        // An entry evicted while its fetch ran is put back: the answer is fresh.
        let previous = self.entries.pop(key).map(|e| e.state);
        let (state, next_check) = match (fetched, previous) {
            (Fetched::Found(meta), _) => (State::Known { meta, gone_since: None }, now + s.ttl),
            (Fetched::NotFound, Some(State::Known { meta, gone_since })) => {
                let gone = gone_since.unwrap_or(now);
                // Re-checked within the retention too, in case the name comes back.
                let next = (now + s.ttl).min(gone + s.deleted_retention);
                (State::Known { meta, gone_since: Some(gone) }, next)
            }
            (Fetched::NotFound, _) => (State::Absent, now + s.negative_ttl),
            (Fetched::Failed, Some(State::Known { meta, gone_since })) => {
                (State::Known { meta, gone_since }, now + s.error_retry)
            }
            (Fetched::Failed, _) => (State::Failed, now + s.error_retry),
        };
        self.entries.put(key.clone(), Entry { state, next_check, fetching: false });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings() -> CacheSettings {
        CacheSettings {
            capacity: NonZeroUsize::new(3).unwrap(),
            ttl: 300 * SECOND,
            negative_ttl: 30 * SECOND,
            deleted_retention: 600 * SECOND,
            error_retry: 10 * SECOND,
        }
    }

    fn meta(uid: &str) -> Arc<PodMeta> {
        Arc::new(PodMeta { uid: uid.into(), ..PodMeta::default() })
    }

    fn known(uid: &str) -> Lookup {
        Lookup::Known(meta(uid))
    }

    #[test]
    fn first_lookup_fetches_once_and_waiters_share_it() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("foo", "foo-web-1");
        assert_eq!(c.lookup(&k, t0), (Lookup::Pending { since: t0 }, true));
        // Later lookups while it runs: still pending since t0, no second fetch.
        assert_eq!(c.lookup(&k, t0 + SECOND), (Lookup::Pending { since: t0 }, false));
        c.complete(&k, Fetched::Found(meta("u1")), t0 + 2 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 3 * SECOND), (known("u1"), false));
    }

    #[test]
    fn known_entries_refresh_in_the_background_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("foo", "p");
        c.lookup(&k, t0);
        c.complete(&k, Fetched::Found(meta("u1")), t0);
        assert_eq!(c.lookup(&k, t0 + 299 * SECOND), (known("u1"), false));
        // Due: the old answer is served while one refresh runs.
        assert_eq!(c.lookup(&k, t0 + 300 * SECOND), (known("u1"), true));
        assert_eq!(c.lookup(&k, t0 + 301 * SECOND), (known("u1"), false));
        c.complete(&k, Fetched::Found(meta("u2")), t0 + 302 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 303 * SECOND), (known("u2"), false));
        // A failed refresh keeps what was known and retries after error_retry, not the ttl.
        assert_eq!(c.lookup(&k, t0 + 602 * SECOND), (known("u2"), true));
        c.complete(&k, Fetched::Failed, t0 + 603 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 612 * SECOND), (known("u2"), false));
        assert_eq!(c.lookup(&k, t0 + 613 * SECOND), (known("u2"), true));
    }

    #[test]
    fn a_deleted_pod_is_kept_for_its_last_lines() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("foo", "p");
        c.lookup(&k, t0);
        c.complete(&k, Fetched::Found(meta("u1")), t0);
        assert!(c.lookup(&k, t0 + 300 * SECOND).1);
        // Deleted: the 404 does not evict what was known.
        c.complete(&k, Fetched::NotFound, t0 + 300 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 301 * SECOND), (known("u1"), false));
        // Re-checked after the ttl; a second 404 does not extend the retention.
        assert_eq!(c.lookup(&k, t0 + 600 * SECOND), (known("u1"), true));
        c.complete(&k, Fetched::NotFound, t0 + 600 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 899 * SECOND), (known("u1"), false));
        // 600 s after the first 404: gone (and checked once more, in the background).
        assert_eq!(c.lookup(&k, t0 + 900 * SECOND), (Lookup::Absent, true));
        c.complete(&k, Fetched::NotFound, t0 + 900 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 901 * SECOND), (Lookup::Absent, false));
    }

    #[test]
    fn a_deleted_pod_recreated_under_its_name_is_known_again() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("db", "db-0");
        c.lookup(&k, t0);
        c.complete(&k, Fetched::Found(meta("old")), t0);
        c.lookup(&k, t0 + 300 * SECOND);
        c.complete(&k, Fetched::NotFound, t0 + 300 * SECOND);
        assert!(c.lookup(&k, t0 + 600 * SECOND).1);
        c.complete(&k, Fetched::Found(meta("new")), t0 + 600 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 1000 * SECOND).0, known("new"), "no longer counted as deleted");
    }

    #[test]
    fn absent_pods_are_rechecked_in_the_background() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("foo", "gone");
        c.lookup(&k, t0);
        c.complete(&k, Fetched::NotFound, t0);
        assert_eq!(c.lookup(&k, t0 + 29 * SECOND), (Lookup::Absent, false));
        assert_eq!(c.lookup(&k, t0 + 30 * SECOND), (Lookup::Absent, true), "answered at once");
        c.complete(&k, Fetched::Found(meta("u")), t0 + 31 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 31 * SECOND).0, known("u"));
    }

    #[test]
    fn failures_are_unavailable_and_retried_without_waiting() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let k = PodKey::new("foo", "p");
        c.lookup(&k, t0);
        c.complete(&k, Fetched::Failed, t0 + 5 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 6 * SECOND), (Lookup::Unavailable, false));
        assert_eq!(c.lookup(&k, t0 + 15 * SECOND), (Lookup::Unavailable, true), "a retry, not a wait");
        assert_eq!(c.lookup(&k, t0 + 16 * SECOND), (Lookup::Unavailable, false));
        c.complete(&k, Fetched::Found(meta("u")), t0 + 17 * SECOND);
        assert_eq!(c.lookup(&k, t0 + 17 * SECOND).0, known("u"));
    }

    #[test]
    fn capacity_evicts_the_least_recently_looked_up() {
        let t0 = Instant::now();
        let mut c = Cache::new(settings());
        let keys: Vec<PodKey> = (0..4).map(|i| PodKey::new("ns", format!("p{i}"))).collect();
        for k in &keys[..3] {
            c.lookup(k, t0);
            c.complete(k, Fetched::Found(meta(&k.pod)), t0);
        }
        c.lookup(&keys[0], t0); // p1 is now the least recently used
        c.lookup(&keys[3], t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(&keys[0], t0).0, known("p0"));
        assert_eq!(c.lookup(&keys[1], t0), (Lookup::Pending { since: t0 }, true), "evicted, fetched again");
        // A fetch whose entry was evicted meanwhile still lands.
        c.complete(&keys[3], Fetched::Found(meta("p3")), t0);
        assert_eq!(c.lookup(&keys[3], t0).0, known("p3"));
    }
}

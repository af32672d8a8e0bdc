//! [`PodMetadata`]: the cache of [`super::cache`] with its fetches running in the background.
//!
//! A lookup never blocks and never fails: it answers from the cache and, when a fetch is due,
//! starts one (one per pod at a time, at most `max_concurrent_requests` at once, each bounded
//! by `request_timeout`). Only a pod's first lookup answers [`Lookup::Pending`]; the agent may
//! then await [`PodMetadata::resolve`], which returns when the fetch ends or when the pod has
//! waited `metadata_wait` since its first lookup, whichever comes first, so that no record
//! waits longer than that in all, however slow the API is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::{Cache, Fetched, Lookup, PodKey};
use super::client::{KubeClient, KubeError};
use super::KubeSettings;
use crate::telemetry::{Counter, Telemetry};

/// At most one warning about failing API requests per this interval: with the API down, every
/// pod's retries fail together.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// The handle; clones share the cache.
#[derive(Debug, Clone)]
pub struct PodMetadata {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// A std mutex: held for a hash lookup and an LRU touch, never across an await.
    shared: Mutex<Shared>,
    client: KubeClient,
    permits: Semaphore,
    metadata_wait: Duration,
    runtime: tokio::runtime::Handle,
    tracker: TaskTracker,
    cancel: CancellationToken,
    counters: Counters,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Debug)]
struct Shared {
    cache: Cache,
    /// The fetches running, for [`PodMetadata::resolve`]: the sender is dropped when the
    /// fetch has updated the cache.
    fetching: HashMap<PodKey, watch::Receiver<()>>,
}

#[derive(Debug)]
struct Counters {
    ok: Counter,
    not_found: Counter,
    telemetry: Telemetry,
}

impl Counters {
    const NAME: &'static str = "logmill_kube_requests_total";
    const HELP: &'static str = "Pod lookups sent to the Kubernetes API, by outcome.";

    fn new(telemetry: &Telemetry) -> Self {
        Self {
            ok: telemetry.counter(Self::NAME, Self::HELP, &[("outcome", "ok")]),
            not_found: telemetry.counter(Self::NAME, Self::HELP, &[("outcome", "not_found")]),
            telemetry: telemetry.clone(),
        }
    }

    fn failed(&self, outcome: &'static str) {
        // Failures are rare and their outcomes many: registered when they happen.
        self.telemetry.counter(Self::NAME, Self::HELP, &[("outcome", outcome)]).add(1);
    }
}

impl PodMetadata {
    /// The cache and its client. Fetches run on the current runtime, on `tracker`; `cancel`
    /// abandons those under way (their pods are then unavailable until retried).
    pub fn start(
        settings: &KubeSettings,
        telemetry: &Telemetry,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, KubeError> {
        let client = KubeClient::new(settings)?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared { cache: Cache::new(settings.cache), fetching: HashMap::new() }),
                client,
                permits: Semaphore::new(settings.max_concurrent_requests.max(1)),
                metadata_wait: settings.metadata_wait,
                runtime: tokio::runtime::Handle::current(),
                tracker: tracker.clone(),
                cancel,
                counters: Counters::new(telemetry),
                last_warning: Mutex::new(None),
            }),
        })
    }

    /// What is known of the pod now; starts a fetch when one is due. Never waits. Callable
    /// from any thread.
    pub fn lookup(&self, key: &PodKey) -> Lookup {
        let now = Instant::now();
        let mut shared = self.inner.lock();
        let (answer, fetch) = shared.cache.lookup(key, now.into_std());
        if fetch {
            let (tx, rx) = watch::channel(());
            shared.fetching.insert(key.clone(), rx);
            drop(shared);
            let inner = self.inner.clone();
            let key = key.clone();
            self.inner.tracker.spawn_on(fetch_pod(inner, key, tx), &self.inner.runtime);
        }
        answer
    }

    /// Like [`lookup`](Self::lookup), but a [`Lookup::Pending`] pod is waited for, until its
    /// fetch ends or until `metadata_wait` after its first lookup. Returns `Pending` only when
    /// that time ran out.
    pub async fn resolve(&self, key: &PodKey) -> Lookup {
        let since = match self.lookup(key) {
            Lookup::Pending { since } => Instant::from_std(since),
            answer => return answer,
        };
        let deadline = since + self.inner.metadata_wait;
        self.wait_until(key, deadline).await
    }

    /// Waits for the pod's running fetch to end, at most until `deadline`; then looks up.
    pub async fn wait_until(&self, key: &PodKey, deadline: Instant) -> Lookup {
        let rx = self.inner.lock().fetching.get(key).cloned();
        if let Some(mut rx) = rx {
            // `changed` ends with an error once the fetch drops its sender, which it does
            // after updating the cache.
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
        self.lookup(key)
    }

    /// How long a record may wait for its pod's metadata in all.
    pub fn metadata_wait(&self) -> Duration {
        self.inner.metadata_wait
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves the cache consistent (each change is one
        // call), so keep serving it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, key: &PodKey, error: &super::client::FetchError) {
        let now = Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
            return;
        }
        *last = Some(now);
        tracing::warn!(
            pod = %key,
            error = %crate::errors::chain(error),
            "pod metadata unavailable; records are classified by namespace meanwhile"
        );
    }
}

async fn fetch_pod(inner: Arc<Inner>, key: PodKey, done: watch::Sender<()>) {
    let fetch = async {
        // The semaphore is never closed, so acquiring only waits.
        let _permit = inner.permits.acquire().await;
        inner.client.get_pod(&key).await
    };
    let fetched = tokio::select! {
        _ = inner.cancel.cancelled() => Fetched::Failed,
        result = fetch => match result {
            Ok(Some(meta)) => {
                inner.counters.ok.add(1);
                tracing::debug!(pod = %key, uid = %meta.uid, "pod metadata fetched");
                Fetched::Found(Arc::new(meta))
            }
            Ok(None) => {
                inner.counters.not_found.add(1);
                tracing::debug!(pod = %key, "pod not found");
                Fetched::NotFound
            }
            Err(error) => {
                inner.counters.failed(error.outcome());
                inner.warn(&key, &error);
                Fetched::Failed
            }
        },
    };
    let mut shared = inner.lock();
    shared.cache.complete(&key, fetched, Instant::now().into_std());
    shared.fetching.remove(&key);
    drop(shared);
    drop(done);
}

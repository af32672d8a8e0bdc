//! Pod metadata from a Kubernetes API served by a local fake (`support/kube_api.rs`): labels and
//! uid when it is up; a lookup that never blocks, one request per pod, bounded concurrency; an
//! answer within `metadata_wait` however slow or down it is; a deleted pod kept for its last
//! lines; the service-account token re-read as it rotates; HTTPS with the cluster CA. Then
//! the classification of app, controller, router and other containers with the API up, down
//! and slow.

#[path = "support/kube_api.rs"]
mod kube_api;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube_api::{closed_port_url, test_tls_dir, FakeKubeApi, Mode};
use logmill::access::rules::Registry;
use logmill::agent::classify::{Classifier, Kind};
use logmill::kube::{CacheSettings, ContainerRef, KubeSettings, Lookup, PodKey, PodMeta, PodMetadata};
use logmill::telemetry::Telemetry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const UID: &str = "34ebc234-2423-11e6-94aa-42010a800021";
const DEIS_APP: &[(&str, &str)] = &[
    ("app", "foo"),
    ("heritage", "deis"),
    ("type", "web"),
    ("version", "v2"),
    ("app.kubernetes.io/name", "foo"),
];

fn settings(api_url: String) -> KubeSettings {
    KubeSettings {
        api_url,
        token_file: None,
        token_reload: Duration::from_secs(60),
        ca_file: None,
        insecure_skip_verify: false,
        request_timeout: Duration::from_secs(2),
        max_concurrent_requests: 4,
        cache: CacheSettings {
            capacity: NonZeroUsize::new(100).unwrap(),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            deleted_retention: Duration::from_secs(600),
            error_retry: Duration::from_secs(10),
        },
        metadata_wait: Duration::from_secs(2),
    }
}

struct Agent {
    meta: PodMetadata,
    telemetry: Telemetry,
    _cancel: tokio_util::sync::DropGuard,
}

fn start(settings: &KubeSettings) -> Agent {
    let telemetry = Telemetry::default();
    let cancel = CancellationToken::new();
    let meta = PodMetadata::start(settings, &telemetry, &TaskTracker::new(), cancel.clone()).expect("start");
    Agent { meta, telemetry, _cancel: cancel.drop_guard() }
}

fn known(lookup: &Lookup) -> &PodMeta {
    match lookup {
        Lookup::Known(meta) => meta,
        other => panic!("expected Known, got {other:?}"),
    }
}

fn requests_counted(t: &Telemetry, outcome: &str) -> u64 {
    t.value("logmill_kube_requests_total", &[("outcome", outcome)]).unwrap_or(0)
}

#[tokio::test]
async fn up_gives_labels_and_uid_with_one_request() {
    let api = FakeKubeApi::start().await;
    api.add_pod("foo", "foo-v2-web-2ggow", UID, DEIS_APP, "foo-web");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let agent = start(&KubeSettings { token_file: Some(token), ..settings(api.url()) });
    let key = PodKey::new("foo", "foo-v2-web-2ggow");
    assert!(matches!(agent.meta.lookup(&key), Lookup::Pending { .. }), "the first lookup does not wait");
    let meta = agent.meta.resolve(&key).await;
    let meta = known(&meta);
    assert_eq!(meta.uid, UID);
    let labels: Vec<(&str, &str)> = meta.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("app", "foo"),
            ("app_kubernetes_io/name", "foo"),
            ("heritage", "deis"),
            ("type", "web"),
            ("version", "v2")
        ]
    );
    assert_eq!(meta.containers[0].0, "foo-web");
    // Cached: later lookups answer at once, with no request.
    for _ in 0..10 {
        assert_eq!(known(&agent.meta.lookup(&key)).uid, UID);
    }
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/v1/namespaces/foo/pods/foo-v2-web-2ggow");
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer t0ken"), "the token file, trimmed");
    assert_eq!(requests_counted(&agent.telemetry, "ok"), 1);
}

#[tokio::test]
async fn lookups_never_block_fetch_once_per_pod_and_stay_within_the_concurrency_bound() {
    let api = FakeKubeApi::start().await;
    for i in 0..10 {
        api.add_pod("foo", &format!("web-{i}"), &format!("uid-{i}"), DEIS_APP, "foo-web");
    }
    api.set_mode(Mode::Slow(Duration::from_millis(300)));
    let agent = start(&KubeSettings { max_concurrent_requests: 2, ..settings(api.url()) });
    let keys: Vec<PodKey> = (0..10).map(|i| PodKey::new("foo", format!("web-{i}"))).collect();
    let began = Instant::now();
    for _ in 0..5 {
        for key in &keys {
            assert!(matches!(agent.meta.lookup(key), Lookup::Pending { .. }));
        }
    }
    assert!(began.elapsed() < Duration::from_millis(200), "50 lookups took {:?}", began.elapsed());
    // Waiters share their pod's fetch.
    let waits: Vec<_> =
        keys.iter().map(|k| agent.meta.wait_until(k, Instant::now() + Duration::from_secs(10))).collect();
    let answers = futures_join(waits).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(known(answer).uid, format!("uid-{i}"));
    }
    for i in 0..10 {
        assert_eq!(api.requests_for("foo", &format!("web-{i}")), 1, "web-{i}");
    }
    assert!(api.max_answering() <= 2, "{} requests at once", api.max_answering());
    assert_eq!(api.max_answering(), 2, "the bound is used");
}

/// Awaits every future (no `futures` crate in the tests' dependencies).
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn down_is_unavailable_at_once_and_never_waited_for_again() {
    let agent = start(&settings(closed_port_url().await));
    let key = PodKey::new("foo", "foo-web-1");
    let began = Instant::now();
    assert_eq!(agent.meta.resolve(&key).await, Lookup::Unavailable);
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "a refused connection is not waited out: {:?}",
        began.elapsed()
    );
    assert_eq!(agent.meta.lookup(&key), Lookup::Unavailable);
    assert_eq!(requests_counted(&agent.telemetry, "connect"), 1);
}

#[tokio::test]
async fn slow_is_waited_for_at_most_metadata_wait_in_all() {
    let api = FakeKubeApi::start().await;
    api.add_pod("foo", "foo-web-1", UID, DEIS_APP, "foo-web");
    api.set_mode(Mode::Slow(Duration::from_secs(5)));
    let s = KubeSettings {
        request_timeout: Duration::from_millis(800),
        metadata_wait: Duration::from_millis(300),
        ..settings(api.url())
    };
    let agent = start(&s);
    let key = PodKey::new("foo", "foo-web-1");
    let began = Instant::now();
    let answer = agent.meta.resolve(&key).await;
    let waited = began.elapsed();
    assert!(matches!(answer, Lookup::Pending { .. }), "{answer:?}");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(700), "waited {waited:?}");
    // The wait counts from the pod's first lookup: a second record does not wait again.
    let began = Instant::now();
    assert!(matches!(agent.meta.resolve(&key).await, Lookup::Pending { .. }));
    assert!(began.elapsed() < Duration::from_millis(100), "waited again {:?}", began.elapsed());
    // Once the request timed out, the pod is unavailable, answered at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let began = Instant::now();
    assert_eq!(agent.meta.resolve(&key).await, Lookup::Unavailable);
    assert!(began.elapsed() < Duration::from_millis(100));
    assert_eq!(requests_counted(&agent.telemetry, "timeout"), 1);
    assert_eq!(api.requests_for("foo", "foo-web-1"), 1, "retried only after error_retry");
}

#[tokio::test]
async fn missing_and_deleted_pods() {
    let api = FakeKubeApi::start().await;
    api.add_pod("foo", "foo-web-1", UID, DEIS_APP, "foo-web");
    let s = KubeSettings {
        cache: CacheSettings { ttl: Duration::from_millis(200), ..settings(String::new()).cache },
        ..settings(api.url())
    };
    let agent = start(&s);
    assert_eq!(agent.meta.resolve(&PodKey::new("foo", "never-was")).await, Lookup::Absent);
    assert_eq!(requests_counted(&agent.telemetry, "not_found"), 1);
    let key = PodKey::new("foo", "foo-web-1");
    assert_eq!(known(&agent.meta.resolve(&key).await).uid, UID);
    // Deleted; after the ttl a refresh learns it, and the pod stays known for its last lines.
    api.remove_pod("foo", "foo-web-1");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(known(&agent.meta.lookup(&key)).uid, UID, "refresh started, old answer served");
    let deadline = Instant::now() + Duration::from_secs(5);
    while requests_counted(&agent.telemetry, "not_found") < 2 {
        assert!(Instant::now() < deadline, "the refresh never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(known(&agent.meta.lookup(&key)).uid, UID, "a 404 does not forget a known pod");
    // Every pod 404: a new pod is absent, a known one still known.
    api.set_mode(Mode::NotFound);
    assert_eq!(agent.meta.resolve(&PodKey::new("foo", "other")).await, Lookup::Absent);
}

#[tokio::test]
async fn server_errors_and_foreign_404s_are_unavailable_not_absent() {
    let api = FakeKubeApi::start().await;
    api.add_pod("foo", "foo-web-1", UID, DEIS_APP, "foo-web");
    api.set_mode(Mode::ServerError);
    let agent = start(&settings(api.url()));
    assert_eq!(agent.meta.resolve(&PodKey::new("foo", "foo-web-1")).await, Lookup::Unavailable);
    assert_eq!(requests_counted(&agent.telemetry, "server_error"), 1);
    // A URL under which the server has no API (a wrong api_url) answers a plain 404: that is
    // not "no such pod".
    api.set_mode(Mode::Up);
    let agent = start(&settings(format!("{}/not-the-api", api.url())));
    assert_eq!(agent.meta.resolve(&PodKey::new("foo", "foo-web-1")).await, Lookup::Unavailable);
    assert_eq!(requests_counted(&agent.telemetry, "client_error"), 1);
}

#[tokio::test]
async fn rotated_tokens_are_read_again() {
    let api = FakeKubeApi::start().await;
    for i in 0..3 {
        api.add_pod("foo", &format!("web-{i}"), &format!("uid-{i}"), DEIS_APP, "foo-web");
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first").unwrap();
    api.require_token(Some("first"));
    // Re-read every 200 ms.
    let agent = start(&KubeSettings {
        token_file: Some(token.clone()),
        // Long enough that the third token below comes before the reload is due, however
        // slow the machine.
        token_reload: Duration::from_millis(1500),
        ..settings(api.url())
    });
    assert_eq!(known(&agent.meta.resolve(&PodKey::new("foo", "web-0")).await).uid, "uid-0");
    // kubelet writes the next token; the API stops taking the old one.
    std::fs::write(&token, "second").unwrap();
    api.require_token(Some("second"));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(known(&agent.meta.resolve(&PodKey::new("foo", "web-1")).await).uid, "uid-1");
    let auth: Vec<Option<String>> = api.requests().into_iter().map(|r| r.authorization).collect();
    assert_eq!(
        auth,
        [Some("Bearer first".to_owned()), Some("Bearer second".to_owned())],
        "no 401 on the way"
    );
    // Rotated before the reload is due: the 401 makes the client read it again, once.
    std::fs::write(&token, "third").unwrap();
    api.require_token(Some("third"));
    assert_eq!(known(&agent.meta.resolve(&PodKey::new("foo", "web-2")).await).uid, "uid-2");
    let auth: Vec<Option<String>> = api.requests().into_iter().skip(2).map(|r| r.authorization).collect();
    assert_eq!(auth, [Some("Bearer second".to_owned()), Some("Bearer third".to_owned())]);
    assert_eq!(requests_counted(&agent.telemetry, "ok"), 3);
}

#[tokio::test]
async fn https_with_the_cluster_ca() {
    let api = FakeKubeApi::start_tls().await;
    api.add_pod("foo", "foo-web-1", UID, DEIS_APP, "foo-web");
    let key = PodKey::new("foo", "foo-web-1");
    let ca: PathBuf = test_tls_dir().join("ca.pem");
    let agent = start(&KubeSettings { ca_file: Some(ca), ..settings(api.url()) });
    assert_eq!(known(&agent.meta.resolve(&key).await).uid, UID);
    // The built-in roots do not vouch for the test CA.
    let untrusted = start(&settings(api.url()));
    assert_eq!(untrusted.meta.resolve(&key).await, Lookup::Unavailable);
    // Unless told not to verify.
    let insecure = start(&KubeSettings { insecure_skip_verify: true, ..settings(api.url()) });
    assert_eq!(known(&insecure.meta.resolve(&key).await).uid, UID);
    // A CA file that is not there is a start-up error.
    let missing = KubeSettings { ca_file: Some("/nonexistent/ca.crt".into()), ..settings(api.url()) };
    let e =
        PodMetadata::start(&missing, &Telemetry::default(), &TaskTracker::new(), CancellationToken::new());
    assert!(e.unwrap_err().to_string().contains("/nonexistent/ca.crt"));
}

/// A pod of a Deis node: (namespace, pod, container, labels).
type NodePod = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)]);

const NODE: &[NodePod] = &[
    ("foo", "foo-v2-web-2ggow", "foo-web", DEIS_APP),
    (
        "deis",
        "deis-controller-3195826347-v7wbe",
        "deis-controller",
        &[("app", "deis-controller"), ("heritage", "deis")],
    ),
    ("deis", "deis-router-1930478716-iy5ff", "deis-router", &[("app", "deis-router"), ("heritage", "deis")]),
    (
        "deis",
        "deis-builder-574483744-l4x4m",
        "deis-builder",
        &[("app", "deis-builder"), ("heritage", "deis")],
    ),
    ("monitoring", "grafana-1", "grafana", &[("app", "grafana"), ("heritage", "helm")]),
    ("kube-system", "kube-dns-v20-1", "kubedns", &[("k8s-app", "kube-dns")]),
];

/// What the agent does per file: wait (bounded) for the pod's metadata, classify with what is
/// known. Returns (kind, app label, pod_id, by_namespace) per pod of [`NODE`].
async fn classify_node(meta: &PodMetadata) -> Vec<(Kind, Option<String>, String, bool)> {
    let classifier = Classifier::new(Registry::builtin().unwrap(), true);
    let mut out = Vec::new();
    for (ns, pod, container, _) in NODE {
        let lookup = meta.resolve(&PodKey::new(*ns, *pod)).await;
        let known = match &lookup {
            Lookup::Known(m) => Some(Arc::clone(m)),
            _ => None,
        };
        let c = ContainerRef {
            pod: (*pod).into(),
            namespace: (*ns).into(),
            container: (*container).into(),
            container_id: "6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f".into(),
            pod_uid: None,
            cut: false,
        };
        let got = classifier.classify(&c, known.as_deref());
        out.push((got.kind, got.app().map(str::to_owned), got.pod_id.clone(), got.by_namespace));
    }
    out
}

#[tokio::test]
async fn classification_with_the_api_up_down_and_slow() {
    let api = FakeKubeApi::start().await;
    for (i, (ns, pod, container, labels)) in NODE.iter().enumerate() {
        api.add_pod(ns, pod, &format!("uid-{i}"), labels, container);
    }
    let app = |a: &str| Some(a.to_owned());
    // Up: the old plugin's rules on the labels.
    let up = start(&settings(api.url()));
    assert_eq!(
        classify_node(&up.meta).await,
        [
            (Kind::App, app("foo"), "uid-0".into(), false),
            (Kind::Controller, app("deis-controller"), "uid-1".into(), false),
            (Kind::Router, app("deis-router"), "uid-2".into(), false),
            (Kind::Other, app("deis-builder"), "uid-3".into(), false),
            (Kind::Other, app("grafana"), "uid-4".into(), false),
            (Kind::Other, None, "uid-5".into(), false),
        ]
    );
    // Down, and slow past metadata_wait: by name and namespace, no pod_id. Every namespace but
    // deis and kube-system is an app named after it, grafana's too.
    let by_namespace = [
        (Kind::App, app("foo"), String::new(), true),
        (Kind::Controller, None, String::new(), false),
        (Kind::Router, None, String::new(), false),
        (Kind::Other, None, String::new(), false),
        (Kind::App, app("monitoring"), String::new(), true),
        (Kind::Other, None, String::new(), false),
    ];
    let down = start(&settings(closed_port_url().await));
    assert_eq!(classify_node(&down.meta).await, by_namespace);
    api.set_mode(Mode::Slow(Duration::from_secs(3)));
    let slow = start(&KubeSettings { metadata_wait: Duration::from_millis(100), ..settings(api.url()) });
    let began = Instant::now();
    assert_eq!(classify_node(&slow.meta).await, by_namespace);
    assert!(began.elapsed() < Duration::from_millis(100 * NODE.len() as u64 + 500), "{:?}", began.elapsed());
}

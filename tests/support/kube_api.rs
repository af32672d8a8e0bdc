//! A fake Kubernetes API server: `GET /api/v1/namespaces/{ns}/pods/{name}` answered with pod
//! objects in the real API's JSON shape (kind, apiVersion, ObjectMeta with ownerReferences and
//! managedFields, PodSpec, PodStatus with container statuses, which the client must skip), and
//! errors as the API writes them (`Status` objects; a plain `404 page not found` for paths the
//! API does not serve). HTTP/1.1 by hand on an ephemeral loopback port, keep-alive, plain or
//! TLS with the test certificates of `testdata/tls/`.
//!
//! Modes: [`Mode::Up`], [`Mode::Slow`] (answers after a delay), [`Mode::NotFound`] (every pod
//! 404), [`Mode::ServerError`] (500); "down" is [`closed_port_url`]. It records every request
//! (path, `Authorization`) and the most requests it was answering at once. With
//! [`FakeKubeApi::require_token`] it answers 401 to any other bearer token.
//!
//! Include it with `#[path = "support/kube_api.rs"] mod kube_api;`. It uses tokio timers
//! (for [`Mode::Slow`]), so it runs on real time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// How the server answers pod requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Answers as [`Mode::Up`] after this delay.
    Slow(Duration),
    /// Every pod is missing.
    NotFound,
    /// 500 with an `InternalError` Status.
    ServerError,
}

#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Debug)]
struct State {
    pods: HashMap<(String, String), Value>,
    mode: Mode,
    token: Option<String>,
    requests: Vec<SeenRequest>,
    answering: usize,
    max_answering: usize,
}

pub struct FakeKubeApi {
    addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL on which nothing listens: the API is down (connections are refused).
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

pub fn test_tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls")
}

/// A pod object as the API serves it, with the labels given.
pub fn pod_object(namespace: &str, name: &str, uid: &str, labels: &[(&str, &str)], container: &str) -> Value {
    let labels: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": format!("{}-", name.rsplit_once('-').map_or(name, |(p, _)| p)),
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "550088",
            "creationTimestamp": "2016-05-31T01:30:12Z",
            "labels": labels,
            "annotations": {"kubernetes.io/config.seen": "2016-05-31T01:30:12.000000000Z"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"),
                "uid": "22a5a8be-7cee-42cd-a6c3-02b620f4ce88", "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2016-05-31T01:30:12Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}
            }]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-wcrh6", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [{
                "name": container, "image": "quay.io/deis/example:v2", "imagePullPolicy": "IfNotPresent",
                "resources": {}, "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "name": "kube-api-access-wcrh6", "readOnly": true}]
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "nodeName": "node-1", "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null,
                            "lastTransitionTime": "2016-05-31T01:30:20Z"}],
            "hostIP": "10.240.0.4", "podIP": "10.164.1.7", "podIPs": [{"ip": "10.164.1.7"}],
            "startTime": "2016-05-31T01:30:12Z",
            "containerStatuses": [{
                "name": container, "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": "2016-05-31T01:30:19Z"}}, "lastState": {},
                "image": "quay.io/deis/example:v2", "imageID": "docker-pullable://quay.io/deis/example@sha256:0f1e",
                "containerID": "docker://6a9069435788a05531ee2b9afbcdc73a22018af595f3203cb67e06f50103bf5f"
            }],
            "qosClass": "BestEffort"
        }
    })
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeKubeApi {
    /// Plain HTTP.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// HTTPS with `testdata/tls/server.pem` (`localhost`, 127.0.0.1), signed by its `ca.pem`.
    pub async fn start_tls() -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = test_tls_dir();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .and_then(|certs| certs.collect())
            .expect("test certificate");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("test key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("certificate and key match");
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            pods: HashMap::new(),
            mode: Mode::Up,
            token: None,
            requests: Vec::new(),
            answering: 0,
            max_answering: 0,
        }));
        let is_tls = tls.is_some();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, state).await;
                            }
                        }
                        None => serve(tcp, state).await,
                    }
                });
            }
        });
        Self { addr, tls: is_tls, state, task }
    }

    /// The base URL (`https://localhost:port` under TLS, to match the certificate's name).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_pod(&self, namespace: &str, name: &str, uid: &str, labels: &[(&str, &str)], container: &str) {
        let object = pod_object(namespace, name, uid, labels, container);
        self.lock().pods.insert((namespace.to_owned(), name.to_owned()), object);
    }

    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.lock().pods.remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Requests without `Authorization: Bearer <token>` get 401 (`None`: any request is served).
    pub fn require_token(&self, token: Option<&str>) {
        self.lock().token = token.map(str::to_owned);
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().requests.clone()
    }

    /// Requests for this pod's path so far.
    pub fn requests_for(&self, namespace: &str, name: &str) -> usize {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        self.lock().requests.iter().filter(|r| r.path == path).count()
    }

    /// The most requests being answered at once so far.
    pub fn max_answering(&self) -> usize {
        self.lock().max_answering
    }
}

/// Serves requests on one connection until the client closes it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 << 10 {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or_default().split(' ');
        let method = start.next().unwrap_or_default().to_owned();
        let path = start.next().unwrap_or_default().to_owned();
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_owned());
        let (mode, required) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(SeenRequest {
                method: method.clone(),
                path: path.clone(),
                authorization: authorization.clone(),
            });
            s.answering += 1;
            s.max_answering = s.max_answering.max(s.answering);
            (s.mode.clone(), s.token.clone())
        };
        if let Mode::Slow(delay) = mode {
            tokio::time::sleep(delay).await;
        }
        let (status, content_type, body) = answer(&state, &method, &path, authorization, required, &mode);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let written = stream.write_all(response.as_bytes()).await;
        state.lock().unwrap_or_else(|e| e.into_inner()).answering -= 1;
        if written.is_err() {
            return;
        }
    }
}

fn answer(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    authorization: Option<String>,
    required: Option<String>,
    mode: &Mode,
) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    if let Some(token) = required {
        if authorization.as_deref() != Some(format!("Bearer {token}").as_str()) {
            return (401, JSON, status_object(401, "Unauthorized", "Unauthorized").to_string());
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let (namespace, name) = match parts.as_slice() {
        ["", "api", "v1", "namespaces", ns, "pods", name] if method == "GET" => (*ns, *name),
        // What the API server says for a path it does not serve.
        _ => return (404, "text/plain; charset=utf-8", "404 page not found\n".to_owned()),
    };
    match mode {
        Mode::ServerError => {
            (500, JSON, status_object(500, "InternalError", "etcdserver: request timed out").to_string())
        }
        Mode::NotFound => not_found(name),
        Mode::Up | Mode::Slow(_) => {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            match s.pods.get(&(namespace.to_owned(), name.to_owned())) {
                Some(pod) => (200, JSON, pod.to_string()),
                None => not_found(name),
            }
        }
    }
}

fn not_found(name: &str) -> (u16, &'static str, String) {
    let mut status = status_object(404, "NotFound", &format!("pods \"{name}\" not found"));
    status["details"] = json!({"name": name, "kind": "pods"});
    (404, "application/json", status.to_string())
}

//! The kubelet summary collector against a local HTTPS server that serves
//! `testdata/kubelet/summary.json` at `/stats/summary` with the test certificate of
//! `testdata/tls/` (CN localhost, SAN 127.0.0.1, signed by the test CA), and checks the
//! bearer token as the kubelet's authenticated port does. Also the read-only HTTP port (no
//! token may be sent), an untrusted certificate, `insecure_skip_verify`, a wrong token and
//! answers that are not a summary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logmill::config::RawConfig;
use logmill::host::{Collector, OnceReport};
use logmill::metrics::line_protocol::parse_lines;
use logmill::metrics::point::{FieldValue, Point};
use logmill::telemetry::Telemetry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// The settings of a config file holding `text`, as `--config FILE` reads them.
fn settings_from(text: &str) -> logmill::config::Settings {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    RawConfig::load(Some(file.path())).unwrap().validate().unwrap()
}

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.test-service-account";

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

/// What the fake kubelet saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// A local kubelet stand-in: HTTPS (test certificate) or plain HTTP, answering `body` at
/// `/stats/summary` to requests with the right token (or to any request without TLS, like the
/// read-only port).
struct FakeKubelet {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(testdata("tls/server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(testdata("tls/server.key")).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn start_kubelet(tls: bool, body: Vec<u8>) -> FakeKubelet {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tls.then(tls_acceptor);
    let record = seen.clone();
    let body = Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (record, body, acceptor) = (record.clone(), body.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    // A client that refuses the certificate ends here, having sent nothing.
                    Some(a) => {
                        if let Ok(stream) = a.accept(tcp).await {
                            answer(stream, &record, &body, true).await;
                        }
                    }
                    None => answer(tcp, &record, &body, false).await,
                }
            });
        }
    });
    FakeKubelet { addr, seen }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: &Mutex<Vec<Seen>>,
    body: &[u8],
    tls: bool,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
    let authorization = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().unwrap().push(Seen { path: path.clone(), authorization: authorization.clone() });
    let authorized = !tls || authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let (status, body): (&str, &[u8]) = match (path.as_str(), authorized) {
        ("/stats/summary", true) => ("200 OK", body),
        ("/stats/summary", false) => ("401 Unauthorized", b"Unauthorized"),
        _ => ("404 Not Found", b"404 page not found"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// Runs `collect --once` with only the kubelet collector and `kubelet` as its table.
async fn collect(kubelet: &str) -> (OnceReport, Vec<Point>) {
    let text =
        format!("host = \"node-1\"\n[collect]\ninputs = []\n[collect.kubelet]\ntimeout_ms = 5000\n{kubelet}");
    let settings = settings_from(&text);
    let collector = Collector::new(&settings.collect, "node-1", &Telemetry::default()).unwrap();
    assert_eq!(collector.input_names(), ["kubernetes"]);
    let report = tokio::time::timeout(Duration::from_secs(30), collector.once()).await.unwrap();
    let body: Vec<u8> = report.batches.iter().flat_map(|b| b.body.to_vec()).collect();
    let points = parse_lines(&body).map(|(_, p)| p.expect("valid line protocol")).collect();
    (report, points)
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn int(p: &Point, field: &str) -> Option<i64> {
    match p.field_value(field) {
        Some(FieldValue::Int(v)) => Some(*v),
        None => None,
        other => panic!("{field}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_service_account_token_and_cluster_ca() {
    let kubelet = start_kubelet(true, std::fs::read(testdata("kubelet/summary.json")).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), TOKEN);
    let (report, points) = collect(&format!(
        "url = \"https://localhost:{}\"\ntoken_file = \"{}\"\nca_file = \"{}\"\n",
        kubelet.addr.port(),
        token.display(),
        testdata("tls/ca.pem").display()
    ))
    .await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let seen = kubelet.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/stats/summary");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the token, trimmed"
    );

    // What `testdata/kubelet/summary.json` holds (see its README): 3 system containers, the
    // node, 4 pod containers, 3 volumes, 3 pod networks (one pod is on the host network).
    assert_eq!(points.len(), 14);
    assert!(points.iter().all(|p| p.tag_value("host") == Some("node-1")));
    assert!(points.iter().all(|p| p.timestamp_ns == Some(report.batches[0].timestamp_ns)), "one timestamp");
    let node = points.iter().find(|p| p.measurement == "kubernetes_node").unwrap();
    assert_eq!(node.tag_value("node_name"), Some("node-1"));
    assert_eq!(int(node, "cpu_usage_nanocores"), Some(391232561));
    assert_eq!(int(node, "memory_working_set_bytes"), Some(3301425152));
    let fresh = points
        .iter()
        .find(|p| {
            p.measurement == "kubernetes_pod_container" && p.tag_value("container_name") == Some("foo-web")
        })
        .unwrap();
    assert_eq!(int(fresh, "cpu_usage_nanocores"), None, "missing in the API: left out, not 0");
    assert_eq!(int(fresh, "memory_working_set_bytes"), Some(9203712));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_nothing_is_sent() {
    let kubelet = start_kubelet(true, std::fs::read(testdata("kubelet/summary.json")).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), TOKEN);
    // No CA: the built-in web roots, which never signed the test certificate.
    let (report, points) = collect(&format!(
        "url = \"https://127.0.0.1:{}\"\ntoken_file = \"{}\"\nca_file = \"\"\n",
        kubelet.addr.port(),
        token.display()
    ))
    .await;
    assert!(points.is_empty());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].1.reason, "http");
    assert!(kubelet.seen.lock().unwrap().is_empty(), "no request, so no token, reached an unverified server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_a_self_signed_kubelet() {
    let kubelet = start_kubelet(true, std::fs::read(testdata("kubelet/summary.json")).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), TOKEN);
    let (report, points) = collect(&format!(
        "url = \"https://127.0.0.1:{}\"\ntoken_file = \"{}\"\nca_file = \"\"\ninsecure_skip_verify = true\n",
        kubelet.addr.port(),
        token.display()
    ))
    .await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(points.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_reported_problem() {
    let kubelet = start_kubelet(true, std::fs::read(testdata("kubelet/summary.json")).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "expired");
    let (report, points) = collect(&format!(
        "url = \"https://127.0.0.1:{}\"\ntoken_file = \"{}\"\nca_file = \"{}\"\n",
        kubelet.addr.port(),
        token.display(),
        testdata("tls/ca.pem").display()
    ))
    .await;
    assert!(points.is_empty());
    assert_eq!(report.problems[0].1.reason, "http");
    assert!(report.problems[0].1.detail.contains("401"), "{:?}", report.problems);
    // A token file that cannot be read: no request at all.
    let (report, _) = collect(&format!(
        "url = \"https://127.0.0.1:{}\"\ntoken_file = \"{}\"\nca_file = \"{}\"\n",
        kubelet.addr.port(),
        dir.path().join("missing").display(),
        testdata("tls/ca.pem").display()
    ))
    .await;
    assert_eq!(report.problems[0].1.reason, "token_unreadable");
    assert_eq!(kubelet.seen.lock().unwrap().len(), 1, "only the first request was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_port_gets_no_token() {
    let kubelet = start_kubelet(false, std::fs::read(testdata("kubelet/summary.json")).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), TOKEN);
    let (report, points) = collect(&format!(
        "url = \"http://127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
        kubelet.addr.port(),
        token.display()
    ))
    .await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(points.len(), 14);
    let seen = kubelet.seen.lock().unwrap().clone();
    assert_eq!(seen[0].authorization, None, "a credential never goes over plain HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_not_a_summary_are_problems() {
    for (body, reason) in [
        (&b"<html>gateway</html>"[..], "bad_json"),
        (b"{\"node\": {\"nodeName\": \"n\", \"cpu\": {\"usageNano", "bad_json"),
        (b"{\"pods\": []}", "bad_json"),
        (b"{\"node\": {\"nodeName\": \"n\", \"cpu\": {\"usageNanoCores\": \"many\", \"usageCoreNanoSeconds\": 5}}}", "odd_value"),
    ] {
        let kubelet = start_kubelet(false, body.to_vec()).await;
        let (report, points) = collect(&format!("url = \"http://127.0.0.1:{}\"\n", kubelet.addr.port())).await;
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert_eq!(report.problems[0].1.reason, reason, "{}", String::from_utf8_lossy(body));
        if reason == "odd_value" {
            assert_eq!(points.len(), 1, "the node, with the field that is a number");
            assert_eq!(int(&points[0], "cpu_usage_core_nanoseconds"), Some(5));
        }
    }
}

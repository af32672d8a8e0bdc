//! The Kubernetes API client: one request, `GET /api/v1/namespaces/{ns}/pods/{name}`, with the
//! service account's bearer token (re-read as it rotates) over HTTPS with the cluster's CA.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::cache::PodKey;
use super::pod::{parse_pod, PodError, PodMeta};
use super::KubeSettings;

/// Largest pod object read. Pods with long `managedFields` and many containers reach tens of
/// KiB; a cap keeps a broken or hostile answer from growing memory without bound.
const MAX_POD_BYTES: usize = 4 << 20;
/// Largest error answer read for its message.
const MAX_ERROR_BYTES: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    #[error("kubernetes.ca_file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why a fetch failed. Every one leaves the pod's metadata unknown for now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("request to the Kubernetes API failed")]
    Http(#[source] reqwest::Error),
    #[error("the Kubernetes API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the Kubernetes API's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Pod(#[from] PodError),
    #[error("`{0}` is not a name the Kubernetes API can be asked about")]
    InvalidName(String),
}

impl FetchError {
    /// A short label for the `outcome` of `logmill_kube_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            FetchError::Http(e) if e.is_timeout() => "timeout",
            FetchError::Http(e) if e.is_connect() => "connect",
            FetchError::Http(_) => "http",
            FetchError::Status { status, .. } if *status >= 500 => "server_error",
            FetchError::Status { .. } => "client_error",
            FetchError::TooLarge(_) | FetchError::Pod(_) => "bad_answer",
            FetchError::InvalidName(_) => "invalid_name",
        }
    }
}

#[derive(Debug)]
pub(crate) struct KubeClient {
    http: reqwest::Client,
    base: String,
    token_file: Option<PathBuf>,
    token_reload: Duration,
    token: Mutex<Token>,
}

#[derive(Debug, Default)]
struct Token {
    value: Option<String>,
    read_at: Option<Instant>,
}

impl KubeClient {
    pub(crate) fn new(settings: &KubeSettings) -> Result<Self, KubeError> {
        let mut http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .pool_max_idle_per_host(settings.max_concurrent_requests);
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|source| KubeError::CaFile { path: path.display().to_string(), source })?;
            // The cluster's CA alone, as client-go trusts it: a public CA has no business
            // vouching for the API server.
            http = http.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        if settings.insecure_skip_verify {
            http = http.danger_accept_invalid_certs(true);
        }
        Ok(Self {
            http: http.build()?,
            base: settings.api_url.trim_end_matches('/').to_owned(),
            token_file: settings.token_file.clone(),
            token_reload: settings.token_reload,
            token: Mutex::new(Token::default()),
        })
    }

    /// The pod's metadata, `Ok(None)` when the API says there is no such pod.
    pub(crate) async fn get_pod(&self, key: &PodKey) -> Result<Option<PodMeta>, FetchError> {
        for name in [&key.namespace, &key.pod] {
            // URL parsing resolves `.` and `..` segments (escaped or not): such a name would
            // ask about another path.
            if name.is_empty() || name.bytes().all(|b| b == b'.') {
                return Err(FetchError::InvalidName(name.clone()));
            }
        }
        let url = format!(
            "{}/api/v1/namespaces/{}/pods/{}",
            self.base,
            path_segment(&key.namespace),
            path_segment(&key.pod)
        );
        let mut reloaded = false;
        loop {
            let token = self.token(reloaded).await;
            let mut request = self.http.get(&url).header(reqwest::header::ACCEPT, "application/json");
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.map_err(FetchError::Http)?;
            let status = response.status().as_u16();
            match status {
                200 => return Ok(Some(parse_pod(&read_capped(response, MAX_POD_BYTES).await?)?)),
                // A bound service-account token expires and kubelet writes its successor to
                // the same file: read it again at once and retry, once.
                401 if !reloaded && self.token_file.is_some() => reloaded = true,
                _ => {
                    let body = read_capped(response, MAX_ERROR_BYTES).await.unwrap_or_default();
                    let answer = serde_json::from_slice::<StatusObject>(&body).ok();
                    // Only the API's own `NotFound` Status says the pod does not exist; any
                    // other 404 is a wrong URL or a proxy, and must not make pods "absent".
                    if status == 404 && answer.as_ref().is_some_and(|a| a.reason == "NotFound") {
                        return Ok(None);
                    }
                    let message = match answer {
                        Some(a) if !a.message.is_empty() => a.message,
                        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned(),
                    };
                    return Err(FetchError::Status { status, message });
                }
            }
        }
    }

    /// The bearer token, read again when older than `token_reload` (or `force`). A token
    /// file that cannot be read sends no token (the API then answers 401 or 403, reported
    /// with each failed lookup) rather than stopping anything.
    async fn token(&self, force: bool) -> Option<String> {
        let path = self.token_file.as_ref()?;
        let now = Instant::now();
        {
            // A std mutex: held for a field copy, never across an await.
            let token = self.token.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = token.read_at.is_some_and(|at| now.duration_since(at) < self.token_reload);
            if fresh && !force {
                return token.value.clone();
            }
        }
        let value = match tokio::fs::read_to_string(path).await {
            Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the Kubernetes API token");
                None
            }
        };
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        *token = Token { value: value.clone(), read_at: Some(now) };
        value
    }
}

/// The part of the API's `Status` object (its answer to errors) that says what went wrong.
#[derive(serde::Deserialize)]
struct StatusObject {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, FetchError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Http)? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Percent-encodes a path segment. Names from file names are DNS names and pass unchanged;
/// anything else (a name given on a command line) cannot change the request's path.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        assert_eq!(path_segment("foo-v2-web-2ggow"), "foo-v2-web-2ggow");
        assert_eq!(path_segment("a.b"), "a.b");
        assert_eq!(path_segment("../x?y=1"), "..%2Fx%3Fy%3D1");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}

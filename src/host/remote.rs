//! The two inputs that ask an HTTP API: the kubelet's `/stats/summary` and nsqd's `/stats`.
//! Requests carry timeouts (a kubelet that hangs costs its input one cycle, never the
//! others) and answers are read up to a size cap.

use std::path::Path;

use reqwest::Url;

use super::read::Gathered;
use super::{kubelet, nsq_stats, KubeletSettings, NsqStatsSettings, Problem};

/// The largest answer read. A kubelet's summary grows with its pods (a few KiB each) and an
/// nsqd's stats with its clients; 64 MiB is far beyond either on a real node, and bounds what a
/// broken endpoint can make this process hold.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Why an HTTP input could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    #[error("reading CA file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("CA file {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(String),
}

fn describe(error: &reqwest::Error) -> String {
    let mut s = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// GET `url`, the body of a 200 answer, or the problem.
async fn fetch(client: &reqwest::Client, url: Url, bearer: Option<&str>) -> Result<Vec<u8>, Problem> {
    let mut request = client.get(url.clone()).header("Accept", "application/json");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| Problem::new("http", format!("{url}: {}", describe(&e.without_url()))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Problem::new("http", format!("{url} answered HTTP {status}")));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Problem::new(
                        "http",
                        format!("{url}: answer larger than {MAX_ANSWER_BYTES} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Problem::new("http", format!("{url}: {}", describe(&e.without_url())))),
        }
    }
}

/// Reads the certificates of a PEM file (a cluster CA file may hold several during a CA
/// rotation).
fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, RemoteError> {
    let pem = std::fs::read(path)
        .map_err(|source| RemoteError::CaFile { path: path.display().to_string(), source })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| RemoteError::BadCa { path: path.display().to_string(), reason: describe(&e) })?;
    if certs.is_empty() {
        return Err(RemoteError::BadCa {
            path: path.display().to_string(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// `/stats/summary` of one kubelet.
#[derive(Debug, Clone)]
pub(crate) struct KubeletInput {
    settings: KubeletSettings,
    client: reqwest::Client,
    summary_url: Url,
}

impl KubeletInput {
    pub fn new(settings: KubeletSettings) -> Result<Self, RemoteError> {
        let mut builder = reqwest::Client::builder().timeout(settings.timeout);
        if settings.url.scheme() != "https" {
            // The read-only port: no TLS, so no CA to read.
        } else if settings.insecure_skip_verify {
            // Explicitly asked for: kubelets serve self-signed certificates unless
            // `serverTLSBootstrap` is on, and then only the cluster's CA could verify them.
            builder = builder.danger_accept_invalid_certs(true);
        } else if let Some(ca) = &settings.ca_file {
            // The cluster CA is the only authority a kubelet's certificate may come from.
            builder = builder.tls_built_in_root_certs(false);
            for cert in load_ca(ca)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| RemoteError::Client(describe(&e)))?;
        let mut summary_url = settings.url.clone();
        let path = format!("{}/stats/summary", settings.url.path().trim_end_matches('/'));
        summary_url.set_path(&path);
        Ok(Self { settings, client, summary_url })
    }

    pub async fn gather(&self) -> Gathered {
        let mut g = Gathered::default();
        // The token goes only over TLS: the read-only port takes none, and a credential
        // never travels in clear text. Read on every request: projected service-account
        // tokens are rotated under a running pod.
        let token = match (&self.settings.token_file, self.summary_url.scheme()) {
            (Some(path), "https") => match std::fs::read_to_string(path) {
                Ok(t) => Some(t.trim().to_owned()),
                Err(e) => {
                    g.problems.push(Problem::new("token_unreadable", format!("{}: {e}", path.display())));
                    return g;
                }
            },
            _ => None,
        };
        let body = match fetch(&self.client, self.summary_url.clone(), token.as_deref()).await {
            Ok(b) => b,
            Err(p) => {
                g.problems.push(p);
                return g;
            }
        };
        match kubelet::summary_points(&body) {
            Ok(out) => {
                if out.odd_values > 0 {
                    g.problems.push(Problem::new(
                        "odd_value",
                        format!(
                            "{}: {} value(s) not unsigned integers, left out",
                            self.summary_url, out.odd_values
                        ),
                    ));
                }
                g.points = out.points;
            }
            Err(e) => g.problems.push(Problem::new("bad_json", format!("{}: {e}", self.summary_url))),
        }
        g
    }
}

/// `/stats?format=json` of every configured nsqd, asked concurrently.
#[derive(Debug, Clone)]
pub(crate) struct NsqStatsInput {
    client: reqwest::Client,
    endpoints: Vec<(Url, String)>,
}

impl NsqStatsInput {
    pub fn new(settings: NsqStatsSettings) -> Result<Self, RemoteError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| RemoteError::Client(describe(&e)))?;
        let endpoints = settings
            .endpoints
            .iter()
            .map(|base| {
                let mut url = base.clone();
                let path = format!("{}/stats", base.path().trim_end_matches('/'));
                url.set_path(&path);
                url.set_query(Some("format=json"));
                // Telegraf's `server_host` is the URL's host:port as configured.
                let host = match (base.host_str(), base.port_or_known_default()) {
                    (Some(h), Some(p)) if base.port().is_some() => format!("{h}:{p}"),
                    (Some(h), _) => h.to_owned(),
                    _ => String::new(),
                };
                (url, host)
            })
            .collect();
        Ok(Self { client, endpoints })
    }

    pub async fn gather(&self) -> Gathered {
        let mut set = tokio::task::JoinSet::new();
        for (index, (url, host)) in self.endpoints.iter().cloned().enumerate() {
            let client = self.client.clone();
            set.spawn(async move {
                let answer = fetch(&client, url.clone(), None).await;
                (index, url, host, answer)
            });
        }
        let mut answers = Vec::with_capacity(self.endpoints.len());
        while let Some(joined) = set.join_next().await {
            // A request task only panics on a bug; its endpoint then simply gives nothing.
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        // Configuration order, whatever order the answers came in.
        answers.sort_by_key(|(index, ..)| *index);
        let mut g = Gathered::default();
        for (_, url, host, answer) in answers {
            match answer {
                Ok(body) => match nsq_stats::stats_points(&body, &host) {
                    Ok(out) => {
                        if out.odd_values > 0 {
                            g.problems.push(Problem::new(
                                "odd_value",
                                format!("{url}: {} value(s) not integers, left out", out.odd_values),
                            ));
                        }
                        g.points.extend(out.points);
                    }
                    Err(e) => g.problems.push(Problem::new("bad_json", format!("{url}: {e}"))),
                },
                Err(p) => g.problems.push(p),
            }
        }
        g
    }
}

//! Kubernetes metadata: which container a log file belongs to ([`names`], from its path), and
//! what the API says about its pod ([`pod`], [`cache`], [`metadata`]).
//!
//! [`names`], [`pod`] and [`cache`] are pure; [`client`] is the HTTP client and [`metadata`]
//! runs it in the background behind a never-blocking [`PodMetadata::lookup`].

use std::path::PathBuf;
use std::time::Duration;

pub mod cache;
pub mod client;
pub mod metadata;
pub mod names;
pub mod pod;

pub use cache::{CacheSettings, Lookup, PodKey};
pub use metadata::PodMetadata;
pub use names::ContainerRef;
pub use pod::PodMeta;

/// Where the service account's files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The validated `[kubernetes]` settings of an agent that asks the API.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// `https://host:port`, no trailing `/`.
    pub api_url: String,
    /// Bearer token file, read again every `token_reload` (bound tokens rotate).
    pub token_file: Option<PathBuf>,
    pub token_reload: Duration,
    /// PEM CA bundle to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub cache: CacheSettings,
    /// How long a record may wait for its pod's metadata, from the pod's first lookup.
    pub metadata_wait: Duration,
}

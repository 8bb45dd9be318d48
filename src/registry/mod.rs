//! Registry HTTP client: the OCI distribution API over reqwest, with authentication (anonymous, basic,
//! bearer-token challenge), retries with backoff, per-registry request caps and TLS settings.
//! It knows nothing about Kubernetes or about what an image is made of; `copy` builds on it.
//!
//! * `transport`: TLS clients (one per TLS setting), the scheme decided once per host by `GET /v2/`
//!   (HTTPS verified by default; insecure and loopback hosts try unverified HTTPS, then plain HTTP; a
//!   host with a CA file uses verified HTTPS with that CA plus the system roots), the retry loop,
//!   the 401 → authenticate → resend step, the per-host cap and Docker Hub's pull quota.
//! * `auth`: `WWW-Authenticate` parsing, scopes, token responses, the token cache.
//! * `retry`: what is retried and how long to wait.
//! * `ops`: the distribution operations (manifests, blobs, uploads, mounts).
//! * [`credentials`]: where credentials come from (explicit, configuration, Docker `config.json`).
//!
//! Nothing secret ever appears in an error or a log line: credentials live in [`Secret`]s, headers
//! carrying them are marked sensitive, and token-service bodies are never quoted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::reference::Digest;
use crate::secret::Secret;

mod auth;
pub mod credentials;
mod error;
mod ops;
mod proto;
mod retry;
mod tags;
mod tls;
mod transport;

#[cfg(test)]
mod tests;

pub use credentials::{Credentials, DockerAuths, parse_docker_config_json};
pub(crate) use tls::load_ca_file;

/// Manifest media types copycat sends in `Accept` (all of them, always: distribution 2.8 answers 404
/// for OCI content by tag, and converts Docker v2 to schema1, when a type is missing).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, RegistryError>>;

/// Opens a fresh stream of a blob's bytes; called again for each upload attempt, since a stream
/// cannot be replayed.
pub type BlobSource<'a> = &'a (dyn Fn() -> BoxFuture<'static, Result<ByteStream, RegistryError>> + Send + Sync);

/// What failed, with enough context to log it; never contains credentials.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request URL (no credentials in it).
        url: String,
        /// Status code.
        status: u16,
        /// Registry error codes/messages from the body, trimmed.
        detail: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// Authentication failed (credentials refused, or the token service failed).
    #[error("authentication to {registry} failed: {detail}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What went wrong.
        detail: String,
    },
    /// Connection-level failure: refused, reset, TLS, timeout, body cut short.
    #[error("{context}: {source}")]
    Transport {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bytes do not match the digest or size they were requested by.
    #[error("content of {digest} does not match: {detail}")]
    DigestMismatch {
        /// The expected digest.
        digest: String,
        /// What differed.
        detail: String,
    },
    /// The registry's pull quota (Docker Hub `ratelimit-remaining`) is exhausted.
    #[error("{registry}: pull rate limit exhausted; retry after {retry_after:?}")]
    RateLimited {
        /// Registry host.
        registry: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// A response or setting copycat cannot use (e.g. a manifest over the size limit, a bad CA file).
    #[error("{0}")]
    Invalid(String),
}

/// Which end of a transfer failed: the source read from, or the registry written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reading the source (a registry, or one of its read mirrors).
    Source,
    /// Checking or writing the target.
    Target,
}

/// A failed blob upload ([`Registry::push_blob`]): the error and the side it happened on. A source
/// that stalls or breaks off while its bytes are streamed into the upload is the source's failure,
/// not the target's.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct UploadError {
    /// Which side failed.
    pub side: Side,
    /// What failed.
    pub error: RegistryError,
}

impl UploadError {
    /// A failure reading the source.
    pub fn at_source(error: RegistryError) -> UploadError {
        UploadError {
            side: Side::Source,
            error,
        }
    }

    /// A failure checking or writing the target.
    pub fn at_target(error: RegistryError) -> UploadError {
        UploadError {
            side: Side::Target,
            error,
        }
    }
}

impl RegistryError {
    /// Whether retrying the same request may succeed: connection errors, 408, 429, 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            RegistryError::Transport { .. } => true,
            _ => false,
        }
    }
}

/// How a registry client behaves; built from the configuration.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Timeout of each request until its response headers (blob bodies stream beyond it, bounded by
    /// a read timeout of the same length between chunks). `None`: no timeout.
    pub request_timeout: Option<Duration>,
    /// Attempts per request on retryable errors (at least 1).
    pub retry_attempts: u32,
    /// Base delay of the exponential backoff (with jitter); `Retry-After` wins when longer, capped.
    pub retry_backoff: Duration,
    /// Concurrent requests per registry host.
    pub max_concurrent_requests: usize,
    /// TLS and transport settings per registry host (lower-case `host[:port]`).
    pub hosts: HashMap<String, HostSettings>,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Default for ClientOptions {
    /// 60 s request timeout, 3 attempts from 500 ms backoff, 16 concurrent requests per host, no host settings.
    fn default() -> Self {
        ClientOptions {
            request_timeout: Some(Duration::from_secs(60)),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(500),
            max_concurrent_requests: 16,
            hosts: HashMap::new(),
            user_agent: concat!("copycat/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Transport settings for one registry host.
#[derive(Debug, Clone, Default)]
pub struct HostSettings {
    /// Allow plain HTTP and skip TLS verification.
    pub insecure: bool,
    /// Extra CA certificates (PEM) trusted for this host.
    pub ca_file: Option<PathBuf>,
}

/// Credentials for one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credential {
    /// No credentials.
    #[default]
    Anonymous,
    /// Username and password: sent as Basic, or to the token service in a bearer challenge.
    Basic {
        /// Username.
        username: String,
        /// Password.
        password: Secret,
    },
    /// A token sent as `Authorization: Bearer` without a token exchange.
    Bearer(Secret),
}

impl Credential {
    /// A short, non-reversible identifier of the credential (for cache keys, never for display).
    fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let text = match self {
            Credential::Anonymous => String::new(),
            Credential::Basic { username, password } => format!("basic\0{username}\0{}", password.expose()),
            Credential::Bearer(t) => format!("bearer\0{}", t.expose()),
        };
        let hash = sha2::Sha256::digest(text.as_bytes());
        hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Where credentials for a registry host come from.
pub trait CredentialProvider: Send + Sync {
    /// Credentials for `host` (lower-case `host[:port]`, Docker Hub as `docker.io`). Asked before
    /// every authorization, so a provider of expiring credentials (ECR tokens) can renew them in time.
    fn credential_for<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Credential, RegistryError>>;

    /// `refused` was refused by `host` (HTTP 401, or 403 after authenticating). Returns whether
    /// other credentials are now available, in which case the request is sent once more. Static
    /// credentials have nothing else to offer.
    fn renew<'a>(&'a self, host: &'a str, refused: &'a Credential) -> BoxFuture<'a, bool> {
        let _ = (host, refused);
        Box::pin(std::future::ready(false))
    }
}

/// A manifest's identity as a HEAD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Digest,
    /// `Content-Type`.
    pub media_type: String,
    /// `Content-Length`.
    pub size: u64,
}

/// A fetched manifest: its exact bytes, media type and (verified) digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The bytes as the registry serves them.
    pub bytes: Bytes,
    /// `Content-Type` of the response.
    pub media_type: String,
    /// sha256 of `bytes` (checked against `Docker-Content-Digest` and a digest reference).
    pub digest: Digest,
}

/// A blob being downloaded.
pub struct BlobDownload {
    /// `Content-Length`, when the registry sent one.
    pub size: Option<u64>,
    /// The bytes, unverified (the caller verifies while streaming).
    pub stream: ByteStream,
}

/// Result of a cross-repository mount attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// The registry linked the blob; nothing was transferred.
    Mounted,
    /// The registry declined (it opened an upload session, which was cancelled).
    NotMounted,
}

/// Counters of what the clients did, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent, by method (`GET`, `HEAD`, `PUT`, `POST`, `PATCH`, `DELETE`).
    pub requests: std::sync::Mutex<HashMap<&'static str, u64>>,
    /// Blob bytes uploaded.
    pub bytes_uploaded: std::sync::atomic::AtomicU64,
}

/// Clients for every registry copycat talks to, sharing connection pools, token caches and request caps.
#[derive(Clone)]
pub struct Registries {
    inner: Arc<RegistriesInner>,
}

struct RegistriesInner {
    options: ClientOptions,
    credentials: Arc<dyn CredentialProvider>,
    stats: Arc<Stats>,
    clients: tls::Clients,
    hosts: std::sync::Mutex<HashMap<String, Arc<transport::HostState>>>,
    tokens: auth::TokenCache,
}

/// A client for one registry host. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    host: String,
    parent: Registries,
    state: Arc<transport::HostState>,
    /// Credentials used instead of the provider's (a Pod's pull secret), and the key that keeps
    /// tokens obtained with them apart from everyone else's.
    credential: Option<(Credential, String)>,
    /// The repository about to be written: reads of it ask for `pull,push` up front.
    writing: Option<Arc<str>>,
}

impl Registries {
    /// Builds the clients; fails on unusable settings (e.g. an unreadable CA file), naming them.
    pub fn new(options: ClientOptions, credentials: Arc<dyn CredentialProvider>) -> Result<Registries, RegistryError> {
        let clients = tls::Clients::build(&options)?;
        Ok(Registries {
            inner: Arc::new(RegistriesInner {
                options,
                credentials,
                stats: Arc::default(),
                clients,
                hosts: Default::default(),
                tokens: Default::default(),
            }),
        })
    }

    /// The client for `host` (`docker.io` is reached at `registry-1.docker.io`). Clients for the same
    /// registry (Docker Hub under any of its names) share the scheme decision, the request cap, the
    /// authentication state and the rate-limit state.
    pub fn get(&self, host: &str) -> Registry {
        let host = host.to_ascii_lowercase();
        let key = crate::reference::canonical_host(&host);
        let state = {
            let mut hosts = self.inner.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(transport::HostState::new(&self.inner.options, &host)))
                .clone()
        };
        Registry {
            host,
            parent: self.clone(),
            state,
            credential: None,
            writing: None,
        }
    }

    /// What the clients did so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.inner.stats.clone()
    }
}

impl Registry {
    /// The same client authenticating with `credential` instead of the configured credentials.
    /// Scheme, request cap and rate-limit state stay shared; tokens obtained with `credential` are
    /// cached apart, so they serve only requests made with the same credential.
    pub fn with_credential(&self, credential: Credential) -> Registry {
        let key = format!("{}#{}", self.state.endpoint, credential.fingerprint());
        Registry {
            credential: Some((credential, key)),
            ..self.clone()
        }
    }

    /// The same client for writing `repo`: its reads of `repo` ask for `pull,push` access, so one
    /// token serves the reads that decide what to copy and the writes that follow, instead of a
    /// `pull` token first and a `pull,push` one at the first write.
    pub fn for_writing(&self, repo: &str) -> Registry {
        Registry {
            writing: Some(repo.into()),
            ..self.clone()
        }
    }

    /// The registry host as given (`docker.io`, `127.0.0.1:5000`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The last Docker Hub `ratelimit-remaining` this registry reported (any client of the host),
    /// `None` when it never sent one. While it is 0, manifest GETs fail fast with
    /// [`RegistryError::RateLimited`]; HEADs still go and clear the pause when they report more.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        self.state.ratelimit_remaining()
    }
}

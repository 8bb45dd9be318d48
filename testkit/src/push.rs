//! A tiny registry client for pushing test content byte-exact and reading it back.
//!
//! Every free function builds a fresh [`Client`]; in Token mode that means exactly one request
//! to the token server per call (keep that in mind when counting `token_requests()`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{Method, RequestBuilder, StatusCode};

use crate::image::{Blob, BlobSource, Image, MANIFEST_ACCEPT};
use crate::registry::{Registry, RegistryMode};
use crate::util::{percent_encode, sha256_digest};

/// `User-Agent` of testkit's client.
pub const USER_AGENT: &str = "copycat-testkit";

const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
const BLOB_TIMEOUT: Duration = Duration::from_secs(600);

/// A `reqwest::Client` that trusts the registry's test CA (if any) and nothing else, with no
/// proxy. Installs the ring crypto provider first. Useful for tests talking to a [`Registry`].
pub fn http_client(reg: &Registry) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = Vec::new();
    if let Some(ca) = reg.ca_pem_path() {
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        roots.push(reqwest::Certificate::from_pem(&pem)?);
    }
    reqwest::Client::builder()
        .no_proxy()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(5))
        .tls_certs_only(roots)
        .build()
        .context("building HTTP client")
}

/// Registry client bound to one [`Registry`], authenticating as its mode requires
/// (Basic credentials, or a bearer token from the token server, cached per repository).
pub struct Client {
    http: reqwest::Client,
    base: String,
    mode: RegistryMode,
    token_url: Option<String>,
    tokens: Mutex<HashMap<String, String>>,
    anonymous: bool,
}

impl Client {
    /// A client with the registry's own credentials.
    pub fn new(reg: &Registry) -> anyhow::Result<Client> {
        Ok(Client {
            http: http_client(reg)?,
            base: reg.url(),
            mode: reg.mode().clone(),
            token_url: reg.token_url(),
            tokens: Mutex::new(HashMap::new()),
            anonymous: false,
        })
    }

    /// A client that never authenticates (to check that anonymous access is refused).
    pub fn anonymous(reg: &Registry) -> anyhow::Result<Client> {
        Ok(Client {
            anonymous: true,
            ..Client::new(reg)?
        })
    }

    /// A client presenting `user:pass` instead of the registry's credentials.
    pub fn with_credentials(reg: &Registry, user: &str, pass: &str) -> anyhow::Result<Client> {
        let mode = match reg.mode() {
            RegistryMode::Basic { .. } => RegistryMode::basic(user, pass),
            RegistryMode::BasicTls { .. } => RegistryMode::basic_tls(user, pass),
            RegistryMode::Token { .. } => RegistryMode::token(user, pass),
            other => other.clone(),
        };
        Ok(Client {
            mode,
            ..Client::new(reg)?
        })
    }

    /// The same client addressing `base_url` (e.g. a [`crate::fault::FaultProxy`] in front of
    /// the registry) instead of the registry; credentials and token server are unchanged.
    pub fn with_base_url(mut self, base_url: &str) -> Client {
        self.base = base_url.trim_end_matches('/').to_owned();
        self
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// An authenticated request to `path` (starting with `/v2/`) or to an absolute URL.
    pub async fn request(&self, method: Method, repo: &str, path_or_url: &str) -> anyhow::Result<RequestBuilder> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let rb = self.http.request(method, url).timeout(SMALL_TIMEOUT);
        if self.anonymous {
            return Ok(rb);
        }
        Ok(match (&self.mode, self.mode.htpasswd_credentials()) {
            (RegistryMode::Token { .. }, _) => rb.bearer_auth(self.token(repo).await?),
            (_, Some((user, pass))) => rb.basic_auth(user, Some(pass)),
            (_, None) => rb,
        })
    }

    /// A bearer token for `repository:<repo>:pull,push` (cached per repository).
    pub async fn token(&self, repo: &str) -> anyhow::Result<String> {
        if let Some(t) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(repo) {
            return Ok(t.clone());
        }
        let (RegistryMode::Token { user, pass }, Some(url)) = (&self.mode, &self.token_url) else {
            anyhow::bail!("not a token-auth registry");
        };
        let scope = format!("repository:{repo}:pull,push");
        let url = format!(
            "{url}?service={}&scope={}",
            crate::token::SERVICE,
            percent_encode(&scope)
        );
        let resp = self
            .http
            .get(&url)
            .basic_auth(user, Some(pass))
            .timeout(SMALL_TIMEOUT)
            .send()
            .await
            .context("token request")?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "token server answered {status}");
        let body: serde_json::Value = resp.json().await.context("token response")?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("token response without token: {body}"))?
            .to_owned();
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(repo.to_owned(), token.clone());
        Ok(token)
    }

    /// Pushes `image` (blobs, children by digest, then the manifest under `tag`); returns the
    /// digest the registry reports, after checking it equals the image's own digest.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) -> anyhow::Result<String> {
        for child in &image.children {
            Box::pin(self.push_image(repo, &child.digest, child)).await?;
        }
        for blob in &image.blobs {
            self.push_blob(repo, blob).await?;
        }
        let digest = self
            .push_raw_manifest(repo, tag, &image.media_type, image.manifest.clone())
            .await?;
        anyhow::ensure!(
            digest == image.digest,
            "registry reported {digest} for manifest {}",
            image.digest
        );
        Ok(digest)
    }

    /// Uploads `blob` unless the registry already has it (HEAD), with POST + monolithic
    /// `PUT ?digest=`. Generated layers are streamed with a known `Content-Length`.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> anyhow::Result<()> {
        if self.blob_exists(repo, &blob.digest).await? {
            return Ok(());
        }
        let body = match &blob.source {
            BlobSource::Bytes(b) => reqwest::Body::from(b.clone()),
            BlobSource::Generated(spec) => {
                let spec = *spec;
                let (tx, rx) = tokio::sync::mpsc::channel::<anyhow::Result<Bytes>>(4);
                tokio::task::spawn_blocking(move || {
                    let r = spec.generate(|chunk| {
                        tx.blocking_send(Ok(Bytes::copy_from_slice(chunk)))
                            .map_err(|_| anyhow::anyhow!("upload aborted"))
                    });
                    if let Err(e) = r {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item.map_err(std::io::Error::other), rx))
                });
                reqwest::Body::wrap_stream(stream)
            }
        };
        self.upload(repo, &blob.digest, blob.size, body).await
    }

    /// Uploads arbitrary bytes as a blob; returns its digest.
    pub async fn push_raw_blob(&self, repo: &str, data: Bytes) -> anyhow::Result<String> {
        let digest = sha256_digest(&data);
        let size = data.len() as u64;
        self.upload(repo, &digest, size, reqwest::Body::from(data)).await?;
        Ok(digest)
    }

    /// Uploads `data` claiming it has `digest` (for hand-crafted failure cases: the registry
    /// is expected to refuse a wrong digest). Returns the final PUT status.
    pub async fn push_blob_claiming(&self, repo: &str, digest: &str, data: Bytes) -> anyhow::Result<StatusCode> {
        let location = self.start_upload(repo).await?;
        let size = data.len();
        let resp = self
            .put_upload(repo, &location, digest, size as u64, reqwest::Body::from(data))
            .await?;
        Ok(resp.status())
    }

    async fn start_upload(&self, repo: &str) -> anyhow::Result<String> {
        let resp = self
            .request(Method::POST, repo, &format!("/v2/{repo}/blobs/uploads/"))
            .await?
            .header(CONTENT_LENGTH, "0")
            .send()
            .await
            .context("starting upload")?;
        let status = resp.status();
        anyhow::ensure!(
            status == StatusCode::ACCEPTED,
            "POST upload answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        let location =
            header(resp.headers(), LOCATION.as_str()).ok_or_else(|| anyhow::anyhow!("upload without Location"))?;
        Ok(location)
    }

    async fn put_upload(
        &self,
        repo: &str,
        location: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> anyhow::Result<reqwest::Response> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", percent_encode(digest));
        self.request(Method::PUT, repo, &url)
            .await?
            .timeout(BLOB_TIMEOUT)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size.to_string())
            .body(body)
            .send()
            .await
            .context("uploading blob")
    }

    async fn upload(&self, repo: &str, digest: &str, size: u64, body: reqwest::Body) -> anyhow::Result<()> {
        let location = self.start_upload(repo).await?;
        let resp = self.put_upload(repo, &location, digest, size, body).await?;
        let status = resp.status();
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "PUT blob {digest} answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// PUTs raw manifest bytes under `reference` with `Content-Type: media_type`; returns the
    /// `Docker-Content-Digest` the registry answers.
    pub async fn push_raw_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: Bytes,
    ) -> anyhow::Result<String> {
        let resp = self
            .request(Method::PUT, repo, &format!("/v2/{repo}/manifests/{reference}"))
            .await?
            .header(CONTENT_TYPE, media_type)
            .body(data)
            .send()
            .await
            .context("pushing manifest")?;
        let status = resp.status();
        let digest = header(resp.headers(), "docker-content-digest");
        anyhow::ensure!(
            status == StatusCode::CREATED,
            "PUT manifest {repo}:{reference} answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        digest.ok_or_else(|| anyhow::anyhow!("manifest PUT without Docker-Content-Digest"))
    }

    /// `HEAD` of a manifest with the full `Accept` list: its `Docker-Content-Digest`, or
    /// `None` on 404.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> anyhow::Result<Option<String>> {
        let resp = self
            .request(Method::HEAD, repo, &format!("/v2/{repo}/manifests/{reference}"))
            .await?
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .context("HEAD manifest")?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => Ok(Some(
                header(resp.headers(), "docker-content-digest")
                    .ok_or_else(|| anyhow::anyhow!("HEAD manifest without Docker-Content-Digest"))?,
            )),
            s => anyhow::bail!("HEAD manifest {repo}:{reference} answered {s}"),
        }
    }

    /// `GET` of a manifest with the full `Accept` list: raw bytes and `Content-Type`.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> anyhow::Result<(Bytes, String)> {
        let resp = self
            .request(Method::GET, repo, &format!("/v2/{repo}/manifests/{reference}"))
            .await?
            .header(ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .context("GET manifest")?;
        let status = resp.status();
        anyhow::ensure!(
            status == StatusCode::OK,
            "GET manifest {repo}:{reference} answered {status}"
        );
        let media_type = header(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
        Ok((resp.bytes().await?, media_type))
    }

    /// The tags of `repo`, sorted (`GET /v2/<repo>/tags/list`). A repository without tags is empty:
    /// distribution answers `404 NAME_UNKNOWN` when a repository holds only untagged manifests.
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let resp = self
            .request(Method::GET, repo, &format!("/v2/{repo}/tags/list"))
            .await?
            .send()
            .await
            .context("GET tags")?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(vec![]),
            StatusCode::OK => {
                let list: serde_json::Value = resp.json().await.context("tags list JSON")?;
                let mut tags: Vec<String> = list["tags"]
                    .as_array()
                    .map(|t| t.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                tags.sort();
                Ok(tags)
            }
            s => anyhow::bail!("GET tags of {repo} answered {s}"),
        }
    }

    /// Deletes a manifest by digest (the registry has `storage.delete.enabled`).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> anyhow::Result<()> {
        let resp = self
            .request(Method::DELETE, repo, &format!("/v2/{repo}/manifests/{digest}"))
            .await?
            .send()
            .await
            .context("DELETE manifest")?;
        let status = resp.status();
        anyhow::ensure!(status == StatusCode::ACCEPTED, "DELETE manifest answered {status}");
        Ok(())
    }

    /// Whether `HEAD /v2/<repo>/blobs/<digest>` answers 200 (404 is `false`, others an error).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> anyhow::Result<bool> {
        let resp = self
            .request(Method::HEAD, repo, &format!("/v2/{repo}/blobs/{digest}"))
            .await?
            .send()
            .await
            .context("HEAD blob")?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => anyhow::bail!("HEAD blob {repo}@{digest} answered {s}"),
        }
    }

    /// The whole blob in memory (small blobs only).
    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Bytes> {
        let resp = self
            .request(Method::GET, repo, &format!("/v2/{repo}/blobs/{digest}"))
            .await?
            .timeout(BLOB_TIMEOUT)
            .send()
            .await
            .context("GET blob")?;
        let status = resp.status();
        anyhow::ensure!(status == StatusCode::OK, "GET blob {repo}@{digest} answered {status}");
        Ok(resp.bytes().await?)
    }

    /// Status of `GET /v2/`: with Basic credentials in Basic modes, bare otherwise (so an
    /// auth registry answers 401 to an anonymous client, and in Token mode to any client).
    pub async fn ping(&self) -> anyhow::Result<StatusCode> {
        let mut rb = self.http.get(format!("{}/v2/", self.base)).timeout(SMALL_TIMEOUT);
        if let (false, Some((user, pass))) = (self.anonymous, self.mode.htpasswd_credentials()) {
            rb = rb.basic_auth(user, Some(pass));
        }
        Ok(rb.send().await.context("GET /v2/")?.status())
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Pushes `image` to `reg` as `repo:tag`; returns the manifest digest.
pub async fn push(reg: &Registry, repo: &str, tag: &str, image: &Image) -> anyhow::Result<String> {
    Client::new(reg)?.push_image(repo, tag, image).await
}

/// `Docker-Content-Digest` of `repo:reference` (HEAD with full `Accept`), `None` on 404.
pub async fn manifest_digest(reg: &Registry, repo: &str, reference: &str) -> anyhow::Result<Option<String>> {
    Client::new(reg)?.manifest_digest(repo, reference).await
}

/// Raw manifest bytes and media type of `repo:reference`.
pub async fn get_manifest(reg: &Registry, repo: &str, reference: &str) -> anyhow::Result<(Bytes, String)> {
    Client::new(reg)?.get_manifest(repo, reference).await
}

/// The tags of `repo`, sorted; empty when it has none.
pub async fn list_tags(reg: &Registry, repo: &str) -> anyhow::Result<Vec<String>> {
    Client::new(reg)?.tags(repo).await
}

/// Whether `repo` has blob `digest`.
pub async fn blob_exists(reg: &Registry, repo: &str, digest: &str) -> anyhow::Result<bool> {
    Client::new(reg)?.blob_exists(repo, digest).await
}

/// Uploads arbitrary bytes as a blob of `repo`; returns the digest.
pub async fn push_raw_blob(reg: &Registry, repo: &str, data: impl Into<Bytes>) -> anyhow::Result<String> {
    Client::new(reg)?.push_raw_blob(repo, data.into()).await
}

/// PUTs raw manifest bytes as `repo:reference`; returns the registry's digest.
pub async fn push_raw_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    data: impl Into<Bytes>,
) -> anyhow::Result<String> {
    Client::new(reg)?
        .push_raw_manifest(repo, reference, media_type, data.into())
        .await
}

impl Image {
    /// Pushes this image to `reg` as `repo:tag`; returns the manifest digest.
    pub async fn push(&self, reg: &Registry, repo: &str, tag: &str) -> anyhow::Result<String> {
        push(reg, repo, tag, self).await
    }
}

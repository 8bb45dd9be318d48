//! A registry that serves the OCI 1.1 Referrers API, for tests: a front over a real docker-registry
//! (distribution 2.8 serves neither the API nor `OCI-Subject`; no registry that does installs here:
//! zot is not on the Go module proxy this machine reaches). It keeps the referrers of each subject
//! in the upstream's referrers tag schema index (`sha256-<hex>`), which it hides from tag lists:
//!
//! - `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: that index (an empty one when there is
//!   none), filtered by `artifactType` with `OCI-Filters-Applied: artifactType`;
//! - `PUT /v2/<name>/manifests/<ref>` of a manifest with a `subject`: stored upstream, added to the
//!   subject's index, answered with `OCI-Subject: <subject digest>`;
//! - a manifest PUT with `If-Match: "<digest>"` (or `If-None-Match: *`) is refused with 412 unless
//!   the reference holds that digest (holds nothing) upstream: conditional writes, which
//!   distribution ignores;
//! - everything else is passed to the upstream as is (`Host` kept, so upload `Location`s point back
//!   here). Request bodies are read whole: for test images only.
//!
//! [`ReferrersApi::without_api`] is the same front without the Referrers API (404, no `OCI-Subject`,
//! tags as they are): a registry that honours conditional writes but keeps referrers in the tag
//! schema. [`ReferrersApi::write_before_next_put`] plays another writer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::image::{MANIFEST_ACCEPT, OCI_INDEX};
use crate::registry::Registry;

/// Largest request body the front reads.
const MAX_BODY: usize = 64 * 1024 * 1024;

struct Shared {
    upstream: String,
    client: reqwest::Client,
    /// One index update at a time (the front is the only writer of the indexes it keeps).
    indexing: tokio::sync::Mutex<()>,
    /// `METHOD path?query` of every request, in order (a conditional PUT with its condition).
    log: Mutex<Vec<String>>,
    /// Whether it serves the Referrers API.
    api: bool,
    /// Another writer's manifest PUT upstream right before the next PUT to the same path:
    /// (`/v2/<name>/manifests/<ref>`, media type, bytes).
    interfering: Mutex<Option<(String, String, Bytes)>>,
}

/// The running front; dropping it stops it.
pub struct ReferrersApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ReferrersApi {
    /// Serves the Referrers API in front of `upstream` (a plain-HTTP registry) on a free loopback port.
    pub fn start(upstream: &Registry) -> anyhow::Result<ReferrersApi> {
        ReferrersApi::serve(upstream, true)
    }

    /// The front without the Referrers API: conditional manifest writes only.
    pub fn without_api(upstream: &Registry) -> anyhow::Result<ReferrersApi> {
        ReferrersApi::serve(upstream, false)
    }

    /// Before answering the next manifest PUT to `repo:reference`, writes `bytes` (of `media_type`)
    /// there itself, as another writer would right after the client read it.
    pub fn write_before_next_put(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) {
        *self.shared.interfering.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            format!("/v2/{repo}/manifests/{reference}"),
            media_type.to_owned(),
            bytes,
        ));
    }

    fn serve(upstream: &Registry, api: bool) -> anyhow::Result<ReferrersApi> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the front's upstream client")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the referrers front")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.url().trim_end_matches('/').to_owned(),
            client,
            indexing: tokio::sync::Mutex::new(()),
            log: Mutex::new(Vec::new()),
            api,
            interfering: Mutex::new(None),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the front's runtime")?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("refsapi-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let app = axum::Router::new().fallback(handle).with_state(state);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
            })
            .context("spawning the referrers front")?;
        Ok(ReferrersApi {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The digests the Referrers API lists for `digest` in `repo`, sorted (an independent read).
    pub async fn referrers(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("http://{}/v2/{repo}/referrers/{digest}", self.addr);
        let resp = self.shared.client.get(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        crate::artifacts::index_digests(&resp.bytes().await?)
    }
}

impl Drop for ReferrersApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path = req.uri().path().to_owned();
    let manifest_put = method == Method::PUT && path.contains("/manifests/");
    let condition = [header::IF_MATCH, header::IF_NONE_MATCH]
        .into_iter()
        .find_map(|name| {
            let value = req.headers().get(&name)?.to_str().ok()?.to_owned();
            Some((name, value))
        })
        .filter(|_| manifest_put);
    let logged = match &condition {
        Some((name, value)) => format!("{method} {path_and_query} {name}: {value}"),
        None => format!("{method} {path_and_query}"),
    };
    shared.log.lock().unwrap_or_else(|e| e.into_inner()).push(logged);
    if manifest_put {
        let interfering = {
            let mut slot = shared.interfering.lock().unwrap_or_else(|e| e.into_inner());
            slot.take_if(|(at, _, _)| *at == path)
        };
        if let Some((_, media_type, bytes)) = interfering {
            let put = shared
                .client
                .put(format!("{}{path}", shared.upstream))
                .header(header::CONTENT_TYPE, media_type)
                .body(bytes)
                .send()
                .await;
            if !put.is_ok_and(|r| r.status().is_success()) {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "referrers front: the other writer's PUT failed".into(),
                );
            }
        }
    }
    if let Some((name, value)) = &condition {
        let held = match held_digest(&shared, &path).await {
            Ok(d) => d,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("referrers front: {e:#}")),
        };
        let holds = if *name == header::IF_MATCH {
            held.is_some_and(|d| value.split(',').any(|v| v.trim().trim_matches('"') == d))
        } else {
            value.trim() == "*" && held.is_none()
        };
        if !holds {
            return plain(
                StatusCode::PRECONDITION_FAILED,
                format!("{name}: {value} does not hold"),
            );
        }
    }
    if let Some((repo, digest)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/referrers/"))
        .filter(|_| shared.api && (method == Method::GET || method == Method::HEAD))
    {
        let wanted = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("artifactType="))
                .map(|t| t.replace("%2F", "/").replace("%2B", "+"))
        });
        return referrers(&shared, repo, digest, wanted.as_deref()).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let answer = match forward(&shared, &method, &path_and_query, &parts.headers, body.clone()).await {
        Ok(a) => a,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("referrers front: {e:#}")),
    };
    let (status, mut headers, mut bytes) = answer;
    if manifest_put && shared.api && status.is_success() {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/manifests/"))
            .map(|(r, _)| r.to_owned());
        if let (Some(repo), Ok(manifest)) = (repo, serde_json::from_slice::<Value>(&body))
            && let Some(subject) = manifest["subject"]["digest"].as_str()
        {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(crate::image::OCI_MANIFEST);
            let digest = crate::util::sha256_digest(&body);
            if let Err(e) = index(&shared, &repo, subject, &manifest, content_type, &digest, body.len()).await {
                return plain(StatusCode::BAD_GATEWAY, format!("referrers front: indexing: {e:#}"));
            }
            if let Ok(v) = HeaderValue::from_str(subject) {
                headers.insert("oci-subject", v);
            }
        }
    }
    if shared.api && method == Method::GET && path.ends_with("/tags/list") && status.is_success() {
        bytes = hide_index_tags(&bytes);
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Sends the request upstream; the answer, read whole.
async fn forward(
    shared: &Shared,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let mut upstream_headers = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        if !matches!(name.as_str(), "connection" | "transfer-encoding" | "content-length") {
            upstream_headers.append(name.clone(), value.clone());
        }
    }
    let resp = shared
        .client
        .request(method.clone(), format!("{}{path_and_query}", shared.upstream))
        .headers(upstream_headers)
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let mut headers = resp.headers().clone();
    for name in ["connection", "transfer-encoding"] {
        headers.remove(name);
    }
    Ok((status, headers, resp.bytes().await?))
}

/// The digest the upstream holds at `path` (`/v2/<name>/manifests/<ref>`), `None` when nothing.
async fn held_digest(shared: &Shared, path: &str) -> anyhow::Result<Option<String>> {
    let resp = shared
        .client
        .head(format!("{}{path}", shared.upstream))
        .header(header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    anyhow::ensure!(resp.status().is_success(), "HEAD {path}: {}", resp.status());
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .context("no Docker-Content-Digest")?;
    Ok(Some(digest.to_owned()))
}

/// The subject's index from the upstream's `sha256-<hex>` tag; empty when there is none.
async fn stored_index(shared: &Shared, repo: &str, subject: &str) -> anyhow::Result<Vec<Value>> {
    let tag = crate::artifacts::fallback_tag(subject);
    let resp = shared
        .client
        .get(format!("{}/v2/{repo}/manifests/{tag}", shared.upstream))
        .header(header::ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(vec![]);
    }
    anyhow::ensure!(resp.status().is_success(), "GET {repo}:{tag}: {}", resp.status());
    let index: Value = serde_json::from_slice(&resp.bytes().await?)?;
    Ok(index["manifests"].as_array().cloned().unwrap_or_default())
}

async fn referrers(shared: &Shared, repo: &str, subject: &str, wanted: Option<&str>) -> Response {
    let entries = match stored_index(shared, repo, subject).await {
        Ok(e) => e,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("referrers front: {e:#}")),
    };
    let entries: Vec<Value> = entries
        .into_iter()
        .filter(|e| wanted.is_none_or(|t| e["artifactType"].as_str() == Some(t)))
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let mut response = Response::new(Body::from(serde_json::to_vec(&body).expect("JSON")));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if wanted.is_some() {
        response
            .headers_mut()
            .insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    response
}

/// Adds the manifest just stored to its subject's index.
async fn index(
    shared: &Shared,
    repo: &str,
    subject: &str,
    manifest: &Value,
    media_type: &str,
    digest: &str,
    size: usize,
) -> anyhow::Result<()> {
    let _one = shared.indexing.lock().await;
    let mut entries = stored_index(shared, repo, subject).await?;
    if entries.iter().any(|e| e["digest"] == digest) {
        return Ok(());
    }
    let mut entry = json!({ "mediaType": media_type, "digest": digest, "size": size });
    if let Some(t) = manifest
        .get("artifactType")
        .or_else(|| manifest["config"].get("mediaType"))
    {
        entry["artifactType"] = t.clone();
    }
    if let Some(a) = manifest.get("annotations") {
        entry["annotations"] = a.clone();
    }
    entries.push(entry);
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let tag = crate::artifacts::fallback_tag(subject);
    let resp = shared
        .client
        .put(format!("{}/v2/{repo}/manifests/{tag}", shared.upstream))
        .header(header::CONTENT_TYPE, OCI_INDEX)
        .body(serde_json::to_vec(&body)?)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "PUT {repo}:{tag}: {}", resp.status());
    Ok(())
}

/// A tag list without the indexes the front keeps (`sha256-<64 hex>`): a registry serving the API
/// has no such tags.
fn hide_index_tags(bytes: &Bytes) -> Bytes {
    let Ok(mut list) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.clone();
    };
    if let Some(tags) = list["tags"].as_array_mut() {
        tags.retain(|t| {
            t.as_str()
                .and_then(|t| t.strip_prefix("sha256-"))
                .is_none_or(|hex| hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()))
        });
    }
    serde_json::to_vec(&list).map_or_else(|_| bytes.clone(), Bytes::from)
}

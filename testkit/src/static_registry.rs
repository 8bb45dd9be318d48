//! A read-only registry serving exactly the content a test puts in it ([`StaticRegistry`]), with
//! correct digests but shapes no real registry would accept: index chains hundreds of levels deep,
//! indexes with tens of thousands of children. It stands in for a registry an attacker controls,
//! which a Pod may name as its image source.
//!
//! It answers the distribution API's read side over plain HTTP on `127.0.0.1`: `GET /v2/`, `HEAD`
//! and `GET` of manifests (by tag or digest) and blobs, with `Docker-Content-Digest`, `Content-Type`
//! and `Content-Length`, and tag lists (`tags/list`, paginated with `Link`); anything else is `404` with a registry-style error. Every request is logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, Response, StatusCode, header};
use bytes::Bytes;
use serde_json::json;

use crate::util::{ServerThread, sha256_digest};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Default)]
struct Content {
    /// (repository, tag or digest) → (media type, bytes).
    manifests: HashMap<(String, String), (String, Bytes)>,
    /// digest → bytes (any repository).
    blobs: HashMap<String, Bytes>,
    /// `METHOD /path` of every request, in arrival order.
    log: Vec<String>,
    /// Most tags per `tags/list` page, whatever `n` asks (Docker Hub and Quay cap pages too).
    tag_page_limit: Option<usize>,
}

/// A registry on `127.0.0.1:<free port>` serving what was put in it, on its own thread and runtime;
/// dropping it stops the listener and joins the thread.
pub struct StaticRegistry {
    addr: SocketAddr,
    content: Arc<Mutex<Content>>,
    _server: ServerThread,
}

fn lock(m: &Mutex<Content>) -> MutexGuard<'_, Content> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StaticRegistry {
    /// Starts an empty registry.
    pub fn start() -> anyhow::Result<StaticRegistry> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the static registry")?;
        let addr = listener.local_addr()?;
        let content: Arc<Mutex<Content>> = Arc::default();
        let app = Router::new().fallback(serve).with_state(content.clone());
        Ok(StaticRegistry {
            addr,
            content,
            _server: ServerThread::spawn("staticreg", listener, app)?,
        })
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Serves `bytes` as a manifest of `media_type` in `repo` by its digest, which is returned.
    pub fn put_manifest(&self, repo: &str, media_type: &str, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        lock(&self.content).manifests.insert(
            (repo.to_owned(), digest.clone()),
            (media_type.to_owned(), Bytes::from(bytes)),
        );
        digest
    }

    /// Makes `tag` of `repo` serve the manifest `digest` (put before).
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut content = lock(&self.content);
        let manifest = content
            .manifests
            .get(&(repo.to_owned(), digest.to_owned()))
            .cloned()
            .unwrap_or_else(|| panic!("no manifest {digest} in {repo}"));
        content.manifests.insert((repo.to_owned(), tag.to_owned()), manifest);
    }

    /// Serves `bytes` as a blob (in every repository); returns its digest.
    pub fn put_blob(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        lock(&self.content).blobs.insert(digest.clone(), Bytes::from(bytes));
        digest
    }

    /// A small single-platform OCI image in `repo`, made distinct by `salt`: the manifest's digest
    /// and size. Its config and layer are shared by every image of the registry.
    pub fn put_image(&self, repo: &str, salt: usize) -> (String, usize) {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let layer = b"static registry layer".to_vec();
        let (config_size, layer_size) = (config.len(), layer.len());
        let (config, layer) = (self.put_blob(config), self.put_blob(layer));
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": layer_size}],
            "annotations": {"salt": salt.to_string()},
        })
        .to_string()
        .into_bytes();
        let size = manifest.len();
        (self.put_manifest(repo, OCI_MANIFEST, manifest), size)
    }

    /// An index of `entries` (digest, size, media type), each for `linux/amd64`; its digest.
    fn put_index(&self, repo: &str, entries: &[(String, usize, &str)]) -> (String, usize) {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(digest, size, media_type)| {
                json!({"mediaType": media_type, "digest": digest, "size": size,
                       "platform": {"architecture": "amd64", "os": "linux"}})
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
            .to_string()
            .into_bytes();
        let size = index.len();
        (self.put_manifest(repo, OCI_INDEX, index), size)
    }

    /// `repo:tag` as a chain of `levels` manifests: `levels - 1` indexes, each listing only the next,
    /// and an image at the bottom. Returns the top index's digest.
    pub fn put_index_chain(&self, repo: &str, tag: &str, levels: usize) -> String {
        assert!(levels >= 2, "a chain has an index and an image at least");
        let (mut digest, mut size) = self.put_image(repo, 0);
        let mut media_type = OCI_MANIFEST;
        for _ in 1..levels {
            (digest, size) = self.put_index(repo, &[(digest, size, media_type)]);
            media_type = OCI_INDEX;
        }
        self.tag(repo, tag, &digest);
        digest
    }

    /// `repo:tag` as one index listing `children` distinct images. Returns the index's digest.
    pub fn put_wide_index(&self, repo: &str, tag: &str, children: usize) -> String {
        let entries: Vec<(String, usize, &str)> = (0..children)
            .map(|salt| {
                let (digest, size) = self.put_image(repo, salt);
                (digest, size, OCI_MANIFEST)
            })
            .collect();
        let (digest, _) = self.put_index(repo, &entries);
        self.tag(repo, tag, &digest);
        digest
    }

    /// Answers `tags/list` with at most `limit` tags a page, whatever `n` asks, and a
    /// `Link: <…?last=…&n=…>; rel="next"` header while more follow.
    pub fn set_tag_page_limit(&self, limit: usize) {
        lock(&self.content).tag_page_limit = Some(limit.max(1));
    }

    /// `METHOD /path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.content).log.clone()
    }
}

async fn serve(State(content): State<Arc<Mutex<Content>>>, request: Request<Body>) -> Response<Body> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let found = {
        let mut content = lock(&content);
        content.log.push(format!("{method} {path}"));
        if method == Method::GET
            && let Some(repo) = path.strip_prefix("/v2/").and_then(|r| r.strip_suffix("/tags/list"))
        {
            return tag_page(&content, repo, request.uri().query().unwrap_or(""));
        }
        lookup(&content, &path)
    };
    let head = method == Method::HEAD;
    if !head && method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
    match found {
        Some((media_type, digest, bytes)) => {
            let length = bytes.len();
            let body = if head { Body::empty() } else { Body::from(bytes) };
            Response::builder()
                .header(header::CONTENT_TYPE, media_type)
                .header(header::CONTENT_LENGTH, length)
                .header("Docker-Content-Digest", digest)
                .body(body)
                .expect("valid response")
        }
        None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
    }
}

/// One page of `repo`'s tags in name order: after `last`, at most `n` (and the page limit), with a
/// `Link` to the next page while more follow; 404 for a repository without tags.
fn tag_page(content: &Content, repo: &str, query: &str) -> Response<Body> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let mut tags: Vec<&str> = content
        .manifests
        .keys()
        .filter(|(r, reference)| r == repo && !reference.contains(':'))
        .map(|(_, t)| t.as_str())
        .collect();
    if tags.is_empty() {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    }
    tags.sort_unstable();
    let last = param("last");
    let after: Vec<&str> = tags
        .into_iter()
        .filter(|t| last.as_deref().is_none_or(|l| *t > l))
        .collect();
    let asked = param("n").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let size = asked.min(content.tag_page_limit.unwrap_or(usize::MAX)).max(1);
    let page = &after[..size.min(after.len())];
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/json");
    if page.len() < after.len()
        && let Some(end) = page.last()
    {
        response = response.header(
            header::LINK,
            format!("</v2/{repo}/tags/list?last={end}&n={size}>; rel=\"next\""),
        );
    }
    let body = json!({"name": repo, "tags": page}).to_string();
    response.body(Body::from(body)).expect("valid response")
}

/// What `path` names: (media type, digest, bytes).
fn lookup(content: &Content, path: &str) -> Option<(String, String, Bytes)> {
    if path == "/v2/" {
        return Some((
            "application/json".into(),
            sha256_digest(b"{}"),
            Bytes::from_static(b"{}"),
        ));
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let (media_type, bytes) = content.manifests.get(&(repo.to_owned(), reference.to_owned()))?;
        return Some((media_type.clone(), sha256_digest(bytes), bytes.clone()));
    }
    let (_, digest) = rest.rsplit_once("/blobs/")?;
    let bytes = content.blobs.get(digest)?;
    Some(("application/octet-stream".into(), digest.to_owned(), bytes.clone()))
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    let body = json!({"errors": [{"code": code, "message": "not served by the static registry"}]}).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid response")
}

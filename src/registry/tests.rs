//! The client against small scripted HTTP servers on loopback: retries, authentication flows,
//! uploads, rate limits and caps, with precise control over what the "registry" answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::ops::digest_of;
use super::*;

/// A request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

struct Fake {
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(path_prefix))
            .count()
    }
}

/// Starts a server answering every request with `handler` (async).
async fn fake_async<F, Fut>(handler: F) -> Fake
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let handler: Handler = Arc::new(move |s| Box::pin(handler(s)));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let handler = handler.clone();
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                headers: parts.headers,
                body,
            };
            log.lock().unwrap().push(s.clone());
            handler(s).await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake {
        host: addr.to_string(),
        seen,
        task,
    }
}

/// Starts a server answering with a synchronous `handler`.
async fn fake<F>(handler: F) -> Fake
where
    F: Fn(&Seen) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    fake_async(move |s| {
        let r = handler(&s);
        async move { r }
    })
    .await
}

fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

fn ok_ping(s: &Seen) -> Option<Response> {
    s.is("GET", "/v2/").then(|| resp(200, &[], ""))
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Some(Duration::from_secs(5)),
        retry_attempts: 3,
        retry_backoff: Duration::from_millis(5),
        max_concurrent_requests: 4,
        ..ClientOptions::default()
    }
}

fn registries(options: ClientOptions, creds: Credentials) -> Registries {
    Registries::new(options, Arc::new(creds)).unwrap()
}

fn client(fake: &Fake) -> Registry {
    registries(options(), Credentials::new()).get(&fake.host)
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

fn manifest_digest() -> String {
    digest_of("sha256", MANIFEST).unwrap().to_string()
}

fn manifest_resp(extra: &[(&str, &str)]) -> Response {
    let d = manifest_digest();
    let mut headers = vec![("content-type", OCI), ("docker-content-digest", d.as_str())];
    headers.extend_from_slice(extra);
    resp(200, &headers, MANIFEST)
}

fn basic(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: Secret::new(pass),
    }
}

fn source_of(
    data: Bytes,
    calls: Arc<AtomicUsize>,
) -> impl Fn() -> BoxFuture<'static, Result<ByteStream, RegistryError>> {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let data = data.clone();
        Box::pin(async move {
            let chunks: Vec<Result<Bytes, RegistryError>> =
                data.chunks(100_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Ok(futures::stream::iter(chunks).boxed())
        })
    }
}

// ---------- retries ----------

#[tokio::test]
async fn retries_503_twice_then_succeeds() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| {
            if n2.fetch_add(1, Ordering::SeqCst) < 2 {
                resp(503, &[], r#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#)
            } else {
                manifest_resp(&[])
            }
        })
    })
    .await;
    let m = client(&f).get_manifest("team/app", "v1", 1 << 20).await.unwrap();
    assert_eq!(m.bytes.as_ref(), MANIFEST);
    assert_eq!(m.digest.to_string(), manifest_digest());
    assert_eq!(m.media_type, OCI);
    assert_eq!(f.count("GET", "/v2/team/app/manifests/v1"), 3);
    // Every manifest request carries the full Accept list.
    for s in f.seen().iter().filter(|s| s.path.contains("/manifests/")) {
        let accept = s.header("accept").unwrap();
        for mt in MANIFEST_MEDIA_TYPES {
            assert!(accept.contains(mt), "{accept}");
        }
    }
}

#[tokio::test]
async fn retry_exhaustion_reports_the_last_status() {
    let f = fake(|s| ok_ping(s).unwrap_or_else(|| resp(500, &[], "boom"))).await;
    let err = client(&f).get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    match &err {
        RegistryError::Status {
            status, detail, method, ..
        } => {
            assert_eq!((*status, detail.as_str(), *method), (500, "boom", "GET"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(f.count("GET", "/v2/a/manifests/"), 3, "retry_attempts is the total");
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let f = fake(|s| ok_ping(s).unwrap_or_else(|| resp(404, &[], ""))).await;
    let c = client(&f);
    assert_eq!(c.head_manifest("a", "v1").await.unwrap(), None);
    assert_eq!(
        c.blob_size("a", &digest_of("sha256", b"x").unwrap()).await.unwrap(),
        None
    );
    assert_eq!(f.count("HEAD", "/v2/a/"), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| {
            if n2.fetch_add(1, Ordering::SeqCst) == 0 {
                resp(429, &[("retry-after", "1")], "slow down")
            } else {
                resp(200, &[("content-length", "7")], "")
            }
        })
    })
    .await;
    let start = Instant::now();
    let size = client(&f)
        .blob_size("a", &digest_of("sha256", b"x").unwrap())
        .await
        .unwrap();
    assert_eq!(size, Some(7));
    assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
    assert_eq!(f.count("HEAD", "/v2/a/"), 2);
}

#[tokio::test]
async fn single_attempt_when_configured() {
    let f = fake(|s| ok_ping(s).unwrap_or_else(|| resp(502, &[], ""))).await;
    let o = ClientOptions {
        retry_attempts: 1,
        ..options()
    };
    let err = registries(o, Credentials::new())
        .get(&f.host)
        .head_manifest("a", "t")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Status { status: 502, .. }), "{err}");
    assert_eq!(f.count("HEAD", "/v2/"), 1);
}

#[tokio::test]
async fn connection_refused_is_a_retryable_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = registries(options(), Credentials::new())
        .get(&host)
        .head_manifest("a", "t")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&host), "{err}");
}

#[tokio::test]
async fn request_timeout_bounds_each_attempt() {
    let f = fake_async(|s| async move {
        if s.is("GET", "/v2/") {
            return resp(200, &[], "");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        resp(200, &[], "")
    })
    .await;
    let o = ClientOptions {
        request_timeout: Some(Duration::from_millis(200)),
        retry_attempts: 2,
        ..options()
    };
    let start = Instant::now();
    let err = registries(o, Credentials::new())
        .get(&f.host)
        .head_manifest("a", "t")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(f.count("HEAD", "/v2/a/"), 2);
}

// ---------- manifests ----------

#[tokio::test]
async fn manifest_digest_checks() {
    let wrong = digest_of("sha256", b"other").unwrap().to_string();
    let w = wrong.clone();
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| match s.path.as_str() {
            "/v2/a/manifests/badheader" => resp(200, &[("content-type", OCI), ("docker-content-digest", &w)], MANIFEST),
            "/v2/a/manifests/noheader" => resp(200, &[("content-type", "application/json")], MANIFEST),
            p if p.starts_with("/v2/a/manifests/sha256:") => resp(200, &[("content-type", OCI)], MANIFEST),
            _ => resp(404, &[], ""),
        })
    })
    .await;
    let c = client(&f);
    let err = c.get_manifest("a", "badheader", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    // No header: the sha256 of the body; media type from the JSON.
    let m = c.get_manifest("a", "noheader", 1 << 20).await.unwrap();
    assert_eq!(m.digest.to_string(), manifest_digest());
    assert_eq!(m.media_type, OCI);
    // By digest: must match the body.
    let m = c.get_manifest("a", &manifest_digest(), 1 << 20).await.unwrap();
    assert_eq!(m.digest.to_string(), manifest_digest());
    let err = c.get_manifest("a", &wrong, 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
    // A 404 on GET is an error, not a retry.
    let err = c.get_manifest("a", "missing", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::Status { status: 404, .. }), "{err}");
}

#[tokio::test]
async fn manifest_size_limit_by_length_and_while_reading() {
    let big = Bytes::from(vec![b' '; 10_000]);
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| match s.path.as_str() {
            "/v2/a/manifests/sized" => resp(200, &[("content-type", OCI)], big.clone()),
            _ => {
                // Chunked transfer, no Content-Length.
                let chunks = (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1000])));
                resp(
                    200,
                    &[("content-type", OCI)],
                    Body::from_stream(futures::stream::iter(chunks)),
                )
            }
        })
    })
    .await;
    let c = client(&f);
    for tag in ["sized", "streamed"] {
        let err = c.get_manifest("a", tag, 4096).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Invalid(_)) && err.to_string().contains("4096"),
            "{tag}: {err}"
        );
    }
    assert_eq!(
        c.get_manifest("a", "streamed", 10_000).await.unwrap().bytes.len(),
        10_000
    );
}

#[tokio::test]
async fn head_manifest_reads_headers() {
    let f = fake(|s| {
        ok_ping(s).unwrap_or_else(|| {
            let d = manifest_digest();
            let len = MANIFEST.len().to_string();
            resp(
                200,
                &[
                    ("content-type", OCI),
                    ("docker-content-digest", &d),
                    ("content-length", &len),
                ],
                "",
            )
        })
    })
    .await;
    let h = client(&f).head_manifest("a", "v1").await.unwrap().unwrap();
    assert_eq!(h.digest.to_string(), manifest_digest());
    assert_eq!(h.media_type, OCI);
    assert_eq!(h.size, MANIFEST.len() as u64);
}

#[tokio::test]
async fn put_manifest_sends_exact_bytes() {
    let reported = digest_of("sha256", b"server says").unwrap().to_string();
    let r = reported.clone();
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| match s.path.as_str() {
            "/v2/a/manifests/with-header" => resp(201, &[("docker-content-digest", &r)], ""),
            _ => resp(201, &[], ""), // ECR-like: no digest, no Location
        })
    })
    .await;
    let c = client(&f);
    let body = Bytes::from_static(b"{ \"odd\" :  \"spacing\" }\n");
    let d = c.put_manifest("a", "with-header", body.clone(), OCI).await.unwrap();
    assert_eq!(d.to_string(), reported);
    let d = c.put_manifest("a", "without", body.clone(), OCI).await.unwrap();
    assert_eq!(d, digest_of("sha256", &body).unwrap());
    let puts: Vec<Seen> = f.seen().into_iter().filter(|s| s.method == "PUT").collect();
    assert_eq!(puts.len(), 2);
    for p in puts {
        assert_eq!(p.body, body);
        assert_eq!(p.header("content-type"), Some(OCI));
    }
}

// ---------- blobs ----------

#[tokio::test]
async fn blob_stream_and_redirect_without_authorization() {
    let storage = fake(|s| {
        let auth = s.header("authorization").map(str::to_string);
        match auth {
            Some(_) => resp(400, &[], "credentials leaked to storage"),
            None => resp(200, &[], "blob-bytes"),
        }
    })
    .await;
    let storage_host = storage.host.clone();
    let f = fake(move |s| {
        if s.is("GET", "/v2/") {
            return match s.header("authorization") {
                Some(_) => resp(200, &[], ""),
                None => resp(401, &[("www-authenticate", r#"Basic realm="fake""#)], ""),
            };
        }
        if s.header("authorization").is_none() {
            return resp(401, &[("www-authenticate", r#"Basic realm="fake""#)], "");
        }
        let to = format!("http://{storage_host}/data/blob?sig=1");
        resp(307, &[("location", to.as_str())], "")
    })
    .await;
    let c = registries(options(), Credentials::new().with_host(&f.host, basic("u", "p"))).get(&f.host);
    let d = digest_of("sha256", b"blob-bytes").unwrap();
    let dl = c.get_blob("a", &d).await.unwrap();
    assert_eq!(dl.size, Some(10));
    let bytes: Vec<Bytes> = dl.stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(bytes.concat(), b"blob-bytes");
    assert_eq!(storage.seen().len(), 1);
    assert!(storage.seen()[0].header("authorization").is_none());
    let blob_get = f
        .seen()
        .into_iter()
        .rfind(|s| s.path.starts_with("/v2/a/blobs/"))
        .unwrap();
    assert!(blob_get.header("authorization").unwrap().starts_with("Basic "));
}

/// A registry implementing uploads (monolithic optional) closely enough to check what the client sends.
#[derive(Default)]
struct Uploads {
    monolithic: bool,
    /// Completed blobs: digest → bytes.
    done: Mutex<Vec<(String, Bytes)>>,
    /// Data per session id.
    sessions: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    next: AtomicUsize,
    fail_puts: AtomicUsize,
    min_chunk: Option<u64>,
}

fn upload_handler(u: Arc<Uploads>) -> impl Fn(&Seen) -> Response + Send + Sync + 'static {
    move |s| {
        if let Some(r) = ok_ping(s) {
            return r;
        }
        let q: Vec<(String, String)> = url_pairs(&s.query);
        let param = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        if s.method == "POST" && s.path.ends_with("/blobs/uploads/") {
            if param("mount").is_some() {
                return if param("from").as_deref() == Some("has/it") {
                    resp(201, &[], "")
                } else {
                    let id = u.next.fetch_add(1, Ordering::SeqCst).to_string();
                    u.sessions.lock().unwrap().insert(id.clone(), Vec::new());
                    resp(202, &[("location", &format!("{}{id}?_state=s{id}", s.path))], "")
                };
            }
            let id = u.next.fetch_add(1, Ordering::SeqCst).to_string();
            u.sessions.lock().unwrap().insert(id.clone(), Vec::new());
            let min = u.min_chunk.map(|m| m.to_string()).unwrap_or_default();
            let mut headers = vec![("location".to_string(), format!("{}{id}?_state=s{id}", s.path))];
            if !min.is_empty() {
                headers.push(("oci-chunk-min-length".into(), min));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            return resp(202, &h, "");
        }
        let id = s.path.rsplit('/').next().unwrap_or("").to_string();
        match s.method.as_str() {
            "PATCH" => {
                let mut sessions = u.sessions.lock().unwrap();
                let Some(data) = sessions.get_mut(&id) else {
                    return resp(404, &[], "");
                };
                let range = s.header("content-range").unwrap_or("");
                let start: usize = range.split('-').next().unwrap_or("x").parse().unwrap_or(usize::MAX);
                if start != data.len() {
                    return resp(416, &[], "");
                }
                data.extend_from_slice(&s.body);
                // Relative Location with a new state each time.
                let loc = format!("{}?_state=p{}", s.path, data.len());
                resp(202, &[("location", loc.as_str())], "")
            }
            "PUT" => {
                if u.fail_puts.load(Ordering::SeqCst) > 0 {
                    u.fail_puts.fetch_sub(1, Ordering::SeqCst);
                    return resp(500, &[], "flaky");
                }
                if !s.body.is_empty() && !u.monolithic {
                    return resp(405, &[], "monolithic uploads not supported");
                }
                let mut sessions = u.sessions.lock().unwrap();
                let Some(mut data) = sessions.remove(&id) else {
                    return resp(404, &[], "");
                };
                data.extend_from_slice(&s.body);
                let want = param("digest").unwrap_or_default();
                let got = digest_of("sha256", &data).unwrap().to_string();
                if want != got {
                    return resp(400, &[], r#"{"errors":[{"code":"DIGEST_INVALID"}]}"#);
                }
                u.done.lock().unwrap().push((got.clone(), Bytes::from(data)));
                resp(201, &[("docker-content-digest", got.as_str())], "")
            }
            "DELETE" => {
                u.sessions.lock().unwrap().remove(&id);
                resp(204, &[], "")
            }
            _ => resp(404, &[], ""),
        }
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(a, b)| (a.into_owned(), b.into_owned()))
        .collect()
}

fn blob(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn push_blob_monolithic_streams_one_put() {
    let u = Arc::new(Uploads {
        monolithic: true,
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let regs = registries(options(), Credentials::new());
    let c = regs.get(&f.host);
    let data = blob(1_234_567);
    let d = digest_of("sha256", &data).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let source = source_of(data.clone(), calls.clone());
    c.push_blob("team/app", &d, data.len() as u64, &source).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(u.done.lock().unwrap().as_slice(), &[(d.to_string(), data.clone())]);
    let puts: Vec<Seen> = f.seen().into_iter().filter(|s| s.method == "PUT").collect();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].header("content-length"), Some("1234567"));
    assert!(
        puts[0].query.contains("_state=") && puts[0].query.contains("digest=sha256"),
        "{}",
        puts[0].query
    );
    assert_eq!(f.count("PATCH", "/"), 0);
    let stats = regs.stats();
    assert_eq!(stats.bytes_uploaded.load(Ordering::Relaxed), data.len() as u64);
    let requests = stats.requests.lock().unwrap().clone();
    assert_eq!(requests.get("PUT"), Some(&1));
    assert_eq!(requests.get("POST"), Some(&1));
}

#[tokio::test]
async fn push_blob_falls_back_to_chunked() {
    let u = Arc::new(Uploads {
        monolithic: false,
        min_chunk: Some(6 * 1024 * 1024),
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let data = blob(13 * 1024 * 1024 + 5);
    let d = digest_of("sha256", &data).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let source = source_of(data.clone(), calls.clone());
    c.push_blob("a", &d, data.len() as u64, &source).await.unwrap();
    assert_eq!(u.done.lock().unwrap().as_slice(), &[(d.to_string(), data.clone())]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the source is reopened for the chunked upload"
    );
    let patches: Vec<Seen> = f.seen().into_iter().filter(|s| s.method == "PATCH").collect();
    let ranges: Vec<&str> = patches.iter().map(|p| p.header("content-range").unwrap()).collect();
    assert_eq!(ranges, ["0-6291455", "6291456-12582911", "12582912-13631492"]);
    // The refused monolithic session was cancelled.
    assert_eq!(f.count("DELETE", "/v2/a/blobs/uploads/"), 1);
    assert!(u.sessions.lock().unwrap().is_empty());

    // The next upload goes straight to chunked (5 MiB minimum when the registry names none lower).
    let small = blob(10);
    let ds = digest_of("sha256", &small).unwrap();
    let source = source_of(small.clone(), Arc::default());
    let puts_before = f.count("PUT", "/");
    c.push_blob("a", &ds, 10, &source).await.unwrap();
    assert_eq!(f.count("PUT", "/") - puts_before, 1);
    assert!(f.seen().last().unwrap().body.is_empty());
}

#[tokio::test]
async fn push_blob_retries_reopen_the_source() {
    let u = Arc::new(Uploads {
        monolithic: true,
        fail_puts: AtomicUsize::new(1),
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let data = blob(300_000);
    let d = digest_of("sha256", &data).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let source = source_of(data.clone(), calls.clone());
    c.push_blob("a", &d, data.len() as u64, &source).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(f.count("POST", "/"), 2);
    assert_eq!(f.count("DELETE", "/"), 1, "the failed session is cancelled");
    assert_eq!(u.done.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn push_blob_source_digest_mismatch_is_not_retried() {
    let u = Arc::new(Uploads {
        monolithic: true,
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let source = move || -> BoxFuture<'static, Result<ByteStream, RegistryError>> {
        calls2.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            let items: Vec<Result<Bytes, RegistryError>> = vec![
                Ok(Bytes::from_static(b"abc")),
                Err(RegistryError::DigestMismatch {
                    digest: "sha256:x".into(),
                    detail: "source bytes differ".into(),
                }),
            ];
            Ok(futures::stream::iter(items).boxed())
        })
    };
    let d = digest_of("sha256", b"abcdef").unwrap();
    let err = c.push_blob("a", &d, 6, &source).await.unwrap_err();
    assert!(matches!(err.error, RegistryError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.side, Side::Source);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(u.done.lock().unwrap().is_empty());
    // The session was cancelled.
    assert!(u.sessions.lock().unwrap().is_empty());
}

/// What opening a blob source gives.
type Opening = fn() -> Result<ByteStream, RegistryError>;

/// A blob source whose every opening gives what `open` makes; counts the openings.
fn scripted_source(
    calls: Arc<AtomicUsize>,
    open: Opening,
) -> impl Fn() -> BoxFuture<'static, Result<ByteStream, RegistryError>> {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { open() })
    }
}

fn reset() -> RegistryError {
    RegistryError::Transport {
        context: "GET http://source/v2/a/blobs/x".into(),
        source: "connection reset".into(),
    }
}

#[tokio::test]
async fn push_blob_counts_retries_once_per_request() {
    let u = Arc::new(Uploads {
        monolithic: true,
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let d = digest_of("sha256", b"abcdef").unwrap();
    // (what each opening of the source gives, openings expected, why)
    let cases: [(Opening, usize, &str); 2] = [
        (
            || Err(reset()),
            1,
            "opening the source is a GET the transport already retried",
        ),
        (
            || Ok(futures::stream::iter([Ok(Bytes::from_static(b"abc")), Err(reset())]).boxed()),
            3,
            "a body cut mid-way fails the transfer, which is tried registryRetryAttempts times",
        ),
    ];
    for (open, expected, why) in cases {
        let calls = Arc::new(AtomicUsize::new(0));
        let err = c
            .push_blob("a", &d, 6, &scripted_source(calls.clone(), open))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), expected, "{why}");
        assert_eq!(err.side, Side::Source, "{why}: {err}");
        assert!(err.error.is_retryable(), "{err}");
    }
}

#[tokio::test]
async fn a_source_that_stalls_while_its_bytes_stream_into_the_upload_is_blamed() {
    let u = Arc::new(Uploads {
        monolithic: true,
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let o = ClientOptions {
        request_timeout: Some(Duration::from_millis(300)),
        ..options()
    };
    let c = registries(o, Credentials::new()).get(&f.host);
    let calls = Arc::new(AtomicUsize::new(0));
    let stalling = scripted_source(calls.clone(), || {
        // Some bytes, then nothing ever again.
        let first = futures::stream::iter([Ok(Bytes::from_static(b"abc"))]);
        Ok(first.chain(futures::stream::pending()).boxed())
    });
    let d = digest_of("sha256", b"abcdef").unwrap();
    let started = Instant::now();
    let err = c.push_blob("a", &d, 6, &stalling).await.unwrap_err();
    assert_eq!(err.side, Side::Source, "{err}");
    assert!(err.to_string().contains("the source sent nothing for 300ms"), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "each transfer attempt reopens the source"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(u.done.lock().unwrap().is_empty());
}

#[tokio::test]
async fn push_blob_wrong_bytes_is_a_digest_mismatch_not_a_fallback() {
    let u = Arc::new(Uploads {
        monolithic: true,
        ..Default::default()
    });
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let claimed = digest_of("sha256", b"right bytes").unwrap();
    let source = source_of(Bytes::from_static(b"wrong bytes"), Arc::default());
    let err = c.push_blob("a", &claimed, 11, &source).await.unwrap_err();
    assert!(matches!(err.error, RegistryError::DigestMismatch { .. }), "{err}");
    assert_eq!(err.side, Side::Target, "the target refused the bytes");
    assert_eq!(f.count("PATCH", "/"), 0, "no chunked fallback");
    assert_eq!(f.count("PUT", "/"), 1, "not retried");
    // Monolithic uploads stay in use for the host.
    let data = blob(1000);
    let d = digest_of("sha256", &data).unwrap();
    c.push_blob("a", &d, 1000, &source_of(data, Arc::default()))
        .await
        .unwrap();
    assert_eq!(f.count("PATCH", "/"), 0);
}

#[tokio::test]
async fn mount_outcomes() {
    let u = Arc::new(Uploads::default());
    let f = fake(upload_handler(u.clone())).await;
    let c = client(&f);
    let d = digest_of("sha256", b"layer").unwrap();
    assert_eq!(
        c.mount_blob("to/repo", &d, "has/it").await.unwrap(),
        MountOutcome::Mounted
    );
    assert_eq!(
        c.mount_blob("to/repo", &d, "lacks/it").await.unwrap(),
        MountOutcome::NotMounted
    );
    assert!(
        u.sessions.lock().unwrap().is_empty(),
        "the declined mount's session is cancelled"
    );
    let posts: Vec<Seen> = f.seen().into_iter().filter(|s| s.method == "POST").collect();
    assert_eq!(
        url_pairs(&posts[0].query),
        [("mount".into(), d.to_string()), ("from".into(), "has/it".to_string())]
    );
    assert_eq!(f.count("DELETE", "/v2/to/repo/blobs/uploads/"), 1);
}

// ---------- authentication ----------

#[tokio::test]
async fn basic_auth_and_refusal() {
    let f = fake(|s| {
        let good = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "user:right")
        );
        if s.header("authorization") == Some(good.as_str()) {
            if s.is("GET", "/v2/") {
                resp(200, &[], "")
            } else {
                manifest_resp(&[])
            }
        } else {
            resp(401, &[("www-authenticate", r#"Basic realm="fake""#)], "")
        }
    })
    .await;
    let ok = registries(options(), Credentials::new().with_host(&f.host, basic("user", "right"))).get(&f.host);
    ok.get_manifest("a", "v1", 1 << 20).await.unwrap();
    ok.get_manifest("a", "v2", 1 << 20).await.unwrap();
    // After the first challenge, Basic goes along proactively: one 401 in all (the ping).
    let unauthorized = f.seen().iter().filter(|s| s.header("authorization").is_none()).count();
    assert_eq!(unauthorized, 1);

    let bad = registries(
        options(),
        Credentials::new().with_host(&f.host, basic("user", "hunter2-wrong")),
    )
    .get(&f.host);
    let err = bad.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains(&f.host), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");

    let anon = client(&f);
    let err = anon.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");
}

/// A registry with its own token service at `/token`: tokens `tok1`, `tok2`, …; the registry accepts
/// only tokens issued to it and, when `revoke_first` is set, refuses `tok1` once after the first use.
struct TokenFake {
    fake: Fake,
    issued: Arc<Mutex<Vec<Seen>>>,
}

async fn token_fake(expires_in: u64, revoke_first: bool, password: &'static str) -> TokenFake {
    let issued: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let valid: Arc<Mutex<Vec<String>>> = Arc::default();
    let uses = Arc::new(AtomicUsize::new(0));
    let issued2 = issued.clone();
    let port = Arc::new(Mutex::new(String::new()));
    let port2 = port.clone();
    let fake = fake(move |s| {
        if s.path == "/token" {
            let want = format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("user:{password}"))
            );
            if s.header("authorization") != Some(want.as_str()) {
                return resp(401, &[], "");
            }
            let mut issued = issued2.lock().unwrap();
            issued.push(s.clone());
            let tok = format!("tok{}", issued.len());
            valid.lock().unwrap().push(tok.clone());
            return resp(
                200,
                &[("content-type", "application/json")],
                format!(r#"{{"access_token":"{tok}","expires_in":{expires_in}}}"#),
            );
        }
        let host = port2.lock().unwrap().clone();
        let challenge = format!(r#"Bearer realm="http://{host}/token",service="fake-registry""#);
        let token = s
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string);
        let ok = token.as_ref().is_some_and(|t| valid.lock().unwrap().contains(t));
        if !ok {
            return resp(401, &[("www-authenticate", challenge.as_str())], "");
        }
        if revoke_first && token.as_deref() == Some("tok1") && uses.fetch_add(1, Ordering::SeqCst) == 1 {
            valid.lock().unwrap().retain(|t| t != "tok1");
            return resp(401, &[("www-authenticate", challenge.as_str())], "");
        }
        if s.is("GET", "/v2/") {
            resp(200, &[], "")
        } else if s.method == "POST" {
            resp(201, &[], "")
        } else {
            manifest_resp(&[])
        }
    })
    .await;
    *port.lock().unwrap() = fake.host.clone();
    TokenFake { fake, issued }
}

#[tokio::test]
async fn bearer_tokens_are_cached_per_scope() {
    let t = token_fake(300, false, "pw").await;
    let regs = registries(
        options(),
        Credentials::new().with_host(&t.fake.host, basic("user", "pw")),
    );
    let c = regs.get(&t.fake.host);
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        c.get_manifest("team/app", tag, 1 << 20).await.unwrap();
        c.head_manifest("team/app", tag).await.unwrap();
    }
    {
        let issued = t.issued.lock().unwrap();
        assert_eq!(issued.len(), 1, "one token for ten reads of one repository");
        let q = url_pairs(&issued[0].query);
        assert!(q.contains(&("service".into(), "fake-registry".into())), "{q:?}");
        assert!(
            q.contains(&("scope".into(), "repository:team/app:pull".into())),
            "{q:?}"
        );
    }
    // A second client of the same Registries shares the cache.
    regs.get(&t.fake.host)
        .get_manifest("team/app", "v1", 1 << 20)
        .await
        .unwrap();
    assert_eq!(t.issued.lock().unwrap().len(), 1);
    // Another repository needs another token.
    c.get_manifest("team/other", "v1", 1 << 20).await.unwrap();
    assert_eq!(t.issued.lock().unwrap().len(), 2);
    // A mount asks for both scopes in one token (repeated `scope`).
    let d = digest_of("sha256", b"l").unwrap();
    assert_eq!(
        c.mount_blob("mirror/app", &d, "team/app").await.unwrap(),
        MountOutcome::Mounted
    );
    let issued = t.issued.lock().unwrap();
    let scopes: Vec<String> = url_pairs(&issued[2].query)
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(scopes, ["repository:mirror/app:pull,push", "repository:team/app:pull"]);
    // Tokens never go to the token service; credentials never go to the registry.
    for s in t.fake.seen() {
        let a = s.header("authorization").unwrap_or("");
        if s.path == "/token" {
            assert!(a.starts_with("Basic "), "{a}");
        } else {
            assert!(a.is_empty() || a.starts_with("Bearer tok"), "{a}");
        }
    }
}

#[tokio::test]
async fn expired_token_is_refreshed() {
    let t = token_fake(1, false, "pw").await; // usable for 750 ms
    let c = registries(
        options(),
        Credentials::new().with_host(&t.fake.host, basic("user", "pw")),
    )
    .get(&t.fake.host);
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    assert_eq!(t.issued.lock().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    assert_eq!(t.issued.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn revoked_token_reauthenticates_once() {
    let t = token_fake(300, true, "pw").await;
    let c = registries(
        options(),
        Credentials::new().with_host(&t.fake.host, basic("user", "pw")),
    )
    .get(&t.fake.host);
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    c.get_manifest("a", "v2", 1 << 20).await.unwrap(); // tok1 refused: re-auth, tok2
    c.get_manifest("a", "v3", 1 << 20).await.unwrap();
    assert_eq!(t.issued.lock().unwrap().len(), 2);
    let v2: Vec<Seen> = t.fake.seen().into_iter().filter(|s| s.path.ends_with("/v2")).collect();
    assert_eq!(v2.len(), 2, "one retry after the 401");
}

#[tokio::test]
async fn token_service_refusal_is_an_auth_error() {
    let t = token_fake(300, false, "pw").await;
    let c = registries(
        options(),
        Credentials::new().with_host(&t.fake.host, basic("user", "s3cret-wrong")),
    )
    .get(&t.fake.host);
    let err = c.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains(&t.fake.host) && msg.contains("token service"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn static_bearer_credential_is_sent_as_is() {
    let f = fake(|s| {
        if s.header("authorization") == Some("Bearer static-token") {
            if s.is("GET", "/v2/") {
                resp(200, &[], "")
            } else {
                manifest_resp(&[])
            }
        } else {
            resp(
                401,
                &[("www-authenticate", r#"Bearer realm="http://127.0.0.1:1/token""#)],
                "",
            )
        }
    })
    .await;
    let c = registries(
        options(),
        Credentials::new().with_host(&f.host, Credential::Bearer(Secret::new("static-token"))),
    )
    .get(&f.host);
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    let c = registries(
        options(),
        Credentials::new().with_host(&f.host, Credential::Bearer(Secret::new("other-token"))),
    )
    .get(&f.host);
    let err = c.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("other-token"));
}

// ---------- Docker Hub pull quota ----------

#[tokio::test]
async fn ratelimit_pauses_manifest_gets_until_a_head_clears_it() {
    let remaining = Arc::new(AtomicUsize::new(1));
    let r2 = remaining.clone();
    let f = fake(move |s| {
        ok_ping(s).unwrap_or_else(|| {
            let left = r2.load(Ordering::SeqCst);
            let header = format!("{left};w=21600");
            if s.method == "GET" {
                if left == 0 {
                    return resp(429, &[("ratelimit-remaining", header.as_str())], "TOOMANYREQUESTS");
                }
                r2.fetch_sub(1, Ordering::SeqCst);
                let header = format!("{};w=21600", left - 1);
                manifest_resp(&[("ratelimit-remaining", header.as_str())])
            } else {
                let d = manifest_digest();
                resp(
                    200,
                    &[
                        ("ratelimit-remaining", header.as_str()),
                        ("content-type", OCI),
                        ("docker-content-digest", d.as_str()),
                        ("content-length", "10"),
                    ],
                    "",
                )
            }
        })
    })
    .await;
    let c = client(&f);
    assert_eq!(c.ratelimit_remaining(), None);
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    assert_eq!(c.ratelimit_remaining(), Some(0));
    let gets = f.count("GET", "/v2/a/");
    let err = c.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    match err {
        RegistryError::RateLimited { retry_after, .. } => {
            assert!(retry_after > Duration::from_secs(21000), "{retry_after:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.count("GET", "/v2/a/"), gets, "failed fast, not sent");
    // HEADs still go; one reporting quota again clears the pause.
    c.head_manifest("a", "v1").await.unwrap().unwrap();
    assert_eq!(c.ratelimit_remaining(), Some(0));
    assert!(c.get_manifest("a", "v1", 1 << 20).await.is_err());
    remaining.store(5, Ordering::SeqCst);
    c.head_manifest("a", "v1").await.unwrap().unwrap();
    assert_eq!(c.ratelimit_remaining(), Some(5));
    c.get_manifest("a", "v1", 1 << 20).await.unwrap();
    assert_eq!(c.ratelimit_remaining(), Some(4));
}

#[tokio::test]
async fn quota_429_is_rate_limited_with_retry_after() {
    let f = fake(|s| {
        ok_ping(s).unwrap_or_else(|| resp(429, &[("ratelimit-remaining", "0;w=21600"), ("retry-after", "120")], ""))
    })
    .await;
    let c = client(&f);
    let err = c.get_manifest("a", "v1", 1 << 20).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(120)),
        "{err:?}"
    );
    assert_eq!(f.count("GET", "/v2/a/"), 1, "a quota 429 is not retried");
    assert!(matches!(
        c.get_manifest("a", "v1", 1 << 20).await.unwrap_err(),
        RegistryError::RateLimited { .. }
    ));
    assert_eq!(f.count("GET", "/v2/a/"), 1);
}

// ---------- per-host cap ----------

#[tokio::test]
async fn per_host_cap_until_headers_only() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (i2, m2) = (in_flight.clone(), max_seen.clone());
    let f = fake_async(move |s| {
        let (i2, m2) = (i2.clone(), m2.clone());
        async move {
            if s.is("GET", "/v2/") {
                return resp(200, &[], "");
            }
            if s.method == "GET" {
                // A body that streams slowly, long after the headers.
                let chunks = futures::stream::iter(0..5).then(|_| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(Bytes::from_static(b"xxxx"))
                });
                return resp(200, &[], Body::from_stream(chunks));
            }
            let now = i2.fetch_add(1, Ordering::SeqCst) + 1;
            m2.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            i2.fetch_sub(1, Ordering::SeqCst);
            resp(200, &[("content-length", "1")], "")
        }
    })
    .await;
    let o = ClientOptions {
        max_concurrent_requests: 1,
        ..options()
    };
    let c = registries(o, Credentials::new()).get(&f.host);
    let d = digest_of("sha256", b"x").unwrap();
    // A body in flight does not hold the only permit.
    let dl = c.get_blob("a", &d).await.unwrap();
    let heads = futures::future::join_all((0..4).map(|_| c.blob_size("a", &d))).await;
    assert!(heads.iter().all(|h| h.as_ref().unwrap() == &Some(1)));
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    let body: Vec<Bytes> = dl.stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(body.concat().len(), 20);
}

#[tokio::test]
async fn docker_hub_names_share_one_client_state() {
    let regs = registries(options(), Credentials::new());
    let a = regs.get("docker.io");
    let b = regs.get("Index.Docker.IO");
    assert!(Arc::ptr_eq(&a.state, &b.state));
    assert_eq!(a.state.endpoint, "registry-1.docker.io");
    assert_eq!(b.host(), "index.docker.io");
}

// ---------- proxies from the environment ----------

/// Run by `proxy_env_is_honoured` in a child process whose environment names a proxy; does nothing
/// when run directly.
#[tokio::test]
#[ignore = "run by proxy_env_is_honoured in a child process"]
async fn proxy_child() {
    let Ok(expect) = std::env::var("COPYCAT_PROXY_CHILD") else {
        return;
    };
    let o = ClientOptions {
        retry_attempts: 1,
        hosts: [(
            "registry.invalid:5000".to_string(),
            HostSettings {
                insecure: true,
                ca_file: None,
            },
        )]
        .into(),
        ..options()
    };
    let result = registries(o, Credentials::new())
        .get("registry.invalid:5000")
        .head_manifest("a", "t")
        .await;
    match expect.as_str() {
        "proxied" => assert_eq!(result.unwrap(), None),
        _ => assert!(matches!(result, Err(RegistryError::Transport { .. })), "{result:?}"),
    }
}

#[tokio::test]
async fn proxy_env_is_honoured() {
    let proxy = fake(|s| {
        if s.header("host") != Some("registry.invalid:5000") {
            return resp(502, &[], "unexpected host");
        }
        ok_ping(s).unwrap_or_else(|| resp(404, &[], ""))
    })
    .await;
    for (no_proxy, expect) in [("localhost", "proxied"), ("registry.invalid", "direct")] {
        let out = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "registry::tests::proxy_child", "--ignored", "--nocapture"])
            .env("COPYCAT_PROXY_CHILD", expect)
            .env("HTTP_PROXY", format!("http://{}", proxy.host))
            .env("NO_PROXY", no_proxy)
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("no_proxy")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{expect}: {text}");
        assert!(
            text.contains("1 passed"),
            "{expect}: the child test must have run: {text}"
        );
        let seen = proxy.seen().len();
        match expect {
            "proxied" => assert_eq!(seen, 2, "GET /v2/ and HEAD through the proxy"),
            _ => assert_eq!(seen, 2, "NO_PROXY: nothing more through the proxy"),
        }
    }
}

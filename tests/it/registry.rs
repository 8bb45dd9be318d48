//! The registry client against real docker-registry processes (testkit): every auth/TLS mode, manifests
//! and blobs both ways, mounts, byte-exact manifest pushes checked with skopeo, auth failures, token
//! caching and re-authentication.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;

use copycat::reference::Digest;
use copycat::registry::credentials::Credentials;
use copycat::registry::{
    ByteStream, ClientOptions, Credential, HostSettings, MountOutcome, Registries, Registry as Client, RegistryError,
};
use copycat::secret::Secret;
use testkit::{Image, RegistryMode, blob_exists, manifest_digest, skopeo_digest};

use crate::support::{TIMEOUT, options, registries, start};

const USER: &str = "mirror-user";
const PASS: &str = "pa55-w0rd-xyz";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn sha256(data: &[u8]) -> Digest {
    digest(&testkit::sha256_digest(data))
}

async fn read_all(stream: ByteStream) -> Bytes {
    let parts: Vec<Bytes> = stream.map(|r| r.expect("blob chunk")).collect().await;
    Bytes::from(parts.concat())
}

/// A source that streams `digest` from `repo` on `src`, reopened on each call.
fn blob_source(
    src: &Client,
    repo: &str,
    digest: &Digest,
) -> impl Fn() -> BoxFuture<'static, Result<ByteStream, RegistryError>> + Send + Sync + use<> {
    let (src, repo, digest) = (src.clone(), repo.to_string(), digest.clone());
    move || {
        let (src, repo, digest) = (src.clone(), repo.clone(), digest.clone());
        Box::pin(async move { Ok(src.get_blob(&repo, &digest).await?.stream) })
    }
}

/// Copies `image` (children first, blobs streamed source → target) with the client alone.
fn copy_image<'a>(
    src: &'a Client,
    src_repo: &'a str,
    dst: &'a Client,
    dst_repo: &'a str,
    image: &'a Image,
    reference: &'a str,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        for child in &image.children {
            copy_image(src, src_repo, dst, dst_repo, child, &child.digest).await;
        }
        for blob in &image.blobs {
            let d = digest(&blob.digest);
            if dst.blob_size(dst_repo, &d).await.unwrap().is_some() {
                continue;
            }
            assert_eq!(src.blob_size(src_repo, &d).await.unwrap(), Some(blob.size));
            let source = blob_source(src, src_repo, &d);
            dst.push_blob(dst_repo, &d, blob.size, &source).await.unwrap();
        }
        let m = src.get_manifest(src_repo, &image.digest, 4 << 20).await.unwrap();
        assert_eq!(m.bytes, image.manifest);
        assert_eq!(m.media_type, image.media_type);
        let pushed = dst
            .put_manifest(dst_repo, reference, m.bytes, &m.media_type)
            .await
            .unwrap();
        assert_eq!(pushed.to_string(), image.digest);
    })
}

/// Everything the client does, against one registry in `mode`.
async fn roundtrip(mode: RegistryMode) {
    let reg = start(mode);
    let image = Image::oci("amd64", &[2048, 300_000], 11).unwrap();
    let index = Image::oci_index(&[4096], true, 12).unwrap();
    assert_eq!(
        testkit::push(&reg, "src/app", "v1", &image).await.unwrap(),
        image.digest
    );
    assert_eq!(
        testkit::push(&reg, "src/multi", "v1", &index).await.unwrap(),
        index.digest
    );
    let regs = registries(&[&reg]);
    let c = regs.get(&reg.host());

    // HEAD and GET by tag and by digest.
    let head = c
        .head_manifest("src/app", "v1")
        .await
        .unwrap()
        .expect("manifest exists");
    assert_eq!(head.digest.to_string(), image.digest);
    assert_eq!(head.media_type, image.media_type);
    assert_eq!(head.size, image.manifest.len() as u64);
    assert_eq!(c.head_manifest("src/app", "missing").await.unwrap(), None);
    let m = c.get_manifest("src/app", "v1", 1 << 20).await.unwrap();
    assert_eq!(
        (m.bytes.clone(), m.digest.to_string()),
        (image.manifest.clone(), image.digest.clone())
    );
    let m = c.get_manifest("src/multi", &index.digest, 1 << 20).await.unwrap();
    assert_eq!(m.bytes, index.manifest);
    assert_eq!(m.media_type, index.media_type);
    let err = c.get_manifest("src/app", "v1", 10).await.unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");

    // Blobs: size and stream.
    let layer = &image.blobs[2];
    let d = digest(&layer.digest);
    assert_eq!(c.blob_size("src/app", &d).await.unwrap(), Some(layer.size));
    assert_eq!(c.blob_size("src/app", &sha256(b"absent")).await.unwrap(), None);
    let dl = c.get_blob("src/app", &d).await.unwrap();
    assert_eq!(dl.size, Some(layer.size));
    let bytes = read_all(dl.stream).await;
    assert_eq!(sha256(&bytes), d);

    // Push a blob (one monolithic PUT), then mount it into another repository.
    let data = Bytes::from(vec![7u8; 1_500_000]);
    let dd = sha256(&data);
    let calls = Arc::new(AtomicUsize::new(0));
    let (data2, calls2) = (data.clone(), calls.clone());
    let source = move || -> BoxFuture<'static, Result<ByteStream, RegistryError>> {
        calls2.fetch_add(1, Ordering::SeqCst);
        let data = data2.clone();
        Box::pin(async move {
            let chunks: Vec<Result<Bytes, RegistryError>> =
                data.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            Ok(futures::stream::iter(chunks).boxed())
        })
    };
    c.push_blob("dst/one", &dd, data.len() as u64, &source).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(blob_exists(&reg, "dst/one", &dd.to_string()).await.unwrap());
    assert_eq!(
        c.mount_blob("dst/two", &dd, "dst/one").await.unwrap(),
        MountOutcome::Mounted
    );
    assert!(blob_exists(&reg, "dst/two", &dd.to_string()).await.unwrap());
    // Mount from a repository without the blob: declined, and the opened session is cancelled.
    let other = sha256(b"nowhere");
    assert_eq!(
        c.mount_blob("dst/three", &other, "dst/one").await.unwrap(),
        MountOutcome::NotMounted
    );
    let deletes = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.starts_with("/v2/dst/three/blobs/uploads/"))
        .count();
    assert_eq!(deletes, 1, "the declined mount's upload session is cancelled");
    let puts = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with("/v2/dst/one/"))
        .count();
    assert_eq!(puts, 1);
    assert_eq!(regs.stats().bytes_uploaded.load(Ordering::Relaxed), data.len() as u64);

    // Copy an image and an index within the registry; manifests byte-exact (skopeo agrees).
    copy_image(&c, "src/app", &c, "copy/app", &image, "v1").await;
    copy_image(&c, "src/multi", &c, "copy/multi", &index, "v2").await;
    assert_eq!(skopeo_digest(&reg, "copy/app:v1").await.unwrap(), image.digest);
    assert_eq!(skopeo_digest(&reg, "copy/multi:v2").await.unwrap(), index.digest);
    assert_eq!(
        manifest_digest(&reg, "copy/multi", "v2").await.unwrap().as_deref(),
        Some(index.digest.as_str())
    );
}

#[tokio::test]
async fn registry_plain() {
    roundtrip(RegistryMode::Plain).await;
}

#[tokio::test]
async fn registry_basic() {
    roundtrip(RegistryMode::basic(USER, PASS)).await;
}

#[tokio::test]
async fn registry_tls_custom_ca() {
    roundtrip(RegistryMode::Tls).await;
}

#[tokio::test]
async fn registry_token() {
    roundtrip(RegistryMode::token(USER, PASS)).await;
}

#[tokio::test]
async fn registry_copy_between_registries_tls_to_token() {
    let src = start(RegistryMode::basic_tls(USER, PASS));
    let dst = start(RegistryMode::token(USER, PASS));
    let image = Image::docker_manifest_list(&[5000, 200_000], 21).unwrap();
    testkit::push(&src, "team/app", "1.0", &image).await.unwrap();
    let regs = registries(&[&src, &dst]);
    let (s, d) = (regs.get(&src.host()), regs.get(&dst.host()));
    copy_image(&s, "team/app", &d, "mirror/team/app", &image, "1.0").await;
    assert_eq!(skopeo_digest(&dst, "mirror/team/app:1.0").await.unwrap(), image.digest);
}

#[tokio::test]
async fn registry_loopback_tls_without_settings_is_insecure() {
    // No CA configured: a loopback host is treated as insecure (HTTPS without verification).
    let reg = start(RegistryMode::Tls);
    let image = Image::oci("amd64", &[100], 31).unwrap();
    testkit::push(&reg, "a/b", "v1", &image).await.unwrap();
    init();
    let regs = Registries::new(options(HashMap::new(), TIMEOUT), Arc::new(Credentials::new())).unwrap();
    let head = regs.get(&reg.host()).head_manifest("a/b", "v1").await.unwrap().unwrap();
    assert_eq!(head.digest.to_string(), image.digest);
}

#[tokio::test]
async fn registry_wrong_password_is_an_auth_error() {
    for mode in [RegistryMode::basic(USER, PASS), RegistryMode::token(USER, PASS)] {
        let reg = start(mode.clone());
        init();
        let wrong = "wr0ng-Secret-777";
        let creds = Credentials::new().with_host(
            &reg.host(),
            Credential::Basic {
                username: USER.into(),
                password: Secret::new(wrong),
            },
        );
        let regs = Registries::new(options(HashMap::new(), TIMEOUT), Arc::new(creds)).unwrap();
        let err = regs.get(&reg.host()).head_manifest("a/b", "v1").await.unwrap_err();
        assert!(matches!(err, RegistryError::Auth { .. }), "{mode:?}: {err}");
        let text = format!("{err} / {err:?}");
        assert!(text.contains(&reg.host()), "{mode:?}: must name the registry: {text}");
        assert!(!text.contains(wrong), "{mode:?}: leaks the password: {text}");
        assert!(!err.is_retryable());

        // And anonymous.
        let regs = Registries::new(options(HashMap::new(), TIMEOUT), Arc::new(Credentials::new())).unwrap();
        let err = regs
            .get(&reg.host())
            .get_manifest("a/b", "v1", 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Auth { .. }), "{mode:?}: {err}");
    }
}

#[tokio::test]
async fn registry_token_cache() {
    let reg = start(RegistryMode::token(USER, PASS));
    let image = Image::oci("amd64", &[1000, 2000], 41).unwrap();
    testkit::push(&reg, "team/app", "v1", &image).await.unwrap();
    let regs = registries(&[&reg]);
    let c = regs.get(&reg.host());
    let before = reg.token_requests();
    for _ in 0..3 {
        c.head_manifest("team/app", "v1").await.unwrap().unwrap();
        c.get_manifest("team/app", "v1", 1 << 20).await.unwrap();
        for blob in &image.blobs {
            let d = digest(&blob.digest);
            assert_eq!(c.blob_size("team/app", &d).await.unwrap(), Some(blob.size));
            read_all(c.get_blob("team/app", &d).await.unwrap().stream).await;
        }
    }
    // Another client of the same Registries shares the cache.
    regs.get(&reg.host()).head_manifest("team/app", "v1").await.unwrap();
    assert_eq!(
        reg.token_requests() - before,
        1,
        "15 reads of one repository → one token"
    );
    let log = reg.token_log();
    assert_eq!(log.last().unwrap().scopes, ["repository:team/app:pull"]);
    assert!(log.last().unwrap().authorized);

    // Copy to another repository: its first HEAD takes a pull token, the writes one pull,push token
    // for all of them (the source's pull token is still cached).
    copy_image(&c, "team/app", &c, "mirror/app", &image, "v1").await;
    assert_eq!(reg.token_requests() - before, 3);
    // Reads of a repository we hold a push token for reuse it.
    c.head_manifest("mirror/app", "v1").await.unwrap().unwrap();
    c.blob_size("mirror/app", &digest(&image.blobs[0].digest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reg.token_requests() - before, 3);

    // A mount asks for both repositories in one token.
    let d = digest(&image.blobs[1].digest);
    assert_eq!(
        c.mount_blob("mirror/other", &d, "team/app").await.unwrap(),
        MountOutcome::Mounted
    );
    let log = reg.token_log();
    let mut scopes = log.last().unwrap().scopes.clone();
    scopes.sort();
    assert_eq!(
        scopes,
        ["repository:mirror/other:pull,push", "repository:team/app:pull"]
    );
    assert_eq!(reg.token_requests() - before, 4);
}

/// A pass-through proxy in front of a real registry that answers the `fail_nth` bearer-authenticated
/// manifest request with 401 (as a registry does when a token was revoked or expired).
mod reauth_proxy {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, Response};

    pub struct Proxy {
        pub host: String,
        pub task: tokio::task::JoinHandle<()>,
    }

    pub async fn start(upstream: String, fail_nth: usize) -> Proxy {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let counter = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (client, upstream, counter) = (client.clone(), upstream.clone(), counter.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_string();
                let bearer = parts
                    .headers
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer "));
                let mut rb = client.request(parts.method.clone(), format!("http://{upstream}{path}"));
                for (k, v) in &parts.headers {
                    if k != "host" {
                        rb = rb.header(k, v);
                    }
                }
                let resp = rb.body(body).send().await.unwrap();
                let inject =
                    bearer && path.contains("/manifests/") && counter.fetch_add(1, Ordering::SeqCst) + 1 == fail_nth;
                let status = if inject { 401 } else { resp.status().as_u16() };
                let mut out = Response::builder().status(status);
                for (k, v) in resp.headers() {
                    out = out.header(k, v);
                }
                if inject {
                    // The challenge the registry gives: ask it by sending no token.
                    let challenge = client
                        .get(format!("http://{upstream}/v2/"))
                        .send()
                        .await
                        .unwrap()
                        .headers()
                        .get("www-authenticate")
                        .cloned()
                        .unwrap();
                    return Response::builder()
                        .status(401)
                        .header("www-authenticate", challenge)
                        .body(Body::empty())
                        .unwrap();
                }
                out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Proxy { host, task }
    }
}

#[tokio::test]
async fn registry_reauthenticates_after_401() {
    let reg = start(RegistryMode::token(USER, PASS));
    let image = Image::oci("amd64", &[100], 51).unwrap();
    testkit::push(&reg, "team/app", "v1", &image).await.unwrap();
    let proxy = reauth_proxy::start(reg.host(), 2).await;
    init();
    let creds = Credentials::new().with_host(
        &proxy.host,
        Credential::Basic {
            username: USER.into(),
            password: Secret::new(PASS),
        },
    );
    let regs = Registries::new(options(HashMap::new(), TIMEOUT), Arc::new(creds)).unwrap();
    let c = regs.get(&proxy.host);
    let before = reg.token_requests();
    c.head_manifest("team/app", "v1").await.unwrap().unwrap(); // token 1
    c.head_manifest("team/app", "v1").await.unwrap().unwrap(); // 401 → token 2 → retried
    c.get_manifest("team/app", "v1", 1 << 20).await.unwrap(); // token 2 cached
    assert_eq!(reg.token_requests() - before, 2);
    let heads = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "HEAD" && r.path == "/v2/team/app/manifests/v1")
        .count();
    assert_eq!(heads, 3, "two HEADs plus the one the proxy turned into a 401");
    proxy.task.abort();
}

#[tokio::test]
async fn registry_tls_with_another_ca_fails_verification() {
    // A CA file that did not sign the server certificate: verification fails, with no fallback to
    // unverified HTTPS or plain HTTP even on loopback.
    let reg = start(RegistryMode::Tls);
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("other.key"), dir.path().join("other-ca.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=other test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    init();
    let hosts = HashMap::from([(
        reg.host(),
        HostSettings {
            insecure: false,
            ca_file: Some(cert),
        },
    )]);
    let o = ClientOptions {
        retry_attempts: 1,
        ..options(hosts, TIMEOUT)
    };
    let regs = Registries::new(o, Arc::new(Credentials::new())).unwrap();
    let err = regs.get(&reg.host()).head_manifest("a/b", "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("https://") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
    assert!(
        reg.requests().is_empty(),
        "nothing reached the registry: {:?}",
        reg.requests()
    );
}

//! `FaultProxy` in front of a real docker-registry: transparent pass-through (pushing with
//! testkit's client through the proxy, reading back directly), then every fault.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use testkit::image::{OCI_MANIFEST, mix};
use testkit::{
    Client, Fault, FaultKind, FaultProxy, Image, Match, Registry, RegistryMode, blob_exists, http_client,
    manifest_digest, push, push_raw_blob, sha256_digest,
};

/// Every test body runs under this bound.
const TEST_BUDGET: Duration = Duration::from_secs(25);
/// Bound of each raw request.
const REQ_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

async fn bounded<T>(name: &str, body: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let r = tokio::time::timeout(TEST_BUDGET, body)
        .await
        .map_err(|_| anyhow::anyhow!("{name}: exceeded {TEST_BUDGET:?}"))?;
    eprintln!("{name}: {:?}", started.elapsed());
    r
}

fn start() -> Result<(Registry, FaultProxy)> {
    let reg = Registry::start(RegistryMode::Plain)?;
    let proxy = FaultProxy::start(&reg.url())?;
    Ok((reg, proxy))
}

/// `len` deterministic pseudo-random bytes.
fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut v = Vec::with_capacity(len + 8);
    let mut i = 0;
    while v.len() < len {
        v.extend_from_slice(&mix(seed, i).to_le_bytes());
        i += 1;
    }
    v.truncate(len);
    v.into()
}

fn get(http: &reqwest::Client, url: String) -> reqwest::RequestBuilder {
    http.get(url).timeout(REQ_TIMEOUT)
}

/// Waits (at most 3 s) until the registry's access log has `n` requests satisfying `pred`, and
/// returns how many it has then: the log line is written just after the response.
async fn registry_count(reg: &Registry, n: usize, pred: impl Fn(&testkit::AccessLogEntry) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let count = reg.requests().iter().filter(|e| pred(e)).count();
        if count >= n || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn statuses(proxy: &FaultProxy) -> Vec<(String, Option<u16>, bool)> {
    proxy
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status, r.faulted))
        .collect()
}

#[tokio::test]
async fn pass_through_push_then_read_directly() -> Result<()> {
    bounded("pass_through", async {
        let (reg, proxy) = start()?;
        assert_eq!(proxy.url(), format!("http://{}", proxy.host()));
        assert_eq!(proxy.upstream(), reg.url());
        // The last layer is over testkit's streaming threshold: generated and uploaded in chunks.
        let image = Image::oci("amd64", &[1024, 300_000, 20 * MIB as u64], 11)?;
        let repo = "fault/pass";
        let via = proxy.client(&reg)?;
        let pushed = via.push_image(repo, "v1", &image).await?;
        assert_eq!(pushed, image.digest);

        // Read back directly from the registry.
        let direct = Client::new(&reg)?;
        assert_eq!(
            manifest_digest(&reg, repo, "v1").await?.as_deref(),
            Some(image.digest.as_str())
        );
        let (raw, media_type) = direct.get_manifest(repo, "v1").await?;
        assert_eq!(raw, image.manifest);
        assert_eq!(media_type, OCI_MANIFEST);
        for blob in image.all_blobs() {
            assert!(direct.blob_exists(repo, &blob.digest).await?, "blob {}", blob.digest);
        }

        // The large layer back through the proxy, hashed as it streams.
        let big = image.blobs.last().context("layer")?;
        let resp = get(via.http(), format!("{}/v2/{repo}/blobs/{}", proxy.url(), big.digest))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.content_length(), Some(big.size));
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            hash.update(&chunk);
        }
        let hex: String = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((n, format!("sha256:{hex}")), (big.size, big.digest.clone()));

        // Upload Locations point back at the proxy, because the client's Host is forwarded.
        let resp = via
            .request(Method::POST, repo, &format!("/v2/{repo}/blobs/uploads/"))
            .await?
            .header(CONTENT_LENGTH, "0")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let location = resp.headers()[LOCATION].to_str()?;
        assert!(
            location.starts_with(&format!("{}/v2/{repo}/blobs/uploads/", proxy.url())),
            "{location}"
        );
        let resp = via
            .http()
            .post(format!("{}/v2/{repo}/blobs/uploads/", proxy.url()))
            .header(HOST, "registry.invalid:1234")
            .header(CONTENT_LENGTH, "0")
            .timeout(REQ_TIMEOUT)
            .send()
            .await?;
        let location = resp.headers()[LOCATION].to_str()?;
        assert!(location.starts_with("http://registry.invalid:1234/v2/"), "{location}");

        let reqs = proxy.requests();
        assert!(reqs.iter().all(|r| !r.faulted && r.status.is_some()), "{reqs:#?}");
        assert!(
            reqs.iter()
                .any(|r| r.method == "PUT" && r.path == format!("/v2/{repo}/manifests/v1") && r.status == Some(201))
        );
        assert!(
            reqs.iter()
                .any(|r| r.method == "PUT" && r.path.contains("digest=sha256%3A") && r.status == Some(201))
        );
        assert_eq!(proxy.faults_applied(), 0);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn basic_auth_passes_through() -> Result<()> {
    bounded("basic_auth", async {
        let reg = Registry::start(RegistryMode::basic("tester", "s3cret"))?;
        let proxy = FaultProxy::start(&reg.url())?;
        let image = Image::docker("arm64", &[2048], 12)?;
        assert_eq!(
            proxy.client(&reg)?.push_image("fault/basic", "v1", &image).await?,
            image.digest
        );
        assert_eq!(
            manifest_digest(&reg, "fault/basic", "v1").await?.as_deref(),
            Some(image.digest.as_str())
        );
        // Without credentials the registry's 401 comes through unchanged.
        let anon = Client::anonymous(&reg)?.with_base_url(&proxy.url());
        assert!(anon.blob_exists("fault/basic", &image.blobs[0].digest).await.is_err());
        assert_eq!(proxy.requests().last().and_then(|r| r.status), Some(401));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn status_500_twice_then_success() -> Result<()> {
    bounded("status_500", async {
        let (reg, proxy) = start()?;
        let image = Image::oci("amd64", &[1000], 13)?;
        let repo = "fault/status";
        push(&reg, repo, "v1", &image).await?;
        proxy.set(
            Fault::status(500)
                .on(Match::new(Some("GET"), Some("/manifests/")))
                .times(2),
        );
        let via = proxy.client(&reg)?;
        for i in 0..2 {
            let err = via.get_manifest(repo, "v1").await.expect_err("injected 500");
            assert!(err.to_string().contains("500"), "attempt {i}: {err:#}");
        }
        let (raw, _) = via.get_manifest(repo, "v1").await?;
        assert_eq!(raw, image.manifest);
        assert_eq!(proxy.faults_applied(), 2);
        assert!(proxy.pending_faults().is_empty());
        let expect = |s, f| ("GET".to_owned(), Some(s), f);
        assert_eq!(
            statuses(&proxy),
            [expect(500, true), expect(500, true), expect(200, false)]
        );

        // The error body is registry-style JSON.
        proxy.set(Fault::status(503));
        let resp = get(via.http(), format!("{}/v2/{repo}/manifests/v1", proxy.url()))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers()[CONTENT_TYPE].to_str()?.starts_with("application/json"));
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");

        // Faulted requests never reached the registry: it served exactly one manifest GET.
        let manifest_gets = |e: &testkit::AccessLogEntry| e.method == "GET" && e.path.contains("/manifests/");
        assert_eq!(registry_count(&reg, 1, manifest_gets).await, 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn status_429_carries_retry_after() -> Result<()> {
    bounded("status_429", async {
        let (reg, proxy) = start()?;
        let repo = "fault/429";
        let digest = push_raw_blob(&reg, repo, pseudo_random(4096, 14)).await?;
        proxy.set(Fault::status_retry_after(429, "1").on(Match::new(None, Some("/blobs/"))));
        let http = http_client(&reg)?;
        let url = format!("{}/v2/{repo}/blobs/{digest}", proxy.url());
        let resp = get(&http, url.clone()).send().await?;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let body: serde_json::Value = resp.json().await?;
        assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
        // Count 1 is used up: the retry goes through.
        let resp = get(&http, url).send().await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
        assert_eq!(sha256_digest(&resp.bytes().await?), digest);
        let blob_gets = |e: &testkit::AccessLogEntry| e.method == "GET" && e.path.contains("/blobs/sha256:");
        assert_eq!(registry_count(&reg, 1, blob_gets).await, 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn drop_response_after_fails_the_download() -> Result<()> {
    bounded("drop_response", async {
        let (reg, proxy) = start()?;
        let repo = "fault/dropresp";
        let data = pseudo_random(MIB, 15);
        let digest = push_raw_blob(&reg, repo, data.clone()).await?;
        let blob_get = Match::new(Some("GET"), Some("/blobs/"));
        let via = proxy.client(&reg)?;
        let url = format!("{}/v2/{repo}/blobs/{digest}", proxy.url());

        proxy.set(Fault::drop_response_after(256 * 1024).on(blob_get.clone()));
        let resp = get(via.http(), url.clone()).send().await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.content_length(), Some(MIB as u64), "Content-Length kept");
        let mut stream = resp.bytes_stream();
        let mut received = Vec::new();
        let mut error = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => received.extend_from_slice(&c),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.context("a cut body must end in an error")?;
        eprintln!("cut after {} bytes: {error:?}", received.len());
        assert_eq!(received.len(), 256 * 1024);
        assert_eq!(&received[..], &data[..received.len()]);

        // The plain whole-body read fails too instead of returning 256 KiB as complete.
        proxy.set(Fault::drop_response_after(1000).on(blob_get));
        let err = via.get_blob(repo, &digest).await.expect_err("cut body");
        eprintln!("get_blob: {err:#}");
        assert_eq!(via.get_blob(repo, &digest).await?, data);
        assert_eq!(proxy.faults_applied(), 2);
        let r = proxy.requests();
        assert_eq!((r[0].status, r[0].faulted), (Some(200), true));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn drop_request_after_fails_the_upload() -> Result<()> {
    bounded("drop_request", async {
        let (reg, proxy) = start()?;
        let repo = "fault/dropreq";
        let data = pseudo_random(MIB, 16);
        let digest = sha256_digest(&data);
        proxy.set(Fault::drop_request_after(64 * 1024).on(Match::new(Some("PUT"), Some("/blobs/uploads/"))));
        let via = proxy.client(&reg)?;
        let started = Instant::now();
        let err = via.push_raw_blob(repo, data.clone()).await.expect_err("dropped upload");
        eprintln!("upload failed after {:?}: {err:#}", started.elapsed());
        assert!(!blob_exists(&reg, repo, &digest).await?, "blob must be absent");
        let r = proxy.requests();
        assert_eq!(r.len(), 2, "{r:#?}");
        assert_eq!(
            (r[0].method.as_str(), r[0].status, r[0].faulted),
            ("POST", Some(202), false)
        );
        assert_eq!((r[1].method.as_str(), r[1].status, r[1].faulted), ("PUT", None, true));
        // Fault used up: a retry succeeds.
        assert_eq!(via.push_raw_blob(repo, data).await?, digest);
        assert!(blob_exists(&reg, repo, &digest).await?);
        // The dropped PUT never reached the registry: it saw only the retry's.
        let puts = |e: &testkit::AccessLogEntry| e.method == "PUT";
        assert_eq!(registry_count(&reg, 1, puts).await, 1);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn stall_exceeds_client_timeout() -> Result<()> {
    bounded("stall", async {
        let (reg, proxy) = start()?;
        proxy.set(Fault::stall(Duration::from_secs(5)).on(Match::new(Some("GET"), Some("/v2/"))));
        let http = http_client(&reg)?;
        let url = format!("{}/v2/", proxy.url());
        let started = Instant::now();
        let err = http
            .get(&url)
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .expect_err("stalled");
        let waited = started.elapsed();
        assert!(err.is_timeout(), "{err:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Next request is not stalled.
        let started = Instant::now();
        let resp = http.get(&url).timeout(Duration::from_secs(2)).send().await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
        let r = proxy.requests();
        assert!(r[0].faulted && !r[1].faulted);
        assert_eq!(r[1].status, Some(200));
        // Dropping the proxy does not wait for the stalled request.
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(2));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn corrupt_body_changes_one_byte() -> Result<()> {
    bounded("corrupt", async {
        let (reg, proxy) = start()?;
        let repo = "fault/corrupt";
        let data = pseudo_random(MIB, 17);
        let digest = push_raw_blob(&reg, repo, data.clone()).await?;
        let offset = 700_001;
        proxy.set(Fault::corrupt_body(offset as u64).on(Match::new(Some("GET"), Some("/blobs/"))));
        let via = proxy.client(&reg)?;
        let resp = get(via.http(), format!("{}/v2/{repo}/blobs/{digest}", proxy.url()))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
        let body = resp.bytes().await?;
        assert_eq!(body.len(), data.len());
        assert_ne!(sha256_digest(&body), digest);
        let diff: Vec<usize> = (0..data.len()).filter(|&i| body[i] != data[i]).collect();
        assert_eq!(diff, [offset]);
        assert_eq!(body[offset], !data[offset]);
        // Next read is intact.
        assert_eq!(sha256_digest(&via.get_blob(repo, &digest).await?), digest);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn filters_hit_only_matching_requests() -> Result<()> {
    bounded("filters", async {
        let (reg, proxy) = start()?;
        let image = Image::oci("amd64", &[1000], 18)?;
        let repo = "fault/filter";
        push(&reg, repo, "v1", &image).await?;
        let layer = &image.blobs[1].digest;
        proxy.set(Fault::status(500).on(Match::new(Some("GET"), Some("/blobs/"))).times(5));
        let via = proxy.client(&reg)?;
        assert!(via.blob_exists(repo, layer).await?, "HEAD is not GET");
        assert_eq!(via.get_manifest(repo, "v1").await?.0, image.manifest, "not /blobs/");
        assert_eq!(via.ping().await?, StatusCode::OK);
        assert!(via.get_blob(repo, layer).await.is_err());
        assert_eq!(proxy.faults_applied(), 1);
        assert_eq!(proxy.pending_faults()[0].count, 4);

        // A second fault, method matched case-insensitively; the first still applies to blobs.
        let m = Match::new(Some("put"), Some("/manifests/"));
        assert!(m.matches("PUT", "/v2/x/manifests/v2") && !m.matches("PUT", "/v2/x/blobs/uploads/"));
        proxy.set(
            Fault::new(FaultKind::Status {
                status: 503,
                retry_after: None,
            })
            .on(m),
        );
        let err = via
            .push_raw_manifest(repo, "v2", &image.media_type, image.manifest.clone())
            .await
            .expect_err("503");
        assert!(err.to_string().contains("503"), "{err:#}");
        assert!(via.get_blob(repo, layer).await.is_err());
        assert_eq!(proxy.faults_applied(), 3);
        assert_eq!(proxy.pending_faults().len(), 1);

        proxy.clear();
        assert!(proxy.pending_faults().is_empty());
        assert_eq!(sha256_digest(&via.get_blob(repo, layer).await?), *layer);
        let faulted: Vec<(String, bool)> = proxy.requests().into_iter().map(|r| (r.method, r.faulted)).collect();
        let f = |m: &str, b| (m.to_owned(), b);
        assert_eq!(
            faulted,
            [
                f("HEAD", false),
                f("GET", false),
                f("GET", false),
                f("GET", true),
                f("PUT", true),
                f("GET", true),
                f("GET", false)
            ]
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unreachable_upstream_and_drop() -> Result<()> {
    bounded("drop", async {
        // An upstream port nobody listens on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let proxy = FaultProxy::start(&format!("http://{dead}/"))?;
        assert!(FaultProxy::start("https://127.0.0.1:1").is_err());
        let port = proxy.host().rsplit(':').next().context("port")?.parse::<u16>()?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let resp = get(&http, format!("{}/v2/", proxy.url())).send().await?;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let body: serde_json::Value = resp.json().await?;
        assert!(
            body["errors"][0]["detail"].as_str().unwrap_or("").contains("upstream"),
            "{body}"
        );
        assert_eq!(proxy.requests()[0].status, Some(502));

        let thread_name = format!("faultpx-{port}");
        assert!(thread_names()?.contains(&thread_name));
        // The client's pooled keep-alive connection to the proxy is still open: drop must not wait.
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!thread_names()?.contains(&thread_name), "thread left behind");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port still accepting"
        );
        Ok(())
    })
    .await
}

fn thread_names() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        if let Ok(name) = std::fs::read_to_string(task?.path().join("comm")) {
            names.push(name.trim().to_owned());
        }
    }
    Ok(names)
}

#[tokio::test]
async fn a_hold_lasts_until_released_and_a_release_disarms_holds_not_yet_reached() -> Result<()> {
    bounded("hold", async {
        let (reg, proxy) = start()?;
        let http = http_client(&reg)?;
        proxy.set(Fault::hold().on(Match::new(Some("GET"), Some("/v2/"))).times(2));
        let held = tokio::spawn(get(&http, format!("{}/v2/", proxy.url())).send());
        let deadline = Instant::now() + REQ_TIMEOUT;
        while proxy.requests().is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "the held request never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        anyhow::ensure!(!held.is_finished(), "a hold lasts until released");
        proxy.release_stalls();
        let answer = held.await??;
        anyhow::ensure!(answer.status() == StatusCode::OK, "{answer:?}");
        // The second hold was disarmed by the release: the next request goes straight through.
        let started = Instant::now();
        let next = get(&http, format!("{}/v2/", proxy.url())).send().await?;
        anyhow::ensure!(next.status() == StatusCode::OK && started.elapsed() < Duration::from_secs(5));
        anyhow::ensure!(proxy.pending_faults().is_empty());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn as_a_forward_proxy_it_records_and_forwards_to_the_host_named() -> Result<()> {
    bounded("forward", async {
        let reg = Registry::start(RegistryMode::Plain)?;
        let proxy = FaultProxy::start_forward()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(proxy.url())?)
            .build()?;
        let answer = get(&http, format!("{}/v2/", reg.url())).send().await?;
        anyhow::ensure!(answer.status() == StatusCode::OK, "{answer:?}");
        let seen = proxy.requests();
        anyhow::ensure!(
            seen.len() == 1 && seen[0].path == "/v2/" && seen[0].status == Some(200),
            "{seen:?}"
        );
        Ok(())
    })
    .await
}

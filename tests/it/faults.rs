//! The copy engine through a fault-injecting proxy in front of real registries: transient faults are
//! retried to an identical result; permanent ones fail cleanly, leaving no tag behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use copycat::copy::{Copier, CopyError, CopyOptions, CopyRequest, Outcome};
use copycat::metrics::Metrics;
use copycat::reference::ImageRef;
use copycat::registry::credentials::Credentials;
use copycat::registry::{RegistryError, Side};
use testkit::fault::{Fault, FaultProxy, Match};
use testkit::{Image, Registry, RegistryMode, manifest_digest, skopeo_digest};

use crate::copy::copier_timing_out;
use crate::support::start;

struct Setup {
    /// Kept so the source registry lives as long as the setup; reached only through `src_proxy`.
    _src: Registry,
    dst: Registry,
    src_proxy: FaultProxy,
    dst_proxy: FaultProxy,
    image: Image,
    copier: Copier,
}

async fn setup(layer: u64) -> Setup {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let src_proxy = FaultProxy::start(&src.url()).unwrap();
    let dst_proxy = FaultProxy::start(&dst.url()).unwrap();
    let image = Image::oci("amd64", &[layer, 10_000], 90).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let copier = copier_timing_out(Credentials::new(), HashMap::new(), Duration::from_millis(1500));
    Setup {
        _src: src,
        dst,
        src_proxy,
        dst_proxy,
        image,
        copier,
    }
}

impl Setup {
    fn request(&self) -> CopyRequest {
        CopyRequest {
            source: ImageRef::parse(&format!("{}/app:v1", self.src_proxy.host())).unwrap(),
            target: ImageRef::parse(&format!("{}/app", self.dst_proxy.host())).unwrap(),
            target_tag: Some("v1".into()),
        }
    }

    async fn copy(&self) -> Result<copycat::copy::CopyReport, CopyError> {
        self.copier.copy(&self.request(), &CopyOptions::default()).await
    }

    async fn assert_identical(&self) {
        assert_eq!(skopeo_digest(&self.dst, "app:v1").await.unwrap(), self.image.digest);
    }

    async fn assert_untagged(&self) {
        assert_eq!(
            manifest_digest(&self.dst, "app", "v1").await.unwrap(),
            None,
            "no tag after a failed copy"
        );
    }
}

fn blob_get() -> Match {
    Match::new(Some("GET"), Some("/blobs/sha256:"))
}

#[tokio::test]
async fn server_errors_are_retried_on_every_kind_of_request() {
    let s = setup(100_000).await;
    s.src_proxy.set(
        Fault::status(500)
            .on(Match::new(Some("HEAD"), Some("/manifests/")))
            .times(1),
    );
    s.src_proxy.set(Fault::status(503).on(blob_get()).times(2));
    s.dst_proxy.set(
        Fault::status(502)
            .on(Match::new(Some("PUT"), Some("/manifests/")))
            .times(2),
    );
    let report = s.copy().await.unwrap();
    assert_eq!(report.outcome, Outcome::Copied);
    assert_eq!(s.src_proxy.faults_applied() + s.dst_proxy.faults_applied(), 5);
    s.assert_identical().await;
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let s = setup(10_000).await;
    s.src_proxy
        .set(Fault::status_retry_after(429, "1").on(blob_get()).times(1));
    let started = Instant::now();
    s.copy().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
    s.assert_identical().await;
}

#[tokio::test]
async fn download_cut_mid_blob_is_retried_to_an_identical_copy() {
    let s = setup(2 << 20).await;
    s.src_proxy
        .set(Fault::drop_response_after(1 << 20).on(blob_get()).times(1));
    let report = s.copy().await.unwrap();
    assert_eq!(s.src_proxy.faults_applied(), 1);
    assert_eq!(report.outcome, Outcome::Copied);
    s.assert_identical().await;
}

#[tokio::test]
async fn upload_cut_mid_blob_is_retried_from_a_fresh_download() {
    let s = setup(2 << 20).await;
    s.dst_proxy.set(
        Fault::drop_request_after(512 << 10)
            .on(Match::new(Some("PUT"), Some("/blobs/uploads/")))
            .times(1),
    );
    s.copy().await.unwrap();
    assert_eq!(s.dst_proxy.faults_applied(), 1);
    let blob_gets = s
        .src_proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .count();
    assert!(
        blob_gets >= 3,
        "the source stream is reopened for the second attempt ({blob_gets} GETs)"
    );
    s.assert_identical().await;
}

#[tokio::test]
async fn a_stall_beyond_the_timeout_is_retried() {
    let s = setup(10_000).await;
    // Held for a minute: only the 1.5 s request timeout ends it, so the copy finishing in seconds
    // with a second GET proves the timeout fired and the request was retried.
    let manifest_get = Match::new(Some("GET"), Some("/manifests/"));
    s.src_proxy.set(Fault::hold().on(manifest_get.clone()).times(1));
    let started = Instant::now();
    s.copy().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "the 1.5 s timeout ends the stalled request: {took:?}"
    );
    let gets: Vec<_> = s
        .src_proxy
        .requests()
        .into_iter()
        .filter(|r| manifest_get.matches(&r.method, &r.path))
        .collect();
    assert_eq!(gets.len(), 2, "the stalled GET and its retry: {gets:#?}");
    assert_eq!(gets[0].status, None, "the stalled GET was abandoned, never answered");
    s.assert_identical().await;
}

#[tokio::test]
async fn persistent_faults_fail_cleanly() {
    let s = setup(10_000).await;
    s.dst_proxy.set(
        Fault::status(500)
            .on(Match::new(Some("PUT"), Some("/manifests/")))
            .times(100),
    );
    let err = s.copy().await.unwrap_err();
    assert!(
        matches!(
            &err,
            CopyError::Registry {
                source: RegistryError::Status { status: 500, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    s.assert_untagged().await;
    let puts = s
        .dst_proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
        .count();
    assert_eq!(puts, 3, "registryRetryAttempts bounds the attempts");
}

#[tokio::test]
async fn a_corrupting_source_fails_the_image_without_retrying() {
    let s = setup(200_000).await;
    let layer = format!("/blobs/{}", s.image.blobs[1].digest);
    s.src_proxy.set(
        Fault::corrupt_body(150_000)
            .on(Match::new(Some("GET"), Some(&layer)))
            .times(1),
    );
    let err = s.copy().await.unwrap_err();
    assert!(
        matches!(
            &err,
            CopyError::Registry {
                source: RegistryError::DigestMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    s.assert_untagged().await;
    assert_eq!(s.src_proxy.faults_applied(), 1);
    let layer_gets = s
        .src_proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer))
        .count();
    assert_eq!(layer_gets, 1, "a digest mismatch is not retried");
}

/// The path of the image's larger layer, for faults on its GETs only.
fn layer_path(s: &Setup) -> String {
    format!("/blobs/{}", s.image.blobs[1].digest)
}

fn gets_of(proxy: &FaultProxy, path: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(path))
        .count()
}

#[tokio::test]
async fn a_blob_get_whose_headers_never_arrive_is_sent_exactly_registry_retry_attempts_times() {
    let s = setup(10_000).await;
    let layer = layer_path(&s);
    s.src_proxy.set(
        Fault::stall(Duration::from_secs(120))
            .on(Match::new(Some("GET"), Some(&layer)))
            .times(100),
    );
    let err = s.copy().await.unwrap_err();
    assert_eq!(
        gets_of(&s.src_proxy, &layer),
        3,
        "registryRetryAttempts (3) GETs in all, not 3 per upload attempt: {err}"
    );
    assert!(
        matches!(&err, CopyError::Registry { side: Side::Source, host, .. } if **host == s.src_proxy.host()),
        "{err:?}"
    );
    assert!(err.is_transient(), "{err}");
    s.assert_untagged().await;

    // The whole-image deadline still bounds everything.
    let opts = CopyOptions {
        deadline: Some(Duration::from_secs(2)),
        ..CopyOptions::default()
    };
    let started = Instant::now();
    let err = s.copier.copy(&s.request(), &opts).await.unwrap_err();
    assert!(matches!(err, CopyError::DeadlineExceeded { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_source_stalling_mid_blob_is_reported_and_counted_against_the_source() {
    let s = setup(300_000).await;
    let layer = layer_path(&s);
    // Right after the headers (the upload then waits for its first byte), and halfway.
    for stall_after in [0, 150_000] {
        s.src_proxy.clear();
        s.src_proxy.set(
            Fault::stall_body_after(stall_after, Duration::from_secs(120))
                .on(Match::new(Some("GET"), Some(&layer)))
                .times(100),
        );
        let gets_before = gets_of(&s.src_proxy, &layer);
        let err = s.copy().await.unwrap_err();
        assert!(
            matches!(&err, CopyError::Registry { side: Side::Source, host, .. } if **host == s.src_proxy.host()),
            "after {stall_after} bytes: {err:?}"
        );
        assert!(
            err.to_string().contains(&s.src_proxy.host()),
            "the message names the source: {err}"
        );
        assert_eq!(
            gets_of(&s.src_proxy, &layer) - gets_before,
            3,
            "each transfer attempt reads the source afresh"
        );
        let metrics = Metrics::new();
        metrics.mirror_failed(&s.src_proxy.host(), &s.dst_proxy.host(), Some(&err), Duration::ZERO);
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                r#"k8s_copycat_registry_pull_error_total{{registry="{}"}} 1"#,
                s.src_proxy.host()
            )),
            "{text}"
        );
        assert!(!text.contains("k8s_copycat_registry_push_error_total{"), "{text}");
        s.assert_untagged().await;
    }
}

//! Pull-through caches as targets: docker-registry in proxy mode (`proxy.remoteurl`) in front of a
//! source registry, filled by copycat reading images through it, and checked with the source
//! stopped: only what the cache stored can then be served.

use std::time::{Duration, Instant};

use copycat::copy::{CopyOptions, CopyRequest, Outcome, PullThrough};
use copycat::reference::ImageRef;
use testkit::apiserver::ApiServer;
use testkit::{Fault, FaultProxy, Image, Match, Registry, RegistryMode, skopeo_copy, skopeo_digest};

use crate::commands::{copycat, text};
use crate::copy::copier;
use crate::server::{Daemon, deployment, sample};
use crate::support::{assert_no_secrets, config_file, credential_secrets, eventually, start};

/// How long a black-box test waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(30);

/// How long a cache may take to commit what was pulled through it: distribution writes a blob to
/// its storage while (or after) it serves it.
const STORED_WITHIN: Duration = Duration::from_secs(30);

/// One image of each kind a cache must hold whole: a single image, an OCI index with attestations,
/// a Docker manifest list, a Helm chart (OCI artifact).
pub(crate) fn images() -> Vec<(&'static str, Image)> {
    vec![
        ("app/single", Image::oci("amd64", &[4096, 100_000], 70).unwrap()),
        ("app/multi", Image::oci_index(&[3000, 20_000], true, 71).unwrap()),
        ("app/list", Image::docker_manifest_list(&[3000], 72).unwrap()),
        ("charts/demo", Image::helm_chart(5000, 73).unwrap()),
    ]
}

/// A source registry and a pull-through cache of it.
pub(crate) fn source_and_cache() -> (Registry, Registry) {
    let src = start(RegistryMode::Plain);
    let cache = start(RegistryMode::proxy_of(&src));
    (src, cache)
}

/// Whether the cache's own storage holds the blob or manifest `digest`.
fn stored(cache: &Registry, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let data = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    cache.data_dir().join(data).is_file()
}

/// Waits until the cache's storage holds every one of `digests` (at most [`STORED_WITHIN`]);
/// returns those it still lacks.
pub(crate) async fn wait_stored(cache: &Registry, digests: &[String]) -> Vec<String> {
    let deadline = Instant::now() + STORED_WITHIN;
    loop {
        let missing: Vec<String> = digests.iter().filter(|d| !stored(cache, d)).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every manifest and blob digest of `image`.
pub(crate) fn every_digest(image: &Image) -> Vec<String> {
    let blobs = image.all_blobs().into_iter().map(|b| b.digest.clone());
    image.all_manifest_digests().into_iter().chain(blobs).collect()
}

/// Requests the cache received other than reads.
pub(crate) fn writes(cache: &Registry) -> Vec<String> {
    cache
        .requests()
        .iter()
        .filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// `src/reference` read through `cache` (no path prefix: distribution serves one remote).
fn through(src: &Registry, cache: &Registry, reference: &str) -> CopyRequest {
    let source = ImageRef::parse(&format!("{}/{reference}", src.host())).unwrap();
    CopyRequest::through_cache(source, &cache.host()).unwrap()
}

/// Asserts that the cache's own storage holds every manifest and blob of each of `images` (tag
/// `v1`), then, with `src` stopped, that it serves them whole (skopeo copies each from it, with its
/// digest) and that it never received a write.
async fn assert_served_without_source(src: &mut Registry, cache: &Registry, images: &[(&str, Image)]) {
    for (repo, image) in images {
        let missing = wait_stored(cache, &every_digest(image)).await;
        assert!(missing.is_empty(), "{repo}: the cache's storage lacks {missing:?}");
    }
    src.stop();
    let dst = start(RegistryMode::Plain);
    for (repo, image) in images {
        let reference = format!("{repo}:v1");
        assert_eq!(skopeo_digest(cache, &reference).await.unwrap(), image.digest, "{repo}");
        skopeo_copy(cache, &reference, &dst, &reference)
            .await
            .unwrap_or_else(|e| panic!("{repo}: the cache cannot serve the whole image without its source: {e:#}"));
        assert_eq!(skopeo_digest(&dst, &reference).await.unwrap(), image.digest, "{repo}");
    }
    assert_eq!(writes(cache), Vec::<String>::new(), "copycat never writes to a cache");
}

fn warming(blobs: bool) -> CopyOptions {
    CopyOptions {
        pull_through: Some(PullThrough { blobs }),
        ..CopyOptions::default()
    }
}

#[tokio::test]
async fn an_image_read_through_the_cache_is_served_by_it_with_the_source_stopped() {
    let (mut src, cache) = source_and_cache();
    let copier = copier(&[&src, &cache]);
    let images = images();
    for (repo, image) in &images {
        image.push(&src, repo, "v1").await.unwrap();
    }
    // One by digest alone: the cache is asked for the digest, never for an invented tag.
    let (pinned_repo, pinned) = &images[1];
    let by_digest = through(&src, &cache, &format!("{pinned_repo}@{}", pinned.digest));
    assert_eq!(
        by_digest.target_display(by_digest.source.digest()),
        format!("{}/{pinned_repo}@{}", cache.host(), pinned.digest)
    );

    for (repo, image) in &images {
        let req = through(&src, &cache, &format!("{repo}:v1"));
        assert_eq!(req.target_display(None), format!("{}/{repo}:v1", cache.host()));
        let report = copier
            .copy(&req, &warming(true))
            .await
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(report.outcome, Outcome::Warmed, "{repo}");
        assert_eq!(
            report.digest.as_ref().map(ToString::to_string),
            Some(image.digest.clone()),
            "{repo}"
        );
        assert_eq!(
            report.blobs_warmed as usize,
            image.all_blobs().len(),
            "{repo}: every blob, once"
        );
        assert_eq!(report.bytes, image.total_blob_size(), "{repo}");
    }
    let again = copier.copy(&by_digest, &warming(true)).await.unwrap();
    assert_eq!(
        again.digest.as_ref().map(ToString::to_string),
        Some(pinned.digest.clone())
    );

    assert_served_without_source(&mut src, &cache, &images).await;
}

#[tokio::test]
async fn manifests_only_leaves_the_blobs_to_the_cache() {
    let (mut src, cache) = source_and_cache();
    let copier = copier(&[&src, &cache]);
    let (repo, image) = &images()[1];
    image.push(&src, repo, "v1").await.unwrap();

    let report = copier
        .copy(&through(&src, &cache, &format!("{repo}:v1")), &warming(false))
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, report.blobs_warmed, report.bytes),
        (Outcome::Warmed, 0, 0)
    );
    let missing = wait_stored(&cache, &image.all_manifest_digests()).await;
    assert!(
        missing.is_empty(),
        "the cache's storage lacks the manifests {missing:?}"
    );
    let blobs: Vec<&str> = image.all_blobs().iter().map(|b| b.digest.as_str()).collect();
    let fetched: Vec<&&str> = blobs.iter().filter(|d| stored(&cache, d)).collect();
    assert!(
        fetched.is_empty(),
        "no blob was read through the cache, yet it stores {fetched:?}"
    );

    src.stop();
    assert_eq!(
        skopeo_digest(&cache, &format!("{repo}:v1")).await.unwrap(),
        image.digest,
        "the manifests are served"
    );
    let dst = start(RegistryMode::Plain);
    assert!(
        skopeo_copy(&cache, &format!("{repo}:v1"), &dst, "copy:v1")
            .await
            .is_err(),
        "without its source the cache cannot serve blobs it never fetched"
    );
    assert_eq!(writes(&cache), Vec::<String>::new());
}

#[tokio::test]
async fn an_image_the_source_lacks_is_reported_as_a_missing_source() {
    let (src, cache) = source_and_cache();
    let copier = copier(&[&src, &cache]);
    let err = copier
        .copy(&through(&src, &cache, "app/none:v1"), &warming(true))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "source {}/app/none:v1 (through the pull-through cache as {}/app/none:v1) not found",
            src.host(),
            cache.host()
        )),
        "{text}"
    );
    assert!(
        err.is_transient(),
        "retried after the cooldown, like any missing source"
    );
}

#[tokio::test]
async fn the_daemon_fills_the_cache_with_what_the_cluster_runs() {
    let mut src = start(RegistryMode::Plain);
    // A cache that wants credentials, from registryCredentials.
    let (user, password) = ("cache-reader", "cache-secret-41");
    let cache = start(RegistryMode::proxy_of(&src).with_auth(user, password));
    let anonymous = testkit::Client::anonymous(&cache).unwrap().ping().await.unwrap();
    assert_eq!(anonymous.as_u16(), 401, "the cache wants credentials");
    let other = start(RegistryMode::Plain);
    let images = images();
    for (repo, image) in &images {
        image.push(&src, repo, "v1").await.unwrap();
    }
    Image::oci("amd64", &[1000], 74)
        .unwrap()
        .push(&other, "lib/elsewhere", "1")
        .await
        .unwrap();
    let server = ApiServer::new();
    let mut used: Vec<String> = images
        .iter()
        .map(|(repo, _)| format!("{}/{repo}:v1", src.host()))
        .collect();
    used.push(format!("{}/lib/elsewhere:1", other.host()));
    server.apply(deployment("web", &used)).unwrap();
    let running = server.serve().unwrap();
    let config = config_file(&format!(
        "targetKind: pullThrough\npullThrough:\n  caches:\n    \"{}\": \"{}\"\n\
         registryCredentials:\n  - {{registry: \"{}\", username: {user}, passwordEnv: CACHE_PASSWORD}}\n",
        src.host(),
        cache.host(),
        cache.host()
    ));
    let daemon = Daemon::start(
        running.kubeconfig_path(),
        &[
            ("CONFIG_PATH", &config.path().display().to_string()),
            ("CACHE_PASSWORD", password),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
        ],
    );

    for (repo, image) in &images {
        let target = format!("{}/{repo}:v1", cache.host());
        eventually(&format!("{target} warmed"), WAIT, async || {
            daemon
                .status_of(&target)
                .await
                .is_some_and(|s| s["state"] == "mirrored")
        })
        .await;
        let status = daemon.status_of(&target).await.unwrap();
        assert_eq!(status["digest"], image.digest.as_str(), "{status}");
        assert_eq!(status["source"], format!("{}/{repo}:v1", src.host()), "{status}");
    }
    let (_, excluded) = daemon.json("GET", "/status?state=excluded", None).await;
    let excluded = excluded.as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{excluded:?}");
    assert_eq!(excluded[0]["source"], format!("{}/lib/elsewhere:1", other.host()));
    assert_eq!(
        excluded[0]["excludedBy"],
        format!("pullThrough.caches (no cache for {})", other.host()),
        "a registry without a cache is reported, not guessed"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    let blobs: usize = images.iter().map(|(_, i)| i.all_blobs().len()).sum();
    assert_eq!(
        sample(
            &metrics,
            r#"k8s_copycat_mirror_duration_seconds_count{result="warmed"}"#
        ),
        Some(images.len() as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"k8s_copycat_blobs_total{outcome="warmed"}"#),
        Some(blobs as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"k8s_copycat_tasks{state="mirrored"}"#),
        Some(images.len() as f64),
        "{metrics}"
    );
    let (_, status) = daemon.get("/status").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_no_secrets(
        &[("the log", &log), ("/status", &status), ("/metrics", &metrics)],
        &credential_secrets(user, password),
    );
    assert!(
        other
            .requests()
            .iter()
            .all(|r| r.user_agent != format!("copycat/{}", env!("CARGO_PKG_VERSION"))),
        "the registry without a cache is never asked"
    );

    assert_served_without_source(&mut src, &cache, &images).await;
}

#[tokio::test]
async fn copy_and_sync_read_through_a_cache_with_pull_through() {
    let (mut src, cache) = source_and_cache();
    let images = images();
    for (repo, image) in &images {
        image.push(&src, repo, "v1").await.unwrap();
    }
    let (single, multi) = (&images[0], &images[1]);

    // `copy --pull-through SRC` finds the cache in pullThrough.caches; manifests only, as configured.
    let config = config_file(&format!(
        "pullThrough:\n  caches:\n    \"{}\": \"{}\"\n  blobs: false\n",
        src.host(),
        cache.host()
    ));
    let config_path = config.path().display().to_string();
    let source = format!("{}/{}:v1", src.host(), single.0);
    let out = copycat(&["copy", "--pull-through", &source], &[("CONFIG_PATH", &config_path)]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains(&format!("warmed: {source} → {}/{}:v1", cache.host(), single.0))
            && all.contains("0 blobs read through"),
        "{all}"
    );
    assert!(all.contains("1 warmed through a pull-through cache"), "{all}");
    let missing = wait_stored(&cache, &single.1.all_manifest_digests()).await;
    assert!(missing.is_empty(), "{missing:?}");
    assert!(
        single.1.all_blobs().iter().all(|b| !stored(&cache, &b.digest)),
        "manifests only"
    );

    // `sync --pull-through`: targetRepoPrefix is the cache; every blob (the default).
    let list = config_file(&format!(
        "targetRepoPrefix: {}\nimages:\n  - source: {}/{}:v1\n  - source: {}/{}@{}\n",
        cache.host(),
        src.host(),
        images[3].0,
        src.host(),
        multi.0,
        multi.1.digest
    ));
    let list_path = list.path().display().to_string();
    let out = copycat(&["sync", "--pull-through", "--images", &list_path], &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("2 warmed through a pull-through cache"), "{all}");
    for image in [&images[3].1, &multi.1] {
        let missing = wait_stored(&cache, &every_digest(image)).await;
        assert!(missing.is_empty(), "{missing:?}");
    }

    // An entry the cache cannot serve as it is, and a source without a cache, are refused.
    let tagged = config_file(&format!(
        "targetRepoPrefix: {}\nimages:\n  - source: {}/{}:v1\n    tag: other\n",
        cache.host(),
        src.host(),
        single.0
    ));
    let out = copycat(
        &[
            "sync",
            "--pull-through",
            "--images",
            &tagged.path().display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("images[0]") && text(&out).contains("tag does not apply with --pull-through"),
        "{}",
        text(&out)
    );
    let out = copycat(
        &["copy", "--pull-through", "quay.io/org/app:1"],
        &[("CONFIG_PATH", &config_path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("pullThrough.caches has no cache for quay.io"),
        "{}",
        text(&out)
    );

    src.stop();
    let dst = start(RegistryMode::Plain);
    skopeo_copy(&cache, &format!("{}@{}", multi.0, multi.1.digest), &dst, "multi:v1")
        .await
        .unwrap();
    assert_eq!(skopeo_digest(&dst, "multi:v1").await.unwrap(), multi.1.digest);
    assert_eq!(writes(&cache), Vec::<String>::new());
}

/// A source with one image (`REPO:v1`, one layer), its cache, and a fault proxy in front of the
/// cache: the cache as copycat sees it.
struct Fronted {
    _src: Registry,
    _cache: Registry,
    front: FaultProxy,
    image: Image,
    copier: copycat::copy::Copier,
    /// The image read through the fault proxy.
    req: CopyRequest,
    /// Its layer's digest.
    layer: String,
}

async fn fronted(repo: &str, layer_size: u64, seed: u64) -> Fronted {
    let (src, cache) = source_and_cache();
    let front = FaultProxy::start(&cache.url()).unwrap();
    let image = Image::oci("amd64", &[layer_size], seed).unwrap();
    image.push(&src, repo, "v1").await.unwrap();
    let source = ImageRef::parse(&format!("{}/{repo}:v1", src.host())).unwrap();
    let req = CopyRequest::through_cache(source, &front.host()).unwrap();
    let layer = image.blobs[1].digest.clone();
    Fronted {
        copier: copier(&[&src, &cache]),
        _src: src,
        _cache: cache,
        front,
        image,
        req,
        layer,
    }
}

#[tokio::test]
async fn a_cache_serving_damaged_content_or_not_serving_the_image_fails_the_warm_up() {
    let fronted = fronted("app/faulty", 20_000, 75).await;
    let Fronted {
        front,
        image,
        copier,
        req,
        layer,
        ..
    } = &fronted;

    front.set(Fault::corrupt_body(100).on(Match::new(Some("GET"), Some(&format!("/blobs/{layer}")))));
    let err = copier.copy(req, &warming(true)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("GET blob {}/app/faulty@{layer}", front.host())),
        "{err}"
    );
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(err.side(), copycat::registry::Side::Target, "the cache served it");

    front.set(Fault::status(404).on(Match::new(Some("HEAD"), Some("/manifests/v1"))));
    let err = copier.copy(req, &warming(false)).await.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "pull-through cache {}/app/faulty:v1: does not serve it after",
            front.host()
        )),
        "{err}"
    );
    assert!(err.is_transient());
    assert_eq!(front.faults_applied(), 2);

    // A dry run asks the source for the digest and leaves the cache alone.
    let before = front.requests().len();
    let dry = CopyOptions {
        dry_run: true,
        ..warming(true)
    };
    let report = copier.copy(req, &dry).await.unwrap();
    assert_eq!(report.outcome, Outcome::WouldCopy);
    assert_eq!(report.digest.map(|d| d.to_string()), Some(image.digest.clone()));
    assert_eq!(front.requests().len(), before, "a dry run sends the cache nothing");
}

#[tokio::test]
async fn a_blob_read_broken_off_midway_is_read_again() {
    let fronted = fronted("app/big", 200_000, 76).await;
    let Fronted {
        front,
        image,
        copier,
        req,
        layer,
        ..
    } = &fronted;
    front.set(Fault::drop_response_after(50_000).on(Match::new(Some("GET"), Some(&format!("/blobs/{layer}")))));

    let report = copier.copy(req, &warming(true)).await.unwrap();
    assert_eq!(front.faults_applied(), 1, "the first read was broken off");
    assert_eq!(report.outcome, Outcome::Warmed);
    assert_eq!(
        report.bytes,
        image.total_blob_size(),
        "the bytes of the reads that succeeded"
    );
    let reads = front
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&format!("/blobs/{layer}")))
        .count();
    assert_eq!(reads, 2, "read again once");
}

//! The copy engine against real docker-registry processes; skopeo checks digests independently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use copycat::copy::{Copier, CopyError, CopyOptions, CopyRequest, Outcome, PullSecret};
use copycat::platform::Platform;
use copycat::reference::ImageRef;
use copycat::registry::credentials::Credentials;
use copycat::registry::{Credential, HostSettings, Registries, RegistryError, Side};
use copycat::secret::Secret;
use testkit::{Image, Registry, RegistryMode, StaticRegistry, manifest_digest, skopeo_digest};

use crate::support::{self, start};

/// A copier that can reach each of `regs`.
pub fn copier(regs: &[&Registry]) -> Copier {
    Copier::new(support::registries(regs))
}

/// A copier with explicit credentials and host settings.
pub fn copier_with(credentials: Credentials, hosts: HashMap<String, HostSettings>) -> Copier {
    copier_timing_out(credentials, hosts, support::TIMEOUT)
}

/// A copier whose requests time out after `timeout`.
pub fn copier_timing_out(credentials: Credentials, hosts: HashMap<String, HostSettings>, timeout: Duration) -> Copier {
    Copier::new(Registries::new(support::options(hosts, timeout), Arc::new(credentials)).expect("registry clients"))
}

pub fn request(src: &Registry, source: &str, dst: &Registry, target_repo: &str, tag: Option<&str>) -> CopyRequest {
    CopyRequest {
        source: ImageRef::parse(&format!("{}/{source}", src.host())).unwrap(),
        target: ImageRef::parse(&format!("{}/{target_repo}", dst.host())).unwrap(),
        target_tag: tag.map(str::to_owned),
    }
}

fn manifest_gets(reg: &Registry) -> usize {
    reg.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/"))
        .count()
}

fn kinds() -> Vec<(&'static str, Image)> {
    vec![
        ("oci", Image::oci("amd64", &[4096, 100_000], 1).unwrap()),
        ("docker", Image::docker("arm64", &[2048, 50_000], 2).unwrap()),
        ("index", Image::oci_index(&[3000], true, 3).unwrap()),
        ("list", Image::docker_manifest_list(&[3000], 4).unwrap()),
        ("helm", Image::helm_chart(5000, 5).unwrap()),
        ("helm-legacy", Image::helm_chart_legacy(5000, 6).unwrap()),
    ]
}

#[tokio::test]
async fn every_kind_copies_byte_exact_then_costs_two_heads() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    for (name, image) in kinds() {
        image.push(&src, &format!("src/{name}"), "v1").await.unwrap();
        let req = request(
            &src,
            &format!("src/{name}:v1"),
            &dst,
            &format!("dst/{name}"),
            Some("v1"),
        );
        let report = copier
            .copy(&req, &CopyOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.outcome, Outcome::Copied, "{name}");
        assert_eq!(
            report.digest.as_ref().map(ToString::to_string),
            Some(image.digest.clone()),
            "{name}"
        );
        assert_eq!(
            skopeo_digest(&dst, &format!("dst/{name}:v1")).await.unwrap(),
            image.digest,
            "{name}"
        );
        for child in &image.children {
            let d = manifest_digest(&dst, &format!("dst/{name}"), &child.digest)
                .await
                .unwrap();
            assert_eq!(
                d.as_deref(),
                Some(child.digest.as_str()),
                "{name}: child {}",
                child.digest
            );
        }

        let gets_before = manifest_gets(&src);
        let again = copier.copy(&req, &CopyOptions::default()).await.unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyPresent, "{name}");
        assert_eq!(
            manifest_gets(&src),
            gets_before,
            "{name}: an unchanged image must not GET the source manifest"
        );
    }
}

#[tokio::test]
async fn digest_sources_are_pushed_by_digest_never_to_latest() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    let image = Image::oci_index(&[1000], false, 10).unwrap();
    image.push(&src, "app", "v1").await.unwrap();

    let by_digest = request(&src, &format!("app@{}", image.digest), &dst, "app", None);
    let report = copier.copy(&by_digest, &CopyOptions::default()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Copied);
    assert_eq!(
        manifest_digest(&dst, "app", &image.digest).await.unwrap().as_deref(),
        Some(image.digest.as_str())
    );
    assert_eq!(
        manifest_digest(&dst, "app", "latest").await.unwrap(),
        None,
        "no :latest invented"
    );
    assert_eq!(
        copier.copy(&by_digest, &CopyOptions::default()).await.unwrap().outcome,
        Outcome::AlreadyPresent
    );

    // tag@digest with the tag moved on to another image: the digest wins.
    Image::oci("amd64", &[1000], 11)
        .unwrap()
        .push(&src, "app", "v1")
        .await
        .unwrap();
    let pinned = request(&src, &format!("app:v1@{}", image.digest), &dst, "app", Some("v1"));
    copier.copy(&pinned, &CopyOptions::default()).await.unwrap();
    assert_eq!(skopeo_digest(&dst, "app:v1").await.unwrap(), image.digest);
}

#[tokio::test]
async fn platform_subsets() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    let image = Image::oci_index(&[2000], true, 20).unwrap();
    image.push(&src, "multi", "v1").await.unwrap();
    let opts = |platforms: &[&str]| CopyOptions {
        platforms: platforms.iter().map(|p| Platform::parse(p).unwrap()).collect(),
        ..CopyOptions::default()
    };

    // One platform: that platform's manifest alone under the tag.
    let one = request(&src, "multi:v1", &dst, "one", Some("v1"));
    let report = copier.copy(&one, &opts(&["linux/arm64"])).await.unwrap();
    let arm = image.child_for("arm64").unwrap();
    assert_eq!(skopeo_digest(&dst, "one:v1").await.unwrap(), arm.digest);
    assert!(!report.filtered && report.missing_platforms.is_empty());

    // Several: a filtered index with their attestations; a missing one is reported.
    let several = request(&src, "multi:v1", &dst, "several", Some("v1"));
    let report = copier
        .copy(&several, &opts(&["linux/amd64", "linux/s390x"]))
        .await
        .unwrap();
    assert!(report.filtered);
    assert_eq!(report.missing_platforms, vec![Platform::parse("linux/s390x").unwrap()]);
    let digest = report.digest.unwrap().to_string();
    assert_ne!(digest, image.digest);
    assert_eq!(skopeo_digest(&dst, "several:v1").await.unwrap(), digest);
    let (bytes, _) = testkit::get_manifest(&dst, "several", "v1").await.unwrap();
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        index["manifests"].as_array().unwrap().len(),
        2,
        "amd64 and its attestation"
    );
    let gets_before = manifest_gets(&src);
    let again = copier
        .copy(&several, &opts(&["linux/amd64", "linux/s390x"]))
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyPresent);
    assert_eq!(
        manifest_gets(&src),
        gets_before,
        "a remembered filtered copy needs no GET"
    );

    // None available: an error naming what exists.
    let none = request(&src, "multi:v1", &dst, "none", Some("v1"));
    let err = copier.copy(&none, &opts(&["linux/s390x"])).await.unwrap_err();
    assert!(matches!(err, CopyError::Platforms { .. }), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
}

#[tokio::test]
async fn mounts_and_shared_layers_move_bytes_once() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let first_copier = copier(&[&src, &dst]);
    let image = Image::oci("amd64", &[300_000, 200_000], 30).unwrap();
    image.push(&src, "base", "v1").await.unwrap();
    let blob_bytes = image.total_blob_size();

    let first = first_copier
        .copy(
            &request(&src, "base:v1", &dst, "a", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!((first.bytes, first.blobs_transferred), (blob_bytes, 3));
    let second = first_copier
        .copy(
            &request(&src, "base:v1", &dst, "b", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (second.bytes, second.blobs_mounted),
        (0, 3),
        "known blobs are mounted, not copied"
    );

    // Two images sharing all layers, copied at once to two new repositories: transferred once.
    let opts = CopyOptions::default();
    let other = start(RegistryMode::Plain);
    let to_other = copier(&[&src, &other]);
    let (to_x, to_y) = (
        request(&src, "base:v1", &other, "x", Some("v1")),
        request(&src, "base:v1", &other, "y", Some("v1")),
    );
    let (x, y) = tokio::join!(to_other.copy(&to_x, &opts), to_other.copy(&to_y, &opts));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.bytes + y.bytes, blob_bytes, "a shared layer is transferred once");
    assert_eq!(x.blobs_mounted + y.blobs_mounted, 3);
}

#[tokio::test]
async fn same_registry_copies_mount_from_the_source_repository() {
    let reg = start(RegistryMode::Plain);
    let copier = copier(&[&reg]);
    let image = Image::oci("amd64", &[100_000], 35).unwrap();
    image.push(&reg, "upstream/app", "v1").await.unwrap();
    let report = copier
        .copy(
            &request(&reg, "upstream/app:v1", &reg, "mirror/app", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!((report.bytes, report.blobs_mounted), (0, 2));
    assert_eq!(skopeo_digest(&reg, "mirror/app:v1").await.unwrap(), image.digest);
}

#[tokio::test]
async fn tag_policy() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    let old = Image::oci("amd64", &[1000], 40).unwrap();
    let new = Image::oci("amd64", &[1000], 41).unwrap();
    new.push(&src, "app", "v1").await.unwrap();
    new.push(&src, "app", "latest").await.unwrap();
    for tag in ["v1", "latest"] {
        old.push(&dst, "app", tag).await.unwrap();
    }
    let strict = CopyOptions {
        allow_overwrite: false,
        ..CopyOptions::default()
    };

    let err = copier
        .copy(&request(&src, "app:v1", &dst, "app", Some("v1")), &strict)
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::TagConflict { .. }), "{err}");
    assert!(
        err.to_string().contains(&old.digest) && err.to_string().contains("allowDifferentDigestRepush"),
        "{err}"
    );
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap().as_deref(),
        Some(old.digest.as_str()),
        "untouched"
    );

    // `latest` is in the always-overwritten set by default …
    copier
        .copy(&request(&src, "app:latest", &dst, "app", Some("latest")), &strict)
        .await
        .unwrap();
    assert_eq!(
        manifest_digest(&dst, "app", "latest").await.unwrap().as_deref(),
        Some(new.digest.as_str())
    );
    // … and the set may be empty.
    old.push(&dst, "app", "latest").await.unwrap();
    let stricter = CopyOptions {
        always_overwrite_tags: vec![],
        ..strict.clone()
    };
    assert!(
        copier
            .copy(&request(&src, "app:latest", &dst, "app", Some("latest")), &stricter)
            .await
            .is_err()
    );

    // With repush allowed the tag moves.
    copier
        .copy(
            &request(&src, "app:v1", &dst, "app", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        manifest_digest(&dst, "app", "v1").await.unwrap().as_deref(),
        Some(new.digest.as_str())
    );
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    let image = Image::oci_index(&[1000], true, 45).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let opts = CopyOptions {
        dry_run: true,
        ..CopyOptions::default()
    };
    let report = copier
        .copy(&request(&src, "app:v1", &dst, "app", Some("v1")), &opts)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::WouldCopy);
    let writes = dst
        .requests()
        .iter()
        .filter(|r| matches!(r.method.as_str(), "PUT" | "POST" | "PATCH"))
        .count();
    assert_eq!(writes, 0);
    assert_eq!(manifest_gets(&src), 0, "a dry run decides by HEADs");
}

#[tokio::test]
async fn auth_and_tls_on_both_sides() {
    let pairs = [
        (
            RegistryMode::basic("alice", "src-pass-1"),
            RegistryMode::token("bob", "dst-pass-2"),
        ),
        (RegistryMode::Tls, RegistryMode::basic_tls("carol", "dst-pass-3")),
        (RegistryMode::token("dave", "src-pass-4"), RegistryMode::Tls),
    ];
    for (src_mode, dst_mode) in pairs {
        let (src, dst) = (start(src_mode), start(dst_mode));
        let image = Image::oci_index(&[5000], true, 50).unwrap();
        image.push(&src, "team/app", "v1").await.unwrap();
        let copier = copier(&[&src, &dst]);
        let req = request(&src, "team/app:v1", &dst, "mirror/app", Some("v1"));
        let report = copier
            .copy(&req, &CopyOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{:?} → {:?}: {e}", src.mode(), dst.mode()));
        assert_eq!(report.outcome, Outcome::Copied);
        if matches!(dst.mode(), RegistryMode::Token { .. }) {
            let scopes: Vec<String> = dst.token_log().iter().map(|t| t.scopes.join(" ")).collect();
            assert_eq!(
                scopes,
                ["repository:mirror/app:pull,push"],
                "one token serves the target's reads and writes"
            );
        }
        assert_eq!(skopeo_digest(&dst, "mirror/app:v1").await.unwrap(), image.digest);
    }
}

#[tokio::test]
async fn refused_credentials_fail_without_printing_them() {
    let (src, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::basic("erin", "right-pass")),
    );
    let image = Image::oci("amd64", &[1000], 55).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let credentials = Credentials::new().with_host(
        &dst.host(),
        Credential::Basic {
            username: "erin".into(),
            password: Secret::new("wrong-pass-xyz"),
        },
    );
    let copier = copier_with(credentials, HashMap::new());
    let err = copier
        .copy(
            &request(&src, "app:v1", &dst, "app", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        matches!(
            err,
            CopyError::Registry {
                source: RegistryError::Auth { .. },
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&dst.host()) && !text.contains("wrong-pass-xyz"), "{text}");
}

#[tokio::test]
async fn docker_config_json_credentials() {
    let (src, dst) = (
        start(RegistryMode::basic("frank", "cfg-pass")),
        start(RegistryMode::Plain),
    );
    let image = Image::oci("amd64", &[1000], 60).unwrap();
    image.push(&src, "app", "v1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = base64_encode("frank:cfg-pass");
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, src.host()),
    )
    .unwrap();
    let dir_path = dir.path().to_str().unwrap().to_owned();
    let env = move |name: &str| (name == "DOCKER_CONFIG").then(|| dir_path.clone());
    let (_, auths) = copycat::registry::credentials::load_docker_config(&env)
        .unwrap()
        .expect("config found");
    let copier = copier_with(Credentials::new().with_docker_auths(auths), HashMap::new());
    copier
        .copy(
            &request(&src, "app:v1", &dst, "app", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(skopeo_digest(&dst, "app:v1").await.unwrap(), image.digest);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn corrupted_source_blob_fails_the_image_and_tags_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);
    let bad = Image::oci("amd64", &[200_000], 70).unwrap();
    let good = Image::oci("amd64", &[1000], 71).unwrap();
    bad.push(&src, "bad", "v1").await.unwrap();
    good.push(&src, "good", "v1").await.unwrap();
    let layer = &bad.blobs[1].digest;
    let hex = layer.trim_start_matches("sha256:");
    let file = src
        .data_dir()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&file).expect("the stored blob");
    bytes[100_000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let opts = CopyOptions::default();
    let (bad_req, good_req) = (
        request(&src, "bad:v1", &dst, "bad", Some("v1")),
        request(&src, "good:v1", &dst, "good", Some("v1")),
    );
    let (bad_result, good_result) = tokio::join!(copier.copy(&bad_req, &opts), copier.copy(&good_req, &opts));
    let err = bad_result.unwrap_err();
    assert!(
        matches!(
            err,
            CopyError::Registry {
                source: RegistryError::DigestMismatch { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(layer.as_str()), "{err}");
    assert_eq!(
        manifest_digest(&dst, "bad", "v1").await.unwrap(),
        None,
        "no tag for a failed image"
    );
    assert!(
        !testkit::blob_exists(&dst, "bad", layer).await.unwrap(),
        "the bad blob was not committed"
    );
    assert_eq!(
        good_result.unwrap().outcome,
        Outcome::Copied,
        "other images are unaffected"
    );
}

#[tokio::test]
async fn missing_source_is_reported() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let err = copier(&[&src, &dst])
        .copy(
            &request(&src, "nope:v1", &dst, "nope", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::SourceNotFound(_)), "{err}");
    assert!(err.to_string().contains("nope:v1"), "{err}");
}

#[tokio::test]
async fn reads_prefer_mirrors_and_fall_back_to_the_registry() {
    let (upstream, mirror, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
    );
    let image = Image::oci("amd64", &[50_000], 80).unwrap();
    let only_upstream = Image::oci("amd64", &[50_000], 81).unwrap();
    image.push(&upstream, "lib/app", "v1").await.unwrap();
    image.push(&mirror, "lib/app", "v1").await.unwrap();
    only_upstream.push(&upstream, "lib/other", "v1").await.unwrap();
    let mirrors = HashMap::from([(upstream.host(), vec![mirror.host()])]);
    let copier = copier(&[&upstream, &mirror, &dst]).with_mirrors(mirrors);
    let upstream_before = upstream.requests().len();
    let writes = |r: &Registry| {
        r.requests()
            .iter()
            .filter(|r| matches!(r.method.as_str(), "PUT" | "POST" | "PATCH" | "DELETE"))
            .count()
    };
    let mirror_writes_before = writes(&mirror);

    copier
        .copy(
            &request(&upstream, "lib/app:v1", &dst, "app", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(skopeo_digest(&dst, "app:v1").await.unwrap(), image.digest);
    let upstream_hits: Vec<_> = upstream
        .requests()
        .into_iter()
        .skip(upstream_before)
        .filter(|r| r.path.contains("lib/app"))
        .collect();
    assert!(
        upstream_hits.is_empty(),
        "the mirror served everything: {upstream_hits:?}"
    );

    copier
        .copy(
            &request(&upstream, "lib/other:v1", &dst, "other", Some("v1")),
            &CopyOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        skopeo_digest(&dst, "other:v1").await.unwrap(),
        only_upstream.digest,
        "fell back to the registry"
    );
    assert_eq!(
        writes(&mirror),
        mirror_writes_before,
        "nothing is ever written to a mirror"
    );
}

#[tokio::test]
async fn hostile_and_obsolete_manifests_are_refused() {
    let schema1 =
        br#"{"schemaVersion":1,"name":"old","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#.to_vec();
    let mut huge =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 5 << 20));
    huge.extend(br#""}}"#);
    let hostile = StaticRegistry::start().unwrap();
    for (repo, media_type, bytes) in [
        (
            "old",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            schema1,
        ),
        ("huge", "application/vnd.oci.image.manifest.v1+json", huge),
    ] {
        let digest = hostile.put_manifest(repo, media_type, bytes);
        hostile.tag(repo, "v1", &digest);
    }
    let dst = start(RegistryMode::Plain);
    let copier = copier(&[&dst]);
    for (repo, want) in [("old", "schema 1"), ("huge", "4194304")] {
        let req = CopyRequest {
            source: ImageRef::parse(&format!("{}/{repo}:v1", hostile.host())).unwrap(),
            target: ImageRef::parse(&format!("{}/{repo}", dst.host())).unwrap(),
            target_tag: Some("v1".into()),
        };
        let err = copier.copy(&req, &CopyOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains(want), "{repo}: {err}");
        assert_eq!(manifest_digest(&dst, repo, "v1").await.unwrap(), None);
    }
}

#[tokio::test]
async fn index_nesting_and_width_are_bounded_and_walked_without_recursion() {
    let hostile = StaticRegistry::start().unwrap();
    // Correct digests all the way: only the shape is hostile.
    let nested = hostile.put_index_chain("nested", "v1", 3);
    let deepest = hostile.put_index_chain("deepest", "v1", 4);
    hostile.put_index_chain("too-deep", "v1", 5);
    hostile.put_index_chain("deep", "v1", 500);
    hostile.put_wide_index("wide", "v1", 20_000);
    let dst = start(RegistryMode::Plain);
    let copier = copier(&[&dst]);
    let copy = |repo: &'static str| {
        let req = CopyRequest {
            source: ImageRef::parse(&format!("{}/{repo}:v1", hostile.host())).unwrap(),
            target: ImageRef::parse(&format!("{}/{repo}", dst.host())).unwrap(),
            target_tag: Some("v1".into()),
        };
        let copier = copier.clone();
        async move { copier.copy(&req, &CopyOptions::default()).await }
    };
    // An index of indexes, and the deepest allowed (index → index → index → image): copied whole.
    for (repo, digest) in [("nested", nested), ("deepest", deepest)] {
        let report = copy(repo).await.unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(report.outcome, Outcome::Copied, "{repo}");
        assert_eq!(manifest_digest(&dst, repo, "v1").await.unwrap(), Some(digest));
    }
    for (repo, want) in [
        ("too-deep", "indexes nested deeper than 4 levels"),
        ("deep", "indexes nested deeper than 4 levels"),
        (
            "wide",
            "index lists 20000 manifests, more than the limit of 1000 per index",
        ),
    ] {
        let err = copy(repo).await.unwrap_err();
        assert!(matches!(err, CopyError::Manifest { .. }), "{repo}: {err:?}");
        assert!(err.to_string().contains(want), "{repo}: {err}");
        assert!(!err.is_transient(), "{repo}: refused for good");
        assert_eq!(manifest_digest(&dst, repo, "v1").await.unwrap(), None, "{repo}: no tag");
    }
    let gets = |repo: &str| {
        hostile
            .requests()
            .iter()
            .filter(|r| r.starts_with(&format!("GET /v2/{repo}/manifests/")))
            .count()
    };
    assert_eq!(gets("deep"), 4, "the chain is read down to the limit, no further");
    assert_eq!(gets("wide"), 1, "no entry of the wide index is read");
}

#[tokio::test]
async fn source_credentials_are_tried_in_order_and_their_tokens_kept_apart() {
    for mode in [
        RegistryMode::basic("puller", "right-pw"),
        RegistryMode::token("puller", "right-pw"),
    ] {
        let (src, dst) = (start(mode), start(RegistryMode::Plain));
        let image = Image::oci("amd64", &[2000], 880).unwrap();
        image.push(&src, "private/app", "1").await.unwrap();
        // The copier has no credentials for the source: only the Pod's pull secrets.
        let (_, hosts) = support::access(&[&src]);
        let copier = copier_with(Credentials::new(), hosts);
        let secret = |name: &str, password: &str| PullSecret {
            name: format!("team/{name}"),
            credential: Credential::Basic {
                username: "puller".into(),
                password: Secret::new(password),
            },
        };
        let opts = CopyOptions {
            source_credentials: vec![secret("stale", "wrong-pw"), secret("regcred", "right-pw")],
            ..CopyOptions::default()
        };
        let req = request(&src, "private/app:1", &dst, "mirror/app", Some("1"));
        let report = copier.copy(&req, &opts).await.unwrap();
        assert_eq!(report.outcome, Outcome::Copied, "{:?}", src.mode());
        assert_eq!(skopeo_digest(&dst, "mirror/app:1").await.unwrap(), image.digest);
        // What the right secret obtained serves only requests made with it.
        let again = request(&src, "private/app:1", &dst, "mirror/app", Some("2"));
        let err = copier.copy(&again, &CopyOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("source"), "{err}");
        // Only refused secrets: the error says they were refused, not that nothing is configured.
        let refused = CopyOptions {
            source_credentials: vec![secret("stale", "wrong-pw"), secret("older", "older-pw")],
            ..CopyOptions::default()
        };
        let err = copier.copy(&again, &refused).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CopyError::PullSecretRefused { ref secrets, .. } if secrets == &["team/stale", "team/older"]),
            "{text}"
        );
        assert!(
            text.starts_with("the source refused pull secret team/stale, team/older: ") && text.contains(&src.host()),
            "{text}"
        );
        assert!(!text.contains("no credentials are configured"), "{text}");
        assert!(!text.contains("wrong-pw") && !text.contains("older-pw"), "{text}");
        // The source's tags are listed with the same credentials in the same order, with the same
        // errors (what the Flux controller's `allTags` uses).
        let tags = copier.list_source_tags(&req.source, &opts.source_credentials).await;
        assert_eq!(tags.unwrap(), ["1"], "{:?}", src.mode());
        let err = copier
            .list_source_tags(&req.source, &refused.source_credentials)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, CopyError::PullSecretRefused { ref secrets, .. } if secrets == &["team/stale", "team/older"]),
            "{text}"
        );
        assert!(text.contains("list tags of") && text.contains(&src.host()), "{text}");
        assert!(!text.contains("wrong-pw") && !text.contains("older-pw"), "{text}");
        let err = copier.list_source_tags(&req.source, &[]).await.unwrap_err();
        assert!(
            matches!(err, CopyError::Registry { side: Side::Source, ref host, .. } if **host == *src.host()),
            "{err:?}"
        );
    }
}

/// Repair mode ([`CopyOptions::repair`]) on an index of indexes: on a whole target it writes
/// nothing; with the innermost image manifest unlinked and its layer deleted in the target's
/// storage (the tag intact), a plain copy trusts the tag, and a repair writes exactly those two
/// (the layer's bytes alone streamed), reading the manifests present from the target; the target
/// then verifies deep.
#[tokio::test]
async fn repair_mode_restores_what_is_missing_below_an_intact_tag_at_any_depth() {
    use copycat::copy::check::{Depth, TargetState};
    use serde_json::Value;

    let hostile = StaticRegistry::start().unwrap();
    let top = hostile.put_index_chain("nested", "v1", 3);
    let dst = start(RegistryMode::Plain);
    let copier = copier(&[&dst]);
    let req = CopyRequest {
        source: ImageRef::parse(&format!("{}/nested:v1", hostile.host())).unwrap(),
        target: ImageRef::parse(&format!("{}/nested", dst.host())).unwrap(),
        target_tag: Some("v1".into()),
    };
    copier.copy(&req, &CopyOptions::default()).await.unwrap();
    // The chain at the target: index → index → image → layer.
    let first = async |digest: &str, list: &str| {
        let (bytes, _) = testkit::get_manifest(&dst, "nested", digest).await.unwrap();
        let manifest: Value = serde_json::from_slice(&bytes).unwrap();
        manifest[list][0]["digest"].as_str().unwrap().to_owned()
    };
    let inner = first(&top, "manifests").await;
    let image = first(&inner, "manifests").await;
    let layer = first(&image, "layers").await;
    let repair = CopyOptions {
        repair: true,
        ..CopyOptions::default()
    };
    let writes = |from: usize| -> Vec<String> {
        dst.requests()[from..]
            .iter()
            .filter(|r| !["HEAD", "GET"].contains(&r.method.as_str()))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    };

    let before = dst.requests().len();
    let report = copier.copy(&req, &repair).await.unwrap();
    assert_eq!(report.outcome, Outcome::AlreadyPresent);
    assert_eq!(writes(before), Vec::<String>::new(), "a whole target is not written");

    std::fs::remove_file(crate::verify::manifest_link(&dst, "nested", &image)).unwrap();
    std::fs::remove_file(crate::verify::blob_file(&dst, &layer)).unwrap();
    let expected = top.parse().unwrap();
    let state = copier.check_target(&req, &expected, Depth::Quick, 4).await.unwrap();
    assert!(matches!(state, TargetState::Missing(_)), "{state:?}");
    let report = copier.copy(&req, &CopyOptions::default()).await.unwrap();
    assert_eq!(report.outcome, Outcome::AlreadyPresent, "a plain copy trusts the tag");

    let (before, source_before) = (dst.requests().len(), hostile.requests().len());
    let report = copier.copy(&req, &repair).await.unwrap();
    assert_eq!(report.outcome, Outcome::Copied);
    assert_eq!(
        (report.blobs_transferred, report.blobs_mounted, report.manifests_written),
        (1, 0, 1),
        "{report:?}"
    );
    assert_eq!(report.bytes, "static registry layer".len() as u64);
    let written = writes(before);
    assert_eq!(written.len(), 3, "{written:?}");
    assert!(written[0].starts_with("POST /v2/nested/blobs/uploads/"), "{written:?}");
    let hex = layer.trim_start_matches("sha256:");
    assert!(
        written[1].starts_with("PUT /v2/nested/blobs/uploads/") && written[1].contains(hex),
        "{written:?}"
    );
    assert_eq!(written[2], format!("PUT /v2/nested/manifests/{image}"));
    // From the source: the top manifest (what the tag must hold), the missing image and its layer.
    let read: Vec<String> = hostile.requests()[source_before..]
        .iter()
        .filter(|r| r.starts_with("GET "))
        .cloned()
        .collect();
    assert_eq!(
        read,
        [
            format!("GET /v2/nested/manifests/{top}"),
            format!("GET /v2/nested/manifests/{image}"),
            format!("GET /v2/nested/blobs/{layer}"),
        ]
    );
    let state = copier.check_target(&req, &expected, Depth::Deep, 4).await.unwrap();
    assert!(
        matches!(state, TargetState::Verified { manifests: 3, blobs: 2 }),
        "{state:?}"
    );
}

//! Signatures, attestations and SBOMs travel with mirrored images: format-faithful cosign and OCI 1.1
//! artifacts on real docker-registry processes (no Referrers API there: the referrers tag schema),
//! read back at the target by skopeo and raw API reads.

use std::time::Duration;

use copycat::copy::referrers::ReferrerSource;
use copycat::copy::{Copier, CopyOptions, CopyReport, Outcome};
use copycat::referrer_policy::{ArtifactTypes, ReferrerPolicy, ReferrersMode};
use testkit::artifacts::{self, Subject};
use testkit::{Image, Registry, RegistryMode, get_manifest, list_tags, manifest_digest, skopeo_digest};

use crate::copy::request;
use crate::support::{self, start};

fn copier(regs: &[&Registry]) -> Copier {
    Copier::new(support::registries(regs))
}

fn options(referrers: ReferrerPolicy) -> CopyOptions {
    CopyOptions {
        referrers,
        ..CopyOptions::default()
    }
}

fn all() -> CopyOptions {
    options(ReferrerPolicy::default())
}

fn copied(report: &CopyReport, source: ReferrerSource) -> u32 {
    report.referrers.copied[source as usize]
}

/// Requests to `reg` that look for related artifacts (tag lists and the Referrers API).
fn discovery_requests(reg: &Registry) -> usize {
    reg.requests()
        .iter()
        .filter(|r| r.path.contains("/tags/list") || r.path.contains("/referrers/"))
        .count()
}

/// Pushes `artifact` to `repo:tag`.
async fn push_tagged(reg: &Registry, repo: &str, tag: &str, artifact: &Image) {
    artifact.push(reg, repo, tag).await.unwrap();
}

/// The digest of `repo:reference` at `dst` as skopeo reads it equals the one at `src`.
async fn same_at_both(src: &Registry, src_repo: &str, dst: &Registry, dst_repo: &str, reference: &str) -> String {
    let sep = if reference.contains(':') { "@" } else { ":" };
    let at_src = skopeo_digest(src, &format!("{src_repo}{sep}{reference}"))
        .await
        .unwrap();
    let at_dst = skopeo_digest(dst, &format!("{dst_repo}{sep}{reference}"))
        .await
        .unwrap();
    assert_eq!(at_dst, at_src, "{dst_repo}{sep}{reference}");
    at_dst
}

#[tokio::test]
async fn cosign_signatures_and_attestations_travel_with_an_image_and_an_index() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let copier = copier(&[&src, &dst]);

    let single = Image::oci("amd64", &[2048], 11).unwrap();
    single.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&single);
    let sig = artifacts::cosign_signature(&subject, "src/app", 1, 1);
    let att = artifacts::cosign_attestation(&subject, "src/app", 2);
    push_tagged(&src, "src/app", &subject.cosign_tag("sig"), &sig).await;
    push_tagged(&src, "src/app", &subject.cosign_tag("att"), &att).await;

    let index = Image::oci_index(&[2048], false, 12).unwrap();
    index.push(&src, "src/multi", "v1").await.unwrap();
    let child = index.child_for("amd64").unwrap();
    let (index_subject, child_subject) = (Subject::of(&index), Subject::of(child));
    let index_sig = artifacts::cosign_signature(&index_subject, "src/multi", 1, 3);
    let child_sig = artifacts::cosign_signature(&child_subject, "src/multi", 1, 4);
    push_tagged(&src, "src/multi", &index_subject.cosign_tag("sig"), &index_sig).await;
    push_tagged(&src, "src/multi", &child_subject.cosign_tag("sig"), &child_sig).await;

    let report = copier
        .copy(&request(&src, "src/app:v1", &dst, "dst/app", Some("v1")), &all())
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, report.referrers.found),
        (Outcome::Copied, 2),
        "{report:?}"
    );
    assert_eq!(copied(&report, ReferrerSource::CosignTag), 2);
    assert_eq!(report.referrers.error, None);
    for suffix in ["sig", "att"] {
        same_at_both(&src, "src/app", &dst, "dst/app", &subject.cosign_tag(suffix)).await;
    }
    assert_eq!(
        skopeo_digest(&dst, &format!("dst/app:{}", subject.cosign_tag("sig")))
            .await
            .unwrap(),
        sig.digest
    );
    for blob in sig.blobs.iter().chain(&att.blobs) {
        assert!(
            testkit::blob_exists(&dst, "dst/app", &blob.digest).await.unwrap(),
            "{}",
            blob.digest
        );
    }

    let report = copier
        .copy(&request(&src, "src/multi:v1", &dst, "dst/multi", Some("v1")), &all())
        .await
        .unwrap();
    assert_eq!(
        (copied(&report, ReferrerSource::CosignTag), report.referrers.found),
        (2, 2),
        "the index's signature and its child's: {report:?}"
    );
    for s in [&index_subject, &child_subject] {
        same_at_both(&src, "src/multi", &dst, "dst/multi", &s.cosign_tag("sig")).await;
    }
    let mut tags = list_tags(&dst, "dst/multi").await.unwrap();
    tags.sort();
    let mut want = vec![
        "v1".to_owned(),
        index_subject.cosign_tag("sig"),
        child_subject.cosign_tag("sig"),
    ];
    want.sort();
    assert_eq!(tags, want);

    // Within the interval, an unchanged image asks nothing more about its related artifacts.
    let before = discovery_requests(&src);
    let again = copier
        .copy(&request(&src, "src/multi:v1", &dst, "dst/multi", Some("v1")), &all())
        .await
        .unwrap();
    assert_eq!(
        (again.outcome, again.referrers.checked),
        (Outcome::AlreadyPresent, false)
    );
    assert_eq!(discovery_requests(&src), before);
}

/// An index of indexes: the related artifacts of the grandchildren travel too (the walk follows
/// nested indexes to the copy engine's nesting limit), in the copy that writes the image and in a
/// later look by another process, which reads the nested index at the target.
#[tokio::test]
async fn related_artifacts_of_the_manifests_of_a_nested_index_travel_with_it() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let inner = Image::oci_index(&[1024], false, 71).unwrap();
    let outer = Image::index_of(testkit::image::OCI_INDEX, vec![inner.clone()]).unwrap();
    outer.push(&src, "src/nested", "v1").await.unwrap();
    let grandchild = inner.child_for("arm64").unwrap();
    let (inner_subject, grandchild_subject) = (Subject::of(&inner), Subject::of(grandchild));
    let inner_sig = artifacts::cosign_signature(&inner_subject, "src/nested", 1, 72);
    let grandchild_sig = artifacts::cosign_signature(&grandchild_subject, "src/nested", 1, 73);
    push_tagged(&src, "src/nested", &inner_subject.cosign_tag("sig"), &inner_sig).await;
    push_tagged(
        &src,
        "src/nested",
        &grandchild_subject.cosign_tag("sig"),
        &grandchild_sig,
    )
    .await;
    let sbom = artifacts::spdx_sbom(&grandchild_subject, 74);
    artifacts::publish_referrer(&src, "src/nested", &grandchild_subject, &sbom)
        .await
        .unwrap();

    let req = request(&src, "src/nested:v1", &dst, "dst/nested", Some("v1"));
    let report = copier(&[&src, &dst]).copy(&req, &all()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Copied);
    assert_eq!(
        (
            copied(&report, ReferrerSource::CosignTag),
            copied(&report, ReferrerSource::FallbackTag),
            report.referrers.found
        ),
        (2, 1, 3),
        "the nested index's signature, its child's signature and SBOM: {report:?}"
    );
    for s in [&inner_subject, &grandchild_subject] {
        same_at_both(&src, "src/nested", &dst, "dst/nested", &s.cosign_tag("sig")).await;
    }
    let fallback = artifacts::fallback_tag(&grandchild.digest);
    same_at_both(&src, "src/nested", &dst, "dst/nested", &fallback).await;
    let (listed, _) = get_manifest(&dst, "dst/nested", &fallback).await.unwrap();
    assert_eq!(artifacts::index_digests(&listed).unwrap(), vec![sbom.digest.clone()]);

    // Another process (nothing remembered) finds all three present, reading the outer and the
    // nested index at the target, and writes nothing.
    let fresh = copier(&[&src, &dst]);
    let again = fresh.copy(&req, &all()).await.unwrap();
    assert_eq!(
        (again.outcome, again.referrers.found, again.referrers.copied_total()),
        (Outcome::AlreadyPresent, 3, 0),
        "{again:?}"
    );
    let check = copier(&[&src, &dst])
        .missing_referrers(&req, &all(), &copycat::reference::Digest::parse(&outer.digest).unwrap())
        .await
        .unwrap();
    assert_eq!((check.found, check.missing), (3, 0), "{check:?}");
}

#[tokio::test]
async fn an_sbom_on_the_referrers_tag_schema_travels_with_its_own_signature() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("arm64", &[4096], 21).unwrap();
    image.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&image);
    let sbom = artifacts::spdx_sbom(&subject, 1);
    artifacts::publish_referrer(&src, "src/app", &subject, &sbom)
        .await
        .unwrap();
    // A signature of the SBOM: a referrer of a referrer (level 2).
    let sbom_subject = Subject::of(&sbom);
    let sbom_sig = artifacts::cosign_signature(&sbom_subject, "src/app", 1, 5);
    push_tagged(&src, "src/app", &sbom_subject.cosign_tag("sig"), &sbom_sig).await;

    // Depth 1: the SBOM, not its signature.
    let shallow = ReferrerPolicy {
        depth: 1,
        ..ReferrerPolicy::default()
    };
    let report = copier(&[&src, &dst])
        .copy(
            &request(&src, "src/app:v1", &dst, "dst/shallow", Some("v1")),
            &options(shallow),
        )
        .await
        .unwrap();
    assert_eq!(
        (copied(&report, ReferrerSource::FallbackTag), report.referrers.found),
        (1, 1)
    );
    assert_eq!(
        manifest_digest(&dst, "dst/shallow", &sbom_subject.cosign_tag("sig"))
            .await
            .unwrap(),
        None
    );

    let report = copier(&[&src, &dst])
        .copy(&request(&src, "src/app:v1", &dst, "dst/app", Some("v1")), &all())
        .await
        .unwrap();
    assert_eq!(copied(&report, ReferrerSource::FallbackTag), 1, "{report:?}");
    assert_eq!(copied(&report, ReferrerSource::CosignTag), 1, "{report:?}");
    // The same tree at both ends: the index (byte for byte: the target had none), the SBOM by
    // digest with its blobs, the SBOM's signature.
    let fallback = artifacts::fallback_tag(&image.digest);
    let index_digest = same_at_both(&src, "src/app", &dst, "dst/app", &fallback).await;
    assert_eq!(
        manifest_digest(&src, "src/app", &fallback).await.unwrap(),
        Some(index_digest)
    );
    let (index, _) = get_manifest(&dst, "dst/app", &fallback).await.unwrap();
    assert_eq!(artifacts::index_digests(&index).unwrap(), vec![sbom.digest.clone()]);
    let (sbom_at_dst, media_type) = get_manifest(&dst, "dst/app", &sbom.digest).await.unwrap();
    assert_eq!(
        (sbom_at_dst, media_type.as_str()),
        (sbom.manifest.clone(), testkit::image::OCI_MANIFEST)
    );
    for blob in &sbom.blobs {
        assert!(testkit::blob_exists(&dst, "dst/app", &blob.digest).await.unwrap());
    }
    same_at_both(&src, "src/app", &dst, "dst/app", &sbom_subject.cosign_tag("sig")).await;
}

#[tokio::test]
async fn signatures_mode_and_the_artifact_type_filter_choose_what_travels() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[1024], 31).unwrap();
    image.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&image);
    let sig = artifacts::cosign_signature(&subject, "src/app", 1, 1);
    push_tagged(&src, "src/app", &subject.cosign_tag("sig"), &sig).await;
    let att = artifacts::cosign_attestation(&subject, "src/app", 2);
    push_tagged(&src, "src/app", &subject.cosign_tag("att"), &att).await;
    let sbom = artifacts::spdx_sbom(&subject, 3);
    artifacts::publish_referrer(&src, "src/app", &subject, &sbom)
        .await
        .unwrap();
    let notation = artifacts::artifact(&subject, "application/vnd.cncf.notary.signature", b"jws".to_vec(), 4);
    artifacts::publish_referrer(&src, "src/app", &subject, &notation)
        .await
        .unwrap();

    let signatures = ReferrerPolicy {
        mode: ReferrersMode::Signatures,
        ..ReferrerPolicy::default()
    };
    copier(&[&src, &dst])
        .copy(
            &request(&src, "src/app:v1", &dst, "dst/sigs", Some("v1")),
            &options(signatures),
        )
        .await
        .unwrap();
    let mut tags = list_tags(&dst, "dst/sigs").await.unwrap();
    tags.sort();
    let mut want = vec![
        "v1".to_owned(),
        subject.cosign_tag("sig"),
        artifacts::fallback_tag(&image.digest),
    ];
    want.sort();
    assert_eq!(tags, want, "no .att");
    let (index, _) = get_manifest(&dst, "dst/sigs", &artifacts::fallback_tag(&image.digest))
        .await
        .unwrap();
    assert_eq!(
        artifacts::index_digests(&index).unwrap(),
        vec![notation.digest.clone()],
        "no SBOM"
    );

    let no_sboms = ReferrerPolicy {
        artifact_types: ArtifactTypes::parse(&["!application/spdx+json".into()]).unwrap(),
        ..ReferrerPolicy::default()
    };
    let report = copier(&[&src, &dst])
        .copy(
            &request(&src, "src/app:v1", &dst, "dst/nosbom", Some("v1")),
            &options(no_sboms),
        )
        .await
        .unwrap();
    assert_eq!(report.referrers.found, 3, "sig, att, notation: {report:?}");
    let (index, _) = get_manifest(&dst, "dst/nosbom", &artifacts::fallback_tag(&image.digest))
        .await
        .unwrap();
    assert_eq!(artifacts::index_digests(&index).unwrap(), vec![notation.digest.clone()]);
    assert_eq!(manifest_digest(&dst, "dst/nosbom", &sbom.digest).await.unwrap(), None);
}

#[tokio::test]
async fn referrers_none_copies_nothing_extra_and_asks_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[1024], 41).unwrap();
    image.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&image);
    push_tagged(
        &src,
        "src/app",
        &subject.cosign_tag("sig"),
        &artifacts::cosign_signature(&subject, "src/app", 1, 1),
    )
    .await;
    artifacts::publish_referrer(&src, "src/app", &subject, &artifacts::spdx_sbom(&subject, 2))
        .await
        .unwrap();

    let none = options(ReferrerPolicy {
        mode: ReferrersMode::None,
        ..ReferrerPolicy::default()
    });
    let report = copier(&[&src, &dst])
        .copy(&request(&src, "src/app:v1", &dst, "dst/app", Some("v1")), &none)
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, &report.referrers),
        (Outcome::Copied, &Default::default())
    );
    assert_eq!(discovery_requests(&src), 0);
    assert_eq!(discovery_requests(&dst), 0);
    assert_eq!(list_tags(&dst, "dst/app").await.unwrap(), vec!["v1"]);
}

#[tokio::test]
async fn a_source_without_referrers_costs_one_request_per_image_per_interval() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let interval = Duration::from_secs(2);
    let copier = copier(&[&src, &dst]).with_referrers_interval(interval);
    // The first image on a host also learns whether it serves the Referrers API (once per host).
    Image::oci("amd64", &[1024], 50)
        .unwrap()
        .push(&src, "src/warm", "v1")
        .await
        .unwrap();
    copier
        .copy(&request(&src, "src/warm:v1", &dst, "dst/warm", Some("v1")), &all())
        .await
        .unwrap();
    let probes = src.requests().iter().filter(|r| r.path.contains("/referrers/")).count();
    assert_eq!(probes, 1, "one probe of the Referrers API per host");

    // An index of three digests without any related artifact.
    let index = Image::oci_index(&[1024], false, 51).unwrap();
    index.push(&src, "src/app", "v1").await.unwrap();
    let req = request(&src, "src/app:v1", &dst, "dst/app", Some("v1"));
    let before = discovery_requests(&src);
    let report = copier.copy(&req, &all()).await.unwrap();
    assert_eq!((report.referrers.checked, report.referrers.found), (true, 0));
    assert_eq!(
        discovery_requests(&src) - before,
        1,
        "one tag list for the image's three digests"
    );
    assert_eq!(
        dst.requests()
            .iter()
            .filter(|r| r.path.contains("/tags/list") || r.path.contains("sha256-"))
            .count(),
        0
    );

    // Status updates within the interval ask nothing; the next one after it asks once.
    for _ in 0..3 {
        let r = copier.copy(&req, &all()).await.unwrap();
        assert!(!r.referrers.checked);
    }
    assert_eq!(discovery_requests(&src) - before, 1);
    tokio::time::sleep(interval + Duration::from_millis(200)).await;
    let r = copier.copy(&req, &all()).await.unwrap();
    assert_eq!((r.outcome, r.referrers.checked), (Outcome::AlreadyPresent, true));
    assert_eq!(discovery_requests(&src) - before, 2);

    // Two more images of the repository, looked at together once the list above is no longer
    // shared (a tenth of the interval): one tag list for both.
    for (tag, seed) in [("v2", 52), ("v3", 53)] {
        Image::oci("amd64", &[1024], seed)
            .unwrap()
            .push(&src, "src/app", tag)
            .await
            .unwrap();
    }
    tokio::time::sleep(interval / 10 + Duration::from_millis(100)).await;
    let before = discovery_requests(&src);
    let (req_v2, req_v3, opts) = (
        request(&src, "src/app:v2", &dst, "dst/app", Some("v2")),
        request(&src, "src/app:v3", &dst, "dst/app", Some("v3")),
        all(),
    );
    let (v2, v3) = tokio::join!(copier.copy(&req_v2, &opts), copier.copy(&req_v3, &opts));
    assert!(v2.unwrap().referrers.checked && v3.unwrap().referrers.checked);
    assert_eq!(
        discovery_requests(&src) - before,
        1,
        "one tag list for the repository's images"
    );

    // A one-shot process (`copycat sync` again: nothing remembered) learns from the tag list that
    // nothing can refer to the index's children: it does not even read the index at the target.
    let (src_before, dst_before) = (src.requests().len(), dst.requests().len());
    let r = self::copier(&[&src, &dst]).copy(&req, &all()).await.unwrap();
    assert_eq!((r.outcome, r.referrers.checked), (Outcome::AlreadyPresent, true));
    let paths = |reg: &Registry, from: usize| -> Vec<String> {
        reg.requests()[from..]
            .iter()
            .filter(|e| e.path != "/v2/")
            .map(|e| format!("{} {}", e.method, e.path.split('?').next().unwrap_or_default()))
            .collect()
    };
    let probe = format!("GET /v2/src/app/referrers/{}", index.digest);
    let mut at_src = paths(&src, src_before);
    at_src.sort();
    assert_eq!(
        at_src,
        vec![
            probe,
            "GET /v2/src/app/tags/list".into(),
            "HEAD /v2/src/app/manifests/v1".into()
        ],
        "the source: the image's HEAD, the tag list and the Referrers API probe of its host"
    );
    assert_eq!(paths(&dst, dst_before), vec!["HEAD /v2/dst/app/manifests/v1"]);
}

#[tokio::test]
async fn a_re_sign_upstream_reaches_the_target_within_the_interval() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let interval = Duration::from_secs(2);
    let copier = copier(&[&src, &dst]).with_referrers_interval(interval);
    let image = Image::oci("amd64", &[1024], 61).unwrap();
    image.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&image);
    let tag = subject.cosign_tag("sig");
    let first = artifacts::cosign_signature(&subject, "src/app", 1, 7);
    push_tagged(&src, "src/app", &tag, &first).await;
    let req = request(&src, "src/app:v1", &dst, "dst/app", Some("v1"));
    copier.copy(&req, &all()).await.unwrap();
    assert_eq!(
        manifest_digest(&dst, "dst/app", &tag).await.unwrap(),
        Some(first.digest.clone())
    );

    // cosign adds a second signature to the same manifest: a new digest under the same tag.
    let resigned = artifacts::cosign_signature(&subject, "src/app", 2, 7);
    push_tagged(&src, "src/app", &tag, &resigned).await;
    let deadline = tokio::time::Instant::now() + interval + Duration::from_secs(3);
    loop {
        let report = copier.copy(&req, &all()).await.unwrap();
        if manifest_digest(&dst, "dst/app", &tag).await.unwrap() == Some(resigned.digest.clone()) {
            assert_eq!(copied(&report, ReferrerSource::CosignTag), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the re-sign did not arrive within the interval"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    same_at_both(&src, "src/app", &dst, "dst/app", &tag).await;
}

#[tokio::test]
async fn two_concurrent_writers_merge_the_fallback_index_without_losing_entries() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    // The same images in two source repositories, each with SBOMs of its own; two copiers (as two
    // processes: no lock shared) mirror both into one target repository at the same time.
    let mut expected = Vec::new();
    for n in 0..4u64 {
        let image = Image::oci("amd64", &[512], 70 + n).unwrap();
        let subject = Subject::of(&image);
        let mut digests = Vec::new();
        for (repo, seed) in [("src/a", 100), ("src/b", 200)] {
            image.push(&src, repo, &format!("v{n}")).await.unwrap();
            for k in 0..2 {
                let sbom = artifacts::spdx_sbom(&subject, seed + n * 10 + k);
                artifacts::publish_referrer(&src, repo, &subject, &sbom).await.unwrap();
                digests.push(sbom.digest);
            }
        }
        digests.sort();
        expected.push((image.digest.clone(), digests));
    }
    let (first, second) = (copier(&[&src, &dst]), copier(&[&src, &dst]));
    let (src_ref, dst_ref) = (&src, &dst);
    let writer = |copier: Copier, repo: &'static str| async move {
        for n in 0..4 {
            let req = request(
                src_ref,
                &format!("{repo}:v{n}"),
                dst_ref,
                "dst/app",
                Some(&format!("v{n}")),
            );
            let report = copier.copy(&req, &all()).await.unwrap();
            assert_eq!(report.referrers.error, None, "{repo} v{n}");
        }
    };
    tokio::join!(writer(first, "src/a"), writer(second, "src/b"));
    for (subject, digests) in expected {
        let (index, _) = get_manifest(&dst, "dst/app", &artifacts::fallback_tag(&subject))
            .await
            .unwrap();
        assert_eq!(
            artifacts::index_digests(&index).unwrap(),
            digests,
            "every writer's entries, for {subject}"
        );
    }
}

/// A copy request between two hosts given as `host:port` (the Referrers API fronts).
fn request_between(src: &str, source: &str, dst: &str, target_repo: &str, tag: &str) -> copycat::copy::CopyRequest {
    use copycat::reference::ImageRef;
    copycat::copy::CopyRequest {
        source: ImageRef::parse(&format!("{src}/{source}")).unwrap(),
        target: ImageRef::parse(&format!("{dst}/{target_repo}")).unwrap(),
        target_tag: Some(tag.to_owned()),
    }
}

#[tokio::test]
async fn the_referrers_api_is_read_where_served_and_a_target_serving_it_indexes_the_subjects() {
    use testkit::referrers_api::ReferrersApi;
    let (src_reg, dst_reg, plain) = (
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
    );
    let (src, dst) = (
        ReferrersApi::start(&src_reg).unwrap(),
        ReferrersApi::start(&dst_reg).unwrap(),
    );
    let via_front = testkit::Client::new(&src_reg)
        .unwrap()
        .with_base_url(&format!("http://{}", src.host()));
    let index = Image::oci_index(&[1024], false, 81).unwrap();
    via_front.push_image("src/app", "v1", &index).await.unwrap();
    let child = index.child_for("arm64").unwrap();
    let (index_subject, child_subject) = (Subject::of(&index), Subject::of(child));
    let sbom = artifacts::spdx_sbom(&index_subject, 1);
    let notation = artifacts::artifact(
        &child_subject,
        "application/vnd.cncf.notary.signature",
        b"jws".to_vec(),
        2,
    );
    for artifact in [&sbom, &notation] {
        // The front indexes them as they are pushed (OCI-Subject), as a registry serving the API does.
        via_front
            .push_image("src/app", &artifact.digest, artifact)
            .await
            .unwrap();
    }
    assert_eq!(
        src.referrers("src/app", &index.digest).await.unwrap(),
        vec![sbom.digest.clone()]
    );

    let copier = copier(&[&src_reg, &dst_reg, &plain]);
    let api_calls = || src.requests().iter().filter(|r| r.contains("/referrers/")).count();
    let before = api_calls();
    let report = copier
        .copy(
            &request_between(&src.host(), "src/app:v1", &dst.host(), "dst/app", "v1"),
            &all(),
        )
        .await
        .unwrap();
    assert_eq!(copied(&report, ReferrerSource::ReferrersApi), 2, "{report:?}");
    assert_eq!(
        api_calls() - before,
        3 + 2,
        "one Referrers API call per digest of the image, and per referrer (for its own)"
    );
    // The target's Referrers API lists the same referrers, indexed from the pushes' `subject`:
    // copycat wrote no index tag of its own there.
    for (subject, want) in [(&index.digest, &sbom.digest), (&child_subject.digest, &notation.digest)] {
        assert_eq!(dst.referrers("dst/app", subject).await.unwrap(), vec![want.clone()]);
        let written_by_copycat = dst
            .requests()
            .iter()
            .any(|r| r.starts_with("PUT") && r.contains(&artifacts::fallback_tag(subject)));
        assert!(!written_by_copycat, "{:?}", dst.requests());
    }
    let (at_dst, _) = get_manifest(&dst_reg, "dst/app", &sbom.digest).await.unwrap();
    assert_eq!(at_dst, sbom.manifest);

    // From the API to a registry without it: the fallback index at the target.
    let only_sboms = options(ReferrerPolicy {
        artifact_types: ArtifactTypes::parse(&["application/spdx+json".into()]).unwrap(),
        ..ReferrerPolicy::default()
    });
    let before = src.requests().len();
    let report = copier
        .copy(
            &request_between(&src.host(), "src/app:v1", &plain.host(), "dst/app", "v1"),
            &only_sboms,
        )
        .await
        .unwrap();
    assert_eq!(copied(&report, ReferrerSource::ReferrersApi), 1, "{report:?}");
    let asked: Vec<String> = src.requests()[before..]
        .iter()
        .filter(|r| r.contains("/referrers/"))
        .cloned()
        .collect();
    assert!(
        asked
            .iter()
            .all(|r| r.contains("artifactType=application%2Fspdx%2Bjson")),
        "{asked:?}"
    );
    let (fallback, _) = get_manifest(&plain, "dst/app", &artifacts::fallback_tag(&index.digest))
        .await
        .unwrap();
    assert_eq!(artifacts::index_digests(&fallback).unwrap(), vec![sbom.digest.clone()]);
    assert_eq!(
        manifest_digest(&plain, "dst/app", &artifacts::fallback_tag(&child_subject.digest))
            .await
            .unwrap(),
        None,
        "the notation signature is filtered out"
    );
}

/// A target that honours conditional writes (the testkit front without the Referrers API, over a
/// docker-registry): copycat writes its fallback index on the condition that the tag still holds
/// what it read (`If-None-Match: *` when it read none, `If-Match` with the digest after). Another
/// writer's index landing between copycat's read and its write gets that write refused (412);
/// copycat reads again and merges over the other writer's index, which keeps both entries.
/// distribution itself ignores the condition (its manifest PUT handler reads none): docker-registry
/// takes a write under a wrong `If-Match`, so targets like it stay covered by the read-back merge.
#[tokio::test]
async fn a_conditional_write_of_the_fallback_index_refused_after_another_writer_is_merged_again() {
    use testkit::referrers_api::ReferrersApi;
    let (src, dst_reg) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let dst = ReferrersApi::without_api(&dst_reg).unwrap();
    let image = Image::oci("amd64", &[1024], 91).unwrap();
    image.push(&src, "src/app", "v1").await.unwrap();
    let subject = Subject::of(&image);
    let sbom = artifacts::spdx_sbom(&subject, 92);
    artifacts::publish_referrer(&src, "src/app", &subject, &sbom)
        .await
        .unwrap();
    // Another writer (an `oras attach` against the mirror) pushes its referrer, and writes its index
    // right after copycat has read the target's (none yet).
    let theirs = artifacts::artifact(&subject, "application/vnd.example.note", b"note".to_vec(), 93);
    theirs.push(&dst_reg, "dst/app", &theirs.digest).await.unwrap();
    let tag = artifacts::fallback_tag(&image.digest);
    let their_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": testkit::image::OCI_INDEX,
        "manifests": [artifacts::referrer_descriptor(&theirs)],
    });
    dst.write_before_next_put(
        "dst/app",
        &tag,
        testkit::image::OCI_INDEX,
        serde_json::to_vec(&their_index).unwrap().into(),
    );

    let req = request_between(&src.host(), "src/app:v1", &dst.host(), "dst/app", "v1");
    let report = copier(&[&src, &dst_reg]).copy(&req, &all()).await.unwrap();
    assert_eq!(
        (copied(&report, ReferrerSource::FallbackTag), &report.referrers.error),
        (1, &None),
        "{report:?}"
    );
    let (index, _) = get_manifest(&dst_reg, "dst/app", &tag).await.unwrap();
    let mut want = vec![theirs.digest.clone(), sbom.digest.clone()];
    want.sort();
    assert_eq!(artifacts::index_digests(&index).unwrap(), want, "both writers' entries");
    let their_digest = testkit::sha256_digest(&serde_json::to_vec(&their_index).unwrap());
    let index_puts: Vec<String> = dst
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT") && r.contains(&format!("/manifests/{tag}")))
        .collect();
    assert_eq!(
        index_puts,
        [
            format!("PUT /v2/dst/app/manifests/{tag} if-none-match: *"),
            format!("PUT /v2/dst/app/manifests/{tag} if-match: \"{their_digest}\""),
        ],
        "the first write refused (the other writer's index was there), the second over it"
    );

    // docker-registry (distribution 2.8) writes under an `If-Match` that does not hold.
    let registries = support::registries(&[&dst_reg]);
    let wrong = copycat::reference::Digest::parse(&sbom.digest).unwrap();
    registries
        .get(&dst_reg.host())
        .put_manifest_if("dst/app", &tag, index.clone(), testkit::image::OCI_INDEX, Some(&wrong))
        .await
        .expect("distribution ignores If-Match");
}

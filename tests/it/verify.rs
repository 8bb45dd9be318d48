//! `copycat verify` as an operator runs it: the built binary against the stand-in API server and real
//! registries, whose storage the tests damage behind the registry's back (no blob descriptor cache,
//! so the registry answers from its files).

use std::collections::BTreeMap;
use std::path::PathBuf;

use copycat::copy::CopyOptions;
use copycat::copy::check::{Depth, Missing, TargetState};
use copycat::platform::Platform;
use serde_json::Value;
use testkit::apiserver::{ApiFault, ApiServer};
use testkit::{AccessLogEntry, Image, Registry, RegistryMode};

use crate::commands::{copycat, text};
use crate::copy::{copier, request};
use crate::discovery::workload;
use crate::server::{Daemon, sample};
use crate::support::{
    assert_no_secrets, copycat_requests, credential_secrets, eventually, issued_token_secrets, start,
};

/// How long a test waits for the daemon.
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The file holding `digest`'s bytes in `reg`'s storage.
pub(crate) fn blob_file(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    reg.data_dir()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// The link that makes manifest `digest` part of `repo` in `reg`'s storage.
pub(crate) fn manifest_link(reg: &Registry, repo: &str, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    reg.data_dir().join(format!(
        "docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256/{hex}/link"
    ))
}

/// `requests` counted by method and kind (`HEAD blobs`, `GET manifests`), registry pings left out.
fn requests_by_kind(requests: &[AccessLogEntry]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in requests {
        let kind = ["manifests", "blobs"]
            .into_iter()
            .find(|k| r.path.contains(&format!("/{k}/")));
        if let Some(kind) = kind {
            *out.entry(format!("{} {kind}", r.method)).or_default() += 1;
        }
    }
    out
}

/// `copycat verify ARGS…` against `kubeconfig`, mirroring to `dst`, excluding quay.io.
fn verify(kubeconfig: &std::path::Path, dst: &Registry, args: &[&str]) -> std::process::Output {
    let kubeconfig = kubeconfig.to_str().unwrap();
    let mut all = vec!["verify", "--kubeconfig", kubeconfig];
    all.extend(args);
    copycat(
        &all,
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &dst.host()),
            ("EXCLUDE_REGISTRIES", "quay.io"),
        ],
    )
}

/// The JSON report's images as (image without its registry → (state, detail)).
fn states(out: &std::process::Output) -> BTreeMap<String, (String, String)> {
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)));
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let image = i["image"].as_str().unwrap();
            let short = image.split_once('/').map_or(image, |(_, rest)| rest).to_owned();
            let (state, detail) = (i["state"].as_str().unwrap(), i["detail"].as_str().unwrap());
            (short, (state.to_owned(), detail.to_owned()))
        })
        .collect()
}

/// Issue 14 part 2: a cluster whose images are all backed up verifies (exit 0); a byte changed in a
/// stored layer (same size) passes the HEAD check and fails `--deep`; a deleted blob, a deleted child
/// manifest and a tag holding another digest fail it (exit 1) for exactly the images affected, each
/// saying what is missing; excluded images are listed and not counted; `--namespace` narrows.
#[tokio::test]
async fn verify_proves_the_backup_complete_and_names_what_is_missing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci_index(&[3000, 2000], true, 1400).unwrap();
    let db = Image::docker("amd64", &[2500, 1500], 1401).unwrap();
    let migrate = Image::oci("amd64", &[1800], 1402).unwrap();
    let other = Image::oci("amd64", &[1700], 1403).unwrap();
    // Mirrored: the same images at the same names on the target (the daemon's default naming).
    for reg in [&src, &dst] {
        web.push(reg, "shop/web", "1.0").await.unwrap();
        db.push(reg, "data/db", "16").await.unwrap();
        migrate.push(reg, "tools/migrate", "1").await.unwrap();
    }
    let on = |r: &str| format!("{}/{r}", src.host());
    let server = ApiServer::new();
    server
        .apply_all([
            workload(
                "Deployment",
                "apps/v1",
                "default",
                "web",
                &[("web", &on("shop/web:1.0"))],
            ),
            workload("StatefulSet", "apps/v1", "default", "db", &[("db", &on("data/db:16"))]),
            workload(
                "CronJob",
                "batch/v1",
                "ops",
                "nightly",
                &[("m", &on("tools/migrate:1"))],
            ),
            workload(
                "Deployment",
                "apps/v1",
                "default",
                "vendor",
                &[("v", "quay.io/vendor/agent:2")],
            ),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let kubeconfig = api.kubeconfig_path();

    // 1. Everything mirrored: exit 0, a table with every image, the excluded one with its rule.
    let out = verify(kubeconfig, &dst, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    // Reads only: a GET per manifest (the one under the tag is not HEADed first: its GET's digest
    // is compared), a HEAD per child manifest before its GET, a HEAD per blob.
    let images = [&web, &db, &migrate];
    let manifests: usize = images.iter().map(|i| i.all_manifest_digests().len()).sum();
    let blobs: usize = images.iter().map(|i| i.all_blobs().len()).sum();
    let quick = requests_by_kind(&copycat_requests(&dst));
    assert_eq!(
        quick,
        [
            ("GET manifests", manifests),
            ("HEAD blobs", blobs),
            ("HEAD manifests", manifests - images.len())
        ]
        .map(|(k, n)| (k.to_owned(), n))
        .into(),
        "{manifests} manifests, {blobs} blobs"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (image, target) in [
        ("shop/web:1.0", "shop/web:1.0"),
        ("data/db:16", "data/db:16"),
        ("tools/migrate:1", "tools/migrate:1"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&on(image)))
            .unwrap_or_else(|| panic!("no line for {image}:\n{stdout}"));
        assert!(
            line.contains(&format!("{}/{target}", dst.host())) && line.contains(" verified "),
            "{line}"
        );
    }
    let vendor = stdout
        .lines()
        .find(|l| l.starts_with("quay.io/vendor/agent:2"))
        .unwrap();
    assert!(
        vendor.contains("excluded")
            && vendor.contains("excluded by quay.io")
            && vendor.contains("Deployment default/vendor"),
        "{vendor}"
    );
    assert!(
        stdout.contains("4 images: 3 verified, 0 missing, 0 mismatch, 0 failed, 1 excluded; coverage 3/3 (100.0%)"),
        "{stdout}"
    );

    // `--namespace` narrows to the images used there; JSON parses.
    let out = verify(kubeconfig, &dst, &["--namespace", "ops", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let only_ops = states(&out);
    assert_eq!(only_ops.keys().collect::<Vec<_>>(), ["tools/migrate:1"], "{only_ops:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["verified"], 1);
    assert_eq!(report["images"][0]["expected_from"], "source");
    assert_eq!(report["images"][0]["expected"], migrate.digest.as_str());
    assert_eq!(report["images"][0]["users"][0], "CronJob ops/nightly");
    let out = verify(kubeconfig, &dst, &["--namespace", "nowhere"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no image is in scope"), "{}", text(&out));

    // 2. A layer of web's amd64 image damaged in storage, its size unchanged: HEAD cannot tell, a
    // deep check reads and re-hashes it.
    let layer = &web.child_for("amd64").unwrap().blobs[1].digest;
    let file = blob_file(&dst, layer);
    let mut bytes = std::fs::read(&file).expect("the stored layer");
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let out = verify(kubeconfig, &dst, &[]);
    assert_eq!(out.status.code(), Some(0), "HEADs see the blob present: {}", text(&out));
    let before = copycat_requests(&dst).len();
    let out = verify(kubeconfig, &dst, &["--deep", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let deep_requests = requests_by_kind(&copycat_requests(&dst)[before..]);
    assert_eq!(
        deep_requests["GET blobs"], blobs,
        "every blob read once: {deep_requests:?}"
    );
    let deep = states(&out);
    assert_eq!(
        deep["shop/web:1.0"],
        ("missing".to_owned(), "1 damaged".to_owned()),
        "{deep:?}"
    );
    assert_eq!(deep["data/db:16"].0, "verified", "{deep:?}");
    assert_eq!(deep["tools/migrate:1"].0, "verified", "{deep:?}");

    // 3. A blob of db deleted, web's arm64 manifest unlinked from its repository, and the migrate tag
    // now holding another image: exit 1, each image with exactly what is wrong.
    std::fs::remove_file(blob_file(&dst, &db.blobs[2].digest)).unwrap();
    let arm64 = &web.child_for("arm64").unwrap().digest;
    std::fs::remove_file(manifest_link(&dst, "shop/web", arm64)).unwrap();
    other.push(&dst, "tools/migrate", "1").await.unwrap();
    let out = verify(kubeconfig, &dst, &["--output", "json"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let broken = states(&out);
    assert_eq!(
        broken["shop/web:1.0"],
        ("missing".to_owned(), "1 child manifest".to_owned()),
        "the damaged layer belongs to the other child, which is still checked: {broken:?}"
    );
    assert_eq!(
        broken["data/db:16"],
        ("missing".to_owned(), "1 blob".to_owned()),
        "{broken:?}"
    );
    assert_eq!(
        broken["tools/migrate:1"],
        (
            "mismatch".to_owned(),
            format!("the target holds {}, expected {}", other.digest, migrate.digest)
        ),
        "{broken:?}"
    );
    assert_eq!(broken["vendor/agent:2"].0, "excluded", "{broken:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &report["summary"];
    assert_eq!(
        (
            &summary["verified"],
            &summary["missing"],
            &summary["mismatch"],
            &summary["excluded"]
        ),
        (&0.into(), &2.into(), &1.into(), &1.into()),
        "{summary}"
    );
    assert_eq!(summary["coverage"], 0.0);
    assert!(all.contains("the backup is incomplete"), "{all}");
}

/// A configuration error is exit 2, as for the other commands; so is an unusable kubeconfig.
#[test]
fn verify_with_a_bad_configuration_exits_2() {
    let out = copycat(&["verify"], &[("TARGET_KIND", "docker")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = copycat(
        &["verify", "--kubeconfig", "/nonexistent/kubeconfig"],
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", "127.0.0.1:1")],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("/nonexistent/kubeconfig"), "{all}");
}

/// `$arch` from the image names the targets as the daemon names them (the source's architecture is
/// read first); a digest-pinned image is checked against the digest the cluster runs, a tagged one
/// against the source tag's digest, and the report says which. With the source away, what cannot be
/// named or compared is `failed` on the source side, naming the source host (exit 1). The target
/// asks for bearer tokens: neither the password nor a token appears in the output.
#[tokio::test]
async fn verify_names_arch_targets_and_says_where_the_expected_digest_came_from() {
    let (mut src, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::token("ops", "verify-secret-41")),
    );
    let tagged = Image::oci("arm64", &[1200], 1410).unwrap();
    let pinned = Image::docker("amd64", &[1300], 1411).unwrap();
    tagged.push(&src, "tools/x", "1").await.unwrap();
    pinned.push(&src, "tools/y", &pinned.digest).await.unwrap();
    let anchor = format!("copycat-{}", pinned.digest.trim_start_matches("sha256:"));
    tagged.push(&dst, "m/arm64/tools/x", "1").await.unwrap();
    pinned.push(&dst, "m/amd64/tools/y", &anchor).await.unwrap();
    let server = ApiServer::new();
    let (x, y) = (
        format!("{}/tools/x:1", src.host()),
        format!("{}/tools/y@{}", src.host(), pinned.digest),
    );
    server
        .apply(workload(
            "Deployment",
            "apps/v1",
            "default",
            "app",
            &[("x", &x), ("y", &y)],
        ))
        .unwrap();
    let api = server.serve().unwrap();
    let env = [
        ("TARGET_KIND", "docker"),
        ("TARGET_REGISTRY", &dst.host() as &str),
        ("TARGET_REPO_PREFIX", "m/$arch"),
        ("TARGET_USERNAME", "ops"),
        ("TARGET_PASSWORD", "verify-secret-41"),
        // The stopped source is retried once, briefly.
        ("REGISTRY_RETRY_ATTEMPTS", "2"),
        ("REGISTRY_RETRY_BACKOFF", "100ms"),
    ];
    let run = || {
        copycat(
            &[
                "verify",
                "--kubeconfig",
                api.kubeconfig_path().to_str().unwrap(),
                "--output",
                "json",
            ],
            &env,
        )
    };

    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let images = report["images"].as_array().unwrap();
    let find = |image: &str| {
        images
            .iter()
            .find(|i| i["image"] == image)
            .unwrap_or_else(|| panic!("{image}: {report}"))
    };
    assert_eq!(find(&x)["target"], format!("{}/m/arm64/tools/x:1", dst.host()));
    assert_eq!(find(&x)["expected_from"], "source");
    assert_eq!(find(&y)["target"], format!("{}/m/amd64/tools/y:{anchor}", dst.host()));
    assert_eq!(find(&y)["expected_from"], "cluster");
    assert_eq!(find(&y)["expected"], pinned.digest.as_str());

    let verified = text(&out);
    src.stop();
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let mut secrets = credential_secrets("ops", "verify-secret-41");
    secrets.extend(issued_token_secrets(&dst));
    assert!(secrets.len() > 2, "tokens were issued");
    assert_no_secrets(&[("verified", &verified), ("failed", &text(&out))], &secrets);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for image in report["images"].as_array().unwrap() {
        assert_eq!(image["state"], "failed", "{image}");
        assert_eq!(image["side"], "source", "{image}");
        assert!(image["detail"].as_str().unwrap().contains(&src.host()), "{image}");
    }
}

/// The check in the library, as the daemon can run it: with a platform subset the target holds what
/// the copy wrote under the tag (one platform's manifest, or a filtered index), and a fresh copier
/// (nothing remembered) computes that digest from the source index and finds it whole, even read
/// deep; the whole index's digest is a mismatch there. A target by digest is checked by digest, and
/// a target never written misses its manifest.
#[tokio::test]
async fn platform_subsets_and_targets_by_digest_are_checked_against_what_the_copy_wrote() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let index = Image::oci_index(&[1000], true, 1420).unwrap();
    index.push(&src, "multi/app", "1").await.unwrap();
    let platforms = |names: &[&str]| names.iter().map(|p| Platform::parse(p).unwrap()).collect::<Vec<_>>();
    for (wanted, tag) in [
        (platforms(&["linux/amd64"]), "one"),
        (platforms(&["linux/amd64", "linux/arm64"]), "two"),
    ] {
        let req = request(&src, "multi/app:1", &dst, "multi/app", Some(tag));
        let opts = CopyOptions {
            platforms: wanted,
            ..CopyOptions::default()
        };
        let written = copier(&[&src, &dst]).copy(&req, &opts).await.unwrap().digest.unwrap();
        let fresh = copier(&[&src, &dst]);
        let expected = fresh.expected_digest(&req, &opts).await.unwrap();
        assert_eq!(expected, written, "{tag}");
        assert_ne!(expected.to_string(), index.digest, "{tag}");
        let state = fresh.check_target(&req, &expected, Depth::Deep, 4).await.unwrap();
        assert!(matches!(state, TargetState::Verified { .. }), "{tag}: {state:?}");
        let whole = fresh.expected_digest(&req, &CopyOptions::default()).await.unwrap();
        assert_eq!(whole.to_string(), index.digest);
        let state = fresh.check_target(&req, &whole, Depth::Quick, 4).await.unwrap();
        assert_eq!(
            state,
            TargetState::Mismatch {
                expected: whole,
                found: expected
            },
            "{tag}"
        );
    }

    let by_digest = request(&src, &format!("multi/app@{}", index.digest), &dst, "pinned", None);
    let copier = copier(&[&src, &dst]);
    copier.copy(&by_digest, &CopyOptions::default()).await.unwrap();
    let expected = copier
        .expected_digest(&by_digest, &CopyOptions::default())
        .await
        .unwrap();
    let state = copier
        .check_target(&by_digest, &expected, Depth::Quick, 4)
        .await
        .unwrap();
    let manifests = index.all_manifest_digests().len();
    let blobs = index.all_blobs().len();
    assert_eq!(state, TargetState::Verified { manifests, blobs });
    let never = request(&src, "multi/app:1", &dst, "never/written", Some("1"));
    let state = copier.check_target(&never, &expected, Depth::Quick, 4).await.unwrap();
    assert_eq!(
        state,
        TargetState::Missing(Missing {
            manifest: true,
            ..Missing::default()
        })
    );
}

/// A kind the API server refuses to list (403) fails `verify` at once, naming the watch and the
/// refusal, instead of waiting for a list that will never come.
#[tokio::test]
async fn verify_fails_at_once_when_a_watched_kind_cannot_be_listed() {
    let dst = start(RegistryMode::Plain);
    let server = ApiServer::new();
    server.inject(ApiFault::forbidden("statefulsets", "list"));
    let api = server.serve().unwrap();
    let started = std::time::Instant::now();
    let out = verify(api.kubeconfig_path(), &dst, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("did not list every watched kind") && all.contains("forbidden: StatefulSet cluster-wide"),
        "{all}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Issue 14's "coverage is exact": 20 Deployments in 4 namespaces, mirrored by the daemon under
/// `backup/$namespace`, 2 of them failing (their source tag does not exist). The daemon's periodic
/// verification (a short `verifyInterval`) shows 18 verified and 2 failed in `/status` (each entry's
/// `backup`), `/status/summary` and the metrics. A blob of one image deleted in the target's storage
/// is found by a later round and repaired (that blob alone uploaded again, under the intact tag); a
/// tag deleted there is found missing and copied again (only the manifest written); both are
/// verified again. Then `verify` (no daemon running) agrees: 18 verified, 2 failed on the source
/// side, exit 1; the targets it names are the daemon's.
#[tokio::test]
async fn verify_agrees_with_what_the_daemon_mirrored_and_verifies() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let server = ApiServer::new();
    let mut objects = Vec::new();
    let mut images = Vec::new();
    for i in 0..20u64 {
        let repo = format!("apps/app{i}");
        if i < 18 {
            let image = Image::oci("amd64", &[1000 + i], 1500 + i).unwrap();
            image.push(&src, &repo, "1").await.unwrap();
            images.push(image);
        }
        let (ns, name) = (format!("team{}", i % 4), format!("app{i}"));
        let image = format!("{}/{repo}:1", src.host());
        objects.push(workload("Deployment", "apps/v1", &ns, &name, &[("c", &image)]));
    }
    server.apply_all(objects).unwrap();
    let api = server.serve().unwrap();
    let prefix = [("TARGET_REPO_PREFIX", "backup/$namespace")];
    let mut daemon_env = prefix.to_vec();
    daemon_env.push(("VERIFY_INTERVAL", "3s"));
    let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, &daemon_env);
    eventually("18 mirrored and 2 failures in /status", WAIT, async || {
        let (code, body) = daemon.get("/status").await;
        let Ok(all) = serde_json::from_str::<Value>(&body) else {
            return false;
        };
        let states: Vec<&str> = all
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["state"].as_str())
            .collect();
        code == 200
            && states.iter().filter(|s| **s == "mirrored").count() == 18
            && states.iter().filter(|s| **s != "mirrored").count() == 2
    })
    .await;
    // (verified, missing, failed, coverage) in the summary and the metrics.
    let agree = async |want: (u64, u64, u64, f64)| {
        let (code, summary) = daemon.json("GET", "/status/summary", None).await;
        let s = &summary["summary"];
        let got = (
            s["verified"].as_u64().unwrap_or(99),
            s["missing"].as_u64().unwrap_or(99),
            s["failed"].as_u64().unwrap_or(99),
            s["coverage"].as_f64().unwrap_or(-1.0),
        );
        let (_, metrics) = daemon.get("/metrics").await;
        let metric = |state: &str| sample(&metrics, &format!("k8s_copycat_backup_images{{state=\"{state}\"}}"));
        let from_metrics = (
            metric("verified").unwrap_or(-1.0) as u64,
            metric("missing").unwrap_or(-1.0) as u64,
            metric("failed").unwrap_or(-1.0) as u64,
            sample(&metrics, "k8s_copycat_backup_coverage_ratio").unwrap_or(-1.0),
        );
        code == 200 && s["pending"] == 0 && got == want && from_metrics == want
    };
    eventually(
        "18 verified and 2 failed in /status/summary and /metrics",
        WAIT,
        async || agree((18, 0, 2, 0.9)).await,
    )
    .await;
    let (_, status) = daemon.json("GET", "/status", None).await;
    for entry in status.as_array().unwrap() {
        let backup = &entry["backup"];
        if entry["state"] == "mirrored" {
            assert_eq!(backup["state"], "verified", "{entry}");
            assert_eq!(backup["detail"], "1 manifest, 2 blobs present", "{entry}");
            assert!(backup["lastVerified"].is_string(), "{entry}");
        } else {
            assert_eq!(backup["state"], "failed", "{entry}");
            assert!(backup["detail"].as_str().unwrap().contains("not found"), "{entry}");
            assert!(backup["lastVerified"].is_null(), "{entry}");
        }
    }
    // The summary lists the two failures with the workloads using them (no object declares them).
    let (_, summary) = daemon.json("GET", "/status/summary", None).await;
    let mut listed: Vec<(String, String, Value, bool)> = summary["unverified"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let image = i["image"].as_str().unwrap_or_default().to_owned();
            let state = i["state"].as_str().unwrap_or_default().to_owned();
            (image, state, i["users"].clone(), i.get("declaredBy").is_some())
        })
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let failing = |i: u64| {
        let image = format!("{}/apps/app{i}:1", src.host());
        let users = serde_json::json!([format!("Deployment team{}/app{i}", i % 4)]);
        (image, "failed".to_owned(), users, false)
    };
    assert_eq!(listed, [failing(18), failing(19)], "{summary}");

    // A layer of app3 deleted behind the registry's back: a later round finds it missing and the
    // repair copy uploads that layer alone again (the tag is intact and not written).
    let before = copycat_requests(&dst).len();
    let layer = &images[3].blobs[1];
    std::fs::remove_file(blob_file(&dst, &layer.digest)).unwrap();
    let app3 = "/v2/backup/team3/apps/app3/";
    eventually("app3's layer uploaded again", WAIT, async || {
        copycat_requests(&dst)[before..].iter().any(|r| {
            let hex = layer.digest.trim_start_matches("sha256:");
            r.method == "PUT" && r.path.starts_with(app3) && r.path.contains(hex) && r.status == 201
        })
    })
    .await;
    eventually("app3 verified again", WAIT, async || agree((18, 0, 2, 0.9)).await).await;
    let writes: Vec<String> = copycat_requests(&dst)[before..]
        .iter()
        .filter(|r| r.path.starts_with(app3) && !["HEAD", "GET"].contains(&r.method.as_str()))
        .map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap_or_default()))
        .collect();
    assert_eq!(
        writes.len(),
        2,
        "one upload opened and finished, no manifest written: {writes:?}"
    );
    assert!(writes.iter().all(|w| w.contains("/blobs/uploads/")), "{writes:?}");

    // app5's tag deleted behind the registry's back: the next round finds the manifest missing and
    // copies the image again past the positive cache; the blobs are there, so only the manifest is
    // written (no blob upload), and the round after finds it verified.
    let before = copycat_requests(&dst).len();
    let tag_dir = dst
        .data_dir()
        .join("docker/registry/v2/repositories/backup/team1/apps/app5/_manifests/tags/1");
    std::fs::remove_dir_all(&tag_dir).unwrap();
    let app5 = "/v2/backup/team1/apps/app5/";
    eventually("app5's tag written again", WAIT, async || {
        copycat_requests(&dst)[before..]
            .iter()
            .any(|r| r.method == "PUT" && r.path == format!("{app5}manifests/1") && r.status == 201)
    })
    .await;
    let uploads: Vec<_> = copycat_requests(&dst)[before..]
        .iter()
        .filter(|r| r.path.starts_with(app5) && r.path.contains("/blobs/uploads/"))
        .cloned()
        .collect();
    assert_eq!(uploads, [], "no blob transferred for a missing tag");
    eventually("app5 verified again", WAIT, async || {
        let entry = daemon
            .status_of(&format!("{}/backup/team1/apps/app5:1", dst.host()))
            .await;
        entry.is_some_and(|e| e["backup"]["state"] == "verified") && agree((18, 0, 2, 0.9)).await
    })
    .await;
    // app3 once, app5 once.
    let (_, metrics) = daemon.get("/metrics").await;
    let repairs = sample(&metrics, "k8s_copycat_backup_repairs_total").unwrap();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let again: Vec<&str> = log.lines().filter(|l| l.contains("copying the image again")).collect();
    assert_eq!(repairs, 2.0, "{again:#?}\n{log}");
    assert!(
        log.contains("backup check: the target does not hold the whole image")
            && log.contains("1 blob")
            && log.contains("the manifest")
            && log.contains("copying the image again")
            && log.contains("repaired the target: copied what was missing under its tag"),
        "{log}"
    );

    let host = dst.host();
    let mut env = vec![("TARGET_KIND", "docker"), ("TARGET_REGISTRY", host.as_str())];
    env.extend(prefix);
    let kubeconfig = api.kubeconfig_path().to_str().unwrap();
    let started = std::time::Instant::now();
    let out = copycat(&["verify", "--kubeconfig", kubeconfig, "--output", "json"], &env);
    let quick = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &report["summary"];
    assert_eq!(
        (&summary["verified"], &summary["missing"], &summary["failed"]),
        (&18.into(), &0.into(), &2.into()),
        "{summary}"
    );
    assert_eq!(summary["coverage"], 0.9);
    for image in report["images"].as_array().unwrap() {
        let name = image["image"].as_str().unwrap();
        let i: u64 = name
            .rsplit_once("/app")
            .unwrap()
            .1
            .trim_end_matches(":1")
            .parse()
            .unwrap();
        let target = format!("{}/backup/team{}/apps/app{i}:1", dst.host(), i % 4);
        if i < 18 {
            assert_eq!(
                (&image["state"], &image["target"]),
                (&"verified".into(), &target.into()),
                "{image}"
            );
        } else {
            assert_eq!(
                (&image["state"], &image["side"]),
                (&"failed".into(), &"source".into()),
                "{image}"
            );
            assert!(image["detail"].as_str().unwrap().contains("not found"), "{image}");
        }
    }
    let started = std::time::Instant::now();
    let out = copycat(&["verify", "--kubeconfig", kubeconfig, "--deep"], &env);
    let deep = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    eprintln!("verify of 20 images (18 whole): quick {quick:.2?}, deep {deep:.2?}");
}

/// Issue 14's repair: a multi-platform image mirrored by the daemon loses a layer of its amd64 image
/// and its whole arm64 image manifest in the target's storage, under an intact tag. `copycat verify`
/// names both and exits 1. The next daemon's verification finds them and its repair copy restores
/// exactly them: one blob uploaded (its bytes, and no other, read from the source and written), one
/// child manifest written by digest, the tag not written again; `verify` exits 0 after, and the
/// repair is counted.
#[tokio::test]
async fn a_target_missing_parts_under_its_tag_is_repaired_with_only_the_missing_bytes() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci_index(&[40_000, 20_000], true, 1600).unwrap();
    web.push(&src, "shop/web", "2.0").await.unwrap();
    let server = ApiServer::new();
    let image = format!("{}/shop/web:2.0", src.host());
    server
        .apply(workload("Deployment", "apps/v1", "default", "web", &[("web", &image)]))
        .unwrap();
    let api = server.serve().unwrap();
    let kubeconfig = api.kubeconfig_path();
    let env = [("VERIFY_INTERVAL", "1h")];
    let verified = async |daemon: &Daemon| {
        let (code, summary) = daemon.json("GET", "/status/summary", None).await;
        code == 200 && summary["summary"]["verified"] == 1
    };
    let daemon = Daemon::mirroring_to(kubeconfig, &dst, &env);
    eventually("web mirrored and verified", WAIT, async || verified(&daemon).await).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");

    // A layer of the amd64 image and the arm64 image manifest deleted behind the registry's back.
    let layer = &web.child_for("amd64").unwrap().blobs[1];
    std::fs::remove_file(blob_file(&dst, &layer.digest)).unwrap();
    let arm64 = &web.child_for("arm64").unwrap().digest;
    std::fs::remove_file(manifest_link(&dst, "shop/web", arm64)).unwrap();
    let out = verify(kubeconfig, &dst, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        states(&out)["shop/web:2.0"],
        ("missing".to_owned(), "1 child manifest, 1 blob".to_owned())
    );

    // The next daemon: the plan's copy finds the tag in place; its first check finds the parts
    // missing and the repair copy restores them.
    let (dst_before, src_before) = (copycat_requests(&dst).len(), copycat_requests(&src).len());
    let daemon = Daemon::mirroring_to(kubeconfig, &dst, &env);
    let repaired = async || {
        let (_, metrics) = daemon.get("/metrics").await;
        sample(&metrics, "k8s_copycat_backup_repairs_total") == Some(1.0) && verified(&daemon).await
    };
    eventually("web repaired and verified again", WAIT, repaired).await;
    let (_, metrics) = daemon.get("/metrics").await;
    let bytes = sample(&metrics, "k8s_copycat_bytes_copied_total").unwrap();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("1 child manifest, 1 blob") && log.contains("repaired the target"),
        "{log}"
    );

    // Counted at the registries: the writes are one upload (opened, then finished with the deleted
    // layer's digest) and one PUT of the arm64 manifest by digest; the source served that layer alone.
    let written = copycat_requests(&dst)[dst_before..].to_vec();
    let writes: Vec<String> = written
        .iter()
        .filter(|r| !["HEAD", "GET"].contains(&r.method.as_str()))
        .map(|r| {
            let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
            let shown = match path.find("/blobs/uploads/") {
                Some(at) => format!("{}/blobs/uploads/", &path[..at]),
                None => path.to_owned(),
            };
            let digest = query.split('&').find_map(|p| p.strip_prefix("digest=")).unwrap_or("");
            let digest = digest.replace("%3A", ":");
            format!("{} {shown} {digest}", r.method).trim_end().to_owned()
        })
        .collect();
    let repo = "/v2/shop/web";
    assert_eq!(
        writes,
        [
            format!("POST {repo}/blobs/uploads/"),
            format!("PUT {repo}/blobs/uploads/ {}", layer.digest),
            format!("PUT {repo}/manifests/{arm64}"),
        ],
        "{written:?}"
    );
    let blob_reads: Vec<String> = copycat_requests(&src)[src_before..]
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(blob_reads, [format!("{repo}/blobs/{}", layer.digest)]);
    assert_eq!(
        bytes, layer.size as f64,
        "the daemon streamed the missing layer's bytes alone"
    );
    eprintln!(
        "repair of 1 blob ({} of {} bytes) and 1 child manifest: {} requests to the target, {} writes",
        layer.size,
        web.total_blob_size(),
        written.len(),
        writes.len()
    );

    let out = verify(kubeconfig, &dst, &["--deep"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Issue 14's restore drill: three images mirrored by the daemon to a registry that asks for bearer
/// tokens; with `restoreDrillImages` 2 every round pulls two verified targets whole, those never
/// drilled first, so all three are drilled within a few rounds. Each drill reports the digest the
/// source has and how much it read; between them the drills read every blob of every image at the
/// target (nothing else reads blobs there). The metrics and `/status/summary` count them. A layer of
/// one image then damaged in storage, its size unchanged (the HEAD checks still find the target
/// verified), fails that image's next drill, which says so in `/status`, the metrics and the log.
/// Neither the password nor a token appears anywhere.
#[tokio::test]
async fn restore_drills_pull_verified_targets_whole_in_turn_and_report_a_damaged_one() {
    let (src, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::token("ops", "drill-secret-73")),
    );
    let images = [
        ("shop/web", Image::oci_index(&[3000, 2000], true, 1700).unwrap()),
        ("data/db", Image::docker("amd64", &[2500, 1500], 1701).unwrap()),
        ("tools/job", Image::oci("amd64", &[1800], 1702).unwrap()),
    ];
    let server = ApiServer::new();
    for (repo, image) in &images {
        image.push(&src, repo, "1").await.unwrap();
        let name = repo.split('/').nth(1).unwrap();
        let reference = format!("{}/{repo}:1", src.host());
        server
            .apply(workload("Deployment", "apps/v1", "default", name, &[("c", &reference)]))
            .unwrap();
    }
    let api = server.serve().unwrap();
    let env = [
        ("TARGET_USERNAME", "ops"),
        ("TARGET_PASSWORD", "drill-secret-73"),
        ("VERIFY_INTERVAL", "1h"),
        ("RESTORE_DRILL_INTERVAL", "2s"),
        ("RESTORE_DRILL_IMAGES", "2"),
    ];
    let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, &env);
    let target = |repo: &str| format!("{}/{repo}:1", dst.host());
    // The last drill of each target, by repository.
    let drills = async || -> BTreeMap<String, Value> {
        let (code, body) = daemon.get("/status").await;
        let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(&body) else {
            return BTreeMap::new();
        };
        assert_eq!(code, 200);
        images
            .iter()
            .filter_map(|(repo, _)| {
                let entry = entries.iter().find(|e| e["target"] == target(repo))?;
                let drill = entry["backup"].get("drill")?;
                Some(((*repo).to_owned(), drill.clone()))
            })
            .collect()
    };
    eventually("every target drilled", WAIT, async || {
        let all = drills().await;
        all.len() == 3 && all.values().all(|d| d["result"] == "passed")
    })
    .await;
    for (repo, image) in &images {
        let drill = &drills().await[*repo];
        assert_eq!(drill["digest"], image.digest.as_str(), "the source's digest: {drill}");
        assert_eq!(drill["target"], target(repo), "{drill}");
        let detail = format!(
            "pulled whole: {} manifest{} and {} blobs read and re-hashed",
            image.all_manifest_digests().len(),
            if image.is_index() { "s" } else { "" },
            image.all_blobs().len()
        );
        assert_eq!(drill["detail"], detail.as_str(), "{drill}");
        assert!(
            drill["at"].is_string() && drill["durationSeconds"].is_number(),
            "{drill}"
        );
    }
    let read: std::collections::BTreeSet<String> = copycat_requests(&dst)
        .iter()
        .filter(|r| r.method == "GET" && r.status == 200)
        .filter_map(|r| r.path.split_once("/blobs/").map(|(_, digest)| digest.to_owned()))
        .collect();
    let every_blob: std::collections::BTreeSet<String> = images
        .iter()
        .flat_map(|(_, image)| image.all_blobs().into_iter().map(|b| b.digest.clone()))
        .collect();
    assert_eq!(read, every_blob, "every blob read from the target, nothing else");
    let (_, metrics) = daemon.get("/metrics").await;
    let metric = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series}: {metrics}"));
    assert!(
        metric("k8s_copycat_restore_drill_total{result=\"passed\"}") >= 3.0,
        "{metrics}"
    );
    assert_eq!(metric("k8s_copycat_restore_drill_total{result=\"failed\"}"), 0.0);
    assert!(metric("k8s_copycat_restore_drill_duration_seconds_count") >= 3.0);
    assert!(metric("k8s_copycat_restore_drill_last_success_timestamp_seconds") > 1.7e9);
    let (_, summary) = daemon.json("GET", "/status/summary", None).await;
    let drill_summary = &summary["restoreDrill"];
    assert_eq!(
        (
            &drill_summary["drilled"],
            &drill_summary["passed"],
            &drill_summary["failed"]
        ),
        (&3.into(), &3.into(), &0.into()),
        "{summary}"
    );
    assert!(drill_summary["lastSuccess"].is_string(), "{summary}");

    // A layer of db damaged, its size unchanged: the quick checks cannot tell, the next drill can.
    let layer = &images[1].1.blobs[1].digest;
    let file = blob_file(&dst, layer);
    let mut bytes = std::fs::read(&file).expect("the stored layer");
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    eventually("db's drill failed", WAIT, async || {
        drills().await.get("data/db").is_some_and(|d| d["result"] == "failed")
    })
    .await;
    let db = daemon.status_of(&target("data/db")).await.unwrap();
    assert_eq!(db["backup"]["drill"]["detail"], "1 damaged", "{db}");
    assert_eq!(db["backup"]["state"], "verified", "HEADs find it whole: {db}");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(sample(&metrics, "k8s_copycat_restore_drill_total{result=\"failed\"}").unwrap() >= 1.0);
    let (_, summary) = daemon.json("GET", "/status/summary", None).await;
    assert_eq!(summary["restoreDrill"]["failed"], 1, "{summary}");
    let (_, status) = daemon.get("/status").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("restore drill passed")
            && log.contains("restore drill failed: the backup could not be pulled whole"),
        "{log}"
    );
    let mut secrets = credential_secrets("ops", "drill-secret-73");
    secrets.extend(issued_token_secrets(&dst));
    assert_no_secrets(
        &[("log", &log), ("status", &status), ("summary", &summary.to_string())],
        &secrets,
    );
}

/// `shop/signed:1.0` at `src` (image `seed`) with a cosign signature (artifact seed `artifacts`)
/// and an SPDX SBOM on the referrers tag schema (`artifacts + 1`); the image and its signature.
async fn signed_image(src: &Registry, seed: u64, artifacts: u64) -> (Image, Image) {
    use testkit::artifacts::{self, Subject};
    let image = Image::oci("amd64", &[2000], seed).unwrap();
    image.push(src, "shop/signed", "1.0").await.unwrap();
    let subject = Subject::of(&image);
    let sig = artifacts::cosign_signature(&subject, "shop/signed", 1, artifacts);
    sig.push(src, "shop/signed", &subject.cosign_tag("sig")).await.unwrap();
    let sbom = artifacts::spdx_sbom(&subject, artifacts + 1);
    artifacts::publish_referrer(src, "shop/signed", &subject, &sbom)
        .await
        .unwrap();
    (image, sig)
}

/// A stand-in API server whose one Deployment runs `shop/signed:1.0` of `src`, and its server.
fn serve_deployment_of(src: &Registry) -> (ApiServer, testkit::apiserver::RunningApiServer) {
    let server = ApiServer::new();
    server
        .apply(workload(
            "Deployment",
            "apps/v1",
            "default",
            "signed",
            &[("app", &format!("{}/shop/signed:1.0", src.host()))],
        ))
        .unwrap();
    let api = server.serve().unwrap();
    (server, api)
}

/// Issue 16: a target without the source's signature is incomplete for `copycat verify`; once the
/// signature travels (a copy with the default `referrers: all`), it verifies; `REFERRERS=none`
/// leaves them out of the check.
#[tokio::test]
async fn verify_counts_missing_signatures_as_incomplete() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (image, _) = signed_image(&src, 1600, 1).await;
    // The image mirrored without its related artifacts.
    image.push(&dst, "shop/signed", "1.0").await.unwrap();
    let (_server, api) = serve_deployment_of(&src);
    let kubeconfig = api.kubeconfig_path();

    let out = verify(kubeconfig, &dst, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (state, detail) = &states(&out)["shop/signed:1.0"];
    assert_eq!(state, "missing", "{detail}");
    assert!(
        detail.contains("2 of the source's signatures, attestations and SBOMs missing"),
        "{detail}"
    );

    let request = request(&src, "shop/signed:1.0", &dst, "shop/signed", Some("1.0"));
    let options = CopyOptions {
        referrers: copycat::referrer_policy::ReferrerPolicy::default(),
        ..CopyOptions::default()
    };
    let report = copier(&[&src, &dst]).copy(&request, &options).await.unwrap();
    assert_eq!(report.referrers.copied_total(), 2, "{report:?}");
    let out = verify(kubeconfig, &dst, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (state, detail) = &states(&out)["shop/signed:1.0"];
    assert_eq!(state, "verified", "{detail}");
    assert!(detail.contains("2 signatures/attestations/SBOMs"), "{detail}");
}

/// The daemon's periodic verification counts missing related artifacts as `copycat verify` does: a
/// signature deleted at the target (its manifest, through the registry API, which removes its tag)
/// makes the target `missing`; the repair copy puts the signature back (the only write: its tag,
/// same digest as the source's) and the next check finds the target verified again.
#[tokio::test]
async fn the_periodic_verification_finds_a_deleted_signature_and_the_repair_restores_it() {
    use testkit::artifacts::Subject;
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (image, sig) = signed_image(&src, 1700, 3).await;
    let sig_tag = Subject::of(&image).cosign_tag("sig");
    let (_server, api) = serve_deployment_of(&src);
    let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, &[("VERIFY_INTERVAL", "2s")]);
    let backup = async || {
        let (code, status) = daemon.json("GET", "/status", None).await;
        let entry = status.as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
        let backup = &entry["backup"];
        (code == 200).then(|| {
            (
                backup["state"].as_str().unwrap_or_default().to_owned(),
                backup["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
    };
    let whole = (
        "verified".to_owned(),
        "1 manifest, 2 blobs present, 2 signatures/attestations/SBOMs".to_owned(),
    );
    eventually(
        "the image and its 2 related artifacts mirrored and verified",
        WAIT,
        async || backup().await.as_ref() == Some(&whole),
    )
    .await;

    testkit::Client::new(&dst)
        .unwrap()
        .delete_manifest("shop/signed", &sig.digest)
        .await
        .unwrap();
    assert_eq!(
        testkit::manifest_digest(&dst, "shop/signed", &sig_tag).await.unwrap(),
        None
    );
    let before = copycat_requests(&dst).len();
    let repaired = async || {
        let (_, metrics) = daemon.get("/metrics").await;
        sample(&metrics, "k8s_copycat_backup_repairs_total") == Some(1.0) && backup().await.as_ref() == Some(&whole)
    };
    eventually(
        "the signature found missing, repaired and verified again",
        WAIT,
        repaired,
    )
    .await;
    assert_eq!(
        testkit::manifest_digest(&dst, "shop/signed", &sig_tag).await.unwrap(),
        Some(sig.digest.clone())
    );
    let writes: Vec<String> = copycat_requests(&dst)[before..]
        .iter()
        .filter(|r| !["HEAD", "GET"].contains(&r.method.as_str()))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(writes, [format!("PUT /v2/shop/signed/manifests/{sig_tag}")]);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("1 of the source's signatures, attestations and SBOMs missing"),
        "{log}"
    );
}

/// Issue 14 part 5: a digest-only source with `digestTagTemplate: none` is copied by digest alone.
/// The copy is whole, yet no tag holds it, so a rule that expires untagged images can delete it:
/// the daemon's `/status`, `/status/summary` and metrics and `copycat verify` all count it
/// `untagged` (at risk, not verified; coverage 1/2, verify exits 1). With the anchor tag (the
/// default template) the same image is verified.
#[tokio::test]
async fn an_untagged_copy_counts_as_at_risk_everywhere() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let pinned = Image::oci("amd64", &[1100], 1430).unwrap();
    let tagged = Image::oci("amd64", &[1200], 1431).unwrap();
    pinned.push(&src, "tools/pin", &pinned.digest).await.unwrap();
    tagged.push(&src, "tools/tagged", "1").await.unwrap();
    let pinned_ref = format!("{}/tools/pin@{}", src.host(), pinned.digest);
    let server = ApiServer::new();
    server
        .apply_all([workload(
            "Deployment",
            "apps/v1",
            "ops",
            "tools",
            &[("p", &pinned_ref), ("t", &format!("{}/tools/tagged:1", src.host()))],
        )])
        .unwrap();
    let api = server.serve().unwrap();
    let env = [("DIGEST_TAG_TEMPLATE", "none"), ("VERIFY_INTERVAL", "3s")];
    let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, &env);
    eventually(
        "1 verified and 1 untagged in /status/summary and /metrics",
        WAIT,
        async || {
            let (code, summary) = daemon.json("GET", "/status/summary", None).await;
            let s = &summary["summary"];
            let (_, metrics) = daemon.get("/metrics").await;
            let metric = |state: &str| sample(&metrics, &format!("k8s_copycat_backup_images{{state=\"{state}\"}}"));
            code == 200
                && s["verified"] == 1
                && s["untagged"] == 1
                && s["coverage"] == 0.5
                && metric("verified") == Some(1.0)
                && metric("untagged") == Some(1.0)
                && sample(&metrics, "k8s_copycat_backup_coverage_ratio") == Some(0.5)
        },
    )
    .await;
    let (_, untagged) = daemon.json("GET", "/status?backup=untagged", None).await;
    let entries = untagged.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{untagged}");
    let detail = entries[0]["backup"]["detail"].as_str().unwrap();
    assert!(detail.contains("no tag holds it"), "{untagged}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("no tag holds it (at risk)"), "{log}");

    let kubeconfig = api.kubeconfig_path().to_str().unwrap();
    let run = |template: &'static str| {
        let host = dst.host();
        copycat(
            &["verify", "--kubeconfig", kubeconfig, "--output", "json"],
            &[
                ("TARGET_KIND", "docker"),
                ("TARGET_REGISTRY", &host),
                ("DIGEST_TAG_TEMPLATE", template),
            ],
        )
    };
    let out = run("none");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["summary"]["verified"], &report["summary"]["untagged"]),
        (&1.into(), &1.into()),
        "{report}"
    );
    let pin = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == pinned_ref.as_str())
        .unwrap();
    assert_eq!(pin["state"], "untagged", "{pin}");
    assert!(text(&out).contains("1 untagged"), "{}", text(&out));
    // The anchor tag makes the same copy safe from such rules: verified.
    let anchor = format!("copycat-{}", pinned.digest.trim_start_matches("sha256:"));
    pinned.push(&dst, "tools/pin", &anchor).await.unwrap();
    let out = run("");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

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
fn blob_file(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    reg.data_dir()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// The link that makes manifest `digest` part of `repo` in `reg`'s storage.
fn manifest_link(reg: &Registry, repo: &str, digest: &str) -> PathBuf {
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
    // Reads only: one HEAD per tag and per child manifest, a GET per manifest, a HEAD per blob.
    let images = [&web, &db, &migrate];
    let manifests: usize = images.iter().map(|i| i.all_manifest_digests().len()).sum();
    let blobs: usize = images.iter().map(|i| i.all_blobs().len()).sum();
    let quick = requests_by_kind(&copycat_requests(&dst));
    assert_eq!(
        quick,
        [
            ("GET manifests", manifests),
            ("HEAD blobs", blobs),
            ("HEAD manifests", manifests)
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
/// is found by the next round: that image `missing` ("1 blob"), coverage 17/20 everywhere (copied
/// again, but the engine trusts the tag, so the blob stays missing). A tag deleted there is found
/// missing and copied again (only the manifest written), then verified. Then
/// `verify` (no daemon running) agrees: 17 verified, 1 missing, 2 failed on the source side, exit 1;
/// the targets it names are the daemon's.
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

    // A layer of app3 deleted behind the registry's back: the next round finds it.
    std::fs::remove_file(blob_file(&dst, &images[3].blobs[1].digest)).unwrap();
    eventually("app3 missing in /status/summary and /metrics", WAIT, async || {
        agree((17, 1, 2, 0.85)).await
    })
    .await;
    let app3 = format!("{}/backup/team3/apps/app3:1", dst.host());
    // The check copies app3 again (past the positive cache), which the engine finds `present`
    // under its tag: the queue's state returns to mirrored, the backup state stays missing.
    eventually("app3 mirrored in the queue", WAIT, async || {
        daemon.status_of(&app3).await.is_some_and(|e| e["state"] == "mirrored")
    })
    .await;
    let entry = daemon.status_of(&app3).await.unwrap();
    assert_eq!(
        (&entry["backup"]["state"], &entry["backup"]["detail"]),
        (&"missing".into(), &"1 blob".into()),
        "{entry}"
    );
    assert!(entry["backup"]["lastVerified"].is_string(), "verified before: {entry}");
    let (_, missing) = daemon.json("GET", "/status?backup=missing", None).await;
    let targets: Vec<&Value> = missing.as_array().unwrap().iter().map(|e| &e["target"]).collect();
    assert_eq!(targets, [&Value::from(app3.clone())], "{missing}");
    let (_, failed) = daemon.json("GET", "/status?state=cooldown&backup=failed", None).await;
    assert_eq!(failed.as_array().unwrap().len(), 2, "{failed}");
    let (code, refused) = daemon.json("GET", "/status?backup=gone", None).await;
    assert_eq!(code, 400, "{refused}");
    let (_, summary) = daemon.json("GET", "/status/summary", None).await;
    assert!(summary["oldestUnverifiedSeconds"].as_f64().unwrap() >= 0.0, "{summary}");

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
    eventually("app5 verified again, app3 still missing", WAIT, async || {
        let entry = daemon
            .status_of(&format!("{}/backup/team1/apps/app5:1", dst.host()))
            .await;
        entry.is_some_and(|e| e["backup"]["state"] == "verified") && agree((17, 1, 2, 0.85)).await
    })
    .await;
    // app3 once at least (its blob stays missing), app5 once.
    let (_, metrics) = daemon.get("/metrics").await;
    let repairs = sample(&metrics, "k8s_copycat_backup_repairs_total").unwrap();
    assert!(repairs >= 2.0, "{metrics}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("backup check: the target does not hold the whole image")
            && log.contains("1 blob")
            && log.contains("the manifest")
            && log.contains("copying the image again"),
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
        (&17.into(), &1.into(), &2.into()),
        "{summary}"
    );
    assert_eq!(summary["coverage"], 0.85);
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
        if i == 3 {
            assert_eq!(
                (&image["state"], &image["detail"]),
                (&"missing".into(), &"1 blob".into()),
                "{image}"
            );
        } else if i < 18 {
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
    eprintln!("verify of 20 images (17 whole): quick {quick:.2?}, deep {deep:.2?}");
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

//! End-to-end scenarios and failure drills: the built `copycat` binary as users run it, configured only
//! through its config file and environment, against the stand-in API server, real registries, the
//! fault proxy, moto and skopeo. Each test names the issue item it proves (docs/testing.md maps them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{
    Fault, FaultProxy, Image, Match, Registry, RegistryMode, blob_exists, list_tags, manifest_digest, skopeo_digest,
};

use crate::discovery::workload;
use crate::server::{Daemon, deployment, sample};
use crate::support::{
    CopycatRun, assert_no_secrets, config_file, copycat_requests, credential_secrets, eventually, issued_token_secrets,
    manifest_puts, start,
};

/// How long a drill waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(60);

/// `source` of `reg` as a Pod spec writes it: `127.0.0.1:PORT/repo:tag`.
fn on(reg: &Registry, reference: &str) -> String {
    format!("{}/{reference}", reg.host())
}

/// A Running bare Pod `ns/name` with one container per `(name, image)`.
fn pod(ns: &str, name: &str, containers: &[(&str, &str)]) -> Value {
    let containers: Vec<Value> = containers.iter().map(|(n, i)| json!({"name": n, "image": i})).collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"containers": containers}, "status": {"phase": "Running"}})
}

/// `object` with a controller owner reference to `kind/name`.
fn owned_by(mut object: Value, api_version: &str, kind: &str, name: &str) -> Value {
    object["metadata"]["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}]);
    object
}

/// A Namespace object.
fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// Waits until `repo` has `reference` (a tag or a digest) at `reg`, polling every 200 ms. A failed
/// check (the registry slow to answer while it takes in a big layer on a loaded machine) is asked
/// again; the last error is printed if the wait times out.
pub(crate) async fn wait_for(reg: &Registry, repo: &str, reference: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let error = match manifest_digest(reg, repo, reference).await {
            Ok(Some(_)) => return,
            Ok(None) => None,
            Err(e) => Some(format!("{e:#}")),
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {repo}:{reference} at {}; last error: {error:?}",
            reg.host()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `repo` at `reference` (a tag or a digest) is `image`, byte for byte as skopeo reads it, with every
/// child manifest and every blob present: nothing partial.
pub(crate) async fn assert_identical(reg: &Registry, repo: &str, reference: &str, image: &Image) {
    let sep = if reference.starts_with("sha256:") { '@' } else { ':' };
    let name = format!("{repo}{sep}{reference}");
    assert_eq!(skopeo_digest(reg, &name).await.unwrap(), image.digest, "{name}");
    let mut manifests = Vec::new();
    image.walk(&mut |m| manifests.push(m.digest.clone()));
    for digest in manifests {
        assert_eq!(
            manifest_digest(reg, repo, &digest).await.unwrap().as_deref(),
            Some(digest.as_str()),
            "{name}: manifest {digest} missing"
        );
    }
    for blob in image.all_blobs() {
        assert!(
            blob_exists(reg, repo, &blob.digest).await.unwrap(),
            "{name}: blob {} missing",
            blob.digest
        );
    }
}

/// The value of `series` on the daemon's `/metrics`, once it answers.
pub(crate) async fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
    let (code, text) = daemon.get("/metrics").await;
    (code == 200).then(|| sample(&text, series)).flatten()
}

/// `/status` as (target → state); empty while the daemon does not answer yet.
async fn states(daemon: &Daemon) -> BTreeMap<String, String> {
    let (code, body) = daemon.get("/status").await;
    if code != 200 {
        return BTreeMap::new();
    }
    let all: Value = serde_json::from_str(&body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        // Excluded images have no target.
        .filter_map(|s| Some((s["target"].as_str()?.to_owned(), s["state"].as_str()?.to_owned())))
        .collect()
}

/// Every manifest PUT copycat made to `reg` happened exactly once per `repo:reference`.
pub(crate) fn assert_written_once(reg: &Registry) {
    let puts = manifest_puts(reg);
    let twice: Vec<_> = puts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?} (all: {puts:?})");
}

// ── 1. What is mirrored ─────────────────────────────────────────────────────────────────────────────

/// Issue scenario 1: every workload kind, init and ephemeral containers, and every manifest shape
/// (multi-arch OCI index with attestations, Docker manifest list, OCI artifact, digest-only and
/// tag@digest references) mirrored with the source's digests, as skopeo reads them.
#[tokio::test]
async fn every_kind_and_manifest_shape_is_mirrored_byte_exact() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let index = Image::oci_index(&[3000], true, 800).unwrap();
    let init = Image::docker("amd64", &[1500], 801).unwrap();
    let list = Image::docker_manifest_list(&[2000], 802).unwrap();
    let chart = Image::helm_chart(2500, 803).unwrap();
    let pinned = Image::oci("arm64", &[1800], 804).unwrap();
    let both = Image::docker("amd64", &[1700], 805).unwrap();
    let app = Image::oci("amd64", &[1600], 806).unwrap();
    let debug = Image::oci("amd64", &[1400], 807).unwrap();
    let moved_on = Image::docker("amd64", &[1700], 808).unwrap();
    index.push(&src, "shop/web", "1.0").await.unwrap();
    init.push(&src, "tools/init", "1").await.unwrap();
    list.push(&src, "data/db", "16").await.unwrap();
    chart.push(&src, "charts/agent", "0.1").await.unwrap();
    pinned.push(&src, "tools/migrate", &pinned.digest).await.unwrap();
    // The tag has moved on since the CronJob pinned it: the digest wins.
    both.push(&src, "tools/backup", "3").await.unwrap();
    moved_on.push(&src, "tools/backup", "3").await.unwrap();
    app.push(&src, "tools/app", "1").await.unwrap();
    debug.push(&src, "tools/debug", "1").await.unwrap();

    let server = ApiServer::new();
    let mut web = workload(
        "Deployment",
        "apps/v1",
        "default",
        "web",
        &[("web", &on(&src, "shop/web:1.0"))],
    );
    web["spec"]["template"]["spec"]["initContainers"] = json!([{"name": "init", "image": on(&src, "tools/init:1")}]);
    let migrate = on(&src, &format!("tools/migrate@{}", pinned.digest));
    let backup = on(&src, &format!("tools/backup:3@{}", both.digest));
    let mut toolbox = pod("default", "toolbox", &[("app", &on(&src, "tools/app:1"))]);
    toolbox["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": on(&src, "tools/debug:1")}]);
    server
        .apply_all([
            web,
            workload(
                "StatefulSet",
                "apps/v1",
                "default",
                "db",
                &[("db", &on(&src, "data/db:16"))],
            ),
            workload(
                "DaemonSet",
                "apps/v1",
                "kube-system",
                "agent",
                &[("agent", &on(&src, "charts/agent:0.1"))],
            ),
            workload("Job", "batch/v1", "default", "migrate", &[("m", &migrate)]),
            workload("CronJob", "batch/v1", "default", "nightly", &[("b", &backup)]),
            toolbox,
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );

    let expected: [(&str, &str, &Image); 8] = [
        ("shop/web", "1.0", &index),
        ("tools/init", "1", &init),
        ("data/db", "16", &list),
        ("charts/agent", "0.1", &chart),
        ("tools/migrate", &pinned.digest, &pinned),
        ("tools/backup", "3", &both),
        ("tools/app", "1", &app),
        ("tools/debug", "1", &debug),
    ];
    for (repo, reference, _) in &expected {
        wait_for(&dst, repo, reference).await;
    }
    for (repo, reference, image) in &expected {
        assert_identical(&dst, repo, reference, image).await;
    }
    assert_eq!(
        list_tags(&dst, "tools/migrate").await.unwrap(),
        vec![format!("copycat-{}", pinned.digest.trim_start_matches("sha256:"))],
        "a digest-only source gets its anchor tag, never latest"
    );
    let states = states(&daemon).await;
    assert_eq!(states.len(), 8, "{states:#?}");
    assert!(states.values().all(|s| s == "mirrored"), "{states:#?}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_written_once(&dst);
}

/// A digest-only image in a workload is mirrored with its anchor tag `copycat-<hex>` by default, so
/// an "expire untagged images" rule at the target cannot delete it; `DIGEST_TAG_TEMPLATE=none` pushes
/// it by digest alone. First a daemon with `none` leaves the copy untagged; then a daemon with the
/// default anchors that same copy, writing only the tagged manifest (no blob is uploaded again). The
/// target's tag list is read from the registry; the anchor resolves (through skopeo) to the digest the
/// workload runs.
#[tokio::test]
async fn the_daemon_anchors_digest_only_images_with_a_tag_unless_turned_off() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[1200, 900], 809).unwrap();
    image.push(&src, "tools/pinned", "1").await.unwrap();
    let server = ApiServer::new();
    let pinned = on(&src, &format!("tools/pinned@{}", image.digest));
    server.apply_all([deployment("web", &[pinned])]).unwrap();
    let api = server.serve().unwrap();
    let anchor = format!("copycat-{}", image.digest.trim_start_matches("sha256:"));
    let off: &[(&str, &str)] = &[("DIGEST_TAG_TEMPLATE", "none")];
    // (environment, the target's tags, blob uploads expected)
    let cases = [(off, vec![], true), (&[][..], vec![anchor.as_str()], false)];
    for (env, want, uploads) in cases {
        let before = copycat_requests(&dst).len();
        let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, env);
        match want.first() {
            Some(tag) => wait_for(&dst, "tools/pinned", tag).await,
            None => wait_for(&dst, "tools/pinned", &image.digest).await,
        }
        eventually("/status records the copy", WAIT, async || {
            states(&daemon).await.values().any(|s| s == "mirrored")
        })
        .await;
        let (code, log) = daemon.stop();
        assert_eq!(code, Some(0), "{log}");
        assert_eq!(list_tags(&dst, "tools/pinned").await.unwrap(), want, "{env:?}");
        for tag in &want {
            assert_eq!(
                skopeo_digest(&dst, &format!("tools/pinned:{tag}")).await.unwrap(),
                image.digest,
                "{tag}"
            );
        }
        let uploaded = copycat_requests(&dst)[before..]
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("/blobs/uploads/"));
        assert_eq!(uploaded, uploads, "{env:?}: blob uploads");
    }
    assert_written_once(&dst);
}

// ── 2. Filters ──────────────────────────────────────────────────────────────────────────────────────

/// Issue scenario 2 (the kinds `daemon::filters_apply_and_namespaces_appearing_later_are_picked_up`
/// leaves out): the skip list of every other kind, by name and by `namespace/name`, and skips that
/// follow owner chains (Pod → StatefulSet, Pod → Job → CronJob). Skipped images are never even
/// looked at on the source.
#[tokio::test]
async fn skip_lists_of_every_kind_follow_owner_chains() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let kept = [
        "s/cache",
        "s/agent-other",
        "s/migrate",
        "s/hourly",
        "s/hourly-pod",
        "s/pod",
    ];
    let skipped = [
        "s/db",
        "s/db-sidecar",
        "s/agent",
        "s/once",
        "s/nightly",
        "s/nightly-pod",
        "s/scratch",
    ];
    for (i, repo) in kept.iter().chain(&skipped).enumerate() {
        Image::oci("amd64", &[500], 820 + i as u64)
            .unwrap()
            .push(&src, repo, "1")
            .await
            .unwrap();
    }
    let img = |repo: &str| on(&src, &format!("{repo}:1"));
    let server = ApiServer::new();
    server
        .apply_all([
            namespace("ops"),
            namespace("other"),
            workload("StatefulSet", "apps/v1", "ops", "db", &[("db", &img("s/db"))]),
            owned_by(
                pod("ops", "db-0", &[("sidecar", &img("s/db-sidecar"))]),
                "apps/v1",
                "StatefulSet",
                "db",
            ),
            workload("StatefulSet", "apps/v1", "ops", "cache", &[("c", &img("s/cache"))]),
            workload("DaemonSet", "apps/v1", "ops", "agent", &[("a", &img("s/agent"))]),
            workload(
                "DaemonSet",
                "apps/v1",
                "other",
                "agent",
                &[("a", &img("s/agent-other"))],
            ),
            workload("Job", "batch/v1", "ops", "once", &[("o", &img("s/once"))]),
            workload("Job", "batch/v1", "ops", "migrate", &[("m", &img("s/migrate"))]),
            workload("CronJob", "batch/v1", "ops", "nightly", &[("n", &img("s/nightly"))]),
            owned_by(
                workload("Job", "batch/v1", "ops", "nightly-290", &[("n", &img("s/nightly"))]),
                "batch/v1",
                "CronJob",
                "nightly",
            ),
            owned_by(
                pod("ops", "nightly-290-x", &[("n", &img("s/nightly-pod"))]),
                "batch/v1",
                "Job",
                "nightly-290",
            ),
            workload("CronJob", "batch/v1", "ops", "hourly", &[("h", &img("s/hourly"))]),
            owned_by(
                workload("Job", "batch/v1", "ops", "hourly-7", &[("h", &img("s/hourly"))]),
                "batch/v1",
                "CronJob",
                "hourly",
            ),
            owned_by(
                pod("ops", "hourly-7-x", &[("h", &img("s/hourly-pod"))]),
                "batch/v1",
                "Job",
                "hourly-7",
            ),
            pod("ops", "scratch", &[("s", &img("s/scratch"))]),
            pod("ops", "keeper", &[("p", &img("s/pod"))]),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[
            ("SKIP_STATEFULSETS", "db"),
            ("SKIP_DAEMONSETS", "ops/agent"),
            ("SKIP_JOBS", "once"),
            ("SKIP_CRONJOBS", "ops/nightly"),
            ("SKIP_PODS", "scratch"),
        ],
    );
    for repo in kept {
        wait_for(&dst, repo, "1").await;
    }
    let (_, answer) = daemon.json("POST", "/force-reconcile?wait=20s", None).await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["imagesMirrored"], kept.len(), "{answer}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    for repo in skipped {
        assert_eq!(
            manifest_digest(&dst, repo, "1").await.unwrap(),
            None,
            "{repo} was mirrored"
        );
        let asked: Vec<_> = copycat_requests(&src)
            .into_iter()
            .filter(|r| r.path.starts_with(&format!("/v2/{repo}/")))
            .collect();
        assert!(
            asked.is_empty(),
            "{repo} is skipped, yet the source was asked: {asked:?}"
        );
    }
}

// ── 3. Naming ───────────────────────────────────────────────────────────────────────────────────────

/// Issue scenario 3: a repository prefix with every placeholder (`$registry`, `$namespace`,
/// `$podname`, `$container_name`, `$arch` from the Node), and `pathMap` rules, plain and regex, from
/// the config file.
/// Issue 3, digest mode end to end: `digestPull` mirrors what the Pods run (their imageID's digest,
/// even after the tag moved on), restricted with `checkNodePlatform` to the platform of their node;
/// a workload without Pods (a CronJob between runs) is mirrored by resolving its tag, not skipped.
#[tokio::test]
async fn digest_pull_mirrors_what_pods_run_on_their_nodes_platform() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (running, newer, backup) = (
        Image::oci_index(&[1500], true, 860).unwrap(),
        Image::oci_index(&[1500], true, 861).unwrap(),
        Image::oci("amd64", &[900], 862).unwrap(),
    );
    running.push(&src, "shop/web", "1").await.unwrap();
    // The tag moved on after the Pod started.
    newer.push(&src, "shop/web", "1").await.unwrap();
    backup.push(&src, "tools/backup", "2").await.unwrap();
    let web = on(&src, "shop/web:1");
    let node_info = json!({"architecture": "arm64", "operatingSystem": "linux", "bootID": "", "containerRuntimeVersion": "",
        "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""});
    let mut web_pod = owned_by(
        pod("shop", "web-1-x", &[("web", &web)]),
        "apps/v1",
        "ReplicaSet",
        "web-1",
    );
    web_pod["spec"]["nodeName"] = json!("arm-1");
    web_pod["status"]["containerStatuses"] = json!([{"name": "web", "image": web, "ready": true, "restartCount": 0,
        "imageID": format!("docker-pullable://{}@{}", on(&src, "shop/web"), running.digest)}]);
    let server = ApiServer::new();
    server
        .apply_all([
            namespace("shop"),
            namespace("batch"),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "arm-1"}, "status": {"nodeInfo": node_info}}),
            workload("Deployment", "apps/v1", "shop", "web", &[("web", &web)]),
            owned_by(
                workload("ReplicaSet", "apps/v1", "shop", "web-1", &[("web", &web)]),
                "apps/v1",
                "Deployment",
                "web",
            ),
            web_pod,
            workload(
                "CronJob",
                "batch/v1",
                "batch",
                "nightly",
                &[("backup", &on(&src, "tools/backup:2"))],
            ),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[("DIGEST_PULL", "true"), ("CHECK_NODE_PLATFORM", "true")],
    );
    wait_for(&dst, "shop/web", "1").await;
    wait_for(&dst, "tools/backup", "2").await;
    // The arm64 image of the index the Pod runs: not the index, not the tag's newer image.
    let arm64 = running.child_for("arm64").unwrap();
    assert_identical(&dst, "shop/web", "1", arm64).await;
    assert_identical(&dst, "tools/backup", "2", &backup).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let pulled: Vec<String> = copycat_requests(&src)
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v2/shop/web/manifests/"))
        .map(|r| r.path)
        .collect();
    assert!(
        !pulled.is_empty() && pulled.iter().all(|p| !p.ends_with("/1") && !p.contains(&newer.digest)),
        "the Pod's digest is read, never the moved tag: {pulled:?}"
    );
    assert_written_once(&dst);
}

#[tokio::test]
async fn prefix_placeholders_and_path_maps_name_the_targets() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (api_image, billing, plain) = (
        Image::oci("amd64", &[900], 840).unwrap(),
        Image::oci_index(&[900], false, 841).unwrap(),
        Image::docker("amd64", &[900], 842).unwrap(),
    );
    api_image.push(&src, "legacy/team/api", "1").await.unwrap();
    billing.push(&src, "apps/billing-service", "2").await.unwrap();
    plain.push(&src, "library/redis", "7").await.unwrap();
    let server = ApiServer::new();
    let node_info = json!({"architecture": "arm64", "operatingSystem": "linux", "bootID": "", "containerRuntimeVersion": "",
        "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""});
    let mut worker = pod(
        "jobs",
        "worker",
        &[
            ("main", &on(&src, "apps/billing-service:2")),
            ("cache", &on(&src, "library/redis:7")),
        ],
    );
    worker["spec"]["nodeName"] = json!("arm-1");
    server
        .apply_all([
            namespace("shop"),
            namespace("jobs"),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "arm-1"}, "status": {"nodeInfo": node_info}}),
            workload(
                "Deployment",
                "apps/v1",
                "shop",
                "web",
                &[("app", &on(&src, "legacy/team/api:1"))],
            ),
            worker,
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let config = config_file(&format!(
        r#"targetKind: docker
docker:
  registry: "{dst}"
  repoPrefix: "m/$registry/$namespace/$podname/$container_name/$arch"
checkNodePlatform: true
pathMap:
  - from: legacy/team
    to: teams/legacy
  - from: "^apps/(.+)-service$"
    to: "svc/$1"
    regex: true
"#,
        dst = dst.host()
    ));
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("CONFIG_PATH", config.path().to_str().unwrap())],
    );
    // `$registry` is the source host, cleaned to a repository component (`:` is not allowed).
    let registry = src.host().replace(':', "-");
    let expected = [
        // No node for a Deployment: `$arch` is the image's own.
        (
            format!("m/{registry}/shop/web/app/amd64/teams/legacy/api"),
            "1",
            &api_image,
        ),
        (
            format!("m/{registry}/jobs/worker/main/arm64/svc/billing"),
            "2",
            &billing,
        ),
        (
            format!("m/{registry}/jobs/worker/cache/arm64/library/redis"),
            "7",
            &plain,
        ),
    ];
    for (repo, tag, _) in &expected {
        wait_for(&dst, repo, tag).await;
    }
    for (repo, tag, image) in &expected {
        assert_identical(&dst, repo, tag, image).await;
    }
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        manifest_puts(&dst).len(),
        expected.len() + 2,
        "the index's two children, then the three tags"
    );
}

// ── 4. Live changes ─────────────────────────────────────────────────────────────────────────────────

/// Issue scenario 4: a Deployment added after the start, its image changed, then deleted, and a
/// CronJob's image changed. A deleted workload's backup stays; it is no longer tracked.
#[tokio::test]
async fn added_changed_and_deleted_workloads_and_cronjob_changes_are_followed() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let images: Vec<Image> = (0..4).map(|i| Image::oci("amd64", &[700], 850 + i).unwrap()).collect();
    images[0].push(&src, "ops/backup", "1").await.unwrap();
    images[1].push(&src, "ops/backup", "2").await.unwrap();
    images[2].push(&src, "shop/web", "1").await.unwrap();
    images[3].push(&src, "shop/web", "2").await.unwrap();
    let cronjob = |tag: &str| {
        workload(
            "CronJob",
            "batch/v1",
            "default",
            "backup",
            &[("b", &on(&src, &format!("ops/backup:{tag}")))],
        )
    };
    let web = |tag: &str| {
        workload(
            "Deployment",
            "apps/v1",
            "default",
            "web",
            &[("web", &on(&src, &format!("shop/web:{tag}")))],
        )
    };
    let server = ApiServer::new();
    server.apply(cronjob("1")).unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );
    wait_for(&dst, "ops/backup", "1").await;

    server.apply(web("1")).unwrap();
    wait_for(&dst, "shop/web", "1").await;
    server.apply(web("2")).unwrap();
    wait_for(&dst, "shop/web", "2").await;
    server.apply(cronjob("2")).unwrap();
    wait_for(&dst, "ops/backup", "2").await;
    eventually("two images tracked", WAIT, async || {
        metric(&daemon, "k8s_copycat_images_tracked").await == Some(2.0)
    })
    .await;

    let writes = |reg: &Registry| {
        copycat_requests(reg)
            .iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .count()
    };
    let written = writes(&dst);
    server.delete("Deployment", "default", "web");
    eventually("one image tracked after the deletion", WAIT, async || {
        metric(&daemon, "k8s_copycat_images_tracked").await == Some(1.0)
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(writes(&dst), written, "a deletion writes nothing");
    for (repo, tag, image) in [
        ("ops/backup", "1", &images[0]),
        ("ops/backup", "2", &images[1]),
        ("shop/web", "1", &images[2]),
        ("shop/web", "2", &images[3]),
    ] {
        assert_identical(&dst, repo, tag, image).await;
    }
    assert_written_once(&dst);
}

// ── 5. Dry runs ─────────────────────────────────────────────────────────────────────────────────────

/// Issue scenario 5 (dry run; dry pull is `daemon::dry_pull_plans_without_any_registry_request`):
/// `DRY_RUN=true` writes nothing to the target and logs every target it would write.
#[tokio::test]
async fn dry_run_writes_nothing_and_names_every_target() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    for (i, repo) in ["lib/a", "lib/b", "lib/c"].iter().enumerate() {
        Image::oci("amd64", &[800], 860 + i as u64)
            .unwrap()
            .push(&src, repo, "1")
            .await
            .unwrap();
    }
    let server = ApiServer::new();
    server
        .apply_all([
            deployment("ab", &[on(&src, "lib/a:1"), on(&src, "lib/b:1")]),
            pod("default", "c", &[("c", &on(&src, "lib/c:1"))]),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[("TARGET_REPO_PREFIX", "dry/$namespace"), ("DRY_RUN", "true")],
    );
    let targets: Vec<String> = ["lib/a:1", "lib/b:1", "lib/c:1"]
        .iter()
        .map(|r| format!("{}/dry/default/{r}", dst.host()))
        .collect();
    eventually("every target decided", WAIT, async || {
        let states = states(&daemon).await;
        targets
            .iter()
            .all(|t| states.get(t).map(String::as_str) == Some("dry-run"))
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_dry_run(&log, &targets, &dst);
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {log:?}"
    );
}

/// A dry run's text `log` names every one of `targets` as `would-copy`, and nothing was written to `dst`.
pub(crate) fn assert_dry_run(log: &str, targets: &[String], dst: &Registry) {
    for target in targets {
        assert!(
            log.lines()
                .any(|l| l.contains("result=\"would-copy\"") && l.contains(&format!("target={target} "))),
            "{target} not named: {log}"
        );
    }
    let writes: Vec<_> = dst
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "a dry run wrote to the target: {writes:?}");
}

// ── 8. Authentication and TLS ───────────────────────────────────────────────────────────────────────

/// Issue scenario 8: sources with basic auth, bearer tokens and TLS with a custom CA, into a target
/// with basic auth over TLS with a custom CA; then from a basic-auth TLS source into a bearer-token
/// target. Credentials come from the environment (`passwordEnv`, `TARGET_PASSWORD`), CAs from the
/// config file. No secret ever appears in the output — logs at trace level, then at debug level,
/// `/status`, `/metrics`, Events: neither a password, nor `user:password` in base64 (what a Basic
/// `Authorization` header carries), nor a bearer token the token server issued.
#[tokio::test]
async fn basic_auth_bearer_tokens_and_custom_ca_tls_on_both_sides() {
    const BASIC: &str = "basic-pw-5Rt2";
    const TOKEN: &str = "token-pw-8Kq1";
    const TLS_TARGET: &str = "tls-target-pw-3Zz9";
    let src_basic = start(RegistryMode::basic("reader", BASIC));
    let src_token = start(RegistryMode::token("robot", TOKEN));
    let src_tls = start(RegistryMode::Tls);
    let dst_tls = start(RegistryMode::basic_tls("pusher", TLS_TARGET));
    let images = [
        Image::oci("amd64", &[1200], 870).unwrap(),
        Image::oci_index(&[1200], true, 871).unwrap(),
        Image::docker("amd64", &[1200], 872).unwrap(),
    ];
    images[0].push(&src_basic, "team/basic", "1").await.unwrap();
    images[1].push(&src_token, "team/token", "1").await.unwrap();
    images[2].push(&src_tls, "team/tls", "1").await.unwrap();
    let pem = |reg: &Registry| reg.ca_pem_path().unwrap().display().to_string();
    let mut secrets = [
        credential_secrets("reader", BASIC),
        credential_secrets("robot", TOKEN),
        credential_secrets("pusher", TLS_TARGET),
    ]
    .concat();

    // Into the TLS target with basic auth.
    let server = ApiServer::new();
    server
        .apply(deployment(
            "app",
            &[
                on(&src_basic, "team/basic:1"),
                on(&src_token, "team/token:1"),
                on(&src_tls, "team/tls:1"),
                // Fails after authenticating: its error goes to /status and an Event.
                on(&src_token, "team/missing:1"),
            ],
        ))
        .unwrap();
    let api = server.serve().unwrap();
    let config = config_file(&format!(
        r#"targetKind: docker
docker:
  registry: "{dst}"
  caFile: "{dst_ca}"
registries:
  - host: "{tls}"
    caFile: "{tls_ca}"
registryCredentials:
  - registry: "{basic}"
    username: reader
    passwordEnv: BASIC_PASSWORD
  - registry: "{token}"
    username: robot
    passwordEnv: TOKEN_PASSWORD
"#,
        dst = dst_tls.host(),
        dst_ca = pem(&dst_tls),
        tls = src_tls.host(),
        tls_ca = pem(&src_tls),
        basic = src_basic.host(),
        token = src_token.host(),
    ));
    let env = [
        ("CONFIG_PATH", config.path().to_str().unwrap()),
        ("BASIC_PASSWORD", BASIC),
        ("TOKEN_PASSWORD", TOKEN),
        ("TARGET_USERNAME", "pusher"),
        ("TARGET_PASSWORD", TLS_TARGET),
        ("LOG_LEVEL", "trace"),
    ];
    let daemon = Daemon::start(api.kubeconfig_path(), &env);
    for (repo, image) in ["team/basic", "team/token", "team/tls"].iter().zip(&images) {
        wait_for(&dst_tls, repo, "1").await;
        assert_identical(&dst_tls, repo, "1", image).await;
    }
    eventually("the missing image's Event", WAIT, async || {
        !server.list("Event", "default").is_empty()
    })
    .await;
    let (_, status) = daemon.get("/status").await;
    let (_, metrics) = daemon.get("/metrics").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        src_token.token_log().iter().any(|t| t.authorized),
        "the token flow was used"
    );
    secrets.extend(issued_token_secrets(&src_token));
    let events = serde_json::to_string(&server.list("Event", "default")).unwrap();
    assert_no_secrets(
        &[
            ("the trace log", &log),
            ("/status", &status),
            ("/metrics", &metrics),
            ("Events", &events),
        ],
        &secrets,
    );

    // From the TLS registry with basic auth into the bearer-token registry.
    let server = ApiServer::new();
    server
        .apply(deployment("back", &[on(&dst_tls, "team/token:1")]))
        .unwrap();
    let api = server.serve().unwrap();
    let config = config_file(&format!(
        r#"targetKind: docker
docker:
  registry: "{token}"
  repoPrefix: back
registries:
  - host: "{tls}"
    caFile: "{tls_ca}"
registryCredentials:
  - registry: "{tls}"
    username: pusher
    passwordEnv: TLS_PASSWORD
"#,
        token = src_token.host(),
        tls = dst_tls.host(),
        tls_ca = pem(&dst_tls),
    ));
    let env = [
        ("CONFIG_PATH", config.path().to_str().unwrap()),
        ("TLS_PASSWORD", TLS_TARGET),
        ("TARGET_USERNAME", "robot"),
        ("TARGET_PASSWORD", TOKEN),
        ("LOG_LEVEL", "debug"),
    ];
    let daemon = Daemon::start(api.kubeconfig_path(), &env);
    wait_for(&src_token, "back/team/token", "1").await;
    assert_identical(&src_token, "back/team/token", "1", &images[1]).await;
    let (_, status) = daemon.get("/status").await;
    let (_, metrics) = daemon.get("/metrics").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // The tokens issued to this daemon (as the target's token server) too.
    let secrets: Vec<_> = secrets.into_iter().chain(issued_token_secrets(&src_token)).collect();
    let events = serde_json::to_string(&server.list("Event", "default")).unwrap();
    assert_no_secrets(
        &[
            ("the debug log", &log),
            ("/status", &status),
            ("/metrics", &metrics),
            ("Events", &events),
        ],
        &secrets,
    );
}

// ── Failure drills ──────────────────────────────────────────────────────────────────────────────────

/// The lines of `log` that report a failed attempt at `target` (`registry/repo:tag`).
fn failures_of<'a>(log: &'a str, target: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("mirror failed") && l.contains(&format!("target={target} ")))
        .collect()
}

/// Drill: the source registry dies in the middle of a run, with a large layer in flight and more
/// work arriving while it is down, then comes back. With `FAILURE_COOLDOWN_MINUTES=0` everything is
/// mirrored once it is back, without a restart or an admin call; no tag is written twice and none
/// points at partial content.
#[tokio::test]
async fn a_source_outage_mid_run_heals_without_duplicate_or_partial_tags() {
    let (mut src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let big = Image::oci("amd64", &[96 << 20], 880).unwrap();
    big.push(&src, "big/app", "1").await.unwrap();
    let small: Vec<Image> = (0..6).map(|i| Image::oci("amd64", &[2000], 881 + i).unwrap()).collect();
    for (i, image) in small.iter().enumerate() {
        image.push(&src, &format!("small/app{i}"), "1").await.unwrap();
    }
    let server = ApiServer::new();
    server
        .apply(deployment(
            "first",
            &[on(&src, "small/app0:1"), on(&src, "small/app1:1")],
        ))
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[
            ("FAILURE_COOLDOWN_MINUTES", "0"),
            ("REGISTRY_RETRY_ATTEMPTS", "2"),
            ("REGISTRY_RETRY_BACKOFF", "200ms"),
        ],
    );
    wait_for(&dst, "small/app0", "1").await;
    wait_for(&dst, "small/app1", "1").await;

    // The big layer is streaming from the source to the target when the source dies.
    server.apply(deployment("big", &[on(&src, "big/app:1")])).unwrap();
    // Polled often: the 96 MiB stream takes a fraction of a second.
    let deadline = Instant::now() + WAIT;
    while !copycat_requests(&dst)
        .iter()
        .any(|r| r.method == "POST" && r.path.starts_with("/v2/big/app/blobs/uploads/"))
    {
        assert!(Instant::now() < deadline, "the big layer's upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    src.stop();
    assert_eq!(
        manifest_digest(&dst, "big/app", "1").await.unwrap(),
        None,
        "the big image was still in flight when the source died"
    );
    // More work arrives while the source is down.
    let late: Vec<String> = (2..6).map(|i| on(&src, &format!("small/app{i}:1"))).collect();
    server.apply(deployment("late", &late)).unwrap();
    let targets: Vec<String> = std::iter::once("big/app:1".to_owned())
        .chain((2..6).map(|i| format!("small/app{i}:1")))
        .map(|r| format!("{}/{r}", dst.host()))
        .collect();
    eventually("every copy during the outage to fail", WAIT, async || {
        let log = daemon.run.log();
        targets.iter().all(|t| !failures_of(&log, t).is_empty())
    })
    .await;
    src.restart().unwrap();

    eventually("everything mirrored after the outage", WAIT, async || {
        let states = states(&daemon).await;
        states.len() == 7 && states.values().all(|s| s == "mirrored")
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_identical(&dst, "big/app", "1", &big).await;
    for (i, image) in small.iter().enumerate() {
        assert_identical(&dst, &format!("small/app{i}"), "1", image).await;
    }
    assert_written_once(&dst);
}

/// Drill: the target answers 500 to manifest PUTs and 429 with `Retry-After: 1` to upload starts,
/// several times in a row (through the fault proxy). Each request is retried with backoff, honouring
/// `Retry-After`, and the mirror completes without a failed attempt.
#[tokio::test]
async fn target_server_errors_and_rate_limits_are_retried_with_backoff() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&dst.url()).unwrap();
    let images = [
        Image::oci("amd64", &[50_000], 885).unwrap(),
        Image::docker_manifest_list(&[20_000], 886).unwrap(),
    ];
    images[0].push(&src, "lib/one", "1").await.unwrap();
    images[1].push(&src, "lib/two", "1").await.unwrap();
    proxy.set(
        Fault::status_retry_after(429, "1")
            .on(Match::new(Some("POST"), Some("/blobs/uploads/")))
            .times(3),
    );
    proxy.set(
        Fault::status(500)
            .on(Match::new(Some("PUT"), Some("/manifests/")))
            .times(3),
    );
    let server = ApiServer::new();
    server
        .apply(deployment("app", &[on(&src, "lib/one:1"), on(&src, "lib/two:1")]))
        .unwrap();
    let api = server.serve().unwrap();
    let started = Instant::now();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &proxy.host()),
            ("REGISTRY_RETRY_ATTEMPTS", "4"),
            ("REGISTRY_RETRY_BACKOFF", "100ms"),
            // One request at a time: the faults hit consecutive attempts of one request.
            ("MAX_CONCURRENT_RECONCILES", "1"),
            ("BLOB_CONCURRENCY", "1"),
        ],
    );
    wait_for(&dst, "lib/one", "1").await;
    wait_for(&dst, "lib/two", "1").await;
    let took = started.elapsed();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(proxy.faults_applied(), 6, "{:#?}", proxy.requests());
    assert!(
        took >= Duration::from_secs(3),
        "three answers with Retry-After: 1 were not waited for ({took:?})"
    );
    assert!(!log.contains("mirror failed"), "retries are within one attempt: {log}");
    assert_identical(&dst, "lib/one", "1", &images[0]).await;
    assert_identical(&dst, "lib/two", "1", &images[1]).await;
    assert_written_once(&dst);
}

/// Peak resident memory (`VmHWM`) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib / 1024.0
}

/// Drill: the connection is cut in the middle of a 200 MiB layer download. The copy is retried and
/// the result is digest-identical; the layer streams through without being held in memory.
#[tokio::test]
async fn a_connection_cut_inside_a_200_mib_layer_is_retried_to_an_identical_copy() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let big = Image::oci("amd64", &[200 << 20], 890).unwrap();
    big.push(&src, "big/layer", "1").await.unwrap();
    let layer = format!("/blobs/{}", big.blobs[1].digest);
    proxy.set(
        Fault::drop_response_after(100 << 20)
            .on(Match::new(Some("GET"), Some(&layer)))
            .times(1),
    );
    let server = ApiServer::new();
    server
        .apply(deployment("big", &[on_proxy(&proxy, "big/layer:1")]))
        .unwrap();
    let api = server.serve().unwrap();
    let started = Instant::now();
    let daemon = Daemon::mirroring_to(api.kubeconfig_path(), &dst, &[("REGISTRY_RETRY_BACKOFF", "200ms")]);
    wait_for(&dst, "big/layer", "1").await;
    let took = started.elapsed();
    let rss = peak_rss_mib(daemon.run.pid());
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    println!("200 MiB layer, cut at 100 MiB: mirrored in {took:.1?}, daemon peak RSS {rss:.1} MiB");
    assert_eq!(proxy.faults_applied(), 1);
    let gets = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer))
        .count();
    assert!(gets >= 2, "the layer was fetched again after the cut ({gets} GETs)");
    assert_identical(&dst, "big/layer", "1", &big).await;
    assert_written_once(&dst);
    // Streaming holds a few chunks: the debug build peaked at about 31 MiB here. 64 MiB leaves room
    // for a loaded machine but not for holding a tenth of the layer (the part after the cut).
    assert!(rss < 64.0, "a 200 MiB layer must stream, peak RSS {rss:.1} MiB");
}

/// `reference` at the fault proxy `proxy`: `127.0.0.1:PORT/repo:tag`.
fn on_proxy(proxy: &FaultProxy, reference: &str) -> String {
    format!("{}/{reference}", proxy.host())
}

/// Drill: the source serves one image's layer with a flipped byte. That image fails with a digest
/// error and nothing of it is tagged (nor is the bad blob stored) on the target; the other images of
/// the same workload are mirrored.
#[tokio::test]
async fn a_corrupted_source_blob_fails_only_its_image_and_tags_nothing() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let proxy = FaultProxy::start(&src.url()).unwrap();
    let bad = Image::oci("amd64", &[200_000], 895).unwrap();
    let good = [
        Image::docker("amd64", &[30_000], 896).unwrap(),
        Image::oci_index(&[30_000], true, 897).unwrap(),
    ];
    bad.push(&src, "lib/bad", "1").await.unwrap();
    good[0].push(&src, "lib/good0", "1").await.unwrap();
    good[1].push(&src, "lib/good1", "1").await.unwrap();
    let layer = bad.blobs[1].digest.clone();
    proxy.set(
        Fault::corrupt_body(150_000)
            .on(Match::new(Some("GET"), Some(&format!("/blobs/{layer}"))))
            .times(100),
    );
    let server = ApiServer::new();
    server
        .apply(deployment(
            "app",
            &[
                on_proxy(&proxy, "lib/bad:1"),
                on_proxy(&proxy, "lib/good0:1"),
                on_proxy(&proxy, "lib/good1:1"),
            ],
        ))
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );
    let bad_target = format!("{}/lib/bad:1", dst.host());
    eventually("the corrupted image in cooldown", WAIT, async || {
        daemon
            .status_of(&bad_target)
            .await
            .is_some_and(|s| s["state"] == "cooldown")
    })
    .await;
    wait_for(&dst, "lib/good0", "1").await;
    wait_for(&dst, "lib/good1", "1").await;
    let status = daemon.status_of(&bad_target).await.unwrap();
    let error = status["lastError"].as_str().unwrap();
    assert!(
        error.contains(&layer) && error.contains("does not match"),
        "a digest error naming the layer: {status}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        failures_of(&log, &bad_target).len(),
        1,
        "a digest mismatch is not retried at once: {log}"
    );
    assert_eq!(manifest_digest(&dst, "lib/bad", "1").await.unwrap(), None);
    assert!(
        !blob_exists(&dst, "lib/bad", &layer).await.unwrap(),
        "the corrupted blob was stored"
    );
    assert!(
        !manifest_puts(&dst).keys().any(|k| k.starts_with("lib/bad:")),
        "nothing of the corrupted image is tagged"
    );
    assert_identical(&dst, "lib/good0", "1", &good[0]).await;
    assert_identical(&dst, "lib/good1", "1", &good[1]).await;
    assert_written_once(&dst);
}

/// Drill: the stand-in API server restarts (watches resume into a compacted history: 410 Gone), and
/// later answers an open watch's resumption with 410 again. The daemon relists each time, picks up
/// what changed meanwhile and keeps following changes; nothing is mirrored twice.
#[tokio::test]
async fn api_server_restarts_and_expired_watches_relist_without_mirroring_twice() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let repos = ["lib/a", "lib/b", "lib/c", "lib/d"];
    for (i, repo) in repos.iter().enumerate() {
        Image::oci("amd64", &[900], 900 + i as u64)
            .unwrap()
            .push(&src, repo, "1")
            .await
            .unwrap();
    }
    let deploy = |name: &str, repo: &str| deployment(name, &[on(&src, &format!("{repo}:1"))]);
    let server = ApiServer::new();
    server.apply(deploy("a", "lib/a")).unwrap();
    let mut api = server.serve().unwrap();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );
    wait_for(&dst, "lib/a", "1").await;
    let lists = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|(m, p)| m == "GET" && p.contains("/deployments?") && !p.contains("watch=true"))
            .count()
    };
    let lists_at_start = lists(&server);

    // A change while the server is down, then a restart: the history is gone.
    api.stop();
    server.apply(deploy("b", "lib/b")).unwrap();
    api.restart().unwrap();
    wait_for(&dst, "lib/b", "1").await;
    let lists_after_restart = lists(&server);
    assert!(lists_after_restart > lists_at_start, "no relist after the restart");

    // 410 Gone on a running server: every version handed out expires, so the watch must relist
    // whether or not it saw `c` first; the relist follows the watcher's backoff, which the errors
    // around the restart have raised to seconds.
    server.apply(deploy("c", "lib/c")).unwrap();
    server.expire_watches();
    eventually("a relist after 410 Gone", WAIT, async || {
        lists(&server) > lists_after_restart
    })
    .await;
    wait_for(&dst, "lib/c", "1").await;

    // And it keeps watching.
    server.apply(deploy("d", "lib/d")).unwrap();
    wait_for(&dst, "lib/d", "1").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_written_once(&dst);
    for repo in repos {
        let copies = log
            .lines()
            .filter(|l| l.contains("mirror copied") && l.contains(&format!("/{repo}:1 ")))
            .count();
        assert_eq!(copies, 1, "{repo} copied {copies} times: {log}");
        let gets = copycat_requests(&src)
            .iter()
            .filter(|r| r.method == "GET" && r.path.starts_with(&format!("/v2/{repo}/manifests/")))
            .count();
        assert_eq!(gets, 1, "{repo}'s manifest fetched {gets} times");
    }
}

/// Drill: objects a real cluster can hold but that make poor input: a Pod whose image string is not
/// a valid reference, a Pod with 200 containers, a Deployment with an empty image next to a good
/// one, a Deployment that does not decode as one. Each is logged and the daemon carries on: every
/// valid image is mirrored, the undecodable Deployment's once it is fixed.
#[tokio::test]
async fn bad_objects_are_logged_and_the_daemon_carries_on() {
    use futures::StreamExt as _;
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let many = Image::oci("amd64", &[600], 910).unwrap();
    let client = testkit::Client::new(&src).unwrap();
    let tags: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    // The blobs once, then the manifest under each tag.
    client.push_image("lib/many", &tags[0], &many).await.unwrap();
    let pushed: Vec<anyhow::Result<String>> = futures::stream::iter(&tags[1..])
        .map(|tag| client.push_raw_manifest("lib/many", tag, &many.media_type, many.manifest.clone()))
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(pushed.iter().all(Result::is_ok), "{pushed:?}");
    let (good, later) = (
        Image::oci("amd64", &[600], 911).unwrap(),
        Image::oci("amd64", &[600], 912).unwrap(),
    );
    good.push(&src, "lib/good", "1").await.unwrap();
    later.push(&src, "lib/later", "1").await.unwrap();

    let server = ApiServer::new();
    let wide: Vec<(String, String)> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| (format!("c{i}"), on(&src, &format!("lib/many:{tag}"))))
        .collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(n, i)| (n.as_str(), i.as_str())).collect();
    // A Deployment that does not fit the Deployment type (kept from an older schema, say).
    let later = |replicas: Value| {
        let mut d = workload(
            "Deployment",
            "apps/v1",
            "default",
            "garbled",
            &[("c", &on(&src, "lib/later:1"))],
        );
        d["spec"]["replicas"] = replicas;
        d
    };
    server
        .apply_all([
            later(json!("three")),
            pod("default", "broken", &[("c", "Not A Valid::Image")]),
            pod("default", "shouty", &[("c", &on(&src, "Lib/UPPER:1"))]),
            pod("default", "wide", &wide),
            workload(
                "Deployment",
                "apps/v1",
                "default",
                "hollow",
                &[("empty", ""), ("real", &on(&src, "lib/good:1"))],
            ),
        ])
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );
    wait_for(&dst, "lib/good", "1").await;
    assert_eq!(manifest_digest(&dst, "lib/later", "1").await.unwrap(), None);
    // Fixed, it is picked up.
    server.apply(later(json!(1))).unwrap();
    wait_for(&dst, "lib/later", "1").await;
    eventually("the 200 containers' images", WAIT, async || {
        let states = states(&daemon).await;
        states.len() == 202 && states.values().all(|s| s == "mirrored")
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("object cannot be decoded") && l.contains("name=garbled") && l.contains("three")),
        "the undecodable Deployment is reported: {log}"
    );
    for (workload, image) in [
        ("Pod default/broken", "Not A Valid::Image"),
        ("Pod default/shouty", "Lib/UPPER:1"),
        ("Deployment default/hollow", "\"\""),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("invalid image reference") && l.contains(workload) && l.contains(image)),
            "{workload}'s image {image} not reported: {log}"
        );
    }
    for tag in &tags {
        assert_eq!(
            manifest_digest(&dst, "lib/many", tag).await.unwrap().as_deref(),
            Some(many.digest.as_str()),
            "lib/many:{tag}"
        );
    }
    assert_written_once(&dst);
}

/// A bad setting: what it is, the config file, extra environment, extra flags, and what the message
/// must name.
type BadSetting<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, Vec<&'a str>);

/// Drill: every kind of invalid setting stops `copycat run` at start with exit code 2 and a message
/// naming the key (or variable, or flag), before anything is started; a password given alongside is
/// never printed.
#[tokio::test]
async fn every_kind_of_bad_setting_stops_the_start_with_exit_2_naming_it() {
    let api = ApiServer::new().serve().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let not_pem = scratch.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let cases: Vec<BadSetting<'_>> = vec![
        (
            "unknown key",
            "includeNamespace: [a]\n",
            vec![],
            vec![],
            vec!["includeNamespace", "includeNamespaces"],
        ),
        (
            "YAML syntax",
            "targetKind: [docker\n",
            vec![],
            vec![],
            vec!["invalid YAML"],
        ),
        (
            "boolean",
            "",
            vec![("DRY_RUN", "maybe")],
            vec![],
            vec!["DRY_RUN", "maybe"],
        ),
        (
            "negative verification interval",
            "verifyInterval: -1h\n",
            vec![],
            vec![],
            vec!["verifyInterval", "must not be negative"],
        ),
        (
            "no image per restore drill",
            "",
            vec![("RESTORE_DRILL_IMAGES", "0")],
            vec![],
            vec!["RESTORE_DRILL_IMAGES", "greater than 0"],
        ),
        (
            "boolean in the file",
            "emitEvents: sometimes\n",
            vec![],
            vec![],
            vec!["emitEvents", "sometimes"],
        ),
        (
            "integer",
            "",
            vec![("MAX_CONCURRENT_RECONCILES", "0")],
            vec![],
            vec!["MAX_CONCURRENT_RECONCILES"],
        ),
        (
            "duration",
            "",
            vec![("FAILURE_COOLDOWN_MINUTES", "soon")],
            vec![],
            vec!["FAILURE_COOLDOWN_MINUTES", "soon"],
        ),
        (
            "enumeration",
            "",
            vec![("TARGET_KIND", "gcr")],
            vec![],
            vec!["TARGET_KIND", "gcr"],
        ),
        (
            "log format",
            "",
            vec![("LOG_FORMAT", "xml")],
            vec![],
            vec!["LOG_FORMAT", "xml"],
        ),
        (
            "list member",
            "",
            vec![("WATCH_RESOURCES", "deploymentz")],
            vec![],
            vec!["WATCH_RESOURCES", "deploymentz"],
        ),
        (
            "regex",
            "",
            vec![("IGNORE_MISSING_PLATFORMS", "(")],
            vec![],
            vec!["IGNORE_MISSING_PLATFORMS"],
        ),
        (
            "regex in a list entry",
            "pathMap:\n  - {from: \"(\", to: x, regex: true}\n",
            vec![],
            vec![],
            vec!["pathMap[0].from"],
        ),
        (
            "platform",
            "",
            vec![("MIRROR_PLATFORMS", "linux/")],
            vec![],
            vec!["MIRROR_PLATFORMS"],
        ),
        (
            "prefix template",
            "",
            vec![("TARGET_REPO_PREFIX", "m/$nope")],
            vec![],
            vec!["TARGET_REPO_PREFIX", "$nope"],
        ),
        (
            "digest tag template",
            "",
            vec![("DIGEST_TAG_TEMPLATE", "$hexes")],
            vec![],
            vec!["DIGEST_TAG_TEMPLATE", "$hexes"],
        ),
        (
            "digest tag template of the reserved referrers form",
            "digestTagTemplate: sha256-$hex\n",
            vec![],
            vec![],
            vec![
                "digestTagTemplate",
                "sha256-$hex",
                "reserved by the OCI referrers tag schema",
            ],
        ),
        (
            "digest tag template that is the same for every digest",
            "",
            vec![("DIGEST_TAG_TEMPLATE", "backup")],
            vec![],
            vec!["DIGEST_TAG_TEMPLATE", "same tag"],
        ),
        (
            "JSON",
            "ecr:\n  lifecyclePolicy: \"{not json\"\n",
            vec![],
            vec![],
            vec!["ecr.lifecyclePolicy", "JSON"],
        ),
        (
            "namespace glob",
            "",
            vec![("INCLUDE_NAMESPACES", "team-[")],
            vec![],
            vec!["INCLUDE_NAMESPACES", "team-["],
        ),
        (
            "required setting",
            "",
            vec![("TARGET_REGISTRY", "")],
            vec![],
            vec!["docker.registry", "required"],
        ),
        (
            "ECR account",
            "",
            vec![
                ("TARGET_KIND", "ecr"),
                ("ECR_ACCOUNT_ID", "123"),
                ("AWS_REGION", "us-east-1"),
            ],
            vec![],
            vec!["ECR_ACCOUNT_ID", "123"],
        ),
        (
            "entry without its required field",
            "registryCredentials:\n  - {username: x}\n",
            vec![],
            vec![],
            vec!["registryCredentials[0].registry", "required"],
        ),
        (
            "list expected",
            "registries: nope\n",
            vec![],
            vec![],
            vec!["registries", "list"],
        ),
        (
            "host with a scheme",
            "",
            vec![("TARGET_REGISTRY", "https://r.example.com")],
            vec![],
            vec!["TARGET_REGISTRY", "scheme"],
        ),
        (
            "host with a space",
            "",
            vec![("TARGET_REGISTRY", "bad host.example.com")],
            vec![],
            vec!["TARGET_REGISTRY", "bad host"],
        ),
        (
            "port out of range",
            "",
            vec![("TARGET_REGISTRY", "r.example.com:99999")],
            vec![],
            vec!["TARGET_REGISTRY", "99999"],
        ),
        (
            "not a registry host",
            "",
            vec![("TARGET_REGISTRY", "myregistry")],
            vec![],
            vec!["TARGET_REGISTRY", "myregistry"],
        ),
        (
            "ECR registry host",
            "",
            vec![("ECR_REGISTRY_HOST", "vpce host")],
            vec![],
            vec!["ECR_REGISTRY_HOST", "vpce host"],
        ),
        (
            "registries entry host",
            "registries:\n  - {host: \"a b\"}\n",
            vec![],
            vec![],
            vec!["registries[0].host", "a b"],
        ),
        (
            "read mirror host",
            "registryMirrors:\n  docker.io: [\"mirror .example.com\"]\n",
            vec![],
            vec![],
            vec!["registryMirrors.docker.io", "mirror .example.com"],
        ),
        (
            "listener address",
            "",
            vec![("METRICS_ADDR", "nonsense")],
            vec![],
            vec!["METRICS_ADDR", "nonsense"],
        ),
        (
            "listener port",
            "",
            vec![("HEALTH_ADDR", ":80x")],
            vec![],
            vec!["HEALTH_ADDR", ":80x"],
        ),
        (
            "listener address flag",
            "",
            vec![],
            vec!["--metrics-bind-address", "localhost"],
            vec!["--metrics-bind-address", "localhost"],
        ),
        (
            "log level flag",
            "",
            vec![],
            vec!["--log-level", "loud"],
            vec!["--log-level", "loud"],
        ),
        (
            "missing CA file",
            "",
            vec![("TARGET_CA_FILE", "/nonexistent/ca.pem")],
            vec![],
            vec!["TARGET_CA_FILE", "/nonexistent/ca.pem"],
        ),
        (
            "CA file without a certificate",
            "",
            vec![("TARGET_CA_FILE", not_pem)],
            vec![],
            vec!["TARGET_CA_FILE", not_pem],
        ),
        (
            "registries entry CA file",
            "registries:\n  - {host: r.example.com, caFile: /nonexistent/r.pem}\n",
            vec![],
            vec![],
            vec!["registries[0].caFile", "/nonexistent/r.pem"],
        ),
    ];
    const PASSWORD: &str = "pw-never-printed-4Tq";
    let mut wrong = Vec::new();
    for (what, file, env, flags, names) in &cases {
        let config = config_file(file);
        let mut all = vec![
            ("CONFIG_PATH", config.path().to_str().unwrap()),
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", "127.0.0.1:5000"),
            ("TARGET_PASSWORD", PASSWORD),
            ("LEADER_ELECT", "false"),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("HEALTH_ADDR", "127.0.0.1:0"),
        ];
        all.extend(env.iter().copied());
        let mut run = CopycatRun::start(api.kubeconfig_path(), flags, &all);
        let deadline = Instant::now() + Duration::from_secs(10);
        while run.try_wait().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One that accepted the setting is running: stopped, and reported below.
        let (code, log) = run.stop();
        let named = names.iter().all(|n| log.contains(n));
        if code != Some(2) || !named || log.contains(PASSWORD) || log.contains("copycat started") {
            wrong.push(format!("{what}: exit {code:?}, expected 2 naming {names:?}:\n{log}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

// ── Load ────────────────────────────────────────────────────────────────────────────────────────────

/// Drill: 1,000 distinct small images used by 5,000 Pods in 10 namespaces are mirrored to completion;
/// the daemon's peak memory stays under 150 MiB and every target is written exactly once. Prints its
/// figures (see them with `cargo nextest run --success-output immediate`).
#[tokio::test]
async fn load_1000_images_used_by_5000_pods() {
    use futures::StreamExt as _;
    const IMAGES: usize = 1000;
    const PODS: usize = 5000;
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let prepared = Instant::now();
    let images: Vec<Image> = (0..IMAGES)
        .map(|i| Image::oci("amd64", &[256], 10_000 + i as u64).unwrap())
        .collect();
    let client = testkit::Client::new(&src).unwrap();
    let pushed: Vec<anyhow::Result<String>> = futures::stream::iter(images.iter().enumerate())
        .map(|(i, image)| {
            let client = &client;
            async move { client.push_image(&format!("load/img{i:04}"), "1", image).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        pushed.iter().all(Result::is_ok),
        "{:?}",
        pushed.iter().find(|r| r.is_err())
    );
    let server = ApiServer::new();
    let namespaces: Vec<Value> = (0..10).map(|n| namespace(&format!("team-{n}"))).collect();
    server.load(namespaces).unwrap();
    let pods = (0..PODS).map(|p| {
        pod(
            &format!("team-{}", p % 10),
            &format!("pod-{p:05}"),
            &[("app", &on(&src, &format!("load/img{:04}:1", p % IMAGES)))],
        )
    });
    assert_eq!(server.load(pods).unwrap(), PODS);
    let api = server.serve().unwrap();
    let setup = prepared.elapsed();
    let src_before = src.requests().len();

    let started = Instant::now();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[
            ("MAX_CONCURRENT_RECONCILES", "16"),
            // Warnings only, but the listener lines the test reads its addresses from.
            ("RUST_LOG", "warn,copycat::server=info"),
        ],
    );
    let mirrored = r#"k8s_copycat_tasks{state="mirrored"}"#;
    eventually("every image mirrored", Duration::from_secs(240), async || {
        metric(&daemon, mirrored).await == Some(IMAGES as f64)
    })
    .await;
    let took = started.elapsed();
    let rss = peak_rss_mib(daemon.run.pid());
    let tracked = metric(&daemon, "k8s_copycat_images_tracked").await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");

    let puts = manifest_puts(&dst);
    let (dst_requests, src_requests) = (copycat_requests(&dst).len(), copycat_requests(&src).len());
    println!(
        "load drill: {IMAGES} images, {PODS} Pods: setup (build, push, load) {setup:.1?}; mirrored in {took:.1?}; \
         daemon peak RSS {rss:.1} MiB; copycat requests: {src_requests} to the source, {dst_requests} to the target; \
         manifest PUTs {} for {} targets",
        puts.values().sum::<usize>(),
        puts.len()
    );
    assert_eq!(
        src.requests().len() - src_before,
        src_requests,
        "only copycat reads the source"
    );
    assert_eq!(tracked, Some(IMAGES as f64));
    assert_eq!(puts.len(), IMAGES, "{puts:?}");
    assert_written_once(&dst);
    for i in [0, IMAGES / 2, IMAGES - 1] {
        assert_identical(&dst, &format!("load/img{i:04}"), "1", &images[i]).await;
    }
    assert!(rss < 150.0, "peak RSS {rss:.1} MiB");
}

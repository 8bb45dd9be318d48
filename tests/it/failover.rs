//! `copycat failover` as an operator runs it during an outage: the built binary against the stand-in
//! API server and real registries, with the source registry stopped. What it writes is read back
//! from the API server and checked at the target registry.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::{ApiFault, ApiServer};
use testkit::{Image, Registry, RegistryMode, manifest_digest};

use crate::commands::{copycat_command, text};
use crate::discovery::workload;
use crate::support::start;

/// The record failover keeps on each switched object.
pub(crate) const ANNOTATION: &str = "copycat.io/failover-originals";

/// `copycat failover ARGS…` against `kubeconfig`, mirroring to `dst` as the daemon names targets
/// (same paths), excluding quay.io.
pub(crate) fn failover(kubeconfig: &std::path::Path, dst: &Registry, args: &[&str]) -> std::process::Output {
    failover_command(kubeconfig, dst, args)
        .output()
        .expect("run copycat failover")
}

fn failover_command(kubeconfig: &std::path::Path, dst: &Registry, args: &[&str]) -> std::process::Command {
    let kubeconfig = kubeconfig.to_str().unwrap();
    let mut all = vec!["failover", "--kubeconfig", kubeconfig];
    all.extend(args);
    copycat_command(
        &all,
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &dst.host()),
            ("EXCLUDE_REGISTRIES", "quay.io"),
        ],
    )
}

/// A Running Pod `ns/name` owned by `owner` (`(kind, name)`), running each `(container, image,
/// digest)`; init containers are those named `init`.
fn pod(ns: &str, name: &str, owner: Option<(&str, &str)>, containers: &[(&str, &str, &str)]) -> Value {
    let spec = |init: bool| -> Vec<Value> {
        containers
            .iter()
            .filter(|(c, ..)| (*c == "init") == init)
            .map(|(c, i, _)| json!({"name": c, "image": i}))
            .collect()
    };
    let statuses = |init: bool| -> Vec<Value> {
        containers
            .iter()
            .filter(|(c, ..)| (*c == "init") == init)
            .map(|(c, i, d)| {
                let repo = i.split_once('@').map_or(*i, |(r, _)| r);
                let repo = repo.rsplit_once(':').map_or(repo, |(r, _)| r);
                json!({"name": c, "image": i, "imageID": format!("docker-pullable://{repo}@{d}"), "ready": true, "restartCount": 0})
            })
            .collect()
    };
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"initContainers": spec(true), "containers": spec(false)},
        "status": {"phase": "Running", "initContainerStatuses": statuses(true), "containerStatuses": statuses(false)}});
    if let Some((kind, owner)) = owner {
        let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": owner,
            "uid": format!("uid-{owner}"), "controller": true}]);
    }
    pod
}

/// `object` with an init container `init` running `image` first.
fn with_init(mut object: Value, image: &str) -> Value {
    let spec = if object["kind"] == "CronJob" {
        &mut object["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &mut object["spec"]["template"]["spec"]
    };
    spec["initContainers"] = json!([{"name": "init", "image": image}]);
    object
}

/// The images of `object`'s containers (init containers first) as `name=image`.
pub(crate) fn images(object: &Value) -> Vec<String> {
    let spec = match object["kind"].as_str().unwrap() {
        "Pod" => &object["spec"],
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &object["spec"]["template"]["spec"],
    };
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().cloned().unwrap_or_default())
        .map(|c| format!("{}={}", c["name"].as_str().unwrap(), c["image"].as_str().unwrap()))
        .collect()
}

/// The parts of an object failover may touch: its spec and its annotations.
fn touched(object: &Value) -> String {
    serde_json::to_string(&json!([object["spec"], object["metadata"]["annotations"]])).unwrap()
}

/// Methods other than GET the stand-in was asked.
fn writes(server: &ApiServer) -> Vec<(String, String)> {
    server.requests().into_iter().filter(|(m, _)| m != "GET").collect()
}

/// Issue 14 part 3, "Done when": with the source registry stopped, `failover --to-mirror` switches
/// every container whose backup is verified — Deployment (init container too), StatefulSet,
/// DaemonSet, CronJob, bare Pod — pinned to digests that exist at the target, records the originals
/// and adds the pull secret; it leaves and reports an image without a backup, a Job and an excluded
/// image; a dry run writes nothing; `--revert` restores every object byte for byte except a
/// container someone changed since, which is reported and kept.
#[tokio::test]
async fn failover_switches_verified_workloads_to_the_mirror_and_back_while_the_source_is_down() {
    let (mut src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci_index(&[3000, 2000], true, 1500).unwrap();
    let db = Image::docker("amd64", &[2500, 1500], 1501).unwrap();
    let init = Image::oci("amd64", &[1200], 1502).unwrap();
    let tool = Image::oci("amd64", &[1300], 1503).unwrap();
    let side = Image::oci("amd64", &[1100], 1504).unwrap();
    // Mirrored: the same images at the same names on the target (the daemon's default naming);
    // `shop/side` only at the source.
    for reg in [&src, &dst] {
        web.push(reg, "shop/web", "1.0").await.unwrap();
        db.push(reg, "data/db", "16").await.unwrap();
        init.push(reg, "tools/init", "1").await.unwrap();
        tool.push(reg, "tools/job", "1").await.unwrap();
    }
    side.push(&src, "shop/side", "2").await.unwrap();
    let src_host = src.host();
    let on = |r: &str| format!("{src_host}/{r}");
    let (web_ref, db_ref, init_ref, side_ref) = (
        on("shop/web:1.0"),
        on("data/db:16"),
        on("tools/init:1"),
        on("shop/side:2"),
    );
    // The CronJob and the Job pin their image by digest; the others learn it from their Pods.
    let tool_ref = format!("{}@{}", on("tools/job:1"), tool.digest);
    let server = ApiServer::new();
    server
        .apply_all([
            with_init(
                workload("Deployment", "apps/v1", "shop", "web", &[("web", &web_ref), ("side", &side_ref)]),
                &init_ref,
            ),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-7d4b9", "namespace": "shop",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web", "controller": true}]},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"spec": {"containers": []}}}}),
            pod("shop", "web-7d4b9-a", Some(("ReplicaSet", "web-7d4b9")), &[
                ("init", &init_ref, &init.digest),
                ("web", &web_ref, &web.digest),
                ("side", &side_ref, &side.digest),
            ]),
            workload("StatefulSet", "apps/v1", "data", "db", &[("db", &db_ref)]),
            pod("data", "db-0", Some(("StatefulSet", "db")), &[("db", &db_ref, &db.digest)]),
            workload("DaemonSet", "apps/v1", "ops", "agent", &[("agent", &init_ref)]),
            pod("ops", "agent-x", Some(("DaemonSet", "agent")), &[("agent", &init_ref, &init.digest)]),
            workload("CronJob", "batch/v1", "ops", "nightly", &[("job", &tool_ref)]),
            workload("Job", "batch/v1", "ops", "once", &[("job", &tool_ref)]),
            pod("default", "debug", None, &[("web", &web_ref, &web.digest)]),
            workload("Deployment", "apps/v1", "default", "vendor", &[("v", "quay.io/vendor/agent:2")]),
        ])
        .unwrap();
    let objects = [
        ("Deployment", "shop", "web"),
        ("StatefulSet", "data", "db"),
        ("DaemonSet", "ops", "agent"),
        ("CronJob", "ops", "nightly"),
        ("Job", "ops", "once"),
        ("Pod", "default", "debug"),
        ("Pod", "shop", "web-7d4b9-a"),
        ("Deployment", "default", "vendor"),
    ];
    let get = |(kind, ns, name): (&str, &str, &str)| server.get(kind, ns, name).unwrap();
    let before: Vec<Value> = objects.iter().map(|o| get(*o)).collect();
    let api = server.serve().unwrap();
    let kubeconfig = api.kubeconfig_path();
    src.stop();

    // 1. A dry run: the same summary, and not one write request.
    server.clear_requests();
    let out = failover(kubeconfig, &dst, &["--to-mirror", "--dry-run"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "something is left: {all}");
    assert!(writes(&server).is_empty(), "a dry run wrote: {:?}", writes(&server));
    let pinned = |repo: &str, tag: &str, digest: &str| format!("{}/{repo}:{tag}@{digest}", dst.host());
    let web_mirror = pinned("shop/web", "1.0", &web.digest);
    assert!(
        all.contains(&format!(
            "would switch Deployment shop/web: container web: {web_ref} → {web_mirror}"
        )),
        "{all}"
    );
    assert!(
        all.contains(
            "left Deployment default/vendor: container v (quay.io/vendor/agent:2): not mirrored: excluded by quay.io"
        ),
        "{all}"
    );
    assert!(all.contains("(dry run: nothing was written)"), "{all}");
    for (object, was) in objects.iter().zip(&before) {
        assert_eq!(touched(&get(*object)), touched(was), "{object:?}");
    }

    // 2. The switch, only for images of the (stopped) source registry, with a pull secret. The
    // daemon's `DRY_RUN` (as the shipped ConfigMap sets it) is not the operator's `--dry-run`.
    let out = failover_command(
        kubeconfig,
        &dst,
        &["--to-mirror", "--registry", &src_host, "--pull-secret", "mirror-pull"],
    )
    .env("DRY_RUN", "true")
    .output()
    .unwrap();
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "side:2 has no backup, the Job is not patched: {all}"
    );
    let init_mirror = pinned("tools/init", "1", &init.digest);
    let want: [(usize, Vec<String>); 5] = [
        (
            0,
            vec![
                format!("init={init_mirror}"),
                format!("web={web_mirror}"),
                format!("side={side_ref}"),
            ],
        ),
        (1, vec![format!("db={}", pinned("data/db", "16", &db.digest))]),
        (2, vec![format!("agent={init_mirror}")]),
        (3, vec![format!("job={}", pinned("tools/job", "1", &tool.digest))]),
        (5, vec![format!("web={web_mirror}")]),
    ];
    for (i, images_after) in &want {
        let now = get(objects[*i]);
        assert_eq!(images(&now), *images_after, "{:?}: {all}", objects[*i]);
        let record: Value = serde_json::from_str(now["metadata"]["annotations"][ANNOTATION].as_str().unwrap()).unwrap();
        let first = images_after[0].split_once('=').unwrap().0;
        assert_eq!(
            record["containers"][first]["mirror"],
            images_after[0].split_once('=').unwrap().1,
            "{record}"
        );
        assert_eq!(
            record["containers"][first]["original"],
            images(&before[*i])[0].split_once('=').unwrap().1,
            "{record}"
        );
        let secrets = if objects[*i].0 == "Pod" {
            &now["spec"]["imagePullSecrets"]
        } else {
            &now["spec"]["template"]["spec"]["imagePullSecrets"]
        };
        if objects[*i].0 == "CronJob" {
            assert_eq!(
                now["spec"]["jobTemplate"]["spec"]["template"]["spec"]["imagePullSecrets"],
                json!([{"name": "mirror-pull"}])
            );
        } else if objects[*i].0 == "Pod" {
            assert!(secrets.is_null(), "a Pod's pull secrets cannot change: {now}");
        } else {
            assert_eq!(*secrets, json!([{"name": "mirror-pull"}]), "{:?}", objects[*i]);
        }
        // Every digest written exists at the target, under the repository named.
        for image in images_after
            .iter()
            .filter_map(|i| i.split_once('=').unwrap().1.strip_prefix(&format!("{}/", dst.host())))
        {
            let (repo_tag, digest) = image.split_once('@').unwrap();
            let repo = repo_tag.rsplit_once(':').unwrap().0;
            assert_eq!(
                manifest_digest(&dst, repo, digest).await.unwrap().as_deref(),
                Some(digest),
                "{image}"
            );
        }
    }
    for i in [4, 6, 7] {
        assert_eq!(
            touched(&get(objects[i])),
            touched(&before[i]),
            "{:?} is not patched",
            objects[i]
        );
    }
    assert!(
        all.contains(&format!(
            "left Deployment shop/web: container side ({side_ref}): backup missing: the manifest"
        )),
        "{all}"
    );
    assert!(
        all.contains("not patched Job ops/once: a Job's Pod template cannot change"),
        "{all}"
    );
    assert!(!all.contains("vendor"), "--registry leaves quay.io out of scope: {all}");
    // The pull secret exists in no namespace: each namespace switched says so once (not for the Pod).
    for ns in ["shop", "data", "ops"] {
        let warning =
            format!("warning: Secret mirror-pull is not in namespace {ns}: its Pods pull from the mirror without it");
        assert_eq!(all.matches(&warning).count(), 1, "{ns}: {all}");
    }
    assert!(!all.contains("namespace default"), "{all}");
    // Pods of switched workloads are listed, and not counted as left: their rollout replaces them.
    assert!(
        all.contains("not patched Pod shop/web-7d4b9-a: owned by Deployment shop/web, which failover switches"),
        "{all}"
    );
    assert!(all.contains("failover: 6 containers in 5 objects switched to the mirror; 1 container left as it is, 1 object not patched, 0 errors"), "{all}");

    // 3. Someone moves the StatefulSet on after the switch.
    let mut db_now = get(objects[1]);
    db_now["spec"]["template"]["spec"]["containers"][0]["image"] = json!(on("data/db:17"));
    server.apply(db_now).unwrap();

    // 4. The revert restores everything else byte for byte and reports the StatefulSet.
    let out = failover(kubeconfig, &dst, &["--revert"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for (i, (object, was)) in objects.iter().zip(&before).enumerate() {
        let now = get(*object);
        if i == 1 {
            assert_eq!(images(&now), [format!("db={}", on("data/db:17"))], "kept: {all}");
            assert!(now["metadata"]["annotations"].get(ANNOTATION).is_none(), "{now}");
        } else {
            assert_eq!(touched(&now), touched(was), "{object:?}: {all}");
        }
    }
    assert!(
        all.contains(&format!(
            "restored Deployment shop/web: container web: {web_mirror} → {web_ref}"
        )),
        "{all}"
    );
    assert!(all.contains("left StatefulSet data/db: container db"), "{all}");
    assert!(all.contains(&format!("the original was {db_ref}")), "{all}");
    // Nothing is left to revert.
    let out = failover(kubeconfig, &dst, &["--revert"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A write that meets a newer version of the object (409 Conflict) reads it again and decides again:
/// the concurrent change and the switch both survive.
#[tokio::test]
async fn failover_reads_again_when_the_object_changed_before_its_write() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci("amd64", &[1500], 1510).unwrap();
    for reg in [&src, &dst] {
        web.push(reg, "shop/web", "1.0").await.unwrap();
    }
    let web_ref = format!("{}/shop/web:1.0@{}", src.host(), web.digest);
    let server = ApiServer::new();
    server
        .apply(workload("Deployment", "apps/v1", "shop", "web", &[("web", &web_ref)]))
        .unwrap();
    server
        .apply(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mirror-pull", "namespace": "shop"},
            "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}),
        )
        .unwrap();
    let api = server.serve().unwrap();
    // The first write waits long enough for the test to change the object under it.
    server.inject(
        ApiFault::slow(Duration::from_secs(2))
            .on("deployments", "update")
            .times(1),
    );
    let child = failover_command(
        api.kubeconfig_path(),
        &dst,
        &["--to-mirror", "--pull-secret", "mirror-pull"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.count_requests("PUT", "/deployments/web") == 0 {
        assert!(Instant::now() < deadline, "no write within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut changed = server.get("Deployment", "shop", "web").unwrap();
    changed["metadata"]["labels"] = json!({"changed-by": "someone"});
    changed["spec"]["replicas"] = json!(3);
    server.apply(changed).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let now = server.get("Deployment", "shop", "web").unwrap();
    assert_eq!(
        images(&now),
        [format!("web={}/shop/web:1.0@{}", dst.host(), web.digest)],
        "{all}"
    );
    assert_eq!(
        (&now["metadata"]["labels"]["changed-by"], &now["spec"]["replicas"]),
        (&json!("someone"), &json!(3))
    );
    assert_eq!(
        now["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "mirror-pull"}])
    );
    assert!(!all.contains("warning: Secret"), "the Secret exists: {all}");
    assert_eq!(server.count_requests("PUT", "/deployments/web"), 2, "{all}");
    assert_eq!(
        server.count_requests("GET", "/namespaces/shop/deployments/web"),
        1,
        "read again once: {all}"
    );
}

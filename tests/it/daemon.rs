//! `copycat run` as a black box: the built binary, configured by environment only, against the
//! stand-in API server (over TCP, through a kubeconfig) and real registries.

use std::time::Duration;

use serde_json::json;
use testkit::apiserver::ApiServer;
use testkit::{Image, Registry, RegistryMode, manifest_digest};

use crate::drills::{assert_identical, wait_for};
use crate::server::{Daemon, deployment};
use crate::support::{copycat_requests, eventually, free_address, http, start};

/// How long a black-box test waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn mirrors_what_the_cluster_runs_and_follows_changes() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let v1 = Image::oci_index(&[5000], true, 400).unwrap();
    let v2 = Image::oci("amd64", &[6000], 401).unwrap();
    let sidecar = Image::docker("amd64", &[4000], 402).unwrap();
    v1.push(&src, "shop/web", "1.0").await.unwrap();
    v2.push(&src, "shop/web", "2.0").await.unwrap();
    sidecar.push(&src, "tools/envoy", "1").await.unwrap();

    let server = ApiServer::new();
    let deployment = |tag: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                   "containers": [{"name": "web", "image": format!("{}/shop/web:{tag}", src.host())}],
                   "initContainers": [{"name": "proxy", "image": format!("{}/tools/envoy:1", src.host())}]}}}})
    };
    server.apply(deployment("1.0")).unwrap();
    let running = server.serve().expect("serve the stand-in API server");

    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            ("TARGET_REPO_PREFIX", "backup/$namespace"),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
        ],
    );
    wait_mirrored(&dst, "1.0", &[("backup/default/shop/web", &v1)]).await;
    wait_mirrored(&dst, "1", &[("backup/default/tools/envoy", &sidecar)]).await;

    server.apply(deployment("2.0")).unwrap();
    wait_mirrored(&dst, "2.0", &[("backup/default/shop/web", &v2)]).await;

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let manifest_puts = dst
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/1.0"))
        .count();
    assert_eq!(manifest_puts, 1, "each target is written once");
}

#[tokio::test]
async fn dry_pull_plans_without_any_registry_request() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                      "spec": {"containers": [{"name": "c", "image": format!("{}/lib/app:1", src.host())}]}, "status": {"phase": "Running"}}))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[("DRY_PULL", "true")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("would mirror") && log.contains("lib/app:1"), "{log}");
    assert!(
        src.requests().is_empty() && dst.requests().is_empty(),
        "dryPull sends no registry request"
    );
}

#[tokio::test]
async fn filters_apply_and_namespaces_appearing_later_are_picked_up() {
    let (src, dst, other) = (
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
    );
    for (registry, repo) in [
        (&src, "lib/kept"),
        (&src, "lib/skipped-ns"),
        (&src, "lib/owner-skipped"),
        (&other, "lib/excluded"),
        (&src, "lib/late"),
    ] {
        Image::oci("amd64", &[1000], repo.len() as u64)
            .unwrap()
            .push(registry, repo, "1")
            .await
            .unwrap();
    }
    Image::oci("amd64", &[1000], 9)
        .unwrap()
        .push(&dst, "already/here", "1")
        .await
        .unwrap();
    let server = ApiServer::new();
    let deployment = |ns: &str, name: &str, image: String| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
               "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {
                   "containers": [{"name": "c", "image": image}]}}}})
    };
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
        .unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "secret"}}))
        .unwrap();
    server
        .apply(deployment("team-a", "kept", format!("{}/lib/kept:1", src.host())))
        .unwrap();
    server
        .apply(deployment(
            "team-a",
            "excluded",
            format!("{}/lib/excluded:1", other.host()),
        ))
        .unwrap();
    server
        .apply(deployment("team-a", "own", format!("{}/already/here:1", dst.host())))
        .unwrap();
    server
        .apply(deployment(
            "secret",
            "hidden",
            format!("{}/lib/skipped-ns:1", src.host()),
        ))
        .unwrap();
    server
        .apply(deployment(
            "default",
            "outside",
            format!("{}/lib/skipped-ns:1", src.host()),
        ))
        .unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "legacy-1-x", "namespace": "team-a",
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "legacy-1", "uid": "u1", "controller": true}]},
                      "spec": {"containers": [{"name": "c", "image": format!("{}/lib/owner-skipped:1", src.host())}]}, "status": {"phase": "Running"}}))
        .unwrap();
    let running = server.serve().unwrap();
    let (dst_before, other_before) = (dst.requests().len(), other.requests().len());
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            ("INCLUDE_NAMESPACES", "team-*,secret,ghost"),
            ("SKIP_NAMESPACES", "secret"),
            ("SKIP_DEPLOYMENTS", "team-a/legacy"),
            ("EXCLUDE_REGISTRIES", &other.host()),
        ],
    );
    wait_for(&dst, "lib/kept", "1").await;

    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-late"}}))
        .unwrap();
    server
        .apply(deployment("team-late", "late", format!("{}/lib/late:1", src.host())))
        .unwrap();
    wait_for(&dst, "lib/late", "1").await;

    // /status shows what is left out and why, with who uses it (sorted by source).
    let (code, excluded) = daemon.json("GET", "/status?state=excluded", None).await;
    assert_eq!(code, 200);
    let mut expected = json!([
            {"target": null, "source": format!("{}/already/here:1", dst.host()), "state": "excluded",
             "excludedBy": dst.host(), "digest": null, "lastError": null, "nextRetry": null,
             "users": ["Deployment team-a/own"], "started": null, "finished": null},
            {"target": null, "source": format!("{}/lib/excluded:1", other.host()), "state": "excluded",
             "excludedBy": other.host(), "digest": null, "lastError": null, "nextRetry": null,
             "users": ["Deployment team-a/excluded"], "started": null, "finished": null},
    ]);
    expected
        .as_array_mut()
        .unwrap()
        .sort_by_key(|s| s["source"].as_str().unwrap().to_owned());
    assert_eq!(excluded, expected);

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    for repo in ["lib/skipped-ns", "lib/owner-skipped", "lib/excluded"] {
        assert_eq!(
            manifest_digest(&dst, repo, "1").await.unwrap(),
            None,
            "{repo} must not be mirrored"
        );
    }
    let touched_own: Vec<_> = dst
        .requests()
        .into_iter()
        .skip(dst_before)
        .filter(|r| r.path.contains("already/here"))
        .collect();
    assert!(
        touched_own.is_empty(),
        "images already on the target are excluded (no mirror loop): {touched_own:?}"
    );
    assert!(
        log.contains("ghost") && log.contains("does not exist"),
        "missing namespace warned about: {log}"
    );
    assert_eq!(
        other.requests().len(),
        other_before,
        "the excluded registry is never contacted"
    );
}

#[tokio::test]
async fn a_failed_image_puts_one_warning_event_on_its_workload_per_cooldown() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    let missing = format!("{}/shop/missing:1", src.host());
    let web = server
        .apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                   "containers": [{"name": "web", "image": missing}]}}}}))
        .unwrap();
    let running = server.serve().unwrap();
    let metrics = free_address();
    let daemon = Daemon::start_at(
        running.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
        metrics.clone(),
        free_address(),
    );

    eventually("the failure event", WAIT, async || {
        !server.list("Event", "shop").is_empty()
    })
    .await;
    let events = server.list("Event", "shop");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!("MirrorFailed"))
    );
    let regarding = &event["involvedObject"];
    assert_eq!(
        (
            &regarding["apiVersion"],
            &regarding["kind"],
            &regarding["namespace"],
            &regarding["name"]
        ),
        (&json!("apps/v1"), &json!("Deployment"), &json!("shop"), &json!("web"))
    );
    assert_eq!(
        regarding["uid"], web["metadata"]["uid"],
        "kubectl describe selects Events by uid"
    );
    let message = event["message"].as_str().unwrap();
    let target = format!("{}/shop/missing:1", dst.host());
    assert!(
        message.contains(&missing) && message.contains(&target) && message.contains("retrying in 1h"),
        "{message}"
    );
    assert_eq!(event["source"]["component"], "k8s-copycat");

    // A second failure within the cooldown (ended early by hand) creates no second Event.
    let (code, body) = http(&metrics, "POST", "/reset-cooldown", None).await;
    assert_eq!(code, 200, "{body}");
    let pull_errors = format!(r#"k8s_copycat_registry_pull_error_total{{registry="{}"}} "#, src.host());
    eventually("the second failure", WAIT, async || {
        let (_, text) = http(&metrics, "GET", "/metrics", None).await;
        text.lines().any(|l| l.strip_prefix(&pull_errors) == Some("2"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(server.list("Event", "shop").len(), 1, "{log}");
    assert_eq!(server.count_requests("POST", "/events"), 1, "{log}");
    assert_eq!(log.matches("mirror failed").count(), 2, "{log}");
}

#[tokio::test]
async fn private_sources_are_pulled_with_the_pods_and_service_accounts_pull_secrets() {
    use base64::Engine as _;
    const PASSWORD: &str = "pull-secret-pw-9";
    let (src, dst) = (
        start(RegistryMode::basic("puller", PASSWORD)),
        start(RegistryMode::Plain),
    );
    let (a, b) = (
        Image::oci("amd64", &[3000], 410).unwrap(),
        Image::docker("amd64", &[3100], 411).unwrap(),
    );
    a.push(&src, "private/a", "1").await.unwrap();
    b.push(&src, "private/b", "1").await.unwrap();

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let docker_config = |password: &str| {
        let auth = b64(&format!("puller:{password}"));
        b64(&json!({"auths": {src.host(): {"auth": auth}}}).to_string())
    };
    let secret = |name: &str, password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team"},
               "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": docker_config(password)}})
    };
    let deployment = |name: &str, image: &str, extra: serde_json::Value| {
        let mut spec = json!({"containers": [{"name": "c", "image": format!("{}/{image}", src.host())}]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "team"},
               "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
    };
    let server = ApiServer::new();
    server.apply(secret("stale", "an-old-password")).unwrap();
    server.apply(secret("regcred", PASSWORD)).unwrap();
    server.apply(secret("sa-cred", PASSWORD)).unwrap();
    server
        .apply(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "team"},
                      "imagePullSecrets": [{"name": "sa-cred"}]}),
        )
        .unwrap();
    // The first secret holds a wrong password: the next one is tried.
    server
        .apply(deployment(
            "a",
            "private/a:1",
            json!({"imagePullSecrets": [{"name": "stale"}, {"name": "regcred"}]}),
        ))
        .unwrap();
    server
        .apply(deployment("b", "private/b:1", json!({"serviceAccountName": "builder"})))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            ("USE_IMAGE_PULL_SECRETS", "true"),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
            ("LOG_LEVEL", "debug"),
        ],
    );
    wait_mirrored(&dst, "1", &[("private/a", &a), ("private/b", &b)]).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("pull secret refused; trying the next credentials"),
        "{log}"
    );
    for secret in [PASSWORD, "an-old-password"] {
        assert!(!log.contains(secret), "a password was logged: {log}");
    }
}

#[tokio::test]
async fn arch_in_the_prefix_comes_from_the_image_when_no_node_is_known() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let multi = Image::oci_index(&[2000], true, 420).unwrap();
    let arm = Image::oci("arm64", &[2100], 421).unwrap();
    multi.push(&src, "shop/web", "1").await.unwrap();
    arm.push(&src, "tools/probe", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                   "containers": [{"name": "web", "image": format!("{}/shop/web:1", src.host())},
                                  {"name": "probe", "image": format!("{}/tools/probe:1", src.host())}]}}}}))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            ("TARGET_REPO_PREFIX", "mirror/$arch"),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
        ],
    );
    // An index is named by its platforms' architectures (attestations left out), a single image by its own.
    wait_mirrored(
        &dst,
        "1",
        &[
            ("mirror/amd64-arm64/shop/web", &multi),
            ("mirror/arm64/tools/probe", &arm),
        ],
    )
    .await;
    let web = format!("{}/mirror/amd64-arm64/shop/web:1", dst.host());
    let status = daemon.status_of(&web).await;
    assert_eq!(
        status.as_ref().map(|s| s["state"].clone()),
        Some(json!("mirrored")),
        "{status:?}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!("target={web}")),
        "the outcome line names the real target: {log}"
    );
    assert!(
        !dst.requests().iter().any(|r| r.path.starts_with("/v2/mirror/shop/")),
        "nothing is written without the architecture segment"
    );
    // The copy is pinned to the digest whose architecture named the target: the tag is resolved once.
    let heads = copycat_requests(&src)
        .iter()
        .filter(|r| r.method == "HEAD" && r.path == "/v2/shop/web/manifests/1")
        .count();
    assert_eq!(heads, 1);
}

/// Waits until each repository holds `tag` at `dst`, then checks it is the image, nothing partial.
async fn wait_mirrored(dst: &Registry, tag: &str, expected: &[(&str, &Image)]) {
    for (repo, image) in expected {
        wait_for(dst, repo, tag).await;
        assert_identical(dst, repo, tag, image).await;
    }
}

#[tokio::test]
async fn an_image_no_workload_uses_any_more_is_no_longer_retried() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let server = ApiServer::new();
    server
        .apply(deployment("broken", &[format!("{}/shop/missing:1", src.host())]))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        &[
            // Retries 1 s after the first failure, then 2 s, 4 s, …
            ("FAILURE_COOLDOWN_MINUTES", "0"),
        ],
    );
    let tries = || {
        copycat_requests(&src)
            .iter()
            .filter(|r| r.path.starts_with("/v2/shop/missing/manifests/"))
            .count()
    };
    let target = format!("{}/shop/missing:1", dst.host());
    eventually("a retry of the missing image", WAIT, async || tries() >= 2).await;
    assert!(daemon.status_of(&target).await.is_some());

    server.delete("deployments", "default", "broken");
    eventually("the target to leave /status", WAIT, async || {
        daemon.status_of(&target).await.is_none()
    })
    .await;
    let after = tries();
    // Past the next retry the backoff had planned.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(tries(), after, "a target no workload uses was tried again");
    assert!(daemon.status_of(&target).await.is_none());
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("forgotten=1"), "{log}");
}

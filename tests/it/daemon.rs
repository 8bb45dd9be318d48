//! `copycat run` as a black box: the built binary, configured by environment only, against the
//! stand-in API server (over TCP, through a kubeconfig) and real registries.

use std::time::Duration;

use serde_json::json;
use testkit::apiserver::ApiServer;
use testkit::{Image, Registry, RegistryMode, StaticRegistry, manifest_digest};

use crate::drills::{assert_identical, wait_for};
use crate::server::{Daemon, deployment, sample};
use crate::support::{assert_no_secrets, copycat_requests, credential_secrets, eventually, http, start};

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
    eventually("the dry pull's \"would mirror\"", WAIT, async || {
        daemon
            .run
            .log()
            .lines()
            .any(|l| l.contains("would mirror") && l.contains("lib/app:1"))
    })
    .await;
    // No periodic verification either (it would read the registries): no backup state anywhere.
    let (code, body) = daemon.get("/status/summary").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("periodic verification is disabled"), "{body}");
    let (code, body) = daemon.get("/status?backup=verified").await;
    assert_eq!(code, 400, "{body}");
    let (_, status) = daemon.get("/status").await;
    assert!(!status.contains("backup") && status.contains("lib/app:1"), "{status}");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(!metrics.contains("k8s_copycat_backup_"), "{metrics}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    // The queue would have asked the registries before saying "would mirror", and the daemon has
    // stopped: `requests()` sees every request it made.
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
             "users": ["Deployment team-a/own"], "started": null, "finished": null,
             "backup": {"state": "excluded", "detail": format!("excluded by {}", dst.host()), "checked": null, "lastVerified": null}},
            {"target": null, "source": format!("{}/lib/excluded:1", other.host()), "state": "excluded",
             "excludedBy": other.host(), "digest": null, "lastError": null, "nextRetry": null,
             "users": ["Deployment team-a/excluded"], "started": null, "finished": null,
             "backup": {"state": "excluded", "detail": format!("excluded by {}", other.host()), "checked": null, "lastVerified": null}},
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
    let daemon = Daemon::start(
        running.kubeconfig_path(),
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &dst.host()),
            // Says when a failure finds its Event already made.
            ("LOG_LEVEL", "debug"),
        ],
    );
    let metrics = daemon.metrics().await;

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
    eventually("the second failure to find its Event made", WAIT, async || {
        daemon
            .run
            .log()
            .contains("failure event already emitted in this window")
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(server.list("Event", "shop").len(), 1, "{log}");
    assert_eq!(server.count_requests("POST", "/events"), 1, "{log}");
    assert_eq!(log.matches("mirror failed").count(), 2, "{log}");
}

/// A `kubernetes.io/dockerconfigjson` Secret `team/NAME` holding `puller:PASSWORD` for `registry`.
fn pull_secret(registry: &Registry, name: &str, password: &str) -> serde_json::Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let auth = b64(&format!("puller:{password}"));
    let config = b64(&json!({"auths": {registry.host(): {"auth": auth}}}).to_string());
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team"},
           "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": config}})
}

/// The Deployment `team/NAME` running `registry/IMAGE`, its Pod spec extended by `extra`.
fn private_deployment(registry: &Registry, name: &str, image: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "c", "image": format!("{}/{image}", registry.host())}]});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "team"},
           "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

#[tokio::test]
async fn private_sources_are_pulled_with_the_pods_and_service_accounts_pull_secrets() {
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

    let secret = |name: &str, password: &str| pull_secret(&src, name, password);
    let deployment = |name: &str, image: &str, extra: serde_json::Value| private_deployment(&src, name, image, extra);
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
    // Neither password, nor a Secret's `auth` (base64 user:password, the Basic header's value).
    let secrets = [
        credential_secrets("puller", PASSWORD),
        credential_secrets("puller", "an-old-password"),
    ]
    .concat();
    assert_no_secrets(&[("the debug log", &log)], &secrets);
}

#[tokio::test]
async fn a_corrected_pull_secret_is_used_by_the_next_retry() {
    const PASSWORD: &str = "pull-secret-pw-10";
    let (src, dst) = (
        start(RegistryMode::basic("puller", PASSWORD)),
        start(RegistryMode::Plain),
    );
    let image = Image::oci("amd64", &[3200], 412).unwrap();
    image.push(&src, "private/c", "1").await.unwrap();
    let server = ApiServer::new();
    server.apply(pull_secret(&src, "regcred", "a-typo-in-it")).unwrap();
    server
        .apply(private_deployment(
            &src,
            "c",
            "private/c:1",
            json!({"imagePullSecrets": [{"name": "regcred"}]}),
        ))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        &dst,
        // Failed targets are retried 1 s, 2 s, 4 s, … later.
        &[("USE_IMAGE_PULL_SECRETS", "true"), ("FAILURE_COOLDOWN_MINUTES", "0")],
    );
    let target = format!("{}/private/c:1", dst.host());
    eventually("the wrong pull secret refused", WAIT, async || {
        daemon.status_of(&target).await.is_some_and(|s| {
            s["state"] == "failed"
                && s["lastError"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("the source refused pull secret team/regcred: "))
        })
    })
    .await;
    // Let the retry backoff grow past anything the test waits for below.
    eventually("a few retries", WAIT, async || {
        daemon.status_of(&target).await.is_some_and(|s| {
            s["nextRetry"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .is_some_and(|t| t > std::time::SystemTime::now() + Duration::from_secs(7))
        })
    })
    .await;
    server.apply(pull_secret(&src, "regcred", PASSWORD)).unwrap();
    // The fixed Secret is used by the next attempt, without waiting for the backoff or /force-reconcile.
    tokio::time::timeout(
        Duration::from_secs(6),
        wait_mirrored(&dst, "1", &[("private/c", &image)]),
    )
    .await
    .expect("mirrored with the corrected Secret before the next backoff would have ended");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("no credentials are configured"), "{log}");
    for secret in [PASSWORD, "a-typo-in-it"] {
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
            // The backup check resolves the tag again (has it moved?); this test counts the copy's.
            ("VERIFY_INTERVAL", "0"),
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

#[tokio::test]
async fn hostile_index_shapes_fail_their_image_only_and_the_daemon_stays_up() {
    let hostile = StaticRegistry::start().unwrap();
    hostile.put_index_chain("evil/chain", "1", 500);
    hostile.put_wide_index("evil/wide", "1", 20_000);
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let good = Image::oci("amd64", &[2500], 430).unwrap();
    good.push(&src, "shop/good", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment(
            "mixed",
            &[
                format!("{}/evil/chain:1", hostile.host()),
                format!("{}/evil/wide:1", hostile.host()),
                format!("{}/shop/good:1", src.host()),
            ],
        ))
        .unwrap();
    let running = server.serve().unwrap();
    let mut daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[("FAILURE_COOLDOWN_MINUTES", "0")]);
    wait_mirrored(&dst, "1", &[("shop/good", &good)]).await;
    for (repo, limit) in [
        ("evil/chain", "indexes nested deeper than 4 levels"),
        (
            "evil/wide",
            "index lists 20000 manifests, more than the limit of 1000 per index",
        ),
    ] {
        let target = format!("{}/{repo}:1", dst.host());
        eventually(&format!("{repo} refused naming the limit"), WAIT, async || {
            daemon
                .status_of(&target)
                .await
                .is_some_and(|s| s["state"] == "failed" && s["lastError"].as_str().is_some_and(|e| e.contains(limit)))
        })
        .await;
        assert_eq!(manifest_digest(&dst, repo, "1").await.unwrap(), None, "{repo}: no tag");
    }
    assert!(daemon.run.try_wait().is_none(), "the daemon is still running");
    assert_eq!(daemon.probe("/healthz").await.0, 200);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn two_sources_naming_one_target_keep_the_first_and_report_the_other() {
    let (a, b, dst) = (
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
        start(RegistryMode::Plain),
    );
    let (first, second) = (
        Image::oci("amd64", &[2700], 440).unwrap(),
        Image::oci("amd64", &[2800], 441).unwrap(),
    );
    first.push(&a, "team/app", "1.0").await.unwrap();
    second.push(&b, "team/app", "1.0").await.unwrap();
    let server = ApiServer::new();
    // Listed first but created later: the use of the other image is older and keeps the target.
    let mut newer = deployment("a-newer", &[format!("{}/team/app:1.0", b.host())]);
    newer["metadata"]["creationTimestamp"] = json!("2025-06-01T00:00:00Z");
    let mut older = deployment("b-older", &[format!("{}/team/app:1.0", a.host())]);
    older["metadata"]["creationTimestamp"] = json!("2023-01-01T00:00:00Z");
    server.apply(newer).unwrap();
    server.apply(older).unwrap();
    let running = server.serve().unwrap();
    // No $registry in the (empty) prefix: both name <dst>/team/app:1.0.
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[("FAILURE_COOLDOWN_MINUTES", "0")]);
    let target = format!("{}/team/app:1.0", dst.host());
    let (kept, other) = (
        format!("{}/team/app:1.0", a.host()),
        format!("{}/team/app:1.0", b.host()),
    );
    eventually("the conflict in /status", WAIT, async || {
        let (code, body) = daemon.get("/status?state=conflict").await;
        code == 200 && body.contains(&other)
    })
    .await;
    wait_mirrored(&dst, "1.0", &[("team/app", &first)]).await;
    // The tag is written a moment before the queue records the copy as done.
    eventually("the kept source mirrored in /status", WAIT, async || {
        let (code, body) = daemon.get("/status?state=mirrored").await;
        code == 200 && body.contains(&target)
    })
    .await;
    let (_, body) = daemon.get("/status").await;
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    let of_target: Vec<&serde_json::Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["target"] == json!(target))
        .collect();
    assert_eq!(of_target.len(), 2, "{body}");
    let mirrored = of_target
        .iter()
        .find(|s| s["state"] == "mirrored")
        .expect("the kept source");
    assert_eq!(mirrored["source"], json!(kept), "{body}");
    assert_eq!(mirrored["users"], json!(["Deployment default/b-older"]), "{body}");
    assert_eq!(mirrored["digest"], json!(first.digest), "{body}");
    let conflict = of_target
        .iter()
        .find(|s| s["state"] == "conflict")
        .expect("the other source");
    assert_eq!(
        (&conflict["source"], &conflict["keptSource"], &conflict["users"]),
        (&json!(other), &json!(kept), &json!(["Deployment default/a-newer"])),
        "{body}"
    );
    // Not mirrored, so not backed up: `failed`, naming the source that keeps the target; the
    // kept one is checked like any other.
    assert_eq!(
        (&conflict["backup"]["state"], &conflict["backup"]["detail"]),
        (
            &json!("failed"),
            &json!(format!("not mirrored: {kept} keeps this target"))
        ),
        "{body}"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    assert_eq!(
        sample(&metrics, r#"k8s_copycat_tasks{state="conflict"}"#),
        Some(1.0),
        "{metrics}"
    );
    eventually("the Warning Event on the left-out workload", WAIT, async || {
        !server.list("Event", "default").is_empty()
    })
    .await;
    // Several plans later, still one Event, on the workload whose image is left out.
    let (code, _) = daemon.json("POST", "/force-reconcile?wait=10s", None).await;
    assert_eq!(code, 200);
    // A conflict goes to the Events only when a plan first finds it, together with its WARN line:
    // the single WARN line checked below proves this plan sent nothing more to make an Event of.
    let events = server.list("Event", "default");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "TargetConflict");
    assert_eq!(events[0]["involvedObject"]["name"], "a-newer");
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&other) && message.contains(&kept) && message.contains("$registry"),
        "{message}"
    );
    assert_eq!(
        manifest_digest(&dst, "team/app", "1.0").await.unwrap(),
        Some(first.digest.clone()),
        "the target keeps the first source's content"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("the repository prefix has no $registry and images come from several registries"),
        "{log}"
    );
    assert_eq!(log.matches("two sources name one target").count(), 1, "{log}");
}

#[tokio::test]
async fn signatures_travel_and_a_re_sign_upstream_reaches_the_mirror_within_the_interval() {
    use testkit::artifacts::{self, Subject};
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[3000], 450).unwrap();
    image.push(&src, "shop/signed", "1.0").await.unwrap();
    let subject = Subject::of(&image);
    let tag = subject.cosign_tag("sig");
    let first = artifacts::cosign_signature(&subject, "shop/signed", 1, 1);
    first.push(&src, "shop/signed", &tag).await.unwrap();

    let server = ApiServer::new();
    server
        .apply(deployment("signed", &[format!("{}/shop/signed:1.0", src.host())]))
        .unwrap();
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[("REFERRERS_INTERVAL", "3s")]);
    let signature_at_target = async || manifest_digest(&dst, "shop/signed", &tag).await.unwrap();
    eventually("the signature at the target", WAIT, async || {
        signature_at_target().await == Some(first.digest.clone())
    })
    .await;
    let target = format!("{}/shop/signed:1.0", dst.host());
    eventually("/status to count the signature", WAIT, async || {
        daemon.status_of(&target).await.is_some_and(|s| s["referrers"] == 1)
    })
    .await;

    // cosign signs again: a second signature in the manifest under the same tag.
    let resigned = artifacts::cosign_signature(&subject, "shop/signed", 2, 1);
    resigned.push(&src, "shop/signed", &tag).await.unwrap();
    eventually("the re-sign at the target", Duration::from_secs(15), async || {
        signature_at_target().await == Some(resigned.digest.clone())
    })
    .await;
    let status = daemon.status_of(&target).await.unwrap();
    assert_eq!(
        status["users"],
        json!(["Deployment default/signed"]),
        "the sweep keeps the users"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    assert_eq!(
        sample(&metrics, r#"k8s_copycat_referrers_copied_total{kind="cosign-tag"}"#),
        Some(2.0),
        "{metrics}"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

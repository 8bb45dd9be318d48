//! The daemon's HTTP endpoints as a black box: `copycat run` (the built binary) against the
//! stand-in API server and real registries, asked over plain HTTP on free local ports.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{Image, Registry, RegistryMode, manifest_digest};

use crate::support::{ANY_PORT, CopycatRun, eventually, http, http_authorized, start};

const PASSWORD: &str = "pa55-never-shown-7Qx";

/// How long a black-box test waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(30);

/// `copycat run` (the built binary) on free local ports, without leader election.
pub(crate) struct Daemon {
    pub(crate) run: CopycatRun,
}

impl Daemon {
    pub(crate) fn start(kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_at(kubeconfig, env, ANY_PORT, ANY_PORT)
    }

    /// `copycat run` with the listeners at the given addresses (read back from its log once bound).
    pub(crate) fn start_at(kubeconfig: &std::path::Path, env: &[(&str, &str)], metrics: &str, health: &str) -> Daemon {
        let args = ["--metrics-bind-address", metrics, "--health-probe-bind-address", health];
        let mut all = vec![("LEADER_ELECT", "false")];
        all.extend_from_slice(env);
        let run = CopycatRun::start(kubeconfig, &args, &all);
        Daemon { run }
    }

    /// The metrics listener's address, once bound.
    pub(crate) async fn metrics(&self) -> String {
        self.run.bound_address("metrics").await
    }

    /// The health probe listener's address, once bound.
    pub(crate) async fn health(&self) -> String {
        self.run.bound_address("health probe").await
    }

    /// [`Daemon::start`] mirroring to the docker-registry `dst` (`TARGET_KIND=docker`), with `env`.
    pub(crate) fn mirroring_to(kubeconfig: &std::path::Path, dst: &Registry, env: &[(&str, &str)]) -> Daemon {
        let host = dst.host();
        let mut all = vec![("TARGET_KIND", "docker"), ("TARGET_REGISTRY", host.as_str())];
        all.extend_from_slice(env);
        Daemon::start(kubeconfig, &all)
    }

    /// Sends SIGTERM and returns the exit code and everything it logged.
    pub(crate) fn stop(self) -> (Option<i32>, String) {
        self.run.stop()
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        http(&self.metrics().await, "GET", path, None).await
    }

    pub(crate) async fn json(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let (code, body) = http(&self.metrics().await, method, path, token).await;
        (
            code,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}")),
        )
    }

    pub(crate) async fn probe(&self, path: &str) -> (u16, String) {
        http(&self.health().await, "GET", path, None).await
    }

    /// The `/status` entry of `target`, if any.
    pub(crate) async fn status_of(&self, target: &str) -> Option<Value> {
        let (code, body) = self.get("/status").await;
        if code != 200 {
            return None; // not listening yet
        }
        let all: Value = serde_json::from_str(&body).unwrap();
        all.as_array().unwrap().iter().find(|s| s["target"] == target).cloned()
    }
}

/// The Deployment `default/NAME` with one container per image.
pub(crate) fn deployment(name: &str, images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
               "spec": {"containers": containers}}}})
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn probes_metrics_status_and_cooldown_reset_follow_the_mirror() {
    let src = start(RegistryMode::Plain);
    let dst = start(RegistryMode::Basic {
        user: "copycat".into(),
        pass: PASSWORD.into(),
    });
    Image::oci("amd64", &[3000], 700)
        .unwrap()
        .push(&src, "shop/app", "1")
        .await
        .unwrap();
    let late = Image::oci("amd64", &[3100], 701).unwrap();
    // Already at the target: verified present, not copied.
    let kept = Image::oci("amd64", &[3200], 702).unwrap();
    kept.push(&src, "shop/kept", "1").await.unwrap();
    kept.push(&dst, "shop/kept", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment(
            "app",
            &[
                format!("{}/shop/app:1", src.host()),
                format!("{}/shop/late:1", src.host()),
                format!("{}/shop/kept:1", src.host()),
            ],
        ))
        .unwrap();
    let mut api = server.serve().unwrap();
    api.stop();

    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[("TARGET_USERNAME", "copycat"), ("TARGET_PASSWORD", PASSWORD)],
    );
    eventually("/healthz", WAIT, async || daemon.probe("/healthz").await.0 == 200).await;
    let (code, body) = daemon.probe("/readyz").await;
    assert_eq!(code, 503, "not ready while the API server is unreachable: {body}");
    assert!(body.contains("initial list"), "{body}");
    let (code, answer) = daemon.json("POST", "/force-reconcile", None).await;
    assert_eq!((code, &answer["triggered"]), (503, &json!(false)), "{answer}");

    api.start().unwrap();
    eventually("/readyz 200", WAIT, async || daemon.probe("/readyz").await.0 == 200).await;

    let (app, late_target) = (
        format!("{}/shop/app:1", dst.host()),
        format!("{}/shop/late:1", dst.host()),
    );
    eventually("the present image mirrored", WAIT, async || {
        daemon.status_of(&app).await.is_some_and(|s| s["state"] == "mirrored")
    })
    .await;
    eventually("the image already at the target verified", WAIT, async || {
        daemon
            .status_of(&format!("{}/shop/kept:1", dst.host()))
            .await
            .is_some_and(|s| s["state"] == "mirrored")
    })
    .await;
    eventually("the missing image in cooldown", WAIT, async || {
        daemon
            .status_of(&late_target)
            .await
            .is_some_and(|s| s["state"] == "cooldown")
    })
    .await;
    let status = daemon.status_of(&app).await.unwrap();
    assert_eq!(status["source"], format!("{}/shop/app:1", src.host()));
    assert!(status["digest"].as_str().unwrap().starts_with("sha256:"), "{status}");
    assert_eq!(status["users"], json!(["Deployment default/app"]), "{status}");
    let late_status = daemon.status_of(&late_target).await.unwrap();
    assert!(late_status["nextRetry"].is_string(), "{late_status}");
    assert!(late_status["lastError"].is_string(), "{late_status}");

    let (code, all) = daemon.get("/status").await;
    assert_eq!(code, 200);
    assert!(!all.contains(PASSWORD), "no secret in /status: {all}");
    let (_, failed) = daemon.json("GET", "/status?state=cooldown", None).await;
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["target"], late_target.as_str());
    let (_, failed) = daemon.json("GET", "/status?state=failed", None).await;
    assert_eq!(failed, json!([]));
    let (code, _) = daemon.json("GET", "/status?state=bogus", None).await;
    assert_eq!(code, 400);

    let (code, text) = daemon.get("/metrics").await;
    assert_eq!(code, 200);
    let (s, d) = (src.host(), dst.host());
    let pull_ok = format!(r#"k8s_copycat_registry_pull_success_total{{registry="{s}"}}"#);
    let push_ok = format!(r#"k8s_copycat_registry_push_success_total{{registry="{d}"}}"#);
    let pull_err = format!(r#"k8s_copycat_registry_pull_error_total{{registry="{s}"}}"#);
    assert_eq!(sample(&text, &pull_ok), Some(2.0), "{text}");
    assert_eq!(sample(&text, &push_ok), Some(1.0), "{text}");
    assert!(sample(&text, &pull_err) >= Some(1.0), "{text}");
    assert!(
        !text.contains("k8s_copycat_registry_push_error_total{"),
        "a missing source is no push error: {text}"
    );
    assert_eq!(
        sample(&text, r#"k8s_copycat_tasks{state="mirrored"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"k8s_copycat_tasks{state="cooldown"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "k8s_copycat_images_tracked"), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, "k8s_copycat_images_verified_present_total"),
        Some(1.0),
        "{text}"
    );
    // One full pass, the first with every watcher listed; no rescan was asked for (the one asked
    // before the list was refused).
    assert_eq!(
        sample(&text, r#"k8s_copycat_plan_passes_total{pass="full"}"#),
        Some(1.0),
        "{text}"
    );
    // Counted as the watchers receive them; every (re)list counts as restarted.
    for series in [
        r#"k8s_copycat_watch_events_total{event="applied",kind="Deployment"}"#,
        r#"k8s_copycat_watch_events_total{event="restarted",kind="Deployment"}"#,
        r#"k8s_copycat_watch_events_total{event="restarted",kind="Pod"}"#,
    ] {
        assert!(sample(&text, series) >= Some(1.0), "{series}: {text}");
    }
    assert!(sample(&text, "k8s_copycat_bytes_copied_total") > Some(3000.0), "{text}");
    assert!(
        sample(&text, "k8s_copycat_last_success_timestamp_seconds") > Some(0.0),
        "{text}"
    );

    // The missing image appears; a reset retries it now instead of in an hour.
    late.push(&src, "shop/late", "1").await.unwrap();
    let (code, answer) = daemon.json("POST", "/reset-cooldown", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        answer,
        json!({"reset": true, "clearedTargets": 1, "message": "failure cooldown reset"})
    );
    eventually("the late image mirrored", WAIT, async || {
        manifest_digest(&dst, "shop/late", "1").await.unwrap().is_some()
    })
    .await;
    eventually("its status mirrored", WAIT, async || {
        daemon
            .status_of(&late_target)
            .await
            .is_some_and(|s| s["state"] == "mirrored")
    })
    .await;
    let (_, answer) = daemon.json("GET", "/reset-cooldown", None).await;
    assert_eq!(
        answer,
        json!({"reset": false, "clearedTargets": 0, "message": "no cooldown entries to reset"})
    );

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(PASSWORD), "no secret in the log");
    assert!(
        log.contains("ADMIN_TOKEN is not set: anyone who can reach this address can call /force-reconcile"),
        "open admin endpoints are warned about at start: {log}"
    );
}

#[tokio::test]
async fn force_reconcile_replans_and_admin_token_guards_the_admin_endpoints() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[2000], 710).unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", &[format!("{}/lib/web:1", src.host())]))
        .unwrap();
    let api = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(
        api.kubeconfig_path(),
        &dst,
        &[("FAILURE_COOLDOWN_MINUTES", "0"), ("ADMIN_TOKEN", "letmein")],
    );
    let target = format!("{}/lib/web:1", dst.host());
    eventually("the missing image failed", WAIT, async || {
        daemon.status_of(&target).await.is_some_and(|s| s["state"] == "failed")
    })
    .await;

    for token in [None, Some("wrong")] {
        for path in ["/force-reconcile", "/reset-cooldown"] {
            let (code, answer) = daemon.json("POST", path, token).await;
            assert_eq!(code, 401, "{path} with {token:?}: {answer}");
        }
    }
    let (code, answer) = daemon.json("POST", "/reset-cooldown", Some("letmein")).await;
    assert_eq!(code, 200);
    assert_eq!(
        answer,
        json!({"reset": false, "clearedTargets": 0, "message": "failure cooldown disabled"})
    );
    // The scheme is case-insensitive, as HTTP says.
    for scheme in ["bearer", "BEARER"] {
        let value = format!("{scheme} letmein");
        let (code, answer) = http_authorized(&daemon.metrics().await, "POST", "/reset-cooldown", Some(&value)).await;
        assert_eq!(code, 200, "{value}: {answer}");
    }
    let (code, _) = http_authorized(
        &daemon.metrics().await,
        "POST",
        "/reset-cooldown",
        Some("Basic bGV0bWVpbg=="),
    )
    .await;
    assert_eq!(code, 401, "another scheme is refused");
    assert_eq!(daemon.get("/metrics").await.0, 200, "metrics need no token");

    // Still missing: the rescan retries it and reports the failure.
    let (code, answer) = daemon.json("POST", "/force-reconcile?wait=20s", Some("letmein")).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["triggered"], true, "{answer}");
    assert_eq!(answer["success"], false, "{answer}");
    assert_eq!(answer["workloadsProcessed"], 1, "{answer}");
    assert_eq!(answer["imagesMirrored"], 0, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("force reconcile failed: 1 of 1"),
        "{answer}"
    );

    // A failed target with the cooldown disabled is retried only when submitted again: the
    // forced rescan does that, so the image is mirrored once it exists. Two concurrent calls.
    image.push(&src, "lib/web", "1").await.unwrap();
    let ask = || daemon.json("POST", "/force-reconcile?wait=20s", Some("letmein"));
    let ((c1, a1), (c2, a2)) = tokio::join!(ask(), ask());
    for (code, answer) in [(c1, a1), (c2, a2)] {
        assert_eq!(code, 200, "{answer}");
        assert_eq!(
            answer,
            json!({"triggered": true, "success": true, "workloadsProcessed": 1, "imagesMirrored": 1,
                   "message": "force reconcile completed", "pending": 0})
        );
    }
    assert!(manifest_digest(&dst, "lib/web", "1").await.unwrap().is_some());
    let (code, answer) = daemon
        .json("GET", "/force-reconcile?wait=nonsense", Some("letmein"))
        .await;
    assert_eq!(code, 400, "{answer}");

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("forced rescan"), "{log}");
    assert!(!log.contains("letmein"), "the admin token is never logged");
    // Five refusals within a minute: the first is logged (who, where, why), the rest are counted
    // into the next line, which comes at most a minute later.
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("admin request refused")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains(r#"reason="no Authorization header""#)
            && refusals[0].contains(r#"path="/force-reconcile""#)
            && refusals[0].contains("peer=127.0.0.1:"),
        "{}",
        refusals[0]
    );
    assert!(!log.contains("ADMIN_TOKEN is not set"), "{log}");
}

#[tokio::test]
async fn an_address_in_use_stops_the_start_naming_it() {
    let dst = start(RegistryMode::Plain);
    let api = ApiServer::new().serve().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut daemon = Daemon::start_at(
        api.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
        ANY_PORT,
        &address,
    );
    let (code, log) = daemon.run.wait_exit(WAIT);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(&address) && log.contains("health probe"), "{log}");
}

//! The daemon's HTTP endpoints as a black box: `copycat run` (the built binary) against the
//! stand-in API server and real registries, asked over plain HTTP on free local ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{Image, RegistryMode, manifest_digest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::start;

const PASSWORD: &str = "pa55-never-shown-7Qx";

struct Daemon {
    child: Child,
    metrics: String,
    health: String,
}

impl Daemon {
    fn start(kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_at(kubeconfig, env, free_address(), free_address())
    }

    fn start_at(kubeconfig: &std::path::Path, env: &[(&str, &str)], metrics: String, health: String) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
        cmd.args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--metrics-bind-address",
                &metrics,
                "--health-probe-bind-address",
                &health,
            ])
            .env_clear();
        cmd.env("CONFIG_PATH", "/nonexistent/config.yaml")
            .env("LOG_FORMAT", "text")
            .env("LEADER_ELECT", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start copycat run");
        Daemon { child, metrics, health }
    }

    /// Sends SIGTERM and returns the exit code and everything it logged.
    fn stop(mut self) -> (Option<i32>, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "copycat did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http(&self.metrics, "GET", path, None).await
    }

    async fn json(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let (code, body) = http(&self.metrics, method, path, token).await;
        (
            code,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}")),
        )
    }

    async fn probe(&self, path: &str) -> (u16, String) {
        http(&self.health, "GET", path, None).await
    }

    /// The `/status` entry of `target`, if any.
    async fn status_of(&self, target: &str) -> Option<Value> {
        let (code, body) = self.get("/status").await;
        if code != 200 {
            return None; // not listening yet
        }
        let all: Value = serde_json::from_str(&body).unwrap();
        all.as_array().unwrap().iter().find(|s| s["target"] == target).cloned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local address no one listens on right now.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// One HTTP/1.1 request; status 0 when nothing listens (yet). Bounded by 60 s.
async fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let exchange = async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return (0, String::new());
        };
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took over 60 s"))
}

async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deployment(name: &str, images: &[String]) -> Value {
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
fn sample(text: &str, series: &str) -> Option<f64> {
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
    let server = ApiServer::new();
    server
        .apply(deployment(
            "app",
            &[
                format!("{}/shop/app:1", src.host()),
                format!("{}/shop/late:1", src.host()),
            ],
        ))
        .unwrap();
    let mut api = server.serve().unwrap();
    api.stop();

    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &dst.host()),
            ("TARGET_USERNAME", "copycat"),
            ("TARGET_PASSWORD", PASSWORD),
        ],
    );
    eventually("/healthz", async || daemon.probe("/healthz").await.0 == 200).await;
    let (code, body) = daemon.probe("/readyz").await;
    assert_eq!(code, 503, "not ready while the API server is unreachable: {body}");
    assert!(body.contains("initial list"), "{body}");
    let (code, answer) = daemon.json("POST", "/force-reconcile", None).await;
    assert_eq!((code, &answer["triggered"]), (503, &json!(false)), "{answer}");

    api.start().unwrap();
    eventually("/readyz 200", async || daemon.probe("/readyz").await.0 == 200).await;

    let (app, late_target) = (
        format!("{}/shop/app:1", dst.host()),
        format!("{}/shop/late:1", dst.host()),
    );
    eventually("the present image mirrored", async || {
        daemon.status_of(&app).await.is_some_and(|s| s["state"] == "mirrored")
    })
    .await;
    eventually("the missing image in cooldown", async || {
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
    assert_eq!(sample(&text, &pull_ok), Some(1.0), "{text}");
    assert_eq!(sample(&text, &push_ok), Some(1.0), "{text}");
    assert!(sample(&text, &pull_err) >= Some(1.0), "{text}");
    assert!(
        !text.contains("k8s_copycat_registry_push_error_total{"),
        "a missing source is no push error: {text}"
    );
    assert_eq!(
        sample(&text, r#"k8s_copycat_tasks{state="mirrored"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"k8s_copycat_tasks{state="cooldown"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "k8s_copycat_images_tracked"), Some(2.0), "{text}");
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
    eventually("the late image mirrored", async || {
        manifest_digest(&dst, "shop/late", "1").await.unwrap().is_some()
    })
    .await;
    eventually("its status mirrored", async || {
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
    let daemon = Daemon::start(
        api.kubeconfig_path(),
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", &dst.host()),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
            ("ADMIN_TOKEN", "letmein"),
        ],
    );
    let target = format!("{}/lib/web:1", dst.host());
    eventually("the missing image failed", async || {
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
        free_address(),
        address.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "copycat kept running with its health address taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Already exited: collect its output without signalling a reaped pid.
    let out = std::mem::replace(&mut daemon.child, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let (code, log) = (out.status.code(), String::from_utf8_lossy(&out.stderr));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(&address) && log.contains("health probe"), "{log}");
}

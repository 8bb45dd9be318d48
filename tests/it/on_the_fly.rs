//! Copy on the fly (`onTheFly`): `copycat run` (the built binary) against the stand-in API server
//! and real docker-registries. A Pod's container status is set in the stand-in as the kubelet sets
//! it; the daemon learns of it through its Pod watch.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{Image, Registry, RegistryMode};

use crate::drills::{assert_identical, wait_for};
use crate::server::Daemon;
use crate::support::{config_file, copycat_requests, eventually, start};

/// How long a test waits for the daemon to start or to do something slow.
const WAIT: Duration = Duration::from_secs(30);

/// The config file of a daemon copying on the fly into `dst`: images under `DST/dockerhub` come from
/// `src`.
fn config(dst: &Registry, src: &Registry) -> tempfile::NamedTempFile {
    config_file(&format!(
        "onTheFly:\n  enabled: true\n  rules:\n    - mirror: {}/dockerhub\n      source: {}\n",
        dst.host(),
        src.host()
    ))
}

/// Pod `shop/NAME` running `image` in container `app`, with that container `waiting` for `reason`
/// (`None`: just scheduled, no container status yet).
fn pod(name: &str, image: &str, reason: Option<&str>) -> Value {
    let statuses = match reason {
        Some(reason) => json!([{"name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": format!("Back-off pulling image \"{image}\"")}}}]),
        None => json!([]),
    };
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "image": image}]},
           "status": {"phase": "Pending", "containerStatuses": statuses}})
}

/// The stand-in with namespace `shop`, serving.
fn cluster() -> (ApiServer, testkit::apiserver::RunningApiServer) {
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    let running = server.serve().expect("serve the stand-in API server");
    (server, running)
}

/// Starts the daemon and waits until its watches have listed the cluster.
async fn daemon(
    running: &testkit::apiserver::RunningApiServer,
    dst: &Registry,
    config: &tempfile::NamedTempFile,
) -> Daemon {
    let daemon = Daemon::mirroring_to(
        running.kubeconfig_path(),
        dst,
        &[("CONFIG_PATH", config.path().to_str().unwrap())],
    );
    let started = Instant::now();
    while !daemon.run.log().contains("initial list complete") {
        assert!(
            started.elapsed() < WAIT,
            "no initial list after {WAIT:?}:\n{}",
            daemon.run.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon
}

/// The value of the series `name` (with its labels) in the daemon's metrics.
pub(crate) async fn metric(daemon: &Daemon, series: &str) -> Option<String> {
    let (_, text) = daemon.get("/metrics").await;
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_owned)
    })
}

/// Waits until one copy on the fly with `result` is counted, then checks `timed` durations are.
async fn wait_counted(daemon: &Daemon, result: &str, timed: usize) {
    let series = format!(r#"k8s_copycat_on_the_fly_copies_total{{result="{result}"}}"#);
    eventually(&format!("the {result} copy to be counted"), WAIT, async || {
        metric(daemon, &series).await.as_deref() == Some("1")
    })
    .await;
    let count = metric(daemon, "k8s_copycat_on_the_fly_seconds_count").await;
    assert_eq!(count, Some(timed.to_string()));
}

#[tokio::test]
async fn a_pod_failing_to_pull_from_the_target_is_copied_from_the_source_within_seconds() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let app = Image::oci_index(&[3000, 5000], true, 1700).unwrap();
    app.push(&src, "library/app", "1.0").await.unwrap();
    let (server, running) = cluster();
    let image = format!("{}/dockerhub/library/app:1.0", dst.host());
    server.apply(pod("web-1", &image, None)).unwrap();
    let config = config(&dst, &src);
    let daemon = daemon(&running, &dst, &config).await;
    // The image lives on the target registry: routine planning leaves it alone.
    assert!(copycat_requests(&src).is_empty(), "nothing copied before a pull fails");

    let failed = Instant::now();
    server.apply(pod("web-1", &image, Some("ImagePullBackOff"))).unwrap();
    wait_for(&dst, "dockerhub/library/app", "1.0").await;
    let took = failed.elapsed();
    println!("copied on the fly {took:?} after the status change");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_identical(&dst, "dockerhub/library/app", "1.0", &app).await;

    // Outcome and time counted once the queue has reported it; /status names the Pod.
    wait_counted(&daemon, "copied", 1).await;
    let status = daemon.status_of(&image).await.expect("the target in /status");
    assert_eq!(status["state"], "mirrored", "{status}");
    assert_eq!(status["source"], format!("{}/library/app:1.0", src.host()), "{status}");
    assert_eq!(status["users"], json!(["Pod shop/web-1"]), "{status}");

    // The kubelet's next back-off (ErrImagePull again) finds the copy known: nothing more is copied.
    server.apply(pod("web-1", &image, Some("ErrImagePull"))).unwrap();
    // A pull that fails although the target holds the image (a node without credentials, say):
    // HEADs only, counted as present.
    let tool = Image::oci("amd64", &[1000], 1701).unwrap();
    tool.push(&src, "library/tool", "2").await.unwrap();
    tool.push(&dst, "dockerhub/library/tool", "2").await.unwrap();
    let held = format!("{}/dockerhub/library/tool:2", dst.host());
    server.apply(pod("tool-1", &held, Some("ErrImagePull"))).unwrap();
    wait_counted(&daemon, "present", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let puts = copycat_requests(&dst)
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/manifests/1.0"))
        .count();
    assert_eq!(puts, 1, "{log}");
    let tool_writes = copycat_requests(&dst)
        .iter()
        .filter(|r| r.path.contains("/tool/") && r.method != "HEAD" && r.method != "GET")
        .count();
    assert_eq!(tool_writes, 0, "{log}");
    assert!(
        server.list("Event", "shop").is_empty(),
        "no warning for a copy that worked"
    );
}

#[tokio::test]
async fn an_unmatched_image_gets_one_warning_event_and_a_missing_source_is_reported_on_the_pod() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (server, running) = cluster();
    let unmatched = format!("{}/other/app:1", dst.host());
    let missing = format!("{}/dockerhub/library/nope:1", dst.host());
    let elsewhere = format!("{}/dockerhub/library/app:1", src.host());
    let config = config(&dst, &src);
    let daemon = daemon(&running, &dst, &config).await;

    // Every back-off of the kubelet is a status change; each is seen, one Event per Pod and image.
    for reason in ["ErrImagePull", "ImagePullBackOff", "ErrImagePull"] {
        server.apply(pod("lost", &unmatched, Some(reason))).unwrap();
        server.apply(pod("gone", &missing, Some(reason))).unwrap();
        // Not on the target registry: not copycat's to copy on the fly.
        server.apply(pod("away", &elsewhere, Some(reason))).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let event_of = |name: &str| {
        let events: Vec<Value> = server
            .list("Event", "shop")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect();
        events
    };
    eventually("both events", WAIT, async || {
        !event_of("lost").is_empty() && !event_of("gone").is_empty()
    })
    .await;

    let lost = event_of("lost");
    assert_eq!(lost.len(), 1, "{lost:#?}");
    let lost = &lost[0];
    assert_eq!(
        (&lost["type"], &lost["reason"]),
        (&json!("Warning"), &json!("MirrorSourceUnknown"))
    );
    assert_eq!(lost["involvedObject"]["kind"], "Pod");
    let message = lost["message"].as_str().unwrap();
    assert!(
        message.contains(&unmatched) && message.contains(&format!("mirror prefixes: {}/dockerhub", dst.host())),
        "{message}"
    );

    let gone = event_of("gone");
    assert_eq!(gone.len(), 1, "{gone:#?}");
    let gone = &gone[0];
    assert_eq!(gone["reason"], "MirrorFailed");
    assert_eq!(gone["involvedObject"]["kind"], "Pod");
    let message = gone["message"].as_str().unwrap();
    let source = format!("{}/library/nope:1", src.host());
    assert!(
        message.contains(&source) && message.contains("retrying in 1h"),
        "{message}"
    );
    // (Its routine mirroring fails, the source does not exist: a MirrorFailed Event of its own.)
    assert!(event_of("away").iter().all(|e| e["reason"] == "MirrorFailed"));

    let (_, status) = daemon.json("GET", "/status?state=unmatched", None).await;
    let images: Vec<&Value> = status.as_array().unwrap().iter().map(|s| &s["target"]).collect();
    assert_eq!(images, [&json!(unmatched)], "{status:#}");
    assert_eq!(
        metric(&daemon, r#"k8s_copycat_on_the_fly_copies_total{result="unmatched"}"#)
            .await
            .as_deref(),
        Some("1")
    );
    // The missing source is tried once per cooldown, however often the kubelet backs off.
    let failed = r#"k8s_copycat_on_the_fly_copies_total{result="failed"}"#;
    eventually("the failure to be counted", WAIT, async || {
        metric(&daemon, failed).await.is_some_and(|n| n != "0")
    })
    .await;
    assert_eq!(metric(&daemon, failed).await.as_deref(), Some("1"));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let writes = copycat_requests(&dst)
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .count();
    assert_eq!(writes, 0, "nothing is copied: {log}");
}

//! Leader election as a black box: two `copycat run` processes (the built binary) against one
//! stand-in API server and real registries; only the holder of the Lease mirrors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{FaultProxy, Image, RegistryMode, manifest_digest};

use crate::drills::wait_for;
use crate::support::{ANY_PORT, CopycatRun, eventually, http, start};

/// The daemon's lease duration (`copycat::leader::LEASE_DURATION`) plus slack for a loaded machine.
pub(crate) const TAKEOVER: Duration = Duration::from_secs(copycat::leader::LEASE_DURATION + 10);

pub(crate) struct Daemon {
    pub(crate) run: CopycatRun,
    name: &'static str,
    /// The replica's `HTTP_PROXY`: sees every registry request it makes.
    proxy: FaultProxy,
}

impl Daemon {
    fn start(name: &'static str, kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let args = ["--metrics-bind-address", ANY_PORT, "--health-probe-bind-address", "0"];
        let proxy = FaultProxy::start_forward().expect("start the replica's forward proxy");
        let proxy_url = proxy.url();
        let mut all = vec![
            ("LEADER_ELECT", "true"),
            ("HOSTNAME", name),
            ("FAILURE_COOLDOWN_MINUTES", "0"),
            ("HTTP_PROXY", &proxy_url),
        ];
        all.extend_from_slice(env);
        let run = CopycatRun::start(kubeconfig, &args, &all);
        Daemon { run, name, proxy }
    }

    /// The metrics listener's address, read from the log once bound.
    async fn metrics(&self) -> String {
        self.run.bound_address("metrics").await
    }

    /// Sends SIGTERM and returns the exit code and everything it logged.
    pub(crate) fn stop(self) -> (Option<i32>, String) {
        self.run.stop()
    }

    /// The JSON answer to `GET path` on the metrics listener (`Null` when it is not JSON).
    pub(crate) async fn json(&self, path: &str) -> Value {
        let (_, body) = http(&self.metrics().await, "GET", path, None).await;
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// `k8s_copycat_leader`, once the metrics listener answers.
    pub(crate) async fn leader_gauge(&self) -> Option<f64> {
        self.gauge("k8s_copycat_leader").await
    }

    /// The gauge `name`, once the metrics listener answers.
    async fn gauge(&self, name: &str) -> Option<f64> {
        let (code, body) = http(&self.metrics().await, "GET", "/metrics", None).await;
        if code != 200 {
            return None;
        }
        let prefix = format!("{name} ");
        body.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    async fn status_len(&self) -> usize {
        let (code, body) = http(&self.metrics().await, "GET", "/status", None).await;
        assert_eq!(code, 200, "/status works on every replica: {body}");
        serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().len()
    }
}

fn deployment(name: &str, image: String) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
               "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

fn holder(server: &ApiServer) -> Option<String> {
    server.get("Lease", "k8s-copycat", "k8s-copycat")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Starts two replicas and waits until one leads: (leader, follower).
async fn two_replicas(server: &ApiServer, kubeconfig: &std::path::Path, dst: &str) -> (Daemon, Daemon) {
    two_replicas_with(server, kubeconfig, dst, &[]).await
}

/// [`two_replicas`] with `more` environment.
pub(crate) async fn two_replicas_with(
    server: &ApiServer,
    kubeconfig: &std::path::Path,
    dst: &str,
    more: &[(&str, &str)],
) -> (Daemon, Daemon) {
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "k8s-copycat"}}))
        .unwrap();
    let mut env = vec![("TARGET_KIND", "docker"), ("TARGET_REGISTRY", dst)];
    env.extend_from_slice(more);
    let a = Daemon::start("replica-a", kubeconfig, &env);
    let b = Daemon::start("replica-b", kubeconfig, &env);
    // One gauge at 1, the other at 0, and the Lease naming the one at 1. The three are read one after
    // the other while the election settles (on a loaded machine a renewal can come late and the
    // other replica take over in between), so they are read again until they agree.
    let leading = std::sync::Mutex::new(None);
    eventually(
        "a leader, its gauge matching the Lease",
        Duration::from_secs(20),
        async || {
            let (ga, gb) = (a.leader_gauge().await, b.leader_gauge().await);
            let gauges = match (ga, gb) {
                (Some(1.0), Some(0.0)) => Some(a.name),
                (Some(0.0), Some(1.0)) => Some(b.name),
                _ => None,
            };
            let consistent = gauges.filter(|name| holder(server).as_deref() == Some(*name));
            *leading.lock().unwrap() = consistent;
            consistent.is_some()
        },
    )
    .await;
    let leader = leading.into_inner().unwrap();
    if leader == Some(a.name) { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn only_the_leader_mirrors_and_the_follower_refuses_admin_requests() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    Image::oci("amd64", &[3000], 700)
        .unwrap()
        .push(&src, "shop/web", "1")
        .await
        .unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", format!("{}/shop/web:1", src.host())))
        .unwrap();
    let running = server.serve().unwrap();
    let (leader, follower) = two_replicas(&server, running.kubeconfig_path(), &dst.host()).await;

    wait_for(&dst, "shop/web", "1").await;
    let (code, body) = http(&follower.metrics().await, "POST", "/force-reconcile", None).await;
    assert_eq!(code, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains("not the leader"),
        "{answer}"
    );
    let (code, body) = http(&follower.metrics().await, "POST", "/reset-cooldown", None).await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = http(&leader.metrics().await, "POST", "/force-reconcile?wait=20s", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["success"], true, "{body}");
    // The follower has planned (a plan submits before it sets this gauge): had it submitted, its
    // queue would show the target.
    eventually("the follower's plan", Duration::from_secs(30), async || {
        follower.gauge("k8s_copycat_images_tracked").await == Some(1.0)
    })
    .await;
    assert_eq!(follower.status_len().await, 0, "the follower submitted nothing");
    assert!(leader.status_len().await >= 1);
    assert_eq!(follower.leader_gauge().await, Some(0.0));
    // Only the leader verifies its targets; the follower checks nothing and reports no image, so
    // its coverage is 1 (the alert looks at the leader only).
    eventually("the leader verified its target", Duration::from_secs(30), async || {
        leader.gauge("k8s_copycat_backup_images{state=\"verified\"}").await == Some(1.0)
    })
    .await;
    assert_eq!(leader.gauge("k8s_copycat_backup_coverage_ratio").await, Some(1.0));
    assert_eq!(follower.gauge("k8s_copycat_backup_coverage_ratio").await, Some(1.0));
    assert_eq!(
        follower.gauge("k8s_copycat_backup_images{state=\"pending\"}").await,
        Some(0.0)
    );
    // Each replica's registry requests go through its own proxy: the leader's carried the mirror,
    // the follower's saw nothing at all (no HEAD, no token, no /v2/ probe).
    assert!(
        leader.proxy.requests().iter().any(|r| r.method == "PUT"),
        "{:#?}",
        leader.proxy.requests()
    );
    assert_eq!(follower.proxy.requests(), [], "the follower made no registry request");

    let Daemon {
        run: follower,
        proxy: follower_proxy,
        ..
    } = follower;
    let (code, follower_log) = follower.stop();
    assert_eq!(code, Some(0), "{follower_log}");
    assert_eq!(follower_proxy.requests(), [], "not even later");
    let (code, leader_log) = leader.stop();
    assert_eq!(code, Some(0), "{leader_log}");
    assert!(!follower_log.contains("not built"), "{follower_log}");
    let manifest_puts = dst
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/1"))
        .count();
    assert_eq!(manifest_puts, 1, "written once, by the leader alone");
    assert_eq!(holder(&server), None, "the Lease is released on shutdown");
}

#[tokio::test]
async fn the_follower_takes_over_when_the_leader_stops() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    for (repo, seed) in [("shop/web", 710), ("shop/late", 711)] {
        Image::oci("amd64", &[3000], seed)
            .unwrap()
            .push(&src, repo, "1")
            .await
            .unwrap();
    }
    let server = ApiServer::new();
    server
        .apply(deployment("web", format!("{}/shop/web:1", src.host())))
        .unwrap();
    let running = server.serve().unwrap();
    let (leader, follower) = two_replicas(&server, running.kubeconfig_path(), &dst.host()).await;
    wait_for(&dst, "shop/web", "1").await;

    let stopped = Instant::now();
    let (code, log) = leader.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("lease released"), "{log}");
    eventually("the follower to take over", TAKEOVER, async || {
        follower.leader_gauge().await == Some(1.0)
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(copycat::leader::LEASE_DURATION),
        "a released Lease is taken within the lease duration, took {took:?}"
    );
    assert_eq!(holder(&server).as_deref(), Some(follower.name));
    server
        .apply(deployment("late", format!("{}/shop/late:1", src.host())))
        .unwrap();
    eventually(
        "the image added after the failover",
        Duration::from_secs(20),
        async || manifest_digest(&dst, "shop/late", "1").await.unwrap().is_some(),
    )
    .await;
    let (code, body) = http(&follower.metrics().await, "POST", "/force-reconcile?wait=20s", None).await;
    assert_eq!(code, 200, "the new leader takes admin requests: {body}");
    let (code, log) = follower.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("became the leader"), "{log}");
    assert!(log.contains("the Lease was released: taking it"), "{log}");
    eprintln!("takeover took {took:?}");
}

#[tokio::test]
async fn a_leader_that_cannot_reach_the_api_server_steps_down_and_leads_again() {
    let dst = start(RegistryMode::Plain);
    let server = ApiServer::new();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "k8s-copycat"}}))
        .unwrap();
    let mut running = server.serve().unwrap();
    let daemon = Daemon::start(
        "solo",
        running.kubeconfig_path(),
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", &dst.host())],
    );
    eventually("leading", Duration::from_secs(20), async || {
        daemon.leader_gauge().await == Some(1.0)
    })
    .await;
    running.stop();
    let cut = Instant::now();
    // It must step down before its term ends, when the renewal fails.
    eventually(
        "stepping down",
        Duration::from_secs(copycat::leader::LEASE_DURATION),
        async || daemon.leader_gauge().await == Some(0.0),
    )
    .await;
    let (code, _) = http(&daemon.metrics().await, "POST", "/force-reconcile", None).await;
    assert_eq!(code, 503);
    let stepped_down = cut.elapsed();
    running.start().unwrap();
    eventually("leading again", Duration::from_secs(20), async || {
        daemon.leader_gauge().await == Some(1.0)
    })
    .await;
    assert_eq!(holder(&server).as_deref(), Some("solo"));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("cannot renew or read the Lease"), "{log}");
    assert!(
        log.contains("queued copies dropped"),
        "stepping down drops queued work: {log}"
    );
    eprintln!("stepped down {stepped_down:?} after the API server went away");
}

#[tokio::test]
async fn a_lease_namespace_that_does_not_exist_stops_the_start() {
    let server = ApiServer::new();
    let running = server.serve().unwrap();
    let mut daemon = Daemon::start(
        "solo",
        running.kubeconfig_path(),
        &[
            ("TARGET_KIND", "docker"),
            ("TARGET_REGISTRY", "127.0.0.1:1"),
            ("POD_NAMESPACE", "nowhere"),
        ],
    );
    let (code, log) = daemon.run.wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0), "copycat must not start without its Lease: {log}");
    assert!(log.contains("nowhere/k8s-copycat"), "{log}");
}

#[tokio::test]
async fn a_killed_leader_is_replaced_when_its_term_ends() {
    let dst = start(RegistryMode::Plain);
    let server = ApiServer::new();
    let running = server.serve().unwrap();
    let (mut leader, follower) = two_replicas(&server, running.kubeconfig_path(), &dst.host()).await;
    // SIGKILL: no release, the follower must wait for the term to end.
    leader.run.kill();
    let killed = Instant::now();
    eventually("the follower to take over", TAKEOVER, async || {
        follower.leader_gauge().await == Some(1.0)
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(holder(&server).as_deref(), Some(follower.name));
    let (code, log) = follower.stop();
    assert_eq!(code, Some(0), "{log}");
    eprintln!("takeover after SIGKILL took {took:?}");
}

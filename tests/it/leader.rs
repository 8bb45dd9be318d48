//! Leader election as a black box: two `copycat run` processes (the built binary) against one
//! stand-in API server and real registries; only the holder of the Lease mirrors.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::{Image, RegistryMode, manifest_digest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::start;

/// The daemon's lease duration (`copycat::leader::LEASE_DURATION`) plus slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(copycat::leader::LEASE_DURATION + 10);

struct Daemon {
    child: Child,
    name: &'static str,
    metrics: String,
}

impl Daemon {
    fn start(name: &'static str, kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let metrics = free_address();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_copycat"));
        cmd.args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--metrics-bind-address", &metrics, "--health-probe-bind-address", "0"])
            .env_clear();
        cmd.env("CONFIG_PATH", "/nonexistent/config.yaml")
            .env("LOG_FORMAT", "text")
            .env("LEADER_ELECT", "true")
            .env("HOSTNAME", name)
            .env("FAILURE_COOLDOWN_MINUTES", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start copycat run");
        Daemon { child, name, metrics }
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

    /// `k8s_copycat_leader`, once the metrics listener answers.
    async fn leader_gauge(&self) -> Option<f64> {
        let (code, body) = http(&self.metrics, "GET", "/metrics").await;
        if code != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("k8s_copycat_leader ")?.trim().parse().ok())
    }

    async fn status_len(&self) -> usize {
        let (code, body) = http(&self.metrics, "GET", "/status").await;
        assert_eq!(code, 200, "/status works on every replica: {body}");
        serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().len()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// One HTTP/1.1 request; status 0 when nothing listens (yet). Bounded by 60 s.
async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return (0, String::new());
        };
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
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

async fn eventually(what: &str, within: Duration, check: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "k8s-copycat"}}))
        .unwrap();
    let env = [("TARGET_KIND", "docker"), ("TARGET_REGISTRY", dst)];
    let a = Daemon::start("replica-a", kubeconfig, &env);
    let b = Daemon::start("replica-b", kubeconfig, &env);
    eventually("a leader", Duration::from_secs(20), async || {
        let (ga, gb) = (a.leader_gauge().await, b.leader_gauge().await);
        matches!((ga, gb), (Some(1.0), Some(0.0)) | (Some(0.0), Some(1.0)))
    })
    .await;
    let (leader, follower) = if a.leader_gauge().await == Some(1.0) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(
        holder(server).as_deref(),
        Some(leader.name),
        "the gauge matches the Lease"
    );
    (leader, follower)
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

    eventually("the image mirrored", Duration::from_secs(20), async || {
        manifest_digest(&dst, "shop/web", "1").await.unwrap().is_some()
    })
    .await;
    let (code, body) = http(&follower.metrics, "POST", "/force-reconcile").await;
    assert_eq!(code, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains("not the leader"),
        "{answer}"
    );
    let (code, body) = http(&follower.metrics, "POST", "/reset-cooldown").await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = http(&leader.metrics, "POST", "/force-reconcile?wait=20s").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["success"], true, "{body}");
    assert_eq!(follower.status_len().await, 0, "the follower submitted nothing");
    assert!(leader.status_len().await >= 1);
    assert_eq!(follower.leader_gauge().await, Some(0.0));

    let (code, follower_log) = follower.stop();
    assert_eq!(code, Some(0), "{follower_log}");
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
    eventually("the first image mirrored", Duration::from_secs(20), async || {
        manifest_digest(&dst, "shop/web", "1").await.unwrap().is_some()
    })
    .await;

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
    let (code, body) = http(&follower.metrics, "POST", "/force-reconcile?wait=20s").await;
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
    let (code, _) = http(&daemon.metrics, "POST", "/force-reconcile").await;
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "copycat kept running without its Lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("nowhere/k8s-copycat"), "{log}");
}

#[tokio::test]
async fn a_killed_leader_is_replaced_when_its_term_ends() {
    let dst = start(RegistryMode::Plain);
    let server = ApiServer::new();
    let running = server.serve().unwrap();
    let (mut leader, follower) = two_replicas(&server, running.kubeconfig_path(), &dst.host()).await;
    // SIGKILL: no release, the follower must wait for the term to end.
    leader.child.kill().unwrap();
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

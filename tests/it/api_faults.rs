//! `copycat run` against a stand-in API server that fails the way real ones do: RBAC refusing one
//! kind (403), throttling (429 with `Retry-After`), a burst of 500s, and the shipped RBAC without
//! the Secret rule while `useImagePullSecrets` is on; and against no API server at all.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::apiserver::{ApiFault, ApiServer};
use testkit::{Image, RegistryMode};

use crate::drills::{assert_identical, wait_for};
use crate::server::{Daemon, deployment};
use crate::support::{eventually, start};

const WAIT: Duration = Duration::from_secs(60);

/// The StatefulSet `default/NAME` running `image`.
fn stateful_set(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": name}}, "serviceName": name,
               "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

/// Log lines of copycat's report that the API server forbids listing `kind`.
fn forbidden_lines<'a>(log: &'a str, kind: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("forbids copycat's ServiceAccount to list") && l.contains(&format!("kind={kind}")))
        .collect()
}

#[tokio::test]
async fn a_forbidden_kind_is_named_by_readyz_and_the_log_while_the_other_kinds_mirror() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let (web, db) = (
        Image::oci("amd64", &[2000], 1100).unwrap(),
        Image::oci("amd64", &[2100], 1101).unwrap(),
    );
    web.push(&src, "shop/web", "1").await.unwrap();
    db.push(&src, "shop/db", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", &[format!("{}/shop/web:1", src.host())]))
        .unwrap();
    server
        .apply(stateful_set("db", &format!("{}/shop/db:1", src.host())))
        .unwrap();
    server.inject(ApiFault::forbidden("statefulsets", "list"));
    let running = server.serve().unwrap();
    let started = Instant::now();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[]);

    // The Deployment is mirrored although the StatefulSets cannot be listed.
    wait_for(&dst, "shop/web", "1").await;
    assert_identical(&dst, "shop/web", "1", &web).await;
    let (code, body) = daemon.probe("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("forbidden: StatefulSet cluster-wide: list forbidden: statefulsets.apps is forbidden")
            && body.contains("cannot list resource \"statefulsets\" in API group \"apps\""),
        "/readyz names the kind, the verb and the API server's reason: {body}"
    );
    // A few steps of kube's backoff (0.8 s, doubling, jittered).
    eventually("three refusals", WAIT, async || {
        forbidden_lines(&daemon.run.log(), "StatefulSet").len() >= 3
    })
    .await;
    let lists = lists(&server, "statefulsets");
    let logged = forbidden_lines(&daemon.run.log(), "StatefulSet").len();
    let elapsed = started.elapsed();
    // One line per attempt, and attempts spaced by the backoff: not a line per retry of a tight loop.
    assert!(
        logged.abs_diff(lists) <= 1,
        "{logged} lines for {lists} refused lists:\n{}",
        daemon.run.log()
    );
    assert!(
        lists <= 2 + elapsed.as_secs() as usize,
        "{lists} lists in {elapsed:?}: the refusals are retried in a loop"
    );
    let line = forbidden_lines(&daemon.run.log(), "StatefulSet")[0].to_owned();
    assert!(
        line.contains("verb=\"list\"") && line.contains("ClusterRole"),
        "the line names the verb and what to grant: {line}"
    );

    // Granted: the StatefulSet's image follows and the daemon becomes ready.
    server.clear_faults();
    wait_for(&dst, "shop/db", "1").await;
    assert_identical(&dst, "shop/db", "1", &db).await;
    eventually("/readyz once the StatefulSets are listed", WAIT, async || {
        daemon.probe("/readyz").await == (200, "ok".to_owned())
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn throttling_with_retry_after_and_a_burst_of_500s_are_waited_out() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[2000], 1102).unwrap();
    image.push(&src, "shop/web", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", &[format!("{}/shop/web:1", src.host())]))
        .unwrap();
    // The Deployment list is throttled three times, then every Pod list fails three times.
    server.inject(ApiFault::too_many_requests(1).on("deployments", "list").times(3));
    server.inject(ApiFault::server_error(500).on("pods", "list").times(3));
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[]);

    // The client waits out each `Retry-After: 1` before asking again.
    let deployment_lists = || lists(&server, "deployments");
    let first = reached("the first Deployment list", deployment_lists, 1).await;
    let fourth = reached("the fourth Deployment list", deployment_lists, 4).await;
    assert!(
        fourth - first >= Duration::from_millis(2700),
        "three Retry-After: 1 waited out, not {:?}",
        fourth - first
    );
    wait_for(&dst, "shop/web", "1").await;
    assert_identical(&dst, "shop/web", "1", &image).await;
    eventually("/readyz", WAIT, async || daemon.probe("/readyz").await.0 == 200).await;
    assert_eq!(deployment_lists(), 4, "three throttled lists, then one that succeeded");
    assert_eq!(lists(&server, "pods"), 4, "three failed lists, then one that succeeded");
    assert_eq!(
        failed_watches(&daemon, "Pod").await,
        3,
        "each 500 is counted in k8s_copycat_watch_events_total"
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let warnings = failure_warnings(&log);
    assert!(
        !warnings.is_empty() && warnings.iter().all(|l| l.contains("code: 500")),
        "the 500s are logged, as warnings: {log}"
    );
    assert!(!log.contains("ERROR"), "transient API errors are warnings: {log}");
}

/// The warnings that watches fail (at most one per 10 s across all watches).
fn failure_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("watch failed;"))
        .collect()
}

/// `k8s_copycat_watch_events_total{event="failed",kind=KIND}`.
async fn failed_watches(daemon: &Daemon, kind: &str) -> usize {
    let (_, metrics) = daemon.get("/metrics").await;
    let series = format!("k8s_copycat_watch_events_total{{event=\"failed\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// An API server nobody answers at (connection refused): every watch retries with a growing
/// backoff, one warning names the server (not a line per watch and retry), `/readyz` says why,
/// and the token of the kubeconfig appears nowhere.
#[tokio::test]
async fn an_unreachable_api_server_is_named_by_few_lines_and_by_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let token = "unreachable-test-token-4711";
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             users: [{{name: u, user: {{token: {token}}}}}]\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let daemon = Daemon::start(
        &kubeconfig,
        &[("TARGET_KIND", "docker"), ("TARGET_REGISTRY", "127.0.0.1:5999")],
    );

    // The fourth attempt of the Pod watch: 0.8 + 1.6 + 3.2 s of backoff at least, where a backoff
    // reset by the watcher's `Init` event retried every 0.8–1.6 s.
    eventually("four failed Pod lists", WAIT, async || {
        failed_watches(&daemon, "Pod").await >= 4
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(5600),
        "four attempts within {elapsed:?}: the backoff does not grow"
    );
    let (code, readyz) = daemon.probe("/readyz").await;
    assert_eq!(code, 503, "{readyz}");
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "Pod",
        "ReplicaSet",
    ] {
        assert!(
            readyz.contains(&format!("failing: {kind} cluster-wide: ")),
            "/readyz names the failing {kind} watch: {readyz}"
        );
    }
    assert!(readyz.contains("(API server https://127.0.0.1:1)"), "{readyz}");
    let elapsed = started.elapsed();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    let warnings = failure_warnings(&log);
    let allowed = 1 + elapsed.as_secs() as usize / 10;
    assert!(
        !warnings.is_empty() && warnings.len() <= allowed,
        "{} warnings in {elapsed:?}, at most {allowed}: {log}",
        warnings.len()
    );
    assert!(
        warnings[0].contains("at https://127.0.0.1:1") && warnings[0].contains("/readyz"),
        "the warning names the server and where to look: {}",
        warnings[0]
    );
    assert!(
        log.lines().count() <= 8 + allowed,
        "a few lines, not a line per watch and retry: {log}"
    );
    assert!(
        !log.contains(token) && !readyz.contains(token),
        "the token leaked: {log}\n{readyz}"
    );
}

/// How many lists (not watches) of `resource` the server received.
fn lists(server: &ApiServer, resource: &str) -> usize {
    let path = format!("/{resource}?");
    server
        .requests()
        .iter()
        .filter(|(method, p)| method == "GET" && p.contains(&path) && !p.contains("watch=true"))
        .count()
}

/// When `count` first reaches `n` (polled every 10 ms, at most [`WAIT`]).
async fn reached(what: &str, count: impl Fn() -> usize, n: usize) -> Instant {
    let deadline = Instant::now() + WAIT;
    while count() < n {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

/// `useImagePullSecrets` with the shipped RBAC (its Secret rule commented out): the Secret list is
/// refused for ever. The daemon still becomes ready (the pull-secret watches are optional), mirrors
/// the public images and names the missing permission in `/readyz` and the log.
#[tokio::test]
async fn pull_secrets_the_rbac_does_not_grant_are_reported_without_blocking_readiness() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[2000], 1103).unwrap();
    image.push(&src, "shop/web", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", &[format!("{}/shop/web:1", src.host())]))
        .unwrap();
    server.inject(ApiFault::forbidden("secrets", "list"));
    let running = server.serve().unwrap();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[("USE_IMAGE_PULL_SECRETS", "true")]);

    wait_for(&dst, "shop/web", "1").await;
    assert_identical(&dst, "shop/web", "1", &image).await;
    eventually("/readyz", WAIT, async || daemon.probe("/readyz").await.0 == 200).await;
    eventually("/readyz naming the refused Secret list", WAIT, async || {
        let (_, body) = daemon.probe("/readyz").await;
        body.starts_with("ok\n")
            && body.contains("forbidden: Secret cluster-wide: list forbidden: secrets is forbidden")
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!forbidden_lines(&log, "Secret").is_empty(), "{log}");
}

/// A list that takes 10 s (a large namespace on a busy API server): the kinds already listed are
/// mirrored meanwhile, and readiness waits for the slow one.
#[tokio::test]
async fn a_slow_list_of_one_kind_holds_readiness_but_not_the_other_kinds() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[2000], 1104).unwrap();
    image.push(&src, "shop/web", "1").await.unwrap();
    let server = ApiServer::new();
    server
        .apply(deployment("web", &[format!("{}/shop/web:1", src.host())]))
        .unwrap();
    let slow = Duration::from_secs(10);
    server.inject(ApiFault::slow(slow).on("pods", "list").times(1));
    let running = server.serve().unwrap();
    let started = Instant::now();
    let daemon = Daemon::mirroring_to(running.kubeconfig_path(), &dst, &[]);

    wait_for(&dst, "shop/web", "1").await;
    let (code, body) = daemon.probe("/readyz").await;
    if started.elapsed() < slow {
        assert_eq!(code, 503, "the Pods are not listed yet: {body}");
    }
    eventually("/readyz once the Pods are listed", WAIT, async || {
        daemon.probe("/readyz").await.0 == 200
    })
    .await;
    assert!(started.elapsed() >= slow, "ready only after the slow list");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

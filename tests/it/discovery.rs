//! Discovery's watchers (the unmodified `kube` runtime watcher) against the stand-in API server.

use std::sync::Arc;
use std::time::Duration;

use copycat::discovery::health::WatchHealth;
use copycat::discovery::inventory::{Inventory, ObjectKey, Update};
use copycat::discovery::watch::{self, Watchers};
use copycat::metrics::Metrics;
use copycat::workload::Kind;
use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use tokio::sync::mpsc;

const ALL: [Kind; 6] = Kind::ALL;

struct Watching {
    inventory: Inventory,
    updates: mpsc::Receiver<Update>,
    _watchers: Watchers,
}

/// How long [`Watching::until`] waits. After an API server restart kube's watcher relists only
/// after its backoff (0.8 s doubling to 30 s, jittered), which the errors around the restart have
/// already raised; one full maximum step plus room for a loaded machine.
const UNTIL: Duration = Duration::from_secs(60);

impl Watching {
    fn start(client: kube::Client, kinds: &[Kind]) -> Watching {
        let feeds = watch::feeds(&watch::watched_for(kinds, false, false), None);
        let (watchers, updates) = watch::start(client, &feeds, Arc::new(Metrics::new()), &WatchHealth::default());
        Watching {
            inventory: Inventory::new(),
            updates,
            _watchers: watchers,
        }
    }

    /// Applies updates until `done` holds; fails after [`UNTIL`].
    async fn until(&mut self, what: &str, done: impl Fn(&Inventory) -> bool) {
        let deadline = tokio::time::Instant::now() + UNTIL;
        while !done(&self.inventory) {
            match tokio::time::timeout_at(deadline, self.updates.recv()).await {
                Ok(Some(update)) => {
                    self.inventory.apply(update);
                }
                Ok(None) => panic!("watchers stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; inventory: {:#?}",
                    images(&self.inventory)
                ),
            }
        }
    }
}

fn images(inv: &Inventory) -> Vec<String> {
    let mut v: Vec<String> = inv
        .objects()
        .flat_map(|(k, e)| {
            e.images
                .iter()
                .map(move |i| format!("{:?} {}/{} {} {}", k.kind, k.namespace, k.name, i.container, i.image))
        })
        .collect();
    v.sort();
    v
}

fn has(inv: &Inventory, line: &str) -> bool {
    images(inv).iter().any(|l| l == line)
}

pub(crate) fn template(images: &[(&str, &str)]) -> Value {
    let containers: Vec<Value> = images.iter().map(|(n, i)| json!({"name": n, "image": i})).collect();
    json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": containers}})
}

/// A workload of `kind` (a Deployment-like spec, or a CronJob's job template) with one container per
/// `(name, image)`.
pub(crate) fn workload(kind: &str, api_version: &str, ns: &str, name: &str, images: &[(&str, &str)]) -> Value {
    let spec = match kind {
        "CronJob" => json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template(images)}}}),
        _ => json!({"selector": {"matchLabels": {"app": "x"}}, "template": template(images)}),
    };
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn owned(kind: &str, name: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}])
}

fn seed(server: &ApiServer) {
    for obj in [
        workload("Deployment", "apps/v1", "default", "web", &[("nginx", "nginx:1.25")]),
        workload("StatefulSet", "apps/v1", "default", "db", &[("pg", "postgres:16")]),
        workload(
            "DaemonSet",
            "apps/v1",
            "kube-system",
            "agent",
            &[("agent", "ghcr.io/org/agent:2")],
        ),
        workload("Job", "batch/v1", "default", "migrate", &[("m", "tool:1")]),
        workload("CronJob", "batch/v1", "default", "nightly", &[("n", "backup:3")]),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-7d4b9", "namespace": "default", "ownerReferences": owned("Deployment", "web")},
               "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template(&[("nginx", "nginx:1.25")])}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-7d4b9-abcde", "namespace": "default", "ownerReferences": owned("ReplicaSet", "web-7d4b9")},
               "spec": {"initContainers": [{"name": "init", "image": "busybox:1"}], "containers": [{"name": "nginx", "image": "nginx:1.25"}],
                        "ephemeralContainers": [{"name": "debug", "image": "alpine:3"}]},
               "status": {"phase": "Running"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "done", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "finished:1"}]}, "status": {"phase": "Succeeded"}}),
    ] {
        server.apply(obj).expect("apply");
    }
}

#[tokio::test]
async fn every_kind_is_seen_with_owners_resolved() {
    let server = ApiServer::new();
    seed(&server);
    let mut w = Watching::start(kube::Client::new(server.router(), "default"), &ALL);
    w.until("every kind", |inv| images(inv).len() == 8).await;
    assert_eq!(
        images(&w.inventory),
        vec![
            "CronJob default/nightly n backup:3",
            "DaemonSet kube-system/agent agent ghcr.io/org/agent:2",
            "Deployment default/web nginx nginx:1.25",
            "Job default/migrate m tool:1",
            "Pod default/web-7d4b9-abcde debug alpine:3",
            "Pod default/web-7d4b9-abcde init busybox:1",
            "Pod default/web-7d4b9-abcde nginx nginx:1.25",
            "StatefulSet default/db pg postgres:16",
        ],
        "finished Pods contribute nothing"
    );
    let (key, entry) = w
        .inventory
        .objects()
        .find(|(k, _)| k.kind == Kind::Pod && k.name.starts_with("web"))
        .unwrap();
    assert_eq!(
        w.inventory.workload_of(key, entry),
        (Kind::Deployment, "web".to_owned())
    );
}

#[tokio::test]
async fn live_changes_and_deletions() {
    let server = ApiServer::new();
    seed(&server);
    let mut w = Watching::start(
        kube::Client::new(server.router(), "default"),
        &[Kind::Deployment, Kind::CronJob],
    );
    w.until("initial list", |inv| {
        has(inv, "Deployment default/web nginx nginx:1.25")
    })
    .await;
    server
        .apply(workload(
            "Deployment",
            "apps/v1",
            "default",
            "web",
            &[("nginx", "nginx:1.27")],
        ))
        .unwrap();
    w.until("changed image", |inv| {
        has(inv, "Deployment default/web nginx nginx:1.27")
    })
    .await;
    server
        .apply(workload(
            "CronJob",
            "batch/v1",
            "default",
            "nightly",
            &[("n", "backup:4")],
        ))
        .unwrap();
    w.until("changed cronjob", |inv| has(inv, "CronJob default/nightly n backup:4"))
        .await;
    server.delete("deployments", "default", "web");
    w.until("deletion", |inv| !images(inv).iter().any(|l| l.contains("default/web")))
        .await;
}

#[tokio::test]
async fn a_410_makes_the_watcher_relist() {
    let server = ApiServer::new();
    seed(&server);
    let mut w = Watching::start(kube::Client::new(server.router(), "default"), &[Kind::Deployment]);
    w.until("initial list", |inv| images(inv).len() == 1).await;
    let lists_before = server.count_requests("GET", "/deployments?");
    server.compact();
    server
        .apply(workload(
            "Deployment",
            "apps/v1",
            "default",
            "second",
            &[("c", "second:1")],
        ))
        .unwrap();
    server.compact();
    server.close_watches();
    w.until("the relist", |inv| images(inv).len() == 2).await;
    assert!(
        server.count_requests("GET", "/deployments?") > lists_before,
        "a new LIST was sent"
    );
}

#[tokio::test]
async fn changes_while_the_server_is_down_are_reconciled_by_the_relist() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::new();
    seed(&server);
    let mut running = server.serve().expect("serve");
    let kubeconfig = kube::config::Kubeconfig::read_from(running.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let mut w = Watching::start(client, &[Kind::Deployment, Kind::StatefulSet]);
    w.until("initial list", |inv| images(inv).len() == 2).await;

    running.stop();
    server.delete("deployments", "default", "web");
    server
        .apply(workload(
            "StatefulSet",
            "apps/v1",
            "default",
            "cache",
            &[("redis", "redis:7")],
        ))
        .unwrap();
    running.restart().expect("restart");
    w.until("reconciled after restart", |inv| {
        let all = images(inv);
        !all.iter().any(|l| l.contains("default/web")) && all.iter().any(|l| l.contains("default/cache"))
    })
    .await;
    let key = ObjectKey {
        kind: Kind::StatefulSet,
        namespace: "default".into(),
        name: "db".into(),
    };
    assert!(w.inventory.objects().any(|(k, _)| *k == key), "untouched objects stay");
}

#[tokio::test]
async fn node_platforms_are_known_when_asked_for() {
    let server = ApiServer::new();
    let info = json!({"architecture": "arm64", "operatingSystem": "linux", "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "",
                      "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""});
    server
        .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "arm-1"}, "status": {"nodeInfo": info}}))
        .unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                      "spec": {"nodeName": "arm-1", "containers": [{"name": "c", "image": "app:1"}]}, "status": {"phase": "Running"}}))
        .unwrap();
    let client = kube::Client::new(server.router(), "default");
    let feeds = watch::feeds(&watch::watched_for(&[Kind::Pod], true, false), None);
    let (watchers, updates) = watch::start(client, &feeds, Arc::new(Metrics::new()), &WatchHealth::default());
    let mut w = Watching {
        inventory: Inventory::new(),
        updates,
        _watchers: watchers,
    };
    w.until("the pod's node platform", |inv| {
        inv.objects()
            .any(|(_, e)| inv.platform_of(e).is_some_and(|p| p.to_string() == "linux/arm64"))
    })
    .await;
}

//! Scale benchmark of discovery and planning: `cargo bench --bench discovery` (the stand-in API
//! server), `cargo bench --bench discovery -- --real` (also a real control plane, `testkit::cluster`,
//! figures side by side).
//!
//! Stand-in: 10,000 Pods under 2,000 Deployments (with their ReplicaSets), 500 StatefulSets, 200
//! DaemonSets, 500 Jobs and 200 CronJobs in 50 namespaces, using 300 images, loaded in memory.
//! `COPYCAT_BENCH_PODS=N` scales every kind with the Pods (50,000: 10,000 Deployments, 2,500
//! StatefulSets, …); the images stay 300. Before copycat starts, the benchmark lists every kind
//! copycat watches itself, the way copycat's watchers do (a kube watcher per kind, all at once, the
//! same requests and page size, checked against the requests copycat makes; only the metadata
//! decoded): the stand-in's own list time, beside which copycat's readiness is read.
//! Real: the same workloads created through the API in bounded batches; the controller manager
//! makes the 2,000 ReplicaSets and 10,000 Pods (StatefulSets with 0 replicas and suspended Jobs, so
//! that only the Deployments have Pods, as in the stand-in); copycat runs as the manifest's
//! ServiceAccount (RBAC enforced). 1,000 of the Pods are reported Running (status subresource) before
//! copycat starts, so that the measured updates change only their restart count, as in the stand-in.
//! API requests on the real server: those API Priority and Fairness dispatched for ServiceAccounts
//! (copycat's; the controller manager and the benchmark are `system:masters`).
//!
//! `copycat run` (`COPYCAT_BENCH_BIN` runs another build, e.g. main's copied aside, for before/after
//! figures) starts with `DRY_PULL=true` (no registry request at all). Reported: time until every
//! watcher has listed, until `/readyz` answers 200 and until every task is planned, peak RSS,
//! requests made to the API server, the plan passes (full and incremental) until planned, the CPU
//! copycat spends on 1,000 Pod status updates that change no image (and whether they caused any new
//! planning), and on 1,000 Pods changed to a new image each (and that exactly those 1,000 tasks were
//! submitted and mirrored).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kube::runtime::watcher::{self, watcher};
use serde_json::{Value, json};
use testkit::apiserver::ApiServer;
use testkit::cluster::Cluster;

const NAMESPACES: usize = 50;
const IMAGES: usize = 300;
const REPLICAS: usize = 5;
const STATUS_UPDATES: usize = 1000;
const IMAGE_CHANGES: usize = 1000;

/// How many objects of each kind: `COPYCAT_BENCH_PODS` Pods (default 10,000), the rest in proportion.
#[derive(Clone, Copy)]
struct Size {
    pods: usize,
}

impl Size {
    fn from_env() -> Size {
        let pods = std::env::var("COPYCAT_BENCH_PODS")
            .ok()
            .map(|v| v.parse::<usize>().expect("COPYCAT_BENCH_PODS is a number of Pods"))
            .unwrap_or(10_000);
        assert!(
            pods >= 5 * IMAGE_CHANGES,
            "COPYCAT_BENCH_PODS must be at least {}",
            5 * IMAGE_CHANGES
        );
        Size { pods }
    }

    fn deployments(self) -> usize {
        self.pods / REPLICAS
    }

    /// StatefulSets, DaemonSets, Jobs and CronJobs: per 10,000 Pods 500, 200, 500 and 200.
    fn others(self) -> [(&'static str, &'static str, usize); 4] {
        let per = |n: usize| n * self.pods / 10_000;
        [
            ("StatefulSet", "apps/v1", per(500)),
            ("DaemonSet", "apps/v1", per(200)),
            ("Job", "batch/v1", per(500)),
            ("CronJob", "batch/v1", per(200)),
        ]
    }
}
/// Requests in flight while the real control plane is loaded.
const IN_FLIGHT: usize = 16;

fn image(i: usize) -> String {
    format!("registry.example.com/lib/img{:03}:1", i % IMAGES)
}

/// The image Pod 0 of Deployment `d` is changed to: one of its own, so one new task each.
fn changed_image(d: usize) -> String {
    format!("registry.example.com/lib/changed{d:05}:1")
}

fn pod_template(i: usize) -> Value {
    json!({"metadata": {"labels": {"app": format!("a{i}")}},
           "spec": {"containers": [{"name": "main", "image": image(i)}], "restartPolicy": "Always"}})
}

fn namespace(i: usize) -> String {
    format!("ns-{:02}", i % NAMESPACES)
}

fn workload(kind: &str, api: &str, i: usize) -> Value {
    let name = format!("{}-{i}", kind.to_lowercase());
    let selector = json!({"matchLabels": {"app": format!("a{i}")}});
    let job_template = |mut t: Value| {
        t["spec"]["restartPolicy"] = json!("Never");
        t
    };
    let spec = match kind {
        "CronJob" => {
            json!({"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": job_template(pod_template(i))}}})
        }
        // Suspended: no Pods (only the Deployments have Pods, as in the stand-in's data).
        "Job" => json!({"suspend": true, "template": job_template(pod_template(i))}),
        "StatefulSet" => json!({"replicas": 0, "serviceName": "s", "selector": selector, "template": pod_template(i)}),
        "Deployment" => json!({"replicas": REPLICAS, "selector": selector, "template": pod_template(i)}),
        _ => json!({"selector": selector, "template": pod_template(i)}),
    };
    json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace(i)}, "spec": spec})
}

/// Every workload but the Pods and ReplicaSets (what a controller makes).
fn workloads(size: Size) -> Vec<Value> {
    let mut objects: Vec<Value> = (0..size.deployments())
        .map(|d| workload("Deployment", "apps/v1", d))
        .collect();
    for (kind, api, count) in size.others() {
        objects.extend((0..count).map(|i| workload(kind, api, i + 7)));
    }
    objects
}

fn namespaces() -> Vec<Value> {
    (0..NAMESPACES)
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace(n)}}))
        .collect()
}

/// A stand-in Pod of Deployment `d` running `image` as a kubelet would report it.
fn stand_in_pod(d: usize, replica: usize, restarts: u32, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("deployment-{d}-rs-{replica}"), "namespace": namespace(d),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("deployment-{d}-rs"), "uid": format!("rs-{d}"), "controller": true}]},
           "spec": {"containers": [{"name": "main", "image": image}]},
           "status": running_status(image, restarts)["status"]})
}

/// A Pod status (the status subresource's body) as a kubelet reports a running Pod of `image`.
fn running_status(image: &str, restarts: u32) -> Value {
    let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
    json!({"status": {"phase": "Running", "containerStatuses": [{"name": "main", "image": image, "ready": true, "restartCount": restarts,
            "imageID": format!("{repository}@sha256:{}", "a".repeat(64)),
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command name.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn vm_hwm_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The status code of `GET path` on `addr` (0 when nothing answers).
fn http_status(addr: &str, path: &str) -> u16 {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut answer).is_err() {
        return 0;
    }
    answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// What one mode measured.
#[derive(Default)]
struct Figures {
    objects: usize,
    setup: Duration,
    kept: u64,
    listed: Option<Duration>,
    ready: Option<Duration>,
    planned: Option<Duration>,
    /// copycat's CPU seconds until planned.
    planned_cpu: f64,
    /// The API server's CPU seconds meanwhile (real control plane only).
    server_cpu: Option<f64>,
    peak_mib: u64,
    requests: Option<u64>,
    /// The benchmark's own lists of every watched kind (as copycat lists them), before copycat starts.
    server_list: Option<Duration>,
    /// Plan passes until planned: full, incremental (a log without the `pass` field counts as full).
    passes: (usize, usize),
    status: Burst,
    changes: Burst,
    exit: Option<i32>,
}

/// What a burst of 1,000 Pod changes cost: copycat's CPU in the 3 s after it began, the tasks the
/// plans of that time submitted, the plans that submitted any, and the copies (dry pull) done.
#[derive(Default)]
struct Burst {
    cpu: f64,
    submitted: u64,
    replans: usize,
    mirrored: usize,
}

/// A `copycat run` (release build) in dry-pull mode, its JSON log lines read as they come.
struct Copycat {
    child: Child,
    pid: u32,
    started: Instant,
    health: String,
    lines: mpsc::Receiver<(Instant, Value)>,
}

impl Copycat {
    fn start(kubeconfig: &Path, env: &[(&str, &str)]) -> Copycat {
        let health = free_address();
        let started = Instant::now();
        // Another build (e.g. main's, copied aside) for before/after figures from the same harness.
        let program = std::env::var("COPYCAT_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_copycat").to_owned());
        let mut child = Command::new(program)
            .args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .env_clear()
            .envs([
                ("CONFIG_PATH", "/dev/null"),
                ("TARGET_KIND", "docker"),
                ("TARGET_REGISTRY", "mirror.example.com"),
                ("DRY_PULL", "true"),
                ("LEADER_ELECT", "false"),
                ("LOG_FORMAT", "json"),
                ("LOG_LEVEL", "info"),
                // Loopback only (the defaults listen on every interface).
                ("METRICS_ADDR", "127.0.0.1:0"),
                ("HEALTH_ADDR", health.as_str()),
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start copycat");
        let pid = child.id();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((Instant::now(), v));
                }
            }
        });
        Copycat {
            child,
            pid,
            started,
            health,
            lines,
        }
    }

    /// Waits (at most `within`) until the list is complete, `/readyz` answers and every task is planned.
    fn wait_planned(&mut self, figures: &mut Figures, within: Duration) {
        let deadline = Instant::now() + within;
        let mut would = 0;
        // Every 100 ms: each probe costs copycat CPU, and a slow list would multiply it.
        let mut probed = Instant::now();
        while figures.planned.is_none() || would < IMAGES || figures.ready.is_none() {
            assert!(
                Instant::now() < deadline,
                "copycat did not plan in {within:?} (planned: {:?}, would-mirror lines: {would})",
                figures.planned
            );
            figures.peak_mib = figures.peak_mib.max(vm_hwm_mib(self.pid));
            if figures.ready.is_none() && probed.elapsed() >= Duration::from_millis(100) {
                probed = Instant::now();
                if http_status(&self.health, "/readyz") == 200 {
                    figures.ready = Some(self.started.elapsed());
                }
            }
            while let Ok((at, v)) = self.lines.recv_timeout(Duration::from_millis(10)) {
                match v["message"].as_str() {
                    Some("initial list complete") => {
                        figures.listed = Some(at - self.started);
                        figures.kept = v["objects"].as_u64().unwrap_or(0);
                    }
                    // The first plan made with every watcher listed.
                    Some("planned")
                        if figures.planned.is_none()
                            && figures.listed.is_some()
                            && v["tasks"].as_u64() == Some(IMAGES as u64) =>
                    {
                        figures.planned = Some(at - self.started);
                        figures.planned_cpu = cpu_ticks(self.pid) as f64 / 100.0;
                        count_pass(&mut figures.passes, &v);
                    }
                    Some("planned") if figures.planned.is_none() => count_pass(&mut figures.passes, &v),
                    _ if is_copy(&v) => would += 1,
                    _ => {}
                }
            }
        }
    }

    /// Runs `updates` (1,000 Pod changes), then waits 3 s: what they cost.
    fn measure(&mut self, figures: &mut Figures, updates: impl FnOnce()) -> Burst {
        // Lines of earlier work are not this burst's.
        while self.lines.try_recv().is_ok() {}
        let cpu_before = cpu_ticks(self.pid);
        let began = Instant::now();
        updates();
        std::thread::sleep(Duration::from_secs(3));
        let cpu = (cpu_ticks(self.pid) - cpu_before) as f64 / 100.0;
        figures.peak_mib = figures.peak_mib.max(vm_hwm_mib(self.pid));
        let mut burst = Burst {
            cpu,
            ..Burst::default()
        };
        for (_, v) in self.lines.try_iter().filter(|(at, _)| *at > began) {
            if v["message"] == "planned" && v["submitted"].as_u64().is_some_and(|n| n > 0) {
                burst.replans += 1;
                burst.submitted += v["submitted"].as_u64().unwrap_or(0);
            } else if is_copy(&v) {
                burst.mirrored += 1;
            }
        }
        burst
    }

    fn stop(mut self, figures: &mut Figures) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        figures.exit = self.child.wait().expect("wait").code();
    }
}

/// Counts a `planned` log line as a full or an incremental pass.
fn count_pass(passes: &mut (usize, usize), line: &Value) {
    match line["pass"].as_str() {
        Some("incremental") => passes.1 += 1,
        _ => passes.0 += 1,
    }
}

/// Whether a log line reports one (dry-pull) copy.
fn is_copy(line: &Value) -> bool {
    line["message"].as_str().is_some_and(|m| m.starts_with("would mirror"))
        || line["result"].as_str() == Some("dry-pull")
}

/// The kinds copycat watches (its default `watchResources`, with ReplicaSets for the Pods).
fn collections() -> [ApiResource; 7] {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    [
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
    ]
}

/// An object of any kind of which only the metadata is decoded (the rest is skipped): what the
/// benchmark's own lists decode, so that copycat's time beyond them is its own work.
#[derive(Clone, Debug, serde::Deserialize)]
struct Listed {
    metadata: ObjectMeta,
}

impl kube::Resource for Listed {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// How long the API server takes to list every kind copycat watches the way copycat's watchers
/// do: one kube watcher per kind, all at once, with the same configuration (pages of 500, the same
/// requests; the stand-in checks they are the same), each until its initial list is done.
async fn list_time(kubeconfig: &Path) -> Duration {
    let client = client(kubeconfig).await;
    let began = Instant::now();
    let lists = futures::future::join_all(collections().map(|resource| {
        let api = Api::<Listed>::all_with(client.clone(), &resource);
        async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                if let watcher::Event::InitDone = event.expect("list") {
                    return;
                }
            }
            panic!("{}: the watch ended before its list", resource.plural);
        }
    }));
    tokio::time::timeout(Duration::from_secs(600), lists)
        .await
        .expect("the benchmark's own lists within 10 minutes");
    began.elapsed()
}

/// The first pages of the lists in `requests` (those without `continue`), by path and page size:
/// what was listed and how, to compare the benchmark's own lists with copycat's.
fn first_pages(requests: &[(String, String)]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|(method, uri)| method == "GET" && uri.contains("limit=") && !uri.contains("continue="))
        .map(|(_, uri)| {
            let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
            let limit = query.split('&').find(|p| p.starts_with("limit=")).unwrap_or_default();
            format!("{path}?{limit}")
        })
        .collect()
}

fn stand_in(size: Size) -> Figures {
    let began = Instant::now();
    let server = ApiServer::new();
    let mut objects = namespaces();
    objects.extend(workloads(size));
    for d in 0..size.deployments() {
        objects.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("deployment-{d}-rs"), "namespace": namespace(d),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("deployment-{d}"), "uid": format!("d-{d}"), "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": format!("a{d}")}}, "template": pod_template(d)}}));
        objects.extend((0..REPLICAS).map(|r| stand_in_pod(d, r, 0, &image(d))));
    }
    let mut figures = Figures {
        objects: objects.len(),
        ..Figures::default()
    };
    server.apply_all(objects).expect("load objects");
    let running = server.serve().expect("serve");
    figures.setup = began.elapsed();
    eprintln!("stand-in: loaded {} objects", figures.objects);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    server.clear_requests();
    figures.server_list = Some(runtime.block_on(list_time(running.kubeconfig_path())));
    let own = first_pages(&server.requests());
    server.clear_requests();

    let mut copycat = Copycat::start(running.kubeconfig_path(), &[]);
    copycat.wait_planned(&mut figures, Duration::from_secs(300));
    figures.requests = Some(server.count_requests("GET", "") as u64);
    assert_eq!(
        first_pages(&server.requests()),
        own,
        "the benchmark's own lists are copycat's: the same kinds in pages of the same size"
    );
    figures.status = copycat.measure(&mut figures, || {
        for d in 0..STATUS_UPDATES {
            server.apply(stand_in_pod(d, 0, 1, &image(d))).expect("status update");
        }
    });
    figures.changes = copycat.measure(&mut figures, || {
        for d in 0..IMAGE_CHANGES {
            server
                .apply(stand_in_pod(d, 0, 1, &changed_image(d)))
                .expect("image change");
        }
    });
    copycat.stop(&mut figures);
    figures
}

/// The admin's client of the real control plane.
async fn client(kubeconfig: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Creates `objects` as the admin, `IN_FLIGHT` at a time.
async fn create_all(admin: &kube::Client, objects: Vec<Value>) {
    let mut apis = std::collections::HashMap::new();
    for o in &objects {
        let (api_version, kind) = (o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap());
        if let std::collections::hash_map::Entry::Vacant(entry) = apis.entry((api_version, kind)) {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let found = pinned_kind(admin, &GroupVersionKind::gvk(group, version, kind))
                .await
                .unwrap();
            entry.insert(found.0);
        }
    }
    futures::stream::iter(objects.iter().map(|o| {
        let resource = &apis[&(o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap())];
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(admin.clone(), ns, resource),
            None => Api::all_with(admin.clone(), resource),
        };
        let object: DynamicObject = serde_json::from_value(o.clone()).unwrap();
        async move { api.create(&PostParams::default(), &object).await.map(|_| ()) }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await
    .expect("create");
}

/// How many Pods exist (a list of one item and the count of the rest, from etcd).
async fn count_pods(admin: &kube::Client) -> usize {
    let list = Api::<Pod>::all(admin.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap();
    list.items.len() + list.metadata.remaining_item_count.unwrap_or(0) as usize
}

/// Requests dispatched for ServiceAccounts (API Priority and Fairness' `service-accounts` flow
/// schema): copycat's, since the controller manager and this benchmark are `system:masters`.
fn service_account_requests(cluster: &Cluster) -> u64 {
    let text = cluster
        .kubectl(&["get", "--raw", "/metrics"])
        .expect("the API server's metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_dispatched_requests_total{")
                && l.contains("flow_schema=\"service-accounts\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn real(size: Size) -> Figures {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let began = Instant::now();
    let cluster = Cluster::start().expect("start the real control plane (scripts/cluster.sh build)");
    eprintln!("real: control plane ready in {:.1?}", cluster.started_in());
    cluster
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/k8s.yaml"),
        ])
        .expect("apply the manifest");
    let (admin, kubeconfig, objects) = runtime.block_on(async {
        let admin = client(cluster.kubeconfig_path()).await;
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), "k8s-copycat")
            .delete("k8s-copycat", &DeleteParams::default())
            .await
            .unwrap();
        create_all(&admin, namespaces()).await;
        let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &namespace(NAMESPACES - 1));
        let deadline = Instant::now() + Duration::from_secs(120);
        while sa.get_opt("default").await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "no default ServiceAccounts");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let workloads = workloads(size);
        let objects = NAMESPACES + workloads.len() + size.deployments() + size.pods;
        create_all(&admin, workloads).await;
        // The controller manager makes the ReplicaSets and Pods; bounded.
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut last = Instant::now();
        loop {
            let pods = count_pods(&admin).await;
            if pods >= size.pods {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {pods} of {} Pods after 20 minutes",
                size.pods
            );
            if last.elapsed() > Duration::from_secs(15) {
                eprintln!("real: {pods} of {} Pods", size.pods);
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(admin.clone(), "k8s-copycat")
            .create_token_request("k8s-copycat", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        let kubeconfig = cluster.write_kubeconfig("copycat", &token).unwrap();
        (admin, kubeconfig, objects)
    });
    let mut figures = Figures {
        objects,
        setup: began.elapsed(),
        ..Figures::default()
    };
    eprintln!("real: {objects} objects in {:.0?}", figures.setup);

    let pods: Vec<(String, String, usize)> = runtime.block_on(async {
        let list = Api::<Pod>::all(admin.clone())
            .list_metadata(&ListParams::default().limit(STATUS_UPDATES as u32))
            .await
            .unwrap();
        list.items
            .into_iter()
            .map(|p| {
                let app = p.metadata.labels.unwrap_or_default().remove("app").unwrap_or_default();
                let d = app.trim_start_matches('a').parse().unwrap_or(0);
                (p.metadata.namespace.unwrap(), p.metadata.name.unwrap(), d)
            })
            .collect()
    });
    // Running, as a kubelet would report them, before copycat starts: the measured updates then
    // change only the restart count, as in the stand-in.
    let set_status = |restarts: u32| {
        runtime.block_on(async {
            futures::stream::iter(pods.iter().map(|(ns, name, d)| {
                let api = Api::<Pod>::namespaced(admin.clone(), ns);
                async move {
                    api.patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(running_status(&image(*d), restarts)),
                    )
                    .await
                    .map(|_| ())
                }
            }))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .expect("status updates");
        })
    };
    set_status(0);
    let requests_before = service_account_requests(&cluster);
    let apiserver = cluster.apiserver_pid().expect("the API server's pid");
    let server_cpu_before = cpu_ticks(apiserver);
    let mut copycat = Copycat::start(&kubeconfig, &[]);
    copycat.wait_planned(&mut figures, Duration::from_secs(300));
    figures.server_cpu = Some((cpu_ticks(apiserver) - server_cpu_before) as f64 / 100.0);
    figures.requests = Some(service_account_requests(&cluster) - requests_before);
    figures.status = copycat.measure(&mut figures, || set_status(1));
    copycat.stop(&mut figures);
    figures
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let with_real = std::env::args().any(|a| a == "--real");
    let size = Size::from_env();
    let mut modes = vec![("stand-in", stand_in(size))];
    if with_real {
        modes.push(("real control plane", real(size)));
    }
    let row = |label: &str, target: &str, value: &dyn Fn(&Figures) -> String| {
        let values: Vec<String> = modes.iter().map(|(_, f)| value(f)).collect();
        println!("| {label} | {} | {target} |", values.join(" | "));
    };
    println!(
        "\n## discovery at scale ({} Pods, {IMAGES} images, DRY_PULL)\n",
        size.pods
    );
    let names: Vec<&str> = modes.iter().map(|(n, _)| *n).collect();
    println!("| measure | {} | target |", names.join(" | "));
    println!("|---|{}---|", "---|".repeat(modes.len()));
    row("objects in the cluster", "", &|f| f.objects.to_string());
    row("setting up (loading or creating them)", "", &|f| {
        format!("{:.0?}", f.setup)
    });
    row("the API server's own lists (as copycat lists)", "", &|f| {
        seconds(f.server_list)
    });
    row("objects kept as image uses", "", &|f| f.kept.to_string());
    row("every watcher listed", "", &|f| seconds(f.listed));
    row("`/readyz` answers 200", "≤ 1 s after the lists", &|f| {
        seconds(f.ready)
    });
    row(
        "`/readyz` after the API server's own lists",
        "≤ 1 s",
        &|f| match (f.ready, f.server_list) {
            (Some(r), Some(l)) => format!("{:+.2} s", r.as_secs_f64() - l.as_secs_f64()),
            _ => "—".into(),
        },
    );
    row("every task planned", "≤ 5 s", &|f| seconds(f.planned));
    row("CPU of copycat until planned", "≤ 3 s at 50,000 Pods", &|f| {
        format!("{:.2} s", f.planned_cpu)
    });
    row(
        "plan passes until planned: full, incremental",
        "a handful of full",
        &|f| format!("{}, {}", f.passes.0, f.passes.1),
    );
    row("CPU of the API server meanwhile", "", &|f| {
        f.server_cpu.map_or("—".into(), |c| format!("{c:.2} s"))
    });
    row("peak RSS of copycat", "≤ 150 MiB at 50,000 Pods", &|f| {
        format!("{} MiB", f.peak_mib)
    });
    row("requests to the API server until planned", "", &|f| {
        f.requests.map_or("—".into(), |r| r.to_string())
    });
    row("CPU on 1,000 Pod status updates", "< 1 s", &|f| {
        format!("{:.2} s", f.status.cpu)
    });
    row(
        "plans that submitted work after those updates",
        "0 (no registry request)",
        &|f| f.status.replans.to_string(),
    );
    row("CPU on 1,000 Pods changed to a new image each", "≤ 0.5 s", &|f| {
        format!("{:.2} s", f.changes.cpu)
    });
    row("tasks submitted, copies made after those changes", "1000, 1000", &|f| {
        format!("{}, {}", f.changes.submitted, f.changes.mirrored)
    });
    row("exit after SIGTERM", "0", &|f| format!("{:?}", f.exit));
}

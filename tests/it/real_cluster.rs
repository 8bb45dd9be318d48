//! copycat against a real control plane (`testkit::cluster`: etcd, kube-apiserver with RBAC and
//! service-account tokens, kube-controller-manager, built from Kubernetes v1.35.4): the install
//! manifest applied with the real kubectl, copycat running outside the cluster as the manifest's
//! ServiceAccount (a TokenRequest token, RBAC enforced) with the ConfigMap's settings, the
//! controller manager making the ReplicaSets, Pods and Jobs. Each test starts its own control plane.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::{Value, json};
use testkit::cluster::Cluster;
use testkit::{Image, Registry, RegistryMode, list_tags, manifest_digest};

use crate::drills::{assert_dry_run, assert_identical, assert_written_once, metric, wait_for};
use crate::image_objects::{condition, tag_field, tag_results};
use crate::manifests::{objects, strings};
use crate::server::Daemon;
use crate::support::{config_file, copycat_requests, eventually, manifest_puts, start};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/k8s.yaml");
/// copycat's namespace and the name of its ServiceAccount, roles and Lease in the manifest.
const NS: &str = "k8s-copycat";
/// How long a test waits for copycat or the controller manager to do something.
const WAIT: Duration = Duration::from_secs(90);
/// The daemon's lease duration.
const LEASE: Duration = Duration::from_secs(copycat::leader::LEASE_DURATION);
/// image-operator's CRD as shipped.
const IMAGE_CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/crds/images.skopeo.io.yaml");

/// A running control plane and an admin client for it.
pub(crate) struct Real {
    pub(crate) cluster: Cluster,
    pub(crate) admin: kube::Client,
}

/// A `kube` client from a kubeconfig file (TLS with the cluster's CA, bearer token).
pub(crate) async fn client(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

impl Real {
    /// Starts a control plane (failing with how to build it when `copycat-cluster` is missing).
    pub(crate) async fn start() -> Real {
        let cluster = Cluster::start().expect("start the real control plane (testkit::cluster)");
        eprintln!("control plane ready in {:.1?}", cluster.started_in());
        let admin = client(cluster.kubeconfig_path()).await;
        Real { cluster, admin }
    }

    /// `kubectl apply --server-side -f manifests/k8s.yaml` as the admin, checking that every
    /// object of the manifest was applied; then the manifest's Deployment is deleted: copycat runs
    /// outside the cluster in its place (there is no kubelet, and its image is not published).
    pub(crate) async fn install(&self) {
        let out = self
            .cluster
            .kubectl(&["apply", "--server-side", "-f", MANIFEST])
            .expect("kubectl apply --server-side -f manifests/k8s.yaml");
        for object in objects() {
            let kind = object["kind"].as_str().unwrap().to_lowercase();
            let group = object["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map(|(g, _)| format!(".{g}"))
                .unwrap_or_default();
            let line = format!(
                "{kind}{group}/{} serverside-applied",
                object["metadata"]["name"].as_str().unwrap()
            );
            assert!(out.contains(&line), "{line} missing in kubectl's output: {out}");
        }
        self.delete("apps/v1", "Deployment", Some(NS), "k8s-copycat").await;
        eventually(
            "the manifest's Pod removed by the garbage collector",
            WAIT,
            async || self.list("v1", "Pod", NS).await.is_empty(),
        )
        .await;
    }

    async fn api(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = pinned_kind(&self.admin, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovery of {api_version} {kind}: {e}"));
        match (caps.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.admin.clone(), ns, &resource),
            _ => Api::all_with(self.admin.clone(), &resource),
        }
    }

    /// Server-side apply of `object` as the admin.
    pub(crate) async fn apply(&self, object: Value) -> DynamicObject {
        let (kind, name) = (object["kind"].clone(), object["metadata"]["name"].clone());
        self.try_apply(object)
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"))
    }

    /// Server-side apply of `object` as the admin, the API server's refusal returned.
    pub(crate) async fn try_apply(&self, object: Value) -> kube::Result<DynamicObject> {
        let (api_version, kind) = (object["apiVersion"].as_str().unwrap(), object["kind"].as_str().unwrap());
        let name = object["metadata"]["name"].as_str().unwrap();
        self.api(api_version, kind, object["metadata"]["namespace"].as_str())
            .await
            .patch(
                name,
                &PatchParams::apply("copycat-tests").force(),
                &Patch::Apply(&object),
            )
            .await
    }

    /// `kubectl apply --server-side -f FILE` of a CRD, then waits until it is established (served).
    pub(crate) fn install_crd(&self, file: &Path, name: &str) {
        let file = file.display().to_string();
        self.cluster
            .kubectl(&["apply", "--server-side", "-f", &file])
            .unwrap_or_else(|e| panic!("kubectl apply -f {file}: {e}"));
        self.cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}"),
            ])
            .unwrap_or_else(|e| panic!("CRD {name} established: {e}"));
    }

    /// The `Image` object `namespace/name` (`skopeo.io/v1alpha1`) as the admin reads it.
    pub(crate) async fn image_object(&self, namespace: &str, name: &str) -> Option<DynamicObject> {
        self.api("skopeo.io/v1alpha1", "Image", Some(namespace))
            .await
            .get_opt(name)
            .await
            .unwrap()
    }

    /// The status of the `Image` object `namespace/name` (`Null` when none was written).
    pub(crate) async fn image_status(&self, namespace: &str, name: &str) -> Value {
        self.image_object(namespace, name)
            .await
            .map(|o| o.data["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Deletes an object (in the background: the garbage collector removes what it owns).
    pub(crate) async fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        self.api(api_version, kind, namespace)
            .await
            .delete(name, &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("delete {kind} {name}: {e}"));
    }

    /// Objects of a kind in `namespace`.
    pub(crate) async fn list(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<DynamicObject> {
        self.api(api_version, kind, Some(namespace))
            .await
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Creates `namespace` and waits for the controller manager to give it its `default`
    /// ServiceAccount (Pods cannot be created before).
    pub(crate) async fn namespace(&self, namespace: &str) {
        self.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
            .await;
        let accounts = Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace);
        eventually("the default ServiceAccount", WAIT, async || {
            accounts.get_opt("default").await.unwrap().is_some()
        })
        .await;
    }

    /// A token of ServiceAccount `namespace/account` from the TokenRequest API, valid for an hour.
    pub(crate) async fn token(&self, namespace: &str, account: &str) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace)
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{account}: {e}"))
            .status
            .expect("a TokenRequest answer has a status")
            .token
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/account`.
    pub(crate) async fn kubeconfig_as(&self, namespace: &str, account: &str) -> PathBuf {
        let token = self.token(namespace, account).await;
        self.cluster
            .write_kubeconfig(&format!("{namespace}-{account}"), &token)
            .unwrap()
    }

    /// The ConfigMap's `config.yaml`, as the cluster holds it, in a file.
    pub(crate) async fn configmap_config(&self) -> tempfile::NamedTempFile {
        let configmap = Api::<ConfigMap>::namespaced(self.admin.clone(), NS)
            .get("k8s-copycat-config")
            .await
            .unwrap();
        let text = configmap.data.unwrap().remove("config.yaml").unwrap();
        crate::support::config_file(&text)
    }

    /// The holder of the Lease `k8s-copycat` in `namespace`.
    pub(crate) async fn lease_holder(&self, namespace: &str) -> Option<String> {
        Api::<Lease>::namespaced(self.admin.clone(), namespace)
            .get_opt("k8s-copycat")
            .await
            .unwrap()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    }

    /// copycat's `MirrorFailed` Events in `namespace`.
    pub(crate) async fn mirror_failed_events(&self, namespace: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.admin.clone(), namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("MirrorFailed"))
            .collect()
    }
}

/// copycat as the manifest's Deployment runs it, but outside the cluster: the ConfigMap's file,
/// `POD_NAMESPACE`, `HOSTNAME` (the Lease identity), leader election on; `env` on top.
pub(crate) fn copycat(kubeconfig: &Path, config: &Path, identity: &str, env: &[(&str, &str)]) -> Daemon {
    let config = config.display().to_string();
    let mut all = vec![
        ("CONFIG_PATH", config.as_str()),
        ("LEADER_ELECT", "true"),
        ("POD_NAMESPACE", NS),
        ("HOSTNAME", identity),
    ];
    all.extend_from_slice(env);
    Daemon::start(kubeconfig, &all)
}

/// A workload of `kind` in `namespace` running `image` in container `c`, as a real API server
/// accepts it: its own labels and selector, `restartPolicy: Never` for Jobs, a CronJob that runs
/// every minute, a DaemonSet tolerating every taint (a Node without kubelet is tainted not-ready).
pub(crate) fn workload(kind: &str, namespace: &str, name: &str, image: &str) -> Value {
    let containers = json!([{"name": "c", "image": image}]);
    let labels = json!({"app": name});
    let template = |extra: Value| {
        let mut spec = json!({"containers": containers});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"metadata": {"labels": labels}, "spec": spec})
    };
    let (api_version, spec) = match kind {
        "Deployment" => (
            "apps/v1",
            json!({"selector": {"matchLabels": labels}, "template": template(json!({}))}),
        ),
        "StatefulSet" => (
            "apps/v1",
            json!({"serviceName": name, "selector": {"matchLabels": labels}, "template": template(json!({}))}),
        ),
        "DaemonSet" => (
            "apps/v1",
            json!({"selector": {"matchLabels": labels},
                   "template": template(json!({"tolerations": [{"operator": "Exists"}]}))}),
        ),
        "Job" => (
            "batch/v1",
            json!({"backoffLimit": 0, "template": template(json!({"restartPolicy": "Never"}))}),
        ),
        "CronJob" => (
            "batch/v1",
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"backoffLimit": 0,
                   "template": template(json!({"restartPolicy": "Never"}))}}}),
        ),
        "Pod" => {
            return json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                          "spec": {"containers": containers}});
        }
        other => panic!("no workload kind {other}"),
    };
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// An `Image` object (`skopeo.io/v1alpha1`) `namespace/name` with `spec`.
pub(crate) fn image_object(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "skopeo.io/v1alpha1", "kind": "Image",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// The ConfigMap's `config.yaml` (`text`) with `images.enabled` (watching `namespace` only) and
/// `fluxImageRepositories.enabled` set.
fn declarative_settings(text: &str, namespace: &str) -> String {
    let mut text = text.to_owned();
    for (off, on) in [
        (
            "images:\n  enabled: false\n  namespaces: []",
            format!("images:\n  enabled: true\n  namespaces: [{namespace}]"),
        ),
        (
            "fluxImageRepositories:\n  enabled: false",
            "fluxImageRepositories:\n  enabled: true".to_owned(),
        ),
    ] {
        assert_eq!(text.matches(off).count(), 1, "{off:?} in the ConfigMap: {text}");
        text = text.replace(off, &on);
    }
    text
}

/// A Node without a kubelet (the DaemonSet controller makes a Pod for it).
pub(crate) fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}})
}

/// Every workload kind, the images they run and where copycat mirrors them (`repoPrefix:
/// "mirror/$namespace"` in the ConfigMap).
struct Shop {
    images: Vec<(&'static str, &'static str, Image)>,
}

impl Shop {
    /// Pushes one image per kind to `src` (every manifest shape) and applies the workloads in
    /// namespace `shop`, a Pod in `kube-system` (skipped by the ConfigMap's `skipNamespaces`) and a
    /// Deployment whose image does not exist (it fails: an Event).
    async fn deploy(real: &Real, src: &Registry) -> Shop {
        let images = vec![
            ("Deployment", "web", Image::oci("amd64", &[1500, 700], 1301).unwrap()),
            ("StatefulSet", "db", Image::oci_index(&[1500], true, 1302).unwrap()),
            ("DaemonSet", "agent", Image::docker("amd64", &[1500], 1303).unwrap()),
            ("Job", "batch", Image::docker_manifest_list(&[1500], 1304).unwrap()),
            ("CronJob", "nightly", Image::oci("amd64", &[1500], 1305).unwrap()),
            ("Pod", "solo", Image::oci("amd64", &[1500], 1306).unwrap()),
        ];
        for (_, name, image) in &images {
            image.push(src, &format!("shop/{name}"), "1").await.unwrap();
        }
        Image::oci("amd64", &[900], 1307)
            .unwrap()
            .push(src, "shop/system", "1")
            .await
            .unwrap();
        real.namespace("shop").await;
        real.apply(node("node-a")).await;
        for (kind, name, _) in &images {
            real.apply(workload(kind, "shop", name, &format!("{}/shop/{name}:1", src.host())))
                .await;
        }
        real.apply(workload(
            "Pod",
            "kube-system",
            "system",
            &format!("{}/shop/system:1", src.host()),
        ))
        .await;
        real.apply(workload(
            "Deployment",
            "shop",
            "broken",
            &format!("{}/shop/missing:1", src.host()),
        ))
        .await;
        Shop { images }
    }

    /// `(target repository, tag)` of each image.
    fn targets(&self) -> Vec<String> {
        self.images
            .iter()
            .map(|(_, name, _)| format!("mirror/shop/shop/{name}"))
            .collect()
    }
}

/// Waits until the controller manager made the Pods of every kind that makes Pods here.
async fn wait_for_controllers(real: &Real) {
    eventually(
        "ReplicaSets and Pods made by the controller manager",
        WAIT,
        async || {
            let pods = real.list("v1", "Pod", "shop").await;
            let owned_by = |kind: &str| {
                pods.iter().any(|p| {
                    p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == kind && o.controller == Some(true))
                })
            };
            ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"]
                .iter()
                .all(|k| owned_by(k))
        },
    )
    .await;
}

/// Issue 13, §2: `kubectl apply --server-side -f manifests/k8s.yaml`, then copycat as the manifest's
/// ServiceAccount with the ConfigMap's settings. First as shipped (`dryRun: true`): nothing written
/// at the target, every would-be target logged, the Lease held. Then with `DRY_RUN=false`: every
/// kind mirrored byte-exact, `kube-system` skipped, an Event on the Deployment whose image fails,
/// accepted by the real server; no request refused by RBAC.
#[tokio::test]
async fn the_manifest_installs_and_copycat_mirrors_every_kind_as_its_service_account() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let real = Real::start().await;
    real.install().await;
    let shop = Shop::deploy(&real, &src).await;
    wait_for_controllers(&real).await;
    let kubeconfig = real.kubeconfig_as(NS, "k8s-copycat").await;
    let config = real.configmap_config().await;
    let target = dst.host();

    // As shipped: a dry run.
    let dry = copycat(
        kubeconfig.as_path(),
        config.path(),
        "copycat-dry",
        &[("TARGET_REGISTRY", &target)],
    );
    let would_be: Vec<String> = shop.targets().iter().map(|repo| format!("{target}/{repo}:1")).collect();
    eventually("every target decided in the dry run", WAIT, async || {
        let (code, body) = dry.get("/status").await;
        code == 200 && would_be.iter().all(|t| body.contains(&format!("\"target\":\"{t}\"")))
    })
    .await;
    assert_eq!(real.lease_holder(NS).await.as_deref(), Some("copycat-dry"));
    let (code, log) = dry.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_dry_run(&log, &would_be, &dst);
    assert!(
        real.mirror_failed_events("shop").await.is_empty(),
        "a dry run emits no Event"
    );
    assert_eq!(real.lease_holder(NS).await, None, "the Lease is released on SIGTERM");

    // For real.
    let daemon = copycat(
        kubeconfig.as_path(),
        config.path(),
        "copycat",
        &[("TARGET_REGISTRY", &target), ("DRY_RUN", "false")],
    );
    for repo in shop.targets() {
        wait_for(&dst, &repo, "1").await;
    }
    eventually("the MirrorFailed Event on the broken Deployment", WAIT, async || {
        real.mirror_failed_events("shop").await.iter().any(|e| {
            e.involved_object.kind.as_deref() == Some("Deployment")
                && e.involved_object.name.as_deref() == Some("broken")
                && e.involved_object.uid.is_some()
                && e.type_.as_deref() == Some("Warning")
                && e.reporting_instance.as_deref() == Some("copycat")
        })
    })
    .await;
    assert_eq!(real.lease_holder(NS).await.as_deref(), Some("copycat"));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    for ((_, _, image), repo) in shop.images.iter().zip(shop.targets()) {
        assert_identical(&dst, &repo, "1", image).await;
    }
    assert_written_once(&dst);
    assert!(!log.contains("forbidden"), "a request refused by RBAC: {log}");
    assert!(
        !copycat_requests(&src).iter().any(|r| r.path.contains("/shop/system/")),
        "kube-system is skipped by the ConfigMap"
    );
}

/// One permission of the manifest's roles, and what copycat does without it.
struct Permission {
    role: &'static str,
    group: String,
    resource: String,
    verb: String,
    /// The rule's `resourceNames` (empty: every object), kept when the roles are rebuilt.
    names: Vec<String>,
}

impl Permission {
    /// The case's name (the Lease identity and, after `rbac-`, its namespace).
    fn id(&self) -> String {
        format!("no-{}-{}", self.verb, self.resource.replace('/', "-"))
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {}/{} in the {}", self.verb, group, self.resource, self.role)
    }
}

/// Every `(role, group, resource, verb)` the manifest grants copycat, its opt-in `imagerepositories`
/// rule uncommented ([`cluster_role_with_flux`]).
fn granted() -> Vec<Permission> {
    let mut out = Vec::new();
    let roles = objects().into_iter().map(|o| match o["kind"] == "ClusterRole" {
        true => cluster_role_with_flux(),
        false => o,
    });
    for object in roles {
        let role = match object["kind"].as_str() {
            Some("ClusterRole") => "ClusterRole",
            Some("Role") => "Role",
            _ => continue,
        };
        for rule in object["rules"].as_array().unwrap() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.push(Permission {
                            role,
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            names: rule.get("resourceNames").map(strings).unwrap_or_default(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The manifest's rules of `role` without `missing` (each permission a rule of its own, with its
/// rule's `resourceNames`: no more than the manifest grants).
fn rules_without(role: &str, missing: Option<&Permission>) -> Vec<Value> {
    let mut rules = Vec::new();
    for p in granted().into_iter().filter(|p| p.role == role) {
        let dropped = missing
            .is_some_and(|m| (m.role, &m.group, &m.resource, &m.verb) == (p.role, &p.group, &p.resource, &p.verb));
        if dropped {
            continue;
        }
        let mut rule = json!({"apiGroups": [p.group], "resources": [p.resource], "verbs": [p.verb]});
        if !p.names.is_empty() {
            rule["resourceNames"] = json!(p.names);
        }
        rules.push(rule);
    }
    rules
}

/// What breaks without a permission, as an operator sees it. `None`: no known use (a permission
/// the manifest should not grant).
fn breaks_without(p: &Permission) -> Option<&'static str> {
    Some(match (p.resource.as_str(), p.verb.as_str()) {
        ("leases", "get") | ("leases", "create") => "copycat does not start (exit 1): it cannot use its Lease",
        ("leases", "patch") => "copycat never leads, so never mirrors: it cannot take the Lease",
        ("namespaces", "list") => "no warning about includeNamespaces naming a missing namespace",
        ("events", "create") => "no MirrorFailed Event on workloads whose image fails",
        ("nodes", "list") => "checkNodePlatform: copycat never becomes ready (Nodes are not listed)",
        ("nodes", "watch") => "checkNodePlatform: Node changes are not followed",
        ("images", "list") => "images.enabled: Image objects are not followed (never listed), no status",
        ("imagerepositories", "list") => "fluxImageRepositories.enabled: no scan is followed (never listed)",
        ("secrets", "get") => "spec.secretRef: the Secret is not read, copies use the configured credentials",
        ("images/status", "patch") => "images.enabled: an Image's status (conditions, tags) is never written",
        ("customresourcedefinitions", "get") => "images.enabled, fluxImageRepositories.enabled stay off: no CRD read",
        ("namespaces", _) | ("nodes", _) | ("leases", _) | ("events", _) => return None,
        (_, "list") => "copycat never becomes ready: the kind is not listed",
        (_, "watch") => "changes of the kind are not followed after the initial list",
        (kind, "get") if event_kind(kind).is_some() => {
            "no MirrorFailed Event on this kind: copycat cannot read the workload it is about"
        }
        _ => return None,
    })
}

/// The kind of the workloads of `resource` that Events are put on.
fn event_kind(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "pods" => "Pod",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        _ => return None,
    })
}

/// Issue 13, §2: each permission of the manifest's roles removed in turn (each case its own
/// ServiceAccount, roles and Lease namespace, all running at once): copycat reports the refusal
/// naming the verb and the resource, and stops on SIGTERM (no hang); every permission is needed by
/// something, and with all of them nothing is refused. Issue 15: with `images.enabled` (the CRD
/// installed, each case following an `Image` in its own namespace) and `fluxImageRepositories.enabled`
/// (a minimal CRD of Flux's, [`flux_crd`]; the manifest's opt-in `imagerepositories` rule uncommented).
#[tokio::test]
async fn each_rbac_permission_is_needed_and_its_absence_is_reported() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let real = Real::start().await;
    real.install().await;
    real.install_crd(Path::new(IMAGE_CRD), "images.skopeo.io");
    let flux = config_file(&flux_crd().to_string());
    real.install_crd(flux.path(), "imagerepositories.image.toolkit.fluxcd.io");
    // An ImageRepository with a scan and a spec.secretRef (every case follows it cluster-wide): each
    // case's leader mirrors the scan and reads the Secret.
    real.namespace("shop").await;
    real.apply(pull_secret("shop", "pull", &src.host())).await;
    real.apply(
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
                      "metadata": {"name": "scanned", "namespace": "shop"},
                      "spec": {"image": format!("{}/missing/scanned", src.host()), "interval": "5m",
                               "secretRef": {"name": "pull"}}}),
    )
    .await;
    flux_scan(&real, ("shop", "scanned"), "rev-1", &["1"], "2026-12-07T17:00:00Z").await;
    // Every kind with an image that does not exist at the source: each fails, and copycat reads
    // the workload (get) to put a MirrorFailed Event (create) on it.
    real.apply(node("node-a")).await;
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"] {
        let name = kind.to_lowercase();
        real.apply(workload(
            kind,
            "shop",
            &name,
            &format!("{}/missing/{name}:1", src.host()),
        ))
        .await;
    }
    let configmap = std::fs::read_to_string(real.configmap_config().await.path()).unwrap();
    let target = dst.host();

    let mut cases: Vec<Option<Permission>> = vec![None];
    cases.extend(granted().into_iter().map(Some));
    let unknown: Vec<String> = cases
        .iter()
        .flatten()
        .filter(|p| breaks_without(p).is_none())
        .map(|p| p.to_string())
        .collect();
    assert!(
        unknown.is_empty(),
        "the manifest grants permissions copycat has no use for: {unknown:?}"
    );

    let mut report = Vec::new();
    // A few at a time on a 2-core machine.
    for batch in cases.chunks(7) {
        let mut running = Vec::new();
        for case in batch {
            let id = case.as_ref().map_or("all".to_owned(), Permission::id);
            let ns = format!("rbac-{id}");
            real.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .await;
            real.apply(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "copycat", "namespace": ns}}),
            )
            .await;
            let subject = json!([{"kind": "ServiceAccount", "name": "copycat", "namespace": ns}]);
            let rbac = "rbac.authorization.k8s.io/v1";
            real.apply(
                json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": ns},
                              "rules": rules_without("ClusterRole", case.as_ref())}),
            )
            .await;
            real.apply(
                json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": ns},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ns},
                              "subjects": subject}),
            )
            .await;
            real.apply(
                json!({"apiVersion": rbac, "kind": "Role", "metadata": {"name": "copycat", "namespace": ns},
                              "rules": rules_without("Role", case.as_ref())}),
            )
            .await;
            real.apply(
                json!({"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": "copycat", "namespace": ns},
                              "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "copycat"},
                              "subjects": subject}),
            )
            .await;
            // An Image whose source does not exist: its copy fails, reported on its status.
            real.apply(image_object(
                &ns,
                "missing",
                json!({"mode": "OneShot", "source": {"name": format!("{}/missing/image", src.host()), "version": "1"},
                       "destination": {"name": "missing/image"}}),
            ))
            .await;
            let config = config_file(&declarative_settings(&configmap, &ns));
            let kubeconfig = real.kubeconfig_as(&ns, "copycat").await;
            let daemon = copycat(
                &kubeconfig,
                config.path(),
                &id,
                &[
                    ("TARGET_REGISTRY", &target),
                    ("DRY_RUN", "false"),
                    ("POD_NAMESPACE", &ns),
                    ("CHECK_NODE_PLATFORM", "true"),
                    // A namespace that does not exist: the start-up check lists namespaces. The glob
                    // keeps the watches cluster-wide, as the shipped ClusterRole expects (plain names
                    // alone are watched namespace by namespace and read each namespace instead).
                    ("INCLUDE_NAMESPACES", "shop,rbac-typo,rbac-*"),
                ],
            );
            running.push((case, id, daemon, config));
        }
        for (case, id, daemon, _config) in running {
            let outcome = match case {
                None => all_granted(&real, daemon, &id).await,
                Some(p) => one_missing(&real, daemon, &id, p).await,
            };
            report.push(outcome);
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// With every permission: ready, leading, an Event on each kind, the Image's status written, the
/// ImageRepository's scan mirrored (its Secret read), nothing refused.
async fn all_granted(real: &Real, daemon: Daemon, id: &str) -> String {
    eventually("ready and leading with every permission", WAIT, async || {
        daemon.probe("/readyz").await.0 == 200 && metric(&daemon, "k8s_copycat_leader").await == Some(1.0)
    })
    .await;
    eventually("an Event on every kind", WAIT, async || {
        let events = real.mirror_failed_events("shop").await;
        ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"]
            .iter()
            .all(|kind| {
                events.iter().any(|e| {
                    e.reporting_instance.as_deref() == Some(id) && e.involved_object.kind.as_deref() == Some(kind)
                })
            })
    })
    .await;
    eventually("the ImageRepository's scan mirrored", WAIT, async || {
        metric(&daemon, r#"k8s_copycat_flux_scans_total{result="mirrored"}"#).await == Some(1.0)
    })
    .await;
    eventually("the Image's failed copy on its status", WAIT, async || {
        condition(&real.image_status(&format!("rbac-{id}"), "missing").await, "Failed")
            == ("True".to_owned(), "CopyFailed".to_owned())
    })
    .await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("rbac-typo"), "the includeNamespaces check ran: {log}");
    assert!(log.contains("watching Image objects"), "{log}");
    assert!(log.contains("watching Flux ImageRepository objects"), "{log}");
    assert!(!log.contains("forbidden"), "refused with every permission: {log}");
    format!(
        "{id:<28} ready, leading, an Event on every kind, the Image's status written, a scan mirrored, nothing refused"
    )
}

/// Without `p`: the refusal is logged naming verb and resource, and the behaviour that needs it
/// is missing; the process exits by itself (Lease) or on SIGTERM within the bound.
async fn one_missing(real: &Real, mut daemon: Daemon, id: &str, p: &Permission) -> String {
    let (verb, resource) = (p.verb.as_str(), p.resource.as_str());
    let refusal = format!("cannot {verb} resource \\\"{resource}\\\"");
    let plain = format!("cannot {verb} resource \"{resource}\"");
    // copycat's own report (not only the client library's), naming verb and resource.
    let named = |log: &str| {
        log.lines()
            .any(|l| l.contains(" copycat::") && (l.contains(&refusal) || l.contains(&plain)))
    };
    let exits = resource == "leases" && verb != "patch";
    if exits {
        let (code, log) = daemon.run.wait_exit(WAIT);
        assert_ne!(code, Some(0), "{p}: {log}");
        assert!(named(&log), "without {p} the refusal is not named: {log}");
        return format!("{id:<28} exit {code:?}: {}", line_naming(&log, &plain, &refusal));
    }
    eventually(&format!("the refusal of {p} in the log"), WAIT, async || {
        named(&daemon.run.log())
    })
    .await;
    if let Some(kind) = [("images", "Image"), ("imagerepositories", "ImageRepository")]
        .iter()
        .find_map(|(r, k)| (*r == resource).then_some(k))
    {
        let series = format!(r#"k8s_copycat_watch_events_total{{event="failed",kind="{kind}"}}"#);
        let failed = metric(&daemon, &series).await;
        assert!(
            failed.is_some_and(|n| n >= 1.0),
            "{p}: the refusal is not counted ({failed:?})"
        );
    }
    // The behaviour that needs it is missing.
    match (resource, verb) {
        // Flux's objects get no status from copycat: the refusal (logged, counted) is what there is to see.
        ("imagerepositories", _) => {}
        ("secrets", _) => {
            let unreadable = r#"k8s_copycat_flux_secret_ref_errors_total{reason="unreadable"}"#;
            assert!(metric(&daemon, unreadable).await >= Some(1.0), "{p}: not counted");
        }
        ("images/status", _) => {
            assert_eq!(
                real.image_status(&format!("rbac-{id}"), "missing").await,
                Value::Null,
                "{p}: the Image's status was written anyway"
            );
            let refused = r#"k8s_copycat_status_write_errors_total{reason="forbidden",resource="images"}"#;
            assert!(metric(&daemon, refused).await >= Some(1.0), "{p}: not counted");
        }
        ("images", "list") | ("customresourcedefinitions", _) => assert_eq!(
            real.image_status(&format!("rbac-{id}"), "missing").await,
            Value::Null,
            "{p}: the Image's status was written anyway"
        ),
        ("leases", _) => assert_eq!(metric(&daemon, "k8s_copycat_leader").await, Some(0.0), "{p}"),
        ("namespaces", _) => assert!(
            daemon
                .run
                .log()
                .contains("cannot list namespaces to check includeNamespaces")
        ),
        (_, "list") => assert_eq!(daemon.probe("/readyz").await.0, 503, "{p}: ready without listing"),
        ("events", _) | (_, "get") => {
            let kind = event_kind(resource);
            let events = real.mirror_failed_events("shop").await;
            let emitted = events.iter().any(|e| {
                e.reporting_instance.as_deref() == Some(id)
                    && kind.is_none_or(|k| e.involved_object.kind.as_deref() == Some(k))
            });
            assert!(!emitted, "{p}: an Event was created anyway");
        }
        _ => {}
    }
    let started = Instant::now();
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{p}: no clean stop on SIGTERM: {log}");
    let line = line_naming(&log, &plain, &refusal);
    format!(
        "{id:<28} {:<75} logged: {line} (stopped in {:.1?})",
        breaks_without(p).unwrap(),
        started.elapsed()
    )
}

/// copycat's first log line naming the refusal, shortened.
fn line_naming(log: &str, plain: &str, escaped: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(" copycat::") && (l.contains(plain) || l.contains(escaped)))
        .unwrap_or_default();
    let level = ["ERROR", "WARN"]
        .iter()
        .find(|l| line.contains(*l))
        .copied()
        .unwrap_or("?");
    assert_ne!(level, "?", "a refusal logged below WARN: {line}");
    format!("{level} {}", line.chars().take(300).collect::<String>())
}

/// Issue 13, §2: two replicas on the real Lease API. One leads and mirrors; on SIGTERM it hands the
/// Lease over at once; a third replica joins, and after the leader's SIGKILL it takes over within
/// the lease time. Nothing is mirrored twice.
#[tokio::test]
async fn replicas_hand_the_lease_over_on_sigterm_and_take_it_after_sigkill() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    for (repo, seed) in [("shop/web", 1401), ("shop/late", 1402), ("shop/later", 1403)] {
        Image::oci("amd64", &[1500], seed)
            .unwrap()
            .push(&src, repo, "1")
            .await
            .unwrap();
    }
    let real = Real::start().await;
    real.install().await;
    real.namespace("shop").await;
    real.apply(workload(
        "Deployment",
        "shop",
        "web",
        &format!("{}/shop/web:1", src.host()),
    ))
    .await;
    let kubeconfig = real.kubeconfig_as(NS, "k8s-copycat").await;
    let config = real.configmap_config().await;
    let env = [("TARGET_REGISTRY", dst.host()), ("DRY_RUN", "false".to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replica = |name: &str| copycat(&kubeconfig, config.path(), name, &env);
    let mut replicas: BTreeMap<String, Daemon> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|n| (n.to_owned(), replica(n)))
        .collect();

    let leader = leader_of(&real, &replicas).await;
    wait_for(&dst, "mirror/shop/shop/web", "1").await;

    // SIGTERM: the Lease is released and the other replica takes it at once.
    let stopped = Instant::now();
    let (code, log) = replicas.remove(&leader).unwrap().stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("lease released"), "{log}");
    let second = leader_of(&real, &replicas).await;
    let handover = stopped.elapsed();
    assert!(
        handover < LEASE,
        "a released Lease is taken within the lease time: {handover:?}"
    );
    real.apply(workload(
        "Deployment",
        "shop",
        "late",
        &format!("{}/shop/late:1", src.host()),
    ))
    .await;
    wait_for(&dst, "mirror/shop/shop/late", "1").await;

    // SIGKILL: nothing released; a third replica takes over when the term ends.
    replicas.insert("replica-c".to_owned(), replica("replica-c"));
    eventually("replica-c following", WAIT, async || {
        metric(&replicas["replica-c"], "k8s_copycat_leader").await == Some(0.0)
    })
    .await;
    replicas.get_mut(&second).unwrap().run.kill();
    let killed = Instant::now();
    replicas.remove(&second);
    let third = leader_of(&real, &replicas).await;
    let takeover = killed.elapsed();
    assert_eq!(third, "replica-c");
    assert!(
        takeover <= LEASE + Duration::from_secs(5),
        "a killed leader's Lease is taken within the lease time (plus the follower's poll): {takeover:?}"
    );
    real.apply(workload(
        "Deployment",
        "shop",
        "later",
        &format!("{}/shop/later:1", src.host()),
    ))
    .await;
    wait_for(&dst, "mirror/shop/shop/later", "1").await;
    let (code, log) = replicas.remove("replica-c").unwrap().stop();
    assert_eq!(code, Some(0), "{log}");
    assert_written_once(&dst);
    eprintln!("handover after SIGTERM {handover:.1?}, takeover after SIGKILL {takeover:.1?}");
}

/// The replica that leads, once exactly one of `replicas` says so and the Lease names it.
async fn leader_of(real: &Real, replicas: &BTreeMap<String, Daemon>) -> String {
    let deadline = Instant::now() + LEASE + WAIT;
    loop {
        let mut leading = Vec::new();
        for (name, daemon) in replicas {
            if metric(daemon, "k8s_copycat_leader").await == Some(1.0) {
                leading.push(name.clone());
            }
        }
        if let [one] = leading.as_slice()
            && real.lease_holder(NS).await.as_deref() == Some(one)
        {
            return one.clone();
        }
        assert!(Instant::now() < deadline, "no single leader: {leading:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 13, §2: watch behaviour on a real server. Objects created, changed and deleted while
/// copycat runs are followed; a CronJob's Job made by the controller manager changes nothing;
/// status-only Pod updates cause no registry request; after an API server restart (etcd data kept)
/// changes are followed again; nothing is mirrored twice.
#[tokio::test]
async fn changes_and_an_api_server_restart_are_followed_without_mirroring_twice() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let mut images = BTreeMap::new();
    for (i, reference) in [
        "shop/a:1",
        "shop/a:2",
        "shop/b:1",
        "shop/c:1",
        "shop/d:1",
        "shop/nightly:1",
    ]
    .into_iter()
    .enumerate()
    {
        let image = Image::oci("amd64", &[1500], 1500 + i as u64).unwrap();
        let (repo, tag) = reference.split_once(':').unwrap();
        image.push(&src, repo, tag).await.unwrap();
        images.insert(reference, image);
    }
    let on = |reference: &str| format!("{}/{reference}", src.host());
    let mut real = Real::start().await;
    real.install().await;
    real.namespace("shop").await;
    real.apply(workload("Deployment", "shop", "a", &on("shop/a:1"))).await;
    real.apply(workload("CronJob", "shop", "nightly", &on("shop/nightly:1")))
        .await;
    let kubeconfig = real.kubeconfig_as(NS, "k8s-copycat").await;
    let config = real.configmap_config().await;
    // The periodic backup check is off: it reads each new target (and lists the source's tags for
    // related artifacts) soon after its copy, and this test counts the registry requests that
    // status-only updates cause; a check landing in that window is not one of them.
    let daemon = copycat(
        &kubeconfig,
        config.path(),
        "copycat",
        &[
            ("TARGET_REGISTRY", &dst.host()),
            ("DRY_RUN", "false"),
            ("VERIFY_INTERVAL", "0"),
        ],
    );
    let mirrored = async |reference: &str| {
        let (repo, tag) = reference.split_once(':').unwrap();
        wait_for(&dst, &format!("mirror/shop/{repo}"), tag).await;
    };
    mirrored("shop/a:1").await;
    mirrored("shop/nightly:1").await;

    // Created, changed, deleted while running.
    real.apply(workload("Deployment", "shop", "b", &on("shop/b:1"))).await;
    mirrored("shop/b:1").await;
    real.apply(workload("Deployment", "shop", "a", &on("shop/a:2"))).await;
    mirrored("shop/a:2").await;
    // a:1 stays in use: without a kubelet the new Pod never becomes ready, so the rollout keeps the
    // old Pod (maxUnavailable rounds down to 0), as a stuck rollout would in a real cluster.
    let tracked = async |n: f64| metric(&daemon, "k8s_copycat_images_tracked").await == Some(n);
    eventually("a:1, a:2, b:1 and nightly:1 tracked", WAIT, async || tracked(4.0).await).await;
    real.delete("apps/v1", "Deployment", Some("shop"), "b").await;
    eventually(
        "b forgotten once the garbage collector removed its Pods",
        WAIT,
        async || {
            let pods = real.list("v1", "Pod", "shop").await;
            tracked(3.0).await
                && !pods
                    .iter()
                    .any(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with("b-")))
        },
    )
    .await;

    // The controller manager runs the CronJob (every minute): a Job and its Pod, same image.
    eventually("the CronJob's first Job", Duration::from_secs(90), async || {
        !real.list("batch/v1", "Job", "shop").await.is_empty()
    })
    .await;

    // Status-only updates of a Pod (what a kubelet reports) cause no registry request.
    let requests_before = (copycat_requests(&src).len(), copycat_requests(&dst).len());
    let pod = real
        .list("v1", "Pod", "shop")
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with("a-")))
        .expect("a Pod of Deployment a");
    let pod_name = pod.metadata.name.clone().unwrap();
    let pods = real.api("v1", "Pod", Some("shop")).await;
    let applied = "k8s_copycat_watch_events_total{event=\"applied\",kind=\"Pod\"}";
    let applied_before = metric(&daemon, applied).await.unwrap_or_default();
    for reason in ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"] {
        let status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "c", "image": on("shop/a:2"),
            "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason}}}]}});
        pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    eventually("the status updates seen", WAIT, async || {
        metric(&daemon, applied).await.unwrap_or_default() >= applied_before + 3.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (copycat_requests(&src).len(), copycat_requests(&dst).len()),
        requests_before,
        "status-only updates made registry requests"
    );

    // A restart of the API server (etcd keeps the data): copycat's watches break, then resume or
    // relist, and pick up the changes made right after it is back.
    let watch_restarts = async || {
        let (_, text) = daemon.get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("k8s_copycat_watch_events_total") && l.contains("event=\"restarted\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let restarts_before = watch_restarts().await;
    let took = real.cluster.restart_apiserver().expect("restart the API server");
    eprintln!("API server restarted in {took:.1?}");
    real.admin = client(real.cluster.kubeconfig_path()).await;
    real.apply(workload("Deployment", "shop", "c", &on("shop/c:1"))).await;
    mirrored("shop/c:1").await;
    real.apply(workload("Deployment", "shop", "d", &on("shop/d:1"))).await;
    mirrored("shop/d:1").await;
    let restarts_after = watch_restarts().await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_written_once(&dst);
    for (reference, image) in &images {
        let (repo, tag) = reference.split_once(':').unwrap();
        assert_identical(&dst, &format!("mirror/shop/{repo}"), tag, image).await;
        let copies = log
            .lines()
            .filter(|l| l.contains("mirror copied") && l.contains(&format!("/{reference} ")))
            .count();
        assert_eq!(copies, 1, "{reference} copied {copies} times: {log}");
    }
    let puts = manifest_puts(&dst);
    assert_eq!(puts.len(), images.len(), "{puts:?}");
    eprintln!("watch (re)lists: {restarts_before} before the restart, {restarts_after} after");
}

/// Issue 14 part 3, `copycat failover` against a real kube-apiserver (its validation, defaulting and update rules for each
/// kind, a bare Pod's image updated in place): as the cluster's admin every template is switched and
/// reverted to exactly its spec; as the daemon's ServiceAccount (the manifest's read-only RBAC) the
/// updates are refused and reported, and nothing changes.
#[tokio::test]
async fn failover_switches_every_kind_and_back_and_the_daemons_account_cannot() {
    use crate::commands::text;
    use crate::failover::{ANNOTATION, failover, images};
    use crate::support::start;
    use testkit::{Image, RegistryMode};
    let real = Real::start().await;
    real.install().await;
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let web = Image::oci("amd64", &[1500], 1520).unwrap();
    for reg in [&src, &dst] {
        web.push(reg, "shop/web", "1.0").await.unwrap();
    }
    // No kubelet reports what Pods run: the references pin their digest.
    let image = format!("{}/shop/web:1.0@{}", src.host(), web.digest);
    let mirror = format!("{}/shop/web:1.0@{}", dst.host(), web.digest);
    real.namespace("shop").await;
    real.apply(node("node-a")).await;
    let kinds = [
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "DaemonSet"),
        ("batch/v1", "CronJob"),
        ("v1", "Pod"),
        ("batch/v1", "Job"),
    ];
    for (_, kind) in kinds {
        real.apply(workload(kind, "shop", &kind.to_lowercase(), &image)).await;
    }
    let get = async |api_version: &str, kind: &str| -> Value {
        let name = kind.to_lowercase();
        let object = real
            .list(api_version, kind, "shop")
            .await
            .into_iter()
            .find(|o| o.metadata.name.as_deref() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{kind} shop/{name}"));
        let mut value = serde_json::to_value(object).unwrap();
        value["kind"] = json!(kind);
        value
    };
    let mut before = Vec::new();
    for (api_version, kind) in kinds {
        before.push(get(api_version, kind).await);
    }
    let admin = real.cluster.kubeconfig_path().to_owned();
    let run =
        |kubeconfig: &std::path::Path, args: &[&str]| failover(kubeconfig, &dst, &[&["-n", "shop"], args].concat());

    let out = run(&admin, &["--to-mirror"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "the Job is reported: {all}");
    assert!(all.contains("not patched Job shop/job"), "{all}");
    // The Job and its Pod are reported (how many of its Pods exist yet is the controllers' business).
    assert!(
        all.contains("failover: 5 containers in 5 objects switched to the mirror; 0 containers left as they are,")
            && all.contains(" not patched, 0 errors"),
        "{all}"
    );
    for (api_version, kind) in &kinds[..5] {
        let now = get(api_version, kind).await;
        assert_eq!(images(&now), [format!("c={mirror}")], "{kind}: {all}");
        assert!(now["metadata"]["annotations"][ANNOTATION].is_string(), "{kind}");
    }

    // The daemon's ServiceAccount may read but not write.
    let daemon = real.kubeconfig_as("k8s-copycat", "k8s-copycat").await;
    let out = run(&daemon, &["--revert"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("error Deployment shop/deployment: update:") && all.contains("forbidden"),
        "{all}"
    );
    assert!(all.contains("5 errors"), "{all}");
    for (api_version, kind) in &kinds[..5] {
        assert_eq!(images(&get(api_version, kind).await), [format!("c={mirror}")], "{kind}");
    }

    let out = run(&admin, &["--revert"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for ((api_version, kind), was) in kinds.iter().zip(&before) {
        let now = get(api_version, kind).await;
        assert_eq!(now["spec"], was["spec"], "{kind}: {all}");
        assert!(now["metadata"]["annotations"].get(ANNOTATION).is_none(), "{kind}");
    }
}

/// A `kubernetes.io/dockerconfigjson` Secret `namespace/name` with a login for `registry`.
fn pull_secret(namespace: &str, name: &str, registry: &str) -> Value {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("copycat:not-needed");
    let config = json!({"auths": {registry: {"auth": auth}}}).to_string();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": name, "namespace": namespace},
           "stringData": {".dockerconfigjson": config}})
}

/// copycat as the manifest's ServiceAccount with `settings` (the config file's text, kept in the
/// returned file), mirroring to `target` for real (`DRY_RUN=false`).
async fn copycat_mirroring(real: &Real, settings: &str, target: &str) -> (Daemon, tempfile::NamedTempFile) {
    let config = config_file(settings);
    let kubeconfig = real.kubeconfig_as(NS, "k8s-copycat").await;
    let daemon = copycat(
        &kubeconfig,
        config.path(),
        "copycat",
        &[("TARGET_REGISTRY", target), ("DRY_RUN", "false")],
    );
    (daemon, config)
}

/// The Warning Events on the `Image` object `namespace/name`, by reason.
async fn image_event_reasons(real: &Real, namespace: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(real.admin.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Image")
                && e.involved_object.name.as_deref() == Some(name)
                && e.type_.as_deref() == Some("Warning")
        })
        .filter_map(|e| e.reason)
        .collect()
}

/// Issue 15: image-operator's CRD as shipped, accepted by a real API server (its schema enforced: a
/// mode outside its enum is refused); copycat as the manifest's ServiceAccount with `images.enabled`
/// follows a OneShot `Image` with a version pattern: exactly the matching tags are copied (not the
/// `-rc1`, not `1.3.0` or `latest`), and the status (conditions, one line per tag with its source
/// digest and destination) is written through the real status subresource under RBAC, read back as
/// the admin; an invalid pattern gets `Failed` with its reason and a Warning Event. The spec is
/// never written (generation 1; copycat manages fields of the status subresource only).
#[tokio::test]
async fn image_objects_are_followed_and_their_status_written_through_the_status_subresource() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[1_000], 1501).unwrap();
    for tag in ["1.2.0", "1.2.1", "1.2.2-rc1", "1.3.0", "latest"] {
        image.push(&src, "team/app", tag).await.unwrap();
    }
    let real = Real::start().await;
    real.install().await;
    real.install_crd(Path::new(IMAGE_CRD), "images.skopeo.io");
    real.namespace("team").await;
    let source = format!("{}/team/app", src.host());
    let spec = |version: &str| json!({"mode": "OneShot", "source": {"name": source, "version": version}, "destination": {"name": "team/app"}});
    real.apply(image_object("team", "app", spec("1.2.x"))).await;
    real.apply(image_object("team", "bad-pattern", spec("1.x"))).await;
    let mut bad_mode = spec("1.2.0");
    bad_mode["mode"] = json!("Sometimes");
    match real.try_apply(image_object("team", "bad-mode", bad_mode)).await {
        Err(kube::Error::Api(e)) => assert!(e.code == 422 && e.message.contains("spec.mode"), "{e:?}"),
        other => panic!("the CRD's schema lets a mode outside its enum in: {other:?}"),
    }
    let configmap = std::fs::read_to_string(real.configmap_config().await.path()).unwrap();
    let target = dst.host();
    let (daemon, _config) = copycat_mirroring(&real, &declarative_settings(&configmap, "team"), &target).await;
    eventually("app ready, bad-pattern failed with a Warning Event", WAIT, async || {
        condition(&real.image_status("team", "app").await, "Ready").0 == "True"
            && condition(&real.image_status("team", "bad-pattern").await, "Failed")
                == ("True".to_owned(), "InvalidPattern".to_owned())
            && image_event_reasons(&real, "team", "bad-pattern")
                .await
                .contains(&"InvalidPattern".to_owned())
    })
    .await;
    let mut copied = list_tags(&dst, "team/app").await.unwrap();
    copied.sort();
    assert_eq!(copied, ["1.2.0", "1.2.1"], "exactly the matching releases");
    assert_identical(&dst, "team/app", "1.2.0", &image).await;

    let app = real.image_object("team", "app").await.unwrap();
    let status = &app.data["status"];
    assert_eq!(
        tag_results(status),
        [("1.2.0".into(), "Copied".into()), ("1.2.1".into(), "Copied".into())]
    );
    let digest = manifest_digest(&src, "team/app", "1.2.0").await.unwrap();
    assert_eq!(tag_field(status, "1.2.0", "sourceDigest"), digest);
    assert_eq!(
        tag_field(status, "1.2.0", "destination"),
        Some(format!("{target}/team/app:1.2.0"))
    );
    assert!(status["lastSyncTime"].is_string(), "{status}");
    assert_eq!(app.metadata.generation, Some(1), "the spec was written");
    let copycat_writes: Vec<Option<String>> = app
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("copycat"))
        .map(|m| m.subresource.clone())
        .collect();
    assert_eq!(
        copycat_writes,
        [Some("status".to_owned())],
        "{:?}",
        app.metadata.managed_fields
    );
    let bad = real.image_status("team", "bad-pattern").await;
    assert!(bad["conditions"].to_string().contains("\\\"1.x\\\""), "{bad}");

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("forbidden"), "a request refused by RBAC: {log}");
}

/// A minimal CRD of Flux's `ImageRepository` (`image.toolkit.fluxcd.io/v1`, a status subresource,
/// fields kept as written): Flux's own is not shipped with copycat.
fn flux_crd() -> Value {
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "imagerepositories.image.toolkit.fluxcd.io"},
           "spec": {"group": "image.toolkit.fluxcd.io", "scope": "Namespaced",
                    "names": {"kind": "ImageRepository", "listKind": "ImageRepositoryList",
                              "plural": "imagerepositories", "singular": "imagerepository"},
                    "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                                  "schema": {"openAPIV3Schema": {"type": "object",
                                             "properties": {"spec": open, "status": open}}}}]}})
}

/// The manifest's ClusterRole with the commented rules `fluxImageRepositories.enabled` needs
/// uncommented (`imagerepositories`; `get` on the Secrets `spec.secretRef` names), as
/// docs/install.md tells operators who enable it.
fn cluster_role_with_flux() -> Value {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for resources in ["  #   resources: [imagerepositories]", "  #   resources: [secrets]"] {
        let at = lines
            .iter()
            .position(|l| l == resources)
            .unwrap_or_else(|| panic!("the manifest's commented rule {resources:?}"));
        assert!(lines[at - 1].starts_with("  # - apiGroups: ["), "{text}");
        assert!(lines[at + 1].starts_with("  #   verbs: ["), "{text}");
        for line in &mut lines[at - 1..at + 2] {
            *line = line.replacen("  # ", "  ", 1);
        }
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&lines.join("\n")).unwrap();
    docs.into_iter().find(|d| d["kind"] == "ClusterRole").unwrap()
}

/// Writes a scan result on the `ImageRepository` `namespace/name` through its status subresource,
/// as Flux's image-reflector-controller does.
async fn flux_scan(real: &Real, (namespace, name): (&str, &str), revision: &str, tags: &[&str], at: &str) {
    let status = json!({"status": {"lastScanResult": {"revision": revision, "tagCount": tags.len(),
                                                      "latestTags": tags, "scanTime": at}}});
    real.api("image.toolkit.fluxcd.io/v1", "ImageRepository", Some(namespace))
        .await
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap_or_else(|e| panic!("the scan result of {name}: {e}"));
}

/// Issue 15: Flux's `ImageRepository` (a minimal CRD, [`flux_crd`]) on a real API server, copycat as
/// the manifest's ServiceAccount with the manifest's commented `imagerepositories` rule enabled: an
/// object without a scan result costs nothing; a scan result written through the status subresource
/// mirrors its latest tags once; the same revision rescanned, nothing (not a request to the source);
/// a new revision, its new tag. copycat never writes the object.
#[tokio::test]
async fn flux_image_repository_scans_on_a_real_api_server_mirror_each_new_revision_once() {
    let (src, dst) = (start(RegistryMode::Plain), start(RegistryMode::Plain));
    let image = Image::oci("amd64", &[1_000], 1502).unwrap();
    for tag in ["1.0", "1.1", "1.2"] {
        image.push(&src, "org/app", tag).await.unwrap();
    }
    let real = Real::start().await;
    real.install().await;
    let crd = config_file(&flux_crd().to_string());
    real.install_crd(crd.path(), "imagerepositories.image.toolkit.fluxcd.io");
    real.apply(cluster_role_with_flux()).await;
    real.namespace("flux-system").await;
    real.apply(
        json!({"apiVersion": "image.toolkit.fluxcd.io/v1", "kind": "ImageRepository",
                      "metadata": {"name": "app", "namespace": "flux-system"},
                      "spec": {"image": format!("{}/org/app", src.host()), "interval": "5m"}}),
    )
    .await;
    let configmap = std::fs::read_to_string(real.configmap_config().await.path()).unwrap();
    let prefix = "  destinationPrefix: \"\"";
    let settings = declarative_settings(&configmap, "flux-system");
    assert_eq!(settings.matches(prefix).count(), 1, "{settings}");
    let settings = settings.replace(prefix, "  destinationPrefix: flux/$namespace");
    // This test counts the scans' source requests: the periodic verification of the declared
    // copies (a source HEAD each) is off here; `flux::declared_copies_are_verified_…` covers it.
    let verify = "verifyInterval: 24h ";
    assert_eq!(settings.matches(verify).count(), 1, "{settings}");
    let settings = settings.replace(verify, "verifyInterval: 0 ");
    let target = dst.host();
    let (daemon, _config) = copycat_mirroring(&real, &settings, &target).await;
    eventually("watching ImageRepository objects and leading", WAIT, async || {
        daemon.run.log().contains("watching Flux ImageRepository objects")
            && metric(&daemon, "k8s_copycat_leader").await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(copycat_requests(&src).is_empty(), "nothing before a scan");

    let copied = async |want: &[&str]| {
        let mut tags = list_tags(&dst, "flux/flux-system/org/app").await.unwrap_or_default();
        tags.sort();
        tags == want
    };
    let mirrored = r#"k8s_copycat_flux_scans_total{result="mirrored"}"#;
    flux_scan(
        &real,
        ("flux-system", "app"),
        "rev-1",
        &["1.1", "1.0"],
        "2026-12-07T17:00:00Z",
    )
    .await;
    eventually("rev-1's latest tags copied", WAIT, async || {
        copied(&["1.0", "1.1"]).await && metric(&daemon, mirrored).await == Some(1.0)
    })
    .await;
    let after_first = copycat_requests(&src).len();

    // Flux rescans every interval: the same revision, a new scan time.
    flux_scan(
        &real,
        ("flux-system", "app"),
        "rev-1",
        &["1.1", "1.0"],
        "2026-12-07T17:05:00Z",
    )
    .await;
    eventually("the unchanged revision seen", WAIT, async || {
        metric(&daemon, r#"k8s_copycat_flux_scans_total{result="unchanged"}"#).await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        copycat_requests(&src).len(),
        after_first,
        "a request for an unchanged revision"
    );

    flux_scan(
        &real,
        ("flux-system", "app"),
        "rev-2",
        &["1.2", "1.1"],
        "2026-12-07T17:10:00Z",
    )
    .await;
    eventually("rev-2's new tag copied", WAIT, async || {
        copied(&["1.0", "1.1", "1.2"]).await && metric(&daemon, mirrored).await == Some(1.0 + 1.0)
    })
    .await;
    assert_written_once(&dst);
    assert_identical(&dst, "flux/flux-system/org/app", "1.2", &image).await;
    let object = real
        .api("image.toolkit.fluxcd.io/v1", "ImageRepository", Some("flux-system"))
        .await
        .get("app")
        .await
        .unwrap();
    let managers: Vec<String> = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "copycat"),
        "copycat wrote the object: {managers:?}"
    );

    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("forbidden"), "a request refused by RBAC: {log}");
}

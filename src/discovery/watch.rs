//! One `kube` runtime watcher per watched kind, each reduced on the fly to inventory updates, so no
//! full object is kept after its event.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Secret, ServiceAccount};
use kube::core::NamespaceScope;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::decode::Decoded;
use super::extract::{ContainerImage, controller, node_platform, pod_images, pod_is_active, spec_images};
use super::health::{FAILURE_LOG_INTERVAL, WatchHealth};
use super::inventory::{Feed, Inventory, PullRefs, Seen, Update, Watched};
use super::pull_failures::pull_failures;
use crate::metrics::Metrics;
use crate::registry::credentials::DockerConfigError;
use crate::registry::{DockerAuths, parse_docker_config_json};
use crate::workload::Kind;

/// A kind copycat watches, and how to reduce one of its objects.
trait WatchedObject: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const WATCHED: Watched;

    /// The Pod spec (or Pod template spec) of a workload.
    fn pod_spec(&self) -> Option<&PodSpec> {
        None
    }

    /// The images the object uses.
    fn images(&self) -> Vec<ContainerImage> {
        self.pod_spec().map(spec_images).unwrap_or_default()
    }

    /// The object reduced to what the inventory keeps.
    fn seen(&self) -> Seen {
        default_seen(self)
    }
}

impl WatchedObject for Deployment {
    const WATCHED: Watched = Watched::Workload(Kind::Deployment);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl WatchedObject for StatefulSet {
    const WATCHED: Watched = Watched::Workload(Kind::StatefulSet);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl WatchedObject for DaemonSet {
    const WATCHED: Watched = Watched::Workload(Kind::DaemonSet);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl WatchedObject for Job {
    const WATCHED: Watched = Watched::Workload(Kind::Job);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl WatchedObject for CronJob {
    const WATCHED: Watched = Watched::Workload(Kind::CronJob);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.job_template.spec.as_ref()?.template.spec.as_ref()
    }
}

impl WatchedObject for Pod {
    const WATCHED: Watched = Watched::Workload(Kind::Pod);
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()
    }
    fn images(&self) -> Vec<ContainerImage> {
        if pod_is_active(self) { pod_images(self) } else { vec![] }
    }
    fn seen(&self) -> Seen {
        let node = self.spec.as_ref().and_then(|s| s.node_name.clone());
        Seen {
            node,
            pull_failures: pull_failures(self),
            ..default_seen(self)
        }
    }
}

impl WatchedObject for Node {
    const WATCHED: Watched = Watched::Node;
    fn seen(&self) -> Seen {
        Seen {
            namespace: String::new(),
            platform: node_platform(self),
            ..default_seen(self)
        }
    }
}

impl WatchedObject for ReplicaSet {
    const WATCHED: Watched = Watched::ReplicaSet;
}

impl WatchedObject for Secret {
    const WATCHED: Watched = Watched::Secret;
    fn seen(&self) -> Seen {
        Seen {
            auths: pull_secret_auths(self),
            ..default_seen(self)
        }
    }
}

impl WatchedObject for ServiceAccount {
    const WATCHED: Watched = Watched::ServiceAccount;
    fn seen(&self) -> Seen {
        let secrets = self
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        Seen {
            pull: PullRefs {
                secrets,
                service_account: None,
            },
            ..default_seen(self)
        }
    }
}

/// What the inventory keeps of `object`. One that does not decode is reported and contributes
/// nothing (no images, no owner) until a change makes it decodable; counted as `undecodable` in
/// `k8s_copycat_watch_events_total`.
fn seen<K: WatchedObject>(object: Decoded<K>, metrics: &Metrics) -> Seen {
    let (meta, error) = match object {
        Decoded::Object(o) => return o.seen(),
        Decoded::Undecodable { meta, error } => (meta, error),
    };
    let kind = K::kind(&());
    metrics.watch_event(&kind, "undecodable");
    let (namespace, name) = (meta.namespace.unwrap_or_default(), meta.name.unwrap_or_default());
    // A Secret's decoding error may quote its data.
    let error = if K::WATCHED == Watched::Secret {
        "(not shown for Secrets)".into()
    } else {
        error
    };
    tracing::warn!(%kind, %namespace, %name, %error, "object cannot be decoded; its images are not mirrored until it changes");
    Seen {
        namespace,
        name,
        ..Seen::default()
    }
}

/// What every kind keeps; kinds add their own parts on top.
fn default_seen<K: WatchedObject>(o: &K) -> Seen {
    Seen {
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
        images: o.images(),
        owner: controller(o.meta()),
        node: None,
        platform: None,
        pull: o.pod_spec().map(pull_refs).unwrap_or_default(),
        auths: None,
        created: o.meta().creation_timestamp.as_ref().map(|t| t.0.as_second()),
        pull_failures: vec![],
    }
}

/// The pull secrets a Pod spec names.
fn pull_refs(spec: &PodSpec) -> PullRefs {
    PullRefs {
        secrets: spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect(),
        service_account: spec.service_account_name.clone().filter(|n| !n.is_empty()),
    }
}

/// Registry credentials of a `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` Secret;
/// `None` for other Secrets. A malformed one is reported (by name, never its content) and ignored.
fn pull_secret_auths(secret: &Secret) -> Option<DockerAuths> {
    match docker_config_of(secret)? {
        Ok(auths) => Some(auths),
        Err(e) => {
            tracing::warn!(namespace = secret.namespace().unwrap_or_default(), secret = secret.name_any(),
                error = %e, "pull secret cannot be read; ignoring it");
            None
        }
    }
}

/// The Docker config a pull Secret holds: its `.dockerconfigjson` (`kubernetes.io/dockerconfigjson`)
/// or `.dockercfg` (`kubernetes.io/dockercfg`) parsed; `None` for Secrets of other types or without
/// that key. Errors name the registry key at most, never a credential.
pub fn docker_config_of(secret: &Secret) -> Option<Result<DockerAuths, DockerConfigError>> {
    let key = match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
        Some("kubernetes.io/dockercfg") => ".dockercfg",
        _ => return None,
    };
    let data = secret.data.as_ref()?.get(key)?;
    Some(parse_docker_config_json(&data.0))
}

/// Running watchers; dropping this stops them.
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What to watch for the configured kinds: the kinds themselves, plus ReplicaSets and Jobs when Pods
/// are watched (to resolve a Pod's Deployment or CronJob; Jobs' own images count only when watched),
/// Nodes when `node_platforms` (`checkNodePlatform`) asks for the platform Pods run on, and Secrets
/// and ServiceAccounts when `pull_secrets` (`useImagePullSecrets`) asks for Pods' pull secrets.
pub fn watched_for(kinds: &[Kind], node_platforms: bool, pull_secrets: bool) -> Vec<Watched> {
    let mut out: Vec<Watched> = kinds.iter().map(|k| Watched::Workload(*k)).collect();
    if kinds.contains(&Kind::Pod) {
        out.push(Watched::ReplicaSet);
        if !kinds.contains(&Kind::Job) {
            out.push(Watched::Workload(Kind::Job));
        }
        if node_platforms {
            out.push(Watched::Node);
        }
    }
    if pull_secrets {
        out.extend([Watched::Secret, Watched::ServiceAccount]);
    }
    out
}

/// The watches for `watched`: one per kind in every namespace, or, when `namespaces` lists them, one
/// per kind and namespace, so that a Role in each namespace is all the RBAC needed (Nodes, which
/// belong to no namespace, are always watched cluster-wide).
pub fn feeds(watched: &[Watched], namespaces: Option<&[String]>) -> Vec<Feed> {
    let mut out = Vec::new();
    for &w in watched {
        match namespaces {
            Some(namespaces) if w != Watched::Node => out.extend(namespaces.iter().map(|ns| Feed {
                watched: w,
                namespace: Some(ns.clone()),
            })),
            _ => out.push(w.into()),
        }
    }
    out
}

/// Starts a watcher for each of `feeds`, sending updates to the returned channel and counting the
/// events in `metrics`. Watch errors (connection loss, 410 Gone) are retried with backoff; a 410
/// leads to a relist, whose `InitDone` lets the inventory drop objects deleted meanwhile. Problems
/// are recorded in `health` (for `/readyz`) and counted as `failed` watch events.
pub fn start(
    client: Client,
    feeds: &[Feed],
    metrics: Arc<Metrics>,
    health: &WatchHealth,
) -> (Watchers, mpsc::Receiver<Update>) {
    let (tx, rx) = mpsc::channel(1024);
    let tasks = feeds
        .iter()
        .map(|feed| {
            let (c, ns, tx) = (client.clone(), feed.namespace.as_deref(), tx.clone());
            let metrics = (metrics.clone(), health.clone());
            let feed = feed.clone();
            match feed.watched {
                Watched::Workload(Kind::Deployment) => spawn::<Deployment>(scoped(c, ns), feed, tx, metrics),
                Watched::Workload(Kind::StatefulSet) => spawn::<StatefulSet>(scoped(c, ns), feed, tx, metrics),
                Watched::Workload(Kind::DaemonSet) => spawn::<DaemonSet>(scoped(c, ns), feed, tx, metrics),
                Watched::Workload(Kind::Job) => spawn::<Job>(scoped(c, ns), feed, tx, metrics),
                Watched::Workload(Kind::CronJob) => spawn::<CronJob>(scoped(c, ns), feed, tx, metrics),
                Watched::Workload(Kind::Pod) => spawn::<Pod>(scoped(c, ns), feed, tx, metrics),
                Watched::ReplicaSet => spawn::<ReplicaSet>(scoped(c, ns), feed, tx, metrics),
                Watched::Node => spawn::<Node>(Api::all(c), feed, tx, metrics),
                Watched::Secret => spawn::<Secret>(scoped(c, ns), feed, tx, metrics),
                Watched::ServiceAccount => spawn::<ServiceAccount>(scoped(c, ns), feed, tx, metrics),
            }
        })
        .collect();
    (Watchers { tasks }, rx)
}

/// Why the cluster could not be listed once.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Kubernetes API server at {server} did not list every watched kind (waited {after:.1?}): {}",
    if .problems.is_empty() { "no answer".to_owned() } else { .problems.join("; ") }
)]
pub struct ListError {
    /// The API server (scheme, host, port).
    pub server: String,
    /// How long the lists were waited for.
    pub after: std::time::Duration,
    /// The watches failing or refused (403), as `/readyz` names them.
    pub problems: Vec<String>,
}

/// The inventory of one list of each of `feeds` (the watchers' own first list, so objects are
/// decoded and reduced exactly as the daemon does), for one-shot commands. Waits for every feed
/// readiness waits for (not the optional pull-secret watches) at most `within`, and not at all once
/// the API server refuses one of them (403); the watchers stop when it returns.
pub async fn list_once(
    client: Client,
    server: &str,
    feeds: &[Feed],
    within: std::time::Duration,
) -> Result<Inventory, ListError> {
    let health = WatchHealth::new(server, feeds.len());
    let (watchers, mut updates) = start(client, feeds, Arc::new(Metrics::new()), &health);
    let mut inventory = Inventory::new();
    let listed = |inventory: &Inventory| {
        feeds
            .iter()
            .all(|f| !f.watched.readiness_waits() || inventory.is_synced(f))
    };
    let refused = |inventory: &Inventory| {
        feeds
            .iter()
            .any(|f| f.watched.readiness_waits() && !inventory.is_synced(f) && health.is_forbidden(&f.name()))
    };
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    // Refusals send no update: look for them between updates too.
    let mut look = tokio::time::interval(std::time::Duration::from_millis(200));
    while !listed(&inventory) {
        let gave_up = tokio::select! {
            update = updates.recv() => match update {
                Some(update) => {
                    inventory.apply(update);
                    false
                }
                None => true,
            },
            _ = look.tick() => refused(&inventory),
            () = tokio::time::sleep_until(deadline) => true,
        };
        if gave_up {
            drop(watchers);
            return Err(ListError {
                server: health.server(),
                after: started.elapsed(),
                problems: health.describe(),
            });
        }
    }
    drop(watchers);
    Ok(inventory)
}

/// A namespaced kind in `namespace`, or in every namespace.
fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<Decoded<K>>
where
    K: WatchedObject,
    K::Scope: NamespaceScope,
{
    let all = Api::all(client);
    match namespace {
        Some(ns) => all.constrain(ns),
        None => all,
    }
}

/// The `event` label of `k8s_copycat_watch_events_total` for one watcher event (`None`: the end of
/// a relist, not counted).
pub(crate) fn event_label<K>(event: &Result<watcher::Event<K>, watcher::Error>) -> Option<&'static str> {
    match event {
        Ok(watcher::Event::Init) => Some("restarted"),
        Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => Some("applied"),
        Ok(watcher::Event::Delete(_)) => Some("deleted"),
        Ok(watcher::Event::InitDone) => None,
        Err(_) => Some("failed"),
    }
}

/// The verb and the API server's message when `error` is a 403: RBAC refused the list or the watch
/// (the message names user, verb and resource). It will not heal by itself, unlike the other errors.
pub(crate) fn forbidden_verb(error: &watcher::Error) -> Option<(&'static str, &str)> {
    let (verb, status) = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status)) => ("list", status),
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => ("watch", status),
        watcher::Error::WatchError(status) => ("watch", status),
        _ => return None,
    };
    (status.code == 403).then_some((verb, status.message.as_str()))
}

/// The longest wait between two attempts of a failing watch (kube's default backoff's ceiling).
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the watcher of `K` for `feed`; kube's default backoff spaces its retries (0.8 s doubling to
/// 30 s), so a refusal (403) is logged once per backoff step, and other failures, shared by every
/// watch when the API server is away, at most once per [`FAILURE_LOG_INTERVAL`] across all watches.
fn spawn<K: WatchedObject>(
    api: Api<Decoded<K>>,
    feed: Feed,
    tx: mpsc::Sender<Update>,
    (metrics, health): (Arc<Metrics>, WatchHealth),
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let kind = K::kind(&());
        let watch_name = feed.name();
        let mut events = watcher(api, watcher::Config::default()).boxed();
        // Not kube's `default_backoff()`: it resets on every Ok item, and the watcher yields `Init`
        // before each list attempt, so an unreachable server was retried every 0.8 s for ever.
        // Here the delay grows (0.8 s doubling to 30 s, jittered) until the server answers.
        let mut backoff = DefaultBackoff::default();
        let reduce = |o: Decoded<K>| seen(o, &metrics);
        while let Some(event) = events.next().await {
            if matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init)) {
                backoff.reset();
                if health.delivered(&watch_name) {
                    tracing::info!(
                        server = health.server(),
                        "the Kubernetes API server answers every watch again"
                    );
                }
            }
            if let Some(label) = event_label(&event) {
                metrics.watch_event(&kind, label);
            }
            let update = match event {
                Ok(watcher::Event::Init) => Update::Init(feed.clone()),
                Ok(watcher::Event::InitApply(o)) => Update::InitApply(feed.clone(), reduce(o)),
                Ok(watcher::Event::InitDone) => Update::InitDone(feed.clone()),
                Ok(watcher::Event::Apply(o)) => Update::Apply(K::WATCHED, reduce(o)),
                Ok(watcher::Event::Delete(o)) => Update::Delete(K::WATCHED, reduce(o)),
                Err(e) => {
                    report_failure(&e, &feed, &health);
                    tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
                    continue;
                }
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    })
}

/// Logs and records the failure `error` of the watch for `feed`: a refusal (403) names the
/// permission to grant, each time; other failures are recorded and logged when
/// [`WatchHealth::failed`] says a warning is due, else at debug level.
fn report_failure(error: &watcher::Error, feed: &Feed, health: &WatchHealth) {
    let (kind, scope) = (feed.watched.kind_name(), feed.scope());
    let namespace = feed.namespace.as_deref().unwrap_or("*");
    let what = feed.name();
    if let Some((verb, refusal)) = forbidden_verb(error) {
        tracing::error!(
            kind = %kind, namespace, verb, error = refusal,
            "the API server forbids copycat's ServiceAccount to {verb} this kind{scope}: grant it in a {} \
             (manifests/k8s.yaml); retrying",
            if feed.namespace.is_some() { "Role or ClusterRole" } else { "ClusterRole" }
        );
        health.forbidden(&what, format!("{verb} forbidden: {refusal}"));
        return;
    }
    let message = error.to_string();
    match health.failed(&what, message.clone(), Instant::now()) {
        Some(w) => tracing::warn!(
            kind = %kind, namespace, error = message, server = w.server, failing = w.failing, watches = w.watches,
            unreported = w.unreported,
            "watch failed; {} of {} watches of the Kubernetes API server at {} are failing; each retries with \
             backoff (this warning at most every {} s; /readyz lists them)",
            w.failing, w.watches, w.server, FAILURE_LOG_INTERVAL.as_secs()
        ),
        None => tracing::debug!(kind = %kind, namespace, error = message, "watch failed; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use kube::runtime::watcher::Error;

    use super::forbidden_verb;

    fn status(code: u16, message: &str) -> Box<Status> {
        Box::new(Status {
            code,
            ..Status::failure(message, "Forbidden")
        })
    }

    #[test]
    fn only_403s_are_reported_as_forbidden_with_their_verb() {
        let refusal =
            "pods is forbidden: User \"system:serviceaccount:k8s-copycat:k8s-copycat\" cannot list resource \"pods\"";
        let cases = [
            (
                Error::InitialListFailed(kube::Error::Api(status(403, refusal))),
                Some(("list", refusal)),
            ),
            (
                Error::WatchStartFailed(kube::Error::Api(status(403, refusal))),
                Some(("watch", refusal)),
            ),
            (
                Error::WatchFailed(kube::Error::Api(status(403, refusal))),
                Some(("watch", refusal)),
            ),
            (Error::WatchError(status(403, refusal)), Some(("watch", refusal))),
            (Error::WatchError(status(410, "too old resource version")), None),
            (
                Error::InitialListFailed(kube::Error::Api(status(500, "etcd down"))),
                None,
            ),
            (Error::NoResourceVersion, None),
        ];
        for (error, want) in cases {
            assert_eq!(forbidden_verb(&error), want, "{error}");
        }
    }
}

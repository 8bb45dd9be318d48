//! Controllers of declarative objects (image-operator's `Image` in [`image`]; Flux's
//! `ImageRepository` in [`flux`]): the skeleton they share. A controller runs only when its feature is enabled
//! in the configuration **and** its CRD exists ([`crd_present`], checked once at start, logged once
//! when enabled but absent); it watches its custom resource cluster-wide or in the configured
//! namespaces ([`watch_objects`]: each object decoded on its own, so one that does not fit the type
//! is reported instead of failing the list; deletions reconciled on every relist), writes status only
//! through the status subresource ([`patch_status`], a JSON merge patch), and only the leader acts
//! (the controllers read the daemon's leadership channel).

pub mod flux;
pub mod image;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, DefaultBackoff, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::discovery::watch::{event_label, forbidden_verb};
use crate::metrics::Metrics;

/// The longest wait between two attempts of a failing watch (kube's default backoff's ceiling).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Changes waiting for the controller; the watch waits when it is full.
const BACKLOG: usize = 256;

/// The field manager of status writes.
const FIELD_MANAGER: &str = "copycat";

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object's metadata.
    fn of(meta: &kube::core::ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What changed among the watched objects.
#[derive(Debug)]
pub enum Change<K> {
    /// The object was created or changed, or listed again.
    Applied(K),
    /// The object is served but does not decode as `K` (a field of the wrong type): its key, its
    /// `metadata.generation` and why.
    Undecodable(ObjectKey, Option<i64>, String),
    /// The object is gone (deleted, or missing from a relist).
    Deleted(ObjectKey),
}

/// What a controller watches: its custom resource, its CRD's name, and where.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The resource (`skopeo.io/v1alpha1` `images`).
    pub resource: ApiResource,
    /// The CRD's name (`images.skopeo.io`), for the presence check.
    pub crd: &'static str,
    /// The configuration key that enables the feature, named in logs.
    pub enabled_by: &'static str,
    /// Namespaces to watch; empty: cluster-wide.
    pub namespaces: Vec<String>,
}

impl Watch {
    /// Where it watches, for logs: `every namespace` or the namespaces listed.
    pub fn scope(&self) -> String {
        match self.namespaces.is_empty() {
            true => "every namespace".to_owned(),
            false => self.namespaces.join(","),
        }
    }
}

/// Whether the CRD `watch.crd` exists, asked once at start. When it does not (or cannot be read),
/// the feature stays off and this is logged once, naming the setting that enabled it.
pub async fn crd_present(client: &kube::Client, watch: &Watch) -> bool {
    served_versions(client, watch).await.is_some()
}

/// The versions the CRD `watch.crd` serves (`spec.versions[]` with `served: true`), asked once at
/// start; `None`, logged once naming the setting that enabled the feature, when it does not exist
/// or cannot be read.
pub async fn served_versions(client: &kube::Client, watch: &Watch) -> Option<Vec<String>> {
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &crd_resource());
    match crds.get_opt(watch.crd).await {
        Ok(Some(crd)) => Some(
            crd.data["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["served"].as_bool().unwrap_or(false))
                .filter_map(|v| v["name"].as_str().map(str::to_owned))
                .collect(),
        ),
        Ok(None) => {
            tracing::warn!(
                crd = watch.crd,
                setting = watch.enabled_by,
                "enabled, but the CRD is not installed (manifests/crds/ ships image-operator's; Flux's come with Flux): not watching these objects"
            );
            None
        }
        Err(e) => {
            tracing::warn!(crd = watch.crd, setting = watch.enabled_by, error = %e,
                "enabled, but the CRD cannot be read (RBAC: get on customresourcedefinitions): not watching these objects");
            None
        }
    }
}

fn crd_resource() -> ApiResource {
    ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    }
}

/// Running watches; dropping this stops them.
pub struct Watching(Vec<JoinHandle<()>>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// Watches `watch.resource` (cluster-wide, or one watch per namespace listed), each object decoded
/// as `K` on its own; the changes arrive on the returned channel, counted as the cluster watchers'
/// (`k8s_copycat_watch_events_total`, kind `Image`, …). Watch errors are retried with backoff
/// (0.8 s doubling to 30 s), logged at warn level; a refusal (403) at error level, naming the verb
/// and the setting that needs it.
pub fn watch_objects<K>(
    client: &kube::Client,
    watch: &Watch,
    metrics: &Arc<Metrics>,
) -> (Watching, mpsc::Receiver<Change<K>>)
where
    K: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BACKLOG);
    let apis: Vec<Api<DynamicObject>> = if watch.namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &watch.resource)]
    } else {
        watch
            .namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &watch.resource))
            .collect()
    };
    let handles = apis
        .into_iter()
        .map(|api| tokio::spawn(run_watch(api, watch.clone(), tx.clone(), metrics.clone())))
        .collect();
    (Watching(handles), rx)
}

/// One watch: relists reconcile deletions (objects listed before and not now are reported deleted).
async fn run_watch<K: DeserializeOwned>(
    api: Api<DynamicObject>,
    watch: Watch,
    tx: mpsc::Sender<Change<K>>,
    metrics: Arc<Metrics>,
) {
    let kind = watch.resource.kind.as_str();
    let mut events = watcher(api, watcher::Config::default()).boxed();
    // As discovery's watches: kube's `default_backoff()` resets on `Init` and would retry an
    // unreachable server every 0.8 s.
    let mut backoff = DefaultBackoff::default();
    let mut known: HashSet<ObjectKey> = HashSet::new();
    let mut relisted: HashSet<ObjectKey> = HashSet::new();
    while let Some(event) = events.next().await {
        if matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init)) {
            backoff.reset();
        }
        if let Some(label) = event_label(&event) {
            metrics.watch_event(kind, label);
        }
        let changes = match event {
            Ok(watcher::Event::Init) => {
                relisted.clear();
                vec![]
            }
            Ok(watcher::Event::InitApply(o)) => {
                relisted.insert(ObjectKey::of(&o.metadata));
                vec![decode(o)]
            }
            Ok(watcher::Event::InitDone) => {
                let gone: Vec<Change<K>> = known
                    .difference(&relisted)
                    .map(|key| Change::Deleted(key.clone()))
                    .collect();
                known = std::mem::take(&mut relisted);
                gone
            }
            Ok(watcher::Event::Apply(o)) => {
                known.insert(ObjectKey::of(&o.metadata));
                vec![decode(o)]
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = ObjectKey::of(&o.metadata);
                known.remove(&key);
                vec![Change::Deleted(key)]
            }
            Err(e) => {
                match forbidden_verb(&e) {
                    Some((verb, refusal)) => tracing::error!(
                        kind,
                        verb,
                        error = refusal,
                        setting = watch.enabled_by,
                        "the API server forbids copycat's ServiceAccount to {verb} these objects: grant it in a {} \
                         (manifests/k8s.yaml); retrying with backoff",
                        if watch.namespaces.is_empty() {
                            "ClusterRole"
                        } else {
                            "Role in each namespace watched, or a ClusterRole"
                        }
                    ),
                    None => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
                }
                tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
                continue;
            }
        };
        for change in changes {
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

/// `object` as `K`, or why it is not one.
fn decode<K: DeserializeOwned>(object: DynamicObject) -> Change<K> {
    let key = ObjectKey::of(&object.metadata);
    let generation = object.metadata.generation;
    match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(typed) => Change::Applied(typed),
        Err(e) => Change::Undecodable(key, generation, e.to_string()),
    }
}

/// Writes `status` on the object `key` of `resource` through its status subresource (a JSON merge
/// patch of `{"status": …}`: fields copycat does not write are left as they are). A refusal is
/// counted in `k8s_copycat_status_write_errors_total` by resource and [`refusal_reason`].
pub async fn patch_status(
    client: &kube::Client,
    resource: &ApiResource,
    key: &ObjectKey,
    status: &impl Serialize,
    metrics: &Metrics,
) -> kube::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, resource);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&key.name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .inspect_err(|e| metrics.status_write_error(&resource.plural, refusal_reason(e)))
}

/// Why a write failed, from the API server's HTTP status (the `reason` label of
/// `k8s_copycat_status_write_errors_total`, one of [`crate::metrics::STATUS_WRITE_ERRORS`]).
pub fn refusal_reason(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) => match status.code {
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            400 | 422 => "invalid",
            _ => "other",
        },
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_by_the_api_servers_answer() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        let cases = [
            (api(403), "forbidden"),
            (api(404), "not_found"),
            (api(409), "conflict"),
            (api(422), "invalid"),
            (api(400), "invalid"),
            (api(500), "other"),
            (api(429), "other"),
            (kube::Error::LinesCodecMaxLineLengthExceeded, "other"),
        ];
        for (error, reason) in cases {
            assert_eq!(refusal_reason(&error), reason, "{error}");
            assert!(crate::metrics::STATUS_WRITE_ERRORS.contains(&reason));
        }
    }
}

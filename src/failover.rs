//! `copycat failover`'s decisions, apart from the API server: which container of an object uses the
//! mirror, the object as it is written back, the record of what was switched (an annotation on the
//! object) and how a revert reads it. Pure functions over the objects' JSON, so that every field
//! copycat does not know survives the round trip untouched.
//!
//! The record, [`ANNOTATION`] on the object's own metadata, is JSON:
//! `{"containers":{"web":{"original":"nginx:1.27","mirror":"m.io/library/nginx:1.27@sha256:…"}},"pullSecret":"mirror-pull"}`.
//! `mirror` is what failover wrote, so a revert can tell a container someone changed since (left
//! as it is, and reported); `pullSecret` is present only when failover added that
//! `imagePullSecrets` entry, so a revert removes only what it added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::workload::{Kind, Workload};

/// The annotation holding what failover switched on an object.
pub const ANNOTATION: &str = "copycat.io/failover-originals";

/// What failover switched on one object: the record kept in [`ANNOTATION`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Container name (init containers included; names are unique in a Pod) → its images.
    pub containers: BTreeMap<String, Switched>,
    /// The `imagePullSecrets` entry failover added (absent when it was there already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
}

/// One switched container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switched {
    /// The image before the switch, as written in the spec.
    pub original: String,
    /// The image failover wrote (the mirror, pinned by digest).
    pub mirror: String,
}

/// What to do with one container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Use this mirror image (verified, pinned by digest).
    Mirror(String),
    /// Leave it as it is, and report why (no verified backup, excluded, invalid, …).
    Leave(String),
    /// Out of scope: another registry than `--registry` names, or already on the mirror.
    Skip,
}

/// One container's image changed (or that would be, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Container name.
    pub container: String,
    /// The image before.
    pub from: String,
    /// The image after.
    pub to: String,
}

/// One container left as it is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// Container name.
    pub container: String,
    /// Its image now.
    pub image: String,
    /// Why it was not changed.
    pub reason: String,
}

/// What a switch or a revert does to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The object to write back (equal to the one read when nothing changes).
    pub object: Value,
    /// Containers changed.
    pub changed: Vec<Change>,
    /// Containers left as they are.
    pub left: Vec<Left>,
    /// Other things said about the object (the pull secret).
    pub notes: Vec<String>,
}

impl Outcome {
    /// `object` unchanged, nothing said yet.
    fn of(object: &Value) -> Outcome {
        Outcome {
            object: object.clone(),
            changed: vec![],
            left: vec![],
            notes: vec![],
        }
    }

    /// Whether the object must be written.
    pub fn writes(&self, read: &Value) -> bool {
        self.object != *read
    }
}

/// Why an object cannot be switched or reverted.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// The object has no Pod spec where its kind keeps it.
    #[error("{object}: no Pod spec at {pointer}")]
    NoPodSpec {
        /// The object.
        object: Workload,
        /// Where it was looked for.
        pointer: &'static str,
    },
    /// The annotation is not a record failover wrote.
    #[error("{object}: the annotation {ANNOTATION} is not copycat's record ({reason}); fix or remove it")]
    BadRecord {
        /// The object.
        object: Workload,
        /// The parse error.
        reason: String,
    },
    /// The API server refused or failed a list.
    #[error("list {resource} in {scope}: {source}")]
    List {
        /// The resource (`deployments`).
        resource: &'static str,
        /// Where (`every namespace`, `namespace shop`).
        scope: String,
        /// kube's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server refused or failed a request about the object.
    #[error("{object}: {verb}: {source}")]
    Api {
        /// The object.
        object: Workload,
        /// What was asked (`update`, `get`).
        verb: &'static str,
        /// kube's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Every write met a newer version of the object.
    #[error("{object}: changed by someone else on each of {attempts} attempts (409 Conflict); run again")]
    Conflicts {
        /// The object.
        object: Workload,
        /// Writes tried.
        attempts: usize,
    },
    /// The object was deleted between the read and the write.
    #[error("{object}: deleted while failing over")]
    Gone {
        /// The object.
        object: Workload,
    },
}

/// Where `kind` keeps the Pod spec failover patches; `None` for Jobs, whose template cannot change.
pub fn pod_spec_pointer(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet => Some("/spec/template/spec"),
        Kind::CronJob => Some("/spec/jobTemplate/spec/template/spec"),
        Kind::Pod => Some("/spec"),
        Kind::Job => None,
    }
}

/// The Pod spec lists failover changes: init containers first, as the kubelet starts them.
const CONTAINER_LISTS: [&str; 2] = ["initContainers", "containers"];

/// The object's record, if it has one.
pub fn record(object: &Value, who: &Workload) -> Result<Option<Record>, FailoverError> {
    let Some(text) = object.pointer(&annotation_pointer()).and_then(Value::as_str) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| FailoverError::BadRecord {
            object: who.clone(),
            reason: e.to_string(),
        })
}

fn annotation_pointer() -> String {
    // `/` in a JSON pointer segment is written `~1`.
    format!("/metadata/annotations/{}", ANNOTATION.replace('/', "~1"))
}

/// The containers of `object` (a `who.kind`; a Job's too, for reporting) as (name, image), init
/// containers first.
pub fn containers(object: &Value, who: &Workload) -> Result<Vec<(String, String)>, FailoverError> {
    let mut object = object.clone();
    let spec = pod_spec_mut(&mut object, who)?;
    Ok(containers_mut(spec)
        .into_iter()
        .map(|(name, image, _)| (name, image))
        .collect())
}

/// `object` (a `who.kind`) with every container `choose` gives a mirror switched to it, the
/// originals recorded in [`ANNOTATION`] (merged with an earlier record) and, when `pull_secret` is
/// given and anything was switched, that `imagePullSecrets` entry added. A Pod's pull secrets cannot
/// change, so for a Pod it is only mentioned.
pub fn to_mirror(
    object: &Value,
    who: &Workload,
    choose: impl Fn(&str, &str) -> Choice,
    pull_secret: Option<&str>,
) -> Result<Outcome, FailoverError> {
    let mut record = record(object, who)?.unwrap_or_default();
    let mut out = Outcome::of(object);
    let spec = pod_spec_mut(&mut out.object, who)?;
    for (name, image, slot) in containers_mut(spec) {
        match choose(&name, &image) {
            Choice::Mirror(mirror) if mirror != image => {
                *slot = json!(mirror);
                record.containers.insert(
                    name.clone(),
                    Switched {
                        original: image.clone(),
                        mirror: mirror.clone(),
                    },
                );
                out.changed.push(Change {
                    container: name,
                    from: image,
                    to: mirror,
                });
            }
            Choice::Mirror(_) | Choice::Skip => {}
            Choice::Leave(reason) => out.left.push(Left {
                container: name,
                image,
                reason,
            }),
        }
    }
    if out.changed.is_empty() {
        return Ok(out);
    }
    if let Some(secret) = pull_secret {
        if who.kind == Kind::Pod {
            out.notes.push(format!(
                "a Pod's imagePullSecrets cannot change: {secret} was not added (its service account must give it)"
            ));
        } else if add_pull_secret(spec, secret) {
            record.pull_secret = Some(secret.to_owned());
            out.notes.push(format!("imagePullSecrets: {secret} added"));
        }
    }
    let text = serde_json::to_string(&record).expect("a record serialises");
    annotations_mut(&mut out.object).insert(ANNOTATION.to_owned(), json!(text));
    Ok(out)
}

/// `object` with the recorded originals back where the container still holds what failover wrote,
/// the pull secret failover added removed and the record removed; `None` when it has no record. A
/// container changed since the switch (or gone) is left as it is and reported with its original.
pub fn revert(object: &Value, who: &Workload) -> Result<Option<Outcome>, FailoverError> {
    let Some(record) = record(object, who)? else {
        return Ok(None);
    };
    let mut out = Outcome::of(object);
    let spec = pod_spec_mut(&mut out.object, who)?;
    let mut pending = record.containers.clone();
    for (name, image, slot) in containers_mut(spec) {
        let Some(switched) = pending.remove(&name) else {
            continue;
        };
        if image == switched.mirror {
            *slot = json!(switched.original);
            out.changed.push(Change {
                container: name,
                from: image,
                to: switched.original,
            });
        } else if image != switched.original {
            out.left.push(Left {
                container: name,
                reason: format!(
                    "changed since the switch (failover wrote {}); left as it is, the original was {}",
                    switched.mirror, switched.original
                ),
                image,
            });
        }
    }
    out.left.extend(pending.into_iter().map(|(name, switched)| Left {
        container: name,
        image: String::new(),
        reason: format!("the container is gone; the original was {}", switched.original),
    }));
    if let Some(secret) = &record.pull_secret
        && remove_pull_secret(spec, secret)
    {
        out.notes.push(format!("imagePullSecrets: {secret} removed"));
    }
    let annotations = annotations_mut(&mut out.object);
    annotations.remove(ANNOTATION);
    if annotations.is_empty() {
        // Failover may have created the map; an empty one and none are the same to Kubernetes.
        if let Some(meta) = out.object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("annotations");
        }
    }
    Ok(Some(out))
}

fn pod_spec_mut<'a>(object: &'a mut Value, who: &Workload) -> Result<&'a mut Map<String, Value>, FailoverError> {
    let pointer = pod_spec_pointer(who.kind).unwrap_or("/spec/template/spec");
    object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| FailoverError::NoPodSpec {
            object: who.clone(),
            pointer,
        })
}

/// Each container of `spec` (init containers first, as they run) as (name, image, the image's slot).
fn containers_mut(spec: &mut Map<String, Value>) -> Vec<(String, String, &mut Value)> {
    let mut out = Vec::new();
    for (list, containers) in spec.iter_mut() {
        let Some(order) = CONTAINER_LISTS.iter().position(|l| l == list) else {
            continue;
        };
        for container in containers.as_array_mut().into_iter().flatten() {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(slot) = container.get_mut("image")
                && let Some(image) = slot.as_str().map(str::to_owned)
            {
                out.push((order, name, image, slot));
            }
        }
    }
    out.sort_by_key(|(order, ..)| *order);
    out.into_iter()
        .map(|(_, name, image, slot)| (name, image, slot))
        .collect()
}

fn annotations_mut(object: &mut Value) -> &mut Map<String, Value> {
    let meta = object
        .as_object_mut()
        .expect("a Kubernetes object is a JSON object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let annotations = meta
        .as_object_mut()
        .expect("metadata is an object")
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations.as_object_mut().expect("annotations is an object")
}

/// Adds `{"name": secret}` to `imagePullSecrets` unless it is there; whether it was added.
fn add_pull_secret(spec: &mut Map<String, Value>, secret: &str) -> bool {
    let list = spec.entry("imagePullSecrets").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return false;
    };
    if list
        .iter()
        .any(|s| s.get("name").and_then(Value::as_str) == Some(secret))
    {
        return false;
    }
    list.push(json!({ "name": secret }));
    true
}

/// Removes `secret` from `imagePullSecrets` (and the list when that empties it); whether it was there.
fn remove_pull_secret(spec: &mut Map<String, Value>, secret: &str) -> bool {
    let Some(list) = spec.get_mut("imagePullSecrets").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = list.len();
    list.retain(|s| s.get("name").and_then(Value::as_str) != Some(secret));
    let removed = list.len() != before;
    if list.is_empty() {
        spec.remove("imagePullSecrets");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A `kind` object with init containers `init` and containers `main` as (name, image).
    fn object(kind: Kind, init: &[(&str, &str)], main: &[(&str, &str)]) -> Value {
        let list = |cs: &[(&str, &str)]| -> Value { cs.iter().map(|(n, i)| json!({"name": n, "image": i})).collect() };
        let mut spec = json!({ "containers": list(main), "restartPolicy": "Always" });
        if !init.is_empty() {
            spec["initContainers"] = list(init);
        }
        let template = json!({ "metadata": {"labels": {"app": "x"}}, "spec": spec });
        let spec = match kind {
            Kind::Pod => spec,
            Kind::CronJob => json!({ "schedule": "@daily", "jobTemplate": {"spec": {"template": template}} }),
            _ => json!({ "replicas": 2, "template": template }),
        };
        json!({
            "apiVersion": "v1", "kind": kind.as_str(),
            "metadata": {"name": "w", "namespace": "shop", "resourceVersion": "7", "labels": {"team": "a"}},
            "spec": spec, "unknownField": {"kept": true}
        })
    }

    fn who(kind: Kind) -> Workload {
        Workload::new(kind, "shop", "w")
    }

    /// Mirrors `nginx:*` and `busybox:1`, leaves `bad:1`, skips everything else.
    fn choose(_container: &str, image: &str) -> Choice {
        match image {
            "nginx:1.27" => Choice::Mirror(format!("m.io/library/nginx:1.27@{D}")),
            "busybox:1" => Choice::Mirror(format!("m.io/library/busybox:1@{D}")),
            "bad:1" => Choice::Leave("backup missing: 1 blob".into()),
            _ => Choice::Skip,
        }
    }

    fn images(object: &Value, kind: Kind) -> Vec<(String, String)> {
        containers(object, &who(kind)).unwrap()
    }

    #[test]
    fn to_mirror_switches_verified_containers_of_every_kind_and_records_the_originals() {
        // (kind, init, main, pull secret, images after, left, pull secrets after)
        type Case<'a> = (
            Kind,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Vec<(&'a str, String)>,
            Vec<&'a str>,
            Option<Value>,
        );
        let nginx = format!("m.io/library/nginx:1.27@{D}");
        let busybox = format!("m.io/library/busybox:1@{D}");
        let cases: Vec<Case<'_>> = vec![
            (
                Kind::Deployment,
                &[("init", "busybox:1")],
                &[("web", "nginx:1.27"), ("side", "bad:1")],
                Some("pull"),
                vec![
                    ("init", busybox.clone()),
                    ("web", nginx.clone()),
                    ("side", "bad:1".into()),
                ],
                vec!["side"],
                Some(json!([{"name": "pull"}])),
            ),
            (
                Kind::StatefulSet,
                &[],
                &[("web", "nginx:1.27")],
                None,
                vec![("web", nginx.clone())],
                vec![],
                None,
            ),
            (
                Kind::DaemonSet,
                &[],
                &[("web", "nginx:1.27"), ("x", "quay.io/x:1")],
                None,
                vec![("web", nginx.clone()), ("x", "quay.io/x:1".into())],
                vec![],
                None,
            ),
            (
                Kind::CronJob,
                &[("init", "busybox:1")],
                &[("job", "other:2")],
                Some("pull"),
                vec![("init", busybox.clone()), ("job", "other:2".into())],
                vec![],
                Some(json!([{"name": "pull"}])),
            ),
            // A Pod's images change; its pull secrets cannot.
            (
                Kind::Pod,
                &[],
                &[("web", "nginx:1.27")],
                Some("pull"),
                vec![("web", nginx.clone())],
                vec![],
                None,
            ),
            // Nothing verified: nothing written, not even the pull secret.
            (
                Kind::Deployment,
                &[],
                &[("side", "bad:1")],
                Some("pull"),
                vec![("side", "bad:1".into())],
                vec!["side"],
                None,
            ),
        ];
        for (kind, init, main, secret, after, left, secrets) in cases {
            let read = object(kind, init, main);
            let out = to_mirror(&read, &who(kind), choose, secret).unwrap();
            let want: Vec<(String, String)> = after.iter().map(|(c, i)| (c.to_string(), i.clone())).collect();
            assert_eq!(images(&out.object, kind), want, "{kind}");
            let left_names: Vec<&str> = out.left.iter().map(|l| l.container.as_str()).collect();
            assert_eq!(left_names, left, "{kind}");
            let spec = out.object.pointer(pod_spec_pointer(kind).unwrap()).unwrap();
            assert_eq!(spec.get("imagePullSecrets"), secrets.as_ref(), "{kind}");
            assert_eq!(
                out.object["unknownField"],
                json!({"kept": true}),
                "{kind}: unknown fields survive"
            );
            assert_eq!(
                out.object["metadata"]["resourceVersion"], "7",
                "{kind}: the precondition"
            );
            let record = record(&out.object, &who(kind)).unwrap();
            if out.changed.is_empty() {
                assert!(!out.writes(&read) && record.is_none(), "{kind}");
                continue;
            }
            let record = record.unwrap();
            for change in &out.changed {
                let switched = &record.containers[&change.container];
                assert_eq!(
                    (&switched.original, &switched.mirror),
                    (&change.from, &change.to),
                    "{kind}"
                );
            }
            assert_eq!(record.containers.len(), out.changed.len(), "{kind}");
            assert_eq!(record.pull_secret.is_some(), secrets.is_some(), "{kind}");
        }
    }

    #[test]
    fn revert_restores_the_object_exactly() {
        for kind in [
            Kind::Deployment,
            Kind::StatefulSet,
            Kind::DaemonSet,
            Kind::CronJob,
            Kind::Pod,
        ] {
            let read = object(
                kind,
                &[("init", "busybox:1")],
                &[("web", "nginx:1.27"), ("side", "bad:1")],
            );
            let switched = to_mirror(&read, &who(kind), choose, Some("pull")).unwrap().object;
            // A second switch changes nothing: mirror images are out of scope.
            let again = to_mirror(&switched, &who(kind), choose, Some("pull")).unwrap();
            assert!(!again.writes(&switched), "{kind}");
            let back = revert(&switched, &who(kind)).unwrap().unwrap();
            assert_eq!(back.object, read, "{kind}: byte for byte");
            assert_eq!(back.changed.len(), 2, "{kind}");
            assert!(back.left.is_empty(), "{kind}");
            assert_eq!(
                revert(&read, &who(kind)).unwrap(),
                None,
                "{kind}: no record, nothing to do"
            );
        }
    }

    #[test]
    fn revert_leaves_what_someone_changed_and_what_was_there_before() {
        let kind = Kind::Deployment;
        let mut read = object(kind, &[], &[("web", "nginx:1.27"), ("api", "busybox:1")]);
        read["metadata"]["annotations"] = json!({"owner": "team-a"});
        read["spec"]["template"]["spec"]["imagePullSecrets"] = json!([{"name": "pull"}]);
        let mut switched = to_mirror(&read, &who(kind), choose, Some("pull")).unwrap().object;
        // Someone moves web on after the switch.
        switched["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        let back = revert(&switched, &who(kind)).unwrap().unwrap();
        let want = [("web", "nginx:1.28"), ("api", "busybox:1")].map(|(c, i)| (c.to_owned(), i.to_owned()));
        assert_eq!(images(&back.object, kind), want);
        assert_eq!(back.left.len(), 1);
        assert_eq!(
            (back.left[0].container.as_str(), back.left[0].image.as_str()),
            ("web", "nginx:1.28")
        );
        assert!(
            back.left[0].reason.contains("the original was nginx:1.27"),
            "{}",
            back.left[0].reason
        );
        // The pull secret was there before failover: it stays; other annotations stay.
        assert_eq!(
            back.object["spec"]["template"]["spec"]["imagePullSecrets"],
            json!([{"name": "pull"}])
        );
        assert_eq!(back.object["metadata"]["annotations"], json!({"owner": "team-a"}));
        // A container removed since the switch is reported with its original.
        let mut gone = to_mirror(&read, &who(kind), choose, None).unwrap().object;
        gone["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        let back = revert(&gone, &who(kind)).unwrap().unwrap();
        assert_eq!(back.left.len(), 1);
        assert!(
            back.left[0].reason.starts_with("the container is gone"),
            "{:?}",
            back.left
        );
    }

    #[test]
    fn bad_records_and_objects_are_errors_naming_the_object() {
        let mut read = object(Kind::Deployment, &[], &[("web", "nginx:1.27")]);
        read["metadata"]["annotations"] = json!({ ANNOTATION: "not json" });
        let e = revert(&read, &who(Kind::Deployment)).unwrap_err();
        assert!(matches!(e, FailoverError::BadRecord { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("Deployment shop/w: the annotation copycat.io/failover-originals"),
            "{e}"
        );
        let no_spec = json!({"metadata": {"name": "w"}, "spec": {}});
        let e = to_mirror(&no_spec, &who(Kind::CronJob), choose, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CronJob shop/w: no Pod spec at /spec/jobTemplate/spec/template/spec"
        );
    }
}

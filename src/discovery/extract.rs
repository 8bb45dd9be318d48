//! What images an object uses: containers of a Pod template (init, regular, ephemeral), with the
//! digests a Pod's status reports, and the workload that owns a Pod. Pure functions over the
//! Kubernetes types.

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::platform::Platform;
use crate::reference::Digest;
use crate::workload::Kind;

/// One container's image, as written in the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The image string as written.
    pub image: String,
    /// Container name.
    pub container: String,
    /// Digest the Pod actually runs, from `status.*containerStatuses[].imageID`, when it names one.
    pub pod_digest: Option<Digest>,
}

/// Images of a Pod spec in order: init containers, containers, ephemeral containers, trimmed. An
/// empty image (a workload template may leave it to a controller to fill in) is kept as `""`, so that
/// planning reports it as an invalid reference instead of dropping it without a word.
pub fn spec_images(spec: &PodSpec) -> Vec<ContainerImage> {
    let init = spec.init_containers.iter().flatten().map(|c| (&c.name, &c.image));
    let main = spec.containers.iter().map(|c| (&c.name, &c.image));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| (&c.name, &c.image));
    init.chain(main)
        .chain(ephemeral)
        .map(|(name, image)| ContainerImage {
            image: image.as_deref().unwrap_or_default().trim().to_owned(),
            container: name.clone(),
            pod_digest: None,
        })
        .collect()
}

/// Images of a Pod, each with the digest its container status reports (matched by container name).
pub fn pod_images(pod: &Pod) -> Vec<ContainerImage> {
    let Some(spec) = &pod.spec else { return vec![] };
    let statuses: Vec<&ContainerStatus> = pod
        .status
        .iter()
        .flat_map(|s| {
            let init = s.init_container_statuses.iter().flatten();
            let main = s.container_statuses.iter().flatten();
            let ephemeral = s.ephemeral_container_statuses.iter().flatten();
            init.chain(main).chain(ephemeral)
        })
        .collect();
    let mut images = spec_images(spec);
    for image in &mut images {
        image.pod_digest = statuses
            .iter()
            .find(|s| s.name == image.container)
            .and_then(|s| pod_digest(&s.image_id));
    }
    images
}

/// The platform a Node reports (`status.nodeInfo`), when it reports one.
pub fn node_platform(node: &Node) -> Option<Platform> {
    let info = node.status.as_ref()?.node_info.as_ref()?;
    let (os, arch) = (
        info.operating_system.to_ascii_lowercase(),
        info.architecture.to_ascii_lowercase(),
    );
    (!os.is_empty() && !arch.is_empty()).then_some(Platform {
        os,
        architecture: arch,
        variant: None,
    })
}

/// Whether a Pod still matters: Pending or Running (finished Pods' images were mirrored while they ran,
/// or belong to a Job or CronJob that is watched itself).
pub fn pod_is_active(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending" | "Running") | None
    )
}

/// The controller owning an object (`ownerReferences` entry with `controller: true`), as a kind
/// copycat knows or `ReplicaSet`, and its name.
pub fn controller(meta: &ObjectMeta) -> Option<Owner> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let kind = match owner.kind.as_str() {
        "ReplicaSet" => OwnerKind::ReplicaSet,
        // A Pod is no controller: an owner reference to one is not followed.
        name => match Kind::from_name(name)? {
            Kind::Pod => return None,
            kind => OwnerKind::Workload(kind),
        },
    };
    Some(Owner {
        kind,
        name: owner.name.clone(),
    })
}

/// What a container's `status.imageID` says about the image it runs: the digest, when it is a
/// manifest digest. Runtime prefixes (`docker-pullable://`, `containerd://`, …) are stripped. A bare
/// `sha256:…` (Docker's image ID, a config digest) names no manifest and is ignored.
pub fn pod_digest(image_id: &str) -> Option<Digest> {
    let id = image_id.rsplit_once("://").map_or(image_id, |(_, rest)| rest);
    let (_, digest) = id.split_once('@')?;
    Digest::parse(digest).ok()
}

/// An owner reference copycat follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// What owns the object.
    pub kind: OwnerKind,
    /// The owner's name (same namespace).
    pub name: String,
}

/// Owner kinds: a watched workload, or a ReplicaSet (whose own owner is a Deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    /// A watched workload kind.
    Workload(Kind),
    /// A ReplicaSet, resolved to its Deployment through the ReplicaSet watch.
    ReplicaSet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn images_in_order_with_pod_digests() {
        let p = pod(json!({
            "metadata": {"name": "web-1", "namespace": "prod"},
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox:1"}],
                "containers": [{"name": "app", "image": "nginx:1.25"}, {"name": "empty", "image": ""}, {"name": "side", "image": " envoy:1 "}],
                "ephemeralContainers": [{"name": "debug", "image": "alpine"}]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "image": "nginx:1.25", "imageID": format!("docker-pullable://nginx@sha256:{HEX}"), "ready": true, "restartCount": 0},
                    {"name": "side", "image": "envoy:1", "imageID": format!("docker://sha256:{HEX}"), "ready": true, "restartCount": 0}
                ]
            }
        }));
        let images = pod_images(&p);
        let names: Vec<(&str, &str, bool)> = images
            .iter()
            .map(|i| (i.container.as_str(), i.image.as_str(), i.pod_digest.is_some()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("init", "busybox:1", false),
                ("app", "nginx:1.25", true),
                ("empty", "", false),
                ("side", "envoy:1", false),
                ("debug", "alpine", false)
            ]
        );
        assert!(pod_is_active(&p));
    }

    #[test]
    fn node_platforms() {
        let node = |info: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"nodeInfo": info}})).unwrap()
        };
        let full = |os: &str, arch: &str| json!({"architecture": arch, "operatingSystem": os, "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""});
        assert_eq!(
            node_platform(&node(full("linux", "ARM64")))
                .map(|p| p.to_string())
                .as_deref(),
            Some("linux/arm64")
        );
        assert_eq!(node_platform(&node(full("", "amd64"))), None);
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(node_platform(&bare), None);
    }

    #[test]
    fn phases_and_owners() {
        for (phase, active) in [
            ("Pending", true),
            ("Running", true),
            ("Succeeded", false),
            ("Failed", false),
            ("Unknown", false),
        ] {
            let p = pod(json!({"metadata": {}, "spec": {"containers": []}, "status": {"phase": phase}}));
            assert_eq!(pod_is_active(&p), active, "{phase}");
        }
        let owned = |kind: &str, controller: bool| -> ObjectMeta {
            serde_json::from_value(json!({"ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "2", "controller": controller}
            ]}))
            .unwrap()
        };
        assert_eq!(
            controller(&owned("ReplicaSet", true)).map(|o| o.kind),
            Some(OwnerKind::ReplicaSet)
        );
        assert_eq!(
            controller(&owned("Job", true)).map(|o| o.kind),
            Some(OwnerKind::Workload(Kind::Job))
        );
        assert_eq!(controller(&owned("StatefulSet", true)).unwrap().name, "owner");
        assert_eq!(controller(&owned("Job", false)), None, "only the controller counts");
        assert_eq!(controller(&owned("Node", true)), None);
        assert_eq!(controller(&ObjectMeta::default()), None);
    }

    #[test]
    fn pod_digests() {
        let cases = [
            (format!("docker-pullable://nginx@sha256:{HEX}"), true),
            (format!("docker.io/library/nginx@sha256:{HEX}"), true),
            (format!("containerd://ghcr.io/a/b@sha256:{HEX}"), true),
            (format!("docker://sha256:{HEX}"), false),
            (format!("sha256:{HEX}"), false),
            ("".to_owned(), false),
            ("nginx@sha256:short".to_owned(), false),
        ];
        for (id, want) in cases {
            assert_eq!(pod_digest(&id).is_some(), want, "{id}");
        }
    }
}

//! Which images a Pod fails to pull, from the container statuses the Pod watch already receives (no
//! extra API request): containers, init containers and ephemeral containers waiting with
//! `ErrImagePull` or `ImagePullBackOff`. Pure functions over the Kubernetes types.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::extract::{pod_is_active, spec_images};

/// The waiting reasons the kubelet gives a container whose image pull failed: the attempt itself,
/// then the back-off before the next one.
pub const PULL_FAILURE_REASONS: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// One container of a Pod waiting for an image it failed to pull.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PullFailure {
    /// The container's name.
    pub container: String,
    /// The image as the Pod spec writes it (the status's own `image` when the spec has none).
    pub image: String,
    /// The waiting reason, `ErrImagePull` or `ImagePullBackOff`.
    pub reason: String,
}

/// The containers of `pod` (init, regular, ephemeral) that wait because their image pull failed; none
/// for a Pod that is no longer Pending or Running.
pub fn pull_failures(pod: &Pod) -> Vec<PullFailure> {
    let Some(status) = pod.status.as_ref().filter(|_| pod_is_active(pod)) else {
        return vec![];
    };
    let spec = pod.spec.as_ref().map(spec_images).unwrap_or_default();
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .chain(status.ephemeral_container_statuses.iter().flatten());
    statuses
        .filter_map(|s: &ContainerStatus| {
            let reason = s.state.as_ref()?.waiting.as_ref()?.reason.as_deref()?;
            if !PULL_FAILURE_REASONS.contains(&reason) {
                return None;
            }
            let image = spec
                .iter()
                .find(|c| c.container == s.name && !c.image.is_empty())
                .map_or_else(|| s.image.trim().to_owned(), |c| c.image.clone());
            (!image.is_empty()).then(|| PullFailure {
                container: s.name.clone(),
                image,
                reason: reason.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(name: &str, image: &str, state: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0, "state": state})
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({"waiting": {"reason": reason, "message": "…"}})
    }

    #[test]
    fn containers_waiting_on_a_failed_pull_in_every_kind_of_container() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "init", "image": "r.example/dockerhub/busybox:1"}],
                "containers": [
                    {"name": "app", "image": "r.example/dockerhub/library/app:1.0"},
                    {"name": "side", "image": "r.example/ghcr/envoy:1"},
                    {"name": "ok", "image": "r.example/ok:1"},
                    {"name": "crash", "image": "r.example/crash:1"}
                ],
                "ephemeralContainers": [{"name": "debug", "image": "r.example/dockerhub/alpine"}]
            },
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [status("init", "r.example/dockerhub/busybox:1", waiting("ErrImagePull"))],
                "containerStatuses": [
                    // The status's `image` may be normalised; the spec's string is what the Pod asked for.
                    status("app", "docker.io/whatever:1", waiting("ImagePullBackOff")),
                    status("side", "r.example/ghcr/envoy:1", waiting("ErrImagePull")),
                    status("ok", "r.example/ok:1", json!({"running": {}})),
                    status("crash", "r.example/crash:1", waiting("CrashLoopBackOff")),
                    status("gone", "r.example/not-in-spec:2", waiting("ImagePullBackOff"))
                ],
                "ephemeralContainerStatuses": [status("debug", "r.example/dockerhub/alpine", waiting("ImagePullBackOff"))]
            }
        }))
        .unwrap();
        let failures = pull_failures(&pod);
        let found: Vec<(&str, &str, &str)> = failures
            .iter()
            .map(|f| (f.container.as_str(), f.image.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("init", "r.example/dockerhub/busybox:1", "ErrImagePull"),
                ("app", "r.example/dockerhub/library/app:1.0", "ImagePullBackOff"),
                ("side", "r.example/ghcr/envoy:1", "ErrImagePull"),
                ("gone", "r.example/not-in-spec:2", "ImagePullBackOff"),
                ("debug", "r.example/dockerhub/alpine", "ImagePullBackOff"),
            ]
        );
    }

    #[test]
    fn finished_pods_and_pods_without_status_have_none() {
        let finished: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "r.example/a:1"}]},
            "status": {"phase": "Failed", "containerStatuses": [status("c", "r.example/a:1", waiting("ImagePullBackOff"))]}
        }))
        .unwrap();
        assert_eq!(pull_failures(&finished), []);
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).unwrap();
        assert_eq!(pull_failures(&bare), []);
    }
}

//! The fixed set of resource types the stand-in API server serves, the custom kinds copycat reads
//! (image-operator's `Image`, Flux's `ImageRepository` in both versions) and CRDs themselves included.

/// One served resource type (a kind under one group/version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name used in URLs (`pods`).
    pub plural: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the type has a `status` subresource (main-resource writes then keep `status`).
    pub status_subresource: bool,
    /// Short names advertised in discovery.
    pub short_names: &'static [&'static str],
    /// Field selector labels the real server accepts for this type, besides `metadata.name`
    /// and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `group/version`: the `apiVersion` of objects of this type.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`: how the real server names the type in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// Every served type, in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status_subresource: true,
        short_names: &["ns"],
        field_labels: &["status.phase"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
        short_names: &["no"],
        field_labels: &["spec.unschedulable"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
        short_names: &["po"],
        field_labels: POD_FIELDS,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        short_names: &["ev"],
        field_labels: EVENT_FIELDS,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        status_subresource: false,
        short_names: &[],
        field_labels: &["type"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        status_subresource: false,
        short_names: &["sa"],
        field_labels: &[],
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        status_subresource: true,
        short_names: &["deploy"],
        field_labels: &[],
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        status_subresource: true,
        short_names: &["sts"],
        field_labels: &[],
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        status_subresource: true,
        short_names: &["ds"],
        field_labels: &[],
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        status_subresource: true,
        short_names: &["rs"],
        field_labels: &["status.replicas"],
    },
    ResourceType {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        namespaced: true,
        status_subresource: true,
        short_names: &[],
        field_labels: &["status.successful"],
    },
    ResourceType {
        group: "batch",
        version: "v1",
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        namespaced: true,
        status_subresource: true,
        short_names: &["cj"],
        field_labels: &[],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
        short_names: &[],
        field_labels: &[],
    },
    ResourceType {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        status_subresource: true,
        short_names: &["crd", "crds"],
        field_labels: &[],
    },
    // The custom kinds copycat reads, served as if their CRDs were installed (objects are
    // schema-free here; the CRD's schema is checked by kubernetes-validate).
    ResourceType {
        group: "skopeo.io",
        version: "v1alpha1",
        plural: "images",
        singular: "image",
        kind: "Image",
        namespaced: true,
        status_subresource: true,
        short_names: &[],
        field_labels: &[],
    },
    ResourceType {
        group: "image.toolkit.fluxcd.io",
        version: "v1",
        plural: "imagerepositories",
        singular: "imagerepository",
        kind: "ImageRepository",
        namespaced: true,
        status_subresource: true,
        short_names: &[],
        field_labels: &[],
    },
    ResourceType {
        group: "image.toolkit.fluxcd.io",
        version: "v1beta2",
        plural: "imagerepositories",
        singular: "imagerepository",
        kind: "ImageRepository",
        namespaced: true,
        status_subresource: true,
        short_names: &[],
        field_labels: &[],
    },
];

/// Index into [`RESOURCES`].
pub type ResIdx = usize;

/// The type served at `group`/`version` under `plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of an object with this `apiVersion` and `kind`.
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<ResIdx> {
    RESOURCES
        .iter()
        .position(|r| r.kind == kind && r.api_version() == api_version)
}

/// The type named by a kind (`Pod`), plural (`pods`), singular, short name or
/// `plural.group` (`deployments.apps`), case-insensitively.
pub fn by_name(name: &str) -> Option<ResIdx> {
    let n = name.to_ascii_lowercase();
    RESOURCES.iter().position(|r| {
        r.kind.eq_ignore_ascii_case(&n)
            || r.plural == n
            || r.singular == n
            || r.short_names.contains(&n.as_str())
            || r.qualified() == n
    })
}

/// Every group/version served, core first: (`group`, `version`).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(RESOURCES[by_name("Deployment").unwrap()].plural, "deployments");
        assert_eq!(RESOURCES[by_name("deploy").unwrap()].kind, "Deployment");
        assert_eq!(RESOURCES[by_name("leases.coordination.k8s.io").unwrap()].kind, "Lease");
        assert_eq!(by_path("apps", "v1", "pods"), None);
        assert_eq!(
            RESOURCES[by_api_version_kind("batch/v1", "CronJob").unwrap()].plural,
            "cronjobs"
        );
        assert_eq!(group_versions()[0], ("", "v1"));
        assert_eq!(RESOURCES[by_name("pods").unwrap()].qualified(), "pods");
        assert_eq!(RESOURCES[by_name("jobs").unwrap()].qualified(), "jobs.batch");
    }
}
